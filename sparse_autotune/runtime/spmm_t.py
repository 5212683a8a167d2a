"""The transposed SpMM operator: `SpmmT(A)`; `op(B)` is C = A^T @ B from the same stored A (M x K), B M x N, C K x N.

What runs for (M, K, N, density, dtype) on this GPU is looked up among the records of the operator spmm_t
(`lookup_spmm_t`: store.lookup.op_lookup over the user's database and the shipped ones; exact, nearest, same-arch),
else the built-in default (ops.spmm_t.default_path: spmm_t_scatter, which reads A's own CSR: no copy of A). A record
of an explicit transpose (family transpose+<spmm family>) makes the operator build A^T's CSR once and keep it (a
second copy of A: `op.transpose_bytes`); a vendor record runs cuSPARSE (opA = TRANSPOSE) or cuBLAS on A^T dense.

B and C: CuPy arrays (float32, float16, bf16 as uint16 words) on CuPy's current stream, or PyTorch CUDA tensors
(DLPack, no copy) on PyTorch's current stream. `op.set_values(vals)` replaces A's values on its fixed pattern (a
training step): the layouts holding values are rebuilt at their next use.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

from ..core.problem import DTYPES, check_density, check_dim, check_dtype
from ..errors import UserError
from ..ops import spmm_t as T
from ..store.db import SPMM_T
from ..store.lookup import Tuned, op_lookup, record_config


def lookup_spmm_t(m: int, k: int, n: int, density: float, dtype: str = "fp32", gpu: str | None = None, db=None,
                  cc: str | None = None, limits: dict | None = None, nnz: int | None = None,
                  fallback: bool = True) -> Tuned | None:
    """The best known spmm_t config for A (M x K as stored) of the density and N: `.source` exact, nearest, same-arch or
    default (`.record_id` None). gpu=None: the current device where there is one, else records of any GPU."""
    check_dtype(dtype)
    m, k, n = check_dim(m, "M"), check_dim(k, "K"), check_dim(n, "N")
    density = check_density(density)
    if gpu is None:
        from ..device.gpu import this_gpu  # noqa: PLC0415
        gpu, cc, limits = this_gpu(gpu, cc, limits)
    nnz = int(nnz) if nnz is not None else max(1, round(density * m * k))
    env = T.spmm_t_env(m, k, n, nnz, dtype)

    def runs(r):
        cfg = record_config(r)
        return None if cfg is None else T.path_config(r.family, cfg, dtype, env, limits)
    res = op_lookup(SPMM_T, m, k, n, density, dtype, runs, gpu=gpu, cc=cc, db=db, fallback=fallback)
    if res is None and fallback:
        family, cfg = T.default_path(dtype, env, limits)
        res = Tuned(family, cfg, None, None, "default", None, None)
    return res


class Plan(NamedTuple):
    family: str
    config: dict
    source: str
    record_id: int | None = None

    @property
    def explicit_transpose(self) -> bool:
        return T.is_transpose(self.family)


class SpmmT:
    """op = SpmmT(A, dtype); C = op(B) computes A^T @ B (the module's docstring). A: scipy.sparse (M x K)."""

    def __init__(self, a, dtype: str = "fp32", db=None):
        check_dtype(dtype)
        self.operand = T.SpmmTOperand(a, dtype)
        self.dtype, self.db = dtype, db
        self.shape, self.nnz = self.operand.shape, self.operand.nnz
        m, k = self.shape
        self.density = self.nnz / (m * k) if m and k else 0.0
        self._plans: dict[int, Plan] = {}
        self._paths: dict[int, object] = {}
        self._lock = threading.Lock()

    @property
    def transpose_bytes(self) -> int:
        return self.operand.transpose_bytes

    def plan(self, n: int) -> Plan:
        if n not in self._plans:
            from ..device.gpu import gpu_info  # noqa: PLC0415
            info = gpu_info()
            m, k = self.shape
            t = lookup_spmm_t(m, k, n, max(self.density, 1e-9), self.dtype, gpu=info.name, cc=info.cc, db=self.db,
                              limits=info.limits(), nnz=max(1, self.nnz))
            self._plans[n] = Plan(t.family, t.config, t.source, t.record_id)
        return self._plans[n]

    def path(self, n: int):
        run = self._paths.get(n)
        if run is None:
            with self._lock:
                run = self._paths.get(n)
                if run is None:
                    from ..device.gpu import gpu_info  # noqa: PLC0415
                    plan = self.plan(n)
                    run = self._paths[n] = T.build_path(self.operand, n, plan.family, plan.config,
                                                        gpu_info().limits())
        return run

    def set_values(self, vals_dev=None, vals_host=None) -> None:
        """A's values replaced on its fixed pattern (nnz values in A's CSR order): A's own device copy in place, the
        paths that hold values elsewhere (explicit transpose, dense A^T) rebuilt at their next call."""
        self.operand.set_values(vals_host, vals_dev)
        keep = (T.ScatterKernel, T.CuSparseTLauncher) if vals_dev is not None else ()  # they read A's own arrays
        self._paths = {n: p for n, p in self._paths.items() if isinstance(p, keep)}

    def __call__(self, b, out=None):
        if type(b).__module__.startswith("torch"):
            return self._call_torch(b, out)
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        if not isinstance(b, cp.ndarray) or b.ndim != 2:
            raise UserError(f"spmm_t B must be a 2-D CuPy array or PyTorch CUDA tensor (got {type(b).__name__})")
        m, k = self.shape
        n = int(b.shape[1])
        if out is None:
            out = cp.empty((k, n), dtype=DTYPES[self.dtype])
        T._check_operands(b, out, m, k, self.dtype)
        if n == 0 or k == 0:
            return out
        return self.path(n)(b, out)

    def _call_torch(self, b, out):
        import torch  # noqa: PLC0415

        from ..device.gpu import cupy  # noqa: PLC0415
        from .sddmm import _cupy_of, _torch_stream  # noqa: PLC0415
        want = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]
        if not b.is_cuda or b.dtype != want:
            raise UserError(f"spmm_t B must be a CUDA tensor of {want} (got {b.dtype} on {b.device})")
        b = b.contiguous()
        if out is None:
            out = torch.empty((self.shape[1], b.shape[1]), dtype=want, device=b.device)
        cp = cupy()
        with cp.cuda.Device(b.device.index), _torch_stream(cp, torch.cuda.current_stream(b.device)):
            self(_cupy_of(b, torch), _cupy_of(out, torch))
        return out


__all__ = ["SpmmT", "Plan", "lookup_spmm_t"]
