"""The reward of the TP feedback loop.

``compute_reward`` keeps the seed's signature and contract: the TP bonus is
``tp_zone_accuracy * 5.0 * tp_reward_weight`` and is paid only when ``tp_zone_accuracy > 0``.
It accepts Python floats (returns a float) and JAX arrays (branch-free, so it works under
``jit``, ``vmap`` and ``grad``). ``reward_terms`` returns every component for logging;
``compute_reward`` is their sum.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

VOL_FLOOR = 1e-8  # volatility below this is treated as this (avoids division by zero)


@struct.dataclass
class RewardCoefs:
    """Reward coefficients. Every field is a traced leaf, so weight vectors sweep under vmap.

    pnl:       multiplies ``pnl_delta / volatility`` (PnL in units of one bar's volatility).
    drawdown:  penalty per unit of drawdown (fraction below the equity peak, >= 0).
    size:      penalty per unit of ``|position_size|`` (fraction of equity at risk in the market).
    alignment: multiplies ``regime_alignment`` (+1 position with the regime, -1 against it).
    tp_bonus:  the seed's 5.0: bonus per unit of ``tp_zone_accuracy`` at ``tp_reward_weight`` 1.
    """

    pnl: Any = 1.0
    drawdown: Any = 1.0
    size: Any = 0.01
    alignment: Any = 0.05
    tp_bonus: Any = 5.0


DEFAULT_COEFS = RewardCoefs()

TERM_NAMES = ("pnl", "drawdown_penalty", "size_penalty", "alignment", "tp_bonus")


def _is_host_scalar(x: Any) -> bool:
    return isinstance(x, numbers.Number) or (isinstance(x, np.ndarray) and x.ndim == 0)


def reward_terms(
    pnl_delta,
    drawdown,
    position_size,
    regime_alignment,
    volatility=0.02,
    tp_zone_accuracy=0.0,
    tp_reward_weight=1.0,
    *,
    coefs: RewardCoefs | None = None,
) -> dict[str, Any]:
    """Every component of the reward, keyed by ``TERM_NAMES`` (penalties are <= 0).

    Floats in -> floats out; arrays in -> ``jnp`` arrays out (broadcast together).
    """
    c = DEFAULT_COEFS if coefs is None else coefs
    args = (pnl_delta, drawdown, position_size, regime_alignment, volatility,
            tp_zone_accuracy, tp_reward_weight)
    host = all(_is_host_scalar(a) for a in args) and all(
        _is_host_scalar(v) for v in (c.pnl, c.drawdown, c.size, c.alignment, c.tp_bonus)
    )
    xp = np if host else jnp
    vol = xp.maximum(xp.asarray(volatility, dtype=float if host else None), VOL_FLOOR)
    acc = xp.asarray(tp_zone_accuracy)
    terms = {
        "pnl": c.pnl * xp.asarray(pnl_delta) / vol,
        "drawdown_penalty": -c.drawdown * xp.abs(xp.asarray(drawdown)),
        "size_penalty": -c.size * xp.abs(xp.asarray(position_size)),
        "alignment": c.alignment * xp.asarray(regime_alignment),
        # Branch-free: the bonus (and its gradient) is exactly zero unless accuracy > 0.
        "tp_bonus": xp.where(acc > 0, acc * c.tp_bonus * tp_reward_weight, 0.0),
    }
    if host:
        return {k: float(v) for k, v in terms.items()}
    return terms


def compute_reward(
    pnl_delta,
    drawdown,
    position_size,
    regime_alignment,
    volatility=0.02,
    tp_zone_accuracy=0.0,
    tp_reward_weight=1.0,
    *,
    coefs: RewardCoefs | None = None,
):
    """Volatility-scaled PnL, minus drawdown and size penalties, plus regime alignment,
    plus ``tp_zone_accuracy * 5.0 * tp_reward_weight`` when ``tp_zone_accuracy > 0``.

    Weight 1.0 (also when omitted) is the baseline. See ``RewardCoefs`` for the coefficients.
    """
    t = reward_terms(pnl_delta, drawdown, position_size, regime_alignment, volatility,
                     tp_zone_accuracy, tp_reward_weight, coefs=coefs)
    return t["pnl"] + t["drawdown_penalty"] + t["size_penalty"] + t["alignment"] + t["tp_bonus"]
