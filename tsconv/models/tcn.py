"""Temporal Convolutional Network (Bai, Kolter & Koltun, 2018) that predicts at every step.

Block i: two dilated causal convolutions (dilation base**i) with weight norm, ReLU and dropout,
plus a residual path (1x1 convolution where the channel count changes). The head is a 1x1
convolution, so (N, C, L) -> (N, 1, L): a prediction at every step, "last step only" is a slice.
The reference: on CPU, `tsconv.models.fast.tcn.TimeMajorTCN` computes the same function faster.
"""

from __future__ import annotations

import torch
from torch import nn

from tsconv.models.layers import CausalConv1d, ForecastModel, Highway, maybe_weight_norm, zero_head


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
        self.dropout = nn.Dropout(dropout)
        self.downsample = CausalConv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.relu(self.conv1(x)))
        out = self.dropout(self.relu(self.conv2(out)))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TCN(ForecastModel):
    # The block class: a subclass may put in a drop-in (tsconv.models.fast.tcn).
    Block = TemporalBlock

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
                self.Block(c_in, c_out, kernel_size, dilation_base**i, dropout, weight_norm)
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
        out = self.head(self.blocks(x))
        return out if self.highway is None else out + self.highway(x)


def tcn_receptive_field(
    kernel_size: int, layers: int, dilation_base: int = 2, convs_per_block: int = 2
) -> int:
    """1 + convs_per_block * (k - 1) * sum(base**i): each block's dilated convolutions reach
    (k - 1) * base**i steps further back, and a block has two of them."""
    return 1 + convs_per_block * (kernel_size - 1) * sum(dilation_base**i for i in range(layers))
