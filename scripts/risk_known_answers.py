"""The risk targets' known answers (tests/test_risk_known_answers.py) as a table for the README
and docs/known_answers.md: configs/vol.yaml and configs/quantiles.yaml, unchanged but for data
and span keys, through the CLI on tsconv.synthetic_vol's series.

    python scripts/risk_known_answers.py [--bars 1800]
    python scripts/risk_known_answers.py --draws 14 [--first-seed 1] [--cases garch_t]

`--draws N`: each case on N draws of its process (draw k's tickers from seeds s, s + 1, ...
with s = first seed + 10 k; draw 0 of seed 1 is the one the tests run), one row per draw, then
a summary per case: a known answer is a distribution, not one series.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

import tsconv
from tsconv import synthetic_vol
from tsconv.cli import app

CONFIGS = Path(tsconv.__file__).resolve().parent / "configs"
TICKERS = {"garch_t": 2, "volume_driven": 1, "constant": 1}
SPANS = ["backtest.train_span=1000", "backtest.test_span=700"]
ORDER = ["prediction", "trailing_mean", "ewma", "garch", "har"]


def import_case(root: Path, case: str, bars: int, seed: int) -> list[str]:
    """The case's tickers (seeds `seed`, `seed` + 1, ...) imported into root/cache."""
    names = []
    for i in range(TICKERS[case]):
        frame, _ = synthetic_vol.CASES[case](bars, seed=seed + i)
        name = f"{case.upper()}{seed}X{i}"
        frame.to_csv(root / f"{name}.csv")
        args = ["fetch", "--from-csv", str(root / f"{name}.csv"), "--ticker", name]
        result = CliRunner().invoke(app, [*args, "--data-dir", str(root / "cache")])
        assert result.exit_code == 0, result.output
        names.append(name)
    return names


def run(root: Path, config: str, names: list[str]) -> tuple[dict, float]:
    out = root / f"{config}-{names[0]}"
    keys = ["data.source=cache", f"data.dir={root / 'cache'}", f"data.tickers=[{','.join(names)}]"]
    args = ["backtest", "--config", str(CONFIGS / f"{config}.yaml"), "--out", str(out)]
    for key in [*keys, *SPANS]:
        args += ["--set", key]
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - t0


def _p(tests: dict, b: str) -> str:
    t = tests[b]
    return f"p = {t['p_holm']:.2g} ({'lower' if t['stat'] < 0 else 'higher'})"


def one_draw(root: Path, bars: int) -> None:
    names = {case: import_case(root, case, bars, 1) for case in TICKERS}
    print(
        "| series | tickers | model | trailing_mean | ewma | garch | har | DM vs garch "
        "| DM vs har | DM vs trailing_mean | wall time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in TICKERS:
        m, seconds = run(root, "vol", names[case])
        f, dm = m["forecast"], m["forecast"]["prediction"]["dm_vs"]
        qlikes = " | ".join(f"{f[k]['qlike']:.3f}" for k in ORDER)
        print(
            f"| {case} | {len(names[case])} | {qlikes} | {_p(dm, 'garch')} | {_p(dm, 'har')} "
            f"| {_p(dm, 'trailing_mean')} | {seconds:.0f} s |"
        )
    m, seconds = run(root, "quantiles", names["garch_t"])
    v = m["levels"]["0.05"]["prediction"]
    print(
        f"\nquantiles, garch_t: 5% VaR coverage {v['coverage']:.3f}, Kupiec p = "
        f"{v['kupiec']['p_value']:.2g}, Christoffersen p = "
        f"{v['christoffersen']['p_value']:.2g} ({seconds:.0f} s)"
    )


def draws(root: Path, bars: int, n: int, first_seed: int, cases: list[str]) -> None:
    for case in cases:
        print(f"\n### {case}: {n} draws of {TICKERS[case]} x {bars} bars, `vol`\n")
        print(
            "| draw | seed | model | trailing_mean | ewma | garch | har | model / garch - 1 "
            "| DM vs garch | DM vs har | DM vs trailing_mean |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        gaps, beats, worse = [], 0, 0
        for k in range(n):
            seed = first_seed + 10 * k
            m, _ = run(root, "vol", import_case(root, case, bars, seed))
            f, dm = m["forecast"], m["forecast"]["prediction"]["dm_vs"]
            gap = f["prediction"]["qlike"] / f["garch"]["qlike"] - 1
            gaps.append(gap)
            beats += all(dm[b]["stat"] < 0 and dm[b]["p_holm"] < 0.01 for b in ("garch", "har"))
            worse += dm["trailing_mean"]["stat"] > 0 and dm["trailing_mean"]["p_holm"] < 0.05
            qlikes = " | ".join(f"{f[k]['qlike']:.3f}" for k in ORDER)
            print(
                f"| {k} | {seed} | {qlikes} | {gap:+.1%} | {_p(dm, 'garch')} | {_p(dm, 'har')} "
                f"| {_p(dm, 'trailing_mean')} |",
                flush=True,
            )
        print(
            f"\n{case}: model / garch - 1 median {statistics.median(gaps):+.1%}, least "
            f"{min(gaps):+.1%}, most {max(gaps):+.1%}; beats GARCH and HAR (p < 0.01) in "
            f"{beats} of {n}; significantly worse than the trailing mean (p < 0.05) in "
            f"{worse} of {n}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bars", type=int, default=1800)
    parser.add_argument("--draws", type=int, default=0)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=list(TICKERS), choices=list(TICKERS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.draws:
            draws(Path(tmp), args.bars, args.draws, args.first_seed, args.cases)
        else:
            one_draw(Path(tmp), args.bars)


if __name__ == "__main__":
    main()
