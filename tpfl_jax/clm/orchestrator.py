"""CLM v3 orchestrator: TP-feedback enrichment, training, backtest, promotion.

``handle_training_job(job)``:

0. RL jobs only: read the tracker's TP feedback for the job's strategy and symbol(s), choose
   ``tp_reward_weight`` with the configured policy (default ``seed_table``) and put
   ``tp_hit_rate``, ``avg_tp_r_multiple``, ``tp_reward_weight``, ``tp_feedback_reason`` (and
   ``tp_weight_policy``) into ``job.training_params``. No feedback -> the policy's no-data weight
   (1.0 for ``seed_table``) and no hit rate / R keys; any tracker error -> weight 1.0, logged.
   With ``enable_tp_optimizer_logging`` the tracker's MFE-based TP-distance recommendations are
   added as ``tp_optimizer_recommendations``. Non-RL jobs are left untouched.
1. fetch training data, 2. train, 3. backtest (through the adapters),
4. register the candidate (params, metrics, lineage, checkpoint), 5. apply the promotion criteria
   and promote (or shadow, with ``auto_promote=False``) or reject.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tpfl_jax.clm.adapters import BacktestAdapter, BacktestResult, TrainedModel, TrainingAdapter
from tpfl_jax.clm.models import ModelStatus, ModelVersion, TrainingJob
from tpfl_jax.clm.policies import (
    POLICY_NAMES,
    decide_weight,
    init_policy_state,
    make_policy_params,
)
from tpfl_jax.tracking import tracker as tp_tracker
from tpfl_jax.tracking.checks import (
    check_bool,
    check_int,
    check_number,
    check_str,
    type_error,
    value_error,
)

logger = logging.getLogger(__name__)

DEFAULT_PROMOTION_CRITERIA: dict[str, float | None] = {
    "min_trades": 30,          # backtest metrics["n_trades"] >= this
    "min_sharpe_ratio": 0.0,   # metrics["sharpe_ratio"] >= this
    "min_win_rate": None,      # metrics["win_rate"] >= this
    "max_drawdown": None,      # metrics["max_drawdown"] <= this
    "min_improvement": 0.0,    # sharpe_ratio >= production's sharpe_ratio + this
}
STATEFUL_POLICIES = ("ema", "gated", "expectancy")   # start from the production weight
DEFAULT_CONFIG: dict[str, Any] = {
    "strategy_id": "RL_V3",    # tracker strategy when training_params has no 'strategy_id'
    "policy": "seed_table",
    "policy_params": {},       # overrides of PolicyParams fields
    "min_attempts": 10,
    "r_source": "estimated",   # or 'actual' (mean realised R)
    "feedback_last_n": None,   # only the last N trades
    "feedback_window": None,   # only trades within this duration (e.g. '30D')
    "feedback_until": None,    # end of the feedback period (None: now; e.g. a replay's clock)
    "enable_tp_optimizer_logging": False,
    "tp_optimizer": {},        # kwargs of tracker.tp_distance_recommendations
    "promotion_criteria": {},  # merged over DEFAULT_PROMOTION_CRITERIA
    "auto_promote": True,      # False: passing candidates go to shadow
    "save_checkpoints": True,  # checkpoint TrainedModel.params through the registry
}
DEFAULT_WEIGHT = 1.0


@dataclass
class JobResult:
    """Outcome of ``handle_training_job``."""

    job: TrainingJob
    version: ModelVersion
    decision: str                      # 'promoted', 'shadow' or 'rejected'
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


_TP_OPTIMIZER_KEYS = ("target_hit_rate", "min_trades", "tolerance")


def validate_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``config``; unknown keys or bad values raise ``ValueError`` naming
    the key (a wrong type: ``ArgTypeError``, also a ``TypeError``)."""
    where = "ClmOrchestrator config"
    if config is not None and not isinstance(config, Mapping):
        raise type_error("ClmOrchestrator", "config", config, "None or a dict of settings")
    config = dict(config or {})
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"ClmOrchestrator config: unknown key(s) {sorted(unknown, key=repr)}; "
                         f"expected a subset of {sorted(DEFAULT_CONFIG)}")
    out = copy.deepcopy(DEFAULT_CONFIG) | config
    check_str(where, "strategy_id", out["strategy_id"])
    if not isinstance(out["policy"], str) or out["policy"] not in POLICY_NAMES:
        raise value_error(where, "policy", out["policy"], f"one of {POLICY_NAMES}")
    for key in ("policy_params", "tp_optimizer"):
        if not isinstance(out[key], Mapping):
            raise type_error(where, key, out[key], "a dict")
    make_policy_params(out["policy"], **out["policy_params"])
    if out["promotion_criteria"] is not None and not isinstance(out["promotion_criteria"],
                                                                Mapping):
        raise type_error(where, "promotion_criteria", out["promotion_criteria"], "a dict")
    crit = dict(out["promotion_criteria"] or {})
    unknown = set(crit) - set(DEFAULT_PROMOTION_CRITERIA)
    if unknown:
        raise ValueError(f"ClmOrchestrator config: unknown promotion_criteria "
                         f"{sorted(unknown, key=repr)}; expected a subset of "
                         f"{sorted(DEFAULT_PROMOTION_CRITERIA)}")
    for k, v in crit.items():
        check_number(where, f"promotion_criteria[{k!r}]", v, optional=True)
    out["promotion_criteria"] = dict(DEFAULT_PROMOTION_CRITERIA) | crit
    check_int(where, "min_attempts", out["min_attempts"], lo=1)
    if not isinstance(out["r_source"], str) or out["r_source"] not in ("estimated", "actual"):
        raise value_error(where, "r_source", out["r_source"], "'estimated' or 'actual'")
    # the feedback selection is read inside the tracker call, whose errors fall back to the
    # default weight: a bad value here would silently train every job with 1.0
    check_int(where, "feedback_last_n", out["feedback_last_n"], lo=1, optional=True)
    if out["feedback_window"] is not None:
        try:
            w = pd.Timedelta(out["feedback_window"])
        except (ValueError, TypeError, OverflowError):
            w = None
        if w is None or w is pd.NaT or w <= pd.Timedelta(0):
            raise value_error(where, "feedback_window", out["feedback_window"],
                              "None or a positive duration (a timedelta or a string such as "
                              "'30D')")
    if out["feedback_until"] is not None:
        tp_tracker._time_ns("feedback_until", out["feedback_until"], where)
    bad = set(out["tp_optimizer"]) - set(_TP_OPTIMIZER_KEYS)
    if bad:
        raise ValueError(f"ClmOrchestrator config: unknown tp_optimizer key(s) "
                         f"{sorted(bad, key=repr)}; expected a subset of "
                         f"{list(_TP_OPTIMIZER_KEYS)}")
    for k in ("enable_tp_optimizer_logging", "auto_promote", "save_checkpoints"):
        check_bool(where, k, out[k])
    return out


def evaluate_promotion(metrics: Mapping[str, float], production: Mapping[str, float] | None,
                       criteria: Mapping[str, float | None]) -> tuple[bool, list[str]]:
    """Apply the promotion criteria; return (passed, one line per criterion checked)."""
    checks = [("min_trades", "n_trades", ">="), ("min_sharpe_ratio", "sharpe_ratio", ">="),
              ("min_win_rate", "win_rate", ">="), ("max_drawdown", "max_drawdown", "<=")]
    passed, lines = True, []
    for crit, key, op in checks:
        limit = criteria.get(crit)
        if limit is None:
            continue
        if key not in metrics:
            passed = False
            lines.append(f"FAIL {crit}: backtest metric {key!r} missing")
            continue
        ok = metrics[key] >= limit if op == ">=" else metrics[key] <= limit
        passed &= bool(ok)
        lines.append(f"{'ok' if ok else 'FAIL'} {key} {metrics[key]:.4g} {op} {limit:.4g}")
    margin = criteria.get("min_improvement")
    if margin is not None and production is not None and "sharpe_ratio" in production:
        if "sharpe_ratio" not in metrics:
            passed = False
            lines.append("FAIL min_improvement: backtest metric 'sharpe_ratio' missing")
        else:
            need = production["sharpe_ratio"] + margin
            ok = metrics["sharpe_ratio"] >= need
            passed &= bool(ok)
            lines.append(f"{'ok' if ok else 'FAIL'} sharpe_ratio {metrics['sharpe_ratio']:.4g} "
                         f">= production {production['sharpe_ratio']:.4g} + {margin:.4g}")
    return passed, lines


async def _maybe_await(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


class ClmOrchestrator:
    """Continuous-learning manager: enrich, train, backtest, register, promote or reject.

    ``registry``: a ``ModelRegistry`` (or an object with its methods). ``tracker``: the TP
    tracker (default: ``get_tp_tracker()`` at enrichment time). ``config``: see ``DEFAULT_CONFIG``
    (kept as the mutable dict ``self.config``).
    """

    def __init__(self, registry: Any, training_adapter: TrainingAdapter,
                 backtest_adapter: BacktestAdapter, config: Mapping[str, Any] | None = None, *,
                 tracker: Any = None) -> None:
        self.registry = registry
        self.training_adapter = training_adapter
        self.backtest_adapter = backtest_adapter
        self.config = validate_config(config)
        self._tracker = tracker

    def _get_tracker(self) -> Any:
        if self._tracker is not None:
            return self._tracker
        return tp_tracker.get_tp_tracker()    # the process tracker at call time

    def _previous_weight(self, job: TrainingJob) -> float:
        """The production model's ``tp_reward_weight`` (state of stateful policies), else 1.0."""
        try:
            prod = self.registry.get_production(job.model_type, job.symbol)
            w = prod.params.get("tp_reward_weight") if prod is not None else None
            return float(w) if w is not None else DEFAULT_WEIGHT
        except Exception as e:  # noqa: BLE001 - the policy starts from the default instead
            logger.warning("TP feedback: cannot read the production weight of %s/%s (%s: %s); "
                           "starting from %.1f", job.model_type.value, job.symbol_key,
                           type(e).__name__, e, DEFAULT_WEIGHT)
            return DEFAULT_WEIGHT

    @staticmethod
    def check_job(job: Any, where: str) -> TrainingJob:
        """``job`` is a ``TrainingJob`` whose fields are (still) valid (a job can be changed
        after it was made); errors name the field (``job.<field>``) and what was expected."""
        if not isinstance(job, TrainingJob):
            raise type_error(where, "job", job, "a TrainingJob")
        job.validate(where, "job.")
        if "strategy_id" in job.training_params:
            check_str(where, "job.training_params['strategy_id']",
                      job.training_params["strategy_id"])
        return job

    async def enrich_training_job(self, job: TrainingJob) -> None:
        """Step 0: put the TP feedback and ``tp_reward_weight`` into an RL job's params."""
        self.check_job(job, "ClmOrchestrator.enrich_training_job")
        if not job.model_type.is_rl:
            return
        cfg = self.config
        params = job.training_params
        strategy_id = params.get("strategy_id", cfg["strategy_id"])
        policy = cfg["policy"]
        try:
            tracker = self._get_tracker()
            extra: dict[str, Any] = {}
            if cfg["r_source"] != "estimated":
                extra["r_source"] = cfg["r_source"]
            if cfg["feedback_last_n"] is not None:
                extra["last_n"] = cfg["feedback_last_n"]
            if cfg["feedback_window"] is not None:
                extra["window"] = cfg["feedback_window"]
            if cfg["feedback_until"] is not None:
                extra["until"] = cfg["feedback_until"]
            feedback = tracker.get_strategy_tp_feedback(
                strategy_id=strategy_id, symbol=job.symbol, min_attempts=cfg["min_attempts"],
                **extra)
            volatility = 0.0
            if policy == "vol_scaled":
                volatility = float(tracker.get_tp_stats(
                    strategy_id, job.symbol, cfg["min_attempts"], **extra).volatility)
            state = None
            if policy in STATEFUL_POLICIES:
                state = init_policy_state(self._previous_weight(job))
            decision = decide_weight(feedback, policy, state,
                                     make_policy_params(policy, **cfg["policy_params"]),
                                     volatility=volatility)
        except Exception as e:  # noqa: BLE001 - any tracker failure falls back to the default
            reason = (f"TP tracker error ({type(e).__name__}: {e}) - default TP weight "
                      f"{DEFAULT_WEIGHT}")
            logger.warning("TP feedback for %s/%s: %s", strategy_id, job.symbol_key, reason)
            params["tp_reward_weight"] = DEFAULT_WEIGHT
            params["tp_feedback_reason"] = reason
            params["tp_weight_policy"] = policy
        else:
            if feedback is not None:
                params["tp_hit_rate"] = feedback["tp_hit_rate"]
                params["avg_tp_r_multiple"] = feedback["avg_r_multiple"]
            params["tp_reward_weight"] = decision.weight
            params["tp_feedback_reason"] = decision.reason
            params["tp_weight_policy"] = policy
            logger.info("TP feedback for %s/%s (%s): tp_reward_weight=%s - %s", strategy_id,
                        job.symbol_key, policy, decision.weight, decision.reason)
        if cfg["enable_tp_optimizer_logging"]:
            self._log_tp_optimizer_recommendations(job, strategy_id)

    # the seed's name for step 0
    _enrich_rl_training_with_tp_feedback = enrich_training_job

    def _log_tp_optimizer_recommendations(self, job: TrainingJob, strategy_id: str) -> None:
        """Add the tracker's TP-distance recommendations per symbol to the params (and log)."""
        try:
            recs = self._get_tracker().tp_distance_recommendations(
                strategy_id, job.symbol, **self.config["tp_optimizer"])
        except Exception as e:  # noqa: BLE001 - observability only; training goes on
            logger.warning("TP optimizer recommendations for %s/%s failed (%s: %s)",
                           strategy_id, job.symbol_key, type(e).__name__, e)
            return
        job.training_params["tp_optimizer_recommendations"] = recs
        for r in recs:
            logger.info("TP optimizer %s/%s: %s x%.2f (confidence %.2f) - %s", strategy_id,
                        r["symbol"], r["direction"], r["scale_factor"], r["confidence"],
                        r["reason"])

    async def handle_training_job(self, job: TrainingJob) -> JobResult:
        """Run one job end to end; returns the registered version and the promotion decision.

        The job is checked first (nothing is recorded for an invalid job). A candidate whose
        checkpoint cannot be saved is rejected (reason recorded) and the error raised."""
        self.check_job(job, "ClmOrchestrator.handle_training_job")
        record = getattr(self.registry, "record_job", None)
        if record is not None:
            record(job, "running")
        try:
            await self.enrich_training_job(job)
            data = await _maybe_await(self.training_adapter.fetch_training_data(job))
            model = await _maybe_await(self.training_adapter.train(job, data))
            if not isinstance(model, TrainedModel):
                raise TypeError(f"training adapter returned {type(model).__name__}; expected "
                                "TrainedModel")
            bt = await _maybe_await(self.backtest_adapter.backtest(job, model))
            if not isinstance(bt, BacktestResult):
                raise TypeError(f"backtest adapter returned {type(bt).__name__}; expected "
                                "BacktestResult")
            result = self._register_and_decide(job, model, bt)
        except Exception as e:
            if record is not None:
                try:
                    record(job, "failed", error=f"{type(e).__name__}: {e}")
                except Exception as e2:  # noqa: BLE001 - the job's own error is the one raised
                    logger.error("CLM job %s: cannot record its failure (%s: %s)", job.job_id,
                                 type(e2).__name__, e2)
            raise
        if record is not None:
            record(job, "completed", version_id=result.version.version_id)
        return result

    def _register_and_decide(self, job: TrainingJob, model: TrainedModel,
                             bt: BacktestResult) -> JobResult:
        production = self.registry.get_production(job.model_type, job.symbol)
        params = dict(job.training_params)
        if model.config:
            params["training_config"] = model.config
        metrics = {**{f"train_{k}": v for k, v in model.metrics.items()}, **bt.metrics}
        version = self.registry.register(
            job.model_type, job.symbol, params, metrics, checkpoint_path=model.checkpoint_path,
            job_id=job.job_id, trigger_reason=job.trigger_reason)
        if (model.params is not None and model.checkpoint_path is None
                and self.config["save_checkpoints"]):
            try:
                self.registry.save_checkpoint(version.version_id, model.params)
            except Exception as e:
                # never leave a candidate without its checkpoint: reject it, then fail the job
                try:
                    self.registry.reject(version.version_id, "checkpoint not saved: "
                                         f"{type(e).__name__}: {str(e)[:300]}")
                except Exception as e2:  # noqa: BLE001 - the save error is the one raised
                    logger.error("CLM job %s: cannot reject version %s without a checkpoint "
                                 "(%s: %s)", job.job_id, version.version_id,
                                 type(e2).__name__, e2)
                raise
        passed, lines = evaluate_promotion(
            bt.metrics, production.metrics if production is not None else None,
            self.config["promotion_criteria"])
        summary = "; ".join(lines) or "no criteria configured"
        if not passed:
            version = self.registry.reject(version.version_id, f"rejected: {summary}")
            decision = "rejected"
        elif self.config["auto_promote"]:
            version = self.registry.promote(version.version_id, f"promoted: {summary}")
            decision = "promoted"
        else:
            version = self.registry.set_status(version.version_id, ModelStatus.SHADOW,
                                               f"shadow: {summary}")
            decision = "shadow"
        logger.info("CLM job %s (%s/%s): version %s %s - %s", job.job_id,
                    job.model_type.value, job.symbol_key, version.version, decision, summary)
        return JobResult(job=job, version=version, decision=decision, reasons=lines,
                         metrics=metrics)
