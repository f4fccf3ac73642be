"""One model trained by two processes (DistributedDataParallel, gloo on the CPU): the loss curve
of one process with the same global batch, rank 0 alone writing, and --resume.

The processes are started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK in the
environment) but meet through a file (TSCONV_INIT_METHOD) rather than torchrun's TCP store,
which listens on every interface: tests may open sockets on 127.0.0.1 only, so gloo is held to
the loopback device (GLOO_SOCKET_IFNAME=lo) and the test checks what listens while they run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tsconv.cli import app
from tsconv.config import load_config
from tsconv.recipes.train import run_training

pytestmark = pytest.mark.slow

# dropout 0: its masks are drawn per slice of the batch, so they differ from one process's
CONFIG = {
    "name": "ddp",
    "seed": 0,
    "data": {"source": "sample", "tickers": ["MSFT", "AAPL"]},
    "features": ["log_return", "hl_range", "vol_5"],
    "window": 32,
    "model": {"kind": "tcn", "channels": 8, "layers": 3, "dropout": 0.0, "highway": True},
    "train": {
        "epochs": 3,
        "min_steps": 0,
        "batch_size": 16,
        "lr": 0.003,
        "patience": 0,
        "device": "cpu",
        "restore_best": False,
    },
}
CURVE = ["epoch", "steps", "train_loss", "val_loss", "lr"]


def _listening_elsewhere() -> list[str]:
    """TCP sockets listening on anything but the loopback address (the sandbox's own service
    on port 2024 aside), from `ss`; empty where `ss` is missing."""
    if not shutil.which("ss"):
        return []
    lines = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.splitlines()
    local = [line.split()[3] for line in lines if ":2024" not in line]
    return [a for a in local if not a.startswith(("127.", "[::1]"))]


def train_in_processes(config: Path, out: Path, store: Path, extra: list[str] = ()) -> list[str]:
    """`tsconv train` in two processes; returns what listened beyond 127.0.0.1 meanwhile."""
    before = set(_listening_elsewhere())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "TSCONV_INIT_METHOD": f"file://{store}",
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
        }
        args = [sys.executable, "-m", "tsconv", "train", *extra]
        if "--resume" not in extra:
            args += ["--config", str(config), "--out", str(out)]
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    seen: set[str] = set()
    while any(p.poll() is None for p in procs):
        seen |= set(_listening_elsewhere()) - before
        time.sleep(0.2)
    outputs = [p.communicate()[0].decode() for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text
    assert "validation MSE" in outputs[0] and outputs[1].strip() == ""  # rank 0 reports
    return sorted(seen)


def curve(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv")[CURVE]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    config = root / "ddp.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(root / "one")])
    assert r.exit_code == 0, r.output
    return config, root / "one"


def test_two_processes_follow_the_one_process_loss_curve(tmp_path, one_process):
    config, one = one_process
    out = tmp_path / "two"
    assert train_in_processes(config, out, tmp_path / "store") == []
    pd.testing.assert_frame_equal(curve(out), curve(one), rtol=1e-5)
    versions = yaml.safe_load((out / "versions.json").read_text())
    assert versions["processes"] == 2 and versions["backend"] == "gloo"
    for name in ["model.pt", "summary.json", "loss.png", "manifest.json"]:
        assert (out / name).exists(), name
    assert not (out / "state.pt").exists()


def test_an_interrupted_run_resumes_in_two_processes(tmp_path, one_process):
    config, one = one_process
    out = tmp_path / "run"

    def stop(state):
        if state.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(load_config(config), out, on_epoch_done=stop)
    assert (out / "state.pt").exists() and not (out / "model.pt").exists()
    train_in_processes(config, out, tmp_path / "store", ["--resume", str(out)])
    pd.testing.assert_frame_equal(curve(out), curve(one), rtol=1e-5)
    assert not (out / "state.pt").exists()


def test_an_ensemble_trains_member_by_member_in_two_processes(tmp_path):
    config = tmp_path / "ens.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "train": {**CONFIG["train"], "ensemble": 2}}))
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "two"
    assert train_in_processes(config, out, tmp_path / "store") == []
    columns = ["member", *CURVE]
    one = pd.read_csv(tmp_path / "one" / "metrics.csv")[columns]
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv")[columns], one, rtol=1e-5)
    assert list(one["member"].unique()) == [0, 1]
    assert yaml.safe_load((out / "summary.json").read_text())["ensemble_val_loss"] > 0


def test_a_killed_rank_is_one_line_from_rank_0(tmp_path):
    """A rank killed mid-run (out of memory, a lost machine) made rank 0 print 70 lines of
    gloo and DDP traceback; it says in one line what happened and how to continue."""
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "train": {**CONFIG["train"], "epochs": 500}}))
    out = tmp_path / "run"
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "TSCONV_INIT_METHOD": f"file://{tmp_path / 'store'}",
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
        }
        args = [sys.executable, "-m", "tsconv", "train", "--config", str(config), "--out", str(out)]
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    try:
        deadline = time.monotonic() + 120
        while not (out / "state.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the first epoch is saved: both ranks are training
        assert (out / "state.pt").exists()
        procs[1].kill()
        _, stderr = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    text = stderr.decode().strip()
    assert procs[0].returncode == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert "another process of the run stopped" in text and f"--resume {out}" in text
