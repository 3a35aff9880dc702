"""A panel of real series: windows on a common calendar never let a deploy bar be a training bar
(or precede one on another series); unequal lengths and calendars are planned, counted and
warned about, not dropped silently; a malformed file is refused naming file and row before
anything reaches the device."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import jax
import numpy as np
import pandas as pd
import pytest

from tpfl_jax.market import panel
from tpfl_jax.market.specs import PanelMarkets, WalkForwardMarkets
from tpfl_jax.market.types import make_market_data

WINDOW = 4


def _bars(n: int, start: str, freq: str, seed: int, s0: float = 100.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = s0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[s0], close[:-1]])
    hi = np.maximum(open_, close) * (1 + rng.uniform(0.001, 0.01, n))
    lo = np.minimum(open_, close) * (1 - rng.uniform(0.001, 0.01, n))
    idx = pd.date_range(start, periods=n, freq=freq, name="Date")
    return pd.DataFrame({"Open": open_, "High": hi, "Low": lo, "Close": close,
                         "Volume": rng.integers(1, 1000, n)}, index=idx)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Daily A (long), daily B (shorter, later), hourly C (short, inside A and B's span)."""
    d = tmp_path_factory.mktemp("panel")
    specs = {"A": (300, "2020-01-01", "D", 0), "B": (150, "2020-05-01", "D", 1),
             "C": (400, "2020-08-01", "h", 2)}
    out = []
    for sym, (n, start, freq, seed) in specs.items():
        p = d / f"{sym}.csv"
        _bars(n, start, freq, seed).to_csv(p)
        out.append(panel.SeriesFile(str(p)))
    return out


def _plan(series, **kw):
    return panel.plan_windows(series, train_bars=40, deploy_bars=20, window=WINDOW, **kw)


def test_no_deploy_bar_is_a_training_bar_across_every_window(files):
    series = panel.read_panel(files)
    cuts = ["2020-02-15", "2020-06-20", "2020-08-05", "2020-08-10", "2020-09-01", "2020-10-01"]
    plan = _plan(series, num_cycles=6, slots=6, cuts=cuts)
    assert plan.active[:, 2].tolist() == [False, False, True, True, False, False]
    for c in range(6):
        train, deploy = set(), set()
        t_end, d_start = [], []
        for r, s in zip(plan.train_row[c], plan.train_start[c], strict=True):
            ts = series[r].frame.index
            train |= {(int(r), b) for b in range(s, s + 40)}
            t_end.append(ts[s + 39] + (ts[1] - ts[0]))       # the last training bar's end
        for r, s in zip(plan.deploy_row[c], plan.deploy_start[c], strict=True):
            traded = range(s + WINDOW, s + WINDOW + 20)          # history bars are not traded
            deploy |= {(int(r), b) for b in traded}
            d_start.append(series[r].frame.index[s + WINDOW])
        assert not train & deploy                                # same series: no overlap
        assert max(t_end) <= plan.cuts[c] <= min(d_start)        # other series: none earlier
    # the device windows are exactly those bars
    src = panel.panel_source(series, plan)
    spec = PanelMarkets(train_bars=40, deploy_bars=20, window=WINDOW, slots=6, num_cycles=6)
    tr, dep = jax.jit(spec.cycle_markets)(src, jax.random.key(0), 2)
    for j in range(6):
        r, s = int(plan.train_row[2, j]), int(plan.train_start[2, j])
        np.testing.assert_allclose(np.asarray(tr.close[j]),
                                   series[r].frame["close"].to_numpy()[s:s + 40], rtol=1e-6)
        assert int(tr.symbol_id[j]) == r == int(dep.symbol_id[j])
        d = int(plan.deploy_start[2, j])
        np.testing.assert_allclose(np.asarray(dep.close[j]),
                                   series[r].frame["close"].to_numpy()[d:d + 24], rtol=1e-6)


def test_series_of_different_lengths_and_calendars(files):
    series = panel.read_panel(files)
    assert [len(s.frame) for s in series] == [300, 150, 400]
    plan = _plan(series, num_cycles=5, slots=6, min_series=2)
    # every cut has >= 2 active series; slots go round-robin over them
    assert (plan.active.sum(1) >= 2).all()
    for c in range(5):
        act = np.flatnonzero(plan.active[c])
        assert sorted(set(plan.train_row[c].tolist())) == act.tolist()
        counts = np.bincount(plan.train_row[c], minlength=3)[act]
        assert counts.max() - counts.min() <= 1
    cov = plan.coverage().set_index("symbol")
    assert (cov["bars"] == [300, 150, 400]).all()
    assert (cov["unused_bars"] >= 0).all() and (cov["unused_bars"] < cov["bars"]).all()
    # the hourly series spans ~17 days: only cuts inside it use it, and windows say so
    w = plan.windows(series)
    hourly = w[w.symbol == "C"]
    assert len(hourly) == plan.active[:, 2].sum()
    assert (hourly.deploy_first >= hourly.cut).all() and (hourly.train_last < hourly.cut).all()
    # a cut where a series has no room: it sits out, and a series never used is a warning
    with pytest.warns(UserWarning, match="C .* is active in no cycle"):
        p2 = _plan(series, num_cycles=2, cuts=["2020-03-01", "2020-04-01"])
    assert not p2.active[:, 2].any() and not p2.active[:, 1].any()
    with pytest.raises(ValueError, match="cycle 0 .*no series"):
        _plan(series, num_cycles=1, cuts=["2019-01-01"])


def test_panel_padding_is_never_read_and_vol_unit_is_causal(files):
    series = panel.read_panel(files)
    md = panel.panel_market(series)
    assert md.close.shape == (3, 400)
    np.testing.assert_allclose(np.asarray(md.close[1, 150:]), series[1].frame["close"].iloc[-1],
                               rtol=1e-6)                       # padding repeats the last bar
    one = make_market_data(*(series[0].frame[f].to_numpy() for f in ("open", "high", "low",
                                                                     "close")))
    np.testing.assert_allclose(np.asarray(md.vol_unit[0, :300]), np.asarray(one.vol_unit[0]),
                               rtol=1e-5)


def test_a_directory_is_every_file_in_it(files):
    import os

    found = panel.files_in(os.path.dirname(files[0].path))
    assert [f.name for f in found] == ["A", "B", "C"]
    with pytest.raises(ValueError, match="not a directory"):
        panel.files_in(files[0].path)


def test_malformed_file_is_refused_naming_file_and_row(tmp_path, files, monkeypatch):
    bad = _bars(60, "2021-01-01", "D", 5)
    bad.iloc[7, 1] = bad.iloc[7, 2] * 0.5                      # high < low on data row 7
    p = tmp_path / "BAD.csv"
    bad.to_csv(p)
    monkeypatch.setattr(panel, "panel_market", lambda *a, **k: pytest.fail("reached device"))
    with pytest.raises(ValueError, match=r"BAD\.csv: row 7 \(file line 9.*high = .* < low"):
        panel.read_panel([files[0], panel.SeriesFile(str(p))])
    with pytest.raises(ValueError, match="symbols \\['A'\\] appear more than once"):
        panel.read_panel([files[0], files[0]])


def test_build_market_refuses_a_malformed_panel_before_compiling(tmp_path, files, monkeypatch):
    from tpfl_jax.config import Config, PanelFileSection
    from tpfl_jax.errors import UserError
    from tpfl_jax.pipelines import markets as pm

    bad = _bars(60, "2021-01-01", "D", 5)
    bad.iloc[3, 3] = float("nan")
    p = tmp_path / "NAN.csv"
    bad.to_csv(p)
    c = Config()
    c.market.source, c.market.train_bars, c.market.deploy_bars = "panel", 40, 20
    c.market.files = [PanelFileSection(path=files[0].path), PanelFileSection(path=str(p))]
    monkeypatch.setattr(panel, "panel_market", lambda *a, **k: pytest.fail("reached device"))
    with pytest.raises(UserError, match=r"NAN\.csv: row 3 \(file line 5.*close is NaN"):
        pm.build_market(c, SimpleNamespace(window=WINDOW, lookback=WINDOW), {})
    c.market.files = [PanelFileSection(path=files[0].path, fee_bps=1.0),
                      PanelFileSection(path=files[1].path, fee_bps=3.0)]
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"fee_bps: per-symbol costs differ"):
        pm.build_market(c, SimpleNamespace(window=WINDOW, lookback=WINDOW), {})
    c.market.block_len = 0.5
    with pytest.raises(UserError, match=r"config.market.block_len = 0.5; expected a mean block"):
        pm.build_market(c, SimpleNamespace(window=WINDOW, lookback=WINDOW), {})
    c.market.source, c.market.train_source = "synthetic", "bootstrap"
    with pytest.raises(UserError, match=r"train_source = 'bootstrap': applies to csv and panel"):
        pm.build_market(c, SimpleNamespace(window=WINDOW, lookback=WINDOW), {})


def test_close_only_series_and_missing_rows(tmp_path):
    p = tmp_path / "WTI.csv"
    p.write_text("Date,PRICE\n2020-01-01,10\n2020-01-02,11\n2020-01-03,.\n2020-01-06,10.5\n"
                 "2020-01-07,10.5\n2020-01-08,12\n")
    f = panel.SeriesFile(str(p), columns={"close": "PRICE", "timestamp": "Date"},
                         close_only=True)
    with pytest.raises(ValueError, match=r"WTI\.csv: row 2 \(file line 4.*not a number|NaN"):
        panel.read_series(f)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = panel.read_series(panel.SeriesFile(str(p), columns=f.columns, close_only=True,
                                               drop_missing=True))
    msgs = " ".join(str(x.message) for x in w)
    assert "dropped 1 row(s) with a missing close" in msgs and "file line 4" in msgs
    fr = s.frame                      # the first bar (open == close) has no range: dropped
    assert fr["close"].tolist() == [11, 10.5, 10.5, 12]
    assert fr["open"].tolist() == [10, 11, 10.5, 10.5]
    assert (fr["high"] == np.maximum(fr["open"], fr["close"])).all()
    assert (fr["low"] == np.minimum(fr["open"], fr["close"])).all()


def test_one_csv_plan_deploys_where_walk_forward_deploys(files):
    s = panel.read_panel(files[:1])[0]
    plan = panel.walk_forward_plan(s, 40, 20, WINDOW, num_cycles=3)
    src = panel.panel_source([s], plan)
    spec = PanelMarkets(train_bars=40, deploy_bars=20, window=WINDOW, slots=1, num_cycles=3)
    wf = WalkForwardMarkets(train_bars=40, deploy_bars=20, window=WINDOW)
    f, g = jax.jit(spec.cycle_markets), jax.jit(wf.cycle_markets)
    for c in range(3):
        a = f(src, jax.random.key(0), c)
        b = g(src.market, jax.random.key(0), c)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(np.asarray(x.close), np.asarray(y.close))
    with pytest.raises(ValueError, match="need >= 320"):
        panel.walk_forward_plan(s, 40, 20, WINDOW, num_cycles=14)


def test_build_market_plans_fits_and_describes_a_panel(files):
    from tpfl_jax.config import Config, PanelFileSection
    from tpfl_jax.pipelines import markets as pm

    c = Config()
    m = c.market
    m.source, m.train_bars, m.deploy_bars, m.train_source = "panel", 40, 20, "garch_fit+bootstrap"
    m.files = [PanelFileSection(path=f.path) for f in files[:2]]
    m.slots, m.n_bars, m.substeps, m.min_series, c.loop.num_cycles = 4, 30, 2, 2, 2
    env = SimpleNamespace(window=WINDOW, lookback=WINDOW,
                          make_params=lambda market, **kw: (market, kw))
    spec, source, (template, kw) = pm.build_market(c, env, {"fee_bps": 9.0})
    assert kw["fee_bps"] == c.env.fee_bps       # one cost for every series: the env's
    assert template.close.shape == (4, 40) and spec.num_cycles == 2
    spec.check(source, 2, WINDOW + 10 + 2)
    with pytest.raises(ValueError, match="planned for 2 cycles"):
        spec.check(source, 3, 10)
    t = pm.market_tables(spec)
    assert set(t) == {"series", "windows", "coverage", "fitted"}
    assert t["series"]["symbol"].tolist() == ["A", "B"] and len(t["fitted"]) == 8
    assert spec.distinct_train_bars(source, WINDOW) is None        # a generator: unlimited
    g1, g2 = (spec.generated(source, jax.random.key(3), 1, 4) for _ in range(2))
    g3 = spec.generated(source, jax.random.key(4), 1, 4)            # a mixture: from the key
    np.testing.assert_array_equal(np.asarray(g1.close), np.asarray(g2.close))
    assert not np.allclose(np.asarray(g1.close), np.asarray(g3.close))
    rows = np.asarray(source.train_row[1]).tolist()      # path i: part i % 2, then slot
    assert np.asarray(g1.symbol_id).tolist() == [rows[0], rows[0], rows[1], rows[1]]
    assert g1.n_intrabar == 0 and set(t["fitted"]["source"]) == {"garch_fit"}
    facts = pm.market_facts(spec, source, jax.random.key(0), n_paths=4)
    assert {"vol", "acf_abs_20", "run_5+"} <= set(facts["fact"])
    assert set(facts["cycle"]) == {0, 1} and set(facts["symbol"]) == {"A", "B"}


def test_time_format_parses_day_first_timestamps(tmp_path):
    df = _bars(30, "2017-01-01 22:00", "h", 3)
    df.index = df.index.strftime("%d.%m.%Y %H:%M:%S.000")
    df.index.name = "Time"
    p = tmp_path / "FX.csv"
    df.to_csv(p)
    s = panel.read_series(panel.SeriesFile(str(p), time_format="%d.%m.%Y %H:%M:%S.%f"))
    assert s.frame.index[0] == pd.Timestamp("2017-01-01 22:00")
    assert s.frame.index[3] == pd.Timestamp("2017-01-02 01:00")
    bad = panel.SeriesFile(str(p), time_format="%Y-%m-%d")
    with pytest.raises(ValueError, match=r"FX\.csv: row 0 .*does not match time_format"):
        panel.read_series(bad)
