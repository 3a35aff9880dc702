"""Experiment tracking of ``tpfl-loop`` runs: MLflow or TensorBoard, off by default (host only).

``make_logger(kind, root, run_name, experiment, uri)`` returns an :class:`ExperimentLogger`:

* ``none``: does nothing (the run dir's files are the record);
* ``mlflow``: one MLflow run per job in experiment ``experiment``; tracking URI ``uri``
  (default ``sqlite:///<root>/mlflow.db``, needs ``mlflow-skinny``, ``sqlalchemy`` and
  ``alembic``: the ``mlflow`` extra) with artefacts under ``<root>/mlartifacts`` for a new
  experiment; params, per-cycle metrics (``step`` = cycle) and the run dir's files;
* ``tensorboard``: event files under ``<uri or root/tensorboard>/<experiment>/<run_name>``
  written with ``tensorboardX`` (the ``tensorboard`` extra): scalars per cycle, the params as
  text and as hparams, the report as text and the PNG plots as images.

``root`` is the Hydra sweep dir of a multirun (every job one comparable run in one store) or
the run dir. Libraries are imported only when their logger is built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tpfl_jax.rundir import safe_name

LOGGER_KINDS = ("none", "mlflow", "tensorboard")
ARTEFACT_SUFFIXES = (".md", ".csv", ".png", ".json", ".yaml", ".jsonl")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{'a.b.c': value}`` (lists as JSON strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten(v, key + ".")
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


class ExperimentLogger:
    """The no-op logger; the base of the others."""

    kind = "none"
    location: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record flat run parameters."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at ``step`` (a loop cycle)."""

    def log_artifacts(self, files: Iterable[Path]) -> None:
        """Attach files of the run dir."""

    def close(self) -> None:
        """Finish the run."""


class MlflowLogger(ExperimentLogger):
    """One MLflow run (see the module docstring)."""

    kind = "mlflow"

    def __init__(self, root: Path, run_name: str, experiment: str, uri: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        root = Path(root).absolute()
        root.mkdir(parents=True, exist_ok=True)
        self.location = uri or f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.location)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            experiment, artifact_location=(root / "mlartifacts").as_uri())
        self.run = self.client.create_run(exp_id, run_name=run_name)
        self.run_id = self.run.info.run_id
        self._mlflow = mlflow

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_artifacts(self, files: Iterable[Path]) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TensorboardLogger(ExperimentLogger):
    """TensorBoard event files of one run (see the module docstring)."""

    kind = "tensorboard"

    def __init__(self, root: Path, run_name: str, experiment: str, uri: str | None = None):
        from tensorboardX import SummaryWriter

        base = Path(uri) if uri else Path(root) / "tensorboard"
        # names become one path component each: "../x" cannot leave the log dir
        self.location = str(base / safe_name(experiment) / safe_name(run_name))
        self.writer = SummaryWriter(logdir=self.location)
        self._params: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._params |= dict(params)
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(params.items()))
        self.writer.add_text("params", text, 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import math

        for k, v in metrics.items():
            if v is not None and math.isfinite(float(v)):
                self.writer.add_scalar(k, float(v), int(step))
                self._last[k] = float(v)

    def log_artifacts(self, files: Iterable[Path]) -> None:
        import matplotlib.image as mpimg

        for f in files:
            f = Path(f)
            if f.suffix == ".png":
                img = mpimg.imread(f)[..., :3]
                self.writer.add_image(f"plots/{f.stem}", img, 0, dataformats="HWC")
            elif f.suffix == ".md":
                self.writer.add_text(f"files/{f.name}", f.read_text(), 0)

    def close(self) -> None:
        hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
              for k, v in self._params.items()}
        if hp and self._last:
            self.writer.add_hparams(hp, {f"hparam/{k}": v for k, v in self._last.items()},
                                    name="hparams")
        self.writer.close()


def make_logger(kind: str, root: Path, run_name: str, experiment: str,
                uri: str | None = None) -> ExperimentLogger:
    """The logger of ``kind`` (``LOGGER_KINDS``); ``ImportError`` names the extra to install."""
    if kind not in LOGGER_KINDS:
        raise ValueError(f"config.logger.kind = {kind!r}; expected one of {LOGGER_KINDS}")
    if kind == "none":
        return ExperimentLogger()
    cls = MlflowLogger if kind == "mlflow" else TensorboardLogger
    try:
        return cls(Path(root), run_name, experiment, uri)
    except ImportError as e:
        raise ImportError(f"logger={kind} needs the '{kind}' extra: pip install "
                          f"'tpfl_jax[{kind}]' ({e})") from e


def run_files(run_dir: Path) -> list[Path]:
    """The run dir's report artefacts (tables, plots, report, config), not checkpoints."""
    run_dir = Path(run_dir)
    return sorted(f for f in run_dir.iterdir() if f.is_file() and f.suffix in ARTEFACT_SUFFIXES)


LOOP_METRIC_KEYS = ("weight", "deploy_pnl", "deploy_greedy_pnl", "deploy_sampled_pnl",
                    "deploy_hit_rate", "deploy_tp_skill", "train_updates",
                    "train_final_entropy", "train_final_return")


def log_loop_run(kind: str, root: Path, run_name: str, experiment: str, uri: str | None,
                 config: Mapping[str, Any], cycles: Any, paired: Mapping[str, Any],
                 out: Path) -> str:
    """A finished ``tpfl-loop`` run to a ``kind`` logger: the flattened config as params,
    the per-cycle metrics (mean over seeds per policy), the paired differences and p-values
    (Holm) at the last cycle, and the run's files; returns the logger's location."""
    lg = make_logger(kind, root, run_name, experiment, uri)
    lg.log_params(flatten(config))
    per = cycles.groupby(["cycle", "policy"], sort=False)[list(LOOP_METRIC_KEYS)].mean(
        numeric_only=True)
    for cy, g in per.groupby(level=0):
        lg.log_metrics({f"{pol}/{k}": v for (_, pol), r in g.iterrows() for k, v in r.items()},
                       step=int(cy))
    final = {}
    for m, t in paired.items():
        for _, r in t.iterrows():
            final[f"paired/{m}/{r['arm']}-{r['control']}/mean_diff"] = r["mean_diff"]
            final[f"paired/{m}/{r['arm']}-{r['control']}/p_holm"] = r["p_holm"]
    lg.log_metrics(final, step=int(cycles["cycle"].max()))
    lg.log_artifacts(run_files(out))
    lg.close()
    return lg.location


__all__ = ["ARTEFACT_SUFFIXES", "LOGGER_KINDS", "LOOP_METRIC_KEYS", "ExperimentLogger",
           "MlflowLogger", "TensorboardLogger", "flatten", "log_loop_run", "make_logger",
           "run_files"]
