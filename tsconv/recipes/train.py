"""`tsconv train`: fit a model (or an ensemble, member after member) on the chronological split
and write the run folder.

Reads top-down (`run_training`): prepare the data, fit the members (saving the progress after
every epoch, so --resume continues), write the model and its records. Every walk-forward fold
fits through the same `fit_span`, so the rules (scaler fitted on the training rows only,
validation after a gap, windows within one ticker) live in one place.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsconv import runfolder
from tsconv.config import Config, dump_yaml
from tsconv.data import covariates
from tsconv.engine import checkpoint, ddp
from tsconv.engine.fit import EPOCH_COLUMNS, FitState
from tsconv.engine.runtime import cpu_state, intra_op_threads, recorded_threads, select_device
from tsconv.engine.windows import Panel, Scaler, dense_sequence, fit_sequence
from tsconv.errors import FolderError, UsageError
from tsconv.models.registry import build_model, count_parameters, receptive_field
from tsconv.recipes.fit_span import fit_span, fit_span_members, member_seed, members_together
from tsconv.recipes.predict import ensemble_predict, load_members
from tsconv.recipes.prepare import (
    Prepared,
    Span,
    global_rows,
    prepare,
    training_spans,
    window_warning,
)
from tsconv.report.figures import plot_loss
from tsconv.runfolder import RunFolder


def run_training(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Any = None,
    on_epoch_done: Any = None,
    on_member: Any = None,
) -> dict[str, Any]:
    """`tsconv train`: fit on the chronological split and write the run folder; returns
    summary.json's contents (under torchrun, in rank 0; elsewhere {}). With
    `train.ensemble: K` the K members are trained one after another (`on_member(m)` as each
    starts), each from its own seed; a resume continues the member that was training, its
    files checked against the manifest. A new run replaces another in `out` only with
    `overwrite`. Rank 0 holds the folder locked for the run's life."""
    run = RunFolder(out)
    main = ddp.is_main()  # under torchrun, rank 0 alone writes the run folder
    held = runfolder.locked(run) if main else contextlib.nullcontext()
    resumed = recorded_threads(run.versions) if resume else None  # the interrupted run's count
    with intra_op_threads(cfg.train.threads or resumed), held:
        progress = EnsembleProgress.load(run, cfg) if resume else EnsembleProgress()
        prep = prepare(cfg)
        device = select_device(cfg.train.device)
        train, val = training_spans(prep)
        if main:
            if resume:
                runfolder.reopen(run)
            else:
                runfolder.start(run, overwrite=overwrite)
            runfolder.write_text(run.config, dump_yaml(cfg))
            runfolder.write_json(run.versions, runfolder.run_info(cfg.seed, device) | _processes())
            runfolder.record(run, [run.config, run.versions])
        saved = run if main else None
        scalers, panel = fit_members(
            prep, train, val, device, progress, saved, on_step, on_epoch_done, on_member
        )
        if not main:
            return {}
        return write_outputs(run, prep, device, train, val, progress.done, scalers, panel)


def check_resumable(out: Path) -> None:
    """Refuse `--resume` on a folder without an interrupted training run in it, or whose
    config or state is not what the run wrote (an edited lr would be recorded but never
    used; an edited model would not fit the saved weights)."""
    run = RunFolder(out)
    if not run.training_state.exists():
        if run.model.exists():
            raise UsageError(f"{out}: this run already finished; nothing to resume")
        if not run.config.exists():
            raise UsageError(f"{out}: not a run folder (no {run.config.name})")
        raise UsageError(f"{out}: no {run.training_state.name} to resume from")
    runfolder.verify(run, [run.config, run.training_state])


@dataclass
class EnsembleProgress:
    """Where an interrupted training run stands (state.pt): the member training, its fit so
    far, and the members done (their weights and training records)."""

    member: int = 0
    fit: FitState | None = None
    done: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, run: RunFolder, cfg: Config) -> EnsembleProgress:
        check_resumable(run.path)
        try:
            payload = torch.load(run.training_state, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise FolderError(f"{run.training_state}: unreadable ({first})") from None
        if payload.get("config", _stored(cfg)) != _stored(cfg):
            raise FolderError(
                f"{run.training_state}: saved by a run of another config than {run.config}"
            )
        fit = payload.get("fit")
        return cls(
            payload.get("member", 0),
            FitState.from_dict(fit) if fit is not None else None,
            payload.get("done", []),
        )

    def save(self, run: RunFolder, member: int, fit: FitState | None, cfg: Config) -> None:
        """State.pt (with the config it belongs to), and metrics.csv with every epoch so far,
        `member`'s last; both recorded in the manifest for --resume to check."""
        payload = {"fit": fit.to_dict() if fit is not None else None, "member": member}
        payload |= {"done": self.done, "config": _stored(cfg)}
        runfolder.save_torch(run.training_state, payload)
        current = fit.result.history if fit is not None else []
        histories = [d["result"]["history"] for d in self.done] + [current]
        runfolder.write_text(run.epochs, _metrics_csv(histories, cfg.train.ensemble))
        runfolder.record(run, [run.training_state, run.epochs])


def _stored(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def fit_members(
    prep: Prepared,
    train: dict[str, Span],
    val: dict[str, Span],
    device: torch.device,
    progress: EnsembleProgress,
    run: RunFolder | None,
    on_step: Any,
    on_epoch_done: Any,
    on_member: Any,
) -> tuple[dict[str, Scaler], Panel]:
    """Train the members `progress` has not done yet, saving the progress to `run` (None:
    not saved) after every epoch; returns the scalers and panel, which the members share."""
    cfg, first = prep.cfg, progress.member
    members = cfg.train.ensemble
    if members_together(prep) and first == 0 and progress.fit is None:
        return fit_together(prep, train, val, device, progress, run, on_member)
    for member in range(first, members):
        if on_member is not None:
            on_member(member)

        def save_epoch(state: FitState, member: int = member) -> None:
            if run is not None:
                progress.save(run, member, state, cfg)
            if on_epoch_done is not None:
                on_epoch_done(state)

        model, scalers, panel, result = fit_span(
            prep,
            train,
            val,
            seed=member_seed(cfg.seed, member),
            device=device,
            resume=progress.fit if member == first else None,
            on_epoch=save_epoch,
            on_step=on_step,
        )
        progress.done.append({"state_dict": cpu_state(model), "result": result.to_dict()})
        if member + 1 < members and run is not None:
            progress.save(run, member + 1, None, cfg)
    return scalers, panel


def fit_together(
    prep: Prepared,
    train: dict[str, Span],
    val: dict[str, Span],
    device: torch.device,
    progress: EnsembleProgress,
    run: RunFolder | None,
    on_member: Any,
) -> tuple[dict[str, Scaler], Panel]:
    """Every member trained together as one grouped model (`train.grouped_members`). Its
    fit saves no epochs: a resume starts it again."""
    cfg = prep.cfg
    if run is not None:
        progress.save(run, 0, None, cfg)
    if on_member is not None:
        on_member(0)
    seeds = [member_seed(cfg.seed, m) for m in range(cfg.train.ensemble)]
    models, scalers, panel, results = fit_span_members(prep, train, val, seeds=seeds, device=device)
    progress.done = [
        {"state_dict": cpu_state(model), "result": result.to_dict()}
        for model, result in zip(models, results, strict=True)
    ]
    return scalers, panel


def write_outputs(
    run: RunFolder,
    prep: Prepared,
    device: torch.device,
    train: dict[str, Span],
    val: dict[str, Span],
    done: list[dict[str, Any]],
    scalers: dict[str, Scaler],
    panel: Panel,
) -> dict[str, Any]:
    """model.pt (an ensemble's members in it), metrics.csv, loss.png and summary.json; the
    training state goes and the manifest says the run finished. Returns the summary."""
    cfg, members = prep.cfg, prep.cfg.train.ensemble
    ensemble = [d["state_dict"] for d in done]
    nets = load_members(cfg.model, len(covariates.input_names(cfg)), ensemble)
    extra = {
        "train_end": {
            t: str(prep.data[t].dates[hi - 1].date()) for t, (lo, hi) in train.items() if hi > lo
        }
    }
    if members > 1:
        extra["ensemble"] = ensemble
    checkpoint.save(
        run.model,
        cfg=cfg,
        model=nets[0],
        scalers=scalers,
        receptive_field=prep.receptive_field,
        burn_in=prep.burn_in,
        extra=extra,
    )
    results = [d["result"] for d in done]
    runfolder.write_text(run.epochs, _metrics_csv([r["history"] for r in results], members))
    plot_loss(run.loss_plot, results)
    summary = training_summary(prep, device, train, val, results, nets[0])
    if members > 1:
        summary["members"] = [
            {"seed": member_seed(cfg.seed, m), **_fit_summary([r])} for m, r in enumerate(results)
        ]
        # the starting weights (zero head + ridge highway) do not depend on the seed
        summary["members_kept_start"] = sum(r["best_epoch"] == 0 for r in results)
        summary["ensemble_val_loss"] = ensemble_val_loss(nets, panel, val, cfg.window, device)
    runfolder.write_json(run.summary, summary)
    run.training_state.unlink(missing_ok=True)
    runfolder.write_manifest(run, complete=True)
    return summary


def training_summary(
    prep: Prepared,
    device: torch.device,
    train: dict[str, Span],
    val: dict[str, Span],
    results: list[dict[str, Any]],
    model: torch.nn.Module,
) -> dict[str, Any]:
    """summary.json of a single model, or an ensemble's figures over its members."""
    cfg = prep.cfg
    return {
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


def _metrics_csv(histories: list[list[dict[str, float]]], members: int = 1) -> str:
    """Every epoch's row; in an ensemble, each row starts with its member's number."""
    rows = [
        ({"member": m} if members > 1 else {}) | row
        for m, history in enumerate(histories)
        for row in history
    ]
    buf = _io.StringIO()
    columns = list(rows[0]) if rows else [*(["member"] if members > 1 else []), *EPOCH_COLUMNS]
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()  # also before the first epoch: a header without rows
    writer.writerows(rows)
    return buf.getvalue()


def _processes() -> dict[str, Any]:
    part = ddp.shard()
    return (
        {} if part is None else {"processes": part[1], "backend": torch.distributed.get_backend()}
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


warnings.filterwarnings("ignore", message=".*weight_norm.*")
