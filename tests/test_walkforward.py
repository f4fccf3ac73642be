"""Walk-forward: exact fold boundaries, no look-ahead, honest results on known processes."""

from __future__ import annotations

import base64
import json
import math
import re
from io import BytesIO
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import ar1_returns, ohlcv_from_returns, random_walk_returns, tiny_config
from tsconv.cli import app
from tsconv.engine.runtime import select_device
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.prepare import prepare
from tsconv.recipes.walkforward import fold_bounds, fold_spans, make_folds, train_rows

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_fold_bounds_and_training_ranges():
    assert fold_bounds(1000, 600, 150) == [(600, 750), (750, 900), (900, 1000)]
    # expanding: everything before the test span minus the gap
    assert train_rows(600, gap=0, scheme="expanding", train_span=500) == (0, 600)
    assert train_rows(750, gap=4, scheme="expanding", train_span=500) == (0, 746)
    # sliding: exactly train_span rows ending gap bars before the test
    assert train_rows(750, gap=4, scheme="sliding", train_span=500) == (246, 746)
    assert train_rows(300, gap=0, scheme="sliding", train_span=500) == (0, 300)


@pytest.mark.parametrize(
    "scheme,gap,horizon", [("expanding", 0, 1), ("sliding", 2, 3), ("expanding", 5, 1)]
)
def test_fold_spans_respect_gap_horizon_and_cadence(scheme, gap, horizon):
    frame = ohlcv_from_returns(random_walk_returns(900))
    cfg = tiny_config(
        target={"horizon": horizon},
        backtest={"scheme": scheme, "gap": gap, "train_span": 300, "test_span": 100},
    )
    prep = prepare(cfg, {"X": frame})
    td = prep.data["X"]
    folds = make_folds(prep)
    starts = [int(td.dates.searchsorted(f.test_start)) for f in folds]
    assert starts == list(range(300 + gap, len(td.x) - horizon, 100))
    for fold in folds:
        train, test = fold_spans(prep, fold)
        lo, hi = train["X"]
        first_test = test["X"][0]
        assert hi == first_test - gap
        # the last training target is realised (at row hi-1+h) no later than the first test bar
        assert hi - 1 + horizon <= first_test
        assert lo == (0 if scheme == "expanding" else hi - 300)
        assert len(test["X"]) <= 100 and np.isfinite(td.y[test["X"]]).all()


def _synthetic_backtest(tmp_path, name, frames, **cfg_kw):
    cfg = tiny_config(**cfg_kw)
    return run_backtest(cfg, tmp_path / name, prep=prepare(cfg, frames)), tmp_path / name


def test_no_look_ahead_truncating_the_future_changes_no_past_prediction(tmp_path):
    # the highway's ridge fit (lags and penalty chosen on the fold's training rows) is covered too
    cfg_kw = {
        "backtest": {"train_span": 400, "test_span": 150},
        "train": {"epochs": 2, "min_steps": 20},
        "model": {"highway": True},
    }
    frame = ohlcv_from_returns(random_walk_returns(1100, seed=3))
    other = ohlcv_from_returns(random_walk_returns(1100, seed=4), price0=30)
    cut = frame.index[800]
    _, full_dir = _synthetic_backtest(tmp_path, "full", {"A": frame, "B": other}, **cfg_kw)
    _, cut_dir = _synthetic_backtest(
        tmp_path, "cut", {"A": frame.loc[:cut], "B": other.loc[:cut]}, **cfg_kw
    )
    full = pd.read_parquet(full_dir / "predictions.parquet")
    short = pd.read_parquet(cut_dir / "predictions.parquet")
    # rows whose target was realised before the cut exist in both runs and must agree exactly
    merged = full.merge(short, on=["date", "ticker"], suffixes=("", "_cut"))
    assert len(merged) == len(short) > 300
    assert merged["prediction"].std() > 0  # a trained forecast, not the zero one
    for col in ["prediction", "realized", "persistence", "trailing_mean", "ridge_ar"]:
        np.testing.assert_array_equal(
            merged[col].to_numpy(), merged[f"{col}_cut"].to_numpy(), err_msg=col
        )


def test_the_pooled_ridge_baseline_of_one_ticker_is_its_own_ridge():
    """Pooling one ticker changes nothing: the same rows, lags, penalty and forecasts."""
    from tsconv.evaluate import baselines

    rng = np.random.default_rng(2)
    x = rng.normal(size=(900, 3))
    y = np.r_[0.3 * x[:-1, 0] + rng.normal(size=899), np.nan]  # after bar t: x[t] tells
    dates = pd.bdate_range("2001-01-01", periods=900).asi8
    own, own_fit = baselines.ridge_ar(x, y, (0, 700), np.arange(700, 899), 20)
    (pooled,), fit = baselines.pooled_ridge_ar([(x, y, (0, 700), np.arange(700, 899), dates)], 20)
    assert own_fit.lags > 0 and (fit.lags, fit.penalty) == (own_fit.lags, own_fit.penalty)
    np.testing.assert_array_equal(pooled, own)


def test_the_pooled_ridge_baseline_is_one_fit_a_fold_with_no_look_ahead(tmp_path):
    """`backtest.ridge_baseline: pooled`: one ridge fit a fold on every ticker's training rows
    (a shared AR(1) signal, so it reads the last return), which truncating the future does not
    change, and which differs from the per-ticker fits."""
    cfg_kw = {
        "features": ["log_return", "hl_range"],
        "backtest": {"train_span": 300, "test_span": 150, "ridge_baseline": "pooled"},
        "train": {"epochs": 1},
    }
    frames = {
        f"T{i}": ohlcv_from_returns(ar1_returns(800, phi=0.3, seed=20 + i), price0=20 + i)
        for i in range(4)
    }
    frames["GONE"] = frames["T3"].iloc[:520] * 1.1  # delisted: trained on, later not tested
    cut = frames["T0"].index[600]
    _, full_dir = _synthetic_backtest(tmp_path, "full", frames, **cfg_kw)
    _, cut_dir = _synthetic_backtest(
        tmp_path, "cut", {t: f.loc[:cut] for t, f in frames.items()}, **cfg_kw
    )
    full = pd.read_parquet(full_dir / "predictions.parquet")
    short = pd.read_parquet(cut_dir / "predictions.parquet")
    merged = full.merge(short, on=["date", "ticker"], suffixes=("", "_cut"))
    assert len(merged) == len(short) > 800
    np.testing.assert_array_equal(merged["ridge_ar"], merged["ridge_ar_cut"])
    folds = pd.read_csv(full_dir / "folds.csv")
    assert (folds["ridge_ar_lags"] >= 1).all()  # the shared AR(1): the last return at least
    cfg_kw["backtest"]["ridge_baseline"] = "per_ticker"
    _, own_dir = _synthetic_backtest(tmp_path, "own", frames, **cfg_kw)
    own = pd.read_parquet(own_dir / "predictions.parquet")
    assert own["ridge_ar"].corr(full["ridge_ar"]) > 0.8
    assert not np.allclose(own["ridge_ar"], full["ridge_ar"])
    assert (full["ridge_ar"] - full["realized"]).pow(2).mean() < full["realized"].pow(2).mean()
    last = full.groupby("ticker")["fold"].max()
    assert last["GONE"] < last["T0"]  # a later fold trained on it and tested only the others


def test_no_look_ahead_on_the_sample_with_a_shocked_future(tmp_path):
    """Same check on real data, perturbing the future instead of deleting it."""
    cfg_kw = {
        "data": {"tickers": ["IBM"]},
        "backtest": {"train_span": 1500, "test_span": 250},
        "train": {"epochs": 1},
    }
    from tsconv.data.sources import load_sample

    ibm = load_sample(["IBM"])["IBM"]
    t = ibm.index[2300]
    shocked = ibm.copy()
    shocked.loc[shocked.index > t, ["open", "high", "low", "close", "adj_close"]] *= 3.0
    shocked.loc[shocked.index > t, "volume"] *= 0.1
    _, a = _synthetic_backtest(tmp_path, "a", {"IBM": ibm}, **cfg_kw)
    _, b = _synthetic_backtest(tmp_path, "b", {"IBM": shocked}, **cfg_kw)
    pa = pd.read_parquet(a / "predictions.parquet").set_index("date")
    pb = pd.read_parquet(b / "predictions.parquet").set_index("date")
    past = pa.index < t  # the target of day t itself spans the shock
    assert past.sum() > 500
    np.testing.assert_array_equal(pa.loc[past, "prediction"], pb.loc[past, "prediction"])
    assert not np.array_equal(pa.loc[~past, "prediction"], pb.loc[~past, "prediction"])


def test_random_walk_has_no_edge(tmp_path):
    frames = {f"R{i}": ohlcv_from_returns(random_walk_returns(1200, seed=10 + i)) for i in range(3)}
    m, _ = _synthetic_backtest(
        tmp_path,
        "rw",
        frames,
        features=["log_return", "hl_range"],
        backtest={"train_span": 400, "test_span": 200},
        train={"epochs": 3},
    )
    f = m["forecast"]["prediction"]
    assert abs(f["directional_accuracy"] - 0.5) <= 3 * f["directional_accuracy_se"]
    assert f["dm_vs_zero"]["p_value"] > 0.05 or f["dm_vs_zero"]["stat"] > 0


def test_ar1_model_beats_zero_with_dm_p_below_0_01(tmp_path):
    frames = {"AR": ohlcv_from_returns(ar1_returns(2200, phi=0.5, seed=1))}
    m, out = _synthetic_backtest(
        tmp_path,
        "ar",
        frames,
        features=["log_return"],
        model={"channels": 8, "layers": 2},
        backtest={"train_span": 800, "test_span": 350},
        train={"epochs": 10, "lr": 0.005, "patience": 3, "batch_size": 16},
    )
    dm = m["forecast"]["prediction"]["dm_vs_zero"]
    assert dm["stat"] < 0 and dm["p_value"] < 0.01, dm
    assert m["forecast"]["prediction"]["r2_oos"] > 0.15
    assert m["verdict"].startswith(
        "Forecast: the model's squared error is significantly lower than"
    )
    lower = m["verdict"].split(";")[0]
    assert "zero (p = " in lower and "persistence (p = " in lower  # named with its p-value
    assert m["forecast"]["prediction"]["dm_vs"]["zero"]["p_holm"] < 0.01
    # on AR(1) the strategy beats buy-and-hold of a driftless series after costs
    assert "Trading after costs: the model's strategy" in m["verdict"]
    # the ridge AR baseline on the same feature finds the same structure
    assert m["forecast"]["ridge_ar"]["r2_oos"] > 0.15


def test_backtest_cli_outputs_resume_and_determinism(tmp_path):
    args = [
        "backtest",
        "--config",
        str(ROOT / "configs/quick.yaml"),
        "--set",
        "train.epochs=1",
        "--set",
        "backtest.train_span=2800",
        "--set",
        "backtest.test_span=150",
    ]
    out = tmp_path / "bt"
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "walk-forward:" in result.output and "buy_and_hold" in result.output
    for name in [
        "predictions.parquet",
        "folds.csv",
        "metrics.json",
        "report.html",
        "config.yaml",
        "versions.json",
        "manifest.json",
        "timing.json",
    ]:
        assert (out / name).exists(), name
    run = json.loads((out / "versions.json").read_text())
    assert run["device"] == str(select_device("auto")) and run["seed"] == 0
    pred = pd.read_parquet(out / "predictions.parquet")
    assert {
        "date",
        "ticker",
        "fold",
        "prediction",
        "realized",
        "zero",
        "persistence",
        "trailing_mean",
        "ridge_ar",
    } <= set(pred.columns)
    assert set(pred["ticker"]) == {"MSFT", "AAPL"} and np.isfinite(pred["prediction"]).all()
    folds = pd.read_csv(out / "folds.csv")
    assert (pd.to_datetime(folds["train_end"]) < pd.to_datetime(folds["test_start"])).all()
    html = (out / "report.html").read_text()
    images = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'", html)
    assert len(images) == html.count("<img") == 5 and "Diebold-Mariano" in html
    for alt, b64 in images:  # each image decodes and says what it shows
        pixels = mpimg.imread(BytesIO(base64.b64decode(b64)), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0, alt
    assert "each baseline&#x27;s strategy and buy-and-hold" in images[0][0]
    for section, anchor in [
        ("Verdict", "verdict"),
        ("Costs and turnover", "costs"),
        ("Equity and drawdown", "equity"),
        ("Quantile analysis", "quantiles"),
        ("Per ticker", "per-ticker"),
        ("Per fold", "per-fold"),
        ("Monthly net", "monthly"),
    ]:
        assert f"<section id='{anchor}'><h2>{section}" in html, section
    quantiles = html.split("<section id='quantiles'>")[1].split("</section>")[0]
    assert "<table>" in quantiles and "Quantile chart" not in quantiles  # table, then chart
    assert "by forecast bucket, with 95% error bars" in quantiles
    assert html.index("<h2>Verdict") < html.index("<h2>Model vs baselines")
    assert "Top minus bottom of 5 forecast buckets (pooled over time" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["folds"] == len(folds) and m["trading"]["buy_and_hold"]["bars"] > 0
    timing = json.loads((out / "timing.json").read_text())
    assert timing["folds"] == len(folds)
    parts = timing["prepare_seconds"] + timing["fit_seconds"] + timing["predict_seconds"]
    assert 0 < parts <= timing["prepare_seconds"] + timing["folds_seconds"]
    assert (folds["fit_seconds"] > 0).all() and (folds["predict_seconds"] > 0).all()

    # same config and seed -> byte-identical metrics.json
    again = tmp_path / "again"
    assert runner.invoke(app, [*args, "--out", str(again)]).exit_code == 0
    assert (out / "metrics.json").read_bytes() == (again / "metrics.json").read_bytes()

    # interrupted after the first fold: finished folds stay, --resume finishes the same way
    resumed = tmp_path / "resumed"
    import tsconv.recipes.backtest as wf

    real = wf.run_fold
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    wf.run_fold = flaky
    try:
        r = runner.invoke(app, [*args, "--out", str(resumed)])
    finally:
        wf.run_fold = real
    assert r.exit_code == 130
    assert len(list((resumed / "folds").glob("fold_*.parquet"))) == 1
    assert not (resumed / "metrics.json").exists()
    r = runner.invoke(app, ["backtest", "--resume", str(resumed), "--set", "train.lr=1"])
    assert r.exit_code == 2 and "drop --config, --set and --out" in r.output
    r = runner.invoke(app, ["backtest", "--resume", str(tmp_path)])
    assert r.exit_code == 2 and "not an interrupted backtest" in r.output
    r = runner.invoke(app, ["backtest", "--resume", str(resumed)])
    assert r.exit_code == 0, r.output
    assert (out / "metrics.json").read_bytes() == (resumed / "metrics.json").read_bytes()
    n = len(folds)
    assert f"{n} folds (1 kept from the interrupted run, {n - 1} run now)" in r.output
    timing = json.loads((resumed / "timing.json").read_text())
    assert timing["folds_resumed"] == 1 and timing["folds"] == n


def test_warm_retrain_and_sliding_scheme_run(tmp_path):
    frames = {"X": ohlcv_from_returns(random_walk_returns(900, seed=5))}
    m, out = _synthetic_backtest(
        tmp_path,
        "warm",
        frames,
        backtest={
            "scheme": "sliding",
            "retrain": "warm",
            "warm_epochs": 1,
            "train_span": 300,
            "test_span": 200,
            "position": "scaled",
        },
    )
    folds = pd.read_csv(out / "folds.csv")
    assert list(folds["epochs"])[1:] == [1] * (len(folds) - 1)
    assert math.isfinite(m["trading"]["prediction"]["sharpe"])


def test_a_ticker_listed_mid_backtest_is_traded_only_once_it_has_training_history(tmp_path):
    old = ohlcv_from_returns(random_walk_returns(1000, seed=1))
    new = ohlcv_from_returns(random_walk_returns(500, seed=2)).set_axis(old.index[500:], axis=0)
    m, out = _synthetic_backtest(
        tmp_path,
        "ipo",
        {"OLD": old, "NEW": new},
        backtest={"train_span": 300, "test_span": 100},
        train={"epochs": 1},
    )
    pred = pd.read_parquet(out / "predictions.parquet")
    first_new = pred.loc[pred["ticker"] == "NEW", "date"].min()
    # NEW lists at bar 500 and needs more than `window` training bars before its first test bar
    assert first_new >= old.index[500 + 32]
    folds = pd.read_csv(out / "folds.csv")
    assert folds["test_rows"].iloc[0] == 100  # only OLD in the first fold


def test_results_table_fits_80_columns_without_cutting_a_figure():
    from rich.console import Console

    from tsconv.cli import results_table
    from tsconv.evaluate.baselines import NAMES
    from tsconv.report.tables import TABLE_HEADER, table_rows

    # the widest figures a backtest gives: R^2 of a persistence forecast, a wiped-out strategy
    worst = {"mse": 1.23456e-3, "r2_oos": -1.0532, "directional_accuracy": 0.5}
    worst |= {"ic": -0.123, "rank_ic": -0.123}
    trading = {"annual_return": -0.999, "sharpe": -12.34, "max_drawdown": -1.0}
    names = ["prediction", *NAMES, "buy_and_hold"]
    m = {
        "n_predictions": 123456,
        "first_date": "2001-01-01",
        "last_date": "2024-12-31",
        "folds": 99,
        "forecast": {n: worst for n in names if n != "buy_and_hold"},
        "trading": {n: trading for n in names},
    }
    rows = table_rows(m)
    console = Console(width=80, record=True)
    console.print(results_table(m, TABLE_HEADER, rows))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for row in rows:
        assert all(cell in text for cell in row)  # every figure whole


def _readme_keys() -> dict[str, set[str]]:
    """docs/metrics.md's metrics.json table: row label -> the backticked keys it names."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## metrics.json", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            label, meaning = line.strip("|").split("|", 1)
            rows[label.strip()] = set(re.findall(r"`([a-z_0-9<>.]+)`", meaning)) | set(
                re.findall(r"`([a-z_0-9]+)`", label)
            )
    return rows


def test_metrics_json_keys_are_the_documented_table(tmp_path):
    frames = {t: ohlcv_from_returns(random_walk_returns(700, seed=i)) for i, t in enumerate("ABC")}
    m, out = _synthetic_backtest(
        tmp_path, "keys", frames, backtest={"train_span": 400, "test_span": 150}
    )
    m = json.loads((out / "metrics.json").read_text())
    rows = _readme_keys()
    documented_top = set().union(
        *(re.findall(r"`([a-z_]+)`", label) for label in rows if "." not in label)
    )
    assert set(m) == documented_top | {"forecast", "trading"}
    breakdown_doc = rows["`by_ticker.<t>`, `by_fold.<k>`"]
    assert set(m["by_ticker"]) == {"A", "B", "C"} and len(m["by_fold"]) == m["folds"]
    for row in [*m["by_ticker"].values(), *m["by_fold"].values()]:
        assert set(row) <= breakdown_doc, set(row) - breakdown_doc
    assert sum(r["n"] for r in m["by_fold"].values()) == m["n_predictions"]
    forecast_doc = rows["`forecast.<f>`"]
    for name, f in m["forecast"].items():
        assert name in forecast_doc
        assert set(f) - {"dm_vs"} <= forecast_doc, set(f) - forecast_doc
    assert set(m["forecast"]["prediction"]["dm_vs"]["zero"]) == {"stat", "p_value", "p_holm", "n"}
    trading_doc = rows["`trading.<s>`"]
    for name, t in m["trading"].items():
        assert name in (set(m["forecast"]) - {"zero"}) | {"buy_and_hold"}
        assert set(t) - {"sharpe_vs"} <= trading_doc, set(t) - trading_doc
        assert set(t["sharpe_at_bps"]) <= trading_doc
    sv = m["trading"]["prediction"]["sharpe_vs"]
    assert set(sv) == {"persistence", "trailing_mean", "ridge_ar", "buy_and_hold"}
    assert set(next(iter(sv.values()))) == {"difference", "stat", "p_value", "p_holm", "n"}
    q, q_doc = m["quantiles"], rows["`quantiles`"]
    assert set(q) <= q_doc and set(q["spread"]) <= q_doc and set(q["buckets"][0]) <= q_doc
    assert q["method"] in q_doc and len(q["buckets"]) == 5
