"""Training steps replayed as CUDA graphs: small models on a GPU are bound by kernel launches."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from tsconv.engine.runtime import amp_dtype
from tsconv.engine.windows import WindowDataset

# Capturing costs warm-up passes and the capture itself, dozens of replayed steps' worth
# (docs/performance.md, "Measurements behind the code"): fits with fewer full batches than
# this run eagerly.
GRAPH_MIN_STEPS = 150


@contextlib.contextmanager
def graphed_steps(
    model: nn.Module,
    ds: WindowDataset,
    batch_size: int,
    amp: bool,
    device: torch.device,
    enabled: bool,
) -> Iterator[bool]:
    """Small models on a GPU are bound by kernel launches, not arithmetic. Inside this
    context `model.forward` replays its training forward and backward for a full batch as
    CUDA graphs (`torch.cuda.make_graphed_callables`); in eval mode it runs eagerly, and a
    batch of another size must go through the eager forward saved before (as `fit` does).
    Dropout still draws new masks on every replay. The capture's warm-up passes draw masks
    and update BatchNorm's running statistics; both are put back to where they were before
    them, so the capture leaves no trace in training, and a resumed run (which captures again)
    replays the same masks as the uninterrupted one. Yields whether graphs were captured (not
    when disabled or without a full batch); the eager forward is back on exit, also after an
    error."""
    if not enabled or len(ds) < batch_size:
        yield False
        return
    sample = ds.batch(torch.arange(batch_size))[0]
    model.train()
    with warnings.catch_warnings():
        # The captured graph keeps the parameters' gradient accumulators made on the capture
        # stream; PyTorch warns when replayed gradients arrive from the main stream. Values
        # are unaffected (tests/test_cuda.py compares graphed and eager training).
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
        rng = torch.cuda.get_rng_state(device)
        buffers = [(b, b.clone()) for b in model.buffers()]
        with torch.autocast(device.type, amp_dtype(device), enabled=amp, cache_enabled=False):
            torch.cuda.make_graphed_callables(model, (sample,))
        torch.cuda.set_rng_state(rng, device)
        for live, saved in buffers:  # in place: the graphs read and write these addresses
            live.copy_(saved)
        try:
            yield True
        finally:
            del model.forward  # the instance attribute the capture set; the class's one remains
