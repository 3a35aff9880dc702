"""The divergence guard and host-side integrity checks of trained state (numpy only; the
jitted core imports this, so it imports nothing of the package but errors).

* ``GuardSection``: the thresholds (Hydra group ``guard``);
* ``check_divergence``: training metrics against them (``DivergenceError``);
* ``tree_digest`` / ``first_non_finite``: a pytree's content hash and its first NaN/inf.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np


class DivergenceError(FloatingPointError):
    """Training diverged (non-finite or exploding loss / params, collapsed policy)."""


@dataclass
class GuardSection:
    """Safety limits (Hydra group ``guard``; ``null`` disables one).

    After training, a PPO update with ``approx_kl > max_approx_kl``, ``|loss| > max_abs_loss``,
    or a last update with ``entropy < min_entropy`` (a collapsed policy) fails the run with
    ``DivergenceError``: non-zero exit, no checkpoint or table written as good. Non-finite
    loss/params always fail. ``max_memory_gb``: refuse a run whose estimated footprint per
    device exceeds this (null: the detected device memory; on CPU the host's RAM).
    """

    max_approx_kl: float | None = 1.0
    min_entropy: float | None = 1e-3
    max_abs_loss: float | None = 1e8
    max_memory_gb: float | None = None


# --------------------------------------------------------------------------- divergence
def check_divergence(metrics: Mapping[str, Any], guard: GuardSection | None,
                     where: Callable[[tuple[int, ...]], str], first_update: int = 0,
                     ran: Any = None) -> None:
    """Raise ``DivergenceError`` when a PPO update's metrics show divergence.

    ``metrics[k]`` arrays have the update axis LAST (any leading axes: seeds, policies, ...);
    ``where(index)`` describes the leading index (e.g. "weight 0.5, seed 1"). ``ran`` (bool,
    the metrics' shape) marks the updates that were run: the loop's cycles stop at their
    criterion and leave NaN placeholders for the rest, which are not divergence. Checks, in
    order: ``finite`` (loss and params), ``|loss| <= max_abs_loss``, ``approx_kl <=
    max_approx_kl`` on every run update, ``entropy >= min_entropy`` on the last run update.
    """
    g = GuardSection() if guard is None else guard
    mask = None if ran is None else np.asarray(ran, bool)

    def first(bad: np.ndarray) -> tuple[tuple[int, ...], int] | None:
        if mask is not None:
            bad = bad & np.broadcast_to(mask, bad.shape)
        if not bad.any():
            return None
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return idx[:-1], idx[-1]

    def arr(k: str) -> np.ndarray | None:
        return None if k not in metrics else np.asarray(metrics[k], float)

    checks: list[tuple[str, np.ndarray | None, Callable[[np.ndarray], np.ndarray], str]] = [
        ("finite", arr("finite"), lambda x: x < 0.5, "non-finite loss or parameters (NaN/inf)"),
        ("loss", arr("loss"), lambda x: ~np.isfinite(x), "non-finite loss"),
    ]
    if g.max_abs_loss is not None:
        checks.append(("loss", arr("loss"), lambda x: np.abs(x) > g.max_abs_loss,
                       f"|loss| > guard.max_abs_loss = {g.max_abs_loss:g}"))
    if g.max_approx_kl is not None:
        checks.append(("approx_kl", arr("approx_kl"),
                       lambda x: ~(x <= g.max_approx_kl),
                       f"approx_kl > guard.max_approx_kl = {g.max_approx_kl:g}"))
    for key, x, test, text in checks:
        if x is None or x.size == 0:
            continue
        hit = first(test(x))
        if hit is not None:
            lead, u = hit
            val = x[lead + (u,)]
            raise DivergenceError(
                f"training diverged at {where(lead)}, update {first_update + u + 1}: {key} = "
                f"{val:.4g} ({text}); a larger ppo.lr or smaller batch is the usual cause. "
                "Nothing was written as a good result")
    ent = arr("entropy")
    if g.min_entropy is not None and ent is not None and ent.size:
        n = ent.shape[-1]
        if mask is None:
            last_i = np.full(ent.shape[:-1], n - 1)
        else:                                   # the last run update (0 when none ran)
            m = np.broadcast_to(mask, ent.shape)
            last_i = np.where(m.any(-1), n - 1 - np.argmax(m[..., ::-1], -1), 0)
        last = np.take_along_axis(ent, last_i[..., None], -1)[..., 0]
        ran_any = np.ones(last.shape, bool) if mask is None else np.broadcast_to(
            mask, ent.shape).any(-1)
        bad = ran_any & ~(last >= g.min_entropy)
        if bad.any():
            lead = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DivergenceError(
                f"training diverged at {where(lead)}, update "
                f"{first_update + int(last_i[lead]) + 1}: "
                f"entropy = {last[lead]:.4g} < guard.min_entropy = {g.min_entropy:g} (the "
                "policy collapsed to one action). Nothing was written as a good result")



# --------------------------------------------------------------------------- integrity
def tree_digest(tree: Any) -> str:
    """SHA-256 over every leaf's shape and values (host copy), in tree order. Values are
    widened (floats to float64, integers/bools to int64) so a restore into a wider dtype of
    the same values has the same digest; any changed value changes it."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.complexfloating):
            a = a.astype(np.complex128)
        elif np.issubdtype(a.dtype, np.inexact):
            a = a.astype(np.float64)
        elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
            a = a.astype(np.int64)
        h.update(f"{a.dtype.kind}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def first_non_finite(value: Any, path: str = "") -> str | None:
    """Path of the first non-finite float in a nested dict / list / dataclass (e.g. a flax
    struct such as the observation statistics) / array, else None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            hit = first_non_finite(getattr(value, f.name), f"{path}.{f.name}")
            if hit is not None:
                return hit
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            hit = first_non_finite(v, f"{path}[{k!r}]")
            if hit is not None:
                return hit
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            hit = first_non_finite(v, f"{path}[{i}]")
            if hit is not None:
                return hit
        return None
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isfinite(float(value)) else f"{path} = {value!r}"
    if hasattr(value, "__array__"):
        a = np.asarray(value)
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            return f"{path} (array with a NaN/inf)"
    return None


__all__ = ["DivergenceError", "GuardSection", "check_divergence", "first_non_finite",
           "tree_digest"]
