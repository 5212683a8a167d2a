"""cuSPARSE's SDDMM through ctypes (CuPy 14.2 binds no cusparseSDDMM): the binding behind ops.sddmm's cuSPARSE baseline.

cusparseSDDMM computes C = alpha * (op(A) @ op(B)) ∘ spy(C) + beta * C for a CSR C: spy(C) is C's sparsity pattern
(1 at a stored entry), so C's stored values are NOT multiplied in; beta only scales them. `SddmmLauncher` binds one
pattern (row pointers and 32-bit column indices on the device, M x N) and one K, with alpha = 1, beta = 0,
A = X (M x K, row-major, opA NON_TRANSPOSE) and B = Y (N x K, row-major, opB TRANSPOSE: op(B) = Y^T, K x N), so that
`launcher(x_ptr, y_ptr, stream_ptr)` writes dot(X[row(p)], Y[col(p)]) for every stored entry p, in the pattern's
order, into its own float32 array `launcher.c` (C's values: never given to a caller, so a caller's poisoned output is
never read through beta * C). Multiplying by the mask's values is the caller's step (ops.sddmm).

Data types (cusparseSDDMM's data-type table in NVIDIA's cuSPARSE documentation, as remembered: the session that
wrote this could not read it, and tests/test_sddmm_gpu.py, not yet run, is what confirms it): uniform fp32 (A, B, C
and compute type CUDA_R_32F) and mixed precision with fp16 inputs (A, B CUDA_R_16F; C CUDA_R_32F; compute
CUDA_R_32F). bf16 (CUDA_R_16BF) is not among them: `VALUE_TYPES` has no bf16 and ops.sddmm refuses it with a
one-line UserError; a data type the library refuses at run time (CUSPARSE_STATUS_NOT_SUPPORTED from the work-buffer
query) is a one-line UserError too. Algorithm: CUSPARSE_SDDMM_ALG_DEFAULT, the only one the header declares.

Every function is called through its own ctypes prototype (`PROTOTYPES`, argument types from cusparse.h: int64_t
sizes, int enums, void* handles and descriptors), bound to the libcusparse CuPy loaded (device.vendor._lib) without
touching that library object's shared function attributes. The handle is CuPy's, put on the caller's stream and in
host pointer mode at each call. The enum values below are cusparse.h's and library_types.h's (tests/test_sddmm.py
reads them back from the installed headers, with the prototypes). Descriptors, work buffer and scratch live with the
launcher and are destroyed when it is closed or garbage-collected.
"""
from __future__ import annotations

import ctypes as ct
import threading

from ..errors import UserError
from .vendor import _lib

# cusparse.h
CUSPARSE_OPERATION_NON_TRANSPOSE = 0
CUSPARSE_OPERATION_TRANSPOSE = 1
CUSPARSE_ORDER_ROW = 2
CUSPARSE_INDEX_32I = 2
CUSPARSE_INDEX_BASE_ZERO = 0
CUSPARSE_POINTER_MODE_HOST = 0
CUSPARSE_SDDMM_ALG_DEFAULT = 0
STATUS_NAMES = {0: "CUSPARSE_STATUS_SUCCESS", 1: "CUSPARSE_STATUS_NOT_INITIALIZED", 2: "CUSPARSE_STATUS_ALLOC_FAILED",
                3: "CUSPARSE_STATUS_INVALID_VALUE", 4: "CUSPARSE_STATUS_ARCH_MISMATCH",
                5: "CUSPARSE_STATUS_MAPPING_ERROR", 6: "CUSPARSE_STATUS_EXECUTION_FAILED",
                7: "CUSPARSE_STATUS_INTERNAL_ERROR", 8: "CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED",
                9: "CUSPARSE_STATUS_ZERO_PIVOT", 10: "CUSPARSE_STATUS_NOT_SUPPORTED",
                11: "CUSPARSE_STATUS_INSUFFICIENT_RESOURCES"}
CUSPARSE_STATUS_NOT_SUPPORTED = 10
# library_types.h
CUDA_R_32F = 0
CUDA_R_16F = 2
CUDA_R_16BF = 14

ALGS = {"default": CUSPARSE_SDDMM_ALG_DEFAULT}
VALUE_TYPES = {  # dtype -> (A and B's type, C's type); the compute type is CUDA_R_32F for each
    "fp32": (CUDA_R_32F, CUDA_R_32F),
    "fp16": (CUDA_R_16F, CUDA_R_32F),  # the documented mixed-precision row: fp16 inputs, fp32 C, fp32 compute
}
COMPUTE_TYPE = CUDA_R_32F

_P, _I, _I64 = ct.c_void_p, ct.c_int, ct.c_int64
_SDDMM_HEAD = (_P, _I, _I, _P, _P, _P, _P, _P, _I, _I)  # handle, opA, opB, alpha, A, B, beta, C, compute, alg
PROTOTYPES = {  # name -> argument types; every function returns cusparseStatus_t (int)
    "cusparseCreateDnMat": (ct.POINTER(_P), _I64, _I64, _I64, _P, _I, _I),
    "cusparseCreateCsr": (ct.POINTER(_P), _I64, _I64, _I64, _P, _P, _P, _I, _I, _I, _I),
    "cusparseDestroyDnMat": (_P,),
    "cusparseDestroySpMat": (_P,),
    "cusparseDnMatSetValues": (_P, _P),
    "cusparseSetStream": (_P, _P),
    "cusparseSetPointerMode": (_P, _I),
    "cusparseSDDMM_bufferSize": (*_SDDMM_HEAD, ct.POINTER(ct.c_size_t)),
    "cusparseSDDMM_preprocess": (*_SDDMM_HEAD, _P),
    "cusparseSDDMM": (*_SDDMM_HEAD, _P),
}
_FNS: dict = {}


def fn(name: str):
    """cusparse function `name` with its prototype from PROTOTYPES (made once per process)."""
    if name not in _FNS:
        _FNS[name] = ct.CFUNCTYPE(ct.c_int, *PROTOTYPES[name])((name, _lib("cusparse")))
    return _FNS[name]


def available() -> bool:
    """Whether libcusparse loads through ctypes and exports every function bound here (no GPU needed to tell)."""
    try:
        lib = _lib("cusparse")
        return all(hasattr(lib, name) for name in PROTOTYPES)
    except Exception:  # noqa: BLE001 - no library, or not one CuPy can find
        return False


def call(name: str, *args) -> None:
    status = fn(name)(*args)
    if status != 0:
        raise RuntimeError(f"{name} returned {STATUS_NAMES.get(status, 'status')} ({status})")


class SddmmLauncher:
    """cusparseSDDMM for one CSR pattern (M x N, nnz entries; `row_ptr` and `cols`: int32 CuPy arrays, kept alive) and
    one K: `launcher(x_ptr, y_ptr, stream_ptr)` writes the nnz unscaled dot products into `launcher.c` (float32) on
    that stream. X and Y: row-major, of the type VALUE_TYPES gives the dtype. The work buffer is sized and the pattern
    preprocessed once here (on zero X and Y made for it and freed after). nnz must be at least 1."""

    def __init__(self, m: int, n: int, k: int, row_ptr, cols, dtype: str, alg: str = "default"):
        from .gpu import cupy  # noqa: PLC0415
        cp = cupy()
        ab_type, c_type = VALUE_TYPES[dtype]
        self.shape, self.k, self.nnz, self.dtype = (int(m), int(n)), int(k), int(cols.size), dtype
        self.alg = ALGS[alg]
        self.row_ptr, self.cols = row_ptr, cols  # C's pattern: must outlive the descriptor
        self.c = cp.zeros(self.nnz, dtype=cp.float32)
        self.handle = cp.cuda.device.get_cusparse_handle()
        self.alpha = ct.c_float(1.0)  # compute type CUDA_R_32F: float scalars, host pointer mode
        self.beta = ct.c_float(0.0)
        self.mat_x, self.mat_y, self.mat_c = _P(), _P(), _P()
        self.buf = None
        self._lock = threading.Lock()
        es = 4 if ab_type == CUDA_R_32F else 2
        zx = cp.zeros(max(1, m * k * es), dtype=cp.uint8)
        zy = cp.zeros(max(1, n * k * es), dtype=cp.uint8)
        try:
            call("cusparseCreateDnMat", ct.byref(self.mat_x), m, k, k, zx.data.ptr, ab_type, CUSPARSE_ORDER_ROW)
            call("cusparseCreateDnMat", ct.byref(self.mat_y), n, k, k, zy.data.ptr, ab_type, CUSPARSE_ORDER_ROW)
            call("cusparseCreateCsr", ct.byref(self.mat_c), m, n, self.nnz, row_ptr.data.ptr, cols.data.ptr,
                 self.c.data.ptr, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, c_type)
            call("cusparseSetPointerMode", self.handle, CUSPARSE_POINTER_MODE_HOST)
            size = ct.c_size_t(0)
            status = fn("cusparseSDDMM_bufferSize")(*self._head(), ct.byref(size))
            if status == CUSPARSE_STATUS_NOT_SUPPORTED:
                raise UserError(f"cuSPARSE SDDMM does not support {dtype} here (cusparseSDDMM_bufferSize returned "
                                f"CUSPARSE_STATUS_NOT_SUPPORTED): no cuSPARSE baseline for {dtype}")
            if status != 0:
                raise RuntimeError(f"cusparseSDDMM_bufferSize returned {STATUS_NAMES.get(status, 'status')} "
                                   f"({status})")
            self.buf = cp.empty(max(1, size.value), dtype=cp.uint8)
            call("cusparseSetStream", self.handle, cp.cuda.get_current_stream().ptr)
            call("cusparseSDDMM_preprocess", *self._head(), self.buf.data.ptr)
            cp.cuda.get_current_stream().synchronize()  # the preprocessing is done with zx and zy
        except BaseException:
            self.close()
            raise

    def _head(self) -> tuple:
        return (self.handle, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE, ct.byref(self.alpha),
                self.mat_x, self.mat_y, ct.byref(self.beta), self.mat_c, COMPUTE_TYPE, self.alg)

    def __call__(self, x_ptr: int, y_ptr: int, stream_ptr: int) -> None:
        with self._lock:
            call("cusparseDnMatSetValues", self.mat_x, x_ptr)
            call("cusparseDnMatSetValues", self.mat_y, y_ptr)
            call("cusparseSetStream", self.handle, stream_ptr)
            call("cusparseSetPointerMode", self.handle, CUSPARSE_POINTER_MODE_HOST)
            call("cusparseSDDMM", *self._head(), self.buf.data.ptr)

    launch = __call__

    def close(self) -> None:
        """Destroy the descriptors (each once); the arrays go with the launcher."""
        for name, mat in (("cusparseDestroyDnMat", self.mat_x), ("cusparseDestroyDnMat", self.mat_y),
                          ("cusparseDestroySpMat", self.mat_c)):
            if mat.value:
                fn(name)(mat)
                mat.value = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the library may be gone already
            pass


__all__ = ["ALGS", "COMPUTE_TYPE", "PROTOTYPES", "STATUS_NAMES", "SddmmLauncher", "VALUE_TYPES", "available", "call",
           "fn"]
