"""Hydra structured configs (registered in the ConfigStore) and their conversion to frozen
objects before anything touches JAX.

The YAML files under the repository's ``configs/`` fill these schemas: ``config.yaml`` starts
its defaults list with ``base_config`` (the :class:`Config` schema), so a misspelt key or a
value of the wrong type fails at compose time with Hydra's error naming the key, before any
compile; a misspelt key added with ``+`` fails in ``to_container`` (closed schemas), and
out-of-range values in ``to_objects`` (``tpfl_jax.config_checks``). ``to_objects`` turns the
composed ``DictConfig`` into frozen dataclasses / pytrees; no ``DictConfig`` is ever passed
into jitted code.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from tpfl_jax.agents.ppo import PPOConfig
from tpfl_jax.clm.policies import is_user_kind, load_policy
from tpfl_jax.config_checks import check_config, check_known_keys
from tpfl_jax.distributed import MeshConfig
from tpfl_jax.errors import UserError
from tpfl_jax.guard import GuardSection
from tpfl_jax.loop import HISTORY_MODES, LOOP_POLICY_KINDS, LoopConfig, make_loop_policy
from tpfl_jax.market.specs import SyntheticMarkets
from tpfl_jax.reward import RewardCoefs

log = logging.getLogger(__name__)
_SYN = SyntheticMarkets()     # the synthetic market section's defaults are the spec's


@dataclass
class EnvConfig:
    """``TradingEnv`` static settings and ``EnvParams`` values (see ``env/trading.py``; the
    defaults are those objects' defaults: ``tests/test_app.py`` compares every one; the env
    module is not imported here, since importing gymnax would start the XLA backend before a
    multi-host job's ``jax.distributed.initialize``).

    accuracy: the accuracy the TP bonus is paid on (``mfe_ratio`` | ``hit`` | ``skill``);
    drawdown_mode: ``increase`` (of the episode's max drawdown) | ``level`` (every step);
    alignment_source: ``causal`` | ``hidden_label`` (the true regime, a benchmark only);
    reward_vol: ``episode`` (PnL scaled by the bar volatility at the episode's start) | ``bar``;
    features: the observation design (``TradingEnv(features=...)``: a name of
    ``env.trading.FEATURE_SETS``: ``vol``, the default, or ``base``, the observation of the
    results recorded before the causal-limit ablation, or ``+``-joined blocks). ``ppo`` groups
    pair it with ``normalize_obs``; a bare ``PPOConfig()`` does not normalise.
    """

    window: int = 16
    features: str = "vol"
    premature_horizon: int = 10
    tp_mults: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 3.0])
    sl_mult: float = 1.0
    fee_bps: float = 5.0
    half_spread_bps: float = 2.0
    impact_coef: float = 0.0
    position_size: float = 1.0
    initial_equity: float = 10_000.0
    ruin_floor: float = 0.5
    max_holding: int = 20
    sl_first: bool = True
    max_steps_in_episode: int = 100
    # Not read by any app: the weight is train.weights (tpfl-train),
    # policy.policies[i].initial_weight (tpfl-loop) or clm.policy's decision (tpfl-clm).
    # A value other than 1.0 is refused (config_checks.check_config) rather than silently ignored.
    tp_reward_weight: float = 1.0
    accuracy: str = "skill"
    drawdown_mode: str = "increase"
    alignment_source: str = "causal"
    reward_vol: str = "episode"
    reward: RewardSection = field(default_factory=lambda: RewardSection())


@dataclass
class ColumnsSection:
    """The CSV columns of the OHLCV fields (null: found by name, case-insensitively)."""

    open: str | None = None
    high: str | None = None
    low: str | None = None
    close: str | None = None
    volume: str | None = None


@dataclass
class PanelFileSection:
    """One series of ``market.source=panel`` (``tpfl_jax.market.panel.SeriesFile``): ``path``
    (``pkg://PACKAGE/REL`` for a file shipped in a package), ``symbol`` (null: the file name),
    the CSV reading options of ``market=csv``, ``time_format`` (strftime codes; null: inferred),
    ``close_only`` (bars formed from closes), ``drop_missing`` (drop rows without a close, with
    a warning), ``start``/``end`` (keep bars in that range) and the symbol's costs per side
    (null: ``env.fee_bps`` / ``env.half_spread_bps``)."""

    path: str = MISSING
    symbol: str | None = None
    sep: str = ","
    timestamp: str | None = None
    time_format: str | None = None
    columns: ColumnsSection = field(default_factory=ColumnsSection)
    no_volume: bool = False
    close_only: bool = False
    drop_missing: bool = False
    start: str | None = None
    end: str | None = None
    fee_bps: float | None = None
    half_spread_bps: float | None = None


@dataclass
class MarketConfig:
    """Market source. ``source=synthetic``: ``kind`` paths from its generator (``params``
    override the generator's defaults); with ``fresh`` (default) PPO trains on new paths before
    every update (no bar seen twice) and ``train_paths`` paths per cycle are the sample the
    reference rules choose their parameters on; ``fresh: false`` trains on those
    ``train_paths`` fixed paths per cycle; ``deploy_paths`` held-out paths per cycle.
    ``source=csv``: an OHLCV file (``path``) cut into walk-forward train/deploy windows of
    ``train_bars`` / ``deploy_bars`` (episodes start anywhere in the training window); ``sep``
    is the CSV separator, ``timestamp`` the time column's name (null: a usual name, e.g. Date),
    ``columns.<field>`` the file's column of an OHLCV field and ``no_volume`` says the file
    has no volume column (volume 0). ``source=panel``: the series ``files`` (or every file of
    ``directory``) cut on a common calendar (``tpfl_jax.market.panel``): ``cuts`` (one time per
    cycle; empty: spread over the span where ``min_series`` series are active, narrowed by
    ``cut_start``/``cut_end``), ``slots`` windows per cycle (0: one per series).
    ``train_source`` (csv and panel; ``tpfl_jax.market.fit``): ``replay`` | ``bootstrap``
    (mean block ``block_len`` bars) | ``regime_fit`` (``n_states`` states, ``fit_iters`` EM
    iterations) | ``garch_fit`` | ``regime_garch`` (both in one generator) | a mixture
    ``a+b`` of bootstrap / regime_fit / garch_fit (equal shares); fitted sources draw fresh
    ``n_bars`` paths with ``substeps`` intrabar points every update."""

    source: str = "synthetic"
    kind: str = _SYN.kind
    params: dict[str, Any] = field(default_factory=dict)
    train_paths: int = _SYN.train_paths
    deploy_paths: int = _SYN.deploy_paths
    n_bars: int = _SYN.n_bars
    substeps: int = _SYN.substeps
    fresh: bool = _SYN.fresh
    path: str | None = None
    train_bars: int = 400
    deploy_bars: int = 200
    sep: str = ","
    timestamp: str | None = None
    columns: ColumnsSection = field(default_factory=ColumnsSection)
    no_volume: bool = False
    files: list[PanelFileSection] = field(default_factory=list)
    directory: str | None = None
    cuts: list[str] = field(default_factory=list)
    cut_start: str | None = None
    cut_end: str | None = None
    min_series: int = 1
    slots: int = 0
    train_source: str = "replay"
    block_len: float = 20.0
    n_states: int = 2
    fit_iters: int = 100


def _schema(cls: type, name: str, extra: tuple[tuple[str, type, Any], ...] = ()) -> type:
    """Hydra schema derived from the frozen dataclass ``cls`` (same fields and defaults;
    tuples as lists) plus ``extra`` ``(name, type, default)`` fields, so the two cannot drift."""
    specs = []
    for f in dataclasses.fields(cls):
        if isinstance(f.default, tuple):
            specs.append((f.name, list[type(f.default[0])],
                          field(default_factory=lambda d=f.default: list(d))))
        else:
            specs.append((f.name, type(f.default), field(default=f.default)))
    specs += [(n, t, field(default=d)) for n, t, d in extra]
    return dataclasses.make_dataclass(name, specs)


# ``reward.RewardCoefs`` (defaults: the calibrated reward, see ``tpfl_jax/reward.py``).
RewardSection = _schema(RewardCoefs, "RewardSection")

# ``agents.ppo.PPOConfig``; ``total_timesteps`` is the budget of one training job (one loop
# cycle); the ``ppo`` config group sets CPU/accelerator sizes.
PPOSection = _schema(PPOConfig, "PPOSection")


@dataclass
class PolicySpec:
    """One weight policy of the comparison: ``kind`` in ``loop.LOOP_POLICY_KINDS`` or a user
    policy ``"package.module:function"`` (``docs/policies.md``; imported and checked before
    anything compiles); ``params``: overrides of ``clm.policies.PolicyParams`` fields (numbers;
    ``bandit_grid`` a list) and, for a user policy, ``user``: up to ``USER_PARAMS`` numbers, its
    ``params.user``; ``history`` (``loop.HISTORY_MODES``) overrides ``loop.history`` for this
    policy."""

    name: str = MISSING
    kind: str = MISSING
    initial_weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    history: str | None = None


@dataclass
class PolicySet:
    """The policies compared in one program (vmapped)."""

    policies: list[PolicySpec] = field(default_factory=list)


# ``loop.LoopConfig`` plus the number of seeds and the policies' default feedback history
# (``cycle``, ``cumulative`` or ``window`` over ``history_window`` cycles).
LoopSection = _schema(LoopConfig, "LoopSection", (("num_seeds", int, 3),
                                                  ("history", str, "cycle")))


@dataclass
class StatsSection:
    """``tpfl-loop``'s paired comparison (``tpfl_jax.stats``): every arm against the fixed
    arms at ``control_weights`` (added to the policy set when missing), per seed. The
    ``primary_metric`` (a ``summary.csv`` column; default ``oos_pnl``: mean out-of-sample PnL
    per deploy episode over cycles 1..C-1 of the feedback deploy mode, greedy by default) is
    declared before the
    run and reported first; ``secondary_metrics`` follow. ``level``: family-wise confidence
    (Holm over arms per control); ``n_boot``: bootstrap resamples."""

    primary_metric: str = "oos_pnl"
    secondary_metrics: list[str] = field(
        default_factory=lambda: ["oos_pnl_sampled", "oos_trade_sharpe", "oos_tp_skill"])
    control_weights: list[float] = field(default_factory=lambda: [1.0, 0.0])
    level: float = 0.95
    n_boot: int = 2000


@dataclass
class LoggerSection:
    """Experiment tracking (``tpfl_jax.explog``): ``kind`` = ``none``, ``mlflow`` (``uri``:
    tracking URI, default ``sqlite:///<sweep or run dir>/mlflow.db``) or ``tensorboard``
    (``uri``: log dir, default ``<sweep or run dir>/tensorboard``). ``experiment``: the
    MLflow experiment / TensorBoard group (default: ``config.experiment``)."""

    kind: str = "none"
    uri: str | None = None
    experiment: str | None = None


@dataclass
class TrainSection:
    """``tpfl-train``: weights x ``num_seeds`` trained as one program (sharded over ``mesh``).
    Every ``chunk_updates`` updates each agent is scored on the first ``curve_episodes`` of the
    ``eval_episodes`` held-out episodes (the learning curve); at the end on all of them.
    ``chunk_updates`` null: the largest divisor of the PPO update count that is at most 10."""

    weights: list[float] = field(default_factory=lambda: [1.0])
    num_seeds: int = 1
    chunk_updates: int | None = None
    eval_episodes: int = 64
    curve_episodes: int = 16


@dataclass
class ClmSection:
    """``tpfl-clm``: one ``TrainingJob`` through ``ClmOrchestrator``."""

    symbol: str = "SYN"
    trigger: str = "manual"
    strategy_id: str = "RL_V3"
    policy: str = "seed_table"
    min_attempts: int = 10
    backtest_episodes: int = 64
    db: str = "tpfl.db"


@dataclass
class AuditSection:
    """``tpfl-audit`` and the audit in every ``tpfl-loop`` / ``tpfl-train`` report
    (``tpfl_jax.audit.AuditConfig``): reference strategies x ``weights`` x ``episodes`` on
    ``paths`` fresh paths of the configured synthetic market (or the loaded data)."""

    enabled: bool = True
    weights: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0])
    episodes: int = 512
    paths: int = 64
    lookback: int | None = None


@dataclass
class MeshSection:
    """``tpfl_jax.distributed.MeshConfig``: the device mesh the apps shard their batch of
    configurations over (``-1`` in ``shape`` = every remaining device), the mesh axes the
    flattened batch is split over (``batch_spec[0]``: an axis name or a list of names) and the
    multi-host settings (null: the ``TPFL_*`` env vars, or SLURM / Open MPI detection)."""

    shape: list[int] = field(default_factory=lambda: [-1])
    axis_names: list[str] = field(default_factory=lambda: ["batch"])
    batch_spec: list[Any] = field(default_factory=lambda: ["batch"])
    on_indivisible: str = "pad"          # = distributed.MeshConfig's (tests compare them)
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: list[int] | None = None
    auto_detect: bool = True


@dataclass
class Config:
    """Top-level schema (``base_config``)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    ppo: PPOSection = field(default_factory=PPOSection)
    policy: PolicySet = field(default_factory=PolicySet)
    loop: LoopSection = field(default_factory=LoopSection)
    train: TrainSection = field(default_factory=TrainSection)
    clm: ClmSection = field(default_factory=ClmSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    audit: AuditSection = field(default_factory=AuditSection)
    guard: GuardSection = field(default_factory=GuardSection)
    stats: StatsSection = field(default_factory=StatsSection)
    logger: LoggerSection = field(default_factory=LoggerSection)
    experiment: str = "default"
    seed: int = 0
    compile_cache: bool = True
    # null: $TPFL_COMPILE_CACHE_DIR, else $XDG_CACHE_HOME/tpfl_jax/jax or ~/.cache/tpfl_jax/jax
    compile_cache_dir: str | None = None
    progress: bool = True


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


register_configs()


# --------------------------------------------------------------------------- conversion
@dataclass(frozen=True)
class Objects:
    """The frozen, JAX-ready view of a composed config."""

    env: Any                       # TradingEnv
    env_kwargs: dict[str, Any]     # EnvParams values (host scalars / tuples)
    ppo: Any                       # PPOConfig
    loop: Any                      # LoopConfig
    policy_names: tuple[str, ...]
    policy_kinds: tuple[str, ...]
    policy_params: tuple[dict[str, float], ...]
    initial_weights: tuple[float, ...]
    num_seeds: int
    seed: int
    mesh: Any                      # distributed.MeshConfig
    policy_histories: tuple[str, ...] = ()
    control_names: tuple[str, ...] = ()   # the fixed arms at stats.control_weights


def to_container(cfg: DictConfig | Config) -> Config:
    """The composed config as the :class:`Config` dataclass (``OmegaConf.to_object``)."""
    if isinstance(cfg, Config):
        return cfg
    check_known_keys(cfg, Config)  # closed schemas: keys added with ``+`` must exist
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):
        raise TypeError(f"config: expected the base_config schema, got {type(obj).__name__}")
    return obj


def to_objects(cfg: DictConfig | Config) -> Objects:
    """Frozen env / PPO / loop objects of a config; bad values raise ``ValueError`` naming the
    field (config.<group>.<key>)."""
    # inside: gymnax's import starts the XLA backend, and a multi-process job converts its
    # config before jax.distributed.initialize (tpfl_jax.app)
    from tpfl_jax.env.trading import TradingEnv, mode_index

    c = to_container(cfg)
    check_config(c)                # ranges and finiteness, every bad key in one error
    e = c.env
    try:
        env = TradingEnv(window=e.window, n_tp=len(e.tp_mults),
                         premature_horizon=e.premature_horizon, features=e.features)
    except ValueError as err:
        raise UserError(f"config.env: {err}") from None
    env_kwargs = {k: getattr(e, k) for k in (
        "sl_mult", "fee_bps", "half_spread_bps", "impact_coef", "position_size",
        "initial_equity", "ruin_floor", "max_holding", "sl_first", "max_steps_in_episode",
        "tp_reward_weight")}
    env_kwargs["tp_mults"] = tuple(e.tp_mults)
    for k in ("accuracy", "drawdown_mode", "alignment_source", "reward_vol"):
        try:
            env_kwargs[k] = mode_index(k, getattr(e, k))
        except ValueError as err:
            raise UserError(f"config.env.{k}: {err}") from None
    env_kwargs["coefs"] = dataclasses.asdict(e.reward)
    try:
        ppo = PPOConfig(**{**dataclasses.asdict(c.ppo), "widths": tuple(c.ppo.widths)})
    except ValueError as err:
        raise UserError(f"config.ppo: {err}") from None
    lp = c.loop
    try:
        loop = LoopConfig(**{f.name: getattr(lp, f.name)
                             for f in dataclasses.fields(LoopConfig)})
    except ValueError as err:
        raise UserError(f"config.loop: {err}") from None
    if lp.num_seeds < 1:
        raise UserError(f"config.loop.num_seeds = {lp.num_seeds}; expected >= 1")
    specs = list(c.policy.policies)
    if not specs:
        raise UserError("config.policy.policies: empty; expected at least one policy")
    names = [s.name for s in specs]
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise UserError(f"config.policy.policies[{i}].name = {n!r}; expected a non-empty "
                            "name (each arm is a table row)")
    if len(set(names)) != len(names):
        raise UserError(f"config.policy.policies: duplicate names {names}")
    for i, s in enumerate(specs):
        if s.kind not in LOOP_POLICY_KINDS and not is_user_kind(s.kind):
            raise UserError(f"config.policy.policies[{i}].kind = {s.kind!r}; expected one of "
                             f"{LOOP_POLICY_KINDS} or a user policy 'package.module:function'")
        if is_user_kind(s.kind):           # imported and traced (abstractly) before any compile
            try:
                load_policy(s.kind)
            except ValueError as err:
                raise UserError(f"config.policy.policies[{i}] ({s.name}): {err}") from None
        hist = lp.history if s.history is None else s.history
        if hist not in HISTORY_MODES:
            where = "config.loop.history" if s.history is None else \
                f"config.policy.policies[{i}].history"
            raise UserError(f"{where} = {hist!r}; expected one of {HISTORY_MODES}")
        try:
            make_loop_policy(s.kind, s.initial_weight, hist, **dict(s.params))
        except ValueError as err:
            raise UserError(f"config.policy.policies[{i}] ({s.name}): {err}") from None
    specs, controls = _with_controls(specs, c.stats.control_weights)
    names = [s.name for s in specs]
    mesh = to_mesh_config(c)
    return Objects(env=env, env_kwargs=env_kwargs, ppo=ppo, loop=loop,
                   policy_names=tuple(names), policy_kinds=tuple(s.kind for s in specs),
                   policy_params=tuple(dict(s.params) for s in specs),
                   initial_weights=tuple(float(s.initial_weight) for s in specs),
                   num_seeds=int(lp.num_seeds), seed=int(c.seed), mesh=mesh,
                   policy_histories=tuple(lp.history if s.history is None else s.history
                                          for s in specs),
                   control_names=controls)


def _with_controls(specs: list[Any], weights: list[float]) -> tuple[list[Any], tuple[str, ...]]:
    """The policy set with a ``fixed`` arm at every control weight (missing ones are appended,
    named ``fixed_<w>``, with a log line) and the control arms' names."""
    names = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise UserError(f"config.stats.control_weights: {w!r}; expected numbers >= 0")
        found = [s for s in specs if s.kind == "fixed" and float(s.initial_weight) == float(w)]
        if found:
            names.append(found[0].name)
            continue
        name = f"fixed_{float(w)}"
        if any(s.name == name for s in specs):
            raise UserError(f"config.policy.policies: {name!r} is taken by a non-control "
                             f"policy; the control arm (kind fixed, weight {w}) needs it")
        log.warning("config.policy: added the control arm %s (kind fixed, weight %s): every "
                    "comparison is paired against stats.control_weights %s", name, w, weights)
        specs = [*specs, PolicySpec(name=name, kind="fixed", initial_weight=float(w))]
        names.append(name)
    return specs, tuple(names)


def to_mesh_config(cfg: DictConfig | Config) -> Any:
    """The frozen ``distributed.MeshConfig`` of ``config.mesh`` (``ValueError`` names the field)."""
    m = to_container(cfg).mesh
    if len(m.batch_spec) != 1 or not m.batch_spec[0]:
        raise UserError(f"config.mesh.batch_spec = {m.batch_spec}: the apps flatten their "
                         f"configurations into one batch axis; expected one entry (a mesh axis "
                         f"name or a list of names) that splits it")
    try:
        return MeshConfig.from_dict(dataclasses.asdict(m))
    except (ValueError, TypeError) as err:
        raise UserError(f"config.mesh: {err}") from None
