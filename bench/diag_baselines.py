"""Cross-check our baseline timings against PyTorch's (graph-captured) on the device. Diagnostic only."""
import sys

import numpy as np
import torch

from sparse_autotune.device.baselines import time_baselines
from sparse_autotune.device.context import GpuProblem
from sparse_autotune.device.gpu import gpu_info
from sparse_autotune.core.problem import Problem


def torch_graph_us(fn, reps=20, inner=50):
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        for _ in range(inner):
            fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1000 / inner)
    return float(np.median(ts))


for (m, k, n, d) in [(512, 2048, 256, 0.1), (512, 2048, 1024, 0.1)]:
    p = Problem.random(m, k, n, d, "fp32")
    ctx = GpuProblem(p, gpu_info())
    base = time_baselines(ctx)
    print(f"ours  {m}x{k} N={n}:", {kk: (round(v, 2) if isinstance(v, float) else v) for kk, v in base.items()})
    A = torch.from_numpy(p.matrix.toarray()).cuda()
    B = torch.randn(k, n, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    f32 = torch_graph_us(lambda: A @ B)
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32 = torch_graph_us(lambda: A @ B)
    A16, B16 = A.half(), B.half()
    f16 = torch_graph_us(lambda: A16 @ B16)
    As = A.to_sparse_csr()
    try:
        spt = torch_graph_us(lambda: torch.sparse.mm(As, B))
    except Exception as e:  # noqa: BLE001
        spt = f"n/a ({e})"
    print(f"torch {m}x{k} N={n}: fp32 {f32:.2f} tf32 {tf32:.2f} fp16 {f16:.2f} csr {spt}")
sys.stdout.flush()
