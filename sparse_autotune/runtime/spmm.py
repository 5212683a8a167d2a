"""The SpMM operator: built once from a sparse matrix, runs the best known kernel for each N."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import UserError
from ..store.lookup import default_config, lookup
from ..core.problem import DTYPES, dtype_name, host_values


def _to_scipy(a) -> tuple[sp.csr_matrix, np.dtype | str]:
    """A as a float32 scipy CSR matrix (scipy has no 16-bit floats), and A's own dtype ('bf16' for a bfloat16
    tensor: numpy has no bfloat16)."""
    bf16 = False
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
        bf16 = t.dtype == torch.bfloat16
        host = (t.float() if bf16 else t).cpu().numpy()
    else:
        raise UserError(f"unsupported type for A: {type(a).__name__} (use scipy.sparse, numpy, CuPy or PyTorch)")
    if host.ndim != 2:
        raise UserError(f"A must be 2-D, got {host.ndim}-D")
    from ..core.problem import check_real_matrix  # noqa: PLC0415
    check_real_matrix(host, "A", dense_limit=None, allow_zero=True)  # complex, NaN, empty, all zeros: one line before any conversion
    src_dtype = np.dtype(host.dtype)
    if sp.issparse(host):
        out = sp.csr_matrix(host.astype(np.float32) if src_dtype != np.float16 else
                            sp.csr_matrix((host.data.astype(np.float32), host.indices, host.indptr), shape=host.shape))
    else:
        out = sp.csr_matrix(np.asarray(host, dtype=np.float32))
    return out, ("bf16" if bf16 else src_dtype)


class SpMM:
    """op = SpMM(A); C = op(B) computes A @ B on the GPU with the best known (or a default) kernel.

    n_hint: an N to plan and compile for at construction. Any N works at call time: the config comes from
    lookup (exact, else the nearest tuned problem, else same-arch), adapted to N, else the default.

    A: scipy.sparse matrix, numpy/CuPy dense or CuPy sparse array, or a PyTorch tensor (M x K).
    dtype: 'fp32', 'fp16' or 'bf16' (default from A: float16 -> fp16, a torch bfloat16 tensor -> bf16, float32/float64
    -> fp32). B: CuPy array or PyTorch CUDA tensor of shape (K, N) and the operator's dtype (bf16: torch.bfloat16, or a
    CuPy uint16 array of bfloat16 bit patterns, as CuPy has no bfloat16); the result has the same kind. `op.plan(n)` says which kernel a given N uses and where its config came from.
    """

    def __init__(self, a, n_hint: int | None = None, dtype: str | None = None, db=None):
        host, src_dtype = _to_scipy(a)
        host.sum_duplicates()
        host.eliminate_zeros()
        host.sort_indices()
        self.dtype = dtype if dtype is not None else (src_dtype if src_dtype == "bf16" else dtype_name(src_dtype))
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        host.data = host_values(host.data, DTYPES[self.dtype])
        self.host = host
        self.shape = host.shape
        self.nnz = int(host.nnz)
        self.density = self.nnz / (self.shape[0] * self.shape[1]) if self.nnz else 0.0
        self.db = db
        self._dev = None
        self._plans: dict[int, tuple] = {}
        self._kernels: dict[int, object] = {}
        self._launchers: dict[int, object] = {}  # N -> kernels.Launcher: the hot path is this dict lookup
        self._np_dtype = np.dtype(DTYPES[self.dtype])
        self._dev_id: int | None = None  # the device A lives on, once uploaded
        self._cp = None  # the cupy module, once a call needed it
        self._torch = None  # (torch, torch dtype, raw current-stream getter), once a torch call needed it
        if n_hint is not None:  # plan, compile and pack the launch now, not at the first call
            self._prepare(int(n_hint))

    def _kernel(self, n: int):
        kern = self._kernels.get(n)
        if kern is None:
            from ..device.kernel import build_kernel  # noqa: PLC0415
            family, cfg, _ = self.plan(n)
            kern = self._kernels[n] = build_kernel(self._device(), family, cfg, self.dtype)
        return kern

    def _device(self):
        if self._dev is None:
            from ..device.gpu import cupy, gpu_info  # noqa: PLC0415
            from ..device.kernel import DeviceCSR  # noqa: PLC0415
            gpu_info()  # fails with a clear message where there is no GPU
            self._dev = DeviceCSR(self.host, self.dtype)
            self._dev_id = cupy().cuda.runtime.getDevice()
        return self._dev

    def plan(self, n: int) -> tuple[str, dict, str]:
        """(family, config, source) for N columns; source is how lookup found it (exact, nearest, same-arch) or
        'default'. The config is lookup's: the record's adapted to this N by its family (`lookup` prints the same)."""
        if n in self._plans:
            return self._plans[n]
        from ..device.gpu import gpu_info  # noqa: PLC0415
        info = gpu_info()
        m, k = self.shape
        found = None
        if self.nnz:
            found = lookup(m, k, n, max(self.density, 1e-6), self.dtype, gpu=info.name, cc=info.cc, db=self.db,
                           nnz=self.nnz, limits=info.limits())
        if found is None:  # an all-zero A: any kernel computes the zeros
            found = default_config(m, k, n, self.dtype, self.nnz, info.limits())
        self._plans[n] = (found.family, found.config, found.source)
        return self._plans[n]

    def __call__(self, b, out=None):
        """C = A @ B (into `out` when given); B a CuPy array or a PyTorch CUDA tensor, C of the same kind.

        PyTorch tensors run on PyTorch's current stream of B's device (the output from PyTorch's allocator), CuPy
        arrays on CuPy's current stream. A call is a few checks and one cuLaunchKernel on raw pointers, so it can be
        captured into a CUDA graph (torch.cuda.graph, or a CuPy stream capture), once an eager call has planned and
        compiled the kernel for that N."""
        if type(b).__module__.startswith("torch"):
            return self._call_torch(b, out)
        return self._call_cupy(b, out)

    def _bad_shape(self, shape) -> UserError:
        m, k = self.shape
        return UserError(f"B has shape {tuple(shape)}, expected ({k}, N) for A of shape ({m}, {k})")

    def _bad_dtype(self, dtype) -> UserError:
        return UserError(f"B has dtype {dtype}, the operator computes in {self.dtype} ({self._np_dtype})")

    def _new_launcher(self, n: int, stream_ptr: int):
        """The first call with N: plan, compile and pack its launcher (refused while `stream_ptr` is capturing)."""
        try:
            capturing = self._cp.cuda.runtime.streamIsCapturing(stream_ptr)
        except Exception:  # noqa: BLE001 - querying the legacy stream while another stream captures fails too
            capturing = True
        if capturing:
            raise UserError(f"N={n} is new to this operator: call it once with this N before CUDA graph capture "
                            "(the first call plans, compiles and uploads A)")
        return self._prepare(n)

    def _prepare(self, n: int):
        from ..device.gpu import cupy  # noqa: PLC0415
        ln = self._kernel(n).launcher(n)
        # A's arrays were uploaded on CuPy's current stream: let them land before launches on any other stream
        cupy().cuda.get_current_stream().synchronize()
        self._launchers[n] = ln
        return ln

    def _launch(self, n: int, cur: int, b_ptr: int, c_ptr: int, stream: int) -> None:
        """The launch of both call paths: A must be on the current device; a new N is planned first."""
        if self._dev_id is not None and cur != self._dev_id:
            raise UserError(f"the operator's A is on GPU {self._dev_id}, the current device is {cur}")
        ln = self._launchers.get(n) or self._new_launcher(n, stream)
        ln(b_ptr, c_ptr, stream)

    def _call_cupy(self, b, out):
        cp = self._cp
        if cp is None:
            from ..device.gpu import cupy  # noqa: PLC0415
            cp = self._cp = cupy()
        if not isinstance(b, cp.ndarray):
            raise UserError(f"B must be a CuPy array or a PyTorch CUDA tensor, got {type(b).__name__}")
        m, k = self.shape
        if b.ndim != 2 or b.shape[0] != k:
            raise self._bad_shape(b.shape)
        if b.dtype != self._np_dtype:
            raise self._bad_dtype(b.dtype)
        cur = cp.cuda.runtime.getDevice()
        if b.device.id != cur:
            raise UserError(f"B is on GPU {b.device.id}, the current device is {cur}")
        if not b.flags.c_contiguous:
            b = cp.ascontiguousarray(b)
        n = b.shape[1]
        if out is None:
            c = cp.empty((m, n), dtype=b.dtype)
        else:
            if (not isinstance(out, cp.ndarray) or out.shape != (m, n) or out.dtype != b.dtype
                    or not out.flags.c_contiguous):
                raise UserError(f"out must be a C-contiguous ({m}, {n}) array of {b.dtype}")
            if out.device.id != cur:
                raise UserError(f"out is on GPU {out.device.id}, the current device is {cur}")
            c = out
        if m and n:
            self._launch(n, cur, b.data.ptr, c.data.ptr, cp.cuda.get_current_stream().ptr)
        return c

    def _call_torch(self, b, out):
        tt = self._torch
        if tt is None:
            tt = self._torch_setup()
        torch, tdtype, raw_stream = tt
        if not b.is_cuda:
            raise UserError("B is a CPU tensor: move it to the GPU (b.cuda())")
        m, k = self.shape
        if b.dim() != 2 or b.shape[0] != k:
            raise self._bad_shape(b.shape)
        if b.dtype != tdtype:
            raise self._bad_dtype(str(b.dtype).replace("torch.", ""))
        dev = b.get_device()
        cur = self._cp.cuda.runtime.getDevice()
        if dev != cur:
            raise UserError(f"B is on GPU {dev}, the current device is {cur}")
        if not b.is_contiguous():
            b = b.contiguous()
        n = b.shape[1]
        if out is None:
            c = torch.empty((m, n), dtype=tdtype, device=b.device)
        else:
            if (not isinstance(out, torch.Tensor) or not out.is_cuda or out.shape != (m, n) or out.dtype != tdtype
                    or not out.is_contiguous()):
                raise UserError(f"out must be a C-contiguous ({m}, {n}) array of {self._np_dtype}")
            if out.get_device() != dev:
                raise UserError(f"out is on GPU {out.get_device()}, B is on GPU {dev}")
            c = out
        if m and n:  # on PyTorch's current stream: ordered with the caller's work, captured with it
            self._launch(n, cur, b.data_ptr(), c.data_ptr(), raw_stream(dev))
        return c

    def _torch_setup(self) -> tuple:
        """(torch, the operator's torch dtype, device index -> raw handle of PyTorch's current stream), cached."""
        import torch  # noqa: PLC0415

        from ..device.gpu import cupy  # noqa: PLC0415
        if self._cp is None:
            self._cp = cupy()
        raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what torch.compile's kernels call
        if raw_stream is None:
            def raw_stream(dev: int) -> int:
                return torch.cuda.current_stream(dev).cuda_stream
        self._torch = (torch, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype], raw_stream)
        return self._torch
