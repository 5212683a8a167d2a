"""CUDA source -> loaded kernel (CuPy RawModule through NVRTC), cached in memory by source hash.

CuPy also keeps compiled cubins on disk (CUPY_CACHE_DIR, default ~/.cupy/kernel_cache), so a restarted
process does not recompile. `nvcc_check` builds offline (no GPU needed): NVRTC where its library loads, else the
toolkit's nvcc.
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
_smem_lock = threading.Lock()  # reserve_smem's (not held across a compile)


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
    (to `dynamic`) where its static shared memory plus `dynamic` is over 48 KiB. The opt-in is the function's (one
    CUfunction per source: compile_kernel's cache), so it only ever grows: a launcher that needs less never lowers what
    another launcher of the same function reserved. CandidateError when the device refuses."""
    if dynamic <= 0:
        return
    from cupy.cuda import driver  # noqa: PLC0415
    ptr = function_ptr(fn)
    static = driver.funcGetAttribute(driver.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, ptr)
    if static + dynamic <= 48 * 1024:
        return
    with _smem_lock:  # read and raise as one step: two threads' reservations never leave the smaller one
        if driver.funcGetAttribute(driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, ptr) >= dynamic:
            return
        try:
            driver.funcSetAttribute(ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(dynamic))
        except Exception as exc:  # noqa: BLE001
            raise CandidateError("launch", f"cannot reserve {dynamic} bytes of dynamic shared memory (and {static} "
                                 f"static): {exc}") from None


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


def _nvrtc():
    """CuPy's binding of the NVRTC library where the library loads (no GPU needed), else None. The first use builds an
    empty kernel under a lock: NVRTC loads its builtins library at the first compile, and first compiles racing in
    several threads have failed to open it ("failed to open libnvrtc-builtins.so.13.0", seen in the CPU tests)."""
    global _NVRTC
    with _lock:
        if _NVRTC is None:
            try:
                from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415
                prog = nvrtc.createProgram('extern "C" __global__ void k() {}', "k.cu", [], [])
                try:
                    nvrtc.compileProgram(prog, ["-arch=sm_90"])
                finally:
                    nvrtc.destroyProgram(prog)
                _NVRTC = nvrtc
            except Exception:  # noqa: BLE001 - no CuPy, or no (working) libnvrtc on this machine
                _NVRTC = False
    return _NVRTC or None


_NVRTC = None


def _nvrtc_build(nvrtc, source: str, arch: str, cubin: Path | None) -> str | None:
    """nvcc_check through NVRTC: the report, or None where NVRTC itself failed (its builtins library not opened: once
    in a full CPU test run on a loaded 2-core machine), so that nvcc builds it instead. CandidateError on the source's
    own errors."""
    prog = nvrtc.createProgram(source, "k.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [*NVRTC_OPTIONS, f"-arch={arch}", "-Xptxas=-v"])
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog).rstrip("\x00")
            if "libnvrtc-builtins" in log:
                return None
            first = next((ln for ln in log.splitlines() if "error" in ln), str(exc))
            raise CandidateError("compile", f"NVRTC: {first}", log) from None
        log = nvrtc.getProgramLog(prog).rstrip("\x00")
        if cubin is not None:
            Path(cubin).write_bytes(nvrtc.getCUBIN(prog))
        return log
    finally:
        nvrtc.destroyProgram(prog)


def nvcc_check(source: str, arch: str = "sm_90", timeout: float = 120, cubin: Path | None = None) -> str:
    """Build `source` to a cubin for `arch` offline (no GPU needed) and return ptxas' resource report (-v); the cubin
    is written to `cubin` if given. CUDA C++ goes through NVRTC in this process where its library loads (the compiler
    the tuner runs, CuPy's; a build saves nvcc's ~0.7 s of preprocessing cuda_runtime.h), else through the toolkit's
    nvcc; PTX through nvcc (ptxas). Raises CandidateError."""
    is_ptx = re.search(r"^\.version ", source, re.MULTILINE) is not None
    nvrtc = None if is_ptx else _nvrtc()
    if nvrtc is not None:
        log = _nvrtc_build(nvrtc, source, arch, cubin)
        if log is not None:
            return log
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / ("k.ptx" if is_ptx else "k.cu")
        src.write_text(source)
        out = Path(cubin) if cubin is not None else Path(tmp) / "k.cubin"
        proc = subprocess.run(
            [nvcc, f"-arch={arch}", "-cubin", *(["-std=c++17"] if not is_ptx else []), "-Xptxas", "-v", "-o",
             str(out), str(src)],
            capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise CandidateError("compile", f"nvcc exit {proc.returncode}", proc.stderr)
    return proc.stderr
