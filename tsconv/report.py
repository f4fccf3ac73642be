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
from tsconv.config import Config

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
        "Equity",
        "Compounded: equity = prod(1 + net return), never summed. Several tickers are "
        "equally weighted each bar.",
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


def strategy_rows(frame: pd.DataFrame, column: str, cfg: Config) -> pd.DataFrame:
    """Per (date, ticker): the position the strategy on `column` holds, its gross return and
    its turnover; positions are built per ticker over the whole run."""
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
                {"ticker": ticker, "fold": g["fold"], "gross": gross, "turnover": turn}
            ).rename_axis("date")
        )
    return pd.concat(parts).reset_index()


def _trading(frame: pd.DataFrame, column: str, cfg: Config) -> tuple[dict[str, Any], pd.Series]:
    """Trading metrics of the strategy built on `column` (equal-weighted over tickers), at the
    config's cost, plus gross figures and what other costs would do; and its net returns."""
    return _portfolio_metrics(strategy_rows(frame, column, cfg), frame, cfg)


def _portfolio_metrics(
    rows: pd.DataFrame, frame: pd.DataFrame, cfg: Config
) -> tuple[dict[str, Any], pd.Series]:
    cost = cfg.backtest.cost_bps / 1e4
    periods = periods_per_year(frame, cfg)
    by_date = rows.groupby("date", sort=True)[["gross", "turnover"]].mean()
    gross, turnover = by_date["gross"], by_date["turnover"]
    net = gross - cost * turnover
    out = metrics.trading_metrics(net.to_numpy(), periods, turnover.to_numpy())
    if out:
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
        t, _ = _portfolio_metrics(strat[strat[by] == key], g, cfg)
        out[str(key)] = {
            "n": f["n"],
            "r2_oos": f["r2_oos"],
            "ic": f["ic"],
            "directional_accuracy": f["directional_accuracy"],
            "directional_accuracy_se": f["directional_accuracy_se"],
            "sharpe": t.get("sharpe"),
            "sharpe_ci95": t.get("sharpe_ci95"),
            "annual_return": t.get("annual_return"),
        }
    return out


def periods_per_year(pred: pd.DataFrame, cfg: Config) -> int:
    """The config's `backtest.periods_per_year`, else inferred from the predicted bars' dates."""
    return cfg.backtest.periods_per_year or metrics.infer_periods_per_year(pred["date"])


def summarize(pred: pd.DataFrame, cfg: Config) -> dict[str, Any]:
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
            out["trading"][name], nets[name] = _portfolio_metrics(rows[name], pred, cfg)
    bh = pred.assign(buy_and_hold=1.0)
    out["trading"]["buy_and_hold"], nets["buy_and_hold"] = _trading(bh, "buy_and_hold", cfg)
    out["forecast"]["prediction"]["dm_vs"] = _forecast_tests(pred, cfg)
    out["trading"]["prediction"]["sharpe_vs"] = _trading_tests(nets)
    out["by_ticker"] = breakdown(pred, cfg, "ticker", rows["prediction"])
    out["by_fold"] = breakdown(pred, cfg, "fold", rows["prediction"])
    out["verdict"] = verdict(out)
    return metrics.clean(out)


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
            f"Mean per-fold IC {ic['mean']:.3f} (t = {ic['t_stat']:.2f}, p = {ic['p_value']:.3g})."
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
    return (
        f"Trading after costs: the model's strategy (net Sharpe {shown}) {'; '.join(parts)} "
        f"(Ledoit-Wolf Sharpe-difference test, Holm-adjusted over {len(tests)} strategies)."
    )


# --------------------------------------------------------------------------- outputs


def _fmt(v: Any, spec: str) -> str:
    """A table cell: "-" for a missing figure (None in metrics.json)."""
    return "-" if v is None else format(v, spec)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
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


def _png(fig: Any, left: float = 0.7, bottom: float = 0.45) -> str:
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


def _figures(pred: pd.DataFrame, cfg: Config, net: pd.Series) -> list[tuple[str, str]]:
    """The report's plots; `net` is the model strategy's net return per bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, bh = _trading(pred.assign(buy_and_hold=1.0), "buy_and_hold", cfg)
    eq, eq_bh = (1 + net).cumprod(), (1 + bh).cumprod()
    figs = []
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(eq.index, eq.to_numpy(), label="model (after costs)")
    ax.plot(eq_bh.index, eq_bh.to_numpy(), label="buy and hold")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Equity (compounded)")
    figs.append(("Equity curve vs buy-and-hold", _png(fig)))
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.fill_between(eq.index, (eq / eq.cummax() - 1).to_numpy(), 0, color="tab:red", alpha=0.4)
    ax.set_title("Drawdown")
    figs.append(("Drawdown", _png(fig)))
    daily = pred.groupby("date")[["prediction", "realized"]].mean()
    roll = daily["prediction"].rolling(63, min_periods=20).corr(daily["realized"])
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.plot(roll.index, roll.to_numpy())
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("Rolling 63-bar IC")
    figs.append(("Rolling IC", _png(fig)))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(pred["prediction"], pred["realized"], s=3, alpha=0.3)
    ax.set_xlabel("predicted")
    ax.set_ylabel("realised")
    ax.set_title("Predicted vs realised")
    figs.append(("Predicted vs realised", _png(fig, left=0.85, bottom=0.6)))
    return figs


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
        + _html_table(["baseline", "DM", "p", "p, Holm"], dm_rows)
        + "<h3>Strategy against each other strategy, net of costs (Ledoit-Wolf test of equal "
        "Sharpe ratios)</h3>"
        + _html_table(
            ["strategy", "its Sharpe", "model minus it, annualised", "z", "p", "p, Holm"], sv_rows
        )
    )


def _breakdown_html(rows: dict[str, dict[str, Any]], label: str, extra: pd.DataFrame | None) -> str:
    head = [label, "n", "R2 oos", "IC", "dir. acc (se)", "Sharpe [95% CI]", "ann. return"]
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
            f"{_fmt(r.get('sharpe'), '.2f')} [{_fmt(ci[0], '.2f')}, {_fmt(ci[1], '.2f')}]",
            _fmt(r.get("annual_return"), ".1%"),
        ]
        if extra is not None:
            match = extra[extra[label].astype(str) == key]
            cells += [str(match[c].iloc[0]) if len(match) else "-" for c in extra_cols]
        body.append(cells)
    return _html_table([*head, *extra_cols], body)


def _monthly_html(net: pd.Series) -> str:
    """The strategy's net return per calendar month (compounded), a row per year."""
    if net.empty:
        return ""
    monthly = (1 + net).groupby([net.index.year, net.index.month]).prod() - 1
    table = monthly.unstack().reindex(columns=range(1, 13))
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    rows = [
        [str(year), *("" if pd.isna(v) else format(v, ".1%") for v in table.loc[year])]
        for year in table.index
    ]
    return _html_table(["year", *months], rows)


def render_html(pred: pd.DataFrame, m: dict[str, Any], folds: pd.DataFrame, cfg: Config) -> str:
    esc = html.escape
    _, net = _trading(pred, "prediction", cfg)
    tv = "" if cfg.backtest.target_vol is None else f", target_vol {cfg.backtest.target_vol:g}"
    fold_cols = [
        "fold",
        "train_start",
        "train_end",
        "test_start",
        "test_end",
        "train_rows",
        "test_rows",
        "epochs",
        "steps",
        "best_epoch",
        "best_val_loss",
    ]
    fold_extra = folds[[c for c in ["fold", "test_start", "test_end", "best_epoch"] if c in folds]]
    fold_table = folds[[c for c in fold_cols if c in folds]].to_html(
        index=False, float_format="%.4g"
    )
    figs = "".join(
        f"<h3>{esc(t)}</h3><img alt='{esc(t)} of the walk-forward test span' "
        f"src='data:image/png;base64,{b}'/>"
        for t, b in _figures(pred, cfg, net)
    )
    defs = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in DEFINITIONS)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tsconv backtest</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}dt{{font-weight:bold}}</style></head><body>
<h1>tsconv walk-forward backtest</h1>
<p>{esc(", ".join(m["tickers"]))}: {m["n_predictions"]} predictions from {m["first_date"]} to {m["last_date"]}
in {m["folds"]} folds ({esc(cfg.backtest.scheme)} window, refit every {cfg.backtest.test_span} bars,
gap {cfg.backtest.gap}, cost {cfg.backtest.cost_bps} bps).</p>
<h2>Verdict</h2><p>{esc(m["verdict"])}</p>
{_tests_html(m)}
<h2>Model vs baselines</h2>{_html_table(TABLE_HEADER, table_rows(m))}
<h2>Costs and turnover</h2><p>Each strategy at {cfg.backtest.cost_bps} bps a unit of turnover
(backtest.position: {esc(cfg.backtest.position)}{tv}); turnover is the mean |change of position|
a bar, cost drag what costs take a year, break-even the cost at which the mean net return is
zero.</p>{_html_table(cost_header(sharpe="Sharpe at "), cost_rows(m))}
<h2>Plots</h2>{figs}
<h2>Per ticker</h2>{_breakdown_html(m.get("by_ticker", {}), "ticker", None)}
<h2>Per fold</h2>{_breakdown_html(m.get("by_fold", {}), "fold", fold_extra)}
<h2>Monthly net returns of the model's strategy</h2>{_monthly_html(net)}
<h2>Folds (bookkeeping)</h2>{fold_table}
<h2>Definitions</h2><dl>{defs}</dl>
<h2>Resolved config</h2><pre>{esc(json.dumps(cfg.model_dump(mode="json"), indent=2))}</pre>
</body></html>"""


def write_outputs(
    out: Path, pred: pd.DataFrame, m: dict[str, Any], folds: pd.DataFrame, cfg: Config
) -> None:
    timing = m.pop("timing", None)
    io.write_json(Path(out) / "metrics.json", m)
    if timing is not None:
        io.write_json(Path(out) / "timing.json", timing)
        m["timing"] = timing
    io.write_text(Path(out) / "report.html", render_html(pred, m, folds, cfg))
