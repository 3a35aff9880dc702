"""Weight policies: the seed table (incl. exact boundaries), extra policies, jit/vmap forms."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.clm import policies as P
from tpfl_jax.env.stats import TPStats, make_tp_stats

REPO = Path(__file__).resolve().parents[1]
F = np.float32


def stats(hit, r, attempts=100.0, valid=True, vol=0.0, pnl=None, no_edge=0.5) -> TPStats:
    """Stats with actual R = ``r``; PnL per trade defaults to ``r`` (same sign)."""
    hit, r = jnp.broadcast_arrays(jnp.asarray(hit, jnp.float32), jnp.asarray(r, jnp.float32))
    a = jnp.broadcast_to(jnp.asarray(attempts, jnp.float32), hit.shape)
    pnl = r if pnl is None else jnp.broadcast_to(jnp.asarray(pnl, jnp.float32), hit.shape)
    return TPStats(total_attempts=a, total_hits=jnp.round(hit * a), tp_hit_rate=hit,
                   avg_r_multiple=r, actual_r=r, premature_exit_rate=jnp.zeros_like(hit),
                   valid=jnp.broadcast_to(jnp.asarray(valid), hit.shape),
                   volatility=jnp.broadcast_to(jnp.asarray(vol, jnp.float32), hit.shape),
                   pnl_per_trade=pnl,
                   no_edge_hit_rate=jnp.broadcast_to(jnp.asarray(no_edge, jnp.float32),
                                                     hit.shape))


_APPLY = jax.jit(P.apply_policy)  # one compile serves every policy (policy_id is traced)


def run(policy, s, state=None, **kw):
    state = P.init_policy_state() if state is None else state
    w, st, code = _APPLY(s, state, P.make_policy_params(policy, **kw))
    return float(w), st, int(code)


def table_ref(hit, r):
    """The seed's table in float32 (the reference for the vectorised tests)."""
    hit, r = F(hit), F(r)
    if hit < F(0.45) and r >= F(1.2):
        return 2.0
    if hit > F(0.70) and r < F(1.2):
        return 0.5
    if F(0.45) <= hit <= F(0.70) and r < F(1.2):
        return 1.2
    return 1.0


@pytest.mark.parametrize("hit,r,weight,code", [
    (0.30, 3.33, 2.0, P.REASON_LOW_HIT_GOOD_R),   # low hit + high R
    (0.85, 1.18, 0.5, P.REASON_HIGH_HIT_LOW_R),   # high hit + low R
    (0.55, 1.82, 1.0, P.REASON_OPTIMAL),          # optimal
    (0.60, 1.10, 1.2, P.REASON_OK_HIT_LOW_R),     # acceptable hit + low R
    (0.30, 1.00, 1.0, P.REASON_NO_RULE),          # low hit + low R
    (0.80, 2.00, 1.0, P.REASON_NO_RULE),          # high hit + good R
])
def test_seed_table_cases(hit, r, weight, code):
    w, st, c = run("seed_table", stats(hit, r))
    assert w == pytest.approx(weight) and c == code
    assert float(st.weight) == w and int(st.n_updates) == 1


def test_seed_table_invalid_stats_default():
    w, _, c = run("seed_table", stats(0.3, 3.33, valid=False))
    assert (w, c) == (1.0, P.REASON_NO_DATA)


@pytest.mark.parametrize("hit,r,weight", [
    (0.45, 1.2, 1.0),                                   # 0.45 is not "< 0.45"
    (np.nextafter(F(0.45), F(0)), 1.2, 2.0),            # just below 0.45, R exactly 1.2
    (0.45, np.nextafter(F(1.2), F(0)), 1.2),            # band includes 0.45
    (np.nextafter(F(0.45), F(0)), np.nextafter(F(1.2), F(0)), 1.0),
    (0.70, np.nextafter(F(1.2), F(0)), 1.2),            # band includes 0.70
    (np.nextafter(F(0.70), F(1)), np.nextafter(F(1.2), F(0)), 0.5),
    (np.nextafter(F(0.70), F(1)), 1.2, 1.0),            # R exactly 1.2 is "good"
    (0.0, 1.2, 2.0),
    (1.0, 0.0, 0.5),
])
def test_seed_table_exact_boundaries(hit, r, weight):
    w, _, _ = run("seed_table", stats(hit, r))
    assert w == pytest.approx(weight) and w == pytest.approx(table_ref(hit, r))


def test_boundaries_from_tracker_counts():
    # 9/20 = 0.45 and 14/20 = 0.70 exactly in float32 (correctly rounded division)
    for hits, weight in ((9, 1.2), (8, 1.0), (14, 1.2), (15, 0.5)):
        s = make_tp_stats(20, hits, 0.0, 0).replace(avg_r_multiple=jnp.float32(1.1))
        assert run("seed_table", s)[0] == pytest.approx(weight)


def test_seed_table_jit_vmap_matches_reference_grid():
    hits = np.linspace(0, 1, 41, dtype=np.float32)
    rs = np.array([0.5, 1.0, 1.19, 1.2, 1.21, 2.0, 10.0], np.float32)
    H, R = (a.ravel() for a in np.meshgrid(hits, rs))
    fn = jax.jit(jax.vmap(P.seed_table, in_axes=(0, None, None)))
    w, _, _ = fn(stats(H, R), P.init_policy_state(), P.make_policy_params())
    np.testing.assert_allclose(w, [table_ref(h, r) for h, r in zip(H, R, strict=True)])


def test_ema_moves_gradually_toward_target():
    s = stats(0.3, 3.33)
    w, st, c = run("ema", s, ema_alpha=0.3)
    assert w == pytest.approx(1.3) and c == P.REASON_LOW_HIT_GOOD_R
    for _ in range(40):
        w, st, _ = run("ema", s, st, ema_alpha=0.3)
    assert w == pytest.approx(2.0, abs=1e-4) and int(st.n_updates) == 41
    w, st, c = run("ema", stats(0.3, 3.33, valid=False), st, ema_alpha=0.5)
    assert w == pytest.approx(1.5, abs=1e-4) and c == P.REASON_NO_DATA  # decays to default
    w, _, _ = run("ema", s, ema_alpha=1.0)
    assert w == 2.0  # alpha 1 is the table


def test_vol_scaled_thresholds():
    grid = [(h, r) for h in (0.3, 0.44, 0.45, 0.6, 0.7, 0.71, 0.9) for r in (1.1, 1.2, 2.0)]
    for h, r in grid:  # unknown volatility or the reference volatility -> the seed table
        for vol in (0.0, 0.01):
            assert run("vol_scaled", stats(h, r, vol=vol))[0] == pytest.approx(table_ref(h, r))
    # volatile symbol (s=2): band 0.325..0.825 -> a 40% hit rate is no longer "low"
    assert run("vol_scaled", stats(0.40, 2.5, vol=0.05))[0] == 1.0
    assert run("seed_table", stats(0.40, 2.5))[0] == 2.0
    assert run("vol_scaled", stats(0.30, 3.3, vol=0.05))[0] == 2.0
    # calm symbol (s=0.5): band 0.5125..0.6375 -> 0.48 is below the band
    assert run("vol_scaled", stats(0.48, 1.1, vol=0.005))[0] == 1.0
    assert run("vol_scaled", stats(0.60, 1.1, vol=0.005))[0] == pytest.approx(1.2)
    assert float(P.vol_scale(1.0, P.make_policy_params())) == 2.0  # clipped


def test_wilson_interval_known_values():
    lo, hi = P.wilson_interval(6.0, 20.0, 1.96)
    assert float(lo) == pytest.approx(0.1455, abs=1e-4)
    assert float(hi) == pytest.approx(0.5190, abs=1e-4)
    assert tuple(map(float, P.wilson_interval(0.0, 0.0, 1.96))) == (0.0, 1.0)


def test_gated_moves_only_when_interval_clears():
    prev = P.init_policy_state(1.3)
    w, st, c = run("gated", stats(0.30, 3.33, attempts=20), prev)  # CI 0.15..0.52 straddles
    assert (w, c) == (pytest.approx(1.3), P.REASON_INCONCLUSIVE)
    w, _, c = run("gated", stats(0.30, 3.33, attempts=200), prev)  # CI 0.24..0.37 < 0.45
    assert (w, c) == (2.0, P.REASON_LOW_HIT_GOOD_R)
    w, _, c = run("gated", stats(0.95, 1.05, attempts=100), prev)
    assert (w, c) == (0.5, P.REASON_HIGH_HIT_LOW_R)
    w, _, c = run("gated", stats(0.30, 3.33, attempts=200, valid=False), prev)
    assert (w, c) == (pytest.approx(1.3), P.REASON_NO_DATA)
    w, _, _ = run("gated", stats(0.30, 3.33, attempts=20), prev, z=0.1)  # narrow interval
    assert w == 2.0


def test_continuous_mapping():
    ws = [run("continuous", stats(h, 2.0))[0] for h in (0.0, 0.45, 0.575, 0.70, 1.0)]
    assert ws == pytest.approx([2.0, 2.0, 1.0, 0.5, 0.5])
    fine = np.linspace(0, 1, 101)
    w, _, _ = jax.jit(jax.vmap(P.continuous, in_axes=(0, None, None)))(
        stats(fine, 2.0), P.init_policy_state(), P.make_policy_params("continuous"))
    assert np.all(np.diff(np.asarray(w)) <= 0) and w.min() >= 0.5 and w.max() <= 2.0
    assert run("continuous", stats(0.5, 2.0), w_min=0.9, w_max=1.1)[0] == pytest.approx(1.1)
    assert run("continuous", stats(0.5, 2.0, valid=False))[0] == 1.0


def test_all_policies_in_one_vmap_match_each_policy():
    names = P.POLICY_NAMES
    params = jax.tree.map(lambda *x: jnp.stack(x), *[P.make_policy_params(n) for n in names])
    hits = jnp.array([0.2, 0.45, 0.6, 0.9], jnp.float32)
    s = stats(hits, jnp.array([3.0, 1.1, 1.1, 1.0]), attempts=300.0, vol=0.02)
    state = P.init_policy_state(1.1)
    per_policy = jax.vmap(P.apply_policy, in_axes=(None, None, 0))  # over policies
    fn = jax.jit(jax.vmap(per_policy, in_axes=(0, None, None), out_axes=1))  # over stats
    w, st, code = fn(s, state, params)
    assert w.shape == (len(names), 4) and code.dtype == jnp.int32
    for i, n in enumerate(names):
        wi, _, ci = jax.jit(jax.vmap(P.POLICIES[n], in_axes=(0, None, None)))(
            s, state, P.make_policy_params(n))
        np.testing.assert_allclose(w[i], wi, rtol=1e-6)
        np.testing.assert_array_equal(code[i], ci)
    assert np.all(np.asarray(st.weight) == np.asarray(w))


def test_apply_policy_with_a_subset_of_kinds_matches_every_kind():
    """Building only some policies' branches (``kinds``) selects the same policy."""
    kinds = ("ema", "fixed", "seed_table")
    params = jax.tree.map(lambda *x: jnp.stack(x), *[P.make_policy_params(n) for n in kinds])
    s = stats(jnp.float32(0.3), jnp.float32(2.0), attempts=300.0, vol=0.02)
    state = P.init_policy_state(1.1)
    full = jax.jit(jax.vmap(P.apply_policy, in_axes=(None, None, 0)))(s, state, params)
    sub = jax.jit(jax.vmap(lambda p: P.apply_policy(s, state, p, kinds)))(params)
    data = lambda t: [np.asarray(jax.random.key_data(x) if P._is_key(x) else x)  # noqa: E731
                      for x in jax.tree.leaves(t)]
    for x, y in zip(data(full), data(sub), strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(set(np.asarray(full[0]).tolist())) > 1      # the three policies differ here


def test_params_and_feedback_validation():
    with pytest.raises(ValueError, match="policy"):
        P.make_policy_params("magic")
    with pytest.raises(ValueError, match="unknown parameter"):
        P.make_policy_params("ema", alpha=0.3)
    with pytest.raises(ValueError, match="hit_low < hit_high"):
        P.make_policy_params(hit_low=0.8)
    with pytest.raises(ValueError, match="ema_alpha"):
        P.make_policy_params("ema", ema_alpha=0.0)
    with pytest.raises(ValueError, match="finite"):
        P.make_policy_params(r_good=float("nan"))
    good = {"tp_hit_rate": 0.3, "avg_r_multiple": 3.33, "total_attempts": 20}
    with pytest.raises(ValueError, match="total_attempts"):
        P.decide_weight(good | {"total_attempts": -1})
    with pytest.raises(ValueError, match="tp_hit_rate"):
        P.decide_weight(good | {"tp_hit_rate": 1.5})
    with pytest.raises(ValueError, match="avg_r_multiple"):
        P.decide_weight(good | {"avg_r_multiple": float("nan")})
    with pytest.raises(ValueError, match="missing"):
        P.decide_weight({"tp_hit_rate": 0.3})
    with pytest.raises(ValueError, match="weight"):
        P.init_policy_state(-1.0)


def test_decide_weight_host_values_and_reasons():
    d = P.decide_weight({"tp_hit_rate": 0.30, "avg_r_multiple": 10 / 3, "total_attempts": 20,
                         "total_hits": 6})
    assert d.weight == 2.0 and type(d.weight) is float
    assert d.reason == "Low hit rate (30.0%) but good R (3.33) - increasing TP weight"
    d = P.decide_weight({"tp_hit_rate": 0.6, "avg_r_multiple": 1.1, "total_attempts": 40})
    assert d.weight == 1.2 and d.reason.startswith("Hit rate ok (60.0%)")
    d = P.decide_weight(None)
    assert (d.weight, d.code) == (1.0, P.REASON_NO_DATA) and "Insufficient" in d.reason
    d = P.decide_weight({"tp_hit_rate": 0.3, "avg_r_multiple": 3.3, "total_attempts": 20},
                        "ema")
    assert d.weight == 1.3 and "[ema: weight 1.30]" in d.reason
    assert P.host_float(jnp.float32(1.2)) == 1.2


def test_policies_import_no_glue():
    code = ("import sys, tpfl_jax.clm.policies; "
            "bad = [m for m in sys.modules if m.startswith(('tpfl_jax.tracking', "
            "'tpfl_jax.clm.orchestrator', 'tpfl_jax.clm.registry', 'tpfl_jax.app', 'sqlite3'))]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_expectancy_moves_on_economics_not_hit_rate_alone():
    prev = P.init_policy_state(1.0)
    # positive expectancy, hit 0.6 above the no-edge 0.5 -> up one step
    w, st, c = run("expectancy", stats(0.6, 0.2, pnl=3.0, no_edge=0.5), prev)
    assert (w, c) == (1.25, P.REASON_EXP_UP) and int(st.n_updates) == 1
    # same hit rate, negative expectancy -> down one step
    w, _, c = run("expectancy", stats(0.6, -0.2, pnl=-3.0, no_edge=0.5), prev)
    assert (w, c) == (0.75, P.REASON_EXP_DOWN)
    # positive expectancy but no TP skill (hit below the no-edge rate) -> hold
    w, _, c = run("expectancy", stats(0.4, 0.2, pnl=3.0, no_edge=0.5), prev)
    assert (w, c) == (1.0, P.REASON_EXP_HOLD)
    # R and PnL disagree in sign -> hold; invalid -> hold (no data)
    assert run("expectancy", stats(0.6, 0.2, pnl=-1.0), prev)[2] == P.REASON_EXP_HOLD
    assert run("expectancy", stats(0.6, 0.2, valid=False), prev)[:3:2] == (1.0, P.REASON_NO_DATA)
    # a chain of steps is clipped to [w_min, w_max]; skill_margin gates the raise
    st = P.init_policy_state(1.9)
    assert run("expectancy", stats(0.6, 0.2, no_edge=0.5), st)[0] == 2.0
    assert run("expectancy", stats(0.6, -0.2), P.init_policy_state(0.1), w_min=0.0)[0] == 0.0
    assert run("expectancy", stats(0.55, 0.2, no_edge=0.5), prev, skill_margin=0.1)[0] == 1.0
    with pytest.raises(ValueError, match="exp_step"):
        P.make_policy_params("expectancy", exp_step=0.0)


def test_expectancy_host_decision_reads_tracker_edge_keys():
    fb = {"tp_hit_rate": 0.6, "avg_r_multiple": 1 / 0.6, "total_attempts": 50,
          "actual_r_multiple": 0.3, "pnl_per_trade": 12.0, "no_edge_hit_rate": 0.4}
    d = P.decide_weight(fb, "expectancy", P.init_policy_state(1.5))
    assert d.weight == 1.75 and d.reason.startswith("Positive expectancy")
    d = P.decide_weight(fb | {"actual_r_multiple": -0.3, "pnl_per_trade": -12.0}, "expectancy")
    assert d.weight == 0.75 and "Negative expectancy" in d.reason
    s = P.stats_from_feedback(fb)
    assert float(s.tp_skill) == pytest.approx(0.2)


TOY_MU = (2.0, 5.0, 0.0, -4.0)       # mean PnL per trade of grid weights 0, 0.5, 1, 2


@jax.jit
def _toy_bandit(keys, params, mu_late):
    """The bandit on a toy problem, per key (a seed): a period under grid weight i pays
    ``N(mu[i], 8^2)`` PnL per trade, ``mu = TOY_MU`` for the first 40 rounds and ``mu_late``
    after; returns the grid index in force and its regret, per round ``[S, 80]``."""
    def one(key):
        k_pol, k_env = jax.random.split(key)

        def step(st, t):
            i = jnp.argmin(jnp.abs(params.bandit_grid - st.weight))
            mu = jnp.where(t < 40, jnp.asarray(TOY_MU), mu_late)
            r = mu[i] + 8.0 * jax.random.normal(jax.random.fold_in(k_env, t))
            _, st, _ = P.bandit(stats(0.3, 2.0, pnl=r), st, params)
            return st, (i, mu.max() - mu[i])
        return jax.lax.scan(step, P.init_policy_state(1.0, k_pol), jnp.arange(80))[1]
    return jax.vmap(one)(keys)


SEEDS = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(64))


def test_bandit_regret_is_sublinear_and_its_choices_differ_across_seeds():
    """Stationary toy problem (weight 0.5 pays most): the regret of the second half of 80
    rounds is well below the first half's (averaged over 64 seeds); every seed's choice
    sequence is its own; one key replays the same choices."""
    params = P.make_policy_params("bandit")
    arms, regret = map(np.asarray, _toy_bandit(SEEDS, params, jnp.asarray(TOY_MU)))
    first, second = regret[:, :40].sum(1).mean(), regret[:, 40:].sum(1).mean()
    assert second < 0.6 * first, (first, second)
    assert (arms[:, 60:] == 1).mean() > 0.6             # it settles on the best weight
    assert len({tuple(a) for a in arms}) == 64          # per-seed randomness
    assert len({tuple(a[:3]) for a in arms}) > 10       # no fixed exploration order
    again = np.asarray(_toy_bandit(SEEDS[:2], params, jnp.asarray(TOY_MU))[0])
    np.testing.assert_array_equal(again, arms[:2])


def test_bandit_discount_tracks_a_change():
    """The best weight moves from 0.5 to 1 after 40 rounds: the discounted bandit (0.9) has
    less regret after the change than the stationary one."""
    late = jnp.asarray(TOY_MU[::-1])
    reg = {g: np.asarray(_toy_bandit(SEEDS, P.make_policy_params("bandit", bandit_discount=g),
                                     late)[1])[:, 40:].sum(1).mean() for g in (1.0, 0.9)}
    assert reg[0.9] < 0.9 * reg[1.0], reg


def test_bandit_credits_the_weight_in_force_and_validates():
    """One decision credits the reward to the grid weight in force (none for invalid stats),
    after discounting the memory; bad prior, noise or discount values are refused."""
    params = P.make_policy_params("bandit", bandit_discount=0.5)
    st = P.init_policy_state(2.0).replace(arm_n=jnp.full(4, 2.0), arm_sum=jnp.full(4, 4.0),
                                          arm_sq=jnp.full(4, 8.0))
    _, new, code = _APPLY(stats(0.3, 2.0, pnl=3.0), st, params)
    np.testing.assert_allclose(new.arm_n, [1, 1, 1, 2])
    np.testing.assert_allclose(new.arm_sum, [2, 2, 2, 5])
    np.testing.assert_allclose(new.arm_sq, [4, 4, 4, 13])
    assert int(code) == P.REASON_BANDIT_SAMPLE and int(new.n_updates) == 1
    _, new, _ = _APPLY(stats(0.3, 2.0, pnl=3.0, valid=False), st, params)
    np.testing.assert_allclose(new.arm_n, [1, 1, 1, 1])
    d = P.decide_weight({"tp_hit_rate": 0.3, "avg_r_multiple": 3.3, "total_attempts": 20,
                         "pnl_per_trade": 5.0}, "bandit")         # the host (CLM) path
    assert d.weight in (0.0, 0.5, 1.0, 2.0) and d.reason.startswith("Bandit: TP weight")
    for bad, text in (({"bandit_prior_sd": 0.0}, "bandit_prior_sd > 0"),
                      ({"bandit_noise_sd": -1.0}, "bandit_noise_sd > 0"),
                      ({"bandit_discount": 0.0}, "0 < bandit_discount <= 1"),
                      ({"bandit_discount": 1.5}, "0 < bandit_discount <= 1"),
                      ({"bandit_grid": (0.0, 2.0, 1.0, 3.0)}, "bandit_grid")):
        with pytest.raises(ValueError, match=re.escape(text)):
            P.make_policy_params("bandit", **bad)


def test_gated_holds_when_the_hit_rate_is_what_the_tp_distance_explains():
    """gated moves only when the hit rate's Wilson interval excludes the no-edge hit rate of
    the chosen TPs; the seed table moves on the same stats (so the two arms can differ)."""
    # hit 0.30 over 200 trades with wide TPs (no-edge 0.30): no skill evidence -> hold
    s = stats(0.30, 3.33, attempts=200.0, no_edge=0.30)
    assert run("seed_table", s)[0] == pytest.approx(2.0)
    w, _, code = run("gated", s, P.init_policy_state(1.0))
    assert w == pytest.approx(1.0) and code == P.REASON_INCONCLUSIVE
    # the same hit rate against a no-edge rate of 0.5: skill is evident -> the table's 2.0
    w, _, _ = run("gated", stats(0.30, 3.33, attempts=200.0, no_edge=0.5),
                  P.init_policy_state(1.0))
    assert w == pytest.approx(2.0)
