"""Where a training job's data come from: fresh synthetic paths or walk-forward windows of a data
set. A spec is static (frozen, hashable); its traced *source* argument is the generator's params
(synthetic) or the data set's ``MarketData`` (walk-forward), so new parameters or new data of
the same shape never recompile.

``cycle_markets(source, key, cycle) -> (train, deploy)``: cycle ``cycle``'s training market and
its held-out deployment market (never overlapping the bars trained on). ``stream(env, ...)``:
the PPO data stream that replaces the training paths before every update (synthetic markets with
``fresh``, a panel with a fitted ``train_source``), or None (a data set replayed: episodes start
anywhere in the training span). ``train_source(source, cycle)``: the stream's traced source in
cycle ``cycle`` (what ``DataStream.start`` takes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from tpfl_jax.market import synthetic
from tpfl_jax.market.fit import FITTED, FittedGenerator, generate, source_parts
from tpfl_jax.market.panel import PanelSource, gather_windows
from tpfl_jax.market.stream import PathStream, SyntheticGenerator
from tpfl_jax.market.types import MarketData


@dataclass(frozen=True)
class SyntheticMarkets:
    """Synthetic ``kind`` paths (``tpfl_jax.market.synthetic``) of ``n_bars`` bars.

    ``fresh`` (default): every PPO update trains on newly generated paths
    (``market.stream.PathStream``; no bar is seen twice); ``train_paths`` paths per cycle are then
    only the training sample the reference rules choose their parameters on. ``fresh=False``:
    a fixed set of ``train_paths`` paths per cycle (repeated ``steps / bars`` times).
    ``deploy_paths``: independent held-out paths per cycle."""

    kind: str = "regime"
    train_paths: int = 64
    deploy_paths: int = 64
    n_bars: int = 300
    substeps: int = 8
    fresh: bool = True

    def source(self, **params: Any) -> Any:
        """The traced source argument: the generator params of ``kind`` with overrides."""
        return synthetic.make_params(self.kind, **params)

    def cycle_markets(self, arg: Any, key: jax.Array, cycle: jax.Array
                      ) -> tuple[MarketData, MarketData]:
        k_tr, k_dep = jax.random.split(jax.random.fold_in(key, cycle))
        train = synthetic.simulate(k_tr, arg, self.train_paths, self.n_bars, self.substeps)
        return train, self.deploy_market(arg, key, cycle)

    def deploy_market(self, arg: Any, key: jax.Array, cycle: jax.Array) -> MarketData:
        """Cycle ``cycle``'s held-out market alone (``cycle_markets``' second)."""
        _, k_dep = jax.random.split(jax.random.fold_in(key, cycle))
        return synthetic.simulate(k_dep, arg, self.deploy_paths, self.n_bars, self.substeps)

    def stream(self, env: Any, num_envs: int, num_steps: int, episode_steps: int) -> Any:
        """The PPO data stream of fresh paths (None when ``fresh`` is off)."""
        if not self.fresh:
            return None
        return PathStream(env, n_bars=self.n_bars, num_envs=num_envs, num_steps=num_steps,
                          episode_steps=episode_steps,
                          generator=SyntheticGenerator(self.substeps))

    def train_source(self, arg: Any, cycle: Any) -> Any:
        """The stream's traced source in cycle ``cycle``: the generator params (every cycle)."""
        return arg

    def distinct_train_bars(self, arg: Any, window: int) -> float | None:
        """Bars a training cycle can visit (fixed paths), None for fresh paths (unlimited)."""
        return None if self.fresh else float(self.train_paths * (self.n_bars - window))

    def check(self, arg: Any, num_cycles: int, need_bars: int) -> None:
        if self.n_bars < need_bars:
            raise ValueError(f"SyntheticMarkets.n_bars = {self.n_bars}; need >= {need_bars} "
                             "(env window + max_steps_in_episode + 2)")


def _bars(market: MarketData, start: jax.Array, n: int) -> MarketData:
    """Bars ``[start, start + n)`` of every path of ``market`` (per-path fields kept whole)."""
    def cut(x):
        if x.ndim == 1:          # symbol_id
            return x
        return jax.lax.dynamic_slice_in_dim(x, start, n, axis=1)

    return jax.tree.map(cut, market)


def _check_windows(name: str, train_bars: int, deploy_bars: int, window: int,
                   need_bars: int) -> None:
    """A training window and a deploy window (with its ``window`` bars of history) each hold
    one episode of ``need_bars`` bars."""
    if train_bars < need_bars or deploy_bars + window < need_bars:
        raise ValueError(
            f"{name}: train_bars = {train_bars} and deploy_bars + window = "
            f"{deploy_bars + window} must be >= {need_bars} (env window + "
            "max_steps_in_episode + 2)")


@dataclass(frozen=True)
class WalkForwardMarkets:
    """Walk-forward windows of one data set (the traced source argument is its ``MarketData``).

    Cycle c trains on bars ``[c*step, c*step + train_bars)`` of every path (episodes start
    anywhere in it) and deploys on the next ``deploy_bars`` bars (plus the ``window`` bars
    before them as observation history only: the env never starts an episode before bar
    ``window`` of a market). ``step`` defaults to ``deploy_bars``, so successive deploy windows
    tile the data.
    """

    train_bars: int
    deploy_bars: int
    window: int = 16
    step: int | None = None

    @property
    def stride(self) -> int:
        return self.deploy_bars if self.step is None else self.step

    def cycle_markets(self, arg: MarketData, key: jax.Array, cycle: jax.Array
                      ) -> tuple[MarketData, MarketData]:
        train = _bars(arg, cycle * self.stride, self.train_bars)
        return train, self.deploy_market(arg, key, cycle)

    def deploy_market(self, arg: MarketData, key: jax.Array, cycle: jax.Array) -> MarketData:
        """Cycle ``cycle``'s held-out window alone (``cycle_markets``' second)."""
        del key
        return _bars(arg, cycle * self.stride + self.train_bars - self.window,
                     self.deploy_bars + self.window)

    def stream(self, env: Any, num_envs: int, num_steps: int, episode_steps: int) -> None:
        """No stream: a data set is what it is."""
        return None

    def train_source(self, arg: MarketData, cycle: Any) -> None:
        """No stream, no stream source."""
        return None

    def distinct_train_bars(self, arg: MarketData, window: int) -> float:
        """Bars a training cycle can visit: every path's training window after the first
        ``window`` bars (observation history only)."""
        return float(arg.n_paths * (self.train_bars - window))

    def check(self, arg: MarketData, num_cycles: int, need_bars: int) -> None:
        total = (num_cycles - 1) * self.stride + self.train_bars + self.deploy_bars
        if arg.n_bars < total:
            raise ValueError(
                f"WalkForwardMarkets: the data has {arg.n_bars} bars; {num_cycles} cycles need "
                f">= {total} ((num_cycles - 1) * step + train_bars + deploy_bars)")
        _check_windows("WalkForwardMarkets", self.train_bars, self.deploy_bars, self.window,
                       need_bars)
        if self.train_bars < self.window:
            raise ValueError("WalkForwardMarkets: train_bars must be >= window")


@dataclass(frozen=True)
class PanelMarkets:
    """Walk-forward windows of a panel of real series (``market.panel``; the traced source is a
    ``PanelSource``): cycle c trains on ``slots`` windows of ``train_bars`` bars (round-robin
    over the series active at the cycle's calendar cut) and deploys on the ``deploy_bars`` bars
    after the cut of the same slots (plus ``window`` bars of history). ``num_cycles``: cycles
    the source was planned for.

    ``train_source`` (``market.fit``): ``replay`` trains on the real windows; ``bootstrap``,
    ``regime_fit``, ``garch_fit`` and ``regime_garch`` train on fresh paths of at most ``n_bars``
    bars drawn before every PPO update from the window's block bootstrap (mean block
    ``block_len`` bars) or from the generator fitted to it (``substeps`` intrabar points). The
    reference rules and ``cycle_markets`` always see the real windows."""

    train_bars: int
    deploy_bars: int
    window: int = 16
    slots: int = 1
    num_cycles: int = 1
    train_source_kind: str = "replay"
    n_bars: int = 300
    substeps: int = 8
    block_len: float = 20.0
    # host tables of the panel (series, windows, coverage, fitted); not part of the identity
    tables: Any = field(default=None, compare=False, repr=False)

    def cycle_markets(self, arg: PanelSource, key: jax.Array, cycle: jax.Array
                      ) -> tuple[MarketData, MarketData]:
        return self.train_market(arg, cycle), self.deploy_market(arg, key, cycle)

    def train_market(self, arg: PanelSource, cycle: Any) -> MarketData:
        """Cycle ``cycle``'s real training windows ``[slots, train_bars]``."""
        return gather_windows(arg.market, arg.train_row[cycle], arg.train_start[cycle],
                              self.train_bars)

    def deploy_market(self, arg: PanelSource, key: jax.Array, cycle: jax.Array) -> MarketData:
        """Cycle ``cycle``'s held-out windows ``[slots, window + deploy_bars]``."""
        del key
        return gather_windows(arg.market, arg.deploy_row[cycle], arg.deploy_start[cycle],
                              self.deploy_bars + self.window)

    def stream(self, env: Any, num_envs: int, num_steps: int, episode_steps: int
               ) -> PathStream | None:
        """Fresh paths of the cycle's fitted source (None for ``replay``)."""
        if self.train_source_kind == "replay":
            return None
        gen = FittedGenerator(self.train_source_kind, self.substeps, self.block_len)
        return PathStream(env, n_bars=self.n_bars, num_envs=num_envs, num_steps=num_steps,
                          episode_steps=episode_steps, generator=gen)

    def train_source(self, arg: PanelSource, cycle: Any) -> Any:
        """The stream's traced source in cycle ``cycle``: the training windows (bootstrap) or
        ``(fitted params [slots], symbol_id [slots])``, a tuple of those for a mixture
        (``arg.fitted`` then holds one entry per part); None for ``replay``."""
        parts = source_parts(self.train_source_kind)
        if parts == ("replay",):
            return None
        fitted = arg.fitted if len(parts) > 1 else (arg.fitted,)
        out = []
        for part, f in zip(parts, fitted, strict=True):
            if part == "bootstrap":
                out.append(self.train_market(arg, cycle))
            else:
                params = jax.tree.map(lambda x: x[cycle], f)
                out.append((params, arg.market.symbol_id[arg.train_row[cycle]]))
        return tuple(out) if len(parts) > 1 else out[0]

    def generated(self, arg: PanelSource, key: jax.Array, cycle: Any, n_paths: int
                  ) -> MarketData:
        """``n_paths`` training paths of cycle ``cycle``'s source as PPO sees them (path i from
        slot ``i % slots``; ``replay``: the real windows, whole), e.g. for stylised facts."""
        if self.train_source_kind == "replay":
            return self.train_market(arg, cycle)
        gen = FittedGenerator(self.train_source_kind, self.substeps, self.block_len)
        return generate(gen, key, self.train_source(arg, cycle), n_paths, self.n_bars)

    def distinct_train_bars(self, arg: PanelSource, window: int) -> float | None:
        """Real bars a training cycle can visit (cycle 0's distinct windows after ``window``
        history bars; ``bootstrap`` resamples them); None for fitted generators (unlimited)."""
        if set(source_parts(self.train_source_kind)) & set(FITTED):
            return None
        pairs = {(int(r), int(s)) for r, s in zip(np.asarray(arg.train_row[0]),
                                                  np.asarray(arg.train_start[0]), strict=True)}
        return float(len(pairs) * (self.train_bars - window))

    def check(self, arg: PanelSource, num_cycles: int, need_bars: int) -> None:
        if num_cycles > self.num_cycles:
            raise ValueError(f"PanelMarkets: the panel was planned for {self.num_cycles} "
                             f"cycles; {num_cycles} requested")
        _check_windows("PanelMarkets", self.train_bars, self.deploy_bars, self.window,
                       need_bars)
        if self.train_source_kind != "replay" and self.n_bars < need_bars:
            raise ValueError(f"PanelMarkets: n_bars = {self.n_bars} (fresh path length) must "
                             f"be >= {need_bars} (env window + max_steps_in_episode + 2)")


Markets = SyntheticMarkets | WalkForwardMarkets | PanelMarkets

__all__ = ["Markets", "PanelMarkets", "SyntheticMarkets", "WalkForwardMarkets"]
