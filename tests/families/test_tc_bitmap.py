"""tc_bitmap (16 x 16 tiles as a bitmap + packed values, decoded by each lane into its mma.m16n8k16
A fragment): the layout round-trips to A by the kernel's own lane rule for random and adversarial patterns (empty rows
and tiles, a full tile, M / K not multiples of 16, one dense row, all zero), its bytes, the fragment mapping; every
config renders, a covering sample nvcc-compiles for sm_90 without spills; constraints, shared memory, adaptation to N,
launch arguments; the rendered kernel itself run on the CPU (each CUDA thread a std::thread; cp.async, ldmatrix and
mma.sync emulated; the decode helper restated in C++) against float64; on a GPU, fp16 and bf16 against float64 on the
edge cases at N = 1, 3, 8, 16, 32, 127 and density 0.7."""
from __future__ import annotations

import concurrent.futures
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import check_launch_matches_signature, fake_kernel
from space_checks import adapted_known_goods
from tc_emu import EMU_CORE, EMU_SPLITK, as_f64, gxx, ref16, rel_err, run_splitk, splitk_main, splitk_source, \
    write_inputs
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import TOLERANCE, random_matrix, storage
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device import compile as sat_compile

FAMILY = "tc_bitmap"
# the kernel at any N and density: the space's gate (N 8-32, density >= 0.15: where the tuner searches it) off
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
    """Empty rows and tiles, a full tile, M and K not multiples of 16, one dense row, one nonzero, density 0.7, all
    zero, dense, a long K (several splits and stages), lone values in each half of a lane's pair."""
    rng = np.random.default_rng(16)
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
    out["long_k_24x1000"] = _vals(sps.random(24, 1000, density=0.4, format="csr", random_state=5), rng)
    d = np.zeros((16, 32))
    d[3, 4] = d[9, 13] = d[12, 30] = d[0, 17] = 1.0  # lone even / odd columns: the other half of the lane's pair zero
    out["lone_halves"] = _vals(d, rng)
    return out


def bits16(a, dtype="fp16"):
    return host().value_bits(sps.csr_matrix(a).toarray().ravel(), dtype).reshape(a.shape)


# ---- the layout -------------------------------------------------------------------------------------------

def test_tile_slot_is_the_mma_a_fragment_layout():
    """Every element of a 16 x 16 tile has one (half, word, bit); lane 4 g + t's four elements of half h (row 8h + g,
    columns 2t, 2t + 1 = register a_h, 2t + 8, 2t + 9 = a_{h+2}) are bits 4 (l % 8) .. + 3 of word l // 8, in that
    order."""
    h = host()
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    hh, i, bit = h.tile_slot(r, c)
    assert sorted((hh * 128 + i * 32 + bit).ravel().tolist()) == list(range(256))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for half in range(2):
            cols = [2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9]
            got = [tuple(int(x) for x in h.tile_slot(8 * half + g, cc)) for cc in cols]
            assert got == [(half, lane >> 3, 4 * (lane & 7) + e) for e in range(4)], (lane, half)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_round_trips_to_a_by_the_lane_rule(dtype):
    """decode() takes each lane's word, base byte and popc prefix and walks its bits as the kernel's half_decode() does: A's 16-bit values
    exactly, for every adversarial pattern and a random one."""
    h = host()
    cases = dict(adversarial())
    cases["random_100x300_0.5"] = random_matrix(100, 300, 0.5, "uniform", 7)
    for name, a in cases.items():
        meta, vals, vptr, info = h.build(a, dtype)
        got = h.decode(meta, vals, vptr, info)
        np.testing.assert_array_equal(got, bits16(a, dtype), err_msg=f"{name} {dtype}")
        assert info["nnz"] == sps.csr_matrix(a).count_nonzero()
        S, KT, KTP = h.dims(*a.shape)
        assert KTP % 4 == 0 and KTP >= KT and len(meta) == S * KTP * 10 and len(vptr) == S * (KTP + 1)
        assert len(vals) == info["nnz"] + h.VAL_PAD and not vals[info["nnz"]:].any()
        assert info["bytes"] == h.format_bytes(*a.shape, info["nnz"])


def test_layout_invariants_bases_and_pointers():
    """Masks hold exactly nnz bits; every base byte <= 224 (the first 0); a tile's values are its popcount; pointers are monotone,
    even (bytes of halves) and strips follow each other; empty tiles cost 40 bytes of zeros and no values."""
    h = host()
    a = random_matrix(70, 500, 0.6, "uniform", 3)
    meta, vals, vptr, info = h.build(a)
    mt = meta.reshape(-1, 10)
    assert int(np.unpackbits(mt[:, :8].view(np.uint8)).sum()) == info["nnz"]
    assert mt[:, 8:].view(np.uint8).max() <= 224 and not (mt[:, 8] & 0xFF).any()
    vp = vptr.reshape(info["S"], -1)
    tile_vals = np.unpackbits(mt[:, :8].view(np.uint8)).reshape(-1, 256).sum(axis=1).reshape(info["S"], -1)
    np.testing.assert_array_equal(np.diff(vp, axis=1) // 2, tile_vals)
    assert (vp % 2 == 0).all() and (vp[1:, 0] == vp[:-1, -1]).all() and vp[-1, -1] == 2 * info["nnz"]
    assert not mt.reshape(info["S"], info["KTP"], 10)[:, info["KT"]:].any()  # the padding tiles
    d = np.zeros((16, 64))
    d[:, 16:32] = 1.0
    meta, vals, vptr, info = h.build(sps.csr_matrix(d))
    mt = meta.reshape(-1, 10)
    assert (mt[1, :8] == 0xFFFFFFFF).all() and not mt[[0, 2, 3]].any()
    assert list(mt[1, 8:].view(np.uint8)) == [0, 128, 32, 160, 64, 192, 96, 224]  # b(h, i) at byte 2i + h
    assert list(vptr) == [0, 0, 512, 512, 512]


def test_bytes_per_element():
    """40 bytes a tile + 4 a tile of pointers + 2 a nonzero: 1.17 B an element at d 0.5, 0.57 at d 0.2 (dense fp16 2)."""
    h = host()
    for d, want in ((0.5, 1.172), (0.3, 0.772), (0.2, 0.572)):
        per = h.format_bytes(4096, 4096, round(d * 4096 * 4096)) / 4096 ** 2
        assert abs(per - want) < 0.002, (d, per)
    a = random_matrix(256, 2048, 0.5, "uniform", 2)
    assert abs(h.build(a)[3]["bytes"] / (256 * 2048) - 1.172) < 0.01


def test_the_builder_leaves_the_callers_matrix_alone():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    meta, vals, vptr, info = h.build(a)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    assert info["nnz"] == 1 and vals[0] == np.float16(3.0).view(np.uint16)


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.3, "uniform", 0)
    for n in (1, 16, 100):
        assert check_launch_matches_signature(FAMILY, dtype, a, n) > 0


@pytest.mark.heavy  # CI's time (12.2 of 12.5 min on 2 CPUs): enabled, but run with -m heavy after changing the family
def test_every_config_renders_for_both_dtypes():
    sp = space()
    n = 0
    for dtype in ("fp16", "bf16"):
        for i, cfg in enumerate(sp.enumerate(dtype)):
            if i % 3:
                continue
            src = render.render(sp, cfg, dtype)
            assert f"mma.sync.aligned.m16n8k16.row.col.f32.{'bf16.bf16' if dtype == 'bf16' else 'f16.f16'}.f32" in src
            assert "spmm_kernel(" in src and f"mr={cfg['mr']} ks={cfg['ks']} " in src
            assert ('asm volatile("red.global.add.v4.f32' in src) == (cfg.get("red") == "atomic"), cfg
            n += 1
    assert n > 3000


KNOWN = [  # the known-good configs and the register extremes
    dict(mr=2, ks=2, nb=2, warps=4, stages=4, splitk=16, minb=1, bload="vec"),
    dict(mr=2, ks=2, nb=1, warps=4, stages=4, splitk=16, minb=1, bload="vec"),
    dict(mr=2, ks=2, nb=4, warps=4, stages=4, splitk=16, minb=1, bload="vec"),
    dict(mr=1, ks=4, nb=2, warps=8, stages=3, splitk=8, minb=2, bload="vec"),
    dict(mr=2, ks=2, nb=1, warps=4, stages=4, splitk=16, minb=1, bload="scalar"),
    dict(mr=2, ks=4, nb=4, warps=2, stages=6, splitk=4, minb=1, bload="vec"),
    dict(mr=4, ks=4, nb=2, warps=8, stages=2, splitk=32, minb=1, bload="scalar"),
    dict(mr=1, ks=2, nb=4, warps=4, stages=3, splitk=4, minb=4, bload="vec"),
    dict(mr=4, ks=2, nb=1, warps=4, stages=3, splitk=2, minb=4, bload="vec"),
    dict(mr=2, ks=4, nb=2, warps=4, stages=3, splitk=16, minb=2, bload="vec"),
    # second step: 64 registers under warps 8 x minb 4 (mr * nb <= 4), the three split-K reductions
    dict(mr=1, ks=4, nb=2, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic"),
    dict(mr=2, ks=2, nb=2, warps=8, stages=4, splitk=16, minb=4, bload="vec", red="release"),
    dict(mr=1, ks=4, nb=4, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic"),
    # dec 'lean' (bench/drafts/tcbitmap-dec.md): the known-good configs (64 registers under warps 8 x minb 4), mr x nb = 8
    dict(mr=1, ks=4, nb=2, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic", dec="lean"),
    dict(mr=1, ks=4, nb=4, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic", dec="lean"),
    dict(mr=2, ks=4, nb=4, warps=4, stages=3, splitk=16, minb=1, bload="vec", red="last", dec="lean"),
    dict(mr=2, ks=2, nb=2, warps=4, stages=4, splitk=16, minb=4, bload="vec", red="release", dec="lean"),
    # dec 'fit' (bench/drafts/tcbitmap-d05.md): the d 0.5 candidates (64 registers under warps 8 x minb 4), mr x nb = 8
    dict(mr=1, ks=4, nb=2, warps=8, stages=4, splitk=16, minb=4, bload="vec", red="atomic", dec="fit", vcap=320),
    dict(mr=1, ks=4, nb=4, warps=8, stages=3, splitk=16, minb=4, bload="vec", red="atomic", dec="fit", vcap=384),
    dict(mr=1, ks=2, nb=1, warps=8, stages=6, splitk=8, minb=4, bload="vec", red="release", dec="fit", vcap=320),
    dict(mr=2, ks=4, nb=4, warps=4, stages=3, splitk=16, minb=1, bload="vec", red="last", dec="fit", vcap=320),
]


def _ptxas(cfg, dtype):
    return sat_compile.nvcc_check(render.render(space(), cfg, dtype), arch="sm_90")


@pytest.mark.heavy  # CI's time (12.2 of 12.5 min on 2 CPUs): enabled, but run with -m heavy after changing the family
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_covering_sample_compiles_with_nvcc_without_spills(dtype):
    """Every known-good config and the register extremes (mr x nb = 8, minb 4): no spills, and under minb's cap."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = space()
    env = problem_env(4096, 4096, 32, 8_000_000, dtype)
    cfgs = [c for c in KNOWN if sp.check(c, env, LIMITS) is None]
    assert len(cfgs) == len(KNOWN)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: _ptxas(c, dtype), cfgs))
    for cfg, rep in zip(cfgs, reports):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        assert all(int(x) == 0 for x in re.findall(r"(\d+) bytes spill", rep)), (cfg, rep)
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        assert regs <= min(255, 65536 // (32 * cfg["warps"] * cfg["minb"])), (cfg, regs)


def test_shared_memory_and_constraints():
    h = host()
    sp = space()
    cfg = dict(mr=2, ks=2, nb=2, warps=4, stages=4, splitk=16, minb=1, bload="vec")
    # 4096 columns: 256 k-steps, 128 stages, 8 a split: 17 pointer entries -> 20; slot 1120 bytes a strip; B 256 rows
    want = 16 + 4 * 2 * (4 * 20 + 4 * 1120) + 256 * 32
    assert h.shared_bytes(cfg, 4096) == want
    assert h.smem_bytes(fake_kernel(FAMILY, cfg, "fp16", random_matrix(64, 4096, 0.01, "uniform", 0))) == want
    env = problem_env(4096, 4096, 16, 8_000_000, "fp16")
    for c in (cfg, {**cfg, "splitk": 1, "ks": 4}, {**cfg, "mr": 4, "warps": 8, "stages": 6, "splitk": 2}):
        need = h.shared_bytes(c, 4096)
        assert sp.check(c, env, {**LIMITS, "max_dyn_smem_bytes": need}) is None, c
        assert sp.check(c, env, {**LIMITS, "max_dyn_smem_bytes": need - 1}) is not None, c
    assert sp.check({**cfg, "nb": 4}, env, LIMITS) is not None  # 32 columns for N = 16
    assert sp.check({**cfg, "mr": 4, "nb": 4}, problem_env(4096, 4096, 32, 1, "fp16"), LIMITS) is not None
    odd = problem_env(4096, 4096, 3, 1, "fp16")
    assert sp.check({**cfg, "nb": 1}, odd, LIMITS) is not None
    assert sp.check({**cfg, "nb": 1, "bload": "scalar"}, odd, LIMITS) is None
    short = problem_env(64, 40, 8, 100, "fp16")  # 3 k-steps -> 4: one stage of 4, two of 2
    assert sp.check({**cfg, "nb": 1, "splitk": 2}, short, LIMITS) is None
    assert sp.check({**cfg, "nb": 1, "splitk": 4}, short, LIMITS) is not None
    assert not sp.supports("fp32") and sp.supports("bf16")
    assert all(sp.normalize(kg, "fp16") is not None for kg in sp.known_good)


def test_adapt_to_another_n():
    fam = get_family(FAMILY)
    cfg = dict(mr=2, ks=2, nb=4, warps=4, stages=4, splitk=16, minb=1, bload="vec")
    one = problem_env(4096, 4096, 1, 8_000_000, "fp16")
    got = fam.adapt(cfg, "fp16", one, LIMITS)
    assert got == {**cfg, "nb": 1, "bload": "scalar", "red": "last", "dec": "walk"}
    sixteen = problem_env(4096, 4096, 16, 8_000_000, "fp16")
    assert fam.adapt(cfg, "fp16", sixteen, LIMITS) == {**cfg, "nb": 2, "red": "last", "dec": "walk"}
    atomic = {**cfg, "red": "atomic"}  # the second step's reduction survives adaptation
    assert fam.adapt(atomic, "fp16", sixteen, LIMITS) == {**atomic, "nb": 2, "dec": "walk"}
    lean = {**atomic, "dec": "lean"}  # the decode survives adaptation
    assert fam.adapt(lean, "fp16", sixteen, LIMITS) == {**lean, "nb": 2}
    assert fam.adapt({**lean, "warps": 8, "minb": 4}, "fp16", sixteen, LIMITS) is None  # mr 2 under 64 registers


def test_the_gate_keeps_the_tuner_to_where_the_family_wins():
    """Enabled by default, searched only at N 8-32 and density >= 0.15 (sessions 24-25: it beat the llm records at
    N = 8-32, d 0.2-0.5) and at N 1-7 from density 0.4 (session 28: N = 1, d 0.5); the kernel's own tests pass gate 0.
    At N < 8 the scalar-B one-tile config is tried first."""
    sp = space()
    assert sp.enabled
    m, k = 4096, 4096
    cfg = sp.normalize(sp.known_good[0], "fp16")
    assert cfg["dec"] == "lean" and cfg["nb"] == 2
    for n, d, ok in [(16, 0.2, True), (16, 0.16, True), (9, 0.3, True), (32, 0.5, True), (16, 0.14, False),
                     (16, 0.1, False), (8, 0.3, True), (7, 0.3, False), (33, 0.3, False), (64, 0.3, False), (1, 0.5, True),
                     (1, 0.41, True), (4, 0.45, True), (1, 0.39, False), (1, 0.3, False)]:
        env = problem_env(m, k, n, round(d * m * k), "fp16")
        c = {**cfg, "nb": 1, "bload": "vec" if n % 8 == 0 else "scalar"}
        assert (sp.check(c, env, DEFAULT_LIMITS) is None) == ok, (n, d)
        assert sp.check(c, env, LIMITS) is None, (n, d)  # the kernel itself runs there
        assert bool(sp.defaults("fp16", env, DEFAULT_LIMITS)) == ok, (n, d)
    why = sp.check(cfg, problem_env(m, k, 64, m * k // 4, "fp16"), DEFAULT_LIMITS)
    assert why.startswith("searched only where it wins"), why  # the first constraint: the tuner's check stops there
    # N = 32: the one-column-tile config first; N = 16: the nb 2 one
    first32 = sp.defaults("fp16", problem_env(m, k, 32, m * k // 4, "fp16"), DEFAULT_LIMITS)[0]
    assert first32["nb"] == 4 and first32["dec"] == "lean"
    assert sp.defaults("fp16", problem_env(m, k, 16, m * k // 4, "fp16"), DEFAULT_LIMITS)[0] == cfg
    first1 = sp.defaults("fp16", problem_env(m, k, 1, m * k // 2, "fp16"), DEFAULT_LIMITS)[0]
    assert (first1["nb"], first1["bload"], first1["dec"], first1["splitk"]) == (1, "scalar", "lean", 16)


def test_fit_slots_shared_memory_and_overflow():
    """dec 'fit': slots of vcap value bytes a tile (shared memory exact against its constraint), CAPU in the kernel is
    the slot's 16-byte units of values, the stages a layout sends to the global-memory path (none at d 0.5 uniform with
    vcap 320 / 384, every one of a dense matrix), and the variant survives adaptation to N."""
    h, sp, fam = host(), space(), get_family(FAMILY)
    cfg = dict(mr=1, ks=4, nb=2, warps=8, stages=4, splitk=16, minb=4, bload="vec", red="atomic", dec="fit", vcap=320)
    assert sp.normalize(cfg, "fp16") == cfg and sp.normalize({**cfg, "dec": "lean"}, "fp16") == {
        k: v for k, v in cfg.items() if k != "vcap"} | {"dec": "lean"}
    # 4096 columns: 256 k-steps, 64 stages, 4 a split: 17 pointer entries -> 20; slot 40 * 4 + 320 * 4 + 16 = 1456
    want = 16 + 8 * (4 * 20 + 4 * 1456) + 16 * 16 * 32
    assert h.shared_bytes(cfg, 4096) == want == 55440  # 4 blocks of 256 threads an SM (228 KB, 1 KB each reserved)
    assert h.shared_bytes({**cfg, "dec": "lean"}, 4096) == want + 8 * 4 * 4 * (512 - 320)
    env = problem_env(11008, 4096, 16, 11008 * 4096 // 2, "fp16")
    fit_c = next(c for c in sp.constraints if "vcap" in c.expr)
    for c in (cfg, {**cfg, "vcap": 384, "ks": 2, "stages": 6}, {**cfg, "mr": 2, "warps": 4, "vcap": 384, "splitk": 6}):
        need = h.shared_bytes(c, 4096)
        run = {**DEFAULT_LIMITS, **LIMITS, **env, **c}
        assert eval(fit_c.expr, {}, {**run, "max_dyn_smem_bytes": need}), c
        assert not eval(fit_c.expr, {}, {**run, "max_dyn_smem_bytes": need - 1}), c
        assert sp.check(c, env, LIMITS) is None, c
    src = render.render(sp, cfg, "fp16")
    assert "#define CAPU 81 " in src and "#define SLOT 1456\n" in src and src.split("\n", 1)[0].endswith(" dec=fit vcap=320")
    assert "half_decode_g(" in src and "half_decode_g(" not in render.render(sp, {**cfg, "dec": "lean"}, "fp16")
    # the stages that outgrow a slot (decoded from global memory)
    for d, vcap, lo, hi in [(0.5, 320, 0, 0), (0.5, 384, 0, 0), (0.3, 320, 0, 0), (0.6, 320, 0.005, 0.1), (0.7, 320, 0.9, 1)]:
        meta, vals, vptr, info = h.build(random_matrix(256, 4096, d, "uniform", 0), "fp16")
        over, n = h.stages_over({**cfg, "vcap": vcap}, vptr, info)
        assert n == 16 * 64 and lo <= over / n <= hi, (d, vcap, over, n)
    meta, vals, vptr, info = h.build(sps.csr_matrix(np.ones((32, 256), dtype=np.float32)), "fp16")
    assert h.stages_over({**cfg, "vcap": 384}, vptr, info) == (8, 8)
    # adaptation keeps the variant and its capacity
    sixteen = problem_env(4096, 4096, 16, 8_000_000, "fp16")
    assert fam.adapt({**cfg, "nb": 4}, "fp16", sixteen, LIMITS) == cfg
    got = fam.adapt(cfg, "fp16", problem_env(4096, 4096, 3, 8_000_000, "fp16"), LIMITS)
    assert got is not None and got["dec"] == "fit" and got["vcap"] == 320 and got["bload"] == "scalar"


# sha256 of the dec 'walk' kernels (fp16, bf16) of these configs as the template rendered them before `dec` existed
# (session 24's measured kernel): dec 'walk' must stay it, byte for byte but for the header's " dec=walk" (the header
# states every parameter: tests/test_space_render.py)
WALK_SOURCES = [
    dict(mr=1, ks=4, nb=2, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic"),
    dict(mr=2, ks=2, nb=1, warps=4, stages=3, splitk=3, minb=1, bload="scalar", red="release"),
    dict(mr=4, ks=4, nb=4, warps=2, stages=6, splitk=1, minb=1, bload="vec"),
]
WALK_SHA256 = "f63b98560099b21c2392767ce7f90ecadabca629e88290926253e41908eeb1b6"


def test_dec_walk_renders_the_kernel_before_dec_existed():
    import hashlib
    h = hashlib.sha256()
    for cfg in WALK_SOURCES:
        for dtype in ("fp16", "bf16"):
            src = render.render(space(), cfg, dtype)
            assert src == render.render(space(), {**cfg, "dec": "walk"}, dtype)
            head, rest = src.split("\n", 1)
            assert head.endswith(" dec=walk") and "dec=" not in rest, head
            h.update((head[: -len(" dec=walk")] + "\n" + rest).encode())
    assert h.hexdigest() == WALK_SHA256


def test_geometry_args_and_workspace():
    h = host()
    a = random_matrix(1000, 3000, 0.3, "uniform", 1)
    cfg = dict(mr=2, ks=2, nb=2, warps=4, stages=4, splitk=4, minb=1, bload="vec")
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    S = -(-1000 // 16)
    rb = -(-S // 8)
    grid, block = h.geometry(k, 40)  # 40 columns: 3 column tiles of 16
    assert block == (128,) and grid == (rb * 4 * 3,)
    args = h.args(k, 40, "B", "C")
    ws, cnt = args[3], args[4]
    assert ws.host.shape == (rb * 3 * 4 * 4 * 32 * 2 * 2 * 4,) and cnt.host.shape == (rb * 3,) and not cnt.host.any()
    assert args[5:7] == ("B", "C")
    atomic = h.args(fake_kernel(FAMILY, {**cfg, "red": "atomic"}, "fp16", a), 40, "B", "C")  # one slice a tile, its own
    assert atomic[3].host.shape == (rb * 3 * 4 * 32 * 2 * 2 * 4,) and not atomic[3].host.any()
    assert atomic[3] is not ws and atomic[4].host.shape == (rb * 3,)
    KTP = -(-(-(-3000 // 16)) // 4) * 4
    assert [int(x) for x in args[7:]] == [1000, 40, 3000, S, KTP, -(-(KTP // 2) // 4), 3]


# ---- the kernel on the CPU --------------------------------------------------------------------------------

EMU_PRELUDE = EMU_CORE + EMU_SPLITK + r'''
#include <atomic>
struct alignas(16) uint4_t { unsigned int x, y, z, w; };
std::atomic<long> g_from_global{0};  // dec 'fit': values the kernel read from global memory (stages past the slot)
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline unsigned int __byte_perm(unsigned int a, unsigned int b, unsigned int s) {
    const unsigned long long v = ((unsigned long long)b << 32) | a;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned int)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
inline uint2 lds64(unsigned int a) { if (a % 8) die("misaligned lds64"); chk(a, 8); uint2 v; std::memcpy(&v, smem + a, 8); return v; }
// the template's half_decode() restated: p = base + popc(w & ltm); element e = the value at p where bit m_e is set (then
// p + 1), else 0; elements 0, 1 -> lo, 2, 3 -> hi
inline void half_decode(unsigned int& lo, unsigned int& hi, unsigned int w, unsigned int base, unsigned int vt,
                        unsigned int ltm, unsigned int m0, unsigned int m1, unsigned int m2, unsigned int m3) {
    unsigned int a = vt + 2u * (base + (unsigned int)__popc(w & ltm));
    const unsigned int m[4] = {m0, m1, m2, m3};
    unsigned int x[4] = {0, 0, 0, 0};
    for (int e = 0; e < 4; ++e)
        if (w & m[e]) { x[e] = lds16(a); a += 2; }
    lo = __byte_perm(x[0], x[1], 0x5410);
    hi = __byte_perm(x[2], x[3], 0x5410);
}
// dec 'fit' (the template's half_decode_g, the same C++): half_decode() with the values read from global memory
inline void half_decode_g(unsigned int& lo, unsigned int& hi, unsigned int w, unsigned int base,
                          const unsigned short* vt, unsigned int ltm, unsigned int m0, unsigned int m1,
                          unsigned int m2, unsigned int m3) {
    const unsigned short* p = vt + base + __popc(w & ltm);
    const unsigned int m[4] = {m0, m1, m2, m3};
    unsigned int x[4];
    for (int e = 0; e < 4; ++e) {
        x[e] = 0u;
        if (w & m[e]) { x[e] = (unsigned int)__ldg(p++); g_from_global += 1; }
    }
    lo = __byte_perm(x[0], x[1], 0x5410);
    hi = __byte_perm(x[2], x[3], 0x5410);
}
// dec 'fit' (the template's cp_async16_zif): a copy of src_bytes (0: zeros) where n > above
inline void cp_async16_zif(unsigned int dst, const void* src, int n, int above, int src_bytes) {
    if (n > above) cp_async16(dst, src, src_bytes);
}
// dec 'lean' (the template's cp_async16_if): a copy where n > above
inline void cp_async16_if(unsigned int dst, const void* src, int n, int above) { if (n > above) cp_async16(dst, src, 16); }
'''

EMU_MAIN = splitk_main(  # vals in 16-byte units (aligned as the kernel's loads need)
    arrays='    auto meta = rd<uint4_t>(d + "/meta"), vals = rd<uint4_t>(d + "/vals");\n'
           '    auto vptr = rd<int>(d + "/vptr");',
    call="(const unsigned int*)meta.data(), (const unsigned char*)vals.data(), vptr.data(), ws.data(), cnt.data(), "
         "B.data(), C.data(), M, N, K, S, ARG6, sps, ntiles",
    tail='    FILE* f = std::fopen((d + "/from_global").c_str(), "w");\n'
         '    std::fprintf(f, "%ld\\n", (long)g_from_global);\n'
         '    std::fclose(f);')


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
        meta, vals, vptr, info = h.build(a, self.dtype)
        v = np.zeros(-(-len(vals) // 8) * 8, dtype=np.uint16)  # whole 16-byte units (the device allocation's size)
        v[:len(vals)] = vals
        d = write_inputs(self.folder, {"meta": meta, "vals": v, "vptr": vptr, "B": np.ascontiguousarray(b16)})
        S, KTP, rb, ntiles, sps = h._dims(c, m, k, n)
        grid = h.geometry(fake_kernel(FAMILY, c, self.dtype, a), n)[0][0]
        got = run_splitk(self.exe, d, (m, n, k, S, KTP, sps, ntiles), grid, h.shared_bytes(c, k), copy_at_issue,
                         self.dtype, h.workspace_shape(c, rb, ntiles))
        self.from_global = int((d / "from_global").read_text())  # dec 'fit': values read from global memory
        return got


EMU_CFGS = [  # every mr, ks, nb, stages, bload, split-K on and off (every red), 2 to 8 warps
    dict(mr=2, ks=2, nb=2, warps=4, stages=4, splitk=3, minb=1, bload="vec", red="atomic"),  # empty trailing splits
    dict(mr=1, ks=4, nb=1, warps=2, stages=2, splitk=1, minb=1, bload="scalar"),
    dict(mr=4, ks=2, nb=4, warps=2, stages=3, splitk=2, minb=1, bload="scalar"),
    dict(mr=1, ks=2, nb=1, warps=8, stages=6, splitk=8, minb=2, bload="vec", red="release"),
    dict(mr=2, ks=4, nb=2, warps=4, stages=3, splitk=1, minb=1, bload="scalar"),
]


@pytest.mark.heavy  # CI's time (12.2 of 12.5 min on 2 CPUs): enabled, but run with -m heavy after changing the family
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_kernel_source_emulated_on_the_cpu_is_correct(dtype, tmp_path):
    """Not a GPU result: the rendered kernel (its own C++: pointer copy, B staging, the stage ring and its copies, the
    k-step walk, split-K and its counters, the epilogue) with cp.async / ldmatrix / mma.sync emulated and half_decode()
    restated in C++: every adversarial case at N = 1, 3, 8 and 24 with each config that can run it (scalar B for odd
    N), cp.async landing at issue or at the last moment wait_group allows; C within the dtype's tolerance of float64,
    every element written (C starts as NaN)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    sp = space()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        emus = list(pool.map(lambda ic: Emulated(ic[1], dtype, _mk(tmp_path / f"c{ic[0]}")), enumerate(EMU_CFGS)))
    rng = np.random.default_rng(0)
    ran = 0
    for name, a in adversarial().items():
        for n in (1, 3, 8, 24):
            env = problem_env(a.shape[0], a.shape[1], n, sps.csr_matrix(a).nnz, dtype)
            b16 = storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype).view(np.uint16)
            want = ref16(a, b16, dtype)
            for i, emu in enumerate(emus):
                cfg = sp.normalize(emu.cfg, dtype)
                if sp.check(cfg, env, LIMITS) is not None:
                    continue
                mode = (i + n) % 2
                err = rel_err(as_f64(emu.run(a, n, b16, mode), dtype), want)
                assert err <= TOLERANCE[dtype], (name, n, emu.cfg, mode, err)
                ran += 1
    assert ran >= 50


DEC_EMU_CFGS = [  # dec 'lean' (bench/drafts/tcbitmap-dec.md): both rings (an xor for 2 slots, a compare else), every
    # mr, nb, bload, split-K on and off, strips past S; the known-good config (the session-16 best config's twin) first
    dict(mr=1, ks=4, nb=2, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic", dec="lean"),
    dict(mr=2, ks=2, nb=1, warps=4, stages=3, splitk=3, minb=1, bload="scalar", red="release", dec="lean"),
    dict(mr=4, ks=4, nb=2, warps=2, stages=2, splitk=1, minb=1, bload="scalar", dec="lean"),
    dict(mr=2, ks=4, nb=2, warps=4, stages=6, splitk=2, minb=1, bload="vec", red="last", dec="lean"),
]


@pytest.mark.heavy  # CI's time (12.2 of 12.5 min on 2 CPUs): enabled, but run with -m heavy after changing the family
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_dec_variants_emulated_on_the_cpu_are_correct(dtype, tmp_path):
    """Not a GPU result: the rendered dec 'lean' kernels (the lean copies, strips past S decoded and never stored) on
    every adversarial case at N = 1, 3, 8, 16, 32, each config adapted to N as the tuner does (scalar B for odd N, nb no
    wider than N), cp.async landing at issue or at the last moment; C within the dtype's tolerance of float64."""
    import json
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    cases = adversarial()
    plan, keys, emus = _emu_plan(cases, DEC_EMU_CFGS, dtype, tmp_path, "d", ("dec",))
    rng = np.random.default_rng(1)
    for i, (name, n, cfg) in enumerate(plan):
        a = cases[name]
        b16 = storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype).view(np.uint16)
        err = rel_err(as_f64(emus[json.dumps(cfg, sort_keys=True)].run(a, n, b16, i % 2), dtype), ref16(a, b16, dtype))
        assert err <= TOLERANCE[dtype], (name, n, cfg, i % 2, err)
    assert len(plan) >= 100 and len(keys) <= 16, (len(plan), len(keys))


FIT_EMU_CFGS = [  # dec 'fit' (bench/drafts/tcbitmap-d05.md): both rings, every vcap, mr 1 / 2 / 4 (a stage over per
    # strip), nb 1 / 2 / 4, ks 2 / 4, scalar B, split-K on and off (every red); the d 0.5 candidate first (split 2 here)
    dict(mr=1, ks=4, nb=2, warps=8, stages=4, splitk=2, minb=4, bload="vec", red="atomic", dec="fit", vcap=320),
    dict(mr=2, ks=2, nb=1, warps=4, stages=3, splitk=3, minb=1, bload="scalar", red="release", dec="fit", vcap=320),
    dict(mr=4, ks=4, nb=2, warps=2, stages=2, splitk=1, minb=1, bload="scalar", dec="fit", vcap=384),
    dict(mr=1, ks=4, nb=4, warps=4, stages=6, splitk=2, minb=1, bload="vec", red="last", dec="fit", vcap=320),
]


@pytest.mark.heavy  # CI's time (12.2 of 12.5 min on 2 CPUs): enabled, but run with -m heavy after changing the family
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_fit_emulated_on_the_cpu_is_correct(dtype, tmp_path):
    """Not a GPU result: the rendered dec 'fit' kernels (slots of vcap value bytes a tile; a stage whose values outgrow
    its slot copied as zero meta and no values, decoded after the loop from global memory) on every adversarial case at
    N = 1, 3, 8, 16, 32, adapted to N as the tuner does, cp.async landing at issue or at the last moment; C within the
    dtype's tolerance of float64. Both paths run: the dense cases (a full tile is 512 bytes) go through global memory,
    the sparse ones never."""
    import json
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    cases = adversarial()
    plan, keys, emus = _emu_plan(cases, FIT_EMU_CFGS, dtype, tmp_path, "f", ("dec", "vcap"))
    rng = np.random.default_rng(2)
    from_global = {}
    for i, (name, n, cfg) in enumerate(plan):
        a = cases[name]
        b16 = storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype).view(np.uint16)
        emu = emus[json.dumps(cfg, sort_keys=True)]
        err = rel_err(as_f64(emu.run(a, n, b16, i % 2), dtype), ref16(a, b16, dtype))
        assert err <= TOLERANCE[dtype], (name, n, cfg, i % 2, err)
        from_global[name] = from_global.get(name, 0) + emu.from_global
    assert from_global["dense_33x129"] > 0 and from_global["density_0.7"] > 0  # the global-memory path ran
    assert from_global["long_k_24x1000"] == 0 and from_global["empty_rows_and_tiles"] == 0  # the slots held these
    assert len(plan) >= 100 and len(keys) <= 16, (len(plan), len(keys))


def _emu_plan(cases: dict, cfgs: list[dict], dtype: str, tmp_path: Path, tag: str, kept: tuple[str, ...]):
    """The emulation tests' plan: each config adapted to each case at N = 1, 3, 8, 16, 32 as the tuner does (the
    `kept` keys must survive the adaptation), as [(case, n, config)], the distinct configs' JSON keys, and one compiled
    Emulated kernel a key (built in 4 threads)."""
    import json
    fam = get_family(FAMILY)
    plan = []  # (case, n, config adapted to the case and n)
    for name, a in cases.items():
        for n in (1, 3, 8, 16, 32):
            env = problem_env(a.shape[0], a.shape[1], n, sps.csr_matrix(a).nnz, dtype)
            for cfg in cfgs:
                ad = fam.adapt(cfg, dtype, env, LIMITS)
                if ad is not None:
                    assert all(ad[k] == cfg[k] for k in kept), (cfg, ad)
                    plan.append((name, n, ad))
    keys = sorted({json.dumps(c, sort_keys=True) for _, _, c in plan})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        emus = dict(zip(keys, pool.map(lambda ik: Emulated(json.loads(ik[1]), dtype, _mk(tmp_path / f"{tag}{ik[0]}")),
                                       enumerate(keys))))
    return plan, keys, emus


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(a, n, dtype):
    """The known-good configs adapted to N, and a spread of the feasible ones."""
    fam = get_family(FAMILY)
    env = problem_env(a.shape[0], a.shape[1], n, sps.csr_matrix(a).nnz, dtype)
    got = []
    for kg in fam.space.known_good + KNOWN:
        ad = fam.adapt(kg, dtype, env, LIMITS)
        if ad is not None and ad not in got:
            got.append(ad)
    feas = list(fam.space.feasible(dtype, env, LIMITS))
    got += [c for c in feas[:: max(1, len(feas) // 3)] if c not in got]
    assert got, (a.shape, n)
    picked = got[:: max(1, len(got) // 10)]  # about 10 a case and N (the GPU budget)
    for red in ("release", "atomic"):  # the second step's split-K reductions, wherever one is feasible
        if not any(c.get("red") == red for c in picked):
            picked += [c for c in got if c.get("red") == red][:1]
    return picked


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_correct_on_edge_cases(dtype):
    """Through the project's launch path (tests/nk_check.py's check_kn): poisoned C, fresh random B, float64 reference
    of the rounded operands; empty rows and tiles, a full tile, M / K not multiples of 16, a dense row, density 0.7,
    N = 1, 3, 8, 16, 32, 127 (column tiles past nb)."""
    from nk_check import check_kn
    checked = check_kn(FAMILY, dtype, adversarial(), lambda a, n: _gpu_configs(a, n, dtype), (1, 3, 8, 16, 32, 127),
                       TOLERANCE[dtype])
    assert checked > 300


@pytest.mark.gpu
def test_known_good_configs_on_the_llm_shapes():
    """The known-good configs (adapted to N) at 4096 x 4096 d 0.5 / 0.2 and 1024 x 4096 d 0.3, N = 8, 16, 32, fp16; and
    4096 x 4096 d 0.5 N = 16 in bf16; each config run twice where split-K is on (its counters reset themselves)."""
    from nk_check import check_kn
    fam = get_family(FAMILY)

    def configs(a, n, dtype):
        return adapted_known_goods(fam, a, n, dtype, LIMITS, "splitk")
    cases = {f"{m}x{k}_d{d}": random_matrix(m, k, d, "uniform", 3)
             for m, k, d in [(4096, 4096, 0.5), (4096, 4096, 0.2), (1024, 4096, 0.3)]}
    checked = check_kn(FAMILY, "fp16", cases, lambda a, n: configs(a, n, "fp16"), (8, 16, 32), TOLERANCE["fp16"])
    checked += check_kn(FAMILY, "bf16", {"4096x4096_d0.5": cases["4096x4096_d0.5"]},
                        lambda a, n: configs(a, n, "bf16"), (16,), TOLERANCE["bf16"])
    assert checked >= 30


DEC_GPU_CFGS = [  # dec 'lean': the known-good configs (N = 16, N = 32) and a deterministic twin, a deeper ring, mr 2 / 4,
    # scalar B
    dict(mr=1, ks=4, nb=2, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic", dec="lean"),
    dict(mr=1, ks=4, nb=4, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="atomic", dec="lean"),
    dict(mr=1, ks=4, nb=2, warps=8, stages=2, splitk=16, minb=4, bload="vec", red="release", dec="lean"),
    dict(mr=2, ks=4, nb=2, warps=4, stages=6, splitk=2, minb=1, bload="vec", red="last", dec="lean"),
    dict(mr=2, ks=2, nb=1, warps=4, stages=3, splitk=3, minb=1, bload="scalar", red="release", dec="lean"),
    dict(mr=4, ks=4, nb=2, warps=2, stages=4, splitk=1, minb=1, bload="vec", dec="lean"),
]


def _dec_configs(a, n, dtype, cfgs):
    """cfgs adapted to the case and N as the tuner does (None where nothing fits), twice where split-K is on (its
    counters and the atomic workspace reset themselves)."""
    fam = get_family(FAMILY)
    env = problem_env(a.shape[0], a.shape[1], n, sps.csr_matrix(a).nnz, dtype)
    got = []
    for cfg in cfgs:
        ad = fam.adapt(cfg, dtype, env, LIMITS)
        if ad is not None and ad not in got:
            got += [ad, dict(ad)] if ad["splitk"] > 1 else [ad]
    return got


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_dec_variants_correct_on_edge_cases(dtype):
    """dec 'lean' through the project's launch path (nk_check.check_kn) on the adversarial cases (empty rows and
    tiles, a full tile, M / K not multiples of 16, a dense row, density 0.7, dense) at N = 1, 3, 8, 16, 32, 127."""
    from nk_check import check_kn
    checked = check_kn(FAMILY, dtype, adversarial(), lambda a, n: _dec_configs(a, n, dtype, DEC_GPU_CFGS),
                       (1, 3, 8, 16, 32, 127), TOLERANCE[dtype])
    assert checked >= 150  # 156 kernels a dtype


@pytest.mark.gpu
def test_dec_variants_on_the_llm_shapes():
    """dec 'lean' at 4096 x 4096 d 0.5 / 0.2 and 1024 x 4096 d 0.3, N = 8, 16, 32 (fp16), and 4096 x 4096 d 0.5
    N = 16 in bf16; each config twice where split-K is on."""
    from nk_check import check_kn
    cases = {f"{m}x{k}_d{d}": random_matrix(m, k, d, "uniform", 3)
             for m, k, d in [(4096, 4096, 0.5), (4096, 4096, 0.2), (1024, 4096, 0.3)]}
    cfgs = DEC_GPU_CFGS[:4]
    checked = check_kn(FAMILY, "fp16", cases, lambda a, n: _dec_configs(a, n, "fp16", cfgs), (8, 16, 32),
                       TOLERANCE["fp16"])
    checked += check_kn(FAMILY, "bf16", {"4096x4096_d0.5": cases["4096x4096_d0.5"]},
                        lambda a, n: _dec_configs(a, n, "bf16", cfgs), (16,), TOLERANCE["bf16"])
    assert checked == 66  # 6 configs adapted at N = 8 and 16, 8 at N = 32 (nb 4), on 3 cases; 6 at the bf16 case


FIT_GPU_CFGS = [  # dec 'fit': the d 0.5 candidates (N = 16, N = 32), a deterministic twin, ks 2, mr 2 / 4, scalar B
    dict(mr=1, ks=4, nb=2, warps=8, stages=4, splitk=16, minb=4, bload="vec", red="atomic", dec="fit", vcap=320),
    dict(mr=1, ks=4, nb=4, warps=8, stages=3, splitk=16, minb=4, bload="vec", red="atomic", dec="fit", vcap=384),
    dict(mr=1, ks=4, nb=2, warps=8, stages=2, splitk=6, minb=4, bload="vec", red="release", dec="fit", vcap=320),
    dict(mr=2, ks=4, nb=2, warps=4, stages=4, splitk=2, minb=1, bload="vec", red="last", dec="fit", vcap=320),
    dict(mr=2, ks=2, nb=1, warps=4, stages=6, splitk=3, minb=1, bload="scalar", red="release", dec="fit", vcap=384),
    dict(mr=4, ks=4, nb=2, warps=2, stages=4, splitk=1, minb=1, bload="vec", dec="fit", vcap=384),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_fit_correct_on_edge_cases(dtype):
    """dec 'fit' through the project's launch path (nk_check.check_kn) on the adversarial cases (the dense ones take the
    global-memory path for their stages, the sparse ones the slots) at N = 1, 3, 8, 16, 32, 127."""
    from nk_check import check_kn
    checked = check_kn(FAMILY, dtype, adversarial(), lambda a, n: _dec_configs(a, n, dtype, FIT_GPU_CFGS),
                       (1, 3, 8, 16, 32, 127), TOLERANCE[dtype])
    assert checked >= 150


@pytest.mark.gpu
def test_fit_on_the_llm_shapes():
    """dec 'fit' at 4096 x 4096 d 0.5 / 0.2 and 1024 x 4096 d 0.3, N = 8, 16, 32 (fp16), 4096 x 4096 d 0.5 N = 16 in
    bf16, and 4096 x 4096 d 0.6 (vcap 320: ~2 % of the stages outgrow their slot, decoded from global memory, the rest
    from the slots in the same launch); each config twice where split-K is on."""
    from nk_check import check_kn
    h = host()
    cases = {f"{m}x{k}_d{d}": random_matrix(m, k, d, "uniform", 3)
             for m, k, d in [(4096, 4096, 0.5), (4096, 4096, 0.2), (1024, 4096, 0.3), (4096, 4096, 0.6)]}
    _, _, vptr, info = h.build(cases["4096x4096_d0.6"], "fp16")
    over, n = h.stages_over(FIT_GPU_CFGS[0], vptr, info)
    assert 0 < over < n // 5, (over, n)  # both paths in one launch
    cfgs = FIT_GPU_CFGS[:4]
    checked = check_kn(FAMILY, "fp16", cases, lambda a, n: _dec_configs(a, n, "fp16", cfgs), (8, 16, 32),
                       TOLERANCE["fp16"])
    checked += check_kn(FAMILY, "bf16", {"4096x4096_d0.5": cases["4096x4096_d0.5"]},
                        lambda a, n: _dec_configs(a, n, "bf16", cfgs), (16,), TOLERANCE["bf16"])
    assert checked >= 80


SWEEP_CASES = [(4096, 4096, 16, 0.5), (4096, 4096, 16, 0.3), (4096, 4096, 16, 0.2), (11008, 4096, 16, 0.5),
               (4096, 4096, 8, 0.5), (4096, 4096, 32, 0.5)]


@pytest.mark.heavy  # CI's time (12.2 of 12.5 min on 2 CPUs): enabled, but run with -m heavy after changing the family
def test_sweep_configs_are_feasible_and_compile():
    """tests/families/tc_bitmap_sweep.txt (the lead's sweep, bench/drafts/tc_bitmap.md): every line parses, runs on
    the cases of its N (at least 2 lines a case besides the known-good ones) and compiles without spills."""
    import json
    lines = [ln for ln in (Path(__file__).parent / "tc_bitmap_sweep.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    cfgs = [json.loads(ln.split(":", 1)[1]) for ln in lines]
    assert all(ln.split(":", 1)[0] == FAMILY for ln in lines) and len(cfgs) >= 8
    sp = space()
    for m, k, n, d in SWEEP_CASES:
        env = problem_env(m, k, n, round(d * m * k), "fp16")
        ok = [c for c in cfgs if sp.check(sp.normalize(c, "fp16"), env, LIMITS) is None]
        assert len(ok) >= 2, (m, k, n, d)
        assert all(sp.check(sp.normalize(kg, "fp16"), env, LIMITS) is None
                   for kg in sp.known_good if 8 * kg["nb"] <= n), (m, k, n)
    if sat_compile.nvcc_path() is None:
        return
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: _ptxas(c, "fp16"), cfgs))
    for cfg, rep in zip(cfgs, reports):
        assert all(int(x) == 0 for x in re.findall(r"(\d+) bytes spill", rep)), (cfg, rep)
