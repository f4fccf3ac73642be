"""Covariates: series shared by every ticker (an index, a volatility index, a rate, a column of
one's own), turned into features on their own dates and aligned to each ticker's bars.

The alignment rule: a covariate value dated d is usable on a ticker's bar dated t only if
d < t, or d == t when the covariate is marked `known_at: close` (the default, `next_open`, is
the safe one: a value published after the close, or on another exchange's clock, waits a bar).
Each bar takes the last usable value; across holidays and calendar mismatches it keeps that
value for at most `fill_limit` of the ticker's bars, and never takes the next one. A gap longer
than that is an error naming the covariate, the ticker and the date (`tsconv audit` lists them
all), so a stale value is never used silently, in training or in `predict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tsconv.config import Config, CovariateConfig
from tsconv.data.features import compute_features
from tsconv.errors import ConfigError, DataError


def names(cfg: Config) -> list[str]:
    """The covariates' feature names, `label:feature` or `label:column`, in config order."""
    out = []
    for c in cfg.covariates:
        out += [f"{c.label}:{f}" for f in (c.features if c.ticker else c.columns or [])]
    return out


def input_names(cfg: Config) -> list[str]:
    """Every input column a model sees: the ticker's own features, then the covariates'."""
    return [*cfg.features, *names(cfg)]


@dataclass(frozen=True)
class Covariate:
    label: str
    values: pd.DataFrame  # its features on its own dates, lag applied, incomplete rows dropped
    known_at: str
    fill_limit: int

    def _lookup(self, dates: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
        """For each bar: the row of the last usable value (-1: none yet) and how many of the
        ticker's bars that value has already served (0 on the first)."""
        own = self.values.index
        close = self.known_at == "close"
        k = own.searchsorted(dates, side="right" if close else "left") - 1
        first_use = dates.searchsorted(own[np.maximum(k, 0)], side="left" if close else "right")
        age = np.where(k >= 0, np.arange(len(dates)) - first_use, -1)
        return k, age

    def first_usable(self, dates: pd.DatetimeIndex) -> int:
        """The first of `dates` with a usable value (len(dates): none)."""
        k, _ = self._lookup(dates)
        return int(np.argmax(k >= 0)) if (k >= 0).any() else len(dates)

    def stale(self, dates: pd.DatetimeIndex) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """(bar date, date of the value it would reuse) for every bar past the fill limit."""
        k, age = self._lookup(dates)
        bad = np.flatnonzero(age > self.fill_limit)
        return [(dates[i], self.values.index[k[i]]) for i in bad]

    def align(self, dates: pd.DatetimeIndex, ticker: str) -> np.ndarray:
        """The covariate's features on the ticker's bars (NaN before its first value)."""
        k, age = self._lookup(dates)
        late = np.flatnonzero(age > self.fill_limit)
        if len(late):
            i = late[0]
            raise DataError(
                f"covariates: {self.label} has no value within fill_limit={self.fill_limit} bars "
                f"of {ticker}'s bar on {dates[i].date()} (its last is from "
                f"{self.values.index[k[i]].date()}, {len(late)} bar(s) in all); refresh it, fill "
                "the gap, or raise its fill_limit"
            )
        out = np.full((len(dates), len(self.values.columns)), np.nan)
        ok = k >= 0
        out[ok] = self.values.to_numpy()[k[ok]]
        return out


def load_sources(cfg: Config) -> dict[str, pd.DataFrame]:
    """Each covariate's raw series by label: OHLCV bars of a ticker from the data source, or a
    file's numeric columns."""
    from tsconv.data import cache
    from tsconv.data.load import load_from_sample
    from tsconv.data.sources import load_series

    out = {}
    for i, c in enumerate(cfg.covariates):
        key = f"covariates[{i}].{'file' if c.file is not None else 'ticker'}"
        if c.file is not None:
            if not Path(c.file).is_file():
                raise ConfigError(
                    f"{key}: {c.file}: no such file (relative to the current directory, "
                    f"{Path.cwd()})"
                )
            out[c.label] = load_series(Path(c.file), c.columns)
        elif cfg.data.source == "sample":
            loaded = load_from_sample([c.ticker], cfg.data.dir, key=key)
            out[c.label] = next(iter(loaded.values()))
        elif cfg.data.source == "cache":
            kw = {"nan_policy": cfg.data.nan_policy, "fill_limit": cfg.data.fill_limit}
            try:
                loaded = cache.load_cache(cfg.data.dir, [c.ticker], **kw)
            except DataError as exc:
                raise DataError(f"{key}: {exc}") from None
            out[c.label] = next(iter(loaded.values()))
        else:
            raise ConfigError(
                f"{key}: a ticker covariate comes from data.source sample or "
                "cache; with a CSV data source give it as file:"
            )
    return out


def build(cfg: Config, sources: dict[str, pd.DataFrame]) -> list[Covariate]:
    """The covariates' features on their own calendars, causal as any feature."""
    return [_one(c, sources[c.label], cfg.data.price) for c in cfg.covariates]


def _one(c: CovariateConfig, raw: pd.DataFrame, price: str) -> Covariate:
    if c.ticker is not None:
        price = price if price in raw else "close"
        values = compute_features(raw, c.features, price)
        values.columns = [f"{c.label}:{f}" for f in c.features]
    else:
        values = raw.copy()
        values.columns = [f"{c.label}:{col}" for col in c.columns or []]
    values = values.shift(c.lag).dropna(how="any")
    if values.empty:
        raise DataError(f"covariates: {c.label} has no complete row of {list(values.columns)}")
    return Covariate(c.label, values, c.known_at, c.fill_limit)
