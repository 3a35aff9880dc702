"""``--dry-run`` of the console scripts, and the check of a whole ``--multirun`` sweep before its
first job: every job's config is composed by Hydra (each point of the sweep, with the basic
launcher, in this process), checked as a run checks it before compiling, and its plan printed
(``pipelines.<command>.plan``). Nothing compiles and no run directory is touched."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tpfl_jax.config import to_container
from tpfl_jax.distributed import is_multi_process
from tpfl_jax.errors import UserError, one_line
from tpfl_jax.pipelines.common import RunPlan
from tpfl_jax.rundir import SWEEP_MANIFEST, write_text


def is_config_error(e: BaseException) -> bool:
    """A config that does not compose (Hydra / OmegaConf) or any ``UserError``."""
    return isinstance(e, (UserError, HydraException, OmegaConfBaseException))


DRY_RUN_ENV = "TPFL_DRY_RUN"          # set while a dry run composes the jobs
DRY_RUN_COMMANDS = ("loop", "train", "audit", "clm")
_PLANS: list[tuple[str, RunPlan]] = []    # (job label, RunPlan) of the dry run in progress
_JOBS: list[dict[str, Any]] = []           # {"job": number, "overrides": [...]} of each job
SWEEP_JOBS_ENV = "TPFL_SWEEP_JOBS"         # the checked sweep's jobs, for its manifest


def _is_multirun(argv: list[str]) -> bool:
    return any(a in ("--multirun", "-m") for a in argv)


def dry_run_job(command: str, cfg: DictConfig) -> None:
    """One job of a dry run: its plan (every check a run makes before compiling) is recorded
    and printed; nothing is written and nothing compiles."""
    # inside: the pipelines import gymnax, whose import starts the XLA backend (tpfl_jax.app)
    from tpfl_jax.pipelines import audit, clm, loop, train

    hc = HydraConfig.get()
    label = " ".join(hc.overrides.task) or "(defaults)"
    if hc.mode.name == "MULTIRUN":
        label = f"job {hc.job.num}: {label}"
        _JOBS.append({"job": int(hc.job.num), "overrides": list(hc.overrides.task)})
    planners = {"loop": loop.plan, "train": train.plan, "audit": audit.plan,
                "clm": lambda c: clm.plan(c, Path(hc.runtime.output_dir))}
    try:
        plan = planners[command](to_container(cfg))
    except Exception as e:  # noqa: BLE001 - user errors are the plan's verdict; bugs re-raise
        if not is_config_error(e):
            raise
        plan = RunPlan(command, (), one_line(e))
    _PLANS.append((label, plan))
    if os.environ.get(DRY_RUN_ENV) == "print":
        print(f"== {label}")
        for line in plan.lines:
            print(f"  {line}")
        print("  ok: would run" if plan.ok else f"  refused: {plan.error}", flush=True)


def dry_run(job: Any, command: str, quiet: bool) -> list[tuple[str, RunPlan]]:
    """Compose every job of the command line (each point of a ``--multirun`` sweep, the
    basic launcher in this process) and check it; Hydra's output dirs go to a temporary
    directory that is removed, so no run directory is touched. ``--dry-run`` and any
    ``hydra.run.dir`` / ``hydra.sweep.dir`` / ``hydra/launcher`` / logging override are
    replaced (the basic launcher, Hydra's logging off)."""
    argv = list(sys.argv)
    keep = [a for a in argv[1:] if a != "--dry-run" and not a.startswith(
        ("hydra.run.dir=", "hydra.sweep.dir=", "hydra/launcher=", "hydra/job_logging=",
         "hydra/hydra_logging="))]
    if any(a.startswith("hydra/sweeper=") for a in keep):    # its points are not known: the
        keep = [a for a in keep if not a.startswith(("hydra/sweeper=", "hydra.sweeper."))
                and not _is_multirun([a])]                   # base config is checked once
    tmp = tempfile.mkdtemp(prefix="tpfl-dry-run-")
    sys.argv = [argv[0], *keep, f"hydra.run.dir={tmp}/run", f"hydra.sweep.dir={tmp}/sweep",
                "hydra/launcher=basic", "hydra/job_logging=disabled",
                "hydra/hydra_logging=disabled"]
    os.environ[DRY_RUN_ENV] = "quiet" if quiet else "print"
    _PLANS.clear()
    _JOBS.clear()
    try:
        job()
    finally:
        sys.argv = argv
        os.environ.pop(DRY_RUN_ENV, None)
        GlobalHydra.instance().clear()
        shutil.rmtree(tmp, ignore_errors=True)
    return list(_PLANS)


def checked_first(job: Any, command: str) -> None:
    """``--dry-run``: check and plan every job, then exit (0: every job would run, else 2). A
    ``--multirun`` sweep is checked whole the same way before its first job, and refused when
    a job is invalid (not by each of several processes: the check would start the XLA backend
    before ``jax.distributed.initialize``; nor with another sweeper, whose points are not
    known up front)."""
    dry = "--dry-run" in sys.argv
    precheck = (_is_multirun(sys.argv) and not is_multi_process()
                and not any(a.startswith("hydra/sweeper=") for a in sys.argv))
    if not (dry or precheck):
        return
    if dry and command not in DRY_RUN_COMMANDS:
        raise UserError(f"--dry-run: expected one of the commands "
                        f"{', '.join(f'tpfl-{c}' for c in DRY_RUN_COMMANDS)}")
    plans = dry_run(job, command, quiet=not dry)
    bad = [(label, p) for label, p in plans if not p.ok]
    if dry or bad:
        _dry_run_verdict(command, plans, bad, launched=not dry)
    # the sweep runs: its first job writes every job into the sweep dir's manifest, so a
    # report lists the jobs that never started when a job fails at run time
    os.environ[SWEEP_JOBS_ENV] = json.dumps(_JOBS)


def write_sweep_manifest(sweep_dir: Path) -> None:
    """``sweep.json`` (every job of the checked sweep with its overrides) in ``sweep_dir``;
    nothing when no checked sweep is running."""
    jobs = os.environ.get(SWEEP_JOBS_ENV)
    if jobs:
        write_text(sweep_dir / SWEEP_MANIFEST, json.dumps({"jobs": json.loads(jobs)}, indent=1))


def _dry_run_verdict(command: str, plans: list[tuple[str, RunPlan]],
                     bad: list[tuple[str, RunPlan]], launched: bool) -> None:
    """End a dry run (exit 0 when every job would run, else 2), or refuse a sweep with an
    invalid job before anything runs (exit 2)."""
    if not bad:
        print(f"tpfl-{command} --dry-run: {len(plans)} job(s), every one would run; nothing "
              "was compiled or written")
        raise SystemExit(0)
    what = "the sweep was not launched" if launched else "nothing was compiled or written"
    for label, p in bad:
        print(f"tpfl-{command}: error: {label}: {p.error}", file=sys.stderr)
    print(f"tpfl-{command}: error: {len(bad)} of {len(plans)} job(s) invalid; {what}",
          file=sys.stderr, flush=True)
    raise SystemExit(2)


# --------------------------------------------------------------------------- hydra mains


__all__ = ["DRY_RUN_COMMANDS", "DRY_RUN_ENV", "SWEEP_JOBS_ENV", "SWEEP_MANIFEST", "checked_first",
           "dry_run", "dry_run_job", "is_config_error", "write_sweep_manifest"]
