"""Paired statistics of a closed-loop policy comparison (host only; numpy / scipy).

Every arm (weight policy) of a ``tpfl-loop`` run trains and deploys on the same markets from
the same initial network per seed (common random numbers), so the unit of comparison is the
per-seed difference ``d = arm - control`` of a metric. Each control (``fixed_1.0``: the seed's
default weight; ``fixed_0.0``: no TP bonus) defines one *family*: its ``m`` other arms (those
with at least 2 finite pairs). ``level`` (default 0.95) is the family-wise confidence level and
``alpha = 1 - level`` the family-wise error rate. The decision rule is Holm's step-down test
over the arms of a family; the intervals with family-level coverage are the Bonferroni
simultaneous intervals. ``paired_table`` has one row per (control, arm) with the columns
(``PAIRED_COLUMNS``):

- ``control``, ``arm``, ``metric``: the comparison ``arm - control`` on ``metric``.
- ``n``: seeds where both arms are finite (the pairs used).
- ``mean_diff``, ``sd_diff``: mean and sample sd (ddof 1) of the ``n`` paired differences.
- ``t_lo``, ``t_hi``: the unadjusted paired t-interval at ``level`` for this arm alone (per
  comparison; no multiplicity adjustment).
- ``p``: unadjusted two-sided paired t-test p-value (H0: mean difference 0).
- ``p_holm``: Holm-adjusted p-value over the family (monotone in ``p``; tied p-values get
  equal adjusted values; equals ``statsmodels``' ``multipletests(p, method="holm")``).
- ``reject``: the decision: ``p_holm <= alpha`` (Holm, family-wise error ``alpha``).
- ``m``: the number of arms in this control's family (the Holm and Bonferroni ``m``).
- ``family_level``: ``level``, the nominal family-wise confidence of ``simul_lo/hi``.
- ``simul_level``: ``1 - alpha / m``, the per-arm level of the simultaneous intervals.
- ``simul_lo``, ``simul_hi``: the simultaneous (family-level) paired t-interval: the t-interval
  at ``simul_level`` (Bonferroni). By Bonferroni's inequality all ``m`` intervals of a family
  cover their true mean differences jointly with probability >= ``level``, whatever the true
  effects and the dependence between arms (they share the control). An interval clear of 0
  implies ``reject`` (then ``p < alpha / m``, so ``p_holm <= m p < alpha``); Holm can also
  reject arms whose simultaneous interval contains 0 (its later steps are less stringent).
- ``holm_level``, ``holm_lo``, ``holm_hi``: the Holm *step-level* t-interval, a display of the
  decision, not a confidence interval: the arm of p-rank ``k`` gets ``1 - alpha / (m - k + 1)``
  while the step-down rejects, and every arm from the first non-rejected step on gets that
  step's level; tied p-values share the level of the first rank of their tie (the adjusted
  p-values are equal, so are the decisions). ``holm_lo/hi`` excludes 0 exactly when
  ``reject``. Its level is chosen from the data, so it has no family-level (nor a guaranteed
  per-arm) coverage: with real effects present the joint coverage falls below ``level`` (the
  tests measure 0.907 at 0.95 for 5 arms, 8 seeds, effects 0..4 sd; the simultaneous
  intervals: 0.952). Use ``simul_lo/hi`` for family-level intervals.
- ``boot_lo``, ``boot_hi``: the percentile bootstrap interval of the mean difference at
  ``level`` for this arm alone (unadjusted, per comparison; ``n_boot`` resamples of the seeds,
  same ``seed`` for every arm). Descriptive only, not used for decisions: it can exclude 0 for
  a non-rejected arm. With fewer than ``MIN_BOOT_SEEDS`` (10) seeds it is anti-conservative
  (too narrow), so :func:`format_paired` and :func:`plot_paired` leave it out there.
- ``mde``: the minimum detectable effect: the smallest true mean difference that the
  two-sided paired t-test at ``mde_alpha`` detects with 80% power at this ``n``, from
  ``sd_diff`` (noncentral t, as ``statsmodels``' ``TTestPower``).
- ``mde_alpha``: ``alpha / m``, the level of ``mde``: Holm's first (most stringent) step and
  the Bonferroni level. Holm rejects every arm with ``p <= alpha / m``, so a true difference of
  size ``mde`` is rejected by Holm with >= 80% power whatever the other arms do (and makes the
  simultaneous interval exclude 0 with 80% power).

:func:`pairwise_table` compares every pair of arms (Holm over all pairs): the report names a
best arm only when it is higher than every other arm there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as st

MIN_BOOT_SEEDS = 10     # fewer seeds: the percentile bootstrap is not shown (anti-conservative)
PAIRED_COLUMNS = ("control", "arm", "metric", "n", "mean_diff", "sd_diff", "t_lo", "t_hi", "p",
                  "p_holm", "reject", "m", "family_level", "simul_level", "simul_lo", "simul_hi",
                  "holm_level", "holm_lo", "holm_hi", "boot_lo", "boot_hi", "mde", "mde_alpha")


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


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean of the finite values of ``x`` and the half-width of its t-interval
    (:func:`t_test`; NaN half-width with fewer than 2 values)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    mean, lo, hi, _ = t_test(x, level)
    return float(mean), float((hi - lo) / 2)


def bootstrap_ci(d: np.ndarray, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` at ``level`` (NaN with < 2 values).
    Per comparison: no multiplicity adjustment."""
    d = np.asarray(d, float)
    if len(d) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (int(n_boot), len(d)))].mean(1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN stays NaN and is not counted in m). Monotone in
    ``p``; tied p-values get equal adjusted values (as ``statsmodels``' ``multipletests``)."""
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
    """Holm *step levels*, a display of Holm's decisions (not confidence levels with any
    coverage guarantee: the level is chosen from the data).

    With ``alpha = 1 - level`` and ``m`` finite p-values, the arm of p-rank ``k`` gets
    ``1 - alpha / (m - k + 1)`` while the step-down rejects, and every arm from the first
    non-rejected step on gets that step's level. Tied p-values share the level of the first rank
    of their tie (their Holm-adjusted p-values and decisions are equal). A t-interval at this
    level excludes 0 exactly when ``holm(p) <= alpha``. NaN p-values get NaN."""
    p = np.asarray(p, float)
    alpha = 1.0 - level
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    first = np.searchsorted(ps, ps, side="left")    # 0-based rank of the first of each tie
    step_alpha = alpha / (m - first)
    fail = np.flatnonzero(holm(ps) > alpha)         # the decision, exactly as ``reject``
    if len(fail):
        step_alpha[fail[0]:] = step_alpha[fail[0]]
    out[order] = 1.0 - step_alpha
    return out


def simultaneous_level(m: int, level: float = 0.95) -> float:
    """Per-interval level ``1 - (1 - level) / m`` at which ``m`` intervals cover jointly with
    probability >= ``level`` (Bonferroni; valid under any dependence between them)."""
    if m < 1:
        raise ValueError(f"simultaneous_level: m = {m!r}; expected >= 1")
    return 1.0 - (1.0 - level) / m


def mde_paired(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test at ``alpha`` detects with
    ``power``, given the sd of the differences and ``n`` seeds (noncentral t, both tails, as
    ``statsmodels``' ``TTestPower``; NaN if n < 2). ``paired_table`` passes ``alpha / m``."""
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
    """Paired comparison of every arm against each control on ``metric``: one row per
    (control, arm) with ``PAIRED_COLUMNS`` (described in the module docstring). ``level`` is
    the family-wise level (Holm decisions and Bonferroni simultaneous intervals over the arms
    of each control); ``n_boot`` and ``seed`` drive the unadjusted bootstrap intervals."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_table: level = {level!r}; expected in (0, 1)")
    alpha = 1.0 - level
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
            mean, lo, hi, p = t_test(d, level)
            fam.append({"control": ctrl, "arm": a, "metric": metric, "n": len(d),
                        "mean_diff": mean, "sd_diff": float(d.std(ddof=1)) if len(d) > 1
                        else float("nan"), "t_lo": lo, "t_hi": hi, "p": p, "_d": d})
        if not fam:
            continue
        p = np.array([r["p"] for r in fam])
        m = int(np.isfinite(p).sum())           # arms with a test: the Holm / Bonferroni m
        adj, lev = holm(p), holm_levels(p, level)
        s_lev = simultaneous_level(max(m, 1), level)
        for r, pa, lv in zip(fam, adj, lev, strict=True):
            d = r.pop("_d")
            _, hlo, hhi, _ = t_test(d, lv if np.isfinite(lv) else level)
            _, slo, shi, _ = t_test(d, s_lev)
            blo, bhi = bootstrap_ci(d, level, n_boot, seed)
            r |= {"p_holm": pa, "reject": bool(np.isfinite(pa) and pa <= alpha), "m": m,
                  "family_level": level, "simul_level": s_lev, "simul_lo": slo,
                  "simul_hi": shi, "holm_level": lv, "holm_lo": hlo, "holm_hi": hhi,
                  "boot_lo": blo, "boot_hi": bhi,
                  "mde": mde_paired(r["sd_diff"], r["n"], 1.0 - s_lev),
                  "mde_alpha": 1.0 - s_lev}
            rows.append(r)
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


PAIRWISE_COLUMNS = ("arm_a", "arm_b", "metric", "n", "mean_diff", "t_lo", "t_hi", "p",
                    "p_holm", "reject", "m", "family_level")


def pairwise_table(summary: pd.DataFrame, metric: str, level: float = 0.95,
                   arm: str = "policy", seed_col: str = "seed") -> pd.DataFrame:
    """Every unordered pair of arms ``(a, b)`` (in the summary's arm order) compared on
    ``metric``: per-seed paired differences ``a - b`` (seeds where both are finite), mean,
    unadjusted t-interval at ``level``, two-sided p, and Holm over all ``m`` pairs with a
    finite p (``reject``: ``p_holm <= 1 - level``; family-wise error ``1 - level`` over
    every pair, so it holds for any arm picked after the fact, e.g. the highest mean)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"pairwise_table: level = {level!r}; expected in (0, 1)")
    wide = per_seed(summary, metric, arm, seed_col)
    arms = list(dict.fromkeys(summary[arm]))
    rows = []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            d = paired_diffs(wide, a, b)
            mean, lo, hi, p = t_test(d, level)
            rows.append({"arm_a": a, "arm_b": b, "metric": metric, "n": len(d),
                         "mean_diff": mean, "t_lo": lo, "t_hi": hi, "p": p})
    p = np.array([r["p"] for r in rows], float)
    adj = holm(p)
    m = int(np.isfinite(p).sum())
    for r, pa in zip(rows, adj, strict=True):
        r |= {"p_holm": pa, "reject": bool(np.isfinite(pa) and pa <= 1.0 - level), "m": m,
              "family_level": level}
    return pd.DataFrame(rows, columns=list(PAIRWISE_COLUMNS))


def _pct(level: float) -> str:
    return f"{100 * level:.4g}%"


def _family_level(table: pd.DataFrame) -> float:
    return float(table["family_level"].iloc[0]) if len(table) else 0.95


def show_bootstrap(table: pd.DataFrame) -> bool:
    """Whether a table's bootstrap intervals are shown: every row has ``n >= MIN_BOOT_SEEDS``."""
    return bool(len(table)) and int(table["n"].min()) >= MIN_BOOT_SEEDS


def bootstrap_note(table: pd.DataFrame) -> str:
    """One sentence: whether the bootstrap intervals are shown, and why not when they are not."""
    if show_bootstrap(table):
        return ("Percentile bootstrap intervals: per arm, unadjusted, descriptive only (not "
                "used for decisions).")
    n = int(table["n"].min()) if len(table) else 0
    return (f"Bootstrap intervals omitted: n = {n} seeds < {MIN_BOOT_SEEDS}, where the "
            "percentile bootstrap is anti-conservative (too narrow); they stay in "
            "`paired.csv` (boot_lo, boot_hi) as descriptive numbers only.")


def format_paired(table: pd.DataFrame, bootstrap: bool | None = None) -> str:
    """Markdown table of a ``paired_table``: the simultaneous (family-level, Bonferroni) t
    interval, p, Holm-adjusted p, the MDE at ``alpha / m``, the Holm decision and, with
    ``bootstrap`` (default: :func:`show_bootstrap`), the unadjusted per-arm bootstrap
    interval."""
    boot = show_bootstrap(table) if bootstrap is None else bootstrap
    lv = _pct(_family_level(table))
    cols = ["control", "arm", "n", "mean diff", f"{lv} simultaneous CI (t, Bonferroni)"]
    cols += [f"{lv} bootstrap CI (per arm, unadjusted)"] if boot else []
    cols += ["p", "p (Holm)", "MDE (80% power, α/m)", "decision (Holm)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        dec = ("**higher**" if r["mean_diff"] > 0 else "**lower**") if r["reject"] else "no diff."
        cells = [str(r["control"]), str(r["arm"]), str(r["n"]), f"{r['mean_diff']:.4g}",
                 f"[{r['simul_lo']:.4g}, {r['simul_hi']:.4g}]"]
        cells += [f"[{r['boot_lo']:.4g}, {r['boot_hi']:.4g}]"] if boot else []
        cells += [f"{r['p']:.3g}", f"{r['p_holm']:.3g}", f"{r['mde']:.3g}", dec]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_paired(table: pd.DataFrame, path: Path, title: str = "",
                bootstrap: bool | None = None) -> Path:
    """Paired differences per control: mean, simultaneous (family-level, Bonferroni) t
    interval and, with ``bootstrap`` (default: :func:`show_bootstrap`), the unadjusted per-arm
    percentile bootstrap interval; ``*`` marks Holm rejections."""
    boot = show_bootstrap(table) if bootstrap is None else bootstrap
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = _pct(_family_level(table))
    ctrls = list(dict.fromkeys(table["control"]))
    rows = table.groupby("control").size().max() if len(table) else 1   # one arm: no rows
    fig, axes = plt.subplots(1, max(len(ctrls), 1), figsize=(6 * max(len(ctrls), 1), 0.9 +
                             0.35 * max(rows, 1)), squeeze=False)
    for ax, ctrl in zip(axes[0], ctrls, strict=False):
        g = table[table["control"] == ctrl].reset_index(drop=True)
        y = np.arange(len(g))
        m = g["mean_diff"].to_numpy(float)
        lo, hi = g["simul_lo"].to_numpy(float), g["simul_hi"].to_numpy(float)
        blo, bhi = g["boot_lo"].to_numpy(float), g["boot_hi"].to_numpy(float)
        ax.errorbar(m, y, xerr=np.nan_to_num([m - lo, hi - m]), fmt="o", capsize=4,
                    label=f"paired t, {lv} simultaneous (Bonferroni, m={int(g['m'].iloc[0])})",
                    color="tab:blue")
        if boot:
            ax.errorbar(m, y + 0.2, xerr=np.nan_to_num([m - blo, bhi - m]), fmt="none",
                        capsize=2, label=f"percentile bootstrap, {lv} per arm (unadjusted)",
                        color="tab:orange")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [f"{a} *" if rej else str(a) for a, rej in zip(g["arm"], g["reject"],
                                                                        strict=True)],
                      fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{g['metric'].iloc[0]}: arm - {ctrl} (per seed)")
        ax.set_title(f"vs {ctrl} (* = Holm rejects; family-wise error "
                     f"{_pct(1.0 - _family_level(table))})", fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["MIN_BOOT_SEEDS", "PAIRED_COLUMNS", "PAIRWISE_COLUMNS", "bootstrap_ci",
           "bootstrap_note", "format_paired", "holm", "holm_levels", "mean_ci", "mde_paired",
           "paired_diffs", "paired_table", "pairwise_table", "per_seed", "plot_paired",
           "show_bootstrap", "simultaneous_level", "t_test"]
