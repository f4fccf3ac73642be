"""The metric tables, as rows for the terminal and the HTML report."""

from __future__ import annotations

from typing import Any

from tsconv.evaluate import metrics
from tsconv.evaluate.baselines import NAMES as BASELINES


def format_cell(v: Any, spec: str) -> str:
    """A table cell: "-" for a missing figure (None in metrics.json), and no sign on a figure
    that rounds to zero ("-0.0000")."""
    if v is None:
        return "-"
    text = format(v, spec)
    return text[1:] if text.startswith("-") and not text.strip("-0.%e+") else text


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


def table_rows(m: dict[str, Any]) -> list[list[str]]:
    """Per forecast (the model's, each baseline's) and buy-and-hold: forecast metrics and the
    net trading figures of its strategy, under TABLE_HEADER."""
    rows = []
    for name in ["prediction", *BASELINES, "buy_and_hold"]:
        f = m["forecast"].get(name, {})
        t = m["trading"].get(name, {})
        rows.append(
            [
                "model" if name == "prediction" else name,
                format_cell(f.get("mse"), ".2e"),
                format_cell(f.get("r2_oos"), ".4f"),
                format_cell(f.get("directional_accuracy"), ".3f"),
                format_cell(f.get("ic"), ".3f"),
                format_cell(f.get("rank_ic"), ".3f"),
                format_cell(t.get("annual_return"), ".1%"),
                format_cell(t.get("sharpe"), ".2f"),
                format_cell(t.get("max_drawdown"), ".1%"),
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
                format_cell(t.get("turnover_per_bar"), ".3f"),
                format_cell(t.get("gross_annual_return"), ".1%"),
                format_cell(t.get("annual_return"), ".1%"),
                *([format_cell(t.get("cost_drag_annual"), ".1%")] if drag else []),
                format_cell(t.get("break_even_bps"), ".1f"),
                *(format_cell(at.get(str(b)), ".2f") for b in metrics.COST_LEVELS_BPS),
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
        f"{format_cell(mean, '.1f')} bps a bar (t = {format_cell(sp.get('t_stat'), '.2f')}, "
        f"p = {format_cell(sp.get('p_value'), '.3g')})."
    )


def cost_title(cost_bps: float, portfolio: str) -> str:
    """The terminal's cost table title, short enough for 80 columns with a portfolio's name."""
    book = "" if portfolio == "per_ticker" else f"{portfolio} book, "
    return f"costs: {book}{cost_bps:g} bps a unit of turnover; net Sharpe at 0-20 bps"


def compare_rows(r: dict[str, Any]) -> list[list[str]]:
    """`tsconv compare`'s two runs on their common rows: forecast figures and net trading."""
    return [
        [
            r["runs"][side],
            format_cell(r[side]["mse"], ".2e"),
            format_cell(r[side]["r2_oos"], ".4f"),
            format_cell(r[side]["ic"], ".3f"),
            format_cell(r[side]["sharpe"], ".2f"),
            format_cell(r[side]["annual_return"], ".1%"),
            format_cell(r[side]["max_drawdown"], ".1%"),
        ]
        for side in ("a", "b")
    ]


def compare_lines(r: dict[str, Any]) -> list[str]:
    """The two tests' figures under `tsconv compare`'s table."""
    a, b = r["runs"]["a"], r["runs"]["b"]
    dm, sd = r["dm"], r["sharpe_difference"]
    root = (r.get("periods_per_year") or 252) ** 0.5
    diff = sd.get("difference")
    return [
        f"Diebold-Mariano on squared error, by date: DM {format_cell(dm.get('stat'), '.2f')} "
        f"(negative: {a} lower), p = {format_cell(dm.get('p_value'), '.3g')}, "
        f"{dm.get('n', 0):,} dates.",
        f"Ledoit-Wolf Sharpe difference, net of each run's costs: {a} minus {b} "
        f"{format_cell(None if diff is None else diff * root, '+.2f')} a year, "
        f"z {format_cell(sd.get('stat'), '.2f')}, p = {format_cell(sd.get('p_value'), '.3g')}, "
        f"{sd.get('n', 0):,} bars.",
    ]
