"""Scaling and windowing: from per-ticker feature arrays to `(window, target)` batches.

All tickers live in one contiguous `(rows, features)` tensor; a window is a view
`x[start : start + L]`, so no window is ever materialised until a batch is gathered. Window starts
are described by a handful of arithmetic segments, so the index costs O(segments), not O(windows),
and a window never crosses a ticker or the end of its span.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from tsconv.data.features import TickerData
from tsconv.feature_names import is_signed_change

# --------------------------------------------------------------------------- scaling


@dataclass
class Scaler:
    """Per-feature centre and scale and the target scale, fitted on a training span only."""

    mean: np.ndarray
    std: np.ndarray
    y_scale: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> Scaler:
        """Each feature (`names`, x's columns) standardised, except the signed changes
        (`is_signed_change`: returns, momenta), which are divided by their root mean square
        and not centred, as the target is. Their zero means no move, and a training span's
        mean return is mostly noise: centring subtracts it from every forecast, and a
        momentum read against it loses the drift it predicts (docs/known_answers.md,
        session 26)."""
        x = np.asarray(x, dtype=np.float64)
        signed = np.array([is_signed_change(n) for n in names], bool)
        mean = np.where(signed, 0.0, x.mean(axis=0))
        # the spread about that centre: a standard deviation, or a root mean square
        std = np.sqrt(np.mean((x - mean) ** 2, axis=0))
        std = np.where(std > 1e-12, std, 1.0)  # a constant feature scales to zero, not NaN
        y = y[np.isfinite(y)]
        y_scale = float(np.sqrt(np.mean(y**2))) if len(y) else 1.0
        return cls(mean=mean, std=std, y_scale=y_scale if y_scale > 1e-12 else 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "y_scale": self.y_scale}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]), float(d["y_scale"]))


# --------------------------------------------------------------------------- panel


@dataclass
class Panel:
    """All tickers' scaled rows stacked: ticker i owns rows [offsets[i], offsets[i+1])."""

    x: torch.Tensor  # (R, F) float32
    y: torch.Tensor  # (R,) float32 scaled target, NaN where unknown
    offsets: np.ndarray  # (n_tickers + 1,)
    tickers: list[str]

    def rows(self, ticker_index: int, lo: int, hi: int) -> tuple[int, int]:
        base = int(self.offsets[ticker_index])
        return base + lo, base + hi


def make_panel(data: dict[str, TickerData], scalers: dict[str, Scaler]) -> Panel:
    xs, ys, offsets = [], [], [0]
    for ticker, td in data.items():
        s = scalers[ticker]
        xs.append(s.transform(td.x))
        ys.append((td.y / s.y_scale).astype(np.float32))
        offsets.append(offsets[-1] + len(td.x))
    return Panel(
        x=torch.from_numpy(np.concatenate(xs)),
        y=torch.from_numpy(np.concatenate(ys)),
        offsets=np.asarray(offsets),
        tickers=list(data),
    )


# --------------------------------------------------------------------------- windows


def window_segments(
    lo: int, hi: int, window: int, mode: str, burn_in: int, floor: int, offset: int = 0
) -> list[tuple[int, int, int, int, int]]:
    """Window starts whose loss positions cover the target rows [lo, hi) exactly once.

    Returns segments (first_start, count, stride, loss_from, loss_to): windows start at
    first_start + k * stride for k < count and take their loss on positions [loss_from, loss_to).
    `floor` is the first row that may appear in a window (the ticker's first row).

    mode "last": one window per target row, ending at it (stride 1, loss on the last position).
    mode "all": windows tile the span with stride window - burn_in; every position past the
    burn-in is a target, so each bar is computed about window/(window - burn_in) times instead
    of `window` times. `offset` (0 <= offset < stride) moves the tiling: a first window takes
    its loss on the first `offset` target rows only, and the tiling starts after them, so the
    sequence boundaries move while every row is still covered once. No window reads a row at
    or past `hi`: BatchNorm's batch statistics would see it even where a causal loss does not.
    """
    lo = max(lo, floor + window - 1 if mode == "last" else floor + burn_in)
    if hi <= lo:
        return []
    if mode == "last":
        return [(lo - window + 1, hi - lo, 1, window - 1, window)]
    stride = window - burn_in
    segs = []
    if 0 < offset < stride and lo - burn_in + window <= hi:
        segs.append((lo - burn_in, 1, 1, burn_in, burn_in + offset))
        lo += offset
    first = lo - burn_in
    full = (hi - first - window) // stride + 1 if hi - first >= window else 0
    if full > 0:
        segs.append((first, full, stride, burn_in, window))
    covered = first + (full - 1) * stride + window if full > 0 else lo
    if covered < hi:  # a last window ending at hi, taking loss only on the rows not yet covered
        start = hi - window
        if start >= floor:
            segs.append((start, 1, 1, covered - start, window))
    return segs


class WindowDataset(Dataset):
    """`(x (F, L), y (L,), loss_mask (L,))` items as views into a Panel, plus a fast `batch()`."""

    def __init__(
        self, panel: Panel, spans: list[tuple[int, int, int]], window: int, mode: str, burn_in: int
    ):
        self.panel, self.window, self.mode, self.burn_in = panel, window, mode, burn_in
        # (first row of the ticker, lo, hi) in global rows
        self.spans = [
            (int(panel.offsets[i]), int(panel.offsets[i]) + lo, int(panel.offsets[i]) + hi)
            for i, lo, hi in spans
        ]
        self.device = torch.device("cpu")
        self._index([0] * len(self.spans))
        # (R - L + 1, F, L): every window as a view, used only to gather a batch by start.
        self._xw = panel.x.unfold(0, window, 1) if len(panel.x) >= window else None
        self._yw = panel.y.unfold(0, window, 1) if len(panel.y) >= window else None

    def _index(self, offsets: list[int]) -> None:
        segs = []
        if len(self.panel.x) >= self.window:
            for (floor, lo, hi), off in zip(self.spans, offsets, strict=True):
                segs += window_segments(lo, hi, self.window, self.mode, self.burn_in, floor, off)
        seg = torch.tensor(segs, dtype=torch.int64).reshape(-1, 5).to(self.device)
        self.first, self.count, self.stride, self.loss_from, self.loss_to = seg.unbind(1)
        self.cum = torch.cumsum(self.count, 0)

    def retile(self, gen: torch.Generator) -> WindowDataset:
        """Move each span's dense tiling by a random offset (in place), so that a new pass over
        the data cuts its sequences elsewhere; the target rows covered stay the same."""
        if self.mode == "all" and self.window > self.burn_in:
            stride = self.window - self.burn_in
            offsets = torch.randint(0, stride, (len(self.spans),), generator=gen).tolist()
            self._index(offsets)
        return self

    def __len__(self) -> int:
        return int(self.cum[-1]) if len(self.cum) else 0

    def to(self, device: torch.device | str) -> WindowDataset:
        """The same windows with the data and index on `device`, so batches are gathered
        there: on a GPU a step then moves no data from the host and waits for nothing."""
        device = torch.device(device)
        moved = copy.copy(self)
        moved.device = device
        for name in ("first", "count", "stride", "loss_from", "loss_to", "cum"):
            setattr(moved, name, getattr(self, name).to(device))
        if self._xw is not None:  # move the rows, then view them again: moving a view copies
            moved._xw = self.panel.x.to(device).unfold(0, self.window, 1)
            moved._yw = self.panel.y.to(device).unfold(0, self.window, 1)
        return moved

    def locate(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seg = torch.searchsorted(self.cum, idx, right=True)
        before = self.cum[seg] - self.count[seg]
        starts = self.first[seg] + (idx - before) * self.stride[seg]
        return starts, self.loss_from[seg], self.loss_to[seg]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, loss_from, loss_to = (int(v) for v in self.locate(torch.tensor([i])))
        x = self.panel.x[start : start + self.window].T  # a view, no copy
        y = self.panel.y[start : start + self.window]
        positions = torch.arange(self.window)
        return x, y, (positions >= loss_from) & (positions < loss_to)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather a batch of windows by index: (B, F, L), (B, L) targets, (B, L) loss mask."""
        starts, loss_from, loss_to = self.locate(idx.to(self.cum.device))
        positions = torch.arange(self.window, device=loss_from.device).unsqueeze(0)
        mask = (positions >= loss_from.unsqueeze(1)) & (positions < loss_to.unsqueeze(1))
        y = self._yw[starts]
        return self._xw[starts], y, mask & torch.isfinite(y)

    def target_rows(self) -> torch.Tensor:
        """Global rows scored in "last" mode: the row each window ends at."""
        if self.mode != "last":
            raise ValueError("target_rows is defined for last-step windows only")
        ends = [
            torch.arange(int(f), int(f) + int(c))
            for f, c in zip(self.first, self.count, strict=True)
        ]
        return torch.cat(ends) + self.window - 1 if ends else torch.zeros(0, dtype=torch.int64)

    def n_targets(self) -> int:
        return int(((self.loss_to - self.loss_from) * self.count).sum()) if len(self.count) else 0


def dense_sequence(window: int, receptive_field: int, burn_in: int | None) -> tuple[int, int]:
    """(length, burn-in) of the sequences that dense targets train on.

    A position closer to a sequence's start than the receptive field reaches sees zero padding
    where prediction will see real bars, so the loss skips it. By default the burn-in is the
    whole receptive field (every training target then sees the context it sees at prediction
    time), and a window shorter than twice that is lengthened to it, so at least half of each
    sequence is targets and a bar is computed at most twice per pass. A fit shortens the
    sequence to what its spans hold (`fit_sequence`). When the receptive field is longer than
    the window, prediction pads with zeros too: sequences are windows, with half of each as
    burn-in. An explicit `train.burn_in` keeps sequences at `window`.
    """
    if burn_in is not None:
        return window, burn_in
    if receptive_field <= window:
        return max(window, 2 * (receptive_field - 1)), receptive_field - 1
    return window, window // 2


def fit_sequence(sequence: int, burn_in: int, span_ends: list[int]) -> int:
    """The dense sequence length for spans whose targets end at the given rows (counted from
    each ticker's first bar): at most `sequence`, and short enough that every span with a
    target past the burn-in holds a whole sequence, so any span longer than the receptive field
    trains. A target needs burn-in bars of context, not a sequence of twice that."""
    usable = [end for end in span_ends if end > burn_in]
    return min([sequence, *usable])


def last_step_inputs(panel: Panel, rows: torch.Tensor, window: int) -> torch.Tensor:
    """Windows ending at each global row (for prediction): (len(rows), F, window)."""
    return panel.x.unfold(0, window, 1)[rows - window + 1]


def chunk_plan(rows: torch.Tensor, per_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group sorted global rows into chunks of up to `per_chunk` consecutive rows.

    Chunks are anchored at the start of each run of consecutive rows, so a row's chunk does not
    depend on how many rows follow it: cutting the future off changes no earlier chunk.
    Returns (first row of each chunk, chunk index of each row).
    """
    if len(rows) == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    new_run = torch.ones(len(rows), dtype=torch.bool)
    new_run[1:] = rows[1:] != rows[:-1] + 1
    run_start = rows[new_run][torch.cumsum(new_run, 0) - 1]
    offset = rows - run_start
    new_chunk = new_run | (offset % per_chunk == 0)
    chunk = torch.cumsum(new_chunk, 0) - 1
    return rows[new_chunk], chunk


def chunk_inputs(panel: Panel, firsts: torch.Tensor, context: int, length: int) -> torch.Tensor:
    """(len(firsts), F, length) inputs whose position `context` is each chunk's first row.

    Rows past the end of the panel are zeros: a causal model never reads them for the rows
    it is asked about, and a fixed length keeps the arithmetic identical however much data
    follows."""
    need = int(firsts.max()) - context + length if len(firsts) else 0
    x = panel.x
    if need > len(x):
        x = torch.cat([x, x.new_zeros(need - len(x), x.shape[1])])
    return x.unfold(0, length, 1)[firsts - context]
