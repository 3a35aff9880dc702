"""PPO throughput: our PPO vs rejax's PPO on CartPole-v1, vmapped seeds, TradingEnv sweep.

Everything runs in one process with matched hyperparameters (4 envs, 128 steps, 4 epochs,
4 minibatches, lr 2.5e-4, 64x2 tanh, clip 0.2, gamma 0.99, lambda 0.95, ent 0.01, vf 0.5,
grad clip 0.5). Differences that remain: rejax does not anneal the lr, clips gradients
element-wise (``optax.clip``) instead of by global norm and uses no truncation bootstrap;
its periodic evaluation is replaced by a no-op so only training is timed.

    python benchmarks/ppo_throughput.py [--quick] [--no-rejax] [--no-trading]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from tpfl_jax.accounting import train_info_metrics
from tpfl_jax.agents.ppo import PPOConfig, make_train

MATCHED = dict(num_envs=4, num_steps=128, update_epochs=4, num_minibatches=4, lr=2.5e-4,
               widths=(64, 64), activation="tanh", gamma=0.99, gae_lambda=0.95, clip_eps=0.2,
               ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5)


def timed(fn, *args) -> tuple[float, float, Any]:
    """(compile seconds, run seconds, output) of ``jax.jit(fn)(*args)``."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return t1 - t0, time.perf_counter() - t1, out


# --------------------------------------------------------------------------- rejax
class FiveTupleEnv:
    """Adapter: gymnax >= 1.0 env -> the old 5-tuple ``step`` rejax 0.1.3 unpacks."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):
        if name == "env":  # during copy/unpickle, before __init__ ran
            raise AttributeError(name)
        return getattr(self.env, name)

    def step(self, key, state, action, params=None):
        obs, state, reward, term, trunc, info = self.env.step(key, state, action, params)
        return obs, state, reward, jnp.logical_or(term, trunc), info

    def reset(self, key, params=None):
        return self.env.reset(key, params)


def rejax_train_fn(env, env_params, total_timesteps: int):
    from rejax import PPO as RejaxPPO

    algo = RejaxPPO.create(
        env=FiveTupleEnv(env), env_params=env_params, total_timesteps=total_timesteps,
        eval_freq=total_timesteps, skip_initial_evaluation=True,
        num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4, learning_rate=2.5e-4,
        max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01,
        vf_coef=0.5, agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (64, 64)})
    algo = algo.replace(eval_callback=lambda algo, ts, rng: jnp.zeros(()))
    return lambda rng: algo.train(rng)[0]


# --------------------------------------------------------------------------- CartPole
def cartpole(total: int, seed_counts: list[int], seeds_total: int, use_rejax: bool) -> None:
    env, ep = gymnax.make("CartPole-v1")
    cfg = PPOConfig(total_timesteps=total, **MATCHED)
    steps = cfg.num_updates * cfg.batch_size
    train = make_train(cfg, env)
    c, r, out = timed(train, jax.random.key(0), ep)
    ret = float(np.nanmean(np.asarray(out.metrics["episode_return"])[-10:]))
    ours = steps / r
    print(f"ours   CartPole-v1 1 seed: {steps} steps, compile {c:.1f} s, run {r:.2f} s, "
          f"{ours:,.0f} steps/s, mean return last 10 updates {ret:.1f}")
    if use_rejax:
        fn = rejax_train_fn(env, ep, steps)
        c2, r2, _ = timed(fn, jax.random.key(0))
        ref = steps / r2
        print(f"rejax  CartPole-v1 1 seed: {steps} steps, compile {c2:.1f} s, run {r2:.2f} s, "
              f"{ref:,.0f} steps/s")
        print(f"ratio ours/rejax: {ours / ref:.2f}")
    cfg_s = PPOConfig(total_timesteps=seeds_total, **MATCHED)
    steps_s = cfg_s.num_updates * cfg_s.batch_size
    train_s = jax.vmap(make_train(cfg_s, env), (0, None))
    for s in seed_counts:
        c, r, _ = timed(train_s, jax.random.split(jax.random.key(1), s), ep)
        print(f"ours   vmap {s:3d} seeds x {steps_s} steps: compile {c:.1f} s, run {r:.2f} s, "
              f"{s * steps_s / r:,.0f} steps/s")


# --------------------------------------------------------------------------- TradingEnv
def regime_market(seed: int = 0, n_paths: int = 16, n_bars: int = 600, sub: int = 8):
    """Regime-switching GBM bars (persistent drift regimes, ``trend`` = regime sign)."""
    from tpfl_jax.market.types import make_market_data

    rng = np.random.default_rng(seed)
    switch = rng.random((n_paths, n_bars)) < 1 / 60
    regime = (np.cumsum(switch, 1) + rng.integers(0, 2, (n_paths, 1))) % 2
    trend = np.where(regime == 1, 1.0, -1.0)
    drift = trend * 0.002 / sub
    r = rng.normal(0, 0.01 / np.sqrt(sub), (n_paths, n_bars, sub)) + drift[..., None]
    lp = np.log(100) + np.cumsum(r.reshape(n_paths, -1), 1).reshape(n_paths, n_bars, sub)
    return make_market_data(np.exp(lp[..., 0]), np.exp(lp.max(-1)), np.exp(lp.min(-1)),
                            np.exp(lp[..., -1]), volume=np.full((n_paths, n_bars), 1e6),
                            regime=regime, trend=trend)


TRADING_CFG = dict(num_envs=16, num_steps=64, update_epochs=4, num_minibatches=4, lr=3e-4)
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def trading_setup(total: int):
    from tpfl_jax.env.trading import TradingEnv

    env = TradingEnv(window=16)
    params = env.make_params(regime_market(), max_steps_in_episode=256)
    return env, params, PPOConfig(total_timesteps=total, **TRADING_CFG)


def trading_single(weight: float, seed: int, total: int) -> None:
    """One configuration, as a separate process would run it (used for the sequential timing)."""
    t0 = time.perf_counter()
    env, params, cfg = trading_setup(total)
    train = jax.jit(make_train(cfg, env, params, info_metrics=train_info_metrics))
    out = jax.block_until_ready(train(jax.random.key(seed),
                                      params.replace(tp_reward_weight=jnp.float32(weight))))
    print(f"single {weight} {seed}: {time.perf_counter() - t0:.2f} s "
          f"{float(out.metrics['trade/hit_rate'][-1]):.3f}")


def trading_sweep(total: int, n_seq: int) -> None:
    """8 weights x 4 seeds in one vmapped program vs separate processes (``n_seq`` timed)."""
    env, params, cfg = trading_setup(total)
    steps = cfg.num_updates * cfg.batch_size
    w = jnp.asarray(WEIGHTS, jnp.float32)
    eps = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(WEIGHTS), *jnp.shape(x))), params)
    eps = eps.replace(tp_reward_weight=w)
    train = make_train(cfg, env, params, info_metrics=train_info_metrics)
    sweep = jax.vmap(jax.vmap(train, (0, None)), (None, 0))
    t_all = time.perf_counter()
    c, r, out = timed(sweep, jax.random.split(jax.random.key(0), 4), eps)
    wall = time.perf_counter() - t_all
    n = len(WEIGHTS) * 4
    print(f"trading sweep {len(WEIGHTS)} weights x 4 seeds x {steps} steps: compile {c:.1f} s, "
          f"run {r:.2f} s, {n * steps / r:,.0f} steps/s, wall {wall:.1f} s")
    # last 5 updates (nan-mean: an update in which no episode ended has no episode return)
    m = {k: np.nanmean(np.asarray(v)[:, :, -5:], axis=(1, 2)) for k, v in out.metrics.items()}
    print("weight | ep_return | trades/upd | tp_hit_rate | mean_tp_mult | mean_r | tp_zone_acc")
    for i, wt in enumerate(WEIGHTS):
        print(f"{wt:6.2f} | {m['episode_return'][i]:9.2f} | {m['trade/trades'][i]:10.1f} | "
              f"{m['trade/hit_rate'][i]:11.3f} | {m['trade/mean_tp_mult'][i]:12.3f} | "
              f"{m['trade/mean_r'][i]:6.3f} | {m['trade/tp_zone_accuracy'][i]:.3f}")
    seq = []
    for i in range(n_seq):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--trading-single", str(WEIGHTS[i % 8]),
                        str(i % 4), str(total)], check=True, capture_output=True)
        seq.append(time.perf_counter() - t0)
    est = float(np.mean(seq)) * n
    print(f"separate processes: {n_seq} timed, mean {np.mean(seq):.1f} s each -> {n} configs "
          f"~{est:.0f} s; speed-up of the vmapped sweep (wall incl. compile) {est / wall:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short budgets")
    ap.add_argument("--no-rejax", action="store_true")
    ap.add_argument("--no-trading", action="store_true")
    ap.add_argument("--no-cartpole", action="store_true")
    ap.add_argument("--trading-single", nargs=3, metavar=("WEIGHT", "SEED", "TOTAL"))
    a = ap.parse_args()
    if a.trading_single:
        trading_single(float(a.trading_single[0]), int(a.trading_single[1]),
                       int(a.trading_single[2]))
        return
    print(f"jax {jax.__version__} devices {jax.devices()}")
    if not a.no_cartpole:
        if a.quick:
            cartpole(100_352, [1, 16], 51_200, not a.no_rejax)
        else:
            cartpole(500_224, [1, 16, 64], 102_400, not a.no_rejax)
    if not a.no_trading:
        trading_sweep(65_536 if a.quick else 262_144, 2 if a.quick else 4)


if __name__ == "__main__":
    main()
