"""The sparse 3x3 convolution at run time: `sparse_autotune.conv3x3(x, w_sparse, stride=1)` and `SparseConv2d`.

What runs for a problem (Cout, Cin, H x W, batch, stride, layout, density, dtype) on this GPU is looked up among the
records of the operator conv3x3 (`lookup_conv`: store.lookup.op_lookup over the user's database and the shipped ones,
records of the problem's layout; this GPU model's exact key (the same geometry too), else its nearest record, else
another GPU of the same compute capability; a record whose config the problem's constraints refuse is passed over).
A record of cuDNN (family cudnn, stored by `tune --op conv3x3` where cuDNN beat every kernel), and a kernel's record
whose own cuDNN baseline at the problem's precision was faster, run cuDNN (torch.nn.functional.conv2d). Without any
record: cuDNN where PyTorch is there (SparseConv2d, and conv3x3 on torch tensors: never slower than what you had), else
the built-in default kernel (the first known-good config of the conv3x3 families that the problem allows).

x: a PyTorch CUDA tensor (float32, float16, bfloat16), NCHW contiguous or channels_last (the layout nhwc), run on
PyTorch's current stream, the result a tensor of the same memory format; or a CuPy array in NCHW (B x Cin x H x W;
`layout="nhwc"`: B x H x W x Cin) of the dtype's storage type, run on CuPy's current stream.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ..core.problem import DTYPES, check_density, matrix_hash
from ..errors import UserError
from ..ops import conv as C
from ..ops import conv_paths as P
from ..store.db import CONV3X3 as OP
from ..store.lookup import Tuned, op_lookup, record_config


class Plan(NamedTuple):
    family: str
    config: dict
    source: str
    record_id: int | None = None
    note: str | None = None


def default_path(dtype: str, env: dict, limits: dict | None = None) -> tuple[str, dict]:
    """The built-in default kernel: the first known-good config of the conv3x3 families (by rank) the problem allows,
    else their first feasible config, else cuDNN."""
    spaces = C.load_conv_spaces()
    known = ((s.family, d) for s in spaces for d in s.defaults(dtype, env, limits))
    feasible = ((s.family, c) for s in spaces for c in s.feasible(dtype, env, limits))
    return next(known, None) or next(feasible, None) or (P.CUDNN, {"math": dtype})


def lookup_conv(g: C.Geometry, density: float, dtype: str = "fp32", gpu: str | None = None, db=None,
                cc: str | None = None, limits: dict | None = None, nnz: int | None = None, kind: str = "uniform",
                fallback: bool = True) -> Tuned | None:
    """The best known conv3x3 config for the geometry, density and dtype: `.source` exact (this GPU model, this very
    geometry), nearest, same-arch, or default (`.record_id` None). gpu=None: the current GPU where there is one, else
    records of any GPU. fallback=False: an exact record or None."""
    C._check_dtype(dtype)
    density = check_density(density)
    from ..device.gpu import this_gpu  # noqa: PLC0415
    gpu, cc, limits = this_gpu(gpu, cc, limits)
    nnz = int(nnz) if nnz is not None else max(1, round(density * g.cout * g.cin * 9))
    env = C.conv_env(g, nnz, dtype)
    pattern = C.key_pattern(kind, g)

    def runs(r):
        cfg = record_config(r)
        if cfg is None or C.parse_key_pattern(r.pattern, r.m, r.k, r.layout) is None:
            return None
        if not fallback and C.parse_key_pattern(r.pattern, r.m, r.k, r.layout)[1] != g:
            return None  # exact only: the very geometry
        return P.path_config(r.family, cfg, dtype, env, limits)
    res = op_lookup(OP, g.cout, g.cin, g.pixels, density, dtype, runs, gpu=gpu, cc=cc, db=db, pattern=pattern,
                    fallback=fallback, layout=g.layout)
    if res is not None and res.source == "exact":
        got = C.parse_key_pattern(res.key[5], res.key[0], res.key[1], g.layout)
        if got is None or got[1] != g:  # the same M, K, N and density, another H x W / batch split
            res = dataclasses.replace(res, source="nearest", distance=0.25)
    if res is None and fallback:
        family, cfg = default_path(dtype, env, limits)
        res = Tuned(family, cfg, None, None, "default", None, None, layout=g.layout)
    return res


def _torch():
    try:
        import torch  # noqa: PLC0415
        return torch
    except ImportError:
        return None


class Conv3x3:
    """op = Conv3x3(w_sparse, stride); y = op(x): the sparse 3x3 convolution (padding 1) with the best known config per
    (geometry, dtype), planned, compiled and uploaded once per geometry and kept. w_sparse: a dense Cout x Cin x 3 x 3
    array / tensor (its zeros are the pattern) or the compressed CSR (ops.conv.compress_weight)."""

    def __init__(self, w, stride: int = 1, db=None):
        if isinstance(stride, bool) or stride not in C.STRIDES:
            raise UserError(f"stride must be 1 or 2 (got {stride!r})")
        self.wc = C.as_compressed(w)
        self.stride = int(stride)
        self.cout, self.cin = self.wc.shape[0], self.wc.shape[1] // 9
        self.nnz = int(self.wc.nnz)
        self.density = self.nnz / max(1, self.cout * self.cin * 9)
        self.db = db
        self._plans: dict = {}
        self._paths: dict = {}
        self._lock = threading.Lock()

    def geometry(self, batch: int, h: int, w: int, layout: str) -> C.Geometry:
        return C.check_geometry(self.cout, self.cin, h, w, batch, self.stride, layout)

    def plan(self, g: C.Geometry, dtype: str, torch_ok: bool = False) -> Plan:
        key = (g, dtype, torch_ok)
        if key not in self._plans:
            from ..device.gpu import gpu_info  # noqa: PLC0415
            info = gpu_info()
            t = lookup_conv(g, max(self.density, 1e-9), dtype, gpu=info.name, cc=info.cc, db=self.db,
                            limits=info.limits(), nnz=max(1, self.nnz))
            note = None
            if t.source == "default" and torch_ok:
                t, note = Tuned(P.CUDNN, {"math": dtype}, None, None, "default", None, None), "untuned: cuDNN"
            elif t.record_id is not None and not P.is_vendor(t.family) and torch_ok:
                base = _record_baseline(t, dtype)
                if base is not None and t.time_us is not None and base < t.time_us:
                    note = f"the record's own cuDNN {dtype} time {base:.2f} us beat its kernel ({t.time_us:.2f} us)"
                    t = dataclasses.replace(t, family=P.CUDNN, config={"math": dtype})
            self._plans[key] = Plan(t.family, t.config, t.source, t.record_id, note)
        return self._plans[key]

    def _kernel(self, g: C.Geometry, dtype: str, plan: Plan):
        key = (g, dtype, plan.family, json.dumps(plan.config, sort_keys=True))
        k = self._paths.get(key)
        if k is None:
            with self._lock:
                k = self._paths.get(key)
                if k is None:
                    from ..device.gpu import gpu_info  # noqa: PLC0415
                    if P.is_vendor(plan.family):
                        k = P.CudnnConv(self.wc, g, plan.config.get("math", dtype),
                                        "channels_last" if g.layout == "nhwc" else "nchw")
                    else:
                        k = C.build_conv(self.wc, g, plan.family, plan.config, dtype, gpu_info().limits())
                    self._paths[key] = k
        return k

    def __call__(self, x, layout: str | None = None, bias=None):
        if type(x).__module__.startswith("torch"):
            return self._call_torch(x, bias)
        return self._call_cupy(x, layout or "nchw")

    def _call_cupy(self, x, layout: str):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        if not isinstance(x, cp.ndarray) or x.ndim != 4:
            raise UserError(f"conv3x3 x must be a 4-D CuPy array or a PyTorch CUDA tensor (got {type(x).__name__})")
        dt = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16", np.dtype(np.uint16): "bf16"}.get(
            np.dtype(x.dtype))
        if dt is None:
            raise UserError(f"conv3x3 x has dtype {x.dtype}: use float32, float16 or bf16 (uint16 words)")
        b, c, h, w = x.shape if layout == "nchw" else (x.shape[0], x.shape[3], x.shape[1], x.shape[2])
        if c != self.cin:
            raise UserError(f"conv3x3 x has {c} input channels, the weight {self.cin}")
        g = self.geometry(b, h, w, layout)
        plan = self.plan(g, dt, torch_ok=False)
        if P.is_vendor(plan.family):
            raise UserError("conv3x3 on CuPy arrays runs the sparse kernels only: this problem's record is cuDNN's "
                            "(pass a PyTorch tensor)")
        y = cp.empty(g.y_shape, dtype=DTYPES[dt])
        return self._kernel(g, dt, plan)(cp.ascontiguousarray(x), y)

    def _call_torch(self, x, bias=None):
        torch = _torch()
        from ..device.gpu import cupy  # noqa: PLC0415
        from .sddmm import _cupy_of, _torch_stream  # noqa: PLC0415
        cp = cupy()
        if not x.is_cuda or x.dim() != 4:
            raise UserError("conv3x3 x must be a 4-D PyTorch CUDA tensor")
        dt = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(x.dtype)
        if dt is None:
            raise UserError(f"conv3x3 x has dtype {x.dtype}: use float32, float16 or bfloat16")
        if x.shape[1] != self.cin:
            raise UserError(f"conv3x3 x has {x.shape[1]} input channels, the weight {self.cin}")
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        layout = "nhwc" if nhwc else "nchw"
        b, _, h, w = x.shape
        g = self.geometry(b, h, w, layout)
        plan = self.plan(g, dt, torch_ok=True)
        k = self._kernel(g, dt, plan)
        if P.is_vendor(plan.family):
            y = k(x.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format))
            return y if bias is None else y + bias.view(1, -1, 1, 1)
        xc = x.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        y = torch.empty((b, self.cout, g.ho, g.wo), dtype=x.dtype, device=x.device, memory_format=fmt)
        # the CuPy views in the kernel's layout: NHWC memory is (B, H, W, C) row-major
        xv = xc.permute(0, 2, 3, 1) if nhwc else xc
        yv = y.permute(0, 2, 3, 1) if nhwc else y
        with cp.cuda.Device(x.device.index), _torch_stream(cp, torch.cuda.current_stream(x.device)):
            k(_cupy_of(xv, torch), _cupy_of(yv, torch))
        return y if bias is None else y.add_(bias.view(1, -1, 1, 1).to(y.dtype))


def _record_baseline(t: Tuned, dtype: str) -> float | None:
    """The cuDNN time at `dtype` stored beside the record's kernel (its cublas_<dtype>_us column), where lookup's row has
    it (fp32 / fp16 columns: store.lookup's rows carry cusparse, fp32, tf32 and fp16)."""
    from ..store.lookup import _best_rows, search_path  # noqa: PLC0415
    col = {"fp32": "cublas_fp32_us", "fp16": "cublas_fp16_us"}.get(dtype)
    if col is None or t.db is None:
        return None
    for target in search_path(t.db):
        for r in _best_rows(target, OP):
            if r.id == t.record_id and r.db == t.db:
                return getattr(r, col, None)
    return None


_OPS: OrderedDict = OrderedDict()
_OPS_LOCK = threading.Lock()
KEEP = 16


def conv3x3(x, w_sparse, stride: int = 1, bias=None, db=None, layout: str | None = None):
    """Y = conv2d(x, w_sparse, stride, padding 1) with the best known conv3x3 config on this GPU (Conv3x3; the last few
    weights' operators are kept, found again by the weight's content)."""
    wc = C.as_compressed(w_sparse)
    key = (matrix_hash(wc), wc.shape, int(stride), None if db is None else str(db))
    with _OPS_LOCK:
        op = _OPS.get(key)
        if op is None:
            op = _OPS[key] = Conv3x3(wc, stride, db)
            while len(_OPS) > KEEP:
                _OPS.popitem(last=False)
        _OPS.move_to_end(key)
    return op(x, layout=layout, bias=bias)


@functools.lru_cache(maxsize=1)
def sparse_conv2d_class():
    """SparseConv2d (defined where PyTorch is installed)."""
    torch = _torch()
    if torch is None:
        raise UserError("SparseConv2d needs PyTorch (pip install torch)")

    class SparseConv2d(torch.nn.Module):
        """An inference drop-in for a 3x3, padding-1, stride-1/2 nn.Conv2d with a pruned weight: the sparse kernel where
        a tuned record wins on this GPU, else torch.nn.functional.conv2d (cuDNN) on the same weight."""

        def __init__(self, weight, bias=None, stride: int = 1, db=None):
            super().__init__()
            w = torch.as_tensor(weight).detach()
            if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
                raise UserError(f"SparseConv2d takes a Cout x Cin x 3 x 3 weight (got {tuple(w.shape)})")
            self.register_buffer("weight", w.clone())
            self.register_buffer("bias", None if bias is None else torch.as_tensor(bias).detach().clone())
            self.stride = int(stride)
            self.op = Conv3x3(C.compress_weight(w.float().cpu().numpy()), self.stride, db)

        @classmethod
        def from_dense(cls, conv, density_or_mask=None, db=None):
            """From an nn.Conv2d (3x3, padding 1, stride 1 or 2, groups 1, dilation 1): its weight as it is (a pruned
            one), or magnitude-pruned to a density, or times a mask."""
            if tuple(conv.kernel_size) != (3, 3) or tuple(conv.padding) != (1, 1) or conv.groups != 1 or \
                    tuple(conv.dilation) != (1, 1) or conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2):
                raise UserError("SparseConv2d serves 3x3 convolutions with padding 1, stride 1 or 2, groups 1, "
                                "dilation 1")
            w = conv.weight.detach()
            if isinstance(density_or_mask, torch.Tensor):
                w = w * density_or_mask.to(w.device, w.dtype)
            elif density_or_mask is not None:
                flat = w.abs().flatten()
                keep = max(1, int(round(float(density_or_mask) * flat.numel())))
                thr = torch.topk(flat, keep, largest=True, sorted=True).values[-1]
                w = torch.where(w.abs() >= thr, w, torch.zeros_like(w))
            return cls(w, None if conv.bias is None else conv.bias.detach(), conv.stride[0], db)

        def forward(self, x):
            try:
                return self.op(x, bias=self.bias)
            except UserError:
                raise
            except Exception:  # noqa: BLE001 - a kernel that cannot run here: cuDNN on the same weight
                return torch.nn.functional.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else
                                                  self.bias.to(x.dtype), self.stride, 1)

    return SparseConv2d


__all__ = ["Conv3x3", "Plan", "conv3x3", "default_path", "lookup_conv", "sparse_conv2d_class"]
