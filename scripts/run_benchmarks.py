"""Run every benchmark and write docs/benchmarks.md (`make bench`)."""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_train.py"],
    ["bench_highway.py", "--repeats", "50"],
    ["bench_windows.py"],
    ["bench_walkforward.py"],
    ["bench_quality.py"],
    ["bench_startup.py"],
    ["bench_panel.py", "--tickers", "8"],
    ["bench_scale.py", "--repeats", "3", "--ray", "--startup"],
    ["bench_scale.py", "--sweep", "quick", "--repeats", "1", "--set", "train.threads=1"],
    ["bench_universe.py", "--tickers", "4", "8", "--refits", "20", "--after", "64"],
    ["bench_ddp.py", "--repeats", "3"],
    ["bench_batched.py", "--repeats", "10"],
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.md")
    args = ap.parse_args()
    parts = [
        f"# Benchmarks\n\nWritten by `make bench` on {dt.date.today()}. Each table is one "
        "process; ratios compare rows measured side by side in it. Median of the repeats after "
        "a warm-up.\n"
    ]
    for bench in BENCHES:
        cmd = [sys.executable, str(HERE / bench[0]), *bench[1:]]
        print("running", " ".join(cmd), flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            sys.exit(f"{bench[0]} failed (exit {res.returncode}); {args.out} left as it was")
        parts.append(f"## `python scripts/{' '.join(bench)}`\n\n{res.stdout}")
    import torch

    if not torch.cuda.is_available():
        parts.append(
            "## CUDA\n\nNot measured here: no GPU on the machine that wrote this file. GPU "
            "figures are in `docs/benchmarks-gpu.md`, written from `bash scripts/gpu_checks.sh` "
            "on a GPU machine.\n"
        )
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
