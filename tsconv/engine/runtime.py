"""Where and how a run computes: device, threads, seeds and the random generators' state."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from tsconv.errors import ConfigError


def select_device(name: str) -> torch.device:
    device = _pick_device(name)
    if device.type == "cuda":
        # TF32 convolutions keep 10 mantissa bits: predictions would differ from CPU's in the
        # third digit. The tiny models here gain nothing from it; train.amp is the speed knob.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: cuda requested but no CUDA GPU is available (use auto or cpu)"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("train.device: mps requested but not available (use auto or cpu)")
    return torch.device(name)


def default_threads(cores: int, load: float, ceiling: int) -> int:
    """Intra-op threads for `train.threads` unset: the `cores` this process may run on less
    those other processes keep busy (the 1-minute load average, rounded), at most `ceiling`
    (torch's own default: the physical cores, or OMP_NUM_THREADS), and at least 1.

    torch's threads spin-wait for each other, so on cores another process is using they wait
    for the scheduler instead: with one busy process on 2 cores, a 3-fold backtest that takes
    8.5 s on an idle machine had not finished after 120 s on torch's 2 threads, and took
    13.7 s on 1. The models here gain little from a second thread even when it is free."""
    return max(1, min(ceiling, cores - int(load + 0.5)))


# torch's thread count when tsconv first looked: its own default unless the process set one
_TORCH_DEFAULT = torch.get_num_threads()
_settled: list[int] = []  # this process's count, once chosen or given


def settle_threads() -> int:
    """This process's intra-op thread count, chosen once (`default_threads` from the load at
    the time) and kept for the rest of the process: a resume or a sweep's holdout in the same
    process computes on the same count. A count the process set itself (a pool worker's
    share, a caller's torch.set_num_threads) is kept as it is."""
    if not _settled:
        if torch.get_num_threads() == _TORCH_DEFAULT:
            torch.set_num_threads(default_threads(_cores(), _load(), _TORCH_DEFAULT))
        _settled.append(torch.get_num_threads())
    return torch.get_num_threads()


# numpy's BLAS (OpenBLAS) on one thread, for small fits: it wakes its threads for the ridge
# fits' small eigendecompositions and leaves them spinning afterwards, taking the cores torch
# trains on (on a busy machine a 64 x 64 one took 13 ms instead of 1), and the GARCH
# likelihood's optimiser ends a few ulps apart on one thread and on several (a Ray worker's
# one against the parent's two moved a forecast by 1e-9): a run must give the same bytes on
# any worker and core count.
one_blas_thread = threadpool_limits.wrap(limits=1, user_api="blas")


def give_threads(threads: int) -> None:
    """Set this process's count (a worker's share of the cores): no default replaces it."""
    torch.set_num_threads(threads)
    _settled[:] = [threads]


def recorded_threads(versions: Path) -> int | None:
    """The thread count a run recorded in its versions.json, for its resume: MKL's sums may
    depend on the count (on AMD CPUs), and a resume ends with the uninterrupted run's bytes
    only on the same count."""
    try:
        return int(json.loads(versions.read_text())["threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's or taskset's cores, not the host's
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return 0.0


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` (unset: this process's, `settle_threads`),
    put back on exit: a run called from a test or a notebook leaves the caller's setting as
    it found it (once settled)."""
    settle_threads()
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # cuDNN may otherwise pick kernels whose sums run in a different order on every run.
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return torch.Generator().manual_seed(seed)


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "gen": gen.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _py_state(),
    }
    if device.type == "cuda":  # dropout on a GPU draws from the device's own generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _py_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":  # not when a GPU run resumes on the CPU
        torch.cuda.set_rng_state(state["cuda"], device)
    gen.set_state(state["gen"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(int(v) for v in p[1].tolist()), p[2]))


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
