"""K small TCNs trained one after another against K trained as one grouped model.

    python scripts/bench_batched.py [--config quick] [--members 8] [--device auto] [--repeats 15]
    python scripts/bench_batched.py --trainer [--config quick] [--members 8] [--device auto]
        [--set KEY=VALUE ...]

`--trainer` times tsconv's own fits instead of single steps: the first fold of the config's
walk-forward, its K ensemble members fitted one after another (`fit_span` each: the shipped
route) against together (`fit_span_members`, `train.grouped_members: true`), with each
route's validation loss (the same to float rounding without dropout).

A walk-forward's folds and a seed ensemble's members are K models of one shape, each with its
own data. The shipped models are too small to fill a GPU (a step is bound by kernel launches,
docs/benchmarks-gpu.md), so K of them as one model, whose convolutions have `groups=K` with
each member's channels one group, would do K members' work per launch. Weight norm (per output
channel), dropout, ReLU, the residual and AdamW (elementwise) act on each member's slice alone,
so one step of the grouped model on the members' stacked batches is K independent steps; the
script checks that first (loss and gradients against K separate models, dropout off), then
times one train step (forward, backward, AdamW) of:

- `tsconv, one after another`: K of tsconv's TCNs, the shipped route (the baseline);
- `plain, one after another`: K plain-PyTorch TCNs (the grouped model with K = 1);
- `grouped, K as one`: one plain-PyTorch TCN with grouped convolutions.

Not timed here: torch.func's `vmap` over stacked members. On the 2-core CPU (2026-12-01) it
took 57-58 ms a step for 8 quick members, the same as 8 plain steps one after another (59-60
ms) and twice the 8 tsconv steps (29 ms); weight norm has no batching rule in torch 2.13
(a slow fallback) and tsconv's own block (a custom autograd function) and dropout (which
draws its mask through `.item()`) cannot run under `vmap` at all.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _bench import machine, optimizer_step, table, timeit_interleaved
from torch import nn

from tsconv.config import load_config
from tsconv.engine.fit import make_optimizer
from tsconv.engine.runtime import select_device
from tsconv.engine.windows import dense_sequence
from tsconv.models.fast.tcn import TimeMajorTCN
from tsconv.models.registry import receptive_field
from tsconv.recipes.fit_span import fit_span, fit_span_members, member_seed
from tsconv.recipes.prepare import prepare, split_train_val
from tsconv.recipes.walkforward import fold_spans, make_folds


class GroupedBlock(nn.Module):
    """A TCN block of `members` independent models: channels [m*c, (m+1)*c) are member m's."""

    def __init__(self, members: int, c_in: int, c_out: int, k: int, d: int, dropout: float):
        super().__init__()
        self.pad = (k - 1) * d
        wn = nn.utils.parametrizations.weight_norm
        self.conv1 = wn(nn.Conv1d(members * c_in, members * c_out, k, dilation=d, groups=members))
        self.conv2 = wn(nn.Conv1d(members * c_out, members * c_out, k, dilation=d, groups=members))
        self.down = (
            nn.Conv1d(members * c_in, members * c_out, 1, groups=members) if c_in != c_out else None
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        out = self.drop(F.relu(self.conv2(F.pad(out, (self.pad, 0)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class GroupedTCN(nn.Module):
    """(N, members * C, L) -> (N, members, L): member m reads and writes its own channels."""

    def __init__(self, members, c_in, channels, k, base, dropout):
        super().__init__()
        blocks, c = [], c_in
        for i, c_out in enumerate(channels):
            blocks.append(GroupedBlock(members, c, c_out, k, base**i, dropout))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv1d(members * c, members, 1, groups=members)
        self.highway = None  # as tsconv's models say (models.layers.ForecastModel): none

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def member_slices(grouped: GroupedTCN, members: list[GroupedTCN]) -> None:
    """Copy member m's parameters into grouped slice m (every tensor is split on dim 0)."""
    with torch.no_grad():
        for name, p in grouped.named_parameters():
            p.copy_(torch.cat([dict(m.named_parameters())[name] for m in members]))


def dense_loss(out: torch.Tensor, y: torch.Tensor, burn_in: int) -> torch.Tensor:
    """Sum over members of each member's mean squared error past the burn-in."""
    err = (out[:, :, burn_in:] - y[:, :, burn_in:]) ** 2
    return err.mean(dim=(0, 2)).sum()


def member_data(shape, device: torch.device):
    """Each member's own batch (K, N, C, L) and targets (K, N, 1, L), and the same stacked on
    the channel axis as the grouped model reads them: (N, K * C, L) and (N, K, L)."""
    k_members, c_in, _, _, _, length, _, batch = shape
    xs = torch.randn(k_members, batch, c_in, length, device=device)
    ys = torch.randn(k_members, batch, 1, length, device=device)
    x = xs.permute(1, 0, 2, 3).reshape(batch, k_members * c_in, length)
    return xs, ys, x, ys.permute(1, 0, 2, 3).reshape(batch, k_members, length)


def check_equal(shape, device: torch.device) -> float:
    """Largest relative difference between the grouped model's gradients and K separate ones."""
    k_members, c_in, channels, k, base, _, burn_in, _ = shape
    torch.manual_seed(0)
    members = [GroupedTCN(1, c_in, channels, k, base, 0.0).to(device) for _ in range(k_members)]
    grouped = GroupedTCN(k_members, c_in, channels, k, base, 0.0).to(device)
    member_slices(grouped, members)
    xs, ys, x, y = member_data(shape, device)
    for m, xm, ym in zip(members, xs, ys, strict=True):
        dense_loss(m(xm), ym, burn_in).backward()
    dense_loss(grouped(x), y, burn_in).backward()
    worst = 0.0
    for name, p in grouped.named_parameters():
        ref = torch.cat([dict(m.named_parameters())[name].grad for m in members])
        worst = max(worst, ((p.grad - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item())
    return worst


def train_step(models, inputs, targets, burn_in: int, device: torch.device):
    """One AdamW step of each model on its own batch, one model after another."""
    opts = [make_optimizer(m, 1e-3, 0.0, device) for m in models]

    def step():
        for m, opt, x, y in zip(models, opts, inputs, targets, strict=True):
            optimizer_step(opt, dense_loss(m(x), y, burn_in), device)

    return step


def steps(shape, dropout: float, device: torch.device):
    k_members, c_in, channels, k, base, _, burn_in, _ = shape
    torch.manual_seed(0)
    xs, ys, x, y = member_data(shape, device)
    tsconv_models = [
        TimeMajorTCN(c_in, channels, k, base, dropout).to(device) for _ in range(k_members)
    ]
    plain = [GroupedTCN(1, c_in, channels, k, base, dropout).to(device) for _ in range(k_members)]
    grouped = GroupedTCN(k_members, c_in, channels, k, base, dropout).to(device)
    return {
        "tsconv, one after another": train_step(tsconv_models, xs, ys, burn_in, device),
        "plain, one after another": train_step(plain, xs, ys, burn_in, device),
        "grouped, K as one": train_step([grouped], [x], [y], burn_in, device),
    }


def batched_table(config: str, members: int, device: torch.device, repeats: int) -> str:
    """The timing table, and the grouped model's largest gradient difference from K models."""
    cfg = load_config(config)
    if cfg.model.kind != "tcn":
        raise SystemExit(f"{config}: model.kind is {cfg.model.kind}; this compares TCNs")
    m = cfg.model
    length, burn_in = dense_sequence(cfg.window, receptive_field(m), cfg.train.burn_in)
    channels = m.block_channels()
    batch = cfg.train.batch_size
    shape = (members, len(cfg.features), channels, m.kernel_size, m.dilation_base)
    shape += (length, burn_in, batch)
    diff = check_equal(shape, device)
    times = timeit_interleaved(steps(shape, m.dropout, device), repeats=repeats)
    base = times["tsconv, one after another"]["median"]
    rows = [
        [name, t["median"] * 1e3, f"{t['min'] * 1e3:.3g} - {t['max'] * 1e3:.3g}"]
        + [f"{base / t['median']:.2f}x"]
        for name, t in times.items()
    ]
    title = (
        f"Train step of {members} `{config}` TCNs ({len(channels)}x{channels[0]}, "
        f"k{m.kernel_size}, sequences {length} with burn-in {burn_in}, batch {batch}, dropout "
        f"{m.dropout}) on {device.type}, median of {repeats}; {machine()}"
    )
    return (
        table(title, ["route", "step (ms)", "min - max", "speed-up"], rows)
        + f"\nThe grouped model's gradients against {members} separate models: largest "
        f"relative difference {diff:.1e}.\n"
    )


def trainer_table(
    config: str, members: int, device: torch.device, repeats: int, sets: tuple[str, ...] = ()
) -> str:
    """Wall time of a fold's K members fitted one after another and together, interleaved
    (`sets`: KEY=VALUE overrides of the config)."""
    cfg = load_config(config, [*sets, f"train.ensemble={members}", "train.grouped_members=true"])
    prep = prepare(cfg)
    fold = make_folds(prep)[0]
    train, _ = fold_spans(prep, fold)
    fit_rows, val_rows = split_train_val(prep, train, cfg.train.val_gap)
    seeds = [member_seed(cfg.seed + fold.index, m) for m in range(members)]
    routes = {
        "one after another": lambda: [
            fit_span(prep, fit_rows, val_rows, seed=s, device=device)[3] for s in seeds
        ],
        "together": lambda: fit_span_members(prep, fit_rows, val_rows, seeds=seeds, device=device)[
            3
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in routes}
    results = {}
    for _ in range(repeats):
        for name, route in routes.items():
            t0 = time.perf_counter()
            results[name] = route()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["one after another"])
    rows = []
    for name, got in results.items():
        wall = statistics.median(times[name])
        val = " ".join(f"{r.best_val:.5f}" for r in got[:4])
        rows.append([name, f"{wall:.2f}", f"{base / wall:.2f}x", val])
    steps = results["together"][0].steps
    title = (
        f"{members} members of `{config}` on its first fold ({sum(hi - lo for lo, hi in fit_rows.values())} "
        f"fit rows, {steps} steps each) on {device.type}, median of {repeats}; {machine()}"
    )
    return table(
        title,
        ["route", "wall (s)", "speed-up", "best validation MSE (first 4)"],
        rows,
    ) + (
        "\nwall: the members' whole fits (linear part, windows, training, validation); "
        "together fits the linear part once for all members.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="quick")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=None, help="default: 15 steps, 3 fits")
    ap.add_argument("--trainer", action="store_true", help="time whole fits (see above)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE (--trainer)")
    args = ap.parse_args()
    # as tsconv trains: on CUDA that means TF32 off
    device = select_device(args.device)
    if args.trainer:
        print(trainer_table(args.config, args.members, device, args.repeats or 3, tuple(args.sets)))
    else:
        print(batched_table(args.config, args.members, device, args.repeats or 15))


if __name__ == "__main__":
    main()
