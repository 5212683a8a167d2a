"""tc_scatter (A as (position, value) entries a chunk of 16 x 16 tiles, scattered by the lanes into a zeroed
shared-memory buffer in mma.m16n8k16 A-fragment order and read back with one 16-byte load a lane): the layout round-trips
to A by the kernel's own rule for random and adversarial patterns at every kc (empty rows and tiles, a full tile,
M / K not multiples of 16, one dense row, all zero, a chunk of more than 128 entries), its bytes and bank order; the
space's constraints, shared memory, adaptation to N, launch arguments; a covering sample nvcc-compiles for sm_90
without spills; the rendered kernel run on the CPU (each CUDA thread a std::thread; cp.async, ldmatrix and mma.sync
emulated) against float64; on a GPU, fp16 and bf16 against float64 on the edge cases at N = 1, 3, 8, 16, 32, 127 and
the llm shapes."""
from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import check_launch_matches_signature, fake_kernel
from tc_emu import EMU_CORE, EMU_SPLITK, as_f64, gxx, ref16, rel_err, run_splitk, splitk_main, splitk_source, \
    write_inputs
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import TOLERANCE, random_matrix, storage
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device import compile as sat_compile

FAMILY = "tc_scatter"
# the kernel at any N and density: the space's gate (N 8-32, density <= 0.2: where the tuner searches it) off
LIMITS = {**DEFAULT_LIMITS, "gate": 0}


def host():
    return get_family(FAMILY).host


def space():
    return get_family(FAMILY).space


def _vals(a, rng):
    a = sps.csr_matrix(a, dtype=np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
    a.data[np.abs(a.data) < 1e-3] = 1.0  # never zero after rounding to 16 bits
    return a


def adversarial():
    """Empty rows and tiles, a full tile, M and K not multiples of 16, one dense row, one nonzero, density 0.7 (chunks
    of more than 128 entries: further rounds), all zero, dense, a long K (several splits and chunks), a low density."""
    rng = np.random.default_rng(51)
    out = {}
    a = sps.random(40, 70, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    a[:, 16:48] = 0  # empty tiles
    out["empty_rows_and_tiles"] = _vals(a, rng)
    a = sps.random(48, 64, density=0.05, format="lil", random_state=2)
    a[16:32, 32:48] = 1.0  # a full 16 x 16 tile
    out["full_tile"] = _vals(a, rng)
    out["residues_37x53"] = _vals(sps.random(37, 53, density=0.5, format="csr", random_state=3), rng)
    d = np.zeros((30, 300))
    d[7] = 1.0  # one dense row among empty ones
    out["one_dense_row"] = _vals(d, rng)
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = _vals(a, rng)
    out["density_0.7"] = _vals(sps.random(64, 96, density=0.7, format="csr", random_state=4), rng)
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["dense_33x129"] = _vals(np.ones((33, 129)), rng)
    out["long_k_24x1000"] = _vals(sps.random(24, 1000, density=0.1, format="csr", random_state=5), rng)
    out["sparse_100x700"] = _vals(sps.random(100, 700, density=0.03, format="csr", random_state=6), rng)
    return out


def bits16(a, dtype="fp16"):
    return host().value_bits(sps.csr_matrix(a).toarray().ravel(), dtype).reshape(a.shape)


# ---- the layout -------------------------------------------------------------------------------------------

def test_frag_pos_is_the_mma_a_fragment_layout():
    """Every element of a 16 x 16 tile has its own even byte of 512; lane 4 g + t's 16 bytes are a_0 (row g, columns
    2t, 2t + 1), a_1 (row g + 8), a_2 (row g, columns 2t + 8, 2t + 9), a_3 (row g + 8), low half first."""
    h = host()
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    assert sorted(h.frag_pos(r, c).ravel().tolist()) == list(range(0, 512, 2))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        want = [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1), (g, 2 * t + 8), (g, 2 * t + 9),
                (g + 8, 2 * t + 8), (g + 8, 2 * t + 9)]
        assert [int(h.frag_pos(rr, cc)) for rr, cc in want] == [16 * lane + 2 * i for i in range(8)], lane


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_round_trips_to_a_by_the_kernels_rule(dtype):
    """decode() scatters each chunk's entries into a zeroed buffer and reads the tiles back by lanes, as the kernel
    does: A's 16-bit values exactly, every kc, every adversarial pattern and a random one; no element written twice."""
    h = host()
    cases = dict(adversarial())
    cases["random_100x300_0.1"] = random_matrix(100, 300, 0.1, "uniform", 7)
    for name, a in cases.items():
        for kc in (1, 2, 4, 8):
            ent, cptr, info = h.build(a, dtype, kc)
            np.testing.assert_array_equal(h.decode(ent, cptr, info), bits16(a, dtype), err_msg=f"{name} {dtype} {kc}")
            assert info["nnz"] == sps.csr_matrix(a).count_nonzero()
            S, KT, NCH = h.dims(*a.shape, kc)
            assert len(cptr) == S * (NCH + 1) and NCH * kc >= KT > (NCH - 1) * kc
            assert len(ent) == info["entries"] + h.ENT_PAD and (ent[info["entries"]:] == h.trash(kc)).all()


def test_layout_invariants_padding_and_bank_order():
    """Chunks start at multiples of 4 entries and follow each other; padding entries are the trash word with value 0,
    fewer than 4 a chunk; a chunk's positions lie in its buffer; ~4.1 bytes a nonzero at d 0.1; the bank order halves
    the store instructions' conflicts against the same entries in position order (~2 wavefronts, not ~3.5)."""
    h = host()
    a = random_matrix(256, 2048, 0.1, "uniform", 3)
    for kc in (2, 4):
        ent, cptr, info = h.build(a, "fp16", kc)
        cp = cptr.reshape(info["S"], -1).astype(np.int64)
        assert (cp % 4 == 0).all() and (np.diff(cp, axis=1) >= 0).all() and (cp[1:, 0] == cp[:-1, -1]).all()
        assert cp[0, 0] == 0 and cp[-1, -1] == info["entries"]
        body = ent[:info["entries"]]
        pad = body == h.trash(kc)
        assert int((~pad).sum()) == info["nnz"] and int(pad.sum()) < 4 * info["S"] * info["NCH"]
        assert ((body[~pad] >> 16) < 512 * kc).all()
        assert 4.0 < info["bytes"] / info["nnz"] < 4.25, info["bytes"] / info["nnz"]
    ent, cptr, info = h.build(a, "fp16", 4)
    ordered = h.store_wavefronts(ent, cptr, info)
    shuffled = ent.copy()  # the same chunks, entries in position order within each chunk
    cp = cptr.astype(np.int64)
    for p0, p1 in zip(cp[:-1], cp[1:]):
        if p1 > p0:
            shuffled[p0:p1] = np.sort(ent[p0:p1])
    plain = h.store_wavefronts(shuffled, cptr, info)
    assert ordered <= 2.2 and plain >= 1.5 * ordered, (ordered, plain)


def test_the_builder_leaves_the_callers_matrix_alone_and_checks_kc():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    ent, cptr, info = h.build(a)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    assert info["nnz"] == 1 and int(ent[0] & 0xFFFF) == int(np.float16(3.0).view(np.uint16))
    assert int(ent[0] >> 16) == h.frag_pos(0, 3)
    with pytest.raises(ValueError, match="kc must be"):
        h.build(a, "fp16", 3)


# ---- space, launch ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.1, "uniform", 0)
    for n in (1, 16, 100):
        assert check_launch_matches_signature(FAMILY, dtype, a, n) > 0


def test_shared_memory_and_constraints():
    h = host()
    sp = space()
    cfg = dict(kc=4, mr=2, nb=2, warps=4, pf=2, splitk=8, minb=1, bload="vec", red="atomic")
    # 4096 columns: 256 k-steps, 64 chunks, 8 a split: B 512 rows of 32 bytes; a buffer 2064 bytes a strip
    want = 16 + 4 * 2 * 2064 + 512 * 32
    assert h.shared_bytes(cfg, 4096) == want
    assert h.smem_bytes(fake_kernel(FAMILY, cfg, "fp16", random_matrix(64, 4096, 0.01, "uniform", 0))) == want
    env = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    for c in (cfg, {**cfg, "splitk": 1, "kc": 8}, {**cfg, "mr": 4, "warps": 8, "splitk": 2, "kc": 2}):
        need = h.shared_bytes(c, 4096)
        assert sp.check(c, env, {**LIMITS, "max_dyn_smem_bytes": need}) is None, c
        assert sp.check(c, env, {**LIMITS, "max_dyn_smem_bytes": need - 1}) is not None, c
    assert sp.check({**cfg, "nb": 4}, env, LIMITS) is not None  # 32 columns for N = 16
    assert sp.check({**cfg, "mr": 4, "nb": 4}, problem_env(4096, 4096, 32, 1, "fp16"), LIMITS) is not None
    odd = problem_env(4096, 4096, 3, 1, "fp16")
    assert sp.check({**cfg, "nb": 1}, odd, LIMITS) is not None
    assert sp.check({**cfg, "nb": 1, "bload": "scalar"}, odd, LIMITS) is None
    short = problem_env(64, 40, 8, 100, "fp16")  # 3 k-steps: one chunk of 4, two of 2
    assert sp.check({**cfg, "nb": 1, "splitk": 1}, short, LIMITS) is None
    assert sp.check({**cfg, "nb": 1, "splitk": 2}, short, LIMITS) is not None
    assert sp.check({**cfg, "nb": 1, "splitk": 2, "kc": 2}, short, LIMITS) is None
    assert not sp.supports("fp32") and sp.supports("bf16")
    assert all(sp.normalize(kg, "fp16") is not None for kg in sp.known_good)


def test_adapt_to_another_n():
    fam = get_family(FAMILY)
    cfg = dict(kc=4, mr=2, nb=4, warps=4, pf=2, rpb=1, splitk=8, minb=1, bload="vec", red="atomic")
    one = problem_env(4096, 4096, 1, 1_600_000, "fp16")
    assert fam.adapt(cfg, "fp16", one, LIMITS) == {**cfg, "nb": 1, "bload": "scalar"}
    sixteen = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    assert fam.adapt(cfg, "fp16", sixteen, LIMITS) == {**cfg, "nb": 2}
    # a wider N than shared memory holds at splitk 1: more split-K
    big = problem_env(4096, 16384, 32, 1_600_000, "fp16")
    got = fam.adapt({**cfg, "splitk": 1, "red": "last"}, "fp16", big, LIMITS)
    assert got is not None and got["splitk"] > 1 and got["nb"] == 4


def test_the_gate_keeps_the_tuner_to_n_8_to_32_at_low_density():
    sp = space()
    m, k = 4096, 4096
    cfg = sp.normalize(sp.known_good[0], "fp16")
    for n, d, ok in [(16, 0.1, True), (8, 0.05, True), (32, 0.2, True), (32, 0.21, False), (16, 0.5, False),
                     (7, 0.1, False), (33, 0.1, False), (64, 0.1, False), (1, 0.05, False)]:
        env = problem_env(m, k, n, round(d * m * k), "fp16")
        c = {**cfg, "nb": 1, "bload": "vec" if n % 8 == 0 else "scalar"}
        assert (sp.check(c, env, DEFAULT_LIMITS) is None) == ok, (n, d)
        assert sp.check(c, env, LIMITS) is None, (n, d)  # the kernel itself runs there
    why = sp.check(cfg, problem_env(m, k, 64, m * k // 10, "fp16"), DEFAULT_LIMITS)
    assert why.startswith("searched only where it may win"), why
    first32 = sp.defaults("fp16", problem_env(m, k, 32, m * k // 10, "fp16"), DEFAULT_LIMITS)[0]
    assert first32["nb"] == 4
    first05 = sp.defaults("fp16", problem_env(m, k, 16, m * k // 20, "fp16"), DEFAULT_LIMITS)[0]
    assert first05["kc"] == 8


def test_geometry_args_and_workspace():
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(kc=4, mr=2, nb=2, warps=4, pf=2, rpb=1, splitk=4, minb=1, bload="vec", red="last")
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    S = -(-1000 // 16)
    rb = -(-S // 8)
    grid, block = h.geometry(k, 40)  # 40 columns: 3 column tiles of 16
    assert block == (128,) and grid == (rb * 4 * 3,)
    assert h.geometry(fake_kernel(FAMILY, {**cfg, "rpb": 4}, "fp16", a), 40)[0] == (-(-rb // 4) * 4 * 3,)
    args = h.args(k, 40, "B", "C")
    ws, cnt = args[2], args[3]
    assert ws.host.shape == (rb * 3 * 4 * 4 * 32 * 2 * 2 * 4,) and cnt.host.shape == (rb * 3,) and not cnt.host.any()
    assert args[4:6] == ("B", "C")
    atomic = h.args(fake_kernel(FAMILY, {**cfg, "red": "atomic"}, "fp16", a), 40, "B", "C")
    assert atomic[2].host.shape == (rb * 3 * 4 * 32 * 2 * 2 * 4,) and atomic[2] is not ws
    NCH = -(-(-(-3000 // 16)) // 4)
    assert [int(x) for x in args[6:]] == [1000, 40, 3000, S, NCH, -(-NCH // 4), 3]


KNOWN = [  # the known-good configs and the register extremes (mr x nb = 8, pf 3, minb 4)
    dict(kc=4, mr=2, nb=2, warps=4, pf=2, splitk=8, minb=1, bload="vec", red="atomic"),
    dict(kc=4, mr=2, nb=4, warps=4, pf=2, splitk=8, minb=1, bload="vec", red="atomic"),
    dict(kc=8, mr=2, nb=2, warps=4, pf=2, splitk=8, minb=1, bload="vec", red="atomic"),
    dict(kc=4, mr=2, nb=1, warps=4, pf=2, splitk=8, minb=1, bload="vec", red="atomic"),
    dict(kc=2, mr=4, nb=2, warps=4, pf=3, splitk=16, minb=1, bload="vec", red="last"),
    dict(kc=8, mr=2, nb=4, warps=2, pf=3, splitk=4, minb=1, bload="scalar", red="release"),
    dict(kc=4, mr=1, nb=2, warps=8, pf=2, splitk=16, minb=4, bload="vec", red="atomic"),
    dict(kc=1, mr=1, nb=4, warps=8, pf=3, splitk=32, minb=2, bload="vec", red="atomic"),
    dict(kc=4, mr=1, nb=2, warps=8, pf=2, rpb=4, splitk=16, minb=1, bload="vec", red="atomic"),
    dict(kc=4, mr=2, nb=4, warps=4, pf=3, rpb=8, splitk=4, minb=1, bload="vec", red="release"),
]


def _ptxas(cfg, dtype):
    return sat_compile.nvcc_check(render.render(space(), cfg, dtype), arch="sm_90")


@pytest.mark.heavy  # not enabled by default: run with -m heavy after changing the family
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_covering_sample_compiles_with_nvcc_without_spills(dtype):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = space()
    env = problem_env(4096, 4096, 32, 1_600_000, dtype)
    cfgs = [c for c in KNOWN if sp.check(c, env, LIMITS) is None]
    assert len(cfgs) == len(KNOWN)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: _ptxas(c, dtype), cfgs))
    for cfg, rep in zip(cfgs, reports):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        assert all(int(x) == 0 for x in re.findall(r"(\d+) bytes spill", rep)), (cfg, rep)
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        assert regs <= min(255, 65536 // (32 * cfg["warps"] * cfg["minb"])), (cfg, regs)


def test_a_sample_renders_for_both_dtypes():
    sp = space()
    n = 0
    for dtype in ("fp16", "bf16"):
        for i, cfg in enumerate(sp.enumerate(dtype)):
            if i % 97:
                continue
            src = render.render(sp, cfg, dtype)
            assert f"mma.sync.aligned.m16n8k16.row.col.f32.{'bf16.bf16' if dtype == 'bf16' else 'f16.f16'}.f32" in src
            assert f"#define KC {cfg['kc']}\n" in src and f"#define PF {cfg['pf']}\n" in src
            assert ('asm volatile("red.global.add.v4.f32' in src) == (cfg.get("red") == "atomic"), cfg
            n += 1
    assert n > 300


# ---- the kernel on the CPU --------------------------------------------------------------------------------

EMU_PRELUDE = EMU_CORE + EMU_SPLITK + r'''
struct alignas(16) uint4 { unsigned int x, y, z, w; };
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return uint4{x, y, z, w}; }
inline void scatter1(unsigned int buf, unsigned int e) { sts16(buf + (e >> 16), e); }
inline void lds128z(unsigned int (&r)[4], unsigned int a) {
    if (a % 16) die("misaligned ld.shared.v4");
    chk(a, 16);
    std::memcpy(r, smem + a, 16);
    std::memset(smem + a, 0, 16);
}
'''

EMU_MAIN = splitk_main(  # ent in 16-byte units
    arrays='    auto ent = rd<uint4>(d + "/ent"); auto cptr = rd<int>(d + "/cptr");',
    call="ent.data(), cptr.data(), ws.data(), cnt.data(), B.data(), C.data(), M, N, K, S, ARG6, sps, ntiles")


def emu_source(cfg: dict, dtype: str) -> str:
    return splitk_source(render.render(space(), cfg, dtype), cfg, EMU_PRELUDE, EMU_MAIN)


class Emulated:
    """One config's kernel compiled for the CPU; run(a, n, b16, mode) -> C (uint16 bits, M x N)."""

    def __init__(self, cfg: dict, dtype: str, folder: Path):
        self.cfg, self.dtype, self.folder = cfg, dtype, folder
        self.exe = gxx(folder, emu_source(cfg, dtype))

    def run(self, a, n: int, b16, copy_at_issue: int = 1):
        h, c = host(), self.cfg
        m, k = a.shape
        ent, cptr, info = h.build(a, self.dtype, c["kc"])
        d = write_inputs(self.folder, {"ent": ent, "cptr": cptr, "B": np.ascontiguousarray(b16)})
        S, NCH, rb, ntiles, sps, _ = h._dims(c, m, k, n)
        grid = h.geometry(fake_kernel(FAMILY, c, self.dtype, a), n)[0][0]
        return run_splitk(self.exe, d, (m, n, k, S, NCH, sps, ntiles), grid, h.shared_bytes(c, k), copy_at_issue,
                          self.dtype, h.workspace_shape(c, rb, ntiles))


EMU_CFGS = [  # every kc, mr, nb, pf, rpb, bload, split-K on and off (every red), 2 to 8 warps
    dict(kc=4, mr=2, nb=2, warps=4, pf=2, rpb=1, splitk=3, minb=1, bload="vec", red="atomic"),  # empty trailing splits
    dict(kc=1, mr=1, nb=1, warps=2, pf=1, rpb=2, splitk=1, minb=1, bload="scalar"),
    dict(kc=2, mr=4, nb=4, warps=2, pf=3, rpb=4, splitk=2, minb=1, bload="scalar", red="last"),
    dict(kc=8, mr=1, nb=1, warps=8, pf=2, rpb=1, splitk=2, minb=2, bload="vec", red="release"),
    dict(kc=4, mr=2, nb=4, warps=4, pf=3, rpb=8, splitk=1, minb=1, bload="scalar"),
    dict(kc=2, mr=1, nb=2, warps=2, pf=3, rpb=2, splitk=3, minb=1, bload="scalar", red="atomic"),  # steps across row blocks
    dict(kc=4, mr=1, nb=1, warps=2, pf=2, rpb=4, splitk=4, minb=1, bload="scalar", red="release"),
]


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.mark.heavy  # not enabled by default: run with -m heavy after changing the family
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_kernel_source_emulated_on_the_cpu_is_correct(dtype, tmp_path):
    """Not a GPU result: the rendered kernel (its own C++: pointer copy, B staging, the zeroed buffers, the entries in
    flight and their scatter, further rounds of a dense chunk, the fragment reads, split-K and its counters, the
    epilogue) with cp.async / ldmatrix / mma.sync emulated: every adversarial case at N = 1, 3, 8 and 24 with each
    config adapted to it as the tuner does, cp.async landing at issue or at the last moment wait_group allows; C within
    the dtype's tolerance of float64, every element written (C starts as NaN); several row blocks a block (rpb), with
    the entries' loads running ahead across them."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    fam = get_family(FAMILY)
    cases = adversarial()
    plan = []
    for name, a in cases.items():
        for n in (1, 3, 8, 24):
            env = problem_env(a.shape[0], a.shape[1], n, sps.csr_matrix(a).nnz, dtype)
            for cfg in EMU_CFGS:
                ad = fam.adapt(cfg, dtype, env, LIMITS)
                if ad is not None:
                    plan.append((name, n, ad))
    keys = sorted({json.dumps(c, sort_keys=True) for _, _, c in plan})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        emus = dict(zip(keys, pool.map(lambda ik: Emulated(json.loads(ik[1]), dtype, _mk(tmp_path / f"c{ik[0]}")),
                                       enumerate(keys))))
    rng = np.random.default_rng(0)
    for i, (name, n, cfg) in enumerate(plan):
        a = cases[name]
        b16 = storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype).view(np.uint16)
        err = rel_err(as_f64(emus[json.dumps(cfg, sort_keys=True)].run(a, n, b16, i % 2), dtype),
                       ref16(a, b16, dtype))
        assert err <= TOLERANCE[dtype], (name, n, cfg, i % 2, err)
    assert len(plan) >= 140, len(plan)


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(a, n, dtype, extra=()):
    """The known-good configs and KNOWN adapted to N (twice where split-K is on: its counters and the atomic workspace
    reset themselves)."""
    fam = get_family(FAMILY)
    env = problem_env(a.shape[0], a.shape[1], n, sps.csr_matrix(a).nnz, dtype)
    got = []
    for kg in list(fam.space.known_good) + KNOWN + list(extra):
        ad = fam.adapt(kg, dtype, env, LIMITS)
        if ad is not None and ad not in got:
            got.append(ad)
    return [x for c in got for x in ([c, dict(c)] if c["splitk"] > 1 else [c])]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_correct_on_edge_cases(dtype):
    """Through the project's launch path (tests/nk_check.py's check_kn): poisoned C, fresh random B, float64 reference
    of the rounded operands; empty rows and tiles, a full tile, M / K not multiples of 16, a dense row, density 0.7 (a
    chunk of several rounds), N = 1, 3, 8, 16, 32, 127 (column tiles past nb)."""
    from nk_check import check_kn
    checked = check_kn(FAMILY, dtype, adversarial(), lambda a, n: _gpu_configs(a, n, dtype), (1, 3, 8, 16, 32, 127),
                       TOLERANCE[dtype])
    assert checked >= 150  # 188 kernels a dtype (session 51, H200: all correct)


@pytest.mark.gpu
def test_known_good_configs_on_the_llm_shapes():
    """The known-good configs and KNOWN (adapted to N) at 4096 x 4096 d 0.1 / 0.05, 1024 x 4096 d 0.2 and 11008 x 4096
    d 0.1, N = 8, 16, 32, fp16; 4096 x 4096 d 0.1 N = 16 in bf16."""
    from nk_check import check_kn
    cases = {f"{m}x{k}_d{d}": random_matrix(m, k, d, "uniform", 3)
             for m, k, d in [(4096, 4096, 0.1), (4096, 4096, 0.05), (1024, 4096, 0.2), (11008, 4096, 0.1)]}
    checked = check_kn(FAMILY, "fp16", cases, lambda a, n: _gpu_configs(a, n, "fp16"), (8, 16, 32), TOLERANCE["fp16"])
    checked += check_kn(FAMILY, "bf16", {"4096x4096_d0.1": cases["4096x4096_d0.1"]},
                        lambda a, n: _gpu_configs(a, n, "bf16"), (16,), TOLERANCE["bf16"])
    assert checked >= 100
