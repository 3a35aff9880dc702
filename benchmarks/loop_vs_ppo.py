"""The closed loop against its parts, at the same sizes, in one process (same-run ratios).

Compiles and times, for one config (default: the default ``tpfl-loop``):

* ``loop``: the whole loop program (every arm x seed x cycle: PPO training, learning-curve
  evaluations, both deployments, stats and the policy step);
* ``ppo``: PPO alone on the same data stream, the same agents and updates
  (``arms x seeds`` runs of ``cycles x updates``, vmapped as the loop vmaps them: the arms of a
  seed share its keys, so they train on the same fresh paths and generate them once);
* ``deploy``: both deploy modes alone (``arms x seeds x cycles`` rollouts of ``deploy_envs``
  episodes): one held-out evaluation; the loop runs one after every training chunk (the
  learning curve; the last is the deployment);

and prints env-steps/s of training, the loop / PPO-alone ratio and the profile table (share of
the loop's time per part). Usage:

    python benchmarks/loop_vs_ppo.py [overrides ...] [--repeats 2] [--csv F]

Overrides are Hydra overrides of ``tpfl-loop`` (e.g. ``experiment=study loop.num_cycles=1``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _bench import machine, write_csv


def build(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from tpfl_jax.app import CONFIG_DIR
    from tpfl_jax.config import to_container, to_objects
    from tpfl_jax.pipelines.markets import build_market

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        c = to_container(compose(config_name="config", overrides=overrides))
    obj = to_objects(c)
    spec, source, env_params = build_market(c, obj.env, obj.env_kwargs)
    return c, obj, spec, source, env_params


def timed(fn, args, repeats: int) -> tuple[float, float]:
    """(compile s, best run s) of ``fn`` jitted as tpfl-loop jits (``distributed.jit``)."""
    from tpfl_jax import distributed as D

    t0 = time.perf_counter()
    compiled = D.jit(fn).lower(*args).compile()
    comp = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    return comp, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--csv", default=None)
    a = ap.parse_args()

    from tpfl_jax import accounting as A
    from tpfl_jax.loop import (
        DEPLOY_MODES,
        cycle_keys,
        make_loop,
        make_loop_policy,
        seed_keys,
        stack_policies,
    )
    from tpfl_jax.sweeps import make_loop_sweep

    c, obj, spec, source, ep = build(a.overrides)
    n_p, n_s, n_c = len(obj.policy_names), obj.num_seeds, obj.loop.num_cycles
    ppo_cfg = obj.ppo
    n_u = ppo_cfg.num_updates
    steps = n_p * n_s * n_c * n_u * ppo_cfg.batch_size
    policies = stack_policies([make_loop_policy(k, w, h, **p) for k, w, p, h in zip(
        obj.policy_kinds, obj.initial_weights, obj.policy_params, obj.policy_histories,
        strict=True)])
    keys = seed_keys(obj.seed, n_s)
    hp = ppo_cfg.hparams()
    rows = {}

    loop = make_loop(obj.loop, ppo_cfg, obj.env, spec, ep)
    rows["loop"] = timed(make_loop_sweep(loop, mesh_cfg=obj.mesh), (keys, policies, source, ep, hp),
                         a.repeats)
    prog = loop.run_one.__self__          # the LoopProgram: its PPO with the data stream
    ppo = prog.ppo

    # the loop's layout: arms x seeds with common random numbers (every arm of a seed trains
    # on the same fresh paths, so the stream's market generation is shared across arms, as
    # vmap leaves values that do not depend on the arm unbatched), arms differ by their weight
    weights = policies.initial_weight

    def ppo_alone(keys, weights, source, ep, hp):
        def one(key, w):
            k = cycle_keys(key, 0)
            train_m, _ = spec.cycle_markets(source, k.market, 0)
            p = ep.replace(market=train_m, tp_reward_weight=w)
            rs = ppo.init(k.init, p, hp, source)
            return ppo.run(rs, p, n_c * n_u)[1]["loss"].mean()
        return jax.vmap(jax.vmap(one, (0, None)), (None, 0))(keys, weights)

    rows["ppo"] = timed(ppo_alone, (keys, weights, source, ep, hp), a.repeats)

    def deploy_alone(keys, source, ep):
        def one(key, arm, c_):
            k = cycle_keys(key, c_)
            _, dep = spec.cycle_markets(source, k.market, c_)
            p = ep.replace(market=dep)
            # each arm its own network (as after training), the seed's common deploy episodes
            rs = ppo.init(jax.random.fold_in(k.init, arm), p, hp, source)
            out = prog.both_modes(rs, p, A.episode_keys(k.deploy, obj.loop.deploy_envs))
            return out.sums.pnl.mean()
        arms, cyc = jnp.arange(n_p), jnp.arange(n_c, dtype=jnp.int32)
        # arms x seeds x cycles: keys [S], arms [P], cycles [C]
        return jax.vmap(jax.vmap(jax.vmap(one, (None, None, 0)), (0, None, None)),
                        (None, 0, None))(keys, arms, cyc)

    rows["deploy"] = timed(deploy_alone, (keys, source, ep), a.repeats)

    print(f"machine: {machine()}")
    print(f"config: {' '.join(a.overrides) or 'default'}: {n_p} arms x {n_s} seeds x {n_c} "
          f"cycles x {n_u} updates x {ppo_cfg.batch_size} steps = {steps / 1e6:.1f}M training "
          f"env steps; {len(DEPLOY_MODES)} x {obj.loop.deploy_envs} deploy episodes")
    print(f"{'part':>16} {'compile s':>10} {'run s':>8} {'train env-steps/s':>18}")
    out = []
    for name, (comp, run) in rows.items():
        sps = steps / run if name != "deploy" else float("nan")
        print(f"{name:>16} {comp:>10.1f} {run:>8.2f} {sps:>18,.0f}")
        out.append({"part": name, "compile_s": comp, "run_s": run, "train_sps": sps})
    ratio = rows["ppo"][1] / rows["loop"][1]
    print(f"loop / PPO alone (training env-steps/s): {ratio:.2f}")
    loop_s = rows["loop"][1]
    n_chunks = n_u // obj.loop.chunk_updates   # a held-out evaluation after every chunk
    share = {"PPO training": rows["ppo"][1],
             "held-out evaluations (learning curves, the last = deployment)":
                 rows["deploy"][1] * n_chunks}
    share["rest (stats, policy, carries)"] = loop_s - sum(share.values())
    print("profile of the loop's run time: " + ", ".join(f"{k} {v / loop_s:.0%}"
                                                           for k, v in share.items()))
    out.append({"part": "ratio_loop_over_ppo", "compile_s": float("nan"), "run_s": ratio,
                "train_sps": float("nan")})
    write_csv(out, "loop_vs_ppo.csv", a.csv)


if __name__ == "__main__":
    main()
