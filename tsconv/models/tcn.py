"""Temporal Convolutional Network (Bai, Kolter & Koltun, 2018) that predicts at every step.

Block i: two dilated causal convolutions (dilation base**i) with weight norm, ReLU and dropout,
plus a residual path (1x1 convolution where the channel count changes). The head is a 1x1
convolution, so (N, C, L) -> (N, 1, L): a prediction at every step, "last step only" is a slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tsconv.models.fast.timemajor import (
    TemporalBlockFunction,
    TorchEnds,
    compute_dtype,
    from_rows,
    to_rows,
)
from tsconv.models.layers import (
    CausalConv1d,
    Dropout,
    Highway,
    keep_mask,
    maybe_weight_norm,
    zero_head,
)


class TemporalBlock(nn.Module):
    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        dilation: int,
        dropout: float,
        weight_norm: bool = True,
    ):
        super().__init__()
        self.conv1 = maybe_weight_norm(
            CausalConv1d(c_in, c_out, kernel_size, dilation), weight_norm
        )
        self.conv2 = maybe_weight_norm(
            CausalConv1d(c_out, c_out, kernel_size, dilation), weight_norm
        )
        self.relu = nn.ReLU()
        self.dropout = Dropout(dropout)
        self.downsample = CausalConv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile fuses the composed modules itself, and torch 2.11's compiler got a
        # parameter gradient of the hand-written backward wrong (seen on an H200 host).
        compiling = torch.compiler.is_compiling()
        if x.device.type == "cpu" and self.dropout.p < 1.0 and not compiling:
            return self.forward_rows(x)
        return self.forward_modules(x)

    def forward_modules(self, x: torch.Tensor) -> torch.Tensor:
        """The block as its modules compose it: the reference, and the route on GPUs."""
        out = self.dropout(self.relu(self.conv1(x)))
        out = self.dropout(self.relu(self.conv2(out)))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The same block as one time-major CPU kernel (timemajor.TemporalBlockFunction)."""
        n, c1, c2 = x.shape[0], self.conv1, self.conv2
        down = self.downsample
        rows, *params = compute_dtype(
            to_rows(x),
            *(c1.weight, c1.bias, c2.weight, c2.bias),
            down.weight if down else None,
            down.bias if down else None,
        )
        p = self.dropout.p if self.training else 0.0
        ends, scale = block_ends((len(rows), c2.out_channels), p, rows.dtype)
        out = TemporalBlockFunction.apply(rows, *params, ends, c1.dilation[0] * n, scale)
        return from_rows(out, n)


def block_ends(shape: tuple[int, int], p: float, dtype: torch.dtype):
    """(ends, dropout scale) for TemporalBlockFunction, with two dropout masks of `shape`
    (rows, channels) when p > 0."""
    if p == 0:
        return TorchEnds(), 1.0
    # Both masks in one draw: a draw's fixed cost is about that of 30,000 elements.
    keep, scale = keep_mask(2 * shape[0] * shape[1], p, dtype)
    return TorchEnds(*keep.view(2, *shape).unbind(0)), scale


class TCN(nn.Module):
    def __init__(
        self,
        in_features: int,
        channels: list[int],
        kernel_size: int = 3,
        dilation_base: int = 2,
        dropout: float = 0.2,
        weight_norm: bool = True,
        highway_lags: int = 0,
    ):
        super().__init__()
        self.kernel_size, self.dilation_base = kernel_size, dilation_base
        blocks, c_in = [], in_features
        for i, c_out in enumerate(channels):
            blocks.append(
                TemporalBlock(c_in, c_out, kernel_size, dilation_base**i, dropout, weight_norm)
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = zero_head(c_in)
        self.highway = Highway(in_features, highway_lags) if highway_lags else None

    @property
    def receptive_field(self) -> int:
        rf = tcn_receptive_field(self.kernel_size, len(self.blocks), self.dilation_base)
        return max(rf, self.highway.lags) if self.highway is not None else rf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_body(x)
        return out if self.highway is None else out + self.highway(x)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)
        if h.device.type != "cpu":
            return self.head(h)
        # The blocks leave time-major rows on CPU; the 1x1 head is a product over them, which
        # avoids reordering the last activation (and its gradient) for a convolution.
        rows, w, b = compute_dtype(to_rows(h), self.head.weight[:, :, 0], self.head.bias)
        return from_rows(F.linear(rows, w, b), len(x))


def tcn_receptive_field(
    kernel_size: int, layers: int, dilation_base: int = 2, convs_per_block: int = 2
) -> int:
    """1 + convs_per_block * (k - 1) * sum(base**i). Two convolutions per block: the seed's
    511 for 8 blocks of kernel 3 counts one; the true figure is 1021."""
    return 1 + convs_per_block * (kernel_size - 1) * sum(dilation_base**i for i in range(layers))


def window_end_plan(model: TCN, window: int) -> list[dict[str, list[int]]] | None:
    """Which window positions each block must compute itself to give the output at the last
    position of a `window`-bar window, bottom block first; None when the receptive field fits
    the window (then the output is the dense one) or the highway reaches past the window.

    Block l's output at window position j equals the same block's output in one dense pass
    over the series when j >= rf_l - 1 (rf_l: the receptive field through block l): every
    input it depends on lies inside the window and no convolution below it reads its zero
    padding. Only positions before that depend on where the window starts. Walking down from
    the last position, a block's own positions are those below rf_l - 1 that a block above
    reads; they need its first convolution at `conv1` positions, which read the block below
    at `below` positions. Entries: "own" (block outputs computed here), "conv1", "below"."""
    k, base = model.kernel_size, model.dilation_base
    reach = [tcn_receptive_field(k, i + 1, base) for i in range(len(model.blocks))]
    if reach[-1] <= window or (model.highway is not None and model.highway.lags > window):
        return None
    wanted, plan = {window - 1}, []
    for i in reversed(range(len(model.blocks))):
        d = base**i
        own = sorted(p for p in wanted if p < reach[i] - 1)
        conv1 = sorted(q for q in {p - m * d for p in own for m in range(k)} if q >= 0)
        below = sorted(q for q in {c - m * d for c in conv1 for m in range(k)} | set(own) if q >= 0)
        plan.append({"own": own, "conv1": conv1, "below": below})
        wanted = set(below)
    return plan[::-1]


def _conv_at(conv: nn.Conv1d, values: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """A convolution's output at some positions, (B, P, C_out), from its input at the
    positions it reads, `values` (B, V, C_in): `taps` (P, k) holds, oldest tap first, each
    position's input indices into `values`, or V for a position before the window (zero)."""
    w = conv.weight
    padded = torch.cat([values, values.new_zeros(len(values), 1, values.shape[2])], 1)
    x = padded.index_select(1, taps.flatten()).view(len(values), len(taps), -1)  # tap-major
    weight = w.permute(0, 2, 1).reshape(w.shape[0], -1).to(x.dtype)  # (C_out, k * C_in)
    y = torch.matmul(x, weight.t())
    return y if conv.bias is None else y + conv.bias.to(y.dtype)


def _tap_index(at: list[int], source: list[int], k: int, d: int, device) -> torch.Tensor:
    """`_conv_at`'s taps: for each position in `at`, where its k inputs sit in `source`."""
    where = {p: i for i, p in enumerate(source)}
    return torch.tensor(
        [[where.get(p - (k - 1 - i) * d, len(source)) for i in range(k)] for p in at],
        dtype=torch.int64,
        device=device,
    )


def window_end_outputs(
    model: TCN, x: torch.Tensor, offsets: torch.Tensor, window: int, plan: list[dict]
) -> torch.Tensor:
    """The model's output at the last position of windows of `window` bars, as if each window
    were its own input (zero padding and all), without a pass per window.

    `x` (B, F, L) holds B stretches of series; in each, windows start at positions `offsets`
    (so each ends at offset + window - 1 < L). Returns (B * len(offsets),) outputs, stretch by
    stretch. One dense pass over `x` gives every value that does not depend on where a window
    starts (`window_end_plan`); the few that do are computed for all windows at once, a block
    at a time, as (windows, channels) products."""
    dense = [x]
    for block in model.blocks:
        dense.append(block(dense[-1]))

    def gather(level: int, positions: list[int]) -> torch.Tensor:
        """(B * windows, len(positions), C): level's dense values at offset + p."""
        at = offsets[:, None] + torch.tensor(positions, device=offsets.device)[None, :]
        rows = dense[level].transpose(1, 2).index_select(1, at.flatten())  # (B, W * P, C)
        return rows.reshape(len(x) * len(offsets), len(positions), -1)

    prev, prev_own = None, []
    for i, (block, step) in enumerate(zip(model.blocks, plan, strict=True)):
        k, d = block.conv1.kernel_size[0], block.conv1.dilation[0]
        below, own = step["below"], step["own"]
        if not own:  # every position the blocks above read is the dense one
            prev, prev_own = None, []
            continue
        values = gather(i, below)
        if prev_own:  # the positions the block below computed for these windows
            at = torch.tensor([below.index(p) for p in prev_own], device=values.device)
            values = values.index_copy(1, at, prev.to(values.dtype))
        dev = values.device
        a1 = _conv_at(block.conv1, values, _tap_index(step["conv1"], below, k, d, dev)).relu_()
        a2 = _conv_at(block.conv2, a1, _tap_index(own, step["conv1"], k, d, dev)).relu_()
        res = values[:, [below.index(p) for p in own]]
        if block.downsample is not None:
            res = _conv_at(block.downsample, res, torch.arange(len(own), device=dev)[:, None])
        prev, prev_own = torch.relu(a2 + res), own
    last = window - 1
    if last in prev_own:
        top = prev[:, prev_own.index(last)]
    else:
        top = gather(len(model.blocks), [last])[:, 0]
    pred = top @ model.head.weight[:, :, 0].t().to(top.dtype) + model.head.bias.to(top.dtype)
    if model.highway is not None:
        pred = pred + model.highway(x)[:, 0, offsets + last].reshape(-1, 1)
    return pred[:, 0]
