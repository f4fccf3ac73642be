"""Walk-forward folds: retrain on the past, predict the next test span, roll forward.

Fold k tests the calendar dates [first + k*test_span, first + (k+1)*test_span). For each ticker
its training rows end `gap` bars before its first test row (expanding: from its first row;
sliding: the last `train_span` rows), validation for early stopping is the tail of those rows,
and the scaler is fitted on them. Nothing dated in the test span or later is touched before the
fold's predictions are made. Features are computed once; only scaling is per fold.

A fold's ensemble members are independent (`fit_member`), so any process may fit any of them;
`combine_members` makes the fold's predictions from them. `tsconv backtest` runs every fold,
`tsconv audit` the first few.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from tsconv.data.covariates import input_names
from tsconv.data.features import TickerData
from tsconv.engine.fit import FitResult
from tsconv.engine.predict import predict_rows
from tsconv.errors import DataError
from tsconv.evaluate import baselines
from tsconv.recipes import risk_fold
from tsconv.recipes.fit_span import fit_span, fit_span_members, member_seed, members_together
from tsconv.recipes.prepare import Prepared, fold_dates, global_rows, known_rows, split_train_val


@dataclass(frozen=True)
class Fold:
    index: int
    test_start: pd.Timestamp
    test_end: pd.Timestamp  # exclusive


def fold_bounds(n_dates: int, first_test: int, test_span: int) -> list[tuple[int, int]]:
    """Calendar index ranges [lo, hi) of each test span; the last one may be shorter."""
    return [(lo, min(lo + test_span, n_dates)) for lo in range(first_test, n_dates, test_span)]


def train_rows(
    test_lo: int, gap: int, scheme: str, train_span: int, floor: int = 0
) -> tuple[int, int]:
    """Training target rows [lo, hi) of one ticker whose first test row is `test_lo`.

    hi = test_lo - gap: with gap >= h-1 the last training target, realised at hi-1+h, is known
    by the first test bar.
    """
    hi = max(floor, test_lo - gap)
    lo = floor if scheme == "expanding" else max(floor, hi - train_span)
    return lo, hi


def make_folds(prep: Prepared) -> list[Fold]:
    cfg, cal = prep.cfg.backtest, prep.calendar
    # The last usable test date is the last one whose target is realised in the data.
    last_known = max(td.dates[known_rows(td) - 1] for td in prep.data.values())
    end = min(last_known, pd.Timestamp(cfg.end)) if cfg.end else last_known
    n = int(cal.searchsorted(end, side="right"))
    first = cfg.train_span + cfg.gap
    if cfg.start is not None:
        first = max(first, int(cal.searchsorted(pd.Timestamp(cfg.start))))
    bounds = fold_bounds(n, first, cfg.test_span)
    if not bounds:
        raise DataError(_no_test_dates(prep, n))
    return [
        Fold(k, cal[lo], cal[hi] if hi < len(cal) else cal[-1] + pd.Timedelta(days=1))
        for k, (lo, hi) in enumerate(bounds)
    ]


def _no_test_dates(prep: Prepared, n: int) -> str:
    """What leaves no test date: backtest.start after the last usable date (it once blamed
    train_span), or the training span and gap taking every usable date."""
    cfg, cal = prep.cfg.backtest, prep.calendar
    last = f"{cal[n - 1].date()}" if n else "none"
    if cfg.start is not None and cal.searchsorted(pd.Timestamp(cfg.start)) >= n:
        return (
            f"backtest.start: {cfg.start} is after the last usable test date, {last} (the last "
            f"whose target the data knows{', up to backtest.end' if cfg.end else ''}); set an "
            "earlier start"
        )
    return (
        f"backtest: {n} usable dates (to {last}) leave no test bars after "
        f"backtest.train_span={cfg.train_span} + gap={cfg.gap}; lower train_span or use more data"
    )


def fold_spans(
    prep: Prepared, fold: Fold
) -> tuple[dict[str, tuple[int, int]], dict[str, np.ndarray]]:
    train, test = {}, {}
    for t, td in prep.data.items():
        (lo, hi), rows = _ticker_spans(prep, td, fold)
        if hi - lo <= prep.cfg.window:
            continue  # too little history to fit this ticker's scaler: not traded this fold
        train[t] = (lo, hi)
        if len(rows):
            test[t] = rows
    return train, test


def _ticker_spans(prep: Prepared, td: TickerData, fold: Fold) -> tuple[tuple[int, int], np.ndarray]:
    """One ticker's training rows [lo, hi) in `fold` and its test rows."""
    bt = prep.cfg.backtest
    t_lo = int(td.dates.searchsorted(fold.test_start))
    t_hi = min(int(td.dates.searchsorted(fold.test_end)), known_rows(td))
    return train_rows(t_lo, bt.gap, bt.scheme, bt.train_span), np.arange(
        max(t_lo, prep.cfg.window - 1), t_hi
    )


def left_out(prep: Prepared, folds: list[Fold], predicted: set[str]) -> dict[str, str]:
    """Why each ticker with no prediction in any fold took no part: none of its bars falls on
    a test date, or no fold that tests its bars has more than `window` training bars of it
    (a fold fits each ticker's scaler on them and skips a ticker with fewer)."""
    out = {}
    for t, td in prep.data.items():
        if t in predicted:
            continue
        spans = [_ticker_spans(prep, td, fold) for fold in folds]
        most = max((hi - lo for (lo, hi), rows in spans if len(rows)), default=None)
        bars = (
            f"{len(td.x)} usable bars, {td.dates[0].date()} to {td.dates[-1].date()}"
            if len(td.x)
            else "no usable bars"
        )
        if most is None:
            out[t] = (
                f"{bars}, none of them a test date with a known target (the test dates "
                f"start {folds[0].test_start.date()})"
            )
        else:
            out[t] = (
                f"{bars}, and no fold testing them had more than {most} of them to train on "
                f"(before its test dates); a fold trains on a ticker with more than "
                f"window={prep.cfg.window}"
            )
    return out


@dataclass
class MemberFit:
    """One ensemble member's fit on one fold: its predictions (in return units, for each test
    ticker in `fold_spans` order), its training record and, for member 0, the fold's rows with
    every column but the prediction (the baselines do not depend on the member)."""

    member: int
    predictions: dict[str, np.ndarray]
    result: FitResult
    fit_seconds: float
    predict_seconds: float
    rows: pd.DataFrame | None = None
    info: dict[str, Any] | None = None
    state: dict[str, torch.Tensor] | None = None
    clipped: int = 0  # risk targets: test forecasts clipped to the training range


def fit_member(
    prep: Prepared,
    fold: Fold,
    member: int,
    device: torch.device,
    init_state: dict | None = None,
    keep_state: bool = True,
) -> MemberFit:
    """Fit member `member` of the fold's ensemble (seed `member_seed(seed + fold, member)`) on
    the fold's training rows and predict its test rows. Members share the data and the
    scaler, so they are independent tasks: any process may fit any of them."""
    cfg = prep.cfg
    spans = _split_fold(prep, fold)
    warm = cfg.backtest.retrain == "warm" and init_state is not None
    t0 = time.perf_counter()
    model, scalers, panel, result = fit_span(
        prep,
        spans.fit,
        spans.val,
        seed=member_seed(cfg.seed + fold.index, member),
        device=device,
        init_state=init_state if warm else None,
        epochs=_warm_epochs(prep) if warm else None,
    )
    t_fit = time.perf_counter() - t0
    fitted, risk_info = _predicted(prep, spans, member, model, scalers, panel, result, device)
    fitted.fit_seconds = t_fit
    if keep_state:
        fitted.state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if member == 0:
        _fold_info(prep, fold, spans, fitted, model, scalers, risk_info)
    return fitted


def fit_members_together(
    prep: Prepared,
    fold: Fold,
    device: torch.device,
    init_states: list | None = None,
    keep_state: bool = True,
) -> list[MemberFit]:
    """Every member of the fold's ensemble trained together as one grouped model
    (`train.grouped_members`), then each predicting the test rows as `fit_member` would."""
    cfg = prep.cfg
    spans = _split_fold(prep, fold)
    warm = cfg.backtest.retrain == "warm" and init_states is not None
    t0 = time.perf_counter()
    members = range(cfg.train.ensemble)
    models, scalers, panel, results = fit_span_members(
        prep,
        spans.fit,
        spans.val,
        seeds=[member_seed(cfg.seed + fold.index, m) for m in members],
        device=device,
        init_states=init_states if warm else None,
        epochs=_warm_epochs(prep) if warm else None,
    )
    t_fit = (time.perf_counter() - t0) / len(models)  # the members' share each
    fits = []
    for m, model, result in zip(members, models, results, strict=True):
        fitted, risk_info = _predicted(prep, spans, m, model, scalers, panel, result, device)
        fitted.fit_seconds = t_fit
        if keep_state:
            fitted.state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if m == 0:
            _fold_info(prep, fold, spans, fitted, model, scalers, risk_info)
        fits.append(fitted)
    return fits


class FoldSpans(NamedTuple):
    """A fold's rows per ticker: training (all of it, and split into the fit and the
    validation spans) and test."""

    train: dict[str, tuple[int, int]]
    test: dict[str, np.ndarray]
    fit: dict[str, tuple[int, int]]
    val: dict[str, tuple[int, int]]


def _split_fold(prep: Prepared, fold: Fold) -> FoldSpans:
    train, test = fold_spans(prep, fold)
    if not train:
        raise DataError(
            f"fold {fold.index}: no ticker has more than window={prep.cfg.window} training bars"
        )
    return FoldSpans(train, test, *split_train_val(prep, train, prep.cfg.train.val_gap))


def _warm_epochs(prep: Prepared) -> int:
    """Epochs of a warm retrain (a fold continuing the last one's weights)."""
    return prep.cfg.backtest.warm_epochs or max(1, prep.cfg.train.epochs // 3)


def _predicted(
    prep: Prepared, spans: FoldSpans, member: int, model, scalers, panel, result, device
) -> tuple[MemberFit, dict[str, Any] | None]:
    """A fitted member's test forecasts (in return units) and its training record; for risk
    targets also what their forecasts report (`risk_fold.model_forecasts`)."""
    cfg = prep.cfg
    t0 = time.perf_counter()
    risk_info = None
    if risk_fold.is_risk(prep):  # a variance (and quantiles) from the log target
        predictions, risk_info = risk_fold.model_forecasts(
            prep, model, panel, scalers, spans.train, spans.val, spans.test, device
        )
    else:
        predictions = {
            t: predict_rows(
                model, panel, global_rows(panel, t, r), cfg.window, device, amp=cfg.train.amp
            )
            * scalers[t].y_scale
            for t, r in spans.test.items()
        }
    fitted = MemberFit(member, predictions, result, 0.0, time.perf_counter() - t0)
    if risk_info is not None:
        fitted.clipped = risk_info["forecasts_clipped"]
    return fitted, risk_info


def _fold_info(prep, fold, spans: FoldSpans, fitted: MemberFit, model, scalers, risk_info) -> None:
    """The fold's rows (every column but the prediction) and info row, on member 0's fit:
    the baselines do not depend on the member."""
    if risk_info is not None:
        fitted.rows, fitted.info = risk_fold.fold_rows(prep, fold, spans.train, spans.test)
        fitted.info.update(risk_info)
    else:
        fitted.rows, fitted.info = _fold_rows(prep, fold, spans.train, spans.test, scalers)
    fitted.info["train_rows"] = int(sum(hi - lo for lo, hi in spans.fit.values()))
    fitted.info["val_rows"] = int(sum(hi - lo for lo, hi in spans.val.values()))
    if model.highway is not None:  # the linear part's choice, on this fold's training rows
        fitted.info["linear_lags"] = model.highway.reach()
        fitted.info["linear_terms"] = bar_terms_used(model.highway, input_names(prep.cfg))
        fitted.info["linear_penalty"] = float(model.highway.penalty)


def bar_terms_used(highway: torch.nn.Module, names: list[str]) -> str:
    """The last bar's nonlinear terms the linear part kept, in words: "shape of hl_range"
    (its hinges and square), "steps of hl_range", "hl_range x close_loc", or "" (lags
    only)."""
    hinged = highway.hinge.abs().sum(1) > 0
    stepped = highway.step.abs().sum(1) > 0
    quad = highway.quad.abs() > 0
    out = [f"shape of {n}" for n, h in zip(names, hinged.tolist(), strict=True) if h]
    out += [f"steps of {n}" for n, h in zip(names, stepped.tolist(), strict=True) if h]
    for i, j in quad.nonzero().tolist():
        if i != j:
            out.append(f"{names[i]} x {names[j]}")
    return ", ".join(out)


def _fold_rows(
    prep: Prepared,
    fold: Fold,
    train: dict[str, tuple[int, int]],
    test: dict[str, np.ndarray],
    scalers: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The fold's test rows with realised returns and baselines (the prediction column is
    filled by `combine_members`), and the dates of its spans."""
    cfg, bt = prep.cfg, prep.cfg.backtest
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ROW_COLUMNS}
    reach = bt.ar_lags or prep.receptive_field

    def series(t: str, rows: np.ndarray) -> tuple:  # the ridge baseline's inputs for ticker t
        td = prep.data[t]
        return scalers[t].transform(td.x), td.y, train.get(t, (0, 0)), rows

    if bt.ridge_baseline == "pooled" and test:
        # fitted on every ticker the fold trains on, as the model's linear part is (one with
        # no test rows this fold still has training rows), forecasts for those it tests
        none = np.zeros(0, np.int64)
        forecasts, fit = baselines.pooled_ridge_ar(
            [(*series(t, test.get(t, none)), prep.data[t].dates.asi8) for t in train],
            reach,
            bt.ridge_alpha,
        )
        by_ticker = dict(zip(train, forecasts, strict=True))
        ridges, ridge_fits = [by_ticker[t] for t in test], [fit]
    else:  # one ticker at a time: its scaled features are not all held at once
        ridges, ridge_fits = [], []
        for t, rows in test.items():
            ridge, fit = baselines.ridge_ar(*series(t, rows), reach, bt.ridge_alpha)
            ridges.append(ridge)
            ridge_fits.append(fit)
    for (t, rows), ridge in zip(test.items(), ridges, strict=True):
        td = prep.data[t]
        # one array per column and ticker, one frame for the fold (not a frame per ticker
        # and fold: 20,000 of them for 500 tickers and 40 folds)
        for key, values in (
            ("date", td.dates[rows]),
            ("ticker", np.full(len(rows), t, dtype=object)),
            ("fold", np.full(len(rows), fold.index, dtype=np.int64)),
            ("prediction", np.full(len(rows), np.nan)),
            ("realized", td.y[rows]),
            ("realized_1", td.ret1[rows]),
            ("zero", np.zeros(len(rows))),
            ("persistence", baselines.persistence(td, rows, cfg.target.horizon)),
            (
                "trailing_mean",
                baselines.trailing_mean(td, rows, cfg.target.horizon, bt.trailing_window),
            ),
            ("ridge_ar", ridge),
        ):
            columns[key].append(values)
    rows = pd.DataFrame({k: _joined(v) for k, v in columns.items()}) if test else pd.DataFrame()
    info = {
        **fold_dates(prep, fold, train, rows),
        # what the ridge baseline chose (per ticker: the median over tickers, one fit each)
        "ridge_ar_lags": float(np.median([f.lags for f in ridge_fits])) if ridge_fits else 0.0,
        "ridge_ar_penalty": float(np.median([f.penalty for f in ridge_fits]))
        if ridge_fits
        else 0.0,
    }
    return rows, info


# A fold's rows (predictions.parquet's columns), in order.
ROW_COLUMNS = [
    "date",
    "ticker",
    "fold",
    "prediction",
    "realized",
    "realized_1",
    "zero",
    "persistence",
    "trailing_mean",
    "ridge_ar",
]


def _joined(parts: list) -> Any:
    if isinstance(parts[0], pd.DatetimeIndex):
        return parts[0].append(parts[1:]) if len(parts) > 1 else parts[0]
    return np.concatenate(parts)


def combine_members(fits: list[MemberFit]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The fold's predictions (the members' mean, in float64) and its info row. One member
    gives exactly its own numbers; the same members give the same bytes in any process."""
    fits = sorted(fits, key=lambda f: f.member)
    first = fits[0]
    preds = first.rows.copy()
    if len(preds):
        per_member = [np.concatenate(list(f.predictions.values())) for f in fits]
        risk_fold.fill_predictions(preds, np.mean(np.stack(per_member).astype(np.float64), axis=0))
    results = [f.result for f in fits]
    info = {
        **first.info,
        "test_rows": len(preds),
        # over all members; best_epoch 0 only when no member's training beat its start
        "epochs": sum(len(r.history) for r in results),
        "steps": sum(r.steps for r in results),
        "best_epoch": max(r.best_epoch for r in results),
        "best_val_loss": float(np.mean([r.best_val for r in results])),
        "fit_seconds": sum(f.fit_seconds for f in fits),
        "predict_seconds": sum(f.predict_seconds for f in fits),
    }
    if "forecasts_clipped" in info:  # every member's, not only the first's
        info["forecasts_clipped"] = sum(f.clipped for f in fits)
    if len(fits) > 1:
        info["members"] = len(fits)
        info["members_kept_start"] = sum(r.best_epoch == 0 for r in results)
        info["member_best_epochs"] = " ".join(str(r.best_epoch) for r in results)
    return preds, info


def run_fold(
    prep: Prepared, fold: Fold, device: torch.device, init_state: list | None
) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, torch.Tensor]]]:
    """Every member of the fold's ensemble, one after another; `init_state` (warm retrain):
    the members' weights from the previous fold, each member continuing its own."""
    if members_together(prep):
        fits = fit_members_together(prep, fold, device, init_state)
    else:
        fits = [
            fit_member(prep, fold, m, device, init_state[m] if init_state else None)
            for m in range(prep.cfg.train.ensemble)
        ]
    preds, info = combine_members(fits)
    return preds, info, [f.state for f in fits]
