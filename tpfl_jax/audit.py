"""Reward audit: does the reward rank the reference strategies as their PnL does, and can the TP
bonus be farmed at the weights the CLM sets?

:func:`run_audit` rolls every reference strategy of :mod:`tpfl_jax.baselines` x every audited
weight x ``episodes`` common-random-number episodes in one jitted program, then reports on the host:

* a table per strategy and weight: mean and 95% t-interval of PnL, return, reward and every reward
  term per episode, trades, hit rate, mean realised R, mean TP distance and the bonus share (the
  bonus's part of the absolute reward mass, ``sum|bonus| / sum over terms of |term|``);
* ``tau``: Kendall's tau-b between mean reward at weight 0 and mean PnL over the ranking set
  ``{flat, buy_and_hold, trend (best TP in hindsight), churn, oracle (best TP in hindsight)}``
  (the oracle only where the market has regime labels), and its discordant pairs, each marked
  *separated* when the two rules' PnL differ beyond noise (paired 95% t-interval over the
  common episodes excludes 0) or *within noise* otherwise (the reward also charges drawdown,
  so it may order two rules of equal PnL either way);
* the **churn break-even weight**: the smallest weight at which churn's mean reward reaches the
  best profitable reference's (rewards are exactly linear in the weight for a fixed rule, so it is
  solved from weight 0 and the bonus per unit weight; ``inf``: never);
* the no-skill bonus table: per TP distance, the bonus per trade and per episode at weight 1 that
  a coin-flip trader collects under each accuracy definition, beside the gambler's-ruin values.

Checks of the calibrated default (tests and the README): no separated discordant pair
(``tau_ok``; tau = 1 when no pair is within noise either) and break-even ``> 2.0`` (the largest
weight the seed's table sets) on the ``regime`` and ``mixed`` markets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax.accounting import episode_keys, finalize
from tpfl_jax.baselines import reference_set, run_strategies, stack
from tpfl_jax.env.stats import no_edge_hit_probability
from tpfl_jax.env.trading import ACCURACY_MODES
from tpfl_jax.reward import TERM_NAMES
from tpfl_jax.rundir import save_figure, write_frame, write_text
from tpfl_jax.stats import mean_ci

SEED_TABLE_MAX_WEIGHT = 2.0  # the largest weight the seed's decision table sets
NON_REFERENCES = ("random", "churn")  # never "a profitable reference" for the break-even


@dataclass(frozen=True)
class AuditConfig:
    """weights: audited weights (0 is always added); episodes: common-random-number episodes
    per strategy and weight; lookback: the trend rule's lookback (None: the env window);
    seed: episode keys."""

    weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    episodes: int = 512
    lookback: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) \
                or self.episodes < 2:
            raise ValueError(f"AuditConfig.episodes = {self.episodes!r}; expected an int >= 2")
        w = np.asarray(self.weights, float)
        if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"AuditConfig.weights = {self.weights!r}; expected finite "
                             "weights >= 0")


@dataclass
class AuditResult:
    """``table``: one row per strategy x weight; ``episodes``: per-episode frame; ``noskill``:
    the no-skill bonus table; ``summary``: tau, break-even and the settings (JSON-able)."""

    table: pd.DataFrame
    episodes: pd.DataFrame
    noskill: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The short summary printed by every report."""
        return summary_text(self.summary)


def ci95(x: np.ndarray) -> float:
    """Half-width of the 95% t-interval of the mean of ``x`` (``stats.mean_ci``)."""
    return mean_ci(x)[1]


def run_audit(env: Any, env_params: Any, config: AuditConfig = AuditConfig(),
              label: str = "") -> AuditResult:
    """Audit the reward of ``env_params`` (its market, costs, coefficients and accuracy mode)."""
    refs = reference_set(env, config.lookback)
    names = list(refs)
    weights = sorted({0.0, *map(float, config.weights)})
    n_steps = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    keys = episode_keys(jax.random.key(config.seed), config.episodes)
    sums = jax.device_get(run_strategies(env, stack([refs[n] for n in names]),
                                         jnp.asarray(weights, jnp.float32), env_params, keys,
                                         n_steps))
    ep = _episode_frame(sums, names, weights)
    per = finalize(sums)                                    # [S, W] (accounting's definitions)
    table = _strategy_table(ep, per, names, weights)
    has_labels = bool(np.any(np.asarray(env_params.market.trend) != 0))
    ranking = _ranking(table, names, has_labels, ep)
    farming = _break_even(table, names, weights, has_labels)
    noskill = _noskill_table(ep, per, names, weights, env_params)
    mode_idx = int(np.asarray(env_params.accuracy))
    tps = np.asarray(env_params.tp_mults, float)
    summary = {
        "label": label,
        "accuracy": ACCURACY_MODES[mode_idx],
        "episodes": config.episodes,
        "episode_steps": n_steps,
        "weights": weights,
        "coefs": {k: float(np.asarray(getattr(env_params.coefs, k)))
                  for k in ("pnl", "drawdown", "size", "alignment", "tp_bonus")},
        "has_regime_labels": has_labels,
        **ranking, **farming,
        "break_even_ok": bool(farming["break_even_weight"] > SEED_TABLE_MAX_WEIGHT),
        "farm_ok": bool(farming["farm_break_even"] > SEED_TABLE_MAX_WEIGHT),
        "tau_ok": not ranking["discordant_separated"],
        "noskill_bonus_per_trade": dict(zip(
            [f"tp{t:g}" for t in tps],
            noskill[f"bonus_per_trade/{ACCURACY_MODES[mode_idx]}"].round(4).tolist(),
            strict=True)),
    }
    return AuditResult(table=table, episodes=ep, noskill=noskill, summary=summary)


def _episode_frame(sums: Any, names: list[str], weights: list[float]) -> pd.DataFrame:
    """One row per strategy x weight x episode (PnL, return, reward, each reward term, the
    bonus each accuracy definition would pay); non-finite outputs are an error."""
    out = {"pnl": sums.pnl, "return": sums.ret, "reward": sums.reward, "trades": sums.trades,
           "hits": sums.hits, "sum_r": sums.r, "sum_tp_mult": sums.tp_mult,
           "max_drawdown": sums.max_drawdown, "steps": sums.steps}
    out |= {f"term/{n}": v for n, v in sums.terms.items()}
    out |= {f"bonus_pos/{n}": v for n, v in sums.bonus_pos.items()}
    if not all(np.all(np.isfinite(v)) for v in out.values()):
        bad = [k for k, v in out.items() if not np.all(np.isfinite(v))]
        raise FloatingPointError(f"run_audit: non-finite episode outputs in {bad}")
    rows = []
    for i, n in enumerate(names):
        for j, w in enumerate(weights):
            d = pd.DataFrame({k: np.asarray(v[i, j], float) for k, v in out.items()})
            d.insert(0, "episode", np.arange(len(d)))
            d.insert(0, "weight", w)
            d.insert(0, "strategy", n)
            rows.append(d)
    ep = pd.concat(rows, ignore_index=True)
    ep["abs_terms"] = sum(ep[f"term/{t}"].abs() for t in TERM_NAMES)
    return ep


def _strategy_table(ep: pd.DataFrame, per: dict[str, Any], names: list[str],
                    weights: list[float]) -> pd.DataFrame:
    """Per strategy x weight: means and 95% half-widths per episode, the trade metrics
    (``per``: ``accounting.finalize`` of the sums, ``[S, W]``) and the bonus share of the
    reward mass."""
    recs = []
    for (n, w), g in ep.groupby(["strategy", "weight"], sort=False):
        i, j = names.index(n), weights.index(w)
        rec = {"strategy": n, "weight": w}
        for k in ("pnl", "return", "reward", *[f"term/{t}" for t in TERM_NAMES], "trades",
                  "max_drawdown"):
            # per-episode means: accounting.finalize's where it defines the metric
            rec[k] = float(per[k][i, j]) if k in per else g[k].mean()
            rec[f"{k}_ci95"] = ci95(g[k].to_numpy())
        for k in ("hit_rate", "mean_r", "mean_tp_mult"):
            rec[k] = float(per[k][i, j])
        tot = g["abs_terms"].sum()
        rec["bonus_share"] = g["term/tp_bonus"].abs().sum() / tot if tot > 0 else 0.0
        recs.append(rec)
    return pd.DataFrame(recs)


def _ranking(table: pd.DataFrame, names: list[str], has_labels: bool,
             ep: pd.DataFrame) -> dict[str, Any]:
    """Kendall's tau between reward at weight 0 and PnL over the ranking set (trend and oracle
    at their best TP in hindsight; the oracle only with regime labels) and its discordant
    pairs, separated (paired PnL interval over the episodes excludes 0) or within noise."""
    from scipy import stats

    at0 = table[table.weight == 0.0].set_index("strategy")
    pnl, r0 = at0["pnl"], at0["reward"]
    best = {fam: pnl[[n for n in names if n.startswith(f"{fam}_tp")]].idxmax()
            for fam in ("trend", "oracle")}
    rank_set = {"flat": "flat", "buy_and_hold": "buy_and_hold", "trend": best["trend"],
                "churn": "churn"}
    if has_labels:
        rank_set["oracle"] = best["oracle"]
    members = list(rank_set.values())
    tau = float(stats.kendalltau(r0[members].to_numpy(), pnl[members].to_numpy()).statistic)
    per_ep = ep[ep.weight == 0.0].pivot(index="episode", columns="strategy", values="pnl")
    separated, noise = [], []
    for a, b in combinations(rank_set, 2):
        x, y = rank_set[a], rank_set[b]
        if (r0[x] - r0[y]) * (pnl[x] - pnl[y]) < 0:
            mean, half = mean_ci((per_ep[x] - per_ep[y]).to_numpy())
            (separated if abs(mean) > half else noise).append(f"{a}/{b}")
    return {"rank_set": rank_set, "rank_pnl": {k: float(pnl[v]) for k, v in rank_set.items()},
            "rank_reward_w0": {k: float(r0[v]) for k, v in rank_set.items()}, "tau": tau,
            "discordant_separated": separated, "discordant_within_noise": noise}


def _break_even(table: pd.DataFrame, names: list[str], weights: list[float],
                has_labels: bool) -> dict[str, Any]:
    """The smallest weights at which churn (and any no-skill rule) reaches the best profitable
    reference's reward; rewards are linear in the weight for a fixed rule."""
    at0 = table[table.weight == 0.0].set_index("strategy")
    pnl, r0, ci = at0["pnl"], at0["reward"], at0["pnl_ci95"]
    # R(w) = R0 + w * B (B = bonus at unit weight)
    w_top = max(weights)
    if w_top > 0:
        per_w = table[table.weight == w_top].set_index("strategy")["term/tp_bonus"] / w_top
    else:
        per_w = at0["term/tp_bonus"] * 0.0
    # "profitable": PnL's 95% interval above 0 (a rule whose mean PnL is noise is no reference)
    profitable = [n for n in names if n not in NON_REFERENCES and not n.startswith("noskill")
                  and pnl[n] - ci[n] > 0 and (has_labels or not n.startswith("oracle"))]
    causal = [n for n in profitable if not n.startswith("oracle")]

    def reach(farmer: str, refs: list[str]) -> tuple[float, str | None]:
        """Smallest w with R(farmer, w) >= max over refs of R(ref, w) (and the binding ref)."""
        ws = {}
        for s_ in refs:
            gain = per_w[farmer] - per_w[s_]
            gap = r0[s_] - r0[farmer]
            ws[s_] = max(gap / gain, 0.0) if gain > 0 else (0.0 if gap <= 0 else math.inf)
        if not ws:
            return float("nan"), None
        b = max(ws, key=ws.get)
        return ws[b], b

    break_even, binding = reach("churn", profitable)
    break_even_causal, binding_causal = reach("churn", causal)
    farmers = ["random", *[n for n in names if n.startswith("noskill")]]
    farm = {f: reach(f, causal) for f in farmers}
    farm_worst = min(farm, key=lambda f: farm[f][0]) if causal else None
    return {"profitable_references": profitable,
            "break_even_weight": break_even, "break_even_binding": binding,
            "break_even_causal": break_even_causal,
            "break_even_causal_binding": binding_causal,
            "farm_break_even": farm[farm_worst][0] if causal else float("nan"),
            "farm_break_even_rule": farm_worst}


def _noskill_table(ep: pd.DataFrame, per: dict[str, Any], names: list[str],
                   weights: list[float], env_params: Any) -> pd.DataFrame:
    """Per TP distance: the bonus a coin-flip trader collects per trade and per episode at
    weight 1 under each accuracy definition, beside the gambler's-ruin values."""
    sl = float(np.asarray(env_params.sl_mult))
    coef = float(np.asarray(env_params.coefs.tp_bonus))
    ns = []
    for k, tp in enumerate(np.asarray(env_params.tp_mults, float)):
        g = ep[(ep.strategy == f"noskill_tp{k}") & (ep.weight == 0.0)]
        trades = g["trades"].sum()
        p0 = float(no_edge_hit_probability(tp, sl))
        rec = {"tp_index": k, "tp_mult": tp, "trades_per_episode": g["trades"].mean(),
               "hit_rate": float(per["hit_rate"][names.index(f"noskill_tp{k}"),
                                                 weights.index(0.0)]),
               "no_edge_hit_p": p0}
        for mode in ACCURACY_MODES:
            per_trade = coef * g[f"bonus_pos/{mode}"].sum() / max(trades, 1)
            rec[f"bonus_per_trade/{mode}"] = per_trade
            rec[f"bonus_per_episode/{mode}"] = per_trade * g["trades"].mean()
        rec["theory_per_trade/hit"] = coef * p0
        rec["theory_per_trade/skill"] = coef * p0 * (1 - p0)
        ns.append(rec)
    return pd.DataFrame(ns)


def _tau_text(s: dict[str, Any]) -> str:
    noise = s.get("discordant_within_noise", [])
    if not s["tau_ok"]:
        return ("reward does NOT rank these as PnL does: "
                + ", ".join(s.get("discordant_separated", [])) + " differ in PnL beyond noise")
    return "OK" + (f"; swapped only within PnL noise: {', '.join(noise)}" if noise else "")


def summary_text(s: dict[str, Any]) -> str:
    """A few lines: tau, break-even, the ranking set's PnL and reward at weight 0."""
    def ok(v: float) -> str:
        if math.isnan(v):
            return "undefined: no reference is profitable beyond its 95% interval"
        return f"OK, > {SEED_TABLE_MAX_WEIGHT}" if v > SEED_TABLE_MAX_WEIGHT else \
            f"FARMABLE at or below {SEED_TABLE_MAX_WEIGHT}"

    be, bc, fb = s["break_even_weight"], s["break_even_causal"], s["farm_break_even"]
    lines = [
        f"reward audit{' (' + s['label'] + ')' if s.get('label') else ''}: accuracy="
        f"{s['accuracy']}, {s['episodes']} episodes x {s['episode_steps']} steps per rule",
        f"  Kendall tau(reward at w=0, PnL) over {list(s['rank_set'])}: {s['tau']:.3f} "
        f"({_tau_text(s)})",
        f"  churn break-even weight: {be:.3g} vs the best profitable reference "
        f"({s['break_even_binding']}; {ok(be)}); {bc:.3g} vs causal references only "
        f"({s['break_even_causal_binding']})",
        f"  any no-skill rule vs causal references: {fb:.3g} ({s['farm_break_even_rule']}; "
        f"{ok(fb)})",
        "  " + ", ".join(f"{k}: PnL {s['rank_pnl'][k]:+.1f} / reward {s['rank_reward_w0'][k]:+.1f}"
                         for k in s["rank_set"]),
        f"  no-skill bonus per trade at w=1: {s['noskill_bonus_per_trade']}",
    ]
    return "\n".join(lines)


def write_audit(result: AuditResult, out: Path, prefix: str = "audit") -> list[Path]:
    """Write ``<prefix>_table.csv``, ``_noskill.csv``, ``_summary.json``, ``.md`` and the
    reward-vs-PnL plot (one panel per weight) into ``out``, each under a temporary name and
    renamed (``rundir.atomic``: an OS error names the file and leaves nothing half-written);
    returns the paths."""
    # inside: matplotlib is heavy and only the audit's figure needs it here
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}_table.csv", out / f"{prefix}_noskill.csv",
             out / f"{prefix}_summary.json", out / f"{prefix}.md", out / f"{prefix}_reward_pnl.png"]
    write_frame(result.table, paths[0])
    write_frame(result.noskill, paths[1])
    write_text(paths[2], json.dumps(result.summary, indent=2, default=float))
    cols = ["strategy", "weight", "pnl", "pnl_ci95", "reward", "reward_ci95", "trades",
            "hit_rate", "mean_r", "mean_tp_mult", "bonus_share"]
    write_text(paths[3],
               f"# Reward audit\n\n```\n{result.text()}\n```\n\n"
               f"```\n{result.table[cols].round(3).to_string(index=False)}\n```\n\n"
               f"## No-skill bonus\n\n```\n{result.noskill.round(3).to_string(index=False)}\n```\n")
    weights = sorted(result.table.weight.unique())
    fig, axes = plt.subplots(1, len(weights), figsize=(4.2 * len(weights), 4), squeeze=False)
    for ax, w in zip(axes[0], weights, strict=True):
        t = result.table[result.table.weight == w]
        ax.errorbar(t.pnl, t.reward, xerr=t.pnl_ci95, yerr=t.reward_ci95, fmt="o", ms=3)
        for _, r in t.iterrows():
            if not r.strategy.startswith(("noskill_tp", "oracle_tp", "trend_tp")) or \
                    r.strategy in result.summary["rank_set"].values():
                ax.annotate(r.strategy, (r.pnl, r.reward), fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(title=f"weight {w:g}", xlabel="PnL per episode", ylabel="reward per episode")
    fig.suptitle(f"reward vs PnL per reference strategy ({result.summary['label']})")
    fig.tight_layout()
    try:
        save_figure(fig, paths[4], dpi=110)
    finally:
        plt.close(fig)
    return paths

__all__ = ["AuditConfig", "AuditResult", "SEED_TABLE_MAX_WEIGHT", "ci95", "run_audit",
           "summary_text", "write_audit"]
