"""Synthetic OHLCV markets in pure JAX: GBM, Markov regime switching, GARCH(1,1), Merton jumps.

Every generator is one engine (`simulate`) fed by a kind-specific parameter struct:

* bar t has a regime ``s_t`` (Markov chain, transition matrix ``P``; one regime for GBM / GARCH /
  Merton), a per-bar log-return drift ``drift[s_t]`` and a volatility
  ``sigma_t = vol[s_t] * sqrt(h_t)`` where ``h_t`` is a GARCH(1,1) variance multiplier with
  unconditional mean 1: ``h_{t+1} = (1 - a - b) + a * z_t**2 * h_t + b * h_t`` (``z_t`` the bar's
  standardised diffusive shock; ``a = b = 0`` gives constant volatility);
* each bar is ``substeps`` intrabar log-price increments
  ``drift/m + sigma_t/sqrt(m) * N(0, 1) + jumps`` (m = substeps); jumps are compound Poisson with
  intensity ``jump_intensity`` per bar and ``N(jump_mean, jump_vol**2)`` sizes;
* open = previous close (times ``exp(N(0, gap_vol**2))`` if ``gap_vol > 0``; bar 0 opens at s0),
  close = last intrabar point, high / low = max / min over the open and all intrabar points, so
  ``low <= open, close <= high`` holds exactly; the ``m`` intrabar points are kept in
  ``MarketData.intrabar`` (``[n_paths, n_bars, m]``) and the substeps with a jump in
  ``intrabar_jump``: a stop crossed by a jump fills at the post-jump price, one crossed by the
  (continuous) diffusion at its level (``env/exits.py``);
* volume = ``volume_base * LogNormal(mean 1, volume_vol) * (1 + |z_t|) / E[1 + |z|]`` (> 0,
  larger on large moves).

Units: ``drift`` is the mean log return per bar of the diffusive part (jumps add
``jump_intensity * jump_mean``); ``vol`` is the per-bar standard deviation of log returns.
Labels: ``regime`` is ``s_t`` (the regime that generated bar t) and ``trend = sign(drift[s_t])``.

Shapes (``n_paths``, ``n_bars``, ``substeps``) are static; every float parameter is a traced pytree
leaf, so ``jax.vmap`` over keys or over parameter values never recompiles. Keys must be typed
(``jax.random.key``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from tpfl_jax.market.types import DEFAULT_VOL_SPAN, MarketData, make_market_data

DEFAULT_SUBSTEPS = 16
_F32 = jnp.float32
_MAX_JUMPS = 16  # Poisson draws per substep are capped here (P(N >= 16) < 1e-13 at lam <= 1)
_MEAN_1_ABS_Z = 1.0 + math.sqrt(2.0 / math.pi)  # E[1 + |z|], z ~ N(0, 1)


def _f32(*values: float):
    return struct.field(default_factory=lambda: jnp.asarray(values, _F32))


def _default_transition():
    return struct.field(default_factory=lambda: jnp.asarray(
        [[0.98, 0.01, 0.01],
         [0.01, 0.98, 0.01],
         [0.01, 0.01, 0.98]], _F32))


@struct.dataclass
class MixedParams:
    """All engine parameters: K-regime switching drift/vol + GARCH(1,1) + Merton jumps.

    drift, vol: ``[K]`` per-regime mean log return and volatility per bar.
    transition: ``[K, K]`` row-stochastic matrix (rows are renormalised); the first regime is drawn
    from its stationary distribution.
    garch_alpha, garch_beta: GARCH(1,1) multiplier coefficients (``alpha + beta < 1``).
    jump_intensity, jump_mean, jump_vol: expected jumps per bar, jump log-size mean and std.
    s0: first open; gap_vol: std of the log gap between a close and the next open;
    volume_base, volume_vol: mean volume per bar and the std of its log noise.
    """

    drift: jax.Array = _f32(0.002, -0.002, 0.0)
    vol: jax.Array = _f32(0.012, 0.018, 0.010)
    transition: jax.Array = _default_transition()
    garch_alpha: float = 0.05
    garch_beta: float = 0.90
    jump_intensity: float = 0.02
    jump_mean: float = -0.01
    jump_vol: float = 0.03
    s0: float = 100.0
    gap_vol: float = 0.0
    volume_base: float = 1e6
    volume_vol: float = 0.3

    def to_mixed(self) -> MixedParams:
        return self


@struct.dataclass
class GBMParams:
    """Geometric Brownian motion: constant ``drift`` and ``vol`` per bar (one regime)."""

    drift: float = 2e-4
    vol: float = 0.015
    s0: float = 100.0
    gap_vol: float = 0.0
    volume_base: float = 1e6
    volume_vol: float = 0.3

    def to_mixed(self) -> MixedParams:
        return _single_regime(self, self.drift, self.vol, 0.0, 0.0, 0.0, 0.0, 0.0)


@struct.dataclass
class RegimeParams:
    """Markov regime switching drift/vol; defaults: bull, bear, sideways, mean duration 50 bars."""

    drift: jax.Array = _f32(0.002, -0.002, 0.0)
    vol: jax.Array = _f32(0.012, 0.018, 0.010)
    transition: jax.Array = _default_transition()
    s0: float = 100.0
    gap_vol: float = 0.0
    volume_base: float = 1e6
    volume_vol: float = 0.3

    def to_mixed(self) -> MixedParams:
        return MixedParams(drift=self.drift, vol=self.vol, transition=self.transition,
                           garch_alpha=0.0, garch_beta=0.0, jump_intensity=0.0, jump_mean=0.0,
                           jump_vol=0.0, s0=self.s0, gap_vol=self.gap_vol,
                           volume_base=self.volume_base, volume_vol=self.volume_vol)


@struct.dataclass
class GARCHParams:
    """GARCH(1,1) returns: ``var_{t+1} = omega + alpha * eps_t**2 + beta * var_t``.

    eps_t is the bar's diffusive shock; the process starts at the unconditional variance
    ``omega / (1 - alpha - beta)`` (default 1.5% per bar); requires ``alpha + beta < 1``.
    """

    drift: float = 2e-4
    omega: float = 4.5e-6
    alpha: float = 0.08
    beta: float = 0.90
    s0: float = 100.0
    gap_vol: float = 0.0
    volume_base: float = 1e6
    volume_vol: float = 0.3

    def to_mixed(self) -> MixedParams:
        vol = jnp.sqrt(self.omega / (1.0 - self.alpha - self.beta))
        return _single_regime(self, self.drift, vol, self.alpha, self.beta, 0.0, 0.0, 0.0)


@struct.dataclass
class MertonParams:
    """Merton jump diffusion: GBM plus compound Poisson jumps in log price."""

    drift: float = 2e-4
    vol: float = 0.012
    jump_intensity: float = 0.05
    jump_mean: float = -0.01
    jump_vol: float = 0.04
    s0: float = 100.0
    gap_vol: float = 0.0
    volume_base: float = 1e6
    volume_vol: float = 0.3

    def to_mixed(self) -> MixedParams:
        return _single_regime(self, self.drift, self.vol, 0.0, 0.0, self.jump_intensity,
                              self.jump_mean, self.jump_vol)


def _single_regime(p: Any, drift, vol, alpha, beta, lam, jmean, jvol) -> MixedParams:
    return MixedParams(
        drift=jnp.reshape(jnp.asarray(drift, _F32), (1,)),
        vol=jnp.reshape(jnp.asarray(vol, _F32), (1,)),
        transition=jnp.ones((1, 1), _F32), garch_alpha=alpha, garch_beta=beta,
        jump_intensity=lam, jump_mean=jmean, jump_vol=jvol, s0=p.s0, gap_vol=p.gap_vol,
        volume_base=p.volume_base, volume_vol=p.volume_vol)


PARAMS_BY_KIND: dict[str, type] = {
    "gbm": GBMParams,
    "regime": RegimeParams,
    "garch": GARCHParams,
    "merton": MertonParams,
    "mixed": MixedParams,
}


def _check_key(key: jax.Array) -> None:
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError("synthetic generators need a typed key from jax.random.key(seed), "
                        f"got an array of dtype {key.dtype}")


def _random_block(key: jax.Array, n_normal: int, n_uniform: int) -> tuple[jax.Array, jax.Array]:
    """``n_normal`` standard normals and ``n_uniform`` uniforms on (0, 1) from one flat draw.

    One 1-D threefry draw instead of one per variable: with jax's default partitionable threefry
    every draw (and a multi-dimensional one most) adds about a second of CPU compile time. Normals
    are made as in ``jax.random.normal`` (sqrt(2) * erfinv of a uniform on (-1, 1)).
    """
    lo = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))
    x = jax.random.uniform(key, (n_normal + n_uniform,), _F32, minval=lo, maxval=1.0)
    normals = math.sqrt(2.0) * jax.lax.erf_inv(x[:n_normal])
    return normals, 0.5 * (x[n_normal:] + 1.0)


def _draw(u: jax.Array, cdf: jax.Array) -> jax.Array:
    """Inverse-CDF categorical draw: index of the first cdf entry >= u (last index at most)."""
    k = cdf.shape[-1]
    return jnp.minimum(jnp.sum(u[..., None] > cdf, axis=-1), k - 1).astype(jnp.int32)


def _stationary(trans: jax.Array) -> jax.Array:
    """Stationary distribution of a row-stochastic matrix by repeated squaring (2**10 steps)."""
    k = trans.shape[0]
    pi = (jnp.full((1, k), 1.0 / k, _F32) @ jnp.linalg.matrix_power(trans, 1024))[0]
    return pi / jnp.sum(pi)


def _poisson(u: jax.Array, lam: jax.Array) -> jax.Array:
    """Poisson(lam) counts from uniforms ``u`` by inverse CDF, capped at ``_MAX_JUMPS - 1``.

    Cheap with a traced lam (``jax.random.poisson`` runs a while loop per draw then)."""
    ks = jnp.arange(_MAX_JUMPS, dtype=_F32)
    log_pmf = ks * jnp.log(jnp.maximum(lam, 1e-30)) - lam - jax.lax.lgamma(ks + 1.0)
    cdf = jnp.cumsum(jnp.where(lam > 0, jnp.exp(log_pmf), (ks == 0).astype(_F32)))
    return jnp.sum(u[..., None] > cdf, axis=-1).astype(_F32)


def simulate(key: jax.Array, params: Any, n_paths: int, n_bars: int,
             substeps: int = DEFAULT_SUBSTEPS, symbol_id: int | jax.Array = 0,
             vol_span: int = DEFAULT_VOL_SPAN) -> MarketData:
    """Simulate ``[n_paths, n_bars]`` OHLCV bars from any params struct (``.to_mixed()``).

    The kind's structure is static: a params struct without ``jump_intensity`` (GBM, regime,
    GARCH) draws no jump variates and keeps no intrabar path (``MarketData.n_intrabar`` 0: a
    stop crossed by a continuous move fills at its level, the path changes nothing), and one
    with a single regime and no GARCH coefficients (GBM, Merton) runs no regime/variance
    recursion over the bars."""
    _check_key(key)
    p = jax.tree.map(lambda x: jnp.asarray(x, _F32), params.to_mixed())  # no weak-type retraces
    jumps = hasattr(params, "jump_intensity")
    chain = jnp.size(p.drift) > 1 or isinstance(params, (GARCHParams, MixedParams))
    return _simulate(key, p, symbol_id, n_paths=n_paths, n_bars=n_bars,
                     substeps=substeps, vol_span=vol_span, jumps=jumps, chain=chain)


@functools.partial(jax.jit, static_argnames=("n_paths", "n_bars", "substeps", "vol_span",
                                             "jumps", "chain"))
def _simulate(key, p: MixedParams, symbol_id, *, n_paths: int, n_bars: int, substeps: int,
              vol_span: int, jumps: bool = True, chain: bool = True) -> MarketData:
    m = substeps
    drift = jnp.reshape(jnp.asarray(p.drift, _F32), (-1,))
    vol = jnp.reshape(jnp.asarray(p.vol, _F32), (-1,))
    k = drift.shape[0]
    trans = jnp.reshape(jnp.asarray(p.transition, _F32), (k, k))
    trans = trans / jnp.sum(trans, axis=-1, keepdims=True)
    a = jnp.asarray(p.garch_alpha, _F32)
    b = jnp.asarray(p.garch_beta, _F32)

    cells = n_paths * n_bars
    n_z = 2 * m + 2 if jumps else m + 2            # diffusion, [jump sizes,] gap, volume
    n_u = n_paths * (n_bars + 1 + (n_bars * m if jumps else 0))
    normals, uniforms = _random_block(key, cells * n_z, n_u)
    normals = normals.reshape(n_paths, n_bars, n_z)
    z = normals[..., :m]
    gap_z, vol_z = normals[..., n_z - 2], normals[..., n_z - 1]
    u = uniforms[:n_paths * (n_bars + 1)].reshape(n_bars + 1, n_paths)
    z_bar = jnp.sum(z, axis=-1) / math.sqrt(m)  # standardised diffusive shock per bar

    if chain:
        regime, h = _regime_and_variance(u, z_bar, trans, a, b)
    else:                           # one regime, constant variance: nothing to recurse
        regime = jnp.zeros((n_paths, n_bars), jnp.int32)
        h = jnp.ones((n_paths, n_bars), _F32)

    mu = drift[regime]
    sigma = vol[regime] * jnp.sqrt(h)
    incr = (mu / m)[..., None] + (sigma / math.sqrt(m))[..., None] * z

    if jumps:
        jump_z = normals[..., m:2 * m]
        u_jump = uniforms[n_paths * (n_bars + 1):].reshape(n_paths, n_bars, m)
        lam = jnp.asarray(p.jump_intensity, _F32) / m
        n_jumps = _poisson(u_jump, lam)
        incr = incr + n_jumps * p.jump_mean + jnp.sqrt(n_jumps) * p.jump_vol * jump_z
    else:
        n_jumps = jnp.zeros_like(incr)

    open_, high, low, close, intrabar = _ohlc(incr, p.gap_vol * gap_z, p.s0)
    if jumps:
        intrabar_jump = n_jumps > 0
    else:   # every move is continuous: a stop fills at its level, so no path need be kept
        intrabar, intrabar_jump = jnp.zeros((n_paths, n_bars, 0), _F32), None

    vv = jnp.asarray(p.volume_vol, _F32)
    noise = jnp.exp(vv * vol_z - 0.5 * vv * vv)
    volume = p.volume_base * noise * (1.0 + jnp.abs(z_bar)) / _MEAN_1_ABS_Z

    trend = jnp.sign(drift)[regime]
    sym = jnp.broadcast_to(jnp.asarray(symbol_id, jnp.int32), (n_paths,))
    return make_market_data(open_, high, low, close, volume=volume, regime=regime, trend=trend,
                            symbol_id=sym, vol_span=vol_span, intrabar=intrabar,
                            intrabar_jump=intrabar_jump)


def _regime_and_variance(u: jax.Array, z_bar: jax.Array, trans: jax.Array, a: jax.Array,
                         b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Regime chain and GARCH multiplier ``[n_paths, n_bars]``: one scan over bars (time-major);
    ``u`` is ``[n_bars + 1, n_paths]`` uniforms (row 0 draws the first regime)."""
    s_init = _draw(u[0], jnp.cumsum(_stationary(trans)))
    cdf = jnp.cumsum(trans, axis=-1)

    def step(carry, x):
        s, h = carry
        u_next, z_t = x
        s_next = _draw(u_next, cdf[s])
        h_next = (1.0 - a - b) + (a * z_t * z_t + b) * h
        return (s_next, h_next), (s, h)

    n_paths = z_bar.shape[0]
    _, (s_tm, h_tm) = jax.lax.scan(step, (s_init, jnp.ones((n_paths,), _F32)), (u[1:], z_bar.T))
    return s_tm.T, h_tm.T


def _ohlc(incr: jax.Array, gap: jax.Array, s0: jax.Array):
    """(open, high, low, close, intrabar points) from intrabar log increments ``[.., m]`` and
    log gaps ``[n_paths, n_bars]`` (bar 0 opens at exactly ``s0``, without a gap)."""
    n_paths = incr.shape[0]
    gap = gap.at[:, 0].set(0.0)
    path = jnp.cumsum(incr, axis=-1)  # intrabar log move from the open, [.., m]
    log_s0 = jnp.log(jnp.asarray(s0, _F32))
    log_close = log_s0 + jnp.cumsum(gap + path[..., -1], axis=-1)
    prev_close = jnp.concatenate([jnp.full((n_paths, 1), log_s0), log_close[:, :-1]], axis=-1)
    log_open = prev_close + gap

    open_ = jnp.exp(log_open).at[:, 0].set(s0)  # exactly s0, not exp(log(s0))
    close = jnp.exp(log_close)
    inner = jnp.exp(log_open[..., None] + path[..., :-1])  # intrabar points before the last
    high = jnp.maximum(jnp.maximum(open_, close), jnp.max(inner, axis=-1, initial=-jnp.inf))
    low = jnp.minimum(jnp.minimum(open_, close), jnp.min(inner, axis=-1, initial=jnp.inf))
    intrabar = jnp.concatenate([inner, close[..., None]], axis=-1)  # last point = close
    return open_, high, low, close, intrabar


def gbm(key: jax.Array, n_paths: int, n_bars: int, params: GBMParams | None = None, *,
        substeps: int = DEFAULT_SUBSTEPS, symbol_id: int | jax.Array = 0) -> MarketData:
    """Geometric Brownian motion bars (regime 0, trend = sign(drift))."""
    params = GBMParams() if params is None else params
    return simulate(key, params, n_paths, n_bars, substeps, symbol_id)


def regime_switching(key: jax.Array, n_paths: int, n_bars: int,
                     params: RegimeParams | None = None, *, substeps: int = DEFAULT_SUBSTEPS,
                     symbol_id: int | jax.Array = 0) -> MarketData:
    """Markov regime-switching bars; ``regime`` holds the labels, ``trend`` their drift sign."""
    params = RegimeParams() if params is None else params
    return simulate(key, params, n_paths, n_bars, substeps, symbol_id)


def garch(key: jax.Array, n_paths: int, n_bars: int, params: GARCHParams | None = None, *,
          substeps: int = DEFAULT_SUBSTEPS, symbol_id: int | jax.Array = 0) -> MarketData:
    """GARCH(1,1) bars (volatility clustering)."""
    params = GARCHParams() if params is None else params
    return simulate(key, params, n_paths, n_bars, substeps, symbol_id)


def merton(key: jax.Array, n_paths: int, n_bars: int, params: MertonParams | None = None, *,
           substeps: int = DEFAULT_SUBSTEPS, symbol_id: int | jax.Array = 0) -> MarketData:
    """Merton jump-diffusion bars (fat tails)."""
    params = MertonParams() if params is None else params
    return simulate(key, params, n_paths, n_bars, substeps, symbol_id)


def mixed(key: jax.Array, n_paths: int, n_bars: int, params: MixedParams | None = None, *,
          substeps: int = DEFAULT_SUBSTEPS, symbol_id: int | jax.Array = 0) -> MarketData:
    """Regime switching + GARCH(1,1) + Merton jumps in one path."""
    params = MixedParams() if params is None else params
    return simulate(key, params, n_paths, n_bars, substeps, symbol_id)


def make_params(kind: str, **params: Any) -> Any:
    """Params struct of ``kind`` (gbm, regime, garch, merton, mixed) with overrides."""
    try:
        cls = PARAMS_BY_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown market kind {kind!r}; known: {sorted(PARAMS_BY_KIND)}") from None
    names = {f for f in cls.__dataclass_fields__}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no parameter(s) {unknown}; known: {sorted(names)}")
    arrays = {"drift", "vol", "transition"} if cls in (RegimeParams, MixedParams) else set()
    fixed = {k: (jnp.asarray(v, _F32) if k in arrays else v) for k, v in params.items()}
    return cls(**fixed)


def generate(kind: str, key: jax.Array, n_paths: int, n_bars: int, *,
             substeps: int = DEFAULT_SUBSTEPS, symbol_id: int | jax.Array = 0,
             **params: Any) -> MarketData:
    """Generate ``kind`` bars; ``params`` override that kind's defaults (e.g. ``vol=0.02``)."""
    return simulate(key, make_params(kind, **params), n_paths, n_bars, substeps, symbol_id)
