"""csr_gemv (N <= 8: GEMV and tiny batches): the chunked CSR layout round-trips to A, its padding, the space's
constraints and adaptation to N, rendering (fp16 and bf16) and nvcc; on a GPU, against float64 on edge cases."""
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

FAMILY = "csr_gemv"
# the CPU emulations' dtype x layout grid: the diagonal in the default run, the other half in the heavy tier
# (pytest -m heavy; CI's time is short)
EMU_GRID = [("fp16", "kn"), ("bf16", "nk"), pytest.param("bf16", "kn", marks=pytest.mark.heavy),
            pytest.param("fp16", "nk", marks=pytest.mark.heavy)]


def host():
    return get_family(FAMILY).host


_SHUFFLED: dict[str, list[dict]] = {}


def sample_feasible(dtype: str, env: dict, k: int, seed: str, pred=None) -> list[dict]:
    """k feasible configs (pred(config) true, if given), the first ones of the space's enumeration in a fixed random
    order: cheaper than listing all ~30k feasible configs for every case and N."""
    import random
    sp = get_family(FAMILY).space
    if dtype not in _SHUFFLED:
        cfgs = list(sp.enumerate(dtype))
        random.Random(f"csr_gemv/{dtype}").shuffle(cfgs)
        _SHUFFLED[dtype] = cfgs
    cfgs = _SHUFFLED[dtype]
    start = random.Random(seed).randrange(len(cfgs))
    out = []
    for i in range(len(cfgs)):
        c = cfgs[(start + i) % len(cfgs)]
        if (pred is None or pred(c)) and sp.check(c, env, DEFAULT_LIMITS) is None:
            out.append(c)
            if len(out) == k:
                break
    return out


def is_new(c: dict) -> bool:
    """A config using split, pf or minb (issue 16)."""
    return c.get("split", 1) > 1 or c.get("pf", 0) == 1 or c.get("minb", 1) > 1


def adversarial():
    rng = np.random.default_rng(5)

    def vals(a):
        a = sps.csr_matrix(a)
        a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
        return a

    out = {}
    a = sps.random(40, 70, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    out["empty_rows"] = vals(a)
    out["residues_37x53"] = vals(sps.random(37, 53, density=0.3, format="csr", random_state=3))
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = vals(a)
    out["density_0.7"] = vals(sps.random(64, 96, density=0.7, format="csr", random_state=4))
    d = np.zeros((30, 257))
    d[7] = 1.0  # one full row among empty ones
    out["one_dense_row"] = vals(sps.csr_matrix(d))
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["rows_of_8"] = vals(sps.csr_matrix(np.kron(np.eye(4), np.ones((1, 8)))))  # exactly one chunk a row
    return out


# ---- layout -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_round_trips_to_a(dtype):
    h = host()
    for name, a in adversarial().items():
        chunk_ptr, vals, idx = h.build(a, dtype)
        want = h.value_bits(a.toarray().ravel(), dtype).reshape(a.shape)
        np.testing.assert_array_equal(h.decode(chunk_ptr, vals, idx, a.shape), want, err_msg=name)
        lens = np.diff(a.indptr)
        assert (np.diff(chunk_ptr) == -(-lens // 8)).all()  # each row padded to whole chunks, no more
        assert len(vals) == len(idx) == max(8, 8 * int(chunk_ptr[-1])) and len(vals) % 8 == 0
        for r in range(a.shape[0]):  # the padding: weight 0 at one of the row's own columns (a row of B it reads)
            span = slice(int(chunk_ptr[r]) * 8, int(chunk_ptr[r + 1]) * 8)
            own = set(a.indices[a.indptr[r]:a.indptr[r + 1]].tolist())
            assert set(idx[span].tolist()) <= own
            assert np.count_nonzero(vals[span]) == np.count_nonzero(a.data[a.indptr[r]:a.indptr[r + 1]])


def _quarter_warp_conflicts(chunk_ptr, idx, p):
    """The mean, over the loads of element e of p aligned chunks of a row (one quarter warp's 16-byte B-row loads at
    nb 8 / 16 / 32 for p 8 / 4 / 2), of the most distinct rows of B in one bank group (k mod p): 1 = conflict-free."""
    worst = []
    for r in range(len(chunk_ptr) - 1):
        c0, c1 = int(chunk_ptr[r]), int(chunk_ptr[r + 1])
        for g in range(c0, c1, p):
            for e in range(8):
                ks = np.unique(idx[[(c * 8 + e) for c in range(g, min(g + p, c1))]].astype(np.int64))
                worst.append(np.bincount(ks % p, minlength=p).max())
    return float(np.mean(worst))


def test_layout_deals_residues_so_quarter_warp_loads_do_not_conflict():
    """Aligned groups of 8 / 4 / 2 chunks read rows of B of distinct residues mod 8 / 4 / 2 at each element (bank
    groups of B in shared memory), instead of CSR's column order (random residues: ~2.5-way conflicts at 8)."""
    from scripts import load_script
    banks = load_script("bench/csr_gemv_banks.py", "csr_gemv_banks")
    h = host()
    a = sps.random(64, 4096, density=0.1, format="csr", random_state=2, dtype=np.float32)
    chunk_ptr, vals, idx = h.build(a)
    csr = banks.csr_order(a, chunk_ptr)  # the same chunks in CSR order (what the layout was before session 20)
    for p, bound in ((8, 1.3), (4, 1.2), (2, 1.1)):
        dealt, plain = _quarter_warp_conflicts(chunk_ptr, idx, p), _quarter_warp_conflicts(chunk_ptr, csr, p)
        assert dealt <= bound and dealt < 0.8 * plain, (p, dealt, plain)
    # rows short of a group: still every nonzero once (the round trip above), and a 16-nonzero row of 8 residues
    # twice fills its two chunks with 8 distinct residues at each element
    row = sps.csr_matrix((np.ones(16, np.float32), (np.zeros(16, int), np.arange(16) * 3)), shape=(1, 64))
    chunk_ptr, vals, idx = h.build(row)
    for e in range(8):
        assert idx[e] % 8 != idx[8 + e] % 8


def test_layout_refuses_wide_k_and_keeps_the_matrix():
    h = host()
    with pytest.raises(ValueError):
        h.build(sps.csr_matrix((2, 70000), dtype=np.float32))
    a = sps.csr_matrix((np.array([1.0, 2.0]), np.array([3, 3]), np.array([0, 2])), shape=(1, 8))
    h.build(a)
    assert a.nnz == 2 and list(a.data) == [1.0, 2.0]  # duplicates summed on a copy


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    for n in (1, 3, 8, 20):
        checked = check_launch_matches_signature(FAMILY, dtype, a, n)
        assert checked > 0 or not get_family(FAMILY).space.supports(dtype)


def test_geometry_column_blocks_and_shared_memory():
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(lanes=16, warps=8, nb=4, iters=2, unroll=2)
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    assert h.geometry(k, 3) == ((-(-1000 // 32), 1), (256,))
    assert h.geometry(k, 9) == ((-(-1000 // 32), 3), (256,))  # N > nb: column blocks
    assert h.smem_bytes(k) == 3000 * 4 * 2


def test_constraints_and_adapt():
    fam = get_family(FAMILY)
    sp = fam.space
    one = problem_env(4096, 4096, 1, 1_600_000, "fp16")
    cfg = dict(lanes=16, warps=8, nb=8, iters=2, unroll=2)
    assert sp.check(cfg, one, DEFAULT_LIMITS) is not None  # 8 columns for N = 1
    got = fam.adapt(cfg, "fp16", one, DEFAULT_LIMITS)
    # configs stored before bsrc / acc / pf / minb / bif read as before (split is inactive below nb 16)
    assert got == {**cfg, "nb": 1, "bsrc": "smem", "acc": "f32", "pf": 0, "minb": 1, "bif": 1, "fill": 0, "bcopy": 1}
    assert sp.check(cfg, problem_env(4096, 70000, 8, 10, "fp16"), DEFAULT_LIMITS) is not None  # 16-bit indices
    smem = sp.normalize({**cfg, "bsrc": "smem", "acc": "f32"}, "fp16")  # (normalized: ks 1, not left out)
    assert sp.check(smem, problem_env(4096, 16384, 8, 10, "fp16"), DEFAULT_LIMITS) is not None  # B over 227 KB
    # B through L1 needs no shared memory, but full aligned column blocks
    l1 = {**cfg, "bsrc": "l1", "acc": "f32", "nb": 16}
    assert sp.check(l1, problem_env(4096, 16384, 16, 10, "fp16"), DEFAULT_LIMITS) is None
    assert sp.check(l1, problem_env(4096, 16384, 24, 10, "fp16"), DEFAULT_LIMITS) is not None
    assert sp.check({**l1, "nb": 1, "acc": "h2x4"}, problem_env(4096, 4096, 1, 10, "fp16"), DEFAULT_LIMITS) is not None
    assert "h2x4" in sp.param("acc").choices("bf16")  # fma.rn.bf16x2 (issue 16; before: f32 sums only for bf16)


def test_smem_only_where_b_is_copied():
    h = host()
    a = random_matrix(100, 3000, 0.1, "uniform", 1)
    base = dict(lanes=8, warps=8, nb=16, iters=2, unroll=2, acc="f32")
    assert h.smem_bytes(fake_kernel(FAMILY, {**base, "bsrc": "smem"}, "fp16", a)) == 3000 * 16 * 2
    assert h.smem_bytes(fake_kernel(FAMILY, {**base, "bsrc": "l1"}, "fp16", a)) == 0


@pytest.mark.parametrize("layout", ["kn", "nk"])
def test_new_options_compile_with_nvcc(layout):
    """nb 16 / 32, B through L1, half2 sums, and both operand layouts (nk: the bias parameter after C)."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cases = [("fp16", dict(lanes=8, warps=16, nb=16, iters=4, unroll=2, bsrc="smem", acc="f32")),
             ("fp16", dict(lanes=8, warps=8, nb=16, iters=2, unroll=2, bsrc="l1", acc="h2x4")),
             ("bf16", dict(lanes=16, warps=8, nb=32, iters=1, unroll=1, bsrc="l1", acc="f32")),
             ("fp16", dict(lanes=4, warps=4, nb=8, iters=2, unroll=4, bsrc="smem", acc="h2x4"))]
    srcs = [render.render(sp, c, dt, layout=layout) for dt, c in cases]
    for src in srcs:
        assert ("const unsigned short* __restrict__ bias" in src) == (layout == "nk")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda s: sat_compile.nvcc_check(s, arch="sm_90"), srcs))
    for (dt, cfg), rep in zip(cases, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        assert " 0 bytes spill stores" in rep or "spill" not in rep, (cfg, rep)


def test_every_config_renders_for_bf16_too():
    """Every 13th config of the space (90112 with split / pf / minb / bif; 13 is prime to every parameter's count)."""
    sp = get_family(FAMILY).space
    n = 0
    cfgs = list(sp.enumerate("fp16"))
    for cfg in cfgs[::13]:
        src = render.render(sp, cfg, "bf16")
        assert "cvt.rn.bf16.f32" in src and "cvt.f32.f16" not in src and "<< 16" in src
        n += 1
    assert n == len(cfgs[::13]) > 1000


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_configs_compile_with_nvcc(dtype):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = [dict(lanes=l, warps=w, nb=nb, iters=it, unroll=u)
            for l, w, nb, it, u in [(4, 2, 1, 1, 1), (8, 4, 2, 2, 2), (16, 8, 4, 4, 4), (32, 8, 8, 8, 2)]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype), arch="sm_90"), cfgs))
    for cfg, rep in zip(cfgs, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 64, (cfg, rep)


# ---- on the GPU -------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_correct_on_edge_cases():
    """Poisoned C, fresh random B, float64 reference, N = 1, 3, 8 and column blocks (N = 13, 127)."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    sp = get_family(FAMILY).space
    checked = 0
    for name, a in adversarial().items():
        a = sps.csr_matrix(a, copy=True)
        a.data = a.data.astype(np.float16).astype(np.float32)
        dev = DeviceCSR(a, "fp16")
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in (1, 3, 8, 13, 127):
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, "fp16")
            cfgs = sample_feasible("fp16", env, 12, f"{name}/{n}")
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, "fp16"), cfgs))
            for k in kernels:
                b = cp.asarray(np.random.default_rng(checked).standard_normal((a.shape[1], n)).astype(np.float16))
                c = cp.empty((a.shape[0], n), dtype=cp.float16)
                assert check(lambda: k(b, c), c, reference(a64, b), "fp16") <= 2e-3, (name, n, k.config)
                checked += 1
    assert checked > 300


# ---- issue 16: split (lanes sharing a B row), pf (the next chunks a group ahead), minb (a register cap) -----------

NEW = [dict(lanes=8, warps=4, nb=16, iters=1, unroll=1, bsrc="l1", acc="h2x4", split=2, pf=1, minb=8),
       dict(lanes=32, warps=2, nb=16, iters=2, unroll=2, bsrc="smem", acc="f32", split=2, pf=1, minb=4),
       dict(lanes=4, warps=2, nb=32, iters=2, unroll=1, bsrc="l1", acc="f32", split=4, pf=0, minb=1),
       dict(lanes=16, warps=4, nb=32, iters=1, unroll=2, bsrc="smem", acc="h2x4", split=2, pf=1, minb=2),
       dict(lanes=8, warps=2, nb=8, iters=4, unroll=2, bsrc="smem", acc="f32", pf=1, minb=1),
       dict(lanes=16, warps=4, nb=1, iters=2, unroll=1, bsrc="smem", acc="f32", pf=1, minb=8)]


def test_split_pf_minb_in_the_space():
    sp = get_family(FAMILY).space
    env = problem_env(4096, 4096, 32, 1_600_000, "fp16")
    ok = dict(lanes=8, warps=4, nb=16, iters=1, unroll=1, bsrc="l1", acc="h2x4", split=2, pf=1, minb=8)
    assert sp.check(ok, env, DEFAULT_LIMITS) is None
    assert sp.check({**ok, "split": 4}, env, DEFAULT_LIMITS) is not None  # a piece narrower than 8 columns
    assert sp.check({**ok, "nb": 32, "split": 4}, env, DEFAULT_LIMITS) is None
    assert sp.check({**ok, "warps": 16, "minb": 8}, env, DEFAULT_LIMITS) is not None  # 128 warps an SM
    assert "split" not in sp.normalize({**ok, "nb": 8}, "fp16")  # inactive below nb 16
    old = dict(lanes=8, warps=8, nb=16, iters=2, unroll=2, bsrc="l1", acc="h2x4")  # a config stored before them
    assert sp.normalize(old, "fp16") == {**old, "split": 1, "pf": 0, "minb": 1}
    n16 = sp.defaults("fp16", problem_env(14336, 4096, 16, 2_936_013, "fp16"), DEFAULT_LIMITS)
    assert any(c.get("split") == 2 and c["pf"] == 1 and c["minb"] == 8 for c in n16)  # the tuner tries them first
    n32 = sp.defaults("bf16", problem_env(11008, 4096, 32, 2_254_438, "bf16"), DEFAULT_LIMITS)
    assert any(c.get("split") == 4 and c["pf"] == 1 for c in n32)


def test_split_pf_minb_render():
    sp = get_family(FAMILY).space
    base = dict(lanes=8, warps=4, nb=16, iters=1, unroll=1, bsrc="l1", acc="h2x4")
    old = render.render(sp, base, "fp16")
    assert "__launch_bounds__(32 * WARPS)\n" in old and "qv[" not in old and "bb[8]" not in old
    assert "#define SPLIT 1" in old and "#define CW 16" in old
    new = render.render(sp, {**base, "split": 2, "pf": 1, "minb": 8}, "fp16")
    assert "__launch_bounds__(32 * WARPS, 8)" in new and "qv[1]" in new and "bb[8][4]" in new
    assert "#define SPLIT 2" in new and "#define CW 8" in new and "off >= SPLIT" in new
    wide = render.render(sp, {**base, "nb": 32, "split": 2, "pf": 1}, "fp16")
    assert "#define CW 16" in wide and "bb[8]" not in wide  # 16 columns a lane: the rows loaded as needed


def _nvcc_sm90(sp, jobs, layout: str) -> list[tuple]:
    """(dtype, config, registers, spill-store bytes, ptxas report) of each (dtype, config) job rendered for `layout`
    and compiled with nvcc for sm_90 (4 threads); each must have compiled."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reps = list(pool.map(lambda j: sat_compile.nvcc_check(render.render(sp, j[1], j[0], layout=layout),
                                                              arch="sm_90"), jobs))
    out = []
    for (dt, cfg), rep in zip(jobs, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        out.append((dt, cfg, int(re.search(r"Used (\d+) registers", rep).group(1)),
                    int(re.search(r"(\d+) bytes spill stores", rep).group(1)), rep))
    return out


@pytest.mark.parametrize("layout", ["kn", pytest.param("nk", marks=pytest.mark.heavy)])  # CI's time: nk heavy
def test_split_pf_minb_compile_with_nvcc(layout):
    """The new known-good configs and NEW (each in fp16 or bf16, in turn): nvcc compiles them; the register cap holds;
    in kn through L1 with unroll 1 nothing spills (nk through L1 reads x element by element: a few bytes of spill are
    allowed there)."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    jobs = []
    for i, cfg in enumerate([kg for kg in sp.known_good if kg.get("pf") == 1] + NEW):
        for dt in (("fp16", "bf16") if i % 2 else ("bf16", "fp16")):  # each config once, the dtypes in turn
            c = sp.normalize(cfg, dt)
            if c is not None:
                jobs.append((dt, c))
                break
    assert len(jobs) >= 14 and {dt for dt, _ in jobs} == {"fp16", "bf16"}
    for dt, cfg, regs, spill, rep in _nvcc_sm90(sp, jobs, layout):
        assert regs <= 65536 // (32 * cfg["warps"] * cfg["minb"]), (dt, cfg, rep)
        if layout == "kn" and cfg["bsrc"] == "l1" and cfg["unroll"] == 1:
            assert spill == 0, (dt, cfg, rep)


def _emulate(cfg: dict, dtype: str, a, n: int, layout: str, seed: int = 0):
    """C (kn) or y (nk, bias None) from the rendered kernel run on the CPU (tests/cuda_host.py), and the float64
    reference of the rounded operands."""
    return _emulate_runs(cfg, dtype, a, n, layout, (seed,))[0][0]


EMU_SMS = 3  # the SMs the emulations' fill configs spread their row blocks over (a 200-row matrix: 17 of 32 warps)


def _emulate_runs(cfg: dict, dtype: str, a, n: int, layout: str, seeds, reverse: bool = False, bias: bool = False):
    """([(got, ref) per launch: a fresh B from each seed, C poisoned again], the counters after the last launch, or
    None where ks == 1): the rendered kernel launched once per seed on the CPU, with its blocks in grid order or
    reversed; ks > 1 with one workspace and one set of counters for all the launches (as on the device). bias (nk):
    a random bias, in the reference too."""
    import ctypes

    from cuda_host import HostKernel
    from sparse_autotune.core.problem import as_float, host_values, storage
    sp = get_family(FAMILY).space
    h = host()
    nk = layout == "nk"
    ks = cfg.get("ks", 1)
    ints = "*(int*)args[6], *(int*)args[7], *(int*)args[8]" if nk else "*(int*)args[5], *(int*)args[6], *(int*)args[7]"
    tail = ""
    if ks > 1:
        at = 9 if nk else 8
        tail = f", *(float**)args[{at}], *(int**)args[{at + 1}]"
    call = ("spmm_kernel(*(const int**)args[0], *(const uint4**)args[1], *(const uint4**)args[2], "
            "*(const unsigned short**)args[3], *(unsigned short**)args[4], "
            + ("*(const unsigned short**)args[5], " if nk else "") + ints + tail + ")")
    kern = HostKernel(render.render(sp, cfg, dtype, layout=layout), call)
    a = sps.csr_matrix(a, copy=True)
    a.data = host_values(a.data, {"fp16": np.float16, "bf16": np.uint16}[dtype])
    chunk_ptr, vals, idx = h.build(a, dtype, ks)
    m, k = a.shape
    w = h.launch_warps(cfg, m, EMU_SMS)  # fill 1: fewer warps than configured (EMU_SMS makes it bite on small M)
    gx, gy = -(-m // h.rows_per_block(cfg, w)) * ks, max(1, -(-n // cfg["nb"]))
    smem = h.slice_width(k, ks) * cfg["nb"] * 2 if cfg["bsrc"] == "smem" else 0
    ws = counters = None
    if ks > 1:
        nws, ncnt = h.workspace_shape(cfg, m, n)
        ws, counters = np.full(nws, np.nan, dtype=np.float32), np.zeros(ncnt, dtype=np.int32)
    bv = None
    if nk and bias:
        bv = np.ascontiguousarray(storage(np.random.default_rng(12345).standard_normal(m).astype(np.float32), dtype)
                                  ).view(np.uint16)
    runs = []
    for seed in seeds:
        b = np.ascontiguousarray(storage(np.random.default_rng(seed).standard_normal((n, k) if nk else (k, n))
                                         .astype(np.float32), dtype)).view(np.uint16)
        c = np.full((n, m) if nk else (m, n), 0x7FFF, dtype=np.uint16)  # NaN in fp16 and bf16: an unwritten entry shows
        arrays = [np.ascontiguousarray(x) for x in (chunk_ptr, vals, idx, b)] + [c]
        args = [ctypes.c_void_p(x.ctypes.data) for x in arrays]
        if nk:
            args.append(ctypes.c_void_p(0 if bv is None else bv.ctypes.data))
        args += [ctypes.c_int(m), ctypes.c_int(n), ctypes.c_int(k)]
        if ks > 1:
            args += [ctypes.c_void_p(ws.ctypes.data), ctypes.c_void_p(counters.ctypes.data)]
        kern(gx, gy, 32 * w, smem, args, reverse=reverse)
        tofloat = (lambda x: as_float(x.view(np.float16) if dtype == "fp16" else x).astype(np.float64))
        bf = tofloat(b)
        ref = (a.astype(np.float64) @ (bf.T if nk else bf))
        if bv is not None:
            ref = ref + tofloat(bv)[:, None]
        got = tofloat(c)
        runs.append(((got.T if nk else got), ref))
    return runs, counters


@pytest.mark.parametrize("dtype,layout", EMU_GRID)
def test_split_pf_minb_correct_in_cpu_emulation(dtype, layout):
    """The rendered kernel itself (its lane mapping, prefetch loop, shuffles, writes) run on the CPU with emulated
    warps (tests/cuda_host.py) against float64: NEW's configs on empty rows, a dense row, residues of M and K, rows
    of exactly one chunk, N = 1, 3, 8, 13, 16, 17, 32 where the config is feasible."""
    from cuda_host import gxx_path
    if gxx_path() is None:
        pytest.skip("g++ not found")
    from sparse_autotune.core.problem import TOLERANCE
    sp = get_family(FAMILY).space
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row",
                                                             "rows_of_8", "all_zero", "density_0.7")}
    runs = []
    for cfg in NEW:
        c = sp.normalize(cfg, dtype)
        if c is None:
            continue
        for name, a in cases.items():
            for n in (1, 3, 8, 13, 16, 17, 32):
                env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype, layout)
                if sp.check(c, env, DEFAULT_LIMITS) is None and n <= 4 * c["nb"]:  # <= 4 column blocks
                    runs.append((c, name, a, n))
    assert len(runs) >= 30

    def one(r):
        c, name, a, n = r
        return r, _emulate(c, dtype, a, n, layout, seed=n)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, runs))
    for (c, name, a, n), (got, ref) in results:
        assert np.isfinite(got).all(), (name, n, c)
        den = np.linalg.norm(ref)
        err = np.linalg.norm(got - ref) / den if den else np.abs(got).max()
        assert err <= TOLERANCE[dtype], (name, n, c, err)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_split_pf_minb_correct_on_edge_cases_gpu(dtype):
    """kn on the GPU: configs with split > 1, pf 1 or minb > 1 (a sample of each case's feasible ones, and the
    known-good ones) against float64 on the edge cases and a 1001 x 3001 matrix (M, K not multiples of any tile),
    N = 1, 3, 8, 13, 16, 17, 32; poisoned C."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.core.problem import TOLERANCE, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    sp = get_family(FAMILY).space
    cases = {**adversarial(), "uniform_1001x3001": random_matrix(1001, 3001, 0.05, "uniform", 9)}
    checked = 0
    for name, a in cases.items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data, {"fp16": np.float16, "bf16": np.uint16}[dtype])
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in (1, 3, 8, 13, 16, 17, 32):
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            cfgs = sample_feasible(dtype, env, 4, f"{name}/{n}/{dtype}", is_new)
            cfgs += [c for c in sp.defaults(dtype, env, DEFAULT_LIMITS) if c["pf"] == 1 and c not in cfgs][:2]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, dtype), cfgs))
            b = cp.asarray(storage(np.random.default_rng(n).standard_normal((a.shape[1], n)).astype(np.float32), dtype))
            c_out = cp.empty((a.shape[0], n), dtype=b.dtype)
            ref = reference(a64, b)
            for k in kernels:
                assert check(lambda: k(b, c_out), c_out, ref, dtype) <= TOLERANCE[dtype], (name, n, k.config)
                checked += 1
    assert checked >= 150


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_split_pf_minb_nk_correct_on_edge_cases_gpu(dtype):
    """nk (nn.Linear) natively through the project's launch path, with a nonzero bias and without: configs with the
    new options on empty rows, residues and a dense row, N = 1, 3, 16, 17, 32; poisoned y."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.core.problem import TOLERANCE, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    checked = 0
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row")}
    for name, a in cases.items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data, {"fp16": np.float16, "bf16": np.uint16}[dtype])
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        m, k = a.shape
        for n in (1, 3, 16, 17, 32):
            env = problem_env(m, k, n, a.nnz, dtype, "nk")
            cfgs = sample_feasible(dtype, env, 4, f"nk/{name}/{n}/{dtype}", is_new)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, dtype, layout="nk"), cfgs))
            rng = np.random.default_rng(n)
            x = cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), dtype))
            bv = rng.standard_normal(m).astype(np.float32)
            bias = cp.asarray(storage(np.where(np.abs(bv) < 0.25, np.float32(0.5), bv), dtype))
            y = cp.empty((n, m), dtype=x.dtype)
            with_bias, without = reference(a64, x, "nk", bias), reference(a64, x, "nk")
            for kern in kernels:
                assert kern.layout == "nk"
                assert check(lambda: kern(x, y, bias), y, with_bias, dtype) <= TOLERANCE[dtype], (name, n, kern.config)
                assert check(lambda: kern(x, y), y, without, dtype) <= TOLERANCE[dtype], (name, n, kern.config)
                checked += 1
    assert checked >= 40


# ---- issue 16: bif (B chunks in flight) and bf16 half2 sums (fma.rn.bf16x2) -----------------------------------

BIF = [dict(lanes=32, warps=4, nb=16, iters=1, unroll=2, bsrc="l1", acc="h2x4", split=2, pf=1, minb=4, bif=2),
       dict(lanes=8, warps=2, nb=32, iters=2, unroll=2, bsrc="l1", acc="h2x4", split=4, pf=0, minb=1, bif=2),
       dict(lanes=16, warps=2, nb=16, iters=2, unroll=4, bsrc="smem", acc="f32", split=2, pf=1, minb=1, bif=2),
       dict(lanes=4, warps=2, nb=4, iters=2, unroll=4, bsrc="smem", acc="h2x4", pf=1, minb=1, bif=2),
       dict(lanes=16, warps=4, nb=1, iters=1, unroll=2, bsrc="smem", acc="f32", pf=0, minb=2, bif=2),
       dict(lanes=32, warps=2, nb=8, iters=1, unroll=2, bsrc="l1", acc="f32", pf=1, minb=2, bif=2),
       dict(lanes=8, warps=4, nb=16, iters=1, unroll=1, bsrc="l1", acc="h2x4", split=2, pf=1, minb=8)]  # bf16: half2


def uses_bif_or_bf16_h2(c: dict, dtype: str) -> bool:
    return c.get("bif", 1) > 1 or (dtype == "bf16" and c["acc"] == "h2x4")


def test_bif_in_the_space():
    sp = get_family(FAMILY).space
    env = problem_env(4096, 4096, 16, 1_677_722, "fp16")
    kg = dict(lanes=32, warps=4, nb=16, iters=1, unroll=2, bsrc="l1", acc="h2x4", split=2, pf=1, minb=4, bif=2)
    assert sp.normalize(kg, "fp16") == kg and sp.check(kg, env, DEFAULT_LIMITS) is None
    assert sp.normalize(kg, "bf16") == kg  # bf16 has half2 sums now
    assert "bif" not in sp.normalize({**kg, "unroll": 1}, "fp16")  # inactive: one chunk a group
    assert "bif" not in sp.normalize({**kg, "split": 1}, "fp16")  # inactive: 16 columns a lane (8 registers a row)
    assert "bif" in sp.normalize({**kg, "nb": 8}, "fp16")  # split inactive below nb 16: the lane reads 8 columns
    assert sp.normalize({**kg, "bif": 4}, "fp16") is None
    # configs stored before bif read as bif 1, and render without any of its code
    old = {k: v for k, v in kg.items() if k != "bif"}
    assert sp.normalize(old, "fp16") == {**old, "bif": 1}
    src = render.render(sp, sp.normalize(old, "fp16"), "fp16")
    assert "fma_chunk(pv[u]" in src and "b_rows" not in src and "fma_rows" not in src and " bif=1" in src
    for dt in ("fp16", "bf16"):
        got = sp.defaults(dt, env, DEFAULT_LIMITS)
        # one bif 2 known-good (N = 16; the session-15 sweep found the others no faster than their bif 1 twins)
        assert sum(c.get("bif") == 2 for c in got) == 1, dt
        n32 = sp.defaults(dt, problem_env(11008, 4096, 32, 2_254_438, dt), DEFAULT_LIMITS)
        # two from session 15, one from session 31 (a warp a row through L1, first below 8192 rows)
        assert sum(c.get("bif") == 1 and c["nb"] == 32 and c["unroll"] == 2 for c in n32) == 3, dt


def test_bif_and_bf16_half2_render():
    sp = get_family(FAMILY).space
    kg = dict(lanes=32, warps=4, nb=16, iters=1, unroll=2, bsrc="l1", acc="h2x4", split=2, pf=1, minb=4, bif=2)
    src = render.render(sp, kg, "fp16")
    assert "bif=2" in src.splitlines()[0] and "unsigned int bb[2][8][4];" in src
    assert "b_rows(pi[s + t]" in src and "fma_rows(pv[s + t], bb[t], acc)" in src and "fma_chunk" not in src
    assert "fma.rn.f16x2" in src and "bf16x2" not in src
    bf = render.render(sp, kg, "bf16")
    assert "fma.rn.bf16x2" in bf and "f16x2 " not in bf.replace("bf16x2", "") and "cvt.f32.f16" not in bf
    assert "fma.rn.bf16x2" in render.render(sp, {**kg, "bif": 1, "unroll": 1}, "bf16")
    assert "fma.rn" not in render.render(sp, {**kg, "acc": "f32"}, "bf16")


def _disassembler():
    """nvdisasm (or cuobjdump, which needs nvdisasm) from PATH, $NVDISASM or next to nvcc; None if there is none."""
    import os
    import shutil
    cands = [os.environ.get("NVDISASM"), shutil.which("nvdisasm")]
    nvcc = sat_compile.nvcc_path()
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), "nvdisasm"))
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def _sass(src: str) -> tuple[str, str]:
    """(ptxas -v report, SASS text) of a rendered kernel for sm_90."""
    import subprocess
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        rep = sat_compile.nvcc_check(src, "sm_90", cubin=cubin)
        sass = subprocess.run([_disassembler(), "-c", str(cubin)], capture_output=True, text=True, timeout=60).stdout
    return rep, sass


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_bif_sass_requests_both_chunks_before_the_fmas(dtype):
    """ptxas keeps the order bif asks for: with bif 2 every 16-byte load of the group (2 chunks' values and indices
    a group ahead, and the 16 B rows of the group) comes before the first half2 FMA; with bif 1 (the same config
    otherwise) only the first chunk's 8 rows do. Registers: <= 128 (minb 4), no spill."""
    if sat_compile.nvcc_path() is None or _disassembler() is None:
        pytest.skip("nvcc or nvdisasm not found")
    sp = get_family(FAMILY).space
    kg = dict(lanes=32, warps=4, nb=16, iters=1, unroll=2, bsrc="l1", acc="h2x4", split=2, pf=1, minb=4, bif=2)
    before = {}
    for bif in (1, 2):
        rep, sass = _sass(render.render(sp, {**kg, "bif": bif}, dtype))
        assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 128 and " 0 bytes spill stores" in rep, rep
        ins = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", ln)]
        first = next(i for i, ln in enumerate(ins) if re.search(r"\bHFMA2(\.BF16_V2)? ", ln))
        assert ("HFMA2.BF16_V2" in ins[first]) == (dtype == "bf16")
        before[bif] = sum("LDG.E.128" in ln for ln in ins[:first])
        assert sum("LDG.E.128" in ln for ln in ins) == 24  # 4 A loads in the prologue, 4 a group, 16 B rows a group
    assert before == {1: 16, 2: 24}, before


@pytest.mark.parametrize("layout", ["kn", pytest.param("nk", marks=pytest.mark.heavy)])  # CI's time: nk heavy
def test_bif_compile_with_nvcc(layout):
    """BIF and the bif known-good configs, each in fp16 and bf16: nvcc compiles them within their register cap; kn
    through L1 spills nothing."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    jobs = [(dt, sp.normalize(c, dt)) for c in BIF + [kg for kg in sp.known_good if kg.get("bif", 1) > 1]
            for dt in ("fp16", "bf16")]
    assert all(c is not None for _, c in jobs) and len(jobs) >= 16
    for dt, cfg, regs, spill, rep in _nvcc_sm90(sp, jobs, layout):
        assert regs <= min(255, 65536 // (32 * cfg["warps"] * cfg["minb"])), (dt, cfg, rep)
        if layout == "kn" and cfg["bsrc"] == "l1":
            assert spill == 0, (dt, cfg, rep)


# CI's time: bf16 nk (the bf16 half2 sums) in the default run, the rest of the grid in the heavy tier
@pytest.mark.parametrize("dtype,layout", [("bf16", "nk")] + [pytest.param(d, lay, marks=pytest.mark.heavy) for d, lay in
                                                             (("fp16", "kn"), ("bf16", "kn"), ("fp16", "nk"))])
def test_bif_and_bf16_half2_correct_in_cpu_emulation(dtype, layout):
    """The rendered bif / half2 kernels run on the CPU (tests/cuda_host.py; fma.rn.bf16x2 emulated with one rounding
    to bf16) against float64: empty rows, a full row, K = 53 and 257 (not multiples of 8), rows of one chunk, a
    dense 0.7, all zero; N = 1, 3, 16, 17, 32 where feasible (<= 4 column blocks). bf16 h2x4 must stay within the
    bf16 tolerance (4 products summed in bf16: ~3e-3 relative)."""
    from cuda_host import gxx_path
    if gxx_path() is None:
        pytest.skip("g++ not found")
    from sparse_autotune.core.problem import TOLERANCE
    sp = get_family(FAMILY).space
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row",
                                                             "rows_of_8", "all_zero", "density_0.7")}
    runs, seen = [], set()
    for cfg in BIF:
        c = sp.normalize(cfg, dtype)
        assert c is not None and uses_bif_or_bf16_h2(c, dtype) or dtype == "fp16"
        for name, a in cases.items():
            for n in (1, 3, 16, 17, 32):
                env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype, layout)
                if sp.check(c, env, DEFAULT_LIMITS) is None and n <= 4 * c["nb"]:
                    runs.append((c, name, a, n))
                    seen.add(n)
    assert len(runs) >= 40 and seen == {1, 3, 16, 17, 32}

    def one(r):
        c, name, a, n = r
        return r, _emulate(c, dtype, a, n, layout, seed=n + 100)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, runs))
    for (c, name, a, n), (got, ref) in results:
        assert np.isfinite(got).all(), (name, n, c)
        den = np.linalg.norm(ref)
        err = np.linalg.norm(got - ref) / den if den else np.abs(got).max()
        assert err <= TOLERANCE[dtype], (name, n, c, err)


def test_bf16_half2_error_in_cpu_emulation_is_as_modelled():
    """bf16 h2x4 against bf16 f32 sums on a 64 x 4096 d 0.1 matrix at N = 16 (the emulated kernels): the half2 sums
    add error (4 roundings to bf16 a group of 4 products) but stay near the model's ~3e-3 (bench/drafts/csr_gemv-bif.md),
    well inside the 1e-2 tolerance, and f32 sums stay at the output rounding (~1.7e-3)."""
    from cuda_host import gxx_path
    if gxx_path() is None:
        pytest.skip("g++ not found")
    a = random_matrix(64, 4096, 0.1, "uniform", 2)
    base = dict(lanes=8, warps=4, nb=16, iters=1, unroll=1, bsrc="l1", split=2, pf=1, minb=8)
    errs = {}
    for acc in ("f32", "h2x4"):
        got, ref = _emulate({**base, "acc": acc}, "bf16", a, 16, "kn", seed=1)
        errs[acc] = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 1.0e-3 < errs["f32"] < 2.5e-3, errs
    assert 2.0e-3 < errs["h2x4"] < 5e-3 and errs["h2x4"] > errs["f32"], errs


def _check_on_gpu(dtype: str, layout: str, cases: dict, ns, configs, launches: int = 1, after=None) -> int:
    """Each case on the GPU through the project's launch path (DeviceCSR, build_kernel, Kernel.__call__), each N: the
    kernels of configs(name, env), built in parallel threads, each launched `launches` times in a row with fresh B
    and poisoned output against float64 (nk: with a bias); after(dev, kernel, M, N) follows each launch. Returns the
    launches checked."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.core.problem import TOLERANCE, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    checked = 0
    for name, a in cases.items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data, {"fp16": np.float16, "bf16": np.uint16}[dtype])
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        m, k = a.shape
        for n in ns:
            cfgs = configs(name, problem_env(m, k, n, a.nnz, dtype, layout))
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, dtype, layout=layout), cfgs))
            rng = np.random.default_rng(n)
            bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), dtype)) if layout == "nk" else None
            for kern in kernels:
                assert kern.layout == layout
                for launch in range(launches):
                    b = cp.asarray(storage(rng.standard_normal((n, k) if layout == "nk" else (k, n))
                                           .astype(np.float32), dtype))
                    out = cp.empty((n, m) if layout == "nk" else (m, n), dtype=b.dtype)
                    if layout == "nk":
                        err = check(lambda: kern(b, out, bias), out, reference(a64, b, "nk", bias), dtype)
                    else:
                        err = check(lambda: kern(b, out), out, reference(a64, b), dtype)
                    assert err <= TOLERANCE[dtype], (name, n, launch, kern.config)
                    if after is not None:
                        after(dev, kern, m, n)
                    checked += 1
    return checked


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["kn", "nk"])
def test_bif_and_bf16_half2_correct_on_edge_cases_gpu(dtype, layout):
    """On the GPU through the project's launch path: feasible configs with bif 2 (or, in bf16, half2 sums) sampled
    per case, plus the bif known-good ones where feasible, against float64 on the edge cases and a 1001 x 3001 matrix,
    N = 1, 3, 16, 17, 32; poisoned output; nk with a bias."""
    sp = get_family(FAMILY).space
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row",
                                                             "rows_of_8")}
    cases["uniform_1001x3001"] = random_matrix(1001, 3001, 0.05, "uniform", 9)

    def configs(name, env):
        n = env["N"]
        cfgs = sample_feasible(dtype, env, 3, f"bif/{layout}/{name}/{n}/{dtype}", lambda c: uses_bif_or_bf16_h2(c, dtype))
        return cfgs + [c for c in sp.defaults(dtype, env, DEFAULT_LIMITS) if c.get("bif") == 2 and c not in cfgs][:2]
    checked = _check_on_gpu(dtype, layout, cases, (1, 3, 16, 17, 32), configs)
    assert checked >= 60


# ---- session 20: K slices (ks; bench/drafts/csr_gemv-latency.md) -------------------------------------------------

KS = [dict(lanes=16, warps=16, nb=16, iters=1, unroll=2, bsrc="smem", acc="h2x4", split=2, pf=1, minb=1, bif=1),
      dict(lanes=8, warps=16, nb=16, iters=2, unroll=2, bsrc="smem", acc="h2x4", split=2, pf=1, minb=1, bif=1),
      dict(lanes=16, warps=16, nb=32, iters=1, unroll=2, bsrc="smem", acc="h2x4", split=4, pf=1, minb=1, bif=1),
      dict(lanes=32, warps=2, nb=16, iters=2, unroll=2, bsrc="smem", acc="f32", split=2, pf=1, minb=4),
      dict(lanes=4, warps=2, nb=8, iters=4, unroll=1, bsrc="smem", acc="f32", pf=0, minb=1),
      dict(lanes=8, warps=4, nb=32, iters=2, unroll=4, bsrc="smem", acc="f32", split=2, pf=0, minb=1)]


def ks_cases():
    """The adversarial matrices and K-slice edges: a row with all its nonzeros in one slice (the others empty), K not
    a multiple of ks * 8 (53, 257, 1001), K < 8 * ks (7, 20: slices past K are empty), rows of one chunk."""
    rng = np.random.default_rng(11)

    def vals(a):
        a = sps.csr_matrix(a)
        a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
        return a
    out = {k: v for k, v in adversarial().items()}
    d = np.zeros((24, 200))
    d[3, 150:200] = 1.0  # row 3: every nonzero in the last slices
    d[5, 0:40] = 1.0  # row 5: every nonzero in the first slice
    d[9, ::7] = 1.0
    out["one_slice_rows"] = vals(sps.csr_matrix(d))
    out["k7"] = vals(sps.random(19, 7, density=0.6, format="csr", random_state=6))
    out["k20"] = vals(sps.random(33, 20, density=0.5, format="csr", random_state=7))
    out["k1001"] = vals(sps.random(70, 1001, density=0.08, format="csr", random_state=8))
    return out


def test_ks_in_the_space():
    fam = get_family(FAMILY)
    sp = fam.space
    base = KS[0]
    assert sp.normalize(base, "fp16")["ks"] == 1  # a config stored before ks reads as ks 1
    assert "ks" not in sp.normalize({**base, "bsrc": "l1"}, "fp16")  # inactive through L1
    assert "ks" not in sp.normalize({**base, "nb": 4, "split": 1}, "fp16")  # inactive below nb 8
    assert sp.normalize({**base, "ks": 3}, "fp16") is None
    assert [fam.host.slice_width(k, ks) for k, ks in ((11008, 2), (11008, 4), (14336, 2), (53, 2), (7, 4), (10, 1))] \
        == [5504, 2752, 7168, 32, 8, 10]
    for k, n, nb, fits in ((11008, 16, 16, (2, 4)), (14336, 16, 16, (2, 4)), (4096, 32, 32, (2, 4)),
                           (7264, 16, 16, (1, 2, 4)), (14536, 16, 16, (4,)), (29064, 16, 16, ())):
        env = problem_env(4096, k, n, 10, "fp16")
        ok = tuple(ks for ks in (1, 2, 4) if sp.check(sp.normalize({**base, "nb": nb, "split": nb // 8, "ks": ks},
                                                                   "fp16"), env, DEFAULT_LIMITS) is None)
        assert ok == fits, (k, n, nb, ok)
    # adapt: a larger K keeps the stored column block and takes more K slices; a smaller N narrows it as before
    got = fam.adapt(base, "fp16", problem_env(4096, 11008, 16, 10, "fp16"), DEFAULT_LIMITS)
    assert got == {**sp.normalize(base, "fp16"), "ks": 2}
    got = fam.adapt({**base, "ks": 2}, "fp16", problem_env(4096, 20000, 16, 10, "fp16"), DEFAULT_LIMITS)
    assert got["ks"] == 4 and got["nb"] == 16
    assert fam.adapt({**base, "ks": 2}, "fp16", problem_env(64, 4096, 8, 10, "fp16"), DEFAULT_LIMITS) is None  # split 2
    got = fam.adapt({**KS[4], "ks": 2}, "fp16", problem_env(64, 4096, 3, 10, "fp16"), DEFAULT_LIMITS)
    assert got["nb"] == 4 and "ks" not in got
    # the measured K-slice config (session 22) comes first where B's K x 16 does not fit, and is never first where it
    # fits (there ks 1 is faster: 6.46 against 8.40 us at 4096^2 N=16)
    for dt in ("fp16", "bf16"):
        fits = sp.defaults(dt, problem_env(4096, 4096, 16, 10, dt), DEFAULT_LIMITS)
        over = sp.defaults(dt, problem_env(4096, 11008, 16, 10, dt), DEFAULT_LIMITS)
        assert fits[0].get("ks", 1) == 1 and (over[0]["ks"], over[0]["lanes"], over[0]["warps"]) == (4, 8, 16)
        assert [c.get("ks", 1) for c in over[1:] if c["lanes"] == 8 and c["warps"] == 16].count(4) == 0


def test_ks_geometry_smem_and_workspace():
    h = host()
    a = random_matrix(1000, 11008, 0.01, "uniform", 1)
    cfg = get_family(FAMILY).space.normalize({**KS[0], "ks": 2}, "fp16")
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    assert h.geometry(k, 16) == ((-(-1000 // 32) * 2, 1), (512,))
    assert h.geometry(k, 33) == ((-(-1000 // 32) * 2, 3), (512,))
    assert h.smem_bytes(k) == 5504 * 16 * 2
    assert h.workspace_shape(cfg, 1000, 33) == (32 * 3 * 2 * 32 * 16, 32 * 3)
    assert h.workspace_shape({**cfg, "ks": 1}, 1000, 33) == (4, 1)
    args = k.args(33, object(), object())
    assert len(args) == 10  # ... M, N, K, then the workspace and the counters
    one = fake_kernel(FAMILY, {**cfg, "ks": 1}, "fp16", a)
    assert len(one.args(16, object(), object())) == 8


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_ks_layout_round_trips_to_a(dtype):
    """ks 2 / 4: decode(ks) rebuilds A; (row, slice) runs padded to whole chunks, no more, their columns within the
    slice; each (row, slice) run is exactly build() of the slice's columns (the dealing, the padding column)."""
    h = host()
    for name, a in ks_cases().items():
        a = sps.csr_matrix(a)
        m, k = a.shape
        want = h.value_bits(a.toarray().ravel(), dtype).reshape(a.shape)
        for ks in (2, 4):
            kw = h.slice_width(k, ks)
            assert kw % 8 == 0 and kw * ks >= k
            chunk_ptr, vals, idx = h.build(a, dtype, ks)
            assert len(chunk_ptr) == m * ks + 1 and chunk_ptr[0] == 0
            np.testing.assert_array_equal(h.decode(chunk_ptr, vals, idx, a.shape, ks), want, err_msg=(name, ks))
            assert len(vals) == len(idx) == max(8, 8 * int(chunk_ptr[-1]))
            for s in range(ks):
                lo, hi = min(k, s * kw), min(k, (s + 1) * kw)
                lens = np.diff(a[:, lo:hi].indptr) if hi > lo else np.zeros(m, dtype=np.int64)
                assert (np.diff(chunk_ptr)[s::ks] == -(-lens // 8)).all(), (name, ks, s)
                if hi > lo and lens.sum():
                    cp1, v1, i1 = h.build(sps.csr_matrix(a[:, lo:hi]), dtype)
                    for r in range(m):
                        got = slice(int(chunk_ptr[r * ks + s]) * 8, int(chunk_ptr[r * ks + s + 1]) * 8)
                        ref = slice(int(cp1[r]) * 8, int(cp1[r + 1]) * 8)
                        np.testing.assert_array_equal(idx[got], i1[ref])
                        np.testing.assert_array_equal(vals[got], v1[ref])
                        assert (idx[got] < hi - lo).all()


def test_ks_1_renders_and_lays_out_as_before():
    """ks 1 renders the source of the config without ks (which is the source before ks) but for the header line,
    which states ks=1, with nothing of the slices in it; build(ks=1) and the sliced path with one slice give the same
    arrays as build()."""
    h = host()
    sp = get_family(FAMILY).space
    for cfg in KS + NEW + BIF:
        for dt, lay in (("fp16", "kn"), ("bf16", "nk")):
            c = sp.normalize(cfg, dt)
            src = render.render(sp, c, dt, layout=lay)
            old = render.render(sp, {k: v for k, v in c.items() if k != "ks"}, dt, layout=lay)
            assert " ks=" not in old and "KSL" not in old and "counters" not in old
            if "ks" in c:
                head, _, body = src.partition("\n")
                assert " ks=1" in head and head.replace(" ks=1", "", 1) + "\n" + body == old
            else:
                assert src == old
            if "ks" in c:
                two = render.render(sp, {**c, "ks": 2}, dt, layout=lay)
                assert " ks=2" in two.splitlines()[0] and "#define KSL 2" in two and "atomicAdd(counters" in two
    for name, a in ks_cases().items():
        base = h.build(a)
        for other in (h.build(a, "fp16", 1), h._build_sliced(sps.csr_matrix(a), "fp16", 1)):
            assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(base, other)), name


@pytest.mark.parametrize("layout", ["kn", pytest.param("nk", marks=pytest.mark.heavy)])  # CI's time: nk in the heavy tier
def test_ks_compile_with_nvcc(layout):
    """KS at ks 2 and 4 (fp16 and bf16 in turn): nvcc compiles them for sm_90 within their register cap, no spill
    from 4 warps up (the 64-thread lanes 4 / warps 2 / nb 8 one: ptxas keeps the slice bounds in 4-8 bytes of local
    memory around its unrolled 2-byte copy of B at 46-48 registers, uncapped; a quirk of that corner, allowed)."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    jobs = [(("fp16", "bf16")[(i + j) % 2], sp.normalize({**c, "ks": ks}, "fp16"))
            for i, c in enumerate(KS) for j, ks in enumerate((2, 4))]
    for dt, cfg, regs, spill, rep in _nvcc_sm90(sp, jobs, layout):
        assert regs <= min(255, 65536 // (32 * cfg["warps"] * cfg["minb"])), (dt, cfg, rep)
        assert spill == 0 if cfg["warps"] >= 4 else spill <= 8, (dt, cfg, rep)


def _emulation_runs(configs, cases, dtype, layout, max_blocks):
    """The emulation tests' runs: config q on two cases (sorted names, in turn), each at the first N of 8, 13, 16, 17,
    32 (rotated by q and the case) where the config is feasible within max_blocks column blocks: [(config, name, matrix,
    N, odd)], odd alternating (e.g. the blocks' order reversed on every other run)."""
    sp = get_family(FAMILY).space
    names = sorted(cases)
    runs = []
    for q, c in enumerate(configs):
        for t in range(2):
            name = names[(2 * q + t) % len(names)]
            a = cases[name]
            for d in range(5):
                n = (8, 13, 16, 17, 32)[(q + t + d) % 5]
                env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype, layout)
                if sp.check(c, env, DEFAULT_LIMITS) is None and n <= max_blocks * c["nb"]:
                    runs.append((c, name, a, n, (q + t) % 2 == 1))
                    break
    return runs


# CI's time: the whole grid in the heavy tier (the GPU tests run all four; the default run keeps the slices' reduction
# order, test_ks_sums_the_slices_in_order_whoever_arrives_last)
@pytest.mark.parametrize("dtype,layout", [pytest.param(d, lay, marks=pytest.mark.heavy) for d, lay in
                                          (("fp16", "kn"), ("bf16", "nk"), ("bf16", "kn"), ("fp16", "nk"))])
def test_ks_correct_in_cpu_emulation(dtype, layout):
    """ks 2 / 4 run on the CPU (tests/cuda_host.py) against float64: the blocks in grid order (the last slice last)
    and reversed (slice 0 last), on about half the cases two launches in a row on one workspace (fresh B, poisoned C;
    the counters are back at 0 after the launches), N = 8, 13, 16, 17, 32 where feasible (<= 3 column blocks); nk with a bias."""
    from cuda_host import gxx_path
    if gxx_path() is None:
        pytest.skip("g++ not found")
    from sparse_autotune.core.problem import TOLERANCE
    sp = get_family(FAMILY).space
    cases = ks_cases()
    names = sorted(cases)
    runs = _emulation_runs([sp.normalize({**cfg, "ks": ks}, dtype) for cfg in KS for ks in (2, 4)], cases, dtype,
                           layout, 3)
    assert len(runs) >= 20 and {r[1] for r in runs} == set(names) and {r[3] for r in runs} == {8, 13, 16, 17, 32}
    assert {r[4] for r in runs} == {True, False}

    def one(r):
        c, name, a, n, rev = r
        return r, _emulate_runs(c, dtype, a, n, layout, (n, n + 1) if len(name) % 2 else (n,), reverse=rev, bias=True)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, runs))
    for (c, name, a, n, rev), (launches, counters) in results:
        assert not counters.any(), (name, n, c)
        for got, ref in launches:
            assert np.isfinite(got).all(), (name, n, c, rev)
            den = np.linalg.norm(ref)
            err = np.linalg.norm(got - ref) / den if den else np.abs(got).max()
            assert err <= TOLERANCE[dtype], (name, n, c, rev, err)


def test_ks_sums_the_slices_in_order_whoever_arrives_last():
    """Deterministic: the same bits for the blocks in grid order and reversed (the last block to arrive adds the
    slices 0..ks-1 in order); f32 sums at ks 2 against ks 1 differ only by the order of the additions."""
    from cuda_host import gxx_path
    if gxx_path() is None:
        pytest.skip("g++ not found")
    a = random_matrix(96, 3000, 0.1, "uniform", 4)
    c = get_family(FAMILY).space.normalize({**KS[3], "ks": 4}, "fp16")
    fwd, _ = _emulate_runs(c, "fp16", a, 16, "kn", (5,))
    rev, _ = _emulate_runs(c, "fp16", a, 16, "kn", (5,), reverse=True)
    np.testing.assert_array_equal(fwd[0][0], rev[0][0])
    one, _ = _emulate_runs({**c, "ks": 1}, "fp16", a, 16, "kn", (5,))
    assert np.abs(one[0][0] - fwd[0][0]).max() <= 2e-3 * np.abs(one[0][1]).max()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["kn", "nk"])
def test_ks_correct_on_edge_cases_gpu(dtype, layout):
    """K slices on the GPU through the project's launch path: KS at ks 2 and 4 where feasible, on the K-slice edge
    cases, a 1001 x 3001 matrix and a 257 x 11008 one (B's column block only fits sliced), N = 8, 13, 16, 17, 32; each
    kernel launched twice in a row with fresh B (poisoned output each time; the counters must be back at 0, and the
    second launch right); nk with a bias."""
    import cupy as cp
    sp = get_family(FAMILY).space
    h = host()
    cases = {**ks_cases(), "uniform_1001x3001": random_matrix(1001, 3001, 0.05, "uniform", 9),
             "uniform_257x11008": random_matrix(257, 11008, 0.05, "uniform", 10)}

    def configs(name, env):
        return [c for c in (sp.normalize({**cfg, "ks": ks}, dtype) for cfg in KS for ks in (2, 4))
                if sp.check(c, env, DEFAULT_LIMITS) is None]

    def counters_back_at_zero(dev, kern, m, n):
        nws, ncnt = h.workspace_shape(kern.config, m, n)
        _, counters = dev.cached(("csr_gemv_ws", nws, ncnt, n), None)
        assert int(cp.count_nonzero(counters)) == 0, (n, kern.config)
    checked = _check_on_gpu(dtype, layout, cases, (8, 13, 16, 17, 32), configs, launches=2,
                            after=counters_back_at_zero)
    assert checked >= 150


# ---- session 24: warps 32 (bench/drafts/csr_gemv-occupancy.md; measured in results/session24/recold-occ.md) -------

# the llm suite's two-pass 16-warp shared-memory winners at N = 16 / 8 (M >= 11008) as one pass of 32 warps, the
# 4096-row one (one row a warp), B through L1 at 32 warps, K slices at 32 warps, an f32 nb 8 one
W32 = [dict(lanes=8, warps=32, nb=16, iters=1, unroll=2, bsrc="smem", acc="h2x4", split=2, pf=1, minb=1, bif=1, ks=1),
       dict(lanes=8, warps=32, nb=8, iters=1, unroll=2, bsrc="smem", acc="h2x4", pf=1, minb=1, bif=1, ks=1),
       dict(lanes=32, warps=32, nb=16, iters=1, unroll=1, bsrc="smem", acc="h2x4", split=2, pf=1, minb=1, ks=1),
       dict(lanes=16, warps=32, nb=32, iters=1, unroll=1, bsrc="l1", acc="h2x4", split=4, pf=1, minb=1),
       dict(lanes=16, warps=32, nb=32, iters=1, unroll=1, bsrc="smem", acc="h2x4", split=4, pf=1, minb=1, ks=2),
       dict(lanes=16, warps=32, nb=8, iters=2, unroll=1, bsrc="smem", acc="f32", pf=0, minb=1, ks=1)]


def test_warps_32_in_the_space():
    """warps 32 is feasible (1024 threads) only without a second block an SM (minb 1: two would cap registers at 32).
    The measured winners (session 24) are known-good configs tried first on tall layers at N <= 16 only: elsewhere the
    tuner's first tries are as before."""
    sp = get_family(FAMILY).space
    env = problem_env(14336, 4096, 16, 2_936_013, "fp16")
    for cfg in W32:
        fill = cfg.get("bsrc", "smem") == "smem" and cfg["warps"] >= 8  # fill (session 26): 0 where it is a parameter
        extra = {**({"fill": 0} if fill else {}), **({"bcopy": 1} if cfg.get("bsrc", "smem") == "smem" else {})}
        assert sp.normalize(cfg, "fp16") == {**cfg, **extra}, cfg
    assert sp.check(W32[0], env, DEFAULT_LIMITS) is None
    assert sp.check({**W32[0], "minb": 2}, env, DEFAULT_LIMITS) is not None  # 2 x 1024 threads: 32 registers
    assert sp.check(W32[0], env, {**DEFAULT_LIMITS, "max_threads": 512}) is not None
    assert sp.check({**W32[0], "warps": 16, "iters": 2}, env, DEFAULT_LIMITS) is None  # its twin, the suite's winner
    assert [m for m in (1, 2, 4, 8) if sp.check({**W32[0], "minb": m}, env, DEFAULT_LIMITS) is None] == [1]
    first = {(dt, m, n): sp.defaults(dt, problem_env(m, 4096, n, 10, dt), DEFAULT_LIMITS)[0]
             for dt in ("fp16", "bf16") for m, n in ((14336, 16), (11008, 8), (4096, 16), (4096, 8), (11008, 32))}
    for (dt, m, n), cfg in first.items():
        assert (cfg["warps"] == 32) == (m >= 8192 and n <= 16), (dt, m, n, cfg)
        if cfg["warps"] == 32:
            assert cfg["nb"] == n and cfg["minb"] == 1 and cfg["iters"] == 1, (dt, m, n, cfg)


def test_warps_32_renders_as_its_16_warp_twin_but_for_the_block():
    """The template serves 32 warps as any other count: a warps-32 config's source is its warps-16 twin's but for the
    header and WARPS (the block size, the copy's stride, __launch_bounds__(1024))."""
    sp = get_family(FAMILY).space
    for cfg in W32:
        for dt, lay in (("fp16", "kn"), ("bf16", "nk")):
            new = render.render(sp, cfg, dt, layout=lay).splitlines()
            old = render.render(sp, {**cfg, "warps": 16}, dt, layout=lay).splitlines()
            diff = [(a, b) for a, b in zip(new, old) if a != b]
            assert len(new) == len(old) and len(diff) == 2, (cfg, dt, lay, diff)
            assert "warps=32" in diff[0][0] and diff[1] == ("#define WARPS 32", "#define WARPS 16")
            assert any("__launch_bounds__(32 * WARPS)" in line for line in new)


def _w32_compile_check(jobs, layout):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    for dt, cfg, regs, spill, rep in _nvcc_sm90(sp, jobs, layout):
        assert regs <= 64, (dt, cfg, rep)  # __launch_bounds__(1024): 65536 / 1024
        assert spill == 0, (dt, cfg, rep)


def test_warps_32_compile_with_nvcc():
    """The two twins of the suite's N = 16 / N = 8 winners (fp16 kn, bf16 nk): within 64 registers, no spill (ptxas
    gives 59-63; the rest of W32 in the heavy tier)."""
    _w32_compile_check([("fp16", W32[0]), ("bf16", W32[1])], "kn")


@pytest.mark.heavy  # CI's time: ~10 nvcc runs
@pytest.mark.parametrize("layout", ["kn", "nk"])
def test_warps_32_compile_with_nvcc_all(layout):
    _w32_compile_check([(("fp16", "bf16")[i % 2], c) for i, c in enumerate(W32)], layout)


def _w32_emulation_ok(runs, dtype, layout):
    from cuda_host import gxx_path
    if gxx_path() is None:
        pytest.skip("g++ not found")
    from sparse_autotune.core.problem import TOLERANCE

    def one(r):
        c, name, a, n = r
        return r, _emulate_runs(c, dtype, a, n, layout, (n,), bias=True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, runs))
    for (c, name, a, n), (launches, counters) in results:
        assert counters is None or not counters.any(), (name, n, c)
        for got, ref in launches:
            assert np.isfinite(got).all(), (name, n, c)
            den = np.linalg.norm(ref)
            err = np.linalg.norm(got - ref) / den if den else np.abs(got).max()
            assert err <= TOLERANCE[dtype], (name, n, c, err)


def test_warps_32_correct_in_cpu_emulation():
    """The N = 16 twin (1024 threads, 128 rows a block: two blocks, the second partly empty) on the CPU against
    float64, fp16 kn, N = 16 on a 200 x 300 matrix with empty and dense rows."""
    rng = np.random.default_rng(24)
    d = sps.random(200, 300, density=0.08, format="lil", random_state=24)
    d[7, :] = 1.0  # a dense row
    d[130:140, :] = 0.0  # empty rows in the second block
    a = sps.csr_matrix(d)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    _w32_emulation_ok([(W32[0], "mixed_200x300", a, 16)], "fp16", "kn")


@pytest.mark.heavy  # CI's time: ~1 CPU-minute
@pytest.mark.parametrize("dtype,layout", [("bf16", "nk"), ("fp16", "kn")])
def test_warps_32_correct_in_cpu_emulation_all(dtype, layout):
    """W32 (K slices included) on the adversarial matrices and a 1001-column one, N = 8, 13, 16, 17, 32 where
    feasible (<= 2 column blocks), nk with a bias."""
    sp = get_family(FAMILY).space
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row",
                                                             "rows_of_8")}
    cases["k1001"] = ks_cases()["k1001"]
    runs = [r[:4] for r in _emulation_runs([sp.normalize(cfg, dtype) for cfg in W32], cases, dtype, layout, 2)]
    assert len(runs) >= 10
    _w32_emulation_ok(runs, dtype, layout)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["kn", "nk"])
def test_warps_32_correct_on_edge_cases_gpu(dtype, layout):
    """warps 32 on the GPU through the project's launch path (1024-thread blocks, __launch_bounds__(1024), the opt-in
    to > 48 KiB of shared memory with a large block): W32 where feasible plus 2 sampled warps-32 configs a case, on the
    edge cases, a 1001 x 3001 matrix and a 257 x 11008 one (ks 2 at nb 32 fits there), N = 1, 8, 13, 16, 17, 32; each
    kernel launched twice (fresh B, poisoned output; the K slices' counters back at 0); nk with a bias."""
    import cupy as cp
    sp = get_family(FAMILY).space
    h = host()
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row",
                                                             "rows_of_8")}
    cases["uniform_1001x3001"] = random_matrix(1001, 3001, 0.05, "uniform", 9)
    cases["uniform_257x11008"] = random_matrix(257, 11008, 0.05, "uniform", 10)

    def configs(name, env):
        fixed = [c for c in (sp.normalize(cfg, dtype) for cfg in W32) if sp.check(c, env, DEFAULT_LIMITS) is None]
        more = sample_feasible(dtype, env, 2, f"w32/{layout}/{name}/{env['N']}/{dtype}", lambda c: c["warps"] == 32)
        return fixed + [c for c in more if c not in fixed]

    def counters_back_at_zero(dev, kern, m, n):
        if kern.config.get("ks", 1) == 1:
            return
        nws, ncnt = h.workspace_shape(kern.config, m, n)
        _, counters = dev.cached(("csr_gemv_ws", nws, ncnt, n), None)
        assert int(cp.count_nonzero(counters)) == 0, (n, kern.config)
    checked = _check_on_gpu(dtype, layout, cases, (1, 8, 13, 16, 17, 32), configs, launches=2,
                            after=counters_back_at_zero)
    assert checked >= 150


# ---- fill (session 26): the block's warps chosen at launch so that the row blocks fill the SMs ----------------------

FILL = [dict(lanes=8, warps=32, nb=16, iters=1, unroll=1, bsrc="smem", acc="h2x4", split=2, pf=1, minb=1, ks=1,
             fill=1, bcopy=4),  # the 14336x4096 N=16 d 0.05 record's twin
        dict(lanes=8, warps=32, nb=8, iters=1, unroll=2, bsrc="smem", acc="h2x4", pf=1, minb=1, bif=1, ks=1,
             fill=1, bcopy=1),  # the 11008 / 14336 x 4096 N=8 records' twin
        dict(lanes=16, warps=16, nb=8, iters=2, unroll=2, bsrc="smem", acc="f32", pf=0, minb=1, bif=1, ks=1,
             fill=1, bcopy=4)]


def test_fill_in_the_space():
    """fill is a parameter only where B is copied into shared memory with >= 8 warps, and not with K slices (their
    workspace is laid out by the configured rows a block); configs stored before it normalize to fill 0."""
    sp = get_family(FAMILY).space
    env = problem_env(11008, 4096, 16, 2_254_438, "fp16")
    for cfg in FILL:
        assert sp.normalize(cfg, "fp16") == cfg and sp.check(cfg, env, DEFAULT_LIMITS) is None, cfg
    assert "fill" not in sp.normalize({**FILL[0], "bsrc": "l1"}, "fp16")
    assert "fill" not in sp.normalize({**FILL[0], "warps": 4}, "fp16")
    assert sp.normalize({k: v for k, v in FILL[0].items() if k != "fill"}, "fp16")["fill"] == 0
    assert sp.check({**FILL[0], "ks": 2}, env, DEFAULT_LIMITS) is not None
    assert sp.check({**FILL[0], "ks": 2, "fill": 0}, env, DEFAULT_LIMITS) is None


def test_fill_launch_warps_fill_the_sms():
    """launch_warps: 11008 rows at 4 a warp, 32 warps: 86 blocks on 132 SMs -> 132 blocks of 21 warps; 14336 -> 128 of
    28; 8192 rows at 4 a warp (2 passes), 16 warps: 128 blocks already, kept; 4096 of them: 128 blocks of 8 warps. For many M and SM counts: within [warps / 2, warps],
    never more warp-passes on the busiest SM than without fill, the larger count on a tie; fill 0: warps. The launch
    (geometry) follows it."""
    h = host()
    assert h.launch_warps(FILL[0], 11008, 132) == 21 and h.launch_warps(FILL[0], 14336, 132) == 28
    assert h.launch_warps({**FILL[0], "fill": 0}, 11008, 132) == 32
    assert h.launch_warps(FILL[2], 8192, 132) == 16  # 128 blocks already
    assert h.launch_warps(FILL[2], 4096, 132) == 8  # 64 blocks of 16 warps -> 128 of 8
    assert h.launch_warps(FILL[0], 11008, 114) == 25  # an H100 PCIe: 2752 warp-passes over 110 blocks of 25
    rng = np.random.default_rng(26)
    for _ in range(300):
        m, sms = int(rng.integers(1, 40000)), int(rng.integers(8, 200))
        cfg = FILL[int(rng.integers(len(FILL)))]
        w, rpw = cfg["warps"], (32 // cfg["lanes"]) * cfg["iters"]
        units = -(-m // rpw)

        def load(x):
            return x * -(-(-(-units // x)) // sms)
        x = h.launch_warps(cfg, m, sms)
        assert -(-w // 2) <= x <= w and load(x) <= load(w), (m, sms, cfg, x)
        assert all(load(y) > load(x) or y <= x for y in range(-(-w // 2), w + 1)), (m, sms, cfg, x)
    a = random_matrix(11008, 512, 0.01, "uniform", 3)
    k = fake_kernel(FAMILY, FILL[0], "fp16", a)
    x = h.launch_warps(FILL[0], 11008)
    assert h.geometry(k, 16) == ((-(-11008 // (4 * x)), 1), (32 * x,))
    assert h.geometry(fake_kernel(FAMILY, {**FILL[0], "fill": 0}, "fp16", a), 16) == ((86, 1), (1024,))


def test_fill_renders_the_launch_warps():
    """fill 1: the rows a pass and every block-strided loop take the launch's warps (blockDim.x / 32), the register
    bound stays the configured warps; fill 0 renders as a config stored before the parameter but for its header."""
    sp = get_family(FAMILY).space
    for cfg in FILL:
        for dt, lay in (("fp16", "kn"), ("bf16", "nk")):
            src = render.render(sp, cfg, dt, layout=lay)
            assert "#define NWARPS ((int)(blockDim.x >> 5))" in src and "fill=1" in src
            assert "__launch_bounds__(32 * WARPS)" in src and "32 * WARPS)" not in src.replace("(32 * WARPS", "")
            assert "rows_per_pass = NWARPS * (32 / LANES)" in src
            off = render.render(sp, {**cfg, "fill": 0}, dt, layout=lay).splitlines()
            old = render.render(sp, {k: v for k, v in cfg.items() if k != "fill"}, dt, layout=lay).splitlines()
            assert "#define NWARPS WARPS" in off
            assert [x for x, y in zip(off, old) if x != y] == [off[0]] and "fill=0" in off[0] and len(off) == len(old)


def test_fill_compile_with_nvcc():
    """FILL (fp16 kn, bf16 nk) within 64 registers without spills, as their fill-0 twins."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    for lay, dt in (("kn", "fp16"), ("nk", "bf16")):
        for dt2, cfg, regs, spill, rep in _nvcc_sm90(sp, [(dt, c) for c in FILL[:2]], lay):
            assert regs <= 64 and spill == 0, (dt2, cfg, rep)


def test_fill_correct_in_cpu_emulation():
    """FILL on the CPU against float64 with 3 SMs, so the launch runs fewer (odd) warps than configured: a 200 x 300
    matrix with a dense row and empty rows at N = 16 / 8 (fp16 kn), and the adversarial cases in bf16 nk."""
    h = host()
    rng = np.random.default_rng(27)
    d = sps.random(200, 300, density=0.08, format="lil", random_state=27)
    d[7, :] = 1.0
    d[130:140, :] = 0.0
    a = sps.csr_matrix(d)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    assert h.launch_warps(FILL[0], 200, EMU_SMS) == 17 and h.launch_warps(FILL[2], 200, EMU_SMS) < 16
    _w32_emulation_ok([(FILL[0], "mixed_200x300", a, 16), (FILL[1], "mixed_200x300", a, 8),
                       (FILL[2], "mixed_200x300", a, 13)], "fp16", "kn")
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row")}
    sp = get_family(FAMILY).space
    runs = [r[:4] for r in _emulation_runs([sp.normalize(c, "bf16") for c in FILL], cases, "bf16", "nk", 2)]
    assert len(runs) >= 4
    _w32_emulation_ok(runs, "bf16", "nk")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,layout", [("fp16", "kn"), ("bf16", "nk")])
def test_fill_correct_on_edge_cases_gpu(dtype, layout):
    """fill on the GPU through the project's launch path (the launch's warps from the GPU's SM count): FILL and 2
    sampled fill configs a case on the edge cases, a 1001 x 3001 matrix and an 11008 x 1024 one (fewer warps than
    configured on any GPU of <= 200 SMs), N = 1, 8, 13, 16; each kernel launched twice (fresh B, poisoned output)."""
    sp = get_family(FAMILY).space
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row")}
    cases["uniform_1001x3001"] = random_matrix(1001, 3001, 0.05, "uniform", 9)
    cases["uniform_11008x1024"] = random_matrix(11008, 1024, 0.05, "uniform", 11)
    assert host().launch_warps(FILL[0], 11008) < 32

    def configs(name, env):
        fixed = [c for c in (sp.normalize(cfg, dtype) for cfg in FILL) if sp.check(c, env, DEFAULT_LIMITS) is None]
        more = sample_feasible(dtype, env, 2, f"fill/{layout}/{name}/{env['N']}/{dtype}", lambda c: c.get("fill") == 1)
        return fixed + [c for c in more if c not in fixed]
    checked = _check_on_gpu(dtype, layout, cases, (1, 8, 13, 16), configs, launches=2)
    assert checked >= 40


def test_bcopy_in_the_space_and_renders():
    """bcopy is a parameter where B is copied into shared memory (1: the copy as before, byte for byte but the header;
    4: copy16, four 16-byte loads a thread before their stores, in the straight kn copies, the K-slice one too)."""
    sp = get_family(FAMILY).space
    base = {k: v for k, v in FILL[0].items() if k != "bcopy"}
    assert sp.normalize(base, "fp16")["bcopy"] == 1 and "bcopy" not in sp.normalize({**base, "bsrc": "l1"}, "fp16")
    for dt, lay in (("fp16", "kn"), ("bf16", "nk")):
        one = render.render(sp, {**base, "bcopy": 1}, dt, layout=lay).splitlines()
        old = render.render(sp, base, dt, layout=lay).splitlines()
        assert [x for x, y in zip(one, old) if x != y] == [one[0]] and "bcopy=1" in one[0] and len(one) == len(old)
        four = render.render(sp, {**base, "bcopy": 4}, dt, layout=lay)
        assert "copy16" not in "\n".join(one)
        assert ("copy16(reinterpret_cast<uint4*>(Bs), reinterpret_cast<const uint4*>(B), n16, tid, 32 * NWARPS);" in four) \
            == (lay == "kn")
        assert "for (int j = 0; j < 4; ++j) t[j] = __ldg(src + i + j * stride);" in four
    ks2 = render.render(sp, {**base, "fill": 0, "ks": 2, "bcopy": 4}, "fp16")
    assert "copy16(reinterpret_cast<uint4*>(Bs), reinterpret_cast<const uint4*>(Bk), n16, tid, 32 * NWARPS);" in ks2


def test_bcopy_compile_and_correct_in_cpu_emulation():
    """bcopy 4 (with and without fill, K slices too) compiles within 64 registers without spills and runs correctly on
    the CPU against float64, with copies of B whose 16-byte words are and are not a multiple of 4 x the block."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = [FILL[0], {**FILL[0], "fill": 0}, {**FILL[1], "bcopy": 4}, {**FILL[0], "fill": 0, "ks": 2}]
    for dt, cfg, regs, spill, rep in _nvcc_sm90(sp, [("fp16", c) for c in cfgs], "kn"):
        assert regs <= 64 and spill == 0, (cfg, rep)
    rng = np.random.default_rng(28)
    d = sps.random(200, 1000, density=0.05, format="lil", random_state=28)
    d[3, :] = 1.0
    a = sps.csr_matrix(d)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    b = sps.csr_matrix(a[:, :997])  # K = 997: 997 x 16 halves, not a multiple of 8 in 16-byte words
    _w32_emulation_ok([(cfgs[0], "mixed_200x1000", a, 16), (cfgs[1], "mixed_200x997", b, 16),
                       (cfgs[2], "mixed_200x1000", a, 8), (cfgs[3], "mixed_200x997", b, 16)], "fp16", "kn")


# ---- session 27 draft: B's column blocks (N != nb) copied in pieces of 8 / 4 / 2 halves where N allows -------------

PIECES = [dict(lanes=16, warps=8, nb=16, iters=1, unroll=2, bsrc="smem", acc="h2x4", split=2, pf=1, minb=1, bif=1, ks=1),
          dict(lanes=16, warps=8, nb=8, iters=1, unroll=1, bsrc="smem", acc="f32", pf=1, minb=1, ks=1),
          dict(lanes=8, warps=4, nb=4, iters=2, unroll=1, bsrc="smem", acc="f32", pf=0, minb=1),
          dict(lanes=16, warps=8, nb=32, iters=1, unroll=1, bsrc="smem", acc="h2x4", split=4, pf=1, minb=1, ks=2)]


def test_copy_pieces_render_by_column_block():
    """The kn column-block copy has a 16-byte path from nb 16, an 8-byte one from nb 4, a 4-byte one from nb 2; the
    nk layout has none of them (its copy transposes x)."""
    sp = get_family(FAMILY).space
    for cfg, paths in zip(PIECES, (("uint4, 8", "uint2, 4", "unsigned int, 2"), ("uint2, 4", "unsigned int, 2"),
                                   ("uint2, 4", "unsigned int, 2"), ("uint4, 8", "uint2, 4", "unsigned int, 2"))):
        src = render.render(sp, sp.normalize(cfg, "fp16"), "fp16", layout="kn")
        got = tuple(t for t in ("uint4, 8", "uint2, 4", "unsigned int, 2") if f"copy_pieces<{t}>(" in src)
        assert got == paths, (cfg, got)
        nk = render.render(sp, sp.normalize(cfg, "fp16"), "fp16", layout="nk")
        assert "copy_pieces" not in nk and "copy_cols" not in nk and "copy_nk(Bs, B, K" in nk


def test_copy_pieces_correct_in_cpu_emulation():
    """Each piece width (N % 8, % 4, % 2 == 0) and the halves (odd N) at nb 4 / 8 / 16 / 32, one and two K slices,
    column blocks wider and narrower than what is left of N, on the CPU against float64 (fp16, kn, with a dense
    row and K = 997: rows of B not a multiple of 8 halves from its start)."""
    rng = np.random.default_rng(27)
    d = sps.random(150, 997, density=0.05, format="lil", random_state=27)
    d[5, :] = 1.0
    a = sps.csr_matrix(d)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    runs = [(PIECES[0], 24), (PIECES[0], 12), (PIECES[0], 10), (PIECES[0], 13), (PIECES[1], 12), (PIECES[1], 10),
            (PIECES[2], 6), (PIECES[2], 12), (PIECES[3], 24), (PIECES[3], 20)]
    sp = get_family(FAMILY).space
    for cfg, n in runs:
        assert sp.check(sp.normalize(cfg, "fp16"), problem_env(150, 997, n, a.nnz, "fp16"), DEFAULT_LIMITS) is None
    _w32_emulation_ok([(sp.normalize(c, "fp16"), "mixed_150x997", a, n) for c, n in runs], "fp16", "kn")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,layout", [("fp16", "kn"), ("bf16", "kn")])
def test_copy_pieces_correct_on_edge_cases_gpu(dtype, layout):
    """Each piece width of the column-block copy on the GPU through the project's launch path: PIECES on three edge
    cases, a 1001 x 3001 matrix (rows of B at 2-byte offsets: N odd) and a 257 x 11008 one (K slices), N = 6, 10, 12,
    13, 20, 24 where feasible; each kernel launched twice (fresh B, poisoned output)."""
    sp = get_family(FAMILY).space
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row")}
    cases["uniform_1001x3001"] = random_matrix(1001, 3001, 0.05, "uniform", 9)
    cases["uniform_257x11008"] = random_matrix(257, 11008, 0.05, "uniform", 10)

    def configs(name, env):
        return [c for c in (sp.normalize(cfg, dtype) for cfg in PIECES) if sp.check(c, env, DEFAULT_LIMITS) is None]
    checked = _check_on_gpu(dtype, layout, cases, (6, 10, 12, 13, 20, 24), configs, launches=2)
    assert checked >= 60


# ---- session 29: deal "bank" (nb 1: each row's nonzeros placed for conflict-free gathers of x) ---------------------

def test_deal_in_the_space_only_at_nb_1():
    sp = get_family(FAMILY).space
    assert sp.param("deal").choices("fp16") == ["res8", "bank"] and sp.param("deal").default == "res8"
    base = {"lanes": 16, "warps": 8, "nb": 1, "iters": 2, "unroll": 2, "bsrc": "smem", "acc": "f32", "pf": 0,
            "minb": 1, "bif": 1, "fill": 0, "bcopy": 1}
    assert sp.normalize(base, "fp16")["deal"] == "res8"  # a config stored before the parameter: the old layout
    assert sp.normalize({**base, "deal": "bank"}, "fp16")["deal"] == "bank"
    assert "deal" not in sp.normalize({**base, "nb": 8, "ks": 1}, "fp16")  # nb >= 2: no such choice
    assert sp.normalize({**base, "deal": "csr"}, "fp16") is None
    src = render.render(sp, {**sp.normalize(base, "fp16"), "deal": "bank"}, "fp16", layout="kn")
    assert " deal=bank\n" in src.splitlines()[0] + "\n"


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_deal_bank_layout_round_trips_to_a(dtype):
    """The same chunk_ptr, padding and nonzeros as res8 (each once, pads weight 0 at one of the row's own columns),
    only their places within each row differ."""
    h = host()
    cases = dict(adversarial())
    cases["uniform_300x1000"] = random_matrix(300, 1000, 0.1, "uniform", 3)
    for name, a in cases.items():
        cp0, _, _ = h.build(a, dtype)
        chunk_ptr, vals, idx = h.build(a, dtype, deal="bank")
        np.testing.assert_array_equal(chunk_ptr, cp0, err_msg=name)
        want = h.value_bits(a.toarray().ravel(), dtype).reshape(a.shape)
        np.testing.assert_array_equal(h.decode(chunk_ptr, vals, idx, a.shape), want, err_msg=name)
        a = sps.csr_matrix(a)
        for r in range(a.shape[0]):
            span = slice(int(chunk_ptr[r]) * 8, int(chunk_ptr[r + 1]) * 8)
            assert set(idx[span].tolist()) <= set(a.indices[a.indptr[r]:a.indptr[r + 1]].tolist()), name
    with pytest.raises(ValueError, match="K slices"):
        h.build(cases["uniform_300x1000"], dtype, ks=2, deal="bank")
    with pytest.raises(ValueError, match="unknown deal"):
        h.build(cases["uniform_300x1000"], dtype, deal="csr")


def test_deal_bank_gathers_of_x_conflict_less():
    """The model of bench/csr_gemv_banks.py at nb 1 (a request costs the most distinct 32-bit words in one bank):
    ~2.9 wavefronts a gather in the res8 order, at most ~2 with deal bank at 4-32 lanes a row (d 0.05-0.3), and a row
    whose columns fill every bank class evenly is conflict-free."""
    from scripts import load_script
    banks = load_script("bench/csr_gemv_banks.py", "csr_gemv_banks")
    h = host()
    a = sps.random(128, 4096, density=0.1, format="csr", random_state=2, dtype=np.float32)
    cp0, _, i0 = h.build(a)
    cp1, _, i1 = h.build(a, deal="bank")
    for lanes in (4, 8, 16, 32):
        r0, w0 = banks.wavefronts(cp0, i0, 128, 1, 1, lanes)
        r1, w1 = banks.wavefronts(cp1, i1, 128, 1, 1, lanes)
        assert r0 == r1 and w1 / r1 < 2.0 and w1 < 0.7 * w0, (lanes, w0 / r0, w1 / r1)
    # 32 rows of 256 nonzeros, 8 in each bank class (columns 2j, j < 256 spread over K): every request conflict-free
    cols = np.arange(256) * 2
    rows = sps.csr_matrix((np.ones(32 * 256, np.float32), (np.repeat(np.arange(32), 256), np.tile(cols, 32))),
                          shape=(32, 1024))
    cp2, _, i2 = h.build(rows, deal="bank")
    for lanes in (4, 8, 16, 32):
        r2, w2 = banks.wavefronts(cp2, i2, 32, 1, 1, lanes)
        assert w2 == r2, lanes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,layout", [("fp16", "kn"), ("bf16", "nk")])
def test_deal_bank_correct_on_edge_cases_gpu(dtype, layout):
    """deal bank on the GPU through the project's launch path: sampled nb-1 configs and the N = 1 known-good ones with
    deal bank, on the edge cases and a 1001 x 3001 matrix, N = 1 and 3 (column blocks), launched twice (fresh B,
    poisoned output): the layout is keyed apart from res8's in the matrix's cache (a res8 twin runs first)."""
    sp = get_family(FAMILY).space
    cases = {k: v for k, v in adversarial().items() if k in ("empty_rows", "residues_37x53", "one_dense_row",
                                                             "density_0.7")}
    cases["uniform_1001x3001"] = random_matrix(1001, 3001, 0.05, "uniform", 9)

    def configs(name, env):
        n = env["N"]
        cfgs = sample_feasible(dtype, env, 3, f"deal/{layout}/{name}/{n}/{dtype}", lambda c: c.get("nb") == 1)
        cfgs += [c for c in sp.defaults(dtype, env, DEFAULT_LIMITS) if c.get("nb") == 1][:2]
        out = []
        for c in cfgs:
            out += [{**c, "deal": "res8"}, {**c, "deal": "bank"}]
        return out
    checked = _check_on_gpu(dtype, layout, cases, (1, 3), configs, launches=2)
    assert checked >= 60
