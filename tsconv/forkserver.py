"""The process pool workers start from (`tsconv.executors`): a fork server.

A spawned worker starts a fresh interpreter and imports torch, pandas and tsconv, then
`torch._dynamo` at its first optimizer step: 3-4.5 s of a core on a 2-core machine
(docs/performance.md), paid again by every worker of every pool. The fork server is one clean
process per process that runs pools: it imports all that once, runs no computation (so it has
no OpenMP or intra-op thread pool a fork could break), and forks each worker from there, ready
in tens of milliseconds. Nothing here imports torch, so the command line can start the server
(`prestart`) before its own imports, and the two import side by side on two cores.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext

# What the server imports besides the task function's module: the main script (which every
# worker imports as a spawned one would, as `__mp_main__`: hence the `if __name__ ==
# "__main__":` guard), torch, and `torch._dynamo`, which torch imports at a process's first
# optimizer step (about 1 s).
PRELOAD = ["__main__", "torch", "torch._dynamo"]


def context(module: str) -> BaseContext:
    """How pool workers start: forked from the fork server, which imports `module` (the task
    function's) and PRELOAD once for every pool of this process; spawned where there is no
    fork server (Windows). The first pool, or `prestart`, starts the server; later pools
    reuse it, whatever their module."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, module])  # no effect once the server runs
    return ctx


def prestart(module: str) -> None:
    """Start the fork server now, importing `module`, without waiting for its imports: a
    command that will run a pool calls this before importing torch itself."""
    if "forkserver" in mp.get_all_start_methods():
        from multiprocessing import forkserver

        context(module)
        forkserver.ensure_running()
