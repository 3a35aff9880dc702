"""A plain numpy/gymnasium port of ``TradingEnv``, written for the SB3 comparison.

This is what a typical CPU trading-RL stack looks like: one Python object per env, one Python
``step`` per bar. It follows ``tpfl_jax.env.trading.TradingEnv`` rule for rule (fills at the
next open; TP/SL per bar with gaps filled at the open, a stop crossed inside a bar filled at the
first intrabar point beyond it if a jump crossed it (else at the level), and SL first when both
touch; manual exit on flat/opposite; time barrier; ``end`` exit on truncation; fee +
half-spread (+ sqrt impact) per side; reward = ``compute_reward`` terms with the env's
coefficients; ruin termination), so SB3-on-numpy and JAX-PPO-on-TradingEnv train on the same
MDP. ``tests/test_np_trading_env.py`` checks it step for step against ``TradingEnv``. Not
ported: the ``premature`` analytics flag of the trade record (never observed, not in the
reward). Computation is float64 (the JAX env is float32), so values agree to float32 rounding.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from tpfl_jax.env.stats import EXIT_END, EXIT_MANUAL, EXIT_NONE, EXIT_SL, EXIT_TIME, EXIT_TP

_NO_PATH = np.zeros(0)


def _resolve_bar(s: float, entry: float, tp: float, sl: float, o: float, h: float, lo: float,
                 sl_first: bool, check_gap: bool, path: np.ndarray = _NO_PATH,
                 jump: np.ndarray = _NO_PATH) -> tuple[bool, bool, int, float, float, float]:
    """``(exited, gap, reason, price, fav, adv)`` exactly as ``env.exits.resolve_bar``
    (``path``/``jump``: the bar's intrabar points and jump flags)."""
    fav_px = h if s > 0 else lo
    adv_px = lo if s > 0 else h
    gap_sl = check_gap and s * (o - sl) <= 0
    gap_tp = check_gap and not gap_sl and s * (o - tp) >= 0
    tp_touch = s * (fav_px - tp) >= 0
    sl_touch = s * (adv_px - sl) <= 0
    both = tp_touch and sl_touch
    intrabar_sl = sl_touch and (not both or sl_first)
    intrabar_tp = tp_touch and not intrabar_sl
    is_sl = gap_sl or (not gap_tp and intrabar_sl)
    is_tp = gap_tp or (not gap_sl and intrabar_tp)
    price = o if (gap_sl or gap_tp) else (_stop_fill(s, sl, path, jump) if is_sl else tp)
    reason = EXIT_TP if is_tp else (EXIT_SL if is_sl else EXIT_NONE)
    fav_full = max(s * (fav_px - entry), 0.0)
    fav = max(s * (o - entry), 0.0) if is_sl else fav_full
    adv_full = max(s * (entry - adv_px), 0.0)
    adv = (min(adv_full, abs(entry - sl)) if is_tp
           else max(adv_full, s * (entry - price)) if is_sl else adv_full)
    return is_sl or is_tp, gap_sl or gap_tp, reason, price, fav, adv


def _stop_fill(s: float, level: float, path: np.ndarray, jump: np.ndarray) -> float:
    """The first path point at or beyond ``level`` if a jump moved into it, else the level;
    never better than the level (``exits.stop_fill``)."""
    for x, j in zip(path, jump, strict=True):
        if s * (x - level) <= 0:
            if not j:
                return level
            return min(x, level) if s > 0 else max(x, level)
    return level


class NumpyTradingEnv(gym.Env):
    """gymnasium ``Env`` with ``TradingEnv``'s dynamics on host numpy arrays (no auto-reset)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, market: dict[str, np.ndarray], *, window: int = 16,
                 tp_mults: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0), sl_mult: float = 1.0,
                 fee_bps: float = 5.0, half_spread_bps: float = 2.0, impact_coef: float = 0.0,
                 position_size: float = 1.0, initial_equity: float = 10_000.0,
                 ruin_floor: float = 0.5, max_holding: int = 20, sl_first: bool = True,
                 max_steps_in_episode: int = 200, tp_reward_weight: float = 1.0,
                 coefs: dict[str, float] | None = None, accuracy: str = "skill",
                 drawdown_mode: str = "increase", alignment_source: str = "causal",
                 reward_vol: str = "episode", seed: int | None = None):
        super().__init__()
        self.m = {k: np.asarray(v, np.float64) for k, v in market.items()}
        self.window = int(window)
        self.tp_mults = tuple(float(x) for x in tp_mults)
        self.n_tp = len(self.tp_mults)
        self.sl_mult, self.fee_bps, self.half_spread_bps = sl_mult, fee_bps, half_spread_bps
        self.impact_coef, self.position_size = impact_coef, position_size
        self.initial_equity, self.ruin_floor = initial_equity, ruin_floor
        self.max_holding, self.sl_first = int(max_holding), bool(sl_first)
        self.max_steps = int(max_steps_in_episode)
        self.tp_reward_weight = float(tp_reward_weight)
        self.coefs = coefs or {"pnl": 20.0, "drawdown": 1.0, "size": 0.01, "alignment": 0.0,
                               "tp_bonus": 5.0}
        self.accuracy, self.drawdown_mode = accuracy, drawdown_mode
        self.alignment_source, self.reward_vol = alignment_source, reward_vol
        self.n_paths, self.n_bars = self.m["close"].shape
        self.m.setdefault("intrabar", np.zeros((self.n_paths, self.n_bars, 0)))
        self.m.setdefault("intrabar_jump", np.ones(self.m["intrabar"].shape))
        self.action_space = gym.spaces.Discrete(1 + 2 * self.n_tp)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.window + 10,), np.float32)
        self._rng = np.random.default_rng(seed)
        self.path = self.bar = 0
        self._flat(float(initial_equity))

    @classmethod
    def from_jax(cls, env: Any, params: Any, **kwargs: Any) -> NumpyTradingEnv:
        """The port of ``env`` (a ``TradingEnv`` with ``features="base"``, the observation this
        port computes) with every value of ``params`` (host copy)."""
        if env.blocks != ("moves", "position"):
            raise ValueError(f"NumpyTradingEnv ports the 'base' observation; the env has "
                             f"features={env.features!r}: build it with features='base'")
        g = lambda x: float(np.asarray(x))  # noqa: E731
        mk = params.market
        market = {k: np.asarray(getattr(mk, k)) for k in
                  ("open", "high", "low", "close", "volume", "vol_unit", "trend", "intrabar",
                   "intrabar_jump")}
        c = params.coefs
        from tpfl_jax.env.trading import (
            ACCURACY_MODES,
            ALIGNMENT_SOURCES,
            DRAWDOWN_MODES,
            REWARD_VOL_MODES,
        )

        modes = {"accuracy": ACCURACY_MODES[int(params.accuracy)],
                 "drawdown_mode": DRAWDOWN_MODES[int(params.drawdown_mode)],
                 "alignment_source": ALIGNMENT_SOURCES[int(params.alignment_source)],
                 "reward_vol": REWARD_VOL_MODES[int(params.reward_vol)]}
        return cls(market, window=env.window, tp_mults=tuple(np.asarray(params.tp_mults)),
                   sl_mult=g(params.sl_mult), fee_bps=g(params.fee_bps),
                   half_spread_bps=g(params.half_spread_bps), impact_coef=g(params.impact_coef),
                   position_size=g(params.position_size),
                   initial_equity=g(params.initial_equity), ruin_floor=g(params.ruin_floor),
                   max_holding=int(params.max_holding), sl_first=bool(params.sl_first),
                   max_steps_in_episode=int(params.max_steps_in_episode),
                   tp_reward_weight=g(params.tp_reward_weight),
                   coefs={k: g(getattr(c, k)) for k in
                          ("pnl", "drawdown", "size", "alignment", "tp_bonus")},
                   **modes, **kwargs)

    # ------------------------------------------------------------------ state
    def _flat(self, equity: float) -> None:
        self.time = 0
        self.equity = self.peak = equity
        self.max_dd = 0.0
        m, p, t = self.m, self.path, self.bar
        self.episode_vol = m["vol_unit"][p, t] / m["close"][p, t]
        self._clear()

    def _clear(self) -> None:
        self.side, self.units, self.entry, self.tp, self.sl = 0, 0.0, 0.0, 0.0, 0.0
        self.tp_mult = self.risk = self.entry_cost = self.mfe = self.mae = 0.0
        self.bars_held = self.entry_bar = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """New episode at a random path and start bar (``options``: ``path``/``bar`` to fix)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        options = options or {}
        n_starts = max(self.n_bars - self.max_steps - 1 - self.window, 1)
        self.path = int(options.get("path", self._rng.integers(self.n_paths)))
        self.bar = int(options.get("bar", self.window + self._rng.integers(n_starts)))
        self._flat(float(self.initial_equity))
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        m, p, t, w = self.m, self.path, self.bar, self.window
        closes = m["close"][p, t - w: t + 1]
        c = closes[-1]
        vu = m["vol_unit"][p, t]
        s = float(self.side)
        held = self.side != 0
        in_vu = (lambda x: x / vu) if held else (lambda x: 0.0)
        pos = [(m["high"][p, t] - m["low"][p, t]) / vu, (c - closes.mean()) / vu, s,
               self.bars_held / self.max_holding, in_vu(s * (c - self.entry)),
               in_vu(s * (self.tp - c)), in_vu(s * (c - self.sl)), in_vu(self.mfe),
               1.0 - self.equity / self.peak, self.equity / self.initial_equity - 1.0]
        return np.concatenate([np.diff(closes) / vu, pos]).astype(np.float32)

    def _cost(self, notional: float, units: float, bar_vol: float, volume: float) -> float:
        linear = notional * (self.fee_bps + self.half_spread_bps) * 1e-4
        if volume > 0:
            linear += self.impact_coef * bar_vol * math.sqrt(units / max(volume, 1e-12)) * notional
        return linear

    # ------------------------------------------------------------------ step
    def step(self, action: int):
        m, p, t = self.m, self.path, self.bar
        nb = t + 1
        o, h, lo, c = (m[k][p, nb] for k in ("open", "high", "low", "close"))
        c_prev, vu_t, volume = m["close"][p, t], m["vol_unit"][p, t], m["volume"][p, nb]
        bar_vol = vu_t / c_prev
        a = int(action)
        want = 0 if a == 0 else (1 if a <= self.n_tp else -1)
        k = min(max(a - 1 if want > 0 else a - 1 - self.n_tp, 0), self.n_tp - 1)
        held = self.side != 0
        s_old = float(self.side)

        path, jump = m["intrabar"][p, nb], m["intrabar_jump"][p, nb]
        old = (_resolve_bar(s_old, self.entry, self.tp, self.sl, o, h, lo, self.sl_first, True,
                            path, jump)
               if held else None)
        manual = held and not old[1] and want != self.side
        opens = not held and want != 0
        side, entry, tp, sl, units = s_old, self.entry, self.tp, self.sl, self.units
        tpm, entry_cost, risk, entry_bar = self.tp_mult, self.entry_cost, self.risk, self.entry_bar
        mfe, mae, cost_in = self.mfe, self.mae, 0.0
        bar = old
        if opens:
            side = float(want)
            tpm = self.tp_mults[k]
            units = self.equity * self.position_size / o
            entry, tp, sl = o, o + side * tpm * vu_t, o - side * self.sl_mult * vu_t
            cost_in = entry_cost = self._cost(units * o, units, bar_vol, volume)
            risk = units * self.sl_mult * vu_t
            entry_bar, mfe, mae = nb, 0.0, 0.0
            bar = _resolve_bar(side, o, tp, sl, o, h, lo, self.sl_first, False, path,
                               jump)
        live = (held and not manual) or opens
        if live:
            mfe, mae = max(mfe, bar[4]), max(mae, bar[5])
        if manual:
            mfe = max(mfe, max(s_old * (o - entry), 0.0))
            mae = max(mae, max(s_old * (entry - o), 0.0))
        bars_held = 1 if opens else (self.bars_held + 1 if live else 0)

        new_time = self.time + 1
        truncating = new_time >= self.max_steps
        bar_exit = live and bar[0]
        time_exit = live and not bar_exit and bars_held >= self.max_holding
        end_exit = live and not bar_exit and not time_exit and truncating
        closes = manual or bar_exit or time_exit or end_exit
        exit_price = o if manual else (bar[3] if bar_exit else c)
        reason = (EXIT_MANUAL if manual else bar[2] if bar_exit else EXIT_TIME if time_exit
                  else EXIT_END if end_exit else EXIT_NONE)

        in_market = live or manual
        p_start = o if opens else c_prev
        p_end = exit_price if closes else c
        price_pnl = side * units * (p_end - p_start) if in_market else 0.0
        cost_out = self._cost(units * exit_price, units, bar_vol, volume) if closes else 0.0
        step_pnl = price_pnl - cost_in - cost_out
        old_equity = self.equity
        equity = old_equity + step_pnl
        peak = max(self.peak, equity)
        drawdown = 1.0 - equity / peak
        max_dd = max(self.max_dd, drawdown)

        hit = reason == EXIT_TP
        acc = bonus_acc = 0.0
        trade_pnl = 0.0
        if closes:
            trade_pnl = side * units * (exit_price - entry) - entry_cost - cost_out
            acc = 1.0 if hit else min(max(mfe / max(abs(tp - entry), 1e-12), 0.0), 1.0)
            p0 = self.sl_mult / (tpm + self.sl_mult)        # no-edge hit probability
            bonus_acc = {"mfe_ratio": acc, "hit": float(hit),
                         "skill": float(hit) - p0}[self.accuracy]
        still_open = live and not closes
        cf = self.coefs
        vol = max(bar_vol if self.reward_vol == "bar" else self.episode_vol, 1e-8)
        dd = drawdown if self.drawdown_mode == "level" else (max_dd - self.max_dd) / vol
        if self.alignment_source == "hidden_label":
            signal = m["trend"][p, nb]
        else:
            w = self.window
            move = m["close"][p, t] - m["close"][p, t - w]
            signal = math.tanh(move / max(vu_t * math.sqrt(w), 1e-8))
        terms = {
            "pnl": cf["pnl"] * (step_pnl / old_equity) / vol,
            "drawdown_penalty": -cf["drawdown"] * abs(dd),
            "size_penalty": -cf["size"] * (self.position_size if still_open else 0.0),
            "alignment": cf["alignment"] * (side * signal if in_market else 0.0),
            "tp_bonus": (bonus_acc * cf["tp_bonus"] * self.tp_reward_weight
                         if bonus_acc > 0 else 0.0),
        }
        reward = (terms["pnl"] + terms["drawdown_penalty"] + terms["size_penalty"]
                  + terms["alignment"] + terms["tp_bonus"])

        self.time, self.bar, self.equity, self.peak = new_time, nb, equity, peak
        self.max_dd = max_dd
        if still_open:
            self.side, self.units, self.entry, self.tp, self.sl = int(side), units, entry, tp, sl
            self.tp_mult, self.risk, self.entry_cost = tpm, risk, entry_cost
            self.mfe, self.mae, self.bars_held, self.entry_bar = mfe, mae, bars_held, entry_bar
        else:
            self._clear()
        terminated = equity < self.ruin_floor * self.initial_equity
        truncated = new_time >= self.max_steps
        trade = {"closed": closes, "exit_reason": reason if closes else EXIT_NONE,
                 "pnl": trade_pnl, "r_realised": trade_pnl / max(risk, 1e-12) if closes else 0.0,
                 "hit": closes and hit, "tp_zone_accuracy": acc,
                 "exit_price": exit_price if closes else 0.0}
        info = {"trade": trade, "reward_terms": terms, "equity": equity}
        return self._obs(), float(reward), bool(terminated), bool(truncated), info
