"""The CPU highway that skips its zero terms gives the reference highway's output bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsconv.models.fast.highway import NonzeroHighway
from tsconv.models.fast.multiscale import FastDropoutMultiScaleConv1d
from tsconv.models.fast.tcn import TimeMajorTCN
from tsconv.models.layers import HINGES, STEPS, Highway


def fitted_pair(features: int, lags: int, density: float, seed: int):
    """A reference and a fast highway with the same random weights, `density` of them set."""
    rng = np.random.default_rng(seed)

    def sparse(*shape):
        return rng.normal(size=shape) * (rng.random(shape) < density)

    args = dict(
        coef=sparse(lags, features),
        penalty=1.0,
        hinge=sparse(features, len(HINGES)),
        quad=np.triu(sparse(features, features)),
        offset=float(rng.normal()) * (density > 0),
        step=sparse(features, len(STEPS)),
    )
    pair = Highway(features, lags), NonzeroHighway(features, lags)
    for h in pair:
        h.set_ridge(**args)
    return pair


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("length", [4, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonzero_highway_is_the_reference_bit_for_bit(density, length, dtype):
    reference, fast = fitted_pair(features=5, lags=12, density=density, seed=int(density * 100))
    x = torch.randn(7, 5, length, generator=torch.Generator().manual_seed(length)).to(dtype) * 3
    expected = Highway.forward(reference, x)
    got = fast(x)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_fast_models_carry_the_nonzero_highway_with_the_reference_state():
    tcn = TimeMajorTCN(5, [8, 8], 3, 2, 0.0, True, 9)
    multiscale = FastDropoutMultiScaleConv1d(5, 8, (3, 5), True, 0.0, 9, 0)
    for model in (tcn, multiscale):
        assert isinstance(model.highway, NonzeroHighway)
        reference = Highway(5, 9)
        assert model.highway.state_dict().keys() == reference.state_dict().keys()
