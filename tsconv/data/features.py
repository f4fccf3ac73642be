"""Causal features and the next-step return target.

Every feature value at row t uses bars <= t only. The target at row t is the log return from t to
t+h, known only at t+h; it is NaN for the last h rows.

`build` computes a whole panel at once: the tickers' bars are stacked into one frame and each
feature runs once over it, paying pandas' fixed cost per call once rather than once a ticker.
A diff, shift or rolling window near the start of a ticker then reads the previous ticker's
bars; those rows are exactly the ones a feature leaves empty on its own ticker (`lead`), and
are emptied again. An exponentially weighted mean remembers every bar before it, so it runs
once per ticker (`PER_TICKER`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tsconv.errors import ConfigError, DataError
from tsconv.feature_names import in_return_units, parse_feature_name

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


# ewvol_N's first value: once min(N, EW_FIRST) returns are in (an average of 20 squared returns
# is already a usable scale; waiting for N of a long span would cost that many bars of history)
EW_FIRST = 20


def _ewvol(n: int) -> Feature:
    """The exponentially weighted volatility of log returns, span N: weights fall by
    (N - 1) / (N + 1) a bar (RiskMetrics' lambda = 0.94 is N = 32), averaged over the returns
    available so far (pandas' adjust=True)."""
    first = min(n, EW_FIRST)
    return lambda f, p: (np.log(p).diff() ** 2).ewm(span=n, min_periods=first).mean() ** 0.5


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
    # name: (function, lead: the leading rows it leaves empty, i.e. the bars of history its
    # first value needs)
    "log_return": (_log_return, 1),
    "oc_return": (_oc_return, 0),
    "hl_range": (_hl_range, 0),
    "close_loc": (_close_loc, 0),
    "log_volume_chg": (_log_volume_chg, 1),
}
PARAMETRIC: dict[str, Callable[[int], Feature]] = {
    "vol": _vol,
    "ewvol": _ewvol,
    "volume_z": _volume_z,
    "mom": _mom,
}
# vol_N: a diff, then N returns; ewvol_N: a diff, then min(N, EW_FIRST) returns;
# volume_z_N: N volumes; mom_N: a shift by N
LEAD: dict[str, Callable[[int], int]] = {
    "vol": lambda n: n,
    "ewvol": lambda n: min(n, EW_FIRST),
    "volume_z": lambda n: n - 1,
    "mom": lambda n: n,
}
# features with no end to their memory: on stacked tickers each runs on its own ticker's rows
PER_TICKER = ("ewvol",)


def resolve(name: str) -> tuple[Feature, int]:
    """(function, lead) of a feature name (tsconv.feature_names); KeyError for an unknown one."""
    kind, n = parse_feature_name(name)
    if n is None:
        return FIXED[kind]
    return PARAMETRIC[kind](n), LEAD[kind](n)


def warmup(names: list[str]) -> int:
    return max((resolve(n)[1] for n in names if not n.startswith("col:")), default=0)


def compute_features(
    frame: pd.DataFrame,
    names: list[str],
    price: str = "adj_close",
    position: np.ndarray | None = None,
) -> pd.DataFrame:
    """Features of one ticker's bars, or of several stacked, with `position` each row's index
    within its own ticker: rows before a feature's lead are then emptied."""
    p = frame[price]
    cols = {}
    for name in names:
        try:
            fn, lead = resolve(name)
        except KeyError:
            raise ConfigError(f"features: unknown feature {name!r}") from None
        if position is not None and parse_feature_name(name)[0] in PER_TICKER:
            values = _per_ticker(fn, frame, p, position)
        else:
            values = fn(frame, p).to_numpy(dtype="float64", copy=True)
        if position is not None and lead:
            values[position < lead] = np.nan
        cols[name] = values
    return pd.DataFrame(cols, index=frame.index)


def _per_ticker(fn: Feature, frame: pd.DataFrame, p: pd.Series, position: np.ndarray) -> np.ndarray:
    """fn on each stacked ticker's rows alone (a ticker starts where `position` is 0)."""
    bounds = [*np.flatnonzero(position == 0), len(position)]
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    parts = [fn(frame.iloc[a:b], p.iloc[a:b]) for a, b in spans]
    return np.concatenate([s.to_numpy(dtype="float64") for s in parts])


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
    # risk targets only (tsconv.data.targets.risk_columns): proxy, base, rv; y is then the
    # log variance target
    risk: dict[str, np.ndarray] | None = None


def forward_log_return(logp: np.ndarray, horizon: int, lengths: np.ndarray) -> np.ndarray:
    """Row t: logp[t+h] - logp[t] within each stacked ticker, NaN for its last h rows."""
    out = np.full(len(logp), np.nan)
    out[:-horizon] = logp[horizon:] - logp[:-horizon]
    ends = np.cumsum(lengths)
    position_from_end = np.repeat(ends, lengths) - np.arange(len(logp))
    out[position_from_end <= horizon] = np.nan
    return out


def stack(frames: dict[str, pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The tickers' bars one after another, `columns` only, on a plain row index."""
    # one array per frame: a column lookup per frame and column cost 30 us each
    where: dict[tuple, np.ndarray] = {}
    parts = []
    for f in frames.values():
        key = tuple(f.columns)
        if key not in where:
            where[key] = f.columns.get_indexer(columns)
        parts.append(f.to_numpy(dtype=np.float64)[:, where[key]])
    return pd.DataFrame(np.concatenate(parts), columns=columns)


# Tickers stacked per pass: large enough that pandas' fixed costs vanish, small enough that the
# stacked arrays stay in the CPU's caches.
STACK_TICKERS = 256


@dataclass(frozen=True)
class UserColumns:
    """How `col:NAME` features read a ticker's own extra columns: a value dated t is used on
    bar t only when known at the close (otherwise from the next bar), gaps forward-filled for
    at most `fill_limit` bars when `fill` (data.nan_policy ffill)."""

    known_at: str = "next_open"
    fill: bool = True
    fill_limit: int = 5


def build(
    frames: dict[str, pd.DataFrame],
    names: list[str],
    horizon: int,
    price: str = "adj_close",
    covariates: Sequence[Any] = (),
    columns: UserColumns = UserColumns(),
    risk: str | None = None,
) -> dict[str, TickerData]:
    """Features and targets per ticker; leading rows without full feature history are dropped.
    `covariates` (tsconv.covariates.Covariate) add their aligned columns after `names`.
    `risk`: a variance proxy (tsconv.data.targets): the target is then the next bars'
    variance, and rows without the proxy's trailing mean are dropped as well."""
    items = list(frames.items())
    out = {}
    for i in range(0, len(items), STACK_TICKERS):
        part = dict(items[i : i + STACK_TICKERS])
        out.update(_build_stacked(part, names, horizon, price, covariates, columns, risk))
    return out


def _user_column(frame: pd.DataFrame, ticker: str, name: str, rule: UserColumns) -> np.ndarray:
    col = name.removeprefix("col:")
    if col not in frame:
        extra = [
            c
            for c in frame.columns
            if c not in ("open", "high", "low", "close", "adj_close", "volume")
        ]
        raise DataError(
            f"features: {name}: {ticker} has no numeric column {col!r} "
            f"(its columns beyond OHLCV: {', '.join(extra) or 'none'})"
        )
    values = frame[col]
    if rule.fill:
        values = values.ffill(limit=rule.fill_limit)
    if rule.known_at == "next_open":
        values = values.shift(1)
    return values.to_numpy(dtype="float64")


def _build_stacked(
    frames: dict[str, pd.DataFrame],
    names: list[str],
    horizon: int,
    price: str,
    covariates: Sequence[Any],
    columns: UserColumns,
    risk: str | None = None,
) -> dict[str, TickerData]:
    if not frames:
        return {}
    lengths = np.array([len(f) for f in frames.values()])
    starts = np.cumsum(lengths) - lengths
    shared = set.intersection(*(set(f.columns) for f in frames.values()))
    big = stack(frames, sorted(shared & {price, "open", "high", "low", "close", "volume"}))
    position = np.arange(len(big)) - np.repeat(starts, lengths)
    own = [n for n in names if not n.startswith("col:")]
    feats_all = compute_features(big, own, price, position).to_numpy()
    logp_all = np.log(big[price].to_numpy())
    target_all = forward_log_return(logp_all, horizon, lengths)
    ret1_all = target_all if horizon == 1 else forward_log_return(logp_all, 1, lengths)
    risk_all = None
    if risk is not None:
        from tsconv.data import targets

        ohlc = stack(frames, ["open", "high", "low", "close"])
        risk_all = targets.risk_columns(ohlc, logp_all, lengths, horizon, risk)
        risk_all["ret"] = target_all  # the next h bars' log return, which quantiles forecast
        target_all = risk_all.pop("y")
        # The target is the next bars' variance relative to its trailing mean `base`; the
        # inputs in units of return are read relative to the same scale, so that a calm and a
        # wild year look alike to the model, and a volatility never seen in training is not
        # an input never seen in training (docs/models.md, "Risk targets' inputs")
        scaled = [j for j, name in enumerate(own) if in_return_units(name)]
        feats_all = feats_all.copy()  # pandas' array is read-only
        feats_all[:, scaled] /= np.sqrt(risk_all["base"])[:, None]
    inputs = [*names, *(c for cov in covariates for c in cov.values.columns)]
    out = {}
    for (ticker, frame), lo, n in zip(frames.items(), starts, lengths, strict=True):
        feats = feats_all[lo : lo + n]
        if len(own) < len(names):
            by_name = dict(zip(own, feats.T, strict=True))
            feats = np.column_stack(
                [
                    by_name[name] if name in by_name else _user_column(frame, ticker, name, columns)
                    for name in names
                ]
            )
        if covariates:
            feats = np.hstack([feats, *(cov.align(frame.index, ticker) for cov in covariates)])
        finite = np.isfinite(feats).all(axis=1)
        if risk_all is not None:
            finite &= np.isfinite(risk_all["base"][lo : lo + n])
        if not finite.any():
            raise DataError(
                f"{ticker}: too few bars to compute features {inputs} ({len(frame)} rows)"
            )
        first = int(np.argmax(finite))
        if not finite[first:].all():
            bad = first + int(np.argmax(~finite[first:]))
            which = [inputs[j] for j in np.flatnonzero(~np.isfinite(feats[bad]))]
            raise DataError(
                f"{ticker}: feature {', '.join(which)} is missing or not finite on "
                f"{frame.index[bad].date()}"
            )
        rows = slice(lo + first, lo + n)
        out[ticker] = TickerData(
            ticker=ticker,
            dates=frame.index[first:],
            x=feats[first:].astype(np.float32),
            y=target_all[rows].copy(),
            ret1=ret1_all[rows].copy(),
            logp=logp_all[rows].copy(),
            feature_names=inputs,
            risk=None if risk_all is None else {k: v[rows].copy() for k, v in risk_all.items()},
        )
    return out
