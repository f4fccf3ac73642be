"""A sweep's numbers (sweep.json): the finished trials ranked, how much of the best one's result
is luck, and the chosen config's result on the holdout.

A return forecast is selected on its strategy's net Sharpe ratio or its R^2 (higher is
better); a risk forecast on its loss (lower is better), QLIKE for volatility and the pinball
loss averaged over the levels for quantiles (tsconv.evaluate.risk_summary). The deflated Sharpe
ratio is about selecting a Sharpe ratio among trials: it is not computed for a loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tsconv.evaluate import selection
from tsconv.evaluate.risk_summary import selection_value
from tsconv.evaluate.verdict import edge

# the objectives that score each target.kind's forecast, its default first
OBJECTIVES = {"return": ("sharpe", "r2_oos"), "volatility": ("qlike",), "quantiles": ("pinball",)}
LOSSES = ("qlike", "pinball")  # lower is better
NO_DEFLATED_SHARPE = (
    "not computed: the trials were selected on a loss ({objective}), not on a Sharpe ratio; "
    "the probability of backtest overfitting is computed on each trial's loss per date"
)


def lower_is_better(objective: str) -> bool:
    return objective in LOSSES


def leaderboard(table: pd.DataFrame, objective: str = "sharpe") -> pd.DataFrame:
    """Finished trials, best first by `objective`'s direction (ties: the lower trial number),
    with their rank."""
    done = table[table["state"] == "complete"].sort_values(
        ["value", "trial"], ascending=[lower_is_better(objective), True], kind="stable"
    )
    return done.drop(columns=[c for c in ["state", "error"] if c in done]).assign(
        rank=np.arange(1, len(done) + 1)
    )[["rank", *[c for c in done if c not in ("state", "error")]]]


def luck_measures(
    nets: pd.DataFrame | None,
    performance: pd.DataFrame,
    best: int,
    periods_per_year: float,
    blocks: int,
    objective: str,
) -> dict[str, Any]:
    """How much of trial `best`'s result is luck, from every trial's net returns (`nets`) and
    per-bar objective (`performance`, higher is better; dates in rows, trials in columns): the
    number of distinct trials, the deflated Sharpe ratio (per bar, and annualised), the
    probability of backtest overfitting over `blocks` blocks, and each trial's Sharpe ratio per
    bar. A loss objective (`nets` None): no Sharpe ratio was selected on, so no deflated Sharpe
    ratio and no Sharpe ratios; trials with the same losses bar for bar are one trial."""
    if nets is None:
        distinct = performance.T.drop_duplicates().T
        return {
            "distinct_trials": distinct.shape[1],
            "deflated_sharpe": None,
            "pbo": _pbo(performance, blocks, objective),
            "per_bar_sharpes": None,
        }
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
    return {
        "distinct_trials": distinct.shape[1],
        "deflated_sharpe": dsr,
        "pbo": _pbo(performance, blocks, objective),
        "per_bar_sharpes": per_bar.tolist(),
    }


def _pbo(performance: pd.DataFrame, blocks: int, objective: str) -> dict[str, Any]:
    """PBO of picking the best trial by `objective`: by the Sharpe ratio of its returns, or by
    the mean of a per-bar gain (R^2's squared-error reduction, a loss's negative)."""
    pbo = selection.pbo_cscv(
        performance.to_numpy(),
        blocks,
        statistic="sharpe" if objective == "sharpe" else "mean",
    )
    logits = np.asarray(pbo.pop("logits"))
    pbo["logit_quantiles"] = (
        dict(zip(["q10", "q50", "q90"], np.quantile(logits, [0.1, 0.5, 0.9]).tolist(), strict=True))
        if len(logits)
        else {}
    )
    pbo["bars"] = len(performance)
    return pbo


def holdout_summary(m: dict[str, Any], cut: pd.Timestamp) -> dict[str, Any]:
    """The chosen config's walk-forward result on the holdout, and whether it has an edge, by
    the rule every backtest's bottom line follows (`verdict.edge`)."""
    f, t = m["forecast"]["prediction"], m["trading"]["prediction"]
    dm = f.get("dm_vs", {})
    e = edge(m)
    return {
        **_holdout_span(m, cut),
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


def _holdout_span(m: dict[str, Any], cut: pd.Timestamp) -> dict[str, Any]:
    """Where the holdout starts and what its walk-forward covered."""
    return {
        "start": str(cut.date()),
        **{k: m[k] for k in ("first_date", "last_date", "folds", "n_predictions")},
    }


def risk_holdout_summary(m: dict[str, Any], cut: pd.Timestamp, objective: str) -> dict[str, Any]:
    """The chosen risk config's walk-forward result on the holdout: its loss and each
    baseline's, the Diebold-Mariano tests the backtest made (volatility: on QLIKE; quantiles:
    per level, in its metrics.json), whether it has an edge, and its volatility-managed book."""
    baselines = (
        m["forecast"] if m["target"] == "volatility" else m["levels"][next(iter(m["levels"]))]
    )
    book = m["strategy"]["strategies"]["prediction"]
    return {
        **_holdout_span(m, cut),
        "objective": objective,
        "value": selection_value(m),
        "baselines": {b: selection_value(m, b) for b in baselines if b != "prediction"},
        "dm_vs": m["forecast"]["prediction"]["dm_vs"] if m["target"] == "volatility" else None,
        "forecast_edge": m["edge"]["forecast_edge"] if m["target"] == "volatility" else None,
        "managed_sharpe": book.get("sharpe"),
        "managed_sharpe_vs": book.get("sharpe_vs", {}),
        "bottom_line": m["bottom_line"],
        "backtest_verdict": m["verdict"],
    }
