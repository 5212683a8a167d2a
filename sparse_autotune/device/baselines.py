"""The references, timed exactly like the tuned kernels: cuSPARSE SpMM and cuBLAS FP32 / TF32 / FP16 (and BF16).

Both libraries are called through CuPy's low-level bindings with descriptors and work buffers made once,
so a timed launch is the library's GPU work alone (row-major B and C, as the tuned kernels use).
"""
from __future__ import annotations

import math

import numpy as np

from ..core.problem import as_float, storage
from ..device.timing import time_launches
from ..device.verify import poison, rel_error


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


class CuSparseSpMM:
    """C = A @ B with cusparseSpMM (CSR, 32-bit indices, row-major dense matrices), one algorithm."""

    def __init__(self, a_dev, b_bufs, c, dtype: str, alg_name: str):
        from cupy_backends.cuda.libs import cusparse as cs  # noqa: PLC0415
        cp = _cp()
        self.cs = cs
        self.handle = cp.cuda.device.get_cusparse_handle()
        m, k = a_dev.shape
        n = int(b_bufs[0].shape[1])
        vt = {"fp32": 0, "fp16": 2, "bf16": 14}[dtype]  # CUDA_R_32F / CUDA_R_16F / CUDA_R_16BF
        self.compute = 0  # CUDA_R_32F accumulation for both
        self.alg = CUSPARSE_ALGS[alg_name]
        self.alpha = np.array(1.0, np.float32)
        self.beta = np.array(0.0, np.float32)
        i32 = cs.CUSPARSE_INDEX_32I
        self.mat_a = cs.createCsr(m, k, a_dev.nnz, a_dev.row_ptr.data.ptr, a_dev.cols(32).data.ptr,
                                  a_dev.vals.data.ptr, i32, i32, cs.CUSPARSE_INDEX_BASE_ZERO, vt)
        self.mat_b = [cs.createDnMat(k, n, n, b.data.ptr, vt, cs.CUSPARSE_ORDER_ROW) for b in b_bufs]
        self.mat_c = cs.createDnMat(m, n, n, c.data.ptr, vt, cs.CUSPARSE_ORDER_ROW)
        op = cs.CUSPARSE_OPERATION_NON_TRANSPOSE
        self.op = op
        size = max(cs.spMM_bufferSize(self.handle, op, op, self.alpha.ctypes.data, self.mat_a, mb,
                                      self.beta.ctypes.data, self.mat_c, self.compute, self.alg)
                   for mb in self.mat_b[:1])
        self.buf = cp.empty(max(1, size), dtype=cp.int8)
        if hasattr(cs, "spMM_preprocess"):
            cs.spMM_preprocess(self.handle, op, op, self.alpha.ctypes.data, self.mat_a, self.mat_b[0],
                               self.beta.ctypes.data, self.mat_c, self.compute, self.alg, self.buf.data.ptr)

    def launch(self, i: int):
        import ctypes as ct  # noqa: PLC0415
        cp = _cp()
        lib = _lib("cusparse")
        vp = ct.c_void_p
        _check(lib.cusparseSetStream(vp(self.handle), vp(cp.cuda.get_current_stream().ptr)), "cusparseSetStream")
        _check(lib.cusparseSpMM(vp(self.handle), ct.c_int(self.op), ct.c_int(self.op), vp(self.alpha.ctypes.data),
                                vp(self.mat_a), vp(self.mat_b[i]), vp(self.beta.ctypes.data), vp(self.mat_c),
                                ct.c_int(self.compute), ct.c_int(self.alg), vp(self.buf.data.ptr)), "cusparseSpMM")

    def close(self):
        cs = self.cs
        cs.destroySpMat(self.mat_a)
        for mb in self.mat_b:
            cs.destroyDnMat(mb)
        cs.destroyDnMat(self.mat_c)


class CublasGemm:
    """C = A_dense @ B with cublasGemmEx, row-major, as C^T = B^T A^T in cuBLAS's column-major terms."""

    MODES = {  # mode -> (data type, compute type name)
        "fp32": (0, "CUBLAS_COMPUTE_32F"),
        "tf32": (0, "CUBLAS_COMPUTE_32F_FAST_TF32"),
        "fp16": (2, "CUBLAS_COMPUTE_32F"),  # half inputs and output, fp32 accumulation, tensor cores
        "bf16": (14, "CUBLAS_COMPUTE_32F"),  # bfloat16 inputs and output (CUDA_R_16BF), fp32 accumulation
    }

    def __init__(self, a_dense, b_bufs, c, mode: str):
        from cupy_backends.cuda.libs import cublas as cb  # noqa: PLC0415
        cp = _cp()
        self.cb = cb
        self.handle = cp.cuda.device.get_cublas_handle()
        self.dt, comp = self.MODES[mode]
        self.compute = getattr(cb, comp)
        self.m, self.k = a_dense.shape
        self.n = int(b_bufs[0].shape[1])
        self.a, self.b, self.c = a_dense, b_bufs, c
        self.alpha = np.array(1.0, np.float32)
        self.beta = np.array(0.0, np.float32)
        _cublas_workspace(self.handle)

    def launch(self, i: int):
        import ctypes as ct  # noqa: PLC0415
        cp = _cp()
        cb, lib = self.cb, _lib("cublas")
        vp, ci = ct.c_void_p, ct.c_int
        _check(lib.cublasSetStream_v2(vp(self.handle), vp(cp.cuda.get_current_stream().ptr)), "cublasSetStream")
        _check(lib.cublasSetPointerMode_v2(vp(self.handle), ci(cb.CUBLAS_POINTER_MODE_HOST)), "cublasSetPointerMode")
        _check(lib.cublasGemmEx(vp(self.handle), ci(cb.CUBLAS_OP_N), ci(cb.CUBLAS_OP_N), ci(self.n), ci(self.m),
                                ci(self.k), vp(self.alpha.ctypes.data), vp(self.b[i].data.ptr), ci(self.dt),
                                ci(self.n), vp(self.a.data.ptr), ci(self.dt), ci(self.k), vp(self.beta.ctypes.data),
                                vp(self.c.data.ptr), ci(self.dt), ci(self.n), ci(self.compute), ci(-1)),
               "cublasGemmEx")  # algo -1: CUBLAS_GEMM_DEFAULT


# cusparseSpMMAlg_t values (cusparse.h); CuPy's bindings do not export the names
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


CUSPARSE_ALGS = {"CUSPARSE_SPMM_ALG_DEFAULT": 0, "CUSPARSE_SPMM_CSR_ALG1": 4, "CUSPARSE_SPMM_CSR_ALG2": 6,
                 "CUSPARSE_SPMM_CSR_ALG3": 12}


def time_baselines(ctx, log=None) -> dict:
    """Verify and time every baseline for the problem context; a baseline that fails is None (logged)."""
    cp = _cp()
    out: dict = {}
    errors: dict = {}

    def run_one(name, launch_fn, c, n_bufs, ref):
        try:
            poison(c)
            launch_fn(0)
            cp.cuda.get_current_stream().synchronize()
            err = rel_error(c, ref)
            tol = 1e-4 if name == "cublas_fp32" else 2e-2
            if not err <= tol:
                raise RuntimeError(f"wrong result (relative error {err:.3g})")
            t = time_launches([lambda i=i: launch_fn(i) for i in range(n_bufs)])
            out.setdefault("timing", {})[name] = t.method + (f" ({t.note})" if t.note else "")
            return t.median_us, err
        except Exception as exc:  # noqa: BLE001
            errors[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if log:
                log(f"baseline {name} failed: {errors[name]}")
            return None, None

    nb = len(ctx.b_bufs)
    # cuSPARSE: the best of the CSR algorithms that accept row-major operands
    best = None
    for alg in CUSPARSE_ALGS:
        try:
            sp_op = CuSparseSpMM(ctx.a_dev, ctx.b_bufs, ctx.c, ctx.problem.dtype, alg)
        except Exception as exc:  # noqa: BLE001
            errors[alg] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        t, _ = run_one("cusparse", sp_op.launch, ctx.c, nb, ctx.ref)
        sp_op.close()
        if t is not None and (best is None or t < best[0]):
            best = (t, alg)
    out["cusparse_us"] = best[0] if best else None
    out["cusparse_alg"] = best[1] if best else None
    errors.pop("cusparse", None) if best else None

    # cuBLAS on the densified A; FP16 on half copies of A and B (tensor cores)
    a_dense = ctx.a_dense_f32()
    c32 = cp.empty((ctx.problem.m, ctx.problem.n), cp.float32)
    b32 = [as_float(b).astype(cp.float32) for b in ctx.b_bufs] if ctx.problem.dtype != "fp32" else ctx.b_bufs
    for mode in ("fp32", "tf32"):
        g = CublasGemm(a_dense, b32, c32, mode)
        out[f"cublas_{mode}_us"], _ = run_one(f"cublas_{mode}", g.launch, c32, nb, ctx.ref)
    a16 = a_dense.astype(cp.float16)
    b16 = [as_float(b).astype(cp.float16) for b in ctx.b_bufs] if ctx.problem.dtype != "fp16" else ctx.b_bufs
    c16 = cp.empty((ctx.problem.m, ctx.problem.n), cp.float16)
    g = CublasGemm(a16, b16, c16, "fp16")
    out["cublas_fp16_us"], _ = run_one("cublas_fp16", g.launch, c16, nb, ctx.ref)
    del a16, b16, c16
    if ctx.problem.dtype == "bf16":  # the dense path of the same dtype: bf16 copies of A (B and C are bf16 already)
        abf = storage(a_dense, "bf16")
        cbf = cp.empty((ctx.problem.m, ctx.problem.n), cp.uint16)
        g = CublasGemm(abf, ctx.b_bufs, cbf, "bf16")
        out["cublas_bf16_us"], _ = run_one("cublas_bf16", g.launch, cbf, nb, ctx.ref)
        del abf, cbf
    del a_dense, b32, c32
    out["baseline_errors"] = errors if errors else {}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
