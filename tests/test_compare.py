"""`tsconv compare RUN_A RUN_B`: two finished backtests tested against each other on their
common dates and tickers, through the command line; and what `tsconv predict` says a
forecast means for the position the backtest's rule would take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tsconv.cli import app
from tsconv.evaluate import metrics

runner = CliRunner()

# the shipped quick config made tiny: two years of the sample, one cheap epoch, 100-bar folds
TINY = [
    "data.start=2011-01-01",
    "window=16",
    "model.channels=4",
    "model.layers=2",
    "train.epochs=1",
    "train.min_steps=0",
    "train.device=cpu",
    "train.threads=1",
    "backtest.train_span=100",
    "backtest.test_span=100",
]


def sets(*keys: str) -> list[str]:
    return [a for k in keys for a in ("--set", k)]


def invoke(*args: str, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def one_line_error(args: list, *fragments: str) -> str:
    text = invoke(*args, code=2).stderr.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, text
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Backtests: a (MSFT and AAPL), b (MSFT, another seed and cost, the last epoch's
    weights), ibm (IBM), h5 (MSFT, five-bar target), and a training run. b keeps its last
    epoch's weights so that its forecast is not exactly zero (its linear part may be the
    zero forecast), and its strategy trades: a Sharpe ratio to compare."""
    root = tmp_path_factory.mktemp("compare")
    plans = {
        "a": ["data.tickers=[MSFT,AAPL]"],
        "b": ["data.tickers=[MSFT]", "seed=1", "backtest.cost_bps=2", "train.restore_best=false"],
        "ibm": ["data.tickers=[IBM]"],
        "h5": ["data.tickers=[MSFT]", "target.horizon=5", "backtest.gap=4"],
    }
    out = {}
    for name, keys in plans.items():
        out[name] = root / name
        invoke("backtest", "--config", "quick", "--out", out[name], *sets(*TINY, *keys))
    out["trained"] = root / "trained"
    invoke("train", "--config", "quick", "--out", out["trained"], *sets(*TINY))
    return out


def test_compare_prints_the_verdict_first_and_tests_the_common_rows(runs, monkeypatch):
    monkeypatch.chdir(runs["a"].parent)
    a, b = Path("a"), Path("b")
    result = invoke("compare", a, b)
    first = result.stdout.splitlines()[0]
    assert "has the lower squared error" in first and "(p = " in first
    r = json.loads(invoke("compare", a, b, "--json").stdout)
    assert r["verdict"].startswith(first.rstrip())
    assert r["tickers"] == ["MSFT"]  # the tickers both predicted
    # the DM test, by hand, on the dates and tickers both runs predicted
    pa, pb = (pd.read_parquet(p / "predictions.parquet") for p in (a, b))
    both = pa.merge(pb, on=["date", "ticker"], suffixes=("_a", "_b"))
    assert len(both) == r["rows"] and r["dates"] == both["date"].nunique()
    la = ((both["prediction_a"] - both["realized_a"]) ** 2).to_numpy()
    lb = ((both["prediction_b"] - both["realized_b"]) ** 2).to_numpy()
    dm = metrics.diebold_mariano(la, lb)
    assert r["dm"]["stat"] == pytest.approx(dm["stat"], rel=1e-12)
    winner = str(a) if dm["stat"] < 0 else str(b)
    assert first.startswith(f"{winner} has the lower squared error")
    significant = "not significantly" if dm["p_value"] >= 0.05 else "significantly"
    assert f"error, {significant} (p = {dm['p_value']:.2g}, Diebold-Mariano)" in first
    # then the figures: a row per run, then each test's numbers
    lines = result.stdout.splitlines()
    rows = [x.split() for x in lines[1:] if x.split()[:1] in (["a"], ["b"])]
    assert [x[0] for x in rows] == ["a", "b"]
    assert rows[0][1] == f"{r['a']['mse']:.2e}" and rows[1][4] == f"{r['b']['sharpe']:.2f}"
    assert lines[-2].startswith(f"Diebold-Mariano on squared error, by date: DM {dm['stat']:.2f}")
    assert lines[-1].startswith("Ledoit-Wolf Sharpe difference, net of each run's costs: a minus b")


def test_on_all_its_rows_a_run_trades_as_its_own_backtest(runs, tmp_path):
    """A copy compares equal, and each side's strategy is the run's own: the same Sharpe
    ratio as its metrics.json."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["a"], copy)
    r = json.loads(invoke("compare", runs["a"], copy, "--json").stdout)
    own = json.loads((runs["a"] / "metrics.json").read_text())
    assert r["a"]["sharpe"] == pytest.approx(own["trading"]["prediction"]["sharpe"], rel=1e-12)
    assert r["a"]["mse"] == pytest.approx(own["forecast"]["prediction"]["mse"], rel=1e-12)
    assert r["rows"] == own["n_predictions"]
    sharpe = f"{own['trading']['prediction']['sharpe']:.2f}"
    assert r["verdict"].startswith(
        f"their squared errors are the same on every date, and the same net Sharpe ratio, {sharpe}"
    )


def test_compare_refuses_what_it_cannot_compare(runs, tmp_path):
    a = runs["a"]
    one_line_error(["compare", a, runs["ibm"]], "have no date and ticker in common", "IBM from")
    one_line_error(
        ["compare", runs["b"], runs["h5"]],
        "forecast different returns on their common dates (target.horizon 1 and 5)",
    )
    one_line_error(["compare", a, runs["trained"]], "a training run, not a backtest")
    one_line_error(["compare", a, tmp_path / "nowhere"], "nowhere: no such folder")
    one_line_error(["compare", a, a], "the same folder")
    half = tmp_path / "half"
    shutil.copytree(a, half)
    (half / "manifest.json").unlink()
    one_line_error(["compare", a, half], "not a finished backtest", "--resume")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(["compare", empty, a], "not a backtest folder (no predictions.parquet)")


# --------------------------------------------------------------------------- predict


def test_predict_shows_basis_points_and_the_backtests_position(tmp_path):
    """`+0.00001` said nothing; the forecast in basis points and the position the backtest
    would take on it do."""
    base = [*TINY, "data.tickers=[MSFT,AAPL]"]
    # a cost no daily forecast exceeds: the threshold rule stays flat
    flat = tmp_path / "flat"
    keys = [*base, "backtest.position=threshold", "backtest.cost_bps=10000"]
    invoke("train", "--config", "quick", "--out", flat, *sets(*keys))
    text = invoke("predict", "--run", flat).stdout
    rows = json.loads(invoke("predict", "--run", flat, "--json").stdout)
    for r in rows:
        assert r["predicted_bps"] == pytest.approx(r["predicted_log_return"] * 1e4)
        line = next(x for x in text.splitlines() if r["ticker"] in x)
        assert f"{r['predicted_bps']:+.2f}" in line and "flat" in line
        assert r["position"] == 0
    words = " ".join(text.split())  # the rule's line as a terminal wraps it
    assert "position: backtest.position threshold:" in words and "the cost, 10000 bps" in words
    # a long_short book of two: the higher forecast long, the lower short, half each
    book = tmp_path / "book"
    # the last epoch's weights: a fit that kept its start may forecast the two alike (zero)
    keys = [*base, "backtest.portfolio=long_short", "train.restore_best=false"]
    invoke("train", "--config", "quick", "--out", book, *sets(*keys))
    rows = json.loads(invoke("predict", "--run", book, "--json").stdout)
    by_forecast = sorted(rows, key=lambda r: r["predicted_log_return"])
    assert [r["position"] for r in by_forecast] == [-0.5, 0.5]
    text = invoke("predict", "--run", book).stdout
    high = by_forecast[1]["ticker"]
    assert "long 0.50" in next(x for x in text.splitlines() if high in x)
    assert "position: backtest.portfolio long_short" in " ".join(text.split())
    assert np.isfinite([r["predicted_log_return"] for r in rows]).all()
