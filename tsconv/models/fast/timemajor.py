"""Causal convolutions as matrix products over time-major rows, for CPU training.

With activations stored time-major, (L, N, C) flattened to (L*N, C) rows, the input at lag s*d
for every row is the same matrix shifted by s*d*N rows. A causal convolution with k taps is
then k products of contiguous row blocks with (C_in, C_out) weight slices, accumulated in
place: no padding, no copies, no reorders. The zeros a causal convolution pads on the left are
simply the rows a shifted product does not reach.

`TemporalBlockFunction` runs a whole TCN block (two convolutions, ReLU, dropout, residual) with
a hand-written backward, which lets it skip what autograd would do pass by pass over memory:
ReLU and dropout share one saved tensor (a kept, positive activation is exactly a non-zero
one), the dropout scale is folded into the convolution weights (ReLU commutes with a positive
scale), and the residual gradient is the accumulator the first convolution's input gradient is
added into. The end of each convolution (bias, ReLU, dropout, and for the second the residual
and last ReLU) is a few in-place torch operations (`TorchEnds`). It is checked against the
block composed from its modules, against textbook inverted dropout with the same masks, and by
gradcheck (`tests/test_timemajor.py`); `tsconv.models.fast.tcn` puts it into the TCN.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def to_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, L) -> (L*N, C) time-major rows; a view when x is already stored that way."""
    n, c, length = x.shape
    return x.permute(2, 0, 1).reshape(length * n, c)


def from_rows(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(L*N, C) time-major rows -> an (N, C, L) view of the same memory."""
    return rows.view(-1, batch, rows.shape[1]).permute(1, 2, 0)


def taps(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, k) -> (k, C_in, C_out), tap k-1-s applies to the input s*dilation back."""
    return weight.permute(2, 1, 0).contiguous()


def compute_dtype(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Cast to CPU autocast's dtype when it is on: the time-major kernels mix in-place products,
    which autocast does not cast."""
    if not torch.is_autocast_enabled("cpu"):
        return list(tensors)
    dtype = torch.get_autocast_dtype("cpu")
    return [t.to(dtype) if t is not None else None for t in tensors]


def conv_rows(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, shift: int):
    """Causal convolution of time-major rows `x` with taps `w`; shift = dilation * batch."""
    k = w.shape[0]
    y = torch.addmm(bias, x, w[k - 1]) if bias is not None else x @ w[k - 1]
    for s in range(1, k):
        r = s * shift
        if r >= len(x):
            break
        y[r:].addmm_(x[:-r], w[k - 1 - s])
    return y


def conv_rows_backward(gy, x, w, shift, gx=None, need_x=True):
    """Gradients of `conv_rows` for input, taps and bias. When `gx` is given, the input
    gradient is accumulated into it (in place) instead of a new tensor."""
    k = w.shape[0]
    if need_x:
        gx = torch.mm(gy, w[k - 1].t()) if gx is None else gx.addmm_(gy, w[k - 1].t())
    gw = torch.zeros_like(w) if len(x) < (k - 1) * shift + 1 else torch.empty_like(w)
    weight_grad(x, gy, gw[k - 1])
    for s in range(1, k):
        r = s * shift
        if r >= len(x):
            break
        if need_x:
            gx[:-r].addmm_(gy[r:], w[k - 1 - s].t())
        weight_grad(x[:-r], gy[r:], gw[k - 1 - s])
    return gx, gw.permute(2, 1, 0), gy.sum(0)


# Products smaller than this keep the single call: the split costs a few operations.
SPLIT_MIN_MACS = 2**24


def weight_grad(x: torch.Tensor, gy: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x.t() @ gy into `out`, as one batched product over the two halves of the rows, summed.

    The product is (C, rows) by (rows, C): a tiny output and a long reduction. Batched, each
    thread presumably reduces its own half of the rows and reads each input once. Small
    products keep the single call, and so do bf16 ones, which would be rounded to bf16 once
    more, per half."""
    n = len(x)
    small = n * x.shape[1] * gy.shape[1] < SPLIT_MIN_MACS
    if n % 2 or small or x.dtype not in (torch.float32, torch.float64):
        return torch.mm(x.t(), gy, out=out)
    halves = torch.bmm(x.reshape(2, n // 2, -1).transpose(1, 2), gy.reshape(2, n // 2, -1))
    return torch.sum(halves, 0, out=out)


class TorchEnds:
    """How TemporalBlockFunction ends its two convolutions, in torch operations: bias, ReLU and
    dropout with the given 0/1 keep masks (None: no dropout) without dropout's scale, then the
    residual and the last ReLU. The activations themselves serve as the backward's masks."""

    def __init__(self, keep1: torch.Tensor | None = None, keep2: torch.Tensor | None = None):
        self.keeps = (keep1, keep2)

    def end(self, y: torch.Tensor, i: int, bias: torch.Tensor | None) -> torch.Tensor:
        """dropout_i(relu(y + bias)), in place."""
        if bias is not None:
            y.add_(bias)
        y.clamp_min_(0)
        return y if self.keeps[i] is None else y.mul_(self.keeps[i])

    def end_block(self, y, bias, residual):
        """(relu(end(y) + residual), what `grads` needs)."""
        a2 = self.end(y, 1, bias)
        out = torch.add(a2, residual).clamp_min_(0)
        return out, (a2, out)

    @staticmethod
    def grads(gout: torch.Tensor, a2: torch.Tensor, out: torch.Tensor):
        """(gradient below the last ReLU, gradient of the second convolution's output)."""
        g = torch.ops.aten.threshold_backward(gout, out, 0)
        return g, torch.ops.aten.threshold_backward(g, a2, 0)


class TemporalBlockFunction(torch.autograd.Function):
    """relu(dropout(relu(conv2(dropout(relu(conv1(x)))))) + residual(x)) over time-major rows.

    `ends` (TorchEnds) applies each convolution's bias, ReLU and dropout (with its
    masks, without its scale), the residual and the last ReLU, and the gradients through them.
    `scale` is dropout's 1 / (1 - p). ReLU commutes with a positive scale, so it multiplies
    the (small) convolution weights and biases instead of the (large) activations; a dropped
    ReLU output is then a plain zero, and the saved first activation `a1` doubles as the mask
    of both ReLU and dropout in the backward pass (the second's are kept by `ends`)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, wd, bd, ends, shift, scale=1.0):
        t1, t2 = taps(w1), taps(w2)
        if scale != 1.0:
            t1.mul_(scale), t2.mul_(scale)
            b1, b2 = (b * scale if b is not None else None for b in (b1, b2))
        a1 = ends.end(conv_rows(x, t1, None, shift), 0, b1)
        td = taps(wd) if wd is not None else None
        res = x if td is None else conv_rows(x, td, bd, 0)
        out, saved = ends.end_block(conv_rows(a1, t2, None, shift), b2, res)
        ctx.save_for_backward(x, a1, t1, t2, td, *saved)
        ctx.shift, ctx.scale, ctx.ends = shift, scale, ends
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, a1, t1, t2, td, *saved = ctx.saved_tensors
        g, g2 = ctx.ends.grads(gout, *saved)
        ga1, gw2, gb2 = conv_rows_backward(g2, a1, t2, ctx.shift)
        g1 = torch.ops.aten.threshold_backward.grad_input(ga1, a1, 0, grad_input=ga1)
        gwd = gbd = None
        if td is None:
            gx = g if ctx.needs_input_grad[0] else None
        else:
            gx, gwd, gbd = conv_rows_backward(g, x, td, 0, need_x=ctx.needs_input_grad[0])
        gx, gw1, gb1 = conv_rows_backward(g1, x, t1, ctx.shift, gx, ctx.needs_input_grad[0])
        if ctx.scale != 1.0:  # d(scale * w) / dw
            for grad in (gw1, gb1, gw2, gb2):
                grad.mul_(ctx.scale)
        grads = (gx, gw1, gb1, gw2, gb2, gwd, gbd)
        needs = ctx.needs_input_grad[: len(grads)]
        return *(g if need else None for g, need in zip(grads, needs, strict=True)), *[None] * 3
