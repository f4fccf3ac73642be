"""Independent tasks (walk-forward folds, sweep trials) in several local processes or as Ray
tasks; tsconv schedules nothing of its own.

Both engines are context managers that take the data every task shares once and yield
`run(tasks, fn, finished)`, which calls `fn(shared, task)` for every task and
`finished(task, result)` here, in this process, as each one ends (so only this process writes
files). They stay up between calls: a sweep runs its trials in rounds without restarting
processes or a cluster each time.

- `local_pool`: this process and a standard-library pool of N - 1 (spawned, so a worker never
  inherits a half-initialised thread pool from its parent). One rule shares the work while the
  pool's processes are still starting (importing torch takes seconds): the pool takes tasks
  from the last (the largest, for callers that sort them), this process from the first that
  no worker has claimed yet. A task is claimed by creating its file in a folder of the run
  (atomic on every OS) rather than by cancelling its future, so a normal run cancels nothing:
  Python 3.11's pool crashes its manager thread, with a traceback, when a worker dies while a
  cancelled future is queued. The shared data is pickled to a temporary file once and read by
  each worker, not sent once per task, and not through the pipe that starts a worker (a worker
  that dies while starting, e.g. because a script calling tsconv lacks the `if __name__ ==
  "__main__":` guard that spawn needs, would leave the parent blocked writing to it).
- `ray_cluster`: the shared data goes into the object store once; each task declares its CPUs
  (and a GPU on CUDA); a task whose worker dies is retried by Ray, re-run from the start.

Every process uses `threads` intra-op threads; results do not depend on that count
(tests/test_parallel.py; `import tsconv` pins MKL to its strict reproducible mode for that).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from tsconv.engine.runtime import intra_op_threads
from tsconv.errors import TsconvError, UsageError

_shared: Any = None  # a worker's copy of the shared data, set once by _start

Task = Callable[[Any, Any], Any]  # fn(shared, task) -> result; a module-level function
Finished = Callable[[Any, Any], None]  # finished(task, result)
Runner = Callable[[Sequence[Any], Task, Finished], None]


def _start(path: str, threads: int) -> None:
    global _shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited on POSIX; Windows: from here on
    torch.set_num_threads(threads)
    try:
        with open(path, "rb") as f:
            _shared = pickle.load(f)
    except FileNotFoundError:  # started after its run ended (this process did every task)
        pass


class _Skipped:
    """What a worker returns for a task another process claimed first."""


def _claim(claims: str, index: int) -> bool:
    """True for the one process that creates task `index`'s file in the folder `claims`."""
    try:
        os.close(os.open(os.path.join(claims, str(index)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except (FileExistsError, FileNotFoundError):  # claimed, or the run is over
        return False
    return True


@contextlib.contextmanager
def _claims(folder: str) -> Iterator[str]:
    """A new folder of task claims inside `folder`, closed on exit by renaming it: a worker
    still holding queued tasks of a finished run then finds no folder to claim in. Deleting
    the claims instead would let such a worker re-create a claim just deleted, run that task
    a second time for nothing, and make the folder's removal fail (seen with 32 tasks)."""
    claims = tempfile.mkdtemp(dir=folder)
    try:
        yield claims
    finally:
        os.rename(claims, claims + ".closed")


def _call(fn: Task, task: Any, claims: str, index: int) -> Any:
    return fn(_shared, task) if _claim(claims, index) else _Skipped()


@contextlib.contextmanager
def local_pool(shared: Any, workers: int, threads: int) -> Iterator[Runner]:
    """`run(tasks, fn, finished)` over this process and `workers - 1` spawned ones. On an
    error or Ctrl-C the workers are stopped and the exception propagates; finished tasks
    were handed over. One worker: every task here, in order, no pool."""
    if workers <= 1:
        yield lambda tasks, fn, finished: [finished(task, fn(shared, task)) for task in tasks]
        return
    with tempfile.TemporaryDirectory(prefix="tsconv-") as tmp:
        path = Path(tmp) / "shared.pkl"
        with open(path, "wb") as f:
            pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
        pool = ProcessPoolExecutor(
            workers - 1,
            mp_context=mp.get_context("spawn"),
            initializer=_start,
            initargs=(str(path), threads),
        )

        def run(tasks: Sequence[Any], fn: Task, finished: Finished) -> None:
            with _claims(tmp) as claims:
                _run_claimed(tasks, fn, finished, claims)

        def _run_claimed(tasks: Sequence[Any], fn: Task, finished: Finished, claims: str) -> None:
            order = list(enumerate(tasks))
            with _sigint_ignored():  # the first submits start the workers
                futures = {i: pool.submit(_call, fn, t, claims, i) for i, t in reversed(order)}
            pending = {futures[i]: t for i, t in order}
            theirs = []
            try:
                for i, task in order:  # the pool starts from the last, this process here
                    if _claim(claims, i):
                        finished(task, fn(shared, task))
                    else:
                        theirs.append(futures[i])
                    _hand_over(pending, finished, [f for f in pending if f.done()])
                # a task this process ran leaves a future that only returns _Skipped
                _hand_over(pending, finished, as_completed([f for f in theirs if f in pending]))
            except BrokenProcessPool:
                raise TsconvError(
                    "a worker process stopped abruptly (killed, out of memory, or started from "
                    'a script without the `if __name__ == "__main__":` guard that spawned '
                    "processes need); finished work is kept, --resume continues"
                ) from None

        with intra_op_threads(threads):
            try:
                yield run
            except BaseException:
                _stop_workers(pool)
                raise
        pool.shutdown(wait=False)  # the workers exit while this process writes its outputs


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Processes started inside inherit an ignored SIGINT, which Python then leaves ignored.
    Ctrl-C in a terminal reaches every process of its group, and a worker interrupted while
    importing torch or reading the shared data printed a traceback; this process alone
    handles Ctrl-C and stops the workers (`_stop_workers`). A Ctrl-C within the few
    milliseconds of starting them is lost. Only the main thread may set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the workers now, not after their current task (they ignore Ctrl-C), without
    cancelling futures: Python 3.11's pool manager crashes with a traceback when a worker
    dies while a cancelled future is queued. Queued tasks would find their run's claims
    closed and skip."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False)


def _hand_over(pending: dict[Future, Any], finished: Finished, done) -> None:
    for future in done:
        result = future.result()
        task = pending.pop(future)
        if not isinstance(result, _Skipped):
            finished(task, result)


def _ray_call(shared: Any, fn: Task, task: Any, threads: int) -> Any:
    torch.set_num_threads(threads)
    return fn(shared, task)


@contextlib.contextmanager
def ray_cluster(shared: Any, threads: int, gpus: int, address: str | None) -> Iterator[Runner]:
    """`run(tasks, fn, finished)` as Ray tasks of `threads` CPUs and `gpus` GPUs each.
    Without `address`, a local cluster is started, bound to 127.0.0.1 and with its files in a
    temporary folder, and stopped at the end; with one, tsconv connects to that cluster and
    leaves it running."""
    if address is None:
        # A cluster started for this run serves only this machine: Ray's local-only mode (the
        # one it uses on macOS and Windows) binds every server to 127.0.0.1. Read when Ray is
        # imported, so set before.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UsageError(
            "executor: ray needs Ray, which is not installed: pip install 'tsconv[ray]'"
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
            remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=3)(_ray_call)
            ref = ray.put(shared)
            yield lambda tasks, fn, finished: _run_ray(
                ray, remote, ref, threads, tasks, fn, finished
            )
        finally:
            if started:
                ray.shutdown()


def _run_ray(ray, remote, shared_ref, threads, tasks, fn: Task, finished: Finished) -> None:
    refs = {remote.remote(shared_ref, fn, task, threads): task for task in reversed(tasks)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None
            finished(refs[done[0]], result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


# --------------------------------------------------------------------------- folds


def _member(prep: Any, task: tuple[Any, int, torch.device]) -> Any:
    """One ensemble member of a full-retrain fold (its final weights are not needed)."""
    from tsconv.recipes.backtest import fit_member

    fold, member, device = task
    return fit_member(prep, fold, member, device, keep_state=False)


def run_folds(
    prep: Any,
    folds: Sequence[Any],
    device: torch.device,
    finished: Callable[[Any, Any, dict[str, Any]], None],
    *,
    workers: int = 1,
    threads: int = 1,
    executor: str = "local",
    address: str | None = None,
) -> None:
    """Run every ensemble member of `folds` (in order of size, smallest first) as a task in
    `workers` local processes or on Ray, calling `finished(fold, predictions, info)` here as
    each fold's last member ends."""
    from tsconv.recipes.backtest import combine_members

    members = prep.cfg.train.ensemble
    engine = (
        ray_cluster(prep, threads, int(device.type == "cuda"), address)
        if executor == "ray"
        else local_pool(prep, workers, threads)
    )
    fits: dict[int, list[Any]] = {}

    def member_done(task: tuple[Any, int, torch.device], fitted: Any) -> None:
        fold = task[0]
        fits.setdefault(fold.index, []).append(fitted)
        if len(fits[fold.index]) == members:
            finished(fold, *combine_members(fits.pop(fold.index)))

    with engine as run:
        run([(fold, m, device) for fold in folds for m in range(members)], _member, member_done)
