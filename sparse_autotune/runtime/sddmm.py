"""The SDDMM operator: `sparse_autotune.sddmm(mask, X, Y, out=None)`, and `SDDMM(mask)` for repeated calls.

    out[p] = S.data[p] * dot(X[row(p), :], Y[col(p), :])   for the nonzeros p of the CSR mask S (M x N), in S's order

X is M x K, Y is N x K (row-major), out has nnz entries (ops.sddmm). What runs for a problem (M, N, K, density, dtype)
on this GPU is looked up among the records of the operator sddmm (`lookup_sddmm`: store.lookup.op_lookup over the
user's database and the shipped ones: this GPU model's exact key, else its nearest record, else another GPU of the same
compute capability; a record whose config the problem's constraints refuse is passed over), else the built-in default
(ops.sddmm_paths.default_path: the first known-good config of the SDDMM families that the problem allows). A record of
a vendor path (family cusparse or dense: stored by `tune --op sddmm` where it beat every kernel) runs that path. SpMM
records are never used (store.db: the operator is part of the key).

An SDDMM operator is built from a mask (scipy.sparse, or a CuPy sparse matrix: copied to the host once); it plans,
compiles and uploads once per (K, dtype) and keeps the result (`op.plan(k, dtype)` says what runs and where it came
from). `sddmm()` keeps the operators of the last few masks it was called with, found again by the mask's content (a
hash of its shape, indices and values per call: O(nnz) on the host; `SDDMM(mask)` skips it).

X, Y and out: CuPy arrays (float32, float16, or bf16 as uint16 words; X and Y C-contiguous, 16-byte aligned as CuPy
allocates them), run on CuPy's current stream; or PyTorch CUDA tensors (float32, float16, bfloat16; no copy: DLPack),
run on PyTorch's current stream, the result a tensor. The dtype is X's (`dtype=` checks it).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ..core.problem import DTYPES, check_density, check_dim, check_dtype, dtype_name, matrix_hash
from ..errors import UserError
from ..ops import sddmm as S
from ..ops import sddmm_paths as P
from ..store.db import SDDMM as OP
from ..store.lookup import Tuned, op_lookup, record_config


def lookup_sddmm(m: int, n: int, k: int, density: float, dtype: str = "fp32", gpu: str | None = None, db=None,
                 cc: str | None = None, limits: dict | None = None, nnz: int | None = None,
                 fallback: bool = True) -> Tuned | None:
    """The best known SDDMM config for a mask M x N of the density and K, on a GPU: `.source` exact, nearest, same-arch
    (records of the operator sddmm) or default (the built-in default, `.record_id` None). gpu=None: the current CUDA
    device where there is one (its compute capability and limits too), else records of any GPU. fallback=False: an
    exact record or None. `.key` is the record's (M, K, N, density, dtype, pattern) in store.db's terms (m, n: the
    mask's shape; k: the columns of X and Y)."""
    check_dtype(dtype)
    m, n, k = check_dim(m, "M"), check_dim(n, "N"), check_dim(k, "K")
    density = check_density(density)
    if gpu is None:
        from ..device.gpu import this_gpu  # noqa: PLC0415
        gpu, cc, limits = this_gpu(gpu, cc, limits)
    nnz = int(nnz) if nnz is not None else max(1, round(density * m * n))
    env = S.sddmm_env(m, n, k, nnz, dtype)

    def runs(r):
        cfg = record_config(r)
        return None if cfg is None else P.path_config(r.family, cfg, dtype, env, limits)
    res = op_lookup(OP, m, k, n, density, dtype, runs, gpu=gpu, cc=cc, db=db, fallback=fallback)
    if res is None and fallback:
        family, cfg = P.default_path(dtype, env, limits)
        res = Tuned(family, cfg, None, None, "default", None, None)
    return res


class Plan(NamedTuple):
    """What an SDDMM operator runs for one (K, dtype): the family (a kernel family, or the vendor path cusparse /
    dense), its config, and how lookup found it (exact, nearest, same-arch, default), with the record's id."""

    family: str
    config: dict
    source: str
    record_id: int | None = None


def _cupy_of(t, torch):
    """A PyTorch CUDA tensor as a CuPy array on the same memory (DLPack; bfloat16 as uint16 words)."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    if t.dtype == torch.bfloat16:
        return cp.from_dlpack(t.view(torch.int16)).view(cp.uint16)
    return cp.from_dlpack(t)


def _torch_stream(cp, stream):
    """PyTorch's current stream as a CuPy stream (CuPy's Stream.from_external where it has it, else ExternalStream)."""
    from_external = getattr(cp.cuda.Stream, "from_external", None)
    if from_external is not None:
        try:
            return from_external(stream)
        except Exception:  # noqa: BLE001 - a stream object without the CUDA stream protocol: by its handle
            pass
    return cp.cuda.ExternalStream(stream.cuda_stream)


class SDDMM:
    """op = SDDMM(mask); out = op(X, Y) computes out[p] = S.data[p] * dot(X[row(p)], Y[col(p)]) on the GPU with the
    best known (or the built-in default) config for the mask, K and the dtype (the module's docstring).

    mask: a scipy.sparse matrix (M x N; its entries as stored, values real), or a CuPy sparse matrix. db: the tuning
    database searched first (default as for `tune`), then the shipped ones."""

    def __init__(self, mask, db=None):
        if type(mask).__module__.startswith("cupyx"):
            mask = mask.get()
        self.mask = S.as_mask(mask)
        if self.mask.dtype != np.float32:
            self.mask = sp.csr_matrix((np.asarray(self.mask.data, dtype=np.float32), self.mask.indices,
                                       self.mask.indptr), shape=self.mask.shape)
        self.shape = self.mask.shape
        self.nnz = int(self.mask.nnz)
        m, n = self.shape
        self.density = self.nnz / (m * n) if m and n else 0.0
        self.db = db
        self._plans: dict[tuple[int, str], Plan] = {}
        self._paths: dict[tuple[int, str], object] = {}
        self._lock = threading.Lock()

    def plan(self, k: int, dtype: str = "fp32") -> Plan:
        """The plan for K and the dtype (looked up once, then kept)."""
        key = (int(k), dtype)
        if key not in self._plans:
            from ..device.gpu import gpu_info  # noqa: PLC0415
            info = gpu_info()
            m, n = self.shape
            t = lookup_sddmm(m, n, k, max(self.density, 1e-9), dtype, gpu=info.name, cc=info.cc, db=self.db,
                             limits=info.limits(), nnz=max(1, self.nnz))
            self._plans[key] = Plan(t.family, t.config, t.source, t.record_id)
        return self._plans[key]

    def _path(self, k: int, dtype: str):
        key = (int(k), dtype)
        run = self._paths.get(key)
        if run is None:
            with self._lock:
                run = self._paths.get(key)
                if run is None:
                    from ..device.gpu import gpu_info  # noqa: PLC0415
                    plan = self.plan(k, dtype)
                    run = P.build_path(self.mask, k, plan.family, plan.config, dtype, gpu_info().limits())
                    self._paths[key] = run
        return run

    def __call__(self, x, y, out=None, dtype: str | None = None):
        """out (nnz values) = the masked product; X (M x K), Y (N x K) and out CuPy arrays or PyTorch CUDA tensors."""
        if type(x).__module__.startswith("torch"):
            return self._call_torch(x, y, out, dtype)
        return self._call_cupy(x, y, out, dtype)

    def _dtype_of(self, x, dtype: str | None) -> str:
        arr_dtype = np.dtype(x.dtype)
        got = "bf16" if arr_dtype == np.uint16 else None
        if got is None:
            try:
                got = dtype_name(arr_dtype) if arr_dtype != np.float64 else None
            except UserError:
                got = None
        if got is None:
            raise UserError(f"SDDMM X has dtype {arr_dtype}: use float32, float16 or bf16 (uint16 words)")
        if dtype is not None and check_dtype(dtype) != got:
            raise UserError(f"SDDMM X has dtype {arr_dtype} ({got}), not {dtype}")
        return got

    def _call_cupy(self, x, y, out, dtype):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        if not isinstance(x, cp.ndarray) or not isinstance(y, cp.ndarray):
            raise UserError(f"SDDMM X and Y must be CuPy arrays or PyTorch CUDA tensors (got {type(x).__name__}, "
                            f"{type(y).__name__})")
        if x.ndim != 2:
            raise UserError(f"SDDMM X must be 2-D (M x K), got shape {tuple(x.shape)}")
        dt = self._dtype_of(x, dtype)
        (m, n), k = self.shape, int(x.shape[1])
        if out is None:
            out = cp.empty(self.nnz, dtype=DTYPES[dt])
        S._check_operand("X", x, (m, k), dt)  # before anything is planned or compiled
        S._check_operand("Y", y, (n, k), dt)
        S._check_operand("out", out, (self.nnz,), dt)
        if self.nnz == 0:
            return out
        return self._path(k, dt)(x, y, out)

    def _call_torch(self, x, y, out, dtype):
        import torch  # noqa: PLC0415
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        if not isinstance(y, torch.Tensor) or not x.is_cuda or not y.is_cuda:
            raise UserError("SDDMM X and Y must both be PyTorch CUDA tensors (or both CuPy arrays)")
        tdtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(x.dtype)
        if tdtype is None:
            raise UserError(f"SDDMM X has dtype {str(x.dtype).replace('torch.', '')}: use float32, float16 or bfloat16")
        if dtype is not None and check_dtype(dtype) != tdtype:
            raise UserError(f"SDDMM X has dtype {str(x.dtype).replace('torch.', '')} ({tdtype}), not {dtype}")
        if out is None:
            out = torch.empty(self.nnz, dtype=x.dtype, device=x.device)
        elif not isinstance(out, torch.Tensor) or not out.is_cuda:
            raise UserError("SDDMM out must be a PyTorch CUDA tensor where X is one")
        with cp.cuda.Device(x.device.index), _torch_stream(cp, torch.cuda.current_stream(x.device)):
            self._call_cupy(_cupy_of(x, torch), _cupy_of(y, torch), _cupy_of(out, torch), tdtype)
        return out


_OPS: OrderedDict = OrderedDict()  # (mask hash, shape, db) -> SDDMM, the last KEEP masks sddmm() was called with
_OPS_LOCK = threading.Lock()
KEEP = 8


def sddmm(mask, x, y, out=None, db=None, dtype: str | None = None):
    """out[p] = S.data[p] * dot(X[row(p)], Y[col(p)]) for the nonzeros p of the CSR mask S (scipy.sparse, M x N): X is
    M x K, Y is N x K, out (nnz values; made where None) CuPy arrays or PyTorch CUDA tensors, the result of the same
    kind. Runs the best known config for the problem on this GPU (lookup_sddmm; the built-in default where nothing was
    tuned), compiled once and kept with the operator of this mask (SDDMM; the last few masks are kept)."""
    if type(mask).__module__.startswith("cupyx"):
        mask = mask.get()
    m = S.as_mask(mask)
    key = (matrix_hash(m), m.shape, None if db is None else str(db))
    with _OPS_LOCK:
        op = _OPS.get(key)
        if op is None:
            op = _OPS[key] = SDDMM(m, db=db)
            while len(_OPS) > KEEP:
                _OPS.popitem(last=False)
        _OPS.move_to_end(key)
    return op(x, y, out, dtype)


__all__ = ["SDDMM", "Plan", "lookup_sddmm", "sddmm"]
