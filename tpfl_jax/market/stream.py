"""Fresh training paths for every PPO update from any path generator (a synthetic market, a
generator fitted to a real training window, a block bootstrap of it).

:class:`PathStream` is an ``agents.ppo.DataStream``. It only needs from the env its
``window``, ``reset_env(key, params, lane_next, lane_stride)`` and the ``EnvState`` fields
``path``, ``lane_next`` and ``lane_stride`` (duck-typed: this module imports nothing from
``tpfl_jax.env``). Its market has ``num_envs * (1 + lanes)`` paths:

* paths ``[0, num_envs)`` carry the running episodes: before every update, env ``i``'s current
  path is copied into slot ``i`` (the bars it is trading on do not change, so neither does its
  observation);
* paths ``[num_envs, ...)`` are generated anew from the update's key: env ``i`` owns the lane
  ``num_envs * (1 + r) + i`` (``r = 0 .. lanes - 1``), and its ``r``-th reset in the update starts
  on that path. ``lanes = ceil(num_steps / episode steps) + 1`` covers every natural reset of an
  update plus one early termination (ruin).

The data are a pure function of the training key and the traced ``source`` (the generator's
parameters), so runs are reproducible and arms given the same key see the same paths.
``generator(key, source, n_paths, n_bars) -> MarketData`` is static (hashable).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from tpfl_jax.market import synthetic
from tpfl_jax.market.types import DEFAULT_VOL_SPAN, MarketData

Generator = Callable[[jax.Array, Any, int, int], MarketData]


@struct.dataclass
class FreshData:
    """The stream's state: the generator params (traced) and the market in use."""

    source: Any
    market: MarketData


@dataclass(frozen=True)
class SyntheticGenerator:
    """``synthetic.simulate`` with ``substeps`` intrabar points (a hashable generator)."""

    substeps: int

    def __call__(self, key: jax.Array, source: Any, n_paths: int, n_bars: int) -> MarketData:
        return synthetic.simulate(key, source, n_paths, n_bars, self.substeps)


@dataclass(frozen=True)
class PathStream:
    """Fresh paths of at most ``n_bars`` bars from ``generator`` for ``num_envs`` envs of
    ``env`` whose rollouts are ``num_steps`` long and whose episodes are ``episode_steps`` long
    (all static)."""

    env: Any
    n_bars: int
    num_envs: int
    num_steps: int
    episode_steps: int
    generator: Generator

    @property
    def lanes(self) -> int:
        """Fresh paths per env and update."""
        return math.ceil(self.num_steps / max(self.episode_steps, 1)) + 1

    @property
    def n_paths(self) -> int:
        return self.num_envs * (1 + self.lanes)

    @property
    def path_bars(self) -> int:
        """Bars of one fresh path: one episode and ``2 x vol_span`` bars of room for its start
        (the causal volatility unit is warmed up after about that many bars)."""
        return min(self.n_bars, self.env.lookback + self.episode_steps + 2 + 2 * DEFAULT_VOL_SPAN)

    def _lanes(self, env_state: Any) -> Any:
        """Every env back on its first fresh lane path."""
        n = self.num_envs
        first = n + jnp.arange(n, dtype=jnp.int32)
        return env_state.replace(lane_next=first, lane_stride=jnp.full((n,), n, jnp.int32))

    def start(self, key: jax.Array, source: Any, env_params: Any
              ) -> tuple[FreshData, jax.Array, Any, Any]:
        """A fresh market and every env reset on its own fresh path."""
        k_mkt, k_reset = jax.random.split(key)
        market = self.generator(k_mkt, source, self.n_paths, self.path_bars)
        params = env_params.replace(market=market)
        n = self.num_envs
        first = n + jnp.arange(n, dtype=jnp.int32)
        obs, state = jax.vmap(self.env.reset_env, in_axes=(0, None, 0, None))(
            jax.random.split(k_reset, n), params, first, jnp.int32(n))
        return FreshData(source, market), obs, self._lanes(state), params

    def refresh(self, key: jax.Array, data: FreshData, env_state: Any, env_params: Any
                ) -> tuple[FreshData, Any, Any]:
        """Running episodes' paths copied to slots ``[0, num_envs)``; new lane paths."""
        n = self.num_envs
        carried = jax.tree.map(lambda x: x[env_state.path], data.market)
        fresh = self.generator(key, data.source, n * self.lanes, self.path_bars)
        market = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), carried, fresh)
        state = self._lanes(env_state.replace(path=jnp.arange(n, dtype=jnp.int32)))
        return data.replace(market=market), state, env_params.replace(market=market)


__all__ = ["FreshData", "Generator", "PathStream", "SyntheticGenerator"]
