"""Raw env throughput: random actions, ``jit(vmap(step))`` inside ``lax.scan``.

Runs ``TradingEnv`` and gymnax ``CartPole-v1`` under the identical harness in the same
process and prints env-steps/s, their ratio and compile times. Usage:

    python benchmarks/env_throughput.py [--envs 256 4096] [--steps 500] [--repeats 3] [--csv F]
"""

from __future__ import annotations

import argparse
import csv
import time

import gymnax
import jax
import jax.numpy as jnp

from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market import synthetic


def make_rollout(env, params, n_envs: int, n_steps: int):
    n_actions = env.action_space(params).n

    def rollout(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, (0, None))(jax.random.split(k_reset, n_envs), params)

        def body(carry, k):
            state, acc = carry
            k_act, k_step = jax.random.split(k)
            actions = jax.random.randint(k_act, (n_envs,), 0, n_actions)
            _, state, reward, *_ = jax.vmap(env.step, (0, 0, 0, None))(
                jax.random.split(k_step, n_envs), state, actions, params)
            return (state, acc + reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.float32(0.0)),
                                     jax.random.split(k_run, n_steps))
        return total

    return jax.jit(rollout)


def measure(env, params, n_envs: int, n_steps: int, repeats: int) -> tuple[float, float]:
    """(compile seconds, best env-steps/s over ``repeats`` runs)."""
    fn = make_rollout(env, params, n_envs, n_steps)
    t0 = time.perf_counter()
    compiled = fn.lower(jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(jax.random.key(1)))
    best = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(jax.random.key(2 + r)))
        best = max(best, n_envs * n_steps / (time.perf_counter() - t0))
    return compile_s, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--csv", default=None, help="write the table to this CSV file")
    args = ap.parse_args()

    trading = TradingEnv()
    market = synthetic.generate("regime", jax.random.key(0), n_paths=64, n_bars=1024)
    t_params = trading.make_params(market)
    cart, c_params = gymnax.make("CartPole-v1")
    rows = []
    print(f"device: {jax.devices()[0].device_kind}  steps/run: {args.steps}")
    print(f"{'envs':>7} {'trading steps/s':>16} {'cartpole steps/s':>17} {'ratio':>6} "
          f"{'compile trading s':>18} {'compile cartpole s':>19}")
    for n in args.envs:
        tc, ts = measure(trading, t_params, n, args.steps, args.repeats)
        cc, cs = measure(cart, c_params, n, args.steps, args.repeats)
        rows.append(dict(envs=n, trading_sps=ts, cartpole_sps=cs, ratio=ts / cs,
                         trading_compile_s=tc, cartpole_compile_s=cc,
                         device=jax.devices()[0].device_kind))
        print(f"{n:>7} {ts:>16,.0f} {cs:>17,.0f} {ts / cs:>6.2f} {tc:>18.2f} {cc:>19.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
