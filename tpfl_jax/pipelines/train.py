"""``tpfl-train``: ``train.weights`` x ``train.num_seeds`` PPO agents scored on held-out episodes
after every chunk of updates (the learning curve) and at the end, beside the reference rules on
the same episodes (parameters chosen on training data)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from tpfl_jax import accounting, distributed, report, results
from tpfl_jax.agents.evaluate import deploy_both_modes
from tpfl_jax.agents.networks import make_network
from tpfl_jax.agents.runner import Runner, jsonable
from tpfl_jax.baselines import make_references, reference_candidates
from tpfl_jax.config import Config, Objects, to_objects
from tpfl_jax.config_checks import check_train
from tpfl_jax.env.frames import trades_frame
from tpfl_jax.errors import UserError
from tpfl_jax.guard import check_divergence
from tpfl_jax.pipelines.audit import reward_audit
from tpfl_jax.pipelines.common import RunPlan, market_line, save_final, setup_jax, user_inputs
from tpfl_jax.pipelines.markets import build_market, write_market
from tpfl_jax.resources import check_run_memory, memory_line, run_footprint, wall_time_estimate
from tpfl_jax.rundir import atomic, write_frame
from tpfl_jax.sweeps import make_ppo_sweep

DEFAULT_CHUNK = 10   # train.chunk_updates unset: the largest divisor of the updates <= this


def chunk_updates(c: Config, num_updates: int) -> int:
    """Updates between learning-curve points: ``train.chunk_updates``, or when unset the
    largest divisor of ``num_updates`` that is at most ``DEFAULT_CHUNK``. Several weights run
    as one program, which needs a chunk that divides the updates: an explicit one that does
    not is a ``UserError``."""
    n_u, k = num_updates, c.train.chunk_updates
    if k is None:
        return max(d for d in range(1, min(DEFAULT_CHUNK, n_u) + 1) if n_u % d == 0)
    if len(c.train.weights) > 1 and n_u % min(k, n_u):
        raise UserError(f"config.train.chunk_updates = {k}: must divide the {n_u} PPO updates "
                        "(ppo.total_timesteps // (num_envs x num_steps)) to score several "
                        "weights in one program; leave it unset (null) to derive one")
    return min(k, n_u)


@dataclass(frozen=True)
class TrainJob:
    """What every weight and seed of a train run shares: the training and held-out params,
    the held-out episode keys (the curve uses the first ``curve_n``), the data stream and its
    source (None on replayed data), steps per episode, the reference rows and their
    per-episode greedy PnL, and a note on the training data."""

    train_params: Any
    test_params: Any
    eval_keys: jax.Array
    curve_n: int
    stream: Any
    source: Any
    steps: int
    chunk: int
    references: pd.DataFrame
    ref_pnl: dict[str, np.ndarray]
    data_note: str

    @property
    def curve_keys(self) -> jax.Array:
        return self.eval_keys[:self.curve_n]


@dataclass(frozen=True)
class FinalEval:
    """Both deploy modes of every weight x seed on the held-out episodes: one-cycle rows for
    ``results.summary_frame``, the greedy per-episode PnL ``[K, S, E]`` and the trades."""

    cycles: pd.DataFrame
    greedy_pnl: np.ndarray
    trades: pd.DataFrame


@dataclass(frozen=True)
class TrainRun:
    """A finished ``tpfl-train`` run: per weight x seed summary, levels beside the references,
    the paired table against the references and the learning curves."""

    summary: pd.DataFrame
    levels: pd.DataFrame
    vs_references: pd.DataFrame
    curves: pd.DataFrame


def prepare(c: Config, check_memory: bool = True) -> tuple[Objects, list[float], int]:
    """Every check of a train config that needs no data: objects, weights, chunk, memory."""
    obj = to_objects(c)
    check_train(c)
    weights = [float(w) for w in c.train.weights]
    chunk = chunk_updates(c, obj.ppo.num_updates)
    if check_memory:
        _footprint(c, obj, len(weights), check=True)
    return obj, weights, chunk


def _footprint(c: Config, obj: Objects, n_weights: int, check: bool) -> dict[str, int]:
    fn = check_run_memory if check else run_footprint
    return fn(c, obj.ppo, "train", n_weights * c.train.num_seeds, obs_size=obj.env.obs_size,
              n_actions=obj.env.num_actions, deploy_envs=c.train.eval_episodes)


def plan(c: Config) -> RunPlan:
    """What ``tpfl-train`` would run, after every check a run makes before it compiles."""
    obj, weights, chunk = prepare(c, check_memory=False)
    with user_inputs():
        spec, source, _ = build_market(c, obj.env, obj.env_kwargs)
    n_s, ppo = c.train.num_seeds, obj.ppo
    steps = ppo.num_updates * ppo.batch_size
    how = ("the resumable runner (checkpoints every chunk)" if len(weights) == 1
           else "one program over the mesh")
    lines = (f"tpfl-train: {len(weights)} weights {weights} x {n_s} seeds = "
             f"{len(weights) * n_s} agents, {how}",
             f"per agent: {steps:,} env steps, {ppo.num_updates} PPO updates; a learning-curve "
             f"point every {chunk} updates on {c.train.curve_episodes} held-out episodes, "
             f"{c.train.eval_episodes} at the end",
             market_line(c, spec, source, obj.env.lookback),
             memory_line(_footprint(c, obj, len(weights), check=False),
                         len(weights) * n_s, c.guard),
             "wall time: " + wall_time_estimate(len(weights) * n_s * steps))
    try:
        _footprint(c, obj, len(weights), check=True)
    except UserError as e:
        return RunPlan("train", lines, str(e))
    return RunPlan("train", lines)


def run(c: Config, out: Path, cache_dir: Path | None = None) -> TrainRun | None:
    """Train and score. One weight on one process: the resumable runner (orbax checkpoints
    every chunk); otherwise one program sharded over ``config.mesh``. Process 0 writes the
    artefacts and returns the :class:`TrainRun`; the other processes return None."""
    obj, weights, chunk = prepare(c)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    with user_inputs():
        spec, source, env_params = build_market(c, obj.env, obj.env_kwargs)
    job = make_job(c, obj, spec, source, env_params, chunk)
    if len(weights) == 1 and jax.process_count() == 1:
        params, obs_rms = train_runner(c, obj, job, weights[0], out)
    else:
        trained = train_sweep(c, obj, job, weights, out)
        if trained is None:                      # multi-host: process 0 writes the artefacts
            return None
        params, obs_rms = trained
    ev = final_eval(c, obj, job, weights, params, obs_rms)
    r = write_run(c, obj, job, weights, ev, out)
    write_market(out, spec, source, c.seed)
    r_audit = reward_audit(c, obj.env, env_params, spec, source, out, quiet=True)
    write_report(c, job, weights, r, out, r_audit.text() if r_audit else None,
                 num_steps=obj.ppo.num_updates * obj.ppo.batch_size,
                 audit_summary=r_audit.summary if r_audit else None)
    return r


def make_job(c: Config, obj: Objects, spec: Any, source: Any, env_params: Any,
             chunk: int) -> TrainJob:
    """The held-out data of a train run (shared by every weight and seed:
    ``accounting.cycle_keys`` of ``key(seed)``, cycle 0), its episode keys, the data stream and
    the reference rules (parameters chosen on the training market) on those episodes."""
    t = int(c.env.max_steps_in_episode)
    try:       # the held-out window must exist in full (no clamped slice into training bars)
        spec.check(source, 1, obj.env.lookback + t + 2)
    except ValueError as e:
        raise UserError(f"config.market / config.env ({c.market.path or c.market.kind}): "
                        f"{e}") from None
    seed_key = jax.random.key(c.seed)
    keys = accounting.cycle_keys(seed_key, 0)
    train_m, test_m = spec.cycle_markets(source, keys.market, 0)
    n_eval = c.train.eval_episodes
    has_labels = c.market.source == "synthetic"
    run_refs = make_references(obj.env, spec, 1, n_eval, t, select_episodes=max(64, n_eval),
                               has_labels=has_labels)
    out = jax.device_get(run_refs(seed_key[None], source, env_params))
    refs = results.reference_frame(out, reference_candidates(obj.env, has_labels),
                                   c.train.curve_episodes)
    stream = spec.stream(obj.env, obj.ppo.num_envs, obj.ppo.num_steps, t)
    bars = spec.distinct_train_bars(source, obj.env.lookback)
    steps = obj.ppo.num_updates * obj.ppo.batch_size
    if bars is None:
        note = (f"generated paths drawn fresh every update ({steps} env steps per agent, no "
                "bar seen twice)")
    elif stream is not None:          # a block bootstrap: new paths, reused real bars
        note = (f"block-bootstrap paths drawn fresh every update from {bars:.0f} distinct real "
                f"training bars ({steps} env steps per agent: each bar recurs "
                f"{steps / bars:.1f} times, in new orders)")
    else:
        note = (f"{steps} env steps per agent over {bars:.0f} distinct training bars "
                f"(repetition {steps / bars:.1f})")
    return TrainJob(
        train_params=env_params.replace(market=train_m),
        test_params=env_params.replace(market=test_m),
        eval_keys=accounting.episode_keys(keys.deploy, n_eval), curve_n=c.train.curve_episodes,
        stream=stream, source=spec.train_source(source, 0) if stream is not None else None,
        steps=t, chunk=chunk,
        references=refs, data_note=note,
        ref_pnl={fam: np.asarray(s.pnl)[0, 0] for fam, (s, _) in out.items()})


def _network(obj: Objects, job: TrainJob) -> Any:
    ppo = obj.ppo
    return make_network(obj.env, job.test_params, ppo.widths, ppo.activation,
                        ppo.shared_torso, ppo.init_log_std)


def curve_eval(obj: Objects, job: TrainJob):
    """``evaluate(runner_state, (test_params, keys)) -> {curve/greedy_pnl, curve/sampled_pnl}``:
    held-out PnL per episode of one agent in both deploy modes (``accounting``)."""
    ppo, network = obj.ppo, _network(obj, job)

    def evaluate(rs: Any, args: Any) -> dict[str, Any]:
        params, keys = args
        rms = rs.obs_rms if ppo.normalize_obs else None
        played = deploy_both_modes(obj.env, network, rs.params, params, keys,
                                              job.steps, rms, ppo.obs_clip)
        pnl = accounting.finalize(played.sums)["pnl"]
        return {f"curve/{m}_pnl": pnl[i] for i, m in enumerate(accounting.DEPLOY_MODES)}

    return evaluate


def train_runner(c: Config, obj: Objects, job: TrainJob, weight: float,
                 out: Path) -> tuple[Any, Any]:
    """One weight x seeds with the resumable runner; params ``[1, S, ...]``."""
    evaluate = curve_eval(obj, job)
    args = (job.test_params, job.curve_keys)
    scored = distributed.jit(jax.vmap(lambda rs: evaluate(rs, args)))
    runner = Runner(obj.ppo, obj.env, job.train_params.replace(
        tp_reward_weight=jnp.float32(weight)), out, seed=c.seed, num_seeds=c.train.num_seeds,
        chunk_updates=job.chunk, checkpoint_every=job.chunk,
        progress=c.progress, guard=c.guard, info_metrics=accounting.train_info_metrics,
        stream=job.stream, source=job.source, log_fields={"weight": weight},
        on_chunk=lambda rs, u: jax.device_get(scored(rs)))
    r = runner.run()
    runner.close()
    rs = r.runner_state
    return (jax.tree.map(lambda x: np.asarray(x)[None], rs.params),
            jax.tree.map(lambda x: np.asarray(x)[None], rs.obs_rms))


def train_sweep(c: Config, obj: Objects, job: TrainJob, weights: list[float],
                out: Path) -> tuple[Any, Any] | None:
    """Weights x seeds as one program sharded over ``config.mesh``; params ``[K, S, ...]``
    (None on processes other than 0)."""
    n_u, chunk = obj.ppo.num_updates, job.chunk
    mesh = distributed.make_mesh(obj.mesh)
    sweep = make_ppo_sweep(obj.ppo, obj.env, mesh, obj.mesh, env_params=job.train_params,
                           hooks={"info_metrics": accounting.train_info_metrics,
                                  "stream": job.stream},
                           evaluate=curve_eval(obj, job), every=chunk)
    n_s = c.train.num_seeds
    print(f"training {len(weights)} weights x {n_s} seeds as one program on "
          f"{mesh.size} device(s) ...", flush=True)
    t0 = time.perf_counter()
    result = distributed.gather(jax.block_until_ready(sweep(
        accounting.seed_keys(c.seed, n_s), weights, job.train_params, job.source,
        (job.test_params, job.curve_keys))))
    print(f"done in {time.perf_counter() - t0:.1f}s (compile included)")
    if jax.process_index() != 0:
        return None
    swap = lambda t: jax.tree.map(lambda x: np.swapaxes(np.asarray(x), 0, 1), t)  # noqa: E731
    m, ev = swap(result.metrics), swap(result.evals)                              # [K, S, ...]
    with atomic(out / "metrics.jsonl") as tmp, tmp.open("w") as f:
        for i, wt in enumerate(weights):
            for u in range(n_u):
                row = {"weight": wt, "update": u + 1}
                row.update({k: jsonable(v[i, :, u]) for k, v in m.items()})
                if (u + 1) % chunk == 0:
                    row.update({k: jsonable(v[i, :, (u + 1) // chunk - 1])
                                for k, v in ev.items()})
                f.write(json.dumps(row) + "\n")
    # metrics.jsonl above is the diagnosis; a diverged run writes nothing as good below
    check_divergence(m, c.guard, lambda i: f"tpfl-train weight {weights[i[0]]}, seed {i[1]}")
    params, obs_rms = swap(result.runner_state.params), swap(result.runner_state.obs_rms)
    save_final(out, {"params": params, "obs_rms": obs_rms})
    return params, obs_rms


def final_eval(c: Config, obj: Objects, job: TrainJob, weights: list[float],
               params: Any, obs_rms: Any) -> FinalEval:
    """Every weight x seed in both deploy modes on the held-out episodes, as one program. The
    plain ``deploy_*`` columns are ``loop.feedback_mode``'s mode, as in ``tpfl-loop``."""
    ppo, network = obj.ppo, _network(obj, job)

    def one(p: Any, rms: Any) -> accounting.Rollout:
        return deploy_both_modes(obj.env, network, p, job.test_params, job.eval_keys,
                                 job.steps, rms if ppo.normalize_obs else None, ppo.obs_clip,
                                 keep_trades=True)

    out = jax.device_get(distributed.jit(jax.vmap(jax.vmap(one)))(params, obs_rms))
    metrics = {k: np.asarray(v) for k, v in accounting.finalize(out.sums).items()}  # [K, S, 2]
    modes, fb = accounting.DEPLOY_MODES, c.loop.feedback_mode
    rows = []
    for i, wt in enumerate(weights):
        for s in range(c.train.num_seeds):
            row = {"policy": f"fixed_{wt}", "weight": wt, "seed": s, "cycle": 0}
            for j, mode in enumerate(modes):
                row |= {f"deploy_{mode}_{k}": float(v[i, s, j]) for k, v in metrics.items()}
            row |= {f"deploy_{k}": row[f"deploy_{fb}_{k}"] for k in metrics}
            rows.append(row)
    trades = trades_frame(out.trades, out.active,
                          index_names=("weight", "seed", "mode", "episode", "step"))
    trades["weight"] = np.asarray(weights)[trades["weight"].to_numpy()]
    trades["mode"] = np.asarray(modes)[trades["mode"].to_numpy()]
    first = ["episode", "step"]
    trades = trades[first + [k for k in trades if k not in (*first, "weight", "seed", "mode")]
                    + ["weight", "seed", "mode"]]
    return FinalEval(cycles=pd.DataFrame(rows), trades=trades,
                     greedy_pnl=np.asarray(out.sums.pnl)[:, :, modes.index("greedy")])


def write_run(c: Config, obj: Objects, job: TrainJob, weights: list[float], ev: FinalEval,
              out: Path) -> TrainRun:
    """The run's tables: trades, summary, references, curves, paired and levels."""
    write_frame(ev.trades, out / "trades.parquet")
    summary = results.summary_frame(ev.cycles)
    write_frame(summary, out / "summary.csv")
    write_frame(job.references, out / "references.csv")
    curves = results.train_curves(results.read_metrics_rows(out / "metrics.jsonl"),
                                  obj.ppo.batch_size)
    write_frame(curves, out / "curves.csv")
    vs = results.episode_paired(ev.greedy_pnl, job.ref_pnl, weights)
    write_frame(vs, out / "vs_references.csv")
    levels = results.levels_table(summary, results.reference_summary(job.references))
    write_frame(levels, out / "levels.csv")
    return TrainRun(summary=summary, levels=levels, vs_references=vs, curves=curves)


def write_report(c: Config, job: TrainJob, weights: list[float], r: TrainRun, out: Path,
                 audit: str | None, num_steps: int, audit_summary: dict | None = None) -> None:
    """``report.md`` with its figures, and the console summary (``audit_summary``:
    ``AuditResult.summary``, for the sentence on how the audit's references differ)."""
    units = report.units_text(c.env.initial_equity, c.env.max_steps_in_episode)
    mode = c.loop.feedback_mode
    plots = [report.plot_learning_curves(out / "learning_curves.png", r.curves, job.references,
                                         num_steps),
             report.plot_levels(out / "levels.png", r.levels, units=units)]
    lines = [f"Held-out: {c.train.eval_episodes} episodes of {c.env.max_steps_in_episode} steps "
             f"(the learning curve: the first {job.curve_n}); training data: "
             f"{job.data_note}.", "", "Greedy agent minus each reference rule, paired over "
             "the same held-out episodes (mean over seeds per episode; 95% t-interval over "
             "episodes; PnL per episode):", "", report.df_markdown(r.vs_references), "",
             *report.levels_legend(r.levels, "oos_pnl", mode, units, r.summary,
                                  "the held-out episodes"), "",
             report.levels_markdown(r.levels, "oos_pnl", mode, units)]
    note = (report.audit_note(audit_summary, c.audit.lookback or c.env.window,
                              "the held-out episodes above, parameters chosen on the training "
                              "market") if audit_summary else None)
    report.write_report(out, report.policy_table(r.summary), f"tpfl-train: weights {weights}",
                        plots, lines=lines, audit=audit, units=units, audit_note=note)
    pd.set_option("display.width", 160)
    print(r.levels.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(r.vs_references.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"plots and report: {out}")
