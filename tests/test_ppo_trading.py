"""PPO on TradingEnv: weight x seed sweep in one program, trade metrics, trade table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.accounting import train_info_metrics
from tpfl_jax.agents.evaluate import evaluate
from tpfl_jax.agents.ppo import PPOConfig, make_train
from tpfl_jax.env.stats import EXIT_REASONS, TRADE_KEYS

trading = pytest.importorskip("tpfl_jax.env.trading")


def _market(seed=0, n_paths=4, n_bars=200, sub=4):
    from tpfl_jax.market.types import make_market_data

    rng = np.random.default_rng(seed)
    r = rng.normal(0, 0.01 / np.sqrt(sub), (n_paths, n_bars, sub))
    lp = np.log(100) + np.cumsum(r.reshape(n_paths, -1), 1).reshape(n_paths, n_bars, sub)
    return make_market_data(np.exp(lp[..., 0]), np.exp(lp.max(-1)), np.exp(lp.min(-1)),
                            np.exp(lp[..., -1]), volume=np.full((n_paths, n_bars), 1e6))


def test_weight_sweep_metrics_and_trades():
    env = trading.TradingEnv(window=8, n_tp=3)
    params = env.make_params(_market(), tp_mults=(1.0, 2.0, 3.0), max_steps_in_episode=64)
    cfg = PPOConfig(num_envs=4, num_steps=32, total_timesteps=4 * 32 * 2, update_epochs=1,
                    num_minibatches=2, widths=(16, 16))
    weights = jnp.array([0.0, 2.0])
    eps = jax.tree.map(lambda x: jnp.broadcast_to(x, (2, *jnp.shape(x))), params)
    eps = eps.replace(tp_reward_weight=weights)
    train = make_train(cfg, env, params, info_metrics=train_info_metrics)
    sweep = jax.jit(jax.vmap(jax.vmap(train, (0, None)), (None, 0)))
    out = sweep(jax.random.split(jax.random.key(0), 2), eps)
    m = out.metrics
    for k in ("trade/trades", "trade/hit_rate", "trade/mean_r", "trade/premature_rate",
              "trade/pnl", "episode_return"):
        assert m[k].shape == (2, 2, cfg.num_updates), k
    assert any(k.startswith("reward_terms/") for k in m)
    assert bool(m["finite"].all())
    assert float(m["trade/trades"].sum()) > 0
    p = jax.tree.map(lambda x: x[1, 0], out.params)
    ev = evaluate(p, env, params, jax.random.key(1), n_episodes=4, deterministic=False,
                  config=cfg)
    assert ev.returns.shape == (4,)
    df = ev.trades
    assert df is not None and len(df) > 0
    assert set(TRADE_KEYS) <= set(df.columns)
    assert set(df["exit_reason"]) <= set(EXIT_REASONS[1:])
