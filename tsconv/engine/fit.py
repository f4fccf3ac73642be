"""One training loop, used by `tsconv train` and by every walk-forward fold.

Data arrive as a Panel (scaled rows of all tickers) and spans of target rows; batches are gathered
from window views by index, never through a per-sample DataLoader.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tsconv.config import TrainConfig
from tsconv.engine import ddp
from tsconv.engine.cuda_graphs import GRAPH_MIN_STEPS, graphed_steps
from tsconv.engine.predict import predict_rows, predicts_without_windows
from tsconv.engine.runtime import amp_dtype, cpu_state, rng_state, seed_everything, set_rng_state
from tsconv.engine.windows import WindowDataset
from tsconv.errors import TrainingError
from tsconv.models.layers import ForecastModel


def steps_per_epoch(n_sequences: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """One pass over the training sequences, or more when `epochs` such passes would take fewer
    than `min_steps` optimizer steps: a 1,000-bar fold holds a few dozen sequences, one or two
    steps, and an epoch count alone would leave the model where it started."""
    return max(math.ceil(n_sequences / batch_size), math.ceil(min_steps / epochs))


def epoch_batches(
    ds: WindowDataset, steps: int, batch_size: int, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """`steps` batches of indices: passes over `ds` in random order, each with the dense
    sequences cut at fresh random offsets (`WindowDataset.retile`)."""
    done = 0
    while done < steps:
        ds.retile(gen)
        for idx in torch.randperm(len(ds), generator=gen).split(batch_size):
            yield idx
            done += 1
            if done == steps:
                return


def masked_mse(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    diff = torch.where(mask, pred.float() - torch.nan_to_num(y), 0.0)
    return (diff**2).sum() / mask.sum().clamp_min(1)


@dataclass
class FitResult:
    """`best_epoch` 0 means the starting weights were best on validation (no epoch beat them)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = math.inf
    stopped_early: bool = False
    initial_val: float = math.nan
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FitState:
    """Everything needed to continue training exactly where it stopped."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    best_model: dict[str, torch.Tensor]
    result: FitResult
    bad_epochs: int
    rng: dict[str, Any]
    initial_errors: torch.Tensor | None = None  # validation errors of the starting weights

    def to_dict(self) -> dict[str, Any]:
        return {
            "initial_errors": self.initial_errors,
            "epoch": self.epoch,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "best_model": self.best_model,
            "bad_epochs": self.bad_epochs,
            "rng": self.rng,
            "result": self.result.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitState:
        res = d["result"]
        return cls(
            epoch=d["epoch"],
            model=d["model"],
            optimizer=d["optimizer"],
            scheduler=d["scheduler"],
            best_model=d["best_model"],
            bad_epochs=d["bad_epochs"],
            rng=d["rng"],
            initial_errors=d.get("initial_errors"),
            # FitResult.to_dict's keys; a state saved before initial_val or steps gets defaults
            result=FitResult(**{**res, "history": list(res["history"])}),
        )


def make_optimizer(model: ForecastModel, lr: float, weight_decay: float, device: torch.device):
    """AdamW; the fused kernel on CPU and CUDA updates all parameters in one pass instead of
    a dozen small ops per tensor.

    Decay regularises through the scale parameters and biases (weight norm's g, BatchNorm's
    weight and shift): the directions that weight norm and BatchNorm normalise are scale-free,
    so decay only speeds those up. (The highway's weights are buffers, fitted before training.)"""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(total_steps, 2)
        )
    return None


EpochHook = Callable[[FitState], None]
ProgressHook = Callable[[dict[str, float]], None]


def squared_errors(
    model: ForecastModel,
    ds: WindowDataset,
    device: torch.device,
    batch_size: int = 512,
    amp: bool = False,
) -> torch.Tensor:
    """The squared error of every target `ds` scores (float64, on the CPU), in a fixed order."""
    if len(ds) == 0:
        return torch.zeros(0, dtype=torch.float64)
    if ds.mode == "last" and predicts_without_windows(model, ds.window):
        rows = ds.target_rows()
        y = ds.panel.y[rows]
        ok = torch.isfinite(y)
        pred = predict_rows(model, ds.panel, rows[ok], ds.window, device, amp=amp)
        return (torch.from_numpy(pred).double() - y[ok].double()) ** 2
    model.eval()
    out = []
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype(device), enabled=amp):
        for idx in torch.arange(len(ds)).split(batch_size):
            x, y, mask = ds.batch(idx)
            pred = model(x.to(device, non_blocking=True))[:, 0]
            mask = mask.to(device)
            diff = pred.float() - torch.nan_to_num(y.to(device))
            out.append((diff[mask].double() ** 2).cpu())
    return torch.cat(out)


def beats_clearly(errors: torch.Tensor, reference: torch.Tensor | None) -> bool:
    """Whether `errors` are lower than `reference`'s (the same targets) by more than two
    standard errors of their paired difference. A trained model replaces the starting one only
    then; on returns the best of a dozen noisy validation scores is low partly by luck, and
    such a model can lose out of sample what it seemed to gain (docs/performance.md,
    "Measurements behind the code"). Two, not one: the linear part's choice must beat the
    zero forecast by as much (engine.linear), and at one a network whose start was the zero
    forecast kept its first epoch on a null series and lost R^2 0.04 in that fold
    (docs/known_answers.md, session 28)."""
    if reference is None or len(errors) < 2:
        return True
    d = reference - errors
    return bool(d.mean() > 2 * d.std() / math.sqrt(len(d)))


def fit(
    model: ForecastModel,
    train_ds: WindowDataset,
    val_ds: WindowDataset | None,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    epochs: int | None = None,
    resume: FitState | None = None,
    on_epoch: EpochHook | None = None,
    on_step: ProgressHook | None = None,
) -> FitResult:
    """Train with AdamW, clipping, an LR schedule and early stopping on validation loss.

    Each epoch is one pass over the training sequences, or several when that is fewer than
    `min_steps / epochs` optimizer steps. Validation runs before the first step and after each
    epoch; early stopping may end the fit only once `min_steps` steps are taken. The best
    weights by validation loss (the starting ones included) are loaded back into `model`
    unless `restore_best` is off.
    """
    epochs = epochs or cfg.epochs
    if len(train_ds) == 0:
        raise TrainingError("no training windows: the training span is shorter than the window")
    run = _set_up(model, train_ds, val_ds, cfg, seed, device, epochs)
    if resume is not None:
        track = _resume(run, resume)
    else:
        track = start_tracking(model, run.val_ds, device, cfg.amp)
    first = resume.epoch if resume is not None else 0
    graphs = _use_graphs(run, run.per_epoch * (epochs - first))
    with graphed_steps(model, run.train_ds, cfg.batch_size, cfg.amp, device, graphs) as graphed:
        autocast = torch.autocast(
            device.type, amp_dtype(device), enabled=cfg.amp, cache_enabled=not graphed
        )
        for epoch in range(first, epochs):
            if track.result.stopped_early:
                break
            t0 = time.perf_counter()
            train_loss, seen = _train_epoch(run, track.result, epoch, autocast, graphed, on_step)
            train_seconds = time.perf_counter() - t0
            _validate_epoch(run, track, epoch, epochs, train_loss, seen, t0, train_seconds)
            if on_epoch is not None:
                on_epoch(_fit_state(run, track, epoch + 1))
    if cfg.restore_best:
        model.load_state_dict(track.best_state)
    return track.result


@dataclass
class _Training:
    """What one fit trains with, set up once."""

    model: ForecastModel
    step_model: Callable[[torch.Tensor], torch.Tensor]  # compiled and/or DDP-wrapped
    eager_forward: Callable[[torch.Tensor], torch.Tensor]  # model.forward before any graphs
    cfg: TrainConfig
    device: torch.device
    gen: torch.Generator
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    part: tuple[int, int] | None  # (rank, processes) under torchrun
    per_epoch: int
    train_ds: WindowDataset
    val_ds: WindowDataset | None


@dataclass
class Tracking:
    """Validation so far: the result, the best weights, and what early stopping counts."""

    result: FitResult
    best_state: dict[str, torch.Tensor]
    bad: int
    initial_errors: torch.Tensor | None
    lowest: float = math.inf  # lowest score yet, for patience


def _set_up(
    model: ForecastModel,
    train_ds: WindowDataset,
    val_ds: WindowDataset | None,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    epochs: int,
) -> _Training:
    """Seeds, the model on its device, optimizer, schedule, the step's wrappers and the data."""
    gen = seed_everything(seed)
    model.to(device)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, device)
    per_epoch = steps_per_epoch(len(train_ds), cfg.batch_size, epochs, cfg.min_steps)
    sched = make_scheduler(opt, cfg, per_epoch * epochs)
    step_model = torch.compile(model) if cfg.compile else model
    part = ddp.shard()  # (rank, processes) under torchrun: this rank runs a slice of each batch
    if part is not None:
        step_model = ddp.wrap(step_model, device)
    # float16 (GPUs without bf16) needs loss scaling to keep small gradients from underflowing.
    scaler = torch.amp.GradScaler(
        device.type, enabled=cfg.amp and amp_dtype(device) == torch.float16
    )
    if device.type != "cpu":  # gather batches where the model runs
        train_ds = train_ds.to(device)
        val_ds = val_ds.to(device) if val_ds is not None and val_ds.mode != "last" else val_ds
    return _Training(
        model=model,
        step_model=step_model,
        eager_forward=model.forward,
        cfg=cfg,
        device=device,
        gen=gen,
        opt=opt,
        sched=sched,
        scaler=scaler,
        part=part,
        per_epoch=per_epoch,
        train_ds=train_ds,
        val_ds=val_ds,
    )


def start_tracking(
    model: ForecastModel, val_ds: WindowDataset | None, device: torch.device, amp: bool
) -> Tracking:
    """Tracking from the starting weights, whose validation errors are the ones to beat."""
    track = Tracking(FitResult(), cpu_state(model), 0, None)
    if val_ds is not None:
        # The starting weights compete too: with a zero head they are the zero forecast plus
        # the highway's ridge fit, and training must beat them clearly to replace them.
        track.initial_errors = squared_errors(model, val_ds, device, amp=amp)
        track.result.initial_val = track.result.best_val = float(track.initial_errors.mean())
    track.lowest = track.result.best_val
    return track


def _resume(run: _Training, resume: FitState) -> Tracking:
    """Weights, optimizer, schedule, generators and tracking as the interrupted fit left them."""
    run.model.load_state_dict(resume.model)
    run.opt.load_state_dict(resume.optimizer)
    if run.sched is not None and resume.scheduler is not None:
        run.sched.load_state_dict(resume.scheduler)
    set_rng_state(resume.rng, run.gen, run.device)
    result = resume.result
    lowest = min([result.best_val, *(_score(h) for h in result.history)])
    return Tracking(result, resume.best_model, resume.bad_epochs, resume.initial_errors, lowest)


def _use_graphs(run: _Training, full_steps: int) -> bool:
    """Whether the steps replay as CUDA graphs: eager on other devices, compiled or under
    torchrun, and for fits too short to pay for the capture."""
    cfg = run.cfg
    use = run.device.type == "cuda" and cfg.cuda_graphs and not cfg.compile and run.part is None
    return use and full_steps >= GRAPH_MIN_STEPS


def _train_epoch(
    run: _Training,
    result: FitResult,
    epoch: int,
    autocast: torch.autocast,
    graphed: bool,
    on_step: ProgressHook | None,
) -> tuple[float, int]:
    """One epoch's optimizer steps; (mean training loss, sequences seen)."""
    cfg, part, params = run.cfg, run.part, list(run.model.parameters())
    run.model.train()
    seen, step = 0, 0
    # The loss stays on the device until the epoch ends: reading it every step would make
    # the host wait for the GPU each time instead of queueing the next step.
    total = torch.zeros((), dtype=_sum_dtype(run.device), device=run.device)
    for idx in epoch_batches(run.train_ds, run.per_epoch, cfg.batch_size, run.gen):
        # a graph replays a full batch only: a smaller last batch runs eagerly
        forward = run.eager_forward if graphed and len(idx) < cfg.batch_size else run.step_model
        size = len(idx)
        if part is not None:
            idx = idx.tensor_split(part[1])[part[0]]
        batch = run.train_ds.batch(idx)
        loss = _train_step(
            forward, batch, autocast, run.opt, run.scaler, params, cfg.clip_grad, part
        )
        if run.sched is not None:
            run.sched.step()
        seen += size
        step += 1
        total += loss.detach() * size
        if on_step is not None and part is None:  # a slice's loss is no batch's loss
            loss_value = _finite_loss(loss.item(), epoch, cfg)
            on_step({"epoch": epoch + 1, "loss": loss_value, "seen": step, "of": run.per_epoch})
    result.steps += step
    return _finite_loss(ddp.total(total).item() / max(seen, 1), epoch, cfg), seen


def _validate_epoch(
    run: _Training,
    track: Tracking,
    epoch: int,
    epochs: int,
    train_loss: float,
    seen: int,
    t0: float,
    train_seconds: float,
) -> None:
    """Validate after an epoch: its history row, the best weights, and early stopping."""
    errors = None
    if run.val_ds is not None:
        errors = squared_errors(run.model, run.val_ds, run.device, amp=run.cfg.amp)
    row = epoch_row(track.result, epoch, train_loss, errors, run.opt, seen, t0, train_seconds)
    record_epoch(track, run.cfg, row, errors, epochs, lambda: cpu_state(run.model))


# an epoch's history row, in order (metrics.csv's columns)
EPOCH_COLUMNS = (
    "epoch",
    "steps",
    "train_loss",
    "val_loss",
    "lr",
    "seconds",
    "train_seconds",
    "samples_per_s",
)


def epoch_row(
    result: FitResult,
    epoch: int,
    train_loss: float,
    errors: torch.Tensor | None,
    opt: torch.optim.Optimizer,
    seen: int,
    t0: float,
    train_seconds: float,
) -> dict[str, float]:
    """An epoch's history row."""
    val = float(errors.mean()) if errors is not None and len(errors) else math.nan
    elapsed = time.perf_counter() - t0
    values = (
        epoch + 1,
        result.steps,
        train_loss,
        val,
        opt.param_groups[0]["lr"],
        elapsed,
        train_seconds,
        seen / elapsed if elapsed > 0 else math.nan,
    )
    return dict(zip(EPOCH_COLUMNS, values, strict=True))


def record_epoch(
    track: Tracking,
    cfg: TrainConfig,
    row: dict[str, float],
    errors: torch.Tensor | None,
    epochs: int,
    state: Callable[[], dict[str, torch.Tensor]],
) -> None:
    """An epoch's row into the history; its weights (`state()`) kept when they are the best
    yet and beat the start clearly; early stopping's count."""
    result = track.result
    result.history.append(row)
    score = _score(row)
    if score < result.best_val and beats_clearly(errors, track.initial_errors):
        result.best_val, result.best_epoch = score, row["epoch"]
        track.best_state = state()
    if score < track.lowest:
        track.lowest, track.bad = score, 0
    else:
        track.bad += 1
        patient = cfg.patience and track.bad >= cfg.patience and result.steps >= cfg.min_steps
        result.stopped_early = bool(patient) and row["epoch"] < epochs


def _fit_state(run: _Training, track: Tracking, epoch: int) -> FitState:
    """Everything a resume needs, after `epoch` epochs."""
    return FitState(
        epoch,
        cpu_state(run.model),
        copy.deepcopy(run.opt.state_dict()),
        run.sched.state_dict() if run.sched is not None else None,
        track.best_state,
        track.result,
        track.bad,
        rng_state(run.gen, run.device),
        track.initial_errors,
    )


def _score(row: dict[str, float]) -> float:
    """An epoch's validation loss, or its training loss where there is no validation."""
    return row["val_loss"] if not math.isnan(row["val_loss"]) else row["train_loss"]


def _train_step(
    run: Callable[[torch.Tensor], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    autocast: torch.autocast,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    clip_grad: float,
    part: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch (gradients of `params` clipped to norm `clip_grad` when
    it is positive); returns the loss, still on the device. With `part`
    (rank, processes) the batch is this rank's slice of one global batch: its loss is its
    squared errors over the whole batch's target count, and the objective is scaled by the
    processes because DistributedDataParallel averages their gradients."""
    x, y, mask = batch
    with autocast:
        pred = run(x)[:, 0]
    if part is None:
        loss = objective = masked_mse(pred, y, mask)
    else:
        count = ddp.total(mask.sum().to(torch.float64)).clamp_min(1)
        diff = torch.where(mask, pred.float() - torch.nan_to_num(y), 0.0)
        loss = (diff**2).sum() / count.to(diff.dtype)
        objective = loss * part[1]
    opt.zero_grad(set_to_none=True)
    scaler.scale(objective).backward()
    if clip_grad > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(opt)
    scaler.update()
    return loss


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _finite_loss(value: float, epoch: int, cfg: TrainConfig) -> float:
    if not math.isfinite(value):
        raise TrainingError(
            f"loss became {value} in epoch {epoch + 1}; try a lower train.lr "
            f"(now {cfg.lr}) or check the input data"
        )
    return value
