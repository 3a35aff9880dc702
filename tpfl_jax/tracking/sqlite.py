"""The SQLite plumbing shared by the tracker and the model registry (one file, many tables)."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tpfl_jax.tracking.checks import check_number, type_error, value_error

SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")


class SchemaVersionError(ValueError, RuntimeError):
    """A database written with another schema version of a component (names both versions).
    A ``ValueError`` (bad input file) and, as before, a ``RuntimeError``."""


class SqliteStore:
    """One WAL-mode connection behind a lock, write transactions and a versioned schema.

    ``synchronous``: SQLite's durability level for WAL commits: ``"FULL"`` (default) survives
    power loss, ``"NORMAL"`` survives process kills. ``":memory:"`` opens a private database.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *,
                 synchronous: str = "FULL", timeout: float = 30.0) -> None:
        where = type(self).__name__
        if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
            raise type_error(where, "path", path, "a database file path (str or os.PathLike) "
                             "or ':memory:'")
        if not os.fspath(path) or not str(os.fspath(path)).strip():
            raise value_error(where, "path", path, "a database file path or ':memory:' (an "
                              "empty path would open a temporary database, lost on close)")
        if not isinstance(synchronous, str) or synchronous not in SYNCHRONOUS_LEVELS:
            raise value_error(where, "synchronous", synchronous,
                              f"one of {SYNCHRONOUS_LEVELS}")
        check_number(where, "timeout", timeout, lo=0)
        self.path = str(os.fspath(path))
        self.read_only = False
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
        except (sqlite3.Error, OSError) as e:
            self._open_read_only(e, timeout)
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")

    def _open_read_only(self, err: BaseException, timeout: float) -> None:
        """An existing database in a directory we cannot write (WAL needs its -wal/-shm files
        there): open it read-only; anything else is a ``ValueError`` naming the path."""
        p = Path(self.path)
        parent = p.parent if str(p.parent) else Path(".")
        if isinstance(err, sqlite3.DatabaseError) and "not a database" in str(err):
            raise ValueError(f"{self.path}: not an SQLite database ({err})") from None
        if not p.is_file():
            raise ValueError(f"{self.path}: cannot create the database ({type(err).__name__}: "
                             f"{err}); expected a writable directory {parent}") from None
        try:
            uri = f"{p.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            try:            # a WAL database without its -shm file in a read-only directory
                conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                       timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as e2:
                raise ValueError(f"{self.path}: cannot open the database ({err}; read-only: "
                                 f"{e2}); expected a readable SQLite file") from None
        self._conn = conn
        self.read_only = True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: committed on success, rolled back on any exception."""
        if self.read_only:
            raise ValueError(f"{self.path}: opened read-only (its directory is not writable); "
                             "cannot write. Copy the database to a writable directory")
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

    def _check_tables(self, component: str, ddl: str) -> None:
        """Every table of ``ddl`` that exists already has the columns ``ddl`` gives it (a
        foreign table of the same name is a ``ValueError`` naming the file and table)."""
        for stmt in filter(str.strip, ddl.split(";")):
            m = re.match(r"\s*CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*)\)\s*$", stmt, re.S)
            if not m:
                continue
            table, body = m.group(1), m.group(2)
            want = [ln.split()[0] for ln in body.split(",\n") if ln.split()
                    and ln.split()[0].upper() not in ("UNIQUE", "PRIMARY", "FOREIGN", "CHECK")]
            have = [r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")]
            if have and have != want:
                raise ValueError(f"{self.path}: table {table!r} exists with columns {have}, not "
                                 f"the {component}'s {want}; it was not written by tpfl_jax. "
                                 "Use another database file")

    def _stored_version(self, component: str) -> int | None:
        """The component's version in ``schema_version`` (None: no table or no row). A
        ``schema_version`` table of other columns is a ``ValueError`` naming the file."""
        cols = [r[1] for r in self._conn.execute("PRAGMA table_info(schema_version)")]
        if not cols:
            return None
        if cols != ["component", "version"]:
            raise ValueError(f"{self.path}: table 'schema_version' exists with columns {cols}, "
                             "not ['component', 'version']; it was not written by tpfl_jax. "
                             "Use another database file")
        row = self._conn.execute("SELECT version FROM schema_version WHERE component = ?",
                                 (component,)).fetchone()
        return None if row is None else row[0]

    def _version_error(self, component: str, found: Any, version: int) -> SchemaVersionError:
        by = "another tpfl_jax release"
        if isinstance(found, int):
            by = "a newer tpfl_jax" if found > version else "an older tpfl_jax"
        return SchemaVersionError(
            f"{self.path}: {component} schema version {found!r} found (written by {by}), "
            f"expected {component} schema version {version} (the version this code reads); "
            "open it with the tpfl_jax release that wrote it, or use another database file")

    def _ensure_schema(self, component: str, version: int, ddl: str) -> None:
        """Create ``ddl``'s tables if missing and check/record the component's schema version.

        A stored version other than ``version`` is a ``SchemaVersionError`` naming both (checked
        before the tables, whose columns may differ between versions); tables of other columns
        without a version of ours are a ``ValueError`` ("not written by tpfl_jax")."""
        with self._lock:
            found = self._stored_version(component)
            if found is not None and found != version:
                raise self._version_error(component, found, version)
            self._check_tables(component, ddl)
            if self.read_only:
                tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl)
                missing = [t for t in tables if not self._conn.execute(
                    "PRAGMA table_info(" + t + ")").fetchall()]
                if missing:
                    raise ValueError(f"{self.path}: opened read-only (its directory is not "
                                     f"writable) and has no table(s) {missing} of the "
                                     f"{component}; expected a database written by tpfl_jax")
                return
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
                raise self._version_error(component, row[0], version)

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
