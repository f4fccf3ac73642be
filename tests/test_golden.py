"""Golden outputs: `make run`'s four commands, a three-trial sweep and an audit on the sample give
the bytes recorded in tests/golden/outputs.json.

A guard for changes that must not change any output (a re-housing, a refactor, a speed path).
Timings are the only values left out: the `*seconds` columns of folds.csv and metrics.csv, and
the `samples_per_s` column. Every run fixes `train.threads=1`, the contract for serial bytes on
any CPU (README, "Reproducible"). After a change that is meant to change outputs, record anew:

    TSCONV_GOLDEN=record .venv/bin/python -m pytest tests/test_golden.py

and say in the commit why the outputs moved.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
THREADS = ["--set", "train.threads=1"]

# (label, command line); the run folders live under the test's temporary directory
COMMANDS = [
    ("fetch", ["fetch", "--sample", "--data-dir", "{d}/data"]),
    ("train", ["train", "--config", "quick", "--out", "{d}/runs/quick", *THREADS]),
    ("predict", ["predict", "--run", "{d}/runs/quick"]),
    ("backtest", ["backtest", "--config", "quick", "--out", "{d}/runs/quick-bt", *THREADS]),
    (
        "sweep",
        ["sweep", "--config", "quick", "--space", "quick", "--trials", "3", "--workers", "1"]
        + ["--out", "{d}/runs/sweep", *THREADS],
    ),
    ("audit", ["audit", "--config", "quick", "--out", "{d}/runs/audit.json", *THREADS]),
]

# the files compared, relative to the temporary directory
FILES = [
    "runs/quick/config.yaml",
    "runs/quick/summary.json",
    "runs/quick/metrics.csv",
    "runs/quick/model.pt",
    "runs/quick-bt/config.yaml",
    "runs/quick-bt/metrics.json",
    "runs/quick-bt/predictions.parquet",
    "runs/quick-bt/returns.parquet",
    "runs/quick-bt/folds.csv",
    "runs/quick-bt/report.html",
    "runs/sweep/sweep.json",
    "runs/sweep/leaderboard.csv",
    "runs/sweep/trials.parquet",
    "runs/sweep/report.html",
    "runs/sweep/holdout/metrics.json",
    "runs/sweep/holdout/predictions.parquet",
    "runs/audit.json",
]

TIMING_COLUMNS = ("seconds", "samples_per_s")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes; CSV files without their timing columns."""
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame = frame[[c for c in frame.columns if not c.endswith(TIMING_COLUMNS)]]
        data = frame.to_csv(index=False).encode()
    else:
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def run_all(root: Path) -> dict[str, str]:
    """Each command in a process of its own, as a user runs them: nothing an earlier test left
    in this process (a thread count, a module's state) can reach the bytes."""
    env = {**os.environ, "COLUMNS": "100"}  # the terminal output's wrapping, as recorded
    out: dict[str, str] = {}
    for label, args in COMMANDS:
        result = subprocess.run(
            [sys.executable, "-m", "tsconv", *(a.format(d=root) for a in args)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{label}: {result.stdout}{result.stderr}"
        if label == "predict":
            out["predict (terminal)"] = hashlib.sha256(result.stdout.encode()).hexdigest()
    for name in FILES:
        out[name] = file_digest(root / name)
    return out


@pytest.mark.slow
def test_outputs_are_the_recorded_bytes(tmp_path):
    digests = run_all(tmp_path)
    if os.environ.get("TSCONV_GOLDEN") == "record":
        GOLDEN.parent.mkdir(exist_ok=True)
        record = {"torch": torch.__version__, "machine": platform.machine(), "files": digests}
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
        return
    golden = json.loads(GOLDEN.read_text())
    changed = [k for k in golden["files"] if digests.get(k) != golden["files"][k]]
    assert not changed, (
        f"outputs changed: {changed} (recorded with torch {golden['torch']}, this is "
        f"{torch.__version__}); see this file's docstring to record anew"
    )
