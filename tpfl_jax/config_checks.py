"""Up-front checks of everything a user can get wrong in a config, run on the host before any
JAX compile (the schema is ``tpfl_jax.config``).

* ``check_known_keys``: the composed Hydra config has no key its schema lacks (closed schemas:
  ``+env.fee_bsp=3`` is an error naming the key and the closest known one).
* ``check_config`` / ``check_train`` / ``check_clm``: ranges and finiteness of every value,
  errors name the key (``config.<group>.<key>``) and what was expected; all problems of a
  config are reported in one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from tpfl_jax.agents.networks import ACTIVATIONS
from tpfl_jax.clm.models import TriggerReason
from tpfl_jax.clm.policies import POLICY_NAMES
from tpfl_jax.errors import UserError
from tpfl_jax.explog import LOGGER_KINDS
from tpfl_jax.market.synthetic import PARAMS_BY_KIND
from tpfl_jax.results import summary_columns
from tpfl_jax.rundir import confine
from tpfl_jax.tracking.checks import MAX_NAME_LEN

MAX_POSITION_SIZE = 100.0      # notional / equity (leverage) the env accepts
MAX_EQUITY = 1e12              # starting equity (currency); float32 keeps ~7 digits
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class ConfigError(UserError):
    """A config value out of range; the message names every bad key."""


# --------------------------------------------------------------------------- closed schemas
def _is_dataclass_type(t: Any) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def check_known_keys(cfg: Any, schema: type, where: str = "config") -> None:
    """Raise ``ConfigError`` for a key of ``cfg`` (a ``DictConfig``) that ``schema`` (e.g.
    ``config.Config``) lacks, e.g. one added with ``+``; open dict fields are not checked."""
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
        head = f"config.{key} = "
        if not any(p.startswith(head) for p in self.problems):    # one problem per key
            self.problems.append(f"{head}{value!r}; expected {expected}")

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
    # a typed PRNG key takes a 64-bit seed; beyond it jax.random.key overflows
    ck.num("seed", c.seed, lo=0, hi=INT64_MAX, integer=True)
    for check in (_check_env, _check_audit, _check_market, _check_ppo, _check_loop_guard,
                  _check_stats_and_logger):
        check(ck, c)
    _check_every_number(ck, c, "")      # from the schema: no key can be forgotten
    ck.raise_if_any()


def _check_every_number(ck: _Checker, value: Any, key: str) -> None:
    """Every number anywhere in the config, found by walking the schema's values: a float is
    finite, an int fits 64 bits (the ranges of each key are the checks above)."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _check_every_number(ck, getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_every_number(ck, v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_every_number(ck, v, f"{key}[{i}]")
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if not -INT64_MAX - 1 <= int(value) <= INT64_MAX:
            ck.bad(key, value, "an integer that fits 64 bits")
    elif isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        ck.bad(key, value, "a finite number")


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
    # inside: gymnax's import starts the XLA backend, and configs are checked before a
    # multi-process job's jax.distributed.initialize
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
    if ck.choice("market.source", m.source, ("synthetic", "csv", "panel")) and \
            m.source == "synthetic":
        ck.choice("market.kind", m.kind, sorted(PARAMS_BY_KIND))
        for k in ("train_paths", "deploy_paths", "n_bars", "substeps"):
            ck.num(f"market.{k}", getattr(m, k), lo=1, hi=INT32_MAX, integer=True)
        for k, v in dict(m.params).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                ck.num(f"market.params.{k}", v)
    elif m.source in ("csv", "panel"):          # panel files: pipelines.markets checks them
        if m.source == "csv" and not m.path:
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
    if t.chunk_updates is not None:
        ck.num("train.chunk_updates", t.chunk_updates, lo=1, hi=INT32_MAX, integer=True)
    if ck.num("train.eval_episodes", t.eval_episodes, lo=1, hi=INT32_MAX, integer=True):
        ck.num("train.curve_episodes", t.curve_episodes, lo=1, hi=t.eval_episodes,
               integer=True)
    ck.raise_if_any()


def check_clm(c: Any, out: Path | None = None) -> None:
    """``tpfl-clm``'s ``clm`` section (trigger, policy, names, counts, the database path)."""
    ck = _Checker()
    k = c.clm
    ck.choice("clm.trigger", k.trigger, sorted({t.value for t in TriggerReason}))
    ck.choice("clm.policy", k.policy, POLICY_NAMES)
    for name in ("symbol", "strategy_id", "db"):
        v = getattr(k, name)
        if not isinstance(v, str) or not v.strip():
            ck.bad(f"clm.{name}", v, "a non-empty string")
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
