"""How close our PPO's SGD step is to the hardware floor (same process, same network sizes).

* floor: a bare jitted ``lax.scan`` of grad + clip + Adam steps on two 64x64 tanh MLPs (actor
  logits, critic value) with a plain policy-gradient + value + entropy loss on fixed minibatches;
* ours: the per-minibatch cost inside ``tpfl_jax.agents.ppo`` on ``TradingEnv``, from two runs
  that differ only in ``update_epochs`` (SB3's default minibatch size 64):
  ``(t(E) - t(1)) / ((E - 1) * minibatches * updates)``.

Prints microseconds per step, the floor's GFLOP/s, and the ratio ours / floor. This is why PPO
on CPU cannot be many times faster than a well-written torch PPO at large minibatches: both pay
the same matmul FLOPs (see README, SB3 vs JAX PPO).

    python benchmarks/sgd_floor.py            # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import PRESETS, machine, run_jax, write_csv  # noqa: E402

from tpfl_jax.agents.ppo import PPOConfig  # noqa: E402
from tpfl_jax.env.trading import TradingEnv  # noqa: E402
from tpfl_jax.market import synthetic  # noqa: E402


class TwoMLP(nn.Module):
    n_actions: int

    @nn.compact
    def __call__(self, x):
        a = nn.tanh(nn.Dense(64)(nn.tanh(nn.Dense(64)(x))))
        c = nn.tanh(nn.Dense(64)(nn.tanh(nn.Dense(64)(x))))
        return nn.Dense(self.n_actions)(a), nn.Dense(1)(c)[..., 0]


def floor_us(obs_dim: int, n_actions: int, mb: int, steps: int) -> tuple[float, float]:
    """(microseconds per bare SGD step, GFLOP/s) on one minibatch of ``mb`` samples."""
    net = TwoMLP(n_actions)
    x = jax.random.normal(jax.random.key(0), (mb, obs_dim))
    a = jax.random.randint(jax.random.key(1), (mb,), 0, n_actions)
    params = net.init(jax.random.key(2), x)
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(3e-4))

    def loss(p):
        logits, v = net.apply(p, x)
        lp = jax.nn.log_softmax(logits)
        ent = -(jnp.exp(lp) * lp).sum(-1).mean()
        return -jnp.take_along_axis(lp, a[:, None], 1).mean() + ((v - 1.0) ** 2).mean() - 0.01 * ent

    def body(carry, _):
        p, o = carry
        g = jax.grad(loss)(p)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

    run = jax.jit(lambda p, o: jax.lax.scan(body, (p, o), None, length=steps)[0])
    o = tx.init(params)
    jax.block_until_ready(run(params, o))
    t0 = time.perf_counter()
    jax.block_until_ready(run(params, o))
    dt = (time.perf_counter() - t0) / steps
    n_params = sum(v.size for v in jax.tree.leaves(params))
    return dt * 1e6, 6 * n_params * mb / dt / 1e9      # fwd + bwd ~ 3 x 2 FLOPs per weight


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=32_768, help="env steps per PPO run")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()

    env = TradingEnv(features="base")      # obs 26, as sb3_compare (the figures' observation)
    params = env.make_params(synthetic.generate("regime", jax.random.key(0), 64, 1024))
    hp = PRESETS["sb3-default"](args.envs)
    hp["update_epochs"] = args.epochs
    cfg = PPOConfig(num_envs=args.envs, total_timesteps=args.steps, widths=(64, 64),
                    activation="tanh", lr=3e-4, clip_value_loss=False, **hp)
    cfg1 = PPOConfig(**{**cfg.__dict__, "update_epochs": 1})
    t_e = run_jax(cfg, env, params, 0, repeats=3)[2]
    t_1 = run_jax(cfg1, env, params, 0, repeats=3)[2]
    n_mb = (args.epochs - 1) * cfg.num_minibatches * cfg.num_updates
    ours = (t_e - t_1) / n_mb * 1e6
    obs_dim = int(env.observation_space(params).shape[0])
    fl, gflops = floor_us(obs_dim, env.num_actions, cfg.minibatch_size, n_mb)
    print(f"machine: {machine()}")
    print(f"minibatch {cfg.minibatch_size} samples, obs {obs_dim}, actions {env.num_actions}")
    print(f"floor (bare grad + Adam scan): {fl:.1f} us/step, {gflops:.0f} GFLOP/s")
    print(f"ours (PPO minibatch step):     {ours:.1f} us/step")
    print(f"ratio ours / floor: {ours / fl:.2f}")
    write_csv([dict(minibatch=cfg.minibatch_size, obs_dim=obs_dim, floor_us=fl,
                    floor_gflops=gflops, ppo_us=ours, ratio=ours / fl)], "sgd_floor.csv",
              args.csv)


if __name__ == "__main__":
    main()
