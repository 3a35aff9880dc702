"""PPO for any gymnax environment, as pure functions that jit and vmap.

``make_ppo(config, env)`` returns :class:`PPO` with

* ``init(rng, env_params, hparams=None) -> RunnerState``
* ``update(runner_state, env_params) -> (RunnerState, metrics)``  (one PPO update)
* ``run(runner_state, env_params, num_updates) -> (RunnerState, metrics[num_updates])``
* ``train(rng, env_params, hparams=None, source=None) -> TrainResult``  (= init + ``run``)

Two optional hooks keep the algorithm generic: ``info_metrics(info) -> dict`` reduces the
rollout's stacked env ``info`` (``[num_steps, num_envs, ...]``) into per-update metrics (e.g. the
trading env's trade statistics), and a :class:`DataStream` replaces the env's data before every
update (e.g. freshly generated market paths, so no update trains on data an earlier one saw);
its state is carried in ``RunnerState.data`` and its traced source (e.g. generator parameters)
is passed to ``init`` / ``train``.

Static shapes and counts live in the frozen :class:`PPOConfig`; float hyperparameters live in the
traced :class:`PPOHParams` pytree (stored in the runner state), so
``jax.vmap(jax.vmap(train, (0, None)), (None, 0))`` trains seeds x env_params in one compile and
a learning-rate sweep vmaps over ``hparams`` leaves.

Time limits: gymnax returns ``terminated`` and ``truncated`` separately and
``info["final_observation"]`` (pre-reset). The TD target of step t uses
``V(final_observation_t) * (1 - terminated_t)``, so a truncated step bootstraps and a terminated
step is cut; the GAE recursion is cut on both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tpfl_jax.agents.networks import ActorCritic, make_network, to_env_action

Metrics = dict[str, jax.Array]
InfoMetrics = Callable[[dict[str, Any]], Metrics]


class DataStream(Protocol):
    """Fresh training data for every PPO update (see ``tpfl_jax.market.stream.PathStream``).

    ``start(key, source, env_params) -> (data, obs, env_state, rollout_params)``: the first data
    and every env reset on it. ``refresh(key, data, env_state, env_params) -> (data, env_state,
    rollout_params)``: new data before an update; running episodes keep theirs.
    ``rollout_params`` are the env params the update's rollout uses (``env_params`` with the new
    data in them)."""

    def start(self, key: jax.Array, source: Any, env_params: Any) -> tuple[Any, ...]: ...

    def refresh(self, key: jax.Array, data: Any, env_state: Any,
                env_params: Any) -> tuple[Any, Any, Any]: ...


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PPOConfig:
    """PPO configuration. Ints/bools/strings are static; floats seed :class:`PPOHParams`.

    The defaults are generic (CleanRL-like); the package's recipes are the Hydra ``ppo`` groups,
    which e.g. set ``normalize_obs`` (needed by ``TradingEnv``'s default ``vol`` observation).
    ``anneal_ent`` anneals ``ent_coef`` linearly to 0 over the updates, as ``anneal_lr``."""

    num_envs: int = 4
    num_steps: int = 128
    total_timesteps: int = 500_000
    update_epochs: int = 4
    num_minibatches: int = 4
    widths: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    shared_torso: bool = False
    init_log_std: float = 0.0
    anneal_lr: bool = True
    anneal_ent: bool = False
    normalize_obs: bool = False
    normalize_reward: bool = False
    normalize_advantages: bool = True
    clip_value_loss: bool = True
    obs_clip: float = 10.0
    adam_eps: float = 1e-5
    # traced float hyperparameters (defaults of PPOHParams)
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.num_updates < 1:
            raise ValueError(f"total_timesteps={self.total_timesteps} < one batch "
                             f"({self.num_envs} envs x {self.num_steps} steps)")
        if self.batch_size % self.num_minibatches:
            raise ValueError(f"batch {self.batch_size} not divisible by "
                             f"num_minibatches={self.num_minibatches}")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size

    def hparams(self) -> PPOHParams:
        """The float hyperparameters of this config as a traced pytree."""
        return PPOHParams(**{f.name: jnp.asarray(getattr(self, f.name), jnp.float32)
                             for f in fields(PPOHParams)})


@struct.dataclass
class PPOHParams:
    """Float PPO hyperparameters as pytree leaves (traced; vmappable)."""

    lr: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array


# --------------------------------------------------------------------------- running stats
@struct.dataclass
class RunningMeanStd:
    """Running mean/variance (parallel-merge update), a pure pytree."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> RunningMeanStd:
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32),
                   jnp.asarray(1e-4, jnp.float32))

    def update(self, x: jax.Array) -> RunningMeanStd:
        """Merge a batch ``x`` of shape ``[B, *shape]``."""
        x = x.astype(jnp.float32)
        b_mean, b_var, b_n = x.mean(0), x.var(0), jnp.asarray(x.shape[0], jnp.float32)
        delta = b_mean - self.mean
        tot = self.count + b_n
        mean = self.mean + delta * b_n / tot
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / tot
        return RunningMeanStd(mean, m2 / tot, tot)

    def normalize(self, x: jax.Array, clip: float = 10.0) -> jax.Array:
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)


# --------------------------------------------------------------------------- state
@struct.dataclass
class RunnerState:
    """Everything one PPO run carries between updates (checkpointed by the runner)."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    rng: jax.Array
    update_step: jax.Array
    hparams: PPOHParams
    obs_rms: RunningMeanStd
    ret_rms: RunningMeanStd
    disc_return: jax.Array
    ep_return: jax.Array
    ep_length: jax.Array
    data: Any = None             # the DataStream's state (None without a stream)


@struct.dataclass
class TrainResult:
    """Final runner state, per-update metrics (each ``[num_updates]``) and, with periodic
    evaluation (:func:`train_with_evals`), the evaluations ``[num_updates // every]``."""

    runner_state: RunnerState
    metrics: Metrics
    evals: Metrics | None = None

    @property
    def params(self) -> Any:
        return self.runner_state.params


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array
    final_obs: jax.Array
    raw_reward: jax.Array
    ep_return: jax.Array
    ep_length: jax.Array
    info: dict[str, Any]


class PPO(NamedTuple):
    """The pure functions of one PPO configuration on one env."""

    config: PPOConfig
    network: ActorCritic
    init: Any
    update: Any
    run: Any
    train: Any


# --------------------------------------------------------------------------- pieces
def compute_gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array,
                terminated: jax.Array, dones: jax.Array, gamma: jax.Array | float,
                gae_lambda: jax.Array | float) -> tuple[jax.Array, jax.Array]:
    """GAE over the leading time axis; returns ``(advantages, value_targets)``.

    ``next_values[t]`` is the value of the observation reached by step t *before* any
    auto-reset; it is cut by ``terminated[t]`` (so a truncated step bootstraps), and the
    recursion is cut by ``dones[t] = terminated | truncated``.
    """
    term = terminated.astype(jnp.float32)
    done = dones.astype(jnp.float32)
    deltas = rewards + gamma * next_values * (1.0 - term) - values

    def body(gae, x):
        delta, d = x
        gae = delta + gamma * gae_lambda * (1.0 - d) * gae
        return gae, gae

    _, adv = jax.lax.scan(body, jnp.zeros_like(deltas[0]), (deltas, done), reverse=True)
    return adv, adv + values


def make_optimizer(config: PPOConfig, hp: PPOHParams) -> optax.GradientTransformation:
    """Grad-norm clip + Adam; lr linearly annealed per update when ``config.anneal_lr``."""
    per_update = config.num_minibatches * config.update_epochs
    if config.anneal_lr:
        def lr(count):
            return hp.lr * (1.0 - (count // per_update) / config.num_updates)
    else:
        lr = hp.lr
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps=config.adam_eps),
    )


def ent_coef_now(config: PPOConfig, hp: PPOHParams, update_step: jax.Array) -> jax.Array:
    """The entropy coefficient of update ``update_step``: ``hp.ent_coef``, linearly annealed to
    0 over ``config.num_updates`` when ``config.anneal_ent`` (as the learning rate)."""
    if not config.anneal_ent:
        return hp.ent_coef
    return hp.ent_coef * jnp.maximum(1.0 - update_step / config.num_updates, 0.0)


def continue_opt_state(fresh: Any, previous: Any) -> Any:
    """Optimizer state of a continued training job: Adam's moments and bias-correction count
    from ``previous``; the learning-rate schedule (``inject_hyperparams`` count and schedule
    state) restarts from ``fresh`` (a ``make_optimizer(...).init`` state)."""
    clip_state, inj = fresh
    return clip_state, inj._replace(inner_state=previous[1].inner_state)


def _as_typed_key(rng: jax.Array) -> jax.Array:
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def _finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def masked_mean(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean of the finite entries of ``x`` where ``mask``, their count); NaN when none."""
    m = mask.astype(bool) & jnp.isfinite(x)
    n = m.sum()
    return jnp.where(n > 0, jnp.where(m, x, 0.0).sum() / jnp.maximum(n, 1), jnp.nan), n


# --------------------------------------------------------------------------- the algorithm
class PPOAlgorithm:
    """PPO's pure functions for one static configuration on one env (each a short method;
    :func:`make_ppo` hands them out as :class:`PPO`). Everything traced is an argument."""

    def __init__(self, config: PPOConfig, env: Any, space_params: Any,
                 info_metrics: InfoMetrics | None = None, stream: DataStream | None = None):
        self.config, self.env = config, env
        self.info_metrics, self.stream = info_metrics, stream
        self.network = make_network(env, space_params, config.widths, config.activation,
                                    config.shared_torso, config.init_log_std)
        self.obs_shape = tuple(env.observation_space(space_params).shape)
        self.v_reset = jax.vmap(env.reset, in_axes=(0, None))
        # an env may step a whole batch itself (``TradingEnv.step_batch``: the same outputs as
        # ``vmap(step)``, auto-resets computed only on steps where some env is done)
        self.v_step = getattr(env, "step_batch", None) or jax.vmap(env.step,
                                                                   in_axes=(0, 0, 0, None))

    # ------------------------------------------------------------------ init
    def init(self, rng: jax.Array, env_params: Any, hparams: PPOHParams | None = None,
             source: Any = None) -> RunnerState:
        """A new run: network, optimizer, envs reset (on the stream's first data, drawn from
        ``source``, when the PPO has a stream)."""
        cfg, n_envs = self.config, self.config.num_envs
        hp = cfg.hparams() if hparams is None else hparams
        rng = _as_typed_key(rng)
        rng, k_net, k_env = jax.random.split(rng, 3)
        params = self.network.init(k_net, jnp.zeros((1, *self.obs_shape), jnp.float32))
        opt_state = make_optimizer(cfg, hp).init(params)
        data = None
        if self.stream is None:
            obs, env_state = self.v_reset(jax.random.split(k_env, n_envs), env_params)
        else:
            data, obs, env_state, _ = self.stream.start(k_env, source, env_params)
        obs_rms = RunningMeanStd.create(self.obs_shape)
        if cfg.normalize_obs:
            obs_rms = obs_rms.update(obs)
        zeros = jnp.zeros((n_envs,), jnp.float32)
        return RunnerState(
            params=params, opt_state=opt_state, env_state=env_state, obs=obs, rng=rng,
            update_step=jnp.asarray(0, jnp.int32), hparams=hp, obs_rms=obs_rms,
            ret_rms=RunningMeanStd.create(()), disc_return=zeros, ep_return=zeros,
            ep_length=jnp.zeros((n_envs,), jnp.int32), data=data)

    # ------------------------------------------------------------------ rollout
    def norm_obs(self, obs_rms: RunningMeanStd, obs: jax.Array) -> jax.Array:
        if self.config.normalize_obs:
            return obs_rms.normalize(obs, self.config.obs_clip)
        return obs.astype(jnp.float32)

    def _scaled_reward(self, rs: RunnerState, reward: jax.Array, done: jax.Array):
        """(discounted return, its statistics, the reward PPO trains on): scaled by the running
        std of the discounted return with ``normalize_reward``."""
        if not self.config.normalize_reward:
            return rs.disc_return, rs.ret_rms, reward
        disc = rs.disc_return * rs.hparams.gamma + reward
        ret_rms = rs.ret_rms.update(disc)
        return jnp.where(done, 0.0, disc), ret_rms, reward / jnp.sqrt(ret_rms.var + 1e-8)

    def env_step(self, rs: RunnerState, env_params: Any) -> tuple[RunnerState, Transition]:
        """One step of every env with the current policy."""
        rng, k_act, k_step = jax.random.split(rs.rng, 3)
        obs_n = self.norm_obs(rs.obs_rms, rs.obs)
        dist, value = self.network.apply(rs.params, obs_n)
        action = dist.sample(k_act)
        log_prob = dist.log_prob(action)
        next_obs, env_state, reward, term, trunc, info = self.v_step(
            jax.random.split(k_step, self.config.num_envs), rs.env_state,
            to_env_action(self.network.spec, action), env_params)
        reward = reward.astype(jnp.float32)
        done = jnp.logical_or(term, trunc)
        final_obs = info.pop("final_observation")
        for k in ("terminated", "truncated", "discount"):
            info.pop(k, None)
        obs_rms = rs.obs_rms.update(next_obs) if self.config.normalize_obs else rs.obs_rms
        ep_return = rs.ep_return + reward
        ep_length = rs.ep_length + 1
        disc, ret_rms, train_reward = self._scaled_reward(rs, reward, done)
        keep = info if self.info_metrics is not None else {}
        tr = Transition(obs_n, action, log_prob, value, train_reward, term, done,
                        self.norm_obs(obs_rms, final_obs), reward, ep_return, ep_length, keep)
        rs = rs.replace(
            env_state=env_state, obs=next_obs, rng=rng, obs_rms=obs_rms, ret_rms=ret_rms,
            disc_return=disc, ep_return=jnp.where(done, 0.0, ep_return),
            ep_length=jnp.where(done, 0, ep_length))
        return rs, tr

    def rollout(self, rs: RunnerState, env_params: Any) -> tuple[RunnerState, Transition]:
        """``num_steps`` env steps in one ``lax.scan`` (transitions ``[T, num_envs]``)."""
        return jax.lax.scan(lambda r, _: self.env_step(r, env_params), rs, None,
                            length=self.config.num_steps)

    # ------------------------------------------------------------------ learning
    def loss(self, params: Any, hp: PPOHParams, mb: dict[str, jax.Array]):
        """Clipped surrogate + value loss - entropy bonus of one minibatch, and diagnostics."""
        cfg = self.config
        dist, value = self.network.apply(params, mb["obs"])
        log_prob = dist.log_prob(mb["action"])
        entropy = dist.entropy().mean()
        v_old = mb["value"]
        v_clipped = v_old + jnp.clip(value - v_old, -hp.clip_eps, hp.clip_eps)
        v_l = jnp.square(value - mb["target"])
        if cfg.clip_value_loss:
            v_l = jnp.maximum(v_l, jnp.square(v_clipped - mb["target"]))
        value_loss = 0.5 * v_l.mean()
        adv = mb["adv"]
        if cfg.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        log_ratio = log_prob - mb["log_prob"]
        ratio = jnp.exp(log_ratio)
        pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - hp.clip_eps, 1 + hp.clip_eps) * adv)
        policy_loss = pg.mean()
        total = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
        aux = {
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "clip_frac": (jnp.abs(ratio - 1.0) > hp.clip_eps).astype(jnp.float32).mean(),
        }
        return total, aux

    def batch(self, rs: RunnerState, traj: Transition) -> dict[str, jax.Array]:
        """GAE advantages and value targets, flattened to ``[batch_size, ...]``."""
        hp = rs.hparams
        _, next_values = self.network.apply(rs.params, traj.final_obs)
        adv, targets = compute_gae(traj.reward, traj.value, next_values, traj.terminated,
                                   traj.done, hp.gamma, hp.gae_lambda)
        batch = {"obs": traj.obs, "action": traj.action, "log_prob": traj.log_prob,
                 "value": traj.value, "adv": adv, "target": targets}
        return jax.tree.map(lambda x: x.reshape(self.config.batch_size, *x.shape[2:]), batch)

    def learn(self, rs: RunnerState, batch: dict[str, jax.Array]) -> tuple[Any, Any, Metrics]:
        """``update_epochs`` passes of ``num_minibatches`` shuffled Adam steps: (params,
        optimizer state, per-step diagnostics)."""
        cfg, hp = self.config, rs.hparams
        tx = make_optimizer(cfg, hp)
        hp = hp.replace(ent_coef=ent_coef_now(cfg, hp, rs.update_step))

        def minibatch_step(carry, mb):
            params, opt_state = carry
            (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(params, hp, mb)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), {"loss": loss, "grad_norm": optax.global_norm(grads),
                                         **aux}

        def epoch(carry, _):
            params, opt_state, rng = carry
            rng, k = jax.random.split(rng)
            perm = jax.random.permutation(k, cfg.batch_size)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape(cfg.num_minibatches, cfg.minibatch_size,
                                          *x.shape[1:]), batch)
            (params, opt_state), stats = jax.lax.scan(minibatch_step, (params, opt_state),
                                                      shuffled)
            return (params, opt_state, rng), stats

        _, k_epochs = jax.random.split(rs.rng)
        (params, opt_state, _), stats = jax.lax.scan(
            epoch, (rs.params, rs.opt_state, k_epochs), None, length=cfg.update_epochs)
        return params, opt_state, stats

    def _metrics(self, rs: RunnerState, traj: Transition, stats: Metrics, params: Any,
                 lr_now: jax.Array) -> Metrics:
        """Per-update summary (means; never per step)."""
        done = traj.done.astype(jnp.float32)
        metrics: Metrics = {k: v.mean() for k, v in stats.items()}
        metrics.update({
            "episode_return": masked_mean(traj.ep_return, done)[0],
            "episode_length": masked_mean(traj.ep_length.astype(jnp.float32), done)[0],
            "episodes": done.sum(),
            "reward": traj.raw_reward.mean(),
            "lr": lr_now,
            "env_steps": rs.update_step.astype(jnp.float32) * self.config.batch_size,
            "finite": jnp.logical_and(jnp.all(jnp.isfinite(stats["loss"])), _finite(params)),
        })
        if self.info_metrics is not None:
            metrics.update(self.info_metrics(traj.info))
        return metrics

    # ------------------------------------------------------------------ updates
    def update(self, rs: RunnerState, env_params: Any) -> tuple[RunnerState, Metrics]:
        """One PPO update: fresh data (with a stream), rollout, GAE, ``update_epochs`` x
        ``num_minibatches`` steps."""
        cfg, hp = self.config, rs.hparams
        if self.stream is not None:  # new data for this update; running episodes keep theirs
            k_data = jax.random.fold_in(rs.rng, 0x5EED)
            data, env_state, env_params = self.stream.refresh(k_data, rs.data, rs.env_state,
                                                              env_params)
            rs = rs.replace(data=data, env_state=env_state)
        rs, traj = self.rollout(rs, env_params)
        params, opt_state, stats = self.learn(rs, self.batch(rs, traj))
        lr_now = hp.lr * (1.0 - rs.update_step / cfg.num_updates) if cfg.anneal_lr else hp.lr
        rng, _ = jax.random.split(rs.rng)
        rs = rs.replace(params=params, opt_state=opt_state, rng=rng,
                        update_step=rs.update_step + 1)
        return rs, self._metrics(rs, traj, stats, params, lr_now)

    def run(self, rs: RunnerState, env_params: Any, num_updates: int
            ) -> tuple[RunnerState, Metrics]:
        """``num_updates`` (static) updates in one ``lax.scan``; metrics ``[num_updates]``."""
        return jax.lax.scan(lambda s, _: self.update(s, env_params), rs, None,
                            length=num_updates)

    def train(self, rng: jax.Array, env_params: Any, hparams: PPOHParams | None = None,
              source: Any = None) -> TrainResult:
        """Full training run: ``init`` then ``config.num_updates`` updates."""
        rs = self.init(rng, env_params, hparams, source)
        rs, metrics = self.run(rs, env_params, self.config.num_updates)
        return TrainResult(rs, metrics)


def make_ppo(config: PPOConfig, env: Any, env_params: Any = None, *,
             info_metrics: InfoMetrics | None = None, stream: DataStream | None = None) -> PPO:
    """Build the pure PPO functions for ``env`` (:class:`PPOAlgorithm`).

    ``env_params`` (default ``env.default_params``) is used only to read the static
    observation/action spaces; the traced env params are passed to the functions.
    ``info_metrics`` and ``stream``: the optional hooks of the module docstring.
    """
    space_params = env.default_params if env_params is None else env_params
    algo = PPOAlgorithm(config, env, space_params, info_metrics, stream)
    return PPO(config, algo.network, algo.init, algo.update, algo.run, algo.train)


def train_with_evals(ppo: PPO, rng: jax.Array, env_params: Any,
                     evaluate: Callable[[RunnerState], Metrics], every: int,
                     hparams: PPOHParams | None = None, source: Any = None) -> TrainResult:
    """``ppo.train`` with ``evaluate(runner_state)`` after every ``every`` updates (one
    ``lax.scan`` over chunks; e.g. a learning curve on held-out episodes). ``every`` must
    divide ``num_updates``."""
    n = ppo.config.num_updates
    if every < 1 or n % every:
        raise ValueError(f"train_with_evals: every = {every}; expected a divisor of "
                         f"num_updates = {n}")
    rs = ppo.init(rng, env_params, hparams, source)

    def chunk(rs, _):
        rs, m = ppo.run(rs, env_params, every)
        return rs, (m, evaluate(rs))

    rs, (m, evals) = jax.lax.scan(chunk, rs, None, length=n // every)
    return TrainResult(rs, jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), m), evals)


def make_train(config: PPOConfig, env: Any, env_params: Any = None, **hooks: Any):
    """Pure ``train(rng, env_params, hparams=None, source=None) -> TrainResult`` (jit/vmap-able;
    ``hooks``: ``info_metrics`` / ``stream`` of :func:`make_ppo`)."""
    return make_ppo(config, env, env_params, **hooks).train


def policy_action(network: ActorCritic, params: Any, obs: jax.Array, rng: jax.Array | None,
                  obs_rms: RunningMeanStd | None = None, obs_clip: float = 10.0) -> jax.Array:
    """Env-shaped action from the policy: the mode when ``rng`` is None, else a sample."""
    x = obs.astype(jnp.float32) if obs_rms is None else obs_rms.normalize(obs, obs_clip)
    dist, _ = network.apply(params, x)
    a = dist.mode() if rng is None else dist.sample(rng)
    return to_env_action(network.spec, a)
