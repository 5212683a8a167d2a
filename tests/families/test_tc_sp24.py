"""tc_sp24 (Hopper sparse wgmma on the 2:4 part of A, a CUDA-core residual for the rest): the split keeps at most two
nonzeros a row and group of 4 and never writes invalid metadata; the stream and the residual round-trip to A by the
kernel's own register rule (variants/tc_sp24.py decode) on random and adversarial patterns; the residual's share
follows the binomial model; rendering, constraints (sm 90 only, N % 8), shared memory and geometry; the sm_90a build
(nvcc: HGMMA.SP in the SASS, no spills, no serialization warning); on a GPU, the known-good and a covering sample of
configs against float64 on edge cases, fp16 and bf16, N = 8, 64, 136, 264 (N = 1, 7, 127 infeasible). tf32 (the nk
layout natively, 1:2 on column pairs): its stream against the probe's layout, its space, renders, builds and, on a GPU,
its kernels on the nk edge cases."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from barrier_model import producer_ops, simulate
from fakes import fake_kernel, launch_signature_test, signature
from space_checks import check_matrices_on_gpu, nvcc_sm90a
from sparse_autotune.core.families import csr_parts, get_family
from sparse_autotune.core.problem import half_bits, random_matrix
from sparse_autotune.core.render import render
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device.kernel import BParam
from sparse_autotune.errors import UserError

FAMILY = "tc_sp24"
# the nvcc checks' dtypes: bf16 renders the fp16 kernel with other conversion and wgmma types; its builds are the heavy
# tier (pytest -m heavy), the GPU tests run both
COMPILE_DTYPES = ["fp16", pytest.param("bf16", marks=pytest.mark.heavy)]


def host():
    return get_family(FAMILY).host


def space():
    return get_family(FAMILY).space


def gather_space():
    """The space with perm, ov and ovc at the values they take once their gathers have run on a GPU (the shipped space
    holds them at 0 until then: bench/NOTES.md, session 47)."""
    return host().gather_space(space())


def _vals(a, rng):
    a = sps.csr_matrix(a)
    a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
    a.data[np.abs(a.data) < 0.05] = 0.25  # never zero after rounding to 16 bits
    return a


def adversarial():
    """Empty rows and tiles, a full (dense) tile, M and K not multiples of 64 / 32, one nonzero, all zero, a dense
    row, lone nonzeros at each position of a group (3 included), groups of 3 and 4 (the residual), 70 %."""
    rng = np.random.default_rng(5)
    out = {}
    a = sps.random(150, 200, density=0.3, format="lil", random_state=1)
    a[0:70, :] = 0  # a whole empty 64-row block and more
    a[:, 32:96] = 0  # empty chunks
    out["empty_rows_and_tiles"] = _vals(a, rng)
    a = sps.random(64, 96, density=0.05, format="lil", random_state=2)
    a[16:48, 32:64] = 1.0  # a full tile: every group of 4 has 4 (2 of them to the residual)
    out["full_tile"] = _vals(a, rng)
    out["residues_37x53"] = _vals(sps.random(37, 53, density=0.3, format="csr", random_state=3), rng)
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["one_nonzero"] = _vals(a, rng)
    out["all_zero"] = sps.csr_matrix((70, 40), dtype=np.float32)
    a = sps.lil_matrix((66, 130))
    a[3, :] = 1.0  # one dense row
    for p in range(4):
        a[10 + p, 4 * p + p] = 1.0  # lone nonzeros at each position
        a[20, 8 * p + p] = 1.0
    out["dense_row_and_lone"] = _vals(a, rng)
    out["d0.7_100x300"] = _vals(sps.random(100, 300, density=0.7, format="csr", random_state=4), rng)
    return out


def _dense_bits(a, dtype="fp16"):
    c = sps.coo_matrix(a)
    out = np.zeros(a.shape, dtype=np.uint16)
    out[c.row, c.col] = half_bits(c.data, dtype)
    return out


@pytest.mark.parametrize("kc,wg", [(1, 1), (2, 2), (4, 1)])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_stream_and_residual_round_trip_to_a(kc, wg, dtype):
    h = host()
    cases = adversarial()
    cases["uniform_200x300_d0.1"] = _vals(random_matrix(200, 300, 0.1, "uniform", 1), np.random.default_rng(1))
    for name, a in cases.items():
        stream, rptr, rcol, rval, info = h.build(a, kc, wg, dtype)
        assert stream.nbytes == info["NC"] * info["NBLK"] * wg * kc * h.TILE, name
        assert (h.decode(stream, rptr, rcol, rval, info) == _dense_bits(a, dtype)).all(), (name, kc, wg)


def test_split_keeps_two_a_group_and_never_writes_invalid_metadata():
    h = host()
    a = _vals(sps.random(300, 400, density=0.6, format="csr", random_state=9), np.random.default_rng(2))
    nib, vals, resid = h.split(a)
    assert nib.shape == (300, 100) and vals.shape == (300, 200)
    p0, p1 = nib & 3, nib >> 2
    assert (p0 < p1).all()  # never 0b0000, 0b0101, 0b1010, 0b1111; ordered
    kept = (vals != 0).reshape(300, 100, 2).sum(axis=2)
    dense = _dense_bits(a) != 0
    per_group = dense.reshape(300, 100, 4).sum(axis=2)
    assert (kept == np.minimum(per_group, 2)).all()
    assert resid.nnz == int(np.maximum(per_group - 2, 0).sum())
    # the residual holds the third and fourth nonzero of a group in column order
    r = resid.tocoo()
    for i, j in zip(r.row[:200], r.col[:200]):
        g = j // 4
        assert dense[i, 4 * g:j].sum() >= 2


def test_residual_share_follows_the_binomial_model():
    h = host()
    for d in (0.1, 0.3, 0.5):
        a = random_matrix(512, 2048, d, "uniform", 0)
        _, _, resid = h.split(a)
        q = 1 - d
        want = (1 * 4 * d ** 3 * q + 2 * d ** 4) / (4 * d)  # E[max(X - 2, 0)] / E[X], X ~ Bin(4, d)
        assert abs(resid.nnz / a.nnz - want) < 0.1 * want + 0.002, (d, resid.nnz / a.nnz, want)


def test_bytes_per_element_is_nine_eighths_of_the_padded_a():
    h = host()
    a = random_matrix(4096, 4096, 0.05, "uniform", 0)
    stream, rptr, _, _, info = h.build(a, 2, 2)
    assert stream.nbytes == 4096 * 4096 * 9 // 8
    assert info["bytes"] == stream.nbytes + rptr.nbytes + 6 * info["residual"]


def test_the_builder_leaves_the_callers_matrix_alone():
    a = random_matrix(100, 200, 0.3, "uniform", 2)
    before = (a.data.copy(), a.indices.copy(), a.indptr.copy())
    host().build(a, 2, 1)
    assert all((x == y).all() for x, y in zip(before, (a.data, a.indices, a.indptr)))


def test_mc_renders_a_cluster_with_multicast_and_remote_releases():
    s1 = render(space(), dict(bn=128, kc=2, wg=2, stages=4, splitk=1), "fp16")
    s2 = render(space(), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, mc=2), "fp16")
    assert "multicast" not in s1 and "__cluster_dims__" not in s1 and "cluster_sync" not in s1
    assert "__cluster_dims__(MC, 1, 1)" in s2 and ".multicast::cluster" in s2
    assert "mbar_init(empty + 8 * st, WARPS * MC);" in s2 and "mbar_arrive_cluster(empty + 8 * pst, lane)" in s2
    assert s2.count("cluster_sync();") == 2  # after the barriers' init, and the exit barrier


def test_configs_render_wgmma_sp_for_both_dtypes():
    for dtype, mt in (("fp16", "f16"), ("bf16", "bf16")):
        for bn in (64, 128, 256):
            src = render(space(), dict(bn=bn, kc=2, wg=2, stages=4, splitk=2), dtype)
            assert f"wgmma.mma_async.sp.sync.aligned.m64n{bn}k32.f32.{mt}.{mt}" in src
            assert "cp.async.bulk.tensor.2d" in src and "__grid_constant__ TensorMap128" in src
            assert f'"+f"(d[{bn // 2 - 1}])' in src and f'"+f"(d[{bn // 2}])' not in src  # bn / 2 accumulators
            assert "atomicAdd(counters" in src  # split-K 2
        assert "atomicAdd(counters" not in render(space(), dict(bn=64, kc=1, wg=1, stages=2, splitk=1), dtype)


def test_the_space_stops_at_density_0_2_and_at_0_3_with_perm():
    assert space().param("perm").values == [0] and space().param("ov").values == [0]  # session 50: measured slower
    assert list(space().feasible("fp16", problem_env(4096, 4096, 128, int(0.2 * 4096 * 4096), "fp16"), DEFAULT_LIMITS))
    assert not list(space().feasible("fp16", problem_env(4096, 4096, 128, int(0.3 * 4096 * 4096), "fp16"), DEFAULT_LIMITS))
    sp = gather_space()
    cfg = sp.normalize(dict(bn=64, kc=4, wg=1, stages=6, splitk=4), "fp16")
    for d, perm, ok in ((0.2, 0, True), (0.3, 0, False), (0.3, 1, True), (0.4, 1, False)):
        env = problem_env(4096, 4096, 128, int(d * 4096 * 4096), "fp16")
        assert (sp.check(dict(cfg, perm=perm), env, DEFAULT_LIMITS) is None) == ok, (d, perm)



# ---- perm: each row block's own column order ----

def _residual(a, rows, perm=None):
    """Nonzeros past the first two of their row and group of 4 positions (perm: each row block's order)."""
    h = host()
    a = sps.csr_matrix(a)
    if perm is not None:
        a = h.permute_columns(a, perm, rows)
    r = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    return int(np.maximum(np.bincount(r.astype(np.int64) * (a.shape[1] // 4 + 1) + a.indices // 4) - 2, 0).sum())


@pytest.mark.parametrize("rows", [64, 128])
def test_column_perms_are_permutations_deterministic_and_shrink_the_residual(rows):
    h = host()
    cases = {**adversarial(), **{f"u{d}": random_matrix(300, 1000, d, "uniform", 7) for d in (0.1, 0.2, 0.3)},
             "pow0.1": random_matrix(300, 1000, 0.1, "powerlaw", 7)}
    for name, a in cases.items():
        perm = h.column_perms(a, rows)
        k = a.shape[1]
        assert perm.shape == (-(-a.shape[0] // rows), 4 * max(1, -(-k // 4))), name
        for b in range(perm.shape[0]):  # every column exactly once a block, the rest -1
            got = np.sort(perm[b][perm[b] >= 0])
            assert (got == np.arange(k)).all() and (perm[b] >= -1).all(), (name, b)
        assert (h.column_perms(a, rows) == perm).all(), name  # deterministic
        assert _residual(a, rows, perm) <= _residual(a, rows), name
    for d, most in ((0.1, 0.0), (0.2, 0.02), (0.3, 0.05 if rows == 64 else 0.25)):  # column order leaves 1-8 %
        a = cases[f"u{d}"]
        nat, got = _residual(a, rows), _residual(a, rows, h.column_perms(a, rows))
        assert nat > 0.005 * a.nnz and got <= most * nat, (d, rows, nat, got)


@pytest.mark.parametrize("rows", [64, 128])
def test_pair_perms_move_columns_in_pairs_and_shrink_the_residual(rows):
    h = host()
    cases = {**adversarial(), **{f"u{d}": random_matrix(256, 1001, d, "uniform", 7) for d in (0.1, 0.2)}}
    for name, a in cases.items():
        perm = h.pair_perms(a, rows)
        k = a.shape[1]
        assert perm.shape[0] == -(-a.shape[0] // rows) and perm.shape[1] % 4 == 0 and perm.shape[1] >= k, name
        for b in range(perm.shape[0]):
            got = np.sort(perm[b][perm[b] >= 0])
            assert (got == np.arange(k)).all(), (name, b)  # every column once a block
            lo, hi = perm[b][0::2], perm[b][1::2]  # positions (2i, 2i + 1): a pair (2j, 2j + 1), or none
            assert ((lo % 2 == 0) | (lo < 0)).all() and ((hi == lo + 1) | ((hi < 0) & ((lo < 0) | (lo == k - 1)))).all(), (name, b)
        assert (h.pair_perms(a, rows) == perm).all(), name
        assert _residual(a, rows, perm) <= _residual(a, rows), name
    for d, most in ((0.1, 0.01), (0.2, 0.05 if rows == 64 else 0.15)):  # 128-row blocks: harder to fit
        a = cases[f"u{d}"]
        nat, got = _residual(a, rows), _residual(a, rows, h.pair_perms(a, rows))
        assert nat > 0.005 * a.nnz and got <= most * nat, (d, rows, nat, got)


def test_compact_perm_runs_each_block_on_the_columns_it_has():
    h = host()
    a = random_matrix(256, 2048, 0.02, "uniform", 1)  # ~27 % of a 64-row block's columns empty
    perm = h.column_perms(a, 64)
    cut, pnc = h.compact_perm(a, perm, 64, 2)
    assert cut.shape[1] == 64 * pnc.max() and cut.shape[1] < 0.85 * perm.shape[1] and (pnc < 2048 // 64).all()
    for b in range(4):
        blk = a[64 * b:64 * (b + 1)]
        have = set(np.unique(blk.indices))
        assert have <= set(cut[b][:64 * pnc[b]]), b  # every column with nonzeros within the block's own chunks
        groups = cut[b].reshape(-1, 4)
        kept = {tuple(g) for g in groups.tolist() if any(c in have for c in g)}
        assert kept <= {tuple(g) for g in perm[b].reshape(-1, 4).tolist()}, b  # whole groups moved (2:4 unchanged)
    pairs = h.pair_perms(a, 64)
    cutp, _ = h.compact_perm(a, pairs, 64, 2)
    lo, hi = cutp[:, 0::2], cutp[:, 1::2]
    assert ((hi == lo + 1) | (hi < 0)).all()  # perm 2's pairs stay whole
    dense = random_matrix(64, 512, 0.7, "uniform", 1)
    assert (h.compact_perm(dense, h.column_perms(dense, 64), 64, 4)[1] == 4).all()  # nothing to cut


@pytest.mark.parametrize("kc,wg", [(1, 1), (2, 2), (4, 1)])
def test_permuted_stream_round_trips_to_a_and_leaves_the_matrix_alone(kc, wg):
    h = host()
    cases = {**adversarial(), "u0.2": random_matrix(150, 300, 0.2, "uniform", 3),
             "pow0.05": random_matrix(150, 300, 0.05, "powerlaw", 3), "u0.02": random_matrix(200, 2000, 0.02, "uniform", 3)}
    z = sps.coo_matrix(random_matrix(100, 400, 0.02, "uniform", 4))
    keep = z.col != 399  # column 399: only an explicit zero (row 70), which needs no position and holds no value
    cases["explicit_zero"] = sps.csr_matrix((np.append(z.data[keep], 0.0), (np.append(z.row[keep], 70),
                                             np.append(z.col[keep], 399))), shape=z.shape)
    for name, a in cases.items():
        before = a.copy()
        stream, rptr, rcol, rval, pm, pnc, info = h.build_permuted(a, kc, wg, "fp16")
        assert pm.dtype == np.uint16 and pm.size == info["NBLK"] * 32 * kc * info["NC"], name
        assert pnc.dtype == np.int32 and len(pnc) == info["NBLK"] and 1 <= pnc.min() and pnc.max() == info["NC"], name
        assert (h.decode(stream, rptr, rcol, rval, info, pm) == _dense_bits(a)).all(), (name, kc, wg)
        tiles = stream.reshape(info["NC"], info["NBLK"], -1)  # a block's chunks past its own hold no value
        for b in range(info["NBLK"]):
            assert not tiles[pnc[b]:, b, :].reshape(-1, 2304)[:, :2048].any(), (name, b)
        got = h.build_permuted(a, kc, wg, "fp16", h.pair_perms(a, 64 * wg))  # perm 2: the pairs' order
        assert (h.decode(*got[:4], got[6], got[4]) == _dense_bits(a)).all(), (name, kc, wg, "pairs")
        assert (rcol[:rptr[-1]] < a.shape[1]).all(), name  # the residual keeps A's columns (B's rows)
        assert (a != before).nnz == 0 and (a.indices == before.indices).all(), name


def test_perm_gathers_b_by_row_boxes_of_a_producer_warpgroup():
    sp = gather_space()
    base = sp.normalize(dict(bn=128, kc=2, wg=2, stages=6, splitk=1), "fp16")
    plain, perm = render(sp, base, "fp16"), render(sp, dict(base, perm=1), "fp16")
    assert "const unsigned short* __restrict__ pm" not in plain and "const unsigned short* __restrict__ pm" in perm
    assert "#define THREADS 384" in perm and "#define THREADS 288" in plain  # perm: a producer warpgroup
    assert "1 * (pt4 % 64) * 128, gmap, n0 + 64 * (p / 64), kb, full + 8 * st)" in perm  # a one-row box a thread
    assert "bar.sync 3, 128" in perm and "bar.sync 3" not in plain
    pairs = render(sp, dict(base, perm=2), "fp16")  # two-row boxes: 32 pairs a column block of a 64-row chunk
    assert "2 * (pt4 % 32) * 128, gmap, n0 + 64 * (p / 32), kb, full + 8 * st)" in pairs
    assert "#error" in render(sp, dict(base, perm=3), "fp16")
    h = host()
    t = h.tensor_map_args(512, 1024, dict(base, perm=1), 0)
    assert t["box"] == (64, 1) and t["swizzle"] == h.tensor_map_args(512, 1024, base, 0)["swizzle"]
    assert h.tensor_map_args(512, 1024, dict(base, perm=2), 0)["box"] == (64, 2)
    env = problem_env(1024, 1024, 512, 50_000, "fp16")
    assert sp.check(dict(base, perm=1), env, DEFAULT_LIMITS) is None
    for bad in (dict(mc=2), dict(pw=1, bn=256)):
        assert sp.check(sp.normalize(dict(base, perm=1, **bad), "fp16"), env, DEFAULT_LIMITS) is not None, bad
    nk = sp.for_layout("nk")
    nk_env = {**problem_env(1024, 1024, 512, 50_000, "fp16", "nk"), "nk_path": "native"}
    assert nk.check(nk.normalize(dict(base, bn=64, perm=0), "fp16"), nk_env, DEFAULT_LIMITS) is None
    assert nk.check(nk.normalize(dict(base, bn=64, perm=1), "fp16"), nk_env, DEFAULT_LIMITS) is not None


PERM_CONFIGS = [dict(bn=128, kc=2, wg=2, stages=6, splitk=1, perm=1), dict(bn=64, kc=4, wg=1, stages=6, splitk=2, perm=1),
                dict(bn=64, kc=1, wg=2, stages=8, splitk=1, perm=1), dict(bn=128, kc=2, wg=2, stages=6, splitk=1, pt=1, perm=1),
                dict(bn=128, kc=2, wg=2, stages=4, splitk=2, ar=4, perm=1), dict(bn=64, kc=4, wg=1, stages=6, splitk=1, l2=12, perm=1),
                dict(bn=256, kc=1, wg=1, stages=4, splitk=1, perm=1), dict(bn=128, kc=2, wg=2, stages=6, splitk=1, perm=2),
                dict(bn=64, kc=4, wg=1, stages=6, splitk=4, perm=2), dict(bn=64, kc=1, wg=2, stages=8, splitk=1, pt=1, perm=2)]


# ---- ov: overflow chunks that take the residual into the wgmma.sp loop ----

def _ranks(a):
    """(rows, cols, rank in the row's group of 4 columns) of A's entries in CSR order."""
    m, k, r, c, _ = csr_parts(a)
    return r, c, host()._group_rank(r, c, max(1, -(-k // 4)))[1]


@pytest.mark.parametrize("rows", [64, 128])
def test_overflow_positions_take_only_the_residual_two_a_row_and_group(rows):
    h = host()
    cases = {**adversarial(), "u0.1": random_matrix(300, 1000, 0.1, "uniform", 7),
             "pow0.1": random_matrix(300, 1000, 0.1, "powerlaw", 7)}
    for name, a in cases.items():
        r, c, rank = _ranks(a)
        for npos in (32, 128):
            take, pos = h.overflow_positions(a, rows, npos)
            assert not take[rank < 2].any() and (pos[~take] == -1).all(), name  # only what 2:4 cannot hold
            assert ((pos[take] >= 0) & (pos[take] < npos)).all(), name
            b, p = r[take] // rows, pos[take]
            slot_cols = {}
            for bb, pp, cc in zip(b, p, c[take]):  # a position is one column of A (one B row) in its block
                assert slot_cols.setdefault((bb, pp), cc) == cc, (name, bb, pp)
            per = np.unique(r[take] * (npos // 4) + p // 4, return_counts=True)[1]
            assert (per <= 2).all(), name  # at most two of a row in a group of 4 positions: 2:4 holds them
            again = h.overflow_positions(a, rows, npos)
            assert (again[0] == take).all() and (again[1] == pos).all(), name  # deterministic
    r, c, rank = _ranks(cases["u0.1"])
    take, _ = h.overflow_positions(cases["u0.1"], 64, 128)
    assert (rank >= 2).sum() > 100 and take.sum() == (rank >= 2).sum()  # a few entries a block: all of them taken
    take, _ = h.overflow_positions(cases["u0.1"], 128, 32)
    assert 0 < take.sum() < (rank >= 2).sum()  # 32 positions cannot take ~13 columns a block with a row in two


@pytest.mark.parametrize("kc,wg,ov", [(1, 1, 1), (2, 2, 2), (4, 1, 1), (1, 2, 4)])
def test_overflow_stream_round_trips_to_a_and_keeps_the_rest_in_the_residual(kc, wg, ov):
    h = host()
    cases = {**adversarial(), "u0.1": random_matrix(150, 700, 0.1, "uniform", 3),
             "pow0.05": random_matrix(150, 700, 0.05, "powerlaw", 3)}
    for name, a in cases.items():
        before = a.copy()
        stream, rptr, rcol, rval, pm, info = h.build_overflow(a, kc, wg, ov, "fp16")
        nc0 = -(-a.shape[1] // (32 * kc))
        assert info["NC"] == nc0 + ov and info["K"] == a.shape[1], name
        assert pm.dtype == np.uint16 and pm.size == info["NBLK"] * 32 * kc * ov, name
        assert (h.decode(stream, rptr, rcol, rval, info, pm) == _dense_bits(a)).all(), (name, kc, wg, ov)
        plain = h.build(a, kc, wg, "fp16")[4]["residual"]
        assert info["residual"] + info["overflow"] == plain and int(rptr[-1]) == info["residual"], name
        assert (rcol[:rptr[-1]] < a.shape[1]).all(), name
        assert (a != before).nnz == 0 and (a.indices == before.indices).all(), name
    info = h.build_overflow(cases["u0.1"], 2, 1, 1, "fp16")[5]
    assert info["overflow"] > 0 and info["residual"] == 0  # one chunk of 64 positions takes a uniform d 0.1 residual


def test_ov_renders_a_gathering_producer_warp_and_a_second_tensor_map():
    sp = gather_space()
    base = sp.normalize(dict(bn=128, kc=2, wg=2, stages=6, splitk=1), "fp16")
    plain, ov = render(sp, base, "fp16"), render(sp, dict(base, ov=2), "fp16")
    assert "tmap1" not in plain and "const __grid_constant__ TensorMap128 tmap1" in ov
    # a warpgroup gathers at kc 2 (and 4, and at pw); the producer warp at kc 1 (session 50: a warpgroup's 96 more
    # threads cost blocks an SM there; at kc 2 / 4 the warp, issuing kc rows a lane in turn, ran 1.1-1.95x slower)
    assert "const unsigned short* __restrict__ pm" in ov and "#define THREADS 384" in ov and "#define THREADS 288" in plain
    assert "const int ncg = NC - 2;" in ov and "bar.sync 3, 128" in ov and "bar.sync 3" not in plain
    assert "gmap1, n0 + 64 * (p / KC), kb, full + 8 * st)" in ov and "p += 128)" in ov
    assert "unsigned int ov0 =" in ov and "pmb += KC;" in ov and "unsigned int ov1" not in ov  # one row register at any ov
    k1 = render(sp, dict(base, kc=1, ov=2), "fp16")  # kc 1: the producer warp, a lane a row, every box
    assert "#define THREADS 288" in k1 and "bar.sync 3, 32" in k1 and "p += 32)" in k1 and "unsigned int ov1" not in k1
    pw = render(sp, dict(base, kc=1, pw=1, ov=2), "fp16")
    assert "#define THREADS 384" in pw and "bar.sync 3, 128" in pw
    assert "__launch_bounds__(THREADS, 1)" in plain and "__launch_bounds__(THREADS, 1)" in pw and "__launch_bounds__(THREADS, 1)" in ov
    # bn 64 kc 1 (ar, rs, rq, pt 0): the blocks an SM its ov 0 twin holds asked for (3072x768 N = 2048's record: 3;
    # ptxas gave the producer warp's form 77 registers, 2 blocks), by its shared memory (host's shared_bytes) and threads
    small = sp.normalize(dict(bn=64, kc=1, wg=2, stages=8, splitk=1, l2=0, ov=1), "fp16")
    src = render(sp, small, "fp16")
    assert "__launch_bounds__(THREADS, 3)" in src and "__launch_bounds__(THREADS, 1)" in render(sp, dict(small, ov=0), "fp16")
    assert re.search(r"// ov: 3 blocks an SM \((\d+) bytes", src).group(1) == str(host().shared_bytes(small))
    env = problem_env(1024, 1024, 512, 100_000, "fp16")
    for ov_ in (1, 2, 4):
        assert sp.check(sp.normalize(dict(base, ov=ov_), "fp16"), env, DEFAULT_LIMITS) is None, ov_
    for bad in (dict(mc=2), dict(perm=1)):
        assert sp.check(sp.normalize(dict(base, ov=2, **bad), "fp16"), env, DEFAULT_LIMITS) is not None, bad
    nk = sp.for_layout("nk")
    nk_env = {**problem_env(1024, 1024, 512, 100_000, "fp16", "nk"), "nk_path": "native"}
    assert nk.check(nk.normalize(dict(base, bn=64, ov=0), "fp16"), nk_env, DEFAULT_LIMITS) is None
    assert nk.check(nk.normalize(dict(base, bn=64, ov=2), "fp16"), nk_env, DEFAULT_LIMITS) is not None
    assert "#error" in render(sp, dict(base, ov=3), "fp16")
    cp = render(sp, dict(base, ov=2, ovc=1), "fp16")  # ovc: cp.async pieces, no second map, the consumers' fence
    assert "tmap1" not in cp and "cp.async.mbarrier.arrive.shared::cta.b64" in cp and "cp_async16z(" in cp
    assert "if (c0 + i >= NC - 2) fence_proxy_async();" in cp and "fence_proxy_async();  // ovc" not in ov
    assert cp.index("cp_async_arrive(full + 8 * st);") < cp.index("mbar_arrive_tx(full + 8 * st, gth ? (unsigned int)AST : bytes)")
    assert sp.check(sp.normalize(dict(base, ovc=1), "fp16"), env, DEFAULT_LIMITS) is not None  # ovc without ov
    big = sp.normalize(dict(base, bn=256, kc=1, wg=1, pw=1, pt=1, ov=1), "fp16")  # ptxas spills the row boxes' form there
    assert sp.check(big, env, DEFAULT_LIMITS) is not None and sp.check(dict(big, ovc=1), env, DEFAULT_LIMITS) is None


def _gather_launch(a, cfg):
    """(config, launch arguments at N = 256, the kernel's parameter names) of a perm / ov config, the arguments one a
    parameter."""
    cfg = gather_space().normalize(cfg, "fp16")
    kern = fake_kernel(FAMILY, cfg, "fp16", a)
    sig = signature(kern.source)
    args = kern.args(256, object(), object())
    assert len(args) == len(sig), cfg
    return cfg, args, [nm for nm, _ in sig]


def test_ov_launch_passes_the_position_table_and_both_maps():
    a = random_matrix(300, 700, 0.1, "uniform", 2)
    h = host()
    for cfg in (dict(bn=128, kc=2, wg=2, stages=6, splitk=1, ov=2), dict(bn=64, kc=4, wg=1, stages=6, splitk=2, l2=12, ov=1),
                dict(bn=64, kc=1, wg=2, stages=8, splitk=3, pt=1, ov=4), dict(bn=128, kc=2, wg=2, stages=6, splitk=1, ov=2, ovc=1)):
        cfg, args, names = _gather_launch(a, cfg)
        maps = ["tmap"] if cfg.get("ovc") else ["tmap", "tmap1"]
        assert names[-len(maps):] == maps and all(isinstance(x, BParam) for x in args[-len(maps):]), cfg
        assert "tmap1" not in names[:-1], cfg
        pm = args[names.index("pm")].host  # the row blocks' overflow positions (the fake device keeps the host array)
        assert pm.dtype == np.uint16 and pm.size % (32 * cfg["kc"] * cfg["ov"]) == 0, cfg
        nc = int(args[names.index("NC")])
        assert nc == -(-700 // (32 * cfg["kc"])) + cfg["ov"], cfg
        assert int(args[names.index("cps")]) == -(-nc // cfg["splitk"]), cfg
        assert h.tensor_map_args_rows(256, 700, 0)["box"] == (64, 1)
        assert h.threads(cfg) == 128 * cfg["wg"] + (128 if cfg.get("pw") or cfg["kc"] > 1 else 32)  # ov: the producer warp gathers at kc 1


def test_perm_launch_passes_the_order_and_each_blocks_chunks():
    a = random_matrix(300, 2000, 0.02, "uniform", 2)
    for cfg in (dict(bn=64, kc=2, wg=1, stages=6, splitk=1, perm=1), dict(bn=128, kc=2, wg=2, stages=4, splitk=3, perm=2),
                dict(bn=64, kc=1, wg=1, stages=6, splitk=1, pt=1, perm=1)):
        cfg, args, names = _gather_launch(a, cfg)
        assert names[-1] == "tmap" and "tmap1" not in names, cfg
        pm, pnc = args[names.index("pm")].host, args[names.index("pnc")].host
        nc, nblk = int(args[names.index("NC")]), int(args[names.index("NBLK")])
        assert pm.size == nblk * nc * 32 * cfg["kc"] and pnc.max() == nc and len(pnc) == nblk, cfg
        assert nc < -(-2000 // (32 * cfg["kc"])) or cfg["wg"] == 2, cfg  # 64-row blocks at d 0.02: fewer chunks
        assert int(args[names.index("cps")]) == -(-nc // cfg["splitk"]), cfg


OV_CONFIGS = [dict(bn=128, kc=2, wg=2, stages=6, splitk=1, ov=2), dict(bn=64, kc=4, wg=1, stages=6, splitk=1, ov=1),
              dict(bn=64, kc=1, wg=2, stages=8, splitk=1, ov=4), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, l2=25, ov=2),
              dict(bn=64, kc=4, wg=2, stages=6, splitk=1, pt=1, pw=1, l2=100, ov=1),
              dict(bn=64, kc=4, wg=1, stages=6, splitk=2, ar=4, ov=1), dict(bn=256, kc=1, wg=1, stages=4, splitk=1, ov=2),
              dict(bn=64, kc=4, wg=1, stages=6, splitk=1, pw=1, ov=8), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, pt=1, ov=8),
              # ovc: the same gathers by cp.async
              dict(bn=128, kc=2, wg=2, stages=6, splitk=1, ov=2, ovc=1), dict(bn=64, kc=4, wg=1, stages=6, splitk=1, ov=1, ovc=1),
              dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, l2=25, ov=2, ovc=1),
              dict(bn=64, kc=1, wg=2, stages=8, splitk=2, pt=1, ov=4, ovc=1), dict(bn=64, kc=4, wg=1, stages=6, splitk=2, ar=4, ov=1, ovc=1),
              dict(bn=128, kc=2, wg=1, stages=8, splitk=1, pw=1, ov=2, ovc=1)]  # spilled 4 bytes until session 49


@pytest.mark.heavy  # the gathers are off in the shipped space (NOTES session 50): their nvcc checks in the heavy tier
@pytest.mark.parametrize("kind", ["perm", "ov"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_gather_configs_compile_without_spills_or_serialized_wgmmas(dtype, kind):
    sp = gather_space()
    for cfg in PERM_CONFIGS if kind == "perm" else OV_CONFIGS:
        rep, sass = nvcc_sm90a(render(sp, sp.normalize(cfg, dtype), dtype), sass=True)
        assert not sass or ("HGMMA" in sass and "UTMALDG" in sass), cfg
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)
        assert "C751" not in rep, (cfg, rep)


def test_constraints_sm90_n_and_shared_memory():
    sp = space()
    kg = sp.known_good[0]
    env = problem_env(1024, 1024, 512, 50_000, "fp16")
    assert sp.check(kg, env, DEFAULT_LIMITS) is None
    assert sp.check(kg, {**env, "sm": 80}, DEFAULT_LIMITS) is not None
    for n in (1, 7, 127):
        assert not list(sp.feasible("fp16", problem_env(1024, 1024, n, 50_000, "fp16"), DEFAULT_LIMITS))
    assert not list(sp.feasible("fp32", env, DEFAULT_LIMITS))
    h = host()
    for cfg in sp.feasible("fp16", env, DEFAULT_LIMITS):
        assert h.shared_bytes(cfg) <= DEFAULT_LIMITS["max_dyn_smem_bytes"]


def test_geometry_workspace_and_tensor_map():
    h = host()
    cfg = dict(bn=128, kc=2, wg=2, stages=4, splitk=4)
    kern = type("K", (), {"config": cfg, "a": type("A", (), {"shape": (4096, 4096)})()})()
    assert h.geometry(kern, 128) == ((32 * 4 * 1,), (288,))
    assert h.geometry(kern, 300) == ((32 * 4 * 3,), (288,))
    kern.config = {**cfg, "mc": 2, "wg": 1}  # 64 row blocks, a multiple of 2
    assert h.geometry(kern, 128) == ((64 * 4,), (160,))
    kern.a.shape = (4096 - 64, 4096)  # 63 row blocks: 64 launched (the stream has 64)
    assert h.geometry(kern, 128) == ((64 * 4,), (160,)) and h.dims(4096 - 64, 4096, 2, 1) == (64, 64)
    assert h.tensor_map_args(256, 4096, kern.config, 0)["box"] == (64, 32)
    assert h.workspace_shape(cfg, 32, 1) == (32 * 4 * 256 * 64, 32)
    t = h.tensor_map_args(256, 4096, cfg, 0x1000)
    assert t["box"] == (64, 64) and t["dims"] == (256, 4096) and t["strides"] == (512,)


test_launch_matches_the_kernel_signature = launch_signature_test(FAMILY)


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_known_goods_compile_for_sm90a_without_spills_or_serialized_wgmmas(dtype):
    for kg in space().known_good:
        rep, sass = nvcc_sm90a(render(space(), kg, dtype), sass=True)
        assert "C75" not in rep, (kg, rep)  # e.g. C7513: wgmma serialized (a chunk's registers reused too early)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (kg, rep)
        if sass:
            assert "HGMMA.SP" in sass


def test_o32_diagnostic_stores_fp32_c_and_leaves_every_config_as_it_was():
    """o32 (bench/drafts/tf32_via_fp16.py only, never a config): C stored as fp32 by one 8-byte store of a thread's
    column pair, in the one-tile and the persistent epilogue, no staged 16-bit store; kn and split-K 1 only; a config
    renders without it exactly as with o32 0, and the o32 kernels build without spills."""
    from sparse_autotune.core.render import _env
    tpl = _env().from_string((Path(__file__).resolve().parents[2] / "variants" / "tc_sp24.cu.j2").read_text())
    for cfg in (dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, l2=25),
                dict(bn=64, kc=4, wg=2, stages=6, splitk=1, pw=1, pt=1, l2=100)):
        c = space().normalize(cfg, "fp16")
        plain = render(space(), c, "fp16")
        assert tpl.render(dtype="fp16", layout="kn", diag=0, o32=0, **c) == tpl.render(dtype="fp16", layout="kn", diag=0, **c)
        src = tpl.render(dtype="fp16", layout="kn", diag=0, o32=1, **c)
        assert "make_float2(acc[4 * jb], acc[4 * jb + 1])" in src and "make_float2" not in plain
        assert "st.global.v4.u32" in plain and "st.global.v4.u32" not in src  # the staged 16-bit store
        assert "pack2f(acc[4 * jb], acc[4 * jb + 1])" not in src.split("spmm_kernel(")[1]
        rep, _ = nvcc_sm90a(src)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)
    bad = space().normalize(dict(bn=128, kc=2, wg=2, stages=4, splitk=2), "fp16")
    assert "#error" in tpl.render(dtype="fp16", layout="kn", diag=0, o32=1, **bad)
    assert "#error" in tpl.render(dtype="fp16", layout="nk", diag=0, o32=1, **space().normalize(NK_CONFIGS[0], "fp16"))


AR_CONFIGS = [dict(bn=128, kc=2, wg=2, stages=6, splitk=1, ar=4), dict(bn=64, kc=4, wg=2, stages=6, splitk=2, ar=4),
              dict(bn=128, kc=1, wg=2, stages=8, splitk=1, ar=4), dict(bn=256, kc=2, wg=1, stages=5, splitk=1, ar=4),
              dict(bn=128, kc=2, wg=2, stages=6, splitk=1, mc=2, ar=4)]


def test_ar_loads_a_from_global_memory_into_a_ring_and_stages_b_only():
    """ar > 0: no bulk copy of A tiles and no shared loads of A; the consumers' ld.global ring of ar register sets
    (each released set refilled with the chunk ar - 1 ahead); a stage holds B's slice only."""
    h = host()
    base = dict(bn=128, kc=2, wg=2, stages=6, splitk=1)
    s0, s4 = render(space(), {**base, "ar": 0}, "fp16"), render(space(), {**base, "ar": 4}, "fp16")
    assert "bulk_g2s(abase" in s0 and "lds128(" in s0 and "ldg128(" not in s0
    assert "bulk_g2s(abase" not in s4 and "lds128(af" not in s4 and "ldg128(af[3][kk]" in s4
    assert "const int nx = i + 3 + AR - 1;" in s4 and "#define AST 0" in s4
    assert h.stage_bytes({**base, "ar": 4}) == 64 * 2 * 128 and h.stage_bytes({**base, "ar": 0}) == 64 * 2 * 128 + 2 * 2 * 2304
    old = render(space(), base, "fp16")  # a config stored before ar existed: ar 0 but for the header's field
    assert s0.split("\n", 1)[0].endswith(" ar=0") and old.split("\n", 1)[1] == s0.split("\n", 1)[1]


def test_c_goes_through_shared_memory_where_the_stages_hold_the_tile():
    """C staged by each warp (16 rows at a padded pitch) and stored 16 bytes a lane where stages x stage bytes hold
    4 wg warps x 16 x (2 bn + 16) bytes; else (and for a C not 16-byte aligned) the direct 32-bit stores."""
    h = host()
    for cfg in [dict(bn=128, kc=2, wg=2, stages=6, splitk=1), dict(bn=128, kc=1, wg=2, stages=2, splitk=2),
                dict(bn=256, kc=1, wg=1, stages=2, splitk=1), dict(bn=64, kc=1, wg=1, stages=2, splitk=1, ar=4)]:
        src = render(space(), cfg, "fp16")
        fits = cfg["stages"] * h.stage_bytes(cfg) >= 4 * cfg["wg"] * 16 * (2 * cfg["bn"] + 16)
        assert ("st.global.v4.u32" in src) == fits, cfg
        assert "*reinterpret_cast<unsigned int*>(C + (size_t)row0 * N + col)" in src  # the fallback is always there
    assert "st.global.v4.u32" not in render(space(), dict(bn=128, kc=1, wg=2, stages=2, splitk=2), "fp16")
    # two warpgroups without split-K's block barrier: the staging waits for both (the other's wgmmas read the stages)
    assert "bar.sync 1" in render(space(), dict(bn=128, kc=2, wg=2, stages=6, splitk=1), "fp16")
    assert "bar.sync 1" not in render(space(), dict(bn=128, kc=2, wg=1, stages=6, splitk=1), "fp16")


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_ar_configs_compile_without_spills_or_serialized_wgmmas(dtype):
    for cfg in AR_CONFIGS:
        assert space().check(cfg, problem_env(1024, 4096, 512, 400_000, dtype), DEFAULT_LIMITS) is None, cfg
        rep, _ = nvcc_sm90a(render(space(), cfg, dtype))
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)


# ---- GPU ----

def _gpu_configs(n, dtype):
    sp, fam = space(), get_family(FAMILY)
    env = problem_env(150, 1000, n, 30_000, dtype)
    out = []
    cands = list(sp.known_good) + [dict(bn=64, kc=1, wg=1, stages=2, splitk=1), dict(bn=256, kc=4, wg=1, stages=2, splitk=3),
                                   dict(bn=128, kc=4, wg=1, stages=3, splitk=8), dict(bn=64, kc=2, wg=2, stages=8, splitk=6),
                                   dict(bn=128, kc=2, wg=2, stages=4, splitk=1, mc=2), dict(bn=64, kc=4, wg=1, stages=3, splitk=2, mc=2),
                                   dict(bn=256, kc=1, wg=1, stages=4, splitk=1, mc=2),
                                   dict(bn=128, kc=2, wg=2, stages=6, splitk=1, ar=4), dict(bn=64, kc=1, wg=1, stages=4, splitk=3, ar=4),
                                   dict(bn=256, kc=2, wg=1, stages=3, splitk=1, ar=4), dict(bn=128, kc=2, wg=2, stages=4, splitk=2, mc=2, ar=4),
                                   dict(bn=128, kc=1, wg=2, stages=2, splitk=2),  # C stored directly (too few stages)
                                   dict(bn=256, kc=2, wg=2, stages=4, splitk=1, pw=1), dict(bn=256, kc=1, wg=2, stages=6, splitk=2, pw=1),
                                   dict(bn=256, kc=2, wg=2, stages=4, splitk=1, mc=2, pw=1),
                                   dict(bn=128, kc=2, wg=2, stages=6, splitk=1, pt=1), dict(bn=64, kc=1, wg=1, stages=4, splitk=3, pt=1),
                                   dict(bn=256, kc=2, wg=2, stages=3, splitk=2, pw=1, pt=1),
                                   dict(bn=128, kc=2, wg=2, stages=6, splitk=1, l2=100), dict(bn=64, kc=1, wg=1, stages=4, splitk=3, l2=25),
                                   dict(bn=128, kc=2, wg=2, stages=6, splitk=1, pt=1, l2=100),
                                   dict(bn=128, kc=1, wg=2, stages=2, splitk=2, l2=100),  # l2, C stored directly
                                   # rs: the rows' first rs residual entries staged by cp.async under the loop (split 0 only), added after it
                                   dict(bn=64, kc=4, wg=1, stages=6, splitk=1, rs=8), dict(bn=64, kc=2, wg=2, stages=4, splitk=3, rs=4),
                                   dict(bn=128, kc=2, wg=2, stages=2, splitk=1, l2=12, rs=4), dict(bn=256, kc=1, wg=1, stages=4, splitk=2, rs=4),
                                   dict(bn=64, kc=1, wg=1, stages=3, splitk=1, rs=16), dict(bn=64, kc=2, wg=2, stages=4, splitk=2, mc=2, rs=4),
                                   dict(bn=128, kc=2, wg=2, stages=4, splitk=2, ar=4, rs=4), dict(bn=128, kc=1, wg=2, stages=2, splitk=2, rs=4),
                                   # rq: the residual streamed through the loop (a ring of rq rounds a warp)
                                   dict(bn=64, kc=4, wg=1, stages=6, splitk=1, rq=4), dict(bn=64, kc=1, wg=1, stages=4, splitk=3, rq=2),
                                   dict(bn=64, kc=2, wg=2, stages=4, splitk=1, l2=12, rq=2), dict(bn=128, kc=2, wg=1, stages=4, splitk=2, rq=2),
                                   dict(bn=64, kc=2, wg=1, stages=4, splitk=2, mc=2, rq=4), dict(bn=64, kc=2, wg=1, stages=6, splitk=1, ar=4, rq=4),
                                   dict(bn=64, kc=1, wg=2, stages=2, splitk=2, rq=2)]
    for cfg in cands:
        cfg = fam.adapt(cfg, dtype, env, DEFAULT_LIMITS)
        if cfg is None:
            continue
        for splitk in dict.fromkeys((cfg["splitk"], 1)):
            c = {**cfg, "splitk": splitk}
            if sp.check(c, env, DEFAULT_LIMITS) is None and c not in out:
                out.append(c)
    return out


def _check(cases, dtype, n, cfgs):
    """tf32 (ts) at its own tolerance (core.problem.TOLERANCE: 2e-3, what the tuner verifies it at), not bf16's."""
    from sparse_autotune.core.problem import TOLERANCE
    tol = TOLERANCE["tf32"] if dtype == "tf32" else None
    return check_matrices_on_gpu(FAMILY, cases, dtype, n, lambda name: cfgs, tol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8, 64, 136, 264])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_correct_on_edge_cases(dtype, n):
    """Through the project's launch path (build_kernel with sm_90a, Kernel.__call__): poisoned C, fresh random B,
    float64 reference; each kernel twice. N = 136 and 264: a last column tile partly past N (boxes past N not asked
    for); the residual on the full tile, the dense row and d 0.7."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    cases = adversarial()
    cases["uniform_300x2000_d0.1"] = random_matrix(300, 2000, 0.1, "uniform", 3)
    cases["powerlaw_300x2000_d0.05"] = random_matrix(300, 2000, 0.05, "powerlaw", 3)  # l2's heavy rows
    cfgs = _gpu_configs(n, dtype)
    assert len(cfgs) >= 4
    assert _check(cases, dtype, n, cfgs) == 2 * len(cfgs) * len(cases)


# rw (session 60, a render knob not yet in the space): the residual after the loop walked by both of a thread's rows at
# once, rw entries of each a batch; configs of the dl records' shapes (pw / pt / l2 / ar / split-K / mc)
RW_CONFIGS = [dict(bn=64, kc=4, wg=2, stages=6, splitk=1, pw=1, pt=1, l2=100), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, l2=25),
              dict(bn=64, kc=1, wg=2, stages=8, splitk=1, l2=12), dict(bn=128, kc=1, wg=1, stages=6, splitk=1, ar=4),
              dict(bn=64, kc=2, wg=2, stages=4, splitk=3), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, mc=2),
              dict(bn=64, kc=1, wg=1, stages=4, splitk=3, pt=1)]


def _tpl():
    from sparse_autotune.core.render import _env
    return _env().from_string((Path(__file__).resolve().parents[2] / "variants" / "tc_sp24.cu.j2").read_text())


def test_rw_renders_the_batched_walk_in_kn_only_and_rw_0_as_before():
    """rw 0 renders byte for byte what the template renders without rw, but for the header; rw 1 / 2 replace the
    entry-at-a-time walk by the batched one (both rows' columns, then their B words, the next batch's columns under
    them) in kn at rs 0, rq 0, bn <= 128; nk, rs, rq and bn 256 keep the walk (only the header names rw)."""
    tpl = _tpl()
    for cfg in RW_CONFIGS[:3]:
        c = space().normalize(cfg, "fp16")
        assert c["rw"] == 0  # the space's default
        plain = tpl.render(dtype="fp16", layout="kn", diag=0, **c)
        bare = tpl.render(dtype="fp16", layout="kn", diag=0, **{k: v for k, v in c.items() if k != "rw"})
        assert bare.split("\n", 1)[1] == plain.split("\n", 1)[1] and " rw=0" in plain.split("\n", 1)[0]  # the header names rw
        assert plain == render(space(), c, "fp16")
        for rw in (1, 2):
            src = tpl.render(dtype="fp16", layout="kn", diag=0, **dict(c, rw=rw))
            assert src == render(space(), dict(c, rw=rw), "fp16")
            assert f" rw={rw}" in src.split("\n", 1)[0] and f"int kr[2][{rw}];" in src and "const int nb = max(hi0 - rlo0, hi1 - rlo1);" in src
            assert "const float v = lo2f(__ldg(rval + e));" in plain and "const float v = lo2f(__ldg(rval + e));" not in src
            assert "#error" not in src
    for cfg, layout in ((dict(RW_CONFIGS[2], rs=8), "kn"), (dict(RW_CONFIGS[4], rq=2), "kn"),
                        (dict(bn=256, kc=2, wg=2, stages=4, splitk=1, pw=1), "kn"), (dict(bn=64, kc=1, wg=2, stages=8, splitk=1), "nk")):
        c = space().normalize(cfg, "fp16")
        a, b = (tpl.render(dtype="fp16", layout=layout, diag=0, **dict(c, rw=rw)) for rw in (0, 1))
        assert a.split("\n", 1)[1] == b.split("\n", 1)[1] and "int kr[2][" not in b, (cfg, layout)


@pytest.mark.heavy
def test_rw_builds_without_spills():
    """The rw 1 / 2 walks of the dl records' configs build for sm_90a without spills (session 60: 96-188 registers
    where rw 0 takes 68-168; none spills)."""
    tpl = _tpl()
    for dtype in ("fp16", "tf32"):
        for cfg in RW_CONFIGS[:4]:
            for rw in (1, 2):
                rep, _ = nvcc_sm90a(tpl.render(dtype=dtype, layout="kn", diag=0, **dict(space().normalize(cfg, dtype), rw=rw)))
                assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (dtype, cfg, rw, rep)


def _knob_twins_on_gpu(knob: str, values, dtype: str, cases: dict, ns, cfgs) -> int:
    """Each config of `cfgs` (adapted to each N of `ns`) built through the launch path at each of the space parameter's
    `values` (every twin feasible), on each matrix of `cases` (values rounded to the dtype) and one fresh random B:
    every form within the dtype's tolerance of the float64 reference (TF32's 2e-3 for tf32), and C the same bit for bit
    in all forms. Returns the (matrix, N, config) runs checked."""
    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.core.problem import DTYPES, TOLERANCE, host_values, storage
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    tol = TOLERANCE["tf32"] if dtype == "tf32" else (2e-3 if dtype == "fp16" else 1.6e-2)
    runs = 0
    for name, a in cases.items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data.astype(np.float32), DTYPES[dtype])
        dev, a64 = DeviceCSR(a, dtype), csp.csr_matrix(a.astype(np.float64))
        for n in ns:
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            bh = np.random.default_rng(runs).standard_normal((a.shape[1], n)).astype(np.float32)
            b = cp.asarray(storage(host_values(bh, DTYPES[dtype]), dtype))
            ref = reference(a64, b)
            for cfg in cfgs:
                cfg = get_family(FAMILY).adapt(space().normalize(cfg, dtype), dtype, env, DEFAULT_LIMITS)
                if cfg is None or space().check(cfg, env, DEFAULT_LIMITS) is not None:
                    continue
                outs = []
                for v in values:
                    twin = dict(cfg, **{knob: v})
                    assert space().check(twin, env, DEFAULT_LIMITS) is None, (cfg, knob, v)
                    k = build_kernel(dev, FAMILY, twin, dtype)
                    c = cp.empty((a.shape[0], n), dtype=b.dtype)
                    err = check(lambda: k(b, c), c, ref, dtype)
                    assert err <= tol, (name, n, cfg, knob, v, err)
                    outs.append(cp.asnumpy(c).view(np.uint32 if c.dtype == cp.float32 else np.uint16))
                assert all(np.array_equal(outs[0], o) for o in outs[1:]), (name, n, cfg, knob)
                runs += 1
    return runs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "tf32"])
def test_rw_walk_gives_c_bit_for_bit_as_rw_0(dtype):
    """Through the launch path (build_kernel of each config at rw 0, 1 and 2): each accumulator takes the
    same residual entries in the same order, so C is the same bit for bit; and within the tolerance of the float64
    reference. Matrices with residuals: the adversarial ones (a dense row, groups of 3 and 4, 70 %), uniform d 0.1 and
    0.2, powerlaw d 0.05 (l2's heavy rows); N = 8 and 136 (a last tile partly past N)."""
    cases = adversarial()
    cases["uniform_300x2000_d0.1"] = random_matrix(300, 2000, 0.1, "uniform", 3)
    cases["uniform_200x1000_d0.2"] = random_matrix(200, 1000, 0.2, "uniform", 4)
    cases["powerlaw_300x2000_d0.05"] = random_matrix(300, 2000, 0.05, "powerlaw", 3)
    runs = _knob_twins_on_gpu("rw", (0, 1, 2), dtype, cases, (8, 136), RW_CONFIGS)
    assert runs >= 30, runs


GATHER_GPU_CONFIGS = [*PERM_CONFIGS, dict(bn=128, kc=1, wg=2, stages=2, splitk=2, perm=1),
                      dict(bn=64, kc=4, wg=1, stages=6, splitk=1, rs=8, perm=1), dict(bn=64, kc=2, wg=1, stages=4, splitk=2, rq=2, perm=1),
                      dict(bn=128, kc=2, wg=2, stages=6, splitk=1, pt=1, l2=100, perm=1),
                      *OV_CONFIGS, dict(bn=64, kc=1, wg=1, stages=2, splitk=3, ov=2), dict(bn=128, kc=1, wg=2, stages=2, splitk=4, ov=4),
                      dict(bn=64, kc=2, wg=1, stages=4, splitk=2, pt=1, ov=1), dict(bn=64, kc=4, wg=1, stages=6, splitk=1, rs=8, ov=1)]


# the ring's tile runs for the protocol model: (chunks, gathered chunks at the end) a tile, the ring running on across
# tiles (pt) and across a tile without gathered chunks (split-K's other splits)
_MODEL_TILES = ([(7, 2)], [(5, 1), (6, 2), (3, 3)], [(12, 1)] * 3, [(4, 0), (9, 4), (2, 1)], [(1, 1)] * 5)


@pytest.mark.heavy  # (the gathers are off in the shipped space; the model's own test below stays in the default run)
def test_barrier_model_finds_every_gathering_form_safe():
    """Each gathering config of the tests (perm 1 / 2, ov 1-8 by row boxes or cp.async, with pt, pw, ar, l2, rs, rq,
    split-K), its producer step as rendered, run by tests/families/barrier_model.py (CPU model of the mbarrier rules)
    for 3 producer threads and a consumer over rings of 2-4 stages and the tiles above, 12 random schedules each: no
    stage written before its previous chunk is released, no bytes on a phase not theirs, no chunk read incomplete, no
    deadlock. And the steps are what the kernel needs: a thread's gathered copies only after barrier 3."""
    sp = gather_space()
    forms = set()
    for cfg in GATHER_GPU_CONFIGS:
        c = sp.normalize(cfg, "fp16")
        ops, gth = producer_ops(render(sp, c, "fp16"))
        kinds = [op for op, _, _ in ops]
        copies = [i for i, op in enumerate(kinds) if op in ("row_box", "cp_copy")]
        assert copies and "bar" in kinds[:copies[0]], (cfg, ops)
        assert ("a_copy" in kinds) == (c.get("ar", 0) == 0), (cfg, ops)
        forms.add((tuple(ops), gth))
    assert len(forms) >= 3  # perm, ov by row boxes, ov by cp.async (ar's forms without A's copy)
    for ops, gth in sorted(forms):
        for stages in (2, 3, 4):
            for tiles in _MODEL_TILES:
                run = [(n, n) for n, _ in tiles] if gth == "true" else tiles
                for seed in range(12):
                    assert simulate(list(ops), stages, run, seed=seed) == [], (ops, stages, run, seed)


def test_barrier_model_catches_an_early_write_a_late_arrival_and_a_deadlock():
    """The model can fail: session 47's ovc step (the cp.async pieces issued right after each thread's own wait, whose
    parity passes a whole ring turn early for threads that skipped K's chunks) writes a stage still in use; the row
    boxes without the barrier after lead's wait the same; cp.async arrivals raised after lead's (no barrier between)
    let a phase complete without them; a barrier lead never reaches deadlocks."""
    lead_a = [("arrive_tx", "(lead)", "a_if_gth"), ("a_copy", "(lead)", ""), ("b_box", "(lead) and (not gth)", "")]
    ovc_47 = [("wait_empty", "(lead or gth)", ""), ("cp_copy", "(gth)", ""), ("cp_arrive", "(gth)", ""),
              ("bar", "(gth)", ""), *lead_a]
    found = [simulate(ovc_47, 2, [(7, 1)], seed=s) for s in range(10)]
    assert all(any("was not released" in p for p in f) for f in found), found
    rows_no_bar = [("wait_empty", "(lead or gth)", ""), ("arrive_tx", "(lead)", "all"), ("a_copy", "(lead)", ""),
                   ("b_box", "(lead) and (not gth)", ""), ("row_box", "(gth)", "")]
    assert any(any("was not released" in p for p in simulate(rows_no_bar, 2, [(9, 2)], seed=s)) for s in range(20))
    late = [("wait_empty", "(lead or gth)", ""), ("bar", "(gth)", ""), *lead_a, ("cp_copy", "(gth)", ""),
            ("cp_arrive", "(gth)", "")]
    assert any(any("read chunk" in p or "fell on" in p for p in simulate(late, 3, [(6, 6)], seed=s)) for s in range(40))
    stuck = [("wait_empty", "(lead or gth)", ""), ("bar", "(gth) and (not lead)", ""), ("arrive_tx", "(lead)", "all"),
             ("a_copy", "(lead)", ""), ("row_box", "(gth)", "")]
    assert simulate(stuck, 2, [(3, 1)])[0].startswith("deadlock")


def _gather_configs(n, dtype, m=150, k=1000, nnz=15_000):
    sp = gather_space()
    env = problem_env(m, k, n, nnz, dtype)
    out = []
    for cfg in GATHER_GPU_CONFIGS:
        c = sp.normalize({**cfg, "bn": min(cfg["bn"], max(64, 1 << (max(1, n) - 1).bit_length()))}, dtype)
        if c is not None and sp.check(c, env, DEFAULT_LIMITS) is None and c not in out:
            out.append(c)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8, 136])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_gather_correct_on_edge_cases(dtype, n):
    """perm and ov (B's rows gathered by one-row TMA boxes of a producer warpgroup) on the edge cases: empty blocks
    (no overflow position used: every box a row of zeros' row 0), the full tile and d 0.7 (more residual than the
    overflow chunks take), a last column tile partly past N; each kernel twice (split-K's counters and the ring's
    phases across launches)."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    cases = adversarial()
    cases["uniform_300x2000_d0.1"] = random_matrix(300, 2000, 0.1, "uniform", 3)
    cases["powerlaw_300x2000_d0.05"] = random_matrix(300, 2000, 0.05, "powerlaw", 3)
    cfgs = _gather_configs(n, dtype)
    assert len(cfgs) >= 10 and any(c.get("ov") for c in cfgs) and any(c.get("perm") for c in cfgs)
    assert _check(cases, dtype, n, cfgs) == 2 * len(cfgs) * len(cases)


@pytest.mark.gpu
@pytest.mark.parametrize("ovc", [0, 1])
def test_ov_correct_on_dl_layers_where_it_takes_the_residual(ovc):
    """The dl suite's uniform d 0.1 layers whose residual the overflow chunks take (512x2048 at kc 4, 768x3072 at
    l2 12 with two chunks), N = 1024 / 512; the row boxes (ovc 0) and the cp.async pieces (ovc 1) apart, so that a hang
    names its protocol."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    sp = gather_space()
    checked = 0
    for (m, k, n), cfgs in {(512, 2048, 1024): [dict(bn=64, kc=4, wg=1, stages=6, splitk=1, ov=1),
                                                dict(bn=128, kc=2, wg=2, stages=6, splitk=2, ov=2)],
                            (768, 3072, 512): [dict(bn=64, kc=4, wg=1, stages=6, splitk=1, l2=12, ov=2),
                                               dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, pt=1, l2=25, ov=2)]}.items():
        a = random_matrix(m, k, 0.1, "uniform", 0)
        cs = [sp.normalize(dict(c, ovc=ovc), "fp16") for c in cfgs]
        assert all(sp.check(c, problem_env(m, k, n, a.nnz, "fp16"), DEFAULT_LIMITS) is None for c in cs)
        checked += _check({f"u{m}x{k}": a}, "fp16", n, cs)
    assert checked == 8


@pytest.mark.gpu
@pytest.mark.parametrize("density", [0.1, 0.3])
def test_perm_correct_at_4096_n128(density):
    """A layer of the llm suite with each row block's own column order (perm 1; d 0.3 only with it), its residual
    measured nearly empty."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    a = random_matrix(4096, 4096, density, "uniform", 0)
    env = problem_env(4096, 4096, 128, a.nnz, "fp16")
    sp = gather_space()
    cfgs = [c for c in (sp.normalize(c, "fp16") for c in PERM_CONFIGS[:3] + [dict(bn=64, kc=4, wg=1, stages=6, splitk=4, perm=1)])
            if sp.check(c, env, DEFAULT_LIMITS) is None]
    assert len(cfgs) >= 3 and _check({"u4096": a}, "fp16", 128, cfgs) == 2 * len(cfgs)


@pytest.mark.gpu
@pytest.mark.parametrize("density", [0.05, 0.2])
def test_correct_at_4096_n128(density):
    """A layer of the llm suite at its known-good configs (split-K 4 over 64 chunks)."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    a = random_matrix(4096, 4096, density, "uniform", 0)
    cfgs = [kg for kg in space().known_good if space().check(kg, problem_env(4096, 4096, 128, a.nnz, "fp16"),
                                                              DEFAULT_LIMITS) is None]
    assert len(cfgs) >= 3 and _check({"u4096": a}, "fp16", 128, cfgs) == 2 * len(cfgs)


def test_a_by_value_map_is_encoded_once_per_timing_buffer():
    """The tuner's estimate launches once per B buffer (up to n_buffers' cap) after a warm-up pass: BParam keeps as many
    addresses, so the second pass encodes nothing (with 8 kept, each launch re-encoded the map on the host and the
    estimate was 5-7x the kernel's time)."""
    import inspect

    from sparse_autotune.device.kernel import BParam
    from sparse_autotune.device.timing import n_buffers
    cap = inspect.signature(n_buffers).parameters["cap"].default
    assert BParam.KEEP >= cap and n_buffers(1, 1 << 40) == cap
    made = []
    bp = BParam(128, lambda p: (made.append(p), bytes(128))[1])
    for _ in range(2):
        for p in range(1, cap + 1):
            bp.update(p)
    assert made == list(range(1, cap + 1))


def test_diag_cut_outs_leave_the_kernel_unchanged_at_0():
    """bench/diag_wgmma.py --family tc_sp24: diag 0 renders the kernel byte for byte; 5 issues no copy, 6 neither
    copies nor waits (the bare wgmma loop); 1 issues no wgmma."""
    cfg = dict(bn=128, kc=2, wg=2, stages=6, splitk=1, mc=1)
    base = render(space(), cfg, "fp16")
    assert render(space(), cfg, "fp16", {"diag": 0}) == base
    s1, s5, s6 = (render(space(), cfg, "fp16", {"diag": d}) for d in (1, 5, 6))
    assert "kk < 0; ++kk) wgmma_sp(" in s1 and "kk < KCK; ++kk) wgmma_sp(" in base
    assert "bulk_g2s(abase" not in s5 and "q < 0; ++q)" in s5 and "mbar_wait(full + 8 * st, ph);" in s5
    assert "mbar_wait(full + 8 * st, ph);" not in s6 and "i < 0; ++i) {" in s6 and "if (0 &&" in s6


def test_diag_9_stamps_every_phase_into_one_more_argument():
    cfg = dict(bn=128, kc=2, wg=2, stages=6, splitk=2, mc=1)
    s9 = render(space(), cfg, "fp16", {"diag": 9})
    assert "const __grid_constant__ TensorMap128 tmap, unsigned long long* __restrict__ tsb)" in s9
    assert all(f"stamp(tsb, {k});" in s9 for k in range(7))
    assert "tsb" not in render(space(), cfg, "fp16")


def test_diag_timeline_phases_from_synthetic_stamps_resolve_below_the_timer_tick():
    """bench/diag_wgmma.py phases(), on synthetic stamps (no GPU): %globaltimer quantized to 256 ns ticks gives the
    phases in whole ticks; clock64 (here 1.8 GHz) gives them to the cycle, and the clock rate is recovered from the
    blocks' long spans."""
    from scripts import load_script
    tool = load_script("bench/diag_wgmma.py", "diag_wgmma")
    true = {"entry": 0.0, "patched": 0.40, "first_in": 1.30, "consumed": 13.30, "partial": 13.35, "stored": 13.95,
            "produced": 12.9}  # us from each block's entry
    x = np.zeros((96, 16), dtype=np.int64)
    for b in range(96):
        base_ns = 1_000_000 + 37 * b
        for i, name in enumerate(tool.PHASES):
            ns = base_ns + true[name] * 1e3
            x[b, i] = int(ns // 256) * 256  # the H200's globaltimer ticks
            x[b, 8 + i] = int(5_000_000 + 13 * b + true[name] * 1e3 * 1.8)
        x[b, 7] = b
    summary, rows = tool.phases(x)
    assert abs(summary["ghz"] - 1.8) < 0.05
    assert abs(summary["fill_ck"] - 1.30) < 0.03 and abs(summary["reduce_ck"] - 0.60) < 0.015  # the rate: ~1 % off
    assert abs(summary["epilogue_ck"] - 0.05) < 0.005 and abs(summary["loop_ck"] - 12.0) < 0.25
    assert all(abs(v / 0.256 - round(v / 0.256)) < 1e-6 for v in (summary["fill"], summary["reduce"]))
    assert len(rows) == 96 and rows[5]["sm"] == 5


PW_CONFIGS = [dict(bn=256, kc=2, wg=2, stages=4, splitk=1, pw=1), dict(bn=256, kc=1, wg=2, stages=6, splitk=2, pw=1),
              dict(bn=256, kc=2, wg=2, stages=4, splitk=1, mc=2, pw=1), dict(bn=128, kc=2, wg=2, stages=6, splitk=1, pw=1)]


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_pw_gives_the_consumers_setmaxnreg_registers_and_bn256_wg2_compiles_unserialized(dtype):
    """pw 1: a producer warpgroup (setmaxnreg.dec 40, returns before the consumers' code: a join would hold both sides
    to 40 registers), consumers setmaxnreg.inc 232, split-K's block barriers among the consumers only; bn 256 at wg 2
    (serialized at pw 0: C7512) builds without spills or serialization."""
    h = host()
    assert h.threads(dict(wg=2, pw=1)) == 384 and h.threads(dict(wg=2)) == 288
    for cfg in PW_CONFIGS:
        assert space().check(cfg, problem_env(1024, 4096, 512, 400_000, dtype), DEFAULT_LIMITS) is None, cfg
        src = render(space(), cfg, dtype)
        assert "setmaxnreg.dec.sync.aligned.u32 40;" in src and "setmaxnreg.inc.sync.aligned.u32 232;" in src
        assert ("__syncthreads();\n    volatile int* s_last" in src) is False
        rep, _ = nvcc_sm90a(src)
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)
    assert space().check(dict(bn=256, kc=2, wg=2, stages=4, splitk=1, pw=0),
                         problem_env(1024, 4096, 512, 400_000, dtype), DEFAULT_LIMITS) is not None


PT_CONFIGS = [dict(bn=128, kc=2, wg=2, stages=6, splitk=1, pt=1), dict(bn=64, kc=1, wg=2, stages=8, splitk=1, pt=1),
              dict(bn=64, kc=4, wg=1, stages=6, splitk=1, pt=1), dict(bn=256, kc=2, wg=2, stages=3, splitk=1, pw=1, pt=1)]


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_pt_is_a_persistent_grid_whose_ring_runs_across_tiles(dtype):
    """pt 1: grid = min(tiles, SMs) blocks looping over the tiles; the producer returns after its last tile, the
    consumers release each tile's last stage, no split-K (measured slower, session 37), C is staged in its
    own shared memory (after the mbarriers); builds without spills or serialized wgmmas."""
    h = host()
    kern = type("K", (), {})()
    kern.a = type("A", (), {"shape": (3072, 768)})()
    kern.config = dict(bn=128, kc=2, wg=2, stages=6, splitk=1, pt=1)
    assert h.geometry(kern, 2048) == ((min(24 * 16, h.sm_count()),), (288,))
    kern.config = dict(kern.config, pt=0)
    assert h.geometry(kern, 2048) == ((24 * 16,), (288,))
    base = dict(bn=128, kc=2, wg=2, stages=6, splitk=1)
    assert h.shared_bytes({**base, "pt": 1}) == h.shared_bytes(base) + 16 + 8 * 16 * (2 * 128 + 16)
    for cfg in PT_CONFIGS:
        assert space().check(cfg, problem_env(3072, 768, 2048, 120_000, dtype), DEFAULT_LIMITS) is None, cfg
        src = render(space(), cfg, dtype)
        assert "for (int tl = blockIdx.x; tl < ntot; tl += gridDim.x)" in src and "int bid = blockIdx.x;" not in src
        assert "if (nch > 0) {  // the tile's last stage back to the producer" in src
        assert "bar.sync 1, %0;" not in src and "atomicAdd(counters" not in src  # no split-K at pt 1
        rep, _ = nvcc_sm90a(src)
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)
    assert space().check(dict(base, pt=1, mc=2), problem_env(3072, 768, 2048, 120_000, dtype), DEFAULT_LIMITS)
    # measured 1.1-4.6x slower with split-K (session 37): the space keeps pt to one split
    assert space().check(dict(base, pt=1, splitk=2), problem_env(3072, 768, 2048, 120_000, dtype), DEFAULT_LIMITS)


def _rebuild(a2, orow, m):
    """A from its slots (variants/tc_sp24.py slots): each slot's row added to C's row orow (-2: the slot 8 above's)."""
    d2, out = a2.toarray(), np.zeros((m, a2.shape[1]), dtype=np.float64)
    for s_, o in enumerate(orow):
        if o >= 0:
            out[o] += d2[s_]
        elif o == -2:
            assert s_ % 16 >= 8 and orow[s_ - 8] >= 0  # a second layer sits at g + 8 of its first layer's g
            out[orow[s_ - 8]] += d2[s_]
    return out


@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize("l2", [6, 25, 100])
def test_l2_slots_cover_a_once_and_leave_heavy_rows_no_residual(l2, windowed):
    """Every row of A lands in one slot (two for a heavy row: g and g + 8 of one warp's 16, its first two nonzeros a
    group, then the rest), each C row once; a heavy row's slots leave nothing to the residual; the light rows keep
    theirs; at most l2 % of the rows heavy, none lighter than a light one, none without residual; Ms a multiple of 16;
    on random, powerlaw and the adversarial patterns. windowed (nk): each warp's rows one run of consecutive rows, the
    runs in order, at most one slot a warp (but the last) left empty."""
    h = host()
    cases = adversarial()
    cases["powerlaw_768x3072_d0.02"] = random_matrix(768, 3072, 0.02, "powerlaw", 0)
    cases["uniform_200x300_d0.3"] = random_matrix(200, 300, 0.3, "uniform", 1)
    for name, a in cases.items():
        a = sps.csr_matrix(a)
        m = a.shape[0]
        a2, orow = h.slots(a, l2, windowed=windowed)
        assert a2.shape[0] % 16 == 0 and len(orow) == a2.shape[0], name
        if windowed:
            runs = [w[w >= 0] for w in orow.reshape(-1, 16)]
            assert all(len(r) and np.array_equal(np.sort(r), np.arange(r.min(), r.min() + len(r))) for r in runs if m), name
            assert np.array_equal(np.concatenate([np.sort(r) for r in runs]), np.arange(m)), name
            assert all((w == -1).sum() <= 1 for w in orow.reshape(-1, 16)[:-1]), name
            for block in (64, 128):  # nk: row blocks of 64 wg slots, each block's rows whole 8-row units of y
                a3, o3 = h.slots(a, l2, windowed=True, block=block)
                assert len(o3) % block == 0 and np.array_equal(_rebuild(a3, o3, m), a.toarray()), (name, block)
                bounds = h.window_bounds(o3, block, m)
                assert len(bounds) == len(o3) // block + 1 and bounds[-1] == m and (np.diff(bounds) >= 0).all()
                for b, w in enumerate(o3.reshape(-1, block)):
                    r = np.sort(w[w >= 0])
                    assert np.array_equal(r, np.arange(bounds[b], bounds[b + 1])), (name, block, b)
                    assert bounds[b] % 8 == 0 and (bounds[b + 1] % 8 == 0 or bounds[b + 1] == m), (name, block, b)
                    assert len(r) or m == 0, (name, block, b)
                    # the warps of a block as windowed's, but for the rows past the block's last multiple of 8
                    for x in (x[x >= 0] for x in w.reshape(-1, 16)):  # each warp's rows one run (padding warps none)
                        assert len(x) == 0 or np.array_equal(np.sort(x), np.arange(x.min(), x.max() + 1)), (name, block, b)
                # at most 7 rows' slots a block given up to the alignment, beyond windowed's own
                assert len(o3) <= len(orow) + block * (1 + (len(orow) // block)) and \
                    (o3 >= 0).sum() == m, (name, block)
        assert np.array_equal(_rebuild(a2, orow, m), a.toarray()), name
        rows = orow[orow >= 0]
        assert sorted(rows.tolist()) == list(range(m)), name  # each C row exactly once
        _, _, r0 = h.split(a)
        _, _, r2 = h.split(a2)
        res0 = np.diff(r0.indptr)
        heavy = np.zeros(m, dtype=bool)
        heavy[orow[np.nonzero(orow == -2)[0] - 8]] = True
        assert heavy.sum() <= np.ceil(l2 * m / 100) and (res0[heavy] > 0).all(), name
        if heavy.any() and (~heavy).any():
            assert res0[heavy].min() >= res0[~heavy].max(), name  # the heaviest rows first
        if l2 == 100:
            assert (heavy == (res0 > 0)).all(), name
        res2 = np.diff(r2.indptr)
        for s_, o in enumerate(orow):
            if o >= 0:
                assert res2[s_] == (0 if heavy[o] else res0[o]), (name, s_, o)
        assert ((orow == -2).sum()) == heavy.sum(), name
    # the powerlaw layer: its residual (K / 2 on its densest rows at l2 0) gone to a few per cent more rows
    a = random_matrix(768, 3072, 0.02, "powerlaw", 0)
    a2, _ = h.slots(a, 12)
    assert a2.shape[0] <= 1.12 * 768 and h.split(a2)[2].nnz < 0.02 * h.split(a)[2].nnz


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_l2_renders_the_row_map_fold_and_compiles(dtype):
    """l2 > 0: one more argument (orow) after rval, each thread's two rows folded where the second is a second layer,
    C's staged and direct stores through the row map; l2 0 renders none of it; builds without spills."""
    base = dict(bn=128, kc=2, wg=2, stages=6, splitk=1)
    s0 = render(space(), base, dtype)
    assert "orow" not in s0 and "o1 == -2" not in s0
    for cfg in [dict(base, l2=12), dict(base, l2=25, pt=1), dict(bn=128, kc=1, wg=2, stages=2, splitk=2, l2=100)]:
        src = render(space(), cfg, dtype)
        assert "const int* __restrict__ orow," in src and "if (o1 == -2) {" in src
        assert "C + (size_t)o0 * N + col" in src  # the direct stores through the map
        if cfg["stages"] > 2:
            assert "__shfl_sync(0xffffffffu, o0, 4 * (rr & 7))" in src and "C + (size_t)(dst) * N + col" in src
        rep, _ = nvcc_sm90a(src)
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)


RS_CONFIGS = [dict(bn=64, kc=4, wg=1, stages=6, splitk=1, rs=8), dict(bn=64, kc=4, wg=1, stages=3, splitk=1, rs=16), dict(bn=64, kc=4, wg=2, stages=4, splitk=2, rs=4),
              dict(bn=128, kc=2, wg=2, stages=2, splitk=1, l2=12, rs=4), dict(bn=256, kc=1, wg=1, stages=4, splitk=1, rs=4),
              dict(bn=128, kc=2, wg=2, stages=4, splitk=1, ar=4, rs=4), dict(bn=64, kc=2, wg=2, stages=4, splitk=1, mc=2, rs=4),
              dict(bn=64, kc=2, wg=2, stages=4, splitk=1, pw=1, rs=4)]


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_rs_stages_the_residual_under_the_loop_and_compiles_unserialized(dtype):
    """rs > 0: before the loop each consumer warp fetches its rows' first rs residual entries (cp.async of their B rows
    into its staging area, split 0's blocks only); after the loop they are added from shared memory, the rest from global
    memory; the loop after the wgmmas that rs 0 runs is gone. The space admits each config (its shared memory counted);
    builds without spills or serialization."""
    env = problem_env(4096, 4096, 512, 1_600_000, dtype)
    full = dict(mc=1, ar=0, pw=0, pt=0, l2=0)
    s0 = render(space(), RS_CONFIGS[0] | {"rs": 0}, dtype)
    assert "cp_async16(" not in s0 and "for (int e = h ? rlo1 : rlo0; e < e1; ++e)" in s0
    for cfg in RS_CONFIGS:
        assert space().check({**full, **cfg}, env, DEFAULT_LIMITS) is None, cfg
        src = render(space(), cfg, dtype)
        assert src.count("cp_async16(rw + (16 * u + r) *") == 1 and "cp.async.wait_all;" in src
        assert "for (int e = h ? rlo1 : rlo0; e < e1; ++e)" not in src  # no rs-0 residual after the loop
        assert src.index("cp_async16(rw +") < src.index("wgmma_sp(acc,") < src.index("cp.async.wait_all;")
        assert f"for (int e = lo + {cfg['rs']}; e < hi; e += {256 // cfg['bn']})" in src  # the entries past rs
        rep, _ = nvcc_sm90a(src)
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)


def test_rs_shared_memory_is_counted_and_pt_is_refused():
    h, env = host(), problem_env(4096, 4096, 128, 1_600_000, "fp16")
    base = dict(bn=64, kc=4, wg=1, stages=6, splitk=1, mc=1, ar=0, pw=0, pt=0, l2=0)
    # a consumer warp: 16 rows x 8 entries x (2 x 64 + 16) bytes of B + 64 x 8 of values, + 16 of alignment
    assert h.shared_bytes(dict(base, rs=8)) - h.shared_bytes(dict(base, rs=0)) == 16 + 4 * (16 * 8 * 144 + 64 * 8)
    assert space().check(dict(base, rs=8), env, DEFAULT_LIMITS) is None
    assert "max_dyn_smem_bytes" in space().check(dict(base, bn=128, stages=8, rs=8), env, DEFAULT_LIMITS)
    assert "pt == 0" in space().check(dict(base, pt=1, rs=4), env, DEFAULT_LIMITS)


RQ_CONFIGS = [dict(bn=64, kc=4, wg=1, stages=6, splitk=1, rq=4), dict(bn=64, kc=4, wg=2, stages=4, splitk=2, rq=2),
              dict(bn=128, kc=2, wg=1, stages=4, splitk=1, rq=2), dict(bn=64, kc=2, wg=1, stages=6, splitk=1, ar=4, rq=4),
              dict(bn=64, kc=4, wg=1, stages=4, splitk=1, mc=2, rq=4), dict(bn=64, kc=4, wg=1, stages=6, splitk=1, l2=12, rq=4)]


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_rq_streams_the_residual_through_the_loop_and_compiles_unserialized(dtype):
    """rq > 0: a ring of rq rounds a consumer warp, filled before the loop, one round taken into racc after each chunk's
    wgmmas and refilled, the rest drained after the loop and racc added to acc; no residual walk after the loop. The
    space admits each config; builds without spills or serialization (racc is not a wgmma accumulator)."""
    env = problem_env(4096, 4096, 512, 1_600_000, dtype)
    full = dict(mc=1, ar=0, pw=0, pt=0, l2=0, rs=0)
    for cfg in RQ_CONFIGS:
        assert space().check({**full, **cfg}, env, DEFAULT_LIMITS) is None, cfg
        src = render(space(), cfg, dtype)
        assert f"cp.async.wait_group {cfg['rq'] - 1};" in src and "acc[e] += racc[e];" in src
        assert "for (int e = h ? rlo1 : rlo0; e < e1; ++e)" not in src  # no rs-0 residual after the loop
        fill, take, drain = src.index("round j's B rows into B slot j"), src.index("mma_rq(&racc[4 * j], a0, a3, b0, b1)"), src.index("acc[e] += racc[e];")
        assert fill < src.index("wgmma_sp(acc,") < take < drain
        rep, _ = nvcc_sm90a(src)
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)


def test_rq_shared_memory_is_counted_and_excludes_rs_and_pt():
    h, env = host(), problem_env(4096, 4096, 128, 1_600_000, "fp16")
    base = dict(bn=64, kc=4, wg=1, stages=6, splitk=1, mc=1, ar=0, pw=0, pt=0, l2=0, rs=0)
    # a consumer warp: rq slots of 32 entries x 2 x 64 bytes of B and 2 rq index slots of 32 columns and value words
    # (256 bytes), + 16 of alignment
    assert h.shared_bytes(dict(base, rq=4)) - h.shared_bytes(dict(base, rq=0)) == 16 + 4 * 4 * (32 * 128 + 512)
    assert space().check(dict(base, rq=4), env, DEFAULT_LIMITS) is None
    assert "rq == 0 or" in space().check(dict(base, rq=2, rs=4), env, DEFAULT_LIMITS)
    assert "rq == 0 or" in space().check(dict(base, rq=2, pt=1), env, DEFAULT_LIMITS)


# ---- nk natively (nn.Linear: y = x @ A^T + bias) ----

# the GPU test's and the compile test's nk configs: 64-byte swizzle (kc 1), one and two boxes a stage (kc 2, 4), two
# warpgroups (the consumers' barrier before y's staging), split-K, ar, pw, y stored directly (too few stages)
NK_CONFIGS = [dict(bn=64, kc=1, wg=1, stages=4, splitk=1), dict(bn=64, kc=2, wg=2, stages=4, splitk=1),
              dict(bn=64, kc=4, wg=1, stages=6, splitk=1), dict(bn=128, kc=4, wg=1, stages=3, splitk=2),
              dict(bn=64, kc=2, wg=2, stages=8, splitk=3, ar=4), dict(bn=64, kc=1, wg=2, stages=2, splitk=2),
              dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1), dict(bn=64, kc=2, wg=1, stages=4, splitk=1),
              # l2: heavy rows doubled (no residual), y's rows through the row map
              dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=12), dict(bn=64, kc=2, wg=2, stages=4, splitk=3, l2=100),
              dict(bn=64, kc=1, wg=2, stages=2, splitk=2, l2=25),
              # l2, y by the row block's window (session 42) at pw 1; and too few stages for it (the direct stores)
              dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1), dict(bn=128, kc=1, wg=2, stages=2, splitk=1, l2=12, pw=1),
              # pt: the persistent loop (each tile's residual list refilled; l2: y by the window, its own staging area)
              dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=12, pt=1), dict(bn=64, kc=2, wg=2, stages=4, splitk=1, pt=1),
              dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1, pt=1)]


def _nk_env(m=384, k=384, n=7, nnz=7000, dtype="fp16"):
    return problem_env(m, k, n, nnz, dtype, "nk")


def test_nk_is_native_for_any_n_and_refuses_what_its_template_lacks():
    """tc_sp24 declares nk (default path native): any N (x's rows past N read as zeros), K % 8 == 0 (x's tensor map),
    bn <= 128, and none of mc 2, rs, rq (pt and l2 natively since sessions 42 and 41); the staged path keeps kn's
    N % 8."""
    from sparse_autotune.core.space import NK_PATH
    sp = space()
    assert sp.supports_layout("nk") and sp.default_path() == "native"
    nk = sp.for_layout("nk")
    base = {**sp.normalize(NK_CONFIGS[0], "fp16"), NK_PATH: "native"}
    for n in (1, 7, 127, 1024):
        assert nk.check(base, _nk_env(n=n), DEFAULT_LIMITS) is None, n
    assert nk.check({**base, NK_PATH: "staged"}, _nk_env(n=7), DEFAULT_LIMITS) is not None
    assert nk.check({**base, NK_PATH: "staged"}, _nk_env(n=64), DEFAULT_LIMITS) is None
    assert nk.check(base, _nk_env(k=388), DEFAULT_LIMITS) is not None
    for bad in (dict(mc=2), dict(rs=8), dict(rq=2), dict(bn=256)):
        assert nk.check({**base, **bad}, _nk_env(n=512), DEFAULT_LIMITS) is not None, bad
        assert nk.check({**base, **bad, NK_PATH: "staged"}, _nk_env(n=512), DEFAULT_LIMITS) is None, bad
    for c in nk.feasible("fp16", _nk_env(n=1024), DEFAULT_LIMITS):
        if c[NK_PATH] == "native":
            assert c["bn"] <= 128 and c["mc"] == 1 and not (c["rs"] or c["rq"]), c


def test_nk_renders_k_major_b_transposed_y_with_the_bias():
    """nk: the bias pointer right after C, the wgmma's B without the transpose bit (K-major x), x's boxes at (column
    k, row n0), y staged transposed (16-byte stores of 8 rows of A a column) where the stages hold 4 wg x bn x 48
    bytes (l2: by the row block's window, bn x (128 wg + 16) bytes, or pt's own area), else (and for M % 8 != 0)
    16-bit stores; kn has none of it."""
    h = host()
    for cfg in NK_CONFIGS:
        src = render(space(), cfg, "fp16", layout="nk")
        kn = render(space(), cfg, "fp16")
        assert "unsigned short* __restrict__ C, const unsigned short* __restrict__ bias, int M" in src
        assert "bias" not in kn and "layout=nk" in src.split("\n", 1)[0]
        assert re.search(r"%\d+, %\d+, 0, 1, 1, 1, 0;", src) and re.search(r"%\d+, %\d+, 0, 1, 1, 1, 1;", kn)
        assert "(c0 + i) * KC + 64 * q, n0, full + 8 * st" in src
        assert ("2ull << 62" in src) == (cfg["kc"] == 1) and ("1ull << 62" in src) == (cfg["kc"] > 1)
        l2, pt = cfg.get("l2", 0), cfg.get("pt", 0)
        # staged: l2 0 by each warp's 16 rows (4 wg x bn x 48 bytes of the stages; not at pt, whose stages hold the next
        # tile's chunks); l2 by the row block's window (bn x (128 wg + 16): the stages', or pt's own area)
        fits = pt or cfg["stages"] * h.stage_bytes(cfg) >= cfg["bn"] * (128 * cfg["wg"] + 16) if l2 else \
            not pt and cfg["stages"] * h.stage_bytes(cfg) >= 4 * cfg["wg"] * cfg["bn"] * 48
        assert ("st.global.v4.u32" in src) == bool(fits), cfg
        assert ("yw1 - yw0" in src) == bool(fits and l2), cfg  # the window store, its bounds after orow's slots
        assert ("orow + M + rb + 1" in src) == bool(fits and l2), cfg
        if fits and l2:  # session 44: a thread's unit and columns by shifts (no division), its loads before its stores
            shift = 3 if cfg["wg"] == 1 else 4
            assert f"u = tid & {8 * cfg['wg'] - 1}, cl = tid >> {shift};" in src and " / nu" not in src, cfg
            body = src[src.index("cl = tid >>"):]
            assert body.index("ld.shared.v4.u32") < body.index("st.global.v4.u32"), cfg
        assert ("C[(size_t)col * MY + o0] =" if l2 else "C[(size_t)col * MY + row0] =") in src  # always there
        # session 45: the bias loaded 16-bit (before the loop) and converted only where it is added, after the loop
        assert ("bu0 = __ldg(bias + o0)" if l2 else "bu0 = __ldg(bias + row0)") in src and "bv0 = lo2f(__ldg" not in src, cfg
        assert src.index("bu0 = __ldg(bias") < src.index("wgmma_sp(acc,") < src.index("const float bv0 = lo2f(bu0)"), cfg
        # every consumer past its loop before y's staging (a lagging warp's nk_take may still read the stages; pt: the
        # previous tile's stores read the staging area); the window store's writes and stores are the block's: a
        # barrier between them at any split-K
        assert src.count("bar.sync 1") == (0 if not fits else (cfg["splitk"] == 1) + bool(l2)), cfg
        # pt (session 43): each block one run of tiles, its row block's rows, bias and residual lists loaded only when
        # the row block changes; kn's pt keeps the grid-strided order
        assert ("tl = tbeg; tl < tend; tl += 1" in src) == ("if (rb != prb)" in src) == bool(pt), cfg
        if pt:
            assert "tl = blockIdx.x; tl < ntot; tl += gridDim.x" in kn and "tbeg" not in kn, cfg
    assert "#error" not in render(space(), NK_CONFIGS[0], "fp16", layout="nk")
    for bad in (dict(rs=8), dict(rq=2), dict(mc=2)):  # the template refuses what it has no code for
        assert "#error" in render(space(), dict(NK_CONFIGS[0], **bad), "fp16", layout="nk"), bad


def test_nk_tensor_map_is_over_x_k_major():
    h = host()
    t = h.tensor_map_args_nk(1000, 384, dict(kc=2, bn=128), 1 << 20)
    assert t["dims"] == (384, 1000) and t["strides"] == (768,) and t["box"] == (64, 128)
    assert t["swizzle"] == get_family("tc_wgmma").host.TMAP_SWIZZLE_128B and t["address"] == 1 << 20
    t = h.tensor_map_args_nk(7, 40, dict(kc=1, bn=64), 1 << 20)
    assert t["box"] == (32, 64) and t["swizzle"] == get_family("tc_wgmma").host.TMAP_SWIZZLE_64B == 2
    with pytest.raises(ValueError):
        h.tensor_map_args_nk(7, 44, dict(kc=1, bn=64), 1 << 20)


@pytest.mark.parametrize("dtype", COMPILE_DTYPES)
def test_nk_configs_compile_without_spills_or_serialized_wgmmas(dtype):
    from sparse_autotune.core.space import NK_PATH
    nk = space().for_layout("nk")
    for cfg in NK_CONFIGS:
        assert nk.check({**space().normalize(cfg, dtype), NK_PATH: "native"}, _nk_env(n=1024, dtype=dtype),
                        DEFAULT_LIMITS) is None, cfg
        rep, _ = nvcc_sm90a(render(space(), cfg, dtype, layout="nk"))
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)


def _nk_cases():
    """adversarial()'s cases with K % 8 == 0 (x's tensor map), MiniLM's 384 x 384 at 5 %, 300 x 2000 at 20 %
    (residual entries; M % 8 != 0: y's direct stores), and rows of 20 and 40 residual entries (the stage-taken list of
    32 and the rest after the loop)."""
    cases = {k: v for k, v in adversarial().items() if v.shape[1] % 8 == 0}
    rng = np.random.default_rng(9)
    cases["uniform_384x384_d0.05"] = _vals(random_matrix(384, 384, 0.05, "uniform", 4), rng)
    cases["uniform_300x2000_d0.2"] = _vals(random_matrix(300, 2000, 0.2, "uniform", 5), rng)
    a = sps.lil_matrix(random_matrix(384, 384, 0.05, "uniform", 6))
    a[5, 0:40] = 1.0  # 10 full groups of 4: 20 residual entries (MiniLM's heavy rows: 8-24)
    a[77, 100:180] = 1.0  # 40 residual entries: past the list's 32, the rest after the loop
    a[200, ::2] = 1.0  # two of each group: no residual
    cases["heavy_rows_384x384"] = _vals(a, rng)
    return cases


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["empty_rows_and_tiles", "full_tile", "all_zero", "uniform_384x384_d0.05",
                                  "uniform_300x2000_d0.2", "heavy_rows_384x384"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nk_correct_on_edge_cases(dtype, case):
    """The native nk kernels through the project's launch path against float64 (poisoned y, fresh x, a bias and none)
    at N = 1, 7, 64, 257 (x's rows past N zero-filled, partial column tiles)."""
    from nk_check import check_nk_natively, native_nk_configs

    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    sp = space()

    def pick(feas, name, n):
        feas = [sp.normalize(c, dtype) for c in feas]
        return [c for c in (sp.normalize(c, dtype) for c in NK_CONFIGS) if c in feas]
    cases = {case: _nk_cases()[case]}
    want = sum(len(pick(native_nk_configs(FAMILY, dtype, *a.shape, n, a.nnz), name, n))
               for name, a in cases.items() for n in (1, 7, 64, 257))
    assert want >= 20 and check_nk_natively(FAMILY, dtype, cases, pick) == want


@pytest.mark.gpu
@pytest.mark.parametrize("sms", [3, 7])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nk_persistent_loop_correct_with_many_tiles_a_block(dtype, sms, monkeypatch):
    """The persistent loop (pt) with few blocks (the host's SM count made 3 or 7): each block runs a run of up to 30
    tiles across row blocks (the edge cases above give a block one tile): the ring's phases over many tiles, the row
    block's rows, bias, window and residual lists kept or reloaded along a run, a block with no tile (session 44: the
    ping-pong draft's ring bug showed only here)."""
    from nk_check import check_nk_natively

    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    monkeypatch.setattr(host(), "sm_count", lambda: sms)
    sp = space()
    pts = [sp.normalize(c, dtype) for c in NK_CONFIGS if c.get("pt", 0)]
    assert len(pts) >= 3

    def pick(feas, name, n):
        feas = [sp.normalize(c, dtype) for c in feas]
        return [c for c in pts if c in feas]
    cases = {k: v for k, v in _nk_cases().items() if k in ("uniform_384x384_d0.05", "heavy_rows_384x384", "uniform_300x2000_d0.2")}
    assert check_nk_natively(FAMILY, dtype, cases, pick, ns=(64, 257)) >= 12


def test_nk_known_goods_come_first_for_nk_problems_and_run_natively():
    """The known-good configs made for nk (first_when layout == 'nk') lead an nk problem's queue, all native; a kn
    problem keeps its own first (session 40: MiniLM's 25-trial search timed tc_sp24 natively once a problem); the l2
    ones (session 41: MiniLM's real rows) before the l2 0 ones; K >= 1024 ones only where K is."""
    from sparse_autotune.core.space import NK_PATH
    sp = space()
    nk = sp.for_layout("nk")
    got = nk.defaults("fp16", _nk_env(384, 1536, 128, 29491), DEFAULT_LIMITS)
    assert len(got) >= 6 and all(c[NK_PATH] == "native" for c in got[:6])
    assert [c["l2"] for c in got[:6]] == [12, 25, 25, 0, 0, 0]
    assert {c["splitk"] for c in got[3:6]} == {1, 4} and {c["wg"] for c in got[:6]} == {1, 2}
    short = nk.defaults("fp16", _nk_env(384, 384, 128, 7373), DEFAULT_LIMITS)
    assert [c["l2"] for c in short[:4]] == [12, 25, 0, 0] and all(c["splitk"] == 1 for c in short[:4])
    kn = sp.defaults("fp16", problem_env(768, 3072, 2048, 50_000, "fp16"), DEFAULT_LIMITS)
    # kn's own first (at N >= 512 the dl suite's winner, then session 35's l2 12), the nk ones last for kn
    assert [c["l2"] for c in kn[:2]] == [100, 12] and kn[-1]["splitk"] == 4


def test_nk_residual_list_is_counted_in_shared_memory_as_the_template_lays_it_out():
    """The nk template's per-warp list (16 rows x NKR columns, then as many value words) matches the host's
    nk_list_bytes and the space's shared-memory constraint; kn kernels do not pay for it."""
    from types import SimpleNamespace

    from sparse_autotune.core.space import NK_PATH
    h, sp = host(), space()
    cfg = sp.normalize(dict(bn=64, kc=4, wg=2, stages=4, splitk=1), "fp16")
    src = render(sp, cfg, "fp16", layout="nk")
    r = h.NK_RESIDUAL
    assert f"warp * {16 * r * 8};" in src and f"nrw + {64 * r} + 4 * (g * {r} + u)" in src
    assert h.nk_list_bytes(cfg) == 16 + 4 * 2 * 16 * r * 8
    assert h.smem_bytes(SimpleNamespace(config=cfg, layout="nk")) == h.shared_bytes(cfg) + h.nk_list_bytes(cfg)
    assert h.smem_bytes(SimpleNamespace(config=cfg, layout="kn")) == h.shared_bytes(cfg)
    nk = sp.for_layout("nk")
    limit = h.shared_bytes(cfg) + h.nk_list_bytes(cfg)
    env = _nk_env(n=1024)
    assert nk.check({**cfg, NK_PATH: "native"}, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": limit}) is None
    assert nk.check({**cfg, NK_PATH: "native"}, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": limit - 1}) is not None
    assert nk.check({**cfg, NK_PATH: "staged"}, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": h.shared_bytes(cfg)}) is None


# ---- tf32 (nk natively): 1:2 on column pairs, wgmma.mma_async.sp m64n{bn}k16 .tf32 ----

def _tf32_expected(a):
    """A as the tf32 kernel computes it: per row and pair of columns the first nonzero rounded to TF32 (the 1:2 part),
    a second one exact (the residual)."""
    from sparse_autotune.core.problem import tf32_round
    m, k, rows, cols, data = csr_parts(a)
    out = np.zeros((m, k), dtype=np.float32)
    key = rows.astype(np.int64) * (k + 1) + cols // 2
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    out[rows, cols] = np.where(first, tf32_round(data.astype(np.float32)), data.astype(np.float32))
    return out


@pytest.mark.parametrize("kc,wg", [(1, 1), (2, 2), (4, 1)])
def test_tf32_stream_and_residual_round_trip_to_a(kc, wg):
    """The tf32 stream (A's 16-bit view, a pair of columns for a group of four halves) decodes by the f16 register rule
    to A with each pair's first nonzero at TF32, its second in the residual (fp32 bits), on the adversarial patterns;
    the residual is the pairs' second nonzeros only, and the nibbles are 0b0100 / 0b1110."""
    h = host()
    for name, a in adversarial().items():
        stream, rptr, rcol, rval, info = h.build(a, kc, wg, "tf32")
        assert rval.dtype == np.uint32 and info["dtype"] == "tf32", name
        assert info["NC"] == max(1, -(-a.shape[1] // (16 * kc))), name  # chunks of 16 kc columns
        got = h.decode(stream, rptr, rcol, rval, info).view(np.float32)
        assert (got == _tf32_expected(a)).all(), (name, kc, wg)
        nib, _, resid = h.split_tf32(sps.csr_matrix(a))
        assert set(np.unique(nib)) <= {0x4, 0xE}, name
        rr = sps.coo_matrix(resid)
        dense = sps.csr_matrix(a).toarray()
        assert ((rr.col % 2 == 1) & (dense[rr.row, rr.col - 1] != 0)).all(), name  # the second of a full pair


def test_tf32_tile_is_the_probes_wgmma_sp_layout():
    """One 64 x 16 tile of the tf32 stream holds, thread by thread, the registers and metadata word that the probe's
    wgmma.sp m64n64k16 tf32 packer (bench/tf32_probe.py wg_pack with the A1 / M1 maps its H100 run found exact) gives
    the same 1:2 matrix, on the lanes that pass the metadata at selector 0 (4 g and 4 g + 1)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "tf32_probe.py"
    spec = importlib.util.spec_from_file_location("tf32_probe_for_test", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rng = np.random.default_rng(3)
    afull = np.zeros((64, 16), dtype=np.float32)
    pick = rng.integers(0, 2, size=(64, 8))
    vals = rng.integers(1, 9, size=(64, 8)).astype(np.float32)  # exact in TF32
    keep = rng.random((64, 8)) < 0.8
    rows = np.arange(64)
    for p in range(8):
        afull[rows, 2 * p + pick[:, p]] = np.where(keep[:, p], vals[:, p], 0.0)
    want = probe.wg_pack(afull, probe.A_MAPS["A1"], probe.M_MAPS["M1"], 0)
    stream, *_ = host().build(sps.csr_matrix(afull), 1, 1, "tf32")
    regs = stream[:host().VALS].view(np.uint32).reshape(128, 4)
    assert (regs == want[:, :4]).all()  # empty pairs included: zeros where the probe packs zeros
    # the metadata where every pair holds a value (an empty pair's nibble is free: the stream writes 0b0100)
    afull2 = np.zeros((64, 16), dtype=np.float32)
    for p in range(8):
        afull2[rows, 2 * p + pick[:, p]] = vals[:, p]
    want2 = probe.wg_pack(afull2, probe.A_MAPS["A1"], probe.M_MAPS["M1"], 0)
    stream2, *_ = host().build(sps.csr_matrix(afull2), 1, 1, "tf32")
    words = stream2[host().VALS:host().TILE].view(np.uint32).reshape(4, 16)
    lanes = [tw for tw in range(128) if (tw & 3) < 2]  # lanes 4 g and 4 g + 1 pass the metadata at selector 0
    assert [int(words[tw >> 5, 2 * ((tw & 31) >> 2) + (tw & 3)]) for tw in lanes] == [int(want2[tw, 4]) for tw in lanes]
    assert len({int(want2[tw, 4]) for tw in lanes}) > 8  # the maps are not trivially equal


def test_tf32_runs_natively_in_nk_and_scaled_in_kn_with_what_its_templates_have():
    """tf32 in nk: the native path only (wgmma's tf32 B is K-major: x's rows), ar 0, mc 1, no perm / ov; K % 4 (fp32
    rows of 16 bytes); the staged path refuses it. In kn: ts (fp16 math on scaled rows and columns), split-K 1, mc 1,
    no perm / ov."""
    from sparse_autotune.core.space import NK_PATH
    sp = space()
    assert sp.supports("tf32") and sp.kernel_dtype("tf32") == "tf32"
    nk = sp.for_layout("nk")
    base = {**sp.normalize(NK_CONFIGS[0], "tf32"), NK_PATH: "native"}
    env = _nk_env(n=1024, dtype="tf32")
    assert nk.check(base, env, DEFAULT_LIMITS) is None
    assert nk.check(base, _nk_env(k=388, dtype="tf32"), DEFAULT_LIMITS) is None  # K % 4 == 0 is enough
    assert nk.check(base, _nk_env(k=386, dtype="tf32"), DEFAULT_LIMITS) is not None
    assert nk.check({**base, NK_PATH: "staged"}, env, DEFAULT_LIMITS) is not None
    for bad in (dict(ar=4), dict(mc=2)):
        assert nk.check({**base, **bad}, env, DEFAULT_LIMITS) is not None, bad
    kn = list(sp.feasible("tf32", problem_env(768, 768, 1024, 30_000, "tf32"), DEFAULT_LIMITS))  # kn: ts (session 56)
    assert kn and all(c["splitk"] == 1 and c["mc"] == 1 and c["perm"] == 0 and c["ov"] == 0 for c in kn)
    feas = list(nk.feasible("tf32", env, DEFAULT_LIMITS))
    assert feas and all(c[NK_PATH] == "native" and c["ar"] == 0 and c["mc"] == 1 for c in feas)


def test_tf32_renders_k16_tf32_wgmma_fp32_x_and_y_and_refuses_kn():
    """tf32's kernel: wgmma.sp m64n{bn}k16 .tf32 without the transpose operand (tf32 takes none), fp32 x / y / bias
    and 32-bit residual values, x's boxes of 32 columns, y by 32-bit stores (no 16-bit staging); kn renders #error."""
    sp = space()
    for cfg in [c for c in NK_CONFIGS if not c.get("ar")]:
        src = render(sp, sp.normalize(cfg, "tf32"), "tf32", layout="nk")
        assert "#error" not in src, cfg
        assert f"m64n{cfg['bn']}k16.f32.tf32.tf32" in src and re.search(r"%\d+, %\d+, 0, 1, 1, 1;", src), cfg
        assert "const float* __restrict__ B, float* __restrict__ C, const float* __restrict__ bias" in src, cfg
        assert "const unsigned int* __restrict__ rval" in src and "(c0 + i) * KC + 32 * q, n0" in src, cfg
        assert "st.shared.u16" not in src and "pack2f(acc" not in src.split("spmm_kernel(")[1], cfg
        assert f"#define KC {16 * cfg['kc']}" in src, cfg
    kn = render(sp, sp.normalize(NK_CONFIGS[0], "tf32"), "tf32")  # kn: ts, not the 1:2 tf32 kernel
    assert "#error" not in kn and "k16.f32.tf32" not in kn and "k32.f32.f16.f16" in kn


TS_CONFIGS = [dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, l2=25), dict(bn=64, kc=4, wg=2, stages=6, splitk=1, pw=1, pt=1, l2=100),
              dict(bn=64, kc=1, wg=2, stages=8, splitk=1), dict(bn=128, kc=1, wg=1, stages=6, splitk=1, ar=4),
              dict(bn=64, kc=4, wg=1, stages=6, splitk=1, rs=8), dict(bn=256, kc=1, wg=1, stages=4, splitk=1)]


def test_ts_scale_rows_is_exact_and_puts_each_row_in_1_to_2():
    """ts's A: each row times a power of two (its largest magnitude in [1, 2)), rinv undoing it exactly; rows without
    a nonzero value keep rinv 1; the values span 2^-20 ... 2^20 between rows."""
    h = host()
    rng = np.random.default_rng(3)
    a = random_matrix(300, 200, 0.05, "powerlaw", 3)
    a.data = (rng.standard_normal(a.nnz) * np.repeat(np.exp2(rng.integers(-20, 21, 300)), np.diff(a.indptr))).astype(np.float32)
    a = sps.vstack([a, sps.csr_matrix((3, 200), dtype=np.float32)]).tocsr()
    s16, rinv = h.scale_rows(a)
    assert s16.dtype == np.float32 and rinv.dtype == np.float32 and rinv.shape == (303,)
    back = s16.multiply(rinv[:, None]).tocsr()
    assert np.array_equal(back.toarray(), a.toarray())
    mx = np.abs(s16).max(axis=1).toarray().ravel()
    rows = np.diff(a.indptr) > 0
    assert np.all((mx[rows] >= 1) & (mx[rows] < 2)) and np.all(rinv[~rows] == 1)
    assert np.all(np.log2(rinv) == np.round(np.log2(rinv)))


def test_ts_stream_holds_a_at_fp16_rounding_of_the_scaled_rows():
    """The ts build (A's scaled rows as fp16's stream and residual) decodes, times rinv, to A within fp16's rounding
    (10 bits, as TF32's), on the adversarial cases."""
    h = host()
    for name, a in adversarial().items():
        s16, rinv = h.scale_rows(a)
        for kc, wg in ((1, 1), (2, 2), (4, 1)):
            stream, rptr, rcol, rval, info = h.build(s16, kc, wg, "fp16")
            dense = h.decode(stream, rptr, rcol, rval, info)
            got = dense.view(np.float16).astype(np.float64)[:a.shape[0], :a.shape[1]] * rinv[:, None]
            ref = a.toarray().astype(np.float64)
            assert np.all(np.abs(got - ref) <= 2.0 ** -11 * np.abs(ref) + 1e-30), (name, kc, wg)


def test_ts_renders_fp32_c_with_the_scales_and_compiles():
    """ts (tf32 in kn): fp16's wgmma.sp k32 on the 16-bit B (the conversion's copy), C as float* followed by rinv and
    cinv, each stored pair times its row's and columns' inverse scales by one 8-byte store; split-K > 1 refused; the
    kernels build without spills; ts_convert builds (kept rows and re-read)."""
    sp = space()
    for i, cfg in enumerate(TS_CONFIGS):
        c = sp.normalize(cfg, "tf32")
        src = render(sp, c, "tf32")
        assert "#error" not in src and "k32.f32.f16.f16" in src, cfg
        assert ("const unsigned short* __restrict__ B, float* __restrict__ C, const float* __restrict__ rinv, "
                "const float* __restrict__ cinv, int M") in src, cfg
        assert "acc[4 * jb] * (rs0 * cs.x)" in src and "acc[4 * jb + 3] * (rs1 * cs.y)" in src, cfg
        assert "st.global.v4.u32" not in src and "pack2f(acc" not in src.split("spmm_kernel(")[1], cfg
        body = src.split("spmm_kernel(")[1]  # the conversion's launch before it (TS_PDL): waited for after the set-up
        assert body.count("griddepcontrol.wait") == 1 and body.index("mbar_init(") < body.index("griddepcontrol.wait"), cfg
        assert "griddepcontrol" not in render(sp, sp.normalize(cfg, "fp16"), "fp16"), cfg
        if i < 2:
            rep, _ = nvcc_sm90a(src)
            assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep) and "C75" not in rep, (cfg, rep)
    assert "#error" in render(sp, sp.normalize(dict(TS_CONFIGS[2], splitk=2), "tf32"), "tf32")


def test_ts_workspace_is_shared_by_n_up_to_its_power_of_two_capacity():
    """ts's workspace (B's fp16 copy, cinv) per capacity: N in (cap / 2, cap] share one (64 at least), each big enough
    for K x N; a run of growing N allocates at most twice the largest in all."""
    import types
    h = host()
    assert [h.ts_capacity(n) for n in (1, 8, 64, 65, 100, 128, 129, 2048, 2049)] == [64, 64, 64, 128, 128, 128, 256,
                                                                                       2048, 4096]
    built = {}

    def cached(key, make):
        if key not in built:
            built[key] = make(None)
        return built[key]
    kern = types.SimpleNamespace(a=types.SimpleNamespace(shape=(300, 768), cached=cached))
    for n in range(1, 3001):
        b16, cinv = h.ts_workspace(kern, n)
        assert b16.size >= 768 * n and cinv.size >= n and b16.dtype == np.uint16 and cinv.dtype == np.float32
    assert h.ts_workspace(kern, 100)[0] is h.ts_workspace(kern, 128)[0] is not h.ts_workspace(kern, 129)[0]
    total = sum(b.nbytes for b, _ in built.values())
    assert len(built) == 7 and total <= 2 * 768 * 4096 * 2  # caps 64 ... 4096


@pytest.mark.parametrize("pdl", [False, True])
def test_ts_launch_matches_the_kernel_signature_and_converts_b_first(pdl, monkeypatch):
    """ts on the CPU (fake device arrays and launches): Kernel.args against the rendered ts kernel's signature (B and C,
    then rinv and cinv, int32s, the tensor map) for several configs; its launcher is wrap_launcher's ScaledLauncher:
    one call launches the conversion (B's address, the workspace, cinv, K, N; the plan's grid and block) and then the
    kernel on the workspace with C's address, in that order on the call's stream; TS_PDL: the kernel's launch is
    a ProgrammaticLaunch's (the conversion's is not)."""
    import types

    from fakes import FakeDeviceCSR, FakeLaunch
    from sparse_autotune.device import compile as sat_compile
    from sparse_autotune.device import kernel as kernels
    h = host()
    fam = get_family(FAMILY)
    monkeypatch.setattr(h, "TS_PDL", pdl)
    monkeypatch.setattr(sat_compile, "compile_kernel",
                        lambda src, name, options=(): types.SimpleNamespace(kernel=types.SimpleNamespace(ptr=0xC0DE)))
    a = random_matrix(200, 768, 0.05, "uniform", 0)
    n = 136
    env = problem_env(200, 768, n, a.nnz, "tf32", "kn")
    feas = list(fam.space.feasible("tf32", env, {"gate": 0}))
    assert feas and all(c["splitk"] == 1 for c in feas)
    checked = 0
    for cfg in feas[:: max(1, len(feas) // 8)]:
        dev = FakeDeviceCSR(a, "tf32")
        kern = fake_kernel(FAMILY, cfg, "tf32", a, dev, "kn")
        sig = signature(kern.source)
        names = [nm for nm, _ in sig]
        b_tag, c_tag = object(), object()
        args = kern.args(n, b_tag, c_tag)
        assert len(args) == len(sig)
        at = names.index("C")
        assert args[names.index("B")] is b_tag and args[at] is c_tag and names[at + 1: at + 3] == ["rinv", "cinv"]
        rinv, cinv = args[at + 1], args[at + 2]
        assert rinv is h.row_scales(kern) and cinv is h.ts_workspace(kern, n)[1]
        ln = kern.launcher(n)
        assert isinstance(ln, h.ScaledLauncher) and kern.launcher(n) is ln
        assert isinstance(ln.inner._launch, kernels.ProgrammaticLaunch) == pdl
        assert not isinstance(ln.convert._launch, kernels.ProgrammaticLaunch)
        order = []
        conv = FakeLaunch([8, 8, 8, 4, 4])
        main = FakeLaunch([s for _, s in sig])
        ln.convert._launch = lambda *x: (order.append("convert"), conv(*x))
        ln.inner._launch = lambda *x: (order.append("kernel"), main(*x))
        ln(0xB0, 0xC0, 5)
        assert order == ["convert", "kernel"]
        b16 = h.ts_workspace(kern, n)[0]
        pl = h.ts_convert_plan(768, n)
        (f, gx, gy, _gz, bx, _by, _bz, smem, stream, _), got = conv.calls[0]
        assert (f, gx, gy, bx, smem, stream) == (0xC0DE, pl["grid"][0], pl["grid"][1], pl["block"][0], pl["smem"], 5)
        assert got == [0xB0, b16.data.ptr, cinv.data.ptr, 768, n]
        (f, gx, _gy, _gz, bx, *_rest), got = main.calls[0]
        assert f == 0xF00D and main.calls[0][0][8] == 5 and (gx, bx) == (kern.geometry(n)[0][0], kern.geometry(n)[1][0])
        assert got[names.index("B")] == b16.data.ptr and got[at] == 0xC0 and got[at + 1: at + 3] == [rinv.data.ptr,
                                                                                                     cinv.data.ptr]
        assert got[names.index("N")] == n and got[names.index("K")] == 768
        for b_ptr, c_ptr in ((0xB8, 0xC0), (0xB0, 0xC4)):  # B not 16-byte aligned, C not 8-byte aligned: refused
            with pytest.raises(UserError, match="aligned"):
                ln(b_ptr, c_ptr, 5)
        assert len(conv.calls) == len(main.calls) == 1  # nothing launched
        checked += 1
    assert checked >= 4


TS_PLAN_CASES = [(1, 8), (40, 64), (64, 3136), (256, 136), (256, 25088), (768, 512), (1000, 40), (3072, 2048),
                 (4096, 64), (4097, 64), (10240, 16), (20000, 16)]


def test_ts_convert_plan_covers_every_row_and_both_forms_compile():
    """The conversion's plan: v5 (rows in registers) up to K = 4096, its blocks' rows (32 P each, P <= 16) covering K
    in CS <= 8 blocks a strip of 32 columns; v4 past that, its rows kept in shared memory up to K = 10240, else read
    again; a forced form and an unknown one. Both forms build for sm_90a without spills."""
    from sparse_autotune.device import compile as sat_compile
    h = host()
    built = set()
    for k, n in TS_PLAN_CASES:
        pl = h.ts_convert_plan(k, n)
        assert pl["grid"][0] == -(-n // 32), (k, n, pl)
        if k <= 4096:
            assert pl["form"] == "v5" and pl["block"] == (256,) and pl["smem"] == 0, (k, n, pl)
            assert pl["cs"] in (1, 2, 4, 8) and pl["grid"][1] == pl["cs"] and 1 <= pl["p"] <= 16, (k, n, pl)
            assert 32 * pl["p"] * pl["cs"] >= k and 32 * pl["p"] < -(-k // pl["cs"]) + 32, (k, n, pl)
            assert f"#define P {pl['p']}" in pl["src"] and f"#define CS {pl['cs']}" in pl["src"]
        else:
            assert pl["form"] == "v4" and pl["grid"][1] == 8 and pl["block"] == (128,), (k, n, pl)
            assert ("#define KEEP 1" in pl["src"]) == (k <= 10240) and pl["smem"] == (-(-k // 8) * 128 if k <= 10240 else 0)
        assert pl["src"].count("griddepcontrol.launch_dependents") == 1  # TS_PDL: the kernel after it may start
        key = (pl["form"], pl["p"], pl["cs"], "KEEP 1" in pl["src"])
        if key not in built and sat_compile.nvcc_path() is not None:
            built.add(key)
            rep = sat_compile.nvcc_check(pl["src"], "sm_90a")
            assert "sat_ts_convert" in rep and re.search(r"0 bytes spill stores", rep), (key, rep)
    assert h.ts_convert_plan(64, 3136)["cs"] == 1 and h.ts_convert_plan(3072, 2048)["cs"] == 8
    # session 60's sweep: one block a strip at K <= 256, and at K <= 512 with a strip an SM; else the 264-block rule
    assert [h.ts_convert_plan(k, n)["cs"] for k, n in ((128, 6272), (256, 1568), (512, 6272), (512, 784), (768, 2048))] \
        == [1, 1, 1, 8, 8]
    assert h.ts_convert_plan(768, 2048, "v5", cs=4)["grid"] == (64, 4)
    with pytest.raises(ValueError, match="cs 1 for K = 768"):
        h.ts_convert_plan(768, 2048, "v5", cs=1)
    assert h.ts_convert_plan(768, 512, "v4")["form"] == "v4"
    with pytest.raises(ValueError, match="unknown form"):
        h.ts_convert_plan(768, 512, "v9")
    with pytest.raises(ValueError, match="past 4096"):
        h.ts_convert_plan(5000, 64, "v5")


def _ts_b(k: int, n: int, seed: int) -> np.ndarray:
    """B for the conversion's checks: columns spread over 2^-60 ... 2^60, and special columns: zeros, one NaN among
    values, an infinity, values under 2^-120 (the clamped scale), fp32's largest, subnormals."""
    rng = np.random.default_rng(seed)
    b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-60, 61, n))[None, :]).astype(np.float32)
    specials = [np.zeros(k), np.where(np.arange(k) == k // 2, np.nan, 1.5), np.where(np.arange(k) == 0, np.inf, -2.0),
                rng.standard_normal(k) * 2.0 ** -125, np.full(k, 3.4028234e38) * np.sign(rng.standard_normal(k)),
                rng.standard_normal(k) * 2.0 ** -140]
    for j, col in enumerate(specials[:n]):
        b[:, (5 * j + 3) % n] = col
    return b


def test_ts_convert_reference_scales_each_column_into_2_14_to_2_15():
    """ts_convert_reference: each finite non-zero column's largest magnitude lands in [2^14, 2^15] (2^15 where it rounds up), cinv undoes the
    scale (B16 x cinv equals B to fp16's rounding), zeros keep cinv 2^-14, NaN is skipped by the maxima (as fmaxf),
    an infinity's column unscaled, tiny columns' scale clamped at 2^126."""
    h = host()
    b = _ts_b(300, 40, 1)
    b16, cinv = h.ts_convert_reference(b)
    f = b16.view(np.float16).astype(np.float64)
    assert b16.dtype == np.uint16 and b16.shape == b.shape and cinv.shape == (40,)
    fin = np.isfinite(b).all(axis=0) & (np.abs(b).max(axis=0) > 2.0 ** -112)
    mx = np.abs(f).max(axis=0)
    assert np.all((mx[fin] >= 2 ** 14) & (mx[fin] <= 2 ** 15)), mx[fin]  # 2^15: a largest value rounded up
    back = f * cinv[None, :]
    ok = np.isfinite(b) & fin[None, :]
    assert np.all(np.abs(back[ok] - b[ok]) <= 2.0 ** -11 * np.abs(b[ok]) + 2.0 ** -24 * np.abs(b).max(axis=0)[np.nonzero(ok)[1]])
    assert cinv[3] == 2.0 ** -14 and np.isnan(f[150, 8]) and np.all(f[:, 8][np.arange(300) != 150] == 1.5 * 2 ** 14)
    assert np.isinf(f[0, 13]) and cinv[13] == 2.0 ** -14
    assert cinv[18] == 2.0 ** -126 and np.abs(f[:, 18]).max() > 0
    assert cinv[28] == 2.0 ** -126 and np.abs(f[:, 23]).max() == 2 ** 15  # subnormals: the same clamp; FLT_MAX


def _ts_convert_emulated(form: str, k: int, n: int, keep: int = 1, ftz: bool = False):
    """(the conversion kernel of `form` (v4 with KEEP `keep`, or v5 as its plan for K x N) compiled for the CPU
    emulation (tests/cuda_host.py), its launch: run(args, reverse)). A cluster of CS blocks runs as one emulated block of
    CS x T threads: threadIdx.x % T and / T stand for the thread and the block's rank, each block's shared arrays (and
    v4's dynamic tile) apart, the cluster's barrier the whole emulated block's, a peer's word read from its array.
    ftz: each thread runs with the CPU's flush-to-zero and denormals-are-zero on (MXCSR), as the GPU's -ftz=true build
    (CuPy's NVRTC adds it) reads and writes fp32 subnormals as zero."""
    from cuda_host import HostKernel
    h = host()
    pl = h.ts_convert_plan(k, n, form)
    cs, thr = pl["cs"], pl["block"][0]
    if form == "v5":
        head, kern, smem = h.TS_REG_HEAD.format(p=pl["p"], cs=cs), h.TS_REG_KERNEL.format(), 0
        arrays = (("pm", "float", "[8][32]"), ("cm", "float", "[32]"), ("sc", "float4", "[8]"))
    else:
        head, kern = f"#define KEEP {keep}\n#define CS 8\n", h.TS_V4_KERNEL.format()
        smem = -(-k // 8) * 128 if keep else 0
        arrays = (("pm", "float", "[4][32]"), ("cm", "float", "[32]"), ("sc", "float4", "[8]"))
    kern = kern.replace("threadIdx.x", f"(threadIdx.x % {thr})").replace("blockIdx.y", f"(threadIdx.x / {thr})")
    for name, typ, dims in arrays:
        decl = f"__shared__ {typ} {name}{dims};"
        assert decl in kern, name
        kern = kern.replace(decl, f"__shared__ {typ} {name}_[CS]{dims};\n#define {name} ({name}_[threadIdx.x / {thr}])")
    if form == "v4":
        decl = "extern __shared__ float4 tile[];"
        assert decl in kern
        kern = kern.replace(decl, f"float4* tile = reinterpret_cast<float4*>(g_block->smem) + (threadIdx.x / {thr}) * "
                                  f"{smem // 16};")
    emu = ("struct alignas(16) float4 { float x, y, z, w; };\n"
           "static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }\n"
           "static inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }\n"
           "#define cluster_sync() __syncthreads()\n"
           f"#define ld_peer(p, r) (*((p) + ((int)(r) - (int)(threadIdx.x / {thr})) * 32))\n#define CLUSTER\n")
    pdl = 'asm volatile("griddepcontrol.launch_dependents;");'
    assert kern.count(pdl) == 1
    kern = kern.replace(pdl, "")
    if ftz:  # on at the kernel's entry, the caller's MXCSR back at its end (the kernels have no early return)
        assert kern.rstrip().endswith("}")
        kern = kern.replace(") {\n", ") {\n    const unsigned int emu_csr = _mm_getcsr();\n    _mm_setcsr(emu_csr | 0x8040u);\n", 1)
        kern = kern.rstrip()[:-1] + "    _mm_setcsr(emu_csr);\n}\n"
        head = "#include <xmmintrin.h>\n" + head
    fn = HostKernel(head + emu + h.TS_DEV.format(T=h.TS_T) + kern,
                    "sat_ts_convert(*(const float**)args[0], *(unsigned short**)args[1], *(float**)args[2], "
                    "*(int*)args[3], *(int*)args[4])")
    return pl, lambda args, reverse: fn(pl["grid"][0], 1, thr * cs, smem * cs, args, reverse=reverse)


_TS_EMU_CASES = [("v5", 40, 64, 1), ("v5", 256, 136, 1), ("v5", 301, 32, 1), ("v5", 1001, 40, 1), ("v4", 301, 32, 1),
                 ("v4", 1001, 40, 0), ("v4", 40, 64, 1)]


@pytest.mark.parametrize("form,k,n,keep,ftz", [(*c, False) for c in _TS_EMU_CASES] + [
    pytest.param(*c, True, marks=() if c in (("v5", 1001, 40, 1), ("v4", 1001, 40, 0)) else pytest.mark.heavy)
    for c in _TS_EMU_CASES])  # FTZ: a v5 cluster and v4 reading its rows again by default, the rest in the heavy tier
def test_ts_convert_in_cpu_emulation_matches_the_reference(form, k, n, keep, ftz):
    """Both conversion kernels' own text run on the CPU (_ts_convert_emulated: a cluster as one emulated block) against
    ts_convert_reference bit for bit, in grid order and reversed: v5 at CS 1, 4 and 8 with K not a multiple of CS (rows
    past K in the last blocks); v4 with its rows kept in shared memory and read again (KEEP 0). ftz: with the CPU
    flushing fp32 subnormals as the GPU's -ftz=true build does, the result is the same (B's subnormal columns are
    scaled exactly: the GPU run of session 59 found them zeroed before the maxima went by the bits)."""
    import ctypes

    from cuda_host import gxx_path
    if gxx_path() is None:
        pytest.skip("g++ not found")
    h = host()
    pl, run = _ts_convert_emulated(form, k, n, keep, ftz)
    b = _ts_b(k, n, k + n)
    want16, wantinv = h.ts_convert_reference(b)
    for reverse in (False, True):
        b16 = np.full((k, n), 0x7C01, dtype=np.uint16)
        cinv = np.full(n, np.nan, dtype=np.float32)
        arrays = [np.ascontiguousarray(b), b16, cinv]
        run([ctypes.c_void_p(x.ctypes.data) for x in arrays] + [ctypes.c_int(k), ctypes.c_int(n)], reverse)
        assert host().same_f16_bits(b16, want16), (form, k, n, pl["p"], pl["cs"], np.argwhere(b16 != want16)[:5])
        assert np.array_equal(cinv, wantinv), (form, k, n, cinv, wantinv)
    if form == "v5":
        assert pl["cs"] == {40: 1, 256: 1, 301: 4, 1001: 8}[k]


TSN_CONFIGS = [dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, l2=25), dict(bn=64, kc=2, wg=1, stages=4, splitk=1, pt=1, l2=100),
               dict(bn=64, kc=1, wg=2, stages=8, splitk=1), dict(bn=128, kc=4, wg=1, stages=3, splitk=1, pw=1)]


def test_tsn_renders_nk_in_fp16_with_fp32_y_the_scales_before_the_bias_and_compiles():
    """tf32 in nk with tsn 1: fp16's k32 wgmma.sp over x's fp16 copy, y and the bias fp32 (C, bias, rinv, cinv in that
    order), acc times rinv x cinv before the bias is added, y by the direct fp32 stores (no 16-bit staging); tsn 0 the
    native tf32 kernel; the space admits tsn 1 in nk natively at split-K 1 and K % 8 == 0 only; two build without
    spills."""
    from sparse_autotune.core.space import NK_PATH
    sp = space()
    nk = sp.for_layout("nk")
    env = _nk_env(768, 768, 1024, 30_000, "tf32")
    for i, cfg in enumerate(TSN_CONFIGS):
        c = nk.normalize(dict(cfg, tsn=1, **{NK_PATH: "native"}), "tf32")
        assert c is not None and nk.check(c, env, DEFAULT_LIMITS) is None, cfg
        src = render(nk, c, "tf32", layout="nk")
        assert "#error" not in src and "k32.f32.f16.f16" in src and "k16.f32.tf32" not in src, cfg
        assert ("const unsigned short* __restrict__ B, float* __restrict__ C, const float* __restrict__ bias, "
                "const float* __restrict__ rinv, const float* __restrict__ cinv, int M") in src, cfg
        body = src.split("spmm_kernel(")[1]
        assert body.index("acc[4 * jb] *= rs0 * x0") < body.index("acc[4 * jb] += bv0"), cfg
        assert "__float_as_uint(__ldg(bias" in body and "st.shared.u16" not in body.split("*= rs0 * x0")[1], cfg
        if i < 2:
            rep, _ = nvcc_sm90a(src)
            assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep) and "C75" not in rep, (cfg, rep)
        native = render(nk, dict(c, tsn=0), "tf32", layout="nk")
        assert "k16.f32.tf32" in native and "rinv" not in native.split("spmm_kernel(")[1].split(")")[0]
    base = nk.normalize(dict(TSN_CONFIGS[2], tsn=1, **{NK_PATH: "native"}), "tf32")
    assert nk.check(dict(base, splitk=2), env, DEFAULT_LIMITS) is not None
    assert nk.check(base, _nk_env(768, 772, 1024, 30_000, "tf32"), DEFAULT_LIMITS) is not None  # K % 8 == 4
    assert nk.check(dict(base, **{NK_PATH: "staged"}), env, DEFAULT_LIMITS) is not None
    assert all(c.get("tsn", 0) == 0 for c in sp.feasible("tf32", problem_env(768, 768, 1024, 30_000, "tf32"), DEFAULT_LIMITS))
    assert "tsn" not in sp.normalize(TSN_CONFIGS[0], "fp16")  # fp16 / bf16 configs as before


@pytest.mark.parametrize("k,n", [(64, 7), (520, 13), (2056, 5), (8200, 3), (16392, 2)])
def test_ts_convert_rows_in_cpu_emulation_matches_the_reference(k, n):
    """tsn's conversion of x (N x K, a token a row) run on the CPU (tests/cuda_host.py): its plan (32 ... 256 threads a
    row, the row in registers, read twice past K = 16384), bit for bit against ts_convert_rows_reference (each row
    scaled) with rows past N in the last block, in grid order and reversed; the forms build without spills."""
    import ctypes

    from cuda_host import HostKernel, gxx_path
    from sparse_autotune.device import compile as sat_compile
    if gxx_path() is None:
        pytest.skip("g++ not found")
    h = host()
    pl = h.ts_convert_rows_plan(k, n)
    assert (pl["tpr"], pl["read2"]) == {64: (32, 0), 520: (32, 0), 2056: (64, 0), 8200: (256, 0), 16392: (256, 1)}[k]
    assert pl["read2"] or 4 * pl["tpr"] * pl["p"] >= k and pl["p"] <= 16
    assert pl["grid"] == (-(-n // (256 // pl["tpr"])),) and pl["block"] == (256,)
    if sat_compile.nvcc_path() is not None:
        rep = sat_compile.nvcc_check(pl["src"], "sm_90a")
        assert "sat_ts_convert" in rep and re.search(r"0 bytes spill stores", rep), rep
    emu = ("struct alignas(16) float4 { float x, y, z, w; };\n"
           "static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }\n"
           "static inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }\n")
    pdl = 'asm volatile("griddepcontrol.launch_dependents;");'
    src = pl["src"]
    assert src.count(pdl) == 1
    head, rest = src.split("#define TS_T", 1)
    fn = HostKernel(head + emu + "#define TS_T" + rest.replace(pdl, ""),
                    "sat_ts_convert(*(const float**)args[0], *(unsigned short**)args[1], *(float**)args[2], "
                    "*(int*)args[3], *(int*)args[4])")
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((n, k)) * np.exp2(rng.integers(-40, 41, n))[:, None]).astype(np.float32)
    x[0] = 0.0  # a row of zeros, then a NaN, an infinity, FLT_MAX and values under 2^-112 in the others
    x[n // 2, 1] = np.nan
    x[-1, k // 2] = np.inf if n > 2 else x[-1, k // 2]
    x[1, : k // 3] = 3.4028234e38
    if n > 2:
        x[2] = (rng.standard_normal(k) * 2.0 ** -125).astype(np.float32)
    want16, wantinv = h.ts_convert_rows_reference(x)
    for reverse in (False, True):
        x16 = np.full((n, k), 0x7C01, dtype=np.uint16)
        cinv = np.full(n, np.nan, dtype=np.float32)
        arrays = [x, x16, cinv]
        fn(pl["grid"][0], 1, 256, 0, [ctypes.c_void_p(a.ctypes.data) for a in arrays] + [ctypes.c_int(k), ctypes.c_int(n)],
           reverse=reverse)
        assert host().same_f16_bits(x16, want16), (k, n, np.argwhere(x16 != want16)[:5])
        assert np.array_equal(cinv, wantinv), (k, n, cinv, wantinv)


def test_tsn_launch_converts_x_rows_first_and_passes_the_bias(monkeypatch):
    """tsn on fake device arrays: Kernel.args against the nk ts kernel's signature (x, y, bias, rinv, cinv), the
    launcher the ScaledLauncher: x's rows converted (the rows plan) into the workspace, then the kernel on it with y and
    the bias's address."""
    import types

    from fakes import FakeDeviceCSR, FakeLaunch
    from sparse_autotune.core.space import NK_PATH
    from sparse_autotune.device import compile as sat_compile
    h = host()
    monkeypatch.setattr(sat_compile, "compile_kernel",
                        lambda src, name, options=(): types.SimpleNamespace(kernel=types.SimpleNamespace(ptr=0xC0DE)))
    a = random_matrix(200, 776, 0.05, "uniform", 0)
    n = 37
    nk = space().for_layout("nk")
    checked = 0
    for cfg in TSN_CONFIGS:
        c = nk.normalize(dict(cfg, tsn=1, **{NK_PATH: "native"}), "tf32")
        if nk.check(c, _nk_env(200, 776, n, a.nnz, "tf32"), {"gate": 0}) is not None:
            continue
        kern = fake_kernel(FAMILY, c, "tf32", a, FakeDeviceCSR(a, "tf32"), "nk")
        sig = signature(kern.source)
        names = [nm for nm, _ in sig]
        b_tag, c_tag, bias_tag = object(), object(), object()
        args = kern.args(n, b_tag, c_tag, bias_tag)
        at = names.index("C")
        assert len(args) == len(sig) and args[names.index("B")] is b_tag and args[at] is c_tag
        assert args[at + 1] is bias_tag and names[at + 1: at + 4] == ["bias", "rinv", "cinv"]
        ln = kern.launcher(n)
        assert isinstance(ln, h.ScaledLauncher)
        conv, main = FakeLaunch([8, 8, 8, 4, 4]), FakeLaunch([s for _, s in sig])
        ln.convert._launch, ln.inner._launch = conv, main
        ln(0xB0, 0xC0, 5, 0xB1A5)
        b16, cinv = h.ts_workspace(kern, n)
        pl = h.ts_convert_rows_plan(776, n)
        (f, gx, _gy, _gz, bx, *_r), got = conv.calls[0]
        assert (f, gx, bx) == (0xC0DE, pl["grid"][0], 256) and got == [0xB0, b16.data.ptr, cinv.data.ptr, 776, n]
        got = main.calls[0][1]
        assert got[names.index("B")] == b16.data.ptr and got[at: at + 4] == [0xC0, 0xB1A5, args[at + 2].data.ptr,
                                                                             cinv.data.ptr]
        ln(0xB0, 0xC4, 5, 0)  # y's fp32 stores need only 4 bytes
        with pytest.raises(UserError, match="x 16-byte aligned"):
            ln(0xB4, 0xC0, 5, 0xB1A5)
        assert len(conv.calls) == len(main.calls) == 2
        checked += 1
    assert checked >= 2


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["empty_rows_and_tiles", "full_tile", "all_zero", "uniform_384x384_d0.05",
                                  "uniform_300x2000_d0.2", "heavy_rows_384x384"])
def test_tsn_nk_correct_on_edge_cases(case):
    """tf32 in nk with tsn 1 (x's rows converted, fp16 kernels, fp32 y times the scales, the bias after them) through
    the project's launch path against float64 at the tf32 tolerance (poisoned y, fresh x, a bias and none) at N = 1, 7,
    64, 257."""
    from nk_check import check_nk_natively, native_nk_configs

    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    sp = space()
    mine = [sp.normalize(dict(c, tsn=1), "tf32") for c in TSN_CONFIGS]

    def pick(feas, name, n):
        feas = [sp.normalize(c, "tf32") for c in feas]
        return [c for c in mine if c in feas]
    cases = {case: _tf32_cases()[case]}
    want = sum(len(pick(native_nk_configs(FAMILY, "tf32", *a.shape, n, a.nnz), name, n))
               for name, a in cases.items() for n in (1, 7, 64, 257))
    assert want >= 8 and check_nk_natively(FAMILY, "tf32", cases, pick) == want


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["v4", "v5"])
def test_ts_convert_on_gpu_matches_the_reference(form):
    """Both conversion forms on the GPU against ts_convert_reference bit for bit (NaN as NaN), on the plan's cases
    (v5 up to K = 4096; v4 with rows kept and read again), through ts_convert_launcher (wrap_launcher's)."""
    from sparse_autotune.device.gpu import cupy, gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("the conversion runs on Hopper (clusters, sm_90a) in tc_sp24's ts")
    cp = cupy()
    h = host()
    done = 0
    for k, n in [(40, 64), (256, 136), (1000, 40), (3072, 520), (4096, 64), (4097, 64), (12000, 16)]:
        if form == "v5" and k > 4096:
            continue
        b = _ts_b(k, n, k * n)
        bd, b16 = cp.asarray(b), cp.full((k, n), 0x7C01, dtype=cp.uint16)
        cinv = cp.full(n, cp.nan, dtype=cp.float32)
        ln = h.ts_convert_launcher(h.ts_convert_plan(k, n, form), cinv, k, n)
        ln(bd.data.ptr, b16.data.ptr, cp.cuda.get_current_stream().ptr)
        want16, wantinv = h.ts_convert_reference(b)
        got16 = cp.asnumpy(b16)
        assert host().same_f16_bits(got16, want16), (form, k, n, np.argwhere(got16 != want16)[:5])
        assert np.array_equal(cp.asnumpy(cinv), wantinv), (form, k, n)
        done += 1
    assert done == (5 if form == "v5" else 7)  # v5: the cases up to K = 4096, that one included


@pytest.mark.gpu
@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("n", [8, 64, 136, 264])
def test_ts_correct_on_edge_cases(n, pdl, monkeypatch):
    """tf32 in kn (ts) through the project's launch path: the conversion kernel, then the kernel on B's fp16 copy with
    the scales (launched plainly, and with programmatic stream serialization: its wait for the conversion), against
    float64 at the tf32 tolerance; the adversarial cases and rows spread over 2^-20 ... 2^20 (past fp16's range
    without the row scales)."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    fam = get_family(FAMILY)
    monkeypatch.setattr(fam.host, "TS_PDL", pdl)  # the kernel launched with programmatic stream serialization, or not
    cases = adversarial()
    wide = random_matrix(300, 2000, 0.05, "powerlaw", 3)
    wide.data = (np.random.default_rng(4).standard_normal(wide.nnz)
                 * np.repeat(np.exp2(np.random.default_rng(5).integers(-20, 21, 300)), np.diff(wide.indptr))).astype(np.float32)
    cases["spread_rows_300x2000_d0.05"] = wide
    env = problem_env(150, 1000, n, 30_000, "tf32")
    cfgs = []
    for cfg in TS_CONFIGS:
        c = fam.adapt(cfg, "tf32", env, DEFAULT_LIMITS)
        if c is not None and c not in cfgs:
            cfgs.append(c)
    assert len(cfgs) >= 4
    assert _check(cases, "tf32", n, cfgs) == 2 * len(cfgs) * len(cases)


def test_tf32_tensor_map_is_32_bit_over_x():
    h = host()
    t = h.tensor_map_args_nk(1000, 388, dict(kc=2, bn=128), 1 << 20, "tf32")
    assert t["dtype"] == get_family("tc_wgmma").host.TMAP_UINT32 == 2 and t["dims"] == (388, 1000) and t["strides"] == (4 * 388,)
    assert t["box"] == (32, 128) and t["swizzle"] == get_family("tc_wgmma").host.TMAP_SWIZZLE_128B
    t = h.tensor_map_args_nk(7, 40, dict(kc=1, bn=64), 1 << 20, "tf32")
    assert t["box"] == (16, 64) and t["swizzle"] == get_family("tc_wgmma").host.TMAP_SWIZZLE_64B
    with pytest.raises(ValueError):
        h.tensor_map_args_nk(7, 42, dict(kc=1, bn=64), 1 << 20, "tf32")


def test_tf32_configs_compile_without_spills_or_serialized_wgmmas():
    sp = space()
    for cfg in [c for c in NK_CONFIGS if not c.get("ar")][::3]:
        rep, _ = nvcc_sm90a(render(sp, sp.normalize(cfg, "tf32"), "tf32", layout="nk"))
        assert "C75" not in rep, (cfg, rep)
        assert re.search(r"0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)


def _tf32_cases():
    """_nk_cases and one with K % 8 == 4 (tf32's x needs only K % 4: fp32 rows of 16 bytes; the last chunk's box runs
    past K and reads zeros, the stream pads the last pairs)."""
    cases = _nk_cases()
    cases["uniform_200x388_d0.1"] = _vals(random_matrix(200, 388, 0.1, "uniform", 8), np.random.default_rng(10))
    return cases


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["empty_rows_and_tiles", "full_tile", "all_zero", "uniform_384x384_d0.05",
                                  "uniform_300x2000_d0.2", "heavy_rows_384x384", "uniform_200x388_d0.1"])
def test_tf32_nk_correct_on_edge_cases(case):
    """The native tf32 nk kernels through the project's launch path against float64 at the tf32 tolerance (poisoned
    y, fresh x, a bias and none) at N = 1, 7, 64, 257 (the K % 8 == 4 case added after session 55's GPU runs)."""
    from nk_check import check_nk_natively, native_nk_configs

    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    sp = space()

    def pick(feas, name, n):
        feas = [sp.normalize(c, "tf32") for c in feas]
        return [c for c in (sp.normalize(c, "tf32") for c in NK_CONFIGS if not c.get("ar")) if c in feas]
    cases = {case: _tf32_cases()[case]}
    want = sum(len(pick(native_nk_configs(FAMILY, "tf32", *a.shape, n, a.nnz), name, n))
               for name, a in cases.items() for n in (1, 7, 64, 257))
    assert want >= 20 and check_nk_natively(FAMILY, "tf32", cases, pick) == want


@pytest.mark.gpu
def test_tf32_nk_persistent_loop_correct_with_many_tiles_a_block(monkeypatch):
    from nk_check import check_nk_natively

    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_sp24 runs on Hopper (sm_90a) only")
    monkeypatch.setattr(host(), "sm_count", lambda: 5)
    sp = space()
    pts = [sp.normalize(c, "tf32") for c in NK_CONFIGS if c.get("pt", 0)]

    def pick(feas, name, n):
        feas = [sp.normalize(c, "tf32") for c in feas]
        return [c for c in pts if c in feas]
    cases = {k: v for k, v in _nk_cases().items() if k in ("uniform_384x384_d0.05", "heavy_rows_384x384")}
    assert check_nk_natively(FAMILY, "tf32", cases, pick, ns=(64, 257)) >= 8


def test_tf32_known_goods_lead_a_tf32_nk_problem():
    """The tf32 known-goods (session 55's winners: kc 4 chunks) come first for tf32 nk problems and run there; fp16's
    nk problems keep their own first."""
    from sparse_autotune.core.space import NK_PATH
    nk = space().for_layout("nk")
    got = nk.defaults("tf32", _nk_env(3072, 768, 2048, 117_965, "tf32"), DEFAULT_LIMITS)
    assert got and all(c[NK_PATH] == "native" for c in got)
    assert (got[0]["kc"], got[0]["stages"], got[0]["pw"]) == (4, 3, 1) and (got[1]["bn"], got[1]["wg"]) == (64, 2)
    fp16 = nk.defaults("fp16", _nk_env(3072, 768, 2048, 117_965), DEFAULT_LIMITS)
    assert fp16[0]["l2"] == 12 and fp16.index({k: v for k, v in got[0].items() if k != "tsn"}) > 6  # tsn: tf32's own


def test_the_persistent_known_good_leads_kn_problems_of_two_waves_of_tiles():
    """Session 55 (H100): pt 1 with 6 stages at bn 128 wg 2 l2 12 ran 3072x768 N = 2048 in 19.8 us against 21.6 for the
    best one-tile form; it is tried first where 128 x 128 tiles fill two waves of 132 SMs (>= 264 tiles), not on
    768x3072 N = 2048 (96 tiles: one wave, where it lost)."""
    sp = space()
    big = sp.defaults("fp16", problem_env(3072, 768, 2048, 117_965, "fp16"), DEFAULT_LIMITS)
    assert (big[0]["pt"], big[0]["stages"], big[0]["pw"], big[0]["l2"], big[0]["bn"]) == (1, 6, 0, 12, 128)
    one_wave = sp.defaults("fp16", problem_env(768, 3072, 2048, 117_965, "fp16"), DEFAULT_LIMITS)
    pt55 = [i for i, c in enumerate(one_wave) if (c["pt"], c["bn"], c["l2"]) == (1, 128, 12)]
    assert pt55 and pt55[0] > 1  # behind the N >= 512 dl winner and session 35's first


def test_the_dl_winner_known_good_leads_kn_problems_at_n_512_only():
    """Session 61: the H200 dl suite's most frequent tc_sp24 winner (bn 64 kc 4 wg 2 stages 6 pt 1 pw 1 l2 100, 20 of 108
    fp16 records) is tried first for kn problems at N >= 512 (second where session 55's persistent config leads: two
    waves of 128 x 128 tiles) and last elsewhere, so that the queues of small-N and nk problems keep their order."""
    sp = space()
    win = (64, 4, 2, 6, 1, 1, 100)
    key = lambda c: (c["bn"], c["kc"], c["wg"], c["stages"], c["pt"], c["pw"], c["l2"])
    for m, k, n, at in ((512, 2048, 1024, 0), (768, 3072, 2048, 0), (64, 256, 3136, 0), (3072, 768, 2048, 1)):
        got = [key(c) for c in sp.defaults("fp16", problem_env(m, k, n, m * k // 20, "fp16"), DEFAULT_LIMITS)]
        assert got.index(win) == at, (m, k, n, got[:3])
    small = [key(c) for c in sp.defaults("fp16", problem_env(4096, 4096, 128, 838_861, "fp16"), DEFAULT_LIMITS)]
    assert small[-1] == win and small.count(win) == 1
    nk = [key(c) for c in sp.for_layout("nk").defaults("fp16", _nk_env(384, 1536, 1024, 29491), DEFAULT_LIMITS)]
    assert win not in nk[:6]
