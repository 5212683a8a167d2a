"""tc_gather3 (big row blocks staging dense K-slices of B once; each 8/16-row unit gathers its union's rows from the
staged slice by ldmatrix): the layout round-trips to A against scipy by the kernel's own rule (tiles, slices, warps'
units, k-steps, slots, the B-operand fragment rule) for random and adversarial patterns and through the row
permutation; its invariants and bank placement; the builder's speed; the space, rendering, nvcc (no spills);
launch arguments, shared memory, adaptation to N; the rendered kernel itself run on the CPU (each CUDA thread a
std::thread, ldmatrix / mma.sync / cp.async emulated: tests/families/test_tc_gather2.py's emulation) against float64
at N = 1, 7, 72, 136; on a GPU, a covering sample on the edge cases at N = 1, 7, 72, 2049 (fp16, bf16) and the
known-good configs on the roofline's shapes."""
from __future__ import annotations

import concurrent.futures
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import FakeDeviceCSR, check_launch_matches_signature, fake_kernel, signature
from space_checks import compile_reports, covering, known_goods_in, regs_and_spill, unique_feasible
from tc_emu import EMU_RUN
from test_tc_gather import clustered
from test_tc_gather2 import (EMU_PRELUDE, _as_f64, _ref, _rel_err, check_gathered_render, edge_cases, emu_inputs, emu_kernel,
                             gxx, rounded)
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import DTYPES, TOLERANCE, host_values, random_matrix, storage
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env

FAMILY = "tc_gather3"
GEOMS = [(1, 32, 1, 32), (1, 64, 2, 64), (2, 64, 1, 32), (1, 128, 4, 128), (2, 128, 2, 256), (2, 32, 2, 64)]
# (rn, rb, upw, ks)


def host():
    return get_family(FAMILY).host


def space():
    return get_family(FAMILY).space


def cases():
    """tc_gather2's edge cases (one dense row among empty ones, all rows identical, empty row blocks and tiles, K < 16,
    all zero, clustered, power-law, a wide K, dense; M and K not multiples of 8 / of the slice) and a uniform one."""
    return {**edge_cases(), "uniform_64x256": random_matrix(64, 256, 0.05, "uniform", 0)}


# ---- the layout -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rn,rb,upw,ks", GEOMS)
def test_layout_round_trips_to_a_by_the_kernel_rule(rn, rb, upw, ks):
    """decode() walks each tile's slices, each warp's pairs (slice, unit), each step's slots and the weights each lane
    holds by the B-operand fragment rule: scipy's A exactly (rounded to 16 bits), fp16 and bf16."""
    h = host()
    for name, a in cases().items():
        for dtype in ("fp16", "bf16"):
            lay = h.build(a, rn, rb, upw, ks, dtype)
            np.testing.assert_array_equal(h.decode(lay), rounded(a, dtype), err_msg=f"{name} {dtype}")


def test_layout_of_an_m_and_k_off_every_multiple():
    """M = 8 k + 5 rows and K = 3 ks + 7 columns (the last slice partial), a nonzero in the last row and column."""
    h = host()
    a = sps.random(205, 3 * 64 + 7, density=0.08, format="lil", random_state=9, dtype=np.float32)
    a[204, 3 * 64 + 6] = 1.5
    a = sps.csr_matrix(a)
    for geo in ((1, 64, 1, 64), (2, 128, 2, 32)):
        lay = h.build(a, *geo, "fp16")
        np.testing.assert_array_equal(h.decode(lay), rounded(a, "fp16"), err_msg=str(geo))
        assert lay["tiles"] == -(-205 // geo[1]) and lay["slice_k"].max() <= (3 * 64 + 6) // geo[3]


@pytest.mark.parametrize("order", ["natural", "minhash", "greedy"])
@pytest.mark.parametrize("rn", [1, 2])
def test_reordered_layout_round_trips_through_the_permutation(order, rn):
    """The kernel's row r is A's row perm[r] (core.reorder for units of 8 * rn rows); decoding and scattering row r
    to perm[r] gives A; reordering shrinks the k-steps where rows cluster."""
    h = host()
    a = clustered()
    lay = h.build_ordered(a, rn, 64, 1, 64, "fp16", order)
    perm = lay["perm"]
    assert perm.dtype == np.int32 and np.array_equal(np.sort(perm), np.arange(a.shape[0]))
    back = np.zeros(a.shape)
    back[perm] = h.decode(lay)
    np.testing.assert_array_equal(back, rounded(a, "fp16"))
    if order == "natural":
        assert np.array_equal(perm, np.arange(a.shape[0]))
    else:
        assert lay["steps"] < h.build(a, rn, 64, 1, 64)["steps"], (order, rn)


def test_layout_invariants():
    """Per tile: its slices are exactly the K-slices where its rows have a nonzero, in order; per (tile, warp row,
    slice, unit): the real slots of its steps are exactly the columns its rows use in the slice, each once, padded by
    less than a step; step_ptr monotone; all rows identical -> every unit the same steps."""
    h = host()
    a = random_matrix(150, 700, 0.03, "uniform", 4)
    dense = a.toarray() != 0
    for rn, rb, upw, ks in GEOMS:
        lay = h.build(a, rn, rb, upw, ks)
        rr, wm = 8 * rn, rb // (8 * rn * upw)
        ss, sk, sp_, kslot, avals = (lay[x] for x in ("tile_sptr", "slice_k", "step_ptr", "kslot", "avals"))
        assert ss[0] == 0 and (np.diff(ss) >= 0).all() and ss[-1] == lay["slices"] == len(sk)
        assert sp_[0] == 0 and (np.diff(sp_) >= 0).all() and sp_[-1] == lay["steps"]
        assert len(sp_) == lay["slices"] * wm * upw + 1
        assert kslot.max(initial=0) < ks and len(avals) == lay["steps"] * rn * 128
        av = avals.reshape(lay["steps"], rn, 32, 4)
        for s in range(lay["tiles"]):
            rows = dense[s * rb:(s + 1) * rb]
            want_sl = np.flatnonzero([rows[:, j * ks:(j + 1) * ks].any() for j in range(-(-700 // ks))])
            assert np.array_equal(sk[ss[s]:ss[s + 1]], want_sl)
            ns = ss[s + 1] - ss[s]
            for w in range(wm):
                for j, slc in enumerate(want_sl):
                    for v in range(upw):
                        pair = (ss[s] * wm + w * ns + j) * upw + v
                        urows = rows[(w * upw + v) * rr:(w * upw + v + 1) * rr]
                        want = set(np.flatnonzero(urows[:, slc * ks:(slc + 1) * ks].any(axis=0)).tolist())
                        t0, t1 = sp_[pair], sp_[pair + 1]
                        assert t1 - t0 == -(-len(want) // 16)
                        slots = kslot[t0 * 16:t1 * 16].reshape(-1, 16)
                        used = set()
                        for t in range(t1 - t0):
                            for kk in range(16):
                                q, hh = (kk % 8) // 2, kk % 2 + 2 * (kk // 8)
                                if av[t0 + t][:, q::4, hh].any():
                                    used.add(int(slots[t, kk]))
                        assert used == want
                        assert set(slots.ravel().tolist()) >= want
    same = sps.csr_matrix(np.tile((np.arange(300) % 7 == 0).astype(np.float32), (64, 1)))
    lay = h.build(same, 1, 64, 1, 64)
    assert len(set(np.diff(lay["step_ptr"]).tolist())) <= 2  # one count per slice size (the last slice is partial)


def test_bank_placement():
    """ldmatrix.x4 wavefronts (4 = conflict-free): a dense block needs none extra; uniform random patterns stay within
    5.7 (8-row units, sparse slices) and the same slots of each step in ascending order are worse."""
    h = host()
    assert h.bank_wavefronts(h.build(sps.csr_matrix(np.ones((64, 512))), 1, 64, 1, 128)) == 4.0
    a = random_matrix(1024, 768, 0.05, "uniform", 0)
    for geo in ((1, 128, 2, 128), (2, 128, 1, 128), (2, 64, 1, 256)):
        lay = h.build(a, *geo)
        wf = h.bank_wavefronts(lay)
        assert 4.0 <= wf <= 5.7, (geo, wf)
        srt = dict(lay, kslot=np.sort(lay["kslot"].reshape(-1, 16), axis=1).ravel())
        assert h.bank_wavefronts(srt) > wf + 0.3, geo


def test_the_builder_leaves_the_callers_matrix_alone_and_sums_duplicates():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    lay = h.build(a, 1, 32, 1, 32)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    want = np.zeros((1, 8))
    want[0, 3] = 3.0
    np.testing.assert_array_equal(h.decode(lay), want)
    assert lay["steps"] == 1 and lay["slices"] == 1


def test_bad_geometry_is_refused():
    h = host()
    a = random_matrix(64, 64, 0.1, "uniform", 0)
    with pytest.raises(ValueError, match="multiple of 8"):
        h.build(a, 2, 32, 4, 64)
    with pytest.raises(ValueError, match="8-bit slots"):
        h.build(a, 1, 32, 1, 512)
    with pytest.raises(ValueError, match="fp16 and bf16"):
        h.build(a, 1, 32, 1, 64, "fp32")


def test_the_builder_is_vectorised():
    """2 M nonzeros (a 30 M-nonzero layer scales linearly: ~5 s) build in well under a second or two, and the layout
    still decodes on a sample of its rows."""
    h = host()
    a = random_matrix(4096, 1024, 0.5, "uniform", 1)
    t0 = time.process_time()
    lay = h.build(a, 1, 128, 2, 128)
    took = time.process_time() - t0
    assert a.nnz > 2_000_000 and took < 3.0, took
    assert lay["steps"] == lay["step_ptr"][-1] and h.stats(lay)["fill"] > 0.45  # 8-row unions are all of K here


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    for n in (1, 7, 128, 2049):
        assert check_launch_matches_signature(FAMILY, dtype, a, n) > 0
    assert check_launch_matches_signature(FAMILY, "fp32", a, 64) == 0  # 16-bit only


PROBLEMS = [(3072, 768, 2048, 0.05), (11008, 4096, 128, 0.1), (4096, 4096, 64, 0.1), (101, 384, 1, 0.08)]
PARAMS = ("rn", "rb", "upw", "wn", "tile_n", "ks", "stages", "apf", "minb", "bload", "row_order")


def test_every_feasible_config_renders():
    sp = space()
    seen = 0
    for cfg in unique_feasible(sp, PROBLEMS):
        seen += 1
        for dtype in ("fp16", "bf16"):
            src = render.render(sp, cfg, dtype)
            check_gathered_render(src, cfg, dtype)
            assert f"#define NTHREADS {host().threads(cfg)}" in src
    assert seen > 1000


def _covering(n=2048, m=3072, k=768, dtype="fp16"):
    """Feasible configs for N (in a seeded random order) covering each (rn, accumulators, bload, 256 threads or more)
    and each value of each parameter."""
    feas = list(space().feasible(dtype, problem_env(m, k, n, round(0.05 * m * k), dtype), DEFAULT_LIMITS))
    return covering(space(), feas, lambda c: (c["rn"], c["upw"] * c["rn"] * c["tile_n"] // c["wn"], c["bload"],
                                              host().threads(c) >= 256), PARAMS, dtype)


def _check_report(cfg, rep):
    regs, spill = regs_and_spill(cfg, rep)
    assert regs <= 255 and spill == 0, (cfg, rep)
    smem = re.search(r"(\d+) bytes smem", rep)
    assert smem is None or int(smem.group(1)) == 0, (cfg, rep)  # all shared memory is dynamic
    return regs


def test_known_good_and_a_covering_sample_compile_without_spills():
    """nvcc -arch=sm_90, ptxas -v: the known-good configs (fp16 and bf16) and a covering sample of the space (fp16;
    every (rn, accumulators, bload, 256 threads or more) and every value) compile without spills, within the registers the
    __launch_bounds__ estimate allows."""
    sp = space()
    cfgs = known_goods_in(sp)
    cov = _covering()
    assert 12 <= len(cov) <= 28, len(cov)
    cfgs += [(c, "fp16") for c in cov]
    for (cfg, _), rep in zip(cfgs, compile_reports(sp, cfgs, 4)):
        regs = _check_report(cfg, rep)
        minb = int(re.search(r"__launch_bounds__\(NTHREADS, (\d+)\)", render.render(sp, cfg, "fp16")).group(1))
        assert regs <= 65536 // (minb * host().threads(cfg)), (cfg, regs, minb)


def test_known_good_configs_cover_the_roofline_shapes_and_odd_n():
    sp = space()
    for m, k, n, d in ((3072, 768, 2048, 0.05), (11008, 4096, 128, 0.1), (4096, 4096, 64, 0.1), (512, 2048, 49, 0.1),
                       (64, 256, 1, 0.05)):
        got = sp.defaults("fp16", problem_env(m, k, n, round(d * m * k), "fp16"), DEFAULT_LIMITS)
        assert got, (m, k, n)
    assert not sp.enabled  # enabled by the lead after timing


def test_shared_memory_and_constraints():
    h = host()
    sp = space()
    cfg = dict(rn=1, rb=128, upw=2, wn=1, tile_n=128, ks=128, stages=3, apf=2, minb=0, bload="vec", row_order="natural")
    ring = 3 * 128 * (2 * 128 + 16)
    assert h.ring_bytes(cfg) == ring and h.ctile_bytes(cfg) == 128 * 272 and h.shared_bytes(cfg) == ring
    k = fake_kernel(FAMILY, cfg, "fp16", random_matrix(64, 512, 0.05, "uniform", 0))
    assert h.smem_bytes(k) == ring and h.threads(cfg) == 256
    env = problem_env(3072, 768, 2048, 117965, "fp16")
    assert sp.check(cfg, env, DEFAULT_LIMITS) is None
    assert "shared memory" in sp.check(cfg, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": ring - 1})
    small = dict(cfg, ks=32, stages=2)  # the 128-row C tile over a 2 x 32-row ring
    assert h.shared_bytes(small) == h.ctile_bytes(small) > h.ring_bytes(small)
    assert "accumulators" in sp.check(dict(cfg, upw=4), env, DEFAULT_LIMITS)  # 128 a lane
    assert "whole warps" in sp.check(dict(cfg, rb=32, rn=2, upw=4), env, DEFAULT_LIMITS)
    assert "registers" in sp.check(dict(cfg, upw=1, wn=2), env, DEFAULT_LIMITS)  # 1024 threads
    assert "copies" in sp.check(dict(cfg, rb=32, ks=256), env, DEFAULT_LIMITS)  # 128 threads, 32 copies each
    odd = problem_env(3072, 768, 49, 117965, "fp16")
    assert "divisible by 8" in sp.check(dict(cfg, tile_n=64), odd, DEFAULT_LIMITS)
    assert sp.check(dict(cfg, tile_n=64, bload="scalar"), odd, DEFAULT_LIMITS) is None
    src = render.render(sp, cfg, "fp16")
    assert f"#define STAGE_BYTES {128 * 272}" in src and "#define RS 272" in src and "#define WM 8" in src
    # minb: blocks an SM asked of ptxas, within shared memory, warps and the registers the cap leaves
    best = dict(cfg, tile_n=64, ks=256, stages=2)  # 256 threads, 73.7 KB: 3 blocks fit 228 KB
    assert sp.check(dict(best, apf=4, minb=3), env, DEFAULT_LIMITS) is None
    assert "__launch_bounds__(NTHREADS, 3)" in render.render(sp, dict(best, apf=4, minb=3), "fp16")
    assert "shared memory" in sp.check(dict(best, minb=4), env, DEFAULT_LIMITS)  # 4 x 74.7 KB
    assert "registers" in sp.check(dict(best, apf=8, minb=3), env, DEFAULT_LIMITS)  # 80 < 32 + 24 + 28: spills


def test_adapt_to_another_n():
    fam = get_family(FAMILY)
    cfg = dict(rn=1, rb=128, upw=2, wn=1, tile_n=128, ks=128, stages=3, apf=4, minb=0, bload="vec",
               row_order="greedy")
    for n in (1, 7, 49):
        env = problem_env(3072, 768, n, 117965, "fp16")
        got = fam.adapt(cfg, "fp16", env, DEFAULT_LIMITS)
        assert got is not None and got["bload"] == "scalar" and fam.space.check(got, env, DEFAULT_LIMITS) is None
        assert got["tile_n"] == 64 and got["row_order"] == "greedy"
    assert fam.adapt(cfg, "fp16", problem_env(3072, 768, 512, 117965, "fp16"), DEFAULT_LIMITS) == cfg
    assert fam.adapt(cfg, "fp16", problem_env(3072, 768, 72, 117965, "fp16"), DEFAULT_LIMITS)["tile_n"] == 128


def test_geometry_args_and_caching():
    """Grid = tiles x column tiles; the arguments in the kernel's order; the layout cached per (rn, rb, upw, ks, dtype
    [, order]) and the permutation once per (rn, order)."""
    h = host()
    a = clustered()
    dev = FakeDeviceCSR(a, "fp16")
    cfg = dict(rn=1, rb=64, upw=2, wn=1, tile_n=64, ks=64, stages=3, apf=2, minb=0, bload="vec", row_order="natural")
    k = fake_kernel(FAMILY, cfg, "fp16", a, dev)
    assert h.geometry(k, 200) == ((-(-203 // 64) * 4,), (128,))
    names = [nm for nm, _ in signature(k.source)]
    args = k.args(200, "B", "C")
    assert names == ["tile_sptr", "slice_k", "step_ptr", "kslot", "avals", "B", "C", "M", "N", "K", "tiles"]
    assert args[5:7] == ("B", "C") and [int(x) for x in args[7:]] == [203, 200, 320, 4]
    assert [key for key, _ in dev.built] == [("tc_gather3", 1, 64, 2, 64, "fp16")]
    for order in ("greedy", "minhash"):
        g = fake_kernel(FAMILY, {**cfg, "row_order": order}, "fp16", a, dev)
        names = [nm for nm, _ in signature(g.source)]
        gargs = g.args(64, "B", "C")
        assert names[5] == "row_perm" and len(gargs) == len(names)
        np.testing.assert_array_equal(gargs[5].host, h.build_ordered(a, 1, 64, 2, 64, "fp16", order)["perm"])
        fake_kernel(FAMILY, {**cfg, "row_order": order, "rb": 128}, "fp16", a, dev).args(64, "B", "C")
    built = [key for key, _ in dev.built]
    assert built.count(("tc_gather3_perm", 1, "greedy")) == 1 and built.count(("tc_gather3_perm", 1, "minhash")) == 1


# ---- the kernel on the CPU: the rendered source compiled with g++, CUDA threads as std::threads ------------

EMU_MAIN = EMU_RUN + r'''
int main(int argc, char** argv) {
    const std::string d = argv[1];
    const int M = std::atoi(argv[2]), N = std::atoi(argv[3]), K = std::atoi(argv[4]), tiles = std::atoi(argv[5]);
    const int ctiles = std::atoi(argv[6]);
    const size_t smem_bytes = std::atoi(argv[7]);
    g_copy_at_issue = std::atoi(argv[8]); g_bf16 = std::atoi(argv[9]);
    auto ts = rd<int>(d + "/tile_sptr", 16); auto sk = rd<int>(d + "/slice_k", 16); auto spp = rd<int>(d + "/step_ptr", 16);
    auto ks = rd<unsigned char>(d + "/kslot", 16); auto av = rd<uint2>(d + "/avals", 16);
    auto perm = rd<int>(d + "/perm", 16);
    auto B = rd<unsigned short>(d + "/B", 16);
    std::vector<unsigned short> C((size_t)M * N + 1, 0x7e00);  // poisoned: NaN
    run_blocks(tiles * ctiles, NTHREADS, smem_bytes, [&] {
        spmm_kernel(ts.data(), sk.data(), spp.data(), ks.data(), av.data(), PERM_ARG B.data(), C.data(), M, N, K,
                    tiles);
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


class Emulated:
    """One config's kernel compiled for the CPU; run(a, n, b16) -> C (uint16 bits, M x N)."""

    def __init__(self, cfg: dict, dtype: str, folder: Path):
        self.cfg, self.dtype, self.folder = cfg, dtype, folder
        self.exe = gxx(folder, emu_source(cfg, dtype))

    def run(self, a, n: int, b16, copy_at_issue: int = 1):
        h, c = host(), self.cfg
        if c["row_order"] == "natural":
            lay = h.build(a, c["rn"], c["rb"], c["upw"], c["ks"], self.dtype)
            perm = np.arange(a.shape[0], dtype=np.int32)
        else:
            lay = h.build_ordered(a, c["rn"], c["rb"], c["upw"], c["ks"], self.dtype, c["row_order"])
            perm = lay["perm"]
        d = emu_inputs(self.folder, {x: lay[x] for x in h.ARRAYS}, perm, np.ascontiguousarray(b16))
        m, k = a.shape
        tiles, ct = -(-m // c["rb"]), -(-n // c["tile_n"])
        subprocess.run([str(self.exe), str(d), str(m), str(n), str(k), str(tiles), str(ct), str(h.shared_bytes(c)),
                        str(copy_at_issue), "1" if self.dtype == "bf16" else "0"], check=True, timeout=300)
        return np.fromfile(d / "C", dtype=np.uint16).reshape(m, n)


def _emu_configs(dtype):
    """A small covering sample: every rn, rb, upw, wn, tile_n, ks, stages, bload and row order at least once, at most
    256 threads (each one a std::thread)."""
    base = dict(rn=1, rb=32, upw=1, wn=1, tile_n=64, ks=32, stages=2, apf=2, minb=0, bload="vec", row_order="natural")
    cfgs = [base,
            dict(base, rn=2, rb=64, upw=2, wn=2, tile_n=128, ks=64, stages=3, apf=4, row_order="greedy"),
            dict(base, rb=128, upw=4, ks=256, stages=3, apf=8, row_order="minhash"),
            dict(base, bload="scalar", rn=2, rb=32, ks=128, stages=3, apf=8, minb=4),
            dict(base, bload="scalar", rb=64, upw=2, wn=2, ks=64, apf=4, minb=3, row_order="greedy")]
    sp = space()
    assert all(sp.normalize(c, dtype) == c for c in cfgs)
    assert all(sp.check(c, problem_env(203, 3000, 136, 20000, dtype), DEFAULT_LIMITS) is None for c in cfgs)
    return cfgs


EMU_CASES = ("one_dense_row", "identical_rows_37x257", "empty_blocks_77x200", "k_below_16", "all_zero",
             "clustered_203", "wide_24x3000")


def test_kernel_source_emulated_on_the_cpu_is_correct(tmp_path):
    """The rendered kernel (its own C++: staging ring, slice walk, units, prefetch, epilogue) with the CUDA intrinsics
    emulated: edge cases (one dense row among empty ones, all rows identical, empty blocks, K < 16, all zero,
    clustered rows reordered, a wide K of many slices; M and K off every multiple) at N = 1, 7, 72 and 136, fp16 with
    one or two configs that run that N (the least used so far; cp.async landing at issue, then at the last moment
    wait_group allows), bf16 with one: C against float64 within the dtype's tolerance, every element written (C
    starts as NaN). The emulated source of a config is the same for fp16 and bf16 (only the MMA's and cvt's type
    names differ, and those are emulated): one g++ build serves both."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    sp = space()
    cfgs = _emu_configs("fp16")
    assert all(emu_source(c, "fp16") == emu_source(c, "bf16") for c in cfgs)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        emus = list(pool.map(lambda ic: Emulated(ic[1], "fp16", _mk(tmp_path / f"c{ic[0]}")), enumerate(cfgs)))
    rng = np.random.default_rng(0)
    used = {id(e): 0 for e in emus}
    all_cases = edge_cases()
    for dtype in ("fp16", "bf16"):
        for name in EMU_CASES:
            a = all_cases[name]
            for n in (1, 7, 72, 136):
                env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
                runs = [e for e in emus if sp.check(e.cfg, env, DEFAULT_LIMITS) is None]
                assert runs, (name, n)
                b16 = storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype).view(np.uint16)
                want = _ref(a, b16, dtype)
                runs.sort(key=lambda e: used[id(e)])  # the least used first
                for mode, emu in zip((1, 0), runs[:2 if dtype == "fp16" and n in (7, 136) else 1]):
                    used[id(emu)] += 1
                    emu.dtype = dtype
                    err = _rel_err(_as_f64(emu.run(a, n, b16, mode), dtype), want)
                    assert err <= TOLERANCE[dtype], (name, n, dtype, emu.cfg, mode, err)
    assert min(used.values()) >= 6


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(n, dtype):
    """A covering sample for N (every parameter value among the configs N allows) and the known-good configs."""
    sp = space()
    env = problem_env(203, 3000, n, 20000, dtype)
    out = []
    for cfg in _covering(n, 203, 3000, dtype):
        if sp.check(cfg, env, DEFAULT_LIMITS) is None and cfg not in out:
            out.append(cfg)
    picked = out[:: max(1, len(out) // 16)]
    for name in PARAMS:
        for v in sp.param(name).choices(dtype):
            if not any(c.get(name) == v for c in picked):
                picked += [c for c in out if c.get(name) == v][:1]
    return picked + [c for c in sp.defaults(dtype, env, DEFAULT_LIMITS) if c not in picked]


def _gpu_check(dtype: str) -> int:
    """Through the project's launch path (tests/nk_check.py's check_kn): poisoned C, fresh random B, the float64
    reference of the rounded operands; the edge cases (one dense row among empty ones, all rows identical, identity
    permutation of the reordered configs on unclusterable rows, M not a multiple of 8) at N = 1, 7, 72, 2049."""
    from nk_check import check_kn
    return check_kn(FAMILY, dtype, cases(), lambda a, n: _gpu_configs(n, dtype), (1, 7, 72, 2049), TOLERANCE[dtype])


@pytest.mark.gpu
def test_correct_on_edge_cases_fp16():
    assert _gpu_check("fp16") > 200


@pytest.mark.gpu
def test_correct_on_edge_cases_bf16():
    assert _gpu_check("bf16") > 200


@pytest.mark.gpu
def test_known_good_configs_correct_on_the_roofline_shapes():
    """The known-good configs on the roofline's shapes (3072 x 768 N = 2048 d 0.05, fp16 and bf16; 11008 x 4096
    N = 128 d 0.1 and 4096 x 4096 N = 64 d 0.1, fp16) against float64."""
    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    sp = space()
    for (m, k, n, d), dtypes in (((3072, 768, 2048, 0.05), ("fp16", "bf16")), ((11008, 4096, 128, 0.1), ("fp16",)),
                                 ((4096, 4096, 64, 0.1), ("fp16",))):
        for dtype in dtypes:
            a = random_matrix(m, k, d, "uniform", 0)
            a.data = host_values(a.data.astype(np.float32), DTYPES[dtype])
            dev = DeviceCSR(a, dtype)
            a64 = csp.csr_matrix(a.astype(np.float64))
            env = problem_env(m, k, n, a.nnz, dtype)
            cfgs = sp.defaults(dtype, env, DEFAULT_LIMITS)
            assert cfgs
            for cfg in cfgs:
                kern = build_kernel(dev, FAMILY, cfg, dtype)
                b = cp.asarray(storage(np.random.default_rng(1).standard_normal((k, n)).astype(np.float32), dtype))
                c = cp.empty((m, n), dtype=cp.uint16 if dtype == "bf16" else cp.float16)
                err = check(lambda: kern(b, c), c, reference(a64, b), dtype)
                assert err <= TOLERANCE[dtype], (m, k, n, cfg, err)


@pytest.mark.gpu
def test_prefetch_ring_and_register_cap_correct_on_the_gpu():
    """apf (A's operands 2, 4 or 8 steps ahead in a ring of register sets, walked by a switch on t % apf) and minb
    (the register cap of 2-4 blocks an SM) on the GPU: every apf x minb on matrices whose warps start their steps at
    every ring phase and whose units' step counts run from 0 to a whole slice (power-law rows, a wide K of 12-47
    slices, a dense block, one dense row among empty ones), at N = 72 and 2048, against float64 (fp16; bf16 for
    one)."""
    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    sp = space()
    h = host()
    every = edge_cases()
    mats = {"powerlaw_101": every["powerlaw_101"], "wide_24x3000": every["wide_24x3000"],
            "dense_33x129": every["dense_33x129"], "one_dense_row": every["one_dense_row"],
            "uniform_700x1500": random_matrix(700, 1500, 0.05, "uniform", 2)}
    geos = [dict(rn=1, rb=128, upw=2, wn=1, tile_n=64, ks=256, stages=2),
            dict(rn=2, rb=128, upw=1, wn=1, tile_n=64, ks=256, stages=2),
            dict(rn=1, rb=32, upw=1, wn=1, tile_n=64, ks=64, stages=3)]
    ran = 0
    phases = set()
    for name, a in mats.items():
        for geo in geos:
            lay = h.build(a, geo["rn"], geo["rb"], geo["upw"], geo["ks"])
            wm = lay["wm"]
            for s in range(lay["tiles"]):  # the warps' first steps, mod 8
                ns = lay["tile_sptr"][s + 1] - lay["tile_sptr"][s]
                phases |= {int(lay["step_ptr"][(lay["tile_sptr"][s] * wm + w * ns) * geo["upw"]]) % 8
                           for w in range(wm)}
        for dtype in ("fp16", "bf16") if name == "uniform_700x1500" else ("fp16",):
            a16 = a.copy()
            a16.data = host_values(a16.data.astype(np.float32), DTYPES[dtype])
            dev = DeviceCSR(a16, dtype)
            a64 = csp.csr_matrix(a16.astype(np.float64))
            for n in (72, 2048) if name == "uniform_700x1500" else (72,):
                env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
                b = cp.asarray(storage(np.random.default_rng(n).standard_normal((a.shape[1], n)).astype(np.float32),
                                       dtype))
                want = reference(a64, b)
                for geo in geos:
                    for apf in (2, 4, 8):
                        for minb in (0, 3):  # (2 and 4: the covering samples of the edge-case tests)
                            cfg = sp.normalize(dict(geo, apf=apf, minb=minb, bload="vec", row_order="natural"), dtype)
                            if cfg is None or sp.check(cfg, env, DEFAULT_LIMITS) is not None:
                                continue
                            kern = build_kernel(dev, FAMILY, cfg, dtype)
                            c = cp.empty((a.shape[0], n), dtype=cp.uint16 if dtype == "bf16" else cp.float16)
                            err = check(lambda: kern(b, c), c, want, dtype)
                            assert err <= TOLERANCE[dtype], (name, n, dtype, cfg, err)
                            ran += 1
    assert phases == set(range(8))
    assert ran >= 60
