"""tc_union (16-row units of A on mma.m16n8k16, each over the union of its columns in a K-slice; the dense slices of B
staged by a cp.async ring and gathered by ldmatrix.trans; A as records of per-step ballots, register bases, slots and
stored pairs; split-K with a deterministic reduction): the layout round-trips to A by the kernel's own rule for
random and adversarial patterns at every tile height and slice width, M and K off every multiple; its invariants read
from the raw records (unit tables, register bases, the real slots of each unit's steps are its union, padding
residues, ballots against A's nonzeros, the unconditional pair load within cap's slack); the two builder paths
agree; bank placement; A's bytes; the builder's speed and purity; bad geometry refused; the space, rendering, nvcc
(no spills, no static shared memory but s_last); launch arguments, geometry, workspace, shared memory, adaptation to
N; the rendered kernel itself run on the CPU (each CUDA thread a std::thread; ldmatrix .x2/.x4 .trans, mma.sync and
cp.async emulated, tests/families/tc_emu.py; AddressSanitizer on) against float64 at N = 1, 7, 8, 16, 32, 40, 72,
copies landing at the last moment, the grid's blocks in a random order and split-K launches run twice (counters back
at 0, the same C), and broken kernels failing it; on a GPU, the edge cases at N = 1, 3, 8, 16, 32, 127 (fp16,
bf16), split-K kernels run twice, and the known-good configs on the roofline's shapes."""
from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import FakeDeviceCSR, check_launch_matches_signature, fake_kernel, signature
from space_checks import (adapted_known_goods, compile_reports, covering, known_goods_in, regs_and_spill,
                          unique_feasible)
from tc_emu import EMU_CORE
from test_tc_bitmap import adversarial
from test_tc_gather2 import _as_f64, _ref, _rel_err, edge_cases, rounded
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family, splitk_shape
from sparse_autotune.core.problem import TOLERANCE, random_matrix, storage
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env

FAMILY = "tc_union"
RBS = (16, 32, 64, 128, 256)
KSS = (16, 64, 128, 256)
PARAMS = ("rb", "upw", "tile_n", "ks", "stages", "sk", "bload")
SMEM_LIMIT = DEFAULT_LIMITS["max_dyn_smem_bytes"]
HDR = 48  # bytes a k-step's header: 4 ballots, 4 register bases (u32), 16 slots (u8)


def host():
    return get_family(FAMILY).host


def space():
    return get_family(FAMILY).space


def _vals(a, seed=0):
    """a's pattern with values that never round to zero in 16 bits (a 16-bit pattern of 0 marks a padding half)."""
    a = sps.csr_matrix(a, dtype=np.float32, copy=True)
    a.data = (np.random.default_rng(seed).random(a.nnz) + 0.5).astype(np.float32) * np.where(
        np.arange(a.nnz) % 3 == 0, -1, 1).astype(np.float32)
    return a


def last_row_and_column(m=70, k=300, d=0.05, seed=0):
    """M and K off every multiple of 16 and of the slice, a nonzero in the last row and the last column."""
    a = sps.lil_matrix(random_matrix(m, k, d, "uniform", seed))
    a[m - 1, k - 1] = 1.5
    a[m - 1, 0] = -0.75
    a[0, k - 1] = 2.0
    return sps.csr_matrix(a)


def cases():
    """tc_gather2's edge cases (one dense row among empty ones, all rows identical, empty units and tiles, K < 16, all
    zero, clustered, power-law, a wide K, dense; M and K not multiples of 16 / of the slice), a uniform one and one
    with a nonzero in the last row and column."""
    return {**edge_cases(), "uniform_64x256": random_matrix(64, 256, 0.05, "uniform", 0),
            "last_row_col_70x300": last_row_and_column()}


# ---- the records, read back from roff / arec alone (independently of decode) -----------------------------

def records(lay):
    """Per record (tile, slice): its unit table (sstart, pstart), per step its ballots[4], register bases[4] and
    slots[16], its pair words and the words after them, read from roff / arec as the module docstring lays them out."""
    upt, nsl = lay["upt"], lay["ns"]
    roff, arec = lay["roff"].astype(np.int64), lay["arec"]
    h0 = -(-8 * (upt + 1) // 16) * 16
    out = []
    for rec in range(len(roff) - 1):
        words = arec[int(roff[rec]) * 4:int(roff[rec + 1]) * 4]
        ss = words[:upt + 1].astype(np.int64)
        ps = words[upt + 1:2 * (upt + 1)].astype(np.int64)
        nst, npairs = int(ss[upt]), int(ps[upt])
        hdr = words[h0 // 4:h0 // 4 + HDR // 4 * nst].reshape(nst, HDR // 4)
        p0 = h0 // 4 + HDR // 4 * nst
        out.append(dict(tile=rec // nsl, slice=rec % nsl, ss=ss, ps=ps, ballots=hdr[:, :4].astype(np.int64),
                        bases=hdr[:, 4:8].astype(np.int64),
                        slots=hdr[:, 8:].copy().view(np.uint8).reshape(nst, 16).astype(np.int64),
                        pairs=words[p0:p0 + npairs], tail=words[p0 + npairs:], words=words, h0=h0,
                        table=words[2 * (upt + 1):h0 // 4]))
    return out


def _popc(x: int) -> int:
    return bin(int(x)).count("1")


# ---- the layout -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rb", RBS)
def test_layout_round_trips_to_a_by_the_kernel_rule(rb):
    """decode() walks each record's unit table, each unit's steps, each step's ballots, register bases and slots, and
    each stored pair at the index the kernel takes (the register's base + popc of its ballot below the lane): scipy's
    A exactly (rounded to 16 bits), fp16 and bf16, every tile height and slice width."""
    h = host()
    for ks in KSS:
        for name, a in cases().items():
            for dtype in ("fp16", "bf16"):
                lay = h.build(a, rb, ks, dtype)
                np.testing.assert_array_equal(h.decode(lay), rounded(a, dtype), err_msg=f"{name} {dtype} {ks}")
                assert lay["tiles"] == -(-a.shape[0] // rb) and lay["ns"] == max(1, -(-a.shape[1] // ks))


def test_layout_of_an_m_and_k_off_every_multiple():
    """M = 16 k + 13 rows and K = 3 ks + 7 columns (the last tile and slice partial), a nonzero in the last row and
    column: decoded exactly; the last record holds the corner's weight; decode refuses a weight moved past K or M."""
    h = host()
    a = last_row_and_column(205, 3 * 64 + 7, 0.08, 9)
    for rb, ks in ((16, 64), (64, 64), (128, 16), (256, 256)):
        lay = h.build(a, rb, ks, "fp16")
        np.testing.assert_array_equal(h.decode(lay), rounded(a, "fp16"), err_msg=str((rb, ks)))
        assert lay["tiles"] == -(-205 // rb) and lay["ns"] == -(-(3 * 64 + 7) // ks)
        last = records(lay)[-1]
        assert last["tile"] == lay["tiles"] - 1 and last["slice"] == lay["ns"] - 1 and len(last["pairs"]) > 0
    # the same layout read as a matrix one row / one column narrower: the corner's weight lies outside it
    lay = h.build(a, 64, 64, "fp16")
    with pytest.raises(ValueError, match="past column K"):
        h.decode(dict(lay, K=lay["K"] - 1))
    with pytest.raises(ValueError, match="past the last row"):
        h.decode(dict(lay, M=lay["M"] - 1))


def test_layout_invariants():
    """Read from the raw records: roff is the records' 16-byte offsets (the last one the end of arec), cap the largest;
    per record the unit table is monotone from 0 to the record's steps and pairs, the record is its table, 48 bytes a
    step and 4 a pair to a multiple of 16 (zeros after); each register's base is the record's pairs before it (the
    steps chain nothing); per (tile, slice, unit) the real slots of its steps (the k's
    of its stored nonzero halves) are exactly the columns its 16 rows use in the slice, each once, in
    ceil(union / 16) steps (padded by less than a step); a half step's padding slots take residues mod 8 its real
    slots leave free; the ballots are exactly the (step, register, lane) A's nonzeros fall on, and their popcount is
    the record's pairs and the layout's; the word every lane loads for every register (stored or not: the kernel
    loads unconditionally) lies within the record's 16 bytes of slack, which cap includes."""
    h = host()
    a = _vals(last_row_and_column(150, 700, 0.03, 4), 1)
    dense = a.toarray() != 0
    for rb, ks in ((16, 16), (32, 64), (64, 128), (128, 256), (256, 64), (48, 16)):
        lay = h.build(a, rb, ks, "fp16")
        upt, nsl = rb // 16, -(-700 // ks)
        roff, arec = lay["roff"], lay["arec"]
        assert lay["upt"] == upt and lay["ns"] == nsl and len(roff) == lay["tiles"] * nsl + 1
        assert roff[0] == 0 and (np.diff(roff) > 0).all() and 4 * int(roff[-1]) == len(arec)
        assert lay["cap"] == 16 * int(np.diff(roff).max()) + 16  # + the slack of the kernel's load past a record
        steps = pairs = 0
        for rec in records(lay):
            ss, ps = rec["ss"], rec["ps"]
            assert ss[0] == 0 and ps[0] == 0 and (np.diff(ss) >= 0).all() and (np.diff(ps) >= 0).all()
            nst = int(ss[upt])
            assert int(ps[upt]) == sum(_popc(b) for b in rec["ballots"].ravel())
            assert 4 * len(rec["words"]) == -(-(rec["h0"] + HDR * nst + 4 * int(ps[upt])) // 16) * 16
            counts = [_popc(b) for b in rec["ballots"].ravel()]
            assert rec["bases"].ravel().tolist() == (np.cumsum(counts, dtype=np.int64) - counts).tolist()
            reads = [int(base) + _popc(int(b) & ((1 << lane) - 1)) for b, base in
                     zip(rec["ballots"].ravel(), rec["bases"].ravel()) for lane in range(32)]
            last = (rec["h0"] // 4 + HDR // 4 * nst + max(reads, default=0)) * 4 + 4  # past the last byte read
            assert last <= 4 * len(rec["words"]) + 16 and 4 * len(rec["words"]) + 16 <= lay["cap"]
            assert not rec["tail"].any() and not rec["table"].any()
            steps, pairs = steps + nst, pairs + int(ps[upt])
            r0, c0 = rec["tile"] * rb, rec["slice"] * ks
            for u in range(upt):
                urows = dense[r0 + 16 * u:r0 + 16 * u + 16, c0:c0 + ks]
                want = set(np.flatnonzero(urows.any(axis=0)).tolist())
                t0, t1 = int(ss[u]), int(ss[u + 1])
                assert t1 - t0 == -(-len(want) // 16), (rb, ks, rec["tile"], rec["slice"], u)
                real = {}  # (step, k) -> slot, from the stored halves that are not zero
                bits = set()  # (step, register, lane) stored
                assert t0 == t1 or rec["bases"][t0, 0] == ps[u]  # (pstart: the unit's first pair)
                for t in range(t0, t1):
                    for reg in range(4):
                        b, base = int(rec["ballots"][t, reg]), int(rec["bases"][t, reg])
                        for lane in range(32):
                            if b >> lane & 1:
                                bits.add((t, reg, lane))
                                v = int(rec["pairs"][base + _popc(b & ((1 << lane) - 1))])
                                for hh in range(2):
                                    if v >> (16 * hh) & 0xFFFF:
                                        kk = 2 * (lane % 4) + hh + 8 * (reg >> 1)
                                        real[(t, kk)] = int(rec["slots"][t, kk])
                assert sorted(real.values()) == sorted(want)  # each column of the union once
                for t in range(t0, t1):
                    for half in range(2):
                        ks8 = [int(rec["slots"][t, 8 * half + i]) for i in range(8)]
                        isreal = [(t, 8 * half + i) in real for i in range(8)]
                        pad = {s % 8 for s, r in zip(ks8, isreal) if not r}
                        assert len(pad) == isreal.count(False) and not pad & {s % 8 for s, r in zip(ks8, isreal) if r}
                        assert max(ks8) < ks
                # the (step, register, lane) of each nonzero, by the fragment rule, from A and the real slots
                col_at = {s: tk for tk, s in real.items()}
                want_bits = set()
                for r16, c in zip(*np.nonzero(urows)):
                    t, kk = col_at[int(c)]
                    want_bits.add((t, (r16 >> 3) + 2 * (kk >> 3), 4 * (r16 & 7) + (kk & 7) // 2))
                assert bits == want_bits
        assert steps == lay["steps"] and pairs == lay["pairs"] and lay["nnz"] == a.nnz
        assert len(lay["kslot"]) == 16 * lay["steps"]


def test_the_two_builder_paths_agree():
    """Where the dense (group, slot) flags would be too large (65536 x 65536, a handful of nonzeros: np.unique's path),
    each record equals the one the flags' path builds for that record's rb x ks block alone, and the empty records
    are bare unit tables."""
    h = host()
    rows, cols = np.array([0, 3, 3, 40000, 65535, 65535, 70]), np.array([65535, 7, 8, 300, 0, 65535, 65535])
    big = sps.csr_matrix((np.arange(1, 8, dtype=np.float32), (rows, cols)), shape=(65536, 65536))
    lay = h.build(big, 256, 256, "bf16")
    assert lay["tiles"] * lay["ns"] * lay["upt"] * 256 > 1 << 27  # (the unique path)
    roff = lay["roff"].astype(np.int64)
    nonempty = set()
    for r, c in zip(rows, cols):
        tile, j = r // 256, c // 256
        nonempty.add((tile, j))
        blk = sps.csr_matrix(big[tile * 256:(tile + 1) * 256, j * 256:(j + 1) * 256])
        one = h.build(blk, 256, 256, "bf16")
        rec = tile * lay["ns"] + j
        np.testing.assert_array_equal(lay["arec"][4 * roff[rec]:4 * roff[rec + 1]], one["arec"])
    assert lay["steps"] == sum(h.build(sps.csr_matrix(big[t * 256:(t + 1) * 256, j * 256:(j + 1) * 256]), 256, 256,
                                       "bf16")["steps"] for t, j in nonempty)
    sizes = np.diff(roff)
    assert (sizes == 144 // 16).sum() == len(sizes) - len(nonempty)  # the rest: a 17 + 17 word table, to 144 bytes
    empty = [r for r in range(len(sizes)) if (r // lay["ns"], r % lay["ns"]) not in nonempty][:50]
    assert all(not lay["arec"][4 * roff[r]:4 * roff[r + 1]].any() for r in empty)


def test_bank_placement():
    """ldmatrix wavefronts (4 = conflict-free): a dense block needs none extra; uniform d 0.05 stays within 5.3 (4.77
    to 5.07 measured) at every geometry, and the same slots of each step in ascending order are worse."""
    h = host()
    for rb, ks in ((64, 128), (16, 256), (256, 16)):
        assert h.bank_wavefronts(h.build(sps.csr_matrix(np.ones((64, 512))), rb, ks)) == 4.0
    a = random_matrix(1024, 768, 0.05, "uniform", 0)
    for rb, ks in ((32, 64), (128, 128), (256, 256), (64, 256)):
        lay = h.build(a, rb, ks)
        wf = h.bank_wavefronts(lay)
        assert 4.0 <= wf <= 5.3, (rb, ks, wf)
        assert h.stats(lay)["wavefronts"] == wf
        srt = dict(lay, kslot=np.sort(lay["kslot"].reshape(-1, 16), axis=1).ravel())
        assert h.bank_wavefronts(srt) > wf + 1.0, (rb, ks)


def test_stats_follow_the_layout():
    """A's bytes: 48 a step + 4 a stored pair + a table a record (to 16 bytes): ~6 a nonzero at d 0.05 uniform (the
    format's estimate; 6.09 measured at rb 128, ks 256)."""
    h = host()
    a = random_matrix(1024, 4096, 0.05, "uniform", 2)
    lay = h.build(a, 128, 256)
    st = h.stats(lay)
    assert st["steps"] == lay["steps"] and st["pairs"] == lay["pairs"] and st["cap"] == lay["cap"]
    assert st["bytes_per_nnz"] == 4 * len(lay["arec"]) / a.nnz and 5.5 < st["bytes_per_nnz"] < 6.5
    nrec = lay["tiles"] * lay["ns"]
    extra = 4 * len(lay["arec"]) - HDR * lay["steps"] - 4 * lay["pairs"]  # the tables and the records' padding
    assert nrec * h.table_bytes(8) <= extra < nrec * (h.table_bytes(8) + 16)
    assert 16 < st["nnz_per_step"] <= 16 * 16 and lay["pairs"] <= a.nnz


def test_the_builder_leaves_the_callers_matrix_alone_and_sums_duplicates():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0, 4.0]), np.array([3, 3, 5, 2]), np.array([0, 3, 3, 4])),
                       shape=(3, 8))
    before = (a.data.copy(), a.indices.copy(), a.indptr.copy())
    lay = h.build(a, 16, 16)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    np.testing.assert_array_equal(a.indptr, before[2])
    want = np.zeros((3, 8))
    want[0, 3], want[2, 2] = 3.0, 4.0
    np.testing.assert_array_equal(h.decode(lay), want)
    assert lay["steps"] == 1 and lay["pairs"] == 2 and lay["nnz"] == 2  # the explicit zero dropped


def test_bad_geometry_is_refused():
    h = host()
    a = random_matrix(64, 64, 0.1, "uniform", 0)
    for rb in (8, 24, 0):
        with pytest.raises(ValueError, match="multiple of 16"):
            h.build(a, rb, 64)
    for ks in (512, 272, 40, 0):
        with pytest.raises(ValueError, match="8-bit slots"):
            h.build(a, 32, ks)
    with pytest.raises(ValueError, match="fp16 and bf16"):
        h.build(a, 32, 64, "fp32")


def test_the_builder_is_vectorised():
    """5 M nonzeros (4096 x 4096 d 0.3) build in a few seconds of process time (~2.4 s measured at rb 128, ks 256; a
    loop over nonzeros in Python would take minutes); the layout holds every nonzero."""
    h = host()
    a = random_matrix(4096, 4096, 0.3, "uniform", 1)
    t0 = time.process_time()
    lay = h.build(a, 128, 256)
    took = time.process_time() - t0
    assert a.nnz > 5_000_000 and took < 6.0, took
    assert lay["pairs"] >= a.nnz / 2 and lay["steps"] == len(lay["kslot"]) // 16
    assert abs(h.stats(lay)["nnz_per_step"] - 0.3 * 256) < 2  # d 0.3: the 16-row unions are whole slices


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 1000, 0.05, "uniform", 0)
    for n in (1, 7, 16, 32, 40):
        assert check_launch_matches_signature(FAMILY, dtype, a, n) > 0
    assert check_launch_matches_signature(FAMILY, "fp32", a, 64) == 0  # 16-bit only


PROBLEMS = [(4096, 14336, 16, 0.05), (1024, 4096, 7, 0.05), (101, 384, 1, 0.08), (4096, 4096, 40, 0.1),
            (4096, 4096, 128, 0.05)]


def test_every_feasible_config_renders():
    """Every feasible config of a few problems renders, fp16 and bf16: the MMA's and cvt's types, the geometry's
    #defines, the ring's wait, ldmatrix .x2 for an 8-column tile (.x4 else), B staged by cp.async for bload vec (by
    16-byte stores else: the kernel's only cp.async is then A's record's), every column tile."""
    sp = space()
    h = host()
    seen = set()
    for cfg in unique_feasible(sp, PROBLEMS):
        seen.add(tuple(sorted(cfg.items())))
        for dtype in ("fp16", "bf16"):
            src = render.render(sp, cfg, dtype)
            t = "bf16" if dtype == "bf16" else "f16"
            assert f"mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32" in src and f"cvt.rn.{t}.f32" in src
            assert f"#define NT {h.threads(cfg)}\n" in src and f"#define RS {h.row_bytes(cfg)}\n" in src
            assert f"#define H0 {h.table_bytes(cfg['rb'] // 16)}\n" in src
            assert f'"cp.async.wait_group {cfg["stages"] - 2};"' in src
            assert ("ldsm_x2_t(bf, ra);" in src) == (cfg["tile_n"] == 8)
            assert ("ldsm_x4_t(bf, ra + 32 * c);" in src) == (cfg["tile_n"] > 8)
            body = src.split("spmm_kernel(", 1)[1]
            assert body.count("cp_async16(") == (2 if cfg["bload"] == "vec" else 1)
            assert ("sts128(" in body) == (cfg["bload"] == "scalar")
    assert len(seen) > 500
    assert {c[1] for key in seen for c in key if c[0] == "tile_n"} == set(sp.param("tile_n").choices("fp16"))


def test_known_good_configs_cover_the_roofline_shapes_and_odd_n():
    """4096 x 14336 d 0.05 at N = 16, 32 and 8, 1024 x 4096 at N = 16, and an odd N (7, 1) through 16-bit staging."""
    sp = space()
    for m, k, n, d in ((4096, 14336, 16, 0.05), (4096, 14336, 32, 0.05), (4096, 14336, 8, 0.05),
                       (1024, 4096, 16, 0.05), (1024, 4096, 7, 0.05), (4096, 14336, 1, 0.05)):
        got = sp.defaults("fp16", problem_env(m, k, n, round(d * m * k), "fp16"), DEFAULT_LIMITS)
        assert got, (m, k, n)
        assert all(c["bload"] == "scalar" for c in got) or n % 8 == 0
        assert any(c["tile_n"] == min(32, max(8, n)) for c in got), (m, k, n)  # a tile as wide as N (up to 32)
    assert all(sp.normalize(kg, dt) is not None for kg in sp.known_good for dt in ("fp16", "bf16"))
    assert not sp.enabled  # enabled by the lead after timing


def _covering(n=128, m=4096, k=14336, dtype="fp16"):
    """Feasible configs for N (in a seeded random order) covering each (tile_n, bload, 256 threads or more) and each
    value of each parameter."""
    feas = list(space().feasible(dtype, problem_env(m, k, n, round(0.05 * m * k), dtype), DEFAULT_LIMITS))
    return covering(space(), feas, lambda c: (c["tile_n"], c["bload"], host().threads(c) >= 256), PARAMS, dtype)


def _check_report(cfg, rep):
    regs, spill = regs_and_spill(cfg, rep)
    assert regs <= min(255, 65536 // host().threads(cfg)) and spill == 0, (cfg, rep)
    # the ring is dynamic; the one static variable is split-K's 4-byte s_last, which ptxas places (and reports) in a
    # 128-byte unit: the dynamic array's __align__(128) starts after it
    smem = re.search(r"(\d+) bytes smem", rep)
    assert smem is not None and int(smem.group(1)) == 128, (cfg, rep)
    return regs


def test_known_good_and_a_covering_sample_compile_without_spills():
    """nvcc -arch=sm_90, ptxas -v: the known-good configs (fp16 and bf16) and a covering sample of the space (fp16;
    every (tile_n, bload, 256 threads or more) and every value of every parameter) compile without spills within
    the registers __launch_bounds__(NT) allows, with no static shared memory but s_last."""
    sp = space()
    cfgs = known_goods_in(sp)
    cov = _covering()
    assert 10 <= len(cov) <= 30, len(cov)
    for name in PARAMS:
        assert {c[name] for c in cov} == set(sp.param(name).choices("fp16")), name
    cfgs += [(c, "fp16") for c in cov]
    src = render.render(sp, cov[0], "fp16")
    assert re.findall(r"__shared__[^;]*;", src) == ["__shared__ __align__(128) unsigned char smem[];",
                                                    "__shared__ int s_last;"]
    for (cfg, _), rep in zip(cfgs, compile_reports(sp, cfgs)):
        _check_report(cfg, rep)


SPILLED = [  # 512 threads (a cap of 128 registers) with 64 accumulators a lane: ptxas spilled 4 bytes (vec) and 12
    # (scalar, sk 16) under CUDA 13 (16 of the 80 512-thread tile_n = 128 configs), so the space refuses them
    dict(rb=256, upw=1, tile_n=128, ks=64, stages=3, sk=4, bload="vec"),
    dict(rb=256, upw=1, tile_n=128, ks=256, stages=3, sk=16, bload="scalar"),
]
HEAVIEST = [  # what the space keeps at 512 threads: 32 accumulators a lane, the split-K reduction's float4s at sk 16
    dict(rb=256, upw=1, tile_n=64, ks=64, stages=3, sk=16, bload="vec"),
    dict(rb=256, upw=1, tile_n=64, ks=256, stages=3, sk=16, bload="scalar"),
]


def test_the_register_heaviest_feasible_configs_compile_without_spills():
    """The 512-thread configs with 64 accumulators a lane are refused (they spilled); the heaviest ones the constraints
    admit at 512 threads (a cap of 128 registers a thread) compile without spills."""
    sp = space()
    env = problem_env(4096, 14336, 128, 2936013, "fp16")
    assert all("accumulators" in (sp.check(c, env, DEFAULT_LIMITS) or "") for c in SPILLED)
    assert all(sp.check(c, env, DEFAULT_LIMITS) is None and host().threads(c) == 512 for c in HEAVIEST)
    for cfg, rep in zip(HEAVIEST, compile_reports(sp, [(c, "fp16") for c in HEAVIEST])):
        _check_report(cfg, rep)


def test_shared_memory_is_the_ring_of_b_slices_and_the_largest_record():
    """smem_bytes = stages x (ks rows of B, 2 tile_n (+16) bytes each, and the matrix's largest record + 16 bytes: the
    slack of the unconditional pair load past a record's last pair); a staged row is an odd number of 16-byte units
    (8 rows of distinct slot % 8 in distinct bank groups)."""
    h = host()
    a = random_matrix(300, 1000, 0.05, "uniform", 0)
    for cfg in (dict(rb=128, upw=1, tile_n=16, ks=256, stages=3, sk=4, bload="vec"),
                dict(rb=64, upw=2, tile_n=8, ks=64, stages=2, sk=1, bload="scalar"),
                dict(rb=32, upw=1, tile_n=32, ks=128, stages=4, sk=8, bload="vec")):
        k = fake_kernel(FAMILY, cfg, "fp16", a)
        lay = h.build(a, cfg["rb"], cfg["ks"], "fp16")
        rs = 2 * cfg["tile_n"] + (16 if cfg["tile_n"] > 8 else 0)
        assert h.row_bytes(cfg) == rs and rs % 16 == 0 and rs // 16 % 2 == 1
        assert lay["cap"] == 16 * int(np.diff(lay["roff"]).max()) + 16 and h.acap(k) == lay["cap"]
        assert h.smem_bytes(k) == cfg["stages"] * (cfg["ks"] * rs + lay["cap"]) == k.smem_bytes()
        assert f"#define RS {rs}\n" in k.source
    # the constraint budgets a 2 KB record a stage (the matrix's own is only known to the host side)
    sp = space()
    env = problem_env(4096, 14336, 32, 2936013, "fp16")
    big = dict(rb=128, upw=1, tile_n=32, ks=256, stages=4, sk=4, bload="vec")
    ring = 4 * (256 * 80 + 2048)
    assert sp.check(big, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": ring}) is None
    assert "the ring" in sp.check(big, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": ring - 1})


def test_geometry_args_and_workspace():
    """Grid (tiles x split-K, column tiles), split-K never more than the slices (each split at least one); the
    arguments in the kernel's order; the workspace rb x tile_n fp32 per (tile, column tile, split) and a counter per
    (tile, column tile), zeroed (core.families.splitk_shape); the layout built once per (rb, ks, dtype)."""
    h = host()
    a = last_row_and_column(203, 1000, 0.05, 3)
    dev = FakeDeviceCSR(a, "fp16")
    names_want = ["roff", "arec", "B", "C", "M", "N", "K", "tiles", "NS", "SK", "SPS", "acap", "ws", "counters"]
    seen_sk = set()
    for rb, ks, tile_n, sk in ((64, 64, 16, 4), (32, 256, 8, 16), (128, 128, 32, 1), (64, 64, 8, 16), (64, 64, 32, 3)):
        cfg = dict(rb=rb, upw=1, tile_n=tile_n, ks=ks, stages=3, sk=sk, bload="vec")
        k = fake_kernel(FAMILY, cfg, "fp16", a, dev)
        tiles, ns = -(-203 // rb), -(-1000 // ks)
        for n in (1, 40, 200):
            ct = -(-n // tile_n)
            args = k.args(n, "B", "C")
            assert [nm for nm, _ in signature(k.source)] == names_want
            ints = dict(zip(names_want[4:12], (int(x) for x in args[4:12])))
            eff, sps_ = ints["SK"], ints["SPS"]
            assert 1 <= eff <= min(sk, ns) and (eff - 1) * sps_ < ns <= eff * sps_  # every split has a slice
            assert eff == -(-ns // -(-ns // min(sk, ns)))
            seen_sk.add((sk, eff))
            assert h.geometry(k, n) == ((tiles * eff, ct), (32 * rb // 16,))
            assert ints == dict(M=203, N=n, K=1000, tiles=tiles, NS=ns, SK=eff, SPS=sps_, acap=h.acap(k))
            assert args[2:4] == ("B", "C") and args[0].host.dtype == np.int32 and args[1].host.dtype == np.uint32
            ws, cnt = args[12].host, args[13].host
            assert (len(ws), len(cnt)) == splitk_shape(eff, tiles * ct, rb * tile_n)
            if eff > 1:
                assert ws.shape == (tiles * ct * eff * rb * tile_n,) and cnt.shape == (tiles * ct,)
            else:
                assert ws.shape == (4,) and cnt.shape == (1,)
            assert ws.dtype == np.float32 and cnt.dtype == np.int32 and not ws.any() and not cnt.any()
            assert args[12] is k.args(n, None, None)[12]  # cached per shape and N
    assert (4, 4) in seen_sk and (16, 16) in seen_sk and (16, 4) in seen_sk and (3, 3) in seen_sk
    layouts = [key for key, _ in dev.built if not str(key[0]).endswith("_ws")]
    assert sorted(layouts) == sorted({("tc_union", rb, ks, "fp16") for rb, ks in
                                      ((64, 64), (32, 256), (128, 128))})


def test_adapt_to_another_n():
    """A config stored for N = 32 runs N = 16 and 8 on a narrower tile, N = 7 / 1 with 16-bit staging and an 8-column
    tile, N = 40 as is; one stored for N = 128 runs N = 72 as is and N = 40 on a 64-column tile."""
    fam = get_family(FAMILY)
    cfg = dict(rb=128, upw=1, tile_n=32, ks=256, stages=3, sk=4, bload="vec")
    want = {40: cfg, 32: cfg, 16: dict(cfg, tile_n=16), 8: dict(cfg, tile_n=8),
            7: dict(cfg, tile_n=8, bload="scalar"), 1: dict(cfg, tile_n=8, bload="scalar"),
            12: dict(cfg, tile_n=16, bload="scalar")}
    wide = dict(rb=64, upw=1, tile_n=128, ks=128, stages=2, sk=8, bload="vec")
    for stored, n, w in [(cfg, n, w) for n, w in want.items()] + [(wide, 72, wide), (wide, 40, dict(wide, tile_n=64)),
                                                                  (wide, 33, dict(wide, tile_n=64, bload="scalar"))]:
        env = problem_env(4096, 14336, n, 2936013, "fp16")
        got = fam.adapt(stored, "fp16", env, DEFAULT_LIMITS)
        assert got == w, (stored, n)
        assert fam.space.check(got, env, DEFAULT_LIMITS) is None


# ---- the kernel on the CPU: the rendered source compiled with g++, CUDA threads as std::threads ------------

_DIM = "struct Dim { unsigned int x; };"
assert _DIM in EMU_CORE  # (the 2-D grid: blockIdx.y, gridDim.y)

EMU_PRELUDE = EMU_CORE.replace(_DIM, "struct Dim { unsigned int x, y; };") + r'''
#include <random>
using std::min; using std::max;
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
Dim gridDim;
int g_s_last;  // the kernel's __shared__ int s_last (the blocks run one after another)
inline void __stcg(float2* p, float2 v) { if ((uintptr_t)p % 8) die("misaligned st.cg float2"); *p = v; }
inline float __ldcg(const float* p) { return *p; }
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float4 __ldcg(const float4* p) { if ((uintptr_t)p % 16) die("misaligned ld.cg float4"); return *p; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
inline void __threadfence() {}
inline int atomicAdd(int* p, int v) { int o = *p; *p += v; return o; }  // (one thread of one block at a time)
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline unsigned int lanemask_lt() { return (1u << (threadIdx.x & 31)) - 1u; }
inline unsigned int lds32(unsigned int a) {  // (ld.shared: the template reads its records by plain loads now)
    if (a % 4) die("misaligned lds32");
    chk(a, 4);
    unsigned int v;
    std::memcpy(&v, smem + a, 4);
    return v;
}
inline unsigned int lds8(unsigned int a) { chk(a, 1); return smem[a]; }
inline void lds128(unsigned int a, unsigned int& x, unsigned int& y, unsigned int& z, unsigned int& w) {
    if (a % 16) die("misaligned ld.shared.v4");
    chk(a, 16);
    unsigned int v[4];
    std::memcpy(v, smem + a, 16);
    x = v[0]; y = v[1]; z = v[2]; w = v[3];
}
'''

EMU_MAIN = r'''
template <class T> std::vector<T> rd(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) die("missing input");
    std::fseek(f, 0, SEEK_END); long n = std::ftell(f); std::fseek(f, 0, SEEK_SET);
    std::vector<T> v(n / sizeof(T));
    if (n && std::fread(v.data(), 1, n, f) != (size_t)n) die("short read");
    std::fclose(f);
    return v;
}
int main(int argc, char** argv) {
    const std::string d = argv[1];
    int i = 2;
    const int M = std::atoi(argv[i++]), N = std::atoi(argv[i++]), K = std::atoi(argv[i++]);
    const int tiles = std::atoi(argv[i++]), NS = std::atoi(argv[i++]), SK = std::atoi(argv[i++]);
    const int SPS = std::atoi(argv[i++]), acap = std::atoi(argv[i++]);
    const int gx = std::atoi(argv[i++]), gy = std::atoi(argv[i++]);
    const size_t smem_bytes = std::atol(argv[i++]);
    g_copy_at_issue = std::atoi(argv[i++]); g_bf16 = std::atoi(argv[i++]);
    const long nws = std::atol(argv[i++]), ncnt = std::atol(argv[i++]);
    const unsigned seed = std::atoi(argv[i++]);
    const int fill = std::atoi(argv[i++]);  // what shared memory holds at a block's start
    auto roff = rd<int>(d + "/roff"); auto arec = rd<unsigned int>(d + "/arec");
    auto B = rd<unsigned short>(d + "/B");
    std::vector<float> ws(nws, __builtin_nanf(""));  // as a workspace is after other launches: never read unwritten
    std::vector<int> cnt(ncnt, 0);
    std::vector<std::pair<int, int>> order;
    for (int y = 0; y < gy; ++y) for (int x = 0; x < gx; ++x) order.push_back({x, y});
    std::mt19937 rng(seed);
    std::vector<unsigned short> first;
    gridDim.x = gx; gridDim.y = gy;
    // one block's NT threads (std::threads, made once) run the grid's blocks one after another
    // shared memory: exactly smem_bytes (AddressSanitizer stops a read past it), 128-byte aligned as the kernel declares
    unsigned char* sm = new (std::align_val_t(128)) unsigned char[smem_bytes + (smem_bytes == 0)];
    BlockX blk; std::barrier<> bar(NT), gate(NT); blk.bar = &bar; blk.smem_bytes = smem_bytes;
    std::vector<std::barrier<>*> wb;
    for (int w = 0; w < NT / 32; ++w) { wb.push_back(new std::barrier<>(32)); blk.warps[w].bar = wb.back(); }
    for (int launch = 0; launch < (SK > 1 ? 2 : 1); ++launch) {  // split-K: twice (the counters, the workspace)
        std::shuffle(order.begin(), order.end(), rng);  // the blocks (and a tile's splits) arrive in any order
        std::vector<unsigned short> C((size_t)M * N, 0x7e00);  // poisoned: NaN
        std::vector<std::thread> th;
        for (int t = 0; t < NT; ++t) th.emplace_back([&, t] {
            threadIdx.x = t; threadIdx.y = 0; smem = sm; g_block = &blk;
            for (auto [bx, by] : order) {
                if (t == 0) { std::memset(sm, fill, smem_bytes); g_s_last = -1; }  // garbage, as shared memory starts
                gate.arrive_and_wait();
                blockIdx.x = bx; blockIdx.y = by;
                g_groups.clear(); g_groups.emplace_back();
                spmm_kernel(roff.data(), arec.data(), B.data(), C.data(), M, N, K, tiles, NS, SK, SPS, acap,
                            ws.data(), cnt.data());
                gate.arrive_and_wait();
            }
        });
        for (auto& x : th) x.join();
        for (int c : cnt) if (c) die("a split-K counter was not left at 0");
        if (launch == 0) first = C;
        else if (C != first) die("the second launch gave another C");
    }
    for (auto* p : wb) delete p;
    ::operator delete[](sm, std::align_val_t(128));
    FILE* f = std::fopen((d + "/C").c_str(), "wb");
    std::fwrite(first.data(), 2, (size_t)M * N, f);
    std::fclose(f);
    return 0;
}
'''


def emu_kernel(src: str) -> str:
    """The rendered kernel as C++ for g++: its #defines and the kernel (the device helpers before it are EMU_PRELUDE's),
    the wait_group statements as cp_wait, s_last the prelude's int, no asm, no __shared__, a plain function."""
    head, body = src.split('extern "C" __global__', 1)
    defines = "\n".join(ln for ln in head.splitlines() if ln.startswith("#define"))
    body = 'extern "C" __global__' + body
    body, waits = re.subn(r'asm volatile\("cp\.async\.wait_group (\d+);" ::: "memory"\);', r"cp_wait(\1);", body)
    assert waits == 2
    body = re.sub(r'extern "C" __global__ void __launch_bounds__\([^)]*\)', "void", body)
    body = body.replace("extern __shared__ __align__(128) unsigned char smem[];", "")
    body = body.replace("__shared__ int s_last;", "int& s_last = g_s_last;")
    assert "asm" not in body and "__shared__" not in body and "__global__" not in body
    return defines + "\n" + body


def emu_source(cfg: dict, dtype: str) -> str:
    return EMU_PRELUDE + emu_kernel(render.render(space(), cfg, dtype)) + EMU_MAIN


class EmulationError(AssertionError):
    """The emulated kernel stopped (a check of the emulation, AddressSanitizer, a signal)."""


ASAN = ["-fsanitize=address"]


def _gxx(folder: Path, source: str) -> Path:
    """source compiled by g++ (C++20, threads; AddressSanitizer: a read past any array, shared memory's included,
    fails) into folder/k."""
    (folder / "k.cpp").write_text(source)
    exe = folder / "k"
    proc = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-w", *ASAN, "-o", str(exe), str(folder / "k.cpp")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


class Emulated:
    """One config's kernel compiled for the CPU; run(a, n, b16) -> C (uint16 bits, M x N), its arguments, grid and
    shared memory from the host side (Kernel.args / geometry / smem_bytes over a FakeDeviceCSR)."""

    def __init__(self, cfg: dict, folder: Path):
        self.cfg, self.folder = cfg, folder
        self.exe = _gxx(folder, emu_source(cfg, "fp16"))

    def run(self, a, n: int, b16, dtype: str, copy_at_issue: int = 0, seed: int = 0, fill: int = 0xAB):
        k = fake_kernel(FAMILY, self.cfg, dtype, a)
        args = k.args(n, "B", "C")
        (gx, gy), _ = k.geometry(n)
        d = Path(tempfile.mkdtemp(dir=self.folder))
        args[0].host.astype(np.int32).tofile(d / "roff")
        args[1].host.astype(np.uint32).tofile(d / "arec")
        np.ascontiguousarray(b16, dtype=np.uint16).tofile(d / "B")
        ints = [int(x) for x in args[4:12]]  # M N K tiles NS SK SPS acap
        ws, cnt = args[12].host, args[13].host
        proc = subprocess.run([str(self.exe), str(d), *map(str, ints), str(gx), str(gy), str(k.smem_bytes()),
                               str(copy_at_issue), "1" if dtype == "bf16" else "0", str(len(ws)), str(len(cnt)),
                               str(seed), str(fill)], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise EmulationError(f"{self.cfg} N={n}: exit {proc.returncode}: {proc.stderr[-3000:]}")
        self.sk = ints[5]
        return np.fromfile(d / "C", dtype=np.uint16).reshape(a.shape[0], n)


EMU_CFGS = [  # every rb, upw, tile_n, ks, stages, bload; split-K off and on (2 to 16 splits); 1 to 8 warps
    dict(rb=32, upw=1, tile_n=8, ks=64, stages=2, sk=1, bload="vec"),
    dict(rb=64, upw=2, tile_n=16, ks=64, stages=3, sk=2, bload="vec"),
    dict(rb=128, upw=4, tile_n=32, ks=128, stages=4, sk=4, bload="vec"),
    dict(rb=32, upw=2, tile_n=16, ks=256, stages=2, sk=8, bload="scalar"),
    dict(rb=64, upw=1, tile_n=32, ks=64, stages=4, sk=16, bload="scalar"),
    dict(rb=64, upw=4, tile_n=8, ks=128, stages=3, sk=2, bload="scalar"),
    dict(rb=256, upw=2, tile_n=8, ks=64, stages=3, sk=16, bload="scalar"),
    dict(rb=32, upw=1, tile_n=64, ks=64, stages=3, sk=1, bload="vec"),
    dict(rb=64, upw=1, tile_n=128, ks=64, stages=2, sk=4, bload="vec"),
    dict(rb=128, upw=2, tile_n=64, ks=128, stages=3, sk=2, bload="scalar"),
]


def emu_cases():
    """Small matrices: M and K off every multiple with a nonzero in the last row and column, empty units and tiles
    (a dense row), one dense row among empty ones, K < 16, all zero, a full dense block, density 0.7, a wide K (many
    slices: the ring wraps, up to 16 splits)."""
    every, adv = edge_cases(), adversarial()
    return {"last_row_col_70x300": last_row_and_column(), "empty_blocks_77x200": every["empty_blocks_77x200"],
            "one_dense_row": every["one_dense_row"], "k_below_16": every["k_below_16"],
            "all_zero": every["all_zero"], "dense_33x129": every["dense_33x129"],
            "density_0.7": adv["density_0.7"], "wide_24x3000": every["wide_24x3000"]}


EMU_NS = (1, 7, 8, 16, 32, 40, 72)


def _emu_plan(dtype):
    """[(case, N, config adapted to N as the tuner does)]: at each (case, N) the two adapted configs least used so far
    (fp16; bf16, which shares all but the conversions and the MMA's type, one at N = 7, 16 and 72)."""
    fam = get_family(FAMILY)
    cs = emu_cases()
    used: dict[str, int] = {}
    plan = []
    for name, a in cs.items():
        for n in EMU_NS if dtype == "fp16" else (7, 16, 72):
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            ads = []
            for c in EMU_CFGS:
                ad = fam.adapt(c, dtype, env, DEFAULT_LIMITS)
                if ad is not None and ad not in ads:
                    ads.append(ad)
            assert ads, (name, n)
            ads.sort(key=lambda c: used.get(json.dumps(c, sort_keys=True), 0))
            for ad in ads[:2 if dtype == "fp16" else 1]:
                key = json.dumps(ad, sort_keys=True)
                used[key] = used.get(key, 0) + 1
                plan.append((name, n, ad))
    return cs, plan


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The compiled kernels of both plans (one g++ build serves fp16 and bf16: the emulated source is the same)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    keys = sorted({json.dumps(c, sort_keys=True) for dt in ("fp16", "bf16") for _, _, c in _emu_plan(dt)[1]})
    root = tmp_path_factory.mktemp("tc_union_emu")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        emus = list(pool.map(lambda ik: Emulated(json.loads(ik[1]), _mk(root / f"c{ik[0]}")), enumerate(keys)))
    return dict(zip(keys, emus))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_kernel_source_emulated_on_the_cpu_is_correct(dtype, emulated):
    """The rendered kernel (its own C++: the ring's staging of B and the records, the unit walk, the A fragments from
    ballots and pairs, ldmatrix's row addresses, split-K through the workspace and counters, the epilogue) with
    ldmatrix / mma.sync / cp.async emulated (copies landing at the last moment wait_group allows; AddressSanitizer:
    no read past any array): the small cases at N = 1, 7, 8, 16, 32, 40, 72 (bf16: 7, 16, 72), configs adapted to N
    as the tuner does (16-bit staging where N % 8 != 0, tiles no wider than N needs), C against
    float64 within the dtype's tolerance, every element written (C starts as NaN, the workspace as NaN); the grid's
    blocks in a random order (any split of a tile may arrive last), the launch run twice: the counters left at 0 and
    the same C."""
    assert all(emu_source(json.loads(k), "fp16") == emu_source(json.loads(k), "bf16") for k in list(emulated)[:2])
    cs, plan = _emu_plan(dtype)
    rng = np.random.default_rng(0 if dtype == "fp16" else 1)
    splits, tiles_n, bloads = set(), set(), set()
    for i, (name, n, cfg) in enumerate(plan):
        a = cs[name]
        b16 = storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype).view(np.uint16)
        emu = emulated[json.dumps(cfg, sort_keys=True)]
        got = emu.run(a, n, b16, dtype, copy_at_issue=0, seed=i)
        err = _rel_err(_as_f64(got, dtype), _ref(a, b16, dtype))
        assert err <= TOLERANCE[dtype], (name, n, cfg, err)
        splits.add(emu.sk)
        tiles_n.add(cfg["tile_n"])
        bloads.add(cfg["bload"])
    assert {1, 2} <= splits and bloads == {"vec", "scalar"}, (splits, bloads)
    if dtype == "fp16":  # every column tile, and a tile of 16 splits (the wide K)
        assert max(splits) == 16 and tiles_n == set(space().param("tile_n").choices(dtype)), (splits, tiles_n)
    assert len(plan) >= (100 if dtype == "fp16" else 24)


def test_broken_kernels_emulated_on_the_cpu_fail(tmp_path):
    """The emulation fails broken kernels: B's rows past K staged without the guard read past B (AddressSanitizer
    stops the run); the first block of a tile to arrive doing split-K's reduction instead of the last adds partial
    sums not yet written (NaN in the first launch, the last launch's in the second: the two Cs differ). (A ring wait
    one group too lax is caught as well, with copies landing at the last moment, but not reproducibly: a copy landing
    under another lane's reads of the unit table splits the warp's step counts, and the run reads wild addresses or
    hangs at a warp barrier.)"""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    a = last_row_and_column()  # K = 300: the last 64-row slice has 20 rows past K
    b16 = storage(np.random.default_rng(3).standard_normal((300, 16)).astype(np.float32), "fp16").view(np.uint16)
    want = _ref(a, b16, "fp16")
    mutants = [(dict(rb=32, upw=1, tile_n=16, ks=64, stages=3, sk=1, bload="vec"),
                "const bool ok = krow < K && bcol < N;", "const bool ok = bcol < N;", "heap-buffer-overflow"),
               (dict(rb=64, upw=2, tile_n=16, ks=64, stages=2, sk=4, bload="scalar"),
                "s_last = old == SK - 1;", "s_last = old == 0;", "the second launch gave another C")]
    for i, (cfg, good, bad, says) in enumerate(mutants):
        src = emu_source(cfg, "fp16")
        assert src.count(good) == 1, good
        emu = Emulated(cfg, _mk(tmp_path / f"ok{i}"))
        assert _rel_err(_as_f64(emu.run(a, 16, b16, "fp16"), "fp16"), want) <= TOLERANCE["fp16"]
        emu.exe = _gxx(_mk(tmp_path / f"bad{i}"), src.replace(good, bad))
        with pytest.raises(EmulationError, match=says):
            emu.run(a, 16, b16, "fp16")


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---- on the GPU -------------------------------------------------------------------------------------------

def gpu_cases():
    """tc_bitmap's adversarial cases (empty rows and tiles, a full 16 x 16 tile, M / K not multiples of 16, one dense
    row, one nonzero, density 0.7, all zero, dense, a long K, lone halves) and tc_gather2's identical rows, empty
    blocks, K < 16, power-law and wide K, and the last row and column."""
    every = edge_cases()
    return {**adversarial(), **{x: every[x] for x in ("identical_rows_37x257", "empty_blocks_77x200", "k_below_16",
                                                      "powerlaw_101", "wide_24x3000")},
            "last_row_col_70x300": last_row_and_column()}


_CAPS: dict = {}


def _fits(a, cfg, dtype) -> bool:
    """The ring (and the 128 static bytes) fits the SM's shared memory: the constraint budgets 2 KB a record, a dense
    matrix's are larger (where it does not, build_kernel refuses the config: a CandidateError the tuner skips)."""
    key = (id(a), cfg["rb"], cfg["ks"], dtype)
    if key not in _CAPS:
        _CAPS[key] = (a, host().build(a, cfg["rb"], cfg["ks"], dtype)["cap"])  # (a kept: its id stays its own)
    return cfg["stages"] * (cfg["ks"] * host().row_bytes(cfg) + _CAPS[key][1]) + 128 <= SMEM_LIMIT


def _gpu_configs(a, n, dtype, twice=False):
    """The known-good configs adapted to N and a covering sample of the feasible ones (every value of every
    parameter), those whose ring fits; split-K ones twice where `twice`."""
    fam = get_family(FAMILY)
    sp = fam.space
    env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
    got = []
    for kg in sp.known_good:
        ad = fam.adapt(kg, dtype, env, DEFAULT_LIMITS)
        if ad is not None and ad not in got:
            got.append(ad)
    feas = list(sp.feasible(dtype, env, DEFAULT_LIMITS))
    feas = [feas[i] for i in np.random.default_rng(n).permutation(len(feas))]
    for name in PARAMS:
        for v in sp.param(name).choices(dtype):
            if not any(c[name] == v for c in got):
                got += [c for c in feas if c[name] == v and c not in got][:1]
    got = [c for c in got if _fits(a, c, dtype)]
    return [d for c in got for d in ([c, dict(c)] if twice and c["sk"] > 1 else [c])]


def _gpu_check(dtype: str) -> int:
    from nk_check import check_kn
    return check_kn(FAMILY, dtype, gpu_cases(), lambda a, n: _gpu_configs(a, n, dtype, twice=True),
                    (1, 3, 8, 16, 32, 127), TOLERANCE[dtype])


@pytest.mark.gpu
def test_correct_on_edge_cases_fp16():
    """Through the project's launch path (tests/nk_check.py's check_kn): poisoned C, fresh random B, the float64
    reference of the rounded operands; the edge cases (empty rows and units, a full tile, M and K off every multiple,
    a dense row, density 0.7, dense, a wide K) at N = 1, 3, 8, 16, 32, 127 with the known-good configs adapted to N
    and every value of every parameter, each split-K config twice (a second kernel on the same workspace and
    counters)."""
    assert _gpu_check("fp16") > 500


@pytest.mark.gpu
def test_correct_on_edge_cases_bf16():
    assert _gpu_check("bf16") > 500


SPLITK_GPU_CFGS = [  # split-K 2, 4, 16 (of up to 79 slices), every column tile, both stagings
    dict(rb=128, upw=1, tile_n=16, ks=256, stages=3, sk=4, bload="vec"),
    dict(rb=64, upw=1, tile_n=8, ks=64, stages=4, sk=16, bload="scalar"),
    dict(rb=32, upw=2, tile_n=32, ks=128, stages=2, sk=2, bload="vec"),
    dict(rb=256, upw=2, tile_n=64, ks=64, stages=3, sk=16, bload="scalar"),
    dict(rb=64, upw=1, tile_n=128, ks=128, stages=2, sk=4, bload="vec"),
]


@pytest.mark.gpu
def test_split_k_kernels_run_twice_give_the_same_c():
    """Split-K kernels (2 to 16 splits: the blocks of a tile racing for its counter) launched twice each: the counters
    back at 0 after each launch (the workspace is never cleared), the second C bit-identical to the first (the splits
    added in order), both within the tolerance of float64; fp16 and bf16, N = 7, 16, 40, 136."""
    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.core.problem import DTYPES, host_values
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    fam = get_family(FAMILY)
    ran, splits = 0, set()
    for dtype in ("fp16", "bf16"):
        for name, a in {"uniform_1000x5000": random_matrix(1000, 5000, 0.05, "uniform", 5),
                        "last_row_col_70x300": last_row_and_column()}.items():
            a = sps.csr_matrix(a, copy=True)
            a.data = host_values(a.data.astype(np.float32), DTYPES[dtype])
            dev = DeviceCSR(a, dtype)
            a64 = csp.csr_matrix(a.astype(np.float64))
            for n in (7, 16, 40, 136):
                env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
                b = cp.asarray(storage(np.random.default_rng(n).standard_normal((a.shape[1], n)).astype(np.float32),
                                       dtype))
                want = reference(a64, b)
                for cfg in SPLITK_GPU_CFGS:
                    cfg = fam.adapt(cfg, dtype, env, DEFAULT_LIMITS)
                    if cfg is None or not _fits(a, cfg, dtype):
                        continue
                    kern = build_kernel(dev, FAMILY, cfg, dtype)
                    args = kern.args(n, None, None)
                    cnt, sk = args[-1], int(args[9])
                    outs = []
                    for _ in range(2):
                        c = cp.empty((a.shape[0], n), dtype=cp.uint16 if dtype == "bf16" else cp.float16)
                        err = check(lambda: kern(b, c), c, want, dtype)
                        assert err <= TOLERANCE[dtype], (name, n, cfg, err)
                        assert not cp.asnumpy(cnt).any(), (name, n, cfg)
                        outs.append(cp.asnumpy(c.view(cp.uint16)))
                    assert np.array_equal(outs[0], outs[1]), (name, n, cfg)
                    splits.add(sk)
                    ran += 1
    assert ran >= 60 and {2, 4, 16} <= splits, (ran, splits)


@pytest.mark.gpu
def test_known_good_configs_correct_on_the_roofline_shapes():
    """The known-good configs (adapted to N, split-K ones twice) on 4096 x 14336 d 0.05 at N = 8, 16, 32 (fp16) and
    N = 16 (bf16), 1024 x 4096 d 0.05 at N = 7 and 16 (fp16), against float64."""
    from nk_check import check_kn
    fam = get_family(FAMILY)

    def configs(a, n, dtype):
        got = adapted_known_goods(fam, a, n, dtype, DEFAULT_LIMITS, "sk", keep=lambda ad: _fits(a, ad, dtype))
        assert got, (a.shape, n)
        return got
    big = {"4096x14336": random_matrix(4096, 14336, 0.05, "uniform", 0)}
    small = {"1024x4096": random_matrix(1024, 4096, 0.05, "uniform", 1)}
    checked = check_kn(FAMILY, "fp16", big, lambda a, n: configs(a, n, "fp16"), (8, 16, 32), TOLERANCE["fp16"])
    checked += check_kn(FAMILY, "bf16", big, lambda a, n: configs(a, n, "bf16"), (16,), TOLERANCE["bf16"])
    checked += check_kn(FAMILY, "fp16", small, lambda a, n: configs(a, n, "fp16"), (7, 16), TOLERANCE["fp16"])
    assert checked >= 20
