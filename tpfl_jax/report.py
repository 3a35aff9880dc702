"""Tables and plots of closed-loop runs (host only; matplotlib Agg).

``summary.csv`` has one row per policy x seed with the final-cycle and out-of-sample deploy
metrics; ``policy_table`` reduces it across seeds to mean and 95% t-interval per policy
(descriptive; ``tpfl-loop`` decides with the paired tables of ``tpfl_jax.stats``, reported
first by ``write_loop_report``).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as _st  # noqa: E402

TABLE_METRICS = ("final_pnl", "final_sharpe", "oos_pnl", "oos_pnl_greedy", "oos_sharpe",
                 "oos_tp_skill", "hit_rate", "actual_r", "final_weight", "updates", "converged")


def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and half-width of the two-sided t-interval (half-width NaN with < 2 values)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float(len(x))
    half = float(_st.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, half, float(len(x))


def policy_table(summary: pd.DataFrame, by: tuple[str, ...] = ("policy",),
                 rank: bool = True) -> pd.DataFrame:
    """Mean and 95% CI half-width across seeds per policy, ranked by final OOS PnL (``rank``;
    else in the summary's policy order)."""
    rows = []
    for key, g in summary.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key, strict=True))
        for m in TABLE_METRICS:
            if m in g:
                mean, half, n = t_interval(g[m].to_numpy())
                row[m], row[f"{m}_ci95"] = mean, half
        row["seeds"] = len(g)
        rows.append(row)
    table = pd.DataFrame(rows)
    if rank:
        table = table.sort_values(["final_pnl", "final_sharpe"], ascending=False)
    return table.reset_index(drop=True)


def format_table(table: pd.DataFrame, first: str = "rank") -> str:
    """Markdown table with ``mean ± ci`` cells (``first``: the index column's title)."""
    keys = [c for c in table.columns if not c.endswith("_ci95") and c not in TABLE_METRICS]
    cols = keys + [m for m in TABLE_METRICS if m in table]
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for i, r in table.iterrows():
        cells = [str(r[k]) for k in keys]
        for m in TABLE_METRICS:
            if m in table:
                ci = r[f"{m}_ci95"]
                cells.append(f"{r[m]:.4g} ± {ci:.2g}" if np.isfinite(ci) else f"{r[m]:.4g}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _errbar(ax, names, vals, title):
    m = [t_interval(v)[0] for v in vals]
    h = [t_interval(v)[1] for v in vals]
    ax.bar(range(len(names)), m, yerr=np.nan_to_num(h), capsize=3, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="k", lw=0.5)


def plot_loop(run_dir: Path, cycles: pd.DataFrame) -> list[Path]:
    """Weight trajectories, hit rate / actual R / PnL with seed CIs, learning curves."""
    out = []
    names = list(dict.fromkeys(cycles["policy"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for n in names:
        g = cycles[cycles["policy"] == n].groupby("cycle")["weight"]
        ax.plot(g.mean().index, g.mean().values, marker="o", label=n)
    ax.set_xlabel("cycle")
    ax.set_ylabel("tp_reward_weight (mean over seeds)")
    ax.set_title("Weight trajectory per policy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.append(run_dir / "weight_trajectory.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    per_seed = cycles.groupby(["policy", "seed"], sort=False)[
        ["deploy_hit_rate", "deploy_actual_r", "deploy_pnl"]].mean().reset_index()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, col, title in zip(axes, ("deploy_hit_rate", "deploy_actual_r", "deploy_pnl"),
                              ("OOS TP hit rate", "OOS actual R", "OOS PnL per episode"),
                              strict=True):
        _errbar(ax, names, [per_seed[per_seed["policy"] == n][col].to_numpy() for n in names],
                title + " (95% CI over seeds)")
    fig.tight_layout()
    out.append(run_dir / "policy_metrics.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    return out


def plot_curves(path: Path, curves: dict[str, np.ndarray], key: str, title: str) -> Path:
    """Learning curves: ``curves[name]`` is ``[seeds, updates]``; mean and min/max band."""
    import warnings

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        c = np.asarray(c, float)
        x = np.arange(1, c.shape[-1] + 1)
        with warnings.catch_warnings():   # updates without a finished episode are NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(x, np.nanmean(c, 0), label=name)
            if c.shape[0] > 1:
                ax.fill_between(x, np.nanmin(c, 0), np.nanmax(c, 0), alpha=0.15)
    ax.set_xlabel("PPO update")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, table: pd.DataFrame, header: str, plots: list[Path]) -> Path:
    """``report.md``: header, ranked policy table, plots."""
    text = [f"# {header}", "", "Policies ranked by final-cycle out-of-sample PnL (mean ± 95% "
            "t-interval half-width across seeds). PnL in currency per deploy episode; Sharpe "
            "per step (not annualised); oos_* average over all cycles.", "",
            format_table(table), ""]
    text += [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path


SUMMARY_COLUMNS = ("policy", "final_pnl", "final_sharpe")


def _read_summary(f: Path) -> pd.DataFrame:
    """One ``summary.csv``; unreadable or without ``SUMMARY_COLUMNS`` -> ``ValueError``
    naming the file and what is missing."""
    try:
        df = pd.read_csv(f)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"tpfl-report: {f}: not a summary table ({type(e).__name__}: "
                         f"{str(e).strip()[:200]})") from None
    missing = [c for c in SUMMARY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"tpfl-report: {f}: missing column(s) {missing}; present: "
                         f"{[str(c) for c in df.columns]} (expected a summary.csv written by "
                         "tpfl-loop or tpfl-train)")
    return df
def training_table(cycles: pd.DataFrame) -> pd.DataFrame:
    """Per cycle, over policies x seeds: updates used (mean, min, max), share of agents that met
    the training criterion, final entropy against its maximum, final training return."""
    g = cycles.groupby("cycle")
    return pd.DataFrame({
        "updates_mean": g["train_updates"].mean(), "updates_min": g["train_updates"].min(),
        "updates_max": g["train_updates"].max(), "converged": g["train_converged"].mean(),
        "entropy": g["train_final_entropy"].mean(), "entropy_max": g["train_entropy_max"].mean(),
        "entropy_ratio": (g["train_final_entropy"].mean() / g["train_entropy_max"].mean()),
        "train_return": g["train_final_return"].mean(),
    }).reset_index()


def _markdown(df: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


def write_loop_report(run_dir: Path, header: str, paired: dict[str, pd.DataFrame],
                      primary: str, training: pd.DataFrame, table: pd.DataFrame,
                      plots: list[Path], notes: list[str] | None = None) -> Path:
    """``report.md`` of a loop run: the primary metric's paired table first, then the
    secondary metrics', the training criterion per cycle, the descriptive table, the plots."""
    from tpfl_jax.stats import format_paired

    text = [f"# {header}", ""]
    text += [f"- {n}" for n in notes or []] + [""]
    text += [f"## Primary metric: `{primary}` (declared in config.stats before the run)", "",
             "Per-seed paired differences arm - control (common random numbers), mean; "
             "intervals at each arm's Holm step level (t and percentile bootstrap); p-values "
             "Holm-adjusted over the arms of each control; decision = Holm rejection at the "
             "family level; MDE = the smallest true difference detectable with 80% power at "
             "this seed count.", "", format_paired(paired[primary]), ""]
    for m, t in paired.items():
        if m != primary:
            text += [f"### Secondary: `{m}`", "", format_paired(t), ""]
    text += ["## Training per cycle (all policies x seeds)", "",
             _markdown(training), "",
             "## Descriptive per-policy means (unpaired; ± 95% t half-width over seeds)", "",
             format_table(table, first="#"), ""]
    text += [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path


def collect(path: str | Path) -> pd.DataFrame:
    """Every ``summary.csv`` under ``path`` (a run or a multirun dir), with a ``run`` column and
    the job's overrides (from ``.hydra/overrides.yaml``) as ``overrides``."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tpfl-report: {path} is not a directory; expected a run or "
                                "multirun output directory")
    frames = []
    for f in sorted(path.rglob("summary.csv")):
        df = _read_summary(f)
        df.insert(0, "run", str(f.parent.relative_to(path)) or ".")
        ov = f.parent / ".hydra" / "overrides.yaml"
        df.insert(1, "overrides", " ".join(
            ln.strip("- \n") for ln in ov.read_text().splitlines()) if ov.exists() else "")
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"tpfl-report: no summary.csv under {path}")
    return pd.concat(frames, ignore_index=True)


def report_dir(path: str | Path) -> tuple[pd.DataFrame, Path]:
    """Collect a run or multirun dir into ``report.md`` + plots there; returns the table."""
    path = Path(path)
    summary = collect(path)
    by = ("overrides", "policy") if summary["run"].nunique() > 1 else ("policy",)
    table = policy_table(summary, by)
    plots: list[Path] = []
    cyc = sorted(path.rglob("cycles.csv"))
    if len(cyc) == 1:
        plots = plot_loop(path, pd.read_csv(cyc[0]))
    table.to_csv(path / "policy_table.csv", index=False)
    write_report(path, table, f"tpfl report: {path}", plots)
    return table, path


def read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(ln) for ln in Path(path).read_text().splitlines() if ln])
