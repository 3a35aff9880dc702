"""``tpfl-demo``: the trading env on synthetic regime-switching data with a random and a
trend-following policy, one episode per env through ``accounting.rollout`` (``vmap`` +
``lax.scan``); prints per-exit-reason tables and the accounting metrics."""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import pandas as pd

from tpfl_jax import accounting
from tpfl_jax.accounting import exit_reason_table
from tpfl_jax.env.frames import trades_frame
from tpfl_jax.env.trading import TradingEnv, encode_action
from tpfl_jax.market import synthetic


def trend_actor(env: TradingEnv) -> accounting.Actor:
    """Long (short) with the middle TP when the window's mean return is positive (negative)."""
    mid = env.n_tp // 2
    long_, short = encode_action(1, mid, env.n_tp), encode_action(-1, mid, env.n_tp)
    return lambda obs, state, key: jnp.where(obs[: env.window].mean() > 0, long_, short)


def random_actor(env: TradingEnv) -> accounting.Actor:
    """A uniformly random action every step."""
    return lambda obs, state, key: jax.random.randint(key, (), 0, env.num_actions)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tpfl-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=512, help="episodes (one per env)")
    ap.add_argument("--steps", type=int, default=400, help="steps per episode")
    ap.add_argument("--weight", type=float, default=1.0, help="tp_reward_weight")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("envs", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} = {getattr(args, name)}; expected >= 1")

    env = TradingEnv()
    market = synthetic.generate("regime", jax.random.key(args.seed), n_paths=64,
                                n_bars=args.steps + env.window + 64)
    params = env.make_params(market, tp_reward_weight=args.weight,
                             max_steps_in_episode=args.steps)
    keys = accounting.episode_keys(jax.random.key(args.seed + 1), args.envs)
    pd.set_option("display.width", 120)
    for name, actor in [("random", random_actor(env)), ("trend-following", trend_actor(env))]:
        t0 = time.perf_counter()
        out = jax.device_get(jax.jit(lambda p, k, a=actor: accounting.rollout(
            env, a, p, k, args.steps, keep_trades=True))(params, keys))
        dt = time.perf_counter() - t0
        m = accounting.finalize(out.sums)
        print(f"\n== {name} policy: {args.envs} episodes x {args.steps} steps in {dt:.1f}s "
              f"(compile included); PnL per episode {float(m['pnl']):+.1f}, hit rate "
              f"{float(m['hit_rate']):.3f}, mean R {float(m['mean_r']):+.3f}, "
              f"tp_reward_weight {args.weight}")
        print(exit_reason_table(trades_frame(out.trades, out.active)).round(4).to_string())


if __name__ == "__main__":
    main()
