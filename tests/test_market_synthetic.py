"""Synthetic market generators: shapes, OHLC invariants, determinism, vmap, statistics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.market import MarketData
from tpfl_jax.market import synthetic as S

N_PATHS, N_BARS = 32, 500
KINDS = ("gbm", "regime", "garch", "merton", "mixed")


@pytest.fixture(scope="module")
def data() -> dict[str, MarketData]:
    # gbm/garch/merton share one compiled program (one regime), regime/mixed another (three).
    return {kind: S.generate(kind, jax.random.key(7), N_PATHS, N_BARS) for kind in KINDS}


def log_returns(md: MarketData) -> np.ndarray:
    return np.diff(np.log(np.asarray(md.close, np.float64)), axis=1)


def excess_kurtosis(x: np.ndarray) -> float:
    x = x.ravel() - x.mean()
    return float((x**4).mean() / (x**2).mean() ** 2 - 3.0)


def acf_sq(r: np.ndarray, lag: int = 1) -> float:
    """Mean over paths of the lag autocorrelation of squared returns."""
    x = r**2 - (r**2).mean(axis=1, keepdims=True)
    num = (x[:, lag:] * x[:, :-lag]).mean(axis=1)
    return float((num / (x**2).mean(axis=1)).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes(data, kind):
    md = data[kind]
    for name in ("open", "high", "low", "close", "volume", "vol_unit", "trend"):
        arr = getattr(md, name)
        assert arr.shape == (N_PATHS, N_BARS), name
        assert arr.dtype == jnp.float32, name
        assert np.isfinite(np.asarray(arr)).all(), name
    assert md.regime.shape == (N_PATHS, N_BARS) and md.regime.dtype == jnp.int32
    assert md.symbol_id.shape == (N_PATHS,) and md.symbol_id.dtype == jnp.int32
    assert (np.asarray(md.volume) > 0).all()
    assert (np.asarray(md.vol_unit) > 0).all()
    assert (np.asarray(md.low) > 0).all()
    np.testing.assert_array_equal(np.asarray(md.open[:, 0]), 100.0)


@pytest.mark.parametrize("kind", KINDS)
def test_ohlc_invariants_and_continuity(data, kind):
    md = data[kind]
    o, h, lo, c = (np.asarray(x) for x in (md.open, md.high, md.low, md.close))
    assert (lo <= o).all() and (o <= h).all()
    assert (lo <= c).all() and (c <= h).all()
    assert (h > lo).all()  # intrabar noise: no degenerate bars
    # gap_vol = 0: each open is exactly the previous close
    np.testing.assert_array_equal(o[:, 1:], c[:, :-1])


def test_ohlc_invariants_many_seeds_with_gaps():
    """Property check: 64 seeds x all options on (regime + GARCH + jumps + gaps)."""
    params = S.MixedParams(gap_vol=0.01, jump_intensity=0.2, jump_vol=0.05)
    keys = jax.random.split(jax.random.key(123), 64)
    md = jax.jit(jax.vmap(lambda k: S.mixed(k, 4, 100, params)))(keys)
    o, h, lo, c = (np.asarray(x) for x in (md.open, md.high, md.low, md.close))
    assert o.shape == (64, 4, 100)
    assert (lo <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all()
    assert np.isfinite(h).all() and (lo > 0).all()
    gaps = np.log(o[..., 1:] / c[..., :-1])
    assert 0.008 < gaps.std() < 0.012  # gaps are there, with the configured size


def test_determinism_and_key_dependence():
    # same shapes and regime count as the fixture: reuses its compiled program
    a = S.generate("mixed", jax.random.key(1), N_PATHS, N_BARS)
    b = S.generate("mixed", jax.random.key(1), N_PATHS, N_BARS)
    c = S.generate("mixed", jax.random.key(2), N_PATHS, N_BARS)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(np.asarray(a.close), np.asarray(c.close))
    # the paths within one draw differ too
    assert not np.array_equal(np.asarray(a.close[0]), np.asarray(a.close[1]))


def test_vmap_over_keys_and_float_param_compiles_once():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(keys, vols, lams):
        def one(key, vol, lam):
            return S.merton(key, 2, 50, S.MertonParams(vol=vol, jump_intensity=lam))
        return jax.vmap(one)(keys, vols, lams)

    keys = jax.random.split(jax.random.key(0), 4)
    vols = jnp.array([0.005, 0.01, 0.02, 0.04])
    md = sweep(keys, vols, jnp.zeros(4))
    keys2 = jax.random.split(jax.random.key(9), 4)
    md2 = sweep(keys2, vols * 2, jnp.full(4, 0.1, jnp.float32))  # new values: no retrace
    assert md.close.shape == md2.close.shape == (4, 2, 50)
    # the traced vol parameter really drives the volatility
    stds = np.log(np.asarray(md.close)[..., 1:] / np.asarray(md.close)[..., :-1]).std(axis=(1, 2))
    assert np.all(np.diff(stds) > 0)
    # the same vmapped path with a single key reproduces the unbatched call
    one = S.merton(keys[0], 2, 50, S.MertonParams(vol=0.005, jump_intensity=0.0))
    np.testing.assert_allclose(np.asarray(md.close[0]), np.asarray(one.close), rtol=1e-6)


def test_symbol_id_and_key_type():
    md = S.gbm(jax.random.key(0), 2, 50, symbol_id=3)
    np.testing.assert_array_equal(np.asarray(md.symbol_id), [3, 3])
    with pytest.raises(TypeError, match="typed key"):
        S.gbm(jax.random.PRNGKey(0), 2, 50)


def test_generate_rejects_unknown_kind_and_param():
    with pytest.raises(ValueError, match="unknown market kind 'foo'"):
        S.generate("foo", jax.random.key(0), 2, 50)
    with pytest.raises(ValueError, match=r"GBMParams has no parameter\(s\) \['sigma'\]"):
        S.generate("gbm", jax.random.key(0), 2, 50, sigma=0.01)


def test_single_regime_labels(data):
    for kind in ("gbm", "garch", "merton"):
        assert (np.asarray(data[kind].regime) == 0).all()
        assert (np.asarray(data[kind].trend) == 1.0).all()  # default drift > 0


def test_regime_labels_consistent_with_trend(data):
    p = S.RegimeParams()
    md = data["regime"]
    reg, trend = np.asarray(md.regime), np.asarray(md.trend)
    assert reg.min() >= 0 and reg.max() <= 2
    np.testing.assert_array_equal(trend, np.sign(np.asarray(p.drift))[reg])
    # persistent regimes: switch rate ~ 1 - 0.98
    switch_rate = (reg[:, 1:] != reg[:, :-1]).mean()
    assert 0.01 < switch_rate < 0.03
    # all regimes visited, and each regime's returns carry its drift (an exploitable signal)
    r = log_returns(md)
    lab = reg[:, 1:]
    for k, (mu, vol) in enumerate(zip(np.asarray(p.drift), np.asarray(p.vol), strict=True)):
        rk = r[lab == k]
        assert rk.size > 1000
        se = vol / np.sqrt(rk.size)
        assert abs(rk.mean() - mu) < 4 * se, (k, rk.mean(), mu)
        assert abs(rk.std() / vol - 1) < 0.1, (k, rk.std(), vol)
    assert r[lab == 0].mean() > 0 > r[lab == 1].mean()


def test_custom_two_regime_params():
    md = S.generate("regime", jax.random.key(3), 4, 300, drift=[0.003, -0.001],
                    vol=[0.01, 0.02], transition=[[0.95, 0.05], [0.1, 0.9]])
    reg = np.asarray(md.regime)
    assert set(np.unique(reg)) == {0, 1}
    np.testing.assert_array_equal(np.asarray(md.trend), np.where(reg == 0, 1.0, -1.0))


def test_gbm_moments_match_parameters(data):
    p = S.GBMParams()
    r = log_returns(data["gbm"])
    se = p.vol / np.sqrt(r.size)
    assert abs(r.mean() - p.drift) < 4 * se
    assert abs(r.std() / p.vol - 1) < 0.03
    assert abs(excess_kurtosis(r)) < 0.3
    assert abs(acf_sq(r)) < 0.05


def test_garch_volatility_clustering(data):
    p = S.GARCHParams()
    r_garch, r_gbm = log_returns(data["garch"]), log_returns(data["gbm"])
    assert acf_sq(r_garch) > 0.05
    assert acf_sq(r_garch) > acf_sq(r_gbm) + 0.05
    assert excess_kurtosis(r_garch) > 0.3
    target = np.sqrt(p.omega / (1 - p.alpha - p.beta))
    assert abs(r_garch.std() / target - 1) < 0.15


def test_merton_fat_tails_and_variance(data):
    p = S.MertonParams()
    r_jump, r_gbm = log_returns(data["merton"]), log_returns(data["gbm"])
    assert excess_kurtosis(r_jump) > excess_kurtosis(r_gbm) + 2.0
    var = p.vol**2 + p.jump_intensity * (p.jump_mean**2 + p.jump_vol**2)
    assert abs(r_jump.var() / var - 1) < 0.15
    mean = p.drift + p.jump_intensity * p.jump_mean
    assert abs(r_jump.mean() - mean) < 4 * np.sqrt(var / r_jump.size)


def test_mixed_has_all_features(data):
    r = log_returns(data["mixed"])
    assert acf_sq(r) > 0.02
    assert excess_kurtosis(r) > 1.0
    assert len(np.unique(np.asarray(data["mixed"].regime))) == 3


def test_poisson_counts():
    u = jax.random.uniform(jax.random.key(0), (200_000,))
    for lam in (0.0, 0.05, 1.0):
        n = np.asarray(S._poisson(u, jnp.float32(lam)))
        assert abs(n.mean() - lam) < 0.01 + 4 * np.sqrt(lam / n.size)
        assert abs(n.var() - lam) < 0.02 + 0.05 * lam
