"""Naive forecasts on the same rows and folds as the model. All are causal by construction."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from tsconv.data.features import TickerData

# numpy's BLAS (OpenBLAS) wakes its threads for the ridge fits' small products and leaves them
# spinning afterwards, taking the cores torch trains on. One BLAS thread is plenty for a
# 40 x 40 system.
_one_blas_thread = threadpool_limits.wrap(limits=1, user_api="blas")

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


@_one_blas_thread
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


@_one_blas_thread
def ridge_select(
    a: np.ndarray,
    b: np.ndarray,
    a_val: np.ndarray,
    b_val: np.ndarray,
    penalties: tuple[float, ...],
    tolerance: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Ridge regressions of b on a, one per penalty, chosen on (a_val, b_val) by the
    one-standard-error rule: the largest penalty whose validation MSE is within `tolerance`
    standard errors of the lowest (the standard error of the paired difference of squared
    errors). Returns (coef, penalty).

    No intercept: the zero forecast is the benchmark, and a fitted mean return is a forecast
    of its own, a poor one for daily returns. The penalty is in mean-squared-error units,
    mean((b - a c)^2) + penalty * |c|^2, so it means the same for any number of rows. The rule matters on returns: the lowest of a dozen noisy
    validation errors is low partly by luck, and a linear forecast that is not clearly better
    than a near-zero one loses out of sample.
    Without validation rows the largest penalty is taken.
    """
    a = np.asarray(a, np.float64)
    s, v = np.linalg.eigh(a.T @ a / len(a))
    proj = v.T @ (a.T @ np.asarray(b, np.float64) / len(a))
    coefs = [v @ (proj / (np.maximum(s, 0) + p)) for p in penalties]
    choice = int(np.argmax(penalties))
    if len(a_val) > 1:
        a_val = np.asarray(a_val, np.float64)
        sq = np.stack([(a_val @ c - b_val) ** 2 for c in coefs])
        best = int(np.argmin(sq.mean(1)))
        d = sq - sq[best]
        se = d.std(1, ddof=1) / np.sqrt(d.shape[1])
        ok = [i for i in range(len(penalties)) if d[i].mean() <= tolerance * se[i]]
        choice = max(ok, key=lambda i: penalties[i])
    return coefs[choice], float(penalties[choice])
