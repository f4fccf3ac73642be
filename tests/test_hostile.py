"""Your own data, end to end: ordinary files from elsewhere (a FRED download, a CSV with US
dates, New York timestamps across a DST change) through the command line, as a user runs it.

Each failure is one line on stderr with exit 2, no traceback; each success is checked on what
was read, not only on the exit code.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tsconv.cli import app
from tsconv.config import dump_yaml, load_config, shipped_configs, validate_config
from tsconv.data.sources import load_sample

runner = CliRunner()

# The shipped quick config made tiny: two years of bars, one cheap epoch.
TINY = [
    "data.start=2011-01-01",
    "window=16",
    "model.channels=4",
    "model.layers=2",
    "train.epochs=1",
    "train.min_steps=0",
    "train.device=cpu",
    "train.threads=1",
]


def sets(*keys: str) -> list[str]:
    return [a for k in keys for a in ("--set", k)]


def invoke(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def one_line_error(args: list[str], *fragments: str) -> str:
    result = invoke(*args, code=2)
    text = result.stderr.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def msft_bars() -> pd.DataFrame:
    return load_sample(["MSFT"])["MSFT"].loc["2011-01-01":]


def write_yahoo_csv(path: Path, bars: pd.DataFrame, dates: list[str]) -> Path:
    """Bars as Yahoo Finance's CSV download writes them, with the dates given."""
    table = pd.DataFrame(
        {
            "Date": dates,
            "Open": bars["open"].to_numpy(),
            "High": bars["high"].to_numpy(),
            "Low": bars["low"].to_numpy(),
            "Close": bars["close"].to_numpy(),
            "Adj Close": bars["adj_close"].to_numpy(),
            "Volume": bars["volume"].to_numpy().astype(int),
        }
    )
    table.to_csv(path, index=False)
    return path


def write_fred_csv(
    path: Path, header: str = "observation_date", bad: str | None = None, start: str = "2010-12-01"
) -> Path:
    """A FRED download of VIXCLS: every weekday, `.` where there is no value (holidays)."""
    days = pd.bdate_range(start, "2013-12-31")
    level = 20 + np.cumsum(np.random.default_rng(0).normal(0, 0.3, len(days)))
    cells = [f"{v:.2f}" for v in level]
    for i in range(3, len(cells), 40):
        cells[i] = "."
    if bad is not None:
        cells[10] = bad
    pd.DataFrame({header: days.strftime("%Y-%m-%d"), "VIXCLS": cells}).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- covariate files


def test_a_fred_file_is_a_covariate_and_its_run_reloads(tmp_path, monkeypatch):
    """FRED's `.` is a missing value; the run's saved config, which names the file, reloads
    for predict and as a --config."""
    monkeypatch.chdir(tmp_path)
    write_fred_csv(tmp_path / "vix.csv")
    covariate = "covariates=[{file: vix.csv, columns: [VIXCLS]}]"
    invoke(
        "train",
        "--config",
        "quick",
        "--out",
        "runs/x",
        *sets(*TINY, "data.tickers=[MSFT]", covariate),
    )
    saved = yaml.safe_load((tmp_path / "runs/x/config.yaml").read_text())
    assert saved["covariates"][0]["file"] == "vix.csv"
    rows = json.loads(invoke("predict", "--run", "runs/x", "--json").output)
    assert [r["ticker"] for r in rows] == ["MSFT"]
    invoke("train", "--config", "runs/x/config.yaml", "--out", "runs/y")


@pytest.mark.parametrize("header", ["DATE", "observation_date"])
def test_text_in_a_covariate_file_names_the_file_row_and_value(tmp_path, header):
    path = write_fred_csv(tmp_path / "vix.csv", header=header, bad="ND")
    covariate = f"covariates=[{{file: {path}, columns: [vixcls]}}]"
    one_line_error(
        ["train", "--config", "quick", "--out", str(tmp_path / "r"), *sets(*TINY, covariate)],
        f"{path}: row 12: non-numeric value 'ND' in column vixcls",
    )
    wrong = f"covariates=[{{file: {path}, columns: [vix]}}]"
    one_line_error(
        ["train", "--config", "quick", "--out", str(tmp_path / "r"), *sets(*TINY, wrong)],
        f"{path}: no column vix (its columns: vixcls)",
    )


COVARIATES = {
    "ticker": [{"ticker": "IBM"}],
    "ticker, features": [{"ticker": "IBM", "features": ["log_return", "vol_5"], "lag": 1}],
    "file": [{"file": "vix.csv", "columns": ["vixcls"], "known_at": "close"}],
}


@pytest.mark.parametrize("form", COVARIATES)
@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_a_saved_config_reloads_equal(name, form):
    """The way a run saves config.yaml (`dump_yaml`) reloads to the same config."""
    cfg = load_config(shipped_configs()[name])
    cfg = cfg.model_copy(
        update={"covariates": validate_config({"covariates": COVARIATES[form]}).covariates}
    )
    reloaded = validate_config(yaml.safe_load(dump_yaml(cfg)))
    assert reloaded == cfg
    assert dump_yaml(reloaded) == dump_yaml(cfg)


# --------------------------------------------------------------------------- one's own CSV


def test_an_imported_ticker_with_the_sample_source_says_what_to_set(tmp_path):
    bars = msft_bars()
    us_dates = [f"{d.month}/{d.day}/{d.year}" for d in bars.index]
    path = write_yahoo_csv(tmp_path / "sp500.csv", bars, us_dates)
    data = tmp_path / "d"
    invoke("fetch", "--from-csv", str(path), "--ticker", "SPX", "--data-dir", str(data))
    keys = [*TINY, "data.tickers=[SPX]", f"data.dir={data}"]
    out = str(tmp_path / "r")
    one_line_error(
        ["train", "--config", "quick", "--out", out, *sets(*keys)],
        "data.tickers: 'SPX' is not in the embedded sample",
        "--set data.source=cache",
    )
    invoke("train", "--config", "quick", "--out", out, *sets(*keys, "data.source=cache"))


def test_a_csv_source_takes_one_ticker_name(tmp_path):
    path = write_yahoo_csv(tmp_path / "sp500.csv", msft_bars(), list(msft_bars().index.date))
    keys = [*TINY, "data.source=csv", f"data.path={path}"]
    one_line_error(
        ["train", "--config", "quick", "--out", str(tmp_path / "r"), *sets(*keys)],
        "source 'csv' reads one ticker from data.path",
        "data.tickers=[SP500]",
    )
    cfg = validate_config({"data": {"source": "csv", "path": str(path)}})
    assert cfg.data.tickers == ["sp500"]
    assert validate_config(yaml.safe_load(dump_yaml(cfg))) == cfg


# --------------------------------------------------------------------------- dates


def imported_dates(tmp_path: Path, dates: list[str]) -> pd.DatetimeIndex:
    bars = msft_bars().iloc[: len(dates)]
    path = write_yahoo_csv(tmp_path / "in.csv", bars, dates)
    invoke("fetch", "--from-csv", str(path), "--ticker", "X", "--data-dir", str(tmp_path / "d"))
    return pd.read_parquet(tmp_path / "d/X.parquet").index


@pytest.mark.parametrize("day_first", [False, True])
def test_slash_dates_import_read_one_way_for_the_whole_file(tmp_path, day_first):
    days = msft_bars().index[:40]  # across a month end: day 31 cannot be a month
    written = [
        f"{d.day}/{d.month}/{d.year}" if day_first else f"{d.month}/{d.day}/{d.year}" for d in days
    ]
    assert list(imported_dates(tmp_path, written)) == list(days)


def test_new_york_timestamps_across_dst_are_one_zone(tmp_path):
    days = pd.bdate_range("2020-02-24", "2020-03-20")  # DST began on 2020-03-08
    closes = (days + pd.Timedelta(hours=16)).tz_localize("America/New_York")
    written = [t.isoformat(sep=" ") for t in closes]
    assert written[9].endswith("-05:00") and written[10].endswith("-04:00")
    assert list(imported_dates(tmp_path, written)) == list(days)


def test_offsets_no_one_zone_has_are_refused(tmp_path):
    days = pd.bdate_range("2020-02-24", "2020-03-20")
    written = [f"{d.date()} 16:00:00{'+09:00' if i % 2 else '-05:00'}" for i, d in enumerate(days)]
    path = write_yahoo_csv(tmp_path / "in.csv", msft_bars().iloc[: len(days)], written)
    one_line_error(
        ["fetch", "--from-csv", str(path), "--ticker", "X", "--data-dir", str(tmp_path / "d")],
        "column date mixes timezones (UTC offsets -05:00 and +09:00",
    )


# --------------------------------------------------------------------------- the cache


def test_a_failed_import_writes_nothing(tmp_path):
    bars = msft_bars()
    path = write_yahoo_csv(tmp_path / "in.csv", bars, list(bars.index.date))
    data = tmp_path / "d"
    invoke("fetch", "--from-csv", str(path), "--ticker", "OLD", "--data-dir", str(data))
    (data / "manifest.json").write_text("{not json")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    one_line_error(
        ["fetch", "--from-csv", str(path), "--ticker", "NEW", "--data-dir", str(data)],
        "manifest.json: unreadable cache manifest",
    )
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("data.start=2018-31-01", "data.start"),
        ("backtest.cost_bps=inf", "backtest.cost_bps"),
        ("train.weight_decay=inf", "train.weight_decay"),
        ("train.lr=nan", "train.lr"),
        ("model.dropout=.nan", "model.dropout"),
    ],
)
def test_an_impossible_value_is_one_line_naming_its_key(tmp_path, item, fragment):
    """A month 31 once gave a 40-line traceback (exit 1); inf and NaN ran on silently."""
    args = ["backtest", "--config", "quick", "--set", item, "--out", str(tmp_path / "bt")]
    one_line_error(args, fragment)
    assert not (tmp_path / "bt").exists()


def test_a_config_that_is_no_regular_file_is_refused_at_once(tmp_path):
    """`--config /dev/zero` read without bound; a huge file is no config either."""
    one_line_error(["backtest", "--config", "/dev/zero"], "/dev/zero", "not a regular file")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 21) + "\n")
    one_line_error(["backtest", "--config", str(big)], "big.yaml", "bytes")


# --------------------------------------------------------------------------- what a run leaves out

# folds of 100 bars after 100 training bars: on 2011-2013, five folds without a covariate
SHORT_FOLDS = ["backtest.train_span=100", "backtest.test_span=100"]


def backtest_outputs(folder: Path) -> tuple[dict, str]:
    """metrics.json and the report's header (before its first section)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    header = (folder / "report.html").read_text().split("<h1>")[1].split("<section")[0]
    return metrics, header


def test_a_shorter_covariate_says_it_shortens_the_backtest(tmp_path, monkeypatch):
    """An index from 1999 with a VIX from 2014 once gave 2 folds instead of 17, and nothing
    said why: the covariate's start is every ticker's start."""
    monkeypatch.chdir(tmp_path)
    bars = msft_bars()
    path = write_yahoo_csv(
        tmp_path / "sp500.csv", bars, [f"{d.month}/{d.day}/{d.year}" for d in bars.index]
    )
    invoke("fetch", "--from-csv", str(path), "--ticker", "SPX", "--data-dir", "data")
    write_fred_csv(tmp_path / "vix.csv", start="2012-01-03")
    keys = [*TINY, *SHORT_FOLDS, "data.source=cache", "data.tickers=[SPX]"]
    covariate = "covariates=[{file: vix.csv, columns: [VIXCLS]}]"
    result = invoke("backtest", "--config", "quick", "--out", "bt", *sets(*keys, covariate))
    # next_open: the value dated 2012-01-03 is first usable on the next bar
    line = "history starts 2012-01-04: covariate vix starts there (SPX's own bars start 2011-01-03)"
    assert f"warning: {line}" in result.stderr
    metrics, header = backtest_outputs(tmp_path / "bt")
    assert metrics["warnings"] == [line] and metrics["folds"] == 2
    assert metrics["first_date"] >= "2012-01-04"
    assert f"<b>Warning:</b> {html.escape(line)}" in header
    assert "Covariates: vix (VIXCLS from vix.csv, known at next open)." in header
    # without the covariate: the whole history, and nothing to warn about
    plain = invoke("backtest", "--config", "quick", "--out", "plain", *sets(*keys))
    timing = plain.stdout.splitlines()[-2:]  # once one line of ~130 columns
    assert timing[0].startswith("5 folds in ") and timing[1].endswith("-> plain/report.html")
    assert max(len(line) for line in timing) <= 80
    metrics, header = backtest_outputs(tmp_path / "plain")
    assert metrics["folds"] == 5 and metrics["warnings"] == [] and metrics["left_out"] == {}
    assert "Warning" not in header and "Covariates" not in header


def test_a_ticker_that_takes_no_part_is_named_with_the_reason(tmp_path):
    """FB (196 bars from 2012-05-18) was dropped from a long_short panel without a word: no
    fold had enough of its bars to train on."""
    tickers = ["AAPL", "IBM", "MSFT", "GOOG", "FB"]
    keys = [*TINY, "backtest.train_span=300", "backtest.test_span=250"]
    keys += [f"data.tickers=[{','.join(tickers)}]", "backtest.portfolio=long_short"]
    result = invoke("backtest", "--config", "quick", "--out", str(tmp_path / "bt"), *sets(*keys))
    metrics, header = backtest_outputs(tmp_path / "bt")
    assert metrics["tickers"] == ["AAPL", "GOOG", "IBM", "MSFT"]
    why = metrics["left_out"]["FB"]
    assert why.startswith("176 usable bars, 2012-06-18 to 2013-03-01, and no fold testing them")
    assert "had more than 0 of them to train on" in why and "window=16" in why
    line = f"FB took no part: {why}"
    assert metrics["warnings"] == [line]
    assert f"warning: {line}" in result.stderr
    assert f"<b>Warning:</b> {html.escape(line)}" in header


def test_a_thousandfold_jump_is_an_audit_smell_and_a_backtest_warning(tmp_path):
    """Prices quoted in thousands until mid-2012, then in dollars: one bar moves x1000, every
    return, feature and P&L across it is wrong, and neither command said so."""
    bars = msft_bars().copy()
    early = bars.index < "2012-06-01"
    prices = ["open", "high", "low", "close", "adj_close"]
    bars.loc[early, prices] = bars.loc[early, prices] / 1000
    path = write_yahoo_csv(tmp_path / "x.csv", bars, list(bars.index.date))
    data = tmp_path / "d"
    invoke("fetch", "--from-csv", str(path), "--ticker", "X", "--data-dir", str(data))
    keys = [*TINY, *SHORT_FOLDS, "data.source=cache", "data.tickers=[X]", f"data.dir={data}"]
    adj = msft_bars()["adj_close"]
    i = adj.index.get_loc(pd.Timestamp("2012-06-01"))
    ratio = 1000 * adj.iloc[i] / adj.iloc[i - 1]  # and the day's own move
    words = f"price x{ratio:.4g} in one bar: units changed (cents and dollars, thousands)"
    audit = invoke(
        "audit", "--config", "quick", "--out", str(tmp_path / "a.json"), *sets(*keys), code=4
    )
    assert f"smell: adj_close: X 2012-06-01: {words}" in audit.stdout
    report = json.loads((tmp_path / "a.json").read_text())
    assert [f["check"] for f in report["findings"]] == ["jump"]
    result = invoke("backtest", "--config", "quick", "--out", str(tmp_path / "bt"), *sets(*keys))
    line = f"X 2012-06-01: {words} or an unadjusted split? (tsconv audit checks the data)"
    assert f"warning: {line}" in result.stderr
    metrics, header = backtest_outputs(tmp_path / "bt")
    assert metrics["warnings"] == [line]
    assert f"<b>Warning:</b> {html.escape(line)}" in header


# --------------------------------------------------------------------------- 80 columns


@pytest.mark.parametrize(("columns", "width"), [(None, 80), ("100", 100)])
def test_piped_output_wraps_where_columns_says_else_at_80(columns, width):
    """Piped to a file, the verdict was wrapped at a fixed 120 columns."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env |= {"COLUMNS": columns} if columns else {}
    code = "from tsconv.cli import out; print(out.width)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == str(width), done.stderr


def test_config_list_fits_80_columns_and_says_what_each_suits():
    lines = invoke("config", "list").stdout.splitlines()
    assert len(lines) == len(shipped_configs()) and max(len(line) for line in lines) < 80
    assert any(line.startswith("quick") and "Start here" in line for line in lines)


# --------------------------------------------------------------------------- misleading words


def test_a_backtest_start_after_the_data_names_backtest_start(tmp_path):
    """It said "lower train_span or use more data"."""
    text = one_line_error(
        ["backtest", "--config", "quick", "--out", str(tmp_path / "bt")]
        + sets(*TINY, "data.tickers=[MSFT]", "backtest.start=2020-01-02"),
        "backtest.start: 2020-01-02 is after the last usable test date, 2013-",
        "set an earlier start",
    )
    assert "train_span" not in text


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("data.start=2020-01-02", "data.start: 2020-01-02 is after MSFT's last bar (2013-"),
        ("data.end=1999-01-04", "data.end: 1999-01-04 is before MSFT's first bar (2000-03-01)"),
        ("data.end=2010-01-04", "data.start: 2011-01-01 is after data.end (2010-01-04)"),
    ],
)
def test_a_data_bound_past_the_bars_names_the_bound_and_the_bars(tmp_path, item, words):
    """It said "no bars of MSFT between 2020-01-02 and None"."""
    keys = [*TINY, "data.tickers=[MSFT]", item]
    if item == "data.end=1999-01-04":
        keys.remove("data.start=2011-01-01")
    text = one_line_error(
        ["train", "--config", "quick", "--out", str(tmp_path / "r"), *sets(*keys)], words
    )
    assert "None" not in text


def test_predict_given_the_model_file_asks_for_its_folder(tmp_path):
    """It said "no such run folder; train one with ... --out runs/x/model.pt"."""
    model = tmp_path / "runs" / "x" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    text = one_line_error(
        ["predict", "--run", str(model)],
        f"{model} is a file; --run takes the run folder that holds it: --run {model.parent}",
    )
    assert "--out" not in text


# --------------------------------------------------------------------------- Ray addresses


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it did a moment ago)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_backtest(tmp_path: Path, address: str) -> list[str]:
    keys = [*TINY, *SHORT_FOLDS, "data.tickers=[MSFT]"]
    return ["backtest", "--config", "quick", "--out", str(tmp_path / "bt"), *sets(*keys)] + [
        "--executor",
        "ray",
        "--ray-address",
        address,
    ]


def test_a_dead_ray_address_is_one_line_in_seconds(tmp_path):
    """Ray retried 127.0.0.1 on a closed port for 150 s and more, and then said the host's
    network address instead of 127.0.0.1."""
    port = closed_port()
    text = one_line_error(
        ray_backtest(tmp_path, f"127.0.0.1:{port}"),
        f"--ray-address (backtest.ray_address) 127.0.0.1:{port}: nothing answers at "
        f"127.0.0.1:{port} (connection refused)",
        "ray start --head",
    )
    assert "ray://" not in text
    assert not (tmp_path / "bt").exists()  # refused before anything is written


def test_a_ray_client_address_without_ray_client_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)  # `import grpc` raises ImportError
    one_line_error(
        ray_backtest(tmp_path, f"ray://127.0.0.1:{closed_port()}"),
        "a ray:// address needs Ray Client, which is not installed: pip install 'ray[client]'",
    )


def test_a_loopback_ray_address_keeps_ray_on_loopback(tmp_path, monkeypatch):
    """Given 127.0.0.1, Ray connected from the host's network address: tsconv asks for its
    local-only mode (set before Ray is imported), as for a cluster it starts itself."""
    import socket

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # stops right after the address is checked
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        result = invoke(*ray_backtest(tmp_path, f"127.0.0.1:{port}"), code=2)
    assert "pip install 'tsconv[ray]'" in result.stderr  # the address was fine
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("member 10/10", "epoch"),
        ("walk-forward", "fold 12/40 test 2012-01-03..2012-03-30"),
        ("sweep", "trial 19: r2_oos -0.012 (best 0.004)"),
    ],
)
def test_the_progress_bar_keeps_its_clocks_in_80_columns(name, words):
    """The train bar's words (losses, learning rate, windows a second) cut both clocks to
    `0:0...` in 80 columns."""
    import io
    import re

    from rich.console import Console

    from tsconv.report.progress import epoch_words, progress_bar

    if words == "epoch":
        words = epoch_words(
            {"epoch": 120, "train_loss": 1.23456, "val_loss": 0.98765, "lr": 1e-3}
            | {"samples_per_s": 123456.0}
        )
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    progress = progress_bar(console)
    progress.add_task(name, total=10, completed=3, info=words)
    console.print(progress.get_renderable())  # one frame, as the live display draws it
    (line,) = console.file.getvalue().splitlines()
    assert words in line and "…" not in line and len(line) <= 80, line
    assert len(re.findall(r"\d:\d\d:\d\d", line)) == 1 and "-:--:--" in line, line
