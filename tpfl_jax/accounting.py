"""One rollout and one accounting layer: every metric the package writes is defined here, once.

* :func:`rollout` plays one episode per key of any *actor* ``(obs, state, key) -> action`` (a
  sampled or greedy network, a reference rule) through ``TradingEnv.step_env`` in one
  ``lax.scan`` (episodes are vmapped; an episode stops at ruin or at
  ``max_steps_in_episode``) and returns per-episode :class:`EpisodeSums`.
* :func:`episode_keys` is the key schedule: the reset key and per-step keys of every episode come
  from it, so any two rollouts given the same key play the same episodes (paths, start bars and
  per-step draws): arms and reference rules are compared on common random numbers by
  construction.
* :func:`finalize` turns sums (any leading axes, episodes last) into :data:`METRICS`, the one
  definition of every metric name the package writes (the unit is in each name's docstring);
  :func:`tp_stats` turns them into the tracker aggregates :class:`~tpfl_jax.env.stats.TPStats`.
* :func:`trade_sums_from_frame` builds the same sums from a host table of closed trades, so a
  backtest table is scored by the same definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import struct

from tpfl_jax.env.stats import (
    EXIT_TP,
    TPStats,
    bonus_accuracy,
    make_tp_stats,
    no_edge_hit_rate,
)
from tpfl_jax.reward import TERM_NAMES

Actor = Callable[[jax.Array, Any, jax.Array], jax.Array]

# The trade accuracies a bonus can be paid on (``env.trading.ACCURACY_MODES``; repeated here as
# the sums' keys so this module imports nothing from the env beyond the trade contract).
BONUS_MODES = ("mfe_ratio", "hit", "skill")


@struct.dataclass
class EpisodeSums:
    """Sums over one episode (or, after :func:`total`, over many). Every leaf is float32.

    Episode level: ``steps`` played, ``reward`` (sum of rewards), ``terms`` (each reward term
    summed, keyed by ``reward.TERM_NAMES``), ``pnl`` (equity at the end minus at the start,
    currency, after costs), ``ret`` (that PnL over the starting equity), ``ret_sq`` (its
    square, for the spread across episodes), ``max_drawdown`` (the episode's deepest fall from
    its equity peak, a fraction of equity), ``episodes`` (1 per episode).
    Trade level (closed trades only): ``trades``, ``hits`` (exits by TP), ``wins`` (PnL > 0),
    ``r`` / ``r_sq`` (realised R and its square), ``trade_pnl`` (currency), ``tp_mult`` (TP
    distance in volatility units), ``no_edge`` (no-edge hit probability ``1 / (1 + r_planned)``),
    ``premature`` (manual/time exits after which price reached the TP), ``vol`` (the volatility
    unit relative to the entry price), ``accuracy`` (``tp_zone_accuracy``), ``bonus_pos``
    (``max(accuracy, 0)`` under each of ``BONUS_MODES``: the bonus per unit ``5 x weight``).
    """

    steps: jax.Array
    reward: jax.Array
    terms: dict[str, jax.Array]
    pnl: jax.Array
    ret: jax.Array
    ret_sq: jax.Array
    max_drawdown: jax.Array
    episodes: jax.Array
    trades: jax.Array
    hits: jax.Array
    wins: jax.Array
    r: jax.Array
    r_sq: jax.Array
    trade_pnl: jax.Array
    tp_mult: jax.Array
    no_edge: jax.Array
    premature: jax.Array
    vol: jax.Array
    accuracy: jax.Array
    bonus_pos: dict[str, jax.Array]


TRADE_FIELDS = ("trades", "hits", "wins", "r", "r_sq", "trade_pnl", "tp_mult", "no_edge",
                "premature", "vol", "accuracy")


def zero_sums() -> EpisodeSums:
    """All-zero sums (the identity of :func:`add`)."""
    z = jnp.float32(0.0)
    return EpisodeSums(
        steps=z, reward=z, terms={n: z for n in TERM_NAMES}, pnl=z, ret=z, ret_sq=z,
        max_drawdown=z, episodes=z, **{k: z for k in TRADE_FIELDS},
        bonus_pos={m: z for m in BONUS_MODES})


def add(a: EpisodeSums, b: EpisodeSums) -> EpisodeSums:
    """Elementwise sum of two sums pytrees."""
    return jax.tree.map(jnp.add, a, b)


def total(sums: EpisodeSums, axis: int | tuple[int, ...] = -1) -> EpisodeSums:
    """Sum over ``axis`` (default the episode axis)."""
    return jax.tree.map(lambda x: jnp.sum(x, axis=axis), sums)


def trade_sums(trade: dict[str, jax.Array], mask: jax.Array | float = 1.0,
               sl_mult: jax.Array | float = 1.0) -> EpisodeSums:
    """The trade-level part of :class:`EpisodeSums` from ``info["trade"]`` records (any shape;
    ``mask`` keeps only some records, e.g. steps of a running episode); episode fields 0."""
    c = trade["closed"].astype(jnp.float32) * mask
    r = trade["r_realised"]
    tp_vol = jnp.abs(trade["tp_price"] - trade["entry_price"]) / jnp.maximum(
        trade["tp_mult"] * trade["entry_price"], 1e-12)
    bonus = {m: jnp.maximum(bonus_accuracy(i, trade["hit"], trade["tp_zone_accuracy"],
                                           trade["tp_mult"], sl_mult), 0.0) * c
             for i, m in enumerate(BONUS_MODES)}
    z = jnp.zeros_like(c)
    return EpisodeSums(
        steps=z, reward=z, terms={n: z for n in TERM_NAMES}, pnl=z, ret=z, ret_sq=z,
        max_drawdown=z, episodes=z,
        trades=c, hits=trade["hit"] * c, wins=(trade["pnl"] > 0) * c, r=r * c, r_sq=r * r * c,
        trade_pnl=trade["pnl"] * c, tp_mult=trade["tp_mult"] * c,
        no_edge=no_edge_hit_rate(trade["r_planned"]) * c, premature=trade["premature"] * c,
        vol=tp_vol * c, accuracy=trade["tp_zone_accuracy"] * c, bonus_pos=bonus)


# --------------------------------------------------------------------------- key schedule
def episode_keys(key: jax.Array, n_episodes: int) -> jax.Array:
    """The ``n_episodes`` episode keys of a rollout keyed by ``key``; episode ``e`` resets with
    ``split(keys[e])[0]`` and steps with ``split(split(keys[e])[1], n_steps)``
    (:func:`rollout`). Every rollout of the package derives its episodes here."""
    return jax.random.split(key, n_episodes)


class CycleKeys(NamedTuple):
    """The keys of one seed's cycle: ``market`` (the cycle's markets, with the cycle folded in
    by the spec), ``init`` (the network), ``train`` (PPO and its data stream), ``deploy`` (the
    deploy episodes: ``accounting.episode_keys(deploy, deploy_envs)``)."""

    market: jax.Array
    init: jax.Array
    train: jax.Array
    deploy: jax.Array


def cycle_keys(seed_key: jax.Array, cycle: jax.Array | int) -> CycleKeys:
    """The one key derivation of the loop; reference rules and replays use it too."""
    k_mkt, k_init, k_cycles = jax.random.split(seed_key, 3)
    k_tr, k_dep = jax.random.split(jax.random.fold_in(k_cycles, cycle))
    return CycleKeys(k_mkt, k_init, k_tr, k_dep)


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """``num_seeds`` typed keys ``fold_in(key(seed), i)`` (the seeds of every app)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num_seeds))



# --------------------------------------------------------------------------- rollout
@struct.dataclass
class Rollout:
    """Per-episode sums ``[E]``; with ``keep_trades`` also every step's trade record
    ``[E, T]`` and ``active`` (the episode was still running at that step); with
    ``keep_steps`` every step's action ``[E, T, ...]``, the observation it was chosen on
    ``[E, T, ...]`` and ``active``."""

    sums: EpisodeSums
    trades: dict[str, jax.Array] | None = None
    active: jax.Array | None = None
    obs: jax.Array | None = None
    actions: jax.Array | None = None


def episode_paths(env: Any, n_paths: int, n_episodes: int) -> np.ndarray | None:
    """The path each of ``n_episodes`` rollout episodes plays on a market of ``n_paths``
    (``env.episode_paths``: the trading env's ``e % n_paths``), or None on an env whose reset
    draws its own path."""
    fn = getattr(env, "episode_paths", None)
    return None if fn is None else fn(n_paths, n_episodes)


def rollout(env: Any, actor: Actor, env_params: Any, keys: jax.Array, n_steps: int,
            keep_trades: bool = False, keep_steps: bool = False) -> Rollout:
    """Play one episode per key in ``keys`` (``[E]``, see :func:`episode_keys`) for at most
    ``n_steps`` (static) steps with ``actor(obs, state, key) -> action`` (one env's view).

    The episode starts where ``env.reset`` starts for its reset key and stops at termination
    (ruin) or after ``max_steps_in_episode`` steps (truncation); no auto-reset. On an env that
    assigns paths (:func:`episode_paths`: the trading env) episode ``e`` plays path
    ``e % n_paths`` (its start bar from its key): E episodes on E paths visit E distinct
    paths. Any gymnax env works: trade
    and equity sums stay 0 for an env without ``info["trade"]`` / ``equity``.
    """

    sl_mult = getattr(env_params, "sl_mult", 1.0)
    n_stop = env_params.max_steps_in_episode
    market = getattr(env_params, "market", None)
    paths = None if market is None else episode_paths(env, market.n_paths, keys.shape[0])

    def episode(key: jax.Array, path: Any):
        k_reset, k_run = jax.random.split(key)
        obs, st0 = (env.reset_env(k_reset, env_params) if paths is None
                    else env.reset_env(k_reset, env_params, lane_next=path))

        def step(carry, k):
            obs, st, active, sums = carry
            k_act, k_env = jax.random.split(k)
            action = actor(obs, st, k_act)
            obs_n, st_n, reward, term, info = env.step_env(k_env, st, action, env_params)
            f = active.astype(jnp.float32)
            terms = info.get("reward_terms", {})
            add_ = (trade_sums(info["trade"], f, sl_mult) if "trade" in info
                    else zero_sums()).replace(
                steps=f, reward=jnp.asarray(reward, jnp.float32) * f,
                terms={n: jnp.asarray(terms.get(n, 0.0), jnp.float32) * f for n in TERM_NAMES})
            sums = add(sums, add_)
            st = jax.tree.map(lambda x, y: jnp.where(active, x, y), st_n, st)
            out = {"active": active} if keep_trades or keep_steps else None
            if keep_trades and "trade" in info:
                out["trades"] = info["trade"]
            if keep_steps:                  # the observation the action was chosen on
                out |= {"obs": obs, "actions": action}
            obs = jnp.where(active, obs_n, obs)
            trunc = st_n.time >= n_stop
            return (obs, st, active & ~(term | trunc), sums), out

        (_, st, _, sums), out = jax.lax.scan(
            step, (obs, st0, jnp.bool_(True), zero_sums()), jax.random.split(k_run, n_steps))
        if hasattr(st, "equity"):          # a trading env: the episode's equity accounting
            eq0 = st0.equity
            ret = st.equity / eq0 - 1.0
            sums = sums.replace(pnl=st.equity - eq0, ret=ret, ret_sq=ret * ret,
                                max_drawdown=st.max_drawdown)
        return sums.replace(episodes=jnp.float32(1.0)), out

    sums, out = jax.vmap(episode)(keys, paths)
    if not (keep_trades or keep_steps):
        return Rollout(sums)
    return Rollout(sums, out.get("trades"), out["active"], out.get("obs"), out.get("actions"))


DEPLOY_MODES = ("sampled", "greedy")


# --------------------------------------------------------------------------- finalize
METRICS: dict[str, str] = {
    "pnl": "mean PnL per episode (currency, after costs)",
    "return": "mean return per episode (fraction of the starting equity)",
    "episode_sharpe": "mean / sd across episodes of the episode return (0 when sd is 0)",
    "max_drawdown": "mean over episodes of the deepest fall from the equity peak (fraction)",
    "reward": "mean reward per episode",
    "steps": "mean steps per episode",
    "trades": "closed trades per episode",
    "hit_rate": "TP exits / closed trades (0 without trades)",
    "win_rate": "trades with PnL > 0 / closed trades",
    "mean_r": "mean realised R per closed trade (PnL after costs / initial risk)",
    "trade_sharpe": "mean / sd of realised R across closed trades (per trade; 0 when sd is 0)",
    "pnl_per_trade": "mean PnL per closed trade (currency)",
    "mean_tp_mult": "mean TP distance per closed trade (volatility units)",
    "no_edge_hit_rate": "mean no-edge hit probability sl / (tp + sl) of the trades' TPs",
    "tp_skill": "hit_rate - no_edge_hit_rate",
    "premature_rate": "manual/time exits after which price reached the TP / closed trades",
    "tp_zone_accuracy": "mean tp_zone_accuracy per closed trade",
}


def _xp(tree: Any) -> Any:
    """numpy for host (numpy) leaves, so host metrics keep float64; jnp otherwise."""
    return jnp if any(isinstance(x, jax.Array) for x in jax.tree.leaves(tree)) else np


def finalize(sums: EpisodeSums, axis: int | tuple[int, ...] | None = -1) -> dict[str, jax.Array]:
    """Every metric of :data:`METRICS` from sums, reducing ``axis`` first (the episode axis by
    default; ``None``: ``sums`` are already totals). Works on jnp (traced or not) and numpy
    leaves (computed in numpy then)."""
    xp = _xp(sums)

    def _ratio(num, den):
        with np.errstate(divide="ignore", invalid="ignore"):
            return xp.where(den > 0, num / xp.maximum(den, 1e-30), 0.0)

    def _sharpe(s, s2, n):
        mean = _ratio(s, n)
        sd = xp.sqrt(xp.maximum(_ratio(s2 - n * mean * mean, n - 1.0), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return xp.where((n > 1) & (sd > 1e-12 * xp.maximum(xp.abs(mean), 1.0)),
                            mean / xp.maximum(sd, 1e-30), 0.0)

    t = sums if axis is None else jax.tree.map(lambda x: xp.sum(x, axis=axis), sums)
    n_ep, n_tr = t.episodes, t.trades
    hit = _ratio(t.hits, n_tr)
    no_edge = _ratio(t.no_edge, n_tr)
    return {
        "pnl": _ratio(t.pnl, n_ep),
        "return": _ratio(t.ret, n_ep),
        "episode_sharpe": _sharpe(t.ret, t.ret_sq, n_ep),
        "max_drawdown": _ratio(t.max_drawdown, n_ep),
        "reward": _ratio(t.reward, n_ep),
        "steps": _ratio(t.steps, n_ep),
        "trades": _ratio(n_tr, n_ep),
        "hit_rate": hit,
        "win_rate": _ratio(t.wins, n_tr),
        "mean_r": _ratio(t.r, n_tr),
        "trade_sharpe": _sharpe(t.r, t.r_sq, n_tr),
        "pnl_per_trade": _ratio(t.trade_pnl, n_tr),
        "mean_tp_mult": _ratio(t.tp_mult, n_tr),
        "no_edge_hit_rate": no_edge,
        "tp_skill": hit - no_edge,
        "premature_rate": _ratio(t.premature, n_tr),
        "tp_zone_accuracy": _ratio(t.accuracy, n_tr),
    }


def tp_stats(totals: EpisodeSums | dict[str, jax.Array], min_attempts: int | jax.Array = 10,
             r_source: str = "estimated") -> TPStats:
    """Tracker aggregates of summed trades (attempts = closed trades; the tracker's rules), or of
    a batch of ``info["trade"]`` records (any leading axes, all summed):
    ``r_source='actual'`` puts the mean realised R in ``avg_r_multiple`` instead of the seed's
    estimate ``1 / hit_rate``."""
    if not isinstance(totals, EpisodeSums):
        totals = total(trade_sums(totals), axis=tuple(range(np.ndim(totals["closed"]))))
    a = jnp.asarray(totals.trades)
    vol = jnp.where(a > 0, totals.vol / jnp.maximum(a, 1.0), 0.0)
    stats = make_tp_stats(a, totals.hits, totals.r, totals.premature, min_attempts=min_attempts,
                          volatility=vol, sum_pnl=totals.trade_pnl, sum_no_edge=totals.no_edge)
    if r_source == "actual":
        stats = stats.replace(avg_r_multiple=stats.actual_r)
    return stats


def train_info_metrics(info: dict[str, Any]) -> dict[str, jax.Array]:
    """PPO's ``info_metrics`` hook for ``TradingEnv``: the trades that closed in a training
    rollout (``info`` stacked ``[T, n_envs]``) as ``trade/<metric>`` (:data:`METRICS`' trade
    definitions; ``trade/trades`` and ``trade/pnl`` are totals over the rollout), the mean of each
    reward term per step (``reward_terms/<name>``) and ``reused_paths`` (resets onto a path
    another episode used, see ``market.stream``)."""
    trade = info["trade"]
    t = total(trade_sums(trade), axis=tuple(range(trade["closed"].ndim)))
    m = finalize(t, axis=None)
    out = {"trade/trades": t.trades, "trade/pnl": t.trade_pnl}
    out |= {f"trade/{k}": m[k] for k in ("hit_rate", "mean_r", "mean_tp_mult", "tp_skill",
                                         "premature_rate", "tp_zone_accuracy")}
    out |= {f"reward_terms/{k}": jnp.mean(v) for k, v in info["reward_terms"].items()}
    if "reused_path" in info:
        out["reused_paths"] = jnp.sum(info["reused_path"]).astype(jnp.float32)
    return out


def trade_sums_from_frame(trades: pd.DataFrame, sl_mult: float = 1.0) -> EpisodeSums:
    """Trade-level sums (numpy) of a host table of closed trades with the trade contract's
    columns (``env.stats.TRADE_KEYS``; ``exit_reason`` as a name or a code). ``r_realised`` and
    ``exit_reason`` are required; a missing optional column counts as 0 (without ``pnl``, wins
    are counted on R: the initial risk is positive, so PnL and R have one sign)."""
    missing = [c for c in ("r_realised", "exit_reason") if c not in trades.columns]
    if missing:
        raise ValueError(f"trade_sums_from_frame: columns {missing} missing; expected the "
                         "trade contract's columns (env.stats.TRADE_KEYS)")
    r = trades["r_realised"].to_numpy(float)
    if not np.all(np.isfinite(r)):
        bad = int(np.flatnonzero(~np.isfinite(r))[0])
        raise ValueError(f"trade_sums_from_frame: row {trades.index[bad]!r}: r_realised = "
                         f"{r[bad]}; expected a finite number")
    reasons = trades["exit_reason"]
    hit = (reasons == EXIT_TP) if pd.api.types.is_numeric_dtype(reasons) else (reasons == "tp")
    zero = np.zeros(len(trades))
    rec = {k: trades[k].to_numpy(float) if k in trades.columns else zero
           for k in ("pnl", "tp_mult", "r_planned", "premature", "tp_price", "entry_price",
                     "tp_zone_accuracy")}
    if "pnl" not in trades.columns:
        rec["pnl"] = r                        # for the win count only; trade_pnl is reset below
    rec |= {"r_realised": r, "closed": np.ones(len(trades), bool), "hit": np.asarray(hit, bool)}
    with jax.enable_x64(True):            # host sums in float64
        sums = jax.device_get(trade_sums(rec, np.float64(1.0), sl_mult))
    sums = jax.tree.map(lambda x: np.asarray(x, np.float64).sum(), sums)
    return sums if "pnl" in trades.columns else sums.replace(trade_pnl=np.float64(0.0))


def exit_reason_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per exit reason and over all closed trades of a ``env.frames.trades_frame`` table:
    ``trades``, ``share``, and ``mean_r``, ``mean_tp_accuracy``, ``premature_rate`` and
    ``total_pnl`` from :func:`finalize` of the group's :func:`trade_sums_from_frame`."""
    def row(g: pd.DataFrame) -> dict[str, float]:
        m = finalize(trade_sums_from_frame(g), axis=None)
        return {"trades": len(g), "share": len(g) / max(len(df), 1),
                "mean_r": float(m["mean_r"]), "mean_tp_accuracy": float(m["tp_zone_accuracy"]),
                "premature_rate": float(m["premature_rate"]),
                "total_pnl": float(m["pnl_per_trade"]) * len(g)}

    groups = {str(k): row(g) for k, g in df.groupby("exit_reason", observed=True)}
    return pd.DataFrame.from_dict({**groups, "all": row(df)}, orient="index")


__all__ = ["BONUS_MODES", "DEPLOY_MODES", "METRICS", "Actor", "EpisodeSums", "Rollout", "add",
           "episode_keys", "exit_reason_table", "finalize", "rollout", "total",
           "tp_stats", "trade_sums", "trade_sums_from_frame", "train_info_metrics", "zero_sums"]
