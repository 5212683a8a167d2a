"""Transposed SpMM (issue 19): C = A^T @ B from the same stored A (M x K CSR, as SpMM stores it), B M x N, C K x N.

The candidates (each a callable run(B, C) on CuPy arrays of the dtype's storage type, C-contiguous):

    spmm_t_scatter {config}        variants/spmm_t/spmm_t_scatter.cu.j2: A's own CSR rows read once, scattered into C
                                   with fp32 vector atomics (fp32: into C; fp16 / bf16: into a K x N fp32 workspace, then
                                   one rounding kernel); the accumulator zeroed by cudaMemsetAsync first. No copy of A.
    transpose+<spmm family> {cfg}  EXPLICIT TRANSPOSE: A^T's CSR built once on the host (scipy) and uploaded (a SECOND
                                   COPY of A on the GPU: `SpmmTOperand.transpose_bytes`), then that SpMM family's kernel
                                   (device.kernel.build_kernel, the family's own code and space) computes A^T @ B.
    cusparse {"alg": name}         cusparseSpMM with opA = TRANSPOSE on A's CSR (no copy; fp32 accumulation).
    dense {"math": dtype}          cuBLAS GEMM on a dense copy of A^T (K x M elements of the dtype).

The names in the spaces' constraints are the PRODUCT's (`spmm_t_env`): M = C's rows (A's columns), K = the reduction
(A's rows), N; so a transpose+<family> config is checked by exactly its SpMM problem's constraints. The tuning
database's key is A's stored shape (store.db: m, k = A's M x K, n = N), like an SpMM record's.
dtypes fp32, fp16, bf16 (bf16 as uint16 words); fp32 accumulation everywhere; one rounding of each output.

May import core, device, errors, resources (ops/__init__.py).
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import scipy.sparse as sp

from ..core.problem import DTYPES, as_float, host_values, storage
from ..core.render import render
from ..core.space import DEFAULT_LIMITS, Space, load_spaces
from ..errors import UserError
from ..resources import resource_dir

OP = "spmm_t"
KERNEL_NAME = "spmm_t_kernel"
CONVERT_NAME = "spmm_t_convert"
SPMM_T_DTYPES = ("fp32", "fp16", "bf16")
TRANSPOSE_PREFIX = "transpose+"
CUSPARSE = "cusparse"
DENSE = "dense"
VENDOR_FAMILIES = (CUSPARSE, DENSE)
CONVERT_THREADS = 256


# ---- spaces ------------------------------------------------------------------------------------------------------

def scatter_spaces() -> tuple[Space, ...]:
    """search_spaces/spmm_t: the scatter families' spaces (a folder core.families does not scan)."""
    return load_spaces(str(resource_dir("search_spaces") / OP))


def transpose_bases(dtype: str | None = None) -> tuple[Space, ...]:
    """The SpMM families an explicit transpose may run: the enabled ones that need no pattern compiled in (their
    kernels are per matrix: pattern_unrolled) and compute `dtype` (None: any)."""
    from ..core.space import load_spaces as spmm  # noqa: PLC0415
    return tuple(s for s in spmm() if s.enabled and not s.needs_matrix and (dtype is None or s.supports(dtype)))


def transpose_space(base: Space) -> Space:
    """An SpMM family's space as an spmm_t candidate: its parameters, constraints and known-good configs, named
    transpose+<family> (the search's categorical choice names the explicit transpose)."""
    return dataclasses.replace(base, family=TRANSPOSE_PREFIX + base.family, layouts=("kn",))


def load_spmm_t_spaces(dtype: str | None = None) -> tuple[Space, ...]:
    """Every spmm_t space: the scatter families, then transpose+<family> for the SpMM families (transpose_bases)."""
    return scatter_spaces() + tuple(transpose_space(b) for b in transpose_bases(dtype))


def spmm_t_families(dtype: str | None = None) -> tuple[str, ...]:
    return tuple(s.family for s in load_spmm_t_spaces(dtype))


def is_transpose(family: str | None) -> bool:
    return isinstance(family, str) and family.startswith(TRANSPOSE_PREFIX)


def is_vendor(family: str | None) -> bool:
    return family in VENDOR_FAMILIES


def get_spmm_t_space(family: str) -> Space:
    for s in load_spmm_t_spaces():
        if s.family == family:
            return s
    raise UserError(f"unknown spmm_t kernel family {family!r}: choose from {', '.join(spmm_t_families())}")


def spmm_t_env(m_a: int, k_a: int, n: int, nnz: int, dtype: str) -> dict:
    """The names in the spaces' constraints for A (m_a x k_a) and N: the product's (M = k_a rows of C, K = m_a, the
    reduction, N), as core.space.problem_env of the SpMM problem A^T @ B."""
    return {"M": int(k_a), "K": int(m_a), "N": int(n), "nnz": int(nnz), "dtype": dtype, "layout": "kn"}


def _check_dtype(dtype) -> None:
    if dtype not in SPMM_T_DTYPES:
        raise UserError(f"unknown spmm_t dtype {dtype!r}: choose one of {', '.join(SPMM_T_DTYPES)}")


def check_config(family: str, config: dict, dtype: str, env: dict, limits: dict | None = None) -> dict:
    """The config normalized if it can run the problem `env`; else a one-line UserError naming what fails."""
    _check_dtype(dtype)
    space = get_spmm_t_space(family)
    if not space.supports(dtype):
        raise UserError(f"{family} does not compute {dtype} (its dtypes: {', '.join(space.dtypes)})")
    cfg = space.normalize(config, dtype)
    if cfg is None:
        raise UserError(f"{family}: config {config} is not in the space")
    why = space.check(cfg, env, {**DEFAULT_LIMITS, **(limits or {})})
    if why is not None:
        raise UserError(f"{family}: config {cfg} cannot run this problem: {why}")
    return cfg


def render_scatter(config: dict, dtype: str, family: str = "spmm_t_scatter") -> str:
    return render(get_spmm_t_space(family), config, dtype)


def vendor_configs(dtype: str) -> list[tuple[str, dict]]:
    """The vendor paths, (family, config): cuSPARSE opA = T with each CSR algorithm, then cuBLAS at the dtype."""
    from ..core.vendor import CUSPARSE_ALGS  # noqa: PLC0415
    return [(CUSPARSE, {"alg": a}) for a in CUSPARSE_ALGS] + [(DENSE, {"math": dtype})]


def path_config(family: str, config: dict, dtype: str, env: dict, limits: dict | None = None) -> dict | None:
    """The config as the problem runs it, or None where it cannot (unknown family, infeasible config)."""
    if is_vendor(family):
        return dict(config) if (family, config) in vendor_configs(dtype) else None
    try:
        return check_config(family, config, dtype, env, limits)
    except UserError:
        return None


def default_path(dtype: str, env: dict, limits: dict | None = None) -> tuple[str, dict]:
    """The built-in default: the scatter family's first known-good config the problem allows (no copy of A)."""
    for space in scatter_spaces():
        d = space.defaults(dtype, env, limits)
        if d:
            return space.family, d[0]
        for cfg in space.feasible(dtype, env, limits):
            return space.family, cfg
    return CUSPARSE, {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}


def describe(family: str, config: dict, m_a: int, k_a: int, dtype: str) -> str:
    """One line saying what a config runs, and whether it holds a second copy of A."""
    es = np.dtype(DTYPES[dtype]).itemsize
    if family == CUSPARSE:
        return f"cuSPARSE SpMM opA=TRANSPOSE ({config.get('alg')}) on A's CSR (no copy of A)"
    if family == DENSE:
        return (f"cuBLAS {str(config.get('math')).upper()} GEMM on a dense copy of A^T ({k_a}x{m_a} {dtype}: "
                f"{k_a * m_a * es / 2**20:.1f} MiB of GPU memory)")
    if is_transpose(family):
        return (f"EXPLICIT TRANSPOSE: A^T's CSR built once and kept on the GPU (a second copy of A), then the SpMM "
                f"family {family[len(TRANSPOSE_PREFIX):]}")
    return f"the spmm_t family {family} on A's own CSR (fp32 atomics{'' if dtype == 'fp32' else ' into a workspace'})"


# ---- A on the device, its transposed layouts -----------------------------------------------------------------------

def as_csr(a) -> sp.csr_matrix:
    if not sp.issparse(a) or len(a.shape) != 2:
        raise UserError(f"A must be a 2-D scipy.sparse matrix (got {type(a).__name__})")
    s = sp.csr_matrix(a, dtype=np.float32) if a.format != "csr" or a.dtype != np.float32 else a
    return s


def transpose_csr(a: sp.csr_matrix) -> sp.csr_matrix:
    """A^T as CSR (K x M), columns sorted: the explicit transpose's layout (its values those of A, each once)."""
    t = sp.csr_matrix(a.T)
    t.sort_indices()
    return t


class SpmmTOperand:
    """A (M x K CSR, float32 values rounded to the dtype) and the device layouts the candidates read, each built once:
    A's own CSR (`dev`: device.kernel.DeviceCSR), A^T's CSR (`dev_t`: the explicit transpose, a second copy of A) and
    A^T dense (`dense_t`: the dense path). `transpose_bytes` says what the second copy costs."""

    def __init__(self, a: sp.csr_matrix, dtype: str):
        _check_dtype(dtype)
        a = as_csr(a)
        self.host = sp.csr_matrix((host_values(np.asarray(a.data, np.float32), DTYPES[dtype]), a.indices, a.indptr),
                                  shape=a.shape)
        self.dtype = dtype
        self.shape = a.shape
        self.nnz = int(a.nnz)
        self._dev = self._dev_t = self._dense_t = None
        self._lock = threading.Lock()

    @property
    def dev(self):
        with self._lock:
            if self._dev is None:
                from ..device.kernel import DeviceCSR  # noqa: PLC0415
                self._dev = DeviceCSR(self.host, self.dtype)
            return self._dev

    @property
    def dev_t(self):
        self._refresh_host()
        with self._lock:
            if self._dev_t is None:
                from ..device.kernel import DeviceCSR  # noqa: PLC0415
                self._dev_t = DeviceCSR(transpose_csr(self.host), self.dtype)
            return self._dev_t

    @property
    def dense_t(self):
        self._refresh_host()
        with self._lock:
            if self._dense_t is None:
                from ..device.vendor import dense_copy  # noqa: PLC0415
                self._dense_t = dense_copy(transpose_csr(self.host), self.dtype)
            return self._dense_t

    @property
    def transpose_bytes(self) -> int:
        """Bytes of A^T's CSR on the GPU (0 until an explicit transpose was built)."""
        return 0 if self._dev_t is None else self._dev_t.nbytes()

    def set_values(self, vals_host: np.ndarray | None = None, vals_dev=None) -> None:
        """New values of A on its fixed pattern (training): `vals_dev` (a device array of nnz values of the storage
        type) is copied in place into A's own device values (the scatter kernels and cuSPARSE read them: nothing is
        rebuilt); `vals_host` (float32) replaces the host values. The transposed layouts are dropped and rebuilt from
        the new values at their next use (the host copy refreshed from the device then)."""
        if vals_host is not None:
            self.host = sp.csr_matrix((np.asarray(vals_host, np.float32), self.host.indices, self.host.indptr),
                                      shape=self.shape)
        if vals_dev is not None:
            dev = self.dev
            dev.vals[...] = vals_dev
            self._host_stale = vals_host is None
        elif vals_host is not None:
            self._dev = None
        with self._lock:
            self._dev_t = self._dense_t = None

    def _refresh_host(self) -> None:
        if getattr(self, "_host_stale", False) and self._dev is not None:
            vals = as_float(self._dev.vals.get())
            self.host = sp.csr_matrix((np.asarray(vals, np.float32), self.host.indices, self.host.indptr),
                                      shape=self.shape)
            self._host_stale = False


# ---- the candidates ------------------------------------------------------------------------------------------------

def _check_operands(b, c, m_a: int, k_a: int, dtype: str) -> int:
    want = np.dtype(DTYPES[dtype])
    for name, arr, rows in (("B", b, m_a), ("C", c, k_a)):
        if not hasattr(arr, "data") or not hasattr(getattr(arr, "data"), "ptr"):
            raise UserError(f"spmm_t {name} must be a CuPy array (got {type(arr).__name__})")
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise UserError(f"spmm_t {name} has shape {tuple(arr.shape)}, expected ({rows}, N)")
        if arr.dtype != want:
            raise UserError(f"spmm_t {name} has dtype {arr.dtype}, expected {want} for {dtype}")
        if not arr.flags.c_contiguous:
            raise UserError(f"spmm_t {name} must be C-contiguous (row-major)")
    if b.shape[1] != c.shape[1]:
        raise UserError(f"spmm_t B has {b.shape[1]} columns and C {c.shape[1]}: they must match")
    return int(b.shape[1])


class ScatterKernel:
    """One compiled scatter config bound to A's own CSR (operand.dev) and N: run(B, C) zeroes the fp32 accumulator
    (C for fp32, a K x N workspace for fp16 / bf16: `workspace_bytes`), launches the scatter and, 16-bit, the rounding
    kernel, all on the current CuPy stream, allocating nothing per call (capturable)."""

    def __init__(self, operand: SpmmTOperand, n: int, family: str, config: dict, source: str, fn, conv):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.family, self.config, self.source = family, config, source
        self.operand, self.dtype, self.n = operand, operand.dtype, int(n)
        m_a, k_a = operand.shape
        self.fn, self.conv = fn, conv
        lanes, vec, warps, rows = config["lanes"], config["vec"], config["warps"], config["rows"]
        subs = warps * 32 // lanes
        tw = lanes * vec if config["mode"] == "cols" else vec
        self.grid = (max(1, -(-m_a // (subs * rows))), max(1, -(-self.n // tw)))
        self.block = (32 * warps,)
        self.ws = None if self.dtype == "fp32" else cp.empty((k_a, self.n), dtype=cp.float32)
        total = k_a * self.n
        self.total = np.int64(total)
        self.conv_grid = (max(1, min(65535 * 8, -(-total // CONVERT_THREADS))),)
        a = operand.dev
        self.arrays = (a.row_ptr, a.cols(32), a.vals)

    @property
    def workspace_bytes(self) -> int:
        return 0 if self.ws is None else int(self.ws.nbytes)

    def __call__(self, b, c):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        m_a, k_a = self.operand.shape
        n = _check_operands(b, c, m_a, k_a, self.dtype)
        if n != self.n:
            raise UserError(f"this spmm_t kernel was built for N={self.n}, B has {n} columns")
        if k_a == 0 or n == 0:
            return c
        acc = c if self.ws is None else self.ws
        stream = cp.cuda.get_current_stream()
        cp.cuda.runtime.memsetAsync(acc.data.ptr, 0, k_a * n * 4, stream.ptr)
        if self.operand.nnz and m_a:
            self.fn(self.grid, self.block, (*self.arrays, b, acc, np.int32(m_a), np.int32(n)))
        if self.ws is not None:
            self.conv(self.conv_grid, (CONVERT_THREADS,), (self.ws, c, self.total))
        return c


class TransposeKernel:
    """The explicit transpose: an SpMM family's kernel (device.kernel.build_kernel) on A^T's CSR (operand.dev_t, a
    second copy of A). run(B, C) computes C = A^T @ B."""

    def __init__(self, operand: SpmmTOperand, n: int, family: str, config: dict):
        from ..device.kernel import build_kernel  # noqa: PLC0415
        self.family, self.config, self.operand, self.n, self.dtype = family, config, operand, int(n), operand.dtype
        self.kern = build_kernel(operand.dev_t, family[len(TRANSPOSE_PREFIX):], config, operand.dtype)
        self.source = self.kern.source
        self.ln = self.kern.launcher(self.n)

    def __call__(self, b, c):
        from ..device.gpu import cupy  # noqa: PLC0415
        m_a, k_a = self.operand.shape
        n = _check_operands(b, c, m_a, k_a, self.dtype)
        if n != self.n:
            raise UserError(f"this spmm_t kernel was built for N={self.n}, B has {n} columns")
        if k_a and n:
            self.ln(b.data.ptr, c.data.ptr, cupy().cuda.get_current_stream().ptr)
        return c


class CuSparseTLauncher:
    """cusparseSpMM with opA = TRANSPOSE on A's CSR (M x K, 32-bit indices), B M x N and C K x N row-major, one
    algorithm, fp32 compute; descriptors made once, pointed at each call's B and C (cusparseDnMatSetValues). An
    algorithm that refuses the transposed operation raises here (its buffer-size query)."""

    def __init__(self, operand: SpmmTOperand, n: int, alg_name: str):
        from cupy_backends.cuda.libs import cusparse as cs  # noqa: PLC0415

        from ..core.vendor import CUSPARSE_ALGS  # noqa: PLC0415
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.cs, self.operand, self.n, self.dtype = cs, operand, int(n), operand.dtype
        a = self.a = operand.dev
        m, k = a.shape
        vt = {"fp32": 0, "fp16": 2, "bf16": 14}[operand.dtype]
        self.alg = CUSPARSE_ALGS[alg_name]
        self.alpha = np.array(1.0, np.float32)
        self.beta = np.array(0.0, np.float32)
        es = 4 if operand.dtype == "fp32" else 2
        self._scratch = [cp.zeros(max(1, m * n * es), dtype=cp.uint8), cp.zeros(max(1, k * n * es), dtype=cp.uint8)]
        i32 = cs.CUSPARSE_INDEX_32I
        self._closed = True
        self.mat_a = cs.createCsr(m, k, a.nnz, a.row_ptr.data.ptr, a.cols(32).data.ptr, a.vals.data.ptr, i32, i32,
                                  cs.CUSPARSE_INDEX_BASE_ZERO, vt)
        self.mat_b = cs.createDnMat(m, n, n, self._scratch[0].data.ptr, vt, cs.CUSPARSE_ORDER_ROW)
        self.mat_c = cs.createDnMat(k, n, n, self._scratch[1].data.ptr, vt, cs.CUSPARSE_ORDER_ROW)
        self._closed = False
        self.op_a = cs.CUSPARSE_OPERATION_TRANSPOSE
        self.op_b = cs.CUSPARSE_OPERATION_NON_TRANSPOSE
        args = (self.handle(), self.op_a, self.op_b, self.alpha.ctypes.data, self.mat_a, self.mat_b,
                self.beta.ctypes.data, self.mat_c, 0, self.alg)
        self.buf = cp.empty(max(1, cs.spMM_bufferSize(*args)), dtype=cp.int8)
        if hasattr(cs, "spMM_preprocess"):
            cs.spMM_preprocess(*args, self.buf.data.ptr)
        self._lock = threading.Lock()
        cp.cuda.get_current_stream().synchronize()

    @staticmethod
    def handle() -> int:
        from ..device.gpu import cupy  # noqa: PLC0415
        return cupy().cuda.device.get_cusparse_handle()

    def __call__(self, b, c):
        import ctypes as ct  # noqa: PLC0415

        from ..device.gpu import cupy  # noqa: PLC0415
        from ..device.vendor import _check, _lib  # noqa: PLC0415
        m_a, k_a = self.operand.shape
        n = _check_operands(b, c, m_a, k_a, self.dtype)
        if n != self.n:
            raise UserError(f"this spmm_t launcher was built for N={self.n}, B has {n} columns")
        lib = _lib("cusparse")
        vp, ci = ct.c_void_p, ct.c_int
        with self._lock:
            _check(lib.cusparseDnMatSetValues(vp(self.mat_b), vp(b.data.ptr)), "cusparseDnMatSetValues")
            _check(lib.cusparseDnMatSetValues(vp(self.mat_c), vp(c.data.ptr)), "cusparseDnMatSetValues")
            h = vp(self.handle())
            _check(lib.cusparseSetStream(h, vp(cupy().cuda.get_current_stream().ptr)), "cusparseSetStream")
            _check(lib.cusparseSpMM(h, ci(self.op_a), ci(self.op_b), vp(self.alpha.ctypes.data), vp(self.mat_a),
                                    vp(self.mat_b), vp(self.beta.ctypes.data), vp(self.mat_c), ci(0), ci(self.alg),
                                    vp(self.buf.data.ptr)), "cusparseSpMM")
        return c

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.cs.destroySpMat(self.mat_a)
        self.cs.destroyDnMat(self.mat_b)
        self.cs.destroyDnMat(self.mat_c)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


class DenseTPath:
    """cuBLAS C = A^T_dense @ B (device.vendor.DenseLauncher on the dense copy of A^T, K x M)."""

    def __init__(self, operand: SpmmTOperand, n: int, math: str):
        from ..device.vendor import DenseLauncher  # noqa: PLC0415
        if math != operand.dtype:
            raise UserError(f"the spmm_t dense path runs at the problem's precision ({operand.dtype}), not {math!r}")
        self.operand, self.n, self.dtype = operand, int(n), operand.dtype
        self.ln = DenseLauncher(operand.dense_t, self.n, math)

    def __call__(self, b, c):
        from ..device.gpu import cupy  # noqa: PLC0415
        m_a, k_a = self.operand.shape
        n = _check_operands(b, c, m_a, k_a, self.dtype)
        if k_a and n:
            self.ln(b.data.ptr, c.data.ptr, cupy().cuda.get_current_stream().ptr)
        return c


def _limits() -> dict:
    from ..device.gpu import gpu_info  # noqa: PLC0415
    return gpu_info().limits()


def build_path(operand: SpmmTOperand, n: int, family: str, config: dict, limits: dict | None = None):
    """One candidate compiled / bound for the operand and N: run(B, C). Bad configs: one-line UserError; compile
    failures: CandidateError("compile")."""
    from ..device.compile import compile_kernel  # noqa: PLC0415
    m_a, k_a = operand.shape
    dtype = operand.dtype
    if family == CUSPARSE:
        return CuSparseTLauncher(operand, n, config.get("alg", "CUSPARSE_SPMM_ALG_DEFAULT"))
    if family == DENSE:
        return DenseTPath(operand, n, config.get("math"))
    lim = _limits() if limits is None else limits
    cfg = check_config(family, config, dtype, spmm_t_env(m_a, k_a, n, operand.nnz, dtype), lim)
    if is_transpose(family):
        return TransposeKernel(operand, n, family, cfg)
    source = render_scatter(cfg, dtype, family)
    fn = compile_kernel(source, KERNEL_NAME)
    conv = compile_kernel(source, CONVERT_NAME) if dtype != "fp32" else None  # CuPy's disk cache: no second NVRTC run
    return ScatterKernel(operand, n, family, cfg, source, fn, conv)


# ---- reference ------------------------------------------------------------------------------------------------------

def spmm_t_reference(a, b) -> np.ndarray:
    """C = A^T @ B in float64 on the CPU (scipy): A's values as given (round them to the dtype first, as
    SpmmTOperand.host holds them), B numpy or CuPy (uint16: bf16 words)."""
    if hasattr(b, "get"):
        b = b.get()
    b = np.asarray(b)
    if b.dtype == np.uint16:
        b = as_float(b)
    a = as_csr(a)
    if b.ndim != 2 or b.shape[0] != a.shape[0]:
        raise UserError(f"spmm_t shapes do not fit: A {a.shape} needs B with {a.shape[0]} rows (got {b.shape})")
    return np.asarray(a.T.astype(np.float64) @ b.astype(np.float64))


def flops(nnz: int, n: int) -> int:
    return 2 * int(nnz) * int(n)


def min_bytes(m_a: int, k_a: int, n: int, nnz: int, dtype: str) -> int:
    """Bytes that must move at least: A's CSR once (values, 32-bit columns, row pointers), B once, C once."""
    es = np.dtype(DTYPES[dtype]).itemsize
    return int(nnz * (es + 4) + 4 * (m_a + 1) + (m_a + k_a) * n * es)


def storage_of(x: np.ndarray, dtype: str):
    return storage(x, dtype)


__all__ = ["OP", "SPMM_T_DTYPES", "TRANSPOSE_PREFIX", "CUSPARSE", "DENSE", "VENDOR_FAMILIES", "SpmmTOperand",
           "ScatterKernel", "TransposeKernel", "CuSparseTLauncher", "DenseTPath", "build_path", "check_config",
           "default_path", "describe", "flops", "get_spmm_t_space", "is_transpose", "is_vendor", "load_spmm_t_spaces",
           "min_bytes", "path_config", "render_scatter", "scatter_spaces", "spmm_t_env", "spmm_t_families",
           "spmm_t_reference", "transpose_bases", "transpose_csr", "transpose_space", "vendor_configs"]
