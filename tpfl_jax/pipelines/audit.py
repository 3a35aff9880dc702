"""``tpfl-audit`` and the audit step of every run: the reward audit (``tpfl_jax.audit``) of the
configured env on its market."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from tpfl_jax.audit import AuditConfig, AuditResult, run_audit, write_audit
from tpfl_jax.baselines import reference_set
from tpfl_jax.config import Config, to_objects
from tpfl_jax.errors import UserError
from tpfl_jax.market import synthetic
from tpfl_jax.market.specs import PanelMarkets, SyntheticMarkets
from tpfl_jax.pipelines.common import RunPlan, market_line, setup_jax, user_inputs
from tpfl_jax.pipelines.markets import build_market, resolve_data_path
from tpfl_jax.resources import wall_time_estimate


def reward_audit(c: Config, env: Any, env_params: Any, spec: Any, source: Any, out: Path,
                 quiet: bool = False) -> AuditResult | None:
    """The reward audit of this run's env on its market: fresh ``audit.paths`` paths of the
    synthetic market, or the loaded data; writes ``audit_*`` files into ``out`` and returns the
    ``AuditResult`` (None when ``audit.enabled`` is false)."""
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
        market = synthetic.simulate(jax.random.fold_in(jax.random.key(c.seed), 7919), source,
                                    a.paths, spec.n_bars, spec.substeps)
        label = f"{c.market.kind}, {a.paths} fresh paths"
    elif isinstance(spec, PanelMarkets):      # a panel (or one file with a fitted source)
        market = spec.train_market(source, 0)
        label = f"{c.market.source}: the first cycle's training windows"
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


def plan(c: Config) -> RunPlan:
    """What ``tpfl-audit`` would run, after every check a run makes before it compiles."""
    obj = to_objects(c)
    with user_inputs():
        spec, source, _ = build_market(c, obj.env, obj.env_kwargs)
    a = c.audit
    if not a.enabled:
        return RunPlan("audit", (), "config.audit.enabled is false: nothing to audit")
    try:
        AuditConfig(weights=tuple(a.weights), episodes=a.episodes, lookback=a.lookback,
                    seed=c.seed)
    except ValueError as e:
        return RunPlan("audit", (), f"config.audit: {e}")
    n_rules = len(reference_set(obj.env, a.lookback))
    n_w = len({0.0, *map(float, a.weights)})
    steps = n_rules * n_w * a.episodes * int(c.env.max_steps_in_episode)
    lines = (f"tpfl-audit: {n_rules} reference rules x {n_w} weights x {a.episodes} episodes "
             f"of {c.env.max_steps_in_episode} steps (no training)",
             market_line(c, spec, source, obj.env.lookback)
             + (f"; the audit draws {a.paths} fresh paths" if c.market.source == "synthetic"
                else ""),
             "wall time: " + wall_time_estimate(steps))
    return RunPlan("audit", lines)


def run(c: Config, out: Path, cache_dir: Path | None = None) -> AuditResult | None:
    """``tpfl-audit``: the reward audit of the configured env and market."""
    obj = to_objects(c)
    out.mkdir(parents=True, exist_ok=True)
    setup_jax(cache_dir)
    with user_inputs():
        spec, source, env_params = build_market(c, obj.env, obj.env_kwargs)
    if not c.audit.enabled:
        raise UserError("config.audit.enabled is false: nothing to audit")
    result = reward_audit(c, obj.env, env_params, spec, source, out)
    print(f"tables and plot: {out}")
    return result
