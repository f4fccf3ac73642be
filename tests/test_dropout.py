"""The fast CPU dropout (tsconv.models.fast.dropout): nn.Dropout's semantics with SFC64 bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import random_head
from tsconv.models.fast.dropout import Dropout
from tsconv.models.fast.multiscale import FastDropoutMultiScaleConv1d
from tsconv.models.fast.tcn import TimeMajorTCN
from tsconv.models.multiscale import MultiScaleConv1d


def test_dropout_mask_follows_the_input_memory_layout():
    torch.manual_seed(0)
    x = torch.ones(4, 200, 16).transpose(1, 2)  # (N, C, L) over channels-last memory
    out = Dropout(0.5).train()(x)
    assert out.stride() == x.stride()
    assert abs((out == 0).double().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_fast_dropout_drops_p_of_elements_and_is_unbiased(p):
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(64, 32, 257)  # numel not a multiple of the 4 lanes per draw
    out = drop(x)
    n = x.numel()
    zeros = (out == 0).double().mean().item()
    assert abs(zeros - p) < 4 * (p * (1 - p) / n) ** 0.5
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - round(p * 65536) / 65536)))
    assert abs(out.double().mean().item() - 1.0) < 4 * (p / (1 - p) / n) ** 0.5


def test_fast_dropout_lanes_are_independent_and_positions_uniform():
    """Each of the four 16-bit lanes of a 64-bit draw must drop at the same rate; a biased
    lane (e.g. a sign bit never set) would show up as a period-4 pattern in positions."""
    torch.manual_seed(1)
    out = Dropout(0.3).train()(torch.ones(400_000))
    rates = (out.view(-1, 4) == 0).double().mean(0)
    assert torch.all((rates - 0.3).abs() < 4 * (0.3 * 0.7 / 100_000) ** 0.5)
    pair = ((out.view(-1, 2) == 0).all(1)).double().mean().item()  # neighbours independent
    assert abs(pair - 0.09) < 4 * (0.09 * 0.91 / 200_000) ** 0.5


def test_fast_dropout_gradient_is_the_mask_eval_is_identity_and_seeded():
    drop = Dropout(0.25).train()
    x = torch.randn(8, 4, 33, requires_grad=True)
    torch.manual_seed(3)
    out = drop(x)
    out.sum().backward()
    mask = out.detach() / x.detach()
    torch.testing.assert_close(x.grad, mask)
    torch.manual_seed(3)
    torch.testing.assert_close(drop(x), out)
    assert drop.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.all(Dropout(1.0).train()(x) == 0)


def test_fast_dropout_bits_come_from_torchs_seed_and_touch_no_global_numpy_state():
    """The bits come from numpy's SFC64 keyed from torch's generator: so
    `torch.manual_seed` alone fixes every mask, each call gets fresh bits, and numpy's global
    random state (which users may rely on) is left alone."""
    drop = Dropout(0.5).train()
    np.random.seed(11)
    expected = np.random.random(3)
    np.random.seed(11)
    torch.manual_seed(0)
    a, b = drop(torch.ones(10_000)), drop(torch.ones(10_000))
    np.testing.assert_array_equal(np.random.random(3), expected)
    assert not torch.equal(a, b)
    np.random.seed(12)  # another numpy state changes nothing
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(10_000)), a)


def test_fast_dropout_keeps_bf16_with_the_same_masks_as_float32():
    """bf16 cannot hold every int16, so the keep decision is made in float32: the same seed
    must drop the same elements in both dtypes."""
    out = Dropout(0.5).train()(torch.ones(100, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and set(out.unique().tolist()) <= {0.0, 2.0}
    torch.manual_seed(5)
    a = Dropout(0.2).train()(torch.ones(100_000, dtype=torch.bfloat16))
    torch.manual_seed(5)
    b = Dropout(0.2).train()(torch.ones(100_000))
    assert torch.equal(a == 0, b == 0)


def test_dropout_just_below_one_keeps_the_scale_finite():
    """p rounds to 65536/65536 at 16 bits; it is held at 65535/65536 so 1 / P(keep) stays
    finite, in the module and in the fused block."""
    out = Dropout(0.9999999).train()(torch.ones(200_000))
    assert torch.isfinite(out).all() and (out == 0).double().mean() > 0.9999
    block = TimeMajorTCN(2, [4], dropout=0.9999999).train()
    assert torch.isfinite(block(torch.randn(3, 2, 20))).all()


def test_fast_dropout_on_a_strided_view():
    """A view with gaps (every other step) has strides that do not describe a dense block; the
    mask must still be a plain elementwise mask of the view's shape."""
    torch.manual_seed(2)
    base = torch.randn(16, 8, 400)
    x = base[:, :, ::2]
    out = Dropout(0.3).train()(x)
    assert out.shape == x.shape
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - round(0.3 * 65536) / 65536))
    assert abs((~kept).double().mean().item() - 0.3) < 0.01


@pytest.mark.parametrize("mix", [0, 5])
def test_fast_dropout_multiscale_is_the_reference_model(mix):
    """Same parameters, and the same function wherever dropout does not draw (eval, p = 0);
    with dropout its masks come from the fast Dropout on CPU."""
    torch.manual_seed(0)
    fast = random_head(FastDropoutMultiScaleConv1d(3, 4, (3, 7), dropout=0.3, mix=mix))
    ref = MultiScaleConv1d(3, 4, (3, 7), dropout=0.3, mix=mix)
    ref.load_state_dict(fast.state_dict())
    assert list(ref.state_dict()) == list(fast.state_dict())
    assert isinstance(fast.dropout, Dropout)
    x = torch.randn(2, 3, 30)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), ref.eval()(x))
        fast.dropout.p = ref.dropout.p = 0.0
        torch.testing.assert_close(fast.train()(x), ref.train()(x))
