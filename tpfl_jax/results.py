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
  :func:`identical_pairs`: pairs of arms identical on some seeds;
* :func:`levels_table` and :func:`answer`: what a report says first (the best arm only where
  Holm over all pairs of arms, :func:`tpfl_jax.stats.pairwise_table`, separates it);
* :func:`reference_paired`: every arm against the better of trend and buy-and-hold, paired per
  seed over the same deploy episodes;
* :func:`weight_paths` and :func:`regret_frame`: each arm's weight path over seeds and each
  adaptive arm's cumulative regret against the best fixed arm in hindsight.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from tpfl_jax import stats
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
        if m == "hit_rate":
            cols.append("oos_hit_rate_pooled")
    return (*cols, "final_weight", "updates", "converged")


def summary_frame(cycles: pd.DataFrame, by: str = "policy") -> pd.DataFrame:
    """One row per ``by`` x seed: ``final_<m>`` (last cycle) and ``oos_<m>`` (mean over cycles
    1..C-1) for ``SUMMARY_METRICS`` of the feedback mode, ``oos_<m>_<mode>`` of each mode,
    ``oos_hit_rate_pooled`` (the feedback mode's TP exits / closed trades pooled over every
    deploy trade of cycles 1..C-1; ``oos_hit_rate`` is the mean of the per-cycle ratios; 0
    without trades, as ``accounting``), ``final_weight``, ``updates`` and ``converged`` (means
    over cycles)."""
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
        if m == "hit_rate" and "deploy_trades" in cycles:   # every cycle: deploy_envs episodes
            oc = cycles[cycles["cycle"].isin(oos_cycles(n_c))]
            keys = [oc[by], oc["seed"]]
            total = lambda v: float(np.sum(v.to_numpy(float)))  # noqa: E731  (NaN stays NaN)
            hits = (oc["deploy_hit_rate"] * oc["deploy_trades"]).groupby(keys, sort=False).agg(
                total)
            trades = oc["deploy_trades"].groupby(keys, sort=False).agg(total)
            with np.errstate(divide="ignore", invalid="ignore"):
                out["oos_hit_rate_pooled"] = (hits / trades).mask(trades == 0, 0.0)
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


def feedback_mode(summary: pd.DataFrame) -> str | None:
    """The deploy mode the plain ``oos_<m>`` columns hold (the loop's ``feedback_mode``),
    read from the data: the one mode whose ``oos_<m>_<mode>`` equal ``oos_<m>`` on every row
    for every metric present; None when neither or both modes do."""
    same = []
    for mode in MODES:
        pairs = [(f"oos_{m}", f"oos_{m}_{mode}") for m in SUMMARY_METRICS
                 if f"oos_{m}" in summary and f"oos_{m}_{mode}" in summary]
        if pairs and all(np.array_equal(summary[a].to_numpy(float), summary[b].to_numpy(float),
                                        equal_nan=True) for a, b in pairs):
            same.append(mode)
    return same[0] if len(same) == 1 else None


def duplicate_mode_column(primary: str, mode: str | None) -> str | None:
    """The per-mode PnL column (``oos_pnl_<mode>``) that holds the same numbers as
    ``primary``: ``primary`` itself when it is one, ``oos_pnl_<mode>`` when ``primary`` is
    ``oos_pnl`` and ``mode`` is the feedback mode; else None."""
    if primary in {f"oos_pnl_{m}" for m in MODES}:
        return primary
    if primary == "oos_pnl" and mode in MODES:
        return f"oos_pnl_{mode}"
    return None


def levels_table(summary: pd.DataFrame, ref_summary: pd.DataFrame | None,
                 primary: str = "oos_pnl", mode: str | None = None) -> pd.DataFrame:
    """Absolute levels side by side: every arm and every reference rule with ``primary`` (mean
    and 95% t half-width over seeds), the PnL of each deploy mode except the one that is
    ``primary`` (``mode``: the feedback mode; None: :func:`feedback_mode` of the data),
    ``final_weight`` (mean over seeds, with ``final_weight_min`` / ``_max``), ``hit_rate``
    (mean over seeds of the mean of per-cycle ratios), ``hit_rate_pooled`` (TP exits / closed
    trades over every deploy trade of cycles 1..C-1 and every seed), mean TP distance and
    trades per episode. With a ``bayes`` reference (the Bayes filter, near the causal limit),
    ``frac_bayes`` is each row's mean ``primary`` over the filter's (same episodes). The
    oracle reads hidden labels: its name says it is not causal."""
    rows = []
    mode = feedback_mode(summary) if mode is None else mode
    dup = duplicate_mode_column(primary, mode)
    cols = {c: short for c, short in (("oos_pnl_greedy", "greedy_pnl"),
                                      ("oos_pnl_sampled", "sampled_pnl"),
                                      ("oos_hit_rate", "hit_rate"),
                                      ("oos_mean_tp_mult", "tp_mult"), ("oos_trades", "trades"),
                                      ("final_weight", "final_weight")) if c != dup}
    labels = REFERENCE_LABELS

    def row(kind: str, name: str, g: pd.DataFrame) -> dict[str, Any]:
        mean, half = mean_ci(g[primary].to_numpy())
        r = {"kind": kind, "name": name, primary: mean, f"{primary}_ci95": half,
             "seeds": len(g)}
        r |= {short: float(g[c].mean()) for c, short in cols.items() if c in g}
        if "final_weight" in g:
            r |= {"final_weight_min": float(g["final_weight"].min()),
                  "final_weight_max": float(g["final_weight"].max())}
        if {"oos_hit_rate_pooled", "oos_trades"} <= set(g):  # trades per episode, E per cycle
            tr = g["oos_trades"].to_numpy(float)
            hits = float(np.sum(g["oos_hit_rate_pooled"].to_numpy(float) * tr))
            r["hit_rate_pooled"] = hits / float(np.sum(tr)) if np.sum(tr) > 0 else (
                0.0 if np.isfinite(hits) else float("nan"))
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


def identical_pairs(summary: pd.DataFrame, metric: str = "oos_pnl") -> pd.DataFrame:
    """Every pair of arms with an identical ``metric`` (to 9 decimals) on at least one seed:
    ``arm_a``, ``arm_b``, ``seeds`` (those seeds), ``n_identical`` and ``n_seeds`` (a paired
    difference is exactly 0 on those seeds: they carry no information about the pair)."""
    wide = summary.pivot(index="seed", columns="policy", values=metric).round(9)
    arms = list(dict.fromkeys(summary["policy"]))
    rows = []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            same = wide.index[(wide[a] == wide[b]).to_numpy()].tolist()
            if same:
                rows.append({"arm_a": a, "arm_b": b, "seeds": same, "n_identical": len(same),
                             "n_seeds": len(wide)})
    return pd.DataFrame(rows, columns=["arm_a", "arm_b", "seeds", "n_identical", "n_seeds"])


def best_fixed_in_hindsight(summary: pd.DataFrame, kinds: dict[str, str],
                            primary: str = "oos_pnl") -> tuple[str, float] | None:
    """The fixed-weight arm (kind ``fixed``) of this run with the best mean ``primary`` over
    seeds, and that mean: one arm for every seed (pooled), chosen after the fact; only the
    run's fixed arms compete (not every weight that never moves). None without a fixed arm."""
    fixed = [a for a, k in kinds.items() if k == "fixed" and a in set(summary["policy"])]
    if not fixed:
        return None
    means = summary[summary.policy.isin(fixed)].groupby("policy")[primary].mean()
    return str(means.idxmax()), float(means.max())


def best_arms(summary: pd.DataFrame, pairwise: pd.DataFrame, metric: str = "oos_pnl"
              ) -> dict[str, Any]:
    """Which arm is best by ``pairwise`` (:func:`tpfl_jax.stats.pairwise_table`, Holm over
    all pairs): ``top`` (highest mean ``metric``), ``group`` (``top`` and the arms identical to
    it on every seed), ``best`` (``group`` when Holm finds ``top`` higher than every arm outside
    it, else an empty list) and ``tied`` (the arms outside ``group`` not separated from
    ``top``, in mean order)."""
    means = summary.groupby("policy", sort=False)[metric].mean()
    top = str(means.idxmax()) if means.notna().any() else str(means.index[0])
    wide = summary.pivot(index="seed", columns="policy", values=metric).round(9)
    group = [a for a in means.index if a == top or bool((wide[a] == wide[top]).all())]
    tied = []
    for a in means.sort_values(ascending=False).index:
        if a in group:
            continue
        r = pairwise[((pairwise.arm_a == top) & (pairwise.arm_b == a))
                     | ((pairwise.arm_a == a) & (pairwise.arm_b == top))]
        higher = len(r) and bool(r.reject.iloc[0]) and (
            r.mean_diff.iloc[0] > 0 if r.arm_a.iloc[0] == top else r.mean_diff.iloc[0] < 0)
        if not higher:
            tied.append(str(a))
    return {"top": top, "group": [str(a) for a in group], "tied": tied,
            "best": [str(a) for a in group] if not tied else []}


def answer(summary: pd.DataFrame, paired: pd.DataFrame, ref_summary: pd.DataFrame | None,
           controls: Sequence[str], primary: str = "oos_pnl", units: str | None = None
           ) -> list[str]:
    """Three lines: the best arm and its level only when Holm over all pairs of arms finds it
    higher than every other (else "no arm is distinguishable"); what differs from each control
    after Holm (or "nothing differs" with the smallest detectable effect); the references on
    the same episodes. ``units``: what follows a value of ``primary`` (default: "per
    episode" for a PnL metric, nothing otherwise)."""
    if units is None:
        units = "per episode" if primary.startswith(("oos_pnl", "final_pnl")) else ""
    level = float(paired["family_level"].iloc[0]) if len(paired) else 0.95
    n = summary.seed.nunique()
    pw = stats.pairwise_table(summary, primary, level)
    b = best_arms(summary, pw, primary)
    how = (f"paired t over {n} seeds, Holm over all {int(pw.m.max()) if len(pw) else 0} pairs "
           f"of arms, family-wise error {1 - level:.0%}")
    if summary.policy.nunique() < 2:
        first = "One arm: nothing to compare."
    elif len(b["group"]) == summary.policy.nunique():
        first = f"Every arm has the same {primary} on every seed: nothing to compare."
    elif b["best"]:
        m, h = mean_ci(summary[summary.policy == b["top"]][primary].to_numpy())
        arms = ", ".join(f"`{a}`" for a in b["best"])
        same = " (identical on every seed)" if len(b["best"]) > 1 else ""
        first = (f"Best arm{'s' if same else ''}: {arms}{same} with {primary} {m:+.1f} ± "
                 f"{h:.1f}{' ' + units if units else ''} ({n} seeds, 95% t-interval); higher "
                 f"than every other arm ({how}).")
    else:
        others = [a for a in b["group"] if a != b["top"]] + b["tied"]
        first = (f"No arm is distinguishable as best on {primary}: Holm does not separate the "
                 f"highest mean from {len(others)} of the other "
                 f"{summary.policy.nunique() - 1} arms ("
                 + ", ".join(f"`{a}`" for a in others) + f"; {how}).")
    lines = [first]
    parts = []
    for ctl in controls:
        t = paired[paired.control == ctl]
        rej = t[t.reject.astype(bool)]
        if len(rej):
            parts.append(f"vs `{ctl}`: " + ", ".join(
                f"`{r.arm}` {r.mean_diff:+.1f}" for r in rej.itertuples()) + " (Holm)")
        elif len(t):
            same = (t.sd_diff == 0) & (t.mean_diff == 0)       # identical to the control
            mde = t[~same].mde.min() if (~same).any() else float("nan")
            parts.append(f"vs `{ctl}`: nothing differs (smallest detectable effect {mde:.1f}"
                         + ("; identical to it on every seed: " + ", ".join(
                             f"`{a}`" for a in t[same].arm) if same.any() else "") + ")")
    lines.append("; ".join(parts) + "." if parts else "No control arm to compare with.")
    if ref_summary is not None and len(ref_summary) and primary in ref_summary:
        refs = ref_summary.groupby("rule", sort=False)[primary].mean()
        lines.append("References on the same episodes: " + ", ".join(
            f"{r} {v:+.1f}" for r, v in refs.items()) + " (parameters chosen on training data).")
    else:
        lines.append("References: not computed.")
    return lines


def best_reference(ref_summary: pd.DataFrame | None, metric: str = "oos_pnl",
                   rules: Sequence[str] = ("trend", "buy_and_hold")) -> str | None:
    """The rule of ``rules`` with the higher mean ``metric`` over seeds on this run (chosen
    after the fact on the deploy episodes, which favours the reference); None if none ran."""
    if ref_summary is None or not len(ref_summary) or metric not in ref_summary:
        return None
    means = ref_summary[ref_summary.rule.isin(rules)].groupby("rule")[metric].mean()
    return str(means.idxmax()) if means.notna().any() else None


def reference_paired(summary: pd.DataFrame, ref_summary: pd.DataFrame | None,
                     metric: str = "oos_pnl", level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> tuple[str, pd.DataFrame] | None:
    """Every arm against the :func:`best_reference` rule on ``metric``, paired per seed (the
    rule plays the arms' deploy episodes of every cycle, so both values of a seed are means
    over the same episodes of cycles 1..C-1): ``(rule, stats.paired_table)`` with the rule as
    the control, named ``"<rule> (reference)"``; None without a reference or the metric."""
    rule = best_reference(ref_summary, metric)
    if rule is None or metric not in summary:
        return None
    name = f"{rule} (reference)"
    ref = ref_summary[ref_summary.rule == rule]
    both = pd.concat([summary[["policy", "seed", metric]],
                      pd.DataFrame({"policy": name, "seed": ref["seed"].to_numpy(),
                                    metric: ref[metric].to_numpy()})], ignore_index=True)
    return rule, stats.paired_table(both, metric, [name], level, n_boot, seed)


def regret_frame(cycles: pd.DataFrame, kinds: dict[str, str], metric: str = "pnl"
                 ) -> tuple[str, pd.DataFrame] | None:
    """Cumulative regret of every adaptive arm (kind not ``fixed``) against the best fixed
    arm in hindsight, per seed and cycle c of cycles 1..C-1 (cycle 0 is excluded: every arm
    deploys its start weight before any feedback; with one cycle, cycle 0): the sum over
    cycles 1..c of (best fixed arm's ``deploy_<metric>`` - the arm's), same seed. The best
    fixed arm is pooled over seeds: the fixed arm with the highest mean over seeds of its
    mean ``deploy_<metric>`` over those cycles (the arm :func:`best_fixed_in_hindsight` picks
    on ``oos_<metric>``). Returns ``(best fixed arm, frame)`` with one row per arm x seed x cycle
    (``policy``, ``seed``, ``cycle``, ``value``, ``best_fixed_value``, ``regret``,
    ``cum_regret``); None without a fixed and an adaptive arm."""
    col = f"deploy_{metric}"
    fixed = [a for a, k in kinds.items() if k == "fixed" and a in set(cycles.policy)]
    adaptive = [a for a, k in kinds.items() if k != "fixed" and a in set(cycles.policy)]
    if not fixed or not adaptive:
        return None
    oc = cycles[cycles.cycle.isin(oos_cycles(int(cycles.cycle.max()) + 1))]
    total = oc[oc.policy.isin(fixed)].groupby(["policy", "seed"])[col].mean().groupby(
        "policy").mean()                  # summary_frame's oos_<metric>, mean over seeds
    best = str(total.idxmax())
    ref = oc[oc.policy == best].set_index(["seed", "cycle"])[col]
    out = oc[oc.policy.isin(adaptive)][["policy", "seed", "cycle", col]].rename(
        columns={col: "value"}).sort_values(["policy", "seed", "cycle"], kind="stable")
    out["best_fixed_value"] = ref.reindex(
        pd.MultiIndex.from_frame(out[["seed", "cycle"]])).to_numpy()
    out["regret"] = out["best_fixed_value"] - out["value"]
    out["cum_regret"] = out.groupby(["policy", "seed"], sort=False)["regret"].transform(
        lambda v: np.cumsum(v.to_numpy(float)))          # NaN stays NaN from there on
    order = {a: i for i, a in enumerate(adaptive)}
    out = out.sort_values(["policy", "seed", "cycle"], key=lambda c: c.map(order)
                          if c.name == "policy" else c, kind="stable")
    return best, out.reset_index(drop=True)


def band(frame: pd.DataFrame, value: str, by: Sequence[str] = ("policy", "cycle")
         ) -> pd.DataFrame:
    """``value`` over seeds per ``by``: ``mean``, ``median``, ``q25``, ``q75``, ``min``,
    ``max`` and ``seeds`` (in first-seen order of ``by``)."""
    g = frame.groupby(list(by), sort=False)[value]
    return pd.DataFrame({"mean": g.mean(), "median": g.median(), "q25": g.quantile(0.25),
                         "q75": g.quantile(0.75), "min": g.min(), "max": g.max(),
                         "seeds": g.size()}).reset_index()


def weight_paths(cycles: pd.DataFrame) -> pd.DataFrame:
    """Per arm: ``seeds``, ``distinct_paths`` (different weight sequences over cycles among
    the seeds, to 9 decimals) and the last cycle's weight over seeds (``final_median``,
    ``final_min``, ``final_max``)."""
    rows = []
    last = int(cycles.cycle.max())
    for name, g in cycles.groupby("policy", sort=False):
        paths = {tuple(np.round(s.sort_values("cycle")["weight"].to_numpy(float), 9))
                 for _, s in g.groupby("seed")}
        fin = g[g.cycle == last]["weight"]
        rows.append({"policy": str(name), "seeds": g.seed.nunique(), "distinct_paths": len(paths),
                     "final_median": float(fin.median()), "final_min": float(fin.min()),
                     "final_max": float(fin.max())})
    return pd.DataFrame(rows)


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


__all__ = ["METRICS", "MODES", "REFERENCE_LABELS", "SUMMARY_METRICS", "answer", "band",
           "best_arms", "best_fixed_in_hindsight", "best_reference", "curve_frame",
           "cycle_frame", "duplicate_mode_column", "episode_paired", "feedback_mode",
           "identical_arms", "identical_pairs", "levels_table", "oos_cycles",
           "read_metrics_rows", "reference_frame", "reference_paired", "reference_summary",
           "regret_frame", "summary_columns", "summary_frame", "train_curves", "weight_paths"]


def episode_sharpe(returns: Any) -> float:
    """``accounting.METRICS['episode_sharpe']`` of episodes with these returns: mean / sd
    (ddof 1), 0 with fewer than 2 episodes or an sd of 0 (``accounting.finalize``'s cut-off)."""
    r = np.asarray(returns, float)
    if len(r) < 2:
        return 0.0
    m, sd = r.mean(), r.std(ddof=1)
    return float(m / sd) if sd > 1e-12 * max(abs(m), 1.0) else 0.0


def episode_table(episodes: pd.DataFrame, cycles: Sequence[int],
                  by: Sequence[str] = ()) -> pd.DataFrame:
    """Per arm or reference rule (and ``by``, e.g. ``symbol``) over the deploy episodes of
    ``cycles`` (``episodes.parquet``): the mean over seeds of each seed's PnL per episode and
    episode Sharpe (mean / sd of its episodes' returns; not annualised), per deploy mode
    (``greedy_*``, ``sampled_*``; the rules play greedy only), and the episodes per seed."""
    e = episodes[episodes["cycle"].isin(list(cycles))]
    keys = ["kind", "arm", *by]
    per = e.groupby([*keys, "mode", "seed"], sort=False).agg(
        pnl=("pnl", "mean"), sharpe=("return", episode_sharpe), n=("pnl", "size"))
    wide = per.groupby(level=[*keys, "mode"], sort=False).mean().unstack("mode")
    out = pd.DataFrame(index=wide.index)
    for mode in ("greedy", "sampled"):
        for m in ("pnl", "sharpe"):
            out[f"{mode}_{m}"] = wide[(m, mode)] if (m, mode) in wide.columns else np.nan
    out["episodes_per_seed"] = wide[("n", "greedy")]
    return out.reset_index()
