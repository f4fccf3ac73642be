"""The randomized battery's quick proxy: the linear part alone (tsconv.engine.linear, as the
highway fits it), walked forward like `quick` (8 features, 1,000 training bars, refits every
250), scored against the attainable reference. About 30 s for 24 draws on 2 cores against
20 minutes for the full battery (scripts/known_answers.py --battery), which trains the network
too; use it to try a change to the linear part on many seeds before the full run.

    python scripts/linear_battery.py --seeds 0 1 2 --draws 24
    python scripts/linear_battery.py --seeds 0 1 --spans 2000 1000   # tcn's spans

Each seed's summary also prints the linear part's R^2 on the null draws (no signal): a change
that finds more on the signal draws by fitting more noise shows there first.

Scalers (tsconv.engine.windows.Scaler) are fitted on each fold's whole training span (the
backtest fits them on the rows before validation), so its figures are close to, not equal to,
the battery's."""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from tsconv import synthetic
from tsconv.config import load_config, resolve_config_path
from tsconv.data.features import compute_features, make_target
from tsconv.engine import linear
from tsconv.engine.windows import Scaler
from tsconv.evaluate.battery import signal_basis

FEATURES = load_config(resolve_config_path(Path("quick"))).features  # the shipped quick's
TRAIN, TEST, REACH = 1000, 250, 61  # quick's train_span, test_span, receptive field


def draw_arrays(seed: int, index: int):
    answer = synthetic.generate(synthetic.draw_spec(seed, index))
    data = {}
    for t, frame in answer.frames.items():
        x = compute_features(frame, FEATURES)[FEATURES].to_numpy(np.float64)
        y = make_target(frame).to_numpy(np.float64)
        data[t] = (x, y, signal_basis(answer.draw.form, frame).to_numpy(np.float64))
    return answer.draw, data


def score(args: tuple[int, int, int, int]) -> dict:
    seed, index, train_bars, test_bars = args
    draw, data = draw_arrays(seed, index)
    n = len(next(iter(data.values()))[1])
    first = max(int(np.argmax(np.isfinite(x).all(1))) for x, _, _ in data.values())
    pred, real, att = [], [], []
    start = train_bars
    while start < n - 1:
        end = min(start + test_bars, n - 1)
        xs, ys, rows, since, scales, offset = [], [], [], [], [], 0
        for x, y, _ in data.values():
            scaler = Scaler.fit(x[first:start], y[first : start - 1], FEATURES)
            xs.append(scaler.transform(x[first:]))
            scales.append(scaler.y_scale)
            ys.append(y[first:] / scales[-1])
            rows.append(offset + np.arange(start - 1 - first))
            since.append(np.full(start - 1 - first, offset))
            offset += len(xs[-1])
        x_all = np.concatenate(xs).astype(np.float32)
        dates = np.concatenate([r - s for r, s in zip(rows, since, strict=True)])
        fit = linear.select_ridge(
            x_all,
            np.concatenate(ys),
            np.concatenate(rows),
            REACH,
            np.concatenate(since),
            dates,
            nonlinear=True,
        )
        xy = xx = 0.0  # the true form's one coefficient, least squares on the training span
        for _, y, b in data.values():
            ok = np.isfinite(b[first : start - 1]) & np.isfinite(y[first : start - 1])
            xy += b[first : start - 1][ok] @ y[first : start - 1][ok]
            xx += b[first : start - 1][ok] @ b[first : start - 1][ok]
        coef = xy / xx if xx > 0 else 0.0
        for (_, y, b), xt, scale in zip(data.values(), xs, scales, strict=True):
            test = np.arange(start - first, end - first)
            pred.append(linear.predict(xt.astype(np.float32), test, fit) * scale)
            real.append(y[start:end])
            att.append(np.nan_to_num(coef * b[start:end]))
        start = end
    p, r, a = map(np.concatenate, (pred, real, att))
    ss = float(np.sum(r**2))
    return {
        "index": index,
        "family": draw.family,
        "signal": draw.form.describe(),
        "noise": draw.noise.describe(),
        "linear": 1 - float(np.sum((r - p) ** 2)) / ss,
        "attainable": 1 - float(np.sum((r - a) ** 2)) / ss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--draws", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--spans",
        type=int,
        nargs=2,
        default=[TRAIN, TEST],
        metavar=("TRAIN", "TEST"),
        help="training bars and refit interval (default quick's; tcn: 2000 1000)",
    )
    args = parser.parse_args()
    for seed in args.seeds:
        t0 = time.perf_counter()
        with Pool(args.workers) as pool:
            results = pool.map(
                score, [(seed, i, *args.spans) for i in range(args.draws)], chunksize=1
            )
        ratios, nulls = [], []
        for r in results:
            if r["family"] == "null":
                nulls.append(r["linear"])
            ratio = None
            if r["family"] != "null" and r["attainable"] > 0:
                ratio = r["linear"] / r["attainable"]
                ratios.append(ratio)
            print(
                f"#{r['index']:02d} {r['family']:11s} {r['signal']:32s} {r['noise']:22s} "
                f"attainable {r['attainable']:+.3f} linear {r['linear']:+.3f} "
                f"ratio {'-' if ratio is None else f'{ratio:.0%}'}"
            )
        print(
            f"seed {seed}: median {np.median(ratios):.0%}, least {np.min(ratios):.0%}, "
            f"{sum(x < 0.5 for x in ratios)} below 50%; null draws' R^2 "
            f"{', '.join(f'{v:+.4f}' for v in nulls) or '-'} ({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
