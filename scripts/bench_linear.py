"""The linear part's selection (`tsconv.engine.linear.select_ridge`) against the same module at
an earlier git revision, in one process, on the same problems: seconds a fit and whether the
fits are identical, bit for bit. For a change to the linear part that is meant to be faster
and choose the same.

    python scripts/bench_linear.py --against 8ddc1ca [--repeats 5]

Problems: 8 standardised features, reach 61 bars (`quick`'s), a target with a linear and an
absolute-value signal; a single series of 1,000 and 4,000 rows (a ridge AR baseline's fit per
ticker and fold, lags only), 2,000 rows with the last bar's terms (the highway), and a panel
of 8 tickers x 2,000 rows and one of 32 x 4,000 with the terms (the pooled highway).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _bench import machine, table, timeit_interleaved

from tsconv.engine import linear

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [  # (rows a ticker, tickers, the last bar's terms)
    (1000, 1, False),
    (4000, 1, False),
    (2000, 1, True),
    (2000, 8, True),
    (4000, 32, True),
]


def module_at(revision: str, folder: Path):
    """tsconv/engine/linear.py as it was at `revision`, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:tsconv/engine/linear.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "linear_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("linear_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["linear_before"] = module
    spec.loader.exec_module(module)
    return module


def problem(n: int, tickers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n * tickers, 8)).astype(np.float32)
    y = 0.1 * x[:, 0] + 0.1 * np.abs(x[:, 2]) + rng.standard_normal(n * tickers)
    rows = np.concatenate([t * n + np.arange(64, n - 1) for t in range(tickers)])
    since = np.repeat(np.arange(tickers) * n, n - 65)
    return x, y, rows, since, rows - since


def same_fit(a, b) -> bool:
    for name in a.__dataclass_fields__:
        u, v = getattr(a, name), getattr(b, name)
        if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
            if u is None or v is None or not np.array_equal(u, v):
                return False
        elif u != v:
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="a git revision of tsconv/engine/linear.py")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = module_at(args.against, Path(tmp))
        rows = []
        for n, tickers, terms in PROBLEMS:
            x, y, fit_rows, since, order = problem(n, tickers)

            def run(module, x=x, y=y, fit_rows=fit_rows, since=since, order=order, terms=terms):
                return module.select_ridge(
                    x, y, fit_rows, 61, since=since, order=order, nonlinear=terms
                )

            times = timeit_interleaved(
                {"before": lambda run=run: run(before), "now": lambda run=run: run(linear)},
                repeats=args.repeats,
            )
            b, a = times["before"]["median"], times["now"]["median"]
            rows.append(
                [
                    f"{tickers} x {n}",
                    "yes" if terms else "no",
                    f"{1000 * b:.0f}",
                    f"{1000 * a:.0f}",
                    f"{b / a:.2f}x",
                    "yes" if same_fit(run(before), run(linear)) else "NO",
                ]
            )
    print(
        table(
            f"select_ridge at {args.against} and now, median of {args.repeats}; {machine()}",
            ["tickers x rows", "terms", "before ms", "now ms", "speed-up", "same fit"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
