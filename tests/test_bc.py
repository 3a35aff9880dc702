"""Representability: the agent's network and observation express the trend rule and the
``bayes`` filter (behaviour cloning reaches the rule's held-out PnL on the same episodes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tpfl_jax import accounting as A
from tpfl_jax.agents.bc import clone
from tpfl_jax.agents.evaluate import network_actor
from tpfl_jax.agents.networks import make_network
from tpfl_jax.baselines import bayes_edge, strategy, strategy_actor
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market.specs import SyntheticMarkets


def test_behaviour_cloning_reaches_the_trend_rules_held_out_pnl():
    env = TradingEnv(window=16)
    spec = SyntheticMarkets(kind="regime", train_paths=96, deploy_paths=96, n_bars=160,
                            substeps=4)
    train_m, test_m = spec.cycle_markets(spec.source(), jax.random.key(0), 0)
    p_train = env.make_params(train_m, max_steps_in_episode=100)
    p_test = p_train.replace(market=test_m)
    rule = strategy("trend", 4, 16)                     # long/short on the 16-bar move, TP 3.0
    network = make_network(env, p_train, (64, 64))      # the PPO agent's network
    fit = jax.jit(lambda k: clone(network, strategy_actor(env, rule, p_train), env, p_train,
                                  A.episode_keys(k, 96), 100, jax.random.key(1),
                                  steps=1500))(jax.random.key(2))
    assert float(fit.loss[-50:].mean()) < 0.5 * float(fit.loss[:50].mean())
    assert float(fit.agreement) > 0.95
    keys = A.episode_keys(jax.random.key(3), 96)        # held-out episodes, same for both

    @jax.jit
    def both(params, p):
        clone_pnl = A.rollout(env, network_actor(network, params, greedy=True), p, keys,
                              100).sums.pnl
        rule_pnl = A.rollout(env, strategy_actor(env, rule, p), p, keys, 100).sums.pnl
        return clone_pnl, rule_pnl

    clone_pnl, rule_pnl = map(np.asarray, both(fit.params, p_test))
    assert rule_pnl.mean() > 0                          # the rule earns on this market
    assert clone_pnl.mean() >= 0.95 * rule_pnl.mean(), (clone_pnl.mean(), rule_pnl.mean())


def test_rollout_keeps_steps_for_cloning():
    env = TradingEnv(window=8)
    spec = SyntheticMarkets(kind="gbm", train_paths=4, deploy_paths=4, n_bars=60, substeps=2)
    m, _ = spec.cycle_markets(spec.source(), jax.random.key(0), 0)
    p = env.make_params(m, max_steps_in_episode=20)
    out = A.rollout(env, strategy_actor(env, strategy("buy_and_hold", 1), p), p,
                    A.episode_keys(jax.random.key(1), 3), 20, keep_steps=True)
    assert out.obs.shape == (3, 20, env.obs_size) and out.actions.shape == (3, 20)
    assert bool(jnp.all(out.actions[out.active] == 2))  # long with TP index 1
    # step 0's kept observation is the one its action was chosen on: the reset observation
    # (episode e on path e % n_paths)
    keys = A.episode_keys(jax.random.key(1), 3)
    paths = jnp.asarray(A.episode_paths(env, m.n_paths, 3))
    obs0 = jax.vmap(lambda k, i: env.reset_env(jax.random.split(k)[0], p, lane_next=i)[0])(
        keys, paths)
    np.testing.assert_array_equal(np.asarray(out.obs[:, 0]), np.asarray(obs0))


def test_behaviour_cloning_of_the_bayes_filter_earns_a_floor_of_the_filter():
    """A small-budget clone of the ``bayes`` rule under the multi-scale features (inputs
    standardised like PPO's) earns at least 0.7x the filter on held-out episodes (0.97 when
    written); the rollout keeps each action with the observation it was chosen on (the clone,
    which reads only its observation, re-takes its kept actions from them)."""
    env = TradingEnv(window=16, features="scales")
    spec = SyntheticMarkets(kind="regime", train_paths=32, deploy_paths=32, n_bars=180,
                            substeps=2)
    source = spec.source()
    train_m, test_m = spec.cycle_markets(source, jax.random.key(0), 0)
    p_train = env.make_params(train_m, max_steps_in_episode=100)
    p_test = p_train.replace(market=test_m)
    rule = strategy("bayes", 4, band=0.1)
    network = make_network(env, p_train, (64, 64))

    @jax.jit
    def fit_and_play(k):
        fit = clone(network, strategy_actor(env, rule, p_train, bayes_edge(train_m, source)),
                    env, p_train, A.episode_keys(k, 32), 100, jax.random.key(1), steps=400,
                    normalize=True)
        keys = A.episode_keys(jax.random.key(3), 32)    # held-out episodes, same for both
        greedy = network_actor(network, fit.params, obs_rms=fit.obs_rms, greedy=True)
        bayes = strategy_actor(env, rule, p_test, bayes_edge(test_m, source))

        def play(use_clone):                            # one rollout program for both
            def actor(o, s, k):
                return jnp.where(use_clone, greedy(o, s, k), bayes(o, s, k))
            return A.rollout(env, actor, p_test, keys, 100, keep_steps=True)

        out = jax.vmap(play)(jnp.asarray([True, False]))
        obs = out.obs[0]                                # each action's own observation
        again = jax.vmap(jax.vmap(lambda o: greedy(o, None, jax.random.key(0))))(obs)
        same = jnp.all((again == out.actions[0]) | ~out.active[0])
        return fit.agreement, out.sums.pnl[0], out.sums.pnl[1], same

    agreement, clone_pnl, rule_pnl, same = map(np.asarray, fit_and_play(jax.random.key(2)))
    assert bool(same)
    assert agreement > 0.85
    assert rule_pnl.mean() > 0
    assert clone_pnl.mean() >= 0.7 * rule_pnl.mean(), (clone_pnl.mean(), rule_pnl.mean())
