"""Run folders: every file's name, atomic writes and the manifest.

`RunFolder` is the one place that names the files of a run folder (train, backtest, sweep).
Every output goes to a temporary file in the destination folder and is renamed into place, so a
reader sees either the old file or the complete new one, never half of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsconv.errors import OutputError


@dataclass(frozen=True)
class RunFolder:
    """A run folder and the path of each file a command writes into it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------ every command

    @property
    def config(self) -> Path:
        """The resolved config (a sweep: its base config)."""
        return self.path / "config.yaml"

    @property
    def versions(self) -> Path:
        """What the numbers depend on besides the config (`run_info`)."""
        return self.path / "versions.json"

    @property
    def manifest(self) -> Path:
        """Every other file with its sha256, and whether the run finished (`write_manifest`)."""
        return self.path / "manifest.json"

    @property
    def timing(self) -> Path:
        return self.path / "timing.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    # ------------------------------------------------------------ tsconv train

    @property
    def model(self) -> Path:
        """A finished training run's checkpoint."""
        return self.path / "model.pt"

    @property
    def training_state(self) -> Path:
        """An interrupted training run's state, deleted when it finishes."""
        return self.path / "state.pt"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def epochs(self) -> Path:
        """Every epoch's losses and learning rate."""
        return self.path / "metrics.csv"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    # ------------------------------------------------------------ tsconv backtest

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.parquet"

    @property
    def returns(self) -> Path:
        """Each strategy's net return by date."""
        return self.path / "returns.parquet"

    @property
    def fold_table(self) -> Path:
        """One row per fold: its dates, rows and training record."""
        return self.path / "folds.csv"

    @property
    def folds(self) -> Path:
        """The finished folds of a backtest, kept for --resume."""
        return self.path / "folds"

    @property
    def results_config(self) -> Path:
        """The config without its execution keys, which a resume must match."""
        return self.folds / "config.json"

    def fold_predictions(self, fold: int) -> Path:
        return self.folds / f"fold_{fold:03d}.parquet"

    def fold_info(self, fold: int) -> Path:
        """Written after the fold's predictions: a fold is finished once this exists."""
        return self.folds / f"fold_{fold:03d}.json"

    def fold_state(self, fold: int) -> Path:
        """`retrain: warm`: the fold's final weights, where the next fold starts."""
        return self.folds / f"fold_{fold:03d}.pt"

    def fold_files(self) -> list[Path]:
        return sorted(self.folds.glob("fold_*"))

    # ------------------------------------------------------------ tsconv sweep

    @property
    def study(self) -> Path:
        """Optuna's record of the trials."""
        return self.path / "study.db"

    @property
    def space(self) -> Path:
        return self.path / "space.yaml"

    @property
    def sweep_result(self) -> Path:
        return self.path / "sweep.json"

    @property
    def trials_table(self) -> Path:
        return self.path / "trials.parquet"

    @property
    def leaderboard(self) -> Path:
        return self.path / "leaderboard.csv"

    def trial(self, number: int) -> RunFolder:
        """A sweep's trial: a backtest on the selection period."""
        return RunFolder(self.path / "trials" / f"{number:03d}")

    @property
    def holdout(self) -> RunFolder:
        """A sweep's chosen config, backtested on the holdout."""
        return RunFolder(self.path / "holdout")

    @property
    def error(self) -> Path:
        """Why a trial failed."""
        return self.path / "error.txt"

    def sweep_of_trial(self) -> RunFolder | None:
        """The sweep this folder is a trial of, if it is one."""
        sweep = RunFolder(self.path.resolve().parent.parent)
        if self.path.resolve().parent.name == "trials" and sweep.study.exists():
            return sweep
        return None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; a file written in place would get 0666 less the umask
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through a library writer that takes a path (e.g. `frame.to_parquet`)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def save_torch(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_info(seed: int, device: Any) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: versions, seed, the device used (the
    config may say "auto") and, on a CPU, its model, torch's thread count and MKL's
    reproducibility mode (MKL's sums may depend on all three: docs/performance.md)."""
    import torch

    info: dict[str, Any] = {
        **versions(),
        "seed": seed,
        "device": str(device),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
    }
    if getattr(device, "type", None) == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    return info


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import numpy
    import pandas
    import torch

    import tsconv

    return {
        "tsconv": tsconv.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "platform": platform.platform(),
    }


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_manifest(run: RunFolder, *, complete: bool, extra: dict[str, Any] | None = None) -> None:
    """List every file in the run folder with its sha256; `complete` tells a reader the run
    finished."""
    files = {
        str(p.relative_to(run.path)): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(run.path.rglob("*"))
        # a sweep's trial and holdout folders have manifests of their own
        if p.is_file() and p.name != run.manifest.name and not p.name.startswith(".")
    }
    manifest = {"complete": complete, "written_at": now_utc(), "files": files, **(extra or {})}
    write_json(run.manifest, manifest)
