import jax
import jax.numpy as jnp
import pytest

from tpfl_jax.reward import LEGACY_COEFS, TERM_NAMES, RewardCoefs, compute_reward, reward_terms

BASE = dict(pnl_delta=0.01, drawdown=0.05, position_size=0.5, regime_alignment=1.0,
            volatility=0.02)


def r(acc, w=None, **kw):
    args = {**BASE, **kw, "tp_zone_accuracy": acc}
    if w is not None:
        args["tp_reward_weight"] = w
    return compute_reward(**args)


def test_weight_one_is_baseline_and_default():
    assert r(0.8, 1.0) == r(0.8)
    assert isinstance(r(0.8), float)


def test_weight_two_doubles_bonus():
    assert r(0.8, 2.0) - r(0.8, 1.0) == pytest.approx(4.0)
    bonus = reward_terms(**BASE, tp_zone_accuracy=0.8, tp_reward_weight=2.0)["tp_bonus"]
    assert bonus == pytest.approx(2 * 0.8 * 5.0)


def test_weight_half_halves_and_zero_removes():
    b1 = r(0.8, 1.0) - r(0.0, 1.0)
    assert r(0.8, 0.5) - r(0.0, 0.5) == pytest.approx(b1 / 2)
    assert r(0.8, 0.0) == pytest.approx(r(0.0, 0.0))


def test_weight_five_dominates_under_the_legacy_scales_only():
    legacy = reward_terms(**BASE, tp_zone_accuracy=0.8, tp_reward_weight=5.0,
                          coefs=RewardCoefs(**LEGACY_COEFS))
    others = sum(abs(v) for k, v in legacy.items() if k != "tp_bonus")
    assert legacy["tp_bonus"] == pytest.approx(20.0) and legacy["tp_bonus"] > 5 * others
    # calibrated default: the same bonus, but a 0.5-vol move is worth half of it at w=5
    t = reward_terms(**BASE, tp_zone_accuracy=0.8, tp_reward_weight=5.0)
    assert t["tp_bonus"] == pytest.approx(20.0)
    assert t["pnl"] == pytest.approx(20.0 * 0.01 / 0.02)


def test_calibrated_defaults():
    c = RewardCoefs()
    assert (c.pnl, c.drawdown, c.size, c.alignment, c.tp_bonus) == (20.0, 1.0, 0.01, 0.0, 5.0)
    assert reward_terms(**BASE, tp_zone_accuracy=0.0)["alignment"] == 0.0


@pytest.mark.parametrize("acc", [0.0, -0.3, -1.0])
@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_no_bonus_without_positive_accuracy(acc, w):
    assert reward_terms(**BASE, tp_zone_accuracy=acc, tp_reward_weight=w)["tp_bonus"] == 0.0
    assert r(acc, w) == pytest.approx(r(0.0, 1.0))


def test_sum_of_terms_and_signs():
    t = reward_terms(**BASE, tp_zone_accuracy=0.5, tp_reward_weight=1.0)
    assert set(t) == set(TERM_NAMES)
    assert sum(t.values()) == pytest.approx(r(0.5, 1.0))
    assert t["pnl"] == pytest.approx(RewardCoefs().pnl * 0.01 / 0.02)
    assert t["drawdown_penalty"] < 0 and t["size_penalty"] < 0
    t = reward_terms(**BASE, tp_zone_accuracy=0.5, coefs=RewardCoefs(alignment=0.05))
    assert t["alignment"] == pytest.approx(0.05)


def test_jnp_jit_vmap_grad():
    f = jax.jit(jax.vmap(lambda w: r(0.8, w)))
    out = f(jnp.array([0.0, 1.0, 2.0]))
    assert out.shape == (3,)
    assert float(out[2] - out[1]) == pytest.approx(4.0, rel=1e-5)
    g = jax.grad(lambda w: r(0.8, w))(1.0)
    assert float(g) == pytest.approx(5.0 * 0.8)
    g0 = jax.grad(lambda w: r(0.0, w))(1.0)
    assert float(g0) == 0.0
    ga = jax.grad(lambda a: r(a, 2.0))(0.5)
    assert float(ga) == pytest.approx(10.0)


def test_coefficients_overridable_and_traced():
    c = RewardCoefs(tp_bonus=3.0)
    assert reward_terms(**BASE, tp_zone_accuracy=1.0, coefs=c)["tp_bonus"] == pytest.approx(3.0)
    f = jax.jit(lambda cf: compute_reward(**BASE, tp_zone_accuracy=1.0, coefs=cf))
    a = f(RewardCoefs(tp_bonus=jnp.float32(1.0)))
    b = f(RewardCoefs(tp_bonus=jnp.float32(2.0)))
    assert float(b - a) == pytest.approx(1.0)


def test_zero_volatility_is_finite():
    assert jnp.isfinite(r(0.0, 1.0, volatility=0.0))
