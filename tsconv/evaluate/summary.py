"""A backtest's numbers (metrics.json): forecast and trading metrics, tests, breakdowns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config
from tsconv.evaluate import metrics
from tsconv.evaluate.baselines import NAMES as BASELINES
from tsconv.evaluate.strategy import by_date, periods_per_year, quantile_table, strategy_rows
from tsconv.evaluate.verdict import backtest_verdict, bottom_line, edge


def summarize_backtest(
    pred: pd.DataFrame, cfg: Config
) -> tuple[dict[str, Any], dict[str, pd.Series]]:
    """metrics.json's contents for these walk-forward predictions, and the net return per bar
    of each strategy (the model's, each baseline's but the zero forecast's, and buy-and-hold),
    which returns.parquet holds and the report draws."""
    out: dict[str, Any] = {
        **predictions_span(pred, cfg),
        "forecast": {},
        "trading": {},
    }
    zero_loss = _squared_error_by_date(pred, 0.0)
    nets: dict[str, pd.Series] = {}
    rows: dict[str, pd.DataFrame] = {}
    for name in ["prediction", *BASELINES]:
        out["forecast"][name] = _forecast_metrics(pred, name, zero_loss, cfg)
        if name != "zero":
            rows[name] = strategy_rows(pred, name, cfg)
            out["trading"][name], nets[name] = _strategy_metrics(rows[name], pred, cfg, name)
    bh = pred.assign(buy_and_hold=1.0)
    out["trading"]["buy_and_hold"], nets["buy_and_hold"] = _strategy_metrics(
        strategy_rows(bh, "buy_and_hold", cfg), bh, cfg, "buy_and_hold"
    )
    out["forecast"]["prediction"]["dm_vs"] = _forecast_tests(pred, cfg)
    out["trading"]["prediction"]["sharpe_vs"] = _trading_tests(nets)
    out["by_ticker"] = breakdown(pred, cfg, "ticker", rows["prediction"])
    out["by_fold"] = breakdown(pred, cfg, "fold", rows["prediction"])
    ranked = cfg.backtest.portfolio != "per_ticker"
    out["quantiles"] = quantile_table(
        pred, "prediction", cfg.backtest.buckets, cfg.target.horizon, ranked=ranked
    )
    out["edge"] = edge(out)
    out["bottom_line"] = bottom_line(out)
    out["verdict"] = backtest_verdict(out)
    return metrics.clean(out), nets


def predictions_span(pred: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    """metrics.json's first keys, whatever the target: how many predictions, of which tickers,
    from when to when, in how many folds, and the bars a year they are annualised by."""
    return {
        "n_predictions": len(pred),
        "tickers": sorted(pred["ticker"].unique()),
        "first_date": str(pred["date"].min().date()),
        "last_date": str(pred["date"].max().date()),
        "folds": int(pred["fold"].nunique()),
        "periods_per_year": periods_per_year(pred, cfg),
    }


def _forecast_metrics(
    pred: pd.DataFrame, name: str, zero_loss: np.ndarray, cfg: Config
) -> dict[str, Any]:
    """The forecast in column `name` against the realised returns: pooled metrics, the IC per
    fold and its summary, the mean cross-sectional rank IC (3+ tickers), and a DM test
    against the zero forecast (`zero_loss`: its squared error by date)."""
    fm = metrics.forecast_metrics(pred[name].to_numpy(), pred["realized"].to_numpy())
    folds = [g for _, g in pred.groupby("fold")]
    per_fold = [metrics.pearson(g[name].to_numpy(), g["realized"].to_numpy()) for g in folds]
    fm["ic_per_fold"] = per_fold
    fm["ic_summary"] = metrics.ic_summary(per_fold, [len(g) for g in folds])
    if pred["ticker"].nunique() >= 3:
        xs = [
            metrics.spearman(g[name].to_numpy(), g["realized"].to_numpy())
            for _, g in pred.groupby("date")
            if len(g) >= 3
        ]
        xs = [v for v in xs if np.isfinite(v)]
        fm["cross_sectional_rank_ic"] = float(np.mean(xs)) if xs else None
    if name != "zero":
        loss = _squared_error_by_date(pred, pred[name])
        fm["dm_vs_zero"] = metrics.diebold_mariano(loss, zero_loss, cfg.target.horizon)
    return fm


def _forecast_tests(pred: pd.DataFrame, cfg: Config) -> dict[str, dict[str, Any]]:
    """DM test of the model's squared error against each baseline's (per-date mean losses),
    with Holm-adjusted p-values over the baselines."""
    model = _squared_error_by_date(pred, pred["prediction"])
    tests = {}
    for b in BASELINES:
        other = _squared_error_by_date(pred, pred[b])
        tests[b] = metrics.diebold_mariano(model, other, cfg.target.horizon)
    return _with_holm(tests)


def _trading_tests(nets: dict[str, pd.Series]) -> dict[str, dict[str, Any]]:
    """Ledoit-Wolf test of the model strategy's Sharpe ratio against each other strategy's
    (net of costs, same bars), with Holm-adjusted p-values."""
    model = nets["prediction"]
    tests = {}
    for name, other in nets.items():
        if name == "prediction":
            continue
        a, b = model.align(other, join="inner")
        tests[name] = metrics.sharpe_difference(a.to_numpy(), b.to_numpy())
    return _with_holm(tests)


def _with_holm(tests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each test with its Holm-adjusted p-value over the family, `p_holm`."""
    adjusted = metrics.holm([t["p_value"] for t in tests.values()])
    for t, p in zip(tests.values(), adjusted, strict=True):
        t["p_holm"] = p
    return tests


def breakdown(
    pred: pd.DataFrame, cfg: Config, by: str, strat: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """The model's forecast and strategy figures per ticker or per fold (`by`): R^2, IC,
    directional accuracy with its standard error, and the net Sharpe ratio with its 95%
    interval, from the model strategy's rows of the whole run (`strategy_rows`)."""
    out = {}
    held = dict(iter(strat.groupby(by, sort=False)))  # each key's rows, once (not a scan a key)
    for key, g in pred.groupby(by, sort=True):
        f = metrics.forecast_metrics(g["prediction"].to_numpy(), g["realized"].to_numpy())
        t, _ = _strategy_metrics(held.get(key, strat.iloc[:0]), g, cfg, "prediction")
        out[str(key)] = {
            "n": f["n"],
            "r2_oos": f["r2_oos"],
            "ic": f["ic"],
            "directional_accuracy": f["directional_accuracy"],
            "directional_accuracy_se": f["directional_accuracy_se"],
            "sharpe": t.get("sharpe"),
            "sharpe_ci95": t.get("sharpe_ci95"),
            "annual_return": t.get("annual_return"),
            "in_market": t.get("in_market"),
        }
    return out


def _strategy_metrics(
    rows: pd.DataFrame, frame: pd.DataFrame, cfg: Config, column: str
) -> tuple[dict[str, Any], pd.Series]:
    """Trading metrics of the strategy built on `column` (its `strategy_rows`: per ticker or a
    cross-sectional book), at the config's cost, plus gross figures and what other costs would
    do; and its net returns."""
    cost = cfg.backtest.cost_bps / 1e4
    periods = periods_per_year(frame, cfg)
    per_bar = by_date(rows, cfg, column)
    gross, turnover = per_bar["gross"], per_bar["turnover"]
    net = gross - cost * turnover
    out = metrics.trading_metrics(net.to_numpy(), periods, turnover.to_numpy())
    if out:
        held = rows.assign(_held=rows["weight"] != 0).groupby("date")["_held"].any()
        out["in_market"] = float(held.mean())
        gross_m = metrics.trading_metrics(gross.to_numpy(), periods)
        out["gross_annual_return"] = gross_m["annual_return"]
        out["gross_sharpe"] = gross_m["sharpe"]
        out["cost_drag_annual"] = float(cost * turnover.mean() * periods)
        out.update(metrics.cost_sensitivity(gross.to_numpy(), turnover.to_numpy(), periods))
    return out, net


def _squared_error_by_date(pred: pd.DataFrame, forecast: pd.Series | float) -> np.ndarray:
    """The forecast's squared error averaged across tickers on each date, in date order: the
    loss series the Diebold-Mariano tests compare."""
    loss = pred.assign(_loss=(forecast - pred["realized"]) ** 2)
    return loss.groupby("date", sort=True)["_loss"].mean().to_numpy()
