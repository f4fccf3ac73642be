"""Model kinds: for each, the config class of its `model:` section, its builder and its
receptive field. A new kind is its model file plus an entry in MODEL_KINDS (and its keys in
FILE_KEYS).

Loading a config must not import torch: the builders import their model classes when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

# The model section as files hold it (a run's config.yaml and model.pt, a backtest's
# folds/config.json, a sweep's trials): one flat mapping with every kind's keys, in this order,
# so that files written before the kinds had classes of their own read and compare the same.
FILE_KEYS = (
    "kind",
    "channels",
    "layers",
    "channel_list",
    "kernel_size",
    "dilation_base",
    "dropout",
    "weight_norm",
    "kernels",
    "causal",
    "mix",
    "highway",
    "highway_lags",
)
DEFAULT_KIND = "tcn"


def all_positive(value: list[int] | None) -> list[int] | None:
    if value is not None and any(v < 1 for v in value):
        raise ValueError("every entry must be >= 1")
    return value


class ModelConfigBase(BaseModel):
    """The keys every kind has.

    A section may also hold keys that only other kinds have: a run's config.yaml lists every
    kind's keys (FILE_KEYS), and a sweep may change `kind` alone. Each is checked as its kind
    checks it alone, written back to files as it was given (or at its default), and not used."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as config.py

    kind: str
    channels: int = Field(64, ge=1, le=4096)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    highway: bool = Field(False, description="add a ridge regression over the last bars")
    highway_lags: int | None = Field(
        None, ge=1, le=1024, description="the highway's reach; unset: the network's"
    )
    _other_kinds_keys: dict[str, Any] = PrivateAttr(default_factory=dict)

    def highway_lags_used(self, body_reach: int) -> int:
        """The highway's reach (the network's, `body_reach`, unless set); 0 without one."""
        if not self.highway:
            return 0
        return self.highway_lags if self.highway_lags is not None else body_reach

    @model_validator(mode="wrap")
    @classmethod
    def _set_aside_other_kinds_keys(cls, data: Any, handler: Callable) -> ModelConfigBase:
        if not isinstance(data, dict):
            return handler(data)
        other = {k: v for k, v in data.items() if k in FILE_KEYS and k not in cls.model_fields}
        config = handler({k: v for k, v in data.items() if k not in other})
        defaults = file_defaults()
        for key, value in other.items():
            checked = getattr(key_owner(key).model_validate({key: value}), key)
            if checked != defaults[key]:  # a default is written back anyway: equal configs
                config._other_kinds_keys[key] = checked
        return config

    @model_serializer(mode="wrap")
    def _as_files_hold_it(self, handler: Callable) -> dict[str, Any]:
        values = {**file_defaults(), **self._other_kinds_keys, **handler(self)}
        return {key: values[key] for key in FILE_KEYS}


class TCNConfig(ModelConfigBase):
    kind: Literal["tcn"] = "tcn"
    layers: int = Field(8, ge=1, le=24)
    channel_list: list[int] | None = None
    kernel_size: int = Field(3, ge=1, le=64)
    dilation_base: int = Field(2, ge=1, le=8)
    weight_norm: bool = True

    _positive = field_validator("channel_list")(all_positive)

    def block_channels(self) -> list[int]:
        """Each block's output channels."""
        return list(self.channel_list) if self.channel_list else [self.channels] * self.layers


class MultiScaleConfig(ModelConfigBase):
    kind: Literal["multiscale"] = "multiscale"
    kernels: list[int] = Field(default_factory=lambda: [3, 5, 21], min_length=1)
    causal: bool = True
    mix: int = Field(
        0, ge=0, le=4096, description="width of a 1x1 layer mixing the branches (0: none)"
    )

    _positive = field_validator("kernels")(all_positive)

    @model_validator(mode="after")
    def _symmetric_needs_odd(self) -> MultiScaleConfig:
        # causal: false pads both sides (and sees the future)
        if not self.causal and any(k % 2 == 0 for k in self.kernels):
            raise ValueError(
                f"symmetric padding needs odd kernels (causal: false), got {self.kernels}"
            )
        return self


def _tcn_body_reach(cfg: TCNConfig) -> int:
    from tsconv.models.tcn import tcn_receptive_field

    return tcn_receptive_field(cfg.kernel_size, len(cfg.block_channels()), cfg.dilation_base)


def build_tcn(cfg: TCNConfig, in_features: int):
    from tsconv.models.fast.tcn import TimeMajorTCN

    return TimeMajorTCN(
        in_features,
        cfg.block_channels(),
        cfg.kernel_size,
        cfg.dilation_base,
        cfg.dropout,
        cfg.weight_norm,
        cfg.highway_lags_used(_tcn_body_reach(cfg)),
    )


def tcn_receptive_field(cfg: TCNConfig) -> int:
    body = _tcn_body_reach(cfg)
    return max(body, cfg.highway_lags_used(body))


def build_multiscale(cfg: MultiScaleConfig, in_features: int):
    from tsconv.models.fast.multiscale import FastDropoutMultiScaleConv1d

    return FastDropoutMultiScaleConv1d(
        in_features,
        cfg.channels,
        tuple(cfg.kernels),
        cfg.causal,
        cfg.dropout,
        cfg.highway_lags_used(max(cfg.kernels)),
        cfg.mix,
    )


def multiscale_receptive_field(cfg: MultiScaleConfig) -> int:
    return max(*cfg.kernels, cfg.highway_lags_used(max(cfg.kernels)))


@dataclass(frozen=True)
class ModelKind:
    config: type[ModelConfigBase]
    build: Callable[[Any, int], Any]  # (config, input features) -> a models.layers.ForecastModel
    receptive_field: Callable[[Any], int]  # config -> input steps one output step sees


MODEL_KINDS: dict[str, ModelKind] = {
    "tcn": ModelKind(TCNConfig, build_tcn, tcn_receptive_field),
    "multiscale": ModelKind(MultiScaleConfig, build_multiscale, multiscale_receptive_field),
}


def model_kind(section: Any) -> str:
    """The kind a model section names, DEFAULT_KIND where it names none."""
    if isinstance(section, ModelConfigBase):
        return section.kind
    return str(section.get("kind", DEFAULT_KIND)) if isinstance(section, dict) else DEFAULT_KIND


# The `model:` section: the config class of the kind it names.
ModelConfig = Annotated[
    Union[tuple(Annotated[kind.config, Tag(name)] for name, kind in MODEL_KINDS.items())],  # noqa: UP007
    Discriminator(model_kind),
]


def key_owner(key: str) -> type[ModelConfigBase]:
    """The config class of the first kind that has `key`."""
    return next(kind.config for kind in MODEL_KINDS.values() if key in kind.config.model_fields)


def file_defaults() -> dict[str, Any]:
    """Every key of FILE_KEYS at its default in `key_owner(key)`."""
    return {
        key: key_owner(key).model_fields[key].get_default(call_default_factory=True)
        for key in FILE_KEYS
    }


def build_model(cfg: ModelConfigBase, in_features: int):
    """The model `cfg` describes, for `in_features` input features (a ForecastModel)."""
    return MODEL_KINDS[cfg.kind].build(cfg, in_features)


def receptive_field(cfg: ModelConfigBase) -> int:
    """Exact number of input steps that can influence one output step."""
    return MODEL_KINDS[cfg.kind].receptive_field(cfg)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
