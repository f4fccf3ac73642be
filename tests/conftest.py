"""Synthetic OHLCV factories with known answers, and small configs for fast tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tsconv import synthetic
from tsconv.config import validate_config
from tsconv.synthetic import ohlcv_from_returns  # noqa: F401  (tests import it from here)


def ar1_returns(n: int, phi: float = 0.5, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    return synthetic.ar1(n, phi, sigma, seed)[0]


def random_walk_returns(n: int, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    return synthetic.random_walk(n, sigma, seed)[0]


@pytest.fixture
def ohlcv() -> pd.DataFrame:
    return ohlcv_from_returns(random_walk_returns(400))


def tiny_config(**sections):
    """A config small enough to train in well under a second."""
    raw = {
        "seed": 0,
        "data": {"source": "sample", "tickers": ["MSFT"]},
        "features": ["log_return", "hl_range", "vol_5"],
        "window": 32,
        "model": {"kind": "tcn", "channels": 8, "layers": 3, "kernel_size": 3, "dropout": 0.0},
        # min_steps 0: three bare passes; the step floor has tests of its own. restore_best
        # off: end with the trained weights, so tests see what training did (with it on, an
        # untrained model, the zero forecast, often wins validation on noise)
        "train": {
            "epochs": 3,
            "min_steps": 0,
            "restore_best": False,
            "batch_size": 32,
            "lr": 0.003,
            "patience": 0,
            "device": "cpu",
        },
        "backtest": {"train_span": 300, "test_span": 100},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return validate_config(raw)


def random_head(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Models start with a zero head (an untrained model is the zero forecast), which would make
    any test of what the body computes pass trivially; give the head random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g))
        model.head.bias.copy_(torch.randn(model.head.bias.shape, generator=g))
    return model
