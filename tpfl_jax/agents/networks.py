"""Flax (linen) actor-critic networks and self-written action distributions.

The policy head is chosen from the environment's gymnax action space:

* ``spaces.Discrete(n)``                       -> :class:`Categorical`
* :class:`MultiDiscrete` or ``spaces.Tuple`` of ``Discrete`` -> :class:`MultiCategorical`
* ``spaces.Box`` with shape ``(d,)`` or ``()`` -> :class:`DiagGaussian` (state-independent log-std)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

ActionKind = Literal["discrete", "multidiscrete", "continuous"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
}


class MultiDiscrete:
    """Product of discrete spaces: action ``a[i] in [0, nvec[i])`` (gymnax has none).

    Has the gymnax space interface (``sample``, ``contains``, ``shape``, ``dtype``). This module
    imports gymnax only inside :func:`action_spec`: importing gymnax initialises the XLA backend,
    which must wait for ``jax.distributed.initialize()`` in multi-host runs.
    """

    def __init__(self, nvec: Sequence[int]):
        self.nvec = tuple(int(n) for n in nvec)
        self.shape = (len(self.nvec),)
        self.dtype = jnp.int32

    def sample(self, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, len(self.nvec))
        return jnp.stack([jax.random.randint(k, (), 0, n) for k, n in zip(keys, self.nvec,
                                                                            strict=True)])

    def contains(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        return jnp.all((x >= 0) & (x < jnp.asarray(self.nvec)))


@dataclass(frozen=True)
class ActionSpec:
    """Static description of an action space: ``kind`` and per-kind sizes.

    ``dims`` is ``(n,)`` for discrete, ``nvec`` for multidiscrete and ``(d,)`` for continuous;
    ``scalar`` is True when a continuous env expects a shape-``()`` action.
    """

    kind: ActionKind
    dims: tuple[int, ...]
    scalar: bool = False


def action_spec(space: Any) -> ActionSpec:
    """Map a gymnax action space to an :class:`ActionSpec` (raises on unsupported spaces)."""
    from gymnax.environments import spaces

    if isinstance(space, spaces.Discrete):
        return ActionSpec("discrete", (int(space.n),))
    if isinstance(space, MultiDiscrete) or hasattr(space, "nvec"):
        return ActionSpec("multidiscrete", tuple(int(n) for n in space.nvec))
    if isinstance(space, spaces.Tuple):
        subs = list(space.spaces)
        if subs and all(isinstance(s, spaces.Discrete) for s in subs):
            return ActionSpec("multidiscrete", tuple(int(s.n) for s in subs))
    if isinstance(space, spaces.Box):
        shape = tuple(space.shape)
        if len(shape) == 0:
            return ActionSpec("continuous", (1,), scalar=True)
        if len(shape) == 1:
            return ActionSpec("continuous", shape)
    raise TypeError(f"unsupported action space for the actor-critic: {space!r}")


# --------------------------------------------------------------------------- distributions
@struct.dataclass
class Categorical:
    """Categorical distribution over the last axis of ``logits``."""

    logits: jax.Array

    def _logp(self) -> jax.Array:
        return jax.nn.log_softmax(self.logits, axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.categorical(key, self.logits, axis=-1).astype(jnp.int32)

    def mode(self) -> jax.Array:
        return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)

    def log_prob(self, action: jax.Array) -> jax.Array:
        logp = self._logp()
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
        logp = self._logp()
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@struct.dataclass
class MultiCategorical:
    """Independent categoricals; action ``[..., len(logits)]`` int32."""

    logits: tuple[jax.Array, ...]

    def _parts(self) -> list[Categorical]:
        return [Categorical(lg) for lg in self.logits]

    def sample(self, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, len(self.logits))
        return jnp.stack([c.sample(k) for c, k in zip(self._parts(), keys, strict=True)], -1)

    def mode(self) -> jax.Array:
        return jnp.stack([c.mode() for c in self._parts()], -1)

    def log_prob(self, action: jax.Array) -> jax.Array:
        return sum(c.log_prob(action[..., i]) for i, c in enumerate(self._parts()))

    def entropy(self) -> jax.Array:
        return sum(c.entropy() for c in self._parts())


@struct.dataclass
class DiagGaussian:
    """Diagonal Gaussian; ``log_std`` broadcasts against ``mean``."""

    mean: jax.Array
    log_std: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(self.log_std) * eps

    def mode(self) -> jax.Array:
        return self.mean

    def log_prob(self, action: jax.Array) -> jax.Array:
        log_std = jnp.broadcast_to(self.log_std, self.mean.shape)
        z = (action - self.mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * np.log(2.0 * np.pi), axis=-1)

    def entropy(self) -> jax.Array:
        log_std = jnp.broadcast_to(self.log_std, self.mean.shape)
        return jnp.sum(log_std + 0.5 * (1.0 + np.log(2.0 * np.pi)), axis=-1)


Distribution = Categorical | MultiCategorical | DiagGaussian


# --------------------------------------------------------------------------- network
def orthogonal_init(scale: float = 1.0, iterations: int = 40) -> Callable[..., jax.Array]:
    """Orthogonal kernel initializer built from matmuls only (vmap-safe, no LAPACK).

    The polar factor of a Gaussian matrix is Haar-distributed (what ``orthogonal`` draws);
    it is computed by Newton-Schulz iterations ``X <- 1.5 X - 0.5 X X^T X`` from
    ``A / ||A||_F``. flax's QR-based ``orthogonal`` calls LAPACK's batched QR, which under
    ``vmap`` over seeds deadlocked XLA's CPU thread pool (jaxlib 0.10.2, OpenBLAS) and added
    seconds of compile time.
    """
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        n_in, n_out = int(np.prod(shape[:-1])), int(shape[-1])
        tall = n_in >= n_out
        a = jax.random.normal(key, (n_in, n_out) if tall else (n_out, n_in), jnp.float32)
        x = a / jnp.linalg.norm(a)

        def step(_, x):
            return 1.5 * x - 0.5 * x @ (x.T @ x)

        q = jax.lax.fori_loop(0, iterations, step, x)
        q = q if tall else q.T
        return (scale * q).reshape(shape).astype(dtype)

    return init


def _dense(features: int, scale: float, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=orthogonal_init(scale),
                    bias_init=nn.initializers.zeros, name=name)


class MLP(nn.Module):
    """Stack of dense layers with orthogonal(sqrt 2) init and an activation after each."""

    widths: tuple[int, ...]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for w in self.widths:
            x = act(_dense(w, np.sqrt(2.0))(x))
        return x


class ActorCritic(nn.Module):
    """Actor-critic: ``apply(params, obs) -> (distribution, value)``.

    ``shared_torso`` uses one MLP feeding both heads; otherwise actor and critic have their own.
    Observations are flattened over their trailing ``obs_ndim`` axes.
    """

    spec: ActionSpec
    widths: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    shared_torso: bool = False
    obs_ndim: int = 1
    init_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[Distribution, jax.Array]:
        x = obs.astype(jnp.float32)
        lead = x.shape[: x.ndim - self.obs_ndim]
        x = x.reshape(*lead, -1)
        if self.shared_torso:
            h_pi = h_v = MLP(self.widths, self.activation, name="torso")(x)
        else:
            h_pi = MLP(self.widths, self.activation, name="actor_torso")(x)
            h_v = MLP(self.widths, self.activation, name="critic_torso")(x)
        value = _dense(1, 1.0, name="critic_head")(h_v)[..., 0]
        kind, dims = self.spec.kind, self.spec.dims
        if kind == "discrete":
            dist: Distribution = Categorical(_dense(dims[0], 0.01, name="actor_head")(h_pi))
        elif kind == "multidiscrete":
            flat = _dense(sum(dims), 0.01, name="actor_head")(h_pi)
            splits = np.cumsum(dims)[:-1].tolist()
            dist = MultiCategorical(tuple(jnp.split(flat, splits, axis=-1)))
        else:
            mean = _dense(dims[0], 0.01, name="actor_head")(h_pi)
            log_std = self.param("log_std", nn.initializers.constant(self.init_log_std),
                                 (dims[0],))
            dist = DiagGaussian(mean, log_std)
        return dist, value


def make_network(env: Any, env_params: Any, widths: Sequence[int] = (64, 64),
                 activation: str = "tanh", shared_torso: bool = False,
                 init_log_std: float = 0.0) -> ActorCritic:
    """Build the :class:`ActorCritic` whose head matches ``env.action_space(env_params)``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    obs_shape = tuple(env.observation_space(env_params).shape)
    return ActorCritic(spec=action_spec(env.action_space(env_params)), widths=tuple(widths),
                       activation=activation, shared_torso=shared_torso,
                       obs_ndim=len(obs_shape), init_log_std=init_log_std)


def to_env_action(spec: ActionSpec, action: jax.Array) -> jax.Array:
    """Reshape a sampled action to the env's expected shape (scalar Box -> ``()``)."""
    if spec.kind == "continuous" and spec.scalar:
        return action[..., 0]
    return action
