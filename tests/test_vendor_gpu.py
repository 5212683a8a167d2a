"""GPU tests of the vendor paths and of quick tuning (run on the device: `pytest -m gpu tests/test_vendor_gpu.py`):
the runtime dispatching to cuSPARSE / cuBLAS with CuPy and PyTorch (in a CUDA graph too), a tune that stores a
vendor record where cuBLAS wins, and quick tuning at the first call. The CPU side is in test_vendor.py."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest

from sparse_autotune.core.problem import DTYPES, random_matrix, storage
from sparse_autotune.core.vendor import CUSPARSE_ALGS, dense_bytes

pytestmark = pytest.mark.gpu
TOL = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}


def _cp():
    import cupy as cp
    return cp


def _rel(c, a, b) -> float:
    """Relative Frobenius error of C (CuPy, any dtype) against the float64 product of A (scipy) and B (CuPy)."""
    from sparse_autotune.core.problem import as_float
    ref = a.astype(np.float64) @ as_float(b).get().astype(np.float64)
    got = as_float(c).get().astype(np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _store(db, a, n, family, config, dtype, time_us=1.0):
    """A verified record of (A's key, N) on this GPU: what a tune stores for a vendor path that won."""
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.store.db import Record, TuningDB
    info = gpu_info()
    m, k = a.shape
    tdb = TuningDB(db)
    try:
        return tdb.store(Record(gpu_name=info.name, gpu_cc=info.cc, m=m, k=k, n=n, density=a.nnz / (m * k),
                                dtype=dtype, pattern="uniform", family=family, config_json=json.dumps(config),
                                time_us=time_us, gflops=1.0, max_rel_err=1e-7, trials=1, matrix_hash="x",
                                package_version="0", cuda_version="0", driver_version="0", cupy_version="0",
                                created_at=dt.datetime(2026, 1, 1))).id
    finally:
        tdb.dispose()


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_runtime_runs_vendor_records_with_cupy(tmp_path, dtype):
    """Records of cuSPARSE and of cuBLAS are planned (exact) and run; the dense copy is made only for the dense plan;
    every cuSPARSE algorithm that accepts the operands computes A @ B."""
    cp = _cp()
    import sparse_autotune as sa
    from sparse_autotune.runtime.spmm import Plan
    db = tmp_path / "v.sqlite"
    m, k = 300, 500
    a = random_matrix(m, k, 0.1, "uniform", 0, DTYPES[dtype])
    _store(db, a, 64, "cusparse", {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}, dtype)
    _store(db, a, 128, "dense", {"math": dtype}, dtype)
    sa.lookup.cache_clear()
    op = sa.SpMM(a, db=db, dtype=dtype)
    rng = np.random.default_rng(1)
    b64 = cp.asarray(storage(rng.standard_normal((k, 64)).astype(np.float32), dtype))
    b128 = cp.asarray(storage(rng.standard_normal((k, 128)).astype(np.float32), dtype))
    assert op.plan(64) == ("cusparse", {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}, "exact") and op.plan(64).vendor
    assert _rel(op(b64), a, b64) < TOL[dtype] and op.dense_bytes == 0
    assert op.plan(128) == ("dense", {"math": dtype}, "exact")
    assert _rel(op(b128), a, b128) < TOL[dtype]
    assert op.dense_bytes == dense_bytes(m, k, dtype)
    out = cp.full((m, 128), 0, dtype=DTYPES[dtype])
    assert op(b128, out=out) is out and _rel(out, a, b128) < TOL[dtype]
    ran = []
    for alg in CUSPARSE_ALGS:  # each algorithm pinned: those cuSPARSE accepts for these operands are correct
        op2 = sa.SpMM(a, dtype=dtype, tune="off")
        op2._plans[64] = Plan("cusparse", {"alg": alg}, "pinned by the test")
        try:
            c = op2(b64)
        except RuntimeError as exc:  # cuSPARSE refuses this algorithm for this layout / dtype
            assert "status" in str(exc).lower(), exc
            continue
        assert _rel(c, a, b64) < TOL[dtype], alg
        ran.append(alg)
    assert "CUSPARSE_SPMM_ALG_DEFAULT" in ran


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cusparse_auto_picks_a_timed_algorithm(tmp_path, dtype):
    """A record whose own baselines say cuSPARSE beat its kernel is served as cuSPARSE "auto": at the first call the
    algorithms are timed and the fastest runs (the plan then names it)."""
    cp = _cp()
    import sparse_autotune as sa
    from sparse_autotune.device.kernel import DeviceCSR
    from sparse_autotune.device.vendor import pick_cusparse
    m, k, n = 384, 384, 200
    a = random_matrix(m, k, 0.1, "uniform", 0, DTYPES[dtype])
    ln = pick_cusparse(DeviceCSR(a, dtype), n, dtype)
    assert ln.alg_name in CUSPARSE_ALGS
    db = tmp_path / "auto.sqlite"
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.store.db import TuningDB
    from tests.records import CONFIG, make_record
    info = gpu_info()
    tdb = TuningDB(db)
    try:  # a kernel record of this very problem whose own cuSPARSE baseline (5 us) beat it (20 us)
        tdb.store(make_record(20.0, CONFIG, gpu_name=info.name, gpu_cc=info.cc, m=m, k=k, n=n,
                              density=a.nnz / (m * k), dtype=dtype, cusparse_us=5.0, cublas_fp32_us=None,
                              cublas_fp16_us=None))
    finally:
        tdb.dispose()
    sa.lookup.cache_clear()
    op = sa.SpMM(a, db=db, dtype=dtype)
    assert op.plan(n)[:2] == ("cusparse", {"alg": "auto"})
    b = cp.asarray(storage(np.random.default_rng(2).standard_normal((k, n)).astype(np.float32), dtype))
    assert _rel(op(b), a, b) < TOL[dtype]
    fam, cfg, _ = op.plan(n)
    assert fam == "cusparse" and cfg["alg"] in CUSPARSE_ALGS  # the plan names the algorithm picked


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_runtime_vendor_paths_with_torch_and_in_a_cuda_graph(tmp_path, dtype):
    """PyTorch tensors through the cuBLAS and cuSPARSE plans, on PyTorch's current stream; SparseLinear on a dense
    record; the cuBLAS path captured in a torch CUDA graph and replayed with new inputs. cuSPARSE is captured too where
    the library allows it (then its replay must be right)."""
    torch = pytest.importorskip("torch")
    import sparse_autotune as sa
    from sparse_autotune.runtime.nn import SparseLinear, magnitude_mask
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    tol = TOL[dtype] if dtype == "fp16" else 1e-4
    db = tmp_path / "t.sqlite"
    m, k = 96, 200
    a = random_matrix(m, k, 0.1, "uniform", 3, DTYPES[dtype])
    _store(db, a, 32, "dense", {"math": dtype}, dtype)
    _store(db, a, 48, "cusparse", {"alg": "CUSPARSE_SPMM_CSR_ALG2"}, dtype)
    sa.lookup.cache_clear()
    op = sa.SpMM(a, db=db, dtype=dtype)
    a_dev = torch.as_tensor(a.toarray().astype(np.float64)).cuda()

    def rel(c, b):
        ref = a_dev @ b.double()
        return ((c.double() - ref).norm() / ref.norm()).item()

    for n, fam in ((32, "dense"), (48, "cusparse")):
        b = torch.randn(k, n, device="cuda", dtype=tdt)
        c = op(b)
        assert op.plan(n).family == fam and isinstance(c, torch.Tensor) and rel(c, b) < tol
        s = torch.cuda.Stream()  # on a side stream too
        with torch.cuda.stream(s):
            c2 = op(b)
        s.synchronize()
        assert torch.equal(c2, c)

    def capture(fn):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return g

    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (32, 48):
        b = torch.randn(k, n, device="cuda", dtype=tdt)
        c = torch.empty(m, n, device="cuda", dtype=tdt)
        try:
            g = capture(lambda: op(b, out=c))
        except RuntimeError:
            assert n == 48, "cuBLAS must be capturable"  # only cuSPARSE may refuse capture (the README says so)
            continue
        for _ in range(2):
            b.copy_(torch.randn(k, n, device="cuda", generator=gen).to(tdt))
            c.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            assert rel(c, b) < tol, n

    # SparseLinear on a record of cuBLAS for its weight and N = 32 (4 x 8 tokens)
    torch.manual_seed(1)
    lin = torch.nn.Linear(k, m).to("cuda", tdt)
    mask = magnitude_mask(lin.weight, 0.1)
    w = (lin.weight * mask).detach()
    w_host = w.float().cpu().numpy()
    import scipy.sparse as sp
    _store(db, sp.csr_matrix(w_host), 32, "dense", {"math": dtype}, dtype)
    sa.lookup.cache_clear()
    layer = SparseLinear(w, lin.bias, db=db)
    x = torch.randn(4, 8, k, device="cuda", dtype=tdt)
    with torch.no_grad():
        y = layer(x)
        ref = torch.nn.functional.linear(x.double(), w.double(), lin.bias.double())
    assert layer.op.plan(32).family == "dense" and layer.op.dense_bytes > 0
    assert ((y.double() - ref).norm() / ref.norm()).item() < tol
    # from the second call on, a dense plan is nn.Linear's own call on the dense copy: one kernel, no transposes
    with torch.no_grad():
        y2 = layer(x)
    assert layer._dense_weight(32, x) is not None and ((y2.double() - ref).norm() / ref.norm()).item() < tol
    def gpu_work(fn) -> list[str]:
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    w_dense = layer._dense_weight(32, x)
    ours = gpu_work(lambda: layer(x))
    # the very GPU work of F.linear on the same weight (cuBLAS may split K: memset + GEMM + reduction for fp32)
    assert ours and ours == gpu_work(lambda: torch.nn.functional.linear(x, w_dense, layer.bias)), ours


def test_tune_stores_a_dense_record_where_cublas_wins(tmp_path):
    """A dense-ish fp16 problem at a large N (density 0.7, N = 2048): cuBLAS FP16 beats the CSR kernel, so the tune
    stores a `dense` record that is the key's best, keeps the kernel's record and figures, adds the vendor paths to
    the study, and the runtime runs cuBLAS for it."""
    import optuna

    import sparse_autotune as sa
    from sparse_autotune.commands.report import write_report
    db = tmp_path / "d.sqlite"
    cmd = [sys.executable, "-m", "sparse_autotune", "tune", "--shape", "1024x1024", "--density", "0.7", "--n", "2048",
           "--dtype", "fp16", "--families", "csr_rowsplit,cusparse,dense", "--trials", "4", "--db", str(db), "--json",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    ch = rep["chosen"]
    assert rep["best"]["family"] == "csr_rowsplit"  # the tuned kernel's own figures stay in "best"
    assert ch["vendor"] and ch["family"] == "dense" and ch["config"] == {"math": "fp16"}, ch
    assert ch["time_us"] < rep["best"]["time_us"] and ch["record_is_best"] and ch["record_id"] != rep["record_id"]
    assert ch["dense_copy_bytes"] == 1024 * 1024 * 2 and rep["record_is_best"] is False
    assert {c["family"] for c in rep["vendor_candidates"]} == {"cusparse", "dense"}
    study = optuna.load_study(study_name=rep["study"], storage=f"sqlite:///{db}")
    assert any(t.user_attrs.get("vendor") and t.user_attrs["family"] == "dense" for t in study.get_trials())
    sa.lookup.cache_clear()
    found = sa.lookup(1024, 1024, 2048, 0.7, "fp16", db=db, fallback=False)
    assert found.family == "dense" and found.record_id == ch["record_id"]
    res = write_report(str(db), tmp_path / "report")
    assert res["vendor_won"] == {"dense": 1}
    cp = _cp()
    a = random_matrix(1024, 1024, 0.7, "uniform", 0, np.float16)  # the matrix tune used (seed 0)
    op = sa.SpMM(a, db=db, dtype="fp16")  # random_matrix holds the fp16-rounded values in float32
    assert op.plan(2048) == ("dense", {"math": "fp16"}, "exact")
    b = cp.asarray(np.random.default_rng(2).standard_normal((1024, 2048)).astype(np.float16))
    assert _rel(op(b), a, b) < TOL["fp16"] and op.dense_bytes == 1024 * 1024 * 2


def test_quick_tuning_at_the_first_call(tmp_path):
    """tune="quick": the first call with a new N times the candidates, runs the fastest (plan source "quick"), stores
    it (verified, origin "quick"); a later operator finds it as "exact" and does not tune again. A quick tune with
    every kernel compiled already takes well under a second for this layer."""
    cp = _cp()
    import sparse_autotune as sa
    from sparse_autotune.store.db import TuningDB, is_verified
    db = tmp_path / "q.sqlite"
    a = random_matrix(768, 768, 0.1, "uniform", 5, np.float32)
    b = cp.asarray(np.random.default_rng(3).standard_normal((768, 77)).astype(np.float32))
    sa.lookup.cache_clear()
    op = sa.SpMM(a, db=db, tune="quick")
    c = op(b)
    assert _rel(c, a, b) < TOL["fp32"]
    plan = op.plan(77)
    res = op.quick[77]
    assert plan.source == "quick" and (plan.family, plan.config) == (res.chosen.family, res.chosen.config)
    ran = [x for x in res.candidates if x.time_us is not None]
    assert {x.family for x in ran} >= {"cusparse", "dense"} and len(ran) >= 3
    assert res.chosen.time_us == min(x.time_us for x in ran)
    assert res.record_ids
    tdb = TuningDB(db, create=False, readonly=True)
    try:
        recs = [tdb.get(i) for i in res.record_ids]
    finally:
        tdb.dispose()
    assert all(r.origin == "quick" and is_verified(r) and r.n == 77 for r in recs) and recs[0].is_best
    sa.lookup.cache_clear()
    op2 = sa.SpMM(a, db=db, tune="quick")
    assert _rel(op2(b), a, b) < TOL["fp32"]
    assert op2.plan(77)[2] == "exact" and 77 not in op2.quick  # tuned before: found, not tuned again
    # again in a fresh database: the kernels are compiled already, the quick tune is GPU time and bookkeeping
    op3 = sa.SpMM(a, db=tmp_path / "q3.sqlite", tune="quick")
    op3(b)
    assert op3.plan(77)[2] == "quick" and op3.quick[77].seconds < 1.0, op3.quick[77].seconds
    off = sa.SpMM(a, db=tmp_path / "off.sqlite", tune="off")
    off(b)
    assert off.plan(77)[2] != "quick" and not off.quick and not (tmp_path / "off.sqlite").exists()


def test_quick_tuning_picks_cublas_for_a_dense_ish_layer_and_sparse_linear_quick(tmp_path):
    """A dense-ish fp16 layer at a large N: the quick tune runs cuBLAS (a dense copy of A is kept) and stores both the
    winner and the best kernel's record; SparseLinear(tune="quick") tunes at its first forward."""
    cp = _cp()
    import sparse_autotune as sa
    db = tmp_path / "qd.sqlite"
    a = random_matrix(1024, 1024, 0.7, "uniform", 1, np.float16)
    b = cp.asarray(np.random.default_rng(4).standard_normal((1024, 2048)).astype(np.float16))
    sa.lookup.cache_clear()
    op = sa.SpMM(a, db=db, tune="quick", dtype="fp16")  # random_matrix holds the fp16-rounded values in float32
    assert _rel(op(b), a, b) < TOL["fp16"]
    res = op.quick[2048]
    assert op.plan(2048) == ("dense", {"math": "fp16"}, "quick") and op.dense_bytes == 1024 * 1024 * 2
    assert res.sparse is not None and res.sparse.time_us > res.chosen.time_us and len(res.record_ids) == 2
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear
    torch.manual_seed(2)
    lin = torch.nn.Linear(384, 1536).to("cuda", torch.float16)
    layer = SparseLinear.from_dense(lin, 0.1, db=db, tune="quick")
    x = torch.randn(4, 33, 384, device="cuda", dtype=torch.float16)
    w = torch.as_tensor(layer.op.host.toarray()).cuda()  # the pruned weight as the operator holds it
    with torch.no_grad():
        y = layer(x)
        ref = torch.nn.functional.linear(x.float(), w, lin.bias.float())
    plan = layer.op.plan(132, layout="nk")  # SparseLinear runs op.linear: the nn.Linear layout's plan
    assert plan.source == "quick" and 132 in layer.op.quick_nk and 132 not in layer.op.quick
    assert ((y.float() - ref).norm() / ref.norm()).item() < 3e-3
