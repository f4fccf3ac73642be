"""Two finished backtests against each other on their common dates and tickers: is one's
forecast better (Diebold-Mariano on squared error, as a backtest tests its baselines) and is
one's strategy better after costs (the Ledoit-Wolf Sharpe-difference test)?

Each run's strategy is rebuilt on the common rows with its own config (position rule, costs,
portfolio), so the two are traded on the same bars of the same tickers; on identical dates and
tickers that is the run's own strategy. Two tests on two questions, each at
SIGNIFICANCE_LEVEL: there is no family to adjust for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config
from tsconv.evaluate import metrics
from tsconv.evaluate.strategy import by_date, periods_per_year, strategy_rows
from tsconv.evaluate.verdict import SIGNIFICANCE_LEVEL

KEYS = ["date", "ticker"]
COLUMNS = [*KEYS, "fold", "prediction", "realized", "realized_1"]


def common_rows(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The rows (date, ticker) both runs predicted, each run's columns suffixed _a and _b."""
    both = a[COLUMNS].merge(b[COLUMNS], on=KEYS, suffixes=("_a", "_b"), validate="one_to_one")
    return both.sort_values(KEYS, kind="stable").reset_index(drop=True)


def one_side(both: pd.DataFrame, side: str) -> pd.DataFrame:
    """One run's predictions on the common rows, as a backtest's predictions frame."""
    cols = [c for c in COLUMNS if c not in KEYS]
    return both[[*KEYS, *(f"{c}_{side}" for c in cols)]].set_axis(COLUMNS, axis=1)


def compare(both: pd.DataFrame, cfg_a: Config, cfg_b: Config) -> dict[str, Any]:
    """Both runs' figures on `both` (`common_rows`), the two tests and the verdict's facts."""
    a, b = one_side(both, "a"), one_side(both, "b")
    loss = {s: _loss_by_date(f) for s, f in (("a", a), ("b", b))}
    horizon = max(cfg_a.target.horizon, cfg_b.target.horizon)
    nets = {"a": _net(a, cfg_a), "b": _net(b, cfg_b)}
    net_a, net_b = nets["a"].align(nets["b"], join="inner")
    periods = periods_per_year(a, cfg_a)
    out: dict[str, Any] = {
        "dates": int(both["date"].nunique()),
        "rows": len(both),
        "tickers": sorted(both["ticker"].unique()),
        "first_date": str(both["date"].min().date()),
        "last_date": str(both["date"].max().date()),
        "periods_per_year": periods,
        "dm": metrics.diebold_mariano(loss["a"], loss["b"], horizon),
        "sharpe_difference": metrics.sharpe_difference(net_a.to_numpy(), net_b.to_numpy()),
    }
    for side, frame in (("a", a), ("b", b)):
        f = metrics.forecast_metrics(frame["prediction"].to_numpy(), frame["realized"].to_numpy())
        t = metrics.trading_metrics(nets[side].to_numpy(), periods)
        out[side] = {"mse": f["mse"], "r2_oos": f["r2_oos"], "ic": f["ic"], **_trading(t)}
    return metrics.clean(out)


def _trading(t: dict[str, Any]) -> dict[str, Any]:
    return {k: t.get(k) for k in ("sharpe", "annual_return", "max_drawdown")}


def _loss_by_date(frame: pd.DataFrame) -> np.ndarray:
    """Squared error averaged across tickers on each date, as a backtest's DM tests use it."""
    err = frame.assign(_loss=(frame["prediction"] - frame["realized"]) ** 2)
    return err.groupby("date", sort=True)["_loss"].mean().to_numpy()


def _net(frame: pd.DataFrame, cfg: Config) -> pd.Series:
    """The run's strategy on these rows, net of its own costs, per date."""
    per_bar = by_date(strategy_rows(frame, "prediction", cfg), cfg, "prediction")
    return per_bar["gross"] - cfg.backtest.cost_bps / 1e4 * per_bar["turnover"]


def compare_verdict(r: dict[str, Any], name_a: str, name_b: str) -> str:
    """Which run is better on each question, and whether significantly, in one sentence:
    "runs/a has the lower squared error, significantly (p = 0.003, Diebold-Mariano), and
    runs/b the higher net Sharpe ratio, 0.45 against 0.12, not significantly (...)"."""
    names = {"a": name_a, "b": name_b}
    dm, sd = r["dm"], r["sharpe_difference"]
    first = _favoured(dm, a_if_negative=True)
    if first:
        forecast = f"{names[first]} has the lower squared error, {_how(dm, 'Diebold-Mariano')}"
    elif dm.get("n", 0) >= 3:  # the loss differential does not vary: the same errors
        forecast = "their squared errors are the same on every date"
    else:
        forecast = "too few common dates to test their squared errors"
    side = _favoured(sd, a_if_negative=False)
    if side:
        other = "b" if side == "a" else "a"
        trading = (
            f"{'' if side == first else names[side] + ' '}the higher net Sharpe ratio, "
            f"{_fmt(r[side]['sharpe'])} against {_fmt(r[other]['sharpe'])}, "
            f"{_how(sd, 'Ledoit-Wolf')}"
        )
    elif sd.get("stat") == 0:
        trading = f"the same net Sharpe ratio, {_fmt(r['a']['sharpe'])}"
    else:
        trading = "no test of their net Sharpe ratios (a flat strategy, or under 10 bars)"
    return (
        f"{forecast}, and {trading}; {SIGNIFICANCE_LEVEL:.0%} level, {r['dates']:,} common "
        f"dates of {', '.join(r['tickers'])}."
    )


def _favoured(test: dict[str, Any], a_if_negative: bool) -> str | None:
    """The side ("a" or "b") the test's statistic favours; None when there is no test or
    no difference."""
    stat = test.get("stat")
    if not stat or test.get("p_value") is None:
        return None
    return "a" if (stat < 0) == a_if_negative else "b"


def _how(test: dict[str, Any], name: str) -> str:
    p = test["p_value"]
    how = "significantly" if p < SIGNIFICANCE_LEVEL else "not significantly"
    return f"{how} (p = {p:.2g}, {name})"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
