"""Shared helpers for the benchmarks: timing with warm-up and a plain-text/markdown table."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from tsconv.runfolder import cpu_name


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summary(times)


def summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def timeit_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time several functions round-robin (see `time_rounds`); median, min and max of each."""
    return {name: summary(t) for name, t in time_rounds(fns, repeats, warmup).items()}


def time_rounds(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Each function's times, round by round: a slow spell of a shared machine then hits all of
    them alike and their ratios stay meaningful. Each timed call follows an untimed one of the
    same function, as in a training loop, so it does not pay for the caches and allocator state
    the previous function left behind."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_name()} ({platform.machine()}), {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {dev}"
    )


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, device: torch.device) -> None:
    """One optimizer step on `loss`, waiting for a GPU to finish so that timings are honest."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
