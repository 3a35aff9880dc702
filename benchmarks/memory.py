"""Peak host RSS and device memory of a PPO sweep (envs x seeds), and metrics staying O(updates).

Each configuration runs in a fresh subprocess (so ``ru_maxrss`` is its own peak): PPO on
``TradingEnv`` with ``--envs`` envs per seed, ``--seeds`` seeds vmapped in one program, at two
update counts. Reported per run: peak host RSS, XLA's compiled memory analysis (temp / argument /
output bytes: the device-memory plan, available on every backend), the device's
``memory_stats()`` peak where the backend has one (GPU/TPU), and the bytes of the returned
metrics. Metrics are reduced on device per update, so temp memory is the same at both update
counts and only the ``[seeds, num_updates]`` metrics grow (linearly, a few bytes per update).

    python benchmarks/memory.py --quick             # 256 envs x 8 seeds, 2 vs 8 updates
    python benchmarks/memory.py                     # 4096 envs x 64 seeds, 2 vs 8 updates

Both update counts are >= 2: XLA simplifies a one-iteration update loop, which makes a 1-update
program's temp memory smaller than every longer run's (at 4096 x 64 on CPU: 2.6 GB at 1 update,
3.6 GB at 2, 4, 8, ... updates), so comparing against 1 update would look like growth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]


def child(envs: int, seeds: int, steps: int, updates: int, run: bool) -> dict:
    """One measurement in this process; returns a JSON-able dict."""
    import jax

    from tpfl_jax.agents.ppo import PPOConfig, make_train
    from tpfl_jax.env.trading import TradingEnv
    from tpfl_jax.market import synthetic

    env = TradingEnv()
    params = env.make_params(synthetic.generate("regime", jax.random.key(0), 64, 1024))
    cfg = PPOConfig(num_envs=envs, num_steps=steps, total_timesteps=envs * steps * updates,
                    update_epochs=2, num_minibatches=4)
    train = jax.jit(jax.vmap(make_train(cfg, env, params), (0, None)))
    keys = jax.random.split(jax.random.key(0), seeds)
    t0 = time.perf_counter()
    compiled = train.lower(keys, params).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    res = dict(envs=envs, seeds=seeds, num_steps=steps, updates=updates,
               env_steps=envs * seeds * steps * updates, compile_s=compile_s,
               xla_temp_mb=ma.temp_size_in_bytes / 2**20,
               xla_argument_mb=ma.argument_size_in_bytes / 2**20,
               xla_output_mb=ma.output_size_in_bytes / 2**20)
    if run:
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(keys, params))
        res["run_s"] = time.perf_counter() - t0
        res["env_steps_per_s"] = res["env_steps"] / res["run_s"]
        res["metrics_bytes"] = sum(x.nbytes for x in jax.tree.leaves(out.metrics))
        res["metrics_shape"] = str(out.metrics["loss"].shape)
    stats = jax.devices()[0].memory_stats() or {}
    res["device_peak_mb"] = stats.get("peak_bytes_in_use", float("nan")) / 2**20
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--envs", type=int, default=4096)
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--num-steps", type=int, default=16)
    ap.add_argument("--updates", type=int, nargs=2, default=[2, 8])
    ap.add_argument("--compile-only", action="store_true",
                    help="XLA memory plan only (no run, no RSS of the run)")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    if args.quick:
        args.envs, args.seeds, args.updates = 256, 8, [2, 8]

    from _bench import machine, write_csv

    print(f"machine: {machine()}")
    rows = []
    for u in args.updates:
        spec = dict(envs=args.envs, seeds=args.seeds, steps=args.num_steps, updates=u,
                    run=not args.compile_only)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    keys = ["envs", "seeds", "updates", "env_steps", "peak_rss_mb", "xla_temp_mb",
            "xla_output_mb", "device_peak_mb", "metrics_bytes", "env_steps_per_s"]
    print(" ".join(f"{k:>15}" for k in keys))
    for r in rows:
        print(" ".join(f"{r.get(k, float('nan')):>15,.1f}" if isinstance(r.get(k), float)
                       else f"{r.get(k, '-')!s:>15}" for k in keys))
    a, b = rows
    print(f"updates x{b['updates'] / a['updates']:.0f}: temp memory x"
          f"{b['xla_temp_mb'] / max(a['xla_temp_mb'], 1e-9):.2f}, peak RSS x"
          f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}"
          + (f", metrics bytes x{b['metrics_bytes'] / a['metrics_bytes']:.2f}"
             if "metrics_bytes" in a else ""))
    write_csv(rows, "memory.csv", args.csv)


if __name__ == "__main__":
    main()
