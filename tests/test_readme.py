"""Every ``tpfl-*`` command in the README's code blocks composes into a valid run: each is
dry-run (``--dry-run``: every check a run makes before it compiles, nothing compiled or
written). A command whose comment says it is for a GPU may be refused for memory on a CPU."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRY_RUN_COMMANDS = {"loop", "train", "audit", "clm"}
NOT_CONFIG_COMMANDS = {"report", "demo"}   # a directory argument / no config
# One process dry-runs every command in turn (the console scripts' mains, in-process): the
# package and Hydra are imported once.
DRIVER = """
import contextlib, io, json, sys
from tpfl_jax import app
out = []
for cmd, args, dry in json.loads(sys.argv[1]):
    sys.argv = [f"tpfl-{cmd}", *args, *(["--dry-run"] if dry else [])]
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            getattr(app, f"{cmd}_main")()
            code = 0
        except SystemExit as x:
            code = x.code
    out.append({"code": code, "out": o.getvalue(), "err": e.getvalue()})
print(json.dumps(out))
"""


DOCS = ("README.md", "docs/data.md", "docs/policies.md")
PLACEHOLDER = "my_policies"     # docs/policies.md's stand-in for the reader's own module


def readme_commands() -> list[tuple[str, list[str], bool]]:
    """(command, arguments, marked for a GPU) of every ``tpfl-*`` call in a code block of
    the README and the docs that show commands (not the placeholder-module examples)."""
    blocks = [b for doc in DOCS for b in re.findall(r"```[a-z]*\n(.*?)```",
                                                      (ROOT / doc).read_text(), re.S)]
    out = []
    for block in blocks:
        for line in block.splitlines():
            if PLACEHOLDER in line or line.startswith("tpfl-loop: error"):
                continue
            code, _, comment = line.partition("#")
            for m in re.finditer(r"tpfl-(\w+)((?:\s+[^\s&;|]+)*)", code):
                args = [a for a in shlex.split(m.group(2)) if "$" not in a]
                out.append((m.group(1), args, "GPU" in comment.upper()))
    return out


BAD = [  # (command, args, --dry-run, text in the one-line refusal, exit status): in the same
    # process as the README's commands
    ("loop", ["experiment=tiny", "ppo.lr=-1"], True, "config.ppo.lr", 2),
    ("loop", ["--multirun", "experiment=tiny", "env.fee_bps=1,-1"], True,
     "job 1: experiment=tiny env.fee_bps=-1", 2),
    # a real sweep is checked whole first: a bad job refuses it before any job runs
    ("loop", ["--multirun", "experiment=tiny", "env.fee_bps=1,-1,2"], False,
     "job 1: experiment=tiny env.fee_bps=-1", 2),
    # the run dir is a file: Hydra cannot create it (one line naming the path, no traceback)
    ("audit", ["experiment=tiny", "hydra.run.dir=a_file"], False,
     "a_file: cannot create or write", 2),
]


def test_every_documented_command_dry_runs_and_bad_jobs_are_refused(tmp_path):
    commands = readme_commands()
    names = {c for c, _, _ in commands}
    assert {"loop", "train", "audit", "clm", "report"} <= names, names
    assert names <= DRY_RUN_COMMANDS | NOT_CONFIG_COMMANDS, names
    assert any(gpu for _, _, gpu in commands)
    runs = [(c, a, gpu) for c, a, gpu in commands if c in DRY_RUN_COMMANDS]
    (tmp_path / "a_file").write_text("")
    batch = [[c, a, True] for c, a, _ in runs] + [[c, a, dry] for c, a, dry, _, _ in BAD]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(batch)], cwd=tmp_path, capture_output=True,
        text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT),
                                     "JAX_LOG_COMPILES": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Compiling " not in proc.stderr, proc.stderr[-3000:]     # nothing compiled
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (cmd, args, gpu), r in zip(runs, results, strict=False):
        where = f"tpfl-{cmd} {' '.join(args)}"
        if gpu and r["code"] == 2:           # for a GPU: refused for memory on this CPU
            assert "needs at least" in r["err"] and "GiB per cpu device" in r["err"], where
            continue
        assert r["code"] == 0, (where, r["err"][-2000:])
        assert "every one would run; nothing was compiled or written" in r["out"], where
        assert "wall time: ~" in r["out"] and "ok: would run" in r["out"], where
    for (_, args, dry, text, code), r in zip(BAD, results[len(runs):], strict=True):
        assert r["code"] == code and text in r["err"], (args, r["err"][-2000:])
        assert "Traceback" not in r["err"] and len(r["err"].strip().splitlines()) <= 3
        if "--multirun" in args:
            assert ("nothing was compiled or written" if dry else "the sweep was not launched"
                    ) in r["err"]
    # no run directory, no outputs/ or multirun/
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]
