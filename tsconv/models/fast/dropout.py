"""Dropout with 16 random bits per element from numpy's SFC64, for CPU training.

On CPU, `nn.Dropout` draws one Bernoulli sample per element through a scalar generator, which
costs more than the convolutions around it. Here each element gets 16 random bits, so the keep
probability is quantised to 1/65536 and the scale uses the quantised value (the output stays
unbiased). The bits come from numpy's SFC64, four lanes per 64-bit draw, keyed from torch's
generator, so `torch.manual_seed` fixes the masks and every CPU machine draws the same ones.
Elsewhere `Dropout` is `nn.Dropout` (on GPUs PyTorch's fused kernel).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tsconv.models.fast.route import CPURoute

LANES = 4  # int16 lanes per int64 draw


class Dropout(CPURoute, nn.Dropout):
    """A drop-in for `nn.Dropout`: the same semantics, its masks drawn by `dropout_mask` on CPU."""

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * dropout_mask(x, self.p)


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Keep mask scaled by 1 / keep-probability, shaped and typed like `x`."""
    keep, scale = keep_mask(x.numel(), p, x.dtype)
    # In x's memory order when x is dense (e.g. time-major or channels-last), so `x * mask`
    # runs as one flat pass; `empty_like` on the meta device gives those strides, or
    # contiguous ones for a strided view, without allocating.
    strides = torch.empty_like(x, device="meta").stride()
    return keep.mul_(scale).as_strided(x.shape, strides)


def keep_mask(n: int, p: float, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """n independent 0/1 keep flags with P(keep) = 1 - p quantised to 1/65536, and 1 / P(keep)
    (0 when p is 1: nothing is kept).

    The flags are made as float32 from numpy's bits (int16 -> float, then an in-place compare,
    exact for every int16): on CPU that is faster than comparing into a bool tensor and
    converting it. Other dtypes get a converted copy (bf16 cannot hold every int16)."""
    drop = drop_threshold(p)
    keep = torch.empty(n).copy_(random_lanes(n)).ge_(drop - 32768)
    return keep.to(dtype), keep_scale(drop)


def drop_threshold(p: float) -> int:
    """Drop an element when its 16 random bits (as unsigned) are below this: P(drop) = p
    quantised to 1/65536, at most 65535/65536 for any p < 1 (so 1 / P(keep) stays finite),
    and every element at p = 1."""
    return 65536 if p >= 1.0 else min(round(p * 65536), 65535)


def keep_scale(drop: int) -> float:
    """Dropout's 1 / P(keep) for the threshold `drop_threshold` gives; 0 when all are dropped."""
    return 65536 / (65536 - drop) if drop < 65536 else 0.0


def random_lanes(n: int) -> torch.Tensor:
    """n uniform random int16, four per 64-bit SFC64 draw, seeded from torch's generator."""
    seed = int(torch.randint(0, 2**63 - 1, ()))
    bits = np.random.SFC64(seed).random_raw(-(-n // LANES))
    return torch.from_numpy(bits.view(np.int16)[:n])
