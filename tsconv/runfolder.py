"""Atomic writes and run manifests.

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
from pathlib import Path
from typing import Any

from tsconv.errors import OutputError


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


def write_manifest(folder: Path, *, complete: bool, extra: dict[str, Any] | None = None) -> None:
    """List every file in `folder` with its sha256; `complete` tells a reader the run finished."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".")
    }
    manifest = {"complete": complete, "written_at": now_utc(), "files": files, **(extra or {})}
    write_json(folder / "manifest.json", manifest)
