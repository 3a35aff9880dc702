"""The numpy port used by benchmarks/sb3_compare.py matches TradingEnv step for step."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("gymnasium")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from distributed_checks import tiny_market  # noqa: E402
from np_trading_env import NumpyTradingEnv  # noqa: E402

from tpfl_jax.env.stats import EXIT_REASONS  # noqa: E402
from tpfl_jax.env.trading import TradingEnv  # noqa: E402
from tpfl_jax.market import synthetic  # noqa: E402


def _market(kind):
    if kind == "ohlc":
        return tiny_market(n_paths=3, n_bars=128, seed=3)
    # intrabar paths with frequent jumps: stops crossed by a jump fill at the post-jump price
    return synthetic.generate("merton", jax.random.key(5), n_paths=3, n_bars=128, substeps=8,
                              jump_intensity=0.5, jump_vol=0.03)


@pytest.mark.parametrize("impact,sl_first,kind", [(0.0, True, "ohlc"), (0.5, False, "ohlc"),
                                                  (0.0, True, "jumps")])
def test_numpy_port_matches_trading_env(impact, sl_first, kind):
    env = TradingEnv(window=8, n_tp=3, features="base")      # the observation the port mirrors
    params = env.make_params(_market(kind),
                             tp_mults=(0.5, 1.0, 2.0), max_steps_in_episode=60, max_holding=6,
                             sl_mult=2.0, impact_coef=impact, sl_first=sl_first,
                             tp_reward_weight=1.7)
    port = NumpyTradingEnv.from_jax(env, params)
    step = jax.jit(env.step_env)
    rng = np.random.default_rng(0)
    reasons = set()
    sl_slips = []
    for ep in range(3):
        obs_j, state = env.reset_env(jax.random.key(ep), params)
        obs_n, _ = port.reset(options={"path": int(state.path), "bar": int(state.bar)})
        np.testing.assert_allclose(obs_n, obs_j, rtol=1e-4, atol=1e-4)
        # long/short runs with holds, flips and flats: TP, SL, time, manual and end exits
        runs = rng.choice(7, size=30, p=[0.15, 0.2, 0.1, 0.1, 0.2, 0.15, 0.1])
        actions = np.repeat(runs, rng.integers(1, 9, size=30))[:60]
        for t, a in enumerate(actions):
            obs_j, state, r_j, term_j, info_j = step(jax.random.key(0), state, int(a), params)
            obs_n, r_n, term_n, trunc_n, info_n = port.step(int(a))
            where = f"episode {ep} step {t} action {a}"
            np.testing.assert_allclose(obs_n, obs_j, rtol=1e-4, atol=1e-4, err_msg=where)
            np.testing.assert_allclose(r_n, float(r_j), rtol=1e-4, atol=1e-4, err_msg=where)
            assert term_n == bool(term_j), where
            tr = jax.device_get(info_j["trade"])
            assert info_n["trade"]["closed"] == bool(tr["closed"]), where
            assert info_n["trade"]["exit_reason"] == int(tr["exit_reason"]), where
            np.testing.assert_allclose(info_n["trade"]["pnl"], tr["pnl"], rtol=1e-4, atol=1e-2,
                                       err_msg=where)
            np.testing.assert_allclose(info_n["trade"]["tp_zone_accuracy"],
                                       tr["tp_zone_accuracy"], rtol=1e-4, atol=1e-5,
                                       err_msg=where)
            np.testing.assert_allclose(info_n["equity"], float(info_j["equity"]), rtol=1e-5,
                                       err_msg=where)
            np.testing.assert_allclose(info_n["trade"]["exit_price"], tr["exit_price"],
                                       rtol=1e-5, err_msg=where)
            if tr["closed"]:
                reasons.add(EXIT_REASONS[int(tr["exit_reason"])])
                if EXIT_REASONS[int(tr["exit_reason"])] == "sl":
                    sl_slips.append(abs(float(tr["exit_price"] - tr["sl_price"])))
            if term_n or trunc_n:
                break
    assert {"tp", "sl", "manual"} <= reasons and len(reasons) >= 4, reasons  # + time / end
    if kind == "jumps":   # some stops were crossed by a jump (filled beyond the level)
        assert max(sl_slips) > 1e-3, sl_slips
