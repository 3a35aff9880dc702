"""Hydra configs compose and validate; a tiny tpfl-loop run produces every artefact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from tpfl_jax.app import CONFIG_DIR
from tpfl_jax.config import Config, to_objects

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
ROOT = Path(CONFIG_DIR).parent


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_converts(experiment):
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.experiment == experiment
    obj = to_objects(cfg)
    assert obj.ppo.num_updates >= 1 and obj.policy_names
    assert isinstance(obj.ppo.widths, tuple)


def test_paper_is_bigger_than_default():
    d, p = to_objects(_compose([])), to_objects(_compose(["experiment=paper"]))
    assert p.ppo.num_envs >= 1000 and p.num_seeds > d.num_seeds
    assert p.loop.deploy_envs >= 1000 and not p.loop.keep_trades


@pytest.mark.parametrize("group", ["env", "market", "ppo", "policy", "loop", "mesh"])
def test_every_group_option_composes(group):
    for f in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
        over = [f"{group}={f.stem}"] + (["market.path=x.csv"] if f.stem == "csv" else [])
        cfg = _compose(over)
        assert isinstance(cfg[group], type(cfg[group]))


def test_unknown_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException) as e:
        _compose(["loop.num_cycels=3"])
    assert "num_cycels" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails_naming_the_field():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        _compose(["ppo.num_envs=many"])
    assert "num_envs" in str(e.value.__cause__ or e.value)


def test_bad_values_fail_before_compile_naming_the_field():
    with pytest.raises(ValueError, match=r"policies\[0\].kind"):
        to_objects(_compose(["policy=seed_vs_fixed", "policy.policies.0.kind=magic"]))
    with pytest.raises(ValueError, match="config.loop"):
        to_objects(_compose(["loop.r_source=guess"]))
    with pytest.raises(ValueError, match="config.ppo"):
        to_objects(_compose(["ppo.num_minibatches=7"]))


def test_mesh_group_converts_to_a_frozen_mesh_config():
    import dataclasses

    from tpfl_jax.config import MeshSection, to_mesh_config
    from tpfl_jax.distributed import MeshConfig

    assert ([f.name for f in dataclasses.fields(MeshSection)]
            == [f.name for f in dataclasses.fields(MeshConfig)])     # the schemas cannot drift
    d = to_objects(_compose([])).mesh
    assert isinstance(d, MeshConfig) and d.shape == (-1,) and d.on_indivisible == "pad"
    m = to_mesh_config(_compose(["mesh=multihost", "mesh.shape=[-1,4]"]))
    assert m.shape == (-1, 4) and m.axis_names == ("hosts", "devices")
    assert m.batch_spec == (("hosts", "devices"),)
    with pytest.raises(ValueError, match=r"config.mesh.batch_spec"):
        to_mesh_config(_compose(["mesh.batch_spec=[null]"]))
    with pytest.raises(ValueError, match=r"config.mesh.batch_spec"):
        to_mesh_config(_compose(["mesh.batch_spec=[batch,batch]"]))
    with pytest.raises(ValueError, match=r"config.mesh: .*unknown mesh axis 'gpu'"):
        to_mesh_config(_compose(["mesh.batch_spec=[gpu]"]))


def test_clm_refuses_to_run_as_one_of_several_processes(monkeypatch, tmp_path):
    from tpfl_jax.app import run_clm

    monkeypatch.setenv("TPFL_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="tpfl-clm runs as one process"):
        run_clm(_compose(["experiment=tiny"]), tmp_path)
    assert not any(tmp_path.iterdir())            # refused before writing anything


def test_structured_schema_is_the_dataclass():
    from omegaconf import OmegaConf

    assert isinstance(OmegaConf.to_object(_compose([])), Config)


@pytest.mark.slow
def test_tiny_loop_end_to_end_produces_every_artefact(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tpfl_jax.app", "loop", "experiment=tiny",
         f"hydra.run.dir={out}", "progress=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config_resolved.yaml", "metrics.jsonl", "summary.csv", "cycles.csv",
                 "trades.parquet", "report.md", "policy_table.csv", "weight_trajectory.png",
                 "policy_metrics.png", "learning_curves.png", "timing.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "checkpoints" / "final").is_dir()
    # the compilation cache is user-level (here the session's tmp dir), not in the run dir
    import os

    from tpfl_jax.validate import COMPILE_CACHE_ENV

    assert any(Path(os.environ[COMPILE_CACHE_ENV]).iterdir())
    assert not (out / ".jax_cache").exists()
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 2   # policies x seeds x cycles
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["policy"]) == {"fixed_1.0", "seed_table", "ema"}
    trades = pd.read_parquet(out / "trades.parquet")
    assert len(trades) == sum(r["stats_total_attempts"] for r in rows)
    report = (out / "report.md").read_text()
    assert "fixed_1.0" in report and "±" in report and "weight_trajectory.png" in report
    assert "plots and report" in proc.stdout and "seed_table" in proc.stdout

    # tpfl-report on the run dir rebuilds the table
    from tpfl_jax.report import report_dir

    table, _ = report_dir(out)
    assert list(table["final_pnl"]) == sorted(table["final_pnl"], reverse=True)
