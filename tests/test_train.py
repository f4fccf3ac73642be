"""Training: learning works, runs are reproducible and resumable, outputs load safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import ar1_returns, ohlcv_from_returns, tiny_config
from tsconv import checkpoint
from tsconv.cli import app
from tsconv.config import load_config
from tsconv.errors import CheckpointError, TrainingError
from tsconv.experiment import fit_span, global_rows, prepare, run_training
from tsconv.train import predict_rows

ROOT = Path(__file__).resolve().parents[1]
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


def test_train_cli_end_to_end_writes_a_complete_run(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(ROOT / "configs/quick.yaml"),
            "--out",
            str(out),
            "--set",
            "train.epochs=2",
            "--set",
            "data.tickers=[MSFT]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "receptive field 61 steps" in result.output
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
    c = _train(tmp_path, "c", cfg.model_copy(update={"seed": 1}))
    assert c["best_val_loss"] != a["best_val_loss"]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = tiny_config(train={"epochs": 4}, model={"dropout": 0.2})
    _train(tmp_path, "full", cfg)

    def interrupt(state):
        if state.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "cut", cfg, on_epoch_done=interrupt)
    assert (tmp_path / "cut/state.pt").exists() and not (tmp_path / "cut/model.pt").exists()
    assert len(pd.read_csv(tmp_path / "cut/metrics.csv")) == 2
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut")])
    assert result.exit_code == 0, result.output
    full = torch.load(tmp_path / "full/model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "cut/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full/metrics.csv").drop(columns=["seconds", "samples_per_s"]),
        pd.read_csv(tmp_path / "cut/metrics.csv").drop(columns=["seconds", "samples_per_s"]),
    )


def test_ctrl_c_in_cli_exits_130(tmp_path, monkeypatch):
    import tsconv.experiment as experiment

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "fit_span", boom)
    result = runner.invoke(
        app, ["train", "--config", str(ROOT / "configs/quick.yaml"), "--out", str(tmp_path / "r")]
    )
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


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path):
    cfg = tiny_config(train={"epochs": 1})
    _train(tmp_path, "r", cfg)
    path = tmp_path / "r/model.pt"
    payload = checkpoint.load(path)
    with pytest.raises(CheckpointError, match="trained on features"):
        checkpoint.check_compatible(
            payload, cfg.model_copy(update={"features": ["log_return"]}), path
        )
    with pytest.raises(
        CheckpointError, match="model.channels is 8 in the checkpoint, 16 in the config"
    ):
        checkpoint.check_compatible(
            payload,
            cfg.model_copy(update={"model": cfg.model.model_copy(update={"channels": 16})}),
            path,
        )
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
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(ROOT / "configs/quick.yaml"),
            "--out",
            str(tmp_path / "w"),
            "--set",
            "window=40",
            "--set",
            "train.epochs=1",
            "--set",
            "data.tickers=[IBM]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "window 40 is shorter than the receptive field 61 by 21 steps" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_with_amp_and_cpu_reload(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "device": "cuda", "amp": True})
    _train(tmp_path, "g", cfg)
    payload = checkpoint.load(tmp_path / "g/model.pt")
    assert all(v.device.type == "cpu" for v in payload["state_dict"].values())
