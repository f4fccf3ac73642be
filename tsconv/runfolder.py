"""Run folders: every file's name, atomic writes, the manifest and the folder's life.

`RunFolder` is the one place that names the files of a run folder (train, backtest, sweep).
Every output goes to a temporary file in the destination folder and is renamed into place, so a
reader sees either the old file or the complete new one, never half of it.

A run holds its folder locked from start to end (`locked`), so two runs never mix their files.
Its manifest says `complete: false` before anything else is written (`start`, `reopen`), lists
the files --resume may keep with their sha256 as each is written (`record`), and says
`complete: true` only at the end, over the files of that one run (`write_manifest`). --resume
keeps a file only if it still has the recorded bytes (`verify`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsconv.errors import FolderError, OutputError


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
    files = dict(
        _entry(run, p)
        for p in sorted(run.path.rglob("*"))
        # a sweep's trial and holdout folders have manifests of their own
        if p.is_file() and p.name != run.manifest.name and not p.name.startswith(".")
    )
    _write_manifest(run, complete, files, extra)


def _write_manifest(
    run: RunFolder, complete: bool, files: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    manifest = {"complete": complete, "written_at": now_utc(), "files": files, **(extra or {})}
    write_json(run.manifest, manifest)


def _entry(run: RunFolder, path: Path) -> tuple[str, dict[str, Any]]:
    return _name(run, path), {"sha256": sha256(path), "bytes": path.stat().st_size}


def _name(run: RunFolder, path: Path) -> str:
    return Path(path).relative_to(run.path).as_posix()


# ------------------------------------------------------------ the folder's life


@contextlib.contextmanager
def locked(run: RunFolder) -> Iterator[None]:
    """Hold the run folder for a run's life: two runs writing into one folder at once would
    mix their files under one manifest. An OS lock on the folder itself (no lock file to
    leave behind), released by the OS however the process ends, kill -9 included; a second
    run fails at once rather than wait. A folder created here and still empty at the end (a
    run that failed before writing anything) is removed."""
    path = run.path
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(f"cannot write to {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderError(
                f"{path}: another tsconv run is writing into this folder now; wait for it to "
                "end, or choose another folder"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if nothing was written


def read_manifest(run: RunFolder) -> dict[str, Any] | None:
    """The run's manifest, None when there is none; an unreadable one is an error."""
    try:
        manifest = json.loads(run.manifest.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FolderError(f"{run.manifest}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise FolderError(f"{run.manifest}: not a tsconv manifest (no files listed)")
    return manifest


def holds(run: RunFolder) -> tuple[str, bool] | None:
    """The run in the folder, if any: its kind (a training run, backtest or sweep) and
    whether it finished. Runs of older tsconv versions have a manifest only once finished,
    so the files that mark a run count too; an unreadable manifest is an unfinished run."""
    marks = {
        "sweep": [run.study, run.space],
        "training run": [run.model, run.training_state],
        "backtest": [run.results_config, run.predictions],
    }
    kind = next((k for k, paths in marks.items() if any(p.exists() for p in paths)), None)
    try:
        manifest = read_manifest(run)
    except FolderError:
        manifest = {}
    if manifest is None and kind is None:
        return None
    return kind or "run", bool(manifest and manifest.get("complete") is True)


def start(run: RunFolder, *, overwrite: bool) -> None:
    """Before a new run writes anything into `run`: refuse a folder that holds another run
    unless `overwrite` (its files are then removed), and say in the manifest that the folder
    holds an unfinished run with no files yet, so no earlier `complete: true` outlives it."""
    held = holds(run)
    if held is not None and not overwrite:
        raise FolderError(_held(run, *held))
    old = _readable_manifest(run)
    _write_manifest(run, False, {})
    if held is not None:
        _clear(run, old, sweep=held[0] == "sweep")


def _held(run: RunFolder, kind: str, finished: bool) -> str:
    """Why a new run is refused, and what to do instead."""
    command = {"training run": "train", "backtest": "backtest", "sweep": "sweep"}.get(kind)
    resume = f"`tsconv {command} --resume {run.path}` continues it, " if command else ""
    return (
        f"{run.path} already holds {'a finished' if finished else 'an unfinished'} {kind}: "
        f"{'' if finished else resume}--overwrite replaces it, or choose another --out"
    )


def _readable_manifest(run: RunFolder) -> dict[str, Any]:
    try:
        return read_manifest(run) or {"files": {}}
    except FolderError:
        return {"files": {}}


def _clear(run: RunFolder, old: dict[str, Any], *, sweep: bool) -> None:
    """Remove what an earlier run wrote: the files its manifest lists (inside the folder
    only) and every file a tsconv command names; a sweep's trial and holdout folders too."""
    properties = [getattr(run, k) for k, v in vars(RunFolder).items() if isinstance(v, property)]
    named = [*(p for p in properties if isinstance(p, Path)), *run.fold_files()]
    for path in [*(run.path / name for name in old["files"]), *named]:
        if path != run.manifest and _inside(run, path) and path.is_file():
            path.unlink()
    for folder in [run.folds, *([run.path / "trials", run.holdout.path] if sweep else [])]:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)


def _inside(run: RunFolder, path: Path) -> bool:
    return Path(path).resolve().is_relative_to(run.path.resolve())


def reopen(run: RunFolder, rewritten: Iterable[Path] = ()) -> None:
    """A resumed run: before anything is rewritten, the manifest says the run is unfinished;
    it keeps the records of the files --resume may keep, not those of `rewritten`."""
    manifest = read_manifest(run) or {"files": {}}
    drop = {_name(run, p) for p in rewritten}
    _write_manifest(run, False, {k: v for k, v in manifest["files"].items() if k not in drop})


def record(run: RunFolder, paths: Iterable[Path]) -> None:
    """Add `paths`, just written, with their sha256 to the unfinished run's manifest: the
    files --resume may keep, and checks before keeping them."""
    manifest = read_manifest(run) or {"files": {}}
    _write_manifest(run, False, manifest["files"] | dict(_entry(run, p) for p in paths))


def recorded(run: RunFolder, manifest: dict[str, Any] | None, path: Path) -> bool:
    return manifest is not None and _name(run, path) in manifest["files"]


def verify(run: RunFolder, paths: Iterable[Path], manifest: dict[str, Any] | None = None) -> None:
    """Each of `paths` still has the bytes the run recorded: --resume keeps nothing else (an
    edited fold would otherwise join new results under a new `complete: true`)."""
    manifest = manifest if manifest is not None else read_manifest(run)
    if manifest is None:
        raise FolderError(
            f"{run.path}: no {run.manifest.name}, so the files --resume would keep cannot be "
            "checked; --overwrite starts the run again"
        )
    for path in paths:
        entry = manifest["files"].get(_name(run, path)) if _inside(run, path) else None
        if not isinstance(entry, dict):
            raise FolderError(
                f"{path}: not recorded in {run.manifest}, so --resume cannot check it; "
                "--overwrite starts the run again"
            )
        if not path.is_file() or sha256(path) != entry.get("sha256"):
            state = "changed" if path.is_file() else "deleted"
            raise FolderError(
                f"{path}: {state} since the run wrote it (sha256 recorded in "
                f"{run.manifest.name}); --resume keeps only the run's own files: restore it, or "
                "--overwrite starts the run again"
            )


def verify_finished(run: RunFolder) -> None:
    """Every file of a finished run (a sweep's trial) as its manifest lists it."""
    manifest = read_manifest(run)
    if manifest is None or manifest.get("complete") is not True:
        raise FolderError(f"{run.path}: not a finished run (no complete {run.manifest.name})")
    verify(run, [run.path / name for name in manifest["files"]], manifest)
