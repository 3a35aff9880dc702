"""Host replay of a closed-loop run through the production path (SQLite tracker + CLM).

``replay_weights`` writes every deployed trade of a ``keep_trades`` loop run to a
``TPPerformanceTracker`` and recomputes each cycle's next weight through
``ClmOrchestrator.enrich_training_job`` (the weight in force is the production model of a
``ModelRegistry``, as in production). Comparing the result with ``LoopResult.next_weight``
checks that the on-device research loop and the production loop cannot drift apart.

Time in the replay: cycle ``c`` is day ``c`` after ``REPLAY_T0``; its trades exit at
``exit_bar`` seconds into that day, and cycle ``c``'s decision reads the tracker as of noon of
day ``c`` (``feedback_until``). The loop's ``history`` maps onto the tracker's selection:
``cycle`` -> ``window='1D'``, ``cumulative`` -> no window, ``window`` -> ``window=f'{N}D'``
(the last N cycles).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd

from tpfl_jax.clm.models import ModelType, TrainingJob, TriggerReason
from tpfl_jax.clm.orchestrator import ClmOrchestrator
from tpfl_jax.clm.registry import ModelRegistry
from tpfl_jax.env.frames import trades_frame
from tpfl_jax.tracking.tracker import TPPerformanceTracker


def deploy_trades(result: Any, p: int, s: int, c: int) -> pd.DataFrame:
    """Closed trades of policy ``p``, seed ``s``, cycle ``c`` of a ``keep_trades`` run."""
    if result.trades is None:
        raise ValueError("deploy_trades: the loop ran without keep_trades; no trades kept")
    host = jax.device_get(jax.tree.map(lambda x: x[p, s, c], result.trades))
    active = np.asarray(jax.device_get(result.trade_active[p, s, c]), bool)
    host = dict(host, closed=np.asarray(host["closed"], bool) & active)
    return trades_frame(host)


def all_deploy_trades(result: Any, policy_names: Sequence[str]) -> pd.DataFrame:
    """Every closed deploy trade with ``policy``, ``seed``, ``cycle`` and ``weight`` columns."""
    w = np.asarray(result.weight)
    frames = []
    for p, name in enumerate(policy_names):
        for s in range(w.shape[1]):
            for c in range(w.shape[2]):
                df = deploy_trades(result, p, s, c)
                df.insert(0, "cycle", c)
                df.insert(0, "seed", s)
                df.insert(0, "policy", name)
                df["tp_reward_weight"] = float(w[p, s, c])
                frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


REPLAY_T0 = pd.Timestamp("2024-01-01")


def _history_window(history: str, history_window: int) -> str | None:
    if history == "cycle":
        return "1D"
    if history == "cumulative":
        return None
    if history == "window":
        return f"{int(history_window)}D"
    raise ValueError(f"replay_weights: history = {history!r}; expected 'cycle', 'cumulative' "
                     "or 'window'")


def replay_weights(result: Any, kinds: Sequence[str], policy_params: Sequence[dict[str, float]],
                   initial_weights: Sequence[float], *, min_attempts: int = 10,
                   r_source: str = "estimated", history: str | Sequence[str] = "cycle",
                   history_window: int = 3, tracker: TPPerformanceTracker | None = None
                   ) -> np.ndarray:
    """Next weights ``[P, S, C]`` recomputed on the host from the run's deployed trades.

    For every policy x seed the host chain starts at ``initial_weights[p]``; each cycle's trades
    are recorded under strategy ``loop/p{p}/s{s}`` on the replay clock (module docstring), a
    production model carrying the weight in force is registered, and the CLM enrichment step
    picks the next weight from the tracker's feedback over ``history`` (one mode, or one per
    policy). ``fixed`` policies keep their initial weight.
    """
    w_dev = np.asarray(result.weight)
    hist = [history] * w_dev.shape[0] if isinstance(history, str) else list(history)
    if len(hist) != w_dev.shape[0]:
        raise ValueError(f"replay_weights: {len(hist)} history modes for {w_dev.shape[0]} "
                         "policies")
    windows = [_history_window(h, history_window) for h in hist]
    tracker = TPPerformanceTracker(":memory:") if tracker is None else tracker
    n_p, n_s, n_c = w_dev.shape
    out = np.zeros((n_p, n_s, n_c), np.float64)
    day, noon = pd.Timedelta(days=1), pd.Timedelta(hours=12)
    for p in range(n_p):
        for s in range(n_s):
            weight = float(initial_weights[p])
            registry = ModelRegistry(":memory:")
            strategy = f"loop/p{p}/s{s}"
            for c in range(n_c):
                df = deploy_trades(result, p, s, c)
                if len(df):
                    t_day = REPLAY_T0 + c * day
                    bars = df[["entry_bar", "exit_bar"]].to_numpy(np.int64)
                    if bars.max(initial=0) >= 43_200:
                        raise ValueError("replay_weights: bar index >= 43200 does not fit the "
                                         "replay clock (one second per bar before noon)")
                    df = df.assign(entry_time=t_day + pd.to_timedelta(bars[:, 0], unit="s"),
                                   exit_time=t_day + pd.to_timedelta(bars[:, 1], unit="s"))
                    tracker.record_trades(df.drop(columns=["symbol_id"]), strategy_id=strategy,
                                          symbol="SYN", model_version=f"c{c}",
                                          tp_reward_weight=weight)
                if kinds[p] == "fixed":
                    out[p, s, c] = weight
                    continue
                v = registry.register(ModelType.RL_V3, None, {"tp_reward_weight": weight}, {})
                registry.promote(v.version_id, "weight in force")
                orch = ClmOrchestrator(registry, None, None, {  # type: ignore[arg-type]
                    "policy": kinds[p], "policy_params": dict(policy_params[p]),
                    "min_attempts": min_attempts, "r_source": r_source,
                    "feedback_window": windows[p],
                    "feedback_until": REPLAY_T0 + c * day + noon}, tracker=tracker)
                job = TrainingJob(ModelType.RL_V3, None, TriggerReason.PERIODIC,
                                  {"strategy_id": strategy})
                asyncio.run(orch.enrich_training_job(job))
                reason = str(job.training_params.get("tp_feedback_reason", ""))
                if reason.startswith("TP tracker error"):
                    raise RuntimeError(f"replay_weights: policy {p}, seed {s}, cycle {c}: "
                                       f"{reason}")
                weight = float(job.training_params["tp_reward_weight"])
                out[p, s, c] = weight
            registry.close()
    return out
