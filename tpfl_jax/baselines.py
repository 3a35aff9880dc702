"""Reference strategies: pure ``jnp`` action rules over :class:`~tpfl_jax.env.trading.TradingEnv`.

A strategy is a :class:`Strategy` pytree (``kind``, ``tp_index``, ``lookback``), so any list of
them stacks and runs under one ``vmap``; :func:`make_runner` rolls strategies x weights x
episodes in one jitted program on any market the env accepts (synthetic or loaded data), with
common random numbers: every strategy and weight sees the same episodes (paths, start bars) and
the same per-step random draws.

Kinds (``KINDS``):

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

"Best fixed TP in hindsight" is chosen on the host from the ``trend`` / ``oracle`` families
(``tpfl_jax.audit``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from tpfl_jax.env.trading import ACCURACY_MODES, TradingEnv, bonus_accuracy

KINDS = ("flat", "random", "buy_and_hold", "short_and_hold", "trend", "noskill", "oracle")
EPISODE_KEYS = ("pnl", "return", "reward", "trades", "hits", "sum_r", "sum_tp_mult",
                "max_drawdown", "steps")


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


def _episode_fn(env: TradingEnv, n_steps: int):
    """``episode(reset_key, run_key, strategy, weight, params) -> dict of sums`` (see
    ``make_runner``); the episode starts where ``env.reset(reset_key, params)`` starts."""
    from tpfl_jax.reward import TERM_NAMES

    def episode(reset_key, run_key, s, w, params):
        params = params.replace(tp_reward_weight=w)
        _, st0 = env.reset_env(reset_key, params)
        eq0 = st0.equity
        zero = jnp.float32(0.0)
        sums0 = {k: zero for k in ("reward", "trades", "hits", "sum_r", "sum_tp_mult", "steps")}
        sums0 |= {f"term/{n}": zero for n in TERM_NAMES}
        sums0 |= {f"bonus_pos/{n}": zero for n in ACCURACY_MODES}

        def step(carry, k):
            st, active, sums = carry
            a = act(env, s, st, params, k)
            _, st_n, r, done, info = env.step_env(k, st, a, params)
            tr = info["trade"]
            f = active.astype(jnp.float32)
            c = tr["closed"].astype(jnp.float32) * f
            add = {"reward": r * f, "trades": c, "hits": tr["hit"] * c,
                   "sum_r": tr["r_realised"] * c, "sum_tp_mult": tr["tp_mult"] * c,
                   "steps": f}
            add |= {f"term/{n}": v * f for n, v in info["reward_terms"].items()}
            for i, n in enumerate(ACCURACY_MODES):
                acc = bonus_accuracy(i, tr["hit"], tr["tp_zone_accuracy"], tr["tp_mult"],
                                     params.sl_mult)
                add[f"bonus_pos/{n}"] = jnp.maximum(acc, 0.0) * c
            sums = {n: sums[n] + add[n] for n in sums}
            st = jax.tree.map(lambda x, y: jnp.where(active, x, y), st_n, st)
            return (st, active & ~done, sums), None

        (st, _, sums), _ = jax.lax.scan(step, (st0, jnp.bool_(True), sums0),
                                        jax.random.split(run_key, n_steps))
        sums["pnl"] = st.equity - eq0
        sums["return"] = st.equity / eq0 - 1.0
        sums["max_drawdown"] = st.max_drawdown
        return sums

    return episode


@functools.lru_cache(maxsize=16)
def make_runner(env: TradingEnv, n_steps: int):
    """``run(keys[E], strategies[S], weights[W], params) -> dict of [S, W, E] arrays``.

    One episode per key (``env.reset``), ``n_steps`` steps in ``lax.scan``; the episode stops
    at ruin (no auto-reset). Outputs: ``EPISODE_KEYS``, ``term/<name>`` (each reward term summed
    over the episode) and ``bonus_pos/<mode>`` (sum over closed trades of max(accuracy, 0) under
    each of ``ACCURACY_MODES``: the bonus per unit ``5 * weight`` each definition would pay).
    """
    ep = _episode_fn(env, n_steps)

    def episode(key, s, w, params):
        k_reset, k_run = jax.random.split(key)
        return ep(k_reset, k_run, s, w, params)

    over_e = jax.vmap(episode, (0, None, None, None))
    over_w = jax.vmap(over_e, (None, None, 0, None))
    over_s = jax.vmap(over_w, (None, 0, None, None))
    return jax.jit(over_s)


def make_deploy_references(env: TradingEnv, markets: Any, num_cycles: int, deploy_envs: int,
                           n_steps: int):
    """``run(seed_keys[S], strategies[R], source, env_params) -> dict of [R, S, C, E]``: the
    rules on exactly the deployment episodes of ``tpfl_jax.loop`` (same deploy market, paths
    and start bars per seed and cycle: the loop's key derivation), so arms and references are
    compared on common random numbers. Outputs as ``make_runner`` (weight 0)."""
    ep = _episode_fn(env, n_steps)

    def one(key, s, source, env_params):
        k_mkt, _, k_cycles = jax.random.split(key, 3)

        def cycle(c):
            _, deploy_m = markets.cycle_markets(source, k_mkt, c)
            _, k_dep = jax.random.split(jax.random.fold_in(k_cycles, c))
            k_reset, k_run = jax.random.split(k_dep)
            params = env_params.replace(market=deploy_m)
            resets = jax.random.split(k_reset, deploy_envs)
            runs = jax.random.split(k_run, deploy_envs)
            return jax.vmap(ep, (0, 0, None, None, None))(resets, runs, s, jnp.float32(0.0),
                                                          params)

        return jax.vmap(cycle)(jnp.arange(num_cycles, dtype=jnp.int32))

    over_seeds = jax.vmap(one, (0, None, None, None))
    return jax.jit(jax.vmap(over_seeds, (None, 0, None, None)))


__all__ = ["EPISODE_KEYS", "KINDS", "Strategy", "act", "make_deploy_references", "make_runner",
           "reference_set", "stack",
           "strategy"]
