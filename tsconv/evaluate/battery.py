"""Scoring the randomized known-answer battery (tsconv.synthetic.draw_spec, generate) against
what the data can teach.

For each draw, the attainable reference is a least-squares fit of the true functional form (the
signal's basis, tsconv.synthetic.SignalForm) on each walk-forward fold's training dates, pooled
over the tickers, predicting that fold's test rows: what this much data teaches a model that
knows the form and has only its coefficient to learn. The score of a run is its R^2 out of sample
over the attainable reference's, both as metrics.json's `r2_oos` (R^2 against the zero forecast
over the predicted rows).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tsconv import synthetic
from tsconv.data.features import compute_features, make_target
from tsconv.evaluate import metrics

# A run has an edge when the model's squared error is below the zero forecast's at this level,
# Holm-adjusted over the baselines as metrics.json's forecast.prediction.dm_vs.
SIGNIFICANCE = 0.05
# Issue 30's every-draw bar: a signal draw's model finds at least this share of the attainable.
SHARE = 0.5


def signal_basis(form: synthetic.SignalForm, frame: pd.DataFrame) -> pd.Series:
    """The basis of `form` computed from a ticker's bars with tsconv's feature definitions:
    what a config with those features sees. NaN where the features have too little history."""
    if form.kind == "none":
        return pd.Series(0.0, index=frame.index)
    if form.kind == "lags":
        r = compute_features(frame, ["log_return"])["log_return"]
        return sum(w * r.shift(k) for k, w in enumerate(form.weights))
    feats = compute_features(frame, list(form.features))
    values = {name: feats[name].to_numpy() for name in form.features}
    return pd.Series(synthetic.basis_of(form, values), index=frame.index)


def attainable_forecast(
    pred: pd.DataFrame,
    folds: pd.DataFrame,
    basis: dict[str, pd.Series],
    target: dict[str, pd.Series],
) -> np.ndarray:
    """For every row of `pred` (date, ticker, fold), the forecast coefficient * basis with the
    coefficient fitted by least squares (no intercept: the form has none) of `target` on
    `basis` over the rows of its fold's training dates (folds.csv's train_start..train_end),
    all tickers pooled. Both series are per ticker, by date; target[t] is the return from t to
    t+1."""
    out = np.full(len(pred), np.nan)
    for fold in folds.itertuples():
        lo, hi = pd.Timestamp(fold.train_start), pd.Timestamp(fold.train_end)
        xy = xx = 0.0
        for t, x in basis.items():
            rows = (x.index >= lo) & (x.index <= hi)
            xs, ys = x.to_numpy()[rows], target[t].to_numpy()[rows]
            ok = np.isfinite(xs) & np.isfinite(ys)
            xy, xx = xy + float(xs[ok] @ ys[ok]), xx + float(xs[ok] @ xs[ok])
        coef = xy / xx if xx > 0 else 0.0
        test = (pred["fold"] == fold.fold).to_numpy()
        for t, x in basis.items():
            mine = test & (pred["ticker"] == t).to_numpy()
            out[mine] = coef * x.reindex(pd.DatetimeIndex(pred.loc[mine, "date"])).to_numpy()
    return out


def attainable_of_draw(
    answer: synthetic.KnownAnswer, pred: pd.DataFrame, folds: pd.DataFrame
) -> np.ndarray:
    """`attainable_forecast` for every row of a draw's backtest (NaN where the basis is)."""
    basis = {t: signal_basis(answer.draw.form, f) for t, f in answer.frames.items()}
    target = {t: make_target(f) for t, f in answer.frames.items()}
    return attainable_forecast(pred, folds, basis, target)


def short_of_share(
    pred: pd.DataFrame, attainable: np.ndarray, share: float = SHARE
) -> dict[str, Any]:
    """Whether the model's R^2 is below `share` of the attainable reference's by more than
    chance: a one-sided test on the same rows. With y the realized return, R^2_model >= share *
    R^2_attainable is sum(d) <= 0 for d = e_model - share * e_attainable - (1 - share) * y^2
    (e the squared errors), so d is summed per date (tickers on one date share their noise)
    and tested as Diebold-Mariano's loss difference. A ratio far below `share` on a draw whose
    attainable R^2 is a few thousandths can be chance; a small p-value here cannot."""
    y = pred["realized"].to_numpy()
    a = np.nan_to_num(attainable)
    d = (pred["prediction"].to_numpy() - y) ** 2 - share * (a - y) ** 2 - (1 - share) * y**2
    per_date = pd.Series(d).groupby(pred["date"].to_numpy()).sum().to_numpy()
    dm = metrics.diebold_mariano(per_date, np.zeros_like(per_date))
    p = None if dm["stat"] is None else 0.5 * math.erfc(dm["stat"] / math.sqrt(2))  # P(Z >= z)
    return {"stat": dm["stat"], "p_value": p, "dates": len(per_date)}


def score_draw(
    answer: synthetic.KnownAnswer,
    metrics_json: dict[str, Any],
    pred: pd.DataFrame,
    folds: pd.DataFrame,
) -> dict[str, Any]:
    """One backtest of one draw: the oracle's, attainable reference's, ridge AR's and the
    model's R^2 out of sample on the predicted rows, the model's share of the attainable
    (`ratio`, for draws with a signal), whether that share is below `SHARE` by more than
    chance (`short_p`, one-sided) and its DM test against the zero forecast."""
    realized = pred["realized"].to_numpy()
    attainable = attainable_of_draw(answer, pred, folds)
    forecast = metrics_json["forecast"]
    model = forecast["prediction"]["r2_oos"]
    attainable_r2 = metrics.forecast_metrics(np.nan_to_num(attainable), realized)["r2_oos"]
    dm, dm_zero = forecast["prediction"]["dm_vs_zero"], forecast["prediction"]["dm_vs"]["zero"]
    has_signal = answer.draw.form.kind != "none"
    short = short_of_share(pred, attainable) if has_signal else {"p_value": None}
    return {
        "oracle": synthetic.oracle_r2_of(pred, answer.oracles),
        "attainable": attainable_r2,
        "ridge": forecast["ridge_ar"]["r2_oos"],
        "model": model,
        "ratio": model / attainable_r2 if has_signal and attainable_r2 > 0 else None,
        "short_p": short["p_value"],
        "dm_stat": dm["stat"],
        "dm_p": dm["p_value"],
        "dm_p_holm": dm_zero["p_holm"],
        "edge": bool(
            dm["stat"] is not None
            and dm["stat"] < 0
            and dm_zero["p_holm"] is not None
            and dm_zero["p_holm"] < SIGNIFICANCE
        ),
        "attainable_rows": int(np.isfinite(attainable).sum()),
        "rows": len(pred),
    }


def scores_by_fold(
    answer: synthetic.KnownAnswer, pred: pd.DataFrame, folds: pd.DataFrame
) -> list[dict[str, Any]]:
    """`score_draw`'s R^2s fold by fold: where a draw's score is won or lost. A fold whose
    oracle explains almost nothing (a loud stretch of GARCH noise) is one where no model
    can gain, and the model's share of the attainable there means little."""
    attainable = np.nan_to_num(attainable_of_draw(answer, pred, folds))
    realized = pred["realized"].to_numpy()
    out = []
    for fold in folds.itertuples():
        mine = (pred["fold"] == fold.fold).to_numpy()
        if not mine.any():
            continue

        def r2(forecast: np.ndarray, mine: np.ndarray = mine) -> float:
            return metrics.forecast_metrics(forecast[mine], realized[mine])["r2_oos"]

        out.append(
            {
                "fold": int(fold.fold),
                "test_start": fold.test_start,
                "rows": int(mine.sum()),
                "oracle": synthetic.oracle_r2_of(pred[mine], answer.oracles),
                "attainable": r2(attainable),
                "ridge": r2(pred["ridge_ar"].to_numpy()),
                "model": r2(pred["prediction"].to_numpy()),
                "linear_terms": getattr(fold, "linear_terms", None),
                "linear_penalty": getattr(fold, "linear_penalty", None),
                "best_epoch": getattr(fold, "best_epoch", None),
            }
        )
    return out


def summarize_battery(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One config's battery: the median and least model / attainable ratio over the draws with
    a signal, the median per family, how many signal draws fell short of `SHARE` of the
    attainable by more than chance, and how many null draws showed a significant edge.
    Each row is a `score_draw` result plus the draw's "family"."""
    signal = [r for r in rows if r["family"] != "null"]
    scored = [r for r in signal if r["ratio"] is not None and math.isfinite(r["ratio"])]
    ratios = [r["ratio"] for r in scored]
    nulls = [r for r in rows if r["family"] == "null"]
    by_family: dict[str, list[float]] = {}
    for r in scored:
        by_family.setdefault(r["family"], []).append(r["ratio"])
    return {
        "draws": len(rows),
        "signal_draws": len(signal),
        "median_ratio": float(np.median(ratios)) if ratios else None,
        "min_ratio": float(np.min(ratios)) if ratios else None,
        "by_family": {f: float(np.median(v)) for f, v in sorted(by_family.items())},
        "signal_with_edge": sum(r["edge"] for r in signal),
        "short_of_share": sum(
            r["short_p"] is not None and r["short_p"] < SIGNIFICANCE for r in signal
        ),
        "null_draws": len(nulls),
        "null_with_edge": sum(r["edge"] for r in nulls),
    }


def input_gaps(form: synthetic.SignalForm, features: list[str], receptive_field: int) -> str:
    """What a config lacks to see a draw's signal: a driver that is not among its features, or
    more lags than its model's receptive field. Empty when it has everything."""
    gaps = [f"no {name}" for name in form.features if name not in features]
    if form.kind == "lags" and "log_return" not in features:
        gaps.append("no log_return")
    if form.kind == "lags" and len(form.weights) > receptive_field:
        gaps.append(f"lags {len(form.weights)} > receptive field {receptive_field}")
    return "; ".join(gaps)
