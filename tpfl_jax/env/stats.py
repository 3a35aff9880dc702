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


def no_edge_hit_rate(r_planned):
    """No-edge TP-before-SL probability ``1 / (1 + r_planned)`` (= sl / (tp + sl)) of a
    driftless continuous martingale; an approximation for bars, costs and time barriers."""
    return 1.0 / (1.0 + jnp.asarray(r_planned, jnp.float32))


def make_tp_stats(attempts, hits, sum_r, premature, min_attempts=10, volatility=0.0,
                  r_cap: float = R_CAP, sum_pnl=0.0, sum_no_edge=0.0) -> TPStats:
    """``TPStats`` from counts and sums over the attempts (host floats or jnp arrays);
    ``sum_no_edge`` sums ``no_edge_hit_rate(r_planned)`` over the attempts."""
    attempts = jnp.asarray(attempts, jnp.float32)
    hits = jnp.asarray(hits, jnp.float32)
    denom = jnp.maximum(attempts, 1.0)
    hit_rate = jnp.where(attempts > 0, hits / denom, 0.0)
    return TPStats(
        total_attempts=attempts,
        total_hits=hits,
        tp_hit_rate=hit_rate,
        avg_r_multiple=estimated_r_multiple(hit_rate, r_cap),
        actual_r=jnp.where(attempts > 0, jnp.asarray(sum_r, jnp.float32) / denom, 0.0),
        premature_exit_rate=jnp.where(attempts > 0,
                                      jnp.asarray(premature, jnp.float32) / denom, 0.0),
        valid=attempts >= min_attempts,
        volatility=jnp.asarray(volatility, jnp.float32),
        pnl_per_trade=jnp.where(attempts > 0, jnp.asarray(sum_pnl, jnp.float32) / denom, 0.0),
        no_edge_hit_rate=jnp.where(attempts > 0,
                                   jnp.asarray(sum_no_edge, jnp.float32) / denom, 0.0),
    )
