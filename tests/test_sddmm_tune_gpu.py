"""SDDMM end to end on the GPU: `tune --op sddmm` (a few trials) stores a record of the operator sddmm with its
baselines, then `sparse_autotune.sddmm` / `SDDMM` on the same problem runs that record's config (exact) and matches the
float64 reference; the runtime without any record (the built-in default, odd K); the dense path (cuBLAS + gather) and
the tuner's float64 GPU reference against ops.sddmm.sddmm_reference; vendor records served by the runtime; PyTorch
tensors. Skipped without a GPU (tests/conftest.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from records import make_record
from sddmm_cases import masks, operands, storage_dtype
from sparse_autotune.commands import main as cli
from sparse_autotune.core.problem import TOLERANCE
from sparse_autotune.ops import sddmm as S
from sparse_autotune.ops import sddmm_paths as P
from sparse_autotune.store.db import TuningDB

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def _rel(out, ref) -> float:
    got = (out.get() if hasattr(out, "get") else np.asarray(out))
    got = S._host_float64(got, "out")
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300))


def _gpu():
    from sparse_autotune.device.gpu import gpu_info
    return gpu_info()


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_tune_sddmm_end_to_end_then_the_runtime_runs_the_record(dtype, tmp_path, capsys):
    import cupy as cp

    import sparse_autotune
    from sparse_autotune.tuning.sddmm_tune import SddmmProblem
    db = tmp_path / "t.sqlite"
    m, n, k, d = 256, 1024, 128, 0.05
    rc = cli.main(["tune", "--op", "sddmm", "--shape", f"{m}x{n}", "--k", str(k), "--density", str(d), "--dtype", dtype,
                   "--trials", "6", "--db", str(db), "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    r = json.loads(out)
    assert r["op"] == "sddmm" and r["trials"]["complete"] >= 1
    assert r["best"]["max_rel_err"] <= TOLERANCE[dtype] and r["best"]["timing"] in ("graph", "events")
    assert r["baselines"]["cusparse_us"] and r["baselines"]["dense_us"], r["baseline_errors"]
    tdb = TuningDB(db, create=False, readonly=True)
    try:
        rec = tdb.best(m, k, n, d, dtype, gpu=_gpu().name, op="sddmm")
        assert rec is not None and rec.op == "sddmm" and tdb.best(m, k, n, d, dtype, op="spmm") is None
        assert rec.cusparse_us == r["baselines"]["cusparse_us"]
        assert getattr(rec, f"cublas_{dtype}_us") == r["baselines"]["dense_us"]
    finally:
        tdb.dispose()
    # the runtime on the same problem (the CLI's mask: seed 0): the record, verified against the reference
    mask = SddmmProblem.random(m, n, k, d, dtype, seed=0).mask
    op = sparse_autotune.SDDMM(mask, db=db)
    plan = op.plan(k, dtype)
    assert (plan.source, plan.family, plan.record_id) == ("exact", rec.family, rec.id)
    x, y = operands(mask, k, dtype, seed=7)
    got = sparse_autotune.sddmm(mask, cp.asarray(x), cp.asarray(y), db=db)
    assert got.shape == (mask.nnz,) and got.dtype == storage_dtype(dtype)
    assert _rel(got, S.sddmm_reference(mask, x, y, dtype)) <= TOLERANCE[dtype]
    again = cp.full(mask.nnz, np.nan, dtype=storage_dtype(dtype))
    assert op(cp.asarray(x), cp.asarray(y), again) is again
    assert _rel(again, S.sddmm_reference(mask, x, y, dtype)) <= TOLERANCE[dtype]


def test_tune_sddmm_bf16_through_the_api_has_no_cusparse_baseline(tmp_path):
    from sparse_autotune.tuning.sddmm_tune import tune_sddmm
    from sparse_autotune.tuning.tuner import TuneOptions
    db = tmp_path / "t.sqlite"
    r = tune_sddmm(128, 512, 64, 0.1, "bf16", db=db,
                   opts=TuneOptions(trials=4, db=str(db), progress=False), log=lambda msg: None)
    assert r["baselines"]["cusparse_us"] is None and r["baselines"]["dense_us"]
    assert r["best"]["max_rel_err"] <= TOLERANCE["bf16"]


def test_runtime_without_a_record_runs_the_built_in_default(tmp_path):
    import cupy as cp

    import sparse_autotune
    from sparse_autotune.runtime.sddmm import SDDMM
    mask = masks()["random_300x200"]
    for dtype in ("fp32", "fp16", "bf16"):
        op = SDDMM(mask, db=tmp_path / "none.sqlite")
        plan = op.plan(33, dtype)  # K = 33: only vec 1 configs run it
        assert plan.source == "default" and plan.record_id is None and plan.config["vec"] == 1
        x, y = operands(mask, 33, dtype, seed=1)
        got = op(cp.asarray(x), cp.asarray(y))
        assert _rel(got, S.sddmm_reference(mask, x, y, dtype)) <= TOLERANCE[dtype], dtype
    assert not (tmp_path / "none.sqlite").exists()  # a lookup creates nothing
    empty = masks()["nnz0"]
    x, y = operands(empty, 64, "fp32")
    assert sparse_autotune.sddmm(empty, cp.asarray(x), cp.asarray(y)).shape == (0,)
    from sparse_autotune.errors import UserError
    with pytest.raises(UserError, match="shape"):
        op(cp.asarray(x), cp.asarray(y))  # another mask's operands: one line, nothing compiled


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_dense_path_and_the_tuners_reference(dtype):
    import cupy as cp

    from sparse_autotune.device.timing import time_launches
    from sparse_autotune.tuning.sddmm_tune import SddmmContext, SddmmProblem
    for name in ("random_300x200", "empty_rows", "unsorted_columns", "n1"):
        mask = masks()[name]
        for k in (33, 128):
            run = P.build_path(mask, k, "dense", {"math": dtype}, dtype)
            x, y = operands(mask, k, dtype, seed=k)
            ref = S.sddmm_reference(mask, x, y, dtype)
            out = cp.full(mask.nnz, np.nan, dtype=storage_dtype(dtype)) if dtype != "bf16" else \
                cp.full(mask.nnz, 0x7FC0, dtype=cp.uint16)
            run(cp.asarray(x), cp.asarray(y), out)
            assert _rel(out, ref) <= (1 if dtype == "fp32" else 2) * TOLERANCE[dtype], (name, k)
            ctx = SddmmContext(SddmmProblem.from_mask(mask, k, dtype), _gpu().l2_bytes)
            assert np.allclose(ctx.reference(cp.asarray(x), cp.asarray(y)).get(), ref, rtol=1e-12, atol=1e-12)
    mask = masks()["random_300x200"]
    ctx = SddmmContext(SddmmProblem.from_mask(mask, 64, dtype), _gpu().l2_bytes)
    t = time_launches(ctx.launches(P.build_path(mask, 64, "dense", {"math": dtype}, dtype, keep=ctx.nbuf)))
    assert t.median_us > 0 and t.method == "graph", t.note  # the dense path allocates nothing: it is captured


@pytest.mark.parametrize("family,config", [("dense", {"math": "fp16"}), ("cusparse", {"alg": "default"})])
def test_runtime_runs_a_vendor_record(family, config, tmp_path):
    import cupy as cp

    from sparse_autotune.runtime.sddmm import SDDMM
    mask = masks()["random_300x200"]
    gpu = _gpu()
    db = tmp_path / "t.sqlite"
    tdb = TuningDB(db)
    tdb.store(make_record(1.0, config, family=family, op="sddmm", gpu_name=gpu.name, gpu_cc=gpu.cc, m=300, n=200,
                          k=64, density=mask.nnz / (300 * 200), dtype="fp16"))
    tdb.dispose()
    op = SDDMM(mask, db=db)
    assert op.plan(64, "fp16")[:3] == (family, config, "exact")
    x, y = operands(mask, 64, "fp16", seed=5)
    got = op(cp.asarray(x), cp.asarray(y))
    assert _rel(got, S.sddmm_reference(mask, x, y, "fp16")) <= 2 * TOLERANCE["fp16"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_runtime_with_torch_tensors(dtype):
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.sddmm import SDDMM
    mask = masks()["random_300x200"]
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    x = torch.randn(300, 64, device="cuda").to(tdt)
    y = torch.randn(200, 64, device="cuda").to(tdt)
    out = SDDMM(mask)(x, y)
    torch.cuda.synchronize()
    assert isinstance(out, torch.Tensor) and out.dtype == tdt and out.shape == (mask.nnz,)
    ref = S.sddmm_reference(mask, x.float().cpu().numpy(), y.float().cpu().numpy(), dtype)
    got = out.float().cpu().numpy().astype(np.float64)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= TOLERANCE[dtype]
