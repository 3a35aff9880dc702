"""OHLCV loader: real files shipped by `backtesting`, windows, parquet, and every bad-data rule."""

from importlib import resources

import numpy as np
import pandas as pd
import pytest

from tpfl_jax.market import (
    from_dataframe,
    load_ohlcv,
    read_ohlcv,
    to_windows,
    validate_ohlcv,
    window_starts,
)

BT = resources.files("backtesting") / "test"
GOOG = str(BT / "GOOG.csv")  # header: ",Open,High,Low,Close,Volume"; daily, 2148 rows
EURUSD = str(BT / "EURUSD.csv")  # same layout, hourly, 5000 rows
COLS = ["Open", "High", "Low", "Close", "Volume"]


def pandas_reference(path: str) -> pd.DataFrame:
    return pd.read_csv(path, index_col=0, parse_dates=True)


def test_goog_windows_equal_file_values():
    ref = pandas_reference(GOOG)
    md = load_ohlcv(GOOG, window_len=100, stride=50, symbol_id=4)
    n_windows = 1 + (len(ref) - 100) // 50
    assert len(ref) == 2148 and md.close.shape == (n_windows, 100) == (41, 100)
    for field, col in zip(("open", "high", "low", "close", "volume"), COLS, strict=True):
        expected = np.stack([ref[col].to_numpy()[s:s + 100] for s in range(0, 50 * 41, 50)])
        np.testing.assert_array_equal(np.asarray(getattr(md, field)), expected.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(md.symbol_id), np.full(41, 4))
    assert (np.asarray(md.regime) == -1).all() and (np.asarray(md.trend) == 0).all()
    assert (np.asarray(md.vol_unit) > 0).all()


def test_goog_frame_has_parsed_timestamps():
    frame = read_ohlcv(GOOG)
    ref = pandas_reference(GOOG)
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert frame.index.name == "timestamp"
    assert pd.api.types.is_datetime64_any_dtype(frame.index)
    np.testing.assert_array_equal(frame.index.to_numpy(), ref.index.to_numpy())
    np.testing.assert_array_equal(frame["close"].to_numpy(), ref["Close"].to_numpy())


def test_eurusd_explicit_mapping_and_align_end():
    ref = pandas_reference(EURUSD)
    cols = {"timestamp": None, **{c.lower(): c for c in COLS}}
    md = load_ohlcv(EURUSD, window_len=480, columns=cols, index_col=0, align="end", symbol_id=2)
    assert len(ref) == 5000 and md.close.shape == (10, 480)
    # align="end": the last window ends on the file's last row
    np.testing.assert_array_equal(np.asarray(md.close[-1]),
                                  ref["Close"].to_numpy()[-480:].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(md.open[0]),
                                  ref["Open"].to_numpy()[200:680].astype(np.float32))
    assert (np.asarray(md.symbol_id) == 2).all()


def test_window_starts():
    np.testing.assert_array_equal(window_starts(10, 4), [0, 4])
    np.testing.assert_array_equal(window_starts(10, 4, 3), [0, 3, 6])
    np.testing.assert_array_equal(window_starts(10, 4, 3, align="end"), [0, 3, 6])
    np.testing.assert_array_equal(window_starts(11, 4, 4, align="end"), [3, 7])
    np.testing.assert_array_equal(window_starts(4, 4), [0])
    with pytest.raises(ValueError, match="stride must be >= 1"):
        window_starts(10, 4, 0)


def test_parquet_round_trip(tmp_path):
    frame = read_ohlcv(GOOG)
    path = tmp_path / "goog.parquet"
    frame.to_parquet(path)
    back = read_ohlcv(path)
    pd.testing.assert_frame_equal(back, frame)
    a = load_ohlcv(path, window_len=256)
    b = load_ohlcv(GOOG, window_len=256)
    np.testing.assert_array_equal(np.asarray(a.close), np.asarray(b.close))
    np.testing.assert_array_equal(np.asarray(a.volume), np.asarray(b.volume))
    # a timestamp column (not the index) in parquet, under another name
    frame.reset_index().rename(columns={"timestamp": "Date"}).to_parquet(tmp_path / "c.parquet")
    c = read_ohlcv(tmp_path / "c.parquet", columns={"timestamp": "Date"})
    pd.testing.assert_frame_equal(c, frame)


def test_from_dataframe_and_no_volume():
    ref = pandas_reference(GOOG).iloc[:50].drop(columns="Volume")
    with pytest.raises(ValueError, match=r"missing column 'volume'"):
        from_dataframe(ref, 10)
    md = from_dataframe(ref, 10, stride=5, columns={"volume": None})
    assert md.close.shape == (9, 10)
    assert (np.asarray(md.volume) == 0).all()
    np.testing.assert_array_equal(np.asarray(md.high[1]),
                                  ref["High"].to_numpy()[5:15].astype(np.float32))


def test_timestamp_column_and_plain_index():
    df = pandas_reference(GOOG).iloc[:20].reset_index(names="time")
    df.columns = ["Timestamp", "open", "HIGH", "low", "close", "volume"]  # case-insensitive
    frame = validate_ohlcv(df)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert frame.index[0] == pd.Timestamp("2004-08-19")
    # a frame without any timestamp: the (increasing) index stands in for it
    no_ts = df.drop(columns="Timestamp")
    with pytest.warns(UserWarning, match="no time column"):     # said, not silent
        assert list(validate_ohlcv(no_ts).index) == list(range(20))


def test_strings_parsed_and_tz_aware():
    df = pandas_reference(GOOG).iloc[:5]
    df.index = df.index.tz_localize("UTC")
    assert validate_ohlcv(df).index.tz is not None
    df2 = df.reset_index(names="ts")
    df2["ts"] = ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"]
    assert validate_ohlcv(df2, {"timestamp": "ts"}).index[3] == pd.Timestamp("2020-01-06")


# ---- bad data: every rule, with the row and the rule named ---------------------------------

BAD_ROW = 4


def small() -> pd.DataFrame:
    df = pandas_reference(GOOG).iloc[:10].copy()
    df["Volume"] = df["Volume"].astype(float)
    return df


def _set(df, col, value):
    df.iloc[BAD_ROW, df.columns.get_loc(col)] = value
    return df


def _ts(df, value):
    idx = df.index.to_list()
    idx[BAD_ROW] = value
    df.index = pd.Index(idx)
    return df


BAD_CASES = {
    "nan": (lambda d: _set(d, "Close", np.nan), r"close is NaN \(rule: no NaN/inf values\)"),
    "inf": (lambda d: _set(d, "High", np.inf), r"high is inf \(rule: no NaN/inf values\)"),
    "neg_inf_volume": (lambda d: _set(d, "Volume", -np.inf), r"volume is -inf"),
    "duplicate_ts": (lambda d: _ts(d, d.index[BAD_ROW - 1]),
                     r"timestamp is not after the previous row's \(2004-08-24.*"
                     r"strictly increasing"),
    "decreasing_ts": (lambda d: _ts(d, pd.Timestamp("2004-01-01")),
                      r"not after the previous row's.*strictly increasing"),
    "missing_ts": (lambda d: _ts(d, pd.NaT), r"timestamp is missing"),
    "high_lt_low": (lambda d: _set(_set(d, "High", 90.0), "Low", 95.0),
                    r"high = 90.0 < low = 95.0 \(rule: high >= low\)"),
    "open_above_high": (lambda d: _set(d, "Open", 1000.0),
                        r"open = 1000.0 outside \[low, high\].*rule: low <= open <= high"),
    "close_below_low": (lambda d: _set(d, "Close", 1.0),
                        r"close = 1.0 outside \[low, high\].*rule: low <= close <= high"),
    "zero_price": (lambda d: _set(d, "Low", 0.0),
                   r"low = 0.0 is not positive \(rule: prices > 0\)"),
    "negative_price": (lambda d: _set(_set(_set(_set(d, "Low", -2.0), "Open", -1.0), "Close", -1.0),
                                      "High", -0.5),
                       r"open = -1.0 is not positive"),
    "negative_volume": (lambda d: _set(d, "Volume", -5.0),
                        r"volume = -5.0 is negative \(rule: volume >= 0\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_names_row_and_rule(case):
    corrupt, rule = BAD_CASES[case]
    df = corrupt(small())
    with pytest.raises(ValueError, match=rule) as err:
        from_dataframe(df, window_len=5)
    msg = str(err.value)
    assert msg.startswith(f"DataFrame: row {BAD_ROW} (timestamp "), msg
    if case not in ("missing_ts", "decreasing_ts", "duplicate_ts"):
        assert "timestamp 2004-08-25" in msg, msg


def test_non_numeric_value():
    df = small()
    df["Open"] = df["Open"].astype(object)
    df = _set(df, "Open", "abc")
    rule = r"row 4 .*open \(column 'Open'\) value 'abc' is not a number"
    with pytest.raises(ValueError, match=rule):
        validate_ohlcv(df)


def test_unparseable_timestamp():
    df = small().reset_index(names="ts")
    df["ts"] = df["ts"].astype(str)
    df.loc[BAD_ROW, "ts"] = "not a date"
    with pytest.raises(ValueError, match=r"row 4 .*unparseable timestamp 'not a date'"):
        validate_ohlcv(df, {"timestamp": "ts"})


def test_first_of_several_bad_rows_and_index_label():
    df = small().reset_index(names="ts")
    df.index = [f"r{i}" for i in range(len(df))]
    df.loc["r6", "High"] = 1.0
    df.loc["r2", "High"] = 1.0
    with pytest.raises(ValueError, match=r"row 2 \(index 'r2', timestamp 2004-08-23 00:00:00\): "
                                         r"high = 1.0 < low .*\[first of 2 rows"):
        validate_ohlcv(df, {"timestamp": "ts"})


def test_missing_column_lists_present():
    df = small().drop(columns="Close")
    with pytest.raises(ValueError, match=r"missing column 'close'; present columns: "
                                         r"\['Open', 'High', 'Low', 'Volume'\]"):
        from_dataframe(df, 5)
    with pytest.raises(ValueError, match=r"missing column 'Px' \(mapped to 'close'\)"):
        from_dataframe(small(), 5, columns={"close": "Px"})
    with pytest.raises(ValueError, match=r"unknown fields \['adj_close'\]"):
        from_dataframe(small(), 5, columns={"adj_close": "Close"})


def test_too_few_rows():
    with pytest.raises(ValueError, match=r"too few rows for one window: 10 rows < window_len 11"):
        from_dataframe(small(), window_len=11)
    with pytest.raises(ValueError, match=r"too few rows for one window: 2148 rows < window_len "):
        load_ohlcv(GOOG, window_len=3000)


def test_csv_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    small().pipe(_set, "Low", 200.0).to_csv(path)
    with pytest.raises(ValueError) as err:
        load_ohlcv(path, window_len=5)
    msg = str(err.value)
    assert msg.startswith(f"{path}: row 4 (file line 6, timestamp 2004-08-25"), msg
    assert "high" in msg and "low = 200.0" in msg


def test_to_windows_needs_canonical_frame():
    with pytest.raises(ValueError, match="missing columns"):
        to_windows(small(), 5)


def test_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="file_format"):
        read_ohlcv(tmp_path / "x.dat")
