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
        "sign(prediction), or the prediction divided by the trailing standard deviation "
        "of earlier predictions, clipped to [-1, 1] (backtest.position: scaled).",
    ),
    (
        "P&L",
        "A position set at bar t's close earns the next bar's simple return exp(r) - 1. "
        "Costs: cost_bps / 10,000 times turnover |pos_t - pos_(t-1)|, charged on the bar it trades.",
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


def _trading(frame: pd.DataFrame, column: str, cfg: Config) -> tuple[dict[str, Any], pd.Series]:
    bt = cfg.backtest
    nets, turns = [], []
    for ticker, g in frame.groupby("ticker", sort=False):
        g = g.set_index("date")
        if column == "buy_and_hold":  # held throughout, no trading costs
            pos = pd.Series(1.0, index=g.index)
            net = np.expm1(g["realized_1"])
        else:
            pos = metrics.positions(g[column], bt.position)
            net = metrics.trading_returns(pos, g["realized_1"], bt.cost_bps)
        nets.append(net.rename(ticker))
        turns.append(pos.diff().abs().fillna(pos.abs()))
    net = pd.concat(nets, axis=1).mean(axis=1).sort_index()
    turnover = pd.concat(turns, axis=1).mean(axis=1).sort_index()
    periods = periods_per_year(frame, cfg)
    return metrics.trading_metrics(net.to_numpy(), periods, turnover.to_numpy()), net


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
            out["trading"][name], _ = _trading(pred, name, cfg)
    out["trading"]["buy_and_hold"], _ = _trading(pred.assign(buy_and_hold=1.0), "buy_and_hold", cfg)
    out["verdict"] = verdict(out)
    return metrics.clean(out)


def verdict(m: dict[str, Any]) -> str:
    f = m["forecast"]["prediction"]
    dm = f.get("dm_vs_zero", {})
    p, stat = dm.get("p_value"), dm.get("stat")
    if p is not None and not np.isnan(p) and p < 0.05 and stat is not None and stat < 0:
        words = f"The model's squared error is significantly lower than the zero forecast's (DM p = {p:.3g})."
    elif p is not None and not np.isnan(p) and p < 0.05:
        words = f"The model's squared error is significantly HIGHER than the zero forecast's (DM p = {p:.3g})."
    else:
        words = (
            f"The model does not beat the zero forecast significantly (DM p = {p:.3g})."
            if p is not None and not np.isnan(p)
            else "Too few predictions for a Diebold-Mariano test."
        )
    better = [b for b in BASELINES if b != "zero" and f["mse"] < m["forecast"][b]["mse"]]
    worse = [b for b in BASELINES if b != "zero" and b not in better]
    words += f" Lower MSE than: {', '.join(better) or 'none'}; not lower than: {', '.join(worse) or 'none'}."
    ic = f["ic_summary"]
    if ic.get("p_value") is not None:
        words += (
            f" Mean per-fold IC {ic['mean']:.3f} (t = {ic['t_stat']:.2f}, p = {ic['p_value']:.3g})."
        )
    return words


# --------------------------------------------------------------------------- outputs


def table_rows(m: dict[str, Any]) -> list[list[str]]:
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = []
    for name in ["prediction", *BASELINES, "buy_and_hold"]:
        f = m["forecast"].get(name, {})
        t = m["trading"].get(name, {})
        rows.append(
            [
                "model" if name == "prediction" else name,
                fmt(f.get("mse"), ".2e"),
                fmt(f.get("r2_oos"), ".4f"),
                fmt(f.get("directional_accuracy"), ".3f"),
                fmt(f.get("ic"), ".3f"),
                fmt(f.get("rank_ic"), ".3f"),
                fmt(t.get("annual_return"), ".1%"),
                fmt(t.get("sharpe"), ".2f"),
                fmt(t.get("max_drawdown"), ".1%"),
            ]
        )
    return rows


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


def _figures(pred: pd.DataFrame, cfg: Config) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, net = _trading(pred, "prediction", cfg)
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


def render_html(pred: pd.DataFrame, m: dict[str, Any], folds: pd.DataFrame, cfg: Config) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in TABLE_HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in table_rows(m)
    )
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
    fold_table = folds[[c for c in fold_cols if c in folds]].to_html(
        index=False, float_format="%.4g"
    )
    figs = "".join(
        f"<h3>{esc(t)}</h3><img src='data:image/png;base64,{b}'/>" for t, b in _figures(pred, cfg)
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
<h2>Model vs baselines</h2><table><tr>{head}</tr>{body}</table>
<h2>Plots</h2>{figs}
<h2>Folds</h2>{fold_table}
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
