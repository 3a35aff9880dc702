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

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tpfl_jax import validate as V
from tpfl_jax.config import Config, to_container, to_objects

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


# --------------------------------------------------------------------------- helpers
def _out_dir(cfg: DictConfig) -> tuple[Path, Path]:
    """(run output dir, user-level compile-cache dir) of the current Hydra job."""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), V.compile_cache_dir(cfg.get("compile_cache_dir"))


def quiet_jax_logs() -> None:
    """Drop jax's INFO lines about absent backends ("Unable to initialize backend 'tpu'")
    from every user's log; warnings and errors still show."""
    import logging

    for name in ("jax._src.xla_bridge", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_jax(cache_dir: Path | None) -> None:
    """Enable the persistent compilation cache in ``cache_dir`` (None: leave it off)."""
    import jax

    quiet_jax_logs()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
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
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


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
        raise ValueError(f"config.market.path = {path!r}: package {pkg!r} is not installed "
                         "(the backtesting data ships with the dev extra)") from None
    if not f.is_file():
        raise ValueError(f"config.market.path = {path!r}: no file {rel!r} in package {pkg!r}")
    return str(f)


def build_market(c: Config, env: Any, env_kwargs: dict[str, Any], loop_cfg: Any):
    """(markets spec, traced source argument, env params template) of the config."""
    import jax

    from tpfl_jax.loop import SyntheticMarkets, WalkForwardMarkets

    m = c.market
    if m.source == "synthetic":
        spec = SyntheticMarkets(kind=m.kind, train_paths=m.train_paths,
                                deploy_paths=m.deploy_paths, n_bars=m.n_bars,
                                substeps=m.substeps)
        try:
            source = spec.source(**dict(m.params))
        except ValueError as e:
            raise ValueError(f"config.market.params: {e}") from None
        template, _ = spec.cycle_markets(source, jax.random.key(c.seed), 0)
    elif m.source == "csv":
        from tpfl_jax.market.data import read_ohlcv, to_windows

        if not m.path:
            raise ValueError("config.market.path: required for market.source=csv")
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
        raise ValueError(f"config.market.source = {m.source!r}; expected 'synthetic' or 'csv'")
    try:
        env_params = env.make_params(template, **env_kwargs)
    except ValueError as e:
        raise ValueError(f"config.env / config.market: {e}") from None
    return spec, source, env_params


def reward_audit(c: Config, env: Any, env_params: Any, spec: Any, source: Any, out: Path,
                 quiet: bool = False) -> Any:
    """The reward audit (``tpfl_jax.audit``) of this run's env on its market: fresh
    ``audit.paths`` paths of the synthetic market, or the loaded data; writes ``audit_*`` files
    into ``out`` and returns the ``AuditResult`` (None when ``audit.enabled`` is false)."""
    import jax

    from tpfl_jax.audit import AuditConfig, run_audit, write_audit
    from tpfl_jax.loop import SyntheticMarkets

    a = c.audit
    if not a.enabled:
        return None
    try:
        acfg = AuditConfig(weights=tuple(a.weights), episodes=a.episodes, lookback=a.lookback,
                           seed=c.seed)
    except ValueError as e:
        raise ValueError(f"config.audit: {e}") from None
    if a.paths < 1:
        raise ValueError(f"config.audit.paths = {a.paths}; expected >= 1")
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
        raise ValueError(f"config.audit: {e}") from None
    write_audit(result, out)
    if not quiet:
        print(result.text())
    return result


def _append_audit(out: Path, audit: Any) -> None:
    """Add the audit summary to the run's ``report.md``."""
    if audit is None:
        return
    with (out / "report.md").open("a") as f:
        f.write(f"\n## Reward audit (this env and market)\n\n```\n{audit.text()}\n```\n\n"
                "Full table: `audit_table.csv`, `audit.md`; plot: `audit_reward_pnl.png`.\n")


# --------------------------------------------------------------------------- tpfl-audit
def run_audit_app(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> Any:
    """``tpfl-audit``: the reward audit of the configured env and market."""
    c = to_container(cfg)
    obj = to_objects(c)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    spec, source, env_params = build_market(c, obj.env, obj.env_kwargs, obj.loop)
    if not c.audit.enabled:
        raise ValueError("config.audit.enabled is false: nothing to audit")
    result = reward_audit(c, obj.env, env_params, spec, source, out)
    print(f"tables and plot: {out}")
    return result


# --------------------------------------------------------------------------- tpfl-loop
def run_loop(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """The closed-loop experiment, policies x seeds sharded over ``config.mesh``; process 0
    writes every artefact to ``out`` and returns the policy table (other processes of a
    multi-host job: an empty frame)."""
    from tqdm.auto import tqdm

    c = to_container(cfg)          # typed dataclasses: nothing below sees a DictConfig
    obj = to_objects(c)
    n_p, n_s, n_c = len(obj.policy_names), obj.num_seeds, obj.loop.num_cycles
    V.check_run_memory(c, obj.ppo, "loop", n_p * n_s, obs_size=obj.env.window + 10,
                       n_actions=1 + 2 * obj.env.n_tp, cycles=n_c,
                       deploy_envs=obj.loop.deploy_envs, keep_trades=obj.loop.keep_trades)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    import jax

    from tpfl_jax import distributed as D
    from tpfl_jax import report
    from tpfl_jax.loop import (
        check_inputs,
        make_loop,
        make_loop_policy,
        seed_keys,
        stack_policies,
    )

    bar = tqdm(total=5, desc="tpfl-loop", disable=not c.progress, unit="phase")
    bar.set_postfix_str("markets")
    spec, source, env_params = build_market(c, obj.env, obj.env_kwargs, obj.loop)
    loop = make_loop(obj.loop, obj.ppo, obj.env, spec, env_params)
    check_inputs(loop, source, obj.env, env_params)
    policies = stack_policies([make_loop_policy(k, w, h, **p) for k, w, p, h in zip(
        obj.policy_kinds, obj.initial_weights, obj.policy_params, obj.policy_histories,
        strict=True)])
    args = (seed_keys(obj.seed, obj.num_seeds), policies, source, env_params, obj.ppo.hparams())
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
    bar.set_postfix_str("artefacts")
    if not np.all(res.train["finite"]):
        p, s, cy, u = np.argwhere(~np.asarray(res.train["finite"]))[0]
        raise FloatingPointError(f"tpfl-loop: non-finite PPO loss/params (policy "
                                 f"{obj.policy_names[p]}, seed {s}, cycle {cy}, update {u + 1})")
    n_cap = np.asarray(res.train["loss"]).shape[-1]     # updates a cycle may use: the cap
    ran = np.arange(n_cap) < np.asarray(res.training["updates"])[..., None]
    V.check_divergence(res.train, c.guard, lambda i: (
        f"tpfl-loop policy {obj.policy_names[i[0]]}, seed {i[1]}, cycle {i[2]}"), ran=ran)

    names = obj.policy_names
    cycles = _cycle_rows(res, names, n_s, n_c, out / "metrics.jsonl")
    cycles.to_csv(out / "cycles.csv", index=False)
    summary = loop_summary(cycles)
    summary.to_csv(out / "summary.csv", index=False)

    if obj.loop.keep_trades:
        from tpfl_jax.replay import all_deploy_trades

        all_deploy_trades(res, names).to_parquet(out / "trades.parquet")
    ckpt = _checkpointer()
    ckpt.save((out / "checkpoints" / "final").absolute(),
              {"params": res.params, "obs_rms": res.obs_rms})
    ckpt.wait_until_finished()

    paired, plots = _paired_stats(c, obj, summary, out)
    training = report.training_table(cycles)
    training.to_csv(out / "training.csv", index=False)
    table = report.policy_table(summary, rank=False)
    table.to_csv(out / "policy_table.csv", index=False)
    plots += report.plot_loop(out, cycles)
    curves = {n: np.asarray(res.train["episode_return"][p]).reshape(n_s, -1)
              for p, n in enumerate(names)}
    plots.append(report.plot_curves(out / "learning_curves.png", curves, "episode_return",
                                    "Training episode return per policy (cycles concatenated, "
                                    "update cap per cycle; gaps = updates not needed)"))
    report.write_loop_report(
        out, f"tpfl-loop: {c.experiment} ({n_p} policies x {n_s} seeds x {n_c} cycles)",
        paired, c.stats.primary_metric, training, table, plots,
        notes=_loop_notes(obj, c))
    audit = reward_audit(c, obj.env, env_params, spec, source, out, quiet=True)
    refs = deploy_references(obj, spec, source, env_params, out,
                             has_labels=bool(audit.summary["has_regime_labels"]) if audit
                             else c.market.source == "synthetic")
    with (out / "report.md").open("a") as f:
        f.write("\n## Reference rules on the same deployment episodes\n\n"
                "Per seed and cycle on exactly the arms' deploy paths and start bars; best TP in "
                "hindsight per family; the oracle reads the hidden regime label (a benchmark, "
                "never an agent input).\n\n"
                f"{_references_md(refs, summary, obj.control_names)}\n")
    _append_audit(out, audit)
    (out / "timing.json").write_text(json.dumps({"compile_s": t_compile, "run_s": t_run}))
    _log_experiment(cfg, c, out, cycles, paired)
    bar.update(1)
    bar.close()
    pd.set_option("display.width", 160)
    print(f"\ncompile {t_compile:.1f}s, run {t_run:.1f}s "
          f"({n_p} policies x {n_s} seeds x {n_c} cycles)")
    print(training.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    prim = paired[c.stats.primary_metric]
    print(f"primary metric {c.stats.primary_metric}: arm - control per seed "
          f"(Holm-adjusted {c.stats.level:.0%} intervals)")
    print(prim[["control", "arm", "mean_diff", "holm_lo", "holm_hi", "p_holm", "reject",
                "mde"]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if audit is not None:
        print(audit.text())
    print(f"plots and report: {out}")
    return table


def _cycle_rows(res: Any, names: tuple[str, ...], n_s: int, n_c: int,
                path: Path) -> pd.DataFrame:
    """One row per policy x seed x cycle (also written to ``path`` as JSON lines)."""
    rows = []
    used = np.asarray(res.training["updates"])
    with path.open("w") as f:
        for p in range(len(names)):
            for s in range(n_s):
                for cy in range(n_c):
                    row = {"policy": names[p], "seed": s, "cycle": cy,
                           "weight": float(res.weight[p, s, cy]),
                           "next_weight": float(res.next_weight[p, s, cy]),
                           "reason": int(res.reason[p, s, cy])}
                    for fld in ("total_attempts", "total_hits", "tp_hit_rate", "avg_r_multiple",
                                "actual_r", "premature_exit_rate", "valid", "volatility",
                                "pnl_per_trade", "no_edge_hit_rate"):
                        row[f"stats_{fld}"] = _jsonable(getattr(res.stats, fld)[p, s, cy])
                    for k, v in res.deploy.items():
                        row[f"deploy_{k.replace('/', '_')}"] = _jsonable(v[p, s, cy])
                    u = int(used[p, s, cy])
                    for k, v in res.train.items():
                        curve = np.asarray(v[p, s, cy], float)[:u]
                        half = curve[len(curve) // 2:]
                        row[f"train_{k}"] = _jsonable(np.nanmean(half) if np.isfinite(half).any()
                                                      else np.nan)
                    tr = {k: np.asarray(v[p, s, cy]) for k, v in res.training.items()}
                    row |= {"train_updates": u, "train_converged": bool(tr["converged"]),
                            "train_final_entropy": _jsonable(tr["entropy"]),
                            "train_entropy_max": _jsonable(tr["entropy_max"]),
                            "train_final_return": _jsonable(tr["return"])}
                    f.write(json.dumps(row) + "\n")
                    rows.append(row)
    return pd.DataFrame(rows)


def loop_summary(cycles: pd.DataFrame) -> pd.DataFrame:
    """One row per policy x seed: final-cycle and out-of-sample means. ``oos_*`` average
    cycles 1..C-1 (cycle 0 trains every feedback arm at its initial weight; all cycles when
    C = 1); plain deploy metrics are the feedback mode's, ``_greedy`` / ``_sampled`` each
    mode's."""
    n_c = int(cycles["cycle"].max()) + 1
    last = cycles[cycles["cycle"] == n_c - 1].set_index(["policy", "seed"])
    oos = cycles[cycles["cycle"] >= 1] if n_c > 1 else cycles
    g = oos.groupby(["policy", "seed"], sort=False)
    allc = cycles.groupby(["policy", "seed"], sort=False)
    return pd.DataFrame({
        "final_pnl": last["deploy_pnl"], "final_sharpe": last["deploy_sharpe"],
        "oos_pnl": g["deploy_pnl"].mean(), "oos_pnl_greedy": g["deploy_greedy_pnl"].mean(),
        "oos_pnl_sampled": g["deploy_sampled_pnl"].mean(),
        "oos_sharpe": g["deploy_sharpe"].mean(), "oos_tp_skill": g["deploy_tp_skill"].mean(),
        "hit_rate": g["deploy_hit_rate"].mean(), "actual_r": g["deploy_actual_r"].mean(),
        "final_weight": last["weight"], "updates": allc["train_updates"].mean(),
        "converged": allc["train_converged"].mean(),
    }).reset_index()


def deploy_references(obj: Any, spec: Any, source: Any, env_params: Any, out: Path,
                      has_labels: bool) -> pd.DataFrame:
    """Reference rules on exactly the loop's deployment episodes (same deploy market, paths and
    start bars per seed and cycle): flat, buy-and-hold, the trend rule and (synthetic markets
    only) the hidden-label regime oracle, each with its best TP in hindsight. One row per rule x
    seed with ``final_pnl`` and ``oos_pnl`` as in ``summary.csv``; written to
    ``references.csv``."""
    import jax

    from tpfl_jax.baselines import make_deploy_references, reference_set, stack
    from tpfl_jax.loop import seed_keys

    refs = reference_set(obj.env)
    fams = ["trend", *(["oracle"] if has_labels else [])]
    names = ["flat", "buy_and_hold", *[n for n in refs if n.startswith(tuple(f"{f}_tp"
                                                                                for f in fams))]]
    n_c = obj.loop.num_cycles
    t_dep = int(np.max(np.asarray(env_params.max_steps_in_episode)))
    run = make_deploy_references(obj.env, spec, n_c, obj.loop.deploy_envs, t_dep)
    res = jax.device_get(run(seed_keys(obj.seed, obj.num_seeds), stack([refs[n] for n in names]),
                             source, env_params))
    pnl = np.asarray(res["pnl"]).mean(-1)                     # [R, S, C] mean per episode
    oos = pnl[:, :, 1:].mean(-1) if n_c > 1 else pnl.mean(-1)
    rows = [{"rule": n, "seed": s, "final_pnl": float(pnl[i, s, -1]),
             "oos_pnl": float(oos[i, s])} for i, n in enumerate(names)
            for s in range(obj.num_seeds)]
    df = pd.DataFrame(rows)
    keep = ["flat", "buy_and_hold"]
    for f in fams:                                          # best TP in hindsight per family
        fam = df[df.rule.str.startswith(f"{f}_tp")].groupby("rule")["oos_pnl"].mean()
        keep.append(str(fam.idxmax()))
    df = df[df.rule.isin(keep)].reset_index(drop=True)
    df.to_csv(out / "references.csv", index=False)
    return df


def _references_md(refs: pd.DataFrame, summary: pd.DataFrame, controls: tuple[str, ...]) -> str:
    """Markdown: reference rules beside the control arms (oos_pnl, mean ± 95% t half-width)."""
    from tpfl_jax.audit import ci95 as ci

    lines = ["| rule / arm | oos_pnl per episode | ± 95% |", "|---|---|---|"]
    for n, g in refs.groupby("rule", sort=False):
        lines.append(f"| {n} (reference) | {g.oos_pnl.mean():+.1f} | {ci(g.oos_pnl):.1f} |")
    for n in controls:
        g = summary[summary.policy == n]
        if len(g):
            lines.append(f"| {n} (control arm) | {g.oos_pnl.mean():+.1f} | {ci(g.oos_pnl):.1f} |")
    return "\n".join(lines)


def _paired_stats(c: Config, obj: Any, summary: pd.DataFrame, out: Path
                  ) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """Paired tables per declared metric (``paired.csv``) and the primary metric's plot."""
    from tpfl_jax import stats as ST

    st = c.stats
    metrics = list(dict.fromkeys([st.primary_metric, *st.secondary_metrics]))
    for i, m in enumerate(metrics):
        if m not in summary:
            where = "primary_metric" if i == 0 else "secondary_metrics"
            raise ValueError(f"config.stats.{where}: {m!r} is not a summary.csv column; "
                             f"expected one of {list(summary.columns[2:])}")
    paired = {m: ST.paired_table(summary, m, obj.control_names, st.level, st.n_boot, c.seed)
              for m in metrics}
    pd.concat(paired.values(), ignore_index=True).to_csv(out / "paired.csv", index=False)
    plot = ST.plot_paired(paired[st.primary_metric], out / "paired_primary.png",
                          f"primary metric {st.primary_metric}: paired differences "
                          f"({st.level:.0%} Holm-level intervals)")
    return paired, [plot]


def _loop_notes(obj: Any, c: Config) -> list[str]:
    lc = obj.loop
    crit = (f"chunks of {lc.chunk_updates} PPO updates until entropy <= {lc.entropy_frac} x "
            f"log(n_actions) and the mean training return of the last {lc.return_window} "
            f"chunks exceeds the {lc.return_window} before by <= {lc.return_tol} sd, capped at "
            f"{obj.ppo.num_updates} updates" if lc.converge
            else f"a fixed {obj.ppo.num_updates} PPO updates")
    return [
        f"Training per cycle: {crit}; optimizer "
        f"{'Adam moments carried across cycles' if lc.carry_optimizer else 'restarted'}, "
        f"LR schedule restarted every cycle.",
        f"Deploy: both sampled (as trained) and greedy (argmax); the policies' feedback comes "
        f"from the {lc.feedback_mode} deployment; feedback history per policy: "
        f"{dict(zip(obj.policy_names, obj.policy_histories, strict=True))} "
        f"(window = {lc.history_window} cycles).",
        f"Controls: {', '.join(obj.control_names)}; seeds are the unit (common random "
        f"numbers); TP skill = hit rate - no-edge hit rate sl / (tp + sl) (driftless "
        f"continuous-martingale approximation).",
    ]


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
    """Train one weight (runner, one process: progress, metrics.jsonl, orbax checkpoints,
    resume) or several as weights x seeds in one program sharded over ``config.mesh``;
    evaluate each on held-out paths. Process 0 writes the artefacts and returns the table; the
    other processes of a multi-host job return an empty frame."""
    c = to_container(cfg)
    obj = to_objects(c)
    V.check_train(c)
    weights = [float(w) for w in c.train.weights]
    n_s = c.train.num_seeds
    V.check_run_memory(c, obj.ppo, "train", len(weights) * n_s, obs_size=obj.env.window + 10,
                       n_actions=1 + 2 * obj.env.n_tp, deploy_envs=c.train.eval_episodes)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    import jax
    import jax.numpy as jnp

    from tpfl_jax import distributed as D
    from tpfl_jax import report
    from tpfl_jax.agents.evaluate import evaluate
    from tpfl_jax.agents.runner import Runner

    spec, source, env_params = build_market(c, obj.env, obj.env_kwargs, obj.loop)
    need = obj.env.window + int(c.env.max_steps_in_episode) + 2
    try:       # the held-out window must exist in full (no clamped slice into training bars)
        spec.check(source, 1, need)
    except ValueError as e:
        raise ValueError(f"config.market / config.env ({c.market.path or c.market.kind}): "
                         f"{e}") from None
    train_m, test_m = spec.cycle_markets(source, jax.random.key(c.seed), 0)
    base = env_params.replace(market=train_m)
    if len(weights) == 1 and jax.process_count() == 1:
        runner = Runner(obj.ppo, obj.env, base.replace(tp_reward_weight=jnp.float32(weights[0])),
                        out, seed=c.seed, num_seeds=n_s, chunk_updates=c.train.chunk_updates,
                        checkpoint_every=c.train.chunk_updates, progress=c.progress,
                        guard=c.guard)
        r = runner.run()
        runner.close()
        params = jax.tree.map(lambda x: x[None], r.runner_state.params)
        curves = {f"w={weights[0]}": np.asarray(r.metrics["episode_return"], float).T}
    else:
        # weights x seeds as one program, sharded over config.mesh (every device by default)
        mesh = D.make_mesh(obj.mesh)
        sweep = D.make_ppo_sweep(obj.ppo, obj.env, mesh, obj.mesh, env_params=base)
        keys = D.seed_keys(n_s, c.seed)
        print(f"training {len(weights)} weights x {n_s} seeds as one program on "
              f"{mesh.size} device(s) ...", flush=True)
        t0 = time.perf_counter()
        result = D.gather(jax.block_until_ready(sweep(keys, weights, base)))
        print(f"done in {time.perf_counter() - t0:.1f}s (compile included)")
        if jax.process_index() != 0:             # multi-host: process 0 writes the artefacts
            return pd.DataFrame()
        result = jax.tree.map(lambda x: np.swapaxes(x, 0, 1), result)   # [S, K] -> [K, S]
        params = result.runner_state.params
        m = result.metrics
        with (out / "metrics.jsonl").open("w") as f:
            for i, wt in enumerate(weights):
                for u in range(obj.ppo.num_updates):
                    row = {"weight": wt, "update": u + 1}
                    row.update({k: _jsonable(v[i, :, u]) for k, v in m.items()})
                    f.write(json.dumps(row) + "\n")
        # metrics.jsonl above is the diagnosis; a diverged run writes nothing as good below
        V.check_divergence(m, c.guard, lambda i: f"tpfl-train weight {weights[i[0]]}, "
                                                 f"seed {i[1]}")
        curves = {f"w={wt}": np.asarray(m["episode_return"][i], float)
                  for i, wt in enumerate(weights)}
        ckpt = _checkpointer()
        ckpt.save((out / "checkpoints" / "final").absolute(), {"params": params})
        ckpt.wait_until_finished()
    rows, trades = [], []
    test_params = env_params.replace(market=test_m)
    for i, wt in enumerate(weights):
        for s in range(n_s):
            p = jax.tree.map(lambda x, i=i, s=s: x[i, s], params)   # params are [K, S, ...]
            ev = evaluate(p, obj.env, test_params.replace(tp_reward_weight=wt),
                          jax.random.key(c.seed + 1000 + s), c.train.eval_episodes,
                          config=obj.ppo)
            df = ev.trades
            rows.append({"policy": f"fixed_{wt}", "seed": s, "weight": wt,
                         "eval_return": float(np.mean(ev.returns)), "trades": len(df),
                         "hit_rate": float((df["exit_reason"] == "tp").mean()) if len(df) else 0,
                         "actual_r": float(df["r_realised"].mean()) if len(df) else 0.0,
                         "final_pnl": float(df["pnl"].sum() / c.train.eval_episodes),
                         "final_sharpe": float(df["r_realised"].mean() / df["r_realised"].std())
                         if len(df) > 1 else 0.0})
            trades.append(df.assign(weight=wt, seed=s))
    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    pd.concat(trades, ignore_index=True).to_parquet(out / "trades.parquet")
    plot = report.plot_curves(out / "learning_curves.png", curves, "episode_return",
                              "Training episode return per tp_reward_weight")
    table = report.policy_table(summary)
    report.write_report(out, table, f"tpfl-train: weights {weights}", [plot])
    audit = reward_audit(c, obj.env, env_params, spec, source, out)
    _append_audit(out, audit)
    _write_config(cfg, out)
    print(table.to_string(float_format=lambda x: f"{x:.4g}"))
    print(f"plots and report: {out}")
    return table


# --------------------------------------------------------------------------- tpfl-clm
def run_clm(cfg: DictConfig, out: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """One ``TrainingJob`` through ``ClmOrchestrator`` (SQLite tracker + registry in ``out``);
    a single-process job (host-side glue writing one SQLite database)."""
    import asyncio

    from tpfl_jax import distributed as D
    from tpfl_jax.config import to_mesh_config

    if D.is_multi_process(to_mesh_config(cfg)):
        raise ValueError("tpfl-clm runs as one process (it writes one SQLite tracker and "
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
        raise ValueError("tpfl-clm: the PPO adapters generate synthetic regime markets per "
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
    (out / "metrics.jsonl").write_text(json.dumps(info, default=float) + "\n")
    tracker.trades(c.clm.strategy_id).to_parquet(out / "trades.parquet")
    _write_config(cfg, out)
    print(json.dumps(info, indent=1, default=float))
    tracker.close()
    registry.close()
    return info


# --------------------------------------------------------------------------- hydra mains
def _hydra_job(fn, distributed: bool = True):
    def main(cfg: DictConfig) -> Any:
        import jax

        from tpfl_jax.config import to_mesh_config
        from tpfl_jax.distributed import init_distributed, sync_processes

        quiet_jax_logs()
        if distributed:
            init_distributed(to_mesh_config(cfg))    # no-op unless several processes
        out, cache = _out_dir(cfg)
        if jax.process_index() == 0:
            V.check_resume(out, cfg)                 # before the old run's record is replaced
            _write_config(cfg, out)
        try:
            result = fn(cfg, out, cache if cfg.compile_cache else None)
        finally:
            # the other processes wait here while process 0 writes (jax.distributed's own
            # shutdown barrier would time out on a long evaluation / checkpoint)
            sync_processes("tpfl_jax.app:done")
        if isinstance(result, pd.DataFrame) and len(result):
            return float(result["final_pnl"].max())   # objective for sweepers: best arm
        return None
    main.__name__ = fn.__name__
    main.__doc__ = fn.__doc__
    return hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(main)


loop_main = _hydra_job(run_loop)
train_main = _hydra_job(run_train)
clm_main = _hydra_job(run_clm, distributed=False)   # host-side glue: one process
audit_main = _hydra_job(run_audit_app, distributed=False)


def report_main(argv: list[str] | None = None) -> None:
    """``tpfl-report DIR``: collect a run or multirun dir into tables, plots and report.md."""
    import argparse

    from tpfl_jax.report import format_table, report_dir

    ap = argparse.ArgumentParser(prog="tpfl-report", description=report_main.__doc__)
    ap.add_argument("path")
    a = ap.parse_args(argv)
    table, path = report_dir(a.path)
    print(format_table(table))
    print(f"report: {path / 'report.md'}")


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
