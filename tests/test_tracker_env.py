"""Contract: the trades of a real TradingEnv rollout record into the tracker unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from tpfl_jax.accounting import tp_stats
from tpfl_jax.env.stats import EXIT_REASONS, TRADE_KEYS
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market.types import make_market_data
from tpfl_jax.tracking.tracker import TPPerformanceTracker


@pytest.mark.slow
def test_env_rollout_trades_record_and_match_device_stats():
    rng = np.random.default_rng(0)
    n_paths, n_bars = 4, 160
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_paths, n_bars)), 1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], 1)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, close.shape)))
    market = make_market_data(open_, high, low, close, volume=np.full(close.shape, 1e6),
                              symbol_id=np.arange(n_paths))
    env = TradingEnv()
    params = env.make_params(market, max_steps_in_episode=100)

    def rollout(key):
        k0, k1 = jax.random.split(key)
        _, state = env.reset(k0, params)

        def step(state, k):
            ka, ks = jax.random.split(k)
            a = jax.random.randint(ka, (), 0, env.num_actions)
            _, state, _, _, _, info = env.step(ks, state, a, params)
            return state, info["trade"]

        return jax.lax.scan(step, state, jax.random.split(k1, 200))[1]

    trade = jax.jit(jax.vmap(rollout))(jax.random.split(jax.random.key(0), 4))
    host = jax.device_get(trade)
    closed = np.asarray(host["closed"]).reshape(-1).astype(bool)
    df = pd.DataFrame({k: np.asarray(host[k]).reshape(-1)[closed]
                       for k in TRADE_KEYS if k != "closed"})
    df["exit_reason"] = pd.Categorical.from_codes(df["exit_reason"].astype(int),
                                                  categories=list(EXIT_REASONS))
    assert len(df) > 50 and df["hit"].any()
    with TPPerformanceTracker() as t:
        assert t.record_trades(df, strategy_id="rl", symbol={i: f"S{i}" for i in range(4)},
                               model_version="m1", tp_reward_weight=1.0) == len(df)
        host_stats, dev = t.get_tp_stats("rl", min_attempts=10), tp_stats(trade)
        for f in ("total_attempts", "total_hits", "tp_hit_rate", "avg_r_multiple", "actual_r",
                  "premature_exit_rate", "valid"):
            np.testing.assert_allclose(getattr(host_stats, f), getattr(dev, f), rtol=1e-5)
        back = t.trades("rl")
        assert (back["exit_reason"].to_numpy() == df["exit_reason"].astype(str).to_numpy()).all()
