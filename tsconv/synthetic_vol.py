"""Series whose volatility is known: the known answers of the risk targets (issue 32).

Every bar is an intraday Brownian path of `STEPS` steps from the previous close (no overnight
gap), so that its high, low and close are those of one consistent path and the range carries
the bar's variance as it does in real data. A bar's variance is sigma2[t]; its return r[t] is
the path's end.

- `garch_t`: GARCH(1,1) with Student-t errors (the path scaled by one inverse-chi^2 draw a bar,
  which makes its end Student-t): the correct model is a fitted GARCH;
- `volume_driven`: sigma2[t+1] = s2 exp(a v[t] - a^2 / 2), v[t] the bar's log-volume shock,
  so the next bar's variance follows this bar's volume, which GARCH on returns and HAR on the
  proxy cannot see;
- `constant`: iid Gaussian returns of one variance: nothing beats the trailing mean.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STEPS = 24  # intraday steps of a bar's path


def bars(
    sigma2: np.ndarray,
    rng: np.random.Generator,
    log_volume: np.ndarray | None = None,
    mix: np.ndarray | None = None,
    start: str = "2001-01-01",
    price0: float = 100.0,
) -> pd.DataFrame:
    """OHLCV bars whose bar t is a Brownian path of variance sigma2[t] (times `mix[t]`)."""
    n = len(sigma2)
    scale = np.sqrt(sigma2 * (mix if mix is not None else 1.0) / STEPS)
    path = np.cumsum(rng.normal(0.0, 1.0, (n, STEPS)) * scale[:, None], axis=1)
    r = path[:, -1]
    close = price0 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[price0], close[:-1]])
    high = open_ * np.exp(np.maximum(path.max(axis=1), 0.0))
    low = open_ * np.exp(np.minimum(path.min(axis=1), 0.0))
    if log_volume is None:
        log_volume = rng.normal(13.0, 0.3, n)
    return pd.DataFrame(
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "adj_close": close,
            "volume": np.exp(log_volume).round(),
        },
        index=pd.bdate_range(start, periods=n, name="date"),
    )


def garch_t(
    n: int,
    omega: float = 2e-6,
    alpha: float = 0.08,
    beta: float = 0.90,
    nu: float = 6.0,
    seed: int = 0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """GARCH(1,1)-t bars and each bar's conditional variance sigma2[t] (known at t-1)."""
    rng = np.random.default_rng(seed)
    # Student-t with nu degrees of freedom and unit variance: a standard normal z times
    # sqrt(mix), mix = (nu - 2) / chi2_nu; the bar's whole path is scaled by the same mix
    mix = (nu - 2) / rng.chisquare(nu, n)
    z = rng.normal(0.0, 1.0, n)
    sigma2 = np.empty(n)
    s2 = omega / (1 - alpha - beta)
    for t in range(n):
        sigma2[t] = s2
        r = np.sqrt(s2 * mix[t]) * z[t]
        s2 = omega + alpha * r * r + beta * s2
    return _bars_with_ends(sigma2 * mix, z, rng), sigma2


def _bars_with_ends(var: np.ndarray, z: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Bars whose path t has variance var[t] and ends at sqrt(var[t]) z[t]: a Brownian bridge
    to that end (the path's shape drawn independently of its end)."""
    n = len(var)
    w = np.cumsum(rng.normal(0.0, 1.0, (n, STEPS)), axis=1) / np.sqrt(STEPS)
    frac = np.arange(1, STEPS + 1) / STEPS
    bridge = w - frac[None, :] * w[:, -1:]
    path = (bridge + frac[None, :] * z[:, None]) * np.sqrt(var)[:, None]
    r = path[:, -1]
    close = 100.0 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[100.0], close[:-1]])
    return pd.DataFrame(
        {
            "open": open_,
            "high": open_ * np.exp(np.maximum(path.max(axis=1), 0.0)),
            "low": open_ * np.exp(np.minimum(path.min(axis=1), 0.0)),
            "close": close,
            "adj_close": close,
            "volume": np.exp(rng.normal(13.0, 0.3, n)).round(),
        },
        index=pd.bdate_range("2001-01-01", periods=n, name="date"),
    )


def volume_driven(
    n: int, a: float = 0.8, vol: float = 0.01, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Bars whose variance follows the previous bar's log-volume shock v ~ N(0, 1):
    sigma2[t+1] = vol^2 exp(a v[t] - a^2 / 2) (mean vol^2); returns are otherwise iid."""
    rng = np.random.default_rng(seed)
    v = rng.normal(0.0, 1.0, n)
    sigma2 = np.full(n, vol**2)
    sigma2[1:] = vol**2 * np.exp(a * v[:-1] - a * a / 2)
    return bars(sigma2, rng, log_volume=13.0 + 0.5 * v), sigma2


def constant(n: int, vol: float = 0.01, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """iid Gaussian returns of variance vol^2."""
    rng = np.random.default_rng(seed)
    sigma2 = np.full(n, vol**2)
    return bars(sigma2, rng), sigma2


CASES = {"garch_t": garch_t, "volume_driven": volume_driven, "constant": constant}
