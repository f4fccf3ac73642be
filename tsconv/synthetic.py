"""Series whose best forecast is known: the pipeline's known-answer tests and benchmarks.

Each generator returns one-bar log returns r[0..n) and the oracle forecast of r[t+1] made at t's
close, E[r[t+1] | r[..t]], so the best achievable out-of-sample R^2 on any rows is computed from
the same draws the model sees. `ohlcv_from_returns` wraps returns into a consistent OHLCV frame
(its adjusted close has exactly these log returns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Small moves continue and large ones reverse: E[r[t+1] | r[t]] = a * sigma * tent(r[t] / sigma),
# tent(z) = z up to the knee K, then falling to -K at 3K and flat beyond (bounded, so the
# process is stationary for any a). With K = 0.8 and a = 1.3 the oracle explains about 27% of
# the variance while the best linear forecast from r[t] and |r[t]| explains under 1%.
TENT_KNEE = 0.8


def tent(z: np.ndarray) -> np.ndarray:
    a = np.abs(z)
    return np.sign(z) * np.maximum(np.minimum(a, 2 * TENT_KNEE - a), -TENT_KNEE)


def ar1(n: int, phi: float = 0.5, sigma: float = 0.01, seed: int = 0):
    """r[t] = phi r[t-1] + e[t]; oracle phi r[t]; oracle R^2 = phi^2."""
    e = np.random.default_rng(seed).normal(0, sigma, n)
    r = np.zeros(n)
    for t in range(1, n):
        r[t] = phi * r[t - 1] + e[t]
    return r, phi * r


def tent_ar(n: int, a: float = 1.3, sigma: float = 0.01, seed: int = 0):
    """r[t] = a s tent(r[t-1] / s) + e[t] with s = sigma: the size-dependent mean above."""
    e = np.random.default_rng(seed).normal(0, sigma, n)
    r = np.zeros(n)
    for t in range(1, n):
        r[t] = a * sigma * tent(r[t - 1] / sigma) + e[t]
    return r, a * sigma * tent(r / sigma)


def random_walk(n: int, sigma: float = 0.01, seed: int = 0):
    """Independent returns: nothing to forecast; the oracle is zero."""
    return np.random.default_rng(seed).normal(0, sigma, n), np.zeros(n)


SERIES = {"ar1": ar1, "tent": tent_ar, "random_walk": random_walk}


def index_panel(
    n: int = 2500, tickers: int = 3, beta: float = 1.0, gamma: float = 0.3, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A market index with independent daily log returns m, and tickers whose return on day t
    is beta m[t] + gamma m[t-2] + e[t]: they move with the market the same day (as stocks do)
    and follow it two days late, the predictable part. The target of a ticker's bar t,
    r[t+1], holds gamma m[t-1]: the index's return of the day before, known by t's close under
    any alignment rule, and nothing the ticker's own past holds. Returns (index OHLCV, the
    tickers' OHLCV)."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0, 0.01, n)
    index = ohlcv_from_returns(m, seed=seed, price0=1000.0)
    frames = {}
    for i in range(tickers):
        e = rng.normal(0, 0.01, n)
        r = beta * m + gamma * np.r_[0.0, 0.0, m[:-2]] + e
        frames[f"STOCK{i}"] = ohlcv_from_returns(r, seed=seed + 1 + i, price0=50.0)
    return index, frames


def ohlcv_from_returns(
    returns: np.ndarray, start: str = "2001-01-01", seed: int = 0, price0: float = 100.0
) -> pd.DataFrame:
    """A consistent OHLCV frame on business days whose adjusted close has exactly `returns`."""
    rng = np.random.default_rng(seed)
    n = len(returns)
    close = price0 * np.exp(np.cumsum(returns))
    open_ = close * np.exp(-returns * rng.uniform(0.2, 0.8, n))
    spread = np.abs(rng.normal(0, 0.005, n)) + 0.001
    high = np.maximum(open_, close) * (1 + spread)
    low = np.minimum(open_, close) * (1 - spread)
    volume = rng.lognormal(13, 0.3, n).round()
    dates = pd.bdate_range(start, periods=n, name="date")
    return pd.DataFrame(
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "adj_close": close,
            "volume": volume,
        },
        index=dates,
    )


def oracle_r2(realized: np.ndarray, oracle: np.ndarray) -> float:
    """Out-of-sample R^2 of the oracle forecast against the zero forecast on the same rows."""
    return 1 - float(np.sum((realized - oracle) ** 2)) / float(np.sum(realized**2))


def oracle_r2_of(pred: pd.DataFrame, oracles: dict[str, pd.Series]) -> float:
    """`oracle_r2` on the rows of a backtest's predictions.parquet (date, ticker, realized)."""
    best = [oracles[t][d] for t, d in zip(pred["ticker"], pred["date"], strict=True)]
    return oracle_r2(pred["realized"].to_numpy(), np.array(best))


# The known-answer cases (tests/test_known_answers.py, scripts/known_answers.py): every shipped
# config runs on each series unchanged but for data keys, plus, for the two large configs, the
# span keys that let a 3,000-bar series hold a few folds of them (2,000 training bars a fold: the
# multi-scale model's 21-bar branch has ~5,000 weights per 32 channels and needs the rows).
CASES = {  # series: (bars per ticker, tickers)
    "ar1": (3000, 1),
    "tent": (3000, 8),
    "random_walk": (3000, 2),
}
SPAN_KEYS = {
    "tcn": ["backtest.train_span=2000", "backtest.test_span=1000"],
    "multiscale": ["backtest.train_span=2000", "backtest.test_span=250"],
}


def case_frames(series: str, seed: int = 1) -> tuple[dict[str, pd.DataFrame], dict[str, pd.Series]]:
    """OHLCV frames of one known-answer case, and each ticker's oracle forecast by date."""
    n, tickers = CASES[series]
    frames, oracles = {}, {}
    for i in range(tickers):
        r, oracle = SERIES[series](n, seed=seed + i)
        name = f"{series.upper().replace('_', '')}{i}"
        frames[name] = ohlcv_from_returns(r, seed=seed + i)
        # oracle[t] forecasts the return from t to t+1: the target of row t
        oracles[name] = pd.Series(oracle, index=frames[name].index)
    return frames, oracles
