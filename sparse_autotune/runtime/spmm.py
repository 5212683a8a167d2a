"""The SpMM operator: built once from a sparse matrix, runs the best known kernel for each N (or a vendor path where
one was faster: cuSPARSE, or cuBLAS on a dense copy of A). `op(B)` is C = A @ B (the kn layout); `op.linear(x, bias)`
is y = x @ A^T + bias with x and y as PyTorch's nn.Linear holds them (the nk layout, core.problem), planned apart
(`op.plan(n, layout="nk")`): one kernel where its plan is native."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ..errors import UserError
from ..store.lookup import default_config, lookup
from ..core.problem import DTYPES, check_layout, dtype_name, host_values
from ..core.space import NK_PATH
from ..core.vendor import CUSPARSE, CUSPARSE_AUTO, DENSE, is_vendor
from .quick import tune_mode


class _PlanFields(NamedTuple):
    family: str
    config: dict
    source: str


class Plan(_PlanFields):
    """What the operator runs for one N: (family, config, source). source is how lookup found the config (exact,
    bucket, nearest, same-arch, default) or "quick" (timed at the first call with this N, runtime.quick). family
    "cusparse" runs cuSPARSE SpMM on A as CSR, "dense" cuBLAS on a dense copy of A (`op.dense_bytes` of GPU memory,
    made only when a plan runs it); any other family is a tuned kernel.

    `layout` is "kn" (op(B)) or "nk" (op.linear(x), `op.plan(n, layout="nk")`); an nk plan's `path` is "native" (one
    kernel: a family declaring nk, or a vendor path) or "staged" (x transposed, the kn kernel, y = C^T + bias: three
    kernels; device.staged), its config carrying it as nk_path for a kernel family; a kn plan's path is None. The
    plan is still the tuple (family, config, source)."""

    layout = "kn"

    def __new__(cls, family: str, config: dict, source: str, layout: str = "kn"):
        self = super().__new__(cls, family, config, source)
        if layout != "kn":
            self.layout = layout
        return self

    @property
    def vendor(self) -> bool:
        return is_vendor(self.family)

    @property
    def path(self) -> str | None:
        if self.layout != "nk":
            return None
        return "native" if self.vendor else self.config.get(NK_PATH, "staged")

    def __repr__(self) -> str:
        nk = f", layout='nk', path={self.path!r}" if self.layout == "nk" else ""
        return f"Plan(family={self.family!r}, config={self.config!r}, source={self.source!r}{nk})"


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


def _cupy_out(cp, out, shape: tuple[int, int], dtype, cur: int):
    """The output of a call on CuPy arrays: a new C-contiguous array of `shape` and `dtype`, or `out` where it is one
    on the current device (else one line)."""
    if out is None:
        return cp.empty(shape, dtype=dtype)
    if not isinstance(out, cp.ndarray) or out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise UserError(f"out must be a C-contiguous ({shape[0]}, {shape[1]}) array of {dtype}")
    if out.device.id != cur:
        raise UserError(f"out is on GPU {out.device.id}, the current device is {cur}")
    return out


class SpMM:
    """op = SpMM(A); C = op(B) computes A @ B on the GPU with the best known (or a default) kernel.

    n_hint: an N to plan and compile for at construction. Any N works at call time: the config comes from
    lookup (exact, else the nearest tuned problem, else same-arch), adapted to N, else the default.

    A: scipy.sparse matrix, numpy/CuPy dense or CuPy sparse array, or a PyTorch tensor (M x K).
    dtype: 'fp32', 'fp16' or 'bf16' (default from A: float16 -> fp16, a torch bfloat16 tensor -> bf16, float32/float64
    -> fp32). B: CuPy array or PyTorch CUDA tensor of shape (K, N) and the operator's dtype (bf16: torch.bfloat16, or a
    CuPy uint16 array of bfloat16 bit patterns, as CuPy has no bfloat16); the result has the same kind. `op.plan(n)` says which kernel a given N uses and where its config came from.

    A record of a vendor path (tuned where cuSPARSE or cuBLAS beat every kernel: family "cusparse" / "dense") is run
    as such: cuSPARSE on A's CSR arrays, cuBLAS on a dense copy of A, made only for such a plan (M x K elements of the
    dtype: `op.dense_bytes`). allow_tf32: an fp32 operator may run a record of cuBLAS TF32 (off: TF32 rounds the inputs
    to 10 mantissa bits).

    tune: "off" (the plan is lookup's) or "quick" (at the first call with an N that has no exact record on this GPU
    model, a handful of candidates are verified and timed on the GPU, the fastest is used and stored in the user's
    tuning database: runtime.quick); default $SPARSE_AUTOTUNE_RUNTIME_TUNE, else "off" (runtime.quick says why).
    `op.quick[n]` holds what a quick tune of N measured.

    op.linear(x, bias=None, out=None) is y = x @ A^T + bias with x (N x K) and y (N x M) as PyTorch's nn.Linear holds
    them (the nk layout): planned, tuned and launched apart from op(B) (`op.plan(n, layout="nk")`, `op.quick_nk`), one
    kernel where its plan's path is native.
    """

    # set by a caller that runs a cuBLAS plan of op.linear as torch's F.linear, the bias fused (SparseLinear): quick
    # tuning then times the cuBLAS candidate without the operator's separate bias kernel (runtime.quick)
    dense_bias_fused = False

    def __init__(self, a, n_hint: int | None = None, dtype: str | None = None, db=None, tune: str | None = None,
                 allow_tf32: bool = False):
        self.tune = tune_mode(tune)  # a bad value: one line, before A is converted
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
        self.allow_tf32 = bool(allow_tf32)
        self.quick: dict = {}  # N -> runtime.quick.QuickResult of the quick tunes run
        self.quick_nk: dict = {}  # the same for op.linear (the nk layout)
        self._dense = None  # A's dense copy on the device, while a plan (or a quick tune) runs cuBLAS
        self._dev = None
        self._plans: dict[int, Plan] = {}
        self._nk_plans: dict[int, Plan] = {}
        self._kernels: dict[int, object] = {}
        self._launchers: dict[int, object] = {}  # N -> kernels.Launcher: the hot path is this dict lookup
        self._nk_launchers: dict[int, object] = {}  # N -> op.linear's launcher, ln(x_ptr, y_ptr, stream, bias_ptr)
        self._np_dtype = np.dtype(DTYPES[self.dtype])
        self._dev_id: int | None = None  # the device A lives on, once uploaded
        self._cp = None  # the cupy module, once a call needed it
        self._torch = None  # (torch, torch dtype, raw current-stream getter), once a torch call needed it
        if n_hint is not None:  # plan, compile and pack the launch now, not at the first call
            self._prepare(int(n_hint))

    def __setstate__(self, state):
        """An operator pickled by an older version lacks the nk layout's caches: they start empty."""
        self.__dict__.update(state)
        for name in ("_nk_plans", "_nk_launchers", "quick_nk"):
            self.__dict__.setdefault(name, {})

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

    @property
    def dense_bytes(self) -> int:
        """GPU memory held by A's dense copy (0 unless a plan runs cuBLAS, family "dense")."""
        return 0 if self._dense is None else int(self._dense.nbytes)

    def plan(self, n: int, layout: str = "kn") -> Plan:
        """Plan(family, config, source) for N columns; source is how lookup found it (exact, bucket, nearest,
        same-arch, default), or "quick" once a quick tune of this N ran (at its first call). The config is lookup's:
        the record's adapted to this N by its family (`lookup` prints the same). layout "nk": op.linear's plan for N
        rows of x (nk records first, then kn records: store.lookup; `.path` says native or staged)."""
        plans = self._plans if layout == "kn" else self._nk_plans
        if n in plans:
            return plans[n]
        check_layout(layout)
        from ..device.gpu import gpu_info  # noqa: PLC0415
        info = gpu_info()
        m, k = self.shape
        found = None
        if self.nnz:
            found = lookup(m, k, n, max(self.density, 1e-6), self.dtype, gpu=info.name, cc=info.cc, db=self.db,
                           nnz=self.nnz, limits=info.limits(), allow_tf32=self.allow_tf32, layout=layout)
        if found is None:  # an all-zero A: any kernel computes the zeros
            found = default_config(m, k, n, self.dtype, self.nnz, info.limits(), layout=layout)
        plans[n] = Plan(found.family, found.config, found.source, layout)
        return plans[n]

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

    def _new_launcher(self, n: int, stream_ptr: int, layout: str = "kn"):
        """The first call with N: plan, compile and pack its launcher (refused while `stream_ptr` is capturing)."""
        try:
            capturing = self._cp.cuda.runtime.streamIsCapturing(stream_ptr)
        except Exception:  # noqa: BLE001 - querying the legacy stream while another stream captures fails too
            capturing = True
        if capturing:
            what = "call it" if layout == "kn" else "call op.linear"
            raise UserError(f"N={n} is new to this operator: {what} once with this N before CUDA graph capture "
                            "(the first call plans, compiles and uploads A)")
        return self._prepare(n, layout)

    def _prepare(self, n: int, layout: str = "kn"):
        from ..device.gpu import cupy  # noqa: PLC0415
        ln = self._quick(n, layout) if self.tune == "quick" else None
        if ln is None:
            family, cfg, _ = self.plan(n, layout)
            if layout == "kn" and not is_vendor(family):
                ln = self._kernel(n).launcher(n)
            else:
                ln = self._build(n, family, cfg, layout)
        # A's arrays were uploaded on CuPy's current stream: let them land before launches on any other stream
        cupy().cuda.get_current_stream().synchronize()
        (self._launchers if layout == "kn" else self._nk_launchers)[n] = ln
        self._drop_dense()
        return ln

    def _build(self, n: int, family: str, cfg: dict, layout: str = "kn", strict: bool = False):
        """The launcher of one config for N: a kernel compiled for A, or a vendor path (cuSPARSE on A's CSR arrays,
        cuBLAS on A's dense copy, made here the first time). layout "nk": `ln(x_ptr, y_ptr, stream_ptr, bias_ptr)`:
        a native nk kernel or the staged path by the config's nk_path (device.staged.build_for), or the vendor path's
        nk form (a cuSPARSE algorithm that refuses its operands there runs as CUSPARSE_SPMM_ALG_DEFAULT, unless
        `strict`: quick tuning measures each algorithm as it is)."""
        if not is_vendor(family):
            from ..device.staged import build_for  # noqa: PLC0415
            return build_for(self._device(), family, cfg, self.dtype, layout).launcher(n)
        from ..device.vendor import dense_copy, vendor_launcher  # noqa: PLC0415
        if family == CUSPARSE:
            try:
                ln = vendor_launcher(family, cfg, n, self.dtype, a_dev=self._device(), layout=layout)
                plans = self._plans if layout == "kn" else self._nk_plans
                if cfg.get("alg") == CUSPARSE_AUTO and n in plans:  # the plan says which algorithm was picked
                    plans[n] = Plan(family, {"alg": ln.alg_name}, plans[n].source, layout)
                return ln
            except Exception:  # noqa: BLE001 - nk: an algorithm without column-major operands; the default has them
                if strict or layout == "kn" or cfg.get("alg") == "CUSPARSE_SPMM_ALG_DEFAULT":
                    raise
                default = {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}
                ln = vendor_launcher(family, default, n, self.dtype, a_dev=self._device(), layout=layout)
                if n in self._nk_plans:  # the plan says what runs
                    self._nk_plans[n] = Plan(family, default, self._nk_plans[n].source, layout)
                return ln
        if self._dense is None:
            from ..device.gpu import cupy, gpu_info  # noqa: PLC0415
            gpu_info()  # fails with a clear message where there is no GPU
            self._dense = dense_copy(self.host, self.dtype)
            self._dev_id = cupy().cuda.runtime.getDevice()
        return vendor_launcher(DENSE, cfg, n, self.dtype, a_dense=self._dense, layout=layout)

    def _drop_dense(self) -> None:
        """Free A's dense copy when no launcher runs cuBLAS on it (after a quick tune whose dense candidate lost)."""
        if self._dense is None:
            return
        launchers = [*self._launchers.values(), *self._nk_launchers.values()]
        if not any(getattr(ln, "a", None) is self._dense for ln in launchers):
            self._dense = None

    def _quick(self, n: int, layout: str = "kn"):
        """runtime.quick at the first call with N (quick mode): the winner's launcher, or None (the lookup's plan is
        used) where the plan is an exact record of this GPU model (nk: an exact nk record), A is empty, or no
        candidate ran."""
        done = self.quick if layout == "kn" else self.quick_nk
        plan = self.plan(n, layout) if self.nnz and self.shape[0] else None
        if n in done or plan is None or (plan.source == "exact" and self._own_layout(n, layout)):
            return None
        from ..device.gpu import gpu_info  # noqa: PLC0415
        from .quick import quick_tune  # noqa: PLC0415
        res = done[n] = quick_tune(self, n, gpu_info(), layout)
        if res.chosen is None:
            import warnings  # noqa: PLC0415
            warnings.warn(f"sparse-autotune: quick tuning of N={n} ({layout}) found no candidate that runs: "
                          f"{'; '.join(f'{c.family}: {c.error}' for c in res.candidates)}", stacklevel=4)
            return None
        (self._plans if layout == "kn" else self._nk_plans)[n] = Plan(res.chosen.family, res.chosen.config, "quick",
                                                                      layout)
        return res.chosen.built

    def _own_layout(self, n: int, layout: str) -> bool:
        """The exact record lookup found for N is of the layout asked (an nk plan may come from a kn record)."""
        if layout == "kn":
            return True
        from ..device.gpu import gpu_info  # noqa: PLC0415
        info = gpu_info()
        m, k = self.shape
        found = lookup(m, k, n, max(self.density, 1e-6), self.dtype, gpu=info.name, cc=info.cc, db=self.db,
                       nnz=self.nnz, limits=info.limits(), allow_tf32=self.allow_tf32, layout=layout)
        return found is not None and found.record_layout == layout

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
        c = _cupy_out(cp, out, (m, n), b.dtype, cur)
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

    # ---- y = x @ A^T + bias (the nk layout: x and y as nn.Linear holds them) -------------------------------------

    def linear(self, x, bias=None, out=None):
        """y = x @ A^T + bias for x of shape (N, K) (N rows of activations, as PyTorch holds them), y of shape (N, M),
        into `out` when given: what nn.Linear computes with A as its weight. x, bias and out are all CuPy arrays or all
        PyTorch CUDA tensors of the operator's dtype (bf16: torch.bfloat16, or CuPy uint16 bits); bias is a length-M
        vector or None.

        Planned apart from op(B) (`op.plan(n, layout="nk")`; quick tuning too): where the plan's path is native (a
        family declaring the nk layout, cuSPARSE or cuBLAS) the call is one kernel (a vendor path: its call, plus one
        kernel adding the bias), where it is staged three (x transposed into a K x N workspace, the kn kernel, y = C^T +
        bias; the workspaces are held per N, so calls of one operator with the same N must not run on two streams at
        once). The rules of op(B) hold: PyTorch's current stream and allocator for tensors, CuPy's for arrays; a few
        checks and the launch, capturable into a CUDA graph once an eager call with this N has planned and compiled."""
        if type(x).__module__.startswith("torch"):
            return self._linear_torch(x, bias, out)
        return self._linear_cupy(x, bias, out)

    def _bad_x(self, shape) -> UserError:
        m, k = self.shape
        return UserError(f"x has shape {tuple(shape)}, expected (N, {k}) for A of shape ({m}, {k}) (y = x @ A^T)")

    def _launch_nk(self, n: int, cur: int, x_ptr: int, y_ptr: int, stream: int, bias_ptr: int) -> None:
        if self._dev_id is not None and cur != self._dev_id:
            raise UserError(f"the operator's A is on GPU {self._dev_id}, the current device is {cur}")
        ln = self._nk_launchers.get(n) or self._new_launcher(n, stream, "nk")
        ln(x_ptr, y_ptr, stream, bias_ptr)

    def _linear_cupy(self, x, bias, out):
        cp = self._cp
        if cp is None:
            from ..device.gpu import cupy  # noqa: PLC0415
            cp = self._cp = cupy()
        if not isinstance(x, cp.ndarray):
            raise UserError(f"x must be a CuPy array or a PyTorch CUDA tensor, got {type(x).__name__}")
        m, k = self.shape
        if x.ndim != 2 or x.shape[1] != k:
            raise self._bad_x(x.shape)
        if x.dtype != self._np_dtype:
            raise UserError(f"x has dtype {x.dtype}, the operator computes in {self.dtype} ({self._np_dtype})")
        cur = cp.cuda.runtime.getDevice()
        if x.device.id != cur:
            raise UserError(f"x is on GPU {x.device.id}, the current device is {cur}")
        if not x.flags.c_contiguous:
            x = cp.ascontiguousarray(x)
        bias_ptr = 0
        if bias is not None:
            if (not isinstance(bias, cp.ndarray) or bias.shape != (m,) or bias.dtype != self._np_dtype
                    or bias.device.id != cur):
                raise UserError(f"bias must be a CuPy array of shape ({m},) and dtype {self._np_dtype} on GPU {cur}")
            bias = bias if bias.flags.c_contiguous else cp.ascontiguousarray(bias)  # kept alive until launched
            bias_ptr = bias.data.ptr
        n = x.shape[0]
        y = _cupy_out(cp, out, (n, m), x.dtype, cur)
        if m and n:
            self._launch_nk(n, cur, x.data.ptr, y.data.ptr, cp.cuda.get_current_stream().ptr, bias_ptr)
        return y

    def _linear_torch(self, x, bias, out):
        tt = self._torch
        if tt is None:
            tt = self._torch_setup()
        torch, tdtype, raw_stream = tt
        if not x.is_cuda:
            raise UserError("x is a CPU tensor: move it to the GPU (x.cuda())")
        m, k = self.shape
        if x.dim() != 2 or x.shape[1] != k:
            raise self._bad_x(x.shape)
        if x.dtype != tdtype:
            raise UserError(f"x has dtype {str(x.dtype).replace('torch.', '')}, the operator computes in {self.dtype}")
        dev = x.get_device()
        cur = self._cp.cuda.runtime.getDevice()
        if dev != cur:
            raise UserError(f"x is on GPU {dev}, the current device is {cur}")
        if not x.is_contiguous():
            x = x.contiguous()
        bias_ptr = 0
        if bias is not None:
            if (not isinstance(bias, torch.Tensor) or not bias.is_cuda or tuple(bias.shape) != (m,)
                    or bias.dtype != tdtype or bias.get_device() != dev):
                raise UserError(f"bias must be a CUDA tensor of shape ({m},) and dtype {self.dtype} on GPU {dev}")
            bias = bias if bias.is_contiguous() else bias.contiguous()  # kept alive until launched
            bias_ptr = bias.data_ptr()
        n = x.shape[0]
        if out is None:
            y = torch.empty((n, m), dtype=tdtype, device=x.device)
        else:
            if (not isinstance(out, torch.Tensor) or not out.is_cuda or tuple(out.shape) != (n, m)
                    or out.dtype != tdtype or not out.is_contiguous()):
                raise UserError(f"out must be a C-contiguous ({n}, {m}) tensor of {self.dtype}")
            if out.get_device() != dev:
                raise UserError(f"out is on GPU {out.get_device()}, x is on GPU {dev}")
            y = out
        if m and n:  # on PyTorch's current stream: ordered with the caller's work, captured with it
            self._launch_nk(n, cur, x.data_ptr(), y.data_ptr(), raw_stream(dev), bias_ptr)
        return y

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
        self._torch = (torch, {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                               "bf16": torch.bfloat16}[self.dtype], raw_stream)
        return self._torch
