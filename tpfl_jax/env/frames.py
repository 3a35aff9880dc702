"""The host table of closed trades (pandas) from ``info["trade"]`` records; its metrics come from
``accounting`` (``trade_sums_from_frame`` + ``finalize``). Never called under jit."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pandas as pd

from tpfl_jax.env.stats import EXIT_REASONS, TRADE_KEYS


def trades_frame(trade: dict[str, Any], mask: Any = None,
                 index_names: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per closed trade from a batch of ``info["trade"]`` dicts (any leading axes).

    ``mask`` (same leading shape) keeps only the closes where it is True. ``index_names``
    adds a column per leading axis holding the trade's index along it (e.g.
    ``("step", "episode")`` for a ``[T, n]`` rollout). Rows keep the batch's C order;
    ``exit_reason`` becomes its name from ``EXIT_REASONS`` (ordered categorical).
    """
    host = jax.device_get(trade)
    missing = [k for k in TRADE_KEYS if k not in host]
    if missing:
        raise ValueError(f"trades_frame: info['trade'] lacks keys {missing}")
    closed = np.asarray(host["closed"]).astype(bool)
    if mask is not None:
        closed = closed & np.asarray(mask, bool)
    if len(index_names) not in (0, closed.ndim):
        raise ValueError(f"trades_frame: index_names={index_names} has {len(index_names)} "
                         f"names; expected {closed.ndim}, one per leading axis")
    idx = np.nonzero(closed)
    cols = {name: i for name, i in zip(index_names, idx, strict=False)}
    cols |= {k: np.asarray(host[k])[idx] for k in TRADE_KEYS}
    df = pd.DataFrame(cols)
    df["exit_reason"] = pd.Categorical.from_codes(df["exit_reason"].astype(int),
                                                  categories=list(EXIT_REASONS), ordered=True)
    return df
