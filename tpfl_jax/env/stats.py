"""Trade-info contract of ``TradingEnv`` and on-device TP statistics.

Every ``TradingEnv.step`` puts ``info["trade"]``: a dict of per-step scalars (``TRADE_KEYS``)
describing the trade that closed on that step (``closed`` False and zeros otherwise).
``TPStats`` is the pytree of tracker aggregates the weight policies consume (same rules as the
SQLite tracker); ``tpfl_jax.accounting.tp_stats`` builds it from trade sums.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

EXIT_NONE, EXIT_TP, EXIT_SL, EXIT_TIME, EXIT_MANUAL, EXIT_END = range(6)
EXIT_REASONS = ("none", "tp", "sl", "time", "manual", "end")

TRADE_KEYS = (
    "closed",            # bool: a trade closed on this step
    "exit_reason",       # int32 code, index into EXIT_REASONS
    "side",              # int32 +1 long / -1 short
    "entry_price", "exit_price", "tp_price", "sl_price",
    "tp_mult",           # TP distance in volatility units
    "r_planned",         # tp_mult / sl_mult
    "r_realised",        # realised PnL (after costs) / initial risk
    "pnl",               # realised PnL after costs, currency
    "mfe", "mae",        # max favourable / adverse excursion, price distance >= 0
    "tp_zone_accuracy",  # 1 if TP hit else clip(MFE / TP distance, 0, 1)
    "hit",               # bool: exit by TP
    "premature",         # bool: manual/time exit and price reached TP within the horizon
    "entry_bar", "exit_bar", "path", "symbol_id",
)

R_CAP = 10.0  # cap of the seed's estimated R = 1 / hit_rate (value at zero hits)


def estimated_r_multiple(hit_rate, cap: float = R_CAP):
    """The seed's estimate ``1 / hit_rate``, capped at ``cap`` (so ``cap`` at zero hits)."""
    if isinstance(hit_rate, (int, float)):
        return float(cap) if hit_rate <= 1.0 / cap else 1.0 / hit_rate
    hr = jnp.asarray(hit_rate)
    return jnp.where(hr > 1.0 / cap, 1.0 / jnp.maximum(hr, 1.0 / cap), cap)


@struct.dataclass
class TPStats:
    """Tracker aggregates as a pytree (scalars, or batched under vmap).

    ``valid`` is False when ``total_attempts < min_attempts`` (the tracker's ``None``).
    ``volatility`` is the mean volatility unit relative to price of the traded bars (for
    policies that scale thresholds per symbol); 0 when unknown. ``pnl_per_trade``: mean
    realised PnL (currency, after costs) per attempt. ``no_edge_hit_rate``: mean over the
    attempts of ``sl / (tp + sl) = 1 / (1 + r_planned)``, the probability that a driftless
    continuous martingale touches the TP before the SL (no time barrier, no costs, no gaps:
    an approximation; 0 when unknown). ``tp_skill = tp_hit_rate - no_edge_hit_rate``.
    """

    total_attempts: jax.Array
    total_hits: jax.Array
    tp_hit_rate: jax.Array
    avg_r_multiple: jax.Array
    actual_r: jax.Array
    premature_exit_rate: jax.Array
    valid: jax.Array
    volatility: jax.Array
    pnl_per_trade: Any = 0.0
    no_edge_hit_rate: Any = 0.0

    @property
    def total_misses(self) -> jax.Array:
        return self.total_attempts - self.total_hits

    @property
    def tp_skill(self) -> jax.Array:
        """Hit rate minus the no-edge hit rate of the chosen TP distances."""
        return jnp.asarray(self.tp_hit_rate) - jnp.asarray(self.no_edge_hit_rate)


def _xp(*xs: Any) -> Any:
    """numpy for host values (floats keep float64), jnp for JAX arrays (traced or not)."""
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def no_edge_hit_rate(r_planned):
    """No-edge TP-before-SL probability ``1 / (1 + r_planned)`` (= sl / (tp + sl)) of a
    driftless continuous martingale; an approximation for bars, costs and time barriers.
    Host values give a float64 numpy value, JAX arrays a float32 array."""
    if _xp(r_planned) is np:
        return 1.0 / (1.0 + np.asarray(r_planned, np.float64))
    return 1.0 / (1.0 + jnp.asarray(r_planned, jnp.float32))


def no_edge_hit_probability(tp_mult, sl_mult):
    """``sl / (tp + sl)``: :func:`no_edge_hit_rate` of the planned R ``tp / sl`` (the
    gambler's-ruin TP-before-SL probability of a driftless continuous price; measured no-edge hit
    rates on the synthetic markets are within ~0.04 of it)."""
    return no_edge_hit_rate(jnp.asarray(tp_mult, jnp.float32) / sl_mult)


def bonus_accuracy(mode, hit, mfe_ratio, tp_mult, sl_mult):
    """The accuracy paid by the TP bonus under ``mode`` (index into
    ``env.trading.ACCURACY_MODES``: mfe_ratio, hit, skill).

    ``mfe_ratio``: the tracker's ``tp_zone_accuracy`` (1 on a hit, else clip(MFE / TP
    distance, 0, 1)): partial credit on losers, and larger for tighter TPs with no skill.
    ``hit``: 1 on a TP hit, else 0. ``skill``: hit minus the no-edge hit probability of the
    trade's TP distance (``no_edge_hit_probability``): a hit pays ``tp / (tp + sl)``, a miss is
    negative (so, under the seed's ``> 0`` rule, pays nothing), and a no-skill trader expects
    ``p0 * (1 - p0)`` per trade at every TP distance instead of tightness being paid.
    """
    h = jnp.asarray(hit, jnp.float32)
    skill = h - no_edge_hit_probability(tp_mult, sl_mult)
    return jnp.select([mode == 0, mode == 1], [mfe_ratio, h], skill).astype(jnp.float32)


def tp_rates(attempts, hits, sum_r, premature, sum_pnl=0.0, sum_no_edge=0.0
             ) -> dict[str, Any]:
    """The tracker's per-attempt rates, defined once for the device (jnp, float32) and the
    host (numpy, float64: the SQLite tracker): hit rate, mean realised R, premature exit rate,
    PnL per attempt and no-edge hit rate, each a sum over the attempts / attempts (0 without
    attempts)."""
    xp = _xp(attempts, hits, sum_r, premature, sum_pnl, sum_no_edge)
    dt = xp.float32 if xp is jnp else np.float64
    a = xp.asarray(attempts, dt)
    denom = xp.maximum(a, 1.0)

    def per(total: Any) -> Any:
        return xp.where(a > 0, xp.asarray(total, dt) / denom, 0.0)

    return {"tp_hit_rate": per(hits), "actual_r": per(sum_r),
            "premature_exit_rate": per(premature), "pnl_per_trade": per(sum_pnl),
            "no_edge_hit_rate": per(sum_no_edge)}


def make_tp_stats(attempts, hits, sum_r, premature, min_attempts=10, volatility=0.0,
                  r_cap: float = R_CAP, sum_pnl=0.0, sum_no_edge=0.0) -> TPStats:
    """``TPStats`` from counts and sums over the attempts (host floats or jnp arrays);
    ``sum_no_edge`` sums ``no_edge_hit_rate(r_planned)`` over the attempts."""
    attempts = jnp.asarray(attempts, jnp.float32)
    rates = tp_rates(attempts, jnp.asarray(hits, jnp.float32), sum_r, premature, sum_pnl,
                     sum_no_edge)
    return TPStats(
        total_attempts=attempts,
        total_hits=jnp.asarray(hits, jnp.float32),
        avg_r_multiple=estimated_r_multiple(rates["tp_hit_rate"], r_cap),
        valid=attempts >= min_attempts,
        volatility=jnp.asarray(volatility, jnp.float32),
        **rates,
    )
