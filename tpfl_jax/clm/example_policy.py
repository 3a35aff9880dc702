"""The worked example of ``docs/policies.md``: a user weight policy, loaded by its import path
``tpfl_jax.clm.example_policy:pnl_step`` like any researcher's own module."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tpfl_jax.clm.policies import REASON_NO_DATA, REASON_USER, PolicyParams, PolicyState, finish
from tpfl_jax.env.stats import TPStats


def pnl_step(stats: TPStats, state: PolicyState, params: PolicyParams
             ) -> tuple[jax.Array, PolicyState, jax.Array]:
    """Raise the weight by ``params.user[0]`` after a feedback period whose trades made money
    (PnL per trade > ``params.user[1]``), lower it by the same step after one that lost more
    than that margin, hold it otherwise and without valid stats; clipped to [w_min, w_max]."""
    step, margin = params.user[0], params.user[1]
    pnl = stats.pnl_per_trade
    move = jnp.where(pnl > margin, step, jnp.where(pnl < -margin, -step, 0.0))
    move = jnp.where(stats.valid, move, 0.0)
    w = jnp.clip(state.weight + move, params.w_min, params.w_max)
    return finish(w, jnp.where(stats.valid, REASON_USER, REASON_NO_DATA), state)
