"""Per-new-bar latency: StreamingTCN vs recomputing the full receptive field (default TCN, RF 1021).

python scripts/bench_streaming.py [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _bench import machine, table, timeit_interleaved

from tsconv.models.fast.streaming import StreamingTCN
from tsconv.models.tcn import TCN


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TCN(8, [64] * 8, 3, 2, dropout=0.2).eval()
    rf = model.receptive_field
    rows = []
    for batch, steps in [(1, 200), (256, 20)]:
        stream = StreamingTCN(model, batch=batch)
        bar = np.random.default_rng(0).normal(size=(batch, 8)).astype(np.float32)
        for _ in range(rf):  # fill the buffers as a live feed would
            stream.step(bar)
        window = torch.randn(batch, 8, rf)

        def full(w=window):
            with torch.inference_mode():
                return model(w)[:, 0, -1]

        def streamed(st=stream, b=bar, n=steps):
            return [st.step(b) for _ in range(n)]

        # Round-robin, so a slow spell of the shared machine falls on both sides of the ratio.
        rounds = max(3, args.repeats // 2) if batch > 1 else args.repeats
        times = timeit_interleaved({"stream": streamed, "full": full}, rounds)
        s, f = times["stream"], times["full"]
        per = {k: v / steps * 1e3 for k, v in s.items()}
        rows.append(
            [batch, "full recompute", f["median"] * 1e3, f["min"] * 1e3, f["max"] * 1e3, 1.0]
        )
        rows.append(
            [
                batch,
                "streaming",
                per["median"],
                per["min"],
                per["max"],
                f["median"] * 1e3 / per["median"],
            ]
        )
    print(
        table(
            f"Streaming inference, TCN 8x64 k3 (receptive field {rf}); {machine()}",
            ["series", "method", "median ms/bar", "min", "max", "speedup"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
