"""The shipped YAML equals the frozen objects: every key of a config group's default option
(the one ``configs/config.yaml`` picks) is the schema's default (which is the frozen object's:
``tests/test_app.py``), or the YAML declares the override on that key's line with a reason
(``# override: <reason>``). Every option and experiment composes and converts:
``tests/test_app.py``."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from tpfl_jax.config import Config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
DEFAULTS = {k: v for d in yaml.safe_load((CONFIGS / "config.yaml").read_text())["defaults"]
            if isinstance(d, dict) for k, v in d.items()}


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "params":
            out |= _leaves(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def _schema_value(section: object, key: str) -> object:
    for part in key.split("."):
        section = section[part] if isinstance(section, dict) else getattr(section, part)
    if dataclasses.is_dataclass(section):
        section = dataclasses.asdict(section)
    return list(section) if isinstance(section, tuple) else section


def _declared(text: str, key: str) -> bool:
    leaf = key.split(".")[-1]
    return any(re.match(rf"^\s*{re.escape(leaf)}:.*#\s*override:\s*\S", ln)
               for ln in text.splitlines())


@pytest.mark.parametrize("group", sorted(g for g in DEFAULTS if g not in ("experiment",)
                                         and (CONFIGS / g).is_dir()))
def test_default_option_equals_the_objects_or_declares_each_override(group):
    path = CONFIGS / group / f"{DEFAULTS[group]}.yaml"
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    data.pop("defaults", None)
    section = getattr(Config(), group)
    undeclared = []
    for key, value in _leaves(data).items():
        want = _schema_value(section, key)
        if value != want and not _declared(text, key):
            undeclared.append(f"{key}: yaml {value!r} != object {want!r}")
    assert not undeclared, (f"{path.relative_to(ROOT)}: differs from the frozen object's "
                            f"default without '# override: <reason>': {undeclared}")


def test_every_declared_override_really_differs():
    # a stale '# override:' (the value now equals the default) is misleading too
    for group, option in DEFAULTS.items():
        path = CONFIGS / group / f"{option}.yaml"
        if group == "experiment" or not path.is_file():
            continue
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        data.pop("defaults", None)
        section = getattr(Config(), group)
        for key, value in _leaves(data).items():
            if _declared(text, key):
                assert value != _schema_value(section, key), f"{path.name}: {key}"
