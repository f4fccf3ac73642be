"""A universe of tickers (issue 33): what scales with N gives the numbers of its reference
route, bit for bit; the report summarises hundreds of tickers instead of listing them; pool
workers fork from the fork server with the parent's environment; and the universe benchmark
runs (its table and cost model checked for rows and finite figures, never for a time)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tsconv.executors as executors
from tests.conftest import tiny_config
from tsconv.evaluate import summary
from tsconv.report import backtest_html

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_universe  # noqa: E402


def _predictions(tickers: int, dates: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    d = pd.bdate_range("2020-01-01", periods=dates)
    frame = pd.DataFrame(
        {
            "date": np.repeat(d, tickers),
            "ticker": np.tile([f"T{i:03d}" for i in range(tickers)], dates),
            "fold": np.repeat(np.arange(dates) // 20, tickers),
        }
    )
    frame["realized"] = rng.normal(0, 0.01, len(frame))
    frame["realized_1"] = frame["realized"]
    frame["prediction"] = rng.normal(0, 0.001, len(frame)).round(5)  # ties within dates
    frame.loc[::7, "prediction"] = 0.0
    frame.loc[5, "prediction"] = np.nan
    # a date with fewer than 3 tickers, and tickers missing from some dates
    return frame.drop(index=frame.index[(frame["date"] == d[3]) & (frame["ticker"] > "T001")])


def test_per_ticker_breakdown_is_the_scan_per_key_it_replaced():
    pred = _predictions(12, 80)
    cfg = tiny_config()
    strat = summary.strategy_rows(pred, "prediction", cfg)
    got = summary.breakdown(pred, cfg, "ticker", strat)
    want = {}
    for key, g in pred.groupby("ticker", sort=True):  # the route before: a scan per key
        t, _ = summary._strategy_metrics(strat[strat["ticker"] == key], g, cfg, "prediction")
        want[str(key)] = t.get("sharpe")
    assert {k: v["sharpe"] for k, v in got.items()} == want


def _rows(n: int) -> dict[str, dict]:
    rows = {}
    for i in range(n):
        rows[f"T{i:03d}"] = {
            "n": 100,
            "r2_oos": i / 1000,
            "ic": 0.01,
            "directional_accuracy": 0.5,
            "directional_accuracy_se": 0.05,
            "sharpe": None if i == 3 else float(i),
            "sharpe_ci95": [0.0, 1.0],
            "annual_return": 0.1,
            "in_market": 0.0 if i == 3 else 1.0,
        }
    return rows


def test_a_few_tickers_are_listed_and_a_universe_is_summarised():
    few = backtest_html._tickers_html(_rows(5))
    assert few == backtest_html._breakdown_html(_rows(5), "ticker", None)
    many = backtest_html._tickers_html(_rows(500))
    assert "500 tickers" in many and many.count("<tr>") < 60
    best, worst = many.split("Highest net Sharpe")[1].split("Lowest net Sharpe")
    assert best.index("T499") < best.index("T498") and "T000" not in best
    assert "T003" in worst.split("</tr>")[1]  # no Sharpe ratio: lowest
    assert "<th>median</th>" in many


def _worker_facts(shared, task):
    """This process's first task waits until the worker has run one, so both run some."""
    import time

    main, marker = shared
    if os.getpid() != main:
        Path(marker).touch()
    elif task == 0:
        deadline = time.monotonic() + 120
        while not Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return os.getpid(), os.getppid(), os.environ.get("TSCONV_TEST_ENV")


def test_pool_workers_fork_from_the_fork_server_with_this_process_environment(
    tmp_path, monkeypatch
):
    if "forkserver" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("no fork server on this platform")
    for value in ["first", "second"]:  # the second pool reuses the server started before
        monkeypatch.setenv("TSCONV_TEST_ENV", value)
        facts = []
        shared = (os.getpid(), str(tmp_path / value))
        with executors.Executor("local", 2, 1).start(shared) as run:
            run(list(range(8)), _worker_facts, lambda task, f, out=facts: out.append(f))
        theirs = {f for f in facts if f[0] != os.getpid()}
        assert theirs and {env for _, _, env in facts} == {value}
        # a forked worker's parent is the fork server, not this process
        assert all(parent != os.getpid() for _, parent, _ in theirs)


def test_universe_benchmark_prints_phases_quality_and_a_cost_model(tmp_path):
    sets = ["train.min_steps=4", "train.epochs=1", "backtest.train_span=300"]
    rows = []
    for n in (2, 3):
        row = bench_universe.universe_row("quick", sets, n, 520, 3, tmp_path)
        row["train_span"] = 300
        rows.append(row)
    assert [r["folds"] for r in rows] == [3, 3]
    for r in rows:
        assert set(r["seconds"]) == set(bench_universe.PHASES)
        assert sum(v for k, v in r["seconds"].items() if k != "rest") > 0
        assert r["r2_oracle"] > 0.1 and np.isfinite(r["r2"]) and r["peak_mib"] > 0

    class Args:
        bars, project, project_refits = 520, 500, None

    text = bench_universe.universe_table("quick", Args, rows)
    assert "projects" in text and "R^2" in text and "and 3 folds" in text
    Args.project_refits = 40  # measured on few refits, projected to many: more folds, more time
    more = bench_universe.universe_table("quick", Args, rows)
    totals = [
        float(row.split("|")[-3].replace(",", ""))  # the projected total's column
        for table in (text, more)
        for row in table.splitlines()
        if row.startswith("| total")
    ]
    assert "and 40 folds" in more and totals[1] > totals[0]
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert [ln.split("|")[1].strip() for ln in lines[1:]] == [*bench_universe.PHASES, "total"]
    model = bench_universe.fit_cost_model(rows)
    assert all(a >= 0 and b >= 0 for a, b in model.values())


SCRIPT = """
import os, sys
from pathlib import Path
with open(sys.argv[1], "a") as f:
    f.write(f"{__name__} {os.getpid()}\\n")  # each process that imports this script


def task(shared, t):
    import time

    time.sleep(0.3)
    return os.getpid()


if __name__ == "__main__":
    from tsconv.executors import Executor

    pids = set()
    for _ in range(2):  # two pools, one fork server
        with Executor("local", 2, 1).start(None) as run:
            run(list(range(12)), task, lambda t, pid: pids.add(pid))
    print(len(pids - {os.getpid()}))
"""


def test_the_fork_server_imports_the_main_script_once_for_every_worker(tmp_path):
    """Python's fork server is told neither the import path nor the main script; tsconv
    passes both, so the workers find the script imported (once, in the server) instead of
    importing it again each."""
    import subprocess

    if "forkserver" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("no fork server on this platform")
    script, log = tmp_path / "pool_script.py", tmp_path / "imports.log"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    workers = int(run.stdout.split()[-1])
    names = sorted(line.split()[0] for line in log.read_text().splitlines())
    assert workers >= 1  # the pools' workers ran tasks
    assert names == ["__main__", "__mp_main__"]  # this process, then the server alone


def test_the_whole_backtest_is_measured_on_workers(tmp_path):
    """`--whole`: the backtest at N tickers on two worker processes, its wall time, memory
    and quality (the same predictions as one process: the workers' bytes are the serial's)."""
    sets = ["train.min_steps=4", "train.epochs=1", "backtest.train_span=300", "train.threads=1"]
    rows = [bench_universe.whole_row("quick", sets, 3, 520, 3, w, tmp_path) for w in (1, 2)]
    assert [(r["folds"], r["workers"]) for r in rows] == [(3, 1), (3, 2)]
    assert all(r["wall s"] > 0 and r["peak MiB"] > 0 for r in rows)
    assert rows[0]["R^2"] == rows[1]["R^2"] and float(rows[0]["oracle"]) > 0.1
    assert rows[1]["largest child MiB"] != "-"
