"""A run directory is owned: one writer (a lock naming its holder), one command and config,
a complete run is not recomputed, files are whole or absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tpfl_jax.errors import UserError
from tpfl_jax.rundir import RECORD, AlreadyComplete, RunDir, atomic, read_record, write_text

ROOT = Path(__file__).resolve().parents[1]
ID = {"seed": 0, "loop": {"num_cycles": 2}}


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from tpfl_jax.rundir import RunDir
        RunDir({str(out)!r}, "loop", {ID!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"{out} is in use by .*\"pid\": {holder.pid}.*loop"):
            RunDir(out, "loop", ID).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunDir(out, "loop", ID):          # the lock died with its process: resumable
        assert read_record(out)["status"] == "running"


def test_another_command_or_config_is_refused_and_a_complete_run_is_a_no_op(tmp_path):
    out = tmp_path / "run"
    with RunDir(out, "loop", ID) as run:
        write_text(out / "summary.csv", "policy\n")
        run.complete()
    with pytest.raises(UserError, match="holds a loop run; a train run into it"):
        RunDir(out, "train", ID).acquire()
    with pytest.raises(UserError, match=r"another config \(seed: 0 -> 1\)"):
        RunDir(out, "loop", {**ID, "seed": 1}).acquire()
    with pytest.raises(AlreadyComplete, match="complete.*nothing to do"):
        RunDir(out, "loop", ID).acquire()
    assert read_record(out)["status"] == "complete"          # the record is untouched


def test_a_failed_or_killed_run_restarts_and_a_foreign_dir_is_refused(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out, "train", ID).acquire()
    run.failed("boom")
    run.release()
    assert read_record(out)["status"] == "failed" and read_record(out)["error"] == "boom"
    with RunDir(out, "train", ID):
        assert read_record(out)["status"] == "running"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds files of another run or program .*notes.txt"):
        RunDir(foreign, "loop", ID).acquire()
    (out / RECORD).write_text("{torn")
    with pytest.raises(UserError, match="run.json: unreadable"):
        RunDir(out, "train", ID).acquire()


def test_atomic_writes_are_whole_or_absent_and_errors_name_the_file(tmp_path):
    f = tmp_path / "table.csv"
    write_text(f, "old\n")
    with pytest.raises(RuntimeError):
        with atomic(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert f.read_text() == "old\n" and not list(tmp_path.glob(".table.csv.*"))
    with pytest.raises(UserError, match=rf"{tmp_path / 'nodir' / 'x.csv'}: cannot write"):
        write_text(tmp_path / "nodir" / "x.csv", "x")


def test_two_runs_started_together_cannot_mix(tmp_path):
    """Two processes race for one directory: exactly one owns it; the other is refused before
    writing anything, so the record is one run's."""
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from tpfl_jax.errors import UserError
        from tpfl_jax.rundir import RunDir, write_text
        seed = int(sys.argv[1])
        try:
            run = RunDir({str(out)!r}, "loop", {{"seed": seed}}).acquire()
        except UserError as e:
            print("refused", e); sys.exit(0)
        write_text(run.path / "summary.csv", f"seed\\n{{seed}}\\n")
        time.sleep(1.0)
        run.complete(); print("owner", seed)
        """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(s)], stdout=subprocess.PIPE,
                              text=True) for s in (0, 1)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    owners = [o for o in outs if o.startswith("owner")]
    assert len(owners) == 1 and sum(o.startswith("refused") for o in outs) == 1
    seed = int(owners[0].split()[1])
    rec = json.loads((out / RECORD).read_text())
    assert rec["identity"]["seed"] == seed and rec["status"] == "complete"
    assert (out / "summary.csv").read_text() == f"seed\n{seed}\n"


def test_report_lists_failed_and_unfinished_jobs_with_their_overrides(tmp_path, monkeypatch):
    from tpfl_jax.report import COLLECTED_REPORT, report_dir

    sweep = tmp_path / "multirun"
    for job, status, over in (("0", "complete", ["market=regime"]),
                              ("1", "failed", ["market=mixed"]),
                              ("2", "running", ["market=gbm"])):
        d = sweep / job
        d.mkdir(parents=True)
        rec = {"command": "loop", "status": status, "overrides": over, "identity_sha256": "x"}
        if status == "failed":
            rec["error"] = "cannot write (No space left on device)"
        (d / RECORD).write_text(json.dumps(rec))
        (d / "summary.csv").write_text("policy,seed,final_pnl,oos_pnl\nfixed_0.0,0,1.0,2.0\n")
    table, path = report_dir(sweep)
    text = path.read_text()
    assert path.name == COLLECTED_REPORT
    assert "2 of 3 run(s) did not complete" in text and "market=mixed" in text
    assert "No space left on device" in text and "incomplete (killed or still running)" in text
    assert len(table) == 1                                  # only the complete job's arms
    # a checked sweep's manifest (written by its first job): a job that never started (the
    # sweep stopped at job 1's failure) is listed with its overrides too
    from tpfl_jax.dryrun import SWEEP_JOBS_ENV, write_sweep_manifest

    jobs = [{"job": i, "overrides": [f"market={m}"]}
            for i, m in enumerate(("regime", "mixed", "gbm", "merton"))]
    monkeypatch.setenv(SWEEP_JOBS_ENV, json.dumps(jobs))
    write_sweep_manifest(sweep)
    text = report_dir(sweep)[1].read_text()
    assert "3 of 4 run(s) did not complete" in text
    assert "| 3 |  | not started | market=merton |" in text


def test_escaping_names_and_an_unusable_home_stay_confined(tmp_path, monkeypatch):
    from tpfl_jax.rundir import COMPILE_CACHE_ENV, compile_cache_dir, safe_name

    assert "/" not in safe_name("../../x") and not safe_name("..").startswith(".")
    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    for home in ("", "relative", "/"):
        monkeypatch.setenv("HOME", home)
        d = compile_cache_dir()
        assert d.is_absolute() and d.parts[1] != ".cache", d      # never /.cache
    from tpfl_jax.app import setup_jax

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):                             # root ignores the mode bits
        ro = tmp_path / "file"
        ro.write_text("")                                  # a file where a dir is expected
    setup_jax(ro / "cache")                                # warns, does not raise


def test_logger_experiment_names_cannot_leave_the_run_dir(tmp_path):
    from tpfl_jax.explog import make_logger

    lg = make_logger("tensorboard", tmp_path / "run", "../job", "../../x")
    try:
        assert Path(lg.location).resolve().is_relative_to((tmp_path / "run").resolve())
    finally:
        lg.close()


def test_a_corrected_config_takes_over_a_failed_run_without_losing_it(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out, "loop", ID).acquire()
    write_text(out / "summary.csv", "partial\n")
    run.failed("UserError: config.stats.n_boot = 0")
    run.release()
    with RunDir(out, "loop", {**ID, "seed": 3}):          # the corrected rerun is accepted
        assert read_record(out)["identity"]["seed"] == 3
        moved = list(out.glob(".replaced-*"))
        assert len(moved) == 1 and (moved[0] / "summary.csv").read_text() == "partial\n"
        assert json.loads((moved[0] / RECORD).read_text())["status"] == "failed"
        assert not (out / "summary.csv").exists()
    with pytest.raises(UserError, match="another config"):  # a running or complete one is not
        RunDir(out, "loop", ID).acquire()


def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    import errno

    from tpfl_jax.errors import SystemFault, UserError
    from tpfl_jax.rundir import write_text

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.replace", full)
    with pytest.raises(SystemFault, match=r"report\.md: cannot write \(No space left") as e:
        write_text(tmp_path / "report.md", "x")
    assert e.value.exit_status == 1 and list(tmp_path.iterdir()) == []
    monkeypatch.setattr("os.replace", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(UserError) as e:
        write_text(tmp_path / "report.md", "x")
    assert e.value.exit_status == 2 and not isinstance(e.value, SystemFault)


def test_a_setting_added_at_its_old_behaviour_keeps_old_runs_resumable():
    """A key added later (``ppo.anneal_ent``) at the value that computes what older runs did is
    left out of the identity, so their run dirs still resume; any other value is a new run."""
    from tpfl_jax.config import Config
    from tpfl_jax.rundir import config_identity, identity_hash

    new = config_identity(Config())
    assert "anneal_ent" not in new["ppo"] and "normalize_obs" in new["ppo"]
    old = json.loads(json.dumps(new))                        # a run.json written before the key
    assert identity_hash(old) == identity_hash(new)
    on = Config()
    on.ppo.anneal_ent = True
    assert config_identity(on)["ppo"]["anneal_ent"] is True
    assert identity_hash(config_identity(on)) != identity_hash(new)
