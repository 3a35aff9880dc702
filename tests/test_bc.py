"""Representability: the agent's network and observation express the trend rule (behaviour
cloning reaches the rule's held-out PnL on the same episodes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tpfl_jax import accounting as A
from tpfl_jax.agents.bc import clone
from tpfl_jax.agents.networks import make_network
from tpfl_jax.baselines import strategy, strategy_actor
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
        clone_pnl = A.rollout(env, A.network_actor(network, params, greedy=True), p, keys,
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
