"""`tsconv fetch`: download into the cache (incrementally) or import a CSV/parquet file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tsconv import runfolder
from tsconv.data import cache
from tsconv.data.sources import Downloader, fetch_yahoo, load_file, load_sample
from tsconv.errors import FetchError


@dataclass
class FetchReport:
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _next_day(date: pd.Timestamp) -> str:
    return str((date + pd.Timedelta(days=1)).date())


def fetch_one(
    data_dir: Path,
    ticker: str,
    *,
    start: str | None,
    end: str | None,
    interval: str,
    download: Downloader | None = None,
    **retry: Any,
) -> dict[str, Any]:
    """Fetch one ticker into the cache; a second call only appends bars after the cached ones."""
    symbol = cache.safe_ticker(ticker)
    old = cache.read_cached(data_dir, symbol)
    now = runfolder.now_utc()
    if old is None:
        new = fetch_yahoo(
            symbol, start=start, end=end, interval=interval, download=download, **retry
        )
        return cache.store(
            data_dir, symbol, new, source="yahoo", fetched_at=now, note="full download"
        )
    # Refetch from the last cached bar: the overlap tells us whether history was re-adjusted.
    last = old.index[-1]
    try:
        recent = fetch_yahoo(
            symbol, start=str(last.date()), end=end, interval=interval, download=download, **retry
        )
    except FetchError as exc:
        if end is not None and pd.Timestamp(end) <= last + pd.Timedelta(days=1):
            return {"rows": len(old), "note": "already up to date"}
        raise exc
    if not cache.same_history(old, recent):
        full = fetch_yahoo(
            symbol,
            start=str(old.index[0].date()),
            end=end,
            interval=interval,
            download=download,
            **retry,
        )
        return cache.store(
            data_dir,
            symbol,
            full,
            source="yahoo",
            fetched_at=now,
            note="history re-adjusted by the source (dividend/split): rewrote the whole series",
        )
    added = recent.loc[recent.index > last]
    if added.empty:
        return {"rows": len(old), "note": "already up to date"}
    merged = pd.concat([old, added.reindex(columns=old.columns)])
    return cache.store(
        data_dir,
        symbol,
        merged,
        source="yahoo",
        fetched_at=now,
        note=f"appended {len(added)} bar(s) after {last.date()}",
    )


def fetch_many(
    data_dir: Path,
    tickers: list[str],
    *,
    start: str | None = None,
    end: str | None = None,
    interval: str = "1d",
    download: Downloader | None = None,
    **retry: Any,
) -> FetchReport:
    """Fetch several tickers; the ones that succeed are kept even when others fail."""
    symbols = [cache.safe_ticker(t) for t in tickers]  # reject hostile names before any I/O
    report = FetchReport()
    with cache.locked(data_dir):
        for symbol in symbols:
            try:
                report.written[symbol] = fetch_one(
                    data_dir,
                    symbol,
                    start=start,
                    end=end,
                    interval=interval,
                    download=download,
                    **retry,
                )
            except FetchError as exc:
                report.failed[symbol] = str(exc)
    return report


def import_file(data_dir: Path, path: Path, ticker: str, **kw: Any) -> dict[str, Any]:
    symbol = cache.safe_ticker(ticker)
    frame = load_file(path, **kw)
    with cache.locked(data_dir):
        return cache.store(
            data_dir,
            symbol,
            frame,
            source=f"file:{Path(path).resolve()}",
            fetched_at=runfolder.now_utc(),
            note="imported",
        )


def import_sample(data_dir: Path, tickers: list[str]) -> dict[str, dict[str, Any]]:
    frames = load_sample(tickers)
    out = {}
    with cache.locked(data_dir):
        for symbol, frame in frames.items():
            old = cache.read_cached(data_dir, symbol)  # None when not cached yet
            if old is not None and old.equals(frame):
                out[symbol] = {"rows": len(frame), "note": "already in cache"}
                continue
            out[symbol] = cache.store(
                data_dir,
                symbol,
                frame,
                source="tsconv embedded sample (Quandl WIKI, public domain)",
                fetched_at=runfolder.now_utc(),
                note="copied from the package",
            )
    return out


def describe(frames: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    return [
        {
            "ticker": t,
            "rows": len(f),
            "first": str(f.index[0].date()),
            "last": str(f.index[-1].date()),
            "adj_close": "adj_close" in f,
        }
        for t, f in frames.items()
    ]
