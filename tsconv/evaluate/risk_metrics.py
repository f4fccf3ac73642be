"""Losses and tests for risk forecasts. Pure functions of arrays.

- QLIKE (Patton, 2011), per row: rv / f - log(rv / f) - 1, zero for a perfect forecast and,
  like squared error of the variance, robust to the noise of the proxy (the ranking of two
  forecasts by its mean is the ranking by the true variance); it punishes a forecast that is
  too low far more than one too high. A zero realised variance (a bar with high == low) is
  floored at RV_FLOOR: the term it changes is the same for every forecast.
- MSE of the log variance: (log f - log rv)^2 over rows with rv > 0.
- Mincer-Zarnowitz: OLS of rv on [1, f]; an unbiased forecast has intercept 0, slope 1.
- Pinball loss at level q: (q - 1[y < f]) (y - f).
- Kupiec's unconditional coverage test (LR_uc, chi^2(1)) of the share of rows below the
  level-q quantile, and Christoffersen's independence test (LR_ind, chi^2(1)) of those hits
  following each other more than chance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RV_FLOOR = 1e-12


def qlike(f: np.ndarray, rv: np.ndarray) -> np.ndarray:
    ratio = np.maximum(np.asarray(rv, float), RV_FLOOR) / np.asarray(f, float)
    return ratio - np.log(ratio) - 1


def log_sq_error(f: np.ndarray, rv: np.ndarray) -> np.ndarray:
    """(log f - log rv)^2; NaN where rv is not positive."""
    rv = np.asarray(rv, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (np.log(np.asarray(f, float)) - np.log(rv)) ** 2
    return np.where(rv > 0, out, np.nan)


def mincer_zarnowitz(f: np.ndarray, rv: np.ndarray) -> dict[str, Any]:
    f, rv = np.asarray(f, float), np.asarray(rv, float)
    if len(f) < 3 or np.std(f) == 0:
        return {"intercept": None, "slope": None, "r2": None}
    x = np.column_stack([np.ones(len(f)), f])
    coef, *_ = np.linalg.lstsq(x, rv, rcond=None)
    resid = rv - x @ coef
    tss = float(np.sum((rv - rv.mean()) ** 2))
    return {
        "intercept": float(coef[0]),
        "slope": float(coef[1]),
        "r2": 1 - float(resid @ resid) / tss if tss > 0 else None,
    }


def variance_metrics(f: np.ndarray, rv: np.ndarray) -> dict[str, Any]:
    """QLIKE, MSE of the log variance and Mincer-Zarnowitz of forecast `f` against `rv`."""
    return {
        "n": len(f),
        "qlike": float(np.mean(qlike(f, rv))) if len(f) else None,
        "mse_log": float(np.nanmean(log_sq_error(f, rv))) if len(f) else None,
        "mincer_zarnowitz": mincer_zarnowitz(f, rv),
        "mean_forecast_vol": float(np.mean(np.sqrt(f))) if len(f) else None,
    }


def pinball(q_forecast: np.ndarray, y: np.ndarray, level: float) -> np.ndarray:
    y, qf = np.asarray(y, float), np.asarray(q_forecast, float)
    return (level - (y < qf)) * (y - qf)


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def kupiec(hits: np.ndarray, level: float) -> dict[str, Any]:
    """Unconditional coverage: LR of the observed hit rate against `level` (chi^2, 1 df)."""
    from scipy.stats import chi2

    hits = np.asarray(hits, bool)
    n, x = len(hits), int(hits.sum())
    if n == 0:
        return {"hits": 0, "n": 0, "rate": None, "lr": None, "p_value": None}
    rate = x / n
    lr = -2 * (
        _xlogy(n - x, 1 - level)
        + _xlogy(x, level)
        - _xlogy(n - x, 1 - rate)
        - _xlogy(x, rate if rate > 0 else 1)
    )
    lr = max(lr, 0.0)
    return {"hits": x, "n": n, "rate": rate, "lr": lr, "p_value": float(chi2.sf(lr, 1))}


def christoffersen(hits: np.ndarray) -> dict[str, Any]:
    """Independence: LR of a first-order Markov chain of hits against independent hits."""
    from scipy.stats import chi2

    h = np.asarray(hits, bool).astype(int)
    if len(h) < 3:
        return {"lr": None, "p_value": None}
    a, b = h[:-1], h[1:]
    n00 = int(((a == 0) & (b == 0)).sum())
    n01 = int(((a == 0) & (b == 1)).sum())
    n10 = int(((a == 1) & (b == 0)).sum())
    n11 = int(((a == 1) & (b == 1)).sum())
    p01 = n01 / max(n00 + n01, 1)
    p11 = n11 / max(n10 + n11, 1)
    p = (n01 + n11) / max(n00 + n01 + n10 + n11, 1)
    if p in (0.0, 1.0):
        return {"lr": None, "p_value": None}
    ll_ind = _xlogy(n00 + n10, 1 - p) + _xlogy(n01 + n11, p)
    ll_markov = (
        _xlogy(n00, 1 - p01 if p01 < 1 else 1)
        + _xlogy(n01, p01 if p01 > 0 else 1)
        + _xlogy(n10, 1 - p11 if p11 < 1 else 1)
        + _xlogy(n11, p11 if p11 > 0 else 1)
    )
    lr = max(-2 * (ll_ind - ll_markov), 0.0)
    return {"lr": lr, "p_value": float(chi2.sf(lr, 1))}
