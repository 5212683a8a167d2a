"""The SpMM operator: built once from a sparse matrix, runs the best known kernel for each N."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import UserError
from .lookup import default_config, lookup
from .problem import DTYPES, dtype_name, host_values
from .space import get_space, problem_env


def _to_scipy(a) -> tuple[sp.csr_matrix, np.dtype]:
    """A as a float32 scipy CSR matrix (scipy has no float16), and A's own dtype."""
    mod = type(a).__module__
    if sp.issparse(a):
        host = a
    elif isinstance(a, np.ndarray):
        host = a
    elif mod.startswith("cupyx.scipy.sparse") or mod.startswith("cupy"):
        host = a.get()
    elif mod.startswith("torch"):
        import torch  # noqa: PLC0415
        t = a.detach()
        t = t.to_dense() if t.layout != torch.strided else t
        host = t.cpu().numpy()
    else:
        raise UserError(f"unsupported type for A: {type(a).__name__} (use scipy.sparse, numpy, CuPy or PyTorch)")
    if host.ndim != 2:
        raise UserError(f"A must be 2-D, got {host.ndim}-D")
    src_dtype = np.dtype(host.dtype)
    if sp.issparse(host):
        out = sp.csr_matrix(host.astype(np.float32) if src_dtype != np.float16 else
                            sp.csr_matrix((host.data.astype(np.float32), host.indices, host.indptr), shape=host.shape))
    else:
        out = sp.csr_matrix(np.asarray(host, dtype=np.float32))
    return out, src_dtype


def _adapt(space, config: dict, dtype: str, env: dict, limits: dict) -> dict | None:
    """The config if it can run this problem, else the same with the widest vector width that can, else None."""
    cfg = space.normalize(config, dtype)
    if cfg is None:
        return None
    if space.check(cfg, env, limits) is None:
        return cfg
    if "vec" in cfg:
        for v in sorted(space.param("vec").choices(dtype), reverse=True):
            trial = {**cfg, "vec": v}
            if v < cfg["vec"] and space.check(trial, env, limits) is None:
                return trial
    return None


class SpMM:
    """op = SpMM(A); C = op(B) computes A @ B on the GPU with the best known (or a default) kernel.

    n_hint: an N to plan and compile for at construction. Any N works at call time: the config comes from
    lookup (exact, else the nearest tuned problem, else same-arch), adapted to N, else the default.

    A: scipy.sparse matrix, numpy/CuPy dense or CuPy sparse array, or a PyTorch tensor (M x K).
    dtype: 'fp32' or 'fp16' (default from A: float16 -> fp16, float32/float64 -> fp32).
    B: CuPy array or PyTorch CUDA tensor of shape (K, N) and the operator's dtype; the result has the
    same kind. `op.plan(n)` says which kernel a given N uses and where its config came from.
    """

    def __init__(self, a, n_hint: int | None = None, dtype: str | None = None, db=None):
        host, src_dtype = _to_scipy(a)
        host.sum_duplicates()
        host.eliminate_zeros()
        host.sort_indices()
        self.dtype = dtype if dtype is not None else dtype_name(src_dtype)
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}: choose fp32 or fp16")
        host.data = host_values(host.data, DTYPES[self.dtype])
        self.host = host
        self.shape = host.shape
        self.nnz = int(host.nnz)
        self.density = self.nnz / (self.shape[0] * self.shape[1]) if self.nnz else 0.0
        self.db = db
        self._dev = None
        self._plans: dict[int, tuple] = {}
        self._kernels: dict[int, object] = {}
        if n_hint is not None:  # plan and compile now, not at the first call
            self._kernel(int(n_hint))

    def _kernel(self, n: int):
        kern = self._kernels.get(n)
        if kern is None:
            from .kernels import build_kernel  # noqa: PLC0415
            family, cfg, _ = self.plan(n)
            kern = self._kernels[n] = build_kernel(self._device(), family, cfg, self.dtype)
        return kern

    def _device(self):
        if self._dev is None:
            from .gpu import gpu_info  # noqa: PLC0415
            from .kernels import DeviceCSR  # noqa: PLC0415
            gpu_info()  # fails with a clear message where there is no GPU
            self._dev = DeviceCSR(self.host, self.dtype)
        return self._dev

    def plan(self, n: int) -> tuple[str, dict, str]:
        """(family, config, source) for N columns; source is how lookup found it (exact, nearest, same-arch)
        or 'default'. A stored config that cannot run this N (e.g. a vector width N is not divisible by) has
        its vector width lowered; if it still cannot run, the default is used."""
        if n in self._plans:
            return self._plans[n]
        from .gpu import gpu_info  # noqa: PLC0415
        info = gpu_info()
        m, k = self.shape
        env = problem_env(m, k, n, self.nnz, self.dtype)
        found = None
        if self.nnz:
            found = lookup(m, k, n, max(self.density, 1e-6), self.dtype, gpu=info.name, cc=info.cc, db=self.db)
        if found is not None and found.source != "default":
            space = get_space(found.family)
            cfg = _adapt(space, found.config, self.dtype, env, info.limits())
            if cfg is not None:
                self._plans[n] = (found.family, cfg, found.source)
                return self._plans[n]
        d = default_config(m, k, n, self.dtype, self.nnz, info.limits())
        self._plans[n] = (d.family, d.config, "default")
        return self._plans[n]

    def __call__(self, b, out=None):
        from .gpu import cupy  # noqa: PLC0415
        cp = cupy()
        is_torch = type(b).__module__.startswith("torch")
        if is_torch:
            if not b.is_cuda:
                raise UserError("B is a CPU tensor: move it to the GPU (b.cuda())")
            bc = cp.from_dlpack(b.detach())
        elif isinstance(b, cp.ndarray):
            bc = b
        else:
            raise UserError(f"B must be a CuPy array or a PyTorch CUDA tensor, got {type(b).__name__}")
        m, k = self.shape
        if bc.ndim != 2 or bc.shape[0] != k:
            raise UserError(f"B has shape {tuple(bc.shape)}, expected ({k}, N) for A of shape ({m}, {k})")
        if bc.dtype != np.dtype(DTYPES[self.dtype]):
            raise UserError(f"B has dtype {bc.dtype}, the operator computes in {self.dtype} "
                            f"({np.dtype(DTYPES[self.dtype])})")
        if bc.device.id != cp.cuda.Device().id:
            raise UserError(f"B is on GPU {bc.device.id}, the current device is {cp.cuda.Device().id}")
        bc = cp.ascontiguousarray(bc)
        n = int(bc.shape[1])
        if out is None:
            cc = cp.empty((m, n), dtype=bc.dtype)
            out_is_new = True
        else:
            cc = cp.from_dlpack(out.detach()) if is_torch else out
            if cc.shape != (m, n) or cc.dtype != bc.dtype or not cc.flags.c_contiguous:
                raise UserError(f"out must be a C-contiguous ({m}, {n}) array of {bc.dtype}")
            out_is_new = False
        if n and m:
            if is_torch:  # run on PyTorch's current stream, so the kernel is ordered with the caller's work
                import torch  # noqa: PLC0415
                with cp.cuda.ExternalStream(torch.cuda.current_stream(bc.device.id).cuda_stream):
                    self._kernel(n)(bc, cc)
            else:
                self._kernel(n)(bc, cc)
        if is_torch:
            import torch  # noqa: PLC0415
            return torch.from_dlpack(cc) if out_is_new else out
        return cc
