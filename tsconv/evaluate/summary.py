"""A backtest's numbers (metrics.json): forecast and trading metrics, tests, breakdowns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config
from tsconv.evaluate import metrics
from tsconv.evaluate.baselines import NAMES as BASELINES
from tsconv.evaluate.strategy import by_date, periods_per_year, quantile_table, strategy_rows
from tsconv.evaluate.verdict import verdict


def _per_date_mean(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame.groupby("date", sort=True)[column].mean().to_numpy()


def _trading(frame: pd.DataFrame, column: str, cfg: Config) -> tuple[dict[str, Any], pd.Series]:
    """Trading metrics of the strategy built on `column` (per ticker or a cross-sectional book,
    `tsconv.portfolio`), at the config's cost, plus gross figures and what other costs would
    do; and its net returns."""
    return _portfolio_metrics(strategy_rows(frame, column, cfg), frame, cfg, column)


def _portfolio_metrics(
    rows: pd.DataFrame, frame: pd.DataFrame, cfg: Config, column: str
) -> tuple[dict[str, Any], pd.Series]:
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


def breakdown(
    pred: pd.DataFrame, cfg: Config, by: str, strat: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """The model's forecast and strategy figures per ticker or per fold (`by`): R^2, IC,
    directional accuracy with its standard error, and the net Sharpe ratio with its 95%
    interval, from the model strategy's rows of the whole run (`strategy_rows`)."""
    out = {}
    for key, g in pred.groupby(by, sort=True):
        f = metrics.forecast_metrics(g["prediction"].to_numpy(), g["realized"].to_numpy())
        t, _ = _portfolio_metrics(strat[strat[by] == key], g, cfg, "prediction")
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


def summarize(pred: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    """metrics.json's contents for these walk-forward predictions."""
    return summarize_with_nets(pred, cfg)[0]


def summarize_with_nets(
    pred: pd.DataFrame, cfg: Config
) -> tuple[dict[str, Any], dict[str, pd.Series]]:
    """`summarize`, and the net return per bar of each strategy (`_strategy_nets`), which the
    report draws: computed once for both."""
    y = pred["realized"].to_numpy()
    out: dict[str, Any] = {
        "n_predictions": len(pred),
        "tickers": sorted(pred["ticker"].unique()),
        "first_date": str(pred["date"].min().date()),
        "last_date": str(pred["date"].max().date()),
        "folds": int(pred["fold"].nunique()),
        "periods_per_year": periods_per_year(pred, cfg),
        "forecast": {},
        "trading": {},
    }
    zero_loss = _per_date_mean(pred.assign(_l=pred["realized"] ** 2), "_l")
    nets: dict[str, pd.Series] = {}
    rows: dict[str, pd.DataFrame] = {}
    for name in ["prediction", *BASELINES]:
        p = pred[name].to_numpy()
        fm = metrics.forecast_metrics(p, y)
        per_fold = [
            metrics.pearson(g[name].to_numpy(), g["realized"].to_numpy())
            for _, g in pred.groupby("fold")
        ]
        fm["ic_per_fold"] = per_fold
        fm["ic_summary"] = metrics.ic_summary(per_fold)
        if pred["ticker"].nunique() >= 3:
            xs = [
                metrics.spearman(g[name].to_numpy(), g["realized"].to_numpy())
                for _, g in pred.groupby("date")
                if len(g) >= 3
            ]
            xs = [v for v in xs if np.isfinite(v)]
            fm["cross_sectional_rank_ic"] = float(np.mean(xs)) if xs else None
        if name != "zero":
            loss = _per_date_mean(pred.assign(_l=(pred[name] - pred["realized"]) ** 2), "_l")
            fm["dm_vs_zero"] = metrics.diebold_mariano(loss, zero_loss, cfg.target.horizon)
        out["forecast"][name] = fm
        if name != "zero":
            rows[name] = strategy_rows(pred, name, cfg)
            out["trading"][name], nets[name] = _portfolio_metrics(rows[name], pred, cfg, name)
    bh = pred.assign(buy_and_hold=1.0)
    out["trading"]["buy_and_hold"], nets["buy_and_hold"] = _trading(bh, "buy_and_hold", cfg)
    out["forecast"]["prediction"]["dm_vs"] = _forecast_tests(pred, cfg)
    out["trading"]["prediction"]["sharpe_vs"] = _trading_tests(nets)
    out["by_ticker"] = breakdown(pred, cfg, "ticker", rows["prediction"])
    out["by_fold"] = breakdown(pred, cfg, "fold", rows["prediction"])
    ranked = cfg.backtest.portfolio != "per_ticker"
    out["quantiles"] = quantile_table(
        pred, "prediction", cfg.backtest.buckets, cfg.target.horizon, ranked=ranked
    )
    out["verdict"] = verdict(out)
    return metrics.clean(out), nets


def _forecast_tests(pred: pd.DataFrame, cfg: Config) -> dict[str, dict[str, Any]]:
    """DM test of the model's squared error against each baseline's (per-date mean losses),
    with Holm-adjusted p-values over the baselines."""
    model = _per_date_mean(pred.assign(_l=(pred["prediction"] - pred["realized"]) ** 2), "_l")
    tests = {}
    for b in BASELINES:
        other = _per_date_mean(pred.assign(_l=(pred[b] - pred["realized"]) ** 2), "_l")
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


def _strategy_nets(pred: pd.DataFrame, cfg: Config) -> dict[str, pd.Series]:
    """Net return per bar of the model's strategy, each baseline's and buy-and-hold."""
    frame = pred.assign(buy_and_hold=1.0)
    names = ["prediction", *(b for b in BASELINES if b != "zero"), "buy_and_hold"]
    return {n: _trading(frame, n, cfg)[1] for n in names}
