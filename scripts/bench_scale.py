"""Walk-forward folds in parallel processes against the serial run, in one process.

    python scripts/bench_scale.py [--config quick] [--workers 1 2] [--ray] [--repeats 3]
        [--set KEY=V ...]

Runs the whole backtest (`run_backtest`: folds, metrics, report) for each worker count in
turn, round by round, so a slow spell of a shared machine hits every row alike; the pool is
started afresh in every run, so the workers' start-up (importing torch, a few seconds) is
counted, as it is for a user; so is the local Ray cluster's with `--ray` (one cluster per
run, 1 CPU a fold). Checks that every run's predictions and metrics are identical to
the serial run's (where `train.threads` is unset and the CPU's MKL sums by thread count,
within 5% of the largest prediction, and the difference is printed: docs/performance.md) and prints the speed-up against `--workers 1`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _bench import machine, summary

from tsconv.config import load_config
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.prepare import prepare
from tsconv.runfolder import RunFolder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quick")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--ray", action="store_true", help="add a row for --executor ray")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    workers: list[int | str] = sorted(set([1, *args.workers]))
    if args.ray:
        workers.append("ray")
    base = load_config(Path(args.config), args.sets)
    prep = prepare(base)
    times: dict[int | str, list[float]] = {w: [] for w in workers}
    outputs: dict[int, bytes] = {}
    serial_pred: list[np.ndarray] = []
    largest = 0.0  # relative difference of a prediction from the serial run's
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for w in workers:
                how = {"executor": "ray"} if w == "ray" else {"workers": w}
                cfg = base.model_copy(update={"backtest": base.backtest.model_copy(update=how)})
                run = RunFolder(Path(tmp) / f"w{w}-{r}")
                t0 = time.perf_counter()
                run_backtest(cfg, run.path, prep=prep)
                times[w].append(time.perf_counter() - t0)
                got = run.predictions.read_bytes() + run.metrics.read_bytes()
                pred = pd.read_parquet(run.predictions)["prediction"].to_numpy()
                if not serial_pred:  # the first run is the serial one
                    serial_pred.append(pred)
                if outputs.setdefault(1, got) == got:
                    continue
                # train.threads unset: workers train on fewer threads than the serial run, and
                # MKL's sums may depend on that (docs/performance.md)
                diff = np.abs(pred - serial_pred[0]).max() / np.abs(serial_pred[0]).max()
                largest = max(largest, float(diff))
                if base.train.threads or diff > 0.05:  # unset: a gross-error check
                    sys.exit(f"workers {w}: results differ from the serial run by {diff:.2g}")
    serial = summary(times[1])["median"]
    same = (
        "results identical to the serial run in every row"
        if largest == 0
        else f"predictions within {largest:.1g} of the serial run's (relative to the largest): "
        "train.threads unset, and MKL's sums depend on the thread count on this CPU"
    )
    print(
        f"`{args.config}` backtest ({' '.join(args.sets) or 'as shipped'}), {machine()}; "
        f"median of {args.repeats} rounds; {same}.\n"
    )
    print("| workers or executor | wall time (s) | min - max | speed-up |")
    print("|---|---|---|---|")
    for w in workers:
        s = summary(times[w])
        print(
            f"| {w} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} | {serial / s['median']:.2f}x |"
        )


if __name__ == "__main__":
    main()
