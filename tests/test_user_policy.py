"""User weight policies by import path (``docs/policies.md``): the loader's checks (each mistake
refused with one line naming the policy), and a good policy beside the built-ins in one compiled
loop, where the bandit's draws differ across seeds."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from tpfl_jax.agents.ppo import PPOConfig
from tpfl_jax.clm import policies as P
from tpfl_jax.config import Config, PolicySpec, to_objects
from tpfl_jax.distributed import MeshConfig
from tpfl_jax.env.trading import TradingEnv
from tpfl_jax.errors import UserError
from tpfl_jax.loop import (
    LoopConfig,
    WalkForwardMarkets,
    check_inputs,
    make_loop,
    make_loop_policy,
    seed_keys,
    stack_policies,
)
from tpfl_jax.market.types import make_market_data
from tpfl_jax.sweeps import make_loop_sweep

MOD = "user_policies_fixture"          # tests/user_policies_fixture.py (tests/ is on sys.path)
GOOD = f"{MOD}:pnl_step"


def _config(kind: str, **params) -> Config:
    c = Config()
    c.policy.policies = [PolicySpec(name="fixed_1.0", kind="fixed", initial_weight=1.0),
                         PolicySpec(name="mine", kind=kind, params=dict(params))]
    return c


def _refused(kind: str, **params) -> str:
    with pytest.raises(UserError) as err:
        to_objects(_config(kind, **params))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config.policy.policies[1] (mine): "), msg
    return msg


def test_good_user_policy_passes_the_config_checks():
    obj = to_objects(_config(GOOD, user=[0.25], w_min=0.0))
    assert obj.policy_kinds[:2] == ("fixed", GOOD)
    assert obj.policy_params[1] == {"user": [0.25], "w_min": 0.0}
    p = P.make_policy_params(GOOD, user=[0.25])
    assert int(p.policy_id) == P.policy_id(GOOD) >= P.USER_ID_BASE
    assert P.policy_name(int(p.policy_id)) == GOOD
    np.testing.assert_array_equal(p.user, [0.25] + [0.0] * (P.USER_PARAMS - 1))


@pytest.mark.parametrize("name,expected", [
    ("two_args", "signature two_args(stats, state); expected 3 positional parameters "
                 "(stats, state, params)"),
    ("python_if", "does not trace under jax.jit with abstract inputs "
                  "(TracerBoolConversionError"),
    ("float_of_tracer", "does not trace under jax.jit with abstract inputs "
                        "(ConcretizationTypeError"),
    ("vector_weight", "weight is shape (4,) float32 under jax.jit; expected a scalar float32"),
    ("float_count", "state.n_updates is shape () float32 under jax.jit; expected shape () "
                    "int32"),
    ("two_outputs", "returns tuple of 2 under jax.jit; expected a tuple (weight, state, code)"),
    ("NOT_A_FUNCTION", "3.0 is not callable"),
    ("missing", f"module '{MOD}' has no attribute 'missing'"),
])
def test_bad_user_policy_is_refused_naming_it_and_the_fault(name, expected):
    msg = _refused(f"{MOD}:{name}")
    assert f"{MOD}:{name}: {expected}" in msg, msg


def test_unimportable_or_malformed_kinds_and_bad_user_values_are_refused():
    assert "cannot import module 'no_such_module_xyz' (ModuleNotFoundError" in _refused(
        "no_such_module_xyz:policy")
    with pytest.raises(UserError, match=re.escape(
            "config.policy.policies[1].kind = 'seed-table'; expected one of")):
        to_objects(_config("seed-table"))
    assert "user = [1, 2, 3, 4, 5, 6, 7, 8, 9]; expected a list of at most 8 finite numbers" \
        in _refused(GOOD, user=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    with pytest.raises(UserError, match=re.escape("only a user policy ('module:function') "
                                                  "takes user values")):
        to_objects(_config("seed_table", user=[1.0]))


@pytest.mark.slow    # one small loop compile (~15-20 s of CPU)
def test_good_user_policy_runs_in_the_loop_beside_the_builtins():
    """fixed, the bandit and the user policy in one compiled loop (one switch): the user arm
    moves as its rule says on the stats it saw; the bandit's weights differ across seeds."""
    env = TradingEnv()
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (4, 560)), 1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], 1)
    data = make_market_data(open_, np.maximum(open_, close) * 1.003,
                            np.minimum(open_, close) * 0.997, close,
                            volume=np.full(close.shape, 1e6))
    ep = env.make_params(data, max_steps_in_episode=40)
    markets = WalkForwardMarkets(train_bars=200, deploy_bars=80, window=env.window)
    cfg = LoopConfig(num_cycles=4, deploy_envs=8, min_attempts=2, chunk_updates=1,
                     return_window=1, converge=False)
    pc = PPOConfig(num_envs=4, num_steps=16, total_timesteps=64, widths=(8,),
                   update_epochs=1, num_minibatches=1)
    kinds = ("fixed", "bandit", GOOD)
    loop = make_loop(cfg, pc, env, markets, ep, kinds)
    assert loop.kinds == ("bandit", "fixed", GOOD)     # built-ins (POLICY_NAMES order), users
    pols = stack_policies([make_loop_policy("fixed", 1.0),
                           make_loop_policy("bandit", 1.0, bandit_prior_sd=50.0),
                           make_loop_policy(GOOD, 1.0, user=[0.25], w_min=0.0)])
    check_inputs(loop, data, env, ep, pols)
    run = make_loop_sweep(loop, mesh_cfg=MeshConfig(on_indivisible="pad"))
    res = jax.device_get(run(seed_keys(0, 4), pols, data, ep, pc.hparams()))
    np.testing.assert_array_equal(res.weight[0], 1.0)
    st, w, nxt = res.stats, res.weight[2], res.next_weight[2]
    step = np.where(st.pnl_per_trade[2] > 0, 0.25, -0.25) * st.valid[2]
    np.testing.assert_allclose(nxt, np.clip(w + step, 0.0, 2.0), atol=1e-6)
    assert st.valid[2].any() and len(np.unique(nxt)) > 1
    np.testing.assert_array_equal(res.reason[2], np.where(st.valid[2], P.REASON_USER,
                                                          P.REASON_NO_DATA))
    assert len({tuple(row) for row in res.next_weight[1]}) > 1     # per-seed bandit draws
    # a kind the program was not built for is refused before anything runs
    with pytest.raises(ValueError, match="not among the kinds the loop was built for"):
        check_inputs(make_loop(cfg, pc, env, markets, ep, ("fixed",)), data, env, ep, pols)


def test_a_code_outside_reason_names_is_recorded_as_user_bad_code():
    kind = f"{MOD}:bad_code"
    params = P.make_policy_params(kind)
    w, st, code = jax.jit(lambda s, x, p: P.apply_policy(s, x, p, ("fixed", kind)))(
        P.stats_from_feedback(None), P.init_policy_state(1.5), params)
    assert (float(w), int(code)) == (1.5, P.REASON_USER_BAD_CODE)
    assert P.REASON_NAMES[P.REASON_USER_BAD_CODE] == "user_bad_code"
