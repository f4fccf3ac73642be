"""`tsconv predict`: the next-bar forecast of a trained run for each ticker's latest bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tsconv.engine import checkpoint
from tsconv.engine.predict import predict_rows
from tsconv.engine.runtime import intra_op_threads, recorded_threads
from tsconv.engine.windows import Panel, Scaler, make_panel
from tsconv.errors import CheckpointError, UsageError
from tsconv.evaluate.strategy import position_words, strategy_rows
from tsconv.models.registry import build_model
from tsconv.recipes.prepare import global_rows, prepare
from tsconv.runfolder import RunFolder


def load_members(
    model_cfg: Any, in_features: int, states: list[dict[str, torch.Tensor]]
) -> list[torch.nn.Module]:
    """One model per stored state: an ensemble's members, or a single model's."""
    models = []
    for state in states:
        models.append(build_model(model_cfg, in_features))
        models[-1].load_state_dict(state)
    return models


def ensemble_predict(
    models: list[torch.nn.Module], panel: Panel, rows: torch.Tensor, window: int, device: Any
) -> np.ndarray:
    """The members' mean prediction at `rows` (scaled), averaged in float64."""
    preds = [predict_rows(m, panel, rows, window, device) for m in models]
    return np.mean(np.stack(preds).astype(np.float64), axis=0)


def check_run_folder(run: RunFolder) -> None:
    """Say what `run` is and what to do when it holds no trained model."""
    if run.model.exists():
        return
    where = run.path
    if where.is_file():
        # `--run runs/x/model.pt` once got "no such run folder; ... --out runs/x/model.pt"
        raise UsageError(
            f"{where} is a file; --run takes the run folder that holds it: --run {where.parent}"
        )
    if not where.is_dir():
        raise UsageError(
            f"{where}: no such run folder; train one with "
            f"tsconv train --config CONFIG --out {where}"
        )
    if run.folds.is_dir() or run.predictions.exists():
        raise UsageError(
            f"{where}: a backtest folder (walk-forward folds keep no model); predict needs a "
            "folder written by tsconv train"
        )
    if run.training_state.exists():
        raise UsageError(
            f"{where}: an unfinished training run; finish it with tsconv train --resume {where}"
        )
    raise UsageError(
        f"{where}: not a run folder (no {run.model.name}); predict needs tsconv train's output"
    )


def predict_latest(run: Path, tickers: list[str] | None = None) -> list[dict[str, Any]]:
    """The next-step prediction after each ticker's latest bar, from a trained run folder."""
    folder = RunFolder(run)
    check_run_folder(folder)
    payload = checkpoint.load(folder.model)
    cfg = checkpoint.config_of(payload, folder.model)
    if tickers:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"tickers": tickers})})
    # the run's own thread count (its config's, or the one it trained on): a forecast's last
    # bits, and so the printed figures, may depend on it, and must not on the process's
    with intra_op_threads(cfg.train.threads or recorded_threads(folder.versions)):
        return _latest(folder, payload, cfg)


def _latest(folder: RunFolder, payload: dict[str, Any], cfg: Any) -> list[dict[str, Any]]:
    prep = prepare(cfg)
    states = payload.get("ensemble") or [payload["state_dict"]]
    try:
        models = load_members(cfg.model, payload["in_features"], states)
    except (RuntimeError, KeyError, TypeError) as exc:  # weights of another shape than the config's
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{folder.model}: its weights do not fit the model its config describes ({detail})"
        ) from None
    scalers = {}
    for t, td in prep.data.items():
        stored = payload["scalers"].get(t)
        # A ticker the model never saw is scaled on its own history, all of it before the bar.
        scalers[t] = (
            Scaler.from_dict(stored) if stored else Scaler.fit(td.x, td.y, td.feature_names)
        )
    panel = make_panel(prep.data, scalers)
    if cfg.target.kind != "return":  # the forecast volatility (and quantiles), no position
        from tsconv.recipes.risk_predict import latest_risk

        return latest_risk(prep, models, panel, scalers, set(payload["scalers"]), ensemble_predict)
    rows, history = [], []
    for t, td in prep.data.items():
        last = len(td.x) - 1
        pred = _predict(models, panel, t, np.array([last]), cfg.window)[0] * scalers[t].y_scale
        # the position rules look back at earlier forecasts (scaled) and returns (target_vol)
        earlier = np.arange(max(cfg.window - 1, last - LOOKBACK), last)
        before = _predict(models, panel, t, earlier, cfg.window) * scalers[t].y_scale
        history.append(_bars(t, td, np.append(earlier, last), np.append(before, pred)))
        rows.append(
            {
                "ticker": t,
                "last_bar": str(td.dates[last].date()),
                "horizon": cfg.target.horizon,
                "predicted_log_return": float(pred),
                "predicted_bps": float(pred * 1e4),
                "scaler": "training span" if t in payload["scalers"] else "own history",
                **({"members": len(models)} if len(models) > 1 else {}),
            }
        )
    held = latest_positions(pd.concat(history, ignore_index=True), cfg)
    rule = position_words(cfg)
    return [r | {"position": held[r["ticker"]], "position_rule": rule} for r in rows]


# metrics.positions' and metrics.target_volatility's look-back (63 bars), and the bar before
LOOKBACK = 64


def _predict(models, panel: Panel, ticker: str, rows: np.ndarray, window: int) -> np.ndarray:
    if not len(rows):
        return np.array([])
    return ensemble_predict(
        models, panel, global_rows(panel, ticker, rows), window, torch.device("cpu")
    )


def _bars(ticker: str, td: Any, rows: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """The ticker's latest bars as a backtest's predictions frame (no realised return on the
    last: its future is unknown)."""
    return pd.DataFrame(
        {
            "date": td.dates[rows],
            "ticker": ticker,
            "fold": 0,
            "prediction": pred,
            "realized_1": td.ret1[rows],
        }
    )


def latest_positions(frame: pd.DataFrame, cfg: Any) -> dict[str, float]:
    """What the backtest's rule (backtest.position, its cost threshold, target_vol, or the
    portfolio's ranking) holds on each ticker's latest bar: the same code the backtest trades."""
    rows = strategy_rows(frame, "prediction", cfg)
    last = rows.sort_values("date", kind="stable").groupby("ticker").tail(1)
    return {t: float(w) + 0.0 for t, w in zip(last["ticker"], last["weight"], strict=True)}
