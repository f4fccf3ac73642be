"""Model zoo: `build_model(config)` and `receptive_field(config)`."""

from __future__ import annotations

from torch import nn

from tsconv.config import ModelConfig
from tsconv.models.layers import CausalConv1d, Highway
from tsconv.models.multiscale import MultiScaleConv1d
from tsconv.models.tcn import TCN, TemporalBlock, tcn_receptive_field


def tcn_channels(cfg: ModelConfig) -> list[int]:
    return list(cfg.channel_list) if cfg.channel_list else [cfg.channels] * cfg.layers


def build_model(cfg: ModelConfig, in_features: int) -> nn.Module:
    if cfg.kind == "tcn":
        return TCN(
            in_features,
            tcn_channels(cfg),
            cfg.kernel_size,
            cfg.dilation_base,
            cfg.dropout,
            cfg.weight_norm,
            highway_lags(cfg),
        )
    return MultiScaleConv1d(
        in_features,
        cfg.channels,
        tuple(cfg.kernels),
        cfg.causal,
        cfg.dropout,
        highway_lags(cfg),
        cfg.mix,
    )


def highway_lags(cfg: ModelConfig) -> int:
    return cfg.highway_lags if cfg.highway else 0


def receptive_field(cfg: ModelConfig) -> int:
    """Exact number of input steps that can influence one output step."""
    if cfg.kind == "tcn":
        body = tcn_receptive_field(cfg.kernel_size, len(tcn_channels(cfg)), cfg.dilation_base)
    else:
        body = max(cfg.kernels)
    return max(body, highway_lags(cfg))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "TCN",
    "CausalConv1d",
    "Highway",
    "MultiScaleConv1d",
    "TemporalBlock",
    "build_model",
    "count_parameters",
    "receptive_field",
    "tcn_channels",
    "tcn_receptive_field",
]
