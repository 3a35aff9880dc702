"""Paired statistics of a closed-loop policy comparison (host only; numpy / scipy).

Every arm (weight policy) of a ``tpfl-loop`` run trains and deploys on the same markets from
the same initial network per seed (common random numbers), so the unit of comparison is the
per-seed difference ``arm - control`` of a metric. For each control (``fixed_1.0``: the seed's
default weight; ``fixed_0.0``: no TP bonus) and each other arm this module gives the mean paired
difference, its paired t-interval and p-value, a percentile bootstrap interval of the mean,
Holm-adjusted p-values over the arms of that control (family-wise error ``1 - level``), the
intervals at each arm's Holm step level ``1 - alpha / (m - rank + 1)`` (an interval excludes 0
exactly when that arm's unadjusted p clears its own Holm step; the Holm decision ``reject``
additionally requires every smaller p to clear its step), and the minimum detectable effect at
the run's seed count (paired t-test, two-sided ``alpha``, 80% power, from the paired sd).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as st

PAIRED_COLUMNS = ("control", "arm", "metric", "n", "mean_diff", "sd_diff", "t_lo", "t_hi", "p",
                  "p_holm", "reject", "holm_level", "holm_lo", "holm_hi", "boot_lo", "boot_hi",
                  "mde")


def per_seed(summary: pd.DataFrame, metric: str, arm: str = "policy",
             seed: str = "seed") -> pd.DataFrame:
    """``[seed x arm]`` table of ``metric`` (one row per seed; raises on duplicates)."""
    for col in (arm, seed, metric):
        if col not in summary:
            raise ValueError(f"per_seed: summary has no column {col!r}; columns are "
                             f"{list(summary.columns)}")
    if summary.duplicated([arm, seed]).any():
        raise ValueError(f"per_seed: several rows per ({arm}, {seed}); expected one")
    return summary.pivot(index=seed, columns=arm, values=metric)


def paired_diffs(wide: pd.DataFrame, arm: str, control: str) -> np.ndarray:
    """``arm - control`` per seed, seeds where both are finite (no silent drop: NaN pairs are
    excluded and counted in the table's ``n``)."""
    for name in (arm, control):
        if name not in wide:
            raise ValueError(f"paired_diffs: no arm {name!r}; arms are {list(wide.columns)}")
    d = wide[arm].to_numpy(float) - wide[control].to_numpy(float)
    return d[np.isfinite(d)]


def t_test(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, t-interval (lo, hi) at ``level`` and two-sided p of the paired differences ``d``.

    A zero-variance sample gives the degenerate interval ``[mean, mean]`` and p = 1 when the
    mean is 0, else 0. Fewer than 2 values: NaN interval and p."""
    d = np.asarray(d, float)
    n = len(d)
    if n == 0:
        return (float("nan"),) * 4
    m = float(d.mean())
    if n < 2:
        return m, float("nan"), float("nan"), float("nan")
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return m, m, m, 1.0 if m == 0.0 else 0.0
    se = sd / np.sqrt(n)
    half = float(st.t.ppf(0.5 + level / 2, n - 1) * se)
    p = float(2 * st.t.sf(abs(m) / se, n - 1))
    return m, m - half, m + half, p


def bootstrap_ci(d: np.ndarray, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (NaN with < 2 values)."""
    d = np.asarray(d, float)
    if len(d) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (int(n_boot), len(d)))].mean(1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN stays NaN and is not counted in m)."""
    p = np.asarray(p, float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def holm_levels(p: Sequence[float], level: float = 0.95) -> np.ndarray:
    """Confidence levels that agree with Holm's decisions: ``1 - alpha / (m - k + 1)`` for the
    arm of p-rank ``k`` while the step-down rejects, and the level of the first step that does
    not reject for that arm and every later one. A p-value's t interval excludes 0 exactly
    when it is below its level's alpha, so an interval excludes 0 iff Holm rejects that arm
    (an arm behind a non-rejected step never shows an interval clear of 0)."""
    p = np.asarray(p, float)
    alpha = 1.0 - level
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    step_alpha = alpha / (m - np.arange(m))
    fail = np.flatnonzero(p[order] > step_alpha)
    if len(fail):
        step_alpha[fail[0]:] = step_alpha[fail[0]]
    out[order] = 1.0 - step_alpha
    return out


def mde_paired(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test at ``alpha`` detects with
    ``power``, given the sd of the differences and ``n`` seeds (noncentral t; NaN if n < 2)."""
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    if sd == 0.0:
        return 0.0
    df = n - 1
    tc = st.t.ppf(1 - alpha / 2, df)

    def gap(es: float) -> float:
        nc = es * np.sqrt(n)
        lower = st.nct.cdf(-tc, df, nc)     # the wrong-sign tail (NaN where scipy underflows)
        return st.nct.sf(tc, df, nc) + (lower if np.isfinite(lower) else 0.0) - power

    hi = 1.0
    while gap(hi) < 0:          # power grows with the effect; bracket before nct overflows
        hi *= 2.0
        if hi > 1e4:
            return float("nan")
    es = optimize.brentq(gap, 1e-9, hi)
    return float(es * sd)


def paired_table(summary: pd.DataFrame, metric: str, controls: Sequence[str],
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                 arm: str = "policy", seed_col: str = "seed") -> pd.DataFrame:
    """Paired comparison of every arm against each control on ``metric`` (``PAIRED_COLUMNS``;
    Holm over the arms of each control)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_table: level = {level!r}; expected in (0, 1)")
    wide = per_seed(summary, metric, arm, seed_col)
    arms = list(dict.fromkeys(summary[arm]))
    rows = []
    for ctrl in controls:
        if ctrl not in wide:
            raise ValueError(f"paired_table: control arm {ctrl!r} is not in the run; arms are "
                             f"{arms}")
        fam = []
        for a in arms:
            if a == ctrl:
                continue
            d = paired_diffs(wide, a, ctrl)
            m, lo, hi, p = t_test(d, level)
            fam.append({"control": ctrl, "arm": a, "metric": metric, "n": len(d),
                        "mean_diff": m, "sd_diff": float(d.std(ddof=1)) if len(d) > 1
                        else float("nan"), "t_lo": lo, "t_hi": hi, "p": p, "_d": d})
        if not fam:
            continue
        p = np.array([r["p"] for r in fam])
        adj, lev = holm(p), holm_levels(p, level)
        for r, pa, lv in zip(fam, adj, lev, strict=True):
            d = r.pop("_d")
            lv_ = lv if np.isfinite(lv) else level
            _, hlo, hhi, _ = t_test(d, lv_)
            blo, bhi = bootstrap_ci(d, lv_, n_boot, seed)
            r |= {"p_holm": pa, "reject": bool(np.isfinite(pa) and pa <= 1.0 - level),
                  "holm_level": lv, "holm_lo": hlo, "holm_hi": hhi, "boot_lo": blo,
                  "boot_hi": bhi, "mde": mde_paired(r["sd_diff"], r["n"], 1.0 - level)}
            rows.append(r)
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def format_paired(table: pd.DataFrame) -> str:
    """Markdown table of a ``paired_table``."""
    lines = ["| control | arm | n | mean diff | Holm CI (t) | bootstrap CI | p | p (Holm) | "
             "MDE (80%) | decision |", "|" + "---|" * 10]
    for _, r in table.iterrows():
        dec = ("**higher**" if r["mean_diff"] > 0 else "**lower**") if r["reject"] else "no diff."
        lines.append(
            f"| {r['control']} | {r['arm']} | {r['n']} | {r['mean_diff']:.4g} | "
            f"[{r['holm_lo']:.4g}, {r['holm_hi']:.4g}] | [{r['boot_lo']:.4g}, "
            f"{r['boot_hi']:.4g}] | {r['p']:.3g} | {r['p_holm']:.3g} | {r['mde']:.3g} | "
            f"{dec} |")
    return "\n".join(lines)


def plot_paired(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Paired differences (mean, Holm-level t-interval, bootstrap interval) per control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctrls = list(dict.fromkeys(table["control"]))
    fig, axes = plt.subplots(1, max(len(ctrls), 1), figsize=(6 * max(len(ctrls), 1), 0.9 +
                             0.35 * max(table.groupby("control").size().max(), 1)),
                             squeeze=False)
    for ax, ctrl in zip(axes[0], ctrls, strict=False):
        g = table[table["control"] == ctrl].reset_index(drop=True)
        y = np.arange(len(g))
        m = g["mean_diff"].to_numpy(float)
        lo, hi = g["holm_lo"].to_numpy(float), g["holm_hi"].to_numpy(float)
        blo, bhi = g["boot_lo"].to_numpy(float), g["boot_hi"].to_numpy(float)
        ax.errorbar(m, y, xerr=np.nan_to_num([m - lo, hi - m]), fmt="o", capsize=4,
                    label="paired t (Holm level)", color="tab:blue")
        ax.errorbar(m, y + 0.2, xerr=np.nan_to_num([m - blo, bhi - m]), fmt="none",
                    capsize=2, label="bootstrap (Holm level)", color="tab:orange")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, g["arm"], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{g['metric'].iloc[0]}: arm - {ctrl} (per seed)")
        ax.set_title(f"vs {ctrl}", fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["PAIRED_COLUMNS", "bootstrap_ci", "format_paired", "holm", "holm_levels",
           "mde_paired", "paired_diffs", "paired_table", "per_seed", "plot_paired", "t_test"]
