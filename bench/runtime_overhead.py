"""Runtime costs (issue 4): cached lookup (CPU), and op(B) host overhead over the bare kernel launch (GPU): the
Kernel call, the bound launcher alone, op(B) with CuPy and PyTorch inputs, SparseLinear vs nn.Linear forward, and
op(B, out=C) captured in a CUDA graph and replayed.

python3 bench/runtime_overhead.py OUT_DIR   -> OUT_DIR/runtime-overhead-<gpu or cpu>.json and .md
"""
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparse_autotune.store.lookup import lookup
from sparse_autotune.store.db import Record, TuningDB

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
out.mkdir(parents=True, exist_ok=True)
res = {"date": dt.date.today().isoformat()}

# ---- lookup: 1000 records in the user DB; first (uncached) call vs cached calls
with tempfile.TemporaryDirectory() as tmp:
    p = Path(tmp) / "t.sqlite"
    db = TuningDB(p)
    rng = np.random.default_rng(0)
    for i in range(1000):
        db.store(Record(gpu_name="NVIDIA H100 80GB HBM3", gpu_cc="9.0", m=int(2 ** rng.integers(6, 14)),
                        k=int(2 ** rng.integers(6, 14)), n=int(2 ** rng.integers(4, 12)),
                        density=float(rng.choice([0.02, 0.05, 0.1, 0.2, 0.3])), dtype="fp32", pattern="uniform",
                        family="csr_rowsplit", config_json=json.dumps({"i": i}), time_us=float(rng.uniform(1, 100)),
                        gflops=1.0, max_rel_err=1e-7, trials=1, matrix_hash="h", package_version="0",
                        cuda_version="0", driver_version="0", cupy_version="0", created_at=dt.datetime(2026, 1, 1)))
    db.dispose()
    lookup.cache_clear()
    t0 = time.perf_counter()
    lookup(512, 2048, 256, 0.1, "fp32", gpu="NVIDIA H100 80GB HBM3", cc="9.0", db=p)
    first = time.perf_counter() - t0
    reps = 20000
    t0 = time.perf_counter()
    for _ in range(reps):
        lookup(512, 2048, 256, 0.1, "fp32", gpu="NVIDIA H100 80GB HBM3", cc="9.0", db=p)
    cached = (time.perf_counter() - t0) / reps
res["lookup_first_ms"] = first * 1e3
res["lookup_cached_us"] = cached * 1e6
res["lookup_records"] = 1000

# ---- op(B) overhead (GPU only)
try:
    from sparse_autotune.device.gpu import gpu_available, gpu_info
    has_gpu = gpu_available()
except Exception:  # noqa: BLE001
    has_gpu = False
if has_gpu:
    import cupy as cp

    import sparse_autotune as sa
    from sparse_autotune.core.problem import random_matrix
    info = gpu_info()
    res.update({k: v for k, v in info.versions().items()})
    a = random_matrix(64, 64, 0.1, "uniform", 0, np.float32)  # a tiny kernel: host overhead dominates
    op = sa.SpMM(a, n_hint=16)
    kern = op._kernel(16)
    b = cp.asarray(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    c = cp.empty((64, 16), cp.float32)

    def per_call(fn, n=5000):
        for _ in range(200):
            fn()
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        cp.cuda.Device().synchronize()
        return (time.perf_counter() - t0) / n * 1e6

    res["bare_kernel_launch_us"] = per_call(lambda: kern(b, c))
    grid, block, _, _ = kern.geometry(16)
    args16, smem = kern.args(16, b, c), kern.smem_bytes()
    res["rawkernel_call_us"] = per_call(lambda: kern.fn(grid, block, args16, shared_mem=smem))
    launcher, b_ptr, c_ptr = kern.launcher(16), b.data.ptr, c.data.ptr
    stream_ptr = cp.cuda.get_current_stream().ptr
    res["launcher_us"] = per_call(lambda: launcher(b_ptr, c_ptr, stream_ptr))
    res["op_cupy_us"] = per_call(lambda: op(b, out=c))
    res["op_cupy_alloc_us"] = per_call(lambda: op(b))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        from sparse_autotune.runtime.nn import SparseLinear
        res["torch"] = torch.__version__
        tb = torch.as_tensor(b.get()).cuda()
        tc = torch.empty(64, 16, device="cuda")
        res["op_torch_us"] = per_call(lambda: op(tb, out=tc))
        res["op_torch_alloc_us"] = per_call(lambda: op(tb))
        with torch.no_grad():
            torch.manual_seed(0)
            lin = torch.nn.Linear(64, 64).cuda()
            layer = SparseLinear.from_dense(lin, 0.1, n_hint=16)
            x = torch.randn(16, 64, device="cuda")  # N = 16 rows of 64 features
            res["sparse_linear_us"] = per_call(lambda: layer(x))
            res["nn_linear_us"] = per_call(lambda: lin(x))
        # op(B, out=C) captured into a CUDA graph (after the eager calls above planned N = 16), then replayed
        try:
            ref = torch.as_tensor(a.toarray()).cuda() @ tb
            g = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                op(tb, out=tc)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(g):
                op(tb, out=tc)
            tc.zero_()
            res["graph_replay_us"] = per_call(g.replay)
            torch.cuda.synchronize()
            res["graph_replay_correct"] = bool(torch.allclose(tc, ref, rtol=1e-4, atol=1e-4))
        except Exception as exc:  # noqa: BLE001 - report, do not lose the other numbers
            res["graph_replay_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
name = res.get("gpu", "cpu").replace(" ", "-").lower()
(out / f"runtime-overhead-{name}.json").write_text(json.dumps(res, indent=1))
lines = [f"# Runtime overhead — {res.get('gpu', 'CPU only')}", "",
         f"Versions: driver {res.get('driver', '-')}, CUDA {res.get('cuda', '-')}, CuPy {res.get('cupy', '-')}"
         + (f", PyTorch {res['torch']}." if "torch" in res else "."),
         "Host wall time per call, averaged over thousands of calls on a tiny problem (64x64, N=16) so that the "
         "host side, not the kernel, is measured.", "", "| what | per call |", "| --- | ---: |",
         f"| lookup, first call ({res['lookup_records']} records in the DB) | {res['lookup_first_ms']:.2f} ms |",
         f"| lookup, cached | {res['lookup_cached_us']:.2f} us |"]
for k, label in (("bare_kernel_launch_us", "bare kernel launch (Kernel call: kern(B, C), CuPy arrays)"),
                 ("rawkernel_call_us", "CuPy RawKernel call, arguments prebuilt (how Kernel launched before)"),
                 ("launcher_us", "launcher only (cuLaunchKernel, packed args)"),
                 ("op_cupy_us", "op(B, out=C), CuPy"), ("op_cupy_alloc_us", "op(B), CuPy, allocating C"),
                 ("op_torch_us", "op(B, out=C), PyTorch"), ("op_torch_alloc_us", "op(B), PyTorch, allocating C"),
                 ("sparse_linear_us", "SparseLinear forward, 64x64 at 10 %, x of 16x64"),
                 ("nn_linear_us", "nn.Linear forward, 64x64, x of 16x64"),
                 ("graph_replay_us", "op(B, out=C) captured in a torch.cuda.CUDAGraph: one replay")):
    if k in res:
        lines.append(f"| {label} | {res[k]:.2f} us |")
if "graph_replay_correct" in res:
    lines += ["", f"Graph replay result matches dense A @ B: {res['graph_replay_correct']}."]
if "graph_replay_error" in res:
    lines += ["", f"CUDA-graph capture failed: {res['graph_replay_error']}"]
(out / f"runtime-overhead-{name}.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
