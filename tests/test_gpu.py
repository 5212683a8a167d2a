"""GPU tests (run on the device: `pytest -m gpu`). Skipped where no CUDA GPU is present."""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from sparse_autotune.core.problem import DTYPES, Problem, host_values, random_matrix, storage
from sparse_autotune.core.space import get_space, load_spaces, problem_env

pytestmark = pytest.mark.gpu


def _cp():
    import cupy as cp
    return cp


_ENUMERATED: dict = {}


def covering_sample(space, dtype, env, limits, seed=0):
    """Feasible configs such that every value of every parameter appears (where any feasible config has it), then up to
    8 more feasible ones. The space's configs are walked in a random order and a config's feasibility is checked only
    where it would add something (a value not yet covered, or one of the 8): the walk stops once every value that a
    single-parameter constraint does not rule out (Space.impossible_values) is covered and the 8 are found (a full
    feasibility pass over the larger spaces took seconds a case, minutes a test)."""
    if space.refusal(env, limits) is not None:  # a constraint of the problem alone fails: nothing is feasible
        return []
    key = (space.family, dtype, id(space))
    if key not in _ENUMERATED:
        _ENUMERATED[key] = list(space.enumerate(dtype))
    configs = _ENUMERATED[key]
    need = {(p.name, v) for p in space.params for v in p.choices(dtype)} - space.impossible_values(dtype, env, limits)
    chosen, extra = [], []
    for i in np.random.default_rng(seed).permutation(len(configs)):
        cfg = configs[i]
        hits = set(cfg.items()) & need
        if (hits or len(extra) < 8) and space.check(cfg, env, limits) is None:
            if hits:
                chosen.append(dict(cfg))
                need -= hits
            else:
                extra.append(dict(cfg))
        if not need and len(extra) >= 8:
            break
    return chosen + extra


def edge_matrices(dtype):
    np_dt = DTYPES[dtype]
    rng = np.random.default_rng(7)
    mats = {}
    mats["random_37x53"] = random_matrix(37, 53, 0.2, "uniform", 1, np_dt)
    mats["powerlaw_300x700"] = random_matrix(300, 700, 0.05, "powerlaw", 2, np_dt)
    a = random_matrix(64, 96, 0.3, "uniform", 3, np_dt).tolil()
    a[5:40, :] = 0  # empty rows
    mats["empty_rows"] = sp.csr_matrix(a)
    d = np.zeros((130, 257))
    d[77, :] = rng.standard_normal(257)  # one dense row among empty ones
    mats["one_dense_row"] = sp.csr_matrix(host_values(d, np_dt))
    mats["all_zero"] = sp.csr_matrix((50, 40), dtype=np.float32)
    mats["dense_1.0"] = random_matrix(33, 65, 1.0, "uniform", 4, np_dt)
    mats["single_row"] = random_matrix(1, 300, 0.5, "uniform", 5, np_dt)
    return mats


EDGE_N = (1, 8, 13, 64, 200)

# one test a (dtype, family), so that `pytest -n W` (xdist) spreads the families' compiles over W workers
FAMILY_DTYPES = [(d, s.family) for d in ("fp32", "fp16", "bf16") for s in load_spaces() if s.supports(d)]


@pytest.mark.parametrize("dtype,family", FAMILY_DTYPES, ids=[f"{d}-{f}" for d, f in FAMILY_DTYPES])
def test_every_family_correct_on_edge_cases(dtype, family):
    """A covering sample of the family's configs verifies against float64 on edge-case matrices and N."""
    cp = _cp()
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    import cupyx.scipy.sparse as csp
    info = gpu_info()
    np_dt = DTYPES[dtype]
    space = get_space(family)
    checked = 0
    for name, a in edge_matrices(dtype).items():
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in EDGE_N:
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            # every kernel wherever it runs, also where the tuner does not search it (a family's gate, core.space)
            sample = covering_sample(space, dtype, env, {**info.limits(), "gate": 0}, seed=n)
            if not sample:
                continue  # e.g. csr_btile needs N divisible by 16 bytes of elements
            b = cp.asarray(storage(np.random.default_rng(n).standard_normal((a.shape[1], n)), dtype))
            ref = reference(a64, b)
            c = cp.empty((a.shape[0], n), dtype=np_dt)
            # the pattern family assembles a module per config and matrix: two configs per case suffice
            picks = sample[:2] if space.needs_matrix else sample[:: max(1, len(sample) // 12)]
            # compile in parallel threads (as the tuner does), then check one by one
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda cfg: build_kernel(dev, space.family, cfg, dtype), picks))
            for k in kernels:
                check(lambda: k(b, c), c, ref, dtype)  # raises CandidateError on a wrong result
                checked += 1
    assert checked > 30, checked


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_every_edge_case_has_a_family(dtype):
    """Some family's space can run each of the edge cases above (no compile: the spaces' feasibility on this GPU; the
    first feasible config of a space answers, not a covering sample of its whole feasible set)."""
    from sparse_autotune.device.gpu import gpu_info
    info = gpu_info()
    spaces = [s for s in load_spaces() if s.supports(dtype)]
    for name, a in edge_matrices(dtype).items():
        for n in EDGE_N:
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            assert any(next(s.feasible(dtype, env, info.limits()), None) is not None for s in spaces), (name, n)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_wide_covering_sample_correct(dtype):
    """Many configs (every parameter value covered) on the mission shape, fresh random inputs each."""
    from sparse_autotune.device.context import GpuProblem
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.kernel import build_kernel
    from sparse_autotune.device.verify import check
    info = gpu_info()
    mission = GpuProblem(Problem.random(512, 2048, 256, 0.1, dtype), info)
    small = GpuProblem(Problem.random(64, 256, 256, 0.05, dtype), info)  # the pattern family: few nonzeros, quick JIT
    for space in load_spaces():
        ctx = small if space.needs_matrix else mission
        pp = ctx.problem
        env = problem_env(pp.m, pp.k, pp.n, pp.nnz, dtype)
        sample = covering_sample(space, dtype, env, {**info.limits(), "gate": 0})
        if not space.supports(dtype):  # e.g. tc_gather computes fp16 only
            assert not sample
            continue
        assert len(sample) >= 10
        # compile in parallel threads (as the tuner does: NVRTC and the driver's assembler on CPU cores), then check
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            kernels = list(pool.map(lambda cfg: build_kernel(ctx.a_dev, space.family, cfg, dtype), sample))
        for k in kernels:
            b, ref = ctx.fresh_check()
            err = check(lambda: k(b, ctx.c), ctx.c, ref, dtype)
            assert err >= 0.0


def test_poisoned_output_detects_unwritten_rows():
    """verify.check must fail a kernel that leaves part of C unwritten."""
    cp = _cp()
    from sparse_autotune.errors import CandidateError
    from sparse_autotune.device.verify import check, reference
    import cupyx.scipy.sparse as csp
    a = random_matrix(64, 64, 0.2, "uniform", 0, np.float32)
    b = cp.asarray(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    ref = reference(csp.csr_matrix(a.astype(np.float64)), b)
    c = cp.empty((64, 16), dtype=cp.float32)
    good = cp.asarray((a @ b.get()).astype(np.float32))

    def partial():
        c[:32] = good[:32]  # rows 32.. stay poisoned
    with pytest.raises(CandidateError, match="unwritten"):
        check(partial, c, ref, "fp32")


def test_timing_graph_replay_and_baselines():
    from sparse_autotune.device.baselines import time_baselines
    from sparse_autotune.device.context import GpuProblem
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.kernel import build_kernel
    from sparse_autotune.device.timing import time_launches
    info = gpu_info()
    p = Problem.random(512, 2048, 256, 0.1, "fp32")
    ctx = GpuProblem(p, info)
    space = load_spaces()[0]
    cfg = space.defaults("fp32", problem_env(p.m, p.k, p.n, p.nnz, "fp32"), info.limits())[0]
    k = build_kernel(ctx.a_dev, space.family, cfg, "fp32")
    t = time_launches([lambda bb=bb: k(bb, ctx.c) for bb in ctx.b_bufs])
    assert t.method == "graph"
    assert 0.2 < t.median_us < 1000
    assert t.launches_per_replay % len(ctx.b_bufs) == 0
    # a candidate far slower than the best so far keeps its rough time (no graph capture, no replays)
    rough = time_launches([lambda bb=bb: k(bb, ctx.c) for bb in ctx.b_bufs], give_up_above_us=t.median_us / 100)
    assert rough.method == "estimate" and rough.median_us > t.median_us / 100 and rough.replays == 1
    assert "replayed" in rough.note  # rechecked from a CUDA graph before it was given up (host stalls excluded)
    full = time_launches([lambda bb=bb: k(bb, ctx.c) for bb in ctx.b_bufs], give_up_above_us=1e6)
    assert full.method == "graph"
    base = time_baselines(ctx)
    for key in ("cusparse_us", "cublas_fp32_us", "cublas_tf32_us", "cublas_fp16_us"):
        assert base[key] is not None and base[key] > 0, (key, base["baseline_errors"])
    # TF32 and FP16 tensor cores must beat plain FP32 SGEMM on this shape
    assert base["cublas_fp16_us"] < base["cublas_fp32_us"]


@pytest.mark.parametrize("family", ["csr_gemv", "tc_tiled"])
def test_cold_timing_twins_compute_a_at_b_and_read_a_from_hbm(family):
    """A kernel bound to a twin of A (copied layouts and workspace) computes the same C; the cold timing rotates
    enough copies to exceed twice the L2, and cuBLAS FP16 on copies of the dense A is timed beside it."""
    from sparse_autotune.device.cold import cold_times, rotation, time_kernel_cold
    from sparse_autotune.device.context import GpuProblem
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.kernel import build_kernel
    from sparse_autotune.device.timing import time_launches
    from sparse_autotune.device.verify import check
    from sparse_autotune.core.families import get_family
    info = gpu_info()
    p = Problem.random(4096, 4096, 8, 0.1, "fp16")
    ctx = GpuProblem(p, info)
    space = get_family(family).space
    cfg = space.defaults("fp16", problem_env(p.m, p.k, p.n, p.nnz, "fp16"), info.limits())[0]
    k = build_kernel(ctx.a_dev, family, cfg, "fp16")
    b, ref = ctx.fresh_check()
    check(lambda: k(b, ctx.c), ctx.c, ref, "fp16")
    twin = k.bound_to(ctx.a_dev.twin())
    assert twin.a is not k.a and twin.a.nbytes() == k.a.nbytes()
    b, ref = ctx.fresh_check()
    assert check(lambda: twin(b, ctx.c), ctx.c, ref, "fp16") <= 1e-2
    used, read, n = rotation(k, p.n, info.l2_bytes)  # the twins the cold timing binds: the layouts a launch asks for
    lean = k.bound_to(ctx.a_dev.twin(used))
    assert 0 < read <= lean.a.nbytes() <= k.a.nbytes()
    b, ref = ctx.fresh_check()
    assert check(lambda: lean(b, ctx.c), ctx.c, ref, "fp16") <= 1e-2
    warm = time_launches([lambda bb=bb: k(bb, ctx.c) for bb in ctx.b_bufs])
    t, copies = time_kernel_cold(k, ctx)
    assert copies == n and copies * read >= min(2 * info.l2_bytes, 48 * read)
    assert t.method == "graph" and t.median_us > 0.5 * warm.median_us
    c = cold_times(k, ctx)
    assert c["tuned_cold_us"] > 0 and c["dense_cold_us"] > 0 and c["dense_cold_mode"] == "fp16", c


def test_tune_end_to_end_then_lookup_and_spmm(tmp_path):
    """`tune` with a small budget stores a verified record that lookup finds and SpMM uses."""
    cp = _cp()
    db = tmp_path / "t.sqlite"
    cmd = [sys.executable, "-m", "sparse_autotune", "tune", "--shape", "256x1024", "--density", "0.1",
           "--n", "128", "--trials", "12", "--db", str(db), "--json", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["trials"]["complete"] + rep["trials"]["failed"] == 12
    assert rep["best"]["max_rel_err"] < 1e-4
    assert rep["best"]["time_us"] > 0 and rep["baselines"]["cusparse_us"] > 0
    # a second run of the same problem resumes the study: nothing new within the same budget
    proc2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc2.returncode == 0, proc2.stderr
    rep2 = json.loads(proc2.stdout)
    assert rep2["trials"]["new"] == 0 and rep2["study"] == rep["study"]

    import sparse_autotune as sa
    from sparse_autotune.device.gpu import gpu_info
    sa.lookup.cache_clear()
    found = sa.lookup(256, 1024, 128, 0.1, "fp32", db=db)
    assert found is not None and found.gpu == gpu_info().name
    assert found.config == rep2["best"]["config"] or found.time_us <= rep["best"]["time_us"]

    a = random_matrix(256, 1024, 0.1, "uniform", 0, np.float32)  # the same matrix tune used (seed 0)
    op = sa.SpMM(a, db=db)
    fam, cfg, source = op.plan(128)
    assert source == "exact" and cfg == found.config
    b = cp.asarray(np.random.default_rng(3).standard_normal((1024, 128)).astype(np.float32))
    c = op(b)
    ref = a.astype(np.float64) @ b.get().astype(np.float64)
    assert np.linalg.norm(c.get() - ref) / np.linalg.norm(ref) < 1e-5
    # an N that was never tuned uses the record of its N bucket (76 and 77: the bucket of 128) or else the nearest tuned
    # problem's config (40), adapted to N, still correct; an N the winner's family cannot run at all (csr_btile copies
    # B in 16-byte chunks: N % 4 != 0) falls back to the default
    for n2, how in ((76, ("bucket",)), (77, ("bucket", "default")), (40, ("nearest",))):
        b2 = cp.asarray(np.random.default_rng(n2).standard_normal((1024, n2)).astype(np.float32))
        assert op.plan(n2)[2] in how, (n2, op.plan(n2))
        ref2 = a.astype(np.float64) @ b2.get().astype(np.float64)
        assert np.linalg.norm(op(b2).get() - ref2) / np.linalg.norm(ref2) < 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_spmm_operator_inputs_and_errors(dtype):
    cp = _cp()
    import cupyx.scipy.sparse as csp
    import sparse_autotune as sa
    from sparse_autotune.errors import UserError
    np_dt = DTYPES[dtype]
    a = random_matrix(100, 300, 0.1, "uniform", 9, np_dt)
    b = cp.asarray(np.random.default_rng(1).standard_normal((300, 40)).astype(np_dt))
    ref = a.astype(np.float64) @ b.get().astype(np.float64)
    tol = 1e-5 if dtype == "fp32" else 2e-3
    dense = a.toarray().astype(np_dt)  # A in the operator's own dtype: the dtype is taken from it
    sources = [dense, cp.asarray(dense)] + ([a, csp.csr_matrix(a)] if dtype == "fp32" else [])
    for source in sources:
        op = sa.SpMM(source)
        assert op.dtype == dtype
        c = op(b)
        assert isinstance(c, cp.ndarray) and c.dtype == np_dt and c.shape == (100, 40)
        assert np.linalg.norm(c.get().astype(np.float64) - ref) / np.linalg.norm(ref) < tol
    out = cp.full((100, 40), cp.nan, dtype=np_dt)
    assert op(b, out=out) is out and bool(cp.isfinite(out).all())
    with pytest.raises(UserError, match="shape"):
        op(cp.zeros((299, 40), dtype=np_dt))
    with pytest.raises(UserError, match="dtype"):
        op(b.astype(cp.float64))
    # all-zero A and M/N edge cases
    z = sa.SpMM(sp.csr_matrix((7, 300), dtype=np.float32), dtype=dtype)
    cz = z(b)
    assert cz.shape == (7, 40) and not bool(cp.any(cz))


def test_spmm_operator_torch():
    torch = pytest.importorskip("torch")
    import sparse_autotune as sa
    a = random_matrix(64, 128, 0.2, "uniform", 2, np.float32)
    op = sa.SpMM(torch.from_numpy(a.toarray()))
    b = torch.randn(128, 48, device="cuda")
    c = op(b)
    assert isinstance(c, torch.Tensor) and c.is_cuda and c.shape == (64, 48)
    ref = torch.from_numpy(a.toarray()).cuda() @ b
    assert torch.allclose(c, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_sparse_linear_matches_masked_dense_linear(dtype):
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear, magnitude_mask
    tdt = torch.float32 if dtype == "fp32" else torch.float16
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 1536).to("cuda", tdt)
    layer = SparseLinear.from_dense(lin, 0.1)
    mask = magnitude_mask(lin.weight, 0.1)
    assert int(mask.sum()) == round(0.1 * lin.weight.numel()) == layer.op.nnz
    ref_lin = torch.nn.Linear(384, 1536).to("cuda", tdt)
    with torch.no_grad():
        ref_lin.weight.copy_(lin.weight * mask)
        ref_lin.bias.copy_(lin.bias)
    x = torch.randn(4, 33, 384, device="cuda", dtype=tdt)
    y, ref = layer(x), ref_lin(x)
    assert y.shape == ref.shape == (4, 33, 1536) and y.dtype == tdt
    rel = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < (1e-5 if dtype == "fp32" else 3e-3), rel
    # on a side stream too: the operator runs on PyTorch's current stream
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y2 = layer(x)
    s.synchronize()
    assert torch.equal(y2, y)


def test_spmm_any_n_uses_the_nearest_tuned_config(tmp_path):
    """A stored record for N=256 serves N=202 from its N bucket (and N=100 as 'nearest'), adapted so N=202 still runs,
    and stays correct."""
    cp = _cp()
    import datetime as dt
    import sparse_autotune as sa
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.store.db import Record, TuningDB
    info = gpu_info()
    db = tmp_path / "n.sqlite"
    a = random_matrix(300, 500, 0.1, "uniform", 0, np.float32)
    cfg = {"rows_per_block": 4, "lanes_per_row": 16, "vec": 4, "cols_per_thread": 2, "unroll": 4, "stage": "none",
           "row_order": "sorted", "raster": "rows_first", "index_bits": 32}
    tdb = TuningDB(db)
    tdb.store(Record(gpu_name=info.name, gpu_cc=info.cc, m=300, k=500, n=256, density=a.nnz / (300 * 500),
                     dtype="fp32", pattern="uniform", family="csr_rowsplit", config_json=json.dumps(cfg),
                     time_us=5.0, gflops=1.0, max_rel_err=1e-7, trials=1, matrix_hash="x", package_version="0",
                     cuda_version="0", driver_version="0", cupy_version="0", created_at=dt.datetime(2026, 1, 1)))
    tdb.dispose()
    sa.lookup.cache_clear()
    op = sa.SpMM(a, db=db)
    fam, plan_cfg, source = op.plan(256)
    assert source == "exact" and plan_cfg == {**cfg, "split": 0, "acc": "f32"}  # a record from before `split` / `acc`
    fam, plan_cfg, source = op.plan(202)  # 202 % 4 != 0: the vector width is lowered to 2
    assert source == "bucket" and plan_cfg["vec"] == 2 and plan_cfg["rows_per_block"] == 4
    assert op.plan(100)[2] == "nearest"  # bucket 128: not the record's
    b = cp.asarray(np.random.default_rng(5).standard_normal((500, 202)).astype(np.float32))
    ref = a.astype(np.float64) @ b.get().astype(np.float64)
    assert np.linalg.norm(op(b).get() - ref) / np.linalg.norm(ref) < 1e-5


def test_tune_model_two_layer_toy_end_to_end(tmp_path):
    """`tune-model` on a two-layer toy safetensors model: prune, save the bundle, tune both layers (one problem each),
    rerun = nothing to do; the runtime finds each layer's exact config; `report --model` writes the PNGs."""
    from safetensors.numpy import save_file

    from sparse_autotune.core.checkpoint import load_bundle
    rng = np.random.default_rng(0)
    save_file({"fc1.weight": rng.standard_normal((512, 256)).astype(np.float32),
               "fc1.bias": rng.standard_normal(512).astype(np.float32),
               "fc2.weight": rng.standard_normal((256, 512)).astype(np.float32)}, str(tmp_path / "toy.safetensors"))
    db, bundle = tmp_path / "t.sqlite", tmp_path / "toy-sparse.npz"
    cmd = [sys.executable, "-m", "sparse_autotune", "tune-model", str(tmp_path / "toy.safetensors"), "--prune",
           "magnitude", "--density", "0.1", "--n", "256", "--trials", "8", "--db", str(db), "--save-sparse",
           str(bundle), "--json", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert (s["layers"], s["problems"], s["tuned"], s["failed"]) == (2, 2, 2, 0)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped_done_before"] == 2

    import sparse_autotune as sa
    sa.lookup.cache_clear()
    mats, _, _ = load_bundle(bundle)
    cp = _cp()
    for name, a in mats.items():
        op = sa.SpMM(a, db=db)
        assert op.plan(256, "nk")[2] == "exact", name  # tune-model tunes Linear layers in nn.Linear's layout
        b = cp.asarray(rng.standard_normal((a.shape[1], 256)).astype(np.float32))
        ref = a.astype(np.float64) @ b.get().astype(np.float64)
        assert np.linalg.norm(op(b).get() - ref) / np.linalg.norm(ref) < 1e-5
        y = op.linear(cp.ascontiguousarray(b.T))  # the tuned nk record's kernel: y = x @ A^T
        assert np.linalg.norm(y.get() - ref.T) / np.linalg.norm(ref) < 1e-5
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "sparse_autotune", "report", "--model", "toy", "--out", str(out),
                           "--db", str(db)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for png in ("layers.png", "totals.png", "density.png", "convergence.png"):
        assert (out / png).stat().st_size > 2000, png
    assert "fc1.weight" in (out / "report.md").read_text()


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_spmm_launcher_every_family_cupy_and_torch(dtype):
    """op(B) through the bound launcher, for configs of every family (the plan is pinned per family): CuPy and PyTorch
    inputs, contiguous or not, fresh output or out=, all equal to the float64 product."""
    cp = _cp()
    try:
        import torch
    except ImportError:
        torch = None
    import sparse_autotune as sa
    from sparse_autotune.device.gpu import gpu_info
    info = gpu_info()
    np_dt = DTYPES[dtype]
    m, k, n = 64, 256, 48
    a = random_matrix(m, k, 0.05, "uniform", 11, np_dt)  # few nonzeros: the pattern family assembles it quickly
    rng = np.random.default_rng(4)
    b_host = rng.standard_normal((k, n)).astype(np_dt)
    ref = a.astype(np.float64) @ b_host.astype(np.float64)
    tol = 1e-5 if dtype == "fp32" else 2e-3

    def rel(c) -> float:
        host = c.get() if isinstance(c, cp.ndarray) else c.cpu().numpy()
        return float(np.linalg.norm(host.astype(np.float64) - ref) / np.linalg.norm(ref))

    env = problem_env(m, k, n, a.nnz, dtype)
    families = set()
    for space in load_spaces():
        for cfg in covering_sample(space, dtype, env, {**info.limits(), "gate": 0}, seed=1)[:2]:
            op = sa.SpMM(a, dtype=dtype)
            op._plans[n] = (space.family, cfg, "pinned by the test")
            b = cp.asarray(b_host)
            c = op(b)
            assert op.plan(n)[0] == space.family and n in op._launchers
            assert isinstance(c, cp.ndarray) and c.shape == (m, n) and rel(c) < tol, (space.family, cfg)
            out = cp.full((m, n), cp.nan, dtype=np_dt)
            assert op(b, out=out) is out and rel(out) < tol
            assert rel(op(cp.asfortranarray(b))) < tol  # not C-contiguous: copied first
            if torch is not None:
                tb = torch.as_tensor(b_host).cuda()
                tc = op(tb)
                assert isinstance(tc, torch.Tensor) and tc.is_cuda and tc.dtype == tb.dtype and rel(tc) < tol
                tb_t = torch.as_tensor(np.ascontiguousarray(b_host.T)).cuda().t()  # a K x N view, not contiguous
                assert not tb_t.is_contiguous() and rel(op(tb_t)) < tol
                tout = torch.full((m, n), float("nan"), dtype=tb.dtype, device="cuda")
                assert op(tb, out=tout) is tout and rel(tout) < tol
            families.add(space.family)
    assert families == {s.family for s in load_spaces() if s.supports(dtype)}


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_spmm_and_sparse_linear_in_a_torch_cuda_graph(dtype):
    """op(B, out=C) and SparseLinear captured with torch.cuda.graph: replays after new data is copied into the
    captured input give the new product; an N never called before is refused during capture with a clear error."""
    torch = pytest.importorskip("torch")
    import sparse_autotune as sa
    from sparse_autotune.errors import UserError
    from sparse_autotune.runtime.nn import SparseLinear, magnitude_mask
    np_dt = DTYPES[dtype]
    tdt = torch.float32 if dtype == "fp32" else torch.float16
    tol = 1e-5 if dtype == "fp32" else 3e-3
    m, k, n = 96, 200, 32
    a = random_matrix(m, k, 0.1, "uniform", 3, np_dt)
    a_dev = torch.as_tensor(a.toarray().astype(np.float64)).cuda()
    op = sa.SpMM(a, dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=tdt)
    c = torch.empty(m, n, device="cuda", dtype=tdt)

    def warm_then_capture(fn):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()  # the eager call plans and compiles for this N
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            res = fn()
        return g, res

    g, _ = warm_then_capture(lambda: op(b, out=c))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(2):
        b.copy_(torch.randn(k, n, device="cuda", generator=gen).to(tdt))
        c.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        ref = a_dev @ b.double()
        assert ((c.double() - ref).norm() / ref.norm()).item() < tol
    with pytest.raises(UserError, match="before CUDA graph capture"):
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2):
            c.zero_()
            op(torch.zeros(k, n + 8, device="cuda", dtype=tdt))

    torch.manual_seed(1)
    lin = torch.nn.Linear(k, m).to("cuda", tdt)
    layer = SparseLinear.from_dense(lin, 0.2)
    w_masked = (lin.weight * magnitude_mask(lin.weight, 0.2)).double()
    x = torch.randn(4, 8, k, device="cuda", dtype=tdt)  # N = 32
    with torch.no_grad():
        g3, y = warm_then_capture(lambda: layer(x))
        for _ in range(2):
            x.copy_(torch.randn(4, 8, k, device="cuda", generator=gen).to(tdt))
            g3.replay()
            torch.cuda.synchronize()
            ref = torch.nn.functional.linear(x.double(), w_masked, lin.bias.double())
            assert y.shape == (4, 8, m) and y.dtype == tdt
            assert ((y.double() - ref).norm() / ref.norm()).item() < tol
            assert torch.equal(y, layer(x))  # the replay ran the same kernels as an eager call
        assert layer(x[:0]).shape == (0, 8, m)  # an empty batch: N = 0, nothing launched


def test_two_tunes_on_one_gpu_take_turns(tmp_path):
    """Two `tune` processes on one GPU (different problems) compile in parallel but never verify or time at once: the
    turns they logged do not overlap, and both store verified records."""
    turns = tmp_path / "turns.log"
    env = {**os.environ, "SPARSE_AUTOTUNE_TURN_LOG": str(turns), "SPARSE_AUTOTUNE_LOCK_DIR": str(tmp_path / "locks")}
    procs = [subprocess.Popen([sys.executable, "-m", "sparse_autotune", "tune", "--shape", shape, "--density", "0.1",
                               "--n", "128", "--trials", "8", "--db", str(tmp_path / f"t{i}.sqlite"), "--json",
                               "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i, shape in enumerate(("256x1024", "512x512"))]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out)["best"]["max_rel_err"] < 1e-4
    spans = sorted((float(t0), float(t1), int(pid)) for pid, t0, t1 in (ln.split() for ln in turns.read_text().splitlines()))
    per_pid = {pid: sum(1 for *_, q in spans if q == pid) for *_, pid in spans}
    assert len(per_pid) == 2 and min(per_pid.values()) >= 3, per_pid  # set-up, trials, finish: each process's turns
    for (a0, a1, pa), (b0, b1, pb) in zip(spans, spans[1:]):
        assert a1 <= b0 + 1e-3, f"turns of {pa} and {pb} overlap: {a0:.4f}-{a1:.4f}, {b0:.4f}-{b1:.4f}"
