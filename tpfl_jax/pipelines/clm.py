"""``tpfl-clm``: one ``TrainingJob`` through ``ClmOrchestrator`` with the SQLite tracker and
registry in the run dir (host-side glue, one process)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tpfl_jax.clm.adapters import PPOBacktestAdapter, PPOTrainingAdapter
from tpfl_jax.clm.models import ModelType, TrainingJob, TriggerReason
from tpfl_jax.clm.orchestrator import ClmOrchestrator
from tpfl_jax.clm.registry import ModelRegistry
from tpfl_jax.config import Config, to_mesh_config, to_objects
from tpfl_jax.config_checks import check_clm
from tpfl_jax.distributed import ENV_NUM_PROCESSES, is_multi_process
from tpfl_jax.errors import UserError
from tpfl_jax.pipelines.common import RunPlan, setup_jax
from tpfl_jax.resources import wall_time_estimate
from tpfl_jax.rundir import confine, write_frame, write_text
from tpfl_jax.tracking.tracker import TPPerformanceTracker


def _check(c: Config, out: Path) -> Any:
    """Every check of a clm config before anything runs; returns the objects."""
    if is_multi_process(to_mesh_config(c)):
        raise UserError("tpfl-clm runs as one process (it writes one SQLite tracker and "
                        "registry); start it outside a multi-task srun / mpirun step, with "
                        f"no mesh.num_processes / {ENV_NUM_PROCESSES} above 1")
    obj = to_objects(c)
    check_clm(c, out)
    m = c.market
    if m.source != "synthetic" or m.kind != "regime":
        raise UserError("tpfl-clm: the PPO adapters generate synthetic regime markets per "
                        "symbol; use market=regime")
    return obj


def plan(c: Config, out: Path) -> RunPlan:
    """What ``tpfl-clm`` would run, after every check a run makes before it compiles."""
    obj = _check(c, out)
    steps = obj.ppo.num_updates * obj.ppo.batch_size
    return RunPlan("clm", (
        f"tpfl-clm: one {c.clm.trigger} TrainingJob for {c.clm.symbol} (strategy "
        f"{c.clm.strategy_id}, weight policy {c.clm.policy}, min_attempts "
        f"{c.clm.min_attempts}); tracker and registry in {c.clm.db}",
        f"train: {steps:,} env steps on {c.market.train_paths} synthetic regime paths of "
        f"{c.market.n_bars} bars; backtest: {c.clm.backtest_episodes} episodes",
        "wall time: " + wall_time_estimate(steps)))


def run(c: Config, out: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Train, backtest and register one RL model for ``clm.symbol``; the weight comes from
    the tracker's feedback through ``clm.policy``. Returns the decision, version, weight and
    metrics (also written to ``metrics.jsonl``)."""
    obj = _check(c, out)
    m = c.market
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    db = confine(out, c.clm.db, "config.clm.db")
    tracker = TPPerformanceTracker(db)
    registry = ModelRegistry(db)
    env_kwargs = {k: v for k, v in obj.env_kwargs.items() if k != "tp_reward_weight"}
    env_static = {"window": obj.env.window, "n_tp": obj.env.n_tp,
                  "premature_horizon": obj.env.premature_horizon,
                  "features": obj.env.features}
    train_ad = PPOTrainingAdapter(obj.ppo, env_static=env_static, env_kwargs=env_kwargs,
                                  n_paths=m.train_paths, n_bars=m.n_bars, seed=c.seed)
    bt_ad = PPOBacktestAdapter(tracker=tracker, strategy_id=c.clm.strategy_id,
                               n_episodes=c.clm.backtest_episodes, n_paths=m.deploy_paths,
                               n_bars=m.n_bars, seed=c.seed + 1)
    orch = ClmOrchestrator(registry, train_ad, bt_ad, {
        "strategy_id": c.clm.strategy_id, "policy": c.clm.policy,
        "min_attempts": c.clm.min_attempts}, tracker=tracker)
    job = TrainingJob(ModelType.RL_V3, c.clm.symbol, TriggerReason(c.clm.trigger),
                      {"strategy_id": c.clm.strategy_id})
    result = asyncio.run(orch.handle_training_job(job))
    info = {"decision": result.decision, "version": result.version.version,
            "tp_reward_weight": job.training_params.get("tp_reward_weight"),
            "tp_feedback_reason": job.training_params.get("tp_feedback_reason"),
            "metrics": result.metrics, "reasons": result.reasons}
    write_text(out / "metrics.jsonl", json.dumps(info, default=float) + "\n")
    write_frame(tracker.trades(c.clm.strategy_id), out / "trades.parquet")
    print(json.dumps(info, indent=1, default=float))
    tracker.close()
    registry.close()
    return info
