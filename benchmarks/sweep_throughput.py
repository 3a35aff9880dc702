"""PPO training throughput of a seeds x weights sweep on TradingEnv, sharded over all devices.

Uses ``tpfl_jax.sweeps.make_ppo_sweep`` (one program, the S*K configurations split over the
mesh; one device on CPU, every GPU/TPU core on an accelerator host). Prints env-steps/s
(training, env steps of all configurations / wall time after compile) and compile time.

    python benchmarks/sweep_throughput.py --quick   # 64 envs x 2 seeds x 2 weights
    python benchmarks/sweep_throughput.py --envs 4096 --seeds 8 --weights 0 0.5 1 2   # GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import machine, write_csv  # noqa: E402

from tpfl_jax import distributed as D  # noqa: E402
from tpfl_jax.agents.ppo import PPOConfig  # noqa: E402
from tpfl_jax.env.trading import TradingEnv  # noqa: E402
from tpfl_jax.market import synthetic  # noqa: E402
from tpfl_jax.sweeps import make_ppo_sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--envs", type=int, default=256, help="envs per configuration")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--num-steps", type=int, default=32)
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    if args.quick:
        args.envs, args.seeds, args.weights, args.updates = 64, 2, [0.5, 2.0], 4

    env = TradingEnv()
    params = env.make_params(synthetic.generate("regime", jax.random.key(0), 64, 1024))
    cfg = PPOConfig(num_envs=args.envs, num_steps=args.num_steps,
                    total_timesteps=args.envs * args.num_steps * args.updates,
                    update_epochs=args.epochs, num_minibatches=args.minibatches)
    mesh_cfg = D.MeshConfig(on_indivisible="pad")
    sweep = make_ppo_sweep(cfg, env, mesh_cfg=mesh_cfg, env_params=params)
    s, k = args.seeds, len(args.weights)
    n_steps = s * k * cfg.num_updates * cfg.batch_size
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    jax.block_until_ready(sweep(s, args.weights, params))           # compile + first run
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(sweep(s, args.weights, params))
    run_s = time.perf_counter() - t0
    sps = n_steps / run_s
    ret = jax.device_get(out.metrics["reward"][..., -1]).mean(0)
    print(f"{s} seeds x {k} weights x {args.envs} envs, {cfg.num_updates} updates of "
          f"{cfg.num_steps} steps on {jax.device_count()} device(s): {n_steps:,} env steps in "
          f"{run_s:.2f} s = {sps:,.0f} env-steps/s training (first call incl. compile "
          f"{first_s:.1f} s)")
    print("last-update mean step reward per weight:",
          {w: round(float(r), 2) for w, r in zip(args.weights, ret, strict=True)})
    write_csv([dict(envs=args.envs, seeds=s, weights=k, num_steps=cfg.num_steps,
                    updates=cfg.num_updates, devices=jax.device_count(), env_steps=n_steps,
                    run_s=run_s, first_call_s=first_s, env_steps_per_s=sps)],
              "sweep_throughput.csv", args.csv)


if __name__ == "__main__":
    main()
