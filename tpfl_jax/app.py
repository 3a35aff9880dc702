"""Hydra entry points: ``tpfl-loop``, ``tpfl-train``, ``tpfl-clm``, ``tpfl-audit``, ``tpfl-report``.

Configs live in the repository's ``configs/`` (schema: ``tpfl_jax.config.Config``). Every run
writes into its Hydra output dir: ``config_resolved.yaml``, ``metrics.jsonl``, ``summary.csv``,
trades (parquet), checkpoints (orbax), PNG plots and ``report.md``. The JAX persistent
compilation cache is user-level (``validate.compile_cache_dir``: config ``compile_cache_dir``,
``$TPFL_COMPILE_CACHE_DIR``, ``$XDG_CACHE_HOME/tpfl_jax/jax`` or ``~/.cache/tpfl_jax/jax``), so
a second run of one shape does not recompile and run dirs hold no executables. Every config is
validated (``tpfl_jax.validate``) before anything is compiled or written.
``python -m tpfl_jax.app {loop,train,clm,report} [overrides]`` works without installing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tpfl_jax import report
from tpfl_jax import results as R
from tpfl_jax import validate as V
from tpfl_jax.config import Config, to_container, to_objects
from tpfl_jax.errors import UserError, one_line
from tpfl_jax.rundir import atomic, write_frame, write_text

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


# --------------------------------------------------------------------------- helpers
def _out_dir(cfg: DictConfig) -> tuple[Path, Path]:
    """(run output dir, user-level compile-cache dir) of the current Hydra job."""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), V.compile_cache_dir(cfg.get("compile_cache_dir"))


@contextlib.contextmanager
def user_inputs() -> Any:
    """Around code that only checks and prepares what the user gave (config, files, data):
    its ``ValueError`` / ``OSError`` is a user error (one CLI line), not a bug."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from e


def quiet_jax_logs() -> None:
    """Drop jax's INFO lines about absent backends ("Unable to initialize backend 'tpu'")
    from every user's log; warnings and errors still show."""
    import logging

    for name in ("jax._src.xla_bridge", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_jax(cache_dir: Path | None) -> None:
    """Enable the persistent compilation cache in ``cache_dir`` (None: leave it off). The
    cache is optional: a directory that cannot be created or written is reported in one
    warning line and the run goes on without it."""
    import jax

    quiet_jax_logs()
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        print(f"warning: compile cache {cache_dir} is not writable ({e.strerror}); running "
              "without it (set compile_cache_dir or TPFL_COMPILE_CACHE_DIR)", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _checkpointer() -> Any:
    """Orbax checkpointer for host arrays written by process 0 alone (multi-host: the others
    take no part, so orbax must not wait for them at its barriers)."""
    import jax
    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=0, active_processes={0}))


def _write_config(cfg: DictConfig, out: Path) -> None:
    write_text(out / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def _jsonable(v: Any) -> Any:
    v = np.asarray(v)
    if v.ndim:
        return [_jsonable(x) for x in v]
    x = v.item()
    return None if isinstance(x, float) and not np.isfinite(x) else x


def resolve_data_path(path: str) -> str:
    """``pkg://PACKAGE/REL`` -> the file ``REL`` inside the installed package ``PACKAGE`` (e.g.
    ``pkg://backtesting/test/GOOG.csv``); other paths are returned as they are."""
    if not str(path).startswith("pkg://"):
        return str(path)
    import importlib.resources

    pkg, _, rel = str(path)[len("pkg://"):].partition("/")
    try:
        f = importlib.resources.files(pkg) / rel
    except ModuleNotFoundError:
        raise UserError(f"config.market.path = {path!r}: package {pkg!r} is not installed "
                         "(the backtesting data ships with the dev extra)") from None
    if not f.is_file():
        raise UserError(f"config.market.path = {path!r}: no file {rel!r} in package {pkg!r}")
    return str(f)


def build_market(c: Config, env: Any, env_kwargs: dict[str, Any], loop_cfg: Any):
    """(markets spec, traced source argument, env params template) of the config."""
    import jax

    from tpfl_jax.market.specs import SyntheticMarkets, WalkForwardMarkets

    m = c.market
    if m.source == "synthetic":
        spec = SyntheticMarkets(kind=m.kind, train_paths=m.train_paths,
                                deploy_paths=m.deploy_paths, n_bars=m.n_bars,
                                substeps=m.substeps, fresh=m.fresh)
        try:
            source = spec.source(**dict(m.params))
        except ValueError as e:
            raise UserError(f"config.market.params: {e}") from None
        template, _ = spec.cycle_markets(source, jax.random.key(c.seed), 0)
    elif m.source == "csv":
        from tpfl_jax.market.data import read_ohlcv, to_windows

        if not m.path:
            raise UserError("config.market.path: required for market.source=csv")
        columns = {k: v for k, v in dataclasses.asdict(m.columns).items() if v is not None}
        if m.timestamp:
            columns["timestamp"] = m.timestamp
        if m.no_volume:
            columns["volume"] = None
        frame = read_ohlcv(resolve_data_path(m.path), columns, sep=m.sep)
        source = to_windows(frame, len(frame))
        spec = WalkForwardMarkets(train_bars=m.train_bars, deploy_bars=m.deploy_bars,
                                  window=env.window)
        template = source
    else:
        raise UserError(f"config.market.source = {m.source!r}; expected 'synthetic' or 'csv'")
    try:
        env_params = env.make_params(template, **env_kwargs)
    except ValueError as e:
        raise UserError(f"config.env / config.market: {e}") from None
    return spec, source, env_params


def reward_audit(c: Config, env: Any, env_params: Any, spec: Any, source: Any, out: Path,
                 quiet: bool = False) -> Any:
    """The reward audit (``tpfl_jax.audit``) of this run's env on its market: fresh
    ``audit.paths`` paths of the synthetic market, or the loaded data; writes ``audit_*`` files
    into ``out`` and returns the ``AuditResult`` (None when ``audit.enabled`` is false)."""
    import jax

    from tpfl_jax.audit import AuditConfig, run_audit, write_audit
    from tpfl_jax.market.specs import SyntheticMarkets

    a = c.audit
    if not a.enabled:
        return None
    try:
        acfg = AuditConfig(weights=tuple(a.weights), episodes=a.episodes, lookback=a.lookback,
                           seed=c.seed)
    except ValueError as e:
        raise UserError(f"config.audit: {e}") from None
    if a.paths < 1:
        raise UserError(f"config.audit.paths = {a.paths}; expected >= 1")
    if isinstance(spec, SyntheticMarkets):
        from tpfl_jax.market import synthetic

        market = synthetic.simulate(jax.random.fold_in(jax.random.key(c.seed), 7919), source,
                                    a.paths, spec.n_bars, spec.substeps)
        label = f"{c.market.kind}, {a.paths} fresh paths"
    else:
        market = source
        label = f"{Path(resolve_data_path(str(c.market.path))).name}, all bars"
    try:
        result = run_audit(env, env_params.replace(market=market), acfg, label=label)
    except ValueError as e:
        raise UserError(f"config.audit: {e}") from None
    write_audit(result, out)
    if not quiet:
        print(result.text())
    return result


# --------------------------------------------------------------------------- tpfl-audit
def run_audit_app(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> Any:
    """``tpfl-audit``: the reward audit of the configured env and market."""
    c = to_container(cfg)
    obj = to_objects(c)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    with user_inputs():
        spec, source, env_params = build_market(c, obj.env, obj.env_kwargs, obj.loop)
    if not c.audit.enabled:
        raise UserError("config.audit.enabled is false: nothing to audit")
    result = reward_audit(c, obj.env, env_params, spec, source, out)
    print(f"tables and plot: {out}")
    return result


# --------------------------------------------------------------------------- tpfl-loop
def run_loop(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """The closed-loop experiment, policies x seeds sharded over ``config.mesh``; process 0
    writes every artefact to ``out`` and returns the levels table (other processes of a
    multi-host job: an empty frame)."""
    from tqdm.auto import tqdm

    c = to_container(cfg)          # typed dataclasses: nothing below sees a DictConfig
    obj = to_objects(c)
    n_p, n_s, n_c = len(obj.policy_names), obj.num_seeds, obj.loop.num_cycles
    V.check_run_memory(c, obj.ppo, "loop", n_p * n_s, obs_size=obj.env.obs_size,
                       n_actions=obj.env.num_actions, cycles=n_c,
                       deploy_envs=obj.loop.deploy_envs, keep_trades=obj.loop.keep_trades)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    import jax

    from tpfl_jax import distributed as D
    from tpfl_jax.loop import check_inputs, make_loop, make_loop_policy, seed_keys, stack_policies

    bar = tqdm(total=5, desc="tpfl-loop", disable=not c.progress, unit="phase")
    bar.set_postfix_str("markets")
    with user_inputs():
        spec, source, env_params = build_market(c, obj.env, obj.env_kwargs, obj.loop)
        loop = make_loop(obj.loop, obj.ppo, obj.env, spec, env_params, obj.policy_kinds)
        policies = stack_policies([make_loop_policy(k, w, h, **p) for k, w, p, h in zip(
            obj.policy_kinds, obj.initial_weights, obj.policy_params, obj.policy_histories,
            strict=True)])
        check_inputs(loop, source, obj.env, env_params, policies)
    keys = seed_keys(obj.seed, obj.num_seeds)
    args = (keys, policies, source, env_params, obj.ppo.hparams())
    side = _side_work(c, obj, spec, source, env_params, out)     # references + audit
    bar.update(1)
    bar.set_postfix_str("compile")
    t0 = time.perf_counter()
    go = D.make_loop_sweep(loop, mesh_cfg=obj.mesh).aot(*args)   # policies x seeds, sharded
    t_compile = time.perf_counter() - t0
    bar.update(1)
    bar.set_postfix_str(f"run {n_p} policies x {n_s} seeds x {n_c} cycles")
    t0 = time.perf_counter()
    res = jax.block_until_ready(go())
    t_run = time.perf_counter() - t0
    res = D.gather(res)
    bar.update(1)
    if jax.process_index() != 0:                 # multi-host: process 0 writes the artefacts
        bar.close()
        return pd.DataFrame()
    bar.set_postfix_str("references and artefacts")
    res = jax.device_get(res)
    _check_loop_training(res, obj, c)
    ref_cycles, audit = side()
    frames = _loop_frames(res, obj, spec, source, c, ref_cycles)
    _write_loop_files(out, res, obj, frames)
    primary = c.stats.primary_metric
    paired = _paired_stats(c, obj, frames["summary"], out)
    frames["answer"] = R.answer(frames["summary"], paired[primary], frames["ref_summary"],
                                obj.control_names, primary)
    plots = _loop_plots(out, obj, c, frames, paired)
    report.write_loop_report(
        out, f"tpfl-loop: {c.experiment} ({n_p} arms x {n_s} seeds x {n_c} cycles)",
        answer=frames["answer"], levels=frames["levels"], paired=paired,
        primary=primary, training=frames["training"], plots=plots,
        notes=_loop_notes(obj, c, frames), audit=audit.text() if audit else None)
    write_text(out / "timing.json", json.dumps({
        "compile_s": t_compile, "run_s": t_run, "devices": jax.device_count(),
        "processes": jax.process_count()}))
    _log_experiment(cfg, c, out, frames["cycles"], paired)
    bar.update(1)
    bar.close()
    _print_loop(c, obj, frames, paired, t_compile, t_run, out)
    return frames["levels"]


def _side_work(c: Config, obj: Any, spec: Any, source: Any, env_params: Any, out: Path):
    """The reference rules and the reward audit (independent of the arms' training). On one
    process they run in a background thread, compiling while the loop compiles (XLA compiles
    one program per core); the returned ``wait()`` gives ``(references, audit)``. Several
    processes: process 0 computes them when asked (no program beside the collective one)."""
    import jax

    def work() -> tuple[pd.DataFrame, Any]:
        refs = loop_references(obj, spec, source, env_params,
                               has_labels=c.market.source == "synthetic")
        return refs, reward_audit(c, obj.env, env_params, spec, source, out, quiet=True)

    if jax.process_count() > 1:
        return work
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="tpfl-side")
    future = pool.submit(work)
    pool.shutdown(wait=False)
    return future.result


def _check_loop_training(res: Any, obj: Any, c: Config) -> None:
    """Non-finite training fails the run naming the arm, seed, cycle and update; then the
    divergence guard on the updates each cycle ran."""
    if not np.all(res.train["finite"]):
        p, s, cy, u = np.argwhere(~np.asarray(res.train["finite"]))[0]
        raise FloatingPointError(f"tpfl-loop: non-finite PPO loss/params (policy "
                                 f"{obj.policy_names[p]}, seed {s}, cycle {cy}, update {u + 1})")
    n_cap = np.asarray(res.train["loss"]).shape[-1]     # updates a cycle may use: the cap
    ran = np.arange(n_cap) < np.asarray(res.training["updates"])[..., None]
    V.check_divergence(res.train, c.guard, lambda i: (
        f"tpfl-loop policy {obj.policy_names[i[0]]}, seed {i[1]}, cycle {i[2]}"), ran=ran)


def _loop_frames(res: Any, obj: Any, spec: Any, source: Any, c: Config,
                 ref_cycles: pd.DataFrame) -> dict[str, Any]:
    """Every table of a loop run (``tpfl_jax.results``), the reference rules included."""
    names, ppo, lc = obj.policy_names, obj.ppo, obj.loop
    cycles = R.cycle_frame(res, names, batch_size=ppo.batch_size,
                           episode_steps=int(c.env.max_steps_in_episode),
                           distinct_bars=spec.distinct_train_bars(source, obj.env.window))
    summary = R.summary_frame(cycles)
    curves = R.curve_frame(res, names, chunk_updates=lc.chunk_updates,
                           cap_updates=ppo.num_updates, batch_size=ppo.batch_size)
    ref_summary = R.reference_summary(ref_cycles)
    primary = c.stats.primary_metric
    return {"cycles": cycles, "summary": summary, "curves": curves,
            "ref_cycles": ref_cycles, "ref_summary": ref_summary,
            "levels": R.levels_table(summary, ref_summary, primary),
            "training": report.training_table(cycles),
            "identical": R.identical_arms(summary, primary),
            "hindsight": R.best_fixed_in_hindsight(
                summary, dict(zip(names, obj.policy_kinds, strict=True)), primary),
            "answer": None}


def loop_references(obj: Any, spec: Any, source: Any, env_params: Any,
                    has_labels: bool) -> pd.DataFrame:
    """The reference rules (flat, buy-and-hold, trend, and the hidden-label oracle on synthetic
    markets) with each family's parameters chosen on the cycle's training market, played on
    exactly the loop's deployment episodes: one row per rule x seed x cycle."""
    import jax

    from tpfl_jax.baselines import make_references, reference_candidates
    from tpfl_jax.loop import seed_keys

    lc = obj.loop
    t_dep = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    run = make_references(obj.env, spec, lc.num_cycles, lc.deploy_envs, t_dep,
                          select_episodes=max(64, lc.deploy_envs), has_labels=has_labels)
    out = jax.device_get(run(seed_keys(obj.seed, obj.num_seeds), source, env_params))
    return R.reference_frame(out, reference_candidates(obj.env, has_labels), lc.deploy_envs)


def _write_loop_files(out: Path, res: Any, obj: Any, f: dict[str, Any]) -> None:
    """The run's tables (CSV, metrics.jsonl), trades (keep_trades) and the final networks."""
    for key, name in (("cycles", "cycles.csv"), ("cycles", "metrics.jsonl"),
                      ("summary", "summary.csv"), ("curves", "curves.csv"),
                      ("ref_cycles", "references.csv"), ("levels", "levels.csv"),
                      ("training", "training.csv")):
        write_frame(f[key], out / name)
    if obj.loop.keep_trades:
        from tpfl_jax.replay import all_deploy_trades

        write_frame(all_deploy_trades(res, obj.policy_names), out / "trades.parquet")
    _save_final(out, {"params": res.params, "obs_rms": res.obs_rms})


def _save_final(out: Path, tree: Any) -> None:
    """The final networks as an orbax checkpoint ``checkpoints/final``, written under a temporary
    name and renamed (a stale one of an unfinished earlier attempt of this run is replaced)."""
    import shutil

    final = (out / "checkpoints" / "final").absolute()
    tmp = final.with_name(f".final.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt = _checkpointer()
    try:
        ckpt.save(tmp, tree)
        ckpt.wait_until_finished()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{final}: cannot write the checkpoint ({e.strerror or e})") from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _paired_stats(c: Config, obj: Any, summary: pd.DataFrame, out: Path
                  ) -> dict[str, pd.DataFrame]:
    """Paired tables per declared metric (``paired.csv``)."""
    from tpfl_jax import stats as ST

    st = c.stats
    metrics = list(dict.fromkeys([st.primary_metric, *st.secondary_metrics]))
    for i, m in enumerate(metrics):
        if m not in summary:
            where = "primary_metric" if i == 0 else "secondary_metrics"
            raise UserError(f"config.stats.{where}: {m!r} is not a summary.csv column; "
                             f"expected one of {list(summary.columns[2:])}")
    paired = {m: ST.paired_table(summary, m, obj.control_names, st.level, st.n_boot, c.seed)
              for m in metrics}
    write_frame(pd.concat(paired.values(), ignore_index=True), out / "paired.csv")
    return paired


def _loop_plots(out: Path, obj: Any, c: Config, f: dict[str, Any],
                paired: dict[str, pd.DataFrame]) -> list[Path]:
    from tpfl_jax import stats as ST

    st = c.stats
    return [
        report.plot_levels(out / "levels.png", f["levels"], st.primary_metric),
        report.plot_learning_curves(out / "learning_curves.png", f["curves"], f["ref_cycles"],
                                    obj.ppo.num_updates * obj.ppo.batch_size),
        report.plot_weights(out / "weight_trajectory.png", f["cycles"]),
        ST.plot_paired(paired[st.primary_metric], out / "paired_primary.png",
                       f"{st.primary_metric}: arm - control per seed "
                       f"({st.level:.0%} simultaneous intervals, Bonferroni; * = Holm rejects)"),
    ]


def _loop_notes(obj: Any, c: Config, f: dict[str, Any]) -> list[str]:
    lc = obj.loop
    crit = (f"chunks of {lc.chunk_updates} PPO updates until entropy <= {lc.entropy_frac} x "
            f"log(n_actions) and the mean training return of the last {lc.return_window} "
            f"chunks exceeds the {lc.return_window} before by <= {lc.return_tol} sd, capped at "
            f"{obj.ppo.num_updates} updates" if lc.converge
            else f"a fixed {obj.ppo.num_updates} PPO updates")
    cyc = f["cycles"]
    data = ("fresh synthetic paths every update (no bar seen twice; repetition "
            f"{cyc.train_repetition.max():.2f})" if c.market.source == "synthetic"
            and c.market.fresh else
            f"env steps per distinct training bar {cyc.train_repetition.mean():.1f} (mean over "
            "cycles)")
    notes = [
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
    for group in f["identical"]:
        notes.append(f"Identical on every seed ({c.stats.primary_metric}): "
                     f"{', '.join(group)}: these arms cannot differ from each other.")
    if f["hindsight"] is not None:
        name, v = f["hindsight"]
        notes.append(f"Best fixed weight in hindsight: `{name}` ({v:+.1f}); chosen after the "
                     "fact, the most a weight that never moves could have earned.")
    return notes


def _print_loop(c: Config, obj: Any, f: dict[str, Any], paired: dict[str, pd.DataFrame],
                t_compile: float, t_run: float, out: Path) -> None:
    pd.set_option("display.width", 160)
    fmt = lambda x: f"{x:.4g}"  # noqa: E731
    print(f"\ncompile {t_compile:.1f}s, run {t_run:.1f}s ({len(obj.policy_names)} arms x "
          f"{obj.num_seeds} seeds x {obj.loop.num_cycles} cycles)")
    print("\n## Answer\n" + "\n".join(f["answer"]))
    print("\n" + f["levels"].to_string(index=False, float_format=fmt))
    print("\n" + f["training"].to_string(index=False, float_format=fmt))
    print(f"report: {out / 'report.md'}")


def _log_experiment(cfg: DictConfig, c: Config, out: Path, cycles: pd.DataFrame,
                    paired: dict[str, pd.DataFrame]) -> None:
    """Params, per-cycle metrics (mean over seeds per policy) and artefacts to ``logger``."""
    if c.logger.kind == "none":
        return
    from tpfl_jax import explog

    try:
        hc = HydraConfig.get()
        run_name = hc.job.override_dirname or hc.job.name
        if hc.mode.name == "MULTIRUN":
            run_name = f"{hc.job.num}:{run_name}"
    except ValueError:                     # outside a Hydra job
        run_name = out.name
    lg = explog.make_logger(c.logger.kind, _log_root(out), run_name,
                            c.logger.experiment or c.experiment, c.logger.uri)
    lg.log_params(explog.flatten(OmegaConf.to_container(cfg, resolve=True)))
    keys = ("weight", "deploy_pnl", "deploy_greedy_pnl", "deploy_sampled_pnl",
            "deploy_hit_rate", "deploy_tp_skill", "train_updates", "train_final_entropy",
            "train_final_return")
    per = cycles.groupby(["cycle", "policy"], sort=False)[list(keys)].mean(numeric_only=True)
    for cy, g in per.groupby(level=0):
        lg.log_metrics({f"{pol}/{k}": v for (_, pol), r in g.iterrows() for k, v in r.items()},
                       step=int(cy))
    final = {}
    for m, t in paired.items():
        for _, r in t.iterrows():
            final[f"paired/{m}/{r['arm']}-{r['control']}/mean_diff"] = r["mean_diff"]
            final[f"paired/{m}/{r['arm']}-{r['control']}/p_holm"] = r["p_holm"]
    lg.log_metrics(final, step=int(cycles["cycle"].max()))
    lg.log_artifacts(explog.run_files(out))
    lg.close()
    print(f"logger={c.logger.kind}: {lg.location}")


def _log_root(out: Path) -> Path:
    """The Hydra sweep dir of a multirun job (one store for its jobs), else the run dir."""
    try:
        hc = HydraConfig.get()
        return Path(hc.sweep.dir) if hc.mode.name == "MULTIRUN" else out
    except ValueError:
        return out


# --------------------------------------------------------------------------- tpfl-train
def run_train(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """Train ``train.weights`` x ``train.num_seeds`` PPO agents and score them on held-out
    episodes after every ``train.chunk_updates`` updates (the learning curve) and at the end,
    beside the reference rules on the same episodes (parameters chosen on training data). One
    weight on one process: the resumable runner (orbax checkpoints every chunk); otherwise one
    program sharded over ``config.mesh``. Process 0 writes the artefacts and returns the table;
    the other processes of a multi-host job return an empty frame."""
    c = to_container(cfg)
    obj = to_objects(c)
    V.check_train(c)
    weights = [float(w) for w in c.train.weights]
    n_s = c.train.num_seeds
    V.check_run_memory(c, obj.ppo, "train", len(weights) * n_s, obs_size=obj.env.obs_size,
                       n_actions=obj.env.num_actions, deploy_envs=c.train.eval_episodes)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    import jax

    with user_inputs():
        spec, source, env_params = build_market(c, obj.env, obj.env_kwargs, obj.loop)
    job = _train_job(c, obj, spec, source, env_params)
    if len(weights) == 1 and jax.process_count() == 1:
        params, obs_rms = _train_runner(c, obj, job, weights[0], out)
    else:
        params, obs_rms = _train_sweep(c, obj, job, weights, out)
        if params is None:                       # multi-host: process 0 writes the artefacts
            return pd.DataFrame()
    ev = _train_final_eval(c, obj, job, weights, params, obs_rms)
    write_frame(ev["trades"], out / "trades.parquet")
    summary = R.summary_frame(ev["cycles"])
    write_frame(summary, out / "summary.csv")
    refs = job["references"]
    write_frame(refs, out / "references.csv")
    curves = R.train_curves(R.read_metrics_rows(out / "metrics.jsonl"),
                            obj.ppo.batch_size)
    write_frame(curves, out / "curves.csv")
    vs = R.episode_paired(ev["greedy_pnl"], job["ref_pnl"], weights)
    write_frame(vs, out / "vs_references.csv")
    levels = R.levels_table(summary, R.reference_summary(refs))
    write_frame(levels, out / "levels.csv")
    plots = [report.plot_learning_curves(out / "learning_curves.png", curves, refs,
                                         obj.ppo.num_updates * obj.ppo.batch_size),
             report.plot_levels(out / "levels.png", levels)]
    audit = reward_audit(c, obj.env, env_params, spec, source, out, quiet=True)
    lines = [f"Held-out: {c.train.eval_episodes} episodes of {c.env.max_steps_in_episode} steps "
             f"(the learning curve: the first {job['curve_n']}); training data: "
             f"{job['data_note']}.", "", "Greedy agent minus each reference rule, paired over "
             "the same held-out episodes (mean over seeds per episode; 95% t-interval over "
             "episodes):", "", report.df_markdown(vs), "", report.levels_markdown(levels)]
    report.write_report(out, report.policy_table(summary), f"tpfl-train: weights {weights}",
                        plots, lines=lines, audit=audit.text() if audit else None)
    _write_config(cfg, out)
    pd.set_option("display.width", 160)
    print(levels.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(vs.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"plots and report: {out}")
    return summary.assign(kind="arm")


def _train_job(c: Config, obj: Any, spec: Any, source: Any, env_params: Any) -> dict[str, Any]:
    """The held-out data of a train run (shared by every weight and seed: ``loop.cycle_keys``
    of ``key(seed)``, cycle 0), its episode keys, the data stream and the reference rules
    (parameters chosen on the training market) on those episodes."""
    import jax

    from tpfl_jax import accounting as A
    from tpfl_jax.baselines import make_references, reference_candidates
    from tpfl_jax.loop import cycle_keys

    t = int(c.env.max_steps_in_episode)
    need = obj.env.window + t + 2
    try:       # the held-out window must exist in full (no clamped slice into training bars)
        spec.check(source, 1, need)
    except ValueError as e:
        raise UserError(f"config.market / config.env ({c.market.path or c.market.kind}): "
                         f"{e}") from None
    seed_key = jax.random.key(c.seed)
    keys = cycle_keys(seed_key, 0)
    train_m, test_m = spec.cycle_markets(source, keys.market, 0)
    n_eval, n_curve = c.train.eval_episodes, c.train.curve_episodes
    eval_keys = A.episode_keys(keys.deploy, n_eval)
    has_labels = c.market.source == "synthetic"
    run = make_references(obj.env, spec, 1, n_eval, t, select_episodes=max(64, n_eval),
                          has_labels=has_labels)
    out = jax.device_get(run(seed_key[None], source, env_params))
    refs = R.reference_frame(out, reference_candidates(obj.env, has_labels), n_curve)
    stream = spec.stream(obj.env, obj.ppo.num_envs, obj.ppo.num_steps, t)
    bars = spec.distinct_train_bars(source, obj.env.window)
    steps = obj.ppo.num_updates * obj.ppo.batch_size
    note = (f"fresh synthetic paths every update ({steps} env steps per agent, no bar seen "
            "twice)" if stream is not None else f"{steps} env steps per agent over {bars:.0f} "
            f"distinct training bars (repetition {steps / bars:.1f})")
    return {"train_params": env_params.replace(market=train_m),
            "test_params": env_params.replace(market=test_m), "eval_keys": eval_keys,
            "curve_keys": eval_keys[:n_curve], "curve_n": n_curve, "stream": stream,
            "source": source if stream is not None else None, "steps": t,
            "references": refs, "data_note": note,
            "ref_pnl": {fam: np.asarray(s.pnl)[0, 0] for fam, (s, _) in out.items()}}


def _curve_eval(obj: Any, job: dict[str, Any]):
    """``evaluate(runner_state, (test_params, keys)) -> {curve/greedy_pnl, curve/sampled_pnl}``:
    held-out PnL per episode of one agent in both deploy modes (``accounting``)."""
    from tpfl_jax import accounting as A
    from tpfl_jax.agents.networks import make_network

    ppo = obj.ppo
    network = make_network(obj.env, job["test_params"], ppo.widths, ppo.activation,
                           ppo.shared_torso, ppo.init_log_std)

    def evaluate(rs: Any, args: Any) -> dict[str, Any]:
        params, keys = args
        rms = rs.obs_rms if ppo.normalize_obs else None
        pnl = A.finalize(A.deploy_both_modes(obj.env, network, rs.params, params, keys,
                                             job["steps"], rms, ppo.obs_clip).sums)["pnl"]
        return {f"curve/{m}_pnl": pnl[i] for i, m in enumerate(A.DEPLOY_MODES)}

    return evaluate


def _train_runner(c: Config, obj: Any, job: dict[str, Any], weight: float,
                  out: Path) -> tuple[Any, Any]:
    """One weight x seeds with the resumable runner; params ``[1, S, ...]``."""
    import jax
    import jax.numpy as jnp

    from tpfl_jax import accounting as A
    from tpfl_jax import distributed as D
    from tpfl_jax.agents.runner import Runner

    evaluate = _curve_eval(obj, job)
    args = (job["test_params"], job["curve_keys"])
    scored = D.jit(jax.vmap(lambda rs: evaluate(rs, args)))
    runner = Runner(obj.ppo, obj.env, job["train_params"].replace(
        tp_reward_weight=jnp.float32(weight)), out, seed=c.seed, num_seeds=c.train.num_seeds,
        chunk_updates=c.train.chunk_updates, checkpoint_every=c.train.chunk_updates,
        progress=c.progress, guard=c.guard, info_metrics=A.train_info_metrics,
        stream=job["stream"], source=job["source"], log_fields={"weight": weight},
        on_chunk=lambda rs, u: jax.device_get(scored(rs)))
    r = runner.run()
    runner.close()
    rs = r.runner_state
    return (jax.tree.map(lambda x: np.asarray(x)[None], rs.params),
            jax.tree.map(lambda x: np.asarray(x)[None], rs.obs_rms))


def _train_sweep(c: Config, obj: Any, job: dict[str, Any], weights: list[float],
                 out: Path) -> tuple[Any, Any]:
    """Weights x seeds as one program sharded over ``config.mesh``; params ``[K, S, ...]``
    (None on processes other than 0)."""
    import jax

    from tpfl_jax import accounting as A
    from tpfl_jax import distributed as D
    from tpfl_jax.loop import seed_keys

    n_u, chunk = obj.ppo.num_updates, min(c.train.chunk_updates, obj.ppo.num_updates)
    if n_u % chunk:
        raise UserError(f"config.train.chunk_updates = {c.train.chunk_updates}: must divide "
                         f"the {n_u} PPO updates (ppo.total_timesteps // (num_envs x "
                         "num_steps)) to score several weights in one program")
    mesh = D.make_mesh(obj.mesh)
    sweep = D.make_ppo_sweep(obj.ppo, obj.env, mesh, obj.mesh, env_params=job["train_params"],
                             hooks={"info_metrics": A.train_info_metrics,
                                    "stream": job["stream"]},
                             evaluate=_curve_eval(obj, job), every=chunk)
    n_s = c.train.num_seeds
    print(f"training {len(weights)} weights x {n_s} seeds as one program on "
          f"{mesh.size} device(s) ...", flush=True)
    t0 = time.perf_counter()
    result = D.gather(jax.block_until_ready(sweep(
        seed_keys(c.seed, n_s), weights, job["train_params"], job["source"],
        (job["test_params"], job["curve_keys"]))))
    print(f"done in {time.perf_counter() - t0:.1f}s (compile included)")
    if jax.process_index() != 0:
        return None, None
    swap = lambda t: jax.tree.map(lambda x: np.swapaxes(np.asarray(x), 0, 1), t)  # noqa: E731
    m, ev = swap(result.metrics), swap(result.evals)                              # [K, S, ...]
    with atomic(out / "metrics.jsonl") as tmp, tmp.open("w") as f:
        for i, wt in enumerate(weights):
            for u in range(n_u):
                row = {"weight": wt, "update": u + 1}
                row.update({k: _jsonable(v[i, :, u]) for k, v in m.items()})
                if (u + 1) % chunk == 0:
                    row.update({k: _jsonable(v[i, :, (u + 1) // chunk - 1])
                                for k, v in ev.items()})
                f.write(json.dumps(row) + "\n")
    # metrics.jsonl above is the diagnosis; a diverged run writes nothing as good below
    V.check_divergence(m, c.guard, lambda i: f"tpfl-train weight {weights[i[0]]}, seed {i[1]}")
    params, obs_rms = swap(result.runner_state.params), swap(result.runner_state.obs_rms)
    _save_final(out, {"params": params, "obs_rms": obs_rms})
    return params, obs_rms


def _train_final_eval(c: Config, obj: Any, job: dict[str, Any], weights: list[float],
                      params: Any, obs_rms: Any) -> dict[str, Any]:
    """Both deploy modes of every weight x seed on the held-out episodes: one-cycle rows for
    ``results.summary_frame`` (plain ``deploy_*`` columns: ``loop.feedback_mode``'s mode, as in
    ``tpfl-loop``), the greedy per-episode PnL ``[K, S, E]`` and the trades."""
    import jax

    from tpfl_jax.agents.evaluate import evaluate

    rows, trades, greedy = [], [], []
    for i, wt in enumerate(weights):
        g_row = []
        for s in range(c.train.num_seeds):
            p = jax.tree.map(lambda x, i=i, s=s: x[i, s], params)
            rms = jax.tree.map(lambda x, i=i, s=s: x[i, s], obs_rms)
            row = {"policy": f"fixed_{wt}", "weight": wt, "seed": s, "cycle": 0}
            for mode, det in (("sampled", False), ("greedy", True)):
                ev = evaluate(p, obj.env, job["test_params"], job["eval_keys"],
                              config=obj.ppo, obs_rms=rms, deterministic=det)
                row |= {f"deploy_{mode}_{k}": v for k, v in ev.metrics.items()}
                trades.append(ev.trades.assign(weight=wt, seed=s, mode=mode))
                if det:
                    g_row.append(np.asarray(ev.sums.pnl))
            # plain columns: loop.feedback_mode's deployment, as in tpfl-loop (one meaning
            # of oos_pnl in every summary.csv)
            fb = c.loop.feedback_mode
            row |= {f"deploy_{k}": row[f"deploy_{fb}_{k}"] for k in ev.metrics}
            rows.append(row)
        greedy.append(g_row)
    return {"cycles": pd.DataFrame(rows), "trades": pd.concat(trades, ignore_index=True),
            "greedy_pnl": np.asarray(greedy)}


# --------------------------------------------------------------------------- tpfl-clm
def run_clm(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """One ``TrainingJob`` through ``ClmOrchestrator`` (SQLite tracker + registry in ``out``);
    a single-process job (host-side glue writing one SQLite database)."""
    import asyncio

    from tpfl_jax import distributed as D
    from tpfl_jax.config import to_mesh_config

    if D.is_multi_process(to_mesh_config(cfg)):
        raise UserError("tpfl-clm runs as one process (it writes one SQLite tracker and "
                         "registry); start it outside a multi-task srun / mpirun step, with "
                         f"no mesh.num_processes / {D.ENV_NUM_PROCESSES} above 1")
    c = to_container(cfg)
    obj = to_objects(c)
    V.check_clm(c, out)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    from tpfl_jax.clm.adapters import PPOBacktestAdapter, PPOTrainingAdapter
    from tpfl_jax.clm.models import ModelType, TrainingJob, TriggerReason
    from tpfl_jax.clm.orchestrator import ClmOrchestrator
    from tpfl_jax.clm.registry import ModelRegistry
    from tpfl_jax.tracking.tracker import TPPerformanceTracker

    db = V.confine(out, c.clm.db, "config.clm.db")
    tracker = TPPerformanceTracker(db)
    registry = ModelRegistry(db)
    env_kwargs = {k: v for k, v in obj.env_kwargs.items() if k != "tp_reward_weight"}
    env_static = {"window": obj.env.window, "n_tp": obj.env.n_tp,
                  "premature_horizon": obj.env.premature_horizon}
    m = c.market
    if m.source != "synthetic" or m.kind != "regime":
        raise UserError("tpfl-clm: the PPO adapters generate synthetic regime markets per "
                         "symbol; use market=regime")
    train_ad = PPOTrainingAdapter(obj.ppo, env_static=env_static, env_kwargs=env_kwargs,
                                  n_paths=m.train_paths, n_bars=m.n_bars, seed=c.seed)
    bt_ad = PPOBacktestAdapter(tracker=tracker, strategy_id=c.clm.strategy_id,
                               n_episodes=c.clm.backtest_episodes, n_paths=m.deploy_paths,
                               n_bars=m.n_bars, seed=c.seed + 1)
    orch = ClmOrchestrator(registry, train_ad, bt_ad, {
        "strategy_id": c.clm.strategy_id, "policy": c.clm.policy,
        "min_attempts": c.clm.min_attempts}, tracker=tracker)
    job = TrainingJob(ModelType.RL_V3, c.clm.symbol, TriggerReason(c.clm.trigger),
                      {"strategy_id": c.clm.strategy_id})
    result = asyncio.run(orch.handle_training_job(job))
    info = {"decision": result.decision, "version": result.version.version,
            "tp_reward_weight": job.training_params.get("tp_reward_weight"),
            "tp_feedback_reason": job.training_params.get("tp_feedback_reason"),
            "metrics": result.metrics, "reasons": result.reasons}
    write_text(out / "metrics.jsonl", json.dumps(info, default=float) + "\n")
    write_frame(tracker.trades(c.clm.strategy_id), out / "trades.parquet")
    _write_config(cfg, out)
    print(json.dumps(info, indent=1, default=float))
    tracker.close()
    registry.close()
    return info


# --------------------------------------------------------------------------- hydra mains
DEBUG_ENV = "TPFL_DEBUG"   # 1: user errors keep their traceback too (as does --debug)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _hydra_job(fn, command: str, distributed: bool = True):
    """The Hydra task of ``fn`` (a console script via :func:`_cli`): process 0 owns the run
    directory (``rundir.RunDir``: lock, identity with the command, completion record); a
    user error is one line on stderr and exit status 2; a complete run is not recomputed."""

    def task(cfg: DictConfig) -> Any:
        import jax

        from tpfl_jax.config import to_mesh_config
        from tpfl_jax.distributed import init_distributed, sync_processes
        from tpfl_jax.rundir import AlreadyComplete, RunDir

        quiet_jax_logs()
        run = None
        try:
            if distributed:       # first: nothing may start the XLA backend before it
                init_distributed(to_mesh_config(cfg))    # no-op unless several processes
            to_objects(cfg)                              # every key checked before anything
            out, cache = _out_dir(cfg)
            if jax.process_index() == 0:
                overrides = list(HydraConfig.get().overrides.task)
                run = RunDir(out, command, V.config_identity(cfg), overrides).acquire()
                _write_config(cfg, out)
            try:
                result = fn(cfg, out, cache if cfg.compile_cache else None)
            finally:
                # the other processes wait here while process 0 writes (jax.distributed's own
                # shutdown barrier would time out on a long evaluation / checkpoint)
                sync_processes("tpfl_jax.app:done")
            if run is not None:
                run.complete()
            return _objective(result)
        except AlreadyComplete as e:
            print(e)
            return None
        except UserError as e:
            if run is not None:
                run.failed(one_line(e))
            if _debug():
                raise
            print(f"tpfl-{command}: error: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except BaseException as e:
            if run is not None:
                run.failed(f"{type(e).__name__}: {one_line(e)}")
            raise
        finally:
            if run is not None:
                run.release()

    task.__name__ = fn.__name__
    task.__doc__ = fn.__doc__
    return hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(task)


def _cli(fn, command: str, distributed: bool = True):
    """The console script ``tpfl-<command>``: Hydra parses the overrides; a config that does
    not compose (unknown key, wrong type, bad override) is one line and exit status 2, like
    every user error; ``--debug`` (or ``TPFL_DEBUG=1``) keeps the traceback."""
    job = _hydra_job(fn, command, distributed)

    def main() -> None:
        if "--debug" in sys.argv:
            sys.argv.remove("--debug")
            os.environ[DEBUG_ENV] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"      # Hydra raises; we decide how to report
        try:
            job()
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
            if _debug() or not _is_config_error(e):
                raise
            print(f"tpfl-{command}: error: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    main.__name__ = f"{command}_main"
    main.__doc__ = fn.__doc__
    return main


def _is_config_error(e: BaseException) -> bool:
    """A config that does not compose (Hydra / OmegaConf) or any ``UserError``."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(e, (UserError, HydraException, OmegaConfBaseException))


def _objective(result: Any) -> float | None:
    """The sweepers' objective: the best arm's (or weight's) out-of-sample PnL per episode."""
    if not isinstance(result, pd.DataFrame) or not len(result):
        return None
    if "kind" in result:
        result = result[result["kind"] == "arm"]
    for col in ("oos_pnl", "final_pnl"):
        if col in result:
            return float(result[col].max())
    return None


loop_main = _cli(run_loop, "loop")
train_main = _cli(run_train, "train")
clm_main = _cli(run_clm, "clm", distributed=False)   # host-side glue: one process
audit_main = _cli(run_audit_app, "audit", distributed=False)


def report_main(argv: list[str] | None = None) -> None:
    """``tpfl-report DIR``: collect a run or multirun dir into ``tpfl-report.md`` and
    ``tpfl-report.csv`` there (a run's own ``report.md`` is never touched); jobs that failed or
    did not finish are listed with their overrides."""
    import argparse

    from tpfl_jax.report import format_table, report_dir

    ap = argparse.ArgumentParser(prog="tpfl-report", description=report_main.__doc__)
    ap.add_argument("path")
    ap.add_argument("--debug", action="store_true", help="tracebacks for user errors too")
    a = ap.parse_args(argv)
    try:
        table, path = report_dir(a.path)
    except (UserError, FileNotFoundError) as e:
        if a.debug or _debug():
            raise
        ap.exit(2, f"tpfl-report: error: {one_line(e)}\n")
    print(format_table(table))
    print(f"report: {path}")


COMMANDS = {"loop": loop_main, "train": train_main, "clm": clm_main, "report": report_main,
            "audit": audit_main}


def main() -> None:
    """``python -m tpfl_jax.app {loop,train,clm,report} [args]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m tpfl_jax.app {{{','.join(COMMANDS)}}} [overrides]")
    cmd = sys.argv.pop(1)
    sys.argv[0] = f"tpfl-{cmd}"
    COMMANDS[cmd]()


if __name__ == "__main__":
    main()
