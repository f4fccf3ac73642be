"""Training speed: achieved GFLOP/s vs a float32 matmul, tsconv's TCN vs the seed's recipe,
fp32 vs bf16 autocast, and dense vs last-step targets on the sample data.

    python scripts/bench_train.py [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from _bench import machine, table, timeit
from torch import nn

from tsconv.config import validate_config
from tsconv.experiment import fit_span, prepare, training_spans
from tsconv.models.tcn import TCN
from tsconv.windows import Scaler


class SeedTCNBlock(nn.Module):
    """The seed's block, literally: symmetric padding, then trim the right."""

    def __init__(self, c_in, c_out, k, d, dropout):
        super().__init__()
        self.pad = (k - 1) * d
        wn = nn.utils.parametrizations.weight_norm
        self.conv1 = wn(nn.Conv1d(c_in, c_out, k, dilation=d, padding=self.pad))
        self.conv2 = wn(nn.Conv1d(c_out, c_out, k, dilation=d, padding=self.pad))
        self.drop = nn.Dropout(dropout)
        self.res = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        out = self.drop(F.relu(self.conv1(x)[:, :, : -self.pad]))
        out = self.drop(F.relu(self.conv2(out)[:, :, : -self.pad]))
        return F.relu(out + self.res(x))


class SeedTCN(nn.Module):
    def __init__(self, c_in, hidden, k, layers, dropout):
        super().__init__()
        self.net = nn.Sequential(
            *[
                SeedTCNBlock(c_in if i == 0 else hidden, hidden, k, 2**i, dropout)
                for i in range(layers)
            ]
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)[:, :, -1])


def tcn_macs(c_in: int, hidden: int, k: int, layers: int, length: int) -> int:
    macs = 0
    for i in range(layers):
        ci = c_in if i == 0 else hidden
        macs += (ci * hidden * k + hidden * hidden * k) * length
        macs += ci * hidden * length if ci != hidden else 0
    return macs + hidden * length


def step_fn(model, x, y, amp: bool, device, last_only: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            out = model(x)
            pred = out[:, 0, -1] if last_only and out.dim() == 3 else out.reshape(len(x), -1)[:, -1]
        loss = ((pred.float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def convs_only_step(model: TCN, x: torch.Tensor, via_conv1d: bool = False):
    """The TCN's own convolution modules alone (padding, weight norm and the kernels), forward
    and backward on inputs laid out as the model passes them: what the convolutions allow, so
    the step's overhead (activations, dropout, residuals, optimizer) is the difference between
    this row and the model's. `via_conv1d` runs the same modules the plain way, conv1d on
    (N, C, L) memory, to measure what the channels-last conv2d route in CausalConv1d buys."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    batch, length = x.shape[0], x.shape[2]

    def activation(c: int, grad: bool) -> torch.Tensor:
        if via_conv1d:
            t = torch.randn(batch, c, length, device=x.device)
        else:  # (N, C, L) viewed over channels-last memory, as CausalConv1d returns it on CPU
            t = torch.randn(batch, length, c, device=x.device).transpose(1, 2)
        return t.requires_grad_(grad)

    def plain(conv: nn.Conv1d, xi: torch.Tensor) -> torch.Tensor:
        pad = (conv.kernel_size[0] - 1) * conv.dilation[0]
        return nn.Conv1d.forward(conv, F.pad(xi, (pad, 0)))

    ins = [activation(c.in_channels, i > 0) for i, c in enumerate(convs)]
    grads = [torch.randn(batch, c.out_channels, length, device=x.device) for c in convs]

    def step():
        for conv, xi, g in zip(convs, ins, grads, strict=True):
            (plain(conv, xi) if via_conv1d else conv(xi)).backward(g)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def speed_rows(device, repeats):
    n, c, k, layers, L, B = 8, 64, 3, 8, 256, 32
    x, y = torch.randn(B, n, L, device=device), torch.randn(B, device=device)
    a = torch.randn(2048, 2048, device=device)

    def mm():
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()

    peak = 2 * 2048**3 / timeit(mm, repeats)["median"] / 1e9
    flops = 3 * 2 * tcn_macs(n, c, k, layers, L) * B  # forward + backward ~ 3x forward
    rows = [["float32 matmul 2048^2 (peak)", "-", "-", "-", peak, 1.0, "-"]]
    torch.manual_seed(0)
    ours = TCN(n, [c] * layers, k, 2, 0.2).to(device)
    seed = SeedTCN(n, c, k, layers, 0.2).to(device)
    base = None
    for name, step in [
        (
            "seed recipe (pad both sides + trim, nn.Dropout), fp32",
            step_fn(seed, x, y, False, device, True),
        ),
        ("tsconv TCN, fp32", step_fn(ours, x, y, False, device, True)),
        ("tsconv TCN, bf16 autocast", step_fn(ours, x, y, True, device, True)),
        ("its convolution modules alone, fp32", convs_only_step(ours, x)),
        (
            "the same, as conv1d on (N, C, L) memory, fp32",
            convs_only_step(ours, x, via_conv1d=True),
        ),
    ]:
        t = timeit(step, repeats)
        base = base or t["median"]
        gflops = flops / t["median"] / 1e9
        rows.append(
            [
                name,
                t["median"] * 1e3,
                t["min"] * 1e3,
                t["max"] * 1e3,
                gflops,
                gflops / peak,
                f"{base / t['median']:.2f}x, {B / t['median']:.0f} samples/s",
            ]
        )
    return table(
        f"Train step, TCN 8x64 k3, window 256, batch 32 on {device}; {machine()}",
        ["", "median ms", "min", "max", "GFLOP/s", "of peak", "vs seed recipe"],
        rows,
    )


def dense_config(window: int, targets: str, seed: int, device, epochs: int, patience: int):
    return validate_config(
        {
            "seed": seed,
            "data": {"source": "sample", "tickers": ["MSFT", "AAPL"]},
            "window": window,
            "model": {"kind": "tcn", "channels": 16, "layers": 4, "dropout": 0.1},
            "train": {
                "epochs": epochs,
                "batch_size": 32,
                "lr": 0.002,
                "patience": patience,
                "targets": targets,
                "device": device.type,
            },
        }
    )


def zero_forecast_val_mse(prep, train, val) -> float:
    """Validation MSE of predicting 0, in the same scaled units as the models' val loss."""
    errs = []
    for t, td in prep.data.items():
        lo, hi = train[t]
        scale = Scaler.fit(td.x[lo:hi], td.y[lo:hi]).y_scale
        y = td.y[val[t][0] : val[t][1]] / scale
        errs.append(y[np.isfinite(y)] ** 2)
    return float(np.concatenate(errs).mean())


def seconds_to_reach(history: list[dict[str, float]], level: float) -> float:
    spent = 0.0
    for h in history:
        spent += h["seconds"]
        if h["val_loss"] <= level:
            return spent
    return math.inf


def dense_vs_last(device, window: int, seeds: int) -> str:
    """Both target modes trained to early stopping on the same spans, several seeds.

    "epoch s" is training time only (validation costs the same in both modes); "time to equal
    val" is, per seed, the training time until the validation loss first reaches
    the worse of the two modes' best: how long each takes to get as good as both end up."""
    runs: dict[str, list] = {"last": [], "all": []}
    for seed in range(seeds):
        for targets in runs:
            prep = prepare(dense_config(window, targets, seed, device, 200, 5))
            train, val = training_spans(prep)
            _, _, _, res = fit_span(prep, train, val, seed=seed, device=device)
            runs[targets].append(res)
    zero = zero_forecast_val_mse(prep, train, val)
    reach = {t: [] for t in runs}
    for last, dense in zip(runs["last"], runs["all"], strict=True):
        level = max(last.best_val, dense.best_val)
        reach["last"].append(seconds_to_reach(last.history, level))
        reach["all"].append(seconds_to_reach(dense.history, level))
    rows, base_epoch, base_reach = [], None, None
    for targets, results in runs.items():
        epoch_s = statistics.median(h["train_seconds"] for r in results for h in r.history)
        best = [r.best_val for r in results]
        to_equal = statistics.median(reach[targets])
        base_epoch, base_reach = base_epoch or epoch_s, base_reach or to_equal
        rows.append(
            [
                targets,
                epoch_s,
                base_epoch / epoch_s,
                statistics.median(len(r.history) for r in results),
                statistics.median(sum(h["seconds"] for h in r.history) for r in results),
                to_equal,
                base_reach / to_equal,
                statistics.fmean(best),
                statistics.stdev(best) if len(best) > 1 else math.nan,
            ]
        )
    return table(
        f"Dense vs last-step targets on the sample (MSFT+AAPL, window {window}, TCN 16x4), "
        f"each trained to early stopping (patience 5), {seeds} seeds; medians over seeds. "
        f"Predicting 0 scores val MSE {zero:.4f}",
        [
            "targets",
            "epoch s",
            "epoch speedup",
            "epochs",
            "total s",
            "s to equal val",
            "speedup",
            "best val MSE (mean)",
            "sd",
        ],
        rows,
    )


def dense_epoch_by_window(device, repeats: int) -> str:
    """Training time of one epoch over the sample's training targets (validation excluded),
    median of `repeats` epochs after the first: the saving grows with window - burn-in."""
    rows = []
    for window in (64, 128, 256):
        times = {}
        for mode in ("last", "all"):
            prep = prepare(dense_config(window, mode, 0, device, repeats + 1, 0))
            train, val = training_spans(prep)
            _, _, _, res = fit_span(prep, train, val, seed=0, device=device)
            times[mode] = statistics.median(h["train_seconds"] for h in res.history[1:])
        rows.append(
            [window, prep.burn_in, times["last"], times["all"], times["last"] / times["all"]]
        )
    return table(
        "Training time of one epoch over the sample's training targets, TCN 16x4 "
        "(receptive field 61), median of the epochs after the first",
        ["window", "burn-in", "last s", "all s", "speedup"],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--dense-windows", default="64,256", help="comma-separated windows")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(speed_rows(device, args.repeats))
    if not args.skip_dense:
        print(dense_epoch_by_window(device, args.repeats))
        for window in args.dense_windows.split(","):
            print(dense_vs_last(device, int(window), args.seeds))


if __name__ == "__main__":
    main()
