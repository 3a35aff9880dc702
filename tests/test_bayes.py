"""The ``bayes`` reference: a forward HMM filter with the generator's true parameters, run on
device through the one rollout, its dead band and TP chosen on training data only."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from tpfl_jax.baselines import (
    bayes_filter,
    has_regime_chain,
    make_references,
    reference_candidates,
)
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.loop import seed_keys
from tpfl_jax.market import synthetic
from tpfl_jax.market.specs import SyntheticMarkets, WalkForwardMarkets

ENV = TradingEnv(window=8, n_tp=2)
_FILTER = jax.jit(bayes_filter)
_FILTER16 = jax.jit(lambda m, s: bayes_filter(m, s, 16))


def numpy_filter(close, open_, p):
    """Float64 forward filter of ``close`` [P, T] (the same model, written independently):
    posterior [P, T, K] and expected next-bar arithmetic return [P, T]."""
    drift, vol = np.asarray(p.drift, float), np.asarray(p.vol, float)
    trans = np.asarray(p.transition, float)
    trans = trans / trans.sum(1, keepdims=True)
    w, v = np.linalg.eig(trans.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi = pi / pi.sum()
    a, b = float(p.garch_alpha), float(p.garch_beta)
    lam, jm, jv, g = (float(x) for x in (p.jump_intensity, p.jump_mean, p.jump_vol, p.gap_vol))
    close, open_ = np.asarray(close, float), np.asarray(open_, float)
    prev = np.concatenate([open_[:, :1], close[:, :-1]], 1)
    r = np.log(close / prev)
    n_p, n_t = r.shape
    post, edge = np.zeros((n_p, n_t, len(drift))), np.zeros((n_p, n_t))
    njumps = np.arange(3.0)
    pn = np.exp(-lam) * lam ** njumps / np.array([1.0, 1.0, 2.0])
    for i in range(n_p):
        pred, h = pi.copy(), 1.0
        for t in range(n_t):
            A = vol[:, None] ** 2 * h
            B = (njumps * jv ** 2 + g ** 2)[None, :]
            d = r[i, t] - drift[:, None] - njumps[None, :] * jm
            dens = pn[None, :] * np.exp(-0.5 * d ** 2 / (A + B)) / np.sqrt(2 * np.pi * (A + B))
            joint = pred[:, None] * dens
            joint /= joint.sum()
            post[i, t] = joint.sum(1)
            ez2 = np.sum(joint * (B / (A + B) + A * d ** 2 / (A + B) ** 2))
            h = (1 - a - b) + (a * ez2 + b) * h
            pred = post[i, t] @ trans
            gross = np.exp(drift + 0.5 * (vol ** 2 * h + g ** 2)) * np.exp(
                lam * (np.exp(jm + 0.5 * jv ** 2) - 1))
            edge[i, t] = pred @ gross - 1.0
    return post, edge


@pytest.mark.parametrize("kind", ["regime", "mixed"])
def test_device_filter_equals_a_float64_numpy_filter(kind):
    """Regime (no GARCH, no jumps) and mixed (both) through one compiled filter."""
    src = synthetic.make_params(kind).to_mixed()      # one params type: one program for both
    m = synthetic.simulate(jax.random.key(0), src, 3, 200, 4)
    run = _FILTER
    post, edge = run(m, src)
    want_post, want_edge = numpy_filter(m.close, m.open, src.to_mixed())
    np.testing.assert_allclose(np.asarray(post), want_post, atol=1e-4)
    scale = np.max(np.abs(np.asarray(src.drift)))
    np.testing.assert_allclose(np.asarray(edge), want_edge / scale, atol=1e-3)
    # the posterior tracks the hidden regime (better than the stationary guess of 1/3)
    assert np.mean(np.argmax(want_post, -1) == np.asarray(m.regime)) > 0.55
    # the window-restricted filter equals the full one while the window holds every bar
    post16, _ = _FILTER16(m, src)
    np.testing.assert_allclose(np.asarray(post16[:, :16]), np.asarray(post[:, :16]), atol=1e-5)
    assert not np.allclose(np.asarray(post16[:, 100:]), np.asarray(post[:, 100:]), atol=1e-3)
    # causal: bars after t change nothing at t
    post2, edge2 = run(m.replace(close=m.close.at[:, 121:].multiply(1.05)), src)
    np.testing.assert_array_equal(np.asarray(edge2[:, :121]), np.asarray(edge[:, :121]))
    assert not np.allclose(np.asarray(post2[:, 121:]), np.asarray(post[:, 121:]), atol=1e-3)


def test_bayes_family_only_on_markets_with_a_regime_chain():
    assert has_regime_chain(SyntheticMarkets(kind="regime"))
    assert has_regime_chain(SyntheticMarkets(kind="mixed"))
    assert not has_regime_chain(SyntheticMarkets(kind="gbm"))
    assert not has_regime_chain(WalkForwardMarkets(train_bars=100, deploy_bars=50, window=8))
    assert "bayes" in reference_candidates(ENV)
    assert "bayes" not in reference_candidates(ENV, has_labels=False)
    names = [n for n, _ in reference_candidates(ENV)["bayes"]]
    assert names[0] == "bayes_band0_tp0" and len(names) == len(set(names))


@struct.dataclass
class _Given:
    """A source that carries its cycle's markets (so new deploy bars never recompile)."""

    params: Any
    train: Any
    deploy: Any

    def to_mixed(self):
        return self.params.to_mixed()


@dataclasses.dataclass(frozen=True)
class _GivenMarkets:
    kind: str = "regime"

    def cycle_markets(self, arg, key, cycle):
        return arg.train, arg.deploy


def test_bayes_choice_is_made_on_training_data_only():
    """Every family's choice (the Bayes dead band and TP included) does not move when only the
    deploy market changes; the deploy PnL does."""
    src = synthetic.make_params("regime")
    train, dep1, dep2 = (synthetic.simulate(jax.random.key(i), src, 6, 90, 2) for i in range(3))
    params = ENV.make_params(train, max_steps_in_episode=30, tp_mults=(1.0, 2.0))
    run = make_references(ENV, _GivenMarkets(), 1, 4, 30, select_episodes=16)
    outs = [jax.device_get(run(seed_keys(0, 1), _Given(src, train, d), params))
            for d in (dep1, dep2)]
    assert "bayes" in outs[0]
    for fam in outs[0]:
        np.testing.assert_array_equal(outs[0][fam][1], outs[1][fam][1])
    assert not np.array_equal(outs[0]["bayes"][0].pnl, outs[1]["bayes"][0].pnl)
    assert np.any(outs[0]["bayes"][0].trades > 0)


def test_levels_table_gives_every_row_as_a_fraction_of_bayes_and_labels_the_oracle():
    import pandas as pd

    from tpfl_jax.results import levels_table

    arms = pd.DataFrame({"policy": ["a", "a"], "seed": [0, 1], "oos_pnl": [40.0, 60.0]})
    refs = pd.DataFrame({"rule": ["bayes", "bayes", "oracle", "oracle"], "seed": [0, 1, 0, 1],
                         "oos_pnl": [100.0, 100.0, 150.0, 150.0]})
    t = levels_table(arms, refs).set_index("name")
    assert t.loc["a", "frac_bayes"] == pytest.approx(0.5)
    assert t.loc["bayes", "frac_bayes"] == pytest.approx(1.0)
    assert "oracle (hidden labels, not causal)" in t.index
    assert "frac_bayes" not in levels_table(arms, refs[refs.rule == "oracle"])


def test_bayes_rule_trades_the_sign_of_the_edge_outside_its_dead_band():
    from tpfl_jax.baselines import act, strategy
    from tpfl_jax.env.trading import decode_action

    src = synthetic.make_params("regime").to_mixed()
    m = synthetic.simulate(jax.random.key(0), src, 3, 200, 4)   # the filter test's program
    params = ENV.make_params(m, max_steps_in_episode=20, tp_mults=(1.0, 2.0))
    edges = jnp.asarray([0.5, -0.5, 0.2, -0.2, 0.2])
    bands = jnp.asarray([0.25, 0.25, 0.25, 0.25, 0.0])

    @jax.jit
    @jax.vmap
    def side_tp(e, band):
        st = ENV.reset_env(jax.random.key(0), params)[1].replace(bar=30, path=1)
        edge = jnp.zeros((3, 200)).at[1, 30].set(e)
        a = act(ENV, strategy("bayes", 1, band=0.0).replace(band=band), st, params,
                jax.random.key(1), edge)
        return jnp.stack(decode_action(a, ENV.n_tp))

    got = np.asarray(side_tp(edges, bands))
    assert got.tolist() == [[1, 1], [-1, 1], [0, 0], [0, 0], [1, 1]]  # flat inside the band
