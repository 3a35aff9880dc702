"""``TradingEnv.step`` (with its fusion hints, ``trading._once``) and ``step_batch`` give
gymnax's auto-reset outputs, for every feature set, on episodes that end by truncation and by
ruin, with and without fresh-path lanes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments.environment import Environment

from tpfl_jax.env.trading import FEATURE_BLOCKS, FEATURE_SETS, TradingEnv
from tpfl_jax.market import synthetic

N_ENVS, N_STEPS = 8, 24
# intrabar paths with jumps (the stop-fill path); 8 paths: lanes of stride 4 run out
MARKET = synthetic.generate("merton", jax.random.key(0), n_paths=8, n_bars=96, substeps=4)


def _assert_same(a, b):
    """Step outputs equal: integer and bool leaves exactly, float leaves to float32 rounding
    (XLA may order a sum or contract a multiply-add differently in another program). The
    observation's ``close - window mean`` cancels at the price scale (one ulp of a price of
    100 is 8e-6 before dividing by the vol unit), hence its absolute 1e-4."""
    for i, ((path, x), y) in enumerate(zip(jax.tree_util.tree_leaves_with_path(a),
                                           jax.tree.leaves(b), strict=True)):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-4 if i == 0 else 1e-6,
                                       err_msg=str(path))
        else:
            np.testing.assert_array_equal(x, y, err_msg=str(path))


def _params(env):
    # 7-step episodes; ruin at a 1% loss, so trading envs are ruined and flat ones truncate
    return env.make_params(MARKET, tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=7,
                           ruin_floor=0.99, position_size=3.0)


def gymnax_step(env, key, state, action, params):
    """gymnax's ``Environment.step``, line by line, the slow way (no fusion hints; both
    observations computed and selected). As documented in ``TradingEnv.step``, the reset
    takes ``key`` unsplit and the state's lane (``EnvState.lane_next``); ``reused_path`` is
    this env's extra flag."""
    obs_st, state_st, reward, terminated, info = env.step_env(key, state, action, params)
    truncated = env.is_truncated(state_st, params)
    done = jnp.logical_or(terminated, truncated)
    obs_re, state_re = env.reset_env(key, params, state_st.lane_next, state_st.lane_stride)
    state = jax.tree.map(lambda x, y: jax.lax.select(done, x, y), state_re, state_st)
    obs = jax.tree.map(lambda x, y: jax.lax.select(done, x, y), obs_re, obs_st)
    reused = done & (state_st.lane_stride > 0) & (state_st.lane_next < 0)
    info = {**info, "terminated": terminated, "truncated": truncated,
            "final_observation": obs_st, "reused_path": reused}
    return obs, state, reward, terminated, truncated, info


ALL_BLOCKS = "+".join(FEATURE_BLOCKS)         # lookback 64: its states suit every set


@pytest.fixture(scope="module")
def transitions():
    """A rollout of ``N_STEPS`` steps of ``N_ENVS`` envs: the inputs of every step (state,
    action, key; leading axes [step, env]) and the outputs of ``step_batch`` and of
    ``vmap(step)``. Staggered episodes, mostly flat (truncation) or trading (ruin at a 1%
    loss); envs 0-3 on fresh-path lanes of stride 4 that run out."""
    env = TradingEnv(window=8, n_tp=3, features=ALL_BLOCKS)
    params = _params(env)
    _, st = jax.vmap(env.reset, (0, None))(jax.random.split(jax.random.key(1), N_ENVS), params)
    lanes = jnp.arange(N_ENVS) < 4
    st = st.replace(time=st.time + jnp.arange(N_ENVS) % 5,
                    lane_next=jnp.where(lanes, 4 + jnp.arange(N_ENVS), -1),
                    lane_stride=jnp.where(lanes, 4, 0).astype(jnp.int32))
    acts = jax.random.randint(jax.random.key(2), (N_STEPS, N_ENVS), 0, env.num_actions)
    acts = jnp.where(jax.random.uniform(jax.random.key(3), acts.shape) < 0.5, 0, acts)
    keys = jax.random.split(jax.random.key(4), (N_STEPS, N_ENVS))

    def f(s, xs):
        k, a = xs
        out = env.step_batch(k, s, a, params)
        return out[1], (s, out, jax.vmap(env.step, (0, 0, 0, None))(k, s, a, params))
    states, batch, fast = jax.jit(lambda: jax.lax.scan(f, st, (keys, acts))[1])()
    return states, acts, keys, batch, fast


def _flat(x):
    return x.reshape(-1, *x.shape[2:])


def _vstep(f):
    return jax.vmap(f, (0, 0, 0, None))


@pytest.mark.parametrize("features", sorted(FEATURE_SETS))
def test_step_is_gymnax_auto_reset(features, transitions):
    """Every step of the rollout: ``vmap(step)`` = gymnax's definition (:func:`_assert_same`)."""
    env = TradingEnv(window=8, n_tp=3, features=features)
    params = _params(env)
    states, acts, keys = jax.tree.map(_flat, transitions[:3])
    args = (keys, states, acts)
    fast, ref = jax.jit(lambda: (_vstep(env.step)(*args, params), _vstep(
        lambda k, s, a, p: gymnax_step(env, k, s, a, p))(*args, params)))()
    term, trunc = np.asarray(ref[3]), np.asarray(ref[4])
    assert term.any() and trunc.any()                              # ruin and truncation
    assert np.asarray(ref[5]["reused_path"]).any()                 # a lane ran out
    _assert_same(fast, ref)


def test_step_batch_is_vmapped_step(transitions):
    """``step_batch`` (resets computed only on steps where some env is done) = ``vmap(step)``,
    bit for bit, on every step of a rollout with lanes, ruin and truncation."""
    *_, batch, fast = transitions
    done = np.asarray(fast[3] | fast[4])
    assert (~done.any(axis=1)).any() and (done.any(axis=1) & ~done.all(axis=1)).any()
    for x, y in zip(jax.tree.leaves(batch), jax.tree.leaves(fast), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _GymnaxDefault(TradingEnv):
    """The env under gymnax's own ``Environment.step`` (key split, no lanes)."""

    step = Environment.step


def test_step_equals_gymnax_environment_step_itself(transitions):
    """Without lanes, ``TradingEnv.step`` given gymnax's reset key equals gymnax's code."""
    env, gym = TradingEnv(window=8, n_tp=3), _GymnaxDefault(window=8, n_tp=3)
    params = _params(env)
    states, acts, keys = jax.tree.map(_flat, transitions[:3])
    states = states.replace(lane_next=jnp.full_like(states.lane_next, -1),
                            lane_stride=jnp.zeros_like(states.lane_stride))
    reset_keys = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
    mine, theirs = jax.jit(lambda: (_vstep(env.step)(reset_keys, states, acts, params),
                                    _vstep(gym.step)(keys, states, acts, params)))()
    assert np.asarray(theirs[3]).any() and np.asarray(theirs[4]).any()
    mine[5].pop("reused_path")
    _assert_same(mine, theirs)
