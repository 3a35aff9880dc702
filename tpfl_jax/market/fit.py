"""Training sources fitted to a real training window, and the stylised facts that compare them.

``market.train_source`` (what PPO trains on in a walk-forward cycle; deployment is always the
real bars that follow):

* ``replay``: the window's real bars (episodes start anywhere in it);
* ``bootstrap``: a stationary block bootstrap (Politis & Romano 1994) of the window's bars, on
  device: blocks start at uniform bars of the window and have geometric lengths of mean
  ``block_len`` bars (wrapping around the window's end). A bar is resampled as its moves relative
  to the previous close (gap, high, low, close, volume), so resampled bars chain into one path;
* ``regime_fit``: a Gaussian hidden Markov model (``hmmlearn``'s EM, ``n_states`` states) fitted
  to the window's log close-to-close returns, on the host, once per window; its state means,
  standard deviations and transition matrix become ``synthetic.RegimeParams``;
* ``garch_fit``: ``arch``'s GARCH(1,1) with a constant mean and normal shocks, fitted the same
  way; it becomes ``synthetic.GARCHParams`` (same recursion: ``var' = omega + alpha eps^2 +
  beta var``);
* ``regime_garch`` (a mixture of the two): the HMM's regimes, and a GARCH(1,1) fitted to the
  returns standardised by their Viterbi state's drift and vol, as the unit-mean variance
  multiplier of ``synthetic.MixedParams`` (no jumps);
* a mixture of sources ``a+b[+c]`` of ``bootstrap``, ``regime_fit``, ``garch_fit``: equal
  shares of every update's paths (path i from part ``i % parts``).

Fitted paths come from ``synthetic.simulate`` (the traced generator of the synthetic markets),
open at the window's last close, without gaps (``gap_vol = 0``), with the window's mean volume,
and are drawn fresh before every PPO update (``market.stream.PathStream``). Parameters are per
bar of the series' own frequency.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax.market import synthetic
from tpfl_jax.market.types import MarketData, make_market_data
from tpfl_jax.rundir import save_figure

TRAIN_SOURCES = ("replay", "bootstrap", "regime_fit", "garch_fit", "regime_garch")
FITTED = ("regime_fit", "garch_fit", "regime_garch")
_MIXABLE = ("bootstrap", "regime_fit", "garch_fit")   # same MarketData structure (no intrabar)


def source_parts(kind: str) -> tuple[str, ...]:
    """The sources of a training source: ``(kind,)``, or the parts of a mixture ``a+b[+c]``
    (equal shares of paths) of distinct ``bootstrap``, ``regime_fit``, ``garch_fit``; a
    ``ValueError`` says what is expected."""
    parts = tuple(str(kind).split("+"))
    if len(parts) == 1 and parts[0] in TRAIN_SOURCES:
        return parts
    if len(parts) > 1 and len(set(parts)) == len(parts) and set(parts) <= set(_MIXABLE):
        return parts
    raise ValueError(f"train_source = {kind!r}; expected one of {list(TRAIN_SOURCES)} or a "
                     f"mixture of distinct {list(_MIXABLE)} joined by '+' (e.g. "
                     "'bootstrap+regime_fit')")
_F32 = jnp.float32


# ----------------------------------------------------------------------------- host fits
def log_returns(close: np.ndarray) -> np.ndarray:
    """Log close-to-close returns of a 1-D close series (float64)."""
    c = np.asarray(close, np.float64)
    return np.diff(np.log(c))


def fit_regime(returns: np.ndarray, n_states: int = 2, n_iter: int = 100, seed: int = 0,
               restarts: int = 3) -> dict[str, np.ndarray]:
    """Gaussian HMM by EM (``hmmlearn``), best of ``restarts`` seeds: ``drift [K]``, ``vol [K]``
    (per bar), ``transition [K, K]``, ``loglik``, ``states`` (the Viterbi path). States are
    sorted by drift, highest first."""
    from hmmlearn.hmm import GaussianHMM  # optional heavy dependency (the `real` extra)

    x = np.asarray(returns, np.float64).reshape(-1, 1)
    scale = float(np.std(x)) or 1.0
    z = x / scale
    best, best_ll = None, -np.inf
    for r in range(restarts):
        model = _hmm_start(GaussianHMM, z, n_states, n_iter, seed + r)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # hmmlearn warns on non-monotone EM steps
            model.fit(z)
            ll = model.score(z)
        if np.isfinite(ll) and ll > best_ll:
            best, best_ll = model, ll
    if best is None:
        raise ValueError("fit_regime: EM did not converge to a finite likelihood")
    mean = best.means_[:, 0] * scale
    vol = np.sqrt(best.covars_[:, 0, 0]) * scale
    order = np.argsort(-mean)
    trans = best.transmat_[np.ix_(order, order)]
    rank = np.empty(n_states, int)
    rank[order] = np.arange(n_states)
    return {"drift": mean[order], "vol": vol[order],
            "transition": trans / trans.sum(1, keepdims=True),
            "states": rank[best.predict(z)],
            "loglik": np.float64(best_ll - len(x) * math.log(scale))}


def _hmm_start(cls: type, z: np.ndarray, k: int, n_iter: int, seed: int) -> Any:
    """A ``GaussianHMM`` with a seeded start: means at the quantiles of ``z`` (shrunk to 0),
    variances spread over 0.3x..3x, sticky transitions (0.9). No k-means: sklearn's threaded
    k-means dominates the fit's time on a busy CPU."""
    rng = np.random.default_rng(seed)
    q = np.quantile(z[:, 0], (np.arange(k) + 0.5) / k)
    model = cls(n_components=k, covariance_type="diag", n_iter=n_iter, tol=1e-4,
                min_covar=1e-6, init_params="", random_state=seed)
    model.startprob_ = np.full(k, 1.0 / k)
    stay = 0.9 if k > 1 else 1.0
    model.transmat_ = np.full((k, k), (1 - stay) / max(k - 1, 1)) + np.eye(k) * (
        stay - (1 - stay) / max(k - 1, 1))
    model.means_ = (0.3 * q + 0.1 * rng.standard_normal(k))[:, None]
    spread = np.geomspace(0.3, 3.0, k) if k > 1 else np.ones(1)
    model.covars_ = (np.var(z) * spread * np.exp(0.2 * rng.standard_normal(k)))[:, None]
    return model


def fit_garch(returns: np.ndarray) -> dict[str, float]:
    """GARCH(1,1), constant mean, normal shocks (``arch``): ``drift``, ``omega``, ``alpha``,
    ``beta`` per bar of log return (``alpha + beta`` capped at 0.999), ``loglik``."""
    from arch import arch_model  # optional heavy dependency (the `real` extra)

    x = np.asarray(returns, np.float64)
    scale = 1.0 / (float(np.std(x)) or 1.0)          # fit on unit-variance returns
    res = arch_model(x * scale, mean="Constant", vol="GARCH", p=1, q=1, dist="normal",
                     rescale=False).fit(disp="off", show_warning=False)
    p = res.params
    alpha, beta = max(float(p["alpha[1]"]), 0.0), max(float(p["beta[1]"]), 0.0)
    if alpha + beta > 0.999:
        alpha, beta = alpha * 0.999 / (alpha + beta), beta * 0.999 / (alpha + beta)
    return {"drift": float(p["mu"]) / scale, "omega": float(p["omega"]) / scale ** 2,
            "alpha": alpha, "beta": beta, "loglik": float(res.loglikelihood) + len(x)
            * math.log(scale)}


def _window_params(kind: str, close: np.ndarray, volume: np.ndarray, n_states: int,
                   n_iter: int, seed: int) -> dict[str, Any]:
    """The generator parameters fitted to one training window's bars."""
    r = log_returns(close)
    base = {"s0": float(close[-1]), "gap_vol": 0.0, "volume_base": float(np.mean(volume)),
            "volume_vol": 0.3}
    if kind == "regime_fit":
        f = fit_regime(r, n_states, n_iter, seed)
        return base | {k: f[k] for k in ("drift", "vol", "transition")}
    if kind == "garch_fit":
        f = fit_garch(r)
        return base | {k: f[k] for k in ("drift", "omega", "alpha", "beta")}
    if kind == "regime_garch":
        f = fit_regime(r, n_states, n_iter, seed)
        g = fit_garch((r - f["drift"][f["states"]]) / f["vol"][f["states"]])
        return base | {k: f[k] for k in ("drift", "vol", "transition")} | {
            "garch_alpha": g["alpha"], "garch_beta": g["beta"], "jump_intensity": 0.0,
            "jump_mean": 0.0, "jump_vol": 0.0}
    raise ValueError(f"unknown fitted source {kind!r}; expected one of {FITTED}")


def fit_windows(kind: str, close: np.ndarray, volume: np.ndarray, rows: np.ndarray,
                starts: np.ndarray, train_bars: int, n_states: int = 2, n_iter: int = 100,
                seed: int = 0) -> Any:
    """Fit ``kind`` to every training window (``rows``/``starts`` ``[C, S]`` into ``close`` /
    ``volume`` ``[N, L]``; each distinct window once) and stack the params ``[C, S, ...]``
    (``RegimeParams`` or ``GARCHParams`` with float32 leaves)."""
    cache: dict[tuple[int, int], dict[str, Any]] = {}
    per = []
    for r, s in zip(np.ravel(rows), np.ravel(starts), strict=True):
        key = (int(r), int(s))
        if key not in cache:
            sl = slice(key[1], key[1] + train_bars)
            cache[key] = _window_params(kind, close[key[0], sl], volume[key[0], sl], n_states,
                                        n_iter, seed)
        per.append(cache[key])
    shape = np.shape(rows)
    stacked = {k: np.asarray([p[k] for p in per], np.float32).reshape(*shape,
                                                                      *np.shape(per[0][k]))
               for k in per[0]}
    cls = {"regime_fit": synthetic.RegimeParams, "garch_fit": synthetic.GARCHParams,
           "regime_garch": synthetic.MixedParams}[kind]
    return cls(**{k: jnp.asarray(v) for k, v in stacked.items()})


def fitted_frame(kind: str, fitted: Any, symbols: list[str] | tuple[str, ...],
                 rows: np.ndarray) -> pd.DataFrame:
    """One row per cycle, slot (and regime state): symbol and the fitted parameters."""
    f = jax.device_get(fitted)
    out = []
    for c, s in np.ndindex(*np.shape(rows)):
        base = {"cycle": c, "slot": s, "symbol": symbols[int(rows[c, s])],
                "s0": float(f.s0[c, s]), "volume_base": float(f.volume_base[c, s])}
        if kind in ("regime_fit", "regime_garch"):
            if kind == "regime_garch":
                base |= {"garch_alpha": float(f.garch_alpha[c, s]),
                         "garch_beta": float(f.garch_beta[c, s])}
            for j in range(f.drift.shape[-1]):
                out.append(base | {"state": j, "drift": float(f.drift[c, s, j]),
                                   "vol": float(f.vol[c, s, j]),
                                   "p_stay": float(f.transition[c, s, j, j]),
                                   "mean_duration": 1.0 / max(1e-9, 1.0 - float(
                                       f.transition[c, s, j, j]))})
        else:
            a, b, om = (float(x[c, s]) for x in (f.alpha, f.beta, f.omega))
            out.append(base | {"drift": float(f.drift[c, s]), "omega": om, "alpha": a,
                               "beta": b, "uncond_vol": math.sqrt(om / max(1e-12, 1 - a - b))})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- device paths
def _split_slots(key: jax.Array, n_slots: int, n_paths: int) -> tuple[jax.Array, int]:
    return jax.random.split(key, n_slots), -(-n_paths // n_slots)


def _interleave(md: MarketData, n_paths: int) -> MarketData:
    """``[S, P, ...]`` -> ``[P * S, ...]`` with path i from slot ``i % S``; the first n."""
    def f(x):
        x = jnp.swapaxes(x, 0, 1)
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])[:n_paths]
    return jax.tree.map(f, md)


def simulate_slots(key: jax.Array, params: Any, symbol_id: jax.Array, n_paths: int,
                   n_bars: int, substeps: int) -> MarketData:
    """``n_paths`` paths from params with a leading slot axis ``[S]``; path i uses slot
    ``i % S`` (round-robin over the slots, so over the cycle's active series)."""
    n_slots = symbol_id.shape[0]
    keys, per = _split_slots(key, n_slots, n_paths)
    md = jax.vmap(lambda k, p, s: synthetic.simulate(k, p, per, n_bars, substeps, s))(
        keys, params, symbol_id)
    return _interleave(md, n_paths)


def block_bootstrap(key: jax.Array, market: MarketData, n_paths: int, n_bars: int,
                    block_len: float) -> MarketData:
    """Stationary block bootstrap of each path of ``market`` ``[S, T]`` (module docstring):
    ``n_paths`` paths of ``n_bars`` bars, path i resampling window ``i % S``."""
    n_slots, t = market.close.shape
    keys, per = _split_slots(key, n_slots, n_paths)

    def one(k, o, h, lo, c, v, sym):
        prev = jnp.concatenate([c[:1], c[:-1]])
        moves = jnp.stack([jnp.log(o / prev), jnp.log(h / o), jnp.log(lo / o), jnp.log(c / o),
                           v], axis=-1)[1:]                   # bar j >= 1 relative to close j-1
        k_new, k_start = jax.random.split(k)
        new = jax.random.uniform(k_new, (per, n_bars)) < 1.0 / block_len
        new = new.at[:, 0].set(True)
        starts = jax.random.randint(k_start, (per, n_bars), 0, t - 1)
        pos = jnp.arange(n_bars)
        last = jax.lax.cummax(jnp.where(new, pos, 0), axis=1)          # current block's start
        start_of = jnp.take_along_axis(starts, last, axis=1)
        idx = (start_of + pos - last) % (t - 1)
        m = moves[idx]                                                  # [per, n_bars, 5]
        log_c = jnp.log(c[-1]) + jnp.cumsum(m[..., 0] + m[..., 3], axis=1)
        log_o = log_c - m[..., 3]
        open_, close = jnp.exp(log_o), jnp.exp(log_c)
        high = jnp.maximum(jnp.exp(log_o + m[..., 1]), jnp.maximum(open_, close))
        low = jnp.minimum(jnp.exp(log_o + m[..., 2]), jnp.minimum(open_, close))
        return open_, high, low, close, m[..., 4], jnp.full((per,), sym, jnp.int32)

    o, h, lo, c, v, sym = jax.vmap(one)(keys, market.open, market.high, market.low,
                                        market.close, market.volume, market.symbol_id)
    flat = [jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])[:n_paths] for x in (o, h, lo, c, v,
                                                                                 sym)]
    return make_market_data(*flat[:4], volume=flat[4], symbol_id=flat[5])


@dataclass(frozen=True)
class FittedGenerator:
    """The ``PathStream`` generator of a fitted ``kind`` (hashable). Its traced source is
    ``(params [S], symbol_id [S])`` for ``regime_fit`` / ``garch_fit`` / ``regime_garch``, the
    cycle's training windows (``MarketData [S, T]``) for ``bootstrap``, and a tuple of those,
    one per part, for a mixture."""

    kind: str
    substeps: int = 8
    block_len: float = 20.0

    def __call__(self, key: jax.Array, source: Any, n_paths: int, n_bars: int) -> MarketData:
        parts = source_parts(self.kind)
        if len(parts) > 1:          # a mixture: source is one source per part
            per = -(-n_paths // len(parts))
            keys = jax.random.split(key, len(parts))
            mds = [FittedGenerator(p, self.substeps, self.block_len)(k, src, per, n_bars)
                   for p, k, src in zip(parts, keys, source, strict=True)]
            return _interleave(jax.tree.map(lambda *x: jnp.stack(x), *mds), n_paths)
        if self.kind == "bootstrap":
            return block_bootstrap(key, source, n_paths, n_bars, self.block_len)
        params, symbol_id = source
        return simulate_slots(key, params, symbol_id, n_paths, n_bars, self.substeps)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def generate(gen: FittedGenerator, key: jax.Array, source: Any, n_paths: int,
             n_bars: int) -> MarketData:
    """``gen(key, source, n_paths, n_bars)`` compiled once per generator and shape."""
    return gen(key, source, n_paths, n_bars)


# ----------------------------------------------------------------------------- stylised facts
def _runs(signs: np.ndarray) -> np.ndarray:
    """Lengths of the runs of equal nonzero signs along each row."""
    out = []
    for row in np.atleast_2d(signs):
        row = row[row != 0]
        if row.size:
            cuts = np.flatnonzero(np.diff(row)) + 1
            out.append(np.diff(np.concatenate([[0], cuts, [row.size]])))
    return np.concatenate(out) if out else np.zeros(0, int)


def _acf_abs(r: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation of |r| at lags 1..max_lag, pooled over rows (each row demeaned)."""
    a = np.abs(np.atleast_2d(r))
    a = a - a.mean(axis=1, keepdims=True)
    den = float((a * a).sum()) or 1.0
    return np.array([float((a[:, k:] * a[:, :-k]).sum()) / den for k in range(1, max_lag + 1)])


def _facts(r: np.ndarray, max_lag: int) -> dict[str, float]:
    r = np.atleast_2d(r)
    flat = r.ravel()
    z = (flat - flat.mean()) / (flat.std() or 1.0)
    runs = _runs(np.sign(r))
    facts = {"vol": float(r.std(axis=1).mean()), "kurtosis": float(np.mean(z ** 4) - 3.0),
             "mean_run": float(runs.mean()) if runs.size else float("nan")}
    facts |= {f"acf_abs_{k}": v for k, v in enumerate(_acf_abs(r, max_lag), start=1)}
    for n in (1, 2, 3, 4):
        facts[f"run_{n}"] = float(np.mean(runs == n)) if runs.size else float("nan")
    facts["run_5+"] = float(np.mean(runs >= 5)) if runs.size else float("nan")
    return facts


def stylised_facts(real: MarketData | np.ndarray, generated: MarketData | np.ndarray,
                   max_lag: int = 20) -> pd.DataFrame:
    """Real window(s) against generated paths, from log close-to-close returns: volatility
    (mean per-path std), excess kurtosis, autocorrelation of |r| at lags 1..``max_lag``, mean
    run length of the return sign and the share of runs of length 1, 2, 3, 4, 5+. Index:
    the fact; columns ``real``, ``generated``. Arrays are closes ``[paths, bars]``."""
    def rets(x):
        c = np.asarray(x.close if isinstance(x, MarketData) else x, np.float64)
        return np.diff(np.log(np.atleast_2d(c)), axis=1)

    a, b = _facts(rets(real), max_lag), _facts(rets(generated), max_lag)
    return pd.DataFrame({"real": a, "generated": b}).rename_axis("fact")


def plot_stylised_facts(table: pd.DataFrame, path: str, title: str = "") -> None:
    """Figure of :func:`stylised_facts`' table: |r| autocorrelation by lag and the sign-run
    length distribution, real against generated (written to ``path`` atomically)."""
    import matplotlib  # optional-heavy plotting dependency, imported only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # same optional dependency

    lags = [i for i in table.index if i.startswith("acf_abs_")]
    runs = [i for i in table.index if i.startswith("run_")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for col, style in (("real", "-o"), ("generated", "--s")):
        ax1.plot(range(1, len(lags) + 1), table.loc[lags, col], style, label=col, ms=3)
    ax1.set(xlabel="lag (bars)", ylabel="acf of |r|", title="volatility clustering")
    x = np.arange(len(runs))
    ax2.bar(x - 0.2, table.loc[runs, "real"], 0.4, label="real")
    ax2.bar(x + 0.2, table.loc[runs, "generated"], 0.4, label="generated")
    ax2.set_xticks(x, [r.removeprefix("run_") for r in runs])
    ax2.set(xlabel="sign run length (bars)", ylabel="share of runs", title="return sign runs")
    ax1.legend()
    fig.suptitle(title or (f"vol real {table.loc['vol', 'real']:.4f} / generated "
                           f"{table.loc['vol', 'generated']:.4f}; kurtosis "
                           f"{table.loc['kurtosis', 'real']:.1f} / "
                           f"{table.loc['kurtosis', 'generated']:.1f}"))
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)       # written under a temporary name and renamed
    finally:
        plt.close(fig)


__all__ = ["FITTED", "TRAIN_SOURCES", "FittedGenerator", "block_bootstrap", "fit_garch",
           "fit_regime", "fit_windows", "fitted_frame", "generate", "log_returns",
           "plot_stylised_facts", "simulate_slots", "source_parts", "stylised_facts"]
