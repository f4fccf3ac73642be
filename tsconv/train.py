"""One training loop, used by `tsconv train` and by every walk-forward fold.

Data arrive as a Panel (scaled rows of all tickers) and spans of target rows; batches are gathered
from window views by index, never through a per-sample DataLoader.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tsconv import ddp
from tsconv.config import TrainConfig
from tsconv.errors import ConfigError, TrainingError
from tsconv.models.tcn import TCN, window_end_outputs, window_end_plan
from tsconv.windows import Panel, WindowDataset, chunk_inputs, chunk_plan, last_step_inputs


def select_device(name: str) -> torch.device:
    device = _pick_device(name)
    if device.type == "cuda":
        # TF32 convolutions keep 10 mantissa bits: predictions would differ from CPU's in the
        # third digit. The tiny models here gain nothing from it; train.amp is the speed knob.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: cuda requested but no CUDA GPU is available (use auto or cpu)"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("train.device: mps requested but not available (use auto or cpu)")
    return torch.device(name)


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` (unset: left alone), put back on exit:
    a run called from a test or a notebook leaves the caller's setting as it found it."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # cuDNN may otherwise pick kernels whose sums run in a different order on every run.
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return torch.Generator().manual_seed(seed)


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def dense_sequence(window: int, receptive_field: int, burn_in: int | None) -> tuple[int, int]:
    """(length, burn-in) of the sequences that dense targets train on.

    A position closer to a sequence's start than the receptive field reaches sees zero padding
    where prediction will see real bars, so the loss skips it. By default the burn-in is the
    whole receptive field (every training target then sees the context it sees at prediction
    time), and a window shorter than twice that is lengthened to it, so at least half of each
    sequence is targets and a bar is computed at most twice per pass. A fit shortens the
    sequence to what its spans hold (`fit_sequence`). When the receptive field is longer than
    the window, prediction pads with zeros too: sequences are windows, with half of each as
    burn-in. An explicit `train.burn_in` keeps sequences at `window`.
    """
    if burn_in is not None:
        return window, burn_in
    if receptive_field <= window:
        return max(window, 2 * (receptive_field - 1)), receptive_field - 1
    return window, window // 2


def fit_sequence(sequence: int, burn_in: int, span_ends: list[int]) -> int:
    """The dense sequence length for spans whose targets end at the given rows (counted from
    each ticker's first bar): at most `sequence`, and short enough that every span with a
    target past the burn-in holds a whole sequence, so any span longer than the receptive field
    trains. A target needs burn-in bars of context, not a sequence of twice that."""
    usable = [end for end in span_ends if end > burn_in]
    return min([sequence, *usable])


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
        return {
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_val": self.best_val,
            "stopped_early": self.stopped_early,
            "initial_val": self.initial_val,
            "steps": self.steps,
        }


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


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "gen": gen.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _py_state(),
    }
    if device.type == "cuda":  # dropout on a GPU draws from the device's own generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _py_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":  # not when a GPU run resumes on the CPU
        torch.cuda.set_rng_state(state["cuda"], device)
    gen.set_state(state["gen"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(int(v) for v in p[1].tolist()), p[2]))


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW; the fused kernel on CPU and CUDA updates all parameters in one pass instead of
    a dozen small ops per tensor (on the seed TCN's 52 tensors: 0.3 ms against 1.6 ms).

    The highway is not decayed: it has its own ridge penalty. Decay regularises through the
    scale parameters and biases (weight norm's g, BatchNorm's weight and shift): the directions
    that weight norm and BatchNorm normalise are scale-free, so decay only speeds those up."""
    highway = getattr(model, "highway", None)
    skip = {id(p) for p in highway.parameters()} if highway is not None else set()
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in skip]},
        {"params": [p for p in model.parameters() if id(p) in skip], "weight_decay": 0.0},
    ]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay, fused=fused
    )


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


def evaluate(
    model: nn.Module,
    ds: WindowDataset,
    device: torch.device,
    batch_size: int = 512,
    amp: bool = False,
) -> float:
    errors = squared_errors(model, ds, device, batch_size, amp)
    return float(errors.mean()) if len(errors) else math.nan


def squared_errors(
    model: nn.Module,
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
    """Whether `errors` are lower than `reference`'s (the same targets) by more than one
    standard error of their paired difference: the one-standard-error rule. A trained model
    replaces the starting one only then; on returns the best of a dozen noisy validation
    scores is low partly by luck, and such a model can lose out of sample what it seemed to
    gain (on the sample: a 0.15% lower validation MSE, then R^2 -0.07 on the next year)."""
    if reference is None or len(errors) < 2:
        return True
    d = reference - errors
    return bool(d.mean() > d.std() / math.sqrt(len(d)))


def fit(
    model: nn.Module,
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
    gen = seed_everything(seed)
    model.to(device)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, device)
    per_epoch = steps_per_epoch(len(train_ds), cfg.batch_size, epochs, cfg.min_steps)
    sched = make_scheduler(opt, cfg, per_epoch * epochs)
    step_model = torch.compile(model) if cfg.compile else model
    part = ddp.shard()  # (rank, processes) under torchrun: this rank runs a slice of each batch
    if part is not None:
        step_model = ddp.wrap(step_model, device)
    penalty = _penalty(model)
    use_amp = cfg.amp
    # float16 (GPUs without bf16) needs loss scaling to keep small gradients from underflowing.
    scaler = torch.amp.GradScaler(
        device.type, enabled=use_amp and amp_dtype(device) == torch.float16
    )
    if device.type != "cpu":  # gather batches where the model runs
        train_ds = train_ds.to(device)
        val_ds = val_ds.to(device) if val_ds is not None and val_ds.mode != "last" else val_ds

    result, best_state, bad, start_epoch = FitResult(), cpu_state(model), 0, 0
    initial_errors = None
    if resume is not None:
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        if sched is not None and resume.scheduler is not None:
            sched.load_state_dict(resume.scheduler)
        best_state, bad, result = resume.best_model, resume.bad_epochs, resume.result
        initial_errors = resume.initial_errors
        start_epoch = resume.epoch
        _set_rng_state(resume.rng, gen, device)
    elif val_ds is not None:
        # The starting weights compete too: with a zero head they are the zero forecast plus
        # the highway's ridge fit, and training must beat them clearly to replace them.
        initial_errors = squared_errors(model, val_ds, device, amp=use_amp)
        result.initial_val = result.best_val = float(initial_errors.mean())
    lowest = min([result.best_val, *(_score(h) for h in result.history)])  # for patience

    eager = model.forward
    full_steps = per_epoch * (epochs - start_epoch)
    use_graphs = device.type == "cuda" and cfg.cuda_graphs and not cfg.compile and part is None
    use_graphs = use_graphs and full_steps >= GRAPH_MIN_STEPS
    params = list(model.parameters())
    with graphed_steps(model, train_ds, cfg.batch_size, use_amp, device, use_graphs) as graphed:
        autocast = torch.autocast(
            device.type, amp_dtype(device), enabled=use_amp, cache_enabled=not graphed
        )
        for epoch in range(start_epoch, epochs):
            if result.stopped_early:
                break
            model.train()
            t0, seen, step = time.perf_counter(), 0, 0
            # The loss stays on the device until the epoch ends: reading it every step would make
            # the host wait for the GPU each time instead of queueing the next step.
            total = torch.zeros((), dtype=_sum_dtype(device), device=device)
            for idx in epoch_batches(train_ds, per_epoch, cfg.batch_size, gen):
                run = eager if graphed and len(idx) < cfg.batch_size else step_model
                size = len(idx)
                if part is not None:
                    idx = idx.tensor_split(part[1])[part[0]]
                batch = train_ds.batch(idx)
                loss = _train_step(
                    run, batch, autocast, opt, scaler, params, cfg.clip_grad, penalty, part
                )
                if sched is not None:
                    sched.step()
                seen += size
                step += 1
                total += loss.detach() * size
                if on_step is not None and part is None:  # a slice's loss is no batch's loss
                    loss_value = _finite_loss(loss.item(), epoch, cfg)
                    on_step({"epoch": epoch + 1, "loss": loss_value, "seen": step, "of": per_epoch})
            result.steps += step
            train_loss = _finite_loss(ddp.total(total).item() / max(seen, 1), epoch, cfg)
            train_seconds = time.perf_counter() - t0
            errors = (
                squared_errors(model, val_ds, device, amp=use_amp) if val_ds is not None else None
            )
            val = float(errors.mean()) if errors is not None and len(errors) else math.nan
            elapsed = time.perf_counter() - t0
            row = {
                "epoch": epoch + 1,
                "steps": result.steps,
                "train_loss": train_loss,
                "val_loss": val,
                "lr": opt.param_groups[0]["lr"],
                "seconds": elapsed,
                "train_seconds": train_seconds,
                "samples_per_s": seen / elapsed if elapsed > 0 else math.nan,
            }
            result.history.append(row)
            score = _score(row)
            if score < result.best_val and beats_clearly(errors, initial_errors):
                result.best_val, result.best_epoch = score, epoch + 1
                best_state = cpu_state(model)
            if score < lowest:
                lowest, bad = score, 0
            else:
                bad += 1
                patient = cfg.patience and bad >= cfg.patience and result.steps >= cfg.min_steps
                result.stopped_early = bool(patient) and epoch + 1 < epochs
            if on_epoch is not None:
                on_epoch(
                    FitState(
                        epoch + 1,
                        cpu_state(model),
                        copy.deepcopy(opt.state_dict()),
                        sched.state_dict() if sched is not None else None,
                        best_state,
                        result,
                        bad,
                        _rng_state(gen, device),
                        initial_errors,
                    )
                )
    if cfg.restore_best:
        model.load_state_dict(best_state)
    return result


def _score(row: dict[str, float]) -> float:
    """An epoch's validation loss, or its training loss where there is no validation."""
    return row["val_loss"] if not math.isnan(row["val_loss"]) else row["train_loss"]


def _penalty(model: nn.Module) -> Callable[[], torch.Tensor] | None:
    """The highway's ridge penalty (added to the loss), or None for a model without one."""
    highway = getattr(model, "highway", None)
    return highway.penalty_loss if highway is not None else None


# On an H200 the seed's TCN step took 6.3 ms eagerly and 1.7 ms replayed, and capturing took
# 340 ms (warm-up passes, then the capture): it pays for itself after about 75 full batches
# (`scripts/bench_train.py --device cuda`). Fits with fewer than twice that run eagerly.
GRAPH_MIN_STEPS = 150


@contextlib.contextmanager
def graphed_steps(
    model: nn.Module,
    ds: WindowDataset,
    batch_size: int,
    amp: bool,
    device: torch.device,
    enabled: bool,
) -> Iterator[bool]:
    """Small models on a GPU are bound by kernel launches, not arithmetic. Inside this
    context `model.forward` replays its training forward and backward for a full batch as
    CUDA graphs (`torch.cuda.make_graphed_callables`); in eval mode it runs eagerly, and a
    batch of another size must go through the eager forward saved before (as `fit` does).
    Dropout still draws new masks on every replay. The capture's warm-up passes draw masks
    and update BatchNorm's running statistics; both are put back to where they were before
    them, so the capture leaves no trace in training, and a resumed run (which captures again)
    replays the same masks as the uninterrupted one. Yields whether graphs were captured (not
    when disabled or without a full batch); the eager forward is back on exit, also after an
    error."""
    if not enabled or len(ds) < batch_size:
        yield False
        return
    sample = ds.batch(torch.arange(batch_size))[0]
    model.train()
    with warnings.catch_warnings():
        # The captured graph keeps the parameters' gradient accumulators made on the capture
        # stream; PyTorch warns when replayed gradients arrive from the main stream. Values
        # are unaffected (tests/test_cuda.py compares graphed and eager training).
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
        rng = torch.cuda.get_rng_state(device)
        buffers = [(b, b.clone()) for b in model.buffers()]
        with torch.autocast(device.type, amp_dtype(device), enabled=amp, cache_enabled=False):
            torch.cuda.make_graphed_callables(model, (sample,))
        torch.cuda.set_rng_state(rng, device)
        for live, saved in buffers:  # in place: the graphs read and write these addresses
            live.copy_(saved)
        try:
            yield True
        finally:
            del model.forward  # the instance attribute the capture set; the class's one remains


def _train_step(
    run: Callable[[torch.Tensor], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    autocast: torch.autocast,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    clip_grad: float,
    penalty: Callable[[], torch.Tensor] | None = None,
    part: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch (gradients of `params` clipped to norm `clip_grad` when
    it is positive); returns the loss (without the penalty), still on the device. With `part`
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
    scaler.scale(objective if penalty is None else objective + penalty()).backward()
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


def fits_in_window(model: nn.Module, window: int) -> bool:
    rf = getattr(model, "receptive_field", None)
    return rf is not None and rf <= window


def predicts_without_windows(model: nn.Module, window: int) -> bool:
    """Whether `predict_rows` shares work between rows instead of a pass per window."""
    if fits_in_window(model, window):
        return True
    return isinstance(model, TCN) and window_end_plan(model, window) is not None


def predict_rows(
    model: nn.Module,
    panel: Panel,
    rows: torch.Tensor,
    window: int,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = False,
    rows_per_chunk: int = 512,
    chunks_per_call: int | None = None,
) -> np.ndarray:
    """Scaled prediction at each global row, as from the window of `window` bars ending there.

    When the receptive field fits in the window, the prediction at row t depends on the last
    receptive-field bars only, so one pass over a chunk of consecutive rows (plus that much
    context) gives the same numbers as one window per row, for about window/(1 + context /
    rows_per_chunk) times less work. Otherwise the window's own zero padding is part of the
    input: a TCN then shares the values that do not depend on where the window starts
    (`_predict_window_ends`, about 25x less work for the seed's 8 blocks at window 256), and
    other models get a pass per window as in training.
    """
    model.eval().to(device)
    rows = torch.as_tensor(rows, dtype=torch.int64)
    if len(rows) == 0:
        return np.zeros(0, dtype=np.float32)
    offsets = torch.as_tensor(panel.offsets, dtype=torch.int64)
    ticker = torch.searchsorted(offsets, rows, right=True).clamp(max=len(offsets) - 1) - 1
    if (rows >= offsets[-1]).any() or (rows - offsets[ticker] < window - 1).any():
        raise ValueError("predict_rows: a row has fewer than window - 1 bars of its own before it")
    if not fits_in_window(model, window):
        plan = window_end_plan(model, window) if isinstance(model, TCN) else None
        if plan is None:
            return _predict_windows(model, panel, rows, window, device, batch_size, amp)
        return _predict_window_ends(
            model, panel, rows, window, device, amp, plan, rows_per_chunk, chunks_per_call
        )
    context = model.receptive_field - 1

    def chunk_outputs(x: torch.Tensor) -> torch.Tensor:
        return model(x)[:, 0, context:]

    return _predict_chunks(
        chunk_outputs, panel, rows, context, device, amp, rows_per_chunk, chunks_per_call
    )


def _predict_chunks(
    chunk_outputs: Callable[[torch.Tensor], torch.Tensor],
    panel: Panel,
    rows: torch.Tensor,
    context: int,
    device: torch.device,
    amp: bool,
    rows_per_chunk: int,
    chunks_per_call: int | None,
) -> np.ndarray:
    """Predictions at `rows` from chunks of up to `rows_per_chunk` consecutive rows, each with
    `context` bars before its first row; `chunk_outputs` maps a batch of chunk inputs
    (B, F, context + rows_per_chunk) to (B, rows_per_chunk) predictions."""
    order = torch.argsort(rows, stable=True)
    firsts, chunk = chunk_plan(rows[order], rows_per_chunk)
    length = context + rows_per_chunk
    per_call = chunks_per_call or CHUNKS_PER_CALL[device.type == "cuda"]
    outs = []
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype(device), enabled=amp):
        for group in firsts.split(per_call):
            x = fixed_batch(chunk_inputs(panel, group, context, length), per_call).to(device)
            outs.append(chunk_outputs(x)[: len(group)].float().cpu())
    out = torch.cat(outs)
    pred = torch.empty(len(rows))
    pred[order] = out[chunk, rows[order] - firsts[chunk]]
    return pred.numpy()


# Chunks predicted per call (CPU, CUDA). Every call gets exactly this many (zeros fill the
# last), so a chunk's arithmetic has the same shapes however many other chunks, i.e. however
# much data, there are: oneDNN takes other code paths for other batch sizes. On a GPU a call
# per chunk was bound by kernel launches.
CHUNKS_PER_CALL = (4, 64)


def fixed_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with zero rows appended up to `size` along the first dimension."""
    if len(x) == size:
        return x
    return torch.cat([x, x.new_zeros(size - len(x), *x.shape[1:])])


def _predict_window_ends(
    model: TCN,
    panel: Panel,
    rows: torch.Tensor,
    window: int,
    device: torch.device,
    amp: bool,
    plan: list[dict[str, list[int]]],
    rows_per_chunk: int,
    chunks_per_call: int | None = None,
) -> np.ndarray:
    """`_predict_windows`' numbers (each row's window on its own, zero padding and all) from
    one dense pass per chunk of consecutive rows plus the few window-specific values
    (`tcn.window_end_outputs`). Every chunk computes all `rows_per_chunk` windows, wanted or
    not, so its arithmetic has the same shapes however many rows (or future bars) exist."""
    every = torch.arange(rows_per_chunk, device=device)

    def chunk_outputs(x: torch.Tensor) -> torch.Tensor:
        return window_end_outputs(model, x, every, window, plan).view(len(x), -1)

    return _predict_chunks(
        chunk_outputs, panel, rows, window - 1, device, amp, rows_per_chunk, chunks_per_call
    )


def _predict_windows(
    model: nn.Module,
    panel: Panel,
    rows: torch.Tensor,
    window: int,
    device: torch.device,
    batch_size: int,
    amp: bool,
) -> np.ndarray:
    out = []
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype(device), enabled=amp):
        for chunk in rows.split(batch_size):
            x = last_step_inputs(panel, chunk, window).to(device)
            out.append(model(x)[:, 0, -1].float().cpu())
    return torch.cat(out).numpy()
