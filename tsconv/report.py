"""Turn walk-forward predictions into metrics.json, a terminal table and a self-contained report.html."""

from __future__ import annotations

import base64
import html
import io as _io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsconv import io, metrics
from tsconv.baselines import NAMES as BASELINES
from tsconv.config import Config, results_config
from tsconv.portfolio import by_date, periods_per_year, quantile_table, strategy_rows

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
        "Quantile table",
        "Realised returns by forecast bucket (backtest.buckets). Cross-sectional when every "
        "date has at least that many tickers (for a long_short or long_only book at least "
        "two, in as many buckets as the thinnest date has): each date's tickers are bucketed by forecast "
        "rank and the bucket means averaged over dates, standard errors across dates (the "
        "top-minus-bottom spread's with Newey-West lags h - 1). Otherwise pooled: all "
        "predictions bucketed by the quantiles of the whole test span, iid standard errors; "
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
        "IC",
        "Pearson (IC) and Spearman (rank IC) correlation of prediction and realised return, "
        "overall and per fold; the mean IC is the equal-weighted mean of per-fold ICs, "
        "ICIR = mean / std, and its t-statistic is mean / (std / sqrt(folds)).",
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


def verdict(m: dict[str, Any], level: float = 0.05) -> str:
    """Both questions in words: does the forecast beat each baseline (DM on squared error), and
    does trading it beat each other strategy after costs (Sharpe difference); Holm-adjusted
    over each family of tests."""
    f = m["forecast"]["prediction"]
    words = [_forecast_words(f, level), _trading_words(m, level)]
    ic = f["ic_summary"]
    if ic.get("p_value") is not None:
        words.append(
            f"Mean per-fold Pearson IC {ic['mean']:.3f} (t = {ic['t_stat']:.2f}, "
            f"p = {ic['p_value']:.3g})."
        )
    return " ".join(words)


def _split(tests: dict[str, dict[str, Any]], level: float, better_if_negative: bool):
    better, worse, same = [], [], []
    for name, t in tests.items():
        p, stat = t.get("p_holm"), t.get("stat")
        if p is None or stat is None or np.isnan(p) or p >= level:
            same.append(f"{name} (p = {p:.2g})" if p is not None and not np.isnan(p) else name)
        elif (stat < 0) == better_if_negative:
            better.append(f"{name} (p = {p:.2g})")
        else:
            worse.append(f"{name} (p = {p:.2g})")
    return better, worse, same


def _forecast_words(f: dict[str, Any], level: float) -> str:
    tests = f.get("dm_vs", {})
    if not tests:
        return "Too few predictions for a Diebold-Mariano test."
    better, worse, same = _split(tests, level, better_if_negative=True)
    parts = []
    if better:
        parts.append(f"significantly lower than {', '.join(better)}")
    if worse:
        parts.append(f"significantly HIGHER than {', '.join(worse)}")
    if same:
        parts.append(f"not significantly different from {', '.join(same)}")
    return (
        f"Forecast: the model's squared error is {'; '.join(parts)} "
        f"(Diebold-Mariano, Holm-adjusted over {len(tests)} baselines, {level:.0%} level)."
    )


def _trading_words(m: dict[str, Any], level: float) -> str:
    t = m["trading"].get("prediction", {})
    tests = t.get("sharpe_vs", {})
    if not tests:
        return ""
    better, worse, same = _split(tests, level, better_if_negative=False)
    sharpe = t.get("sharpe")
    parts = []
    if better:
        parts.append(f"beats {', '.join(better)}")
    if worse:
        parts.append(f"loses to {', '.join(worse)}")
    if same:
        parts.append(f"is not significantly different from {', '.join(same)}")
    shown = f"{sharpe:.2f}" if sharpe is not None and not np.isnan(sharpe) else "n/a"
    held = t.get("in_market")
    if held is not None and held < 0.995:
        shown += f", in the market on {held:.0%} of bars"
    return (
        f"Trading after costs: the model's strategy (net Sharpe {shown}) {'; '.join(parts)} "
        f"(Ledoit-Wolf Sharpe-difference test, Holm-adjusted over {len(tests)} strategies)."
    )


# --------------------------------------------------------------------------- outputs


def _fmt(v: Any, spec: str) -> str:
    """A table cell: "-" for a missing figure (None in metrics.json), and no sign on a figure
    that rounds to zero ("-0.0000")."""
    if v is None:
        return "-"
    text = format(v, spec)
    return text[1:] if text.startswith("-") and not text.strip("-0.%e+") else text


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def table_rows(m: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ["prediction", *BASELINES, "buy_and_hold"]:
        f = m["forecast"].get(name, {})
        t = m["trading"].get(name, {})
        rows.append(
            [
                "model" if name == "prediction" else name,
                _fmt(f.get("mse"), ".2e"),
                _fmt(f.get("r2_oos"), ".4f"),
                _fmt(f.get("directional_accuracy"), ".3f"),
                _fmt(f.get("ic"), ".3f"),
                _fmt(f.get("rank_ic"), ".3f"),
                _fmt(t.get("annual_return"), ".1%"),
                _fmt(t.get("sharpe"), ".2f"),
                _fmt(t.get("max_drawdown"), ".1%"),
            ]
        )
    return rows


def cost_rows(m: dict[str, Any], drag: bool = True) -> list[list[str]]:
    """Per strategy: turnover, gross and net annual return, cost drag (unless `drag` is off:
    the terminal's 80 columns), break-even cost and the net Sharpe at each of
    metrics.COST_LEVELS_BPS."""
    rows = []
    for name in ["prediction", *(b for b in BASELINES if b != "zero")]:
        t = m["trading"].get(name, {})
        if not t:
            continue
        at = t.get("sharpe_at_bps", {})
        rows.append(
            [
                "model" if name == "prediction" else name,
                _fmt(t.get("turnover_per_bar"), ".3f"),
                _fmt(t.get("gross_annual_return"), ".1%"),
                _fmt(t.get("annual_return"), ".1%"),
                *([_fmt(t.get("cost_drag_annual"), ".1%")] if drag else []),
                _fmt(t.get("break_even_bps"), ".1f"),
                *(_fmt(at.get(str(b)), ".2f") for b in metrics.COST_LEVELS_BPS),
            ]
        )
    return rows


def cost_header(drag: bool = True, sharpe: str = "") -> list[str]:
    """`cost_rows`' header; `sharpe` prefixes the net-Sharpe columns (the terminal has no room)."""
    return [
        "strategy",
        "turnover",
        "gross ann.",
        "net ann.",
        *(["cost drag"] if drag else []),
        "break-even bps",
        *(f"{sharpe}{b} bps" for b in metrics.COST_LEVELS_BPS),
    ]


TABLE_HEADER = [
    "forecast",
    "MSE",
    "R2 oos",
    "dir. acc",
    "IC",
    "rank IC",
    "ann. return",
    "Sharpe",
    "max DD",
]


def png_base64(fig: Any, left: float = 0.7, bottom: float = 0.45) -> str:
    """PNG as base64. Margins are fixed in inches: `tight_layout` measured every tick label
    and took about 40% of the report's time (0.05 s a figure, `scripts/bench_walkforward.py`)."""
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width, right=1 - 0.2 / width, bottom=bottom / height, top=1 - 0.35 / height
    )
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# One colour and one name per strategy in every plot.
COLOURS = {
    "prediction": "black",
    "persistence": "tab:blue",
    "trailing_mean": "tab:orange",
    "ridge_ar": "tab:green",
    "buy_and_hold": "tab:red",
}
LABELS = {"prediction": "model", "buy_and_hold": "buy_and_hold (equal-weighted, long only)"}


def _strategy_nets(pred: pd.DataFrame, cfg: Config) -> dict[str, pd.Series]:
    """Net return per bar of the model's strategy, each baseline's and buy-and-hold."""
    frame = pred.assign(buy_and_hold=1.0)
    names = ["prediction", *(b for b in BASELINES if b != "zero"), "buy_and_hold"]
    return {n: _trading(frame, n, cfg)[1] for n in names}


def _log_ticks(ax: Any, lo: float, hi: float) -> None:
    """Plain-number ticks on a log axis: a handful spread over [lo, hi], whatever its width."""
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, ScalarFormatter

    if hi / lo > 8:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        from matplotlib.ticker import MaxNLocator

        ticks = [t for t in MaxNLocator(nbins=6).tick_values(lo, hi) if lo <= t <= hi and t > 0]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())


def _figures(
    pred: pd.DataFrame, m: dict[str, Any], cfg: Config, nets: dict[str, pd.Series]
) -> list[tuple[str, str, str]]:
    """The report's plots as (title, alt text, base64 PNG); `nets` from `_strategy_nets`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    figs = []
    fig, ax = plt.subplots(figsize=(8, 3.8))
    lo, hi = 1.0, 1.0
    for name, net in nets.items():
        eq = (1 + net).cumprod()
        lo, hi = min(lo, float(eq.min())), max(hi, float(eq.max()))
        lw = 2.0 if name == "prediction" else 1.0
        ax.plot(eq.index, eq.to_numpy(), label=LABELS.get(name, name), color=COLOURS[name], lw=lw)
    ax.set_yscale("log")
    _log_ticks(ax, lo, hi)
    ax.axhline(1, color="grey", lw=0.6)
    ax.set_ylabel("growth of 1, log scale")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title(f"Equity after {cfg.backtest.cost_bps:g} bps costs: model and every baseline")
    figs.append(
        (
            "Equity curves",
            "Compounded equity after costs of the model's strategy, each baseline's strategy "
            "and buy-and-hold, on a log scale",
            png_base64(fig, left=0.8),
        )
    )
    fig, ax = plt.subplots(figsize=(8, 2.6))
    for name in ("prediction", "buy_and_hold"):
        eq = (1 + nets[name]).cumprod()
        dd = (eq / eq.cummax().clip(lower=1.0) - 1).to_numpy()
        ax.plot(eq.index, dd, label=LABELS[name], color=COLOURS[name])
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("drawdown")
    ax.legend(fontsize=8)
    ax.set_title("Drawdown from the running peak (%)")
    figs.append(
        (
            "Drawdown",
            "Drawdown in percent of the model's strategy and of buy-and-hold",
            png_base64(fig, left=0.8),
        )
    )
    figs.append(_rolling_figure(pred, nets["prediction"], m, plt))
    figs.append(_calibration_figure(pred, plt))
    q = m.get("quantiles") or {}
    if q.get("buckets"):
        figs.append(_quantile_figure(q, plt))
    return figs


def _rolling_figure(pred: pd.DataFrame, net: pd.Series, m: dict[str, Any], plt: Any):
    daily = pred.groupby("date")[["prediction", "realized"]].mean()
    ic = daily["prediction"].rolling(63).corr(daily["realized"])
    root = (m.get("periods_per_year") or 252) ** 0.5
    roll = net.rolling(126)
    sharpe = roll.mean() / roll.std() * root
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True)
    a1.plot(ic.index, ic.to_numpy())
    a1.set_ylabel("63-bar IC")
    a2.plot(sharpe.index, sharpe.to_numpy(), color="black")
    a2.set_ylabel("126-bar Sharpe")
    for ax in (a1, a2):
        ax.axhline(0, color="grey", lw=0.8)
    a1.set_title("Rolling 63-bar IC (per-date mean forecast vs return), 126-bar net Sharpe")
    return (
        "Rolling IC and Sharpe",
        "Rolling 63-bar information coefficient and rolling 126-bar annualised net Sharpe ratio",
        png_base64(fig, left=0.8),
    )


def _calibration_figure(pred: pd.DataFrame, plt: Any):
    rows = quantile_table(pred, "prediction", 10, pooled=True).get("buckets", [])
    x = [r["mean_prediction"] * 1e4 for r in rows]
    y = [r["mean_realized"] * 1e4 for r in rows]
    err = [1.96 * r["se"] * 1e4 for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color="black")
    lim = max([abs(v) for v in x] or [1.0])
    ax.plot([-lim, lim], [-lim, lim], color="tab:blue", lw=0.8, label="realised = predicted")
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel("mean prediction in the decile, bps")
    ax.set_ylabel("mean realised, bps (95% interval)")
    ax.legend(fontsize=8)
    ax.set_title("Predicted vs realised, by decile of the prediction")
    return (
        "Predicted vs realised",
        "Mean realised return against mean prediction in each decile of the predictions, "
        "with 95% error bars",
        png_base64(fig, left=0.95, bottom=0.6),
    )


def _quantile_figure(q: dict[str, Any], plt: Any):
    rows = q["buckets"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(
        [r["bucket"] for r in rows],
        [r["mean_realized"] * 1e4 for r in rows],
        yerr=[1.96 * r["se"] * 1e4 for r in rows],
        capsize=3,
        color="tab:blue",
    )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks([r["bucket"] for r in rows])
    ax.set_xlabel("forecast bucket (1 = lowest)")
    ax.set_ylabel("mean realised, bps (95% interval)")
    ax.set_title(f"Realised return by forecast bucket ({q['method'].replace('_', '-')})")
    return (
        "Quantile chart",
        "Mean realised return in basis points by forecast bucket, with 95% error bars",
        png_base64(fig, left=0.8, bottom=0.6),
    )


def _tests_html(m: dict[str, Any]) -> str:
    """The verdict's tests as two tables: DM per baseline, Sharpe difference per strategy."""
    dm = m["forecast"]["prediction"].get("dm_vs", {})
    dm_rows = [
        [b, _fmt(t.get("stat"), ".2f"), _fmt(t.get("p_value"), ".3g"), _fmt(t.get("p_holm"), ".3g")]
        for b, t in dm.items()
    ]
    root = (m.get("periods_per_year") or 252) ** 0.5
    sv = m["trading"].get("prediction", {}).get("sharpe_vs", {})
    sv_rows = [
        [
            b,
            _fmt(m["trading"].get(b, {}).get("sharpe"), ".2f"),
            _fmt(None if t.get("difference") is None else t["difference"] * root, "+.2f"),
            _fmt(t.get("stat"), ".2f"),
            _fmt(t.get("p_value"), ".3g"),
            _fmt(t.get("p_holm"), ".3g"),
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
            _fmt(r.get("r2_oos"), ".4f"),
            _fmt(r.get("ic"), ".3f"),
            f"{_fmt(r.get('directional_accuracy'), '.3f')} "
            f"({_fmt(r.get('directional_accuracy_se'), '.3f')})",
            _fmt(r.get("in_market"), ".0%"),
            "flat"
            if r.get("in_market") == 0
            else f"{_fmt(r.get('sharpe'), '.2f')} [{_fmt(ci[0], '.2f')}, {_fmt(ci[1], '.2f')}]",
            _fmt(r.get("annual_return"), ".1%"),
        ]
        if extra is not None:
            match = extra[extra[label].astype(str) == key]
            cells += [str(match[c].iloc[0]) if len(match) else "-" for c in extra_cols]
        body.append(cells)
    return html_table([*head, *extra_cols], body)


def _monthly_html(net: pd.Series) -> str:
    """The strategy's net return per calendar month (compounded), a row per year."""
    if net.empty:
        return ""
    monthly = (1 + net).groupby([net.index.year, net.index.month]).prod() - 1
    table = monthly.unstack().reindex(columns=range(1, 13))
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    rows = [
        [str(year), *("" if pd.isna(v) else _fmt(v, ".1%") for v in table.loc[year])]
        for year in table.index
    ]
    return html_table(["year", *months], rows)


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


def quantile_words(q: dict[str, Any]) -> str:
    """The quantile table's spread in one sentence."""
    if not q.get("buckets"):
        return ""
    sp = q["spread"]
    how = (
        "cross-sectional"
        if q["method"] == "cross_sectional"
        else "pooled over time: a calibration check, not a tradable rule"
    )
    mean = None if sp.get("mean") is None else sp["mean"] * 1e4
    return (
        f"Top minus bottom of {len(q['buckets'])} forecast buckets ({how}): "
        f"{_fmt(mean, '.1f')} bps a bar (t = {_fmt(sp.get('t_stat'), '.2f')}, "
        f"p = {_fmt(sp.get('p_value'), '.3g')})."
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


def _quantile_html(q: dict[str, Any]) -> str:
    if not q.get("buckets"):
        return "<p>No predictions.</p>"
    rows = [
        [
            str(r["bucket"]),
            str(r["n"]),
            _fmt(r["mean_prediction"] * 1e4, ".2f"),
            _fmt(r["mean_realized"] * 1e4, ".2f"),
            _fmt(r["se"] * 1e4, ".2f"),
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


def _late_words(pred: pd.DataFrame) -> str:
    """Tickers whose predictions start after the first date (listed later, or too little
    history for the first folds), so a reader knows the panel's breadth changed."""
    starts = pred.groupby("ticker")["date"].min()
    late = starts[starts > starts.min()]
    if late.empty:
        return ""
    return " (" + ", ".join(f"{t} from {d.date()}" for t, d in late.items()) + ")"


def _kept_words(folds: pd.DataFrame, cfg: Config) -> str:
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


STYLE = """body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td{white-space:nowrap}
dt{font-weight:bold}
figure{margin:0.5em 0}"""


def html_section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>\n"


def render_html(
    pred: pd.DataFrame,
    m: dict[str, Any],
    folds: pd.DataFrame,
    cfg: Config,
    nets: dict[str, pd.Series] | None = None,
) -> str:
    esc = html.escape
    fold_cols = [  # the test dates and best epoch are in the per-fold table
        "fold",
        "train_start",
        "train_end",
        "train_rows",
        "val_rows",
        "test_rows",
        "epochs",
        "steps",
        "best_val_loss",
        "members",
        "members_kept_start",
        "member_best_epochs",
    ]
    fold_extra = folds[[c for c in ["fold", "test_start", "test_end", "best_epoch"] if c in folds]]
    fold_table = folds[[c for c in fold_cols if c in folds]].to_html(
        index=False, float_format="%.4g"
    )
    nets = nets if nets is not None else _strategy_nets(pred, cfg)
    figs = {
        title: f"<figure><img alt='{esc(alt)}' src='data:image/png;base64,{b}'/></figure>"
        for title, alt, b in _figures(pred, m, cfg, nets)
    }
    defs = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in DEFINITIONS)
    bt = cfg.backtest
    costs = (
        f"<p>Each strategy at {bt.cost_bps:g} bps a unit of turnover, {esc(_strategy_words(cfg))}; "
        "turnover is the mean |change of position| a bar, cost drag what costs take a year, "
        "break-even the cost at which the mean net return is zero.</p>"
        + html_table(cost_header(sharpe="Sharpe at "), cost_rows(m))
    )
    sections = [
        html_section("verdict", "Verdict", f"<p>{esc(m['verdict'])}</p>{_tests_html(m)}"),
        html_section("baselines", "Model vs baselines", html_table(TABLE_HEADER, table_rows(m))),
        html_section("costs", "Costs and turnover", costs),
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
        html_section(
            "per-ticker",
            "Per ticker"
            if bt.portfolio == "per_ticker"
            else "Per ticker: contribution to the book",
            _breakdown_html(m["by_ticker"], "ticker", None),
        ),
        html_section("per-fold", "Per fold", _breakdown_html(m["by_fold"], "fold", fold_extra)),
        html_section(
            "monthly",
            "Monthly net returns of the model's strategy",
            _monthly_html(nets["prediction"]),
        ),
        html_section("folds", "Folds (bookkeeping)", fold_table),
        html_section("definitions", "Definitions", f"<dl>{defs}</dl>"),
        html_section(
            "config",
            "Resolved config",
            f"<pre>{esc(json.dumps(results_config(cfg), indent=2))}</pre>",
        ),
    ]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tsconv backtest</title>
<style>{STYLE}</style></head><body>
<h1>tsconv walk-forward backtest</h1>
<p>{esc(", ".join(m["tickers"]))}: {m["n_predictions"]} predictions from {m["first_date"]} to {m["last_date"]}{esc(_late_words(pred))}
in {m["folds"]} folds ({esc(bt.scheme)} window, refit every {bt.test_span} bars,
gap {bt.gap}, cost {bt.cost_bps:g} bps; {esc(_strategy_words(cfg))}).{esc(_kept_words(folds, cfg))}</p>
{"".join(sections)}</body></html>"""


def write_outputs(
    out: Path,
    pred: pd.DataFrame,
    m: dict[str, Any],
    folds: pd.DataFrame,
    cfg: Config,
    nets: dict[str, pd.Series] | None = None,
    report_html: bool = True,
) -> None:
    timing = m.pop("timing", None)
    io.write_json(Path(out) / "metrics.json", m)
    if timing is not None:
        io.write_json(Path(out) / "timing.json", timing)
        m["timing"] = timing
    if report_html:
        io.write_text(Path(out) / "report.html", render_html(pred, m, folds, cfg, nets))
