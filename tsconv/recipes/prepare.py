"""Prepare a run's data: frames, features, covariates and target per ticker, spans and scalers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from tsconv.config import Config
from tsconv.data import covariates, features
from tsconv.data.features import TickerData
from tsconv.data.load import load_frames
from tsconv.engine.windows import Panel, Scaler, dense_sequence
from tsconv.errors import DataError
from tsconv.models.registry import receptive_field


@dataclass
class Prepared:
    cfg: Config
    data: dict[str, TickerData]
    receptive_field: int
    burn_in: int
    calendar: pd.DatetimeIndex  # union of all tickers' usable dates
    sequence: int  # length of a dense training sequence (tsconv.engine.windows.dense_sequence)
    # tickers whose usable history a covariate cuts short (`covariate_starts`)
    late_starts: dict[str, LateStart] = field(default_factory=dict)


@dataclass(frozen=True)
class LateStart:
    """A ticker whose usable history starts on the first bar a covariate has a value for,
    later than the ticker's own bars begin: the covariate, not the ticker, sets where its
    history (and, when every ticker waits for it, the first fold) starts."""

    start: pd.Timestamp  # the ticker's first usable bar
    covariates: list[str]  # the covariates first usable there
    own_start: pd.Timestamp  # the ticker's own first bar


def prepare(
    cfg: Config,
    frames: dict[str, pd.DataFrame] | None = None,
    covariate_sources: dict[str, pd.DataFrame] | None = None,
) -> Prepared:
    """Features and targets of every ticker (and its covariates), ready for any fold."""
    frames = frames if frames is not None else load_frames(cfg.data)
    if covariate_sources is None:
        covariate_sources = covariates.load_sources(cfg)
    rule = features.UserColumns(
        cfg.data.columns_known_at, cfg.data.nan_policy == "ffill", cfg.data.fill_limit
    )
    covs = covariates.build(cfg, covariate_sources)
    risk = cfg.target.proxy if cfg.target.kind != "return" else None
    data = features.build(
        frames, cfg.features, cfg.target.horizon, cfg.data.price, covs, rule, risk
    )
    rf = receptive_field(cfg.model)
    sequence, burn_in = dense_sequence(cfg.window, rf, cfg.train.burn_in)
    need = cfg.window + cfg.target.horizon + 1
    for t, td in data.items():
        if len(td.x) < need:
            raise DataError(
                f"{t}: {len(td.x)} usable bars after feature warm-up; at least window + horizon + 1 "
                f"= {need} are needed"
            )
    calendar = pd.DatetimeIndex(
        np.unique(np.concatenate([td.dates.values for td in data.values()]))
    )
    return Prepared(
        cfg, data, rf, burn_in, calendar, sequence, covariate_starts(covs, frames, data)
    )


def covariate_starts(
    covs: list[covariates.Covariate],
    frames: dict[str, pd.DataFrame],
    data: dict[str, TickerData],
) -> dict[str, LateStart]:
    """The tickers whose first usable bar is a covariate's first usable bar on them, where the
    covariate has no value for the ticker's first bar. A shorter covariate shortens every
    ticker it is aligned to, and with it the whole backtest: that must be said, not found out
    from a fold count."""
    out = {}
    for t, td in data.items():
        own = frames[t].index
        late = [
            c.label
            for c in covs
            if 0 < (k := c.first_usable(own)) < len(own) and own[k] == td.dates[0]
        ]
        if late:
            out[t] = LateStart(td.dates[0], late, own[0])
    return out


def window_warning(cfg: Config, rf: int) -> str | None:
    if cfg.window < rf:
        return (
            f"window {cfg.window} is shorter than the receptive field {rf} by {rf - cfg.window} "
            "steps: the earliest inputs each prediction could use are zero padding"
        )
    return None


def known_rows(td: TickerData) -> int:
    """Rows whose target is already realised in the data."""
    finite = np.isfinite(td.y)
    return int(len(finite) - np.argmax(finite[::-1])) if finite.any() else 0


def split_train_val(
    prep: Prepared, train: dict[str, Span], val_gap: int | None = None
) -> tuple[dict[str, Span], dict[str, Span]]:
    """Cut one common date so that validation is the last `val_fraction` of the training dates."""
    cfg = prep.cfg
    gap = cfg.target.horizon - 1 if val_gap is None else val_gap
    first = min(prep.data[t].dates[lo] for t, (lo, hi) in train.items() if hi > lo)
    last = max(prep.data[t].dates[hi - 1] for t, (lo, hi) in train.items() if hi > lo)
    span = prep.calendar[(prep.calendar >= first) & (prep.calendar <= last)]
    cut = span[int(len(span) * (1 - cfg.train.val_fraction))]
    fit_spans, val_spans = {}, {}
    for t, (lo, hi) in train.items():
        v = max(lo, int(prep.data[t].dates.searchsorted(cut)))
        fit_spans[t] = (lo, max(lo, v - gap))
        val_spans[t] = (v, hi)
    return fit_spans, val_spans


def fit_scalers(prep: Prepared, train: dict[str, Span]) -> dict[str, Scaler]:
    """Each ticker's scaler, fitted on its training rows only."""
    scalers = {}
    for t, td in prep.data.items():
        lo, hi = train.get(t, (0, 0))
        if hi - lo < 2:
            # Not trained on (and not predicted by the caller): any finite scaling will do, and
            # none of its targets are looked at.
            scalers[t] = Scaler.fit(td.x[: prep.cfg.window], np.array([]), td.feature_names)
            continue
        scalers[t] = Scaler.fit(td.x[lo:hi], td.y[lo:hi], td.feature_names)
    return scalers


def global_rows(panel: Panel, ticker: str, rows: np.ndarray) -> torch.Tensor:
    base = int(panel.offsets[panel.tickers.index(ticker)])
    return torch.as_tensor(rows + base, dtype=torch.int64)


def training_spans(prep: Prepared) -> tuple[dict[str, Span], dict[str, Span]]:
    return split_train_val(
        prep, {t: (0, known_rows(td)) for t, td in prep.data.items()}, prep.cfg.train.val_gap
    )


Span = tuple[int, int]  # rows [lo, hi) of one ticker


def fold_dates(prep: Prepared, fold: Any, train: dict[str, Span], rows: pd.DataFrame) -> dict:
    """A fold's first entries in folds.csv: its index, its training span's first and last
    date over tickers, and its test span's first and last (from its predicted `rows`)."""
    train_dates = [prep.data[t].dates[[lo, hi - 1]] for t, (lo, hi) in train.items()]
    return {
        "fold": fold.index,
        "train_start": str(min(d[0] for d in train_dates).date()),
        "train_end": str(max(d[1] for d in train_dates).date()),
        "test_start": str(fold.test_start.date()),
        "test_end": str(rows["date"].max().date()) if len(rows) else None,
    }
