"""Production TP performance tracker on an embedded SQLite database.

One row per closed trade in ``tp_trades``. Writes are one transaction per call (a batch is all or
nothing), the journal is WAL with ``synchronous=FULL`` by default, so a killed process loses no
committed trade. Aggregates follow docs/design.md ("Tracker aggregates"):

* attempts = closed trades that had a TP (``tp_price`` recorded); hits = exits by TP;
* SQL filters and sums; the rates are ``env.stats.tp_rates`` of those sums (the one definition
  the device code uses too, here in float64): hit rate = hits / attempts, premature exit rate =
  premature exits / attempts, PnL per attempt, the no-edge hit rate
  (``env.stats.no_edge_hit_rate``, registered as an SQL function), 0 without attempts;
* estimated ``avg_r_multiple`` = ``estimated_r_multiple(hit_rate)`` (the seed's ``1 / hit_rate``,
  capped at ``R_CAP``, so finite at zero hits: the same function the device code uses);
* actual R = mean realised R over the attempts.

Timestamps are stored as integer nanoseconds since the epoch (UTC); naive datetimes are UTC.
Trades recorded without an ``exit_time`` are windowed by the time they were recorded.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tpfl_jax.env.stats import (
    EXIT_REASONS,
    R_CAP,
    TPStats,
    estimated_r_multiple,
    make_tp_stats,
    no_edge_hit_rate,
    tp_rates,
)
from tpfl_jax.tracking.checks import (
    check_number,
    check_str,
    short_repr,
    type_error,
    value_error,
)
from tpfl_jax.tracking.sqlite import SqliteStore

SCHEMA_COMPONENT = "tracker"
SCHEMA_VERSION = 1
DEFAULT_DB_ENV = "TPFL_DB"
DEFAULT_DB_PATH = Path("outputs") / "tpfl.db"
CLOSED_EXIT_REASONS = tuple(r for r in EXIT_REASONS if r != "none")
R_SOURCES = ("estimated", "actual")
FEEDBACK_KEYS = ("tp_hit_rate", "avg_r_multiple", "total_attempts", "total_hits",
                 "total_misses", "premature_exit_rate")
ACTUAL_R_KEY = "actual_r_multiple"
# per-trade economics of the TP placement (the ``expectancy`` policy reads them)
EDGE_KEYS = ("pnl_per_trade", "no_edge_hit_rate", "tp_skill")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tp_trades (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    strategy_id      TEXT    NOT NULL,
    symbol           TEXT    NOT NULL,
    entry_time_ns    INTEGER,
    exit_time_ns     INTEGER,
    side             INTEGER NOT NULL CHECK (side IN (-1, 1)),
    entry_price      REAL    NOT NULL,
    exit_price       REAL    NOT NULL,
    tp_price         REAL,
    sl_price         REAL,
    exit_reason      TEXT    NOT NULL,
    hit              INTEGER NOT NULL,
    has_tp           INTEGER NOT NULL,
    r_realised       REAL    NOT NULL,
    r_planned        REAL,
    tp_mult          REAL,
    pnl              REAL,
    mfe              REAL,
    mae              REAL,
    tp_zone_accuracy REAL,
    premature        INTEGER NOT NULL,
    entry_bar        INTEGER,
    exit_bar         INTEGER,
    path             INTEGER,
    symbol_id        INTEGER,
    model_version    TEXT,
    tp_reward_weight REAL,
    recorded_at_ns   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tp_trades_strategy_symbol ON tp_trades (strategy_id, symbol);
"""

# field -> (kind, required). Kinds: str, side, reason, bool, time, int, pos (finite > 0),
# nonneg (finite >= 0), unit (finite in [0, 1]), float (finite).
_FIELDS: dict[str, tuple[str, bool]] = {
    "strategy_id": ("str", True),
    "symbol": ("str", True),
    "side": ("side", True),
    "entry_price": ("pos", True),
    "exit_price": ("pos", True),
    "exit_reason": ("reason", True),
    "r_realised": ("float", True),
    "tp_price": ("pos", False),
    "sl_price": ("pos", False),
    "r_planned": ("pos", False),
    "tp_mult": ("pos", False),
    "pnl": ("float", False),
    "mfe": ("nonneg", False),
    "mae": ("nonneg", False),
    "tp_zone_accuracy": ("unit", False),
    "hit": ("bool", False),
    "premature": ("bool", False),
    "closed": ("bool", False),
    "entry_time": ("time", False),
    "exit_time": ("time", False),
    "entry_bar": ("int", False),
    "exit_bar": ("int", False),
    "path": ("int", False),
    "symbol_id": ("int", False),
    "model_version": ("str", False),
    "tp_reward_weight": ("nonneg", False),
}
_COLUMNS = ("strategy_id", "symbol", "entry_time_ns", "exit_time_ns", "side", "entry_price",
            "exit_price", "tp_price", "sl_price", "exit_reason", "hit", "has_tp", "r_realised",
            "r_planned", "tp_mult", "pnl", "mfe", "mae", "tp_zone_accuracy", "premature",
            "entry_bar", "exit_bar", "path", "symbol_id", "model_version", "tp_reward_weight",
            "recorded_at_ns")
_INSERT = (f"INSERT INTO tp_trades ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")
_KIND_TEXT = {
    "str": "a non-empty string", "side": "+1/-1 or 'long'/'short'",
    "reason": f"one of {CLOSED_EXIT_REASONS} (or its code 1..5)", "bool": "a bool (or 0/1)",
    "time": "a datetime, pandas Timestamp or ISO-8601 string within 1677-09-22..2262-04-11 "
            "(nanoseconds since 1970 in int64)",
    "int": f"an integer in [0, {2**63 - 1}] (SQLite INTEGER)",
    "pos": "a finite number > 0", "nonneg": "a finite number >= 0",
    "unit": "a finite number in [0, 1]", "float": "a finite number",
}


class _FieldError(ValueError):
    def __init__(self, field: str, value: Any, expected: str):
        super().__init__(f"field {field!r} = {short_repr(value)}; expected {expected}")


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NaT or (v is pd.NA)


def _cell_missing(v: Any) -> bool:
    """A DataFrame cell holding pandas' missing value (NaN, NaT, None, pd.NA)."""
    if _is_missing(v):
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    return isinstance(v, np.datetime64) and bool(np.isnat(v))


def _convert(field: str, kind: str, v: Any) -> Any:
    """Convert one present value of ``kind``; raise ``_FieldError`` when it does not fit."""
    bad = _FieldError(field, v, _KIND_TEXT[kind])
    if kind == "str":
        if not isinstance(v, str) or not v.strip():
            raise bad
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _FieldError(field, v, "text encodable as UTF-8 (no lone surrogates)") from None
        return v
    if kind == "side":
        if isinstance(v, str):
            m = {"long": 1, "short": -1}
            if v.lower() not in m:
                raise bad
            return m[v.lower()]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            raise bad
        if v not in (1, -1):
            raise bad
        return int(v)
    if kind == "reason":
        if isinstance(v, str):
            if v not in CLOSED_EXIT_REASONS:
                raise bad
            return v
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            if not 1 <= int(v) < len(EXIT_REASONS):
                raise bad
            return EXIT_REASONS[int(v)]
        raise bad
    if kind == "bool":
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer, float, np.floating)) and v in (0, 1):
            return bool(v)
        raise bad
    if kind == "time":
        if isinstance(v, (str, datetime, np.datetime64, pd.Timestamp)):
            try:
                ts = pd.Timestamp(v)
                if ts is pd.NaT:
                    raise bad
                ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
                return int(ts.as_unit("ns").value)
            except (ValueError, TypeError, OverflowError) as e:   # incl. out of ns bounds
                if e is bad:
                    raise
                raise bad from None
        raise bad
    if kind == "int":
        if isinstance(v, (bool, np.bool_)):
            raise bad
        if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
            v = int(v)
        if not isinstance(v, (int, np.integer)) or v < 0 or int(v) > 2**63 - 1:
            raise bad
        return int(v)
    # numeric kinds
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
        raise bad
    x = float(v)
    if not math.isfinite(x):
        raise bad
    if (kind == "pos" and x <= 0) or (kind == "nonneg" and x < 0) or (
            kind == "unit" and not 0.0 <= x <= 1.0):
        raise bad
    return x


def _normalise(rec: Mapping[str, Any], recorded_at_ns: int) -> tuple:
    """Validate one trade record and return the row tuple for ``_INSERT``."""
    unknown = set(rec) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown, key=repr)}; expected a subset of "
                         f"{sorted(_FIELDS)}")
    v: dict[str, Any] = {}
    for field, (kind, required) in _FIELDS.items():
        raw = rec.get(field)
        if _is_missing(raw):
            if required:
                raise _FieldError(field, raw, _KIND_TEXT[kind] + " (required)")
            v[field] = None
            continue
        v[field] = _convert(field, kind, raw)
    reason = v["exit_reason"]
    hit = reason == "tp"
    if v["closed"] is False:
        raise _FieldError("closed", False, "True: only closed trades can be recorded")
    if v["hit"] is not None and v["hit"] != hit:
        raise _FieldError("hit", v["hit"], f"{hit} (exit_reason is {reason!r})")
    if hit and v["tp_price"] is None:
        raise _FieldError("tp_price", None, "a TP price when exit_reason is 'tp'")
    premature = bool(v["premature"])
    if premature and reason not in ("manual", "time"):
        raise _FieldError("premature", True,
                          f"False for exit_reason {reason!r} (only manual/time exits "
                          "are premature)")
    side, entry = v["side"], v["entry_price"]
    if v["tp_price"] is not None and (v["tp_price"] - entry) * side <= 0:
        raise _FieldError("tp_price", v["tp_price"],
                          f"a price on the profit side of entry {entry} for side {side:+d}")
    if v["sl_price"] is not None and (v["sl_price"] - entry) * side >= 0:
        raise _FieldError("sl_price", v["sl_price"],
                          f"a price on the loss side of entry {entry} for side {side:+d}")
    if None not in (v["entry_time"], v["exit_time"]) and v["exit_time"] < v["entry_time"]:
        raise _FieldError("exit_time", rec.get("exit_time"), "a time >= entry_time")
    if None not in (v["entry_bar"], v["exit_bar"]) and v["exit_bar"] < v["entry_bar"]:
        raise _FieldError("exit_bar", v["exit_bar"], "a bar >= entry_bar")
    return (
        v["strategy_id"], v["symbol"], v["entry_time"], v["exit_time"], side, entry,
        v["exit_price"], v["tp_price"], v["sl_price"], reason, int(hit),
        int(v["tp_price"] is not None), v["r_realised"], v["r_planned"], v["tp_mult"], v["pnl"],
        v["mfe"], v["mae"], v["tp_zone_accuracy"], int(premature), v["entry_bar"],
        v["exit_bar"], v["path"], v["symbol_id"], v["model_version"], v["tp_reward_weight"],
        recorded_at_ns,
    )


def _time_ns(name: str, t: Any, where: str) -> int:
    try:
        return _convert(name, "time", t)
    except _FieldError:
        raise value_error(where, name, t, _KIND_TEXT["time"]) from None


_SYMBOLS_TEXT = "None, a non-empty string or a non-empty list of non-empty strings"


def _symbols_arg(symbol: str | Sequence[str] | None, where: str) -> list[str] | None:
    if symbol is None:
        return None
    if isinstance(symbol, str):
        syms = [symbol]
    elif isinstance(symbol, (list, tuple, set, frozenset, np.ndarray, pd.Index, pd.Series)):
        syms = list(symbol)
    else:
        raise type_error(where, "symbol", symbol, _SYMBOLS_TEXT)
    for i, s in enumerate(syms):
        if not isinstance(s, str):
            name = "symbol" if isinstance(symbol, str) else f"symbol[{i}]"
            raise type_error(where, name, s, "a non-empty string (symbol = "
                             f"{short_repr(symbol)}; expected {_SYMBOLS_TEXT})")
    if not syms or not all(s.strip() for s in syms):
        raise value_error(where, "symbol", symbol, _SYMBOLS_TEXT)
    return syms


def _symbol_map_arg(symbol: Any, where: str) -> Mapping[int, str] | None:
    """``record_trades``' ``symbol`` argument checked: a mapping symbol_id -> name is returned,
    a name or None gives None (the name is a constant field)."""
    if isinstance(symbol, Mapping):
        for k, name in symbol.items():
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
                raise type_error(where, "symbol", symbol, "a symbol name or a mapping "
                                 f"symbol_id (int) -> name; key {short_repr(k)} is not "
                                 "an integer")
            check_str(where, f"symbol[{k!r}]", name)
        return symbol
    if symbol is not None:
        if not isinstance(symbol, str):
            raise type_error(where, "symbol", symbol, "None, a symbol name (non-empty "
                             "string) or a mapping symbol_id (int) -> name")
        check_str(where, "symbol", symbol)
    return None


def _positive_int(name: str, v: Any, where: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise type_error(where, name, v, "an integer >= 1")
    if v < 1:
        raise value_error(where, name, v, "an integer >= 1")
    return int(v)


def _as_records(trades: Any, where: str) -> list[dict[str, Any]]:
    """The trade dicts of ``record_trades``' non-DataFrame input, each checked."""
    expected = ("a pandas DataFrame (one row per closed trade) or a list of trade dicts "
                "(field name -> value)")
    if isinstance(trades, Mapping):
        raise type_error(where, "trades", trades, expected + "; for one trade use "
                         "record_trade(...) or pass [trade]")
    if isinstance(trades, (str, bytes, bytearray)) or not isinstance(trades, Iterable):
        raise type_error(where, "trades", trades, expected)
    records = []
    for i, r in enumerate(trades):
        if isinstance(r, pd.Series):
            r = r.to_dict()
        if not isinstance(r, Mapping):
            raise type_error(where, f"trades[{i}]", r,
                             "a trade dict (field name -> value); trades must be " + expected)
        records.append(dict(r))
    return records


class TPPerformanceTracker(SqliteStore):
    """Closed-trade store and TP aggregates on SQLite (``":memory:"`` for tests).

    Thread-safe (one connection behind a lock). ``synchronous`` is SQLite's durability level for
    WAL commits: ``"FULL"`` (default) survives power loss, ``"NORMAL"`` survives process kills.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *,
                 synchronous: str = "FULL", timeout: float = 30.0) -> None:
        super().__init__(path, synchronous=synchronous, timeout=timeout)
        self._ensure_schema(SCHEMA_COMPONENT, SCHEMA_VERSION, _SCHEMA)
        with self._lock:      # the per-trade formula of env.stats, summed by SQL
            self._conn.create_function(
                "no_edge_hit_rate", 1, lambda r: None if r is None else float(no_edge_hit_rate(r)),
                deterministic=True)

    @property
    def schema_version(self) -> int:
        """The stored tracker schema version."""
        return self.schema_versions()[SCHEMA_COMPONENT]

    # -- writes ------------------------------------------------------------------------------
    def record_trade(self, strategy_id: str, symbol: str, *, side: int | str,
                     entry_price: float, exit_price: float, exit_reason: str | int,
                     r_realised: float, **fields: Any) -> int:
        """Record one closed trade; return its row id. ``fields``: any other tracked field
        (``tp_price``, ``sl_price``, ``r_planned``, ``tp_mult``, ``pnl``, ``mfe``, ``mae``,
        ``tp_zone_accuracy``, ``hit``, ``premature``, ``entry_time``, ``exit_time``,
        ``entry_bar``, ``exit_bar``, ``path``, ``symbol_id``, ``model_version``,
        ``tp_reward_weight``). Raises ``ValueError`` naming the field on bad input."""
        rec = dict(fields, strategy_id=strategy_id, symbol=symbol, side=side,
                   entry_price=entry_price, exit_price=exit_price, exit_reason=exit_reason,
                   r_realised=r_realised)
        try:
            row = _normalise(rec, time.time_ns())
        except ValueError as e:
            raise ValueError(f"record_trade: {e}") from None
        with self._transaction() as cur:
            cur.execute(_INSERT, row)
            return int(cur.lastrowid)

    def record_trades(self, trades: pd.DataFrame | Iterable[Mapping[str, Any]], *,
                      strategy_id: str | None = None,
                      symbol: str | Mapping[int, str] | None = None,
                      model_version: str | None = None,
                      tp_reward_weight: float | None = None,
                      entry_time: Any = None, exit_time: Any = None) -> int:
        """Record a batch of closed trades atomically; return the number of rows written.

        ``trades``: a DataFrame with one row per closed trade (the ``TRADE_KEYS`` columns of a PPO
        evaluation/backtest, ``exit_reason`` as its name or code) or an iterable of dicts. The
        keyword arguments fill a field for every row; ``symbol`` may also map the ``symbol_id``
        column to names. A field given both as a column and an argument is an error. Any bad row
        raises ``ValueError`` naming the row and field, and nothing is written. ``trades`` of
        another kind (a string, a single dict, a number, None) or a bad keyword argument is an
        error naming the argument (``ArgTypeError``, a ``TypeError`` and ``ValueError``, for a
        wrong type).
        """
        where = "record_trades"
        # the arguments first (named as arguments, not as a field of row 0)
        check_str(where, "strategy_id", strategy_id, optional=True)
        check_str(where, "model_version", model_version, optional=True)
        check_number(where, "tp_reward_weight", tp_reward_weight, lo=0, optional=True)
        for name, t in (("entry_time", entry_time), ("exit_time", exit_time)):
            if not _is_missing(t):
                _time_ns(name, t, where)
        symbol_map = _symbol_map_arg(symbol, where)
        if isinstance(trades, pd.DataFrame):
            # pandas' missing value (NaN / NaT / None) in a cell = the field is absent, as a
            # dict row without that key (a required field still has to be there)
            records = [{k: v for k, v in r.items() if not _cell_missing(v)}
                       for r in trades.to_dict("records")]
            labels = list(trades.index)
        else:
            records = _as_records(trades, where)
            labels = list(range(len(records)))
        const = {"strategy_id": strategy_id, "model_version": model_version,
                 "tp_reward_weight": tp_reward_weight, "entry_time": entry_time,
                 "exit_time": exit_time}
        if symbol_map is None:
            const["symbol"] = symbol
        const = {k: v for k, v in const.items() if v is not None}
        now = time.time_ns()
        rows = []
        for i, (label, rec) in enumerate(zip(labels, records, strict=True)):
            where = f"record_trades: row {label!r} (position {i})"
            clash = set(const) & {k for k, v in rec.items() if not _is_missing(v)}
            if clash:
                raise ValueError(f"{where}: field(s) {sorted(clash)} given both as a column and "
                                 "as an argument; expected one of the two")
            rec = {**rec, **const}
            if symbol_map is not None:
                if not _is_missing(rec.get("symbol")):
                    raise ValueError(f"{where}: field 'symbol' given both as a column and as a "
                                     "symbol_id mapping; expected one of the two")
                sid = rec.get("symbol_id")
                try:
                    rec["symbol"] = symbol_map[int(sid)]
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"{where}: field 'symbol_id' = {sid!r}; expected a key of "
                                     f"the symbol mapping {sorted(symbol_map)}") from None
            try:
                rows.append(_normalise(rec, now))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if rows:
            with self._transaction() as cur:
                cur.executemany(_INSERT, rows)
        return len(rows)

    # -- reads -------------------------------------------------------------------------------
    def _select(self, strategy_id: str, symbol: str | Sequence[str] | None, since: Any,
                until: Any, window: timedelta | str | None, last_n: int | None,
                where: str) -> tuple[str, list[Any]]:
        """SQL selecting the chosen trades (a sub-query) and its parameters."""
        check_str(where, "strategy_id", strategy_id)
        conds, params = ["strategy_id = ?"], [strategy_id]
        syms = _symbols_arg(symbol, where)
        if syms is not None:
            conds.append(f"symbol IN ({', '.join('?' for _ in syms)})")
            params += syms
        t = "COALESCE(exit_time_ns, recorded_at_ns)"
        until_ns = _time_ns("until", until, where) if until is not None else None
        if window is not None:
            try:
                w = pd.Timedelta(window)
            except (ValueError, TypeError, OverflowError):
                raise value_error(where, "window", window, "a timedelta or a pandas Timedelta "
                                  "string such as '30D'") from None
            if w is pd.NaT or w <= pd.Timedelta(0):
                raise value_error(where, "window", window, "a positive duration")
            end = until_ns if until_ns is not None else time.time_ns()
            since_ns = end - int(w.value)
            if since is not None:
                since_ns = max(since_ns, _time_ns("since", since, where))
        else:
            since_ns = _time_ns("since", since, where) if since is not None else None
        if since_ns is not None:
            conds.append(f"{t} >= ?")
            params.append(since_ns)
        if until_ns is not None:
            conds.append(f"{t} <= ?")
            params.append(until_ns)
        sql = f"SELECT * FROM tp_trades WHERE {' AND '.join(conds)}"
        if last_n is not None:
            sql += f" ORDER BY {t} DESC, id DESC LIMIT ?"
            params.append(_positive_int("last_n", last_n, where))
        return sql, params

    def _aggregate_all(self, strategy_id, symbol, since, until, window, last_n, where
                       ) -> tuple[int, int, float, int, float, float, float]:
        """(attempts, hits, sum R, premature, mean volatility unit, sum of PnL over the
        attempts, sum over the attempts of the no-edge hit rate: its mean over the attempts
        with a planned R times the attempts)."""
        sql, params = self._select(strategy_id, symbol, since, until, window, last_n, where)
        agg = f"""SELECT COALESCE(SUM(has_tp), 0), COALESCE(SUM(has_tp * hit), 0),
                         COALESCE(SUM(CASE WHEN has_tp = 1 THEN r_realised END), 0.0),
                         COALESCE(SUM(has_tp * premature), 0),
                         AVG(CASE WHEN has_tp = 1 AND tp_mult IS NOT NULL
                                  THEN ABS(tp_price - entry_price) / (tp_mult * entry_price) END),
                         SUM(CASE WHEN has_tp = 1 THEN COALESCE(pnl, 0.0) END),
                         AVG(CASE WHEN has_tp = 1 AND r_planned IS NOT NULL
                                  THEN no_edge_hit_rate(r_planned) END)
                  FROM ({sql})"""
        with self._lock:
            a, h, sr, p, vol, pnl, ne = self._conn.execute(agg, params).fetchone()
        return (int(a), int(h), float(sr), int(p), float(vol or 0.0), float(pnl or 0.0),
                float(ne or 0.0) * int(a))

    def get_strategy_tp_feedback(self, strategy_id: str,
                                 symbol: str | Sequence[str] | None = None,
                                 min_attempts: int = 10, *, r_source: str = "estimated",
                                 since: Any = None, until: Any = None,
                                 window: timedelta | str | None = None,
                                 last_n: int | None = None) -> dict[str, float | int] | None:
        """TP aggregates of one strategy, or ``None`` below ``min_attempts`` attempts.

        Returns ``FEEDBACK_KEYS``, ``ACTUAL_R_KEY`` (mean realised R) and ``EDGE_KEYS`` (mean
        PnL per attempt; mean no-edge hit rate ``1 / (1 + r_planned)``; hit rate minus it).
        ``symbol``: one symbol,
        several (aggregated) or ``None`` (all symbols). ``avg_r_multiple`` is the seed's capped
        ``1 / hit_rate`` (``r_source='estimated'``) or the mean realised R (``'actual'``).
        Selection: exit time in ``[since, until]``, or within ``window`` before ``until``
        (default now), then the ``last_n`` most recent trades.
        """
        where = "get_strategy_tp_feedback"
        min_attempts = _positive_int("min_attempts", min_attempts, where)
        if not isinstance(r_source, str) or r_source not in R_SOURCES:
            raise value_error(where, "r_source", r_source, f"one of {R_SOURCES}")
        attempts, hits, sum_r, premature, _, pnl, no_edge = self._aggregate_all(
            strategy_id, symbol, since, until, window, last_n, where)
        if attempts < min_attempts:
            return None
        rates = {k: float(v) for k, v in tp_rates(
            np.float64(attempts), np.float64(hits), sum_r, premature, pnl, no_edge).items()}
        hit_rate, actual = rates["tp_hit_rate"], rates["actual_r"]
        return {
            "tp_hit_rate": hit_rate,
            "avg_r_multiple": (estimated_r_multiple(hit_rate, R_CAP) if r_source == "estimated"
                               else actual),
            "total_attempts": attempts,
            "total_hits": hits,
            "total_misses": attempts - hits,
            "premature_exit_rate": rates["premature_exit_rate"],
            ACTUAL_R_KEY: actual,
            "pnl_per_trade": rates["pnl_per_trade"],
            "no_edge_hit_rate": rates["no_edge_hit_rate"],
            "tp_skill": hit_rate - rates["no_edge_hit_rate"],
        }

    def get_tp_stats(self, strategy_id: str, symbol: str | Sequence[str] | None = None,
                     min_attempts: int = 10, *, r_source: str = "estimated", since: Any = None,
                     until: Any = None, window: timedelta | str | None = None,
                     last_n: int | None = None) -> TPStats:
        """The same aggregates as a ``TPStats`` pytree for the weight policies (``valid`` False
        below ``min_attempts``); ``volatility`` = mean TP distance / (tp_mult * entry price)."""
        where = "get_tp_stats"
        min_attempts = _positive_int("min_attempts", min_attempts, where)
        if not isinstance(r_source, str) or r_source not in R_SOURCES:
            raise value_error(where, "r_source", r_source, f"one of {R_SOURCES}")
        a, h, sr, p, vol, pnl, ne = self._aggregate_all(strategy_id, symbol, since, until,
                                                        window, last_n, where)
        stats = make_tp_stats(a, h, sr, p, min_attempts=min_attempts, volatility=vol,
                              sum_pnl=pnl, sum_no_edge=ne)
        if r_source == "actual":
            stats = stats.replace(avg_r_multiple=stats.actual_r)
        return stats

    def trades(self, strategy_id: str | None = None,
               symbol: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Recorded trades as a DataFrame (times as UTC Timestamps), in insertion order."""
        conds, params = [], []
        check_str("trades", "strategy_id", strategy_id, optional=True)
        if strategy_id is not None:
            conds.append("strategy_id = ?")
            params.append(strategy_id)
        syms = _symbols_arg(symbol, "trades")
        if syms is not None:
            conds.append(f"symbol IN ({', '.join('?' for _ in syms)})")
            params += syms
        sql = "SELECT * FROM tp_trades" + (f" WHERE {' AND '.join(conds)}" if conds else "")
        with self._lock:
            df = pd.read_sql_query(sql + " ORDER BY id", self._conn, params=params)
        for c in ("entry_time", "exit_time", "recorded_at"):
            df[c] = pd.to_datetime(df.pop(f"{c}_ns"), unit="ns", utc=True)
        for c in ("hit", "has_tp", "premature"):
            df[c] = df[c].astype(bool)
        return df

    def count(self) -> int:
        """Number of recorded trades."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM tp_trades").fetchone()[0])

    def summary(self) -> pd.DataFrame:
        """One row per strategy x symbol x exit reason.

        Columns: ``trades`` (in the group), ``share`` (of the strategy x symbol trades),
        ``mean_r`` (mean realised R in the group), ``premature_rate`` (premature / trades in the
        group), and the strategy x symbol aggregates ``attempts``, ``hit_rate``,
        ``group_premature_rate`` (premature / attempts; both ``env.stats.tp_rates``, 0 without
        attempts).
        """
        sql = """SELECT strategy_id, symbol, exit_reason, COUNT(*) AS trades,
                        AVG(r_realised) AS mean_r, AVG(premature) AS premature_rate,
                        SUM(has_tp) AS attempts_part, SUM(has_tp * hit) AS hits_part,
                        SUM(has_tp * premature) AS premature_part
                 FROM tp_trades GROUP BY strategy_id, symbol, exit_reason
                 ORDER BY strategy_id, symbol, exit_reason"""
        with self._lock:
            df = pd.read_sql_query(sql, self._conn)
        cols = ["strategy_id", "symbol", "exit_reason", "trades", "share", "mean_r",
                "premature_rate", "attempts", "hit_rate", "group_premature_rate"]
        if df.empty:
            return pd.DataFrame(columns=cols)
        g = df.groupby(["strategy_id", "symbol"])
        total = g["trades"].transform("sum")
        attempts = g["attempts_part"].transform("sum")
        df["share"] = df["trades"] / total
        df["attempts"] = attempts
        rates = tp_rates(attempts.to_numpy(np.float64), g["hits_part"].transform("sum"
                                                                                 ).to_numpy(),
                         0.0, g["premature_part"].transform("sum").to_numpy())
        df["hit_rate"] = rates["tp_hit_rate"]
        df["group_premature_rate"] = rates["premature_exit_rate"]
        return df[cols].reset_index(drop=True)

    def tp_distance_recommendations(self, strategy_id: str,
                                    symbol: str | Sequence[str] | None = None, *,
                                    target_hit_rate: float = 0.575, min_trades: int = 20,
                                    tolerance: float = 0.05) -> list[dict[str, Any]]:
        """A TP-distance recommendation per symbol from the tracked MFE distribution.

        MFE is measured in volatility units (``mfe / (|tp - entry| / tp_mult)``). A TP at
        distance ``d`` would have been reached by the trades with ``MFE >= d``, so the distance
        with hit rate ``target_hit_rate`` is the ``1 - target_hit_rate`` quantile of MFE.
        ``scale_factor`` = that distance / the mean current ``tp_mult``; ``direction`` is
        CLOSER / FURTHER / KEEP (within ``tolerance``); ``confidence`` = n / (n + min_trades).
        MFE of TP exits is censored at the TP, so FURTHER recommendations are lower bounds.
        Symbols with fewer than ``min_trades`` usable trades are left out.
        """
        where = "tp_distance_recommendations"
        check_str(where, "strategy_id", strategy_id)
        _symbols_arg(symbol, where)
        target_hit_rate = check_number(where, "target_hit_rate", target_hit_rate, lo=0.0, hi=1.0,
                                       lo_open=True, hi_open=True)
        min_trades = _positive_int("min_trades", min_trades, where)
        tolerance = check_number(where, "tolerance", tolerance, lo=0.0)
        df = self.trades(strategy_id, symbol)
        df = df[df["has_tp"] & df["tp_mult"].notna() & df["mfe"].notna()]
        out = []
        for sym, g in df.groupby("symbol", sort=True):
            if len(g) < min_trades:
                continue
            unit = (g["tp_price"] - g["entry_price"]).abs() / g["tp_mult"]
            mfe_units = (g["mfe"] / unit).to_numpy()
            rec = float(np.quantile(mfe_units, 1.0 - target_hit_rate))
            current = float(g["tp_mult"].mean())
            scale = rec / current
            direction = ("CLOSER" if scale < 1.0 - tolerance else
                         "FURTHER" if scale > 1.0 + tolerance else "KEEP")
            n = len(g)
            out.append({
                "symbol": sym, "direction": direction, "scale_factor": scale,
                "recommended_tp_mult": rec, "current_tp_mult": current,
                "current_hit_rate": float(g["hit"].mean()), "target_hit_rate": target_hit_rate,
                "confidence": n / (n + min_trades), "n_trades": n,
                "reason": (f"MFE {1 - target_hit_rate:.0%} quantile {rec:.2f} vol units vs "
                           f"current TP {current:.2f}: move TPs {direction.lower()} "
                           f"(x{scale:.2f}) for a {target_hit_rate:.0%} hit rate"),
            })
        return out


_TRACKER: TPPerformanceTracker | None = None
_TRACKER_LOCK = threading.Lock()


def default_db_path() -> Path:
    """``$TPFL_DB`` if set, else ``outputs/tpfl.db`` (relative to the working directory)."""
    env = os.environ.get(DEFAULT_DB_ENV)
    return Path(env) if env else DEFAULT_DB_PATH


def get_tp_tracker(path: str | os.PathLike[str] | None = None) -> TPPerformanceTracker:
    """The process-wide tracker, opened at ``path`` (default ``default_db_path()``) on first use.

    Asking for a different path while one is open raises ``ValueError``; call
    ``reset_tp_tracker()`` first.
    """
    global _TRACKER
    if path is not None and (isinstance(path, (bytes, bytearray))
                             or not isinstance(path, (str, os.PathLike))):
        raise type_error("get_tp_tracker", "path", path, "None, a database file path (str or "
                         "os.PathLike) or ':memory:'")
    with _TRACKER_LOCK:
        want = str(os.fspath(path)) if path is not None else None
        if _TRACKER is None:
            _TRACKER = TPPerformanceTracker(want if want is not None else default_db_path())
        elif want is not None and want != _TRACKER.path:
            raise ValueError(f"get_tp_tracker: the process tracker is open at {_TRACKER.path!r}, "
                             f"not {want!r}; call reset_tp_tracker() first")
        return _TRACKER


def reset_tp_tracker() -> None:
    """Close and forget the process-wide tracker."""
    global _TRACKER
    with _TRACKER_LOCK:
        if _TRACKER is not None:
            _TRACKER.close()
        _TRACKER = None


def get_strategy_tp_feedback(strategy_id: str, symbol: str | Sequence[str] | None = None,
                             min_attempts: int = 10, **kwargs: Any) -> dict[str, Any] | None:
    """``get_tp_tracker().get_strategy_tp_feedback(...)``."""
    return get_tp_tracker().get_strategy_tp_feedback(strategy_id, symbol, min_attempts, **kwargs)
