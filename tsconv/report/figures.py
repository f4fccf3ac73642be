"""The plots, drawn with matplotlib: a training run's loss curves (loss.png) and the backtest
report's figures (inline PNGs)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsconv import runfolder
from tsconv.config import Config
from tsconv.evaluate.strategy import quantile_table


def plot_loss(path: Path, results: list[dict[str, Any]]) -> None:
    """Training and validation loss by epoch, the starting weights' validation loss (epoch 0:
    the zero head plus the highway's ridge fit, the level training must beat) and the epoch
    kept; for an ensemble, each member's validation curve and kept epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    single = len(results) == 1
    for m, r in enumerate(results):
        history, start, best = r["history"], r["initial_val"], r["best_epoch"]
        ep = [h["epoch"] for h in history]
        if single:
            ax.plot(
                ep, [h["train_loss"] for h in history], marker=".", label="training (dropout on)"
            )
        val_ep, val = ep, [h["val_loss"] for h in history]
        if start is not None and np.isfinite(start):
            if single or m == 0:
                label = "starting weights (zero head + ridge)"
                ax.axhline(start, color="grey", ls="--", lw=0.8, label=label)
            val_ep, val = [0, *ep], [start, *val]
        label = "validation (dropout off)" if single else f"member {m}: validation"
        (line,) = ax.plot(val_ep, val, marker=".", lw=1 if single else 0.8, label=label)
        kept = start if best == 0 else history[best - 1]["val_loss"]
        if kept is not None and np.isfinite(kept):
            words = f"kept: epoch {best}" if single else ("kept epoch" if m == 0 else None)
            ax.plot(
                [best],
                [kept],
                "*",
                color="k" if single else line.get_color(),
                ms=12 if single else 9,
                label=words,
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE of the scaled target")
    ax.legend(fontsize=8)
    note = (
        "Validation can sit below training: dropout is on in training only, and the two "
        "spans differ in volatility."
        if single
        else f"{len(results)} members from their own seeds; a star marks the epoch each kept."
    )
    fig.text(0.01, 0.01, note, fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    runfolder.write_bytes(path, buf.getvalue())


def png_base64(fig: Any, left: float = 0.7, bottom: float = 0.45) -> str:
    """The figure as a base64 PNG, closed. Its margins are fixed in inches rather than fitted
    by `tight_layout`, which measures every tick label and is slow."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
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


def backtest_figures(
    pred: pd.DataFrame, m: dict[str, Any], cfg: Config, nets: dict[str, pd.Series]
) -> list[tuple[str, str, str]]:
    """The backtest report's plots as (title, alt text, base64 PNG); `nets`: each strategy's
    net return per bar (`summarize_backtest`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = [
        _equity_figure(nets, cfg, plt),
        _drawdown_figure(nets, plt),
        _rolling_figure(pred, nets["prediction"], m, plt),
        _calibration_figure(pred, plt),
    ]
    q = m.get("quantiles") or {}
    if q.get("buckets"):
        figs.append(_quantile_figure(q, plt))
    return figs


def _equity_figure(nets: dict[str, pd.Series], cfg: Config, plt: Any):
    return (
        "Equity curves",
        "Compounded equity after costs of the model's strategy, each baseline's strategy "
        "and buy-and-hold, on a log scale",
        png_base64(equity_figure(nets, cfg.backtest.cost_bps, plt), **EQUITY_MARGINS),
    )


# inches; the bottom one holds the date labels and, below them, the legend's two rows
EQUITY_MARGINS = {"left": 0.8, "bottom": 0.95}


def equity_figure(nets: dict[str, pd.Series], cost_bps: float, plt: Any) -> Any:
    """Each strategy's compounded equity on a log scale. The legend sits below the axes, off
    the curves: inside, wherever it went, it covered one of them (often buy-and-hold's)."""
    fig, ax = plt.subplots(figsize=(8, 4.3))
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
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    ax.set_title(f"Equity after {cost_bps:g} bps costs: model and every baseline")
    return fig


def _drawdown_figure(nets: dict[str, pd.Series], plt: Any):
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(8, 2.6))
    for name in ("prediction", "buy_and_hold"):
        eq = (1 + nets[name]).cumprod()
        dd = (eq / eq.cummax().clip(lower=1.0) - 1).to_numpy()
        ax.plot(eq.index, dd, label=LABELS[name], color=COLOURS[name])
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("drawdown")
    ax.legend(fontsize=8)
    ax.set_title("Drawdown from the running peak (%)")
    return (
        "Drawdown",
        "Drawdown in percent of the model's strategy and of buy-and-hold",
        png_base64(fig, left=0.8),
    )


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
