"""Does ``tp_reward_weight`` change what PPO learns on ``TradingEnv`` (calibrated reward)?

Trains K weights x S seeds in ONE compiled program (``vmap(vmap(train))``) on a synthetic market
(``--market``), then evaluates every agent greedily (argmax) and as trained (sampled) on
held-out paths (a different key), beside reference rules on the same held-out market: flat,
buy-and-hold, the trend rule with its TP chosen on the training market. Every weight trains
from the same seed keys on the same market (common random numbers), so the effect of the
weight is read from *paired* per-seed differences against weight 0 (mean and 95% t-interval
over seeds) for the chosen TP distance, the hit rate, trades and PnL. Training is reported
with its final entropy against the maximum ``log(n_actions)`` and its training return, so an
untrained (uniform) agent is visible. Writes ``results/weight_sweep/<market>/`` (per-seed CSV,
tables, markdown).

    python experiments/weight_sweep.py [--market regime] [--weights 0 0.5 1 2] [--seeds 4]
                                       [--features base]
                                       [--steps 524288]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax.accounting import episode_keys, train_info_metrics
from tpfl_jax.agents.evaluate import evaluate
from tpfl_jax.agents.ppo import PPOConfig, make_train
from tpfl_jax.audit import ci95
from tpfl_jax.baselines import reference_set, run_strategies, stack
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market import synthetic

METRICS = ("pnl_per_episode", "mean_tp_mult", "tp_hit_rate", "trades_per_episode", "mean_r")


def _trade_row(ev) -> dict[str, float]:
    """The row's metrics, by ``tpfl_jax.accounting``'s definitions (``ev.metrics``)."""
    m = ev.metrics
    return dict(pnl_per_episode=m["pnl"], mean_tp_mult=m["mean_tp_mult"],
                tp_hit_rate=m["hit_rate"], trades_per_episode=m["trades"], mean_r=m["mean_r"],
                episode_return=m["reward"])


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--market", default="regime",
                    choices=["gbm", "regime", "garch", "merton", "mixed"])
    ap.add_argument("--features", default="base",
                    help="observation design (base: the recorded sweep's). The sweep's PPO "
                         "does not normalise observations, which the default vol needs")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=524_288, help="env steps per agent")
    ap.add_argument("--episodes", type=int, default=256, help="held-out episodes per agent")
    ap.add_argument("--out", default="results/weight_sweep")
    args = ap.parse_args(argv)
    if 0.0 not in args.weights:
        ap.error("--weights must include 0 (the control every weight is paired against)")

    env = TradingEnv(window=16, n_tp=5, features=args.features)
    ep_len = 100
    train_mkt = synthetic.generate(args.market, jax.random.key(0), n_paths=64, n_bars=1024)
    test_mkt = synthetic.generate(args.market, jax.random.key(10_000), n_paths=64, n_bars=1024)
    params = env.make_params(train_mkt, max_steps_in_episode=ep_len)
    cfg = PPOConfig(num_envs=64, num_steps=64, total_timesteps=args.steps, update_epochs=4,
                    num_minibatches=8, widths=(64, 64), lr=3e-4, ent_coef=0.01,
                    normalize_reward=True)
    weights = jnp.asarray(args.weights, jnp.float32)
    axes = jax.tree.map(lambda _: None, params).replace(tp_reward_weight=0)
    train = make_train(cfg, env, params, info_metrics=train_info_metrics)
    sweep = jax.jit(jax.vmap(jax.vmap(train, (0, None)), (None, axes)))
    keys = jax.random.split(jax.random.key(1), args.seeds)
    t0 = time.perf_counter()
    result = jax.block_until_ready(sweep(keys, params.replace(tp_reward_weight=weights)))
    wall = time.perf_counter() - t0
    n_steps = len(args.weights) * args.seeds * cfg.num_updates * cfg.batch_size
    print(f"[{args.market}] trained {len(args.weights)} weights x {args.seeds} seeds x "
          f"{cfg.num_updates * cfg.batch_size} steps in {wall:.1f}s (compile included): "
          f"{n_steps / wall:,.0f} env-steps/s")
    m = jax.device_get(result.metrics)
    tail = max(1, cfg.num_updates // 10)          # the last 10% of updates
    max_ent = math.log(env.num_actions)

    rows = []
    for i, w in enumerate(args.weights):
        test = env.make_params(test_mkt, max_steps_in_episode=ep_len, tp_reward_weight=w)
        for s in range(args.seeds):
            net = jax.tree.map(lambda x, i=i, s=s: x[i, s], result.params)
            row = dict(weight=w, seed=s,
                       train_entropy=float(np.mean(m["entropy"][i, s, -tail:])),
                       train_return=float(np.nanmean(m["episode_return"][i, s, -tail:])))
            for mode, det in (("greedy", True), ("sampled", False)):
                ev = evaluate(net, env, test, jax.random.key(100 + s), args.episodes,
                              deterministic=det, config=cfg)
                row |= {f"{mode}/{k}": v for k, v in _trade_row(ev).items()}
            rows.append(row)
    per_seed = pd.DataFrame(rows)

    # references on the held-out market (the rules ignore the weight; PnL is weight-free); the
    # trend rule's TP is chosen on the training market, never on the held-out episodes
    from tpfl_jax.accounting import finalize

    refs = reference_set(env)
    names = ["flat", "buy_and_hold", *[f"trend_tp{k}" for k in range(env.n_tp)]]
    strat = stack([refs[n] for n in names])
    zero = jnp.zeros((1,), jnp.float32)
    sel = run_strategies(env, strat, zero, params, episode_keys(jax.random.key(78),
                                                                args.episodes), ep_len)
    trend = max((n for n in names if n.startswith("trend")),
                key=lambda n: float(sel.pnl[names.index(n), 0].mean()))
    test0 = env.make_params(test_mkt, max_steps_in_episode=ep_len)
    out = jax.device_get(run_strategies(env, strat, zero, test0,
                                        episode_keys(jax.random.key(77), args.episodes), ep_len))
    fin = finalize(out)
    ref = pd.DataFrame({
        "rule": names,
        "pnl_per_episode": fin["pnl"][:, 0],
        "pnl_ci95": [ci95(out.pnl[j, 0]) for j in range(len(names))],
        "trades_per_episode": fin["trades"][:, 0],
        "tp_hit_rate": fin["hit_rate"][:, 0],
    })
    ref = ref[~ref.rule.str.startswith("trend") | (ref.rule == trend)]

    # per weight: mean and CI over seeds; paired differences against weight 0
    summ, paired = [], []
    base = per_seed[per_seed.weight == 0.0].set_index("seed")
    for w, g in per_seed.groupby("weight"):
        g = g.set_index("seed")
        rec = {"weight": w, "train_entropy": g.train_entropy.mean(),
               "entropy_of_max": g.train_entropy.mean() / max_ent,
               "train_return": g.train_return.mean()}
        for mode in ("greedy", "sampled"):
            for k in METRICS:
                rec[f"{mode}/{k}"] = g[f"{mode}/{k}"].mean()
            rec[f"{mode}/pnl_ci95"] = ci95(g[f"{mode}/pnl_per_episode"])
        summ.append(rec)
        if w == 0.0:
            continue
        for mode in ("greedy", "sampled"):
            for k in METRICS:
                d = (g[f"{mode}/{k}"] - base[f"{mode}/{k}"]).dropna()
                lo, hi = d.mean() - ci95(d), d.mean() + ci95(d)
                paired.append({"weight": w, "mode": mode, "metric": k, "diff_vs_w0": d.mean(),
                               "ci_low": lo, "ci_high": hi, "n_seeds": len(d),
                               "beyond_noise": bool(lo > 0 or hi < 0)})
    summary = pd.DataFrame(summ)
    paired_df = pd.DataFrame(paired)

    out_dir = Path(args.out) / args.market
    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed.to_csv(out_dir / "per_seed.csv", index=False)
    summary.to_csv(out_dir / "table.csv", index=False)
    paired_df.to_csv(out_dir / "paired_vs_w0.csv", index=False)
    ref.to_csv(out_dir / "references.csv", index=False)
    pd.set_option("display.width", 200)
    show = ["weight", "entropy_of_max", "train_return", "greedy/pnl_per_episode",
            "greedy/pnl_ci95", "sampled/pnl_per_episode", "greedy/mean_tp_mult",
            "greedy/tp_hit_rate", "greedy/trades_per_episode"]
    steps = cfg.num_updates * cfg.batch_size
    text = (f"# Weight sweep on `{args.market}` ({args.seeds} seeds, {steps:,} steps per "
            f"agent, {args.episodes} held-out episodes)\n\n"
            f"```\n{summary[show].round(3).to_string(index=False)}\n```\n\n"
            f"References on the held-out market:\n\n```\n{ref.round(3).to_string(index=False)}"
            f"\n```\n\nPaired differences against weight 0 (greedy):\n\n```\n"
            f"{paired_df[paired_df['mode'] == 'greedy'].round(3).to_string(index=False)}\n```\n")
    (out_dir / "README.md").write_text(text)
    print(text)
    print(f"tables: {out_dir}/")
    return {"summary": summary, "paired": paired_df, "references": ref, "per_seed": per_seed}


if __name__ == "__main__":
    main()
