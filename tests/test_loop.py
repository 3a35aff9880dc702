"""Closed loop on device: one compile for every policy x seed, stats, OOS split, host agreement."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.accounting import tp_stats
from tpfl_jax.agents.ppo import PPOConfig
from tpfl_jax.distributed import MeshConfig
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.loop import (
    LOOP_POLICY_KINDS,
    LoopConfig,
    WalkForwardMarkets,
    check_inputs,
    loop_policy_step,
    make_loop,
    make_loop_policy,
    seed_keys,
    stack_policies,
)
from tpfl_jax.market.types import make_market_data
from tpfl_jax.replay import all_deploy_trades, replay_weights
from tpfl_jax.sweeps import make_loop_sweep

FEEDBACK = ("seed_table", "ema", "vol_scaled", "gated", "continuous", "expectancy")
# vol_scaled thresholds scaled around the traded volatility so the branch matters
FB_OVERRIDES = ({}, {"ema_alpha": 0.5}, {"vol_ref": 0.005}, {"z": 1.0}, {},
                {"skill_margin": -0.5})
# every feedback kind with each feedback history (one compile: history is a policy leaf)
HISTORY = ("cycle",) * 8 + ("cumulative",) * 6 + ("window",) * 6
KINDS = ("fixed", "fixed", *FEEDBACK, *FEEDBACK, *FEEDBACK)
INIT_W = (0.5, 2.0) + (1.0,) * 18
OVERRIDES = ({}, {}, *FB_OVERRIDES, *FB_OVERRIDES, *FB_OVERRIDES)
N_SEEDS, N_CYCLES, MIN_ATTEMPTS, HIST_WINDOW = 2, 3, 10, 2


def gbm_market(n_paths: int, n_bars: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_paths, n_bars)), 1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], 1)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, close.shape)))
    return make_market_data(open_, high, low, close, volume=np.full(close.shape, 1e6))


def policies(init_w=INIT_W):
    return stack_policies([make_loop_policy(k, w, h, **o) for k, w, o, h in
                           zip(KINDS, init_w, OVERRIDES, HISTORY, strict=True)])


@pytest.fixture(scope="module")
def small():
    """One small loop, compiled once behind ``chex.assert_max_traces(n=1)``."""
    env = TradingEnv()
    data = gbm_market(6, 560)
    ep = env.make_params(data, max_steps_in_episode=40)
    markets = WalkForwardMarkets(train_bars=240, deploy_bars=100, window=env.window)
    cfg = LoopConfig(num_cycles=N_CYCLES, deploy_envs=12, keep_trades=True,
                     min_attempts=MIN_ATTEMPTS, feedback_mode="sampled", chunk_updates=1,
                     return_window=1, entropy_frac=1.0, history_window=HIST_WINDOW)
    pc = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 4, widths=(16,),
                   update_epochs=1, num_minibatches=2)
    loop = make_loop(cfg, pc, env, markets, ep)
    check_inputs(loop, data, env, ep)
    chex.clear_trace_counter()
    # pad: the P*S configurations need not divide the device count (e.g. 14 on 8 devices with
    # XLA_FLAGS=--xla_force_host_platform_device_count=8); the app's mesh default pads too
    traced = loop._replace(run_one=chex.assert_max_traces(loop.run_one, n=1))
    run = make_loop_sweep(traced, mesh_cfg=MeshConfig(on_indivisible="pad"))
    res = jax.device_get(run(seed_keys(0, N_SEEDS), policies(), data, ep, pc.hparams()))
    return dict(env=env, data=data, ep=ep, loop=loop, run=run, pc=pc, res=res)


def test_shapes_and_fixed_policies(small):
    res = small["res"]
    p, s, c = len(KINDS), N_SEEDS, N_CYCLES
    assert res.weight.shape == (p, s, c) and res.next_weight.shape == (p, s, c)
    assert res.stats.tp_hit_rate.shape == (p, s, c)
    assert all(v.shape == (p, s, c) for v in res.deploy.values())
    assert res.train_buffers["loss"].shape == (p, s, c, small["pc"].num_updates)
    assert np.all(res.train_buffers["finite"])
    np.testing.assert_array_equal(res.weight[0], 0.5)
    np.testing.assert_array_equal(res.weight[1], 2.0)
    # the weight trained with in cycle c+1 is the decision after cycle c
    np.testing.assert_array_equal(res.weight[:, :, 1:], res.next_weight[:, :, :-1])
    np.testing.assert_array_equal(res.weight[2:, :, 0], 1.0)
    # feedback policies moved the weight somewhere (the data gives them valid stats)
    assert np.all(res.stats.valid)
    assert np.any(res.next_weight[2:] != 1.0)


def test_both_deploy_modes_and_training_summary(small):
    res, pc = small["res"], small["pc"]
    shape = (len(KINDS), N_SEEDS, N_CYCLES)
    for k in ("pnl", "hit_rate", "tp_skill", "pnl_per_trade"):
        for mode in ("sampled", "greedy"):
            assert res.deploy[f"{mode}/{k}"].shape == shape
        # plain keys are the feedback mode (sampled here)
        np.testing.assert_array_equal(res.deploy[k], res.deploy[f"sampled/{k}"])
    assert not np.allclose(res.deploy["greedy/pnl"], res.deploy["sampled/pnl"])
    np.testing.assert_allclose(res.deploy["tp_skill"],
                               res.deploy["hit_rate"] - res.deploy["no_edge_hit_rate"], atol=1e-6)
    tr = res.training
    assert set(tr) == {"updates", "converged", "entropy", "entropy_max", "return"}
    assert np.all((tr["updates"] >= 1) & (tr["updates"] <= pc.num_updates))
    np.testing.assert_allclose(tr["entropy_max"], np.log(11), rtol=1e-6)
    assert np.all(tr["entropy"] <= tr["entropy_max"] + 1e-5)
    # curves hold exactly the updates used (NaN after them)
    used = np.isfinite(res.train_buffers["loss"]).sum(-1)
    np.testing.assert_array_equal(used, tr["updates"])
    # a cycle stops early only with the criterion met
    assert np.all(tr["converged"] | (tr["updates"] == pc.num_updates))


def test_one_compile_for_new_seeds_and_policy_values(small):
    res2 = small["run"](seed_keys(7, N_SEEDS), policies((0.7, 1.5, 1.0, 0.8) + INIT_W[4:]),
                        small["data"], small["ep"], small["pc"].hparams())
    np.testing.assert_array_equal(np.asarray(res2.weight)[1], 1.5)
    assert not np.allclose(np.asarray(res2.deploy["pnl"]), small["res"].deploy["pnl"])


def test_device_stats_match_tp_stats_of_kept_trades(small):
    res = small["res"]
    for p in (0, 4):
        for s in range(N_SEEDS):
            for c in range(N_CYCLES):
                tr = jax.tree.map(lambda x, p=p, s=s, c=c: x[p, s, c], res.trades)
                tr = dict(tr, closed=tr["closed"] & res.trade_active[p, s, c])
                ref = tp_stats(tr, min_attempts=MIN_ATTEMPTS)
                for f in ("total_attempts", "total_hits", "tp_hit_rate", "avg_r_multiple",
                          "actual_r", "premature_exit_rate", "valid"):
                    np.testing.assert_allclose(getattr(res.stats, f)[p, s, c],
                                               getattr(ref, f), rtol=1e-5, err_msg=f)
                assert res.deploy["trades"][p, s, c] == pytest.approx(
                    float(ref.total_attempts) / 12)


def test_host_replay_through_tracker_and_orchestrator_agrees(small):
    # every history mode: the tracker's window / cumulative selection on the replay clock
    host = replay_weights(small["res"], KINDS, OVERRIDES, INIT_W, min_attempts=MIN_ATTEMPTS,
                          history=HISTORY, history_window=HIST_WINDOW)
    np.testing.assert_allclose(host, small["res"].next_weight, rtol=0, atol=1e-6)
    df = all_deploy_trades(small["res"], [f"{k}{i}" for i, k in enumerate(KINDS)])
    assert len(df) == round(float((small["res"].deploy["trades"] * 12).sum()))
    assert {"policy", "seed", "cycle", "tp_reward_weight", "r_realised"} <= set(df.columns)


def test_walk_forward_deploy_window_is_out_of_sample():
    data = gbm_market(2, 600)
    mk = WalkForwardMarkets(train_bars=200, deploy_bars=100, window=16)
    key = jax.random.key(0)
    for c in range(3):
        tr, dep = mk.cycle_markets(data, key, jnp.int32(c))
        start = c * 100
        np.testing.assert_array_equal(tr.close, data.close[:, start:start + 200])
        np.testing.assert_array_equal(dep.close, data.close[:, start + 184:start + 300])
        # episodes start at bar >= window of the deploy slice: after every training bar
        assert start + 184 + 16 == start + 200
    with pytest.raises(ValueError, match="cycles need"):
        env = TradingEnv()
        loop = make_loop(LoopConfig(num_cycles=5, chunk_updates=1),
                         PPOConfig(num_envs=2, num_steps=8, total_timesteps=16), env, mk,
                         env.make_params(data, max_steps_in_episode=40))
        check_inputs(loop, data, env, env.make_params(data, max_steps_in_episode=40))


def test_fixed_policy_and_validation():
    from tpfl_jax.clm.policies import REASON_FIXED, init_policy_state
    from tpfl_jax.env.stats import make_tp_stats

    stats = make_tp_stats(20, 6, 10.0, 0)  # hit 0.3, estimated R 3.33 -> table says 2.0
    st = init_policy_state(0.5)
    w, _, code = loop_policy_step(stats, st, make_loop_policy("fixed", 0.5))
    assert float(w) == 0.5 and int(code) == REASON_FIXED
    w, _, _ = loop_policy_step(stats, st, make_loop_policy("seed_table"))
    assert float(w) == 2.0
    assert "fixed" in LOOP_POLICY_KINDS and "bandit" in LOOP_POLICY_KINDS
    with pytest.raises(ValueError, match="kind"):
        make_loop_policy("nope")
    with pytest.raises(ValueError, match="initial_weight"):
        make_loop_policy("fixed", -1.0)
    with pytest.raises(ValueError, match="num_cycles"):
        LoopConfig(num_cycles=0)
    for bad in ({"feedback_mode": "mode"}, {"entropy_frac": 1.5}, {"chunk_updates": 0},
                {"converge": 1}, {"history_window": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LoopConfig(**bad)
    with pytest.raises(ValueError, match="history"):
        make_loop_policy("ema", history="decayed")


def test_loop_sweep_layout_matches_one_run(small):
    # tpfl-loop runs the loop through sweeps.make_loop_sweep (policies x seeds flattened
    # policy-major onto the mesh): entry [p, s] is run_one of policy p with seed key s.
    res = small["res"]
    p, s = 1, 1
    one = jax.tree.map(lambda x: x[p], policies())
    got = jax.device_get(jax.jit(small["loop"].run_one)(
        seed_keys(0, N_SEEDS)[s], one, small["data"], small["ep"], small["pc"].hparams()))
    want = jax.tree.map(lambda x: x[p, s], res)
    assert got.weight.shape == want.weight.shape
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-5,
                                   atol=1e-6)


def test_history_aggregates_earlier_cycles(small):
    res = small["res"]
    own = res.deploy["trades"] * 12                   # each cycle's own deploy attempts
    hist = np.array(HISTORY)
    cyc, cum, win = (np.flatnonzero(hist == h) for h in ("cycle", "cumulative", "window"))
    np.testing.assert_allclose(res.stats.total_attempts[cyc], own[cyc], rtol=1e-6)
    np.testing.assert_allclose(res.stats.total_attempts[cum], np.cumsum(own[cum], -1),
                               rtol=1e-6)
    prev = np.concatenate([np.zeros_like(own[win][..., :1]), own[win][..., :-1]], -1)
    np.testing.assert_allclose(res.stats.total_attempts[win], own[win] + prev, rtol=1e-6)
    # a cumulative policy sees the earlier cycles' trades; the window forgets cycle 0 at c=2
    assert np.all(res.stats.total_attempts[cum][..., 1:] > own[cum][..., 1:])
    assert np.all(res.stats.total_attempts[win][..., 2] < res.stats.total_attempts[cum][..., 2])
    # same kind, same cycle-0 decision whatever the history
    np.testing.assert_array_equal(res.next_weight[cyc[2:], :, 0], res.next_weight[cum, :, 0])


def test_plateau_criterion_hand_cases():
    from tpfl_jax.loop import plateaued

    r = jnp.array([1.0, 2.0, 3.0, 4.0, jnp.nan, jnp.nan])
    assert not bool(plateaued(r, 3, 2, 0.5))          # fewer than 2 windows of chunks
    assert not bool(plateaued(r, 4, 2, 0.5))          # (3.5 - 1.5) = 2 > 0.5 * sd 1.29
    assert bool(plateaued(r, 4, 2, 1.6))              # 2 <= 1.6 * 1.29
    flat = jnp.array([5.0, 4.0, 5.0, 4.0, 4.5, 4.4])
    assert bool(plateaued(flat, 6, 2, 0.0))           # 4.45 - 4.5 <= 0
    assert bool(plateaued(flat, 4, 1, 0.0))           # 4 - 5 <= 0


def test_continue_opt_state_keeps_moments_restarts_schedule():
    import optax

    from tpfl_jax.agents.ppo import continue_opt_state, make_optimizer

    pc = PPOConfig(num_envs=2, num_steps=4, total_timesteps=32, num_minibatches=1,
                   update_epochs=1)
    tx = make_optimizer(pc, pc.hparams())
    params = {"w": jnp.ones(3)}
    st = tx.init(params)
    for _ in range(3):
        _, st = tx.update({"w": jnp.full(3, 0.5)}, st, params)
    fresh = tx.init(params)
    cont = continue_opt_state(fresh, st)
    assert int(cont[1].count) == 0                                     # schedule restarts
    np.testing.assert_array_equal(cont[1].inner_state[0].mu["w"], st[1].inner_state[0].mu["w"])
    assert int(cont[1].inner_state[0].count) == 3                      # Adam bias correction
    upd, _ = tx.update({"w": jnp.full(3, 0.5)}, cont, params)
    assert np.all(np.isfinite(optax.global_norm(upd)))


def test_one_definition_per_number_loop_evaluate_and_clm_adapter(small):
    """The last cycle's greedy deployment of one arm recomputed by ``evaluate`` (the same
    network, market and episode keys) and scored by the CLM adapter's metrics: every number
    (PnL, hit rate, trade Sharpe, mean R) is the same, from the one accounting layer."""
    from tpfl_jax.accounting import episode_keys, total
    from tpfl_jax.agents.evaluate import evaluate
    from tpfl_jax.clm.adapters import backtest_metrics, clm_metrics
    from tpfl_jax.loop import cycle_keys

    res, loop, ep = small["res"], small["loop"], small["ep"]
    p, s, c = 3, 1, N_CYCLES - 1
    keys = cycle_keys(seed_keys(0, N_SEEDS)[s], c)
    _, dep = loop.markets.cycle_markets(small["data"], keys.market, jnp.int32(c))
    params = jax.tree.map(lambda x: x[p, s], res.params)
    dep_params = ep.replace(market=dep, tp_reward_weight=res.weight[p, s, c])
    ev = evaluate(params, small["env"], dep_params, episode_keys(keys.deploy, 12),
                  deterministic=True, config=small["pc"])
    for k in ("pnl", "hit_rate", "trade_sharpe", "mean_r", "trades", "max_drawdown"):
        assert ev.metrics[k] == pytest.approx(float(res.deploy[f"greedy/{k}"][p, s, c]),
                                              rel=1e-5, abs=1e-4), k
    adapter = clm_metrics(total(ev.sums), max_drawdown=ev.metrics["max_drawdown"])
    table = backtest_metrics(ev.trades)
    for a, b in (("tp_hit_rate", "hit_rate"), ("sharpe_ratio", "trade_sharpe"),
                 ("mean_r", "mean_r"), ("max_drawdown", "max_drawdown")):
        assert adapter[a] == pytest.approx(ev.metrics[b], rel=1e-5, abs=1e-6), a
        if a != "max_drawdown":                       # a trades table has no equity curve
            assert table[a] == pytest.approx(ev.metrics[b], rel=1e-4, abs=1e-5), a
    assert adapter["n_trades"] == table["n_trades"] == len(ev.trades)


def test_arms_keep_common_random_numbers(small):
    """Every arm of a seed trains on the same data stream from the same initial network and
    deploys on the same episodes: the feedback arms all train at weight 1.0 in cycle 0, so
    their cycle-0 training curves and deployments are identical, bit for bit."""
    res = small["res"]
    fb = np.flatnonzero(np.asarray(INIT_W) == 1.0)
    assert len(fb) >= 10
    for k in ("pnl", "hit_rate", "greedy/pnl", "sampled/trades"):
        v = res.deploy[k][fb, :, 0]
        np.testing.assert_array_equal(v, np.broadcast_to(v[:1], v.shape), err_msg=k)
    loss = res.train_buffers["loss"][fb, :, 0]
    np.testing.assert_array_equal(loss, np.broadcast_to(loss[:1], loss.shape))
    # and a different weight changes the training but not the deploy episodes' market
    buf = res.train_buffers["loss"]
    assert not np.array_equal(buf[0, :, 0], buf[fb[0], :, 0])


def test_identical_arms_are_reported():
    import pandas as pd

    from tpfl_jax.results import identical_arms

    summary = pd.DataFrame({"policy": ["a", "b", "c", "a", "b", "c"], "seed": [0, 0, 0, 1, 1, 1],
                            "oos_pnl": [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]})
    assert identical_arms(summary) == [("a", "b")]          # c differs on seed 0


def test_policies_of_a_kind_the_program_lacks_are_refused(small):
    # a program built for some kinds runs another kind's branch for the rest: refused on the host
    loop = make_loop(small["loop"].config, small["pc"], small["env"], small["loop"].markets,
                     small["ep"], kinds=("fixed", "seed_table"))
    assert set(loop.kinds) == {"fixed", "seed_table"}
    ok = stack_policies([make_loop_policy("fixed", 0.5), make_loop_policy("seed_table")])
    check_inputs(loop, small["data"], small["env"], small["ep"], ok)
    msg = (r"policy kinds \['continuous', 'ema', 'expectancy', 'gated', 'vol_scaled'\] are not "
           r"among .*make_loop\(kinds")
    with pytest.raises(ValueError, match=msg):
        check_inputs(loop, small["data"], small["env"], small["ep"], policies())
    check_inputs(small["loop"], small["data"], small["env"], small["ep"], policies())  # all kinds
