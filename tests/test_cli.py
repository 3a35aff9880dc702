"""User errors at the command line: one line ``tpfl-<cmd>: error: ...``, exit status 2, no
traceback (``--debug`` keeps it); a complete run is not recomputed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpfl_jax.app", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("overrides,field", [
    (["ppo.num_envs=0"], "config.ppo.num_envs = 0"),
    (["stats.n_boot=0"], "config.stats.n_boot = 0"),
    (["stats.level=2"], "config.stats.level = 2"),
    (["stats.primary_metric=nope"], "config.stats.primary_metric = 'nope'"),
    (["stats.secondary_metrics=[nope]"], "config.stats.secondary_metrics[0] = 'nope'"),
    (["stats.control_weights=[]"], "config.stats.control_weights = []"),
    (["audit.weights=[]"], "config.audit.weights = []"),
    (["logger.kind=foo"], "config.logger.kind = 'foo'"),
    (["env.tp_mults=[3.0,1.0,2.0,0.5,1.5]"], "strictly increasing TP distances"),
    (["env.position_size=1e30"], "config.env.position_size = 1e+30"),
    (["env.initial_equity=1e30"], "config.env.initial_equity = 1e+30"),
])
def test_every_key_is_checked_before_anything_compiles(overrides, field):
    """Each bad value is a ``UserError`` naming the key (what the CLI prints as one line)."""
    from hydra import compose, initialize_config_dir

    from tpfl_jax.app import CONFIG_DIR
    from tpfl_jax.config import to_objects
    from tpfl_jax.errors import UserError

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(UserError) as e:
        to_objects(cfg)
    assert field in str(e.value)


@pytest.mark.parametrize("args,field", [
    (["loop", "stats.n_boot=0"], "config.stats.n_boot = 0"),               # our checks
    (["loop", "ppo.widths=[100000,100000]"], "network_and_optimizer"),     # memory estimate
    (["loop", "ppo.num_envsx=3"], "num_envsx"),                            # Hydra: unknown key
    (["loop", "loop.num_seeds=two"], "num_seeds"),                         # Hydra: wrong type
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, field):
    proc = _run(*args, f"hydra.run.dir={tmp_path / 'run'}", "progress=false")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"tpfl-{args[0]}: error: ") and field in lines[0]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr


def test_the_console_script_is_one_line_too(tmp_path):
    """The installed entry point (a subprocess): the same one line and status 2."""
    proc = _run("train", "ppo.num_envs=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("tpfl-train: error: config.ppo.num_envs = 0")


def test_debug_keeps_the_traceback(tmp_path):
    proc = _run("train", "ppo.num_envs=0", "--debug", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_report_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from tpfl_jax.app import report_main; "
                           f"report_main([{str(tmp_path / 'nope')!r}])"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ,
                                                               "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("tpfl-report: error: ") and "not a directory" in proc.stderr
