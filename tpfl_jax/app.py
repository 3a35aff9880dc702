"""Hydra entry points ``tpfl-loop``, ``tpfl-train``, ``tpfl-clm``, ``tpfl-audit`` and
``tpfl-report``: read the config, call one pipeline (``tpfl_jax.pipelines``), write, and turn
errors into the one-line CLI message.

Configs live in the repository's ``configs/`` (schema: ``tpfl_jax.config.Config``). Every run
writes into its Hydra output dir: ``config_resolved.yaml``, ``metrics.jsonl``, ``summary.csv``,
trades (parquet), checkpoints (orbax), PNG plots and ``report.md``. The JAX persistent
compilation cache is user-level (``rundir.compile_cache_dir``: config ``compile_cache_dir``,
``$TPFL_COMPILE_CACHE_DIR``, ``$XDG_CACHE_HOME/tpfl_jax/jax`` or ``~/.cache/tpfl_jax/jax``), so
a second run of one shape does not recompile and run dirs hold no executables. Every config is
validated (``tpfl_jax.config_checks``) before anything is compiled or written.
``python -m tpfl_jax.app {loop,train,clm,audit,report} [overrides]`` works without installing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import jax
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tpfl_jax import explog
from tpfl_jax.config import to_container, to_mesh_config, to_objects
from tpfl_jax.distributed import init_distributed, sync_processes
from tpfl_jax.dryrun import (
    DRY_RUN_ENV,
    checked_first,
    dry_run_job,
    is_config_error,
    write_sweep_manifest,
)
from tpfl_jax.errors import UserError, one_line, os_error
from tpfl_jax.pipelines.common import quiet_jax_logs, setup_jax  # noqa: F401  (public API)
from tpfl_jax.report import format_table, report_dir
from tpfl_jax.rundir import AlreadyComplete, RunDir, compile_cache_dir, config_identity, write_text

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")

# The pipelines are imported inside the command functions: they import gymnax, whose import
# starts the XLA backend, and a multi-process job must call jax.distributed.initialize first.


def _out_dir(cfg: DictConfig) -> tuple[Path, Path]:
    """(run output dir, user-level compile-cache dir) of the current Hydra job."""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), compile_cache_dir(cfg.get("compile_cache_dir"))


def _write_config(cfg: DictConfig, out: Path) -> None:
    write_text(out / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))


# --------------------------------------------------------------------------- commands
def run_audit_app(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> Any:
    """``tpfl-audit``: the reward audit of the configured env and market (its ``AuditResult``)."""
    from tpfl_jax.pipelines import audit as audit_pipeline  # after init_distributed (above)

    return audit_pipeline.run(to_container(cfg), out, cache_dir)


def run_loop(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """``tpfl-loop``: the closed-loop experiment (``pipelines.loop``); returns the levels table
    (an empty frame on processes other than 0 of a multi-host job)."""
    from tpfl_jax.pipelines import loop as loop_pipeline  # after init_distributed (above)

    c = to_container(cfg)          # typed dataclasses: nothing below sees a DictConfig
    r = loop_pipeline.run(c, out, cache_dir)
    if r is None:
        return pd.DataFrame()
    _log_experiment(cfg, c, out, r.frames.cycles, r.paired)
    return r.frames.levels


def run_train(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """``tpfl-train``: weights x seeds of PPO scored on held-out episodes (``pipelines.train``);
    returns the summary (an empty frame on processes other than 0 of a multi-host job)."""
    from tpfl_jax.pipelines import train as train_pipeline  # after init_distributed (above)

    r = train_pipeline.run(to_container(cfg), out, cache_dir)
    if r is None:
        return pd.DataFrame()
    _write_config(cfg, out)
    return r.summary.assign(kind="arm")


def run_clm(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """``tpfl-clm``: one ``TrainingJob`` through ``ClmOrchestrator`` (``pipelines.clm``)."""
    from tpfl_jax.pipelines import clm as clm_pipeline  # after init_distributed (above)

    info = clm_pipeline.run(to_container(cfg), out, cache_dir)
    _write_config(cfg, out)
    return info


# --------------------------------------------------------------------------- logging
def _log_experiment(cfg: DictConfig, c: Any, out: Path, cycles: pd.DataFrame,
                    paired: dict[str, pd.DataFrame]) -> None:
    """Params, per-cycle metrics (mean over seeds per policy) and artefacts to ``logger``."""
    if c.logger.kind == "none":
        return
    try:
        hc = HydraConfig.get()
        run_name = hc.job.override_dirname or hc.job.name
        if hc.mode.name == "MULTIRUN":
            run_name = f"{hc.job.num}:{run_name}"
    except ValueError:                     # outside a Hydra job
        run_name = out.name
    where = explog.log_loop_run(
        c.logger.kind, _log_root(out), run_name, c.logger.experiment or c.experiment,
        c.logger.uri, OmegaConf.to_container(cfg, resolve=True), cycles, paired, out)
    print(f"logger={c.logger.kind}: {where}")


def _log_root(out: Path) -> Path:
    """The Hydra sweep dir of a multirun job (one store for its jobs), else the run dir."""
    try:
        hc = HydraConfig.get()
        return Path(hc.sweep.dir) if hc.mode.name == "MULTIRUN" else out
    except ValueError:
        return out


DEBUG_ENV = "TPFL_DEBUG"   # 1: user errors keep their traceback too (as does --debug)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _hydra_job(fn, command: str, distributed: bool = True):
    """The Hydra task of ``fn`` (a console script via :func:`_cli`): process 0 owns the run
    directory (``rundir.RunDir``: lock, identity with the command, completion record); a
    user error is one line on stderr and exit status 2; a complete run is not recomputed."""

    def task(cfg: DictConfig) -> Any:
        quiet_jax_logs()
        if os.environ.get(DRY_RUN_ENV):
            return dry_run_job(command, cfg)
        run = None
        try:
            if distributed:       # first: nothing may start the XLA backend before it
                init_distributed(to_mesh_config(cfg))    # no-op unless several processes
            to_objects(cfg)                              # every key checked before anything
            out, cache = _out_dir(cfg)
            if jax.process_index() == 0:
                hc = HydraConfig.get()
                if hc.mode.name == "MULTIRUN" and int(hc.job.num) == 0:
                    write_sweep_manifest(Path(hc.sweep.dir))
                overrides = list(hc.overrides.task)
                run = RunDir(out, command, config_identity(cfg), overrides).acquire()
                _write_config(cfg, out)
            try:
                result = fn(cfg, out, cache if cfg.compile_cache else None)
            finally:
                # the other processes wait here while process 0 writes (jax.distributed's own
                # shutdown barrier would time out on a long evaluation / checkpoint)
                sync_processes("tpfl_jax.app:done")
            if run is not None:
                run.complete()
            return _objective(result)
        except AlreadyComplete as e:
            print(e)
            return None
        except UserError as e:
            if run is not None:
                run.failed(one_line(e))
            if _debug():
                raise
            print(f"tpfl-{command}: error: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_status) from None
        except BaseException as e:
            if run is not None:
                run.failed(f"{type(e).__name__}: {one_line(e)}")
            raise
        finally:
            if run is not None:
                run.release()

    task.__name__ = fn.__name__
    task.__doc__ = fn.__doc__
    return hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(task)


def _cli(fn, command: str, distributed: bool = True):
    """The console script ``tpfl-<command>``: Hydra parses the overrides; a config that does
    not compose (unknown key, wrong type, bad override) is one line and exit status 2, like
    every user error; ``--debug`` (or ``TPFL_DEBUG=1``) keeps the traceback."""
    job = _hydra_job(fn, command, distributed)

    def main() -> None:
        if "--debug" in sys.argv:
            sys.argv.remove("--debug")
            os.environ[DEBUG_ENV] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"      # Hydra raises; we decide how to report
        try:
            checked_first(job, command)
            job()
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
            if isinstance(e, OSError):      # e.g. Hydra creating the run dir: a path's fault
                e = os_error(e.filename, e, "cannot create or write")
            if _debug() or not is_config_error(e):
                raise
            print(f"tpfl-{command}: error: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(getattr(e, "exit_status", 2)) from None

    main.__name__ = f"{command}_main"
    main.__doc__ = fn.__doc__
    return main


def _objective(result: Any) -> float | None:
    """The sweepers' objective: the best arm's (or weight's) out-of-sample PnL per episode."""
    if not isinstance(result, pd.DataFrame) or not len(result):
        return None
    if "kind" in result:
        result = result[result["kind"] == "arm"]
    for col in ("oos_pnl", "final_pnl"):
        if col in result:
            return float(result[col].max())
    return None


loop_main = _cli(run_loop, "loop")
train_main = _cli(run_train, "train")
clm_main = _cli(run_clm, "clm", distributed=False)   # host-side glue: one process
audit_main = _cli(run_audit_app, "audit", distributed=False)


def report_main(argv: list[str] | None = None) -> None:
    """``tpfl-report DIR``: collect a run or multirun dir into ``tpfl-report.md`` and
    ``tpfl-report.csv`` there (a run's own ``report.md`` is never touched); jobs that failed or
    did not finish are listed with their overrides."""
    ap = argparse.ArgumentParser(prog="tpfl-report", description=report_main.__doc__)
    ap.add_argument("path")
    ap.add_argument("--debug", action="store_true", help="tracebacks for user errors too")
    a = ap.parse_args(argv)
    try:
        table, path = report_dir(a.path)
    except (UserError, FileNotFoundError) as e:
        if a.debug or _debug():
            raise
        ap.exit(2, f"tpfl-report: error: {one_line(e)}\n")
    print(format_table(table))
    print(f"report: {path}")


COMMANDS = {"loop": loop_main, "train": train_main, "clm": clm_main, "report": report_main,
            "audit": audit_main}


def main() -> None:
    """``python -m tpfl_jax.app {loop,train,clm,audit,report} [args]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m tpfl_jax.app {{{','.join(COMMANDS)}}} [overrides]")
    cmd = sys.argv.pop(1)
    sys.argv[0] = f"tpfl-{cmd}"
    COMMANDS[cmd]()


if __name__ == "__main__":
    main()
