"""Temporal Convolutional Network (Bai, Kolter & Koltun, 2018) that predicts at every step.

Block i: two dilated causal convolutions (dilation base**i) with weight norm, ReLU and dropout,
plus a residual path (1x1 convolution where the channel count changes). The head is a 1x1
convolution, so (N, C, L) -> (N, 1, L): a prediction at every step, "last step only" is a slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tsconv.models import fused_cpu
from tsconv.models.layers import (
    CausalConv1d,
    Dropout,
    Highway,
    keep_mask,
    maybe_weight_norm,
    zero_head,
)
from tsconv.models.timemajor import (
    KernelEnds,
    TemporalBlockFunction,
    TorchEnds,
    compute_dtype,
    from_rows,
    to_rows,
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
    if dtype == torch.float32 and fused_cpu.available():
        # Bias, ReLU, dropout (masks made in the same pass) and residual: one C kernel.
        key, drop = (fused_cpu.new_key(), fused_cpu.drop_threshold(p)) if p else (0, 0)
        return KernelEnds(drop, key), fused_cpu.keep_scale(drop)
    if p == 0:
        return TorchEnds(), 1.0
    n = shape[0] * shape[1]
    if not fused_cpu.available():
        # Both masks in one draw: a draw's fixed cost is about that of 30,000 elements.
        keep, scale = keep_mask(2 * n, p, dtype)
        return TorchEnds(*keep.view(2, *shape).unbind(0)), scale
    # Other dtypes (bf16 autocast) get the masks float32 would get, as tensors.
    key, drop = fused_cpu.new_key(), fused_cpu.drop_threshold(p)
    keeps = (fused_cpu.keep_flags(n, drop, key, i).to(dtype).view(shape) for i in (0, 1))
    return TorchEnds(*keeps), fused_cpu.keep_scale(drop)


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
