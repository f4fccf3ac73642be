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
    tr = np.arange(train[0], train[1])
    tr = tr[np.isfinite(y[tr])]
    penalties = linear.PENALTIES if penalty is None else (penalty,)
    fit = linear.select_ridge(x_scaled, y, tr, max_lags, penalties=penalties)
    return linear.predict(x_scaled, rows, fit), fit
