"""Full-size PPO learning runs: CartPole-v1 (discrete) and Pendulum-v1 (Gaussian head).

    python benchmarks/ppo_learning.py [--env cartpole|pendulum|both] [--seeds 4] [--steps N]

CartPole uses PureJaxRL defaults (4 envs, 128 steps, 5e5 steps, 4 epochs, 4 minibatches,
lr 2.5e-4 annealed, 64x2 tanh). Pendulum uses 16 envs x 128 steps, 10 epochs, 32 minibatches,
lr 1e-3, gamma 0.95, obs and reward normalisation. Prints per-seed returns of the final
updates and a deterministic evaluation of seed 0.
"""

from __future__ import annotations

import argparse
import time

import gymnax
import jax
import numpy as np

from tpfl_jax.agents.evaluate import evaluate
from tpfl_jax.agents.ppo import PPOConfig, make_train

CONFIGS = {
    "cartpole": ("CartPole-v1", PPOConfig(total_timesteps=500_224)),
    "pendulum": ("Pendulum-v1", PPOConfig(
        num_envs=16, num_steps=128, total_timesteps=1_001_472, update_epochs=10,
        num_minibatches=32, lr=1e-3, gamma=0.95, gae_lambda=0.95, ent_coef=0.0,
        clip_eps=0.2, max_grad_norm=0.5, normalize_obs=True, normalize_reward=True,
        init_log_std=-0.5)),
}


def run(name: str, seeds: int, steps: int | None) -> None:
    env_id, cfg = CONFIGS[name]
    if steps:
        cfg = PPOConfig(**{**cfg.__dict__, "total_timesteps": steps})
    env, ep = gymnax.make(env_id)
    train = jax.jit(jax.vmap(make_train(cfg, env), (0, None)))
    t0 = time.perf_counter()
    out = jax.block_until_ready(train(jax.random.split(jax.random.key(0), seeds), ep))
    dt = time.perf_counter() - t0
    ret = np.asarray(out.metrics["episode_return"])
    last = np.nanmean(ret[:, -10:], axis=1)
    p0 = jax.tree.map(lambda x: x[0], out.params)
    rms0 = jax.tree.map(lambda x: x[0], out.runner_state.obs_rms)
    ev = evaluate(p0, env, ep, jax.random.key(1), 32, config=cfg,
                  obs_rms=rms0 if cfg.normalize_obs else None)
    print(f"{env_id}: {seeds} seeds x {cfg.num_updates * cfg.batch_size} steps in {dt:.0f} s "
          f"(incl. compile); training return (last 10 updates) per seed "
          f"{np.round(last, 1).tolist()}, mean {last.mean():.1f}; "
          f"deterministic eval seed 0 over 32 episodes {ev.returns.mean():.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="both", choices=["cartpole", "pendulum", "both"])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args()
    for name in (["cartpole", "pendulum"] if a.env == "both" else [a.env]):
        run(name, a.seeds, a.steps)


if __name__ == "__main__":
    main()
