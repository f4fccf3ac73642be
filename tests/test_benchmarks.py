"""The benchmark scripts still run: one or two rounds of the train-step tables, checked for
their rows and finite positive figures (never for a time)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import _bench  # noqa: E402
import bench_batched  # noqa: E402
import bench_highway  # noqa: E402
import bench_linear  # noqa: E402
import bench_startup  # noqa: E402
import bench_train  # noqa: E402


def _rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


def test_train_step_table_has_every_row_with_positive_rates():
    text = bench_train.speed_rows(torch.device("cpu"), 1)
    assert "70% or more in" in text and " of 1 rounds." in text  # the per-round share
    rows = _rows(text)
    names = [r[0] for r in rows]
    assert names[0].startswith("float32 matmul") and "tsconv TCN, fp32" in names
    assert "tsconv TCN, bf16 autocast" in names and len(rows) == 8
    assert all(float(r[4]) > 0 for r in rows)  # GFLOP/s


def test_split_weight_grad_table_pairs_both_sides():
    rows = _rows(bench_train.split_weight_grad_rows(1))
    assert [r[0] for r in rows] == ["one product", "two halves (tsconv)"]
    assert all(float(r[1]) > 0 for r in rows) and "faster in" in rows[1][4]


def test_quartiles_of_one_value_and_of_several():
    assert bench_train.quartiles([2.0]) == (2.0, 2.0, 2.0)
    q1, med, q3 = bench_train.quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert q1 < med == 3.0 < q3


def test_round_robin_timing_gives_each_function_its_rounds_and_plain_summaries():
    calls = []
    rounds = _bench.time_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-up, then untimed + timed
    assert [len(t) for t in rounds.values()] == [3, 3]
    summaries = _bench.timeit_interleaved({"a": lambda: None}, 2)
    assert set(summaries["a"]) == {"median", "min", "max"}  # numbers only, for the tables


def test_import_costs_reads_importtime_nesting():
    # one space before a top-level name, two more per level; a lazy import later in the run
    # (torch._dynamo at the first optimizer) is a top-level entry of its own
    report = """import time: self [us] | cumulative | imported package
import time:       100 |        100 | zlib
import time:       300 |       1400 |     torch._C
import time:       500 |       2000 |   torch
import time:       200 |       2300 | tsconv.walkforward
import time:        50 |       1000 | torch._dynamo
"""
    costs = bench_startup.import_costs(report)
    assert costs["total"] == pytest.approx((100 + 2300 + 1000) / 1e6)
    assert costs["torch"] == pytest.approx(0.002) and costs["torch._C"] == pytest.approx(0.0014)
    assert costs["torch._dynamo"] == pytest.approx(0.001)


def test_scale_benchmark_checks_results_and_prints_the_speed_up():
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_scale.py"
    # train.threads set: the same bytes in every worker on any CPU (unset, MKL's sums depend
    # on the thread count on AMD CPUs once training moves the weights; docs/performance.md)
    sets = [
        "train.min_steps=10",
        "backtest.train_span=2800",
        "backtest.test_span=250",
        "train.threads=1",
    ]
    run = subprocess.run(
        [sys.executable, str(script), "--repeats", "1", *(a for s in sets for a in ("--set", s))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "results identical to the serial run in every row" in run.stdout
    rows = _rows(run.stdout)
    assert [r[0] for r in rows] == ["1", "2"] and rows[0][3] == "1.00x"
    assert all(float(r[1]) > 0 for r in rows)


def test_batched_benchmark_checks_the_grouped_model_against_separate_ones():
    """One grouped model of K members is K independent models: same gradients (dropout off)."""
    shape = (3, 4, [5, 5, 6], 3, 2, 40, 20, 4)  # members, inputs, channels, k, base, L, burn-in, N
    assert bench_batched.check_equal(shape, torch.device("cpu")) < 1e-5
    text = bench_batched.batched_table("quick", 2, torch.device("cpu"), 1)
    rows = _rows(text)
    assert [r[0] for r in rows] == [
        "tsconv, one after another",
        "plain, one after another",
        "grouped, K as one",
    ]
    assert all(float(r[1]) > 0 for r in rows) and rows[0][3] == "1.00x"
    assert "largest relative difference" in text


def test_bench_linear_loads_the_module_at_a_revision_and_compares_fits(tmp_path):
    """The linear module at a git revision is imported beside the current one, and `same_fit`
    tells a fit from its repeat (the same) and from another problem's (not the same)."""
    from tsconv.engine import linear

    before = bench_linear.module_at("HEAD", tmp_path)
    assert before.__name__ == "linear_before" and before is not linear
    x, y, rows, since, order = bench_linear.problem(300, 2)
    assert len(rows) == len(since) == 2 * (300 - 65) and order.max() == 299 - 1
    fit = linear.select_ridge(x, y, rows, 61, since=since, order=order)
    assert bench_linear.same_fit(fit, linear.select_ridge(x, y, rows, 61, since=since, order=order))
    x2, y2, *_ = bench_linear.problem(300, 2, seed=1)
    other = linear.select_ridge(x2, y2, rows, 61, since=since, order=order)
    assert not bench_linear.same_fit(fit, other)


def test_batched_trainer_benchmark_times_both_routes_and_shows_their_losses():
    text = bench_batched.trainer_table(
        "quick", 2, torch.device("cpu"), 1, ("train.epochs=1", "train.min_steps=4")
    )
    rows = _rows(text)
    assert [r[0] for r in rows] == ["one after another", "together"]
    assert rows[0][2] == "1.00x" and all(float(r[1]) > 0 for r in rows)
    assert rows[0][3] == rows[1][3]  # the kept start's loss: the same in both routes


def test_highway_table_compares_both_paths_on_every_weight_kind():
    rows = bench_highway.rows(repeats=2)
    assert [r[0] for r in rows] == [
        "one lag and one product",
        "zero forecast",
        "40 lags of one feature",
        "every weight set",
    ]
    assert all(r[1] > 0 and r[2] > 0 and r[4] == "yes" for r in rows)
