"""Does ``tp_reward_weight`` change what PPO learns on ``TradingEnv``?

Trains K weights x S seeds in ONE compiled program (``vmap(vmap(train))``) on a synthetic
regime-switching market, then evaluates every agent deterministically on held-out paths
(a different key) next to a uniformly random agent under the same reward. Prints and writes
(``results/weight_sweep/``) a table per weight: mean episode return (trained vs random), chosen
TP distance, TP hit rate, realised R, trades per episode, PnL per episode.

    python experiments/weight_sweep.py [--weights 0 0.5 1 2 5] [--seeds 2] [--steps 262144]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pandas as pd

from tpfl_jax.agents.evaluate import evaluate
from tpfl_jax.agents.ppo import PPOConfig, make_train
from tpfl_jax.demo import random_policy, run_policy
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market import synthetic


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 5.0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=262_144, help="env steps per agent")
    ap.add_argument("--episodes", type=int, default=256, help="held-out episodes per agent")
    ap.add_argument("--out", default="results/weight_sweep")
    args = ap.parse_args(argv)

    env = TradingEnv(window=16, n_tp=5)
    ep_len = 128
    train_mkt = synthetic.generate("regime", jax.random.key(0), n_paths=64, n_bars=1024)
    test_mkt = synthetic.generate("regime", jax.random.key(10_000), n_paths=64, n_bars=1024)
    params = env.make_params(train_mkt, max_steps_in_episode=ep_len)
    cfg = PPOConfig(num_envs=64, num_steps=64, total_timesteps=args.steps, update_epochs=4,
                    num_minibatches=8, widths=(64, 64), lr=3e-4, ent_coef=0.01)
    weights = jnp.asarray(args.weights, jnp.float32)
    axes = jax.tree.map(lambda _: None, params).replace(tp_reward_weight=0)
    train = make_train(cfg, env, params)
    sweep = jax.jit(jax.vmap(jax.vmap(train, (0, None)), (None, axes)))
    keys = jax.random.split(jax.random.key(1), args.seeds)
    t0 = time.perf_counter()
    result = jax.block_until_ready(sweep(keys, params.replace(tp_reward_weight=weights)))
    wall = time.perf_counter() - t0
    n_steps = len(args.weights) * args.seeds * cfg.num_updates * cfg.batch_size
    print(f"trained {len(args.weights)} weights x {args.seeds} seeds x "
          f"{cfg.num_updates * cfg.batch_size} steps in {wall:.1f}s (compile included): "
          f"{n_steps / wall:,.0f} env-steps/s")

    rows = []
    for i, w in enumerate(args.weights):
        test = env.make_params(test_mkt, max_steps_in_episode=ep_len, tp_reward_weight=w)
        rew, _ = run_policy(env, test, random_policy, jax.random.key(7), args.episodes, ep_len)
        random_return = float(rew.sum(0).mean())
        for s in range(args.seeds):
            net = jax.tree.map(lambda x, i=i, s=s: x[i, s], result.params)
            ev = evaluate(net, env, test, jax.random.key(100 + s), args.episodes,
                          deterministic=True, config=cfg)
            t = ev.trades
            n = max(len(t), 1)
            rows.append(dict(
                weight=w, seed=s, episode_return=float(ev.returns.mean()),
                random_return=random_return, mean_tp_mult=float(t["tp_mult"].mean()),
                tp_hit_rate=float((t["exit_reason"] == "tp").sum() / n),
                mean_r=float(t["r_realised"].mean()), trades_per_episode=len(t) / args.episodes,
                pnl_per_episode=float(t["pnl"].sum() / args.episodes)))
    df = pd.DataFrame(rows)
    table = df.groupby("weight").mean(numeric_only=True).drop(columns="seed")
    table["beats_random"] = table["episode_return"] > table["random_return"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "per_seed.csv", index=False)
    table.to_csv(out / "table.csv")
    pd.set_option("display.width", 160)
    print(table.round(3).to_string())
    print(f"tables: {out}/")
    return table


if __name__ == "__main__":
    main()
