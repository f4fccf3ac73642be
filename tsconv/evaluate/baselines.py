"""Naive forecasts on the same rows and folds as the model. All are causal by construction."""

from __future__ import annotations

import numpy as np

from tsconv.data.features import TickerData
from tsconv.engine import linear

NAMES = ["zero", "persistence", "trailing_mean", "ridge_ar"]


def persistence(td: TickerData, rows: np.ndarray, horizon: int) -> np.ndarray:
    """The last realised h-bar return: log(p[t] / p[t-h])."""
    prev = np.clip(rows - horizon, 0, None)
    return td.logp[rows] - td.logp[prev]


def trailing_mean(td: TickerData, rows: np.ndarray, horizon: int, window: int) -> np.ndarray:
    """Mean one-bar log return over the last `window` bars, times h."""
    back = np.clip(rows - window, 0, None)
    n = np.maximum(rows - back, 1)
    return horizon * (td.logp[rows] - td.logp[back]) / n


def ridge_ar(
    x_scaled: np.ndarray,
    y: np.ndarray,
    train: tuple[int, int],
    rows: np.ndarray,
    max_lags: int,
    penalty: float | None = None,
) -> tuple[np.ndarray, linear.RidgeFit]:
    """Ridge regression of the target on the last bars of the (scaled) features, fitted on
    the training rows only, with its lags (up to `max_lags`, of every feature or of one) and
    penalty (unless given) chosen by cross-validation over stretches of those rows
    (`tsconv.engine.linear`): the linear forecast a careful analyst would fit, which the
    model must beat. Returns (forecasts, the fit)."""
    fit = linear.select_ridge(x_scaled, y, _known(y, train), max_lags, penalties=_grid(penalty))
    return linear.predict(x_scaled, rows, fit), fit


def _known(y: np.ndarray, train: tuple[int, int]) -> np.ndarray:
    """The training rows whose target is known."""
    tr = np.arange(train[0], train[1])
    return tr[np.isfinite(y[tr])]


def _grid(penalty: float | None) -> tuple[float, ...]:
    """The penalties to choose from: the given one, or the default grid."""
    return linear.PENALTIES if penalty is None else (penalty,)


def pooled_ridge_ar(
    series: list[tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray, np.ndarray]],
    max_lags: int,
    penalty: float | None = None,
) -> tuple[list[np.ndarray], linear.RidgeFit]:
    """`ridge_ar` fitted once on every ticker's training rows together: one fit a fold for a
    universe, not one a ticker, and the linear benchmark a pooled model is compared with.
    Lags are read within each ticker's own series; the cross-validation's stretches of time
    are of dates, a date's rows one point in time (`linear.select_ridge`). `series`: per
    ticker (scaled features, target, training rows [lo, hi), rows to forecast, each row's
    date as an integer). Returns each ticker's forecasts, in order, and the fit."""
    offsets = np.cumsum([0, *(len(x) for x, *_ in series)])[:-1]
    rows, since, dates = [], [], []
    for (_, y, train, _, when), start in zip(series, offsets, strict=True):
        tr = _known(y, train)
        rows.append(start + tr)
        since.append(np.full(len(tr), start))
        dates.append(when[tr])
    x = np.concatenate([s[0] for s in series])
    y = np.concatenate([s[1] for s in series])
    rows_all, since_all, dates_all = (
        np.concatenate([*parts, np.zeros(0, np.int64)]) for parts in (rows, since, dates)
    )
    fit = linear.select_ridge(
        x, y, rows_all, max_lags, since_all, dates_all, penalties=_grid(penalty)
    )
    return [linear.predict(xs, test, fit) for xs, _, _, test, _ in series], fit
