"""PyTorch integration (optional: needs torch). `SparseLinear` is an inference drop-in for `nn.Linear`.

    from sparse_autotune.runtime.nn import SparseLinear
    layer = SparseLinear.from_dense(model.fc, 0.1)      # keep the 10 % largest |weights| of this layer
    layer = SparseLinear.from_dense(model.fc, mask)     # or an explicit boolean mask (out x in)
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..runtime.spmm import SpMM


def magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """A boolean mask keeping exactly round(density * numel) entries of largest magnitude."""
    if not 0.0 < float(density) <= 1.0:
        raise UserError(f"density {density} is outside (0, 1]")
    keep = max(1, int(round(float(density) * weight.numel())))
    flat = weight.detach().abs().flatten().float()
    idx = torch.topk(flat, keep, largest=True, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx] = True
    return mask.view_as(weight)


class SparseLinear(nn.Module):
    """y = x @ W.T + b with W sparse, computed by the autotuned SpMM operator's op.linear (the nk layout: x and y as
    PyTorch holds them, the bias fused; runtime.spmm): one kernel per call where the plan for the batch's N is native.

    tune ("off" / "quick"; default $SPARSE_AUTOTUNE_RUNTIME_TUNE, else "off") and allow_tf32 are the operator's
    (runtime.spmm.SpMM): with "quick" the first forward with a new batch size times a handful of candidates (the
    nearest records' kernels, cuSPARSE, cuBLAS) and keeps the fastest. Where a vendor path won, the operator runs it
    (`layer.op.plan(n)`; cuBLAS on a dense copy of W: `layer.op.dense_bytes`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: str | None = None,
                 db=None, n_hint: int | None = None, tune: str | None = None, allow_tf32: bool = False,
                 trainable: bool = False):
        super().__init__()
        if weight.dim() != 2:
            raise UserError(f"weight must be 2-D (out x in), got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        w = weight.detach()
        if trainable:  # runtime.nn_train: W's nonzero values a Parameter, plans restricted to value-reading kernels
            from .nn_train import ValueReadingSpMM  # noqa: PLC0415
            self.op = ValueReadingSpMM(w.cpu(), dtype=dtype, db=db, tune="off", allow_tf32=allow_tf32)
        else:
            self.op = SpMM(w.cpu(), dtype=dtype, db=db, tune=tune, allow_tf32=allow_tf32)
        # a cuBLAS plan runs as F.linear here (bias fused by cuBLAS): quick tuning times it so (runtime.quick)
        self.op.dense_bias_fused = True
        tdtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.op.dtype]
        # the bias in the layer's dtype, cast once here (not per forward); a later .half()/.to() is followed lazily
        self.register_buffer("bias", None if bias is None else bias.detach().to(tdtype).clone(), persistent=True)
        self._w = None  # (the operator's dense copy of W, its torch view), while a plan runs cuBLAS on it
        self._fast: dict = {}  # (x.shape, x.dtype, x.device) -> the call prepared for it (forward's fast path)
        self.train_state = None  # runtime.nn_train.TrainState where trainable
        if trainable:
            from .nn_train import TrainState  # noqa: PLC0415
            self.values = nn.Parameter(TrainState.initial_values(self.op, tdtype))
            self.train_state = TrainState(self)
        else:
            self.register_parameter("values", None)
        if n_hint is not None:  # plan, compile and pack op.linear's launch for N = n_hint now, not at the first call
            self.op._prepare(int(n_hint), "nk")

    @classmethod
    def from_dense(cls, linear: nn.Linear, density_or_mask, dtype: str | None = None, db=None,
                   n_hint: int | None = None, tune: str | None = None, allow_tf32: bool = False,
                   trainable: bool = False) -> "SparseLinear":
        """From an nn.Linear: a float density prunes by magnitude, a boolean tensor is used as the mask."""
        if not isinstance(linear, nn.Linear):
            raise UserError(f"from_dense needs an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if isinstance(density_or_mask, torch.Tensor):
            if density_or_mask.shape != w.shape:
                raise UserError(f"mask shape {tuple(density_or_mask.shape)} != weight shape {tuple(w.shape)}")
            mask = density_or_mask.to(device=w.device, dtype=torch.bool)
        else:
            mask = magnitude_mask(w, float(density_or_mask))
        return cls(w * mask, linear.bias, dtype=dtype, db=db, n_hint=n_hint, tune=tune, allow_tf32=allow_tf32,
                   trainable=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = op.linear(x, bias): x (N x K, N = all leading dims) read as it is, y (N x M) written with the bias, by
        the plan for this N (`layer.op.plan(n, layout="nk")`): one kernel where its path is native (a family declaring
        the nk layout; cuSPARSE or cuBLAS: their call, plus one kernel adding the bias), three where it is staged (x
        transposed, the kn kernel, y = C^T + bias). Where the plan is cuBLAS on W's dense copy (after the first eager
        call with N): one torch.nn.functional.linear on that copy, exactly nn.Linear's call. Everything runs on
        PyTorch's current stream with PyTorch's allocator: capturable in a CUDA graph once an eager call has run with
        the same N.

        After the first call with an input shape, dtype and device, a call with the same ones takes a fast path: the
        checks and the plan are not redone (what they concluded is kept per input key while the bias buffer, its
        version and, for fp32 on cuBLAS, torch's TF32 switch are unchanged), only the launch: the host cost of an
        eager call stays within a few microseconds of nn.Linear's.

        A trainable layer (`trainable=True`: runtime.nn_train) first copies its `values` Parameter into the operators
        where an optimizer step changed it, then runs the autograd path where a gradient is needed."""
        if self.__dict__.get("train_state") is not None:
            return self.train_state.forward(x)
        hit = self._fast.get((x.shape, x.dtype, x.device))
        if hit is not None:
            buf, ver, tf32, run = hit
            b = self._buffers["bias"]
            if b is buf and (b is None or b._version == ver) and (
                    tf32 is None or tf32 == torch.backends.cuda.matmul.allow_tf32):
                return run(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """forward's checked path (every first call with an input key): checks, plan, launch, and the fast path kept."""
        if x.shape[-1] != self.in_features:
            raise UserError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n = x2.shape[0]  # N = all leading dims
        bias = self.bias
        if bias is not None and (bias.dtype != x.dtype or bias.device != x.device):
            bias = self._bias_as(x)
        w = self._dense_weight(n, x)
        if w is not None:  # the plan for this N is cuBLAS on the dense copy: nn.Linear's own call, no detours
            y = torch.nn.functional.linear(x, w, bias)
        else:
            y = self.op.linear(x2, bias).view(*lead, self.out_features)
            w = self._dense_weight(n, x)  # planned by this first call: a cuBLAS plan runs as F.linear from now on
        if n and self.out_features:  # the fast path of the next calls with this key
            if w is not None:
                tf32 = bool(torch.backends.cuda.matmul.allow_tf32) if x.dtype == torch.float32 else None
                self._keep_fast(x, tf32, lambda x_: torch.nn.functional.linear(x_, w, bias))
            elif n in self.op._nk_launchers:
                self._keep_fast(x, None, self._launch_fn(self.op._nk_launchers[n], x, bias))
        return y

    def _launch_fn(self, ln, x: torch.Tensor, bias):
        """The fast path's call for x's key: y allocated by PyTorch, op.linear's launcher for this N fired on PyTorch's
        current stream (on x's device, which must be the current one: else the checked path and its error)."""
        k, m, idx = self.in_features, self.out_features, x.device.index
        shape = (*x.shape[:-1], m)
        raw_stream = self.op._torch[2]
        bias_ptr = 0 if bias is None else bias.data_ptr()

        def run(x_, _keep=bias):  # _keep: the bias stays alive while its address can be launched
            if torch.cuda.current_device() != idx:
                return self._forward(x_)
            x2 = x_.reshape(-1, k)
            if not x2.is_contiguous():
                x2 = x2.contiguous()
            y = torch.empty(shape, dtype=x_.dtype, device=x_.device)
            ln(x2.data_ptr(), y.data_ptr(), raw_stream(idx), bias_ptr)
            return y
        return run

    def _keep_fast(self, x: torch.Tensor, tf32, run) -> None:
        b = self._buffers["bias"]
        if x.is_cuda:
            self._fast[(x.shape, x.dtype, x.device)] = (b, None if b is None else b._version, tf32, run)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_fast"] = {}  # closures over launchers: rebuilt by the first call after unpickling
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_fast" not in self.__dict__:
            self._fast = {}

    def _bias_as(self, x: torch.Tensor) -> torch.Tensor:
        """The bias on x's device in x's dtype, where the buffer is elsewhere (a layer built from CPU weights and not
        moved, or cast apart from x): copied once and kept while the buffer is unchanged (same tensor, same version),
        not at every call, so that a forward can be captured in a CUDA graph after an eager call."""
        b = self.bias
        got = getattr(self, "_bias_copy", None)
        if got is not None and got[0] is b and got[1] == b._version and got[2].device == x.device \
                and got[2].dtype == x.dtype:
            return got[2]
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            raise UserError(f"the layer's bias is on {b.device} ({b.dtype}) and x on {x.device} ({x.dtype}): move the "
                            "layer (layer.to(x.device)) or call it once eagerly before CUDA graph capture")
        copy = b.detach().to(device=x.device, dtype=x.dtype)
        self._bias_copy = (b, b._version, copy)
        return copy

    def _dense_weight(self, n: int, x: torch.Tensor):
        """W's dense copy as a torch tensor where this N is already planned (an eager call ran) to cuBLAS at the
        precision torch's own matmul of x uses now (fp16 / bf16; fp32 without TF32, or TF32 where both the plan and
        torch.backends.cuda.matmul.allow_tf32 say so), else None: then forward runs the operator."""
        op = self.op
        if n not in op._nk_launchers or op._dense is None or op.plan(n, "nk").family != "dense":
            return None
        math_ = op.plan(n, "nk").config.get("math")
        torch_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
        if x.dtype == torch.float32 and (math_ == "tf32") != torch_tf32:
            return None
        if getattr(self, "_w", None) is None or self._w[0] is not op._dense:  # (a module pickled before _w existed)
            t = torch.from_dlpack(op._dense)
            t = t.view(torch.bfloat16) if op.dtype == "bf16" else t  # bf16 is held as raw 16-bit words
            self._w = (op._dense, t)
        w = self._w[1]
        return w if w.dtype == x.dtype and w.device == x.device else None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.op.nnz}, "
                f"density={self.op.density:.4f}, dtype={self.op.dtype}")
