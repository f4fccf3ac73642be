"""The end of a TCN block's convolutions on CPU as one small C kernel (fused_cpu.c), compiled
on first use: bias, ReLU, dropout with its random bits made in the same pass, the residual and
the last ReLU, and the gradients through them.

After the matrix products, the CPU train step of the seed's TCN spent its time on memory
passes and on dropout's random bits: the bits alone took about 8 ms of a 66 ms step
(`scripts/bench_train.py`), because numpy's fastest generator fills them on one thread and
torch then converts and compares them in separate passes. Here Philox4x32-10 makes them where
they are used, on torch's OpenMP threads, and each convolution's output is read and written
once: the step runs 1.09-1.15x faster than with the same ends in torch operations (the "no C
compiler" row of `scripts/bench_train.py`). The backward keeps byte masks instead of the
second activation and the output: a quarter of their memory, and 0.99-1.02x on the step.

The kernel is compiled with the system's C compiler (`$CC`, else `cc`) into a cache folder
(`$TSCONV_CACHE`, else `$XDG_CACHE_HOME/tsconv`, else `~/.cache/tsconv`), once per machine
and source, in well under a second. Without a compiler, or with `TSCONV_CPU_KERNEL=0`,
training uses torch operations and numpy-generated dropout masks (tsconv/models/layers.py):
the same distribution, other draws, so the same seed gives other numbers on such a machine.
`kernel_info()` says which route is in use, and each run records it next to its versions.
"""

from __future__ import annotations

import ctypes
import functools
import getpass
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused_cpu.c")
_lock = threading.Lock()
_status = "not loaded"


def cache_dir() -> Path:
    if os.environ.get("TSCONV_CACHE"):
        return Path(os.environ["TSCONV_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tsconv"


def compiler() -> str | None:
    """The C compiler the kernel is built with: `$CC`, else `cc`, if it is on the PATH."""
    return shutil.which(os.environ.get("CC", "cc"))


def _cpu_signature() -> str:
    """What -march=native compiles for: a library built on one CPU may not run on another
    that shares the cache folder (a home folder on a cluster)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_uses_libgomp() -> bool:
    """Link OpenMP only when torch's own libgomp is loaded: the library then resolves to the
    same runtime and shares torch's threads. A second OpenMP runtime would spin its own
    threads against torch's on the same cores."""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _compile(cc: str, out: Path, openmp: bool) -> tuple[str | None, str]:
    """Build the library at `out`, trying fewer flags until one works: (the flags used, or
    None, and the compiler's first error line)."""
    attempts = [["-march=native"], []]
    if openmp:
        attempts = [[*a, "-fopenmp"] for a in attempts] + attempts
    error = ""
    for extra in attempts:
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        cmd = [cc, "-O3", "-shared", "-fPIC", *extra, str(SOURCE), "-o", str(tmp)]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            error = str(e)
            continue
        if done.returncode == 0:
            os.replace(tmp, out)  # atomic: a concurrent run sees no half-written library
            return " ".join(extra), ""
        tmp.unlink(missing_ok=True)
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        error = lines[0] if lines else f"exit code {done.returncode}"
    return None, error


def _load() -> ctypes.CDLL | None:
    global _status
    if os.environ.get("TSCONV_CPU_KERNEL", "1") == "0":
        _status = "disabled by TSCONV_CPU_KERNEL=0"
        return None
    cc = compiler()
    if cc is None:
        _status = "no C compiler found"
        return None
    openmp = _torch_uses_libgomp()
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), cc, _cpu_signature(), str(openmp)))
    ).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"tsconv-{getpass.getuser()}"):
        lib = folder / f"fused_cpu-{key}{suffix}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
                continue  # never load a library from a folder someone else controls
            dll, how = _open(lib, cc, openmp)
        except OSError:
            continue
        if dll is None:
            _status = how
            return None
        _status = f"{how}: {lib}"
        return dll
    _status = "no writable cache folder for the compiled kernel"
    return None


def _open(lib: Path, cc: str, openmp: bool) -> tuple[ctypes.CDLL | None, str]:
    """Load the cached build at `lib`, building it first if it is missing, and again if it does
    not load (a damaged file): (the library or None, how it was got or why not)."""
    for attempt in ("cached", "compiled"):
        if attempt == "cached" and not lib.exists():
            continue
        if attempt == "compiled":
            flags, error = _compile(cc, lib, openmp)
            if flags is None:
                return None, f"compiling {SOURCE.name} with {cc} failed: {error}"
            attempt = f"compiled with {cc} {flags}".rstrip()
        try:
            return _declare(ctypes.CDLL(str(lib))), attempt
        except OSError as e:
            failure = f"loading {lib} failed: {e}"
    return None, failure


def _declare(dll: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64, u32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_int
    f = dll.tsc_block_epilogue_f32
    f.argtypes, f.restype = [ptr, i64, ptr, i64, ptr, ptr, ptr, u32, u32, u32, u32, i32], i32
    f = dll.tsc_block_grads_f32
    f.argtypes, f.restype = [ptr, ptr, i64, ptr, ptr, i32], None
    f = dll.tsc_philox4x32_10
    f.argtypes, f.restype = [ptr, ptr, ptr], None
    return dll


@functools.cache
def _kernel() -> ctypes.CDLL | None:
    with _lock:
        return _load()


def available() -> bool:
    return _kernel() is not None


def kernel_info() -> str:
    """How CPU training ends its TCN convolutions and draws dropout masks, for the run's record:
    the masks differ between the two."""
    if available():
        return f"fused C kernel, Philox4x32-10 dropout ({_status})"
    return f"torch operations, numpy SFC64 dropout ({_status})"


def drop_threshold(p: float) -> int:
    """Drop an element when its 16 random bits are below this: P(drop) = p quantised to
    1/65536 (at most 65535/65536, so that 1 / P(keep) stays finite for any p < 1)."""
    return min(round(p * 65536), 65535)


def keep_scale(drop: int) -> float:
    """Dropout's 1 / P(keep) for the threshold `drop_threshold` gives."""
    return 65536 / (65536 - drop)


def new_key() -> int:
    """A 63-bit Philox key from torch's generator, so `torch.manual_seed` fixes the masks."""
    return int(torch.randint(0, 2**63 - 1, ()))


def block_epilogue_(
    y: torch.Tensor,
    bias: torch.Tensor | None,
    drop: int,
    key: int,
    stream: int,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The end of a TCN block's convolution on its time-major (rows, channels) output, in one
    pass: y = dropout(relu(y + bias)) in place, keep made from (key, stream) element by element
    in memory order and without dropout's scale (the caller's); drop = 0 is no dropout.
    With `residual`, returns (relu(y + residual), masks): the block's output, and the bytes
    (y > 0, output > 0) that `block_grads` needs, a quarter of the memory of the two float
    tensors they stand for. Dense float32 CPU tensors only."""
    lib = _kernel()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernel is not available: {_status}")
    for t in (y, bias, residual):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise ValueError("the fused CPU kernel needs float32 CPU tensors")
        if t is not None and not t.is_contiguous():
            raise ValueError("the fused CPU kernel needs contiguous tensors")
    channels = y.shape[-1] if y.dim() > 1 else 1
    if bias is not None and bias.numel() != channels:
        raise ValueError("bias must have one value per channel")
    if residual is not None and residual.shape != y.shape:
        raise ValueError("residual must have y's shape")
    out = masks = None
    if residual is not None:
        out = torch.empty_like(y)
        masks = torch.empty((2, *y.shape), dtype=torch.uint8)
    failed = lib.tsc_block_epilogue_f32(
        y.data_ptr(),
        y.numel(),
        None if bias is None else bias.data_ptr(),
        channels,
        *(None if t is None else t.data_ptr() for t in (residual, out, masks)),
        key & 0xFFFFFFFF,
        key >> 32,
        stream,
        drop,
        torch.get_num_threads(),
    )
    if failed:
        raise MemoryError("the fused CPU kernel could not allocate its bias tile")
    return None if out is None else (out, masks)


def block_grads(gout: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, g2) from the output gradient and `block_epilogue_`'s masks: g = gout where the
    output > 0, else 0 (the residual's gradient), and g2 = g where y > 0, else 0."""
    lib = _kernel()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernel is not available: {_status}")
    gout = gout.contiguous()
    if gout.dtype != torch.float32 or masks.shape != (2, *gout.shape):
        raise ValueError("block_grads needs a float32 gradient and the epilogue's masks")
    g, g2 = torch.empty_like(gout), torch.empty_like(gout)
    n, threads = gout.numel(), torch.get_num_threads()
    lib.tsc_block_grads_f32(
        gout.data_ptr(), masks.data_ptr(), n, g.data_ptr(), g2.data_ptr(), threads
    )
    return g, g2


def relu_dropout_(y: torch.Tensor, drop: int, key: int, stream: int) -> torch.Tensor:
    """max(y, 0) * keep in place (see `block_epilogue_`), for a tensor of any shape."""
    if not y.is_contiguous():
        raise ValueError("the fused CPU kernel needs contiguous tensors")
    block_epilogue_(y.view(-1), None, drop, key, stream)
    return y


def keep_flags(n: int, drop: int, key: int, stream: int) -> torch.Tensor:
    """n float32 0/1 keep flags of (key, stream): what `block_epilogue_` keeps."""
    return relu_dropout_(torch.ones(n), drop, key, stream)


def philox4x32_10(counter: tuple[int, ...], key: tuple[int, int]) -> tuple[int, ...]:
    """One Philox4x32-10 block, for the known-answer tests."""
    lib = _kernel()
    if lib is None:
        raise RuntimeError(f"the CPU dropout kernel is not available: {_status}")
    ctr, k, out = (
        (ctypes.c_uint32 * 4)(*counter),
        (ctypes.c_uint32 * 2)(*key),
        (ctypes.c_uint32 * 4)(),
    )
    lib.tsc_philox4x32_10(ctr, k, out)
    return tuple(out)
