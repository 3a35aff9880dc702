"""Shared benchmark plumbing: CSV output under ``results/bench/`` (git-ignored), machine line,
PPO hyperparameter presets and a timed JAX PPO run."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"


def machine() -> str:
    """One line: CPU model, logical cores, JAX backend and device kind."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    d = jax.devices()[0]
    return (f"{cpu}, {os.cpu_count()} logical cores; jax {jax.__version__} "
            f"{d.platform} x{jax.device_count()} ({d.device_kind})")


def write_csv(rows: list[dict], name: str, path: str | None = None) -> Path:
    """Write ``rows`` (dicts with the same keys) plus date and machine columns; return the path."""
    out = Path(path) if path else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    m = machine()
    rows = [{**r, "date": stamp, "machine": m} for r in rows]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return out


# PPO hyperparameters (besides env count, steps, 64x64 tanh nets, lr 3e-4, no value clipping)
# shared by sb3_compare.py and sgd_floor.py; ``n`` is the number of parallel envs.
PRESETS = {
    # PureJaxRL / CleanRL-style: 128 steps per env, 4 epochs x 4 large minibatches, annealed lr
    "matched": lambda n: dict(num_steps=128, update_epochs=4, num_minibatches=4, ent_coef=0.01,
                              anneal_lr=True),
    # SB3's PPO defaults (n_steps 2048, batch_size 64, n_epochs 10, constant lr, ent_coef 0,
    # vf_coef 0.5 on mse = our 1.0 on 0.5 * mse), given to both learners
    "sb3-default": lambda n: dict(num_steps=2048, update_epochs=10, num_minibatches=n * 2048 // 64,
                                  ent_coef=0.0, vf_coef=1.0, anneal_lr=False),
}


def run_jax(cfg, env, params, seed: int, repeats: int = 1):
    """Compile ``make_train(cfg, env, params)`` once (timed apart), then run it ``repeats`` times.

    Returns ``(result, compile seconds, best run seconds)``.
    """
    import jax

    from tpfl_jax.agents.ppo import make_train

    train = jax.jit(make_train(cfg, env, params))
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    compiled = train.lower(key, params).compile()
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(key, params))
        best = min(best, time.perf_counter() - t0)
    return out, compile_s, best
