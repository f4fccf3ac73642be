"""Synthetic OHLCV factories with known answers, and small configs for fast tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tsconv import synthetic
from tsconv.cli import app
from tsconv.config import validate_config
from tsconv.synthetic import ohlcv_from_returns  # noqa: F401  (tests import it from here)


def ar1_returns(n: int, phi: float = 0.5, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    return synthetic.ar1(n, phi, sigma, seed)[0]


def random_walk_returns(n: int, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    return synthetic.random_walk(n, sigma, seed)[0]


@pytest.fixture(scope="session")
def known_cache(tmp_path_factory):
    """Every case's tickers written as CSV files and imported with `tsconv fetch --from-csv`."""
    root = tmp_path_factory.mktemp("known")
    cache_dir, oracles, tickers = root / "cache", {}, {}
    for series in synthetic.CASES:
        frames, oracle = synthetic.case_frames(series)
        oracles.update(oracle)
        tickers[series] = list(frames)
        for name, frame in frames.items():
            path = root / f"{name}.csv"
            frame.to_csv(path)
            args = [
                "fetch",
                "--from-csv",
                str(path),
                "--ticker",
                name,
                "--data-dir",
                str(cache_dir),
            ]
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
    return cache_dir, oracles, tickers


def cache_keys(known_cache, series: str) -> list[str]:
    """The --set items that point a shipped config at one known-answer case in the cache."""
    cache_dir, _, tickers = known_cache
    return [
        "data.source=cache",
        f"data.dir={cache_dir}",
        f"data.tickers=[{','.join(tickers[series])}]",
    ]


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
    """Models start with a zero head (an untrained model is the zero forecast) and a zero
    highway until its ridge is fitted, which would make any test of what they compute pass
    trivially; give both random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g))
        model.head.bias.copy_(torch.randn(model.head.bias.shape, generator=g))
        if getattr(model, "highway", None) is not None:
            for w in (
                model.highway.weight,
                model.highway.hinge,
                model.highway.quad,
                model.highway.step,
            ):
                w.copy_(0.1 * torch.randn(w.shape, generator=g))
    return model
