"""Stable-Baselines3 PPO (torch CPU) vs our JAX PPO on the same trading MDP, same process.

Three learners, same hyperparameters and the same number of env steps:

* ``jax``      -- ``tpfl_jax.agents.ppo`` on ``TradingEnv`` (one jitted program);
* ``sb3_gymnax`` -- SB3 PPO on ``TradingEnv`` through gymnax's ``GymnaxToGymWrapper``
  (one jitted JAX step per env step, driven from Python);
* ``sb3_numpy``  -- SB3 PPO on ``benchmarks/np_trading_env.py``, the plain numpy/gymnasium port
  (checked step for step against ``TradingEnv`` by ``tests/test_np_trading_env.py``).

Reported: env-steps/s (total steps / wall time of training; JAX compile time separately), the
ratio JAX / SB3, the split of training time into rollout and SGD (SB3: time inside
``PPO.train``; JAX with ``--split``: from an extra 1-epoch run), and the final evaluation return
of every learner (deterministic policy, the same fixed episodes on held-out synthetic paths, run
in the numpy port). Hyperparameter matching:
SB3's value loss is ``mse`` while ours is ``0.5 * mse``, so SB3 gets ``vf_coef / 2``; value
clipping is off in both; the learning rate is annealed linearly in both or in neither (per
``--preset``, see ``_bench.PRESETS``); same 64x64 tanh actor and critic.
Needs the ``bench`` extra (torch, stable-baselines3, gymnasium).

    python benchmarks/sb3_compare.py --quick        # 4 envs, < ~1 min on 2 cores
    python benchmarks/sb3_compare.py                # 8 / 64 / 256 envs, 65,536 steps each

SB3's ``DummyVecEnv`` steps its envs one by one in Python, so its env-steps/s barely moves with
the number of envs, while one jitted JAX program gets faster per step as the batch grows: the
ratio is reported per env count (same hyperparameters and steps for both at each count).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import PRESETS, machine, run_jax, write_csv  # noqa: E402
from np_trading_env import NumpyTradingEnv  # noqa: E402

from tpfl_jax.agents.networks import make_network  # noqa: E402
from tpfl_jax.agents.ppo import PPOConfig, make_train, policy_action  # noqa: E402
from tpfl_jax.env.trading import TradingEnv  # noqa: E402
from tpfl_jax.market import synthetic  # noqa: E402


def eval_episodes(policy, env_np: NumpyTradingEnv, starts: list[tuple[int, int]]) -> float:
    """Mean return of ``policy(obs) -> action`` over fixed ``(path, bar)`` starts."""
    rets = []
    for p, b in starts:
        obs, _ = env_np.reset(options={"path": p, "bar": b})
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env_np.step(policy(obs))
            total += r
            done = term or trunc
        rets.append(total)
    return float(np.mean(rets))


def run_sb3(cfg: PPOConfig, make_env, seed: int, threads: int):
    import torch

    torch.set_num_threads(threads)
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv([lambda i=i: make_env(seed * 1000 + i) for i in range(cfg.num_envs)])
    model = PPO(
        "MlpPolicy", vec, n_steps=cfg.num_steps, batch_size=cfg.minibatch_size,
        n_epochs=cfg.update_epochs,
        learning_rate=(lambda frac: cfg.lr * frac) if cfg.anneal_lr else cfg.lr, gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_eps, clip_range_vf=None,
        normalize_advantage=cfg.normalize_advantages, ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef / 2.0, max_grad_norm=cfg.max_grad_norm,
        policy_kwargs=dict(net_arch=dict(pi=list(cfg.widths), vf=list(cfg.widths)),
                           activation_fn=torch.nn.Tanh), device="cpu", seed=seed, verbose=0)
    sgd = [0.0]
    train = model.train

    def timed_train() -> None:            # SB3's SGD phase; the rest of learn() is the rollout
        t = time.perf_counter()
        train()
        sgd[0] += time.perf_counter() - t

    model.train = timed_train
    t0 = time.perf_counter()
    model.learn(total_timesteps=cfg.total_timesteps)
    return model, time.perf_counter() - t0, sgd[0]


def compare(n_envs: int, args, env, params, eval_env, starts) -> list[dict]:
    """Every learner at ``n_envs`` parallel envs (same hyperparameters, same env steps)."""
    from gymnax.wrappers.gym import GymnaxToGymWrapper

    cfg = PPOConfig(num_envs=n_envs, total_timesteps=args.steps, widths=(64, 64),
                    activation="tanh", lr=3e-4, clip_value_loss=False,
                    **PRESETS[args.preset](n_envs))
    steps = cfg.num_updates * cfg.batch_size
    cfg = PPOConfig(**{**cfg.__dict__, "total_timesteps": steps})
    print(f"\nPPO: {cfg.num_envs} envs x {cfg.num_steps} steps, {cfg.num_updates} updates = "
          f"{steps:,} env steps each; eval: {len(starts)} held-out episodes", flush=True)
    base = dict(preset=args.preset, envs=n_envs, updates=cfg.num_updates)
    rows = []
    out, compile_s, run_s = run_jax(cfg, env, params, args.seed, args.repeats)
    network = make_network(env, params, cfg.widths, cfg.activation, cfg.shared_torso,
                           cfg.init_log_std)
    act = jax.jit(lambda p, o: policy_action(network, p, o, None))
    jret = eval_episodes(lambda o: int(act(out.params, o)), eval_env, starts)
    sgd_s = float("nan")
    if args.split:   # SGD share from a 1-epoch run: E epochs cost t1 + (E - 1) x (one epoch)
        cfg1 = PPOConfig(**{**cfg.__dict__, "update_epochs": 1})
        t1 = run_jax(cfg1, env, params, args.seed, args.repeats)[2]
        sgd_s = (run_s - t1) / (cfg.update_epochs - 1) * cfg.update_epochs
    rows.append(dict(base, learner="jax", env="TradingEnv (jax)", steps=steps, train_s=run_s,
                     sgd_s=sgd_s, rollout_s=run_s - sgd_s, compile_s=compile_s,
                     steps_per_s=steps / run_s,
                     steps_per_s_incl_compile=steps / (run_s + compile_s), eval_return=jret))
    if args.vmap_seeds:
        n = args.vmap_seeds
        train_n = jax.jit(jax.vmap(make_train(cfg, env, params), (0, None)))
        keys = jax.random.split(jax.random.key(args.seed), n)
        t0 = time.perf_counter()
        compiled = train_n.lower(keys, params).compile()
        c_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs = jax.block_until_ready(compiled(keys, params))
        r_s = time.perf_counter() - t0
        p0 = jax.tree.map(lambda x: x[0], outs.params)
        rows.append(dict(base, learner=f"jax_{n}seeds", env="TradingEnv (jax), vmap over seeds",
                         steps=n * steps, train_s=r_s, sgd_s=float("nan"),
                         rollout_s=float("nan"), compile_s=c_s, steps_per_s=n * steps / r_s,
                         steps_per_s_incl_compile=n * steps / (r_s + c_s),
                         eval_return=eval_episodes(lambda o: int(act(p0, o)), eval_env, starts)))
    rand = np.random.default_rng(0)
    rret = eval_episodes(lambda o: int(rand.integers(env.num_actions)), eval_env, starts)
    rows.append(dict(base, learner="random", env="-", steps=0, train_s=0.0, sgd_s=0.0,
                     rollout_s=0.0, compile_s=0.0,
                     steps_per_s=float("nan"), steps_per_s_incl_compile=float("nan"),
                     eval_return=rret))
    makers = {
        "sb3_gymnax": ("TradingEnv via GymnaxToGymWrapper",
                       lambda s: GymnaxToGymWrapper(env, params, seed=s)),
        "sb3_numpy": ("numpy port", lambda s: NumpyTradingEnv.from_jax(env, params, seed=s)),
    }
    for name, (desc, make_env) in makers.items():
        if name in args.skip or (name == "sb3_gymnax" and n_envs > args.gymnax_max_envs):
            continue
        model, run_s, sgd_s = run_sb3(cfg, make_env, args.seed, args.torch_threads)
        for _ in range(args.repeats - 1):      # best of N (the seeded runs are identical)
            _, r_s, g_s = run_sb3(cfg, make_env, args.seed, args.torch_threads)
            if r_s < run_s:
                run_s, sgd_s = r_s, g_s
        ret = eval_episodes(lambda o, m=model: int(m.predict(o, deterministic=True)[0]),
                            eval_env, starts)
        rows.append(dict(base, learner=name, env=desc, steps=steps, train_s=run_s,
                         sgd_s=sgd_s, rollout_s=run_s - sgd_s, compile_s=0.0,
                         steps_per_s=steps / run_s, steps_per_s_incl_compile=steps / run_s,
                         eval_return=ret))
    jax_sps = rows[0]["steps_per_s"]
    jax_sps_c = rows[0]["steps_per_s_incl_compile"]
    for r in rows:
        sb3 = r["learner"].startswith("sb3")
        r["jax_ratio"] = jax_sps / r["steps_per_s"] if sb3 else float("nan")
        r["jax_ratio_incl_compile"] = jax_sps_c / r["steps_per_s"] if sb3 else float("nan")
        # N seeds in one JAX program vs the same N seeds as N SB3 runs (same steps/s each)
        r["jax_seeds_ratio"] = (rows[1]["steps_per_s"] / r["steps_per_s"]
                                if sb3 and args.vmap_seeds else float("nan"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="4 envs, 2,048 steps, 16 eval episodes, no vmapped-seeds row")
    ap.add_argument("--envs", type=int, nargs="+", default=[8, 64, 256],
                    help="parallel envs per learner; one comparison per value")
    ap.add_argument("--steps", type=int, default=65_536, help="env steps per learner")
    ap.add_argument("--eval-episodes", type=int, default=32)
    ap.add_argument("--skip", nargs="*", default=[], choices=["sb3_gymnax", "sb3_numpy"])
    ap.add_argument("--gymnax-max-envs", type=int, default=8,
                    help="run SB3 through the gymnax wrapper only up to this many envs (it "
                         "does ~100 steps/s: 65,536 steps take ~10 min)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="matched",
                    help="hyperparameters given to both learners (see PRESETS)")
    ap.add_argument("--split", action="store_true",
                    help="also split JAX time into rollout and SGD (extra 1-epoch runs); "
                         "SB3's split is always measured")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time every learner this many times and keep the best (JAX and SB3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vmap-seeds", type=int, default=0,
                    help="extra row: this many seeds of the same JAX PPO in one program (0: off)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch CPU threads for SB3 (1: SB3's advice for small MLPs on CPU)")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    if args.quick:
        args.envs, args.steps, args.eval_episodes, args.vmap_seeds = [4], 2048, 16, 0

    env = TradingEnv(features="base")      # the observation the NumPy port computes
    params = env.make_params(synthetic.generate("regime", jax.random.key(0), 64, 1024))
    eval_params = env.make_params(synthetic.generate("regime", jax.random.key(1), 64, 1024))
    eval_env = NumpyTradingEnv.from_jax(env, eval_params)
    rng = np.random.default_rng(123)
    n_starts = eval_env.n_bars - eval_env.max_steps - 1 - eval_env.window
    starts = [(int(rng.integers(eval_env.n_paths)), eval_env.window + int(rng.integers(n_starts)))
              for _ in range(args.eval_episodes)]
    print(f"machine: {machine()}")
    rows: list[dict] = []
    for n in args.envs:
        rows += compare(n, args, env, params, eval_env, starts)
        write_csv(rows, "sb3_compare.csv", args.csv)       # after every env count

    print(f"\n{'envs':>5} {'learner':>11} {'env':>34} {'train s':>8} {'rollout s':>9} "
          f"{'sgd s':>6} {'steps/s':>10} {'jax x':>6} {'jax x (incl. compile)':>21} "
          f"{'jax seeds x':>12} "
          f"{'eval return':>11}")
    for r in rows:
        print(f"{r['envs']:>5} {r['learner']:>11} {r['env']:>34} {r['train_s']:>8.2f} "
              f"{r['rollout_s']:>9.2f} {r['sgd_s']:>6.2f} {r['steps_per_s']:>10,.0f} "
              f"{r['jax_ratio']:>6.1f} {r['jax_ratio_incl_compile']:>21.1f} "
              f"{r['jax_seeds_ratio']:>12.1f} "
              f"{r['eval_return']:>11.2f}")
    for r in rows:
        if r["learner"] == "jax":
            print(f"jax compile at {r['envs']} envs: {r['compile_s']:.1f} s")


if __name__ == "__main__":
    main()
