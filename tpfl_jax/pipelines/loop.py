"""``tpfl-loop``: the closed-loop experiment, policies x seeds sharded over ``config.mesh``, with
the reference rules, the reward audit, the paired statistics, the plots and the report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tpfl_jax import report, results, stats
from tpfl_jax.accounting import DEPLOY_MODES, episode_paths, seed_keys
from tpfl_jax.audit import AuditResult
from tpfl_jax.baselines import make_references, reference_candidates
from tpfl_jax.config import Config, Objects, to_objects
from tpfl_jax.distributed import gather
from tpfl_jax.errors import UserError
from tpfl_jax.guard import check_divergence
from tpfl_jax.loop import (
    Loop,
    LoopPolicy,
    LoopResult,
    check_inputs,
    make_loop,
    make_loop_policy,
    stack_policies,
)
from tpfl_jax.pipelines.audit import reward_audit
from tpfl_jax.pipelines.common import RunPlan, market_line, save_final, setup_jax, user_inputs
from tpfl_jax.pipelines.markets import build_market, deploy_symbols, write_market
from tpfl_jax.replay import all_deploy_trades
from tpfl_jax.resources import check_run_memory, memory_line, run_footprint, wall_time_estimate
from tpfl_jax.rundir import write_frame, write_text
from tpfl_jax.sweeps import make_loop_sweep


@dataclass(frozen=True)
class LoopFrames:
    """Every table of a loop run (``tpfl_jax.results``), the reference rules included."""

    cycles: pd.DataFrame
    summary: pd.DataFrame
    learning_curves: pd.DataFrame
    ref_cycles: pd.DataFrame
    ref_summary: pd.DataFrame
    levels: pd.DataFrame
    training: pd.DataFrame
    identical: list[tuple[str, ...]]
    hindsight: tuple[str, float] | None
    fresh_paths: bool = False     # training paths generated every update (no bar reused)
    episodes: pd.DataFrame | None = None   # every deploy episode of every arm and rule


@dataclass(frozen=True)
class LoopRun:
    """A finished ``tpfl-loop`` run: its tables, paired statistics per metric, the answer
    lines and the timings (seconds)."""

    frames: LoopFrames
    paired: dict[str, pd.DataFrame]
    answer: list[str]
    compile_s: float
    run_s: float


@dataclass(frozen=True)
class LoopSetup:
    """A loop run's checked inputs: objects, market spec and source, env params template,
    the loop and its stacked policies."""

    obj: Objects
    spec: Any
    source: Any
    env_params: Any
    loop: Loop
    policies: LoopPolicy


def setup(c: Config, obj: Objects) -> LoopSetup:
    """Every input of a loop run (``obj``: ``to_objects(c)``) built and checked on the host
    (nothing compiles)."""
    with user_inputs():
        spec, source, env_params = build_market(c, obj.env, obj.env_kwargs)
        loop = make_loop(obj.loop, obj.ppo, obj.env, spec, env_params, obj.policy_kinds)
        policies = stack_policies([make_loop_policy(k, w, h, **p) for k, w, p, h in zip(
            obj.policy_kinds, obj.initial_weights, obj.policy_params, obj.policy_histories,
            strict=True)])
        check_inputs(loop, source, obj.env, env_params, policies)
    return LoopSetup(obj, spec, source, env_params, loop, policies)


def _footprint(c: Config, obj: Objects, check: bool) -> dict[str, int]:
    fn = check_run_memory if check else run_footprint
    return fn(c, obj.ppo, "loop", len(obj.policy_names) * obj.num_seeds,
              obs_size=obj.env.obs_size, n_actions=obj.env.num_actions,
              cycles=obj.loop.num_cycles, deploy_envs=obj.loop.deploy_envs,
              keep_trades=obj.loop.keep_trades)


def plan(c: Config) -> RunPlan:
    """What ``tpfl-loop`` would run, after every check a run makes before it compiles."""
    s = setup(c, to_objects(c))
    obj, lc, ppo = s.obj, s.obj.loop, s.obj.ppo
    n_p, n_s, n_c = len(obj.policy_names), obj.num_seeds, lc.num_cycles
    steps = ppo.num_updates * ppo.batch_size
    arms = ", ".join(f"{n} ({k}, start {w:g})" for n, k, w in zip(
        obj.policy_names, obj.policy_kinds, obj.initial_weights, strict=True))
    fp = _footprint(c, obj, check=False)
    lines = (f"tpfl-loop: {n_p} arms x {n_s} seeds x {n_c} cycles = {n_p * n_s} agents",
             f"arms: {arms}",
             f"per cycle and agent: {steps:,} env steps, "
             + (f"up to {ppo.num_updates} PPO updates (converge)" if lc.converge
                else f"{ppo.num_updates} PPO updates") + f" in chunks of {lc.chunk_updates}; "
             f"{lc.deploy_envs} deploy episodes per mode",
             market_line(c, s.spec, s.source, obj.env.lookback),
             memory_line(fp, n_p * n_s, c.guard),
             "wall time: " + wall_time_estimate(n_p * n_s * n_c * steps))
    try:
        _footprint(c, obj, check=True)
    except UserError as e:
        return RunPlan("loop", lines, str(e))
    return RunPlan("loop", lines)


def run(c: Config, out: Path, cache_dir: Path | None = None) -> LoopRun | None:
    """The closed-loop experiment; process 0 writes every artefact to ``out`` and returns the
    :class:`LoopRun` (other processes of a multi-host job: None)."""
    obj = to_objects(c)
    n_p, n_s, n_c = len(obj.policy_names), obj.num_seeds, obj.loop.num_cycles
    _footprint(c, obj, check=True)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    bar = tqdm(total=5, desc="tpfl-loop", disable=not c.progress, unit="phase")
    bar.set_postfix_str("markets")
    s = setup(c, obj)
    spec, source, env_params = s.spec, s.source, s.env_params
    args = (seed_keys(obj.seed, obj.num_seeds), s.policies, source, env_params,
            obj.ppo.hparams())
    side = side_work(c, obj, spec, source, env_params, out)     # references + audit
    bar.update(1)
    bar.set_postfix_str("compile")
    t0 = time.perf_counter()
    go = make_loop_sweep(s.loop, mesh_cfg=obj.mesh).aot(*args)   # policies x seeds, sharded
    t_compile = time.perf_counter() - t0
    bar.update(1)
    bar.set_postfix_str(f"run {n_p} policies x {n_s} seeds x {n_c} cycles")
    t0 = time.perf_counter()
    res = gather(jax.block_until_ready(go()))
    t_run = time.perf_counter() - t0
    bar.update(1)
    if jax.process_index() != 0:                 # multi-host: process 0 writes the artefacts
        bar.close()
        return None
    bar.set_postfix_str("references and artefacts")
    res = jax.device_get(res)
    check_training(res, obj, c)
    (ref_cycles, ref_episodes), audit = side()
    frames = loop_frames(res, obj, spec, source, c, ref_cycles, ref_episodes)
    result = write_run(c, s, res, frames, audit, out, t_compile, t_run)
    bar.update(1)
    bar.close()
    print_run(obj, result, out)
    return result


def write_run(c: Config, s: LoopSetup, res: LoopResult, frames: LoopFrames,
              audit: AuditResult | None, out: Path, t_compile: float, t_run: float) -> LoopRun:
    """Tables, trades, final networks, the market's files, paired statistics, plots,
    ``report.md`` and ``timing.json`` of a finished loop."""
    obj, spec, source = s.obj, s.spec, s.source
    n_p, n_s, n_c = len(obj.policy_names), obj.num_seeds, obj.loop.num_cycles
    write_files(out, res, obj, frames)
    write_market(out, spec, source, c.seed)
    primary = c.stats.primary_metric
    paired = paired_stats(c, obj, frames.summary, out)
    answer = results.answer(frames.summary, paired[primary], frames.ref_summary,
                            obj.control_names, primary)
    units = report.units_text(c.env.initial_equity, c.env.max_steps_in_episode)
    sec = report_sections(c, obj, frames, out, units)
    report.write_loop_report(
        out, f"tpfl-loop: {c.experiment} ({n_p} arms x {n_s} seeds x {n_c} cycles)",
        answer=answer, levels=frames.levels, paired=paired, primary=primary,
        training=frames.training, plots=plots(out, obj, c, frames, paired, sec.regret),
        notes=notes(obj, c, frames), audit=audit.text() if audit else None,
        legend=report.levels_legend(frames.levels, primary, c.loop.feedback_mode, units,
                                    frames.summary),
        mode=c.loop.feedback_mode, units=units, reference=sec.reference, horizon=sec.horizon,
        series=sec.series,
        audit_note=report.audit_note(audit.summary, c.audit.lookback or obj.env.window)
        if audit else None)
    write_text(out / "timing.json", json.dumps({
        "compile_s": t_compile, "run_s": t_run, "devices": jax.device_count(),
        "processes": jax.process_count()}))
    return LoopRun(frames, paired, answer, t_compile, t_run)


def side_work(c: Config, obj: Objects, spec: Any, source: Any, env_params: Any, out: Path
              ) -> Callable[[], tuple[tuple[pd.DataFrame, pd.DataFrame], AuditResult | None]]:
    """The reference rules and the reward audit (independent of the arms' training). On one
    process they run in a background thread, compiling while the loop compiles (XLA compiles
    one program per core); the returned ``wait()`` gives ``(references, audit)``. Several
    processes: process 0 computes them when asked (no program beside the collective one)."""
    def work() -> tuple[tuple[pd.DataFrame, pd.DataFrame], AuditResult | None]:
        refs = references(obj, spec, source, env_params,
                          has_labels=c.market.source == "synthetic")
        return refs, reward_audit(c, obj.env, env_params, spec, source, out, quiet=True)

    if jax.process_count() > 1:
        return work
    pool = ThreadPoolExecutor(1, thread_name_prefix="tpfl-side")
    future = pool.submit(work)
    pool.shutdown(wait=False)
    return future.result


def check_training(res: LoopResult, obj: Objects, c: Config) -> None:
    """Non-finite training fails the run naming the arm, seed, cycle and update; then the
    divergence guard on the updates each cycle ran."""
    if not np.all(res.train_buffers["finite"]):
        p, s, cy, u = np.argwhere(~np.asarray(res.train_buffers["finite"]))[0]
        raise FloatingPointError(f"tpfl-loop: non-finite PPO loss/params (policy "
                                 f"{obj.policy_names[p]}, seed {s}, cycle {cy}, update {u + 1})")
    n_cap = np.asarray(res.train_buffers["loss"]).shape[-1]     # updates a cycle may use: the cap
    ran = np.arange(n_cap) < np.asarray(res.training["updates"])[..., None]
    check_divergence(res.train_buffers, c.guard, lambda i: (
        f"tpfl-loop policy {obj.policy_names[i[0]]}, seed {i[1]}, cycle {i[2]}"), ran=ran)


def loop_frames(res: LoopResult, obj: Objects, spec: Any, source: Any, c: Config,
                ref_cycles: pd.DataFrame,
                ref_episodes: pd.DataFrame | None = None) -> LoopFrames:
    """Every table of a loop run, the reference rules included (``ref_episodes``: the rules'
    per-episode frame from :func:`references`, joined to the arms' in ``episodes``)."""
    names, ppo, lc = obj.policy_names, obj.ppo, obj.loop
    bars = spec.distinct_train_bars(source, obj.env.lookback)
    cycles = results.cycle_frame(res, names, batch_size=ppo.batch_size,
                                 episode_steps=int(c.env.max_steps_in_episode),
                                 distinct_bars=bars)
    summary = results.summary_frame(cycles)
    learning = results.curve_frame(res, names, chunk_updates=lc.chunk_updates,
                                 cap_updates=ppo.num_updates, batch_size=ppo.batch_size)
    ref_summary = results.reference_summary(ref_cycles)
    primary = c.stats.primary_metric
    return LoopFrames(
        cycles=cycles, summary=summary, learning_curves=learning, ref_cycles=ref_cycles,
        ref_summary=ref_summary, levels=results.levels_table(summary, ref_summary, primary),
        training=report.training_table(cycles),
        identical=results.identical_arms(summary, primary),
        hindsight=results.best_fixed_in_hindsight(
            summary, dict(zip(names, obj.policy_kinds, strict=True)), primary),
        fresh_paths=bars is None,
        episodes=episode_frame(res, names, ref_episodes, deploy_symbols(spec, source),
                               deploy_paths(obj, spec, source)))


def deploy_paths(obj: Objects, spec: Any, source: Any) -> np.ndarray:
    """The path each deploy episode of each cycle plays, ``[C, E]``
    (``accounting.episode_paths``: every cycle alike; the deploy market's shape, nothing
    computed); -1 where the env's reset draws its own."""
    lc = obj.loop
    market = jax.eval_shape(spec.deploy_market, source, jax.random.key(0), jnp.int32(0))
    paths = episode_paths(obj.env, market.close.shape[0], lc.deploy_envs)
    paths = np.full(lc.deploy_envs, -1) if paths is None else np.asarray(paths)
    return np.broadcast_to(paths, (lc.num_cycles, lc.deploy_envs))


def _episode_rows(pnl: np.ndarray, ret: np.ndarray, lead: dict[str, np.ndarray],
                  paths: np.ndarray, symbols: np.ndarray | None) -> pd.DataFrame:
    """Long rows of per-episode ``pnl``/``return`` ``[..., C, E]`` with index columns ``lead``
    (each of the leading axes' shape), ``cycle``, ``episode``, the ``path`` it played
    (``paths [C, E]``) and, on a panel, that path's ``symbol`` (``symbols [C, paths]``)."""
    shape = pnl.shape
    idx = np.indices(shape).reshape(len(shape), -1)
    frame = {k: np.asarray(v)[tuple(idx[:-2])] for k, v in lead.items()}
    cyc, ep = idx[-2], idx[-1]
    path = np.asarray(paths)[cyc, ep]
    frame |= {"cycle": cyc, "episode": ep, "path": path}
    if symbols is not None and (path >= 0).all():
        frame["symbol"] = symbols[cyc, path]
    return pd.DataFrame(frame | {"pnl": pnl.ravel(), "return": ret.ravel()})


def episode_frame(res: LoopResult, names: list[str],
                  ref_episodes: pd.DataFrame | None,
                  symbols: np.ndarray | None, paths: np.ndarray) -> pd.DataFrame | None:
    """Every deploy episode (``episodes.parquet``): one row per arm x seed x cycle x mode x
    episode (``kind`` policy) and per reference rule x seed x cycle x episode (``kind``
    reference, mode greedy: the rules are deterministic), with its path, its symbol on a panel,
    PnL and return. Arms and rules play the same episodes (same keys and paths)."""
    if res.episodes is None:
        return None
    pnl = np.asarray(res.episodes["pnl"])                       # [P, S, C, 2, E]
    ret = np.asarray(res.episodes["return"])
    n_p, n_s, n_c, n_m, n_e = pnl.shape
    move = lambda x: np.moveaxis(x, 3, 2)                       # noqa: E731  [P, S, 2, C, E]
    lead = {"kind": np.full((n_p, n_s, n_m), "policy", dtype=object),
            "arm": np.broadcast_to(np.asarray(names, dtype=object)[:, None, None],
                                   (n_p, n_s, n_m)),
            "seed": np.broadcast_to(np.arange(n_s)[None, :, None], (n_p, n_s, n_m)),
            "mode": np.broadcast_to(np.asarray(DEPLOY_MODES, dtype=object)[None, None, :],
                                    (n_p, n_s, n_m))}
    arms = _episode_rows(move(pnl), move(ret), lead, paths, symbols)      # paths [C, E]
    return pd.concat([arms] + ([] if ref_episodes is None else [ref_episodes]),
                     ignore_index=True)


def references(obj: Objects, spec: Any, source: Any, env_params: Any,
               has_labels: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference rules (flat, buy-and-hold, trend, and the hidden-label oracle on synthetic
    markets) with each family's parameters chosen on the cycle's training market, played on
    exactly the loop's deployment episodes: one row per rule x seed x cycle, and one row per
    rule x seed x cycle x episode with its path and symbol (:func:`episode_frame`)."""
    lc = obj.loop
    t_dep = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    run_refs = make_references(obj.env, spec, lc.num_cycles, lc.deploy_envs, t_dep,
                               select_episodes=max(64, lc.deploy_envs), has_labels=has_labels)
    out = jax.device_get(run_refs(seed_keys(obj.seed, obj.num_seeds), source, env_params))
    frame = results.reference_frame(out, reference_candidates(obj.env, has_labels),
                                    lc.deploy_envs)
    symbols, paths = deploy_symbols(spec, source), deploy_paths(obj, spec, source)
    eps = []
    for fam, (sums, _) in out.items():
        pnl, ret = np.asarray(sums.pnl), np.asarray(sums.ret)      # [S, C, E]
        lead = {"kind": np.full(pnl.shape[:1], "reference", dtype=object),
                "arm": np.full(pnl.shape[:1], fam, dtype=object),
                "seed": np.arange(len(pnl)),
                "mode": np.full(pnl.shape[:1], "greedy", dtype=object)}
        eps.append(_episode_rows(pnl, ret, lead, paths, symbols))
    return frame, pd.concat(eps, ignore_index=True)


def write_files(out: Path, res: LoopResult, obj: Objects, f: LoopFrames) -> None:
    """The run's tables (CSV, metrics.jsonl), trades (keep_trades) and the final networks."""
    for frame, name in ((f.cycles, "cycles.csv"), (f.cycles, "metrics.jsonl"),
                        (f.summary, "summary.csv"), (f.learning_curves, "curves.csv"),
                        (f.ref_cycles, "references.csv"), (f.levels, "levels.csv"),
                        (f.training, "training.csv")):
        write_frame(frame, out / name)
    if obj.loop.keep_trades:
        write_frame(all_deploy_trades(res, obj.policy_names), out / "trades.parquet")
    if f.episodes is not None:
        write_frame(f.episodes, out / "episodes.parquet")
    save_final(out, {"params": res.params, "obs_rms": res.obs_rms})


def paired_stats(c: Config, obj: Objects, summary: pd.DataFrame, out: Path
                 ) -> dict[str, pd.DataFrame]:
    """Paired tables per declared metric (``paired.csv``)."""
    st = c.stats
    metrics = list(dict.fromkeys([st.primary_metric, *st.secondary_metrics]))
    for i, m in enumerate(metrics):
        if m not in summary:
            where = "primary_metric" if i == 0 else "secondary_metrics"
            raise UserError(f"config.stats.{where}: {m!r} is not a summary.csv column; "
                             f"expected one of {list(summary.columns[2:])}")
    paired = {m: stats.paired_table(summary, m, obj.control_names, st.level, st.n_boot, c.seed)
              for m in metrics}
    write_frame(pd.concat(paired.values(), ignore_index=True), out / "paired.csv")
    return paired


def plots(out: Path, obj: Objects, c: Config, f: LoopFrames,
          paired: dict[str, pd.DataFrame],
          regret: tuple[str, pd.DataFrame] | None = None) -> list[Path]:
    """The loop report's figures (``regret``: ``results.regret_frame``, plotted when given)."""
    st = c.stats
    units = report.units_text(c.env.initial_equity, c.env.max_steps_in_episode)
    figs = [
        report.plot_levels(out / "levels.png", f.levels, st.primary_metric,
                           units if st.primary_metric.startswith("oos_pnl") else None),
        report.plot_learning_curves(out / "learning_curves.png", f.learning_curves, f.ref_cycles,
                                    obj.ppo.num_updates * obj.ppo.batch_size),
        report.plot_weights(out / "weight_trajectory.png", f.cycles),
        stats.plot_paired(paired[st.primary_metric], out / "paired_primary.png",
                          f"{st.primary_metric}: arm - control per seed "
                          f"({st.level:.0%} simultaneous intervals, Bonferroni; * = Holm "
                          "rejects)"),
    ]
    if regret is not None:
        figs.append(report.plot_regret(out / "regret.png", regret[1], regret[0]))
    return figs


@dataclass(frozen=True)
class ReportSections:
    """The loop report's computed sections: every arm against the best reference rule, the
    weight paths and regret (markdown lines, None when not applicable) and the regret frame."""

    reference: list[str] | None
    horizon: list[str] | None
    regret: tuple[str, pd.DataFrame] | None
    series: list[str] | None = None


def report_sections(c: Config, obj: Objects, f: LoopFrames, out: Path, units: str
                    ) -> ReportSections:
    """Every arm against the best reference rule (``paired_reference.csv``), and each arm's
    weight path over seeds with each adaptive arm's cumulative regret against the best fixed
    weight in hindsight (``weight_paths.csv``, ``regret.csv``; regret only with fixed and
    adaptive arms)."""
    st, primary = c.stats, c.stats.primary_metric
    vs = results.reference_paired(f.summary, f.ref_summary, primary, st.level, st.n_boot,
                                  c.seed)
    reference = None
    if vs is not None:
        write_frame(vs[1], out / "paired_reference.csv")
        reference = report.reference_markdown(
            vs[0], vs[1], primary, units if primary.startswith("oos_pnl") else None)
    paths = results.weight_paths(f.cycles)
    write_frame(paths, out / "weight_paths.csv")
    horizon = ["Each arm's weight per cycle over seeds (`weight_trajectory.png`: median, IQR, "
               "min..max and every seed's path); distinct paths: how many different weight "
               "sequences the seeds followed.", "", report.weight_paths_markdown(paths)]
    regret = results.regret_frame(f.cycles, dict(zip(obj.policy_names, obj.policy_kinds,
                                                      strict=True)))
    if regret is not None:
        best, frame = regret
        write_frame(frame, out / "regret.csv")
        n_oos = len(results.oos_cycles(obj.loop.num_cycles))
        span, first = (("cycles 1..C-1", "1") if obj.loop.num_cycles > 1
                       else ("cycle 0, the only one", "0"))
        horizon += ["", f"Cumulative regret of each adaptive arm against the best fixed weight "
                    f"in hindsight, `{best}`: the fixed arm with the highest mean over seeds of "
                    f"its deployed PnL over {span} (pooled over seeds: one "
                    "comparator for every seed). Per seed and cycle c: the sum over cycles "
                    f"{first}..c of (`{best}`'s deployed PnL per episode - the arm's), same "
                    "seed and episodes (feedback mode"
                    + ("; cycle 0 left out: every arm deploys its start weight before any "
                       "feedback" if obj.loop.num_cycles > 1 else "")
                    + "). Cells: mean [min, max] over "
                    f"seeds; {units}, summed over cycles; last column: the last cycle's mean "
                    f"/ {n_oos} cycle(s), the mean regret per cycle. Negative: the arm earned "
                    f"more than `{best}`. "
                    "Figure: `regret.png`.", "", report.regret_markdown(frame)]
    return ReportSections(reference, horizon, regret, series_section(obj, f, out, units))


def series_section(obj: Objects, f: LoopFrames, out: Path, units: str) -> list[str] | None:
    """A panel run's arms and rules per series and pooled over the out-of-sample cycles
    (``per_series.csv``); None on markets without symbols."""
    eps = f.episodes
    if eps is None or "symbol" not in eps:
        return None
    cyc = results.oos_cycles(obj.loop.num_cycles)
    table = pd.concat([results.episode_table(eps, cyc, ["symbol"]),
                       results.episode_table(eps, cyc).assign(symbol="all")],
                      ignore_index=True)
    write_frame(table, out / "per_series.csv")
    lines = []
    for m, what in (("greedy_pnl", f"greedy PnL ({units})"),
                    ("sampled_pnl", "sampled PnL (same units)"),
                    ("greedy_sharpe", "greedy episode Sharpe (mean / sd of the episodes' "
                     "returns per seed, not annualised)")):
        wide = table.pivot_table(index=["kind", "arm"], columns="symbol", values=m,
                                 sort=False).reset_index(level="kind", drop=True)
        if wide.isna().all().all():
            continue
        lines += [f"{what}, mean over seeds, cycles {cyc[0]}..{cyc[-1]}; `all`: pooled over "
                  "series:", "", report.df_markdown(wide.round(3).reset_index()), ""]
    return lines


def notes(obj: Objects, c: Config, f: LoopFrames) -> list[str]:
    """The report's notes: training criterion and data, deployment, controls, identical arms
    and the best fixed weight in hindsight."""
    lc = obj.loop
    crit = (f"chunks of {lc.chunk_updates} PPO updates until entropy <= {lc.entropy_frac} x "
            f"log(n_actions) and the mean training return of the last {lc.return_window} "
            f"chunks exceeds the {lc.return_window} before by <= {lc.return_tol} sd, capped at "
            f"{obj.ppo.num_updates} updates" if lc.converge
            else f"a fixed {obj.ppo.num_updates} PPO updates")
    cyc = f.cycles
    if f.fresh_paths:
        data = ("generated paths drawn fresh every update (no bar seen twice; repetition "
                f"{cyc.train_repetition.max():.2f})")
    else:                             # replayed windows, or block-bootstrap paths of them
        data = (("block-bootstrap paths drawn fresh every update; " if "bootstrap" in
                 c.market.train_source else "") + "env steps per distinct real training bar "
                f"{cyc.train_repetition.mean():.1f} (mean over cycles)")
    out = [
        f"Training per cycle: {crit}; training data: {data}; optimizer "
        f"{'Adam moments carried across cycles' if lc.carry_optimizer else 'restarted'}, "
        "LR schedule restarted every cycle.",
        f"Deploy: sampled (as trained) and greedy (argmax) on {lc.deploy_envs} episodes per "
        f"cycle; feedback from the {lc.feedback_mode} deployment; history per arm: "
        f"{dict(zip(obj.policy_names, obj.policy_histories, strict=True))} (window = "
        f"{lc.history_window} cycles).",
        f"Controls: {', '.join(obj.control_names)}; seeds are the unit (common random "
        "numbers); references choose their parameters on each cycle's training market and "
        "play the arms' deployment episodes.",
    ]
    primary = c.stats.primary_metric
    for group in f.identical:
        out.append(f"Identical `{primary}` on every seed: "
                   + ", ".join(f"`{a}`" for a in group) + " (their paired differences are 0 on "
                   "every seed: a comparison among them carries no information).")
    pairs = results.identical_pairs(f.summary, primary)
    some = pairs[pairs.n_identical < pairs.n_seeds]
    if len(some):
        out.append(f"Identical `{primary}` on some seeds (the paired difference is exactly 0 "
                   "there): " + "; ".join(
                       f"`{r.arm_a}` = `{r.arm_b}` on seed{'s' if r.n_identical > 1 else ''} "
                       f"{', '.join(map(str, r.seeds))} ({r.n_identical} of {r.n_seeds})"
                       for r in some.itertuples()) + ".")
    if f.hindsight is not None:
        name, v = f.hindsight
        out.append(f"Best fixed weight in hindsight: `{name}` ({primary} {v:+.1f}, mean over "
                   "seeds): the best of this run's fixed arms, chosen after the fact.")
    return out


def print_run(obj: Objects, r: LoopRun, out: Path) -> None:
    """The console summary of a finished loop."""
    pd.set_option("display.width", 160)
    fmt = lambda x: f"{x:.4g}"  # noqa: E731
    print(f"\ncompile {r.compile_s:.1f}s, run {r.run_s:.1f}s ({len(obj.policy_names)} arms x "
          f"{obj.num_seeds} seeds x {obj.loop.num_cycles} cycles)")
    print("\n## Answer\n" + "\n".join(r.answer))
    print("\n" + r.frames.levels.to_string(index=False, float_format=fmt))
    print("\n" + r.frames.training.to_string(index=False, float_format=fmt))
    print(f"report: {out / 'report.md'}")
