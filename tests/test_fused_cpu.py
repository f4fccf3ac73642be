"""The Philox dropout kernel for CPU training (tsconv/models/fused_cpu.c): known answers,
the masks' statistics, its agreement with ReLU-then-mask, and how it is built and replaced."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tsconv.models import fused_cpu


@pytest.fixture
def kernel(fused_kernel):
    return fused_kernel


# Random123's known-answer vectors for Philox4x32-10 (kat_vectors): counter, key, output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_matches_the_published_known_answers(kernel, counter, key, expected):
    assert kernel.philox4x32_10(counter, key) == expected


def test_mask_bits_are_the_philox_words_in_the_documented_order(kernel):
    """Element i takes a 16-bit half of counter (i // 512) * 64 + i % 64 with half index
    (i % 512) // 64 (word // 2, low half first), stream in the third counter word."""
    key, stream, drop = 0x0123456789ABCDEF, 1, 32768  # keep exactly the lanes >= 2**15
    keep = kernel.keep_flags(1500, drop, key, stream)
    for i in (0, 1, 63, 64, 65, 200, 511, 512, 1000, 1499):
        q, r = divmod(i, 512)
        half = r // 64
        words = kernel.philox4x32_10((q * 64 + r % 64, 0, stream, 0), (key & 0xFFFFFFFF, key >> 32))
        bits = (words[half // 2] >> (16 * (half % 2))) & 0xFFFF
        assert keep[i].item() == float(bits >= drop), i


@pytest.mark.parametrize("n", [0, 1, 511, 512, 513, 4097])
def test_relu_dropout_is_relu_then_the_keep_mask(kernel, n):
    """Full and partial chunks alike; NaN passes through (as clamp_min then mul would give),
    infinities and signed zeros behave as ReLU then mask."""
    torch.manual_seed(0)
    y = torch.randn(n)
    if n > 10:
        y[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1e-30])
    drop = fused_cpu.drop_threshold(0.3)
    expected = y.clamp_min(0).mul_(fused_cpu.keep_flags(n, drop, 99, 0))
    out = kernel.relu_dropout_(y.clone(), drop, 99, 0)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("rows,channels", [(7, 3), (33, 48), (64, 64), (50, 100), (1, 1)])
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_block_epilogue_is_bias_relu_dropout_then_residual_relu(kernel, rows, channels, p):
    """Every channel count (whether or not it divides the kernel's 512-element chunks) gets its
    own bias; the residual output is relu(a + residual) of the dropped activation a."""
    torch.manual_seed(rows * channels)
    y, res = torch.randn(rows, channels), torch.randn(rows, channels)
    bias = torch.randn(channels)
    drop = fused_cpu.drop_threshold(p)
    keep = fused_cpu.keep_flags(rows * channels, drop, 7, 1).view(rows, channels)
    a = (y + bias).clamp_min(0) * keep
    got = y.clone()
    out, masks = kernel.block_epilogue_(got, bias, drop, 7, 1, res)
    torch.testing.assert_close(got, a, rtol=0, atol=0)
    torch.testing.assert_close(out, (a + res).clamp_min(0), rtol=0, atol=0)
    assert torch.equal(masks, torch.stack([a > 0, out > 0]).to(torch.uint8))
    assert kernel.block_epilogue_(y.clone(), bias, drop, 7, 1) is None


def test_block_grads_are_the_two_threshold_backwards(kernel):
    """The byte masks give the gradients threshold_backward gives from the float tensors,
    with NaN activations counted as open and NaN or inf gradients zeroed where closed."""
    torch.manual_seed(0)
    y, res, gout = torch.randn(3, 40, 8).unbind(0)
    y[0, :4] = torch.tensor([float("nan"), -0.0, 0.0, float("inf")])
    gout[1, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    a2 = y.clone()
    out, masks = kernel.block_epilogue_(a2, None, 0, 0, 1, res)
    g, g2 = kernel.block_grads(gout, masks)
    expected_g = torch.ops.aten.threshold_backward(gout, out, 0)
    expected_g2 = torch.ops.aten.threshold_backward(expected_g, a2, 0)
    torch.testing.assert_close(g, expected_g, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(g2, expected_g2, rtol=0, atol=0, equal_nan=True)


def test_masks_do_not_depend_on_the_thread_count(kernel):
    """Counter-based: element i's bits are a function of (key, stream, i) alone."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.keep_flags(100_003, 13107, 5, 0)
        torch.set_num_threads(max(2, before))
        many = kernel.keep_flags(100_003, 13107, 5, 0)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


def test_keys_and_streams_give_independent_masks(kernel):
    n, p = 200_000, 0.3
    drop = fused_cpu.drop_threshold(p)
    a = kernel.keep_flags(n, drop, 1, 0)
    assert torch.equal(a, kernel.keep_flags(n, drop, 1, 0))
    for other in (kernel.keep_flags(n, drop, 2, 0), kernel.keep_flags(n, drop, 1, 1)):
        both_dropped = ((a == 0) & (other == 0)).double().mean().item()
        assert abs(both_dropped - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)


def test_every_lane_position_drops_at_p_and_neighbours_are_independent(kernel):
    """Each of the 8 half-words of a chunk, and each counter, must drop at the same rate; the
    two halves of one word (elements 64 apart) and adjacent counters must be independent."""
    p, chunks = 0.2, 2000
    keep = kernel.keep_flags(512 * chunks, fused_cpu.drop_threshold(p), 42, 0)
    dropped = (keep.view(chunks, 8, 64) == 0).double()
    sd = math.sqrt(p * (1 - p) / (chunks * 64))
    assert torch.all((dropped.mean((0, 2)) - p).abs() < 5 * sd)
    sd_pair = math.sqrt(p * p * (1 - p * p) / (chunks * 4 * 64))
    same_word = (dropped[:, 0::2] * dropped[:, 1::2]).mean().item()
    assert abs(same_word - p * p) < 5 * sd_pair
    adjacent = (dropped[:, :, :-1] * dropped[:, :, 1:]).mean().item()
    assert abs(adjacent - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / (chunks * 8 * 63))


def test_drop_rate_is_p_quantised_to_16_bits(kernel):
    for p in (0.05, 0.5, 0.9):
        n = 1_000_000
        rate = (kernel.keep_flags(n, fused_cpu.drop_threshold(p), 3, 0) == 0).double().mean()
        assert abs(rate.item() - round(p * 65536) / 65536) < 5 * math.sqrt(p * (1 - p) / n)


def test_the_kernel_refuses_tensors_it_cannot_write_in_place(kernel):
    with pytest.raises(ValueError, match="float32 CPU"):
        kernel.relu_dropout_(torch.ones(10, dtype=torch.float64), 100, 1, 0)
    with pytest.raises(ValueError, match="contiguous"):
        kernel.relu_dropout_(torch.ones(10, 4).t(), 100, 1, 0)
    with pytest.raises(ValueError, match="one value per channel"):
        kernel.block_epilogue_(torch.ones(10, 4), torch.ones(3), 0, 1, 0)
    with pytest.raises(ValueError, match="residual must"):
        kernel.block_epilogue_(torch.ones(10, 4), None, 0, 1, 0, torch.ones(10, 3))


# --------------------------------------------------------------------------- building it


def test_the_library_is_compiled_once_into_the_cache_and_reused(tmp_path, monkeypatch):
    if fused_cpu.compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(fused_cpu, "_status", fused_cpu._status)
    monkeypatch.setenv("TSCONV_CACHE", str(tmp_path))
    monkeypatch.delenv("TSCONV_CPU_KERNEL", raising=False)
    assert fused_cpu._load() is not None
    built = list(tmp_path.glob("fused_cpu-*"))
    assert len(built) == 1 and "compiled" in fused_cpu._status
    mtime = built[0].stat().st_mtime_ns
    assert fused_cpu._load() is not None
    assert "cached" in fused_cpu._status
    assert built[0].stat().st_mtime_ns == mtime
    assert list(tmp_path.glob("*.tmp")) == []


def test_an_unwritable_cache_falls_back_to_a_private_temporary_folder(tmp_path, monkeypatch):
    if fused_cpu.compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(fused_cpu, "_status", fused_cpu._status)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TSCONV_CACHE", str(tmp_path / "a-file" / "cache"))  # cannot be made
    monkeypatch.setattr(fused_cpu.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.delenv("TSCONV_CPU_KERNEL", raising=False)
    assert fused_cpu._load() is not None
    assert len(list((tmp_path / "tmp").glob("tsconv-*/fused_cpu-*"))) == 1


def test_a_damaged_cached_library_is_rebuilt(tmp_path, monkeypatch):
    """A cached build that does not load (here: garbage where it should be) is compiled again
    instead of leaving this machine on the slow route for good."""
    if fused_cpu.compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(fused_cpu, "_status", fused_cpu._status)
    monkeypatch.delenv("TSCONV_CPU_KERNEL", raising=False)
    monkeypatch.setenv("TSCONV_CACHE", str(tmp_path / "good"))
    assert fused_cpu._load() is not None
    (built,) = (tmp_path / "good").glob("fused_cpu-*")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / built.name).write_bytes(b"not a shared library")
    monkeypatch.setenv("TSCONV_CACHE", str(tmp_path / "bad"))
    dll = fused_cpu._load()
    assert dll is not None and fused_cpu._status.startswith("compiled with")
    assert (tmp_path / "bad" / built.name).read_bytes() != b"not a shared library"


@pytest.mark.parametrize(
    "env,reason",
    [
        ({"TSCONV_CPU_KERNEL": "0"}, "disabled by TSCONV_CPU_KERNEL=0"),
        ({"CC": "/nonexistent/cc"}, "no C compiler found"),
        ({"CC": "{failing_cc}"}, "compiling fused_cpu.c with"),
    ],
)
def test_without_the_kernel_loading_says_why(tmp_path, monkeypatch, env, reason):
    failing_cc = tmp_path / "cc"
    failing_cc.write_text("#!/bin/sh\nexit 1\n")
    failing_cc.chmod(0o755)
    monkeypatch.setattr(fused_cpu, "_status", fused_cpu._status)
    monkeypatch.setenv("TSCONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TSCONV_CPU_KERNEL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(failing_cc=failing_cc))
    assert fused_cpu._load() is None
    assert reason in fused_cpu._status
    assert list((tmp_path / "cache").glob("*")) == []  # nothing half-built left behind


def test_training_without_the_kernel_uses_numpy_masks_and_records_it(tmp_path):
    """A machine without a compiler (TSCONV_CPU_KERNEL=0 stands in for one) still trains,
    with the numpy masks, and the run's versions.json says which generator ran."""
    script = (
        "import json, sys, torch\n"
        "from tsconv import io\n"
        "from tsconv.models import fused_cpu\n"
        "from tsconv.models.tcn import TCN\n"
        "torch.manual_seed(0)\n"
        "m = TCN(3, [8, 8], dropout=0.3).train()\n"
        "m(torch.randn(4, 3, 40)).sum().backward()\n"
        "print(json.dumps([fused_cpu.available(), io.run_info(0, torch.device('cpu'))]))\n"
    )
    env = {**os.environ, "TSCONV_CPU_KERNEL": "0", "TSCONV_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    available, info = json.loads(done.stdout)
    assert available is False
    assert (
        info["cpu_kernel"]
        == "torch operations, numpy SFC64 dropout (disabled by TSCONV_CPU_KERNEL=0)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing compiled
