"""Fit one model on one training span: build it, start its linear part at a ridge fit, train."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tsconv.data import covariates
from tsconv.engine import linear
from tsconv.engine.fit import FitResult, FitState, fit
from tsconv.engine.fit_members import fit_members
from tsconv.engine.linear import RidgeFit
from tsconv.engine.windows import Panel, Scaler, WindowDataset, fit_sequence, make_panel
from tsconv.errors import DataError
from tsconv.models.registry import build_model
from tsconv.recipes.prepare import (
    Prepared,
    Span,
    fit_scalers,
    global_rows,
)


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member `member` of a fit seeded `seed`. Member 0 keeps `seed`, so
    an ensemble of one is the single model, bit for bit; the others draw theirs from numpy's
    SeedSequence of (seed, member), which almost surely repeats no other fit's seed (a fold's
    seed is the config's plus the fold's index)."""
    if member == 0:
        return seed
    return int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


def members_together(prep: Prepared) -> bool:
    """Whether an ensemble's members train together as one grouped model."""
    return prep.cfg.train.grouped_members and prep.cfg.train.ensemble > 1


def fit_span(
    prep: Prepared,
    train: dict[str, Span],
    val: dict[str, Span],
    *,
    seed: int,
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None = None,
    epochs: int | None = None,
    resume: FitState | None = None,
    on_epoch: Any = None,
    on_step: Any = None,
) -> tuple[torch.nn.Module, dict[str, Scaler], Panel, FitResult]:
    """Fit scalers on the training rows only, then train a model on those rows."""
    scalers, panel, train_ds, val_ds = span_windows(prep, train, val)
    model = start_model(prep, panel, [train, val], seed, init_state, fit_linear=resume is None)
    result = fit(
        model,
        train_ds,
        val_ds if len(val_ds) else None,
        prep.cfg.train,
        seed=seed,
        device=device,
        epochs=epochs,
        resume=resume,
        on_epoch=on_epoch,
        on_step=on_step,
    )
    return model, scalers, panel, result


def fit_span_members(
    prep: Prepared,
    train: dict[str, Span],
    val: dict[str, Span],
    *,
    seeds: list[int],
    device: torch.device,
    init_states: list[dict[str, torch.Tensor]] | None = None,
    epochs: int | None = None,
) -> tuple[list[torch.nn.Module], dict[str, Scaler], Panel, list[FitResult]]:
    """`fit_span` for each of `seeds`, the members trained together as one grouped model
    (`tsconv.engine.fit_members`). They share the scalers, the windows and the linear part:
    fitted once, it is what each member's own fit would choose (the same rows)."""
    scalers, panel, train_ds, val_ds = span_windows(prep, train, val)
    models: list[torch.nn.Module] = []
    for m, seed in enumerate(seeds):
        init = init_states[m] if init_states else None
        model = start_model(prep, panel, [train, val], seed, init, fit_linear=not models)
        if models and init is None and model.highway is not None:
            model.highway.load_state_dict(models[0].highway.state_dict())
        models.append(model)
    results = fit_members(
        models,
        train_ds,
        val_ds if len(val_ds) else None,
        prep.cfg.train,
        seeds=seeds,
        device=device,
        epochs=epochs,
    )
    return models, scalers, panel, results


def span_windows(
    prep: Prepared, train: dict[str, Span], val: dict[str, Span]
) -> tuple[dict[str, Scaler], Panel, WindowDataset, WindowDataset]:
    """Scalers fitted on the training rows only, the scaled panel, and the training and
    validation windows."""
    cfg = prep.cfg
    if not any(hi - lo > cfg.window for lo, hi in train.values()):
        counts = ", ".join(f"{t}: {hi - lo}" for t, (lo, hi) in train.items())
        raise DataError(
            f"{counts} training bars, not more than window={cfg.window}; lower window or "
            "train.val_fraction, or use more data"
        )
    scalers = fit_scalers(prep, train)
    panel = make_panel(prep.data, scalers)
    index = {t: i for i, t in enumerate(panel.tickers)}
    mode = "all" if cfg.train.targets == "all" else "last"
    sequence = fit_sequence(
        prep.sequence, prep.burn_in, [hi for lo, hi in train.values() if hi > lo]
    )

    def dataset(spans: dict[str, Span], m: str) -> WindowDataset:
        return WindowDataset(
            panel,
            [(index[t], lo, hi) for t, (lo, hi) in spans.items() if hi > lo],
            sequence if m == "all" else cfg.window,
            m,
            prep.burn_in,
        )

    train_ds = dataset(train, mode)
    if len(train_ds) == 0:
        raise DataError(
            f"no training target has the {prep.burn_in} bars of context its receptive field "
            f"({prep.receptive_field}) needs; lower window or the model's depth, or use more data"
        )
    val_ds = dataset(val, "last")  # validate exactly as we predict: the window ending at the row
    return scalers, panel, train_ds, val_ds


def start_model(
    prep: Prepared,
    panel: Panel,
    spans: list[dict[str, Span]],
    seed: int,
    init_state: dict[str, torch.Tensor] | None,
    fit_linear: bool,
) -> torch.nn.Module:
    """The model as its seed initialises it, with `init_state`'s weights if given, else (with
    `fit_linear`) its linear part fitted on `spans`."""
    torch.manual_seed(seed)
    model = build_model(prep.cfg.model, len(covariates.input_names(prep.cfg)))
    if init_state is not None:
        model.load_state_dict(init_state)
    elif fit_linear and model.highway is not None:
        fit_highway(model.highway, panel, spans, prep)
    return model


def fit_highway(
    highway: torch.nn.Module, panel: Panel, spans: list[dict[str, Span]], prep: Prepared
) -> RidgeFit:
    """Set the highway to the ridge regression of the (scaled) target on the last bars of
    the features, pooled over tickers, with its lags (up to the highway's reach) and penalty
    chosen by cross-validation over stretches of time of the fold's training rows `spans`
    (`tsconv.engine.linear`); the model then starts as a well-regularised linear model and
    the network learns what it leaves.

    The spans are the network's fit and validation rows together: the cross-validation is the
    linear part's own validation, and a fifth fewer rows cost it more than anything else
    (the first fold of a 3,200-bar battery draw chose the zero forecast on its 800 fit rows
    and the 40-bar sum on all 1,000). Early stopping still judges the network fairly: the
    start it compares against and every later epoch carry the same fixed linear part, so only
    what the network adds is scored on rows it did not train on."""
    x, y = panel.x.numpy(), panel.y.numpy()
    rows, since, dates = [], [], []
    for part in spans:
        for t, (lo, hi) in part.items():
            rows.append(global_rows(panel, t, np.arange(lo, hi)).numpy())
            since.append(np.full(hi - lo, panel.offsets[panel.tickers.index(t)]))
            dates.append(prep.data[t].dates[lo:hi].asi8)
    rows_all, since_all, dates_all = (
        np.concatenate([*parts, np.zeros(0, np.int64)]) for parts in (rows, since, dates)
    )
    known = np.isfinite(y[rows_all])
    chosen = linear.select_ridge(
        x, y, rows_all[known], highway.lags, since_all[known], dates_all[known], nonlinear=True
    )
    highway.set_ridge(
        chosen.coef, chosen.penalty, chosen.hinge, chosen.quad, chosen.offset, chosen.step
    )
    return chosen
