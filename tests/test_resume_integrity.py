"""Kill-and-resume integrity of the PPO runner: a torn ``metrics.jsonl``, a changed config and a
damaged latest checkpoint (flipped bits, empty ``_METADATA``, emptied step directory)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpfl_jax.agents.ppo import PPOConfig
from tpfl_jax.agents.runner import DAMAGED_DIR, DIGEST_FILE, IDENTITY_FILE, Runner

CFG = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 4, update_epochs=1,
                num_minibatches=2, widths=(8,))
KW = dict(chunk_updates=1, checkpoint_every=1, max_to_keep=3, progress=False)
ENV, EP = gymnax.make("CartPole-v1")


def _runner(path: Path, **kw) -> Runner:
    return Runner(CFG, ENV, EP, path, **{**KW, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (the bit-exact target of every resume)."""
    r = _runner(tmp_path_factory.mktemp("ref"))
    res = r.run()
    r.close()
    return res


def _killed_run(path: Path, until: int = 3) -> None:
    r = _runner(path)
    r.run(until=until)
    r.close()


def _same_params(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        assert jnp.array_equal(x, y)


def test_torn_metrics_line_is_dropped_and_resume_is_bit_exact(tmp_path, reference):
    _killed_run(tmp_path)
    log = tmp_path / "metrics.jsonl"
    log.write_text(log.read_text() + '{"update": 4, "loss": 0.1')      # killed mid-write
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: line 4 is torn"):
        res = _runner(tmp_path).run()
    assert res.start_update == 3
    _same_params(res, reference)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3, 4]


def test_damaged_metrics_line_before_the_end_names_the_line(tmp_path):
    _killed_run(tmp_path, until=2)
    log = tmp_path / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("not json\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 1 is not a metrics row"):
        _runner(tmp_path).run()


def test_changed_config_refuses_to_resume_naming_the_key(tmp_path):
    _killed_run(tmp_path, until=2)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"checkpoints of another run \(seed: 0 -> 1\)"):
        _runner(tmp_path, seed=1)
    with pytest.raises(ValueError, match=r"lr: .*resum"):
        _runner(tmp_path, hparams=CFG.hparams().replace(lr=jnp.float32(1e-3)))
    # nothing of the first run was touched
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert json.loads((tmp_path / IDENTITY_FILE).read_text())["identity"]["seed"] == 0


def _flip_bits(step_dir: Path) -> None:
    """Flip one byte in the middle of every data file of a checkpoint step."""
    for f in sorted(step_dir.rglob("*")):
        if f.is_file() and f.stat().st_size > 64 and "METADATA" not in f.name:
            b = bytearray(f.read_bytes())
            b[len(b) // 2] ^= 0xFF
            f.write_bytes(bytes(b))


def _empty_metadata(step_dir: Path) -> None:
    for f in step_dir.rglob("_METADATA"):
        f.write_bytes(b"")


def _empty_dir(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


@pytest.mark.parametrize("damage", [_flip_bits, _empty_metadata, _empty_dir],
                         ids=["flipped_bits", "empty_metadata", "emptied_step_dir"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, reference,
                                                                       damage):
    _killed_run(tmp_path, until=3)
    latest = tmp_path / "checkpoints" / "3"
    damage(latest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _runner(tmp_path).run()
    msgs = [str(w.message) for w in caught]
    assert any(f"checkpoint 3 at {latest} is damaged" in m for m in msgs), msgs
    assert res.start_update == 2                       # the previous good checkpoint
    _same_params(res, reference)                       # and nothing of the damage leaks
    moved = list((tmp_path / DAMAGED_DIR).iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("3-")      # kept, not deleted
    assert set(json.loads((tmp_path / DIGEST_FILE).read_text())) >= {"4"}


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path):
    _killed_run(tmp_path, until=2)
    for step in ("1", "2"):
        _empty_metadata(tmp_path / "checkpoints" / step)
    with pytest.raises(ValueError, match=r"every checkpoint of .* is damaged .*checkpoint 2 at"):
        _runner(tmp_path).run()
    assert not (tmp_path / DAMAGED_DIR).exists()       # nothing moved when nothing is good


def test_digest_detects_a_changed_value():
    from tpfl_jax.guard import tree_digest

    a = {"w": np.arange(6, dtype=np.float32)}
    b = {"w": np.arange(6, dtype=np.float32)}
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) == tree_digest({"w": np.arange(6, dtype=np.float64)})
    b["w"][3] = np.nextafter(np.float32(3), np.float32(4))
    assert tree_digest(a) != tree_digest(b)

