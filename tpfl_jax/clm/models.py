"""CLM data model: model types, triggers, training jobs, model versions and statuses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from tpfl_jax.tracking.checks import MAX_NAME_LEN, check_str, type_error, value_error

E = TypeVar("E", bound=StrEnum)


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


def parse_enum(enum_cls: type[E], value: Any, where: str, name: str) -> E:
    """``enum_cls(value)``; anything else is an error naming ``name`` and the valid values."""
    if isinstance(value, enum_cls):
        return value
    expected = f"one of {[m.value for m in enum_cls]}"
    if not isinstance(value, str):
        raise type_error(where, name, value, f"a {enum_cls.__name__} or {expected}")
    try:
        return enum_cls(value)
    except ValueError:
        raise value_error(where, name, value, expected) from None


_SYMBOL_TEXT = ("None (all symbols), a non-empty string or a non-empty list of non-empty "
                "strings without commas")


def symbol_key(symbol: str | list[str] | tuple[str, ...] | None, *, where: str = "symbol_key",
               name: str = "symbol", max_len: int | None = None) -> str:
    """Canonical registry key of a job's symbol(s): ``"*"`` for all, sorted comma list.

    ``max_len``: the longest symbol allowed (``MAX_NAME_LEN`` where the key becomes part of a
    checkpoint folder name: new jobs and registrations; reads accept any recorded key)."""
    if symbol is None:
        return "*"
    if isinstance(symbol, str):
        syms = [symbol]
    elif isinstance(symbol, (list, tuple, set, frozenset)):
        syms = list(symbol)
    else:
        raise type_error(where, name, symbol, _SYMBOL_TEXT)
    if not syms:
        raise value_error(where, name, symbol, _SYMBOL_TEXT)
    for i, s in enumerate(syms):
        sname = name if isinstance(symbol, str) else f"{name}[{i}]"
        if not isinstance(s, str):
            raise type_error(where, sname, s, f"a non-empty string ({name}: {_SYMBOL_TEXT})")
        check_str(where, sname, s)
        if max_len is not None and len(s) > max_len:
            raise value_error(where, sname, s, f"at most {max_len} characters (got {len(s)}; "
                              "a symbol becomes part of the checkpoint folder name)")
        if "," in s:
            raise value_error(where, sname, s, "a symbol without commas (a comma separates "
                              "the symbols of a multi-symbol key)")
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
        self.validate()

    def validate(self, where: str = "TrainingJob", prefix: str = "") -> TrainingJob:
        """Check every field (again: a job can be changed after it was made); returns the job.

        ``model_type`` / ``trigger_reason`` given as their string values become the enums (as
        at construction). Errors name the field (``<where>: <prefix><field> = <value>;
        expected ...``); symbols are at most ``MAX_NAME_LEN`` characters (they become part of
        the checkpoint folder name)."""
        self.model_type = parse_enum(ModelType, self.model_type, where, f"{prefix}model_type")
        self.trigger_reason = parse_enum(TriggerReason, self.trigger_reason, where,
                                         f"{prefix}trigger_reason")
        symbol_key(self.symbol, where=where, name=f"{prefix}symbol", max_len=MAX_NAME_LEN)
        if not isinstance(self.training_params, dict):
            raise type_error(where, f"{prefix}training_params", self.training_params,
                             "a dict of training parameters")
        check_str(where, f"{prefix}job_id", self.job_id)
        if not isinstance(self.created_at, datetime):
            raise type_error(where, f"{prefix}created_at", self.created_at, "a datetime")
        return self

    @property
    def symbols(self) -> list[str] | None:
        """The job's symbols as a list (``None`` = all symbols)."""
        if self.symbol is None:
            return None
        return [self.symbol] if isinstance(self.symbol, str) else list(self.symbol)

    @property
    def symbol_key(self) -> str:
        """Registry key of the job's symbols (see ``symbol_key``)."""
        return symbol_key(self.symbol, where="TrainingJob", name="symbol")


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
