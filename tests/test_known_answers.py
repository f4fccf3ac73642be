"""Known answers: every shipped config, unchanged but for data keys (and, for the two large ones,
the span keys in tsconv.synthetic.SPAN_KEYS), run through the CLI as a user would, on series
whose best forecast is known (tsconv.synthetic).

- AR(1), phi 0.5: R^2_OS at least 0.95 x the ridge AR baseline of the same backtest, and the
  model beats the zero forecast (DM p < 0.01);
- the size-dependent "tent" series, where a linear forecast finds almost nothing: the model
  beats ridge AR (DM p < 0.01) and reaches 80% of the oracle's R^2 on the same rows;
- a random walk: no edge (directional accuracy within 3 standard errors of 50%, DM against zero
  not significant at 5%);
- the real sample (MSFT, AAPL): not significantly worse than the zero forecast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import cache_keys
from tsconv import synthetic
from tsconv.cli import app
from tsconv.evaluate import metrics

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = ["quick", "wf_msft", "tcn", "multiscale"]


def backtest(tmp_path: Path, config: str, data: list[str]) -> tuple[dict, pd.DataFrame]:
    out = tmp_path / "bt"
    args = ["backtest", "--config", str(CONFIGS / f"{config}.yaml"), "--out", str(out)]
    args += ["--workers", "2"]  # the serial run's bytes (tests/test_parallel.py), sooner
    for key in [*data, *synthetic.SPAN_KEYS.get(config, [])]:
        args += ["--set", key]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    return m, pd.read_parquet(out / "predictions.parquet")


def run_case(tmp_path, known_cache, config, series):
    m, pred = backtest(tmp_path, config, cache_keys(known_cache, series))
    oracles = known_cache[1]
    return m, pred, synthetic.oracle_r2_of(pred, oracles)


def dm_against(pred: pd.DataFrame, other: str) -> dict:
    """DM test of the model's squared error against another forecast's, per-date means."""
    loss = (
        pred.assign(
            a=(pred["prediction"] - pred["realized"]) ** 2, b=(pred[other] - pred["realized"]) ** 2
        )
        .groupby("date")[["a", "b"]]
        .mean()
    )
    return metrics.diebold_mariano(loss["a"].to_numpy(), loss["b"].to_numpy())


@pytest.mark.parametrize("config", SHIPPED)
def test_ar1_model_matches_ridge_and_beats_zero(tmp_path, known_cache, config):
    m, _, oracle = run_case(tmp_path, known_cache, config, "ar1")
    f = m["forecast"]
    model, ridge = f["prediction"]["r2_oos"], f["ridge_ar"]["r2_oos"]
    assert ridge > 0.15 and oracle > 0.2  # the series does carry the signal
    assert model >= 0.95 * ridge, (model, ridge, oracle)
    dm = f["prediction"]["dm_vs_zero"]
    assert dm["stat"] < 0 and dm["p_value"] < 0.01, dm


@pytest.mark.parametrize("config", SHIPPED)
def test_nonlinear_model_beats_ridge_and_nears_the_oracle(tmp_path, known_cache, config):
    m, pred, oracle = run_case(tmp_path, known_cache, config, "tent")
    f = m["forecast"]
    model, ridge = f["prediction"]["r2_oos"], f["ridge_ar"]["r2_oos"]
    assert ridge < 0.4 * oracle  # a linear forecast on the shipped features does poorly here
    dm = dm_against(pred, "ridge_ar")
    assert dm["stat"] < 0 and dm["p_value"] < 0.01, dm
    assert model >= 0.8 * oracle, (model, ridge, oracle)


@pytest.mark.parametrize("config", SHIPPED)
def test_random_walk_shows_no_edge(tmp_path, known_cache, config):
    m, _, _ = run_case(tmp_path, known_cache, config, "random_walk")
    f = m["forecast"]["prediction"]
    # a model that kept the zero forecast everywhere (its linear part chose zero and no epoch
    # beat that) has no direction and no squared-error difference to test: no edge either
    da, p = f["directional_accuracy"], f["dm_vs_zero"]["p_value"]
    assert da is None or abs(da - 0.5) <= 3 * f["directional_accuracy_se"], f
    assert p is None or p > 0.05, f["dm_vs_zero"]
    # the trading verdict: nothing significant against any other strategy after costs
    tests = m["trading"]["prediction"]["sharpe_vs"]
    assert all(t["p_holm"] is None or t["p_holm"] >= 0.05 for t in tests.values()), tests
    assert "is not significantly different from" in m["verdict"].split("Trading after costs")[1]
    assert "beats" not in m["verdict"].split("Trading after costs")[1]


@pytest.mark.parametrize("config", SHIPPED)
def test_real_sample_is_not_significantly_worse_than_zero(tmp_path, config):
    m, _ = backtest(tmp_path, config, ["data.source=sample", "data.tickers=[MSFT,AAPL]"])
    dm = m["forecast"]["prediction"]["dm_vs_zero"]
    assert not (dm["p_value"] < 0.05 and dm["stat"] > 0), dm


def test_on_ar1_a_cost_aware_position_beats_sign_after_10_bps(tmp_path, known_cache):
    """Trading a forecast by its sign pays for every tiny forecast that flips; at 10 bps the
    threshold rule (trade only past the cost) keeps more of AR(1)'s edge. Same predictions,
    two position rules."""
    from tsconv.config import load_config
    from tsconv.evaluate.summary import summarize_backtest

    data = [
        *cache_keys(known_cache, "ar1"),
        "backtest.cost_bps=10",
        "backtest.position=threshold",
    ]
    m, pred = backtest(tmp_path, "quick", data)
    threshold = m["trading"]["prediction"]
    sign_cfg = load_config(CONFIGS / "quick.yaml", [*data[:-1], "backtest.position=sign"])
    sign = summarize_backtest(pred, sign_cfg)[0]["trading"]["prediction"]
    assert threshold["sharpe"] > sign["sharpe"], (threshold, sign)
    assert threshold["sharpe_at_bps"]["10"] == pytest.approx(threshold["sharpe"])
    assert threshold["break_even_bps"] > 10  # the edge survives this cost
