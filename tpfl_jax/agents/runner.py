"""Host-side PPO runner: chunks of jitted updates, tqdm, jsonl metrics, orbax checkpoints.

Chunk boundaries are fixed multiples of ``chunk_updates`` (counted from update 0), and
checkpoints are written only on multiples of ``checkpoint_every`` (itself a multiple of
``chunk_updates``). A resumed run therefore executes the same compiled programs on the same
update ranges as an uninterrupted one and ends with bit-identical params.

Integrity: ``run_identity.json`` records what the run computes (PPO config, seed(s), chunking,
hyperparameters, a digest of the env params and market data); a directory holding checkpoints
of another identity is refused, not resumed. Every checkpoint's SHA-256 digest is recorded in
``checkpoint_digests.json`` before it is written; a checkpoint that fails to restore or whose
restored values do not match its digest is moved to ``checkpoints_damaged/`` with a warning and
the previous good one is used. A torn last line of ``metrics.jsonl`` (a kill mid-write) is
dropped with a warning.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from tpfl_jax import distributed
from tpfl_jax.agents.ppo import PPOConfig, PPOHParams, RunnerState, make_ppo
from tpfl_jax.guard import DivergenceError, GuardSection, check_divergence, tree_digest
from tpfl_jax.rundir import ADDED_AT_OLD_BEHAVIOUR, identity_diff, identity_hash

IDENTITY_FILE = "run_identity.json"
DIGEST_FILE = "checkpoint_digests.json"
DAMAGED_DIR = "checkpoints_damaged"


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
    """The state as orbax saves it: key data for the typed key, and a one-element stand-in for
    every zero-size array (orbax refuses them; e.g. a jump-free market's empty intrabar path in
    the env state): a zero-size array holds no values, and its shape comes back from the fresh
    state of the same run on restore (:func:`_from_saveable`)."""
    rs = rs.replace(rng=jax.random.key_data(rs.rng))
    return jax.tree.map(lambda x: np.zeros((1,), x.dtype) if np.size(x) == 0 else x, rs)


def _from_saveable(rs: RunnerState, fresh: RunnerState) -> RunnerState:
    """Inverse of :func:`_to_saveable` given ``fresh`` (the run's initial state)."""
    rs = jax.tree.map(lambda r, f: f if np.size(f) == 0 else r, rs,
                      fresh.replace(rng=jax.random.key_data(fresh.rng)))
    return rs.replace(rng=jax.random.wrap_key_data(jnp.asarray(rs.rng)))


def jsonable(x: np.ndarray) -> Any:
    """A host array as JSON values (floats, non-finite as None; bools kept; arrays flattened)."""
    x = np.asarray(x)
    if x.dtype == bool:
        return x.tolist()
    x = x.astype(float)
    if x.ndim == 0:
        return None if not math.isfinite(x) else float(x)
    return [None if not math.isfinite(v) else float(v) for v in x.ravel()]


class _Fns:
    """Jitted init and per-chunk-length run functions of one runner (vmapped over seeds when
    ``num_seeds`` is set)."""

    def __init__(self, ppo: Any, num_seeds: int | None):
        self.ppo = ppo
        self.num_seeds = num_seeds
        init = ppo.init
        if num_seeds is not None:
            init = jax.vmap(init, in_axes=(0, None, None, None))
        self.init = distributed.jit(init)
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
                self._runs[n] = distributed.jit(run_seeds)
            else:
                self._runs[n] = distributed.jit(run)
        return self._runs[n]


class Runner:
    """Train PPO with progress, metrics log, checkpoints and bit-exact resume.

    ``num_seeds`` > 1 vmaps ``num_seeds`` independent runs (seeds ``fold_in(key(seed), i)``);
    metric values in the log are then lists over seeds. ``out_dir`` holds ``metrics.jsonl``
    and ``checkpoints/``; an existing checkpoint there is resumed from automatically (only by
    a runner of the same identity, see the module docstring). ``guard``: divergence limits
    checked after every chunk (``guard.check_divergence``; meant for discrete actions, whose
    entropy is >= 0); None checks finiteness only. ``info_metrics`` / ``stream`` / ``source``:
    PPO's hooks (``agents.ppo.make_ppo``) and the stream's traced source. ``on_chunk(rs,
    update) -> dict``: called after every chunk (e.g. a held-out evaluation); its values are
    logged in that chunk's last row. ``log_fields``: constant fields of every log row.
    """

    def __init__(self, config: PPOConfig, env: Any, env_params: Any, out_dir: str | Path, *,
                 seed: int = 0, hparams: PPOHParams | None = None, num_seeds: int | None = None,
                 chunk_updates: int = 10, checkpoint_every: int = 50, max_to_keep: int = 2,
                 progress: bool = True, guard: GuardSection | None = None,
                 info_metrics: Any = None, stream: Any = None, source: Any = None,
                 on_chunk: Any = None, log_fields: dict[str, Any] | None = None):
        for name, v in (("chunk_updates", chunk_updates), ("checkpoint_every", checkpoint_every),
                        ("max_to_keep", max_to_keep)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Runner: {name} = {v!r}; expected an int >= 1")
        if num_seeds is not None and (isinstance(num_seeds, bool)
                                      or not isinstance(num_seeds, int) or num_seeds < 1):
            raise ValueError(f"Runner: num_seeds = {num_seeds!r}; expected None or an int >= 1")
        if checkpoint_every % chunk_updates:
            raise ValueError(f"checkpoint_every={checkpoint_every} must be a multiple of "
                             f"chunk_updates={chunk_updates}")
        self.config, self.env, self.env_params = config, env, env_params
        self.out_dir = Path(out_dir).absolute()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seed, self.hparams, self.num_seeds = seed, hparams, num_seeds
        self.chunk_updates, self.checkpoint_every = chunk_updates, checkpoint_every
        self.progress, self.guard = progress, guard
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.max_to_keep = max_to_keep
        self.source, self.on_chunk = source, on_chunk
        self.log_fields = dict(log_fields or {})
        self.manager = self._new_manager()
        self._check_identity()
        self.ppo = make_ppo(config, env, env_params, info_metrics=info_metrics, stream=stream)
        self._fns = _Fns(self.ppo, num_seeds)

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.ckpt_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True))

    # ------------------------------------------------------------------ integrity
    def identity(self) -> dict[str, Any]:
        """What this run computes: a different identity must not resume its checkpoints."""
        hp = self.hparams if self.hparams is not None else self.config.hparams()
        return {
            "ppo": {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in asdict(self.config).items()
                    if ADDED_AT_OLD_BEHAVIOUR.get(("ppo", k), ...) != v},
            "seed": self.seed, "num_seeds": self.num_seeds,
            "chunk_updates": self.chunk_updates,
            "hparams": {k: np.asarray(v).tolist() for k, v in asdict(hp).items()},
            "env": f"{type(self.env).__module__}.{type(self.env).__qualname__}",
            "env_static": {k: v for k, v in sorted(vars(self.env).items())
                           if isinstance(v, (bool, int, float, str))
                           and ADDED_AT_OLD_BEHAVIOUR.get(("env_static", k), ...) != v},
            "env_params_sha256": tree_digest(self.env_params),
            "source_sha256": None if self.source is None else tree_digest(self.source),
        }

    def _check_identity(self) -> None:
        path = self.out_dir / IDENTITY_FILE
        new = self.identity()
        if self.manager.all_steps() and path.exists():
            try:
                old = json.loads(path.read_text())["identity"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); cannot tell "
                                 f"which run the checkpoints in {self.ckpt_dir} belong to, so "
                                 "resume is refused. Use another output directory") from None
            if identity_hash(old) != identity_hash(new):
                raise ValueError(
                    f"{self.out_dir} holds checkpoints of another run ({identity_diff(old, new)})"
                    "; resuming them would mix two runs, so it is refused. Use another output "
                    "directory or the same config")
        elif self.manager.all_steps():
            warnings.warn(f"{self.ckpt_dir}: checkpoints without {IDENTITY_FILE} (written by an "
                          "older version); resuming without an identity check", stacklevel=3)
        _write_json(path, {"identity": new, "sha256": identity_hash(new)})

    def _digests(self) -> dict[int, str]:
        path = self.out_dir / DIGEST_FILE
        if not path.exists():
            return {}
        try:
            return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, TypeError, AttributeError) as e:
            warnings.warn(f"{path}: unreadable ({type(e).__name__}: {e}); checkpoints cannot be "
                          "verified", stacklevel=3)
            return {}

    def _record_digest(self, step: int, digest: str) -> None:
        keep = set(self.manager.all_steps()) | {step}
        d = {k: v for k, v in self._digests().items() if k in keep}
        d[step] = digest
        _write_json(self.out_dir / DIGEST_FILE, {str(k): v for k, v in sorted(d.items())})

    def _quarantine(self, step: int, problem: str) -> None:
        src = self.ckpt_dir / str(step)
        dst = self.out_dir / DAMAGED_DIR / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        warnings.warn(f"checkpoint {step} at {src} is damaged ({problem}); moved to {dst}; "
                      "falling back to the previous checkpoint", stacklevel=3)

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
        return self._fns.init(self._rng(), self.env_params, self.hparams, self.source)

    def restore(self) -> tuple[RunnerState, int]:
        """Latest good checkpoint (or a fresh state) and its update index.

        A checkpoint that fails to restore or does not match its recorded digest is moved to
        ``checkpoints_damaged/`` (warning) and the previous one is tried; ``ValueError`` when
        checkpoints exist and none is good (nothing is moved then).
        """
        fresh = self.initial_state()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return fresh, 0
        target = _to_saveable(fresh)
        digests = self._digests()
        problems: list[tuple[int, str]] = []
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # noqa: BLE001 - any orbax failure = a damaged checkpoint
                problems.append((step, f"cannot be read: {type(e).__name__}: "
                                       f"{str(e).splitlines()[0][:200] if str(e) else ''}"))
                self.manager.close()            # a failed restore leaves orbax state behind
                self.manager = self._new_manager()
                continue
            want, got = digests.get(step), tree_digest(restored)
            if want is not None and want != got:
                problems.append((step, f"restored values differ from the digest recorded at "
                                       f"save time ({want[:12]}... != {got[:12]}...)"))
                continue
            if want is None:
                warnings.warn(f"checkpoint {step} at {self.ckpt_dir / str(step)} has no "
                              f"recorded digest in {DIGEST_FILE}; restored unverified",
                              stacklevel=2)
            for bad, problem in problems:
                self._quarantine(bad, problem)
            if problems:
                self.manager.close()
                self.manager = self._new_manager()
            return _from_saveable(restored, fresh), int(step)
        listing = "; ".join(f"checkpoint {s} at {self.ckpt_dir / str(s)} {p}"
                            for s, p in problems)
        raise ValueError(f"every checkpoint of {self.out_dir} is damaged ({listing}); move "
                         f"{self.ckpt_dir} away to start this run again from update 0")

    def _truncate_log(self, upto: int) -> None:
        """Keep the log rows of updates <= ``upto``; a torn last line (a kill mid-write) is
        dropped with a warning, a damaged line before it is an error naming it."""
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = []
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            try:
                row = json.loads(ln)
                update = int(row["update"])
            except (ValueError, KeyError, TypeError) as e:
                if i == len(lines) - 1:
                    warnings.warn(f"{self.metrics_path}: line {i + 1} is torn (a kill "
                                  f"mid-write?); dropped: {ln[:80]!r}", stacklevel=3)
                    continue
                raise ValueError(f"{self.metrics_path}: line {i + 1} is not a metrics row "
                                 f"({type(e).__name__}: {e}); expected JSON with an 'update' "
                                 "key. Repair or remove the line to resume") from None
            if update <= upto:
                kept.append(ln)
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, self.metrics_path)

    def _log(self, first_update: int, metrics: dict[str, np.ndarray],
             last: dict[str, Any] | None = None) -> None:
        n = len(next(iter(metrics.values())))
        with self.metrics_path.open("a") as f:
            for i in range(n):
                row = {**self.log_fields, "update": first_update + i + 1}
                row.update({k: jsonable(v[i]) for k, v in metrics.items()})
                if last and i == n - 1:
                    row.update({k: jsonable(v) for k, v in last.items()})
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
                try:
                    if self.guard is not None:
                        check_divergence(
                            {k: np.moveaxis(np.asarray(v), 0, -1) for k, v in m.items()},
                            self.guard, self._where, first_update=u)
                except DivergenceError:
                    self._log(u, m)           # the diagnosis; no checkpoint of this chunk
                    raise
                extra = self.on_chunk(rs, end) if self.on_chunk is not None else None
                self._log(u, m, extra)
                chunks.append(m)
                u = end
                if u % self.checkpoint_every == 0 or u == self.config.num_updates:
                    state = jax.device_get(_to_saveable(rs))
                    self._record_digest(u, tree_digest(state))   # before the checkpoint exists
                    self.manager.save(u, args=ocp.args.StandardSave(state))
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

    def _where(self, lead: tuple[int, ...]) -> str:
        return f"{self.out_dir}" + (f" seed index {lead[0]}" if lead else "")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temp file + rename): a kill leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_metrics(out_dir: str | Path):
    """The ``metrics.jsonl`` of a run as a pandas DataFrame (one row per update)."""
    import pandas as pd

    return pd.read_json(Path(out_dir) / "metrics.jsonl", lines=True)
