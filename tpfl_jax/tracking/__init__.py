"""Production TP performance tracking (SQLite)."""
