"""Memory and epoch time: WindowDataset (views + index arithmetic) vs materialised windows.

python scripts/bench_windows.py [--rows 100000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _bench import machine, table, timeit, timeit_interleaved

from tsconv.engine.windows import Panel, WindowDataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(2)
    n, f, w = args.rows, args.features, args.window
    panel = Panel(torch.randn(n, f), torch.randn(n), np.array([0, n]), ["X"])
    raw = (panel.x.nelement() + panel.y.nelement()) * 4
    ds = WindowDataset(panel, [(0, 0, n)], w, "last", 0)
    order = torch.randperm(len(ds))

    def epoch_views():
        for idx in order.split(args.batch):
            ds.batch(idx)

    mat = {}

    def materialise():
        mat["x"] = panel.x.unfold(0, w, 1).contiguous()  # every window copied once
        mat["y"] = panel.y.unfold(0, w, 1).contiguous()

    t_mat = timeit(materialise, repeats=1, warmup=0)
    mat_bytes = (mat["x"].nelement() + mat["y"].nelement()) * 4

    def epoch_materialised():
        for idx in order.split(args.batch):
            mat["x"][idx], mat["y"][idx]

    times = timeit_interleaved({"views": epoch_views, "materialised": epoch_materialised}, 7)
    v, m = times["views"], times["materialised"]
    index = sum(t.nelement() * 8 for t in (ds.first, ds.count, ds.stride, ds.loss_from, ds.cum))
    rows = [
        ["materialised", mat_bytes / 2**20, mat_bytes / raw, m["median"], m["min"], m["max"], 1.0],
        [
            "WindowDataset",
            (raw + index) / 2**20,
            (raw + index) / raw,
            v["median"],
            v["min"],
            v["max"],
            m["median"] / v["median"],
        ],
    ]
    print(
        table(
            f"Windows over {n:,} x {f} rows, window {w} (materialising took {t_mat['median']:.2f} s); {machine()}",
            ["dataset", "MiB", "x raw", "epoch s (median)", "min", "max", "epoch speedup"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
