"""One entry point from a `data:` config section to validated frames, keyed by ticker."""

from __future__ import annotations

import pandas as pd

from tsconv.config import DataConfig
from tsconv.data import cache
from tsconv.data.sources import load_file, load_sample
from tsconv.errors import DataError


def load_frames(cfg: DataConfig) -> dict[str, pd.DataFrame]:
    kw = {"nan_policy": cfg.nan_policy, "fill_limit": cfg.fill_limit}
    if cfg.source == "sample":
        frames = load_sample(cfg.tickers)
    elif cfg.source == "cache":
        frames = cache.load_cache(cfg.dir, cfg.tickers, **kw)
    else:
        assert cfg.path is not None
        name = cache.safe_ticker(cfg.tickers[0]) if len(cfg.tickers) == 1 else cfg.path.stem
        frames = {name: load_file(cfg.path, **kw)}
    out = {}
    for ticker, frame in frames.items():
        sliced = frame.loc[
            (pd.Timestamp(cfg.start) if cfg.start else None) : (
                pd.Timestamp(cfg.end) if cfg.end else None
            )
        ]
        if sliced.empty:
            raise DataError(
                f"data.start/data.end: no bars of {ticker} between {cfg.start} and {cfg.end}"
            )
        if cfg.price == "adj_close" and "adj_close" not in sliced:
            sliced = sliced.assign(
                adj_close=sliced["close"]
            )  # no adjustment given: close is all we have
        out[ticker] = sliced
    return out
