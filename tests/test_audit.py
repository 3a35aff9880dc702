"""Reference strategies and the reward audit: the calibrated default passes, the first main's
reward fails (tau < 1 and a farmable bonus), and the rules do what their names say."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.accounting import episode_keys
from tpfl_jax.audit import AuditConfig, run_audit, write_audit
from tpfl_jax.baselines import KINDS, act, reference_set, run_strategies, stack, strategy
from tpfl_jax.env.trading import TradingEnv, decode_action
from tpfl_jax.market import synthetic
from tpfl_jax.market.types import make_market_data
from tpfl_jax.reward import LEGACY_COEFS

ENV = TradingEnv(window=16, n_tp=5)
LEGACY = dict(coefs=LEGACY_COEFS, accuracy="mfe_ratio", drawdown_mode="level",
              alignment_source="hidden_label", reward_vol="bar")


def _market(kind, seed=0):
    # the market tpfl-audit builds for the default config (seed 0, 64 paths of 300 bars)
    key = jax.random.fold_in(jax.random.key(seed), 7919)
    return synthetic.simulate(key, synthetic.make_params(kind), 64, 300, 8)


@pytest.mark.parametrize("kind", ["regime", "mixed"])
def test_default_reward_ranks_by_pnl_and_resists_farming_legacy_does_not(kind):
    m = _market(kind)
    cfg = AuditConfig(weights=(0.0, 2.0), episodes=512)
    new = run_audit(ENV, ENV.make_params(m, max_steps_in_episode=100), cfg).summary
    # the reward orders the rules as PnL does wherever PnL separates them (paired over the
    # episodes); a swap of two rules whose PnL is within noise is reported, not failed
    assert new["tau_ok"] and new["discordant_separated"] == []
    assert new["tau"] == pytest.approx(1.0) or new["discordant_within_noise"]
    assert new["break_even_weight"] > 2.0          # churn vs the best profitable reference
    assert new["break_even_causal"] > 2.0          # ... vs rules an agent could run
    assert new["farm_break_even"] > 2.0            # no coin-flip trader at any TP distance
    old = run_audit(ENV, ENV.make_params(m, max_steps_in_episode=100, **LEGACY), cfg).summary
    assert not old["tau_ok"] or old["break_even_weight"] <= 2.0
    assert old["break_even_weight"] < 0.5 and old["farm_break_even"] < 0.5


def test_reward_is_linear_in_the_weight_on_common_random_numbers():
    m = _market("regime")
    params = ENV.make_params(m, max_steps_in_episode=40)
    refs = reference_set(ENV)
    names = ["churn", "trend_tp4", "random"]
    out = jax.device_get(run_strategies(
        ENV, stack([refs[n] for n in names]), jnp.asarray([0.0, 1.0, 2.0]), params,
        episode_keys(jax.random.key(3), 16), 40))
    for x in (out.pnl, out.trades, out.hits, out.terms["pnl"]):  # same episodes, every weight
        np.testing.assert_array_equal(x[:, 0], x[:, 2])
    bonus1 = out.terms["tp_bonus"][:, 1]
    np.testing.assert_allclose(out.reward[:, 2], out.reward[:, 0] + 2 * bonus1,
                               rtol=1e-4, atol=1e-3)
    assert np.all(out.trades[0] > 10)                        # churn trades a lot


def _trend_market(n=64):
    up = 100 * np.exp(np.linspace(0, 0.3, n))
    o = np.r_[up[0], up[:-1]]
    return make_market_data(o, np.maximum(o, up) * 1.001, np.minimum(o, up) * 0.999, up,
                            trend=np.full(n, -1.0))


def test_rules_take_the_actions_their_names_say():
    params = ENV.make_params(_trend_market(), max_steps_in_episode=20)
    _, st = ENV.reset(jax.random.key(0), params)
    st = st.replace(bar=jnp.int32(30), path=jnp.int32(0))
    k = jax.random.key(1)

    def side_tp(s):
        side, tp = decode_action(act(ENV, s, st, params, k), ENV.n_tp)
        return int(side), int(tp)

    assert side_tp(strategy("flat")) == (0, 0)
    assert side_tp(strategy("buy_and_hold", 4)) == (1, 4)
    assert side_tp(strategy("short_and_hold", 4)) == (-1, 4)
    assert side_tp(strategy("trend", 2, 16)) == (1, 2)        # rising closes -> long
    assert side_tp(strategy("oracle", 3)) == (-1, 3)          # reads the hidden label (-1)
    assert side_tp(strategy("noskill", 0))[1] == 0
    held = st.replace(side=jnp.int32(-1))                     # noskill keeps an open trade
    assert int(decode_action(act(ENV, strategy("noskill", 0), held, params, k), 5)[0]) == -1
    acts = {int(act(ENV, strategy("random"), st, params, jax.random.key(i))) for i in range(64)}
    assert acts <= set(range(ENV.num_actions)) and len(acts) > 5
    with pytest.raises(ValueError, match="kind"):
        strategy("hodl")
    assert len(KINDS) == 8


def test_audit_on_loaded_data_without_labels_and_its_files(tmp_path):
    from backtesting.test import GOOG

    from tpfl_jax.market.data import read_ohlcv, to_windows

    path = tmp_path / "goog.csv"
    GOOG.to_csv(path)
    frame = read_ohlcv(path)
    m = to_windows(frame, len(frame))
    res = run_audit(ENV, ENV.make_params(m, max_steps_in_episode=60),
                    AuditConfig(weights=(1.0,), episodes=16), label="GOOG")
    s = res.summary
    assert not s["has_regime_labels"] and "oracle" not in s["rank_set"]
    assert s["weights"] == [0.0, 1.0]                          # weight 0 is always audited
    assert set(res.table.strategy) == set(reference_set(ENV))
    assert np.isfinite(res.table["reward"]).all()
    assert len(res.noskill) == ENV.n_tp
    paths = write_audit(res, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths)
    assert "Kendall tau" in res.text()


def test_audit_config_errors_name_the_field():
    with pytest.raises(ValueError, match="AuditConfig.episodes"):
        AuditConfig(episodes=1)
    with pytest.raises(ValueError, match="AuditConfig.weights"):
        AuditConfig(weights=(1.0, float("nan")))
    with pytest.raises(ValueError, match="lookback"):
        reference_set(ENV, lookback=40)


def test_references_choose_on_training_data_and_play_the_loops_deploy_episodes():
    """Shapes, flat = 0, each family's choice is the best mean PnL on the cycle's *training*
    market, and the chosen rule is played on exactly the loop's deploy episodes of seed s and
    cycle c (``loop.cycle_keys`` + ``accounting.episode_keys``)."""
    from tpfl_jax.accounting import rollout
    from tpfl_jax.baselines import make_references, reference_candidates, strategy_actor
    from tpfl_jax.loop import cycle_keys, seed_keys
    from tpfl_jax.market.specs import SyntheticMarkets

    spec = SyntheticMarkets(kind="regime", train_paths=2, deploy_paths=3, n_bars=120, substeps=2)
    source = spec.source()
    template, _ = spec.cycle_markets(source, jax.random.key(0), 0)
    params = ENV.make_params(template, max_steps_in_episode=30)
    run = make_references(ENV, spec, 2, 5, 30, select_episodes=8)
    keys = seed_keys(0, 2)
    out = jax.device_get(run(keys, source, params))
    cands = reference_candidates(ENV)
    assert set(out) == {"flat", "buy_and_hold", "trend", "oracle", "bayes"}
    sums, choice = out["trend"]
    assert sums.pnl.shape == (2, 2, 5) and choice.shape == (2, 2)    # seeds x cycles (x envs)
    assert np.all(out["flat"][0].pnl == 0) and np.any(out["buy_and_hold"][0].pnl != 0)
    # seed 1, cycle 1 by hand
    k = cycle_keys(keys[1], 1)
    train_m, dep = spec.cycle_markets(source, k.market, jnp.int32(1))
    p_tr = params.replace(market=train_m, tp_reward_weight=jnp.float32(0.0))
    sel = episode_keys(jax.random.fold_in(k.train, 0x5E1EC7), 8)
    means = run_strategies(ENV, stack([s_ for _, s_ in cands["trend"]]), jnp.zeros(1), p_tr,
                           sel, 30).pnl.mean(-1)[:, 0]
    assert int(choice[1, 1]) == int(np.argmax(means))               # chosen on training data
    chosen = cands["trend"][int(choice[1, 1])][1]
    p_dep = params.replace(market=dep, tp_reward_weight=jnp.float32(0.0))
    want = jax.jit(lambda p: rollout(ENV, strategy_actor(ENV, chosen, p), p,
                                     episode_keys(k.deploy, 5), 30).sums.pnl)(p_dep)
    np.testing.assert_allclose(sums.pnl[1, 1], np.asarray(want), rtol=1e-5, atol=1e-3)
    # a family without labels is left out
    assert "oracle" not in reference_candidates(ENV, has_labels=False)
