"""TP reward-weight policies: pure jnp ``(stats, state, params) -> (weight, state, code)``.

Every policy is jit- and vmap-able and shares one ``PolicyState`` / ``PolicyParams`` structure, so
``apply_policy`` can run any mix of policies in one ``vmap`` (``params.policy_id`` selects the
branch through ``lax.switch``). ``decide_weight`` is the host-side wrapper (tracker feedback dict
in, Python float and a human-readable reason out); it never runs inside jit.

Policies (``POLICY_NAMES``; the seed's table is ``seed_table``):

* ``seed_table``: hit < hit_low and R >= r_good -> w_increase (2.0); hit > hit_high and R < r_good
  -> w_decrease (0.5); hit_low <= hit <= hit_high and R < r_good -> w_moderate (1.2); otherwise
  w_default (1.0); invalid stats (no feedback) -> w_default.
* ``ema``: ``w <- w + ema_alpha * (target - w)`` toward the table's target (w_default when invalid).
* ``vol_scaled``: the table with the hit-rate band [hit_low, hit_high] widened (or narrowed) around
  its centre by ``s = clip((volatility / vol_ref) ** vol_exponent, vol_scale_min, vol_scale_max)``:
  noisier symbols need a more extreme hit rate before the weight moves. Unknown volatility (0) ->
  ``s = 1``, i.e. exactly ``seed_table``.
* ``gated``: moves to the table's target only when the hit rate says something about TP skill:
  its Wilson interval (``z``) must exclude the no-edge hit rate ``sl / (tp + sl)`` of the chosen TP
  distances (a low hit rate that wide TPs alone explain moves nothing) and lie in the same table
  region as the point estimate (R held at its estimate); otherwise, and for invalid stats, it keeps
  the previous weight. Without a no-edge rate (0) only the region test applies.
* ``continuous``: ``w = clip(2 ** (cont_slope * (centre - hit)), w_min, w_max)`` with centre the
  middle of the hit-rate band (defaults: 2.0 at 0.45, 1.0 at 0.575, 0.5 at 0.70); invalid ->
  w_default. Uses the hit rate only.
* ``expectancy``: decides on the trades' economics, not on the hit rate alone. Positive
  expectancy (mean realised R > 0 and PnL per trade > 0) with TP skill (hit rate minus the
  no-edge hit rate ``sl / (tp + sl)`` of the chosen TP distances) above ``skill_margin`` ->
  ``w + exp_step``; negative expectancy (mean realised R < 0 and PnL per trade < 0) ->
  ``w - exp_step``; otherwise (mixed evidence) and for invalid stats the weight is held.
  Clipped to [w_min, w_max].
* ``bandit``: learns which weight pays: discounted Gaussian Thompson sampling over the
  ``bandit_grid`` weights (see :func:`bandit` for its model and assumptions). Reward: PnL per
  attempt (``pnl_per_trade``, currency per closed trade after costs) of the feedback period.
  Each arm's mean reward has a prior ``N(bandit_prior_mean, bandit_prior_sd^2)`` (no forced
  exploration: an untried weight is chosen when its prior draw beats the others' posterior
  draws); the draws are keyed by ``PolicyState.key`` (per seed in the loop), ``bandit_seed``
  and the update count; ``bandit_discount`` in (0, 1] ages old rewards (1: none).
* ``fixed``: keeps the weight it starts with (a control arm).

User policies (``docs/policies.md``): a kind ``"package.module:function"`` names a pure
``(stats, state, params) -> (weight, state, code)`` function. :func:`load_policy` imports it and
checks it (3 positional parameters; under ``jax.jit`` and ``jax.vmap`` with abstract inputs it
returns a float32 scalar weight, a state of the input's structure, shapes and dtypes and an int32
scalar code) before anything compiles; it then runs as one more ``lax.switch`` branch of
:func:`apply_policy`, beside the built-ins. Its own values are ``PolicyParams.user``
(``USER_PARAMS`` float32 slots, zeros unless given; the built-in fields are readable too). A code
outside ``REASON_NAMES`` is recorded as ``user_bad_code``.

On device (the closed loop) comparisons run in float32, the dtype of ``TPStats``. The host
decision (``decide_weight``, the CLM) runs the same functions in float64 on the CPU, with the
parameters at the decimals they were given, so the CLM decides like the seed's Python floats
on its own inputs (a tracker mean R of 1.1999999999999997 is below r_good = 1.2).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tpfl_jax.env.stats import TPStats, make_tp_stats

POLICY_NAMES = ("seed_table", "ema", "vol_scaled", "gated", "continuous", "expectancy", "bandit",
                "fixed")
BANDIT_ARMS = 4  # static size of ``PolicyParams.bandit_grid``
USER_PARAMS = 8  # static size of ``PolicyParams.user`` (a user policy's own values)
USER_ID_BASE = 100  # policy_id of the first user policy loaded in this process

# reason codes
REASON_NO_DATA = 0          # invalid stats (no feedback)
REASON_LOW_HIT_GOOD_R = 1   # -> w_increase
REASON_HIGH_HIT_LOW_R = 2   # -> w_decrease
REASON_OK_HIT_LOW_R = 3     # -> w_moderate
REASON_OPTIMAL = 4          # hit in band, R good -> w_default
REASON_NO_RULE = 5          # low hit & low R, or high hit & good R -> w_default
REASON_INCONCLUSIVE = 6     # gated: interval straddles a threshold, weight held
REASON_CONTINUOUS = 7       # continuous mapping
REASON_EXP_UP = 8           # expectancy: positive expectancy and TP skill -> raise
REASON_EXP_DOWN = 9         # expectancy: negative expectancy -> lower
REASON_EXP_HOLD = 10        # expectancy: mixed evidence -> hold
REASON_BANDIT_EXPLORE = 11  # bandit: the best draw is a weight with < 1 (discounted) reward
REASON_BANDIT_SAMPLE = 12   # bandit: the best Thompson draw (a weight with >= 1 reward)
REASON_FIXED = 13           # fixed: the weight it started with
REASON_USER = 14            # a user policy's decision (for user policies without own codes)
REASON_USER_BAD_CODE = 15   # a user policy returned a code outside REASON_NAMES
REASON_NAMES = ("no_data", "low_hit_good_r", "high_hit_low_r", "ok_hit_low_r", "optimal",
                "no_rule", "inconclusive", "continuous", "expectancy_up", "expectancy_down",
                "expectancy_hold", "bandit_explore", "bandit_sample", "fixed", "user",
                "user_bad_code")


@struct.dataclass
class PolicyParams:
    """Parameters of every policy (all traced leaves; build with ``make_policy_params``)."""

    policy_id: Any = 0
    hit_low: Any = 0.45
    hit_high: Any = 0.70
    r_good: Any = 1.2
    w_increase: Any = 2.0
    w_decrease: Any = 0.5
    w_moderate: Any = 1.2
    w_default: Any = 1.0
    ema_alpha: Any = 0.3
    vol_ref: Any = 0.01
    vol_exponent: Any = 1.0
    vol_scale_min: Any = 0.5
    vol_scale_max: Any = 2.0
    z: Any = 1.96
    cont_slope: Any = 8.0
    w_min: Any = 0.5
    w_max: Any = 2.0
    exp_step: Any = 0.25
    skill_margin: Any = 0.0
    bandit_grid: Any = struct.field(default_factory=lambda: jnp.asarray(
        (0.0, 0.5, 1.0, 2.0), jnp.float32))
    bandit_seed: Any = 0.0
    bandit_prior_mean: Any = 0.0
    bandit_prior_sd: Any = 10.0
    bandit_noise_sd: Any = 10.0
    bandit_noise_df: Any = 2.0
    bandit_discount: Any = 1.0
    user: Any = struct.field(default_factory=lambda: jnp.zeros(USER_PARAMS, jnp.float32))


PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(PolicyParams) if f.name != "policy_id")
_ARRAY_FIELDS = ("bandit_grid", "user")


@struct.dataclass
class PolicyState:
    """Policy memory: the weight in force, the number of updates, the bandit's per-grid-weight
    (discounted) count, sum and sum of squares of the rewards it observed (zeros for the other
    policies) and ``key``, the policy's typed PRNG key (the loop sets one per seed; policies
    fold the update count into it and never replace it)."""

    weight: jax.Array
    n_updates: jax.Array
    arm_n: jax.Array = struct.field(default_factory=lambda: jnp.zeros(BANDIT_ARMS, jnp.float32))
    arm_sum: jax.Array = struct.field(
        default_factory=lambda: jnp.zeros(BANDIT_ARMS, jnp.float32))
    arm_sq: jax.Array = struct.field(default_factory=lambda: jnp.zeros(BANDIT_ARMS, jnp.float32))
    key: jax.Array = struct.field(default_factory=lambda: jax.random.key(0))


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def init_policy_state(weight: float = 1.0, key: jax.Array | None = None) -> PolicyState:
    """Initial state holding ``weight`` and ``key`` (a scalar typed key, ``jax.random.key``;
    default ``key(0)``)."""
    if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight >= 0):
        raise ValueError(f"init_policy_state: weight = {weight!r}; expected a finite number >= 0")
    if key is None:
        key = jax.random.key(0)
    elif not (_is_key(key) and key.shape == ()):
        raise ValueError(f"init_policy_state: key = {key!r}; expected a scalar typed key "
                         "(jax.random.key)")
    return PolicyState(weight=jnp.float32(weight), n_updates=jnp.int32(0), key=key)


def make_policy_params(policy: str = "seed_table", **overrides: Any) -> PolicyParams:
    """``PolicyParams`` for ``policy`` (a name of ``POLICY_NAMES`` or a user policy's
    ``"module:function"``, loaded and checked by :func:`load_policy`) with float32 leaves;
    validates names and values. ``user`` (user policies only): up to ``USER_PARAMS`` numbers."""
    pid = policy_id(policy)            # unknown name or bad user policy: ValueError
    unknown = set(overrides) - set(PARAM_FIELDS)
    if unknown:
        raise ValueError(f"make_policy_params: unknown parameter(s) {sorted(unknown)}; "
                         f"expected a subset of {PARAM_FIELDS}")
    defaults = PolicyParams()
    vals = {f: getattr(defaults, f) for f in PARAM_FIELDS if f not in _ARRAY_FIELDS} | {
        k: v for k, v in overrides.items() if k not in _ARRAY_FIELDS}
    for k, v in vals.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"make_policy_params: {k} = {v!r}; expected a finite number")
    grid = np.asarray(overrides.get("bandit_grid", defaults.bandit_grid), float)
    if grid.shape != (BANDIT_ARMS,) or not np.all(np.isfinite(grid)) or np.any(grid < 0) \
            or np.any(np.diff(grid) <= 0):
        raise ValueError(f"make_policy_params: bandit_grid = {overrides.get('bandit_grid')!r}; "
                         f"expected {BANDIT_ARMS} increasing finite weights >= 0")
    user = np.zeros(USER_PARAMS)
    if "user" in overrides:
        u = overrides["user"]
        if not is_user_kind(policy):
            raise ValueError(f"make_policy_params: user = {u!r}; only a user policy "
                             "('module:function') takes user values")
        ok = isinstance(u, Sequence) and not isinstance(u, str) and len(u) <= USER_PARAMS \
            and all(not isinstance(x, bool) and isinstance(x, (int, float)) and np.isfinite(x)
                    for x in u)
        if not ok:
            raise ValueError(f"make_policy_params: user = {u!r}; expected a list of at most "
                             f"{USER_PARAMS} finite numbers")
        user[:len(u)] = u
    checks = [
        (0.0 <= vals["hit_low"] < vals["hit_high"] <= 1.0, "0 <= hit_low < hit_high <= 1"),
        (vals["r_good"] > 0, "r_good > 0"),
        (min(vals[k] for k in ("w_increase", "w_decrease", "w_moderate", "w_default")) >= 0,
         "weights >= 0"),
        (0.0 < vals["ema_alpha"] <= 1.0, "0 < ema_alpha <= 1"),
        (vals["vol_ref"] > 0, "vol_ref > 0"),
        (0.0 < vals["vol_scale_min"] <= 1.0 <= vals["vol_scale_max"],
         "0 < vol_scale_min <= 1 <= vol_scale_max"),
        (vals["z"] > 0, "z > 0"),
        (0.0 <= vals["w_min"] <= vals["w_max"], "0 <= w_min <= w_max"),
        (vals["exp_step"] > 0, "exp_step > 0"),
        (-1.0 < vals["skill_margin"] < 1.0, "-1 < skill_margin < 1"),
        (float(vals["bandit_seed"]).is_integer() and 0 <= vals["bandit_seed"] <= 2**24,
         "bandit_seed an integer in [0, 2**24]"),
        (vals["bandit_prior_sd"] > 0, "bandit_prior_sd > 0"),
        (vals["bandit_noise_sd"] > 0, "bandit_noise_sd > 0"),
        (vals["bandit_noise_df"] > 0, "bandit_noise_df > 0"),
        (0.0 < vals["bandit_discount"] <= 1.0, "0 < bandit_discount <= 1"),
    ]
    for ok, text in checks:
        if not ok:
            raise ValueError(f"make_policy_params: expected {text}; got {overrides}")
    return PolicyParams(policy_id=jnp.int32(pid),
                        bandit_grid=jnp.asarray(grid, jnp.float32),
                        user=jnp.asarray(user, jnp.float32),
                        **{k: jnp.float32(v) for k, v in vals.items()})


def _f32(x) -> jax.Array:
    """Policy float dtype: float32, or float64 when traced under ``jax.enable_x64`` (host)."""
    return jnp.asarray(x, jnp.result_type(float))


def _table(hit, r, lo, hi, p: PolicyParams) -> tuple[jax.Array, jax.Array]:
    """The seed decision table with hit-rate band [lo, hi]: (target weight, reason code)."""
    hit, r = _f32(hit), _f32(r)
    good_r = r >= p.r_good
    inc = (hit < lo) & good_r
    dec = (hit > hi) & ~good_r
    mod = (hit >= lo) & (hit <= hi) & ~good_r
    opt = (hit >= lo) & (hit <= hi) & good_r
    code = jnp.select([inc, dec, mod, opt],
                      [REASON_LOW_HIT_GOOD_R, REASON_HIGH_HIT_LOW_R, REASON_OK_HIT_LOW_R,
                       REASON_OPTIMAL], REASON_NO_RULE).astype(jnp.int32)
    w = jnp.select([inc, dec, mod], [p.w_increase, p.w_decrease, p.w_moderate], p.w_default)
    return _f32(w), code


def _out(valid, w, code, fallback_w, state: PolicyState):
    w = jnp.where(valid, w, fallback_w).astype(jnp.float32)
    code = jnp.where(valid, code, REASON_NO_DATA).astype(jnp.int32)
    return w, state.replace(weight=w, n_updates=state.n_updates + 1), code


def seed_table(stats: TPStats, state: PolicyState, params: PolicyParams):
    """The seed's decision table (w_default for invalid stats)."""
    w, code = _table(stats.tp_hit_rate, stats.avg_r_multiple, params.hit_low, params.hit_high,
                     params)
    return _out(stats.valid, w, code, params.w_default, state)


def ema(stats: TPStats, state: PolicyState, params: PolicyParams):
    """Exponential move from the previous weight toward the table's target."""
    target, code = _table(stats.tp_hit_rate, stats.avg_r_multiple, params.hit_low,
                          params.hit_high, params)
    target = jnp.where(stats.valid, target, params.w_default)
    w = state.weight + params.ema_alpha * (target - state.weight)
    return _out(True, w, jnp.where(stats.valid, code, REASON_NO_DATA), w, state)


def vol_scale(volatility, params: PolicyParams) -> jax.Array:
    """Band scale factor ``s`` of ``vol_scaled`` (1 when volatility <= 0)."""
    vol = _f32(volatility)
    ratio = jnp.where(vol > 0, vol, params.vol_ref) / params.vol_ref
    return jnp.clip(ratio ** params.vol_exponent, params.vol_scale_min, params.vol_scale_max)


def vol_scaled(stats: TPStats, state: PolicyState, params: PolicyParams):
    """The table with the hit-rate band scaled around its centre by the symbol's volatility."""
    s = vol_scale(stats.volatility, params)
    centre = 0.5 * (params.hit_low + params.hit_high)
    half = 0.5 * (params.hit_high - params.hit_low) * s
    lo = jnp.where(s == 1.0, params.hit_low, jnp.clip(centre - half, 0.0, 1.0))
    hi = jnp.where(s == 1.0, params.hit_high, jnp.clip(centre + half, 0.0, 1.0))
    w, code = _table(stats.tp_hit_rate, stats.avg_r_multiple, lo, hi, params)
    return _out(stats.valid, w, code, params.w_default, state)


def wilson_interval(hits, attempts, z) -> tuple[jax.Array, jax.Array]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` at zero attempts)."""
    n = jnp.maximum(_f32(attempts), 1.0)
    p = jnp.where(_f32(attempts) > 0, _f32(hits) / n, 0.5)
    z2 = _f32(z) ** 2
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = _f32(z) * jnp.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo = jnp.where(_f32(attempts) > 0, jnp.clip(centre - half, 0.0, 1.0), 0.0)
    hi = jnp.where(_f32(attempts) > 0, jnp.clip(centre + half, 0.0, 1.0), 1.0)
    return lo, hi


def gated(stats: TPStats, state: PolicyState, params: PolicyParams):
    """The table's target only when the hit rate's Wilson interval excludes the no-edge hit
    rate (TP skill) and clears the table's thresholds; else the weight is held."""
    lo_ci, hi_ci = wilson_interval(stats.total_hits, stats.total_attempts, params.z)
    args = (stats.avg_r_multiple, params.hit_low, params.hit_high, params)
    w, code = _table(stats.tp_hit_rate, *args)
    _, code_lo = _table(lo_ci, *args)
    _, code_hi = _table(hi_ci, *args)
    no_edge = _f32(stats.no_edge_hit_rate)
    skill = (no_edge <= 0) | (lo_ci > no_edge) | (hi_ci < no_edge)
    conclusive = (code_lo == code) & (code_hi == code) & skill
    w = jnp.where(conclusive, w, state.weight)
    code = jnp.where(conclusive, code, REASON_INCONCLUSIVE)
    return _out(stats.valid, w, code, state.weight, state)


def continuous(stats: TPStats, state: PolicyState, params: PolicyParams):
    """Smooth decreasing map of the hit rate, clipped to [w_min, w_max]."""
    centre = 0.5 * (params.hit_low + params.hit_high)
    w = jnp.clip(2.0 ** (params.cont_slope * (centre - _f32(stats.tp_hit_rate))),
                 params.w_min, params.w_max)
    return _out(stats.valid, w, REASON_CONTINUOUS, params.w_default, state)


def expectancy(stats: TPStats, state: PolicyState, params: PolicyParams):
    """Step the weight up on positive expectancy with TP skill, down on negative expectancy."""
    r, pnl = _f32(stats.actual_r), _f32(stats.pnl_per_trade)
    skill = _f32(stats.tp_hit_rate) - _f32(stats.no_edge_hit_rate)
    up = (r > 0) & (pnl > 0) & (skill > params.skill_margin)
    down = (r < 0) & (pnl < 0)
    step = jnp.where(up, params.exp_step, jnp.where(down, -params.exp_step, 0.0))
    w = jnp.clip(state.weight + step, params.w_min, params.w_max)
    code = jnp.select([up, down], [REASON_EXP_UP, REASON_EXP_DOWN], REASON_EXP_HOLD)
    return _out(stats.valid, w, code, state.weight, state)


def bandit(stats: TPStats, state: PolicyState, params: PolicyParams):
    """Discounted Gaussian Thompson sampling over ``bandit_grid``, rewarded by PnL per attempt.

    Model: a feedback period's reward under grid weight k is ``N(mu_k, sigma^2)``, independent
    across periods given mu; ``mu_k ~ N(bandit_prior_mean, bandit_prior_sd^2)`` independently;
    sigma (one for every weight) is the within-weight spread pooled with ``bandit_noise_df``
    pseudo-observations at ``bandit_noise_sd`` (which alone sets it before any weight has two
    rewards). A decision multiplies every weight's count, sum and sum of squares by
    ``bandit_discount`` (old rewards age; 1: a stationary bandit), credits the period's reward
    to the grid weight nearest the weight in force (valid stats only: too few trades credit
    nothing), draws each ``mu_k`` from its posterior ``N(m_k, v_k)`` with ``1/v_k =
    1/prior_sd^2 + n_k/sigma^2`` and ``m_k = v_k (prior_mean/prior_sd^2 + sum_k/sigma^2)``, and
    moves to the best draw (code ``bandit_explore`` when that weight holds less than one
    discounted reward, else ``bandit_sample``). Draws: ``state.key`` folded with
    ``bandit_seed`` and the update count.

    Reward: PnL per attempt (currency per closed trade, after costs). Unlike a period's total
    PnL it does not grow with the deploy episodes or the feedback history (``cycle``,
    ``cumulative``, ``window``), so rewards of different cycles are comparable; it does not
    see how often a weight makes the agent trade. Assumptions: a period's reward depends on
    the weight in force in that period only (a warm-started agent carries earlier weights'
    training: discounting is the hedge against that drift); the prior and noise scales are
    currency per trade (the defaults suit the default env: 10,000 equity, position size 1).
    """
    grid = _f32(params.bandit_grid)
    cur = jnp.argmin(jnp.abs(grid - _f32(state.weight)))
    reward = _f32(stats.pnl_per_trade)
    g = _f32(params.bandit_discount)
    one = jax.nn.one_hot(cur, grid.shape[0], dtype=grid.dtype) * _f32(stats.valid)
    n = g * _f32(state.arm_n) + one
    tot = g * _f32(state.arm_sum) + one * reward
    sq = g * _f32(state.arm_sq) + one * reward * reward
    sse = jnp.sum(jnp.where(n > 0, jnp.maximum(sq - tot * tot / jnp.where(n > 0, n, 1.0), 0.0),
                            0.0))
    df = jnp.sum(jnp.maximum(n - 1.0, 0.0))
    nu0 = _f32(params.bandit_noise_df)
    sigma2 = (nu0 * _f32(params.bandit_noise_sd) ** 2 + sse) / (nu0 + df)
    prior_prec = 1.0 / _f32(params.bandit_prior_sd) ** 2
    prec = prior_prec + n / sigma2
    mean = (_f32(params.bandit_prior_mean) * prior_prec + tot / sigma2) / prec
    key = jax.random.fold_in(jax.random.fold_in(
        state.key, _f32(params.bandit_seed).astype(jnp.uint32)), state.n_updates)
    draw = mean + jax.random.normal(key, grid.shape, grid.dtype) / jnp.sqrt(prec)
    pick = jnp.argmax(draw)
    w = grid[pick]
    code = jnp.where(n[pick] < 1.0, REASON_BANDIT_EXPLORE, REASON_BANDIT_SAMPLE)
    new = state.replace(arm_n=n, arm_sum=tot, arm_sq=sq)
    return _out(True, w, code, w, new)


def fixed(stats: TPStats, state: PolicyState, params: PolicyParams):
    """The weight in force, always (a control arm)."""
    del stats, params
    return _out(True, state.weight, REASON_FIXED, state.weight, state)


PolicyFn = Callable[[TPStats, PolicyState, PolicyParams],
                    tuple[jax.Array, PolicyState, jax.Array]]
POLICIES: dict[str, PolicyFn] = {
    "seed_table": seed_table, "ema": ema, "vol_scaled": vol_scaled, "gated": gated,
    "continuous": continuous, "expectancy": expectancy, "bandit": bandit, "fixed": fixed,
}
assert tuple(POLICIES) == POLICY_NAMES


def finish(weight: Any, code: Any, state: PolicyState) -> tuple[jax.Array, PolicyState,
                                                                  jax.Array]:
    """A policy's return value: ``weight`` as float32, ``state`` holding it with one more
    update, ``code`` as int32 (for user policies)."""
    return _out(True, weight, code, weight, state)


# -- user policies ----------------------------------------------------------------------------
_USER: dict[str, PolicyFn] = {}   # loaded and checked user policies, in load order (host only)


def is_user_kind(kind: Any) -> bool:
    """Whether ``kind`` names a user policy (``"module:function"``)."""
    return isinstance(kind, str) and ":" in kind


def _abstract(tree: Any, batch: int | None = None) -> Any:
    """``ShapeDtypeStruct`` leaves of ``tree`` (with a leading ``batch`` axis)."""
    lead = () if batch is None else (batch,)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(lead + tuple(np.shape(x)), x.dtype), tree)


def _first_line(err: BaseException) -> str:
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def check_policy_fn(fn: Any, kind: str = "policy") -> None:
    """Raise a one-line ``ValueError`` unless ``fn`` is a policy: callable with 3 positional
    parameters ``(stats, state, params)`` that traces under ``jax.jit`` and under ``jax.vmap``
    with abstract inputs (``jax.eval_shape``) and returns a float32 scalar weight, a
    ``PolicyState`` of the input's structure, shapes and dtypes, and an int32 scalar code."""
    if not callable(fn):
        raise ValueError(f"{kind}: {fn!r} is not callable; expected a function "
                         "(stats, state, params) -> (weight, state, code)")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(None, None, None)
        except TypeError:
            raise ValueError(f"{kind}: signature {fn.__name__}{sig}; expected 3 positional "
                             "parameters (stats, state, params)") from None
    stats = TPStats(**{f.name: jnp.float32(0) for f in dataclasses.fields(TPStats)
                       if f.name != "valid"}, valid=jnp.bool_(False))   # the loop's dtypes
    state, params = init_policy_state(), PolicyParams(
        policy_id=jnp.int32(0), **{k: jnp.float32(getattr(PolicyParams(), k))
                                   for k in PARAM_FIELDS if k not in _ARRAY_FIELDS})
    for batch, how in ((None, "jax.jit"), (3, "jax.vmap")):
        args = [_abstract(t, batch) for t in (stats, state, params)]
        f = jax.jit(fn) if batch is None else jax.jit(jax.vmap(fn))
        try:
            out = jax.eval_shape(f, *args)
        except Exception as err:  # noqa: BLE001 - any failure to trace is the user's to fix
            raise ValueError(f"{kind}: does not trace under {how} with abstract inputs "
                             f"({_first_line(err)}); a policy must be pure jnp: no Python "
                             "if/float()/int() on traced values") from None
        lead = () if batch is None else (batch,)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise ValueError(f"{kind}: returns {type(out).__name__}"
                             f"{f' of {len(out)}' if isinstance(out, (tuple, list)) else ''}"
                             f" under {how}; expected a tuple (weight, state, code)")
        w, st, code = out
        for name, x, dtype in (("weight", w, jnp.float32), ("code", code, jnp.int32)):
            if not (hasattr(x, "shape") and tuple(x.shape) == lead and x.dtype == dtype):
                got = (f"shape {tuple(x.shape)} {x.dtype}" if hasattr(x, "shape")
                       else type(x).__name__)
                raise ValueError(f"{kind}: {name} is {got} under {how}; expected a scalar "
                                 f"{np.dtype(dtype).name}")
        want = args[1]
        if jax.tree.structure(st) != jax.tree.structure(want):
            raise ValueError(f"{kind}: the returned state is {type(st).__name__} of another "
                             f"structure under {how}; expected the PolicyState it was given "
                             "(state.replace(...))")
        for path, x, y in zip(jax.tree_util.tree_flatten_with_path(st)[0],
                              jax.tree.leaves(st), jax.tree.leaves(want), strict=True):
            if x.shape != y.shape or x.dtype != y.dtype:
                field = jax.tree_util.keystr(path[0])
                raise ValueError(f"{kind}: state{field} is shape {tuple(x.shape)} {x.dtype} "
                                 f"under {how}; expected shape {tuple(y.shape)} {y.dtype}")


def load_policy(kind: str) -> PolicyFn:
    """The user policy ``"package.module:function"``, imported and checked
    (:func:`check_policy_fn`) on first use, then remembered (its ``policy_id``:
    ``USER_ID_BASE`` + load order). Errors are one-line ``ValueError``."""
    if kind in _USER:
        return _USER[kind]
    mod_name, _, attr = kind.partition(":") if isinstance(kind, str) else ("", "", "")
    if not (mod_name and attr and all(p.isidentifier() for p in mod_name.split("."))
            and all(p.isidentifier() for p in attr.split("."))):
        raise ValueError(f"policy kind {kind!r}: expected one of {POLICY_NAMES} or a user "
                         "policy 'package.module:function'")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as err:  # noqa: BLE001 - a failing import is the user's to fix
        raise ValueError(f"{kind}: cannot import module {mod_name!r} ({_first_line(err)})"
                         ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{kind}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    check_policy_fn(obj, kind)
    _USER[kind] = obj
    return obj


def policy_id(kind: str) -> int:
    """The ``policy_id`` of a built-in name or a user policy (loaded and checked)."""
    if kind in POLICY_NAMES:
        return POLICY_NAMES.index(kind)
    if not is_user_kind(kind):
        raise ValueError(f"policy kind {kind!r}: expected one of {POLICY_NAMES} or a user "
                         "policy 'package.module:function'")
    load_policy(kind)
    return USER_ID_BASE + list(_USER).index(kind)


def policy_name(pid: int) -> str:
    """The kind of a ``policy_id`` (a built-in name or a loaded user policy's path)."""
    users = list(_USER)
    if 0 <= pid < len(POLICY_NAMES):
        return POLICY_NAMES[pid]
    if 0 <= pid - USER_ID_BASE < len(users):
        return users[pid - USER_ID_BASE]
    raise ValueError(f"policy_name: policy_id = {pid}; no such built-in or loaded user policy")


def _user_branch(fn: PolicyFn) -> PolicyFn:
    """A user policy as a switch branch: its code recorded as ``user_bad_code`` when it is not
    an index of ``REASON_NAMES``."""
    def branch(stats: TPStats, state: PolicyState, params: PolicyParams):
        w, new, code = fn(stats, state, params)
        code = jnp.asarray(code, jnp.int32)
        code = jnp.where((code >= 0) & (code < len(REASON_NAMES)), code, REASON_USER_BAD_CODE)
        return jnp.asarray(w, jnp.float32), new, code
    return branch


def apply_policy(stats: TPStats, state: PolicyState, params: PolicyParams,
                 kinds: tuple[str, ...] | None = None):
    """Run the policy selected by ``params.policy_id`` (``lax.switch``; vmap over any leaf).

    ``kinds`` (static): the policies that can be selected (default every one of
    ``POLICY_NAMES``; user policies by their ``"module:function"``, see :func:`load_policy`);
    only their branches are built, which matters under ``vmap``, where a batched switch runs
    every branch. A ``policy_id`` outside ``kinds`` runs the first branch: callers check it on
    the host (``loop.check_inputs``)."""
    kinds = POLICY_NAMES if kinds is None else tuple(dict.fromkeys(kinds))
    branches = [POLICIES[k] if k in POLICIES else _user_branch(load_policy(k)) for k in kinds]
    ids = jnp.asarray([policy_id(k) for k in kinds], jnp.int32)
    idx = jnp.argmax(ids == jnp.asarray(params.policy_id, jnp.int32)).astype(jnp.int32)
    return jax.lax.switch(idx, branches, stats, state, params)


_apply_jit = jax.jit(apply_policy)


# -- host side -------------------------------------------------------------------------------
class PolicyDecision(NamedTuple):
    """Host result of ``decide_weight``."""

    weight: float
    state: PolicyState
    code: int
    reason: str


def host_float(x: Any) -> float:
    """A float32 scalar as the Python float of its shortest decimal (1.2f -> 1.2)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="0"))


def stats_from_feedback(feedback: Mapping[str, Any] | None, volatility: float = 0.0) -> TPStats:
    """``TPStats`` from a tracker feedback dict (``None`` -> invalid stats).

    Needs ``tp_hit_rate``, ``avg_r_multiple``, ``total_attempts``; ``total_hits`` defaults to
    ``round(hit_rate * attempts)``; ``premature_exit_rate``, ``pnl_per_trade`` and
    ``no_edge_hit_rate`` default to 0.
    """
    if feedback is None:
        return make_tp_stats(0, 0, 0.0, 0, min_attempts=1, volatility=volatility)
    missing = {"tp_hit_rate", "avg_r_multiple", "total_attempts"} - set(feedback)
    if missing:
        raise ValueError(f"stats_from_feedback: missing key(s) {sorted(missing)}")

    def num(key, lo=None, hi=None):
        v = feedback[key]
        ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.number))
              and np.isfinite(v) and (lo is None or v >= lo) and (hi is None or v <= hi))
        if not ok:
            rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
            raise ValueError(f"stats_from_feedback: {key} = {v!r}; expected a finite number{rng}")
        return float(v)

    attempts = num("total_attempts", 0)
    hit = num("tp_hit_rate", 0, 1)
    r = num("avg_r_multiple")
    hits = num("total_hits", 0, attempts) if "total_hits" in feedback else round(hit * attempts)
    prem = num("premature_exit_rate", 0, 1) if "premature_exit_rate" in feedback else 0.0
    pnl = num("pnl_per_trade") if "pnl_per_trade" in feedback else 0.0
    no_edge = num("no_edge_hit_rate", 0, 1) if "no_edge_hit_rate" in feedback else 0.0
    vol = float(volatility)
    if not (np.isfinite(vol) and vol >= 0):
        raise ValueError(f"stats_from_feedback: volatility = {volatility!r}; expected >= 0")
    return TPStats(
        total_attempts=_f32(attempts), total_hits=_f32(hits), tp_hit_rate=_f32(hit),
        avg_r_multiple=_f32(r), actual_r=_f32(feedback.get("actual_r_multiple", r)),
        premature_exit_rate=_f32(prem), valid=jnp.asarray(attempts > 0), volatility=_f32(vol),
        pnl_per_trade=_f32(pnl), no_edge_hit_rate=_f32(no_edge))


def reason_text(code: int, hit: float | None, r: float | None, weight: float,
                policy: str = "seed_table") -> str:
    """Human-readable reason for a reason code (``hit``/``r`` as fractions / R multiples)."""
    texts = {
        REASON_NO_DATA: "Insufficient TP data - {keep} TP weight {w:.2f}",
        REASON_LOW_HIT_GOOD_R: "Low hit rate ({hit:.1%}) but good R ({r:.2f}) - increasing TP "
                               "weight",
        REASON_HIGH_HIT_LOW_R: "High hit rate ({hit:.1%}) but low R ({r:.2f}) - decreasing TP "
                               "weight",
        REASON_OK_HIT_LOW_R: "Hit rate ok ({hit:.1%}) but low R ({r:.2f}) - moderate TP weight "
                             "increase",
        REASON_OPTIMAL: "Optimal TP performance: hit rate {hit:.1%}, R {r:.2f} - default TP "
                        "weight",
        REASON_NO_RULE: "Hit rate {hit:.1%} with R {r:.2f} matches no adjustment rule - default "
                        "TP weight",
        REASON_INCONCLUSIVE: "Hit rate {hit:.1%} interval straddles a threshold - holding TP "
                             "weight {w:.2f}",
        REASON_CONTINUOUS: "Hit rate {hit:.1%} mapped continuously to TP weight {w:.2f}",
        REASON_EXP_UP: "Positive expectancy with TP skill (hit rate {hit:.1%}) - raising TP "
                       "weight to {w:.2f}",
        REASON_EXP_DOWN: "Negative expectancy (hit rate {hit:.1%}) - lowering TP weight to "
                         "{w:.2f}",
        REASON_EXP_HOLD: "Mixed expectancy evidence (hit rate {hit:.1%}) - holding TP weight "
                         "{w:.2f}",
        REASON_BANDIT_EXPLORE: "Bandit: TP weight {w:.2f}, with less than one reward so far, "
                               "has the best Thompson draw of PnL per trade",
        REASON_BANDIT_SAMPLE: "Bandit: TP weight {w:.2f} has the best Thompson draw of PnL per "
                              "trade",
        REASON_FIXED: "Fixed policy: TP weight {w:.2f}",
        REASON_USER: "User policy: TP weight {w:.2f}",
        REASON_USER_BAD_CODE: "User policy: TP weight {w:.2f} (its reason code is not one of "
                              "REASON_NAMES)",
    }
    if code not in texts:
        raise ValueError(f"reason_text: code = {code!r}; expected one of {sorted(texts)}")
    keep = "default" if policy in ("seed_table", "vol_scaled", "continuous") else "keeping"
    text = texts[code].format(hit=hit if hit is not None else float("nan"),
                              r=r if r is not None else float("nan"), w=weight, keep=keep)
    if policy != "seed_table" and code in (1, 2, 3, 4, 5):
        text += f" [{policy}: weight {weight:.2f}]"
    return text


def decide_weight(feedback: Mapping[str, Any] | None, policy: str = "seed_table",
                  state: PolicyState | None = None, params: PolicyParams | None = None,
                  volatility: float = 0.0) -> PolicyDecision:
    """Host wrapper: tracker feedback dict (or ``None``) -> weight, new state, code, reason."""
    if policy not in POLICY_NAMES:
        raise ValueError(f"decide_weight: policy = {policy!r}; expected one of {POLICY_NAMES}")
    params = make_policy_params(policy) if params is None else params.replace(
        policy_id=jnp.int32(POLICY_NAMES.index(policy)))
    state = init_policy_state() if state is None else state
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        # float64 on the host: float32 leaves back at their decimals (host_float: 1.2f -> 1.2)
        def f64(x):
            if _is_key(x):
                return x
            x = np.asarray(x)
            if not np.issubdtype(x.dtype, np.floating):
                return jnp.asarray(x)
            return jnp.asarray(np.vectorize(host_float, otypes=[np.float64])(x)
                               if x.ndim else host_float(x), jnp.float64)
        stats = stats_from_feedback(feedback, volatility)
        w, new_state, code = _apply_jit(stats, jax.tree.map(f64, state),
                                        jax.tree.map(f64, params))
        w = np.float32(w)
        new_state = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32)
                                 if not _is_key(x) and jnp.issubdtype(x.dtype, jnp.floating)
                                 else x, new_state)
        new_state = new_state.replace(weight=jnp.float32(w),
                                      n_updates=jnp.int32(new_state.n_updates))
    weight, code = host_float(w), int(code)
    hit = None if feedback is None else float(feedback["tp_hit_rate"])
    r = None if feedback is None else float(feedback["avg_r_multiple"])
    return PolicyDecision(weight, new_state, code, reason_text(code, hit, r, weight, policy))
