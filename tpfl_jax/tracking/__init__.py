"""Production TP performance tracking (SQLite)."""

from tpfl_jax.tracking.tracker import (
    ACTUAL_R_KEY,
    EDGE_KEYS,
    FEEDBACK_KEYS,
    TPPerformanceTracker,
    default_db_path,
    get_strategy_tp_feedback,
    get_tp_tracker,
    reset_tp_tracker,
)

__all__ = ["ACTUAL_R_KEY", "EDGE_KEYS", "FEEDBACK_KEYS", "TPPerformanceTracker", "default_db_path",
           "get_strategy_tp_feedback", "get_tp_tracker", "reset_tp_tracker"]
