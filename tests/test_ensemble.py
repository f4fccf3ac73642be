"""Seed ensembles (`train.ensemble: K`): K members from their own seeds on the same data and
scaler, predictions averaged; equal to the members trained one by one, the same bytes on two
workers, resumable in `tsconv train`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tsconv.cli import app
from tsconv.config import dump_yaml
from tsconv.engine.predict import predict_rows
from tsconv.recipes.fit_span import fit_span, member_seed
from tsconv.recipes.predict import predict_latest
from tsconv.recipes.prepare import global_rows, prepare, split_train_val
from tsconv.recipes.train import run_training
from tsconv.recipes.walkforward import fold_spans, make_folds

runner = CliRunner()
CPU = torch.device("cpu")


def _write(tmp_path: Path, name: str, cfg) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml(cfg))
    return path


def _backtest(tmp_path: Path, cfg, name: str, *extra: str) -> Path:
    out = tmp_path / name
    args = ["backtest", "--config", str(_write(tmp_path, name, cfg)), "--out", str(out), *extra]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return out


def _by_hand(cfg, fold, member: int) -> pd.Series:
    """One member of one fold, trained and predicted from the building blocks alone."""
    prep = prepare(cfg)
    train, test = fold_spans(prep, fold)
    fit_spans, val_spans = split_train_val(prep, train, cfg.train.val_gap)
    seed = member_seed(cfg.seed + fold.index, member)
    model, scalers, panel, _ = fit_span(prep, fit_spans, val_spans, seed=seed, device=CPU)
    ((ticker, rows),) = test.items()
    pred = predict_rows(model, panel, global_rows(panel, ticker, rows), cfg.window, CPU)
    return pd.Series(pred * scalers[ticker].y_scale, index=prep.data[ticker].dates[rows])


def test_backtest_ensemble_is_its_members_mean_and_the_same_bytes_on_two_workers(tmp_path):
    common = {
        "model": {"dropout": 0.2},
        "backtest": {"train_span": 1800, "test_span": 500},
    }
    single = tiny_config(**common, train={"threads": 1})
    ens = tiny_config(**common, train={"threads": 1, "ensemble": 2})
    one = _backtest(tmp_path, single, "single")
    serial = _backtest(tmp_path, ens, "serial")
    par = _backtest(tmp_path, ens, "par", "--workers", "2")
    assert json.loads((par / "timing.json").read_text())["workers"] == 2
    for name in ["predictions.parquet", "metrics.json", "report.html"]:
        assert (serial / name).read_bytes() == (par / name).read_bytes(), name

    folds = pd.read_csv(serial / "folds.csv")
    assert len(folds) >= 2 and set(folds["members"]) == {2}
    assert all(len(str(e).split()) == 2 for e in folds["member_best_epochs"])
    assert "members" not in pd.read_csv(one / "folds.csv")
    assert "<th>member_best_epochs</th>" in (serial / "report.html").read_text()
    assert "<th>members</th>" not in (one / "report.html").read_text()

    got = pd.read_parquet(serial / "predictions.parquet").set_index("date")["prediction"]
    member0 = pd.read_parquet(one / "predictions.parquet").set_index("date")["prediction"]
    member1 = pd.concat([_by_hand(ens, f, 1) for f in make_folds(prepare(ens))])
    assert not np.allclose(member0, member1.loc[member0.index])  # the members differ
    np.testing.assert_array_equal(got, (member0 + member1.loc[got.index]) / 2)


def test_warm_retraining_chains_each_member_to_its_own_weights(tmp_path):
    cfg = tiny_config(
        train={"ensemble": 2, "epochs": 2},
        backtest={"train_span": 1800, "test_span": 500, "retrain": "warm"},
    )
    out = _backtest(tmp_path, cfg, "warm")
    states = torch.load(out / "folds" / "fold_000.pt", weights_only=True)
    assert len(states) == 2
    assert not all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    folds = pd.read_csv(out / "folds.csv")
    assert (folds["epochs"].iloc[1:] == 2 * 1).all()  # warm folds: epochs // 3 = 1 per member


def test_member_seeds():
    assert member_seed(7, 0) == 7  # an ensemble of one is the single model
    seeds = {member_seed(s, m) for s in range(20) for m in range(1, 8)}
    assert len(seeds) == 140 and not seeds & set(range(100))
    assert member_seed(3, 2) == member_seed(3, 2)


def test_train_ensemble_predicts_the_mean_of_its_members_trained_one_by_one(tmp_path):
    cfg = tiny_config(train={"epochs": 3, "ensemble": 3}, model={"dropout": 0.2})
    summary = run_training(cfg, tmp_path / "ens")
    seeds = [m["seed"] for m in summary["members"]]
    assert seeds[0] == cfg.seed and len(set(seeds)) == 3
    assert summary["epochs_run"] == sum(m["epochs_run"] for m in summary["members"]) == 9
    assert np.isfinite(summary["ensemble_val_loss"])
    assert summary["members_kept_start"] == sum(m["best_epoch"] == 0 for m in summary["members"])
    payload = torch.load(tmp_path / "ens/model.pt", weights_only=True)
    assert len(payload["ensemble"]) == 3
    metrics = pd.read_csv(tmp_path / "ens/metrics.csv")
    assert list(metrics["member"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (tmp_path / "ens/loss.png").stat().st_size > 0

    alone = []
    for m, seed in enumerate(seeds):  # member m is the single model of seed `seed`
        run_training(
            cfg.model_copy(
                update={"seed": seed, "train": cfg.train.model_copy(update={"ensemble": 1})}
            ),
            tmp_path / f"m{m}",
        )
        state = torch.load(tmp_path / f"m{m}/model.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(state[k], payload["ensemble"][m][k]) for k in state)
        alone.append(predict_latest(tmp_path / f"m{m}")[0]["predicted_log_return"])
    (row,) = predict_latest(tmp_path / "ens")
    assert row["members"] == 3
    assert row["predicted_log_return"] == pytest.approx(np.mean(alone), rel=1e-9, abs=1e-15)

    r = runner.invoke(
        app,
        ["train", "--config", str(_write(tmp_path, "ens", cfg)), "--out", str(tmp_path / "cli")],
    )
    assert r.exit_code == 0, r.output
    assert "ensemble of 3: best epochs" in r.output


def test_interrupted_ensemble_resumes_in_the_member_it_stopped_in(tmp_path):
    cfg = tiny_config(train={"epochs": 3, "ensemble": 2}, model={"dropout": 0.2})
    run_training(cfg, tmp_path / "full")
    members, headers = [], []

    def interrupt(state):
        headers.append(pd.read_csv(tmp_path / "cut/metrics.csv").columns[0])
        if len(members) == 2 and state.epoch == 2:  # epoch 2 of the second member
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "cut", on_epoch_done=interrupt, on_member=members.append)
    assert members == [0, 1] and not (tmp_path / "cut/model.pt").exists()
    assert set(headers) == {"member"}  # from the first epoch of the first member on
    assert len(pd.read_csv(tmp_path / "cut/metrics.csv")) == 5
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut"), "--set", "seed=3"])
    assert r.exit_code == 2 and "drop --config, --set and --out" in r.output
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "cut")])
    assert r.exit_code == 2 and r.output.strip().endswith("nothing to resume")
    assert "parameters" not in r.output  # refused before the model's banner
    full = torch.load(tmp_path / "full/model.pt", weights_only=True)["ensemble"]
    resumed = torch.load(tmp_path / "cut/model.pt", weights_only=True)["ensemble"]
    for a, b in zip(full, resumed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "cut/summary.json").read_text())
    assert summary["epochs_run"] == 6


def test_ensemble_size_is_checked(tmp_path):
    r = runner.invoke(
        app,
        [
            "backtest",
            "--config",
            "quick",
            "--set",
            "train.ensemble=0",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 2 and "train.ensemble" in r.output and "Traceback" not in r.output


def test_an_ensemble_whose_members_all_kept_their_start_says_it_is_one_model(tmp_path):
    # a learning rate too small to move the weights: no member beats its (seed-free) start
    cfg = tiny_config(train={"ensemble": 2, "epochs": 2, "lr": 1e-9, "restore_best": True})
    args = ["train", "--config", str(_write(tmp_path, "still", cfg)), "--out", str(tmp_path / "s")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s/summary.json").read_text())
    assert summary["members_kept_start"] == 2 and summary["best_epoch"] == 0
    assert "all 2 members kept their starting weights" in r.output
    assert "predicts as one model" in r.output
