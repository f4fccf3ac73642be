"""Sources, validation and the cache: every bad input is one clear DataError naming where."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ohlcv_from_returns, random_walk_returns
from tsconv.data import cache
from tsconv.data.fetch import fetch_many, import_file, import_sample
from tsconv.data.sources import fetch_yahoo, load_file, load_sample, sample_tickers
from tsconv.data.validate import canonicalize
from tsconv.errors import DataError, FetchError

GOOD = """Date,Open,High,Low,Close,Adj Close,Volume
2020-01-02,10,11,9,10.5,10.4,1000
2020-01-03,10.5,11.5,10,11,10.9,1200
2020-01-06,11,12,10.5,11.5,11.4,900
"""


def write(tmp_path: Path, text: str, name: str = "p.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_csv_becomes_canonical(tmp_path):
    frame = load_file(write(tmp_path, GOOD))
    assert list(frame.columns) == ["open", "high", "low", "close", "adj_close", "volume"]
    assert frame.index.name == "date" and str(frame.index[0].date()) == "2020-01-02"
    assert frame["adj_close"].iloc[-1] == 11.4 and frame.dtypes.eq("float64").all()


def test_column_names_are_matched_case_insensitively(tmp_path):
    text = (
        GOOD.replace("Date", "timestamp")
        .replace("Adj Close", "ADJ_CLOSE")
        .replace("Volume", "VOLUME")
    )
    assert "adj_close" in load_file(write(tmp_path, text))


def test_bom_and_semicolon_are_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.replace(",", ";").encode())
    assert len(load_file(path)) == 3


BAD_CSV = [
    ("", "empty file"),
    ("Date,Open,High,Low,Close,Volume\n", "no data rows"),
    ("Date,Open,High,Low,Volume\n2020-01-02,1,2,1,5\n", "missing column(s) close"),
    (
        GOOD.replace("10.5,11.5,10,11", "10.5,11.5,10,abc"),
        "row 3: non-numeric value 'abc' in column close",
    ),
    (GOOD.replace("2020-01-03", "2020-01-02"), "row 3: duplicate date 2020-01-02"),
    (GOOD.replace("2020-01-03", "2020-01-09"), "row 4: dates are not in ascending order"),
    (GOOD.replace("2020-01-03", "yesterday"), "row 3: cannot parse date 'yesterday'"),
    (
        GOOD.replace("2020-01-03,10.5", "2020-01-03,-1"),
        "row 3 (2020-01-03): open must be a positive",
    ),
    (GOOD.replace("10.5,11.5,10,11", "10.5,9,10,11"), "high 9.0 is below low 10.0"),
    (GOOD.replace(",1200", ",-5"), "volume must be a finite number >= 0"),
    (
        "Date,Open,High,Low,Close,Volume\n2020-01-02T00:00:00+01:00,1,2,1,1,5\n2020-01-03T00:00:00-05:00,1,2,1,1,5\n",
        "mixes timezones",
    ),
    ("Date;Open,High;Low,Close\n2020-01-02;1,2;1,1\n", "ambiguous column separator"),
]


@pytest.mark.parametrize("text,message", BAD_CSV, ids=[m[:30] for _, m in BAD_CSV])
def test_bad_csv_is_one_clear_data_error(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as exc:
        load_file(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_nan_policies(tmp_path):
    text = GOOD.replace("10.5,11.5,10,11,10.9", "10.5,,10,11,10.9")
    path = write(tmp_path, text)
    assert load_file(path, nan_policy="ffill")["high"].iloc[1] == 11.0
    assert len(load_file(path, nan_policy="drop")) == 2
    with pytest.raises(DataError, match="row 3: missing value in high"):
        load_file(path, nan_policy="error")


def test_nan_run_longer_than_fill_limit(ohlcv):
    raw = ohlcv.copy()
    raw.iloc[10:20, 3] = np.nan
    with pytest.raises(DataError, match="row 16: missing values that cannot be forward-filled"):
        canonicalize(raw, "frame", fill_limit=5)
    assert canonicalize(raw, "frame", fill_limit=10)["close"].iloc[15] == raw["close"].iloc[9]


def test_single_row_and_parquet_that_is_text(tmp_path):
    with pytest.raises(DataError, match="only 1 row"):
        load_file(write(tmp_path, GOOD.rsplit("\n", 3)[0] + "\n"))
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_file(write(tmp_path, GOOD, "fake.parquet"))


def test_huge_file_is_refused_by_size_before_reading(tmp_path):
    from tsconv.data.sources import read_table

    path = tmp_path / "big.csv"
    with open(path, "wb") as fh:  # sparse: 2 GB on paper, nothing on disk
        fh.truncate(2 * 1024**3)
    with pytest.raises(DataError, match="2.0 GB, over tsconv's 512 MB limit"):
        read_table(path)


def test_parquet_roundtrip_and_tz_aware_index(tmp_path, ohlcv):
    frame = ohlcv.copy()
    frame.index = frame.index.tz_localize("America/New_York")
    path = tmp_path / "x.parquet"
    frame.to_parquet(path)
    out = load_file(path)
    assert out.index.tz is None and out.index[0] == ohlcv.index[0]
    np.testing.assert_allclose(out["close"], ohlcv["close"])


def test_embedded_sample_is_real_multi_year_data():
    assert {"AAPL", "MSFT", "IBM", "GOOG"} <= set(sample_tickers())
    frames = load_sample(["MSFT", "AAPL"])
    msft = frames["MSFT"]
    assert msft.index[0].year == 2000 and msft.index[-1].year == 2013 and len(msft) > 3000
    assert (msft["adj_close"] <= msft["close"] * 1.0001).all()  # dividends adjust downward
    with pytest.raises(DataError, match="not in the embedded sample"):
        load_sample(["NOPE"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_loader_on_random_corruption_returns_valid_frame_or_data_error(tmp_path_factory, data):
    frame = ohlcv_from_returns(random_walk_returns(12, seed=1)).reset_index()
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    cells = frame.astype(object)
    for _ in range(data.draw(st.integers(0, 4))):
        r = data.draw(st.integers(0, len(cells) - 1))
        c = data.draw(st.integers(0, cells.shape[1] - 1))
        cells.iat[r, c] = data.draw(
            st.sampled_from(["", "x", "-1", "0", "nan", "1e308", "2001-01-01", " 7 "])
        )
    if data.draw(st.booleans()):
        cells = cells.drop(columns=data.draw(st.sampled_from(list(cells.columns))))
    path = tmp_path_factory.mktemp("h") / "f.csv"
    cells.to_csv(path, index=False)
    try:
        out = load_file(path, nan_policy=data.draw(st.sampled_from(["drop", "ffill", "error"])))
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert out.index.is_monotonic_increasing and out.index.is_unique
    assert (
        np.isfinite(out.to_numpy()).all()
        and (out[["open", "high", "low", "close"]] > 0).all().all()
    )
    assert (out["high"] >= out["low"]).all()


# --------------------------------------------------------------------------- tickers & cache


@pytest.mark.parametrize("ticker", ["SPY", "BRK-B", "^GSPC", "ES=F", "msft"])
def test_safe_tickers(ticker):
    assert cache.ticker_path(Path("d"), ticker).name == f"{ticker.upper()}.parquet"


@pytest.mark.parametrize("ticker", ["../x", "", "a/b", "a\\b", "x\0y", "A" * 300, "..", ".hidden"])
def test_hostile_tickers_rejected(ticker):
    with pytest.raises(DataError, match="not a valid symbol"):
        cache.safe_ticker(ticker)


def yf_frame(frame: pd.DataFrame, tickers: list[str], multi: bool = True) -> pd.DataFrame:
    """What yfinance 1.x returns with auto_adjust=False: (Price, Ticker) MultiIndex columns."""
    cols = {
        "Adj Close": "adj_close",
        "Close": "close",
        "High": "high",
        "Low": "low",
        "Open": "open",
        "Volume": "volume",
    }
    parts = {}
    for t in tickers:
        for yf_name, ours in cols.items():
            parts[(yf_name, t)] = frame[ours]
    out = pd.DataFrame(parts)
    out.index = frame.index.tz_localize("America/New_York").rename("Date")
    if not multi:
        out.columns = out.columns.get_level_values(0)
    return out


class StubYahoo:
    """Stands in for yf.download: serves a frame per ticker between start and end, or fails."""

    def __init__(
        self,
        frames: dict[str, pd.DataFrame],
        fail: set[str] = frozenset(),
        raise_for: set[str] = frozenset(),
    ):
        self.frames, self.fail, self.raise_for, self.calls = frames, fail, raise_for, []

    def __call__(self, tickers, start=None, end=None, **kw):
        self.calls.append((tickers, start, end, kw))
        assert kw["auto_adjust"] is False and kw["progress"] is False
        if tickers in self.raise_for:
            raise ConnectionError("Failed to resolve 'query2.finance.yahoo.com'")
        if tickers in self.fail or tickers not in self.frames:
            return pd.DataFrame()
        f = self.frames[tickers]
        f = f.loc[
            pd.Timestamp(start) if start else None : (pd.Timestamp(end) - pd.Timedelta(days=1))
            if end
            else None
        ]
        return yf_frame(f, [tickers])


@pytest.fixture
def prices():
    return {
        "SPY": ohlcv_from_returns(random_walk_returns(60, seed=1)),
        "AAPL": ohlcv_from_returns(random_walk_returns(60, seed=2), price0=50),
    }


def test_fetch_one_ticker_multiindex_and_flat(prices):
    for multi in (True, False):
        got = fetch_yahoo("SPY", download=lambda m=multi, **kw: yf_frame(prices["SPY"], ["SPY"], m))
        np.testing.assert_allclose(got["adj_close"], prices["SPY"]["adj_close"])
        assert got.index.tz is None and got.index[0] == prices["SPY"].index[0]


def test_fetch_many_writes_parquet_and_manifest(tmp_path, prices):
    stub = StubYahoo(prices)
    report = fetch_many(tmp_path, ["SPY", "AAPL"], download=stub, sleep=lambda s: None)
    assert set(report.written) == {"SPY", "AAPL"} and not report.failed
    manifest = cache.read_manifest(tmp_path)
    assert manifest["SPY"]["rows"] == 60 and manifest["SPY"]["source"] == "yahoo"
    assert "adj_close" in manifest["SPY"]["adjustment"]
    back = pd.read_parquet(tmp_path / "SPY.parquet")
    np.testing.assert_allclose(back["close"], prices["SPY"]["close"])


def test_second_fetch_only_appends_new_bars(tmp_path, prices):
    full = prices["SPY"]
    first = StubYahoo({"SPY": full.iloc[:40]})
    fetch_many(tmp_path, ["SPY"], download=first, sleep=lambda s: None)
    second = StubYahoo({"SPY": full})
    report = fetch_many(tmp_path, ["SPY"], download=second, sleep=lambda s: None)
    assert second.calls[0][1] == str(full.index[39].date())  # asked only from the last cached bar
    assert "appended 20 bar(s)" in report.written["SPY"]["note"]
    back = pd.read_parquet(tmp_path / "SPY.parquet")
    assert len(back) == 60
    np.testing.assert_allclose(back["adj_close"], full["adj_close"])


def test_readjusted_history_is_refetched_whole(tmp_path, prices):
    full = prices["SPY"]
    fetch_many(tmp_path, ["SPY"], download=StubYahoo({"SPY": full.iloc[:40]}), sleep=lambda s: None)
    adjusted = full.assign(adj_close=full["adj_close"] * 0.98)  # a dividend re-bases the past
    report = fetch_many(
        tmp_path, ["SPY"], download=StubYahoo({"SPY": adjusted}), sleep=lambda s: None
    )
    assert "re-adjusted" in report.written["SPY"]["note"]
    np.testing.assert_allclose(
        pd.read_parquet(tmp_path / "SPY.parquet")["adj_close"], adjusted["adj_close"]
    )


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_offline_fetch_fails_in_one_line_and_leaves_cache_untouched(tmp_path, prices):
    fetch_many(tmp_path, ["SPY"], download=StubYahoo(prices), sleep=lambda s: None)
    before = digest(tmp_path)
    sleeps = []
    offline = StubYahoo({}, raise_for={"SPY"})
    report = fetch_many(
        tmp_path, ["SPY"], download=offline, sleep=sleeps.append, retries=3, backoff=0.5
    )
    assert report.failed["SPY"].startswith("could not reach Yahoo Finance for SPY: ConnectionError")
    assert sleeps == [0.5, 1.0, 2.0] and len(offline.calls) == 4
    assert digest(tmp_path) == before


def test_empty_result_and_partial_failure(tmp_path, prices):
    with pytest.raises(
        FetchError, match="could not reach Yahoo Finance for ZZZZ: no data returned"
    ):
        fetch_yahoo("ZZZZ", download=StubYahoo({}), sleep=lambda s: None)
    report = fetch_many(
        tmp_path,
        ["SPY", "BAD", "AAPL"],
        download=StubYahoo(prices, raise_for={"BAD"}),
        sleep=lambda s: None,
    )
    assert set(report.written) == {"SPY", "AAPL"} and list(report.failed) == ["BAD"]
    assert (tmp_path / "AAPL.parquet").exists() and not (tmp_path / "BAD.parquet").exists()


def test_hostile_name_rejected_before_any_download(tmp_path, prices):
    stub = StubYahoo(prices)
    with pytest.raises(DataError):
        fetch_many(tmp_path, ["SPY", "../etc"], download=stub)
    assert stub.calls == [] and not any(tmp_path.iterdir())


def test_import_file_and_sample(tmp_path):
    entry = import_file(tmp_path, write(tmp_path, GOOD, "in.csv"), "mine")
    assert entry["rows"] == 3 and (tmp_path / "MINE.parquet").exists()
    out = import_sample(tmp_path / "d", ["IBM"])
    assert out["IBM"]["rows"] > 3000
    assert import_sample(tmp_path / "d", ["IBM"])["IBM"]["note"] == "already in cache"


def _writer(folder: str, seed: int) -> None:
    frame = ohlcv_from_returns(random_walk_returns(2000, seed=seed))
    for _ in range(5):
        with cache.locked(Path(folder)):
            cache.store(Path(folder), "SPY", frame, source="test", fetched_at="now", note=str(seed))


def test_two_writers_never_corrupt_the_cache(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    frame = load_file(tmp_path / "SPY.parquet")
    assert len(frame) == 2000
    note = cache.read_manifest(tmp_path)["SPY"]["note"]
    expected = ohlcv_from_returns(random_walk_returns(2000, seed=int(note)))
    np.testing.assert_allclose(frame["close"], expected["close"])
    assert not list(tmp_path.glob("*.tmp"))
