"""The local cache written by `tsconv fetch`: one parquet per ticker plus `manifest.json`.

Writes are atomic (temp file + rename) and serialised by a lock file, so two `tsconv fetch`
processes on the same folder never leave a corrupt or half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsconv import runfolder
from tsconv.errors import DataError, OutputError

_SAFE = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9.^=_-]{0,31}$")
MANIFEST = "manifest.json"


def safe_ticker(ticker: str) -> str:
    """Validate a symbol for use as a file name (`BRK-B`, `^GSPC`, `ES=F` pass; `../x` does not)."""
    if not isinstance(ticker, str) or not _SAFE.match(ticker) or ".." in ticker:
        shown = (
            ticker if isinstance(ticker, str) and len(ticker) <= 40 else f"{str(ticker)[:40]}..."
        )
        raise DataError(
            f"ticker {shown!r}: not a valid symbol (1-32 characters from A-Z a-z 0-9 . ^ = _ -, "
            "no path separators)"
        )
    return ticker.upper()


def ticker_path(data_dir: Path, ticker: str) -> Path:
    return Path(data_dir) / f"{safe_ticker(ticker)}.parquet"


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder itself (no lock file to leave behind); a
    folder created here and still empty at the end (a failed first fetch) is removed."""
    data_dir = Path(data_dir)
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(f"cannot write to {data_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                data_dir.rmdir()  # only if nothing was written


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = str(exc)
    else:
        if isinstance(manifest, dict):
            return manifest
        problem = f"a JSON {type(manifest).__name__}, not an object"
    raise DataError(
        f"{path}: unreadable cache manifest ({problem}); delete it to start a new one (the "
        "cached files are read without it)"
    )


def read_cached(data_dir: Path, ticker: str) -> pd.DataFrame | None:
    path = ticker_path(data_dir, ticker)
    if not path.exists():
        return None
    from tsconv.data.sources import load_file

    return load_file(path, nan_policy="error")


def load_cache(data_dir: Path, tickers: list[str], **kw: Any) -> dict[str, pd.DataFrame]:
    from tsconv.data.sources import load_file

    out = {}
    for ticker in tickers:
        path = ticker_path(data_dir, ticker)
        if not path.exists():
            raise DataError(
                f"{path}: no cached data for {ticker}; run `tsconv fetch {ticker}` first "
                "(or use data.source: sample)"
            )
        out[safe_ticker(ticker)] = load_file(path, **kw)
    return out


def same_history(old: pd.DataFrame, new: pd.DataFrame, rtol: float = 1e-6) -> bool:
    """Do the overlapping bars agree? A dividend or split re-bases every past adjusted close."""
    common = old.index.intersection(new.index)
    if len(common) == 0:
        return False
    cols = [c for c in ["close", "adj_close"] if c in old and c in new]
    a = old.loc[common, cols].to_numpy()
    b = new.loc[common, cols].to_numpy()
    return bool(np.allclose(a, b, rtol=rtol, atol=0))


def store(
    data_dir: Path, ticker: str, frame: pd.DataFrame, *, source: str, fetched_at: str, note: str
) -> dict[str, Any]:
    """Write one ticker's frame and its manifest entry atomically (caller holds the lock).
    The manifest is read first: an unreadable one fails the store before anything is written."""
    path = ticker_path(data_dir, ticker)
    manifest = read_manifest(data_dir)
    entry = {
        "file": path.name,
        "source": source,
        "fetched_at": fetched_at,
        "rows": len(frame),
        "first": str(frame.index[0].date()),
        "last": str(frame.index[-1].date()),
        "adjustment": (
            "raw open/high/low/close plus adj_close (split- and dividend-adjusted); "
            "returns use adj_close by default"
            if "adj_close" in frame
            else "as provided (no adj_close column); returns use close"
        ),
        "note": note,
    }
    manifest[safe_ticker(ticker)] = entry
    runfolder.write_with(path, lambda tmp: frame.to_parquet(tmp, engine="pyarrow"))
    runfolder.write_json(Path(data_dir) / MANIFEST, manifest)
    return entry
