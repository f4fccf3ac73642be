"""An ensemble's members trained together as one grouped model (`train.grouped_members`).

Each member trains as `tsconv.engine.fit.fit` would train it alone: its own starting weights,
its own batches (its own generator, seeded by its seed: the same windows in the same order),
the same step budget and learning-rate schedule, its gradients clipped to its own norm, its
own validation, best weights and early stopping. What changes is how the steps run: one
forward and backward of `GroupedModel` on the members' batches side by side, and one AdamW
update of the stacked parameters (AdamW is elementwise, so that is each member's update). On
a GPU that is K members' work per kernel launch (docs/benchmarks-gpu.md).

The results equal separate fits' up to float rounding (tests/test_grouped.py), not bit for
bit. Rounding can grow: a pre-activation that is exactly zero goes either side of a ReLU, and
Adam's normalised steps turn the rounding noise of the directions BatchNorm makes flat into
whole steps, so a member's weights can end a percent apart from its own fit's while its
validation losses agree to a few digits. The dropout masks are drawn from one stream (the
first member's seed) instead of one per member: the members are as independent, but their
masks are not the ones they would draw alone. A member whose pass over the data ends at a
different step has its shorter batch padded with its own windows, left out of its loss and
its BatchNorm statistics. A member that stops early keeps the weights it stopped with while
the others train on. With float16 loss scaling (GPUs without bfloat16) a step with an
overflow in any member is skipped for all of them, a stopped member's included. Not
supported here: resuming an interrupted fit (it starts again) and torchrun.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from tsconv.config import TrainConfig
from tsconv.engine import ddp
from tsconv.engine.cuda_graphs import GRAPH_MIN_STEPS, graphed_steps
from tsconv.engine.fit import (
    FitResult,
    Tracking,
    epoch_batches,
    epoch_row,
    make_optimizer,
    make_scheduler,
    record_epoch,
    squared_errors,
    start_tracking,
    steps_per_epoch,
)
from tsconv.engine.runtime import amp_dtype, cpu_state, seed_everything
from tsconv.engine.windows import WindowDataset
from tsconv.errors import TrainingError
from tsconv.models.fast.grouped import GroupedModel
from tsconv.models.layers import ForecastModel


@dataclass
class EpochTotals:
    """What one epoch of grouped steps did: its index, optimizer steps, the sequences each
    member saw (members retile their own windows, so their counts differ), each member's
    mean training loss, and its training seconds."""

    index: int
    steps: int
    seen: list[int]
    losses: list[float]
    train_seconds: float


class MemberBatches:
    """One copy of the training windows per member (each retiles its own), and their batches
    side by side: x (B, K * F, L), y and loss mask (B, K, L)."""

    def __init__(self, ds: WindowDataset, members: int):
        self.members = [copy.copy(ds) for _ in range(members)]

    def __len__(self) -> int:
        return min(len(ds) for ds in self.members)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same windows for every member (a sample batch for capturing CUDA graphs)."""
        return self.side_by_side([idx] * len(self.members))[:3]

    def side_by_side(self, idxs: list[torch.Tensor]):
        """(x, y, loss mask, rows): member m's batch `idxs[m]` in its place. A shorter one
        (its pass over the data ended earlier) is padded to the longest with repeats of its
        own windows, out of the loss; `rows` (B, K) then marks each member's own rows
        (None: no padding)."""
        size = max(len(i) for i in idxs)
        xs, ys, masks, own = [], [], [], []
        for ds, idx in zip(self.members, idxs, strict=True):
            n = len(idx)
            if n < size:
                idx = torch.cat([idx, idx.repeat(math.ceil(size / n) - 1)[: size - n]])
            x, y, mask = ds.batch(idx)
            rows = torch.arange(size, device=mask.device) < n
            xs.append(x)
            ys.append(y)
            masks.append(mask & rows[:, None])
            own.append(rows)
        padded = any(len(i) < size for i in idxs)
        return (
            torch.cat(xs, 1),
            torch.stack(ys, 1),
            torch.stack(masks, 1),
            torch.stack(own, 1) if padded else None,
        )


def fit_members(
    models: list[ForecastModel],
    train_ds: WindowDataset,
    val_ds: WindowDataset | None,
    cfg: TrainConfig,
    *,
    seeds: list[int],
    device: torch.device,
    epochs: int | None = None,
) -> list[FitResult]:
    """Train `models` (built alike, with the same highway) on the same windows, member m as
    `fit(models[m], ..., seed=seeds[m])` would; each ends with its best weights by validation
    loss (its last ones without `restore_best`). Returns each member's FitResult."""
    epochs = epochs or cfg.epochs
    if len(train_ds) == 0:
        raise TrainingError("no training windows: the training span is shorter than the window")
    if ddp.shard() is not None:
        raise TrainingError("train.grouped_members does not run under torchrun; turn it off")
    k = len(models)
    seed_everything(seeds[0])  # the global generators: every member's dropout masks
    gens = [torch.Generator().manual_seed(s) for s in seeds]  # each member's batch order
    for model in models:
        model.to(device)
    group = GroupedModel(models).to(device)
    opt = make_optimizer(group, cfg.lr, cfg.weight_decay, device)
    per_epoch = steps_per_epoch(len(train_ds), cfg.batch_size, epochs, cfg.min_steps)
    sched = make_scheduler(opt, cfg, per_epoch * epochs)
    scaler = torch.amp.GradScaler(
        device.type, enabled=cfg.amp and amp_dtype(device) == torch.float16
    )
    if device.type != "cpu":  # gather batches where the model runs, as `fit`
        train_ds = train_ds.to(device)
        val_ds = val_ds.to(device) if val_ds is not None and val_ds.mode != "last" else val_ds
    data = MemberBatches(train_ds, k)
    tracks = [start_tracking(model, val_ds, device, cfg.amp) for model in models]
    stopped: list[dict[str, torch.Tensor] | None] = [None] * k  # weights at an early stop
    params = list(group.parameters())
    graphs = device.type == "cuda" and cfg.cuda_graphs and not cfg.compile
    graphs = graphs and per_epoch * epochs >= GRAPH_MIN_STEPS
    step_model = torch.compile(group) if cfg.compile else group
    eager = group.forward
    with graphed_steps(group, data, cfg.batch_size, cfg.amp, device, graphs) as graphed:
        autocast = torch.autocast(
            device.type, amp_dtype(device), enabled=cfg.amp, cache_enabled=not graphed
        )
        for epoch in range(epochs):
            active = [m for m in range(k) if not tracks[m].result.stopped_early]
            if not active:
                break
            t0 = time.perf_counter()
            group.train()
            total = torch.zeros(k, dtype=torch.float64, device=device)
            seen, steps = torch.zeros(k, dtype=torch.int64), 0
            batches = zip(
                *(
                    epoch_batches(ds, per_epoch, cfg.batch_size, gen)
                    for ds, gen in zip(data.members, gens, strict=True)
                ),
                strict=True,  # every member takes the same number of steps
            )
            for idxs in batches:
                x, y, mask, rows = data.side_by_side(list(idxs))
                # a graph replays a full batch without padding only
                full = len(x) == cfg.batch_size and rows is None
                forward = eager if graphed and not full else step_model
                with group.padded(rows):
                    loss = _step(
                        forward, (x, y, mask), autocast, opt, scaler, params, cfg.clip_grad
                    )
                if sched is not None:
                    sched.step()
                sizes = torch.tensor([len(i) for i in idxs])
                total += loss.detach() * sizes.to(device, total.dtype)
                seen, steps = seen + sizes, steps + 1
            losses = (total.cpu() / seen.clamp_min(1)).tolist()
            totals = EpochTotals(epoch, steps, seen.tolist(), losses, time.perf_counter() - t0)
            for m in active:
                _validate(group, m, models[m], tracks[m], val_ds, cfg, device, opt, epochs, totals)
                if tracks[m].result.stopped_early:
                    stopped[m] = cpu_state(models[m])
    for m, model in enumerate(models):
        if cfg.restore_best:
            model.load_state_dict(tracks[m].best_state)
        else:  # its weights when it stopped, or now
            model.load_state_dict(stopped[m] if stopped[m] is not None else group.member_state(m))
    return [t.result for t in tracks]


def _validate(
    group: GroupedModel,
    m: int,
    model: ForecastModel,
    track: Tracking,
    val_ds: WindowDataset | None,
    cfg: TrainConfig,
    device: torch.device,
    opt: torch.optim.Optimizer,
    epochs: int,
    epoch: EpochTotals,
) -> None:
    """Member m after an epoch: its weights into its own model, validated as `fit` does."""
    loss = epoch.losses[m]
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss became {loss} in epoch {epoch.index + 1} (ensemble member {m}); try a "
            f"lower train.lr (now {cfg.lr}) or check the input data"
        )
    track.result.steps += epoch.steps
    # the row's seconds: the epoch's training and this member's own validation
    t0 = time.perf_counter() - epoch.train_seconds
    model.load_state_dict(group.member_state(m))
    errors = squared_errors(model, val_ds, device, amp=cfg.amp) if val_ds is not None else None
    row = epoch_row(
        track.result, epoch.index, loss, errors, opt, epoch.seen[m], t0, epoch.train_seconds
    )
    record_epoch(track, cfg, row, errors, epochs, lambda: cpu_state(model))


def _step(
    run,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    autocast: torch.autocast,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    clip_grad: float,
) -> torch.Tensor:
    """One optimizer step of every member on its batch; returns each member's loss (K,), still
    on the device. The objective is the sum of the members' losses: member m's parameters
    get member m's gradient alone."""
    x, y, mask = batch
    with autocast:
        pred = run(x)
    diff = torch.where(mask, pred.float() - torch.nan_to_num(y), 0.0)
    loss = (diff**2).sum((0, 2)) / mask.sum((0, 2)).clamp_min(1)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss.sum()).backward()
    if clip_grad > 0:
        scaler.unscale_(opt)
        clip_each_member(params, len(loss), clip_grad)
    scaler.step(opt)
    scaler.update()
    return loss


@torch.no_grad()
def clip_each_member(params: list[nn.Parameter], members: int, max_norm: float) -> None:
    """`nn.utils.clip_grad_norm_` for each member's slice of the stacked parameters (member m's
    part of every tensor is its m-th chunk on the first axis)."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.view(members, -1).float().pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.view(members, -1).mul_(coef[:, None].to(g.dtype))
