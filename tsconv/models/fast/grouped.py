"""K members of one model as one model: a drop-in for training an ensemble's members together.

An ensemble's members are K models of one shape. The shipped models are too small to fill a
GPU (a step is bound by kernel launches), so K of them as one model, whose convolutions have
`groups=K` with member m's channels the m-th group, do K members' work per launch
(docs/benchmarks-gpu.md: 7.9x per step for ten members on an H200). Convolutions with groups,
weight norm (per output channel), BatchNorm (per channel), ReLU, dropout and the residual act
on each member's channels alone, so the grouped model's output m is member m's forward on its
own input, and its gradient for member m's parameters is member m's gradient
(tests/test_grouped.py).

Layout: input (N, K * F, L), member m's features at channels [m * F, (m + 1) * F); output
(N, K, L), member m's forecasts in row m. Every parameter and buffer is the members' own
stacked on its first axis under the reference module's name (`stack_states`, `member_state`),
so a member's weights go in and come out as that member's state_dict. The linear part (the
highway) is fixed during training and the same for every member of a fit (one ridge fit on
the same rows): it runs once on the members' inputs side by side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tsconv.models.fast.dropout import Dropout
from tsconv.models.layers import ForecastModel, Highway, maybe_weight_norm
from tsconv.models.multiscale import MultiScaleConv1d
from tsconv.models.tcn import TCN, TemporalBlock


class GroupedConv1d(nn.Conv1d):
    """K Conv1d(c_in, c_out, k, dilation) side by side; causal (left padding) or symmetric
    (k // 2 each side, as the non-causal multi-scale branches)."""

    def __init__(
        self, members: int, c_in: int, c_out: int, k: int, dilation: int = 1, causal: bool = True
    ):
        super().__init__(members * c_in, members * c_out, k, dilation=dilation, groups=members)
        self.members = members
        self.pads = ((k - 1) * dilation, 0) if causal else (k // 2, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x, self.pads) if any(self.pads) else x
        if x.device.type != "cpu":
            return F.conv1d(xp, self.weight, self.bias, dilation=self.dilation, groups=self.groups)
        # On CPU as windows times weights, as CausalConv1d and for its reason: a matrix
        # product's bits do not depend on the thread count, oneDNN's convolution's may.
        k, d, length, n = self.kernel_size[0], self.dilation[0], x.shape[-1], x.shape[0]
        cols = torch.stack([xp[..., j * d : j * d + length] for j in range(k)], dim=-1)
        cols = cols.view(n, self.members, -1, length, k)
        w = self.weight.view(self.members, -1, *self.weight.shape[1:])  # (K, out, in, k)
        y = torch.einsum("nmclk,mock->nmol", cols, w).reshape(n, -1, length)
        return y + self.bias[:, None]


class GroupedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over K members' channels. A training batch may hold padding rows for a
    member (its batch was shorter, `GroupedModel.padded`): those rows are then left out of
    that member's statistics, which are its own batch's as in its own model."""

    def __init__(self, members: int, channels: int):
        super().__init__(members * channels)
        self.members = members
        self.rows: torch.Tensor | None = None  # (N, K): the rows that are each member's own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None or not self.training:
            return super().forward(x)
        # The statistics F.batch_norm would compute on each member's own rows: mean and
        # biased variance to normalise, the unbiased variance into the running estimate; in
        # float32 as BatchNorm keeps them (a float16 sum of squares overflows).
        c = x.shape[1] // self.members
        z = x.float()
        w = self.rows.float().repeat_interleave(c, dim=1)[:, :, None]  # (N, K * C, 1)
        count = w.sum(0)[:, 0] * x.shape[-1]
        mean = (z * w).sum((0, 2)) / count
        var = ((z - mean[:, None]) ** 2 * w).sum((0, 2)) / count
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * count / (count - 1))
            self.num_batches_tracked += 1
        scale = self.weight.float() / torch.sqrt(var + self.eps)
        out = (z - mean[:, None]) * scale[:, None] + self.bias.float()[:, None]
        return out.to(x.dtype)


class GroupedTemporalBlock(nn.Module):
    """`tsconv.models.tcn.TemporalBlock` for K members (the same names and function)."""

    def __init__(self, members, c_in, c_out, kernel_size, dilation, dropout, weight_norm):
        super().__init__()

        def conv(a: int, b: int) -> nn.Conv1d:
            return maybe_weight_norm(
                GroupedConv1d(members, a, b, kernel_size, dilation), weight_norm
            )

        self.conv1, self.conv2 = conv(c_in, c_out), conv(c_out, c_out)
        self.relu = nn.ReLU()
        self.dropout = Dropout(dropout)
        self.downsample = GroupedConv1d(members, c_in, c_out, 1) if c_in != c_out else None

    forward = TemporalBlock.forward  # the reference block's, on K members' channels


class GroupedTCN(nn.Module):
    """`tsconv.models.tcn.TCN`'s network (without its highway) for K members."""

    def __init__(self, members: int, like: TCN):
        super().__init__()
        first = like.blocks[0]
        weight_norm = hasattr(first.conv1, "parametrizations")
        blocks, c_in = [], first.conv1.in_channels
        for i, block in enumerate(like.blocks):
            c_out = block.conv2.out_channels
            blocks.append(
                GroupedTemporalBlock(
                    members,
                    c_in,
                    c_out,
                    like.kernel_size,
                    like.dilation_base**i,
                    block.dropout.p,
                    weight_norm,
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = GroupedConv1d(members, c_in, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class GroupedMultiScale(nn.Module):
    """`tsconv.models.multiscale.MultiScaleConv1d`'s network (without its highway) for K
    members: the branches' outputs are put side by side per member, as each member's own
    concatenation."""

    def __init__(self, members: int, like: MultiScaleConv1d):
        super().__init__()
        self.members = members
        in_features = like.branches[0][0].in_channels
        hidden = like.branches[0][0].out_channels
        self.branches = nn.ModuleList(
            nn.Sequential(
                GroupedConv1d(members, in_features, hidden, k, causal=like.causal),
                GroupedBatchNorm1d(members, hidden),
                nn.ReLU(),
            )
            for k in like.kernels
        )
        self.dropout = Dropout(like.dropout.p)
        width = hidden * len(like.kernels)
        mix = like.mix[0].out_channels if like.mix is not None else 0
        self.mix = (
            nn.Sequential(
                GroupedConv1d(members, width, mix, 1), GroupedBatchNorm1d(members, mix), nn.ReLU()
            )
            if mix
            else None
        )
        self.head = GroupedConv1d(members, mix or width, 1, 1)
        self.highway = None  # GroupedModel adds the members' one highway

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's branches side by side in its own channels, in its own order."""
        n, length = x.shape[0], x.shape[-1]
        parts = [b(x).view(n, self.members, -1, length) for b in self.branches]
        return torch.cat(parts, dim=2).view(n, -1, length)

    forward = MultiScaleConv1d.forward  # the reference model's, with these features


class GroupedModel(nn.Module):
    """K members of one model (built alike, e.g. from one config) as one model; the members'
    own modules are left as they are (`member_state` gives back member m's weights)."""

    def __init__(self, members: list[ForecastModel]):
        super().__init__()
        like, self.members = members[0], len(members)
        if isinstance(like, TCN):
            self.net = GroupedTCN(self.members, like)
        elif isinstance(like, MultiScaleConv1d):
            self.net = GroupedMultiScale(self.members, like)
        else:
            raise TypeError(f"no grouped form of {type(like).__name__}")
        self.highway = _shared_highway(members)
        self.net.load_state_dict(stack_states([_network_state(m) for m in members]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.highway is None:
            return out
        n, length = x.shape[0], x.shape[-1]
        side_by_side = x.reshape(n * self.members, -1, length)  # (N * K, F, L)
        return out + self.highway(side_by_side).view(n, self.members, length)

    @contextlib.contextmanager
    def padded(self, rows: torch.Tensor | None) -> Iterator[None]:
        """Within: a forward whose batch holds padding rows, `rows` (N, K) marking each
        member's own (None: no padding), which BatchNorm leaves out of its statistics."""
        norms = [m for m in self.modules() if isinstance(m, GroupedBatchNorm1d)]
        for norm in norms:
            norm.rows = rows
        try:
            yield
        finally:
            for norm in norms:
                norm.rows = None

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's state_dict, as its own model names it (detached copies on the CPU)."""
        state = {
            name: (value.chunk(self.members)[m] if value.dim() else value).detach().cpu().clone()
            for name, value in self.net.state_dict().items()
        }
        if self.highway is not None:
            state.update(
                {
                    f"highway.{k}": v.detach().cpu().clone()
                    for k, v in self.highway.state_dict().items()
                }
            )
        return state


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The members' state_dicts as one: every tensor stacked on its first axis (scalars, such
    as BatchNorm's step count, are the same in every member and kept once)."""
    return {
        name: torch.cat([s[name] for s in states]) if value.dim() else value
        for name, value in states[0].items()
    }


def _network_state(model: ForecastModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("highway.")}


def _shared_highway(members: list[ForecastModel]) -> Highway | None:
    """The members' highway (one copy), which must be the same in every member."""
    if members[0].highway is None:
        return None
    first = members[0].highway.state_dict()
    for other in members[1:]:
        if any(not torch.equal(v, other.highway.state_dict()[k]) for k, v in first.items()):
            raise ValueError("grouped members need the same highway (one linear fit)")
    highway = Highway(members[0].highway.weight.shape[1], members[0].highway.lags)
    highway.load_state_dict(first)
    return highway
