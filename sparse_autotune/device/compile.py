"""CUDA source -> loaded kernel (CuPy RawModule through NVRTC), cached in memory by source hash.

CuPy also keeps compiled cubins on disk (CUPY_CACHE_DIR, default ~/.cupy/kernel_cache), so a restarted
process does not recompile. `nvcc_check` compiles offline with the toolkit's nvcc (no GPU needed).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ..errors import CandidateError
from ..core.render import source_hash

KERNEL_NAME = "spmm_kernel"
NVRTC_OPTIONS = ("-std=c++17",)
_cache: dict[str, object] = {}
_lock = threading.Lock()


def compile_kernel(source: str, name: str = KERNEL_NAME, options: tuple = ()):
    """Compile with NVRTC for the current device and return the RawKernel; CandidateError on failure. `options`: more
    NVRTC options (a family's `arch`, e.g. -arch=sm_90a: NVRTC takes it beside CuPy's own -arch=sm_90)."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    key = source_hash(source) + name + "".join(options)
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        mod = cp.RawModule(code=source, options=NVRTC_OPTIONS + tuple(options), backend="nvrtc")
        kern = mod.get_function(name)
        kern.compile()  # force compilation now, not at the first launch
    except Exception as exc:  # noqa: BLE001 - NVRTC errors carry the log in the message
        log = str(exc)
        raise CandidateError("compile", log.splitlines()[0] if log else type(exc).__name__, log) from None
    with _lock:
        _cache[key] = kern
    return kern


class _PtxKernel:
    """A function of a PTX module, called like a CuPy RawKernel; holds the module so it stays loaded."""

    def __init__(self, module, function):
        self.module = module
        self.function = function

    @property
    def kernel(self):
        """The cupy.cuda.function.Function, as RawKernel.kernel gives it."""
        return self.function

    def __call__(self, grid, block, args, shared_mem=0):
        self.function(grid, block, args, shared_mem=shared_mem)


def function_ptr(fn) -> int:
    """The CUfunction handle of a compiled kernel (a RawKernel, for the current device, or a PTX module's function):
    what cuLaunchKernel takes. Keep `fn` alive while the handle is used (it holds the loaded module)."""
    return int(fn.kernel.ptr)


def reserve_smem(fn, dynamic: int) -> None:
    """Let `fn` (a RawKernel or a PTX module's function) launch with `dynamic` bytes of dynamic shared memory. A block
    may use 48 KiB of shared memory, static and dynamic together, unless its function opts in to more: so it opts in
    (to `dynamic`) where its static shared memory plus `dynamic` is over 48 KiB. CandidateError when the device refuses.
    """
    if dynamic <= 0:
        return
    from cupy.cuda import driver  # noqa: PLC0415
    ptr = function_ptr(fn)
    static = driver.funcGetAttribute(driver.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, ptr)
    if static + dynamic <= 48 * 1024:
        return
    try:
        driver.funcSetAttribute(ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(dynamic))
    except Exception as exc:  # noqa: BLE001
        raise CandidateError("launch", f"cannot reserve {dynamic} bytes of dynamic shared memory (and {static} static): "
                             f"{exc}") from None


def compile_ptx(source: str, name: str = KERNEL_NAME):
    """Load PTX through the driver's JIT assembler (cuModuleLoadData) and return the function.

    The driver keeps JIT-compiled PTX in its own disk cache (CUDA_CACHE_PATH, default ~/.nv/ComputeCache),
    so a restarted process does not assemble the same module again; in-process it is cached by source hash."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    key = "ptx:" + source_hash(source) + name
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        mod = cp.cuda.function.Module()
        mod.load(source.encode() + b"\0")
        kern = _PtxKernel(mod, mod.get_function(name))
    except Exception as exc:  # noqa: BLE001
        log = str(exc)
        raise CandidateError("compile", log.splitlines()[0] if log else type(exc).__name__, log) from None
    with _lock:
        _cache[key] = kern
    return kern


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def nvcc_check(source: str, arch: str = "sm_90", timeout: float = 120) -> str:
    """Compile `source` to a cubin with nvcc; return ptxas' resource report. Raises CandidateError."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / ("k.ptx" if re.search(r"^\.version ", source, re.MULTILINE) else "k.cu")
        src.write_text(source)
        proc = subprocess.run(
            [nvcc, f"-arch={arch}", "-cubin", *(["-std=c++17"] if src.suffix == ".cu" else []), "-Xptxas", "-v", "-o", str(Path(tmp) / "k.cubin"), str(src)],
            capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise CandidateError("compile", f"nvcc exit {proc.returncode}", proc.stderr)
    return proc.stderr
