"""The references, timed exactly like the tuned kernels: cuSPARSE SpMM and cuBLAS FP32 / TF32 / FP16 (and BF16).

Both libraries are called through CuPy's low-level bindings with descriptors and work buffers made once,
so a timed launch is the library's GPU work alone (row-major B and C, as the tuned kernels use). For a problem of the
nk layout (core.problem) they read x and write y as they are and add the context's bias (device.vendor), the bias
add timed as part of each call.
"""
from __future__ import annotations

import math

from ..core.problem import as_float, storage
from ..core.vendor import CUSPARSE_ALGS
from ..device.timing import time_launches
from ..device.vendor import CuSparseLauncher, DenseLauncher
from ..device.verify import poison, rel_error


def _cp():
    from ..device.gpu import cupy  # noqa: PLC0415
    return cupy()


def _n_of(b, layout: str) -> int:
    """N of a B buffer: its columns (K x N), or x's rows (nk: N x K)."""
    return int(b.shape[0] if layout == "nk" else b.shape[1])


class CuSparseSpMM:
    """C = A @ B with cusparseSpMM (CSR, 32-bit indices, row-major dense matrices), one algorithm, over the rotating B
    buffers: the runtime's launcher (device.vendor.CuSparseLauncher), so a baseline is timed as the runtime runs it.
    layout "nk": y = x @ A^T + bias (bias: None or a length-M array)."""

    def __init__(self, a_dev, b_bufs, c, dtype: str, alg_name: str, layout: str = "kn", bias=None):
        self.ln = CuSparseLauncher(a_dev, _n_of(b_bufs[0], layout), dtype, alg_name, b_bufs[0].data.ptr, c.data.ptr,
                                   layout)
        self.b_ptrs = [b.data.ptr for b in b_bufs]
        self.c_ptr = c.data.ptr
        self.bias_ptr = 0 if bias is None else bias.data.ptr

    def launch(self, i: int):
        self.ln(self.b_ptrs[i], self.c_ptr, _cp().cuda.get_current_stream().ptr, self.bias_ptr)

    def close(self):
        self.ln.close()


class CublasGemm:
    """C = A_dense @ B with cublasGemmEx over the rotating B buffers: the runtime's launcher (device.vendor.DenseLauncher),
    row-major, as C^T = B^T A^T in cuBLAS's column-major terms. layout "nk": y = x @ A^T + bias (the bias, of the
    mode's storage type, or None)."""

    MODES = DenseLauncher.MODES

    def __init__(self, a_dense, b_bufs, c, mode: str, layout: str = "kn", bias=None):
        self.m, self.k = a_dense.shape
        self.n = _n_of(b_bufs[0], layout)
        self.a, self.b, self.c, self.bias = a_dense, b_bufs, c, bias
        self.bias_ptr = 0 if bias is None else bias.data.ptr
        self.ln = DenseLauncher(a_dense, self.n, mode, layout)

    def launch(self, i: int):
        self.ln(self.b[i].data.ptr, self.c.data.ptr, _cp().cuda.get_current_stream().ptr, self.bias_ptr)


def time_baselines(ctx, log=None) -> dict:
    """Verify and time every baseline for the problem context; a baseline that fails is None (logged). `vendor`: every
    cuSPARSE algorithm and cuBLAS mode as {family, config, time_us, rel_err} (time None where it failed), the vendor
    candidates of the tuner (core.vendor)."""
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
    layout, bias = ctx.problem.layout, ctx.bias  # nk: x and y as they are, and the bias added (device.vendor)
    # every vendor path measured, as candidates of the problem (core.vendor keeps those of its precision)
    vendor: list[dict] = out.setdefault("vendor", [])
    # cuSPARSE: the best of the CSR algorithms that accept the operands (row-major; nk: column-major)
    best = None
    for alg in CUSPARSE_ALGS:
        try:
            sp_op = CuSparseSpMM(ctx.a_dev, ctx.b_bufs, ctx.c, ctx.problem.dtype, alg, layout, bias)
        except Exception as exc:  # noqa: BLE001
            errors[alg] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        t, err = run_one("cusparse", sp_op.launch, ctx.c, nb, ctx.ref)
        sp_op.close()
        vendor.append({"family": "cusparse", "config": {"alg": alg}, "time_us": t, "rel_err": err})
        if t is not None and (best is None or t < best[0]):
            best = (t, alg)
    out["cusparse_us"] = best[0] if best else None
    out["cusparse_alg"] = best[1] if best else None
    errors.pop("cusparse", None) if best else None

    # cuBLAS on the densified A; FP16 on half copies of A and B (tensor cores)
    a_dense = ctx.a_dense_f32()
    shape = ctx.out_shape
    c32 = cp.empty(shape, cp.float32)
    b32 = [as_float(b).astype(cp.float32) for b in ctx.b_bufs] if ctx.problem.dtype not in ("fp32", "tf32") else ctx.b_bufs
    bias32 = None if bias is None else as_float(bias).astype(cp.float32)
    for mode in ("fp32", "tf32"):
        g = CublasGemm(a_dense, b32, c32, mode, layout, bias32)
        out[f"cublas_{mode}_us"], err = run_one(f"cublas_{mode}", g.launch, c32, nb, ctx.ref)
        vendor.append({"family": "dense", "config": {"math": mode}, "time_us": out[f"cublas_{mode}_us"], "rel_err": err})
    a16 = a_dense.astype(cp.float16)
    b16 = [as_float(b).astype(cp.float16) for b in ctx.b_bufs] if ctx.problem.dtype != "fp16" else ctx.b_bufs
    c16 = cp.empty(shape, cp.float16)
    bias16 = None if bias is None else as_float(bias).astype(cp.float16)
    g = CublasGemm(a16, b16, c16, "fp16", layout, bias16)
    out["cublas_fp16_us"], err = run_one("cublas_fp16", g.launch, c16, nb, ctx.ref)
    vendor.append({"family": "dense", "config": {"math": "fp16"}, "time_us": out["cublas_fp16_us"], "rel_err": err})
    del a16, b16, c16
    if ctx.problem.dtype == "bf16":  # the dense path of the same dtype: bf16 copies of A (B and C are bf16 already)
        abf = storage(a_dense, "bf16")
        cbf = cp.empty(shape, cp.uint16)
        g = CublasGemm(abf, ctx.b_bufs, cbf, "bf16", layout, bias)
        out["cublas_bf16_us"], err = run_one("cublas_bf16", g.launch, cbf, nb, ctx.ref)
        vendor.append({"family": "dense", "config": {"math": "bf16"}, "time_us": out["cublas_bf16_us"], "rel_err": err})
        del abf, cbf
    del a_dense, b32, c32
    out["baseline_errors"] = errors if errors else {}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
