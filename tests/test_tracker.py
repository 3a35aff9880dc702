"""TPPerformanceTracker: aggregates, validation, atomicity, persistence and kill-safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from tpfl_jax.accounting import tp_stats
from tpfl_jax.env.stats import R_CAP, TRADE_KEYS
from tpfl_jax.tracking import tracker as tr
from tpfl_jax.tracking.tracker import (
    ACTUAL_R_KEY,
    EDGE_KEYS,
    FEEDBACK_KEYS,
    TPPerformanceTracker,
    get_tp_tracker,
    reset_tp_tracker,
)

REPO = Path(__file__).resolve().parents[1]


def trades_df(n: int, hits: int, *, symbol_id: int = 0, premature: int = 0,
              r_hit: float = 2.0, r_miss: float = -1.0, mfe=None) -> pd.DataFrame:
    """A PPO-style trades frame (TRADE_KEYS columns, exit_reason as names)."""
    reasons = ["tp"] * hits + ["manual"] * premature + ["sl"] * (n - hits - premature)
    hit = np.array([r == "tp" for r in reasons])
    df = pd.DataFrame({
        "closed": True, "exit_reason": reasons, "side": 1,
        "entry_price": 100.0, "exit_price": np.where(hit, 102.0, 99.0),
        "tp_price": 102.0, "sl_price": 99.0, "tp_mult": 2.0, "r_planned": 2.0,
        "r_realised": np.where(hit, r_hit, r_miss), "pnl": np.where(hit, 2.0, -1.0),
        "mfe": mfe if mfe is not None else np.where(hit, 2.0, 0.5), "mae": 0.5,
        "tp_zone_accuracy": np.where(hit, 1.0, 0.25), "hit": hit,
        "premature": [r == "manual" for r in reasons],
        "entry_bar": np.arange(n) * 10, "exit_bar": np.arange(n) * 10 + 5, "path": 0,
        "symbol_id": symbol_id,
    })
    assert set(df.columns) == set(TRADE_KEYS)
    return df


@pytest.fixture
def t():
    with TPPerformanceTracker() as tracker:
        yield tracker


def test_feedback_matches_issue_example(t):
    t.record_trades(trades_df(20, 6), strategy_id="RL_V3", symbol="BTCUSDT")
    fb = t.get_strategy_tp_feedback("RL_V3", "BTCUSDT")
    assert set(fb) == set(FEEDBACK_KEYS) | {ACTUAL_R_KEY} | set(EDGE_KEYS)
    assert fb["total_attempts"] == 20 and fb["total_hits"] == 6 and fb["total_misses"] == 14
    assert fb["tp_hit_rate"] == pytest.approx(0.30)
    assert fb["avg_r_multiple"] == pytest.approx(1 / 0.3) and round(fb["avg_r_multiple"], 2) == 3.33
    assert fb[ACTUAL_R_KEY] == pytest.approx((6 * 2.0 - 14 * 1.0) / 20)
    assert fb["premature_exit_rate"] == 0.0
    # per-trade economics: mean PnL, no-edge hit rate sl / (tp + sl) = 1 / (1 + 2), skill
    assert fb["pnl_per_trade"] == pytest.approx((6 * 2.0 - 14 * 1.0) / 20)
    assert fb["no_edge_hit_rate"] == pytest.approx(1 / 3)
    assert fb["tp_skill"] == pytest.approx(0.3 - 1 / 3)
    st = t.get_tp_stats("RL_V3", "BTCUSDT")
    assert float(st.pnl_per_trade) == pytest.approx(-0.1)
    assert float(st.tp_skill) == pytest.approx(0.3 - 1 / 3, abs=1e-6)


def test_min_attempts_boundary_and_validation(t):
    t.record_trades(trades_df(10, 5), strategy_id="s", symbol="A")
    assert t.get_strategy_tp_feedback("s", min_attempts=11) is None
    assert t.get_strategy_tp_feedback("s", min_attempts=10)["total_attempts"] == 10
    assert t.get_strategy_tp_feedback("unknown") is None
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="min_attempts"):
            t.get_strategy_tp_feedback("s", min_attempts=bad)
    with pytest.raises(ValueError, match="r_source"):
        t.get_strategy_tp_feedback("s", r_source="median")
    with pytest.raises(ValueError, match="last_n"):
        t.get_strategy_tp_feedback("s", last_n=0)


def test_multi_symbol_aggregation_and_actual_r(t):
    t.record_trades(trades_df(10, 2), strategy_id="s", symbol="A")
    t.record_trades(trades_df(30, 18, premature=3), strategy_id="s", symbol="B")
    t.record_trades(trades_df(50, 50), strategy_id="other", symbol="A")
    all_ = t.get_strategy_tp_feedback("s", None)
    assert (all_["total_attempts"], all_["total_hits"]) == (40, 20)
    assert all_["premature_exit_rate"] == pytest.approx(3 / 40)
    both = t.get_strategy_tp_feedback("s", ["A", "B"])
    assert both == all_
    only_a = t.get_strategy_tp_feedback("s", "A")
    assert (only_a["total_attempts"], only_a["total_hits"]) == (10, 2)
    act = t.get_strategy_tp_feedback("s", r_source="actual")
    assert act["avg_r_multiple"] == pytest.approx(act[ACTUAL_R_KEY])
    assert act[ACTUAL_R_KEY] == pytest.approx((20 * 2.0 - 20 * 1.0) / 40)


def test_zero_hits_estimated_r_is_capped(t):
    t.record_trades(trades_df(12, 0), strategy_id="s", symbol="A")
    fb = t.get_strategy_tp_feedback("s")
    assert fb["tp_hit_rate"] == 0.0 and fb["avg_r_multiple"] == R_CAP


def test_trades_without_tp_are_not_attempts(t):
    t.record_trades(trades_df(10, 4), strategy_id="s", symbol="A")
    t.record_trade("s", "A", side=-1, entry_price=100.0, exit_price=101.0, exit_reason="sl",
                   r_realised=-1.0, sl_price=101.0)
    fb = t.get_strategy_tp_feedback("s")
    assert fb["total_attempts"] == 10 and t.count() == 11


def test_last_n_and_time_window(t):
    base = pd.Timestamp("2024-01-01", tz="UTC")
    old = trades_df(10, 0)
    old["exit_time"] = [base + pd.Timedelta(hours=i) for i in range(10)]
    new = trades_df(10, 10)
    new["exit_time"] = [base + pd.Timedelta(days=5, hours=i) for i in range(10)]
    t.record_trades(pd.concat([old, new], ignore_index=True), strategy_id="s", symbol="A")
    assert t.get_strategy_tp_feedback("s", last_n=10)["tp_hit_rate"] == 1.0
    assert t.get_strategy_tp_feedback("s", last_n=15)["total_hits"] == 10
    assert t.get_strategy_tp_feedback("s", min_attempts=5, last_n=5)["total_attempts"] == 5
    until = base + pd.Timedelta(days=6)
    w = t.get_strategy_tp_feedback("s", window="2D", until=until)
    assert (w["total_attempts"], w["total_hits"]) == (10, 10)
    s = t.get_strategy_tp_feedback("s", since="2024-01-01T00:00", until="2024-01-02")
    assert (s["total_attempts"], s["total_hits"]) == (10, 0)
    with pytest.raises(ValueError, match="window"):
        t.get_strategy_tp_feedback("s", window="-1D")


@pytest.mark.parametrize("field,value,match", [
    ("exit_reason", "stop", "exit_reason"),
    ("exit_reason", "none", "exit_reason"),
    ("r_realised", float("nan"), "r_realised"),
    ("r_realised", float("inf"), "r_realised"),
    ("entry_price", -1.0, "entry_price"),
    ("mfe", -0.1, "mfe"),
    ("side", 0, "side"),
    ("hit", False, "hit"),          # row 7 is a TP exit
    ("closed", False, "closed"),
    ("tp_price", 98.0, "tp_price"),  # wrong side of a long entry
    ("premature", True, "premature"),  # a TP exit cannot be premature
    ("tp_zone_accuracy", 1.5, "tp_zone_accuracy"),
])
def test_bad_row_raises_naming_row_and_field_and_writes_nothing(t, field, value, match):
    df = trades_df(12, 9)
    df[field] = df[field].astype(object)
    df.at[7, field] = value
    t.record_trades(trades_df(10, 5), strategy_id="s", symbol="A")
    with pytest.raises(ValueError, match=rf"row 7 .*{match}"):
        t.record_trades(df, strategy_id="s", symbol="A")
    assert t.count() == 10


def test_record_trade_validation(t):
    kw = dict(side=1, entry_price=100.0, exit_price=102.0, r_realised=2.0, tp_price=102.0)
    with pytest.raises(ValueError, match="exit_reason"):
        t.record_trade("s", "A", exit_reason="take_profit", **kw)
    with pytest.raises(ValueError, match="r_realised"):
        t.record_trade("s", "A", exit_reason="tp", **(kw | {"r_realised": float("nan")}))
    with pytest.raises(ValueError, match="unknown field"):
        t.record_trade("s", "A", exit_reason="tp", colour="red", **kw)
    with pytest.raises(ValueError, match="tp_price"):
        t.record_trade("s", "A", exit_reason="tp", **(kw | {"tp_price": None}))
    with pytest.raises(ValueError, match="strategy_id"):
        t.record_trade("", "A", exit_reason="tp", **kw)
    assert t.count() == 0
    rid = t.record_trade("s", "A", exit_reason=1, side="long", entry_price=100.0,
                         exit_price=102.0, r_realised=2.0, tp_price=102.0,
                         exit_time="2024-03-01T12:00:00Z", model_version="v1",
                         tp_reward_weight=2.0)
    row = t.trades().iloc[0]
    assert rid == 1 and row["exit_reason"] == "tp" and row["hit"] and row["side"] == 1
    assert row["exit_time"] == pd.Timestamp("2024-03-01T12:00:00Z")


def test_failure_inside_the_transaction_rolls_back(t, monkeypatch):
    real = tr._normalise
    calls = {"n": 0}

    def corrupt(rec, now):
        calls["n"] += 1
        row = real(rec, now)
        if calls["n"] == 5:  # passes validation, violates the table's CHECK at insert time
            row = row[:4] + (0,) + row[5:]
        return row

    monkeypatch.setattr(tr, "_normalise", corrupt)
    with pytest.raises(sqlite3.IntegrityError):
        t.record_trades(trades_df(10, 5), strategy_id="s", symbol="A")
    assert t.count() == 0


def test_symbol_mapping_and_argument_column_clash(t):
    df = pd.concat([trades_df(10, 5, symbol_id=0), trades_df(10, 1, symbol_id=1)],
                   ignore_index=True)
    t.record_trades(df, strategy_id="s", symbol={0: "BTC", 1: "ETH"}, model_version="m3",
                    tp_reward_weight=1.2)
    assert t.get_strategy_tp_feedback("s", "ETH")["total_hits"] == 1
    rows = t.trades("s")
    assert set(rows["model_version"]) == {"m3"} and set(rows["tp_reward_weight"]) == {1.2}
    with pytest.raises(ValueError, match="symbol_id"):
        t.record_trades(trades_df(3, 1, symbol_id=7), strategy_id="s", symbol={0: "BTC"})
    df2 = trades_df(3, 1).assign(strategy_id="x")
    with pytest.raises(ValueError, match="both as a column and as an argument"):
        t.record_trades(df2, strategy_id="s", symbol="A")
    with pytest.raises(ValueError, match="strategy_id"):
        t.record_trades(trades_df(3, 1), symbol="A")  # strategy missing
    assert t.count() == 20


def test_summary_frame(t):
    t.record_trades(trades_df(20, 6, premature=4), strategy_id="s", symbol="A")
    t.record_trades(trades_df(10, 5), strategy_id="s", symbol="B")
    s = t.summary()
    assert list(s.columns) == ["strategy_id", "symbol", "exit_reason", "trades", "share",
                               "mean_r", "premature_rate", "attempts", "hit_rate",
                               "group_premature_rate"]
    a = s[s.symbol == "A"].set_index("exit_reason")
    assert a.loc["tp", "trades"] == 6 and a.loc["manual", "trades"] == 4
    assert a.loc["sl", "trades"] == 10 and a["share"].sum() == pytest.approx(1.0)
    assert (a["hit_rate"] == 0.3).all() and (a["group_premature_rate"] == 0.2).all()
    assert a.loc["manual", "premature_rate"] == 1.0 and a.loc["tp", "mean_r"] == 2.0
    assert TPPerformanceTracker().summary().empty


def test_host_stats_match_device_reduction(t):
    df = trades_df(25, 9, premature=4)
    t.record_trades(df, strategy_id="s", symbol="A")
    host = t.get_tp_stats("s", min_attempts=10)
    trade = {k: jnp.asarray(df[k].to_numpy()) for k in TRADE_KEYS if k != "exit_reason"}
    dev = tp_stats(trade, min_attempts=10)          # the loop's reduction (accounting)
    for f in ("total_attempts", "total_hits", "tp_hit_rate", "avg_r_multiple", "actual_r",
              "premature_exit_rate", "valid"):
        np.testing.assert_allclose(getattr(host, f), getattr(dev, f), rtol=1e-6)
    assert float(host.volatility) == pytest.approx(2.0 / 2.0 / 100.0)
    assert not bool(t.get_tp_stats("s", min_attempts=26).valid)


def test_tp_distance_recommendations(t):
    rng = np.random.default_rng(0)
    mfe = rng.uniform(0.0, 2.0, 40)  # price units; vol unit = 1.0 (TP 2.0 away at tp_mult 2)
    df = trades_df(40, 0, mfe=mfe)
    t.record_trades(df, strategy_id="s", symbol="A")
    t.record_trades(trades_df(5, 1), strategy_id="s", symbol="B")  # too few trades
    recs = t.tp_distance_recommendations("s", target_hit_rate=0.5, min_trades=20)
    assert [r["symbol"] for r in recs] == ["A"]
    r = recs[0]
    assert r["recommended_tp_mult"] == pytest.approx(np.quantile(mfe, 0.5))
    assert r["scale_factor"] == pytest.approx(r["recommended_tp_mult"] / 2.0)
    assert r["direction"] == "CLOSER" and 0 < r["confidence"] < 1
    assert {"symbol", "direction", "scale_factor", "confidence", "reason"} <= set(r)
    with pytest.raises(ValueError, match="target_hit_rate"):
        t.tp_distance_recommendations("s", target_hit_rate=1.0)


def test_file_persistence_and_schema_version(tmp_path):
    path = tmp_path / "sub" / "tpfl.db"
    with TPPerformanceTracker(path) as a:
        a.record_trades(trades_df(15, 3), strategy_id="s", symbol="A")
        assert a.schema_version == tr.SCHEMA_VERSION
    with TPPerformanceTracker(path) as b:
        assert b.count() == 15
        assert b.get_strategy_tp_feedback("s")["total_hits"] == 3
        assert b._query("PRAGMA journal_mode")[0][0] == "wal"
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_version SET version = 99 WHERE component = 'tracker'")
    con.commit()
    con.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        TPPerformanceTracker(path)


def test_process_tracker_singleton(tmp_path, monkeypatch):
    reset_tp_tracker()
    monkeypatch.setenv("TPFL_DB", str(tmp_path / "env.db"))
    try:
        a = get_tp_tracker()
        assert a is get_tp_tracker() and a.path == str(tmp_path / "env.db")
        a.record_trades(trades_df(10, 2), strategy_id="s", symbol="A")
        assert tr.get_strategy_tp_feedback("s")["total_hits"] == 2
        with pytest.raises(ValueError, match="reset_tp_tracker"):
            get_tp_tracker(tmp_path / "other.db")
        reset_tp_tracker()
        b = get_tp_tracker(tmp_path / "other.db")
        assert b is not a and b.count() == 0
    finally:
        reset_tp_tracker()
    monkeypatch.delenv("TPFL_DB")
    assert tr.default_db_path() == Path("outputs") / "tpfl.db"


def test_killed_writer_loses_no_committed_trade(tmp_path):
    path = tmp_path / "kill.db"
    script = textwrap.dedent(f"""
        from tpfl_jax.tracking.tracker import TPPerformanceTracker
        t = TPPerformanceTracker({str(path)!r})
        batch = [dict(strategy_id="k", symbol="S", side=1, entry_price=100.0,
                      exit_price=102.0, exit_reason="tp", r_realised=2.0, tp_price=102.0,
                      sl_price=99.0, mfe=2.0, mae=0.1)] * 5
        n = 0
        while True:
            t.record_trades(batch)
            n += 5
            print(n, flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                            text=True)
    last, deadline = 0, time.monotonic() + 60
    try:
        while last < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and last >= 300
    with TPPerformanceTracker(path) as t:
        n = t.count()
        assert n >= last and n % 5 == 0  # every committed batch, never part of one
        assert t._query("PRAGMA integrity_check")[0][0] == "ok"
        assert t.get_strategy_tp_feedback("k")["total_hits"] == n
