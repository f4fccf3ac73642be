"""Cross-sectional portfolios and the quantile table: hand-checked weights and returns, no
look-ahead, and an end-to-end backtest on a panel whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import ar1_returns, ohlcv_from_returns, random_walk_returns, tiny_config
from tsconv.cli import app
from tsconv.config import validate_config
from tsconv.evaluate import strategy
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.prepare import prepare

DATES = pd.bdate_range("2021-01-04", periods=3)


def _scores(rows: list[list[float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, index=DATES[: len(rows)], columns=list("ABCD"))


def test_long_short_equal_weights_by_hand():
    w = strategy.cross_sectional_weights(
        _scores([[0.3, -0.1, 0.2, -0.4], [0.0, 0.0, 0.0, 0.0]]), "long_short", top_k=1
    )
    # date 1: long the top (A), short the bottom (D), legs +0.5 / -0.5; date 2: no spread
    np.testing.assert_allclose(w.iloc[0], [0.5, 0, 0, -0.5])
    np.testing.assert_allclose(w.iloc[1], [0, 0, 0, 0])


def test_long_short_rank_weights_and_long_only_by_hand():
    s = _scores([[0.3, -0.1, 0.2, -0.4]])
    # ranks 4, 2, 3, 1 around the middle rank 2.5: |distance| 1.5, 0.5, 0.5, 1.5
    w = strategy.cross_sectional_weights(s, "long_short", quantile=0.5, weighting="rank")
    np.testing.assert_allclose(w.iloc[0], [0.375, -0.125, 0.125, -0.375])
    w = strategy.cross_sectional_weights(s, "long_only", top_k=2, weighting="rank")
    np.testing.assert_allclose(w.iloc[0], [0.75, 0, 0.25, 0])
    assert np.isclose(w.iloc[0].sum(), 1.0)


def test_untradable_tickers_and_thin_dates_hold_nothing():
    s = _scores([[0.3, np.nan, np.nan, np.nan], [0.3, np.nan, 0.1, -0.2]])
    w = strategy.cross_sectional_weights(s, "long_short", top_k=3)
    np.testing.assert_allclose(w.iloc[0], 0)  # one ticker: nothing to rank against
    # three tradable tickers: at most one a leg, the NaN one never held
    np.testing.assert_allclose(w.iloc[1], [0.5, 0, 0, -0.5])


def _panel(n_tickers: int, n_dates: int, seed: int, signal: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_dates)
    parts = []
    for i in range(n_tickers):
        f = rng.normal(0, 0.01, n_dates)
        r = signal * f + rng.normal(0, 0.01, n_dates)
        parts.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "ticker": f"T{i}",
                    "fold": np.arange(n_dates) // 100,
                    "prediction": f,
                    "realized": r,
                    "realized_1": r,
                }
            )
        )
    return pd.concat(parts).sort_values(["date", "ticker"]).reset_index(drop=True)


def test_book_returns_and_turnover_match_the_weights():
    frame = _panel(6, 50, seed=0, signal=0.5)
    cfg = validate_config({"backtest": {"portfolio": "long_short", "top_k": 2}})
    rows = strategy.strategy_rows(frame, "prediction", cfg)
    per_bar = strategy.by_date(rows, cfg, "prediction")
    w = rows.pivot(index="date", columns="ticker", values="weight")
    ret = np.expm1(frame.pivot(index="date", columns="ticker", values="realized_1"))
    np.testing.assert_allclose(per_bar["gross"], (w * ret).sum(axis=1))
    np.testing.assert_allclose(w.sum(axis=1), 0, atol=1e-12)  # market-neutral
    np.testing.assert_allclose(w.abs().sum(axis=1), 1)  # gross exposure 1
    expected_turn = w.diff().abs().sum(axis=1)
    expected_turn.iloc[0] = w.iloc[0].abs().sum()
    np.testing.assert_allclose(per_bar["turnover"], expected_turn)
    # each date holds the two highest and the two lowest forecasts
    top = frame.loc[frame.groupby("date")["prediction"].idxmax()].set_index("date")["ticker"]
    assert all(w.loc[d, t] > 0 for d, t in top.items())


@pytest.mark.parametrize("target_vol", [None, 0.1])
def test_weights_use_no_later_forecast_or_return(target_vol):
    frame = _panel(5, 200, seed=1, signal=0.3)
    cfg = validate_config(
        {"backtest": {"portfolio": "long_short", "top_k": 2, "target_vol": target_vol}}
    )
    cut = frame["date"].unique()[120]
    shocked = frame.copy()
    later = shocked["date"] > cut
    rng = np.random.default_rng(9)
    for col in ["prediction", "realized", "realized_1"]:
        shocked.loc[later, col] = rng.normal(0, 0.05, later.sum())
    a = strategy.strategy_rows(frame, "prediction", cfg).set_index(["date", "ticker"])
    b = strategy.strategy_rows(shocked, "prediction", cfg).set_index(["date", "ticker"])
    past = a.index.get_level_values("date") <= cut
    pd.testing.assert_series_equal(a.loc[past, "weight"], b.loc[past, "weight"])
    assert not a.loc[~past, "weight"].equals(b.loc[~past, "weight"])


def test_quantile_table_finds_a_signal_and_not_noise():
    q = strategy.quantile_table(_panel(10, 300, seed=2, signal=0.5), "prediction", 5)
    assert q["method"] == "cross_sectional" and [r["bucket"] for r in q["buckets"]] == [
        1,
        2,
        3,
        4,
        5,
    ]
    means = [r["mean_realized"] for r in q["buckets"]]
    assert means == sorted(means) and q["spread"]["p_value"] < 1e-6
    # expected spread: 0.5 x (mean forecast of the top fifth - of the bottom fifth)
    f = [r["mean_prediction"] for r in q["buckets"]]
    assert q["spread"]["mean"] == pytest.approx(0.5 * (f[-1] - f[0]), rel=0.15)
    assert sum(r["n"] for r in q["buckets"]) == 3000
    noise = strategy.quantile_table(_panel(10, 300, seed=3, signal=0.0), "prediction", 5)
    assert noise["spread"]["p_value"] > 0.01
    # one ticker: pooled over time
    one = _panel(1, 300, seed=2, signal=0.5)
    assert strategy.quantile_table(one, "prediction", 5)["method"] == "pooled"


def test_quantile_table_by_hand():
    frame = pd.DataFrame(
        {
            "date": np.repeat(DATES[:2], 4),
            "prediction": [1, 2, 3, 4, 4, 3, 2, 1],
            "realized": [0.0, 0.1, 0.2, 0.5, 0.7, 0.2, 0.1, -0.1],
        }
    )
    q = strategy.quantile_table(frame, "prediction", 2)
    # date 1: bottom {0, 0.1} mean 0.05, top {0.2, 0.5} 0.35; date 2: bottom 0.0, top 0.45
    assert [r["mean_realized"] for r in q["buckets"]] == pytest.approx([0.025, 0.4])
    assert q["spread"]["mean"] == pytest.approx(0.375)
    pooled = strategy.quantile_table(frame, "prediction", 2, pooled=True)
    # pooled with rank ties broken by order: bottom = the first 1, 1, 2, 2
    assert pooled["method"] == "pooled"
    assert pooled["buckets"][0]["mean_realized"] == pytest.approx((0.0 - 0.1 + 0.1 + 0.1) / 4)


def test_pooled_buckets_count_a_date_once_however_many_tickers_share_it():
    """Two identical tickers pooled over time carry one ticker's information: the spread's
    standard error is the single ticker's (iid over the doubled rows would call it 1/sqrt(2)
    of that), and on one ticker the standard errors are the iid ones."""
    one = _panel(1, 400, seed=4, signal=0.3)
    copy = one.assign(ticker="copy")
    single = strategy.quantile_table(one, "prediction", 5, pooled=True)
    twice = strategy.quantile_table(pd.concat([one, copy]), "prediction", 5, pooled=True)
    assert twice["spread"]["mean"] == pytest.approx(single["spread"]["mean"], rel=0.05)
    assert twice["spread"]["se"] == pytest.approx(single["spread"]["se"], rel=0.05)
    df = one.dropna(subset=["prediction", "realized"])
    bucket = np.ceil(df["prediction"].rank(method="first", pct=True) * 5).astype(int)
    grouped = df.groupby(bucket)["realized"]
    iid = grouped.std(ddof=1) / np.sqrt(grouped.size())  # the formula before clustering
    assert [r["se"] for r in single["buckets"]] == list(iid)
    assert single["spread"]["se"] == math.hypot(iid.iloc[-1], iid.iloc[0])


def test_long_short_backtest_on_an_ar1_panel(tmp_path):
    """Eight independent AR(1) tickers: ranking them each day by forecast earns the spread, and
    every figure of the book is in metrics.json, the report and the terminal."""
    frames = {f"A{i}": ohlcv_from_returns(ar1_returns(900, phi=0.5, seed=20 + i)) for i in range(8)}
    cfg = tiny_config(
        features=["log_return"],
        model={"channels": 8, "layers": 2},
        backtest={"train_span": 500, "test_span": 400, "portfolio": "long_short", "top_k": 2},
        train={"epochs": 6, "lr": 0.005, "batch_size": 16},
    )
    m = run_backtest(cfg, tmp_path / "ls", prep=prepare(cfg, frames))
    model, ridge = m["trading"]["prediction"], m["trading"]["ridge_ar"]
    assert ridge["sharpe"] > 2 and model["sharpe"] > 2, (model["sharpe"], ridge["sharpe"])
    assert model["turnover_per_bar"] <= 2.0  # a book of gross exposure 1 turns over at most 2
    q = m["quantiles"]
    assert q["method"] == "cross_sectional" and q["spread"]["p_value"] < 0.01
    html = (tmp_path / "ls" / "report.html").read_text()
    assert "long_short portfolio ranked by forecast each bar, top 2 long" in html
    assert "Each date&#x27;s tickers bucketed by forecast rank" in html
    sv = m["trading"]["prediction"]["sharpe_vs"]["buy_and_hold"]
    assert sv["p_holm"] < 0.05  # beats holding the driftless panel, after costs


def test_random_walk_panel_long_short_is_not_significant(tmp_path):
    # one fixed draw: each 5%-level check below fails on about one draw in twenty by design
    frames = {f"R{i}": ohlcv_from_returns(random_walk_returns(900, seed=60 + i)) for i in range(6)}
    cfg = tiny_config(
        features=["log_return"],
        backtest={"train_span": 500, "test_span": 400, "portfolio": "long_short"},
    )
    m = run_backtest(cfg, tmp_path / "rw", prep=prepare(cfg, frames))
    # no edge to find: the book beats nothing significantly (churning noise forecasts can
    # lose to the cheaper strategies, which is the cost table's point), nor do its buckets
    # (None: the model kept the zero forecast on every date, and so never traded a book)
    for name, t in m["trading"]["prediction"]["sharpe_vs"].items():
        assert t["p_holm"] is None or t["p_holm"] > 0.05 or t["difference"] < 0, name
    assert "beats" not in m["verdict"].split("Trading after costs")[1]
    p = m["quantiles"]["spread"]["p_value"]
    assert p is None or p > 0.05


def test_a_portfolio_of_one_ticker_is_a_config_error(tmp_path):
    out = tmp_path / "one"
    r = CliRunner().invoke(
        app,
        [
            "backtest",
            "--config",
            "quick",
            "--set",
            "data.tickers=[MSFT]",
            "--set",
            "backtest.portfolio=long_short",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and "backtest.portfolio: long_short" in line and "MSFT" in line
    assert "Traceback" not in r.output and not (out / "metrics.json").exists()
    r = CliRunner().invoke(
        app, ["backtest", "--config", "quick", "--set", "backtest.portfolio=short_only"]
    )
    assert r.exit_code == 2 and "backtest.portfolio" in r.output


def test_a_ranked_book_of_few_tickers_gets_a_cross_sectional_table():
    four = _panel(4, 200, seed=5, signal=0.5)
    assert strategy.quantile_table(four, "prediction", 5)["method"] == "pooled"
    q = strategy.quantile_table(four, "prediction", 5, ranked=True)
    assert q["method"] == "cross_sectional" and len(q["buckets"]) == 4


def test_report_cells_and_time_in_the_market():
    from tsconv.evaluate.summary import summarize_backtest
    from tsconv.report.tables import format_cell

    assert format_cell(-0.00001, ".4f") == "0.0000" and format_cell(-0.0004, ".1%") == "0.0%"
    assert format_cell(-1.5, ".2f") == "-1.50" and format_cell(-2e-5, ".2e") == "-2.00e-05"
    assert format_cell(None, ".2f") == "-"
    frame = _panel(6, 300, seed=6, signal=0.3).assign(
        zero=0.0, persistence=0.0, trailing_mean=0.0, ridge_ar=0.0
    )
    frame.loc[frame["date"] < frame["date"].unique()[100], "prediction"] = 0.0
    m, _ = summarize_backtest(frame, validate_config({"backtest": {"portfolio": "long_short"}}))
    assert m["trading"]["buy_and_hold"]["in_market"] == 1.0
    # no spread in the first 100 of 300 dates' forecasts: no book
    assert m["trading"]["prediction"]["in_market"] == pytest.approx(200 / 300)
    assert m["by_fold"]["0"]["in_market"] == 0.0 and m["by_fold"]["1"]["in_market"] == 1.0
    assert "in the market on 67% of bars" in m["verdict"]


def test_the_report_says_how_many_folds_kept_their_starting_weights():
    from tsconv.report.backtest_html import kept_start_note

    folds = pd.DataFrame({"fold": [0, 1, 2], "best_epoch": [0, 3, 0]})
    words = kept_start_note(folds, tiny_config(model={"highway": True}))
    assert "In 2 of 3 folds no training epoch beat the starting weights" in words
    assert "the ridge highway's forecast" in words
    assert kept_start_note(folds.assign(best_epoch=1), tiny_config()) == ""


def test_the_report_names_tickers_that_start_late():
    from tsconv.report.backtest_html import late_start_note

    frame = _panel(3, 10, seed=0, signal=0.0)
    assert late_start_note(frame) == ""
    late = frame[~((frame["ticker"] == "T2") & (frame["date"] < frame["date"].iloc[12]))]
    assert late_start_note(late) == f" (T2 from {late[late.ticker == 'T2']['date'].min().date()})"
