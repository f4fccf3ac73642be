"""Models against the seed's math (../shared/seed/1d-convolutions.md): each figure is a test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from torch import nn

from tests.conftest import random_head
from tsconv.models.fast.dropout import Dropout
from tsconv.models.layers import CausalConv1d
from tsconv.models.multiscale import MultiScaleConv1d
from tsconv.models.registry import (
    ModelConfig,
    ModelConfigBase,
    build_model,
    count_parameters,
    receptive_field,
)
from tsconv.models.tcn import TCN, tcn_receptive_field

torch.set_default_dtype(torch.float32)


def model_config(**keys) -> ModelConfigBase:
    """The `model:` section with these keys, as a config file would give it."""
    return TypeAdapter(ModelConfig).validate_python(keys)


# --------------------------------------------------------------------------- NumPy reference


def np_conv1d(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y[i] = sum_j x[i + j] w[j] (the seed's cross-correlation, valid positions only)."""
    k = len(w)
    return np.array([np.dot(x[i : i + k], w) for i in range(len(x) - k + 1)])


def np_conv1d_backward(
    x: np.ndarray, w: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """dL/dx = full convolution of g with flip(w); dL/dw[j] = sum_i g[i] x[i + j]."""
    k = len(w)
    gp = np.pad(g, (k - 1, k - 1))
    grad_x = np.array([np.dot(gp[i : i + k], w[::-1]) for i in range(len(x))])
    grad_w = np.array([np.dot(x[j : j + len(g)], g) for j in range(k)])
    return grad_x, grad_w


def toeplitz(w: np.ndarray, n: int) -> np.ndarray:
    k = len(w)
    t = np.zeros((n - k + 1, n))
    for i in range(n - k + 1):
        t[i, i : i + k] = w
    return t


def test_seed_example_difference_kernel():
    x, w = np.array([1.0, 2, 3, 4, 5]), np.array([1.0, 0, -1])
    np.testing.assert_array_equal(np_conv1d(x, w), [-2, -2, -2])
    conv = nn.Conv1d(1, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 0, -1]]]))
    out = conv(torch.tensor([[[1.0, 2, 3, 4, 5]]]))
    assert out.shape == (1, 1, 3)
    np.testing.assert_array_equal(out.detach().numpy().ravel(), [-2, -2, -2])


def test_seed_multichannel_parameter_count_and_shape():
    conv = nn.Conv1d(8, 32, 5, padding=2)
    assert count_parameters(conv) == 8 * 32 * 5 + 32 == 1312
    assert conv(torch.randn(32, 8, 100)).shape == (32, 32, 100)


@pytest.mark.parametrize("n,k,p,d,s", [(100, 5, 2, 1, 1), (50, 3, 0, 2, 1), (64, 4, 1, 3, 2)])
def test_output_length_formula(n, k, p, d, s):
    conv = nn.Conv1d(2, 3, k, stride=s, padding=p, dilation=d)
    assert conv(torch.randn(1, 2, n)).shape[-1] == (n + 2 * p - d * (k - 1) - 1) // s + 1


def test_torch_matches_numpy_reference_multichannel():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(3, 20)), rng.normal(size=(4, 3, 5)), rng.normal(size=4)
    ref = np.stack([sum(np_conv1d(x[c], w[o, c]) for c in range(3)) + b[o] for o in range(4)])
    out = F.conv1d(torch.tensor(x)[None], torch.tensor(w), torch.tensor(b))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-12)


def test_toeplitz_form_equals_convolution():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=9), rng.normal(size=3)
    np.testing.assert_allclose(toeplitz(w, 9) @ x, np_conv1d(x, w), atol=1e-12)


def test_input_gradient_is_transposed_convolution_and_transpose_of_toeplitz():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(1, 1, 8)), requires_grad=True)
    w = torch.tensor(rng.normal(size=(1, 1, 3)))
    g = torch.tensor(rng.normal(size=(1, 1, 6)))
    F.conv1d(x, w).backward(g)
    np.testing.assert_allclose(x.grad, F.conv_transpose1d(g, w), atol=1e-12)
    t = toeplitz(w.numpy().ravel(), 8)
    np.testing.assert_allclose(x.grad.numpy().ravel(), t.T @ g.numpy().ravel(), atol=1e-12)
    grad_x, grad_w = np_conv1d_backward(
        x.detach().numpy().ravel(), w.numpy().ravel(), g.numpy().ravel()
    )
    np.testing.assert_allclose(grad_x, x.grad.numpy().ravel(), atol=1e-12)


def test_finite_differences_agree_with_both_gradients():
    rng = np.random.default_rng(42)
    x, w = rng.normal(size=8), rng.normal(size=3)
    g = rng.normal(size=6)
    grad_x, grad_w = np_conv1d_backward(x, w, g)
    eps = 1e-6

    def loss(xx, ww):
        return float(np.dot(np_conv1d(xx, ww), g))

    num_w = [(loss(x, w + eps * e) - loss(x, w - eps * e)) / (2 * eps) for e in np.eye(3)]
    num_x = [(loss(x + eps * e, w) - loss(x - eps * e, w)) / (2 * eps) for e in np.eye(8)]
    np.testing.assert_allclose(grad_w, num_w, atol=1e-7)
    np.testing.assert_allclose(grad_x, num_x, atol=1e-7)
    xt = torch.tensor(x[None, None], requires_grad=True)
    wt = torch.tensor(w[None, None], requires_grad=True)
    F.conv1d(xt, wt).backward(torch.tensor(g[None, None]))
    np.testing.assert_allclose(wt.grad.numpy().ravel(), num_w, atol=1e-7)


# --------------------------------------------------------------------------- causal layers


def test_causal_conv_pads_left_only_and_equals_seed_pad_and_trim():
    torch.manual_seed(0)
    ours = CausalConv1d(3, 4, 3, dilation=2)
    seed = nn.Conv1d(3, 4, 3, dilation=2, padding=4)
    seed.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 30)
    np.testing.assert_allclose(ours(x).detach(), seed(x)[:, :, :-4].detach(), atol=1e-6)
    assert ours(x).shape == (2, 4, 30)


@pytest.mark.parametrize("k,d", [(1, 1), (3, 1), (3, 4), (2, 8)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_im2col_path_equals_conv1d_in_values_and_gradients(k, d, layout):
    """On CPU CausalConv1d runs as windows times weights (im2col), for contiguous and
    channels-last inputs; it must be the same function, with the same gradients, as F.conv1d
    on the left-padded input."""
    torch.manual_seed(k + d)
    conv = CausalConv1d(5, 6, k, dilation=d)
    base = torch.randn(3, 40, 5) if layout == "channels_last" else torch.randn(3, 5, 40)
    x = (base.transpose(1, 2) if layout == "channels_last" else base).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    out = conv(x)
    ref = F.conv1d(F.pad(ref_x, ((k - 1) * d, 0)), conv.weight, conv.bias, dilation=d)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.shape == (3, 6, 40) and out.stride()[1] == 1  # channels-last view
    g = torch.randn_like(ref)
    (wa,) = torch.autograd.grad(out, conv.weight, g, retain_graph=True)
    out.backward(g)
    (wb,) = torch.autograd.grad(ref, conv.weight, g, retain_graph=True)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wa, wb, atol=1e-5, rtol=1e-5)


def test_weight_norm_is_the_parametrization():
    block = build_model(model_config(channels=4, layers=1), 2).blocks[0]
    assert nn.utils.parametrize.is_parametrized(block.conv1, "weight")
    assert not nn.utils.parametrize.is_parametrized(
        build_model(model_config(channels=4, layers=1, weight_norm=False), 2).blocks[0].conv1
    )


def test_wavenet_stack_receptive_field_1024():
    assert tcn_receptive_field(kernel_size=2, layers=10, convs_per_block=1) == 1024
    stack = nn.Sequential(*[CausalConv1d(1, 1, 2, dilation=2**i) for i in range(10)])
    assert empirical_rf(stack, 1, 1200) == 1024


def test_tcn_receptive_field_is_1021_not_the_seeds_511():
    # The seed adds one convolution per block: 1 + 2*(1+...+128) = 511. Each TCN block has two
    # dilated convolutions, so the field grows twice as fast: 1 + 2*2*(2^8 - 1) = 1021.
    assert tcn_receptive_field(3, 8, 2) == 1021
    assert receptive_field(model_config(kind="tcn", channels=64, layers=8, kernel_size=3)) == 1021
    model = TCN(2, [4] * 8, 3, 2, dropout=0.0)
    assert empirical_rf(model, 2, 1400) == 1021


def open_relus(model: nn.Module) -> nn.Module:
    """Positive weights (and, by the caller, positive inputs) keep every ReLU open, so that no
    path through the network is cut by a dead unit when we probe which inputs matter."""
    model.eval().double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(0.01)
    return model


def empirical_rf(model: nn.Module, channels: int, length: int) -> int:
    """Count the inputs whose gradient reaches the last output. Positive weights and inputs keep
    every ReLU open, so no path is cut by a dead unit."""
    open_relus(model)
    x = torch.rand(1, channels, length, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, -1].backward()
    touched = (x.grad[0].abs().sum(0) != 0).nonzero()
    return int(length - touched.min())


def test_seed_multiscale_extractor_shape_and_leak():
    ms = random_head(MultiScaleConv1d(6, hidden=32, kernels=(3, 5, 21), causal=False))
    assert ms.features(torch.randn(16, 6, 252)).shape == (16, 96, 252)
    # Symmetric padding: output t changes when input t+10 changes -> it sees the future.
    ms.eval()
    x = torch.randn(1, 6, 60)
    y = x.clone()
    y[0, :, 40] += 1.0
    assert not torch.allclose(ms(x)[..., 30], ms(y)[..., 30])
    causal = random_head(MultiScaleConv1d(6, hidden=32, kernels=(3, 5, 21))).eval()
    assert causal.features(torch.randn(16, 6, 252)).shape == (16, 96, 252)
    torch.testing.assert_close(causal(x)[..., :40], causal(y)[..., :40])


@pytest.mark.parametrize("kind,mix", [("tcn", 0), ("multiscale", 0), ("multiscale", 5)])
def test_untrained_model_is_the_zero_forecast_and_still_learns(kind, mix):
    torch.manual_seed(0)
    model = build_model(model_config(kind=kind, channels=4, layers=2, dropout=0.0, mix=mix), 3)
    x, y = torch.randn(8, 3, 40), torch.randn(8, 1, 40)
    assert torch.all(model(x) == 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    before = [p.detach().clone() for p in body]
    for _ in range(2):  # step 1 moves the head off zero, step 2 reaches the body
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert model(x).abs().sum() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, body, strict=True))


def test_tcn_predicts_every_step_and_counts_parameters():
    model = build_model(model_config(channels=64, layers=8), 8)
    assert model(torch.randn(2, 8, 256)).shape == (2, 1, 256)
    # Weight norm adds a gain per output channel (g) to each conv: 64 per conv, 16 convs.
    plain = build_model(model_config(channels=64, layers=8, weight_norm=False), 8)
    assert count_parameters(model) - count_parameters(plain) == 64 * 16
    conv = 64 * 64 * 3 + 64
    first = (8 * 64 * 3 + 64) + conv + (8 * 64 + 64)
    assert count_parameters(plain) == first + 7 * 2 * conv + (64 + 1)


def test_multiscale_parameters_with_and_without_the_mixing_layer():
    # seed shape: 3 branches of Conv1d(8 -> 32, k) + BatchNorm (weight, bias), then Conv1d(96 -> 1)
    branches = sum(8 * 32 * k + 32 + 2 * 32 for k in (3, 5, 21))
    seed = build_model(model_config(kind="multiscale", channels=32), 8)
    assert count_parameters(seed) == branches + 96 + 1
    mixed = build_model(model_config(kind="multiscale", channels=32, mix=64), 8)
    assert count_parameters(mixed) == branches + (96 * 64 + 64 + 2 * 64) + 64 + 1
    assert mixed(torch.randn(2, 8, 64)).shape == (2, 1, 64)


CAUSAL_KINDS = [
    model_config(kind="tcn", channels=4, layers=3, kernel_size=3, dropout=0.0),
    model_config(kind="tcn", channels=4, layers=2, kernel_size=2, dilation_base=3, dropout=0.0),
    model_config(kind="multiscale", channels=4, kernels=[3, 5, 21]),
    model_config(kind="multiscale", channels=4, kernels=[3, 5, 21], mix=6),
]


@pytest.mark.parametrize(
    "cfg", CAUSAL_KINDS, ids=["tcn-k3", "tcn-k2-b3", "multiscale", "multiscale-mix"]
)
@settings(max_examples=15, deadline=None)
@given(t=st.integers(0, 59), seed=st.integers(0, 2**16))
def test_causality_under_future_perturbation(cfg, t, seed):
    torch.manual_seed(seed)
    model = random_head(build_model(cfg, 3), seed).eval()
    x = torch.randn(2, 3, 60)
    y = x.clone()
    y[:, :, t + 1 :] += torch.randn_like(y[:, :, t + 1 :]) * 5
    with torch.no_grad():
        torch.testing.assert_close(model(x)[..., : t + 1], model(y)[..., : t + 1])


@pytest.mark.parametrize(
    "cfg",
    CAUSAL_KINDS[:2]
    + [
        model_config(kind="multiscale", channels=4, kernels=[3, 7]),
        model_config(kind="multiscale", channels=4, kernels=[3, 7], mix=5),
    ],
)
def test_receptive_field_is_tight(cfg):
    torch.manual_seed(0)
    model = open_relus(build_model(cfg, 2))
    rf, t = receptive_field(cfg), 80
    x = torch.rand(1, 2, t + 1, dtype=torch.float64)
    base = model(x)[0, 0, t]
    far, near = x.clone(), x.clone()
    far[0, :, t - rf] += 10.0  # just outside the field
    near[0, :, t - rf + 1] += 10.0  # the oldest input inside it
    with torch.no_grad():
        assert model(far)[0, 0, t] == base
        assert model(near)[0, 0, t] != base


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_models_run_on_cuda():
    for cfg in CAUSAL_KINDS:
        model = random_head(build_model(cfg, 3)).eval()
        x = torch.randn(2, 3, 50)
        with torch.no_grad():
            cpu = model(x)
            gpu = model.to("cuda")(x.to("cuda")).cpu()
        torch.testing.assert_close(cpu, gpu, atol=1e-4, rtol=1e-4)
    drop = Dropout(0.3).train()
    out = drop(torch.ones(100_000, device="cuda"))
    assert abs((out == 0).float().mean().item() - 0.3) < 0.01


# --------------------------------------------------------------------------- highway


@pytest.mark.parametrize("kind", ["tcn", "multiscale"])
def test_highway_is_the_ridge_forecast_on_top_of_the_network(kind):
    """Output = network + sum over lags j and features f of coef[j, f] * x[f, t - j]: the
    ridge forecast, so a model whose network is still at its zero head is it. The weights
    are buffers, fitted before training and never trained."""
    cfg = model_config(
        kind=kind, channels=4, layers=1, kernels=[3], highway=True, highway_lags=6, dropout=0.0
    )
    model = build_model(cfg, 3).eval()
    assert model.receptive_field == receptive_field(cfg) == 6  # the highway reaches further
    coef = np.random.default_rng(1).normal(size=(6, 3))
    model.highway.set_ridge(coef, penalty=0.5)
    assert model.highway.reach() == 6 and float(model.highway.penalty) == 0.5
    assert not any(p is model.highway.weight for p in model.parameters())
    x = torch.randn(2, 3, 40)
    with torch.no_grad():
        out = model(x)[:, 0].numpy()
    for i in range(2):
        xi = x[i].T.numpy()
        expected = [sum(coef[j] @ xi[t - j] for j in range(6)) for t in range(5, 40)]
        np.testing.assert_allclose(out[i, 5:], expected, rtol=1e-4, atol=1e-5)
    # a prediction's bits do not depend on the batch's length or rows
    with torch.no_grad():
        alone = model.highway(x[1:, :, 10:30])
    assert torch.equal(alone[0, 0, 5:], model.highway(x)[1, 0, 15:30])
    model.highway.set_ridge(np.zeros((6, 3)), penalty=100.0)
    assert model.highway.reach() == 0


def test_highway_loads_weights_saved_as_a_convolution():
    """model.pt files from before the highway became a fixed ridge held `highway.conv.weight`."""
    cfg = model_config(kind="tcn", channels=4, layers=1, highway=True, highway_lags=3)
    model = build_model(cfg, 2)
    state = model.state_dict()
    state["highway.conv.weight"] = torch.ones(1, 2, 3)
    del state["highway.weight"]
    model.load_state_dict(state)
    assert torch.equal(model.highway.weight, torch.ones(1, 2, 3))


def test_highway_loads_weights_saved_before_the_hinge_down_at_zero():
    """model.pt files from before the hinge max(-z, 0) held five hinges a feature: they load
    with the new hinge's weight zero and forecast as before."""
    cfg = model_config(kind="tcn", channels=4, layers=1, highway=True, highway_lags=3)
    model = build_model(cfg, 2)
    state = model.state_dict()
    old = torch.arange(10.0).reshape(2, 5)
    state["highway.hinge"] = old
    model.load_state_dict(state)
    assert torch.equal(model.highway.hinge, torch.cat([old, torch.zeros(2, 1)], 1))


def test_highway_reach_defaults_to_the_networks():
    tcn = model_config(kind="tcn", layers=4, kernel_size=3, highway=True)
    assert build_model(tcn, 2).highway.lags == receptive_field(tcn) == 61
    ms = model_config(kind="multiscale", kernels=[3, 5, 21], highway=True)
    assert build_model(ms, 2).highway.lags == receptive_field(ms) == 21


def test_weight_norm_is_torchs_to_the_bit_and_survives_a_vanished_direction():
    """tsconv's weight norm computes torch's function and gradients bit for bit; a channel
    whose direction v has shrunk until its squares underflow (a dead channel under weight
    decay) stays finite instead of 0 / 0."""
    from tsconv.models.layers import maybe_weight_norm

    torch.manual_seed(0)
    ref = nn.utils.parametrizations.weight_norm(CausalConv1d(8, 16, 3))
    ours = maybe_weight_norm(CausalConv1d(8, 16, 3), True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 8, 50)
    out_ref, out = ref(x), ours(x)
    assert torch.equal(out, out_ref)
    out_ref.square().sum().backward()
    out.square().sum().backward()
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    with torch.no_grad():
        for conv in (ref, ours):
            conv.parametrizations.weight.original1[3].mul_(1e-25)
    assert not torch.isfinite(ref(x)).all()  # torch's: v * (g / 0)
    ours.zero_grad()
    out = ours(x)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


def test_weight_decay_that_kills_channels_does_not_end_the_fit_in_nan():
    """Found at 500 tickers: `quick`'s 4,000-step folds decayed dead channels' directions to
    zero and the loss became NaN. The same in 600 steps with a strong decay."""
    from tests.conftest import tiny_config
    from tsconv.recipes.fit_span import fit_span
    from tsconv.recipes.prepare import prepare

    cfg = tiny_config(train={"epochs": 2, "min_steps": 600, "lr": 0.02, "weight_decay": 40.0})
    rows = {"MSFT": (0, 800)}, {"MSFT": (800, 1000)}
    _, _, _, result = fit_span(prepare(cfg), *rows, seed=0, device=torch.device("cpu"))
    assert result.steps == 600 and all(np.isfinite(h["train_loss"]) for h in result.history)
