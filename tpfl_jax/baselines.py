"""Reference strategies: pure ``jnp`` action rules over :class:`~tpfl_jax.env.trading.TradingEnv`,
played through the one rollout of :mod:`tpfl_jax.accounting` (so their numbers are defined as an
agent's are).

A strategy is a :class:`Strategy` pytree (``kind``, ``tp_index``, ``lookback``), so any list of
them stacks and runs under one ``vmap``. Kinds (``KINDS``):

* ``flat``: never trades.
* ``random``: a uniformly random action every step.
* ``buy_and_hold`` / ``short_and_hold``: always long / short with TP ``tp_index`` (re-enters at
  the next open after every exit).
* ``trend``: long (short) when the close is above (below) the close ``lookback`` bars ago, with
  TP ``tp_index``; a flip of the signal closes the trade (a reversal) and re-enters next step.
* ``noskill``: always in the market, a fair coin for the side of each new trade, TP
  ``tp_index``: a trader with no edge. ``churn`` is ``noskill`` at the tightest TP (the most
  trades and the most TP hits a blind rule can buy): the TP-bonus farmer.
* ``oracle``: **a benchmark only, never an agent input**: reads the *hidden* regime label of the
  bar being traded (``market.trend[t + 1]``, known on synthetic markets only; 0 on loaded data,
  where it stays flat) and holds that side with TP ``tp_index``.

:func:`run_strategies` rolls strategies x weights x episodes (the audit); :func:`make_references`
gives the reference rows of every report: per seed and cycle of the loop, each family's
parameters (trend lookback and TP, buy-and-hold TP, oracle TP) are **chosen on training data**
(the cycle's training market, never the deployment episodes) and the chosen rule is then played
on exactly the loop's deployment episodes (``loop.cycle_keys`` + ``accounting.episode_keys``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tpfl_jax import accounting as A
from tpfl_jax import distributed as D
from tpfl_jax.env.trading import TradingEnv

KINDS = ("flat", "random", "buy_and_hold", "short_and_hold", "trend", "noskill", "oracle")
REFERENCE_FAMILIES = ("flat", "buy_and_hold", "trend", "oracle")
TREND_LOOKBACKS = (2, 4, 8, 16, 32)


@struct.dataclass
class Strategy:
    """One reference strategy (all int32 leaves, so a list stacks and vmaps)."""

    kind: jax.Array
    tp_index: jax.Array
    lookback: jax.Array


def strategy(kind: str, tp_index: int = 0, lookback: int = 16) -> Strategy:
    """A :class:`Strategy` of ``kind`` (one of ``KINDS``)."""
    if kind not in KINDS:
        raise ValueError(f"strategy: kind = {kind!r}; expected one of {KINDS}")
    return Strategy(kind=jnp.int32(KINDS.index(kind)), tp_index=jnp.int32(tp_index),
                    lookback=jnp.int32(lookback))


def reference_set(env: TradingEnv, lookback: int | None = None) -> dict[str, Strategy]:
    """The audit's named strategies: flat, random, buy/short-and-hold (widest TP), churn,
    ``noskill_tp{k}``, ``trend_tp{k}`` and ``oracle_tp{k}`` for every TP index ``k``."""
    lb = env.window if lookback is None else int(lookback)
    if not 1 <= lb <= env.window:
        raise ValueError(f"reference_set: lookback = {lb}; expected 1 <= lookback <= env window "
                         f"({env.window})")
    wide = env.n_tp - 1
    out = {
        "flat": strategy("flat"),
        "random": strategy("random"),
        "buy_and_hold": strategy("buy_and_hold", wide),
        "short_and_hold": strategy("short_and_hold", wide),
        "churn": strategy("noskill", 0),
    }
    for k in range(env.n_tp):
        out[f"noskill_tp{k}"] = strategy("noskill", k)
    for k in range(env.n_tp):
        out[f"trend_tp{k}"] = strategy("trend", k, lb)
    for k in range(env.n_tp):
        out[f"oracle_tp{k}"] = strategy("oracle", k)
    return out


def stack(strategies: list[Strategy]) -> Strategy:
    """Stack strategies along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *strategies)


def act(env: TradingEnv, s: Strategy, state: Any, params: Any, key: jax.Array) -> jax.Array:
    """The action of strategy ``s`` at ``state`` (decision bar ``state.bar``)."""
    m = params.market
    p, t = state.path, state.bar
    k_side, k_any = jax.random.split(key)
    coin = jnp.where(jax.random.bernoulli(k_side), 1, -1)
    held = state.side
    mom = m.close[p, t] - m.close[p, jnp.maximum(t - s.lookback, 0)]
    oracle = jnp.sign(m.trend[p, t + 1]).astype(jnp.int32)
    side = jnp.select(
        [s.kind == 0, s.kind == 2, s.kind == 3, s.kind == 4, s.kind == 5, s.kind == 6],
        [0, 1, -1, jnp.where(mom >= 0, 1, -1), jnp.where(held != 0, held, coin), oracle],
        0)
    n_tp = env.n_tp
    k = jnp.clip(s.tp_index, 0, n_tp - 1)
    ruled = jnp.where(side == 0, 0, jnp.where(side > 0, 1 + k, 1 + n_tp + k))
    random_action = jax.random.randint(k_any, (), 0, env.num_actions)
    return jnp.where(s.kind == 1, random_action, ruled).astype(jnp.int32)


def strategy_actor(env: TradingEnv, s: Strategy, params: Any) -> A.Actor:
    """Strategy ``s`` as an ``accounting`` actor on ``params``' market."""
    return lambda obs, state, key: act(env, s, state, params, key)


def play(env: TradingEnv, s: Strategy, params: Any, keys: jax.Array, n_steps: int
         ) -> A.EpisodeSums:
    """Per-episode sums ``[E]`` of strategy ``s`` on the episodes of ``keys``."""
    return A.rollout(env, strategy_actor(env, s, params), params, keys, n_steps).sums


@partial(jax.jit, static_argnames=("env", "n_steps"))
def run_strategies(env: TradingEnv, strategies: Strategy, weights: jax.Array, params: Any,
                   keys: jax.Array, n_steps: int) -> A.EpisodeSums:
    """Sums ``[S, W, E]``: every strategy x weight on the same episodes (common random
    numbers: the same paths, start bars and per-step draws)."""
    def one(s, w):
        return play(env, s, params.replace(tp_reward_weight=w), keys, n_steps)

    return jax.vmap(jax.vmap(one, (None, 0)), (0, None))(strategies, weights)


# --------------------------------------------------------------------------- reference rows
def reference_candidates(env: TradingEnv, has_labels: bool = True
                         ) -> dict[str, list[tuple[str, Strategy]]]:
    """Each reference family's parameter grid: buy-and-hold x TP, trend x lookback (at most the
    env window, the history an agent observes) x TP, oracle x TP (only with regime labels)."""
    tps = range(env.n_tp)
    out = {
        "flat": [("flat", strategy("flat"))],
        "buy_and_hold": [(f"buy_and_hold_tp{k}", strategy("buy_and_hold", k)) for k in tps],
        "trend": [(f"trend_lb{lb}_tp{k}", strategy("trend", k, lb))
                  for lb in TREND_LOOKBACKS if lb <= env.window for k in tps],
    }
    if has_labels:
        out["oracle"] = [(f"oracle_tp{k}", strategy("oracle", k)) for k in tps]
    return out


def make_references(env: TradingEnv, markets: Any, num_cycles: int, deploy_envs: int,
                    n_steps: int, select_episodes: int, has_labels: bool = True):
    """``run(seed_keys[S], source, env_params) -> {family: (sums [S, C, E], choice [S, C])}``.

    Per seed and cycle each family's candidate with the best mean PnL on ``select_episodes``
    episodes of the cycle's *training* market is chosen (``choice`` indexes
    ``reference_candidates(env, has_labels)[family]``) and played on the loop's deployment
    episodes of that cycle (weight 0: the rules do not depend on the reward)."""
    from tpfl_jax.loop import cycle_keys

    cands = reference_candidates(env, has_labels)
    fams = list(cands)
    every = stack([s for f in fams for _, s in cands[f]])      # one selection rollout for all
    bounds = np.cumsum([0] + [len(cands[f]) for f in fams])

    def one_cycle(seed_key, source, env_params, c):
        keys = cycle_keys(seed_key, c)
        train_m, deploy_m = markets.cycle_markets(source, keys.market, c)
        p_train = env_params.replace(market=train_m, tp_reward_weight=jnp.float32(0.0))
        p_dep = env_params.replace(market=deploy_m, tp_reward_weight=jnp.float32(0.0))
        sel_keys = A.episode_keys(jax.random.fold_in(keys.train, 0x5E1EC7), select_episodes)
        pnl = jax.vmap(lambda s: play(env, s, p_train, sel_keys, n_steps).pnl.mean())(every)
        idx = jnp.stack([lo + jnp.argmax(pnl[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                        strict=True)])
        chosen = jax.tree.map(lambda x: x[idx], every)
        sums = jax.vmap(lambda s: play(env, s, p_dep, A.episode_keys(keys.deploy, deploy_envs),
                                       n_steps))(chosen)
        return {f: (jax.tree.map(lambda x, i=i: x[i], sums), idx[i] - bounds[i])
                for i, f in enumerate(fams)}

    def one_seed(seed_key, source, env_params):
        return jax.vmap(lambda c: one_cycle(seed_key, source, env_params, c))(
            jnp.arange(num_cycles, dtype=jnp.int32))

    return D.jit(jax.vmap(one_seed, (0, None, None)))


__all__ = ["KINDS", "REFERENCE_FAMILIES", "TREND_LOOKBACKS", "Strategy", "act",
           "make_references", "play", "reference_candidates", "reference_set",
           "run_strategies", "stack", "strategy", "strategy_actor"]
