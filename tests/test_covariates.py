"""Covariates and user columns without look-ahead, and `tsconv audit`.

The known answer (tsconv.synthetic.index_panel): tickers follow a market index the same day and
two days late, so the index's return of the day before predicts each ticker's next return and
the tickers' own past does not. With the index as a covariate the shipped `quick` config beats
itself without it (DM p < 0.01) and `audit` is clean; the index stamped one day early and
marked known at the close is a leak `audit` proves (exit 3), while the safe default rule
(`next_open`) turns the same early stamp into the true one.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import ohlcv_from_returns, random_walk_returns, tiny_config
from tsconv import synthetic
from tsconv.cli import app
from tsconv.data import covariates
from tsconv.data.covariates import Covariate
from tsconv.errors import DataError
from tsconv.evaluate import metrics
from tsconv.recipes import audit
from tsconv.recipes.prepare import prepare

runner = CliRunner()


def invoke(args: list[str], code: int = 0):
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    return r


def audit_cli(report: Path, keys: list[str], code: int = 0):
    """`tsconv audit` on the shipped quick config with these --set items."""
    return invoke(["audit", "--config", "quick", "--out", str(report), *keys], code)


# --------------------------------------------------------------------------- the rule


def test_alignment_takes_the_last_usable_value_and_never_the_next():
    own = pd.to_datetime(["2020-01-06", "2020-01-07", "2020-01-09"])  # Mon Tue Thu
    values = pd.DataFrame({"c:x": [1.0, 2.0, 4.0]}, index=own)
    bars = pd.bdate_range("2020-01-06", "2020-01-10")  # Mon..Fri
    nxt = Covariate("c", values, "next_open", fill_limit=5).align(bars, "T")[:, 0]
    np.testing.assert_array_equal(nxt, [np.nan, 1.0, 2.0, 2.0, 4.0])  # Thu: Tue's, not Thu's
    close = Covariate("c", values, "close", fill_limit=5).align(bars, "T")[:, 0]
    np.testing.assert_array_equal(close, [1.0, 2.0, 2.0, 4.0, 4.0])  # Wed: Tue's, not Thu's
    # Wednesday has no value of its own: a second bar of Tuesday's is past a limit of 0
    strict = Covariate("c", values, "close", fill_limit=0)
    with pytest.raises(
        DataError, match=r"c has no value within fill_limit=0 bars of T's bar on 2020-01-08"
    ):
        strict.align(bars, "T")
    assert [d.date().isoformat() for d, _ in strict.stale(bars)] == ["2020-01-08", "2020-01-10"]


def test_lag_delays_a_covariate_on_its_own_calendar(tmp_path):
    frames, index = _panel_frames()
    cfg = tiny_config(
        data={"tickers": ["STOCK0"]},
        features=["log_return"],
        covariates=[{"ticker": "INDEX", "lag": 2, "known_at": "close"}],
    )
    built = covariates.build(cfg, {"INDEX": index})[0].values["INDEX:log_return"]
    expected = np.log(index["adj_close"]).diff().shift(2).dropna()
    pd.testing.assert_series_equal(built, expected, check_names=False)


def _panel_frames(n: int = 1500, tickers: int = 2):
    index, frames = synthetic.index_panel(n, tickers)
    return frames, index


def _early(index: pd.DataFrame) -> pd.DataFrame:
    """The index's bars stamped one business day early: day d holds d+1's bar."""
    return index.iloc[1:].set_axis(index.index[:-1])


def test_an_early_stamp_under_next_open_is_the_true_stamp_under_close():
    frames, index = _panel_frames()
    base = {"data": {"tickers": list(frames)}, "features": ["log_return"]}
    true_close = prepare(
        tiny_config(**base, covariates=[{"ticker": "INDEX", "known_at": "close"}]),
        frames,
        {"INDEX": index},
    )
    early_next = prepare(
        tiny_config(**base, covariates=[{"ticker": "INDEX"}]), frames, {"INDEX": _early(index)}
    )
    for t in frames:
        a, b = true_close.data[t], early_next.data[t]
        common = a.dates.intersection(b.dates)[:-1]
        xa = pd.DataFrame(a.x, index=a.dates).loc[common]
        xb = pd.DataFrame(b.x, index=b.dates).loc[common]
        np.testing.assert_array_equal(xa.to_numpy(), xb.to_numpy())


def test_a_covariates_future_never_changes_the_past():
    frames, index = _panel_frames()
    cfg = tiny_config(
        data={"tickers": list(frames)},
        features=["log_return"],
        covariates=[{"ticker": "INDEX", "features": ["log_return", "vol_20"]}],
    )
    cut = index.index[900]
    a = prepare(cfg, frames, {"INDEX": index})
    b = prepare(cfg, frames, {"INDEX": audit.perturbed({"INDEX": index}, cut)["INDEX"]})
    for t in frames:
        upto = int(a.data[t].dates.searchsorted(cut, side="right"))
        np.testing.assert_array_equal(a.data[t].x[:upto], b.data[t].x[:upto])
        assert not np.array_equal(a.data[t].x[upto + 1 :], b.data[t].x[upto + 1 :])
    assert a.data["STOCK0"].feature_names == ["log_return", "INDEX:log_return", "INDEX:vol_20"]


@pytest.mark.parametrize(
    ("covariate", "message"),
    [
        ({"ticker": "X", "file": "f.csv"}, "give exactly one of ticker or file"),
        ({"file": "f.csv"}, "a file covariate names its columns"),
        ({"ticker": "X", "columns": ["a"]}, "columns are for a file"),
        ({"ticker": "X", "features": ["col:a"]}, "OHLCV features, not col:"),
        ({"ticker": "X", "knwon_at": "close"}, "covariates.0.knwon_at: unknown key; did you mean"),
        ({"ticker": "ZZZ"}, "covariates[0].ticker: 'ZZZ' is not in the embedded sample"),
        (
            {"file": "no/such.csv", "columns": ["a"]},
            "covariates[0].file: no/such.csv: no such file (relative to the current directory",
        ),
    ],
)
def test_covariate_config_errors(tmp_path, covariate, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"covariates": [covariate]}))
    r = invoke(["backtest", "--config", str(path), "--out", str(tmp_path / "o")], code=2)
    assert message in r.output and "Traceback" not in r.output, r.output


# --------------------------------------------------------------------------- known answer


@pytest.fixture(scope="module")
def index_cache(tmp_path_factory):
    """The index panel imported with `tsconv fetch --from-csv`, with the index also stamped one
    day early (INDEXEARLY) and one day late (INDEXLATE)."""
    root = tmp_path_factory.mktemp("index")
    index, frames = synthetic.index_panel(2500, 3)
    late = index.iloc[:-1].set_axis(index.index[1:])
    for name, frame in {
        **frames,
        "INDEX": index,
        "INDEXEARLY": _early(index),
        "INDEXLATE": late,
    }.items():
        path = root / f"{name}.csv"
        frame.to_csv(path)
        invoke(
            ["fetch", "--from-csv", str(path), "--ticker", name, "--data-dir", str(root / "cache")]
        )
    return root / "cache", list(frames)


def _keys(index_cache, covariate: str | None = None, known_at: str = "next_open") -> list[str]:
    cache_dir, tickers = index_cache
    keys = ["data.source=cache", f"data.dir={cache_dir}", f"data.tickers=[{','.join(tickers)}]"]
    if covariate:
        keys.append(f"covariates=[{{ticker: {covariate}, known_at: {known_at}}}]")
    return [a for k in keys for a in ("--set", k)]


@pytest.mark.slow
def test_the_index_as_a_covariate_beats_the_model_without_it(tmp_path, index_cache):
    for name, cov in [("with", "INDEX"), ("without", None)]:
        invoke(
            [
                "backtest",
                "--config",
                "quick",
                "--out",
                str(tmp_path / name),
                *_keys(index_cache, cov),
            ]
        )
    a = pd.read_parquet(tmp_path / "with" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "without" / "predictions.parquet")
    m = a.merge(b, on=["date", "ticker"], suffixes=("", "_without"))
    assert len(m) == len(a) > 3000
    loss = (
        m.assign(
            a=(m["prediction"] - m["realized"]) ** 2,
            b=(m["prediction_without"] - m["realized"]) ** 2,
        )
        .groupby("date")[["a", "b"]]
        .mean()
    )
    dm = metrics.diebold_mariano(loss["a"].to_numpy(), loss["b"].to_numpy())
    assert dm["stat"] < 0 and dm["p_value"] < 0.01, dm
    with_m = json.loads((tmp_path / "with" / "metrics.json").read_text())
    assert with_m["forecast"]["prediction"]["r2_oos"] > 0.02
    r = audit_cli(tmp_path / "a.json", _keys(index_cache, "INDEX"))
    assert r.output.strip().splitlines()[-1].startswith("clean"), r.output
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["verdict"] == "clean" and report["checked"]["covariates"] == ["INDEX"]


@pytest.mark.slow
def test_on_the_sample_an_index_like_covariate_backtests_and_audits_clean(tmp_path):
    keys = ["--set", "covariates=[{ticker: IBM, features: [log_return, vol_20]}]"]
    out = tmp_path / "bt"
    invoke(["backtest", "--config", "quick", "--out", str(out), *keys])
    m = json.loads((out / "metrics.json").read_text())
    assert m["tickers"] == ["AAPL", "MSFT"] and m["n_predictions"] > 3000
    assert "IBM" in (out / "config.yaml").read_text()
    r = audit_cli(tmp_path / "a.json", keys)
    assert r.output.strip().splitlines()[-1].startswith("clean"), r.output


@pytest.mark.slow
def test_audit_proves_an_early_stamped_covariate_known_at_the_close_leaks(tmp_path, index_cache):
    r = audit_cli(tmp_path / "a.json", _keys(index_cache, "INDEXEARLY", "close"), code=3)
    assert "leak: INDEXEARLY:log_return" in r.output and "it contains the future" in r.output, (
        r.output
    )
    # the safe rule holds the same early stamp back a bar, which makes it right: the audit
    # finds the stamp wrong (a smell, exit 4) and no leak; a late stamp is harmless
    r = audit_cli(tmp_path / "early.json", _keys(index_cache, "INDEXEARLY"), code=4)
    assert "smell: INDEXEARLY:log_return" in r.output and "dated a bar early?" in r.output
    assert "0 leak(s), 1 smell(s)" in r.output, r.output
    r = audit_cli(tmp_path / "late.json", _keys(index_cache, "INDEXLATE"))
    assert r.output.strip().splitlines()[-1].startswith("clean"), r.output


# --------------------------------------------------------------------------- user columns


def _with_columns(tmp_path: Path, n: int = 1600) -> Path:
    """A random walk's bars with a noise column, its next return (the target, planted) and the
    return two bars ahead."""
    frame = ohlcv_from_returns(random_walk_returns(n, seed=5))
    r = np.log(frame["adj_close"]).diff().shift(-1)
    rng = np.random.default_rng(0)
    frame = frame.assign(
        **{"Sentiment Score": rng.normal(size=n), "future": r, "future2": r.shift(-1)}
    )
    path = tmp_path / "bars.csv"
    frame.to_csv(path)
    return path


def _csv_keys(path: Path, features: str, known_at: str = "next_open") -> list[str]:
    keys = [
        "data.source=csv",
        f"data.path={path}",
        "data.tickers=[RW]",
        f"features={features}",
        f"data.columns_known_at={known_at}",
        "backtest.train_span=600",
        "backtest.test_span=300",
        "train.min_steps=20",
    ]
    return [a for k in keys for a in ("--set", k)]


@pytest.mark.slow
def test_user_columns_are_features_by_name_and_a_planted_future_is_found(tmp_path):
    path = _with_columns(tmp_path)
    out = tmp_path / "bt"
    invoke(
        [
            "backtest",
            "--config",
            "quick",
            "--out",
            str(out),
            *_csv_keys(path, "[log_return, col:sentiment_score]"),
        ]
    )
    assert json.loads((out / "metrics.json").read_text())["n_predictions"] > 500
    r = audit_cli(tmp_path / "ok.json", _csv_keys(path, "[log_return, col:sentiment_score]"))
    assert "clean" in r.output
    # the target as a column, known "at the close": a leak; two bars ahead, even the safe rule
    # lets the future in
    for features, known_at in [
        ("[log_return, col:future]", "close"),
        ("[log_return, col:future2]", "next_open"),
    ]:
        r = audit_cli(tmp_path / "x.json", _csv_keys(path, features, known_at), code=3)
        name = features.split(", ")[1].rstrip("]")
        assert f"leak: {name}" in r.output and "contains the future" in r.output, r.output
    r = invoke(
        [
            "backtest",
            "--config",
            "quick",
            "--out",
            str(tmp_path / "y"),
            *_csv_keys(path, "[col:mood]"),
        ],
        code=2,
    )
    assert "features: col:mood: RW has no numeric column 'mood'" in r.output
    assert "sentiment_score" in r.output and not (tmp_path / "y" / "metrics.json").exists()


def test_a_leaky_column_is_reported_with_every_ticker_it_leaks_in():
    rng = np.random.default_rng(0)

    def ticker(leaky: bool):
        y = rng.normal(size=400)
        x = np.column_stack([rng.normal(size=400), y if leaky else rng.normal(size=400)])
        return SimpleNamespace(x=x, y=y, feature_names=["noise", "col:future"])

    prep = SimpleNamespace(
        cfg=SimpleNamespace(target=SimpleNamespace(horizon=1)),
        data={"A": ticker(True), "B": ticker(False), "C": ticker(True)},
    )
    found = audit._correlations(prep)
    assert [(f.kind, f.what, f.where) for f in found] == [("leak", "col:future", "A, C")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cut", "2030-01-02"],
            "error: --cut 2030-01-02: outside the audited folds; pick a date",
        ),
        (
            ["--cut", "1999-01-04"],
            "error: --cut 1999-01-04: outside the audited folds; pick a date",
        ),
        (["--folds", "0"], "error: --folds 0: must be at least 1"),
    ],
)
def test_audit_options_outside_the_data_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "a.json"
    r = invoke(["audit", "--config", "quick", "--out", str(out), *args], code=2)
    assert r.output.startswith(message) and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


# --------------------------------------------------------------------------- smells and gaps


def test_smells_splits_stale_bars_and_calendar_gaps():
    frames, index = _panel_frames(800, 1)
    f = frames["STOCK0"].copy()
    f = f.assign(adj_close=f["close"])
    f.loc[f.index[300] :, ["open", "high", "low", "close", "adj_close"]] /= (
        2.0  # an unadjusted 2:1 split
    )
    f.iloc[500:507] = f.iloc[499].to_numpy()  # a week of one repeated bar
    cfg = tiny_config(
        data={"tickers": ["STOCK0"]}, covariates=[{"ticker": "INDEX", "fill_limit": 2}]
    )
    holey = index.drop(index.index[600:605])  # the index misses five of the ticker's bars
    smells = audit._data_smells(cfg, {"STOCK0": f}, {"INDEX": holey})
    kinds = {(s.check, s.where.split(" ")[0]) for s in smells}
    assert ("split", "STOCK0") in kinds and ("stale", "STOCK0") in kinds
    split = next(s for s in smells if s.check == "split")
    assert str(f.index[300].date()) in split.where and "2:1 split" in split.detail
    # other holidays, one at a time, are within the limit. The index has no bar on day 137:
    # the ticker's bars 137 and 138 both get its return of day 136 (next_open), and bar 139
    # its return of day 138, which spans two of its days (136 to 138)
    other = index.drop(index.index[100::37])
    prep = prepare(cfg.model_copy(update={"features": ["log_return"]}), frames, {"INDEX": other})
    td = prep.data["STOCK0"]
    logp = np.log(index["adj_close"])
    day = index.index
    got = [td.x[int(td.dates.get_loc(day[i])), 1] for i in (137, 138, 139)]
    want = [logp[day[136]] - logp[day[135]]] * 2 + [logp[day[138]] - logp[day[136]]]
    assert got == pytest.approx(want, rel=1e-5)
    gaps = audit._calendar_gaps(cfg, {"STOCK0": f}, {"INDEX": holey})
    assert len(gaps) == 1 and gaps[0].what == "covariate INDEX" and "fill_limit=2" in gaps[0].detail
    # an adjusted series (adj_close differs from close) is not checked for splits
    adjusted = frames["STOCK0"].copy()
    adjusted.loc[adjusted.index[300] :, ["open", "high", "low", "close"]] /= 2.0
    assert not [s for s in audit._data_smells(cfg, {"S": adjusted}, {}) if s.check == "split"]


@pytest.mark.slow
def test_predict_refuses_a_covariate_staler_than_its_limit(tmp_path, index_cache):
    import shutil

    cache_dir, tickers = index_cache
    mine = tmp_path / "cache"
    shutil.copytree(cache_dir, mine)
    keys = _keys((mine, tickers), "INDEX") + [
        "--set",
        "train.epochs=1",
        "--set",
        "train.min_steps=5",
    ]
    run = tmp_path / "run"
    invoke(["train", "--config", "quick", "--out", str(run), *keys])
    assert len(json.loads(invoke(["predict", "--run", str(run), "--json"]).output)) == 3
    # the index stops updating ten bars before the tickers' last bar
    pd.read_parquet(mine / "INDEX.parquet").iloc[:-10].to_csv(tmp_path / "i.csv")
    invoke(
        [
            "fetch",
            "--from-csv",
            str(tmp_path / "i.csv"),
            "--ticker",
            "INDEX",
            "--data-dir",
            str(mine),
        ]
    )
    r = invoke(["predict", "--run", str(run)], code=2)
    assert "covariates: INDEX has no value within fill_limit=5 bars" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
