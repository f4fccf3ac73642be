"""CUDA code paths: device selection, batches gathered on the GPU, AMP (bf16, and float16 with
loss scaling), reproducibility, CPU/GPU agreement and a whole backtest from the CLI.

Skipped on machines without a GPU (CI has none); run them where one is lent:
`python -m pytest tests/test_cuda.py`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import random_head, tiny_config
from tests.test_predict import random_panel
from tests.test_train import resume_cut_run, train_cut_after_epoch_2
from tsconv.cli import app
from tsconv.engine import cuda_graphs
from tsconv.engine import fit as train_module
from tsconv.engine import predict as engine_predict
from tsconv.engine.predict import predict_rows
from tsconv.engine.runtime import select_device
from tsconv.engine.windows import WindowDataset
from tsconv.models.fast.multiscale import FastDropoutMultiScaleConv1d
from tsconv.models.fast.tcn import TimeMajorTCN
from tsconv.recipes.fit_span import fit_span
from tsconv.recipes.prepare import prepare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def _fit(cfg, seed: int = 0):
    prep = prepare(cfg)
    return fit_span(prep, {"MSFT": (0, 600)}, {"MSFT": (600, 800)}, seed=seed, device=CUDA)


def test_auto_selects_cuda_and_turns_tf32_off():
    torch.backends.cudnn.allow_tf32 = True
    assert select_device("auto").type == "cuda"
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


@pytest.mark.parametrize("mode", ["all", "last"])
def test_batches_gathered_on_the_gpu_equal_the_cpu_ones(mode):
    panel = random_panel([300, 200])
    ds = WindowDataset(panel, [(0, 0, 300), (1, 20, 200)], 32, mode, 8)
    gpu = ds.to(CUDA)
    idx = torch.randperm(len(ds))[:50]
    for a, b in zip(ds.batch(idx), gpu.batch(idx), strict=True):
        assert b.device.type == "cuda"
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=0, equal_nan=True)


def test_same_seed_gives_identical_weights_on_cuda():
    cfg = tiny_config(model={"dropout": 0.2}, train={"epochs": 2, "device": "cuda"})
    a, b, c = _fit(cfg)[0], _fit(cfg)[0], _fit(cfg, seed=1)[0]
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("kind", ["tcn", "multiscale"])
def test_gpu_and_cpu_predictions_agree_to_float32_precision(kind):
    select_device("cuda")
    torch.manual_seed(0)
    model = (
        TimeMajorTCN(3, [16, 16, 16], 3, 2)
        if kind == "tcn"
        else FastDropoutMultiScaleConv1d(3, 8, (3, 5, 21))
    )
    model = random_head(model).eval()
    panel = random_panel([500])
    rows = torch.arange(100, 500)
    cpu = predict_rows(model, panel, rows, 40, torch.device("cpu"))
    gpu = predict_rows(model, panel, rows, 40, CUDA)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_amp_trains_in_both_half_types_with_loss_scaling_for_float16(monkeypatch, half):
    built = []

    class SpyScaler(torch.amp.GradScaler):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            built.append(self)

    for module in (train_module, cuda_graphs, engine_predict):  # each binds its own name
        monkeypatch.setattr(module, "amp_dtype", lambda device: half)
    monkeypatch.setattr(torch.amp, "GradScaler", SpyScaler)
    cfg = tiny_config(train={"epochs": 2, "device": "cuda", "amp": True})
    model, _, _, result = _fit(cfg)
    assert built and built[0].is_enabled() == (half == torch.float16)
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.5


def test_backtest_cli_on_cuda_writes_a_complete_run(tmp_path):
    out = tmp_path / "bt"
    args = ["backtest", "--config", str(ROOT / "configs/quick.yaml"), "--out", str(out)]
    for override in ["train.device=auto", "train.epochs=2", "data.tickers=[MSFT]"]:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "versions.json").read_text())
    assert run["device"].startswith("cuda") and run["gpu"] == torch.cuda.get_device_name()
    assert json.loads((out / "metrics.json").read_text())["n_predictions"] > 0
    assert np.isfinite(pd.read_parquet(out / "predictions.parquet")["prediction"]).all()


# --------------------------------------------------------------------------- CUDA graphs


@pytest.mark.parametrize("highway", [False, True])
def test_graphed_training_equals_eager_training_without_dropout(monkeypatch, highway):
    """With dropout off the graphed step must compute exactly what the eager one does,
    including the smaller last batch of each epoch (21 sequences, batches of 16), which runs
    eagerly, and the highway's ridge penalty, added to the loss outside the graph."""
    captures = []
    capture = torch.cuda.make_graphed_callables

    def counting(*args, **kw):
        captures.append(args[0])
        return capture(*args, **kw)

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", counting)
    model = {"highway": highway}
    _fit(tiny_config(train={"epochs": 2, "device": "cuda", "batch_size": 16}, model=model))
    assert not captures  # 2 full batches: too few for a capture to pay off
    monkeypatch.setattr(train_module, "GRAPH_MIN_STEPS", 1)
    graphs = tiny_config(train={"epochs": 2, "device": "cuda", "batch_size": 16}, model=model)
    eager = tiny_config(
        train={"epochs": 2, "device": "cuda", "batch_size": 16, "cuda_graphs": False},
        model=model,
    )
    a, _, _, ra = _fit(graphs)
    assert len(captures) == 1 and "forward" not in vars(a)  # eager forward back after training
    b, _, _, rb = _fit(eager)
    assert len(captures) == 1
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-4, atol=1e-6)
    assert ra.history[-1]["train_loss"] == pytest.approx(rb.history[-1]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("kind", ["tcn", "multiscale"])
def test_graphed_steps_replay_with_fresh_dropout_and_leave_eval_eager(kind):
    from tsconv.engine.cuda_graphs import graphed_steps

    torch.manual_seed(0)
    model = (
        TimeMajorTCN(3, [8, 8], 3, 2, dropout=0.3)
        if kind == "tcn"
        else FastDropoutMultiScaleConv1d(3, 4, (3, 5))
    )
    model = random_head(model).to(CUDA)
    ds = WindowDataset(random_panel([1000]), [(0, 0, 1000)], 32, "all", 8).to(CUDA)
    x = ds.batch(torch.arange(16))[0]
    with graphed_steps(model, ds, 16, False, CUDA, True) as graphed:
        assert graphed and "forward" in vars(model)
        model.train()
        # A replay writes into the graph's static output: keep a copy of the first one.
        first = model(x).detach().clone()
        second = model(x)
        assert first.shape == (16, 1, 32) and torch.isfinite(first).all()
        if kind == "tcn":
            assert not torch.equal(first, second)  # new dropout masks on each replay
        second.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        model.eval()
        with torch.no_grad():
            inside = model(x)
    assert "forward" not in vars(model)
    with torch.no_grad():
        torch.testing.assert_close(inside, model.eval()(x))


def test_graphs_are_skipped_without_a_full_batch():
    from tsconv.engine.cuda_graphs import graphed_steps

    model = TimeMajorTCN(3, [4], 3, 2).to(CUDA)
    ds = WindowDataset(random_panel([40]), [(0, 0, 40)], 32, "all", 8).to(CUDA)
    with graphed_steps(model, ds, 64, False, CUDA, True) as graphed:
        assert not graphed and "forward" not in vars(model)


@pytest.mark.parametrize("kind, graphs", [("tcn", False), ("tcn", True), ("multiscale", True)])
def test_interrupted_gpu_run_with_dropout_resumes_to_the_same_weights(
    tmp_path, monkeypatch, kind, graphs
):
    """The CUDA generator's state is saved with the others, and a capture's warm-up passes
    shift neither it nor BatchNorm's running statistics, so the resumed run draws the same
    dropout masks and keeps the same statistics as the whole one."""
    monkeypatch.setattr(train_module, "GRAPH_MIN_STEPS", 1)
    train = {"epochs": 4, "device": "cuda", "batch_size": 16, "cuda_graphs": graphs}
    model = {"dropout": 0.2} if kind == "tcn" else {"kind": kind, "kernels": [3, 5], "dropout": 0.2}
    train_cut_after_epoch_2(tmp_path, tiny_config(train=train, model=model))
    full, resumed = resume_cut_run(tmp_path)
    differ = {
        k: (full[k] - resumed[k]).abs().max().item()
        for k in full
        if not torch.equal(full[k], resumed[k])
    }
    assert not differ, differ


def test_graph_capture_leaves_batchnorm_statistics_and_the_generator_as_they_were():
    from tsconv.engine.cuda_graphs import graphed_steps

    torch.manual_seed(0)
    model = FastDropoutMultiScaleConv1d(3, 4, (3, 5), dropout=0.2).to(CUDA)
    ds = WindowDataset(random_panel([1000]), [(0, 0, 1000)], 32, "all", 8).to(CUDA)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    rng = torch.cuda.get_rng_state()
    with graphed_steps(model, ds, 16, False, CUDA, True) as graphed:
        assert graphed
        assert torch.equal(torch.cuda.get_rng_state(), rng)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
        model(ds.batch(torch.arange(16))[0])  # a replay does update them, as training should
        assert not all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


@pytest.mark.parametrize("kind", ["tcn", "multiscale"])
def test_members_together_on_the_gpu_follow_their_own_fits(kind):
    """`train.grouped_members` on CUDA, its steps replayed as CUDA graphs (160 steps): each
    member's validation losses as in its own fit on the GPU, to float rounding."""
    from tsconv.recipes.fit_span import fit_span_members, member_seed

    model = {"kind": kind, "highway": True}
    if kind == "multiscale":
        model |= {"channels": 8, "kernels": [3, 5], "mix": 4}
    cfg = tiny_config(
        model=model, train={"device": "cuda", "epochs": 4, "min_steps": 160, "patience": 0}
    )
    prep = prepare(cfg)
    rows = {"MSFT": (0, 600)}, {"MSFT": (600, 800)}
    seeds = [member_seed(0, m) for m in range(3)]
    alone = [fit_span(prep, *rows, seed=s, device=CUDA)[3] for s in seeds]
    together = fit_span_members(prep, *rows, seeds=seeds, device=CUDA)[3]
    for want, got in zip(alone, together, strict=True):
        assert got.steps == want.steps >= 160
        np.testing.assert_allclose(
            [h["val_loss"] for h in got.history], [h["val_loss"] for h in want.history], rtol=1e-3
        )
