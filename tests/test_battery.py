"""The randomized known-answer battery (tsconv.synthetic.draw_spec, generate; scored by
tsconv.evaluate.battery; run by scripts/known_answers.py --battery): seeded draws whose oracle
explains the drawn share of the variance, consistent bars, a signal computed from past bars
only with tsconv's own features, an attainable reference that reaches the oracle when data is
plentiful, and one draw end to end through the CLI with a shipped config."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tsconv import synthetic
from tsconv.cli import app
from tsconv.data.features import compute_features, make_target
from tsconv.evaluate import battery, metrics

SHORT = 600  # bars per ticker: the generator's properties do not need more
DRAWS = range(12)  # seed 0's first two blocks: every family twice, nonlinear four times


def first_of(family: str, seed: int = 0) -> int:
    return next(i for i in range(60) if synthetic.draw_spec(seed, i, SHORT).family == family)


@pytest.fixture(scope="module")
def short_answers() -> dict[int, synthetic.KnownAnswer]:
    return {i: synthetic.generate(synthetic.draw_spec(0, i, SHORT)) for i in DRAWS}


def test_draws_are_reproducible_from_their_seed():
    a = synthetic.generate(synthetic.draw_spec(0, 4, SHORT))
    b = synthetic.generate(synthetic.draw_spec(0, 4, SHORT))
    assert a.draw == b.draw and a.scale == b.scale
    for name in a.frames:
        pd.testing.assert_frame_equal(a.frames[name], b.frames[name])
    other = synthetic.draw_spec(1, 4, SHORT)
    assert other != a.draw
    assert [synthetic.draw_spec(0, i).names[0] for i in (0, 1)] == ["S0D00T0", "S0D01T0"]


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_every_block_of_six_draws_holds_every_family(seed):
    for block in range(3):
        families = [synthetic.draw_spec(seed, 6 * block + i, SHORT).family for i in range(6)]
        assert sorted(families) == sorted(synthetic.FAMILY_BLOCK)


def test_the_battery_varies_forms_noise_and_panels():
    draws = synthetic.battery(0, 24, SHORT)
    assert len({d.form.describe() for d in draws if d.family != "null"}) >= 15
    assert {d.noise.kind for d in draws} == {"gaussian", "student_t", "garch_t"}
    panels = [d.tickers for d in draws if d.family == "panel"]
    assert len(panels) == 4 and all(4 <= k <= 8 for k in panels)
    assert all(d.tickers == 1 for d in draws if d.family != "panel")
    nulls = [d for d in draws if d.family == "null"]
    assert len(nulls) == 4 and all(d.noise.kind == "garch_t" for d in nulls)


@pytest.mark.parametrize("index", DRAWS)
def test_oracle_r2_lands_on_the_drawn_target(short_answers, index):
    answer = short_answers[index]
    draw = answer.draw
    if draw.family == "null":
        assert draw.target_r2 == 0.0 and answer.scale == 0.0 and answer.oracle_r2 == 0.0
        assert all((b == 0).all() for b in answer.basis.values())
        return
    low, high = synthetic.TARGET_R2
    assert low <= draw.target_r2 <= high
    assert answer.oracle_r2 == pytest.approx(draw.target_r2, abs=1e-6)
    # the same share from the bars themselves: 1 - SSE(oracle) / SS(realized) over every row
    realized = np.concatenate([make_target(f).to_numpy()[:-1] for f in answer.frames.values()])
    oracle = np.concatenate([o.to_numpy()[:-1] for o in answer.oracles.values()])
    assert synthetic.oracle_r2(realized, oracle) == pytest.approx(draw.target_r2, abs=0.02)


@pytest.mark.parametrize("index", DRAWS)
def test_bars_are_consistent_ohlcv(short_answers, index):
    answer = short_answers[index]
    assert len(answer.frames) == answer.draw.tickers
    for frame in answer.frames.values():
        assert len(frame) == SHORT and np.isfinite(frame.to_numpy()).all()
        assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
        assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
        assert (frame["low"] > 0).all() and (frame["volume"] > 0).all()
        assert (frame["adj_close"] == frame["close"]).all()
        r = np.log(frame["close"]).diff().dropna()
        assert 0.008 < r.std() < 0.02  # daily-sized moves: SIGMA plus the signal


@pytest.mark.parametrize("index", DRAWS)
def test_the_signal_is_tsconvs_features_of_past_bars_only(short_answers, index):
    """The generator's basis is what tsconv.data.features computes from the bars it wrote, and
    changing every bar after t leaves the basis up to t exactly as it was."""
    answer = short_answers[index]
    form = answer.draw.form
    rng = np.random.default_rng(index)
    for name, frame in answer.frames.items():
        from_bars = battery.signal_basis(form, frame)
        known = from_bars.notna().to_numpy()
        assert known[60:].all()  # every row past the longest warm-up (40 lags, 20 volumes)
        assert np.allclose(from_bars[known], answer.basis[name][known], rtol=0, atol=1e-12)
        t = len(frame) // 2
        later = frame.copy()
        after = len(frame) - t - 1  # every bar after t replaced by another future
        future = synthetic.bars_from(rng.normal(0, 0.02, after), synthetic.bar_shapes(rng, after))
        future.iloc[:, :5] *= frame["close"].iloc[t] / 100
        later.iloc[t + 1 :] = future.to_numpy()
        changed = battery.signal_basis(form, later)
        pd.testing.assert_series_equal(changed.iloc[: t + 1], from_bars.iloc[: t + 1])
        if form.kind != "none":  # the perturbation does reach the signal after t
            assert not np.allclose(changed.iloc[t + 1 :], from_bars.iloc[t + 1 :])


def test_bar_shape_features_are_tsconvs_definitions():
    shape = synthetic.bar_shapes(np.random.default_rng(3), 500)
    frame = synthetic.bars_from(np.random.default_rng(4).normal(0, 0.02, 500), shape)
    mine = synthetic.bar_shape_features(shape)
    theirs = compute_features(frame, list(mine))
    for name, values in mine.items():
        np.testing.assert_allclose(theirs[name], values, rtol=1e-12, atol=1e-12)


def half_split(answer: synthetic.KnownAnswer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicted rows and folds.csv of a two-fold walk-forward on the second half."""
    dates = next(iter(answer.frames.values())).index
    half, third = len(dates) // 2, 3 * len(dates) // 4
    folds = pd.DataFrame(
        {
            "fold": [0, 1],
            "train_start": [str(dates[0].date())] * 2,
            "train_end": [str(dates[half - 1].date()), str(dates[third - 1].date())],
        }
    )
    rows = []
    for name, frame in answer.frames.items():
        y = make_target(frame)
        test = np.arange(half, len(dates) - 1)
        rows.append(
            pd.DataFrame(
                {
                    "date": dates[test],
                    "ticker": name,
                    "fold": (test >= third).astype(int),
                    "realized": y.to_numpy()[test],
                }
            )
        )
    return pd.concat(rows, ignore_index=True), folds


@pytest.mark.parametrize("family", ["linear_lag", "nonlinear", "interaction", "panel", "null"])
def test_the_attainable_reference_nears_the_oracle_on_a_long_series(family):
    draw = synthetic.draw_spec(0, first_of(family), bars=8000 if family != "panel" else 3000)
    answer = synthetic.generate(draw)
    pred, folds = half_split(answer)
    basis = {t: battery.signal_basis(draw.form, f) for t, f in answer.frames.items()}
    target = {t: make_target(f) for t, f in answer.frames.items()}
    forecast = battery.attainable_forecast(pred, folds, basis, target)
    assert np.isfinite(forecast).all()
    attainable = metrics.forecast_metrics(forecast, pred["realized"].to_numpy())["r2_oos"]
    oracle = synthetic.oracle_r2_of(pred, answer.oracles)
    if family == "null":
        assert oracle == 0.0 and attainable == 0.0
        return
    assert oracle > 0.02
    assert attainable >= oracle - 0.006, (draw.form.describe(), oracle, attainable)


def test_summary_counts_ratios_and_null_edges():
    rows = [
        {"family": "linear_lag", "ratio": 0.9, "edge": True, "short_p": 0.9},
        {"family": "linear_lag", "ratio": 0.5, "edge": True, "short_p": 0.5},
        {"family": "nonlinear", "ratio": 0.0, "edge": False, "short_p": 0.001},
        {"family": "panel", "ratio": None, "edge": False, "short_p": None},
        {"family": "null", "ratio": None, "edge": True, "short_p": None},
        {"family": "null", "ratio": None, "edge": False, "short_p": None},
    ]
    s = battery.summarize_battery(rows)
    assert s["median_ratio"] == pytest.approx(0.5) and s["min_ratio"] == 0.0
    assert s["by_family"] == {"linear_lag": pytest.approx(0.7), "nonlinear": 0.0}
    assert (s["signal_draws"], s["signal_with_edge"], s["short_of_share"]) == (4, 2, 1)
    assert (s["null_draws"], s["null_with_edge"]) == (2, 1)


def short_case(model_share: float, signal_sd: float, seed: int = 0) -> tuple[dict, float]:
    """Two tickers on 2,000 dates, r = signal + noise; the attainable forecast is the signal
    itself, the model's `model_share` of it (R^2 about share * (2 - share) of the
    attainable's). short_of_share's p-value and the R^2 ratio."""
    rng = np.random.default_rng(seed)
    dates = np.repeat(pd.bdate_range("2020-01-01", periods=2000), 2)
    signal = signal_sd * rng.standard_normal(len(dates))
    y = signal + rng.standard_normal(len(dates))
    pred = pd.DataFrame({"date": dates, "realized": y, "prediction": model_share * signal})
    r2 = {
        name: metrics.forecast_metrics(f, y)["r2_oos"]
        for name, f in (("model", pred["prediction"].to_numpy()), ("attainable", signal))
    }
    return battery.short_of_share(pred, signal), r2["model"] / r2["attainable"]


def test_short_of_share_tells_a_failed_draw_from_one_too_weak_to_tell():
    # R^2 about 0.2: a model at a fifth of the signal (ratio ~36%) falls short by far
    failed, ratio = short_case(0.2, 0.5)
    assert ratio < 0.5 and failed["p_value"] < 1e-6 and failed["dates"] == 2000
    # the same model on a signal with R^2 0.0025: the ratio alone is as low, but this much
    # data cannot tell it from half
    weak, ratio = short_case(0.2, 0.05)
    assert ratio < 0.5 and weak["p_value"] > 0.05
    # a model at 90% of the signal is not short of half, at any strength
    assert short_case(0.9, 0.5)[0]["p_value"] > 0.99
    # the identity behind it: the mean per-date difference is below zero iff ratio >= 1/2
    for share, sd in ((0.3, 0.5), (0.6, 0.2), (0.25, 0.3)):
        result, ratio = short_case(share, sd, seed=1)
        assert (result["stat"] > 0) == (ratio < 0.5), (share, sd, ratio)


def test_input_gaps_name_what_a_config_cannot_see():
    lags = synthetic.SignalForm("lags", weights=(1.0,) * 30)
    assert battery.input_gaps(lags, ["log_return"], 61) == ""
    assert battery.input_gaps(lags, ["log_return"], 21) == "lags 30 > receptive field 21"
    product = synthetic.SignalForm("product", features=("log_return", "volume_z_20"))
    assert battery.input_gaps(product, ["log_return", "hl_range"], 61) == "no volume_z_20"


def backtest_draw(tmp_path, answer: synthetic.KnownAnswer) -> tuple[dict, pd.DataFrame, dict]:
    """As scripts/known_answers.py --battery does: CSV files, `tsconv fetch --from-csv`,
    `tsconv backtest --config quick` with only data keys set, scored against the reference."""
    cache = tmp_path / "cache"
    for name, frame in answer.frames.items():
        frame.to_csv(tmp_path / f"{name}.csv")
        args = ["fetch", "--from-csv", str(tmp_path / f"{name}.csv"), "--ticker", name]
        result = CliRunner().invoke(app, [*args, "--data-dir", str(cache)])
        assert result.exit_code == 0, result.output
    out = tmp_path / "bt"
    keys = ["data.source=cache", f"data.dir={cache}", f"data.tickers=[{','.join(answer.frames)}]"]
    args = ["backtest", "--config", "quick", "--out", str(out), "--workers", "2"]
    result = CliRunner().invoke(app, [*args, *(a for k in keys for a in ("--set", k))])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    pred = pd.read_parquet(out / "predictions.parquet")
    return m, pred, battery.score_draw(answer, m, pred, pd.read_csv(out / "folds.csv"))


def test_one_draw_through_the_cli_with_a_shipped_config(tmp_path):
    answer = synthetic.generate(synthetic.draw_spec(0, 1, bars=1600))  # threshold(volume_z_20)
    m, pred, score = backtest_draw(tmp_path, answer)
    assert m["folds"] == 3 and score["rows"] == score["attainable_rows"] == len(pred) > 500
    assert 0.05 < score["oracle"] < 0.3 and 0.05 < score["attainable"] <= score["oracle"] + 0.02
    assert score["model"] == m["forecast"]["prediction"]["r2_oos"]
    assert math.isfinite(score["ratio"])
    assert score["ratio"] == pytest.approx(score["model"] / score["attainable"])
    assert score["dm_p_holm"] == m["forecast"]["prediction"]["dm_vs"]["zero"]["p_holm"]
    # the battery's bar for every draw with a signal (issue 30)
    assert score["ratio"] >= 0.5 and score["dm_p_holm"] < 0.05, score


# A fixed subset of seed 0's battery on short series (1,600 bars, 3 folds), one draw a family
# besides the nonlinear one above: the model finds at least half of what the true form fitted
# on the same folds finds, and no edge where there is none. The full battery (24 draws, 3,200
# bars, three configs) is `make known-answers`; a subset only guards against regressions.
@pytest.mark.slow
@pytest.mark.parametrize(
    "index, family",
    [(4, "linear_lag"), (8, "interaction"), (2, "null")],
)
def test_a_battery_subset_through_the_cli(tmp_path, index, family):
    answer = synthetic.generate(synthetic.draw_spec(0, index, bars=1600))
    assert answer.draw.family == family
    m, _, score = backtest_draw(tmp_path, answer)
    if family == "null":
        assert score["dm_p_holm"] is None or score["dm_p_holm"] >= 0.05, score
    else:
        assert score["ratio"] >= 0.5, score


def test_scores_by_fold_split_the_draws_rows_by_fold():
    answer = synthetic.generate(synthetic.draw_spec(0, first_of("nonlinear"), bars=3000))
    pred, folds = half_split(answer)
    folds["test_start"] = ["a", "b"]
    oracle = [answer.oracles[t][d] for t, d in zip(pred["ticker"], pred["date"], strict=True)]
    pred["prediction"], pred["ridge_ar"] = oracle, 0.0
    by_fold = battery.scores_by_fold(answer, pred, folds)
    assert [f["fold"] for f in by_fold] == [0, 1]
    assert sum(f["rows"] for f in by_fold) == len(pred)
    basis = {t: battery.signal_basis(answer.draw.form, f) for t, f in answer.frames.items()}
    target = {t: make_target(f) for t, f in answer.frames.items()}
    attainable = battery.attainable_forecast(pred, folds, basis, target)
    for f in by_fold:
        mine = (pred["fold"] == f["fold"]).to_numpy()
        realized = pred["realized"].to_numpy()[mine]
        assert f["model"] == pytest.approx(f["oracle"]) and f["oracle"] > 0.02
        assert f["ridge"] == 0.0
        expected = metrics.forecast_metrics(attainable[mine], realized)["r2_oos"]
        assert f["attainable"] == pytest.approx(expected)
        assert f["linear_terms"] is None  # folds.csv without the linear part's columns
