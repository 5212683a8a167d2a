"""Measured ceilings for the floor: device-to-device copy bandwidth and CUDA-core FMA rates (fp32, fp16x2)."""
from __future__ import annotations

from functools import lru_cache

from ..core.problem import element_bytes
from ..device.gpu import cupy, gpu_info
from ..device.timing import time_launches

_FMA_SRC = r"""
extern "C" __global__ void fma32(float* out, float a, float b, int iters) {
    float x[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = threadIdx.x * 0.001f + j;
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) x[j] = fmaf(x[j], a, b);
    }
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s += x[j];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
extern "C" __global__ void fma16x2(float* out, unsigned int a, unsigned int b, int iters) {
    unsigned int x[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = 0x3c003c00u + threadIdx.x + j;
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) asm volatile("fma.rn.f16x2 %0, %0, %1, %2;" : "+r"(x[j]) : "r"(a), "r"(b));
    }
    unsigned int s = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) s ^= x[j];
    out[blockIdx.x * blockDim.x + threadIdx.x] = __uint_as_float(s);
}
"""


@lru_cache(maxsize=1)
def ceilings() -> dict:
    """{'copy_GBps', 'fma_fp32_TFLOPs', 'fma_fp16_TFLOPs'} measured on the current GPU (once per process)."""
    import numpy as np  # noqa: PLC0415
    cp = cupy()
    info = gpu_info()
    nbytes = 1 << 30
    src, dst = cp.empty(nbytes, cp.uint8), cp.empty(nbytes, cp.uint8)
    src.fill(1)
    t = time_launches([lambda: dst.data.copy_from_device_async(src.data, nbytes)], repeats=10, target_us=1)
    copy_gbps = 2 * nbytes / (t.median_us * 1e-6) / 1e9
    mod = cp.RawModule(code=_FMA_SRC, options=("-std=c++17",))
    out = cp.empty(info.sm_count * 8 * 256, cp.float32)
    iters = 4096
    grid, block = (info.sm_count * 8,), (256,)
    res = {"copy_GBps": copy_gbps}
    for name, args, flops_per_fma in (
        ("fma32", (np.float32(0.999), np.float32(0.001)), 2),
        ("fma16x2", (np.uint32(0x3bff3bff), np.uint32(0x00010001)), 4),
    ):
        fn = mod.get_function(name)
        t = time_launches([lambda fn=fn, args=args: fn(grid, block, (out, *args, np.int32(iters)))],
                          repeats=10, target_us=1)
        flops = grid[0] * block[0] * iters * 8 * flops_per_fma
        res["fma_fp32_TFLOPs" if name == "fma32" else "fma_fp16_TFLOPs"] = flops / (t.median_us * 1e-6) / 1e12
    return res


def bc_bytes(m: int, k: int, n: int, dtype: str) -> int:
    """Bytes of B (K x N) and C (M x N), each once: the byte floor's part besides A."""
    return (k * n + m * n) * element_bytes(dtype)


def bytes_floor(problem, a_bytes: int, ceil: dict, dense_us: float | None) -> dict:
    """The byte floor of a memory-bound layer: bytes of A in the kernel's own format + B + C, each once, over the best
    bandwidth measured in this process: the larger of a device-to-device copy and what dense cuBLAS of the same
    dtype reaches on the dense layer (dense_us, A dense M x K + B + C). {'bytes_floor_us', 'a_bytes',
    'a_bytes_per_nnz', 'bw_GBps'}."""
    es = element_bytes(problem.dtype)
    bc = bc_bytes(problem.m, problem.k, problem.n, problem.dtype)
    bw = ceil["copy_GBps"] * 1e9
    if dense_us:
        bw = max(bw, (problem.m * problem.k * es + bc) / (dense_us * 1e-6))
    return {"bytes_floor_us": (a_bytes + bc) / bw * 1e6, "a_bytes": int(a_bytes),
            "a_bytes_per_nnz": a_bytes / problem.nnz if problem.nnz else None, "bw_GBps": bw / 1e9}


def floor_us(problem, ceil: dict, index_bytes: int = 4) -> float:
    """max(bytes moved / copy bandwidth, FLOPs / CUDA-core FMA peak of the dtype), in microseconds."""
    bw = ceil["copy_GBps"] * 1e9
    peak = (ceil["fma_fp32_TFLOPs"] if problem.dtype in ("fp32", "tf32") else ceil["fma_fp16_TFLOPs"]) * 1e12
    return max(problem.min_bytes(index_bytes) / bw, problem.flops / peak) * 1e6
