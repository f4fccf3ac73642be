"""Predictions of a trained model at given rows of a panel, without a pass per window where it can."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tsconv.engine.runtime import amp_dtype
from tsconv.engine.windows import Panel, chunk_inputs, chunk_plan, last_step_inputs
from tsconv.models.fast.window_ends import window_end_outputs, window_end_plan
from tsconv.models.layers import ForecastModel
from tsconv.models.tcn import TCN


def fits_in_window(model: ForecastModel, window: int) -> bool:
    return model.receptive_field <= window


def predicts_without_windows(model: ForecastModel, window: int) -> bool:
    """Whether `predict_rows` shares work between rows instead of a pass per window."""
    if fits_in_window(model, window):
        return True
    return isinstance(model, TCN) and window_end_plan(model, window) is not None


def predict_rows(
    model: ForecastModel,
    panel: Panel,
    rows: torch.Tensor,
    window: int,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = False,
    rows_per_chunk: int = 512,
    chunks_per_call: int | None = None,
) -> np.ndarray:
    """Scaled prediction at each global row, as from the window of `window` bars ending there.

    When the receptive field fits in the window, the prediction at row t depends on the last
    receptive-field bars only, so one pass over a chunk of consecutive rows (plus that much
    context) gives the same numbers as one window per row, for about window/(1 + context /
    rows_per_chunk) times less work. Otherwise the window's own zero padding is part of the
    input: a TCN then shares the values that do not depend on where the window starts
    (`_predict_window_ends`), and other models get a pass per window as in training.
    """
    model.eval().to(device)
    rows = torch.as_tensor(rows, dtype=torch.int64)
    if len(rows) == 0:
        return np.zeros(0, dtype=np.float32)
    offsets = torch.as_tensor(panel.offsets, dtype=torch.int64)
    ticker = torch.searchsorted(offsets, rows, right=True).clamp(max=len(offsets) - 1) - 1
    if (rows >= offsets[-1]).any() or (rows - offsets[ticker] < window - 1).any():
        raise ValueError("predict_rows: a row has fewer than window - 1 bars of its own before it")
    if not fits_in_window(model, window):
        plan = window_end_plan(model, window) if isinstance(model, TCN) else None
        if plan is None:
            return predict_windows(model, panel, rows, window, device, batch_size, amp)
        return _predict_window_ends(
            model, panel, rows, window, device, amp, plan, rows_per_chunk, chunks_per_call
        )
    context = model.receptive_field - 1

    def chunk_outputs(x: torch.Tensor) -> torch.Tensor:
        return model(x)[:, 0, context:]

    return _predict_chunks(
        chunk_outputs, panel, rows, context, device, amp, rows_per_chunk, chunks_per_call
    )


def _predict_chunks(
    chunk_outputs: Callable[[torch.Tensor], torch.Tensor],
    panel: Panel,
    rows: torch.Tensor,
    context: int,
    device: torch.device,
    amp: bool,
    rows_per_chunk: int,
    chunks_per_call: int | None,
) -> np.ndarray:
    """Predictions at `rows` from chunks of up to `rows_per_chunk` consecutive rows, each with
    `context` bars before its first row; `chunk_outputs` maps a batch of chunk inputs
    (B, F, context + rows_per_chunk) to (B, rows_per_chunk) predictions."""
    order = torch.argsort(rows, stable=True)
    firsts, chunk = chunk_plan(rows[order], rows_per_chunk)
    length = context + rows_per_chunk
    per_call = chunks_per_call or CHUNKS_PER_CALL[device.type == "cuda"]
    outs = []
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype(device), enabled=amp):
        for group in firsts.split(per_call):
            x = fixed_batch(chunk_inputs(panel, group, context, length), per_call).to(device)
            outs.append(chunk_outputs(x)[: len(group)].float().cpu())
    out = torch.cat(outs)
    pred = torch.empty(len(rows))
    pred[order] = out[chunk, rows[order] - firsts[chunk]]
    return pred.numpy()


def fixed_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with zero rows appended up to `size` along the first dimension."""
    if len(x) == size:
        return x
    return torch.cat([x, x.new_zeros(size - len(x), *x.shape[1:])])


def _predict_window_ends(
    model: TCN,
    panel: Panel,
    rows: torch.Tensor,
    window: int,
    device: torch.device,
    amp: bool,
    plan: list[dict[str, list[int]]],
    rows_per_chunk: int,
    chunks_per_call: int | None = None,
) -> np.ndarray:
    """`predict_windows`' numbers (each row's window on its own, zero padding and all) from
    one dense pass per chunk of consecutive rows plus the few window-specific values
    (`tsconv.models.fast.window_ends`). Every chunk computes all `rows_per_chunk` windows, wanted or
    not, so its arithmetic has the same shapes however many rows (or future bars) exist."""
    every = torch.arange(rows_per_chunk, device=device)

    def chunk_outputs(x: torch.Tensor) -> torch.Tensor:
        return window_end_outputs(model, x, every, window, plan).view(len(x), -1)

    return _predict_chunks(
        chunk_outputs, panel, rows, window - 1, device, amp, rows_per_chunk, chunks_per_call
    )


def predict_windows(
    model: ForecastModel,
    panel: Panel,
    rows: torch.Tensor,
    window: int,
    device: torch.device,
    batch_size: int,
    amp: bool,
) -> np.ndarray:
    """Predictions at `rows` from a pass per window, each window the model's whole input."""
    out = []
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype(device), enabled=amp):
        for chunk in rows.split(batch_size):
            x = last_step_inputs(panel, chunk, window).to(device)
            out.append(model(x)[:, 0, -1].float().cpu())
    return torch.cat(out).numpy()


# Chunks predicted per call (CPU, CUDA). Every call gets exactly this many (zeros fill the
# last), so a chunk's arithmetic has the same shapes however many other chunks, i.e. however
# much data, there are: oneDNN takes other code paths for other batch sizes. On a GPU a call
# per chunk was bound by kernel launches.
CHUNKS_PER_CALL = (4, 64)
