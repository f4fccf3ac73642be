"""Independent tasks (walk-forward folds' ensemble members, sweep trials) in this process,
in several local processes or as Ray tasks; tsconv schedules nothing of its own.

`choose(cfg, tasks)` decides, in one place, how a run's tasks execute: an `Executor`, whose
`start(shared)` is a context manager that takes the data every task shares once and yields
`run(tasks, fn, finished)`. That calls `fn(shared, task)` for every task and
`finished(task, result)` here, in this process, as each one ends (so only this process writes
files). An executor stays up between calls: a sweep runs its trials in rounds without
restarting processes or a cluster each time. The caller passes the task function: this module
knows nothing of what a task computes.

- local (`_local_pool`): this process and a standard-library pool of N - 1, forked from a
  fork server (`tsconv.forkserver`: one clean process per process that runs pools, which has
  imported the task's module, torch and `torch._dynamo` and run no computation, so a worker
  never inherits a half-initialised thread pool and starts in tens of milliseconds instead of
  the seconds a spawned one spends importing; spawned where there is none). One rule shares the
  work while the pool's processes are still starting (importing torch takes seconds): the pool
  takes tasks from the last (the largest, for callers that sort them), this process from the
  first that no worker has claimed yet. A task is claimed by creating its file in a folder of
  the run (atomic on every OS) rather than by cancelling its future, so a normal run cancels
  nothing: Python 3.11's pool crashes its manager thread, with a traceback, when a worker dies
  while a cancelled future is queued. The shared data is pickled to a temporary file once and
  read by each worker, not sent once per task, and not through the pipe that starts a worker
  (a worker that dies while starting, e.g. because a script calling tsconv lacks the
  `if __name__ == "__main__":` guard that spawn needs, would leave the parent blocked writing
  to it).
- ray (`_ray_cluster`): the shared data goes into the object store once; each task declares its
  CPUs (and a GPU on CUDA); a task whose worker dies is retried by Ray, re-run from the start.

Every process uses `threads` intra-op threads; results do not depend on that count
(tests/test_parallel.py; `import tsconv` pins MKL to its strict reproducible mode for that).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tsconv import forkserver
from tsconv.config import Config
from tsconv.engine.runtime import give_threads, intra_op_threads, select_device, settle_threads
from tsconv.errors import TsconvError, UsageError

_shared: Any = None  # a worker's copy of the shared data, set once by _start

Task = Callable[[Any, Any], Any]  # fn(shared, task) -> result; a module-level function
Finished = Callable[[Any, Any], None]  # finished(task, result)
Runner = Callable[[Sequence[Any], Task, Finished], None]

# The execution keys of a run whose tasks run one after another in this process.
SERIAL = {"backtest.workers": 1, "backtest.executor": "local"}


@dataclass(frozen=True)
class Executor:
    """How a run's tasks execute: `workers` local processes (this one included; 1: here, in
    order), or Ray tasks; each process or task computes on `threads` intra-op threads."""

    kind: Literal["local", "ray"]
    workers: int
    threads: int
    gpus: int = 0  # a Ray task's
    address: str | None = None  # an existing Ray cluster's; None: a local one for the run

    @property
    def parallel(self) -> bool:
        return self.kind == "ray" or self.workers > 1

    def start(self, shared: Any) -> AbstractContextManager[Runner]:
        if self.kind == "ray":
            return _ray_cluster(shared, self.threads, self.gpus, self.address)
        return _local_pool(shared, self.workers, self.threads)

    def settings(self) -> dict[str, Any]:
        """This executor as the config's execution keys."""
        return {
            "backtest.workers": self.workers,
            "backtest.executor": self.kind,
            "backtest.ray_address": self.address,
        }


def choose(cfg: Config, tasks: int, *, chained: bool = False) -> Executor:
    """How `tasks` independent tasks of a run with config `cfg` execute.

    Local: `backtest.workers` processes (auto: this process's thread count, the cores other
    processes leave free unless set: `runtime.settle_threads`), at most one per task;
    `chained` tasks (each starts from the last one's result) run here, one after another. Ray
    schedules its own tasks, one GPU each on CUDA. Threads: `train.threads` when set, in
    every process alike, so results do not depend on the worker count on any CPU; else the
    free cores shared out among the workers (a Ray task: 1). MKL's sums may depend on the
    thread count (docs/performance.md)."""
    bt, threads = cfg.backtest, cfg.train.threads
    if bt.executor == "ray" and not chained:
        gpus = int(select_device(cfg.train.device).type == "cuda")
        return Executor("ray", 1, threads or 1, gpus, bt.ray_address)
    cores = settle_threads()  # the cores not busy (`default_threads`), or train.threads
    workers = cores if bt.workers == "auto" else bt.workers
    workers = 1 if chained else max(1, min(int(workers), tasks))
    return Executor("local", workers, threads or max(1, cores // workers))


def _start(path: str, threads: int, environ: dict[str, str] | None = None) -> None:
    global _shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited on POSIX; Windows: from here on
    if environ is not None:  # a forked worker has the fork server's, from when it started
        os.environ.clear()
        os.environ.update(environ)
    give_threads(threads)
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
    a second time for nothing, and make the folder's removal fail."""
    claims = tempfile.mkdtemp(dir=folder)
    try:
        yield claims
    finally:
        os.rename(claims, claims + ".closed")


def _call(fn: Task, task: Any, claims: str, index: int) -> Any:
    return fn(_shared, task) if _claim(claims, index) else _Skipped()


@contextlib.contextmanager
def _local_pool(shared: Any, workers: int, threads: int) -> Iterator[Runner]:
    """`run(tasks, fn, finished)` over this process and `workers - 1` others. On an
    error or Ctrl-C the workers are stopped and the exception propagates; finished tasks
    were handed over. One worker: every task here, in order, no pool."""
    if workers <= 1:
        yield lambda tasks, fn, finished: [finished(task, fn(shared, task)) for task in tasks]
        return
    with tempfile.TemporaryDirectory(prefix="tsconv-") as tmp:
        path = Path(tmp) / "shared.pkl"
        with open(path, "wb") as f:
            pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
        pools: list[ProcessPoolExecutor] = []  # started by the first run, when its task is known

        def pool_for(fn: Task) -> ProcessPoolExecutor:
            if not pools:
                pools.append(
                    ProcessPoolExecutor(
                        workers - 1,
                        mp_context=forkserver.context(fn.__module__),
                        initializer=_start,
                        initargs=(str(path), threads, dict(os.environ)),
                    )
                )
            return pools[0]

        def run(tasks: Sequence[Any], fn: Task, finished: Finished) -> None:
            with _claims(tmp) as claims:
                _run_claimed(tasks, fn, finished, claims)

        def _run_claimed(tasks: Sequence[Any], fn: Task, finished: Finished, claims: str) -> None:
            order = list(enumerate(tasks))
            pool = pool_for(fn)
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
                for pool in pools:
                    _stop_workers(pool)
                raise
        for pool in pools:
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
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets it
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False)
    # Let the pool's manager thread see its dead workers and close its wake-up pipe now: at
    # exit, Python 3.11's hook writes to that pipe unlocked, and when the thread closed it at
    # the same moment, Ctrl-C ended in a traceback (OSError: Bad file descriptor; CPython
    # gh-125451, since fixed there with a lock). Bounded: an interrupt never hangs.
    if manager is not None:
        manager.join(timeout=10)


def _hand_over(pending: dict[Future, Any], finished: Finished, done) -> None:
    for future in done:
        result = future.result()
        task = pending.pop(future)
        if not isinstance(result, _Skipped):
            finished(task, result)


def _ray_call(shared: Any, fn: Task, task: Any, threads: int) -> Any:
    give_threads(threads)
    return fn(shared, task)


@contextlib.contextmanager
def _ray_cluster(shared: Any, threads: int, gpus: int, address: str | None) -> Iterator[Runner]:
    """`run(tasks, fn, finished)` as Ray tasks of `threads` CPUs and `gpus` GPUs each.
    Without `address`, a local cluster is started, bound to 127.0.0.1 and with its files in a
    temporary folder, and stopped at the end; with one, tsconv connects to that cluster and
    leaves it running."""
    check_ray_address(address)
    if address is None or _loopback(address):
        # A cluster started for this run serves only this machine: Ray's local-only mode (the
        # one it uses on macOS and Windows) binds every server to 127.0.0.1. Given a loopback
        # address, Ray otherwise swaps it for the host's network address. Read when Ray is
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
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except ConnectionError as exc:  # `auto` and no cluster found: one line already
                raise UsageError(f"{_ADDRESS} {address}: {exc}") from None
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


_ADDRESS = "--ray-address (backtest.ray_address)"
CONNECT_SECONDS = 3.0  # a cluster's port answers in milliseconds; Ray's own retries take 150 s+
GCS_PORT = 6379  # Ray's default for `host` without a port


def check_ray_address(address: str | None) -> None:
    """Refuse, in one line and within seconds, an address Ray could not use: `ray://` without
    Ray Client's package, or a host and port where nothing answers a TCP connection. Ray
    itself retried a dead address for minutes. `auto` (and `local`) are Ray's to resolve."""
    if address is None or address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    if client and not _has_ray_client():
        raise UsageError(
            f"{_ADDRESS} {address}: a ray:// address needs Ray Client, which is not "
            "installed: pip install 'ray[client]'"
        )
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise UsageError(
            f"{_ADDRESS} {address}: nothing answers at {host}:{port} ({_why(exc)}); start the "
            "cluster first (`ray start --head` prints its address), or leave the address "
            "unset to run a local cluster"
        ) from None


def _has_ray_client() -> bool:
    try:
        import grpc  # noqa: F401  what `pip install 'ray[client]'` adds to Ray
    except ImportError:
        return False
    return True


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of `host:port`, `[v6]:port`, `host` or `ray://host:port`."""
    rest = address.removeprefix("ray://").rstrip("/")
    host, colon, port = rest.rpartition(":")
    if not colon or "]" in port:  # no port (an IPv6 address's colons are bracketed)
        host, port = rest, str(10001 if address.startswith("ray://") else GCS_PORT)
    if not port.isdigit():
        raise UsageError(f"{_ADDRESS} {address}: not host:port (e.g. 127.0.0.1:6379)")
    return host.strip("[]"), int(port)


def _loopback(address: str) -> bool:
    if address in ("auto", "local"):
        return False
    host = _host_port(address)[0]
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _why(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {CONNECT_SECONDS:g} s"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return (exc.strerror or str(exc)).lower()


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
