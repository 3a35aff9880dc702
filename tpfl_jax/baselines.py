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
* ``oracle``: **a benchmark only, not causal, never an agent input**: reads the *hidden*
  regime label of the bar being traded (``market.trend[t + 1]``, known on synthetic markets
  only; 0 on loaded data, where it stays flat) and holds that side with TP ``tp_index``.
* ``bayes``: the causal reference near the limit on a market with a regime chain: long
  (short) when the :func:`bayes_edge` of the decision bar (a forward HMM filter with the
  generator's true parameters; bars <= t only) is above ``band`` (below ``-band``), flat inside
  the dead band, with TP ``tp_index``. It reads the ``edge [n_paths, n_bars]`` array given to
  :func:`act` (flat without one). A myopic rule (the sign of the next bar's expected return,
  blind to costs and to the TP/SL exits), so a policy can beat it by a little.

:func:`run_strategies` rolls strategies x weights x episodes (the audit); :func:`make_references`
gives the reference rows of every report: per seed and cycle of the loop, each family's
parameters (trend lookback and TP, buy-and-hold TP, oracle TP, Bayes dead band and TP) are
**chosen on training data**
(the cycle's training market, never the deployment episodes) and the chosen rule is then played
on exactly the loop's deployment episodes (``accounting.cycle_keys`` + ``accounting.episode_keys``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tpfl_jax import accounting, distributed
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market.types import MarketData

KINDS = ("flat", "random", "buy_and_hold", "short_and_hold", "trend", "noskill", "oracle",
         "bayes")
REFERENCE_FAMILIES = ("flat", "buy_and_hold", "trend", "oracle", "bayes")
TREND_LOOKBACKS = (2, 4, 8, 16, 32)
# The Bayes rule's dead bands: |expected next-bar return| as a fraction of the largest |regime
# drift| below which it stays flat (chosen on training data with the TP).
BAYES_BANDS = (0.0, 0.1, 0.25, 0.5)
# Synthetic kinds whose generator has a regime chain (the ``bayes`` family needs one).
CHAIN_KINDS = ("regime", "mixed")
_MAX_JUMPS_PER_BAR = 3      # the filter's Poisson jump mixture: 0, 1, 2 jumps per bar


@struct.dataclass
class Strategy:
    """One reference strategy (int32 leaves and the float32 ``band``, so a list stacks and
    vmaps)."""

    kind: jax.Array
    tp_index: jax.Array
    lookback: jax.Array
    band: jax.Array = struct.field(default_factory=lambda: jnp.float32(0.0))


def strategy(kind: str, tp_index: int = 0, lookback: int = 16, band: float = 0.0) -> Strategy:
    """A :class:`Strategy` of ``kind`` (one of ``KINDS``); ``band`` is the ``bayes`` dead band."""
    if kind not in KINDS:
        raise ValueError(f"strategy: kind = {kind!r}; expected one of {KINDS}")
    return Strategy(kind=jnp.int32(KINDS.index(kind)), tp_index=jnp.int32(tp_index),
                    lookback=jnp.int32(lookback), band=jnp.float32(band))


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


def act(env: TradingEnv, s: Strategy, state: Any, params: Any, key: jax.Array,
        edge: jax.Array | None = None) -> jax.Array:
    """The action of strategy ``s`` at ``state`` (decision bar ``state.bar``); ``edge``
    (``[n_paths, n_bars]``, :func:`bayes_edge` of ``params.market``) feeds ``bayes``."""
    m = params.market
    p, t = state.path, state.bar
    k_side, k_any = jax.random.split(key)
    coin = jnp.where(jax.random.bernoulli(k_side), 1, -1)
    held = state.side
    mom = m.close[p, t] - m.close[p, jnp.maximum(t - s.lookback, 0)]
    oracle = jnp.sign(m.trend[p, t + 1]).astype(jnp.int32)
    e = jnp.float32(0.0) if edge is None else edge[p, t]
    bayes = jnp.where(e > s.band, 1, jnp.where(e < -s.band, -1, 0))
    side = jnp.select(
        [s.kind == 0, s.kind == 2, s.kind == 3, s.kind == 4, s.kind == 5, s.kind == 6,
         s.kind == 7],
        [0, 1, -1, jnp.where(mom >= 0, 1, -1), jnp.where(held != 0, held, coin), oracle,
         bayes], 0)
    n_tp = env.n_tp
    k = jnp.clip(s.tp_index, 0, n_tp - 1)
    ruled = jnp.where(side == 0, 0, jnp.where(side > 0, 1 + k, 1 + n_tp + k))
    random_action = jax.random.randint(k_any, (), 0, env.num_actions)
    return jnp.where(s.kind == 1, random_action, ruled).astype(jnp.int32)


def strategy_actor(env: TradingEnv, s: Strategy, params: Any, edge: jax.Array | None = None
                   ) -> accounting.Actor:
    """Strategy ``s`` as an ``accounting`` actor on ``params``' market (``edge``: see
    :func:`act`)."""
    return lambda obs, state, key: act(env, s, state, params, key, edge)


def play(env: TradingEnv, s: Strategy, params: Any, keys: jax.Array, n_steps: int,
         edge: jax.Array | None = None) -> accounting.EpisodeSums:
    """Per-episode sums ``[E]`` of strategy ``s`` on the episodes of ``keys``."""
    return accounting.rollout(env, strategy_actor(env, s, params, edge), params, keys, n_steps).sums


@partial(jax.jit, static_argnames=("env", "n_steps"))
def run_strategies(env: TradingEnv, strategies: Strategy, weights: jax.Array, params: Any,
                   keys: jax.Array, n_steps: int) -> accounting.EpisodeSums:
    """Sums ``[S, W, E]``: every strategy x weight on the same episodes (common random
    numbers: the same paths, start bars and per-step draws)."""
    def one(s, w):
        return play(env, s, params.replace(tp_reward_weight=w), keys, n_steps)

    return jax.vmap(jax.vmap(one, (None, 0)), (0, None))(strategies, weights)


# --------------------------------------------------------------------------- Bayes filter
class FilterParams(NamedTuple):
    """The generator's true parameters as the filter uses them (float32)."""

    drift: jax.Array        # [K]
    vol: jax.Array          # [K]
    trans: jax.Array        # [K, K], rows sum to 1
    prior: jax.Array        # [K], the chain's stationary distribution (the first bar's prior)
    garch_a: jax.Array
    garch_b: jax.Array
    jump_rate: jax.Array
    jump_mean: jax.Array
    jump_vol: jax.Array
    gap_vol: jax.Array


def filter_params(source: Any) -> FilterParams:
    """:class:`FilterParams` of a ``market.synthetic`` params struct (``.to_mixed()``)."""
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), source.to_mixed())
    drift = jnp.reshape(p.drift, (-1,))
    k = drift.shape[0]
    trans = jnp.reshape(p.transition, (k, k))
    trans = trans / jnp.sum(trans, axis=-1, keepdims=True)
    prior = (jnp.full((1, k), 1.0 / k, jnp.float32) @ jnp.linalg.matrix_power(trans, 1024))[0]
    return FilterParams(drift, jnp.reshape(p.vol, (-1,)), trans, prior / jnp.sum(prior),
                        p.garch_alpha, p.garch_beta, p.jump_intensity, p.jump_mean, p.jump_vol,
                        p.gap_vol)


def _filter_step(fp: FilterParams, carry, x):
    """One bar of the forward filter: ``carry = (prior of s_t, h_t)``, ``x = (r_t, valid)``;
    returns the next carry and ``(posterior of s_t, expected return of bar t + 1)``."""
    pred, h = carry
    r, valid = x
    n = jnp.arange(_MAX_JUMPS_PER_BAR, dtype=jnp.float32)
    lam = fp.jump_rate
    log_pn = jnp.where(lam > 0, n * jnp.log(jnp.maximum(lam, 1e-30)) - lam
                       - jax.lax.lgamma(n + 1.0), jnp.where(n == 0, 0.0, -jnp.inf))
    diff_var = (fp.vol * fp.vol * h)[:, None]                  # A: diffusive variance [K, 1]
    other = (n * fp.jump_vol ** 2 + fp.gap_vol ** 2)[None, :]  # B: jumps + gap [1, N]
    var = diff_var + other
    d = r - fp.drift[:, None] - (n * fp.jump_mean)[None, :]
    ll = log_pn[None, :] - 0.5 * jnp.log(2 * jnp.pi * var) - 0.5 * d * d / var
    joint = jnp.log(jnp.maximum(pred, 1e-30))[:, None] + ll
    w = jax.nn.softmax(joint.reshape(-1)).reshape(joint.shape)  # posterior of (s_t, jumps)
    post = jnp.sum(w, axis=1)
    # E[z_t^2 | r_t] of the diffusive shock (it drives the GARCH multiplier), collapsed over
    # the posterior: one h per path (Gray's approximation of Markov-switching GARCH)
    ez2 = jnp.sum(w * (other / var + diff_var * d * d / (var * var)))
    h_next = (1.0 - fp.garch_a - fp.garch_b) + (fp.garch_a * ez2 + fp.garch_b) * h
    pred_next = post @ fp.trans
    post = jnp.where(valid, post, pred)
    pred_next = jnp.where(valid, pred_next, pred)
    h_next = jnp.where(valid, h_next, h)
    jumps = jnp.exp(lam * (jnp.exp(fp.jump_mean + 0.5 * fp.jump_vol ** 2) - 1.0))
    gross = jnp.exp(fp.drift + 0.5 * (fp.vol * fp.vol * h_next + fp.gap_vol ** 2)) * jumps
    return (pred_next, h_next), (post, jnp.sum(pred_next * gross) - 1.0)


def bar_log_returns(market: MarketData) -> jax.Array:
    """``[n_paths, n_bars]`` log close-to-close returns (bar 0: close over its open)."""
    prev = jnp.concatenate([market.open[:, :1], market.close[:, :-1]], axis=1)
    return jnp.log(market.close / prev)


def bayes_filter(market: MarketData, source: Any, window: int | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """``(posterior [n_paths, n_bars, K], edge [n_paths, n_bars])`` of the forward HMM filter
    with the generator's true parameters ``source`` (``market.synthetic`` params).

    ``posterior[p, t]`` is P(regime of bar t | bars <= t); ``edge[p, t]`` is the expected
    arithmetic return of bar t + 1 given bars <= t, over the largest |regime drift| (so dead
    bands are comparable across markets). Likelihood of bar t: its log close-to-close return
    given the regime, a Poisson mixture of 0-2 jumps per bar (exact jump and gap parts) and the
    GARCH multiplier tracked as its posterior mean (one ``h`` per path: exact without GARCH,
    an approximation on ``mixed``). Ignored: the high/low, intrabar path and volume (they
    carry some volatility information, so the filter is a causal bound from closes, not the
    full-information optimum). ``window``: the filter restarted at the stationary prior
    ``window`` bars back (what a window of that many returns could hold). One ``lax.scan``
    per path (bars <= t only)."""
    fp = filter_params(source)
    r = bar_log_returns(market)
    init = (fp.prior, jnp.float32(1.0))

    def run(rs, valid):
        _, (post, edge) = jax.lax.scan(lambda c, x: _filter_step(fp, c, x), init, (rs, valid))
        return post, edge

    if window is None:
        post, edge = jax.vmap(run)(r, jnp.ones(r.shape, bool))
    else:
        n_bars = r.shape[1]
        idx = jnp.arange(n_bars)[:, None] - window + 1 + jnp.arange(window)[None, :]
        valid = idx >= 0                                      # [n_bars, window]
        wins = r[:, jnp.maximum(idx, 0)]                      # [n_paths, n_bars, window]
        def last(rs, v):                                      # the window's final bar
            post_w, edge_w = run(rs, v)
            return post_w[-1], edge_w[-1]

        post, edge = jax.vmap(jax.vmap(last), (0, None))(wins, valid)
    scale = jnp.maximum(jnp.max(jnp.abs(fp.drift)), 1e-12)
    return post, edge / scale


def bayes_edge(market: MarketData, source: Any, window: int | None = None) -> jax.Array:
    """``edge [n_paths, n_bars]`` of :func:`bayes_filter` (what the ``bayes`` rule reads)."""
    return bayes_filter(market, source, window)[1]


# --------------------------------------------------------------------------- reference rows
def reference_candidates(env: TradingEnv, has_labels: bool = True, bayes: bool | None = None
                         ) -> dict[str, list[tuple[str, Strategy]]]:
    """Each reference family's parameter grid: buy-and-hold x TP, trend x lookback (at most the
    env window, the history an agent observes) x TP, oracle x TP (only with regime labels),
    bayes x dead band (``BAYES_BANDS``) x TP (``bayes``; default: with regime labels)."""
    tps = range(env.n_tp)
    out = {
        "flat": [("flat", strategy("flat"))],
        "buy_and_hold": [(f"buy_and_hold_tp{k}", strategy("buy_and_hold", k)) for k in tps],
        "trend": [(f"trend_lb{lb}_tp{k}", strategy("trend", k, lb))
                  for lb in TREND_LOOKBACKS if lb <= env.window for k in tps],
    }
    if has_labels:
        out["oracle"] = [(f"oracle_tp{k}", strategy("oracle", k)) for k in tps]
    if has_labels if bayes is None else bayes:
        out["bayes"] = [(f"bayes_band{b:g}_tp{k}", strategy("bayes", k, band=b))
                        for b in BAYES_BANDS for k in tps]
    return out


def has_regime_chain(markets: Any) -> bool:
    """Whether a market spec's generator has a regime chain (synthetic ``CHAIN_KINDS``)."""
    return getattr(markets, "kind", None) in CHAIN_KINDS and hasattr(markets, "cycle_markets")


def make_references(env: TradingEnv, markets: Any, num_cycles: int, deploy_envs: int,
                    n_steps: int, select_episodes: int, has_labels: bool = True,
                    bayes: bool | None = None):
    """``run(seed_keys[S], source, env_params) -> {family: (sums [S, C, E], choice [S, C])}``.

    Per seed and cycle each family's candidate with the best mean PnL on ``select_episodes``
    episodes of the cycle's *training* market is chosen (``choice`` indexes
    ``reference_candidates(env, has_labels)[family]``) and played on the loop's deployment
    episodes of that cycle (weight 0: the rules do not depend on the reward). The ``bayes``
    family (default: with labels on a spec with a regime chain, :func:`has_regime_chain`) filters
    each market with the generator's true parameters (``source``)."""
    bayes = has_labels and has_regime_chain(markets) if bayes is None else bayes
    cands = reference_candidates(env, has_labels, bayes)
    fams = list(cands)
    every = stack([s for f in fams for _, s in cands[f]])      # one selection rollout for all
    bounds = np.cumsum([0] + [len(cands[f]) for f in fams])

    def one_cycle(seed_key, source, env_params, c):
        keys = accounting.cycle_keys(seed_key, c)
        train_m, deploy_m = markets.cycle_markets(source, keys.market, c)
        p_train = env_params.replace(market=train_m, tp_reward_weight=jnp.float32(0.0))
        p_dep = env_params.replace(market=deploy_m, tp_reward_weight=jnp.float32(0.0))
        e_train, e_dep = ((bayes_edge(train_m, source), bayes_edge(deploy_m, source)) if bayes
                          else (None, None))
        sel_keys = accounting.episode_keys(jax.random.fold_in(keys.train, 0x5E1EC7),
                                           select_episodes)
        pnl = jax.vmap(lambda s: play(env, s, p_train, sel_keys, n_steps, e_train).pnl.mean())(
            every)
        idx = jnp.stack([lo + jnp.argmax(pnl[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                        strict=True)])
        chosen = jax.tree.map(lambda x: x[idx], every)
        dep_keys = accounting.episode_keys(keys.deploy, deploy_envs)
        sums = jax.vmap(lambda s: play(env, s, p_dep, dep_keys, n_steps, e_dep))(chosen)
        return {f: (jax.tree.map(lambda x, i=i: x[i], sums), idx[i] - bounds[i])
                for i, f in enumerate(fams)}

    def one_seed(seed_key, source, env_params):
        return jax.vmap(lambda c: one_cycle(seed_key, source, env_params, c))(
            jnp.arange(num_cycles, dtype=jnp.int32))

    return distributed.jit(jax.vmap(one_seed, (0, None, None)))


__all__ = ["BAYES_BANDS", "CHAIN_KINDS", "KINDS", "REFERENCE_FAMILIES", "TREND_LOOKBACKS",
           "FilterParams", "Strategy", "act", "bar_log_returns", "bayes_edge", "bayes_filter",
           "filter_params", "has_regime_chain", "make_references", "play",
           "reference_candidates", "reference_set", "run_strategies", "stack", "strategy",
           "strategy_actor"]
