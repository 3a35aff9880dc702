"""Contract: the trades of a real TradingEnv rollout record into the tracker unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from tpfl_jax.accounting import exit_reason_table, tp_stats
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


def _trades(n: int, rng: np.random.Generator, all_misses: bool = False) -> pd.DataFrame:
    """``n`` consistent closed trades with the trade contract's columns (long and short)."""
    side = rng.choice([-1, 1], n)
    entry = 100 + rng.normal(0, 5, n)
    tp_mult = rng.choice([0.5, 1.0, 2.0], n)
    vol = 0.01 * entry
    reasons = np.array(["sl", "time", "manual"] if all_misses else ["tp", "sl", "time", "manual"])
    reason = rng.choice(reasons, n)
    r = np.where(reason == "tp", tp_mult, np.where(reason == "sl", -1.0, rng.normal(0, 0.5, n)))
    return pd.DataFrame({
        "side": side, "entry_price": entry, "exit_price": entry * (1 + 0.001 * side * r),
        "tp_price": entry + side * tp_mult * vol, "sl_price": entry - side * vol,
        "tp_mult": tp_mult, "r_planned": tp_mult, "r_realised": r, "pnl": r * vol,
        "exit_reason": reason, "hit": reason == "tp",
        "premature": np.isin(reason, ["time", "manual"]) & (rng.random(n) < 0.5),
        "tp_zone_accuracy": np.where(reason == "tp", 1.0, rng.random(n))})


@pytest.mark.parametrize("case", ["mixed", "all_misses", "none"])
def test_tracker_feedback_dict_equals_device_tp_stats(case):
    # one definition of every rate (env.stats.tp_rates): the tracker's SQL sums in float64 and
    # the on-device TPStats of the same trades (accounting.tp_stats) agree
    rng = np.random.default_rng(1)
    df = _trades(0 if case == "none" else 57, rng, all_misses=case == "all_misses")
    rec = {k: df[k].to_numpy() for k in df if k != "exit_reason"}
    rec |= {"exit_reason": df["exit_reason"].map(EXIT_REASONS.index).to_numpy(np.int32),
            "closed": np.ones(len(df), bool)}
    rec |= {k: np.zeros(len(df)) for k in TRADE_KEYS if k not in rec}
    dev = tp_stats({k: jax.numpy.asarray(v) for k, v in rec.items()}, min_attempts=1)
    with TPPerformanceTracker() as t:
        if len(df):
            t.record_trades(df, strategy_id="rl", symbol="S")
        fb = t.get_strategy_tp_feedback("rl", min_attempts=1)
        host = t.get_tp_stats("rl", min_attempts=1)
    if case == "none":
        assert fb is None and not bool(dev.valid) and not bool(host.valid)
        for f in ("tp_hit_rate", "actual_r", "premature_exit_rate", "pnl_per_trade",
                  "no_edge_hit_rate", "total_attempts"):
            assert float(getattr(dev, f)) == float(getattr(host, f)) == 0.0
        return
    assert fb["total_attempts"] == len(df) == float(dev.total_attempts)
    if case == "all_misses":
        assert fb["total_hits"] == 0 and fb["tp_hit_rate"] == 0.0 == float(dev.tp_hit_rate)
    pairs = {"tp_hit_rate": "tp_hit_rate", "avg_r_multiple": "avg_r_multiple",
             "actual_r_multiple": "actual_r", "premature_exit_rate": "premature_exit_rate",
             "pnl_per_trade": "pnl_per_trade", "no_edge_hit_rate": "no_edge_hit_rate",
             "tp_skill": "tp_skill", "total_hits": "total_hits", "total_misses": "total_misses"}
    for k, f in pairs.items():
        np.testing.assert_allclose(fb[k], float(getattr(dev, f)), rtol=1e-5, atol=1e-6,
                                   err_msg=k)
        np.testing.assert_allclose(float(getattr(host, f)), float(getattr(dev, f)), rtol=1e-5,
                                   atol=1e-6, err_msg=f)


def test_exit_reason_table_is_finalize_per_group():
    df = _trades(40, np.random.default_rng(2))
    table = exit_reason_table(df)
    assert list(table.index[-1:]) == ["all"] and table.loc["all", "trades"] == 40
    for reason, g in df.groupby("exit_reason"):
        row = table.loc[reason]
        assert row["trades"] == len(g) and row["share"] == pytest.approx(len(g) / 40)
        assert row["mean_r"] == pytest.approx(g["r_realised"].mean())
        assert row["premature_rate"] == pytest.approx(g["premature"].mean())
        assert row["total_pnl"] == pytest.approx(g["pnl"].sum())
        assert row["mean_tp_accuracy"] == pytest.approx(g["tp_zone_accuracy"].mean())
