"""The SDDMM benchmark (sparse_autotune/ops/sddmm_bench.py, `bench/probe.py sddmm`) on the CPU: the case list, the
masks (density, structure, determinism), the config sampler (feasible, known-good first, covering), the summary's
arithmetic and the writers on SYNTHETIC records, the argument checks. One GPU test runs a one-case suite end to end
(skipped without a GPU)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from sparse_autotune.core.space import DEFAULT_LIMITS
from sparse_autotune.errors import UserError
from sparse_autotune.ops import sddmm
from sparse_autotune.ops import sddmm_bench as sb

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "bench" / "probe.py"


# ---- the cases -------------------------------------------------------------------------------------------------------

def test_default_case_list_is_well_formed_and_deterministic():
    cases = sb.suite_cases()
    assert cases == sb.suite_cases(seed=0) and len({c.name for c in cases}) == len(cases) == 72
    assert {c.dtype for c in cases} == {"fp16", "fp32"} and {c.kind for c in cases} == set(sb.KINDS)
    for c in cases:
        assert 0.02 <= c.density <= 0.3 and c.mask in sb.MASKS
        if c.kind == "attention":
            assert c.m == c.n and c.m in (512, 1024, 2048, 4096) and c.k in (64, 128)
            assert c.density in sb.ATTENTION_DENSITIES
        else:
            assert c.mask == "uniform" and (c.m, c.n) in {(768, 3072), (3072, 768), (4096, 4096), (1024, 4096)}
            assert 256 <= c.k <= 1024 and c.density in sb.WEIGHTGRAD_DENSITIES
        assert c.m * c.k < 2**31 and c.n * c.k < 2**31
    # every group in turn: the first cases already cover both kinds, both masks and both dtypes (a budget cut)
    first = cases[:6]
    assert {c.group for c in first} == {"attention-bigbird", "attention-uniform", "weightgrad"}
    assert {c.dtype for c in first} == {"fp16", "fp32"}
    assert [c.name for c in sb.suite_cases(seed=1)] != [c.name for c in cases]  # another seed, another order
    assert sorted(c.name for c in sb.suite_cases(seed=1)) == sorted(c.name for c in cases)
    quick = sb.suite_cases(quick=True)
    assert len(quick) == 6 and all(c.m * c.n <= 2048 * 3072 for c in quick)
    only = sb.suite_cases(quick=True, dtypes=("bf16",), kinds=("weightgrad",))
    assert [(c.kind, c.dtype) for c in only] == [("weightgrad", "bf16")]


@pytest.mark.parametrize("case", [
    sb.BenchCase("attention", "bigbird", 512, 512, 64, 0.02, "fp16"),
    sb.BenchCase("attention", "bigbird", 1024, 1024, 128, 0.3, "fp32"),
    sb.BenchCase("attention", "uniform", 1024, 1024, 64, 0.05, "fp16"),
    sb.BenchCase("weightgrad", "uniform", 768, 3072, 512, 0.1, "fp32"),
], ids=lambda c: c.name)
def test_masks_have_the_density_asked_and_are_deterministic(case):
    a = case.build_mask(seed=0)
    assert a.shape == (case.m, case.n) and a.nnz == case.nnz_target()
    assert abs(a.nnz / (case.m * case.n) - case.density) <= 1e-5 + 1e-3 * case.density
    assert a.has_sorted_indices and a.indices.dtype == np.int32
    assert len(np.unique(np.repeat(np.arange(case.m), np.diff(a.indptr)) * case.n + a.indices)) == a.nnz  # no dups
    assert a.data.dtype == np.float32 and a.data.min() >= 0.5 and a.data.max() < 1.5
    b = case.build_mask(seed=0)
    assert (a != b).nnz == 0 and np.array_equal(a.data, b.data)
    other_dtype = sb.BenchCase(case.kind, case.mask, case.m, case.n, case.k, case.density,
                               "fp32" if case.dtype == "fp16" else "fp16")
    assert (other_dtype.build_mask(seed=0) != a).nnz == 0  # the dtypes share a mask
    assert (case.build_mask(seed=1) != a).nnz > 0
    lens = np.diff(a.indptr)
    if case.mask == "bigbird":  # global row 0 full, the diagonal kept, rows of very different lengths
        assert lens[0] == case.n and a[np.arange(case.m), np.arange(case.n)].min() > 0
        assert lens.max() > 3 * np.median(lens)
    else:
        assert lens.max() < 2.5 * lens.mean() + 10


# ---- the config sampler ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, k", [("fp16", 64), ("fp32", 128), ("fp16", 1024), ("bf16", 256), ("fp32", 33)])
def test_sampler_yields_feasible_configs_known_good_first_and_covers_the_values(dtype, k):
    env = sddmm.sddmm_env(1024, 1024, k, 50000, dtype)
    for fam in sddmm.sddmm_families():
        space = sddmm.get_sddmm_space(fam)
        if not space.supports(dtype):  # sddmm_tc: fp16 / bf16 only
            assert not sb.feasible_ordered(fam, dtype, env) and fam == "sddmm_tc"
            continue
        feas = sb.feasible_ordered(fam, dtype, env)
        picks = sb.sample_configs(fam, dtype, env, count=24, feasible=feas)
        assert picks == sb.sample_configs(fam, dtype, env, count=24)  # deterministic
        assert 0 < len(picks) <= 24 and len({sb.config_key(c) for c in picks}) == len(picks)
        for c in picks:
            assert sddmm.check_config(fam, c, dtype, env, DEFAULT_LIMITS) == c
        defaults = space.defaults(dtype, env, DEFAULT_LIMITS)
        assert picks[:len(defaults)] == defaults
        values = set().union(*(set(c.items()) for c in feas))
        assert values <= set().union(*(set(c.items()) for c in picks)), "not every feasible value is covered"
        few = sb.sample_configs(fam, dtype, env, count=2, feasible=feas)
        assert few == picks[:2]  # the same greedy choices, cut short


def test_one_order_for_every_problem_so_cases_share_kernels():
    e1 = sddmm.sddmm_env(1024, 1024, 512, 10**5, "fp16")
    e2 = sddmm.sddmm_env(4096, 4096, 1024, 10**6, "fp16")
    for fam in sddmm.sddmm_families():
        a = {sb.config_key(c) for c in sb.sample_configs(fam, "fp16", e1)}
        b = {sb.config_key(c) for c in sb.sample_configs(fam, "fp16", e2)}
        assert len(a & b) >= len(a) // 2, fam


def test_neighbours_differ_in_one_or_two_parameters():
    env = sddmm.sddmm_env(1024, 1024, 128, 50000, "fp16")
    for fam in sddmm.sddmm_families():
        feas = sb.feasible_ordered(fam, "fp16", env)
        best = feas[0]
        names = [p.name for p in sddmm.get_sddmm_space(fam).params]
        near = sb.neighbours(fam, best, feas, {sb.config_key(best)}, 8)
        assert len(near) == 8 and best not in near
        dist = [sum(c.get(p) != best.get(p) for p in names) for c in near]
        assert all(d in (1, 2) for d in dist) and dist == sorted(dist)
        assert not sb.neighbours(fam, best, feas, {sb.config_key(c) for c in feas}, 8)


# ---- summary and writers, on SYNTHETIC records -----------------------------------------------------------------------

def _synthetic_records():
    """Made-up records (no GPU): speed-ups chosen so that the geomeans are known."""
    rows = [  # (group, dtype, density, tuned, cusparse, dense)
        ("attention-bigbird", "fp16", 0.02, 10.0, 40.0, 20.0),  # 4x, 2x
        ("attention-bigbird", "fp16", 0.3, 10.0, 10.0, 5.0),  # 1x, 0.5x
        ("weightgrad", "fp16", 0.1, 10.0, 10.0, 10.0),  # 1x, 1x
        ("weightgrad", "fp32", 0.05, 5.0, 20.0, 2.5),  # 4x, 0.5x
        ("attention-uniform", "bf16", 0.05, 2.0, None, 4.0),  # no cuSPARSE, 2x
    ]
    recs = []
    for i, (g, dt, d, t, c, dn) in enumerate(rows):
        kind, _, mask = g.partition("-")
        recs.append({"name": f"synthetic-{i}", "kind": kind, "mask": mask or "uniform", "group": g, "M": 512, "N": 512,
                     "K": 64, "density": d, "nnz": int(d * 512 * 512), "dtype": dt, "family": "sddmm_warp",
                     "config": {"lanes": 8}, "tuned_us": t, "cusparse_us": c, "dense_us": dn,
                     "speedup_cusparse": c / t if c else None, "speedup_dense": dn / t, "floor_us": 1.0,
                     "max_rel_err": 1e-4, "candidates": {"tried": 10, "ok": 9}})
    recs.append({"name": "synthetic-failed", "kind": "attention", "mask": "bigbird", "group": "attention-bigbird",
                 "M": 512, "N": 512, "K": 64, "density": 0.05, "dtype": "fp16", "tuned_us": None, "error": "boom"})
    return recs


def test_summary_arithmetic_on_synthetic_records():
    s = sb.summarize(_synthetic_records())
    assert s["cases"] == 6 and s["finished"] == 5 and s["errors"] == 1
    g = {x["group"]: x for x in s["groups"]}
    assert math.isclose(g["all"]["geomean_cusparse"], (4 * 1 * 1 * 4) ** 0.25)
    assert math.isclose(g["all"]["geomean_dense"], (2 * 0.5 * 1 * 0.5 * 2) ** 0.2)
    low = g["density <= 0.1"]  # all but the 0.3 case
    assert low["cases"] == 4 and math.isclose(low["geomean_cusparse"], (4 * 1 * 4) ** (1 / 3))
    assert math.isclose(low["geomean_dense"], (2 * 1 * 0.5 * 2) ** 0.25)
    assert (low["cusparse_at_target"], low["with_cusparse"], low["dense_at_target"], low["with_dense"]) == (2, 3, 3, 4)
    assert math.isclose(g["fp16"]["geomean_cusparse"], 4 ** (1 / 3)) and g["fp16"]["cases"] == 3
    assert g["bf16"]["geomean_cusparse"] is None and g["bf16"]["with_cusparse"] == 0
    assert math.isclose(g["weightgrad"]["geomean_dense"], 0.5 ** 0.5)
    met = s["target_met"]
    assert met["density <= 0.1"] == {"cusparse": True, "dense": True}  # 2.52x and 1.19x
    assert met["fp32, density <= 0.1"] == {"cusparse": True, "dense": False}
    assert met["bf16, density <= 0.1"] == {"cusparse": None, "dense": True}
    assert sb.geomean([]) is None and sb.geomean([None, 0, 4.0, 1.0]) == 2.0


def test_writers_produce_the_columns_on_synthetic_records(tmp_path):
    doc = {"gpu": "SYNTHETIC GPU", "driver": "0", "cuda": "0", "cupy": "0", "date": "2026-01-01",
           "options": {"configs": 24, "refine": 8}, "cases_planned": 7, "skipped": ["synthetic-7"], "wall_s": 1.0,
           "records": _synthetic_records()}
    files = sb.write_outputs(tmp_path / "sddmm-synthetic", doc)
    assert [f.suffix for f in files] == [".json", ".md", ".png"] and all(f.stat().st_size for f in files)
    data = json.loads(files[0].read_text())
    assert data["summary"]["finished"] == 5 and len(data["records"]) == 6 and data["gpu"] == "SYNTHETIC GPU"
    md = files[1].read_text()
    assert md.startswith("# SDDMM: tuned kernels against cuSPARSE SDDMM and dense + mask — SYNTHETIC GPU")
    assert "| " + " | ".join(sb.RECORD_COLUMNS) + " |" in md
    assert "| cases | n | geomean x cuSPARSE | cases >= 2x | geomean x dense+mask | cases >= 1x |" in md
    assert "| density <= 0.1 | 4 | 2.52 | 2/3 | 1.19 | 3/4 |" in md
    assert "density <= 0.1: cuSPARSE met, dense met" in md and "1 not started (budget)" in md
    assert "| weightgrad | 512x512 | 64 | 0.05 | 13107 | fp32 | sddmm_warp | 5.00 | 20.00 | 2.50 | 4.00 | 0.50 |" in md
    assert "boom" in md
    # no speed-up to draw: no PNG, no error
    assert [f.suffix for f in sb.write_outputs(tmp_path / "empty", {"records": []})] == [".json", ".md"]


# ---- argument checks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, says", [
    (lambda: sb.parse_list("fp16,fp8", sb.BENCH_DTYPES, "dtype"), "--dtype: unknown dtype 'fp8'"),
    (lambda: sb.parse_list(" , ", sb.KINDS, "kind"), "--kind: name at least one of attention, weightgrad"),
    (lambda: sb.check_options(0, 8, 0, 0), "--configs must be an integer from 1"),
    (lambda: sb.check_options(24, -1, 0, 0), "--refine must be an integer from 0"),
    (lambda: sb.check_options(24, 8, -5.0, 0), "--budget must be a number of seconds >= 0"),
    (lambda: sb.check_options(24, 8, float("nan"), 0), "--budget must be a number of seconds >= 0"),
    (lambda: sb.check_options(24, 8, 0, -1), "--seed must be an integer"),
])
def test_argument_checks_give_one_line(call, says):
    with pytest.raises(UserError) as ei:
        call()
    assert says in str(ei.value) and "\n" not in str(ei.value)
    assert sb.parse_list("fp32,fp16,fp32", sb.BENCH_DTYPES, "dtype") == ("fp32", "fp16")


def _probe(*args):
    return subprocess.run([sys.executable, str(PROBE), "sddmm", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_probe_sddmm_refuses_bad_input_in_one_line_and_lists_without_a_gpu():
    proc = _probe("--configs", "0", "--quick")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("probe.py: error: --configs"), proc.stderr
    proc = _probe("--quick", "--list", "--configs", "6", "--dtype", "fp16")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "3 cases; up to 6 configs per family and case (seed 0)" and len(out) == 5
    assert "sddmm_tile 6/" in out[1] and "sddmm_warp 6/" in out[1]
    assert out[-1].startswith("distinct kernels to compile (before refinement): ")


# ---- the suite's control flow on a numpy stand-in for the GPU --------------------------------------------------------

class _Event:
    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _fake_cupy():
    """The part of CuPy the benchmark's own code uses, on numpy (kernels, vendor paths and timing are stubbed)."""
    names = ("asarray", "empty", "einsum", "float16", "float32", "float64", "uint8", "uint16", "nan", "isfinite",
             "linalg", "multiply")
    stream = types.SimpleNamespace(synchronize=lambda: None, ptr=0)
    cuda = types.SimpleNamespace(Event=_Event, get_current_stream=lambda: stream,
                                 get_elapsed_time=lambda s, e: (e.t - s.t) * 1e3)
    return types.SimpleNamespace(**{n: getattr(np, n) for n in names}, cuda=cuda,
                                 random=types.SimpleNamespace(default_rng=np.random.default_rng),
                                 get_default_memory_pool=lambda: types.SimpleNamespace(free_all_blocks=lambda: None))


class _NumpySddmm:
    """out = S.data * dot(X[row], Y[col]) on numpy; `bad`: a wrong result (the verification must drop it)."""

    def __init__(self, mask, dtype, bad=False, scale=1.0):
        self.rows = np.repeat(np.arange(mask.shape[0]), np.diff(mask.indptr))
        self.cols, self.s, self.dtype, self.bad, self.scale = mask.indices, mask.data, dtype, bad, scale

    def __call__(self, x, y, out):
        from sparse_autotune.core.problem import as_float, host_values, storage
        xs, ys = as_float(x).astype(np.float64), as_float(y).astype(np.float64)
        s = host_values(self.s, np.dtype(sb.DTYPES[self.dtype])).astype(np.float64)
        v = s * np.einsum("ij,ij->i", xs[self.rows], ys[self.cols]) * (1.5 if self.bad else 1.0)
        out[...] = storage(v.astype(np.float32), self.dtype)
        time.sleep(1e-4 * self.scale)
        return out


def _stub_gpu(monkeypatch, on_time=None):
    from sparse_autotune.device import ceilings, gpu, timing
    from sparse_autotune.device import compile as dcompile
    from sparse_autotune.errors import CandidateError
    info = types.SimpleNamespace(name="NumPy stand-in", l2_bytes=1 << 20, sm_count=1,
                                 limits=lambda: dict(DEFAULT_LIMITS),
                                 versions=lambda: {"gpu": "NumPy stand-in", "cc": "0.0", "driver": "-", "cuda": "-",
                                                   "cupy": "-"})
    monkeypatch.setattr(gpu, "cupy", _fake_cupy)
    monkeypatch.setattr(gpu, "gpu_info", lambda device=None: info)
    monkeypatch.setattr(ceilings, "ceilings", lambda: {"copy_GBps": 4000.0, "fma_fp32_TFLOPs": 60.0})
    calls = []

    def time_launches(launches, repeats=20, give_up_above_us=None, **_):
        calls.append(len(launches))
        if on_time:
            on_time(len(calls))
        t0 = time.perf_counter()
        for f in launches:
            f()
        us = (time.perf_counter() - t0) / len(launches) * 1e6
        return timing.Timing(us, us, 0.0, len(launches), repeats, "graph")

    def compile_kernel(source, name):
        if "vec=1 " in source and "sddmm_tile" in source:  # some configs fail to compile
            raise CandidateError("compile", "stand-in compile error")

    def build_sddmm(mask, k, family, cfg, dtype, limits=None):
        sddmm.check_config(family, cfg, dtype, sddmm.sddmm_env(*mask.shape, k, mask.nnz, dtype), limits)
        return _NumpySddmm(mask, dtype, bad=family == "sddmm_warp" and cfg.get("xsrc") == "smem",
                           scale=1 + cfg.get("nzi", cfg.get("npt", 1)))

    monkeypatch.setattr(timing, "time_launches", time_launches)
    monkeypatch.setattr(dcompile, "compile_kernel", compile_kernel)
    monkeypatch.setattr(sddmm, "build_sddmm", build_sddmm)
    monkeypatch.setattr(sddmm, "build_cusparse_sddmm", lambda m, k, dt: _NumpySddmm(m, dt, scale=8))
    monkeypatch.setattr(sddmm, "build_dense_baseline", lambda m, k, dt: _NumpySddmm(m, dt, scale=6))
    monkeypatch.setattr(sb, "FusedDense", lambda m, k, dt: _NumpySddmm(m, dt, scale=4))
    return calls


def test_suite_control_flow_on_a_numpy_stand_in(tmp_path, monkeypatch):
    """run_suite end to end with numpy for the GPU: the reference cross-check, the sample, verification dropping wrong
    configs, compile failures counted, refinement, finalists, baselines (bf16: no cuSPARSE), records and outputs."""
    calls = _stub_gpu(monkeypatch)
    cases = [sb.BenchCase("attention", "bigbird", 128, 128, 32, 0.1, "fp16"),
             sb.BenchCase("weightgrad", "uniform", 96, 160, 48, 0.05, "bf16")]
    doc = sb.run_suite(cases, tmp_path / "sddmm-np", configs=6, refine=3, log=lambda *_: None)
    assert [f.name for f in sorted(tmp_path.iterdir())] == ["sddmm-np.json", "sddmm-np.md", "sddmm-np.png"]
    r16, rbf = doc["records"]
    for r in (r16, rbf):
        assert "error" not in r, r
        assert r["tuned_us"] > 0 and r["max_rel_err"] <= 1e-2 and r["ref_check"] <= 1e-9 and r["floor_us"] > 0
        # the faster dense path is chosen (fp16 times both; which one wins on numpy is a matter of load, not asserted)
        paths = {p: r[f"dense_{p}_us"] for p in ("ops", "fused") if r.get(f"dense_{p}_us") is not None}
        assert set(paths) == ({"ops", "fused"} if r["dtype"] == "fp16" else {"ops"}), r
        assert r["dense_path"] == min(paths, key=paths.get) and r["dense_us"] == min(paths.values())
        assert r["speedup_dense"] == r["dense_us"] / r["tuned_us"]
        c = r["candidates"]
        assert c["tried"] >= 12 and c["ok"] + sum(c["failed"].values()) == c["tried"]
        assert not (r["family"] == "sddmm_warp" and r["config"].get("xsrc") == "smem")  # wrong ones never win
    assert r16["cusparse_us"] > 0 and r16["speedup_cusparse"] > 0
    assert rbf["cusparse_us"] is None and "no bf16" in rbf["cusparse_error"] and rbf["dense_path"] == "ops"
    assert any(f["stage"] == "verify" for r in doc["records"] for f in r["failures"]) or \
        any(r["candidates"]["failed"].get("verify") for r in doc["records"])
    assert doc["summary"]["finished"] == 2 and calls
    data = json.loads((tmp_path / "sddmm-np.json").read_text())
    assert data["records"][0]["name"] == cases[0].name and data["skipped"] == [] and data["interrupted"] is None


def test_suite_budget_and_sigterm_still_write_the_outputs(tmp_path, monkeypatch):
    _stub_gpu(monkeypatch)
    cases = [sb.BenchCase("attention", "uniform", 64, 64, 16, 0.1, "fp32")] * 2
    doc = sb.run_suite(cases, tmp_path / "b", configs=2, refine=0, budget=1e-9, log=lambda *_: None)
    assert doc["records"] == [] and len(doc["skipped"]) == 2 and (tmp_path / "b.md").exists()
    _stub_gpu(monkeypatch, on_time=lambda n: n == 3 and os.kill(os.getpid(), signal.SIGTERM))
    doc = sb.run_suite(cases[:1], tmp_path / "s", configs=2, refine=0, log=lambda *_: None)
    assert doc["interrupted"] == "SIGTERM" and doc["skipped"] == [cases[0].name] and (tmp_path / "s.json").exists()
    assert signal.getsignal(signal.SIGTERM) is not None and "SIGTERM" in (tmp_path / "s.md").read_text()


def test_reference_dev_matches_sddmm_reference(monkeypatch):
    from sparse_autotune.device import gpu
    monkeypatch.setattr(gpu, "cupy", _fake_cupy)
    case = sb.BenchCase("attention", "bigbird", 200, 200, 24, 0.1, "bf16")
    mask = case.build_mask()
    rng = np.random.default_rng(0)
    from sparse_autotune.core.problem import host_values, storage
    x, y = storage(rng.standard_normal((200, 24)).astype(np.float32), "bf16"), \
        storage(rng.standard_normal((200, 24)).astype(np.float32), "bf16")
    s64 = host_values(mask.data, np.uint16).astype(np.float64)
    got = sb.reference_dev(np.repeat(np.arange(200), np.diff(mask.indptr)), mask.indices, s64, x, y, chunk_elems=100)
    assert np.allclose(got, sddmm.sddmm_reference(mask, x, y, "bf16"), rtol=1e-13, atol=0)


# ---- on a GPU --------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_one_case_suite_end_to_end(tmp_path):
    from sparse_autotune.core.problem import TOLERANCE
    case = sb.BenchCase("attention", "bigbird", 512, 512, 64, 0.05, "fp16")
    doc = sb.run_suite([case], tmp_path / "sddmm-one", configs=4, refine=2, quick=True, log=lambda *_: None)
    assert [f.name for f in sorted(tmp_path.iterdir())] == ["sddmm-one.json", "sddmm-one.md", "sddmm-one.png"]
    (r,) = doc["records"]
    assert "error" not in r, r
    assert r["family"] in sddmm.sddmm_families() and r["tuned_us"] > 0 and 0 <= r["max_rel_err"] <= TOLERANCE["fp16"]
    assert r["cusparse_us"] > 0 and r["dense_us"] > 0 and r["dense_path"] in ("ops", "fused")
    assert math.isclose(r["speedup_cusparse"], r["cusparse_us"] / r["tuned_us"]) and r["floor_us"] > 0
    assert r["candidates"]["ok"] >= 4 and r["ref_check"] <= 1e-9 and r["nnz"] == case.nnz_target()
    sddmm.check_config(r["family"], r["config"], "fp16", sddmm.sddmm_env(512, 512, 64, r["nnz"], "fp16"))
    assert json.loads((tmp_path / "sddmm-one.json").read_text())["summary"]["finished"] == 1
