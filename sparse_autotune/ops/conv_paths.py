"""conv3x3's paths as the tuner times them and the runtime runs them:

    a kernel family  conv_csr, conv_tile, conv_pattern {config}
                                                             ops.conv.build_conv (NVRTC), run(X, Y) on CuPy arrays
    cudnn            {"math": fp32 | tf32 | fp16 | bf16}     torch.nn.functional.conv2d on the dense weight (cuDNN), in
                                                              the problem's memory format (nchw: contiguous; nhwc:
                                                              channels_last), at that precision (tf32: fp32 tensors with
                                                              torch.backends.cudnn.allow_tf32 on)

The cuDNN path needs PyTorch (optional: imported where it runs). It is the candidate the runtime falls back to where no
record of a kernel wins (`SparseConv2d`), and the baseline of every record: cuDNN FP32, TF32 and FP16 (BF16 for bf16
problems) go to the record's columns cublas_fp32_us, cublas_tf32_us, cublas_fp16_us, cublas_bf16_us (store.db: for op
conv3x3 those columns hold cuDNN's times in the problem's layout).

May import core, device, errors, resources (ops/__init__.py).
"""
from __future__ import annotations

import statistics

import numpy as np

from ..errors import UserError
from . import conv as C

CUDNN = "cudnn"
VENDOR_FAMILIES = (CUDNN,)
MATHS = ("fp32", "tf32", "fp16", "bf16")


def is_vendor(family) -> bool:
    return family in VENDOR_FAMILIES


def vendor_configs(dtype: str) -> list[tuple[str, dict]]:
    """The vendor candidate of a problem of `dtype`: cuDNN at the problem's own precision (TF32 is a baseline only)."""
    return [(CUDNN, {"math": dtype})]


def baseline_maths(dtype: str) -> tuple[str, ...]:
    """The cuDNN precisions timed as baselines beside a problem of `dtype`."""
    return ("fp32", "tf32", "fp16") + (("bf16",) if dtype == "bf16" else ())


def torch_module():
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise UserError("the cuDNN path of conv3x3 needs PyTorch (pip install torch)") from None
    return torch


TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class CudnnConv:
    """cuDNN through torch.nn.functional.conv2d: the dense weight in `math`'s dtype and `memory` format ("nchw" or
    "channels_last"); call(xt) -> the output tensor (torch). tf32: cudnn.allow_tf32 switched on around the call (and
    off for fp32)."""

    def __init__(self, wc, g: C.Geometry, math: str, memory: str = "nchw"):
        if math not in MATHS:
            raise UserError(f"unknown cuDNN precision {math!r}: choose one of {', '.join(MATHS)}")
        torch = self.torch = torch_module()
        self.g, self.math, self.memory = g, math, memory
        self.tdtype = getattr(torch, TORCH_DTYPES[math])
        w = torch.as_tensor(C.dense_weight(C.as_compressed(wc, g.cin))).to("cuda", self.tdtype)
        fmt = torch.channels_last if memory == "channels_last" else torch.contiguous_format
        self.w = w.contiguous(memory_format=fmt)
        self.fmt = fmt

    def input(self, x_nchw_float):
        """A torch input of this path's dtype and memory format from a float NCHW torch tensor."""
        return x_nchw_float.to(self.tdtype).contiguous(memory_format=self.fmt)

    def __call__(self, xt):
        torch = self.torch
        prev = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = self.math == "tf32"
        try:
            return torch.nn.functional.conv2d(xt, self.w, stride=self.g.stride, padding=1)
        finally:
            torch.backends.cudnn.allow_tf32 = prev


def time_torch(fns, repeats: int = 15, target_us: float = 300.0, max_calls: int = 1000) -> float:
    """Median per-call time (us) of zero-argument torch callables (rotating inputs), as device.timing times kernels:
    R calls captured into one torch CUDA graph, 3 warm-up replays, `repeats` replays timed with events each. Falls back
    to eager calls between events where capture fails."""
    torch = torch_module()
    for f in fns:
        f()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for f in fns:
        f()
    e1.record()
    e1.synchronize()
    est = max(0.5, e0.elapsed_time(e1) * 1e3 / len(fns))
    r = int(min(max_calls, max(len(fns), np.ceil(target_us / est))))
    graph = None
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for f in fns:
                f()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(r):
                fns[i % len(fns)]()
    except Exception:  # noqa: BLE001 - not capturable: eager calls
        graph = None
        torch.cuda.synchronize()

    def replay():
        if graph is not None:
            graph.replay()
        else:
            for i in range(r):
                fns[i % len(fns)]()
    for _ in range(3):
        replay()
    times = []
    for _ in range(repeats):
        e0.record()
        replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / r)
    return statistics.median(times)


def path_config(family: str, config: dict, dtype: str, env: dict, limits: dict | None = None) -> dict | None:
    """The config as the problem runs it, or None (unknown family, another precision's cuDNN, infeasible kernel)."""
    if is_vendor(family):
        return dict(config) if (family, config) in vendor_configs(dtype) else None
    if family not in C.conv_families():
        return None
    try:
        return C.check_config(family, config, dtype, env, limits)
    except UserError:
        return None


def describe(family: str, config: dict) -> str:
    if family == CUDNN:
        return f"cuDNN through torch.nn.functional.conv2d at {config.get('math', '?').upper()} on the dense weight"
    return f"the conv3x3 kernel family {family} ({C.KERNEL_NAME}, compiled with NVRTC for the weight and geometry)"


__all__ = ["CUDNN", "VENDOR_FAMILIES", "MATHS", "CudnnConv", "baseline_maths", "describe", "is_vendor", "path_config",
           "time_torch", "torch_module", "vendor_configs"]
