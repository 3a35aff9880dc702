"""The SQLite plumbing shared by the tracker and the model registry (one file, many tables)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")


class SqliteStore:
    """One WAL-mode connection behind a lock, write transactions and a versioned schema.

    ``synchronous``: SQLite's durability level for WAL commits: ``"FULL"`` (default) survives
    power loss, ``"NORMAL"`` survives process kills. ``":memory:"`` opens a private database.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *,
                 synchronous: str = "FULL", timeout: float = 30.0) -> None:
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(f"synchronous = {synchronous!r}; expected one of {SYNCHRONOUS_LEVELS}")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: committed on success, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn.cursor()
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Any = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _ensure_schema(self, component: str, version: int, ddl: str) -> None:
        """Create ``ddl``'s tables if missing and check/record the component's schema version."""
        with self._transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                        "component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            for stmt in filter(str.strip, ddl.split(";")):
                cur.execute(stmt)
            row = cur.execute("SELECT version FROM schema_version WHERE component = ?",
                              (component,)).fetchone()
            if row is None:
                cur.execute("INSERT INTO schema_version (component, version) VALUES (?, ?)",
                            (component, version))
            elif row[0] != version:
                raise RuntimeError(f"{self.path}: {component} schema version {row[0]}, this code "
                                   f"reads version {version}")

    def schema_versions(self) -> dict[str, int]:
        """Stored schema version per component."""
        return dict(self._query("SELECT component, version FROM schema_version"))

    def close(self) -> None:
        """Close the connection (committed data is already durable)."""
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
