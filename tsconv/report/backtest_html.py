"""The backtest's report.html, self-contained (figures inline)."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config, results_config
from tsconv.evaluate.verdict import SIGNIFICANCE_LEVEL
from tsconv.report.figures import backtest_figures
from tsconv.report.html_page import (
    closing_sections,
    html_figure,
    html_page,
    html_section,
    html_table,
)
from tsconv.report.tables import (
    TABLE_HEADER,
    cost_header,
    cost_rows,
    format_cell,
    quantile_words,
    table_rows,
)

DEFINITIONS = [
    (
        "Returns",
        "Targets and predictions are log returns over the horizon h: log(p[t+h] / p[t]) "
        "on the adjusted close.",
    ),
    (
        "Positions",
        "backtest.position: sign(prediction); scaled: the prediction divided by the trailing "
        "standard deviation of earlier predictions, clipped to [-1, 1]; threshold: "
        "sign(prediction) only where |prediction| exceeds the one-way cost (cost_bps / "
        "10,000), flat otherwise. With backtest.target_vol each instrument's position is "
        "scaled by target_vol / its trailing 63-bar annualised volatility (returns known at "
        "the bar only), at most 3x.",
    ),
    (
        "P&L",
        "A position set at bar t's close earns the next bar's simple return exp(r) - 1. "
        "Costs: cost_bps / 10,000 times turnover |pos_t - pos_(t-1)|, charged on the bar it trades. "
        "Gross figures leave costs out; the cost table shows net Sharpe at 0, 5, 10 and 20 bps "
        "and the break-even cost: mean gross return / mean turnover, in bps.",
    ),
    (
        "Portfolios",
        "backtest.portfolio per_ticker (default): each ticker is traded on its own and the "
        "tickers are equally weighted each bar. long_short: each bar the tickers are ranked by "
        "forecast; the top k (top_k, else the fraction `quantile`, at least one) are held long "
        "and the bottom k short, legs of +0.5 and -0.5 (gross exposure 1, market-neutral), "
        "equal or rank weights; long_only holds the top k with weights summing to 1. The book "
        "is rebalanced to its weights every bar; turnover is the sum of |weight changes|; with "
        "target_vol the whole book is scaled by its own trailing volatility. Buy-and-hold is "
        "always the equal-weighted panel.",
    ),
    (
        "Equity",
        "Compounded: equity = prod(1 + net return), never summed. In market: the share of "
        "bars on which the strategy holds a position; a fold or ticker never in the market "
        "shows its Sharpe ratio as flat.",
    ),
    (
        "best_epoch",
        "The training epoch whose weights a fold kept (lowest validation loss, clearly "
        "better than the start); 0: no epoch beat the starting weights (the ridge-initialised "
        "highway, or the zero forecast without one), so the fold predicts with those. For a "
        "seed ensemble (train.ensemble), the latest of its members' (0: every member kept its "
        "start); member_best_epochs lists each member's, and epochs and steps are summed.",
    ),
    (
        "linear_lags",
        "The bars the model's linear part (the highway) reads, chosen per fold with its ridge "
        "penalty (linear_penalty) by 5-fold cross-validation over stretches of the fold's "
        "training dates: the simplest candidate within one standard error of the best. 0: "
        "the zero forecast, which no linear fit beat. linear_terms: the nonlinear terms of "
        "the last bar it kept, at most one group (a feature's shape: hinges at 0, +-1 and "
        "+-2 sd and its square; or two features' product). ridge_ar_lags and ridge_ar_penalty: "
        "the ridge AR baseline's choice, made the same way per ticker (median over tickers), "
        "or once on every ticker's rows (backtest.ridge_baseline: pooled).",
    ),
    (
        "Quantile table",
        "Realised returns by forecast bucket (backtest.buckets). Cross-sectional when every "
        "date has at least that many tickers (for a long_short or long_only book at least "
        "two, in as many buckets as the thinnest date has): each date's tickers are bucketed by forecast "
        "rank and the bucket means averaged over dates, standard errors across dates (the "
        "top-minus-bottom spread's with Newey-West lags h - 1). Otherwise pooled: all "
        "predictions bucketed by the quantiles of the whole test span, standard errors with "
        "each date's rows as one cluster (iid on one ticker); "
        "that describes calibration and is not a rule that could have been traded (its "
        "bucket edges use the whole span).",
    ),
    (
        "Annualisation",
        "P = periods_per_year (unless set, inferred from the bars' spacing: 252 for business "
        "days, 365 for every calendar day, 52 weekly, 12 monthly, 252 x bars per day "
        "intraday): annual return = equity^(P/n) - 1, "
        "volatility = std * sqrt(P), Sharpe = mean / std * sqrt(P) with a zero risk-free rate, "
        "Sortino uses the root-mean-square of negative returns.",
    ),
    (
        "Bottom line",
        "EDGE when the model's squared error is significantly below the zero forecast's "
        "(Diebold-Mariano) and its strategy's net Sharpe ratio significantly above "
        "buy-and-hold's (Ledoit-Wolf), each Holm-adjusted over its family of tests, at "
        f"{SIGNIFICANCE_LEVEL:.0%}; "
        "FORECAST EDGE ONLY or TRADING EDGE ONLY when one holds, NO EDGE when neither does. "
        "A sweep's holdout is judged by the same rule.",
    ),
    (
        "IC",
        "Pearson (IC) and Spearman (rank IC) correlation of prediction and realised return, "
        "over all predictions (pooled) and per fold. The per-fold mean weights each fold by "
        "its predictions, so a short last fold's noisy IC counts little; ICIR = mean / std and "
        "t = mean / (std / sqrt(folds)), the std that of a fold of average size (weighted "
        "least squares). A fold's IC leaves out the forecast's level moving between folds, "
        "which the pooled IC counts: the two can differ, even in sign.",
    ),
    (
        "R2 (out of sample)",
        "1 - SSE(model) / SSE(zero forecast): positive means better than predicting no change.",
    ),
    (
        "Diebold-Mariano",
        "Squared-error loss differential vs the zero forecast, averaged across "
        "tickers per date, Newey-West variance with h-1 lags; negative statistic = smaller loss.",
    ),
]

# The folds' bookkeeping table; their test dates and best epochs are in the per-fold table.
FOLD_COLUMNS = [
    "fold",
    "train_start",
    "train_end",
    "train_rows",
    "val_rows",
    "test_rows",
    "linear_lags",
    "linear_terms",
    "linear_penalty",
    "ridge_ar_lags",
    "ridge_ar_penalty",
    "epochs",
    "steps",
    "best_val_loss",
    "members",
    "members_kept_start",
    "member_best_epochs",
]


def render(
    pred: pd.DataFrame,
    m: dict[str, Any],
    folds: pd.DataFrame,
    cfg: Config,
    nets: dict[str, pd.Series],
) -> str:
    """The report: the verdict and its tests, the model against the baselines, costs, the
    figures, per-ticker and per-fold figures, monthly returns, the folds, definitions and the
    resolved config."""
    esc = html.escape
    figs = {
        title: html_figure(alt, png) for title, alt, png in backtest_figures(pred, m, cfg, nets)
    }
    per_ticker = (
        "Per ticker"
        if cfg.backtest.portfolio == "per_ticker"
        else "Per ticker: contribution to the book"
    )
    fold_extra = folds[[c for c in ["fold", "test_start", "test_end", "best_epoch"] if c in folds]]
    fold_table = folds[[c for c in FOLD_COLUMNS if c in folds]]
    sections = [
        html_section(
            "verdict",
            "Verdict",
            f"<p><b>{esc(m['bottom_line'])}</b></p><p>{esc(m['verdict'])}</p>{_tests_html(m)}",
        ),
        html_section("baselines", "Model vs baselines", html_table(TABLE_HEADER, table_rows(m))),
        html_section("costs", "Costs and turnover", _costs_html(m, cfg)),
        html_section("equity", "Equity and drawdown", figs["Equity curves"] + figs["Drawdown"]),
        html_section(
            "quantiles",
            "Quantile analysis: realised return by forecast bucket",
            _quantile_html(m.get("quantiles") or {})
            + _rank_ic_html(m)
            + figs.get("Quantile chart", ""),
        ),
        html_section("calibration", "Predicted vs realised", figs["Predicted vs realised"]),
        html_section("rolling", "Rolling IC and Sharpe", figs["Rolling IC and Sharpe"]),
        html_section("per-ticker", per_ticker, _tickers_html(m["by_ticker"])),
        html_section("per-fold", "Per fold", _breakdown_html(m["by_fold"], "fold", fold_extra)),
        html_section(
            "monthly",
            "Monthly net returns of the model's strategy",
            _monthly_html(nets["prediction"]),
        ),
        *closing_sections(
            fold_table.to_html(index=False, float_format="%.4g"), DEFINITIONS, results_config(cfg)
        ),
    ]
    intro = _intro_html(pred, m, folds, cfg)
    return html_page("tsconv backtest", "tsconv walk-forward backtest", intro, sections)


def _intro_html(pred: pd.DataFrame, m: dict[str, Any], folds: pd.DataFrame, cfg: Config) -> str:
    """What was backtested: tickers, dates, folds, costs and the strategy."""
    esc = html.escape
    bt = cfg.backtest
    return (
        f"{esc(', '.join(m['tickers']))}: {m['n_predictions']} predictions from "
        f"{m['first_date']} to {m['last_date']}{esc(late_start_note(pred))}\n"
        f"in {m['folds']} folds ({esc(bt.scheme)} window, refit every {bt.test_span} bars,\n"
        f"gap {bt.gap}, cost {bt.cost_bps:g} bps). Strategy: {esc(_strategy_words(cfg))}."
        f"{esc(covariate_words(cfg))}{esc(kept_start_note(folds, cfg))}"
        + "".join(f"<br>\n<b>Warning:</b> {esc(w)}" for w in m.get("warnings", []))
    )


def covariate_words(cfg: Config) -> str:
    """The covariates every ticker's model saw, and where each came from."""
    if not cfg.covariates:
        return ""
    names = []
    for c in cfg.covariates:
        what = (
            f"{', '.join(c.features or [])} of {c.ticker}"
            if c.ticker
            else f"{', '.join(c.columns or [])} from {c.file}"
        )
        lag = f", lag {c.lag}" if c.lag else ""
        names.append(f"{c.label} ({what}, known at {c.known_at.replace('_', ' ')}{lag})")
    return f" Covariates: {'; '.join(names)}."


def late_start_note(pred: pd.DataFrame) -> str:
    """Tickers whose predictions start after the first date (listed later, or too little
    history for the first folds), so a reader knows the panel's breadth changed."""
    starts = pred.groupby("ticker")["date"].min()
    late = starts[starts > starts.min()]
    if late.empty:
        return ""
    return " (" + ", ".join(f"{t} from {d.date()}" for t, d in late.items()) + ")"


def kept_start_note(folds: pd.DataFrame, cfg: Config) -> str:
    """Say how many folds kept their starting weights: there the model's forecast is its start
    (the ridge highway's, or zero), not something training learned."""
    if "best_epoch" not in folds or not len(folds):
        return ""
    kept = int((folds["best_epoch"] == 0).sum())
    if not kept:
        return ""
    start = "the ridge highway's forecast" if cfg.model.highway else "the zero forecast"
    return (
        f" In {kept} of {len(folds)} folds no training epoch beat the starting weights on "
        f"validation (best_epoch 0), so there the model predicts its start, {start}."
    )


def _strategy_words(cfg: Config) -> str:
    bt = cfg.backtest
    tv = "" if bt.target_vol is None else f", target_vol {bt.target_vol:g}"
    if bt.portfolio == "per_ticker":
        return f"each ticker traded on its own, backtest.position {bt.position}{tv}"
    legs = f"top {bt.top_k}" if bt.top_k else f"top {bt.quantile:.0%}"
    if bt.portfolio == "long_short":
        legs += f" long, bottom {bt.top_k or format(bt.quantile, '.0%')} short"
    return (
        f"{bt.portfolio} portfolio ranked by forecast each bar, {legs}, {bt.weighting} "
        f"weights{tv} (backtest.position is not used)"
    )


def _tests_html(m: dict[str, Any]) -> str:
    """The verdict's tests as two tables: DM per baseline, Sharpe difference per strategy."""
    dm = m["forecast"]["prediction"].get("dm_vs", {})
    dm_rows = [
        [
            b,
            format_cell(t.get("stat"), ".2f"),
            format_cell(t.get("p_value"), ".3g"),
            format_cell(t.get("p_holm"), ".3g"),
        ]
        for b, t in dm.items()
    ]
    root = (m.get("periods_per_year") or 252) ** 0.5
    sv = m["trading"].get("prediction", {}).get("sharpe_vs", {})
    sv_rows = [
        [
            b,
            format_cell(m["trading"].get(b, {}).get("sharpe"), ".2f"),
            format_cell(None if t.get("difference") is None else t["difference"] * root, "+.2f"),
            format_cell(t.get("stat"), ".2f"),
            format_cell(t.get("p_value"), ".3g"),
            format_cell(t.get("p_holm"), ".3g"),
        ]
        for b, t in sv.items()
    ]
    return (
        "<h3>Forecast against each baseline (Diebold-Mariano on squared error; negative: the "
        "model's error is lower)</h3>"
        + html_table(["baseline", "DM", "p", "p, Holm"], dm_rows)
        + "<h3>Strategy against each other strategy, net of costs (Ledoit-Wolf test of equal "
        "Sharpe ratios)</h3>"
        + html_table(
            ["strategy", "its Sharpe", "model minus it, annualised", "z", "p", "p, Holm"], sv_rows
        )
    )


def _costs_html(m: dict[str, Any], cfg: Config) -> str:
    bt = cfg.backtest
    return (
        f"<p>Each strategy at {bt.cost_bps:g} bps a unit of turnover, "
        f"{html.escape(_strategy_words(cfg))}; "
        "turnover is the mean |change of position| a bar, cost drag what costs take a year, "
        "break-even the cost at which the mean net return is zero.</p>"
        + html_table(cost_header(sharpe="Sharpe at "), cost_rows(m))
    )


def _quantile_html(q: dict[str, Any]) -> str:
    if not q.get("buckets"):
        return "<p>No predictions.</p>"
    rows = [
        [
            str(r["bucket"]),
            str(r["n"]),
            format_cell(r["mean_prediction"] * 1e4, ".2f"),
            format_cell(r["mean_realized"] * 1e4, ".2f"),
            format_cell(r["se"] * 1e4, ".2f"),
        ]
        for r in q["buckets"]
    ]
    how = (
        "Each date's tickers bucketed by forecast rank, means averaged over dates"
        if q["method"] == "cross_sectional"
        else "All predictions bucketed by the quantiles of the whole test span (fewer tickers "
        "a date than buckets): a calibration check, not a tradable rule"
    )
    return f"<p>{html.escape(how)}. {html.escape(quantile_words(q))}</p>" + html_table(
        ["bucket", "n", "mean prediction, bps", "mean realised, bps", "se, bps"], rows
    )


def _rank_ic_html(m: dict[str, Any]) -> str:
    """Each forecast's mean cross-sectional rank IC (3+ tickers): what a ranked book earns on."""
    ics = {
        n: f.get("cross_sectional_rank_ic")
        for n, f in m["forecast"].items()
        if f.get("cross_sectional_rank_ic") is not None
    }
    if not ics:
        return ""
    cells = ", ".join(f"{'model' if n == 'prediction' else n} {v:.3f}" for n, v in ics.items())
    return f"<p>Mean cross-sectional rank IC (Spearman across tickers, per date): {cells}.</p>"


def _breakdown_html(rows: dict[str, dict[str, Any]], label: str, extra: pd.DataFrame | None) -> str:
    head = [label, "n", "R2 oos", "IC", "dir. acc (se)", "in market", "Sharpe [95% CI]"]
    head.append("ann. return")
    extra_cols = [] if extra is None else [c for c in extra.columns if c != label]
    body = []
    for key, r in rows.items():
        ci = r.get("sharpe_ci95") or [None, None]
        cells = [
            key,
            str(r["n"]),
            format_cell(r.get("r2_oos"), ".4f"),
            format_cell(r.get("ic"), ".3f"),
            f"{format_cell(r.get('directional_accuracy'), '.3f')} "
            f"({format_cell(r.get('directional_accuracy_se'), '.3f')})",
            format_cell(r.get("in_market"), ".0%"),
            "flat"
            if r.get("in_market") == 0
            else f"{format_cell(r.get('sharpe'), '.2f')} [{format_cell(ci[0], '.2f')}, {format_cell(ci[1], '.2f')}]",
            format_cell(r.get("annual_return"), ".1%"),
        ]
        if extra is not None:
            match = extra[extra[label].astype(str) == key]
            cells += [str(match[c].iloc[0]) if len(match) else "-" for c in extra_cols]
        body.append(cells)
    return html_table([*head, *extra_cols], body)


# A universe's per-ticker table: every row up to this many tickers; beyond, the distribution
# over the tickers and the SHOWN best and worst by net Sharpe ratio (metrics.json keeps all).
ALL_TICKER_ROWS = 30
SHOWN = 10


def _tickers_html(rows: dict[str, dict[str, Any]]) -> str:
    if len(rows) <= ALL_TICKER_ROWS:
        return _breakdown_html(rows, "ticker", None)
    ranked = sorted(
        rows, key=lambda t: -math.inf if rows[t].get("sharpe") is None else rows[t]["sharpe"]
    )
    best = {t: rows[t] for t in reversed(ranked[-SHOWN:])}
    worst = {t: rows[t] for t in ranked[:SHOWN]}
    return (
        f"<p>{len(rows)} tickers: the distribution of each figure over them, then the {SHOWN} "
        f"with the highest and the {SHOWN} with the lowest net Sharpe ratio (no Sharpe ratio "
        "counts as lowest). Every ticker's figures are in metrics.json (<code>by_ticker</code>)."
        f"</p>{_distribution_html(rows)}<h3>Highest net Sharpe</h3>"
        f"{_breakdown_html(best, 'ticker', None)}<h3>Lowest net Sharpe</h3>"
        f"{_breakdown_html(worst, 'ticker', None)}"
    )


def _distribution_html(rows: dict[str, dict[str, Any]]) -> str:
    """Quantiles over the tickers of each per-ticker figure (tickers without one left out)."""
    figures = [
        ("R2 oos", "r2_oos", ".4f"),
        ("IC", "ic", ".3f"),
        ("dir. acc", "directional_accuracy", ".3f"),
        ("in market", "in_market", ".0%"),
        ("Sharpe", "sharpe", ".2f"),
        ("ann. return", "annual_return", ".1%"),
    ]
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    body = []
    for label, key, spec in figures:
        v = np.array([r[key] for r in rows.values() if r.get(key) is not None], dtype=float)
        v = v[np.isfinite(v)]
        cells = [format_cell(float(q), spec) for q in np.quantile(v, qs)] if len(v) else ["-"] * 7
        body.append(
            [label, str(len(v)), *cells, format_cell(float(v.mean()) if len(v) else None, spec)]
        )
    return html_table(
        ["figure", "tickers", "min", "10%", "25%", "median", "75%", "90%", "max", "mean"], body
    )


def _monthly_html(net: pd.Series) -> str:
    """The strategy's net return per calendar month (compounded), a row per year."""
    if net.empty:
        return ""
    monthly = (1 + net).groupby([net.index.year, net.index.month]).prod() - 1
    table = monthly.unstack().reindex(columns=range(1, 13))
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    rows = [
        [str(year), *("" if pd.isna(v) else format_cell(v, ".1%") for v in table.loc[year])]
        for year in table.index
    ]
    return html_table(["year", *months], rows)
