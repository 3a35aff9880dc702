"""Test-session settings and shared runs: the JAX compilation cache of the apps goes to a
temporary directory (never the user's ``~/.cache/tpfl_jax/jax``); the one tiny ``tpfl-loop`` run
(``experiment=tiny``, one process) is made once per session and read by every test that needs
it (the end-to-end artefact checks and the multi-host comparison)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpfl_jax.validate import COMPILE_CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]
TINY_LOOP = [sys.executable, "-m", "tpfl_jax.app", "loop", "experiment=tiny", "progress=false"]


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_in_tmp(tmp_path_factory):
    old = os.environ.get(COMPILE_CACHE_ENV)
    os.environ[COMPILE_CACHE_ENV] = str(tmp_path_factory.mktemp("jax_cache"))
    yield
    if old is None:
        os.environ.pop(COMPILE_CACHE_ENV, None)
    else:
        os.environ[COMPILE_CACHE_ENV] = old


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
