"""Training a SparseLinear (issue 19): `SparseLinear(..., trainable=True)` / `SparseLinear.from_dense(..., trainable=True)`.

Only W's nonzero values train; the pattern is fixed. `layer.values` is an nn.Parameter of the nnz values in the order of
the operator's CSR (`layer.op.host`: rows, then sorted columns). The autograd path (SparseLinearFn), for y = x W^T + b
with x N x in, W out x in:

    forward   y = op.linear(x, b)                                   the SpMM operator (nk layout), as at inference
    dX        dX^T = W^T dY^T : runtime.spmm_t.SpmmT(W)(dY^T)        the transposed SpMM from the same stored W
    dW        dW[p] = dot(dY[:, row(p)], X[:, col(p)]) over the batch: runtime.sddmm.SDDMM(pattern of W)(dY^T, X^T)
              (SDDMM's K is the batch; the mask's values are 1)
    db        dY summed over the batch

Formats that bake W's values into a layout are EXCLUDED while the layer is trainable (the choice made here): a
trainable layer's SpMM operator (ValueReadingSpMM) only plans families whose kernels read the CSR values array itself
(csr_rowsplit, csr_btile) or cuSPARSE (its descriptor points at the same array); where lookup's plan is another family
(tc_*, csr_gemv, csr_splitk, pattern_unrolled, cuBLAS on a dense copy), the operator runs the first known-good config of
csr_btile (native nk) or csr_rowsplit (staged) instead, its plan's source "trainable". After an optimizer step the new
values are copied in place into those arrays (one device copy, before the next forward; `TrainState.sync`), so no
layout is rebuilt and no kernel recompiled. The transposed SpMM's scatter and cuSPARSE paths read the same kind of array
(copied in place too); an explicit-transpose or dense plan of it is rebuilt from the new values at its next call
(ops.spmm_t.SpmmTOperand.set_values). Inference of a layer built without trainable=True is unchanged.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..core.space import get_space, problem_env
from .spmm import Plan, SpMM

VALUE_READING = ("csr_rowsplit", "csr_btile", "cusparse")  # kernels that read the CSR values array as it is
FALLBACK_FAMILIES = ("csr_btile", "csr_rowsplit")


class ValueReadingSpMM(SpMM):
    """The SpMM operator of a trainable layer: lookup's plan where its family reads A's CSR values array
    (VALUE_READING), else the first known-good config of csr_btile / csr_rowsplit that the problem allows."""

    def plan(self, n: int, layout: str = "kn") -> Plan:
        plans = self._plans if layout == "kn" else self._nk_plans
        if n in plans:
            return plans[n]
        p = super().plan(n, layout)
        if p.family in VALUE_READING:
            return p
        from ..device.gpu import gpu_info  # noqa: PLC0415
        m, k = self.shape
        env = problem_env(m, k, n, max(1, self.nnz), self.dtype, layout)
        limits = gpu_info().limits()
        for fam in FALLBACK_FAMILIES:
            space = get_space(fam).for_layout(layout)
            cfgs = space.defaults(self.dtype, env, limits) or list(space.feasible(self.dtype, env, limits))[:1]
            if cfgs:
                plans[n] = Plan(fam, cfgs[0], "trainable", layout)
                return plans[n]
        plans[n] = Plan("cusparse", {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}, "trainable", layout)
        return plans[n]


def _cupy(t: torch.Tensor):
    from .sddmm import _cupy_of  # noqa: PLC0415
    return _cupy_of(t, torch)


class TrainState:
    """What a trainable SparseLinear keeps besides its SpMM operator: the transposed SpMM and SDDMM operators (made at
    the first backward) and the version of `values` last copied into the operators."""

    def __init__(self, layer):
        self.layer = layer
        self.synced = None  # (data_ptr, _version) of the values last copied
        self.spmm_t = None
        self.sddmm = None

    @staticmethod
    def initial_values(op: SpMM, tdtype) -> torch.Tensor:
        return torch.tensor(np.asarray(op.host.data, np.float32)).to(tdtype)

    def pattern(self) -> sp.csr_matrix:
        h = self.layer.op.host
        return sp.csr_matrix((np.ones(h.nnz, np.float32), h.indices, h.indptr), shape=h.shape)

    def sync(self, values: torch.Tensor) -> None:
        """Copy `values` into the operators' value arrays where they changed since the last copy (an optimizer step),
        on PyTorch's current stream."""
        key = (values.data_ptr(), values._version, values.device)
        if key == self.synced or not values.is_cuda:
            return
        from ..device.gpu import cupy  # noqa: PLC0415
        from .sddmm import _torch_stream  # noqa: PLC0415
        cp = cupy()
        op = self.layer.op
        v = values.detach().contiguous()
        with cp.cuda.Device(v.device.index), _torch_stream(cp, torch.cuda.current_stream(v.device)):
            src = _cupy(v)
            dev = op._device()
            dev.vals[...] = src
            if self.spmm_t is not None:
                self.spmm_t.set_values(vals_dev=src)
        self.synced = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        values = layer.values
        if x.is_cuda:
            self.sync(values)
        needs = torch.is_grad_enabled() and (values.requires_grad or x.requires_grad or (
            layer.bias is not None and layer.bias.requires_grad))
        if not needs:
            return layer._forward(x)
        bias = layer.bias
        if bias is not None and (bias.dtype != x.dtype or bias.device != x.device):
            bias = layer._bias_as(x)
        return SparseLinearFn.apply(x, values, bias, self)

    def spmm_t_op(self):
        if self.spmm_t is None:
            from .spmm_t import SpmmT  # noqa: PLC0415
            op = self.layer.op
            self.spmm_t = SpmmT(op.host, op.dtype, db=op.db)
            self.spmm_t.set_values(vals_dev=op._device().vals)  # the values of the last step, not the initial ones
        return self.spmm_t

    def sddmm_op(self):
        if self.sddmm is None:
            from .sddmm import SDDMM  # noqa: PLC0415
            self.sddmm = SDDMM(self.pattern(), db=self.layer.op.db)
        return self.sddmm


class SparseLinearFn(torch.autograd.Function):
    """y = x W^T + b with W's nonzero values `values` (the module's docstring for the backward's operators)."""

    @staticmethod
    def forward(ctx, x, values, bias, state):
        layer = state.layer
        lead = x.shape[:-1]
        x2 = x.reshape(-1, layer.in_features).contiguous()
        y = layer.op.linear(x2, None if bias is None else bias.detach())
        ctx.state = state
        ctx.lead = lead
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x2)
        return y.view(*lead, layer.out_features)

    @staticmethod
    def backward(ctx, gy):
        (x2,) = ctx.saved_tensors
        state = ctx.state
        layer = state.layer
        gy2 = gy.reshape(-1, layer.out_features)
        gyt = gy2.detach().t().contiguous()  # out x N: B of the transposed SpMM, X of the SDDMM
        dx = dvals = dbias = None
        if ctx.needs_input_grad[0]:
            dxt = state.spmm_t_op()(gyt)  # in x N = W^T dY^T
            dx = dxt.t().reshape(*ctx.lead, layer.in_features)
        if ctx.needs_input_grad[1]:
            # in x N: Y of the SDDMM; detached: the saved x2 can be x itself (N = 1: reshape and .t().contiguous()
            # return aliases), and a tensor that requires grad cannot be handed to CuPy (DLPack refuses it)
            xt = x2.detach().t().contiguous()
            dvals = state.sddmm_op()(gyt, xt)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = gy2.sum(0)
        return dx, dvals, dbias, None


def dense_masked_reference(layer) -> torch.nn.Linear:
    """The dense masked nn.Linear equal to a SparseLinear (its current values scattered into W; the bias copied): the
    reference of the gradient check and of the fine-tuning benchmark."""
    h = layer.op.host
    w = torch.zeros(layer.out_features, layer.in_features, dtype=layer.values.dtype if layer.values is not None
                    else torch.float32)
    vals = (layer.values.detach().cpu() if layer.values is not None else torch.tensor(h.data)).to(w.dtype)
    rows = torch.tensor(np.repeat(np.arange(h.shape[0]), np.diff(h.indptr)), dtype=torch.long)
    w[rows, torch.tensor(h.indices, dtype=torch.long)] = vals
    lin = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if layer.bias is not None:
            lin.bias.copy_(layer.bias.detach().cpu().to(w.dtype))
    return lin


__all__ = ["ValueReadingSpMM", "TrainState", "SparseLinearFn", "VALUE_READING", "dense_masked_reference"]
