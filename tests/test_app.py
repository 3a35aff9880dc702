"""Hydra configs compose and validate; a tiny tpfl-loop run produces every artefact."""

from __future__ import annotations

import dataclasses
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


def test_default_observation_is_vol_normalised_and_recorded_runs_keep_theirs():
    """Every run sees the volatility level through normalised observations (the recipe chosen on
    validation paths); the experiments whose results were recorded before keep ``base``."""
    for exp in ("default", "study", "agent", "study_gpu", "paper"):
        o = to_objects(_compose([f"experiment={exp}"]))
        assert (o.env.features, o.ppo.normalize_obs) == ("vol", True), exp
    for exp in ("real", "horizon"):
        o = to_objects(_compose([f"experiment={exp}"]))
        assert (o.env.features, o.ppo.normalize_obs) == ("base", False), exp
    for ppo in sorted(p.stem for p in (Path(CONFIG_DIR) / "ppo").glob("*.yaml")):
        assert to_objects(_compose([f"ppo={ppo}"])).ppo.normalize_obs, ppo


def test_paper_is_bigger_than_default():
    d, p = to_objects(_compose([])), to_objects(_compose(["experiment=paper"]))
    assert p.ppo.num_envs >= 1000 and p.num_seeds > d.num_seeds
    assert p.loop.deploy_envs >= 1000 and not p.loop.keep_trades


@pytest.mark.parametrize("group", ["env", "market", "ppo", "policy", "loop", "mesh", "logger"])
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


def test_control_arms_are_in_every_policy_set():
    d = to_objects(_compose([]))
    assert d.control_names == ("fixed_1.0", "fixed_0.0")
    for f in sorted((Path(CONFIG_DIR) / "policy").glob("*.yaml")):
        cfg = _compose([f"policy={f.stem}"])
        fixed = {float(p.initial_weight) for p in cfg.policy.policies if p.kind == "fixed"}
        assert {0.0, 1.0} <= fixed, f.stem                 # declared, not only auto-added
    for e in EXPERIMENTS:
        o = to_objects(_compose([f"experiment={e}"]))
        assert {"fixed_1.0", "fixed_0.0"} <= set(o.policy_names), e


def test_missing_control_arms_are_added_with_a_log_line(caplog):
    over = ["policy=seed_vs_fixed", "policy.policies=[{name: st, kind: seed_table}]"]
    with caplog.at_level("WARNING", logger="tpfl_jax.config"):
        o = to_objects(_compose(over))
    assert o.policy_names == ("st", "fixed_1.0", "fixed_0.0")
    assert o.control_names == ("fixed_1.0", "fixed_0.0")
    assert "added the control arm fixed_0.0" in caplog.text
    # a control under another name is found by kind and weight, not added
    o = to_objects(_compose(["policy.policies=[{name: base, kind: fixed, initial_weight: 1.0},"
                             "{name: off, kind: fixed, initial_weight: 0.0}]"]))
    assert o.control_names == ("base", "off") and len(o.policy_names) == 2
    with pytest.raises(ValueError, match="'fixed_0.0' is taken"):
        to_objects(_compose(["policy.policies=[{name: fixed_0.0, kind: ema}]"]))


def test_history_is_a_loop_default_with_per_policy_overrides():
    o = to_objects(_compose(["loop.history=cumulative"]))
    hist = dict(zip(o.policy_names, o.policy_histories, strict=True))
    assert hist.pop("bandit") == "cycle"              # the bandit's own history: per cycle
    assert set(hist.values()) == {"cumulative"}
    o = to_objects(_compose(["policy=seed_vs_fixed", "+policy.policies.2.history=window"]))
    assert o.policy_histories == ("cycle", "cycle", "window")
    with pytest.raises(ValueError, match="config.loop.history"):
        to_objects(_compose(["loop.history=decayed"]))
    with pytest.raises(ValueError, match="config.loop"):
        to_objects(_compose(["loop.feedback_mode=mode"]))


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
def test_tiny_loop_end_to_end_produces_every_artefact(tmp_path, tiny_loop):
    import hashlib
    import os

    out, proc = tiny_loop
    for name in ("config_resolved.yaml", "metrics.jsonl", "summary.csv", "cycles.csv",
                 "curves.csv", "references.csv", "levels.csv", "trades.parquet", "report.md",
                 "weight_trajectory.png", "levels.png", "learning_curves.png", "timing.json",
                 "paired.csv", "training.csv", "paired_primary.png", "audit_table.csv",
                 "audit_summary.json", "audit_reward_pnl.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "checkpoints" / "final").is_dir()
    # the compilation cache is user-level (here the session's tmp dir), not in the run dir
    from tpfl_jax.rundir import COMPILE_CACHE_ENV

    assert any(Path(os.environ[COMPILE_CACHE_ENV]).iterdir())
    assert not (out / ".jax_cache").exists()
    # reference rules: chosen on training data, on the arms' deploy episodes, every cycle
    refs = pd.read_csv(out / "references.csv")
    assert set(refs["rule"]) == {"flat", "buy_and_hold", "trend", "oracle", "bayes"}
    assert len(refs) == 5 * 2 * 2 and (refs[refs.rule == "flat"].deploy_pnl == 0).all()
    assert refs[refs.rule == "trend"]["chosen"].str.startswith("trend_lb").all()
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 2 * 2   # policies x seeds x cycles
    assert {"deploy_greedy_pnl", "deploy_sampled_pnl", "train_updates", "train_converged",
            "train_final_entropy", "train_entropy_max", "stats_no_edge_hit_rate",
            "train_repetition"} <= set(rows[0])
    assert all(r["train_repetition"] == 1.0 for r in rows)     # fresh paths: none reused
    curves = pd.read_csv(out / "curves.csv")
    assert {"greedy_pnl", "sampled_pnl", "env_steps"} <= set(curves.columns) and len(curves)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["policy"]) == {"fixed_0.0", "fixed_1.0", "seed_table", "ema"}
    paired = pd.read_csv(out / "paired.csv")
    prim = paired[paired["metric"] == "oos_pnl"]
    assert set(prim["control"]) == {"fixed_1.0", "fixed_0.0"} and len(prim) == 2 * 3
    # the paired differences are the per-seed differences of summary.csv
    wide = summary.pivot(index="seed", columns="policy", values="oos_pnl")
    r = prim.set_index(["control", "arm"]).loc[("fixed_1.0", "fixed_0.0")]
    assert r["mean_diff"] == pytest.approx((wide["fixed_0.0"] - wide["fixed_1.0"]).mean())
    trades = pd.read_parquet(out / "trades.parquet")
    assert len(trades) == round(sum(r["deploy_trades"] for r in rows) * 8)   # 8 deploy envs
    # every deploy episode of every arm and rule; they aggregate to cycles / references
    eps = pd.read_parquet(out / "episodes.parquet")
    arms = eps[(eps.kind == "policy") & (eps["mode"] == "greedy")]
    by = arms.groupby(["arm", "seed", "cycle"])["pnl"].mean()
    cyc = pd.read_csv(out / "cycles.csv").set_index(["policy", "seed", "cycle"])
    assert by.to_numpy() == pytest.approx(cyc.loc[by.index, "deploy_greedy_pnl"].to_numpy(),
                                          abs=1e-3)
    ref = eps[eps.kind == "reference"].groupby(["arm", "seed", "cycle"])["pnl"].mean()
    assert ref.to_numpy() == pytest.approx(refs.set_index(["rule", "seed", "cycle"]).loc[
        ref.index, "deploy_pnl"].to_numpy(), abs=1e-3)
    # each deploy episode its own path (8 episodes on 4 deploy paths: each path twice)
    assert (arms.groupby(["arm", "seed", "cycle"])["path"].apply(
        lambda p: sorted(p.value_counts()) == [2, 2, 2, 2])).all()
    # the report answers first, and its answer is summary.csv's
    report = (out / "report.md").read_text()
    assert report.index("## Answer") < report.index("## Levels") < report.index(
        "## Paired differences")
    from tpfl_jax import results as R

    answer = R.answer(summary, prim, R.reference_summary(refs), ["fixed_1.0", "fixed_0.0"])
    assert "## Answer\n\n" + "\n".join(answer) in report
    # 2 seeds: Holm over all pairs cannot name a best arm (no best by point estimate)
    assert answer[0].startswith("No arm is distinguishable as best") and "Best arm" not in report
    assert "PnL in currency per 40-step episode on 10,000 starting equity" in report
    assert "| greedy_pnl |" not in report and "Bootstrap intervals omitted: n = 2" in report
    assert "References on the same episodes" in report and "simultaneous" in report
    assert "## Reward audit" in report and "learning_curves.png" in report
    assert "## Answer" in proc.stdout and "seed_table" in proc.stdout

    # the run dir is owned: the same run again is a no-op; another command is refused
    again = subprocess.run(
        [sys.executable, "-m", "tpfl_jax.app", "loop", "experiment=tiny",
         f"hydra.run.dir={out}", "progress=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]
    other = subprocess.run(
        [sys.executable, "-m", "tpfl_jax.app", "train", "experiment=tiny",
         f"hydra.run.dir={out}", "progress=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert other.returncode == 2 and "holds a loop run" in other.stderr
    assert (out / "report.md").read_text() == report and json.loads(
        (out / "run.json").read_text())["status"] == "complete"

    # tpfl-report on the run dir writes its own files, never the run's report.md
    from tpfl_jax.report import COLLECTED_REPORT, report_dir

    digest = hashlib.sha256((out / "report.md").read_bytes()).hexdigest()
    table, path = report_dir(out)
    assert path == out / COLLECTED_REPORT and path.exists()
    assert hashlib.sha256((out / "report.md").read_bytes()).hexdigest() == digest
    assert list(table["oos_pnl"]) == sorted(table["oos_pnl"], reverse=True)

    # experiments/results_page.py builds a results page from the run (a one-job "sweep")
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_page",
                                                  ROOT / "experiments" / "results_page.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    md = tmp_path / "doc" / "RESULTS.md"
    md.parent.mkdir()
    text = page.main([str(out.parent), "--out", str(md), "--figures",
                      str(tmp_path / "doc" / "fig")])
    figs = list((tmp_path / "doc" / "fig").glob("*.png"))
    assert len(figs) == 5 and all(f"](fig/{f.name})" in text for f in figs)   # + weights, regret
    r = prim.set_index(["control", "arm"]).loc[("fixed_0.0", "ema")]
    f = page._fmt
    assert f"{f(r['mean_diff'])} [{f(r['simul_lo'])}, {f(r['simul_hi'])}]" in text
    assert "Training: entropy / max per cycle" in text and answer[0] in text


def test_study_gpu_is_the_study_with_more_training():
    s = to_objects(_compose(["experiment=study"]))
    g = to_objects(_compose(["experiment=study_gpu"]))
    assert g.policy_names == s.policy_names and g.control_names == s.control_names
    assert g.policy_histories == s.policy_histories and g.num_seeds == s.num_seeds == 16
    assert g.loop.num_cycles >= s.loop.num_cycles and g.loop.deploy_envs >= s.loop.deploy_envs
    steps = lambda o: o.ppo.num_updates * o.ppo.batch_size     # noqa: E731
    assert steps(g) >= 3 * steps(s)
    same = ("lr", "ent_coef", "update_epochs", "normalize_reward", "gamma", "clip_eps")
    assert [getattr(g.ppo, k) for k in same] == [getattr(s.ppo, k) for k in same]


def test_every_hydra_default_equals_its_objects_default():
    """The Hydra schemas are the frozen objects' defaults (no hand copy can drift)."""
    import inspect

    from tpfl_jax.agents.ppo import PPOConfig
    from tpfl_jax.audit import AuditConfig
    from tpfl_jax.config import (
        AuditSection,
        EnvConfig,
        LoopSection,
        MarketConfig,
        MeshSection,
        PPOSection,
        RewardSection,
    )
    from tpfl_jax.distributed import MeshConfig
    from tpfl_jax.env.trading import _MODE_FIELDS, DEFAULT_TP_MULTS, EnvParams, TradingEnv
    from tpfl_jax.loop import LoopConfig
    from tpfl_jax.market.specs import SyntheticMarkets
    from tpfl_jax.reward import RewardCoefs

    def same(schema, obj, names, convert=lambda k, v: v):
        s, o = schema(), obj
        for k in names:
            got, want = getattr(s, k), convert(k, getattr(o, k))
            got = list(got) if isinstance(got, (list, tuple)) else got
            want = list(want) if isinstance(want, (list, tuple)) else want
            assert got == want, f"{schema.__name__}.{k}: {got!r} != {obj!r}.{k} {want!r}"

    fields = lambda cls: [f.name for f in dataclasses.fields(cls)]  # noqa: E731
    same(PPOSection, PPOConfig(), fields(PPOConfig))
    same(LoopSection, LoopConfig(), fields(LoopConfig))
    same(RewardSection, RewardCoefs(), fields(RewardCoefs))
    same(AuditSection, AuditConfig(), ["weights", "episodes", "lookback"])
    same(MeshSection, MeshConfig(), ["shape", "axis_names", "batch_spec", "on_indivisible",
                                     "coordinator_address", "num_processes", "process_id",
                                     "local_device_ids", "auto_detect"])
    same(MarketConfig, SyntheticMarkets(), fields(SyntheticMarkets))
    env_params = [f.name for f in dataclasses.fields(EnvParams)
                  if f.name not in ("market", "coefs", "tp_mults") and f.name in
                  fields(EnvConfig)]
    assert len(env_params) >= 14
    import jax.numpy as jnp

    ep = EnvParams(market=None, tp_mults=jnp.asarray(DEFAULT_TP_MULTS))
    same(EnvConfig, ep, env_params,
         lambda k, v: _MODE_FIELDS[k][int(v)] if k in _MODE_FIELDS else v)
    assert EnvConfig().tp_mults == list(DEFAULT_TP_MULTS)
    sig = inspect.signature(TradingEnv.__init__).parameters
    for k in ("window", "premature_horizon"):
        assert getattr(EnvConfig(), k) == sig[k].default, k
