"""SDDMM (sparse_autotune/ops/sddmm.py) on the CPU: the spaces parse, stay out of the SpMM registry and their
constraints reject what they say; every config renders; a covering sample compiles with nvcc for sm_90; the launch
plans match the kernels' signatures; the float64 reference matches numpy's dense (X @ Y^T)[mask]; bad input is a
one-line UserError. The GPU side is tests/test_sddmm_gpu.py."""
from __future__ import annotations

import concurrent.futures
import re
import types

import numpy as np
import pytest
import scipy.sparse as sps

from sddmm_cases import covering_sample, env_of, masks, operands
from sparse_autotune.core import families, space
from sparse_autotune.core.problem import as_float
from sparse_autotune.core.space import DEFAULT_LIMITS
from sparse_autotune.device import compile as sat_compile
from sparse_autotune.errors import UserError
from sparse_autotune.ops import sddmm
from sparse_autotune.resources import resource_dir

FAMILIES = ("sddmm_tile", "sddmm_warp")  # the CUDA-core families (sddmm_tc, on tensor cores: tests/test_sddmm_tc.py)
DTYPES = ("fp32", "fp16", "bf16")
HEADER = re.compile(r"^// sparse-autotune family (\S+) \| (.*)$", re.MULTILINE)
REF_MASK = sps.random(512, 512, density=0.05, format="csr", random_state=0)


def cc_spaces():
    """The spaces of the CUDA-core families (FAMILIES), in (rank, family) order."""
    return [s for s in sddmm.load_sddmm_spaces() if s.family in FAMILIES]


def env(k, dtype, m=512, n=512, nnz=13107):
    return sddmm.sddmm_env(m, n, k, nnz, dtype)


def header_fields(src: str) -> tuple[str, dict]:
    mt = HEADER.search(src)
    assert mt, "rendered source has no sparse-autotune header comment"
    return mt.group(1), dict(kv.split("=", 1) for kv in mt.group(2).split())


def signature(src: str) -> list[tuple[str, int]]:
    """(name, byte size) of each sddmm_kernel parameter."""
    body = re.search(r"sddmm_kernel\(([^)]*)\)", src).group(1)
    return [(p.split()[-1], 8 if "*" in p else 4) for p in body.split(",")]


# ---- the spaces ---------------------------------------------------------------------------------------------------

def test_spaces_parse_and_stay_out_of_the_spmm_registry():
    spaces = cc_spaces()
    assert tuple(s.family for s in spaces) == FAMILIES
    assert set(sddmm.sddmm_families()) == set(FAMILIES) | {"sddmm_tc"}
    for s in spaces:
        assert s.dtypes == DTYPES and s.template == f"sddmm/{s.family}.cu.j2"
        assert s.known_good and all(c.why != c.expr for c in s.constraints)  # every constraint says why
        for dt in DTYPES:
            assert s.size(dt) > 1000
    spmm = set(families.all_families()) | {s.family for s in space.load_spaces()}
    assert not spmm & set(FAMILIES)
    assert not any(p.name.startswith("sddmm") for p in resource_dir("search_spaces").glob("*.toml"))
    with pytest.raises(UserError, match="unknown SDDMM kernel family 'csr_gemv'"):
        sddmm.get_sddmm_space("csr_gemv")


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_good_configs_are_feasible_somewhere(dtype):
    for s in cc_spaces():
        for kg in s.known_good:
            cfg = s.normalize(kg, dtype)
            if cfg is None:  # a 16-bit config (vec 8) for fp32
                assert dtype == "fp32" and kg["vec"] == 8, (s.family, kg)
                continue
            assert any(s.check(cfg, env(k, dtype)) is None for k in (32, 64, 128, 256, 1024)), (s.family, kg)
        for k in (32, 64, 128, 256, 1000, 1024):
            assert s.defaults(dtype, env(k, dtype)), (s.family, dtype, k)


def test_warp_constraints_reject_what_they_say():
    s = sddmm.get_sddmm_space("sddmm_warp")
    base = dict(lanes=8, vec=8, warps=4, seg=32, nzi=2, xsrc="reg", kpl=1)
    assert s.check(base, env(64, "fp16")) is None
    assert "vec-aligned" in s.check(base, env(33, "fp16"))  # K % vec
    assert s.check({**base, "vec": 1, "lanes": 32, "kpl": 2}, env(33, "fp16")) is None
    assert "no lane without" in s.check({**base, "lanes": 32}, env(32, "fp16"))  # 256 elements a pass for K = 32
    assert "lane j writes" in s.check({**base, "lanes": 4, "nzi": 8}, env(64, "fp16"))
    assert "must hold K" in s.check(base, env(128, "fp16"))  # 8 lanes x 8 = 64 < 128
    assert s.check({**base, "kpl": 2}, env(128, "fp16")) is None
    assert "smallest kpl" in s.check({**base, "kpl": 4}, env(128, "fp16"))
    assert "32 floats" in s.check({**base, "lanes": 4, "kpl": 8}, env(256, "fp16"))
    smem = {k: v for k, v in base.items() if k != "kpl"} | {"xsrc": "smem", "lanes": 4, "vec": 4, "warps": 8}
    assert s.check(smem, env(1024, "fp32")) is not None  # 64 subwarps x 4 KB > 227 KB
    assert s.check({**smem, "warps": 1}, env(1024, "fp32")) is None
    assert s.check(smem, env(1024, "fp16", m=2**21)) is not None  # M x K >= 2^31
    assert s.normalize({**smem, "vec": 8}, "fp32") is None and s.normalize({**smem, "vec": 8}, "fp16") is not None
    assert "kpl" not in s.normalize(smem, "fp32")  # kpl only where X's row is in registers


def test_tile_constraints_reject_what_they_say():
    s = sddmm.get_sddmm_space("sddmm_tile")
    base = dict(rows=8, kc=128, npt=2, threads=256, vec=4, copy="sync")
    assert s.check(base, env(128, "fp32")) is None
    assert "vec-aligned" in s.check(base, env(1002, "fp32"))
    assert "cp.async copies" in s.check({**base, "vec": 1, "copy": "async"}, env(33, "fp16"))
    assert s.check({**base, "vec": 1, "kc": 64, "copy": "async"}, env(33, "fp32")) is None  # 4 bytes
    assert "chunk no longer" in s.check({**base, "kc": 256}, env(64, "fp32"))
    assert "static shared memory" in s.check({**base, "rows": 32, "kc": 256, "copy": "async"}, env(1024, "fp32"))
    assert s.check({**base, "rows": 32, "kc": 256, "copy": "async"}, env(1024, "fp16")) is None  # 32 KB + 132 B
    assert "threads per block" in s.check({**base, "threads": 512}, env(128, "fp32"), {"max_threads": 256})
    assert "32-bit" in s.check(base, env(128, "fp32", n=2**24))


# ---- rendering and compiling --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_every_config_renders(dtype):
    for s in cc_spaces():
        hashes = set()
        for cfg in s.enumerate(dtype):
            src = sddmm.render_sddmm(s.family, cfg, dtype)
            fam, fields = header_fields(src)
            assert fam == s.family and fields == {"dtype": dtype, **{k: str(v) for k, v in cfg.items()}}, cfg
            assert 'extern "C" __global__' in src and "sddmm_kernel(" in src
            hashes.add(hash(src))
        assert len(hashes) == s.size(dtype), "two configs rendered to the same source"


def test_render_rejects_a_missing_parameter():
    cfg = dict(rows=8, kc=128, npt=2, threads=256, vec=4)
    with pytest.raises(Exception):
        sddmm.render_sddmm("sddmm_tile", cfg, "fp32")


def _nvcc_jobs():
    """(family, dtype, K, config): covering samples of each space at K = 128 and 256 (between them every value of
    every parameter is feasible) and two seeded feasible configs at K = 33 (a tail), each dtype (K = 1000's two more
    left for CI's time: K is the kernel's argument, not a template value)."""
    jobs, seen = [], set()
    for s in cc_spaces():
        for dtype in DTYPES:
            for k in (128, 256, 33):
                if k == 128:
                    cfgs = covering_sample(s, dtype, env(k, dtype))
                elif k == 256:  # the values K = 128 leaves out (kc 256; kpl 1 in fp32 is only feasible up to K = 128)
                    done = {(name, v) for fam, dt, _, c in jobs if (fam, dt) == (s.family, dtype)
                            for name, v in c.items()}
                    need = {(p.name, v) for p in s.params for v in p.choices(dtype)} - done
                    cfgs = covering_sample(s, dtype, env(k, dtype), need=need) if need else []
                else:
                    feas = list(s.feasible(dtype, env(k, dtype)))
                    cfgs = [feas[i] for i in np.random.default_rng(k).choice(len(feas), 2, replace=False)]
                for cfg in cfgs:
                    key = (s.family, dtype, tuple(sorted(cfg.items())))
                    if key not in seen:
                        seen.add(key)
                        jobs.append((s.family, dtype, k, cfg))
    return jobs


@pytest.fixture(scope="module")
def nvcc_reports():
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    jobs = _nvcc_jobs()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda j: sat_compile.nvcc_check(sddmm.render_sddmm(j[0], j[3], j[1]), "sm_90"),
                                jobs))
    return list(zip(jobs, reports))


def test_covering_sample_compiles_with_nvcc(nvcc_reports):
    assert {j[0] for j, _ in nvcc_reports} == set(FAMILIES)
    assert {j[1] for j, _ in nvcc_reports} == set(DTYPES)
    assert len(nvcc_reports) >= 30 and {j[2] for j, _ in nvcc_reports} == {33, 128, 256}
    for s in cc_spaces():  # every value of every parameter compiled at least once
        for p in s.params:
            got = {j[3].get(p.name) for j, _ in nvcc_reports if j[0] == s.family}
            assert {v for dt in DTYPES for v in p.choices(dt)} <= got, (s.family, p.name)
    for (family, dtype, k, cfg), report in nvcc_reports:
        assert "entry function 'sddmm_kernel' for 'sm_90'" in report, (family, dtype, cfg)
        # NVRTC 13.0 (the tuner's compiler) spills 12 bytes in sddmm_tile at rows 32, threads 512, npt 2, vec 1, sync
        # (a 16-byte stack frame at 40 registers of 128: not register pressure; nvcc 13.0 builds it without): a few
        # bytes are let pass, a real spill is not
        spill = [int(x) for x in re.findall(r"(\d+) bytes spill stores", report)]
        assert spill and max(spill) <= 16, (family, dtype, cfg, report)


def test_tile_shared_memory_is_what_the_constraint_budgets(nvcc_reports):
    checked = 0
    for (family, dtype, k, cfg), report in nvcc_reports:
        if family != "sddmm_tile":
            continue
        es = 4 if dtype == "fp32" else 2
        want = cfg["rows"] * cfg["kc"] * es * (2 if cfg["copy"] == "async" else 1) + 4 * (cfg["rows"] + 1)
        got = int(re.search(r"(\d+) bytes smem", report).group(1))
        assert want <= got <= want + 16, (cfg, dtype, got, want)
        checked += 1
    assert checked >= 10


# ---- launch plans -------------------------------------------------------------------------------------------------

def test_segments_cover_every_nonzero_once():
    for name, m in masks().items():
        for seg in (1, 8, 32, 512):
            seg_row, seg_start = sddmm.segments(m, seg)
            assert seg_row.dtype == seg_start.dtype == np.int32
            ends = np.minimum(seg_start + seg, m.indptr[seg_row + 1])
            assert (seg_start >= m.indptr[seg_row]).all() and (ends > seg_start).all(), name
            covered = np.concatenate([np.arange(a, b) for a, b in zip(seg_start, ends)] or [np.zeros(0, int)])
            assert np.array_equal(np.sort(covered), np.arange(m.nnz)), (name, seg)
            assert len(seg_row) == int(np.sum(-(-np.diff(m.indptr) // seg)))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_launch_plan_matches_the_kernel_signature(family, dtype):
    s = sddmm.get_sddmm_space(family)
    for name, m in masks().items():
        for k in (33, 128):
            for cfg in covering_sample(s, dtype, env_of(m, k, dtype), size=4)[:6]:
                plan = sddmm.launch_plan(family, cfg, m, k, dtype)
                sig = signature(sddmm.render_sddmm(family, cfg, dtype))
                names = [n for n, _ in sig]
                assert len(sig) == len(plan.arrays) + 4 + len(plan.scalars), (family, sig)
                assert names[len(plan.arrays):len(plan.arrays) + 4] == ["s_vals", "X", "Y", "out"]
                assert all(sz == 8 for _, sz in sig[:len(plan.arrays) + 4])
                assert all(sz == 4 for _, sz in sig[len(plan.arrays) + 4:])
                assert all(a.dtype == np.int32 for a in plan.arrays)
                assert all(isinstance(x, np.int32) for x in plan.scalars) and int(plan.scalars[-1]) == k
                assert plan.block == (32 * cfg["warps"] if family == "sddmm_warp" else cfg["threads"])
                if family == "sddmm_warp":
                    subs = cfg["warps"] * 32 // cfg["lanes"]
                    assert plan.grid * subs >= int(plan.scalars[0]) > (plan.grid - 1) * subs or plan.grid == 0
                    assert (plan.grid == 0) == (m.nnz == 0)
                    es = 4 if dtype == "fp32" else 2
                    assert plan.smem == (subs * k * es if cfg["xsrc"] == "smem" else 0)
                else:
                    assert plan.grid == -(-m.shape[0] // cfg["rows"]) and plan.smem == 0


# ---- the reference ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_dense_numpy(dtype):
    for name, m in masks().items():
        for k in (1, 33, 64):
            x, y = operands(m, k, dtype, seed=k)
            got = sddmm.sddmm_reference(m, x, y, dtype)
            xf, yf = as_float(x).astype(np.float64), as_float(y).astype(np.float64)
            dense = xf @ yf.T
            rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
            vals = m.data.astype(np.float32)
            if dtype != "fp32":
                vals = as_float(sddmm.storage(vals, dtype)).astype(np.float32)
            want = vals.astype(np.float64) * dense[rows, m.indices]
            assert got.dtype == np.float64 and got.shape == (m.nnz,)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"{name} K={k}")


def test_reference_in_slices_equals_all_at_once(monkeypatch):
    m = masks()["random_300x200"]
    x, y = operands(m, 64, "fp32")
    whole = sddmm.sddmm_reference(m, x, y)
    monkeypatch.setattr(sddmm, "_REF_ELEMENTS", 100)
    assert np.array_equal(sddmm.sddmm_reference(m, x, y), whole)


def test_reference_keeps_the_mask_order_and_duplicates():
    # row 0 holds column 2 twice and column 0 after it: three outputs in the stored order
    m = sps.csr_matrix((np.array([1.0, 2.0, 3.0], np.float32), np.array([2, 2, 0]), np.array([0, 3, 3])), shape=(2, 3))
    x = np.array([[1.0, 2.0], [5.0, 6.0]], np.float32)
    y = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_array_equal(sddmm.sddmm_reference(m, x, y), [2.0, 4.0, 3.0])


# ---- errors -------------------------------------------------------------------------------------------------------

def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_bad_input_is_one_line():
    m = masks()["random_300x200"]
    cfg = dict(rows=8, kc=128, npt=2, threads=256, vec=4, copy="sync")
    cases = [
        (lambda: sddmm.build_sddmm(m, 128, "sddmm_tile", cfg, "fp64", DEFAULT_LIMITS), "unknown SDDMM dtype"),
        (lambda: sddmm.build_sddmm(m.toarray(), 128, "sddmm_tile", cfg, "fp32", DEFAULT_LIMITS), "scipy.sparse"),
        (lambda: sddmm.build_sddmm(m, 0, "sddmm_tile", cfg, "fp32", DEFAULT_LIMITS), "positive integer"),
        (lambda: sddmm.build_sddmm(m, 12.0, "sddmm_tile", cfg, "fp32", DEFAULT_LIMITS), "positive integer"),
        (lambda: sddmm.build_sddmm(m, 2**23, "sddmm_tile", cfg, "fp32", DEFAULT_LIMITS), "32-bit indices"),
        (lambda: sddmm.build_sddmm(m, 128, "spmm", cfg, "fp32", DEFAULT_LIMITS), "unknown SDDMM kernel family"),
        (lambda: sddmm.build_sddmm(m, 130, "sddmm_tile", cfg, "fp32", DEFAULT_LIMITS), "cannot run this problem"),
        (lambda: sddmm.build_sddmm(m, 128, "sddmm_tile", {**cfg, "vec": 8}, "fp32", DEFAULT_LIMITS),
         "vec has a value outside"),
        (lambda: sddmm.build_dense_baseline(m, -1, "fp16"), "positive integer"),
        (lambda: sddmm.sddmm_reference(m, np.zeros((300, 4)), np.zeros((201, 4))), "shapes do not fit"),
        (lambda: sddmm.sddmm_reference(m, np.zeros((300, 4)), np.zeros((200, 5))), "shapes do not fit"),
        (lambda: sddmm.sddmm_reference(m, np.zeros((300, 4), complex), np.zeros((200, 4))), "real numbers"),
    ]
    bad_cols = sps.csr_matrix((np.ones(1, np.float32), np.array([2]), np.array([0, 1])), shape=(1, 3))
    bad_cols.indices[0] = 5
    cases.append((lambda: sddmm.build_sddmm(bad_cols, 8, "sddmm_tile", cfg, "fp32", DEFAULT_LIMITS), "column index"))
    for fn, want in cases:
        with pytest.raises(UserError) as ei:
            fn()
        assert want in _one_line(ei), (want, str(ei.value))


def test_operands_are_checked_before_a_launch():
    def fake(shape, dtype, contiguous=True, ptr=0x7F0000000100):
        return types.SimpleNamespace(shape=shape, dtype=np.dtype(dtype), data=types.SimpleNamespace(ptr=ptr),
                                     flags=types.SimpleNamespace(c_contiguous=contiguous))

    sddmm._check_operand("X", fake((4, 8), np.float16), (4, 8), "fp16")
    sddmm._check_operand("X", fake((4, 8), np.uint16), (4, 8), "bf16")
    for arr, want in [(np.zeros((4, 8), np.float16), "CuPy array"), (fake((8, 4), np.float16), "shape (8, 4)"),
                      (fake((4, 8), np.float32), "dtype float32"), (fake((4, 8), np.float16, False), "C-contiguous"),
                      (fake((4, 8), np.float16, ptr=0x7F0000000102), "16-byte aligned")]:
        with pytest.raises(UserError) as ei:
            sddmm._check_operand("X", arr, (4, 8), "fp16")
        assert want in _one_line(ei)


def test_cusparse_baseline_is_reported_absent_or_present():
    assert isinstance(sddmm.cusparse_sddmm_available(), bool)
    assert "cuSPARSE baseline" in sddmm.__doc__ and "What is left" in sddmm.__doc__


def test_flops_and_bytes():
    assert sddmm.flops(10, 64) == 10 * 129
    assert sddmm.min_bytes(4, 5, 8, 10, "fp16") == 9 * 8 * 2 + 10 * 8 + 20


# ---- the cuSPARSE baseline (device/sddmm_vendor.py): what the CPU can check -----------------------------------------

def _cuda_header(name: str):
    """The installed CUDA header `name` (the one beside the libcusparse CuPy loads first), or None."""
    from pathlib import Path
    dirs = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory
        dirs.append(find_nvidia_header_directory("cusparse"))
    except Exception:  # noqa: BLE001
        pass
    nvcc = sat_compile.nvcc_path()
    if nvcc:
        dirs.append(str(Path(nvcc).resolve().parent.parent / "include"))
    dirs += ["/usr/local/cuda/include"]
    for d in dirs:
        if d and (Path(d) / name).is_file():
            return (Path(d) / name).read_text(errors="replace")
    return None


@pytest.fixture(scope="module")
def cusparse_h():
    text = _cuda_header("cusparse.h")
    if text is None:
        pytest.skip("cusparse.h not found (no CUDA headers installed)")
    return text


def _enum_values(text: str) -> dict:
    """NAME -> value of every `NAME = number` enumerator in a C header."""
    pat = r"\b([A-Z][A-Z0-9_]+)\s*=\s*(-?(?:0x[0-9a-fA-F]+|\d+))(?=\s*(?:[,}]|//|/\*|$))"
    return {k: int(v, 0) for k, v in re.findall(pat, text, re.MULTILINE)}


def test_cusparse_enum_values_match_the_headers(cusparse_h):
    from sparse_autotune.device import sddmm_vendor as sv
    enums = _enum_values(cusparse_h)
    for name in ("CUSPARSE_OPERATION_NON_TRANSPOSE", "CUSPARSE_OPERATION_TRANSPOSE", "CUSPARSE_ORDER_ROW",
                 "CUSPARSE_INDEX_32I", "CUSPARSE_INDEX_BASE_ZERO", "CUSPARSE_POINTER_MODE_HOST",
                 "CUSPARSE_SDDMM_ALG_DEFAULT", "CUSPARSE_STATUS_NOT_SUPPORTED"):
        assert enums[name] == getattr(sv, name), name
    for value, name in sv.STATUS_NAMES.items():
        assert enums[name] == value, name
    assert {v for k, v in enums.items() if k.startswith("CUSPARSE_STATUS_")} == set(sv.STATUS_NAMES)
    assert sv.ALGS == {"default": enums["CUSPARSE_SDDMM_ALG_DEFAULT"]}
    assert not any(k.startswith("CUSPARSE_SDDMM_ALG") and k != "CUSPARSE_SDDMM_ALG_DEFAULT" for k in enums)
    types_h = _cuda_header("library_types.h")
    assert types_h is not None, "library_types.h is missing beside cusparse.h"
    dt = _enum_values(types_h)
    for name in ("CUDA_R_32F", "CUDA_R_16F", "CUDA_R_16BF"):
        assert dt[name] == getattr(sv, name), name
    assert sv.COMPUTE_TYPE == dt["CUDA_R_32F"]
    assert sv.VALUE_TYPES == {"fp32": (dt["CUDA_R_32F"], dt["CUDA_R_32F"]),
                              "fp16": (dt["CUDA_R_16F"], dt["CUDA_R_32F"])}


_ENUM_TYPES = {"cusparseOperation_t", "cudaDataType", "cusparseSDDMMAlg_t", "cusparseIndexType_t",
               "cusparseIndexBase_t", "cusparseOrder_t", "cusparsePointerMode_t"}
_HANDLE_TYPES = {"cusparseHandle_t", "cusparseDnMatDescr_t", "cusparseConstDnMatDescr_t", "cusparseSpMatDescr_t",
                 "cusparseConstSpMatDescr_t", "cudaStream_t"}


def _ctype_of(param: str):
    """The ctypes type a C parameter declaration of these prototypes takes."""
    import ctypes as ct
    words = param.replace("*", " * ").split()
    stars = words.count("*")
    base = [w for w in words if w not in ("const", "*")][0]
    if stars == 0:
        if base == "int64_t":
            return ct.c_int64
        if base in _ENUM_TYPES:
            return ct.c_int
        if base in _HANDLE_TYPES:
            return ct.c_void_p
    elif stars == 1:
        if base == "void":
            return ct.c_void_p
        if base == "size_t":
            return ct.POINTER(ct.c_size_t)
        if base in _HANDLE_TYPES:
            return ct.POINTER(ct.c_void_p)
    raise AssertionError(f"no ctypes mapping for parameter {param!r}")


def test_cusparse_prototypes_match_the_header(cusparse_h):
    from sparse_autotune.device import sddmm_vendor as sv
    for name, argtypes in sv.PROTOTYPES.items():
        mt = re.search(r"cusparseStatus_t\s+CUSPARSEAPI\s+" + re.escape(name) + r"\s*\(([^)]*)\)\s*;", cusparse_h)
        assert mt, f"{name} is not declared in cusparse.h"
        params = [" ".join(p.split()[:-1]) if not p.strip().endswith("*") else p
                  for p in (q.strip() for q in mt.group(1).split(","))]
        assert len(params) == len(argtypes), (name, params)
        for i, (param, got) in enumerate(zip(params, argtypes)):
            assert got == _ctype_of(param), (name, i, param, got)
    # the enum parameters are enums in the header (so passed as int)
    for t in _ENUM_TYPES - {"cudaDataType"}:
        assert re.search(r"}\s*" + t + r"\s*;", cusparse_h), t


def test_cusparse_library_exports_the_bound_functions():
    from sparse_autotune.device import sddmm_vendor as sv
    try:
        from sparse_autotune.device.vendor import _lib
        _lib("cusparse")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"libcusparse cannot be loaded here ({exc})")
    assert sv.available() and sddmm.cusparse_sddmm_available()
    for name in sv.PROTOTYPES:
        assert callable(sv.fn(name)) and sv.fn(name) is sv.fn(name)


def test_cusparse_baseline_refuses_what_it_cannot_run_before_touching_a_gpu():
    from sparse_autotune.device import sddmm_vendor as sv
    assert tuple(sv.VALUE_TYPES) == sddmm.CUSPARSE_SDDMM_DTYPES == ("fp32", "fp16")
    m = masks()["random_300x200"]
    cases = [
        (lambda: sddmm.build_cusparse_sddmm(m, 64, "bf16"), "cuSPARSE SDDMM does not support bf16"),
        (lambda: sddmm.build_cusparse_sddmm(m, 64, "fp64"), "unknown SDDMM dtype"),
        (lambda: sddmm.build_cusparse_sddmm(m, 64, "fp32", alg="alg1"), "unknown cuSPARSE SDDMM algorithm"),
        (lambda: sddmm.build_cusparse_sddmm(m.toarray(), 64, "fp32"), "scipy.sparse"),
        (lambda: sddmm.build_cusparse_sddmm(m, 0, "fp16"), "positive integer"),
        (lambda: sddmm.build_cusparse_sddmm(m, 2**23, "fp32"), "32-bit indices"),
    ]
    for fn, want in cases:
        with pytest.raises(UserError) as ei:
            fn()
        assert want in _one_line(ei), (want, str(ei.value))


class _FakeCupy:
    """Enough of CuPy for SddmmLauncher on the CPU: arrays are addresses and sizes."""

    def __init__(self):
        self.next_ptr = 0x10000
        self.synced = 0
        fake = self

        class _Stream:
            ptr = 0x5150

            def synchronize(self):
                fake.synced += 1

        self.cuda = types.SimpleNamespace(device=types.SimpleNamespace(get_cusparse_handle=lambda: 0xAB),
                                          get_current_stream=lambda: _Stream())
        self.float32, self.uint8 = np.float32, np.uint8

    def _arr(self, n, dtype):
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + 0x1000 + n * np.dtype(dtype).itemsize
        return types.SimpleNamespace(size=n, dtype=np.dtype(dtype), data=types.SimpleNamespace(ptr=ptr))

    zeros = empty = _arr


def _fake_binding(monkeypatch, buffer_status=0):
    """SddmmLauncher with a fake CuPy and every cusparse call recorded as (name, plain args)."""
    import ctypes as ct
    from sparse_autotune.device import gpu, sddmm_vendor as sv
    cp = _FakeCupy()
    monkeypatch.setattr(gpu, "cupy", lambda: cp)
    calls, handles = [], iter(range(0x900, 0x1000))

    def plain(a):
        obj = getattr(a, "_obj", a)  # byref(x) -> x
        return obj.value if isinstance(obj, (ct.c_void_p, ct.c_float, ct.c_size_t)) else obj

    def fn(name):
        def call(*args):
            assert len(args) == len(sv.PROTOTYPES[name]), name
            calls.append((name, tuple(plain(a) for a in args)))
            if name.startswith("cusparseCreate"):
                args[0]._obj.value = next(handles)
            if name == "cusparseSDDMM_bufferSize":
                args[-1]._obj.value = 4096
                return buffer_status
            return 0
        return call

    monkeypatch.setattr(sv, "fn", fn)
    return sv, cp, calls


def test_cusparse_launcher_describes_the_product_and_points_each_call(monkeypatch):
    sv, cp, calls = _fake_binding(monkeypatch)
    m, n, k, nnz = 300, 200, 33, 3000
    row_ptr, cols = cp.zeros(m + 1, np.int32), cp.zeros(nnz, np.int32)
    ln = sv.SddmmLauncher(m, n, k, row_ptr, cols, "fp16")
    try:
        _check_launcher_calls(sv, cp, calls, ln, (m, n, k, nnz), row_ptr, cols)
    finally:
        ln.close()  # under the fake: its made-up descriptors must never reach the real library's destroy calls


def _check_launcher_calls(sv, cp, calls, ln, dims, row_ptr, cols):
    m, n, k, nnz = dims
    by = {}
    for name, args in calls:
        by.setdefault(name, []).append(args)
    assert [a[1:4] + a[5:] for a in by["cusparseCreateDnMat"]] == [
        (m, k, k, sv.CUDA_R_16F, sv.CUSPARSE_ORDER_ROW), (n, k, k, sv.CUDA_R_16F, sv.CUSPARSE_ORDER_ROW)]
    (csr,) = by["cusparseCreateCsr"]
    assert csr[1:] == (m, n, nnz, row_ptr.data.ptr, cols.data.ptr, ln.c.data.ptr, sv.CUSPARSE_INDEX_32I,
                       sv.CUSPARSE_INDEX_32I, sv.CUSPARSE_INDEX_BASE_ZERO, sv.CUDA_R_32F)
    assert ln.c.size == nnz and ln.c.dtype == np.float32 and ln.buf.size == 4096
    head = (0xAB, sv.CUSPARSE_OPERATION_NON_TRANSPOSE, sv.CUSPARSE_OPERATION_TRANSPOSE, 1.0, ln.mat_x.value,
            ln.mat_y.value, 0.0, ln.mat_c.value, sv.CUDA_R_32F, sv.CUSPARSE_SDDMM_ALG_DEFAULT)
    assert by["cusparseSDDMM_bufferSize"] == [(*head, 0)]  # the size_t it fills in (0 when passed)
    assert by["cusparseSDDMM_preprocess"] == [(*head, ln.buf.data.ptr)]
    assert [c[0] for c in calls].index("cusparseSDDMM_preprocess") > [c[0] for c in calls].index("cusparseSetStream")
    assert cp.synced == 1 and "cusparseSDDMM" not in by
    del calls[:]
    ln(0x7000, 0x8000, 0x9999)
    assert calls == [("cusparseDnMatSetValues", (ln.mat_x.value, 0x7000)),
                     ("cusparseDnMatSetValues", (ln.mat_y.value, 0x8000)),
                     ("cusparseSetStream", (0xAB, 0x9999)),
                     ("cusparseSetPointerMode", (0xAB, sv.CUSPARSE_POINTER_MODE_HOST)),
                     ("cusparseSDDMM", (*head, ln.buf.data.ptr))]
    descs = (ln.mat_x.value, ln.mat_y.value, ln.mat_c.value)
    del calls[:]
    ln.close()
    ln.close()  # each descriptor destroyed once
    assert calls == [("cusparseDestroyDnMat", (descs[0],)), ("cusparseDestroyDnMat", (descs[1],)),
                     ("cusparseDestroySpMat", (descs[2],))]


def test_cusparse_launcher_refusal_is_one_line_and_frees_the_descriptors(monkeypatch):
    sv, cp, calls = _fake_binding(monkeypatch, buffer_status=sv_not_supported())
    with pytest.raises(UserError) as ei:
        sv.SddmmLauncher(10, 10, 8, cp.zeros(11, np.int32), cp.zeros(5, np.int32), "fp16")
    assert "does not support fp16" in _one_line(ei) and "CUSPARSE_STATUS_NOT_SUPPORTED" in str(ei.value)
    destroyed = [c for c in calls if c[0].startswith("cusparseDestroy")]
    created = [c for c in calls if c[0].startswith("cusparseCreate")]
    assert len(destroyed) == len(created) == 3
    sv2, cp2, calls2 = _fake_binding(monkeypatch, buffer_status=3)
    with pytest.raises(RuntimeError, match="CUSPARSE_STATUS_INVALID_VALUE"):
        sv2.SddmmLauncher(10, 10, 8, cp2.zeros(11, np.int32), cp2.zeros(5, np.int32), "fp32")


def sv_not_supported() -> int:
    from sparse_autotune.device.sddmm_vendor import CUSPARSE_STATUS_NOT_SUPPORTED
    return CUSPARSE_STATUS_NOT_SUPPORTED
