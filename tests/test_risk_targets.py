"""The risk targets' pieces (tsconv.data.targets, evaluate.risk_*): numbers checked against
hand computations, the baselines' causality and fitting span, and metrics.json's documented
keys for a volatility and a quantiles backtest."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tsconv import synthetic_vol
from tsconv.cli import app
from tsconv.data import targets
from tsconv.data.features import build
from tsconv.engine.predict import predict_rows
from tsconv.evaluate import risk_baselines, risk_metrics
from tsconv.recipes import risk_fold
from tsconv.recipes.audit import run_audit
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.fit_span import fit_span
from tsconv.recipes.prepare import global_rows, prepare, split_train_val
from tsconv.recipes.walkforward import fold_spans, make_folds

ROOT = Path(__file__).resolve().parents[1]


def test_proxies_by_hand():
    o, h, lo, c = np.array([100.0]), np.array([103.0]), np.array([99.0]), np.array([102.0])
    hl, co = math.log(103 / 99), math.log(102 / 100)
    assert targets.proxy(o, h, lo, c, np.log(c), "parkinson")[0] == pytest.approx(
        hl**2 / (4 * math.log(2))
    )
    gk = 0.5 * hl**2 - (2 * math.log(2) - 1) * co**2
    assert targets.proxy(o, h, lo, c, np.log(c), "garman_klass")[0] == pytest.approx(gk)
    sq = targets.proxy(o, h, lo, c, np.log([100.0, 101.0]), "squared_return")
    assert np.isnan(sq[0]) and sq[1] == pytest.approx(math.log(1.01) ** 2)


def test_range_proxies_are_less_noisy_than_squared_returns():
    frame, s2 = synthetic_vol.constant(4000, seed=3)
    logp = np.log(frame["close"].to_numpy())
    cols = [frame[k].to_numpy() for k in ("open", "high", "low", "close")]
    sq = targets.proxy(*cols, logp, "squared_return")[1:]
    gk = targets.proxy(*cols, logp, "garman_klass")[1:]
    assert np.mean(sq) == pytest.approx(s2[0], rel=0.06)
    # a path of 24 steps has a shorter range than a continuous one: the range proxies are
    # proportional to the variance, below it (the forecasts' calibration takes the constant)
    assert 0.5 * s2[0] < np.mean(gk) < s2[0]
    assert np.std(gk) / np.mean(gk) < 0.5 * np.std(sq) / np.mean(sq)


def test_the_target_is_the_next_bars_variance_and_the_base_is_causal():
    frames = {"A": synthetic_vol.constant(300, seed=1)[0], "B": synthetic_vol.constant(200)[0]}
    data = build(frames, ["log_return", "hl_range"], 2, risk="parkinson")
    for t, td in data.items():
        f = frames[t].loc[td.dates]
        p = np.log(f["high"] / f["low"]).to_numpy() ** 2 / (4 * math.log(2))
        i = 50
        assert td.risk["rv"][i] == pytest.approx(p[i + 1] + p[i + 2])
        assert np.isnan(td.risk["rv"][-2:]).all() and np.isnan(td.y[-2:]).all()
        assert td.y[i] == pytest.approx(math.log(td.risk["rv"][i] / 2 / td.risk["base"][i]))
        # the base at t: the proxy's mean over the 63 bars up to t, this ticker's only
        full = np.log(frames[t]["high"] / frames[t]["low"]).to_numpy() ** 2 / (4 * math.log(2))
        k = len(frames[t]) - len(td.dates) + 100
        assert td.risk["base"][100] == pytest.approx(full[k - 62 : k + 1].mean())


def test_risk_inputs_in_units_of_return_are_read_relative_to_the_trailing_volatility():
    names = ["log_return", "hl_range", "vol_5", "mom_3", "ewvol_32", "close_loc", "volume_z_20"]
    frame = synthetic_vol.garch_t(400, seed=3)[0]
    plain = build({"A": frame}, names, 1)["A"]
    risk = build({"A": frame}, names, 1, risk="garman_klass")["A"]
    at = plain.dates.get_indexer(risk.dates)  # the risk target drops rows without a base
    scale = np.sqrt(risk.risk["base"])
    for j, name in enumerate(names):
        expected = plain.x[at, j] / scale if j < 5 else plain.x[at, j]  # the last two: unitless
        np.testing.assert_allclose(risk.x[:, j], expected, rtol=1e-5, err_msg=name)
    # the same series at three times the volatility: the same inputs (a wild year looks like a
    # calm one), where the plain features are three times as large
    wild = frame.copy()
    for c in ("open", "high", "low", "close", "adj_close"):
        wild[c] = 100.0 * np.exp(3.0 * np.log(frame[c] / 100.0))
    risk3 = build({"A": wild}, names, 1, risk="garman_klass")["A"]
    for j in range(5):
        np.testing.assert_allclose(risk3.x[:, j], risk.x[:, j], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        build({"A": wild}, names, 1)["A"].x[at, 0], 3 * plain.x[at, 0], rtol=1e-4
    )


def test_calibration_makes_the_forecast_unbiased_and_quantiles_never_cross():
    rng = np.random.default_rng(0)
    base = np.full(5000, 2e-4)
    z = rng.normal(0, 0.3, 5000)
    bounds = targets.forecast_range(z)
    rv = targets.variance_forecast(z, base, 1, 1.0, bounds) * rng.chisquare(1, 5000)
    c = targets.calibration(z, base, rv, 1, bounds)
    assert c == pytest.approx(1.0, rel=0.05)
    sigma = np.sqrt(targets.variance_forecast(z, base, 1, c, bounds))
    k = targets.standardized_quantiles(sigma * rng.standard_normal(5000), sigma, [0.05, 0.5, 0.95])
    assert k[0] == pytest.approx(-1.645, abs=0.1) and k[2] == pytest.approx(1.645, abs=0.1)
    assert np.all(np.diff(k) >= 0)


def test_one_bad_print_does_not_set_the_scale_of_every_forecast():
    rng = np.random.default_rng(0)
    forecast = np.exp(rng.normal(-9, 0.5, 400))
    rv = forecast * np.exp(rng.normal(0, 0.5, 400)) * 1.2  # a range proxy's spread
    clean = targets.mean_ratio(rv, forecast)
    assert clean == np.mean(rv / forecast)  # no ratio reaches the fence: the plain mean
    bad = rv.copy()
    bad[200] = 1000 * forecast[200]  # a bad print: the proxy a thousand times the forecast
    assert np.mean(bad / forecast) > 2 * clean  # the plain mean, moved by one row
    assert targets.mean_ratio(bad, forecast) == pytest.approx(clean, rel=0.1)
    # a fold whose validation span holds the bad print: its scale stays near the clean one
    cfg = tiny_config(
        target={"kind": "volatility", "proxy": "parkinson"},
        backtest={"train_span": 400, "test_span": 300},
    )
    clean_frame = synthetic_vol.garch_t(700, seed=2)[0]
    bad_frame = clean_frame.copy()
    bad_frame.iloc[400, bad_frame.columns.get_loc("low")] /= 20
    cpu = torch.device("cpu")
    scales = {}
    for name, frame in (("clean", clean_frame), ("bad", bad_frame)):
        prep = prepare(cfg, {"A": frame})
        train, test = fold_spans(prep, make_folds(prep)[0])
        fit, val = split_train_val(prep, train)
        assert val["A"][0] <= prep.data["A"].dates.get_loc(frame.index[400])  # in validation
        model, scalers, panel, _ = fit_span(prep, fit, val, seed=0, device=cpu)
        _, info = risk_fold.model_forecasts(prep, model, panel, scalers, train, val, test, cpu)
        scales[name] = info["variance_scale"]
    assert scales["bad"] < 1.5 * scales["clean"], scales


def _one_absurd_gap(frame: pd.DataFrame, at: int) -> pd.DataFrame:
    """`frame` with every price from bar `at` on three times itself: an overnight jump of
    110% (a split not adjusted for, a bad print), the bar's range as usual. (A bad print in
    one bar's range no longer serves: a risk target reads the range against a trailing mean
    that holds that bar too, so however wide, it is at most sqrt(63) of it.)"""
    bad = frame.copy()
    for c in ("open", "high", "low", "close", "adj_close"):
        bad.iloc[at:, bad.columns.get_loc(c)] *= 3.0
    return bad


def test_an_absurd_bar_in_the_test_span_gives_a_forecast_clipped_to_the_training_range():
    """The network's forecast z on a bar unlike any in training (a 110% overnight jump)
    lies outside the range of its forecasts on the fold's training rows: the variance
    forecast is then h base exp(that range's end) c, finite and positive; every forecast
    inside the range is the unclipped h base exp(z) c, the same numbers as before the guard."""
    cpu = torch.device("cpu")
    frame = _one_absurd_gap(synthetic_vol.garch_t(700, seed=2)[0], 560)
    cfg = tiny_config(
        target={"kind": "volatility", "proxy": "parkinson"},
        model={"highway": True},
        backtest={"train_span": 400, "test_span": 300},
    )
    prep = prepare(cfg, {"A": frame})
    train, test = fold_spans(prep, make_folds(prep)[0])
    fit, val = split_train_val(prep, train)
    model, scalers, panel, _ = fit_span(prep, fit, val, seed=0, device=cpu)
    forecasts, info = risk_fold.model_forecasts(prep, model, panel, scalers, train, val, test, cpu)

    def z_of(rows: np.ndarray) -> np.ndarray:
        pred = predict_rows(model, panel, global_rows(panel, "A", rows), cfg.window, cpu)
        return pred.astype(np.float64) * scalers["A"].y_scale

    lo, hi = train["A"]
    z_train = z_of(np.arange(max(lo, cfg.window - 1), hi))
    rows = test["A"]
    z = z_of(rows)
    bad = rows == prep.data["A"].dates.get_loc(frame.index[560])
    assert bad.sum() == 1 and not z_train.min() <= z[bad][0] <= z_train.max()
    var, c = forecasts["A"], info["variance_scale"]
    base = prep.data["A"].risk["base"][rows]
    outside = (z < z_train.min()) | (z > z_train.max())
    assert info["forecasts_clipped"] == outside.sum() >= 1
    assert np.isfinite(var).all() and (var > 0).all()
    np.testing.assert_allclose(var, base * np.exp(np.clip(z, z_train.min(), z_train.max())) * c)
    np.testing.assert_array_equal(var[~outside], base[~outside] * np.exp(z[~outside]) * c)


def test_clipped_forecasts_are_counted_in_folds_csv_metrics_json_and_the_report(tmp_path):
    frames = {"A": _one_absurd_gap(synthetic_vol.garch_t(700, seed=2)[0], 560)}
    cfg = tiny_config(
        target={"kind": "volatility", "proxy": "parkinson"},
        model={"highway": True},
        backtest={"train_span": 400, "test_span": 300},
    )
    out = tmp_path / "bt"
    run_backtest(cfg, out, prep=prepare(cfg, frames))
    folds = pd.read_csv(out / "folds.csv")
    m = json.loads((out / "metrics.json").read_text())
    assert m["forecasts_clipped"] == folds["forecasts_clipped"].sum() >= 1
    (warning,) = [w for w in m["warnings"] if "clipped" in w]
    assert warning.startswith(f"{m['forecasts_clipped']} model forecast(s) in fold(s) 0 lay")
    assert warning in (out / "report.html").read_text().replace("&#x27;", "'")
    pred = pd.read_parquet(out / "predictions.parquet")
    assert np.isfinite(pred["prediction"]).all() and (pred["prediction"] > 0).all()


def test_qlike_mz_kupiec_christoffersen_by_hand():
    assert risk_metrics.qlike(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(
        0.5 - math.log(0.5) - 1
    )
    assert risk_metrics.qlike(np.array([1.0]), np.array([1.0]))[0] == 0
    mz = risk_metrics.mincer_zarnowitz(np.array([1.0, 2, 3, 4]), np.array([3.0, 5, 7, 9]))
    assert mz["intercept"] == pytest.approx(1) and mz["slope"] == pytest.approx(2)
    hits = np.zeros(1000, bool)
    hits[::20] = True  # exactly 5%
    assert risk_metrics.kupiec(hits, 0.05)["p_value"] == pytest.approx(1.0)
    assert risk_metrics.kupiec(hits, 0.01)["p_value"] < 1e-6
    clustered = np.zeros(1000, bool)
    clustered[100:150] = True
    assert risk_metrics.christoffersen(clustered)["p_value"] < 1e-6
    # hits exactly every 20th bar never follow each other: too regular, also rejected
    assert risk_metrics.christoffersen(hits)["p_value"] < 0.05
    iid = np.random.default_rng(0).random(2000) < 0.05
    assert risk_metrics.christoffersen(iid)["p_value"] > 0.01


def test_baselines_use_only_the_training_rows_and_the_past():
    frame, _ = synthetic_vol.garch_t(1500, seed=2)
    data = build({"A": frame}, ["log_return", "hl_range"], 1, risk="garman_klass")
    td = data["A"]
    rows = np.arange(1000, 1200)
    a = risk_baselines.risk_baselines(td, (0, 1000), rows, 1, 252)
    # the future changed: every forecast up to and including the row before it stays
    later = frame.copy()
    later.iloc[1150:, :4] *= 1.5
    tb = build({"A": later}, ["log_return", "hl_range"], 1, risk="garman_klass")["A"]
    b = risk_baselines.risk_baselines(tb, (0, 1000), rows, 1, 252)
    cut = 1150 - (len(frame) - len(td.dates)) - 1000  # test rows before the change
    for name in a.variance:
        np.testing.assert_array_equal(a.variance[name][:cut], b.variance[name][:cut])
    assert a.garch.failed is None and 0.8 < a.garch.alpha + a.garch.beta < 1
    assert a.garch.nu == pytest.approx(6, abs=3)  # the generating process's tails


def test_a_garch_fit_that_fails_falls_back_to_ewma_and_says_so():
    frame, _ = synthetic_vol.constant(400, seed=1)
    td = build({"A": frame}, ["log_return"], 1, risk="squared_return")["A"]
    b = risk_baselines.risk_baselines(td, (0, 60), np.arange(60, 100), 1, 252)
    assert b.garch.failed and "too few" in b.garch.failed
    np.testing.assert_array_equal(b.return_variance["garch"], b.return_variance["ewma"])


def _doc_rows() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("### metrics.json of a risk backtest", 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            label, meaning = line.strip("|").split("|", 1)
            rows[label.strip()] = set(re.findall(r"`([a-z_0-9<>.@]+)`", meaning)) | set(
                re.findall(r"`([a-z_0-9]+)`", label)
            )
    return rows


def _risk_backtest(tmp_path, kind: str):
    frames = {t: synthetic_vol.garch_t(900, seed=i)[0] for i, t in enumerate("AB")}
    cfg = tiny_config(
        target={"kind": kind, "proxy": "parkinson", "levels": [0.05, 0.5, 0.95]},
        backtest={"train_span": 400, "test_span": 200},
        model={"highway": True},
    )
    run_backtest(cfg, tmp_path / kind, prep=prepare(cfg, frames))
    return json.loads((tmp_path / kind / "metrics.json").read_text()), tmp_path / kind


def test_volatility_metrics_json_keys_are_documented(tmp_path):
    m, out = _risk_backtest(tmp_path, "volatility")
    rows = _doc_rows()
    top = set().union(*(re.findall(r"`([a-z_]+)`", k) for k in rows if "." not in k))
    assert set(m) == top | {"forecast", "by_ticker", "by_fold"}, set(m) ^ top
    breakdown = rows["`by_ticker.<t>`, `by_fold.<k>`"]
    for row in [*m["by_ticker"].values(), *m["by_fold"].values()]:
        assert {re.sub("_(prediction|trailing_mean|ewma|garch|har)$", "_<f>", k) for k in row} <= (
            breakdown
        )
    assert m["target"] == "volatility" and m["proxy"] == "parkinson"
    forecast_doc = rows["`forecast.<f>`"]
    assert set(m["forecast"]) == {"prediction", *risk_baselines.VOL_BASELINES}
    for f in m["forecast"].values():
        assert set(f) - {"dm_vs"} <= forecast_doc
        assert set(f["mincer_zarnowitz"]) <= forecast_doc
    assert set(m["forecast"]["prediction"]["dm_vs"]["garch"]) == {"stat", "p_value", "p_holm", "n"}
    assert set(m["edge"]) <= rows["`edge`"]
    assert set(m["strategy"]) <= rows["`strategy`"]
    assert sum(r["n"] for r in m["by_fold"].values()) == m["n_predictions"]
    pred = pd.read_parquet(out / "predictions.parquet")
    assert (pred["prediction"] > 0).all() and np.isfinite(pred["prediction"]).all()
    assert "Volatility-managed strategy" in (out / "report.html").read_text()
    folds = pd.read_csv(out / "folds.csv")
    assert "variance_scale" in folds and "garch_fallback" in folds


def test_the_managed_book_holds_each_bar_by_the_forecast_made_the_close_before(tmp_path):
    """The volatility backtest's managed book, by hand: the weight set at t's close is
    target / the forecast annualised volatility made at t (at most 3), and earns the return
    from t's close to t+1's, the same price series's; net of costs on the weight's change."""
    m, out = _risk_backtest(tmp_path, "volatility")
    frames = {t: synthetic_vol.garch_t(900, seed=i)[0] for i, t in enumerate("AB")}
    pred = pd.read_parquet(out / "predictions.parquet")
    s = m["strategy"]
    nets = []
    for ticker, g in pred.groupby("ticker"):
        close = frames[ticker]["close"]
        after = close.shift(-1).reindex(g["date"]).to_numpy() / close.reindex(g["date"]).to_numpy()
        np.testing.assert_allclose(np.expm1(g["realized_1"]), after - 1, rtol=1e-9)
        vol = np.sqrt(g["prediction"].to_numpy() * m["periods_per_year"])
        w = np.minimum(s["target_vol"] / vol, s["max_leverage"])
        cost = s["cost_bps"] / 1e4 * np.abs(np.diff(w, prepend=0.0))
        nets.append(pd.Series(w * (after - 1) - cost, index=g["date"].to_numpy()))
    by_hand = pd.concat(nets, axis=1).mean(axis=1).sort_index()
    returns = pd.read_parquet(out / "returns.parquet").set_index("date")
    np.testing.assert_allclose(returns["prediction"].to_numpy(), by_hand.to_numpy(), rtol=1e-9)
    book = s["strategies"]["prediction"]
    assert set(book["sharpe_vs"]) == {*risk_baselines.VOL_BASELINES, "buy_and_hold"}
    assert (
        book["sharpe_vs"]["trailing_mean"]["p_holm"]
        >= book["sharpe_vs"]["trailing_mean"]["p_value"]
    )


def test_quantiles_metrics_json_keys_are_documented(tmp_path):
    m, out = _risk_backtest(tmp_path, "quantiles")
    rows = _doc_rows()
    top = set().union(*(re.findall(r"`([a-z_]+)`", k) for k in rows if "." not in k))
    assert set(m) == (top - {"edge"}) | {"levels", "by_ticker", "by_fold"}, set(m) ^ top
    assert set(m["levels"]) == {"0.05", "0.5", "0.95"}
    level_doc = rows["`levels.<q>.<f>`"]
    for row in m["levels"].values():
        assert set(row) == {"prediction", *risk_baselines.QUANTILE_BASELINES}
        for f in row.values():
            assert set(f) - {"dm_vs"} <= level_doc
    pred = pd.read_parquet(out / "predictions.parquet")
    cols = ["prediction@0.05", "prediction@0.5", "prediction@0.95"]
    assert (pred[cols].diff(axis=1).iloc[:, 1:] >= 0).all().all()
    for row in m["by_fold"].values():
        assert {re.sub("@[0-9.]+$", "@<q>", k) for k in row} <= rows[
            "`by_ticker.<t>`, `by_fold.<k>`"
        ]


@pytest.mark.slow
def test_audit_covers_the_risk_targets(tmp_path):
    """Perturbing every bar after the cut changes no volatility or quantile forecast, and no
    baseline, dated before it."""
    frames = {"A": synthetic_vol.garch_t(900, seed=4)[0]}
    path = tmp_path / "a.csv"
    frames["A"].to_csv(path)
    for kind in ("volatility", "quantiles"):
        cfg = tiny_config(
            data={"source": "csv", "path": str(path), "tickers": ["A"]},
            target={"kind": kind},
            backtest={"train_span": 400, "test_span": 200},
        )
        report = run_audit(cfg, folds=2)
        causal = [f for f in report["findings"] if f["check"] == "causality"]
        assert not causal, causal
        assert "predictions of" in report["checked"]["pipeline"]


def test_config_rejects_bad_levels_and_keeps_return_configs_as_they_were():
    with pytest.raises(Exception, match="levels"):
        tiny_config(target={"kind": "quantiles", "levels": [0.5, 0.05]})
    from tsconv.config import dump_yaml

    assert "proxy" not in dump_yaml(tiny_config())
    assert "levels" not in dump_yaml(tiny_config(target={"kind": "volatility"}))
    result = CliRunner().invoke(app, ["config", "show", "vol"])
    assert result.exit_code == 0 and "kind: volatility" in result.output


def test_train_then_predict_prints_the_forecast_volatility_and_quantiles(tmp_path):
    from tsconv.config import dump_yaml

    path = tmp_path / "g.csv"
    synthetic_vol.garch_t(700, seed=5)[0].to_csv(path)
    cfg = tiny_config(
        data={"source": "csv", "path": str(path), "tickers": ["G"]},
        target={"kind": "quantiles", "levels": [0.05, 0.95]},
    )
    (tmp_path / "q.yaml").write_text(dump_yaml(cfg))
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "--config", str(tmp_path / "q.yaml"), "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["predict", "--run", str(run), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["predicted_variance"] > 0
    assert row["predicted_vol"] == pytest.approx(math.sqrt(row["predicted_variance"]))
    q = row["quantiles"]
    assert q["0.05"] < 0 < q["0.95"]
    result = CliRunner().invoke(app, ["predict", "--run", str(run)])
    assert result.exit_code == 0 and "q0.05" in result.output and "G" in result.output


def test_predict_clips_a_forecast_from_an_absurd_latest_bar_and_says_so(tmp_path):
    """A run trained on clean bars; then the latest bar jumps 110% overnight. The forecast
    after it lies beyond the model's forecasts on the rows it trains on: clipped,
    finite, and named under the table; the clean latest bar's is not."""
    from tsconv.config import dump_yaml

    # not the series's last 5 bars: the last is a 9% fall (Student-t), its range 2.5 times
    # any other's, and this small model's forecast after it is clipped too
    frame = synthetic_vol.garch_t(700, seed=2)[0].iloc[:-5]
    path = tmp_path / "g.csv"
    frame.to_csv(path)
    cfg = tiny_config(
        data={"source": "csv", "path": str(path), "tickers": ["G"]},
        target={"kind": "volatility", "proxy": "parkinson"},
        model={"highway": True},
    )
    (tmp_path / "v.yaml").write_text(dump_yaml(cfg))
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "--config", str(tmp_path / "v.yaml"), "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    rows = {}
    for name, bars in (("clean", frame), ("absurd", _one_absurd_gap(frame, len(frame) - 1))):
        bars.to_csv(path)
        result = CliRunner().invoke(app, ["predict", "--run", str(run), "--json"])
        assert result.exit_code == 0, result.output
        (rows[name],) = json.loads(result.output)
    assert rows["clean"]["clipped"] is False and rows["absurd"]["clipped"] is True
    assert 0 < rows["absurd"]["predicted_variance"] < math.inf
    result = CliRunner().invoke(app, ["predict", "--run", str(run)])
    assert result.exit_code == 0 and "clipped: G (the forecast lay beyond" in result.output


def test_sweep_refuses_a_return_objective_on_a_risk_target_in_one_line(tmp_path):
    """The shipped quick space selects on the Sharpe ratio; a volatility sweep on QLIKE
    (tests/test_risk_sweep.py)."""
    result = CliRunner().invoke(
        app, ["sweep", "--config", "vol", "--space", "quick", "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2, result.output
    assert "sweep.objective: sharpe does not score a volatility forecast; use qlike" in (
        " ".join(result.output.split())
    )
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_workers_give_the_serial_bytes_with_a_covariate(tmp_path):
    """Two processes, and a file covariate, on a volatility and a quantiles target."""
    frames = {t: synthetic_vol.garch_t(800, seed=7 + i)[0] for i, t in enumerate("AB")}
    cov = tmp_path / "cov.csv"
    dates = frames["A"].index
    pd.DataFrame({"date": dates, "x": np.sin(np.arange(len(dates)) / 9)}).to_csv(cov, index=False)
    for kind in ("volatility", "quantiles"):
        outs = []
        for workers in (1, 2):
            cfg = tiny_config(
                target={"kind": kind},
                covariates=[{"file": str(cov), "columns": ["x"]}],
                backtest={"train_span": 400, "test_span": 150, "workers": workers},
                train={"threads": 1},
            )
            out = tmp_path / f"{kind}-{workers}"
            run_backtest(cfg, out, prep=prepare(cfg, frames))
            outs.append((out / "predictions.parquet").read_bytes())
        assert outs[0] == outs[1], kind


def test_a_ray_cluster_gives_the_serial_bytes_on_both_risk_targets(tmp_path, monkeypatch):
    """The folds as Ray tasks on a local loopback cluster (started and stopped by the run),
    whose workers run numpy's BLAS on one thread: the GARCH baseline too gives the bytes of
    the serial run (before its fit ran on one BLAS thread, a forecast moved by 1e-9)."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    pytest.importorskip("ray")
    frames = {t: synthetic_vol.garch_t(700, seed=3 + i)[0] for i, t in enumerate("AB")}
    for kind in ("volatility", "quantiles"):
        outs = []
        for executor in ("local", "ray"):
            cfg = tiny_config(
                target={"kind": kind},
                backtest={"train_span": 400, "test_span": 150, "executor": executor},
                train={"threads": 1},
            )
            out = tmp_path / f"{kind}-{executor}"
            run_backtest(cfg, out, prep=prepare(cfg, frames))
            outs.append([(out / n).read_bytes() for n in ("predictions.parquet", "metrics.json")])
        assert outs[0] == outs[1], kind


def test_garch_is_fitted_to_its_maximum_likelihood_on_any_blas_thread_count():
    """AAPL 2000-2006 (the sample's vol backtest, fold 2): from arch's own start SLSQP stops,
    converged by its test, about 8 log-likelihood units below the maximum, at a point that
    moves with the BLAS thread count; the fit from several starts reaches the maximum on both."""
    import warnings

    from arch import arch_model
    from threadpoolctl import threadpool_limits

    from tsconv.data.sources import load_sample

    close = load_sample(["AAPL"])["AAPL"]["adj_close"]
    r = np.log(close).diff().loc["2000-03-29":"2006-03-17"].dropna().to_numpy()
    model = arch_model(100 * r, mean="Constant", vol="GARCH", p=1, q=1, dist="t")
    fits = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            fit = risk_baselines.fit_garch(r)
        assert fit.failed is None
        params = [100 * fit.mu, 1e4 * fit.omega, fit.alpha, fit.beta, fit.nu]
        fits.append((params, model.fix(params).loglikelihood))
        with threadpool_limits(threads, user_api="blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one_start = model.fit(disp="off", show_warning=False)
        assert fits[-1][1] >= one_start.loglikelihood - 1e-6
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=1e-3, atol=1e-5)
    assert fits[0][1] == pytest.approx(fits[1][1], abs=1e-4)
    assert fits[0][1] > one_start.loglikelihood + 5  # what arch's start alone missed here


def test_a_failed_garch_fit_falls_back_to_ewma_in_the_report(tmp_path, monkeypatch):
    """A fold whose GARCH fit raises: EWMA stands in there, and folds.csv, metrics.json's
    warnings and the report's header say so."""
    import arch

    def broken(*args, **kwargs):
        raise RuntimeError("the optimiser gave up")

    monkeypatch.setattr(arch, "arch_model", broken)
    m, out = _risk_backtest(tmp_path, "volatility")
    assert m["garch_fallbacks"] and all("gave up" in v for v in m["garch_fallbacks"].values())
    assert any("GARCH did not fit" in w for w in m["warnings"])
    assert "GARCH did not fit" in (out / "report.html").read_text()
    pred = pd.read_parquet(out / "predictions.parquet")
    # EWMA's forecast in its place, each scaled to the proxy by its own training-span constant
    ratio = pred["garch"] / pred["ewma"]
    assert np.allclose(ratio.groupby([pred["fold"], pred["ticker"]]).std().fillna(0), 0)


def test_the_multiscale_model_forecasts_volatility_too(tmp_path):
    frames = {"A": synthetic_vol.volume_driven(900, seed=2)[0]}
    cfg = tiny_config(
        target={"kind": "volatility"},
        features=["log_return", "hl_range", "log_volume_chg"],
        model={"kind": "multiscale", "channels": 8, "kernels": [3, 5], "highway": True},
        backtest={"train_span": 400, "test_span": 200},
    )
    m = run_backtest(cfg, tmp_path / "ms", prep=prepare(cfg, frames))
    pred = pd.read_parquet(tmp_path / "ms" / "predictions.parquet")
    assert (pred["prediction"] > 0).all()
    # the volume shock is in its inputs: below the trailing mean's QLIKE, as the oracle is
    assert m["forecast"]["prediction"]["qlike"] < m["forecast"]["trailing_mean"]["qlike"]


def test_manage_scales_the_return_models_strategy_by_the_volatility_forecast(tmp_path):
    frames = {t: synthetic_vol.garch_t(800, seed=11 + i)[0] for i, t in enumerate("AB")}
    runs = {}
    for kind in ("return", "volatility"):
        cfg = tiny_config(target={"kind": kind}, backtest={"train_span": 400, "test_span": 200})
        runs[kind] = tmp_path / kind
        run_backtest(cfg, runs[kind], prep=prepare(cfg, frames))
    result = CliRunner().invoke(
        app, ["manage", str(runs["return"]), str(runs["volatility"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    s = r["strategies"]
    assert set(s) == {"vol_managed", "trailing_vol_managed", "unmanaged"}
    assert set(s["vol_managed"]["sharpe_vs"]) == {"trailing_vol_managed", "unmanaged"}
    # unmanaged is the return backtest's own strategy, bar for bar
    own = pd.read_parquet(runs["return"] / "returns.parquet").set_index("date")["prediction"]
    assert s["unmanaged"]["sharpe"] == pytest.approx(risk_metrics_sharpe(own), rel=1e-9)
    # in the wrong order: one line, exit 2
    result = CliRunner().invoke(app, ["manage", str(runs["volatility"]), str(runs["return"])])
    assert result.exit_code == 2 and "give a return backtest first" in result.output


def risk_metrics_sharpe(net: pd.Series) -> float:
    from tsconv.evaluate import metrics

    return metrics.trading_metrics(net.to_numpy(), 252)["sharpe"]
