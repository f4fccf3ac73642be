"""`tsconv manage RETURN_RUN VOL_RUN`: the return model's strategy of one finished backtest,
volatility-managed by another's volatility forecast (tsconv.evaluate.risk_strategy), on the
dates and tickers both predicted; against the same scaled by trailing volatility, and
unmanaged, with the Sharpe-difference test.

The return run's positions are its own rule's (backtest.position, its cost threshold,
target_vol, the portfolio) recomputed on the common rows, then scaled each bar by
target_vol / the forecast volatility, at most 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tsconv.errors import UsageError
from tsconv.evaluate import metrics
from tsconv.evaluate.risk_strategy import DEFAULT_TARGET_VOL, managed_return_strategy
from tsconv.evaluate.strategy import periods_per_year, strategy_rows
from tsconv.recipes.compare import _config, finished_backtest
from tsconv.runfolder import RunFolder


def manage_runs(returns: Path, vol: Path, target_vol: float | None = None) -> dict[str, Any]:
    runs = [finished_backtest(RunFolder(p)) for p in (returns, vol)]
    cfg_r, cfg_v = (_config(r) for r in runs)
    if cfg_r.target.kind != "return":
        raise UsageError(f"{returns}: a {cfg_r.target.kind} backtest; give a return backtest first")
    if cfg_v.target.kind != "volatility":
        raise UsageError(
            f"{vol}: a {cfg_v.target.kind} backtest; give a volatility backtest second"
        )
    pr = pd.read_parquet(runs[0].predictions)
    pv = pd.read_parquet(
        runs[1].predictions, columns=["date", "ticker", "prediction", "trailing_mean"]
    )
    common = pr.merge(pv[["date", "ticker"]], on=["date", "ticker"])
    if common.empty:
        raise UsageError(f"{returns} and {vol} have no date and ticker in common")
    periods = periods_per_year(common, cfg_r)
    rows = strategy_rows(common, "prediction", cfg_r)
    rows = rows.merge(common[["date", "ticker", "realized_1"]], on=["date", "ticker"])
    target = target_vol or cfg_v.backtest.target_vol or DEFAULT_TARGET_VOL
    result, _ = managed_return_strategy(rows, pv, cfg_r, periods, target, cfg_v.target.horizon)
    result.update(
        {
            "runs": {"returns": str(returns), "volatility": str(vol)},
            "rows": len(common),
            "first_date": str(common["date"].min().date()),
            "last_date": str(common["date"].max().date()),
        }
    )
    return metrics.clean(result)
