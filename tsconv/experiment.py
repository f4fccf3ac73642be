"""Recipes that read top-down: prepare data once, fit on a span, train a run, predict.

`tsconv train` and every walk-forward fold go through `fit_span`, so the rules (scaler fitted on
the training rows only, validation after a gap, windows within one ticker) live in one place.
"""

from __future__ import annotations

import csv
import io as _io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tsconv import baselines, checkpoint, covariates, ddp, features, io
from tsconv.config import Config, dump_yaml
from tsconv.data.load import load_frames
from tsconv.errors import DataError, UsageError
from tsconv.features import TickerData
from tsconv.models import build_model, count_parameters, receptive_field
from tsconv.train import (
    FitResult,
    FitState,
    dense_sequence,
    fit,
    fit_sequence,
    predict_rows,
    select_device,
)
from tsconv.windows import Panel, Scaler, WindowDataset, make_panel

Span = tuple[int, int]  # rows [lo, hi) of one ticker


@dataclass
class Prepared:
    cfg: Config
    data: dict[str, TickerData]
    receptive_field: int
    burn_in: int
    calendar: pd.DatetimeIndex  # union of all tickers' usable dates
    sequence: int  # length of a dense training sequence (tsconv.train.dense_sequence)


def prepare(
    cfg: Config,
    frames: dict[str, pd.DataFrame] | None = None,
    covariate_sources: dict[str, pd.DataFrame] | None = None,
) -> Prepared:
    """Features and targets of every ticker (and its covariates), ready for any fold."""
    frames = frames if frames is not None else load_frames(cfg.data)
    if covariate_sources is None:
        covariate_sources = covariates.load_sources(cfg)
    rule = features.UserColumns(
        cfg.data.columns_known_at, cfg.data.nan_policy == "ffill", cfg.data.fill_limit
    )
    data = features.build(
        frames,
        cfg.features,
        cfg.target.horizon,
        cfg.data.price,
        covariates.build(cfg, covariate_sources),
        rule,
    )
    rf = receptive_field(cfg.model)
    sequence, burn_in = dense_sequence(cfg.window, rf, cfg.train.burn_in)
    need = cfg.window + cfg.target.horizon + 1
    for t, td in data.items():
        if len(td.x) < need:
            raise DataError(
                f"{t}: {len(td.x)} usable bars after feature warm-up; at least window + horizon + 1 "
                f"= {need} are needed"
            )
    calendar = pd.DatetimeIndex(
        np.unique(np.concatenate([td.dates.values for td in data.values()]))
    )
    return Prepared(cfg, data, rf, burn_in, calendar, sequence)


def window_warning(cfg: Config, rf: int) -> str | None:
    if cfg.window < rf:
        return (
            f"window {cfg.window} is shorter than the receptive field {rf} by {rf - cfg.window} "
            "steps: the earliest inputs each prediction could use are zero padding"
        )
    return None


def known_rows(td: TickerData) -> int:
    """Rows whose target is already realised in the data."""
    finite = np.isfinite(td.y)
    return int(len(finite) - np.argmax(finite[::-1])) if finite.any() else 0


def split_train_val(
    prep: Prepared, train: dict[str, Span], val_gap: int | None = None
) -> tuple[dict[str, Span], dict[str, Span]]:
    """Cut one common date so that validation is the last `val_fraction` of the training dates."""
    cfg = prep.cfg
    gap = cfg.target.horizon - 1 if val_gap is None else val_gap
    first = min(prep.data[t].dates[lo] for t, (lo, hi) in train.items() if hi > lo)
    last = max(prep.data[t].dates[hi - 1] for t, (lo, hi) in train.items() if hi > lo)
    span = prep.calendar[(prep.calendar >= first) & (prep.calendar <= last)]
    cut = span[int(len(span) * (1 - cfg.train.val_fraction))]
    fit_spans, val_spans = {}, {}
    for t, (lo, hi) in train.items():
        v = max(lo, int(prep.data[t].dates.searchsorted(cut)))
        fit_spans[t] = (lo, max(lo, v - gap))
        val_spans[t] = (v, hi)
    return fit_spans, val_spans


def fit_scalers(prep: Prepared, train: dict[str, Span]) -> dict[str, Scaler]:
    """Each ticker's scaler, fitted on its training rows only."""
    scalers = {}
    for t, td in prep.data.items():
        lo, hi = train.get(t, (0, 0))
        if hi - lo < 2:
            # Not trained on (and not predicted by the caller): any finite scaling will do, and
            # none of its targets are looked at.
            scalers[t] = Scaler.fit(td.x[: prep.cfg.window], np.array([]))
            continue
        scalers[t] = Scaler.fit(td.x[lo:hi], td.y[lo:hi])
    return scalers


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
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(covariates.input_names(cfg)))
    if init_state is not None:
        model.load_state_dict(init_state)
    elif resume is None and getattr(model, "highway", None) is not None:
        fit_highway(model.highway, panel, train, val)
    result = fit(
        model,
        train_ds,
        val_ds if len(val_ds) else None,
        cfg.train,
        seed=seed,
        device=device,
        epochs=epochs,
        resume=resume,
        on_epoch=on_epoch,
        on_step=on_step,
    )
    return model, scalers, panel, result


# Ridge penalties the highway chooses from on validation, in mean-squared-error units on
# standardised features: from almost none to about a hundredth of the least-squares weights.
HIGHWAY_PENALTIES = (1e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def fit_highway(
    highway: torch.nn.Module, panel: Panel, train: dict[str, Span], val: dict[str, Span]
) -> None:
    """Start the highway at the ridge regression of the (scaled) target on the last `lags`
    bars of the features, pooled over tickers and fitted on the training rows, with its
    penalty chosen on the validation rows: the model then starts as a well-regularised linear
    AR model and the network learns what that leaves. Only rows before the fold's validation
    cut are fitted, and only validation rows choose, as for early stopping."""
    lags = highway.lags
    x, y = panel.x.numpy(), panel.y.numpy()

    def target_rows(spans: dict[str, Span]) -> np.ndarray:
        # from the lags-th bar of each ticker on, so every lag read is the ticker's own bar
        rows = [
            global_rows(panel, t, np.arange(max(lo, lags - 1), hi)).numpy()
            for t, (lo, hi) in spans.items()
        ]
        rows = np.concatenate([*rows, np.zeros(0, np.int64)])
        return rows[np.isfinite(y[rows])]

    fit_rows, val_rows = target_rows(train), target_rows(val)
    if len(fit_rows) <= x.shape[1] * lags:
        return  # fewer rows than weights: stay at zero
    coef, penalty = baselines.ridge_select(
        baselines.lagged(x, fit_rows, lags),
        y[fit_rows],
        baselines.lagged(x, val_rows, lags),
        y[val_rows],
        HIGHWAY_PENALTIES,
    )
    highway.set_ridge(coef.reshape(lags, x.shape[1]), penalty)


def global_rows(panel: Panel, ticker: str, rows: np.ndarray) -> torch.Tensor:
    base = int(panel.offsets[panel.tickers.index(ticker)])
    return torch.as_tensor(rows + base, dtype=torch.int64)


# --------------------------------------------------------------------------- tsconv train


def training_spans(prep: Prepared) -> tuple[dict[str, Span], dict[str, Span]]:
    return split_train_val(
        prep, {t: (0, known_rows(td)) for t, td in prep.data.items()}, prep.cfg.train.val_gap
    )


def describe_model(cfg: Config) -> dict[str, Any]:
    model = build_model(cfg.model, len(covariates.input_names(cfg)))
    rf = receptive_field(cfg.model)
    sequence, burn_in = dense_sequence(cfg.window, rf, cfg.train.burn_in)
    dense = cfg.train.targets == "all"
    return {
        "kind": cfg.model.kind,
        "parameters": count_parameters(model),
        "receptive_field": rf,
        "window": cfg.window,
        "training": (
            f"dense targets on {sequence}-bar sequences after a {burn_in}-bar burn-in"
            if dense
            else f"last-step targets on {cfg.window}-bar windows"
        ),
        "warning": window_warning(cfg, rf),
    }


def _metrics_csv(history: list[dict[str, float]]) -> str:
    buf = _io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return buf.getvalue()


def plot_loss(
    path: Path, history: list[dict[str, float]], start: float | None = None, best: int = 0
) -> None:
    """Training and validation loss by epoch, the starting weights' validation loss (epoch 0:
    the zero head plus the highway's ridge fit, the level training must beat) and the epoch
    kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], marker=".", label="training (dropout on)")
    val_ep, val = ep, [h["val_loss"] for h in history]
    if start is not None and np.isfinite(start):
        ax.axhline(
            start, color="grey", ls="--", lw=0.8, label="starting weights (zero head + ridge)"
        )
        val_ep, val = [0, *ep], [start, *val]
    ax.plot(val_ep, val, marker=".", label="validation (dropout off)")
    kept = start if best == 0 else history[best - 1]["val_loss"]
    if kept is not None and np.isfinite(kept):
        ax.plot([best], [kept], "k*", ms=12, label=f"kept: epoch {best}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE of the scaled target")
    ax.legend(fontsize=8)
    fig.text(
        0.01,
        0.01,
        "Validation can sit below training: dropout is on in training only, and the two "
        "spans differ in volatility.",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    io.write_bytes(path, buf.getvalue())


def _processes() -> dict[str, Any]:
    part = ddp.shard()
    return (
        {} if part is None else {"processes": part[1], "backend": torch.distributed.get_backend()}
    )


def run_training(
    cfg: Config, out: Path, *, resume: bool = False, on_step: Any = None, on_epoch_done: Any = None
) -> dict[str, Any]:
    """`tsconv train`: fit on the chronological split and write the run folder."""
    out = Path(out)
    state_path = out / "state.pt"
    resume_state = None
    if resume:
        if not state_path.exists():
            if (out / "model.pt").exists():
                raise UsageError(f"{out}: this run already finished; nothing to resume")
            raise UsageError(f"{out}: no state.pt to resume from")
        payload = torch.load(state_path, map_location="cpu", weights_only=True)
        resume_state = FitState.from_dict(payload["fit"])
    prep = prepare(cfg)
    device = select_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    train, val = training_spans(prep)
    main = ddp.is_main()  # under torchrun, rank 0 alone writes the run folder
    if main:
        io.write_text(out / "config.yaml", dump_yaml(cfg))
        io.write_json(out / "versions.json", io.run_info(cfg.seed, device) | _processes())

    def save_epoch(state: FitState) -> None:
        if main:
            io.save_torch(state_path, {"fit": state.to_dict()})
            io.write_text(out / "metrics.csv", _metrics_csv(state.result.history))
        if on_epoch_done is not None:
            on_epoch_done(state)

    model, scalers, _, result = fit_span(
        prep,
        train,
        val,
        seed=cfg.seed,
        device=device,
        resume=resume_state,
        on_epoch=save_epoch,
        on_step=on_step,
    )
    if not main:
        return {}
    checkpoint.save(
        out / "model.pt",
        cfg=cfg,
        model=model,
        scalers=scalers,
        receptive_field=prep.receptive_field,
        burn_in=prep.burn_in,
        extra={
            "train_end": {
                t: str(prep.data[t].dates[hi - 1].date())
                for t, (lo, hi) in train.items()
                if hi > lo
            }
        },
    )
    io.write_text(out / "metrics.csv", _metrics_csv(result.history))
    plot_loss(out / "loss.png", result.history, result.initial_val, result.best_epoch)
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    summary = {
        "tickers": list(prep.data),
        "device": str(device),
        "seed": cfg.seed,
        "parameters": count_parameters(model),
        "receptive_field": prep.receptive_field,
        "burn_in": prep.burn_in,
        "train_sequence": (
            fit_sequence(prep.sequence, prep.burn_in, [hi for lo, hi in train.values() if hi > lo])
            if cfg.train.targets == "all"
            else cfg.window
        ),
        "epochs_run": len(result.history),
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "initial_val_loss": result.initial_val,
        "best_val_loss": result.best_val,
        "stopped_early": result.stopped_early,
        "train_loss_at_best": best.get("train_loss"),  # None: the starting weights were best
        "train_rows": {t: hi - lo for t, (lo, hi) in train.items()},
        "val_rows": {t: hi - lo for t, (lo, hi) in val.items()},
        "warning": window_warning(cfg, prep.receptive_field),
        **_processes(),
    }
    io.write_json(out / "summary.json", summary)
    state_path.unlink(missing_ok=True)
    io.write_manifest(out, complete=True)
    return summary


# --------------------------------------------------------------------------- tsconv predict


def check_run_folder(run: Path) -> None:
    """Say what `run` is and what to do when it holds no trained model."""
    if (run / "model.pt").exists():
        return
    if not run.is_dir():
        raise UsageError(
            f"{run}: no such run folder; train one with tsconv train --config CONFIG --out {run}"
        )
    if (run / "folds").is_dir() or (run / "predictions.parquet").exists():
        raise UsageError(
            f"{run}: a backtest folder (walk-forward folds keep no model); predict needs a "
            "folder written by tsconv train"
        )
    if (run / "state.pt").exists():
        raise UsageError(
            f"{run}: an unfinished training run; finish it with tsconv train --resume {run}"
        )
    raise UsageError(f"{run}: not a run folder (no model.pt); predict needs tsconv train's output")


def predict_latest(run: Path, tickers: list[str] | None = None) -> list[dict[str, Any]]:
    """The next-step prediction after each ticker's latest bar, from a trained run folder."""
    check_run_folder(Path(run))
    payload = checkpoint.load(Path(run) / "model.pt")
    cfg = checkpoint.config_of(payload, Path(run) / "model.pt")
    if tickers:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"tickers": tickers})})
    prep = prepare(cfg)
    model = build_model(cfg.model, payload["in_features"])
    model.load_state_dict(payload["state_dict"])
    scalers = {}
    for t, td in prep.data.items():
        stored = payload["scalers"].get(t)
        # A ticker the model never saw is scaled on its own history, all of it before the bar.
        scalers[t] = Scaler.from_dict(stored) if stored else Scaler.fit(td.x, td.y)
    panel = make_panel(prep.data, scalers)
    rows = []
    for t, td in prep.data.items():
        last = len(td.x) - 1
        pred = (
            predict_rows(
                model,
                panel,
                global_rows(panel, t, np.array([last])),
                cfg.window,
                torch.device("cpu"),
            )[0]
            * scalers[t].y_scale
        )
        rows.append(
            {
                "ticker": t,
                "last_bar": str(td.dates[last].date()),
                "horizon": cfg.target.horizon,
                "predicted_log_return": float(pred),
                "scaler": "training span" if t in payload["scalers"] else "own history",
            }
        )
    return rows


warnings.filterwarnings("ignore", message=".*weight_norm.*")
