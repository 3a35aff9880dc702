"""CLM data model: model types, triggers, training jobs, model versions and statuses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ModelType(StrEnum):
    """Kinds of model the CLM trains. Only RL types receive TP feedback."""

    RL_V3 = "rl_v3"
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"

    @property
    def is_rl(self) -> bool:
        """True for reinforcement-learning models (TP-feedback enrichment applies)."""
        return self in (ModelType.RL_V3,)


class TriggerReason(StrEnum):
    """Why a training job was started (``DRIFT_DETECTED`` is the seed's alias of ``DRIFT``)."""

    PERIODIC = "periodic"
    DRIFT = "drift"
    DRIFT_DETECTED = "drift"
    MANUAL = "manual"
    PERFORMANCE = "performance"


class ModelStatus(StrEnum):
    """Lifecycle of a model version (``rejected``: a candidate that failed promotion)."""

    CANDIDATE = "candidate"
    SHADOW = "shadow"
    PRODUCTION = "production"
    RETIRED = "retired"
    REJECTED = "rejected"


def symbol_key(symbol: str | list[str] | tuple[str, ...] | None) -> str:
    """Canonical registry key of a job's symbol(s): ``"*"`` for all, sorted comma list."""
    if symbol is None:
        return "*"
    syms = [symbol] if isinstance(symbol, str) else list(symbol)
    if not syms or not all(isinstance(s, str) and s.strip() and "," not in s for s in syms):
        raise ValueError(f"symbol = {symbol!r}; expected None, a non-empty string or a non-empty "
                         "list of non-empty strings without commas")
    return ",".join(sorted(set(syms)))


@dataclass
class TrainingJob:
    """A request to (re)train one model. ``symbol=None`` means all symbols (multi-symbol)."""

    model_type: ModelType
    symbol: str | list[str] | None
    trigger_reason: TriggerReason
    training_params: dict[str, Any] = field(default_factory=dict)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if not isinstance(self.model_type, ModelType):
            try:
                self.model_type = ModelType(self.model_type)
            except ValueError:
                raise ValueError(f"TrainingJob: model_type = {self.model_type!r}; expected one "
                                 f"of {[m.value for m in ModelType]}") from None
        if not isinstance(self.trigger_reason, TriggerReason):
            try:
                self.trigger_reason = TriggerReason(self.trigger_reason)
            except ValueError:
                raise ValueError(f"TrainingJob: trigger_reason = {self.trigger_reason!r}; "
                                 f"expected one of {[t.value for t in TriggerReason]}") from None
        symbol_key(self.symbol)
        if not isinstance(self.training_params, dict):
            raise ValueError(f"TrainingJob: training_params = {self.training_params!r}; "
                             "expected a dict")

    @property
    def symbols(self) -> list[str] | None:
        """The job's symbols as a list (``None`` = all symbols)."""
        if self.symbol is None:
            return None
        return [self.symbol] if isinstance(self.symbol, str) else list(self.symbol)

    @property
    def symbol_key(self) -> str:
        """Registry key of the job's symbols (see ``symbol_key``)."""
        return symbol_key(self.symbol)


@dataclass
class ModelVersion:
    """One registered model version (a row of the registry)."""

    version_id: int
    model_type: ModelType
    symbol: str
    version: int
    status: ModelStatus
    params: dict[str, Any]
    metrics: dict[str, float]
    parent_id: int | None = None
    checkpoint_path: str | None = None
    job_id: str | None = None
    trigger_reason: TriggerReason | None = None
    created_at: datetime | None = None

    @property
    def tp_reward_weight(self) -> float | None:
        """The ``tp_reward_weight`` this version was trained with (``None`` if not RL)."""
        return self.params.get("tp_reward_weight")
