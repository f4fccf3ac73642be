"""Time to quality: wall time until the walk-forward reaches a given forecast quality, for dense
and last-step training targets, on series with a known answer.

    python scripts/bench_quality.py [--config quick] [--repeats 1]

A claim about training speed counts only at equal, demonstrated forecast quality, so this times
whole walk-forward backtests of a shipped config (tsconv.synthetic's known-answer cases, the
config unchanged but for data keys and training budget) on a ladder of training budgets, and
reports the first rung that reaches the bar and its wall time:

- AR(1), phi 0.5: R^2_OS >= 0.2 (the oracle's is about 0.25);
- the nonlinear tent series: R^2_OS >= 80% of the oracle's on the same rows.

Dense targets climb a ladder of `train.min_steps` (epochs fixed by the config); last-step
targets one of `train.epochs` with no step floor (one pass is already dozens of steps there).
The highway's ridge start solves AR(1) before the first step, so AR(1) is also timed with
`model.highway=false`: the network learning it alone.
"""

from __future__ import annotations

import argparse

import numpy as np
from _bench import machine, table
from known_answers import run

LADDERS = {
    "all": [f"train.min_steps={n}" for n in (25, 50, 100, 200, 400, 800)],
    "last": [f"train.epochs={n}" for n in (1, 2, 4, 8, 16)],
}


def time_to_quality(config: str, series: str, targets: str, highway: bool) -> list[object]:
    tried = []
    for rung in LADDERS[targets]:
        extra = ["train.min_steps=0"] if targets == "last" else []
        extra += [] if highway else ["model.highway=false"]
        r = run(config, series, [f"train.targets={targets}", *extra, rung])
        r2, seconds = r["model"], r["seconds"]
        bar = 0.2 if series == "ar1" else 0.8 * r["oracle"]
        tried.append(f"{rung.split('=')[1]}: {r2:+.3f}")
        print(f"  {series} {targets} {rung}: R^2 {r2:+.3f} (bar {bar:.3f}) in {seconds:.1f} s")
        name = series if highway else f"{series}, no highway"
        if r2 >= bar:
            return [name, targets, rung, r2, bar, seconds, "; ".join(tried)]
    return [name, targets, "not reached", r2, bar, float("nan"), "; ".join(tried)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="quick")
    ap.add_argument("--series", nargs="+", default=["ar1", "tent"])
    ap.add_argument(
        "--no-highway",
        nargs="*",
        default=["ar1"],
        help="series also timed with model.highway=false: the highway's ridge start solves "
        "AR(1) before the first step, so only this times the network learning it",
    )
    args = ap.parse_args()
    print(machine())
    cases = [(s, True) for s in args.series] + [(s, False) for s in args.no_highway]
    rows = [
        time_to_quality(args.config, series, targets, highway)
        for series, highway in cases
        for targets in ("all", "last")
    ]
    print()
    print(
        table(
            f"Time to quality, {args.config}.yaml walk-forward (whole backtests, one run each)",
            ["series", "targets", "first budget at the bar", "R^2", "bar", "wall s", "ladder"],
            rows,
        )
    )
    for name in dict.fromkeys(r[0] for r in rows):
        dense, last = (r for r in rows if r[0] == name)
        if np.isfinite(dense[5]) and np.isfinite(last[5]):
            print(f"{name}: last-step targets take {last[5] / dense[5]:.1f}x the dense time")


if __name__ == "__main__":
    main()
