"""Build ``experiments/RESULTS.md`` from the run directories of ``experiment=study`` and
``experiment=real`` (multirun sweep dirs, one job per market).

    python experiments/results_page.py results/study results/real [--out experiments/RESULTS.md]

Per job: the primary metric's paired differences of every arm against ``fixed_1.0`` and
``fixed_0.0`` (Holm-adjusted intervals, p-values, decisions, MDE), the reference rules on the
same deployment episodes, the training table (entropy against its maximum) and the reward audit
summary. Numbers are read from the files each run wrote; nothing is recomputed.
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
    over = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return ", ".join(str(o) for o in over if not str(o).startswith(("progress", "hydra")))


def _fmt(v: float) -> str:
    return f"{v:+.1f}" if abs(v) >= 1 or v == 0 else f"{v:+.2g}"


def job_section(job: Path, figure: Path | None = None, out: Path | None = None) -> str:
    """The markdown section of one job; its paired-difference plot is copied to ``figure``
    (linked relative to ``out``) when given, else linked where it lies."""
    paired = pd.read_csv(job / "paired.csv")
    cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
    primary = cfg["stats"]["primary_metric"]
    p = paired[paired.metric == primary]
    summary = pd.read_csv(job / "summary.csv")
    means = summary.groupby("policy", sort=False)[primary].mean()
    lines = [f"### {_job_label(job)}", "",
             f"{int(p['n'].iloc[0])} seeds; primary metric `{primary}` (PnL per deploy episode, "
             "mean over cycles 1..C-1); arm - control per seed; Holm-adjusted intervals.", "",
             "| arm | mean | vs fixed_1.0 [Holm CI] | p (Holm) | vs fixed_0.0 [Holm CI] | "
             "p (Holm) | MDE |", "|---|---|---|---|---|---|---|"]
    for arm in means.index:
        row = [f"`{arm}`", _fmt(means[arm])]
        for ctl in ("fixed_1.0", "fixed_0.0"):
            r = p[(p.control == ctl) & (p.arm == arm)]
            if len(r):
                r = r.iloc[0]
                star = " **" if r.reject else ""
                row += [f"{_fmt(r.mean_diff)} [{_fmt(r.holm_lo)}, {_fmt(r.holm_hi)}]{star}",
                        f"{r.p_holm:.3g}"]
            else:
                row += ["control", ""]
        mde = p[p.arm == arm]["mde"]
        row.append(f"{mde.iloc[0]:.0f}" if len(mde) else "")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("`**`: rejected at family level 5% (Holm).")
    for metric in (m for m in cfg["stats"].get("secondary_metrics", []) if m != primary):
        sec = paired[(paired.metric == metric) & paired.control.isin(["fixed_1.0", "fixed_0.0"])]
        if not len(sec):
            continue
        cells = [f"{r.arm} vs {r.control} {_fmt(r.mean_diff)} [{_fmt(r.holm_lo)}, "
                 f"{_fmt(r.holm_hi)}]{' **' if r.reject else ''}" for r in sec.itertuples()]
        lines += ["", f"Secondary `{metric}` (Holm-adjusted within the metric): "
                  + "; ".join(cells) + "."]
    refs_f = job / "references.csv"
    if refs_f.exists():
        refs = pd.read_csv(refs_f).groupby("rule", sort=False)["oos_pnl"].agg(["mean", "std",
                                                                                 "count"])
        lines += ["", "Reference rules on the same deployment episodes (oos_pnl, mean ± sd "
                  "over seeds): " + "; ".join(f"{n} {_fmt(r['mean'])} ± {r['std']:.0f}"
                                              for n, r in refs.iterrows())]
    tr = pd.read_csv(job / "training.csv")
    lines += ["", "Training: entropy / max per cycle "
              + ", ".join(f"{x:.2f}" for x in tr.entropy_ratio)
              + "; updates per cycle " + ", ".join(f"{x:.0f}" for x in tr.updates_mean)
              + "; share meeting the criterion "
              + ", ".join(f"{x:.2f}" for x in tr.converged) + "."]
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
    src = job / "paired_primary.png"
    if figure is not None and src.exists():
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, figure)
        rel = figure.resolve().relative_to(out.resolve().parent) if out else figure
        lines += ["", f"![paired differences]({rel.as_posix()})", ""]
    else:
        lines += ["", f"![paired]({src.as_posix()})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--out", default="experiments/RESULTS.md")
    ap.add_argument("--preamble", default=None, help="markdown file placed before the tables")
    ap.add_argument("--figures", default=None,
                    help="copy each job's paired-difference plot here (e.g. experiments/figures)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    parts = [Path(args.preamble).read_text()] if args.preamble else []
    for sweep in args.sweeps:
        jobs = sorted(p for p in Path(sweep).iterdir() if (p / "paired.csv").exists())
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
