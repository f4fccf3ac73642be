"""Streaming TCN inference: one new bar costs O(layers) small matrix products.

Each causal convolution keeps a buffer of its last (k-1)*dilation inputs. A new bar is written
into every buffer and the k dilated taps are read back as a strided view, so the step is one
(B, k*C_in) x (k*C_in, C_out) product per convolution instead of a forward pass over the whole
receptive field. The step runs in NumPy: at batch 1 the cost is per-operation dispatch, which is
several times lower there than in torch, and at batch 256 both are BLAS-bound.
"""

from __future__ import annotations

import numpy as np
import torch

from tsconv.models.tcn import TCN

_SPARE = 256  # steps between compactions of a buffer


class _ConvState:
    def __init__(self, conv: torch.nn.Conv1d, dilation: int, batch: int):
        w = conv.weight.detach().float().cpu().numpy()  # (out, in, k); weight norm already applied
        c_out, c_in, k = w.shape
        self.k, self.d, self.c_in = k, dilation, c_in
        self.span = (k - 1) * dilation
        # Row j*C_in + c multiplies input channel c at lag (k-1-j)*d: oldest tap first.
        self.w = np.ascontiguousarray(w.transpose(2, 1, 0).reshape(k * c_in, c_out))
        self.b = conv.bias.detach().float().cpu().numpy() if conv.bias is not None else 0.0
        self.buf = np.zeros((batch, self.span + _SPARE, c_in), dtype=np.float32)
        self.pos = self.span

    def __call__(self, x: np.ndarray) -> np.ndarray:
        buf, span = self.buf, self.span
        if self.pos == buf.shape[1]:
            buf[:, :span] = buf[:, self.pos - span : self.pos]
            self.pos = span
        p = self.pos
        buf[:, p] = x
        self.pos = p + 1
        taps = buf[:, p - span : p + 1 : self.d].reshape(len(x), -1)
        out = taps @ self.w
        out += self.b
        return out


class StreamingTCN:
    """Feed bars one at a time; `step` returns the same prediction as `model(x)[..., -1]`."""

    def __init__(self, model: TCN, batch: int = 1):
        if not isinstance(model, TCN):
            raise TypeError("streaming inference is implemented for the TCN")
        self.model, self.batch = model, batch
        self.reset(batch)

    def reset(self, batch: int | None = None) -> None:
        self.batch = batch or self.batch
        self.layers = []
        with torch.no_grad():
            for i, block in enumerate(self.model.blocks):
                d = self.model.dilation_base**i
                down = None
                if block.downsample is not None:
                    w = block.downsample.weight.detach().float().cpu().numpy()[:, :, 0].T.copy()
                    down = (w, block.downsample.bias.detach().float().cpu().numpy())
                self.layers.append(
                    (
                        _ConvState(block.conv1, d, self.batch),
                        _ConvState(block.conv2, d, self.batch),
                        down,
                    )
                )
            self.head_w = self.model.head.weight.detach().float().cpu().numpy()[:, :, 0].T.copy()
            self.head_b = self.model.head.bias.detach().float().cpu().numpy()
            highway = self.model.highway
            self.highway = _ConvState(highway.conv, 1, self.batch) if highway is not None else None

    def step(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """x: (B, F) features of the newest bar -> (B,) prediction for it."""
        h = x0 = np.asarray(x, dtype=np.float32)
        for conv1, conv2, down in self.layers:
            out = conv1(h)
            np.maximum(out, 0, out=out)
            out = conv2(out)
            np.maximum(out, 0, out=out)
            out += h if down is None else h @ down[0] + down[1]
            np.maximum(out, 0, out=out)
            h = out
        out = h @ self.head_w + self.head_b
        if self.highway is not None:
            out += self.highway(x0)
        return out[:, 0]

    def run(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """x: (B, F, L) -> (B, L), stepping through every bar from empty buffers."""
        x = np.asarray(x, dtype=np.float32)
        return np.stack([self.step(x[:, :, t]) for t in range(x.shape[2])], axis=1)
