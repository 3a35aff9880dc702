"""Raw env throughput scaling curve: TradingEnv vs gymnax CartPole-v1 over 1..65,536 envs.

Same harness as ``env_throughput.py`` (random actions, ``jit(vmap(step))`` in ``lax.scan``; its
``measure`` is reused), same process, so the ratio is comparable across machines. Steps per run
shrink as envs grow (``--budget`` env steps per run, at least ``--min-steps``).

    python benchmarks/env_scaling.py --quick        # 1, 16, 256, 4096, 65536 envs
    python benchmarks/env_scaling.py                # powers of 4 from 1 to 65,536
    python benchmarks/env_scaling.py --envs 65536 262144 1048576 --budget 50000000   # GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnax
import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import machine, write_csv  # noqa: E402
from env_throughput import measure  # noqa: E402

from tpfl_jax.env.trading import TradingEnv  # noqa: E402
from tpfl_jax.market import synthetic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--envs", type=int, nargs="+", default=[4**i for i in range(9)])
    ap.add_argument("--budget", type=int, default=4_000_000, help="env steps per timed run")
    ap.add_argument("--min-steps", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    if args.quick:
        args.envs, args.budget, args.repeats, args.max_steps = [1, 16, 256, 4096, 65536], \
            1_000_000, 2, 500

    trading = TradingEnv()
    t_params = trading.make_params(synthetic.generate("regime", jax.random.key(0), 64, 1024))
    cart, c_params = gymnax.make("CartPole-v1")
    print(f"machine: {machine()}")
    print(f"{'envs':>8} {'steps':>6} {'trading steps/s':>16} {'cartpole steps/s':>17} "
          f"{'ratio':>6} {'compile trading s':>18}")
    rows = []
    for n in args.envs:
        steps = max(args.min_steps, min(args.max_steps, args.budget // n))
        tc, ts = measure(trading, t_params, n, steps, args.repeats)
        cc, cs = measure(cart, c_params, n, steps, args.repeats)
        rows.append(dict(envs=n, steps=steps, trading_sps=ts, cartpole_sps=cs, ratio=ts / cs,
                         trading_compile_s=tc, cartpole_compile_s=cc))
        print(f"{n:>8} {steps:>6} {ts:>16,.0f} {cs:>17,.0f} {ts / cs:>6.2f} {tc:>18.2f}")
    write_csv(rows, "env_scaling.csv", args.csv)


if __name__ == "__main__":
    main()
