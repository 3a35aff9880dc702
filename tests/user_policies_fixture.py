"""User weight policies for ``tests/test_user_policy.py`` (kinds ``user_policies_fixture:<name>``;
the tests directory is on ``sys.path`` under pytest): one good policy and one of each mistake the
loader must refuse."""

from __future__ import annotations

import jax.numpy as jnp

from tpfl_jax.clm.policies import REASON_NO_DATA, REASON_USER, finish


def pnl_step(stats, state, params):
    """Up ``params.user[0]`` after a period with positive PnL per trade, down after a negative
    one, held without valid stats; clipped to [w_min, w_max]."""
    step = params.user[0]
    move = jnp.where(stats.pnl_per_trade > 0, step, -step)
    w = jnp.clip(state.weight + jnp.where(stats.valid, move, 0.0), params.w_min, params.w_max)
    return finish(w, jnp.where(stats.valid, REASON_USER, REASON_NO_DATA), state)


def two_args(stats, state):                      # no params
    return finish(state.weight, REASON_USER, state)


def python_if(stats, state, params):             # Python `if` on a traced value
    if stats.pnl_per_trade > 0:
        return finish(state.weight + 0.1, REASON_USER, state)
    return finish(state.weight, REASON_USER, state)


def float_of_tracer(stats, state, params):       # float() of a traced value
    return finish(float(stats.tp_hit_rate) * 2.0, REASON_USER, state)


def vector_weight(stats, state, params):         # one weight per grid point: shape (4,)
    w, new, code = finish(state.weight, REASON_USER, state)
    return params.bandit_grid * w, new, code


def float_count(stats, state, params):           # n_updates turned into a float
    w, new, code = finish(state.weight, REASON_USER, state)
    return w, new.replace(n_updates=new.n_updates * 1.0), code


def two_outputs(stats, state, params):           # no code
    return finish(state.weight, REASON_USER, state)[:2]


def bad_code(stats, state, params):              # a code outside REASON_NAMES
    return finish(state.weight, 99, state)


NOT_A_FUNCTION = 3.0
