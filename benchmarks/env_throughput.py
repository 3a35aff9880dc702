"""Raw env throughput: random actions, a batch step inside ``lax.scan``.

Runs ``TradingEnv`` on ``--markets`` (default gbm, regime, merton) and gymnax ``CartPole-v1``
under the identical harness in the same process and prints env-steps/s, their ratio and compile
times. The batch step is the one PPO uses: ``env.step_batch`` where the env has one
(``TradingEnv``: auto-resets computed only on steps where some env is done), else
``vmap(env.step)``; ``--vmap-step`` forces ``vmap(env.step)`` for every env. By default the
rollout keeps only states and rewards, so XLA drops the observations; ``--obs`` also sums the
observation and ``info["final_observation"]`` into the total, as a trainer (PPO) reads both.
``--features`` picks ``TradingEnv``'s observation design. Usage:

    python benchmarks/env_throughput.py [--envs 256 4096] [--markets gbm regime merton]
        [--steps 2000] [--repeats 5] [--vmap-step] [--obs] [--features vol] [--csv F]
"""

from __future__ import annotations

import argparse
import csv
import time

import gymnax
import jax
import jax.numpy as jnp

from tpfl_jax.env.trading import DEFAULT_FEATURES, TradingEnv
from tpfl_jax.market import synthetic


def batch_step(env, vmap_step: bool = False):
    """The batch step PPO uses for ``env`` (``step_batch`` when it has one)."""
    own = None if vmap_step else getattr(env, "step_batch", None)
    return own or jax.vmap(env.step, (0, 0, 0, None))


def make_rollout(env, params, n_envs: int, n_steps: int, vmap_step: bool = False,
                 use_obs: bool = False):
    n_actions = env.action_space(params).n
    step = batch_step(env, vmap_step)

    def rollout(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, (0, None))(jax.random.split(k_reset, n_envs), params)

        def body(carry, k):
            state, acc = carry
            k_act, k_step = jax.random.split(k)
            actions = jax.random.randint(k_act, (n_envs,), 0, n_actions)
            obs, state, reward, _, _, info = step(jax.random.split(k_step, n_envs), state,
                                                  actions, params)
            acc = acc + reward.sum()
            if use_obs:     # read both observations, as PPO does (scaled: the sum stays finite)
                acc = acc + 1e-9 * (obs.sum() + info["final_observation"].sum())
            return (state, acc), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.float32(0.0)),
                                     jax.random.split(k_run, n_steps))
        return total

    return jax.jit(rollout)


def compile_rollout(env, params, n_envs: int, n_steps: int, vmap_step: bool = False,
                    use_obs: bool = False):
    """(compiled rollout, compile seconds)."""
    fn = make_rollout(env, params, n_envs, n_steps, vmap_step, use_obs)
    t0 = time.perf_counter()
    compiled = fn.lower(jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(jax.random.key(1)))
    return compiled, compile_s


def best_rates(compiled: list, n_envs: int, n_steps: int, repeats: int) -> list[float]:
    """Best env-steps/s of each compiled rollout, runs interleaved so that load spikes on a
    shared machine hit every candidate alike."""
    best = [0.0] * len(compiled)
    for r in range(repeats):
        for i, fn in enumerate(compiled):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(jax.random.key(2 + r)))
            best[i] = max(best[i], n_envs * n_steps / (time.perf_counter() - t0))
    return best


def measure(env, params, n_envs: int, n_steps: int, repeats: int,
            vmap_step: bool = False) -> tuple[float, float]:
    """(compile seconds, best env-steps/s over ``repeats`` runs) of one env."""
    compiled, compile_s = compile_rollout(env, params, n_envs, n_steps, vmap_step)
    return compile_s, best_rates([compiled], n_envs, n_steps, repeats)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--markets", nargs="+", default=["gbm", "regime", "merton"])
    # 2000 steps: runs long enough (>= 0.1 s at 256 envs) that dispatch overhead is amortised
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vmap-step", action="store_true",
                    help="vmap(env.step) for every env instead of its own batch step")
    ap.add_argument("--obs", action="store_true",
                    help="read the observation and final observation of every step")
    ap.add_argument("--features", default=DEFAULT_FEATURES,
                    help="TradingEnv observation design (default: the package's)")
    ap.add_argument("--csv", default=None, help="write the table to this CSV file")
    args = ap.parse_args()

    trading = TradingEnv(features=args.features)
    params = {k: trading.make_params(synthetic.generate(k, jax.random.key(0), n_paths=64,
                                                        n_bars=1024, substeps=8))
              for k in args.markets}
    cart, c_params = gymnax.make("CartPole-v1")
    rows = []
    step = "vmap(step)" if args.vmap_step else "step_batch"
    print(f"device: {jax.devices()[0].device_kind}  steps/run: {args.steps}  TradingEnv: {step}"
          f"  features: {args.features}  observations read: {args.obs}")
    print(f"{'envs':>7} {'market':>7} {'trading steps/s':>16} {'cartpole steps/s':>17} "
          f"{'ratio':>6} {'compile trading s':>18} {'compile cartpole s':>19}")
    for n in args.envs:
        fns = [compile_rollout(trading, params[k], n, args.steps, args.vmap_step, args.obs)
               for k in args.markets]
        c_fn, cc = compile_rollout(cart, c_params, n, args.steps, args.vmap_step, args.obs)
        rates = best_rates([f for f, _ in fns] + [c_fn], n, args.steps, args.repeats)
        cs = rates[-1]
        for k, (_, tc), ts in zip(args.markets, fns, rates, strict=False):
            rows.append(dict(envs=n, market=k, step=step, features=args.features,
                             obs=args.obs, trading_sps=ts, cartpole_sps=cs,
                             ratio=ts / cs, trading_compile_s=tc, cartpole_compile_s=cc,
                             device=jax.devices()[0].device_kind))
            print(f"{n:>7} {k:>7} {ts:>16,.0f} {cs:>17,.0f} {ts / cs:>6.2f} {tc:>18.2f} "
                  f"{cc:>19.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
