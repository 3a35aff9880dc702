"""``MarketData``: the OHLCV pytree every env, generator and loader speaks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

DEFAULT_VOL_SPAN = 20


@struct.dataclass
class MarketData:
    """OHLCV paths, all ``[n_paths, n_bars]`` (``symbol_id`` is ``[n_paths]``).

    vol_unit: causal volatility unit in price units at bar t (EWMA of the true range over bars
              <= t); TP/SL distances are multiples of it.
    regime:   regime label per bar (int32), -1 where unknown (real data).
    trend:    direction of the regime in force at bar t in [-1, 1], 0 where unknown.
    symbol_id: integer symbol of each path (for per-symbol statistics).
    """

    open: jax.Array
    high: jax.Array
    low: jax.Array
    close: jax.Array
    volume: jax.Array
    vol_unit: jax.Array
    regime: jax.Array
    trend: jax.Array
    symbol_id: jax.Array

    @property
    def n_paths(self) -> int:
        return self.close.shape[0]

    @property
    def n_bars(self) -> int:
        return self.close.shape[1]


def causal_vol_unit(high: jax.Array, low: jax.Array, close: jax.Array,
                    span: int = DEFAULT_VOL_SPAN) -> jax.Array:
    """EWMA average true range along the last axis; bar t uses bars <= t only."""
    prev_close = jnp.concatenate([close[..., :1], close[..., :-1]], axis=-1)
    tr = jnp.maximum(high - low, jnp.maximum(jnp.abs(high - prev_close),
                                             jnp.abs(low - prev_close)))
    alpha = 2.0 / (span + 1.0)

    def step(v, x):
        v = (1.0 - alpha) * v + alpha * x
        return v, v

    tr_t = jnp.moveaxis(tr, -1, 0)
    _, out = jax.lax.scan(step, tr_t[0], tr_t)
    return jnp.moveaxis(out, 0, -1)


def make_market_data(open, high, low, close, volume=None, regime=None, trend=None,
                     symbol_id=None, vol_span: int = DEFAULT_VOL_SPAN) -> MarketData:
    """Build a ``MarketData`` from ``[n_paths, n_bars]`` arrays (1-D arrays become one path).

    Missing volume -> zeros, regime -> -1, trend -> 0, symbol_id -> 0.
    """
    arrs = [jnp.asarray(a, jnp.float32) for a in (open, high, low, close)]
    arrs = [a[None, :] if a.ndim == 1 else a for a in arrs]
    o, h, lo, c = arrs
    shape = c.shape
    for name, a in zip(("open", "high", "low"), (o, h, lo), strict=True):
        if a.shape != shape:
            raise ValueError(f"MarketData: {name} has shape {a.shape}, expected {shape} like close")

    def _opt(x, fill, dtype, name, shp=shape):
        if x is None:
            return jnp.full(shp, fill, dtype)
        x = jnp.asarray(x, dtype)
        if x.ndim == len(shp) - 1 and len(shp) == 2 and name != "symbol_id":
            x = x[None, :]
        if x.shape != shp:
            raise ValueError(f"MarketData: {name} has shape {x.shape}, expected {shp}")
        return x

    return MarketData(
        open=o, high=h, low=lo, close=c,
        volume=_opt(volume, 0.0, jnp.float32, "volume"),
        vol_unit=causal_vol_unit(h, lo, c, vol_span),
        regime=_opt(regime, -1, jnp.int32, "regime"),
        trend=_opt(trend, 0.0, jnp.float32, "trend"),
        symbol_id=_opt(symbol_id, 0, jnp.int32, "symbol_id", shp=shape[:1]),
    )
