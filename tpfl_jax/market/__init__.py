"""Market data: the ``MarketData`` pytree, synthetic generators and the OHLCV loader."""

from tpfl_jax.market.data import (
    from_dataframe,
    load_ohlcv,
    read_ohlcv,
    to_windows,
    validate_ohlcv,
    window_starts,
)
from tpfl_jax.market.synthetic import (
    GARCHParams,
    GBMParams,
    MertonParams,
    MixedParams,
    RegimeParams,
    garch,
    gbm,
    generate,
    make_params,
    merton,
    mixed,
    regime_switching,
    simulate,
)
from tpfl_jax.market.types import MarketData, causal_vol_unit, make_market_data

__all__ = [
    "GARCHParams",
    "GBMParams",
    "MarketData",
    "MertonParams",
    "MixedParams",
    "RegimeParams",
    "causal_vol_unit",
    "from_dataframe",
    "garch",
    "gbm",
    "generate",
    "load_ohlcv",
    "make_market_data",
    "make_params",
    "merton",
    "mixed",
    "read_ohlcv",
    "regime_switching",
    "simulate",
    "to_windows",
    "validate_ohlcv",
    "window_starts",
]
