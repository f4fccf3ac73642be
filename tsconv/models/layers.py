"""Causal convolution: the output at step t sees inputs at steps <= t only."""

from __future__ import annotations

import numpy as np
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
        if x.device.type != "cpu":
            return super().forward(F.pad(x, (self.left_pad, 0)) if self.left_pad else x)
        # On CPU as windows times weights (im2col). oneDNN's convolution splits its sums into
        # per-thread chunks (the weight gradient's, and for some shapes the output's), so its
        # bits change with the thread count; a matrix product's do not, and then folds in
        # parallel processes (fewer threads each) give a serial run's exact numbers
        # (tests/test_parallel.py). As fast as oneDNN to train; up to 2x slower to predict.
        k, d, length = self.kernel_size[0], self.dilation[0], x.shape[-1]
        xp = F.pad(x, (self.left_pad, 0)) if self.left_pad else x
        cols = torch.stack([xp[..., j * d : j * d + length] for j in range(k)], dim=-1)
        y = torch.einsum("nclk,ock->nol", cols, self.weight)
        return y if self.bias is None else y + self.bias[:, None]


def zero_head(in_channels: int) -> CausalConv1d:
    """1x1 output convolution initialised to zero, so an untrained model is the zero forecast.

    Next-step returns are mostly noise, and zero is the forecast to beat; a random head starts
    worse than that, and early stopping on noisy returns often stops before it is undone
    (on the sample, validation MSE 0.340 with a random head against 0.332 with this one,
    `scripts/bench_train.py`). Gradients reach the body from the second step on.
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
    (`tsconv.experiment` fits one on the training rows before training starts) and its penalty,
    which `penalty_loss` adds to the training loss, so gradient steps keep the ridge's shrinkage.
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


def maybe_weight_norm(conv: nn.Conv1d, enabled: bool) -> nn.Conv1d:
    return nn.utils.parametrizations.weight_norm(conv) if enabled else conv


class Dropout(nn.Dropout):
    """Element-wise dropout with the same semantics as `nn.Dropout`, cheaper on CPU.

    On CPU, `nn.Dropout` draws one Bernoulli sample per element through a scalar generator:
    about 4 ms for a 32 x 64 x 256 activation, a third of a TCN train step, more than the
    convolutions around it. Here each element gets 16 random bits, so the keep probability is
    quantised to 1/65536 and the scale uses the quantised value (the output stays unbiased).
    The bits come from numpy's SFC64 (four lanes per 64-bit draw, 2.5x faster than torch's CPU
    mt19937), keyed from torch's generator, so `torch.manual_seed` fixes the masks and every
    CPU machine draws the same ones. CUDA keeps PyTorch's fused kernel.
    """

    LANES = 4  # int16 lanes per int64 draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p == 1.0:
            return F.dropout(x, self.p, True, self.inplace)
        return x * dropout_mask(x, self.p)


def keep_mask(n: int, p: float, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """n independent 0/1 keep flags with P(keep) = 1 - p quantised to 1/65536, and 1 / P(keep).

    The flags are made as float32 from numpy's bits (int16 -> float, then an in-place compare,
    exact for every int16): on CPU that is several times faster than comparing into a bool
    tensor and converting it. Other dtypes get a converted copy (bf16 cannot hold every int16)."""
    drop = drop_threshold(p)
    keep = torch.empty(n).copy_(random_lanes(n)).ge_(drop - 32768)
    return keep.to(dtype), keep_scale(drop)


def drop_threshold(p: float) -> int:
    """Drop an element when its 16 random bits are below this: P(drop) = p quantised to
    1/65536 (at most 65535/65536, so that 1 / P(keep) stays finite for any p < 1)."""
    return min(round(p * 65536), 65535)


def keep_scale(drop: int) -> float:
    """Dropout's 1 / P(keep) for the threshold `drop_threshold` gives."""
    return 65536 / (65536 - drop)


def random_lanes(n: int) -> torch.Tensor:
    """n uniform random int16, four per 64-bit SFC64 draw, seeded from torch's generator.

    Under torch.compile they come from torch.randint instead, which the compiler generates
    in its own kernels: numpy calls (and in-place `random_`) break the compiled graph."""
    if torch.compiler.is_compiling():
        return torch.randint(-(2**15), 2**15, (n,), dtype=torch.int16)
    seed = int(torch.randint(0, 2**63 - 1, ()))
    bits = np.random.SFC64(seed).random_raw(-(-n // Dropout.LANES))
    return torch.from_numpy(bits.view(np.int16)[:n])


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Keep mask scaled by 1 / keep-probability, shaped and typed like `x`."""
    keep, scale = keep_mask(x.numel(), p, x.dtype)
    # In x's memory order when x is dense (e.g. time-major or channels-last), so `x * mask`
    # runs as one flat pass; `empty_like` on the meta device gives those strides, or
    # contiguous ones for a strided view, without allocating.
    strides = torch.empty_like(x, device="meta").stride()
    return keep.mul_(scale).as_strided(x.shape, strides)
