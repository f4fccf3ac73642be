"""A walk-forward fold for the risk targets (`target.kind: volatility | quantiles`): the model's
forecast turned from its log target into a variance (and quantiles), and the fold's rows with
the realised variance or return and every risk baseline, each fitted on the fold's training
rows only. tsconv.recipes.walkforward calls these where the return target has its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from tsconv.data import targets
from tsconv.data.targets import quantile_column
from tsconv.engine.predict import predict_rows
from tsconv.evaluate import risk_baselines
from tsconv.recipes.prepare import Prepared, fold_dates, global_rows

# validation targets a fold needs to calibrate on them rather than on its training rows
MIN_CALIBRATION_ROWS = 100


def is_risk(prep: Prepared) -> bool:
    return prep.cfg.target.kind in targets.RISK_KINDS


def model_forecasts(
    prep: Prepared,
    model: torch.nn.Module,
    panel: Any,
    scalers: dict[str, Any],
    train: dict[str, tuple[int, int]],
    val: dict[str, tuple[int, int]],
    test: dict[str, np.ndarray],
    device: torch.device,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per test ticker: the variance forecast of its test rows (quantiles: a (rows, 1 + levels)
    array, the variance then each level's quantile), and what was fitted on the training rows
    to get it (the calibration constant, the standardised quantiles) with the number of test
    forecasts clipped to the range of the model's forecasts on the training rows."""
    cfg = prep.cfg
    h = cfg.target.horizon

    def z_of(t: str, rows: np.ndarray) -> np.ndarray:
        pred = predict_rows(
            model, panel, global_rows(panel, t, rows), cfg.window, device, amp=cfg.train.amp
        )
        return pred.astype(np.float64) * scalers[t].y_scale

    def stacked(spans: dict[str, tuple[int, int]]) -> list[np.ndarray]:
        """z, base, rv and the h-bar return on the rows of `spans`, tickers one after another."""
        parts: list[list[np.ndarray]] = [[], [], [], []]
        for t, (lo, hi) in spans.items():
            rows = np.arange(max(lo, cfg.window - 1), hi)
            risk = prep.data[t].risk
            for part, values in zip(
                parts,
                (z_of(t, rows), risk["base"][rows], risk["rv"][rows], risk["ret"][rows]),
                strict=True,
            ):
                part.append(values)
        return [np.concatenate([*p, np.zeros(0)]) for p in parts]

    # fitted where the weights were not (the validation rows, when they hold a few hundred
    # targets): an overfitted fit's training residuals are too small, so its constant would
    # be too low and its quantiles too narrow (on the sample, quantiles from every training
    # row missed four levels of five in Kupiec's test; from validation, one)
    trained = stacked(train)
    bounds = targets.forecast_range(trained[0])
    enough = sum(hi - lo for lo, hi in val.values()) >= MIN_CALIBRATION_ROWS
    z, base, rv, ret = stacked(val) if enough else trained
    scale = targets.calibration(z, base, rv, h, bounds)
    info: dict[str, Any] = {"variance_scale": scale}
    out = {}
    k = None
    if cfg.target.kind == "quantiles":
        sigma = np.sqrt(targets.variance_forecast(z, base, h, scale, bounds))
        k = targets.standardized_quantiles(ret, sigma, cfg.target.levels)
        info["standardized_quantiles"] = " ".join(f"{v:.4g}" for v in k)
    clipped = 0
    for t, rows in test.items():
        base = prep.data[t].risk["base"][rows]
        z_test = z_of(t, rows)
        clipped += targets.clipped(z_test, bounds)
        var = targets.variance_forecast(z_test, base, h, scale, bounds)
        if k is None:
            out[t] = var
        else:
            out[t] = np.column_stack([var, np.sqrt(var)[:, None] * k[None, :]])
    info["forecasts_clipped"] = clipped
    return out, info


def fold_rows(
    prep: Prepared,
    fold: Any,
    train: dict[str, tuple[int, int]],
    test: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The fold's test rows: realised variance (volatility) or h-bar return (quantiles), the
    next one-bar return (for strategies), and every baseline; and the fold's info."""
    cfg, bt = prep.cfg, prep.cfg.backtest
    h, levels = cfg.target.horizon, cfg.target.levels
    frames, failed = [], []
    for t, rows in test.items():
        td = prep.data[t]
        lo, hi = train.get(t, (0, 0))
        b = risk_baselines.risk_baselines(td, (lo, hi), rows, h, bt.trailing_window)
        if b.garch.failed is not None:
            failed.append(f"{t}: {b.garch.failed}")
        cols: dict[str, Any] = {
            "date": td.dates[rows],
            "ticker": t,
            "fold": fold.index,
            "prediction": np.nan,
        }
        if cfg.target.kind == "volatility":
            cols["realized"] = td.risk["rv"][rows]
            cols["realized_1"] = td.ret1[rows]
            cols.update(b.variance)
        else:
            cols["realized"] = td.risk["ret"][rows]
            cols["realized_1"] = td.ret1[rows]
            cols["realized_variance"] = td.risk["rv"][rows]
            for q in levels:
                cols[quantile_column("prediction", q)] = np.nan
            for name, qs in risk_baselines.quantile_baselines(
                td, b, rows, h, bt.trailing_window, levels
            ).items():
                for j, q in enumerate(levels):
                    cols[quantile_column(name, q)] = qs[:, j]
        frames.append(pd.DataFrame(cols))
    rows_all = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    info = {
        **fold_dates(prep, fold, train, rows_all),
        # a GARCH fit that failed on a ticker of this fold: EWMA stood in for it there
        "garch_fallback": "; ".join(failed),
    }
    return rows_all, info


def fill_predictions(preds: pd.DataFrame, combined: np.ndarray) -> None:
    """Put the members' mean forecast into `preds`: a variance, or (quantiles) the variance
    then each `prediction@level` column in order."""
    if combined.ndim == 1:
        preds["prediction"] = combined
        return
    preds["prediction"] = combined[:, 0]
    cols = [c for c in preds.columns if c.startswith("prediction@")]
    for j, col in enumerate(cols):
        preds[col] = combined[:, j + 1]
