"""Folds in parallel processes (`--workers`) and on Ray: with `train.threads` set, the same
bytes as the serial run; Ctrl-C and --resume; a dying worker; and how close results with other
thread counts are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import tsconv.executors as parallel
import tsconv.recipes.backtest as backtest
from tests.conftest import ohlcv_from_returns, random_walk_returns, tiny_config
from tsconv.cli import app
from tsconv.errors import TsconvError
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.prepare import prepare
from tsconv.recipes.walkforward import make_folds, run_fold

REAL_MEMBER = backtest.fit_member_task

runner = CliRunner()
ARGS = [
    "backtest",
    "--config",
    "quick",
    "--set",
    "train.min_steps=20",
    "--set",
    "backtest.train_span=2300",
    "--set",
    "backtest.test_span=250",
    # every process runs its folds on one thread: the bytes then cannot depend on the workers
    "--set",
    "train.threads=1",
]
SAME = ["predictions.parquet", "metrics.json", "report.html"]


def test_two_workers_write_the_serial_runs_bytes(tmp_path):
    serial, par = tmp_path / "serial", tmp_path / "par"
    r = runner.invoke(app, [*ARGS, "--out", str(serial)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*ARGS, "--out", str(par), "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "folds on 2 processes in" in r.output
    timing = json.loads((par / "timing.json").read_text())
    assert timing["workers"] == 2 and timing["threads"] == 1
    # what the numbers depend on besides the config
    versions = json.loads((par / "versions.json").read_text())
    assert versions["cpu"] and versions["threads"] == 1 and versions["mkl_cbwr"]
    folds = pd.read_csv(par / "folds.csv")
    assert len(folds) >= 3 and list(folds["fold"]) == list(range(len(folds)))
    for name in SAME:
        assert (serial / name).read_bytes() == (par / name).read_bytes(), name
    # the resolved config records how it ran; the results' config (report, resume) does not
    assert "workers: 2" in (par / "config.yaml").read_text()
    assert "workers" not in json.loads((par / "folds" / "config.json").read_text())["backtest"]


def test_interrupted_parallel_run_resumes_to_the_same_bytes(tmp_path):
    frames = {t: ohlcv_from_returns(random_walk_returns(900, seed=i)) for i, t in enumerate("AB")}
    serial_cfg = tiny_config(backtest={"train_span": 300, "test_span": 120}, train={"threads": 1})
    cfg = tiny_config(
        backtest={"train_span": 300, "test_span": 120, "workers": 2}, train={"threads": 1}
    )
    prep = prepare(cfg, frames)
    run_backtest(serial_cfg, tmp_path / "serial", prep=prepare(serial_cfg, frames))

    def stop(done, total, info):
        raise KeyboardInterrupt

    out = tmp_path / "par"
    with pytest.raises(KeyboardInterrupt):
        run_backtest(cfg, out, prep=prep, on_fold=stop)
    kept = list((out / "folds").glob("fold_*.parquet"))
    assert len(kept) == 1 and not (out / "metrics.json").exists()
    seen = []
    m = run_backtest(cfg, out, prep=prep, resume=True, on_fold=lambda d, t, i: seen.append(d))
    assert m["timing"]["folds_resumed"] == 1
    assert seen == list(range(1, m["folds"] + 1))  # the progress counts finished folds
    columns = [list(pd.read_csv(d / "folds.csv").columns) for d in [tmp_path / "serial", out]]
    assert columns[0] == columns[1] and "resumed" not in columns[1]
    for name in SAME:
        assert (tmp_path / "serial" / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_ctrl_c_in_a_terminal_keeps_finished_folds_in_one_line_and_resume_finishes(tmp_path):
    """Ctrl-C in a terminal reaches every process of the group, the pool's workers too."""
    import glob
    import signal

    out = tmp_path / "par"
    args = [*ARGS, "--set", "train.ensemble=2", "--workers", "2", "--out", str(out)]
    run = subprocess.Popen(
        [sys.executable, "-m", "tsconv", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not glob.glob(str(out / "folds" / "fold_*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert err.strip().splitlines() == [
        "interrupted; finished work is saved (use --resume to continue)"
    ]
    assert not (out / "predictions.parquet").exists()
    # a fold is kept once the manifest records its predictions and its info (Ctrl-C may fall
    # after the files are written and before they are recorded: such a fold runs again)
    recorded = json.loads((out / "manifest.json").read_text())["files"]
    infos = [n for n in recorded if n.startswith("folds/fold_") and n.endswith(".json")]
    kept = sum(n.removesuffix(".json") + ".parquet" in recorded for n in infos)
    r = runner.invoke(app, ["backtest", "--resume", str(out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert (f"{kept} kept from the interrupted run" if kept else "folds on 2 processes") in r.output
    serial = tmp_path / "serial"
    args = [*ARGS, "--set", "train.ensemble=2", "--out", str(serial)]
    assert runner.invoke(app, args).exit_code == 0
    for name in SAME:
        assert (serial / name).read_bytes() == (out / name).read_bytes(), name


def _dies_in_a_pool_worker(prep, task):
    """A fold that kills the pool worker running it (a worker has its shared data set; this
    process, which runs folds too, has not), while this process waits for that before its
    first fold. Module-level, so spawned workers can import it."""
    died = Path(os.environ["TSCONV_TEST_DIED"])
    if parallel._shared is not None:
        died.touch()
        os._exit(1)
    deadline = time.monotonic() + 120
    while not died.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return REAL_MEMBER(prep, task)


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="3.14 stops workers its own way")
def test_stopping_the_workers_closes_the_pools_wakeup_before_exit():
    """After Ctrl-C stops the workers, the pool's manager thread has ended and closed its
    wake-up pipe, so Python 3.11's exit hook cannot write to it while it closes (the race
    that printed "OSError: Bad file descriptor" after "interrupted" now and then)."""
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1)
    pool.submit(time.sleep, 30)
    deadline = time.monotonic() + 30
    while not pool._processes and time.monotonic() < deadline:
        time.sleep(0.01)
    manager, wakeup = pool._executor_manager_thread, pool._executor_manager_thread_wakeup
    parallel._stop_workers(pool)
    assert not manager.is_alive()
    assert wakeup._closed


def test_a_worker_that_dies_stops_the_run_cleanly_and_resume_finishes_it(tmp_path, monkeypatch):
    frames = {t: ohlcv_from_returns(random_walk_returns(900, seed=i)) for i, t in enumerate("AB")}
    serial_cfg = tiny_config(backtest={"train_span": 300, "test_span": 120}, train={"threads": 1})
    cfg = tiny_config(
        backtest={"train_span": 300, "test_span": 120, "workers": 2}, train={"threads": 1}
    )
    run_backtest(serial_cfg, tmp_path / "serial", prep=prepare(serial_cfg, frames))
    out = tmp_path / "par"
    with monkeypatch.context() as m:
        m.setenv("TSCONV_TEST_DIED", str(tmp_path / "died"))  # the spawned worker inherits it
        m.setattr(backtest, "fit_member_task", _dies_in_a_pool_worker)
        with pytest.raises(TsconvError, match="stopped abruptly .* --resume continues"):
            run_backtest(cfg, out, prep=prepare(cfg, frames))
    assert not (out / "predictions.parquet").exists() and not (out / "metrics.json").exists()
    assert (tmp_path / "died").exists()
    # the fold this process was running when the worker died is finished and kept
    assert len(list((out / "folds").glob("fold_*.parquet"))) == 1
    m = run_backtest(cfg, out, prep=prepare(cfg, frames), resume=True)
    assert m["timing"]["folds_resumed"] == 1
    for name in SAME:
        assert (tmp_path / "serial" / name).read_bytes() == (out / name).read_bytes(), name


def test_a_closed_run_takes_no_more_claims(tmp_path):
    """Workers may still hold queued tasks of a run that has ended (this process ran them);
    once the run is over none of them may claim, not even a task whose claim file a clean-up
    just deleted."""
    with parallel._claims(str(tmp_path)) as claims:
        assert parallel._claim(claims, 0) and not parallel._claim(claims, 0)
        assert parallel._claim(claims, 1)
    assert not parallel._claim(claims, 0) and not parallel._claim(claims, 2)
    (closed,) = tmp_path.iterdir()
    assert sorted(p.name for p in closed.iterdir()) == ["0", "1"]


def test_both_processes_share_the_tasks_and_each_is_handed_over_once(tmp_path):
    done = []
    shared = (os.getpid(), str(tmp_path / "worker-ran"))
    with parallel.Executor("local", workers=2, threads=1).start(shared) as run:
        run(list(range(60)), _waits_for_the_worker, lambda task, pid: done.append((task, pid)))
    assert sorted(task for task, _ in done) == list(range(60))
    assert {pid for _, pid in done} - {os.getpid()}  # the worker ran some


def _waits_for_the_worker(shared, task):
    """This process's first task waits until the spawned worker has run one, so both run
    some; every task takes a little while, so the worker still holds queued ones at the end."""
    main, marker = shared
    if os.getpid() != main:
        Path(marker).touch()
    elif task == 0:
        deadline = time.monotonic() + 120
        while not Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(0.02)
    return os.getpid()


def test_fold_results_with_another_thread_count_agree_to_float_precision():
    """What `train.threads` unset (the cores shared out among the workers) gives: a fold
    trained with 1 and with 2 intra-op threads agrees to float32 precision. Bit for bit on
    Intel, where `import tsconv` selects MKL's strict reproducible mode; MKL ignores that mode
    on AMD, where some product shapes (8 input channels, 3,840 rows) differ by an ulp."""
    frames = {"A": ohlcv_from_returns(random_walk_returns(1400, seed=3))}
    for model in [{"kind": "tcn", "highway": True}, {"kind": "multiscale", "kernels": [3, 5]}]:
        cfg = tiny_config(model=model, backtest={"train_span": 1000, "test_span": 200})
        prep = prepare(cfg, frames)
        fold = make_folds(prep)[0]
        previous = torch.get_num_threads()
        try:
            got = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                preds, _, states = run_fold(prep, fold, torch.device("cpu"), None)
                got.append((preds["prediction"].to_numpy(), states[0]))
        finally:
            torch.set_num_threads(previous)
        assert got[0][0].std() > 0
        scale = np.abs(got[0][0]).max()
        np.testing.assert_allclose(got[0][0], got[1][0], rtol=1e-4, atol=1e-5 * scale)
        for k in got[0][1]:
            torch.testing.assert_close(got[0][1][k], got[1][1][k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", [None, "COMPATIBLE"])
def test_importing_tsconv_pins_mkl_to_strict_reproducible_sums(preset):
    """MKL splits a matrix product's sums by thread count unless told otherwise (the test
    above fails with MKL_CBWR=AUTO on an AVX-512 machine); tsconv asks for strict
    reproducibility before torch's first product and leaves a user's own choice alone."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    if preset:
        env["MKL_CBWR"] = preset
    code = "import tsconv, os; print(os.environ['MKL_CBWR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (preset or "AVX2,STRICT")


def test_workers_setting_and_its_errors(tmp_path):
    assert parallel.choose(tiny_config(backtest={"workers": 4}), tasks=3).workers == 3
    auto = parallel.choose(tiny_config(backtest={"workers": "auto"}), 50)
    assert auto.workers == torch.get_num_threads()
    warm = tiny_config(backtest={"workers": 2, "retrain": "warm"})
    assert not parallel.choose(warm, 10, chained=True).parallel
    on_ray = parallel.choose(tiny_config(backtest={"workers": 4, "executor": "ray"}), 10)
    assert on_ray.parallel and on_ray.threads == 1  # Ray schedules its own tasks
    for bad in ["0", "many"]:
        r = runner.invoke(app, [*ARGS, "--workers", bad, "--out", str(tmp_path / bad)])
        assert r.exit_code == 2 and f"--workers {bad}: backtest.workers" in r.output, r.output
        assert "Traceback" not in r.output and not Path(tmp_path / bad).exists()


def test_warm_retraining_says_once_that_it_runs_serially(tmp_path):
    r = runner.invoke(
        app,
        [
            *ARGS,
            "--set",
            "backtest.retrain=warm",
            "--set",
            "backtest.train_span=2800",
            "--workers",
            "2",
            "--out",
            str(tmp_path / "warm"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("folds run one at a time") == 1


def _listening_elsewhere() -> list[str]:
    """TCP sockets listening on anything but the loopback address (the sandbox's own service
    on port 2024 aside), from `ss`; empty where `ss` is missing."""
    import shutil
    import subprocess

    if not shutil.which("ss"):
        return []
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    local = [line.split()[3] for line in lines if "ray" in line or "gcs_server" in line]
    return [a for a in local if "127.0.0.1" not in a and not a.startswith("[::1]")]


def test_ray_executor_writes_the_serial_runs_bytes_on_a_loopback_cluster_though_a_worker_dies(
    tmp_path, monkeypatch
):
    # what tsconv sets before importing Ray for a local cluster; Ray reads it at import, and
    # this test imports Ray first
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    pytest.importorskip("ray")
    import ray

    import tsconv.executors as parallel

    seen: list[list[str]] = []
    real = parallel._run_ray

    def watched(*a, **k):  # while the local cluster is up: what does it listen on?
        seen.append(_listening_elsewhere())
        return real(*a, **k)

    monkeypatch.setattr(parallel, "_run_ray", watched)
    # A worker dies mid-run (once, in fold 2): Ray retries the task in a new worker, and since
    # only this process writes, nothing of the lost attempt reaches the outputs.
    died = tmp_path / "died"

    def dies_once(prep, task):  # a local function: Ray ships it by value, patch and all
        if task[0].index == 2 and not died.exists():
            died.touch()
            os._exit(1)
        return REAL_MEMBER(prep, task)

    monkeypatch.setattr(backtest, "fit_member_task", dies_once)
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    assert runner.invoke(app, [*ARGS, "--out", str(serial)]).exit_code == 0
    r = runner.invoke(app, [*ARGS, "--out", str(on_ray), "--executor", "ray"])
    assert r.exit_code == 0, r.output
    for name in SAME:
        assert (serial / name).read_bytes() == (on_ray / name).read_bytes(), name
    assert died.exists()  # the worker did die, and the run still matches the serial one
    assert seen == [[]]  # every Ray server bound to 127.0.0.1
    assert not ray.is_initialized()  # the cluster started for the run is stopped


def test_ray_executor_without_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = runner.invoke(app, [*ARGS, "--executor", "ray", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    assert "pip install 'tsconv[ray]'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*ARGS, "--executor", "dask", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--executor dask: backtest.executor" in r.output


@pytest.mark.parametrize(
    ("cores", "load", "ceiling", "threads"),
    [
        (2, 0.2, 2, 2),  # an idle machine: torch's own default
        (2, 1.1, 2, 1),  # one busy process: torch's threads would spin against it
        (2, 7.0, 2, 1),  # overloaded: still one
        (16, 3.4, 8, 8),  # more free cores than torch's default (the physical ones)
        (16, 12.6, 8, 3),
        (4, 0.0, 1, 1),  # OMP_NUM_THREADS=1
    ],
)
def test_default_threads_are_the_cores_not_busy(cores, load, ceiling, threads):
    from tsconv.engine.runtime import default_threads

    assert default_threads(cores, load, ceiling) == threads


def test_a_run_without_train_threads_takes_the_free_cores_and_records_them(tmp_path, monkeypatch):
    """With one busy process on 2 cores, a 3-fold backtest of 8.5 s had not finished after
    120 s on torch's default of 2 threads; the process now settles on the cores not busy."""
    import tsconv.engine.runtime as runtime

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(runtime, "_TORCH_DEFAULT", 2)  # as torch started: not set by anyone
        monkeypatch.setattr(runtime, "_settled", [])
        monkeypatch.setattr(runtime, "_cores", lambda: 2)
        monkeypatch.setattr(runtime, "_load", lambda: 1.2)
        frames = {"A": ohlcv_from_returns(random_walk_returns(700, seed=1))}
        cfg = tiny_config(backtest={"train_span": 300, "test_span": 200})
        assert cfg.train.threads is None
        m = run_backtest(cfg, tmp_path / "bt", prep=prepare(cfg, frames))
        assert m["timing"]["threads"] == 1
        assert json.loads((tmp_path / "bt" / "versions.json").read_text())["threads"] == 1
        # the count stays the process's: a later run (a resume, a holdout) computes on it
        monkeypatch.setattr(runtime, "_load", lambda: 0.0)
        assert parallel.choose(cfg, 3).threads == 1
    finally:
        torch.set_num_threads(previous)


def test_a_resume_computes_on_the_interrupted_runs_thread_count(tmp_path):
    from tsconv.engine.runtime import recorded_threads

    versions = tmp_path / "versions.json"
    assert recorded_threads(versions) is None  # a new run
    versions.write_text(json.dumps({"threads": 3, "cpu": "AMD EPYC"}))
    assert recorded_threads(versions) == 3
