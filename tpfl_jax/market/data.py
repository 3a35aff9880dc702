"""Real OHLCV data: CSV / parquet / DataFrame -> validated frame -> equal windows -> ``MarketData``.

Validation rejects bad data with a ``ValueError`` that names the row (0-based data row, plus the
file line for CSV, the index label and the timestamp) and the rule broken. Nothing is filled or
reordered, and only one kind of row is dropped, with a warning naming them: leading bars with
no price range (high == low in float32, the precision of ``MarketData``) before the first bar
with one. The volatility unit (an average true range, ``MarketData.vol_unit``) is 0 on such
bars, and every TP/SL distance is a multiple of it. Data without any bar with a range (e.g.
constant prices) is refused. ``to_windows`` refuses windows whose volatility unit is 0 on some
bar, naming the file, row and timestamp.

Rows are 0-based positions in the data as read; a CSV's header is line 1, so row ``i`` is file
line ``i + 2``.

The time column is ``timestamp`` or one of the usual names (``TIMESTAMP_NAMES``: Date,
Datetime, Time, ...), matched case-insensitively; without one the row order is the time, with a
warning. Timestamps with different UTC offsets are converted to UTC; naive and offset-carrying
timestamps in one file are an error. Prices must survive the float32 cast of ``MarketData``
(no overflow to inf, no underflow to 0).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import pandas as pd

from tpfl_jax.market.types import DEFAULT_VOL_SPAN, MarketData, make_market_data

PRICE_FIELDS = ("open", "high", "low", "close")
OHLCV_FIELDS = (*PRICE_FIELDS, "volume")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".txt")
# column names recognised as the time column (case-insensitive), in order of preference
TIMESTAMP_NAMES = ("timestamp", "datetime", "date_time", "date", "time", "open_time", "ts")
_F32 = np.finfo(np.float32)


class _Rows:
    """Formats row references for error messages."""

    def __init__(self, df: pd.DataFrame, ts: pd.Series, source: str,
                 csv_lines: bool, ts_from_index: bool):
        self.index, self.ts, self.source = df.index, ts, source
        self.csv_lines, self.ts_from_index = csv_lines, ts_from_index
        self.plain_index = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 \
            and df.index.step == 1

    def ref(self, pos: int) -> str:
        """``row i (file line .., index .., timestamp ..)``."""
        parts = [f"row {pos}"]
        if self.csv_lines:
            parts.append(f"file line {pos + 2}")
        if not self.ts_from_index and not self.plain_index:
            parts.append(f"index {self.index[pos]!r}")
        parts.append(f"timestamp {self.ts.iloc[pos]}")
        return f"{parts[0]} ({', '.join(parts[1:])})"

    def __call__(self, pos: int) -> str:
        return f"{self.source}: {self.ref(pos)}"


def _fail(rows: _Rows, bad: np.ndarray, rule: str | Callable[[int], str]) -> None:
    """Raise for the first True in ``bad`` (a boolean array over rows), if any."""
    hits = np.flatnonzero(bad)
    if hits.size:
        more = f" [first of {hits.size} rows breaking this rule]" if hits.size > 1 else ""
        raise ValueError(f"{rows(int(hits[0]))}: {rule(int(hits[0])) if callable(rule) else rule}"
                         f"{more}")


def _resolve(df: pd.DataFrame, field: str, columns: Mapping[str, str | None],
             source: str) -> str | None:
    """Source column for ``field``: the mapping, else the exact name, else a unique
    case-insensitive match; None if mapped to None (or timestamp not found: use the index)."""
    present = [str(c) for c in df.columns]
    folded: dict[str, list[str]] = {}
    for c in present:
        folded.setdefault(c.strip().casefold(), []).append(c)
    dups = [names for names in folded.values() if len(names) > 1]
    if dups:                  # e.g. 'Close' and 'close': which one is the price is a guess
        raise ValueError(f"{source}: columns {dups[0]} are the same name up to case or "
                         "spaces; expected distinct column names (rename one, or drop it)")
    if field in columns:
        name = columns[field]
        if name is None:
            return None
        if name not in df.columns:
            raise ValueError(f"{source}: missing column {name!r} (mapped to {field!r}); "
                             f"present columns: {present}")
        return name
    if field in df.columns:
        return field
    matches = [c for c in df.columns if str(c).lower() == field]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"{source}: column {field!r} is ambiguous, case-insensitive matches "
                         f"{matches}; pass columns={{{field!r}: ...}} (Hydra: "
                         f"market.{'timestamp' if field == 'timestamp' else 'columns.' + field}"
                         "=NAME)")
    if field == "timestamp":
        for name in TIMESTAMP_NAMES[1:]:
            matches = [c for c in df.columns if str(c).lower() == name]
            if len(matches) > 1:
                raise ValueError(f"{source}: time column ambiguous, case-insensitive matches "
                                 f"{matches}; pass columns={{'timestamp': ...}} (Hydra: "
                                 "market.timestamp=NAME)")
            if matches:
                others = [c for c in df.columns if str(c).lower() in TIMESTAMP_NAMES
                          and c != matches[0]]
                if others:
                    raise ValueError(f"{source}: several time columns {[matches[0], *others]}; "
                                     "pass columns={'timestamp': ...} (Hydra: "
                                     "market.timestamp=NAME) or join date and time into one")
                return matches[0]
        return None
    raise ValueError(f"{source}: missing column {field!r}; present columns: {present} "
                     f"(map names with columns={{{field!r}: 'YourName'}}; Hydra: "
                     f"market.columns.{field}=YourName"
                     + (", or market.no_volume=true" if field == "volume" else "") + ")")


def _parse_one(x: object) -> pd.Timestamp | None:
    try:
        ts = pd.Timestamp(x)
    except (ValueError, TypeError, OverflowError):
        return None
    return None if ts is pd.NaT else ts


def _timestamps(raw: pd.Series, rows: _Rows, time_format: str | None = None) -> pd.Series:
    """Timestamps: strings parsed to datetimes (different UTC offsets -> UTC); numbers and
    datetimes kept as they are. A row that parses alone but not with the others names the
    conflict (naive vs with a UTC offset, or another format). ``time_format`` (strftime codes,
    e.g. ``%d.%m.%Y %H:%M:%S.%f``) parses every row with that format."""
    if time_format is not None:
        parsed = pd.to_datetime(raw.astype(str), format=time_format, errors="coerce")
        _fail(rows, (parsed.isna() & raw.notna()).to_numpy(),
              lambda i: f"timestamp {raw.iloc[i]!r} does not match time_format {time_format!r}")
        return parsed
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        try:
            parsed = pd.to_datetime(raw, errors="coerce")
        except (ValueError, TypeError, OverflowError):   # several UTC offsets: one time axis
            parsed = pd.to_datetime(raw, errors="coerce", utc=True)
        bad = (parsed.isna() & raw.notna()).to_numpy()

        def rule(i: int) -> str:
            alone = _parse_one(raw.iloc[i])
            good = np.flatnonzero(~bad & raw.notna().to_numpy())
            if alone is None or not good.size:
                return (f"unparseable timestamp {raw.iloc[i]!r} (rule: dates/times pandas can "
                        "parse, e.g. ISO 8601)")
            j = int(good[0])
            ref = _parse_one(raw.iloc[j])
            aware = alone.tzinfo is not None
            if ref is not None and aware != (ref.tzinfo is not None):
                kind = ("with a UTC offset", "naive (no UTC offset)")
                return (f"timestamp {raw.iloc[i]!r} is {kind[0] if aware else kind[1]} but row "
                        f"{j} ({raw.iloc[j]!r}) is {kind[1] if aware else kind[0]} (rule: all "
                        "timestamps with a UTC offset, or none)")
            return (f"timestamp {raw.iloc[i]!r} has another format than row {j} "
                    f"({raw.iloc[j]!r}) (rule: one timestamp format per file)")

        _fail(rows, bad, rule)
        return parsed
    return raw


def validate_ohlcv(df: pd.DataFrame, columns: Mapping[str, str | None] | None = None, *,
                   source: str = "DataFrame") -> pd.DataFrame:
    """Check an OHLCV frame and return it canonical: float64 open/high/low/close/volume, index
    ``timestamp`` (a column or the index; see ``columns``).

    ``columns`` maps a field (timestamp, open, high, low, close, volume) to the source column;
    unmapped fields match by name, case-insensitively; ``{"volume": None}`` means no volume
    (zeros), ``{"timestamp": None}`` means use the index. Raises ``ValueError`` naming the row and
    the rule: missing column, non-numeric value, NaN/inf, missing or unparseable timestamp,
    non-increasing timestamp, non-positive price, high < low, open/close outside [low, high],
    negative volume, no bar with high > low (no volatility). Leading bars with high == low
    are dropped with a ``UserWarning`` naming them (they have no volatility unit).
    """
    return _validate(df, columns, source, csv_lines=False)


def _validate(df: pd.DataFrame, columns: Mapping[str, str | None] | None, source: str,
              csv_lines: bool, time_format: str | None = None) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    columns = dict(columns or {})
    unknown = sorted(set(columns) - {"timestamp", *OHLCV_FIELDS})
    if unknown:
        raise ValueError(f"columns mapping has unknown fields {unknown}; "
                         f"known: {['timestamp', *OHLCV_FIELDS]}")
    names = {f: _resolve(df, f, columns, source) for f in ("timestamp", *OHLCV_FIELDS)}

    ts_col = names["timestamp"]
    if ts_col is None and "timestamp" not in columns and (
            isinstance(df.index, pd.RangeIndex) or pd.api.types.is_integer_dtype(df.index)):
        warnings.warn(f"{source}: no time column (looked for {list(TIMESTAMP_NAMES)}, any "
                      f"case; present: {[str(c) for c in df.columns]}); the row order is taken "
                      "as time. Name the column with columns={'timestamp': ...} (Hydra: "
                      "market.timestamp=NAME)", stacklevel=3)
    raw_ts = pd.Series(df.index if ts_col is None else df[ts_col]).reset_index(drop=True)
    rows = _Rows(df, raw_ts, source, csv_lines, ts_from_index=ts_col is None)
    ts = rows.ts = _timestamps(raw_ts.rename("timestamp"), rows, time_format)
    out = _numeric_fields(df, names, rows)
    _check_values(rows, out, ts)

    frame = pd.DataFrame(out, index=pd.Index(ts, name="timestamp"))
    o, h, lo, c = (out[f] for f in PRICE_FIELDS)
    first = _first_bar_with_range(rows, o, h, lo, c)
    if first:
        warnings.warn(
            f"{source}: dropped the {first} leading row(s) without a price range, "
            f"{rows.ref(0)} to {rows.ref(first - 1)}: each has high == low (in float32), so no "
            "volatility unit exists before the first bar with a range (it would be 0, and "
            f"TP/SL distances are multiples of it); the data starts at {rows.ref(first)}",
            stacklevel=3)
        frame = frame.iloc[first:]
    frame.attrs.update({_ATTR_SOURCE: source, _ATTR_CSV: csv_lines,
                        _ATTR_ROWS: (first, len(df) - first)})
    return frame


def _numeric_fields(df: pd.DataFrame, names: Mapping[str, str | None],
                    rows: _Rows) -> dict[str, np.ndarray]:
    """float64 arrays of the OHLCV fields (zeros for an unmapped volume); a value that is not a
    number is refused naming its row and column."""
    out = {}
    for field in OHLCV_FIELDS:
        col = names[field]
        if col is None:
            out[field] = np.zeros(len(df))
            continue
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce")
        _fail(rows, (values.isna() & raw.notna()).to_numpy(),
              lambda i, raw=raw, col=col, f=field: f"{f} (column {col!r}) value {raw.iloc[i]!r} "
                                          "is not a number")
        out[field] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _check_values(rows: _Rows, out: Mapping[str, np.ndarray], ts: pd.Series) -> None:
    """The row rules of ``validate_ohlcv`` (NaN/inf, timestamps, prices, float32 range, bars)."""
    for field in OHLCV_FIELDS:
        x = out[field]
        _fail(rows, np.isnan(x), f"{field} is NaN (rule: no NaN/inf values)")
        _fail(rows, np.isinf(x), lambda i, x=x, f=field: f"{f} is {x[i]} (rule: no NaN/inf values)")

    _fail(rows, ts.isna().to_numpy(), "timestamp is missing (NaT/NaN)")
    if len(ts) > 1:
        not_after = ~(ts > ts.shift(1)).to_numpy(dtype=bool)
        not_after[0] = False
        _fail(rows, not_after, lambda i: f"timestamp is not after the previous row's "
                                         f"({ts.iloc[i - 1]}) (rule: strictly increasing "
                                         "timestamps)")

    o, h, lo, c, v = (out[f] for f in OHLCV_FIELDS)
    for field in PRICE_FIELDS:
        x = out[field]
        _fail(rows, x <= 0, lambda i, x=x, f=field: f"{f} = {x[i]} is not positive "
                                                    "(rule: prices > 0)")
    for field in OHLCV_FIELDS:       # MarketData is float32: no overflow to inf, no underflow
        x = out[field]
        _fail(rows, np.abs(x) > _F32.max,
              lambda i, x=x, f=field: f"{f} = {x[i]} overflows float32 (max {_F32.max:.4g}); "
                                      "rescale the data (rule: values within float32 range)")
        tiny = (x > 0) & (x < _F32.tiny) if field != "volume" else np.zeros(len(x), bool)
        _fail(rows, tiny,
              lambda i, x=x, f=field: f"{f} = {x[i]} underflows float32 (smallest normal "
                                      f"{_F32.tiny:.4g}); rescale the data (rule: values "
                                      "within float32 range)")
    _fail(rows, h < lo, lambda i: f"high = {h[i]} < low = {lo[i]} (rule: high >= low)")
    for field, x in (("open", o), ("close", c)):
        _fail(rows, (x < lo) | (x > h),
              lambda i, x=x, f=field: f"{f} = {x[i]} outside [low, high] = [{lo[i]}, {h[i]}] "
                                      f"(rule: low <= {f} <= high)")
    _fail(rows, v < 0, lambda i: f"volume = {v[i]} is negative (rule: volume >= 0)")


# where a validated frame came from (names file and rows in ``to_windows``' errors):
# the source, whether it is a CSV, and (first data row, number of rows) of the frame
_ATTR_SOURCE, _ATTR_CSV, _ATTR_ROWS = "tpfl_source", "tpfl_csv_lines", "tpfl_rows"


def _first_bar_with_range(rows: _Rows, o: np.ndarray, h: np.ndarray, lo: np.ndarray,
                          c: np.ndarray) -> int:
    """Position of the first bar with high > low in float32 (``MarketData``'s precision);
    data without one is refused (no volatility unit can be computed)."""
    ranged = h.astype(np.float32) > lo.astype(np.float32)
    if ranged.any():
        return int(np.argmax(ranged))
    n = len(h)
    prices = np.concatenate([o, h, lo, c]).astype(np.float32)
    what = (f"constant prices (open = high = low = close = {prices[0]:g} on all {n} rows)"
            if (prices == prices[0]).all() else f"high == low on all {n} rows")
    raise ValueError(f"{rows.source}: every bar has zero range, {what}: no volatility (the "
                     "volatility unit, an average true range, is 0 everywhere); expected bars "
                     "with high > low (in float32). A close-only series needs real high/low "
                     "prices")


def _frame_ref(frame: pd.DataFrame, pos: int) -> str:
    """``<file>: row i (file line .., timestamp ..)`` of row ``pos`` of a validated frame (the
    file's row numbers while the frame is as ``read_ohlcv`` returned it), else the frame row."""
    ts = frame.index[pos]
    src = frame.attrs.get(_ATTR_SOURCE)
    first, n = frame.attrs.get(_ATTR_ROWS, (0, -1))     # (first data row, rows kept)
    if src is not None and n == len(frame):
        r = first + pos
        line = f"file line {r + 2}, " if frame.attrs.get(_ATTR_CSV) else ""
        return f"{src}: row {r} ({line}timestamp {ts})"
    return f"{src + ': ' if src else ''}frame row {pos} (timestamp {ts})"


def read_ohlcv(path: str | os.PathLike, columns: Mapping[str, str | None] | None = None, *,
               file_format: Literal["csv", "parquet"] | None = None,
               index_col: int | str | None = None, sep: str = ",",
               time_format: str | None = None) -> pd.DataFrame:
    """Read a CSV or parquet file and return the validated canonical frame (``validate_ohlcv``).

    The format comes from the suffix unless ``file_format`` is given. CSV: ``sep`` and
    ``index_col`` are passed to ``pandas.read_csv``; without ``index_col``, an unnamed first
    column (what ``DataFrame.to_csv`` writes for the index) is taken as the index. A missing,
    empty, binary or unparseable file, or one without data rows, is a ``ValueError`` naming it.
    ``time_format``: the strftime format of the time column (default: inferred).
    """
    path = os.fspath(path)
    fmt = file_format or _format_of(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file" + (" (a directory)" if os.path.isdir(path)
                                                    else ""))
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        elif fmt == "csv":
            df = pd.read_csv(path, index_col=index_col, sep=sep)
            if (index_col is None and len(df.columns)
                    and str(df.columns[0]).startswith("Unnamed: 0")):
                df = df.set_index(df.columns[0]).rename_axis(None)
        else:
            raise ValueError(f"unknown file_format {fmt!r}; use 'csv' or 'parquet'")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; expected a header line and data rows "
                         "of OHLCV bars") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text CSV file (byte {e.start} cannot be decoded as "
                         f"{e.encoding}); expected UTF-8 text with one bar per line") from None
    except (pd.errors.ParserError, OSError, ValueError, TypeError) as e:
        if isinstance(e, ValueError) and str(e).startswith("unknown file_format"):
            raise
        raise ValueError(f"{path}: cannot read as {fmt} ({type(e).__name__}: "
                         f"{str(e).strip()[:300]})") from None
    if len(df) == 0:
        raise ValueError(f"{path}: no data rows (columns {[str(c) for c in df.columns]}); "
                         "expected at least one OHLCV bar")
    if fmt == "csv" and len(df.columns) == 1 and sep not in str(df.columns[0]):
        others = [s for s in (";", "\t", "|", ",") if s != sep and s in str(df.columns[0])]
        if others:
            raise ValueError(f"{path}: one column {str(df.columns[0])!r} with separator "
                             f"{sep!r}; the file looks {others[0]!r}-separated (pass sep="
                             f"{others[0]!r}; Hydra: market.sep='{others[0]}')")
    return _validate(df, columns, path, csv_lines=fmt == "csv", time_format=time_format)


def _format_of(path: str) -> str:
    low = path.lower()
    if low.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(_CSV_SUFFIXES):
        return "csv"
    raise ValueError(f"{path}: cannot tell the format from the suffix; pass file_format="
                     "'csv' or 'parquet'")


def window_starts(n_rows: int, window_len: int, stride: int | None = None,
                  align: Literal["start", "end"] = "start") -> np.ndarray:
    """First row of each window of ``window_len`` rows every ``stride`` rows (default: no overlap).

    ``align="start"`` begins at row 0 (rows after the last full window are unused);
    ``align="end"`` makes the last window end at the last row (leading rows are unused).
    """
    stride = window_len if stride is None else stride
    if window_len < 1 or stride < 1:
        raise ValueError(f"window_len and stride must be >= 1, got {window_len} and {stride}")
    if n_rows < window_len:
        raise ValueError(f"too few rows for one window: {n_rows} rows < window_len {window_len}")
    if align not in ("start", "end"):
        raise ValueError(f"align must be 'start' or 'end', got {align!r}")
    starts = np.arange(0, n_rows - window_len + 1, stride)
    if align == "end":
        starts = starts + (n_rows - window_len - starts[-1])
    return starts


def to_windows(frame: pd.DataFrame, window_len: int, stride: int | None = None, *,
               align: Literal["start", "end"] = "start", symbol_id: int = 0,
               vol_span: int = DEFAULT_VOL_SPAN) -> MarketData:
    """Cut a validated canonical frame into ``MarketData`` of shape ``[n_windows, window_len]``.

    Windows are cut per ``window_starts``; ``vol_unit`` restarts at each window's first bar;
    ``regime`` is -1 and ``trend`` 0 (unknown); every window gets ``symbol_id``. A window whose
    ``vol_unit`` is 0 on some bar (it starts on a bar with high == low, or a long stretch without
    price movement makes the average underflow float32) is a ``ValueError`` naming the file,
    row and timestamp: the env refuses such a market.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"to_windows: frame = {type(frame).__name__}; expected the pandas "
                        "DataFrame of validate_ohlcv/read_ohlcv")
    missing = [f for f in OHLCV_FIELDS if f not in frame.columns]
    if missing:
        raise ValueError(f"to_windows needs a frame from validate_ohlcv/read_ohlcv; missing "
                         f"columns {missing}, present: {[str(c) for c in frame.columns]}")
    starts = window_starts(len(frame), window_len, stride, align)
    idx = starts[:, None] + np.arange(window_len)[None, :]
    cut = {f: frame[f].to_numpy(np.float64)[idx] for f in OHLCV_FIELDS}
    h32, lo32 = cut["high"].astype(np.float32), cut["low"].astype(np.float32)
    flat = ~(h32[:, 0] > lo32[:, 0])
    if flat.any():
        w = int(np.argmax(flat))
        raise ValueError(
            f"{_frame_ref(frame, int(starts[w]))}: window {w} (of {len(starts)}, "
            f"window_len {window_len}) starts on a bar with high == low = {h32[w, 0]:g}, so its "
            "volatility unit is 0 until the first bar with a range (vol_unit restarts at each "
            "window's first bar); expected every window to start on a bar with high > low: "
            "choose another stride / align / window_len, or cut the data there")
    md = make_market_data(cut["open"], cut["high"], cut["low"], cut["close"],
                          volume=cut["volume"], symbol_id=np.full(len(starts), symbol_id),
                          vol_span=vol_span)
    vu = np.asarray(md.vol_unit)
    bad = ~(vu > 0)
    if bad.any():
        w, b = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{_frame_ref(frame, int(starts[w]) + b)}: the volatility unit of window {w} is "
            f"{vu[w, b]:g} at its bar {b}: a long stretch without price movement before it "
            "makes the average true range underflow float32; expected price movement at least "
            "every few hundred bars (remove or shorten the flat stretch)")
    return md


def from_dataframe(df: pd.DataFrame, window_len: int, stride: int | None = None, *,
                   columns: Mapping[str, str | None] | None = None,
                   align: Literal["start", "end"] = "start", symbol_id: int = 0,
                   vol_span: int = DEFAULT_VOL_SPAN) -> MarketData:
    """Validate an in-memory OHLCV DataFrame and cut it into ``[n_windows, window_len]`` windows."""
    frame = validate_ohlcv(df, columns)
    return to_windows(frame, window_len, stride, align=align, symbol_id=symbol_id,
                      vol_span=vol_span)


def load_ohlcv(path: str | os.PathLike, window_len: int, stride: int | None = None, *,
               columns: Mapping[str, str | None] | None = None,
               file_format: Literal["csv", "parquet"] | None = None,
               index_col: int | str | None = None, align: Literal["start", "end"] = "start",
               symbol_id: int = 0, vol_span: int = DEFAULT_VOL_SPAN) -> MarketData:
    """Read, validate and window a CSV / parquet OHLCV file (``read_ohlcv`` + ``to_windows``)."""
    frame = read_ohlcv(path, columns, file_format=file_format, index_col=index_col)
    try:
        return to_windows(frame, window_len, stride, align=align, symbol_id=symbol_id,
                          vol_span=vol_span)
    except ValueError as e:
        if str(e).startswith(f"{os.fspath(path)}: "):     # already names the file
            raise
        raise ValueError(f"{os.fspath(path)}: {e}") from None
