"""Closed TP feedback loop on device: train -> deploy out of sample -> TP stats -> weight policy.

``make_loop(config, ppo_config, env, markets, env_params)`` returns :class:`Loop`; batched over
policies x seeds by ``sweeps.make_loop_sweep`` it is one jitted program that, for every policy x
seed, runs ``config.num_cycles``
cycles in a ``lax.scan`` (:meth:`LoopProgram.cycle`):

1. the cycle's markets (``market.specs``): on synthetic markets PPO trains on freshly generated
   paths before every update (``markets.fresh``; no bar is seen twice) and deploys on held-out
   paths; on a data set it trains on the cycle's walk-forward window and deploys on the next;
2. PPO trains with the weight in force, warm-started from the previous cycle's network and
   normalisation statistics (:meth:`LoopProgram.train`), in chunks of ``config.chunk_updates``
   updates: ``ppo_config.num_updates`` of them (``converge=False``, the CLI's default: a fixed
   budget, ``ppo.total_timesteps`` per cycle), or, with ``converge``, in a ``lax.while_loop``
   until the policy entropy is at most ``entropy_frac * log(n_actions)`` AND the training return
   has plateaued (:func:`plateaued`), capped there. After every chunk the policy is scored on
   the cycle's deploy episodes (greedy and sampled): the learning curve. With
   ``carry_optimizer`` the Adam moments carry across cycles; the learning-rate schedule restarts;
3. the trained policy deploys, sampled (as trained) and greedy (argmax), for one episode in each
   of ``deploy_envs`` envs on the deploy market (``accounting.rollout``: the same episodes for
   both modes, for every arm and for the reference rules of ``baselines``): the evaluation
   after the last chunk is the deployment;
4. the feedback stats are the ``feedback_mode`` deployment's trade sums aggregated over the
   policy's ``history`` (``'cycle'``, ``'cumulative'`` or the last ``history_window`` cycles; a
   traced per-policy code), and the weight policy (``clm.policies``, ``fixed`` included) maps
   them and its state to the next cycle's weight.

Every seed uses the same market, data-stream and network-init keys for every policy
(:func:`cycle_keys`; common random numbers: policies are compared pairwise).

Output :class:`LoopResult` leaves are ``[P, S, C, ...]`` (per-update training curves add
``[U]``, the cap; learning curves ``[K]`` chunks; NaN after the updates used); memory is
O(cycles x updates), never O(env steps), unless ``keep_trades``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tpfl_jax import accounting
from tpfl_jax.accounting import CycleKeys, cycle_keys, seed_keys
from tpfl_jax.agents.evaluate import deploy_both_modes
from tpfl_jax.agents.ppo import (
    PPOConfig,
    PPOHParams,
    RunnerState,
    continue_opt_state,
    make_ppo,
    masked_mean,
)
from tpfl_jax.clm.policies import (
    POLICY_NAMES,
    PolicyParams,
    PolicyState,
    apply_policy,
    init_policy_state,
    is_user_kind,
    load_policy,
    make_policy_params,
    policy_id,
    policy_name,
)
from tpfl_jax.env.stats import TPStats
from tpfl_jax.market.specs import Markets, SyntheticMarkets, WalkForwardMarkets

LOOP_POLICY_KINDS = POLICY_NAMES   # the built-ins; user policies: "package.module:function"
POLICY_KEY_TAG = 0x706F6C   # folded into a seed's key: the policy's PRNG key (PolicyState.key)
TRAIN_CURVE_KEYS = ("finite", "episode_return", "loss", "entropy", "approx_kl", "trade/trades",
                    "trade/hit_rate", "trade/mean_r", "trade/mean_tp_mult", "trade/pnl",
                    "reused_paths")
DEPLOY_KEYS = tuple(accounting.METRICS)
DEPLOY_MODES = accounting.DEPLOY_MODES
HISTORY_MODES = ("cycle", "cumulative", "window")
TRAIN_SUMMARY_KEYS = ("updates", "converged", "entropy", "entropy_max", "return")
CURVE_KEYS = ("sampled_pnl", "greedy_pnl")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LoopConfig:
    """Static settings of the closed loop (PPO's per-cycle update cap is ``PPOConfig``'s
    ``num_updates``).

    num_cycles: train/deploy/update cycles. deploy_envs: deploy episodes per cycle and mode
    (one episode each, ``env_params.max_steps_in_episode`` steps). feedback_mode: the deploy
    mode whose trades feed the policy (``'sampled'``: as trained; ``'greedy'``: argmax); both
    are always deployed and reported. min_attempts: fewer aggregated attempts -> no feedback
    (invalid stats). r_source: ``'estimated'`` (the seed's 1 / hit rate) or ``'actual'`` (mean
    realised R) as the stats' ``avg_r_multiple``. keep_trades: also return every feedback-mode
    deploy step's trade record (``[P, S, C, deploy_envs, T]``; small runs). history_window: the
    cycles a ``'window'``-history policy aggregates. converge, chunk_updates, entropy_frac,
    return_window, return_tol: the training criterion (module docstring). carry_optimizer:
    carry the Adam moments across cycles (after every chunk the policy is scored on the
    cycle's deploy episodes in both modes: the learning curve; after the last, the deployment).
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


# --------------------------------------------------------------------------- policies
@struct.dataclass
class LoopPolicy:
    """A weight policy of the loop: ``kind`` is its ``clm.policies.policy_id`` (an index of
    ``POLICY_NAMES``, or a loaded user policy's id); ``history`` indexes ``HISTORY_MODES``
    (the feedback aggregate over cycles)."""

    kind: jax.Array
    initial_weight: jax.Array
    params: PolicyParams
    history: jax.Array = 0


def make_loop_policy(kind: str, initial_weight: float = 1.0, history: str = "cycle",
                     **overrides: float) -> LoopPolicy:
    """A :class:`LoopPolicy` of ``kind`` (a name of ``LOOP_POLICY_KINDS`` or a user policy's
    ``"package.module:function"``, loaded and checked) with its feedback ``history``
    (``HISTORY_MODES``) and param overrides (``user``: a user policy's values)."""
    if kind not in LOOP_POLICY_KINDS and not is_user_kind(kind):
        raise ValueError(f"make_loop_policy: kind = {kind!r}; expected one of "
                         f"{LOOP_POLICY_KINDS} or a user policy 'package.module:function'")
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
    return LoopPolicy(kind=jnp.int32(policy_id(kind)),
                      initial_weight=jnp.float32(w),
                      params=make_policy_params(kind, **overrides),
                      history=jnp.int32(HISTORY_MODES.index(history)))


def stack_policies(policies: list[LoopPolicy]) -> LoopPolicy:
    """Stack policies along a new leading axis (the vmapped policy axis)."""
    if not policies:
        raise ValueError("stack_policies: need at least one policy")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *policies)


# --------------------------------------------------------------------------- results
@struct.dataclass
class CycleOutput:
    """What one cycle reports (stacked over cycles by the scan into :class:`LoopResult`):
    the weight trained with, the policy's decision and code, the stats it saw, the deployment
    metrics, the per-update training buffers ``[U]``, the training summary, the learning
    curves ``[K]`` and (``keep_trades``) the feedback-mode deploy trades."""

    weight: jax.Array
    next_weight: jax.Array
    reason: jax.Array
    stats: TPStats
    deploy: dict[str, jax.Array]
    train_buffers: dict[str, jax.Array]
    training: dict[str, jax.Array]
    learning_curves: dict[str, jax.Array]
    trades: dict[str, jax.Array] | None = None
    trade_active: jax.Array | None = None
    episodes: dict[str, jax.Array] | None = None


@struct.dataclass
class LoopResult(CycleOutput):
    """Every cycle of every policy x seed: :class:`CycleOutput`'s fields stacked with leading
    axes ``[P, S, C]``, and the final network and observation statistics ``[P, S]``.

    weight: the weight trained with in the cycle; next_weight / reason: the policy's decision
    after the cycle's deployment (``clm.policies.REASON_NAMES``); stats: the feedback the policy
    saw; deploy: ``accounting.METRICS`` of the cycle's deployment, as ``'sampled/<key>'`` and
    ``'greedy/<key>'`` and plain ``'<key>'`` for ``feedback_mode``; train_buffers: per-update
    training metrics ``[..., U]`` (``TRAIN_CURVE_KEYS``; NaN / True (``finite``) after the
    updates used); training: ``TRAIN_SUMMARY_KEYS`` per cycle; learning_curves: ``CURVE_KEYS``
    (held-out PnL per episode after each chunk, ``[..., K]``, NaN after the chunks used);
    trades: the feedback-mode deploy steps' trade records ``[..., deploy_envs, T]``
    (``keep_trades``) and ``trade_active``; episodes: each deploy episode's ``pnl`` and
    ``return`` in both modes ``[..., 2, deploy_envs]`` (episode e plays path
    ``accounting.episode_paths``[e]).
    """

    params: Any = None
    obs_rms: Any = None


class Loop(NamedTuple):
    """The pure functions of one closed-loop configuration.

    run_one(key, policy, source, env_params, hparams) -> LoopResult ``[C]`` (one policy/seed;
    ``sweeps.make_loop_sweep`` batches it over policies x seeds on a mesh, the one batching
    path); kinds: the policy kinds the program runs, user policies included
    (:func:`check_inputs` refuses others).
    """

    config: LoopConfig
    ppo_config: PPOConfig
    markets: Markets
    run_one: Any
    kinds: tuple[str, ...] = LOOP_POLICY_KINDS


# --------------------------------------------------------------------------- pieces
def max_entropy(spec: Any) -> float:
    """Entropy of the uniform policy over an action spec (NaN for continuous actions)."""
    if spec.kind in ("discrete", "multidiscrete"):
        return float(sum(np.log(n) for n in spec.dims))
    return float("nan")


def plateaued(returns: jax.Array, n_done: jax.Array, window: int, tol: float) -> jax.Array:
    """Training-return plateau after ``n_done`` chunks: the mean of the last ``window`` chunk
    returns exceeds the mean of the ``window`` before by at most ``tol`` standard deviations of
    those ``2 * window`` returns (NaN entries, chunks without a finished episode, ignored)."""
    idx = jnp.arange(returns.shape[0])
    last = (idx >= n_done - window) & (idx < n_done)
    prev = (idx >= n_done - 2 * window) & (idx < n_done - window)
    m_last, n_last = masked_mean(returns, last)
    m_prev, n_prev = masked_mean(returns, prev)
    both = (last | prev) & jnp.isfinite(returns)
    mu, n = masked_mean(returns, both)
    var = jnp.where(both, (returns - mu) ** 2, 0.0).sum() / jnp.maximum(n - 1, 1)
    ok = (n_done >= 2 * window) & (n_last > 0) & (n_prev > 0)
    return ok & (m_last - m_prev <= tol * jnp.sqrt(var))


def loop_policy_step(stats: TPStats, state: PolicyState, policy: LoopPolicy,
                     kinds: tuple[str, ...] | None = None
                     ) -> tuple[jax.Array, PolicyState, jax.Array]:
    """Next weight of ``policy`` (``clm.policies.apply_policy`` with its kind; ``kinds``: the
    kinds the loop's policies can take, static)."""
    return apply_policy(stats, state, policy.params.replace(policy_id=policy.kind), kinds)


@struct.dataclass
class History:
    """Feedback trade sums over cycles: every cycle so far and the last ``history_window``."""

    cumulative: accounting.EpisodeSums
    ring: accounting.EpisodeSums            # leading axis [history_window], newest first

    def push(self, cur: accounting.EpisodeSums) -> History:
        ring = jax.tree.map(lambda r, c: jnp.roll(r, 1, axis=0).at[0].set(c), self.ring, cur)
        return History(accounting.add(self.cumulative, cur), ring)

    def aggregate(self, cur: accounting.EpisodeSums, mode: jax.Array) -> accounting.EpisodeSums:
        """This cycle's sums (``cycle``), all so far (``cumulative``) or the window."""
        window = accounting.total(self.ring, 0)
        return jax.tree.map(lambda c, a, w: jnp.select([mode == 0, mode == 1], [c, a], w),
                            cur, self.cumulative, window)


@struct.dataclass
class CycleCarry:
    """What one cycle hands the next: the network and its statistics, the optimizer, the
    policy's state and the feedback history."""

    params: Any
    obs_rms: Any
    ret_rms: Any
    opt_state: Any
    policy: PolicyState
    history: History


@struct.dataclass
class ChunkCarry:
    """The training loop's state: runner, chunks done, criterion met, per-update curve buffers
    ``[U]``, per-chunk training returns and learning curves ``[K]``, last entropy, and the
    latest held-out evaluation (both modes on every deploy episode: after the last chunk, the
    cycle's deployment)."""

    rs: RunnerState
    k: jax.Array
    done: jax.Array
    train_buffers: dict[str, jax.Array]
    rets: jax.Array
    learning_curves: dict[str, jax.Array]
    entropy: jax.Array
    last: accounting.Rollout


# --------------------------------------------------------------------------- the program
@dataclass(frozen=True)
class LoopProgram:
    """The loop's pure functions for one static configuration (see the module docstring)."""

    config: LoopConfig
    ppo_config: PPOConfig
    markets: Markets
    env: Any
    t_dep: int                # deploy episode length (steps)
    ppo: Any                  # agents.ppo.PPO with the markets' data stream
    kinds: tuple[str, ...] | None = None   # the policy kinds the program can run (None: all)
    has_stream: bool = False  # the PPO draws its own training data (fresh paths)

    @property
    def chunk(self) -> int:
        """Updates per chunk: a learning-curve point (and a criterion check) after each."""
        return self.config.chunk_updates

    @property
    def n_chunks(self) -> int:
        return self.ppo_config.num_updates // self.chunk

    def _markets(self, source: Any, key: jax.Array, c: jax.Array) -> tuple[Any, Any]:
        """The cycle's training market and its deploy market; the training market is None
        when the PPO has a data stream (it draws fresh paths itself: none is generated)."""
        if self.has_stream:
            return None, self.markets.deploy_market(source, key, c)
        return self.markets.cycle_markets(source, key, c)

    def both_modes(self, rs: RunnerState, ep: Any, keys: jax.Array) -> accounting.Rollout:
        """Sampled and greedy deployments on the same episodes (leading axis [2])."""
        obs_rms = rs.obs_rms if self.ppo_config.normalize_obs else None
        return deploy_both_modes(self.env, self.ppo.network, rs.params, ep, keys, self.t_dep,
                                   obs_rms, self.ppo_config.obs_clip, self.config.keep_trades)

    def _chunk(self, ep_train: Any, ep_dep: Any, dep_keys: jax.Array, c: ChunkCarry
               ) -> ChunkCarry:
        cfg = self.config
        ent_max = max_entropy(self.ppo.network.spec)
        ent_target = cfg.entropy_frac * ent_max if np.isfinite(ent_max) else np.inf
        rs, m = self.ppo.run(c.rs, ep_train, self.chunk)
        bufs = {key: jax.lax.dynamic_update_slice(b, m[key].astype(b.dtype), (c.k * self.chunk,))
                for key, b in c.train_buffers.items()}
        r = m["episode_return"]
        rets = c.rets.at[c.k].set(masked_mean(r, jnp.ones(r.shape, bool))[0])
        ent = m["entropy"].mean()
        done = (ent <= ent_target) & plateaued(rets, c.k + 1, cfg.return_window,
                                               cfg.return_tol) & cfg.converge
        last = self.both_modes(rs, ep_dep, dep_keys)      # the held-out episodes, both modes
        pnl = accounting.finalize(last.sums)["pnl"]
        curves = {key: c.learning_curves[key].at[c.k].set(pnl[i])
                  for i, key in enumerate(f"{mode}_pnl" for mode in DEPLOY_MODES)}
        return ChunkCarry(rs, c.k + 1, done, bufs, rets, curves, ent, last)

    def train(self, rs: RunnerState, ep_train: Any, ep_dep: Any, dep_keys: jax.Array
              ) -> tuple[RunnerState, dict[str, jax.Array], dict[str, jax.Array],
                         dict[str, jax.Array], accounting.Rollout]:
        """Chunks of PPO updates until the criterion holds or the cap, each followed by the
        held-out evaluation on the deploy episodes: (runner, per-update training buffers
        ``[U]``, summary, learning curves ``[K]``, the last evaluation = the cycle's
        deployment)."""
        cfg, n_cap = self.config, self.ppo_config.num_updates
        m_shape = jax.eval_shape(lambda r: self.ppo.run(r, ep_train, self.chunk)[1], rs)
        bufs = {k: jnp.full((n_cap,), True if k == "finite" else jnp.nan, m_shape[k].dtype)
                for k in TRAIN_CURVE_KEYS if k in m_shape}
        nan_k = jnp.full((self.n_chunks,), jnp.nan, jnp.float32)
        last0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(
            self.both_modes, rs, ep_dep, dep_keys))
        c0 = ChunkCarry(rs, jnp.int32(0), jnp.bool_(False), bufs, nan_k,
                        {k: nan_k for k in CURVE_KEYS}, jnp.float32(jnp.nan), last0)
        step = lambda c: self._chunk(ep_train, ep_dep, dep_keys, c)  # noqa: E731
        if cfg.converge:
            c = jax.lax.while_loop(lambda c: (~c.done) & (c.k < self.n_chunks), step, c0)
        else:                       # a fixed budget: every chunk (the same updates, in chunks)
            c = jax.lax.fori_loop(0, self.n_chunks, lambda _, c: step(c), c0)
        idx = jnp.arange(self.n_chunks)
        ret_last, _ = masked_mean(c.rets, (idx >= c.k - cfg.return_window) & (idx < c.k))
        summary = {"updates": c.k * self.chunk, "converged": c.done, "entropy": c.entropy,
                   "entropy_max": jnp.float32(max_entropy(self.ppo.network.spec)),
                   "return": ret_last}
        return c.rs, c.train_buffers, summary, c.learning_curves, c.last

    def cycle(self, key: jax.Array, policy: LoopPolicy, source: Any, env_params: Any,
              hparams: PPOHParams, carry: CycleCarry, c: jax.Array
              ) -> tuple[CycleCarry, CycleOutput]:
        """One train -> deploy -> feedback -> decide cycle."""
        cfg = self.config
        keys = cycle_keys(key, c)
        w = carry.policy.weight
        train_m, deploy_m = self._markets(source, keys.market, c)
        ep_train = env_params.replace(market=train_m, tp_reward_weight=w)
        ep_dep = env_params.replace(market=deploy_m, tp_reward_weight=w)
        rs = self.ppo.init(keys.train, ep_train, hparams, self.markets.train_source(source, c))
        opt = (continue_opt_state(rs.opt_state, carry.opt_state) if cfg.carry_optimizer
               else rs.opt_state)
        rs = rs.replace(params=carry.params, obs_rms=carry.obs_rms, ret_rms=carry.ret_rms,
                        opt_state=opt)
        dep_keys = accounting.episode_keys(keys.deploy, cfg.deploy_envs)
        rs, buffers, summary, learning, out = self.train(rs, ep_train, ep_dep, dep_keys)
        metrics = accounting.finalize(out.sums)                        # [2] per mode
        fb = DEPLOY_MODES.index(cfg.feedback_mode)
        deploy = {f"{mode}/{k}": v[i] for i, mode in enumerate(DEPLOY_MODES)
                  for k, v in metrics.items()} | {k: v[fb] for k, v in metrics.items()}
        cur = accounting.total(jax.tree.map(lambda x: x[fb], out.sums))
        history = carry.history.push(cur)
        stats = accounting.tp_stats(history.aggregate(cur, policy.history), cfg.min_attempts,
                           cfg.r_source)
        w_next, pstate, code = loop_policy_step(stats, carry.policy, policy, self.kinds)
        new = CycleCarry(rs.params, rs.obs_rms, rs.ret_rms, rs.opt_state, pstate, history)
        return new, CycleOutput(
            weight=w, next_weight=w_next, reason=code, stats=stats, deploy=deploy,
            train_buffers=buffers, training=summary, learning_curves=learning,
            trades=jax.tree.map(lambda x: x[fb], out.trades) if cfg.keep_trades else None,
            trade_active=out.active[fb] if cfg.keep_trades else None,
            episodes={"pnl": out.sums.pnl, "return": out.sums.ret})

    def run_one(self, key: jax.Array, policy: LoopPolicy, source: Any, env_params: Any,
                hparams: PPOHParams) -> LoopResult:
        """Every cycle of one policy and seed."""
        keys = cycle_keys(key, 0)
        train0, _ = self._markets(source, keys.market, jnp.int32(0))
        rs0 = self.ppo.init(keys.init, env_params.replace(market=train0), hparams,
                            self.markets.train_source(source, jnp.int32(0)))
        zero = accounting.zero_sums()
        ring = jax.tree.map(lambda x: jnp.zeros((self.config.history_window, *x.shape),
                                                x.dtype), zero)
        # the policy's own PRNG key: per seed, the same for every arm (common random numbers)
        pstate = init_policy_state(1.0, jax.random.fold_in(key, POLICY_KEY_TAG)).replace(
            weight=policy.initial_weight)
        carry0 = CycleCarry(rs0.params, rs0.obs_rms, rs0.ret_rms, rs0.opt_state, pstate,
                            History(zero, ring))
        body = lambda carry, c: self.cycle(key, policy, source, env_params, hparams,  # noqa
                                           carry, c)
        last, ys = jax.lax.scan(body, carry0, jnp.arange(self.config.num_cycles,
                                                         dtype=jnp.int32))
        return LoopResult(**{f.name: getattr(ys, f.name) for f in fields(CycleOutput)},
                          params=last.params, obs_rms=last.obs_rms)


def make_loop(config: LoopConfig, ppo_config: PPOConfig, env: Any, markets: Markets,
              env_params: Any, kinds: tuple[str, ...] | None = None) -> Loop:
    """Build the closed loop. ``env_params`` (a ``TradingEnv`` params template; its market is
    replaced every cycle) fixes the deploy episode length; ``kinds``: the policy kinds the
    program must run (default every ``LOOP_POLICY_KINDS``; fewer compile faster; user
    policies by ``"package.module:function"``, each one more branch of the same switch)."""
    n_cap = ppo_config.num_updates
    chunk = config.chunk_updates
    if n_cap < 1 or n_cap % chunk:
        raise ValueError(f"make_loop: the update cap ppo.num_updates = {n_cap} (total_timesteps "
                         f"// (num_envs * num_steps)) must be a positive multiple of "
                         f"loop.chunk_updates = {config.chunk_updates}")
    t_dep = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    stream = markets.stream(env, ppo_config.num_envs, ppo_config.num_steps, t_dep)
    ppo = make_ppo(ppo_config, env, env_params, info_metrics=accounting.train_info_metrics,
                   stream=stream)
    if kinds is not None:
        bad = sorted(set(kinds) - set(LOOP_POLICY_KINDS) - {k for k in kinds
                                                            if is_user_kind(k)})
        if bad:
            raise ValueError(f"make_loop: kinds {bad}; expected kinds of {LOOP_POLICY_KINDS} "
                             "or user policies 'package.module:function'")
        users = tuple(dict.fromkeys(k for k in kinds if is_user_kind(k)))
        for k in users:
            load_policy(k)                 # imported and checked before anything compiles
        kinds = tuple(k for k in LOOP_POLICY_KINDS if k in set(kinds)) + users
    prog = LoopProgram(config, ppo_config, markets, env, t_dep, ppo, kinds, stream is not None)
    return Loop(config, ppo_config, markets, prog.run_one,
                LOOP_POLICY_KINDS if kinds is None else kinds)


def check_inputs(loop: Loop, source: Any, env: Any, env_params: Any,
                 policies: LoopPolicy | None = None) -> None:
    """Host-side validation of the market source against the env (errors name the field),
    and of ``policies`` against the kinds the program was built for (a kind it lacks would run
    another kind's branch)."""
    need = env.lookback + int(np.max(np.asarray(env_params.max_steps_in_episode))) + 2
    loop.markets.check(source, loop.config.num_cycles, need)
    if policies is not None:
        used = [policy_name(int(i)) for i in np.asarray(policies.kind).ravel()]
        bad = sorted(set(used) - set(loop.kinds))
        if bad:
            raise ValueError(f"check_inputs: policy kinds {bad} are not among the kinds the loop "
                             f"was built for {list(loop.kinds)}; pass them to make_loop(kinds=...)")


__all__ = ["CURVE_KEYS", "DEPLOY_KEYS", "DEPLOY_MODES", "HISTORY_MODES", "LOOP_POLICY_KINDS",
           "POLICY_KEY_TAG",
           "TRAIN_CURVE_KEYS", "TRAIN_SUMMARY_KEYS", "ChunkCarry", "CycleCarry", "CycleKeys",
           "CycleOutput",
           "History", "Loop", "LoopConfig", "LoopPolicy", "LoopProgram", "LoopResult",
           "SyntheticMarkets", "WalkForwardMarkets", "check_inputs", "cycle_keys",
           "loop_policy_step", "make_loop", "make_loop_policy", "max_entropy", "plateaued",
           "seed_keys", "stack_policies"]
