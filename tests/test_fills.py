"""Fills through a level: gaps fill at the open; a stop crossed inside a bar by a jump at the
post-jump price, by a continuous move at its level; a TP at its level; never better than offered."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.env.exits import resolve_bar, stop_fill
from tpfl_jax.env.stats import EXIT_NONE, EXIT_SL, EXIT_TP
from tpfl_jax.env.trading import TradingEnv, encode_action
from tpfl_jax.loop import WalkForwardMarkets
from tpfl_jax.market import synthetic
from tpfl_jax.market.types import MarketData, make_market_data, pack_bits, unpack_bits

N_BARS, M = 24, 4
ENV = TradingEnv(window=2, n_tp=2, premature_horizon=3)
LONG1, SHORT1 = encode_action(1, 0, 2), encode_action(-1, 0, 2)
LONG2 = encode_action(1, 1, 2)


def path_market(paths=None, opens=None, jumps=None, m=M):
    """Flat bars at 100 (vol_unit 1.0) with intrabar paths; ``paths`` maps bar -> m points after
    the open, ``jumps`` bar -> m jump flags (default: continuous moves), ``opens`` bar -> open.
    High/low come from the open and the path. ``m = 0``: the same OHLC bars without a path."""
    pts = np.full((N_BARS, M), 100.0)
    op = np.full(N_BARS, 100.0)
    jmp = np.zeros((N_BARS, M), bool)
    for b, v in (paths or {}).items():
        pts[b] = v
    for b, v in (opens or {}).items():
        op[b] = v
    for b, v in (jumps or {}).items():
        jmp[b] = v
    hi, lo = np.maximum(op, pts.max(-1)), np.minimum(op, pts.min(-1))
    f = lambda a: jnp.asarray(np.asarray(a)[None], jnp.float32)  # noqa: E731
    return MarketData(open=f(op), high=f(hi), low=f(lo), close=f(pts[:, -1]),
                      volume=f(np.full(N_BARS, 1e6)), vol_unit=f(np.ones(N_BARS)),
                      regime=jnp.zeros((1, N_BARS), jnp.int32), trend=f(np.zeros(N_BARS)),
                      symbol_id=jnp.zeros((1,), jnp.int32), intrabar=f(pts[:, :m]),
                      intrabar_jump_bits=pack_bits(jmp[None, :, :m]))


def run(market, actions, start=2, **kw):
    """Trade records of each step from decision bar ``start`` (no costs, SL 1 vol unit)."""
    base = dict(tp_mults=(1.0, 2.0), sl_mult=1.0, fee_bps=0.0, half_spread_bps=0.0,
                max_holding=5, max_steps_in_episode=10)
    params = ENV.make_params(market, **{**base, **kw})
    _, state = ENV.reset(jax.random.key(0), params)
    state = state.replace(bar=jnp.int32(start), path=jnp.int32(0))
    out = []
    for i, a in enumerate(actions):
        _, state, _, _, _, info = ENV.step(jax.random.key(i), state, a, params)
        out.append({k: np.asarray(v).item() for k, v in info["trade"].items()})
    return out


def test_long_sl_crossed_by_a_jump_fills_at_the_post_jump_price():
    # entered at bar 3's open (100), SL 99; the path jumps from 100.2 to 95 inside bar 3
    m = path_market({3: (100.2, 100.1, 95.0, 95.5)}, jumps={3: (0, 0, 1, 0)})
    (t,) = run(m, [LONG1])
    assert t["closed"] and t["exit_reason"] == EXIT_SL and t["sl_price"] == pytest.approx(99)
    assert t["exit_price"] == pytest.approx(95.0)
    assert t["r_realised"] == pytest.approx(-5.0) and t["r_realised"] < -1
    assert t["pnl"] == pytest.approx(-500.0)
    assert t["mae"] == pytest.approx(5.0)          # the MAE covers the fill beyond the stop


def test_short_sl_crossed_by_a_jump_mirrored():
    m = path_market({3: (99.8, 99.9, 105.0, 104.5)}, jumps={3: (0, 0, 1, 0)})
    (t,) = run(m, [SHORT1])
    assert t["exit_reason"] == EXIT_SL and t["exit_price"] == pytest.approx(105.0)
    assert t["r_realised"] == pytest.approx(-5.0) and t["mae"] == pytest.approx(5.0)


def test_jump_on_a_later_bar_of_a_held_trade():
    m = path_market({4: (100.3, 96.0, 97.0, 97.5)}, jumps={4: (0, 1, 0, 0)})
    out = run(m, [LONG1, LONG1])
    assert not out[0]["closed"]
    assert out[1]["exit_reason"] == EXIT_SL and out[1]["exit_price"] == pytest.approx(96.0)
    assert out[1]["r_realised"] == pytest.approx(-4.0)


def test_gap_at_the_open_fills_at_the_open():
    # held long with SL 99; bar 4 opens at 97 and trades lower: the gap fill is the open
    m = path_market({4: (96.0, 96.5, 97.5, 98.0)}, opens={4: 97.0}, jumps={4: (1, 1, 1, 1)})
    out = run(m, [LONG1, LONG1])
    t = out[1]
    assert t["exit_reason"] == EXIT_SL and t["exit_price"] == pytest.approx(97.0)
    assert t["r_realised"] == pytest.approx(-3.0)
    # the same gap without a known path fills at the open too
    t0 = run(path_market({4: (96.0, 96.5, 97.5, 98.0)}, opens={4: 97.0}, m=0), [LONG1, LONG1])[1]
    assert t0["exit_price"] == pytest.approx(97.0)


def test_continuous_crossing_fills_at_the_level_discrete_prices_at_the_first_beyond():
    path = {3: (99.5, 98.9, 98.5, 98.7)}
    (t,) = run(path_market(path), [LONG1])        # diffusion passes through the level
    assert t["exit_reason"] == EXIT_SL and t["exit_price"] == pytest.approx(99.0)
    assert t["r_realised"] == pytest.approx(-1.0) and t["mae"] == pytest.approx(1.5)
    (t,) = run(path_market(path, jumps={3: (1, 1, 1, 1)}), [LONG1])   # discrete prices
    assert t["exit_price"] == pytest.approx(98.9)  # the first price beyond, not the low
    assert t["r_realised"] == pytest.approx(-1.1, abs=1e-5)
    assert t["mae"] == pytest.approx(1.5)          # the bar's low (order-free bound), >= fill


def test_the_first_crossing_decides_between_jump_and_diffusion():
    # diffusion crosses first (98.8), a later jump to 90 does not move the fill
    (t,) = run(path_market({3: (99.5, 98.8, 90.0, 91.0)}, jumps={3: (0, 0, 1, 0)}), [LONG1])
    assert t["exit_price"] == pytest.approx(99.0)
    # a jump that stays above the stop (99.5), then diffusion through it: the level
    (t,) = run(path_market({3: (99.5, 98.9, 98.5, 98.7)}, jumps={3: (1, 0, 0, 0)}), [LONG1])
    assert t["exit_price"] == pytest.approx(99.0)


def test_bars_without_a_path_fill_the_stop_at_the_level():
    m = path_market({3: (100.2, 100.1, 95.0, 95.5)}, jumps={3: (0, 0, 1, 0)}, m=0)
    assert m.n_intrabar == 0
    (t,) = run(m, [LONG1])
    assert t["exit_reason"] == EXIT_SL and t["exit_price"] == pytest.approx(99.0)
    assert t["r_realised"] == pytest.approx(-1.0)


def test_tp_is_a_limit_order_filled_at_its_level_even_through_a_jump():
    m = path_market({3: (100.2, 104.0, 103.0, 103.5)}, jumps={3: (0, 1, 0, 0)})
    (t,) = run(m, [LONG1])
    assert t["exit_reason"] == EXIT_TP and t["exit_price"] == pytest.approx(101.0)


@pytest.mark.parametrize("sl_first,reason,price", [(True, EXIT_SL, 96.0),
                                                    (False, EXIT_TP, 102.0)])
def test_tp_and_sl_in_one_bar_keep_the_configured_order(sl_first, reason, price):
    # the path reaches the TP (102) first, then jumps through the SL: the configured order
    # decides (default SL first, conservative), the SL fill is the post-jump price
    m = path_market({3: (102.5, 101.0, 96.0, 97.0)}, jumps={3: (0, 0, 1, 0)})
    (t,) = run(m, [LONG2], sl_first=sl_first)
    assert t["exit_reason"] == reason and t["exit_price"] == pytest.approx(price)


def test_stop_fill_is_the_first_crossing_and_never_better_than_the_level():
    rng = np.random.default_rng(0)
    n, m = 4000, 8
    side = rng.choice([-1.0, 1.0], n)
    o = np.full(n, 100.0)
    jump = rng.random((n, m)) < 0.1
    steps = rng.normal(0, 0.5, (n, m)) + jump * rng.normal(0, 4, (n, m))
    pts = o[:, None] + np.cumsum(steps, -1)
    hi, lo = np.maximum(o, pts.max(-1)), np.minimum(o, pts.min(-1))
    sl = o - side * rng.uniform(0.2, 3.0, n)
    tp = o + side * rng.uniform(0.2, 3.0, n)
    bar = jax.jit(resolve_bar, static_argnames="check_gap")(
        side, o, tp, sl, o, hi, lo, True, check_gap=False, intrabar=pts, intrabar_jump=jump)
    price, reason = np.asarray(bar.price, np.float64), np.asarray(bar.reason)
    is_sl = reason == EXIT_SL
    assert is_sl.sum() > 1000
    # reference: the first point at or beyond the stop, in time order, if a jump moved into it
    beyond = side[:, None] * (pts - sl[:, None]) <= 0
    first = beyond.argmax(-1)
    ref = np.where(jump[np.arange(n), first], pts[np.arange(n), first], sl)
    np.testing.assert_allclose(price[is_sl], ref[is_sl], rtol=1e-6)
    assert np.all(side[is_sl] * (price[is_sl] - sl[is_sl]) <= 1e-4)        # never better
    assert np.all((price[is_sl] >= lo[is_sl] - 1e-4) & (price[is_sl] <= hi[is_sl] + 1e-4))
    assert np.any(side[is_sl] * (price[is_sl] - sl[is_sl]) < -1.0)          # jumps cost more
    np.testing.assert_allclose(price[reason == EXIT_TP], tp[reason == EXIT_TP], rtol=1e-6)
    assert np.all(reason[~beyond.any(-1) & ~(side * (np.where(side > 0, hi, lo) - tp) >= 0)]
                  == EXIT_NONE)
    # adverse excursion on an SL exit covers the fill
    adv = np.asarray(bar.adv)
    assert np.all(adv[is_sl] >= side[is_sl] * (o[is_sl] - price[is_sl]) - 1e-4)


def test_stop_fill_without_a_crossing_point_or_path_is_the_level():
    assert float(stop_fill(1.0, 99.0, None)) == 99.0
    assert float(stop_fill(1.0, 99.0, jnp.zeros((0,)))) == 99.0
    assert float(stop_fill(1.0, 99.0, jnp.asarray([100.0, 99.5]))) == 99.0
    assert float(stop_fill(-1.0, 101.0, jnp.asarray([100.0, 103.0, 104.0]))) == 103.0
    # a path point exactly at the level fills at the level
    assert float(stop_fill(1.0, 99.0, jnp.asarray([99.5, 99.0, 90.0]))) == 99.0
    path = jnp.asarray([99.5, 97.0, 90.0])
    assert float(stop_fill(1.0, 99.0, path, jnp.asarray([True, True, True]))) == 97.0
    assert float(stop_fill(1.0, 99.0, path, jnp.asarray([True, False, True]))) == 99.0
    # batched: sides [2] x one shared path
    np.testing.assert_allclose(stop_fill(jnp.asarray([1.0, -1.0]), jnp.asarray([99.0, 99.6]),
                                         path), [97.0, 99.6])


def test_make_market_data_intrabar_contract():
    o = np.array([100.0, 100.0])
    h, lo, c = np.array([101.0, 100.5]), np.array([99.0, 99.5]), np.array([100.5, 99.8])
    m0 = make_market_data(o, h, lo, c)
    assert m0.intrabar.shape == (1, 2, 0) and m0.n_intrabar == 0
    assert m0.intrabar_jump.shape == (1, 2, 0) and m0.intrabar_jump_bits.shape == (1, 2, 0)
    ib = np.array([[99.0, 101.0, 100.5], [100.5, 99.5, 99.8]])
    m1 = make_market_data(o, h, lo, c, intrabar=ib)
    assert m1.intrabar.shape == (1, 2, 3) and m1.n_intrabar == 3
    assert m1.intrabar_jump.dtype == jnp.bool_ and bool(jnp.all(m1.intrabar_jump))
    m2 = make_market_data(o, h, lo, c, intrabar=ib, intrabar_jump=ib > 100.0)
    np.testing.assert_array_equal(m2.intrabar_jump[0], ib > 100.0)
    with pytest.raises(ValueError, match=r"intrabar_jump has shape"):
        make_market_data(o, h, lo, c, intrabar=ib, intrabar_jump=np.ones((1, 2, 2), bool))
    with pytest.raises(ValueError, match=r"intrabar_jump given without intrabar"):
        make_market_data(o, h, lo, c, intrabar_jump=np.ones((1, 2, 3), bool))
    with pytest.raises(ValueError, match=r"intrabar has shape"):
        make_market_data(o, h, lo, c, intrabar=np.zeros((3, 3)))
    bad = ib.copy()
    bad[1, 0] = 102.0
    with pytest.raises(ValueError, match=r"intrabar\[0, 1\].*within \[low, high\]"):
        make_market_data(o, h, lo, c, intrabar=bad)
    bad = ib.copy()
    bad[0, -1] = 100.0
    with pytest.raises(ValueError, match=r"intrabar\[0, 0\].*equal to the close"):
        make_market_data(o, h, lo, c, intrabar=bad)


def test_synthetic_bars_keep_their_intrabar_path():
    mk = synthetic.generate("merton", jax.random.key(1), n_paths=3, n_bars=50, substeps=8)
    ib = np.asarray(mk.intrabar)
    assert ib.shape == (3, 50, 8) and mk.intrabar_jump.shape == (3, 50, 8)
    assert mk.intrabar_jump.dtype == jnp.bool_ and bool(jnp.any(mk.intrabar_jump))
    g = synthetic.generate("gbm", jax.random.key(1), n_paths=3, n_bars=50, substeps=8)
    assert g.n_intrabar == 0           # no jumps in GBM: every move is continuous, so a stop
    assert bool(jnp.all(g.high > g.low))  # fills at its level; the bars still have their range
    np.testing.assert_array_equal(ib[..., -1], np.asarray(mk.close))
    o = np.asarray(mk.open)[..., None]
    np.testing.assert_array_equal(np.concatenate([o, ib], -1).max(-1), np.asarray(mk.high))
    np.testing.assert_array_equal(np.concatenate([o, ib], -1).min(-1), np.asarray(mk.low))


@pytest.mark.parametrize("m", [0, M])
def test_walk_forward_windows_cut_the_intrabar_axis(m):
    mk = path_market({5: (100.5, 99.0, 98.0, 99.5)}, m=m)
    wf = WalkForwardMarkets(train_bars=8, deploy_bars=6, window=2)
    train, deploy = wf.cycle_markets(mk, jax.random.key(0), jnp.int32(1))
    assert train.intrabar.shape == (1, 8, m) and deploy.intrabar.shape == (1, 8, m)
    np.testing.assert_array_equal(train.intrabar, mk.intrabar[:, 6:14])
    np.testing.assert_array_equal(deploy.intrabar, mk.intrabar[:, 12:20])
    assert deploy.intrabar_jump.shape == (1, 8, m)


def _sl_trades(market, n_eps=48, steps=60, seed=0):
    """SL-exit trade records of random long/short runs on ``market`` (default costs)."""
    env = TradingEnv(window=8, n_tp=3)
    params = env.make_params(market, tp_mults=(1.0, 2.0, 3.0), max_steps_in_episode=steps,
                             max_holding=10)

    def episode(key):
        k0, k1 = jax.random.split(key)
        _, state = env.reset(k0, params)
        acts = jax.random.randint(k1, (steps,), 1, 7)

        def body(st, a):
            _, st, _, _, info = env.step_env(key, st, a, params)
            return st, (info["trade"], st.bar)

        _, (tr, bars) = jax.lax.scan(body, state, acts)
        return tr, bars, state.path

    tr, bars, path = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(seed), n_eps))
    tr = jax.device_get(tr)
    sel = tr["closed"] & (tr["exit_reason"] == EXIT_SL)
    lo = np.asarray(market.low)[np.asarray(path)[:, None], np.asarray(bars)]
    hi = np.asarray(market.high)[np.asarray(path)[:, None], np.asarray(bars)]
    return {k: np.asarray(v)[sel] for k, v in tr.items()} | {"low": lo[sel], "high": hi[sel]}


def test_merton_sl_fills_are_never_better_than_the_stop():
    mk = synthetic.generate("merton", jax.random.key(3), n_paths=16, n_bars=200,
                            jump_intensity=0.2)
    t = _sl_trades(mk)
    s = t["side"].astype(float)
    assert len(s) > 100
    assert np.all(s * (t["exit_price"] - t["sl_price"]) <= 1e-5 * t["sl_price"])
    assert np.all((t["exit_price"] >= t["low"] * (1 - 1e-6))
                  & (t["exit_price"] <= t["high"] * (1 + 1e-6)))   # the market offered it
    assert np.all(t["r_realised"] <= -1.0 + 1e-4)
    assert np.mean(t["r_realised"] < -1.5) > 0.02                  # jumps through the stop
    # slippage beyond the stop in R (the part a fill at the level would hide): only jumps slip
    slip = s * (t["sl_price"] - t["exit_price"]) / np.abs(t["entry_price"] - t["sl_price"])
    print(f"SL exits {len(s)}: P(slip > 0) {np.mean(slip > 1e-4):.3f}, "
          f"mean slip {np.mean(slip):.3f} R, max {np.max(slip):.2f} R")
    assert 0.2 < np.mean(slip > 1e-4) < 0.7 and np.mean(slip) > 0.2 and np.max(slip) > 2.0


@pytest.mark.parametrize("m", [0, 1, 16, 32, 33, 70])
def test_jump_flags_pack_and_unpack(m):
    flags = np.random.default_rng(m).random((3, 5, m)) < 0.3
    bits = pack_bits(flags)
    assert bits.dtype == jnp.uint32 and bits.shape == (3, 5, -(-m // 32))
    np.testing.assert_array_equal(unpack_bits(bits, m), flags)
    np.testing.assert_array_equal(unpack_bits(bits[1, 2], m), flags[1, 2])
