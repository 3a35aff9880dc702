"""Paired statistics: hand-computed paired differences, t-intervals, Holm, MDE, table, plot;
Holm / t / power against statsmodels and scipy; simultaneous-interval coverage by simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW

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
        # a simultaneous interval clear of 0 implies Holm's rejection (p <= alpha / m)
        s_clear = (t.simul_lo > 0) | (t.simul_hi < 0)
        assert not (s_clear & ~t.reject).any(), t[["arm", "p", "simul_lo", "simul_hi"]]


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
    # the MDE at the level Holm's first step / Bonferroni uses: alpha / m = 0.05 / 3
    assert t.loc["A", "mde_alpha"] == pytest.approx(0.05 / 3)
    assert t.loc["A", "mde"] == pytest.approx(S.mde_paired(sd_a, 4, 0.05 / 3))
    # simultaneous intervals at 1 - 0.05 / 3 for every arm (Bonferroni, m = 3)
    assert (t["m"] == 3).all() and (t["family_level"] == 0.95).all()
    assert t.loc["B", "simul_level"] == pytest.approx(1 - 0.05 / 3)
    half_b = st.t.ppf(1 - 0.05 / 6, 3) * sd_b / 2
    assert (t.loc["B", "simul_lo"], t.loc["B", "simul_hi"]) == pytest.approx((-1 - half_b,
                                                                              -1 + half_b))


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
    # a run whose only arm is the control has no paired rows: the plot still draws
    assert S.plot_paired(t.iloc[:0], tmp_path / "none.png", "m").stat().st_size > 0


def test_holm_matches_statsmodels_and_ties_share_levels(monkeypatch):
    import gc

    # statsmodels' Holm branch runs gc.collect() on every call (~0.1 s with jax loaded)
    monkeypatch.setattr(gc, "collect", lambda *a: 0)
    rng = np.random.default_rng(1)
    for _ in range(300):
        p = rng.choice([0.001, 0.004, 0.01, 0.0125, 0.02, 0.03, 0.2, 0.6], rng.integers(1, 7))
        p = np.where(rng.random(len(p)) < 0.1, np.nan, p)         # some arms without a test
        ok = np.isfinite(p)
        adj, lev = S.holm(p), S.holm_levels(p, 0.95)
        assert np.isnan(adj[~ok]).all() and np.isnan(lev[~ok]).all()
        if not ok.any():
            continue
        rej, ref, _, _ = multipletests(p[ok], alpha=0.05, method="holm")
        np.testing.assert_allclose(adj[ok], ref, rtol=1e-12)
        assert ((adj[ok] <= 0.05) == rej).all()
        for v in np.unique(p[ok]):              # ties: equal adjusted p and equal level
            assert np.ptp(adj[p == v]) == 0 and np.ptp(lev[p == v]) == 0, (p, lev)
        # the step level's alpha is cleared exactly by the rejected arms
        assert ((p[ok] <= 1 - lev[ok] + 1e-15) == rej).all(), (p, lev)
    # two tied smallest p: both get the first step's level (the old levels were 1 - .05/3 and
    # 1 - .05/2); a tie that passes later steps keeps the level of its first rank
    np.testing.assert_allclose(S.holm_levels([0.01, 0.01, 0.2], 0.95),
                               [1 - 0.05 / 3, 1 - 0.05 / 3, 0.95])
    np.testing.assert_allclose(S.holm_levels([0.02, 0.01, 0.02], 0.95),
                               [1 - 0.05 / 2, 1 - 0.05 / 3, 1 - 0.05 / 2])
    np.testing.assert_allclose(S.holm([0.02, 0.01, 0.02]), [0.04, 0.03, 0.04])


def test_identical_arms_get_identical_rows():
    # two identical arms with a clear effect: Holm rejects both at its first step, so both get
    # the first step's level (the stable sort used to give the second one 1 - alpha / (m - 1))
    rng = np.random.default_rng(2)
    n, base = 10, rng.normal(0, 5, 10)
    a = base + rng.normal(3.0, 1.0, n)
    arms = {"ctrl": base, "A": a, "A2": a.copy(), "B": base + rng.normal(0.0, 1.0, n)}
    df = pd.DataFrame([{"policy": k, "seed": s, "m": v[s]} for k, v in arms.items()
                       for s in range(n)])
    t = S.paired_table(df, "m", ["ctrl"], n_boot=200).set_index("arm")
    cols = [c for c in S.PAIRED_COLUMNS if c not in ("control", "arm")]
    pd.testing.assert_series_equal(t.loc["A", cols], t.loc["A2", cols], check_names=False)
    assert t.loc["A", "reject"] and t.loc["A2", "holm_level"] == pytest.approx(1 - 0.05 / 3)
    assert t.loc["A2", "p_holm"] == pytest.approx(3 * t.loc["A2", "p"])


def test_t_interval_p_and_holm_against_scipy_and_statsmodels():
    rng = np.random.default_rng(3)
    n, base = 12, rng.normal(0, 5, 12)
    arms = {"ctrl": base, "a": base + rng.normal(1.0, 1, n), "b": base + rng.normal(0.2, 1, n),
            "c": base + rng.normal(-2.0, 1, n)}
    df = pd.DataFrame([{"policy": a, "seed": s, "m": v[s]} for a, v in arms.items()
                       for s in range(n)])
    t = S.paired_table(df, "m", ["ctrl"], level=0.9, n_boot=300, seed=5)
    _, ref_holm, _, _ = multipletests(t["p"], method="holm")
    np.testing.assert_allclose(t["p_holm"], ref_holm, rtol=1e-12)
    for _, r in t.iterrows():
        d = arms[r["arm"]] - base
        ds = DescrStatsW(d)
        assert r["p"] == pytest.approx(st.ttest_1samp(d, 0.0).pvalue, rel=1e-9)
        assert (r["t_lo"], r["t_hi"]) == pytest.approx(ds.tconfint_mean(0.1), rel=1e-9)
        assert (r["simul_lo"], r["simul_hi"]) == pytest.approx(ds.tconfint_mean(0.1 / 3),
                                                               rel=1e-9)
        assert (r["holm_lo"], r["holm_hi"]) == pytest.approx(
            ds.tconfint_mean(1 - r["holm_level"]), rel=1e-9)
        # the bootstrap interval is per arm at the nominal level (not a Holm level)
        assert (r["boot_lo"], r["boot_hi"]) == pytest.approx(S.bootstrap_ci(d, 0.9, 300, 5))
        assert r["mde"] == pytest.approx(TTestPower().solve_power(
            nobs=n, alpha=0.1 / 3, power=0.8, alternative="two-sided") * r["sd_diff"], rel=1e-5)


def test_mde_against_statsmodels_power():
    for n in (3, 4, 5, 8, 16, 50):
        for alpha in (0.05, 0.05 / 3, 0.05 / 6, 0.01):
            mde = S.mde_paired(2.5, n, alpha)
            power = TTestPower().power(mde / 2.5, n, alpha, alternative="two-sided")
            if np.isfinite(power):              # statsmodels' nct gives NaN for a few (n, alpha)
                assert power == pytest.approx(0.8, abs=1e-6), (n, alpha)
            if n >= 5:      # for n <= 4 and small alpha solve_power silently returns a wrong
                es = TTestPower().solve_power(    # root (n = 3, alpha = .05/3: power 0.61)
                    nobs=n, alpha=alpha, power=0.8, alternative="two-sided")
                assert mde == pytest.approx(2.5 * es, rel=1e-5), (n, alpha)
    # and the table's MDE is at alpha / m: larger than the unadjusted one (the old figure)
    t = S.paired_table(summary(), "m", ["ctrl"], n_boot=50).set_index("arm")
    sd, n = t.loc["A", "sd_diff"], 4
    es = TTestPower().solve_power(nobs=n, alpha=0.05 / 3, power=0.8)
    assert t.loc["A", "mde"] == pytest.approx(es * sd, rel=1e-5)
    assert t.loc["A", "mde"] > 1.3 * S.mde_paired(sd, n, 0.05)


def _t_cover(mean, se, mu, lev, n):
    half = st.t.ppf(0.5 + lev / 2, n - 1) * se
    return (np.abs(mean - mu) <= half).all(1)


def test_simultaneous_intervals_have_family_coverage_step_levels_do_not():
    # families of m = 5 arms against one control (shared control noise), n = 8 seeds, real
    # effects present; joint coverage of all 5 intervals at level 0.95
    rng = np.random.default_rng(0)
    F, n, level = 4000, 8, 0.95
    mu = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    m = len(mu)
    ctrl = rng.normal(0, 1, (F, 1, n))
    d = (ctrl + mu[None, :, None] + rng.normal(0, 1, (F, m, n))) - ctrl
    mean, se = d.mean(-1), d.std(-1, ddof=1) / np.sqrt(n)
    p = 2 * st.t.sf(np.abs(mean) / se, n - 1)
    s_lev = S.simultaneous_level(m, level)
    h_lev = np.stack([S.holm_levels(pi, level) for pi in p])
    simul = _t_cover(mean, se, mu, s_lev, n).mean()
    step = _t_cover(mean, se, mu, h_lev, n).mean()
    tol = 3 * np.sqrt(level * (1 - level) / F)              # Monte-Carlo error, 3 se
    assert simul >= level - tol, simul                      # measured 0.952
    assert step < level - tol, step                         # measured 0.907: not family-level
    # the vectorised intervals are the ones paired_table reports (first family)
    rows = [{"policy": "ctrl", "seed": s, "m": 0.0} for s in range(n)]
    rows += [{"policy": f"a{i}", "seed": s, "m": d[0, i, s]} for i in range(m) for s in range(n)]
    t = S.paired_table(pd.DataFrame(rows), "m", ["ctrl"], level, n_boot=10)
    half = st.t.ppf(0.5 + s_lev / 2, n - 1) * se[0]
    np.testing.assert_allclose(t["simul_lo"], mean[0] - half, rtol=1e-9)
    np.testing.assert_allclose(t["holm_level"], h_lev[0])


def test_module_docstring_describes_every_column():
    doc = S.__doc__
    for c in S.PAIRED_COLUMNS:
        assert f"``{c}``" in doc, c
    # the step-level intervals are not presented as family-level intervals
    entry = doc[doc.index("- ``holm_level``"):doc.index("- ``boot_lo``")]
    assert "not a confidence interval" in entry and "no family-level" in entry
    entry = doc[doc.index("- ``boot_lo``"):doc.index("- ``mde``")]
    assert "unadjusted" in entry and "not used for decisions" in entry


def test_markdown_and_plot_show_the_simultaneous_intervals(tmp_path, monkeypatch):
    import matplotlib.figure

    t = S.paired_table(summary(), "m", ["ctrl"], level=0.9, n_boot=100)
    assert "bootstrap" not in S.format_paired(t)     # 4 seeds < MIN_BOOT_SEEDS: not shown
    md = S.format_paired(t, bootstrap=True)
    head = md.splitlines()[0]
    assert "90% simultaneous CI (t, Bonferroni)" in head and "Holm CI" not in head
    assert "90% bootstrap CI (per arm, unadjusted)" in head and "MDE (80% power, α/m)" in head
    r = t.iloc[0]
    assert f"| {r['mean_diff']:.4g} | [{r['simul_lo']:.4g}, {r['simul_hi']:.4g}] |" in md
    figs = []
    orig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figs.append(self), orig(self, *a, **k))[1])
    S.plot_paired(t, tmp_path / "p.png", bootstrap=True)
    ax = figs[0].axes[0]
    labels = [x.get_text() for x in ax.get_legend().get_texts()]
    assert labels == ["paired t, 90% simultaneous (Bonferroni, m=3)",
                      "percentile bootstrap, 90% per arm (unadjusted)"]
    seg = ax.containers[0].lines[2][0].get_segments()     # the t error bars, one per arm
    np.testing.assert_allclose([s_[:, 0] for s_ in seg], t[["simul_lo", "simul_hi"]])
