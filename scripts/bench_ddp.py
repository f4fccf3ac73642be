"""`tsconv train` in one process against torchrun with N processes (DistributedDataParallel).

    python scripts/bench_ddp.py [--config quick] [--processes 2] [--repeats 3] [--set KEY=V ...]

Each row is the whole command as a user runs it (start-up included), rounds alternating so a
slow spell of a shared machine hits both alike; dropout is set to 0 so that the runs' loss
curves agree but for float rounding (a step's gradients are summed in another order, and a long
fit amplifies that), and the script prints their largest relative difference. torchrun
is told to use 127.0.0.1 for its store (which still listens on every interface: a benchmark,
not a test).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _bench import machine, summary

CURVE = ["epoch", "steps", "train_loss", "val_loss"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], processes: int) -> float:
    launch = [sys.executable, "-m", "tsconv"]
    if processes > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={processes}",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
            "-m",
            "tsconv",
        ]
    t0 = time.perf_counter()
    res = subprocess.run([*launch, "train", *args], capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stdout + res.stderr)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quick")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=["model.dropout=0"])
    a = ap.parse_args()
    counts = [1, a.processes]
    times: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for n in counts:
                out = Path(tmp) / f"p{n}-{r}"
                sets = [x for s in a.sets for x in ("--set", s)]
                times[n].append(run(["--config", a.config, *sets, "--out", str(out)], n))
        one = pd.read_csv(Path(tmp) / "p1-0" / "metrics.csv")[CURVE]
        many = pd.read_csv(Path(tmp) / f"p{a.processes}-0" / "metrics.csv")[CURVE]
        gap = ((many - one).abs() / one.abs()).max().max()
    base = summary(times[1])["median"]
    print(
        f"`tsconv train --config {a.config}` ({' '.join(a.sets)}), {machine()}; loss curves within {gap:.1e} (relative).\n"
    )
    print("| processes | median s | min s | speed-up |")
    print("|---|---|---|---|")
    for n in counts:
        s = summary(times[n])
        print(f"| {n} | {s['median']:.2f} | {s['min']:.2f} | {base / s['median']:.2f}x |")


if __name__ == "__main__":
    main()
