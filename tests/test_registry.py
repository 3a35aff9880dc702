"""Model registry: versions, lineage, promotion, rollback, jobs and orbax checkpoints."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.clm.models import ModelStatus, ModelType, TrainingJob, TriggerReason
from tpfl_jax.clm.registry import ModelRegistry
from tpfl_jax.tracking.tracker import TPPerformanceTracker


@pytest.fixture
def reg(tmp_path):
    with ModelRegistry(":memory:", checkpoint_dir=tmp_path / "ckpt") as r:
        yield r


def _reg(reg, symbol="BTC", sharpe=1.0, **kw):
    return reg.register(ModelType.RL_V3, symbol, {"tp_reward_weight": 2.0, "lr": np.float32(3e-4)},
                        {"sharpe_ratio": sharpe}, trigger_reason=TriggerReason.PERIODIC, **kw)


def test_register_promote_lineage_and_history(reg):
    v1 = _reg(reg)
    assert (v1.version, v1.status, v1.parent_id) == (1, ModelStatus.CANDIDATE, None)
    assert v1.params["lr"] == pytest.approx(3e-4) and v1.tp_reward_weight == 2.0
    reg.promote(v1.version_id, "first")
    v2 = _reg(reg, sharpe=1.5)
    assert v2.version == 2 and v2.parent_id == v1.version_id  # lineage: production parent
    reg.promote(v2.version_id, "better")
    assert reg.get(v1.version_id).status is ModelStatus.RETIRED
    assert reg.get_production(ModelType.RL_V3, "BTC").version_id == v2.version_id
    assert [v.version for v in reg.lineage(v2.version_id)] == [2, 1]
    h = reg.history(v1.version_id)
    assert [(x["from"], x["to"]) for x in h] == [(None, "candidate"),
                                                 ("candidate", "production"),
                                                 ("production", "retired")]
    assert h[-1]["reason"] == f"replaced by version {v2.version_id}"
    other = _reg(reg, symbol="ETH")
    assert other.version == 1 and other.parent_id is None
    reg.promote(other.version_id)
    assert len(reg.list_versions(status="production")) == 2  # one per key


def test_rollback_restores_previous_production(reg):
    v1, v2 = _reg(reg), None
    reg.promote(v1.version_id)
    with pytest.raises(ValueError, match="no earlier production"):
        reg.rollback(ModelType.RL_V3, "BTC")
    v2 = _reg(reg)
    reg.promote(v2.version_id)
    v3 = _reg(reg)
    reg.reject(v3.version_id, "worse")
    back = reg.rollback(ModelType.RL_V3, "BTC", reason="incident 42")
    assert back.version_id == v1.version_id and back.status is ModelStatus.PRODUCTION
    assert reg.get(v2.version_id).status is ModelStatus.RETIRED
    assert reg.get(v3.version_id).status is ModelStatus.REJECTED
    assert reg.history(v2.version_id)[-1]["reason"].startswith("incident 42: rolled back")
    with pytest.raises(ValueError, match="no production version"):
        reg.rollback(ModelType.RL_V3, "SOL")


def test_invalid_transitions_and_inputs(reg):
    v = _reg(reg)
    reg.reject(v.version_id, "bad")
    with pytest.raises(ValueError, match="cannot go from 'rejected' to 'production'"):
        reg.promote(v.version_id)
    w = _reg(reg)
    reg.promote(w.version_id)
    with pytest.raises(ValueError, match="cannot go from 'production' to 'rejected'"):
        reg.reject(w.version_id, "late")
    with pytest.raises(KeyError):
        reg.get(999)
    with pytest.raises(ValueError, match="params"):
        reg.register(ModelType.RL_V3, "BTC", {"f": object()}, {})
    with pytest.raises(ValueError, match="NaN"):
        reg.register(ModelType.RL_V3, "BTC", {}, {"sharpe_ratio": float("nan")})
    with pytest.raises(ValueError, match="parent_id"):
        reg.register(ModelType.RL_V3, "BTC", {}, {}, parent_id=12345)
    with pytest.raises(ValueError, match="symbol"):
        reg.register(ModelType.RL_V3, "", {}, {})
    s = reg.set_status(_reg(reg).version_id, ModelStatus.SHADOW, "watch")
    assert s.status is ModelStatus.SHADOW


def test_multi_symbol_key_and_jobs(reg):
    v = reg.register(ModelType.RL_V3, ["ETH", "BTC"], {}, {})
    assert v.symbol == "BTC,ETH"
    assert reg.get_production(ModelType.RL_V3, ["BTC", "ETH"]) is None
    reg.promote(v.version_id)
    assert reg.get_production("rl_v3", ["BTC", "ETH"]).version_id == v.version_id
    assert reg.register(ModelType.XGBOOST, None, {}, {}).symbol == "*"
    job = TrainingJob(ModelType.RL_V3, None, TriggerReason.MANUAL, {"tp_reward_weight": 1.2})
    reg.record_job(job, "running")
    reg.record_job(job, "completed", version_id=v.version_id)
    row = reg.get_job(job.job_id)
    assert row["status"] == "completed" and row["training_params"]["tp_reward_weight"] == 1.2
    with pytest.raises(ValueError, match="status"):
        reg.record_job(job, "exploded")


def test_shares_the_tracker_file_and_checkpoints_roundtrip(tmp_path):
    path = tmp_path / "tpfl.db"
    tracker = TPPerformanceTracker(path)
    reg = ModelRegistry(path)
    assert reg.schema_versions() == {"tracker": 1, "registry": 1}
    v = _reg(reg)
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}
    ckpt = reg.save_checkpoint(v.version_id, params)
    assert reg.get(v.version_id).checkpoint_path == ckpt and ckpt.startswith(str(tmp_path))
    target = {"dense": {"kernel": jnp.zeros((2, 3)), "bias": jnp.ones(3)}}
    restored = reg.load_checkpoint(v.version_id, target)
    np.testing.assert_array_equal(restored["dense"]["kernel"], params["dense"]["kernel"])
    np.testing.assert_array_equal(restored["dense"]["bias"], params["dense"]["bias"])
    with pytest.raises(ValueError, match="no checkpoint"):
        reg.load_checkpoint(_reg(reg).version_id, target)
    reg.close()
    tracker.close()


def test_first_non_finite_looks_inside_flax_structs():
    """A checkpoint's observation statistics (a flax struct) are checked like its weights."""
    from tpfl_jax.agents.ppo import RunningMeanStd
    from tpfl_jax.guard import first_non_finite

    ok = RunningMeanStd(mean=np.zeros(3), var=np.ones(3), count=np.float32(4.0))
    assert first_non_finite({"network": {"w": np.ones(2)}, "obs_rms": ok}) is None
    bad = ok.replace(var=np.array([1.0, np.nan, 1.0]))
    assert first_non_finite({"obs_rms": bad}) == "['obs_rms'].var (array with a NaN/inf)"
