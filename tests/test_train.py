"""Training: learning works, runs are reproducible and resumable, outputs load safely."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import (
    ar1_returns,
    ohlcv_from_returns,
    random_head,
    random_walk_returns,
    tiny_config,
)
from tsconv.cli import app
from tsconv.config import load_config
from tsconv.engine import checkpoint
from tsconv.engine.fit import steps_per_epoch
from tsconv.engine.predict import predict_rows
from tsconv.engine.runtime import rng_state, select_device, set_rng_state
from tsconv.engine.windows import dense_sequence, fit_sequence
from tsconv.errors import CheckpointError, TrainingError
from tsconv.models.fast.tcn import TimeMajorBlock, TimeMajorTCN
from tsconv.recipes.fit_span import fit_span
from tsconv.recipes.prepare import global_rows, prepare
from tsconv.recipes.train import run_training

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
runner = CliRunner()


def test_ar1_model_reaches_r2_of_0_2_out_of_sample():
    # r[t+1] = 0.5 r[t] + e: the best achievable R^2 is phi^2 = 0.25.
    frame = ohlcv_from_returns(ar1_returns(3000, phi=0.5, seed=7))
    cfg = tiny_config(
        features=["log_return"],
        window=32,
        model={"channels": 8, "layers": 2},
        train={"epochs": 12, "lr": 0.005, "patience": 4, "batch_size": 16},
    )
    prep = prepare(cfg, {"AR": frame})
    model, scalers, panel, _ = fit_span(
        prep, {"AR": (0, 2000)}, {"AR": (2000, 2400)}, seed=0, device=torch.device("cpu")
    )
    rows = np.arange(2400, 2998)
    pred = (
        predict_rows(model, panel, global_rows(panel, "AR", rows), cfg.window, torch.device("cpu"))
        * scalers["AR"].y_scale
    )
    y = prep.data["AR"].y[rows]
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 >= 0.2, r2


def _train_quick(out: Path, *overrides: str):
    """`tsconv train` on configs/quick.yaml through the CLI, with `--set` overrides."""
    args = ["train", "--config", str(ROOT / "configs/quick.yaml"), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    return runner.invoke(app, args)


def test_train_cli_end_to_end_writes_a_complete_run(tmp_path):
    out = tmp_path / "run"
    result = _train_quick(out, "train.epochs=2", "data.tickers=[MSFT]")
    assert result.exit_code == 0, result.output
    assert "receptive field 61 steps" in result.output
    assert "dense targets on 120-bar sequences after a 60-bar burn-in" in result.output
    for name in [
        "model.pt",
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "loss.png",
        "versions.json",
        "manifest.json",
    ]:
        assert (out / name).exists(), name
    assert not (out / "state.pt").exists()
    payload = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert payload["feature_names"][0] == "log_return" and payload["receptive_field"] == 61
    assert set(payload["scalers"]) == {"MSFT"} and payload["versions"]["torch"] == torch.__version__
    history = pd.read_csv(out / "metrics.csv")
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["val_loss"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["seed"] == 0
    run = json.loads((out / "versions.json").read_text())
    assert run["seed"] == 0 and run["torch"] == torch.__version__
    assert run["device"] == str(select_device("auto"))  # quick.yaml says auto
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and "model.pt" in manifest["files"]
    assert load_config(out / "config.yaml").train.epochs == 2
    # predict from it
    pred = runner.invoke(app, ["predict", "--run", str(out), "--json"])
    assert pred.exit_code == 0, pred.output
    rows = json.loads(pred.stdout)
    assert rows[0]["ticker"] == "MSFT" and rows[0]["last_bar"] == "2013-03-01"
    assert np.isfinite(rows[0]["predicted_log_return"])


def _train(tmp_path: Path, name: str, cfg, **kw):
    return run_training(cfg, tmp_path / name, **kw)


def test_same_seed_gives_bit_identical_validation_loss(tmp_path):
    cfg = tiny_config(train={"epochs": 2})
    a = _train(tmp_path, "a", cfg)
    b = _train(tmp_path, "b", cfg)
    assert a["best_val_loss"] == b["best_val_loss"]
    pa = torch.load(tmp_path / "a/model.pt", weights_only=True)["state_dict"]
    pb = torch.load(tmp_path / "b/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    _train(tmp_path, "c", cfg.model_copy(update={"seed": 1}))
    pc = torch.load(tmp_path / "c/model.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_progress_hook_sees_every_step_of_every_epoch(tmp_path):
    steps = []
    cfg = tiny_config(train={"epochs": 2, "patience": 0, "batch_size": 4})
    run_training(cfg, tmp_path / "p", on_step=steps.append)
    assert [s["epoch"] for s in steps].count(1) == [s["epoch"] for s in steps].count(2) > 1
    ends = [s for s in steps if s["seen"] == s["of"]]
    assert [s["epoch"] for s in ends] == [1, 2]
    assert all(np.isfinite(s["loss"]) for s in steps)


def train_cut_after_epoch_2(tmp_path: Path, cfg) -> None:
    """Train `cfg` into tmp_path/full, then again into tmp_path/cut, interrupted (as by
    Ctrl-C) once epoch 2 is saved."""
    _train(tmp_path, "full", cfg)

    def interrupt(state):
        if state.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "cut", cfg, on_epoch_done=interrupt)


def resume_cut_run(tmp_path: Path) -> tuple[dict, dict]:
    """`tsconv train --resume` on tmp_path/cut; the final weights of the full and the resumed
    run."""
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut")])
    assert result.exit_code == 0, result.output
    full = torch.load(tmp_path / "full/model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "cut/model.pt", weights_only=True)["state_dict"]
    return full, resumed


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = tiny_config(train={"epochs": 4}, model={"dropout": 0.2})
    train_cut_after_epoch_2(tmp_path, cfg)
    assert (tmp_path / "cut/state.pt").exists() and not (tmp_path / "cut/model.pt").exists()
    assert len(pd.read_csv(tmp_path / "cut/metrics.csv")) == 2
    full, resumed = resume_cut_run(tmp_path)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    timings = ["seconds", "train_seconds", "samples_per_s"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full/metrics.csv").drop(columns=timings),
        pd.read_csv(tmp_path / "cut/metrics.csv").drop(columns=timings),
    )


def test_rng_state_round_trips_and_a_gpu_state_is_ignored_on_the_cpu():
    cpu, gen = torch.device("cpu"), torch.Generator().manual_seed(3)
    state = rng_state(gen, cpu)
    assert "cuda" not in state  # a CPU run has no device generator to save
    expected = (torch.rand(3), torch.rand(3, generator=gen), np.random.rand(), random.random())
    state["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as saved by a GPU run
    set_rng_state(state, gen, cpu)  # resuming that run on a CPU-only machine
    again = (torch.rand(3), torch.rand(3, generator=gen), np.random.rand(), random.random())
    assert all(torch.equal(a, b) for a, b in zip(expected[:2], again[:2], strict=True))
    assert expected[2:] == again[2:]


def test_ctrl_c_in_cli_exits_130(tmp_path, monkeypatch):
    import tsconv.recipes.train as experiment

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "fit_span", boom)
    result = _train_quick(tmp_path / "r")
    assert result.exit_code == 130 and "--resume" in result.output


def test_nan_loss_stops_with_a_message_naming_the_epoch():
    cfg = tiny_config(train={"lr": 1e30, "epochs": 3, "clip_grad": 0.0})
    prep = prepare(cfg)
    with pytest.raises(
        TrainingError, match=r"loss became (nan|inf) in epoch \d; try a lower train.lr"
    ):
        fit_span(
            prep, {"MSFT": (0, 1500)}, {"MSFT": (1600, 2000)}, seed=0, device=torch.device("cpu")
        )


def test_constant_price_series_trains_without_nan():
    frame = ohlcv_from_returns(np.zeros(400))
    frame[["open", "high", "low", "close", "adj_close"]] = 100.0
    frame["volume"] = 1000.0
    cfg = tiny_config(train={"epochs": 1})
    prep = prepare(cfg, {"FLAT": frame})
    _, scalers, _, result = fit_span(
        prep, {"FLAT": (0, 300)}, {"FLAT": (300, 390)}, seed=0, device=torch.device("cpu")
    )
    assert np.isfinite(result.best_val) and scalers["FLAT"].y_scale == 1.0


def test_corrupt_checkpoints_are_refused(tmp_path):
    cfg = tiny_config(train={"epochs": 1})
    _train(tmp_path, "r", cfg)
    path = tmp_path / "r/model.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable tsconv checkpoint"):
        checkpoint.load(path)
    result = runner.invoke(app, ["predict", "--run", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    # a pickle that would run code is refused, not executed
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    assert not (tmp_path / "pwned").exists()


def test_window_shorter_than_receptive_field_warns(tmp_path):
    result = _train_quick(tmp_path / "w", "window=40", "train.epochs=1", "data.tickers=[IBM]")
    assert result.exit_code == 0, result.output
    assert "window 40 is shorter than the receptive field 61 by 21 steps" in result.output


@pytest.mark.parametrize(
    "window,rf,burn_in,expected",
    [
        (64, 61, None, (120, 60)),  # window < 2 (rf - 1): lengthened
        (256, 61, None, (256, 60)),
        (32, 13, None, (32, 12)),
        (40, 61, None, (40, 20)),  # rf > window: prediction pads too; windows, half burn-in
        (64, 61, 10, (64, 10)),  # explicit burn-in: windows
    ],
)
def test_dense_sequence_lengths(window, rf, burn_in, expected):
    assert dense_sequence(window, rf, burn_in) == expected


def _training_dataset(prep, train, val):
    """The training WindowDataset fit_span builds, without training on it."""
    seen = {}

    def spy(model, train_ds, *args, **kw):
        seen["ds"] = train_ds
        raise KeyboardInterrupt

    import tsconv.recipes.fit_span as fitting

    original, fitting.fit = fitting.fit, spy
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_span(prep, train, val, seed=0, device=CPU)
    finally:
        fitting.fit = original
    return seen["ds"]


def _loss_rows(ds, length):
    x, y, mask = ds.batch(torch.arange(len(ds)))
    starts = ds.locate(torch.arange(len(ds)))[0]
    return x, mask, (starts[:, None] + torch.arange(length))[mask].sort().values


def test_every_dense_training_target_sees_its_full_receptive_field():
    """The loss never reaches a position whose receptive field runs past the start of its
    sequence: those would see zero padding where prediction sees real bars. Passes re-cut the
    sequences at random offsets; every training row is still a target once per pass."""
    cfg = tiny_config(window=64, model={"channels": 4, "layers": 4})  # receptive field 61
    prep = prepare(cfg)
    assert (prep.receptive_field, prep.sequence, prep.burn_in) == (61, 120, 60)
    ds = _training_dataset(prep, {"MSFT": (0, 900)}, {"MSFT": (900, 1000)})
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        x, mask, rows = _loss_rows(ds, 120)
        assert x.shape[2] == 120 and not mask[:, :60].any() and mask[:, 60:].any()
        assert torch.equal(rows, torch.arange(60, 900))  # each training row once, none missed
        ds.retile(gen)


def test_any_span_longer_than_the_receptive_field_trains():
    """A target needs receptive-field-minus-one bars of context, not a sequence of twice the
    receptive field: a fit shortens its sequences to the span it has."""
    cfg = tiny_config(window=64, model={"channels": 4, "layers": 4})
    prep = prepare(cfg)
    ds = _training_dataset(prep, {"MSFT": (0, 100)}, {"MSFT": (100, 200)})
    x, mask, rows = _loss_rows(ds, 100)
    assert x.shape[2] == 100 and torch.equal(rows, torch.arange(60, 100))
    # The seed's depth with a window that covers it, on ten years of daily bars: 8 blocks
    # (receptive field 1021), window 1024, 2,520 bars, about 2,000 of them for training.
    frames = {"X": ohlcv_from_returns(random_walk_returns(2520, seed=2))}
    cfg = tiny_config(window=1024, model={"channels": 2, "layers": 8}, features=["log_return"])
    prep = prepare(cfg, frames)
    assert (prep.receptive_field, prep.sequence, prep.burn_in) == (1021, 2040, 1020)
    ds = _training_dataset(prep, {"X": (0, 2000)}, {"X": (2000, 2500)})
    x, mask, rows = _loss_rows(ds, 2000)
    assert x.shape[2] == 2000 and torch.equal(rows, torch.arange(1020, 2000))


def test_steps_per_epoch_reach_the_step_floor():
    assert steps_per_epoch(30, 32, epochs=8, min_steps=200) == 25  # 8 epochs x 25 >= 200
    assert steps_per_epoch(3000, 32, epochs=8, min_steps=200) == 94  # a pass is enough
    assert steps_per_epoch(30, 32, epochs=8, min_steps=0) == 1
    assert fit_sequence(120, 60, [900, 100, 50]) == 100  # 50 holds no target: ignored
    assert fit_sequence(120, 60, [900]) == 120


def test_a_fit_takes_at_least_min_steps_and_stops_early_only_after_them(tmp_path):
    cfg = tiny_config(train={"epochs": 4, "min_steps": 40, "patience": 1, "restore_best": True})
    summary = _train(tmp_path, "run", cfg)
    history = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(history["steps"]) == [10 * (i + 1) for i in range(len(history))]
    assert len(history) == 4 or history["steps"].iloc[-1] >= 40
    assert summary["steps"] == history["steps"].iloc[-1]
    # the starting weights compete: best_epoch 0 means no epoch beat them on validation
    assert summary["best_val_loss"] <= summary["initial_val_loss"]
    assert summary["best_epoch"] == 0 or summary["best_val_loss"] == min(history["val_loss"])


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile on CPU builds C++ kernels",
)
def test_compiled_training_matches_eager_training(monkeypatch):
    """train.compile puts the model through torch.compile: the same maths as eager training,
    and dropout compiles too. Compiled, the model is the reference (models.fast.route): the
    compiler traces neither the hand-written time-major backward nor the numpy dropout bits."""
    torch.manual_seed(0)
    model = random_head(TimeMajorTCN(3, [8, 8, 8], 3, 2, dropout=0.0)).train()
    x = torch.randn(21, 3, 56)  # a batch of the fit below: its compiled kernels are reused
    eager_out = model(x)
    eager_out.square().mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    def not_compiled(*args):
        raise AssertionError("torch.compile traced the time-major block")

    with monkeypatch.context() as m:
        m.setattr(TimeMajorBlock, "forward_cpu", not_compiled)
        out = torch.compile(model)(x)
        out.square().mean().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        g = eager_grads[n]
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6 * g.abs().max().item())

    spans = ({"MSFT": (0, 600)}, {"MSFT": (600, 800)})

    def fit(**train):
        cfg = tiny_config(train={"epochs": 2, **train})
        return fit_span(prepare(cfg), *spans, seed=0, device=CPU)

    compiled, *_ = fit(compile=True)
    eager, *_ = fit()
    for k, v in compiled.state_dict().items():
        torch.testing.assert_close(v, eager.state_dict()[k], rtol=1e-4, atol=1e-6)
    dropout = tiny_config(model={"dropout": 0.3}, train={"epochs": 1, "compile": True})
    _, _, _, result = fit_span(prepare(dropout), *spans, seed=0, device=CPU)
    assert np.isfinite(result.history[0]["train_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_with_amp_and_cpu_reload(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "device": "cuda", "amp": True})
    _train(tmp_path, "g", cfg)
    payload = checkpoint.load(tmp_path / "g/model.pt")
    assert all(v.device.type == "cpu" for v in payload["state_dict"].values())


def test_trained_weights_replace_the_starting_ones_only_when_clearly_better():
    """By more than two standard errors of the paired difference (engine.fit.beats_clearly)."""
    from tsconv.engine.fit import beats_clearly

    g = torch.Generator().manual_seed(0)
    reference = torch.rand(400, generator=g, dtype=torch.float64)
    noise = reference + 0.05 * torch.randn(400, generator=g, dtype=torch.float64)
    slightly = noise - 0.001  # lower on average, by far less than one standard error
    assert slightly.mean() < reference.mean() and not beats_clearly(slightly, reference)
    assert beats_clearly(reference - 0.05, reference)  # every row lower: clearly better
    # lower by one and a half standard errors of the paired difference: not enough (two)
    d = noise - reference
    se = float(d.std() / 400**0.5)
    between = noise - float(d.mean()) - 1.5 * se
    assert not beats_clearly(between, reference)
    assert beats_clearly(between - se, reference)  # two and a half
    assert beats_clearly(slightly, None)  # nothing to beat (no validation, or an old run)
