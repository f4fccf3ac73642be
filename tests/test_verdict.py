"""The verdict a user acts on: a backtest's bottom line (the sweep's rule), the per-fold IC test
weighted by fold size, and the reports' words and figures around them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tsconv.config import validate_config
from tsconv.evaluate import metrics
from tsconv.evaluate.summary import summarize_backtest
from tsconv.evaluate.sweep_summary import holdout_summary
from tsconv.evaluate.verdict import backtest_verdict, bottom_line, edge


def _tests(dm_p: float, dm_stat: float, sharpe_p: float, sharpe_stat: float) -> dict:
    """The two tests the bottom line rests on, as metrics.json holds them."""
    return {
        "forecast": {"prediction": {"dm_vs": {"zero": {"stat": dm_stat, "p_holm": dm_p}}}},
        "trading": {
            "prediction": {"sharpe_vs": {"buy_and_hold": {"stat": sharpe_stat, "p_holm": sharpe_p}}}
        },
    }


@pytest.mark.parametrize(
    ("tests", "word"),
    [
        ((0.01, -3.0, 0.01, 3.0), "edge"),
        ((0.01, -3.0, 0.5, 0.4), "forecast edge only"),
        ((0.5, -0.3, 0.01, 3.0), "trading edge only"),
        ((0.5, -0.3, 0.5, 0.4), "no edge"),
        # significant the wrong way: worse than the zero forecast, worse than buy-and-hold
        ((0.01, 3.0, 0.01, -3.0), "no edge"),
        ((0.049, -2.0, float("nan"), None), "forecast edge only"),
    ],
)
def test_the_bottom_line_has_the_sweeps_four_words(tests, word):
    m = _tests(*tests)
    assert edge(m)["verdict"] == word
    line = bottom_line(m)
    assert line.startswith(word.upper() + ": ") and "\n" not in line
    assert "Holm-adjusted, 5% level" in line
    # a sweep's holdout is judged by the same rule
    holdout = holdout_summary(
        {**m, "first_date": "a", "last_date": "b", "folds": 1, "n_predictions": 1, "verdict": ""},
        pd.Timestamp("2020-01-01"),
    )
    assert holdout["verdict"] == word


def _panel(n_tickers: int, fold_sizes: list[int], seed: int, signal: float) -> pd.DataFrame:
    """Predictions of `n_tickers` tickers whose returns are `signal` x the forecast plus noise,
    in folds of `fold_sizes` dates, with the baselines' columns."""
    rng = np.random.default_rng(seed)
    n_dates = sum(fold_sizes)
    dates = pd.bdate_range("2020-01-01", periods=n_dates)
    fold = np.repeat(np.arange(len(fold_sizes)), fold_sizes)
    parts = []
    for i in range(n_tickers):
        f = rng.normal(0, 0.01, n_dates)
        r = signal * f + rng.normal(0, 0.01, n_dates)
        parts.append(
            pd.DataFrame(
                {"date": dates, "ticker": f"T{i}", "fold": fold, "prediction": f, "realized": r}
            )
        )
    frame = pd.concat(parts).sort_values(["date", "ticker"]).reset_index(drop=True)
    return frame.assign(
        realized_1=frame["realized"], zero=0.0, persistence=0.0, trailing_mean=0.0, ridge_ar=0.0
    )


def test_a_backtest_has_a_bottom_line_first_in_metrics_and_report():
    from tsconv.report.backtest_html import render

    cfg = validate_config({"backtest": {"portfolio": "long_short"}})
    frame = _panel(6, [100, 100, 100], seed=1, signal=0.0)
    m, nets = summarize_backtest(frame, cfg)
    assert m["edge"] == edge(m) and m["edge"]["verdict"] == "no edge"
    assert m["bottom_line"] == bottom_line(m) and m["bottom_line"].startswith("NO EDGE: ")
    keys = list(m)
    assert keys.index("bottom_line") < keys.index("verdict")
    folds = pd.DataFrame({"fold": [0, 1, 2], "best_epoch": [1, 1, 1]})
    page = render(frame, m, folds, cfg, nets)
    verdict = page.split("<section id='verdict'>")[1]
    assert verdict.index("NO EDGE: ") < verdict.index("Forecast: the model")
    assert page.index("NO EDGE: ") < page.index("<h2>Model vs baselines")
    # the panel's header: its strategy is a sentence of its own, no "))"
    intro = page.split("<h1>")[1].split("<section")[0]
    assert "))" not in intro
    assert "Strategy: long_short portfolio ranked by forecast each bar" in intro


def test_the_per_fold_ic_test_weights_folds_by_their_size():
    # nine 250-bar folds with no IC to speak of and a 10-bar last fold with a large one: the
    # short fold's noise must not carry the test
    ics = [0.02, -0.03, 0.01, -0.01, 0.03, -0.02, 0.0, 0.01, -0.02, 0.6]
    sizes = [250] * 9 + [10]
    s = metrics.ic_summary(ics, sizes)
    expected = float(np.dot(ics, sizes) / sum(sizes))
    assert s["mean"] == pytest.approx(expected) and abs(s["mean"]) < 0.01
    assert s["p_value"] > 0.5 and s["folds"] == 10 and s["predictions"] == 2260
    assert s["weighting"] == "fold size"
    equal = metrics.ic_summary(ics, [250] * 10)
    assert equal["mean"] == pytest.approx(np.mean(ics)) and equal["p_value"] < s["p_value"]
    # a fold with no IC (flat forecasts) is left out, with its size
    flat = metrics.ic_summary([0.1, math.nan, 0.3], [100, 5, 100])
    assert flat["mean"] == pytest.approx(0.2) and flat["folds"] == 2 and flat["predictions"] == 200


def test_the_weighted_test_is_the_ordinary_one_when_folds_are_equal():
    ics = [0.1, 0.2, 0.3]
    s = metrics.ic_summary(ics, [50, 50, 50])
    assert s["std"] == pytest.approx(np.std(ics, ddof=1))
    assert s["t_stat"] == pytest.approx(0.2 / (0.1 / math.sqrt(3)))


def test_the_verdict_gives_the_pooled_ic_beside_the_per_fold_one():
    frame = _panel(1, [200, 200, 200, 8], seed=3, signal=0.3)
    m, _ = summarize_backtest(frame, validate_config({}))
    f = m["forecast"]["prediction"]
    assert f["ic_summary"]["predictions"] == 608 and f["ic_summary"]["folds"] == 4
    words = m["verdict"].split("Pearson IC")[1]
    assert f"over all 608 predictions {f['ic']:.3f}" in words
    assert f"weighted by its predictions, {f['ic_summary']['mean']:.3f}" in words
    assert "Mean per-fold" not in m["verdict"]
    assert backtest_verdict(m) == m["verdict"]


def test_the_sweep_histogram_counts_distinct_trials_in_whole_trials():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tsconv.report.sweep_html import sharpe_histogram

    r = {
        "periods_per_year": 252,
        "per_bar_sharpes": [0.01, 0.01, 0.02, -0.01, 0.03, 0.0],
        "trials": {"complete": 6, "distinct": 5},
        "deflated_sharpe": {"annualised": {"expected_max_sharpe": 0.4, "sharpe": 0.47}},
    }
    fig = sharpe_histogram(r, plt)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "expected maximum of 5 distinct trials without skill" in labels
    ticks = ax.get_yticks()
    assert len(ticks) >= 2 and np.allclose(ticks, np.round(ticks))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # off the bars and lines
    plt.close(fig)


def test_the_sweep_histogram_counts_each_distinct_trial_once():
    """Two trials with the same returns made the bars count 6 trials beside the line's "5
    distinct trials"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tsconv.report.sweep_html import sharpe_histogram

    r = {
        "periods_per_year": 252,
        "per_bar_sharpes": [0.01, 0.01, 0.02, -0.01, 0.03, 0.0],
        "trials": {"complete": 6, "distinct": 5},
        "deflated_sharpe": {"annualised": {"expected_max_sharpe": 0.4, "sharpe": 0.47}},
    }
    fig = sharpe_histogram(r, plt)
    ax = fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == 5
    assert ax.get_ylabel() == "distinct trials"
    plt.close(fig)


def test_the_leaderboard_shows_time_in_the_market_as_a_percentage(tmp_path):
    from tsconv.report.sweep_html import leaderboard_html

    pd.DataFrame(
        {
            "rank": [1, 2],
            "trial": [1, 0],
            "model.channels": [8, 16],
            "value": [0.5, 0.2],
            "sharpe": [0.5, 0.2],
            "r2_oos": [0.01, -0.01],
            "ic": [0.05, 0.01],
            "in_market": [0.8333333, None],
        }
    ).to_csv(tmp_path / "leaderboard.csv", index=False)
    table = leaderboard_html(tmp_path, ["model.channels"])
    assert "<td>83%</td>" in table and "0.8333" not in table


def test_the_terminal_leaderboard_shows_time_in_the_market_as_a_percentage(tmp_path):
    import io

    from rich.console import Console

    from tsconv.cli import _leaderboard_table
    from tsconv.runfolder import RunFolder

    pd.DataFrame(
        {
            "rank": [1, 2],
            "trial": [1, 0],
            "model.channels": [8, 16],
            "value": [0.5, 0.2],
            "sharpe": [0.5, 0.2],
            "r2_oos": [0.01, -0.01],
            "ic": [0.05, 0.01],
            "in_market": [0.8333333, None],
        }
    ).to_csv(RunFolder(tmp_path).leaderboard, index=False)
    console = Console(file=io.StringIO(), width=80)
    console.print(_leaderboard_table(RunFolder(tmp_path), ["model.channels"]))
    (row,) = [line for line in console.file.getvalue().splitlines() if "in market" in line]
    assert row.split()[2:] == ["83%", "-"], row


def test_the_equity_legend_covers_no_curve():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tsconv.report.figures import EQUITY_MARGINS, equity_figure, png_base64

    dates = pd.bdate_range("2020-01-01", periods=300)
    rng = np.random.default_rng(0)
    names = ["prediction", "persistence", "trailing_mean", "ridge_ar", "buy_and_hold"]
    nets = {n: pd.Series(rng.normal(0.0005, 0.01, 300), index=dates) for n in names}
    fig = equity_figure(nets, 10, plt)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    png_base64(fig, **EQUITY_MARGINS)  # lays the figure out as the report does, and closes it
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    legend = fig.legends[0].get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))
    assert not any(legend.overlaps(t.get_window_extent(renderer)) for t in ax.get_xticklabels())
    assert legend.y0 >= 0  # and stays on the picture


def test_the_cost_table_title_fits_80_columns():
    from tsconv.report.tables import cost_title

    for portfolio in ["per_ticker", "long_short", "long_only"]:
        assert len(cost_title(12.5, portfolio)) <= 76, portfolio
    assert "long_short book" in cost_title(10, "long_short")
