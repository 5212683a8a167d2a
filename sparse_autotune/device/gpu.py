"""The GPU: presence, properties, limits and versions. CuPy is imported lazily so the CPU side works without it."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import UserError


def cupy():
    """Import CuPy or fail with a one-line error that says what to install."""
    try:
        import cupy as cp  # noqa: PLC0415
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA install
        raise UserError(
            "CuPy is not installed or cannot load CUDA "
            f"({type(exc).__name__}): install the extra that matches your CUDA, "
            "e.g. pip install 'sparse-autotune[cuda13]' (or [cuda12])") from None
    return cp


def gpu_available() -> bool:
    try:
        import cupy as cp  # noqa: PLC0415
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


@dataclass(frozen=True)
class GpuInfo:
    name: str
    cc: str  # compute capability, e.g. "9.0"
    arch: str  # e.g. "sm_90"
    sm_count: int
    l2_bytes: int
    max_smem_bytes: int  # static shared memory per block
    max_smem_optin: int
    max_threads: int
    driver: str
    cuda_runtime: str
    cupy: str
    memory_bytes: int = 0  # the device's global memory (0: unknown)

    def limits(self) -> dict:
        return {"max_smem_bytes": self.max_smem_bytes, "max_dyn_smem_bytes": self.max_smem_optin,
                "max_threads": self.max_threads, "sm": int(self.cc.replace(".", ""))}

    def versions(self) -> dict:
        return {"gpu": self.name, "cc": self.cc, "driver": self.driver, "cuda": self.cuda_runtime,
                "cupy": self.cupy}


def _ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


@lru_cache(maxsize=None)
def libcuda():
    """The CUDA driver library through ctypes, loaded once, for what CuPy does not bind (cuTensorMapEncodeTiled,
    cuLaunchKernelEx); None where there is none (then no kernel can run either)."""
    import ctypes  # noqa: PLC0415
    for cand in ("libcuda.so.1", "libcuda.so", "/usr/lib/wsl/lib/libcuda.so"):
        try:
            return ctypes.CDLL(cand)
        except OSError:
            continue
    return None


def _driver_present() -> bool:
    """An NVIDIA driver is installed: its user-space library (libcuda) can be found or its device nodes exist."""
    import ctypes.util  # noqa: PLC0415
    import os  # noqa: PLC0415
    return ctypes.util.find_library("cuda") is not None or os.path.exists("/dev/nvidiactl") or \
        os.path.exists("/usr/lib/wsl/lib/libcuda.so")


def no_gpu_reason(cp, exc: Exception | None) -> str:
    """Why CUDA found no device, in words a user can act on. Without any NVIDIA driver the CUDA runtime reports
    'CUDA driver version is insufficient', which would send the user to update a driver they do not have."""
    try:
        driver = int(cp.cuda.runtime.driverGetVersion())  # 0 when no driver is loaded
    except Exception:  # noqa: BLE001
        driver = 0
    try:
        runtime = int(cp.cuda.runtime.runtimeGetVersion())
    except Exception:  # noqa: BLE001
        runtime = 0
    status = getattr(exc, "status", None)
    if driver == 0 or not _driver_present():
        return ("no NVIDIA GPU driver found: this machine has no GPU (or its driver is not installed), and tuning, "
                "benchmarks and the SpMM operator need one; spaces, lookup, db and report work without a GPU")
    if status == 35 or (exc is not None and "insufficient" in str(exc)):  # cudaErrorInsufficientDriver
        return (f"the NVIDIA driver supports CUDA up to {_ver(driver)}, older than the CUDA {_ver(runtime)} this CuPy "
                "needs: update the driver, or install the CuPy of the driver's CUDA (sparse-autotune[cuda12] for a "
                "CUDA 12 driver)")
    if exc is None or status == 100:  # cudaErrorNoDevice
        return ("no CUDA GPU found: the NVIDIA driver sees no device (check CUDA_VISIBLE_DEVICES and that the GPU is "
                "visible to this machine or container)")
    return f"no CUDA GPU found ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


@lru_cache(maxsize=None)
def gpu_info(device: int | None = None) -> GpuInfo:
    """Properties of the current (or given) CUDA device; UserError when there is none (no_gpu_reason says why)."""
    cp = cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        raise UserError(no_gpu_reason(cp, exc)) from None
    if count == 0:
        raise UserError(no_gpu_reason(cp, None))
    dev = cp.cuda.Device(device) if device is not None else cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    major, minor = int(props["major"]), int(props["minor"])
    try:
        import pynvml  # noqa: PLC0415
        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:  # noqa: BLE001
        driver = _ver(cp.cuda.runtime.driverGetVersion()) + " (CUDA API)"
    return GpuInfo(
        name=name, cc=f"{major}.{minor}", arch=f"sm_{major}{minor}",
        sm_count=int(props["multiProcessorCount"]), l2_bytes=int(props["l2CacheSize"]),
        max_smem_bytes=int(props["sharedMemPerBlock"]),
        max_smem_optin=int(props.get("sharedMemPerBlockOptin", props["sharedMemPerBlock"])),
        max_threads=int(props["maxThreadsPerBlock"]),
        driver=driver, cuda_runtime=_ver(cp.cuda.runtime.runtimeGetVersion()), cupy=cp.__version__,
        memory_bytes=int(props.get("totalGlobalMem", 0) or 0),
    )


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (for file names)."""
    import re  # noqa: PLC0415
    s = name.lower().replace("nvidia", "").strip()
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "gpu"


def this_gpu(gpu: str | None = None, cc: str | None = None, limits: dict | None = None):
    """(gpu, cc, limits) for a lookup: where gpu is None and there is a CUDA device, its name, its compute capability
    (unless cc is given) and its limits (unless limits are given); else as given."""
    if gpu is not None or not gpu_available():
        return gpu, cc, limits
    info = gpu_info()
    return info.name, cc or info.cc, (limits if limits is not None else info.limits())
