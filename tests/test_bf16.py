"""bf16 as the third dtype, on the CPU: rounding to bfloat16 bits, the host's values, the kernels' storage, the llm
suite's cases and targets, the per-row-uniform pattern (the GPU tests run bf16 kernels against float64)."""
from __future__ import annotations

import numpy as np
import pytest

from sparse_autotune.core.families import all_families, get_family
from sparse_autotune.core.problem import (DTYPES, TOLERANCE, bf16_bits, bf16_float, check_dtype, host_values,
                                          random_matrix, storage)


def test_bf16_rounds_to_nearest_even():
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 3.14159], np.float32)
    got = bf16_float(bf16_bits(x))
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1); 1 + 3 * 2^-8 is halfway: to even (1 + 2^-6)
    np.testing.assert_array_equal(got, np.array([1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, -2.5, 3.140625], np.float32))
    assert bf16_bits(np.float32([1.0])).dtype == np.uint16 and int(bf16_bits(np.float32([1.0]))[0]) == 0x3F80


def test_bf16_host_values_are_exactly_what_the_kernels_store():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(10000).astype(np.float32)
    h = host_values(v, DTYPES["bf16"])
    assert h.dtype == np.float32 and not (h.view(np.uint32) & 0xFFFF).any()  # 8 bits of mantissa, no more
    np.testing.assert_array_equal(bf16_float(storage(h, "bf16")), h)  # the stored bits decode to the host's values
    assert np.abs(h - v).max() <= np.abs(v).max() * 2 ** -8
    assert storage(h, "fp16").dtype == np.float16 and storage(h, "fp32").dtype == np.float32


def test_bf16_is_a_dtype_with_its_tolerance_and_families():
    assert check_dtype("bf16") == "bf16" and TOLERANCE["bf16"] > TOLERANCE["fp16"]
    fams = [n for n, f in all_families().items() if f.space.supports("bf16")]
    assert {"csr_rowsplit", "csr_btile", "pattern_unrolled", "tc_gather"} <= set(fams)


def test_tc_gather_layout_holds_bf16_bits():
    a = random_matrix(40, 90, 0.2, "uniform", 1, DTYPES["bf16"])
    host = get_family("tc_gather").host
    _, _, avals16 = host.tc_layout(a, 1, "fp16")
    _, _, avalsbf = host.tc_layout(a, 1, "bf16")
    nz = avalsbf != 0
    assert nz.sum() == a.nnz and (nz == (avals16 != 0)).all()  # the same places
    assert sorted(bf16_float(avalsbf[nz]).tolist()) == sorted(a.data.tolist())  # bf16 values, exactly


def test_rowuniform_rows_keep_the_same_count():
    a = random_matrix(101, 300, 0.1, "rowuniform", 3)
    lens = np.diff(a.indptr)
    assert a.nnz == round(0.1 * 101 * 300) and lens.max() - lens.min() <= 1
    assert all(len(set(a.indices[a.indptr[r]:a.indptr[r + 1]])) == lens[r] for r in range(101))


def test_llm_suite_cases_and_targets():
    from sparse_autotune.tuning.suite import llm_targets, suite_cases, summary
    cases = suite_cases("llm")
    assert len(cases) == 6 * 6 * 5 * 2 * 2
    assert {c["dtype"] for c in cases} == {"fp16", "bf16"} and {c["pattern"] for c in cases} == {"uniform", "rowuniform"}

    def rec(n, d, dt, tuned, dense, floor):
        return {"M": 4096, "K": 4096, "N": n, "density": d, "dtype": dt, "pattern": "uniform", "family": "csr_gemv",
                "tuned_us": tuned, f"cublas_{dt}_us": dense, "cusparse_us": 3 * tuned, "bytes_floor_us": floor}
    recs = [rec(1, 0.1, "fp16", 4.0, 12.0, 2.0),    # 3x over cuBLAS FP16; 2x its byte floor
            rec(16, 0.1, "bf16", 6.0, 12.0, 3.0),   # 2x over cuBLAS BF16 (the same dtype's dense path)
            rec(64, 0.3, "fp16", 10.0, 8.0, 5.0)]   # 0.8x: below the 0.9x floor of N = 64-128
    t = {x["target"]: x for x in llm_targets(recs)}
    d01 = t["N <= 32, d = 0.1: geomean over cuBLAS of the same dtype"]
    assert abs(d01["value"] - 6 ** 0.5) < 1e-9 and d01["met"] is False and (d01["cases_at_goal"], d01["cases"]) == (1, 2)
    slow = t["N = 64-128, d <= 0.3: the slowest case over cuBLAS of the same dtype"]
    assert abs(slow["value"] - 0.8) < 1e-9 and slow["met"] is False
    fl = t["N <= 32, d <= 0.1: median tuned / bytes floor"]
    assert fl["value"] == 2.0 and fl["met"] is False and abs(fl["missing_factor"] - 2.0 / 1.5) < 1e-9
    assert t["N <= 32, d = 0.5: geomean over cuBLAS of the same dtype"]["value"] is None  # no case yet
    assert summary(recs, "llm")["targets"][1]["target"] == d01["target"]


@pytest.mark.parametrize("enabled", [pytest.param(True, id="enabled"),  # the others in the heavy tier (CI's time)
                                     pytest.param(False, id="not-enabled", marks=pytest.mark.heavy)])
@pytest.mark.parametrize("dtype", ["bf16"])
def test_every_bf16_family_renders_every_config_kind(dtype, enabled):
    from sparse_autotune.core.render import render
    from sparse_autotune.core.space import problem_env
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    for name, fam in all_families().items():
        if not fam.space.supports(dtype) or fam.space.enabled != enabled:
            continue
        env = problem_env(64, 256, 256, a.nnz, dtype)
        feas = list(fam.space.feasible(dtype, env, {"gate": 0}))  # every kernel, wherever it is searched
        assert feas, name
        for cfg in feas[:: max(1, len(feas) // 5)]:
            src = render(fam.space, cfg, dtype, fam.context(a, cfg) if fam.space.needs_matrix else None)
            assert "dtype=bf16" in src and "f16.f32" not in src.replace("bf16.f32", "")  # no fp16 conversion left


def test_finish_stores_and_reports_cublas_bf16(tmp_path, monkeypatch):
    """GpuTuner.finish on the CPU, its GPU steps stubbed (verify, timing, baselines, ceilings): a bf16 tune's record
    keeps cuBLAS BF16's time, and the tune report's text prints it (an fp16 one's does not)."""
    import contextlib
    import types

    import sparse_autotune.device.baselines as baselines
    import sparse_autotune.device.cold as cold
    import sparse_autotune.device.ceilings as ceilings
    import sparse_autotune.device.timing as timing
    import sparse_autotune.device.verify as verify
    from sparse_autotune.commands.main import _report_text
    from sparse_autotune.core.problem import Problem
    from sparse_autotune.store.db import TuningDB
    from sparse_autotune.tuning.tuner import GpuTuner, TuneOptions

    base = {"cusparse_us": 8.0, "cusparse_alg": "alg", "cublas_fp32_us": 1.0, "cublas_tf32_us": 1.5,
            "cublas_fp16_us": 2.0, "cublas_bf16_us": 12.0, "baseline_errors": {}}
    monkeypatch.setattr(baselines, "time_baselines", lambda ctx, log: dict(base))
    monkeypatch.setattr(ceilings, "ceilings", lambda: {"copy_GBps": 3000.0, "fma_fp32_TFLOPs": 60.0,
                                                       "fma_fp16_TFLOPs": 120.0})
    monkeypatch.setattr(timing, "time_launches", lambda fns: types.SimpleNamespace(median_us=4.0, spread=0.01,
                                                                                   method="graph"))
    monkeypatch.setattr(verify, "check", lambda run, c, ref, dtype: 1e-3)
    monkeypatch.setattr(cold, "cold_times", lambda kern, ctx, log, tuned=None: {"tuned_cold_us": 5.0,
                                                                                 "dense_cold_us": 14.0})

    class Turn:
        held_s = 0.0

        def __call__(self):
            return contextlib.nullcontext()

    def finish(dtype: str) -> tuple[dict, object]:
        t = GpuTuner.__new__(GpuTuner)  # no GPU: what __init__ would set, by hand
        t.problem = Problem.random(64, 256, 16, 0.1, dtype)
        # rank warm: no finalists timed cold (tests/test_cold_rank.py runs this finish with rank cold)
        t.opts = TuneOptions(trials=3, db=str(tmp_path / "t.sqlite"), rank="warm")
        t.db, t.log, t.t_start, t.interrupted = TuningDB(t.opts.db), lambda msg: None, 0.0, False
        t.info = types.SimpleNamespace(name="NVIDIA H200", cc="9.0", versions=lambda: {
            "gpu": "NVIDIA H200", "cc": "9.0", "driver": "d", "cuda": "c", "cupy": "p"})
        t.gpu_name, t.turn, t.given_up = "NVIDIA H200", Turn(), 0
        t.turn_s = {"init": 0.0, "trials": 0.0, "verify": 0.0, "time": 0.0, "finish": 0.0}
        t.ctx = types.SimpleNamespace(fresh_check=lambda: (0, 0), b_bufs=[0], c=None)
        t.prepare = lambda family, cfg: types.SimpleNamespace(a_bytes=lambda: 1000)
        res = types.SimpleNamespace(best_family="csr_rowsplit", best_config={"vec": 2}, best_value=4.0, complete=3,
                                    failed=0, pruned=0, new_trials=3, stopped="trial budget", ranked=[])
        report = t.finish(res)
        ro = TuningDB(t.opts.db, create=False, readonly=True)
        rec = ro.get(report["record_id"])
        ro.dispose()
        return report, rec

    report, rec = finish("bf16")
    assert rec.dtype == "bf16" and rec.cublas_bf16_us == 12.0 and rec.cublas_fp16_us == 2.0
    assert report["baselines"]["cublas_bf16_us"] == 12.0 and report["speedup"]["vs_cublas_bf16"] == 3.0
    assert report["cold"] == {"tuned_cold_us": 5.0, "dense_cold_us": 14.0}  # the cold pair reaches the report
    assert "A cold    best 5.00 us, cuBLAS BF16 14.00 us -> 2.80x" in _report_text(report)
    cublas = next(ln for ln in _report_text(report).splitlines() if ln.startswith("cuBLAS"))
    assert "FP16 2.00 us -> 0.50x" in cublas and cublas.endswith("BF16 12.00 us -> 3.00x")
    base.pop("cublas_bf16_us")  # an fp16 problem has no cuBLAS BF16 baseline
    report, rec = finish("fp16")
    assert rec.dtype == "fp16" and rec.cublas_bf16_us is None and rec.cublas_fp16_us == 2.0
    assert "BF16" not in _report_text(report)


def test_llm_targets_use_the_cold_times_where_measured(tmp_path):
    """A record with cold times (A from HBM) is judged by them; one without keeps the warm ratio; the report shows both."""
    from sparse_autotune.tuning.suite import llm_targets, summary, write_report
    warm = {"M": 4096, "K": 4096, "N": 1, "density": 0.1, "dtype": "fp16", "pattern": "uniform", "family": "csr_gemv",
            "tuned_us": 4.0, "cublas_fp16_us": 30.0, "cusparse_us": 12.0, "bytes_floor_us": 2.0,
            "cusparse_us_": None, "cublas_fp32_us": None, "cublas_tf32_us": None, "floor_us": 1.0,
            "gpu": "G", "driver": "d", "cuda": "c", "cupy": "p"}
    cold = {**warm, "N": 8, "tuned_cold_us": 6.0, "dense_cold_us": 13.0}  # warm 7.5x, cold 2.17x
    t = {x["target"]: x for x in llm_targets([warm, cold])}
    d01 = t["N <= 32, d = 0.1: geomean over cuBLAS of the same dtype"]
    assert abs(d01["value"] - (7.5 * 13.0 / 6.0) ** 0.5) < 1e-9
    fl = t["N <= 32, d <= 0.1: median tuned / bytes floor"]  # the cold time over the floor: 6 / 2 (the warm 4 / 2 is 2)
    assert fl["value"] == 3.0
    assert abs(summary([cold], "llm")["fp16@0.1"]["vs_dense_cold"] - 13.0 / 6.0) < 1e-9
    write_report([warm, cold], tmp_path / "suite-llm-g", "llm", 2)
    md = (tmp_path / "suite-llm-g.md").read_text()
    assert "| tuned cold | dense cold |" in md and "| 6.00 | 13.00 |" in md and "A from HBM" in md


def test_cold_copies_exceed_twice_the_l2_within_the_memory_share():
    from sparse_autotune.device.cold import MAX_COPIES, copies_for
    l2 = 60 << 20
    assert copies_for(32 << 20, l2) == 4  # 4 x 32 MB >= 120 MB
    assert copies_for(1 << 20, l2) == MAX_COPIES  # small matrices: capped
    assert copies_for(500 << 20, l2) == 2  # larger than the L2 already: two copies still alternate
    assert copies_for(32 << 20, l2, free_bytes=256 << 20) == 2  # a quarter of 256 MB holds two copies only
    # copy_bytes: a copy holds more than a launch reads; the memory share counts the copy
    assert copies_for(8 << 20, l2, free_bytes=1 << 30, copy_bytes=64 << 20) == 4  # 256 MB / 64 MB; 15 by the reads


@pytest.mark.parametrize("family", ["csr_gemv", "tc_tiled"])
def test_cold_rotation_is_sized_by_what_the_kernel_reads_not_by_every_layout_on_a(family):
    """Session 22: the cold rotation counted every layout the search had built on A (other families'), so a big A got 2-3
    copies and its kernel's own layout stayed in the L2. Now the copies come from the bytes one launch reads, and the
    twins copy only the layouts a launch for the problem's N asks for, all of them (tc_tiled's split-K workspace is
    cached per N: a twin without the one for N = 8 would build it inside the timing's graph capture, session 22's GPU
    test)."""
    import threading

    from fakes import fake_kernel
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    from sparse_autotune.device.cold import copies_for, rotation
    from sparse_autotune.device.kernel import DeviceCSR

    class HostCSR(DeviceCSR):  # DeviceCSR's bookkeeping (twin, nbytes, keys_used) over numpy arrays, no GPU
        def __init__(self, a, dtype):
            self.shape, self.nnz, self.dtype, self._host = a.shape, int(a.nnz), dtype, a
            self.row_ptr, self.vals = a.indptr.astype(np.int32), storage(a.data, dtype)
            self._cache, self.lock = {}, threading.Lock()

        def cached(self, key, build):
            if key not in self._cache:
                got = build(self._host)
                self._cache[key] = tuple(got) if isinstance(got, tuple) else got
            return self._cache[key]

    a = random_matrix(2048, 4096, 0.1, "uniform", 1)
    dev = HostCSR(a, "fp16")
    env = problem_env(2048, 4096, 8, a.nnz, "fp16")
    kernels = {f: fake_kernel(f, get_family(f).space.defaults("fp16", env, DEFAULT_LIMITS)[0], "fp16", a, dev)
               for f in ("csr_rowsplit", "tc_gather", "csr_gemv", "tc_tiled")}
    for k in kernels.values():  # the search built four families' layouts on one A
        k.warm()
    k = kernels[family]
    l2 = 50 << 20
    used, read, n = rotation(k, 8, l2)
    assert read == sum(x.nbytes for x in k.args(8, None, None) if hasattr(x, "nbytes"))
    assert 0 < read < dev.nbytes() // 2  # the other layouts are most of A's device bytes
    assert n == copies_for(read, l2) > copies_for(dev.nbytes(), l2)
    twin = dev.twin(used)
    assert set(twin._cache) == used and twin.nbytes() == dev.nbytes(used) < dev.nbytes()
    mine = k.bound_to(twin)
    assert twin.keys_used(lambda: mine.args(8, None, None)) == used and set(twin._cache) == used  # nothing built again
    arrays = [(x, y) for x, y in zip(mine.args(8, None, None), k.args(8, None, None)) if hasattr(y, "nbytes")]
    assert arrays and all(x is not y and np.array_equal(x, y) for x, y in arrays)  # copies of what the kernel reads
    assert dev.twin().nbytes() == dev.nbytes()  # without keys: every layout, as before
    # an nk problem's staged path (the kn kernel on transposed workspaces) rotates the same arrays
    from sparse_autotune.device.staged import StagedKernel
    assert rotation(StagedKernel(k), 8, l2) == (used, read, n)
