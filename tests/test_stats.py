"""Paired statistics: hand-computed paired differences, t-intervals, Holm, MDE, table, plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from tpfl_jax import stats as S


def summary() -> pd.DataFrame:
    ctrl = [1.0, 2.0, 3.0, 4.0]
    arms = {"ctrl": ctrl, "A": [2.0, 4.0, 3.0, 6.0], "B": [0.0, 2.0, 1.0, 3.0], "C": ctrl}
    return pd.DataFrame([{"policy": a, "seed": s, "m": v[s]} for a, v in arms.items()
                         for s in range(4)])


def test_holm_hand_case():
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(S.holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    np.testing.assert_allclose(S.holm_levels([0.01, 0.04, 0.03], 0.95),
                               [1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2])
    # every step rejects: each arm keeps its own step level
    np.testing.assert_allclose(S.holm_levels([0.001, 0.02, 0.01], 0.95),
                               [1 - 0.05 / 3, 1 - 0.05 / 1, 1 - 0.05 / 2])


def test_holm_intervals_exclude_zero_exactly_when_holm_rejects():
    # arms behind a non-rejected step must not show an interval clear of 0 (with the plain
    # step levels, an arm of rank 3 with p < 0.05 but behind a p = 0.03 at rank 2 did)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = 6
        ctrl = rng.normal(0.0, 1.0, n)
        rows = [{"policy": "ctrl", "seed": s, "m": ctrl[s]} for s in range(n)]
        for a in range(5):
            shift = rng.choice([0.0, 0.8, 1.5, 3.0])
            d = rng.normal(shift, 1.0, n)
            rows += [{"policy": f"a{a}", "seed": s, "m": ctrl[s] + d[s]} for s in range(n)]
        t = S.paired_table(pd.DataFrame(rows), "m", ["ctrl"], n_boot=50)
        clear = (t.holm_lo > 0) | (t.holm_hi < 0)
        assert (clear == t.reject).all(), t[["arm", "p", "p_holm", "holm_lo", "holm_hi"]]


def test_paired_table_against_hand_computation():
    t = S.paired_table(summary(), "m", ["ctrl"], level=0.95, n_boot=500)
    assert list(t.columns) == list(S.PAIRED_COLUMNS)
    t = t.set_index("arm")
    # A - ctrl = [1, 2, 0, 2]: mean 1.25, sd sqrt(2.75 / 3)
    sd_a = np.sqrt(2.75 / 3)
    assert t.loc["A", "mean_diff"] == pytest.approx(1.25)
    assert t.loc["A", "sd_diff"] == pytest.approx(sd_a)
    p_a = 2 * st.t.sf(1.25 / (sd_a / 2), 3)
    half = st.t.ppf(0.975, 3) * sd_a / 2
    assert t.loc["A", "p"] == pytest.approx(p_a)
    assert (t.loc["A", "t_lo"], t.loc["A", "t_hi"]) == pytest.approx((1.25 - half, 1.25 + half))
    # B - ctrl = [-1, 0, -2, -1]: mean -1, sd sqrt(2 / 3)
    sd_b = np.sqrt(2 / 3)
    p_b = 2 * st.t.sf(1.0 / (sd_b / 2), 3)
    assert t.loc["B", "p"] == pytest.approx(p_b)
    # C is the control itself per seed: zero differences, p = 1
    assert (t.loc["C", "mean_diff"], t.loc["C", "p"]) == (0.0, 1.0)
    # Holm over the 3 arms: p_A < p_B < p_C
    assert p_a < p_b
    assert t.loc["A", "p_holm"] == pytest.approx(3 * p_a)
    assert t.loc["B", "p_holm"] == pytest.approx(max(3 * p_a, 2 * p_b))
    assert t.loc["C", "p_holm"] == 1.0
    # A's interval at its Holm step level 1 - 0.05 / 3
    half3 = st.t.ppf(1 - 0.05 / 6, 3) * sd_a / 2
    assert t.loc["A", "holm_lo"] == pytest.approx(1.25 - half3)
    assert t.loc["A", "holm_level"] == pytest.approx(1 - 0.05 / 3)
    assert not t["reject"].any()            # 4 seeds cannot decide here
    # bootstrap interval brackets the mean and lies inside the data's range
    assert t.loc["A", "boot_lo"] <= 1.25 <= t.loc["A", "boot_hi"]
    assert 0.0 <= t.loc["A", "boot_lo"] and t.loc["A", "boot_hi"] <= 2.0
    assert t.loc["A", "mde"] == pytest.approx(S.mde_paired(sd_a, 4))


def test_two_controls_and_a_clear_effect_is_rejected():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 10, 16)             # per-seed common noise cancels in the pairs
    arms = {"fixed_1.0": base, "fixed_0.0": base + 5 + rng.normal(0, 0.5, 16),
            "x": base + np.tile([0.3, -0.3], 8)}       # mean difference exactly 0
    df = pd.DataFrame([{"policy": a, "seed": s, "m": v[s]} for a, v in arms.items()
                       for s in range(16)])
    t = S.paired_table(df, "m", ["fixed_1.0", "fixed_0.0"])
    assert list(t["control"]) == ["fixed_1.0", "fixed_1.0", "fixed_0.0", "fixed_0.0"]
    r = t.set_index(["control", "arm"])
    assert r.loc[("fixed_1.0", "fixed_0.0"), "reject"]
    assert r.loc[("fixed_0.0", "x"), "reject"] and r.loc[("fixed_0.0", "x"), "mean_diff"] < 0
    assert not r.loc[("fixed_1.0", "x"), "reject"]
    with pytest.raises(ValueError, match="control arm 'nope'"):
        S.paired_table(df, "m", ["nope"])
    with pytest.raises(ValueError, match="no column"):
        S.paired_table(df, "pnl", ["fixed_1.0"])


def test_mde_matches_normal_approximation_for_many_seeds_and_grows_for_few():
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert S.mde_paired(1.0, 400) == pytest.approx(z / 20, rel=0.01)
    assert S.mde_paired(1.0, 5) > z / np.sqrt(5)
    assert S.mde_paired(2.0, 16) == pytest.approx(2 * S.mde_paired(1.0, 16))
    assert np.isnan(S.mde_paired(1.0, 1))


def test_plot_and_markdown(tmp_path):
    t = S.paired_table(summary(), "m", ["ctrl", "A"], n_boot=100)
    path = S.plot_paired(t, tmp_path / "paired.png", "m")
    assert path.stat().st_size > 0
    md = S.format_paired(t)
    assert md.count("\n") == 1 + len(t) and "| ctrl | A |" in md
