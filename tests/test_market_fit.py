"""Generators fitted to a training window: the fits recover known parameters, the fresh paths are
a pure function of the key, the block bootstrap resamples the window's own bars, and the
stylised-facts table compares real against generated returns."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.market import fit, synthetic
from tpfl_jax.market.types import make_market_data


def _closes(params, n_bars: int, seed: int = 0) -> np.ndarray:
    md = synthetic.simulate(jax.random.key(seed), params, 1, n_bars, substeps=1)
    return np.asarray(md.close[0], np.float64)


def _np_closes(n: int, seed: int, alpha: float = 0.0, beta: float = 0.0) -> np.ndarray:
    """Closes of a numpy GARCH(1,1) (iid normal at alpha = beta = 0), per-bar vol 1%."""
    rng = np.random.default_rng(seed)
    z, h, r = rng.standard_normal(n), 1.0, np.empty(n)
    for t in range(n):
        r[t] = 0.01 * np.sqrt(h) * z[t]
        h = (1 - alpha - beta) + (alpha * z[t] ** 2 + beta) * h
    return 100 * np.exp(np.cumsum(r))


def test_regime_fit_recovers_known_parameters():
    true = synthetic.RegimeParams(drift=jnp.asarray([0.002, -0.002]),
                                  vol=jnp.asarray([0.006, 0.02]),
                                  transition=jnp.asarray([[0.98, 0.02], [0.03, 0.97]]))
    f = fit.fit_regime(fit.log_returns(_closes(true, 3000)), n_states=2, n_iter=60, restarts=1)
    calm = int(np.argmin(f["vol"]))                      # states are ordered by drift
    np.testing.assert_allclose(np.sort(f["vol"]), [0.006, 0.02], rtol=0.12)   # vol +-12%
    np.testing.assert_allclose(np.diag(f["transition"])[[calm, 1 - calm]], [0.98, 0.97],
                               atol=0.02)                                     # p_stay +-0.02
    np.testing.assert_allclose(f["drift"][[calm, 1 - calm]], [0.002, -0.002], atol=0.0015)
    np.testing.assert_allclose(f["transition"].sum(1), 1.0, rtol=1e-9)


def test_garch_fit_recovers_known_parameters():
    true = synthetic.GARCHParams(drift=3e-4, omega=1e-5, alpha=0.10, beta=0.85)
    f = fit.fit_garch(fit.log_returns(_closes(true, 4000, seed=1)))
    assert abs(f["alpha"] - 0.10) < 0.04 and abs(f["beta"] - 0.85) < 0.06   # +-0.04, +-0.06
    uncond = np.sqrt(f["omega"] / (1 - f["alpha"] - f["beta"]))
    assert abs(uncond / np.sqrt(1e-5 / 0.05) - 1) < 0.15                      # vol +-15%
    assert abs(f["drift"] - 3e-4) < 4e-4


def test_regime_garch_mixture_recovers_regimes_and_clustering():
    true = synthetic.MixedParams(drift=jnp.asarray([0.001, -0.001]),
                                 vol=jnp.asarray([0.008, 0.02]),
                                 transition=jnp.asarray([[0.98, 0.02], [0.03, 0.97]]),
                                 garch_alpha=0.1, garch_beta=0.8, jump_intensity=0.0,
                                 jump_mean=0.0, jump_vol=0.0)
    c = _closes(true, 4000, seed=2)
    p = fit._window_params("regime_garch", c, np.ones_like(c), 2, 60, 0)
    np.testing.assert_allclose(np.sort(p["vol"]), [0.008, 0.02], rtol=0.12)
    assert abs(p["garch_alpha"] - 0.1) < 0.05 and abs(p["garch_beta"] - 0.8) < 0.1


@pytest.fixture(scope="module")
def windows():
    """Two training windows [2, 300] (different regimes) and their fitted params [C=1, S=2]."""
    a, b = _np_closes(300, 2), _np_closes(300, 3, 0.1, 0.85)
    close = np.stack([a, b])
    vol = np.ones_like(close)
    rows, starts = np.asarray([[0, 1]]), np.zeros((1, 2), int)
    return close, vol, rows, starts


def _check_reproducible(gen, src, n: int = 5, bars: int = 60, n_slots: int = 2) -> Any:
    """Same key: the same paths; another key: other paths; path i from slot i % n_slots."""
    m1, m2 = gen(jax.random.key(7), src, n, bars), gen(jax.random.key(7), src, n, bars)
    m3 = gen(jax.random.key(8), src, n, bars)
    np.testing.assert_array_equal(np.asarray(m1.close), np.asarray(m2.close))
    assert not np.allclose(np.asarray(m1.close), np.asarray(m3.close))
    assert np.asarray(m1.symbol_id).tolist() == [i % n_slots for i in range(n)]
    assert m1.close.shape == (n, bars) and bool(jnp.all(m1.vol_unit > 0))
    return m1


def test_fitted_sources_are_reproducible_from_the_key(windows):
    """regime_fit here; garch_fit in test_market_panel's build test, bootstrap below."""
    close, vol, rows, starts = windows
    params = fit.fit_windows("regime_fit", close, vol, rows, starts, 300, n_iter=20)
    again = fit.fit_windows("regime_fit", close, vol, rows, starts, 300, n_iter=20)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))       # the fit: seeded
    src = (jax.tree.map(lambda x: x[0], params), jnp.arange(2, dtype=jnp.int32))
    gen = jax.jit(fit.FittedGenerator("regime_fit", substeps=2), static_argnums=(2, 3))
    m = _check_reproducible(gen, src)
    np.testing.assert_allclose(np.asarray(m.open[:2, 0]), close[:, -1], rtol=1e-5)


def test_fitted_frame_lists_every_window():
    close = _np_closes(200, 4)[None]
    g = fit.fit_windows("garch_fit", close, np.ones_like(close), np.zeros((2, 1), int),
                        np.asarray([[0], [100]]), 100)
    df = fit.fitted_frame("garch_fit", g, ["X"], np.zeros((2, 1), int))
    assert df[["cycle", "symbol"]].values.tolist() == [[0, "X"], [1, "X"]]
    assert {"omega", "alpha", "beta", "uncond_vol", "drift", "s0"} <= set(df.columns)


def test_block_bootstrap_resamples_the_window_bars():
    rng = np.random.default_rng(0)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200)))
    o = np.concatenate([[100.0], c[:-1]]) * np.exp(rng.normal(0, 0.002, 200))
    h, lo = np.maximum(o, c) * 1.004, np.minimum(o, c) * 0.995
    win = make_market_data(o, h, lo, c, volume=np.arange(200.0) + 1)
    boot = jax.jit(fit.FittedGenerator("bootstrap", block_len=25.0), static_argnums=(2, 3))
    two = jax.tree.map(lambda x: jnp.concatenate([x, x]), win)
    out = _check_reproducible(boot, two.replace(symbol_id=jnp.arange(2, dtype=jnp.int32)),
                              8, 400)                   # both slots resample the same window
    vol = np.asarray(out.volume)                           # volume = 1 + source bar index
    src = vol.astype(int) - 1
    assert src.min() >= 1 and src.max() <= 199             # bars 1..T-1 (bar 0 has no prev)
    cont = (np.diff(src, axis=1) == 1) | ((src[:, 1:] == 1) & (src[:, :-1] == 199))
    assert 15 < 1 / (1 - cont.mean()) < 40                 # mean block length ~ 25
    # each bar's close move and gap are those of its source bar
    co = np.log(np.asarray(out.close) / np.asarray(out.open))
    np.testing.assert_allclose(co, np.log(c / o)[src], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.close[:, 0]) / c[-1],
                               np.exp(np.log(o[src[:, 0]] / c[src[:, 0] - 1])
                                      + np.log(c / o)[src[:, 0]]), rtol=1e-4)


def test_stylised_facts_table_and_figure(tmp_path):
    real = _np_closes(600, 5, 0.15, 0.8)[None]
    gen = np.stack([_np_closes(600, 6 + i) for i in range(4)])
    t = fit.stylised_facts(real, gen)
    assert list(t.columns) == ["real", "generated"]
    assert {"vol", "kurtosis", "mean_run", "acf_abs_1", "acf_abs_20", "run_1", "run_5+"} \
        <= set(t.index)
    assert t.loc["acf_abs_1", "real"] > t.loc["acf_abs_1", "generated"]   # GARCH clusters
    assert abs(t.loc[["run_1", "run_2", "run_3", "run_4", "run_5+"], "real"].sum() - 1) < 1e-9
    fit.plot_stylised_facts(t, str(tmp_path / "facts.png"))
    assert (tmp_path / "facts.png").stat().st_size > 1000
