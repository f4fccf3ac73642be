"""One model trained across processes: `torchrun --nproc-per-node N -m tsconv train ...`.

torchrun starts N copies of the command and tells each its rank in the environment; tsconv joins
them into one process group (gloo on the CPU, nccl on CUDA GPUs, one GPU a process) and trains
with DistributedDataParallel. Every rank prepares the same data and draws the same global batch
of sequences from the same seeded generator, then gathers and runs only its own slice of it;
DDP sums the gradients, so a step equals the one-process step on the whole batch (the loss is
each slice's squared errors over the whole batch's count, tests/test_ddp.py). What differs:
dropout draws its masks per slice, and BatchNorm (the multi-scale model) normalises each slice
by its own statistics. Validation runs in full on every rank (identical, so early stopping
agrees without messages). Rank 0 alone writes the run folder; `--resume` reads it on every rank.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from tsconv.errors import TrainingError
from tsconv.runfolder import RunFolder


def start(device: torch.device) -> None:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, and MASTER_ADDR and MASTER_PORT of its TCP store) when there is more than one
    process. TSCONV_INIT_METHOD=file:///shared/path meets instead through a file: torch's TCP
    store listens on every network interface, a file listens on none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device.type == "cuda" else "gloo"
    method = os.environ.get("TSCONV_INIT_METHOD")
    if method:
        rank = int(os.environ["RANK"])
        dist.init_process_group(backend, init_method=method, rank=rank, world_size=world)
    else:
        dist.init_process_group(backend)


def stop() -> None:
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait until rank 0 has written the run folder
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device, run: Path) -> Iterator[None]:
    """`start` and, once the body has finished, `stop`. A rank that dies (killed, out of
    memory) breaks the others' next collective with a gloo or NCCL error, which came out as
    70 lines of traceback: twice, once more from the barrier of `stop`. It is one line that
    says what happened and how to go on; after a failure no barrier waits for the dead."""
    start(device)
    try:
        yield
    except BaseException as exc:
        part = shard()
        if dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the others may be gone
        if isinstance(exc, RuntimeError) and part is not None and _lost_peer(exc):
            raise TrainingError(_lost_words(part, run)) from None
        raise
    stop()


def _lost_peer(exc: RuntimeError) -> bool:
    """A collective broke because another process is gone: torch raises DistBackendError
    from a collective, and a plain RuntimeError with gloo's or NCCL's text from inside DDP's
    backward hooks."""
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        words in text for words in ("gloo", "NCCL", "Connection reset", "Connection closed")
    )


def _lost_words(part: tuple[int, int], run: Path) -> str:
    rank, world = part
    folder = RunFolder(run)
    then = (
        f"the last finished epoch is saved: `tsconv train --resume {run}` under torchrun continues"
        if folder.training_state.exists()
        else "no epoch had finished; start the run again"
    )
    return (
        f"another process of the run stopped (killed, or out of memory?), so rank {rank} of "
        f"{world} cannot go on; {then}"
    )


def shard() -> tuple[int, int] | None:
    """(rank, world size) inside a process group of more than one process, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def is_main() -> bool:
    return shard() is None or dist.get_rank() == 0


def total(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over the ranks (in place; itself outside a process group)."""
    if shard() is not None:
        dist.all_reduce(value)
    return value


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])
