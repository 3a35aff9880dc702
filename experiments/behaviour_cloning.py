"""Representability: behaviour cloning of the best trend rule into the agent's own network.

Per market: the trend rule's lookback and TP are chosen on a training sample (as in every
report), the rule's episodes on fresh training paths are cloned into the PPO agent's network
(``ppo=agent``: 64x64, the same observation) by ``tpfl_jax.agents.bc.clone``, and the clone is
played greedy on held-out episodes beside the rule (the same episodes).

    python experiments/behaviour_cloning.py --out results/bc [--markets regime mixed gbm]

Writes ``bc.csv``, ``bc.md`` and ``bc.png`` (PnL per episode of rule and clone, 95% intervals)
into ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax import accounting as A
from tpfl_jax.agents.bc import clone
from tpfl_jax.agents.networks import make_network
from tpfl_jax.baselines import reference_candidates, run_strategies, stack, strategy_actor
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market.specs import SyntheticMarkets
from tpfl_jax.results import mean_ci
from tpfl_jax.stats import t_test


def one_market(kind: str, seed: int, episodes: int, steps: int, bc_steps: int) -> dict:
    env = TradingEnv(window=16)
    t_ep = 100
    spec = SyntheticMarkets(kind=kind, train_paths=episodes, deploy_paths=episodes, n_bars=300,
                            substeps=8)
    source = spec.source()
    train_m, test_m = spec.cycle_markets(source, jax.random.key(seed), 0)
    p_train = env.make_params(train_m, max_steps_in_episode=t_ep)
    p_test = p_train.replace(market=test_m)
    k_sel, k_fit, k_bc, k_test = jax.random.split(jax.random.key(seed + 1), 4)
    cands = reference_candidates(env)["trend"]
    sel = run_strategies(env, stack([s for _, s in cands]), jnp.zeros(1), p_train,
                         A.episode_keys(k_sel, episodes), t_ep).pnl.mean(-1)[:, 0]
    name, rule = cands[int(jnp.argmax(sel))]
    network = make_network(env, p_train, (64, 64))
    t0 = time.perf_counter()
    fit = jax.jit(lambda keys, k: clone(network, strategy_actor(env, rule, p_train), env,
                                        p_train, keys, t_ep, k, steps=bc_steps))(
        A.episode_keys(k_fit, episodes), k_bc)
    fit_s = time.perf_counter() - t0
    keys = A.episode_keys(k_test, episodes)
    play = jax.jit(lambda actor_params, p: A.rollout(
        env, A.network_actor(network, actor_params, greedy=True), p, keys, t_ep).sums.pnl)
    rule_pnl = np.asarray(jax.jit(lambda p: A.rollout(
        env, strategy_actor(env, rule, p), p, keys, t_ep).sums.pnl)(p_test))
    clone_pnl = np.asarray(play(fit.params, p_test))
    diff, lo, hi, _ = t_test(clone_pnl - rule_pnl)
    return {"market": kind, "rule": name, "rule_pnl": mean_ci(rule_pnl)[0],
            "rule_ci": mean_ci(rule_pnl)[1], "clone_pnl": mean_ci(clone_pnl)[0],
            "clone_ci": mean_ci(clone_pnl)[1], "ratio": clone_pnl.mean() / rule_pnl.mean(),
            "diff": diff, "diff_lo": lo, "diff_hi": hi,
            "agreement": float(fit.agreement), "final_loss": float(fit.loss[-100:].mean()),
            "episodes": episodes, "bc_steps": bc_steps, "fit_s": round(fit_s, 1)}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bc")
    ap.add_argument("--markets", nargs="+", default=["regime", "mixed", "gbm"])
    ap.add_argument("--episodes", type=int, default=512)
    ap.add_argument("--bc-steps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [one_market(k, a.seed, a.episodes, 100, a.bc_steps) for k in a.markets]
    df = pd.DataFrame(rows)
    df.to_csv(out / "bc.csv", index=False)
    from tpfl_jax.report import df_markdown

    (out / "bc.md").write_text(df_markdown(df.round(3)) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(df))
    ax.bar(x - 0.2, df.rule_pnl, 0.4, yerr=df.rule_ci, capsize=3, label="trend rule")
    ax.bar(x + 0.2, df.clone_pnl, 0.4, yerr=df.clone_ci, capsize=3, label="BC clone (greedy)")
    ax.set_xticks(x, [f"{m}\n{r}\nratio {q:.2f}" for m, r, q in zip(df.market, df.rule,
                                                                    df.ratio, strict=True)],
                  fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylabel="held-out PnL per episode", title="Behaviour cloning of the trend rule "
           "(64x64 network, agent's observation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bc.png", dpi=110)
    print(df.round(3).to_string(index=False))
    return df


if __name__ == "__main__":
    main()
