"""The highway on CPU without its zero terms: a drop-in for `tsconv.models.layers.Highway`.

The ridge fit behind the highway keeps a few lags and at most one group of the last bar's
terms, so most of its weights are zero, and the reference computes every term anyway (on a GPU
choosing terms by their values would read the weights back to the host at every step). Here
the terms whose weights are zero are skipped: each remaining term is the same product, added
in the same order, and adding a zero product to a finite sum changes no bit, so the output is
the reference's bit for bit (tests/test_highway.py). The reference's ~250 small operations a
call were about a third of a `quick` training step (docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tsconv.models.fast.route import CPURoute
from tsconv.models.layers import HINGES, STEPS, Highway


class NonzeroHighway(CPURoute, Highway):
    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonzero_lag_part(x) + self.nonzero_bar_part(x).unsqueeze(1)

    def nonzero_lag_part(self, x: torch.Tensor) -> torch.Tensor:
        n_feat, length = x.shape[1], x.shape[-1]
        w = self.weight[0].to(x.dtype)  # (F, lags)
        used = (w != 0).tolist()
        if sum(map(sum, used)) > self.lags:
            # more products than one feature's lags: the reference's few large steps are cheaper
            return self.lag_part(x)
        out = torch.zeros_like(x[:, :1])
        for k in range(self.lags):
            lag = self.lags - 1 - k
            features = [f for f in range(n_feat) if used[f][k]]
            if lag >= length or not features:
                continue
            f0, *rest = features
            term = x[:, f0, None, : length - lag] * w[f0, k]
            for f in rest:
                term = term + x[:, f, None, : length - lag] * w[f, k]
            out[..., lag:] += term
        return out

    def nonzero_bar_part(self, x: torch.Tensor) -> torch.Tensor:
        n_feat, length = x.shape[1], x.shape[-1]
        quad, hinge, step = self.quad.to(x.dtype), self.hinge.to(x.dtype), self.step.to(x.dtype)
        bar = self.offset.to(x.dtype).expand(x.shape[0], length)
        q, h, s = (quad != 0).tolist(), (hinge != 0).tolist(), (step != 0).tolist()
        if not any(map(any, q + h + s)):
            return bar
        z = x.clamp(-self.clip, self.clip)
        for i in range(n_feat):
            zi = z[:, i]
            for j in range(i, n_feat):
                if q[i][j]:
                    bar = bar + quad[i, j] * (zi * z[:, j])
            for k, (sign, knot) in enumerate(HINGES):
                if h[i][k]:
                    bar = bar + hinge[i, k] * F.relu(sign * zi - knot)
            for k, (sign, knot) in enumerate(STEPS):
                if s[i][k]:
                    bar = bar + step[i, k] * (sign * zi > knot).to(x.dtype)
        return bar
