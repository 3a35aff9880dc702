"""A panel of real series: several OHLCV files, each its own symbol, cut into walk-forward
windows on a common calendar.

Reading (host): every file is read and validated by ``data.read_ohlcv`` (errors name the file and
row) before anything is built or compiled. A close-only file (``close_only``) gets bars formed
from its closes: ``open = previous close`` (the first row opens at its close), ``high =
max(open, close)``, ``low = min(open, close)``, volume 0; intrabar TP/SL is then decided on
close-to-close moves only. Rows with a missing close are refused unless ``drop_missing`` is set,
and then dropped with a warning that counts them and names the first.

Windows (host plan, :func:`plan_windows`): cycle ``c`` has a calendar cut time ``T_c``. A bar
spans ``[timestamp, timestamp + period)`` where ``period`` is the series' median bar spacing
(the timestamp is taken as the bar's open). On every series the cycle trains on the last
``train_bars`` bars that *end* at or before ``T_c`` and deploys on the first ``deploy_bars``
bars that *start* at or after ``T_c`` (plus the ``window`` bars before them as observation
history only). So no deploy bar is a training bar of its own series, and no deploy bar starts
before any training bar of any series has ended: nothing trained on lies in any deploy
window's future. Window lengths are in each series' own bars (a daily and an hourly series
both train on ``train_bars`` of their bars).

Unequal lengths and calendars: a series is *active* in a cycle when it has those bars on both
sides of the cut; inactive series sit the cycle out. The ``slots`` training (and deploy) paths
of a cycle go round-robin over its active series, so training episodes are drawn evenly across
the instruments active at that time and shapes stay static. Bars in no window of any cycle are
not silently lost: :meth:`PanelPlan.coverage` counts them per series and the pipeline writes
it; a series active in no cycle is a warning. Cuts are given (``cuts``) or spread evenly over
the calendar span where at least ``min_series`` series are active (``cut_start`` /
``cut_end`` narrow it).

Device layout (:class:`PanelSource`, the traced source): the whole panel as one
``MarketData`` ``[n_series, max_len]`` (row = series = ``symbol_id``; shorter series are
right-padded by repeating their last bar, and no window ever reaches the padding), plus
``[num_cycles, slots]`` int32 tables of each slot's row and first bar for training and deploy,
and the fitted generator parameters (``[num_cycles, slots, ...]``, or None).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np
import pandas as pd
from flax import struct

from tpfl_jax.market.data import _CSV_SUFFIXES, _PARQUET_SUFFIXES, _validate, read_ohlcv
from tpfl_jax.market.types import DEFAULT_VOL_SPAN, MarketData, make_market_data

_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class SeriesFile:
    """One series of a panel: its file and how to read it.

    ``symbol`` (default: the file name without suffixes); ``columns`` maps OHLCV fields and
    ``timestamp`` to the file's columns (``data.validate_ohlcv``); ``time_format``: strftime
    format of the time column; ``close_only``: the file has only a close (bars formed as in the
    module docstring; ``columns['close']`` names it); ``drop_missing``: drop (with a warning)
    rows whose close is missing instead of refusing the file; ``start`` / ``end``: keep only
    bars in ``[start, end]`` (explicit trims, counted in the coverage); ``fee_bps`` /
    ``half_spread_bps``: this symbol's costs per side (None: the env's)."""

    path: str
    symbol: str | None = None
    columns: Mapping[str, str | None] = field(default_factory=dict)
    sep: str = ","
    time_format: str | None = None
    close_only: bool = False
    drop_missing: bool = False
    start: str | None = None
    end: str | None = None
    fee_bps: float | None = None
    half_spread_bps: float | None = None

    @property
    def name(self) -> str:
        if self.symbol:
            return self.symbol
        base = os.path.basename(str(self.path))
        for suf in (*_CSV_SUFFIXES, *_PARQUET_SUFFIXES):
            if base.lower().endswith(suf):
                return base[: -len(suf)]
        return base


@dataclass(frozen=True)
class Series:
    """A validated series: its symbol, canonical frame (``read_ohlcv``'s), file and costs."""

    symbol: str
    frame: pd.DataFrame
    path: str
    close_only: bool
    rows_in_file: int
    fee_bps: float | None = None
    half_spread_bps: float | None = None


def files_in(directory: str) -> list[SeriesFile]:
    """Every CSV / parquet file of ``directory`` (sorted by name), default reading options."""
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory (expected a folder of OHLCV files)")
    names = sorted(f for f in os.listdir(directory)
                   if f.lower().endswith((*_CSV_SUFFIXES, *_PARQUET_SUFFIXES)))
    if not names:
        raise ValueError(f"{directory}: no CSV or parquet files (suffixes "
                         f"{[*_CSV_SUFFIXES, *_PARQUET_SUFFIXES]})")
    return [SeriesFile(path=os.path.join(directory, n)) for n in names]


def _close_only(f: SeriesFile) -> pd.DataFrame:
    """Bars formed from a close-only CSV (module docstring); row numbers stay the file's."""
    try:
        df = pd.read_csv(f.path, sep=f.sep)
    except (pd.errors.ParserError, OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{f.path}: cannot read as csv ({type(e).__name__}: "
                         f"{str(e).strip()[:200]})") from None
    col = f.columns.get("close") or next((c for c in df.columns if str(c).lower() == "close"),
                                         None)
    if col is None:
        col = [c for c in df.columns if c != f.columns.get("timestamp")][-1]
    if col not in df.columns:
        raise ValueError(f"{f.path}: missing column {col!r} (mapped to 'close'); present "
                         f"columns: {[str(c) for c in df.columns]}")
    close = pd.to_numeric(df[col], errors="coerce")
    if f.drop_missing:
        miss = np.flatnonzero(close.isna().to_numpy())
        if miss.size:
            warnings.warn(f"{f.path}: dropped {miss.size} row(s) with a missing close "
                          f"(drop_missing), the first at row {miss[0]} (file line "
                          f"{miss[0] + 2}, value {df[col].iloc[miss[0]]!r})", stacklevel=3)
            df, close = df.iloc[close.notna().to_numpy()], close.dropna()
    c = close.to_numpy(np.float64)
    o = np.concatenate([c[:1], c[:-1]])
    ts_col = f.columns.get("timestamp") or df.columns[0]
    out = pd.DataFrame({"timestamp": df[ts_col].to_numpy(), "open": o,
                        "high": np.fmax(o, c), "low": np.fmin(o, c), "close": c})
    dropped = len(out) != len(df.index) or not isinstance(df.index, pd.RangeIndex)
    out.index = df.index        # the file's row numbers (errors name them after a drop)
    cols = {"timestamp": "timestamp", "volume": None}
    return _validate(out, cols, f.path, csv_lines=not dropped, time_format=f.time_format)


def read_series(f: SeriesFile) -> Series:
    """Read and validate one file (errors name the file and row)."""
    if f.close_only:
        frame = _close_only(f)
    else:
        cols = dict(f.columns)
        frame = read_ohlcv(f.path, cols, sep=f.sep, time_format=f.time_format)
    rows = len(frame)
    idx = frame.index
    if isinstance(idx, pd.DatetimeIndex) and idx.tz is not None:    # one naive UTC calendar
        frame = frame.set_axis(idx.tz_convert(None))
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise ValueError(f"{f.path}: the time column holds no dates ({frame.index.dtype}); "
                         "a panel needs calendar timestamps to align its series")
    if f.start is not None or f.end is not None:
        lo = pd.Timestamp(f.start) if f.start is not None else frame.index[0]
        hi = pd.Timestamp(f.end) if f.end is not None else frame.index[-1]
        frame = frame.loc[(frame.index >= lo) & (frame.index <= hi)]
        if len(frame) < 2:
            raise ValueError(f"{f.path}: start = {f.start}, end = {f.end} keep {len(frame)} bars "
                             f"of {rows}; expected a range inside {idx[0]} .. {idx[-1]}")
    return Series(f.name, frame, str(f.path), f.close_only, rows, f.fee_bps, f.half_spread_bps)


def read_panel(files: Sequence[SeriesFile]) -> list[Series]:
    """Read every file of a panel; symbols must be unique."""
    if not files:
        raise ValueError("panel: no files (expected a list of OHLCV files or a directory)")
    series = [read_series(f) for f in files]
    names = [s.symbol for s in series]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"panel: symbols {dup} appear more than once; give each file its own "
                         "symbol")
    return series


@dataclass(frozen=True)
class PanelPlan:
    """The host plan of a panel's windows: ``cuts[c]``; ``active [C, N]``; per slot
    ``train_row``/``train_start``/``deploy_row``/``deploy_start`` ``[C, S]`` (``deploy_start``
    includes the ``window`` history bars); ``train_bars``, ``deploy_bars``, ``window``."""

    symbols: tuple[str, ...]
    lengths: tuple[int, ...]
    cuts: tuple[pd.Timestamp, ...]
    active: np.ndarray
    train_row: np.ndarray
    train_start: np.ndarray
    deploy_row: np.ndarray
    deploy_start: np.ndarray
    train_bars: int
    deploy_bars: int
    window: int

    def coverage(self) -> pd.DataFrame:
        """Per series: bars, cycles active, bars in some training / deploy window, bars in
        none (the data a run does not use)."""
        rows = []
        for i, (sym, n) in enumerate(zip(self.symbols, self.lengths, strict=True)):
            tr, dep = np.zeros(n, bool), np.zeros(n, bool)
            for c in range(len(self.cuts)):
                for r, s in zip(self.train_row[c], self.train_start[c], strict=True):
                    if r == i:
                        tr[s:s + self.train_bars] = True
                for r, s in zip(self.deploy_row[c], self.deploy_start[c], strict=True):
                    if r == i:
                        dep[s + self.window:s + self.window + self.deploy_bars] = True
            rows.append({"symbol": sym, "bars": n, "cycles_active": int(self.active[:, i].sum()),
                         "train_bars": int(tr.sum()), "deploy_bars": int(dep.sum()),
                         "unused_bars": int((~(tr | dep)).sum())})
        return pd.DataFrame(rows)

    def windows(self, series: Sequence[Series]) -> pd.DataFrame:
        """One row per cycle and active series: cut, train and deploy first/last timestamps."""
        out = []
        for c, cut in enumerate(self.cuts):
            for i in np.flatnonzero(self.active[c]):
                ts = series[i].frame.index
                j = int(np.flatnonzero(self.train_row[c] == i)[0])
                tr0 = int(self.train_start[c, j])
                d0 = int(self.deploy_start[c, j]) + self.window
                out.append({"cycle": c, "cut": cut, "symbol": self.symbols[i],
                            "train_first": ts[tr0], "train_last": ts[tr0 + self.train_bars - 1],
                            "deploy_first": ts[d0], "deploy_last": ts[d0 + self.deploy_bars - 1]})
        return pd.DataFrame(out)


def _bounds(ts: pd.DatetimeIndex, train_bars: int, deploy_bars: int
            ) -> tuple[np.ndarray, np.ndarray, pd.Timestamp | None, pd.Timestamp | None]:
    """(bar starts, bar ends, earliest cut, latest cut) of one series (None: too short)."""
    t = ts.to_numpy()
    period = np.median(np.diff(t)) if len(t) > 1 else np.timedelta64(1, "D")
    ends = t + period
    if len(t) < train_bars + deploy_bars:
        return t, ends, None, None
    lo, hi = pd.Timestamp(ends[train_bars - 1]), pd.Timestamp(t[len(t) - deploy_bars])
    return (t, ends, lo, hi) if lo <= hi else (t, ends, None, None)


def _auto_cuts(bounds: list, num_cycles: int, min_series: int, cut_start: str | None,
               cut_end: str | None) -> list[pd.Timestamp]:
    """``num_cycles`` cuts evenly spread over the span where >= ``min_series`` are active."""
    pts = sorted({b[k] for b in bounds for k in (2, 3) if b[k] is not None})
    ok = [p for p in pts if sum(b[2] is not None and b[2] <= p <= b[3] for b in bounds)
          >= min_series]
    if cut_start is not None:
        ok = [p for p in ok if p >= pd.Timestamp(cut_start)] or [pd.Timestamp(cut_start)]
    if cut_end is not None:
        ok = [p for p in ok if p <= pd.Timestamp(cut_end)] or [pd.Timestamp(cut_end)]
    if not ok:
        raise ValueError(f"panel: no calendar time has >= {min_series} series with train_bars "
                         "bars before it and deploy_bars bars after it; lower min_series or "
                         "train_bars / deploy_bars")
    lo, hi = min(ok), max(ok)
    if cut_start is not None:
        lo = max(lo, pd.Timestamp(cut_start))
    if cut_end is not None:
        hi = min(hi, pd.Timestamp(cut_end))
    if num_cycles == 1:
        return [lo]
    return [lo + (hi - lo) * (c / (num_cycles - 1)) for c in range(num_cycles)]


def plan_windows(series: Sequence[Series], train_bars: int, deploy_bars: int, window: int,
                 num_cycles: int, slots: int = 0, cuts: Sequence[str] | None = None,
                 min_series: int = 1, cut_start: str | None = None,
                 cut_end: str | None = None) -> PanelPlan:
    """The windows of every cycle (module docstring); ``slots`` 0: one per series."""
    if train_bars < window:
        raise ValueError(f"panel: train_bars = {train_bars} must be >= window = {window}")
    bounds = [_bounds(s.frame.index, train_bars, deploy_bars) for s in series]
    if cuts:
        if len(cuts) < num_cycles:
            raise ValueError(f"panel: cuts has {len(cuts)} times; {num_cycles} cycles need one "
                             "each")
        times = [pd.Timestamp(x) for x in list(cuts)[:num_cycles]]
    else:
        times = _auto_cuts(bounds, num_cycles, min_series, cut_start, cut_end)
    n, s_ = len(series), slots or len(series)
    active = np.zeros((num_cycles, n), bool)
    tables = np.zeros((4, num_cycles, s_), np.int32)
    for c, cut in enumerate(times):
        firsts = {}
        for i, (t, ends, _, _) in enumerate(bounds):
            n_tr = int(np.searchsorted(ends, cut.to_datetime64(), "right"))
            d0 = int(np.searchsorted(t, cut.to_datetime64(), "left"))
            if n_tr >= train_bars and len(t) - d0 >= deploy_bars:
                active[c, i] = True
                firsts[i] = (n_tr - train_bars, d0 - window)
        if not firsts:
            raise ValueError(f"panel: cycle {c} (cut {cut}): no series has {train_bars} bars "
                             f"before and {deploy_bars} bars after the cut; choose cuts inside "
                             "the data (cuts / cut_start / cut_end) or fewer cycles")
        act = sorted(firsts)
        for j in range(s_):
            i = act[j % len(act)]
            tables[:, c, j] = (i, firsts[i][0], i, firsts[i][1])
    for i, s in enumerate(series):
        if not active[:, i].any():
            warnings.warn(f"panel: series {s.symbol} ({s.path}) is active in no cycle (cuts "
                          f"{times[0]} .. {times[-1]}; its bars {s.frame.index[0]} .. "
                          f"{s.frame.index[-1]}): none of its {len(s.frame)} bars is used",
                          stacklevel=2)
    return PanelPlan(tuple(s.symbol for s in series), tuple(len(s.frame) for s in series),
                     tuple(times), active, *tables, train_bars, deploy_bars, window)


def walk_forward_plan(series: Series, train_bars: int, deploy_bars: int, window: int,
                      num_cycles: int, step: int | None = None) -> PanelPlan:
    """The plan of one series cut as ``specs.WalkForwardMarkets`` cuts it (cycle c trains on
    bars ``[c * step, c * step + train_bars)``, step default ``deploy_bars``), so a fitted
    source deploys on exactly the windows ``replay`` deploys on."""
    step = deploy_bars if step is None else step
    n = len(series.frame)
    need = (num_cycles - 1) * step + train_bars + deploy_bars
    if n < need:
        raise ValueError(f"{series.path}: {n} bars; {num_cycles} cycles need >= {need} "
                         "((num_cycles - 1) * step + train_bars + deploy_bars)")
    c = np.arange(num_cycles)
    zeros = np.zeros((num_cycles, 1), np.int32)
    tr = (c * step)[:, None].astype(np.int32)
    dep = tr + train_bars - window
    cuts = tuple(series.frame.index[c_ * step + train_bars] for c_ in c)
    return PanelPlan((series.symbol,), (n,), cuts, np.ones((num_cycles, 1), bool), zeros, tr,
                     zeros, dep, train_bars, deploy_bars, window)


@struct.dataclass
class PanelSource:
    """The traced source of a panel (module docstring)."""

    market: MarketData
    train_row: jax.Array
    train_start: jax.Array
    deploy_row: jax.Array
    deploy_start: jax.Array
    fitted: object = None


def panel_market(series: Sequence[Series], vol_span: int = DEFAULT_VOL_SPAN) -> MarketData:
    """All series as one ``MarketData [n_series, max_len]`` (right-padded with the last bar;
    ``symbol_id`` = row). The volatility unit runs causally over each whole series."""
    n_max = max(len(s.frame) for s in series)
    cols = {f: np.stack([np.pad(s.frame[f].to_numpy(np.float64), (0, n_max - len(s.frame)),
                                mode="edge") for s in series]) for f in _FIELDS}
    return make_market_data(cols["open"], cols["high"], cols["low"], cols["close"],
                            volume=cols["volume"], symbol_id=np.arange(len(series)),
                            vol_span=vol_span)


def panel_source(series: Sequence[Series], plan: PanelPlan, fitted: object = None
                 ) -> PanelSource:
    """The device source of ``plan`` over ``series`` (checks its vol unit is > 0 where used)."""
    market = panel_market(series)
    vu = np.asarray(market.vol_unit)
    for i, s in enumerate(series):
        bad = np.flatnonzero(~(vu[i, :len(s.frame)] > 0))
        if bad.size:
            raise ValueError(f"{s.path}: the volatility unit is 0 at timestamp "
                             f"{s.frame.index[bad[0]]} (bar {bad[0]}); expected price movement "
                             "(high > low) at least every few hundred bars")
    as_i32 = lambda x: np.asarray(x, np.int32)  # noqa: E731
    return PanelSource(market, as_i32(plan.train_row), as_i32(plan.train_start),
                       as_i32(plan.deploy_row), as_i32(plan.deploy_start), fitted)


def gather_windows(market: MarketData, rows: jax.Array, starts: jax.Array, n: int
                   ) -> MarketData:
    """Bars ``[starts[j], starts[j] + n)`` of row ``rows[j]`` for every slot j (traced)."""
    def one(r, s):
        def cut(x):
            if x.ndim == 1:         # symbol_id
                return x[r]
            return jax.lax.dynamic_slice_in_dim(x[r], s, n, axis=0)
        return jax.tree.map(cut, market)

    return jax.vmap(one)(rows, starts)


def costs_frame(series: Sequence[Series]) -> pd.DataFrame:
    """Symbol, file, costs (None: the env's), bars and first/last timestamp of each series."""
    return pd.DataFrame([{"symbol_id": i, "symbol": s.symbol, "path": s.path,
                          "close_only": s.close_only, "bars": len(s.frame),
                          "first": s.frame.index[0], "last": s.frame.index[-1],
                          "fee_bps": s.fee_bps, "half_spread_bps": s.half_spread_bps}
                         for i, s in enumerate(series)])


__all__ = ["PanelPlan", "PanelSource", "Series", "SeriesFile", "costs_frame", "files_in",
           "gather_windows", "panel_market", "panel_source", "plan_windows", "read_panel",
           "read_series", "walk_forward_plan"]
