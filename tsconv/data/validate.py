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
    "observationdate": "date",  # FRED's downloads
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "adjclose": "adj_close",
    "adjustedclose": "adj_close",
    "adjclosed": "adj_close",
}


# Cells that mean "no value": pandas' and spreadsheets' spellings, and FRED's `.`.
MISSING = ["", "nan", "null", "na", "n/a", "none", "-", "."]


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
        blank = values.isna() | values.astype("string").str.strip().str.lower().isin(MISSING)
        if (parsed.isna() & ~blank).any() or parsed.notna().sum() == 0:
            continue
        out[name] = parsed.to_numpy(dtype="float64", na_value=np.nan)
    return pd.DataFrame(out)


def canonical_series(
    raw: pd.DataFrame, source: str, columns: list[str] | None, row_offset: int
) -> pd.DataFrame:
    """A covariate file: a date column and numeric columns (`columns`, or every all-numeric
    one), dates parsed, unique and ascending as for bars. Blank cells (and FRED's `.`) are
    NaN, kept for the covariate's fill rule; any other text in a named column is an error
    naming its row and value."""
    frame = raw.reset_index() if isinstance(raw.index, pd.DatetimeIndex) or raw.index.name else raw
    date_cols = [c for c in frame.columns if canonical_column(c) == "date"]
    if not date_cols:
        found = ", ".join(map(str, raw.columns)) or "none"
        raise DataError(f"{source}: no date column; found: {found}")
    rows = np.arange(len(frame)) + row_offset
    dates = pd.DatetimeIndex(_parse_dates(frame[date_cols[0]], source, rows), name="date")
    _check_dates(dates, source, rows)
    others = frame.drop(columns=date_cols)
    if columns:
        numeric = _named_columns(others, columns, source, rows)
    else:
        numeric = extra_columns(others, {})
    if not len(numeric.columns):
        raise DataError(f"{source}: no numeric columns beside the date")
    numeric.index = dates
    bad = ~np.isfinite(numeric.to_numpy()) & numeric.notna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{_where(source, rows[r])}: column {numeric.columns[c]} is not finite")
    return numeric


def _named_columns(
    frame: pd.DataFrame, columns: list[str], source: str, rows: np.ndarray
) -> pd.DataFrame:
    """`columns` of `frame` (matched by `column_name`) parsed as numbers, strictly."""
    by_name = {column_name(c): c for c in reversed(frame.columns)}  # the first of a name wins
    missing = [c for c in columns if column_name(c) not in by_name]
    if missing:
        have = ", ".join(column_name(c) for c in frame.columns) or "none"
        raise DataError(f"{source}: no column {', '.join(missing)} (its columns: {have})")
    return pd.DataFrame(
        {
            column_name(c): _parse_numeric(frame[by_name[column_name(c)]], c, source, rows)
            for c in columns
        }
    )


# A timestamp's UTC offset after its time of day: `16:00:00-05:00`, `16:00-0500`, `16:00Z`.
_OFFSET_AT_END = re.compile(r"^(.*\d:\d\d(?::\d\d(?:\.\d+)?)?)\s*(Z|[+-]\d\d:?\d\d)$")
# A zone's offsets differ by its daylight-saving shift, an hour; more is two zones.
_ONE_ZONE_SPREAD_MINUTES = 60
_SLASH_DATE = re.compile(r"^\d{1,2}/\d{1,2}/\d{4}$")


def _parse_dates(col: pd.Series, source: str, rows: np.ndarray) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        parsed = pd.Series(col)
    elif pd.api.types.is_object_dtype(col.dtype) or pd.api.types.is_string_dtype(col.dtype):
        parsed = _parse_date_text(col.astype("string").str.strip(), source, rows)
    else:
        parsed = _to_datetime(col, source)
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


def _parse_date_text(text: pd.Series, source: str, rows: np.ndarray) -> pd.Series:
    """Dates written as text. Timestamps with UTC offsets keep their local clock time, as a
    zone-aware column does: a New York file across a DST change (-05:00, then -04:00) is one
    zone and its bars keep their New York dates."""
    text = _local_clock_times(text, source, rows)
    filled = text.dropna()
    if len(filled) and filled.str.fullmatch(_SLASH_DATE).all():
        slashed = _slash_dates(text)
        if slashed is not None:
            return slashed
    return _to_datetime(text, source)


def _local_clock_times(text: pd.Series, source: str, rows: np.ndarray) -> pd.Series:
    """`text` with the UTC offsets cut off, after checking that they can be one zone's."""
    parts = text.str.extract(_OFFSET_AT_END)
    has_offset = parts[1].notna().to_numpy()
    if not has_offset.any():
        return text
    without = ~has_offset & text.notna().to_numpy()
    if without.any():
        i, first = int(np.argmax(without)), int(np.argmax(has_offset))
        raise DataError(
            f"{_where(source, rows[i])}: date {text.iloc[i]!r} has no UTC offset but row "
            f"{rows[first]}'s has one; give every timestamp its offset, or none"
        )
    offsets = parts[1].str.replace("Z", "+00:00").str.replace(":", "")
    sign = np.where(offsets.str[0] == "-", -1, 1)
    minutes = sign * (offsets.str[1:3].astype(int) * 60 + offsets.str[3:5].astype(int))
    lo, hi = int(np.argmin(minutes)), int(np.argmax(minutes))
    if minutes.iloc[hi] - minutes.iloc[lo] > _ONE_ZONE_SPREAD_MINUTES:
        raise DataError(
            f"{source}: column date mixes timezones (UTC offsets {parts[1].iloc[lo]} and "
            f"{parts[1].iloc[hi]}, more than a daylight-saving hour apart); convert all "
            "timestamps to one zone"
        )
    return parts[0].str.strip()


def _slash_dates(text: pd.Series) -> pd.Series | None:
    """One reading of `3/6/2020` for the whole file, month first (as pandas and the US write
    it) unless only day first parses every row in ascending order: guessing row by row
    would read 3/6/2020 as March and 13/6/2020 as June in one file."""
    for fmt in ("%m/%d/%Y", "%d/%m/%Y"):
        parsed = pd.to_datetime(text, format=fmt, errors="coerce")
        if parsed.notna().all() and parsed.is_monotonic_increasing:
            return parsed
    return None


def _to_datetime(values: pd.Series, source: str) -> pd.Series:
    try:
        parsed = pd.to_datetime(values, errors="coerce", format="mixed")
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
    return parsed


def _parse_numeric(col: pd.Series, name: str, source: str, rows: np.ndarray) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype="float64", na_value=np.nan)
    as_str = col.astype("string").str.strip()
    parsed = pd.to_numeric(as_str.str.replace(",", "", regex=False), errors="coerce")
    blank = as_str.isna() | as_str.str.lower().isin(MISSING)
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


# No market moves a price 50-fold in one bar: a jump that size is the data changing units
# (cents and dollars, thousands) or an unadjusted split of an unusual ratio. A smell, not an
# error: the data may be right, but every return, feature and P&L across the jump depends on it.
JUMP_RATIO = 50.0


def price_jumps(price: pd.Series) -> pd.Series:
    """The one-bar ratios price[t] / price[t-1] of at least JUMP_RATIO or at most 1 /
    JUMP_RATIO, indexed by the bar t."""
    ratio = price / price.shift(1)
    return ratio[(ratio >= JUMP_RATIO) | (ratio <= 1 / JUMP_RATIO)]


def jump_words(ratio: float) -> str:
    """One jump in words, as `tsconv audit` and `tsconv backtest` say it."""
    return (
        f"price x{ratio:.4g} in one bar: units changed (cents and dollars, thousands) or "
        "an unadjusted split?"
    )
