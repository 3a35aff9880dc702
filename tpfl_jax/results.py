"""Pure host-side results: a loop or train result as tables (pandas), and the study's
definitions of its summary numbers. It writes nothing and draws nothing (the pipelines write,
``report.py`` draws); it reads one file back, a ``tpfl-train`` run's ``metrics.jsonl``
(:func:`read_metrics_rows`).

Per-episode metrics come from ``tpfl_jax.accounting`` (:data:`accounting.METRICS`); this module
only arranges them:

* :func:`cycle_frame`: one row per policy x seed x cycle (``deploy_<metric>`` of the feedback
  mode, ``deploy_<mode>_<metric>`` of each mode, the feedback stats, the training summary);
* :func:`summary_frame`: one row per policy x seed. ``final_<m>``: the last cycle;
  ``oos_<m>``: **the mean over cycles 1..C-1** (cycle 0 trains every feedback arm at its
  initial weight; all cycles when C = 1) of the feedback mode's metric, ``oos_<m>_greedy`` /
  ``oos_<m>_sampled`` of each mode. The primary metric ``oos_pnl`` is PnL per deploy episode;
* :func:`curve_frame`: the learning curves (held-out PnL per episode after every chunk);
* :func:`reference_frame` / :func:`reference_summary`: the reference rules on the same
  episodes, summarised with the same ``final_`` / ``oos_`` definitions;
* :func:`identical_arms`: arms that gave the same primary metric on every seed;
* :func:`levels_table` and :func:`answer`: what a report says first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from tpfl_jax.accounting import METRICS, finalize
from tpfl_jax.clm.policies import REASON_NAMES
from tpfl_jax.stats import mean_ci, t_test

SUMMARY_METRICS = ("pnl", "trade_sharpe", "episode_sharpe", "hit_rate", "mean_r", "tp_skill",
                   "mean_tp_mult", "trades", "max_drawdown")
MODES = ("sampled", "greedy")


def _host(x: Any) -> np.ndarray:
    return np.asarray(x)


def oos_cycles(n_cycles: int) -> np.ndarray:
    """The cycles ``oos_*`` averages: 1..C-1 (every cycle when C = 1)."""
    return np.arange(1, n_cycles) if n_cycles > 1 else np.arange(n_cycles)


def cycle_frame(res: Any, names: Sequence[str], *, batch_size: int, episode_steps: int,
                distinct_bars: float | None = None) -> pd.DataFrame:
    """One row per policy x seed x cycle of a :class:`~tpfl_jax.loop.LoopResult` (host arrays).

    ``train_<curve>``: mean over the second half of the updates the cycle used;
    ``train_env_steps``: updates x ``batch_size``; ``train_repetition``: env steps per distinct
    training bar. A data set or fixed paths: env steps / ``distinct_bars`` (the bars the cycle
    could visit). Fresh synthetic paths: every episode has its own path except the
    ``train_reused_episodes`` a used-up lane put on a random one (``market.stream``), so the ratio
    is at most ``steps / (steps - reused x episode_steps)``, 1.0 when none was reused."""
    w = _host(res.weight)
    n_p, n_s, n_c = w.shape
    used = _host(res.training["updates"])
    rows = []
    for p in range(n_p):
        for s in range(n_s):
            for c in range(n_c):
                row: dict[str, Any] = {"policy": names[p], "seed": s, "cycle": c,
                                       "weight": float(w[p, s, c]),
                                       "next_weight": float(_host(res.next_weight)[p, s, c]),
                                       "reason": REASON_NAMES[int(_host(res.reason)[p, s, c])]}
                for fld in ("total_attempts", "total_hits", "tp_hit_rate", "avg_r_multiple",
                            "actual_r", "premature_exit_rate", "valid", "volatility",
                            "pnl_per_trade", "no_edge_hit_rate"):
                    row[f"stats_{fld}"] = _host(getattr(res.stats, fld))[p, s, c].item()
                for k, v in res.deploy.items():
                    row[f"deploy_{k.replace('/', '_')}"] = float(_host(v)[p, s, c])
                u = int(used[p, s, c])
                for k, v in res.train_buffers.items():
                    curve = _host(v)[p, s, c].astype(float)[:u]
                    half = curve[len(curve) // 2:]
                    row[f"train_{k}"] = (float(np.nanmean(half)) if np.isfinite(half).any()
                                         else float("nan"))
                tr = {k: _host(v)[p, s, c] for k, v in res.training.items()}
                steps = u * batch_size
                reused = float(np.nansum(_host(res.train_buffers["reused_paths"])[p, s, c][:u])) \
                    if "reused_paths" in res.train_buffers else 0.0
                row |= {"train_updates": u, "train_env_steps": steps,
                        "train_converged": bool(tr["converged"]),
                        "train_final_entropy": float(tr["entropy"]),
                        "train_entropy_max": float(tr["entropy_max"]),
                        "train_final_return": float(tr["return"]),
                        "train_repetition": (
                            steps / distinct_bars if distinct_bars
                            else steps / max(steps - reused * episode_steps, 1)),
                        "train_reused_episodes": reused}
                rows.append(row)
    return pd.DataFrame(rows)


def summary_columns() -> tuple[str, ...]:
    """Every metric column :func:`summary_frame` writes (``stats.*_metric`` choose from these)."""
    cols = []
    for m in SUMMARY_METRICS:
        cols += [f"final_{m}", f"oos_{m}", *(f"oos_{m}_{mode}" for mode in MODES)]
    return (*cols, "final_weight", "updates", "converged")


def summary_frame(cycles: pd.DataFrame, by: str = "policy") -> pd.DataFrame:
    """One row per ``by`` x seed: ``final_<m>`` (last cycle) and ``oos_<m>`` (mean over cycles
    1..C-1) for ``SUMMARY_METRICS`` of the feedback mode, ``oos_<m>_<mode>`` of each mode,
    ``final_weight``, ``updates`` and ``converged`` (means over cycles)."""
    n_c = int(cycles["cycle"].max()) + 1
    last = cycles[cycles["cycle"] == n_c - 1].set_index([by, "seed"])
    g = cycles[cycles["cycle"].isin(oos_cycles(n_c))].groupby([by, "seed"], sort=False)
    out: dict[str, Any] = {}
    for m in SUMMARY_METRICS:
        if f"deploy_{m}" not in cycles:
            continue
        out[f"final_{m}"] = last[f"deploy_{m}"]
        out[f"oos_{m}"] = g[f"deploy_{m}"].mean()
        for mode in MODES:
            if f"deploy_{mode}_{m}" in cycles:
                out[f"oos_{m}_{mode}"] = g[f"deploy_{mode}_{m}"].mean()
    if "weight" in cycles:
        out["final_weight"] = last["weight"]
    allc = cycles.groupby([by, "seed"], sort=False)
    for col, name in (("train_updates", "updates"), ("train_converged", "converged")):
        if col in cycles:
            out[name] = allc[col].mean()
    return pd.DataFrame(out).reset_index()


def curve_frame(res: Any, names: Sequence[str], *, chunk_updates: int, cap_updates: int,
                batch_size: int) -> pd.DataFrame:
    """Learning curves: one row per policy x seed x cycle x chunk that ran, with
    ``env_steps`` on the concatenated-cycles axis (cycle c starts at c x the update cap) and
    the held-out PnL per episode of each mode after that chunk."""
    if res.learning_curves is None:
        return pd.DataFrame()
    g = _host(res.learning_curves["greedy_pnl"])
    smp = _host(res.learning_curves["sampled_pnl"])
    n_p, n_s, n_c, n_k = g.shape
    rows = [{"policy": names[p], "seed": s, "cycle": c, "chunk": k,
             "env_steps": (c * cap_updates + (k + 1) * chunk_updates) * batch_size,
             "greedy_pnl": float(g[p, s, c, k]), "sampled_pnl": float(smp[p, s, c, k])}
            for p in range(n_p) for s in range(n_s) for c in range(n_c) for k in range(n_k)
            if np.isfinite(g[p, s, c, k])]
    return pd.DataFrame(rows)


def reference_frame(refs: dict[str, tuple[Any, Any]], candidates: dict[str, list[Any]],
                    curve_envs: int) -> pd.DataFrame:
    """One row per reference family x seed x cycle: the rule chosen on training data, and
    ``deploy_<metric>`` (``accounting.METRICS`` over the deploy episodes; ``deploy_curve_pnl``
    over the first ``curve_envs``, the learning curves' episodes)."""
    rows = []
    for fam, (sums, choice) in refs.items():
        sums, choice = _host_tree(sums), _host(choice)
        m = finalize(sums)
        curve = (finalize(jax.tree.map(lambda x: x[..., :curve_envs], sums))["pnl"]
                 if curve_envs else np.full(choice.shape, np.nan))
        n_s, n_c = choice.shape
        for s in range(n_s):
            for c in range(n_c):
                row = {"rule": fam, "chosen": candidates[fam][int(choice[s, c])][0],
                       "seed": s, "cycle": c}
                row |= {f"deploy_{k}": float(v[s, c]) for k, v in m.items()}
                row["deploy_curve_pnl"] = float(curve[s, c])
                rows.append(row)
    return pd.DataFrame(rows)


def _host_tree(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def reference_summary(ref_cycles: pd.DataFrame) -> pd.DataFrame:
    """The reference rules summarised with :func:`summary_frame`'s definitions (one row per
    rule x seed)."""
    return summary_frame(ref_cycles, by="rule")


def identical_arms(summary: pd.DataFrame, metric: str = "oos_pnl") -> list[tuple[str, ...]]:
    """Groups of arms whose ``metric`` is identical on every seed (they cannot differ, so a
    comparison between them says nothing)."""
    wide = summary.pivot(index="seed", columns="policy", values=metric)
    groups: dict[tuple, list[str]] = {}
    for arm in dict.fromkeys(summary["policy"]):
        groups.setdefault(tuple(np.round(wide[arm].to_numpy(float), 9)), []).append(arm)
    return [tuple(g) for g in groups.values() if len(g) > 1]


# how a reference rule is named in tables: the oracle reads hidden labels
REFERENCE_LABELS = {"oracle": "oracle (hidden labels, not causal)"}


def levels_table(summary: pd.DataFrame, ref_summary: pd.DataFrame | None,
                 primary: str = "oos_pnl") -> pd.DataFrame:
    """Absolute levels side by side: every arm and every reference rule with ``primary`` (mean
    and 95% t half-width over seeds), greedy and sampled PnL, the arm's final weight, hit rate
    and mean TP distance (out of sample). With a ``bayes`` reference (the Bayes filter, near
    the causal limit), ``frac_bayes`` is each row's mean ``primary`` over the filter's (same
    episodes). The oracle reads hidden labels: its name says it is not causal."""
    rows = []
    cols = {"oos_pnl_greedy": "greedy_pnl", "oos_pnl_sampled": "sampled_pnl",
            "oos_hit_rate": "hit_rate", "oos_mean_tp_mult": "tp_mult",
            "oos_trades": "trades", "final_weight": "final_weight"}
    labels = REFERENCE_LABELS

    def row(kind: str, name: str, g: pd.DataFrame) -> dict[str, Any]:
        mean, half = mean_ci(g[primary].to_numpy())
        r = {"kind": kind, "name": name, primary: mean, f"{primary}_ci95": half}
        r |= {short: float(g[c].mean()) for c, short in cols.items() if c in g}
        return r

    for name, g in summary.groupby("policy", sort=False):
        rows.append(row("arm", str(name), g))
    bayes = float("nan")
    if ref_summary is not None and len(ref_summary):
        for name, g in ref_summary.groupby("rule", sort=False):
            rows.append(row("reference", labels.get(str(name), str(name)), g))
            if name == "bayes":
                bayes = rows[-1][primary]
    out = pd.DataFrame(rows)
    if np.isfinite(bayes):
        out["frac_bayes"] = out[primary] / bayes
    return out


def best_fixed_in_hindsight(summary: pd.DataFrame, kinds: dict[str, str],
                            primary: str = "oos_pnl") -> tuple[str, float] | None:
    """The fixed-weight arm with the best mean ``primary`` (chosen after the fact: the most a
    weight schedule that never moves could have earned)."""
    fixed = [a for a, k in kinds.items() if k == "fixed" and a in set(summary["policy"])]
    if not fixed:
        return None
    means = summary[summary.policy.isin(fixed)].groupby("policy")[primary].mean()
    return str(means.idxmax()), float(means.max())


def answer(summary: pd.DataFrame, paired: pd.DataFrame, ref_summary: pd.DataFrame | None,
           controls: Sequence[str], primary: str = "oos_pnl") -> list[str]:
    """Three lines: the best arm and its level; what differs from each control after Holm (or
    "nothing differs" with the smallest detectable effect); the references on the same
    episodes."""
    means = summary.groupby("policy", sort=False)[primary].mean()
    best = str(means.idxmax())
    m, h = mean_ci(summary[summary.policy == best][primary].to_numpy())
    lines = [f"Best arm: `{best}` with {primary} {m:+.1f} ± {h:.1f} per episode "
             f"({summary.seed.nunique()} seeds, 95% t-interval)."]
    parts = []
    for ctl in controls:
        t = paired[paired.control == ctl]
        rej = t[t.reject.astype(bool)]
        if len(rej):
            parts.append(f"vs `{ctl}`: " + ", ".join(
                f"`{r.arm}` {r.mean_diff:+.1f}" for r in rej.itertuples()) + " (Holm)")
        elif len(t):
            parts.append(f"vs `{ctl}`: nothing differs (smallest detectable effect "
                         f"{t.mde.min():.1f})")
    lines.append("; ".join(parts) + "." if parts else "No control arm to compare with.")
    if ref_summary is not None and len(ref_summary):
        refs = ref_summary.groupby("rule", sort=False)[primary].mean()
        lines.append("References on the same episodes: " + ", ".join(
            f"{r} {v:+.1f}" for r, v in refs.items()) + " (parameters chosen on training data).")
    else:
        lines.append("References: not computed.")
    return lines


def read_metrics_rows(path: Any) -> pd.DataFrame:
    """A ``metrics.jsonl`` (one row per weight x update; values are lists over seeds)."""
    lines = Path(path).read_text().splitlines()
    return pd.DataFrame([json.loads(ln) for ln in lines if ln.strip()])


def train_curves(metrics: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """The learning curves of a ``tpfl-train`` run from its metrics rows: one row per weight x
    seed x scored chunk with ``env_steps`` and the held-out PnL per episode of each mode."""
    if "curve/greedy_pnl" not in metrics:
        return pd.DataFrame()
    rows = []
    scored = metrics[metrics["curve/greedy_pnl"].notna()]
    for _, r in scored.iterrows():
        g = np.atleast_1d(np.asarray(r["curve/greedy_pnl"], float))
        smp = np.atleast_1d(np.asarray(r["curve/sampled_pnl"], float))
        for s in range(len(g)):
            rows.append({"policy": f"fixed_{float(r['weight'])}", "weight": float(r["weight"]),
                         "seed": s, "cycle": 0, "env_steps": int(r["update"]) * batch_size,
                         "greedy_pnl": float(g[s]), "sampled_pnl": float(smp[s])})
    return pd.DataFrame(rows)


def episode_paired(agent_pnl: np.ndarray, ref_pnl: dict[str, np.ndarray],
                   weights: Sequence[float], level: float = 0.95) -> pd.DataFrame:
    """Agent minus each reference rule on the same held-out episodes: ``agent_pnl`` is
    ``[K, S, E]`` (weights x seeds x episodes), ``ref_pnl[rule]`` is ``[E]``; per episode the
    agent's PnL is the mean over seeds; mean difference, t-interval and p over episodes."""
    rows = []
    for i, w in enumerate(weights):
        a = np.asarray(agent_pnl[i], float).mean(0)
        for rule, ref in ref_pnl.items():
            mean, lo, hi, p = t_test(a - np.asarray(ref, float), level)
            rows.append({"weight": float(w), "reference": REFERENCE_LABELS.get(rule, rule),
                         "episodes": len(a),
                         "agent_pnl": float(a.mean()), "reference_pnl": float(np.mean(ref)),
                         "mean_diff": mean, "lo": lo, "hi": hi, "p": p})
    return pd.DataFrame(rows)


__all__ = ["METRICS", "MODES", "REFERENCE_LABELS", "SUMMARY_METRICS", "answer",
           "best_fixed_in_hindsight",
           "curve_frame", "cycle_frame", "episode_paired", "identical_arms", "levels_table",
           "oos_cycles", "read_metrics_rows", "reference_frame", "reference_summary",
           "summary_columns", "summary_frame", "train_curves"]
