import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.accounting import tp_stats
from tpfl_jax.env.compat import TradingEnvV3
from tpfl_jax.env.stats import EXIT_END, EXIT_MANUAL, EXIT_SL, EXIT_TIME, EXIT_TP
from tpfl_jax.env.trading import (
    FEATURE_BLOCKS,
    FEATURE_SETS,
    TradingEnv,
    decode_action,
    encode_action,
)
from tpfl_jax.market.types import MarketData, make_market_data

N_BARS = 24


def bars_market(overrides=None, trend=0.0):
    """Flat bars at 100 with vol_unit 1.0; ``overrides`` maps bar -> (o, h, l, c)."""
    ohlc = np.full((N_BARS, 4), 100.0, np.float32)
    for b, v in (overrides or {}).items():
        ohlc[b] = v
    f = lambda a: jnp.asarray(a[None, :], jnp.float32)  # noqa: E731
    return MarketData(open=f(ohlc[:, 0]), high=f(ohlc[:, 1]), low=f(ohlc[:, 2]),
                      close=f(ohlc[:, 3]), volume=f(np.full(N_BARS, 1e6)),
                      vol_unit=f(np.ones(N_BARS)), regime=jnp.zeros((1, N_BARS), jnp.int32),
                      trend=f(np.full(N_BARS, trend)), symbol_id=jnp.zeros((1,), jnp.int32),
                      intrabar=jnp.zeros((1, N_BARS, 0), jnp.float32),
                      intrabar_jump_bits=jnp.zeros((1, N_BARS, 0), jnp.uint32))


ENV = TradingEnv(window=2, n_tp=2, premature_horizon=3)


def params_for(market, **kw):
    base = dict(tp_mults=(1.0, 2.0), sl_mult=1.0, fee_bps=0.0, half_spread_bps=0.0,
                max_holding=5, max_steps_in_episode=10)
    return ENV.make_params(market, **{**base, **kw})


def run(market, actions, start=2, **kw):
    """Step from decision bar ``start`` with the given actions; returns per-step outputs."""
    params = params_for(market, **kw)
    _, state = ENV.reset(jax.random.key(0), params)
    state = state.replace(bar=jnp.int32(start), path=jnp.int32(0))
    out = []
    for i, a in enumerate(actions):
        obs, state, rew, term, trunc, info = ENV.step(jax.random.key(i), state, a, params)
        out.append(dict(reward=float(rew), term=bool(term), trunc=bool(trunc),
                        trade={k: np.asarray(v).item() for k, v in info["trade"].items()},
                        terms={k: float(v) for k, v in info["reward_terms"].items()},
                        bonus_accuracy=float(info["bonus_accuracy"]),
                        state=state))
    return out


LONG1, LONG2, SHORT1 = encode_action(1, 0, 2), encode_action(1, 1, 2), encode_action(-1, 0, 2)


def test_action_codec():
    for side, k in [(0, 0), (1, 0), (1, 1), (-1, 0), (-1, 1)]:
        a = encode_action(side, k, 2)
        s, kk = decode_action(a, 2)
        assert int(s) == side and (side == 0 or int(kk) == k)
    assert ENV.action_space().n == 5
    with pytest.raises(ValueError, match="tp_index"):
        encode_action(1, 2, 2)


def test_long_tp_hit_intrabar_pays_bonus():
    m = bars_market({3: (100, 101.5, 99.5, 101)})
    (s,) = run(m, [LONG1], tp_reward_weight=2.0)
    t = s["trade"]
    assert t["closed"] and t["exit_reason"] == EXIT_TP and t["hit"]
    assert t["entry_price"] == 100 and t["exit_price"] == pytest.approx(101)
    assert t["pnl"] == pytest.approx(100.0) and t["r_realised"] == pytest.approx(1.0)
    assert t["r_planned"] == pytest.approx(1.0) and t["tp_zone_accuracy"] == 1.0
    # default accuracy "skill": a hit at TP 1 / SL 1 is worth 1 - 0.5 (no-edge hit probability)
    assert s["bonus_accuracy"] == pytest.approx(0.5)
    assert s["terms"]["tp_bonus"] == pytest.approx(0.5 * 5.0 * 2.0)
    (s,) = run(m, [LONG1], tp_reward_weight=2.0, accuracy="mfe_ratio")
    assert s["terms"]["tp_bonus"] == pytest.approx(1.0 * 5.0 * 2.0)
    (s,) = run(m, [LONG1], tp_reward_weight=2.0, accuracy="hit")
    assert s["terms"]["tp_bonus"] == pytest.approx(1.0 * 5.0 * 2.0)


def test_accuracy_modes_on_a_losing_exit():
    """MFE-ratio pays partial credit on a manual loser; hit and skill pay nothing."""
    m = bars_market({4: (100.5, 100.6, 100.4, 100.5), 5: (99.5, 99.6, 99.4, 99.5)})
    for mode, paid in (("mfe_ratio", True), ("hit", False), ("skill", False)):
        s1, s2, s3 = run(m, [LONG2, LONG2, 0], accuracy=mode)
        t = s3["trade"]
        assert t["exit_reason"] == EXIT_MANUAL and t["pnl"] < 0 and 0 < t["tp_zone_accuracy"] < 1
        assert (s3["terms"]["tp_bonus"] > 0) == paid, mode
    assert s3["bonus_accuracy"] == pytest.approx(-1.0 / 3.0)   # 0 - sl / (tp + sl)
    with pytest.raises(ValueError, match="accuracy"):
        params_for(m, accuracy="mfe")


def test_drawdown_charged_on_its_increase_not_its_level():
    """``increase``: an episode pays the max drawdown once; ``level``: every step in it."""
    m = bars_market({4: (99, 99, 99, 99), 5: (99, 99, 99, 99), 6: (99, 99, 99, 99)})
    acts = [LONG2, LONG2, LONG2, LONG2]
    inc = run(m, acts, max_holding=10, sl_mult=5.0)
    lvl = run(m, acts, max_holding=10, sl_mult=5.0, drawdown_mode="level")
    dd = [-s["terms"]["drawdown_penalty"] for s in inc]
    assert dd[0] == 0.0 and dd[1] > 0 and dd[2] == 0.0 and dd[3] == 0.0
    # increase in vol units: 1% drawdown / 1% bar volatility = 1.0 (coef 1)
    assert dd[1] == pytest.approx(0.01 / 0.01, rel=1e-3)
    assert float(inc[-1]["state"].max_drawdown) == pytest.approx(0.01, rel=1e-3)
    lv = [-s["terms"]["drawdown_penalty"] for s in lvl]
    assert lv[1] > 0 and lv[2] == pytest.approx(lv[1]) and lv[3] == pytest.approx(lv[1])


def test_short_mirrored():
    m = bars_market({3: (100, 100.5, 98.9, 99.2)})
    (s,) = run(m, [SHORT1])
    t = s["trade"]
    assert t["side"] == -1 and t["exit_reason"] == EXIT_TP and t["exit_price"] == pytest.approx(99)
    assert t["pnl"] == pytest.approx(100.0)


@pytest.mark.parametrize("sl_first,reason,price", [(True, EXIT_SL, 99.0), (False, EXIT_TP, 101.0)])
def test_tp_and_sl_same_bar(sl_first, reason, price):
    m = bars_market({3: (100, 101.5, 98.5, 100)})
    (s,) = run(m, [LONG1], sl_first=sl_first)
    assert s["trade"]["exit_reason"] == reason
    assert s["trade"]["exit_price"] == pytest.approx(price)
    if reason == EXIT_SL:  # conservative: the bar's high does not count as excursion
        assert s["trade"]["tp_zone_accuracy"] == 0.0


@pytest.mark.parametrize("gap_open,reason", [(102.0, EXIT_TP), (98.0, EXIT_SL)])
def test_gap_fills_at_open(gap_open, reason):
    m = bars_market({4: (gap_open, gap_open + 0.2, gap_open - 0.2, gap_open)})
    s1, s2 = run(m, [LONG1, LONG1])
    assert not s1["trade"]["closed"]
    assert s2["trade"]["exit_reason"] == reason
    assert s2["trade"]["exit_price"] == pytest.approx(gap_open)


def test_time_barrier():
    out = run(bars_market(), [LONG2, LONG2, LONG2], max_holding=2)
    assert not out[0]["trade"]["closed"]
    assert out[1]["trade"]["exit_reason"] == EXIT_TIME
    assert out[1]["trade"]["exit_bar"] == 4


def test_manual_exit_and_premature_flag():
    m = bars_market({4: (100.5, 100.6, 100.4, 100.5), 6: (100, 102.5, 100, 100)})
    s1, s2 = run(m, [LONG2, 0])
    t = s2["trade"]
    assert t["exit_reason"] == EXIT_MANUAL and t["exit_price"] == pytest.approx(100.5)
    assert t["premature"]  # price reached TP (102) within 3 bars after the exit
    assert 0 < t["tp_zone_accuracy"] < 1 and s2["terms"]["tp_bonus"] == 0.0   # skill: no hit
    s1, s2 = run(m, [LONG2, 0], accuracy="mfe_ratio")
    assert s2["terms"]["tp_bonus"] == pytest.approx(5.0 * s2["trade"]["tp_zone_accuracy"])
    # the opposite side also closes (and does not reverse on the same step)
    s1, s2 = run(m, [LONG2, SHORT1])
    assert s2["trade"]["exit_reason"] == EXIT_MANUAL and int(s2["state"].side) == 0


def test_not_premature_when_tp_never_reached():
    s1, s2 = run(bars_market(), [LONG2, 0])
    assert s2["trade"]["exit_reason"] == EXIT_MANUAL and not s2["trade"]["premature"]


def test_end_exit_on_truncation():
    s1, s2 = run(bars_market(), [LONG2, LONG2], max_steps_in_episode=2, max_holding=10)
    assert s2["trunc"] and s2["trade"]["exit_reason"] == EXIT_END


def test_costs_charged_on_both_sides():
    m = bars_market({3: (100, 101.5, 99.5, 101)})
    (s,) = run(m, [LONG1], fee_bps=5.0, half_spread_bps=2.0)
    units = 10_000 / 100
    cost = units * 100 * 7e-4 + units * 101 * 7e-4
    assert s["trade"]["pnl"] == pytest.approx(units * 1.0 - cost, rel=1e-5)
    equity = float(s["state"].equity)
    assert equity == pytest.approx(10_000 + units - cost, rel=1e-6)


def test_ruin_terminates():
    m = bars_market({4: (45, 45, 45, 45)})
    s1, s2 = run(m, [LONG2, LONG2], position_size=1.0, sl_mult=60.0)
    assert s2["term"]


def test_regime_alignment_term():
    """Off by default; the hidden label is opt-in; the causal signal reads past closes only."""
    coef = {"alignment": 0.05}
    (s,) = run(bars_market(trend=1.0), [LONG2])
    assert s["terms"]["alignment"] == 0.0
    (s,) = run(bars_market(trend=1.0), [LONG2], coefs=coef, alignment_source="hidden_label")
    assert s["terms"]["alignment"] > 0
    (s,) = run(bars_market(trend=1.0), [encode_action(-1, 1, 2)], coefs=coef,
               alignment_source="hidden_label")
    assert s["terms"]["alignment"] < 0
    # causal: the hidden label is ignored; a rise over the last `window` bars is an up-trend
    (s,) = run(bars_market(trend=1.0), [LONG2], coefs=coef)
    assert s["terms"]["alignment"] == 0.0
    up = bars_market({0: (98, 98, 98, 98), 1: (99, 99, 99, 99)}, trend=-1.0)
    (s,) = run(up, [LONG2], coefs=coef)
    assert s["terms"]["alignment"] > 0


def test_validation_errors_name_the_field():
    m = bars_market()
    with pytest.raises(ValueError, match="n_bars"):
        ENV.make_params(m, tp_mults=(1.0, 2.0), max_steps_in_episode=100)
    with pytest.raises(ValueError, match="tp_mults"):
        ENV.make_params(m, tp_mults=(1.0, 2.0, 3.0), max_steps_in_episode=10)
    with pytest.raises(ValueError, match="sl_mult"):
        ENV.make_params(m, tp_mults=(1.0, 2.0), sl_mult=0.0, max_steps_in_episode=10)


# ---------------------------------------------------------------- random rollouts
def gbm_market(seed=0, n_paths=4, n_bars=400, sub=8):
    rng = np.random.default_rng(seed)
    r = rng.normal(0, 0.01 / np.sqrt(sub), (n_paths, n_bars, sub))
    lp = np.log(100) + np.cumsum(r.reshape(n_paths, -1), 1).reshape(n_paths, n_bars, sub)
    trend = np.sign(rng.normal(size=(n_paths, n_bars)))
    return make_market_data(np.exp(lp[..., 0]), np.exp(lp.max(-1)), np.exp(lp.min(-1)),
                            np.exp(lp[..., -1]), volume=np.full((n_paths, n_bars), 1e6),
                            trend=trend)


RENV = TradingEnv(window=8, n_tp=3, features="base")     # the hand-checked observation


def rollout(params, key, actions):
    """Scan the env over a fixed action sequence ``[T, N]`` from N resets."""
    n = actions.shape[1]
    _, st = jax.vmap(RENV.reset, (0, None))(jax.random.split(key, n), params)

    def f(st, xs):
        k, a = xs
        obs, st, r, te, tr, info = jax.vmap(RENV.step, (0, 0, 0, None))(
            jax.random.split(k, n), st, a, params)
        return st, (obs, r, info)

    keys = jax.random.split(jax.random.fold_in(key, 1), actions.shape[0])
    return jax.lax.scan(f, st, (keys, actions))[1]


def random_actions(seed, t=120, n=16):
    return jax.random.randint(jax.random.key(seed), (t, n), 0, RENV.num_actions)


def test_step_batch_equals_vmapped_step_bit_for_bit():
    """``step_batch`` (auto-reset computed only on steps where some env is done) gives the
    outputs of ``vmap(step)`` exactly, on steps with and without finished episodes."""
    from tpfl_jax.env.trading import step_batch

    params = RENV.make_params(gbm_market(), tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=7)
    n = 16
    _, st0 = jax.vmap(RENV.reset, (0, None))(jax.random.split(jax.random.key(3), n), params)
    st0 = st0.replace(time=st0.time + jnp.arange(n) % 5)    # episodes end on different steps

    def run(batched):
        def f(st, xs):
            k, a = xs
            ks = jax.random.split(k, n)
            out = (step_batch(RENV, ks, st, a, params) if batched
                   else jax.vmap(RENV.step, (0, 0, 0, None))(ks, st, a, params))
            return out[1], out
        keys = jax.random.split(jax.random.key(4), 30)
        return jax.jit(lambda: jax.lax.scan(f, st0, (keys, random_actions(5, 30, n)))[1])()

    a, b = run(True), run(False)
    done = np.asarray(a[3] | a[4])
    some = done.any(axis=1)
    assert some.any() and (~some).any() and (some & ~done.all(axis=1)).any()
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert RENV.step_batch is not None        # the method PPO picks up


def test_weight_change_never_retraces():
    params = RENV.make_params(gbm_market(), tp_mults=(0.5, 1.0, 2.0),
                              max_steps_in_episode=100)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def total(p):
        return rollout(p, jax.random.key(0), random_actions(0))[1].sum()

    for w in [0.0, 0.5, 1.0, 2.0, 5.0]:
        total(params.replace(tp_reward_weight=jnp.float32(w)))
    # new market data of the same shape does not retrace either
    total(params.replace(market=gbm_market(seed=1)))


def test_vmap_over_eight_weights():
    params = RENV.make_params(gbm_market(), tp_mults=(0.5, 1.0, 2.0),
                              max_steps_in_episode=100)
    weights = jnp.linspace(0.0, 3.5, 8)
    batched = params.replace(tp_reward_weight=weights)
    axes = jax.tree.map(lambda _: None, params).replace(tp_reward_weight=0)
    acts = random_actions(3)
    obs, rew, info = jax.jit(jax.vmap(lambda p: rollout(p, jax.random.key(0), acts),
                                      in_axes=(axes,)))(batched)
    totals = np.asarray(rew.sum(axis=(1, 2)))
    assert len(np.unique(np.round(totals, 3))) == 8
    assert np.all(np.diff(totals) > 0)  # more weight, more bonus, same trades
    tr = info["trade"]
    assert int(tr["closed"].sum()) > 8 * 10  # plenty of TP closes in the rollout
    for k, v in tr.items():
        assert np.array_equal(np.asarray(v[0]), np.asarray(v[-1])), k
    np.testing.assert_array_equal(np.asarray(obs[0]), np.asarray(obs[-1]))
    bonus = np.asarray(info["reward_terms"]["tp_bonus"])
    others = np.asarray(rew) - bonus
    np.testing.assert_allclose(others[0], others[-1], rtol=1e-5, atol=1e-5)


def test_bonus_only_on_close_steps_and_stats():
    params = RENV.make_params(gbm_market(), tp_mults=(0.5, 1.0, 2.0),
                              max_steps_in_episode=100, tp_reward_weight=1.5)
    _, _, info = jax.jit(rollout)(params, jax.random.key(1), random_actions(1))
    closed = np.asarray(info["trade"]["closed"])
    bonus = np.asarray(info["reward_terms"]["tp_bonus"])
    acc = np.asarray(info["trade"]["tp_zone_accuracy"])
    bacc = np.asarray(info["bonus_accuracy"])
    assert closed.any() and (~closed).any()
    assert np.all(bonus[~closed] == 0.0)
    np.testing.assert_allclose(bonus[closed], np.maximum(bacc[closed], 0) * 5.0 * 1.5,
                               rtol=1e-5)
    hit_ = np.asarray(info["trade"]["hit"])[closed]
    tpm = np.asarray(info["trade"]["tp_mult"])[closed]
    np.testing.assert_allclose(bacc[closed], hit_ - 1.0 / (tpm + 1.0), rtol=1e-5, atol=1e-6)
    hit = np.asarray(info["trade"]["hit"])
    assert np.all(acc[hit] == 1.0) and np.all((acc >= 0) & (acc <= 1))
    st = tp_stats(info["trade"], min_attempts=1)
    assert float(st.total_attempts) == closed.sum()
    assert float(st.tp_hit_rate) == pytest.approx(hit.sum() / closed.sum(), rel=1e-5)


ALL_BLOCKS = "+".join(FEATURE_BLOCKS)


@pytest.mark.parametrize("features", ["base", ALL_BLOCKS])
def test_no_look_ahead(features):
    """Rewards and observations up to bar t+1 do not change when bars after t+1 change, for
    every feature set: ``base`` and every block at once (each block is computed on its own and
    a set is a concatenation of blocks, so this covers every set in ``FEATURE_SETS``)."""
    assert all(set(FEATURE_SETS[n]) <= set(FEATURE_BLOCKS) for n in FEATURE_SETS)
    m = gbm_market(n_paths=1, n_bars=300)
    env = TradingEnv(window=8, n_tp=3, features=features)
    params = env.make_params(m, tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=200)
    start = env.lookback + 4
    _, st0 = env.reset(jax.random.key(0), params)
    st0 = st0.replace(bar=jnp.int32(start), path=jnp.int32(0))
    acts = np.asarray(random_actions(5, t=120, n=1))[:, 0]

    def episode(p):
        def f(st, xs):
            k, a = xs
            obs, st, r, te, tr, info = env.step(k, st, a, p)
            return st, (obs, r)
        ks = jax.random.split(jax.random.key(9), len(acts))
        return jax.lax.scan(f, st0, (ks, acts))[1]

    cut = start + 80  # bar t+1 = cut: steps 0..79 process bars start+1..cut
    other = gbm_market(seed=7, n_paths=1, n_bars=300)
    mix = lambda a, b: jnp.concatenate([a[:, : cut + 1], b[:, cut + 1:]], axis=1)  # noqa: E731
    o, h, lo, c = (mix(getattr(m, f), getattr(other, f) * (m.close[:, cut] / other.close[:, cut]))
                   for f in ("open", "high", "low", "close"))
    h = jnp.maximum(h, jnp.maximum(o, c))
    lo = jnp.minimum(lo, jnp.minimum(o, c))
    m2 = make_market_data(o, h, lo, c, volume=m.volume, trend=mix(m.trend, other.trend))
    run = jax.jit(episode)
    obs1, r1 = run(params)
    obs2, r2 = run(params.replace(market=m2))
    assert obs1.shape[-1] == env.obs_size
    n = cut - start
    np.testing.assert_array_equal(np.asarray(r1[:n]), np.asarray(r2[:n]))
    np.testing.assert_array_equal(np.asarray(obs1[:n]), np.asarray(obs2[:n]))
    assert not np.array_equal(np.asarray(r1[n:]), np.asarray(r2[n:]))
    assert not np.array_equal(np.asarray(obs1[n:]), np.asarray(obs2[n:]))


def _first_main_obs(env, state, params):
    """The first main's ``get_obs``, verbatim (the ``base`` features must reproduce it)."""
    m = params.market
    p, t = state.path, state.bar
    w = env.window
    closes = jax.lax.dynamic_slice(m.close, (p, t - w), (1, w + 1))[0]
    c = closes[-1]
    vu = m.vol_unit[p, t]
    rets = jnp.diff(closes) / vu
    s = state.side.astype(jnp.float32)
    held = state.side != 0
    in_vu = lambda x: jnp.where(held, x / vu, 0.0)  # noqa: E731
    pos = jnp.stack([
        (m.high[p, t] - m.low[p, t]) / vu, (c - jnp.mean(closes)) / vu, s,
        state.bars_held / params.max_holding, in_vu(s * (c - state.entry_price)),
        in_vu(s * (state.tp_price - c)), in_vu(s * (c - state.sl_price)), in_vu(state.mfe),
        1.0 - state.equity / state.peak_equity, state.equity / params.initial_equity - 1.0])
    return jnp.concatenate([rets, pos]).astype(jnp.float32)


class _FirstMainEnv(TradingEnv):
    def get_obs(self, state, params=None, key=None):
        return _first_main_obs(self, state, params)


def test_base_features_reproduce_the_first_mains_observation_bit_for_bit():
    """Old runs reproduce: under ``base`` the env's step is the same program as with the first
    main's ``get_obs`` (identical jaxprs), and the observations of a state with an open trade
    agree exactly."""
    assert RENV.features == "base" and TradingEnv().features == "vol"       # the default
    assert RENV.lookback == RENV.window and RENV.obs_size == RENV.window + 10
    old_env = _FirstMainEnv(window=8, n_tp=3)
    params = RENV.make_params(gbm_market(), tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=30)
    _, st = RENV.reset_env(jax.random.key(2), params)
    c = params.market.close[st.path, st.bar]
    st = st.replace(side=jnp.int32(-1), entry_price=c * 1.01, tp_price=c * 0.97,
                    sl_price=c * 1.03, bars_held=jnp.int32(3), equity=st.equity * 0.95,
                    mfe=c * 0.004)
    np.testing.assert_array_equal(np.asarray(RENV.get_obs(st, params)),
                                  np.asarray(old_env.get_obs(st, params)))
    step = lambda e: str(jax.make_jaxpr(e.step_env)(jax.random.key(0), st, 1, params))  # noqa: E731
    assert step(RENV) == step(old_env)


def test_feature_sets_are_static_config_with_their_own_sizes():
    sizes = {n: TradingEnv(window=8, features=n).obs_size for n in FEATURE_SETS}
    assert sizes == {"base": 18, "vol": 20, "scales": 23, "long": 76, "logret": 23}
    assert TradingEnv(window=8, features="scales").lookback == 64
    assert TradingEnv(window=8, features="base") != TradingEnv(window=8)     # another program
    assert TradingEnv(features="moves+position") == TradingEnv(features="base")  # same blocks
    assert TradingEnv(features="moves+vol+position") == TradingEnv()
    with pytest.raises(ValueError, match="features = 'moves\\+bogus'"):
        TradingEnv(features="moves+bogus")
    short = gbm_market(n_paths=1, n_bars=120)
    with pytest.raises(ValueError, match="n_bars=120 is too short"):
        TradingEnv(window=8, features="scales").make_params(short, tp_mults=(1.0,) * 5,
                                                            max_steps_in_episode=60)


def test_gymnax_wrappers():
    from gymnax.wrappers.purerl import LogWrapper

    params = RENV.make_params(gbm_market(), tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=50)
    env = LogWrapper(RENV)
    obs, st = env.reset(jax.random.key(0), params)
    for i in range(60):
        obs, st, r, te, tr, info = env.step(jax.random.key(i), st, 1, params)
    assert obs.shape == RENV.observation_space(params).shape
    assert float(info["returned_episode_returns"]) != 0.0


def test_compat_matches_pure_env_step_for_step():
    m = gbm_market()
    cfg = dict(window=8, n_tp=3, features="base", tp_mults=(0.5, 1.0, 2.0),
               max_steps_in_episode=40, seed=3)
    v3 = TradingEnvV3(cfg, market_data_provider=lambda: m, tp_reward_weight=2.0)
    params = RENV.make_params(m, tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=40,
                              tp_reward_weight=2.0)
    key = jax.random.key(3)
    key, sub = jax.random.split(key)
    obs_p, st = RENV.reset(sub, params)
    obs_c = v3.reset()
    np.testing.assert_array_equal(obs_c, np.asarray(obs_p))
    acts = np.asarray(random_actions(2, t=40, n=1))[:, 0]
    for a in acts:
        key, sub = jax.random.split(key)
        obs_p, st, r_p, te, tr, info = RENV.step(sub, st, int(a), params)
        obs_c, r_c, te_c, tr_c, info_c = v3.step(int(a))
        assert r_c == float(r_p) and te_c == bool(te) and tr_c == bool(tr)
        expect = info["final_observation"] if (te or tr) else obs_p
        np.testing.assert_array_equal(obs_c, np.asarray(expect))
        assert info_c["trade"]["closed"] == bool(info["trade"]["closed"])
        if te_c or tr_c:
            break
    assert tr_c  # the episode ran to its truncation
    v3.tp_reward_weight = 0.5
    assert v3.tp_reward_weight == 0.5


def test_compat_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown keys"):
        TradingEnvV3({"windw": 3}, market_data_provider=gbm_market())
    with pytest.raises(TypeError, match="market_data_provider"):
        TradingEnvV3({}, market_data_provider=42)
    v3 = TradingEnvV3({"window": 8, "max_steps_in_episode": 20},
                      market_data_provider=gbm_market())
    v3.reset()
    with pytest.raises(ValueError, match="action"):
        v3.step(99)


def test_compat_takes_an_ohlcv_dataframe():
    """A DataFrame market provider is validated and used as one path (it raised TypeError)."""
    from backtesting.test import GOOG

    v3 = TradingEnvV3({"window": 8, "max_steps_in_episode": 30}, market_data_provider=GOOG)
    obs = v3.reset()
    assert np.shape(obs) == (8 + 10,)            # the seed's observation (features="base")
    assert v3.params.market.n_paths == 1 and v3.params.market.n_bars == len(GOOG)
    np.testing.assert_allclose(np.asarray(v3.params.market.close[0]), GOOG["Close"].to_numpy(),
                               rtol=1e-6)
    obs, reward, term, trunc, info = v3.step(1)
    assert np.isfinite(reward)


def test_gymnax_gymnasium_wrapper():
    pytest.importorskip("gymnasium")
    from gymnax.wrappers.gym import GymnaxToGymWrapper

    params = RENV.make_params(gbm_market(), tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=20)
    env = GymnaxToGymWrapper(RENV, params, seed=0)
    assert env.action_space.n == RENV.num_actions
    obs, _ = env.reset(seed=1)
    assert env.observation_space.shape == np.shape(obs)
    total, trades = 0.0, 0
    for i in range(20):
        obs, r, term, trunc, info = env.step(i % RENV.num_actions)
        total += float(r)
        trades += int(info["trade"]["closed"])
    assert trunc and not term and trades > 0 and np.isfinite(total)


def test_rollout_episodes_play_distinct_paths():
    """Rollout episode e plays path e % n_paths (its start bar from its key): 10 episodes on
    5 paths visit every path twice; each episode's first observation is that path's reset."""
    from tpfl_jax.accounting import episode_paths, rollout

    rng = np.random.default_rng(0)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (5, 60)), axis=1))
    market = make_market_data(close, close * 1.005, close * 0.995, close)
    params = params_for(market, max_steps_in_episode=8)
    keys = jax.random.split(jax.random.key(3), 10)
    out = rollout(ENV, lambda obs, st, k: jnp.int32(0), params, keys, 8, keep_steps=True)
    paths = episode_paths(ENV, 5, 10)
    assert paths.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    want, _ = jax.vmap(lambda k, p: ENV.reset_env(jax.random.split(k)[0], params,
                                                  lane_next=p))(keys, jnp.asarray(paths))
    np.testing.assert_array_equal(np.asarray(out.obs[:, 0]), np.asarray(want))
    assert episode_paths(object(), 5, 10) is None          # an env that draws its own path
