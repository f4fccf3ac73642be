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


# tsconv.engine.linear.HINGES and STEPS: (sign, knot) of each hinge max(sign * z - knot, 0)
# and each step 1{sign * z > knot}
HINGES = ((1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (-1.0, 1.0), (-1.0, 2.0), (-1.0, 0.0))
STEPS = ((1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (-1.0, 1.0), (-1.0, 2.0))


class Highway(nn.Module):
    """LSTNet's autoregressive component, extended: a linear map of the last `lags` bars of
    the input features plus a few fixed nonlinear terms of the last bar (hinges and steps of
    each feature, products of two), added to the network's output at every step.

    The network then nests a linear model over its whole reach (the ridge baseline's model
    class) and the simplest nonlinear ones, instead of having to rediscover them through ReLUs
    from a zero head, which takes more rows than a few years of daily bars hold. The weights
    are not trained: `set_ridge` puts in a ridge regression whose terms and penalty were chosen
    on the training rows (`tsconv.recipes.fit_span`), and the network learns what it leaves.
    Gradient steps on hundreds of lag weights would only fit noise the penalty kept out.
    """

    def __init__(self, in_features: int, lags: int):
        super().__init__()
        self.lags = lags
        # weight[0, f, k]: feature f of the bar lags - 1 - k back (a causal Conv1d's layout)
        self.register_buffer("weight", torch.zeros(1, in_features, lags))
        # the last bar's nonlinear terms (tsconv.engine.linear.bar_terms), z its features
        # clipped at +-clip: hinge[f, h] * max(sign_h * z_f - knot_h, 0), quad[i, j] * z_i z_j
        # (i <= j), step[f, h] * 1{sign_h * z_f > knot_h}, plus offset
        self.register_buffer("hinge", torch.zeros(in_features, len(HINGES)))
        self.register_buffer("step", torch.zeros(in_features, len(STEPS)))
        self.register_buffer("quad", torch.zeros(in_features, in_features))
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("penalty", torch.zeros(()))
        self.clip = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lag_part(x) + self.bar_part(x).unsqueeze(1)

    def lag_part(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, L): the linear map of the last `lags` bars."""
        # Sums in a fixed order of elementwise steps, feature by feature and lag by lag: unlike
        # a matrix product (MKL splits its sums by thread count on AMD CPUs) or a convolution
        # with a long kernel (an (N, F, L, lags) copy), a step's bits depend neither on the
        # thread count nor on the batch's shape, so folds in worker processes give the serial
        # run's bytes. The highway is a small share of a step's work.
        n_feat, length = x.shape[1], x.shape[-1]
        w = self.weight[0].to(x.dtype)  # (F, lags)
        terms = x[:, 0, None, :] * w[0, :, None]  # (N, lags, L): each lag's term
        for f in range(1, n_feat):
            terms = terms + x[:, f, None, :] * w[f, :, None]
        out = torch.zeros_like(terms[:, :1])
        for k in range(self.lags):
            lag = self.lags - 1 - k
            if lag < length:
                out[..., lag:] += terms[:, k : k + 1, : length - lag]
        return out

    def bar_part(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L): the last bar's nonlinear terms plus the offset."""
        # always computed (not only the terms whose weights are nonzero: no host sync)
        n_feat, length = x.shape[1], x.shape[-1]
        z = x.clamp(-self.clip, self.clip)
        quad, hinge, step = self.quad.to(x.dtype), self.hinge.to(x.dtype), self.step.to(x.dtype)
        bar = self.offset.to(x.dtype).expand(x.shape[0], length)
        for i in range(n_feat):
            zi = z[:, i]
            for j in range(i, n_feat):
                bar = bar + quad[i, j] * (zi * z[:, j])
            for h, (sign, knot) in enumerate(HINGES):
                bar = bar + hinge[i, h] * F.relu(sign * zi - knot)
            for h, (sign, knot) in enumerate(STEPS):
                bar = bar + step[i, h] * (sign * zi > knot).to(x.dtype)
        return bar

    @torch.no_grad()
    def set_ridge(
        self,
        coef: np.ndarray,
        penalty: float,
        hinge: np.ndarray | None = None,
        quad: np.ndarray | None = None,
        offset: float = 0.0,
        step: np.ndarray | None = None,
    ) -> None:
        """coef (lags, features): coef[j, f] multiplies feature f of the bar j steps back;
        hinge (features, len(HINGES)), step (features, len(STEPS)) and quad (features,
        features, upper triangle): the last bar's nonlinear terms' weights."""
        w = torch.as_tensor(np.asarray(coef, dtype=np.float32))
        self.weight.copy_(w.flip(0).T.unsqueeze(0))
        self.hinge.copy_(torch.as_tensor(np.zeros(self.hinge.shape) if hinge is None else hinge))
        self.quad.copy_(torch.as_tensor(np.zeros(self.quad.shape) if quad is None else quad))
        self.step.copy_(torch.as_tensor(np.zeros(self.step.shape) if step is None else step))
        self.offset.fill_(float(offset))
        self.penalty.fill_(float(penalty))

    def reach(self) -> int:
        """Bars back the fitted weights read: 0 when the ridge chose the zero forecast."""
        used = self.weight[0].abs().sum(0).flip(0).nonzero()
        if len(used):
            return int(used.max()) + 1
        return int(bool(self.quad.any() or self.hinge.any() or self.step.any()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # model.pt files written before the highway stopped training held a Conv1d's weight
        # and no second-order part; those written before the steps, no steps; those written
        # before the hinge down at 0 (the last), one hinge fewer
        if prefix + "conv.weight" in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "conv.weight")
            for name in ("hinge", "quad", "offset"):
                state_dict[prefix + name] = torch.zeros_like(getattr(self, name))
        if prefix + "weight" in state_dict and prefix + "step" not in state_dict:
            state_dict[prefix + "step"] = torch.zeros_like(self.step)
        hinge = state_dict.get(prefix + "hinge")
        if hinge is not None and hinge.shape[-1] < self.hinge.shape[-1]:
            state_dict[prefix + "hinge"] = torch.cat(
                [hinge, hinge.new_zeros(*hinge.shape[:-1], self.hinge.shape[-1] - hinge.shape[-1])],
                -1,
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ForecastModel(nn.Module):
    """What tsconv asks of a model: (N, features, L) -> (N, 1, L), a forecast at every step
    from that step and the ones before it; how many steps one forecast sees; its highway.

    Training reads `highway` (fitted before training, then fixed) and prediction reads
    `receptive_field` (how much history a forecast needs)."""

    highway: Highway | None

    @property
    def receptive_field(self) -> int:
        """Exact number of input steps that can influence one output step."""
        raise NotImplementedError


def maybe_weight_norm(conv: nn.Conv1d, enabled: bool) -> nn.Conv1d:
    if not enabled:
        return conv
    conv = nn.utils.parametrizations.weight_norm(conv)
    conv.parametrizations.weight[0] = WeightNorm(0)  # the same parameters, guarded
    return conv


class WeightNorm(nn.utils.parametrizations._WeightNorm):
    """Weight norm, w = g v / |v| per output channel, guarded against a vanishing direction.

    A channel whose output the ReLU after it never passes gets no gradient, and AdamW's
    decoupled decay then shrinks its v by lr x weight_decay every step: after a few thousand
    steps (a large panel's fold: 4,000 steps of `quick` at 500 tickers) its squares underflow
    float32, |v| is 0, and g v / 0 is NaN, which ends the fit. Below `TINY_NORM` the channel is
    g v / TINY_NORM instead (continuous at the threshold, shrinking with v); above it the
    result is torch's own, bit for bit (the guarded channels' v go to the kernel as ones)."""

    TINY_NORM = 1e-12

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        tiny = torch.norm_except_dim(weight_v, 2, self.dim) < self.TINY_NORM
        safe_v = torch.where(tiny, torch.ones_like(weight_v), weight_v)
        w = torch._weight_norm(safe_v, weight_g, self.dim)
        return torch.where(tiny, weight_v * (weight_g / self.TINY_NORM), w)
