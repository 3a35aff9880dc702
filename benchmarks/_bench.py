"""Shared benchmark plumbing: CSV output under ``results/bench/`` (git-ignored), machine line."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"


def machine() -> str:
    """One line: CPU model, logical cores, JAX backend and device kind."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    d = jax.devices()[0]
    return (f"{cpu}, {os.cpu_count()} logical cores; jax {jax.__version__} "
            f"{d.platform} x{jax.device_count()} ({d.device_kind})")


def write_csv(rows: list[dict], name: str, path: str | None = None) -> Path:
    """Write ``rows`` (dicts with the same keys) plus date and machine columns; return the path."""
    out = Path(path) if path else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    m = machine()
    rows = [{**r, "date": stamp, "machine": m} for r in rows]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return out
