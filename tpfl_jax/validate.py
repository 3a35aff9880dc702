"""Up-front checks of everything a user can get wrong, run on the host before any JAX compile.

* ``check_known_keys``: the composed Hydra config has no key its schema lacks (closed schemas:
  ``+env.fee_bsp=3`` is an error naming the key and the closest known one).
* ``check_config`` / ``check_train`` / ``check_clm``: ranges and finiteness of every value,
  errors name the key (``config.<group>.<key>``) and what was expected; all problems of a
  config are reported in one ``ConfigError``.
* ``estimate_footprint`` / ``check_memory``: a lower-bound estimate of the device memory a run
  needs, refused with the number when it cannot fit.
* ``check_divergence``: training metrics (finite loss / params, approx-KL, entropy, |loss|)
  against the ``guard`` thresholds; a diverged run raises ``DivergenceError``.
* ``confine`` / ``safe_name``: names that become paths stay inside their base directory.
* ``compile_cache_dir``: the user-level JAX compilation cache (not the run directory).
* ``config_identity``: what a run computes (``tpfl_jax.rundir`` refuses to mix two in one
  directory).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tpfl_jax.errors import UserError

COMPILE_CACHE_ENV = "TPFL_COMPILE_CACHE_DIR"
MAX_POSITION_SIZE = 100.0      # notional / equity (leverage) the env accepts
MAX_EQUITY = 1e12              # starting equity (currency); float32 keeps ~7 digits
INT32_MAX = 2**31 - 1
# keys that do not change what a run computes (excluded from its identity)
NON_IDENTITY_KEYS = ("progress", "compile_cache", "compile_cache_dir", "guard", "mesh")


class ConfigError(UserError):
    """A config value out of range; the message names every bad key."""


class DivergenceError(FloatingPointError):
    """Training diverged (non-finite or exploding loss / params, collapsed policy)."""


@dataclass
class GuardSection:
    """Safety limits (Hydra group ``guard``; ``null`` disables one).

    After training, a PPO update with ``approx_kl > max_approx_kl``, ``|loss| > max_abs_loss``,
    or a last update with ``entropy < min_entropy`` (a collapsed policy) fails the run with
    ``DivergenceError``: non-zero exit, no checkpoint or table written as good. Non-finite
    loss/params always fail. ``max_memory_gb``: refuse a run whose estimated footprint per
    device exceeds this (null: the detected device memory; on CPU the host's RAM).
    """

    max_approx_kl: float | None = 1.0
    min_entropy: float | None = 1e-3
    max_abs_loss: float | None = 1e8
    max_memory_gb: float | None = None


# --------------------------------------------------------------------------- closed schemas
def _is_dataclass_type(t: Any) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def check_known_keys(cfg: Any, schema: type, where: str = "config") -> None:
    """Raise ``ConfigError`` for a key of ``cfg`` (a ``DictConfig``) that ``schema`` (e.g.
    ``config.Config``) lacks, e.g. one added with ``+``; open dict fields are not checked."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    problems: list[str] = []

    def walk(node: Any, cls: type, path: str) -> None:
        if not isinstance(node, DictConfig):
            return
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in node.keys():
            key = str(key)
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f" (did you mean {path}.{close[0]}?)" if close else ""
                problems.append(f"{path}.{key}: unknown key{hint}; known keys of {path}: "
                                f"{sorted(fields)}")
                continue
            ftype = _field_class(cls, key)
            child = node._get_node(key)
            if ftype is None or child is None or OmegaConf.is_missing(node, key):
                continue
            if _is_dataclass_type(ftype) and isinstance(child, DictConfig):
                walk(child, ftype, f"{path}.{key}")
            elif isinstance(ftype, tuple) and isinstance(child, ListConfig):   # list[dataclass]
                for i, item in enumerate(child):
                    if isinstance(item, DictConfig):
                        walk(item, ftype[0], f"{path}.{key}[{i}]")

    if isinstance(cfg, DictConfig):
        walk(cfg, schema, where)
    if problems:
        raise ConfigError("; ".join(problems))


def _field_class(cls: type, name: str) -> Any:
    """The dataclass type of field ``name`` of ``cls`` (``(T,)`` for ``list[T]`` of
    dataclasses), else None."""
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotation: not a nested schema
        return None
    t = hints.get(name)
    if _is_dataclass_type(t):
        return t
    if typing.get_origin(t) is list:
        (arg,) = typing.get_args(t) or (None,)
        if _is_dataclass_type(arg):
            return (arg,)
    return None


# --------------------------------------------------------------------------- value checks
class _Checker:
    """Collects ``config.<path>: value; expected ...`` problems."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(f"config.{key} = {value!r}; expected {expected}")

    def num(self, key: str, v: Any, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False, integer: bool = False,
            optional: bool = False) -> bool:
        if v is None and optional:
            return True
        kind = "an integer" if integer else "a finite number"
        ok = not isinstance(v, bool) and isinstance(v, (int, float, np.number))
        if ok and integer and not float(v).is_integer():
            ok = False
        if ok and not math.isfinite(float(v)):
            ok = False
        if ok and lo is not None:
            ok = float(v) > lo if lo_open else float(v) >= lo
        if ok and hi is not None:
            ok = float(v) < hi if hi_open else float(v) <= hi
        if not ok:
            rng = []
            fmt = (lambda x: str(int(x))) if integer else (lambda x: f"{x:g}")
            if lo is not None:
                rng.append(f"{'>' if lo_open else '>='} {fmt(lo)}")
            if hi is not None:
                rng.append(f"{'<' if hi_open else '<='} {fmt(hi)}")
            self.bad(key, v, kind + (" " + " and ".join(rng) if rng else ""))
        return ok

    def choice(self, key: str, v: Any, options: Sequence[Any]) -> bool:
        if v not in options:
            self.bad(key, v, f"one of {list(options)}")
            return False
        return True

    def raise_if_any(self) -> None:
        if len(self.problems) == 1:
            raise ConfigError(self.problems[0])
        if self.problems:
            raise ConfigError(f"config: {len(self.problems)} bad values:\n  "
                              + "\n  ".join(self.problems))


def check_config(c: Any) -> None:
    """Ranges and finiteness of every section of a ``config.Config``; raises one
    ``ConfigError`` naming every bad key."""
    ck = _Checker()
    for check in (_check_env, _check_audit, _check_market, _check_ppo, _check_loop_guard,
                  _check_stats_and_logger):
        check(ck, c)
    ck.raise_if_any()


def _check_env(ck: _Checker, c: Any) -> None:
    e = c.env
    ck.num("env.window", e.window, lo=2, integer=True)
    ck.num("env.premature_horizon", e.premature_horizon, lo=1, integer=True)
    if not e.tp_mults:
        ck.bad("env.tp_mults", list(e.tp_mults), "a non-empty list of numbers > 0")
    tps_ok = all([ck.num(f"env.tp_mults[{i}]", m, lo=0, lo_open=True)
                  for i, m in enumerate(e.tp_mults)])
    if tps_ok and any(b <= a for a, b in zip(e.tp_mults, e.tp_mults[1:], strict=False)):
        # the TP index orders distances (the audit's churn rule trades the tightest, index 0)
        ck.bad("env.tp_mults", list(e.tp_mults),
               f"strictly increasing TP distances, e.g. {sorted(set(map(float, e.tp_mults)))}")
    ck.num("env.sl_mult", e.sl_mult, lo=0, lo_open=True)
    for k in ("fee_bps", "half_spread_bps", "impact_coef"):
        ck.num(f"env.{k}", getattr(e, k), lo=0)
    # the env runs in float32: notional = equity x size must stay far from its range (3.4e38)
    ck.num("env.position_size", e.position_size, lo=0, lo_open=True, hi=MAX_POSITION_SIZE)
    ck.num("env.initial_equity", e.initial_equity, lo=0, lo_open=True, hi=MAX_EQUITY)
    ck.num("env.ruin_floor", e.ruin_floor, lo=0, hi=1, hi_open=True)
    ck.num("env.max_holding", e.max_holding, lo=1, integer=True)
    ck.num("env.max_steps_in_episode", e.max_steps_in_episode, lo=1, hi=INT32_MAX,
           integer=True)
    # env.tp_reward_weight: every app sets the weight elsewhere (see config.EnvConfig); a value
    # other than the default would be silently ignored, so it is refused.
    w = e.tp_reward_weight
    if ck.num("env.tp_reward_weight", w, lo=0) and float(w) != 1.0:
        ck.bad("env.tp_reward_weight", w,
               "1.0 (the default): no app reads it; the weight is set by train.weights "
               "(tpfl-train), policy.policies[i].initial_weight (tpfl-loop) or clm.policy "
               "(tpfl-clm)")
    for k in ("pnl", "drawdown", "size", "alignment", "tp_bonus"):
        ck.num(f"env.reward.{k}", getattr(e.reward, k), lo=0)
    from tpfl_jax.env.trading import _MODE_FIELDS

    for k, names in _MODE_FIELDS.items():
        ck.choice(f"env.{k}", getattr(e, k), names)


def _check_audit(ck: _Checker, c: Any) -> None:
    e = c.env
    a = c.audit
    ck.num("audit.episodes", a.episodes, lo=2, integer=True)
    ck.num("audit.paths", a.paths, lo=1, integer=True)
    if not a.weights:
        ck.bad("audit.weights", list(a.weights), "a non-empty list of weights >= 0")
    for i, w_ in enumerate(a.weights):
        ck.num(f"audit.weights[{i}]", w_, lo=0)
    if a.lookback is not None:
        ck.num("audit.lookback", a.lookback, lo=1, hi=e.window, integer=True)



def _check_market(ck: _Checker, c: Any) -> None:
    m = c.market
    if ck.choice("market.source", m.source, ("synthetic", "csv")) and m.source == "synthetic":
        from tpfl_jax.market.synthetic import PARAMS_BY_KIND

        ck.choice("market.kind", m.kind, sorted(PARAMS_BY_KIND))
        for k in ("train_paths", "deploy_paths", "n_bars", "substeps"):
            ck.num(f"market.{k}", getattr(m, k), lo=1, hi=INT32_MAX, integer=True)
        for k, v in dict(m.params).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                ck.num(f"market.params.{k}", v)
    elif m.source == "csv":
        if not m.path:
            ck.bad("market.path", m.path, "the OHLCV file (required for market.source=csv)")
        for k in ("train_bars", "deploy_bars"):
            ck.num(f"market.{k}", getattr(m, k), lo=1, hi=INT32_MAX, integer=True)
        if not isinstance(m.sep, str) or not m.sep:
            ck.bad("market.sep", m.sep, "a non-empty column separator, e.g. ',' or ';'")
        if m.no_volume and m.columns.volume is not None:
            ck.bad("market.no_volume", m.no_volume,
                   f"false when market.columns.volume names a column ({m.columns.volume!r})")
        for k in ("timestamp",):
            v = getattr(m, k)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                ck.bad(f"market.{k}", v, "null or a column name")



def _check_ppo(ck: _Checker, c: Any) -> None:
    p = c.ppo
    ints_ok = True
    for k, lo in (("num_envs", 1), ("num_steps", 1), ("update_epochs", 1),
                  ("num_minibatches", 1), ("total_timesteps", 1)):
        ints_ok &= ck.num(f"ppo.{k}", getattr(p, k), lo=lo, integer=True)
    if ints_ok:
        batch = p.num_envs * p.num_steps
        if batch > INT32_MAX:
            ck.bad("ppo.num_envs", p.num_envs, f"num_envs x num_steps <= {INT32_MAX} "
                   f"(got {batch})")
        elif p.total_timesteps < batch:
            ck.bad("ppo.total_timesteps", p.total_timesteps,
                   f">= one batch = ppo.num_envs x ppo.num_steps = {batch} (else no update)")
        elif p.total_timesteps // batch > INT32_MAX:
            ck.bad("ppo.total_timesteps", p.total_timesteps,
                   f"at most {INT32_MAX} updates of {batch} steps")
        elif batch % p.num_minibatches:
            ck.bad("ppo.num_minibatches", p.num_minibatches,
                   f"a divisor of the batch ppo.num_envs x ppo.num_steps = {batch}")
    if not p.widths:
        ck.bad("ppo.widths", list(p.widths), "a non-empty list of layer widths >= 1")
    for i, w in enumerate(p.widths):
        ck.num(f"ppo.widths[{i}]", w, lo=1, integer=True)
    from tpfl_jax.agents.networks import ACTIVATIONS

    ck.choice("ppo.activation", p.activation, sorted(ACTIVATIONS))
    ck.num("ppo.lr", p.lr, lo=0, lo_open=True)
    ck.num("ppo.gamma", p.gamma, lo=0, hi=1)
    ck.num("ppo.gae_lambda", p.gae_lambda, lo=0, hi=1)
    ck.num("ppo.clip_eps", p.clip_eps, lo=0, lo_open=True)
    ck.num("ppo.ent_coef", p.ent_coef, lo=0)
    ck.num("ppo.vf_coef", p.vf_coef, lo=0)
    ck.num("ppo.max_grad_norm", p.max_grad_norm, lo=0, lo_open=True)
    ck.num("ppo.adam_eps", p.adam_eps, lo=0, lo_open=True)
    ck.num("ppo.obs_clip", p.obs_clip, lo=0, lo_open=True)
    ck.num("ppo.init_log_std", p.init_log_std)



def _check_loop_guard(ck: _Checker, c: Any) -> None:
    lp = c.loop
    for k in ("num_cycles", "deploy_envs", "min_attempts", "num_seeds"):
        if hasattr(lp, k):
            ck.num(f"loop.{k}", getattr(lp, k), lo=1, hi=INT32_MAX, integer=True)
    if hasattr(lp, "r_source"):
        ck.choice("loop.r_source", lp.r_source, ("estimated", "actual"))

    g = c.guard
    ck.num("guard.max_approx_kl", g.max_approx_kl, lo=0, lo_open=True, optional=True)
    ck.num("guard.min_entropy", g.min_entropy, optional=True)
    ck.num("guard.max_abs_loss", g.max_abs_loss, lo=0, lo_open=True, optional=True)
    ck.num("guard.max_memory_gb", g.max_memory_gb, lo=0, lo_open=True, optional=True)


def _check_stats_and_logger(ck: _Checker, c: Any) -> None:
    """``stats.*`` (level, resamples, declared metrics, control weights) and ``logger.*``."""
    from tpfl_jax.results import summary_columns

    st = c.stats
    ck.num("stats.level", st.level, lo=0, hi=1, lo_open=True, hi_open=True)
    ck.num("stats.n_boot", st.n_boot, lo=100, hi=10**7, integer=True)
    known = summary_columns()
    ck.choice("stats.primary_metric", st.primary_metric, known)
    for i, m in enumerate(st.secondary_metrics):
        ck.choice(f"stats.secondary_metrics[{i}]", m, known)
    if not st.control_weights:
        ck.bad("stats.control_weights", list(st.control_weights),
               "at least one control weight (e.g. [1.0, 0.0]): every comparison is paired "
               "against a control arm")
    for i, w in enumerate(st.control_weights):
        ck.num(f"stats.control_weights[{i}]", w, lo=0)
    if len(set(map(str, st.control_weights))) != len(st.control_weights):
        ck.bad("stats.control_weights", list(st.control_weights), "distinct weights")
    lg = c.logger
    from tpfl_jax.explog import LOGGER_KINDS

    ck.choice("logger.kind", lg.kind, LOGGER_KINDS)
    if lg.experiment is not None and (not isinstance(lg.experiment, str) or not
                                      lg.experiment.strip() or len(lg.experiment) > 100):
        ck.bad("logger.experiment", lg.experiment, "null or a name of 1-100 characters")


def check_train(c: Any) -> None:
    """``tpfl-train``'s ``train`` section (weights, seeds, chunking, evaluation)."""
    ck = _Checker()
    t = c.train
    if not t.weights:
        ck.bad("train.weights", list(t.weights), "a non-empty list of weights >= 0")
    for i, w in enumerate(t.weights):
        ck.num(f"train.weights[{i}]", w, lo=0)
    if len(set(map(float, [w for w in t.weights if isinstance(w, (int, float))]))) != len(
            t.weights):
        ck.bad("train.weights", list(t.weights), "distinct weights (each is a table row)")
    ck.num("train.num_seeds", t.num_seeds, lo=1, hi=INT32_MAX, integer=True)
    ck.num("train.chunk_updates", t.chunk_updates, lo=1, hi=INT32_MAX, integer=True)
    if ck.num("train.eval_episodes", t.eval_episodes, lo=1, hi=INT32_MAX, integer=True):
        ck.num("train.curve_episodes", t.curve_episodes, lo=1, hi=t.eval_episodes,
               integer=True)
    ck.raise_if_any()


def check_clm(c: Any, out: Path | None = None) -> None:
    """``tpfl-clm``'s ``clm`` section (trigger, policy, names, counts, the database path)."""
    from tpfl_jax.clm.models import TriggerReason
    from tpfl_jax.clm.policies import POLICY_NAMES

    ck = _Checker()
    k = c.clm
    ck.choice("clm.trigger", k.trigger, sorted({t.value for t in TriggerReason}))
    ck.choice("clm.policy", k.policy, POLICY_NAMES)
    for name in ("symbol", "strategy_id", "db"):
        v = getattr(k, name)
        if not isinstance(v, str) or not v.strip():
            ck.bad(f"clm.{name}", v, "a non-empty string")
    from tpfl_jax.tracking.checks import MAX_NAME_LEN

    if isinstance(k.symbol, str) and "," in k.symbol:
        ck.bad("clm.symbol", k.symbol, "one symbol (no commas)")
    if isinstance(k.symbol, str) and len(k.symbol) > MAX_NAME_LEN:
        ck.bad("clm.symbol", k.symbol[:40] + "...", f"at most {MAX_NAME_LEN} characters (the "
               "symbol names the model's checkpoint folder)")
    if isinstance(k.db, str) and (len(k.db) > 255 or "\x00" in k.db):
        ck.bad("clm.db", k.db[:40] + "...", "a file name of at most 255 characters")
    ck.num("clm.min_attempts", k.min_attempts, lo=1, hi=INT32_MAX, integer=True)
    ck.num("clm.backtest_episodes", k.backtest_episodes, lo=1, hi=INT32_MAX, integer=True)
    if out is not None and isinstance(k.db, str) and k.db.strip():
        try:
            confine(out, k.db, "config.clm.db")
        except ValueError as e:
            ck.problems.append(str(e))
    ck.raise_if_any()


# --------------------------------------------------------------------------- memory
def estimate_footprint(ppo: Any, obs_size: int, n_agents: int, *, n_actions: int = 16,
                       market_cells_per_agent: int = 0, substeps: int = 1,
                       shared_market_cells: int = 0, deploy_envs: int = 0,
                       keep_trade_cells: int = 0, curve_cells_per_agent: int = 0
                       ) -> dict[str, int]:
    """Lower-bound bytes a run holds at once, by component (and ``total``).

    Per agent: the network's parameters with their gradient, Adam moments and one copy; the
    rollout of ``num_envs x num_steps`` transitions (observation twice, ~35
    scalars of actions, values, rewards and trade records), the update batch and its shuffled
    copy, the minibatch activations; synthetic markets generated per agent (``market_cells``
    bars with ``substeps`` intrabar draws), kept deploy trades and per-update metric curves
    (``curve_cells_per_agent`` = updates x cycles x metrics). Shared: one market.
    """
    f32 = 4
    transitions = ppo.num_envs * ppo.num_steps
    per_t = 2 * obs_size + 35 + 2 * (obs_size + 5)
    width = sum(ppo.widths) * (1 if ppo.shared_torso else 2)
    act = ppo.num_envs * ppo.num_steps // max(ppo.num_minibatches, 1) * (
        obs_size + 2 * width + n_actions) * 3
    market = market_cells_per_agent * (4 * substeps + 20)
    deploy = deploy_envs * (2 * obs_size + 40) + keep_trade_cells * 20
    layers = [obs_size, *ppo.widths]
    torso = sum(a * b + b for a, b in zip(layers, layers[1:], strict=False))
    heads = ppo.widths[-1] * (n_actions + 1) + n_actions + 1
    n_params = torso * (1 if ppo.shared_torso else 2) + heads
    comp = {
        # parameters, their gradient and Adam's two moments (and a copy for the warm start)
        "network_and_optimizer": n_agents * n_params * 5 * f32,
        "rollout_and_batch": n_agents * transitions * per_t * f32,
        "activations": n_agents * act * f32,
        "markets": n_agents * market * f32 + shared_market_cells * 12 * f32,
        "deploy": n_agents * deploy * f32,
        "metric_curves": n_agents * curve_cells_per_agent * f32,
    }
    comp["total"] = sum(comp.values())
    return comp


def device_memory_bytes() -> tuple[int, int, str]:
    """(bytes per device, number of devices, platform); CPU devices share the host's RAM."""
    import jax

    devs = jax.local_devices()
    plat = devs[0].platform
    if plat == "cpu":
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            ram = 0
        return int(ram), 1, plat             # one pool shared by every CPU device
    limit = 0
    try:
        limit = int((devs[0].memory_stats() or {}).get("bytes_limit", 0))
    except Exception:  # noqa: BLE001 - backends without memory stats: no limit known
        limit = 0
    return limit, len(devs), plat


def check_memory(footprint: Mapping[str, int], n_agents: int, guard: GuardSection | None,
                 what: str) -> None:
    """Refuse (``ConfigError``) when the estimated footprint cannot fit in memory."""
    limit, n_dev, plat = device_memory_bytes()
    limit_text = f"{limit / 2**30:.3g} GiB"
    if guard is not None and guard.max_memory_gb is not None:
        limit = int(guard.max_memory_gb * 2**30)
        limit_text = f"{guard.max_memory_gb:g} GiB (guard.max_memory_gb)"
    if limit <= 0:
        return
    total = footprint["total"]
    per_dev = total if n_dev <= 1 else math.ceil(total * math.ceil(n_agents / n_dev)
                                                  / max(n_agents, 1))
    if per_dev > limit:
        parts = ", ".join(f"{k} {v / 2**30:.3g} GiB" for k, v in footprint.items()
                          if k != "total" and v)
        raise ConfigError(
            f"{what}: needs at least {per_dev / 2**30:.3g} GiB per {plat} device ({parts}; "
            f"{n_agents} agent(s) over {n_dev} device(s)) but {limit_text} is "
            "available; reduce ppo.num_envs / ppo.num_steps / ppo.total_timesteps, the number "
            "of seeds or policies/weights, or market sizes (guard.max_memory_gb sets the "
            "limit)")


def check_run_memory(c: Any, ppo: Any, command: str, n_agents: int, *, obs_size: int,
                     n_actions: int, cycles: int = 1, deploy_envs: int = 0,
                     keep_trades: bool = False, curve_metrics: int = 40) -> dict[str, int]:
    """``estimate_footprint`` of an app's config (``command``: loop or train), refused by
    ``check_memory`` when it cannot fit; returns the estimate."""
    m = c.market
    per_agent_market = shared = 0
    substeps = 1
    if m.source == "synthetic":
        cells = (m.train_paths + m.deploy_paths) * m.n_bars
        substeps = m.substeps
        if command == "loop":
            per_agent_market = cells          # every policy x seed generates its markets
        else:
            shared = cells * (4 * substeps + 20) // 12
    steps = int(c.env.max_steps_in_episode)
    fp = estimate_footprint(
        ppo, obs_size, n_agents, n_actions=n_actions,
        market_cells_per_agent=per_agent_market, substeps=substeps,
        shared_market_cells=shared, deploy_envs=deploy_envs,
        keep_trade_cells=cycles * steps * deploy_envs if keep_trades else 0,
        curve_cells_per_agent=ppo.num_updates * cycles * curve_metrics)
    check_memory(fp, n_agents, c.guard, f"tpfl-{command}")
    return fp


# --------------------------------------------------------------------------- divergence
def check_divergence(metrics: Mapping[str, Any], guard: GuardSection | None,
                     where: Callable[[tuple[int, ...]], str], first_update: int = 0,
                     ran: Any = None) -> None:
    """Raise ``DivergenceError`` when a PPO update's metrics show divergence.

    ``metrics[k]`` arrays have the update axis LAST (any leading axes: seeds, policies, ...);
    ``where(index)`` describes the leading index (e.g. "weight 0.5, seed 1"). ``ran`` (bool,
    the metrics' shape) marks the updates that were run: the loop's cycles stop at their
    criterion and leave NaN placeholders for the rest, which are not divergence. Checks, in
    order: ``finite`` (loss and params), ``|loss| <= max_abs_loss``, ``approx_kl <=
    max_approx_kl`` on every run update, ``entropy >= min_entropy`` on the last run update.
    """
    g = GuardSection() if guard is None else guard
    mask = None if ran is None else np.asarray(ran, bool)

    def first(bad: np.ndarray) -> tuple[tuple[int, ...], int] | None:
        if mask is not None:
            bad = bad & np.broadcast_to(mask, bad.shape)
        if not bad.any():
            return None
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return idx[:-1], idx[-1]

    def arr(k: str) -> np.ndarray | None:
        return None if k not in metrics else np.asarray(metrics[k], float)

    checks: list[tuple[str, np.ndarray | None, Callable[[np.ndarray], np.ndarray], str]] = [
        ("finite", arr("finite"), lambda x: x < 0.5, "non-finite loss or parameters (NaN/inf)"),
        ("loss", arr("loss"), lambda x: ~np.isfinite(x), "non-finite loss"),
    ]
    if g.max_abs_loss is not None:
        checks.append(("loss", arr("loss"), lambda x: np.abs(x) > g.max_abs_loss,
                       f"|loss| > guard.max_abs_loss = {g.max_abs_loss:g}"))
    if g.max_approx_kl is not None:
        checks.append(("approx_kl", arr("approx_kl"),
                       lambda x: ~(x <= g.max_approx_kl),
                       f"approx_kl > guard.max_approx_kl = {g.max_approx_kl:g}"))
    for key, x, test, text in checks:
        if x is None or x.size == 0:
            continue
        hit = first(test(x))
        if hit is not None:
            lead, u = hit
            val = x[lead + (u,)]
            raise DivergenceError(
                f"training diverged at {where(lead)}, update {first_update + u + 1}: {key} = "
                f"{val:.4g} ({text}); a larger ppo.lr or smaller batch is the usual cause. "
                "Nothing was written as a good result")
    ent = arr("entropy")
    if g.min_entropy is not None and ent is not None and ent.size:
        n = ent.shape[-1]
        if mask is None:
            last_i = np.full(ent.shape[:-1], n - 1)
        else:                                   # the last run update (0 when none ran)
            m = np.broadcast_to(mask, ent.shape)
            last_i = np.where(m.any(-1), n - 1 - np.argmax(m[..., ::-1], -1), 0)
        last = np.take_along_axis(ent, last_i[..., None], -1)[..., 0]
        ran_any = np.ones(last.shape, bool) if mask is None else np.broadcast_to(
            mask, ent.shape).any(-1)
        bad = ran_any & ~(last >= g.min_entropy)
        if bad.any():
            lead = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DivergenceError(
                f"training diverged at {where(lead)}, update "
                f"{first_update + int(last_i[lead]) + 1}: "
                f"entropy = {last[lead]:.4g} < guard.min_entropy = {g.min_entropy:g} (the "
                "policy collapsed to one action). Nothing was written as a good result")


# --------------------------------------------------------------------------- paths
_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-=@")


def safe_name(name: str) -> str:
    """``name`` as one path component: characters outside ``[A-Za-z0-9._+-=@]`` become ``_``
    and, when anything changed, an 8-hex digest of ``name`` is appended (distinct names stay
    distinct). Never ``''``, ``'.'`` or ``'..'``; never starts with ``.``."""
    s = "".join(ch if ch in _SAFE else "_" for ch in str(name))
    if s != name or not s or s.startswith("."):
        s = f"{s.lstrip('.') or 'x'}-{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"
    return s


def confine(base: str | os.PathLike[str], path: str | os.PathLike[str], what: str) -> Path:
    """``base / path`` resolved; ``ValueError`` naming ``what`` when it leaves ``base``."""
    b = Path(base).resolve()
    p = (b / Path(path)).resolve()
    if p != b and b not in p.parents:
        raise UserError(f"{what} = {os.fspath(path)!r} resolves to {p}, outside {b}; "
                         "expected a path inside it")
    return p


# --------------------------------------------------------------------------- compile cache
def compile_cache_dir(configured: str | None = None) -> Path:
    """The user-level JAX compilation cache: ``configured`` (config ``compile_cache_dir``),
    else ``$TPFL_COMPILE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tpfl_jax/jax``, else
    ``$HOME/.cache/tpfl_jax/jax``; without a usable ``HOME`` (unset, empty, relative or ``/``)
    ``<temp dir>/tpfl_jax-<uid>/jax``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get(COMPILE_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / "tpfl_jax" / "jax"
    home = os.environ.get("HOME", "")
    if home and Path(home).is_absolute() and Path(home) != Path("/"):
        return Path(home) / ".cache" / "tpfl_jax" / "jax"
    import tempfile  # no usable home: a per-user cache in the temp dir

    return Path(tempfile.gettempdir()) / f"tpfl_jax-{os.getuid()}" / "jax"


# --------------------------------------------------------------------------- run identity
def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_identity(cfg: Any) -> dict[str, Any]:
    """The identity of a run: its resolved config without ``NON_IDENTITY_KEYS``."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        d = OmegaConf.to_container(cfg, resolve=True)
    elif dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        d = dict(cfg)
    return {k: v for k, v in d.items() if k not in NON_IDENTITY_KEYS}


def identity_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 of an identity mapping (canonical JSON)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> str:
    """``key: old -> new`` for the keys that differ (at most ``limit``)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    parts = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"... {len(keys) - limit} more")
    return "; ".join(parts) or "(no visible difference)"


def tree_digest(tree: Any) -> str:
    """SHA-256 over every leaf's shape and values (host copy), in tree order. Values are
    widened (floats to float64, integers/bools to int64) so a restore into a wider dtype of
    the same values has the same digest; any changed value changes it."""
    import jax

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.complexfloating):
            a = a.astype(np.complex128)
        elif np.issubdtype(a.dtype, np.inexact):
            a = a.astype(np.float64)
        elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
            a = a.astype(np.int64)
        h.update(f"{a.dtype.kind}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def first_non_finite(value: Any, path: str = "") -> str | None:
    """Path of the first non-finite float in a nested dict / list / array, else None."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            hit = first_non_finite(v, f"{path}[{k!r}]")
            if hit is not None:
                return hit
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            hit = first_non_finite(v, f"{path}[{i}]")
            if hit is not None:
                return hit
        return None
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isfinite(float(value)) else f"{path} = {value!r}"
    if hasattr(value, "__array__"):
        a = np.asarray(value)
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            return f"{path} (array with a NaN/inf)"
    return None


__all__ = ["COMPILE_CACHE_ENV", "ConfigError", "DivergenceError", "GuardSection",
           "check_clm", "check_config", "check_divergence", "check_known_keys",
           "check_memory", "check_run_memory", "check_train",
           "compile_cache_dir", "confine", "config_identity", "device_memory_bytes",
           "estimate_footprint", "first_non_finite", "identity_diff", "identity_hash",
           "safe_name", "tree_digest"]
