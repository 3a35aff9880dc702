"""Sharded checks run in a subprocess with 8 forced host devices (see test_distributed.py).

XLA flags must be set before JAX initialises, so pytest runs this file as a script with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; it prints one JSON object of results.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from tpfl_jax import distributed as D
from tpfl_jax.accounting import seed_keys
from tpfl_jax.agents.ppo import PPOConfig, make_train
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.market.types import make_market_data
from tpfl_jax.sweeps import make_ppo_sweep

TINY = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 2, update_epochs=1,
                 num_minibatches=2, widths=(16,))


def tiny_market(n_paths: int = 4, n_bars: int = 96, seed: int = 0):
    """A small random-walk OHLC market (numpy; independent of the synthetic generators)."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0, 0.01, (n_paths, n_bars))
    close = 100.0 * np.exp(np.cumsum(r, axis=1))
    open_ = np.concatenate([np.full((n_paths, 1), 100.0), close[:, :-1]], axis=1)
    wick = np.abs(rng.normal(0.0, 0.004, (2, n_paths, n_bars))) * close
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    trend = np.sign(np.sin(np.arange(n_bars) / 10.0))[None].repeat(n_paths, 0)
    return make_market_data(open_, high, low, close, volume=np.ones_like(close), trend=trend)


def sharding_info(x: jax.Array) -> dict:
    return {"n_devices": len(x.sharding.device_set), "spec": str(x.sharding.spec),
            "shard_rows": sorted({s.data.shape[0] for s in x.addressable_shards})}


def main() -> None:
    res: dict = {"device_count": jax.device_count()}
    env = TradingEnv(window=8)
    params = env.make_params(tiny_market(), max_steps_in_episode=32)
    mesh = D.make_mesh(D.MeshConfig())
    weights = [0.0, 0.5, 1.0, 2.0]
    seeds = 2

    # sharded PPO sweep (2 seeds x 4 weights = 8 configurations over 8 devices); the same
    # compiled program serves the padded call below (3 configurations padded to 8)
    t0 = time.perf_counter()
    sweep = make_ppo_sweep(TINY, env, mesh, D.MeshConfig(on_indivisible="pad"), params)
    keys = seed_keys(0, seeds)
    flat_out = sweep.run(jnp.repeat(keys, 4, axis=0), jnp.tile(jnp.asarray(weights), seeds),
                         params, None, None)
    out = jax.tree.map(lambda x: x.reshape(seeds, 4, *x.shape[1:]), flat_out)
    res["sharded"] = sharding_info(flat_out.metrics["episode_return"])
    res["params_sharded"] = sharding_info(jax.tree.leaves(flat_out.params)[0])
    res["t_sharded_s"] = time.perf_counter() - t0

    # unsharded reference: plain jit(vmap(vmap)) on one device
    t0 = time.perf_counter()
    train = make_train(TINY, env, params)

    def one(k, w, p):
        return train(k, p.replace(tp_reward_weight=w))

    cpu0 = jax.devices()[0]
    ref = jax.jit(jax.vmap(one, (0, 0, None)))(*jax.device_put(
        (jnp.repeat(keys, 4, axis=0), jnp.tile(jnp.asarray(weights, jnp.float32), seeds),
         params), cpu0))
    ref = jax.tree.map(lambda x: x.reshape(seeds, 4, *x.shape[1:]), ref)
    res["ref_devices"] = len(ref.metrics["episode_return"].sharding.device_set)
    res["t_ref_s"] = time.perf_counter() - t0
    a, b = jax.device_get((out.metrics, out.params)), jax.device_get((ref.metrics, ref.params))
    diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
                          / (1.0 + np.abs(np.asarray(y, np.float64)))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    nan_same = all(np.array_equal(np.isnan(np.asarray(x, float)), np.isnan(np.asarray(y, float)))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    res["shape"] = list(out.metrics["episode_return"].shape)
    res["max_rel_diff"] = float(np.nanmax(diffs))
    res["nan_pattern_equal"] = bool(nan_same)
    res["weights_differ"] = bool(np.ptp(np.asarray(out.metrics["reward"][:, :, -1]), axis=1).min()
                                 > 0)

    # pad option: 3 configurations padded to 8 (cache hit), padding removed, same values
    t0 = time.perf_counter()
    padded = sweep(keys[:1], weights[:3], params)
    pa = jax.device_get(padded.metrics["episode_return"])
    ra = jax.device_get(ref.metrics["episode_return"][:1, :3])
    res["pad_shape"] = list(pa.shape)
    res["pad_max_abs_diff"] = float(np.nanmax(np.abs(pa - ra)))
    res["t_pad_s"] = time.perf_counter() - t0

    # not divisible with on_indivisible='error': 3 seeds x 1 weight over 8 devices
    try:
        make_ppo_sweep(TINY, env, mesh, D.MeshConfig(on_indivisible="error"),
                         env_params=params)(3, [1.0], params)
        res["indivisible_error"] = None
    except ValueError as e:
        res["indivisible_error"] = str(e)

    # generic sharded_vmap with the pad option (cheap function)
    f = lambda k, w, c: jax.random.normal(k, (3,)) * w + c  # noqa: E731
    k5, w5 = jax.random.split(jax.random.key(1), 5), jnp.arange(5.0)
    got = D.sharded_vmap(f, mesh, in_axes=(0, 0, None), on_indivisible="pad")(k5, w5, 1.0)
    want = jax.jit(jax.vmap(f, (0, 0, None)))(k5, w5, 1.0)
    res["vmap_pad_equal"] = bool(got.shape == (5, 3) and np.array_equal(got, want))

    # shard_batch with two named batch axes on a 2 x 4 mesh
    mesh2 = D.make_mesh(D.MeshConfig(shape=(2, -1), axis_names=("seed", "weight"),
                                     batch_spec=("seed", "weight")))
    x = D.shard_batch(jnp.zeros((4, 8, 3)), mesh2, ("seed", "weight"))
    res["two_axis"] = {"n_devices": len(x.sharding.device_set),
                       "shard_shape": list(x.addressable_shards[0].data.shape)}
    try:
        D.shard_batch(jnp.zeros((4, 6)), mesh2, ("seed", "weight"))
        res["two_axis_error"] = None
    except ValueError as e:
        res["two_axis_error"] = str(e)
    print(json.dumps(res))


if __name__ == "__main__":
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        sys.exit("run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    main()
