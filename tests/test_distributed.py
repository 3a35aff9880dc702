"""tpfl_jax.distributed: mesh config, padding, multi-host init, and sharded PPO on 8 CPU devices.

The sharded checks need 8 host devices, which XLA only creates when
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` is set before JAX initialises, so they
run in one subprocess (``tests/distributed_checks.py``) whose JSON results the tests read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax import distributed as D

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed_checks.py")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- 8 devices
def test_sharded_outputs_live_on_8_devices(sharded):
    assert sharded["device_count"] == 8
    for key in ("sharded", "params_sharded"):
        assert sharded[key] == {"n_devices": 8, "spec": "P('batch',)", "shard_rows": [1]}
    assert sharded["ref_devices"] == 1


def test_sharded_equals_unsharded(sharded):
    assert sharded["shape"] == [2, 4, 2]          # [seeds, weights, num_updates]
    assert sharded["nan_pattern_equal"]
    assert sharded["max_rel_diff"] < 1e-5         # float32 rounding only
    assert sharded["weights_differ"]              # the weight reaches the reward


def test_indivisible_batch_is_a_clear_error(sharded):
    msg = sharded["indivisible_error"]
    assert msg is not None and "3 configurations" in msg and "size 8" in msg
    assert "on_indivisible='pad'" in msg
    assert "size 6" in sharded["two_axis_error"] and "('weight',)" in sharded["two_axis_error"]


def test_pad_option_runs_and_unpads(sharded):
    assert sharded["pad_shape"] == [1, 3, 2]
    assert sharded["pad_max_abs_diff"] < 1e-5
    assert sharded["vmap_pad_equal"]


def test_two_named_batch_axes(sharded):
    assert sharded["two_axis"] == {"n_devices": 8, "shard_shape": [2, 2, 3]}


# --------------------------------------------------------------------------- in process
def test_mesh_config_validation():
    with pytest.raises(ValueError, match="axis_names"):
        D.MeshConfig(shape=(2, 2), axis_names=("a",))
    with pytest.raises(ValueError, match="unknown mesh axis 'x'"):
        D.MeshConfig(batch_spec=("x",))
    with pytest.raises(ValueError, match="at most one -1"):
        D.MeshConfig(shape=(-1, -1), axis_names=("a", "b"), batch_spec=("a",))
    with pytest.raises(ValueError, match="on_indivisible"):
        D.MeshConfig(on_indivisible="drop")
    cfg = D.MeshConfig.from_dict({"shape": [1, -1], "axis_names": ["host", "dev"],
                                  "batch_spec": [["host", "dev"]]})
    assert cfg.batch_spec == (("host", "dev"),)
    hash(cfg)


def test_make_mesh_single_device_and_too_large():
    mesh = D.make_mesh(D.MeshConfig())
    assert dict(mesh.shape) == {"batch": jax.device_count()}
    n = jax.device_count()
    with pytest.raises(ValueError, match=f"needs {n + 1} devices"):
        D.make_mesh(D.MeshConfig(shape=(n + 1,)))


def test_sharded_vmap_on_one_device_matches_jit_vmap():
    mesh = D.make_mesh(D.MeshConfig(shape=(1,)))
    f = lambda x, c: jnp.sin(x) * c  # noqa: E731
    x = jnp.arange(6.0).reshape(3, 2)
    got = D.sharded_vmap(f, mesh, in_axes=(0, None))(x, 2.0)
    np.testing.assert_array_equal(got, jax.jit(jax.vmap(f, (0, None)))(x, 2.0))


def test_pad_and_unpad_roundtrip():
    tree = {"a": jnp.arange(5.0), "b": jnp.ones((5, 2))}
    padded, n = D.pad_batch(tree, 4)
    assert n == 5 and padded["a"].shape == (8,) and padded["b"].shape == (8, 2)
    np.testing.assert_array_equal(padded["a"][5:], [4.0, 4.0, 4.0])
    back = D.unpad_batch(padded, n)
    np.testing.assert_array_equal(back["a"], tree["a"])
    with pytest.raises(ValueError, match="disagree"):
        D.pad_batch({"a": jnp.zeros(3), "b": jnp.zeros(4)}, 2)


def test_init_distributed_single_process_is_noop(monkeypatch):
    for var in (D.ENV_COORDINATOR, D.ENV_NUM_PROCESSES, D.ENV_PROCESS_ID, "SLURM_STEP_NUM_TASKS",
                "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert D.init_distributed(D.MeshConfig()) is False
    monkeypatch.setenv(D.ENV_NUM_PROCESSES, "1")
    assert D.init_distributed() is False


def test_init_distributed_reports_missing_settings(monkeypatch):
    monkeypatch.delenv(D.ENV_COORDINATOR, raising=False)
    monkeypatch.delenv(D.ENV_PROCESS_ID, raising=False)
    monkeypatch.setenv(D.ENV_NUM_PROCESSES, "4")
    with pytest.raises(ValueError, match="coordinator_address"):
        D.init_distributed()
    monkeypatch.setenv(D.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="TPFL_NUM_PROCESSES"):
        D.init_distributed()
    with pytest.raises(ValueError, match="process_id"):
        D.init_distributed(D.MeshConfig(num_processes=2, process_id=5,
                                        coordinator_address="10.0.0.1:1234"))


def test_cluster_detection_needs_a_multi_task_step(monkeypatch):
    for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")          # sbatch allocation, no srun step: 1 process
    assert not D.cluster_says_multi()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert not D.cluster_says_multi()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert D.cluster_says_multi()
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert D.cluster_says_multi()


def test_is_multi_process_reads_config_env_and_cluster(monkeypatch):
    for var in (D.ENV_NUM_PROCESSES, "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert D.requested_processes() is None and not D.is_multi_process()
    assert D.is_multi_process(D.MeshConfig(num_processes=2))
    monkeypatch.setenv(D.ENV_NUM_PROCESSES, "3")
    assert D.requested_processes() == 3 and D.is_multi_process()
    assert D.requested_processes(D.MeshConfig(num_processes=1)) == 1    # config wins
    monkeypatch.setenv(D.ENV_NUM_PROCESSES, "1")
    assert not D.is_multi_process()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    assert D.is_multi_process()


def test_importing_the_apps_leaves_the_backend_uninitialised():
    # jax.distributed.initialize() must run before the XLA backend starts; the Hydra apps call it
    # after composing the config, so importing them (config schema included) must not start it.
    code = ("import jax._src.xla_bridge as xb, tpfl_jax.app, tpfl_jax.distributed; "
            "print(xb.backends_are_initialized())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_programs_compile_with_cpu_options_and_the_defaults_switch(monkeypatch):
    """On CPU tpfl_jax's programs compile at LLVM level 2; ``TPFL_XLA_DEFAULTS=1`` restores
    XLA's defaults; either way a program computes the same."""
    monkeypatch.delenv("TPFL_XLA_DEFAULTS", raising=False)
    assert D.compiler_options() == D.CPU_COMPILER_OPTIONS == {"xla_backend_optimization_level": 2}
    x = jnp.arange(10.0)
    fast = D.jit(lambda v: jnp.sin(v).sum())(x)
    monkeypatch.setenv("TPFL_XLA_DEFAULTS", "1")
    assert D.compiler_options() is None
    np.testing.assert_allclose(D.jit(lambda v: jnp.sin(v).sum())(x), fast, rtol=1e-6)
