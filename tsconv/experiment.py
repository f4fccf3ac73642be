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
    cpu_state,
    dense_sequence,
    fit,
    fit_sequence,
    intra_op_threads,
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


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member `member` of a fit seeded `seed`. Member 0 keeps `seed`, so
    an ensemble of one is the single model, bit for bit; the others draw theirs from numpy's
    SeedSequence of (seed, member), which almost surely repeats no other fit's seed (a fold's
    seed is the config's plus the fold's index)."""
    if member == 0:
        return seed
    return int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


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


def _metrics_csv(histories: list[list[dict[str, float]]], members: int = 1) -> str:
    """Every epoch's row; in an ensemble, each row starts with its member's number."""
    rows = [
        ({"member": m} if members > 1 else {}) | row
        for m, history in enumerate(histories)
        for row in history
    ]
    buf = _io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def plot_loss(path: Path, results: list[dict[str, Any]]) -> None:
    """Training and validation loss by epoch, the starting weights' validation loss (epoch 0:
    the zero head plus the highway's ridge fit, the level training must beat) and the epoch
    kept; for an ensemble, each member's validation curve and kept epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    single = len(results) == 1
    for m, r in enumerate(results):
        history, start, best = r["history"], r["initial_val"], r["best_epoch"]
        ep = [h["epoch"] for h in history]
        if single:
            ax.plot(
                ep, [h["train_loss"] for h in history], marker=".", label="training (dropout on)"
            )
        val_ep, val = ep, [h["val_loss"] for h in history]
        if start is not None and np.isfinite(start):
            if single or m == 0:
                label = "starting weights (zero head + ridge)"
                ax.axhline(start, color="grey", ls="--", lw=0.8, label=label)
            val_ep, val = [0, *ep], [start, *val]
        label = "validation (dropout off)" if single else f"member {m}: validation"
        (line,) = ax.plot(val_ep, val, marker=".", lw=1 if single else 0.8, label=label)
        kept = start if best == 0 else history[best - 1]["val_loss"]
        if kept is not None and np.isfinite(kept):
            words = f"kept: epoch {best}" if single else ("kept epoch" if m == 0 else None)
            ax.plot(
                [best],
                [kept],
                "*",
                color="k" if single else line.get_color(),
                ms=12 if single else 9,
                label=words,
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE of the scaled target")
    ax.legend(fontsize=8)
    note = (
        "Validation can sit below training: dropout is on in training only, and the two "
        "spans differ in volatility."
        if single
        else f"{len(results)} members from their own seeds; a star marks the epoch each kept."
    )
    fig.text(0.01, 0.01, note, fontsize=7)
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
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    on_step: Any = None,
    on_epoch_done: Any = None,
    on_member: Any = None,
) -> dict[str, Any]:
    """`tsconv train`: fit on the chronological split and write the run folder. With
    `train.ensemble: K` the K members are trained one after another (`on_member(m)` as each
    starts), each from its own seed; a resume continues the member that was training."""
    with intra_op_threads(cfg.train.threads):
        return _run_training(cfg, Path(out), resume, on_step, on_epoch_done, on_member)


def check_resumable(out: Path) -> None:
    """Refuse `--resume` on a folder without an interrupted training run in it."""
    if not (out / "state.pt").exists():
        if (out / "model.pt").exists():
            raise UsageError(f"{out}: this run already finished; nothing to resume")
        raise UsageError(f"{out}: no state.pt to resume from")


def _run_training(
    cfg: Config, out: Path, resume: bool, on_step: Any, on_epoch_done: Any, on_member: Any
) -> dict[str, Any]:
    state_path = out / "state.pt"
    resume_state, first, done = None, 0, []
    if resume:
        check_resumable(out)
        payload = torch.load(state_path, map_location="cpu", weights_only=True)
        first, done = payload.get("member", 0), payload.get("done", [])
        if payload.get("fit") is not None:
            resume_state = FitState.from_dict(payload["fit"])
    prep = prepare(cfg)
    device = select_device(cfg.train.device)
    train, val = training_spans(prep)
    main = ddp.is_main()  # under torchrun, rank 0 alone writes the run folder
    if main:
        io.write_text(out / "config.yaml", dump_yaml(cfg))
        io.write_json(out / "versions.json", io.run_info(cfg.seed, device) | _processes())
    members = cfg.train.ensemble

    def histories(current: list[dict[str, float]]) -> list[list[dict[str, float]]]:
        return [d["result"]["history"] for d in done] + [current]

    def save(member: int, state: FitState | None, current: list[dict[str, float]]) -> None:
        if main:
            fit_state = state.to_dict() if state is not None else None
            io.save_torch(state_path, {"fit": fit_state, "member": member, "done": done})
            io.write_text(out / "metrics.csv", _metrics_csv(histories(current), members))

    for member in range(first, members):
        if on_member is not None:
            on_member(member)

        def save_epoch(state: FitState, member: int = member) -> None:
            save(member, state, state.result.history)
            if on_epoch_done is not None:
                on_epoch_done(state)

        model, scalers, panel, result = fit_span(
            prep,
            train,
            val,
            seed=member_seed(cfg.seed, member),
            device=device,
            resume=resume_state if member == first else None,
            on_epoch=save_epoch,
            on_step=on_step,
        )
        done.append({"state_dict": cpu_state(model), "result": result.to_dict()})
        if member + 1 < members:
            save(member + 1, None, [])
    if not main:
        return {}
    ensemble = [d["state_dict"] for d in done]
    nets = load_members(cfg.model, len(covariates.input_names(cfg)), ensemble)
    model = nets[0]
    extra = {
        "train_end": {
            t: str(prep.data[t].dates[hi - 1].date()) for t, (lo, hi) in train.items() if hi > lo
        }
    }
    if members > 1:
        extra["ensemble"] = ensemble
    checkpoint.save(
        out / "model.pt",
        cfg=cfg,
        model=model,
        scalers=scalers,
        receptive_field=prep.receptive_field,
        burn_in=prep.burn_in,
        extra=extra,
    )
    results = [d["result"] for d in done]
    io.write_text(out / "metrics.csv", _metrics_csv([r["history"] for r in results], members))
    plot_loss(out / "loss.png", results)
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
        **_fit_summary(results),
        "train_rows": {t: hi - lo for t, (lo, hi) in train.items()},
        "val_rows": {t: hi - lo for t, (lo, hi) in val.items()},
        "warning": window_warning(cfg, prep.receptive_field),
        **_processes(),
    }
    if members > 1:
        summary["members"] = [
            {"seed": member_seed(cfg.seed, m), **_fit_summary([r])} for m, r in enumerate(results)
        ]
        # the starting weights (zero head + ridge highway) do not depend on the seed
        summary["members_kept_start"] = sum(r["best_epoch"] == 0 for r in results)
        summary["ensemble_val_loss"] = ensemble_val_loss(nets, panel, val, cfg.window, device)
    io.write_json(out / "summary.json", summary)
    state_path.unlink(missing_ok=True)
    io.write_manifest(out, complete=True)
    return summary


def load_members(
    model_cfg: Any, in_features: int, states: list[dict[str, torch.Tensor]]
) -> list[torch.nn.Module]:
    """One model per stored state: an ensemble's members, or a single model's."""
    models = []
    for state in states:
        models.append(build_model(model_cfg, in_features))
        models[-1].load_state_dict(state)
    return models


def _fit_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One fit's record, or an ensemble's: epochs and steps summed over the members, the
    latest best epoch (0 only when no member beat its starting weights), mean losses."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(np.mean(known)) if known else None

    at_best = [
        r["history"][r["best_epoch"] - 1]["train_loss"] if r["best_epoch"] else None
        for r in results
    ]
    return {
        "epochs_run": sum(len(r["history"]) for r in results),
        "steps": sum(r["steps"] for r in results),
        "best_epoch": max(r["best_epoch"] for r in results),
        "initial_val_loss": mean([r["initial_val"] for r in results]),
        "best_val_loss": mean([r["best_val"] for r in results]),
        "stopped_early": any(r["stopped_early"] for r in results),
        "train_loss_at_best": mean(at_best),  # None: the starting weights were best
    }


def ensemble_predict(
    models: list[torch.nn.Module], panel: Panel, rows: torch.Tensor, window: int, device: Any
) -> np.ndarray:
    """The members' mean prediction at `rows` (scaled), averaged in float64."""
    preds = [predict_rows(m, panel, rows, window, device) for m in models]
    return np.mean(np.stack(preds).astype(np.float64), axis=0)


def ensemble_val_loss(
    models: list[torch.nn.Module], panel: Panel, val: dict[str, Span], window: int, device: Any
) -> float | None:
    """Validation MSE (scaled target) of the members' mean prediction, each row predicted from
    the window ending there, as early stopping scores a member."""
    rows = [
        global_rows(panel, t, np.arange(max(lo, window - 1), hi)) for t, (lo, hi) in val.items()
    ]
    rows = torch.cat([*rows, torch.zeros(0, dtype=torch.int64)])
    rows = rows[torch.isfinite(panel.y[rows])]
    if not len(rows):
        return None
    pred = ensemble_predict(models, panel, rows, window, device)
    return float(np.mean((pred - panel.y[rows].double().numpy()) ** 2))


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
    states = payload.get("ensemble") or [payload["state_dict"]]
    models = load_members(cfg.model, payload["in_features"], states)
    scalers = {}
    for t, td in prep.data.items():
        stored = payload["scalers"].get(t)
        # A ticker the model never saw is scaled on its own history, all of it before the bar.
        scalers[t] = Scaler.from_dict(stored) if stored else Scaler.fit(td.x, td.y)
    panel = make_panel(prep.data, scalers)
    rows = []
    for t, td in prep.data.items():
        last = len(td.x) - 1
        row = global_rows(panel, t, np.array([last]))
        pred = ensemble_predict(models, panel, row, cfg.window, torch.device("cpu"))[0]
        pred = pred * scalers[t].y_scale
        rows.append(
            {
                "ticker": t,
                "last_bar": str(td.dates[last].date()),
                "horizon": cfg.target.horizon,
                "predicted_log_return": float(pred),
                "scaler": "training span" if t in payload["scalers"] else "own history",
                **({"members": len(models)} if len(models) > 1 else {}),
            }
        )
    return rows


warnings.filterwarnings("ignore", message=".*weight_norm.*")
