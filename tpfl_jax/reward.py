"""The reward of the TP feedback loop.

``compute_reward`` keeps the seed's signature and contract: the TP bonus is
``tp_zone_accuracy * 5.0 * tp_reward_weight`` and is paid only when ``tp_zone_accuracy > 0``.
It accepts Python floats (returns a float) and JAX arrays (branch-free, so it works under
``jit``, ``vmap`` and ``grad``). ``reward_terms`` returns every component for logging;
``compute_reward`` is their sum.

Calibration (``RewardCoefs`` defaults; checked by ``tpfl-audit`` and ``tests/test_audit.py``).
The seed fixes only the bonus; every other scale is ours, chosen so that the reward ranks the
reference strategies of ``tpfl_jax.baselines`` as their PnL does and the bonus cannot be farmed
at the weights the CLM sets (0.5-2.0). Measured with the first main's coefficients (PnL 1.0,
drawdown level 1.0 per step, size 0.01, hidden-label alignment 0.05, MFE-ratio accuracy) on the
``regime`` market, 100-bar episodes: the bonus was 25-200x the PnL term, a coin-flip trader with
the tightest TP beat every profitable rule from weight 0.19 on, and a trend rule earning +330 per
episode scored below staying flat. The calibrated default:

* ``pnl = 20``: PnL in units of one bar's volatility (the env passes the volatility at the
  episode's start, one constant per episode, so the term is proportional to currency PnL):
  one TP hit at 1 vol unit earns 20 of PnL reward against a bonus of 2.5 x weight (skill
  accuracy): the weight shifts which TP distance pays best without outweighing PnL.
* ``drawdown = 1.0``, charged by the env on the *increase* of the episode's max drawdown in
  vol units (an episode pays ``max drawdown / vol`` once), not on the level every step.
* ``size = 0.01`` per step in the market; ``alignment = 0``: off (the env's alignment signal is
  causal by default; the hidden regime label is opt-in, ``alignment_source="hidden_label"``).
* The env feeds the bonus the ``skill`` accuracy (hit minus the no-edge hit probability of the
  TP distance): a no-skill trader expects ~1.1 of bonus per trade at every TP distance instead
  of 2.2-3.6 growing with tightness (``mfe_ratio``).

Audit of this default (``tpfl-audit``, 512 episodes of 100 bars per rule, ``regime`` / ``mixed``):
no pair of {flat, buy-and-hold, trend, churn, oracle} whose PnL differs beyond noise is ranked
otherwise by the reward at weight 0 (Kendall tau 0.8 / 1.0: on regime buy-and-hold and trend,
equal within noise, swap); churn reaches the best profitable reference at weight 11.2 / 11.5
and no coin-flip rule at any TP reaches the best causal rule below weight 2.4 / 3.4
(2026-11-30). Scanned and rejected: PnL 10-15 (a coin-flip trader at TP 1.0-1.5 reached the
trend rule at weights 1.8-2.2 on some market samples), drawdown 1.5 (a buy-and-hold with +104
PnL scored below flat), per-bar vol scaling (a trend rule earning +168 scored below flat: it
earns in volatile bars), and the ``mfe_ratio`` / ``hit`` accuracies at PnL 10 (churn
break-even 1.1).
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
    drawdown:  penalty per unit of ``drawdown`` (the env passes the increase of the episode's
               max drawdown in vol units; any value >= 0 the caller defines).
    size:      penalty per unit of ``|position_size|`` (fraction of equity at risk in the market).
    alignment: multiplies ``regime_alignment`` (+1 position with the regime, -1 against it).
    tp_bonus:  the seed's 5.0: bonus per unit of ``tp_zone_accuracy`` at ``tp_reward_weight`` 1.

    Defaults: the calibration in the module docstring.
    """

    pnl: Any = 20.0
    drawdown: Any = 1.0
    size: Any = 0.01
    alignment: Any = 0.0
    tp_bonus: Any = 5.0


LEGACY_COEFS = dict(pnl=1.0, drawdown=1.0, size=0.01, alignment=0.05, tp_bonus=5.0)
"""The first main's coefficients (with drawdown ``level``, ``hidden_label`` alignment and
``mfe_ratio`` accuracy in the env): kept to reproduce the audit that rejected them."""

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
    return total_reward(reward_terms(pnl_delta, drawdown, position_size, regime_alignment,
                                     volatility, tp_zone_accuracy, tp_reward_weight, coefs=coefs))


def total_reward(terms: dict[str, Any]) -> Any:
    """The reward: the sum of its ``TERM_NAMES`` terms. ``compute_reward`` and the env both
    pay this sum (a change to the formula changes the env)."""
    return (terms["pnl"] + terms["drawdown_penalty"] + terms["size_penalty"]
            + terms["alignment"] + terms["tp_bonus"])
