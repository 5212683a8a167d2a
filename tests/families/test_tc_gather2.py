"""tc_gather2 (tc_gather's row-block unions, the tile's gathered rows of B staged by cp.async and gathered again by
ldmatrix): the layout round-trips to A by the kernel's own rule (tiles, groups, row blocks' k-steps, slots, the
B-operand fragment rule) for random and adversarial patterns and through the row permutation; its invariants and bank
placement; every feasible config renders; nvcc compiles a covering sample (fp16, bf16) without spills; constraints,
shared memory, adaptation to N, launch arguments and caching; the rendered kernel itself run on the CPU (each CUDA
thread a std::thread, ldmatrix / mma.sync / cp.async emulated) against float64; on a GPU, sampled configs against
float64 on the edge cases at N = 1, 7, 72, 512, 2049, fp16 and bf16."""
from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import FakeDeviceCSR, check_launch_matches_signature, fake_kernel, signature
from space_checks import compile_reports, covering, known_goods_in, regs_and_spill, unique_feasible
from tc_emu import EMU_CORE, EMU_RUN, gxx, write_inputs
from tc_emu import as_f64 as _as_f64, rel_err as _rel_err  # (the names gather3, tc_union and the tf32 file import)
from test_tc_gather import clustered  # rows from column templates: reordering has something to find
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import DTYPES, TOLERANCE, bf16_float, host_values, random_matrix, storage
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env

FAMILY = "tc_gather2"
GEOMS = [(1, 2, 2), (1, 16, 8), (2, 4, 4), (2, 8, 2), (4, 2, 8), (4, 4, 4)]  # (rn, wm, ksteps)


def host():
    """The family's host side (variants/tc_gather2.py), loaded by the registry."""
    return get_family(FAMILY).host


def space():
    return get_family(FAMILY).space


def _vals(a, rng):
    a = sps.csr_matrix(a, dtype=np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
    a.data[np.abs(a.data) < 1e-3] = 1.0  # never zero after rounding to 16 bits
    return a


def edge_cases():
    """Empty rows, row blocks and tiles; one dense row among empty ones; all rows identical; M not a multiple of 8;
    K not a multiple of 16 (and K < 16); all zero; clustered rows (reordering moves them); power-law rows; a wide K
    (many groups)."""
    rng = np.random.default_rng(11)
    out = {}
    d = np.zeros((40, 300), dtype=np.float32)
    d[17] = rng.standard_normal(300).astype(np.float32) + 0.5
    out["one_dense_row"] = _vals(d, rng)
    row = (rng.random(257) < 0.2) * (rng.standard_normal(257) + 0.5)
    out["identical_rows_37x257"] = sps.csr_matrix(np.tile(row.astype(np.float32), (37, 1)))
    d = (rng.random((77, 200)) < 0.07) * rng.standard_normal((77, 200))
    d[8:72] = 0.0  # empty row blocks and, for 64-row tiles and smaller, empty tiles
    d[1] = rng.standard_normal(200) + 0.5  # a dense row
    out["empty_blocks_77x200"] = _vals(d, rng)
    out["k_below_16"] = _vals(sps.random(13, 5, density=0.5, format="csr", random_state=3), rng)
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["clustered_203"] = clustered()
    out["powerlaw_101"] = random_matrix(101, 384, 0.08, "powerlaw", 3)
    out["wide_24x3000"] = _vals(sps.random(24, 3000, density=0.05, format="csr", random_state=5), rng)
    out["dense_33x129"] = _vals(np.ones((33, 129)), rng)
    return out


def rounded(a, dtype):
    """A's values as the kernel sees them, float64."""
    d = a.toarray().astype(np.float32)
    return (bf16_float(storage(d, "bf16")) if dtype == "bf16" else d.astype(np.float16)).astype(np.float64)


# ---- the layout -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rn,wm,ks", GEOMS)
def test_layout_round_trips_to_a_by_the_kernel_rule(rn, wm, ks):
    """decode() walks each tile's groups, each row block's k-steps, each k's slot and the column gcols stages there,
    and each lane's weights by the B-operand fragment rule: A exactly (rounded to 16 bits), fp16 and bf16."""
    h = host()
    cases = {**edge_cases(), "uniform_64x256": random_matrix(64, 256, 0.05, "uniform", 0)}
    for name, a in cases.items():
        for dtype in ("fp16", "bf16"):
            lay = h.build(a, rn, wm, ks, dtype)
            np.testing.assert_array_equal(h.decode(lay), rounded(a, dtype), err_msg=f"{name} {dtype}")


@pytest.mark.parametrize("order", ["natural", "minhash", "greedy"])
@pytest.mark.parametrize("rn,wm,ks", [(1, 4, 2), (2, 4, 4), (4, 2, 4)])
def test_reordered_layout_round_trips_through_the_permutation(order, rn, wm, ks):
    """The kernel's row r is A's row perm[r] (core.reorder for groups of 8 * rn rows, as tc_gather); decoding the layout
    and scattering row r to perm[r] gives A; reordering shrinks the k-steps where rows cluster."""
    h = host()
    a = clustered()
    lay = h.build_ordered(a, rn, wm, ks, "fp16", order)
    perm = lay["perm"]
    assert perm.dtype == np.int32 and np.array_equal(np.sort(perm), np.arange(a.shape[0]))
    back = np.zeros(a.shape)
    back[perm] = h.decode(lay)
    np.testing.assert_array_equal(back, rounded(a, "fp16"))
    if order == "natural":
        assert np.array_equal(perm, np.arange(a.shape[0]))
    else:
        assert lay["steps"] < h.build(a, rn, wm, ks)["steps"], (order, rn)


def test_layout_invariants():
    """Per tile: its groups stage exactly its rows' union, in order, -1 only after it; per (tile, row block, group):
    the real slots of its k-steps are exactly the slots of the columns its rows use in that group, each once, at most
    ksteps steps; step_ptr is monotone; padding slots are valid slots."""
    h = host()
    a = random_matrix(150, 700, 0.06, "uniform", 4)
    for rn, wm, ks in GEOMS:
        lay = h.build(a, rn, wm, ks)
        gk, rr = 16 * ks, 8 * rn
        gs, gcols, sp_, kslot, avals = (lay[x] for x in ("tile_gptr", "gcols", "step_ptr", "kslot", "avals"))
        assert gs[0] == 0 and (np.diff(gs) >= 0).all() and gs[-1] == lay["groups"]
        assert sp_[0] == 0 and (np.diff(sp_) >= 0).all() and sp_[-1] == lay["steps"]
        assert len(sp_) == lay["groups"] * wm + 1
        assert kslot.max(initial=0) < gk and len(kslot) == 16 * lay["steps"] and len(avals) == lay["steps"] * rn * 128
        av = avals.reshape(lay["steps"], rn, 32, 4)
        dense = a.toarray() != 0
        for s in range(lay["tiles"]):
            rows = dense[s * wm * rr:(s + 1) * wm * rr]
            union = np.flatnonzero(rows.any(axis=0))
            ng = int(gs[s + 1] - gs[s])
            staged = gcols[gs[s] * gk:gs[s + 1] * gk]
            assert ng == -(-len(union) // gk)
            assert np.array_equal(staged[:len(union)], union) and (staged[len(union):] == -1).all()
            for b in range(wm):
                brows = rows[b * rr:(b + 1) * rr]
                for j in range(ng):
                    pair = gs[s] * wm + b * ng + j
                    t0, t1 = sp_[pair], sp_[pair + 1]
                    assert t1 - t0 <= ks
                    want = {i for i in range(gk) if staged[j * gk + i] >= 0 and brows[:, staged[j * gk + i]].any()}
                    assert t1 - t0 == -(-len(want) // 16)
                    # real entries: lanes holding a nonzero weight name the slot of their k
                    slots = kslot[t0 * 16:t1 * 16].reshape(-1, 16)
                    used = set()
                    for t in range(t1 - t0):
                        for kk in range(16):
                            q, hh = (kk % 8) // 2, kk % 2 + 2 * (kk // 8)
                            if av[t0 + t][:, q::4, hh].any():
                                used.add(int(slots[t, kk]))
                    assert used <= want and len(set(slots.ravel().tolist()) & want) == len(want)
                    assert len(slots.ravel()) - len(want) < 16  # less than one step of padding


def test_bank_placement():
    """ldmatrix.x4 wavefronts (4 = conflict-free): dense tiles need none extra; uniform random patterns stay within
    5.2 (an order by slot alone is worse)."""
    h = host()
    assert h.bank_wavefronts(h.build(sps.csr_matrix(np.ones((64, 512))), 2, 4, 4)) == 4.0
    a = random_matrix(1024, 768, 0.05, "uniform", 0)
    for rn, wm, ks in ((1, 8, 4), (2, 8, 8), (4, 4, 4)):
        lay = h.build(a, rn, wm, ks)
        wf = h.bank_wavefronts(lay)
        assert 4.0 <= wf <= 5.2, (rn, wm, ks, wf)
        # the same slots of each k-step in ascending order: more conflicts
        srt = dict(lay, kslot=np.sort(lay["kslot"].reshape(-1, 16), axis=1).ravel())
        assert h.bank_wavefronts(srt) > wf + 0.3, (rn, wm, ks)


def test_the_builder_leaves_the_callers_matrix_alone_and_sums_duplicates():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    lay = h.build(a, 1, 2, 2)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    want = np.zeros((1, 8))
    want[0, 3] = 3.0
    np.testing.assert_array_equal(h.decode(lay), want)
    assert lay["steps"] == 1


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    for n in (1, 7, 128, 2049):
        checked = check_launch_matches_signature(FAMILY, dtype, a, n)
        assert checked > 0 or not space().supports(dtype)


PROBLEMS = [(3072, 768, 2048, 0.05), (512, 2048, 512, 0.1), (64, 256, 7, 0.05), (101, 384, 1, 0.08)]


def check_gathered_render(src: str, cfg: dict, dtype: str) -> None:
    """What a rendered gathered-union kernel (tc_gather2, tc_gather3) must hold: the dtype's MMA and conversion, the
    row permutation's read exactly where rows are reordered, cp.async staging of B exactly for bload vec."""
    t = "bf16" if dtype == "bf16" else "f16"
    assert f"mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32" in src and f"cvt.rn.{t}.f32" in src
    assert ("__ldg(row_perm + grow)" in src) == (cfg["row_order"] != "natural")
    assert ("cp_async16(dst" in src) == (cfg["bload"] == "vec")


def test_every_feasible_config_renders():
    """Every feasible config of a few problems renders, for fp16 and bf16 (the MMA, the conversions, the signature)."""
    sp = space()
    count = 0
    for cfg in unique_feasible(sp, PROBLEMS):
        for dtype in ("fp16", "bf16"):
            check_gathered_render(render.render(sp, cfg, dtype), cfg, dtype)
            count += 1
    assert count > 2000
    # fp32 runs as 3xTF32 only (the 32-bit path: tests/families/test_tc_gather2_tf32.py)
    assert all(c["split"] == "3xtf32" for c in sp.feasible("fp32", problem_env(512, 2048, 512, 100000, "fp32"),
                                                          DEFAULT_LIMITS))


def _covering(n=2048, m=3072, k=768, dtype="fp16"):
    """Configs for N covering each value of each parameter and each (rn, accumulators, copies, bload) (the rest
    cycled)."""
    feas = list(space().feasible(dtype, problem_env(m, k, n, round(0.05 * m * k), dtype), DEFAULT_LIMITS))

    def key(cfg):
        nt = 32 * cfg["wm"] * cfg["wn"]
        return cfg["rn"], cfg["tile_n"] // cfg["wn"], -(-16 * cfg["ksteps"] * cfg["tile_n"] // 8 // nt), cfg["bload"]
    return covering(space(), feas, key, PARAMS, dtype, order=feas[::11] + feas)


PARAMS = ("rn", "wm", "wn", "tile_n", "stages", "ksteps", "bload", "minblocks", "apre", "row_order")


def _check_report(cfg, rep):
    regs, spill = regs_and_spill(cfg, rep)
    # vector staging: no spill; the 16-bit staging (odd N only) may park a word or two: at most 16 bytes (also under
    # an explicit minblocks cap: 3 of the 480 distinct (rn, accumulators, row numbers, bload, stages, cap) its
    # constraint admits spill, 4-16 bytes, all with 16-bit staging; CUDA 13.0)
    assert regs <= 255 and spill <= (0 if cfg["bload"] == "vec" else 16), (cfg, rep)
    smem = re.search(r"(\d+) bytes smem", rep)
    assert smem is None or int(smem.group(1)) == 0, (cfg, rep)  # all shared memory is dynamic
    return regs


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_covering_sample_compiles_with_nvcc(dtype):
    cfgs = _covering(dtype=dtype)[::3] + space().defaults(dtype, problem_env(3072, 768, 2048, 117965, dtype),
                                                         DEFAULT_LIMITS)
    assert len(cfgs) >= 20
    for cfg, rep in zip(cfgs, compile_reports(space(), [(c, dtype) for c in cfgs])):
        _check_report(cfg, rep)


def test_known_good_configs_compile_without_spills():
    sp = space()
    cfgs = known_goods_in(sp)
    for (cfg, _), rep in zip(cfgs, compile_reports(sp, cfgs)):
        _check_report(cfg, rep)


def test_known_good_configs_cover_n_512_and_2048_and_odd_n():
    sp = space()
    for m, k, n, d in ((3072, 768, 2048, 0.05), (3072, 768, 512, 0.05), (512, 2048, 512, 0.1), (512, 2048, 49, 0.1),
                       (64, 256, 1, 0.05)):
        got = sp.defaults("fp16", problem_env(m, k, n, round(d * m * k), "fp16"), DEFAULT_LIMITS)
        assert got, (m, k, n)
        assert all(c["row_order"] == "natural" for c in got)
    assert not sp.enabled  # enabled by the lead after timing


def test_shared_memory_follows_the_config():
    """The host side asks for the ring or the epilogue's C tile, whichever is larger; the constraint budgets it."""
    h = host()
    sp = space()
    cfg = dict(rn=2, wm=8, wn=1, tile_n=128, stages=3, ksteps=8, bload="vec", row_order="natural")
    ring = 3 * 128 * (2 * 128 + 16)
    assert h.ring_bytes(cfg) == ring and h.ctile_bytes(cfg) == 128 * (2 * 128 + 16) and h.shared_bytes(cfg) == ring
    k = fake_kernel(FAMILY, cfg, "fp16", random_matrix(64, 512, 0.05, "uniform", 0))
    assert h.smem_bytes(k) == ring
    env = problem_env(3072, 768, 2048, 117965, "fp16")
    assert sp.check(cfg, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": ring}) is None
    assert "shared memory" in sp.check(cfg, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": ring - 1})
    small = dict(cfg, stages=2, ksteps=2, wm=16, rn=1)  # 128-row C tile over a 2 x 32-row ring
    assert h.shared_bytes(small) == h.ctile_bytes(small) > h.ring_bytes(small)
    src = render.render(sp, cfg, "fp16")
    assert f"#define STAGE_BYTES {128 * (2 * 128 + 16)}" in src and "#define RS 272" in src


def test_constraints():
    sp = space()
    env = problem_env(3072, 768, 2048, 117965, "fp16")
    base = dict(rn=2, wm=8, wn=1, tile_n=128, stages=3, ksteps=8, bload="vec", row_order="natural")
    assert sp.check(base, env, DEFAULT_LIMITS) is None
    assert "accumulators" in sp.check({**base, "tile_n": 256}, env, DEFAULT_LIMITS)  # 128 accumulators a lane
    wide = {**base, "wm": 4, "wn": 2, "tile_n": 256, "ksteps": 4}  # 64 accumulators, 256 threads
    assert sp.check(wide, env, DEFAULT_LIMITS) is None
    assert "registers" in sp.check({**wide, "wm": 8}, env, DEFAULT_LIMITS)  # the same at 512 threads
    assert sp.check({**wide, "wm": 8, "rn": 1}, env, DEFAULT_LIMITS) is None  # 512 threads x 32 accumulators
    assert "copies" in sp.check({**base, "wm": 4}, env, DEFAULT_LIMITS)  # 16 copies a thread and group
    assert sp.check({**base, "wm": 4, "ksteps": 4}, env, DEFAULT_LIMITS) is None
    odd = problem_env(3072, 768, 49, 117965, "fp16")
    assert "divisible by 8" in sp.check({**base, "tile_n": 64}, odd, DEFAULT_LIMITS)
    assert sp.check({**base, "tile_n": 64, "bload": "scalar"}, odd, DEFAULT_LIMITS) is None
    assert "wider" in sp.check({**base, "bload": "scalar"}, problem_env(64, 256, 1, 800, "fp16"), DEFAULT_LIMITS)
    assert "threads" in sp.check({**base, "wn": 2}, env, {**DEFAULT_LIMITS, "max_threads": 256})
    # every feasible config keeps the rules the template relies on
    for cfg in sp.feasible("fp16", env, DEFAULT_LIMITS):
        nt = 32 * cfg["wm"] * cfg["wn"]
        assert cfg["tile_n"] // cfg["wn"] % 16 == 0 and nt % (cfg["tile_n"] // 8) == 0 and nt <= 512
        assert -(-16 * cfg["ksteps"] // (nt // (cfg["tile_n"] // 8))) <= 8


# ---- occupancy knobs (session 11): minblocks (the register cap) and apre (A's operand prefetch) -------------

OLD_BEST = dict(rn=4, wm=4, wn=1, tile_n=64, stages=3, ksteps=8, bload="vec", row_order="minhash")  # session 9's sweep


def _minblocks(cfg) -> int:
    """__launch_bounds__' blocks an SM: minblocks, or where it is 0 the template's estimate."""
    src = render.render(space(), cfg, "fp16")
    return int(re.search(r"__launch_bounds__\(NTHREADS, (\d+)\)", src).group(1))


def _cap(cfg) -> int:
    """The registers a thread ptxas may use under __launch_bounds__(threads, blocks)."""
    return 65536 // (_minblocks(cfg) * 32 * cfg["wm"] * cfg["wn"]) // 8 * 8


def _blocks_an_sm(cfg, regs: int) -> int:
    """Blocks an SM holds on sm_90: registers (a warp's in units of 256), shared memory (+ 1 KB a block), 64 warps."""
    warps = cfg["wm"] * cfg["wn"]
    by_regs = 65536 // (-(-regs * 32 // 256) * 256) // warps
    return min(by_regs, 233472 // (host().shared_bytes(cfg) + 1024), 64 // warps)


def test_occupancy_defaults_render_the_kernel_as_before():
    """apre rot2, what a config stored before it normalizes to (minblocks is buf2's only), renders the bytes a config
    without it renders (the kernel as it was: the estimate's __launch_bounds__, three rotated sets); other values set
    __launch_bounds__ and the main loop, and the header names them."""
    sp = space()
    for cfg in (OLD_BEST, dict(OLD_BEST, bload="scalar", rn=2, wn=2, row_order="natural")):
        full = sp.normalize(cfg, "fp16")
        assert full == dict(cfg, apre="rot2") and sp.normalize(dict(cfg, minblocks=4), "fp16") == full
        src = render.render(sp, cfg, "fp16")
        assert render.render(sp, full, "fp16") == src and " apre=rot2 row_order=" in src.splitlines()[0]
        assert render.render(sp, dict(full, minblocks=4), "fp16") == src  # ignored but for buf2
        assert "const AFrag cur = f0;" in src and "step(f0" not in src
    assert "__launch_bounds__(NTHREADS, 3)" in render.render(sp, OLD_BEST, "fp16")  # the estimate: 3 blocks
    src = render.render(sp, dict(OLD_BEST, minblocks=4, apre="buf2"), "fp16")
    assert "__launch_bounds__(NTHREADS, 4)" in src and " apre=buf2 minblocks=4 " in src.splitlines()[0]
    assert "const AFrag cur" not in src and "AFrag f0, f1;" in src and "lda(t + 2, f);" in src
    src = render.render(sp, dict(OLD_BEST, apre="buf3"), "fp16")
    assert "__launch_bounds__(NTHREADS, 3)" in src and "AFrag f0, f1, f2;" in src and "lda(t + 3, f);" in src


def test_occupancy_constraints():
    """minblocks must fit the SM (shared memory, warps) and leave the registers the config needs (fitted to ptxas)."""
    sp = space()
    env = problem_env(3072, 768, 2048, 117965, "fp16")
    occ = dict(OLD_BEST, minblocks=4, apre="buf2")  # 4 x 55 KB, cap 128
    assert sp.check(occ, env, DEFAULT_LIMITS) is None
    assert "shared memory" in sp.check({**occ, "minblocks": 5}, env, DEFAULT_LIMITS)  # 5 x 55 KB
    assert "cap minblocks sets" in sp.check({**occ, "minblocks": 5, "stages": 2}, env, DEFAULT_LIMITS)  # 96 registers
    assert "shared memory" in sp.check(occ, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": 163 * 1024})  # sm_80
    small = dict(rn=1, wm=8, wn=2, tile_n=64, stages=2, ksteps=2, bload="vec", row_order="natural", apre="buf2")
    assert sp.check({**small, "minblocks": 2}, env, DEFAULT_LIMITS) is None  # 32 warps at 64 registers
    assert "cap minblocks sets" in sp.check({**small, "minblocks": 4}, env, DEFAULT_LIMITS)  # 64 warps at 32
    assert "64 warps" in sp.check({**small, "minblocks": 5}, env, DEFAULT_LIMITS)


SWEEP_FILE = Path(__file__).with_name("tc_gather2_sweep.txt")  # session 11's sweep: probe sweep --config @FILE
SWEEP_CASES = ((3072, 768, 2048, 0.05), (512, 2048, 512, 0.1), (4096, 4096, 1024, 0.05))


def _sweep_given():
    """The sweep file's configs as bench/probe.py reads them (family, config as written)."""
    from scripts import load_script
    probe = load_script("bench/probe.py", "sat_bench_probe")
    return probe, probe.parse_given([f"@{SWEEP_FILE}"])


def _sweep_variants():
    return [space().normalize(c, "fp16") for fam, c in _sweep_given()[1] if fam == FAMILY]


def test_the_sweep_file_parses_and_its_configs_are_feasible_at_its_cases():
    """probe sweep --config @FILE: every line a family's config (defaults filled in), feasible at the sweep's three
    cases (tc_gather's references too); session 9's best first, and every new value of minblocks / apre it uses is
    one the space has. probe refuses a bad line in one line (UserError)."""
    from sparse_autotune.core.space import get_space
    from sparse_autotune.errors import UserError
    probe, given = _sweep_given()
    assert [f for f, _ in given].count(FAMILY) >= 10 and given[0] == (FAMILY, {k: v for k, v in OLD_BEST.items()
                                                                                if k != "bload"})
    for fam, cfg in given:
        sp = get_space(fam)
        for m, k, n, d in SWEEP_CASES:
            norm = sp.normalize(cfg, "fp16")
            assert norm is not None and sp.check(norm, problem_env(m, k, n, round(d * m * k), "fp16"),
                                                 DEFAULT_LIMITS) is None, (fam, cfg, m)
    variants = _sweep_variants()
    assert {c["apre"] for c in variants} == {"rot2", "buf2", "buf3"}
    assert {0, 2, 3, 4, 6} <= {c["minblocks"] for c in variants if c["apre"] == "buf2"}
    for bad, says in (("tc_gather2:{\"rn\": 3}", "not in"), ("nope:{}", "unknown family"),
                      ("tc_gather2:{\"zz\": 1}", "no parameter"), ("tc_gather2", "FAMILY:JSON"), ("@/no/such", "read")):
        with pytest.raises(UserError, match=says):
            probe.parse_given([bad])


def test_probe_sweep_measures_the_given_configs_first_on_each_case(tmp_path, monkeypatch):
    """probe sweep --config (CPU, a stand-in device): each case measures the file's configs feasible there first (marked
    given, not again as samples), then the filtered random sample; the results are written after every case."""
    probe, given = _sweep_given()
    seen = []

    class FakeDevice:
        meta = {"gpu": "fake", "cc": "9.0", "driver": "0", "cuda": "0", "cupy": "0", "date": "today"}

        class info:  # noqa: N801
            name = "Fake GPU"

            @staticmethod
            def limits():
                return dict(DEFAULT_LIMITS)

        def versions_line(self):
            return "fake"

        def context(self, case):
            return case

        def env(self, case):
            return problem_env(case.M, case.K, case.N, round(case.density * case.M * case.K), case.dtype)

        def measure(self, case, family, cfg):
            seen.append((case.M, family, cfg))
            return {"time_us": 10.0 + len(seen), "rel_err": 0.0}

    monkeypatch.setattr(probe, "Device", FakeDevice)
    filt = json.dumps({FAMILY: {"apre": ["buf2"], "minblocks": [4]}, "tc_gather": {"rn": []}})
    out = tmp_path / "sw"
    assert probe.main(["sweep", "--case", "3072x768:2048:0.05:fp16", "--case", "512x2048:512:0.1:fp16",
                       "--families", "tc_gather2,tc_gather", "--samples", "3", "--filter", filt,
                       "--config", f"@{SWEEP_FILE}", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    mine = [c for f, c in given if f == FAMILY]
    for r in res["results"]:
        fam_given = [c for f, c in given if f == r["family"]]
        got = [cfg for m, f, cfg in seen if m == r["case"]["M"] and f == r["family"]]
        assert len(got) == len(fam_given) + (3 if r["family"] == FAMILY else 0)
        assert len({json.dumps(c, sort_keys=True) for c in got}) == len(got)  # nothing twice
        assert len(r["given"]) == len(fam_given) and [g[1] for g in r["given"]] == got[:len(fam_given)]
        assert all(c.get("minblocks") == 4 for c in got[len(fam_given):])  # the sample: filtered
    assert seen[0][2] == space().normalize(mine[0], "fp16")  # session 9's best measured first
    assert "Given configs (--config)" in out.with_suffix(".md").read_text()


def test_occupancy_variants_compile_at_their_register_cap_without_spills():
    """The sweep file's tc_gather2 configs of the new loops and two with 16-bit staging: within the register cap of
    __launch_bounds__, no spill, and the blocks an SM it asks for are reached (registers, shared memory, warps)."""
    cfgs, keys = [], set()
    for c in _sweep_variants():  # the new loops (the old one: the covering test); row_order changes no register
        key = json.dumps({k: v for k, v in c.items() if k != "row_order"}, sort_keys=True)
        if c["apre"] != "rot2" and key not in keys:
            keys.add(key)
            cfgs.append((c, "fp16"))
    cfgs += [(dict(OLD_BEST, wn=2, bload="scalar", apre="buf2", minblocks=2), "bf16"),
             (dict(OLD_BEST, rn=1, wm=2, wn=2, stages=4, ksteps=4, bload="scalar", apre="buf2", minblocks=6), "fp16")]
    reports = compile_reports(space(), cfgs)
    for (cfg, _), rep in zip(cfgs, reports):
        regs = _check_report(cfg, rep)
        assert regs <= _cap(cfg) and _blocks_an_sm(cfg, regs) >= _minblocks(cfg), (cfg, regs)
    regs = {json.dumps(c, sort_keys=True): _check_report(c, r) for (c, _), r in zip(cfgs, reports)}
    assert regs[json.dumps(dict(OLD_BEST, apre="buf2", minblocks=0), sort_keys=True)] < 150  # 159 with rot2


def test_adapt_to_another_n():
    """A config stored for N = 2048 runs N = 1 and N = 7 with 16-bit staging and a 64-column tile; N = 512 as is."""
    fam = get_family(FAMILY)
    cfg = dict(rn=2, wm=4, wn=2, tile_n=256, stages=3, ksteps=4, bload="vec", row_order="greedy")
    for n in (1, 7, 49):
        env = problem_env(3072, 768, n, 117965, "fp16")
        got = fam.adapt(cfg, "fp16", env, DEFAULT_LIMITS)
        assert got is not None and got["bload"] == "scalar" and fam.space.check(got, env, DEFAULT_LIMITS) is None
        assert got["tile_n"] == (64 if n < 64 else got["tile_n"]) and got["row_order"] == "greedy"
    env = problem_env(3072, 768, 512, 117965, "fp16")
    assert fam.adapt(cfg, "fp16", env, DEFAULT_LIMITS) == dict(cfg, apre="rot2")  # (its default)
    assert fam.adapt(cfg, "fp16", problem_env(3072, 768, 72, 117965, "fp16"), DEFAULT_LIMITS)["tile_n"] == 128
    # an explicit register cap is kept where it holds, else the template's estimate (16-bit staging needs more)
    occ = dict(OLD_BEST, apre="buf2", minblocks=4)
    assert fam.adapt(occ, "fp16", problem_env(3072, 768, 512, 117965, "fp16"), DEFAULT_LIMITS) == occ
    got = fam.adapt(occ, "fp16", problem_env(3072, 768, 49, 117965, "fp16"), DEFAULT_LIMITS)
    assert got == dict(occ, bload="scalar", minblocks=0)
    got = fam.adapt(dict(occ, wn=2, minblocks=3), "fp16", problem_env(3072, 768, 49, 117965, "fp16"), DEFAULT_LIMITS)
    assert got["bload"] == "scalar" and fam.space.check(got, problem_env(3072, 768, 49, 117965, "fp16"),
                                                         DEFAULT_LIMITS) is None


def test_geometry_args_and_caching():
    """Grid = tiles x column tiles; the arguments in the kernel's order; the layout cached per (rn, wm, ksteps, dtype
    [, order]) and the permutation once per (rn, order), shared by every config of that rn."""
    h = host()
    a = clustered()
    dev = FakeDeviceCSR(a, "fp16")
    cfg = dict(rn=2, wm=4, wn=1, tile_n=64, stages=3, ksteps=4, bload="vec", row_order="natural")
    k = fake_kernel(FAMILY, cfg, "fp16", a, dev)
    assert h.geometry(k, 200) == ((-(-203 // 64) * 4,), (128,))
    names = [nm for nm, _ in signature(k.source)]
    args = k.args(200, "B", "C")
    assert names == ["tile_gptr", "gcols", "step_ptr", "kslot", "avals", "B", "C", "M", "N", "tiles"]
    assert args[5:7] == ("B", "C") and [int(x) for x in args[7:]] == [203, 200, 4]
    assert [key for key, _ in dev.built] == [("tc_gather2", 2, 4, 4, "fp16")]
    for order in ("greedy", "minhash"):
        g = fake_kernel(FAMILY, {**cfg, "row_order": order}, "fp16", a, dev)
        names = [nm for nm, _ in signature(g.source)]
        gargs = g.args(64, "B", "C")
        assert names[5] == "row_perm" and len(gargs) == len(names)
        np.testing.assert_array_equal(gargs[5].host, h.build_ordered(a, 2, 4, 4, "fp16", order)["perm"])
        fake_kernel(FAMILY, {**cfg, "row_order": order, "wm": 8, "ksteps": 8}, "fp16", a, dev).args(64, "B", "C")
    built = [key for key, _ in dev.built]
    assert built.count(("tc_gather2_perm", 2, "greedy")) == 1 and built.count(("tc_gather2_perm", 2, "minhash")) == 1
    assert all(locked is False for _, locked in dev.built)


# ---- the kernel on the CPU: the rendered source compiled with g++, CUDA threads as std::threads ------------

EMU_PRELUDE = EMU_CORE + r'''
struct uint4 { unsigned int x, y, z, w; };
inline void emu_wait(int n) { cp_wait(n); }
'''

EMU_MAIN = EMU_RUN + r'''
int main(int argc, char** argv) {
    const std::string d = argv[1];
    const int M = std::atoi(argv[2]), N = std::atoi(argv[3]), tiles = std::atoi(argv[4]), ctiles = std::atoi(argv[5]);
    const size_t smem_bytes = std::atoi(argv[6]);
    g_copy_at_issue = std::atoi(argv[7]); g_bf16 = std::atoi(argv[8]);
    auto tg = rd<int>(d + "/tile_gptr", 16); auto gc = rd<int>(d + "/gcols", 16); auto spp = rd<int>(d + "/step_ptr", 16);
    auto ks = rd<unsigned char>(d + "/kslot", 16); auto av = rd<uint2>(d + "/avals", 16);
    auto perm = rd<int>(d + "/perm", 16);
    auto B = rd<unsigned short>(d + "/B", 16);
    std::vector<unsigned short> C((size_t)M * N + 1, 0x7e00);  // poisoned: NaN
    run_blocks(tiles * ctiles, NTHREADS, smem_bytes, [&] {
        spmm_kernel(tg.data(), gc.data(), spp.data(), ks.data(), av.data(), PERM_ARG B.data(), C.data(), M, N, tiles);
    });
    write_arr(d + "/C", C, (size_t)M * N);
    return 0;
}
'''


def emu_source(cfg: dict, dtype: str) -> str:
    """The rendered kernel for g++: its #defines and everything from `struct AFrag` on (the device helpers before it
    are replaced by the emulation; the wait_group statements become emu_wait)."""
    main = EMU_MAIN.replace("PERM_ARG", "perm.data()," if cfg["row_order"] != "natural" else "")
    return EMU_PRELUDE + emu_kernel(render.render(space(), cfg, dtype)) + main


def emu_kernel(src: str) -> str:
    """A rendered kernel (tc_gather2 / tc_gather3) as C++ for g++: its #defines and everything from `struct AFrag` on,
    the wait_group statements as emu_wait, no asm, no __shared__, a plain function."""
    head, body = src.split("struct AFrag", 1)
    defines = "\n".join(ln for ln in head.splitlines() if ln.startswith("#define"))
    body = "struct AFrag" + body
    body = re.sub(r'asm volatile\("cp\.async\.wait_group (\d+);" ::: "memory"\);', r"emu_wait(\1);", body)
    body = body.replace('asm volatile("" ::: "memory");', "")
    body = re.sub(r'extern "C" __global__ void __launch_bounds__\([^)]*\)', "void", body)
    body = body.replace("extern __shared__ __align__(128) unsigned char smem[];", "")
    assert "asm" not in body and "__shared__" not in body
    return defines + "\n" + body


def emu_inputs(folder: Path, arrays: dict, perm, b) -> Path:
    """A fresh folder under folder with each layout array, the row permutation (int32) and B as raw files."""
    return write_inputs(folder, {**arrays, "perm": perm.astype(np.int32), "B": b})


class Emulated:
    """One config's kernel compiled for the CPU; run(a, n, b16) -> C (uint16 bits, M x N)."""

    def __init__(self, cfg: dict, dtype: str, folder: Path):
        self.cfg, self.dtype, self.folder = cfg, dtype, folder
        self.exe = gxx(folder, emu_source(cfg, dtype))

    def run(self, a, n: int, b16, copy_at_issue: int = 1):
        h, c = host(), self.cfg
        if c["row_order"] == "natural":
            lay = h.build(a, c["rn"], c["wm"], c["ksteps"], self.dtype)
            perm = np.arange(a.shape[0], dtype=np.int32)
        else:
            lay = h.build_ordered(a, c["rn"], c["wm"], c["ksteps"], self.dtype, c["row_order"])
            perm = lay["perm"]
        d = emu_inputs(self.folder, {x: lay[x] for x in h.ARRAYS}, perm, np.ascontiguousarray(b16))
        m = a.shape[0]
        tiles, ct = -(-m // h.tile_rows(c)), -(-n // c["tile_n"])
        subprocess.run([str(self.exe), str(d), str(m), str(n), str(tiles), str(ct), str(h.shared_bytes(c)),
                        str(copy_at_issue), "1" if self.dtype == "bf16" else "0"], check=True, timeout=600)
        return np.fromfile(d / "C", dtype=np.uint16).reshape(m, n)


def _emu_configs(dtype):
    """A small covering sample: every rn, wm, wn, tile_n, stages, ksteps, bload, apre and row order at least once
    (minblocks only caps registers: the emulation drops __launch_bounds__)."""
    base = dict(rn=2, wm=4, wn=1, tile_n=64, stages=3, ksteps=4, bload="vec", apre="rot2", row_order="natural")
    cfgs = [base,
            dict(base, rn=1, wm=2, wn=2, stages=2, ksteps=2),
            dict(base, rn=4, wm=2, wn=4, tile_n=128, stages=4, ksteps=8, row_order="greedy", apre="buf3"),
            dict(base, rn=1, wm=8, wn=2, tile_n=256, stages=2, ksteps=8, row_order="minhash"),
            dict(base, rn=2, wm=8, wn=2, tile_n=128, stages=3, ksteps=8, apre="buf2", minblocks=0),
            dict(base, bload="scalar", rn=1, wm=4, stages=4, ksteps=2, row_order="greedy"),
            dict(base, bload="scalar", wm=2, wn=2, stages=2, ksteps=8, apre="buf2", minblocks=5),
            dict(base, bload="scalar", rn=4, wm=4, wn=2, tile_n=128, ksteps=4, row_order="minhash")]
    sp = space()
    assert all(sp.normalize(c, dtype) == c for c in cfgs)
    assert all(sp.check(c, problem_env(203, 3000, 136, 20000, dtype), DEFAULT_LIMITS) is None for c in cfgs)
    return cfgs


def _ref(a, b16, dtype):
    b = (bf16_float(b16) if dtype == "bf16" else b16.view(np.float16)).astype(np.float64)
    return rounded(a, dtype) @ b


TOL = TOLERANCE


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_kernel_source_emulated_on_the_cpu_is_correct(dtype, tmp_path):
    """The rendered kernel (its own C++: staging, ring, k-step walk, prefetch, epilogue) with the CUDA intrinsics
    emulated: every edge case at N = 1, 7, 72 and 136 (partial vector tiles; bf16 at 7 and 136 only: it shares all
    but the conversions and the MMA's type with fp16, and CI's time is short), each with two configs of the sample
    that run that N (the least used so far), the first with cp.async landing at issue, the second at the last moment
    wait_group allows: C against float64 within the dtype's tolerance, every element written."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    sp = space()
    cfgs = _emu_configs(dtype)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        emus = list(pool.map(lambda ic: Emulated(ic[1], dtype, _mk(tmp_path / f"c{ic[0]}")), enumerate(cfgs)))
    rng = np.random.default_rng(0)
    used = {id(e): 0 for e in emus}
    for name, a in edge_cases().items():
        for n in ((1, 7, 72, 136) if dtype == "fp16" else (7, 136)):
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            runs = [e for e in emus if sp.check(e.cfg, env, DEFAULT_LIMITS) is None]
            assert len(runs) >= 2, (name, n)
            b16 = storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype).view(np.uint16)
            want = _ref(a, b16, dtype)
            runs.sort(key=lambda e: used[id(e)])  # the least used first
            for mode, emu in zip((1, 0), runs):
                used[id(emu)] += 1
                err = _rel_err(_as_f64(emu.run(a, n, b16, mode), dtype), want)
                assert err <= TOL[dtype], (name, n, emu.cfg, mode, err)
    assert min(used.values()) >= (4 if dtype == "fp16" else 2)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(n, dtype):
    """A covering sample for N: configs of the sweep's problem sizes that N allows, every parameter value."""
    sp = space()
    env = problem_env(203, 3000, n, 20000, dtype)
    out = []
    for cfg in _covering(n, 203, 3000, dtype):
        if sp.check(cfg, env, DEFAULT_LIMITS) is None and cfg not in out:
            out.append(cfg)
    picked = out[:: max(1, len(out) // 24)]
    for name in ("minblocks", "apre"):  # the occupancy knobs' every value, whatever the stride left out
        for v in sp.param(name).choices(dtype):
            if not any(c.get(name) == v for c in picked):
                picked += [c for c in out if c.get(name) == v][:1]
    return picked + [c for c in sp.defaults(dtype, env, DEFAULT_LIMITS) if c not in picked]


def _gpu_check(dtype: str) -> int:
    """Through the project's launch path (tests/nk_check.py's check_kn): poisoned C, fresh random B, the float64
    reference of the rounded operands; the edge cases at N = 1, 7, 72, 512, 2049."""
    from nk_check import check_kn
    return check_kn(FAMILY, dtype, edge_cases(), lambda a, n: _gpu_configs(n, dtype), (1, 7, 72, 512, 2049), TOL[dtype])


@pytest.mark.gpu
def test_correct_on_edge_cases_fp16():
    assert _gpu_check("fp16") > 300


@pytest.mark.gpu
def test_correct_on_edge_cases_bf16():
    assert _gpu_check("bf16") > 300


@pytest.mark.gpu
def test_known_good_configs_correct_on_the_sweep_problems():
    """The known-good configs on the sweep's two problems (the real sizes: 3072 x 768 N = 2048 d = 0.05, 512 x 2048
    N = 512 d = 0.1), fp16, and once more in bf16 on the first."""
    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    sp = space()
    for (m, k, n, d), dtypes in (((3072, 768, 2048, 0.05), ("fp16", "bf16")), ((512, 2048, 512, 0.1), ("fp16",))):
        for dtype in dtypes:
            a = random_matrix(m, k, d, "uniform", 0)
            a.data = host_values(a.data.astype(np.float32), DTYPES[dtype])
            dev = DeviceCSR(a, dtype)
            a64 = csp.csr_matrix(a.astype(np.float64))
            env = problem_env(m, k, n, a.nnz, dtype)
            for cfg in sp.defaults(dtype, env, DEFAULT_LIMITS):
                kern = build_kernel(dev, FAMILY, cfg, dtype)
                b = cp.asarray(storage(np.random.default_rng(1).standard_normal((k, n)).astype(np.float32), dtype))
                c = cp.empty((m, n), dtype=cp.uint16 if dtype == "bf16" else cp.float16)
                err = check(lambda: kern(b, c), c, reference(a64, b), dtype)
                assert err <= TOL[dtype], (m, k, n, cfg, err)
