"""report.html of a volatility or quantiles backtest: the verdict first, the model against the
risk baselines, forecast against realised volatility, QLIKE by fold, the calibration of the
quantiles, the volatility-managed strategy, the folds and the config. Also the terminal's
tables (`vol_table_rows`, `quantile_table_rows`, `strategy_table_rows`)."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config, results_config
from tsconv.evaluate.risk_baselines import QUANTILE_BASELINES, VOL_BASELINES
from tsconv.report.figures import png_base64
from tsconv.report.html_page import (
    closing_sections,
    html_figure,
    html_page,
    html_section,
    html_table,
)

VOL_HEADER = ["forecast", "QLIKE", "MSE log var", "MZ a", "MZ b", "MZ R2", "ann. vol", "DM p"]
STRATEGY_HEADER = ["managed by", "ann. return", "ann. vol", "Sharpe", "max DD", "turnover", "p"]
COLOURS = {
    "prediction": "black",
    "trailing_mean": "tab:orange",
    "ewma": "tab:blue",
    "garch": "tab:green",
    "har": "tab:purple",
    "hist_sim": "tab:orange",
    "buy_and_hold": "tab:red",
}

DEFINITIONS = [
    (
        "Realised variance",
        "The target: the sum of a per-bar variance proxy over the next h bars "
        "(target.proxy: squared_return r^2; parkinson ln(H/L)^2 / (4 ln 2); garman_klass "
        "0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2). Range proxies measure the open to close only.",
    ),
    (
        "The model's forecast",
        "The network is trained on y = log(realised variance / h / trailing 63-bar mean proxy) "
        "by squared error (MSE of the log), its highway (ridge) fitted on the same target; the "
        "forecast is h x trailing mean x exp(prediction) x c, c = mean(realised / raw forecast) "
        "over the fold's training rows. Quantiles: forecast sigma times the training rows' "
        "quantiles of return / sigma (filtered historical simulation, the pinball-loss "
        "minimiser), so they never cross.",
    ),
    (
        "Baselines",
        "Each fitted on the fold's training rows only: trailing_mean (the proxy's mean over "
        "backtest.trailing_window bars), ewma (RiskMetrics, lambda 0.94, on returns), garch "
        "(GARCH(1,1), Student-t errors, fitted with the arch package; EWMA stands in where a "
        "fit fails, folds.csv garch_fallback says where), har (OLS on the proxy's 1-, 5- and "
        "22-bar means). ewma and garch forecast return variance and are scaled to the proxy "
        "by one constant per fold and ticker (mean realised / forecast on the training rows). "
        "Quantiles: hist_sim (empirical quantiles of the trailing window's returns), ewma "
        "(normal), garch (Student-t).",
    ),
    (
        "Losses and tests",
        "QLIKE = rv/f - log(rv/f) - 1 (0 is perfect; robust to the proxy's noise). MSE log "
        "var: (log f - log rv)^2. Mincer-Zarnowitz: OLS rv = a + b f. DM p: Diebold-Mariano "
        "on per-date mean QLIKE (pinball loss for quantiles) of the model against the "
        "baseline, Holm-adjusted over the baselines. Coverage: the share of returns below a "
        "level's quantile; Kupiec tests it equals the level, Christoffersen that misses do "
        "not cluster.",
    ),
    (
        "Volatility-managed strategy",
        "Each ticker held long with weight target_vol / forecast annualised volatility (at "
        "most 3), set at the close, earning the next bar's return, net of cost_bps per unit "
        "of turnover; tickers equally weighted. p: Ledoit-Wolf Sharpe-difference test of the "
        "model-managed book against each, Holm-adjusted.",
    ),
]


def _cell(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def vol_table_rows(m: dict[str, Any]) -> list[list[str]]:
    f, tests = m["forecast"], m["forecast"]["prediction"].get("dm_vs", {})
    rows = []
    periods = m["periods_per_year"]
    for name in ["prediction", *VOL_BASELINES]:
        r = f[name]
        mz = r["mincer_zarnowitz"]
        vol = r.get("mean_forecast_vol")
        rows.append(
            [
                "model" if name == "prediction" else name,
                _cell(r["qlike"], ".4f"),
                _cell(r["mse_log"], ".3f"),
                _cell(mz["intercept"], ".2g"),
                _cell(mz["slope"], ".2f"),
                _cell(mz["r2"], ".3f"),
                _cell(None if vol is None else vol * math.sqrt(periods), ".1%"),
                _cell(tests.get(name, {}).get("p_holm"), ".2g"),
            ]
        )
    return rows


def strategy_table_rows(m: dict[str, Any], model: str = "prediction") -> list[list[str]]:
    """One row per managed book; p: the model-managed book's (`model`) Sharpe test."""
    s = m["strategy"]["strategies"]
    tests = s[model].get("sharpe_vs", {})
    rows = []
    for name, r in s.items():
        if not r:
            continue
        rows.append(
            [
                "model" if name == "prediction" else name,
                _cell(r["annual_return"], ".1%"),
                _cell(r["annual_volatility"], ".1%"),
                _cell(r["sharpe"], ".2f"),
                _cell(r["max_drawdown"], ".1%"),
                _cell(r["turnover_per_bar"], ".3f"),
                _cell(tests.get(name, {}).get("p_holm"), ".2g"),
            ]
        )
    return rows


def forecast_tables(m: dict[str, Any]) -> str:
    """The model against the baselines: the volatility table, or the quantiles' coverage and
    pinball tables (HTML)."""
    if m["target"] == "volatility":
        return html_table(VOL_HEADER, vol_table_rows(m))
    return (
        html_table(quantile_header(m), quantile_table_rows(m))
        + "<p>Pinball loss per level</p>"
        + html_table(["level", "model", *QUANTILE_BASELINES], pinball_rows(m))
    )


def quantile_header(m: dict[str, Any]) -> list[str]:
    return ["level", *(f"{n} cover" for n in ["model", *QUANTILE_BASELINES]), "Kupiec p", "DM p"]


def quantile_table_rows(m: dict[str, Any]) -> list[list[str]]:
    rows = []
    for level, row in m["levels"].items():
        f = row["prediction"]
        dm = f.get("dm_vs", {})
        ps = [t.get("p_holm") for t in dm.values() if t.get("p_holm") is not None]
        rows.append(
            [
                level,
                *(_cell(row[n]["coverage"], ".3f") for n in ["prediction", *QUANTILE_BASELINES]),
                _cell(f["kupiec"]["p_value"], ".2g"),
                _cell(max(ps) if ps else None, ".2g"),
            ]
        )
    return rows


def pinball_rows(m: dict[str, Any]) -> list[list[str]]:
    return [
        [level, *(_cell(row[n]["pinball"], ".3g") for n in ["prediction", *QUANTILE_BASELINES])]
        for level, row in m["levels"].items()
    ]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _vol_figure(pred: pd.DataFrame, m: dict[str, Any], names: list[str], column_of, h: int) -> str:
    """Forecast and realised volatility (annualised), per ticker mean by date; the realised
    smoothed over 21 bars so that the forecasts can be seen."""
    plt = _plt()
    periods = m["periods_per_year"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    by_date = pred.groupby("date", sort=True)
    realised = by_date[column_of("realized")].mean()
    ax.plot(
        realised.index,
        np.sqrt(realised.rolling(21, min_periods=1).mean() * periods / h),
        color="lightgrey",
        lw=2.5,
        label="realised (21-bar mean)",
    )
    for name in names:
        f = by_date[column_of(name)].mean()
        ax.plot(
            f.index,
            np.sqrt(f * periods / h),
            color=COLOURS.get(name, "grey"),
            lw=1.4 if name == "prediction" else 0.8,
            label="model" if name == "prediction" else name,
        )
    ax.set_ylabel("annualised volatility")
    ax.set_title("Forecast vs realised volatility (mean over tickers)")
    ax.legend(fontsize=8, ncol=3)
    return html_figure(
        "Forecast volatility of the model and the baselines against realised volatility",
        png_base64(fig),
    )


def _qlike_fold_figure(m: dict[str, Any]) -> str:
    plt = _plt()
    folds = list(m["by_fold"])
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / (1 + len(VOL_BASELINES))
    x = np.arange(len(folds))
    for i, name in enumerate(["prediction", *VOL_BASELINES]):
        vals = [m["by_fold"][k][f"qlike_{name}"] for k in folds]
        ax.bar(
            x + i * width,
            vals,
            width,
            color=COLOURS.get(name, "grey"),
            label="model" if name == "prediction" else name,
        )
    ax.set_xticks(x + 0.4 - width / 2, folds)
    ax.set_xlabel("fold")
    ax.set_ylabel("QLIKE (lower is better)")
    ax.legend(fontsize=8, ncol=5)
    return html_figure("QLIKE of each forecast by fold", png_base64(fig))


def _calibration_figure(m: dict[str, Any]) -> str:
    plt = _plt()
    levels = [float(k) for k in m["levels"]]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for name in ["prediction", *QUANTILE_BASELINES]:
        cov = [m["levels"][k][name]["coverage"] for k in m["levels"]]
        ax.plot(
            levels,
            cov,
            marker="o",
            color=COLOURS.get(name, "grey"),
            label="model" if name == "prediction" else name,
        )
    ax.set_xlabel("level")
    ax.set_ylabel("share of returns below the forecast quantile")
    ax.set_title("Calibration of the quantiles")
    ax.legend(fontsize=8)
    return html_figure("Coverage of each quantile level against the level", png_base64(fig))


def _equity_figure(nets: dict[str, pd.Series]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, net in nets.items():
        eq = (1 + net).cumprod()
        ax.plot(
            eq.index,
            eq.to_numpy(),
            color=COLOURS.get(name, "grey"),
            lw=2 if name == "prediction" else 1,
            label="model" if name == "prediction" else name,
        )
    ax.set_yscale("log")
    ax.set_title("Volatility-managed buy-and-hold, after costs")
    ax.legend(fontsize=8, ncol=3)
    return html_figure("Equity of the volatility-managed books", png_base64(fig))


def _breakdown(rows: dict[str, dict[str, Any]], label: str) -> str:
    if not rows:
        return ""
    keys = list(next(iter(rows.values())))
    return html_table(
        [label, *keys],
        [[k, *(_cell(r[c], ".4g") for c in keys)] for k, r in rows.items()],
    )


def render(
    pred: pd.DataFrame,
    m: dict[str, Any],
    folds: pd.DataFrame,
    cfg: Config,
    nets: dict[str, pd.Series],
) -> str:
    esc = html.escape
    vol = cfg.target.kind == "volatility"
    verdict = f"<p><b>{esc(m['bottom_line'])}</b></p><p>{esc(m['verdict'])}</p>"
    forecast = forecast_tables(m)
    if vol:
        figures = _vol_figure(
            pred, m, ["prediction", "garch", "har"], lambda n: n, cfg.target.horizon
        )
        figures += _qlike_fold_figure(m)
        forecast_title = "Model vs baselines: QLIKE, MSE of the log variance, Mincer-Zarnowitz"
    else:
        figures = _calibration_figure(m)
        figures += _vol_figure(
            pred,
            m,
            ["prediction"],
            lambda n: "realized_variance" if n == "realized" else n,
            cfg.target.horizon,
        )
        forecast_title = "Quantiles: coverage, Kupiec and Diebold-Mariano on pinball loss"
    s = m["strategy"]
    strategy = (
        f"<p>Target volatility {s['target_vol']:.0%}, weight at most {s['max_leverage']:g}, "
        f"{s['cost_bps']:g} bps a unit of turnover.</p>"
        + html_table(STRATEGY_HEADER, strategy_table_rows(m))
        + _equity_figure(nets)
    )
    sections = [
        html_section("verdict", "Verdict", verdict),
        html_section("baselines", forecast_title, forecast),
        html_section("figures", "Forecast vs realised", figures),
        html_section("strategy", "Volatility-managed strategy", strategy),
        html_section("per-ticker", "Per ticker", _breakdown(m["by_ticker"], "ticker")),
        html_section("per-fold", "Per fold", _breakdown(m["by_fold"], "fold")),
        *closing_sections(
            folds.to_html(index=False, float_format="%.4g"), DEFINITIONS, results_config(cfg)
        ),
    ]
    bt = cfg.backtest
    intro = (
        f"{esc(', '.join(m['tickers']))}: {m['n_predictions']} {esc(cfg.target.kind)} forecasts "
        f"from {m['first_date']} to {m['last_date']} in {m['folds']} folds ({esc(bt.scheme)} "
        f"window, refit every {bt.test_span} bars), proxy {esc(cfg.target.proxy)}."
        + "".join(f"<br>\n<b>Warning:</b> {esc(w)}" for w in m.get("warnings", []))
    )
    return html_page("tsconv backtest", f"tsconv {cfg.target.kind} backtest", intro, sections)
