"""tc_wgmma (Hopper wgmma, A decoded into registers from per-strip records of ballots, bases and bit-major pairs, B in
wgmma's 128-byte-swizzled N-major shared-memory layout): the record stream round-trips to A by the kernel's own lane
rule, its sizes and invariants, the B tile's store addresses against the layout the descriptor names, rendering, the
sm_90a build (nvcc: HGMMA in the SASS, no spills; NVRTC with CuPy's -arch beside the family's), constraints (sm 90
only, N % 8, N >= 8); on a GPU, known-good and covering configs against float64 on edge cases, fp16 and bf16, N = 40,
64, 128, 192, and the small N of session 19 (8, 16, 24, 32: an m64n64 tile with zero columns) for the known-good
configs (N = 1, 4 and 127 are infeasible)."""
from __future__ import annotations

import concurrent.futures
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import check_launch_matches_signature, fake_kernel
from space_checks import check_matrices_on_gpu, nvcc_sm90a as _nvcc_sm90a
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import half_bits, random_matrix
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device import compile as sat_compile

FAMILY = "tc_wgmma"


def host():
    return get_family(FAMILY).host


def space():
    return get_family(FAMILY).space


def _vals(a, rng):
    a = sps.csr_matrix(a)
    a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5  # never zero after rounding to 16 bits
    return a


def adversarial():
    """Empty rows and tiles, a full tile, M and K not multiples of the tile or the chunk, one nonzero, 70 %, all zero,
    dense, one dense row, lone halves of a pair, whole empty chunks between full ones, a long K (many chunks)."""
    rng = np.random.default_rng(7)
    out = {}
    a = sps.random(80, 150, density=0.3, format="lil", random_state=1)
    a[0:20, :] = 0  # empty rows (a whole empty strip and part of the next)
    a[:, 16:80] = 0  # empty tiles and a whole empty chunk of 64
    out["empty_rows_and_tiles"] = _vals(a, rng)
    a = sps.random(64, 96, density=0.05, format="lil", random_state=2)
    a[16:32, 32:48] = 1.0  # a full 16 x 16 tile
    out["full_tile"] = _vals(a, rng)
    out["residues_37x53"] = _vals(sps.random(37, 53, density=0.3, format="csr", random_state=3), rng)
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = _vals(a, rng)
    out["density_0.7"] = _vals(sps.random(70, 100, density=0.7, format="csr", random_state=4), rng)
    out["long_k_130x3000"] = _vals(sps.random(130, 3000, density=0.1, format="csr", random_state=5), rng)
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["dense_33x129"] = _vals(sps.csr_matrix(np.ones((33, 129))), rng)
    d = np.zeros((48, 300))
    d[3, 4] = d[9, 13] = d[17, 130] = d[47, 299] = 1.0  # lone even / odd columns: the other half of the pair zero
    d[20, :] = 1.0  # one dense row
    d[0:16, 0:16] = 1.0
    out["lone_halves_dense_row"] = _vals(sps.csr_matrix(d), rng)
    return out


def bits16(a, dtype="fp16"):
    return half_bits(a.toarray().ravel(), dtype).reshape(a.shape)


# ---- the record stream ------------------------------------------------------------------------------------

def test_fragment_slot_is_the_wgmma_a_fragment_of_a_warp():
    """Lane 4 g + t holds a0 = (g, 2t..2t+1), a1 = (g + 8, ...), a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..) of its warp's
    16 x 16 slice; every element has exactly one (lane, register, half)."""
    h = host()
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    lane, j, half = h.fragment_slot(r, c)
    assert sorted((lane * 8 + j * 2 + half).ravel().tolist()) == list(range(256))
    assert (lane[5, 3], j[5, 3], half[5, 3]) == (4 * 5 + 1, 0, 1)
    assert (lane[13, 10], j[13, 10], half[13, 10]) == (4 * 5 + 1, 3, 0)
    assert (lane[2, 9], j[2, 9]) == (8, 2) and (lane[10, 1], j[10, 1]) == (8, 1)


@pytest.mark.parametrize("dec", ["ballot", "lane"])
@pytest.mark.parametrize("kc", [2, 4])
def test_stream_round_trips_to_a_by_the_lane_rule(kc, dec):
    """decode() reads each record as a lane does (ballot: its bit of each ballot, base + popc(ballot & lanemask_lt);
    lane: its word and start, then its own run): A's 16-bit values exactly, for every adversarial pattern, fp16 and
    bf16, against scipy's dense matrix."""
    h = host()
    for name, a in adversarial().items():
        for dtype in ("fp16", "bf16"):
            ptr, stream, info = h.build(a, kc, dtype, dec)
            got = h.decode(ptr, stream, info)
            assert got.shape == a.shape, name
            np.testing.assert_array_equal(got, bits16(a, dtype), err_msg=f"{name} {dtype} kc {kc} {dec}")
            assert info["nnz"] == a.count_nonzero()


@pytest.mark.parametrize("dec", ["ballot", "lane"])
@pytest.mark.parametrize("kc", [2, 4])
def test_stream_layout_invariants(kc, dec):
    """Pointers monotone and 16-byte aligned, a strip's end is the next strip's start, an empty record is 0 bytes, a
    dense record is exactly a slot (the most the kernel's shared memory holds a warp and stage); bases (ballot) and
    starts (lane) are the prefix sums of the ballots' and words' popcounts."""
    h = host()
    a = random_matrix(100, 3000, 0.1, "uniform", 1)
    ptr, stream, info = h.build(a, kc, "fp16", dec)
    S, NC = info["S"], info["NC"]
    p = ptr.reshape(S, NC + 1)
    assert p[0, 0] == 0 and (np.diff(p, axis=1) >= 0).all() and (p % 16 == 0).all()
    assert (p[1:, 0] == p[:-1, -1]).all() and p[-1, -1] == info["stream_bytes"]
    assert not stream[info["stream_bytes"]:].any()
    NB = h.nbits(kc)
    s32, s16 = stream.view(np.uint32), stream.view(np.uint16)
    for lo in np.unique(p[:, :-1])[:50]:
        if lo == info["stream_bytes"]:
            continue
        if dec == "ballot":
            bal = s32[lo // 4: lo // 4 + NB]
            bases = s16[lo // 2 + 2 * NB: lo // 2 + 3 * NB].astype(np.int64)
        else:
            hdr = s32[lo // 4: lo // 4 + 32]
            bal, bases = hdr & 0xFFFF, (hdr >> 16).astype(np.int64)
            assert not (bal >> NB).any()
        pop = np.array([bin(int(x)).count("1") for x in bal])
        np.testing.assert_array_equal(bases, np.cumsum(pop) - pop)
    ptr, _, info = h.build(sps.csr_matrix(np.ones((64, 16 * kc * 3))), kc, "fp16", dec)
    assert (np.diff(ptr.reshape(info["S"], -1), axis=1) == h.slot_bytes(kc, dec)).all()
    assert info["max_record"] == h.slot_bytes(kc, dec)
    ptr, _, info = h.build(sps.csr_matrix((64, 512), dtype=np.float32), kc, "fp16", dec)
    assert info["stream_bytes"] == 0 and not ptr.any()


def test_bytes_per_element():
    """ballot: 6 header bytes a bit of a non-empty record + 4 a stored pair; lane: 128 header bytes a record + 4 a
    pair: under dense fp16's 2 bytes an element at d <= 0.5; lane costs more at kc 2 (the same header, half the
    elements)."""
    h = host()
    for d, kc, dec, lo, hi in ((0.05, 4, "ballot", 0.27, 0.32), (0.1, 4, "ballot", 0.46, 0.51),
                               (0.3, 4, "ballot", 1.09, 1.16), (0.3, 2, "ballot", 1.10, 1.17),
                               (0.5, 4, "ballot", 1.57, 1.64), (0.05, 4, "lane", 0.30, 0.36), (0.1, 4, "lane", 0.49, 0.54),
                               (0.3, 4, "lane", 1.12, 1.19), (0.1, 2, "lane", 0.62, 0.68)):
        a = random_matrix(256, 2048, d, "uniform", 2)
        per = h.build(a, kc, "fp16", dec)[2]["bytes"] / (256 * 2048)
        assert lo < per < hi, (d, kc, dec, per)


def test_the_builder_leaves_the_callers_matrix_alone():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    ptr, stream, info = h.build(a, 2)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    want = np.zeros((1, 8), dtype=np.float16)
    want[0, 3] = 3.0
    np.testing.assert_array_equal(h.decode(ptr, stream, info), want.view(np.uint16))


# ---- B's shared-memory tile against the descriptor ----------------------------------------------------------

def _canonical_mn_sw128(n, k, lbo, sbo):
    """Byte offset of element (n, k) of a 16 x BN (K x N) N-major operand under CUTLASS's canonical GMMA layout
    Swizzle<3,4,3> o ((8,m),(8,2)):((1,LBO),(8,SBO)) (16-byte units), which the descriptor's swizzle mode 1, LBO and SBO
    name: 16-byte unit (n // 8) % 8, atom n // 64 at LBO, k-row k % 8 at 128 bytes, group k // 8 at SBO; then the
    128-byte swizzle (address bits 4-6 ^= bits 7-9)."""
    off = 16 * ((n // 8) % 8) + lbo * (n // 64) + 128 * (k % 8) + sbo * (k // 8) + 2 * (n % 8)
    return off ^ (((off >> 7) & 7) << 4)


@pytest.mark.parametrize("bn,kc,wg", [(64, 2, 1), (64, 4, 3), (128, 4, 2), (128, 2, 4), (64, 2, 4)])
def test_b_tile_stores_where_the_descriptor_reads(bn, kc, wg):
    """The kernel's copy addresses (thread tid: unit bu = tid % (bn / 8), rows r0 + RPI * it, offset boff +
    it * (RPI / 8) * SBO), and each k-step's descriptor start (kk * 2 SBO), LBO 1024 and SBO bn * 16 as rendered in
    bdesc: every element of every k-step lands where the canonical layout puts it, every byte of the tile once."""
    src = render.render(space(), dict(bn=bn, kc=kc, dec="lane", wg=wg, stages=4, splitk=1, wait=1, minb=1), "fp16")
    lbo = int(re.search(r"\(unsigned long long\)\((\d+) >> 4\) << 16", src).group(1))
    sbo = eval(re.search(r"\(unsigned long long\)\(\((BN \* 16)\) >> 4\) << 32", src).group(1).replace("BN", str(bn)))
    assert re.search(r"\(1ull << 62\)", src) and "d0 + (unsigned long long)(kk * BN * 2)" in src  # start + kk BN 32 B
    KC, THREADS = 16 * kc, 128 * wg
    RPI = THREADS // (bn // 8)
    seen = {}
    for tid in range(THREADS):
        bu, r0 = tid % (bn // 8), tid // (bn // 8)
        boff = (r0 >> 3) * (bn * 16) + (bu >> 3) * 1024 + (r0 & 7) * 128 + (((bu & 7) ^ (r0 & 7)) << 4)
        for it in range(-(-KC // RPI)):
            r = r0 + RPI * it
            if r >= KC:
                break
            at = boff + it * (RPI // 8) * (bn * 16)
            for e in range(8):  # the 8 columns of the 16-byte unit
                seen[(r, 8 * bu + e)] = at + 2 * e
    assert len(seen) == KC * bn and len(set(seen.values())) == KC * bn
    assert max(seen.values()) < KC * bn * 2
    for kk in range(kc):
        start = kk * bn * 32
        for k in range(16):
            for n in range(bn):
                assert seen[(16 * kk + k, n)] == start + _canonical_mn_sw128(n, k, lbo, sbo), (kk, k, n)


@pytest.mark.parametrize("bn,kc", [(64, 2), (64, 4), (128, 2), (128, 4)])
def test_producer_b_tile_stores_where_the_descriptor_reads(bn, kc):
    """ws 1: the producer warp's copy addresses as rendered (lane: unit bu = lane % (bn / 8), rows r0 + PR * it with
    PR = 256 / bn, offset (it / (8 / PR)) * SBO + pb[it % (8 / PR)]): every element of every k-step where the canonical
    layout puts it, every byte of the tile once (the same tile the consumers' descriptors read at ws 0)."""
    src = render.render(space(), dict(bn=bn, kc=kc, dec="lane", wg=2, stages=3, splitk=1, wait=1, minb=1, ws=1), "fp16")
    assert f"#define PR {256 // bn}" in src
    assert "pb[s] = (bu >> 3) * 1024 + (r0 + PR * s) * 128 + (((bu & 7) ^ (r0 + PR * s)) << 4);" in src
    assert "cp_async16(bs + (it / (8 / PR)) * (BN * 16) + pb[it % (8 / PR)], bp + (size_t)(PR * it) * N, 16);" in src
    assert "const int bu = lane % (BN / 8), r0 = lane / (BN / 8);" in src
    KC, PR = 16 * kc, 256 // bn
    lbo, sbo = 1024, bn * 16
    seen = {}
    for lane in range(32):
        bu, r0 = lane % (bn // 8), lane // (bn // 8)
        pb = [(bu >> 3) * 1024 + (r0 + PR * s) * 128 + (((bu & 7) ^ (r0 + PR * s)) << 4) for s in range(8 // PR)]
        for it in range(KC // PR):
            at = (it // (8 // PR)) * sbo + pb[it % (8 // PR)]
            for e in range(8):
                seen[(r0 + PR * it, 8 * bu + e)] = at + 2 * e
    assert len(seen) == KC * bn and len(set(seen.values())) == KC * bn and max(seen.values()) < KC * bn * 2
    for kk in range(kc):
        for k in range(16):
            for n in range(bn):
                assert seen[(16 * kk + k, n)] == kk * bn * 32 + _canonical_mn_sw128(n, k, lbo, sbo), (kk, k, n)


def test_ws_renders_a_producer_warp_and_mbarriers():
    """ws 1 (third step): 128 wg + 32 threads, per-stage full (33 arrivals: 32 cp.async + the bulk bytes' expect_tx)
    and empty (a consumer warp each) mbarriers, the records by cp.async.bulk, no block-wide barrier in the loop; the
    consumers release a stage after its wgmmas (wait 0: the chunk's own; wait 1: the chunk before). ws 0 (the default:
    every stored config) renders the kernel of the second step, byte for byte but the header's "ws=0"."""
    sp = space()
    base = dict(bn=128, kc=4, dec="lane", wg=3, stages=4, splitk=2, wait=1, minb=1)
    new = render.render(sp, {**base, "ws": 1}, "fp16")
    old = render.render(sp, base, "fp16")
    assert old == render.render(sp, {**base, "ws": 0}, "fp16") == render.render(sp, sp.normalize(base, "fp16"), "fp16")
    assert sp.normalize(base, "fp16")["ws"] == 0
    assert "#define THREADS 416" in new and "#define CTHREADS 384" in new and "#define THREADS 384" in old
    assert "mbarrier" not in old and "CTHREADS" not in old and "minb=1 ws=0 tma=0 red=0\n" in old and "minb=1 ws=1 tma=0 red=0\n" in new
    assert "mbar_init(full + 8 * st, 33);" in new and "mbar_init(empty + 8 * st, WARPS);" in new
    assert "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes" in new
    assert "cp.async.mbarrier.arrive.noinc.shared::cta.b64" in new
    loop = new[new.index("if (warp == WARPS) {"):new.index("wgmma_wait<0>();\n        fence_acc(acc);\n    }")]
    assert "__syncthreads" not in loop and "cp_wait<" not in loop
    assert loop.count("mbar_wait(full + 8 * cst, cph);") == 2 and "mbar_wait(empty + 8 * st, ph ^ 1u);" in loop
    assert loop.count("mbar_arrive(empty + 8 * pst);") == 2  # wait 1: the chunk before
    w0 = render.render(sp, {**base, "wait": 0, "ws": 1}, "fp16")
    assert w0.count("mbar_arrive(empty + 8 * cst);") == 2 and "int pst = 0;" not in w0 and "af1" not in w0
    # split-K: the workspace holds the consumers' accumulators only; the producer joins the barriers, stores nothing
    assert "(NACC / 4) * CTHREADS;" in new and "if (!*s_last || warp == WARPS) return;" in new
    one = render.render(sp, {**base, "splitk": 1, "ws": 1}, "fp16")
    assert "asm volatile(\"cp.async.wait_all;\" ::: \"memory\");\n        return;" in one


# ---- tma (fourth step): B by TMA, records regrouped ---------------------------------------------------------

@pytest.mark.parametrize("bn,kc", [(64, 2), (64, 4), (128, 2), (128, 4)])
def test_tma_box_is_what_the_descriptor_reads(bn, kc):
    """tma: the producer's boxes (box q = columns 64 q ... 64 q + 63 of the chunk's 16 kc rows at the stage's
    q * 16 kc * 128 bytes) as the 128-byte swizzle writes them (box row r at r * 128, its 16-byte unit u at u ^ (r & 7),
    the stage 1024-aligned), against the canonical layout with the rendered descriptor (LBO = 16 kc * 128, SBO = 1024)
    and k-step start (kk * 2048 bytes): every element of every k-step, every byte of the tile once."""
    src = render.render(space(), dict(bn=bn, kc=kc, dec="lane", wg=2, stages=3, splitk=1, wait=1, minb=1, ws=1, tma=1),
                        "fp16")
    assert "((unsigned long long)((KC * 128) >> 4) << 16)" in src and "((unsigned long long)(1024 >> 4) << 32)" in src
    assert "d0 + (unsigned long long)(kk * 128)" in src  # 2048 bytes >> 4
    assert ("tma_g2s(bbase + st * BST + q * (KC * 128), gmap, n0 + 64 * q, (c0 + i) * KC, full + 8 * st);" in src
            and "for (int q = 0; q < BN / 64; ++q)" in src)
    KC = 16 * kc
    lbo, sbo = KC * 128, 1024
    t = host().tensor_map_args(bn, 4096, {"kc": kc})
    assert t["box"] == (64, KC) and t["swizzle"] == host().TMAP_SWIZZLE_128B
    seen = {}
    for q in range(bn // 64):
        for r in range(KC):
            for c in range(64):
                off = r * 128 + 2 * c
                seen[(r, 64 * q + c)] = q * KC * 128 + (off ^ (((off >> 7) & 7) << 4))
    assert len(set(seen.values())) == KC * bn and max(seen.values()) < KC * bn * 2
    for kk in range(kc):
        for k in range(16):
            for n in range(bn):
                assert seen[(16 * kk + k, n)] == kk * 2048 + _canonical_mn_sw128(n, k, lbo, sbo), (kk, k, n)


def _cuda_h_enum(name: str) -> dict:
    """{member: value} of a C enum in the toolkit's cuda.h (implicit values counted), {} without the header."""
    nvcc = sat_compile.nvcc_path()
    homes = [Path(nvcc).resolve().parent.parent] if nvcc else []
    homes += [Path(p) for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p]
    hdr = next((h / "include" / "cuda.h" for h in homes if (h / "include" / "cuda.h").exists()), None)
    if hdr is None:
        return {}
    body = re.search(r"typedef enum \w+ \{([^}]*)\} " + name + ";", hdr.read_text()).group(1)
    out, v = {}, -1
    for item in re.sub(r"/\*.*?\*/|//[^\n]*", "", body, flags=re.S).split(","):
        if item.strip():
            m, _, val = item.partition("=")
            v = int(val, 0) if val.strip() else v + 1
            out[m.strip()] = v
    return out


def test_tensor_map_arguments_follow_b_and_cuda_h():
    """B (K x N, row-major, 16-bit) as cuTensorMapEncodeTiled gets it: dims {N, K}, the row stride 2N bytes, a 64 x 16 kc
    box (a chunk's rows, 128-byte rows for the swizzle), unit element strides; the enum values are cuda.h's."""
    h = host()
    t = h.tensor_map_args(200, 3000, {"kc": 4, "bn": 128})
    assert t["rank"] == 2 and t["dims"] == (200, 3000) and t["strides"] == (400,) and t["box"] == (64, 64)
    assert t["elem_strides"] == (1, 1) and t["address"] % 16 == 0 and t["address"] > 0
    assert h.tensor_map_args(64, 100, {"kc": 2})["box"] == (64, 32)
    for n, k in ((36, 100), (0, 100), (64, 0)):
        with pytest.raises(ValueError, match="N % 8"):
            h.tensor_map_args(n, k, {"kc": 4})
    want = {"CUtensorMapDataType": ("CU_TENSOR_MAP_DATA_TYPE_UINT16", t["dtype"]),
            "CUtensorMapInterleave": ("CU_TENSOR_MAP_INTERLEAVE_NONE", t["interleave"]),
            "CUtensorMapSwizzle": ("CU_TENSOR_MAP_SWIZZLE_128B", t["swizzle"]),
            "CUtensorMapL2promotion": ("CU_TENSOR_MAP_L2_PROMOTION_L2_256B", t["l2"]),
            "CUtensorMapFloatOOBfill": ("CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE", t["oob"])}
    enums = {e: _cuda_h_enum(e) for e in want}
    if not all(enums.values()):
        pytest.skip("cuda.h not found")
    for e, (member, got) in want.items():
        assert enums[e][member] == got, (e, member)


class _FakeEncode:
    """cuTensorMapEncodeTiled's stand-in: records what the ctypes call passed, writes a marker, returns `rc`."""

    def __init__(self, rc=0):
        self.rc, self.calls = rc, []

    def __call__(self, tmap, dtype, rank, addr, dims, strides, box, estr, il, sw, l2, oob):
        import ctypes as ct
        self.calls.append(dict(tmap=tmap, dtype=dtype, rank=rank, addr=addr, dims=list(dims[:rank]),
                               strides=list(strides[:rank - 1]), box=list(box[:rank]), estr=list(estr[:rank]),
                               il=il, sw=sw, l2=l2, oob=oob))
        ct.memmove(tmap, bytes(range(128)), 128)
        return self.rc


def test_tensor_map_encode_passes_the_arguments(monkeypatch):
    """encode_tensor_map through ctypes (a fake driver: no libcuda here): each argument as tensor_map_args has it, a
    64-byte-aligned 128-byte map returned as 32 words; a failed encode is a one-line error; no driver: zeros."""
    h = host()
    fake = _FakeEncode()
    monkeypatch.setattr("sparse_autotune.device.gpu.libcuda", lambda: type("Lib", (), {"cuTensorMapEncodeTiled": fake})())
    t = h.tensor_map_args(192, 3000, {"kc": 4})
    got = h.encode_tensor_map(t)
    assert got.dtype == np.uint32 and got.shape == (32,) and got.view(np.uint8).tolist() == list(range(128))
    c = fake.calls[0]
    assert c["tmap"] % 64 == 0 and c["rank"] == 2 and c["addr"] == t["address"]
    assert c["dims"] == [192, 3000] and c["strides"] == [384] and c["box"] == [64, 64] and c["estr"] == [1, 1]
    assert (c["dtype"], c["il"], c["sw"], c["l2"], c["oob"]) == (1, 0, 3, 3, 0)
    fake.rc = 1
    with pytest.raises(RuntimeError, match="cuTensorMapEncodeTiled failed"):
        h.encode_tensor_map(t)
    monkeypatch.setattr("sparse_autotune.device.gpu.libcuda", lambda: None)
    assert not h.encode_tensor_map(t).any()


def _plain_records(h, kc, dec):
    """The grouped-stream tests' matrix (300 rows: 19 strips; rows 40-99 empty) with the plain stream's info and its
    records: {(strip, chunk): the record's bytes} for every non-empty one."""
    a = random_matrix(300, 1000, 0.1, "uniform", 5).tolil()
    a[40:100] = 0
    a = sps.csr_matrix(a)
    a.eliminate_zeros()
    ptr, stream, info = h.build(a, kc, "fp16", dec)
    S, NC = info["S"], info["NC"]
    p = ptr.reshape(S, NC + 1)
    want = {(s, c): bytes(stream[p[s, c]:p[s, c + 1]]) for s in range(S) for c in range(NC) if p[s, c + 1] > p[s, c]}
    return a, info, want


@pytest.mark.parametrize("kc,dec", [(2, "ballot"), (4, "lane"), (4, "ballot")])
def test_grouped_stream_holds_the_same_records(kc, dec):
    """tma 2's stream: by the kernel's rule (word w of the group-chunk's header: offset | bytes << 16), each strip's
    record of each chunk is the plain stream's, byte for byte; headers 16-byte aligned; a group-chunk fits its slot.
    300 rows: 19 strips, the last group partial; rows 40-99 empty (empty records inside full groups)."""
    h = host()
    a, info, want = _plain_records(h, kc, dec)
    gptr, gstream, ginfo = h.build_grouped(a, kc, "fp16", dec)
    S, NC = info["S"], info["NC"]
    assert ginfo["G"] == 5 and gptr.shape == (5 * (NC + 1),) and gptr.dtype == np.int32
    have = {s for s, _ in want}
    assert {2, 6, S - 1} <= have and not have & {3, 4, 5}
    assert h.ungroup(gptr, gstream, ginfo) == want
    assert ginfo["max_group"] <= h.group_slot_bytes(kc, dec) and np.all(np.diff(gptr) >= 0)
    assert ginfo["stream_bytes"] == info["stream_bytes"] + 16 * 5 * NC


@pytest.mark.parametrize("wg,kc,dec", [(2, 4, "lane"), (3, 2, "ballot"), (4, 4, "ballot")])
def test_block_grouped_stream_holds_the_same_records(wg, kc, dec):
    """blkrec 1 (session 22's draft): the records grouped a block's 4 wg strips a chunk (a 16 wg-byte header of 4 wg
    words, then the records): by the kernel's rule each strip's record of each chunk is the plain stream's, byte for
    byte; a group-chunk fits the block's wg group slots; the last group partial (19 strips), empty records inside full
    groups (rows 40-99); a group of other than 4-16 strips (4 a warpgroup) refused."""
    h = host()
    a, info, want = _plain_records(h, kc, dec)
    cfg = dict(wg=wg, blkrec=1)
    assert h.group_strips(cfg) == 4 * wg and h.group_strips({**cfg, "blkrec": 0}) == 4 == h.group_strips(dict(wg=wg))
    gptr, gstream, ginfo = h.build_grouped(a, kc, "fp16", dec, 4 * wg)
    S, NC = info["S"], info["NC"]
    G = -(-S // (4 * wg))
    assert ginfo["G"] == G and ginfo["group"] == 4 * wg and gptr.shape == (G * (NC + 1),)
    assert h.ungroup(gptr, gstream, ginfo) == want
    assert ginfo["max_group"] <= wg * h.group_slot_bytes(kc, dec) and np.all(np.diff(gptr) >= 0)
    assert ginfo["stream_bytes"] == info["stream_bytes"] + 16 * wg * G * NC
    assert np.all(gptr % 16 == 0)
    for bad in (2, 6, 20):
        with pytest.raises(ValueError):
            h.build_grouped(a, kc, "fp16", dec, bad)


def test_blkrec_renders_one_record_copy_a_block():
    """blkrec 1: one offset window and one bulk copy a chunk for the block (lane 0), warp w reads word w of the block's
    header; blkrec 0 (every stored config) renders the tma 2 kernel byte for byte but for the header line; the space
    offers blkrec at tma 2 and wg >= 2 only (elsewhere it is not a parameter of the config); the same shared memory;
    the arguments carry the block-grouped stream."""
    sp, h = space(), host()
    base = dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=3, wait=1, minb=1, ws=1, tma=2, red=1)
    old = render.render(sp, base, "fp16")
    assert render.render(sp, {**base, "blkrec": 0}, "fp16") == old and "NGRP" not in old
    assert "tma=2 red=1 blkrec=0\n" in old  # the header names every active parameter (the code is tma 2's as before)
    assert "blkrec" not in render.render(sp, {**base, "wg": 1}, "fp16")  # not a parameter at wg 1
    assert sp.normalize(base, "fp16")["blkrec"] == 0
    new = render.render(sp, {**base, "blkrec": 1}, "bf16")
    assert "tma=2 red=1 blkrec=1\n" in new and "#define NGRP 1" in new
    assert "int pw0[NGRP], pw1[NGRP];" in new and "int pw0[WG], pw1[WG];" in old
    assert "const bool sok = lane < NGRP && pstrip < (S + WARPS - 1) / WARPS;" in new
    assert new.count("const unsigned int gs = abase + cst * WG * GSLOT;") == 2  # both unrolled steps
    assert new.count('"r"(gs + 4u * warp)') == 2 and "(warp & 3)" not in new
    assert new.count("bulk_g2s(as, stream + p_lo") == 1 and "const unsigned int as = abase + (st * WG + lane) * GSLOT;" in new
    assert h.shared_bytes({**base, "blkrec": 1}) == h.shared_bytes(base)
    env = problem_env(4096, 4096, 128, 1_677_722, "fp16")
    assert sp.check({**base, "blkrec": 1}, env, DEFAULT_LIMITS) is None
    for other in ({**base, "wg": 1}, {**base, "tma": 1}, {**base, "ws": 0, "tma": 0, "red": 0}):
        assert "blkrec" not in sp.normalize(other, "fp16"), other
    blk = [c for c in sp.enumerate("fp16") if c.get("blkrec")]
    assert blk and all(c["tma"] == 2 and c["wg"] >= 2 for c in blk)
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    k = fake_kernel(FAMILY, {**base, "blkrec": 1, "bn": 64}, "fp16", a)
    args = h.args(k, 200, "B", "C")
    gptr, gstream, _ = h.build_grouped(a, 4, "fp16", "lane", 8)
    np.testing.assert_array_equal(args[0].host, gptr)
    np.testing.assert_array_equal(args[1].host, gstream)
    assert (h.geometry(k, 200)[0][0] * 128,) == args[-1].host.shape


def test_tma_renders_its_producer_and_consumers():
    """tma 1: full counts one arrival (expect_tx of B's and the records' bytes), B by cp.async.bulk.tensor from the
    block's patched copy of the map, no cp.async in the loop, consumers without the proxy fence, two more kernel
    parameters; tma 2: one bulk copy a warpgroup (GSLOT), the warp's record found by its header word, the zero header;
    tma 0 (every stored config) renders the third step's kernel (the header's "tma=0" aside)."""
    sp = space()
    base = dict(bn=128, kc=4, dec="lane", wg=3, stages=4, splitk=2, wait=1, minb=1, ws=1)
    old = render.render(sp, base, "fp16")
    assert old == render.render(sp, {**base, "tma": 0}, "fp16") and sp.normalize(base, "fp16")["tma"] == 0
    assert "tma=0 red=0\n" in old and "tmaps" not in old and "cp.async.bulk.tensor" not in old
    t1 = render.render(sp, {**base, "tma": 1}, "fp16")
    t2 = render.render(sp, {**base, "tma": 2}, "bf16")
    for src in (t1, t2):
        assert "int cps, int ntiles, const unsigned int* __restrict__ tmpl, unsigned char* __restrict__ tmaps)" in src
        assert "mbar_init(full + 8 * st, 1);" in src and "mbar_arrive_tx(full + 8 * st, total + BST);" in src
        assert "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes" in src
        assert "tensormap.replace.tile.global_address.shared::cta.b1024.b64" in src
        assert "tensormap.cp_fenceproxy.global.shared::cta.tensormap::generic.release.gpu.sync.aligned" in src
        assert "fence.proxy.tensormap::generic.acquire.gpu" in src
        prod = src[src.index("if (warp == WARPS) {"):src.index("    } else {")]
        assert "cp_async16(" not in prod and "cp_async_arrive" not in prod and "cp.async.wait_all" not in prod
        cons = src[src.index("    } else {"):]
        assert "mbar_wait(full + 8 * cst, cph);" in cons and "fence_proxy_async();" not in cons
    assert "minb=1 ws=1 tma=1 red=0\n" in t1 and "GSLOT" not in t1
    assert f"#define GSLOT {16 + 4 * (128 + 512 * 4)}" in t2 and "#define WG 3" in t2
    assert "const unsigned int as = abase + (st * WG + lane) * GSLOT;" in t2
    assert t2.count("decode(af0, (hw >> 16) ? gs + (hw & 0xffffu) : smap + 128u, lt, lb);") == 1
    assert "if (tid < HDR / 16) sts128_zero(smap + 128u + 16u * tid);" in t2
    assert "abase + STAGES * WG * GSLOT - sbase" in t2 and "abase + STAGES * WG * GSLOT + 16" in t2


def test_tma_args_shared_memory_and_constraints(monkeypatch):
    """tma: the arguments end with the map's template (32 words, encoded once per N; zeros for the N = 1 of a_bytes,
    which never launches) and 128 bytes a block; tma 2 passes the grouped stream; shared memory as the constraint
    counts it; tma needs ws 1."""
    from fakes import signature
    h = host()
    fake = _FakeEncode()
    monkeypatch.setattr("sparse_autotune.device.gpu.libcuda", lambda: type("Lib", (), {"cuTensorMapEncodeTiled": fake})())
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(bn=64, kc=4, dec="lane", wg=2, stages=4, splitk=4, wait=1, minb=1, ws=1, tma=1)
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    (grid,), _ = h.geometry(k, 200)
    args = h.args(k, 200, "B", "C")
    sig = signature(k.source)
    assert len(args) == len(sig) == 15 and [nm for nm, _ in sig][-2:] == ["tmpl", "tmaps"]
    assert args[13].host.dtype == np.uint32 and args[13].host.view(np.uint8).tolist() == list(range(128))
    assert args[14].host.shape == (128 * grid,) and not args[14].host.any()
    assert fake.calls[0]["dims"] == [200, 3000] and fake.calls[0]["box"] == [64, 64]
    h.args(k, 200, "B", "C")
    assert len(fake.calls) == 1  # cached with A per N
    assert not h.args(k, 1, "B", "C")[13].host.any() and len(fake.calls) == 1
    np.testing.assert_array_equal(args[1].host, h.build(a, 4, "fp16", "lane")[1])
    g = h.args(fake_kernel(FAMILY, {**cfg, "tma": 2}, "fp16", a), 200, "B", "C")
    gptr, gstream, _ = h.build_grouped(a, 4, "fp16", "lane")
    np.testing.assert_array_equal(g[0].host, gptr)
    np.testing.assert_array_equal(g[1].host, gstream)
    sp = space()
    env = problem_env(4096, 4096, 128, 1_600_000, "fp16")
    ws = dict(bn=128, kc=4, dec="lane", wg=3, stages=4, splitk=2, wait=1, minb=1, ws=1)
    assert h.shared_bytes({**ws, "tma": 1}) == h.shared_bytes(ws) + 256
    assert h.shared_bytes({**ws, "tma": 2}) == h.shared_bytes(ws) + 384 + 16 * 4 * 3
    for c in ({**ws, "tma": 1}, {**ws, "tma": 2}, {**ws, "tma": 2, "bn": 64, "wg": 4, "stages": 5}):
        need = h.shared_bytes(c)
        assert sp.check(c, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need}) is None, c
        assert sp.check(c, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need - 1}) is not None, c
    why = sp.check({**ws, "ws": 0, "tma": 1}, env, DEFAULT_LIMITS)
    assert why is not None and "producer" in why


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", pytest.param("bf16", marks=pytest.mark.heavy)])  # bf16: the heavy tier
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(300, 1000, 0.1, "uniform", 0)
    for n in (40, 64, 200):
        assert check_launch_matches_signature(FAMILY, dtype, a, n) > 0


def test_fp32_is_not_computed():
    assert not space().supports("fp32")
    assert check_launch_matches_signature(FAMILY, "fp32", random_matrix(64, 256, 0.1, "uniform", 0), 64) == 0


def test_configs_render_wgmma_for_both_dtypes():
    """Every 29th config renders (fp16 and bf16 in turn: the dtype changes only the wgmma's and the conversion's type,
    and the space doubled with ws); of the red 1 configs (the red 0 twin's kernel with another epilogue) every 47th,
    of the blkrec 1 ones (session 22's draft: tma 2's kernel with another record grouping) every 73rd, to keep CI's
    time (every third / fifth / eighth, 75k renders, took a minute). Every value of every parameter is among those
    rendered."""
    sp = space()
    count, seen, turn, reds, blks, total = 0, set(), {}, 0, 0, 0
    values: dict = {}
    for cfg in sp.enumerate("fp16"):
        total += 1
        if cfg.get("blkrec"):  # blkrec 1: every 73rd
            blks += 1
            if blks % 73:
                continue
        elif cfg["red"]:
            reds += 1
            if reds % 47:
                continue
        elif (total - reds - blks) % 29:
            continue
        key = (cfg["ws"], cfg["red"])
        turn[key] = turn.get(key, 0) + 1
        dtype, mt = (("fp16", "f16"), ("bf16", "bf16"))[turn[key] % 2]
        src = render.render(sp, cfg, dtype)
        assert f"wgmma.mma_async.sync.aligned.m64n{cfg['bn']}k16.f32.{mt}.{mt} " in src
        assert "p, 1, 1, 1;" in src  # scale-d, scale-a, scale-b, trans-b (B is N-major)
        assert "fence.proxy.async.shared::cta" in src and "mma.sync" not in src
        assert ("mbarrier.try_wait" in src) == (cfg["ws"] == 1)
        assert ("__cluster_dims__" in src) == (cfg["red"] == 1)
        seen.add((dtype, cfg["ws"], cfg["red"]))
        for k, v in cfg.items():
            values.setdefault(k, set()).add(v)
        count += 1
    assert total == sp.size("fp16") > 200 and count > 4000 and len(seen) == 8 and blks
    assert values == {p.name: set(p.choices("fp16")) for p in sp.params if p.name in values}
    assert set(values) == {p.name for p in sp.params}


def test_red_renders_a_cluster_reduction_and_the_space_bounds_it():
    """red 1: the kernel is a cluster of splitk blocks (compile-time cluster dims), a tile's splits are consecutive
    blocks, the reduction reads the peers' shared memory (mapa + ld.shared::cluster) between two cluster barriers and
    needs no workspace counter; red 0 renders none of it. The space refuses red 1 at split-K 1 or above 8, and where
    the accumulators would not fit over the pipeline's shared memory."""
    sp = space()
    base = dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=4, wait=1, minb=1, ws=1, tma=2)
    src1 = render.render(sp, {**base, "red": 1}, "fp16")
    src0 = render.render(sp, {**base, "red": 0}, "fp16")
    assert "__cluster_dims__(SPLITK, 1, 1)" in src1 and "__cluster_dims__" not in src0
    assert src1.count("cluster_sync();") == 1 and src1.count("cluster_sync_relaxed();") == 1
    assert "mapa.shared::cluster.u32" in src1
    assert "ld.shared::cluster.v4.f32" in src1 and "atomicAdd(counters" not in src1
    assert "atomicAdd(counters" in src0 and "barrier.cluster" not in src0
    assert src0 == render.render(sp, base, "fp16")  # configs stored before red render as before
    env = problem_env(4096, 4096, 128, 1_677_722, "fp16")
    assert sp.check({**base, "red": 1}, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "red": 1, "splitk": 1}, env, DEFAULT_LIMITS) is not None
    assert sp.check({**base, "red": 1, "splitk": 16}, env, DEFAULT_LIMITS) is not None
    small = dict(bn=128, kc=2, dec="lane", wg=4, stages=2, splitk=2, wait=1, minb=1, ws=1, tma=2, red=1)
    # 2 stages x (8 KB of B + 4 x 4.4 KB of records) < 128 KB of accumulators (wg 4 x 128 threads x 64 x 4 bytes)
    assert sp.check(small, env, DEFAULT_LIMITS) is not None


def test_c_is_staged_through_shared_memory_where_the_b_stages_hold_it():
    """The last store of C (not red 1's cluster reduction) goes through shared memory (the storing warps' 16 rows at
    2 bn + 16 bytes a row, over B's stages, after a consumer barrier) where stages x KC x bn x 2 bytes hold it; the
    direct 32-bit stores stay for a C not 16-byte aligned and for configs whose stages are too small."""
    sp = space()
    base = dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=1, wait=1, minb=1, ws=1, tma=2, red=0, blkrec=0, wgk=0)
    src = render.render(sp, base, "fp16")
    assert "st.global.v4.u32" in src and 'asm volatile("bar.sync 1, 256;"' in src
    assert "*reinterpret_cast<unsigned int*>(C + (size_t)row * N + col)" in src
    small = {**base, "bn": 64, "kc": 1, "stages": 2, "wg": 1}  # 2 x 16 x 64 x 2 bytes < 4 warps x 16 x 144
    assert "st.global.v4.u32" not in render.render(sp, small, "fp16")
    red = {**base, "splitk": 2, "red": 1}
    assert "st.global.v4.u32" not in render.render(sp, red, "fp16")  # red 1 stores from its cluster reduction
    wgk = {**base, "wgk": 1}
    s = render.render(sp, wgk, "fp16")
    assert 'asm volatile("bar.sync 2, 128;"' in s and "bbase + (warp & 3) * (16 * 272)" in s


def test_hopper_helpers_are_shared_not_copied():
    """tc_wgmma and tc_sp24 take their mbarrier, bulk-copy, TMA, wgmma-fence and cluster helpers and the staged C store
    from variants/_hopper.cu.j2 and _hopper_c.j2: each helper is defined once in a rendered kernel and in neither
    family's template."""
    from sparse_autotune.core.families import template_folders
    folder = next(f for f in template_folders() if (f / "tc_wgmma.cu.j2").exists())
    names = ("mbar_init", "mbar_wait", "bulk_g2s", "tma_g2s", "wgmma_fence", "fence_acc", "pack2f", "stamp")
    for fam in ("tc_wgmma", "tc_sp24"):
        text = (folder / f"{fam}.cu.j2").read_text()
        assert all(f"__forceinline__ void {n}(" not in text and f"unsigned int {n}(" not in text for n in names), fam
        assert '{%- include "_hopper.cu.j2" %}' in text
    src = render.render(space(), dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=1, wait=1, minb=1, ws=1, tma=2,
                                      red=0, blkrec=0, wgk=0, pmap=1), "fp16", {"diag": 9})
    for n in ("mbar_init", "bulk_g2s", "tma_g2s", "wgmma_fence", "fence_acc", "stamp"):
        assert len(re.findall(rf"__forceinline__ void {n}\(", src)) == 1, n
    assert src.count("struct __align__(64) TensorMap128") == 1


def test_wait0_path_renders_its_pipeline():
    """wait 0 (second step): one chunk of A registers, wgmma.wait_group 0 after every chunk, prefetch distance stages -
    1 (the prologue loads stages - 1 chunks), __launch_bounds__(threads, minb); wait 1 (the defaults) keeps today's
    kernel: two register chunks, wait_group 1, distance stages - 2, one block. The lane decode walks kc independent
    runs (one pointer a k-step)."""
    sp = space()
    new = render.render(sp, dict(bn=128, kc=4, dec="lane", wg=1, stages=2, splitk=3, wait=0, minb=4), "fp16")
    old = render.render(sp, sp.normalize(dict(bn=128, kc=4, dec="lane", wg=1, stages=4, splitk=3), "fp16"), "fp16")
    assert "__launch_bounds__(THREADS, 4)" in new and "__launch_bounds__(THREADS, 1)" in old
    assert "wgmma_wait<0>();  // chunk" in new and "wgmma_wait<1>();  // chunk" not in new
    assert "wgmma_wait<1>();  // chunk" in old and "wgmma_wait<0>();  // chunk" not in old
    assert "af1" not in new and "unsigned int af0[KCK][4], af1[KCK][4];" in old
    for src, d in ((new, 1), (old, 2)):
        assert f"for (int i = 0; i < {d}; ++i) load(i);" in src and f"cp_wait<{d - 1}>();" in src
        assert "load(i + %d);" % d in src and "load(i + 1 + %d);" % d in src
        assert all(f"unsigned int vp{kk} = " in src for kk in range(4)) and "vp4" not in src


KNOWN = [dict(kg) for kg in get_family(FAMILY).space.known_good]
# the second step's path (wait 0, minb blocks an SM) beyond its known-good configs: kc 2, two warpgroups, the ballot
# decode, a residue of K in the last chunk (GPU cases), minb with wait 1
WAIT0 = [dict(bn=128, kc=2, dec="lane", wg=1, stages=4, splitk=3, wait=0, minb=4),
         dict(bn=64, kc=4, dec="lane", wg=1, stages=3, splitk=8, wait=0, minb=4),
         dict(bn=64, kc=4, dec="ballot", wg=2, stages=2, splitk=2, wait=0, minb=2),
         dict(bn=64, kc=2, dec="lane", wg=2, stages=3, splitk=1, wait=1, minb=2)]
# the third step's path (ws 1: a producer warp, mbarriers, bulk record copies) beyond its known-good configs: the ballot
# decode (its larger header zeroed for empty records), kc 2, one warpgroup with minb 3, wait 0 at two warpgroups
WS = [dict(bn=128, kc=2, dec="ballot", wg=2, stages=4, splitk=2, wait=1, minb=1, ws=1),
      dict(bn=64, kc=4, dec="ballot", wg=1, stages=3, splitk=1, wait=0, minb=3, ws=1),
      dict(bn=128, kc=4, dec="lane", wg=2, stages=5, splitk=4, wait=0, minb=1, ws=1)]
# the fourth step's path (tma 1: B by TMA; tma 2: and a warpgroup's records by one bulk copy) beyond its known-good
# configs: kc 2 (a 32-row box, LBO 4096), the ballot decode (tma 2: empty records read the zeros after the map), one
# warpgroup with minb 3, wait 0
TMA = [dict(bn=128, kc=2, dec="lane", wg=2, stages=4, splitk=2, wait=1, minb=1, ws=1, tma=1),
       dict(bn=64, kc=4, dec="ballot", wg=2, stages=4, splitk=1, wait=0, minb=2, ws=1, tma=2),
       dict(bn=128, kc=2, dec="ballot", wg=1, stages=4, splitk=1, wait=0, minb=3, ws=1, tma=2)]
# session 18's path (red 1: split-K reduced through the cluster's shared memory): the four measured bests with it, the
# ballot decode at a split-K of 3 (a tile's columns not a multiple of the split), no producer warp (ws 0, tma 0), tma 1
RED = [dict(kg, red=1) for kg in get_family(FAMILY).space.known_good if kg.get("tma") == 2 and kg["splitk"] > 1][:4] + [
       dict(bn=128, kc=2, dec="ballot", wg=1, stages=3, splitk=3, wait=1, minb=1, ws=0, tma=0, red=1),
       dict(bn=64, kc=2, dec="ballot", wg=1, stages=3, splitk=3, wait=1, minb=1, ws=1, tma=1, red=1),
       dict(bn=128, kc=4, dec="lane", wg=3, stages=4, splitk=8, wait=1, minb=1, ws=1, tma=2, red=1)]

# session 22's draft (blkrec 1, tma 2: a block's records of a chunk by one bulk copy): the 4096^2 / 11008 N=128 bests
# with it (wg 2 / 3, red 1 and 0), N = 64's minb 2, four warpgroups (16 records a group, the ballot decode's empty
# records and wait 0), kc 2 at split-K 3
BLKREC = [dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=3, wait=1, minb=1, ws=1, tma=2, red=1, blkrec=1),
          dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=4, wait=1, minb=1, ws=1, tma=2, red=0, blkrec=1),
          dict(bn=128, kc=4, dec="lane", wg=3, stages=4, splitk=2, wait=1, minb=1, ws=1, tma=2, red=1, blkrec=1),
          dict(bn=64, kc=4, dec="lane", wg=2, stages=4, splitk=2, wait=1, minb=2, ws=1, tma=2, red=1, blkrec=1),
          dict(bn=64, kc=2, dec="ballot", wg=4, stages=5, splitk=1, wait=0, minb=1, ws=1, tma=2, red=0, blkrec=1),
          dict(bn=64, kc=2, dec="ballot", wg=3, stages=4, splitk=3, wait=1, minb=1, ws=1, tma=2, red=1, blkrec=1)]

def _sm_registers(cfg: dict, regs: int) -> int:
    """Registers minb blocks take on the fullest of an SM's 4 schedulers, x 4 (each has 16384): warps are spread over
    the schedulers, so a 9-warp block of ws 1 (2 warpgroups + the producer) counts as 3 warps on one of them."""
    warps = (4 * cfg["wg"] + cfg.get("ws", 0)) * cfg["minb"]
    return regs * 32 * 4 * (-(-warps // 4))


def _covering():
    """One config of every bn x kc x wg feasible at N = 128 (4096 x 4096, d 0.1), dec, stages and split-K taken in
    turn."""
    env = problem_env(4096, 4096, 128, 1_600_000, "fp16")
    by_key: dict = {}
    for cfg in space().feasible("fp16", env, DEFAULT_LIMITS):
        if cfg["ws"]:  # the second step's sample, as it was (ws 1: the known-good configs and WS)
            continue
        key = (cfg["bn"], cfg["kc"], cfg["wg"])
        if cfg["dec"] == ("ballot", "lane")[(cfg["bn"] // 64 + cfg["kc"] // 2 + cfg["wg"]) % 2]:  # each dec in turn
            by_key.setdefault(key, []).append(cfg)
    out = []
    for i, cands in enumerate(by_key.values()):
        want = ((3, 4, 5, 6)[i % 4], (1, 2, 4)[i % 3])
        out.append(next((c for c in cands if (c["stages"], c["splitk"]) == want), cands[-1]))
    return out


@pytest.mark.parametrize("dtype", ["fp16", pytest.param("bf16", marks=pytest.mark.heavy)])  # bf16: the heavy tier
def test_covering_sample_compiles_for_sm90a_with_hgmma_and_without_spills(dtype):
    """nvcc 13 for sm_90a: no spills, no stack, no wgmma serialization warning; where cuobjdump is on the PATH, the SASS
    has exactly kc HGMMA per chunk step (two steps unrolled) with the B operand transposed."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = space()
    # (2 CPUs in CI: ~3 s a compile; bf16 differs only in the wgmma's type: every other known-good config)
    cfgs = KNOWN + _covering()[::3] + WAIT0 + WS + TMA[:2] if dtype == "fp16" else KNOWN[::2]
    assert len(cfgs) >= (12 if dtype == "fp16" else 5) and any(c.get("ws") for c in cfgs)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: _nvcc_sm90a(render.render(sp, c, dtype), sass=True), cfgs))
    for cfg, (rep, sass) in zip(cfgs, got):
        assert "entry function 'spmm_kernel' for 'sm_90a'" in rep, cfg
        assert re.search(r"0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)
        assert "C7510" not in rep and "serializ" not in rep, (cfg, rep)  # wgmma pipeline kept
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        assert _sm_registers(cfg, regs) <= 65536, (cfg, regs)  # minb blocks fit an SM's registers
        if sass:
            hg = re.findall(r"HGMMA\.64x(\d+)x16\.F32\S* .*tnspB", sass)
            assert len(hg) == 2 * cfg["kc"] and set(hg) == {str(cfg["bn"])}, (cfg, hg)
            if cfg.get("ws"):  # the producer's bulk copies and the mbarrier waits; no block barrier but the setup's
                assert "UBLKCP" in sass and "SYNCS.PHASECHK" in sass, cfg
                assert ("ARRIVES.LDGSTSBAR" in sass) == (not cfg.get("tma")), cfg  # B by cp.async, or by TMA:
                assert ("UTMALDG.2D" in sass) == bool(cfg.get("tma")), cfg


def _check_build(cfg, rep):
    assert "entry function 'spmm_kernel' for 'sm_90a'" in rep, cfg
    assert re.search(r"0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads", rep), (cfg, rep)
    assert "C7510" not in rep and "serializ" not in rep, (cfg, rep)
    regs = int(re.search(r"Used (\d+) registers", rep).group(1))
    assert _sm_registers(cfg, regs) <= 65536, (cfg, regs)
    return regs


def test_blkrec_compiles_for_sm90a_without_spills():
    """blkrec 1, the 4096^2 N=128 candidate (wg 2, split-K 3, red 1): sm_90a, no spills, the registers of its blkrec 0
    twin or fewer (one offset window, not wg); ~4 s on 2 CPUs (the other blkrec configs: the heavy tier's test)."""
    new, old = _twin_registers(BLKREC[0], "blkrec", 0)
    assert new <= old


def _twin_registers(cfg: dict, name: str, value) -> tuple[int, int]:
    """Registers of cfg and of its twin with `name` = value, both built for sm_90a at once and checked (_check_build:
    no spills, registers fit); skips without nvcc."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp, twin = space(), {**cfg, name: value}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        (new, _), (old, _) = pool.map(lambda c: _nvcc_sm90a(render.render(sp, c, "fp16")), (cfg, twin))
    return _check_build(cfg, new), _check_build(twin, old)


@pytest.mark.heavy
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_blkrec_configs_compile_for_sm90a_with_hgmma_and_without_spills(dtype):
    """Every BLKREC config (the GPU tests' list) for sm_90a: no spills, registers fit minb blocks; with cuobjdump, kc
    HGMMA a step and the producer's bulk copies and TMA loads."""
    _compile_sm90a_with_hgmma(BLKREC, dtype, 4, ("UBLKCP", "UTMALDG.2D", "SYNCS.PHASECHK"))


def _compile_sm90a_with_hgmma(cfgs: list[dict], dtype: str, threads: int, markers: tuple[str, ...]) -> None:
    """Each config compiled for sm_90a (`threads` nvcc at once): no spills, registers fit (_check_build); with
    cuobjdump, 2 x kc HGMMA.64x{bn}x16 with B transposed a step, and each SASS marker present."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = space()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(lambda c: _nvcc_sm90a(render.render(sp, c, dtype), sass=True), cfgs))
    for cfg, (rep, sass) in zip(cfgs, got):
        _check_build(cfg, rep)
        if sass:
            hg = re.findall(r"HGMMA\.64x(\d+)x16\.F32\S* .*tnspB", sass)
            assert len(hg) == 2 * cfg["kc"] and set(hg) == {str(cfg["bn"])}, (cfg, hg)
            assert all(m in sass for m in markers), (cfg, markers)


def test_nvrtc_builds_wgmma_with_the_familys_arch_beside_cupys():
    """What device.compile does on an H100/H200: CuPy's own -arch=sm_90 and the family's -arch=sm_90a together build
    (NVRTC needs no GPU); -arch=sm_90 alone rejects wgmma."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    src = render.render(space(), KNOWN[0], "bf16")

    def build(opts):
        prog = nvrtc.createProgram(src, "k.cu", [], [])
        try:
            nvrtc.compileProgram(prog, ["-std=c++17", *opts])
            return len(nvrtc.getCUBIN(prog))
        except Exception:  # noqa: BLE001
            return 0
    try:
        assert build(["-arch=sm_90a", "-arch=sm_90"]) > 0
        assert build(["-arch=sm_90", "-arch=sm_90a"]) > 0
    except Exception as exc:  # noqa: BLE001 - no libnvrtc on this machine
        pytest.skip(f"NVRTC unavailable: {exc}")
    assert build(["-arch=sm_90"]) == 0
    assert space().arch == "sm_90a"


def test_shared_memory_follows_the_config():
    h = host()
    sp = space()
    cfg = dict(bn=128, kc=4, dec="ballot", wg=2, stages=4, splitk=1, wait=1, minb=1)
    want = 1024 + 4 * (64 * 128 * 2) + 4 * 8 * h.slot_bytes(4) + 16
    assert h.shared_bytes(cfg) == want and h.slot_bytes(4) == 96 + 2048 and h.slot_bytes(2) == 48 + 1024
    assert h.shared_bytes({**cfg, "dec": "lane"}) == want + 4 * 8 * 32 and h.slot_bytes(2, "lane") == 128 + 1024
    k = fake_kernel(FAMILY, cfg, "fp16", random_matrix(64, 4096, 0.01, "uniform", 0))
    assert h.smem_bytes(k) == want
    ws = {**cfg, "dec": "lane", "wg": 3, "ws": 1}  # + two 8-byte mbarriers a stage
    assert h.shared_bytes(ws) == 1024 + 4 * (64 * 128 * 2) + 4 * 12 * h.slot_bytes(4, "lane") + 16 + 4 * 16
    env = problem_env(4096, 4096, 128, 1_600_000, "fp16")
    for c in (cfg, {**cfg, "bn": 64, "stages": 6}, {**cfg, "kc": 2, "wg": 4, "stages": 5, "dec": "lane"}, ws,
              {**ws, "bn": 64, "wg": 4, "stages": 5}):
        c = sp.normalize(c, "fp16")  # as the tuner and adapt() check a config (a constraint naming an absent ws holds)
        need = h.shared_bytes(c)
        assert sp.check(c, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need}) is None, c
        assert sp.check(c, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need - 1}) is not None, c


def test_constraints_refuse_other_gpus_and_n():
    sp = space()
    base = dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=1, wait=1, minb=1, ws=0)
    env = problem_env(4096, 4096, 128, 1_600_000, "fp16")
    assert sp.check(base, env, DEFAULT_LIMITS) is None
    for sm in (80, 89, 100, 120):  # sm_90a code runs on Hopper only
        why = sp.check(base, env, {**DEFAULT_LIMITS, "sm": sm})
        assert why is not None and "Hopper" in why
    for n in (1, 3, 4, 127):
        e = problem_env(4096, 4096, n, 1_600_000, "fp16")
        assert not list(sp.feasible("fp16", e, DEFAULT_LIMITS)), n
    assert sp.check({**base, "bn": 128}, problem_env(4096, 4096, 64, 1_600_000, "fp16"), DEFAULT_LIMITS) is not None
    assert sp.check({**base, "bn": 64}, problem_env(4096, 4096, 64, 1_600_000, "fp16"), DEFAULT_LIMITS) is None
    assert sp.check({**base, "wg": 4}, env, DEFAULT_LIMITS) is not None  # registers: 4 x 128 threads x 128 + ...
    # ws 1: a 9-warp block puts 3 warps on a scheduler, so two of them at bn 128 would get 96 registers (ptxas spills)
    ws = {**base, "wait": 0, "stages": 3, "ws": 1}
    assert sp.check(ws, env, DEFAULT_LIMITS) is None and sp.check({**ws, "minb": 2}, env, DEFAULT_LIMITS) is not None
    assert sp.check({**ws, "wg": 3, "wait": 1}, env, DEFAULT_LIMITS) is None  # 13 warps: 128 registers
    assert sp.check({**ws, "wg": 4}, env, DEFAULT_LIMITS) is not None  # 17 warps: 96 registers at bn 128
    assert sp.check({**ws, "wg": 4, "bn": 64}, problem_env(4096, 4096, 64, 1_600_000, "fp16"), DEFAULT_LIMITS) is None
    assert sp.check({**base, "splitk": 16}, problem_env(4096, 320, 128, 100_000, "fp16"), DEFAULT_LIMITS) is not None
    for n in (8, 16, 24, 32, 40, 64, 128, 200, 256):  # some config runs (the first found: feasible is lazy)
        assert next(iter(sp.feasible("fp16", problem_env(4096, 4096, n, 1_600_000, "fp16"), DEFAULT_LIMITS)), None), n


def test_gpu_limits_carry_the_compute_capability():
    """The sm constraint reads limits["sm"]: GpuInfo.limits() gives it (an H200: 90) and the CPU default is Hopper."""
    from sparse_autotune.device.gpu import GpuInfo
    info = GpuInfo("NVIDIA H200", "9.0", "sm_90", 132, 60 << 20, 48 << 10, 227 << 10, 1024, "x", "13.0", "14")
    assert info.limits()["sm"] == 90 and DEFAULT_LIMITS["sm"] == 90
    assert GpuInfo("A100", "8.0", "sm_80", 108, 40 << 20, 48 << 10, 163 << 10, 1024, "x", "13.0", "14").limits()["sm"] == 80


def test_adapt_to_another_n():
    fam = get_family(FAMILY)
    cfg = dict(bn=128, kc=4, dec="ballot", wg=2, stages=4, splitk=4, wait=1, minb=1, ws=0, tma=0)
    got = fam.adapt(cfg, "fp16", problem_env(4096, 4096, 64, 1_600_000, "fp16"), DEFAULT_LIMITS)
    assert got == {**cfg, "bn": 64, "red": 0}  # the parameters it left out at their defaults
    assert fam.adapt(cfg, "fp16", problem_env(4096, 4096, 127, 1_600_000, "fp16"), DEFAULT_LIMITS) is None


def test_geometry_and_workspace_follow_the_config():
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(bn=64, kc=4, dec="lane", wg=2, stages=4, splitk=4, wait=1, minb=1)
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    S = -(-1000 // 16)
    rb = -(-S // 8)
    grid, block = h.geometry(k, 200)  # 4 column tiles of 64
    assert block == (256,) and grid == (rb * 4 * 4,)
    args = h.args(k, 200, "B", "C")
    ws, cnt = args[2], args[3]
    assert ws.host.shape == (rb * 4 * 4 * 256 * 32,) and cnt.host.shape == (rb * 4,) and not cnt.host.any()
    assert args[4:6] == ("B", "C") and int(args[-1]) == 4 and int(args[-2]) == -(-(-(-3000 // 64)) // 4)
    ptr, stream = args[0].host, args[1].host
    ref_ptr, ref_stream, _ = h.build(a, 4, "fp16", "lane")
    np.testing.assert_array_equal(ptr, ref_ptr)
    np.testing.assert_array_equal(stream, ref_stream)
    # ws 1: one more warp a block; the workspace still holds the 256 consumer threads' accumulators; the same stream
    kw = fake_kernel(FAMILY, {**cfg, "ws": 1}, "fp16", a)
    assert h.geometry(kw, 200) == ((rb * 4 * 4,), (288,))
    args = h.args(kw, 200, "B", "C")
    assert args[2].host.shape == (rb * 4 * 4 * 256 * 32,)
    np.testing.assert_array_equal(args[1].host, ref_stream)
    # red 1 (split-K through the cluster) takes no workspace: splitk 1's placeholder
    kr = fake_kernel(FAMILY, {**cfg, "ws": 1, "tma": 2, "red": 1}, "fp16", a)
    wr, cr = h.args(kr, 200, "B", "C")[2:4]
    assert wr.host.shape == (4,) and cr.host.shape == (1,)


# ---- on the GPU -------------------------------------------------------------------------------------------

def _check_matrices(cases, dtype, n, configs_for, checked=0):
    """space_checks.check_matrices_on_gpu for this family."""
    return check_matrices_on_gpu(FAMILY, cases, dtype, n, configs_for, checked)


def _adapted(cfgs, n, dtype):
    """The configs adapted to N (family.adapt), each at its own split-K and at 1 where feasible (the producer's return
    at split-K 1), without repeats."""
    sp, fam = space(), get_family(FAMILY)
    env = problem_env(130, 3000, n, 40_000, dtype)
    out = []
    for cfg in cfgs:
        cfg = fam.adapt(cfg, dtype, env, DEFAULT_LIMITS)
        for splitk in dict.fromkeys((cfg["splitk"], 1) if cfg else ()):
            c = {**cfg, "splitk": splitk}
            if sp.check(c, env, DEFAULT_LIMITS) is None and c not in out:
                out.append(c)
    return out


def _gpu_configs(n, dtype):
    """The known-good configs and the covering sample adapted to N, each with split-K 1 and 2 where feasible (every
    bn, kc, wg and stages value at least once); ws 1 configs with their own split-K and 1 (the producer's two exits:
    joining the split-K barriers, or returning)."""
    sp = space()
    env = problem_env(130, 3000, n, 40_000, dtype)
    fam = get_family(FAMILY)
    out = []
    for cfg in KNOWN + WAIT0 + WS + TMA + RED + _covering():
        cfg = fam.adapt(cfg, dtype, env, DEFAULT_LIMITS)
        if cfg is None:
            continue
        for splitk in dict.fromkeys((cfg["splitk"], 1) if cfg.get("ws") else (cfg["splitk"], 1, 2)):
            c = {**cfg, "splitk": splitk}
            if sp.check(c, env, DEFAULT_LIMITS) is None and c not in out:
                out.append(c)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("n", [40, 64, 128, 192])  # a test an N: xdist spreads them (one test a dtype took 60-140 s)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_correct_on_edge_cases(dtype, n):
    """Through the project's launch path (build_kernel with the family's sm_90a, Kernel.__call__): poisoned C, fresh
    random B, float64 reference; every kernel launched twice (split-K's counters must reset themselves). Every config
    on the uniform matrix, every third on the edge cases (all of them at N = 128)."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_wgmma runs on Hopper (sm_90a) only")
    cases = adversarial()
    cases["uniform_1000x4096_d0.1"] = random_matrix(1000, 4096, 0.1, "uniform", 3)
    every = _gpu_configs(n, dtype)

    def configs_for(name):
        return every if name == "uniform_1000x4096_d0.1" or n == 128 else every[::3]
    want = sum(2 * len(configs_for(name)) for name in cases)
    assert _check_matrices(cases, dtype, n, configs_for) == want and want > 300


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8, 16, 24, 32])  # a test an N (xdist spreads them)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_correct_at_small_n(dtype, n):
    """N = 8-32 (session 19): the known-good configs adapted to N (bn 64, most of the tile's columns past N: B's box
    reads zeros there and C's stores must stop at N), each at its own split-K and at 1, on the edge cases and a
    uniform 1000 x 4096; poisoned C, fresh random B, float64 reference, launched twice."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_wgmma runs on Hopper (sm_90a) only")
    cases = adversarial()
    cases["uniform_1000x4096_d0.1"] = random_matrix(1000, 4096, 0.1, "uniform", 3)
    cfgs = _small_n_configs(n, dtype)
    assert len(cfgs) >= 6, (n, cfgs)
    assert _check_matrices(cases, dtype, n, lambda name: cfgs) == 2 * len(cfgs) * len(cases) > 100


def _small_n_configs(n, dtype):
    """The small-N GPU test's configs: the first 8 known-good and 2 red 1 ones, adapted to N."""
    return _adapted(KNOWN[:8] + RED[:2], n, dtype)


def _blkrec_configs(n, dtype):
    """BLKREC adapted to N (bn 128 -> 64 below N = 128), each at its own split-K and at 1 (the producer's return)."""
    return _adapted(BLKREC, n, dtype)


# configs a (dtype, N) of the blkrec GPU test: red 1 needs split-K >= 2, so only the red 0 config at split-K 4 gets a
# split-K 1 twin (7 at every N)
BLKREC_COUNT = {16: 7, 64: 7, 128: 7, 192: 7}


def test_blkrec_gpu_configs_are_what_the_gpu_test_counts():
    for n, want in BLKREC_COUNT.items():
        for dtype in ("fp16", "bf16"):
            cfgs = _blkrec_configs(n, dtype)
            assert len(cfgs) == want and all(c["blkrec"] == 1 and c["tma"] == 2 for c in cfgs), (n, dtype, cfgs)


@pytest.mark.gpu
@pytest.mark.parametrize("n", sorted(BLKREC_COUNT))  # a test an N (xdist spreads them)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_blkrec_correct_on_edge_cases(dtype, n):
    """blkrec 1 (session 22's draft): the BLKREC configs adapted to N, at their split-K and 1, on the edge cases (the
    last block group partial: 130 rows, 9 strips, and 37 / 5 rows) and a uniform 1000 x 4096; poisoned C, fresh random
    B, float64 reference, each launched twice: exactly 2 x configs x cases launches."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_wgmma runs on Hopper (sm_90a) only")
    cases = adversarial()
    cases["uniform_1000x4096_d0.1"] = random_matrix(1000, 4096, 0.1, "uniform", 3)
    cfgs = _blkrec_configs(n, dtype)
    assert len(cfgs) == BLKREC_COUNT[n]
    checked = _check_matrices(cases, dtype, n, lambda name: cfgs)
    assert checked == 2 * BLKREC_COUNT[n] * len(cases) == 2 * BLKREC_COUNT[n] * 10


# ---- the diag switch (bench/diag_wgmma.py only: never a config) ----------------------------------------------------

def test_diag_renders_the_kernel_unchanged_and_diag_4_cuts_only_the_record_copies():
    """diag undefined is diag 0 (the tuned kernel); diag 4 (session 19) keeps the B boxes and drops the records' bulk
    copies, with the consumers' decode and wgmmas cut as at diag 1; it compiles for sm_90a."""
    sp = space()
    cfg = dict(bn=64, kc=4, dec="lane", wg=2, stages=4, splitk=4, wait=1, minb=2, ws=1, tma=2, red=1)
    base = render.render(sp, cfg, "fp16")
    assert render.render(sp, cfg, "fp16", {"diag": 0}) == base and "diag 4" not in base
    d1, d4 = (render.render(sp, cfg, "fp16", {"diag": d}) for d in (1, 4))
    assert "bulk_g2s(as, stream" in d1 and "bulk_g2s(as, stream" not in d4
    assert "mbar_arrive_tx(full + 8 * st, BST);  // diag 4" in d4
    assert d4.count("tma_g2s(bbase") == d1.count("tma_g2s(bbase") == base.count("tma_g2s(bbase")
    assert "wgmma_k16(acc" in base and "wgmma_k16(acc" not in d1 and "wgmma_k16(acc" not in d4
    if sat_compile.nvcc_path() is not None:
        rep, _ = _nvcc_sm90a(d4)
        assert "entry function 'spmm_kernel' for 'sm_90a'" in rep, rep


def test_diag_tool_refuses_unknown_cut_outs_and_cuts_tma_2_has_not():
    from scripts import load_script
    tool = load_script("bench/diag_wgmma.py", "diag_wgmma")
    ok = '{"bn":64,"kc":4,"dec":"lane","wg":2,"stages":4,"splitk":4,"wait":1,"minb":2,"ws":1,"tma":2}'
    for argv in (["--diag", "5"], ["--diag", "0,4", "--config", ok.replace('"tma":2', '"tma":1')]):
        with pytest.raises(SystemExit) as info:
            tool.main(["--case", "4096x4096:32:0.1:fp16", *(["--config", ok] if "--config" not in argv else []), *argv])
        assert info.value.code == 2, argv


def test_one_wave_known_good_comes_first_on_the_tallest_layers_only():
    """The session 24 known-good config (split-K 1: 112 blocks, one wave at 14336x4096 N=128, measured 1.28-1.3x
    faster than the three-wave winner) is the first config tried at 12288+ rows and N = 72-128, and nowhere else."""
    sp = space()
    kg = {k: v for k, v in sp.known_good[-1].items() if k != "first_when"}
    assert kg["splitk"] == 1 and kg["red"] == 0 and kg["bn"] == 128
    for (m, n), first in {(14336, 128): True, (12288, 72): True, (14336, 64): False, (11008, 128): False,
                          (4096, 128): False, (14336, 192): False}.items():
        env = problem_env(m, 4096, n, m * 4096 // 10, "fp16")
        assert (sp.defaults("fp16", env, DEFAULT_LIMITS)[0] == sp.normalize(kg, "fp16")) == first, (m, n)
    env = problem_env(14336, 4096, 128, 14336 * 4096 // 10, "bf16")
    assert sp.check(sp.normalize(kg, "bf16"), env, DEFAULT_LIMITS) is None


# ---- wgk 1 (bench/drafts/tcwgmma-fixed.md): a block is one 64-row tile, its warpgroups split the tile's chunks -----

# the 4096^2 N=128 candidates (wg 2: 64 tiles x split-K 2 = 128 blocks in clusters of 2), wait 0 / 1, split-K 1 (the
# warpgroups' local sum alone stores C), kc 2 with the ballot decode, three warpgroups at bn 128 (session 34: the
# shared-memory constraints count one group's slot a stage at wgk 1, as the kernel allocates) and at bn 64, bf16 in the
# GPU test
WGK = [dict(bn=128, kc=4, dec="lane", wg=2, stages=6, splitk=2, wait=1, minb=1, ws=1, tma=2, red=1, blkrec=0, wgk=1),
       dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=2, wait=0, minb=1, ws=1, tma=2, red=1, blkrec=0, wgk=1),
       dict(bn=128, kc=4, dec="lane", wg=2, stages=6, splitk=1, wait=1, minb=1, ws=1, tma=2, red=0, blkrec=0, wgk=1),
       dict(bn=128, kc=2, dec="ballot", wg=2, stages=6, splitk=4, wait=1, minb=1, ws=1, tma=2, red=1, blkrec=0, wgk=1),
       dict(bn=128, kc=4, dec="lane", wg=3, stages=6, splitk=2, wait=0, minb=1, ws=1, tma=2, red=1, blkrec=0, wgk=1),
       dict(bn=64, kc=4, dec="lane", wg=3, stages=6, splitk=3, wait=0, minb=1, ws=1, tma=2, red=1, blkrec=0, wgk=1),
       dict(bn=64, kc=2, dec="ballot", wg=3, stages=6, splitk=1, wait=0, minb=1, ws=1, tma=2, red=0, blkrec=0, wgk=1)]


def _wgk_ring(nch, stages, wg, wait, seed):
    """The wgk ring as the template runs it, with the mbarriers' parity waits (try_wait.parity p passes once the
    barrier's completed phases have a parity other than p): the producer fills chunk i into stage i % stages after the
    stage's `empty` phase; a TMA lands later (a separate event); warpgroup w takes chunks w, w + wg, ... (cst += wg),
    waits for `full`, consumes, and releases the previous chunk's stage (wait 1) or this one's (wait 0). A random
    interleaving; returns [(warpgroup, chunk)] in consumption order; AssertionError on a deadlock, a chunk read
    before it landed or from the wrong stage, or a stage refilled before its release."""
    rng = np.random.default_rng(seed)
    full, empty = [0] * stages, [0] * stages  # completed phases
    content, landed, released = [None] * stages, [True] * stages, [True] * stages
    pending = []  # stages whose TMA has not landed
    reading = set()  # stages an issued wgmma group may still read (wait 1: this warpgroup's last chunk's)
    nxt = 0  # the producer's next chunk
    cons = [{"i": w, "cst": w % stages, "cph": 0, "pst": 0} for w in range(wg)]
    out = []
    while nxt < nch or pending or any(c["i"] < nch for c in cons):
        moves = []
        if nxt < nch:
            st, ph = nxt % stages, (nxt // stages) & 1
            if (empty[st] & 1) != (ph ^ 1):
                moves.append(("produce", st))
        moves += [("land", st) for st in pending]
        for w, c in enumerate(cons):
            if c["i"] < nch and (full[c["cst"]] & 1) != c["cph"]:
                moves.append(("consume", w))
        assert moves, ("deadlock", nxt, cons)
        kind, x = moves[rng.integers(len(moves))]
        if kind == "produce":
            assert released[x], ("stage refilled before its release", x, nxt)
            assert x not in reading, ("stage refilled under a wgmma", x, nxt)
            content[x], landed[x], released[x] = nxt, False, False
            pending.append(x)
            nxt += 1
        elif kind == "land":
            pending.remove(x)
            landed[x] = True
            full[x] += 1  # expect_tx's bytes complete the phase
        else:
            c = cons[x]
            st = c["cst"]
            assert content[st] == c["i"] and landed[st], ("wrong or unlanded chunk", x, c, content[st])
            out.append((x, c["i"]))
            if wait == 1:  # wait_group 1: the previous chunk's wgmmas are done, this chunk's may still read its stage
                if c["i"] > x:
                    reading.discard(c["pst"])
                reading.add(st)
            rel = st if wait == 0 else (c["pst"] if c["i"] > x else None)
            if rel is not None:
                released[rel] = True
                empty[rel] += 1  # the warpgroup's 4 warps arrive
            c["pst"] = st
            c["i"] += wg
            c["cst"] += wg
            if c["cst"] >= stages:
                c["cst"] -= stages
                c["cph"] ^= 1
    return out


@pytest.mark.parametrize("stages,wg,wait", [(6, 2, 1), (4, 2, 0), (6, 2, 0), (6, 3, 0), (8, 2, 1), (9, 3, 1)])
def test_wgk_ring_never_deadlocks_and_each_warpgroup_reads_its_chunks(stages, wg, wait):
    """The wgk ring (the template's consumer step: cst += wg, the parity flip past the last stage, the release of the
    previous chunk at wait 1) over random interleavings and chunk counts that do not divide by wg or the stages:
    every chunk consumed once, by warpgroup i % wg, in order, never from a stage refilled under it."""
    for seed in range(40):
        nch = int(np.random.default_rng(seed).integers(1, 40))
        got = _wgk_ring(nch, stages, wg, wait, seed)
        assert sorted(i for _, i in got) == list(range(nch))
        assert all(i % wg == w for w, i in got)
        for w in range(wg):
            mine = [i for v, i in got if v == w]
            assert mine == sorted(mine)


def test_wgk_renders_one_group_a_block_and_the_space_bounds_it():
    """wgk 0 renders as before but for the header's " wgk=0" (the header names every active parameter; a config stored
    without the key renders byte for byte as before); wgk 1: one group a block and a
    stage, `empty` of one warpgroup's 4 warps, the consumers' interleaved chunks, the warpgroups' local sum before the
    cluster's reduction (32 units: the block's 64 rows) or C; the space offers it at tma 2, wg >= 2, blkrec 0, red 1 or
    split-K 1, stages a multiple of wg with a stage in flight, and the shared memory it takes."""
    sp, h = space(), host()
    base = dict(WGK[0])
    old = {k: v for k, v in base.items() if k != "wgk"}
    zero, bare = render.render(sp, {**old, "wgk": 0}, "fp16"), render.render(sp, old, "fp16")
    assert zero == bare.replace("blkrec=0\n", "blkrec=0 wgk=0\n", 1) and zero != bare
    assert "wgk" not in bare and sp.normalize(old, "fp16")["wgk"] == 0
    src = render.render(sp, base, "fp16")
    assert "blkrec=0 wgk=1\n" in src and "#define NGRP 1" in src
    assert "mbar_init(empty + 8 * st, 4);" in src and "const bool sok = lane < NGRP && pstrip < (S + 3) / 4;" in src
    assert "const unsigned int as = abase + (st + lane) * GSLOT;" in src
    assert src.count("const unsigned int gs = abase + cst * GSLOT;") == 2
    assert "for (int i = w0; i < nch; i += 2 * WG) {" in src and src.count("cst += WG;") == 2
    assert "if (i > w0) {" in src and "if (i + WG > w0) {" in src
    assert "const int strip = rb * 4 + (warp & 3);" in src and "const int row = 16 * (rb * 4 + wq) + gq;" in src
    assert "const int u1 = ((ks + 1) * 32) / SPLITK;" in src and src.count("wgk_sum(acc, rbuf, tid);") == 1
    assert "abase + STAGES * GSLOT + 16" in src and "STAGES * (BST + GSLOT)" in src
    s1 = render.render(sp, WGK[2], "bf16")
    assert "cluster_sync" not in s1 and s1.count("bar_consumers();") == 2 and "if (warp >= 4) return;" in s1
    # known-good configs: wgk 0 but session 26's measured winner at 4096 rows, N = 128 (first only at few rows)
    wgk1 = [kg for kg in sp.known_good if kg.get("wgk", 0) == 1]
    assert len(wgk1) == 1 and wgk1[0]["first_when"] == "3072 <= M <= 6144 and 64 < N <= 128"
    assert sp.check(sp.normalize({k: v for k, v in wgk1[0].items() if k != "first_when"}, "fp16"),
                    problem_env(4096, 4096, 128, 5_033_165, "fp16"), DEFAULT_LIMITS) is None
    env = problem_env(4096, 4096, 128, 1_677_722, "fp16")
    for c in WGK:
        e = env if c["bn"] == 128 else problem_env(4096, 4096, 64, 838_861, "fp16")
        assert sp.check(c, e, DEFAULT_LIMITS) is None, c
    for bad in ({**base, "blkrec": 1}, {**base, "red": 0}, {**base, "stages": 5}, {**base, "stages": 4},
                {**base, "wait": 0, "stages": 2}):
        assert sp.check(bad, env, DEFAULT_LIMITS) is not None, bad
    assert "wgk" not in sp.normalize({**old, "wg": 1}, "fp16") and "wgk" not in sp.normalize({**old, "tma": 1}, "fp16")
    # shared memory: B and ONE group's slot a stage, and the constraints count it so (wg 3 at bn 128 fits at wgk 1 only)
    assert h.shared_bytes(base) == 1024 + 6 * (16384 + 16 + 4 * (128 + 2048)) + 16 + 16 * 6 + 384
    assert h.shared_bytes(base) < h.shared_bytes({**base, "wgk": 0})
    wg3 = WGK[4]
    assert wg3["wg"] == 3 and wg3["bn"] == 128 and h.shared_bytes(wg3) == h.shared_bytes({**wg3, "wg": 2})
    assert h.shared_bytes(wg3) <= DEFAULT_LIMITS["max_dyn_smem_bytes"] < h.shared_bytes({**wg3, "wgk": 0})
    assert sp.check({**wg3, "wgk": 0, "red": 0}, env, DEFAULT_LIMITS) is not None  # wg 3 slots a stage: too large


def test_wgk_geometry_args_and_workspace():
    """wgk 1: a block a 64-row tile (ceil(S / 4) row blocks x splitk x column tiles), the warpgroup-grouped stream of
    tma 2 (groups of 4 strips), a map slot a block, no workspace at red 1."""
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    k = fake_kernel(FAMILY, WGK[0], "fp16", a)
    S = -(-1000 // 16)
    grid, block = h.geometry(k, 200)
    assert block == (288,) and grid == (-(-S // 4) * 2 * 2,)
    args = h.args(k, 200, "B", "C")
    gptr, gstream, _ = h.build_grouped(a, 4, "fp16", "lane", 4)
    np.testing.assert_array_equal(args[0].host, gptr)
    np.testing.assert_array_equal(args[1].host, gstream)
    assert args[2].host.shape == (4,) and args[-1].host.shape == (grid[0] * 128,)


def test_wgk_compiles_for_sm90a_without_spills():
    """The 4096^2 N=128 candidate (wgk 1, wg 2, stages 6, split-K 2, red 1): sm_90a, no spills, its registers fit."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    rep, _ = _nvcc_sm90a(render.render(space(), WGK[0], "fp16"))
    assert _check_build(WGK[0], rep) <= 128


@pytest.mark.heavy
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_wgk_configs_compile_for_sm90a_with_hgmma_and_without_spills(dtype):
    """Every WGK config for sm_90a: no spills, registers fit; with cuobjdump, kc HGMMA a step, the bulk copies and TMA
    loads, and the consumers' named barrier."""
    _compile_sm90a_with_hgmma(WGK, dtype, 2, ("UBLKCP", "UTMALDG.2D", "BAR.SYNC.DEFER_BLOCKING 0x1"))


def _wgk_configs(n, dtype):
    """WGK adapted to N, each at its own split-K and at 1."""
    return _adapted(WGK, n, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [64, 72, 128])  # a test an N (xdist spreads them)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_wgk_correct_on_edge_cases(dtype, n):
    """wgk 1: the WGK configs adapted to N, at their split-K and 1, on the edge cases (M not a multiple of 64: 130, 37,
    5 rows; empty strips and chunks; a dense row; a dense matrix) and a uniform 1000 x 4096; poisoned C, fresh random
    B, float64 reference, each launched twice."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_wgmma runs on Hopper (sm_90a) only")
    cases = adversarial()
    cases["uniform_1000x4096_d0.1"] = random_matrix(1000, 4096, 0.1, "uniform", 3)
    cfgs = _wgk_configs(n, dtype)
    assert len(cfgs) >= 6 and all(c["wgk"] == 1 for c in cfgs), cfgs
    assert _check_matrices(cases, dtype, n, lambda name: cfgs) == 2 * len(cfgs) * len(cases)


@pytest.mark.gpu
@pytest.mark.parametrize("density", [0.1, 0.3])
def test_wgk_correct_at_4096_n128(density):
    """The measured case: 4096 x 4096, N = 128, fp16, the 4096^2 candidates of WGK (64 tiles, split-K 2 and 4)."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_wgmma runs on Hopper (sm_90a) only")
    cases = {f"uniform_4096_d{density}": random_matrix(4096, 4096, density, "uniform", 5)}
    cfgs = [c for c in WGK[:5]]
    assert _check_matrices(cases, "fp16", 128, lambda name: cfgs) == 2 * len(cfgs)


# ---- pmap: B's tensor map passed by value (session 32) --------------------------------------------------------------

# the llm suite's most frequent tc_wgmma winners (bench/results/suite-llm-h200.json) and a tma 1 config, with pmap 1
PMAP = [dict(bn=64, kc=4, dec="lane", wg=1, stages=6, splitk=4, wait=1, minb=1, ws=1, tma=2, red=0, pmap=1),
        dict(bn=128, kc=4, dec="lane", wg=2, stages=6, splitk=2, wait=0, minb=1, ws=1, tma=2, red=1, blkrec=0, wgk=1,
             pmap=1),
        dict(bn=64, kc=4, dec="lane", wg=1, stages=4, splitk=8, wait=1, minb=2, ws=1, tma=2, red=1, pmap=1),
        dict(bn=128, kc=4, dec="lane", wg=2, stages=4, splitk=4, wait=1, minb=1, ws=1, tma=2, red=0, blkrec=1, pmap=1),
        dict(bn=128, kc=4, dec="lane", wg=3, stages=4, splitk=2, wait=1, minb=1, ws=1, tma=2, red=1, blkrec=1, pmap=1),
        dict(bn=64, kc=2, dec="ballot", wg=3, stages=4, splitk=2, wait=1, minb=1, ws=1, tma=1, red=0, pmap=1)]


def test_pmap_renders_a_by_value_map_and_no_patch():
    """pmap 1: the map is a __grid_constant__ parameter the producer prefetches and hands to its TMA loads; no template,
    no block slot, no tensormap.replace / fence; pmap 0 (every stored config) renders as before but for the header."""
    sp = space()
    for cfg in PMAP:
        new = render.render(sp, cfg, "fp16")
        old = render.render(sp, {**cfg, "pmap": 0}, "fp16")
        assert "struct __align__(64) TensorMap128 { unsigned long long w[16]; };" in new, cfg
        assert "int cps, int ntiles, const __grid_constant__ TensorMap128 tmap)" in new, cfg
        assert "const void* gmap = &tmap;" in new and 'prefetch.tensormap [%0];' in new, cfg
        assert "tensormap.replace" not in new and "tensormap.cp_fenceproxy" not in new and "tmpl" not in new, cfg
        assert "fence.proxy.tensormap::generic.acquire" not in new and "tmaps" not in new, cfg
        assert new.count(", gmap, n0 + 64 * q, (c0 + i) * KC, full + 8 * st);") == 1, cfg
        assert "tensormap.replace.tile.global_address.shared::cta.b1024.b64" in old and "TensorMap128" not in old
        assert new.splitlines()[0].endswith(" pmap=1") and old.splitlines()[0].endswith(" pmap=0"), cfg
        stored = render.render(sp, {k: v for k, v in cfg.items() if k != "pmap"}, "fp16")  # a config from before
        assert "pmap" not in stored and old == stored.replace("\n", " pmap=0\n", 1), cfg  # byte for byte
    assert sp.normalize({k: v for k, v in PMAP[0].items() if k != "pmap"}, "fp16")["pmap"] == 0
    assert "pmap" not in sp.normalize({**PMAP[0], "tma": 0}, "fp16")  # pmap exists only with tma


def test_pmap_args_end_with_a_map_made_from_b_and_the_launcher_reencodes_it_when_b_moves(monkeypatch):
    """pmap 1: the last argument is a 128-byte BParam (no template, no block slots); a launcher encodes it with the
    launch's B at its first launch and again only when B's address changes, and passes its bytes by value (the
    parameter's address is the 64-aligned buffer). A fake driver records the encodes; a fake launch the parameters."""
    import ctypes as ct
    from fakes import signature
    from sparse_autotune.device.kernel import BParam, Launcher
    h = host()
    fake = _FakeEncode()
    monkeypatch.setattr("sparse_autotune.device.gpu.libcuda", lambda: type("Lib", (), {"cuTensorMapEncodeTiled": fake})())
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = PMAP[0]
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    args = h.args(k, 200, "B", "C")
    sig = signature(k.source)
    assert len(args) == len(sig) == 14 and sig[-1][0] == "tmap" and isinstance(args[-1], BParam)
    assert not fake.calls  # nothing encoded before a launch knows B
    assert h.args(k, 1, "B", "C")[-1].encode(0x1000) == bytes(128)  # N = 1 (a_bytes) never launches
    seen = []

    def launch(*a):
        params = a[-2]
        addr = ct.c_uint64.from_address(params + 8 * 13).value
        assert addr % 64 == 0
        seen.append(bytes((ct.c_uint8 * 128).from_address(addr)))

    values = [0x1000 * (i + 1) for i in range(4)] + [0, 0] + [np.int32(1)] * 7 + [args[-1]]
    ln = Launcher(0, (1,), (32,), 0, values, 4, 5, launch_fn=launch)
    for b_ptr in (0x7000_0000, 0x7000_0000, 0x7100_0000, 0x7000_0000):
        ln(b_ptr, 0x9000_0000, 0)
    assert [c["addr"] for c in fake.calls] == [0x7000_0000, 0x7100_0000]  # B back at a known address: no encode
    assert all(c["dims"] == [200, 3000] and c["box"] == [64, 64] for c in fake.calls)
    assert len(seen) == 4 and all(s == bytes(range(128)) for s in seen)
    made = []
    lru = BParam(8, lambda p: (made.append(p), p.to_bytes(8, "little"))[1])
    for p in [*range(1, BParam.KEEP + 2), 2, 1]:  # KEEP + 1 addresses: the first one falls out, 2 is still kept
        lru.update(p)
        assert bytes(lru.buf) == p.to_bytes(8, "little")
    assert made == [*range(1, BParam.KEEP + 2), 1]
    with pytest.raises(ValueError, match="multiple of 8"):
        BParam(12, lambda p: bytes(12))
    bad = BParam(16, lambda p: bytes(8))
    with pytest.raises(ValueError, match="encoded as 8"):
        bad.update(1)


def test_pmap_compiles_for_sm90a_without_spills():
    """The 4096^2 N=128 winner with pmap 1 and 0: sm_90a, no spills, registers that fit, at most 8 more than its pmap 0
    twin (nvcc 13: 110 against 106; the map's parameter-space address is held through the producer's loop)."""
    new, old = _twin_registers(PMAP[1], "pmap", 0)
    assert new <= old + 8


@pytest.mark.heavy
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_pmap_configs_compile_for_sm90a_with_hgmma_and_without_spills(dtype):
    """Every PMAP config for sm_90a: no spills, registers fit; kc HGMMA a step, the TMA loads and the bulk copies."""
    _compile_sm90a_with_hgmma(PMAP, dtype, 4, ("UTMALDG.2D", "SYNCS.PHASECHK"))


PMAP_NS = (16, 64, 128, 192)


@pytest.mark.gpu
@pytest.mark.parametrize("n", PMAP_NS)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_pmap_correct_on_edge_cases(dtype, n):
    """pmap 1: the PMAP configs adapted to N, at their split-K and 1, on the edge cases and a uniform 1000 x 4096; each
    launched twice on fresh B (a new address: the map re-encoded) against float64."""
    from sparse_autotune.device.gpu import gpu_info
    if gpu_info().cc != "9.0":
        pytest.skip("tc_wgmma runs on Hopper (sm_90a) only")
    cases = adversarial()
    cases["uniform_1000x4096_d0.1"] = random_matrix(1000, 4096, 0.1, "uniform", 3)
    cfgs = _adapted(PMAP, n, dtype)
    assert len(cfgs) >= len(PMAP) and all(c["pmap"] == 1 for c in cfgs)
    checked = _check_matrices(cases, dtype, n, lambda name: cfgs)
    assert checked == 2 * len(cfgs) * len(cases)


@pytest.mark.gpu
def test_pmap_follows_b_between_launches():
    """Two B buffers alive at once, launched B1, B2, B1, B2 through one launcher (and once inside a CUDA graph, which
    keeps its capture's map): each result is its own B's product, so the map moved with B every time."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.core.problem import DTYPES, host_values, storage
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    if gpu_info().cc != "9.0":
        pytest.skip("tc_wgmma runs on Hopper (sm_90a) only")
    a = random_matrix(1000, 4096, 0.1, "uniform", 5)
    a.data = host_values(a.data.astype(np.float32), DTYPES["fp16"])
    kern = build_kernel(DeviceCSR(a, "fp16"), FAMILY, PMAP[1], "fp16")
    a64 = csp.csr_matrix(a.astype(np.float64))
    rng = np.random.default_rng(0)
    bs = [cp.asarray(storage(host_values(rng.standard_normal((4096, 128)).astype(np.float32), DTYPES["fp16"]),
                             "fp16")) for _ in range(2)]
    want = [(a64 @ b.astype(cp.float64)).get() for b in bs]
    c = cp.empty((1000, 128), dtype=bs[0].dtype)
    for i in (0, 1, 0, 1):
        c.fill(np.nan)
        kern(bs[i], c)
        got = c.astype(cp.float64).get()
        err = np.abs(got - want[i]).max() / np.abs(want[i]).max()
        assert err <= 2e-3, (i, err)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        c.fill(np.nan)
        stream.begin_capture()
        kern(bs[0], c)
        graph = stream.end_capture()
        kern(bs[1], c)  # outside the graph: re-encodes for B2
        graph.launch(stream)  # the graph's own parameters: B1's map
        stream.synchronize()
    err = np.abs(c.astype(cp.float64).get() - want[0]).max() / np.abs(want[0]).max()
    assert err <= 2e-3, err
