"""The vendor paths on the GPU: cuSPARSE SpMM and cuBLAS GEMM launchers on raw pointers (core.vendor names them).

A launcher is bound to one matrix and one N, with its descriptors, work buffer and scalars made once;
`launcher(b_ptr, c_ptr, stream_ptr)` computes C = A @ B (row-major B and C) on that stream, as a kernel's
`Launcher` does (device.kernel): the baselines (device.baselines), the tuner's vendor candidates, the runtime's
dispatch and its quick tuning all launch them the same way. Made with layout="nk" (core.problem: y = x @ A^T + bias,
x N x K and y N x M row-major) they read x and write y as they are, with no copy: cuSPARSE through column-major
descriptors (x is K x N column-major, y M x N column-major), cuBLAS as the transposed GEMM nn.Linear runs; then
`launcher(x_ptr, y_ptr, stream_ptr, bias_ptr)` adds the bias where bias_ptr is not 0: cuBLAS in one cublasLtMatmul
with the bias epilogue (LtBiasGemm, as torch's F.linear; a bias not 16-byte aligned, or shapes cuBLASLt refuses: the
GEMM and then one more kernel), cuSPARSE in one more kernel (device.staged.bias_add_launcher); a part of the call, and
of its timing. The calls go through ctypes on the library CuPy loaded
(CuPy's own bindings refuse every call while a stream is being captured): a cuBLAS launch is capturable in a CUDA
graph (the handle gets a fixed workspace); a cuSPARSE launch is where its algorithm allocates nothing and does not
synchronise (the tuner's timing of it says "graph" when its capture worked, "events" when it fell back).
"""
from __future__ import annotations

import threading

import numpy as np

from ..core.problem import element_bytes, storage
from ..core.vendor import CUSPARSE, CUSPARSE_ALGS, CUSPARSE_AUTO, DENSE


def _cp():
    from ..device.gpu import cupy  # noqa: PLC0415
    return cupy()


_LIBS: dict = {}


def _lib(name: str):
    """The CUDA library CuPy loaded (libcublas / libcusparse), through ctypes.

    CuPy's own bindings refuse every call while a stream is being captured, although cuBLAS and cuSPARSE
    support capture; the launches to be captured are therefore made through ctypes on the same library
    (and the same handles). Descriptors and buffers are still made through CuPy, outside the capture.
    """
    if name not in _LIBS:
        import ctypes  # noqa: PLC0415
        path = None
        try:
            from cuda.pathfinder import load_nvidia_dynamic_lib  # noqa: PLC0415
            path = load_nvidia_dynamic_lib(name).abs_path
        except Exception:  # noqa: BLE001
            pass
        lib = None
        for cand in ([path] if path else []) + [f"lib{name}.so.13", f"lib{name}.so.12", f"lib{name}.so"]:
            try:
                lib = ctypes.CDLL(cand)
                break
            except OSError:
                continue
        if lib is None:
            raise RuntimeError(f"cannot load lib{name} through ctypes")
        _LIBS[name] = lib
    return _LIBS[name]


def _check(status: int, what: str):
    if status != 0:
        raise RuntimeError(f"{what} returned status {status}")


_WORKSPACE: dict = {}


def _cublas_workspace(handle: int, nbytes: int = 32 << 20):
    """Give CuPy's cuBLAS handle a fixed workspace (kept for the process) so captured GEMMs allocate nothing."""
    if handle in _WORKSPACE:
        return
    import ctypes as ct  # noqa: PLC0415
    ws = _cp().empty(nbytes, dtype=np.uint8)
    _check(_lib("cublas").cublasSetWorkspace_v2(ct.c_void_p(handle), ct.c_void_p(ws.data.ptr), ct.c_size_t(nbytes)),
           "cublasSetWorkspace")
    _WORKSPACE[handle] = ws


MODE_DTYPE = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}  # a dense math's storage (its bias add)

# cublasLt.h (CUDA 12 / 13): matmul descriptor attributes, the bias epilogue, the preference's workspace limit
LT_TRANSA, LT_TRANSB, LT_EPILOGUE, LT_BIAS_POINTER = 3, 4, 7, 8
LT_EPILOGUE_BIAS = 4
LT_PREF_MAX_WORKSPACE_BYTES = 1
LT_HEURISTIC_RESULT_BYTES = 96  # cublasLtMatmulHeuristicResult_t: algo (64), workspaceSize, state, wavesCount, int[4]
LT_WORKSPACE_BYTES = 32 << 20
_LT: dict = {}


def _lt_handle():
    """(cublasLt handle, its workspace on the current device), made at the first use on each device."""
    dev = _cp().cuda.Device().id
    if dev not in _LT:
        import ctypes as ct  # noqa: PLC0415
        h = ct.c_void_p()
        _check(_lib("cublasLt").cublasLtCreate(ct.byref(h)), "cublasLtCreate")
        _LT[dev] = (h, _cp().empty(LT_WORKSPACE_BYTES, dtype=np.uint8))
    return _LT[dev]


class LtBiasGemm:
    """y (N x M) = x (N x K) @ A^T + bias in one cublasLtMatmul with the bias epilogue (CUBLASLT_EPILOGUE_BIAS: the
    bias, of y's type, added to each column of the column-major M x N result), as torch's F.linear runs nn.Linear: the
    dense nk path without a separate bias kernel (session 41: that kernel cost 1.6 / 5.4 us of cuBLAS's 3.3 / 10.5 at
    384x384 N = 1024 / 1536x384 N = 4096). The algorithm is cuBLASLt's first heuristic pick for the shapes, chosen with
    a 16-byte aligned bias (DenseLauncher takes the two-kernel path for a bias that is not). Its workspace is the
    device's one (`_lt_handle`), shared as CuPy's cuBLAS handle's is: two streams running cuBLASLt launches at once would
    share it. Raises RuntimeError where cuBLASLt refuses (the caller falls back)."""

    def __init__(self, a, n: int, dt: int, compute: int, alpha, beta):
        import ctypes as ct  # noqa: PLC0415
        lib = self._lib = _lib("cublasLt")
        self._ct = ct
        self.a, self.alpha, self.beta = a, alpha, beta
        m, k = (int(x) for x in a.shape)
        self.h, self.ws = _lt_handle()
        vp, ci = ct.c_void_p, ct.c_int
        self.desc = vp()
        self.layouts = [vp(), vp(), vp()]  # A (K x M, col-major: the row-major M x K weight), x (K x N), y (M x N)
        _check(lib.cublasLtMatmulDescCreate(ct.byref(self.desc), ci(compute), ci(0)), "cublasLtMatmulDescCreate")
        self._set(LT_TRANSA, ct.c_int32(1))  # CUBLAS_OP_T: op(A) = M x K
        self._set(LT_TRANSB, ct.c_int32(0))
        self._set(LT_EPILOGUE, ct.c_uint32(LT_EPILOGUE_BIAS))
        self._set(LT_BIAS_POINTER, vp(int(self.ws.data.ptr)))  # an aligned bias for the heuristic's choice
        for lay, (rows, cols, ld) in zip(self.layouts, ((k, m, k), (k, n, k), (m, n, m))):
            _check(lib.cublasLtMatrixLayoutCreate(ct.byref(lay), ci(dt), ct.c_uint64(rows), ct.c_uint64(cols),
                                                  ct.c_int64(ld)), "cublasLtMatrixLayoutCreate")
        pref = vp()
        _check(lib.cublasLtMatmulPreferenceCreate(ct.byref(pref)), "cublasLtMatmulPreferenceCreate")
        try:
            wsb = ct.c_uint64(LT_WORKSPACE_BYTES)
            _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, ci(LT_PREF_MAX_WORKSPACE_BYTES), ct.byref(wsb),
                                                            ct.c_size_t(8)), "cublasLtMatmulPreferenceSetAttribute")
            self.result = (ct.c_ubyte * LT_HEURISTIC_RESULT_BYTES)()
            got = ci(0)
            la, lb, lc = self.layouts
            _check(lib.cublasLtMatmulAlgoGetHeuristic(self.h, self.desc, la, lb, lc, lc, pref, ci(1), self.result,
                                                      ct.byref(got)), "cublasLtMatmulAlgoGetHeuristic")
        finally:
            lib.cublasLtMatmulPreferenceDestroy(pref)
        if got.value < 1:
            raise RuntimeError("cublasLtMatmulAlgoGetHeuristic found no algorithm with the bias epilogue")
        self.ws_bytes = ct.c_size_t(int.from_bytes(bytes(self.result[64:72]), "little"))
        if self.ws_bytes.value > LT_WORKSPACE_BYTES:
            raise RuntimeError(f"cuBLASLt's algorithm asks for {self.ws_bytes.value} bytes of workspace")

    def _set(self, attr: int, value) -> None:
        ct = self._ct
        _check(self._lib.cublasLtMatmulDescSetAttribute(self.desc, ct.c_int(attr), ct.byref(value),
                                                        ct.c_size_t(ct.sizeof(value))), "cublasLtMatmulDescSetAttribute")

    def __call__(self, x_ptr: int, y_ptr: int, stream_ptr: int, bias_ptr: int) -> None:
        """One launch on the stream (the caller holds its lock: the bias pointer is the descriptor's)."""
        vp = self._ct.c_void_p
        self._set(LT_BIAS_POINTER, vp(bias_ptr))
        la, lb, lc = self.layouts
        _check(self._lib.cublasLtMatmul(self.h, self.desc, vp(self.alpha.ctypes.data), vp(self.a.data.ptr), la,
                                        vp(x_ptr), lb, vp(self.beta.ctypes.data), vp(y_ptr), lc, vp(y_ptr), lc,
                                        self.result, vp(int(self.ws.data.ptr)), self.ws_bytes, vp(stream_ptr)),
               "cublasLtMatmul")

    def __del__(self):
        try:
            for lay in self.layouts:
                if lay:
                    self._lib.cublasLtMatrixLayoutDestroy(lay)
            if self.desc:
                self._lib.cublasLtMatmulDescDestroy(self.desc)
        except Exception:  # noqa: BLE001 - at interpreter exit the library may be gone
            pass


class DenseLauncher:
    """C = A_dense @ B for one N with cublasGemmEx, row-major, as C^T = B^T A^T in cuBLAS's column-major terms.
    `a` is the dense A on the device (M x K, C-contiguous, the mode's data type); it is kept alive.
    layout "nk": y (N x M) = x (N x K) @ A^T, as y^T = A x^T in column-major terms (A transposed in the call:
    nn.Linear's own GEMM), then + bias where the call gives one: fused by cuBLASLt's bias epilogue (`lt`, an
    LtBiasGemm; None where cuBLASLt refused the shapes) for a 16-byte aligned bias, else one more kernel after the GEMM.
    fused_bias=False: always the two kernels (a probe's comparison)."""

    MODES = {  # mode -> (data type, compute type name)
        "fp32": (0, "CUBLAS_COMPUTE_32F"),
        "tf32": (0, "CUBLAS_COMPUTE_32F_FAST_TF32"),
        "fp16": (2, "CUBLAS_COMPUTE_32F"),  # half inputs and output, fp32 accumulation, tensor cores
        "bf16": (14, "CUBLAS_COMPUTE_32F"),  # bfloat16 inputs and output (CUDA_R_16BF), fp32 accumulation
    }
    is_noop = False

    def __init__(self, a, n: int, mode: str, layout: str = "kn", fused_bias: bool = True):
        import ctypes as ct  # noqa: PLC0415
        from cupy_backends.cuda.libs import cublas as cb  # noqa: PLC0415
        self.a = a
        self.layout = layout
        self.handle = _cp().cuda.device.get_cublas_handle()
        dt, comp = self.MODES[mode]
        m, k = (int(x) for x in a.shape)
        self.alpha = np.array(1.0, np.float32)
        self.beta = np.array(0.0, np.float32)
        _cublas_workspace(self.handle)
        ci, vp = ct.c_int, ct.c_void_p
        self._h = vp(self.handle)
        self._host = ci(cb.CUBLAS_POINTER_MODE_HOST)
        self._dt = ci(dt)
        self._tail = (ci(getattr(cb, comp)), ci(-1))  # algo -1: CUBLAS_GEMM_DEFAULT
        self._bias = None
        if layout == "nk":
            from .staged import bias_add_launcher  # noqa: PLC0415
            # cublasGemmEx(handle, opT, opN, m, n, k, alpha, A, dt, k, x, dt, k, beta, y, dt, m, compute, algo)
            self._head = (self._h, ci(cb.CUBLAS_OP_T), ci(cb.CUBLAS_OP_N), ci(m), ci(n), ci(k),
                          vp(self.alpha.ctypes.data), vp(a.data.ptr), self._dt, ci(k))
            self._ldb, self._ldc = ci(k), ci(m)
            self._bias = bias_add_launcher(MODE_DTYPE[mode], n, m)
            self.lt = None  # the bias fused by cuBLASLt's epilogue (LtBiasGemm), where it serves these shapes
            if fused_bias and n > 0 and m > 0 and k > 0:
                try:
                    self.lt = LtBiasGemm(a, n, dt, int(getattr(cb, comp)), self.alpha, self.beta)
                except (RuntimeError, OSError, AttributeError):
                    self.lt = None  # the two kernels: cuBLAS, then the bias add
        else:
            # cublasGemmEx(handle, opN, opN, n, m, k, alpha, B, dt, n, A, dt, k, beta, C, dt, n, compute, algo)
            self._head = (self._h, ci(cb.CUBLAS_OP_N), ci(cb.CUBLAS_OP_N), ci(n), ci(m), ci(k),
                          vp(self.alpha.ctypes.data))
            self._a = (vp(a.data.ptr), ci(dt), ci(k), vp(self.beta.ctypes.data))
            self._ld = ci(n)
        self._lock = threading.Lock()

    def __call__(self, b_ptr: int, c_ptr: int, stream_ptr: int, bias_ptr: int = 0) -> None:
        import ctypes as ct  # noqa: PLC0415
        lib = _lib("cublas")
        vp = ct.c_void_p
        with self._lock:
            _check(lib.cublasSetStream_v2(self._h, vp(stream_ptr)), "cublasSetStream")
            _check(lib.cublasSetPointerMode_v2(self._h, self._host), "cublasSetPointerMode")
            if self._bias is None:
                _check(lib.cublasGemmEx(*self._head, vp(b_ptr), self._dt, self._ld, *self._a, vp(c_ptr), self._dt,
                                        self._ld, *self._tail), "cublasGemmEx")
                return
            if bias_ptr and self.lt is not None and bias_ptr % 16 == 0:
                self.lt(b_ptr, c_ptr, stream_ptr, bias_ptr)
                return
            _check(lib.cublasGemmEx(*self._head, vp(b_ptr), self._dt, self._ldb, vp(self.beta.ctypes.data),
                                    vp(c_ptr), self._dt, self._ldc, *self._tail), "cublasGemmEx")
            if bias_ptr:
                self._bias(c_ptr, c_ptr, stream_ptr, bias_ptr)

    launch = __call__


class CuSparseLauncher:
    """C = A @ B for one N with cusparseSpMM (CSR, 32-bit indices, row-major B and C), one algorithm. The descriptors
    of B and C are pointed at each call's buffers (cusparseDnMatSetValues, a host-side call), so one launcher serves
    any B and C of its shape. `b_ptr` / `c_ptr`: buffers for the work-buffer query and the preprocessing (zeros of
    the right shape are made for them where not given).
    layout "nk": x (N x K row-major) described as K x N column-major, y (N x M row-major) as M x N column-major, then
    + bias where the call gives one. An algorithm that refuses column-major operands fails here (made with its own
    scratch buffers, the launcher is run once on them), not at the first call."""

    is_noop = False

    def __init__(self, a_dev, n: int, dtype: str, alg_name: str, b_ptr: int | None = None, c_ptr: int | None = None,
                 layout: str = "kn"):
        from cupy_backends.cuda.libs import cusparse as cs  # noqa: PLC0415
        cp = _cp()
        self.cs = cs
        self.a_dev = a_dev  # its arrays must outlive the descriptor
        self.handle = cp.cuda.device.get_cusparse_handle()
        m, k = a_dev.shape
        vt = {"fp32": 0, "tf32": 0, "fp16": 2, "bf16": 14}[dtype]  # CUDA_R_32F / 16F / 16BF (tf32: fp32, exact)
        self.compute = 0  # CUDA_R_32F accumulation for every dtype
        self.alg = CUSPARSE_ALGS[alg_name]
        self.alpha = np.array(1.0, np.float32)
        self.beta = np.array(0.0, np.float32)
        scratch = []
        if b_ptr is None or c_ptr is None:
            es = element_bytes(dtype)
            scratch = [cp.zeros(max(1, k * n * es), dtype=cp.uint8), cp.zeros(max(1, m * n * es), dtype=cp.uint8)]
            b_ptr, c_ptr = scratch[0].data.ptr, scratch[1].data.ptr
        i32 = cs.CUSPARSE_INDEX_32I
        self.mat_a = cs.createCsr(m, k, a_dev.nnz, a_dev.row_ptr.data.ptr, a_dev.cols(32).data.ptr,
                                  a_dev.vals.data.ptr, i32, i32, cs.CUSPARSE_INDEX_BASE_ZERO, vt)
        self._closed = True  # until every descriptor exists (close() then has them all)
        self.layout = layout
        self._bias = None
        if layout == "nk":
            from .staged import bias_add_launcher  # noqa: PLC0415
            self.mat_b = cs.createDnMat(k, n, k, b_ptr, vt, cs.CUSPARSE_ORDER_COL)
            self.mat_c = cs.createDnMat(m, n, m, c_ptr, vt, cs.CUSPARSE_ORDER_COL)
            self._bias = bias_add_launcher(dtype, n, m)
        else:
            self.mat_b = cs.createDnMat(k, n, n, b_ptr, vt, cs.CUSPARSE_ORDER_ROW)
            self.mat_c = cs.createDnMat(m, n, n, c_ptr, vt, cs.CUSPARSE_ORDER_ROW)
        self._closed = False
        self.op = cs.CUSPARSE_OPERATION_NON_TRANSPOSE
        args = (self.handle, self.op, self.op, self.alpha.ctypes.data, self.mat_a, self.mat_b, self.beta.ctypes.data,
                self.mat_c, self.compute, self.alg)
        self.buf = cp.empty(max(1, cs.spMM_bufferSize(*args)), dtype=cp.int8)
        if hasattr(cs, "spMM_preprocess"):
            cs.spMM_preprocess(*args, self.buf.data.ptr)
        self._lock = threading.Lock()
        if scratch and layout == "nk":  # an algorithm that refuses these operands says so now
            self(b_ptr, c_ptr, cp.cuda.get_current_stream().ptr)
        if scratch:
            cp.cuda.get_current_stream().synchronize()  # the preprocessing is done with the scratch buffers

    def __call__(self, b_ptr: int, c_ptr: int, stream_ptr: int, bias_ptr: int = 0) -> None:
        import ctypes as ct  # noqa: PLC0415
        lib = _lib("cusparse")
        vp, ci = ct.c_void_p, ct.c_int
        with self._lock:
            _check(lib.cusparseDnMatSetValues(vp(self.mat_b), vp(b_ptr)), "cusparseDnMatSetValues")
            _check(lib.cusparseDnMatSetValues(vp(self.mat_c), vp(c_ptr)), "cusparseDnMatSetValues")
            _check(lib.cusparseSetStream(vp(self.handle), vp(stream_ptr)), "cusparseSetStream")
            _check(lib.cusparseSpMM(vp(self.handle), ci(self.op), ci(self.op), vp(self.alpha.ctypes.data),
                                    vp(self.mat_a), vp(self.mat_b), vp(self.beta.ctypes.data), vp(self.mat_c),
                                    ci(self.compute), ci(self.alg), vp(self.buf.data.ptr)), "cusparseSpMM")
            if bias_ptr and self._bias is not None:
                self._bias(c_ptr, c_ptr, stream_ptr, bias_ptr)

    launch = __call__

    def close(self):
        if self._closed:
            return
        self._closed = True
        cs = self.cs
        cs.destroySpMat(self.mat_a)
        cs.destroyDnMat(self.mat_b)
        cs.destroyDnMat(self.mat_c)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the library may be gone already
            pass


def dense_copy(host_csr, dtype: str):
    """A as a dense C-contiguous device array in the storage of `dtype` (float32 for the fp32 and tf32 maths; float16;
    bf16 as uint16 words): what the dense path multiplies. M x K elements: the memory the README names."""
    cp = _cp()
    dense = np.asarray(host_csr.toarray(), dtype=np.float32)
    return cp.ascontiguousarray(cp.asarray(storage(dense, dtype)))


def vendor_launcher(family: str, config: dict, n: int, dtype: str, a_dev=None, a_dense=None, layout: str = "kn"):
    """The launcher of a vendor config for N columns: cuSPARSE on `a_dev` (device.kernel.DeviceCSR), cuBLAS on
    `a_dense` (dense_copy); layout "nk": called as `ln(x_ptr, y_ptr, stream_ptr, bias_ptr)` (above)."""
    if family == CUSPARSE:
        if config.get("alg") == CUSPARSE_AUTO:
            return pick_cusparse(a_dev, n, dtype, layout)
        return CuSparseLauncher(a_dev, n, dtype, config["alg"], layout=layout)
    if family == DENSE:
        return DenseLauncher(a_dense, n, config["math"], layout)
    raise KeyError(f"no vendor family {family!r}")


def pick_cusparse(a_dev, n: int, dtype: str, layout: str = "kn") -> CuSparseLauncher:
    """The launcher of the fastest cuSPARSE algorithm for this A and N (core.vendor.CUSPARSE_AUTO): each algorithm that
    accepts the operands is timed on random inputs of the problem's shape the way the tuner times (device.timing:
    CUDA-graph replay where cuSPARSE can be captured, else back-to-back launches between events; a short budget, ~1 ms
    an algorithm), not while a stream is being captured; the fastest is returned, its name in `.alg_name`. Raises what
    the last algorithm raised when none runs."""
    from .timing import time_launches  # noqa: PLC0415
    cp = _cp()
    m, k = a_dev.shape
    rng = cp.random.default_rng(0)
    b = rng.standard_normal(k * n, dtype=cp.float32)
    b = b if dtype in ("fp32", "tf32") else b.astype(cp.float16)  # bf16: any finite 16-bit pattern serves for timing
    c = cp.empty(m * n, dtype=b.dtype)
    best, last_exc = None, None
    for name in CUSPARSE_ALGS:
        try:
            ln = CuSparseLauncher(a_dev, n, dtype, name, layout=layout)
            t = time_launches([lambda ln=ln: ln(b.data.ptr, c.data.ptr, cp.cuda.get_current_stream().ptr)],
                              repeats=5, target_us=100.0).median_us
        except Exception as exc:  # noqa: BLE001 - an algorithm that refuses these operands is skipped
            last_exc = exc
            continue
        ln.alg_name = name
        if best is None or t < best[0]:
            best = (t, ln)
    if best is None:
        raise last_exc if last_exc is not None else RuntimeError("no cuSPARSE algorithm ran")
    return best[1]
