"""Closed TP feedback loop on device: train -> deploy out of sample -> TP stats -> weight policy.

``make_loop(config, ppo_config, env, markets)`` returns :class:`Loop`. Its ``run`` is one jitted
program that, for every policy x seed (``vmap`` x ``vmap``), runs ``config.num_cycles`` cycles in a
``lax.scan``:

1. build the cycle's train and deploy markets from ``markets`` (fresh synthetic paths from a key,
   or the next walk-forward window of a data set); the deploy market never overlaps the bars the
   agent trained on in that cycle;
2. train PPO (``ppo_config.num_updates`` updates) on the train market with the weight in force,
   warm-started from the previous cycle's network and normalisation statistics (optimizer state
   and learning-rate schedule restart each cycle, like a fresh CLM training job);
3. deploy the policy (mode or sampled actions) for one episode in each of ``deploy_envs`` envs on
   the deploy market, accumulating closed trades into :class:`~tpfl_jax.env.stats.TPStats` (the
   tracker's rules) and deployment metrics, all inside ``lax.scan`` (no per-step outputs unless
   ``keep_trades``);
4. the weight policy maps the stats and its state to the next cycle's weight.

Policies: ``fixed`` (keeps its initial weight) and every ``clm.policies.POLICY_NAMES`` kind, all
in one :class:`LoopPolicy` pytree so a stack of them vmaps. Every seed uses the same market and
network-init keys for every policy (common random numbers: policies are compared pairwise).

Output :class:`LoopResult` leaves are ``[P, S, C, ...]`` (per-update training curves add
``[U]``); memory is O(cycles x updates), never O(env steps), unless ``keep_trades``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tpfl_jax.agents.ppo import PPOConfig, PPOHParams, make_ppo, policy_action
from tpfl_jax.clm.policies import (
    POLICY_NAMES,
    PolicyParams,
    PolicyState,
    apply_policy,
    make_policy_params,
)
from tpfl_jax.env.stats import TPStats, make_tp_stats
from tpfl_jax.market.types import MarketData

LOOP_POLICY_KINDS = ("fixed", *POLICY_NAMES)
REASON_FIXED = -1  # reason code of the fixed policy (clm codes are >= 0)
TRAIN_CURVE_KEYS = ("finite", "episode_return", "loss", "entropy", "approx_kl", "trade/trades",
                    "trade/tp_hit_rate", "trade/mean_r", "trade/mean_tp_mult", "trade/pnl")
DEPLOY_KEYS = ("pnl", "return", "sharpe", "episode_sharpe", "hit_rate", "actual_r",
               "premature_rate", "trades", "win_rate", "mean_tp_mult", "max_drawdown",
               "episode_reward")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LoopConfig:
    """Static settings of the closed loop (PPO's per-cycle budget is in ``PPOConfig``).

    num_cycles: train/deploy/update cycles. deploy_envs: parallel deploy episodes per cycle
    (one episode each, ``env_params.max_steps_in_episode`` steps). deterministic: deploy with the
    policy's mode (else sampled actions). min_attempts: fewer closed deploy trades -> no
    feedback (invalid stats). r_source: ``'estimated'`` (the seed's 1 / hit rate) or
    ``'actual'`` (mean realised R) as the stats' ``avg_r_multiple``. keep_trades: also return
    every deploy step's trade record (``[P, S, C, T, deploy_envs]``; small runs only).
    """

    num_cycles: int = 4
    deploy_envs: int = 32
    deterministic: bool = True
    min_attempts: int = 10
    r_source: str = "estimated"
    keep_trades: bool = False

    def __post_init__(self) -> None:
        for name in ("num_cycles", "deploy_envs", "min_attempts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LoopConfig.{name} = {v!r}; expected an int >= 1")
        if self.r_source not in ("estimated", "actual"):
            raise ValueError(f"LoopConfig.r_source = {self.r_source!r}; expected 'estimated' "
                             "or 'actual'")


# --------------------------------------------------------------------------- markets
@dataclass(frozen=True)
class SyntheticMarkets:
    """Fresh synthetic paths every cycle: ``train_paths`` and ``deploy_paths`` independent paths
    of ``n_bars`` bars from ``tpfl_jax.market.synthetic`` (``kind``). The traced source argument
    is the generator's params struct (``synthetic.make_params(kind, ...)``), so a stack of
    parameter sets vmaps as a market axis."""

    kind: str = "regime"
    train_paths: int = 16
    deploy_paths: int = 16
    n_bars: int = 400
    substeps: int = 16

    def source(self, **params: Any) -> Any:
        """The traced source argument: the generator params of ``kind`` with overrides."""
        from tpfl_jax.market import synthetic

        return synthetic.make_params(self.kind, **params)

    def cycle_markets(self, arg: Any, key: jax.Array, cycle: jax.Array
                      ) -> tuple[MarketData, MarketData]:
        from tpfl_jax.market import synthetic

        k = jax.random.fold_in(key, cycle)
        k_tr, k_dep = jax.random.split(k)
        train = synthetic.simulate(k_tr, arg, self.train_paths, self.n_bars, self.substeps)
        deploy = synthetic.simulate(k_dep, arg, self.deploy_paths, self.n_bars, self.substeps)
        return train, deploy

    def check(self, arg: Any, num_cycles: int, need_bars: int) -> None:
        if self.n_bars < need_bars:
            raise ValueError(f"SyntheticMarkets.n_bars = {self.n_bars}; need >= {need_bars} "
                             "(env window + max_steps_in_episode + 2)")


@dataclass(frozen=True)
class WalkForwardMarkets:
    """Walk-forward windows of one data set (the traced source argument is its ``MarketData``).

    Cycle c trains on bars ``[c*step, c*step + train_bars)`` of every path and deploys on the
    next ``deploy_bars`` bars (plus the ``window`` bars before them as observation history only:
    the env never starts an episode before bar ``window`` of a market). ``step`` defaults to
    ``deploy_bars``, so successive deploy windows tile the data.
    """

    train_bars: int
    deploy_bars: int
    window: int = 16
    step: int | None = None

    @property
    def stride(self) -> int:
        return self.deploy_bars if self.step is None else self.step

    def cycle_markets(self, arg: MarketData, key: jax.Array, cycle: jax.Array
                      ) -> tuple[MarketData, MarketData]:
        del key
        start = cycle * self.stride

        def cut(x, s, n):
            if x.ndim == 1:          # symbol_id
                return x
            return jax.lax.dynamic_slice_in_dim(x, s, n, axis=1)

        train = jax.tree.map(lambda x: cut(x, start, self.train_bars), arg)
        d0 = start + self.train_bars - self.window
        deploy = jax.tree.map(lambda x: cut(x, d0, self.deploy_bars + self.window), arg)
        return train, deploy

    def check(self, arg: MarketData, num_cycles: int, need_bars: int) -> None:
        total = (num_cycles - 1) * self.stride + self.train_bars + self.deploy_bars
        if arg.n_bars < total:
            raise ValueError(
                f"WalkForwardMarkets: the data has {arg.n_bars} bars; {num_cycles} cycles need "
                f">= {total} ((num_cycles - 1) * step + train_bars + deploy_bars)")
        if self.train_bars < need_bars or self.deploy_bars + self.window < need_bars:
            raise ValueError(
                f"WalkForwardMarkets: train_bars = {self.train_bars} and deploy_bars + window "
                f"= {self.deploy_bars + self.window} must be >= {need_bars} (env window + "
                "max_steps_in_episode + 2)")
        if self.train_bars < self.window:
            raise ValueError("WalkForwardMarkets: train_bars must be >= window")


Markets = SyntheticMarkets | WalkForwardMarkets


# --------------------------------------------------------------------------- policies
@struct.dataclass
class LoopPolicy:
    """A weight policy of the loop: ``kind`` indexes ``LOOP_POLICY_KINDS`` (0 = fixed)."""

    kind: jax.Array
    initial_weight: jax.Array
    params: PolicyParams


def make_loop_policy(kind: str, initial_weight: float = 1.0, **overrides: float) -> LoopPolicy:
    """A :class:`LoopPolicy` of ``kind`` (``fixed`` or a clm policy) with param overrides."""
    if kind not in LOOP_POLICY_KINDS:
        raise ValueError(f"make_loop_policy: kind = {kind!r}; expected one of "
                         f"{LOOP_POLICY_KINDS}")
    w = initial_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
        raise ValueError(f"make_loop_policy: initial_weight = {w!r}; expected a finite "
                         "number >= 0")
    if kind == "fixed" and overrides:
        raise ValueError(f"make_loop_policy: the fixed policy takes no parameters; got "
                         f"{sorted(overrides)}")
    clm_kind = "seed_table" if kind == "fixed" else kind
    return LoopPolicy(kind=jnp.int32(LOOP_POLICY_KINDS.index(kind)),
                      initial_weight=jnp.float32(w),
                      params=make_policy_params(clm_kind, **overrides))


def stack_policies(policies: list[LoopPolicy]) -> LoopPolicy:
    """Stack policies along a new leading axis (the vmapped policy axis)."""
    if not policies:
        raise ValueError("stack_policies: need at least one policy")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *policies)


def loop_policy_step(stats: TPStats, state: PolicyState, policy: LoopPolicy
                     ) -> tuple[jax.Array, PolicyState, jax.Array]:
    """Next weight: ``fixed`` keeps ``initial_weight``; others run ``clm.policies``."""
    params = policy.params.replace(policy_id=jnp.maximum(policy.kind - 1, 0))
    w, new_state, code = apply_policy(stats, state, params)
    fixed = policy.kind == 0
    w = jnp.where(fixed, policy.initial_weight, w).astype(jnp.float32)
    code = jnp.where(fixed, REASON_FIXED, code).astype(jnp.int32)
    return w, PolicyState(weight=w, n_updates=new_state.n_updates), code


# --------------------------------------------------------------------------- results
@struct.dataclass
class LoopResult:
    """Per policy x seed x cycle outputs (leading axes ``[P, S, C]``).

    weight: the weight trained with in the cycle; next_weight / reason: the policy's decision
    after the cycle's deployment; stats: the deployment's ``TPStats``; deploy: ``DEPLOY_KEYS``
    metrics; train: per-update training curves ``[..., U]`` (``TRAIN_CURVE_KEYS``); trades: the
    deploy steps' trade records ``[..., T, deploy_envs]`` (only with ``keep_trades``) and
    ``trade_active`` (the env's episode was still running at that step). params / obs_rms: the
    final network parameters and observation statistics (leading axes ``[P, S]``).
    """

    weight: jax.Array
    next_weight: jax.Array
    reason: jax.Array
    stats: TPStats
    deploy: dict[str, jax.Array]
    train: dict[str, jax.Array]
    params: Any = None
    obs_rms: Any = None
    trades: dict[str, jax.Array] | None = None
    trade_active: jax.Array | None = None


class Loop(NamedTuple):
    """The pure functions of one closed-loop configuration.

    run_one(key, policy, source, env_params, hparams) -> LoopResult ``[C]`` (one policy/seed);
    batched(keys[S], policies[P], source, env_params, hparams) -> LoopResult ``[P, S, C]``;
    run = ``jax.jit(batched)``; run_markets: ``run`` vmapped over a leading market axis of
    ``source`` -> ``[M, P, S, C]``.
    """

    config: LoopConfig
    ppo_config: PPOConfig
    markets: Markets
    run_one: Any
    batched: Any
    run: Any
    run_markets: Any


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """``num_seeds`` typed keys ``fold_in(key(seed), i)``."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num_seeds))


# --------------------------------------------------------------------------- make_loop
def make_loop(config: LoopConfig, ppo_config: PPOConfig, env: Any, markets: Markets,
              env_params: Any) -> Loop:
    """Build the closed loop. ``env_params`` (a ``TradingEnv`` params template; its market is
    replaced every cycle) fixes the static spaces and the deploy episode length."""
    ppo = make_ppo(ppo_config, env, env_params)
    network = ppo.network
    n_dep = config.deploy_envs
    t_dep = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    n_upd = ppo_config.num_updates
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    obs_norm = ppo_config.normalize_obs

    def deploy(params, obs_rms, ep, key):
        k_reset, k_run = jax.random.split(key)
        obs, st = v_reset(jax.random.split(k_reset, n_dep), ep)
        f = jnp.zeros((n_dep,), jnp.float32)
        init_eq = jnp.broadcast_to(jnp.asarray(ep.initial_equity, jnp.float32), (n_dep,))
        sums0 = {k: jnp.float32(0.0) for k in ("attempts", "hits", "sum_r", "premature", "vol",
                                               "wins", "tp_mult", "pnl", "r_sum", "r_sq",
                                               "r_n")}

        def step(carry, k):
            obs, st, active, eq_prev, peak, max_dd, ep_rew, sums = carry
            k_act, k_step = jax.random.split(k)
            action = policy_action(network, params, obs, None if config.deterministic else k_act,
                                   obs_rms if obs_norm else None, ppo_config.obs_clip)
            obs, st, reward, term, trunc, info = v_step(jax.random.split(k_step, n_dep), st,
                                                        action, ep)
            tr = info["trade"]
            act = active.astype(jnp.float32)
            closed = tr["closed"].astype(jnp.float32) * act
            eq = jnp.where(active, info["equity"], eq_prev)
            step_ret = (eq - eq_prev) / eq_prev
            peak_n = jnp.maximum(peak, eq)
            max_dd = jnp.maximum(max_dd, 1.0 - eq / peak_n)
            tp_vol = jnp.abs(tr["tp_price"] - tr["entry_price"]) / jnp.maximum(
                tr["tp_mult"] * tr["entry_price"], 1e-12)
            add = {
                "attempts": closed.sum(), "hits": (tr["hit"] * closed).sum(),
                "sum_r": (tr["r_realised"] * closed).sum(),
                "premature": (tr["premature"] * closed).sum(),
                "vol": (tp_vol * closed).sum(), "wins": ((tr["pnl"] > 0) * closed).sum(),
                "tp_mult": (tr["tp_mult"] * closed).sum(), "pnl": (tr["pnl"] * closed).sum(),
                "r_sum": (step_ret * act).sum(), "r_sq": (step_ret ** 2 * act).sum(),
                "r_n": act.sum(),
            }
            sums = {k: sums[k] + add[k] for k in sums}
            ep_rew = ep_rew + reward * act
            out = {"trade": tr, "active": active} if config.keep_trades else {}
            active = active & ~(term | trunc)
            return (obs, st, active, eq, peak_n, max_dd, ep_rew, sums), out

        carry0 = (obs, st, jnp.ones((n_dep,), bool), init_eq, init_eq, f, f, sums0)
        (_, _, _, eq, _, max_dd, ep_rew, s), out = jax.lax.scan(
            step, carry0, jax.random.split(k_run, t_dep))
        a = s["attempts"]
        d = jnp.maximum(a, 1.0)
        stats = make_tp_stats(a, s["hits"], s["sum_r"], s["premature"],
                              min_attempts=config.min_attempts,
                              volatility=jnp.where(a > 0, s["vol"] / d, 0.0))
        if config.r_source == "actual":
            stats = stats.replace(avg_r_multiple=stats.actual_r)
        ep_ret = eq / init_eq - 1.0
        r_mean = s["r_sum"] / jnp.maximum(s["r_n"], 1.0)
        r_std = jnp.sqrt(jnp.maximum(s["r_sq"] / jnp.maximum(s["r_n"], 1.0) - r_mean ** 2, 0.0))
        e_std = ep_ret.std()
        metrics = {
            "pnl": (eq - init_eq).mean(),
            "return": ep_ret.mean(),
            "sharpe": jnp.where(r_std > 0, r_mean / jnp.maximum(r_std, 1e-12), 0.0),
            "episode_sharpe": jnp.where(e_std > 0, ep_ret.mean() / jnp.maximum(e_std, 1e-12),
                                        0.0),
            "hit_rate": stats.tp_hit_rate,
            "actual_r": stats.actual_r,
            "premature_rate": stats.premature_exit_rate,
            "trades": a / n_dep,
            "win_rate": jnp.where(a > 0, s["wins"] / d, 0.0),
            "mean_tp_mult": jnp.where(a > 0, s["tp_mult"] / d, 0.0),
            "max_drawdown": max_dd.mean(),
            "episode_reward": ep_rew.mean(),
        }
        return stats, metrics, out

    def run_one(key: jax.Array, policy: LoopPolicy, source: Any, env_params: Any,
                hparams: PPOHParams) -> LoopResult:
        k_mkt, k_init, k_cycles = jax.random.split(key, 3)
        train0, _ = markets.cycle_markets(source, k_mkt, jnp.int32(0))
        rs0 = ppo.init(k_init, env_params.replace(market=train0), hparams)
        pstate0 = PolicyState(weight=policy.initial_weight, n_updates=jnp.int32(0))

        def cycle(carry, c):
            net, obs_rms, ret_rms, pstate = carry
            w = pstate.weight
            k_c = jax.random.fold_in(k_cycles, c)
            k_tr, k_dep = jax.random.split(k_c)
            train_m, deploy_m = markets.cycle_markets(source, k_mkt, c)
            ep_tr = env_params.replace(market=train_m, tp_reward_weight=w)
            rs = ppo.init(k_tr, ep_tr, hparams).replace(params=net, obs_rms=obs_rms,
                                                        ret_rms=ret_rms)
            rs, m = ppo.run(rs, ep_tr, n_upd)
            ep_dep = env_params.replace(market=deploy_m, tp_reward_weight=w)
            stats, dep, out = deploy(rs.params, rs.obs_rms, ep_dep, k_dep)
            w_next, pstate, code = loop_policy_step(stats, pstate, policy)
            curves = {k: m[k] for k in TRAIN_CURVE_KEYS if k in m}
            y = (w, w_next, code, stats, dep, curves, out)
            return (rs.params, rs.obs_rms, rs.ret_rms, pstate), y

        carry0 = (rs0.params, rs0.obs_rms, rs0.ret_rms, pstate0)
        (net, obs_rms, _, _), (w, w_next, code, stats, dep, curves, out) = jax.lax.scan(
            cycle, carry0, jnp.arange(config.num_cycles, dtype=jnp.int32))
        return LoopResult(weight=w, next_weight=w_next, reason=code, stats=stats, deploy=dep,
                          train=curves, params=net, obs_rms=obs_rms, trades=out.get("trade"),
                          trade_active=out.get("active"))

    def batched(keys: jax.Array, policies: LoopPolicy, source: Any, env_params: Any,
                hparams: PPOHParams) -> LoopResult:
        over_seeds = jax.vmap(run_one, in_axes=(0, None, None, None, None))
        over_policies = jax.vmap(over_seeds, in_axes=(None, 0, None, None, None))
        return over_policies(keys, policies, source, env_params, hparams)

    run = jax.jit(batched)
    run_markets = jax.jit(jax.vmap(batched, in_axes=(None, None, 0, None, None)))
    return Loop(config, ppo_config, markets, run_one, batched, run, run_markets)


def check_inputs(loop: Loop, source: Any, env: Any, env_params: Any) -> None:
    """Host-side validation of the market source against the env (errors name the field)."""
    need = env.window + int(np.max(np.asarray(env_params.max_steps_in_episode))) + 2
    loop.markets.check(source, loop.config.num_cycles, need)


__all__ = ["DEPLOY_KEYS", "LOOP_POLICY_KINDS", "REASON_FIXED", "TRAIN_CURVE_KEYS", "Loop",
           "LoopConfig", "LoopPolicy", "LoopResult", "SyntheticMarkets", "WalkForwardMarkets",
           "check_inputs", "loop_policy_step", "make_loop", "make_loop_policy", "seed_keys",
           "stack_policies"]
