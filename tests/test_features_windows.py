"""Causal features, target alignment, scaling and windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ohlcv_from_returns, random_walk_returns
from tsconv.config import Config
from tsconv.data import features
from tsconv.data.features import build, compute_features, make_target
from tsconv.engine.windows import Scaler, WindowDataset, make_panel, window_segments
from tsconv.feature_names import check_feature_names

ALL = Config().features  # the default set: every fixed and parametric feature kind
MORE = ["vol_3", "ewvol_32", "ewvol_3", "volume_z_2", "mom_30"]  # other windows, ewvol


@settings(max_examples=25, deadline=None)
@given(t=st.integers(25, 118), seed=st.integers(0, 1000), scale=st.floats(0.5, 2.0))
def test_features_are_causal(t, seed, scale):
    frame = ohlcv_from_returns(random_walk_returns(120, seed=seed))
    changed = frame.copy()
    changed.iloc[t + 1 :] *= scale  # perturb every bar after t (prices and volume)
    changed.iloc[t + 1 :, 5] += seed
    a = compute_features(frame, [*ALL, *MORE])
    b = compute_features(changed, [*ALL, *MORE])
    pd.testing.assert_frame_equal(a.iloc[: t + 1], b.iloc[: t + 1])


def test_target_alignment_hand_computed():
    close = [100.0, 110.0, 99.0, 99.0]
    frame = pd.DataFrame({"adj_close": close}, index=pd.bdate_range("2020-01-01", periods=4))
    y1 = make_target(frame, 1).to_numpy()
    np.testing.assert_allclose(y1[:3], [np.log(1.1), np.log(0.9), 0.0])
    assert np.isnan(y1[3])
    y2 = make_target(frame, 2).to_numpy()
    np.testing.assert_allclose(y2[:2], [np.log(0.99), np.log(0.9)])
    assert np.isnan(y2[2:]).all()
    # row t's feature log_return is the return INTO t; its target the return OUT of t
    f = compute_features(
        frame.assign(open=close, high=close, low=close, close=close, volume=1.0), ["log_return"]
    )
    np.testing.assert_allclose(f["log_return"].to_numpy()[1:], y1[:-1])


def test_feature_values_hand_computed():
    frame = pd.DataFrame(
        {
            "open": [10.0, 10.0],
            "high": [12.0, 11.0],
            "low": [8.0, 11.0],
            "close": [11.0, 11.0],
            "adj_close": [11.0, 11.0],
            "volume": [0.0, 9.0],
        },
        index=pd.bdate_range("2020-01-01", periods=2),
    )
    f = compute_features(frame, ["oc_return", "hl_range", "close_loc", "log_volume_chg"])
    np.testing.assert_allclose(f["oc_return"], np.log(1.1))
    np.testing.assert_allclose(f["hl_range"], [np.log(1.5), 0.0])
    np.testing.assert_allclose(f["close_loc"], [0.75, 0.5])  # high == low -> mid
    np.testing.assert_allclose(f["log_volume_chg"].iloc[1], np.log(10.0))


def test_ewvol_is_the_exponentially_weighted_volatility_of_the_returns_so_far():
    frame = ohlcv_from_returns(random_walk_returns(80, seed=5))
    r = np.log(frame["adj_close"]).diff().to_numpy()
    got = compute_features(frame, ["ewvol_32", "ewvol_5"])
    for name, span, first in [("ewvol_32", 32, 20), ("ewvol_5", 5, 5)]:
        lam = (span - 1) / (span + 1)
        for t in (first, 50, 79):
            w = lam ** np.arange(t)  # the returns into bars t, t-1, ..., 1
            expected = np.sqrt(np.sum(w * r[t:0:-1] ** 2) / w.sum())
            assert got[name].iloc[t] == pytest.approx(expected, rel=1e-12), (name, t)
        assert got[name].iloc[:first].isna().all()  # min(N, 20) returns before the first


def test_unknown_feature_lists_valid_names():
    with pytest.raises(ValueError, match="unknown feature 'rsi'; valid: log_return"):
        check_feature_names(["rsi"])
    check_feature_names(["vol_10", "mom_21", "volume_z_5", "ewvol_32"])


def test_build_drops_warmup_rows_only():
    frame = ohlcv_from_returns(random_walk_returns(100))
    td = build({"X": frame}, ["log_return", "vol_20"], 1)["X"]
    assert td.dates[0] == frame.index[20] and len(td.x) == 80
    assert np.isfinite(td.x).all() and np.isnan(td.y[-1]) and np.isfinite(td.y[:-1]).all()


def test_scaler_fits_on_the_given_span_and_handles_constants():
    x = np.column_stack([np.arange(10.0), np.ones(10)])
    s = Scaler.fit(x[:5], np.array([0.1, -0.1, 0.1, -0.1, np.nan]), ["hl_range", "col:const"])
    np.testing.assert_allclose(s.mean, [2.0, 1.0])
    np.testing.assert_allclose(s.std, [np.std(np.arange(5.0)), 1.0])
    assert s.y_scale == pytest.approx(0.1)
    assert np.isfinite(s.transform(x)).all() and (s.transform(x)[:, 1] == 0).all()
    assert Scaler.from_dict(s.to_dict()).y_scale == s.y_scale


def test_scaler_scales_signed_changes_without_centring_them():
    # a return's zero is no move: the training span's mean return is not subtracted
    x = np.column_stack([np.array([0.03, 0.01, 0.02, -0.02]), np.array([1.0, 2.0, 3.0, 4.0])])
    for name in ("log_return", "oc_return", "log_volume_chg", "mom_20"):
        s = Scaler.fit(x, np.zeros(4), [name, "vol_20"])
        np.testing.assert_allclose(s.mean, [0.0, 2.5])
        np.testing.assert_allclose(s.std, [np.sqrt(np.mean(x[:, 0] ** 2)), np.std(x[:, 1])])
        assert s.transform(x)[0, 0] > 0 and s.transform(x)[3, 0] < 0  # signs kept
    s = Scaler.fit(x, np.zeros(4), ["close_loc", "col:fred_rate"])  # levels are centred
    np.testing.assert_allclose(s.mean, x.mean(0))


def _panel(lengths, f=3):
    data = {}
    for i, n in enumerate(lengths):
        frame = ohlcv_from_returns(random_walk_returns(n + 1, seed=i))
        data[f"T{i}"] = build({f"T{i}": frame}, ["log_return", "hl_range", "oc_return"][:f], 1)[
            f"T{i}"
        ]
    scalers = {t: Scaler(np.zeros(f), np.ones(f), 1.0) for t in data}
    return data, make_panel(data, scalers)


@pytest.mark.parametrize("mode,burn_in", [("last", 0), ("all", 4), ("all", 0), ("all", 9)])
@pytest.mark.parametrize("lo,hi", [(0, 50), (13, 47), (30, 41), (0, 12)])
@pytest.mark.parametrize("retile", [None, 0, 1, 2])
def test_windows_cover_each_target_once_and_match_naive_loop(mode, burn_in, lo, hi, retile):
    data, panel = _panel([50, 40])
    window = 10
    ds = WindowDataset(panel, [(0, lo, hi), (1, 0, 40)], window, mode, burn_in)
    if retile is not None:  # a pass with the dense tiling moved by random offsets
        ds.retile(torch.Generator().manual_seed(retile))
    seen = []
    for i in range(len(ds)):
        x, y, mask = ds[i]
        # the item is a view into the panel, and equals a naive slice
        start = int(ds.locate(torch.tensor([i]))[0][0])
        assert x.data_ptr() == panel.x[start:].data_ptr()
        torch.testing.assert_close(x, panel.x[start : start + window].T)
        seen += [start + j for j in range(window) if mask[j]]
    xb, yb, mb = ds.batch(torch.arange(len(ds)))
    assert xb.shape == (len(ds), 3, window)
    # every target row of the spans appears in exactly one loss position (after the warm-up)
    floor0 = window - 1 if mode == "last" else burn_in
    expected = list(range(max(lo, floor0), hi)) + [
        50 + r for r in range(window - 1 if mode == "last" else burn_in, 40)
    ]
    assert sorted(seen) == expected
    assert (
        int(mb.sum()) == len(expected) - (1 if 49 in expected else 0) - 1
    )  # last row of each ticker has no target
    for start in ds.locate(torch.arange(len(ds)))[0].tolist():
        # no window crosses tickers, or reads a row at or past its span's end
        assert (start < 50 and start + window <= hi) or (start >= 50 and start + window <= 90)


def test_retiling_moves_sequence_boundaries_and_keeps_the_targets():
    _, panel = _panel([400])
    ds = WindowDataset(panel, [(0, 0, 400)], 40, "all", 10)
    before = sorted(ds.locate(torch.arange(len(ds)))[0].tolist())
    targets = ds.n_targets()
    gen = torch.Generator().manual_seed(0)
    starts = {
        tuple(sorted(ds.retile(gen).locate(torch.arange(len(ds)))[0].tolist())) for _ in range(8)
    }
    assert len(starts | {tuple(before)}) > 2  # new boundaries on most passes
    assert ds.n_targets() == targets
    ds2 = WindowDataset(panel, [(0, 0, 400)], 40, "all", 10)
    again = ds2.retile(torch.Generator().manual_seed(0)).locate(torch.arange(len(ds2)))[0]
    first = WindowDataset(panel, [(0, 0, 400)], 40, "all", 10).retile(
        torch.Generator().manual_seed(0)
    )
    assert torch.equal(again, first.locate(torch.arange(len(first)))[0])  # seeded: reproducible


def test_dense_windows_use_far_fewer_windows():
    segs = window_segments(0, 10_000, 256, "all", 64, 0)
    n_dense = sum(c for _, c, _, _, _ in segs)
    n_last = sum(c for _, c, _, _, _ in window_segments(0, 10_000, 256, "last", 0, 0))
    assert n_last / n_dense > 50


def test_window_dataset_memory_is_within_1_1x_of_raw():
    n, f = 1_000_000, 8
    from tsconv.engine.windows import Panel

    panel = Panel(torch.zeros(n, f), torch.zeros(n), np.array([0, n]), ["X"])
    raw = sum(t.element_size() * t.nelement() for t in (panel.x, panel.y))  # the series itself
    ds = WindowDataset(panel, [(0, 0, n)], 256, "last", 0)  # stride 1: the worst case
    index = sum(
        t.element_size() * t.nelement()
        for t in (ds.first, ds.count, ds.stride, ds.loss_from, ds.loss_to, ds.cum)
    )
    assert len(ds) == n - 255
    assert ds._xw.data_ptr() == panel.x.data_ptr() and ds._yw.data_ptr() == panel.y.data_ptr()
    assert (raw + index) / raw <= 1.1
    assert index < 1000  # O(segments), not O(windows)


def test_moving_a_window_dataset_moves_rows_not_windows():
    from tsconv.engine.windows import Panel

    g = torch.Generator().manual_seed(0)
    panel = Panel(torch.randn(500, 3, generator=g), torch.randn(500, generator=g), [0, 500], ["X"])
    ds = WindowDataset(panel, [(0, 10, 500)], 32, "all", 8)
    moved = ds.to("cpu")  # on a GPU the same code gathers there (tests/test_cuda.py)
    assert moved._xw.untyped_storage().nbytes() == panel.x.untyped_storage().nbytes()
    idx = torch.arange(len(ds)).flip(0)
    for a, b in zip(ds.batch(idx), moved.batch(idx), strict=True):
        assert torch.equal(a, b)
    assert len(moved) == len(ds) and moved.panel is panel


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(25, 90), min_size=1, max_size=5),
    horizon=st.integers(1, 3),
    names=st.lists(st.sampled_from([*ALL, *MORE]), min_size=1, unique=True),
)
def test_panel_build_equals_one_ticker_at_a_time(lengths, horizon, names):
    """The panel is computed stacked; no ticker's first rows may read the previous ticker's
    bars, so each ticker gets what it gets alone (to float tolerance: rolling sums run on)."""
    frames = {
        f"T{i}": ohlcv_from_returns(random_walk_returns(n, seed=i), start=f"{2000 + i}-01-03")
        for i, n in enumerate(lengths)
    }
    try:
        together = build(frames, names, horizon)
    except Exception as error:  # a ticker too short for these features: the same error alone
        with pytest.raises(type(error), match=str(error).split(":")[0]):
            for t, f in frames.items():
                build({t: f}, names, horizon)
        return
    for t, f in frames.items():
        (alone,) = build({t: f}, names, horizon).values()
        got = together[t]
        assert got.dates.equals(alone.dates)
        np.testing.assert_allclose(got.x, alone.x, rtol=1e-6, atol=1e-7)
        for a, b in [(got.y, alone.y), (got.ret1, alone.ret1), (got.logp, alone.logp)]:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # NaN where NaN


def test_leads_are_the_rows_a_feature_leaves_empty():
    frame = ohlcv_from_returns(random_walk_returns(60, seed=3))
    for name in [*ALL, *MORE]:
        _, lead = features.resolve(name)
        values = compute_features(frame, [name])[name].to_numpy()
        assert np.isnan(values[:lead]).all() and np.isfinite(values[lead:]).all(), name
