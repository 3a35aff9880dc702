"""PPO ablation on the trading env: what makes an agent competent (weight 0, out of sample).

Each row is one ``tpfl-train`` run (4 seeds by default) on held-out episodes of the market, with
the greedy and sampled agents beside the reference rules on the same episodes (trend: lookback
and TP chosen on training data); ``greedy - trend`` is paired over the held-out episodes.

    python experiments/ppo_ablation.py --out results/ablation [--market regime] [--only A0 A1]

Writes ``<out>/ablation.csv`` and ``<out>/ablation.md`` (the table of ``experiments/README.md``);
each run's own directory holds its report, curves and checkpoints.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

BASE = ["experiment=agent", "audit.enabled=false", "progress=false"]
RUNS = {
    "A0": ("baseline: fresh paths, 64 envs x 128 steps, 64x64, lr 1e-3, reward norm., 1M", []),
    "A1": ("16 fixed training paths (the old study's data)",
           ["market.fresh=false", "market.train_paths=16"]),
    "A2": ("1024 fixed training paths", ["market.fresh=false", "market.train_paths=1024"]),
    "A3": ("network 32x32", ["ppo.widths=[32,32]"]),
    "A4": ("no reward normalisation", ["ppo.normalize_reward=false"]),
    "A5": ("lr 3e-4", ["ppo.lr=3e-4"]),
    "A6": ("no entropy bonus", ["ppo.ent_coef=0.0"]),
    "A7": ("16 envs x 64 steps (ppo=small's batch)", ["ppo.num_envs=16", "ppo.num_steps=64",
                                                      "ppo.num_minibatches=4"]),
    "A8": ("3x budget (3M steps)", ["ppo.total_timesteps=3145728"]),
    "A9": ("16 fixed paths, 3x budget", ["market.fresh=false", "market.train_paths=16",
                                        "ppo.total_timesteps=3145728"]),
}


def run(tag: str, overrides: list[str], market: str, out: Path) -> dict:
    d = out / f"{market}_{tag}"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "tpfl_jax.app", "train", f"market={market}", *BASE, *overrides,
           f"hydra.run.dir={d}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{tag} failed:\n{proc.stderr[-3000:]}")
    lv = pd.read_csv(d / "levels.csv").set_index("name")
    vs = pd.read_csv(d / "vs_references.csv").set_index("reference")
    m = pd.read_json(d / "metrics.jsonl", lines=True)
    ret = m["episode_return"].apply(lambda v: pd.Series(v, dtype=float).mean())
    arm = lv[lv.kind == "arm"].iloc[0]
    return {"run": tag, "market": market, "what": RUNS[tag][0], "wall_s": round(wall),
            "train_return": float(ret.tail(8).mean()),
            "greedy": arm["greedy_pnl"], "sampled": arm["sampled_pnl"],
            "trend": lv.loc["trend", "oos_pnl"], "buy_and_hold": lv.loc["buy_and_hold", "oos_pnl"],
            "oracle": lv.loc["oracle", "oos_pnl"] if "oracle" in lv.index else float("nan"),
            "greedy-trend": vs.loc["trend", "mean_diff"],
            "lo": vs.loc["trend", "lo"], "hi": vs.loc["trend", "hi"]}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/ablation")
    ap.add_argument("--market", nargs="+", default=["regime"])
    ap.add_argument("--only", nargs="*", default=None, help="run tags (default: all)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for market in a.market:
        for tag, (_, over) in RUNS.items():
            if a.only and tag not in a.only:
                continue
            rows.append(run(tag, over, market, out))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    old = out / "ablation.csv"
    if old.exists():              # keep the rows of runs not repeated now
        prev = pd.read_csv(old)
        keep = ~prev.set_index(["run", "market"]).index.isin(df.set_index(["run", "market"]).index)
        df = pd.concat([prev[keep], df], ignore_index=True).sort_values(["market", "run"])
    df.to_csv(old, index=False)
    from tpfl_jax.report import df_markdown

    (out / "ablation.md").write_text(df_markdown(df.round(1)) + "\n")
    print(df.round(1).to_string(index=False))
    return df


if __name__ == "__main__":
    main()
