"""The terminal's progress bar and the words beside it, in 80 columns."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(console: Console) -> Progress:
    """Name, bar, words, elapsed and remaining time. The words stay under 40 characters (the
    longest: a fold's test dates): with the learning rate and windows a second beside the
    losses, 58 of them, rich cut both clocks to `0:0...` in 80 columns. Those two are in
    metrics.csv."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def step_words(s: dict[str, float]) -> str:
    return f"epoch {s['epoch']:.0f} loss {s['loss']:.4f}"


def epoch_words(h: dict[str, Any]) -> str:
    return f"epoch {h['epoch']} loss {h['train_loss']:.4f} val {h['val_loss']:.4f}"
