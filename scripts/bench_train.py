"""Training speed: achieved GFLOP/s vs a float32 matmul, tsconv's TCN vs the seed's recipe,
and fp32 vs bf16 autocast. Dense against last-step targets is compared as time to a given
forecast quality on series with a known answer, in scripts/bench_quality.py.

    python scripts/bench_train.py [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from _bench import machine, optimizer_step, summary, table, time_rounds, timeit
from torch import nn

from tsconv.engine.fit import make_optimizer
from tsconv.models.fast import timemajor
from tsconv.models.fast.dropout import Dropout
from tsconv.models.fast.tcn import TimeMajorTCN
from tsconv.models.fast.timemajor import conv_rows, conv_rows_backward, taps
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


def step_fn(model, x, y, amp: bool, device, last_only: bool, tsconv_optimizer: bool = True):
    """One train step; tsconv's optimizer (fused AdamW) or PyTorch's default AdamW."""
    if tsconv_optimizer:
        opt = make_optimizer(model, 1e-3, 0.0, device)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            out = model(x)
            pred = out[:, 0, -1] if last_only and out.dim() == 3 else out.reshape(len(x), -1)[:, -1]
        optimizer_step(opt, ((pred.float() - y) ** 2).mean(), device)

    return step


def convs_only_step(model: TCN, x: torch.Tensor, route: str):
    """The TCN's convolutions alone (weight norm and the kernels), forward and backward, on
    inputs laid out as each route keeps them: what the convolutions allow, so the rest of the
    step (ReLU, dropout, residuals, optimizer) is the difference to the model's row.

    route "rows": the time-major matrix products the CPU block runs (timemajor.py);
    "im2col": windows times weights on (N, C, L) memory (CausalConv1d's CPU route);
    "conv1d": left padding, then conv1d on (N, C, L) memory, the plain PyTorch way."""
    blocks = list(model.blocks)
    convs = [(c, b.conv1.dilation[0]) for b in blocks for c in (b.conv1, b.conv2)]
    convs += [(b.downsample, 1) for b in blocks if b.downsample is not None]
    batch, length, dev = x.shape[0], x.shape[2], x.device

    def activation(c: int) -> torch.Tensor:
        if route == "rows":
            return torch.randn(length * batch, c, device=dev)
        return torch.randn(batch, c, length, device=dev)

    ins = [activation(c.in_channels).requires_grad_(i > 0) for i, (c, _) in enumerate(convs)]
    grads = [activation(c.out_channels) for c, _ in convs]

    def on_rows(conv, d, xi, g, need_x):
        w = conv.weight  # recomputed through weight norm, as in the model
        t = taps(w.detach())
        conv_rows(xi.detach(), t, conv.bias.detach(), d * batch)
        _, gw, _ = conv_rows_backward(g, xi.detach(), t, d * batch, need_x=need_x)
        w.backward(gw)

    def plain(conv: nn.Conv1d, xi: torch.Tensor) -> torch.Tensor:
        pad = (conv.kernel_size[0] - 1) * conv.dilation[0]
        return nn.Conv1d.forward(conv, F.pad(xi, (pad, 0)))

    def step():
        for i, ((conv, d), xi, g) in enumerate(zip(convs, ins, grads, strict=True)):
            if route == "rows":
                on_rows(conv, d, xi, g, i > 0)
            else:
                (conv(xi) if route == "im2col" else plain(conv, xi)).backward(g)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step


def blocks_via_autograd(model: TimeMajorTCN) -> TCN:
    """The reference TCN with `model`'s weights and its dropout: the blocks compose their
    modules through autograd instead of the fused time-major CPU kernel, to measure what the
    fused block buys."""
    twin = TCN(
        model.blocks[0].conv1.in_channels,
        [b.conv2.out_channels for b in model.blocks],
        model.kernel_size,
        model.dilation_base,
        model.blocks[0].dropout.p,
    ).to(model.head.weight.device)
    twin.load_state_dict(model.state_dict())
    for block in twin.blocks:
        block.dropout = Dropout(block.dropout.p)
    return twin


def one_product_weight_grad(x, gy, out):
    """The weight gradient as a single x.t() @ gy, as before timemajor.weight_grad split it."""
    return torch.mm(x.t(), gy, out=out)


def patched(step, module, name, value):
    """Run `step` with module.name replaced by value (restored after every call)."""

    def run():
        old = getattr(module, name)
        setattr(module, name, value)
        try:
            step()
        finally:
            setattr(module, name, old)

    return run


PEAK_N = 2048  # the peak row times one PEAK_N x PEAK_N float32 matmul
PEAK_FLOPS = 2 * PEAK_N**3


def speed_rows(device, repeats):
    n, c, k, layers, L, B = 8, 64, 3, 8, 256, 32
    x, y = torch.randn(B, n, L, device=device), torch.randn(B, device=device)
    a = torch.randn(PEAK_N, PEAK_N, device=device)

    def mm():
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    ours = TimeMajorTCN(n, [c] * layers, k, 2, 0.2).to(device)
    seed = SeedTCN(n, c, k, layers, 0.2).to(device)
    peak_name, seed_name = (
        f"float32 matmul {PEAK_N}^2 (peak)",
        "seed recipe (pad both sides + trim, nn.Dropout, AdamW), fp32",
    )
    steps = {
        peak_name: mm,
        seed_name: step_fn(seed, x, y, False, device, True, tsconv_optimizer=False),
        "tsconv TCN, fp32": step_fn(ours, x, y, False, device, True),
        "tsconv TCN, blocks composed through autograd, fp32": step_fn(
            blocks_via_autograd(ours), x, y, False, device, True
        ),
        "tsconv TCN, bf16 autocast": step_fn(ours, x, y, True, device, True),
        "its convolutions alone: time-major matrix products, fp32": convs_only_step(
            ours, x, "rows"
        ),
        "the same as CausalConv1d's CPU route (im2col), fp32": convs_only_step(ours, x, "im2col"),
        "the same as conv1d on (N, C, L) memory, fp32": convs_only_step(ours, x, "conv1d"),
    }
    if device.type == "cuda":  # what `train.cuda_graphs` does in training: replay the step
        graphed = copy.deepcopy(ours).train()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.cuda.make_graphed_callables(graphed, (x,))
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        # the warning tsconv.train.graphed_steps silences too (see there)
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
        steps[f"tsconv TCN, fp32, as a CUDA graph (capture took {ms:.0f} ms)"] = step_fn(
            graphed, x, y, False, device, True
        )
    rounds = time_rounds(steps, repeats)
    times = {name: summary(t) for name, t in rounds.items()}
    peak = PEAK_FLOPS / times[peak_name]["median"] / 1e9
    flops = 3 * 2 * tcn_macs(n, c, k, layers, L) * B  # forward + backward ~ 3x forward
    rows, base = [[peak_name, "-", "-", "-", peak, 1.0, "-"]], times[seed_name]["median"]
    for name, t in times.items():
        if name == peak_name:
            continue
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
        f"Train step, TCN 8x64 k3, window 256, batch 32 on {device}, timed round-robin "
        f"({repeats} rounds after a warm-up); {machine()}",
        ["", "median ms", "min", "max", "GFLOP/s", "of peak", "vs seed recipe"],
        rows,
    ) + per_round_of_peak(rounds[peak_name], rounds["tsconv TCN, fp32"], flops)


def per_round_of_peak(matmul: list[float], step: list[float], flops: float) -> str:
    """The fp32 step's share of the matmul rate round by round: each round times the matmul
    and the step within a second of each other, so a slow spell of the shared machine that
    outlasts a round moves both sides of that round's ratio."""
    shares = [flops / s / (PEAK_FLOPS / m) for m, s in zip(matmul, step, strict=True)]
    q1, med, q3 = quartiles(shares)
    at_70 = sum(share >= 0.70 for share in shares)
    return (
        f"\nRound by round, tsconv TCN fp32 reached {med:.1%} of that round's matmul rate "
        f"(median; middle half {q1:.1%}-{q3:.1%}), 70% or more in {at_70} of {len(shares)} "
        "rounds.\n"
    )


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); one value is all three."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4)
    return q1, med, q3


def split_weight_grad_rows(rounds: int) -> str:
    """timemajor.weight_grad (two half-length products) against one product, as paired rounds:
    each round times a few steps of both, back to back, and the table gives the distribution of
    the per-round ratio. A slow spell of the shared machine then moves both sides of a ratio,
    where it moves a median of separately timed steps by several percent."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 8, 256), torch.randn(32)
    step = step_fn(TimeMajorTCN(8, [64] * 8, 3, 2, 0.2), x, y, False, torch.device("cpu"), True)
    sides = {"one product": patched(step, timemajor, "weight_grad", one_product_weight_grad)}
    sides["two halves (tsconv)"] = step
    ms = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            fn()  # untimed, as in timeit_interleaved
            t = timeit(fn, repeats=3, warmup=0)
            ms[name].append(t["median"] * 1e3)
    ratios = [a / b for a, b in zip(ms["one product"], ms["two halves (tsconv)"], strict=True)]
    q1, med, q3 = quartiles(ratios)
    faster = sum(r > 1 for r in ratios)
    rows = [[name, statistics.median(v), min(v), max(v)] for name, v in ms.items()]
    rows[1] += [f"{med:.3f}x (middle half {q1:.3f}-{q3:.3f}; faster in {faster} of {rounds})"]
    rows[0] += ["1"]
    return table(
        f"Weight gradients of the train step above (fp32): one product against two half-length "
        f"products, {rounds} paired rounds of 3 steps each; {machine()}",
        ["weight gradients", "median ms", "min", "max", "speedup per round (median)"],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    # Rounds are cheap (about 1.5 s for all rows) and the shared machine's slow spells move a
    # 5-round median by several percent.
    ap.add_argument("--step-rounds", type=int, default=15, help="round-robin rounds of steps")
    ap.add_argument("--paired-rounds", type=int, default=40, help="rounds of the split A/B")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(speed_rows(device, args.step_rounds))
    if device.type == "cpu":
        print(split_weight_grad_rows(args.paired_rounds))


if __name__ == "__main__":
    main()
