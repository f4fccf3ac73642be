"""Turn any OHLCV table into the canonical frame, or raise a DataError naming file, row and problem.

Canonical frame: a tz-naive DatetimeIndex named `date` (the bar's local calendar date), sorted and
unique, float64 columns `open high low close volume` and, where the source gives it, `adj_close`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tsconv.errors import DataError

PRICE_COLUMNS = ["open", "high", "low", "close"]
REQUIRED = [*PRICE_COLUMNS, "volume"]
CANONICAL = ["open", "high", "low", "close", "adj_close", "volume"]

_ALIASES = {
    "date": "date",
    "datetime": "date",
    "timestamp": "date",
    "time": "date",
    "day": "date",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "adjclose": "adj_close",
    "adjustedclose": "adj_close",
    "adjclosed": "adj_close",
}


def canonical_column(name: object) -> str | None:
    key = re.sub(r"[\s_\-.]", "", str(name).strip().lower())
    return _ALIASES.get(key)


def _where(source: str, row: int | None) -> str:
    return f"{source}: row {row}" if row is not None else source


def canonicalize(
    raw: pd.DataFrame,
    source: str,
    *,
    nan_policy: str = "ffill",
    fill_limit: int = 5,
    row_offset: int = 1,
    min_rows: int = 2,
) -> pd.DataFrame:
    """Validate `raw` and return the canonical frame.

    `row_offset` converts a 0-based position into the row number a user sees: 2 for a CSV with a
    header line (line numbers), 1 for parquet/in-memory rows.
    """
    frame = raw.copy()
    if isinstance(frame.index, pd.DatetimeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    given = frame
    mapping: dict[object, str] = {}
    for col in frame.columns:
        canon = canonical_column(col)
        if canon is not None and canon not in mapping.values():
            mapping[col] = canon
    frame = frame.rename(columns=mapping)[list(mapping.values())]
    missing = [c for c in ["date", *REQUIRED] if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, raw.columns)) or "none"
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; found: {found}")
    if frame.empty:
        raise DataError(f"{source}: no data rows")
    rows = np.arange(len(frame)) + row_offset

    dates = _parse_dates(frame["date"], source, rows)
    values = {}
    for col in [c for c in CANONICAL if c in frame.columns]:
        values[col] = _parse_numeric(frame[col], col, source, rows)
    out = pd.DataFrame(values, index=pd.DatetimeIndex(dates, name="date"))
    _check_dates(out.index, source, rows)
    extra = extra_columns(given, mapping)
    extra.index = out.index
    out, rows = _apply_nan_policy(out, source, rows, nan_policy, fill_limit)
    _check_values(out, source, rows)
    if len(out) < min_rows:
        raise DataError(f"{source}: only {len(out)} row(s); at least {min_rows} are needed")
    # a user's own columns (`col:NAME` features) ride along; their NaNs are dealt with when a
    # feature uses them, so a column nobody uses never fails an import
    return out.join(extra) if len(extra.columns) else out


def _check_dates(index: pd.DatetimeIndex, source: str, rows: np.ndarray) -> None:
    dup = index.duplicated(keep="first")
    if dup.any():
        i = int(np.argmax(dup))
        raise DataError(f"{_where(source, rows[i])}: duplicate date {index[i].date()}")
    if not index.is_monotonic_increasing:
        i = int(np.argmax(np.diff(index.asi8) < 0)) + 1
        raise DataError(
            f"{_where(source, rows[i])}: dates are not in ascending order "
            f"({index[i].date()} after {index[i - 1].date()}); sort the file by date"
        )


def column_name(name: object) -> str:
    """A user column's name as features refer to it: `Sentiment Score` -> `sentiment_score`."""
    return re.sub(r"[^0-9a-z_]+", "_", str(name).strip().lower()).strip("_")


def extra_columns(raw: pd.DataFrame, mapping: dict[object, str]) -> pd.DataFrame:
    """The columns beyond OHLCV whose every non-blank value is a number, as float64 (NaN where
    blank), under `column_name`; text columns (a ticker, notes) are left out."""
    out = {}
    frame = raw
    for col in frame.columns:
        name = column_name(col)
        if col in mapping or not name or name in CANONICAL or name in out or name == "ticker":
            continue
        if canonical_column(col) is not None:
            continue
        values = frame[col]
        if pd.api.types.is_bool_dtype(values.dtype):
            continue
        parsed = pd.to_numeric(
            values.astype("string").str.strip().str.replace(",", ""), errors="coerce"
        )
        blank = values.isna() | values.astype("string").str.strip().str.lower().isin(
            ["", "nan", "null", "na", "n/a", "none", "-"]
        )
        if (parsed.isna() & ~blank).any() or parsed.notna().sum() == 0:
            continue
        out[name] = parsed.to_numpy(dtype="float64", na_value=np.nan)
    return pd.DataFrame(out)


def canonical_series(
    raw: pd.DataFrame, source: str, columns: list[str] | None, row_offset: int
) -> pd.DataFrame:
    """A covariate file: a date column and numeric columns (all of them, or `columns`), dates
    parsed, unique and ascending as for bars; NaNs are kept (the covariate's fill rule handles
    them)."""
    frame = raw.reset_index() if isinstance(raw.index, pd.DatetimeIndex) or raw.index.name else raw
    date_cols = [c for c in frame.columns if canonical_column(c) == "date"]
    if not date_cols:
        found = ", ".join(map(str, raw.columns)) or "none"
        raise DataError(f"{source}: no date column; found: {found}")
    rows = np.arange(len(frame)) + row_offset
    dates = pd.DatetimeIndex(_parse_dates(frame[date_cols[0]], source, rows), name="date")
    _check_dates(dates, source, rows)
    numeric = extra_columns(frame.drop(columns=date_cols), {})
    if columns:
        missing = [c for c in columns if column_name(c) not in numeric]
        if missing:
            have = ", ".join(numeric.columns) or "none"
            raise DataError(
                f"{source}: no numeric column {', '.join(missing)} (numeric columns: {have})"
            )
        numeric = numeric[[column_name(c) for c in columns]]
    if not len(numeric.columns):
        raise DataError(f"{source}: no numeric columns beside the date")
    numeric.index = dates
    bad = ~np.isfinite(numeric.to_numpy()) & numeric.notna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{_where(source, rows[r])}: column {numeric.columns[c]} is not finite")
    return numeric


def _parse_dates(col: pd.Series, source: str, rows: np.ndarray) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        parsed = pd.Series(col)
    else:
        try:
            parsed = pd.to_datetime(col, errors="coerce", format="mixed")
        except (ValueError, TypeError) as exc:
            if "timezone" in str(exc).lower() or "offset" in str(exc).lower():
                raise DataError(
                    f"{source}: column date mixes timezones; convert all timestamps to one zone"
                ) from None
            raise DataError(f"{source}: column date cannot be parsed as dates ({exc})") from None
        if parsed.dtype == object:
            raise DataError(
                f"{source}: column date mixes timezones; convert all timestamps to one zone"
            )
    years = parsed.dt.year
    bad = (parsed.isna() | (years < 1800) | (years > 2200)).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{_where(source, rows[i])}: cannot parse date {col.iloc[i]!r}")
    if getattr(parsed.dt, "tz", None) is not None:
        # A daily bar belongs to its exchange's calendar day: keep the local date, drop the zone.
        parsed = parsed.dt.tz_localize(None)
    normalized = parsed.dt.normalize()
    # Daily bars carry a time of day (midnight, or the exchange open in UTC): keep the date.
    # Intraday bars would collide when normalised, so they keep their timestamps.
    return pd.DatetimeIndex(normalized if normalized.is_unique else parsed)


def _parse_numeric(col: pd.Series, name: str, source: str, rows: np.ndarray) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype="float64", na_value=np.nan)
    as_str = col.astype("string").str.strip()
    parsed = pd.to_numeric(as_str.str.replace(",", "", regex=False), errors="coerce")
    blank = as_str.isna() | as_str.str.lower().isin(["", "nan", "null", "na", "n/a", "none", "-"])
    bad = (parsed.isna() & ~blank).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{_where(source, rows[i])}: non-numeric value {col.iloc[i]!r} in column {name}"
        )
    return parsed.to_numpy(dtype="float64", na_value=np.nan)


def _apply_nan_policy(
    frame: pd.DataFrame, source: str, rows: np.ndarray, policy: str, limit: int
) -> tuple[pd.DataFrame, np.ndarray]:
    nan_rows = frame.isna().any(axis=1).to_numpy()
    if not nan_rows.any():
        return frame, rows
    count = int(nan_rows.sum())
    first = int(np.argmax(nan_rows))
    if policy == "error":
        cols = ", ".join(frame.columns[frame.iloc[first].isna()])
        raise DataError(
            f"{_where(source, rows[first])}: missing value in {cols} ({count} row(s) with NaNs; "
            "set data.nan_policy to drop or ffill to accept them)"
        )
    if policy == "drop":
        return frame.loc[~nan_rows], rows[~nan_rows]
    filled = frame.ffill(limit=limit)
    left = filled.isna().any(axis=1).to_numpy()
    if left.any():
        i = int(np.argmax(left))
        raise DataError(
            f"{_where(source, rows[i])}: missing values that cannot be forward-filled (a leading "
            f"NaN, or a run longer than data.fill_limit={limit} bars); use data.nan_policy: drop"
        )
    return filled, rows


def _check_values(frame: pd.DataFrame, source: str, rows: np.ndarray) -> None:
    def fail(mask: np.ndarray, problem: str) -> None:
        i = int(np.argmax(mask))
        where = _where(source, rows[i])
        raise DataError(f"{where} ({frame.index[i].date()}): {problem}")

    prices = frame[[c for c in ["open", "high", "low", "close", "adj_close"] if c in frame]]
    nonpos = (prices.to_numpy() <= 0) | ~np.isfinite(prices.to_numpy())
    if nonpos.any():
        r, c = np.argwhere(nonpos)[0]
        mask = np.zeros(len(frame), bool)
        mask[r] = True
        fail(mask, f"{prices.columns[c]} must be a positive finite price, got {prices.iat[r, c]}")
    hl = (frame["high"] < frame["low"]).to_numpy()
    if hl.any():
        i = int(np.argmax(hl))
        fail(hl, f"high {frame['high'].iat[i]} is below low {frame['low'].iat[i]}")
    vol = frame["volume"].to_numpy()
    if (vol < 0).any() or not np.isfinite(vol).all():
        fail((vol < 0) | ~np.isfinite(vol), "volume must be a finite number >= 0")
