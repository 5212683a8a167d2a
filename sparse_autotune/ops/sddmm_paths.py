"""SDDMM's paths as the tuner times them and the runtime runs them, each a callable run(X, Y, out) on CuPy arrays (the
operands of ops.sddmm: X M x K, Y N x K, out nnz, the dtype's storage type):

    a kernel family  sddmm_warp, sddmm_tile {config}   ops.sddmm.build_sddmm (NVRTC)
    cusparse         {"alg": "default"}                 cusparseSDDMM, then the mask's values (ops.sddmm's cuSPARSE
                                                        baseline; fp32 and fp16)
    dense            {"math": <the dtype>}              cuBLAS X @ Y^T into an M x N workspace of the dtype (GEMM at the
                                                        dtype's precision, fp32 accumulation; device.vendor's
                                                        DenseLauncher), then one kernel gathering the mask's entries times
                                                        its values (one more rounding for fp16 / bf16)

The vendor paths carry the names of SpMM's (core.vendor) in records of the operator sddmm. The dense path here
allocates nothing per call (its workspace is made once), so a CUDA graph can capture it, and it holds M x N elements
of the dtype (`workspace_bytes`): made only where a plan runs it. `path_config` says whether a config (a record's)
can run a problem, `default_path` is the built-in default where no record can.

May import core, device, errors, resources (ops/__init__.py).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..core.problem import DTYPES, host_values
from ..errors import UserError
from . import sddmm as S

CUSPARSE = "cusparse"
DENSE = "dense"
VENDOR_FAMILIES = (CUSPARSE, DENSE)
CUSPARSE_CONFIG = {"alg": "default"}


def vendor_configs(dtype: str) -> list[tuple[str, dict]]:
    """The vendor paths of a problem of `dtype`, (family, config) in a fixed order: cuSPARSE (fp32 and fp16 only), then
    the dense path at the dtype's precision."""
    out = [(CUSPARSE, dict(CUSPARSE_CONFIG))] if dtype in S.CUSPARSE_SDDMM_DTYPES else []
    return out + [(DENSE, {"math": dtype})]


def is_vendor(family: str | None) -> bool:
    return family in VENDOR_FAMILIES


def path_config(family: str, config: dict, dtype: str, env: dict, limits: dict | None = None) -> dict | None:
    """The config as the problem `env` (ops.sddmm.sddmm_env) runs it: a vendor path's as it is where it is one of
    vendor_configs(dtype), a kernel family's normalized where its space's constraints hold; None where it cannot run
    the problem (an unknown family, another dtype's vendor config, an infeasible kernel config)."""
    if is_vendor(family):
        return dict(config) if (family, config) in vendor_configs(dtype) else None
    if family not in S.sddmm_families():
        return None
    try:
        return S.check_config(family, config, dtype, env, limits)
    except UserError:
        return None


def default_path(dtype: str, env: dict, limits: dict | None = None) -> tuple[str, dict]:
    """The built-in default (no record can run the problem): the first known-good config of the SDDMM families (by
    rank) that the problem's constraints allow, else their first feasible config, else the dense path."""
    spaces = S.load_sddmm_spaces()
    for space in spaces:
        d = space.defaults(dtype, env, limits)
        if d:
            return space.family, d[0]
    for space in spaces:
        for cfg in space.feasible(dtype, env, limits):
            return space.family, cfg
    return DENSE, {"math": dtype}


def build_path(mask, k: int, family: str, config: dict, dtype: str, limits: dict | None = None, keep: int = 1):
    """One path compiled / bound for a mask and K: run(X, Y, out). keep: Y operands whose cuBLAS launcher the dense path
    keeps (the tuner's rotating buffers; the runtime 1)."""
    if family == CUSPARSE:
        return S.build_cusparse_sddmm(mask, k, dtype, config.get("alg", "default"))
    if family == DENSE:
        if config.get("math") != dtype:
            raise UserError(f"the SDDMM dense path runs at the problem's precision ({dtype}), not {config.get('math')!r}")
        return DenseMaskPath(S.as_mask(mask), int(k), dtype, keep)
    return S.build_sddmm(mask, k, family, config, dtype, limits)


_GATHER = r"""
__device__ __forceinline__ float ld(const {T}* p) { {LOAD} }
__device__ __forceinline__ {T} st(float f) { {STORE} }
extern "C" __global__ void sddmm_dense_gather(const {T}* __restrict__ d, const int* __restrict__ rows,
                                              const int* __restrict__ cols, const float* __restrict__ s,
                                              {T}* __restrict__ out, int nnz, int n) {
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < nnz; p += gridDim.x * blockDim.x)
        out[p] = st(ld(d + (size_t)rows[p] * n + cols[p]) * s[p]);
}
"""
_CONVERT = {
    "fp32": ("float", "return *p;", "return f;"),
    "fp16": ("unsigned short", 'float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p)); return f;',
             'unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;'),
    "bf16": ("unsigned short", "return __uint_as_float((unsigned int)(*p) << 16);",
             'unsigned short h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;'),
}
GATHER_THREADS = 256
GATHER_MAX_BLOCKS = 65535


def gather_source(dtype: str) -> str:
    t, load, store = _CONVERT[dtype]
    return _GATHER.replace("{T}", t).replace("{LOAD}", load).replace("{STORE}", store)


class DenseMaskPath:
    """The dense path: D = X @ Y^T with cublasGemmEx at the dtype's precision (device.vendor.DenseLauncher in its nk form:
    y = x @ A^T with A = Y, x = X) into an M x N workspace of the dtype, then out[p] = D[row(p), col(p)] * S.data[p]
    (float32 product, one rounding) in one kernel; both on the current stream, allocating nothing."""

    def __init__(self, mask, k: int, dtype: str, keep: int = 1):
        from ..device.compile import compile_kernel  # noqa: PLC0415
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        S._check_dtype(dtype)
        m, n = mask.shape
        self.shape, self.k, self.dtype, self.nnz, self.keep = mask.shape, int(k), dtype, int(mask.nnz), max(1, keep)
        self.d = cp.empty((m, n), dtype=DTYPES[dtype])
        self.rows = cp.asarray(np.repeat(np.arange(m, dtype=np.int32), np.diff(mask.indptr)))
        self.cols = cp.asarray(mask.indices.astype(np.int32))
        self.s = cp.asarray(host_values(np.asarray(mask.data, dtype=np.float32), DTYPES[dtype]).astype(np.float32))
        self.fn = compile_kernel(gather_source(dtype), "sddmm_dense_gather")
        self.grid = max(1, min(GATHER_MAX_BLOCKS, -(-self.nnz // GATHER_THREADS)))
        self._gemms: OrderedDict = OrderedDict()  # Y's (pointer, shape) -> its DenseLauncher (holds Y)

    @property
    def workspace_bytes(self) -> int:
        return int(self.d.nbytes)

    def _gemm(self, y):
        from ..device.vendor import DenseLauncher  # noqa: PLC0415
        key = (int(y.data.ptr), tuple(y.shape))
        ln = self._gemms.get(key)
        if ln is None or ln.a is not y:
            ln = self._gemms[key] = DenseLauncher(y, self.shape[0], self.dtype, layout="nk")
            while len(self._gemms) > self.keep:
                self._gemms.popitem(last=False)
        self._gemms.move_to_end(key)
        return ln

    def __call__(self, x, y, out):
        from ..device.gpu import cupy  # noqa: PLC0415
        m, n = self.shape
        S._check_operand("X", x, (m, self.k), self.dtype)
        S._check_operand("Y", y, (n, self.k), self.dtype)
        S._check_operand("out", out, (self.nnz,), self.dtype)
        if self.nnz == 0:
            return out
        stream = cupy().cuda.get_current_stream()
        self._gemm(y)(x.data.ptr, self.d.data.ptr, stream.ptr)
        self.fn((self.grid,), (GATHER_THREADS,), (self.d, self.rows, self.cols, self.s, out, np.int32(self.nnz),
                                                  np.int32(n)))
        return out


def describe(family: str, config: dict, m: int, n: int, dtype: str) -> str:
    """One line saying what a config runs."""
    if family == CUSPARSE:
        return "cuSPARSE SDDMM (cusparseSDDMM on the mask's pattern, then its values in one multiply)"
    if family == DENSE:
        es = np.dtype(DTYPES[dtype]).itemsize
        return (f"cuBLAS {dtype.upper()} GEMM X @ Y^T into an {m}x{n} workspace ({m * n * es / 2**20:.1f} MiB of GPU "
                "memory), then a gather at the mask")
    return f"the SDDMM kernel family {family} ({S.KERNEL_NAME}, compiled with NVRTC for the mask and K)"


__all__ = ["CUSPARSE", "DENSE", "VENDOR_FAMILIES", "DenseMaskPath", "build_path", "default_path", "describe",
           "gather_source", "is_vendor", "path_config", "vendor_configs"]
