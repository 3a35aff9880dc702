"""Interfaces between the CLM orchestrator and the training / backtest machinery.

``TrainingAdapter`` and ``BacktestAdapter`` are the Protocols ``ClmOrchestrator`` is written for;
their methods may be ``async`` or plain (the orchestrator awaits awaitables). ``backtest_metrics``
turns a trades DataFrame (one row per closed trade, ``TRADE_KEYS`` columns) into the metrics the
promotion criteria read.

The real adapters (Flax PPO on ``TradingEnv`` with the job's ``tp_reward_weight``; evaluation on
held-out market data recording its trades into the tracker) need ``tpfl_jax.agents.ppo`` and
``tpfl_jax.env.trading`` and are added here once those modules exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from tpfl_jax.clm.models import TrainingJob
from tpfl_jax.env.stats import EXIT_TP

METRIC_KEYS = ("n_trades", "win_rate", "tp_hit_rate", "mean_r", "sharpe_ratio", "max_drawdown",
               "total_r")


@dataclass
class TrainedModel:
    """What a training adapter returns.

    params: the trained parameters (a pytree; checkpointed by the registry when
            ``checkpoint_path`` is None), or None.
    metrics: training summary metrics (host floats).
    config: the training configuration actually used (JSON-serialisable).
    checkpoint_path: where the adapter already saved the parameters, if it did.
    """

    params: Any
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint_path: str | None = None


@dataclass
class BacktestResult:
    """What a backtest adapter returns: metrics (see ``METRIC_KEYS``) and the closed trades."""

    metrics: dict[str, float]
    trades: pd.DataFrame | None = None


@runtime_checkable
class TrainingAdapter(Protocol):
    """Fetches a job's training data and trains a model on it."""

    def fetch_training_data(self, job: TrainingJob) -> Any:
        """The data to train on (may be a coroutine)."""
        ...

    def train(self, job: TrainingJob, data: Any) -> TrainedModel:
        """Train with ``job.training_params`` (incl. ``tp_reward_weight``) (may be a coroutine)."""
        ...


@runtime_checkable
class BacktestAdapter(Protocol):
    """Evaluates a trained model on held-out data."""

    def backtest(self, job: TrainingJob, model: TrainedModel) -> BacktestResult:
        """Backtest ``model`` for ``job`` (may be a coroutine)."""
        ...


def backtest_metrics(trades: pd.DataFrame) -> dict[str, float]:
    """Promotion metrics of a trades DataFrame (per-trade, in R units).

    n_trades; win_rate (R > 0); tp_hit_rate (exit_reason 'tp'); mean_r; sharpe_ratio = mean R /
    std R (per trade, not annualised; 0 with fewer than 2 trades or zero spread); max_drawdown =
    largest peak-to-trough fall of cumulative R (>= 0); total_r. Needs ``r_realised`` and
    ``exit_reason`` columns; rows in exit order.
    """
    for col in ("r_realised", "exit_reason"):
        if col not in trades.columns:
            raise ValueError(f"backtest_metrics: column {col!r} missing; expected the TRADE_KEYS "
                             "columns of a backtest")
    r = trades["r_realised"].to_numpy(dtype=float)
    if not np.all(np.isfinite(r)):
        bad = int(np.flatnonzero(~np.isfinite(r))[0])
        raise ValueError(f"backtest_metrics: row {trades.index[bad]!r}: r_realised = {r[bad]}; "
                         "expected a finite number")
    n = len(r)
    if n == 0:
        return {k: 0.0 for k in METRIC_KEYS}
    reasons = trades["exit_reason"]
    hit = (reasons == EXIT_TP) if pd.api.types.is_numeric_dtype(reasons) else (reasons == "tp")
    equity = np.concatenate([[0.0], np.cumsum(r)])
    std = float(r.std(ddof=1)) if n > 1 else 0.0
    return {
        "n_trades": float(n),
        "win_rate": float((r > 0).mean()),
        "tp_hit_rate": float(np.asarray(hit, dtype=float).mean()),
        "mean_r": float(r.mean()),
        "sharpe_ratio": float(r.mean() / std) if std > 0 else 0.0,
        "max_drawdown": float((np.maximum.accumulate(equity) - equity).max()),
        "total_r": float(r.sum()),
    }
