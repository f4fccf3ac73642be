"""A sweep's numbers (sweep.json): the finished trials ranked, how much of the best one's result
is luck, and the chosen config's result on the holdout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tsconv.evaluate import selection
from tsconv.evaluate.verdict import edge


def leaderboard(table: pd.DataFrame) -> pd.DataFrame:
    """Finished trials, best first (ties: the lower trial number), with their rank."""
    done = table[table["state"] == "complete"].sort_values(
        ["value", "trial"], ascending=[False, True], kind="stable"
    )
    return done.drop(columns=[c for c in ["state", "error"] if c in done]).assign(
        rank=np.arange(1, len(done) + 1)
    )[["rank", *[c for c in done if c not in ("state", "error")]]]


def luck_measures(
    nets: pd.DataFrame,
    performance: pd.DataFrame,
    best: int,
    periods_per_year: float,
    blocks: int,
    objective: str,
) -> dict[str, Any]:
    """How much of trial `best`'s result is luck, from every trial's net returns (`nets`) and
    per-bar objective (`performance`; dates in rows, trials in columns): the number of
    distinct trials, the deflated Sharpe ratio (per bar, and annualised), the probability of
    backtest overfitting over `blocks` blocks, and each trial's Sharpe ratio per bar."""
    per_bar = selection.sharpe_columns(nets.to_numpy())
    # trials with the same returns bar for bar are one trial, not several chances at luck
    distinct = nets.T.drop_duplicates().T
    dsr = selection.deflated_sharpe(
        nets[best].to_numpy(), selection.sharpe_columns(distinct.to_numpy())
    )
    dsr["annualised"] = {
        "sharpe": dsr["sharpe"] * np.sqrt(periods_per_year),
        "expected_max_sharpe": dsr["expected_max_sharpe"] * np.sqrt(periods_per_year),
        "trial_sharpe_std": float(np.sqrt(dsr["sharpe_variance"] * periods_per_year)),
    }
    pbo = selection.pbo_cscv(
        performance.to_numpy(),
        blocks,
        statistic="mean" if objective == "r2_oos" else "sharpe",
    )
    logits = np.asarray(pbo.pop("logits"))
    pbo["logit_quantiles"] = (
        dict(zip(["q10", "q50", "q90"], np.quantile(logits, [0.1, 0.5, 0.9]).tolist(), strict=True))
        if len(logits)
        else {}
    )
    pbo["bars"] = len(performance)
    return {
        "distinct_trials": distinct.shape[1],
        "deflated_sharpe": dsr,
        "pbo": pbo,
        "per_bar_sharpes": per_bar.tolist(),
    }


def holdout_summary(m: dict[str, Any], cut: pd.Timestamp) -> dict[str, Any]:
    """The chosen config's walk-forward result on the holdout, and whether it has an edge, by
    the rule every backtest's bottom line follows (`verdict.edge`)."""
    f, t = m["forecast"]["prediction"], m["trading"]["prediction"]
    dm = f.get("dm_vs", {})
    e = edge(m)
    return {
        "start": str(cut.date()),
        "first_date": m["first_date"],
        "last_date": m["last_date"],
        "folds": m["folds"],
        "n_predictions": m["n_predictions"],
        "r2_oos": f.get("r2_oos"),
        "ic": f.get("ic"),
        "directional_accuracy": f.get("directional_accuracy"),
        "dm_vs_zero": dm.get("zero"),
        "dm_vs_ridge_ar": dm.get("ridge_ar"),
        "sharpe": t.get("sharpe"),
        "sharpe_ci95": t.get("sharpe_ci95"),
        "sharpe_vs_buy_and_hold": t.get("sharpe_vs", {}).get("buy_and_hold", {}),
        "annual_return": t.get("annual_return"),
        "forecast_edge": e["forecast_edge"],
        "trading_edge": e["trading_edge"],
        "verdict": e["verdict"],
        "backtest_verdict": m["verdict"],
    }
