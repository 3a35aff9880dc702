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

from tpfl_jax.errors import UserError  # noqa: E402
from tpfl_jax.rundir import (  # noqa: E402
    RECORD,
    SWEEP_MANIFEST,
    read_record,
    save_figure,
    write_frame,
    write_text,
)
from tpfl_jax.stats import format_paired, mean_ci  # noqa: E402

TABLE_METRICS = ("final_pnl", "oos_pnl", "oos_pnl_greedy", "oos_trade_sharpe", "oos_tp_skill",
                 "oos_hit_rate", "oos_mean_r", "final_weight", "updates", "converged")
SUMMARY_COLUMNS = ("policy", "final_pnl", "oos_pnl")
COLLECTED_REPORT = "tpfl-report.md"   # tpfl-report's own file (never a run's report.md)


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
                row[m], row[f"{m}_ci95"] = mean_ci(g[m].to_numpy())
        row["seeds"] = len(g)
        rows.append(row)
    table = pd.DataFrame(rows)
    if rank:
        table = table.sort_values(["oos_pnl", "final_pnl"], ascending=False)
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


def plot_weights(path: Path, cycles: pd.DataFrame) -> Path:
    """The weight each arm trained with per cycle (mean over seeds, band = min..max)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for n in dict.fromkeys(cycles["policy"]):
        g = cycles[cycles["policy"] == n].groupby("cycle")["weight"]
        line, = ax.plot(g.mean().index, g.mean().values, marker="o", label=n)
        ax.fill_between(g.mean().index, g.min().values, g.max().values, alpha=0.12,
                        color=line.get_color())
    ax.set(xlabel="cycle", ylabel="tp_reward_weight", title="Weight in force per cycle "
           "(mean over seeds; band: min..max)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_levels(path: Path, levels: pd.DataFrame, primary: str = "oos_pnl") -> Path:
    """Every arm's ``primary`` (mean and 95% t-interval over seeds) beside the reference
    rules as horizontal lines."""
    arms = levels[levels["kind"] == "arm"]
    refs = levels[levels["kind"] == "reference"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(arms) + 3), 4.2))
    x = np.arange(len(arms))
    ax.errorbar(x, arms[primary], yerr=np.nan_to_num(arms[f"{primary}_ci95"]), fmt="o",
                capsize=4, color="tab:blue", label="arm (95% CI over seeds)")
    styles = {"flat": ":", "buy_and_hold": "--", "trend": "-", "bayes": (0, (5, 1)),
              "oracle": "-."}
    for _, r in refs.iterrows():      # a name may carry a label: "oracle (hidden labels, ...)"
        ax.axhline(r[primary], ls=styles.get(r["name"].split(" ")[0], "-"), color="grey",
                   lw=1)
        ax.annotate(f"{r['name']} {r[primary]:+.0f}", (len(arms) - 0.5, r[primary]),
                    fontsize=7, va="bottom", ha="right", color="dimgrey")
    ax.set_xticks(x, arms["name"], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=f"{primary} (PnL per episode)",
           title="Arms beside the reference rules (same episodes)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_learning_curves(path: Path, curves: pd.DataFrame, ref_cycles: pd.DataFrame,
                         cycle_steps: int, by: str = "policy") -> Path:
    """One panel per arm (or weight): held-out greedy PnL per episode after every training
    chunk (mean over seeds, band = 95% t-interval), sampled PnL dashed, and the reference rules
    on the same episodes as horizontal segments per cycle (parameters chosen on training
    data)."""
    names = list(dict.fromkeys(curves[by])) if len(curves) else []
    n = max(len(names), 1)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    w, h = (3.6, 2.9) if cols > 1 else (6.0, 3.6)       # one panel: wide enough to read
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows + 0.4), squeeze=False,
                             sharey=True)
    styles = {"flat": ("k", ":"), "buy_and_hold": ("tab:orange", "--"),
              "trend": ("tab:green", "-"), "bayes": ("tab:red", (0, (5, 1))),
              "oracle": ("tab:purple", "-.")}
    refs = (ref_cycles.groupby(["rule", "cycle"], sort=False)["deploy_curve_pnl"].mean()
            if len(ref_cycles) else pd.Series(dtype=float))
    for ax, name in zip(axes.ravel(), names, strict=False):
        g = curves[curves[by] == name]
        for col, ls in (("greedy_pnl", "-"), ("sampled_pnl", "--")):
            agg = g.groupby("env_steps")[col].apply(lambda v: mean_ci(v.to_numpy()))
            xs = agg.index.to_numpy() / 1e6
            m = np.array([a[0] for a in agg])
            h = np.nan_to_num(np.array([a[1] for a in agg]))
            line, = ax.plot(xs, m, ls=ls, color="tab:blue", lw=1.2,
                            label=col.replace("_pnl", ""))
            if col == "greedy_pnl":
                ax.fill_between(xs, m - h, m + h, alpha=0.2, color=line.get_color())
        for (rule, cyc), v in refs.items():
            color, ls = styles.get(rule, ("grey", "-"))
            ax.hlines(v, cyc * cycle_steps / 1e6, (cyc + 1) * cycle_steps / 1e6, colors=color,
                      linestyles=ls, lw=1, label=rule if cyc == 0 else None)
        ax.set_title(str(name), fontsize=9)
        ax.axhline(0, color="k", lw=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, loc="lower right")
    cycles = curves["cycle"].nunique() if "cycle" in curves else 1
    xlabel = ("training env steps (M; cycles placed at the update cap)" if cycles > 1
              else "training env steps (M)")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out PnL / episode", fontsize=8)
    fig.suptitle("Learning curves on the held-out curve episodes: greedy (band: 95% CI over "
                 "seeds), sampled (dashed),\nreference rules on the same episodes (parameters "
                 "chosen on training data)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))   # room for the title
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, table: pd.DataFrame, header: str, plots: list[Path],
                 name: str = "report.md", lines: list[str] | None = None,
                 audit: str | None = None) -> Path:
    """A report of a per-arm table: header, ``lines``, the table (mean ± 95% t half-width
    over seeds), the reward audit's summary, plots."""
    text = [f"# {header}", "", *(lines or []), "",
            "Per-arm means ± 95% t-interval half-width across seeds. PnL in currency per deploy "
            "episode; trade Sharpe per trade in R (not annualised); oos_* average cycles 1..C-1 "
            "(the one evaluation of a tpfl-train run).", "", format_table(table), ""]
    if audit:
        text += ["## Reward audit (this env and market)", "", "```", audit, "```", ""]
    text += [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / name
    write_text(path, "\n".join(text) + "\n")
    return path


def _read_summary(f: Path) -> pd.DataFrame:
    """One ``summary.csv``; unreadable or without ``SUMMARY_COLUMNS`` -> ``UserError``
    naming the file and what is missing."""
    try:
        df = pd.read_csv(f)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"tpfl-report: {f}: not a summary table ({type(e).__name__}: "
                         f"{str(e).strip()[:200]})") from None
    missing = [c for c in SUMMARY_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"tpfl-report: {f}: missing column(s) {missing}; present: "
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
        "env_steps": g["train_env_steps"].mean(), "repetition": g["train_repetition"].max(),
    }).reset_index()


def df_markdown(df: pd.DataFrame) -> str:
    """A frame as a markdown table (floats to 4 significant digits)."""
    return _markdown(df)


def _markdown(df: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


def levels_markdown(levels: pd.DataFrame, primary: str = "oos_pnl") -> str:
    """The levels table: arms, then reference rules, ``primary`` as mean ± 95% half-width
    (``frac_bayes``: ``primary`` as a fraction of the Bayes filter's, where there is one)."""
    cols = [c for c in ("frac_bayes", "greedy_pnl", "sampled_pnl", "final_weight", "hit_rate",
                        "tp_mult", "trades") if c in levels]
    lines = [f"| | {primary} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for _, r in levels.iterrows():
        name = f"`{r['name']}`" if r["kind"] == "arm" else f"*{r['name']}* (reference)"
        half = r[f"{primary}_ci95"]
        cell = f"{r[primary]:+.1f} ± {half:.1f}" if np.isfinite(half) else f"{r[primary]:+.1f}"
        vals = ["" if not np.isfinite(r[c]) else f"{r[c]:.3g}" for c in cols]
        lines.append(f"| {name} | {cell} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_loop_report(run_dir: Path, header: str, *, answer: list[str], levels: pd.DataFrame,
                      paired: dict[str, pd.DataFrame], primary: str, training: pd.DataFrame,
                      plots: list[Path], notes: list[str] | None = None,
                      audit: str | None = None) -> Path:
    """``report.md`` of a loop run, answer first: the answer in three lines, the absolute
    levels of every arm beside the reference rules, the primary metric's paired tables, the
    secondary metrics', the training per cycle, notes, the reward audit, the plots."""
    text = [f"# {header}", "", "## Answer", "", *answer, "",
            "## Levels (out of sample, same episodes)", "",
            f"`{primary}`: PnL per deploy episode, mean over cycles 1..C-1 (± 95% t-interval "
            "over seeds); greedy / sampled: each deploy mode; final_weight: the weight in "
            "force in the last cycle; hit rate and TP distance (volatility units) per trade.",
            "", levels_markdown(levels, primary), "", *[f"- {n}" for n in notes or []], "",
            f"## Paired differences: `{primary}` (declared in config.stats before the run)", "",
            "Per-seed paired differences arm - control (common random numbers), mean; "
            "simultaneous paired t-intervals (Bonferroni over the arms of each control: all "
            "intervals of a control cover jointly with the stated confidence); percentile "
            "bootstrap intervals per arm, unadjusted, descriptive only; p-values Holm-adjusted "
            "over the arms of each control; decision = Holm rejection (family-wise error 1 - "
            "level); MDE = the smallest true difference a paired t-test at alpha/m detects with "
            "80% power at this seed count (Holm detects it with at least that power).", "",
            format_paired(paired[primary]), ""]
    for m, t in paired.items():
        if m != primary:
            text += [f"### Secondary: `{m}`", "", format_paired(t), ""]
    text += ["## Training per cycle (all arms x seeds)", "", _markdown(training), ""]
    if audit:
        text += ["## Reward audit (this env and market)", "", "```", audit, "```", "",
                 "Full table: `audit_table.csv`, `audit.md`; plot: `audit_reward_pnl.png`.", ""]
    text += [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / "report.md"
    write_text(path, "\n".join(text) + "\n")
    return path


def collect(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run under ``path`` (a run or a multirun dir): the ``summary.csv`` rows of the
    complete runs with ``run`` and ``overrides`` columns, and one row per run directory
    (``run``, ``command``, ``status``: complete / failed / incomplete, ``overrides``,
    ``error``) so failed and unfinished jobs are listed, not dropped; with the sweep's
    ``sweep.json`` (a checked ``--multirun``), its jobs that never started too."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; expected a run or multirun output "
                        "directory")
    runs, frames = [], []
    dirs = sorted({f.parent for f in path.rglob(RECORD)} | {f.parent for f in
                                                             path.rglob("summary.csv")})
    for d in dirs:
        rec = read_record(d) or {}
        name = str(d.relative_to(path)) or "."
        overrides = " ".join(rec.get("overrides", []))
        status = rec.get("status", "unknown (no run.json)")
        if status == "running":
            status = "incomplete (killed or still running)"
        runs.append({"run": name, "command": rec.get("command", ""), "status": status,
                     "overrides": overrides, "error": rec.get("error", "")})
        f = d / "summary.csv"
        if f.exists() and rec.get("status") in ("complete", None):
            df = _read_summary(f)
            df.insert(0, "run", name)
            df.insert(1, "overrides", overrides)
            frames.append(df)
    manifest = path / SWEEP_MANIFEST
    if manifest.is_file():                  # jobs of the sweep that never started
        seen = {r["run"] for r in runs}
        for j in json.loads(manifest.read_text()).get("jobs", []):
            if str(j["job"]) not in seen:
                runs.append({"run": str(j["job"]), "command": "", "status": "not started",
                             "overrides": " ".join(j["overrides"]), "error": ""})
    if not runs:
        raise UserError(f"no run under {path} (no run.json or summary.csv)")
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return summary, pd.DataFrame(runs)


def report_dir(path: str | Path) -> tuple[pd.DataFrame, Path]:
    """Collect a run or multirun dir into ``tpfl-report.md`` and ``tpfl-report.csv`` there
    (its own files: a run's ``report.md`` is never touched): every run's status with its
    overrides, then the per-arm table of the complete runs. Returns (table, report path)."""
    path = Path(path)
    summary, runs = collect(path)
    lines = ["## Runs", "", _markdown(runs), ""]
    bad = runs[runs.status != "complete"]
    if len(bad):
        why = [f"`{r.run}` ({r.status}" + (f": {r.error}" if r.error else "") + ")"
               for r in bad.itertuples()]
        lines += [f"**{len(bad)} of {len(runs)} run(s) did not complete** (left out of the "
                  "table below): " + "; ".join(why), ""]
    if len(summary):
        by = ("overrides", "policy") if summary["run"].nunique() > 1 else ("policy",)
        table = policy_table(summary, by)
    else:
        table = pd.DataFrame()
    write_frame(table, path / "tpfl-report.csv")
    out = write_report(path, table, f"tpfl report: {path}", [], name=COLLECTED_REPORT,
                       lines=lines)
    return table, out


def read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(ln) for ln in Path(path).read_text().splitlines() if ln])
