"""The time-major CPU TCN (models.fast.tcn) against the reference it stands in for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_head
from tsconv.models.fast import timemajor
from tsconv.models.fast.tcn import TimeMajorBlock, TimeMajorTCN, block_ends
from tsconv.models.fast.timemajor import TemporalBlockFunction, from_rows, to_rows, weight_grad
from tsconv.models.tcn import TCN, TemporalBlock


def block_pair(c_in: int, c_out: int, k: int, d: int, p: float, seed: int = 0):
    torch.manual_seed(seed)
    block = TimeMajorBlock(c_in, c_out, k, d, p).double()
    # Random biases and weight-norm gains, so no part of the kernel sees a convenient zero.
    with torch.no_grad():
        for prm in block.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    return block


def reference(block: TimeMajorBlock):
    """The block's reference forward: its modules composed through autograd."""
    return lambda x: TemporalBlock.forward(block, x)


def values_and_grads(fn, block: TimeMajorBlock, x: torch.Tensor, g: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad(out, [x, *block.parameters()], g)
    return out.detach(), grads


@pytest.mark.parametrize(
    "c_in,c_out,k,d,length",
    [(3, 5, 3, 1, 17), (5, 5, 3, 4, 17), (4, 6, 2, 8, 9), (5, 5, 3, 16, 12), (2, 3, 1, 1, 6)],
)
def test_fused_block_equals_composed_modules_in_values_and_gradients(c_in, c_out, k, d, length):
    """Without dropout (eval), the fused kernel is the block: same output, same gradients for
    the input and every parameter (weight-norm direction and gain included), also when the
    dilation reaches past the start of the window and for the 1x1 residual projection."""
    block = block_pair(c_in, c_out, k, d, p=0.3).eval()
    x = torch.randn(4, c_in, length, dtype=torch.float64)
    g = torch.randn(4, c_out, length, dtype=torch.float64)
    out_a, grads_a = values_and_grads(block.forward_cpu, block, x, g)
    out_b, grads_b = values_and_grads(reference(block), block, x, g)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def reference_block_with_masks(block, x, keep1, keep2, scale):
    """The block written out with F.conv1d and explicit inverted-dropout masks."""

    def conv(m, inp):
        pad = (m.kernel_size[0] - 1) * m.dilation[0]
        return F.conv1d(F.pad(inp, (pad, 0)), m.weight, m.bias, dilation=m.dilation[0])

    a1 = F.relu(conv(block.conv1, x)) * keep1 * scale
    a2 = F.relu(conv(block.conv2, a1)) * keep2 * scale
    res = x if block.downsample is None else conv(block.downsample, x)
    return F.relu(a2 + res)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c_in,p", [(3, 0.2), (5, 0.5)])
def test_fused_block_dropout_is_inverted_dropout_with_its_masks(c_in, p, dtype):
    """In training the fused block draws two keep masks and folds 1 / (1 - p) into the
    convolutions; with the same masks it must equal textbook inverted dropout after each ReLU,
    values and gradients. The masks are recovered by applying the block's `ends` to ones
    under the same seed."""
    block = block_pair(c_in, 5, 3, 2, p).to(dtype).train()
    n, length = 3, 20
    x = torch.randn(n, c_in, length, dtype=dtype)
    g = torch.randn(n, 5, length, dtype=dtype)
    torch.manual_seed(7)
    out_a, grads_a = values_and_grads(block.forward_cpu, block, x, g)
    torch.manual_seed(7)
    ends, scale = block_ends((length * n, 5), p, dtype)
    keep1, keep2 = (
        from_rows(ends.end(torch.ones(length * n, 5, dtype=dtype), i, None), n) for i in (0, 1)
    )
    out_b, grads_b = values_and_grads(
        lambda inp: reference_block_with_masks(block, inp, keep1, keep2, scale), block, x, g
    )
    assert 0 < float((keep1 == 0).double().mean()) < 1
    assert not torch.equal(keep1, keep2)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out_a, out_b, rtol=tol, atol=tol)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("downsample", [False, True])
def test_float32_block_equals_composed_modules(downsample):
    """Bias, ReLU and residual (eval: no dropout) against the modules in float32."""
    block = block_pair(3 if downsample else 5, 5, 3, 2, p=0.3).float().eval()
    x = torch.randn(4, block.conv1.in_channels, 40)
    g = torch.randn(4, 5, 40)
    out_a, grads_a = values_and_grads(block.forward_cpu, block, x, g)
    out_b, grads_b = values_and_grads(reference(block), block, x, g)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("downsample", [False, True])
def test_fused_block_function_passes_gradcheck(downsample):
    torch.manual_seed(0)
    n, length, c_in, c_out, d = 2, 7, 3 if downsample else 4, 4, 2
    rows = length * n

    def rnd(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    x = rnd(rows, c_in)
    w1, b1, w2, b2 = rnd(c_out, c_in, 3), rnd(c_out), rnd(c_out, c_out, 3), rnd(c_out)
    wd, bd = (rnd(c_out, c_in, 1), rnd(c_out)) if downsample else (None, None)
    keep1, keep2 = ((torch.rand(rows, c_out) > 0.3).double() for _ in range(2))
    ends = timemajor.TorchEnds(keep1, keep2)
    inputs = (x, w1, b1, w2, b2, wd, bd, ends, d * n, 1.25)  # 1.25: dropout p = 0.2
    assert torch.autograd.gradcheck(TemporalBlockFunction.apply, inputs)


def test_blocks_pass_time_major_rows_without_copying():
    """Each block returns an (N, C, L) view of time-major rows and the next block reads that
    memory in place: no layout copy between blocks."""
    model = TimeMajorTCN(3, [8, 8, 8], dropout=0.0).eval()
    x = torch.randn(4, 3, 30)
    h1 = model.blocks[0](x)
    assert h1.shape == (4, 8, 30)
    assert to_rows(h1).data_ptr() == h1.data_ptr() and to_rows(h1).is_contiguous()
    h2 = model.blocks[1](h1)
    assert to_rows(h2).data_ptr() == h2.data_ptr()


def test_fused_block_under_bf16_autocast_matches_composed():
    block = TimeMajorBlock(4, 8, 3, 2, 0.0).eval()
    x = torch.randn(2, 4, 40)
    with torch.autocast("cpu", torch.bfloat16):
        a, b = block.forward_cpu(x), reference(block)(x)
    assert a.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)


def test_fused_block_drops_at_rate_p_and_is_unbiased():
    """The dropout inside the fused block: a block whose first convolution is the identity
    passes x > 0 through both dropouts, plus the residual x. Averaged over draws the dropout
    part is x (unbiased), and it is dropped with probability 1 - (1 - p)^2."""
    p, c = 0.3, 6
    block = TimeMajorBlock(c, c, 1, 1, p, weight_norm=False).train()
    with torch.no_grad():
        block.conv1.weight.copy_(torch.eye(c)[:, :, None])
        block.conv1.bias.zero_()
        block.conv2.weight.copy_(torch.eye(c)[:, :, None])
        block.conv2.bias.zero_()
    torch.manual_seed(0)
    x = torch.rand(64, c, 50) + 0.5  # positive, so relu(x) = x and the residual doubles it
    outs = torch.stack([block(x) for _ in range(200)])
    # out = relu(x * k1 * k2 * s^2 + x): zero-free, so count drops from the dropout part
    dropped = ((outs - x) < 1e-6).double().mean().item()
    assert abs(dropped - (1 - (1 - p) ** 2)) < 0.01
    # unbiased: the dropout part x * k1 * k2 / (1 - p)^2 averages to x
    assert abs(((outs - x) / x).mean().item() - 1) < 0.01


@pytest.mark.parametrize("rows", [1, 2, 7, 64, 513])
def test_weight_grad_split_in_halves_equals_one_product(rows, monkeypatch):
    monkeypatch.setattr(timemajor, "SPLIT_MIN_MACS", 1)  # split even these small products
    x, gy = torch.randn(rows, 5, dtype=torch.float64), torch.randn(rows, 3, dtype=torch.float64)
    out = torch.full((2, 5, 3), float("nan"), dtype=torch.float64)
    weight_grad(x, gy, out[1])  # into a slice of a larger tensor, as the backward pass does
    torch.testing.assert_close(out[1], x.t() @ gy)
    assert out[0].isnan().all()


def test_weight_grad_keeps_bf16_products_whole(monkeypatch):
    """Summing two bf16 halves would round the gradient once more than one product does."""
    monkeypatch.setattr(timemajor, "SPLIT_MIN_MACS", 1)
    x, gy = torch.randn(64, 5).bfloat16(), torch.randn(64, 3).bfloat16()
    out = torch.empty(5, 3, dtype=torch.bfloat16)
    assert torch.equal(weight_grad(x, gy, out), x.t() @ gy)


@pytest.mark.parametrize("highway", [0, 4])
@pytest.mark.parametrize("mode", ["eval", "train without dropout"])
def test_time_major_tcn_is_the_reference_tcn(highway, mode):
    """The drop-in has the reference's parameters (the same state_dict) and computes its
    function, values and gradients, the head as a product over rows included."""
    torch.manual_seed(0)
    p = 0.3 if mode == "eval" else 0.0
    fast = TimeMajorTCN(3, [5, 5, 6], 3, 2, dropout=p, highway_lags=highway).double()
    ref = TCN(3, [5, 5, 6], 3, 2, dropout=p, highway_lags=highway).double()
    with torch.no_grad():
        for prm in fast.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
        if highway:  # a fitted ridge, not the zeros it starts at
            for w in (
                fast.highway.weight,
                fast.highway.hinge,
                fast.highway.quad,
                fast.highway.step,
            ):
                w.copy_(torch.randn_like(w))
    ref.load_state_dict(fast.state_dict())
    assert list(ref.state_dict()) == list(fast.state_dict())
    fast.train(mode != "eval"), ref.train(mode != "eval")
    x = torch.randn(4, 3, 30, dtype=torch.float64)
    g = torch.randn(4, 1, 30, dtype=torch.float64)
    results = []
    for model in (fast, ref):
        xi = x.clone().requires_grad_()
        out = model(xi)
        results.append((out.detach(), torch.autograd.grad(out, [xi, *model.parameters()], g)))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_time_major_route_is_the_cpu_eager_one():
    """On CPU the blocks leave time-major rows (the fused kernel ran); under torch.compile's
    tracing and on other devices the reference runs (tsconv.models.fast.route)."""
    model = random_head(TimeMajorTCN(3, [4, 4], dropout=0.0)).eval()
    h = model.blocks[0](torch.randn(2, 3, 10))
    assert to_rows(h).data_ptr() == h.data_ptr() and not h.is_contiguous()
