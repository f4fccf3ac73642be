"""The pieces every model shares: a causal convolution, a zero head, LSTNet's highway, and
`ForecastModel`, what the rest of tsconv asks of a model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Conv1d):
    """Conv1d with (kernel_size - 1) * dilation zeros on the left and none on the right: the
    output at step t sees inputs at steps <= t only, and has the input's length."""

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
        xp = F.pad(x, (self.left_pad, 0)) if self.left_pad else x
        if x.device.type != "cpu":
            return super().forward(xp)
        # On CPU as windows times weights (im2col), for reproducibility rather than speed, and so
        # here and not in tsconv.models.fast: oneDNN's convolution splits its sums into
        # per-thread chunks (the weight gradient's, and for some shapes the output's), so its
        # bits change with the thread count; a matrix product's do not, and then folds in
        # parallel processes (fewer threads each) give a serial run's exact numbers
        # (tests/test_parallel.py). Every CPU run of every model computes its convolutions so.
        k, d, length = self.kernel_size[0], self.dilation[0], x.shape[-1]
        cols = torch.stack([xp[..., j * d : j * d + length] for j in range(k)], dim=-1)
        y = torch.einsum("nclk,ock->nol", cols, self.weight)
        return y if self.bias is None else y + self.bias[:, None]


def zero_head(in_channels: int) -> CausalConv1d:
    """1x1 output convolution initialised to zero, so an untrained model is the zero forecast.

    Next-step returns are mostly noise, and zero is the forecast to beat; a random head starts
    worse than that, and early stopping on noisy returns often stops before it is undone.
    Gradients reach the body from the second step on.
    """
    head = CausalConv1d(in_channels, 1, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class Highway(nn.Module):
    """LSTNet's autoregressive component: a linear map of the last `lags` bars of the input
    features, added to the network's output at every step.

    The network then nests a linear AR model (the ridge baseline's model class) instead of
    having to rediscover it through ReLUs from a zero head. `set_ridge` puts in a ridge solution
    (`tsconv.recipes.fit_span` fits one on the training rows before training starts) and its
    penalty, which `penalty_loss` adds to the training loss, so gradient steps keep the ridge's
    shrinkage.
    """

    def __init__(self, in_features: int, lags: int):
        super().__init__()
        self.lags = lags
        self.conv = CausalConv1d(in_features, 1, lags, bias=False)  # the head has the bias
        nn.init.zeros_(self.conv.weight)
        self.register_buffer("penalty", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    @torch.no_grad()
    def set_ridge(self, coef: np.ndarray, penalty: float) -> None:
        """coef (lags, features): coef[j, f] multiplies feature f of the bar j steps back."""
        w = torch.as_tensor(np.asarray(coef, dtype=np.float32))
        self.conv.weight.copy_(w.flip(0).T.unsqueeze(0))  # tap k reads lag lags - 1 - k
        self.penalty.fill_(float(penalty))

    def penalty_loss(self) -> torch.Tensor:
        return self.penalty * self.conv.weight.pow(2).sum()


class ForecastModel(nn.Module):
    """What tsconv asks of a model: (N, features, L) -> (N, 1, L), a forecast at every step
    from that step and the ones before it; how many steps one forecast sees; its highway.

    Training reads `highway` (its ridge start, its own penalty, no weight decay) and prediction
    reads `receptive_field` (how much history a forecast needs)."""

    highway: Highway | None

    @property
    def receptive_field(self) -> int:
        """Exact number of input steps that can influence one output step."""
        raise NotImplementedError


def maybe_weight_norm(conv: nn.Conv1d, enabled: bool) -> nn.Conv1d:
    return nn.utils.parametrizations.weight_norm(conv) if enabled else conv
