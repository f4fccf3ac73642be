"""Causal features and the next-step return target.

Every feature value at row t uses bars <= t only. The target at row t is the log return from t to
t+h, known only at t+h; it is NaN for the last h rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tsconv.errors import ConfigError, DataError

Feature = Callable[[pd.DataFrame, pd.Series], pd.Series]


def _log_return(f: pd.DataFrame, p: pd.Series) -> pd.Series:
    return np.log(p).diff()


def _oc_return(f: pd.DataFrame, p: pd.Series) -> pd.Series:
    return np.log(f["close"] / f["open"])


def _hl_range(f: pd.DataFrame, p: pd.Series) -> pd.Series:
    return np.log(f["high"] / f["low"])


def _close_loc(f: pd.DataFrame, p: pd.Series) -> pd.Series:
    span = f["high"] - f["low"]
    loc = (f["close"] - f["low"]) / span.where(span > 0)
    return loc.fillna(0.5).clip(0.0, 1.0)


def _log_volume_chg(f: pd.DataFrame, p: pd.Series) -> pd.Series:
    return np.log1p(f["volume"]).diff()


def _vol(n: int) -> Feature:
    return lambda f, p: np.log(p).diff().rolling(n, min_periods=n).std()


def _volume_z(n: int) -> Feature:
    def z(f: pd.DataFrame, p: pd.Series) -> pd.Series:
        lv = np.log1p(f["volume"])
        roll = lv.rolling(n, min_periods=n)
        sd = roll.std()
        return ((lv - roll.mean()) / sd.where(sd > 0)).where(sd.isna() | (sd > 0), 0.0)

    return z


def _mom(n: int) -> Feature:
    return lambda f, p: np.log(p / p.shift(n))


FIXED: dict[str, tuple[Feature, int]] = {
    # name: (function, bars of history needed before the first valid value)
    "log_return": (_log_return, 1),
    "oc_return": (_oc_return, 0),
    "hl_range": (_hl_range, 0),
    "close_loc": (_close_loc, 0),
    "log_volume_chg": (_log_volume_chg, 1),
}
PARAMETRIC: dict[str, Callable[[int], Feature]] = {"vol": _vol, "volume_z": _volume_z, "mom": _mom}
_PARAM = re.compile(r"^(vol|volume_z|mom)_(\d+)$")


def resolve(name: str) -> tuple[Feature, int]:
    if name in FIXED:
        return FIXED[name]
    m = _PARAM.match(name)
    if m and 2 <= int(m.group(2)) <= 1000:
        n = int(m.group(2))
        return PARAMETRIC[m.group(1)](n), n
    raise KeyError(name)


def check_feature_names(names: list[str]) -> None:
    for name in names:
        try:
            resolve(name)
        except KeyError:
            valid = ", ".join([*FIXED, "vol_N", "volume_z_N", "mom_N (N in 2..1000)"])
            raise ValueError(f"unknown feature {name!r}; valid: {valid}") from None
    if len(set(names)) != len(names):
        raise ValueError("a feature is listed twice")


def warmup(names: list[str]) -> int:
    return max(resolve(n)[1] for n in names)


def compute_features(
    frame: pd.DataFrame, names: list[str], price: str = "adj_close"
) -> pd.DataFrame:
    p = frame[price]
    cols = {}
    for name in names:
        try:
            fn, _ = resolve(name)
        except KeyError:
            raise ConfigError(f"features: unknown feature {name!r}") from None
        cols[name] = fn(frame, p).astype("float64")
    return pd.DataFrame(cols, index=frame.index)


def make_target(frame: pd.DataFrame, horizon: int = 1, price: str = "adj_close") -> pd.Series:
    """Row t: log(p[t+h] / p[t]), the return earned by a position taken at t's close."""
    p = np.log(frame[price])
    return (p.shift(-horizon) - p).rename(f"ret_{horizon}")


@dataclass
class TickerData:
    """Features and targets of one ticker as float arrays on a shared row axis."""

    ticker: str
    dates: pd.DatetimeIndex
    x: np.ndarray  # (T, F) float32, finite
    y: np.ndarray  # (T,) float64, NaN where the future is not yet known
    ret1: np.ndarray  # (T,) float64 one-bar forward log return, for the trading simulation
    logp: np.ndarray  # (T,) float64 log price, for the naive baselines
    feature_names: list[str]


def build(
    frames: dict[str, pd.DataFrame], names: list[str], horizon: int, price: str = "adj_close"
) -> dict[str, TickerData]:
    """Features and targets per ticker; leading rows without full feature history are dropped."""
    out = {}
    for ticker, frame in frames.items():
        feats = compute_features(frame, names, price)
        finite = np.isfinite(feats.to_numpy()).all(axis=1)
        if not finite.any():
            raise DataError(
                f"{ticker}: too few bars to compute features {names} ({len(frame)} rows)"
            )
        first = int(np.argmax(finite))
        if not finite[first:].all():
            bad = first + int(np.argmax(~finite[first:]))
            raise DataError(f"{ticker}: non-finite feature value on {frame.index[bad].date()}")
        target = make_target(frame, horizon, price).to_numpy()
        ret1 = make_target(frame, 1, price).to_numpy()
        out[ticker] = TickerData(
            ticker=ticker,
            dates=frame.index[first:],
            x=feats.to_numpy(dtype=np.float32)[first:],
            y=target[first:],
            ret1=ret1[first:],
            logp=np.log(frame[price].to_numpy(dtype=np.float64))[first:],
            feature_names=list(names),
        )
    return out
