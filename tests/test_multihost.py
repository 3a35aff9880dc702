"""``tpfl-train`` end to end, and ``tpfl-loop`` as a real two-process ``jax.distributed`` job.

Two processes x 4 CPU devices form one 8-device ``mesh=multihost`` mesh (coordinator on
localhost, settings from the ``TPFL_*`` env vars); the policies x seeds batch is padded to 8 and
split over both processes, process 0 writes the artefacts, and the numbers must equal the
session's one-process, one-device tiny loop. ``tpfl-train`` shards its weights x seeds through the
same ``distributed.sharded_vmap`` (input placement, padding, gather), so one two-process job
covers both commands' multi-host path; the train sweep itself is checked on 8 devices in
``test_distributed``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = [sys.executable, "-m", "tpfl_jax.app"]
TRAIN = [*APP, "train", "experiment=tiny", "train.num_seeds=2", "progress=false"]
LOOP = [*APP, "loop", "experiment=tiny", "progress=false"]
ARTEFACTS = ("config_resolved.yaml", "metrics.jsonl", "summary.csv", "trades.parquet",
             "report.md", "learning_curves.png")

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPFL_", "SLURM_"))
           or k == "TPFL_COMPILE_CACHE_DIR"}       # the session's tmp compile cache
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out: Path) -> pd.DataFrame:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return pd.DataFrame(rows).sort_values(["weight", "update"]).reset_index(drop=True)


def _run_single(cmd: list[str], out: Path) -> str:
    proc = subprocess.run([*cmd, f"hydra.run.dir={out}"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _run_two(cmd: list[str], base: Path) -> list[tuple[Path, str]]:
    base.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs, outs = [], []
    for pid in range(2):
        out = base / f"p{pid}"
        env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   TPFL_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", TPFL_NUM_PROCESSES="2",
                   TPFL_PROCESS_ID=str(pid))
        log = (base / f"p{pid}.out").open("w"), (base / f"p{pid}.err").open("w")
        # output to files, not pipes: a full pipe could block one process inside a collective
        procs.append((subprocess.Popen(
            [*cmd, "mesh=multihost", "mesh.shape=[-1,4]", f"hydra.run.dir={out}"],
            cwd=ROOT, env=env, stdout=log[0], stderr=log[1], text=True), log))
        outs.append(out)
    results = []
    try:
        for pid, (p, log) in enumerate(procs):
            p.wait(timeout=600)
            for f in log:
                f.close()
            err = (base / f"p{pid}.err").read_text()
            assert p.returncode == 0, f"process {pid}: {err[-3000:]}"
            results.append((base / f"p{pid}.out").read_text())
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
    return list(zip(outs, results, strict=True))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("single")
    return out, _run_single(TRAIN, out)


def test_single_process_train_writes_every_artefact(single):
    out, stdout = single
    for name in ARTEFACTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "checkpoints" / "final").is_dir()
    assert "2 weights x 2 seeds as one program on 1 device(s)" in stdout
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["final_weight"].unique()) == [0.5, 2.0]
    assert len(summary) == 2 * 2 and summary["oos_pnl"].notna().all()
    # oos_pnl means what it means in tpfl-loop: loop.feedback_mode's deployment (greedy)
    assert (summary["oos_pnl"] == summary["oos_pnl_greedy"]).all()
    assert (summary["oos_pnl"] != summary["oos_pnl_sampled"]).any()
    assert (out / "curves.csv").stat().st_size > 0 and (out / "vs_references.csv").exists()
    m = _metrics(out)
    assert len(m) == 2 * 2                                  # weights x updates, seeds per row
    assert all(len(v) == 2 for v in m["reward"])            # one value per seed


def test_train_rows_are_labelled_with_their_weight_and_seed(single):
    # metrics.jsonl row (weight w, seed s) == a plain make_train of that weight and seed key
    import jax
    import jax.numpy as jnp
    from hydra import compose, initialize_config_dir

    from tpfl_jax.accounting import train_info_metrics
    from tpfl_jax.agents.ppo import make_train
    from tpfl_jax.app import CONFIG_DIR
    from tpfl_jax.config import to_container, to_objects
    from tpfl_jax.loop import cycle_keys
    from tpfl_jax.pipelines.markets import build_market

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        c = to_container(compose(config_name="config",
                                 overrides=["experiment=tiny", "train.num_seeds=2"]))
    obj = to_objects(c)
    spec, source, env_params = build_market(c, obj.env, obj.env_kwargs)
    train_m, _ = spec.cycle_markets(source, cycle_keys(jax.random.key(c.seed), 0).market, 0)
    params = env_params.replace(market=train_m, tp_reward_weight=jnp.float32(2.0))
    key = jax.random.fold_in(jax.random.key(c.seed), 1)                    # seed index 1
    stream = spec.stream(obj.env, obj.ppo.num_envs, obj.ppo.num_steps,
                         int(c.env.max_steps_in_episode))                  # fresh paths
    want = jax.jit(make_train(obj.ppo, obj.env, params, info_metrics=train_info_metrics,
                              stream=stream))(key, params, None, source).metrics
    m = _metrics(single[0])
    rows = m[m["weight"] == 2.0].sort_values("update")
    for col in ("reward", "loss", "episode_return"):
        got = np.asarray([v[1] for v in rows[col]], float)
        np.testing.assert_allclose(got, np.asarray(want[col], float), rtol=1e-4, atol=1e-6,
                                   err_msg=col)


def test_two_process_loop_matches_one_process(tmp_path, tiny_loop):
    one = tiny_loop[0]                       # the session's one-process tiny loop
    (p0, _), (p1, _) = _run_two(LOOP, tmp_path / "two")
    for name in ("summary.csv", "cycles.csv", "levels.csv", "report.md", "metrics.jsonl"):
        assert (p0 / name).stat().st_size > 0, name
        assert not (p1 / name).exists(), f"process 1 wrote {name}"
    timing = json.loads((p0 / "timing.json").read_text())
    assert (timing["devices"], timing["processes"]) == (8, 2)     # one global mesh
    assert json.loads((one / "timing.json").read_text())["devices"] == 1
    a, b = (pd.read_csv(d / "cycles.csv") for d in (one, p0))
    assert a.shape == b.shape == (4 * 2 * 2, a.shape[1])   # policies x seeds x cycles
    assert list(a["policy"]) == list(b["policy"]) and list(a["seed"]) == list(b["seed"])
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float),
                               rtol=1e-4, atol=1e-6)
