"""A run directory is owned: one writer, one identity, files that are whole or absent.

* :class:`RunDir` takes an exclusive lock (``flock`` on ``.tpfl.lock``, holding the owner's
  pid, host, command and start time): a second run into a busy directory is refused naming the
  holder. The lock dies with its process, so a killed run never leaves the directory locked.
* ``run.json`` records the command, the config identity (``validate.config_identity``), the
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
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tpfl_jax.errors import UserError

LOCK = ".tpfl.lock"
RECORD = "run.json"


class AlreadyComplete(Exception):
    """The run directory holds a complete run of this command and config."""


class RunDir:
    """Ownership of one run directory for one command (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], command: str, identity: dict[str, Any],
                 overrides: list[str] | None = None):
        from tpfl_jax.validate import identity_hash

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
        from tpfl_jax.validate import identity_diff

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

        from tpfl_jax.validate import identity_diff

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
    while writing (a full disk, no permission) removes the temporary file and raises
    :class:`~tpfl_jax.errors.UserError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
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


__all__ = ["LOCK", "RECORD", "AlreadyComplete", "RunDir", "atomic", "read_record",
           "save_figure", "write_frame", "write_text"]
