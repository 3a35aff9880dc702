"""Fresh training paths: every update trains on paths no earlier update used, reproducibly from
the training key; running episodes keep their bars; arms keep common random numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.accounting import train_info_metrics
from tpfl_jax.agents.ppo import PPOConfig, make_ppo
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market.specs import SyntheticMarkets
from tpfl_jax.market.stream import PathStream

ENV = TradingEnv(window=8)
SPEC = SyntheticMarkets(kind="regime", train_paths=4, deploy_paths=4, n_bars=60, substeps=2)
# episodes of 20 steps, rollouts of 32: every env resets once or twice per update
CFG = PPOConfig(num_envs=4, num_steps=32, total_timesteps=4 * 32 * 3, update_epochs=1,
                num_minibatches=2, widths=(8,))


@pytest.fixture(scope="module")
def updates():
    src = SPEC.source()
    m, _ = SPEC.cycle_markets(src, jax.random.key(0), 0)
    ep = ENV.make_params(m, max_steps_in_episode=20)
    stream = SPEC.stream(ENV, CFG.num_envs, CFG.num_steps, 20)
    ppo = make_ppo(CFG, ENV, ep, info_metrics=train_info_metrics, stream=stream)
    init, update = jax.jit(ppo.init), jax.jit(ppo.update)

    def run(seed):
        rs = init(jax.random.key(seed), ep, None, src)
        states = [rs]
        for _ in range(3):
            rs, m = update(rs, ep)
            states.append(rs)
        return states, m

    return {"run": run, "stream": stream, "a": run(1), "b": run(1), "c": run(2)}


def test_lanes_cover_every_reset_of_an_update(updates):
    st: PathStream = updates["stream"]
    assert st.lanes == 3 and st.n_paths == 4 * 4          # ceil(32 / 20) + 1 lanes
    _, m = updates["a"]
    assert float(m["reused_paths"]) == 0.0                 # no env ran out of fresh paths


def test_fresh_paths_differ_between_updates_and_replay_from_the_key(updates):
    (sa, _), (sb, _), (sc, _) = updates["a"], updates["b"], updates["c"]
    fresh = [np.asarray(s.data.market.close[4:]) for s in sa]      # the lanes' paths
    for i in range(len(fresh)):
        for j in range(i):
            assert not np.any(np.isclose(fresh[i][:, None], fresh[j][None]).all(-1))
    for x, y in zip(sa, sb, strict=True):                  # same key: the same data
        np.testing.assert_array_equal(np.asarray(x.data.market.close),
                                      np.asarray(y.data.market.close))
    assert not np.allclose(np.asarray(sa[1].data.market.close), np.asarray(sc[1].data.market.close))


def test_running_episodes_keep_their_bars_across_a_refresh(updates):
    st: PathStream = updates["stream"]
    sa, _ = updates["a"]
    before = sa[1]                                          # after update 1
    data, env_state, _ = st.refresh(jax.random.key(9), before.data, before.env_state,
                                    ENV.default_params)
    old = before.data.market
    for i in range(4):                                      # env i's path copied to slot i
        p = int(before.env_state.path[i])
        np.testing.assert_array_equal(np.asarray(data.market.close[i]),
                                      np.asarray(old.close[p]))
        assert int(env_state.path[i]) == i and int(env_state.lane_next[i]) == 4 + i
    # the observation of a carried episode is unchanged
    p = ENV.default_params.replace(market=old, max_steps_in_episode=20)
    q = p.replace(market=data.market)
    o1 = jax.vmap(ENV.get_obs, (0, None))(before.env_state, p)
    o2 = jax.vmap(ENV.get_obs, (0, None))(env_state, q)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(o2))


def test_a_used_up_lane_falls_back_and_is_flagged():
    m, _ = SPEC.cycle_markets(SPEC.source(), jax.random.key(0), 0)
    p = ENV.make_params(m, max_steps_in_episode=20)
    _, st = ENV.reset_env(jax.random.key(0), p, jnp.int32(3), jnp.int32(2))   # last lane path
    assert int(st.path) == 3 and int(st.lane_next) == -1
    st = st.replace(time=jnp.int32(19))                     # the next step truncates
    _, st2, _, _, trunc, info = ENV.step(jax.random.key(1), st, 0, p)
    assert bool(trunc) and bool(info["reused_path"])


def test_runner_checkpoints_and_resumes_a_fresh_path_run_bit_exact(tmp_path):
    """The runner state of a fresh-path run holds the stream's paths, whose jump-free market
    has a zero-size intrabar array (orbax refuses those): it checkpoints, and a resumed run
    ends where an uninterrupted one does (``tpfl-train`` with one weight runs this way)."""
    from tpfl_jax.agents.runner import Runner

    src = SPEC.source()
    m, _ = SPEC.cycle_markets(src, jax.random.key(0), 0)
    ep = ENV.make_params(m, max_steps_in_episode=20)
    stream = SPEC.stream(ENV, CFG.num_envs, CFG.num_steps, 20)
    assert any(np.size(x) == 0 for x in jax.tree.leaves(m))      # the case orbax refuses

    def runner(path):
        return Runner(CFG, ENV, ep, path, chunk_updates=1, checkpoint_every=1, progress=False,
                      info_metrics=train_info_metrics, stream=stream, source=src)

    full = runner(tmp_path / "full").run()
    r = runner(tmp_path / "killed")
    r.run(until=2)
    r.close()
    resumed = runner(tmp_path / "killed").run()
    assert resumed.start_update == 2
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params), strict=True):
        assert jnp.array_equal(a, b)
