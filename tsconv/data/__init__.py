"""Data layer: sources (yfinance, CSV/parquet, the embedded sample) -> canonical OHLCV frames."""
