"""The one TP/SL/time-barrier resolver, shared by the env, the backtest and tracker analytics.

All functions are branch-free ``jnp`` code on scalars or broadcastable arrays, so they run
under ``jit``/``vmap`` and on host arrays alike. ``side`` is +1 (long) or -1 (short).

Rules (docs/design.md): per bar, long: TP if high >= TP, SL if low <= SL; short mirrored.
TP and SL inside the same bar: SL first unless ``sl_first`` is False (the configured order
is used even when the intrabar path is known: conservative, and comparable to bar
backtests). The time barrier and ``end`` exits are applied by the caller at the close.

Fills (never better than the market offered):

* a gap through a level at the open fills at the open (TP or SL);
* a stop (SL) crossed inside the bar is a market order triggered at the level. With a known
  intrabar path (``MarketData.intrabar``, e.g. synthetic bars) the crossing is the first path
  point at or beyond the level: if the move into it is a jump (``intrabar_jump``) the stop
  fills at that point, the post-jump price; if it is continuous (diffusion) the path passed
  through the level and the stop fills there (a fill at the point would add an overshoot of
  the discretisation, ~0.1R at 16 substeps, not of the market). Paths given as discrete
  prices are all jumps (fill at the first price beyond). Without a path (OHLC bars, ``m = 0``)
  only gaps at the open are known and the stop fills at the level. The fill is clamped to be
  no better than the level;
* a TP is a resting limit order: inside the bar it fills at its level (the market reached
  it; a limit never fills better than its level intrabar).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tpfl_jax.env.stats import EXIT_NONE, EXIT_SL, EXIT_TP


@struct.dataclass
class BarExit:
    """Outcome of one bar for an open trade."""

    exited: jax.Array     # bool
    gap: jax.Array        # bool: exited at the open through a gap
    reason: jax.Array     # int32: EXIT_NONE, EXIT_TP or EXIT_SL
    price: jax.Array      # fill price (undefined when not exited)
    fav: jax.Array        # favourable excursion reached in this bar (price distance, >= 0)
    adv: jax.Array        # adverse excursion reached in this bar (price distance, >= 0)


def resolve_bar(side, entry, tp, sl, bar_open, bar_high, bar_low, sl_first=True,
                check_gap=True, intrabar=None, intrabar_jump=None) -> BarExit:
    """Resolve one OHLC bar for a trade open at its start.

    ``check_gap`` is False on the bar the trade was entered at the open (no gap is possible).
    ``intrabar`` / ``intrabar_jump`` (``[..., m]``, optional) are the bar's price path after the
    open (last point = close) and its jump flags; a stop crossed inside the bar fills per
    :func:`stop_fill`. ``m = 0`` or None: the stop fills at its level.
    Excursions on an exit bar are clipped conservatively: on an SL exit the favourable part
    of the bar is counted from the open only (the bar order is unknown), on a TP exit the
    adverse part is capped at the SL distance; on an SL exit the adverse part covers the fill.
    """
    s = jnp.asarray(side, jnp.float32)
    fav_px = jnp.where(s > 0, bar_high, bar_low)
    adv_px = jnp.where(s > 0, bar_low, bar_high)
    gap_sl = check_gap & (s * (bar_open - sl) <= 0)
    gap_tp = check_gap & ~gap_sl & (s * (bar_open - tp) >= 0)
    tp_touch = s * (fav_px - tp) >= 0
    sl_touch = s * (adv_px - sl) <= 0
    both = tp_touch & sl_touch
    intrabar_sl = sl_touch & (~both | sl_first)
    intrabar_tp = tp_touch & ~intrabar_sl
    is_sl = gap_sl | (~gap_tp & intrabar_sl)
    is_tp = gap_tp | (~gap_sl & intrabar_tp)
    sl_px = stop_fill(s, sl, intrabar, intrabar_jump)
    price = jnp.where(gap_sl | gap_tp, bar_open, jnp.where(is_sl, sl_px, tp))
    reason = jnp.where(is_tp, EXIT_TP, jnp.where(is_sl, EXIT_SL, EXIT_NONE)).astype(jnp.int32)
    fav_full = jnp.maximum(s * (fav_px - entry), 0.0)
    fav = jnp.where(is_sl, jnp.maximum(s * (bar_open - entry), 0.0), fav_full)
    adv_full = jnp.maximum(s * (entry - adv_px), 0.0)
    adv = jnp.where(is_tp, jnp.minimum(adv_full, jnp.abs(entry - sl)),
                    jnp.where(is_sl, jnp.maximum(adv_full, s * (entry - price)), adv_full))
    return BarExit(exited=is_sl | is_tp, gap=gap_sl | gap_tp, reason=reason, price=price,
                   fav=fav, adv=adv)


def stop_fill(side, level, intrabar=None, intrabar_jump=None):
    """Fill price of a stop at ``level`` crossed inside a bar with path ``intrabar`` ``[..., m]``.

    At the first path point at or beyond the level (long: ``<= level``; short: ``>=``) when
    the move into it is a jump (``intrabar_jump``; None = every move), else at the level;
    never better than the level. The level itself when ``m = 0``, ``intrabar`` is None or no
    point crossed (the caller decides whether the stop was touched). ``m`` is static.
    """
    s = jnp.asarray(side, jnp.float32)
    lvl = jnp.asarray(level, jnp.float32)
    if intrabar is None or jnp.shape(intrabar)[-1] == 0:
        return jnp.broadcast_to(lvl, jnp.broadcast_shapes(s.shape, lvl.shape))
    pts = jnp.asarray(intrabar, jnp.float32)
    beyond = s[..., None] * (pts - lvl[..., None]) <= 0
    pts = jnp.broadcast_to(pts, beyond.shape)
    first = jnp.argmax(beyond, axis=-1)
    px = jnp.take_along_axis(pts, first[..., None], axis=-1)[..., 0]
    crossed = jnp.any(beyond, axis=-1)
    if intrabar_jump is not None:
        jump = jnp.broadcast_to(jnp.asarray(intrabar_jump, jnp.bool_), beyond.shape)
        crossed = crossed & jnp.take_along_axis(jump, first[..., None], axis=-1)[..., 0]
    px = jnp.where(crossed, px, lvl)
    return jnp.where(s > 0, jnp.minimum(px, lvl), jnp.maximum(px, lvl))


def tp_zone_accuracy(hit, mfe, tp_distance):
    """1.0 if the TP was hit, else ``clip(MFE / TP distance, 0, 1)``."""
    ratio = jnp.clip(mfe / jnp.maximum(tp_distance, 1e-12), 0.0, 1.0)
    return jnp.where(hit, 1.0, ratio)


def reached_level(side, level, highs, lows, mask):
    """Whether price touched ``level`` from the trade's favourable side on any masked bar.

    Used for the premature-exit rule: a manual/time exit after which price reached the TP
    within the horizon. ``highs``/``lows``/``mask`` share a trailing bar axis.
    """
    s = jnp.asarray(side, jnp.float32)[..., None]
    lvl = jnp.asarray(level)[..., None]
    fav_px = jnp.where(s > 0, highs, lows)
    return jnp.any(mask & (s * (fav_px - lvl) >= 0), axis=-1)
