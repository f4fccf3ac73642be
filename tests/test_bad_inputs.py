"""The fault matrix through the CLI: one line naming file/key/row, exit 2 (user) or 1
(environment), no traceback, no partial output, existing files untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import ohlcv_from_returns, random_walk_returns
from tsconv.cli import app

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs/quick.yaml")
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output  # one line, last
    for f in fragments:
        assert f in errors[0], errors[0]


def test_version_and_help_list_the_commands():
    assert run("--version").output.strip().startswith("tsconv 0.")
    help_text = run("--help").output
    for cmd in ["fetch", "train", "backtest", "predict"]:
        assert cmd in help_text


CONFIG_CASES = [
    ("not: [yaml", "not valid YAML"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("trian: {epochs: 1}\n", "trian: unknown key; did you mean train?"),
    (
        "train: {epochs: 1, learning_rate: 0.1}\n",
        "train.learning_rate: unknown key; did you mean train.lr?",
    ),
    ("model: {kernel_size: 0}\n", "model.kernel_size"),
    ("window: -3\n", "window: Input should be greater than or equal to 2"),
    ("backtest: {test_span: 0}\n", "backtest.test_span"),
    (
        "target: {horizon: 3}\nbacktest: {gap: 0}\n",
        "backtest.gap=0 is smaller than target.horizon-1=2",
    ),
    ("seed: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    ("data: {tickers: [NOPE]}\ntrain: {epochs: 1}\n", "'NOPE' is not in the embedded sample"),
]


@pytest.mark.parametrize("text,fragment", CONFIG_CASES, ids=[f[:30] for _, f in CONFIG_CASES])
@pytest.mark.parametrize("command", ["train", "backtest"])
def test_bad_configs(tmp_path, command, text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    result = run(command, "--config", str(cfg), "--out", str(out))
    assert_user_error(result, 2, fragment)
    assert not out.exists() or not any(out.rglob("model.pt"))
    assert not (Path.cwd() / "pwned").exists()


def test_missing_config_file(tmp_path):
    assert_user_error(
        run("train", "--config", str(tmp_path / "nope.yaml")), 2, "config file not found"
    )


def _csv_config(tmp_path: Path, csv_text: str) -> str:
    data = tmp_path / "prices.csv"
    data.write_text(csv_text)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{source: csv, path: {data}, tickers: [X]}}\nwindow: 16\ntrain: {{epochs: 1}}\n"
    )
    return str(cfg)


def _good_csv(n: int = 300) -> str:
    return ohlcv_from_returns(random_walk_returns(n)).to_csv()


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda t: "", "empty file"),
        (lambda t: t.splitlines()[0] + "\n", "no data rows"),
        (lambda t: t.replace("adj_close,volume", "adj_close,vol"), "missing column(s) volume"),
        (
            lambda t: t.replace(t.splitlines()[5].split(",")[4], "oops", 1),
            "row 6: non-numeric value 'oops' in column close",
        ),
        (lambda t: "\n".join(t.splitlines()[:40]) + "\n", "training bars, not more than window=16"),
        (lambda t: "\n".join(t.splitlines()[:30]) + "\n", "usable bars after feature warm-up"),
    ],
)
def test_bad_data_files_through_train(tmp_path, mutate, fragment):
    cfg = _csv_config(tmp_path, mutate(_good_csv()))
    out = tmp_path / "run"
    assert_user_error(
        run("train", "--config", cfg, "--out", str(out)),
        2,
        "prices.csv" if "bars" not in fragment else "X:",
        fragment,
    )
    assert not (out / "model.pt").exists()


def test_series_too_short_for_one_fold(tmp_path):
    cfg = _csv_config(tmp_path, _good_csv(300))
    assert_user_error(
        run("backtest", "--config", cfg, "--out", str(tmp_path / "bt")),
        2,
        "no test bars after backtest.train_span=1000",
    )


def test_csv_path_outside_project_is_used_and_named(tmp_path):
    cfg = _csv_config(tmp_path, _good_csv(300))
    result = run("train", "--config", cfg, "--out", str(tmp_path / "ok"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ok/model.pt").exists()


@pytest.mark.parametrize("ticker", ["../x", "a/b", "x" * 300, "a\0b"])
def test_hostile_ticker_names(tmp_path, ticker):
    assert_user_error(run("fetch", ticker, "--data-dir", str(tmp_path)), 2, "not a valid symbol")
    assert not any(tmp_path.iterdir())


def test_offline_fetch_keeps_cache_byte_for_byte(tmp_path, monkeypatch):
    run("fetch", "--sample", "--data-dir", str(tmp_path), "MSFT")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    import tsconv.data.sources as sources

    def offline(**kw):
        raise OSError("Failed to resolve 'query2.finance.yahoo.com'")

    monkeypatch.setattr(sources, "yahoo_download_quietly", offline)
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    result = run("fetch", "MSFT", "--data-dir", str(tmp_path))
    assert_user_error(result, 1, "could not reach Yahoo Finance for MSFT: OSError", "--sample")
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert before == after and ".lock" not in after


def _noisy_yfinance(monkeypatch):
    """A yfinance whose download does what the real one does offline: log errors, print,
    warn, and return an empty frame."""
    import logging
    import sys
    import types
    import warnings

    import pandas as pd

    def download(**kw):
        for _ in range(20):
            logging.getLogger("yfinance").error("Failed to get ticker reason: curl: (6)")
        print("1 Failed download:")
        sys.stderr.write("['MSFT']: DNSError\n")
        warnings.warn("data.sort_index(level=0, axis=1, inplace=True)", FutureWarning, stacklevel=1)
        return pd.DataFrame()

    fake = types.ModuleType("yfinance")
    fake.download = download
    monkeypatch.setitem(sys.modules, "yfinance", fake)
    import tsconv.data.sources as sources

    monkeypatch.setattr(sources.time, "sleep", lambda s: None)


def test_offline_fetch_prints_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capfd):
    _noisy_yfinance(monkeypatch)
    fresh = tmp_path / "data"
    result = run("fetch", "MSFT", "--data-dir", str(fresh))
    assert_user_error(result, 1, "could not reach Yahoo Finance for MSFT", "--from-csv")
    assert len(result.output.strip().splitlines()) == 1
    captured = capfd.readouterr()
    assert "Failed" not in captured.out + captured.err  # nothing past the CLI runner either
    assert not fresh.exists()  # the folder it created for the lock is gone again


def test_fetch_verbose_shows_the_library_messages(tmp_path, monkeypatch):
    _noisy_yfinance(monkeypatch)
    monkeypatch.delenv("TSCONV_VERBOSE", raising=False)
    with pytest.warns(FutureWarning):
        result = run("fetch", "MSFT", "--verbose", "--data-dir", str(tmp_path / "d"))
    monkeypatch.delenv("TSCONV_VERBOSE", raising=False)
    assert result.exit_code == 1 and "1 Failed download:" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        result = run(
            "train", "--config", QUICK, "--out", str(ro / "run"), "--set", "train.epochs=1"
        )
        assert_user_error(result, 1, "cannot write")
    finally:
        ro.chmod(0o700)


def test_output_path_through_a_file_is_an_environment_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    result = run(
        "train", "--config", QUICK, "--out", str(blocker / "run"), "--set", "train.epochs=1"
    )
    assert_user_error(result, 1, "cannot write", "file.txt")
    assert blocker.read_text() == "x"


def test_unwritable_output_is_an_environment_error_without_partial_files(tmp_path, monkeypatch):
    """Simulates a full disk: the rename fails, nothing half-written is left behind."""
    import tsconv.runfolder as tio

    real = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("model.pt"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(tio.os, "replace", full_disk)
    out = tmp_path / "run"
    result = run(
        "train",
        "--config",
        QUICK,
        "--out",
        str(out),
        "--set",
        "train.epochs=1",
        "--set",
        "data.tickers=[IBM]",
    )
    assert_user_error(result, 1, "cannot write", "model.pt", "No space left on device")
    assert not (out / "model.pt").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_import_csv_through_fetch(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(_good_csv(50))
    result = run(
        "fetch", "--from-csv", str(src), "--ticker", "MINE", "--data-dir", str(tmp_path / "d")
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d/MINE.parquet").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open\n2020-01-01,1\n")
    assert_user_error(
        run("fetch", "--from-csv", str(bad), "--ticker", "B", "--data-dir", str(tmp_path / "d")),
        2,
        "missing column(s) high, low, close, volume",
    )
    assert not (tmp_path / "d/B.parquet").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["fetch", "--from-csv", "prices.csv"], "--from-csv needs --ticker NAME"),
        (["fetch"], "name at least one ticker"),
        (["train"], "--config is required"),
        (["backtest"], "--config is required"),
        (["predict", "--run", "nowhere"], "nowhere: no such run folder; train one with"),
        (["predict", "--run", "bt"], "bt: a backtest folder (walk-forward folds keep no model)"),
        (["predict", "--run", "half"], "an unfinished training run; finish it with tsconv train"),
        (["predict", "--run", "unfinished"], "unfinished: not a run folder (no model.pt)"),
        (["train", "--resume", "nowhere"], "not a run folder"),
        (["train", "--resume", "unfinished"], "no state.pt to resume from"),
        (["backtest", "--resume", "unfinished"], "not an interrupted backtest"),
        (["backtest", "--config", QUICK, "--set", "train.epoch=3"], "--set train.epoch=3: "),
    ],
)
def test_command_line_misuse_is_bad_input(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unfinished").mkdir()
    shutil.copy(QUICK, tmp_path / "unfinished/config.yaml")  # a run folder without state.pt
    (tmp_path / "bt" / "folds").mkdir(parents=True)  # what tsconv backtest writes
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "state.pt").write_bytes(b"")
    assert_user_error(run(*args), 2, fragment)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(tmp_path, umask, mode):
    """Atomic writes go through a private temporary file; the result gets the mode a plain
    write would (0666 less the umask), not the temporary file's 0600."""
    from tsconv import runfolder as tio

    old = os.umask(umask)
    try:
        tio.write_text(tmp_path / "a" / "out.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "out.txt").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["predict", "runs/x"],
            "error: Missing option '--run'. (see python -m tsconv predict --help)",
        ),
        (
            ["trian"],
            "error: No such command 'trian'. Did you mean 'train'? (see python -m tsconv --help)",
        ),
    ],
)
def test_usage_errors_of_the_real_command_are_one_line(tmp_path, args, line):
    """Click's usage errors, which CliRunner shows as typer's box, are one line from `tsconv`."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "tsconv", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [line]
