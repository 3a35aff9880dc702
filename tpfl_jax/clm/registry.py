"""Model registry on SQLite (the tracker's file works too) with orbax checkpoints.

Tables: ``model_versions`` (params and metrics as JSON, lineage via ``parent_id``, checkpoint
path), ``model_status_history`` (every status change with its reason) and ``training_jobs``.
At most one version per (model type, symbol key) is in production (a partial unique index).
Every state change is one transaction.

Checkpoints: by default under ``<db dir>/checkpoints/<db file name>/`` (one folder per
database, so two registries in one directory never share one), one folder per version
(``<model type>_<symbol key>_v<version>``) holding the orbax checkpoint, its digest
(``digest.json``) and its owner (``owner.json``: database and version). A folder that exists
and is not the version's own is never overwritten. Each version's path is recorded, so
checkpoints written under an earlier layout (``<db dir>/checkpoints/<version folder>``) load.

Bad arguments raise an error naming the argument (``ValueError``; a wrong type
``ArgTypeError``, also a ``TypeError``); symbols are at most ``MAX_NAME_LEN`` characters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from tpfl_jax.clm.models import (
    ModelStatus,
    ModelType,
    ModelVersion,
    TrainingJob,
    TriggerReason,
    parse_enum,
    symbol_key,
)
from tpfl_jax.guard import first_non_finite, tree_digest
from tpfl_jax.rundir import confine, safe_name
from tpfl_jax.tracking.checks import (
    MAX_NAME_LEN,
    check_int,
    check_str,
    type_error,
    value_error,
)
from tpfl_jax.tracking.sqlite import SqliteStore

SCHEMA_COMPONENT = "registry"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    model_type      TEXT    NOT NULL,
    symbol          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    params_json     TEXT    NOT NULL,
    metrics_json    TEXT    NOT NULL,
    parent_id       INTEGER REFERENCES model_versions (id),
    checkpoint_path TEXT,
    job_id          TEXT,
    trigger_reason  TEXT,
    created_at_ns   INTEGER NOT NULL,
    UNIQUE (model_type, symbol, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_production
    ON model_versions (model_type, symbol) WHERE status = 'production';
CREATE TABLE IF NOT EXISTS model_status_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    version_id  INTEGER NOT NULL REFERENCES model_versions (id),
    from_status TEXT,
    to_status   TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    at_ns       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS training_jobs (
    job_id         TEXT PRIMARY KEY,
    model_type     TEXT NOT NULL,
    symbol         TEXT NOT NULL,
    trigger_reason TEXT NOT NULL,
    status         TEXT NOT NULL,
    params_json    TEXT NOT NULL,
    version_id     INTEGER REFERENCES model_versions (id),
    error          TEXT,
    updated_at_ns  INTEGER NOT NULL
)
"""

# allowed status transitions (from -> to)
TRANSITIONS: dict[ModelStatus, tuple[ModelStatus, ...]] = {
    ModelStatus.CANDIDATE: (ModelStatus.SHADOW, ModelStatus.PRODUCTION, ModelStatus.REJECTED),
    ModelStatus.SHADOW: (ModelStatus.PRODUCTION, ModelStatus.REJECTED, ModelStatus.RETIRED),
    ModelStatus.PRODUCTION: (ModelStatus.RETIRED,),
    ModelStatus.RETIRED: (ModelStatus.PRODUCTION,),
    ModelStatus.REJECTED: (),
}
JOB_STATUSES = ("running", "completed", "failed")
OWNER_FILE = "owner.json"
# a checkpoint folder's symbol part longer than this is cut and keyed by a digest of the key
_MAX_KEY_PART = 100


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, datetime):
        return o.isoformat()
    if hasattr(o, "__array__"):  # jax arrays
        return np.asarray(o).tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def to_json(value: dict[str, Any], what: str) -> str:
    """``value`` as standard JSON (numpy/jax scalars and arrays, enums, datetimes converted);
    NaN/inf anywhere is a ``ValueError`` naming the key (JSON has no NaN)."""
    if not isinstance(value, dict):
        where, _, name = what.rpartition(": ")
        raise type_error(where or what, name or what, value, "a dict")
    bad = first_non_finite(value)
    if bad is not None:
        raise ValueError(f"{what}{bad} is not finite; expected finite numbers (standard JSON "
                         "has no NaN/inf)")
    try:
        return json.dumps(value, default=_json_default, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: {e}; expected JSON-serialisable finite values") from None


class ModelRegistry(SqliteStore):
    """Versions, params, metrics, status history, lineage and checkpoints of CLM models."""

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *,
                 checkpoint_dir: str | os.PathLike[str] | None = None,
                 synchronous: str = "FULL", timeout: float = 30.0) -> None:
        if checkpoint_dir is not None and (isinstance(checkpoint_dir, (bytes, bytearray)) or
                                           not isinstance(checkpoint_dir, (str, os.PathLike))):
            raise type_error("ModelRegistry", "checkpoint_dir", checkpoint_dir,
                             "None or a directory path (str or os.PathLike)")
        super().__init__(path, synchronous=synchronous, timeout=timeout)
        self._ensure_schema(SCHEMA_COMPONENT, SCHEMA_VERSION, _SCHEMA)
        if self.path == ":memory:":
            # a private database: its own folder, never another registry's
            self._owner_db = f":memory:{uuid.uuid4().hex}"
            default = Path("outputs") / "checkpoints" / f"memory-{self._owner_db[-12:]}"
        else:
            db = Path(self.path)
            self._owner_db = str(db.resolve())
            default = db.parent / "checkpoints" / safe_name(db.name)
        self.checkpoint_dir = Path(default if checkpoint_dir is None else checkpoint_dir
                                   ).absolute()

    # -- argument checks ---------------------------------------------------------------------
    @staticmethod
    def _vid(where: str, version_id: Any) -> int:
        """An integer id (an unknown one is the ``KeyError`` of ``get``)."""
        return check_int(where, "version_id", version_id)

    @staticmethod
    def _reason(where: str, reason: Any) -> str:
        return check_str(where, "reason", reason)

    # -- reads -------------------------------------------------------------------------------
    _COLS = ("id, model_type, symbol, version, status, params_json, metrics_json, parent_id, "
             "checkpoint_path, job_id, trigger_reason, created_at_ns")

    @staticmethod
    def _row(r: tuple) -> ModelVersion:
        return ModelVersion(
            version_id=r[0], model_type=ModelType(r[1]), symbol=r[2], version=r[3],
            status=ModelStatus(r[4]), params=json.loads(r[5]), metrics=json.loads(r[6]),
            parent_id=r[7], checkpoint_path=r[8], job_id=r[9],
            trigger_reason=TriggerReason(r[10]) if r[10] is not None else None,
            created_at=datetime.fromtimestamp(r[11] / 1e9, UTC))

    def get(self, version_id: int) -> ModelVersion:
        """The version with id ``version_id`` (``KeyError`` if unknown)."""
        version_id = self._vid("get", version_id)
        rows = self._query(f"SELECT {self._COLS} FROM model_versions WHERE id = ?", (version_id,))
        if not rows:
            raise KeyError(f"model version {version_id!r} is not registered")
        return self._row(rows[0])

    def get_production(self, model_type: ModelType | str,
                       symbol: str | list[str] | None) -> ModelVersion | None:
        """The production version of (model type, symbols), or ``None``."""
        where = "get_production"
        rows = self._query(f"SELECT {self._COLS} FROM model_versions WHERE model_type = ? AND "
                           "symbol = ? AND status = 'production'",
                           (parse_enum(ModelType, model_type, where, "model_type").value,
                            symbol_key(symbol, where=where)))
        return self._row(rows[0]) if rows else None

    def list_versions(self, model_type: ModelType | str | None = None,
                      symbol: str | list[str] | None = None,
                      status: ModelStatus | str | None = None) -> list[ModelVersion]:
        """Registered versions (optionally filtered), oldest first."""
        conds, params = [], []
        where = "list_versions"
        if model_type is not None:
            conds.append("model_type = ?")
            params.append(parse_enum(ModelType, model_type, where, "model_type").value)
        if symbol is not None:
            conds.append("symbol = ?")
            params.append(symbol_key(symbol, where=where))
        if status is not None:
            conds.append("status = ?")
            params.append(parse_enum(ModelStatus, status, where, "status").value)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return [self._row(r) for r in
                self._query(f"SELECT {self._COLS} FROM model_versions{where} ORDER BY id", params)]

    def history(self, version_id: int) -> list[dict[str, Any]]:
        """Status changes of a version, oldest first."""
        version_id = self._vid("history", version_id)
        self.get(version_id)
        rows = self._query("SELECT from_status, to_status, reason, at_ns FROM "
                           "model_status_history WHERE version_id = ? ORDER BY id", (version_id,))
        return [{"from": f, "to": t, "reason": r, "at": datetime.fromtimestamp(a / 1e9, UTC)}
                for f, t, r, a in rows]

    def lineage(self, version_id: int) -> list[ModelVersion]:
        """The version and its ancestors (``parent_id`` chain), newest first."""
        out, seen = [], set()
        vid: int | None = self._vid("lineage", version_id)
        while vid is not None and vid not in seen:
            seen.add(vid)
            v = self.get(vid)
            out.append(v)
            vid = v.parent_id
        return out

    # -- writes ------------------------------------------------------------------------------
    def register(self, model_type: ModelType | str, symbol: str | list[str] | None,
                 params: dict[str, Any], metrics: dict[str, float], *,
                 parent_id: int | None | str = "production",
                 checkpoint_path: str | None = None, job_id: str | None = None,
                 trigger_reason: TriggerReason | str | None = None,
                 reason: str = "registered") -> ModelVersion:
        """Register a new candidate version (version number = last + 1).

        ``parent_id`` defaults to the current production version of the same key (lineage).
        Every argument is checked before anything is written; symbols are at most
        ``MAX_NAME_LEN`` characters (the key becomes part of the checkpoint folder name).
        """
        where = "register"
        mt = parse_enum(ModelType, model_type, where, "model_type").value
        key = symbol_key(symbol, where=where, max_len=MAX_NAME_LEN)
        params_json = to_json(params, "register: params")
        metrics_json = to_json(metrics, "register: metrics")
        trig = (parse_enum(TriggerReason, trigger_reason, where, "trigger_reason").value
                if trigger_reason is not None else None)
        if parent_id != "production":
            parent_id = check_int(where, "parent_id", parent_id, lo=1, optional=True)
        if checkpoint_path is not None:
            if isinstance(checkpoint_path, (bytes, bytearray)) or not isinstance(
                    checkpoint_path, (str, os.PathLike)):
                raise type_error(where, "checkpoint_path", checkpoint_path,
                                 "None or a path (str or os.PathLike)")
            checkpoint_path = check_str(where, "checkpoint_path", os.fspath(checkpoint_path))
        check_str(where, "job_id", job_id, optional=True)
        reason = self._reason(where, reason)
        now = time.time_ns()
        with self._transaction() as cur:
            if parent_id == "production":
                row = cur.execute("SELECT id FROM model_versions WHERE model_type = ? AND "
                                  "symbol = ? AND status = 'production'", (mt, key)).fetchone()
                parent_id = row[0] if row else None
            elif parent_id is not None and cur.execute(
                    "SELECT 1 FROM model_versions WHERE id = ?", (parent_id,)).fetchone() is None:
                raise value_error(where, "parent_id", parent_id,
                                  "None, 'production' or the id of a registered version")
            version = cur.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions "
                                  "WHERE model_type = ? AND symbol = ?", (mt, key)).fetchone()[0]
            cur.execute("INSERT INTO model_versions (model_type, symbol, version, status, "
                        "params_json, metrics_json, parent_id, checkpoint_path, job_id, "
                        "trigger_reason, created_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (mt, key, version, ModelStatus.CANDIDATE.value, params_json,
                         metrics_json, parent_id, checkpoint_path, job_id, trig, now))
            vid = cur.lastrowid
            cur.execute("INSERT INTO model_status_history (version_id, from_status, to_status, "
                        "reason, at_ns) VALUES (?, NULL, ?, ?, ?)",
                        (vid, ModelStatus.CANDIDATE.value, reason, now))
        return self.get(vid)

    def _set(self, cur, version_id: int, to: ModelStatus, reason: str) -> None:
        row = cur.execute("SELECT status FROM model_versions WHERE id = ?",
                          (version_id,)).fetchone()
        if row is None:
            raise KeyError(f"model version {version_id!r} is not registered")
        frm = ModelStatus(row[0])
        if to not in TRANSITIONS[frm]:
            raise ValueError(f"model version {version_id}: cannot go from {frm.value!r} to "
                             f"{to.value!r}; allowed: {[s.value for s in TRANSITIONS[frm]]}")
        cur.execute("UPDATE model_versions SET status = ? WHERE id = ?", (to.value, version_id))
        cur.execute("INSERT INTO model_status_history (version_id, from_status, to_status, "
                    "reason, at_ns) VALUES (?, ?, ?, ?, ?)",
                    (version_id, frm.value, to.value, reason, time.time_ns()))

    def set_status(self, version_id: int, status: ModelStatus | str, reason: str) -> ModelVersion:
        """Move a version to ``status`` (see ``TRANSITIONS``; use ``promote`` for production)."""
        where = "set_status"
        version_id = self._vid(where, version_id)
        status = parse_enum(ModelStatus, status, where, "status")
        reason = self._reason(where, reason)
        if status is ModelStatus.PRODUCTION:
            return self.promote(version_id, reason)
        with self._transaction() as cur:
            self._set(cur, version_id, status, reason)
        return self.get(version_id)

    def promote(self, version_id: int, reason: str = "promoted") -> ModelVersion:
        """Make a version production, retiring the current production version of its key."""
        version_id = self._vid("promote", version_id)
        reason = self._reason("promote", reason)
        v = self.get(version_id)
        with self._transaction() as cur:
            row = cur.execute("SELECT id FROM model_versions WHERE model_type = ? AND symbol = ? "
                              "AND status = 'production'",
                              (v.model_type.value, v.symbol)).fetchone()
            if row is not None and row[0] != version_id:
                self._set(cur, row[0], ModelStatus.RETIRED, f"replaced by version {version_id}")
            self._set(cur, version_id, ModelStatus.PRODUCTION, reason)
        return self.get(version_id)

    def reject(self, version_id: int, reason: str) -> ModelVersion:
        """Mark a candidate/shadow version rejected."""
        version_id = self._vid("reject", version_id)
        return self.set_status(version_id, ModelStatus.REJECTED, self._reason("reject", reason))

    def rollback(self, model_type: ModelType | str, symbol: str | list[str] | None,
                 reason: str = "rollback") -> ModelVersion:
        """Retire the production version and restore the one in production before it."""
        where = "rollback"
        mt = parse_enum(ModelType, model_type, where, "model_type").value
        key = symbol_key(symbol, where=where)
        reason = self._reason(where, reason)
        with self._transaction() as cur:
            row = cur.execute("SELECT id FROM model_versions WHERE model_type = ? AND symbol = ? "
                              "AND status = 'production'", (mt, key)).fetchone()
            if row is None:
                raise ValueError(f"rollback: no production version of {mt}/{key}")
            current = row[0]
            prev = cur.execute(
                "SELECT h.version_id FROM model_status_history h JOIN model_versions v "
                "ON v.id = h.version_id WHERE v.model_type = ? AND v.symbol = ? AND "
                "h.to_status = 'production' AND v.status = 'retired' AND v.id != ? "
                "ORDER BY h.id DESC LIMIT 1", (mt, key, current)).fetchone()
            if prev is None:
                raise ValueError(f"rollback: {mt}/{key} has no earlier production version")
            self._set(cur, current, ModelStatus.RETIRED, f"{reason}: rolled back to {prev[0]}")
            self._set(cur, prev[0], ModelStatus.PRODUCTION, f"{reason}: restored")
        return self.get(prev[0])

    def record_job(self, job: TrainingJob, status: str, *, version_id: int | None = None,
                   error: str | None = None) -> None:
        """Insert or update a training job's row (status, params as run, result version)."""
        where = "record_job"
        if not isinstance(job, TrainingJob):
            raise type_error(where, "job", job, "a TrainingJob")
        job.validate(where, "job.")
        if not isinstance(status, str) or status not in JOB_STATUSES:
            raise value_error(where, "status", status, f"one of {JOB_STATUSES}")
        version_id = check_int(where, "version_id", version_id, lo=1, optional=True)
        check_str(where, "error", error, optional=True)
        params_json = to_json(job.training_params, "record_job: job.training_params")
        with self._transaction() as cur:
            if version_id is not None and cur.execute(
                    "SELECT 1 FROM model_versions WHERE id = ?", (version_id,)).fetchone() is None:
                raise value_error(where, "version_id", version_id,
                                  "None or the id of a registered version")
            cur.execute(
                "INSERT INTO training_jobs (job_id, model_type, symbol, trigger_reason, status, "
                "params_json, version_id, error, updated_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
                "params_json = excluded.params_json, version_id = excluded.version_id, "
                "error = excluded.error, updated_at_ns = excluded.updated_at_ns",
                (job.job_id, job.model_type.value, job.symbol_key, job.trigger_reason.value,
                 status, params_json, version_id, error, time.time_ns()))

    def get_job(self, job_id: str) -> dict[str, Any]:
        """A training job's row as a dict (``KeyError`` if unknown)."""
        check_str("get_job", "job_id", job_id)
        rows = self._query("SELECT job_id, model_type, symbol, trigger_reason, status, "
                           "params_json, version_id, error FROM training_jobs WHERE job_id = ?",
                           (job_id,))
        if not rows:
            raise KeyError(f"training job {job_id!r} is not recorded")
        r = rows[0]
        return {"job_id": r[0], "model_type": r[1], "symbol": r[2], "trigger_reason": r[3],
                "status": r[4], "training_params": json.loads(r[5]), "version_id": r[6],
                "error": r[7]}

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_path_for(self, version_id: int) -> Path:
        """Where ``save_checkpoint`` writes a version: one directory directly under
        ``checkpoint_dir`` named from the model type, symbol key (``safe_name``; a long
        multi-symbol key is cut and keyed by its digest) and version, so no symbol can place it
        elsewhere (``../x`` becomes ``.._x-<digest>``)."""
        v = self.get(self._vid("checkpoint_path_for", version_id))
        key = v.symbol.replace("*", "ALL").replace(",", "+")
        part = safe_name(key)
        if len(part) > _MAX_KEY_PART:
            digest = hashlib.sha256(v.symbol.encode()).hexdigest()[:16]
            part = f"{part[:_MAX_KEY_PART - 17]}-{digest}"
        name = f"{v.model_type.value}_{part}_v{v.version}"
        return confine(self.checkpoint_dir, name, f"model version {version_id} checkpoint")

    def _owner(self, version_id: int) -> dict[str, Any]:
        """Who a version's checkpoint folder belongs to (written as ``owner.json``)."""
        mt, sym, ver, at = self._query("SELECT model_type, symbol, version, created_at_ns FROM "
                                       "model_versions WHERE id = ?", (version_id,))[0]
        return {"database": self._owner_db, "version_id": version_id, "model_type": mt,
                "symbol": sym, "version": ver, "created_at_ns": at}

    @staticmethod
    def _read_owner(path: Path) -> Any:
        try:
            return json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return None

    def save_checkpoint(self, version_id: int, pytree: Any) -> str:
        """Save ``pytree`` with orbax under ``checkpoint_dir`` (``checkpoint_path_for``), its
        SHA-256 digest beside it (``digest.json``), its owner (``owner.json``), and record the
        path.

        A version's checkpoint is written once. A folder already at that path that is not this
        version's own (another registry's, or of a database that was replaced) is never
        overwritten: ``ValueError`` naming it. An unfinished save of this version (killed before
        the path was recorded) is redone."""
        import jax
        import orbax.checkpoint as ocp

        where = "save_checkpoint"
        version_id = self._vid(where, version_id)
        v = self.get(version_id)
        if self.read_only:
            raise ValueError(f"{self.path}: opened read-only (its directory is not writable); "
                             "cannot record a checkpoint. Copy the database to a writable "
                             "directory")
        if v.checkpoint_path is not None:
            raise ValueError(f"{where}: version_id = {version_id} already has a checkpoint at "
                             f"{v.checkpoint_path}; expected a version without one (a "
                             "version's checkpoint is written once: register a new version)")
        path = self.checkpoint_path_for(version_id)
        bad = first_non_finite(jax.tree.map(np.asarray, jax.device_get(pytree)))
        if bad is not None:
            raise ValueError(f"save_checkpoint: version {version_id}: params{bad}; expected "
                             "finite parameters")
        owner = self._owner(version_id)
        if path.exists() or path.is_symlink():
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                pass                                    # an empty folder: use it
            elif path.is_dir() and not path.is_symlink() and self._read_owner(path) == owner:
                shutil.rmtree(path)                     # this version's unfinished save
            else:
                sym = v.symbol if len(v.symbol) <= 40 else v.symbol[:37] + "..."
                raise ValueError(
                    f"{where}: version {version_id} ({v.model_type.value}/{sym} v{v.version}): "
                    f"{path} already exists and is not this version's "
                    "checkpoint (another registry sharing the checkpoint directory, or a "
                    "database that was replaced, wrote it); refusing to overwrite it. Expected "
                    "a new folder: move it away, or give this registry its own checkpoint_dir")
        path.mkdir(parents=True, exist_ok=True)
        (path / OWNER_FILE).write_text(json.dumps(owner))
        host = jax.device_get(pytree)
        with ocp.CheckpointManager(path) as mgr:
            saved = mgr.save(0, args=ocp.args.StandardSave(host))
            mgr.wait_until_finished()
            step = mgr.latest_step()
        if saved is False or step != 0:
            raise ValueError(f"{where}: version {version_id}: orbax did not write a checkpoint "
                             f"into {path}; expected a folder holding nothing else")
        (path / "digest.json").write_text(json.dumps({"sha256": tree_digest(host)}))
        with self._transaction() as cur:
            cur.execute("UPDATE model_versions SET checkpoint_path = ? WHERE id = ?",
                        (str(path), version_id))
        return str(path)

    def load_checkpoint(self, version_id: int, target: Any) -> Any:
        """Restore a version's checkpoint into a pytree shaped like ``target``; verified against
        its recorded digest (``ValueError`` "checkpoint ... at PATH is damaged" otherwise)."""
        import orbax.checkpoint as ocp

        version_id = self._vid("load_checkpoint", version_id)
        v = self.get(version_id)
        if v.checkpoint_path is None:
            raise ValueError(f"load_checkpoint: version {version_id} has no checkpoint")
        path = Path(v.checkpoint_path)
        try:
            with ocp.CheckpointManager(path) as mgr:
                step = mgr.latest_step()
                if step is None:
                    raise ValueError("no checkpoint step in it")
                restored = mgr.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # noqa: BLE001 - any orbax failure = a damaged checkpoint
            raise ValueError(f"load_checkpoint: checkpoint of version {version_id} at {path} is "
                             f"damaged ({type(e).__name__}: {str(e)[:200]})") from None
        digest_file = path / "digest.json"
        if digest_file.exists():
            try:
                want = json.loads(digest_file.read_text())["sha256"]
            except (ValueError, KeyError, TypeError):
                want = None
            if want != tree_digest(restored):
                raise ValueError(f"load_checkpoint: checkpoint of version {version_id} at {path} "
                                 f"is damaged (restored values do not match {digest_file})")
        return restored
