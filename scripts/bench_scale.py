"""Walk-forward folds, or a sweep's trials, in parallel processes against the serial run, in
one process; and how long a pool worker takes to start.

    python scripts/bench_scale.py [--config quick] [--workers 1 2] [--ray] [--repeats 3]
        [--sweep SPACE] [--startup] [--set KEY=V ...]

Runs the whole backtest (`run_backtest`: folds, metrics, report), or with `--sweep quick` the
whole sweep (`run_sweep`: the space's trials, then the chosen one on the holdout), for each
worker count in turn, round by round, so a slow spell of a shared machine hits every row alike.
Each run starts its pool afresh (a sweep keeps one pool for its trials and starts another for
the holdout), but the workers fork from the fork server `tsconv.executors` starts once per
process, so only the first parallel run of this process pays for the server's imports (a few
seconds, as a `tsconv backtest --workers 2` does once); its round is printed as well. With
`--ray`, one local Ray cluster per run, 1 CPU a fold. Checks that every run's predictions and
metrics (a sweep: sweep.json and trials.parquet) are identical to the serial run's (where
`train.threads` is unset and the CPU's MKL sums by thread count, within 5% of the largest
prediction, and the difference is printed: docs/performance.md) and prints the speed-up
against `--workers 1`.

`--startup`: before anything else, the time from starting a pool of one worker to the
worker's first task running one AdamW step (which imports `torch._dynamo`): forked from the
fork server the first time in this process (the server imports tsconv, torch and
`torch._dynamo`), forked from it again, and spawned (the route before, which imports
everything in each worker), timed round by round.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _bench import machine, summary

from tsconv import executors, forkserver
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
    ap.add_argument("--sweep", default=None, help="a space file: time the sweep, not a backtest")
    ap.add_argument("--startup", action="store_true", help="time a pool worker's start first")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    if args.startup:
        print(startup_table(args.repeats))
    workers: list[int | str] = sorted(set([1, *args.workers]))
    if args.ray:
        workers.append("ray")
    base = load_config(Path(args.config), args.sets)
    run_one = sweep_runner(base, args.sweep) if args.sweep else backtest_runner(base)
    times: dict[int | str, list[float]] = {w: [] for w in workers}
    first_parallel: list[tuple[int | str, float]] = []
    outputs: dict[int, bytes] = {}
    serial_pred: list[np.ndarray] = []
    largest = 0.0  # relative difference of a prediction from the serial run's
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for w in workers:
                how = {"executor": "ray"} if w == "ray" else {"workers": w}
                t0 = time.perf_counter()
                got, pred = run_one(how, Path(tmp) / f"w{w}-{r}")
                seconds = time.perf_counter() - t0
                if w != 1 and not first_parallel:  # this process's fork server started here
                    first_parallel.append((w, seconds))
                times[w].append(seconds)
                if not serial_pred:  # the first run is the serial one
                    serial_pred.append(pred)
                if outputs.setdefault(1, got) == got:
                    continue
                # train.threads unset: workers train on fewer threads than the serial run, and
                # MKL's sums may depend on that (docs/performance.md)
                diff = np.abs(pred - serial_pred[0]).max() / np.abs(serial_pred[0]).max()
                largest = max(largest, float(diff))
                if base.train.threads or diff > 0.05 or args.sweep:  # unset: a gross check
                    sys.exit(f"workers {w}: results differ from the serial run by {diff:.2g}")
    serial = summary(times[1])["median"]
    same = (
        "results identical to the serial run in every row"
        if largest == 0
        else f"predictions within {largest:.1g} of the serial run's (relative to the largest): "
        "train.threads unset, and MKL's sums depend on the thread count on this CPU"
    )
    what = f"sweep over `{args.sweep}`" if args.sweep else "backtest"
    print(
        f"`{args.config}` {what} ({' '.join(args.sets) or 'as shipped'}), {machine()}; "
        f"median of {args.repeats} rounds; {same}.\n"
    )
    print("| workers or executor | wall time (s) | min - max | speed-up |")
    print("|---|---|---|---|")
    for w in workers:
        s = summary(times[w])
        print(
            f"| {w} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} | {serial / s['median']:.2f}x |"
        )
    if first_parallel:
        w, seconds = first_parallel[0]
        print(
            f"\nThe first parallel run of the process (workers {w}, its fork server starting): "
            f"{seconds:.1f} s, {times[1][0] / seconds:.2f}x the first serial run "
            f"({times[1][0]:.1f} s).\n"
        )


def backtest_runner(base):
    prep = prepare(base)

    def run_one(how: dict, out: Path) -> tuple[bytes, np.ndarray]:
        cfg = base.model_copy(update={"backtest": base.backtest.model_copy(update=how)})
        run = RunFolder(out)
        run_backtest(cfg, run.path, prep=prep)
        got = run.predictions.read_bytes() + run.metrics.read_bytes()
        return got, pd.read_parquet(run.predictions)["prediction"].to_numpy()

    return run_one


def sweep_runner(base, space: str):
    from tsconv.data.load import load_frames
    from tsconv.recipes import search_space
    from tsconv.recipes.sweep import run_sweep

    spc = search_space.read_space(Path(space), base)
    frames = load_frames(base.data)

    def run_one(how: dict, out: Path) -> tuple[bytes, np.ndarray]:
        execution = {f"backtest.{k}": v for k, v in how.items()}
        result = run_sweep(base, spc, out, execution=execution, frames=frames)
        run = RunFolder(out)
        got = run.sweep_result.read_bytes() + run.trials_table.read_bytes()
        return got, np.array([json.dumps(result, sort_keys=True)])

    return run_one


# --------------------------------------------------------------------------- worker start-up


def first_step(shared: tuple[int, str], task: int) -> float:
    """A pool task: this process's first task waits for the worker's; the worker's runs one
    AdamW step (torch imports `torch._dynamo` at a process's first) and returns when it
    finished, on the wall clock."""
    main, marker = shared
    if os.getpid() == main:
        deadline = time.monotonic() + 300
        while not Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        return 0.0
    import torch

    w = torch.zeros(4, requires_grad=True)
    opt = torch.optim.AdamW([w])
    (w.sum() ** 2).backward()
    opt.step()
    Path(marker).touch()
    return time.time()


def worker_start(tmp: Path) -> float:
    """Seconds from starting a pool of 2 (this process and a worker) to the worker's first
    AdamW step done."""
    marker = tmp / f"started-{time.monotonic_ns()}"
    ready = []
    t0 = time.time()
    with executors.Executor("local", 2, 1).start((os.getpid(), str(marker))) as run:
        run([0, 1], first_step, lambda task, t: ready.append(t))
    return max(ready) - t0


def startup_table(repeats: int) -> str:
    forked = forkserver.context
    spawned = lambda module: mp.get_context("spawn")  # noqa: E731  the route before
    rows: dict[str, list[float]] = {"forked, fork server starting (first pool)": []}
    rows |= {"forked from the running fork server": [], "spawned (before)": []}
    with tempfile.TemporaryDirectory() as tmp:
        rows["forked, fork server starting (first pool)"].append(worker_start(Path(tmp)))
        for _ in range(repeats):
            rows["forked from the running fork server"].append(worker_start(Path(tmp)))
            forkserver.context = spawned
            try:
                rows["spawned (before)"].append(worker_start(Path(tmp)))
            finally:
                forkserver.context = forked
    before = summary(rows["spawned (before)"])["median"]
    lines = [
        f"Pool worker start-up: seconds from starting a pool to the worker's first AdamW step "
        f"done, {machine()}; median of {repeats} rounds (the first pool: once).\n",
        "| worker | seconds | min - max | speed-up |",
        "|---|---|---|---|",
    ]
    for name, t in rows.items():
        s = summary(t)
        lines.append(
            f"| {name} | {s['median']:.2f} | {s['min']:.2f} - {s['max']:.2f} | "
            f"{before / s['median']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
