"""The process pool workers start from (`tsconv.executors`): a fork server.

A spawned worker starts a fresh interpreter and imports torch, pandas and tsconv, then
`torch._dynamo` at its first optimizer step: 3-4.5 s of a core on a 2-core machine
(docs/performance.md), paid again by every worker of every pool. The fork server is one clean
process per process that runs pools: it imports all that once, runs no computation (so it has
no OpenMP or intra-op thread pool a fork could break), and forks each worker from there.
Nothing here imports torch, so the command line can start the server (`prestart`) before its
own imports, and the two import side by side on two cores.

The server must import what a worker would: the task function's module and the main script
(which every worker runs as `__mp_main__`, as a spawned one does: hence the `if __name__ ==
"__main__":` guard). Python's fork server is told neither this process's import path nor its
main script (3.11 drops both), so a script's modules and the script itself were imported again
in every worker (a second of each worker's start here). This module passes them itself: the
server imports it first (`BOOT`), and it reads them from the server's environment.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from multiprocessing.context import BaseContext

# What the server imports after this module, besides the task function's module: torch, and
# `torch._dynamo`, which torch imports at a process's first optimizer step (about 1 s).
PRELOAD = ["torch", "torch._dynamo"]
# This process's import path, arguments and main script, for the server (`_boot`), as JSON in
# its environment.
BOOT = "TSCONV_FORKSERVER"


def _boot() -> None:
    """In the fork server, before its other imports: this process's import path, and its main
    script imported as `__mp_main__` with its arguments (as a worker would), so the workers
    find both done."""
    parent = json.loads(os.environ.pop(BOOT))
    sys.path[:] = parent["path"]
    if parent["main"]:
        from multiprocessing import process, spawn

        sys.argv[:] = parent["argv"]
        process.current_process()._inheriting = True  # as the fork server does for __main__
        try:
            spawn.import_main_path(parent["main"])
        finally:
            del process.current_process()._inheriting


if BOOT in os.environ and mp.parent_process() is None:  # in the fork server only
    _boot()


def context(module: str) -> BaseContext:
    """How pool workers start: forked from the fork server, which imports `module` (the task
    function's), the main script and PRELOAD once for every pool of this process; spawned
    where there is no fork server (Windows). The first pool, or `prestart`, starts the
    server; later pools reuse it, whatever their module."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    _start_server(ctx, module)
    return ctx


def prestart(module: str) -> None:
    """Start the fork server now, importing `module`, without waiting for its imports: a
    command that will run a pool calls this before importing torch itself."""
    if "forkserver" in mp.get_all_start_methods():
        _start_server(mp.get_context("forkserver"), module)


def _start_server(ctx: BaseContext, module: str) -> None:
    """Start the server (no-op when it runs) with this process's path and main script in its
    environment, for `_boot`; returns without waiting for the server's imports."""
    from multiprocessing import forkserver, spawn

    ctx.set_forkserver_preload([__name__, *PRELOAD, module])
    # the main script a worker imports by path (a module run with -m it skips)
    main = spawn.get_preparation_data("worker").get("init_main_from_path")
    os.environ[BOOT] = json.dumps({"path": sys.path, "argv": sys.argv, "main": main})
    try:
        forkserver.ensure_running()
    finally:
        del os.environ[BOOT]
