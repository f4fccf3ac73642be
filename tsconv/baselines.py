"""Naive forecasts on the same rows and folds as the model. All are causal by construction."""

from __future__ import annotations

import numpy as np

from tsconv.features import TickerData

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


def lagged(x: np.ndarray, rows: np.ndarray, lags: int) -> np.ndarray:
    """(len(rows), lags * F): the features of rows t, t-1, ..., t-lags+1."""
    idx = rows[:, None] - np.arange(lags)[None, :]
    return x[np.clip(idx, 0, None)].reshape(len(rows), -1)


def ridge_ar(
    x_scaled: np.ndarray,
    y: np.ndarray,
    train: tuple[int, int],
    rows: np.ndarray,
    lags: int,
    alpha: float,
) -> np.ndarray:
    """Ridge regression of the target on the last `lags` rows of the (scaled) features,
    fitted on the training rows only; the intercept is not penalised."""
    lo, hi = max(train[0], lags - 1), train[1]
    if hi - lo < lags + 2:
        return np.zeros(len(rows))
    tr = np.arange(lo, hi)
    a = lagged(x_scaled, tr, lags).astype(np.float64)
    b = y[tr]
    ok = np.isfinite(b)
    a, b = a[ok], b[ok]
    mu_a, mu_b = a.mean(0), b.mean()
    ac = a - mu_a
    coef = np.linalg.solve(ac.T @ ac + alpha * np.eye(a.shape[1]), ac.T @ (b - mu_b))
    # Row-wise sums, not a matrix product: BLAS may pick another kernel for another row count,
    # and a prediction must not change (even in the last bit) when later rows are added.
    return ((lagged(x_scaled, rows, lags) - mu_a) * coef).sum(axis=1) + mu_b
