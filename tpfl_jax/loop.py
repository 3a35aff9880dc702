"""Closed TP feedback loop on device: train -> deploy out of sample -> TP stats -> weight policy.

``make_loop(config, ppo_config, env, markets)`` returns :class:`Loop`. Its ``run`` is one jitted
program that, for every policy x seed (``vmap`` x ``vmap``), runs ``config.num_cycles`` cycles in a
``lax.scan``:

1. build the cycle's train and deploy markets from ``markets`` (fresh synthetic paths from a key,
   or the next walk-forward window of a data set); the deploy market never overlaps the bars the
   agent trained on in that cycle;
2. train PPO on the train market with the weight in force, warm-started from the previous
   cycle's network and normalisation statistics, **to a stated criterion**: chunks of
   ``config.chunk_updates`` updates in a ``lax.while_loop`` until the policy entropy is at most
   ``entropy_frac * log(n_actions)`` AND the training return has plateaued (the mean episode
   return of the last ``return_window`` chunks exceeds that of the ``return_window`` chunks
   before by at most ``return_tol`` standard deviations of those chunks' returns), or until the
   cap ``ppo_config.num_updates`` (``ppo.total_timesteps`` is the per-cycle cap). With
   ``converge=False`` every cycle trains exactly the cap. With ``carry_optimizer`` (default) the
   Adam moments carry across cycles (a continued fine-tune of the production model); the
   learning-rate schedule (linear anneal over the cap when ``ppo.anneal_lr``) restarts every
   cycle, like a new CLM training job. Without it the optimizer restarts each cycle;
3. deploy the trained policy both as trained (sampled actions) and greedy (argmax) for one
   episode in each of ``deploy_envs`` envs on the deploy market (the same reset keys for both
   modes), accumulating closed trades into TP sums and deployment metrics inside ``lax.scan``
   (no per-step outputs unless ``keep_trades``). The trades of ``feedback_mode`` (default
   ``'sampled'``: the policy as trained) feed the weight policy;
4. the feedback stats are that deployment's sums aggregated over the policy's ``history``
   (``'cycle'``: this cycle only; ``'cumulative'``: every cycle so far; ``'window'``: the last
   ``config.history_window`` cycles, the tracker's time ``window`` with one cycle per period;
   a traced per-policy code, so arms with different histories share one compile), and the
   weight policy maps them and its state to the next cycle's weight.

Policies: ``fixed`` (keeps its initial weight) and every ``clm.policies.POLICY_NAMES`` kind, all
in one :class:`LoopPolicy` pytree so a stack of them vmaps. Every seed uses the same market and
network-init keys for every policy (common random numbers: policies are compared pairwise).

Output :class:`LoopResult` leaves are ``[P, S, C, ...]`` (per-update training curves add
``[U]``, the cap, NaN after the updates used); memory is O(cycles x updates), never O(env
steps), unless ``keep_trades``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tpfl_jax.agents.networks import to_env_action
from tpfl_jax.agents.ppo import PPOConfig, PPOHParams, continue_opt_state, make_ppo
from tpfl_jax.clm.policies import (
    POLICY_NAMES,
    PolicyParams,
    PolicyState,
    apply_policy,
    make_policy_params,
)
from tpfl_jax.env.stats import TPStats, make_tp_stats, no_edge_hit_rate
from tpfl_jax.market.types import MarketData

LOOP_POLICY_KINDS = ("fixed", *POLICY_NAMES)
REASON_FIXED = -1  # reason code of the fixed policy (clm codes are >= 0)
TRAIN_CURVE_KEYS = ("finite", "episode_return", "loss", "entropy", "approx_kl", "trade/trades",
                    "trade/tp_hit_rate", "trade/mean_r", "trade/mean_tp_mult", "trade/pnl")
DEPLOY_KEYS = ("pnl", "return", "sharpe", "episode_sharpe", "hit_rate", "actual_r",
               "premature_rate", "trades", "win_rate", "mean_tp_mult", "max_drawdown",
               "episode_reward", "pnl_per_trade", "no_edge_hit_rate", "tp_skill")
DEPLOY_MODES = ("sampled", "greedy")
HISTORY_MODES = ("cycle", "cumulative", "window")
TRAIN_SUMMARY_KEYS = ("updates", "converged", "entropy", "entropy_max", "return")
# per-cycle TP sums the feedback aggregates over cycles (history)
HIST_KEYS = ("attempts", "hits", "sum_r", "premature", "vol", "pnl", "no_edge")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LoopConfig:
    """Static settings of the closed loop (PPO's per-cycle update cap is ``PPOConfig``'s
    ``num_updates``).

    num_cycles: train/deploy/update cycles. deploy_envs: parallel deploy episodes per cycle
    and mode (one episode each, ``env_params.max_steps_in_episode`` steps). feedback_mode:
    the deploy mode whose trades feed the policy (``'sampled'``: as trained; ``'greedy'``:
    argmax); both are always deployed and reported. min_attempts: fewer aggregated attempts
    -> no feedback (invalid stats). r_source: ``'estimated'`` (the seed's 1 / hit rate) or
    ``'actual'`` (mean realised R) as the stats' ``avg_r_multiple``. keep_trades: also return
    every feedback-mode deploy step's trade record (``[P, S, C, T, deploy_envs]``; small runs).
    history_window: the cycles a ``'window'``-history policy aggregates (each policy's
    ``history`` is a :class:`LoopPolicy` leaf). converge, chunk_updates,
    entropy_frac, return_window, return_tol: the training criterion (module docstring).
    carry_optimizer: carry the Adam moments across cycles (the LR schedule restarts).
    """

    num_cycles: int = 4
    deploy_envs: int = 32
    feedback_mode: str = "sampled"
    min_attempts: int = 10
    r_source: str = "estimated"
    keep_trades: bool = False
    history_window: int = 3
    converge: bool = True
    chunk_updates: int = 8
    entropy_frac: float = 0.5
    return_window: int = 2
    return_tol: float = 0.5
    carry_optimizer: bool = True

    def __post_init__(self) -> None:
        for name in ("num_cycles", "deploy_envs", "min_attempts", "history_window",
                     "chunk_updates", "return_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LoopConfig.{name} = {v!r}; expected an int >= 1")
        choices = {"r_source": ("estimated", "actual"), "feedback_mode": DEPLOY_MODES}
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise ValueError(f"LoopConfig.{name} = {getattr(self, name)!r}; expected one "
                                 f"of {ok}")
        for name, lo, hi in (("entropy_frac", 0.0, 1.0), ("return_tol", 0.0, np.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"LoopConfig.{name} = {v!r}; expected a number in [{lo}, {hi}]")
        for name in ("keep_trades", "converge", "carry_optimizer"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LoopConfig.{name} = {getattr(self, name)!r}; expected a bool")


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
    """A weight policy of the loop: ``kind`` indexes ``LOOP_POLICY_KINDS`` (0 = fixed);
    ``history`` indexes ``HISTORY_MODES`` (the feedback aggregate over cycles)."""

    kind: jax.Array
    initial_weight: jax.Array
    params: PolicyParams
    history: jax.Array = 0


def make_loop_policy(kind: str, initial_weight: float = 1.0, history: str = "cycle",
                     **overrides: float) -> LoopPolicy:
    """A :class:`LoopPolicy` of ``kind`` (``fixed`` or a clm policy) with its feedback
    ``history`` (``HISTORY_MODES``) and param overrides."""
    if kind not in LOOP_POLICY_KINDS:
        raise ValueError(f"make_loop_policy: kind = {kind!r}; expected one of "
                         f"{LOOP_POLICY_KINDS}")
    if history not in HISTORY_MODES:
        raise ValueError(f"make_loop_policy: history = {history!r}; expected one of "
                         f"{HISTORY_MODES}")
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
                      params=make_policy_params(clm_kind, **overrides),
                      history=jnp.int32(HISTORY_MODES.index(history)))


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
    after the cycle's deployment; stats: the feedback the policy saw (the ``feedback_mode``
    deployment's TP sums aggregated over ``history``); deploy: ``DEPLOY_KEYS`` metrics of the
    cycle's own deployment, as ``'sampled/<key>'`` and ``'greedy/<key>'`` for both modes and
    plain ``'<key>'`` for ``feedback_mode``; train: per-update training curves ``[..., U]``
    (``TRAIN_CURVE_KEYS``; U = the update cap, NaN / True (``finite``) after the updates used);
    training: ``TRAIN_SUMMARY_KEYS`` per cycle (updates used, criterion met, mean entropy of the
    last chunk, its maximum ``log(n_actions)``, mean training episode return of the last
    ``return_window`` chunks); trades: the feedback-mode deploy steps' trade records
    ``[..., T, deploy_envs]`` (only with ``keep_trades``) and ``trade_active`` (the env's
    episode was still running at that step). params / obs_rms: the final network parameters
    and observation statistics (leading axes ``[P, S]``).
    """

    weight: jax.Array
    next_weight: jax.Array
    reason: jax.Array
    stats: TPStats
    deploy: dict[str, jax.Array]
    train: dict[str, jax.Array]
    training: dict[str, jax.Array] | None = None
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
def max_entropy(spec: Any) -> float:
    """Entropy of the uniform policy over an action spec (NaN for continuous actions)."""
    if spec.kind in ("discrete", "multidiscrete"):
        return float(sum(np.log(n) for n in spec.dims))
    return float("nan")


def _masked_nanmean(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    m = mask & jnp.isfinite(x)
    n = m.sum()
    return jnp.where(n > 0, jnp.where(m, x, 0.0).sum() / jnp.maximum(n, 1), jnp.nan), n


def plateaued(returns: jax.Array, n_done: jax.Array, window: int, tol: float) -> jax.Array:
    """Training-return plateau after ``n_done`` chunks: the mean of the last ``window`` chunk
    returns exceeds the mean of the ``window`` before by at most ``tol`` standard deviations of
    those ``2 * window`` returns (NaN entries, chunks without a finished episode, ignored)."""
    idx = jnp.arange(returns.shape[0])
    last = (idx >= n_done - window) & (idx < n_done)
    prev = (idx >= n_done - 2 * window) & (idx < n_done - window)
    m_last, n_last = _masked_nanmean(returns, last)
    m_prev, n_prev = _masked_nanmean(returns, prev)
    both = (last | prev) & jnp.isfinite(returns)
    mu, n = _masked_nanmean(returns, both)
    var = jnp.where(both, (returns - mu) ** 2, 0.0).sum() / jnp.maximum(n - 1, 1)
    ok = (n_done >= 2 * window) & (n_last > 0) & (n_prev > 0)
    return ok & (m_last - m_prev <= tol * jnp.sqrt(var))


def make_loop(config: LoopConfig, ppo_config: PPOConfig, env: Any, markets: Markets,
              env_params: Any) -> Loop:
    """Build the closed loop. ``env_params`` (a ``TradingEnv`` params template; its market is
    replaced every cycle) fixes the static spaces and the deploy episode length."""
    ppo = make_ppo(ppo_config, env, env_params)
    network = ppo.network
    n_dep = config.deploy_envs
    t_dep = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    n_cap = ppo_config.num_updates
    chunk = config.chunk_updates if config.converge else n_cap
    if n_cap < 1 or n_cap % chunk:
        raise ValueError(f"make_loop: the update cap ppo.num_updates = {n_cap} (total_timesteps "
                         f"// (num_envs * num_steps)) must be a positive multiple of "
                         f"loop.chunk_updates = {config.chunk_updates}")
    n_chunks = n_cap // chunk
    ent_max = max_entropy(network.spec)
    ent_target = config.entropy_frac * ent_max if np.isfinite(ent_max) else np.inf
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    obs_norm = ppo_config.normalize_obs
    fb_mode = config.feedback_mode

    def train_cycle(rs, ep):
        """Chunks of PPO updates until the criterion holds or the cap; curves ``[n_cap]``."""
        m_shape = jax.eval_shape(lambda r: ppo.run(r, ep, chunk)[1], rs)
        keys = [k for k in TRAIN_CURVE_KEYS if k in m_shape]
        bufs = {k: jnp.full((n_cap,), True if k == "finite" else jnp.nan,
                            m_shape[k].dtype) for k in keys}
        rets = jnp.full((n_chunks,), jnp.nan, jnp.float32)

        def cond(c):
            _, k, done, _, _, _ = c
            return (~done) & (k < n_chunks)

        def body(c):
            rs, k, _, bufs, rets, _ = c
            rs, m = ppo.run(rs, ep, chunk)
            bufs = {key: jax.lax.dynamic_update_slice(bufs[key], m[key].astype(bufs[key].dtype),
                                                      (k * chunk,)) for key in keys}
            r = m["episode_return"]
            fin = jnp.isfinite(r)
            r_chunk = jnp.where(fin.any(), jnp.where(fin, r, 0.0).sum()
                                / jnp.maximum(fin.sum(), 1), jnp.nan)
            rets = rets.at[k].set(r_chunk)
            ent = m["entropy"].mean()
            done = (ent <= ent_target) & plateaued(rets, k + 1, config.return_window,
                                                   config.return_tol)
            done = done & config.converge
            return rs, k + 1, done, bufs, rets, ent

        c0 = (rs, jnp.int32(0), jnp.bool_(False), bufs, rets, jnp.float32(jnp.nan))
        if config.converge:
            rs, k, done, bufs, rets, ent = jax.lax.while_loop(cond, body, c0)
        else:                       # a fixed budget: one chunk of every update, no while_loop
            rs, k, done, bufs, rets, ent = body(c0)
        idx = jnp.arange(n_chunks)
        ret_last, _ = _masked_nanmean(rets, (idx >= k - config.return_window) & (idx < k))
        summary = {"updates": k * chunk, "converged": done, "entropy": ent,
                   "entropy_max": jnp.float32(ent_max), "return": ret_last}
        return rs, bufs, summary

    def deploy(params, obs_rms, ep, key, greedy: jax.Array):
        """One deploy episode per env; ``greedy`` (traced) picks argmax over sampled actions,
        so both modes run as one vmapped scan (one env step in the compiled program)."""
        k_reset, k_run = jax.random.split(key)
        obs, st = v_reset(jax.random.split(k_reset, n_dep), ep)
        f = jnp.zeros((n_dep,), jnp.float32)
        init_eq = jnp.broadcast_to(jnp.asarray(ep.initial_equity, jnp.float32), (n_dep,))
        sums0 = {k: jnp.float32(0.0) for k in (*HIST_KEYS, "wins", "tp_mult", "r_sum", "r_sq",
                                               "r_n")}

        def step(carry, k):
            obs, st, active, eq_prev, peak, max_dd, ep_rew, sums = carry
            k_act, k_step = jax.random.split(k)
            x = obs_rms.normalize(obs, ppo_config.obs_clip) if obs_norm else \
                obs.astype(jnp.float32)
            dist, _ = network.apply(params, x)
            action = to_env_action(network.spec,
                                   jnp.where(greedy, dist.mode(), dist.sample(k_act)))
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
                "no_edge": (no_edge_hit_rate(tr["r_planned"]) * closed).sum(),
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
        own = _stats(s)
        a = s["attempts"]
        d = jnp.maximum(a, 1.0)
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
            "hit_rate": own.tp_hit_rate,
            "actual_r": own.actual_r,
            "premature_rate": own.premature_exit_rate,
            "trades": a / n_dep,
            "win_rate": jnp.where(a > 0, s["wins"] / d, 0.0),
            "mean_tp_mult": jnp.where(a > 0, s["tp_mult"] / d, 0.0),
            "max_drawdown": max_dd.mean(),
            "episode_reward": ep_rew.mean(),
            "pnl_per_trade": own.pnl_per_trade,
            "no_edge_hit_rate": own.no_edge_hit_rate,
            "tp_skill": own.tp_skill,
        }
        return jnp.stack([s[k] for k in HIST_KEYS]), metrics, out

    def _stats(s) -> TPStats:
        """Feedback stats from TP sums (a dict or a ``[len(HIST_KEYS)]`` vector)."""
        if not isinstance(s, dict):
            s = dict(zip(HIST_KEYS, s, strict=True))
        a = s["attempts"]
        stats = make_tp_stats(a, s["hits"], s["sum_r"], s["premature"],
                              min_attempts=config.min_attempts,
                              volatility=jnp.where(a > 0, s["vol"] / jnp.maximum(a, 1.0), 0.0),
                              sum_pnl=s["pnl"], sum_no_edge=s["no_edge"])
        if config.r_source == "actual":
            stats = stats.replace(avg_r_multiple=stats.actual_r)
        return stats

    def run_one(key: jax.Array, policy: LoopPolicy, source: Any, env_params: Any,
                hparams: PPOHParams) -> LoopResult:
        k_mkt, k_init, k_cycles = jax.random.split(key, 3)
        train0, _ = markets.cycle_markets(source, k_mkt, jnp.int32(0))
        rs0 = ppo.init(k_init, env_params.replace(market=train0), hparams)
        pstate0 = PolicyState(weight=policy.initial_weight, n_updates=jnp.int32(0))
        n_hist = len(HIST_KEYS)
        hist0 = (jnp.zeros((n_hist,), jnp.float32),
                 jnp.zeros((config.history_window, n_hist), jnp.float32))

        def cycle(carry, c):
            net, obs_rms, ret_rms, opt_state, pstate, (cum, ring) = carry
            w = pstate.weight
            k_c = jax.random.fold_in(k_cycles, c)
            k_tr, k_dep = jax.random.split(k_c)
            train_m, deploy_m = markets.cycle_markets(source, k_mkt, c)
            ep_tr = env_params.replace(market=train_m, tp_reward_weight=w)
            rs = ppo.init(k_tr, ep_tr, hparams)
            rs = rs.replace(params=net, obs_rms=obs_rms, ret_rms=ret_rms,
                            opt_state=(continue_opt_state(rs.opt_state, opt_state)
                                       if config.carry_optimizer else rs.opt_state))
            rs, curves, summary = train_cycle(rs, ep_tr)
            ep_dep = env_params.replace(market=deploy_m, tp_reward_weight=w)
            greedy = jnp.array([m == "greedy" for m in DEPLOY_MODES])
            sums, m, outs = jax.vmap(deploy, in_axes=(None, None, None, None, 0))(
                rs.params, rs.obs_rms, ep_dep, k_dep, greedy)
            fb = DEPLOY_MODES.index(fb_mode)
            dep = {f"{mode}/{k}": v[i] for i, mode in enumerate(DEPLOY_MODES)
                   for k, v in m.items()} | {k: v[fb] for k, v in m.items()}
            out = jax.tree.map(lambda x: x[fb], outs)
            cur = sums[fb]
            cum = cum + cur
            ring = jnp.roll(ring, 1, axis=0).at[0].set(cur)
            agg = jnp.select([policy.history == 0, policy.history == 1], [cur, cum],
                             ring.sum(0))
            stats = _stats(agg)
            w_next, pstate, code = loop_policy_step(stats, pstate, policy)
            y = (w, w_next, code, stats, dep, curves, summary, out)
            return (rs.params, rs.obs_rms, rs.ret_rms, rs.opt_state, pstate, (cum, ring)), y

        carry0 = (rs0.params, rs0.obs_rms, rs0.ret_rms, rs0.opt_state, pstate0, hist0)
        (net, obs_rms, *_), (w, w_next, code, stats, dep, curves, summary, out) = jax.lax.scan(
            cycle, carry0, jnp.arange(config.num_cycles, dtype=jnp.int32))
        return LoopResult(weight=w, next_weight=w_next, reason=code, stats=stats, deploy=dep,
                          train=curves, training=summary, params=net, obs_rms=obs_rms,
                          trades=out.get("trade"), trade_active=out.get("active"))

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


__all__ = ["DEPLOY_KEYS", "DEPLOY_MODES", "HISTORY_MODES", "HIST_KEYS", "LOOP_POLICY_KINDS",
           "REASON_FIXED", "TRAIN_CURVE_KEYS", "TRAIN_SUMMARY_KEYS", "Loop", "LoopConfig",
           "LoopPolicy", "LoopResult", "SyntheticMarkets", "WalkForwardMarkets", "check_inputs",
           "loop_policy_step", "make_loop", "make_loop_policy", "max_entropy", "plateaued",
           "seed_keys", "stack_policies"]
