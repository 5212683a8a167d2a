"""bitmap_rows (N <= 32 at d 0.2 - 0.7): the per-row bitmap layout round-trips to A (random and adversarial patterns),
a CPU emulation of the kernel's own walk (groups, segments, split K, popc offsets) matches scipy, the space's constraints
and adaptation to N, every config renders, a covering sample compiles for sm_90 without spills; on a GPU, against
float64 on edge cases and on the llm suite's shapes."""
from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import check_launch_matches_signature, fake_kernel
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device import compile as sat_compile

FAMILY = "bitmap_rows"


def host():
    return get_family(FAMILY).host


def adversarial():
    rng = np.random.default_rng(5)

    def vals(a):
        a = sps.csr_matrix(a)
        a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
        return a

    out = {}
    a = sps.random(40, 300, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    out["empty_rows"] = vals(a)
    out["residues_37x53"] = vals(sps.random(37, 53, density=0.5, format="csr", random_state=3))  # K % 32 != 0
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = vals(a)
    out["density_0.7"] = vals(sps.random(64, 1100, density=0.7, format="csr", random_state=4))  # 3 segments
    d = np.zeros((30, 2100))
    d[7] = 1.0  # one full row (5 segments) among empty ones
    out["one_dense_row"] = vals(sps.csr_matrix(d))
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["k_is_1"] = vals(sps.csr_matrix(np.array([[1.0], [0.0], [2.0]])))
    full = np.ones((9, 128))
    out["full_groups"] = vals(sps.csr_matrix(full))  # every mask all ones, K a multiple of a group
    out["last_column_only"] = vals(sps.csr_matrix((np.ones(6), np.full(6, 4099), np.arange(7)), shape=(6, 4100)))
    return out


def emulate(masks, vals, segoff, shape, b, ksplit: int, dtype: str = "fp16") -> np.ndarray:
    """C = A B computed the kernel's way, in float64: each split (segments s0 .. s1 of a row, as the kernel splits them)
    walks its groups from its stored segment offset, lane l of chunk c taking vals[off + popc(mask & lanemask_lt)] where
    its bit is set, off advanced by popc(mask); the splits' sums added."""
    h = host()
    m, k = shape
    kg, ns = h.groups(k), h.segments(k)
    words = 4 * kg
    fv = (vals.view(np.float16) if dtype == "fp16" else (vals.astype(np.uint32) << 16).view(np.float32)).astype(np.float64)
    bp = np.zeros((kg * 128, b.shape[1]))
    bp[:k] = b
    lanes = np.arange(32)
    lt = (1 << lanes) - 1
    c = np.zeros((m, b.shape[1]))
    for r in range(m):
        for ks in range(ksplit):
            s0, s1 = ks * ns // ksplit, (ks + 1) * ns // ksplit
            g0, g1 = s0 * h.SEG_GROUPS, min(kg, s1 * h.SEG_GROUPS)
            if g0 >= g1:
                continue
            off = int(segoff[r * ns + s0])
            for ch in range(4 * g0, 4 * g1):
                mk = int(masks[r * words + ch])
                bit = (mk >> lanes) & 1
                pre = np.array([bin(mk & int(x)).count("1") for x in lt])
                a = np.where(bit == 1, fv[np.minimum(off + pre, len(fv) - 1)], 0.0)
                c[r] += a @ bp[ch * 32:(ch + 1) * 32]
                off += bin(mk).count("1")
    return c


# ---- layout -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_round_trips_to_a(dtype):
    h = host()
    for name, a in adversarial().items():
        masks, vals, segoff = h.build(a, dtype)
        want = h.value_bits(a.toarray().ravel(), dtype).reshape(a.shape)
        np.testing.assert_array_equal(h.decode(masks, vals, segoff, a.shape), want, err_msg=name)
        m, k = a.shape
        kg = h.groups(k)
        assert len(masks) == (m + 1) * 4 * kg and not masks[m * 4 * kg:].any(), name  # the zero row M
        assert len(vals) == a.nnz + h.VAL_PAD and not vals[a.nnz:].any(), name
        assert len(segoff) == m * h.segments(k) + 1 and segoff[-1] == a.nnz, name
        assert h.format_bytes(m, k, a.nnz) == masks.nbytes + vals.nbytes + segoff.nbytes


def test_layout_against_scipy_random_and_its_bytes():
    h = host()
    for seed, (m, k, d) in enumerate([(100, 4096, 0.5), (33, 4097, 0.3), (64, 1000, 0.2), (7, 31, 0.9)]):
        a = random_matrix(m, k, d, "uniform", seed)
        masks, vals, segoff = h.build(a, "fp16")
        a = sps.csr_matrix(a)
        np.testing.assert_array_equal(h.decode(masks, vals, segoff, a.shape),
                                      h.value_bits(a.toarray().ravel(), "fp16").reshape(a.shape))
        popc = np.unpackbits(masks.view(np.uint8)).sum()
        assert popc == a.nnz
    # 1.125 bytes an element at d 0.5 (4096 x 4096), within 1 % with the offsets and the zero row
    nnz = 4096 * 4096 // 2
    assert abs(h.format_bytes(4096, 4096, nnz) / (4096 * 4096) - 1.125) < 0.01


def test_layout_keeps_the_callers_matrix():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    masks, vals, _ = h.build(a)
    assert a.nnz == 3 and list(a.data) == [1.0, 2.0, 0.0]  # duplicates summed, explicit zero dropped on a copy
    assert masks[0] == 1 << 3 and vals[0] == np.float16(3.0).view(np.uint16) and not vals[1:].any()


@pytest.mark.parametrize("ksplit", [1, 2, 4])
def test_cpu_emulation_of_the_kernels_walk_matches_scipy(ksplit):
    """Not a GPU result: the kernel's indexing rule (per split: stored segment offset, popc prefix a lane) in numpy."""
    h = host()
    rng = np.random.default_rng(ksplit)
    cases = dict(adversarial())
    cases["three_segments_0.5"] = random_matrix(12, 3000, 0.5, "uniform", 7)
    for name, a in cases.items():
        a = sps.csr_matrix(a)
        masks, vals, segoff = h.build(a, "fp16")
        b = rng.standard_normal((a.shape[1], 3))
        a16 = a.copy()
        a16.data = a16.data.astype(np.float16).astype(np.float64)
        got = emulate(masks, vals, segoff, a.shape, b, ksplit)
        np.testing.assert_allclose(got, a16 @ b, rtol=1e-9, atol=1e-9, err_msg=name)


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 1500, 0.5, "uniform", 0)
    for n in (1, 3, 8, 20):
        assert check_launch_matches_signature(FAMILY, dtype, a, n) > 0


def test_geometry_column_blocks_and_shared_memory():
    h = host()
    a = random_matrix(1000, 3000, 0.3, "uniform", 1)
    cfg = dict(rows=4, warps=8, ksplit=2, nb=8, bsrc="smem", minblocks=1, acc="f32")
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    assert h.geometry(k, 8) == ((-(-1000 // 16), 1), (256,))  # 4 row groups of 4 rows a block
    assert h.geometry(k, 9) == ((-(-1000 // 16), 2), (256,))  # N > nb: column blocks
    assert h.smem_bytes(k) == 3072 * 8 * 2  # K rounded up to whole groups of 128
    assert h.smem_bytes(fake_kernel(FAMILY, {**cfg, "bsrc": "l1"}, "fp16", a)) == 0


def test_constraints_and_adapt():
    fam = get_family(FAMILY)
    sp = fam.space
    one = problem_env(4096, 4096, 1, 8_000_000, "fp16")
    cfg = dict(rows=4, warps=8, ksplit=1, nb=8, bsrc="l1", minblocks=1, acc="h2x8")
    assert sp.check(cfg, one, DEFAULT_LIMITS) is not None  # 8 columns for N = 1
    assert fam.adapt(cfg, "fp16", one, DEFAULT_LIMITS) == {**cfg, "nb": 1, "acc": "f32"}  # nb 1 has no half2
    three = problem_env(4096, 4096, 3, 8_000_000, "fp16")
    got = fam.adapt(cfg, "fp16", three, DEFAULT_LIMITS)
    assert got == {**cfg, "nb": 4, "bsrc": "smem"}  # the widest block that holds N = 3, B staged (N % 4 != 0)
    assert sp.check({**cfg, "ksplit": 8, "warps": 8}, one, DEFAULT_LIMITS) is not None  # no such value anyway
    short = problem_env(1024, 500, 8, 10, "fp16")
    assert sp.check({**cfg, "ksplit": 2}, short, DEFAULT_LIMITS) is not None  # one segment of 512 columns
    assert sp.check({**cfg, "ksplit": 4}, problem_env(1024, 2048, 8, 10, "fp16"), DEFAULT_LIMITS) is None
    wide = problem_env(4096, 14336, 32, 10, "fp16")
    assert sp.check({**cfg, "nb": 32, "rows": 2, "bsrc": "smem"}, wide, DEFAULT_LIMITS) is not None  # 917 KB of B
    assert sp.check({**cfg, "nb": 32, "rows": 2}, wide, DEFAULT_LIMITS) is None
    assert sp.check({**cfg, "nb": 32, "rows": 4}, wide, DEFAULT_LIMITS) is not None  # 128 fp32 sums a lane
    assert "h2x4" not in sp.param("acc").choices("bf16")
    assert not sp.supports("fp32")
    assert all(sp.normalize(kg, "fp16") is not None for kg in sp.known_good)


def test_every_config_renders_for_both_dtypes():
    sp = get_family(FAMILY).space
    n = 0
    for dtype in ("fp16", "bf16"):
        for cfg in sp.enumerate(dtype):
            src = render.render(sp, cfg, dtype)
            assert "spmm_kernel(" in src and f"rows={cfg['rows']} " in src
            assert ("cvt.rn.bf16.f32" in src) == (dtype == "bf16") and ("fma.rn.f16x2" in src) == (cfg["acc"] != "f32")
            n += 1
    assert n == sp.size("fp16") + sp.size("bf16") > 1000


def _covering_sample():
    """Each (rows, nb) at its register extremes, both accumulations, both B sources, split K, two blocks an SM."""
    out = []
    for rows, nb in [(1, 1), (8, 1), (1, 8), (4, 8), (8, 4), (2, 32), (4, 16)]:
        for acc in ("f32", "h2x8"):
            if acc != "f32" and nb == 1:
                continue
            out.append(("fp16", dict(rows=rows, warps=8, ksplit=1, nb=nb, bsrc="l1", minblocks=1, acc=acc)))
    out += [("bf16", dict(rows=4, warps=8, ksplit=1, nb=8, bsrc="l1", minblocks=1, acc="f32")),
            ("bf16", dict(rows=1, warps=16, ksplit=4, nb=4, bsrc="smem", minblocks=1, acc="f32")),
            ("fp16", dict(rows=2, warps=8, ksplit=4, nb=8, bsrc="smem", minblocks=1, acc="h2x4")),
            ("fp16", dict(rows=4, warps=4, ksplit=2, nb=8, bsrc="l1", minblocks=2, acc="h2x8")),
            ("fp16", dict(rows=1, warps=16, ksplit=1, nb=2, bsrc="smem", minblocks=2, acc="f32"))]
    return out


def test_a_covering_sample_compiles_with_nvcc_without_spills():
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    env = problem_env(4096, 4096, 32, 1, "fp16")
    cases = [(dt, c) for dt, c in _covering_sample() if sp.check(c, {**env, "dtype": dt}) is None]
    assert len(cases) >= 14
    for dt, c in cases:
        assert sp.normalize(c, dt) == c, c
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda x: sat_compile.nvcc_check(render.render(sp, x[1], x[0]), arch="sm_90"), cases))
    for (dt, cfg), rep in zip(cases, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        assert " 0 bytes spill stores" in rep, (dt, cfg, rep)
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        assert regs <= (255 if cfg["minblocks"] == 1 else 65536 // (2 * 32 * cfg["warps"])), (cfg, regs)


# ---- on the GPU -------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_correct_on_edge_cases(dtype):
    """Poisoned C, fresh random B, float64 reference: empty rows, a dense row, K % 32 != 0, K = 1, density 0.7,
    N = 1, 3, 8, 13, 16, 17, 32 (column blocks and B in shared memory for N % nb != 0), a spread of feasible configs."""
    from nk_check import check_kn
    sp = get_family(FAMILY).space

    def configs(a, n):
        env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
        feas = list(sp.feasible(dtype, env, DEFAULT_LIMITS))
        cfgs = feas[:: max(1, len(feas) // 6)] + sp.defaults(dtype, env, DEFAULT_LIMITS)
        if (np.diff(a.indptr) > 0).sum() == 1 and a.nnz > 1000:
            # one dense row: C is one dot product of thousands of terms that cancel, and half2 sums of 4-8 chunks
            # (128-256 products rounded to fp16) land above the normwise 2e-3 there (2.67e-3 measured on the H200,
            # session 15); the tuner's own verification rejects them on such a matrix, as it should
            cfgs = [c for c in cfgs if c.get("acc", "f32") == "f32"]
        assert cfgs, (a.shape, n)
        return cfgs
    checked = check_kn(FAMILY, dtype, adversarial(), configs, (1, 3, 8, 13, 16, 17, 32),
                       2e-3 if dtype == "fp16" else 1e-2)
    assert checked > 300


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_known_good_configs_on_the_llm_shapes(dtype):
    """The suite's layer shapes at d 0.5 / 0.3 (K of 4096, 11008, 14336; short M with split K), N = 1, 8, 16, 32."""
    from nk_check import check_kn
    sp = get_family(FAMILY).space
    cases = {f"{m}x{k}_d{d}": random_matrix(m, k, d, "uniform", 3)
             for m, k, d in [(4096, 4096, 0.5), (1024, 4096, 0.3), (4096, 11008, 0.5), (512, 14336, 0.2)]}

    def configs(a, n):
        env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
        got = sp.defaults(dtype, env, DEFAULT_LIMITS)
        for kg in sp.known_good:  # adapted to N like lookup does
            ad = get_family(FAMILY).adapt(kg, dtype, env, DEFAULT_LIMITS)
            if ad is not None and ad not in got:
                got.append(ad)
        assert got, (a.shape, n)
        return got
    checked = check_kn(FAMILY, dtype, cases, configs, (1, 8, 16, 32), 2e-3 if dtype == "fp16" else 1e-2)
    # bf16 has no half2 accumulation: its h2x known-good configs adapt to f32 ones already in the list (H200: 32 distinct)
    assert checked >= (40 if dtype == "fp16" else 30)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_exactly_48_kib_of_b_plus_the_split_sums_launches(dtype):
    """B's column block of exactly 48 KiB (K 700 -> 768 rows x nb 32 halves) plus ksplit 2's static partial sums: over
    the 48 KiB a block gets without opting in, so the build must opt in (session 22: the edge-case test's powerlaw
    300x700 at N = 200 failed to launch, as it reserved only above 48 KiB of dynamic memory)."""
    from cupy.cuda import driver
    from nk_check import check_kn
    from sparse_autotune.device.compile import function_ptr
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    cfg = {"rows": 1, "warps": 4, "ksplit": 2, "nb": 32, "bsrc": "smem", "minblocks": 2, "acc": "f32"}
    a = random_matrix(300, 700, 0.05, "powerlaw", 2)
    k = build_kernel(DeviceCSR(a, dtype), FAMILY, cfg, dtype)
    static = driver.funcGetAttribute(driver.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function_ptr(k.fn))
    assert k.smem_bytes() == 48 * 1024 and static > 0  # the case: neither alone is over 48 KiB, both together are
    checked = check_kn(FAMILY, dtype, {"powerlaw_300x700": a}, lambda a, n: [cfg], (200, 32),
                       2e-3 if dtype == "fp16" else 1e-2)
    assert checked == 2
