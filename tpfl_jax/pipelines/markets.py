"""The market of a run: the config's market spec, its traced source and the env params template
(synthetic generators, one OHLCV file, or a panel of them with a fitted training source).

Every file is read and validated, and every generator fitted, here on the host, before anything
compiles; errors are one line naming the config field, file and row. ``market_tables(spec)``
gives the frames a run should write: the panel's series and costs, its windows per cycle, its
coverage (bars used and unused per series) and the fitted parameters per window;
``market_facts`` the stylised facts of each real training window against its generated paths."""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from tpfl_jax.config import Config
from tpfl_jax.errors import UserError
from tpfl_jax.market import fit, panel
from tpfl_jax.market.data import read_ohlcv, to_windows
from tpfl_jax.market.specs import PanelMarkets, SyntheticMarkets, WalkForwardMarkets
from tpfl_jax.rundir import write_frame


def resolve_data_path(path: str) -> str:
    """``pkg://PACKAGE/REL`` -> the file ``REL`` inside the installed package ``PACKAGE`` (e.g.
    ``pkg://backtesting/test/GOOG.csv``); other paths are returned as they are."""
    if not str(path).startswith("pkg://"):
        return str(path)
    pkg, _, rel = str(path)[len("pkg://"):].partition("/")
    try:
        f = importlib.resources.files(pkg) / rel
    except ModuleNotFoundError:
        raise UserError(f"config.market.path = {path!r}: package {pkg!r} is not installed "
                         "(the data sets ship with the `real` extra: pip install "
                         "'tpfl_jax[real]'; docs/data.md)") from None
    if not (f.is_file() or f.is_dir()):
        raise UserError(f"config.market.path = {path!r}: no file {rel!r} in package {pkg!r}")
    return str(f)


def build_market(c: Config, env: Any, env_kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(markets spec, traced source argument, env params template) of the config."""
    m = c.market
    try:
        fit.source_parts(m.train_source)
    except ValueError as e:
        raise UserError(f"config.market.{e}") from None
    if m.source == "synthetic" and m.train_source != "replay":
        raise UserError(f"config.market.train_source = {m.train_source!r}: applies to csv and "
                        "panel markets; a synthetic market is its own generator (expected "
                        "'replay'; market.fresh draws new paths every update)")
    if m.source == "synthetic":
        spec = SyntheticMarkets(kind=m.kind, train_paths=m.train_paths,
                                deploy_paths=m.deploy_paths, n_bars=m.n_bars,
                                substeps=m.substeps, fresh=m.fresh)
        try:
            source = spec.source(**dict(m.params))
        except ValueError as e:
            raise UserError(f"config.market.params: {e}") from None
        template = _shape_template(lambda: spec.cycle_markets(source, jax.random.key(c.seed),
                                                              0)[0])
    elif m.source == "csv" and m.train_source == "replay":
        if not m.path:
            raise UserError("config.market.path: required for market.source=csv")
        frame = read_ohlcv(resolve_data_path(m.path), _columns(m), sep=m.sep)
        source = to_windows(frame, len(frame))
        spec = WalkForwardMarkets(train_bars=m.train_bars, deploy_bars=m.deploy_bars,
                                  window=env.lookback)
        template = source
    elif m.source in ("csv", "panel"):
        spec, source, costs = _build_panel(c, env)
        env_kwargs = env_kwargs | costs
        template = spec.train_market(source, 0)
    else:
        raise UserError(f"config.market.source = {m.source!r}; expected 'synthetic', 'csv' or "
                        "'panel'")
    try:
        env_params = env.make_params(template, **env_kwargs)
    except ValueError as e:
        raise UserError(f"config.env / config.market: {e}") from None
    return spec, source, env_params


def _shape_template(market_fn: Any) -> Any:
    """A market of the shapes and dtypes ``market_fn`` returns, filled with ones (a flat, valid
    price) on the host: the env params template only fixes shapes (every program replaces its
    market), so nothing is generated or compiled for it."""
    return jax.tree.map(lambda s: np.ones(s.shape, s.dtype), jax.eval_shape(market_fn))


def _columns(f: Any) -> dict[str, str | None]:
    """The column mapping of a csv market or a panel file section."""
    columns = {k: v for k, v in dataclasses.asdict(f.columns).items() if v is not None}
    if f.timestamp:
        columns["timestamp"] = f.timestamp
    if f.no_volume:
        columns["volume"] = None
    return columns


def panel_files(c: Config) -> list[panel.SeriesFile]:
    """The series files of the config: ``market.files``, every file of ``market.directory``,
    or the one ``market.path`` of ``market=csv``."""
    m = c.market
    if m.source == "csv":
        if not m.path:
            raise UserError("config.market.path: required for market.source=csv")
        return [panel.SeriesFile(resolve_data_path(m.path), columns=_columns(m), sep=m.sep)]
    if bool(m.files) == bool(m.directory):
        raise UserError("config.market.files / config.market.directory: expected a list of "
                        "files or one directory for market.source=panel (exactly one of them)")
    if m.directory:
        try:
            return panel.files_in(resolve_data_path(m.directory))
        except ValueError as e:
            raise UserError(f"config.market.directory: {e}") from None
    out = []
    for i, f in enumerate(m.files):
        cost = {k: getattr(f, k) for k in ("fee_bps", "half_spread_bps")}
        for k, v in cost.items():
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise UserError(f"config.market.files[{i}].{k} = {v}; expected null or >= 0")
        out.append(panel.SeriesFile(
            resolve_data_path(f.path), symbol=f.symbol, columns=_columns(f), sep=f.sep,
            time_format=f.time_format, close_only=f.close_only, drop_missing=f.drop_missing,
            start=f.start, end=f.end, **cost))
    return out


def _series_costs(c: Config, series: list[panel.Series]) -> dict[str, float]:
    """The env costs of the panel: per-symbol costs must agree (EnvParams charges one fee and
    half-spread for every path)."""
    out = {}
    for k in ("fee_bps", "half_spread_bps"):
        vals = {s.symbol: getattr(s, k) if getattr(s, k) is not None else getattr(c.env, k)
                for s in series}
        if len(set(vals.values())) > 1:
            raise UserError(f"config.market.files[*].{k}: per-symbol costs differ ({vals}); "
                            f"expected one {k} for every series (the env charges one cost on "
                            "every path)")
        out[k] = float(next(iter(vals.values())))
    return out


def _build_panel(c: Config, env: Any) -> tuple[PanelMarkets, Any, dict[str, float]]:
    """Read, plan and fit a panel (or one csv file with a fitted training source)."""
    m = c.market
    n_cycles = int(c.loop.num_cycles)
    limits = {"block_len": (m.block_len, 1.0, "a mean block length in bars"),
              "n_states": (m.n_states, 1, "a number of regimes"),
              "fit_iters": (m.fit_iters, 1, "EM iterations"),
              "n_bars": (m.n_bars, 1, "bars per fresh path"),
              "substeps": (m.substeps, 1, "intrabar points per bar"),
              "min_series": (m.min_series, 1, "a number of series"),
              "slots": (m.slots, 0, "windows per cycle (0: one per series)")}
    for k, (v, lo, what) in limits.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= lo:
            raise UserError(f"config.market.{k} = {v!r}; expected {what} >= {lo}")
    try:
        series = panel.read_panel(panel_files(c))
    except ValueError as e:
        raise UserError(f"config.market ({m.source}): {e}") from None
    costs = _series_costs(c, series)
    try:
        if m.source == "csv":
            plan = panel.walk_forward_plan(series[0], m.train_bars, m.deploy_bars, env.lookback,
                                           n_cycles)
        else:
            plan = panel.plan_windows(series, m.train_bars, m.deploy_bars, env.lookback,
                                      n_cycles, m.slots, list(m.cuts), m.min_series,
                                      m.cut_start, m.cut_end)
        source = panel.panel_source(series, plan)
    except ValueError as e:
        raise UserError(f"config.market ({m.source}): {e}") from None
    fitted, fitted_table = _fit_parts(c, source, plan)
    source = source.replace(fitted=fitted)
    tables = {"series": panel.costs_frame(series), "windows": plan.windows(series),
              "coverage": plan.coverage()}
    if fitted_table is not None:
        tables["fitted"] = fitted_table
    spec = PanelMarkets(train_bars=m.train_bars, deploy_bars=m.deploy_bars, window=env.lookback,
                        slots=int(plan.train_row.shape[1]), num_cycles=n_cycles,
                        train_source_kind=m.train_source, n_bars=m.n_bars,
                        substeps=m.substeps, block_len=float(m.block_len),
                        tables=tables)
    return spec, source, costs


def _fit_parts(c: Config, source: panel.PanelSource, plan: panel.PanelPlan
               ) -> tuple[Any, pd.DataFrame | None]:
    """The fitted params of every training window for each fitted part of the training source
    (a tuple with None for bootstrap parts when it is a mixture) and their table."""
    m = c.market
    parts = fit.source_parts(m.train_source)
    mk = jax.device_get(source.market)
    close, volume = np.asarray(mk.close, np.float64), np.asarray(mk.volume, np.float64)
    fitted, frames = [], []
    for part in parts:
        if part not in fit.FITTED:
            fitted.append(None)
            continue
        try:
            f = fit.fit_windows(part, close, volume, plan.train_row, plan.train_start,
                                m.train_bars, m.n_states, m.fit_iters, int(c.seed))
        except ValueError as e:
            raise UserError(f"config.market.train_source = {m.train_source}: {e}") from None
        fitted.append(f)
        frames.append(fit.fitted_frame(part, f, plan.symbols, plan.train_row)
                      .assign(source=part))
    table = pd.concat(frames, ignore_index=True) if frames else None
    return (tuple(fitted) if len(parts) > 1 else fitted[0]), table


def market_tables(spec: Any) -> dict[str, pd.DataFrame]:
    """The frames a run writes for its market (empty for synthetic and replayed csv markets):
    ``series`` (symbols, files, costs, spans), ``windows`` (each cycle's train/deploy dates per
    series), ``coverage`` (bars used and unused per series), ``fitted`` (parameters per
    window, fitted sources)."""
    return dict(getattr(spec, "tables", None) or {})


def deploy_symbols(spec: Any, source: Any) -> np.ndarray | None:
    """The symbol each deploy path (slot) of each cycle plays, ``[C, slots]`` (panel only;
    None for other specs)."""
    if not isinstance(spec, PanelMarkets) or not spec.tables:
        return None
    symbols = np.asarray(spec.tables["series"]["symbol"], dtype=object)
    return symbols[np.asarray(source.deploy_row)]


def market_facts(spec: Any, source: Any, key: jax.Array, n_paths: int = 64,
                 max_lag: int = 20) -> pd.DataFrame:
    """Stylised facts (``fit.stylised_facts``) of every cycle's real training window of every
    active series against ``n_paths`` paths its training source generates from ``key`` (rows:
    cycle, symbol, fact; columns ``real``, ``generated``). Empty for other specs."""
    if not isinstance(spec, PanelMarkets):
        return pd.DataFrame()
    symbols = list(spec.tables["series"]["symbol"]) if spec.tables else None
    out = []
    for c in range(spec.num_cycles):
        real = jax.device_get(spec.train_market(source, c))
        gen = jax.device_get(spec.generated(source, jax.random.fold_in(key, c), c,
                                            max(n_paths, spec.slots)))
        rows = np.asarray(real.symbol_id)
        for r in sorted(set(rows.tolist())):
            j = int(np.flatnonzero(rows == r)[0])
            g = np.asarray(gen.close)[np.asarray(gen.symbol_id) == r]
            t = fit.stylised_facts(np.asarray(real.close)[j], g, max_lag).reset_index()
            out.append(t.assign(cycle=c, symbol=symbols[r] if symbols else r))
    return pd.concat(out, ignore_index=True)[["cycle", "symbol", "fact", "real", "generated"]]


def write_market(out: Path, spec: Any, source: Any, seed: int) -> list[Path]:
    """A run's market files (nothing for synthetic and replayed csv markets): each of
    :func:`market_tables` as ``market_<name>.csv``; for a panel the stylised facts of every
    training window against its source's paths (``market_stylised_facts.csv``) and their
    figure, pooled over windows (``market_stylised_facts.png``)."""
    paths = []
    for name, frame in market_tables(spec).items():
        paths.append(write_frame(frame, out / f"market_{name}.csv"))
    facts = market_facts(spec, source, jax.random.fold_in(jax.random.key(seed), 0xFAC75))
    if len(facts):
        paths.append(write_frame(facts, out / "market_stylised_facts.csv"))
        pooled = facts.groupby("fact", sort=False)[["real", "generated"]].mean()
        png = out / "market_stylised_facts.png"
        fit.plot_stylised_facts(pooled, str(png))
        paths.append(png)
    return paths
