"""One entry point from a `data:` config section to validated frames, keyed by ticker."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tsconv.config import DataConfig
from tsconv.data import cache
from tsconv.data.sources import load_file, load_sample, sample_tickers
from tsconv.errors import DataError


def load_frames(cfg: DataConfig) -> dict[str, pd.DataFrame]:
    kw = {"nan_policy": cfg.nan_policy, "fill_limit": cfg.fill_limit}
    if cfg.source == "sample":
        frames = load_from_sample(cfg.tickers, cfg.dir)
    elif cfg.source == "cache":
        frames = cache.load_cache(cfg.dir, cfg.tickers, **kw)
    else:
        assert cfg.path is not None
        frames = {cfg.tickers[0].upper(): load_file(cfg.path, **kw)}
    out = {}
    for ticker, frame in frames.items():
        sliced = frame.loc[
            (pd.Timestamp(cfg.start) if cfg.start else None) : (
                pd.Timestamp(cfg.end) if cfg.end else None
            )
        ]
        if sliced.empty:
            raise DataError(no_bars_between(ticker, frame, cfg))
        if cfg.price == "adj_close" and "adj_close" not in sliced:
            sliced = sliced.assign(
                adj_close=sliced["close"]
            )  # no adjustment given: close is all we have
        out[ticker] = sliced
    return out


def no_bars_between(ticker: str, frame: pd.DataFrame, cfg: DataConfig) -> str:
    """Why data.start and data.end leave no bar of `ticker`, naming the key at fault and the
    dates its bars cover (a missing bound once read "and None")."""
    if frame.empty:
        return f"{ticker}: no bars at all"
    first, last = (d.date() for d in frame.index[[0, -1]])
    if cfg.start is not None and cfg.end is not None and cfg.start > cfg.end:
        return f"data.start: {cfg.start} is after data.end ({cfg.end})"
    if cfg.start is not None and pd.Timestamp(cfg.start) > frame.index[-1]:
        return f"data.start: {cfg.start} is after {ticker}'s last bar ({last}); set an earlier one"
    if cfg.end is not None and pd.Timestamp(cfg.end) < frame.index[0]:
        return f"data.end: {cfg.end} is before {ticker}'s first bar ({first}); set a later one"
    return (
        f"data.start/data.end: no bars of {ticker} from {cfg.start} to {cfg.end}; its bars run "
        f"from {first} to {last}"
    )


def load_from_sample(
    tickers: list[str], data_dir: Path, key: str = "data.tickers"
) -> dict[str, pd.DataFrame]:
    """The embedded sample's bars of `tickers`. A ticker it lacks is an error that says how to
    read one's own data: from the cache, with `data.source: cache`. Not a quiet fallback to
    the cache: a ticker in both would then read different bars depending on the cache."""
    available = sample_tickers()
    for ticker in tickers:
        if ticker.upper() not in available:
            raise DataError(
                f"{key}: {ticker!r} is not in the embedded sample ({', '.join(available)}); "
                + own_data_hint(ticker, Path(data_dir))
            )
    return load_sample(tickers, key)


def own_data_hint(ticker: str, data_dir: Path) -> str:
    """How to read `ticker` from the cache in `data_dir`, or to put it there first."""
    try:
        path = cache.ticker_path(data_dir, ticker)
    except DataError:
        return "a ticker of one's own is read from the cache with --set data.source=cache"
    if path.exists():
        return (
            f"it is in the cache ({path}): --set data.source=cache reads it from there "
            "(`tsconv fetch --sample` copies the sample's tickers there too)"
        )
    dir_option = (
        f" --data-dir {data_dir}" if data_dir != DataConfig.model_fields["dir"].default else ""
    )
    return (
        f"to use your own, import it with `tsconv fetch --from-csv FILE --ticker {ticker.upper()}"
        f"{dir_option}` (or download it with `tsconv fetch {ticker.upper()}{dir_option}`) and "
        "--set data.source=cache"
    )
