"""Vectorised policy evaluation: one episode per parallel env, the whole rollout in ``lax.scan``."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax.agents.networks import ActorCritic, make_network
from tpfl_jax.agents.ppo import PPOConfig, RunningMeanStd, policy_action
from tpfl_jax.env.frames import trades_frame


class EvalResult(NamedTuple):
    """Per-episode returns and lengths; closed trades (None when the env emits no trades)."""

    returns: np.ndarray
    lengths: np.ndarray
    trades: pd.DataFrame | None


@functools.lru_cache(maxsize=32)
def _make_rollout(env: Any, network: ActorCritic, n: int, max_steps: int, deterministic: bool,
                  obs_clip: float):
    v_reset = jax.vmap(env.reset, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(params, env_params, rng, obs_rms):
        rng, k_reset = jax.random.split(rng)
        obs, state = v_reset(jax.random.split(k_reset, n), env_params)

        def step(carry, _):
            obs, state, active, ret, length, rng = carry
            rng, k_act, k_step = jax.random.split(rng, 3)
            action = policy_action(network, params, obs, None if deterministic else k_act,
                                   obs_rms, obs_clip)
            obs, state, reward, term, trunc, info = v_step(
                jax.random.split(k_step, n), state, action, env_params)
            act_f = active.astype(jnp.float32)
            ret = ret + reward.astype(jnp.float32) * act_f
            length = length + active.astype(jnp.int32)
            out = {"trade": info["trade"], "active": active} if "trade" in info else {}
            active = active & ~(term | trunc)
            return (obs, state, active, ret, length, rng), out

        init = (obs, state, jnp.ones((n,), bool), jnp.zeros((n,), jnp.float32),
                jnp.zeros((n,), jnp.int32), rng)
        (_, _, active, ret, length, _), out = jax.lax.scan(step, init, None, length=max_steps)
        return ret, length, active, out

    return jax.jit(rollout)


def evaluate(params: Any, env: Any, env_params: Any, rng: jax.Array, n_episodes: int,
             deterministic: bool = True, config: PPOConfig | None = None,
             obs_rms: RunningMeanStd | None = None,
             max_steps: int | None = None) -> EvalResult:
    """Roll out ``n_episodes`` episodes in parallel (one per env) with the policy ``params``.

    ``deterministic`` takes the distribution's mode, else samples. ``config`` must match the
    network used in training (default ``PPOConfig()``); pass the runner state's ``obs_rms`` when
    training used ``normalize_obs``. ``max_steps`` (static) defaults to
    ``env_params.max_steps_in_episode``; an episode that has not ended by then is cut there.
    """
    config = PPOConfig() if config is None else config
    network = make_network(env, env_params, config.widths, config.activation,
                           config.shared_torso, config.init_log_std)
    if max_steps is None:
        max_steps = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    if config.normalize_obs and obs_rms is None:
        raise ValueError("config.normalize_obs is set: pass the trained obs_rms")
    fn = _make_rollout(env, network, int(n_episodes), int(max_steps), bool(deterministic),
                       float(config.obs_clip))
    ret, length, _, out = jax.device_get(fn(params, env_params, rng, obs_rms))
    trades = None
    if "trade" in out:  # one row per trade, ordered by episode then step
        trades = trades_frame(out["trade"], out["active"], index_names=("step", "episode"))
        trades = trades.sort_values(["episode", "step"], kind="stable", ignore_index=True)
    return EvalResult(np.asarray(ret), np.asarray(length), trades)
