"""Causal convolution: the output at step t sees inputs at steps <= t only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Conv1d):
    """Conv1d with (kernel_size - 1) * dilation zeros on the left and none on the right.

    The seed pads both sides and trims the right, computing outputs only to throw them away;
    padding the left only keeps the length and does no wasted work.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, dilation=dilation, padding=0, bias=bias
        )
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)) if self.left_pad else x)


def maybe_weight_norm(conv: nn.Conv1d, enabled: bool) -> nn.Conv1d:
    return nn.utils.parametrizations.weight_norm(conv) if enabled else conv
