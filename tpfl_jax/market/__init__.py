"""Market data: the ``MarketData`` pytree, synthetic generators and the OHLCV loader."""

from tpfl_jax.market.types import MarketData, causal_vol_unit, make_market_data

__all__ = ["MarketData", "causal_vol_unit", "make_market_data"]
