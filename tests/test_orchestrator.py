"""ClmOrchestrator: the seed's TP-feedback tests, promotion, registry wiring (adapter doubles)."""

from __future__ import annotations

import asyncio
import logging
from unittest.mock import Mock, patch

import numpy as np
import pandas as pd
import pytest

from tpfl_jax.clm.adapters import (
    BacktestAdapter,
    BacktestResult,
    TrainedModel,
    TrainingAdapter,
    backtest_metrics,
)
from tpfl_jax.clm.models import ModelStatus, ModelType, TrainingJob, TriggerReason
from tpfl_jax.clm.orchestrator import ClmOrchestrator, evaluate_promotion
from tpfl_jax.clm.registry import ModelRegistry
from tpfl_jax.tracking.tracker import TPPerformanceTracker, reset_tp_tracker


class FakeTraining:
    """Test double: records the params each training run received."""

    def __init__(self, params=None, fail=False):
        self.seen: list[dict] = []
        self.params, self.fail = params, fail

    async def fetch_training_data(self, job):
        return {"symbols": job.symbols}

    async def train(self, job, data):
        if self.fail:
            raise RuntimeError("GPU on fire")
        self.seen.append(dict(job.training_params))
        return TrainedModel(params=self.params, metrics={"loss": 0.1}, config={"lr": 3e-4})


class FakeBacktest:
    """Test double (synchronous on purpose): returns fixed metrics."""

    def __init__(self, **metrics):
        self.metrics = {"n_trades": 100.0, "sharpe_ratio": 1.0, "win_rate": 0.55,
                        "max_drawdown": 3.0} | metrics

    def backtest(self, job, model):
        return BacktestResult(metrics=dict(self.metrics))


def rl_job(symbol="BTCUSDT", **params):
    return TrainingJob(ModelType.RL_V3, symbol, TriggerReason.PERIODIC,
                       {"strategy_id": "RL_V3"} | params)


def make(tracker=None, config=None, training=None, backtest=None, registry=None):
    return ClmOrchestrator(registry if registry is not None else ModelRegistry(),
                           training or FakeTraining(), backtest or FakeBacktest(),
                           config or {}, tracker=tracker)


def mock_tracker(feedback):
    t = Mock()
    t.get_strategy_tp_feedback.return_value = feedback
    return t


def enrich(orch, job):
    asyncio.run(orch._enrich_rl_training_with_tp_feedback(job))
    return job.training_params


FB = {
    "low_hit_high_r": {"tp_hit_rate": 0.30, "avg_r_multiple": 3.33, "total_attempts": 20,
                       "total_hits": 6, "total_misses": 14, "premature_exit_rate": 0.10},
    "high_hit_low_r": {"tp_hit_rate": 0.85, "avg_r_multiple": 1.18, "total_attempts": 30,
                       "total_hits": 25, "total_misses": 5, "premature_exit_rate": 0.05},
    "optimal": {"tp_hit_rate": 0.55, "avg_r_multiple": 1.82, "total_attempts": 50,
                "total_hits": 27, "total_misses": 23, "premature_exit_rate": 0.08},
    "ok_hit_low_r": {"tp_hit_rate": 0.60, "avg_r_multiple": 1.1, "total_attempts": 40,
                     "total_hits": 24, "total_misses": 16, "premature_exit_rate": 0.12},
}


@pytest.mark.parametrize("case,weight,text", [
    ("low_hit_high_r", 2.0, "Low hit rate"),
    ("high_hit_low_r", 0.5, "High hit rate"),
    ("optimal", 1.0, "optimal"),
    ("ok_hit_low_r", 1.2, "Hit rate ok"),
])
def test_seed_feedback_cases(case, weight, text):
    p = enrich(make(mock_tracker(FB[case])), rl_job())
    assert p["tp_reward_weight"] == weight
    assert p["tp_hit_rate"] == FB[case]["tp_hit_rate"]
    assert p["avg_tp_r_multiple"] == FB[case]["avg_r_multiple"]
    assert text.lower() in p["tp_feedback_reason"].lower()
    assert p["tp_weight_policy"] == "seed_table"


def test_insufficient_data_uses_default():
    p = enrich(make(mock_tracker(None)), rl_job())
    assert p["tp_reward_weight"] == 1.0 and "tp_hit_rate" not in p
    assert "avg_tp_r_multiple" not in p and "Insufficient" in p["tp_feedback_reason"]


def test_non_rl_model_skips_enrichment():
    t = mock_tracker(FB["low_hit_high_r"])
    job = TrainingJob(ModelType.XGBOOST, "BTCUSDT", TriggerReason.PERIODIC, {})
    assert enrich(make(t, {"enable_tp_optimizer_logging": True}), job) == {}
    assert not t.get_strategy_tp_feedback.called and not t.tp_distance_recommendations.called


def test_rl_job_receives_tp_feedback_keys():
    fb = {"tp_hit_rate": 0.35, "avg_r_multiple": 2.85, "total_attempts": 25, "total_hits": 9,
          "total_misses": 16, "premature_exit_rate": 0.15}
    p = enrich(make(mock_tracker(fb)), rl_job())
    assert {"tp_reward_weight", "tp_hit_rate", "avg_tp_r_multiple", "tp_feedback_reason"} <= set(p)
    assert (p["tp_reward_weight"], p["tp_hit_rate"], p["avg_tp_r_multiple"]) == (2.0, 0.35, 2.85)


def test_multi_symbol_job_aggregates_across_symbols():
    t = mock_tracker({"tp_hit_rate": 0.52, "avg_r_multiple": 1.92, "total_attempts": 150,
                      "total_hits": 78, "total_misses": 72, "premature_exit_rate": 0.10})
    p = enrich(make(t), rl_job(symbol=None))
    t.get_strategy_tp_feedback.assert_called_once_with(strategy_id="RL_V3", symbol=None,
                                                       min_attempts=10)
    assert p["tp_reward_weight"] == 1.0
    # the same through a real tracker: 2/10 on A and 18/30 on B aggregate to 20/40
    real = TPPerformanceTracker()
    for sym, n, hits in (("A", 10, 2), ("B", 30, 18), ("C", 50, 0)):
        for i in range(n):
            hit = i < hits
            real.record_trade("RL_V3", sym, side=1, entry_price=100.0,
                              exit_price=102.0 if hit else 99.0,
                              exit_reason="tp" if hit else "sl",
                              r_realised=2.0 if hit else -1.0, tp_price=102.0, sl_price=99.0)
    p = enrich(make(real), rl_job(symbol=["A", "B"]))
    assert p["tp_hit_rate"] == 0.5 and p["avg_tp_r_multiple"] == 2.0
    assert p["tp_reward_weight"] == 1.0
    p = enrich(make(real), rl_job(symbol="A"))  # 20% alone -> 2.0
    assert p["tp_reward_weight"] == 2.0
    p = enrich(make(real), rl_job(symbol=None))  # 20/90 over all symbols
    assert p["tp_hit_rate"] == pytest.approx(20 / 90) and p["tp_reward_weight"] == 2.0


def _tracker_with_mfe():
    real = TPPerformanceTracker()
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"exit_reason": "sl", "side": 1, "entry_price": 100.0, "exit_price": 99.0,
                       "tp_price": 102.0, "sl_price": 99.0, "tp_mult": 2.0, "r_realised": -1.0,
                       "mfe": rng.uniform(0.0, 1.5, 30), "mae": 1.0})
    real.record_trades(df, strategy_id="RL_V3", symbol="BTCUSDT")
    return real


def test_tp_optimizer_recommendations_logged_when_enabled(caplog):
    orch = make(_tracker_with_mfe())
    orch.config["enable_tp_optimizer_logging"] = True
    with caplog.at_level(logging.INFO, logger="tpfl_jax.clm.orchestrator"):
        p = enrich(orch, rl_job())
    recs = p["tp_optimizer_recommendations"]
    assert len(recs) == 1 and recs[0]["symbol"] == "BTCUSDT"
    assert recs[0]["direction"] == "CLOSER" and 0 < recs[0]["scale_factor"] < 1
    assert "TP optimizer RL_V3/BTCUSDT: CLOSER" in caplog.text
    # seed-style: whatever the tracker recommends is passed through
    t = mock_tracker(FB["optimal"])
    t.tp_distance_recommendations.return_value = [
        {"symbol": "BTCUSDT", "direction": "CLOSER", "scale_factor": 0.95, "confidence": 0.75,
         "reason": "Low hit rate - bring TPs closer"}]
    p = enrich(make(t, {"enable_tp_optimizer_logging": True}), rl_job())
    assert p["tp_optimizer_recommendations"][0]["scale_factor"] == 0.95


def test_tp_optimizer_disabled_by_default():
    t = mock_tracker(FB["optimal"])
    p = enrich(make(t), rl_job("ETHUSDT"))
    assert "tp_optimizer_recommendations" not in p and not t.tp_distance_recommendations.called
    p = enrich(make(_tracker_with_mfe()), rl_job())
    assert "tp_optimizer_recommendations" not in p


def test_tracker_error_falls_back_to_default(caplog):
    t = Mock()
    t.get_strategy_tp_feedback.side_effect = Exception("Database error")
    with caplog.at_level(logging.WARNING, logger="tpfl_jax.clm.orchestrator"):
        p = enrich(make(t), rl_job())
    assert p["tp_reward_weight"] == 1.0 and "tp_hit_rate" not in p
    assert "Database error" in p["tp_feedback_reason"] and "Database error" in caplog.text
    # a malformed feedback dict is a tracker error too
    p = enrich(make(mock_tracker(FB["optimal"] | {"total_attempts": -5})), rl_job())
    assert p["tp_reward_weight"] == 1.0 and "total_attempts" in p["tp_feedback_reason"]


def test_default_tracker_is_the_process_tracker():
    t = mock_tracker(FB["high_hit_low_r"])
    with patch("tpfl_jax.tracking.tracker.get_tp_tracker", return_value=t):
        p = enrich(make(), rl_job())
    assert p["tp_reward_weight"] == 0.5
    with patch("tpfl_jax.tracking.tracker.get_tp_tracker", side_effect=OSError("disk gone")):
        p = enrich(make(), rl_job())
    assert p["tp_reward_weight"] == 1.0 and "disk gone" in p["tp_feedback_reason"]
    reset_tp_tracker()


def test_policy_from_config_and_state_from_production():
    reg = ModelRegistry()
    prod = reg.register(ModelType.RL_V3, "BTCUSDT", {"tp_reward_weight": 2.0}, {})
    reg.promote(prod.version_id)
    p = enrich(make(mock_tracker(FB["optimal"]), {"policy": "ema"}, registry=reg), rl_job())
    assert p["tp_reward_weight"] == pytest.approx(1.7) and p["tp_weight_policy"] == "ema"
    p = enrich(make(mock_tracker(FB["optimal"]),
                    {"policy": "ema", "policy_params": {"ema_alpha": 0.5}}, registry=reg),
               rl_job())
    assert p["tp_reward_weight"] == 1.5
    p = enrich(make(mock_tracker(FB["low_hit_high_r"]), {"policy": "gated"}, registry=reg),
               rl_job())  # 6/20: interval straddles 0.45 -> hold production's 2.0
    assert p["tp_reward_weight"] == 2.0 and "straddles" in p["tp_feedback_reason"]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown key"):
        make(config={"enable_tp_optimiser_logging": True})
    with pytest.raises(ValueError, match="policy"):
        make(config={"policy": "magic"})
    with pytest.raises(ValueError, match="promotion_criteria"):
        make(config={"promotion_criteria": {"min_sharpe": 1.0}})
    with pytest.raises(ValueError, match="min_attempts"):
        make(config={"min_attempts": 0})
    with pytest.raises(ValueError, match="ema_alpha"):
        make(config={"policy": "ema", "policy_params": {"ema_alpha": 2.0}})
    orch = make(config={"promotion_criteria": {"min_sharpe_ratio": 1.0, "min_win_rate": 0.52}})
    crit = orch.config["promotion_criteria"]
    assert crit["min_sharpe_ratio"] == 1.0 and crit["min_win_rate"] == 0.52
    assert crit["min_trades"] == 30  # defaults merged


def test_handle_training_job_end_to_end_promote_then_reject(tmp_path):
    reg = ModelRegistry(tmp_path / "tpfl.db")
    tracker = TPPerformanceTracker(tmp_path / "tpfl.db")
    for i in range(20):
        hit = i < 6
        tracker.record_trade("RL_V3", "BTCUSDT", side=1, entry_price=100.0,
                             exit_price=102.0 if hit else 99.0, exit_reason="tp" if hit else "sl",
                             r_realised=2.0 if hit else -1.0, tp_price=102.0, sl_price=99.0)
    training = FakeTraining(params={"w": np.ones(3, np.float32)})
    orch = make(tracker, {"promotion_criteria": {"min_improvement": 0.1}}, training,
                FakeBacktest(sharpe_ratio=1.0), reg)
    job = rl_job(learning_rate=3e-4)
    res = asyncio.run(orch.handle_training_job(job))
    assert training.seen[0]["tp_reward_weight"] == 2.0  # enrichment ran before training
    assert res.promoted and res.version.status is ModelStatus.PRODUCTION
    v = reg.get(res.version.version_id)
    assert v.params["tp_reward_weight"] == 2.0 and v.params["training_config"] == {"lr": 3e-4}
    assert v.metrics["sharpe_ratio"] == 1.0 and v.metrics["train_loss"] == 0.1
    assert v.checkpoint_path is not None and v.job_id == job.job_id
    np.testing.assert_array_equal(reg.load_checkpoint(v.version_id, {"w": np.zeros(3)})["w"],
                                  np.ones(3))
    assert reg.get_job(job.job_id)["status"] == "completed"
    # not better than production by the margin -> rejected, production unchanged
    orch.backtest_adapter = FakeBacktest(sharpe_ratio=1.05)
    orch.training_adapter = FakeTraining()
    res2 = asyncio.run(orch.handle_training_job(rl_job()))
    assert res2.decision == "rejected" and res2.version.parent_id == v.version_id
    assert any("FAIL sharpe_ratio" in r for r in res2.reasons)
    assert reg.get_production(ModelType.RL_V3, "BTCUSDT").version_id == v.version_id
    # clearly better -> promoted, previous retired
    orch.backtest_adapter = FakeBacktest(sharpe_ratio=1.5)
    res3 = asyncio.run(orch.handle_training_job(rl_job()))
    assert res3.promoted and reg.get(v.version_id).status is ModelStatus.RETIRED
    # shadow mode
    orch.config["auto_promote"] = False
    orch.backtest_adapter = FakeBacktest(sharpe_ratio=3.0)
    assert asyncio.run(orch.handle_training_job(rl_job())).decision == "shadow"
    reg.close()
    tracker.close()


def test_failing_criteria_and_failing_adapter():
    reg = ModelRegistry()
    orch = make(mock_tracker(None), {"promotion_criteria": {"min_trades": 50}},
                backtest=FakeBacktest(n_trades=10.0), registry=reg)
    res = asyncio.run(orch.handle_training_job(rl_job()))
    assert res.decision == "rejected" and res.version.status is ModelStatus.REJECTED
    assert "FAIL n_trades 10 >= 50" in res.reasons[0]
    job = rl_job()
    orch.training_adapter = FakeTraining(fail=True)
    with pytest.raises(RuntimeError, match="GPU on fire"):
        asyncio.run(orch.handle_training_job(job))
    row = reg.get_job(job.job_id)
    assert row["status"] == "failed" and "GPU on fire" in row["error"]
    assert row["training_params"]["tp_reward_weight"] == 1.0  # what it would have trained with


def test_evaluate_promotion_missing_metric_fails():
    ok, lines = evaluate_promotion({"n_trades": 100}, None, {"min_trades": 30,
                                                             "min_sharpe_ratio": 0.5})
    assert not ok and "missing" in lines[-1]
    ok, _ = evaluate_promotion({"n_trades": 100, "sharpe_ratio": 0.6}, {"sharpe_ratio": 0.55},
                               {"min_trades": 30, "min_sharpe_ratio": 0.5,
                                "min_improvement": 0.1})
    assert not ok


def test_adapter_protocols_and_backtest_metrics():
    assert isinstance(FakeTraining(), TrainingAdapter)
    assert isinstance(FakeBacktest(), BacktestAdapter)
    df = pd.DataFrame({"r_realised": [2.0, -1.0, -1.0, 2.0, -1.0],
                       "exit_reason": ["tp", "sl", "sl", "tp", "manual"]})
    m = backtest_metrics(df)
    assert m["n_trades"] == 5 and m["win_rate"] == 0.4 and m["tp_hit_rate"] == 0.4
    assert m["total_r"] == 1.0 and "max_drawdown" not in m    # no equity curve in a table
    assert m["sharpe_ratio"] == pytest.approx(0.2 / np.std([2, -1, -1, 2, -1], ddof=1))
    df.loc[2, "r_realised"] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        backtest_metrics(df)
