"""Tables and plots of closed-loop runs (host only; matplotlib Agg).

``summary.csv`` has one row per policy x seed with the final-cycle and out-of-sample deploy
metrics; ``policy_table`` reduces it across seeds to mean and 95% t-interval per policy
(descriptive; ``tpfl-loop`` decides with the paired tables of ``tpfl_jax.stats``, reported
first by ``write_loop_report``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tpfl_jax.errors import UserError  # noqa: E402
from tpfl_jax.results import MODES, band, duplicate_mode_column  # noqa: E402
from tpfl_jax.rundir import (  # noqa: E402
    RECORD,
    SWEEP_MANIFEST,
    read_record,
    save_figure,
    write_frame,
    write_text,
)
from tpfl_jax.stats import bootstrap_note, format_paired, mean_ci  # noqa: E402

TABLE_METRICS = ("final_pnl", "oos_pnl", "oos_pnl_greedy", "oos_pnl_sampled", "oos_trade_sharpe",
                 "oos_tp_skill", "oos_hit_rate", "oos_mean_r", "final_weight", "updates",
                 "converged")
SUMMARY_COLUMNS = ("policy", "final_pnl", "oos_pnl")
COLLECTED_REPORT = "tpfl-report.md"   # tpfl-report's own file (never a run's report.md)


def _same(a: pd.Series, b: pd.Series) -> bool:
    return bool(np.array_equal(a.to_numpy(float), b.to_numpy(float), equal_nan=True))


def policy_table(summary: pd.DataFrame, by: tuple[str, ...] = ("policy",),
                 rank: bool = True) -> pd.DataFrame:
    """Mean and 95% CI half-width across seeds per policy (``final_weight``: mean, min and
    max), ranked by final OOS PnL (``rank``; else in the summary's policy order). A metric
    with the same numbers as ``oos_pnl`` on every summary row (the feedback mode's
    ``oos_pnl_<mode>``; ``final_pnl`` of a one-cycle run) is left out and listed in
    ``table.attrs["same_as_oos_pnl"]``."""
    same = [m for m in ("final_pnl", "oos_pnl_greedy", "oos_pnl_sampled")
            if m in summary and "oos_pnl" in summary and _same(summary[m], summary["oos_pnl"])]
    rows = []
    for key, g in summary.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key, strict=True))
        for m in TABLE_METRICS:
            if m in g and m not in same:
                row[m], row[f"{m}_ci95"] = mean_ci(g[m].to_numpy())
        if "final_weight" in g:
            row["final_weight_min"] = float(g["final_weight"].min())
            row["final_weight_max"] = float(g["final_weight"].max())
        row["seeds"] = len(g)
        rows.append(row)
    table = pd.DataFrame(rows)
    if rank:
        table = table.sort_values(["oos_pnl", "final_pnl"] if "final_pnl" in table
                                  else ["oos_pnl"], ascending=False)
    table = table.reset_index(drop=True)
    table.attrs["same_as_oos_pnl"] = same
    return table


def format_table(table: pd.DataFrame, first: str = "rank") -> str:
    """Markdown table with ``mean ± ci`` cells, ``final_weight`` as ``mean [min, max]`` over
    seeds (``first``: the index column's title)."""
    extra = ("final_weight_min", "final_weight_max")
    keys = [c for c in table.columns if not c.endswith("_ci95") and c not in TABLE_METRICS
            and c not in extra]
    cols = keys + [m for m in TABLE_METRICS if m in table]
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for i, r in table.iterrows():
        cells = [str(r[k]) for k in keys]
        for m in TABLE_METRICS:
            if m not in table:
                continue
            if m == "final_weight" and "final_weight_min" in table:
                cells.append(f"{r[m]:.3g} [{r['final_weight_min']:.3g}, "
                             f"{r['final_weight_max']:.3g}]")
                continue
            ci = r[f"{m}_ci95"]
            cells.append(f"{r[m]:.4g} ± {ci:.2g}" if np.isfinite(ci) else f"{r[m]:.4g}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def units_text(initial_equity: float, episode_steps: int) -> str:
    """What one PnL number is: currency per ``episode_steps``-step deploy episode on
    ``initial_equity`` starting equity."""
    return (f"PnL in currency per {int(episode_steps)}-step episode on "
            f"{initial_equity:,.0f} starting equity")


def plot_weights(path: Path, cycles: pd.DataFrame) -> Path:
    """Each arm's weight path per cycle as a band over seeds, one panel per arm: median, IQR
    (dark) and min..max (light) of the weight each cycle trained with, and every seed's path
    (thin)."""
    names = list(dict.fromkeys(cycles["policy"]))
    n = max(len(names), 1)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.4), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for ax, name in zip(axes.ravel(), names, strict=False):
        g = cycles[cycles["policy"] == name]
        for _, s in g.groupby("seed"):
            s = s.sort_values("cycle")
            ax.plot(s["cycle"], s["weight"], color="grey", lw=0.5, alpha=0.5)
        q = g.groupby("cycle")["weight"]
        x = q.median().index
        ax.fill_between(x, q.min().values, q.max().values, alpha=0.15, color="tab:blue",
                        label="min..max")
        ax.fill_between(x, q.quantile(0.25).values, q.quantile(0.75).values, alpha=0.35,
                        color="tab:blue", label="IQR")
        ax.plot(x, q.median().values, color="tab:blue", marker="o", ms=3, label="median")
        paths = len({tuple(np.round(s.sort_values("cycle")["weight"].to_numpy(float), 9))
                     for _, s in g.groupby("seed")})
        ax.set_title(f"{name} ({paths} distinct path{'s' if paths > 1 else ''} over "
                     f"{g['seed'].nunique()} seeds)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("cycle", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("tp_reward_weight", fontsize=8)
    fig.suptitle("Weight each cycle trained with, over seeds: median, IQR (dark), min..max "
                 "(light), each seed (grey)", fontsize=9)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_regret(path: Path, regret: pd.DataFrame, best_fixed: str) -> Path:
    """Each adaptive arm's cumulative regret per cycle against ``best_fixed`` (a
    ``results.regret_frame``): mean over seeds, band min..max over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(regret["policy"]):
        g = regret[regret["policy"] == name].groupby("cycle")["cum_regret"]
        x, m = g.mean().index.to_numpy(), g.mean().to_numpy()
        line, = ax.plot(x, m, marker="o", ms=3, label=name)
        if len(x) > 1:
            ax.fill_between(x, g.min().values, g.max().values, alpha=0.12,
                            color=line.get_color())
        else:                                    # one cycle: the band as an error bar
            ax.errorbar(x, m, yerr=[m - g.min().to_numpy(), g.max().to_numpy() - m],
                        fmt="none", capsize=4, color=line.get_color(), alpha=0.6)
    ax.axhline(0, color="k", lw=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="cycle", ylabel="cumulative regret\n(PnL per episode, summed over cycles)",
           title=f"Regret against the best fixed weight in hindsight (`{best_fixed}`, pooled "
           "over seeds)\nmean over seeds; band: min..max over seeds")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_levels(path: Path, levels: pd.DataFrame, primary: str = "oos_pnl",
                units: str | None = None) -> Path:
    """Every arm's ``primary`` (mean and 95% t-interval over seeds) beside the reference
    rules as horizontal lines (``units``: what one value is, on the y label)."""
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
    ax.set(ylabel=f"{primary}\n({units})" if units else primary,
           title="Arms beside the reference rules (same episodes)")
    ax.yaxis.label.set_fontsize(8)
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
                 audit: str | None = None, units: str | None = None,
                 audit_note: str | None = None) -> Path:
    """A report of a per-arm table: header, ``lines``, the table (mean ± 95% t half-width
    over seeds; ``units``: what a PnL number is), the reward audit's summary and
    ``audit_note``, plots."""
    same = table.attrs.get("same_as_oos_pnl", [])
    text = [f"# {header}", "", *(lines or []), "",
            "Per-arm means ± 95% t-interval half-width across seeds; final_weight: the weight "
            "the last cycle trained with, mean [min, max] over seeds. "
            + (f"{units}. " if units else "PnL in currency per deploy episode. ")
            + "oos_* average cycles 1..C-1 (the one evaluation of a tpfl-train run); trade "
            "Sharpe per trade in R (not annualised); oos_hit_rate: the mean over those cycles "
            "of each cycle's TP exits / closed trades."
            + (f" Not shown, the same numbers as oos_pnl on every row: {', '.join(same)}."
               if same else ""), "", format_table(table), ""]
    if audit:
        text += ["## Reward audit (this env and market)", "", "```", audit, "```", ""]
        text += [audit_note, ""] if audit_note else []
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


def _mode_short(primary: str, mode: str | None) -> str | None:
    dup = duplicate_mode_column(primary, mode)
    return dup.removeprefix("oos_pnl_") + "_pnl" if dup else None


def levels_markdown(levels: pd.DataFrame, primary: str = "oos_pnl", mode: str | None = None,
                    units: str | None = None) -> str:
    """The levels table: arms, then reference rules, ``primary`` as mean ± 95% half-width
    (``units`` in its header), the other deploy mode's PnL (the column that holds
    ``primary``'s numbers, by ``mode`` = the feedback mode, is left out), ``final_weight``
    as mean [min, max] over seeds, the hit rate (pooled over trades where ``levels`` has it)
    and ``frac_bayes`` where there is a Bayes filter."""
    drop = _mode_short(primary, mode)
    hit = "hit_rate_pooled" if "hit_rate_pooled" in levels else "hit_rate"
    cols = [c for c in ("frac_bayes", "greedy_pnl", "sampled_pnl", "final_weight", hit,
                        "tp_mult", "trades") if c in levels and c != drop]
    names = {"hit_rate_pooled": "hit rate (pooled over trades)",
             "hit_rate": "hit rate (mean of per-cycle ratios)",
             "final_weight": "final_weight mean [min, max]" if "final_weight_min" in levels
             else "final_weight (mean over seeds)"}
    head = f"{primary} ({units})" if units else primary
    lines = [f"| | {head} | " + " | ".join(names.get(c, c) for c in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for _, r in levels.iterrows():
        name = f"`{r['name']}`" if r["kind"] == "arm" else f"*{r['name']}* (reference)"
        half = r[f"{primary}_ci95"]
        cell = f"{r[primary]:+.1f} ± {half:.1f}" if np.isfinite(half) else f"{r[primary]:+.1f}"
        vals = []
        for c in cols:
            if not np.isfinite(r[c]):
                vals.append("")
            elif c == "final_weight" and "final_weight_min" in levels:
                vals.append(f"{r[c]:.3g} [{r['final_weight_min']:.3g}, "
                            f"{r['final_weight_max']:.3g}]")
            else:
                vals.append(f"{r[c]:.3g}")
        lines.append(f"| {name} | {cell} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def levels_legend(levels: pd.DataFrame, primary: str, mode: str | None, units: str | None,
                  summary: pd.DataFrame | None = None, over: str | None = None
                  ) -> list[str]:
    """What the levels table's columns are, one sentence each: ``primary`` with its units and
    deploy mode, greedy against sampled (with the numbers of ``summary`` where it has both
    modes), ``final_weight``, the hit rate's pooling, TP distance and trades (``over``: the
    deploy episodes the table averages; default: those of cycles 1..C-1)."""
    which = (f"the {mode} deployment (the feedback mode)" if mode in MODES
             and duplicate_mode_column(primary, mode) else "")
    out = [f"`{primary}`: {units or 'PnL per deploy episode'}"
           + (f", {which}" if which else "") + "; mean over "
           + (over or "cycles 1..C-1 of the mean over each cycle's deploy episodes")
           + ", ± 95% t-interval over seeds."]
    line = greedy_sampled_line(summary) if summary is not None else None
    if line:
        out.append(line)
    if "final_weight" in levels:
        out.append("final_weight: the weight the last cycle trained with, "
                   + ("mean [min, max] over seeds." if "final_weight_min" in levels
                      else "mean over seeds (no seed need have trained with it)."))
    if "hit_rate_pooled" in levels:
        out.append(f"Hit rate: TP exits / closed trades, pooled over every deploy trade of "
                   f"{over or 'cycles 1..C-1'} and every seed (feedback mode).")
    elif "hit_rate" in levels:
        out.append(f"Hit rate: the mean over seeds of the mean over {over or 'cycles 1..C-1'}"
                   " of each cycle's TP exits / closed trades (not pooled over trades).")
    out.append("TP distance in volatility units per closed trade, trades per episode; means "
               "over seeds.")
    return out


def greedy_sampled_line(summary: pd.DataFrame) -> str | None:
    """One line on greedy against sampled deployment with this run's numbers (means over arms
    and seeds); the cost explanation only where sampled trades more and earns less."""
    need = ("oos_pnl_greedy", "oos_pnl_sampled", "oos_trades_greedy", "oos_trades_sampled")
    if not all(c in summary for c in need):
        return None
    pg, ps = summary["oos_pnl_greedy"].mean(), summary["oos_pnl_sampled"].mean()
    tg, ts = summary["oos_trades_greedy"].mean(), summary["oos_trades_sampled"].mean()
    nums = (f"{ts:.1f} closed trades per episode against greedy's {tg:.1f}, PnL {ps:+.1f} "
            f"against {pg:+.1f} (means over arms and seeds)")
    if ts > tg and ps < pg:
        return ("Greedy deploys each step's most probable action; sampled draws it from the "
                "policy as in training, so it also trades at random and every extra round "
                f"trip pays the fee and half-spread: {nums}.")
    return ("Greedy deploys each step's most probable action; sampled draws it from the policy "
            f"as in training: {nums}.")


def reference_markdown(rule: str, table: pd.DataFrame, metric: str,
                       units: str | None = None) -> list[str]:
    """The section on every arm against the best reference rule (``results.reference_paired``):
    what is paired, the table, the bootstrap note."""
    lv = f"{100 * float(table['family_level'].iloc[0]):.4g}%" if len(table) else "95%"
    n = int(table["n"].min()) if len(table) else 0
    return [f"`{rule}` is the better of trend and buy-and-hold on this run's mean `{metric}` "
            "(chosen after the fact on the deploy episodes, which favours the reference). "
            f"Paired per seed: arm - `{rule}` on `{metric}`"
            + (f" ({units})" if units else "") + f"; both are means over the same deploy "
            "episodes (same market paths and episode keys) of cycles 1..C-1, so each seed "
            f"gives one difference; t-intervals over the {n} seeds; {lv} simultaneous "
            "(Bonferroni) intervals and Holm decisions over the arms.", "",
            format_paired(table), "", bootstrap_note(table)]


def regret_markdown(regret: pd.DataFrame, max_cols: int = 6) -> str:
    """Cumulative regret per adaptive arm (rows) at up to ``max_cols`` cycles spread over the
    run, the last included (columns): mean [min, max] over seeds."""
    cyc = sorted(regret["cycle"].unique())
    pick = sorted({cyc[int(round(i))] for i in np.linspace(0, len(cyc) - 1,
                                                           min(max_cols, len(cyc)))})
    b = band(regret, "cum_regret")
    lines = ["| arm | " + " | ".join(f"cycle {c}" for c in pick) + " | per cycle (last / "
             "cycles) |", "|---" * (len(pick) + 2) + "|"]
    for name in dict.fromkeys(regret["policy"]):
        g = b[b["policy"] == name].set_index("cycle")
        cells = [f"{g.loc[c, 'mean']:+.1f} [{g.loc[c, 'min']:+.1f}, {g.loc[c, 'max']:+.1f}]"
                 for c in pick]
        lines.append(f"| `{name}` | " + " | ".join(cells)
                     + f" | {g.loc[pick[-1], 'mean'] / len(cyc):+.1f} |")
    return "\n".join(lines)


def weight_paths_markdown(paths: pd.DataFrame) -> str:
    """``results.weight_paths`` as markdown: distinct weight paths over seeds and the last
    cycle's weight, median [min, max] over seeds."""
    lines = ["| arm | seeds | distinct weight paths | last cycle's weight median [min, max] |",
             "|---|---|---|---|"]
    for r in paths.itertuples():
        lines.append(f"| `{r.policy}` | {r.seeds} | {r.distinct_paths} | {r.final_median:.3g} "
                     f"[{r.final_min:.3g}, {r.final_max:.3g}] |")
    return "\n".join(lines)


def audit_note(summary: dict[str, Any], lookback: int, levels_where: str = "the arms' deploy "
               "episodes of cycles 1..C-1, parameters chosen on each cycle's training market, "
               "mean over seeds") -> str:
    """One sentence on why the audit's reference PnLs differ from the levels table's: other
    episodes and other parameter choices (``summary``: ``AuditResult.summary``;
    ``lookback``: the audit's trend lookback)."""
    trend = summary.get("rank_set", {}).get("trend", "trend")
    return (f"The audit's PnLs are means over its own {summary.get('episodes')} episodes of "
            f"{summary.get('episode_steps')} steps ({summary.get('label') or 'its market'}), "
            "not the arms' deploy episodes, with buy_and_hold at the widest TP and trend at "
            f"lookback {lookback} with the TP best on those same episodes in hindsight "
            f"(`{trend}`); the levels table's references are played on {levels_where}. "
            "Different episodes and parameter choices, so the two need not agree; the levels "
            "table is the one to compare the arms with.")


def write_loop_report(run_dir: Path, header: str, *, answer: list[str], levels: pd.DataFrame,
                      paired: dict[str, pd.DataFrame], primary: str, training: pd.DataFrame,
                      plots: list[Path], notes: list[str] | None = None,
                      audit: str | None = None, legend: list[str] | None = None,
                      mode: str | None = None, units: str | None = None,
                      reference: list[str] | None = None, horizon: list[str] | None = None,
                      audit_note: str | None = None, series: list[str] | None = None) -> Path:
    """``report.md`` of a loop run, answer first: the answer in three lines, the absolute
    levels of every arm beside the reference rules (``legend``: what its columns are;
    ``mode``: the feedback mode, whose PnL column is ``primary`` and not repeated; ``units``),
    the primary metric's paired tables, every arm against the best reference rule
    (``reference``), per series on a panel (``series``), the secondary metrics', the weight
    paths and regret (``horizon``), the training per cycle, notes, the reward audit with
    ``audit_note``, the plots."""
    pt = paired[primary]
    text = [f"# {header}", "", "## Answer", "", *answer, "",
            "## Levels (out of sample, same episodes)", "", *(legend or []), "",
            levels_markdown(levels, primary, mode, units), "",
            *[f"- {n}" for n in notes or []], "",
            f"## Paired differences: `{primary}` (declared in config.stats before the run)", "",
            "Per-seed paired differences arm - control (common random numbers), mean; "
            "simultaneous paired t-intervals (Bonferroni over the arms of each control: all "
            "intervals of a control cover jointly with the stated confidence); p-values "
            "Holm-adjusted over the arms of each control; decision = Holm rejection "
            "(family-wise error 1 - level); MDE = the smallest true difference a paired t-test "
            "at alpha/m detects with 80% power at this seed count (Holm detects it with at "
            "least that power). " + bootstrap_note(pt), "", format_paired(pt), ""]
    if reference:
        text += ["## Arms against the best reference rule", "", *reference, ""]
    if series:
        text += ["## Per series (out of sample, same episodes)", "", *series]
    for m, t in paired.items():
        if m != primary:
            text += [f"### Secondary: `{m}`", "", format_paired(t), ""]
    if horizon:
        text += ["## Weight paths and regret", "", *horizon, ""]
    text += ["## Training per cycle (all arms x seeds)", "", _markdown(training), ""]
    if audit:
        text += ["## Reward audit (this env and market)", "", "```", audit, "```", "",
                 *([audit_note, ""] if audit_note else []),
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
                       lines=lines, units=_collected_units(path, summary))
    return table, out


def _collected_units(path: Path, summary: pd.DataFrame) -> str | None:
    """The units of the collected runs' PnL when every run's ``config_resolved.yaml`` gives
    the same ``env.initial_equity`` and ``env.max_steps_in_episode``; else a sentence saying
    they differ (or None without a readable config)."""
    seen = set()
    for run in summary.get("run", pd.Series(dtype=str)).unique():
        f = path / str(run) / "config_resolved.yaml"
        try:
            env = yaml.safe_load(f.read_text())["env"]
            seen.add((float(env["initial_equity"]), int(env["max_steps_in_episode"])))
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            return None
    if len(seen) == 1:
        return units_text(*seen.pop())
    if len(seen) > 1:
        return ("PnL in currency per deploy episode; the runs differ in starting equity or "
                "episode length (see each run's config_resolved.yaml)")
    return None


def read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(ln) for ln in Path(path).read_text().splitlines() if ln])
