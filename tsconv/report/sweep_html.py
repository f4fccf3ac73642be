"""A sweep's report.html: the verdict, the holdout result, how much of the best is luck, the
leaderboard and the settings, self-contained like the backtest report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsconv.report import risk_html
from tsconv.report.figures import png_base64
from tsconv.report.html_page import html_figure, html_page, html_section, html_table
from tsconv.report.tables import TABLE_HEADER, format_cell, table_rows

# the leaderboard's figures by objective: leaderboard.csv column -> heading
RETURN_FIGURES = {"sharpe": "Sharpe", "r2_oos": "R2 OS", "ic": "IC", "in_market": "in market"}
FIGURES = {
    "sharpe": RETURN_FIGURES,
    "r2_oos": RETURN_FIGURES,
    "qlike": {
        "qlike": "QLIKE",
        "mse_log": "MSE log",
        "mz_r2": "MZ R2",
        "managed_sharpe": "managed Sharpe",
    },
    "pinball": {
        "pinball": "pinball",
        "coverage_error": "max cover err",
        "managed_sharpe": "managed Sharpe",
    },
}


def render(r: dict[str, Any], out: Path, holdout_metrics: dict[str, Any]) -> str:
    """The report: the verdict, the chosen config's holdout result, the luck measures, the
    leaderboard and the settings; `holdout_metrics`: the holdout backtest's metrics.json."""
    esc = html.escape
    h = r["holdout"]
    risk = "bottom_line" in h
    holdout = (
        f"<p>The chosen config, evaluated once, walk-forward, on dates from {esc(h['start'])} "
        f"that no trial saw: {h['n_predictions']} predictions in {h['folds']} folds. "
        + (
            f"<b>{esc(h['bottom_line'])}</b> {esc(h['backtest_verdict'])}</p>"
            + risk_html.forecast_tables(holdout_metrics)
            + "<p>Volatility-managed books</p>"
            + html_table(risk_html.STRATEGY_HEADER, risk_html.strategy_table_rows(holdout_metrics))
            if risk
            else f"<b>{esc(h['verdict'])}</b>. {esc(h['backtest_verdict'])}</p>"
            + html_table(TABLE_HEADER, table_rows(holdout_metrics))
        )
        + "<p>The full backtest report of the holdout: "
        "<a href='holdout/report.html'>holdout/report.html</a>.</p>"
    )
    s = r["selection"]
    settings = (
        f"<p>Selection period {esc(s['first_date'])} to {esc(s['last_date'])} (first test date "
        f"to the last bar before the holdout); objective: {esc(r['chosen']['objective'])}.</p>"
        f"<h3>space.yaml</h3><pre>{esc((out / 'space.yaml').read_text())}</pre>"
        f"<h3>base config</h3><pre>{esc((out / 'config.yaml').read_text())}</pre>"
    )
    sections = [
        html_section("verdict", "Verdict", f"<p>{esc(r['verdict'])}</p>"),
        html_section("holdout", "Holdout", holdout),
        html_section(
            "luck", "How much of the best is luck", _risk_luck_html(r) if risk else _luck_html(r)
        ),
        html_section(
            "leaderboard",
            "Leaderboard (selection period)",
            leaderboard_html(out, r["space"], r["chosen"]["objective"]),
        ),
        html_section("settings", "Settings", settings),
    ]
    intro = (
        f"{r['trials']['complete']} trials ({esc(r['settings']['sampler'])} sampler), each a "
        f"walk-forward\nbacktest on the selection period; the best by "
        f"{esc(r['chosen']['objective'])} evaluated on the\nholdout from {esc(h['start'])}."
    )
    return html_page("tsconv sweep", "tsconv sweep", intro, sections)


def _luck_html(r: dict[str, Any]) -> str:
    d, p = r["deflated_sharpe"], r["pbo"]
    a = d["annualised"]
    q = p.get("logit_quantiles") or {}
    rows = [
        ["trials finished (distinct)", f"{r['trials']['complete']} ({r['trials']['distinct']})"],
        ["chosen trial's Sharpe ratio, a year", _number_or_dash(d["annualised"]["sharpe"], ".3f")],
        ["std of the trials' Sharpe ratios, a year", _number_or_dash(a["trial_sharpe_std"], ".3f")],
        [
            "expected maximum Sharpe of as many skill-less trials, a year",
            _number_or_dash(a["expected_max_sharpe"], ".3f"),
        ],
        [
            "skewness / kurtosis of its returns",
            f"{_number_or_dash(d['skew'], '.2f')} / {_number_or_dash(d['kurtosis'], '.2f')}",
        ],
        ["deflated Sharpe ratio (P(true Sharpe > that maximum))", _number_or_dash(d["dsr"], ".3f")],
        ["probability of backtest overfitting (PBO)", _number_or_dash(p["pbo"], ".3f")],
        ["CSCV splits / bars", f"{p['splits']:,} / {p['bars']:,}"],
        [
            "logit of the in-sample best's out-of-sample rank: 10%, 50%, 90%",
            ", ".join(f"{q[k]:+.2f}" for k in ("q10", "q50", "q90")) if q else "-",
        ],
    ]
    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
        for a, b in rows
    )
    return (
        "<p>A deflated Sharpe ratio near 1 says the chosen trial's Sharpe ratio is unlikely to "
        "be the luck of trying many; 0.95 is the usual bar. PBO is the share of ways to split "
        "the selection period in two halves where picking the best trial on one half gives "
        "one at or below the median on the other: 0.5 or more means the search picks noise.</p>"
        f"<table>{body}</table>{_sharpe_figure(r)}"
    )


def _risk_luck_html(r: dict[str, Any]) -> str:
    """A loss objective's luck: PBO on the trials' losses per date; no deflated Sharpe ratio."""
    p = r["pbo"]
    q = p.get("logit_quantiles") or {}
    rows = [
        ["trials finished (distinct)", f"{r['trials']['complete']} ({r['trials']['distinct']})"],
        ["probability of backtest overfitting (PBO)", _number_or_dash(p["pbo"], ".3f")],
        ["CSCV splits / bars", f"{p['splits']:,} / {p['bars']:,}"],
        [
            "logit of the in-sample best's out-of-sample rank: 10%, 50%, 90%",
            ", ".join(f"{q[k]:+.2f}" for k in ("q10", "q50", "q90")) if q else "-",
        ],
        ["deflated Sharpe ratio", r["not_computed"]["deflated_sharpe"]],
    ]
    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
        for a, b in rows
    )
    return (
        f"<p>PBO is the share of ways to split the selection period in two halves where the "
        f"trial with the lowest mean {html.escape(r['chosen']['objective'])} per date on one "
        "half is at or below the median on the other: 0.5 or more means the search picks "
        f"noise.</p><table>{body}</table>"
    )


def _sharpe_figure(r: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = sharpe_histogram(r, plt)
    d, trials = r["deflated_sharpe"], r["trials"]
    alt = (
        f"Histogram of the Sharpe ratios of {trials['distinct']} distinct trials (of "
        f"{trials['complete']} finished); the chosen trial at {_number_or_dash(d['annualised']['sharpe'], '.2f')}, "
        f"the maximum expected without skill at {d['annualised']['expected_max_sharpe']:.2f}"
    )
    return html_figure(alt, png_base64(fig))


def sharpe_histogram(r: dict[str, Any], plt: Any) -> Any:
    """The trials' Sharpe ratios (a year) against the largest expected from as many distinct
    trials without skill (the number the deflated Sharpe ratio uses), and the chosen trial's."""
    from matplotlib.ticker import MaxNLocator

    scale = np.sqrt(r["periods_per_year"])
    # trials with the same returns bar for bar (so the same Sharpe ratio) are one trial, as
    # the line's count has it: the bars counted 6 trials beside "5 distinct trials"
    sharpes = np.unique(np.asarray(r["per_bar_sharpes"], dtype=float)) * scale
    sharpes = sharpes[np.isfinite(sharpes)]
    d = r["deflated_sharpe"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.hist(sharpes, bins=min(30, max(5, len(sharpes) // 2)), color="0.75", edgecolor="0.4")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.axvline(
        d["annualised"]["expected_max_sharpe"],
        color="tab:red",
        ls="--",
        label=f"expected maximum of {r['trials']['distinct']} distinct trials without skill",
    )
    chosen = d["annualised"]["sharpe"]
    if chosen is not None:
        ax.axvline(chosen, color="black", label="chosen trial")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of trials
    ax.set_xlabel("net Sharpe ratio a year, selection period")
    ax.set_ylabel("distinct trials")
    # above the axes: inside, it covered the bars or the lines
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2, fontsize=8, frameon=False)
    return fig


def leaderboard_html(out: Path, keys: list[str], objective: str = "sharpe") -> str:
    """Rank, trial, each parameter (under the last part of its key where that is unique) and
    the main figures of `objective`'s target, the time in the market as a percentage; every
    column is in leaderboard.csv."""
    board = pd.read_csv(out / "leaderboard.csv")
    if "in_market" in board:
        board["in_market"] = [
            format_cell(v, ".0%") if pd.notna(v) else "-" for v in board["in_market"]
        ]
    short = [k.rsplit(".", 1)[-1] for k in keys]
    names = dict(zip(keys, short if len(set(short)) == len(short) else keys, strict=True))
    figures = FIGURES[objective]
    shown = board[["rank", "trial", *keys, *figures]].rename(columns={**names, **figures})
    table = shown.to_html(index=False, float_format="%.4g", na_rep="-")
    # many parameters make a wide table: smaller type, and it scrolls rather than overflow
    return f"<div style='overflow-x:auto;font-size:0.85em'>{table}</div>"


def _number_or_dash(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)
