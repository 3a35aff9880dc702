"""Representability: behaviour cloning of a reference rule into the agent's own network, per
observation design (``env.features``).

Per market: the rule's parameters are chosen on a training sample (as in every report: the
``bayes`` filter's dead band and TP, or the trend rule's lookback and TP), the rule's episodes
on training paths are cloned into the PPO agent's network (``ppo=agent``: 64x64, inputs
standardised like PPO's ``obs_rms``) under each feature set by ``tpfl_jax.agents.bc.clone``, and
the clone is played greedy on held-out episodes beside the rule (the same episodes). For
``bayes`` the 16-bar filter (the filter restarted 16 bars back: what a 16-return window could
hold) is played on the same episodes too.

    python experiments/behaviour_cloning.py --out results/bc [--markets regime mixed]
        [--rule bayes|trend] [--features base vol scales long logret]

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
from tpfl_jax.agents.evaluate import network_actor
from tpfl_jax.agents.networks import make_network
from tpfl_jax.baselines import (
    bayes_edge,
    reference_candidates,
    stack,
    strategy_actor,
)
from tpfl_jax.env.trading import FEATURE_SETS, TradingEnv
from tpfl_jax.market.specs import SyntheticMarkets
from tpfl_jax.stats import mean_ci, t_test

T_EP = 100


def choose_rule(env: TradingEnv, family: str, p_train, edge, keys) -> tuple[str, object]:
    """The family's candidate with the best mean PnL on the training episodes ``keys``."""
    cands = reference_candidates(env, bayes=True)[family]
    pnl = jax.jit(lambda S: jax.vmap(lambda s: A.rollout(
        env, strategy_actor(env, s, p_train, edge), p_train, keys, T_EP).sums.pnl.mean())(S))(
        stack([s for _, s in cands]))
    return cands[int(jnp.argmax(pnl))]


def one_features(features: str, rule, data: dict, bc_steps: int, key: jax.Array) -> dict:
    """Clone ``rule`` under ``features``; rule, 16-bar rule and clone on the held-out keys."""
    t0 = time.perf_counter()
    env = TradingEnv(window=16, features=features)
    p_train = env.make_params(data["train"], max_steps_in_episode=T_EP)
    p_test = p_train.replace(market=data["test"])
    network = make_network(env, p_train, (64, 64))
    k_fit, k_bc = jax.random.split(key)
    fit = jax.jit(lambda keys, k: clone(
        network, strategy_actor(env, rule, p_train, data["e_train"]), env, p_train, keys, T_EP,
        k, steps=bc_steps, normalize=True))(A.episode_keys(k_fit, data["episodes"]), k_bc)
    jax.block_until_ready(fit.params)
    fit_s = time.perf_counter() - t0
    keys = data["test_keys"]

    @jax.jit
    def held_out(params, rms, p, e, e16):
        def pnl(actor):
            return A.rollout(env, actor, p, keys, T_EP).sums.pnl
        return (pnl(strategy_actor(env, rule, p, e)), pnl(strategy_actor(env, rule, p, e16)),
                pnl(network_actor(network, params, obs_rms=rms, greedy=True)))

    rule_pnl, rule16_pnl, clone_pnl = map(np.asarray, held_out(
        fit.params, fit.obs_rms, p_test, data["e_test"], data["e16_test"]))
    (r, r_ci), (c, c_ci) = mean_ci(rule_pnl), mean_ci(clone_pnl)
    _, lo, hi, _ = t_test(clone_pnl - rule_pnl)          # paired over the same episodes
    return {"features": features, "obs_size": env.obs_size, "rule_pnl": r, "rule_ci": r_ci,
            "rule16_pnl": float(rule16_pnl.mean()) if data["e16_test"] is not None else np.nan,
            "clone_pnl": c, "clone_ci": c_ci, "ratio": c / r, "ratio_lo": 1 + lo / r,
            "ratio_hi": 1 + hi / r,
            "agreement": float(fit.agreement), "final_loss": float(fit.loss[-100:].mean()),
            "fit_s": round(fit_s, 1), "wall_s": round(time.perf_counter() - t0, 1)}


def one_market(kind: str, family: str, features: list[str], seed: int, episodes: int,
               bc_steps: int) -> list[dict]:
    """Rows of one market: the rule chosen on training data, cloned under each feature set."""
    t0 = time.perf_counter()
    spec = SyntheticMarkets(kind=kind, train_paths=episodes, deploy_paths=episodes, n_bars=300,
                            substeps=8)
    source = spec.source()
    train_m, test_m = spec.cycle_markets(source, jax.random.key(seed), 0)
    bayes = family == "bayes"
    edges = jax.jit(lambda m: (bayes_edge(m, source), bayes_edge(m, source, 16)))
    (e_train, _), (e_test, e16_test) = edges(train_m), edges(test_m)
    if not bayes:
        e_train = e_test = e16_test = None
    k_sel, k_test, k_clone = jax.random.split(jax.random.key(seed + 1), 3)
    env = TradingEnv(window=16)
    p_train = env.make_params(train_m, max_steps_in_episode=T_EP)
    name, rule = choose_rule(env, family, p_train, e_train, A.episode_keys(k_sel, episodes))
    data = {"train": train_m, "test": test_m, "e_train": e_train, "e_test": e_test,
            "e16_test": e16_test, "episodes": episodes,
            "test_keys": A.episode_keys(k_test, episodes)}
    print(f"{kind}: {name} chosen on training data ({time.perf_counter() - t0:.1f}s)",
          flush=True)
    rows = []
    for f in features:
        row = {"market": kind, "rule": name, **one_features(f, rule, data, bc_steps, k_clone),
               "episodes": episodes, "bc_steps": bc_steps}
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
              flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bc")
    ap.add_argument("--markets", nargs="+", default=["regime", "mixed"])
    ap.add_argument("--rule", choices=["bayes", "trend"], default="bayes")
    ap.add_argument("--features", nargs="+", default=list(FEATURE_SETS))
    ap.add_argument("--episodes", type=int, default=512)
    ap.add_argument("--bc-steps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for k in a.markets
            for r in one_market(k, a.rule, a.features, a.seed, a.episodes, a.bc_steps)]
    df = pd.DataFrame(rows)
    df.to_csv(out / "bc.csv", index=False)
    from tpfl_jax.report import df_markdown

    (out / "bc.md").write_text(df_markdown(df.round(3)) + "\n")
    plot(df, out / "bc.png", a.rule)
    print(df.round(3).to_string(index=False))
    return df


def plot(df: pd.DataFrame, path: Path, rule: str) -> None:
    """Rule and clone PnL per market x feature set (95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(df)), 3.8))
    x = np.arange(len(df))
    ax.bar(x - 0.2, df.rule_pnl, 0.4, yerr=df.rule_ci, capsize=3, label=f"{rule} rule")
    ax.bar(x + 0.2, df.clone_pnl, 0.4, yerr=df.clone_ci, capsize=3, label="BC clone (greedy)")
    ax.set_xticks(x, [f"{m}\n{f}\nratio {q:.2f}" for m, f, q in zip(df.market, df.features,
                                                                    df.ratio, strict=True)],
                  fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylabel="held-out PnL per episode", title=f"Behaviour cloning of the {rule} rule "
           "(64x64 network) per feature set")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
