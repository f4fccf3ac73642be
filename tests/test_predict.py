"""Prediction (tsconv.engine.predict): chunked passes and window ends give each row its own
window's numbers, bit-identical whatever data follows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import random_head
from tsconv.engine.fit import squared_errors
from tsconv.engine.predict import predict_rows, predict_windows, predicts_without_windows
from tsconv.engine.windows import Panel, WindowDataset
from tsconv.models.fast.multiscale import FastDropoutMultiScaleConv1d
from tsconv.models.fast.tcn import TimeMajorTCN
from tsconv.models.fast.window_ends import window_end_plan
from tsconv.models.tcn import tcn_receptive_field

CPU = torch.device("cpu")


def random_panel(lengths: list[int], seed: int = 0, features: int = 3) -> Panel:
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    y = torch.randn(n, generator=g)
    y[torch.rand(n, generator=g) < 0.05] = float("nan")
    return Panel(
        torch.randn(n, features, generator=g),
        y,
        np.cumsum([0, *lengths]),
        [f"T{i}" for i in range(len(lengths))],
    )


CHUNK_MODELS = [
    lambda: random_head(TimeMajorTCN(3, [6, 6, 6], 3, 2, dropout=0.3)),  # receptive field 29
    lambda: random_head(FastDropoutMultiScaleConv1d(3, 5, (3, 5, 9), dropout=0.3)),
]


@pytest.mark.parametrize("make", CHUNK_MODELS)
@pytest.mark.parametrize("rows_per_chunk,per_call", [(1, 1), (7, 3), (256, 4)])
def test_chunked_prediction_equals_one_window_per_row(make, rows_per_chunk, per_call):
    torch.manual_seed(0)
    model, window = make(), 40
    panel = random_panel([300, 250])
    # unsorted, with gaps, runs in both tickers, one run touching the panel's last row
    rows = torch.cat([torch.arange(39, 120), torch.arange(200, 205), torch.arange(339, 550)])
    rows = rows[torch.randperm(len(rows))]
    chunked = predict_rows(model, panel, rows, window, CPU, 64, False, rows_per_chunk, per_call)
    windows = predict_windows(model, panel, rows, window, torch.device("cpu"), 64, False)
    np.testing.assert_allclose(chunked, windows, atol=1e-5, rtol=1e-5)


def assert_bit_identical_whatever_follows(model, window, per_call):
    panel = random_panel([600])
    rows = torch.arange(100, 600)

    def predict(p, r):
        return predict_rows(model, p, r, window, CPU, rows_per_chunk=64, chunks_per_call=per_call)

    full = predict(panel, rows)
    for cut in (101, 163, 164, 420, 599):
        short = Panel(panel.x[:cut].clone(), panel.y[:cut].clone(), np.array([0, cut]), ["T0"])
        np.testing.assert_array_equal(predict(short, torch.arange(100, cut)), full[: cut - 100])
        shocked = Panel(panel.x.clone(), panel.y, panel.offsets, panel.tickers)
        shocked.x[cut:] *= 3.0
        np.testing.assert_array_equal(predict(shocked, rows)[: cut - 100], full[: cut - 100])


@pytest.mark.parametrize("make", CHUNK_MODELS)
@pytest.mark.parametrize("per_call", [1, 3, 8])
def test_chunked_prediction_is_bit_identical_whatever_follows(make, per_call):
    """A chunk's inputs have a fixed length (zeros past the data) and every call predicts the
    same number of chunks (zeros fill the last), so cutting or changing the future leaves every
    earlier prediction bit-identical, not just close."""
    torch.manual_seed(0)
    assert_bit_identical_whatever_follows(make(), 40, per_call)


WIDE_MODELS = [  # receptive field longer than the window of 40 bars
    lambda: random_head(TimeMajorTCN(3, [4] * 4, 3, 2, dropout=0.3)),  # 61
    lambda: random_head(TimeMajorTCN(3, [5, 6, 6, 6], 2, 3, dropout=0.3, highway_lags=4)),  # 81
    lambda: random_head(TimeMajorTCN(3, [6] * 6, 3, 2, dropout=0.3, weight_norm=False)),  # 253
    lambda: random_head(TimeMajorTCN(3, [4] * 5, 4, 2, dropout=0.3, highway_lags=40)),  # 187
    lambda: random_head(
        TimeMajorTCN(3, [4, 4], 3, 10, dropout=0.3)
    ),  # 45: the first block is all dense
]


@pytest.mark.parametrize("make", WIDE_MODELS)
@pytest.mark.parametrize("rows_per_chunk,per_call", [(1, 1), (7, 3), (64, 5)])
def test_window_shorter_than_receptive_field_shares_work_and_keeps_each_windows_numbers(
    make, rows_per_chunk, per_call
):
    """Each row's prediction is its own window's (zero padding and all), but only the values
    that depend on where the window starts are computed per window."""
    torch.manual_seed(0)
    model, window = make(), 40
    assert model.receptive_field > window
    assert predicts_without_windows(model, window)
    panel = random_panel([300, 250])
    rows = torch.cat([torch.arange(39, 120), torch.arange(200, 205), torch.arange(339, 550)])
    rows = rows[torch.randperm(len(rows))]
    got = predict_rows(model, panel, rows, window, CPU, 64, False, rows_per_chunk, per_call)
    want = predict_windows(model, panel, rows, window, CPU, 64, False)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_call", [1, 3, 8])
def test_window_end_prediction_is_bit_identical_whatever_follows(per_call):
    torch.manual_seed(0)
    assert_bit_identical_whatever_follows(WIDE_MODELS[0](), 40, per_call)


def test_window_end_plan_only_where_the_receptive_field_is_longer_than_the_window():
    model = TimeMajorTCN(3, [4] * 8, 3, 2)  # receptive field 1021
    assert window_end_plan(model, 1021) is None and window_end_plan(model, 1024) is None
    plan = window_end_plan(model, 256)
    assert plan[-1]["own"] == [255]  # the top block computes the last position only
    # below the top, a few positions per block depend on where the window starts
    assert all(0 < len(step["own"]) <= 3 for step in plan)
    reach = [tcn_receptive_field(3, i + 1) for i in range(8)]
    assert all(p < r - 1 for step, r in zip(plan, reach, strict=True) for p in step["own"])
    highway = TimeMajorTCN(3, [4] * 8, 3, 2, highway_lags=300)  # reads past the window: per window
    assert window_end_plan(highway, 256) is None and not predicts_without_windows(highway, 256)


@pytest.mark.parametrize("make", [*CHUNK_MODELS, WIDE_MODELS[0]])
def test_fast_validation_equals_the_mean_over_last_step_windows(make):
    torch.manual_seed(0)
    model, window = make(), 40
    panel = random_panel([300, 250], seed=1)
    ds = WindowDataset(panel, [(0, 200, 300), (1, 10, 250)], window, "last", 0)
    fast = float(squared_errors(model, ds, torch.device("cpu")).mean())
    x, y, mask = ds.batch(torch.arange(len(ds)))
    with torch.no_grad():
        pred = model.eval()(x)[:, 0]
    slow = float(((pred - torch.nan_to_num(y))[mask] ** 2).mean())
    assert mask.sum() > 250
    assert fast == pytest.approx(slow, rel=1e-5)


def test_predicting_a_row_without_a_full_window_of_its_own_ticker_is_refused():
    model = random_head(TimeMajorTCN(3, [4, 4], 3, 2, dropout=0.0))
    panel = random_panel([100, 100])
    for bad in ([38], [100 + 38], [200]):  # window 40: rows 39.. and 139.. are predictable
        with pytest.raises(ValueError, match="window - 1 bars"):
            predict_rows(model, panel, torch.tensor(bad), 40, torch.device("cpu"))
    assert (
        len(predict_rows(model, panel, torch.tensor([39, 139, 199]), 40, torch.device("cpu"))) == 3
    )
