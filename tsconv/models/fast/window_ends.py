"""A TCN's output at the last position of many overlapping windows, each as if it were the
model's whole input, from one dense pass: for prediction when the receptive field is longer than
the window (tsconv.engine.predict). A drop-in for a pass per window, checked against it in
tests/test_train.py.
"""

from __future__ import annotations

import torch
from torch import nn

from tsconv.models.tcn import TCN, tcn_receptive_field


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


def conv_at(conv: nn.Conv1d, values: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """A convolution's output at some positions, (B, P, C_out), from its input at the
    positions it reads, `values` (B, V, C_in): `taps` (P, k) holds, oldest tap first, each
    position's input indices into `values`, or V for a position before the window (zero)."""
    w = conv.weight
    padded = torch.cat([values, values.new_zeros(len(values), 1, values.shape[2])], 1)
    x = padded.index_select(1, taps.flatten()).view(len(values), len(taps), -1)  # tap-major
    weight = w.permute(0, 2, 1).reshape(w.shape[0], -1).to(x.dtype)  # (C_out, k * C_in)
    y = torch.matmul(x, weight.t())
    return y if conv.bias is None else y + conv.bias.to(y.dtype)


def tap_index(at: list[int], source: list[int], k: int, d: int, device) -> torch.Tensor:
    """`conv_at`'s taps: for each position in `at`, where its k inputs sit in `source`."""
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
        a1 = conv_at(block.conv1, values, tap_index(step["conv1"], below, k, d, dev)).relu_()
        a2 = conv_at(block.conv2, a1, tap_index(own, step["conv1"], k, d, dev)).relu_()
        res = values[:, [below.index(p) for p in own]]
        if block.downsample is not None:
            res = conv_at(block.downsample, res, torch.arange(len(own), device=dev)[:, None])
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
