"""Hostile inputs: every bad input gets a clear error (type asserted, message naming the field,
row or path) before any compile, and nothing is written outside the run.

One named case per class of issue 13 (silent wrong results, security and integrity, unclear
errors, the data path), plus more. Kill-and-resume cases: ``test_resume_integrity.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from tpfl_jax import guard, resources, rundir
from tpfl_jax.app import CONFIG_DIR, run_clm, run_loop, run_train
from tpfl_jax.config import to_container, to_objects
from tpfl_jax.config_checks import ConfigError, check_config
from tpfl_jax.errors import UserError
from tpfl_jax.guard import DivergenceError
from tpfl_jax.pipelines.markets import build_market

ROOT = Path(CONFIG_DIR).parent


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _csv(path: Path, n: int, *, start="2024-01-01", freq="h", time_col="timestamp",
         sep=",", reverse=False) -> Path:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * 1.002
    low = np.minimum(open_, close) * 0.998
    ts = pd.date_range(start, periods=n, freq=freq)
    df = pd.DataFrame({time_col: ts, "open": open_, "high": high, "low": low, "close": close,
                       "volume": 1.0})
    if reverse:
        df = df.iloc[::-1]
    df.to_csv(path, index=False, sep=sep)
    return path


def _config_error(overrides, *names, fn=to_objects):
    with pytest.raises(ConfigError) as e:
        fn(_compose(overrides))
    for n in names:
        assert n in str(e.value), (n, str(e.value))
    return str(e.value)


# =========================================================================== silent wrong results
def test_train_nan_lr_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.ppo\.lr = nan; expected a finite number > 0"):
        run_train(_compose(["experiment=tiny", "ppo.lr=nan"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()          # refused before anything was written


def test_train_nan_weight_is_refused_naming_the_index(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.train\.weights\[0\] = nan"):
        run_train(_compose(["experiment=tiny", "train.weights=[nan,1.0]"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_train_on_a_short_csv_refuses_instead_of_moving_the_eval_window(tmp_path):
    # 500 bars < train_bars 400 + deploy_bars 200: the held-out window would start at bar 284
    # (inside the training bars) if the slice were clamped
    data = _csv(tmp_path / "bars.csv", 500)
    cfg = _compose(["experiment=tiny", "market=csv", f"market.path={data}",
                    "train.weights=[1.0]"])
    with pytest.raises(ValueError) as e:
        run_train(cfg, tmp_path / "run")
    msg = str(e.value)
    assert "config.market" in msg and "500 bars" in msg and "train_bars" in msg
    assert str(data) in msg


def test_train_csv_shorter_than_one_episode_names_the_sizes(tmp_path):
    data = _csv(tmp_path / "bars.csv", 30)
    cfg = _compose(["experiment=tiny", "market=csv", f"market.path={data}",
                    "market.train_bars=20", "market.deploy_bars=10", "train.weights=[1.0]"])
    with pytest.raises(ValueError, match=r"n_bars=30 is too short; need >= window \(16\) "
                                         r"\+ max_steps_in_episode"):
        run_train(cfg, tmp_path / "run")


def test_divergence_guard_ignores_updates_a_converged_cycle_did_not_run():
    # the loop's cycles stop at their criterion: NaN placeholders after it are not divergence
    u = 8
    m = {"finite": np.ones((2, u)), "loss": np.full((2, u), 0.5),
         "approx_kl": np.full((2, u), 0.01), "entropy": np.full((2, u), 2.0)}
    ran = np.arange(u) < np.array([[4], [8]])          # row 0 stopped after 4 updates
    for k in ("loss", "approx_kl", "entropy"):
        m[k][0, 4:] = np.nan
    with pytest.raises(DivergenceError, match=r"seed 0, update 5: loss = nan"):
        # without the mask
        guard.check_divergence(m, guard.GuardSection(), lambda i: f"seed {i[0]}")
    guard.check_divergence(m, guard.GuardSection(), lambda i: f"seed {i[0]}", ran=ran)
    m["loss"][0, 3] = np.nan                            # a real NaN inside the run updates
    with pytest.raises(DivergenceError, match=r"seed 0, update 4: loss = nan"):
        guard.check_divergence(m, guard.GuardSection(), lambda i: f"seed {i[0]}", ran=ran)
    m["loss"][0, 3] = 0.5
    m["entropy"][0, 3] = 0.0                            # collapse on row 0's last run update
    with pytest.raises(DivergenceError, match=r"seed 0, update 4: entropy = 0 < guard"):
        guard.check_divergence(m, guard.GuardSection(), lambda i: f"seed {i[0]}", ran=ran)


def test_divergence_is_detected_naming_update_and_metric():
    u = 5
    ok = {"finite": np.ones((2, u)), "loss": np.full((2, u), 0.5),
          "approx_kl": np.full((2, u), 0.01), "entropy": np.full((2, u), 2.0)}
    guard.check_divergence(ok, guard.GuardSection(), lambda i: f"seed {i[0]}")     # healthy: passes
    bad = {k: v.copy() for k, v in ok.items()}
    bad["loss"][1, 3] = 3e12
    with pytest.raises(DivergenceError, match=r"seed 1, update 4: loss = 3e\+12 \(\|loss\| > "
                                              r"guard\.max_abs_loss"):
        guard.check_divergence(bad, guard.GuardSection(), lambda i: f"seed {i[0]}")
    bad = {k: v.copy() for k, v in ok.items()}
    bad["approx_kl"][0, 2] = 4e4
    with pytest.raises(DivergenceError, match=r"seed 0, update 3: approx_kl = 4e\+04"):
        guard.check_divergence(bad, guard.GuardSection(), lambda i: f"seed {i[0]}")
    bad = {k: v.copy() for k, v in ok.items()}
    bad["entropy"][1, -1] = 0.0
    with pytest.raises(DivergenceError, match=r"entropy = 0 < guard\.min_entropy"):
        guard.check_divergence(bad, guard.GuardSection(), lambda i: f"seed {i[0]}")
    # a limit set to null is not checked
    guard.check_divergence(bad, guard.GuardSection(min_entropy=None), lambda i: "x")


def test_huge_lr_diverges_and_nothing_is_checkpointed(tmp_path):
    """``ppo.lr=1e6`` through the runner ``tpfl-train`` uses: DivergenceError, no checkpoint."""
    import jax
    import jax.numpy as jnp

    from tpfl_jax.agents.ppo import PPOConfig
    from tpfl_jax.agents.runner import NonFiniteError, Runner
    from tpfl_jax.env.trading import TradingEnv
    from tpfl_jax.market.synthetic import generate

    env = TradingEnv(window=8)
    ep = env.make_params(generate("regime", jax.random.key(0), 4, 80), max_steps_in_episode=20)
    cfg = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 3, update_epochs=2,
                    num_minibatches=2, widths=(16,), lr=1e6)
    r = Runner(cfg, env, ep.replace(tp_reward_weight=jnp.float32(1.0)), tmp_path,
               chunk_updates=3, checkpoint_every=3, progress=False, guard=guard.GuardSection())
    with pytest.raises((DivergenceError, NonFiniteError)) as e:
        r.run()
    assert "update" in str(e.value)
    assert r.manager.latest_step() is None
    r.close()


@pytest.mark.parametrize("value", ["nan", "-5", "1e38", "0.5"])
def test_env_tp_reward_weight_is_never_silently_ignored(value):
    msg = _config_error(["experiment=tiny", f"env.tp_reward_weight={value}"],
                        "config.env.tp_reward_weight")
    if value in ("1e38", "0.5"):          # finite but ignored by every app: names the real keys
        assert "train.weights" in msg and "policy.policies[i].initial_weight" in msg
        assert "clm.policy" in msg


def test_float_hyperparameters_have_ranges_all_reported_at_once():
    msg = _config_error(["ppo.update_epochs=0", "ppo.gamma=5", "ppo.clip_eps=-1",
                         "ppo.gae_lambda=1.5", "ppo.ent_coef=-0.1", "ppo.max_grad_norm=0"],
                        "config.ppo.update_epochs", "config.ppo.gamma", "config.ppo.clip_eps",
                        "config.ppo.gae_lambda", "config.ppo.ent_coef",
                        "config.ppo.max_grad_norm")
    assert msg.startswith("config: 6 bad values")


@pytest.mark.parametrize("scale,word", [(1e300, "overflows"), (1e-300, "underflows")])
def test_prices_outside_float32_are_refused_naming_the_row(tmp_path, scale, word):
    from tpfl_jax.market.data import read_ohlcv

    path = tmp_path / "bars.csv"
    df = pd.read_csv(_csv(tmp_path / "ok.csv", 5))
    for c in ("open", "high", "low", "close"):
        df[c] = df[c] * scale
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"{path}: row 0 \(file line 2, .*open = .* {word} "
                                         "float32"):
        read_ohlcv(path)


# =========================================================================== security, integrity
def test_symbol_cannot_place_a_checkpoint_outside_the_registry(tmp_path):
    from tpfl_jax.clm.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "run" / "tpfl.db")
    for sym in ("../../escaped", "../../../../tmp/x", "/abs/path", "..", "a/b\\c"):
        v = reg.register("rl_v3", sym, {"w": 1.0}, {"m": 1.0})
        path = Path(reg.save_checkpoint(v.version_id, {"w": np.ones(2)}))
        # one folder per database file under checkpoints/ (two registries never share one)
        assert path.parent == (tmp_path / "run" / "checkpoints" / "tpfl.db").resolve(), path
        assert reg.load_checkpoint(v.version_id, {"w": np.zeros(2)})["w"].tolist() == [1, 1]
    # distinct symbols never share a directory after sanitising
    names = {rundir.safe_name(s) for s in ("a/b", "a_b", "a\\b", "a:b")}
    assert len(names) == 4
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    reg.close()


def test_clm_db_path_must_stay_in_the_run_dir(tmp_path):
    cfg = _compose(["experiment=tiny", "clm.db=../../outside.db"])
    with pytest.raises(ConfigError, match=r"config\.clm\.db = '\.\./\.\./outside\.db' resolves "
                                          r"to .*outside"):
        run_clm(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_registry_refuses_non_finite_params_and_metrics(tmp_path):
    from tpfl_jax.clm.registry import ModelRegistry

    reg = ModelRegistry(":memory:", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"register: params\['w'\] = nan is not finite"):
        reg.register("rl_v3", "X", {"w": math.nan}, {"m": 1.0})
    with pytest.raises(ValueError, match=r"register: metrics\['sharpe'\] = inf is not finite"):
        reg.register("rl_v3", "X", {"w": 1.0}, {"sharpe": math.inf})
    with pytest.raises(ValueError, match=r"params\['nested'\]\['a'\]\[1\]"):
        reg.register("rl_v3", "X", {"nested": {"a": [1.0, -math.inf]}}, {})
    v = reg.register("rl_v3", "X", {"w": 1.0}, {"final_episode_return": None})   # JSON null
    with pytest.raises(ValueError, match=r"save_checkpoint: version 1: params\['w'\]"):
        reg.save_checkpoint(v.version_id, {"w": np.array([1.0, np.nan])})
    assert reg.list_versions()[0].metrics == {"final_episode_return": None}
    reg.close()


def test_registry_detects_a_damaged_checkpoint(tmp_path):
    from tpfl_jax.clm.registry import ModelRegistry

    reg = ModelRegistry(":memory:", checkpoint_dir=tmp_path)
    v = reg.register("rl_v3", "X", {"w": 1.0}, {})
    path = Path(reg.save_checkpoint(v.version_id, {"w": np.arange(64, dtype=np.float32)}))
    for f in path.rglob("_METADATA"):
        f.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"checkpoint of version 1 at {path} is damaged"):
        reg.load_checkpoint(v.version_id, {"w": np.zeros(64, np.float32)})
    reg.close()


# =========================================================================== unclear errors: data
@pytest.mark.parametrize("case", ["empty", "header_only", "binary", "missing", "directory",
                                  "semicolons"])
def test_unreadable_files_name_the_path(tmp_path, case):
    from tpfl_jax.market.data import read_ohlcv

    path = tmp_path / "bars.csv"
    expect = {"empty": "the file is empty", "header_only": "no data rows",
              "binary": "not a text CSV file", "missing": "no such file",
              "directory": "no such file", "semicolons": "looks ';'-separated"}[case]
    if case == "empty":
        path.write_text("")
    elif case == "header_only":
        path.write_text("timestamp,open,high,low,close,volume\n")
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00\x81" * 64)
    elif case == "directory":
        path.mkdir()
    elif case == "semicolons":
        _csv(path, 5, sep=";")
    with pytest.raises(ValueError) as e:
        read_ohlcv(path)
    assert str(e.value).startswith(str(path)) and expect in str(e.value), str(e.value)


def test_header_only_file_through_the_cli_names_the_file(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text("timestamp,open,high,low,close,volume\n")
    c = to_container(_compose(["experiment=tiny", "market=csv", f"market.path={path}"]))
    obj = to_objects(c)
    with pytest.raises(ValueError, match=rf"{path}: no data rows"):
        build_market(c, obj.env, obj.env_kwargs)


def test_mixed_utc_offsets_become_utc_and_naive_with_aware_names_both_rows(tmp_path):
    from tpfl_jax.market.data import read_ohlcv

    body = "1,2,0.5,1,1\n"
    ok = tmp_path / "dst.csv"          # a DST change: +01:00 then +02:00 is one time axis
    ok.write_text("timestamp,open,high,low,close,volume\n2024-03-31 01:00+01:00," + body
                  + "2024-03-31 03:00+02:00," + body)
    idx = read_ohlcv(ok).index
    assert str(idx.tz) == "UTC" and (idx[1] - idx[0]) == pd.Timedelta("1h")
    bad = tmp_path / "mixed.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n2024-01-01 00:00," + body
                   + "2024-01-01 01:00+02:00," + body)
    with pytest.raises(ValueError, match=r"row 1 \(file line 3.*'2024-01-01 01:00\+02:00' is "
                                         r"with a UTC offset but row 0 \('2024-01-01 00:00'\) "
                                         "is naive"):
        read_ohlcv(bad)


def test_unparseable_timestamp_names_row_and_value(tmp_path):
    from tpfl_jax.market.data import read_ohlcv

    path = tmp_path / "bars.csv"
    path.write_text("timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,1,1\n"
                    "yesterday-ish,1,2,0.5,1,1\n")
    with pytest.raises(ValueError, match=r"row 1 \(file line 3.*'yesterday-ish'"):
        read_ohlcv(path)


# =========================================================================== unclear errors: config
@pytest.mark.parametrize("key", ["num_envs", "num_steps", "num_minibatches"])
def test_zero_ppo_sizes_name_the_key(key):
    _config_error([f"ppo.{key}=0"], f"config.ppo.{key} = 0; expected an integer >= 1")


def test_negative_num_envs_blames_num_envs_not_total_timesteps():
    msg = _config_error(["ppo.num_envs=-4"], "config.ppo.num_envs = -4")
    assert "total_timesteps" not in msg


@pytest.mark.parametrize("override,key", [
    ("train.chunk_updates=0", "config.train.chunk_updates"),
    ("train.eval_episodes=0", "config.train.eval_episodes"),
    ("train.weights=[]", "config.train.weights"),
    ("train.num_seeds=0", "config.train.num_seeds"),
    ("train.weights=[1.0,1.0]", "config.train.weights"),
])
def test_train_section_is_checked_before_training(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', chr(92) + '.')}"):
        run_train(_compose(["experiment=tiny", override]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_total_timesteps_overflow_names_the_key():
    _config_error(["experiment=tiny", "ppo.total_timesteps=1000000000000"],
                  "config.ppo.total_timesteps", "updates")


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_number(tmp_path):
    with pytest.raises(ConfigError) as e:
        run_loop(_compose(["experiment=tiny", "ppo.num_envs=10000000",
                           "ppo.total_timesteps=640000000"]), tmp_path / "run")
    msg = str(e.value)
    assert "tpfl-loop: needs at least" in msg and "GiB per cpu device" in msg
    assert "ppo.num_envs" in msg and not (tmp_path / "run").exists()
    # the limit is a config key
    with pytest.raises(ConfigError, match=r"tpfl-train: needs at least .* but 1e-06 GiB "
                                          r"\(guard\.max_memory_gb\) is available"):
        run_train(_compose(["experiment=tiny", "guard.max_memory_gb=0.000001"]),
                  tmp_path / "r2")
    assert not (tmp_path / "r2").exists()


def test_memory_estimate_grows_with_the_batch_and_agents():
    from tpfl_jax.agents.ppo import PPOConfig

    small = resources.estimate_footprint(PPOConfig(num_envs=4, num_steps=16), 26, 1)
    big = resources.estimate_footprint(PPOConfig(num_envs=4000, num_steps=16), 26, 1)
    many = resources.estimate_footprint(PPOConfig(num_envs=4, num_steps=16), 26, 10)
    wide = resources.estimate_footprint(
        PPOConfig(num_envs=4, num_steps=16, widths=(1000, 1000)), 26, 1)
    assert big["rollout_and_batch"] > 900 * small["rollout_and_batch"]
    assert many["total"] == 10 * small["total"]
    # parameters, gradients and Adam moments (4 bytes each): two 1000x1000-layer networks
    # hold ~2M parameters
    assert wide["network_and_optimizer"] > 2e6 * 4 * 4 > 100 * small["network_and_optimizer"]


def test_market_train_paths_zero_names_the_key():
    _config_error(["market.train_paths=0"], "config.market.train_paths = 0")


def test_clm_trigger_names_the_key_and_the_valid_values(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.clm\.trigger = 'foo'; expected one of "
                                          r"\['drift', 'manual', 'performance', 'periodic'\]"):
        run_clm(_compose(["experiment=tiny", "clm.trigger=foo"]), tmp_path / "run")


def test_misspelt_keys_added_with_plus_are_rejected():
    from tpfl_jax.config import to_mesh_config

    with pytest.raises(ConfigError, match=r"config\.env\.fee_bsp: unknown key \(did you mean "
                                          r"config\.env\.fee_bps\?\)"):
        to_objects(_compose(["+env.fee_bsp=3"]))
    with pytest.raises(ConfigError, match=r"config\.market\.trian_bars: .*train_bars"):
        to_mesh_config(_compose(["+market.trian_bars=5"]))      # every app's first conversion
    with pytest.raises(ConfigError, match=r"config\.policy\.policies\[0\]\.wieght"):
        to_objects(_compose(["policy=seed_vs_fixed", "+policy.policies.0.wieght=2"]))
    # open dicts stay open
    to_objects(_compose(["+market.params.vol=0.02", "market=gbm"]))


def test_guard_values_are_checked():
    _config_error(["guard.max_approx_kl=-1"], "config.guard.max_approx_kl")


# =========================================================================== tracker
def test_tracker_out_of_range_integer_and_time_are_value_errors_naming_the_field():
    from tpfl_jax.tracking.tracker import TPPerformanceTracker

    t = TPPerformanceTracker(":memory:")
    base = dict(side=1, entry_price=1.0, exit_price=1.1, exit_reason="tp", r_realised=1.0,
                tp_price=1.1)
    with pytest.raises(ValueError, match=r"field 'entry_bar' = 1180591620717411303424"):
        t.record_trade("S", "X", entry_bar=2**70, **base)
    with pytest.raises(ValueError, match=r"field 'entry_time' = '1500-01-01'; expected .*1677"):
        t.record_trade("S", "X", entry_time="1500-01-01", **base)
    assert t.count() == 0
    t.close()


def test_record_trades_dataframe_treats_pandas_missing_values_as_absent():
    from tpfl_jax.tracking.tracker import TPPerformanceTracker

    rows = [dict(side=1, entry_price=1.0, exit_price=1.1, exit_reason="tp", r_realised=1.0,
                 tp_price=1.1, mfe=0.2),
            dict(side=-1, entry_price=1.0, exit_price=1.1, exit_reason="sl", r_realised=-1.0)]
    t = TPPerformanceTracker(":memory:")
    assert t.record_trades(rows, strategy_id="S", symbol="X") == 2          # dicts: keys absent
    assert t.record_trades(pd.DataFrame(rows), strategy_id="S", symbol="X") == 2   # NaN cells
    df = t.trades("S")
    assert df["mfe"].isna().tolist() == [False, True, False, True]
    bad = pd.DataFrame(rows)
    bad.loc[1, "r_realised"] = np.nan                 # a required field stays required
    with pytest.raises(ValueError, match=r"row 1 .*field 'r_realised' = None; .*required"):
        t.record_trades(bad, strategy_id="S", symbol="X")
    t.close()


def test_foreign_table_of_the_same_name_names_file_and_table(tmp_path):
    from tpfl_jax.tracking.tracker import TPPerformanceTracker

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE tp_trades (ticket INTEGER, price REAL)")
    with pytest.raises(ValueError, match=rf"{db}: table 'tp_trades' exists with columns "
                                         r"\['ticket', 'price'\]"):
        TPPerformanceTracker(db)


def test_tracker_in_an_unusable_directory_names_the_path(tmp_path):
    from tpfl_jax.tracking.tracker import TPPerformanceTracker

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=rf"{blocker}/sub/t\.db: cannot create the database"):
        TPPerformanceTracker(blocker / "sub" / "t.db")


_RO_SCRIPT = """
import os, sys
from tpfl_jax.tracking.tracker import TPPerformanceTracker
d = sys.argv[1]
t = TPPerformanceTracker(os.path.join(d, "t.db"))
t.record_trade("S", "X", side=1, entry_price=1.0, exit_price=1.1, exit_reason="tp",
               r_realised=1.0, tp_price=1.1)
t.close()
os.chmod(d, 0o555)
t = TPPerformanceTracker(os.path.join(d, "t.db"))
assert t.read_only and t.count() == 1 and len(t.trades("S")) == 1
try:
    t.record_trade("S", "X", side=1, entry_price=1.0, exit_price=1.1, exit_reason="tp",
                   r_realised=1.0, tp_price=1.1)
except ValueError as e:
    assert "opened read-only" in str(e) and d in str(e), e
else:
    raise AssertionError("write to a read-only database succeeded")
try:
    TPPerformanceTracker(os.path.join(d, "new.db"))
except ValueError as e:
    assert "new.db: cannot create the database" in str(e), e
else:
    raise AssertionError("created a database in a read-only directory")
print("OK")
"""


def test_existing_database_in_a_read_only_directory_opens_for_reading(tmp_path):
    import tempfile

    cmd = [sys.executable, "-c", _RO_SCRIPT]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if os.geteuid() == 0:         # root ignores directory permissions: run as nobody
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        d = Path(tempfile.mkdtemp(prefix="tpfl_ro_"))       # reachable by nobody
        os.chown(d, 65534, 65534)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    else:
        d = tmp_path / "ro"
        d.mkdir()
    try:
        proc = subprocess.run([*cmd, str(d)], capture_output=True, text=True, env=env,
                              timeout=120)
    finally:
        os.chmod(d, 0o755)
        if os.geteuid() == 0:
            shutil.rmtree(d, ignore_errors=True)
    if proc.returncode and os.geteuid() == 0 and "PermissionError" in proc.stderr:
        pytest.skip(f"cannot run the interpreter as nobody: {proc.stderr[-200:]}")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


# =========================================================================== report
def test_report_on_a_malformed_summary_names_file_and_columns(tmp_path):
    from tpfl_jax.errors import UserError
    from tpfl_jax.report import report_dir

    (tmp_path / "summary.csv").write_text("name,pnl\nx,1\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'summary.csv'}: missing column\(s\) "
                                         r"\['policy', 'final_pnl', 'oos_pnl'\]"):
        report_dir(tmp_path)
    with pytest.raises(UserError, match="nope is not a directory; expected a run or multirun"):
        report_dir(tmp_path / "nope")


# =========================================================================== data path (CLI)
def test_cli_maps_separator_time_column_and_column_names(tmp_path):
    path = tmp_path / "bars.csv"
    df = pd.read_csv(_csv(tmp_path / "ok.csv", 200, time_col="When"))
    df = df.rename(columns={"open": "O", "high": "H", "low": "L", "close": "C"}).drop(
        columns="volume")
    df.to_csv(path, index=False, sep=";")
    c = to_container(_compose(["experiment=tiny", "market=csv", f"market.path={path}",
                               "market.sep=';'", "market.timestamp=When",
                               "market.columns.open=O", "market.columns.high=H",
                               "market.columns.low=L", "market.columns.close=C",
                               "market.no_volume=true"]))
    obj = to_objects(c)
    _, source, ep = build_market(c, obj.env, obj.env_kwargs)
    assert source.n_bars == 200
    np.testing.assert_allclose(np.asarray(source.close[0]), df["C"].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", ["Date", "Datetime", "time", "TIMESTAMP"])
def test_usual_time_column_names_are_recognised(tmp_path, name):
    from tpfl_jax.market.data import read_ohlcv

    idx = read_ohlcv(_csv(tmp_path / "bars.csv", 5, time_col=name)).index
    assert idx[0] == pd.Timestamp("2024-01-01")


def test_newest_first_file_is_refused_naming_the_row(tmp_path):
    from tpfl_jax.market.data import read_ohlcv

    path = _csv(tmp_path / "bars.csv", 5, time_col="Date", reverse=True)
    with pytest.raises(ValueError, match=rf"{path}: row 1 \(file line 3, .*not after the "
                                         r"previous row's .*strictly increasing"):
        read_ohlcv(path)


def test_file_without_a_time_column_warns(tmp_path):
    from tpfl_jax.market.data import read_ohlcv

    path = tmp_path / "bars.csv"
    pd.read_csv(_csv(tmp_path / "ok.csv", 5)).drop(columns="timestamp").to_csv(path,
                                                                              index=False)
    with pytest.warns(UserWarning, match=r"no time column .*market\.timestamp=NAME"):
        read_ohlcv(path)


def test_host_decision_matches_the_seed_on_a_float64_tracker_mean(tmp_path):
    """14/20 TP hits, every realised R = 1.2: SQLite's mean R is 1.1999999999999997 < 1.2, so
    the seed's table says 'hit ok, R low' -> 1.2 (float32 would say 'optimal' -> 1.0)."""
    from tpfl_jax.clm.policies import decide_weight
    from tpfl_jax.tracking.tracker import TPPerformanceTracker

    t = TPPerformanceTracker(":memory:")
    for i in range(20):
        hit = i < 14
        t.record_trade("S", "X", side=1, entry_price=100.0, exit_price=101.2 if hit else 100.5,
                       exit_reason="tp" if hit else "manual", r_realised=1.2, tp_price=101.2)
    fb = t.get_strategy_tp_feedback("S", "X", r_source="actual")
    assert fb["avg_r_multiple"] < 1.2 and fb["tp_hit_rate"] == 0.7

    def seed(hit, r):                  # the seed's table, in Python floats
        if hit < 0.45 and r >= 1.2:
            return 2.0
        if hit > 0.70 and r < 1.2:
            return 0.5
        if 0.45 <= hit <= 0.70 and r < 1.2:
            return 1.2
        return 1.0

    assert decide_weight(fb).weight == seed(fb["tp_hit_rate"], fb["avg_r_multiple"]) == 1.2
    # on the boundaries exactly the seed's answers too
    for hit, r in [(0.45, 1.2), (0.7, 1.2), (0.45, 1.1999999999999997), (0.7000000000000001, 1.0)]:
        fb = {"tp_hit_rate": hit, "avg_r_multiple": r, "total_attempts": 100}
        assert decide_weight(fb).weight == seed(hit, r), (hit, r)
    t.close()


# =========================================================================== environment
def test_compile_cache_is_user_level_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv(rundir.COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert rundir.compile_cache_dir() == tmp_path / "xdg" / "tpfl_jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert rundir.compile_cache_dir() == Path.home() / ".cache" / "tpfl_jax" / "jax"
    monkeypatch.setenv(rundir.COMPILE_CACHE_ENV, str(tmp_path / "env"))
    assert rundir.compile_cache_dir() == tmp_path / "env"
    assert rundir.compile_cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"    # config key wins


def test_jax_backend_info_lines_are_quiet():
    from tpfl_jax.app import quiet_jax_logs

    quiet_jax_logs()
    assert not logging.getLogger("jax._src.xla_bridge").isEnabledFor(logging.INFO)
    assert logging.getLogger("jax._src.xla_bridge").isEnabledFor(logging.WARNING)


@pytest.mark.slow
def test_clm_runs_the_tiny_preset(tmp_path):
    """Every documented preset works with every command: ``tpfl-clm experiment=tiny`` (its PPO
    budget ends before an episode does; the training return is recorded as null)."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tpfl_jax.app", "clm", "experiment=tiny", f"hydra.run.dir={out}",
         "progress=false"], cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"decision"' in proc.stdout
    assert "Unable to initialize backend" not in proc.stdout + proc.stderr
    assert "Unable to initialize backend" not in (out / "app.log").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(pd.read_parquet(out / "trades.parquet")) > 0


@pytest.mark.parametrize("override,match", [
    ("seed=99999999999999999999", r"config\.seed = 99999999999999999999; expected an integer"),
    ("seed=-1", r"config\.seed = -1"),
    ("policy.policies=[{name: '', kind: fixed}]", r"policies\[0\]\.name = ''; expected a "
                                                   r"non-empty name"),
])
def test_values_that_broke_later_are_refused_up_front(override, match):
    # a seed beyond the typed key's 64 bits crashed in jax.random.key; an arm named '' ran and
    # was silently dropped from the report
    with pytest.raises(UserError, match=match):
        to_objects(_compose(["experiment=tiny", override]))


def _numeric_leaves(value, key=""):
    """(key, value) of every number in a config, walking the schema's dataclasses."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _numeric_leaves(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numeric_leaves(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numeric_leaves(v, f"{key}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


def _set_leaf(cfg, key, new):
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    obj = cfg
    for part in parts[:-1]:
        obj = obj[int(part[1:-1])] if part.startswith("[") else (
            obj[part] if isinstance(obj, dict) else getattr(obj, part))
    last = parts[-1]
    if last.startswith("["):
        obj[int(last[1:-1])] = new
    elif isinstance(obj, dict):
        obj[last] = new
    else:
        setattr(obj, last, new)


def test_every_numeric_key_of_the_schema_is_refused_out_of_range_naming_it():
    # the schema walk: a new config key cannot skip the check (NaN for a float, a value beyond
    # 64 bits for an int), and the error names the key
    base = to_container(_compose(["experiment=study", "policy=all"]))
    leaves = list(_numeric_leaves(base))
    assert len(leaves) > 80 and any(k == "seed" for k, _ in leaves)
    for key, value in leaves:
        c = copy.deepcopy(base)
        _set_leaf(c, key, float("nan") if isinstance(value, float) else 2**70)
        with pytest.raises(ConfigError, match=re.escape(f"config.{key} = ")):
            check_config(c)


@pytest.mark.parametrize("cols,dup", [
    (["timestamp", "open", "high", "low", "close", "Close"], ["close", "Close"]),
    (["timestamp", "Open", "OPEN", "high", "low", "close"], ["Open", "OPEN"])])
def test_columns_equal_up_to_case_are_refused_naming_them(tmp_path, cols, dup):
    # 'Close' beside 'close' was resolved to the exact name silently: which is the price is a
    # guess, so the file is refused naming both columns
    from tpfl_jax.market.data import read_ohlcv

    n = 40
    rng = np.random.default_rng(0)
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    frame = pd.DataFrame({c: close for c in cols})
    frame[cols[0]] = pd.date_range("2024-01-01", periods=n, freq="h")
    frame = frame.assign(**{c: close * (1.01 if c.lower() == "high" else 0.99)
                            for c in cols if c.lower() in ("high", "low")})
    path = tmp_path / "bars.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=re.escape(str(dup))):
        read_ohlcv(str(path))
