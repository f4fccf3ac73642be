"""A use of a volatility forecast that trades: volatility-managed buy-and-hold.

Each ticker is held long with weight target_vol / forecast volatility (annualised), at most
MAX_LEVERAGE, taken at t's close and earning the next bar's return, net of cost_bps per unit of
turnover; the tickers are averaged with equal weights each date. The same is done with every
baseline's forecast in place of the model's (`trailing_mean`: scaled by trailing volatility),
and plain buy-and-hold; the model-managed book's Sharpe ratio is tested against each
(Ledoit-Wolf, Holm-adjusted). Managing by a better volatility forecast should keep the
volatility nearer the target and, where volatility and returns are not aligned, lift the
Sharpe ratio (Moreira & Muir, 2017).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config
from tsconv.evaluate import metrics
from tsconv.evaluate.metrics import MAX_LEVERAGE

DEFAULT_TARGET_VOL = 0.10  # annualised, where backtest.target_vol is unset


def managed_returns(
    pred: pd.DataFrame, column: str | None, cfg: Config, periods: int
) -> tuple[pd.Series, pd.Series]:
    """(net return, turnover) per date of the book managed by variance forecast `column`
    (None: buy-and-hold, weight 1)."""
    target = cfg.backtest.target_vol or DEFAULT_TARGET_VOL
    h = cfg.target.horizon
    frame = pred[["date", "ticker", "realized_1"]].copy()
    if column is None:
        frame["w"] = 1.0
    else:
        vol = np.sqrt(pred[column].to_numpy() / h * periods)
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["w"] = np.clip(np.nan_to_num(target / vol, nan=0.0), 0.0, MAX_LEVERAGE)
    frame = frame.sort_values(["ticker", "date"], kind="stable")
    prev = frame.groupby("ticker")["w"].shift(1).fillna(0.0)
    frame["turnover"] = (frame["w"] - prev).abs()
    frame["net"] = frame["w"] * np.expm1(frame["realized_1"]) - (
        cfg.backtest.cost_bps / 1e4 * frame["turnover"]
    )
    by_date = frame.groupby("date", sort=True)[["net", "turnover"]].mean()
    return by_date["net"], by_date["turnover"]


def managed_strategies(
    pred: pd.DataFrame, cfg: Config, periods: int, forecasts: list[str]
) -> tuple[dict[str, Any], dict[str, pd.Series]]:
    """Metrics of the model-managed book and of each baseline's (`forecasts`) and of
    buy-and-hold, the model's Sharpe tests against each; and the net returns per date."""
    nets, out = {}, {}
    for name in ["prediction", *forecasts, "buy_and_hold"]:
        net, turnover = managed_returns(
            pred, None if name == "buy_and_hold" else name, cfg, periods
        )
        nets[name] = net
        out[name] = metrics.trading_metrics(net.to_numpy(), periods, turnover.to_numpy())
    tests = {}
    for name, other in nets.items():
        if name != "prediction":
            a, b = nets["prediction"].align(other, join="inner")
            tests[name] = metrics.sharpe_difference(a.to_numpy(), b.to_numpy())
    adjusted = metrics.holm([t["p_value"] for t in tests.values()])
    for t, p in zip(tests.values(), adjusted, strict=True):
        t["p_holm"] = p
    out["prediction"]["sharpe_vs"] = tests
    target = cfg.backtest.target_vol or DEFAULT_TARGET_VOL
    return {
        "target_vol": target,
        "max_leverage": MAX_LEVERAGE,
        "cost_bps": cfg.backtest.cost_bps,
        "strategies": out,
        "realised_vol_error": {
            name: abs(out[name]["annual_volatility"] - target) / target
            if out[name] and math.isfinite(out[name]["annual_volatility"])
            else None
            for name in nets
            if name != "buy_and_hold"
        },
    }, nets


def managed_return_strategy(
    rows: pd.DataFrame,
    vol: pd.DataFrame,
    cfg: Config,
    periods: int,
    target: float,
    horizon: int,
) -> tuple[dict[str, Any], dict[str, pd.Series]]:
    """A return model's strategy (`rows`: its `strategy_rows`, weight per date and ticker)
    volatility-managed: each weight times target / forecast annualised volatility (at most
    MAX_LEVERAGE), the forecast from a volatility backtest's `vol` (columns date, ticker,
    `prediction` and `trailing_mean`, variances over `horizon` bars); against the same scaled
    by trailing volatility, and unmanaged. Net of `cfg`'s costs; the tests: the model-managed
    book's Sharpe ratio against each other's (Ledoit-Wolf, Holm-adjusted)."""
    from tsconv.evaluate.strategy import by_date

    frame = rows.merge(vol, on=["date", "ticker"], how="inner")
    frame = frame.sort_values(["ticker", "date"], kind="stable")
    realised = np.expm1(frame["realized_1"].to_numpy())
    cost = cfg.backtest.cost_bps / 1e4
    nets, out = {}, {}
    for name, column in [
        ("vol_managed", "prediction"),
        ("trailing_vol_managed", "trailing_mean"),
        ("unmanaged", None),
    ]:
        if column is None:
            scale = np.ones(len(frame))
        else:
            ann = np.sqrt(frame[column].to_numpy() / horizon * periods)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.clip(np.nan_to_num(target / ann, nan=0.0), 0.0, MAX_LEVERAGE)
        w = frame["weight"].to_numpy() * scale
        g = frame.assign(_w=w)
        prev = g.groupby("ticker")["_w"].shift(1).fillna(0.0).to_numpy()
        book = g.assign(gross=w * realised, turnover=np.abs(w - prev))
        per_bar = by_date(book, cfg, "prediction")
        net = per_bar["gross"] - cost * per_bar["turnover"]
        nets[name] = net
        out[name] = metrics.trading_metrics(net.to_numpy(), periods, per_bar["turnover"].to_numpy())
    tests = {}
    for name in ("trailing_vol_managed", "unmanaged"):
        a, b = nets["vol_managed"].align(nets[name], join="inner")
        tests[name] = metrics.sharpe_difference(a.to_numpy(), b.to_numpy())
    adjusted = metrics.holm([t["p_value"] for t in tests.values()])
    for t, p in zip(tests.values(), adjusted, strict=True):
        t["p_holm"] = p
    out["vol_managed"]["sharpe_vs"] = tests
    return {"target_vol": target, "max_leverage": MAX_LEVERAGE, "strategies": out}, nets
