"""One CPU route: a config and seed give the same numbers whether or not the machine has a C
compiler. Nothing in tsconv compiles code at run time (the retired fused kernel drew other
dropout masks where it compiled); this runs the same backtest, with dropout on, once here and
once in a fresh process whose PATH holds no compiler, and compares the bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from tsconv.cli import app

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "backtest",
    "--config",
    str(ROOT / "configs/quick.yaml"),
    "--set",
    "train.min_steps=20",
    "--set",
    "backtest.train_span=2800",
    "--set",
    "backtest.test_span=200",
    # both processes on one thread: unset, each takes the cores the machine's load leaves
    # free, and on AMD CPUs MKL's sums differ in the last bit between thread counts
    "--set",
    "train.threads=1",
]
COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "clang++")


def test_same_metrics_with_and_without_a_c_compiler(tmp_path):
    here = tmp_path / "here"
    result = CliRunner().invoke(app, [*ARGS, "--out", str(here)])
    assert result.exit_code == 0, result.output

    # an empty PATH, and no CC/CXX telling anyone where a compiler is
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX")}
    env["PATH"] = str(bare)
    probe = [sys.executable, "-c", "import shutil; print(shutil.which('cc'))"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "None"
    assert all(shutil.which(c, path=str(bare)) is None for c in COMPILERS)

    there = tmp_path / "there"
    cmd = [sys.executable, "-m", "tsconv", *ARGS, "--out", str(there)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = (here / "metrics.json").read_bytes()
    assert metrics == (there / "metrics.json").read_bytes()
    assert b'"r2_oos"' in metrics
    a, b = (d / "predictions.parquet" for d in (here, there))
    assert a.read_bytes() == b.read_bytes() or _same_frame(a, b)


def _same_frame(a: Path, b: Path) -> bool:
    import pandas as pd

    return pd.read_parquet(a).equals(pd.read_parquet(b))
