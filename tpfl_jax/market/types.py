"""``MarketData``: the OHLCV pytree every env, generator and loader speaks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

DEFAULT_VOL_SPAN = 20


@struct.dataclass
class MarketData:
    """OHLCV paths, all ``[n_paths, n_bars]`` (``symbol_id`` is ``[n_paths]``; ``intrabar`` is
    ``[n_paths, n_bars, m]``, ``intrabar_jump_bits`` ``[n_paths, n_bars, ceil(m / 32)]``).

    vol_unit: causal volatility unit in price units at bar t (EWMA of the true range over bars
              <= t); TP/SL distances are multiples of it.
    regime:   regime label per bar (int32), -1 where unknown (real data).
    trend:    direction of the regime in force at bar t in [-1, 1], 0 where unknown.
    symbol_id: integer symbol of each path (for per-symbol statistics).
    intrabar: the bar's known price path after its open, in time order, last point = close
              (``low <= point <= high``). Synthetic bars with jumps store their ``substeps`` points
              (jump-free kinds keep none: their stops fill at the level); bars
              whose path is unknown (CSV data) have ``m = 0`` (a zero-size axis, so every
              market has the same pytree structure).
    intrabar_jump_bits: the property ``intrabar_jump`` (bool ``[n_paths, n_bars, m]``) packed
              into uint32 words (bit i % 32 of word i // 32; see :func:`pack_bits`): True where
              the move into point i (from point i-1, or the open for i = 0) is discontinuous.
              A stop crossed by a jump fills at point i (the post-jump price); one crossed by a
              continuous (diffusive) move fills at its level (``env/exits.py``). Synthetic bars
              flag the substeps with a Merton jump; a path given as discrete prices (e.g. finer
              bars) is all jumps. Packed so the env gathers one word per bar, not m flags.
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
    intrabar: jax.Array
    intrabar_jump_bits: jax.Array

    @property
    def n_paths(self) -> int:
        return self.close.shape[0]

    @property
    def n_bars(self) -> int:
        return self.close.shape[1]

    @property
    def n_intrabar(self) -> int:
        """Known intrabar points per bar (0: only OHLC is known)."""
        return self.intrabar.shape[-1]

    @property
    def intrabar_jump(self) -> jax.Array:
        """Bool ``[n_paths, n_bars, m]``: the move into intrabar point i is a jump."""
        return unpack_bits(self.intrabar_jump_bits, self.n_intrabar)

    def bar_path(self, path, bar) -> tuple[jax.Array, jax.Array]:
        """``(points [m], jump flags [m])`` of one bar (traced indices allowed)."""
        return (self.intrabar[path, bar],
                unpack_bits(self.intrabar_jump_bits[path, bar], self.n_intrabar))


def pack_bits(flags) -> jax.Array:
    """Bool ``[..., m]`` -> uint32 ``[..., ceil(m / 32)]``: flag i is bit i % 32 of word i // 32."""
    f = jnp.asarray(flags, jnp.bool_)
    m = f.shape[-1]
    n = -(-m // 32)
    f = jnp.pad(f, [(0, 0)] * (f.ndim - 1) + [(0, 32 * n - m)])
    f = f.reshape(*f.shape[:-1], n, 32).astype(jnp.uint32)
    return jnp.sum(f << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def unpack_bits(words, m: int) -> jax.Array:
    """Inverse of :func:`pack_bits`: uint32 ``[..., ceil(m / 32)]`` -> bool ``[..., m]``."""
    i = np.arange(m)
    w = jnp.asarray(words, jnp.uint32)[..., i // 32]
    return ((w >> jnp.asarray(i % 32, jnp.uint32)) & jnp.uint32(1)).astype(jnp.bool_)


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
                     symbol_id=None, vol_span: int = DEFAULT_VOL_SPAN,
                     intrabar=None, intrabar_jump=None) -> MarketData:
    """Build a ``MarketData`` from ``[n_paths, n_bars]`` arrays (1-D arrays become one path).

    Missing volume -> zeros, regime -> -1, trend -> 0, symbol_id -> 0, intrabar -> no known
    intrabar path (``[n_paths, n_bars, 0]``), intrabar_jump -> all True (every step between
    the given points is discrete). ``intrabar`` is ``[n_paths, n_bars, m]`` (or ``[n_bars, m]``
    for one path): every point within ``[low, high]`` of its bar and the last point equal to
    the close (checked when the arrays are concrete, i.e. outside ``jit``); ``intrabar_jump``
    has its shape.
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

    if intrabar is None:
        if intrabar_jump is not None:
            raise ValueError("MarketData: intrabar_jump given without intrabar")
        ib = jnp.zeros((*shape, 0), jnp.float32)
    else:
        ib = jnp.asarray(intrabar, jnp.float32)
        if ib.ndim == 2 and len(shape) == 2 and shape[0] == 1:
            ib = ib[None]
        if ib.ndim != 3 or ib.shape[:2] != shape:
            raise ValueError(f"MarketData: intrabar has shape {ib.shape}, expected "
                             f"{(*shape, 'm')} ([n_paths, n_bars, points per bar])")
        if ib.shape[-1] and not any(isinstance(a, jax.core.Tracer) for a in (ib, h, lo, c)):
            _check_intrabar(ib, h, lo, c)
    if intrabar_jump is None:
        jump = jnp.ones(ib.shape, jnp.bool_)
    else:
        jump = jnp.asarray(intrabar_jump, jnp.bool_)
        if jump.ndim == 2 and ib.shape[0] == 1:
            jump = jump[None]
        if jump.shape != ib.shape:
            raise ValueError(f"MarketData: intrabar_jump has shape {jump.shape}, expected "
                             f"{ib.shape} like intrabar")

    return MarketData(
        open=o, high=h, low=lo, close=c,
        volume=_opt(volume, 0.0, jnp.float32, "volume"),
        vol_unit=causal_vol_unit(h, lo, c, vol_span),
        regime=_opt(regime, -1, jnp.int32, "regime"),
        trend=_opt(trend, 0.0, jnp.float32, "trend"),
        symbol_id=_opt(symbol_id, 0, jnp.int32, "symbol_id", shp=shape[:1]),
        intrabar=ib, intrabar_jump_bits=pack_bits(jump),
    )


def _check_intrabar(ib: jax.Array, high: jax.Array, low: jax.Array, close: jax.Array) -> None:
    """Host check of the intrabar contract; the error names the first bad (path, bar)."""
    tol = 1e-6 * jnp.maximum(jnp.abs(high), 1.0)
    bad = ((jnp.max(ib, axis=-1) > high + tol) | (jnp.min(ib, axis=-1) < low - tol)
           | (jnp.abs(ib[..., -1] - close) > tol))
    if bool(jnp.any(bad)):
        p, b = (int(i) for i in jnp.argwhere(bad)[0])
        raise ValueError(
            f"MarketData: intrabar[{p}, {b}] = {ib[p, b].tolist()} is not a path of its bar "
            f"(low {float(low[p, b])}, high {float(high[p, b])}, close {float(close[p, b])}): "
            "expected every point within [low, high] and the last point equal to the close")
