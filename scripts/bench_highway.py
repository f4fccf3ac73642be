"""The highway's forward on CPU: the reference (`tsconv.models.layers.Highway`, every term)
against `tsconv.models.fast.highway.NonzeroHighway` (the terms whose weights are zero skipped),
in one process, on `quick`'s shape (8 features, 61 lags, a batch of 32 windows of 64 bars):
milliseconds a call and whether the outputs are equal, bit for bit.

    python scripts/bench_highway.py [--repeats 200]

Weights: what the ridge fit keeps on the sample (one lag of every feature and one product of
the last bar), the zero forecast, a 40-bar block of one feature (a long momentum), and every
weight set (there the lags take the reference's path).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _bench import machine, table, timeit_interleaved

from tsconv.models.fast.highway import NonzeroHighway
from tsconv.models.layers import HINGES, STEPS, Highway

FEATURES, LAGS, BATCH, LENGTH = 8, 61, 32, 64


def weights(kind: str, rng: np.random.Generator) -> dict:
    zeros = dict(
        coef=np.zeros((LAGS, FEATURES)),
        hinge=np.zeros((FEATURES, len(HINGES))),
        quad=np.zeros((FEATURES, FEATURES)),
        step=np.zeros((FEATURES, len(STEPS))),
    )
    if kind == "one lag and one product":
        zeros["coef"][0] = rng.normal(size=FEATURES) * 0.05
        zeros["quad"][2, 3] = 0.02
    elif kind == "40 lags of one feature":
        zeros["coef"][:40, 0] = rng.normal(size=40) * 0.02
    elif kind == "every weight set":
        zeros = {k: rng.normal(size=v.shape) * 0.01 for k, v in zeros.items()}
        zeros["quad"] = np.triu(zeros["quad"])
    return {**zeros, "penalty": 1.0}


def rows(repeats: int) -> list[list[object]]:
    rng = np.random.default_rng(0)
    x = torch.randn(BATCH, FEATURES, LENGTH, generator=torch.Generator().manual_seed(0))
    out = []
    kinds = (
        "one lag and one product",
        "zero forecast",
        "40 lags of one feature",
        "every weight set",
    )
    for kind in kinds:
        reference, fast = Highway(FEATURES, LAGS), NonzeroHighway(FEATURES, LAGS)
        w = weights(kind, rng)
        reference.set_ridge(**w)
        fast.set_ridge(**w)
        with torch.no_grad():
            same = torch.equal(reference(x), fast(x))
            t = timeit_interleaved(
                {"reference": lambda m=reference: m(x), "nonzero": lambda m=fast: m(x)}, repeats
            )
        ref, new = t["reference"]["median"], t["nonzero"]["median"]
        out.append([kind, 1000 * ref, 1000 * new, f"{ref / new:.1f}x", "yes" if same else "NO"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        table(
            f"Highway forward, {FEATURES} features x {LAGS} lags, {BATCH} x {LENGTH} bars "
            f"({machine()})",
            ["weights", "reference ms", "nonzero ms", "speed-up", "same bits"],
            rows(args.repeats),
        )
    )


if __name__ == "__main__":
    main()
