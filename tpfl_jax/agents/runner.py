"""Host-side PPO runner: chunks of jitted updates, tqdm, jsonl metrics, orbax checkpoints.

Chunk boundaries are fixed multiples of ``chunk_updates`` (counted from update 0), and
checkpoints are written only on multiples of ``checkpoint_every`` (itself a multiple of
``chunk_updates``). A resumed run therefore executes the same compiled programs on the same
update ranges as an uninterrupted one and ends with bit-identical params.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from tpfl_jax.agents.ppo import PPOConfig, PPOHParams, RunnerState, make_ppo


class NonFiniteError(FloatingPointError):
    """Raised when a PPO update produced a non-finite loss or non-finite params."""

    def __init__(self, update: int):
        self.update = update
        super().__init__(f"PPO update {update}: non-finite loss or parameters (NaN/inf); "
                         "training stopped, no checkpoint written for this chunk")


@dataclass
class RunResult:
    """Final runner state, metrics of the updates run in this call, and the first update."""

    runner_state: RunnerState
    metrics: dict[str, np.ndarray]
    start_update: int

    @property
    def params(self) -> Any:
        return self.runner_state.params


def _to_saveable(rs: RunnerState) -> RunnerState:
    return rs.replace(rng=jax.random.key_data(rs.rng))


def _from_saveable(rs: RunnerState) -> RunnerState:
    return rs.replace(rng=jax.random.wrap_key_data(jnp.asarray(rs.rng)))


def _jsonable(x: np.ndarray) -> Any:
    x = np.asarray(x)
    if x.dtype == bool:
        return x.tolist()
    x = x.astype(float)
    if x.ndim == 0:
        return None if not math.isfinite(x) else float(x)
    return [None if not math.isfinite(v) else float(v) for v in x.ravel()]


class _Fns:
    """Jitted init and per-chunk-length run functions of one (config, env, num_seeds)."""

    def __init__(self, config: PPOConfig, env: Any, num_seeds: int | None, env_params: Any):
        self.ppo = make_ppo(config, env, env_params)
        self.env = env
        self.num_seeds = num_seeds
        init = self.ppo.init
        if num_seeds is not None:
            init = jax.vmap(init, in_axes=(0, None, None))
        self.init = jax.jit(init)
        self._runs: dict[int, Any] = {}

    def run(self, n: int):
        if n not in self._runs:
            ppo = self.ppo

            def run(rs, env_params):
                return ppo.run(rs, env_params, n)

            if self.num_seeds is not None:
                def run_seeds(rs, env_params):
                    rs, m = jax.vmap(run, in_axes=(0, None))(rs, env_params)
                    return rs, jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), m)  # [n, seeds]
                self._runs[n] = jax.jit(run_seeds)
            else:
                self._runs[n] = jax.jit(run)
        return self._runs[n]


_FNS: dict[tuple, _Fns] = {}


def _compiled_fns(config: PPOConfig, env: Any, num_seeds: int | None, env_params: Any) -> _Fns:
    """Share compiled functions between runners of the same config/env (spaces from the first
    ``env_params`` seen; they must not change between runners of one env)."""
    key = (config, id(env), num_seeds)
    if key not in _FNS or _FNS[key].env is not env:
        _FNS[key] = _Fns(config, env, num_seeds, env_params)
    return _FNS[key]


class Runner:
    """Train PPO with progress, metrics log, checkpoints and bit-exact resume.

    ``num_seeds`` > 1 vmaps ``num_seeds`` independent runs (seeds ``fold_in(key(seed), i)``);
    metric values in the log are then lists over seeds. ``out_dir`` holds ``metrics.jsonl``
    and ``checkpoints/``; an existing checkpoint there is resumed from automatically.
    """

    def __init__(self, config: PPOConfig, env: Any, env_params: Any, out_dir: str | Path, *,
                 seed: int = 0, hparams: PPOHParams | None = None, num_seeds: int | None = None,
                 chunk_updates: int = 10, checkpoint_every: int = 50, max_to_keep: int = 2,
                 progress: bool = True):
        if checkpoint_every % chunk_updates:
            raise ValueError(f"checkpoint_every={checkpoint_every} must be a multiple of "
                             f"chunk_updates={chunk_updates}")
        self.config, self.env, self.env_params = config, env, env_params
        self.out_dir = Path(out_dir).absolute()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seed, self.hparams, self.num_seeds = seed, hparams, num_seeds
        self.chunk_updates, self.checkpoint_every = chunk_updates, checkpoint_every
        self.progress = progress
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.manager = ocp.CheckpointManager(
            self.out_dir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))
        self._fns = _compiled_fns(config, env, num_seeds, env_params)
        self.ppo = self._fns.ppo

    # ------------------------------------------------------------------ pieces
    def _rng(self) -> jax.Array:
        key = jax.random.key(self.seed)
        if self.num_seeds is None:
            return key
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.num_seeds))

    def _run_fn(self, n: int):
        return self._fns.run(n)

    def initial_state(self) -> RunnerState:
        """Fresh runner state for ``seed`` (and ``num_seeds``)."""
        return self._fns.init(self._rng(), self.env_params, self.hparams)

    def restore(self) -> tuple[RunnerState, int]:
        """Latest checkpoint (or a fresh state) and its update index."""
        fresh = self.initial_state()
        step = self.manager.latest_step()
        if step is None:
            return fresh, 0
        restored = self.manager.restore(
            step, args=ocp.args.StandardRestore(_to_saveable(fresh)))
        return _from_saveable(restored), int(step)

    def _truncate_log(self, upto: int) -> None:
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = [ln for ln in lines if ln and json.loads(ln)["update"] <= upto]
        self.metrics_path.write_text("".join(ln + "\n" for ln in kept))

    def _log(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        n = len(next(iter(metrics.values())))
        with self.metrics_path.open("a") as f:
            for i in range(n):
                row = {"update": first_update + i + 1}
                row.update({k: _jsonable(v[i]) for k, v in metrics.items()})
                f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ main loop
    def run(self, until: int | None = None) -> RunResult:
        """Train up to update ``until`` (default ``config.num_updates``), resuming if possible.

        Raises :class:`NonFiniteError` naming the first update with a NaN/inf loss or params.
        """
        total = self.config.num_updates if until is None else min(until,
                                                                   self.config.num_updates)
        rs, start = self.restore()
        self._truncate_log(start)
        u = start
        chunks: list[dict[str, np.ndarray]] = []
        bar = tqdm(total=total, initial=min(start, total), disable=not self.progress,
                   desc="ppo", unit="upd")
        try:
            while u < total:
                end = min((u // self.chunk_updates + 1) * self.chunk_updates, total)
                rs, m = self._run_fn(end - u)(rs, self.env_params)
                m = jax.device_get(m)
                finite = np.asarray(m["finite"]).reshape(end - u, -1).all(axis=1)
                if not finite.all():
                    bad = int(np.argmin(finite))
                    self._log(u, {k: v[:bad + 1] for k, v in m.items()})
                    raise NonFiniteError(u + bad + 1)
                self._log(u, m)
                chunks.append(m)
                u = end
                if u % self.checkpoint_every == 0 or u == self.config.num_updates:
                    self.manager.save(u, args=ocp.args.StandardSave(_to_saveable(rs)))
                ret = np.asarray(m["episode_return"], float)
                if np.isfinite(ret).any():
                    bar.set_postfix(ret=f"{np.nanmean(ret[-1]):.1f}")
                bar.update(end - bar.n)
        finally:
            bar.close()
            self.manager.wait_until_finished()
        metrics = ({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
                   if chunks else {})
        return RunResult(rs, metrics, start)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def read_metrics(out_dir: str | Path):
    """The ``metrics.jsonl`` of a run as a pandas DataFrame (one row per update)."""
    import pandas as pd

    return pd.read_json(Path(out_dir) / "metrics.jsonl", lines=True)
