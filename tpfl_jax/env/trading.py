"""``TradingEnv``: a pure-functional gymnax environment for TP/SL trading on OHLC bars.

Time and fills: the agent acts on bar t's close; orders fill at bar t+1's open; bar t+1 is then
resolved by the shared exit resolver (``exits.resolve_bar``). Observations at t use bars <= t
only. Market paths are ``EnvParams`` leaves (never closed over), and ``tp_reward_weight`` and
every reward/cost coefficient are traced leaves: new data of the same shape or a new weight
never recompiles, and a batch of weights runs under one ``vmap``.

Actions (``Discrete(1 + 2 * n_tp)``): 0 = flat; ``1..n_tp`` = long with TP ``tp_mults[k]``;
``n_tp+1..2*n_tp`` = short with TP ``tp_mults[k]``. TP and SL distances are multiples of the
volatility unit at the decision bar, so the planned R-multiple is ``tp_mult / sl_mult``.
While a trade is open, the same side keeps it (its TP is not changed); flat or the opposite
side closes it at the next open (``manual``). Decision: a reversal does not open the new side
on the same step, so at most one trade closes per step and ``info["trade"]`` is one record.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from tpfl_jax.env.exits import reached_level, resolve_bar, tp_zone_accuracy
from tpfl_jax.env.stats import (
    EXIT_END,
    EXIT_MANUAL,
    EXIT_NONE,
    EXIT_TIME,
    EXIT_TP,
    bonus_accuracy,
    no_edge_hit_probability,
)
from tpfl_jax.market import synthetic
from tpfl_jax.market.types import MarketData, make_market_data
from tpfl_jax.reward import VOL_FLOOR, RewardCoefs, reward_terms, total_reward

DEFAULT_TP_MULTS = (0.5, 1.0, 1.5, 2.0, 3.0)
N_POSITION_FEATURES = 10

# Observation design (``TradingEnv(features=...)``, config ``env.features``): a named set or
# ``+``-joined blocks, in this order in the vector. Every block reads bars <= t only.
#   moves:      the last ``window`` close-to-close moves in vol units at t (the first main's)
#   position:   the ``N_POSITION_FEATURES`` bar/trade/equity features (the first main's)
#   vol:        volatility level: 100 x vol unit / close, 100 x RMS log return over ``window``
#   logret:     the last ``window`` log returns in percent (level and direction of every bar)
#   scales:     moves over 4, 16 and 64 bars in units of vol unit x sqrt(bars)
#   moves_long: the last ``LONG_WINDOW`` close-to-close moves in vol units at t
LONG_WINDOW = 64
SCALES = (4, 16, 64)
FEATURE_SETS = {
    "base": ("moves", "position"),
    "vol": ("moves", "vol", "position"),
    "scales": ("moves", "vol", "scales", "position"),
    "long": ("moves_long", "vol", "position"),
    "logret": ("logret", "vol", "scales", "position"),
}
FEATURE_BLOCKS = ("moves", "position", "vol", "logret", "scales", "moves_long")
# the default observation: ``base`` (every result recorded before the causal-limit ablation)
# hides the volatility level, which
# tells the regimes apart; ``vol`` carries it (experiments/README.md, "Against the causal limit")
DEFAULT_FEATURES = "vol"


@struct.dataclass
class EnvState(environment.EnvState):
    """Episode state. Prices are the path's raw prices; equity is in currency."""

    time: jax.Array          # steps taken in this episode
    bar: jax.Array           # index of the last closed bar (the decision bar)
    path: jax.Array          # market path of this episode
    equity: jax.Array        # marked to the close of ``bar``
    peak_equity: jax.Array
    side: jax.Array          # int32 +1 / -1 / 0 (flat)
    units: jax.Array
    entry_price: jax.Array
    tp_price: jax.Array
    sl_price: jax.Array
    tp_mult: jax.Array
    risk: jax.Array          # initial risk in currency (units x entry-to-SL distance)
    entry_cost: jax.Array
    mfe: jax.Array
    mae: jax.Array
    bars_held: jax.Array
    entry_bar: jax.Array
    max_drawdown: jax.Array  # deepest drawdown of this episode so far (fraction, >= 0)
    episode_vol: jax.Array   # one bar's volatility (vol unit / close) at the episode's start
    # Path lanes (fresh training data, ``market.fresh``): the path the next auto-reset starts on
    # (-1: a random path) and the lane stride (paths [stride, n_paths) are this update's fresh
    # paths, lane i owning stride + i, 2 * stride + i, ...; 0: no lanes). A lane whose paths are
    # used up falls back to random paths; ``step`` flags those resets (``info["reused_path"]``).
    lane_next: jax.Array = -1
    lane_stride: jax.Array = 0


# Traced integer switches of EnvParams, written as names in configs (``make_params`` maps them).
ACCURACY_MODES = ("mfe_ratio", "hit", "skill")
DRAWDOWN_MODES = ("increase", "level")
ALIGNMENT_SOURCES = ("causal", "hidden_label")
REWARD_VOL_MODES = ("episode", "bar")
_MODE_FIELDS = {"accuracy": ACCURACY_MODES, "drawdown_mode": DRAWDOWN_MODES,
                "alignment_source": ALIGNMENT_SOURCES, "reward_vol": REWARD_VOL_MODES}


@struct.dataclass(kw_only=True)
class EnvParams(environment.EnvParams):
    """Everything here is a traced leaf (``tp_mults`` has the static length ``n_tp``)."""

    market: MarketData
    tp_reward_weight: Any = 1.0
    coefs: RewardCoefs = struct.field(default_factory=RewardCoefs)
    tp_mults: Any = struct.field(default_factory=lambda: jnp.asarray(DEFAULT_TP_MULTS))
    sl_mult: Any = 1.0
    fee_bps: Any = 5.0            # per side, on notional
    half_spread_bps: Any = 2.0    # per side, on notional
    impact_coef: Any = 0.0        # square-root impact: coef * bar vol * sqrt(units / volume)
    position_size: Any = 1.0      # notional as a fraction of equity
    initial_equity: Any = 10_000.0
    ruin_floor: Any = 0.5         # terminate when equity < floor * initial equity
    max_holding: Any = 20         # time barrier, bars
    sl_first: Any = True          # TP and SL in one bar: SL first (conservative)
    max_steps_in_episode: Any = 100
    # reward design (see ``tpfl_jax.reward`` for the calibration); ints index the tuples above
    accuracy: Any = ACCURACY_MODES.index("skill")          # tp_zone_accuracy fed to the bonus
    drawdown_mode: Any = DRAWDOWN_MODES.index("increase")  # what the drawdown penalty charges
    alignment_source: Any = ALIGNMENT_SOURCES.index("causal")  # regime_alignment signal
    reward_vol: Any = REWARD_VOL_MODES.index("episode")  # the volatility PnL is scaled by


class Bar(NamedTuple):
    """Bar t+1, which a step resolves (``nb``), and the decision bar t's close, volatility unit
    and volatility as a fraction of price."""

    nb: jax.Array
    open: jax.Array
    high: jax.Array
    low: jax.Array
    close: jax.Array
    prev_close: jax.Array
    vol_unit: jax.Array
    bar_vol: jax.Array
    volume: jax.Array


class Position(NamedTuple):
    """The trade in the market at bar t+1's open: the decoded action (``want``), whether one
    was held (``held``) or opens now (``opens``), its levels, size and costs."""

    want: jax.Array
    held: jax.Array
    opens: jax.Array
    old_side: jax.Array
    side: jax.Array
    entry: jax.Array
    tp: jax.Array
    sl: jax.Array
    units: jax.Array
    tp_mult: jax.Array
    entry_cost: jax.Array
    risk: jax.Array
    entry_bar: jax.Array
    cost_in_new: jax.Array


class Outcome(NamedTuple):
    """What the bar did to the position: a manual close, still live, closed (with reason and
    exit price), excursions and bars held."""

    manual: jax.Array
    live: jax.Array
    closes: jax.Array
    exit_price: jax.Array
    reason: jax.Array
    mfe: jax.Array
    mae: jax.Array
    bars_held: jax.Array


class Account(NamedTuple):
    """The step's PnL (costs included), exit cost, equity, peak and drawdowns."""

    step_pnl: jax.Array
    cost_out: jax.Array
    equity: jax.Array
    peak: jax.Array
    drawdown: jax.Array
    max_drawdown: jax.Array
    in_market: jax.Array


def _zero_trade() -> dict[str, jax.Array]:
    f = jnp.float32(0.0)
    i = jnp.int32(0)
    return {
        "closed": jnp.bool_(False), "exit_reason": i, "side": i,
        "entry_price": f, "exit_price": f, "tp_price": f, "sl_price": f, "tp_mult": f,
        "r_planned": f, "r_realised": f, "pnl": f, "mfe": f, "mae": f,
        "tp_zone_accuracy": f, "hit": jnp.bool_(False), "premature": jnp.bool_(False),
        "entry_bar": i, "exit_bar": i, "path": i, "symbol_id": i,
    }


class TradingEnv(environment.Environment[EnvState, EnvParams]):
    """TP/SL trading on OHLC paths (gymnax API).

    Static configuration (changes the compiled program): ``window`` (bars of returns in the
    observation), ``n_tp`` (size of the TP grid), ``premature_horizon`` (bars looked at after
    a manual/time exit to flag it premature; analytics only, never observed), ``features``
    (the observation design: a ``FEATURE_SETS`` name or ``+``-joined ``FEATURE_BLOCKS``;
    default ``DEFAULT_FEATURES``; ``base`` is the first main's observation, bit for bit).
    Episodes start ``lookback`` bars in (the history the features read).
    """

    def __init__(self, window: int = 16, n_tp: int = len(DEFAULT_TP_MULTS),
                 premature_horizon: int = 10, features: str = DEFAULT_FEATURES):
        super().__init__()
        if window < 2 or n_tp < 1 or premature_horizon < 1:
            raise ValueError(
                f"TradingEnv: need window >= 2, n_tp >= 1, premature_horizon >= 1; "
                f"got window={window}, n_tp={n_tp}, premature_horizon={premature_horizon}")
        self.window = int(window)
        self.n_tp = int(n_tp)
        self.premature_horizon = int(premature_horizon)
        self.features = str(features)
        self.blocks = feature_blocks(self.features)

    # equal static settings are the same env (one compiled program; no identity-keyed caches)
    def _key(self) -> tuple[Any, ...]:
        return (type(self), self.window, self.n_tp, self.premature_horizon, self.blocks)

    @property
    def lookback(self) -> int:
        """Bars before the decision bar the observation reads (episodes start this far in)."""
        far = {"scales": max(SCALES), "moves_long": LONG_WINDOW}
        return max([self.window] + [far[b] for b in self.blocks if b in far])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TradingEnv) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # ------------------------------------------------------------------ params
    def make_params(self, market: MarketData, **kwargs: Any) -> EnvParams:
        """``EnvParams`` for ``market``, validated on the host (errors name the field).

        ``accuracy``, ``drawdown_mode`` and ``alignment_source`` take their names
        (``ACCURACY_MODES`` ...) or indices; ``coefs`` takes a ``RewardCoefs`` or a dict.
        """
        kwargs = {k: mode_index(k, v) if k in _MODE_FIELDS else v for k, v in kwargs.items()}
        if isinstance(kwargs.get("coefs"), dict):
            kwargs["coefs"] = RewardCoefs(**kwargs["coefs"])
        params = canonicalize(EnvParams(market=market, **kwargs))
        self.validate_params(params)
        return params

    def validate_params(self, params: EnvParams) -> None:
        """Host-side checks of shapes and ranges; raises ``ValueError`` naming the field."""
        m = params.market
        need = self.lookback + int(np.max(np.asarray(params.max_steps_in_episode))) + 2
        if m.close.ndim != 2:
            raise ValueError(f"EnvParams.market.close: expected [n_paths, n_bars], "
                             f"got shape {m.close.shape}")
        if m.n_bars < need:
            what = ("window" if self.lookback == self.window
                    else f"the lookback of features {self.features!r}")
            raise ValueError(
                f"EnvParams.market: n_bars={m.n_bars} is too short; need >= {what} "
                f"({self.lookback}) + max_steps_in_episode + 2 = {need}")
        if np.shape(params.tp_mults)[-1:] != (self.n_tp,):
            raise ValueError(f"EnvParams.tp_mults: expected length n_tp={self.n_tp}, "
                             f"got shape {np.shape(params.tp_mults)}")
        checks = {
            "tp_mults": np.all(np.asarray(params.tp_mults) > 0),
            "sl_mult": np.all(np.asarray(params.sl_mult) > 0),
            "max_holding": np.all(np.asarray(params.max_holding) >= 1),
            "max_steps_in_episode": np.all(np.asarray(params.max_steps_in_episode) >= 1),
            "position_size": np.all(np.asarray(params.position_size) > 0),
            "initial_equity": np.all(np.asarray(params.initial_equity) > 0),
            "fee_bps": np.all(np.asarray(params.fee_bps) >= 0),
            "half_spread_bps": np.all(np.asarray(params.half_spread_bps) >= 0),
            "impact_coef": np.all(np.asarray(params.impact_coef) >= 0),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"EnvParams.{name}: expected a positive value "
                                 f"(>= 0 for costs), got {getattr(params, name)}")
        for name, names in _MODE_FIELDS.items():
            v = np.asarray(getattr(params, name))
            if not np.all((v >= 0) & (v < len(names))):
                raise ValueError(f"EnvParams.{name}: expected an index into {names}, got {v}")
        for name in ("pnl", "drawdown", "size", "alignment", "tp_bonus"):
            v = np.asarray(getattr(params.coefs, name))
            if not np.all(np.isfinite(v)):
                raise ValueError(f"EnvParams.coefs.{name}: expected a finite number, got {v}")
        w = np.asarray(params.tp_reward_weight)
        if not np.all(np.isfinite(w)):
            raise ValueError(f"EnvParams.tp_reward_weight: expected a finite number, got {w}")
        if not np.all(np.asarray(m.vol_unit) > 0):
            raise ValueError("EnvParams.market.vol_unit: expected > 0 on every bar "
                             "(a bar with high == low and an unchanged close everywhere "
                             "before it has no volatility unit)")

    @property
    def default_params(self) -> EnvParams:
        return self.make_params(default_market(), tp_mults=DEFAULT_TP_MULTS[: self.n_tp]
                                if self.n_tp <= len(DEFAULT_TP_MULTS)
                                else np.linspace(0.5, 3.0, self.n_tp))

    # ------------------------------------------------------------------ dynamics
    def _cost(self, params: EnvParams, notional, units, bar_vol, volume):
        """Fee + half-spread (+ square-root impact) for one side, in currency."""
        linear = notional * (params.fee_bps + params.half_spread_bps) * 1e-4
        impact = params.impact_coef * bar_vol * jnp.sqrt(
            units / jnp.maximum(volume, 1e-12)) * notional
        return linear + jnp.where(volume > 0, impact, 0.0)

    def step_env(self, key: jax.Array, state: EnvState, action: int | jax.Array,
                 params: EnvParams) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict]:
        """One bar: orders fill at bar t+1's open, the bar resolves TP/SL/time exits, the
        position is marked to its close, and the reward is paid (phases below)."""
        bar = self._bar(state, params)
        pos = self._position(state, jnp.asarray(action, jnp.int32), params, bar)
        out = self._outcome(state, params, bar, pos)
        acct = self._account(state, params, bar, pos, out)
        trade, bonus_acc = self._trade_record(state, params, bar, pos, out, acct)
        reward, terms = self._reward(state, params, bar, pos, out, acct, bonus_acc)
        new_state = self._next_state(state, bar, pos, out, acct)
        terminated = self.is_terminated(new_state, params)
        # bonus_accuracy: the accuracy the TP bonus was paid on (EnvParams.accuracy's mode; 0
        # when no trade closed); the trade record keeps the tracker's tp_zone_accuracy
        info = {"trade": trade, "reward_terms": terms, "equity": acct.equity,
                "bonus_accuracy": bonus_acc}
        return self.get_obs(new_state, params), new_state, reward, terminated, info

    def _bar(self, state: EnvState, params: EnvParams) -> Bar:
        """Bar t+1 (the one the step resolves) and the decision bar t's volatility."""
        m = params.market
        p, t = state.path, state.bar
        nb = t + 1
        vu = m.vol_unit[p, t]
        c_prev = m.close[p, t]
        return Bar(nb=nb, open=m.open[p, nb], high=m.high[p, nb], low=m.low[p, nb],
                   close=m.close[p, nb], prev_close=c_prev, vol_unit=vu,
                   bar_vol=vu / c_prev,            # one bar's volatility as a fraction of price
                   volume=m.volume[p, nb])

    def _position(self, state: EnvState, action: jax.Array, params: EnvParams,
                  bar: Bar) -> Position:
        """The trade in the market at bar t+1's open: a new one (only from flat at the decision
        bar) or the one carried over."""
        want, k = decode_action(action, self.n_tp)
        k = jnp.clip(k, 0, self.n_tp - 1)
        held = _once(state.side != 0)
        o, vu = bar.open, bar.vol_unit
        opens = _once(~held & (want != 0))
        s_new = want.astype(jnp.float32)
        tp_mult = params.tp_mults[k]
        units_new = state.equity * params.position_size / o
        cost_in_new = self._cost(params, units_new * o, units_new, bar.bar_vol, bar.volume)
        new = lambda x, old: jnp.where(opens, x, old)  # noqa: E731
        return Position(
            want=want, held=held, opens=opens, old_side=state.side.astype(jnp.float32),
            side=new(s_new, state.side.astype(jnp.float32)), entry=new(o, state.entry_price),
            tp=new(o + s_new * tp_mult * vu, state.tp_price),
            sl=new(o - s_new * params.sl_mult * vu, state.sl_price),
            units=new(units_new, state.units), tp_mult=new(tp_mult, state.tp_mult),
            entry_cost=new(cost_in_new, state.entry_cost),
            risk=new(units_new * params.sl_mult * vu, state.risk),
            entry_bar=new(bar.nb, state.entry_bar), cost_in_new=cost_in_new)

    def _outcome(self, state: EnvState, params: EnvParams, bar: Bar, pos: Position
                 ) -> Outcome:
        """What happens to the position during bar t+1: resting TP/SL orders (gaps fill at the
        open; the one resolver), a manual close at the open, the time barrier, the episode's
        end; excursions and holding time."""
        m = params.market
        o = bar.open
        # one resolver call for either; a trade entered at this open cannot gap
        ib, ib_jump = m.bar_path(state.path, bar.nb)   # intrabar path (m = 0 for OHLC data)
        res = resolve_bar(pos.side, pos.entry, pos.tp, pos.sl, o, bar.high, bar.low,
                          params.sl_first, check_gap=~pos.opens, intrabar=ib,
                          intrabar_jump=ib_jump)
        # resting TP/SL orders fill first on a gap; otherwise flat / opposite side closes
        # the carried trade at the open
        manual = _once(pos.held & ~res.gap & (pos.want != state.side))
        live = _once((pos.held & ~manual) | pos.opens)
        mfe = jnp.where(pos.opens, 0.0, state.mfe)
        mae = jnp.where(pos.opens, 0.0, state.mae)
        mfe = jnp.where(live, jnp.maximum(mfe, res.fav), mfe)
        mae = jnp.where(live, jnp.maximum(mae, res.adv), mae)
        # manual exit at the open: the open is the last price the trade saw
        s_old = pos.old_side
        mfe = jnp.where(manual, jnp.maximum(mfe, jnp.maximum(s_old * (o - pos.entry), 0.0)), mfe)
        mae = jnp.where(manual, jnp.maximum(mae, jnp.maximum(s_old * (pos.entry - o), 0.0)), mae)
        bars_held = jnp.where(pos.opens, 1, jnp.where(live, state.bars_held + 1, 0))
        truncating = state.time + 1 >= params.max_steps_in_episode
        bar_exit = live & res.exited
        time_exit = live & ~bar_exit & (bars_held >= params.max_holding)
        end_exit = live & ~bar_exit & ~time_exit & truncating
        reason = jnp.where(manual, EXIT_MANUAL, jnp.where(
            bar_exit, res.reason, jnp.where(time_exit, EXIT_TIME,
                                            jnp.where(end_exit, EXIT_END, EXIT_NONE))))
        closes = _once(manual | bar_exit | time_exit | end_exit)
        return Outcome(manual=manual, live=live, closes=closes,
                       exit_price=jnp.where(manual, o, jnp.where(bar_exit, res.price,
                                                                 bar.close)),
                       reason=reason.astype(jnp.int32), mfe=mfe, mae=mae, bars_held=bars_held)

    def _account(self, state: EnvState, params: EnvParams, bar: Bar, pos: Position,
                 out: Outcome) -> Account:
        """Mark to market over the bar, costs included; equity, peak and drawdown."""
        p_start = jnp.where(pos.opens, bar.open, bar.prev_close)
        p_end = jnp.where(out.closes, out.exit_price, bar.close)
        in_market = out.live | out.manual
        price_pnl = jnp.where(in_market, pos.side * pos.units * (p_end - p_start), 0.0)
        cost_out = jnp.where(out.closes, self._cost(params, pos.units * out.exit_price,
                                                    pos.units, bar.bar_vol, bar.volume), 0.0)
        step_pnl = price_pnl - jnp.where(pos.opens, pos.cost_in_new, 0.0) - cost_out
        equity = state.equity + step_pnl
        peak = jnp.maximum(state.peak_equity, equity)
        drawdown = 1.0 - equity / peak
        return Account(step_pnl=step_pnl, cost_out=cost_out, equity=equity, peak=peak,
                       drawdown=drawdown, max_drawdown=jnp.maximum(state.max_drawdown, drawdown),
                       in_market=in_market)

    def _trade_record(self, state: EnvState, params: EnvParams, bar: Bar, pos: Position,
                      out: Outcome, acct: Account) -> tuple[dict[str, jax.Array], jax.Array]:
        """``info["trade"]`` (zeros unless a trade closed) and the accuracy the bonus pays."""
        m = params.market
        p, closes = state.path, out.closes
        trade_pnl = pos.side * pos.units * (out.exit_price - pos.entry) - pos.entry_cost \
            - acct.cost_out
        hit = out.reason == EXIT_TP
        acc = jnp.where(closes, tp_zone_accuracy(hit, out.mfe, jnp.abs(pos.tp - pos.entry)), 0.0)
        bonus_acc = jnp.where(closes, bonus_accuracy(params.accuracy, hit, acc, pos.tp_mult,
                                                     params.sl_mult), 0.0)
        first = bar.nb + jnp.where(out.manual, 0, 1)   # a manual exit leaves the rest of t+1
        idx = first + jnp.arange(self.premature_horizon)
        safe = jnp.minimum(idx, m.n_bars - 1)
        later = reached_level(pos.side, pos.tp, m.high[p, safe], m.low[p, safe], idx < m.n_bars)
        premature = closes & ((out.reason == EXIT_MANUAL) | (out.reason == EXIT_TIME)) & later
        trade = {
            "closed": closes, "exit_reason": out.reason, "side": pos.side.astype(jnp.int32),
            "entry_price": pos.entry, "exit_price": out.exit_price, "tp_price": pos.tp,
            "sl_price": pos.sl, "tp_mult": pos.tp_mult, "r_planned": pos.tp_mult / params.sl_mult,
            "r_realised": trade_pnl / jnp.maximum(pos.risk, 1e-12), "pnl": trade_pnl,
            "mfe": out.mfe, "mae": out.mae, "tp_zone_accuracy": acc, "hit": closes & hit,
            "premature": premature, "entry_bar": pos.entry_bar.astype(jnp.int32),
            "exit_bar": bar.nb.astype(jnp.int32), "path": p.astype(jnp.int32),
            "symbol_id": m.symbol_id[p].astype(jnp.int32),
        }
        trade = jax.tree.map(lambda x, z: jnp.where(closes, x, z).astype(z.dtype),
                             trade, _zero_trade())
        return trade, bonus_acc

    def _reward(self, state: EnvState, params: EnvParams, bar: Bar, pos: Position,
                out: Outcome, acct: Account, bonus_acc: jax.Array
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The seed's bonus on ``bonus_acc``; the other terms are this package's calibrated
        design (``tpfl_jax.reward``): PnL, drawdown and alignment in units of one bar's
        volatility, so their coefficients are comparable across markets."""
        m = params.market
        still_open = out.live & ~out.closes
        # ``episode``: one constant per episode (the bar volatility at its start), so within an
        # episode the PnL term is proportional to currency PnL; ``bar``: the decision bar's
        # volatility (credits PnL made in calm bars more than the same PnL in volatile ones).
        vol = jnp.maximum(jnp.where(params.reward_vol == REWARD_VOL_MODES.index("bar"),
                                    bar.bar_vol, state.episode_vol), VOL_FLOOR)
        # ``increase``: growth of the episode's max drawdown, in bar-vol units (an episode pays
        # ``coef * max drawdown / vol`` in all); ``level``: the drawdown fraction every step (the
        # first main's rule, which charges a profitable trend rule more than staying flat).
        dd_charged = jnp.where(params.drawdown_mode == DRAWDOWN_MODES.index("level"),
                               acct.drawdown, (acct.max_drawdown - state.max_drawdown) / vol)
        signal = jnp.where(params.alignment_source == ALIGNMENT_SOURCES.index("hidden_label"),
                           m.trend[state.path, bar.nb],
                           causal_trend(m, state.path, state.bar, self.window))
        terms = reward_terms(
            pnl_delta=acct.step_pnl / state.equity,
            drawdown=dd_charged,
            position_size=jnp.where(still_open, params.position_size, 0.0),
            regime_alignment=jnp.where(acct.in_market, pos.side * signal, 0.0),
            volatility=vol,
            tp_zone_accuracy=bonus_acc,
            tp_reward_weight=params.tp_reward_weight,
            coefs=params.coefs,
        )
        return total_reward(terms).astype(jnp.float32), terms

    def _next_state(self, state: EnvState, bar: Bar, pos: Position, out: Outcome,
                    acct: Account) -> EnvState:
        """The state after bar t+1 (position fields zeroed when no trade is open)."""
        f0 = jnp.float32(0.0)
        still_open = out.live & ~out.closes
        keep = lambda x, zero: jnp.where(still_open, x, zero)  # noqa: E731
        return EnvState(
            time=state.time + 1, bar=bar.nb, path=state.path, equity=acct.equity,
            peak_equity=acct.peak, side=keep(pos.side, f0).astype(jnp.int32),
            units=keep(pos.units, f0), entry_price=keep(pos.entry, f0),
            tp_price=keep(pos.tp, f0), sl_price=keep(pos.sl, f0),
            tp_mult=keep(pos.tp_mult, f0), risk=keep(pos.risk, f0),
            entry_cost=keep(pos.entry_cost, f0), mfe=keep(out.mfe, f0), mae=keep(out.mae, f0),
            bars_held=keep(out.bars_held, 0).astype(jnp.int32),
            entry_bar=keep(pos.entry_bar, 0).astype(jnp.int32),
            max_drawdown=acct.max_drawdown, episode_vol=state.episode_vol,
            lane_next=state.lane_next, lane_stride=state.lane_stride,
        )

    def step_batch(self, keys: jax.Array, states: EnvState, actions: jax.Array,
                   params: EnvParams | None = None):
        """``step`` of a batch of envs (leading axis), resets computed only when needed
        (:func:`step_batch`)."""
        return step_batch(self, keys, states, actions,
                          self.default_params if params is None else params)

    def step(self, key: jax.Array, state: EnvState, action: int | jax.Array,
             params: EnvParams | None = None):
        """gymnax ``Environment.step`` (auto-reset, ``final_observation``, both flags).

        Same contract as the base class; the transition is deterministic, so ``key`` goes to
        the reset directly instead of being split first (one threefry call less per step).
        """
        return _step(self, key, state, action,
                     self.default_params if params is None else params)

    def reset_env(self, key: jax.Array, params: EnvParams, lane_next: Any = -1,
                  lane_stride: Any = 0) -> tuple[jax.Array, EnvState]:
        """A new episode: a random path and start bar from ``key``; with ``lane_next >= 0`` the
        episode starts on path ``lane_next`` instead (a fresh path of this env's lane), and the
        state's ``lane_next`` moves to the lane's following path (see :class:`EnvState`)."""
        m = params.market
        u = _key_uniforms(key)
        lane_next = jnp.asarray(lane_next, jnp.int32)
        lane_stride = jnp.asarray(lane_stride, jnp.int32)
        random_path = jnp.minimum((u[0] * m.n_paths).astype(jnp.int32), m.n_paths - 1)
        laned = lane_next >= 0
        path = jnp.where(laned, lane_next, random_path)
        nxt = jnp.where(path + lane_stride < m.n_paths, path + lane_stride, -1)  # exhausted
        # the episode reads bars start-window .. start+max_steps (inclusive)
        n_starts = jnp.maximum(m.n_bars - params.max_steps_in_episode - 1 - self.lookback, 1)
        start = self.lookback + jnp.minimum((u[1] * n_starts).astype(jnp.int32), n_starts - 1)
        f0 = jnp.float32(0.0)
        eq = jnp.asarray(params.initial_equity, jnp.float32)
        state = EnvState(
            time=jnp.int32(0), bar=start.astype(jnp.int32), path=path.astype(jnp.int32),
            equity=eq, peak_equity=eq, side=jnp.int32(0), units=f0, entry_price=f0,
            tp_price=f0, sl_price=f0, tp_mult=f0, risk=f0, entry_cost=f0, mfe=f0, mae=f0,
            bars_held=jnp.int32(0), entry_bar=jnp.int32(0), max_drawdown=f0,
            episode_vol=(m.vol_unit[path, start] / m.close[path, start]).astype(jnp.float32),
            lane_next=jnp.where(laned, nxt, -1).astype(jnp.int32), lane_stride=lane_stride,
        )
        return self.get_obs(state, params), state

    def episode_paths(self, n_paths: int, n_episodes: int) -> np.ndarray:
        """The path ``accounting.rollout``'s episode e starts on, of a market of ``n_paths``:
        ``e % n_paths`` (``reset_env``'s ``lane_next``), so E episodes on E paths visit every
        path once."""
        return (np.arange(n_episodes) % n_paths).astype(np.int32)

    def get_obs(self, state: EnvState, params: EnvParams | None = None,
                key: jax.Array | None = None) -> jax.Array:
        """Features of bars <= ``state.bar`` and of the open trade (float32 vector; the blocks
        of ``features`` in order, see ``FEATURE_SETS``)."""
        m = params.market
        p, t = state.path, state.bar
        w = self.window
        closes = jax.lax.dynamic_slice(m.close, (p, t - w), (1, w + 1))[0]
        c = closes[-1]
        vu = m.vol_unit[p, t]
        parts = {"moves": lambda: jnp.diff(closes) / vu,  # close-to-close moves in vol units
                 "position": lambda: self._position_features(state, params, closes, c, vu),
                 "vol": lambda: _vol_features(closes, vu),
                 "logret": lambda: 100.0 * jnp.log(closes[1:] / closes[:-1]),
                 "scales": lambda: _scale_features(m, p, t, vu),
                 "moves_long": lambda: jnp.diff(jax.lax.dynamic_slice(
                     m.close, (p, t - LONG_WINDOW), (1, LONG_WINDOW + 1))[0]) / vu}
        return jnp.concatenate([parts[b]() for b in self.blocks]).astype(jnp.float32)

    def _position_features(self, state: EnvState, params: EnvParams, closes: jax.Array,
                           c: jax.Array, vu: jax.Array) -> jax.Array:
        """The ``N_POSITION_FEATURES`` features of the decision bar (close ``c``), the trade
        and equity."""
        m = params.market
        p, t = state.path, state.bar
        s = state.side.astype(jnp.float32)
        held = state.side != 0
        in_vu = lambda x: jnp.where(held, x / vu, 0.0)  # noqa: E731
        return jnp.stack([
            (m.high[p, t] - m.low[p, t]) / vu,
            (c - jnp.mean(closes)) / vu,
            s,
            state.bars_held / params.max_holding,
            in_vu(s * (c - state.entry_price)),
            in_vu(s * (state.tp_price - c)),
            in_vu(s * (c - state.sl_price)),
            in_vu(state.mfe),
            1.0 - state.equity / state.peak_equity,
            state.equity / params.initial_equity - 1.0,
        ])

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        """Ruin: equity below ``ruin_floor`` x initial equity."""
        return state.equity < params.ruin_floor * params.initial_equity

    # ------------------------------------------------------------------ spaces
    @property
    def name(self) -> str:
        return "TradingEnv-v0"

    @property
    def num_actions(self) -> int:
        return 1 + 2 * self.n_tp

    @property
    def obs_size(self) -> int:
        """Observation length (``base``: ``window`` returns + ``N_POSITION_FEATURES``)."""
        size = {"moves": self.window, "position": N_POSITION_FEATURES, "vol": 2,
                "logret": self.window, "scales": len(SCALES), "moves_long": LONG_WINDOW}
        return sum(size[b] for b in self.blocks)

    def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.obs_size,), jnp.float32)

    def state_space(self, params: EnvParams) -> spaces.Dict:
        return spaces.Dict({
            "time": spaces.Discrete(int(params.max_steps_in_episode)),
            "bar": spaces.Discrete(params.market.n_bars),
            "path": spaces.Discrete(params.market.n_paths),
            "side": spaces.Discrete(3),
        })


def feature_blocks(features: str) -> tuple[str, ...]:
    """The blocks of an observation design: a ``FEATURE_SETS`` name or ``+``-joined
    ``FEATURE_BLOCKS`` (each at most once); ``ValueError`` names the bad part."""
    if features in FEATURE_SETS:
        return FEATURE_SETS[features]
    blocks = tuple(b.strip() for b in str(features).split("+"))
    bad = [b for b in blocks if b not in FEATURE_BLOCKS]
    if bad or not blocks or len(set(blocks)) != len(blocks):
        raise ValueError(f"TradingEnv: features = {features!r}; expected one of "
                         f"{sorted(FEATURE_SETS)} or '+'-joined distinct blocks of "
                         f"{FEATURE_BLOCKS}")
    return blocks


def _vol_features(closes: jax.Array, vu: jax.Array) -> jax.Array:
    """Volatility level at t: 100 x vol unit / close and 100 x the RMS log return of the
    window (absolute levels: they tell volatility regimes apart)."""
    r = jnp.log(closes[1:] / closes[:-1])
    return jnp.stack([100.0 * vu / closes[-1], 100.0 * jnp.sqrt(jnp.mean(r * r))])


def _scale_features(m: MarketData, p: jax.Array, t: jax.Array, vu: jax.Array) -> jax.Array:
    """Moves over ``SCALES`` bars to t in units of their diffusive scale
    (``vol unit x sqrt(bars)``)."""
    k = jnp.asarray(SCALES)
    return (m.close[p, t] - m.close[p, t - k]) / (vu * jnp.sqrt(k.astype(jnp.float32)))


def _key_uniforms(key: jax.Array) -> jax.Array:
    """Two uniforms in [0, 1) read from the key's own bits (no extra threefry call).

    Under gymnax auto-reset, ``reset_env`` runs on every step, and a ``jax.random`` draw was
    half of a step's cost. The keys passed here come out of ``jax.random.split``, whose
    output words are already uniform pseudo-random bits, so they are used directly
    (mantissa trick: 23 high bits -> [1, 2) -> minus 1).
    """
    bits = jax.random.key_data(key).reshape(-1)[:2].astype(jnp.uint32)
    mant = (bits >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
    return jax.lax.bitcast_convert_type(mant, jnp.float32) - 1.0


_INT_FIELDS = ("max_holding", "max_steps_in_episode", *_MODE_FIELDS)
_BOOL_FIELDS = ("sl_first",)


def canonicalize(params: EnvParams) -> EnvParams:
    """Cast every leaf to a fixed dtype (float32 / int32 / bool arrays).

    Weakly typed Python scalars and strongly typed arrays are different jit cache keys, so
    params built here and updated with ``jnp.float32`` values (or through this function)
    never retrace.
    """
    def cast(name, v):
        dt = jnp.int32 if name in _INT_FIELDS else jnp.bool_ if name in _BOOL_FIELDS \
            else jnp.float32
        return jnp.asarray(v, dt)

    fields = {n: cast(n, getattr(params, n)) for n in EnvParams.__dataclass_fields__
              if n not in ("market", "coefs")}
    coefs = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params.coefs)
    return params.replace(coefs=coefs, **fields)


def mode_index(field: str, value: Any) -> Any:
    """Index of a mode name of ``field`` (``accuracy``, ``drawdown_mode``, ``alignment_source``);
    numbers and arrays pass through (validated by ``validate_params``)."""
    names = _MODE_FIELDS[field]
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"EnvParams.{field} = {value!r}; expected one of {names}")
        return names.index(value)
    return value


def causal_trend(m: MarketData, p, t, window: int):
    """A causal regime estimate in [-1, 1] at decision bar ``t``: ``tanh`` of the close-to-close
    move over the last ``window`` bars in units of its diffusive scale
    (``vol_unit * sqrt(window)``). Uses bars <= t only."""
    move = m.close[p, t] - m.close[p, t - window]
    return jnp.tanh(move / jnp.maximum(m.vol_unit[p, t] * np.sqrt(window), VOL_FLOOR))


def decode_action(action, n_tp: int):
    """``(side, tp_index)`` of a discrete action: side in {0, +1, -1}."""
    a = jnp.asarray(action)
    side = jnp.where(a == 0, 0, jnp.where(a <= n_tp, 1, -1))
    k = jnp.where(side > 0, a - 1, jnp.where(side < 0, a - 1 - n_tp, 0))
    return side, k


def encode_action(side: int, tp_index: int, n_tp: int) -> int:
    """Inverse of ``decode_action`` (host ints)."""
    if side == 0:
        return 0
    if not 0 <= tp_index < n_tp:
        raise ValueError(f"tp_index: expected 0 <= tp_index < {n_tp}, got {tp_index}")
    return 1 + tp_index if side > 0 else 1 + n_tp + tp_index


def _once(flag: jax.Array) -> jax.Array:
    """``flag`` (bool) unchanged, computed once. XLA copies chains of cheap elementwise ops into
    every fusion that reads them (here: every state field), never an "expensive" op such as
    ``sqrt``; ``sqrt(0 or 1) > 0.5`` is exact and makes XLA keep the flag in memory."""
    return jnp.sqrt(flag.astype(jnp.float32)) > 0.5


def _auto_reset(env: TradingEnv, key, state_st, obs_st, done, params):
    """The state and observation after a step: a new episode where ``done`` (gymnax's
    auto-reset), the stepped one elsewhere."""
    obs_re, state_re = env.reset_env(key, params, state_st.lane_next, state_st.lane_stride)
    state = jax.tree.map(lambda x, y: jax.lax.select(done, x, y), state_re, state_st)
    return jax.lax.select(done, obs_re, obs_st), state


def _info(info, state_st, obs_st, terminated, truncated, done):
    # a lane with no fresh path left: this reset went to a random (possibly used) path
    reused = done & (state_st.lane_stride > 0) & (state_st.lane_next < 0)
    return {**info, "terminated": terminated, "truncated": truncated,
            "final_observation": obs_st, "reused_path": reused}


@partial(jax.jit, static_argnums=0)
def _step(env: TradingEnv, key, state, action, params):
    obs_st, state_st, reward, terminated, info = env.step_env(key, state, action, params)
    truncated = env.is_truncated(state_st, params)
    done = _once(jnp.logical_or(terminated, truncated))
    obs, state = _auto_reset(env, key, state_st, obs_st, done, params)
    return obs, state, reward, terminated, truncated, _info(info, state_st, obs_st, terminated,
                                                              truncated, done)


def step_batch(env: TradingEnv, keys, states, actions, params):
    """``vmap(env.step)`` over a batch of envs (same outputs, bit for bit), with the auto-reset
    computed only on steps where some env of the batch is done (``lax.cond``): episodes end on
    a few steps of a rollout, so the batch skips the reset work on the others. Under a further
    ``vmap`` (e.g. over agents) the condition is batched and both branches run, as before."""
    obs_st, state_st, reward, terminated, info = jax.vmap(env.step_env, (0, 0, 0, None))(
        keys, states, actions, params)
    truncated = jax.vmap(env.is_truncated, (0, None))(state_st, params)
    done = _once(jnp.logical_or(terminated, truncated))
    reset = jax.vmap(lambda k, s, o, d: _auto_reset(env, k, s, o, d, params))
    obs, state = jax.lax.cond(jnp.any(done), lambda: reset(keys, state_st, obs_st, done),
                              lambda: (obs_st, state_st))
    return obs, state, reward, terminated, truncated, _info(info, state_st, obs_st, terminated,
                                                              truncated, done)


def default_market(n_paths: int = 8, n_bars: int = 512, seed: int = 0) -> MarketData:
    """A small regime-switching synthetic market (deterministic) for defaults and demos."""
    return synthetic.generate("regime", jax.random.key(seed), n_paths=n_paths, n_bars=n_bars)


__all__ = ["ACCURACY_MODES", "ALIGNMENT_SOURCES", "DRAWDOWN_MODES", "FEATURE_BLOCKS",
           "FEATURE_SETS", "LONG_WINDOW", "REWARD_VOL_MODES", "SCALES",
           "EnvParams", "EnvState", "feature_blocks",
           "TradingEnv", "bonus_accuracy", "canonicalize", "causal_trend", "decode_action",
           "default_market", "encode_action", "make_market_data", "mode_index",
           "no_edge_hit_probability", "step_batch"]
