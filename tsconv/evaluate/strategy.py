"""From forecasts to what a strategy holds: per-ticker positions or cross-sectional portfolios,
and the quantile (bucket) analysis of realised returns by forecast.

A strategy is a frame of rows per (date, ticker): the `weight` held from that bar's close to
the next, its `gross` return contribution and its `turnover` (|change of weight|). `by_date`
turns the rows into the strategy's return per bar: the mean over tickers for `per_ticker`
(each ticker traded on its own, equal-weighted), the sum for a cross-sectional portfolio
(weights already sum to its exposure).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config
from tsconv.evaluate import metrics


def periods_per_year(frame: pd.DataFrame, cfg: Config) -> int:
    """The config's `backtest.periods_per_year`, else inferred from the predicted bars' dates."""
    return cfg.backtest.periods_per_year or metrics.infer_periods_per_year(frame["date"])


def strategy_rows(frame: pd.DataFrame, column: str, cfg: Config) -> pd.DataFrame:
    """The strategy trading the forecast `column` (or `buy_and_hold`, always per ticker: the
    equal-weighted panel held throughout): rows of date, ticker, fold, weight, gross, turnover."""
    if column == "buy_and_hold" or cfg.backtest.portfolio == "per_ticker":
        return _per_ticker_rows(frame, column, cfg)
    return _cross_sectional_rows(frame, column, cfg)


def by_date(rows: pd.DataFrame, cfg: Config, column: str = "") -> pd.DataFrame:
    """Gross return and turnover of the strategy per bar (see the module's docstring)."""
    grouped = rows.groupby("date", sort=True)[["gross", "turnover"]]
    if column == "buy_and_hold" or cfg.backtest.portfolio == "per_ticker":
        return grouped.mean()
    return grouped.sum()


def _per_ticker_rows(frame: pd.DataFrame, column: str, cfg: Config) -> pd.DataFrame:
    bt = cfg.backtest
    periods = periods_per_year(frame, cfg)
    parts = []
    for ticker, g in frame.groupby("ticker", sort=False):
        g = g.set_index("date")
        if column == "buy_and_hold":  # held throughout, no trading costs
            pos = pd.Series(1.0, index=g.index)
            turn = pd.Series(0.0, index=g.index)
        else:
            pos = metrics.positions(g[column], bt.position, threshold=bt.cost_bps / 1e4)
            if bt.target_vol is not None:
                pos = metrics.target_volatility(pos, g["realized_1"], bt.target_vol, periods)
            turn = pos.diff().abs().fillna(pos.abs())
        gross = metrics.trading_returns(pos, g["realized_1"], 0.0)
        parts.append(
            pd.DataFrame(
                {
                    "ticker": ticker,
                    "fold": g["fold"],
                    "weight": pos,
                    "gross": gross,
                    "turnover": turn,
                }
            ).rename_axis("date")
        )
    return pd.concat(parts).reset_index()


def cross_sectional_weights(
    scores: pd.DataFrame,
    kind: str,
    top_k: int | None = None,
    quantile: float = 0.2,
    weighting: str = "equal",
) -> pd.DataFrame:
    """Portfolio weights per date (rows) and ticker (columns) from forecasts `scores` (NaN:
    ticker not tradable that date). Each date ranks the tickers by forecast; the long leg is
    the top k (`top_k`, else `quantile` of the tickers, at least one), the short leg the bottom
    k. `equal`: the same weight in each leg; `rank`: weight proportional to the distance of the
    ticker's rank from the middle rank. `long_short` legs sum to +0.5 and -0.5 (gross exposure
    1, market-neutral); `long_only` holds the long leg, summing to 1. Dates with fewer than two
    tradable tickers, or no spread in the forecasts, hold nothing."""
    n = scores.notna().sum(axis=1).to_numpy()[:, None]
    rank = scores.rank(axis=1, method="first").to_numpy()
    if top_k is not None:
        k = np.full_like(n, top_k, dtype=float)
    else:
        k = np.maximum(np.floor(n * quantile), 1)
    k = np.minimum(k, n // 2) if kind == "long_short" else np.minimum(k, n)
    centre = (n + 1) / 2
    size = np.abs(rank - centre) if weighting == "rank" else np.ones_like(rank)
    spread = (scores.max(axis=1) > scores.min(axis=1)).to_numpy()[:, None]
    live = (n >= 2) & (k >= 1) & spread
    long = live & (rank > n - k)
    short = live & (rank <= k) if kind == "long_short" else np.zeros_like(long)
    exposure = 0.5 if kind == "long_short" else 1.0
    w = np.zeros(scores.shape)
    for leg, sign in ((long, 1.0), (short, -1.0)):
        legs = np.where(leg, size, 0.0)
        total = legs.sum(axis=1, keepdims=True)
        w += sign * exposure * np.divide(legs, total, out=np.zeros_like(legs), where=total > 0)
    return pd.DataFrame(w, index=scores.index, columns=scores.columns)


def _cross_sectional_rows(frame: pd.DataFrame, column: str, cfg: Config) -> pd.DataFrame:
    bt = cfg.backtest
    scores = frame.pivot(index="date", columns="ticker", values=column).sort_index()
    ret = np.expm1(frame.pivot(index="date", columns="ticker", values="realized_1"))
    ret = ret.reindex_like(scores).fillna(0.0)
    w = cross_sectional_weights(scores, bt.portfolio, bt.top_k, bt.quantile, bt.weighting)
    if bt.target_vol is not None:
        # scale the whole book by target / its own trailing volatility, known at the bar
        book = (w * ret).sum(axis=1)
        lev = metrics.target_volatility(
            pd.Series(1.0, index=w.index), book, bt.target_vol, periods_per_year(frame, cfg)
        )
        w = w.mul(lev, axis=0)
    turnover = w.diff().abs()
    turnover.iloc[:1] = w.iloc[:1].abs()  # the first bar opens the book
    rows = pd.DataFrame(
        {
            "weight": w.stack(),
            "gross": (w * ret).stack(),
            "turnover": turnover.stack(),
        }
    ).reset_index()
    fold = frame.groupby("date")["fold"].first()
    rows["fold"] = rows["date"].map(fold)
    return rows[["date", "ticker", "fold", "weight", "gross", "turnover"]]


def _date_clustered(df: pd.DataFrame, means: pd.Series, n: pd.Series, top: int, bottom: int):
    """Standard errors of each bucket's mean realised return with the rows of one date as one
    cluster (two tickers of one date share its market move, so their rows are not two
    independent draws), and the covariance of the `top` and `bottom` buckets' means (rows of
    one date in both; 0 on one ticker). Where no date has two rows in a bucket the standard
    error is the iid one exactly."""
    dev = df["realized"] - df["bucket"].map(means)
    sums = dev.groupby([df["bucket"], df["date"]]).sum()  # one sum per bucket and date
    dates = sums.groupby(level="bucket").size()
    iid = df.groupby("bucket")["realized"].std(ddof=1) / np.sqrt(n)
    clustered = (
        np.sqrt((sums**2).groupby(level="bucket").sum() * dates / (dates - 1).clip(lower=1)) / n
    )
    both = sums.loc[top].to_frame("a").join(sums.loc[bottom].to_frame("b"), how="inner")
    shared = float((both["a"] * both["b"]).sum() / (n[top] * n[bottom]))
    return iid.where(dates == n, clustered), shared


def quantile_table(
    frame: pd.DataFrame,
    column: str,
    buckets: int,
    horizon: int = 1,
    pooled: bool = False,
    ranked: bool = False,
) -> dict[str, Any]:
    """Mean realised return by forecast bucket, and the top-minus-bottom spread.

    `cross_sectional` when every date has at least `buckets` tickers, or, for a book `ranked`
    across tickers, at least two (then as many buckets as the thinnest date has tickers): each
    date's tickers are bucketed by rank and the bucket means averaged over dates; standard
    errors are across dates, the spread's with Newey-West lags h - 1 (h-bar targets overlap).
    Otherwise, or with `pooled`, `pooled`: all predictions bucketed by the quantiles of the
    whole test span (standard errors with each date's rows as one cluster: iid on one ticker),
    a description of calibration rather than a tradable rule."""
    df = frame[["date", column, "realized"]].dropna()
    if df.empty:
        return {}
    thinnest = int(df.groupby("date").size().min())
    if not pooled and (thinnest >= buckets or (ranked and thinnest >= 2)):
        method, buckets = "cross_sectional", min(buckets, thinnest)
        pct = df.groupby("date")[column].rank(method="first", pct=True)
        df = df.assign(bucket=np.ceil(pct * buckets).astype(int))
        means = df.groupby(["date", "bucket"])[[column, "realized"]].mean()
        by_bucket = means.groupby("bucket")
        table = by_bucket.mean()
        se = by_bucket["realized"].std(ddof=1) / np.sqrt(by_bucket.size())
        n = df.groupby("bucket").size()
        wide = means["realized"].unstack()
        diff = (wide[buckets] - wide[1]).dropna().to_numpy()
        spread_mean = float(diff.mean()) if len(diff) else math.nan
        lrv = metrics.newey_west_variance(diff, horizon - 1) if len(diff) > 1 else math.nan
        spread_se = math.sqrt(lrv / len(diff)) if lrv > 0 else math.nan
    else:
        method = "pooled"
        pct = df[column].rank(method="first", pct=True)
        df = df.assign(bucket=np.ceil(pct * buckets).astype(int))
        grouped = df.groupby("bucket")
        table = grouped[[column, "realized"]].mean()
        n = grouped.size()
        top, bottom = table.index[-1], table.index[0]
        se, shared = _date_clustered(df, table["realized"], n, top, bottom)
        spread_mean = float(table["realized"].iloc[-1] - table["realized"].iloc[0])
        # var(top - bottom) = se_top^2 + se_bottom^2 - 2 cov; hypot where cov is 0 (one
        # ticker), as before, bit for bit
        spread_var = se[top] ** 2 + se[bottom] ** 2 - 2 * shared
        if shared == 0:
            spread_se = float(math.hypot(se[top], se[bottom]))
        else:
            spread_se = math.sqrt(spread_var) if spread_var > 0 else math.nan
    t = spread_mean / spread_se if spread_se > 0 else math.nan
    rows = [
        {
            "bucket": int(b),
            "n": int(n[b]),
            "mean_prediction": float(table.loc[b, column]),
            "mean_realized": float(table.loc[b, "realized"]),
            "se": float(se[b]),
        }
        for b in table.index
    ]
    return {
        "method": method,
        "buckets": rows,
        "spread": {
            "mean": spread_mean,
            "se": spread_se,
            "t_stat": t,
            "p_value": metrics.normal_two_sided(t) if np.isfinite(t) else math.nan,
        },
    }


def position_words(cfg: Config) -> str:
    """The rule that turns a forecast into what the backtest holds, in words (`tsconv
    predict` shows the position it gives the latest forecast)."""
    bt = cfg.backtest
    if bt.portfolio != "per_ticker":
        k = f"{bt.top_k}" if bt.top_k else f"{bt.quantile:.0%}"
        legs = f"top {k} long, bottom {k} short" if bt.portfolio == "long_short" else f"top {k}"
        rule = (
            f"backtest.portfolio {bt.portfolio}: weight in a book of these tickers ranked by "
            f"forecast ({legs}, {bt.weighting} weights)"
        )
    elif bt.position == "sign":
        rule = "backtest.position sign: long 1 on a positive forecast, short 1 on a negative one"
    elif bt.position == "threshold":
        rule = (
            f"backtest.position threshold: long or short 1 only where |forecast| > the cost, "
            f"{bt.cost_bps:g} bps (backtest.cost_bps), else flat"
        )
    else:
        rule = (
            "backtest.position scaled: the forecast over the std of the model's 63 forecasts "
            "before it, clipped to [-1, 1]"
        )
    if bt.target_vol is not None:
        rule += (
            f"; times target_vol {bt.target_vol:g} over the trailing annualised volatility, "
            f"at most {metrics.MAX_LEVERAGE:g}x"
        )
    return rule
