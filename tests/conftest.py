"""Test-session settings and shared runs: one JAX compilation cache for the pytest process and
the apps it runs, in a temporary directory (never the user's ``~/.cache/tpfl_jax/jax``); the
one tiny ``tpfl-loop`` run (``experiment=tiny``, one process) is made once per session and read
by every test that needs it (the end-to-end artefact checks and the multi-host comparison)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from tpfl_jax.rundir import COMPILE_CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]
TINY_LOOP = [sys.executable, "-m", "tpfl_jax.app", "loop", "experiment=tiny", "progress=false"]


# One JAX persistent compilation cache for the session, in a temporary directory (never the
# user's): the pytest process uses it from the first compile (a program compiled again, e.g. by
# a new Runner or a rebuilt closure, is read back instead of recompiled), and the apps run as
# subprocesses get it through TPFL_COMPILE_CACHE_DIR.
_CACHE_DIR = tempfile.mkdtemp(prefix="tpfl_test_jax_cache_")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_in_tmp():
    old = os.environ.get(COMPILE_CACHE_ENV)
    os.environ[COMPILE_CACHE_ENV] = _CACHE_DIR
    yield
    if old is None:
        os.environ.pop(COMPILE_CACHE_ENV, None)
    else:
        os.environ[COMPILE_CACHE_ENV] = old
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_loop(tmp_path_factory, _compile_cache_in_tmp):
    """``(run dir, completed process)`` of one ``tpfl-loop experiment=tiny`` subprocess."""
    out = tmp_path_factory.mktemp("tiny_loop") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPFL_", "SLURM_"))
           or k == "TPFL_COMPILE_CACHE_DIR"}
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([*TINY_LOOP, f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
