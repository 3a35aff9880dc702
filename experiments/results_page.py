"""Build ``experiments/RESULTS.md`` from the run directories of ``experiment=study`` and
``experiment=real`` and ``experiment=horizon`` (multirun sweep dirs, one job per market, or
single run dirs).

    python experiments/results_page.py results/study results/real [--out experiments/RESULTS.md]

Per job: the answer (the best arm only where Holm over all pairs separates it, what differs from
each control after Holm, the reference rules on the same episodes), the levels table with its
units (every arm beside flat / buy-and-hold / trend / oracle), the primary metric's paired
differences against both controls (simultaneous Bonferroni intervals, Holm-adjusted p-values,
Holm decisions, MDE at alpha/m) and against the better of trend and buy-and-hold, the weight
paths and the regret against the best fixed weight in hindsight, the training table (entropy
against its maximum, repetition) and the reward audit summary, with the learning-curve, levels,
paired, weight-path and regret figures.
Numbers are read from the files each run wrote (``tpfl_jax.results`` only formats them).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import yaml


def _job_label(job: Path) -> str:
    over = json.loads((job / "run.json").read_text())["overrides"]
    return ", ".join(str(o) for o in over if not str(o).startswith(("progress", "hydra")))


def _fmt(v: float) -> str:
    return f"{v:+.1f}" if abs(v) >= 1 or v == 0 else f"{v:+.2g}"


def job_section(job: Path, figure: Path | None = None, out: Path | None = None) -> str:
    """The markdown section of one job; its figures are copied next to ``figure`` (a path
    stem, linked relative to ``out``) when given, else linked where they lie."""
    from tpfl_jax import report
    from tpfl_jax import results as R

    paired = pd.read_csv(job / "paired.csv")
    cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
    primary = cfg["stats"]["primary_metric"]
    p = paired[paired.metric == primary]
    summary = pd.read_csv(job / "summary.csv")
    refs = pd.read_csv(job / "references.csv")
    ref_summary = R.reference_summary(refs)
    controls = list(dict.fromkeys(p.control))
    env, mode = cfg["env"], cfg["loop"]["feedback_mode"]
    units = report.units_text(float(env["initial_equity"]), int(env["max_steps_in_episode"]))
    levels = pd.read_csv(job / "levels.csv")
    lines = [f"### {_job_label(job)}", "", *R.answer(summary, p, ref_summary, controls, primary),
             "", *report.levels_legend(levels, primary, mode, units, summary), "",
             report.levels_markdown(levels, primary, mode, units), "",
             f"{int(p['n'].iloc[0])} seeds; `{primary}` ({units}, mean over cycles 1..C-1); "
             "arm - control per seed; 95% simultaneous intervals (Bonferroni); decisions by "
             "Holm.", "",
             "| arm | vs fixed_1.0 [simult. CI] | p (Holm) | vs fixed_0.0 [simult. CI] | "
             "p (Holm) | MDE |", "|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(summary.policy):
        row = [f"`{arm}`"]
        for ctl in ("fixed_1.0", "fixed_0.0"):
            r = p[(p.control == ctl) & (p.arm == arm)]
            if len(r):
                r = r.iloc[0]
                star = " **" if r.reject else ""
                row += [f"{_fmt(r.mean_diff)} [{_fmt(r.simul_lo)}, {_fmt(r.simul_hi)}]{star}",
                        f"{r.p_holm:.3g}"]
            else:
                row += ["control", ""]
        mde = p[p.arm == arm]["mde"]
        row.append(f"{mde.iloc[0]:.0f}" if len(mde) else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "`**`: rejected at family level 5% (Holm)."]
    st = cfg["stats"]
    vs = R.reference_paired(summary, ref_summary, primary, float(st["level"]),
                            int(st["n_boot"]), int(cfg["seed"]))
    if vs is not None:
        rule, t = vs
        lines += ["", f"Against `{rule}` (the better of trend and buy-and-hold on this run, "
                  "chosen after the fact), paired per seed over the same deploy episodes of "
                  "cycles 1..C-1, arm - rule [95% t-interval] (Holm p): " + "; ".join(
                      f"`{r.arm}` {_fmt(r.mean_diff)} [{_fmt(r.t_lo)}, {_fmt(r.t_hi)}] "
                      f"({r.p_holm:.3g}){' **' if r.reject else ''}" for r in t.itertuples())
                  + "."]
    kinds = {q["name"]: q["kind"] for q in cfg["policy"]["policies"]}
    kinds |= {a: "fixed" for a in summary.policy.unique()
              if a not in kinds and str(a).startswith("fixed_")}       # added control arms
    cycles = pd.read_csv(job / "cycles.csv")
    regret = R.regret_frame(cycles, kinds)
    lines += ["", "Weight paths over seeds:", "",
              report.weight_paths_markdown(R.weight_paths(cycles))]
    if regret is not None:
        lines += ["", f"Cumulative regret against the best fixed weight in hindsight "
                  f"(`{regret[0]}`, pooled over seeds), per cycle, mean [min, max] over seeds "
                  f"(PnL per episode summed over cycles 1..c):", "",
                  report.regret_markdown(regret[1])]
    for metric in (m for m in cfg["stats"].get("secondary_metrics", []) if m != primary):
        sec = paired[(paired.metric == metric) & paired.control.isin(["fixed_1.0", "fixed_0.0"])]
        if not len(sec):
            continue
        cells = [f"{r.arm} vs {r.control} {_fmt(r.mean_diff)} [{_fmt(r.simul_lo)}, "
                 f"{_fmt(r.simul_hi)}]{' **' if r.reject else ''}" for r in sec.itertuples()]
        lines += ["", f"Secondary `{metric}` (simultaneous intervals and Holm decisions within "
                  "the metric): " + "; ".join(cells) + "."]
    tr = pd.read_csv(job / "training.csv")
    lines += ["", "Training: entropy / max per cycle "
              + ", ".join(f"{x:.2f}" for x in tr.entropy_ratio)
              + "; updates per cycle " + ", ".join(f"{x:.0f}" for x in tr.updates_mean)
              + "; share meeting the criterion "
              + ", ".join(f"{x:.2f}" for x in tr.converged)
              + (f"; env steps per distinct training bar <= {tr.repetition.max():.2f}"
                 if "repetition" in tr else "") + "."]
    audit = job / "audit_summary.json"
    if audit.exists():
        a = json.loads(audit.read_text())
        lines += ["", f"Reward audit of this env and market: tau {a['tau']:.2f}, churn "
                  f"break-even {a['break_even_weight']:.3g} (causal {a['break_even_causal']:.3g}),"
                  f" any no-skill rule {a['farm_break_even']:.3g}."]
    timing = job / "timing.json"
    if timing.exists():
        t = json.loads(timing.read_text())
        lines += ["", f"Compile {t['compile_s']:.0f} s, run {t['run_s']:.0f} s."]
    lines.append("")
    for name in ("learning_curves.png", "levels.png", "paired_primary.png",
                 "weight_trajectory.png", "regret.png"):
        src = job / name
        if not src.exists():
            continue
        if figure is not None:
            dst = figure.with_name(f"{figure.stem}_{src.stem}.png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            rel = dst.resolve().relative_to(out.resolve().parent) if out else dst
            lines.append(f"![{src.stem}]({rel.as_posix()})")
        else:
            lines.append(f"![{src.stem}]({src.as_posix()})")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", help="multirun sweep dirs or single run dirs")
    ap.add_argument("--out", default="experiments/RESULTS.md")
    ap.add_argument("--preamble", default=None, help="markdown file placed before the tables")
    ap.add_argument("--figures", default=None,
                    help="copy each job's paired-difference plot here (e.g. experiments/figures)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    parts = [Path(args.preamble).read_text()] if args.preamble else []
    for sweep in args.sweeps:
        jobs = ([Path(sweep)] if (Path(sweep) / "paired.csv").exists() else   # one run
                sorted(p for p in Path(sweep).iterdir() if (p / "paired.csv").exists()))
        parts.append(f"## `{Path(sweep).name}`\n")
        for j in jobs:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{Path(sweep).name}_{_job_label(j)}").strip("_")
            fig = Path(args.figures) / f"{slug}.png" if args.figures else None
            parts.append(job_section(j, fig, out))
    text = "\n".join(parts)
    out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
