"""Golden outputs: `make run`'s four commands, a three-trial sweep and an audit on the sample give
the bytes recorded in tests/golden/outputs.json.

A guard for changes that must not change any output (a re-housing, a refactor, a speed path).
Timings are the only values left out: the `*seconds` columns of folds.csv and metrics.csv, and
the `samples_per_s` column. Every run fixes `train.threads=1`, the contract for serial bytes on
any CPU (README, "Reproducible").

The bytes are recorded once per platform: torch's version, the machine and the CPU's vendor.
torch's products go to MKL, which runs its strict AVX2 path on every Intel CPU (tsconv sets
`MKL_CBWR`) but ignores that setting on AMD CPUs (docs/performance.md), so a trained network
ends a few ulps apart on the two, and every later byte follows. A platform with no record is
skipped, saying so. After a change that is meant to change outputs, record anew:

    TSCONV_GOLDEN=record .venv/bin/python -m pytest tests/test_golden.py

and say in the commit why the outputs moved. Recording keeps the other platforms' records
when this platform's bytes did not move (or it had none: a new CPU added) and drops them when
they did (their bytes are unknown until recorded on such a machine).
"""

from __future__ import annotations

import hashlib
import io
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
    """sha256 of a file's bytes; CSV files without their timing columns, and a model file
    without its `versions` record: that is the environment the run was made in (Python, numpy
    and pandas versions, the OS kernel's release), which differs between machines with the
    same torch and CPU while every weight and scaler stays the same (a kernel update once
    moved model.pt's bytes and nothing else)."""
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame = frame[[c for c in frame.columns if not c.endswith(TIMING_COLUMNS)]]
        data = frame.to_csv(index=False).encode()
    elif path.suffix == ".pt":
        saved = torch.load(path, map_location="cpu", weights_only=True)
        saved.pop("versions")
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        data = buffer.getvalue()
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


def cpu_vendor() -> str:
    """GenuineIntel, AuthenticAMD, ... (Linux's /proc/cpuinfo), else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def platform_key() -> str:
    return f"torch {torch.__version__}, {platform.machine()}, {cpu_vendor()}"


def recorded(records: dict[str, dict], key: str, digests: dict[str, str]) -> dict[str, dict]:
    """The records after recording `digests` for `key`: the others kept unless this
    platform's bytes moved."""
    moved = key in records and records[key] != digests
    return {**({} if moved else records), key: digests}


@pytest.mark.slow
def test_outputs_are_the_recorded_bytes(tmp_path):
    records = json.loads(GOLDEN.read_text())["platforms"] if GOLDEN.exists() else {}
    key, record = platform_key(), os.environ.get("TSCONV_GOLDEN") == "record"
    if not record and key not in records:
        pytest.skip(f"no golden bytes recorded for {key} (recorded: {', '.join(records)})")
    digests = run_all(tmp_path)
    if record:
        GOLDEN.parent.mkdir(exist_ok=True)
        body = {"platforms": recorded(records, key, digests)}
        GOLDEN.write_text(json.dumps(body, indent=1) + "\n")
        return
    changed = [k for k in records[key] if digests.get(k) != records[key][k]]
    assert not changed, (
        f"outputs changed: {changed} (recorded on {key}); see this file's docstring to record anew"
    )


def test_recording_keeps_other_platforms_only_while_the_bytes_stand():
    old = {"amd": {"a": "1"}, "intel": {"a": "1"}}
    assert recorded(old, "intel", {"a": "1"}) == old  # nothing moved: the AMD record stands
    assert recorded(old, "arm", {"a": "1"}) == {**old, "arm": {"a": "1"}}  # a new platform
    assert recorded(old, "intel", {"a": "2"}) == {"intel": {"a": "2"}}  # moved: AMD's stale


def test_a_model_file_digest_leaves_out_the_environment_and_keeps_every_weight(tmp_path):
    def saved(name: str, platform_name: str, weight: float) -> Path:
        path = tmp_path / f"{name}.pt"
        versions = {"torch": str(torch.__version__), "platform": platform_name}
        torch.save(
            {"format": "tsconv-model/1", "versions": versions, "w": torch.full((3,), weight)}, path
        )
        return path

    here = file_digest(saved("a", "Linux-6.1-x86_64", 0.5))
    assert file_digest(saved("b", "Linux-6.18-x86_64", 0.5)) == here
    assert file_digest(saved("c", "Linux-6.1-x86_64", 0.5 + 1e-7)) != here
