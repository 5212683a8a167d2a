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

    def limits(self) -> dict:
        return {"max_smem_bytes": self.max_smem_bytes, "max_dyn_smem_bytes": self.max_smem_optin,
                "max_threads": self.max_threads}

    def versions(self) -> dict:
        return {"gpu": self.name, "cc": self.cc, "driver": self.driver, "cuda": self.cuda_runtime,
                "cupy": self.cupy}


def _ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


@lru_cache(maxsize=None)
def gpu_info(device: int | None = None) -> GpuInfo:
    """Properties of the current (or given) CUDA device; UserError when there is none."""
    cp = cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"no CUDA GPU found ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if count == 0:
        raise UserError("no CUDA GPU found (the CUDA runtime reports 0 devices)")
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
    )


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (for file names)."""
    import re  # noqa: PLC0415
    s = name.lower().replace("nvidia", "").strip()
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "gpu"
