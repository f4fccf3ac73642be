"""Start-up: what a tsconv command costs before and around its work, against `import torch`
measured in the same run.

    python scripts/bench_startup.py [--repeats 3]

Every figure comes from fresh processes (median of the repeats): the wall time of
`python -c "import torch"`, of `tsconv --help` and `tsconv fetch --help`, and of a one-fold,
five-step backtest of configs/quick.yaml; and, from `python -X importtime` on that backtest,
what its imports cost beyond torch: `torch._dynamo` (imported by the first optimizer: every
`torch.optim` optimizer's `add_param_group` is wrapped in `torch._disable_dynamo`, which imports
it on first call; no supported API avoids it), and everything else (pandas, matplotlib for the
report's plots, typer, rich, pydantic, tsconv itself).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import table

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "backtest",
    "--config",
    str(ROOT / "configs" / "quick.yaml"),
    "--set",
    "train.min_steps=5",
    "--set",
    "train.epochs=1",
    "--set",
    "backtest.train_span=3000",
    "--set",
    "backtest.test_span=500",
    "--overwrite",  # each repeat replaces the last one's run
]


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall time of `cmd` in fresh processes, after one unmeasured run."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def import_costs(report: str) -> dict[str, float]:
    """Seconds of all top-level imports, of torch, of torch._dynamo, and of each other module
    imported at the top level or lazily, from `-X importtime` output."""
    total, named = 0.0, {}
    for line in report.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        seconds = int(cumulative) / 1e6
        if len(name) - len(name.lstrip(" ")) == 1:  # top level: not inside another import
            total += seconds
        named[name.strip()] = seconds
    return {"total": total, **named}


def measure_imports(out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-X", "importtime", "-m", "tsconv", *TINY, "--out", str(out)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return import_costs(done.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    py, n = sys.executable, args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        base = wall([py, "-c", "import torch"], n)
        rows = [["python -c 'import torch' (baseline)", base, "1.00x"]]
        for name, cmd in [
            ("tsconv --help", [py, "-m", "tsconv", "--help"]),
            ("tsconv fetch --help", [py, "-m", "tsconv", "fetch", "--help"]),
            ("tsconv backtest, 1 fold of 5 steps", [py, "-m", "tsconv", *TINY, "--out", tmp]),
        ]:
            t = wall(cmd, n)
            rows.append([name, t, f"{t / base:.2f}x"])
        costs = measure_imports(Path(tmp) / "imports")
    torch_s, dynamo = costs.get("torch", 0.0), costs.get("torch._dynamo", 0.0)
    beyond = costs["total"] - torch_s - dynamo
    imports = [
        ["torch", torch_s, "1.00x"],
        ["torch._dynamo (first optimizer; unavoidable)", dynamo, f"{dynamo / torch_s:.2f}x"],
        [
            "everything else (tsconv, pandas, matplotlib, typer, ...)",
            beyond,
            f"{beyond / torch_s:.2f}x",
        ],
    ]
    top = sorted(
        (
            (s, m)
            for m, s in costs.items()
            if m in ("pandas", "matplotlib.pyplot", "pydantic", "typer", "rich.console", "pyarrow")
            or m in ("scipy.special", "scipy.stats", "yfinance")
        ),
        reverse=True,
    )
    imports += [[f"  of which {m}", s, f"{s / torch_s:.2f}x"] for s, m in top]
    print(
        table(
            f"Wall time of fresh processes (median of {n})",
            ["command", "seconds", "vs import torch"],
            rows,
        )
    )
    print(
        table(
            "Imports of the backtest above (python -X importtime), cumulative seconds",
            ["imports", "seconds", "vs torch"],
            imports,
        )
    )


if __name__ == "__main__":
    main()
