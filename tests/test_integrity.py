"""Run folders keep their integrity through the command line (issue 31): one run at a time in a
folder, no `complete: true` over a mix of two runs' files, --resume keeps only files that
still have the bytes the run recorded, and a new run replaces a finished one only with
--overwrite.

Every refusal is one line on stderr with exit 2, no traceback; each run that goes ahead is
checked on the files it leaves, not only on its exit code.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import tsconv.engine.checkpoint as checkpoint
import tsconv.recipes.backtest as backtest_recipe
import tsconv.recipes.train as train_recipe
import tsconv.recipes.trials as trials_recipe
from tsconv.cli import app
from tsconv.errors import OutputError
from tsconv.runfolder import RunFolder, sha256

runner = CliRunner()

# The shipped quick config made tiny: one ticker, a small model, one short epoch.
TINY = [
    "data.tickers=[MSFT]",
    "window=16",
    "model.channels=4",
    "model.layers=2",
    "train.epochs=2",
    "train.min_steps=0",
    "train.device=cpu",
    "train.threads=1",
]
BACKTEST = [*TINY, "train.epochs=1", "backtest.test_span=800"]  # 3 folds
LOCKED = "another tsconv run is writing into this folder now"


def sets(*keys: str) -> list[str]:
    return [a for k in keys for a in ("--set", k)]


def invoke(*args: str, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def refused(args: list, *fragments: str) -> str:
    return one_line_error(runner.invoke(app, [str(a) for a in args]), *fragments)


def backtest(out: Path, *extra: str, code: int = 0):
    return invoke(
        "backtest", "--config", "quick", "--out", out, *sets(*BACKTEST), *extra, code=code
    )


def train(out: Path, *extra: str, code: int = 0):
    return invoke("train", "--config", "quick", "--out", out, *sets(*TINY), *extra, code=code)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def assert_files_as_recorded(folder: Path) -> dict:
    """Every file the manifest lists has the bytes it records."""
    m = manifest(folder)
    for name, entry in m["files"].items():
        assert sha256(folder / name) == entry["sha256"], name
    return m


def copy(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


# --------------------------------------------------------------------------- the runs reused


@pytest.fixture(scope="module")
def finished_backtest(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bt") / "bt"
    backtest(out)
    return out


@pytest.fixture(scope="module")
def interrupted_backtest(tmp_path_factory) -> Path:
    """A backtest stopped (as by Ctrl-C) after its first fold."""
    out = tmp_path_factory.mktemp("cut") / "bt"
    real, calls = backtest_recipe.run_fold, []

    def stop_at_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backtest_recipe, "run_fold", stop_at_the_second)
        backtest(out, code=130)
    return out


@pytest.fixture(scope="module")
def finished_training(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    train(out)
    return out


@pytest.fixture(scope="module")
def interrupted_training(tmp_path_factory) -> Path:
    """A training run stopped (as by Ctrl-C) once its first epoch is saved."""
    out = tmp_path_factory.mktemp("cut") / "run"
    real = train_recipe.fit_span

    def stop_after_epoch_1(*a, on_epoch=None, **k):
        def save_then_stop(state):
            on_epoch(state)
            raise KeyboardInterrupt

        return real(*a, on_epoch=save_then_stop, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_recipe, "fit_span", stop_after_epoch_1)
        train(out, code=130)
    assert (out / "state.pt").exists() and not (out / "model.pt").exists()
    return out


SPACE = {
    "sweep": {"sampler": "random", "trials": 2, "holdout": 0.3, "seed": 0},
    "space": {"train.lr": [0.001, 0.01]},
}


def sweep_args(space: Path, out: Path) -> list:
    return ["sweep", "--config", "quick", "--space", space, "--out", out, *sets(*BACKTEST)]


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory):
    """A sweep stopped (as by Ctrl-C) after its first trial; while that trial ran, a `sweep
    --resume` of the same folder was started (its result is returned with the folder)."""
    root = tmp_path_factory.mktemp("sweep")
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = root / "sweep"
    real, second = trials_recipe.run_trial, []

    def first_trial_only(data, task):
        if second:  # (the second sweep, were it let in, would come here too)
            raise KeyboardInterrupt
        second.append(runner.invoke(app, ["sweep", "--resume", str(out)]))
        return real(data, task)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trials_recipe, "run_trial", first_trial_only)
        invoke(*sweep_args(space, out), code=130)
    assert manifest(out / "trials/000")["complete"] and not (out / "trials/001").exists()
    return out, second[0]


# --------------------------------------------------------------------------- one run at a time


def test_a_second_backtest_into_a_busy_folder_stops_at_once_and_mixes_nothing(tmp_path):
    """Two backtests into one --out (another seed and cost) would interleave their folds
    under one manifest; the second is refused while the first runs, which ends as alone."""
    out = tmp_path / "bt"
    real, second = backtest_recipe.run_fold, []

    def run_fold_meanwhile(*a, **k):
        if not second:
            args = ["backtest", "--config", "quick", "--out", str(out)]
            args += sets(*BACKTEST, "seed=1", "backtest.cost_bps=50")
            second.append(runner.invoke(app, args))
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backtest_recipe, "run_fold", run_fold_meanwhile)
        backtest(out)
    one_line_error(second[0], str(out), LOCKED)
    assert manifest(out)["complete"]
    assert_files_as_recorded(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 0
    assert json.loads((out / "folds/config.json").read_text())["backtest"]["cost_bps"] == 5
    assert pd.read_csv(out / "folds.csv")["fold"].tolist() == [0, 1, 2]


def test_a_second_training_run_into_a_busy_folder_stops_at_once(tmp_path):
    out = tmp_path / "run"
    real, second = train_recipe.fit_span, []

    def fit_meanwhile(*a, **k):
        if not second:  # (the second run, were it let in, would come here too)
            second.append(runner.invoke(app, ["train", "--config", "quick", "--out", str(out)]))
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_recipe, "fit_span", fit_meanwhile)
        train(out, "--set", "train.lr=0.002")
    one_line_error(second[0], str(out), LOCKED)
    assert_files_as_recorded(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 0.002


def test_two_sweep_resumes_at_once_do_not_run_a_trial_twice(interrupted_sweep):
    """The second `sweep --resume` was started while the first ran trial 000: it stops at
    once instead of training trial 000 a second time into the same folder."""
    out, second = interrupted_sweep
    one_line_error(second, str(out), LOCKED)


def test_the_lock_goes_with_a_killed_run(tmp_path):
    """An OS lock: held while the process lives, released when it is killed (no stale lock
    file to delete by hand)."""
    out = tmp_path / "bt"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from tsconv.runfolder import RunFolder, locked\n"
            "with locked(RunFolder(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(backtest(out, code=2), LOCKED)
    finally:
        holder.kill()
        holder.wait()
    backtest(out)
    assert manifest(out)["complete"]


# --------------------------------------------------------------------------- finished runs


def test_a_new_run_replaces_a_finished_one_only_with_overwrite(tmp_path, finished_backtest):
    out = copy(finished_backtest, tmp_path)
    before = (out / "metrics.json").read_bytes()
    refused(
        ["backtest", "--config", "quick", "--out", out, *sets(*BACKTEST)],
        f"{out} already holds a finished backtest: --overwrite replaces it",
    )
    assert (out / "metrics.json").read_bytes() == before
    backtest(out, "--overwrite", "--set", "backtest.cost_bps=0")
    assert (out / "metrics.json").read_bytes() != before
    model = json.loads((out / "metrics.json").read_text())["trading"]["prediction"]
    assert model["cost_drag_annual"] == 0
    assert manifest(out)["complete"]
    assert_files_as_recorded(out)


def test_a_new_training_run_replaces_a_finished_one_only_with_overwrite(
    tmp_path, finished_training
):
    out = copy(finished_training, tmp_path)
    before = (out / "model.pt").read_bytes()
    refused(
        ["train", "--config", "quick", "--out", out, *sets(*TINY)],
        f"{out} already holds a finished training run: --overwrite replaces it",
    )
    assert (out / "model.pt").read_bytes() == before
    train(out, "--overwrite", "--set", "train.lr=0.002")
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 0.002
    assert manifest(out)["complete"] and not (out / "state.pt").exists()


def test_a_new_run_into_an_unfinished_one_says_how_to_continue_it(tmp_path, interrupted_backtest):
    out = copy(interrupted_backtest, tmp_path)
    refused(
        ["backtest", "--config", "quick", "--out", out, *sets(*BACKTEST)],
        f"{out} already holds an unfinished backtest: `tsconv backtest --resume {out}` "
        "continues it, --overwrite replaces it",
    )
    refused(["backtest", "--resume", out, "--overwrite"], "--overwrite replaces it: give one")


def test_a_failed_rerun_leaves_no_complete_manifest_over_two_runs_files(
    tmp_path, finished_backtest, monkeypatch
):
    """The disk fills while a re-run writes its predictions: the old manifest must not go on
    saying `complete: true` over the new folds and the old predictions and metrics."""
    out = copy(finished_backtest, tmp_path)
    real = pd.DataFrame.to_parquet

    def full_disk(frame, path, *a, **k):
        if Path(path).name.startswith(".predictions.parquet"):
            raise OSError(28, "No space left on device")
        return real(frame, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    r = backtest(out, "--overwrite", "--set", "backtest.cost_bps=20", code=1)
    assert "No space left on device" in r.stderr
    m = assert_files_as_recorded(out)
    assert m["complete"] is False
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()
    assert json.loads((out / "folds/config.json").read_text())["backtest"]["cost_bps"] == 20
    # the new run's folds are recorded: --resume finishes it with them alone
    monkeypatch.undo()  # space freed
    r = invoke("backtest", "--resume", out)
    assert "3 folds (3 kept from the interrupted run, 0 run now)" in r.output
    assert manifest(out)["complete"]
    assert_files_as_recorded(out)


def test_a_failed_training_rerun_leaves_no_finished_run(tmp_path, finished_training, monkeypatch):
    out = copy(finished_training, tmp_path)

    def full_disk(path, **kw):
        raise OutputError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    train(out, "--overwrite", code=1)
    assert manifest(out)["complete"] is False and not (out / "model.pt").exists()
    refused(["predict", "--run", out], "an unfinished training run")


# --------------------------------------------------------------------------- --resume checks


def test_resume_refuses_a_fold_edited_since_it_was_written(tmp_path, interrupted_backtest):
    """Fold 000 recorded with its sha256 as the run wrote it; edited so that every prediction
    is the realized return, a resume would report a perfect forecaster with exit 0."""
    out = copy(interrupted_backtest, tmp_path)
    recorded = manifest(out)
    assert recorded["complete"] is False and "folds/fold_000.parquet" in recorded["files"]
    fold = out / "folds/fold_000.parquet"
    preds = pd.read_parquet(fold)
    preds["prediction"] = preds["realized"]
    preds.to_parquet(fold, index=False)
    refused(["backtest", "--resume", out], f"{fold}: changed since the run wrote it")
    assert not (out / "metrics.json").exists()
    # the untouched folder resumes, keeping fold 000
    r = invoke("backtest", "--resume", copy(interrupted_backtest, tmp_path, "untouched"))
    assert "3 folds (1 kept from the interrupted run, 2 run now)" in r.output


def test_resume_refuses_an_edited_or_unrecorded_config(tmp_path, interrupted_backtest):
    out = copy(interrupted_backtest, tmp_path)
    stored = out / "folds/config.json"
    cfg = json.loads(stored.read_text())
    cfg["backtest"]["cost_bps"] = 0
    stored.write_text(json.dumps(cfg))
    refused(["backtest", "--resume", out], f"{stored}: changed since the run wrote it")
    (out / "manifest.json").unlink()
    refused(["backtest", "--resume", out], "no manifest.json", "--overwrite")


def test_resume_of_a_finished_backtest_is_refused(finished_backtest):
    """It used to say "3 folds (3 kept from the interrupted run ...)" and exit 0."""
    before = manifest(finished_backtest)
    refused(["backtest", "--resume", finished_backtest], "already finished; nothing to resume")
    assert manifest(finished_backtest) == before


@pytest.mark.parametrize("edit", ["lr", "channels", "truncated state"])
def test_training_resume_refuses_changed_files(tmp_path, interrupted_training, edit):
    """An edited lr would be recorded in the finished run but never used; edited channels
    do not fit the saved weights; a truncated state.pt is no state."""
    out = copy(interrupted_training, tmp_path)
    config, state = out / "config.yaml", out / "state.pt"
    if edit == "truncated state":
        state.write_bytes(state.read_bytes()[:1000])
        changed = state
    else:
        raw = yaml.safe_load(config.read_text())
        section, key, value = ("train", "lr", 0.5) if edit == "lr" else ("model", "channels", 8)
        raw[section][key] = value
        config.write_text(yaml.safe_dump(raw))
        changed = config
    r = refused(["train", "--resume", out], f"{changed}: changed since the run wrote it")
    assert "parameters" not in r  # refused before the model's banner
    assert not (out / "model.pt").exists()


def test_an_untouched_training_run_resumes(tmp_path, interrupted_training):
    out = copy(interrupted_training, tmp_path)
    invoke("train", "--resume", out)
    assert manifest(out)["complete"] and (out / "model.pt").exists()
    assert len(pd.read_csv(out / "metrics.csv")) == 2


def test_a_state_saved_for_another_config_is_refused(tmp_path, interrupted_training):
    """Beyond the manifest: state.pt names the config it was saved with."""
    out = copy(interrupted_training, tmp_path)
    payload = torch.load(out / "state.pt", weights_only=True)
    payload["config"]["train"]["lr"] = 0.5
    torch.save(payload, out / "state.pt")
    entry = manifest(out)
    entry["files"]["state.pt"]["sha256"] = sha256(out / "state.pt")
    (out / "manifest.json").write_text(json.dumps(entry))
    refused(["train", "--resume", out], "state.pt: saved by a run of another config")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "locked"])
def test_sweep_resume_on_a_damaged_or_locked_study_is_one_line(tmp_path, interrupted_sweep, damage):
    out = copy(interrupted_sweep[0], tmp_path)
    study = out / "study.db"
    content = study.read_bytes()
    holder = None
    if damage == "truncated":
        study.write_bytes(content[: len(content) // 3])
    elif damage == "garbage":
        study.write_bytes(bytes(range(256)) * 40)
    elif damage == "empty":
        study.write_bytes(b"")  # sqlite reads it as a new, empty database
    else:
        holder = sqlite3.connect(study, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # as another program writing it
    try:
        refused(["sweep", "--resume", out], f"{study}: not a readable sweep study")
    finally:
        if holder is not None:
            holder.close()
    assert not (out / "trials/001").exists()  # no trial ran


def test_sweep_resume_refuses_an_edited_space(tmp_path, interrupted_sweep):
    out = copy(interrupted_sweep[0], tmp_path)
    space = out / "space.yaml"
    space.write_text(space.read_text().replace("0.01", "0.02"))
    refused(["sweep", "--resume", out], f"{space}: changed since the run wrote it")


def test_sweep_resume_refuses_an_edited_finished_trial_before_running_any(
    tmp_path, interrupted_sweep
):
    """Trial 000 finished; its returns edited, the selection would rank it on made-up
    numbers. Refused before trial 001 runs, not after."""
    out = copy(interrupted_sweep[0], tmp_path)
    returns = out / "trials/000/returns.parquet"
    frame = pd.read_parquet(returns)
    frame["prediction"] = frame["prediction"].abs()
    frame.to_parquet(returns, index=False)
    refused(["sweep", "--resume", out], f"{returns}: changed since the run wrote it")
    assert not (out / "trials/001").exists()


def test_a_new_sweep_replaces_an_unfinished_one_only_with_overwrite(tmp_path, interrupted_sweep):
    out = copy(interrupted_sweep[0], tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    refused(sweep_args(space, out), f"{out} already holds an unfinished sweep")
    (out / "trials/007").mkdir()  # a trial of the old sweep the new one would not rerun
    (out / "trials/007/error.txt").write_text("old\n")

    def stop(data, task):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trials_recipe, "run_trial", stop)
        invoke(*sweep_args(space, out), "--overwrite", code=130)
    assert not (out / "trials").exists() and manifest(out)["complete"] is False
    assert set(manifest(out)["files"]) == {"config.yaml", "space.yaml", "versions.json"}


# --------------------------------------------------------------------------- predict


def test_predict_with_weights_of_another_shape_is_one_line(tmp_path, finished_training):
    out = copy(finished_training, tmp_path)
    payload = torch.load(out / "model.pt", weights_only=True)
    payload["config"]["model"]["channels"] = 8
    torch.save(payload, out / "model.pt")
    refused(["predict", "--run", out], f"{RunFolder(out).model}: its weights do not fit")
