"""Real-data ablation (weight 0): which training data makes agents that earn on real bars?

Each row is one walk-forward ``tpfl-loop`` run on the real panel (``+dataset=panel``: 6 series,
8 calendar cuts) with one arm, ``fixed_0.0``, and ``--seeds`` seeds; agents are warm-started
from cycle to cycle and deploy greedy on the real bars after each cut. Rows:

* ``panel_<source>``: the whole panel, each ``market.train_source`` (``replay``: the real
  training windows; ``bootstrap``: stationary block bootstrap of them, mean block 20 bars;
  ``regime_fit``: a 2-state Gaussian HMM fitted per window (hmmlearn); ``garch_fit``:
  GARCH(1,1) fitted per window (arch)), all fresh paths before every PPO update;
* ``one_<symbol>_<source>``: one series alone (``--one``, default SPX), with ``replay`` and
  with the panel's best source.

**Selection without the test windows.** Cycles ``< --val-cycles`` are the validation windows:
the best fitted source is the one with the highest mean greedy PnL there (pooled over seeds),
chosen before any test number is read. Everything reported as a result is on the test cycles
(``>= --val-cycles``). All panel rows share the seeds' deploy episodes (same keys, same windows),
so differences against ``panel_replay`` are paired over seeds on the same episodes.

Metrics per seed over the test episodes (pooled over series and cycles, and per series): greedy
PnL per episode (currency on 10,000 starting equity per episode of ``env.max_steps_in_episode``
bars, after costs) and the episode Sharpe (mean / sd of the episodes' returns; not annualised,
the series have different bar lengths), beside flat, buy-and-hold and the trend rule (their
parameters chosen on each training window) on the same episodes.

    python experiments/real_ablation.py --out results/real_ablation [--seeds 8]
        [--steps 262144] [--only panel_replay ...] [--report-only] [--recipe base|vol]

Writes ``<out>/ablation.csv`` (pooled), ``<out>/per_series.csv``, ``<out>/ablation.md`` and
``<out>/learning_curves.png``; each run's directory holds its own report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tpfl_jax.report import df_markdown  # noqa: E402
from tpfl_jax.results import episode_sharpe  # noqa: E402
from tpfl_jax.stats import t_test  # noqa: E402

SOURCES = ("replay", "bootstrap", "regime_fit", "garch_fit")
FITTED = ("bootstrap", "regime_fit", "garch_fit")
ONE_FILES = {
    "SPX": "[{path: 'pkg://arch/data/sp500/sp500.csv.gz', symbol: SPX}]",
    "NASDAQ": "[{path: 'pkg://arch/data/nasdaq/nasdaq.csv.gz', symbol: NASDAQ}]",
}
REFS = ("flat", "buy_and_hold", "trend")


RECIPES = {  # the agents' observation: the recorded ablation's (base) or the package default
    "base": ["env.features=base", "ppo.normalize_obs=false"],
    "vol": ["env.features=vol", "ppo.normalize_obs=true"],
}


def base_overrides(seeds: int, steps: int, recipe: str = "base") -> list[str]:
    return ["+dataset=panel", "progress=false", "audit.enabled=false",
            "policy.policies=[{name: fixed_0.0, kind: fixed, initial_weight: 0.0}]",
            f"loop.num_seeds={seeds}", f"ppo.total_timesteps={steps}",
            "stats.control_weights=[0.0]", "loop.deploy_envs=64", "loop.history=cumulative",
            *RECIPES[recipe]]


def run_job(name: str, overrides: list[str], out: Path) -> float:
    """One tpfl-loop run (skipped when its directory holds a finished run); its wall seconds."""
    d = out / name
    if (d / "episodes.parquet").exists():
        return json.loads((d / "wall.json").read_text())["wall_s"]
    cmd = [sys.executable, "-c", "from tpfl_jax.app import loop_main; loop_main()",
           *overrides, f"hydra.run.dir={d}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    (d / "wall.json").write_text(json.dumps({"wall_s": wall, "overrides": overrides}))
    print(f"{name}: {wall:.0f} s", flush=True)
    return wall


def episodes(out: Path, name: str) -> pd.DataFrame:
    e = pd.read_parquet(out / name / "episodes.parquet")
    e = e[e["mode"] == "greedy"]
    return e.assign(row=name)


def per_seed(e: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per arm x seed (x ``by``): mean PnL per episode and the episode Sharpe."""
    g = e.groupby(["arm", "seed", *by])
    out = g["pnl"].mean().to_frame("pnl")
    out["sharpe"] = g["return"].agg(episode_sharpe)
    return out.reset_index()


def best_source(out: Path, rows: list[str], val_cycles: int) -> tuple[str, pd.DataFrame]:
    """The fitted source with the highest validation PnL (cycles < ``val_cycles``)."""
    val = []
    for r in rows:
        if not (out / r / "episodes.parquet").exists():      # a row not run (--only)
            continue
        e = episodes(out, r)
        e = e[(e.kind == "policy") & (e.cycle < val_cycles)]
        val.append({"row": r, "val_pnl": e.groupby("seed")["pnl"].mean().mean()})
    val = pd.DataFrame(val)
    fitted = val[val.row.str.removeprefix("panel_").isin(FITTED)]
    return str(fitted.sort_values("val_pnl").iloc[-1].row.removeprefix("panel_")), val


def tables(out: Path, names: list[str], val_cycles: int, walls: dict[str, float]
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    pooled, series = [], []
    base = per_seed(test(episodes(out, "panel_replay"), val_cycles), []).query(
        "arm == 'fixed_0.0'").set_index("seed")
    for name in names:
        e = test(episodes(out, name), val_cycles)
        ps = per_seed(e, [])
        agent = ps[ps.arm == "fixed_0.0"].set_index("seed")
        row = {"row": name, "seeds": len(agent), "wall_s": round(walls.get(name, np.nan)),
               "greedy_pnl": agent.pnl.mean(), "pnl_sd_seeds": agent.pnl.std(ddof=1),
               "sharpe": agent.sharpe.mean()}
        for ref in REFS:
            r = ps[ps.arm == ref]
            row[f"{ref}_pnl"], row[f"{ref}_sharpe"] = r.pnl.mean(), r.sharpe.mean()
        if name.startswith("panel_") and name != "panel_replay":
            d = (agent.pnl - base.pnl.loc[agent.index]).to_numpy()
            row["vs_replay"], row["lo"], row["hi"], row["p"] = t_test(d)
        for ref in ("buy_and_hold", "trend"):
            r = ps[ps.arm == ref].set_index("seed").loc[agent.index]
            mean, _, _, p = t_test((agent.pnl - r.pnl).to_numpy())
            row[f"vs_{ref}"], row[f"vs_{ref}_p"] = mean, p
        pooled.append(row)
        pss = per_seed(e, ["symbol"])
        for sym, g in pss.groupby("symbol"):
            a = g[g.arm == "fixed_0.0"]
            srow = {"row": name, "symbol": sym, "episodes": int(
                (e[(e.arm == "fixed_0.0") & (e.symbol == sym)].groupby("seed").size()).mean()),
                    "greedy_pnl": a.pnl.mean(), "sharpe": a.sharpe.mean()}
            for ref in REFS[1:]:
                r = g[g.arm == ref]
                srow[f"{ref}_pnl"], srow[f"{ref}_sharpe"] = r.pnl.mean(), r.sharpe.mean()
            series.append(srow)
    return pd.DataFrame(pooled), pd.DataFrame(series)


def test(e: pd.DataFrame, val_cycles: int) -> pd.DataFrame:
    return e[e.cycle >= val_cycles]


def plot_curves(out: Path, names: list[str], val_cycles: int, steps: int) -> Path:
    """Held-out greedy PnL per episode after each chunk of updates of a cycle (mean over seeds
    and test cycles) per row, with the reference rules on the same episodes."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    refs = None
    for name in names:
        cv = pd.read_csv(out / name / "curves.csv")
        cv = cv[(cv.policy == "fixed_0.0") & (cv.cycle >= val_cycles)]
        m = cv.groupby("chunk")["greedy_pnl"].mean()
        x = (m.index.to_numpy() + 1) * steps / len(m)           # env steps into the cycle
        ax.plot(x / 1e3, m.to_numpy(), marker=".", label=name)
        if name == "panel_replay":
            r = pd.read_csv(out / name / "references.csv")
            refs = r[r.cycle >= val_cycles].groupby("rule")["deploy_pnl"].mean()
    if refs is not None:
        for ref, ls in (("buy_and_hold", "--"), ("trend", ":"), ("flat", "-")):
            ax.axhline(refs[ref], color="k", ls=ls, lw=1, label=f"{ref} (panel episodes)")
    ax.set_xlabel("env steps into the cycle (thousands; agents warm-started across cycles)")
    ax.set_ylabel("held-out greedy PnL per episode")
    ax.set_title(f"Real panel, test cycles >= {val_cycles}: learning within a cycle")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/real_ablation")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=262144, help="PPO env steps per cycle")
    ap.add_argument("--val-cycles", type=int, default=2)
    ap.add_argument("--one", default="SPX", choices=sorted(ONE_FILES))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--recipe", default="base", choices=sorted(RECIPES),
                    help="agents' observation: base (the recorded ablation's) or vol with "
                         "observation normalisation (the package default since 2026-12-05)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_overrides(a.seeds, a.steps, a.recipe)
    walls: dict[str, float] = {}

    def job(name: str, over: list[str]) -> None:
        if a.report_only or (a.only and name not in a.only):
            if (out / name / "wall.json").exists():
                walls[name] = json.loads((out / name / "wall.json").read_text())["wall_s"]
            return
        walls[name] = run_job(name, base + over, out)

    panel = [f"panel_{s}" for s in SOURCES]
    for s in SOURCES:
        job(f"panel_{s}", [f"market.train_source={s}"])
    best, val = best_source(out, panel, a.val_cycles)
    print(f"best fitted source on the validation cycles (< {a.val_cycles}): {best}")
    print(val.to_string(index=False))
    one = [f"one_{a.one}_replay", f"one_{a.one}_{best}"]
    for name, s in zip(one, ("replay", best), strict=True):
        job(name, [f"market.train_source={s}", f"market.files={ONE_FILES[a.one]}"])
    names = [n for n in panel + one if (out / n / "episodes.parquet").exists()]
    pooled, series = tables(out, names, a.val_cycles, walls)
    pooled.to_csv(out / "ablation.csv", index=False)
    series.to_csv(out / "per_series.csv", index=False)
    val.to_csv(out / "validation.csv", index=False)
    plot_curves(out, names, a.val_cycles, a.steps)
    md = [f"best fitted source (validation cycles < {a.val_cycles}): **{best}**", "",
          df_markdown(val.round(1)), "", df_markdown(pooled.round(3)), "",
          df_markdown(series.round(3))]
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    pd.set_option("display.width", 200)
    print(pooled.round(2).to_string(index=False))
    print(series.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
