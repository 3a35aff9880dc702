"""Steps every pipeline shares: JAX set-up, the user-input boundary, final checkpoints, and the
run plan a ``--dry-run`` prints."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from tpfl_jax.config import Config
from tpfl_jax.errors import UserError


@contextlib.contextmanager
def user_inputs() -> Iterator[None]:
    """Around code that only checks and prepares what the user gave (config, files, data):
    its ``ValueError`` / ``OSError`` is a user error (one CLI line), not a bug."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from e


def quiet_jax_logs() -> None:
    """Drop jax's INFO lines about absent backends ("Unable to initialize backend 'tpu'")
    from every user's log; warnings and errors still show."""
    for name in ("jax._src.xla_bridge", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_jax(cache_dir: Path | None) -> None:
    """Enable the persistent compilation cache in ``cache_dir`` (None: leave it off). The
    cache is optional: a directory that cannot be created or written is reported in one
    warning line and the run goes on without it."""
    quiet_jax_logs()
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        print(f"warning: compile cache {cache_dir} is not writable ({e.strerror}); running "
              "without it (set compile_cache_dir or TPFL_COMPILE_CACHE_DIR)", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def checkpointer() -> ocp.StandardCheckpointer:
    """Orbax checkpointer for host arrays written by process 0 alone (multi-host: the others
    take no part, so orbax must not wait for them at its barriers)."""
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=0, active_processes={0}))


def save_final(out: Path, tree: Any) -> None:
    """The final networks as an orbax checkpoint ``checkpoints/final``, written under a temporary
    name and renamed (a stale one of an unfinished earlier attempt of this run is replaced)."""
    final = (out / "checkpoints" / "final").absolute()
    tmp = final.with_name(f".final.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt = checkpointer()
    try:
        ckpt.save(tmp, tree)
        ckpt.wait_until_finished()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{final}: cannot write the checkpoint ({e.strerror or e})") from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@dataclass(frozen=True)
class RunPlan:
    """What a command would run (``--dry-run``): the lines to print, and the one-line error of
    the first check that refused it (None: every check passed)."""

    command: str
    lines: tuple[str, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def market_line(c: Config, spec: Any, source: Any, window: int) -> str:
    """The market and data source of a run, for a run plan."""
    m = c.market
    if m.source == "synthetic":
        data = ("fresh paths every PPO update" if m.fresh
                else f"{m.train_paths} fixed training paths per cycle")
        return (f"market: synthetic {m.kind}, {data}; {m.deploy_paths} held-out paths of "
                f"{m.n_bars} bars per cycle")
    bars = spec.distinct_train_bars(source, window)
    where = m.path if m.source == "csv" else (m.directory or f"{len(m.files)} files")
    return (f"market: {m.source} {where}, walk-forward {m.train_bars} training / "
            f"{m.deploy_bars} deploy bars per window, training source "
            f"{getattr(m, 'train_source', 'replay')}"
            + (f", {bars:.0f} distinct training bars per cycle" if bars else ""))
