"""`tsconv predict` for the risk targets: the forecast volatility (and quantiles) after each
ticker's latest bar. The calibration constant (and the standardised quantiles) are fitted as
a backtest fold fits them, on the validation rows of the run's training split of the data at
hand (tsconv.recipes.prepare.training_spans): for the data the run trained on, its own. The
forecast is clipped, as a fold's is, to the range of the model's forecasts on the rows it
trains on (every row whose target is known)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tsconv.data import targets
from tsconv.recipes.prepare import Prepared, global_rows, known_rows, training_spans


def latest_risk(
    prep: Prepared,
    models: list,
    panel: Any,
    scalers: dict[str, Any],
    fitted: set[str],
    ensemble_predict: Callable[..., np.ndarray],
) -> list[dict[str, Any]]:
    """One row per ticker: the variance, volatility (per h bars and annualised at 252 bars a
    year) and, for quantiles, each level's log-return quantile; `ensemble_predict`: the
    members' mean prediction (tsconv.recipes.predict)."""
    cfg = prep.cfg
    h = cfg.target.horizon
    device = torch.device("cpu")

    def z_of(t: str, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros(0)
        pred = ensemble_predict(models, panel, global_rows(panel, t, rows), cfg.window, device)
        return np.asarray(pred, dtype=np.float64) * scalers[t].y_scale

    known = [z_of(t, np.arange(cfg.window - 1, known_rows(td))) for t, td in prep.data.items()]
    bounds = targets.forecast_range(np.concatenate(known))
    _, val = training_spans(prep)
    zs, bases, rvs, rets = [], [], [], []
    for t, (lo, hi) in val.items():
        rows = np.arange(max(lo, cfg.window - 1), hi)
        risk = prep.data[t].risk
        zs.append(z_of(t, rows))
        bases.append(risk["base"][rows])
        rvs.append(risk["rv"][rows])
        rets.append(risk["ret"][rows])
    z, base, rv, ret = (np.concatenate([*p, np.zeros(0)]) for p in (zs, bases, rvs, rets))
    scale = targets.calibration(z, base, rv, h, bounds)
    k = None
    if cfg.target.kind == "quantiles":
        sigma = np.sqrt(targets.variance_forecast(z, base, h, scale, bounds))
        k = targets.standardized_quantiles(ret, sigma, cfg.target.levels)
    periods = 252
    out = []
    for t, td in prep.data.items():
        last = len(td.x) - 1
        z_last = z_of(t, np.array([last]))
        var = float(targets.variance_forecast(z_last, td.risk["base"][[last]], h, scale, bounds)[0])
        row: dict[str, Any] = {
            "ticker": t,
            "last_bar": str(td.dates[last].date()),
            "horizon": h,
            "predicted_variance": var,
            "predicted_vol": math.sqrt(var),
            "predicted_vol_annualised": math.sqrt(var / h * periods),
            "proxy": cfg.target.proxy,
            # the forecast was beyond the model's forecasts on the training rows: clipped to them
            "clipped": targets.clipped(z_last, bounds) > 0,
            "scaler": "training span" if t in fitted else "own history",
            **({"members": len(models)} if len(models) > 1 else {}),
        }
        if k is not None:
            row["quantiles"] = {
                f"{q:g}": math.sqrt(var) * float(v)
                for q, v in zip(cfg.target.levels, k, strict=True)
            }
        out.append(row)
    return out
