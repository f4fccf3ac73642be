"""Panel scale: preparation, a training epoch, its validation and prediction for N tickers.

    python scripts/bench_panel.py [--tickers 64] [--bars 2520] [--device cpu|cuda] [--kinds ...]

A synthetic panel of N tickers x `--bars` daily bars (independent random walks) goes through
`experiment.prepare` (features and targets; timed), then `experiment.fit_span` trains two
epochs of one pass each on the first 80% of each ticker (the last 20% of that is validation,
as in a fold) and the second epoch is reported: its whole time, the training passes, and
validation, with validation's share. Prediction is `train.predict_rows` on the 250 bars after
the training span, per ticker. Model kinds (`--kinds`):

- `seed-rf>window`: the seed's TCN, 8 blocks x 64 channels, kernel 3 (receptive field 1021),
  window 256: every prediction is its own window;
- `seed-rf<=window`: the same TCN with window 1024;
- `multiscale`: configs/multiscale.yaml's model (receptive field 21), window 64.

Peak memory is the process's maximum resident set (CPU) or `torch.cuda.max_memory_allocated`.
Baselines measured in the same run: preparation one ticker at a time (the route `features.build`
replaced), and, for `seed-rf>window`, the validation rows predicted one window each
(`tsconv.engine.predict.predict_windows`, the route the window-end prediction replaced).

`--prepare-only` times just the preparation (e.g. `--tickers 4096 --prepare-only`).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from _bench import machine, table

from tsconv import synthetic
from tsconv.config import load_config
from tsconv.data import features
from tsconv.engine.predict import predict_rows, predict_windows
from tsconv.recipes.fit_span import fit_span
from tsconv.recipes.prepare import global_rows, prepare

KINDS = {
    "seed-rf>window": [
        "model.kind=tcn",
        "model.layers=8",
        "model.channels=64",
        "model.highway=false",
        "window=256",
    ],
    "seed-rf<=window": [
        "model.kind=tcn",
        "model.layers=8",
        "model.channels=64",
        "model.highway=false",
        "window=1024",
    ],
    "multiscale": [],
}
CONFIG = {
    "seed-rf>window": "tcn.yaml",
    "seed-rf<=window": "tcn.yaml",
    "multiscale": "multiscale.yaml",
}
PREDICT_BARS = 250


def frames(n: int, bars: int) -> dict:
    out = {}
    for i in range(n):
        r, _ = synthetic.random_walk(bars, seed=i)
        out[f"T{i:04d}"] = synthetic.ohlcv_from_returns(r, seed=i)
    return out


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def config(kind: str):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    return load_config(
        root / CONFIG[kind],
        [*KINDS[kind], "train.min_steps=0", "train.epochs=2", "train.patience=0"],
    )


def prepare_rows(n: int, bars: int) -> list[object]:
    """Preparation of N tickers, stacked (tsconv) and one ticker at a time (before)."""
    cfg = config("multiscale")
    data = frames(n, bars)
    t0 = time.perf_counter()
    prepare(cfg, data)
    stacked = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t, f in data.items():
        features.build({t: f}, cfg.features, cfg.target.horizon, cfg.data.price)
    alone = time.perf_counter() - t0
    return [n, bars, stacked, alone, f"{alone / stacked:.1f}x", f"{stacked / n * 1e3:.2f}"]


def run(kind: str, n: int, bars: int, device: torch.device) -> list[object]:
    cfg = config(kind)
    data = frames(n, bars)
    t0 = time.perf_counter()
    prep = prepare(cfg, data)
    prep_s = time.perf_counter() - t0
    train, val, test = {}, {}, {}
    for t, td in prep.data.items():
        end = len(td.x) - PREDICT_BARS
        cut = int(end * 0.8)
        train[t], val[t], test[t] = (0, cut), (cut, end), (end, len(td.x))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, _, panel, result = fit_span(prep, train, val, seed=0, device=device)
    second = result.history[-1]
    epoch, training = second["seconds"], second["train_seconds"]
    rows = torch.cat([global_rows(panel, t, np.arange(lo, hi)) for t, (lo, hi) in test.items()])
    t0 = time.perf_counter()
    predict_rows(model, panel, rows, cfg.window, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    predict_s = time.perf_counter() - t0
    validation = epoch - training
    before = "-"
    if kind == "seed-rf>window":  # the validation rows, one window each, as before
        vrows = torch.cat([global_rows(panel, t, np.arange(lo, hi)) for t, (lo, hi) in val.items()])
        t0 = time.perf_counter()
        predict_windows(model, panel, vrows, cfg.window, device, 512, False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        before = (
            f"{time.perf_counter() - t0:.3g} s ({(time.perf_counter() - t0) / validation:.0f}x)"
        )
    return [
        kind,
        n,
        prep_s,
        epoch,
        training,
        validation,
        f"{validation / epoch:.0%}",
        before,
        predict_s,
        f"{len(rows) / predict_s:,.0f}",
        peak_memory_mib(device),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tickers", type=int, nargs="+", default=[8])
    ap.add_argument("--bars", type=int, default=2520)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prepare-only", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        table(
            f"Preparation (features and targets) of N tickers; {machine()}",
            ["N", "bars", "stacked s (tsconv)", "one ticker at a time s", "ratio", "ms/ticker"],
            [prepare_rows(n, args.bars) for n in args.tickers],
        )
    )
    if args.prepare_only:
        return
    device = torch.device(args.device)
    rows = [run(kind, n, args.bars, device) for n in args.tickers for kind in args.kinds]
    print(
        table(
            f"Panel of N tickers x {args.bars} bars, dense targets, second epoch of one pass "
            f"on {device}; {machine()}",
            [
                "model",
                "N",
                "prepare s",
                "epoch s",
                "training s",
                "validation s",
                "validation share",
                "validation one window per row (before)",
                f"predict s ({PREDICT_BARS} bars each)",
                "predictions/s",
                "peak MiB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
