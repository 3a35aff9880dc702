"""Continuous-learning manager: models, weight policies, registry, orchestrator.

Names are imported lazily, so ``import tpfl_jax.clm.policies`` (jitted core) never loads the
orchestration glue (registry, orchestrator, tracker).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelType": "models", "TriggerReason": "models", "ModelStatus": "models",
    "TrainingJob": "models", "ModelVersion": "models",
    "POLICIES": "policies", "POLICY_NAMES": "policies", "PolicyParams": "policies",
    "PolicyState": "policies", "apply_policy": "policies", "decide_weight": "policies",
    "make_policy_params": "policies", "init_policy_state": "policies",
    "load_policy": "policies", "finish": "policies",
    "ModelRegistry": "registry",
    "ClmOrchestrator": "orchestrator", "JobResult": "orchestrator",
    "TrainingAdapter": "adapters", "BacktestAdapter": "adapters", "TrainedModel": "adapters",
    "BacktestResult": "adapters", "backtest_metrics": "adapters",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tpfl_jax.clm.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tpfl_jax.clm' has no attribute {name!r}")
