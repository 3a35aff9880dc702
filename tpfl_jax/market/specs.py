"""Where a training job's data come from: fresh synthetic paths or walk-forward windows of a data
set. A spec is static (frozen, hashable); its traced *source* argument is the generator's params
(synthetic) or the data set's ``MarketData`` (walk-forward), so new parameters or new data of
the same shape never recompile.

``cycle_markets(source, key, cycle) -> (train, deploy)``: cycle ``cycle``'s training market and
its held-out deployment market (never overlapping the bars trained on). ``stream(env, ...)``:
the PPO data stream that replaces the training paths before every update (synthetic markets with
``fresh``), or None (a data set: episodes start anywhere in the training span).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax

from tpfl_jax.market.types import MarketData


@dataclass(frozen=True)
class SyntheticMarkets:
    """Synthetic ``kind`` paths (``tpfl_jax.market.synthetic``) of ``n_bars`` bars.

    ``fresh`` (default): every PPO update trains on newly generated paths
    (``env.fresh.FreshPaths``; no bar is seen twice); ``train_paths`` paths per cycle are then
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
        from tpfl_jax.market import synthetic

        return synthetic.make_params(self.kind, **params)

    def cycle_markets(self, arg: Any, key: jax.Array, cycle: jax.Array
                      ) -> tuple[MarketData, MarketData]:
        from tpfl_jax.market import synthetic

        k_tr, k_dep = jax.random.split(jax.random.fold_in(key, cycle))
        train = synthetic.simulate(k_tr, arg, self.train_paths, self.n_bars, self.substeps)
        return train, self.deploy_market(arg, key, cycle)

    def deploy_market(self, arg: Any, key: jax.Array, cycle: jax.Array) -> MarketData:
        """Cycle ``cycle``'s held-out market alone (``cycle_markets``' second)."""
        from tpfl_jax.market import synthetic

        _, k_dep = jax.random.split(jax.random.fold_in(key, cycle))
        return synthetic.simulate(k_dep, arg, self.deploy_paths, self.n_bars, self.substeps)

    def stream(self, env: Any, num_envs: int, num_steps: int, episode_steps: int) -> Any:
        """The PPO data stream of fresh paths (None when ``fresh`` is off)."""
        if not self.fresh:
            return None
        from tpfl_jax.env.fresh import FreshPaths

        return FreshPaths(env, n_bars=self.n_bars, substeps=self.substeps, num_envs=num_envs,
                          num_steps=num_steps, episode_steps=episode_steps)

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
        if self.train_bars < need_bars or self.deploy_bars + self.window < need_bars:
            raise ValueError(
                f"WalkForwardMarkets: train_bars = {self.train_bars} and deploy_bars + window "
                f"= {self.deploy_bars + self.window} must be >= {need_bars} (env window + "
                "max_steps_in_episode + 2)")
        if self.train_bars < self.window:
            raise ValueError("WalkForwardMarkets: train_bars must be >= window")


Markets = SyntheticMarkets | WalkForwardMarkets

__all__ = ["Markets", "SyntheticMarkets", "WalkForwardMarkets"]
