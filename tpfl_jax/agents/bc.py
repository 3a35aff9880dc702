"""Behaviour cloning: can the agent's network and observation express a given rule?

:func:`clone` collects the rule's own episodes through ``accounting.rollout`` (its observations
and actions), fits the actor head of an :class:`~tpfl_jax.agents.networks.ActorCritic` to them
by cross-entropy (optax Adam, shuffled minibatches, one ``lax.scan``) and returns the network
params. Played greedy on held-out episodes, a clone that earns what the rule earns shows the
policy class can represent the rule: what PPO misses is then optimisation or data, not
capacity or observation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tpfl_jax import accounting
from tpfl_jax.agents.ppo import RunningMeanStd


class CloneResult(NamedTuple):
    """The cloned params, the training loss per step, the final action agreement on the
    training data (fraction of the rule's actions the clone's mode takes) and the observation
    statistics the clone reads its inputs through (``normalize``; else None)."""

    params: Any
    loss: jax.Array
    agreement: jax.Array
    obs_rms: Any = None


def clone(network: Any, rule: accounting.Actor, env: Any, env_params: Any, keys: jax.Array,
          n_steps: int, key: jax.Array, *, steps: int = 2000, batch: int = 512,
          lr: float = 1e-3, normalize: bool = False) -> CloneResult:
    """Fit ``network``'s actor to ``rule`` on the rule's episodes of ``keys`` (``[E]``).

    ``network`` is a discrete-action ``ActorCritic``; ``steps`` Adam steps of ``batch`` samples
    drawn from the episodes' active steps (jit the call; every size is static). ``normalize``:
    the inputs are standardised by the training observations' mean and variance (as PPO's
    ``obs_rms`` does; play the clone with ``network_actor(..., obs_rms=result.obs_rms)``)."""
    data = accounting.rollout(env, rule, env_params, keys, n_steps, keep_steps=True)
    obs = data.obs.reshape(-1, *data.obs.shape[2:])
    rms = RunningMeanStd.create(obs.shape[1:]).update(obs) if normalize else None
    x = obs if rms is None else rms.normalize(obs)
    act = data.actions.reshape(-1).astype(jnp.int32)
    w = data.active.reshape(-1).astype(jnp.float32)
    k_init, k_batch = jax.random.split(key)
    params = network.init(k_init, x[:1])
    tx = optax.adam(lr)

    def loss_fn(p, idx):
        dist, _ = network.apply(p, x[idx])
        nll = -dist.log_prob(act[idx])
        return jnp.sum(nll * w[idx]) / jnp.maximum(jnp.sum(w[idx]), 1.0)

    def step(carry, k):
        p, opt = carry
        idx = jax.random.randint(k, (batch,), 0, obs.shape[0])
        loss, g = jax.value_and_grad(loss_fn)(p, idx)
        upd, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, upd), opt), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                       jax.random.split(k_batch, steps))
    dist, _ = network.apply(params, x)
    agree = jnp.sum((dist.mode() == act) * w) / jnp.maximum(jnp.sum(w), 1.0)
    return CloneResult(params, losses, agree, rms)


__all__ = ["CloneResult", "clone"]
