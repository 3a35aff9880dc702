"""A run directory is owned: one writer, one identity, files that are whole or absent.

* :class:`RunDir` takes an exclusive lock (``flock`` on ``.tpfl.lock``, holding the owner's
  pid, host, command and start time): a second run into a busy directory is refused naming the
  holder. The lock dies with its process, so a killed run never leaves the directory locked.
* ``run.json`` records the command, the config identity (:func:`config_identity`), the
  overrides and the status (``running`` / ``failed`` / ``complete``). A directory written by
  another command or another config is refused naming what differs (except a *failed* run of
  the same command: a corrected config takes the directory over and the failed run's files move
  to ``.replaced-<time>/``, so nothing is lost or mixed); a complete run of the same command
  and config is not recomputed (:class:`AlreadyComplete`); a killed or failed one is resumed
  (``tpfl-train`` from its checkpoints) or recomputed from the start (``tpfl-loop``), its stale
  outputs replaced.
* :func:`atomic` writes a file under a temporary name and renames it into place, so no reader
  ever sees half a file; an OS error (a full disk, no permission) names the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tpfl_jax.errors import UserError, os_error

COMPILE_CACHE_ENV = "TPFL_COMPILE_CACHE_DIR"
SWEEP_MANIFEST = "sweep.json"    # in a checked sweep's dir: every job with its overrides
# keys that do not change what a run computes (excluded from its identity)
NON_IDENTITY_KEYS = ("progress", "compile_cache", "compile_cache_dir", "guard", "mesh")
# settings added after run dirs were written, at the value that computes what those runs did:
# left out of the identity (``config_identity``'s sections; the runner's ``env_static``) so
# those runs still resume and stay complete
ADDED_AT_OLD_BEHAVIOUR = {("ppo", "anneal_ent"): False, ("env_static", "features"): "base"}

LOCK = ".tpfl.lock"
RECORD = "run.json"


class AlreadyComplete(Exception):
    """The run directory holds a complete run of this command and config."""


class RunDir:
    """Ownership of one run directory for one command (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], command: str, identity: dict[str, Any],
                 overrides: list[str] | None = None):
        self.path = Path(path)
        self.command = command
        self.identity = identity
        self.hash = identity_hash(identity)
        self.overrides = list(overrides or [])
        self._fd: int | None = None

    # ------------------------------------------------------------------ lock
    def acquire(self) -> RunDir:
        """Lock the directory (refused when another live process holds it), then check the
        record: another command or config is refused, a complete run raises
        :class:`AlreadyComplete`, anything else is (re)started as ``running``."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.path}: cannot use as a run directory ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path} is in use by {holder}; wait for it to finish or use "
                            "another output directory (hydra.run.dir=...)") from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "command": self.command,
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        try:
            self._check_record()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDir:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------------ record
    def record(self) -> dict[str, Any] | None:
        """``run.json`` of the directory (None when absent)."""
        f = self.path / RECORD
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text())
        except (ValueError, OSError) as e:
            raise UserError(f"{f}: unreadable ({e}); cannot tell which run the directory "
                            "holds; use another output directory (hydra.run.dir=...)") from None

    def _check_record(self) -> None:
        old = self.record()
        if old is None:
            others = [p.name for p in self.path.iterdir()       # Hydra's job log is no run
                      if not p.name.startswith(".") and p.suffix != ".log"]
            if others:
                raise UserError(f"{self.path} holds files of another run or program "
                                f"({', '.join(sorted(others)[:5])}); use an empty or new "
                                "output directory (hydra.run.dir=...)")
        else:
            if old.get("command") != self.command:
                raise UserError(f"{self.path} holds a {old.get('command')} run; a "
                                f"{self.command} run into it would replace its files; use "
                                "another output directory (hydra.run.dir=...)")
            if old.get("identity_sha256") != self.hash and old.get("status") == "failed":
                self._set_aside(old)
            elif old.get("identity_sha256") != self.hash:
                raise UserError(f"{self.path} holds a run of another config "
                                f"({identity_diff(old.get('identity', {}), self.identity)}); "
                                "resuming it would mix two runs; use another output directory "
                                "(hydra.run.dir=...) or the same config")
            if old.get("status") == "complete":
                raise AlreadyComplete(f"{self.path}: this {self.command} run is complete "
                                      f"({old.get('finished', '')}); nothing to do (use another "
                                      "hydra.run.dir to run it again)")
        self._write("running")

    def _set_aside(self, old: dict[str, Any]) -> None:
        """A failed run of another config gives way to this one: its files move to
        ``.replaced-<time>/`` in the directory (nothing recorded is lost or mixed)."""
        import shutil

        dest = self.path / f".replaced-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        dest.mkdir()
        for p in list(self.path.iterdir()):
            if p.name != LOCK and not p.name.startswith(".replaced-") and p.suffix != ".log":
                shutil.move(str(p), str(dest / p.name))
        diff = identity_diff(old.get("identity", {}), self.identity)
        print(f"{self.path}: the failed run of another config ({diff}; "
              f"{old.get('error', 'no error recorded')}) was moved to {dest.name}/", flush=True)

    def _write(self, status: str, **extra: Any) -> None:
        rec = {"command": self.command, "status": status, "identity_sha256": self.hash,
               "identity": self.identity, "overrides": self.overrides, **extra}
        if status != "running":
            rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        with atomic(self.path / RECORD) as tmp:
            tmp.write_text(json.dumps(rec, indent=1, default=str))

    def complete(self) -> None:
        """Mark the run complete (its outputs are all written)."""
        self._write("complete")

    def failed(self, error: str) -> None:
        """Mark the run failed with its error line (a rerun of the same config recomputes)."""
        with contextlib.suppress(OSError, UserError):
            self._write("failed", error=error[:2000])


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``run.json`` of a run directory, None when absent or unreadable."""
    f = Path(path) / RECORD
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def atomic(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``. An OS error
    while writing removes the temporary file and raises ``errors.os_error`` naming ``path``
    (a full disk: ``SystemFault``, exit 1; no permission: ``UserError``, exit 2)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise os_error(path, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """``text`` into ``path`` atomically."""
    with atomic(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_frame(df: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """A DataFrame into ``path`` atomically (CSV, JSON lines or parquet by suffix)."""
    path = Path(path)
    with atomic(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, **kwargs)
        elif path.suffix == ".jsonl":
            df.to_json(tmp, orient="records", lines=True, **kwargs)
        else:
            df.to_csv(tmp, index=False, **kwargs)
    return path


def save_figure(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """A matplotlib figure into ``path`` atomically (the format from ``path``'s suffix)."""
    path = Path(path)
    with atomic(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


# --------------------------------------------------------------------------- paths
_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-=@")


def safe_name(name: str) -> str:
    """``name`` as one path component: characters outside ``[A-Za-z0-9._+-=@]`` become ``_``
    and, when anything changed, an 8-hex digest of ``name`` is appended (distinct names stay
    distinct). Never ``''``, ``'.'`` or ``'..'``; never starts with ``.``."""
    s = "".join(ch if ch in _SAFE else "_" for ch in str(name))
    if s != name or not s or s.startswith("."):
        s = f"{s.lstrip('.') or 'x'}-{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"
    return s


def confine(base: str | os.PathLike[str], path: str | os.PathLike[str], what: str) -> Path:
    """``base / path`` resolved; ``ValueError`` naming ``what`` when it leaves ``base``."""
    b = Path(base).resolve()
    p = (b / Path(path)).resolve()
    if p != b and b not in p.parents:
        raise UserError(f"{what} = {os.fspath(path)!r} resolves to {p}, outside {b}; "
                         "expected a path inside it")
    return p


# --------------------------------------------------------------------------- compile cache
def compile_cache_dir(configured: str | None = None) -> Path:
    """The user-level JAX compilation cache: ``configured`` (config ``compile_cache_dir``),
    else ``$TPFL_COMPILE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tpfl_jax/jax``, else
    ``$HOME/.cache/tpfl_jax/jax``; without a usable ``HOME`` (unset, empty, relative or ``/``)
    ``<temp dir>/tpfl_jax-<uid>/jax``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get(COMPILE_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / "tpfl_jax" / "jax"
    home = os.environ.get("HOME", "")
    if home and Path(home).is_absolute() and Path(home) != Path("/"):
        return Path(home) / ".cache" / "tpfl_jax" / "jax"
    return Path(tempfile.gettempdir()) / f"tpfl_jax-{os.getuid()}" / "jax"


# --------------------------------------------------------------------------- run identity
def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_identity(cfg: Any) -> dict[str, Any]:
    """The identity of a run: its resolved config without ``NON_IDENTITY_KEYS``."""
    if isinstance(cfg, DictConfig):
        d = OmegaConf.to_container(cfg, resolve=True)
    elif dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        d = dict(cfg)
    out = {k: v for k, v in d.items() if k not in NON_IDENTITY_KEYS}
    for (section, key), value in ADDED_AT_OLD_BEHAVIOUR.items():
        if isinstance(out.get(section), dict) and out[section].get(key, value) == value:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def identity_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 of an identity mapping (canonical JSON)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> str:
    """``key: old -> new`` for the keys that differ (at most ``limit``)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    parts = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"... {len(keys) - limit} more")
    return "; ".join(parts) or "(no visible difference)"


__all__ = ["ADDED_AT_OLD_BEHAVIOUR", "COMPILE_CACHE_ENV", "LOCK", "NON_IDENTITY_KEYS", "RECORD",
           "AlreadyComplete", "RunDir", "atomic", "compile_cache_dir", "confine", "config_identity",
           "identity_diff", "identity_hash", "read_record", "safe_name", "SWEEP_MANIFEST",
           "save_figure", "write_frame", "write_text"]
