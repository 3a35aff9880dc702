"""Interfaces between the CLM orchestrator and the training / backtest machinery.

``TrainingAdapter`` and ``BacktestAdapter`` are the Protocols ``ClmOrchestrator`` is written for;
their methods may be ``async`` or plain (the orchestrator awaits awaitables).

The promotion criteria read ``METRIC_KEYS``, each defined by ``tpfl_jax.accounting``:
``n_trades`` (closed trades), ``win_rate``, ``tp_hit_rate`` (= ``hit_rate``), ``mean_r``,
``sharpe_ratio`` (the CLM's name for ``trade_sharpe``: mean / sd of realised R per trade, not
annualised), ``max_drawdown`` (mean over episodes of the deepest fall from the equity peak, a
fraction of equity; absent when only a trades table is known) and ``total_r``.
``backtest_metrics`` scores a trades DataFrame (one row per closed trade, ``TRADE_KEYS``
columns); the PPO backtest adapter scores its episodes through ``accounting.rollout``.

The real adapters: Flax PPO on ``TradingEnv`` with the job's ``tp_reward_weight``, and
evaluation on held-out market data recording its trades into the tracker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np
import pandas as pd

from tpfl_jax.accounting import finalize, total, trade_sums_from_frame, train_info_metrics
from tpfl_jax.agents.evaluate import evaluate
from tpfl_jax.agents.ppo import PPOConfig, make_train
from tpfl_jax.clm.models import TrainingJob
from tpfl_jax.env.stats import TRADE_KEYS
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market import synthetic
from tpfl_jax.market.types import MarketData

METRIC_KEYS = ("n_trades", "win_rate", "tp_hit_rate", "mean_r", "sharpe_ratio", "max_drawdown",
               "total_r")


@dataclass
class TrainedModel:
    """What a training adapter returns.

    params: the trained parameters (a pytree; checkpointed by the registry when
            ``checkpoint_path`` is None), or None.
    metrics: training summary metrics (host floats; None where undefined).
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


def clm_metrics(sums: Any, max_drawdown: float | None = None) -> dict[str, float]:
    """``METRIC_KEYS`` from ``accounting`` sums (summed over every trade and episode);
    ``max_drawdown`` is left out when unknown (None)."""
    m = finalize(sums, axis=None)
    out = {"n_trades": float(np.asarray(sums.trades)), "win_rate": float(m["win_rate"]),
           "tp_hit_rate": float(m["hit_rate"]), "mean_r": float(m["mean_r"]),
           "sharpe_ratio": float(m["trade_sharpe"]), "total_r": float(np.asarray(sums.r))}
    if max_drawdown is not None:
        out["max_drawdown"] = float(max_drawdown)
    return out


def backtest_metrics(trades: pd.DataFrame) -> dict[str, float]:
    """``METRIC_KEYS`` of a trades DataFrame (the trade contract's columns, rows = closed
    trades) by the accounting's definitions; without ``max_drawdown`` (a trades table has no
    equity curve)."""
    try:
        sums = trade_sums_from_frame(trades)
    except ValueError as e:
        raise ValueError(f"backtest_metrics: {e}") from None
    return clm_metrics(sums)


# --------------------------------------------------------------------------- real adapters
MarketSource = Any  # MarketData, or a callable (job) -> MarketData, or None (synthetic)


def _symbol_seed(job: TrainingJob, salt: int) -> int:
    return zlib.crc32(f"{job.symbol_key}:{salt}".encode()) & 0x7FFFFFFF


def _market_for(source: MarketSource, job: TrainingJob, salt: int, n_paths: int, n_bars: int):
    """The job's market: ``source(job)``, ``source`` itself, or a synthetic regime market
    seeded by the job's symbols (``salt`` separates training from held-out data)."""
    if source is None:
        return synthetic.generate("regime", jax.random.key(_symbol_seed(job, salt)),
                                  n_paths=n_paths, n_bars=n_bars)
    data = source(job) if callable(source) else source
    if not isinstance(data, MarketData):
        raise TypeError(f"market source returned {type(data).__name__}; expected MarketData")
    return data


def _job_weight(job: TrainingJob) -> float:
    w = job.training_params.get("tp_reward_weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
        raise ValueError(f"TrainingJob.training_params['tp_reward_weight'] = {w!r}; "
                         "expected a finite number >= 0")
    return float(w)


class PPOTrainingAdapter:
    """Trains the Flax PPO on ``TradingEnv`` with the job's ``tp_reward_weight``.

    ``job.training_params`` keys that name ``PPOConfig`` fields (e.g. ``lr``,
    ``total_timesteps``) override ``ppo_config``; keys under ``env_params`` override
    ``env_kwargs``. Training runs in a worker thread so the event loop stays free.
    """

    def __init__(self, ppo_config: Any = None, *, market: MarketSource = None,
                 env_static: dict[str, Any] | None = None, env_kwargs: dict[str, Any] | None = None,
                 n_paths: int = 16, n_bars: int = 1024, seed: int = 0):
        self.ppo_config = PPOConfig() if ppo_config is None else ppo_config
        self.market = market
        self.env_static = dict(env_static or {})
        self.env_kwargs = dict(env_kwargs or {})
        self.n_paths, self.n_bars, self.seed = n_paths, n_bars, seed

    def fetch_training_data(self, job: TrainingJob) -> Any:
        """The training ``MarketData`` of the job."""
        return _market_for(self.market, job, 0, self.n_paths, self.n_bars)

    def job_config(self, job: TrainingJob) -> Any:
        """``PPOConfig`` with the job's overrides applied."""
        names = {f.name for f in dataclasses.fields(self.ppo_config)}
        over = {k: v for k, v in job.training_params.items() if k in names}
        return dataclasses.replace(self.ppo_config, **over)

    def _train_sync(self, job: TrainingJob, data: Any) -> TrainedModel:

        weight = _job_weight(job)
        cfg = self.job_config(job)
        env = TradingEnv(**self.env_static)
        env_kwargs = {**self.env_kwargs, **job.training_params.get("env_params", {})}
        env_params = env.make_params(data, tp_reward_weight=weight, **env_kwargs)

        result = jax.jit(make_train(cfg, env, info_metrics=train_info_metrics))(
            jax.random.key(self.seed), env_params)
        metrics = {k: np.asarray(v) for k, v in jax.device_get(result.metrics).items()}
        ret = metrics.get("episode_return", np.zeros(1))
        finite = ret[np.isfinite(ret)]
        # no episode finished during training (a budget shorter than an episode): None, not
        # NaN (the registry stores standard JSON)
        summary = {"final_episode_return": float(finite[-1]) if finite.size else None,
                   "episodes_finished": float(np.nansum(metrics.get("episodes", 0.0))),
                   "num_updates": float(cfg.num_updates)}
        for k in ("hit_rate", "mean_r", "trades"):      # the last update's training rollout
            summary[f"final_{k}"] = float(metrics[f"trade/{k}"][-1])
        # the env as built (every static setting, defaults resolved): the model's backtest
        # rebuilds this env even if the package's defaults change later
        static = {"window": env.window, "n_tp": env.n_tp,
                  "premature_horizon": env.premature_horizon, "features": env.features}
        config = {"ppo": dataclasses.asdict(cfg), "env_static": static,
                  "env_kwargs": {k: np.asarray(v).tolist() for k, v in env_kwargs.items()},
                  "tp_reward_weight": weight, "seed": self.seed}
        params = {"network": jax.device_get(result.params)}
        rms = getattr(result.runner_state, "obs_rms", None)
        if cfg.normalize_obs and rms is not None:
            params["obs_rms"] = jax.device_get(rms)
        return TrainedModel(params=params, metrics=summary, config=config)

    async def train(self, job: TrainingJob, data: Any) -> TrainedModel:
        """Train in a worker thread; returns the network params and summary metrics."""
        return await asyncio.to_thread(self._train_sync, job, data)


class PPOBacktestAdapter:
    """Evaluates a ``PPOTrainingAdapter`` model on held-out market data through the env (and
    so the shared exit resolver), and records the closed trades into the tracker."""

    def __init__(self, *, market: MarketSource = None, tracker: Any = None,
                 strategy_id: str = "RL_V3", n_episodes: int = 64, n_paths: int = 16,
                 n_bars: int = 1024, seed: int = 1, deterministic: bool = True):
        self.market = market
        self.tracker = tracker
        self.strategy_id = strategy_id
        self.n_episodes, self.n_paths, self.n_bars = n_episodes, n_paths, n_bars
        self.seed, self.deterministic = seed, deterministic

    def _backtest_sync(self, job: TrainingJob, model: TrainedModel) -> BacktestResult:

        cfg = PPOConfig(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in model.config["ppo"].items()})
        # a model stored without ``features`` predates the setting: the observation was base
        env = TradingEnv(**{"features": "base", **model.config.get("env_static", {})})
        data = _market_for(self.market, job, 1, self.n_paths, self.n_bars)
        env_params = env.make_params(data, tp_reward_weight=model.config["tp_reward_weight"],
                                     **model.config.get("env_kwargs", {}))
        ev = evaluate(model.params["network"], env, env_params, jax.random.key(self.seed),
                      self.n_episodes, deterministic=self.deterministic, config=cfg,
                      obs_rms=model.params.get("obs_rms"))    # accounting.rollout
        # the tracker takes the trade contract's columns (evaluate adds episode/step)
        trades = ev.trades[[k for k in TRADE_KEYS if k in ev.trades.columns]]
        if self.tracker is not None and len(trades):
            symbols = job.symbols or ["ALL"]
            self.tracker.record_trades(
                trades, strategy_id=job.training_params.get("strategy_id", self.strategy_id),
                symbol={i: s for i, s in enumerate(symbols)} if len(symbols) > 1 else symbols[0],
                tp_reward_weight=model.config["tp_reward_weight"])

        metrics = clm_metrics(total(ev.sums), max_drawdown=ev.metrics["max_drawdown"])
        metrics["mean_episode_return"] = float(np.mean(ev.returns))
        return BacktestResult(metrics, trades)

    async def backtest(self, job: TrainingJob, model: TrainedModel) -> BacktestResult:
        """Backtest in a worker thread."""
        return await asyncio.to_thread(self._backtest_sync, job, model)
