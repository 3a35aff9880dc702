"""Vectorised policy evaluation on ``TradingEnv``: one episode per key through the one rollout
of :mod:`tpfl_jax.accounting` (so its numbers are the loop's and the references')."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax import accounting
from tpfl_jax.agents.networks import make_network, to_env_action
from tpfl_jax.agents.ppo import PPOConfig, RunningMeanStd
from tpfl_jax.env.frames import trades_frame


class EvalResult(NamedTuple):
    """Per-episode returns (reward sums) and lengths, every ``accounting.METRICS`` value over
    the episodes, the closed trades (ordered by episode, then step; empty for an env without
    trades) and the per-episode sums."""

    returns: np.ndarray
    lengths: np.ndarray
    trades: pd.DataFrame
    metrics: dict[str, float]
    sums: accounting.EpisodeSums


# --------------------------------------------------------------------------- actors
def network_actor(network: Any, params: Any, obs_rms: Any = None, obs_clip: float = 10.0,
                  greedy: bool | jax.Array = False) -> accounting.Actor:
    """An actor of a trained ``ActorCritic``: the distribution's mode when ``greedy`` (may be
    traced, so both modes share one program), else a sample; observations normalised by
    ``obs_rms`` when given."""
    def actor(obs: jax.Array, state: Any, key: jax.Array) -> jax.Array:
        del state
        x = obs.astype(jnp.float32) if obs_rms is None else obs_rms.normalize(obs, obs_clip)
        dist, _ = network.apply(params, x)
        return to_env_action(network.spec, jnp.where(greedy, dist.mode(), dist.sample(key)))

    return actor




def deploy_both_modes(env: Any, network: Any, params: Any, env_params: Any, keys: jax.Array,
                      n_steps: int, obs_rms: Any = None, obs_clip: float = 10.0,
                      keep_trades: bool = False) -> accounting.Rollout:
    """A trained network played on the episodes of ``keys`` in both ``DEPLOY_MODES`` (sampled:
    as trained; greedy: argmax), as one vmapped rollout (leading axis ``[2]``)."""
    def one(greedy):
        actor = network_actor(network, params, obs_rms, obs_clip, greedy)
        return accounting.rollout(env, actor, env_params, keys, n_steps, keep_trades)

    return jax.vmap(one)(jnp.array([m == "greedy" for m in accounting.DEPLOY_MODES]))


@partial(jax.jit, static_argnames=("env", "network", "n_steps", "greedy", "obs_clip"))
def _rollout(params, obs_rms, env_params, keys, *, env, network, n_steps, greedy, obs_clip):
    actor = network_actor(network, params, obs_rms, obs_clip, greedy)
    return accounting.rollout(env, actor, env_params, keys, n_steps, keep_trades=True)


def evaluate(params: Any, env: Any, env_params: Any, rng: jax.Array,
             n_episodes: int | None = None, deterministic: bool = True,
             config: PPOConfig | None = None, obs_rms: RunningMeanStd | None = None,
             max_steps: int | None = None) -> EvalResult:
    """Roll out ``n_episodes`` episodes (``accounting.episode_keys(rng, n_episodes)``; with
    ``n_episodes=None``, ``rng`` is already the ``[E]`` episode keys) with the policy
    ``params``: its mode when ``deterministic``, else samples. ``config`` must match the
    network used in training (default ``PPOConfig()``); pass the runner state's ``obs_rms``
    when training used ``normalize_obs``. ``max_steps`` defaults to
    ``env_params.max_steps_in_episode``."""
    config = PPOConfig() if config is None else config
    network = make_network(env, env_params, config.widths, config.activation,
                           config.shared_torso, config.init_log_std)
    if max_steps is None:
        max_steps = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    keys = rng if n_episodes is None else accounting.episode_keys(rng, int(n_episodes))
    if config.normalize_obs and obs_rms is None:
        raise ValueError("evaluate: config.normalize_obs is set: pass the trained obs_rms")
    out = _rollout(params, obs_rms if config.normalize_obs else None, env_params,
                   keys, env=env, network=network,
                   n_steps=int(max_steps), greedy=bool(deterministic),
                   obs_clip=float(config.obs_clip))
    out = jax.device_get(out)
    trades = (trades_frame(out.trades, out.active, index_names=("episode", "step"))
              if out.trades is not None else pd.DataFrame())
    metrics = {k: float(v) for k, v in accounting.finalize(out.sums).items()}
    return EvalResult(np.asarray(out.sums.reward), np.asarray(out.sums.steps, np.int64),
                      trades, metrics, out.sums)


__all__ = ["EvalResult", "deploy_both_modes", "evaluate", "network_actor"]
