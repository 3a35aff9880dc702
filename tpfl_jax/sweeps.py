"""Batches of configurations on a device mesh, above the loop (nothing below imports this):

* :func:`make_ppo_sweep` / :func:`ppo_sweep` -- S seeds x K ``tp_reward_weight`` values of PPO as
  one program (``tpfl-train`` with several weights);
* :func:`make_loop_sweep` -- the closed loop's P policies x S seeds (``tpfl-loop``), the one
  batching path of :class:`tpfl_jax.loop.Loop`.

Both flatten their configurations into one batch axis split over the mesh with
:func:`tpfl_jax.distributed.sharded_vmap`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tpfl_jax.accounting import seed_keys
from tpfl_jax.agents.ppo import make_ppo, train_with_evals
from tpfl_jax.distributed import MeshConfig, make_mesh, sharded_vmap, tree_apply
from tpfl_jax.loop import Loop


def make_ppo_sweep(config: Any, env: Any, mesh: Mesh | None = None,
                   mesh_cfg: MeshConfig | None = None, env_params: Any = None, *,
                   hooks: dict[str, Any] | None = None,
                   evaluate: Callable[[Any, Any], Any] | None = None,
                   every: int | None = None) -> Callable[..., Any]:
    """``sweep(seeds, weights, env_params, source=None, eval_args=None)``: S seeds x K
    ``tp_reward_weight`` values of PPO.

    ``seeds`` is a count (keys ``loop.seed_keys(0, seeds)``) or ``[S]`` typed keys; ``weights`` is
    ``[K]``. The ``S*K`` configurations are flattened (seed-major) into one batch axis split over
    the mesh axes ``mesh_cfg.batch_spec[0]``; ``env_params`` (market data included), the data
    stream's ``source`` and ``eval_args`` are replicated. ``hooks``: ``make_ppo``'s
    ``info_metrics`` / ``stream``. With ``evaluate(runner_state, eval_args)`` the runs are
    scored every ``every`` updates inside the program (``agents.ppo.train_with_evals``).
    Returns the ``TrainResult`` with leaves ``[S, K, ...]`` (metrics ``[S, K, num_updates]``).
    Compiled once per (S*K, argument shapes); build the sweep once and call it many times.
    ``env_params`` here only fixes the spaces (as in ``make_train``).
    """
    mesh_cfg = MeshConfig() if mesh_cfg is None else mesh_cfg
    mesh = make_mesh(mesh_cfg) if mesh is None else mesh
    ppo = make_ppo(config, env, env_params, **(hooks or {}))

    def one(key: jax.Array, weight: jax.Array, params: Any, source: Any, eval_args: Any) -> Any:
        params = params.replace(tp_reward_weight=weight)
        if evaluate is None:
            return ppo.train(key, params, None, source)
        return train_with_evals(ppo, key, params, lambda rs: evaluate(rs, eval_args),
                                int(every or config.num_updates), source=source)

    run = sharded_vmap(one, mesh, in_axes=(0, 0, None, None, None),
                       axis=mesh_cfg.batch_spec[0], on_indivisible=mesh_cfg.on_indivisible)

    def sweep(seeds: int | jax.Array, weights: Sequence[float] | jax.Array,
              env_params: Any, source: Any = None, eval_args: Any = None) -> Any:
        if isinstance(seeds, int):
            seeds = seed_keys(0, seeds)
        keys = seeds
        w = jnp.asarray(weights, jnp.float32).reshape(-1)
        s, k = keys.shape[0], w.shape[0]
        out = run(jnp.repeat(keys, k, axis=0), jnp.tile(w, s), env_params, source, eval_args)
        return tree_apply(lambda x: x.reshape(s, k, *x.shape[1:]), out)

    sweep.run = run  # type: ignore[attr-defined]  # the flat [S*K] sharded function
    sweep.ppo = ppo  # type: ignore[attr-defined]
    return sweep


def ppo_sweep(config: Any, env: Any, env_params: Any, seeds: int | jax.Array,
              weights: Sequence[float] | jax.Array, mesh: Mesh | None = None,
              mesh_cfg: MeshConfig | None = None) -> Any:
    """One-shot :func:`make_ppo_sweep` (compiles on every call; build the sweep to reuse it)."""
    return make_ppo_sweep(config, env, mesh, mesh_cfg, env_params)(seeds, weights, env_params)


def make_loop_sweep(loop: Loop, mesh: Mesh | None = None,
                    mesh_cfg: MeshConfig | None = None) -> Callable[..., Any]:
    """``run(keys[S], policies[P], source, env_params, hparams)`` -> ``LoopResult [P, S, C]``.

    The sharded form of ``loop.run`` (a :class:`tpfl_jax.loop.Loop`): the ``P*S`` policy x seed
    configurations are flattened (policy-major) into one batch axis split over the mesh axes
    ``mesh_cfg.batch_spec[0]``; market source, env params and PPO hyperparameters are
    replicated. ``run.aot(...)`` compiles ahead of time and returns ``go()`` (same result).
    """
    mesh_cfg = MeshConfig() if mesh_cfg is None else mesh_cfg
    mesh = make_mesh(mesh_cfg) if mesh is None else mesh
    flat = sharded_vmap(loop.run_one, mesh, in_axes=(0, 0, None, None, None),
                        axis=mesh_cfg.batch_spec[0], on_indivisible=mesh_cfg.on_indivisible)

    def _flatten(keys: jax.Array, policies: Any) -> tuple[jax.Array, Any, int, int]:
        s = keys.shape[0]
        sizes = {np.shape(x)[0] for x in jax.tree.leaves(policies)}
        if len(sizes) != 1:
            raise ValueError(f"make_loop_sweep: policy leaves disagree on the policy axis: "
                             f"{sorted(sizes)}")
        p = sizes.pop()
        fk = keys[jnp.tile(jnp.arange(s), p)]
        fp = jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), s, axis=0), policies)
        return fk, fp, p, s

    def _unflatten(out: Any, p: int, s: int) -> Any:
        return tree_apply(lambda x: x.reshape(p, s, *x.shape[1:]), out)

    def run(keys: jax.Array, policies: Any, source: Any, env_params: Any, hparams: Any) -> Any:
        fk, fp, p, s = _flatten(keys, policies)
        return _unflatten(flat(fk, fp, source, env_params, hparams), p, s)

    def aot(keys: jax.Array, policies: Any, source: Any, env_params: Any,
            hparams: Any) -> Callable[[], Any]:
        fk, fp, p, s = _flatten(keys, policies)
        go = flat.aot(fk, fp, source, env_params, hparams)
        return lambda: _unflatten(go(), p, s)

    run.aot = aot  # type: ignore[attr-defined]
    run.flat = flat  # type: ignore[attr-defined]  # the flat [P*S] sharded function
    return run


__all__ = ["make_loop_sweep", "make_ppo_sweep", "ppo_sweep"]
