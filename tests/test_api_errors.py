"""The host-side API refuses bad input with one clear line naming the argument, field, file or
row (never a raw TypeError / AttributeError / sqlite3 error), and the registry loses nothing.

Wrong types raise ``ArgTypeError``: a ``TypeError`` that is also a ``ValueError`` (the error
these APIs document), so both ``except`` clauses keep working.
"""

from __future__ import annotations

import asyncio
import sqlite3
import warnings
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pandas as pd
import pytest

from tpfl_jax.clm.adapters import BacktestResult, TrainedModel
from tpfl_jax.clm.models import ModelStatus, ModelType, TrainingJob, TriggerReason
from tpfl_jax.clm.orchestrator import ClmOrchestrator
from tpfl_jax.clm.registry import ModelRegistry
from tpfl_jax.tracking import tracker as tr
from tpfl_jax.tracking.checks import MAX_NAME_LEN, ArgTypeError
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


# =========================================================================== 3, 6: registry
@pytest.mark.parametrize("method", ["set_status", "promote", "reject"])
def test_registry_reason_none_names_the_argument_and_changes_nothing(reg, method):
    v = reg.register("rl_v3", "X", {}, {})
    call = {"set_status": lambda: reg.set_status(v.version_id, "shadow", reason=None),
            "promote": lambda: reg.promote(v.version_id, reason=None),
            "reject": lambda: reg.reject(v.version_id, None)}[method]
    err = _raises(TypeError, call, f"{method}: reason = None; expected a non-empty string")
    assert not isinstance(err, sqlite3.Error)
    assert reg.get(v.version_id).status is ModelStatus.CANDIDATE
    assert len(reg.history(v.version_id)) == 1


@pytest.mark.parametrize("call,exc,needle", [
    # each raised a sqlite3 error (or stored a wrong value) before
    (lambda r, v: r.record_job(TrainingJob("rl_v3", "X", "manual"), "completed",
                               version_id=999),
     ValueError, "record_job: version_id = 999; expected None or the id of a registered "
                 "version"),
    (lambda r, v: r.register("rl_v3", "X", {}, {}, reason=None), TypeError,
     "register: reason = None"),
    (lambda r, v: r.register("rl_v3", "X", {}, {}, job_id=5), TypeError,
     "register: job_id = 5"),
    (lambda r, v: r.register("rl_v3", "X", {}, {}, parent_id="1"), TypeError,
     "register: parent_id = '1'"),
    (lambda r, v: r.register("rl_vx", "X", {}, {}), ValueError,
     "register: model_type = 'rl_vx'; expected one of ['rl_v3', 'xgboost', 'lightgbm']"),
    (lambda r, v: r.register("rl_v3", "X", {}, {}, trigger_reason="whim"), ValueError,
     "register: trigger_reason = 'whim'"),
    (lambda r, v: r.register("rl_v3", "X", None, {}), TypeError,
     "register: params = None; expected a dict"),
    (lambda r, v: r.set_status(v, "sleeping", "zzz"), ValueError,
     "set_status: status = 'sleeping'"),
    (lambda r, v: r.get("1"), TypeError, "get: version_id = '1'; expected an integer"),
    (lambda r, v: r.rollback("rl_v3", "X", reason=None), TypeError, "rollback: reason = None"),
    (lambda r, v: r.record_job("job", "running"), TypeError,
     "record_job: job = 'job'; expected a TrainingJob"),
    (lambda r, v: r.record_job(TrainingJob("rl_v3", "X", "manual"), "completed", error=7),
     TypeError, "record_job: error = 7"),
    (lambda r, v: r.list_versions(status="live"), ValueError, "list_versions: status = 'live'"),
    (lambda r, v: r.get_production("rl_v3", 5), TypeError, "get_production: symbol = 5"),
    (lambda r, v: ModelRegistry(":memory:", checkpoint_dir=3), TypeError,
     "ModelRegistry: checkpoint_dir = 3; expected None or a directory path"),
])
def test_registry_bad_values_are_clear_errors_not_sqlite_errors(reg, call, exc, needle):
    v = reg.register("rl_v3", "X", {}, {}).version_id
    err = _raises(exc, lambda: call(reg, v), needle)
    assert not isinstance(err, sqlite3.Error)
    assert [x.version_id for x in reg.list_versions()] == [v]       # nothing else recorded


def test_registry_accepts_numpy_ids_and_path_objects(reg, tmp_path):
    v = reg.register("rl_v3", "X", {}, {}, checkpoint_path=tmp_path / "ext")
    assert reg.get(np.int64(v.version_id)).checkpoint_path == str(tmp_path / "ext")
    assert reg.set_status(np.int32(v.version_id), "shadow", "watch").status is ModelStatus.SHADOW


def test_unstorable_text_is_a_value_error_naming_the_field(t, reg):
    _raises(ValueError, lambda: t.record_trade("S", "\ud800", **TRADE), "field 'symbol'",
            "UTF-8")
    _raises(ValueError, lambda: reg.register("rl_v3", "X", {}, {}, reason="\udcff"),
            "register: reason")
    assert t.count() == 0 and reg.list_versions() == []


# =========================================================================== 4: mutated jobs
def _orch(reg, tracker=None, **kw):
    return ClmOrchestrator(reg, kw.pop("training", None), kw.pop("backtest", None), kw,
                           tracker=tracker if tracker is not None else Mock())


@pytest.mark.parametrize("field,value,exc,needle", [
    ("training_params", None, TypeError,
     "job.training_params = None; expected a dict of training parameters (got NoneType)"),
    ("model_type", "x", ValueError,
     "job.model_type = 'x'; expected one of ['rl_v3', 'xgboost', 'lightgbm']"),
    ("model_type", 3, TypeError, "job.model_type = 3; expected a ModelType"),
    ("symbol", 5, TypeError, "job.symbol = 5; expected None (all symbols), a non-empty string"),
    ("symbol", ["BTC", None], TypeError, "job.symbol[1] = None"),
    ("symbol", "A" * 300, ValueError, "job.symbol = 'AAAA"),
    ("trigger_reason", None, TypeError, "job.trigger_reason = None"),
    ("job_id", None, TypeError, "job.job_id = None; expected a non-empty string"),
    ("created_at", "now", TypeError, "job.created_at = 'now'; expected a datetime"),
    ("training_params", {"strategy_id": 7}, TypeError,
     "job.training_params['strategy_id'] = 7; expected a non-empty string"),
])
def test_enrich_names_the_mutated_job_field(reg, field, value, exc, needle):
    tracker = Mock()
    job = TrainingJob(ModelType.RL_V3, "BTC", TriggerReason.MANUAL, {"strategy_id": "S"})
    setattr(job, field, value)
    err = _raises(exc, lambda: asyncio.run(_orch(reg, tracker).enrich_training_job(job)),
                  f"ClmOrchestrator.enrich_training_job: {needle}")
    assert not isinstance(err, AttributeError)
    tracker.get_strategy_tp_feedback.assert_not_called()   # refused before the tracker


def test_handle_training_job_records_nothing_for_a_mutated_job(reg):
    job = TrainingJob(ModelType.RL_V3, "BTC", TriggerReason.MANUAL)
    job.training_params = None
    _raises(TypeError, lambda: asyncio.run(_orch(reg).handle_training_job(job)),
            "ClmOrchestrator.handle_training_job: job.training_params = None")
    with pytest.raises(KeyError):
        reg.get_job(job.job_id)
    assert reg.list_versions() == []
    _raises(TypeError, lambda: asyncio.run(_orch(reg).handle_training_job("job")),
            "ClmOrchestrator.handle_training_job: job = 'job'; expected a TrainingJob")


def test_a_job_type_reset_to_its_string_value_still_works(reg):
    job = TrainingJob(ModelType.RL_V3, "BTC", TriggerReason.MANUAL)
    job.model_type = "xgboost"                  # accepted at construction, so here too
    asyncio.run(_orch(reg).enrich_training_job(job))
    assert job.model_type is ModelType.XGBOOST and job.training_params == {}


@pytest.mark.parametrize("config,exc,needle", [
    ("seed", TypeError, "ClmOrchestrator: config = 'seed'; expected None or a dict"),
    ({"feedback_window": "soon"}, ValueError, "ClmOrchestrator config: feedback_window = 'soon'"),
    ({"feedback_last_n": 0}, ValueError, "ClmOrchestrator config: feedback_last_n = 0"),
    ({"feedback_until": "someday"}, ValueError, "ClmOrchestrator config: feedback_until"),
    ({"tp_optimizer": {"target": 0.5}}, ValueError, "unknown tp_optimizer key(s) ['target']"),
    ({"promotion_criteria": {"min_trades": "30"}}, TypeError,
     "ClmOrchestrator config: promotion_criteria['min_trades'] = '30'"),
    ({"policy_params": None}, TypeError, "ClmOrchestrator config: policy_params = None"),
    ({"strategy_id": ""}, ValueError, "ClmOrchestrator config: strategy_id = ''"),
    ({"auto_promote": "no"}, TypeError, "ClmOrchestrator config: auto_promote = 'no'"),
])
def test_orchestrator_config_names_the_key(reg, config, exc, needle):
    # the feedback keys are read inside the tracker call, whose errors fall back to weight 1.0:
    # they are checked up front instead of silently giving every job the default weight
    _raises(exc, lambda: ClmOrchestrator(reg, None, None, config), needle)


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


# =========================================================================== 7: checkpoints
W1, W2 = {"w": np.arange(3, dtype=np.float32)}, {"w": np.full(3, 7.0, np.float32)}
TARGET = {"w": np.zeros(3, np.float32)}


def test_two_registries_in_one_directory_both_save_and_load_v1(tmp_path):
    a, b = ModelRegistry(tmp_path / "a.db"), ModelRegistry(tmp_path / "b.db")
    va = a.register("rl_v3", "SYN", {}, {})
    vb = b.register("rl_v3", "SYN", {}, {})
    assert va.version == vb.version == 1
    pa, pb = a.save_checkpoint(va.version_id, W1), b.save_checkpoint(vb.version_id, W2)
    assert pa != pb
    assert Path(pa).parent == tmp_path / "checkpoints" / "a.db"
    assert Path(pb).parent == tmp_path / "checkpoints" / "b.db"
    np.testing.assert_array_equal(a.load_checkpoint(va.version_id, TARGET)["w"], W1["w"])
    np.testing.assert_array_equal(b.load_checkpoint(vb.version_id, TARGET)["w"], W2["w"])
    a.close()
    b.close()


def test_checkpoints_of_the_old_layout_still_load(tmp_path):
    db = tmp_path / "tpfl.db"
    old = ModelRegistry(db, checkpoint_dir=tmp_path / "checkpoints")   # the former default
    v1 = old.register("rl_v3", "SYN", {}, {})
    p1 = old.save_checkpoint(v1.version_id, W1)
    assert Path(p1).parent == tmp_path / "checkpoints"
    old.close()
    new = ModelRegistry(db)
    np.testing.assert_array_equal(new.load_checkpoint(v1.version_id, TARGET)["w"], W1["w"])
    v2 = new.register("rl_v3", "SYN", {}, {})
    new.save_checkpoint(v2.version_id, W2)
    np.testing.assert_array_equal(new.load_checkpoint(v1.version_id, TARGET)["w"], W1["w"])
    np.testing.assert_array_equal(new.load_checkpoint(v2.version_id, TARGET)["w"], W2["w"])
    new.close()


def test_a_checkpoint_folder_of_another_registry_is_never_overwritten(tmp_path):
    shared = tmp_path / "shared"
    a = ModelRegistry(tmp_path / "a.db", checkpoint_dir=shared)
    b = ModelRegistry(tmp_path / "b.db", checkpoint_dir=shared)
    va, vb = a.register("rl_v3", "SYN", {}, {}), b.register("rl_v3", "SYN", {}, {})
    path = a.save_checkpoint(va.version_id, W1)
    _raises(ValueError, lambda: b.save_checkpoint(vb.version_id, W2),
            f"save_checkpoint: version {vb.version_id} (rl_v3/SYN v1): {path} already exists",
            "refusing to overwrite it")
    assert b.get(vb.version_id).checkpoint_path is None
    np.testing.assert_array_equal(a.load_checkpoint(va.version_id, TARGET)["w"], W1["w"])
    # a version's checkpoint is written once (a second save would break its digest)
    _raises(ValueError, lambda: a.save_checkpoint(va.version_id, W2),
            f"save_checkpoint: version_id = {va.version_id} already has a checkpoint at {path}")
    np.testing.assert_array_equal(a.load_checkpoint(va.version_id, TARGET)["w"], W1["w"])
    a.close()
    b.close()


def test_an_unfinished_save_of_the_same_version_is_redone(tmp_path):
    reg = ModelRegistry(tmp_path / "tpfl.db")
    v = reg.register("rl_v3", "SYN", {}, {})
    path = reg.save_checkpoint(v.version_id, W1)
    with reg._transaction() as cur:      # killed after writing, before recording the path
        cur.execute("UPDATE model_versions SET checkpoint_path = NULL WHERE id = ?",
                    (v.version_id,))
    assert reg.save_checkpoint(v.version_id, W2) == path
    np.testing.assert_array_equal(reg.load_checkpoint(v.version_id, TARGET)["w"], W2["w"])
    reg.close()


def test_two_in_memory_registries_do_not_share_a_checkpoint_folder():
    a, b = ModelRegistry(), ModelRegistry()
    assert a.checkpoint_dir != b.checkpoint_dir
    assert a.checkpoint_dir.parent == b.checkpoint_dir.parent == Path("outputs/checkpoints"
                                                                       ).absolute()
    a.close()
    b.close()


# =========================================================================== 8: long names
def test_a_symbol_too_long_for_a_path_is_refused_before_anything_is_recorded(reg):
    long = "S" * 300
    _raises(ValueError, lambda: reg.register("rl_v3", long, {}, {}),
            "register: symbol = 'SSS", f"expected at most {MAX_NAME_LEN} characters (got 300")
    _raises(ValueError, lambda: reg.register("rl_v3", ["BTC", long], {}, {}),
            "register: symbol[1] = 'SSS", f"at most {MAX_NAME_LEN} characters")
    _raises(ValueError, lambda: TrainingJob("rl_v3", long, "manual"),
            "TrainingJob: symbol = 'SSS", f"at most {MAX_NAME_LEN} characters")
    assert reg.list_versions() == []
    ok = reg.register("rl_v3", "S" * MAX_NAME_LEN, {}, {})     # the limit itself is fine
    reg.save_checkpoint(ok.version_id, W1)
    # reads accept any recorded key (nothing recorded becomes unreachable)
    assert reg.list_versions(symbol=long) == []


def test_every_accepted_symbol_key_can_be_saved(reg):
    syms = [f"{i:02d}" + "X" * (MAX_NAME_LEN - 2) for i in range(12)]   # a 779-char key
    v = reg.register("rl_v3", syms, {}, {})
    path = Path(reg.save_checkpoint(v.version_id, W1))
    assert len(path.name) < 150 and path.parent == reg.checkpoint_dir
    np.testing.assert_array_equal(reg.load_checkpoint(v.version_id, TARGET)["w"], W1["w"])
    w = reg.register("rl_v3", syms[:-1], {}, {})              # another long key: another folder
    assert Path(reg.save_checkpoint(w.version_id, W2)) != path


class _Train:
    def __init__(self, params):
        self.params = params

    def fetch_training_data(self, job):
        return None

    def train(self, job, data):
        return TrainedModel(params=self.params, metrics={})


class _Backtest:
    def backtest(self, job, model):
        return BacktestResult(metrics={"n_trades": 100.0, "sharpe_ratio": 1.0})


def test_a_candidate_whose_checkpoint_fails_is_rejected_not_left_half_registered(reg):
    orch = _orch(reg, Mock(get_strategy_tp_feedback=Mock(return_value=None)),
                 training=_Train({"w": np.array([1.0, np.nan])}), backtest=_Backtest())
    job = TrainingJob("rl_v3", "SYN", "manual")
    _raises(ValueError, lambda: asyncio.run(orch.handle_training_job(job)),
            "save_checkpoint: version 1: params['w']")
    (v,) = reg.list_versions()
    assert v.status is ModelStatus.REJECTED and v.checkpoint_path is None
    assert reg.history(v.version_id)[-1]["reason"].startswith("checkpoint not saved: ValueError")
    assert reg.get_job(job.job_id)["status"] == "failed"


# =========================================================================== 9: OHLCV loader
def _bars(n: int, *, flat: int = 0, const: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high, low = np.maximum(open_, close) * 1.002, np.minimum(open_, close) * 0.998
    if const:
        open_ = high = low = close = np.full(n, 100.0)
    lead = np.arange(n) < flat
    o, h, lo, c = (np.where(lead, 100.0, x) for x in (open_, high, low, close))
    return pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq="h"),
                         "open": o, "high": h, "low": lo, "close": c, "volume": 1.0})


def test_constant_prices_are_refused_naming_the_file(tmp_path):
    from tpfl_jax.market.data import load_ohlcv, read_ohlcv

    path = tmp_path / "const.csv"
    _bars(100, const=True).to_csv(path, index=False)
    _raises(ValueError, lambda: read_ohlcv(path), f"{path}: every bar has zero range",
            "constant prices (open = high = low = close = 100 on all 100 rows)",
            "no volatility")
    _raises(ValueError, lambda: load_ohlcv(path, window_len=10), f"{path}: every bar")
    close_only = _bars(50)
    close_only["open"] = close_only["high"] = close_only["low"] = close_only["close"]
    close_only.to_csv(path, index=False)
    _raises(ValueError, lambda: read_ohlcv(path), f"{path}: every bar has zero range, "
            "high == low on all 50 rows: no volatility")


def test_a_file_flat_only_at_its_start_loads_without_those_rows(tmp_path):
    from tpfl_jax.market.data import read_ohlcv, to_windows

    path = tmp_path / "flat_start.csv"
    df = _bars(200, flat=60)
    df.to_csv(path, index=False)
    with pytest.warns(UserWarning) as rec:
        frame = read_ohlcv(path)
    msg = _one_line(str(rec[0].message))
    assert msg.startswith(f"{path}: dropped the 60 leading row(s) without a price range, "
                          "row 0 (file line 2, timestamp 2024-01-01 00:00:00) to row 59 "
                          "(file line 61, timestamp 2024-01-03 11:00:00)"), msg
    assert "the data starts at row 60 (file line 62" in msg
    assert len(frame) == 140 and frame.index[0] == df["timestamp"][60]
    np.testing.assert_array_equal(frame["close"].to_numpy(), df["close"].to_numpy()[60:])
    md = to_windows(frame, len(frame))
    assert (np.asarray(md.vol_unit) > 0).all()
    assert len(pd.concat([frame, frame])) == 280           # the frame's attrs stay harmless


def test_a_flat_start_csv_passes_the_env_check_through_the_cli(tmp_path):
    """``market=csv`` (read_ohlcv + to_windows + EnvParams) accepts the file: before, the env
    refused it ("vol_unit: expected > 0 on every bar") without naming file or row."""
    from hydra import compose, initialize_config_dir

    from tpfl_jax.app import CONFIG_DIR
    from tpfl_jax.config import to_container, to_objects
    from tpfl_jax.pipelines.markets import build_market

    path = tmp_path / "bars.csv"
    _bars(700, flat=60).to_csv(path, index=False)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=tiny", "market=csv",
                                                       f"market.path={path}"])
    c = to_container(cfg)
    obj = to_objects(c)
    with pytest.warns(UserWarning, match="dropped the 60 leading row"):
        _, source, _ = build_market(c, obj.env, obj.env_kwargs)
    assert source.n_bars == 640


def test_a_dataframe_flat_at_its_start_warns_naming_the_rows():
    from tpfl_jax.market.data import from_dataframe

    with pytest.warns(UserWarning, match=r"^DataFrame: dropped the 3 leading row\(s\) .*row 0 "
                                         r"\(timestamp .*to row 2 \(timestamp"):
        md = from_dataframe(_bars(43, flat=3), 20)
    assert md.close.shape == (2, 20)


def test_a_window_without_a_volatility_unit_names_file_and_row(tmp_path):
    from tpfl_jax.market.data import load_ohlcv, read_ohlcv, to_windows

    path = tmp_path / "gap.csv"
    df = _bars(300)
    df.loc[100, ["open", "high", "low", "close"]] = df.loc[99, "close"]   # one flat bar
    df.to_csv(path, index=False)
    msg = str(_raises(ValueError, lambda: load_ohlcv(path, window_len=50, stride=50),
                      f"{path}: row 100 (file line 102, timestamp 2024-01-05 04:00:00): "
                      "window 2 (of 6, window_len 50) starts on a bar with high == low"))
    assert msg.count(str(path)) == 1
    assert load_ohlcv(path, window_len=50, stride=60).close.shape == (5, 50)  # avoids it
    # a long flat stretch makes the average true range underflow float32
    df = _bars(3000)
    df.loc[1000:2500, ["open", "high", "low", "close"]] = df.loc[999, "close"]
    df.to_csv(path, index=False)
    frame = read_ohlcv(path)
    _raises(ValueError, lambda: to_windows(frame, len(frame)), f"{path}: row ",
            "the volatility unit of window 0 is 0", "flat stretch")
    with warnings.catch_warnings():                       # a sliced frame: no file rows
        warnings.simplefilter("error")
        _raises(ValueError, lambda: to_windows(frame.iloc[1:], len(frame) - 1),
                f"{path}: frame row ")
