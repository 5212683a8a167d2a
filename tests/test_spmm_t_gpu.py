"""The transposed SpMM and the trainable SparseLinear on a GPU (marked gpu; skipped without one): every spmm_t candidate
(scatter configs, explicit transpose with the SpMM families, cuSPARSE opA = T, dense) against the float64 reference on
edge cases (empty rows of A, one dense row, M and K not multiples of a tile, N = 1, 7, 128; fp32 / fp16 / bf16); the
tuner end to end with a few trials; the runtime operator with PyTorch tensors; the gradient check of SparseLinear
against the dense masked nn.Linear (fp32, and fp16 with a looser tolerance); a short training run."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sps

from sparse_autotune.core.problem import TOLERANCE, as_float, storage
from sparse_autotune.ops import spmm_t as T

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def edge_matrix(m: int, k: int, seed: int = 0) -> sps.csr_matrix:
    """A with empty rows (every 7th), one dense row (row 1), empty columns (every 11th), ~8 % density elsewhere."""
    rng = np.random.default_rng(seed)
    d = (rng.random((m, k)) < 0.08) * rng.standard_normal((m, k))
    d[::7, :] = 0.0
    d[:, ::11] = 0.0
    if m > 1:
        d[1, :] = rng.standard_normal(k)
    return sps.csr_matrix(d.astype(np.float32))


SHAPES = [(37, 91), (130, 67)]  # M, K not multiples of any tile
NS = [1, 7, 128]


def _check(run, op: T.SpmmTOperand, n: int, dtype: str, tol_factor: float = 1.0) -> float:
    import cupy as cp
    from sparse_autotune.device.verify import poison, rel_error
    m, k = op.shape
    rng = np.random.default_rng(n)
    b = cp.asarray(storage(rng.standard_normal((m, n)).astype(np.float32), dtype))
    c = cp.empty((k, n), dtype=b.dtype)
    poison(c)
    ref = T.spmm_t_reference(op.host, as_float(b).get())
    run(b, c)
    cp.cuda.get_current_stream().synchronize()
    err = rel_error(c, cp.asarray(ref))
    assert err <= TOLERANCE[dtype] * tol_factor, err
    return err


def _scatter_configs(dtype, env):
    space = T.get_spmm_t_space("spmm_t_scatter")
    feas = list(space.feasible(dtype, env))
    picks = {}
    for cfg in feas:  # one config per (mode, vec, rows) at most: a covering sample
        picks.setdefault((cfg["mode"], cfg["vec"], cfg["rows"], cfg["lanes"] == 32), cfg)
    return list(picks.values())


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_scatter_family_edge_cases(dtype, shape):
    a = edge_matrix(*shape)
    op = T.SpmmTOperand(a, dtype)
    for n in NS:
        env = T.spmm_t_env(*shape, n, a.nnz, dtype)
        cfgs = _scatter_configs(dtype, env)
        assert cfgs
        for cfg in cfgs:
            _check(T.build_path(op, n, "spmm_t_scatter", cfg), op, n, dtype)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_explicit_transpose_families_and_vendor_paths(dtype):
    a = edge_matrix(130, 67, seed=2)
    op = T.SpmmTOperand(a, dtype)
    for n in NS:
        env = T.spmm_t_env(130, 67, n, a.nnz, dtype)
        for space in T.load_spmm_t_spaces(dtype)[1:]:  # transpose+<family>: its known-good configs
            for cfg in space.defaults(dtype, env)[:2]:
                _check(T.build_path(op, n, space.family, cfg), op, n, dtype)
        assert op.transpose_bytes > 0  # the explicit transpose holds a second copy of A
        _check(T.build_path(op, n, "dense", {"math": dtype}), op, n, dtype, tol_factor=2.0)
        ran = 0
        for fam, cfg in T.vendor_configs(dtype):
            if fam != "cusparse":
                continue
            try:
                run = T.build_path(op, n, fam, cfg)
            except Exception:  # noqa: BLE001 - an algorithm that refuses opA = T is skipped (the tuner records why)
                continue
            _check(run, op, n, dtype)
            ran += 1
        assert ran >= 1  # at least CUSPARSE_SPMM_ALG_DEFAULT takes opA = TRANSPOSE


def test_set_values_keeps_scatter_paths_right():
    import cupy as cp
    a = edge_matrix(64, 96, seed=5)
    op = T.SpmmTOperand(a, "fp32")
    run = T.build_path(op, 16, "spmm_t_scatter", T.default_path("fp32", T.spmm_t_env(64, 96, 16, a.nnz, "fp32"))[1])
    new = np.random.default_rng(1).standard_normal(a.nnz).astype(np.float32)
    op.set_values(vals_dev=cp.asarray(new))
    op2 = T.SpmmTOperand(sps.csr_matrix((new, a.indices, a.indptr), shape=a.shape), "fp32")
    _check(run, op2, 16, "fp32")  # the kernel built before reads the new values
    # the explicit transpose is rebuilt from the new values (the host copy refreshed from the device)
    np.testing.assert_array_equal(op.dev_t.host.toarray(), T.transpose_csr(op2.host).toarray())


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_tuner_end_to_end(tmp_path, dtype):
    from sparse_autotune.runtime.spmm_t import SpmmT, lookup_spmm_t
    from sparse_autotune.tuning.spmm_t_tune import tune_spmm_t
    db = tmp_path / "t.sqlite"
    rep = tune_spmm_t(384, 1536, 128, 0.1, dtype, trials=8, db=db, log=lambda m: None)
    assert rep["op"] == "spmm_t" and rep["best"]["max_rel_err"] <= TOLERANCE[dtype]
    assert rep["best"]["explicit_transpose"] == rep["best"]["family"].startswith("transpose+")
    assert rep["baselines"]["dense_us"] is not None and rep["baselines"]["cusparse_us"] is not None
    got = lookup_spmm_t(384, 1536, 128, 0.1, dtype, db=db)
    assert got.source == "exact" and got.record_id == rep["chosen"]["record_id"]
    import cupy as cp
    a = sps.random(384, 1536, density=0.1, format="csr", random_state=3, dtype=np.float32)
    opr = SpmmT(a, dtype, db=db)
    b = cp.asarray(storage(np.random.default_rng(0).standard_normal((384, 128)).astype(np.float32), dtype))
    c = opr(b)
    ref = T.spmm_t_reference(opr.operand.host, as_float(b).get())
    from sparse_autotune.device.verify import rel_error
    assert rel_error(c, cp.asarray(ref)) <= TOLERANCE[dtype] * 2


def test_runtime_operator_with_torch_tensors():
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.spmm_t import SpmmT
    a = edge_matrix(100, 300, seed=7)
    op = SpmmT(a, "fp16")
    b = torch.randn(100, 24, device="cuda", dtype=torch.float16)
    c = op(b)
    ref = torch.tensor(a.toarray(), dtype=torch.float64, device="cuda").T @ b.double()
    assert c.shape == (300, 24) and c.dtype == torch.float16
    assert float((c.double() - ref).norm() / ref.norm()) <= TOLERANCE["fp16"]


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_sparse_linear_gradient_check_against_the_dense_masked_layer(dtype, tol):
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear
    from sparse_autotune.runtime.nn_train import dense_masked_reference
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 1536)
    layer = SparseLinear.from_dense(lin, 0.1, dtype=dtype, trainable=True).cuda()
    ref = dense_masked_reference(layer).to(device="cuda", dtype=tdt)
    mask = (ref.weight != 0)
    for n in (1, 7, 200):
        x = torch.randn(n, 384, device="cuda", dtype=tdt, requires_grad=True)
        xr = x.detach().clone().requires_grad_(True)
        gy = torch.randn(n, 1536, device="cuda", dtype=tdt)
        y = layer(x)
        yr = ref(xr)
        assert float((y - yr).double().norm() / yr.double().norm()) <= tol
        layer.values.grad = None
        ref.weight.grad = None
        y.backward(gy)
        yr.backward(gy)
        assert float((x.grad - xr.grad).double().norm() / xr.grad.double().norm()) <= tol
        h = layer.op.host
        rows = torch.tensor(np.repeat(np.arange(h.shape[0]), np.diff(h.indptr)), device="cuda")
        cols = torch.tensor(h.indices.astype(np.int64), device="cuda")
        gw_ref = ref.weight.grad[rows, cols]
        assert float((layer.values.grad - gw_ref).double().norm() / gw_ref.double().norm()) <= tol
        assert bool(mask[rows, cols].all())
    # an optimizer step changes the values: the next forward uses them (no rebuild of the kernels)
    with torch.no_grad():
        layer.values.mul_(0.5)
        ref.weight.mul_(0.5)
    x = torch.randn(16, 384, device="cuda", dtype=tdt)
    with torch.no_grad():
        assert float((layer(x) - ref(x)).double().norm() / ref(x).double().norm()) <= tol


def test_inference_layer_unchanged_without_grad():
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear
    torch.manual_seed(1)
    lin = torch.nn.Linear(384, 384).cuda()
    layer = SparseLinear.from_dense(lin, 0.1).cuda()
    assert layer.train_state is None and list(layer.parameters()) == []
    x = torch.randn(32, 384, device="cuda")
    with torch.no_grad():
        y1, y2 = layer(x), layer(x)
    torch.testing.assert_close(y1, y2)


def test_short_finetune_run_lowers_the_loss_like_the_dense_masked_layer():
    from sparse_autotune.runtime import finetune_bench as fb
    doc = fb.run(steps=40, blocks=1, tokens=256, density=0.1, dtype="fp32", log=lambda m: None)
    s = doc["summary"]
    assert s["final_loss_dense"] < s["initial_loss_dense"] and s["final_loss_sparse"] < s["initial_loss_sparse"]
    assert 0.8 <= s["final_loss_ratio"] <= 1.25
