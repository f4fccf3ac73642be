"""The TCN on CPU as time-major rows: a drop-in for `tsconv.models.tcn.TCN`.

Each block runs as one `TemporalBlockFunction` (tsconv.models.fast.timemajor) and returns an
(N, C, L) view of time-major rows, which the next block reads in place; the 1x1 head is then a
product over those rows, which avoids reordering the last activation (and its gradient) for a
convolution. Dropout masks come from `tsconv.models.fast.dropout`. Same parameters, same
state_dict, same function as the reference (tests/test_timemajor.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tsconv.models.fast.dropout import keep_mask
from tsconv.models.fast.highway import NonzeroHighway
from tsconv.models.fast.route import CPURoute
from tsconv.models.fast.timemajor import (
    TemporalBlockFunction,
    TorchEnds,
    compute_dtype,
    from_rows,
    to_rows,
)
from tsconv.models.tcn import TCN, TemporalBlock


class TimeMajorBlock(CPURoute, TemporalBlock):
    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
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
    if p == 0:
        return TorchEnds(), 1.0
    # Both masks in one draw: a draw has a fixed cost.
    keep, scale = keep_mask(2 * shape[0] * shape[1], p, dtype)
    return TorchEnds(*keep.view(2, *shape).unbind(0)), scale


class TimeMajorTCN(CPURoute, TCN):
    Block = TimeMajorBlock

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.highway is not None:
            self.highway = NonzeroHighway(*self.highway.weight.shape[1:])

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)  # an (N, C, L) view of time-major rows
        rows, w, b = compute_dtype(to_rows(h), self.head.weight[:, :, 0], self.head.bias)
        out = from_rows(F.linear(rows, w, b), len(x))
        return out if self.highway is None else out + self.highway(x)
