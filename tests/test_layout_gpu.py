"""GPU tests of the nk layout (issue 17, section 3: y = x @ A^T + bias with x N x K and y N x M as nn.Linear holds them),
run on the device: `python3 -m pytest -q -m gpu tests/test_layout_gpu.py`. The staging kernels (exact transposes, the
bias epilogue), the staged path for a family without nk, native nk kernels (the toy family of tests/layout_toy.py, and
every registered family that declares nk), cuSPARSE and cuBLAS in nk with the bias, op.linear with CuPy and PyTorch,
SparseLinear eager and in a CUDA graph against nn.Linear on the masked weight (fp32, fp16, bf16), the kernels a call
runs (one for a native plan, three staged), quick tuning of op.linear, a tune of an nk problem end to end, and tf32
on Hopper through a tc_sp24 record (op.linear, SparseLinear, a CUDA graph). The CPU side is in tests/test_layout.py."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from layout_toy import NAME as TOY, toy_nk  # noqa: F401 - the fixture
from sparse_autotune.core.problem import DTYPES, TOLERANCE, as_float, random_matrix, storage
from sparse_autotune.core.space import NK_PATH, get_space, load_spaces, problem_env

pytestmark = pytest.mark.gpu
TDTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _cp():
    import cupy as cp
    return cp


def _rand(shape, dtype, seed):
    """Random values (CuPy) in the dtype's storage, and nonzero: a bias that is skipped shows."""
    cp = _cp()
    v = cp.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return storage(cp.where(cp.abs(v) < 0.25, cp.float32(0.5), v), dtype)


def _rel_nk(y, a, x, bias=None) -> float:
    """Relative Frobenius error of y (CuPy, N x M) against (A @ x^T)^T + bias in float64 (A scipy, x and bias CuPy)."""
    ref = (a.astype(np.float64) @ as_float(x).get().astype(np.float64).T).T
    if bias is not None:
        ref = ref + as_float(bias).get().astype(np.float64)[None, :]
    got = as_float(y).get().astype(np.float64)
    assert got.shape == ref.shape and np.isfinite(got).all()
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _config(family: str, dtype: str, m: int, k: int, n: int, nnz: int, layout: str = "nk") -> dict:
    """A known-good config of the family for the problem (else its first feasible one), without an nk path."""
    sp = get_space(family)
    env = problem_env(m, k, n, nnz, dtype, layout)
    got = sp.defaults(dtype, env) or list(sp.feasible(dtype, env))[:1]
    assert got, (family, dtype, n)
    return got[0]


# ---- the staging kernels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_the_staging_kernels_transpose_exactly_and_add_the_bias(dtype):
    cp = _cp()
    from sparse_autotune.device.staged import bias_add_launcher, transpose_launcher
    stream = cp.cuda.get_current_stream().ptr
    for rows, cols in ((37, 70), (1, 1), (64, 32), (33, 1000), (384, 96)):  # (64, 32), (384, 96): 16-byte vectors
        src = _rand((rows, cols), dtype, rows)
        out = cp.full((cols, rows), 0x7FC0 if dtype != "fp32" else np.nan, dtype=src.dtype)
        transpose_launcher(dtype, rows, cols)(src.data.ptr, out.data.ptr, stream)
        cp.cuda.get_current_stream().synchronize()
        assert bool((out == src.T).all()), (rows, cols)  # a copy: bit for bit
        bias = _rand(rows, dtype, 7)
        transpose_launcher(dtype, rows, cols)(src.data.ptr, out.data.ptr, stream, bias.data.ptr)
        want = as_float(src).astype(cp.float64).T + as_float(bias).astype(cp.float64)[None, :]
        err = float(cp.abs(as_float(out).astype(cp.float64) - want).max() / cp.abs(want).max())
        assert err < TOLERANCE[dtype], (rows, cols, err)
        y = cp.ascontiguousarray(out)
        before = as_float(y).astype(cp.float64)
        b2 = _rand(rows, dtype, 8)  # y (cols x rows) += b2 on every row, in place
        bias_add_launcher(dtype, cols, rows)(y.data.ptr, y.data.ptr, stream, b2.data.ptr)
        want2 = before + as_float(b2).astype(cp.float64)[None, :]
        err2 = float(cp.abs(as_float(y).astype(cp.float64) - want2).max() / cp.abs(want2).max())
        assert err2 < TOLERANCE[dtype], (rows, cols, err2)


# ---- the staged path, native kernels, the vendor paths --------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_the_staged_path_serves_a_family_without_nk(dtype):
    cp = _cp()
    from sparse_autotune.device.kernel import DeviceCSR
    from sparse_autotune.device.staged import StagedKernel, build_for
    assert not get_space("csr_rowsplit").supports_layout("nk")
    m, k = 300, 500
    a = random_matrix(m, k, 0.05, "uniform", 1, DTYPES[dtype])
    dev = DeviceCSR(a, dtype)
    for n in (1, 37, 128):
        cfg = _config("csr_rowsplit", dtype, m, k, n, a.nnz)
        kern = build_for(dev, "csr_rowsplit", {**cfg, NK_PATH: "staged"}, dtype, "nk")
        assert isinstance(kern, StagedKernel) and kern.kern.layout == "kn"
        x, bias = _rand((n, k), dtype, n), _rand(m, dtype, n + 1)
        y = cp.full((n, m), 0x7FC0 if dtype not in ("fp32", "tf32") else np.nan, dtype=x.dtype)
        kern(x, y, bias)
        assert _rel_nk(y, a, x, bias) < TOLERANCE[dtype], n
        kern(x, y)  # no bias
        assert _rel_nk(y, a, x) < TOLERANCE[dtype], n
        assert kern.launcher(n).workspace_bytes == (k * n + m * n) * np.dtype(DTYPES[dtype]).itemsize


def test_the_staged_path_is_timed_cold_on_an_nk_problem():
    """An nk problem served by the staged path: the cold timing (the tuner's finish) rotates twins of what the kn kernel
    reads (StagedKernel.args / a_bytes / bound_to, session 22's fix) and each twin computes y = x A^T + bias."""
    _cp()
    from sparse_autotune.core.problem import Problem
    from sparse_autotune.device.cold import cold_times, rotation
    from sparse_autotune.device.context import GpuProblem
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.staged import StagedKernel, build_for
    from sparse_autotune.device.verify import check
    info = gpu_info()
    p = Problem.random(2048, 1024, 16, 0.1, "fp16", layout="nk")
    ctx = GpuProblem(p, info)
    cfg = _config("csr_rowsplit", "fp16", p.m, p.k, p.n, p.nnz)
    kern = build_for(ctx.a_dev, "csr_rowsplit", {**cfg, NK_PATH: "staged"}, "fp16", "nk")
    assert isinstance(kern, StagedKernel)
    used, read, ncopy = rotation(kern, p.n, info.l2_bytes)
    assert 0 < read <= ctx.a_dev.nbytes(used) and ncopy >= 2
    twin = kern.bound_to(ctx.a_dev.twin(used))
    b, ref = ctx.fresh_check()
    assert check(lambda: ctx.launch(twin, b), ctx.c, ref, "fp16") <= TOLERANCE["fp16"]
    c = cold_times(kern, ctx)
    assert "cold_error" not in c and c["tuned_cold_us"] > 0 and c["dense_cold_us"] > 0, c
    assert c["cold_copies"] == ncopy


def test_a_native_nk_kernel_of_the_toy_family(toy_nk):
    cp = _cp()
    from sparse_autotune.device.kernel import BiasLauncher, DeviceCSR, Kernel
    from sparse_autotune.device.staged import build_for
    m, k = 257, 300
    a = random_matrix(m, k, 0.1, "uniform", 2)
    dev = DeviceCSR(a, "fp32")
    for n in (1, 19, 64):
        native = build_for(dev, TOY, {"threads": 128, NK_PATH: "native"}, "fp32", "nk")
        assert isinstance(native, Kernel) and native.layout == "nk" and isinstance(native.launcher(n), BiasLauncher)
        x, bias = _rand((n, k), "fp32", n), _rand(m, "fp32", 3)
        y = cp.full((n, m), np.nan, dtype=cp.float32)
        native(x, y, bias)
        assert _rel_nk(y, a, x, bias) < 1e-5
        native(x, y, None)
        assert _rel_nk(y, a, x) < 1e-5
        staged = build_for(dev, TOY, {"threads": 128, NK_PATH: "staged"}, "fp32", "nk")
        y2 = cp.full((n, m), np.nan, dtype=cp.float32)
        staged(x, y2, bias)
        assert _rel_nk(y2, a, x, bias) < 1e-5 and staged.source != native.source  # kn and nk renderings


NK_FAMILIES = [s.family for s in load_spaces() if s.supports_layout("nk")]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "tf32"])
@pytest.mark.parametrize("family", NK_FAMILIES or ["(none declares nk)"])
def test_every_family_declaring_nk_computes_it_natively(family, dtype):
    """The built-in families whose space declares `layouts = ["kn", "nk"]`, their known-good configs (else the first
    feasible) rendered for nk, at small and odd N, with and without the bias."""
    if family not in NK_FAMILIES:
        pytest.skip("no registered family declares the nk layout yet")
    if not get_space(family).supports(dtype):
        pytest.skip(f"{family} does not compute {dtype}")
    cp = _cp()
    from sparse_autotune.device.kernel import DeviceCSR
    from sparse_autotune.device.staged import build_for
    m, k = 384, 1024
    a = random_matrix(m, k, 0.1, "rowuniform", 4, DTYPES[dtype])
    dev = DeviceCSR(a, dtype)
    checked = 0
    for n in (1, 3, 8, 16, 33):
        env = problem_env(m, k, n, a.nnz, dtype, "nk")
        nk_space = get_space(family).for_layout("nk")
        cfgs = [c for c in nk_space.defaults(dtype, env) if c[NK_PATH] == "native"]
        if not cfgs:
            continue
        x, bias = _rand((n, k), dtype, n), _rand(m, dtype, 5)
        for cfg in cfgs:
            kern = build_for(dev, family, cfg, dtype, "nk")
            y = cp.full((n, m), 0x7FC0 if dtype not in ("fp32", "tf32") else np.nan, dtype=x.dtype)
            kern(x, y, bias)
            assert _rel_nk(y, a, x, bias) < TOLERANCE[dtype], (n, cfg)
            kern(x, y)
            assert _rel_nk(y, a, x) < TOLERANCE[dtype], (n, cfg)
            checked += 1
    assert checked, f"{family}: no native config is a default at N = 1 .. 33"


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_cusparse_and_cublas_read_x_and_write_y_with_the_bias(dtype):
    cp = _cp()
    from sparse_autotune.core.vendor import CUSPARSE_ALGS, DENSE_MATH
    from sparse_autotune.device.kernel import DeviceCSR
    from sparse_autotune.device.vendor import dense_copy, vendor_launcher
    m, k, n = 300, 500, 48
    a = random_matrix(m, k, 0.1, "uniform", 5, DTYPES[dtype])
    dev, dense = DeviceCSR(a, dtype), dense_copy(a, dtype)
    x, bias = _rand((n, k), dtype, 1), _rand(m, dtype, 2)
    stream = cp.cuda.get_current_stream().ptr
    ran = []
    for family, cfg in [("cusparse", {"alg": alg}) for alg in CUSPARSE_ALGS] + [("dense", {"math": DENSE_MATH[dtype]})]:
        try:
            ln = vendor_launcher(family, cfg, n, dtype, a_dev=dev, a_dense=dense, layout="nk")
        except Exception as exc:  # noqa: BLE001 - an algorithm that refuses column-major operands says so here
            assert family == "cusparse" and cfg["alg"] != "CUSPARSE_SPMM_ALG_DEFAULT", (cfg, exc)
            continue
        y = cp.full((n, m), 0x7FC0 if dtype not in ("fp32", "tf32") else np.nan, dtype=x.dtype)
        ln(x.data.ptr, y.data.ptr, stream, bias.data.ptr)
        cp.cuda.get_current_stream().synchronize()
        assert _rel_nk(y, a, x, bias) < (2e-2 if dtype != "fp32" else 1e-5), cfg
        ln(x.data.ptr, y.data.ptr, stream, 0)
        cp.cuda.get_current_stream().synchronize()
        assert _rel_nk(y, a, x) < (2e-2 if dtype != "fp32" else 1e-5), cfg
        if family == "dense":  # the bias fused by cuBLASLt's epilogue; a bias not 16-byte aligned: GEMM, then the add
            assert ln.lt is not None, cfg
            shifted = cp.empty(m + 8, dtype=bias.dtype)
            shifted[1:m + 1] = bias
            y.fill(0)
            ln(x.data.ptr, y.data.ptr, stream, shifted.data.ptr + shifted.itemsize)
            cp.cuda.get_current_stream().synchronize()
            assert _rel_nk(y, a, x, bias) < (2e-2 if dtype != "fp32" else 1e-5), cfg
        ran.append(family)
    assert "dense" in ran and "cusparse" in ran


# ---- op.linear and SparseLinear ---------------------------------------------------------------------------------------


def _store(db, m, k, n, density, dtype, family, config, layout="nk", time_us=1.0):
    """A verified record of this GPU for (M, K, N, density, dtype, layout): what a tune stores."""
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.store.db import Record, TuningDB
    info = gpu_info()
    tdb = TuningDB(db)
    try:
        return tdb.store(Record(gpu_name=info.name, gpu_cc=info.cc, m=m, k=k, n=n, density=density, dtype=dtype,
                                pattern="matrix", layout=layout, family=family, config_json=json.dumps(config),
                                time_us=time_us, gflops=1.0, max_rel_err=1e-7, trials=1, matrix_hash="x",
                                cusparse_us=100.0, cublas_fp32_us=100.0, cublas_fp16_us=100.0, package_version="0",
                                cuda_version="0", driver_version="0", cupy_version="0",
                                created_at=dt.datetime(2026, 1, 1))).id
    finally:
        tdb.dispose()


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_op_linear_with_cupy_and_torch(dtype, tmp_path):
    cp = _cp()
    torch = pytest.importorskip("torch")
    import sparse_autotune as sa
    m, k = 200, 300
    a = random_matrix(m, k, 0.1, "uniform", 6, DTYPES[dtype])
    op = sa.SpMM(a, dtype=dtype, db=tmp_path / "none.sqlite")
    for n in (1, 40):
        x, bias = _rand((n, k), dtype, n), _rand(m, dtype, 9)
        y = op.linear(x, bias)
        assert y.shape == (n, m) and _rel_nk(y, a, x, bias) < TOLERANCE[dtype]
        out = cp.empty((n, m), dtype=x.dtype)
        assert op.linear(x, out=out) is out and _rel_nk(out, a, x) < TOLERANCE[dtype]
        plan = op.plan(n, "nk")
        assert plan.layout == "nk" and plan.path in ("native", "staged") and n in op._nk_launchers
        assert n not in op._launchers  # op(B)'s launchers are apart
    tdt = getattr(torch, TDTYPE[dtype])
    xt = torch.randn(40, k, device="cuda").to(tdt)
    bt = torch.randn(m, device="cuda").to(tdt)
    yt = op.linear(xt, bt)
    w = torch.from_numpy(a.toarray()).double().cuda()
    ref = xt.double() @ w.T + bt.double()
    assert isinstance(yt, torch.Tensor) and yt.dtype == tdt and yt.shape == (40, m)
    assert ((yt.double() - ref).norm() / ref.norm()).item() < TOLERANCE[dtype]
    ynt = op.linear(xt.t().contiguous().t(), bt)  # a non-contiguous x is copied first
    assert torch.equal(ynt, yt)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_op_linear_runs_vendor_records_in_nk(dtype, tmp_path):
    """An nk record of cuSPARSE, and a kn record of cuBLAS (served in its nk form), run by op.linear with the bias; the
    cuBLAS plan replays in a CUDA graph (its bias kernel too)."""
    cp = _cp()
    import sparse_autotune as sa
    from sparse_autotune.core.vendor import DENSE_MATH
    m, k, n = 256, 384, 40
    tol = 2e-2 if dtype != "fp32" else 1e-5
    a = random_matrix(m, k, 0.1, "uniform", 11, DTYPES[dtype])
    x, bias = _rand((n, k), dtype, 1), _rand(m, dtype, 2)
    sparse_db, dense_db = tmp_path / "cusparse.sqlite", tmp_path / "dense.sqlite"
    _store(sparse_db, m, k, n, a.nnz / (m * k), dtype, "cusparse", {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}, "nk")
    _store(dense_db, m, k, n, a.nnz / (m * k), dtype, "dense", {"math": DENSE_MATH[dtype]}, "kn")
    sa.lookup.cache_clear()
    op = sa.SpMM(a, dtype=dtype, db=sparse_db)
    y = op.linear(x, bias)
    plan = op.plan(n, "nk")
    assert (plan.family, plan.config, plan.path) == ("cusparse", {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}, "native")
    assert _rel_nk(y, a, x, bias) < tol and op.dense_bytes == 0
    op2 = sa.SpMM(a, dtype=dtype, db=dense_db)
    y2 = cp.empty((n, m), dtype=x.dtype)
    op2.linear(x, bias, out=y2)
    plan2 = op2.plan(n, "nk")
    assert plan2.family == "dense" and plan2.path == "native" and op2.dense_bytes == m * k * x.dtype.itemsize
    assert _rel_nk(y2, a, x, bias) < tol
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        op2.linear(x, bias, out=y2)
        graph = stream.end_capture()
        x[...] = _rand((n, k), dtype, 4)
        y2.fill(0)
        graph.launch(stream)
        stream.synchronize()
    assert _rel_nk(y2, a, x, bias) < tol


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_sparse_linear_eager_and_in_a_cuda_graph_equals_nn_linear(dtype, tmp_path):
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear, magnitude_mask
    tdt = getattr(torch, TDTYPE[dtype])
    tol = TOLERANCE[dtype]
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 1536).to("cuda", tdt)
    mask = magnitude_mask(lin.weight, 0.1)
    layer = SparseLinear.from_dense(lin, mask, db=tmp_path / "none.sqlite")
    ref_lin = torch.nn.Linear(384, 1536).to("cuda", tdt)
    with torch.no_grad():
        ref_lin.weight.copy_(lin.weight * mask)
        ref_lin.bias.copy_(lin.bias)
    w64, b64 = (lin.weight * mask).double(), lin.bias.double()
    for shape in ((4, 33, 384), (1, 384), (8, 384)):
        x = torch.randn(*shape, device="cuda").to(tdt)
        with torch.no_grad():
            y = layer(x)
            ref = torch.nn.functional.linear(x.double(), w64, b64)
            dense = ref_lin(x)
        assert y.shape == dense.shape and y.dtype == tdt
        assert ((y.double() - ref).norm() / ref.norm()).item() < tol, shape
        n = int(np.prod(shape[:-1]))
        assert layer.op.plan(n, "nk").path in ("native", "staged")
    # a CUDA graph: replays after new data is copied into the captured input give nn.Linear's result
    x = torch.randn(4, 8, 384, device="cuda").to(tdt)
    with torch.no_grad():
        layer(x)  # the eager call plans and compiles N = 32
        g, y = _captured(torch, layer, x)
        gen = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(2):
            x.copy_(torch.randn(4, 8, 384, device="cuda", generator=gen).to(tdt))
            y.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            ref = torch.nn.functional.linear(x.double(), w64, b64)
            assert ((y.double() - ref).norm() / ref.norm()).item() < tol
            assert torch.equal(y, layer(x))
    # without a bias
    nobias = SparseLinear((lin.weight * mask).detach(), None, db=tmp_path / "none.sqlite")
    with torch.no_grad():
        y0 = nobias(x)
    ref0 = torch.nn.functional.linear(x.double(), w64)
    assert ((y0.double() - ref0).norm() / ref0.norm()).item() < tol


def _captured(torch, layer, x):
    """(graph, its output) of layer(x) captured in a CUDA graph, after a warm-up call on a side stream."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        layer(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = layer(x)
    return g, y


def _gpu_kernels(torch, fn) -> list[str]:
    """The names of the GPU activities (kernels, copies, memsets) one call of fn runs."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def _sparse_weight(torch, m: int, k: int, seed: int):
    """A CPU weight m x k with about 10 % nonzeros and a CPU bias, from torch's generator seeded with `seed`."""
    torch.manual_seed(seed)
    w = torch.randn(m, k)
    w[torch.rand(m, k) > 0.1] = 0.0
    return w, torch.randn(m)


def test_sparse_linear_runs_one_kernel_where_the_plan_is_native(toy_nk, tmp_path):
    """The toy family (fp32) declaring nk: an nk record of it makes SparseLinear's forward one kernel with the bias
    fused; an nk record of the staged path three (the transposes and the kn kernel); a kn record of the toy family
    serves nk natively (one kernel) where no nk record exists."""
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear
    m, k, n = 256, 512, 16
    w, bias = _sparse_weight(torch, m, k, seed=2)
    nnz = int((w != 0).sum())
    x = torch.randn(n, k, device="cuda")
    ref = torch.nn.functional.linear(x.double(), w.double().cuda(), bias.double().cuda())
    cases = [("native", {"threads": 128, NK_PATH: "native"}, "nk", 1),
             ("staged", {"threads": 128, NK_PATH: "staged"}, "nk", 3),
             ("kn record", {"threads": 64}, "kn", 1)]
    for name, cfg, layout, kernels in cases:
        db = tmp_path / f"{name}.sqlite"
        _store(db, m, k, n, nnz / (m * k), "fp32", TOY, cfg, layout)
        layer = SparseLinear(w, bias, db=db).to("cuda")
        with torch.no_grad():
            y = layer(x)  # plans and compiles
        plan = layer.op.plan(n, "nk")
        assert plan.family == TOY and plan.path == ("staged" if name == "staged" else "native"), (name, plan)
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5, name
        names = _gpu_kernels(torch, lambda: layer(x))
        assert len(names) == kernels, (name, names)
        if kernels == 1:
            assert names[0].startswith("spmm_kernel"), names


def test_sparse_linear_left_on_the_cpu_copies_its_bias_once(toy_nk, tmp_path):
    """A layer built from CPU tensors and not moved: the bias is copied to x's device once (not at every call), so the
    forward is captured in a CUDA graph after an eager call; an in-place change of the bias is seen (a new copy)."""
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear
    m, k, n = 256, 512, 16
    w, bias = _sparse_weight(torch, m, k, seed=3)
    db = tmp_path / "cpu.sqlite"
    _store(db, m, k, n, int((w != 0).sum()) / (m * k), "fp32", TOY, {"threads": 128, NK_PATH: "native"}, "nk")
    layer = SparseLinear(w, bias, db=db)  # bias buffer on the CPU
    assert layer.bias.device.type == "cpu"
    x = torch.randn(n, k, device="cuda")
    with torch.no_grad():
        y = layer(x)
        ref = torch.nn.functional.linear(x.double(), w.double().cuda(), bias.double().cuda())
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
        assert len(_gpu_kernels(torch, lambda: layer(x))) == 1  # no host-to-device copy at each call
        g = torch.cuda.CUDAGraph()
        s_ = torch.cuda.Stream()
        s_.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s_):
            layer(x)
        torch.cuda.current_stream().wait_stream(s_)
        with torch.cuda.graph(g):
            yg = layer(x)
        x.copy_(torch.randn(n, k, device="cuda"))
        g.replay()
        torch.cuda.synchronize()
        ref = torch.nn.functional.linear(x.double(), w.double().cuda(), bias.double().cuda())
        assert ((yg.double() - ref).norm() / ref.norm()).item() < 1e-5
        layer.bias.add_(1.0)  # in place: the next eager call sees it
        y2 = layer(x)
        ref2 = torch.nn.functional.linear(x.double(), w.double().cuda(), (bias + 1.0).double().cuda())
        assert ((y2.double() - ref2).norm() / ref2.norm()).item() < 1e-5


def test_sparse_linear_fast_path_is_taken_and_left_when_it_must(toy_nk, tmp_path):
    """forward's fast path (issue 17 section 5: eager within 10 us of nn.Linear): after the first call with an input
    key, calls with the same key skip the checked path and give the same result; a new shape with the same N, an
    in-place change of the bias and, on a cuBLAS plan in fp32, torch's TF32 switch each go through the checked path
    again."""
    torch = pytest.importorskip("torch")
    from sparse_autotune.core.vendor import DENSE_MATH
    from sparse_autotune.runtime.nn import SparseLinear
    m, k, n = 256, 512, 16
    w, bias = _sparse_weight(torch, m, k, seed=4)
    nnz = int((w != 0).sum())
    sparse_db, dense_db = tmp_path / "toy.sqlite", tmp_path / "dense.sqlite"
    _store(sparse_db, m, k, n, nnz / (m * k), "fp32", TOY, {"threads": 128, NK_PATH: "native"}, "nk")
    _store(dense_db, m, k, n, nnz / (m * k), "fp32", "dense", {"math": DENSE_MATH["fp32"]}, "nk")
    wc, bc = w.double().cuda(), bias.double().cuda()

    def rel(y, x, b=bc):
        ref = torch.nn.functional.linear(x.double(), wc, b)
        return ((y.double() - ref).norm() / ref.norm()).item()

    for db in (sparse_db, dense_db):
        layer = SparseLinear(w, bias, db=db).to("cuda")
        slow = []
        checked = layer._forward
        layer._forward = lambda x_: slow.append(tuple(x_.shape)) or checked(x_)
        x = torch.randn(n, k, device="cuda")
        with torch.no_grad():
            y1 = layer(x)
            y2 = layer(x)
            assert slow == [(n, k)] and len(layer._fast) == 1 and torch.equal(y1, y2) and rel(y2, x) < 1e-5, db
            x3 = x.view(2, 8, k)  # the same N, another key
            y3 = layer(x3)
            assert slow[-1] == (2, 8, k) and y3.shape == (2, 8, m) and torch.equal(y3.reshape(n, m), y1)
            layer.bias.add_(1.0)  # in place: the fast path sees the new version
            y4 = layer(x)
            assert slow[-1] == (n, k) and rel(y4, x, bc + 1.0) < 1e-5
            layer(x)
            assert len(slow) == 3
            if db == dense_db:
                assert layer.op.plan(n, "nk").family == "dense"
                wd, bd = w.cuda(), (bias + 1.0).cuda()  # on the fast path: nn.Linear's own call, its kernels only
                assert len(_gpu_kernels(torch, lambda: layer(x))) == len(
                    _gpu_kernels(torch, lambda: torch.nn.functional.linear(x, wd, bd)))
                old = torch.backends.cuda.matmul.allow_tf32
                try:
                    torch.backends.cuda.matmul.allow_tf32 = not old
                    y5 = layer(x)  # fp32 cuBLAS at the plan's precision, whatever torch's switch says
                    assert slow[-1] == (n, k) and rel(y5, x, bc + 1.0) < 1e-5
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = old
            else:
                assert layer.op.plan(n, "nk").family == TOY


def test_quick_tuning_of_linear_stores_an_nk_record(tmp_path):
    torch = pytest.importorskip("torch")
    import sparse_autotune as sa
    from sparse_autotune.store.db import TuningDB
    db = tmp_path / "q.sqlite"
    m, k, n = 256, 512, 24
    a = random_matrix(m, k, 0.1, "uniform", 8, np.float16)
    op = sa.SpMM(a, dtype="fp16", db=db, tune="quick")
    x = torch.randn(n, k, device="cuda", dtype=torch.float16)
    bias = torch.randn(m, device="cuda", dtype=torch.float16)
    y = op.linear(x, bias)
    ref = x.double() @ torch.from_numpy(a.toarray()).double().cuda().T + bias.double()
    assert ((y.double() - ref).norm() / ref.norm()).item() < TOLERANCE["fp16"]
    res = op.quick_nk[n]
    assert res.chosen is not None and op.plan(n, "nk").source == "quick" and n not in op.quick
    assert any(c.family == "cusparse" and c.time_us for c in res.candidates), res.candidates
    tdb = TuningDB(db, create=False, readonly=True)
    try:
        recs = tdb.records()
    finally:
        tdb.dispose()
    assert recs and {r.layout for r in recs} == {"nk"} and all(r.origin == "quick" for r in recs)
    sa.lookup.cache_clear()
    again = sa.SpMM(a, dtype="fp16", db=db, tune="quick")
    assert again.plan(n, "nk").source == "exact"
    again.linear(x, bias)
    assert n not in again.quick_nk  # an exact nk record: not tuned again


def test_tune_an_nk_problem_end_to_end(toy_nk, tmp_path):
    """`tune --layout nk`: the search explores native and staged for the toy family (declaring nk) and staged for
    csr_rowsplit, the baselines are the vendor paths' nk forms with the bias, the record is nk and lookup finds it."""
    import optuna

    from sparse_autotune.store.lookup import lookup
    db = tmp_path / "t.sqlite"
    env = {**os.environ, "SPARSE_AUTOTUNE_FAMILY_PATH": str(toy_nk)}
    cmd = [sys.executable, "-m", "sparse_autotune", "tune", "--shape", "512x1024", "--density", "0.05", "--n", "24",
           "--layout", "nk", "--families", f"{TOY},csr_rowsplit,cusparse,dense", "--trials", "12", "--db", str(db),
           "--json", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["problem"]["layout"] == "nk" and NK_PATH in rep["best"]["config"]
    assert rep["best"]["max_rel_err"] <= TOLERANCE["fp32"] and rep["baselines"]["cusparse_us"]
    assert {c["family"] for c in rep["vendor_candidates"]} == {"cusparse", "dense"}
    study = optuna.load_study(study_name=rep["study"], storage=f"sqlite:///{db}")
    assert rep["study"].startswith("M512_K1024_N24_d0.05_fp32_uniform_nk|")
    paths = {(t.user_attrs["family"], json.loads(t.user_attrs["config"]).get(NK_PATH))
             for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs.get("vendor")}
    assert (TOY, "native") in paths and ("csr_rowsplit", "staged") in paths, paths
    plain = subprocess.run([sys.executable, "-m", "sparse_autotune", "lookup", "--shape", "512x1024", "--density",
                            "0.05", "--n", "24", "--layout", "nk", "--db", str(db), "--json"],
                           capture_output=True, text=True, timeout=300, env=env)
    got = json.loads(plain.stdout)
    assert got["source"] == "exact" and got["record_layout"] == "nk" and got["layout"] == "nk"
    kn = lookup(512, 1024, 24, 0.05, "fp32", db=db)
    assert kn.source == "default" and kn.record_id is None  # the database holds nk records only: none serves kn


def test_tf32_linear_runs_a_tc_sp24_record_natively_eager_and_in_a_cuda_graph(tmp_path):
    """tf32 (fp32 tensors, TF32 math) in the nn.Linear layout on Hopper: a tc_sp24 record (session 55's family form) is
    the plan, native (one kernel, the bias fused), within TF32's tolerance of the float64 y, through op.linear with CuPy
    and SparseLinear with torch, eager and replayed in a CUDA graph."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    torch = pytest.importorskip("torch")
    import sparse_autotune as sa
    from sparse_autotune.core.families import get_family
    from sparse_autotune.runtime.nn import SparseLinear
    m, k, n = 384, 768, 64
    a = random_matrix(m, k, 0.05, "uniform", 21, np.float32)
    cfg = get_family("tc_sp24").space.normalize(dict(bn=64, kc=4, wg=2, stages=4, splitk=1), "tf32")
    db = tmp_path / "tf32.sqlite"
    _store(db, m, k, n, a.nnz / (m * k), "tf32", "tc_sp24", {**cfg, "nk_path": "native"}, "nk")
    sa.lookup.cache_clear()
    op = sa.SpMM(a, dtype="tf32", db=db)
    x, bias = _rand((n, k), "fp32", 3), _rand(m, "fp32", 4)
    y = op.linear(x, bias)
    plan = op.plan(n, "nk")
    assert (plan.family, plan.path) == ("tc_sp24", "native") and y.dtype == np.float32
    assert _rel_nk(y, a, x, bias) < TOLERANCE["tf32"]
    bias_h = torch.from_numpy(_cp().asnumpy(bias))
    layer = SparseLinear(torch.from_numpy(a.toarray()).cuda(), bias_h.cuda(), dtype="tf32", db=db)
    xt = torch.randn(n, k, device="cuda")
    w64, b64 = torch.from_numpy(a.toarray()).double().cuda(), bias_h.double().cuda()
    with torch.no_grad():
        yt = layer(xt)
        assert layer.op.plan(n, "nk").family == "tc_sp24"
        ref = torch.nn.functional.linear(xt.double(), w64, b64)
        assert yt.dtype == torch.float32 and ((yt.double() - ref).norm() / ref.norm()).item() < TOLERANCE["tf32"]
        g, yg = _captured(torch, layer, xt)
        xt.copy_(torch.randn(n, k, device="cuda"))
        yg.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        ref = torch.nn.functional.linear(xt.double(), w64, b64)
        assert ((yg.double() - ref).norm() / ref.norm()).item() < TOLERANCE["tf32"]
