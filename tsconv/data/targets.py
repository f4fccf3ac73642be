"""Risk targets: the next bars' variance (`target.kind: volatility`) and the next return's
quantiles (`quantiles`), beside the return target of tsconv.data.features.

A variance proxy is measured on each bar from its own prices:

- `squared_return`: r[t]^2, the close-to-close log return squared (unbiased, very noisy);
- `parkinson`: ln(H/L)^2 / (4 ln 2), from the bar's range (Parkinson, 1980);
- `garman_klass`: 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2 (Garman & Klass, 1980); both range
  estimators are several times less noisy than a squared return, and measure the bar's open to
  close, not the overnight move.

Row t's realised variance `rv` is the sum of the proxy over bars t+1 .. t+h, known only at t+h.
The network is trained (by the ordinary squared-error loop) on a transformed target that is
scale-free across tickers and centred near zero:

    y[t] = log(max(rv[t] / h, FLOOR * base[t]) / base[t]),

with `base[t]` the mean proxy over the last NORM_WINDOW bars up to and including t (causal).
This is the "MSE of the log variance" loss; its forecast z is turned back into a variance,
positive by construction, by `variance_forecast`: h * base[t] * exp(z) * c, where the one
constant c = mean(rv / (h * base * exp(z))) over the fold's training rows is what makes the
forecast unbiased for the variance (E[exp(error)] of the log fit) and minimises QLIKE over
scale. The zero forecast z = 0 is the trailing mean of the proxy. Before exp, z is clipped to
the range of the network's own forecasts on the fold's training rows (`forecast_range`): the
network may not extrapolate beyond what it forecast on the inputs it was fitted to, so one bar
unlike any in training (a bad print) cannot send the variance a thousand times too high.

For `quantiles` the same network forecasts the scale, and the return's quantile at level q is
sigma[t] * k_q, with k_q the pinball-loss minimiser over the training rows of the returns
divided by their forecast sigma (filtered historical simulation): sorted levels give sorted
k_q and sigma > 0, so the quantiles never cross.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NORM_WINDOW = 63  # bars of the trailing mean proxy that normalises the target (a quarter)
FLOOR = 0.01  # the log target's floor, as a fraction of the trailing mean (a zero proxy)
PROXIES = ("squared_return", "parkinson", "garman_klass")
RISK_KINDS = ("volatility", "quantiles")


def quantile_column(name: str, level: float) -> str:
    """The predictions column of forecast `name`'s quantile at `level`: `prediction@0.05`."""
    return f"{name}@{level:g}"


def proxy(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    logp: np.ndarray,
    kind: str,
) -> np.ndarray:
    """The variance proxy of each bar (NaN where its prices do not give one; for
    `squared_return`, the first bar of a series, which needs the previous close)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "squared_return":
            r = np.diff(logp, prepend=np.nan)
            return r**2
        hl = np.log(high / low)
        if kind == "parkinson":
            return hl**2 / (4 * np.log(2))
        if kind == "garman_klass":
            co = np.log(close / open_)
            return np.maximum(0.5 * hl**2 - (2 * np.log(2) - 1) * co**2, 0.0)
    raise ValueError(f"unknown variance proxy {kind!r}")


def _segments(lengths: np.ndarray):
    starts = np.cumsum(lengths) - lengths
    return [(int(lo), int(lo + n)) for lo, n in zip(starts, lengths, strict=True)]


def trailing_mean(values: np.ndarray, lengths: np.ndarray, window: int) -> np.ndarray:
    """Row t: the mean of `values` over the last `window` rows up to t of its own ticker
    (fewer at a ticker's start; NaN values skipped; NaN before the first value)."""
    out = np.full(len(values), np.nan)
    for lo, hi in _segments(lengths):
        s = pd.Series(values[lo:hi])
        out[lo:hi] = s.rolling(window, min_periods=1).mean().to_numpy()
    return out


def forward_sum(values: np.ndarray, lengths: np.ndarray, horizon: int) -> np.ndarray:
    """Row t: values[t+1] + ... + values[t+h] within its ticker; NaN for its last h rows and
    wherever one of those bars has no value."""
    out = np.full(len(values), np.nan)
    for lo, hi in _segments(lengths):
        s = pd.Series(values[lo:hi])
        out[lo:hi] = s.rolling(horizon, min_periods=horizon).sum().shift(-horizon).to_numpy()
    return out


def risk_columns(
    big: pd.DataFrame, logp: np.ndarray, lengths: np.ndarray, horizon: int, kind: str
) -> dict[str, np.ndarray]:
    """Per stacked row: `proxy` (the bar's own), `base` (its trailing mean), `rv` (the next
    h bars' realised variance, NaN where not yet known) and `y` (the training target)."""
    p = proxy(
        big["open"].to_numpy(),
        big["high"].to_numpy(),
        big["low"].to_numpy(),
        big["close"].to_numpy(),
        logp,
        kind,
    )
    starts = np.cumsum(lengths) - lengths
    if kind == "squared_return":
        p[starts] = np.nan  # the diff ran across the previous ticker's last bar
    base = trailing_mean(p, lengths, NORM_WINDOW)
    base = np.where(base > 0, base, np.nan)
    rv = forward_sum(p, lengths, horizon)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.maximum(rv / horizon, FLOOR * base) / base)
    return {"proxy": p, "base": base, "rv": rv, "y": y}


def forecast_range(z_train: np.ndarray) -> tuple[float, float]:
    """The lowest and highest of the network's forecasts `z_train` on a fold's training rows:
    every forecast is clipped to this range before it becomes a variance."""
    return float(np.nanmin(z_train)), float(np.nanmax(z_train))


def clipped(z: np.ndarray, bounds: tuple[float, float]) -> int:
    """How many forecasts `z` lie outside `bounds` (and are clipped by `variance_forecast`)."""
    return int(np.sum((z < bounds[0]) | (z > bounds[1])))


def variance_forecast(
    z: np.ndarray, base: np.ndarray, horizon: int, scale: float, bounds: tuple[float, float]
) -> np.ndarray:
    """The variance of the next h bars from the network's forecast `z` of the log target,
    clipped to `bounds` (`forecast_range`)."""
    return horizon * base * np.exp(np.clip(z, *bounds)) * scale


def calibration(
    z: np.ndarray, base: np.ndarray, rv: np.ndarray, horizon: int, bounds: tuple[float, float]
) -> float:
    """c = mean(rv / (h base exp(z))) over rows whose rv is known: the scale that makes the
    variance forecast unbiased in the training rows (and, given its shape, QLIKE-optimal)."""
    return mean_ratio(rv, variance_forecast(z, base, horizon, 1.0, bounds))


def mean_ratio(rv: np.ndarray, forecast: np.ndarray) -> float:
    """mean(rv / forecast) over the rows where both are known (1 where none is), each ratio
    at most Tukey's far-out fence of the ratios' logs (third quartile + 3 interquartile
    ranges: about 50 times the median ratio for a range proxy's usual spread). One bad print
    (a low at a twentieth of the price: a proxy 400 times the usual) in the rows would
    otherwise set the scale of every forecast of the fold: it made the constant 140-450
    instead of 1.5 on GARCH-t draws (docs/metrics.md). On clean data no ratio reaches the
    fence, and the constant is the plain mean."""
    ok = np.isfinite(forecast) & np.isfinite(rv) & (forecast > 0)
    ratio = rv[ok] / forecast[ok]
    positive = ratio[ratio > 0]
    if len(positive) >= 4:
        q1, q3 = np.percentile(np.log(positive), [25, 75])
        ratio = np.minimum(ratio, np.exp(q3 + 3 * (q3 - q1)))
    c = float(np.mean(ratio)) if len(ratio) else 1.0
    return c if np.isfinite(c) and c > 0 else 1.0


def standardized_quantiles(
    returns: np.ndarray, sigma: np.ndarray, levels: list[float]
) -> np.ndarray:
    """k_q: the level-q quantile of returns / sigma over the rows where both are known (the
    pinball-loss minimiser of a forecast sigma * k), non-decreasing in q."""
    ok = np.isfinite(returns) & np.isfinite(sigma) & (sigma > 0)
    if ok.sum() < 2:
        from scipy.stats import norm

        return norm.ppf(levels)
    z = returns[ok] / sigma[ok]
    k = np.quantile(z, levels, method="inverted_cdf")
    return np.maximum.accumulate(k)
