"""Walk-forward folds in several local processes (`backtest.workers`, `--workers N`).

`retrain: full` folds are independent: each fits its own scaler and model from the fold's seed,
so they can run in any order and in separate processes. N processes are this one and a
standard-library pool of N - 1 (spawned, so a worker never inherits a half-initialised thread
pool from its parent); tsconv schedules nothing itself beyond one rule: the pool takes the
folds from the largest, this process from the smallest that no worker has claimed yet, so the
work is shared while the pool's processes are still starting (importing torch takes seconds).
The prepared data is pickled to a temporary file once and read by each worker, not sent once
per fold, and not through the pipe that starts a worker (a worker that dies while starting,
e.g. because a script calling tsconv lacks the `if __name__ == "__main__":` guard that spawn
needs, would leave the parent blocked writing to it). Every process uses `threads` intra-op
threads; results do not depend on that count (tests/test_walkforward.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from tsconv.errors import TsconvError, UsageError

_prep: Any = None  # a worker's copy of the prepared data, set once by _start

Finished = Callable[[Any, Any, dict[str, Any]], None]


def _start(path: str, threads: int) -> None:
    global _prep
    torch.set_num_threads(threads)
    with open(path, "rb") as f:
        _prep = pickle.load(f)


def _fold(prep: Any, fold: Any, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """One full-retrain fold's predictions and info (its final weights are not needed)."""
    from tsconv.walkforward import run_fold

    preds, info, _ = run_fold(prep, fold, device, None)
    return preds, info


def _run(fold: Any, device: torch.device) -> tuple[Any, dict[str, Any]]:
    return _fold(_prep, fold, device)


def run_folds(
    prep: Any,
    folds: Sequence[Any],
    device: torch.device,
    workers: int,
    threads: int,
    finished: Finished,
) -> None:
    """Run `folds` (in order of size, smallest first) in `workers` processes, calling
    `finished(fold, predictions, info)` here as each one ends. On an error or Ctrl-C the folds
    not yet started are cancelled and the exception propagates; finished ones were handed
    over."""
    with tempfile.TemporaryDirectory(prefix="tsconv-") as tmp:
        path = Path(tmp) / "prepared.pkl"
        with open(path, "wb") as f:
            pickle.dump(prep, f, protocol=pickle.HIGHEST_PROTOCOL)
        pool = ProcessPoolExecutor(
            workers - 1,
            mp_context=mp.get_context("spawn"),
            initializer=_start,
            initargs=(str(path), threads),
        )
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            pending = {pool.submit(_run, fold, device): fold for fold in reversed(folds)}
            unclaimed = list(pending)  # largest first; this process pops from the end
            while unclaimed:
                future = unclaimed.pop()
                if future.cancel():  # no worker has it: run it here
                    fold = pending.pop(future)
                    finished(fold, *_fold(prep, fold, device))
                _hand_over(pending, finished, [f for f in pending if f.done()])
            _hand_over(pending, finished, as_completed(list(pending)))
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            raise TsconvError(
                "a fold's worker process stopped abruptly (killed, out of memory, or started "
                'from a script without the `if __name__ == "__main__":` guard that spawned '
                "processes need); finished folds are kept, --resume continues"
            ) from None
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            torch.set_num_threads(previous)
        pool.shutdown(wait=False)  # the workers exit while this process writes the report


def _hand_over(pending: dict[Future, Any], finished: Finished, done) -> None:
    for future in done:
        preds, info = future.result()
        finished(pending.pop(future), preds, info)


def _ray_fold(prep: Any, fold: Any, device: str, threads: int) -> tuple[Any, dict[str, Any]]:
    torch.set_num_threads(threads)
    return _fold(prep, fold, torch.device(device))


def run_folds_ray(
    prep: Any,
    folds: Sequence[Any],
    device: torch.device,
    threads: int,
    address: str | None,
    finished: Finished,
) -> None:
    """Run `folds` as Ray tasks, each declaring `threads` CPUs (and one GPU on CUDA), calling
    `finished(fold, predictions, info)` here as each one ends. The prepared data goes into the
    object store once. A task whose worker dies is retried by Ray (its fold re-run from the
    start, nothing half-written: only this process writes). Without `address`, a local
    cluster is started for this run, bound to 127.0.0.1 and with its files in a temporary
    folder, and stopped at the end; with one, tsconv connects to that cluster and leaves it."""
    if address is None:
        # A cluster started for this run serves only this machine: Ray's local-only mode (the
        # one it uses on macOS and Windows) binds every server to 127.0.0.1. Read when Ray is
        # imported, so set before.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UsageError(
            "backtest.executor: ray needs Ray, which is not installed: pip install 'tsconv[ray]'"
        ) from None
    started = not ray.is_initialized()
    with tempfile.TemporaryDirectory(prefix="tsconv-ray-") as tmp:
        if started and address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        elif started:
            ray.init(
                _node_ip_address="127.0.0.1",
                _temp_dir=tmp,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
        try:
            _run_ray(ray, prep, folds, device, threads, finished)
        finally:
            if started:
                ray.shutdown()


def _run_ray(ray, prep, folds, device, threads, finished) -> None:
    gpus = 1 if device.type == "cuda" else 0
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=3)(_ray_fold)
    shared = ray.put(prep)
    refs = {task.remote(shared, fold, str(device), threads): fold for fold in reversed(folds)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                preds, info = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None
            finished(refs[done[0]], preds, info)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
