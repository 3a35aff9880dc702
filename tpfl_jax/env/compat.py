"""``TradingEnvV3``: the seed's stateful object API as a thin wrapper over the pure env.

Each call runs the jitted pure ``TradingEnv.step``/``reset`` with the current ``EnvParams``;
setting ``tp_reward_weight`` swaps a traced leaf, so it never recompiles. Key schedule (for
reproducing a run with the pure env): ``key = jax.random.key(seed)``; every ``reset``/``step``
does ``key, sub = jax.random.split(key)`` and passes ``sub``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax.env.trading import EnvParams, EnvState, TradingEnv, default_market
from tpfl_jax.market.data import from_dataframe
from tpfl_jax.market.types import MarketData

_STATIC_KEYS = ("window", "n_tp", "premature_horizon", "features")
_OTHER_KEYS = ("seed",)


def _resolve_market(provider: Any) -> MarketData:
    if provider is None:
        return default_market()
    if isinstance(provider, MarketData):
        return provider
    if isinstance(provider, pd.DataFrame):
        return from_dataframe(provider, window_len=len(provider))   # one path: the whole frame
    for name in ("get_market_data", "get_data"):
        if hasattr(provider, name):
            return _resolve_market(getattr(provider, name)())
    if callable(provider):
        return _resolve_market(provider())
    raise TypeError(
        "market_data_provider: expected None, a MarketData, an OHLCV DataFrame, a callable "
        "returning one, or an object with get_market_data()/get_data(); got "
        f"{type(provider).__name__}")


class TradingEnvV3:
    """Stateful trading env: ``reset() -> obs``; ``step(action) -> (obs, reward, terminated,
    truncated, info)`` with numpy/float values. On the last step of an episode ``obs`` is the
    final observation; call ``reset()`` to start the next episode.

    ``config`` (mapping or object with attributes): ``window``, ``n_tp``,
    ``premature_horizon``, ``features`` (static; ``features`` defaults to ``base``, the seed's
    observation, not to ``TradingEnv``'s default), ``seed``, and any ``EnvParams`` field (e.g.
    ``tp_mults``, ``sl_mult``, ``fee_bps``, ``max_steps_in_episode``). Unknown keys raise
    ``ValueError``.
    """

    def __init__(self, config: Mapping[str, Any] | Any | None = None,
                 market_data_provider: Any = None, tp_reward_weight: float = 1.0):
        cfg = dict(config) if isinstance(config, Mapping) else (
            {} if config is None else dict(vars(config)))
        fields = set(EnvParams.__dataclass_fields__) - {"market", "tp_reward_weight"}
        unknown = set(cfg) - fields - set(_STATIC_KEYS) - set(_OTHER_KEYS)
        if unknown:
            raise ValueError(f"TradingEnvV3 config: unknown keys {sorted(unknown)}; expected "
                             f"any of {sorted(fields | set(_STATIC_KEYS) | set(_OTHER_KEYS))}")
        self.env = TradingEnv(**{"features": "base",
                                 **{k: cfg[k] for k in _STATIC_KEYS if k in cfg}})
        market = _resolve_market(market_data_provider)
        self.params: EnvParams = self.env.make_params(
            market, tp_reward_weight=float(tp_reward_weight),
            **{k: v for k, v in cfg.items() if k in fields})
        self._key = jax.random.key(int(cfg.get("seed", 0)))
        self._state: EnvState | None = None

    @property
    def tp_reward_weight(self) -> float:
        return float(self.params.tp_reward_weight)

    @tp_reward_weight.setter
    def tp_reward_weight(self, value: float) -> None:
        self.params = self.params.replace(tp_reward_weight=jnp.float32(value))

    @property
    def state(self) -> EnvState | None:
        return self._state

    @property
    def action_space_n(self) -> int:
        return self.env.num_actions

    def _next_key(self) -> jax.Array:
        self._key, sub = jax.random.split(self._key)
        return sub

    def reset(self) -> np.ndarray:
        obs, self._state = self.env.reset(self._next_key(), self.params)
        return np.asarray(obs)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("TradingEnvV3.step: call reset() first")
        n = self.env.num_actions
        if not (isinstance(action, (int, np.integer)) and 0 <= int(action) < n):
            raise ValueError(f"TradingEnvV3.step: action must be an int in [0, {n}), "
                             f"got {action!r}")
        obs, state, reward, term, trunc, info = self.env.step(
            self._next_key(), self._state, int(action), self.params)
        done = bool(term) or bool(trunc)
        self._state = None if done else state
        info = dict(info)
        final_obs = np.asarray(info.pop("final_observation"))
        info = jax.tree.map(lambda x: np.asarray(x).item(), jax.device_get(info))
        out_obs = final_obs if done else np.asarray(obs)
        return out_obs, float(reward), bool(term), bool(trunc), info

    def close(self) -> None:
        self._state = None

