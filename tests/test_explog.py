"""Experiment tracking: each logger writes a run that its own library reads back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from tpfl_jax import explog
from tpfl_jax.app import CONFIG_DIR, _log_experiment


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=tiny", *overrides])


def _run_dir(tmp_path, name):
    """A fake loop run dir: cycles frame, paired table, report and a plot."""
    import matplotlib.pyplot as plt

    from tpfl_jax.config import to_container

    out = tmp_path / name
    out.mkdir()
    rows = []
    for pol in ("fixed_0.0", "fixed_1.0"):
        for s in range(2):
            for c in range(3):
                rows.append({"policy": pol, "seed": s, "cycle": c, "weight": float(pol[-3:]),
                             "deploy_pnl": 10.0 * c + s, "deploy_greedy_pnl": 1.0,
                             "deploy_sampled_pnl": 2.0, "deploy_hit_rate": 0.5,
                             "deploy_tp_skill": 0.01, "train_updates": 8,
                             "train_final_entropy": 2.0, "train_final_return": np.nan})
    cycles = pd.DataFrame(rows)
    paired = {"oos_pnl": pd.DataFrame([{"control": "fixed_1.0", "arm": "fixed_0.0",
                                        "mean_diff": 1.5, "p_holm": 0.2}])}
    (out / "report.md").write_text("# report\n")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1])
    fig.savefig(out / "plot.png")
    plt.close(fig)
    cycles.to_csv(out / "cycles.csv", index=False)
    return out, cycles, paired, to_container


def test_mlflow_run_reads_back(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for name in ("job0", "job1"):            # two jobs of one sweep land in one store
        out, cycles, paired, to_container = _run_dir(tmp_path, name)
        cfg = _cfg(["logger=mlflow", f"logger.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
        _log_experiment(cfg, to_container(cfg), out, cycles, paired)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1"]
    run = runs[0]
    assert run.data.params["loop.num_cycles"] == "2" and run.data.params["logger.kind"] == "mlflow"
    hist = client.get_metric_history(run.info.run_id, "fixed_0.0/deploy_pnl")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [
        (0, 0.5), (1, 10.5), (2, 20.5)]               # mean over seeds per cycle
    assert run.data.metrics["paired/oos_pnl/fixed_0.0-fixed_1.0/mean_diff"] == 1.5
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "plot.png", "cycles.csv"} <= arts
    assert run.info.status == "FINISHED"


def test_tensorboard_run_reads_back(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, cycles, paired, to_container = _run_dir(tmp_path, "job0")
    cfg = _cfg(["logger=tensorboard", f"logger.uri={tmp_path / 'tb'}"])
    _log_experiment(cfg, to_container(cfg), out, cycles, paired)
    acc = EventAccumulator(str(tmp_path / "tb" / "tiny" / "job0"),
                           size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    ev = acc.Scalars("fixed_1.0/deploy_pnl")
    assert [(e.step, e.value) for e in ev] == [(0, 0.5), (1, 10.5), (2, 20.5)]
    tags = acc.Tags()
    assert "plots/plot" in tags["images"]
    assert any(t.startswith("params") for t in tags["tensors"])


def test_none_logger_and_bad_kind():
    lg = explog.make_logger("none", ".", "r", "e")
    lg.log_metrics({"a": 1.0}, 0)
    lg.close()
    with pytest.raises(ValueError, match="config.logger.kind"):
        explog.make_logger("wandb", ".", "r", "e")
    assert explog.flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": "[1, 2]"}
