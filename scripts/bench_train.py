"""Training speed: achieved GFLOP/s vs a float32 matmul, tsconv's TCN vs the seed's recipe,
fp32 vs bf16 autocast, and dense vs last-step targets on the sample data.

    python scripts/bench_train.py [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _bench import machine, table, timeit
from torch import nn

from tsconv.config import validate_config
from tsconv.experiment import fit_span, prepare, training_spans
from tsconv.models.tcn import TCN


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
    for name, model, amp in [
        ("seed recipe (pad both sides + trim), fp32", seed, False),
        ("tsconv TCN, fp32", ours, False),
        ("tsconv TCN, bf16 autocast", ours, True),
    ]:
        t = timeit(step_fn(model, x, y, amp, device, True), repeats)
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


def dense_vs_last(repeats_unused: int, device) -> str:
    base = {
        "seed": 0,
        "data": {"source": "sample", "tickers": ["MSFT", "AAPL"]},
        "window": 64,
        "model": {"kind": "tcn", "channels": 16, "layers": 4, "dropout": 0.1},
        "train": {
            "epochs": 12,
            "batch_size": 32,
            "lr": 0.002,
            "patience": 3,
            "device": device.type,
        },
    }
    rows, epoch_last = [], None
    for targets in ["last", "all"]:
        cfg = validate_config({**base, "train": {**base["train"], "targets": targets}})
        prep = prepare(cfg)
        train, val = training_spans(prep)
        t0 = time.perf_counter()
        _, _, _, res = fit_span(prep, train, val, seed=0, device=device)
        total = time.perf_counter() - t0
        ep = sorted(h["seconds"] for h in res.history)
        med = ep[len(ep) // 2]
        epoch_last = epoch_last or med
        rows.append(
            [targets, med, ep[0], ep[-1], epoch_last / med, len(res.history), total, res.best_val]
        )
    return table(
        "Dense vs last-step targets on the sample (MSFT+AAPL, window 64, TCN 16x4), "
        "each trained to early stopping",
        [
            "targets",
            "epoch s (median)",
            "min",
            "max",
            "epoch speedup",
            "epochs",
            "total s",
            "best val MSE",
        ],
        rows,
    )


def dense_epoch_256(device) -> str:
    """One epoch over the same training targets at window 256 (the seed's window)."""
    rows, base_t = [], None
    for targets in ["last", "all"]:
        cfg = validate_config(
            {
                "seed": 0,
                "data": {"source": "sample", "tickers": ["MSFT", "AAPL"]},
                "window": 256,
                "model": {"kind": "tcn", "channels": 16, "layers": 4, "dropout": 0.1},
                "train": {
                    "epochs": 1,
                    "batch_size": 32,
                    "patience": 0,
                    "targets": targets,
                    "val_fraction": 0.05,
                    "device": device.type,
                },
            }
        )
        prep = prepare(cfg)
        train, val = training_spans(prep)
        t0 = time.perf_counter()
        fit_span(prep, train, val, seed=0, device=device)
        t = time.perf_counter() - t0
        base_t = base_t or t
        rows.append([targets, prep.burn_in, t, base_t / t])
    return table(
        "One epoch (incl. validation) at window 256, TCN 16x4 (receptive field 61)",
        ["targets", "burn-in", "seconds", "speedup"],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-dense", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(speed_rows(device, args.repeats))
    if not args.skip_dense:
        print(dense_vs_last(args.repeats, device))
        print(dense_epoch_256(device))


if __name__ == "__main__":
    main()
