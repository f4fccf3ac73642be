"""The model registry: one config class per kind, its builder and its receptive field."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.test_models import model_config
from tsconv.cli import app
from tsconv.models.layers import ForecastModel
from tsconv.models.registry import FILE_KEYS, MODEL_KINDS, build_model, receptive_field


def test_every_kind_builds_its_model_and_knows_its_receptive_field():
    for name, kind in MODEL_KINDS.items():
        cfg = kind.config(highway=True, highway_lags=2)
        assert cfg.kind == name and model_config(kind=name) == kind.config()
        model = build_model(cfg, 3)
        assert isinstance(model, ForecastModel) and model.highway is not None
        assert model.receptive_field == receptive_field(cfg)


def test_the_file_layout_holds_every_kinds_keys():
    keys = {k for kind in MODEL_KINDS.values() for k in kind.config.model_fields}
    assert set(FILE_KEYS) == keys and len(FILE_KEYS) == len(keys)
    dumped = model_config(kind="multiscale", layers=4, kernels=[3, 7]).model_dump()
    assert list(dumped) == list(FILE_KEYS)
    assert dumped["layers"] == 4 and dumped["kernels"] == [3, 7]  # kept, though unused
    assert dumped["kernel_size"] == 3  # the TCN's default
    assert model_config(**dumped).model_dump() == dumped


def test_another_kinds_keys_are_checked_by_that_kind():
    with pytest.raises(ValidationError, match="every entry must be >= 1"):
        model_config(kind="tcn", kernels=[3, -1])
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        model_config(kind="multiscale", layers=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        model_config(kind="tcn", hidden=4)


def test_an_unknown_kind_is_one_line_naming_the_kinds():
    result = CliRunner().invoke(app, ["train", "--config", "quick", "--set", "model.kind=lstm"])
    assert result.exit_code == 2
    assert "model.kind: unknown kind 'lstm'; valid kinds: tcn, multiscale" in result.output
    assert "Traceback" not in result.output


def test_loading_a_config_does_not_import_torch():
    code = (
        "import sys; from tsconv.config import load_config; load_config('quick');"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
