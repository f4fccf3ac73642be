"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tsconv.evaluate import metrics


def test_sharpe_sortino_and_annualisation_by_hand():
    net = np.array([0.01, -0.02, 0.03, 0.0])
    m = metrics.trading_metrics(net, periods_per_year=252)
    mean, sd = 0.005, np.std(net, ddof=1)  # sd = 0.0208167
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(252))
    assert m["sortino"] == pytest.approx(mean / math.sqrt(0.02**2 / 4) * math.sqrt(252))
    equity = 1.01 * 0.98 * 1.03
    assert m["total_return"] == pytest.approx(equity - 1)  # compounded, not summed (0.02)
    assert m["annual_return"] == pytest.approx(equity ** (252 / 4) - 1)
    assert m["annual_volatility"] == pytest.approx(sd * math.sqrt(252))


def test_max_drawdown_by_hand():
    equity = np.array([1.0, 1.2, 0.9, 1.1, 0.6, 1.5])
    assert metrics.max_drawdown(equity) == pytest.approx(0.6 / 1.2 - 1)
    assert metrics.max_drawdown(np.array([0.8, 0.9])) == pytest.approx(-0.2)  # below the start


def test_ic_and_rank_ic_by_hand():
    p = np.array([1.0, 2.0, 3.0, 4.0])
    r = np.array([1.0, 3.0, 2.0, 100.0])
    # Pearson from the definition
    pc, rc = p - p.mean(), r - r.mean()
    assert metrics.pearson(p, r) == pytest.approx((pc @ rc) / math.sqrt((pc @ pc) * (rc @ rc)))
    # Spearman: ranks 1,2,3,4 vs 1,3,2,4 -> 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*2/60 = 0.8
    assert metrics.spearman(p, r) == pytest.approx(0.8)


def test_directional_accuracy_ignores_zero_predictions():
    assert metrics.directional_accuracy(
        np.array([1.0, -1.0, 0.0, 2.0]), np.array([0.5, 0.5, 0.5, -1.0])
    ) == pytest.approx(1 / 3)
    assert math.isnan(metrics.directional_accuracy(np.zeros(3), np.ones(3)))


def test_r2_oos_against_zero_forecast():
    y = np.array([1.0, -1.0, 2.0])
    assert metrics.forecast_metrics(np.zeros(3), y)["r2_oos"] == 0.0
    assert metrics.forecast_metrics(y, y)["r2_oos"] == 1.0
    assert metrics.forecast_metrics(y / 2, y)["r2_oos"] == pytest.approx(0.75)


def test_diebold_mariano_by_hand():
    # d = [1, 2, 3, 4, 5] - [0, 0, 0, 0, 0]; mean 3; h = 1 -> variance of d with divisor n = 2
    # DM = 3 / sqrt(2 / 5) = 4.7434
    dm = metrics.diebold_mariano(np.array([1.0, 2, 3, 4, 5]), np.zeros(5))
    assert dm["stat"] == pytest.approx(3 / math.sqrt(2 / 5))
    assert dm["p_value"] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(dm["stat"] / math.sqrt(2)))))
    # h = 2 adds one Newey-West lag with weight 1/2: gamma1 = sum(dc[1:]*dc[:-1])/n
    # dc = [-2,-1,0,1,2] -> (2 + 0 + 0 + 2)/5 = 0.8; LRV = 2 + 2 * 0.5 * 0.8 = 2.8
    dm2 = metrics.diebold_mariano(np.array([1.0, 2, 3, 4, 5]), np.zeros(5), horizon=2)
    assert dm2["stat"] == pytest.approx(3 / math.sqrt(2.8 / 5))


def test_trading_returns_charge_costs_on_turnover():
    pos = pd.Series([1.0, 1.0, -1.0, 0.0])
    r = pd.Series(np.log([1.01, 1.02, 0.99, 1.05]))
    net = metrics.trading_returns(pos, r, cost_bps=10).to_numpy()
    np.testing.assert_allclose(net, [0.01 - 0.001, 0.02, 0.01 - 0.002, -0.001])


def test_scaled_positions_use_only_earlier_predictions():
    pred = pd.Series(np.random.default_rng(0).normal(size=50))
    a = metrics.positions(pred, "scaled")
    b = metrics.positions(pd.concat([pred.iloc[:30], pred.iloc[30:] * 100]), "scaled")
    pd.testing.assert_series_equal(a.iloc[:30], b.iloc[:30])
    assert a.abs().max() <= 1


def test_ic_summary_t_stat():
    s = metrics.ic_summary([0.1, 0.2, 0.3], [100, 100, 100])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1)
    assert s["icir"] == pytest.approx(2.0) and s["t_stat"] == pytest.approx(2 * math.sqrt(3))


def test_tail_probabilities_match_printed_tables():
    # two-sided 5% and 1% critical values: normal 1.959964 and 2.575829; Student's t with 10
    # degrees of freedom 2.228139 and 3.169273, with 2: 4.302653
    assert metrics.normal_two_sided(1.959964) == pytest.approx(0.05, abs=1e-6)
    assert metrics.normal_two_sided(-2.575829) == pytest.approx(0.01, abs=1e-6)
    assert metrics.student_t_two_sided(2.228139, 10) == pytest.approx(0.05, abs=1e-6)
    assert metrics.student_t_two_sided(-3.169273, 10) == pytest.approx(0.01, abs=1e-6)
    assert metrics.student_t_two_sided(4.302653, 2) == pytest.approx(0.05, abs=1e-6)
    assert metrics.normal_two_sided(0.0) == 1.0


def test_spearman_uses_average_ranks_for_ties():
    # ranks of a: 1, 2.5, 2.5, 4; of b: 4, 3, 2, 1 -> pearson of those, by hand: -0.9487
    a, b = np.array([1.0, 2.0, 2.0, 3.0]), np.array([4.0, 3.0, 2.0, 1.0])
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([4.0, 3, 2, 1])
    expected = np.sum((ra - 2.5) * (rb - 2.5)) / math.sqrt(np.sum((ra - 2.5) ** 2) * 5)
    assert expected == pytest.approx(-0.9486833, abs=1e-7)
    assert metrics.spearman(a, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "dates,expected",
    [
        (pd.bdate_range("2020-01-01", periods=300), 252),
        (pd.date_range("2020-01-01", periods=300, freq="D"), 365),
        (pd.date_range("2020-01-03", periods=100, freq="W-FRI"), 52),
        (pd.date_range("2020-01-31", periods=40, freq="ME"), 12),
        # 13 half-hour bars a day (09:30-15:30) on business days
        (
            pd.DatetimeIndex(
                [
                    d + pd.Timedelta(minutes=570 + 30 * i)
                    for d in pd.bdate_range("2024-01-01", periods=20)
                    for i in range(13)
                ]
            ),
            252 * 13,
        ),
        (pd.DatetimeIndex(["2020-01-01"]), 252),
    ],
)
def test_periods_per_year_from_the_spacing_of_the_bars(dates, expected):
    # repeated dates (one per ticker in a panel) change nothing
    assert metrics.infer_periods_per_year(pd.Series(dates.repeat(2))) == expected


def test_threshold_positions_trade_only_past_the_cost():
    pred = pd.Series([0.002, -0.0005, -0.003, 0.001, 0.0])
    pos = metrics.positions(pred, "threshold", threshold=0.001)
    np.testing.assert_array_equal(pos.to_numpy(), [1.0, 0.0, -1.0, 0.0, 0.0])


def test_volatility_target_uses_returns_known_at_the_bar_and_caps_leverage():
    rng = np.random.default_rng(0)
    r = pd.Series(rng.normal(0, 0.02, 300))  # about 32% a year
    pos = pd.Series(1.0, index=r.index)
    scaled = metrics.target_volatility(pos, r, 0.10, 252)
    assert (scaled.iloc[:10] == 0).all()  # nothing known yet
    assert scaled.iloc[100:].mean() == pytest.approx(0.10 / (0.02 * math.sqrt(252)), rel=0.15)
    # ret1 at row t is the return from t to t+1: changing it (and later ones) leaves row t alone
    shocked = r.copy()
    shocked.iloc[150:] *= 10
    changed = metrics.target_volatility(pos, shocked, 0.10, 252)
    pd.testing.assert_series_equal(changed.iloc[:151], scaled.iloc[:151])
    calm = metrics.target_volatility(
        pos, pd.Series(np.full(100, 1e-5)) * (-1) ** np.arange(100), 0.1, 252
    )
    assert calm.max() == metrics.MAX_LEVERAGE


def test_cost_sensitivity_by_hand():
    gross = np.array([0.01, -0.005, 0.002])
    turnover = np.array([1.0, 0.0, 1.0])
    c = metrics.cost_sensitivity(gross, turnover, 252)
    # mean gross 0.007 / 3 per bar over mean turnover 2/3: 0.0035 = 35 bps breaks even
    assert c["break_even_bps"] == pytest.approx(35.0)
    net10 = gross - 0.001 * turnover  # [0.009, -0.005, 0.001]
    assert c["sharpe_at_bps"]["10"] == pytest.approx(
        net10.mean() / net10.std(ddof=1) * math.sqrt(252)
    )
    assert c["sharpe_at_bps"]["0"] > c["sharpe_at_bps"]["5"] > c["sharpe_at_bps"]["20"]
    at_break_even = gross - 0.0035 * turnover
    assert at_break_even.mean() == pytest.approx(0.0, abs=1e-15)


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04
    assert metrics.holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert metrics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped, never decreasing


def test_sharpe_difference_matches_the_iid_normal_formula():
    """Without lags, for independent normal returns, the delta-method variance is Memmel's
    (2003) correction of Jobson and Korkie: (2 - 2 rho + (SRa^2 + SRb^2 - 2 SRa SRb rho^2) / 2) / n."""
    rng = np.random.default_rng(3)
    n, rho = 200_000, 0.6
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    a, b = 0.01 + 0.1 * z[:, 0], 0.002 + 0.1 * z[:, 1]  # per-bar Sharpe 0.1 and 0.02
    got = metrics.sharpe_difference(a, b, lags=0)
    sa, sb = a.mean() / a.std(), b.mean() / b.std()
    r = np.corrcoef(a, b)[0, 1]
    se = math.sqrt((2 - 2 * r + 0.5 * (sa**2 + sb**2 - 2 * sa * sb * r**2)) / n)
    assert got["difference"] == pytest.approx(sa - sb)
    assert got["stat"] == pytest.approx((sa - sb) / se, rel=0.03)
    same = metrics.sharpe_difference(a, a.copy())
    assert same["stat"] is None or abs(same["stat"]) < 1e-9  # no difference, no variance


def test_sharpe_difference_finds_nothing_between_two_coin_flips():
    rng = np.random.default_rng(4)
    rejections = sum(
        metrics.sharpe_difference(rng.normal(0, 0.01, 1000), rng.normal(0, 0.01, 1000))["p_value"]
        < 0.05
        for _ in range(200)
    )
    assert rejections <= 20  # about 5% of 200 expected


def test_sharpe_interval_by_hand():
    # annual 1.0 over 252 bars a year: per bar s = 1/sqrt(252); n = 1000
    s = 1 / math.sqrt(252)
    half = 1.959964 * math.sqrt((1 + s**2 / 2) / 1000) * math.sqrt(252)
    assert metrics.sharpe_interval(1.0, 1000, 252) == pytest.approx([1 - half, 1 + half])
    assert half == pytest.approx(0.9849, abs=1e-3)  # a year of data barely tells 0 from 2
