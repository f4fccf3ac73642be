"""The risk targets' known answers (tests/test_risk_known_answers.py) as a table for the README
and docs/known_answers.md: configs/vol.yaml and configs/quantiles.yaml, unchanged but for data
and span keys, through the CLI on tsconv.synthetic_vol's series.

    python scripts/risk_known_answers.py [--bars 1800]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

from tsconv import synthetic_vol
from tsconv.cli import app

ROOT = Path(__file__).resolve().parents[1]
TICKERS = {"garch_t": 2, "volume_driven": 1, "constant": 1}
SPANS = ["backtest.train_span=1000", "backtest.test_span=700"]


def run(root: Path, config: str, case: str, names: list[str]) -> tuple[dict, float]:
    out = root / f"{config}-{case}"
    keys = ["data.source=cache", f"data.dir={root / 'cache'}", f"data.tickers=[{','.join(names)}]"]
    args = ["backtest", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--out", str(out)]
    for key in [*keys, *SPANS]:
        args += ["--set", key]
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - t0


def _p(tests: dict, b: str) -> str:
    t = tests[b]
    return f"p = {t['p_holm']:.2g} ({'lower' if t['stat'] < 0 else 'higher'})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bars", type=int, default=1800)
    bars = parser.parse_args().bars
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = {}
        for case, count in TICKERS.items():
            names[case] = []
            for i in range(count):
                frame, _ = synthetic_vol.CASES[case](bars, seed=1 + i)
                name = f"{case.upper()}{i}"
                frame.to_csv(root / f"{name}.csv")
                CliRunner().invoke(
                    app,
                    ["fetch", "--from-csv", str(root / f"{name}.csv"), "--ticker", name]
                    + ["--data-dir", str(root / "cache")],
                )
                names[case].append(name)
        print(
            "| series | tickers | model | trailing_mean | ewma | garch | har | DM vs garch "
            "| DM vs har | DM vs trailing_mean | wall time |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for case in TICKERS:
            m, seconds = run(root, "vol", case, names[case])
            f, dm = m["forecast"], m["forecast"]["prediction"]["dm_vs"]

            order = ["prediction", "trailing_mean", "ewma", "garch", "har"]
            qlikes = " | ".join(f"{f[k]['qlike']:.3f}" for k in order)
            print(
                f"| {case} | {len(names[case])} | {qlikes} | {_p(dm, 'garch')} | {_p(dm, 'har')} "
                f"| {_p(dm, 'trailing_mean')} | {seconds:.0f} s |"
            )
        m, seconds = run(root, "quantiles", "garch_t", names["garch_t"])
        v = m["levels"]["0.05"]["prediction"]
        print(
            f"\nquantiles, garch_t: 5% VaR coverage {v['coverage']:.3f}, Kupiec p = "
            f"{v['kupiec']['p_value']:.2g}, Christoffersen p = "
            f"{v['christoffersen']['p_value']:.2g} ({seconds:.0f} s)"
        )


if __name__ == "__main__":
    main()
