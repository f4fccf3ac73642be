"""Multi-scale Conv1d: parallel branches with different kernels (e.g. 3, 5, 21 bars).

Each branch is Conv1d -> BatchNorm1d -> ReLU; branches are concatenated on channels and a 1x1
head predicts at every step. `mix` > 0 puts one more 1x1 Conv1d -> BatchNorm1d -> ReLU layer of
that width between the branches and the head, so the scales are mixed nonlinearly before the
head (docs/known_answers.md shows what that buys on a nonlinear signal). With `causal=True`
(default) each branch pads on the left only. `causal=False` pads both sides, to reproduce a
symmetric extractor: the output at step t then sees (k-1)/2 future steps inside the window,
which is look-ahead for forecasting.
"""

from __future__ import annotations

import torch
from torch import nn

from tsconv.models.layers import CausalConv1d, ForecastModel, Highway, zero_head


class MultiScaleConv1d(ForecastModel):
    def __init__(
        self,
        in_features: int,
        hidden: int = 64,
        kernels: tuple[int, ...] = (3, 5, 21),
        causal: bool = True,
        dropout: float = 0.0,
        highway_lags: int = 0,
        mix: int = 0,
    ):
        super().__init__()
        self.kernels, self.causal = tuple(kernels), causal

        def conv(k: int) -> nn.Conv1d:
            if causal:
                return CausalConv1d(in_features, hidden, k)
            if k % 2 == 0:
                raise ValueError(f"symmetric padding needs odd kernels, got {k}")
            return nn.Conv1d(in_features, hidden, k, padding=k // 2)

        self.branches = nn.ModuleList(
            nn.Sequential(conv(k), nn.BatchNorm1d(hidden), nn.ReLU()) for k in self.kernels
        )
        self.dropout = nn.Dropout(dropout)
        width = hidden * len(self.kernels)
        self.mix = (
            nn.Sequential(CausalConv1d(width, mix, 1), nn.BatchNorm1d(mix), nn.ReLU())
            if mix
            else None
        )
        self.head = zero_head(mix or width)
        self.highway = Highway(in_features, highway_lags) if highway_lags else None

    @property
    def receptive_field(self) -> int:
        return max(*self.kernels, self.highway.lags if self.highway is not None else 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F, L) -> (N, hidden * len(kernels), L), the concatenated branches."""
        return torch.cat([branch(x) for branch in self.branches], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.mix is not None:
            h = self.mix(self.dropout(h))
        out = self.head(self.dropout(h))
        return out if self.highway is None else out + self.highway(x)
