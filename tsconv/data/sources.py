"""Where OHLCV comes from: files (CSV/parquet), the embedded sample, and Yahoo Finance.

Each loader returns canonical frames (see `validate.canonicalize`) or raises a one-line error.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import os
import time
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from tsconv.data.validate import canonical_column, canonical_series, canonicalize
from tsconv.errors import DataError, FetchError

MAX_FILE_BYTES = 512 * 1024**2  # larger files are refused before reading, never OOM-killed
SAMPLE_FILE = "ohlcv.csv.gz"


# --------------------------------------------------------------------------- files


def read_table(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[pd.DataFrame, int]:
    """Read a CSV or parquet file; return the raw frame and the row offset for messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty file")
    if size > max_bytes:
        raise DataError(
            f"{path}: file is {size / 1024**3:.1f} GB, over tsconv's {max_bytes / 1024**2:.0f} MB "
            "limit; split it by ticker or convert it to parquet"
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if path.suffix.lower() in (".parquet", ".pq") or head == b"PAR1":
        return _read_parquet(path), 1
    return _read_csv(path), 2


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow.lib

    try:
        return pd.read_parquet(path)
    except (pyarrow.lib.ArrowException, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable parquet file ({first})") from None


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file (is it really a CSV?)") from None


def _read_csv(path: Path) -> pd.DataFrame:
    text = _open_text(path)
    header = text.split("\n", 1)[0]
    if not header.strip():
        raise DataError(f"{path}: the first line is empty; expected a header row")
    sep = _separator(path, header)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, csv.Error) as exc:
        raise DataError(f"{path}: cannot parse CSV ({str(exc).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    if frame.empty:
        raise DataError(f"{path}: header only, no data rows")
    return frame


def _separator(path: Path, header: str) -> str:
    """Pick the separator whose split of the header names the most OHLCV columns."""
    scores = {}
    for sep in [",", ";", "\t", "|"]:
        scores[sep] = sum(canonical_column(c) is not None for c in header.split(sep))
    best = max(scores.values())
    winners = [s for s, v in scores.items() if v == best]
    if best == 0:
        return ","  # let canonicalize report the missing columns with what it found
    if len(winners) > 1:
        raise DataError(f"{path}: ambiguous column separator ({' or '.join(map(repr, winners))})")
    return winners[0]


def load_file(path: Path, *, nan_policy: str = "ffill", fill_limit: int = 5) -> pd.DataFrame:
    raw, offset = read_table(path)
    return canonicalize(
        raw, str(path), nan_policy=nan_policy, fill_limit=fill_limit, row_offset=offset
    )


def load_series(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A covariate file: its date column and numeric columns (`validate.canonical_series`)."""
    raw, offset = read_table(path)
    return canonical_series(raw, str(path), columns, offset)


# --------------------------------------------------------------------------- embedded sample


def sample_tickers() -> list[str]:
    return sorted(_sample_table()["ticker"].unique())


_SAMPLE_CACHE: dict[str, pd.DataFrame] = {}


def _sample_table() -> pd.DataFrame:
    if "table" not in _SAMPLE_CACHE:
        ref = resources.files("tsconv.data") / "sample" / SAMPLE_FILE
        with ref.open("rb") as fh:
            _SAMPLE_CACHE["table"] = pd.read_csv(fh, compression="gzip")
    return _SAMPLE_CACHE["table"]


def load_sample(tickers: list[str], key: str = "data.tickers") -> dict[str, pd.DataFrame]:
    """Daily OHLCV + adj_close shipped inside the package (Quandl WIKI, public domain; see
    scripts/make_sample_data.py): AAPL, IBM, MSFT 2000-2013, GOOG 2004-2013, FB 2012-2013."""
    table = _sample_table()
    available = sample_tickers()
    out = {}
    for ticker in tickers:
        rows = table[table["ticker"] == ticker.upper()]
        if rows.empty:
            raise DataError(
                f"{key}: {ticker!r} is not in the embedded sample; it has {', '.join(available)}"
            )
        out[ticker.upper()] = canonicalize(rows.drop(columns="ticker"), f"sample:{ticker.upper()}")
    return out


# --------------------------------------------------------------------------- Yahoo Finance

log = logging.getLogger(__name__)
Downloader = Callable[..., pd.DataFrame]


def yahoo_download_quietly(**kwargs: Any) -> pd.DataFrame:
    """yf.download with its log lines, prints and warnings held back: offline it writes about
    50 lines per ticker before tsconv's one useful line. `TSCONV_VERBOSE=1` (`fetch
    --verbose`) lets them through."""
    import yfinance as yf

    if os.environ.get("TSCONV_VERBOSE") == "1":
        return yf.download(**kwargs)
    yf_log = logging.getLogger("yfinance")
    level, yf_log.level = yf_log.level, logging.CRITICAL + 1
    held = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(held),
            contextlib.redirect_stderr(held),
        ):
            warnings.simplefilter("ignore")
            return yf.download(**kwargs)
    finally:
        yf_log.setLevel(level)


def _yf_last_error(ticker: str) -> str | None:
    try:
        import yfinance.shared as shared

        return shared._ERRORS.get(ticker) or shared._ERRORS.get(ticker.upper())
    except Exception:  # noqa: BLE001 - private API; absence only loses detail in a message
        return None


def flatten_yf_columns(frame: pd.DataFrame, ticker: str) -> pd.DataFrame:
    """yfinance returns (Price, Ticker) MultiIndex columns even for one ticker; pick ours."""
    if isinstance(frame.columns, pd.MultiIndex):
        for level in range(frame.columns.nlevels):
            values = frame.columns.get_level_values(level)
            if ticker in set(values):
                frame = frame.xs(ticker, axis=1, level=level)
                break
        else:
            frame = frame.copy()
            frame.columns = frame.columns.get_level_values(0)
    return frame


def fetch_yahoo(
    ticker: str,
    *,
    start: str | None = None,
    end: str | None = None,
    interval: str = "1d",
    retries: int = 3,
    backoff: float = 1.0,
    download: Downloader | None = None,
    sleep: Callable[[float], None] | None = None,
) -> pd.DataFrame:
    """Download one ticker, unadjusted OHLC plus `adj_close`, as a canonical frame.

    yfinance does not raise on network failure: it logs and returns an empty frame. Empty results
    and exceptions are both retried with exponential backoff, then reported in one line.
    """
    download = download or yahoo_download_quietly
    sleep = sleep or time.sleep
    last = "no data returned"
    for attempt in range(retries + 1):
        try:
            raw = download(
                tickers=ticker,
                start=start,
                end=end,
                interval=interval,
                auto_adjust=False,
                actions=False,
                progress=False,
                threads=False,
                multi_level_index=True,
            )
        except Exception as exc:  # noqa: BLE001 - any failure of the HTTP layer is retried
            last = f"{type(exc).__name__}: {exc}".splitlines()[0]
        else:
            if raw is not None and not raw.empty:
                frame = flatten_yf_columns(raw, ticker).dropna(how="all")
                if not frame.empty:
                    return canonicalize(frame, f"yahoo:{ticker}", nan_policy="drop", min_rows=1)
            last = _yf_last_error(ticker) or "no data returned (offline, or an unknown symbol)"
        if attempt < retries:
            sleep(backoff * 2**attempt)
    raise FetchError(
        f"could not reach Yahoo Finance for {ticker}: {last}; offline, `tsconv fetch --sample` "
        "copies the embedded sample and `--from-csv FILE --ticker NAME` imports a file"
    )
