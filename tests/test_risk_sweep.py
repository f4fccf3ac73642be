"""`tsconv sweep` on risk targets: a volatility sweep selects on QLIKE and a quantiles sweep on
the pinball loss averaged over the levels (lower is better), each trial's value the one its own
backtest's metrics.json holds; PBO on the trials' losses per date; no deflated Sharpe ratio,
and the outputs say so; two workers give the serial bytes; an objective that does not score
the target is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tsconv import synthetic_vol
from tsconv.cli import app
from tsconv.config import dump_yaml
from tsconv.data.targets import quantile_column
from tsconv.evaluate import risk_metrics, selection

runner = CliRunner()

# three trials of a tiny model on 900 bars: 3 folds in the selection period, 3 in the holdout
SPACE = {
    "sweep": {"sampler": "random", "trials": 3, "holdout": 0.3, "blocks": 8, "seed": 1},
    "space": {"model.channels": [4, 8], "train.lr": {"low": 0.002, "high": 0.02, "log": True}},
}
LEVELS = [0.05, 0.5, 0.95]


def _setup(tmp_path: Path, kind: str, space: dict | None = None) -> tuple[Path, Path]:
    data = tmp_path / "g.csv"
    synthetic_vol.garch_t(900, seed=11)[0].to_csv(data)
    cfg = tiny_config(
        data={"source": "csv", "path": str(data), "tickers": ["G"]},
        target={"kind": kind, "levels": LEVELS},
        backtest={"train_span": 300, "test_span": 100},
        train={"threads": 1},
    )
    (tmp_path / "c.yaml").write_text(dump_yaml(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    return tmp_path / "c.yaml", tmp_path / "space.yaml"


def _sweep(config: Path, space: Path, out: Path, *extra: str):
    args = ["sweep", "--config", str(config), "--space", str(space), "--out", str(out)]
    return runner.invoke(app, [*args, *extra])


@pytest.fixture(scope="module")
def vol_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("volsweep")
    config, space = _setup(root, "volatility")
    r = _sweep(config, space, root / "sweep")
    assert r.exit_code == 0, r.output
    return root, config, space, r.output


def _trial_metrics(out: Path, n: int) -> dict:
    return json.loads((out / "trials" / f"{n:03d}" / "metrics.json").read_text())


def test_a_volatility_sweep_selects_the_lowest_qlike(vol_sweep):
    root, _, _, output = vol_sweep
    out = root / "sweep"
    r = json.loads((out / "sweep.json").read_text())
    assert r["settings"]["objective"] == "qlike" and r["chosen"]["objective"] == "qlike"
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 3 and set(trials["state"]) == {"complete"}
    for _, t in trials.iterrows():
        m = _trial_metrics(out, int(t["trial"]))
        assert t["value"] == pytest.approx(m["forecast"]["prediction"]["qlike"], rel=1e-12)
        assert (
            t["qlike"] == t["value"]
            and t["mz_r2"] == m["forecast"]["prediction"]["mincer_zarnowitz"]["r2"]
        )
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["value"].is_monotonic_increasing  # lower is better
    best = int(trials.loc[trials["value"].idxmin(), "trial"])
    assert r["chosen"]["trial"] == best == int(board["trial"].iloc[0])
    assert r["chosen"]["value"] == pytest.approx(trials["value"].min())
    # the holdout: its QLIKE and the baselines' are its own backtest's
    h, hm = r["holdout"], json.loads((out / "holdout" / "metrics.json").read_text())
    assert h["first_date"] >= r["selection"]["holdout_start"] > r["selection"]["last_date"]
    assert h["value"] == hm["forecast"]["prediction"]["qlike"]
    assert h["baselines"] == {b: hm["forecast"][b]["qlike"] for b in h["baselines"]}
    assert set(h["baselines"]) == {"trailing_mean", "ewma", "garch", "har"}
    assert h["bottom_line"] == hm["bottom_line"] and h["bottom_line"] in r["verdict"]
    assert "QLIKE" in output and "managed Sharpe" in output  # the terminal leaderboard


def test_a_risk_sweep_says_the_deflated_sharpe_ratio_does_not_apply(vol_sweep):
    root, _, _, output = vol_sweep
    out = root / "sweep"
    r = json.loads((out / "sweep.json").read_text())
    assert r["deflated_sharpe"] is None and r["per_bar_sharpes"] is None
    why = r["not_computed"]["deflated_sharpe"]
    assert "selected on a loss (qlike), not on a Sharpe ratio" in why
    assert why in r["verdict"] and why in " ".join(output.split())
    html = (out / "report.html").read_text()
    assert "not on a Sharpe ratio" in html and "QLIKE" in html and "id='luck'" in html


def test_the_pbo_of_a_risk_sweep_is_that_of_the_trials_qlike_per_date(vol_sweep):
    root, _, _, _ = vol_sweep
    out = root / "sweep"
    r = json.loads((out / "sweep.json").read_text())
    gains = {}
    for n in range(3):
        p = pd.read_parquet(out / "trials" / f"{n:03d}" / "predictions.parquet")
        loss = risk_metrics.qlike(p["prediction"].to_numpy(), p["realized"].to_numpy())
        gains[n] = -pd.Series(loss, index=p["date"]).groupby(level=0).mean()
    gains = pd.DataFrame(gains).dropna()
    want = selection.pbo_cscv(gains.to_numpy(), 8, statistic="mean")
    assert r["pbo"]["pbo"] == pytest.approx(want["pbo"]) and r["pbo"]["splits"] == 70
    assert r["pbo"]["bars"] == len(gains)
    # trials with the same losses bar for bar (the same parameters) count once
    assert r["trials"]["distinct"] == gains.T.drop_duplicates().shape[0]


@pytest.mark.slow
def test_a_risk_sweep_in_two_processes_gives_the_serial_bytes(vol_sweep):
    root, config, space, _ = vol_sweep
    r = _sweep(config, space, root / "par", "--workers", "2")
    assert r.exit_code == 0, r.output
    assert json.loads((root / "par" / "timing.json").read_text())["workers"] == 2
    for name in ["sweep.json", "leaderboard.csv", "trials.parquet", "holdout/predictions.parquet"]:
        assert (root / "par" / name).read_bytes() == (root / "sweep" / name).read_bytes(), name


def test_a_quantiles_sweep_selects_the_lowest_mean_pinball_loss(tmp_path):
    config, space = _setup(tmp_path, "quantiles", {**SPACE, "space": {"model.channels": [4, 8]}})
    r = _sweep(config, space, tmp_path / "sweep")
    assert r.exit_code == 0, r.output
    out = tmp_path / "sweep"
    result = json.loads((out / "sweep.json").read_text())
    assert result["chosen"]["objective"] == "pinball"
    trials = pd.read_parquet(out / "trials.parquet")
    for n, value in zip(trials["trial"], trials["value"], strict=True):
        p = pd.read_parquet(out / "trials" / f"{n:03d}" / "predictions.parquet")
        y = p["realized"].to_numpy()
        by_hand = np.mean(
            [
                np.mean(risk_metrics.pinball(p[quantile_column("prediction", q)].to_numpy(), y, q))
                for q in LEVELS
            ]
        )
        assert value == pytest.approx(by_hand, rel=1e-9)
    assert result["chosen"]["trial"] == int(trials.loc[trials["value"].idxmin(), "trial"])
    h = result["holdout"]
    assert set(h["baselines"]) == {"hist_sim", "ewma", "garch"} and h["dm_vs"] is None
    assert "QUANTILES:" in result["verdict"] and result["deflated_sharpe"] is None


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {**SPACE, "sweep": {**SPACE["sweep"], "objective": "sharpe"}},
            "sweep.objective: sharpe does not score a volatility forecast; use qlike",
        ),
        (
            {**SPACE, "sweep": {**SPACE["sweep"], "objective": "pinball"}},
            "sweep.objective: pinball does not score a volatility forecast; use qlike",
        ),
        (
            {"space": {"target.proxy": ["parkinson", "garman_klass"]}},
            "space: target.proxy cannot vary between trials: every trial is scored against "
            "the same realised values",
        ),
    ],
)
def test_an_objective_that_does_not_score_the_target_is_one_line(tmp_path, space, expected):
    config, space_file = _setup(tmp_path, "volatility", space)
    r = _sweep(config, space_file, tmp_path / "sweep")
    assert r.exit_code == 2, r.output
    assert expected in " ".join(r.output.split()) and "Traceback" not in r.output
    assert not (tmp_path / "sweep").exists()
