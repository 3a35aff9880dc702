"""What a loop report says about its numbers (issue 27, item 4): bootstrap intervals only from
10 seeds, the best arm only when Holm separates it, one primary PnL column with units, the
hit rate pooled over trades, final weights as mean [min, max], identical arm x seed pairs,
every arm against the best reference rule, weight paths and regret against the best fixed
weight in hindsight. Small synthetic frames, no training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tpfl_jax import report as Rep
from tpfl_jax import results as R
from tpfl_jax import stats as S


def cycles_frame(pnl: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None,
                 sampled_shift: float = -50.0) -> pd.DataFrame:
    """One row per arm x seed x cycle from ``pnl[arm]`` of shape ``[seeds, cycles]`` (the
    greedy deploy is the feedback mode: ``deploy_pnl == deploy_greedy_pnl``)."""
    rows = []
    for arm, v in pnl.items():
        n_s, n_c = v.shape
        for s in range(n_s):
            for c in range(n_c):
                trades = 10.0 + c + s                   # trades per episode differ by cycle
                hit = 0.2 + 0.1 * c
                w = weights[arm][s, c] if weights else 1.0
                rows.append({
                    "policy": arm, "seed": s, "cycle": c, "weight": float(w),
                    "deploy_pnl": v[s, c], "deploy_greedy_pnl": v[s, c],
                    "deploy_sampled_pnl": v[s, c] + sampled_shift,
                    "deploy_trades": trades, "deploy_greedy_trades": trades,
                    "deploy_sampled_trades": trades + 5.0,
                    "deploy_hit_rate": hit, "deploy_greedy_hit_rate": hit,
                    "deploy_sampled_hit_rate": hit / 2,
                    "train_updates": 4, "train_converged": True})
    return pd.DataFrame(rows)


def test_bootstrap_intervals_only_from_10_seeds(tmp_path):
    rng = np.random.default_rng(0)
    for n, shown in ((4, False), (9, False), (10, True)):
        ctrl = rng.normal(size=n)
        df = pd.DataFrame([{"policy": a, "seed": s, "m": ctrl[s] + (a == "A") + rng.normal()}
                           for a in ("ctrl", "A", "B") for s in range(n)])
        t = S.paired_table(df, "m", ["ctrl"], n_boot=50)
        md = S.format_paired(t)
        assert S.show_bootstrap(t) is shown
        assert ("bootstrap CI" in md.splitlines()[0]) is shown
        assert md.splitlines()[1].count("---|") == (10 if shown else 9)
        note = S.bootstrap_note(t)
        assert ("omitted" in note and f"n = {n} seeds < 10" in note
                and "anti-conservative" in note) is not shown
        # the plot follows the same rule: no bootstrap bars below 10 seeds
        import matplotlib.figure

        figs = []
        orig = matplotlib.figure.Figure.savefig

        def keep(self, *a, _figs=figs, _orig=orig, **k):
            _figs.append(self)
            return _orig(self, *a, **k)

        matplotlib.figure.Figure.savefig = keep
        try:
            S.plot_paired(t, tmp_path / f"p{n}.png")
        finally:
            matplotlib.figure.Figure.savefig = orig
        labels = [x.get_text() for x in figs[0].axes[0].get_legend().get_texts()]
        assert any("bootstrap" in lb for lb in labels) is shown


def test_pairwise_table_is_holm_over_all_pairs():
    rng = np.random.default_rng(1)
    base = rng.normal(size=6)
    df = pd.DataFrame([{"policy": a, "seed": s, "m": base[s] + k + 0.3 * rng.normal()}
                       for k, a in enumerate(("a", "b", "c", "d")) for s in range(6)])
    t = S.pairwise_table(df, "m")
    assert len(t) == 6 and (t.m == 6).all() and list(t.columns) == list(S.PAIRWISE_COLUMNS)
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(t.p_holm, multipletests(t.p, method="holm")[1])
    wide = df.pivot(index="seed", columns="policy", values="m")
    r = t[(t.arm_a == "a") & (t.arm_b == "c")].iloc[0]
    assert r.mean_diff == pytest.approx((wide["a"] - wide["c"]).mean())


def _summary(means: dict[str, float], n: int, noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 50.0, n)
    return pd.DataFrame([{"policy": a, "seed": s, "oos_pnl": base[s] + m + noise * rng.normal()}
                         for a, m in means.items() for s in range(n)])


def test_best_arm_named_only_when_holm_separates_it_from_every_other():
    ctl = ["c0"]

    def first_line(summary):
        paired = S.paired_table(summary, "oos_pnl", ctl, n_boot=20)
        return R.answer(summary, paired, None, ctl)[0]

    clear = _summary({"c0": 0.0, "A": 100.0, "B": 10.0}, n=12, noise=5.0)
    line = first_line(clear)
    m = clear[clear.policy == "A"].oos_pnl.mean()
    assert line.startswith(f"Best arm: `A` with oos_pnl {m:+.1f} ± ")
    assert "Holm over all 3 pairs of arms" in line and "12 seeds" in line
    # the highest mean but inside the noise of another arm: no best arm is named
    close = _summary({"c0": 0.0, "A": 12.0, "B": 10.0}, n=12, noise=20.0)
    line = first_line(close)
    assert line.startswith("No arm is distinguishable as best on oos_pnl")
    top = close.groupby("policy").oos_pnl.mean().idxmax()
    assert top in ("A", "B") and "Best arm" not in line
    assert f"`{'A' if top == 'B' else 'B'}`" in line and f"`{top}`" not in line
    # the top arm's identical twin is named with it, not counted as a rival
    twin = pd.concat([clear, clear[clear.policy == "A"].assign(policy="A2")])
    line = first_line(twin)
    assert line.startswith("Best arms: `A`, `A2` (identical on every seed)")
    b = R.best_arms(twin, S.pairwise_table(twin, "oos_pnl"))
    assert b == {"top": "A", "group": ["A", "A2"], "tied": [], "best": ["A", "A2"]}
    # one seed: no test, no best
    assert first_line(clear[clear.seed == 0]).startswith("No arm is distinguishable")


def test_levels_table_one_primary_column_units_and_final_weight_range():
    pnl = {"fixed_1.0": np.array([[5.0, 10.0, 20.0], [0.0, 30.0, 40.0]]),
           "ema": np.array([[5.0, 11.0, 21.0], [1.0, 31.0, 41.0]])}
    w = {"fixed_1.0": np.ones((2, 3)), "ema": np.array([[1.0, 1.3, 1.5], [1.0, 1.3, 1.2]])}
    summary = R.summary_frame(cycles_frame(pnl, w))
    assert (summary.oos_pnl == summary.oos_pnl_greedy).all()    # the same numbers in summary
    assert R.feedback_mode(summary) == "greedy"
    levels = R.levels_table(summary, None)
    assert "greedy_pnl" not in levels and "sampled_pnl" in levels
    ema = levels.set_index("name").loc["ema"]
    assert (ema.final_weight, ema.final_weight_min, ema.final_weight_max) == pytest.approx(
        (1.35, 1.2, 1.5))
    units = Rep.units_text(10_000.0, 100)
    assert units == "PnL in currency per 100-step episode on 10,000 starting equity"
    md = Rep.levels_markdown(levels, "oos_pnl", "greedy", units)
    head = md.splitlines()[0]
    assert f"oos_pnl ({units})" in head and "greedy_pnl" not in head and "sampled_pnl" in head
    assert "| 1.35 [1.2, 1.5] |" in md and "final_weight mean [min, max]" in head
    # an older levels.csv with both mode columns: the feedback mode's is still not repeated
    old = levels.assign(greedy_pnl=levels["oos_pnl"]).drop(
        columns=["final_weight_min", "final_weight_max", "hit_rate_pooled"])
    md = Rep.levels_markdown(old, "oos_pnl", "greedy", units)
    assert "greedy_pnl" not in md and "final_weight (mean over seeds)" in md
    assert "hit rate (mean of per-cycle ratios)" in md
    # sampled feedback: the sampled column is the primary one
    assert "sampled_pnl" not in Rep.levels_markdown(old.assign(sampled_pnl=old.oos_pnl),
                                                    "oos_pnl", "sampled").splitlines()[0]
    legend = Rep.levels_legend(levels, "oos_pnl", "greedy", units, summary)
    assert legend[0].startswith(f"`oos_pnl`: {units}, the greedy deployment (the feedback mode)")
    assert any("mean [min, max] over seeds" in x for x in legend)
    assert any("pooled over every deploy trade" in x for x in legend)
    # neither mode equal to oos_pnl on every row: no mode is claimed, both columns stay
    mixed = summary.assign(oos_pnl=summary.oos_pnl + [0.0, 1.0, 0.0, 0.0])
    assert R.feedback_mode(mixed) is None
    assert {"greedy_pnl", "sampled_pnl"} <= set(R.levels_table(mixed, None))


def test_greedy_against_sampled_line_claims_costs_only_when_the_data_shows_them():
    pnl = {"a": np.array([[1.0, 20.0, 30.0]])}
    s = R.summary_frame(cycles_frame(pnl, sampled_shift=-50.0))
    line = Rep.greedy_sampled_line(s)
    assert "trades at random" in line and "fee and half-spread" in line
    assert "16.5 closed trades per episode against greedy's 11.5" in line   # cycles 1, 2
    s = R.summary_frame(cycles_frame(pnl, sampled_shift=+50.0))   # sampled earns more
    line = Rep.greedy_sampled_line(s)
    assert "fee" not in line and "most probable action" in line


def test_hit_rate_pooled_over_trades():
    pnl = {"a": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])}
    cyc = cycles_frame(pnl)
    s = R.summary_frame(cyc).set_index("seed")
    # seed 0, cycles 1..2: trades 11, 12; hit rates 0.3, 0.4
    pooled = (0.3 * 11 + 0.4 * 12) / 23
    assert s.loc[0, "oos_hit_rate_pooled"] == pytest.approx(pooled)
    assert s.loc[0, "oos_hit_rate"] == pytest.approx(0.35)              # mean of ratios
    lv = R.levels_table(s.reset_index(), None).iloc[0]
    # over both seeds: seed 1 has trades 12, 13
    total = (0.3 * 11 + 0.4 * 12 + 0.3 * 12 + 0.4 * 13) / (11 + 12 + 12 + 13)
    assert lv.hit_rate_pooled == pytest.approx(total)
    assert lv.hit_rate == pytest.approx(0.35)                            # unchanged column
    # no trades: 0 (as accounting); a NaN hit rate stays NaN (never summed as 0)
    none = cyc.assign(deploy_trades=0.0)
    assert (R.summary_frame(none).oos_hit_rate_pooled == 0.0).all()
    bad = cyc.copy()
    bad.loc[(bad.seed == 0) & (bad.cycle == 1), "deploy_hit_rate"] = np.nan
    assert np.isnan(R.summary_frame(bad).set_index("seed").loc[0, "oos_hit_rate_pooled"])


def test_identical_arm_seed_pairs_are_flagged():
    df = pd.DataFrame({"policy": ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4,
                       "seed": list(range(4)) * 4,
                       "oos_pnl": [1.0, 2.0, 3.0, 4.0,     # a
                                   1.0, 2.5, 3.0, 4.5,     # b = a on seeds 0, 2
                                   1.0, 2.0, 3.0, 4.0,     # c = a on every seed
                                   9.0, 9.0, 9.0, 9.0]})   # d
    t = R.identical_pairs(df)
    pairs = {(r.arm_a, r.arm_b): (r.seeds, r.n_identical, r.n_seeds) for r in t.itertuples()}
    assert pairs == {("a", "b"): ([0, 2], 2, 4), ("a", "c"): ([0, 1, 2, 3], 4, 4),
                     ("b", "c"): ([0, 2], 2, 4)}
    assert R.identical_arms(df) == [("a", "c")]


def test_every_arm_against_the_better_of_trend_and_buy_and_hold():
    rng = np.random.default_rng(3)
    n = 5
    arms = pd.DataFrame([{"policy": a, "seed": s, "oos_pnl": rng.normal(10 * k, 5)}
                         for k, a in enumerate(("x", "y")) for s in range(n)])
    ref = pd.DataFrame([{"rule": r, "seed": s, "oos_pnl": m + rng.normal()}
                        for r, m in (("trend", 30.0), ("buy_and_hold", 20.0), ("oracle", 99.0),
                                     ("flat", 0.0)) for s in range(n)])
    assert R.best_reference(ref) == "trend"        # the oracle and flat are not candidates
    rule, t = R.reference_paired(arms, ref, "oos_pnl", n_boot=20)
    assert rule == "trend" and list(t.arm) == ["x", "y"]
    assert (t.control == "trend (reference)").all() and (t.n == n).all() and (t.m == 2).all()
    d = (arms[arms.policy == "y"].set_index("seed").oos_pnl
         - ref[ref.rule == "trend"].set_index("seed").oos_pnl)
    r = t.set_index("arm").loc["y"]
    assert r.mean_diff == pytest.approx(d.mean())
    lo, hi = S.t_test(d.to_numpy())[1:3]
    assert (r.t_lo, r.t_hi) == pytest.approx((lo, hi))
    md = "\n".join(Rep.reference_markdown(rule, t, "oos_pnl", "PnL X"))
    assert "same deploy episodes" in md and "Bootstrap intervals omitted: n = 5" in md
    assert R.reference_paired(arms, None) is None


def test_regret_against_the_best_fixed_weight_in_hindsight():
    pnl = {"fixed_0.0": np.array([[0.0, 10.0, 10.0], [0.0, 30.0, 10.0]]),
           "fixed_1.0": np.array([[0.0, 20.0, 20.0], [0.0, 10.0, 10.0]]),
           "bandit": np.array([[5.0, 15.0, 25.0], [0.0, 0.0, 20.0]])}
    kinds = {"fixed_0.0": "fixed", "fixed_1.0": "fixed", "bandit": "bandit"}
    cyc = cycles_frame(pnl)
    best, reg = R.regret_frame(cyc, kinds)
    # pooled over seeds, cycles 1..2: fixed_0.0 30 per seed, fixed_1.0 30 per seed -> tie:
    # idxmax takes the first; shift fixed_1.0 so it wins clearly
    pnl["fixed_1.0"][:, 2] += 5.0
    cyc = cycles_frame(pnl)
    best, reg = R.regret_frame(cyc, kinds)
    assert best == "fixed_1.0"
    assert best == R.best_fixed_in_hindsight(R.summary_frame(cyc), kinds)[0]
    assert set(reg.policy) == {"bandit"} and list(reg.cycle.unique()) == [1, 2]   # no cycle 0
    got = reg.set_index(["seed", "cycle"]).cum_regret
    # seed 0: (20 - 15) = 5, then + (25 - 25) = 5; seed 1: (10 - 0) = 10, + (15 - 20) = 5
    assert got.to_dict() == {(0, 1): 5.0, (0, 2): 5.0, (1, 1): 10.0, (1, 2): 5.0}
    b = R.band(reg, "cum_regret").set_index("cycle")
    assert (b.loc[1, "mean"], b.loc[1, "min"], b.loc[1, "max"]) == (7.5, 5.0, 10.0)
    md = Rep.regret_markdown(reg)
    assert "| `bandit` | +7.5 [+5.0, +10.0] | +5.0 [+5.0, +5.0] | +2.5 |" in md
    # a NaN cycle is not summed as 0: the cumulative regret is NaN from there on
    bad = cyc.copy()
    bad.loc[(bad.policy == "bandit") & (bad.seed == 0) & (bad.cycle == 1), "deploy_pnl"] = np.nan
    got = R.regret_frame(bad, kinds)[1].set_index(["seed", "cycle"]).cum_regret
    assert np.isnan(got[(0, 1)]) and np.isnan(got[(0, 2)]) and got[(1, 2)] == 5.0
    # nothing to compare: no fixed arm, or no adaptive arm
    assert R.regret_frame(cyc, {"bandit": "bandit"}) is None
    assert R.regret_frame(cyc, {"fixed_0.0": "fixed", "fixed_1.0": "fixed"}) is None


def test_weight_paths_and_their_figures(tmp_path):
    w = {"ema": np.array([[1.0, 1.3, 1.5], [1.0, 1.3, 1.5], [1.0, 0.8, 0.6]]),
         "fixed_1.0": np.ones((3, 3))}
    pnl = {k: np.zeros((3, 3)) for k in w}
    cyc = cycles_frame(pnl, w)
    p = R.weight_paths(cyc).set_index("policy")
    assert p.loc["ema", "distinct_paths"] == 2 and p.loc["fixed_1.0", "distinct_paths"] == 1
    assert (p.loc["ema", "final_min"], p.loc["ema", "final_median"],
            p.loc["ema", "final_max"]) == (0.6, 1.5, 1.5)
    assert "| `ema` | 3 | 2 | 1.5 [0.6, 1.5] |" in Rep.weight_paths_markdown(p.reset_index())
    assert Rep.plot_weights(tmp_path / "w.png", cyc).stat().st_size > 0
    reg = R.regret_frame(cyc, {"ema": "ema", "fixed_1.0": "fixed"})
    assert Rep.plot_regret(tmp_path / "r.png", reg[1], reg[0]).stat().st_size > 0


def test_policy_table_leaves_out_columns_that_repeat_oos_pnl():
    pnl = {"a": np.array([[1.0, 2.0]]), "b": np.array([[3.0, 4.0]])}
    s = R.summary_frame(cycles_frame(pnl))
    t = Rep.policy_table(s)
    assert "oos_pnl_greedy" not in t and "oos_pnl_sampled" in t
    assert t.attrs["same_as_oos_pnl"] == ["final_pnl", "oos_pnl_greedy"]   # 2 cycles: C-1 = 1
    md = Rep.format_table(t)
    assert "oos_pnl_greedy" not in md.splitlines()[0] and "| 1 [1, 1] |" in md


def test_audit_note_says_what_each_reference_pnl_is():
    s = {"episodes": 512, "episode_steps": 100, "label": "regime, 64 fresh paths",
         "rank_set": {"trend": "trend_tp3"}}
    note = Rep.audit_note(s, 16)
    assert "its own 512 episodes of 100 steps (regime, 64 fresh paths)" in note
    assert "lookback 16" in note and "`trend_tp3`" in note and "in hindsight" in note
    assert "the arms' deploy episodes of cycles 1..C-1" in note and "need not agree" in note


def test_loop_report_text(tmp_path):
    pnl = {"fixed_1.0": np.array([[0.0, 10.0, 12.0], [0.0, 11.0, 9.0]]),
           "fixed_0.0": np.array([[0.0, 8.0, 7.0], [0.0, 6.0, 9.0]]),
           "ema": np.array([[0.0, 10.0, 12.0], [0.0, 3.0, 4.0]])}
    cyc = cycles_frame(pnl)
    summary = R.summary_frame(cyc)
    ctl = ["fixed_1.0", "fixed_0.0"]
    paired = {"oos_pnl": S.paired_table(summary, "oos_pnl", ctl, n_boot=20)}
    units = Rep.units_text(10_000.0, 100)
    levels = R.levels_table(summary, None)
    path = Rep.write_loop_report(
        tmp_path, "t", answer=R.answer(summary, paired["oos_pnl"], None, ctl), levels=levels,
        paired=paired, primary="oos_pnl", training=pd.DataFrame({"cycle": [0]}), plots=[],
        legend=Rep.levels_legend(levels, "oos_pnl", "greedy", units, summary),
        mode="greedy", units=units, horizon=["HORIZON"], reference=["REFERENCE"])
    text = path.read_text()
    assert "No arm is distinguishable" in text and "Best arm" not in text
    assert "bootstrap CI" not in text and "Bootstrap intervals omitted: n = 2 seeds" in text
    assert f"| | oos_pnl ({units}) |" in text and "greedy_pnl" not in text
    assert "the weight in force" not in text
    assert text.index("## Paired differences") < text.index("REFERENCE") < text.index(
        "HORIZON") < text.index("## Training per cycle")


def test_answer_says_nothing_to_compare_and_leaves_identical_arms_out_of_the_mde():
    s = _summary({"c0": 0.0, "A": 5.0}, n=6, noise=10.0)
    twin = pd.concat([s, s[s.policy == "c0"].assign(policy="T")])     # T == c0 everywhere
    paired = S.paired_table(twin, "oos_pnl", ["c0"], n_boot=20)
    line = R.answer(twin, paired, None, ["c0"])[1]
    mde = paired.set_index("arm").loc["A", "mde"]
    assert line == (f"vs `c0`: nothing differs (smallest detectable effect {mde:.1f}; "
                    "identical to it on every seed: `T`).") and mde > 0
    one = s[s.policy == "c0"]
    assert R.answer(one, paired.iloc[:0], None, [])[0] == "One arm: nothing to compare."
    same = pd.concat([one, one.assign(policy="B")])
    assert R.answer(same, paired.iloc[:0], None, [])[0].startswith("Every arm has the same")


def test_collected_report_states_units_only_when_every_run_agrees(tmp_path):
    def run(name: str, steps: int) -> None:
        d = tmp_path / name
        d.mkdir()
        (d / "config_resolved.yaml").write_text(
            f"env:\n  initial_equity: 10000.0\n  max_steps_in_episode: {steps}\n")

    run("a", 100)
    run("b", 100)
    s = pd.DataFrame({"run": ["a", "b"]})
    assert Rep._collected_units(tmp_path, s) == Rep.units_text(10_000.0, 100)
    run("c", 50)
    assert "differ" in Rep._collected_units(tmp_path, pd.DataFrame({"run": ["a", "c"]}))
    assert Rep._collected_units(tmp_path, pd.DataFrame({"run": ["missing"]})) is None


def test_episode_table_per_series_by_hand(tmp_path):
    """Per arm x symbol over the chosen cycles: mean over seeds of each seed's mean PnL and
    episode Sharpe (mean / sd of returns); the rules have no sampled mode; a panel report
    section pivots it per series with the pooled column `all`."""
    from types import SimpleNamespace

    from tpfl_jax.pipelines.loop import series_section
    from tpfl_jax.results import episode_table

    rows = []
    for seed in (0, 1):
        for cycle in (0, 1, 2):
            for ep, sym in enumerate(("A", "A", "B", "B")):
                pnl = 100.0 * (seed + 1) * (ep + 1) + 1000.0 * (cycle == 0)
                rows.append(dict(kind="policy", arm="x", seed=seed, mode="greedy", cycle=cycle,
                                 episode=ep, symbol=sym, pnl=pnl, **{"return": pnl / 1e4}))
                rows.append(dict(kind="policy", arm="x", seed=seed, mode="sampled",
                                 cycle=cycle, episode=ep, symbol=sym, pnl=-pnl,
                                 **{"return": -pnl / 1e4}))
                rows.append(dict(kind="reference", arm="trend", seed=seed, mode="greedy",
                                 cycle=cycle, episode=ep, symbol=sym, pnl=5.0,
                                 **{"return": 5e-4}))
    eps = pd.DataFrame(rows)
    t = episode_table(eps, [1, 2], ["symbol"]).set_index(["arm", "symbol"])
    # seed s, symbol A: episodes 0, 1 of cycles 1, 2 -> pnl 100(s+1) x {1, 2, 1, 2}
    a0, a1 = np.array([100, 200, 100, 200.0]), np.array([200, 400, 200, 400.0])
    assert t.loc[("x", "A"), "greedy_pnl"] == pytest.approx((a0.mean() + a1.mean()) / 2)
    sh = a0.mean() / a0.std(ddof=1)                    # the same for both seeds (scale-free)
    assert t.loc[("x", "A"), "greedy_sharpe"] == pytest.approx(sh)
    assert t.loc[("x", "A"), "sampled_pnl"] == pytest.approx(-(a0.mean() + a1.mean()) / 2)
    assert t.loc[("x", "B"), "episodes_per_seed"] == 4
    assert np.isnan(t.loc[("trend", "A"), "sampled_pnl"])
    assert t.loc[("trend", "B"), "greedy_pnl"] == 5.0 and t.loc[("trend", "B"),
                                                                "greedy_sharpe"] == 0.0
    obj = SimpleNamespace(loop=SimpleNamespace(num_cycles=3))
    lines = series_section(obj, SimpleNamespace(episodes=eps), tmp_path, "U")
    per = pd.read_csv(tmp_path / "per_series.csv")
    assert set(per["symbol"]) == {"A", "B", "all"}
    pooled = per[(per.symbol == "all") & (per.arm == "x")].iloc[0]
    assert pooled.greedy_pnl == pytest.approx(eps[(eps.arm == "x") & (eps["mode"] == "greedy")
                                                  & (eps.cycle > 0)].pnl.mean())
    assert "greedy PnL (U)" in "\n".join(lines) and "| x |" in "\n".join(lines)
    assert series_section(obj, SimpleNamespace(episodes=eps.drop(columns="symbol")),
                          tmp_path, "U") is None
