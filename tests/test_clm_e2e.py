"""End to end: tracker feedback -> ClmOrchestrator -> real PPO training on TradingEnv ->
held-out backtest through the env -> trades recorded in the tracker -> registry."""

from __future__ import annotations

import asyncio

import jax
import numpy as np
import pytest

from tpfl_jax.agents.networks import make_network
from tpfl_jax.agents.ppo import PPOConfig, RunningMeanStd
from tpfl_jax.clm.adapters import PPOBacktestAdapter, PPOTrainingAdapter, _market_for
from tpfl_jax.clm.models import ModelType, TrainingJob, TriggerReason
from tpfl_jax.clm.orchestrator import ClmOrchestrator
from tpfl_jax.clm.registry import ModelRegistry
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.tracking.tracker import TPPerformanceTracker

TINY = PPOConfig(num_envs=8, num_steps=32, total_timesteps=8 * 32 * 3, widths=(16, 16),
                 num_minibatches=2, update_epochs=2, normalize_obs=True)
ENV_STATIC = {"window": 8, "n_tp": 3}
ENV_KW = {"tp_mults": (0.5, 1.0, 2.0), "max_steps_in_episode": 64}


@pytest.mark.slow
def test_handle_training_job_with_real_training(tmp_path):
    db = tmp_path / "tpfl.db"
    tracker = TPPerformanceTracker(db)
    for i in range(20):  # 30% hits, estimated R 3.33 -> seed table says 2.0
        hit = i < 6
        tracker.record_trade("RL_V3", "BTCUSDT", side=1, entry_price=100.0,
                             exit_price=102.0 if hit else 99.0, exit_reason="tp" if hit else "sl",
                             r_realised=2.0 if hit else -1.0, tp_price=102.0, sl_price=99.0)
    registry = ModelRegistry(db, checkpoint_dir=tmp_path / "ckpt")
    training = PPOTrainingAdapter(TINY, env_static=ENV_STATIC, env_kwargs=ENV_KW,
                                  n_paths=4, n_bars=256)
    backtest = PPOBacktestAdapter(tracker=tracker, n_episodes=8, n_paths=4, n_bars=256)
    orch = ClmOrchestrator(registry, training, backtest,
                           {"promotion_criteria": {"min_trades": 1, "min_sharpe_ratio": -100.0}},
                           tracker=tracker)
    job = TrainingJob(ModelType.RL_V3, "BTCUSDT", TriggerReason.PERIODIC,
                      {"strategy_id": "RL_V3", "lr": 1e-3})
    res = asyncio.run(orch.handle_training_job(job))

    assert job.training_params["tp_reward_weight"] == 2.0
    assert "Low hit rate" in job.training_params["tp_feedback_reason"]
    assert res.metrics["n_trades"] >= 1 and np.isfinite(res.metrics["sharpe_ratio"])
    v = registry.get(res.version.version_id)
    assert v.params["tp_reward_weight"] == 2.0
    # the backtest's trades landed in the tracker with the weight in force
    trades = tracker.trades("RL_V3", "BTCUSDT")
    assert len(trades) == 20 + int(res.metrics["n_trades"])
    assert set(trades["tp_reward_weight"].dropna().unique()) == {2.0}
    # the checkpoint restores the trained network
    env = TradingEnv(**ENV_STATIC)
    env_params = env.make_params(training.fetch_training_data(job), **ENV_KW)
    net = make_network(env, env_params, TINY.widths, TINY.activation)
    obs, _ = env.reset(jax.random.key(0), env_params)
    init = net.init(jax.random.key(0), obs[None])
    target = {"network": jax.tree.map(np.zeros_like, init),
              "obs_rms": RunningMeanStd.create((env.obs_size,))}
    ckpt = registry.load_checkpoint(v.version_id, target)
    restored = ckpt["network"]
    rms = ckpt["obs_rms"]                  # the observation statistics the network was trained on
    assert np.all(np.isfinite(np.asarray(rms.var))) and float(rms.count) > 1.0
    assert env.features == "vol" and np.asarray(rms.mean).shape == (env.obs_size,)
    leaves = jax.tree.leaves(restored)
    assert [x.shape for x in leaves] == [x.shape for x in jax.tree.leaves(init)]
    assert any(np.abs(np.asarray(x)).sum() > 0 for x in leaves)
    registry.close()
    tracker.close()


def test_training_adapter_rejects_bad_weight():
    adapter = PPOTrainingAdapter(TINY, env_static=ENV_STATIC, env_kwargs=ENV_KW)
    job = TrainingJob(ModelType.RL_V3, "X", TriggerReason.MANUAL, {"tp_reward_weight": -1.0})
    with pytest.raises(ValueError, match="tp_reward_weight"):
        asyncio.run(adapter.train(job, None))


def test_training_adapter_applies_job_overrides():
    adapter = PPOTrainingAdapter(TINY)
    job = TrainingJob(ModelType.RL_V3, "X", TriggerReason.MANUAL, {"lr": 1e-3, "gamma": 0.9})
    cfg = adapter.job_config(job)
    assert cfg.lr == 1e-3 and cfg.gamma == 0.9 and cfg.num_envs == TINY.num_envs
    train = adapter.fetch_training_data(job)
    held_out = _market_for(None, job, 1, 16, 1024)
    assert train.n_paths == 16 and train.close.shape == held_out.close.shape
    assert not np.allclose(np.asarray(train.close), np.asarray(held_out.close))
