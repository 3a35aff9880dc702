"""The host-side API refuses bad input with one clear line naming the argument, field, file or
row (never a raw TypeError / AttributeError / sqlite3 error), and the registry loses nothing.

Wrong types raise ``ArgTypeError``: a ``TypeError`` that is also a ``ValueError`` (the error
these APIs document), so both ``except`` clauses keep working.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from tpfl_jax.clm.registry import ModelRegistry
from tpfl_jax.tracking import tracker as tr
from tpfl_jax.tracking.checks import ArgTypeError
from tpfl_jax.tracking.tracker import TPPerformanceTracker

TRADE = dict(side=1, entry_price=100.0, exit_price=102.0, exit_reason="tp", r_realised=2.0,
             tp_price=102.0)


@pytest.fixture
def t():
    with TPPerformanceTracker() as tracker:
        yield tracker


@pytest.fixture
def reg(tmp_path):
    with ModelRegistry(":memory:", checkpoint_dir=tmp_path / "ckpt") as r:
        yield r


def _one_line(msg: str) -> str:
    assert "\n" not in msg, msg
    return msg


def _raises(exc, call, *needles):
    """``call()`` raises ``exc``; the one-line message contains every needle."""
    with pytest.raises(exc) as e:
        call()
    msg = _one_line(str(e.value))
    for n in needles:
        assert n in msg, (n, msg)
    return e.value


# =========================================================================== 1: record_trades
@pytest.mark.parametrize("trades", ["x", None, {"side": 1, "entry_price": 1.0}, 42, b"rows"])
def test_record_trades_refuses_what_is_not_a_batch_of_trades(t, trades):
    err = _raises(TypeError, lambda: t.record_trades(trades, strategy_id="S", symbol="X"),
                  f"record_trades: trades = {trades!r}"[:40],
                  "expected a pandas DataFrame (one row per closed trade) or a list of trade "
                  "dicts", f"(got {type(trades).__name__})")
    assert isinstance(err, ValueError) and isinstance(err, ArgTypeError)
    if isinstance(trades, dict):                 # one trade: says how to record it
        assert "record_trade(...)" in str(err) and "[trade]" in str(err)
    assert t.count() == 0


def test_record_trades_names_the_element_that_is_not_a_trade(t):
    _raises(TypeError, lambda: t.record_trades([TRADE, "x"], strategy_id="S", symbol="X"),
            "record_trades: trades[1] = 'x'; expected a trade dict")
    assert t.count() == 0
    # any iterable of dicts (a generator too) and pandas rows still work
    assert t.record_trades((dict(TRADE) for _ in range(2)), strategy_id="S", symbol="X") == 2
    rows = [r for _, r in pd.DataFrame([TRADE]).iterrows()]
    assert t.record_trades(rows, strategy_id="S", symbol="X") == 1


# =========================================================================== 2: argument types
@pytest.mark.parametrize("call,needle", [
    (lambda t: t.get_strategy_tp_feedback("S", symbol=5),
     "get_strategy_tp_feedback: symbol = 5; expected None, a non-empty string"),
    (lambda t: t.get_strategy_tp_feedback("S", ["A", 5]),
     "get_strategy_tp_feedback: symbol[1] = 5; expected a non-empty string"),
    (lambda t: t.get_strategy_tp_feedback(5), "get_strategy_tp_feedback: strategy_id = 5"),
    (lambda t: t.get_strategy_tp_feedback("S", min_attempts="10"),
     "get_strategy_tp_feedback: min_attempts = '10'; expected an integer >= 1"),
    (lambda t: t.get_tp_stats("S", 5), "get_tp_stats: symbol = 5"),
    (lambda t: t.trades("S", symbol=5), "trades: symbol = 5"),
    (lambda t: t.trades(strategy_id=5), "trades: strategy_id = 5"),
    (lambda t: t.tp_distance_recommendations("S", target_hit_rate="0.5"),
     "tp_distance_recommendations: target_hit_rate = '0.5'; expected a finite number > 0 "
     "and < 1"),
    (lambda t: t.tp_distance_recommendations("S", tolerance="x"),
     "tp_distance_recommendations: tolerance = 'x'; expected a finite number >= 0"),
    (lambda t: t.tp_distance_recommendations("S", symbol=5),
     "tp_distance_recommendations: symbol = 5"),
    (lambda t: t.record_trades([TRADE], strategy_id=5, symbol="X"),
     "record_trades: strategy_id = 5; expected a non-empty string"),
    (lambda t: t.record_trades([TRADE], strategy_id="S", symbol=5),
     "record_trades: symbol = 5; expected None, a symbol name"),
    (lambda t: t.record_trades([TRADE], strategy_id="S", symbol={"0": "BTC"}),
     "key '0' is not an integer"),
    (lambda t: t.record_trades([TRADE], strategy_id="S", symbol="X", tp_reward_weight="1"),
     "record_trades: tp_reward_weight = '1'; expected a finite number >= 0"),
])
def test_wrong_argument_types_name_the_argument(t, call, needle):
    err = _raises(TypeError, lambda: call(t), needle)
    assert isinstance(err, ValueError)
    assert t.count() == 0


def test_bad_argument_values_name_the_function_and_argument(t):
    _raises(ValueError, lambda: t.get_tp_stats("S", since=5), "get_tp_stats: since = 5")
    _raises(ValueError, lambda: t.tp_distance_recommendations("S", target_hit_rate=1.5),
            "target_hit_rate = 1.5")
    _raises(ValueError, lambda: t.tp_distance_recommendations("S", tolerance=float("nan")),
            "tolerance = nan")
    _raises(ValueError, lambda: t.record_trades([TRADE], strategy_id="S", symbol="X",
                                                exit_time="someday"),
            "record_trades: exit_time = 'someday'")


def test_module_feedback_and_tracker_paths_name_the_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TPFL_DB", str(tmp_path / "env.db"))
    tr.reset_tp_tracker()
    try:
        _raises(TypeError, lambda: tr.get_strategy_tp_feedback("S", symbol=5),
                "get_strategy_tp_feedback: symbol = 5")
    finally:
        tr.reset_tp_tracker()
    _raises(TypeError, lambda: tr.get_tp_tracker(5), "get_tp_tracker: path = 5")
    _raises(TypeError, lambda: TPPerformanceTracker(5), "TPPerformanceTracker: path = 5")
    _raises(ValueError, lambda: TPPerformanceTracker(""), "TPPerformanceTracker: path = ''")
    _raises(ValueError, lambda: ModelRegistry(":memory:", synchronous="fast"),
            "ModelRegistry: synchronous = 'fast'")
    assert not (tmp_path / "5").exists()                 # no stray database file


# =========================================================================== 5: schema version
def _altered_db(path: Path, component: str, version: int) -> None:
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_version SET version = ? WHERE component = ?", (version, component))
    table = "tp_trades" if component == "tracker" else "model_versions"
    con.execute(f"ALTER TABLE {table} ADD COLUMN added_in_v{version} TEXT")  # a v2 layout
    con.commit()
    con.close()


@pytest.mark.parametrize("cls,component", [(TPPerformanceTracker, "tracker"),
                                           (ModelRegistry, "registry")])
def test_another_schema_version_names_both_versions(tmp_path, cls, component):
    path = tmp_path / "tpfl.db"
    cls(path).close()
    _altered_db(path, component, 2)
    err = _raises(ValueError, lambda: cls(path), str(path),
                  f"{component} schema version 2 found (written by a newer tpfl_jax)",
                  f"expected {component} schema version 1")
    assert "not written by tpfl_jax" not in str(err)
    assert isinstance(err, RuntimeError)                 # as before
    cls(tmp_path / "fresh.db").close()


def test_a_database_without_our_schema_is_still_not_written_by_tpfl_jax(tmp_path):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE tp_trades (ticket INTEGER, price REAL)")
    _raises(ValueError, lambda: TPPerformanceTracker(foreign), "not written by tpfl_jax")
    other = tmp_path / "other_versions.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE schema_version (name TEXT, v INTEGER)")
    _raises(ValueError, lambda: TPPerformanceTracker(other),
            f"{other}: table 'schema_version' exists with columns ['name', 'v']",
            "not written by tpfl_jax")


