"""csr_btile (B's K-stages through shared memory, per-stage 8/16-bit column offsets): the stage layout, shared memory,
launch, adaptation to N; the nk layout (rendering, kn unchanged, launch, nvcc; on a GPU against float64)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import fake_kernel, launch_signature_test
from sparse_autotune.core import space
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix

FAMILY = "csr_btile"


test_launch_matches_the_kernel_signature = launch_signature_test(FAMILY)


@pytest.mark.parametrize("kc", [16, 64, 256, 512])
def test_stage_layout_rebuilds_a_row_by_row(kc):
    """stage_ptr[r, s] .. stage_ptr[r, s + 1] are row r's nonzeros with columns in stage s, and lcol + s * kc gives
    their columns back (8-bit offsets up to kc = 256)."""
    rng = np.random.default_rng(kc)
    m, k = 37, 1000  # K not a multiple of kc
    dense = (rng.random((m, k)) < 0.05) * rng.standard_normal((m, k))
    dense[[0, 5]] = 0.0  # empty rows
    dense[9] = rng.standard_normal(k)  # a full row
    a = sps.csr_matrix(dense)
    stage_ptr, lcol, n_st = get_family(FAMILY).host.stage_layout(a, kc)
    assert n_st == -(-k // kc) and stage_ptr.shape == (m * (n_st + 1),)
    assert lcol.dtype == (np.uint8 if kc <= 256 else np.uint16)
    sp_ = stage_ptr.reshape(m, n_st + 1)
    for r in range(m):
        assert sp_[r, 0] == a.indptr[r] and sp_[r, -1] == a.indptr[r + 1]
        for s in range(n_st):
            cols = lcol[sp_[r, s]:sp_[r, s + 1]].astype(np.int64) + s * kc
            assert list(cols) == list(a.indices[sp_[r, s]:sp_[r, s + 1]])
            assert ((cols >= s * kc) & (cols < (s + 1) * kc)).all()


def test_shared_memory_is_the_stages_of_b():
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    sp = get_family(FAMILY).space
    for dtype, es in (("fp32", 4), ("fp16", 2), ("bf16", 2)):
        cfg = next(iter(sp.feasible(dtype, space.problem_env(64, 256, 128, a.nnz, dtype))))
        kern = fake_kernel(FAMILY, cfg, dtype, a)
        assert kern.smem_bytes() == cfg["stages"] * cfg["kc"] * cfg["lanes_per_row"] * cfg["vec"] * es > 0


def test_a_vector_width_n_does_not_divide_is_lowered():
    fam = get_family(FAMILY)
    env = space.problem_env(512, 2048, 256, 100000, "fp32")
    cfg = next(c for c in fam.space.feasible("fp32", env) if c["vec"] == 4)
    got = fam.adapt(cfg, "fp32", space.problem_env(512, 2048, 250, 100000, "fp32"))
    assert got is None or (got["vec"] < 4 and 250 % got["vec"] == 0)
    assert fam.adapt(cfg, "fp32", env) == cfg


# ---- the nk layout (y = x @ A^T + bias, x N x K, y N x M): x's stages transposed into the [k][n] tile ---------------

NK_NVCC_CASES = [  # a few nk configs of each dtype that compile without spills (stages 1 / 2, h2, both row orders)
    ("fp32", dict(warps=8, lanes_per_row=8, vec=4, rows_per_group=1, kc=512, stages=2, acc="f32", row_order="sorted",
                  raster="rows_first")),
    ("fp32", dict(warps=2, lanes_per_row=4, vec=1, rows_per_group=8, kc=128, stages=1, acc="f32", row_order="natural",
                  raster="cols_first")),
    ("fp16", dict(warps=8, lanes_per_row=8, vec=8, rows_per_group=1, kc=512, stages=2, acc="h2", row_order="sorted",
                  raster="rows_first")),
    ("fp16", dict(warps=4, lanes_per_row=8, vec=4, rows_per_group=2, kc=256, stages=1, acc="f32", row_order="natural",
                  raster="cols_first")),
    ("bf16", dict(warps=4, lanes_per_row=4, vec=4, rows_per_group=2, kc=2048, stages=1, acc="f32", row_order="natural",
                  raster="cols_first")),
    ("bf16", dict(warps=8, lanes_per_row=32, vec=8, rows_per_group=1, kc=1024, stages=2, acc="f32", row_order="natural",
                  raster="rows_first")),
]

# sha256 (first 16 hex digits) of kn sources as rendered before the nk layout was added: kn is byte for byte the same
# (update these where the kn kernel is changed on purpose)
KN_DIGESTS = [
    ("fp32", dict(warps=8, lanes_per_row=8, vec=4, rows_per_group=1, kc=512, stages=2, acc="f32", row_order="sorted",
                  raster="rows_first"), "e77460e05c7adb93"),
    ("fp16", dict(warps=8, lanes_per_row=8, vec=8, rows_per_group=1, kc=512, stages=2, acc="h2", row_order="sorted",
                  raster="rows_first"), "10a828a616a453f1"),
    ("bf16", dict(warps=4, lanes_per_row=4, vec=4, rows_per_group=2, kc=2048, stages=1, acc="f32",
                  row_order="natural", raster="cols_first"), "c3380a35bd5840c6"),
    ("fp16", dict(warps=2, lanes_per_row=32, vec=2, rows_per_group=8, kc=128, stages=1, acc="f32",
                  row_order="natural", raster="rows_first"), "a95f7429b0a319f3"),
]


def _native_configs(dtype: str, m: int, k: int, n: int, nnz: int) -> list[dict]:
    from nk_check import native_nk_configs
    return native_nk_configs(FAMILY, dtype, m, k, n, nnz)


def test_the_space_declares_nk_and_its_n_alignment_is_kn_s():
    """nk native reads x along k and writes y element by element: any N; kn (cp.async of B's rows), and nk staged (its
    kn kernel), need N % (16 bytes) == 0."""
    from sparse_autotune.core.space import NK_PATH
    sp = get_family(FAMILY).space
    assert sp.supports_layout("nk") and sp.default_path() == "native"
    cfg = sp.normalize(sp.known_good[0], "fp16")
    kn7, nk7 = space.problem_env(512, 2048, 7, 100000, "fp16"), space.problem_env(512, 2048, 7, 100000, "fp16", "nk")
    assert sp.check(cfg, kn7) is not None
    nk = sp.for_layout("nk")
    assert nk.check({**cfg, NK_PATH: "native"}, nk7) is None
    assert nk.check({**cfg, NK_PATH: "staged"}, nk7) is not None
    assert sp.check(cfg, space.problem_env(512, 2048, 8, 100000, "fp16")) is None
    assert _native_configs("fp32", 64, 256, 1, 800) and _native_configs("bf16", 64, 300, 7, 800)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_every_config_renders_in_both_layouts_and_kn_is_unchanged(dtype):
    """Every feasible config of a small problem (nk native at N = 7 and 64, kn at N = 64) renders for both layouts:
    kn as the template rendered with layout="kn" (no bias, no nk code), nk with the bias right after C, no cp.async
    (x goes through registers) and y written with the bias."""
    from sparse_autotune.core import render
    sp = get_family(FAMILY).space
    env = space.problem_env(64, 300, 64, 1000, dtype)
    cfgs = {tuple(sorted(c.items())): c for c in list(sp.feasible(dtype, env))
            + _native_configs(dtype, 64, 300, 7, 1000) + _native_configs(dtype, 64, 300, 64, 1000)}
    assert len(cfgs) > 300
    vt = "float" if dtype == "fp32" else "unsigned short"
    for cfg in cfgs.values():
        kn = render.render(sp, cfg, dtype)
        assert kn == render.render(sp, cfg, dtype, layout="kn")
        assert "bias" not in kn and "nk_" not in kn and "layout=" not in kn and "cp.async.cg" in kn
        nk = render.render(sp, cfg, dtype, layout="nk")
        assert nk.splitlines()[0] == kn.splitlines()[0] + " layout=nk"
        assert f"val_t* __restrict__ C, const val_t* __restrict__ bias,\n" in nk and f"typedef {vt} val_t;" in nk
        assert "cp.async" not in nk and "nk_store(" in nk and "bias[rows[i]]" in nk


def test_kn_sources_are_those_before_nk():
    import hashlib

    from sparse_autotune.core import render
    sp = get_family(FAMILY).space
    for dtype, cfg, digest in KN_DIGESTS:
        assert sp.normalize(cfg, dtype) == cfg
        assert hashlib.sha256(render.render(sp, cfg, dtype).encode()).hexdigest()[:16] == digest, (dtype, cfg)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_nk_launch_matches_the_kernel_signature_at_any_n(dtype):
    """nk at N not a multiple of 16 bytes (kn cannot run it): the bias right after C, None passed as a null pointer."""
    from fakes import check_launch_matches_signature, signature
    a = random_matrix(64, 300, 0.05, "uniform", 0)
    for n in (1, 7, 33):
        assert check_launch_matches_signature(FAMILY, dtype, a, n, layout="nk") > 0
    cfg = _native_configs(dtype, 64, 300, 7, a.nnz)[0]
    kern = fake_kernel(FAMILY, cfg, dtype, a, layout="nk")
    names = [nm for nm, _ in signature(kern.source)]
    got = kern.args(7, "x", "y", None)
    assert names[names.index("C") + 1] == "bias" and got[names.index("bias")] == 0 and len(got) == len(names) == 13
    assert len(fake_kernel(FAMILY, cfg, dtype, a).args(8, "B", "C")) == 12  # kn as before


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_nk_configs_compile_with_nvcc_without_spills(dtype):
    import concurrent.futures
    import re

    from sparse_autotune.core import render
    from sparse_autotune.device import compile as sat_compile
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = [c for dt, c in NK_NVCC_CASES if dt == dtype]
    assert all(sp.normalize(c, dtype) == c for c in cfgs)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype, layout="nk"), arch="sm_90"),
                             cfgs))
    for cfg, rep in zip(cfgs, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, (cfg, rep)
        assert " 0 bytes spill stores" in rep or "spill" not in rep, (cfg, rep)
        assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 128, (cfg, rep)


# ---- on the GPU -------------------------------------------------------------------------------------------

def nk_edge_cases():
    """Empty rows, one dense row, M not a multiple of a block's rows, K not a multiple of kc nor of 16 bytes (x's rows
    then read element by element), several K-stages."""
    rng = np.random.default_rng(7)
    out = {}
    d = np.zeros((37, 301), dtype=np.float32)
    d[17] = rng.standard_normal(301).astype(np.float32) + 0.5  # one dense row among empty ones
    d[3, ::7] = 1.0
    out["one_dense_row_37x301"] = sps.csr_matrix(d)
    a = random_matrix(70, 1000, 0.05, "uniform", 2).tolil()
    a[0:10, :] = 0  # empty rows
    out["empty_rows_70x1000"] = sps.csr_matrix(a)
    out["powerlaw_101x264"] = random_matrix(101, 264, 0.1, "powerlaw", 3)
    out["uniform_96x2304"] = random_matrix(96, 2304, 0.03, "uniform", 4)
    return out


def _gpu_nk(dtype: str, per: int = 5) -> int:
    """Native nk kernels on nk_edge_cases, N = 1, 7, 64, 257 (tests/nk_check.py); a sample of the feasible configs of
    each case and N."""
    import random

    from nk_check import check_nk_natively

    def pick(feas, name, n):
        return random.Random(f"{name}/{n}/{dtype}").sample(feas, min(per, len(feas)))

    def tol(kern):  # acc h2 (kn's math too) sums L products in half2 before fp32: about 1e-3 relative on a lone dense row
        from sparse_autotune.core.problem import TOLERANCE
        return 5e-3 if kern.config["acc"] == "h2" else TOLERANCE[dtype]
    return check_nk_natively(FAMILY, dtype, nk_edge_cases(), pick, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_nk_correct_on_edge_cases(dtype):
    assert _gpu_nk(dtype) >= 70
