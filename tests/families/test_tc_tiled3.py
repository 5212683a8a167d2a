"""tc_tiled3 (16 x 16 tiles of A decoded by each lane straight into its mma.m16n8k16 A-fragment registers, B staged in
shared memory): the record stream round-trips to A by the kernel's own lane rule (each lane's word, start and run of
pairs), its size, empty tiles and records, the pointer table, rendering and nvcc (with the shared memory the host side
asks for, no spills), constraints; on a GPU, a covering sample of configs against float64 on edge cases, fp16 and
bf16, N = 1, 3, 8, 16, 32, 127."""
from __future__ import annotations

import concurrent.futures
import itertools
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

FAMILY = "tc_tiled3"
GEOMS = [(mr, kr) for mr, kr in itertools.product([1, 2, 4], [1, 2, 4, 8]) if 2 <= mr * kr <= 8]


def host():
    return get_family(FAMILY).host


def _vals(a, rng):
    a = sps.csr_matrix(a)
    a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5  # never zero after rounding to 16 bits
    return a


def adversarial():
    """Empty rows and tiles, a full tile, M and K not multiples of the tile, one nonzero, 70 %, all zero, dense, a
    lone value in each half of a pair, a whole record of empty tiles between full ones."""
    rng = np.random.default_rng(11)
    out = {}
    a = sps.random(40, 70, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    a[:, 16:48] = 0  # empty tiles
    out["empty_rows_and_tiles"] = _vals(a, rng)
    a = sps.random(48, 64, density=0.05, format="lil", random_state=2)
    a[16:32, 32:48] = 1.0  # a full 16 x 16 tile
    a[0:8, 0:16] = 1.0
    out["full_tile"] = _vals(a, rng)
    out["residues_37x53"] = _vals(sps.random(37, 53, density=0.3, format="csr", random_state=3), rng)
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = _vals(a, rng)
    out["density_0.7"] = _vals(sps.random(64, 96, density=0.7, format="csr", random_state=4), rng)
    out["long_k_24x3000"] = _vals(sps.random(24, 3000, density=0.1, format="csr", random_state=5), rng)
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["dense_33x129"] = _vals(sps.csr_matrix(np.ones((33, 129))), rng)
    d = np.zeros((32, 300))
    d[3, 4] = d[9, 13] = d[17, 130] = d[31, 299] = 1.0  # lone even / odd columns: the other half of the pair zero
    d[:, 160:288] = 0.0
    d[0:16, 0:16] = 1.0  # then a full tile, empty k-steps (whole records at kr <= 4) and the K residue
    out["lone_halves_and_empty_records"] = _vals(sps.csr_matrix(d), rng)
    return out


def bits16(a, dtype="fp16"):
    return host()._value_bits(a.toarray().ravel(), dtype).reshape(a.shape)


# ---- the record stream ------------------------------------------------------------------------------------

def test_fragment_slot_is_mma_m16n8k16_a_layout():
    """Lane 4 g + t holds a0 = (g, 2t..2t+1), a1 = (g + 8, ...), a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..); every
    element of a 16 x 16 tile has exactly one (lane, register, half)."""
    h = host()
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    lane, j, half = h.fragment_slot(r, c)
    slots = lane * 8 + j * 2 + half
    assert sorted(slots.ravel().tolist()) == list(range(256))
    assert (lane[5, 3], j[5, 3], half[5, 3]) == (4 * 5 + 1, 0, 1)
    assert (lane[13, 10], j[13, 10], half[13, 10]) == (4 * 5 + 1, 3, 0)
    assert (lane[2, 9], j[2, 9]) == (4 * 2 + 0, 2) and (lane[10, 1], j[10, 1]) == (4 * 2 + 0, 1)


@pytest.mark.parametrize("mr,kr", GEOMS)
def test_stream_round_trips_to_a_by_the_lane_rule(mr, kr):
    """decode() walks each group's records from their headers (as a warp does) and each lane its word, start and run
    of pairs (as pair_load does): A's 16-bit values exactly, for every adversarial pattern, fp16 and bf16."""
    h = host()
    for name, a in adversarial().items():
        for dtype in ("fp16", "bf16"):
            ptr, stream, info = h.build(a, mr, kr, dtype)
            got = h.decode(ptr, stream, info)
            assert got.shape == a.shape, name
            np.testing.assert_array_equal(got, bits16(a, dtype), err_msg=f"{name} {dtype}")
            assert info["nnz"] == a.count_nonzero()


def test_empty_tiles_and_records_cost_nothing_but_a_header():
    """An all-zero matrix is 8 bytes a record; a record's tile mask names exactly its non-empty tiles; the stream of a
    matrix with a full tile holds exactly its 128 pairs plus one record's headers."""
    h = host()
    ptr, stream, info = h.build(sps.csr_matrix((64, 512), dtype=np.float32), 2, 2)
    assert info["stream_bytes"] == 8 * info["G"] * (info["KT"] // 2)
    d = np.zeros((32, 128))
    d[16:32, 48:64] = 1.0  # row tile 1, k-step 3: tile kk * mr + t = 3 of record 1 (mr 2, kr 2)
    ptr, stream, info = h.build(sps.csr_matrix(d), 2, 2)
    s32 = stream.view(np.uint32)
    hdr = [int(s32[p // 4]) for p in (0, 8)]
    assert hdr[0] == 0  # record 0 (k-steps 0-1): empty, 8 bytes
    assert hdr[1] & 0xFFFF == 128 and hdr[1] >> 16 == 0b1000  # record 1: 128 pairs, tile 3 only
    assert info["pairs"] == 128
    assert info["stream_bytes"] == 8 + h.offsets(4)[1] + 4 * 128 + 8 * 2  # and two empty records after it


def test_stream_layout_invariants():
    """Pointers monotone and 8-byte aligned, a group's end is the next group's start, the stream padded for the last
    chunk's over-read; the densest record is max_record_bytes and fits the smallest ring the space allows."""
    h = host()
    sp = get_family(FAMILY).space
    a = random_matrix(100, 3000, 0.1, "uniform", 1)
    dense = sps.csr_matrix(np.ones((64, 256)))
    for mr, kr in GEOMS:
        ptr, stream, info = h.build(a, mr, kr)
        G, nkc = info["G"], info["nkc"]
        p = ptr.reshape(G, nkc + 1)
        assert p[0, 0] == 0 and (np.diff(p, axis=1) > 0).all()
        assert (p[1:, 0] == p[:-1, -1]).all() and p[-1, -1] == info["stream_bytes"]
        assert (p % 8 == 0).all()
        assert len(stream) % 16 == 0 and len(stream) >= info["stream_bytes"] + h.CHUNK_PAD
        assert not stream[info["stream_bytes"]:].any()
        ptr, _, info = h.build(dense, mr, kr)
        T = mr * kr
        assert int(np.diff(ptr.reshape(info["G"], -1), axis=1).max()) == h.KG // kr * h.max_record_bytes(T)
        env = problem_env(64, 4096, 16, 1000, "fp16")
        base = dict(mr=mr, kr=kr, nb=1, warps=2, kw=1, splitk=8, skip=0, bload="vec")
        ok = [st for st in (4, 8, 16) if sp.check({**base, "stages": st}, env, DEFAULT_LIMITS) is None]
        assert ok and min(ok) >= h.stages_min(T) and min(ok) * 512 >= h.max_record_bytes(T) + 512


def test_bytes_per_nonzero():
    """4 bytes a stored pair + 8 + 64 * (word + start bytes) a record, over 16 x 16 tiles: fewer bytes than tc_tiled2's
    3.1 only at high density; the long records (8 tiles) pay 24 header bytes a tile."""
    h = host()
    for d, mr, kr, lo, hi in ((0.1, 1, 8, 4.6, 5.0), (0.1, 1, 2, 4.9, 5.4), (0.05, 1, 8, 5.6, 6.2),
                              (0.3, 2, 4, 3.6, 3.9), (0.5, 1, 8, 3.1, 3.4)):
        a = random_matrix(256, 2048, d, "uniform", 2)
        per = h.build(a, mr, kr)[2]["bytes"] / a.nnz
        assert lo < per < hi, (d, mr, kr, per)


def test_the_builder_leaves_the_callers_matrix_alone():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    ptr, stream, info = h.build(a, 1, 2)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    want = np.zeros((1, 8), dtype=np.float16)
    want[0, 3] = 3.0
    np.testing.assert_array_equal(h.decode(ptr, stream, info), want.view(np.uint16))


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    for n in (1, 16, 100):
        checked = check_launch_matches_signature(FAMILY, dtype, a, n)
        assert checked > 0 or not get_family(FAMILY).space.supports(dtype)


def test_configs_render_for_bf16_too():
    sp = get_family(FAMILY).space
    count = 0
    for i, cfg in enumerate(sp.enumerate("fp16")):
        if i % 5:
            continue
        src = render.render(sp, cfg, "bf16")
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in src and ".f16." not in src
        assert "ldmatrix.sync.aligned.m8n8.x4.shared" not in src  # no ldmatrix of A (only .trans of B)
        count += 1
    assert count > 500


def _covering(n=256, m=512, k=2048):
    """Configs for N covering every mr x kr x nb x bload that is feasible, skip and kw taken in turn."""
    sp = get_family(FAMILY).space
    env = problem_env(m, k, n, round(0.1 * m * k), "fp16")
    feas = list(sp.feasible("fp16", env, DEFAULT_LIMITS))
    by_key = {}
    for cfg in feas[::7] + feas:
        by_key.setdefault((cfg["mr"], cfg["kr"], cfg["nb"], cfg["bload"]), []).append(cfg)
    out = []
    for i, cands in enumerate(by_key.values()):
        want = (i % 2, (1, 2, 4)[(i // 2) % 3])
        out.append(next((c for c in cands if (c["skip"], c["kw"]) == want), cands[0]))
    return out


def _ptxas_ok(cfg, rep):
    assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
    regs = int(re.search(r"Used (\d+) registers", rep).group(1))
    assert regs <= 255 and all(int(x) == 0 for x in re.findall(r"(\d+) bytes spill", rep)), (cfg, rep)
    smem = re.search(r"(\d+) bytes smem", rep)
    assert smem is None or int(smem.group(1)) <= 64, (cfg, rep)  # all but split-K's flag is dynamic
    return regs


KNOWN = [  # the known-good configs and the sweep's shapes
    dict(mr=1, kr=2, nb=2, warps=4, kw=2, stages=4, splitk=8, skip=0, bload="vec"),
    dict(mr=1, kr=8, nb=2, warps=4, kw=1, stages=16, splitk=8, skip=0, bload="vec"),
    dict(mr=2, kr=2, nb=2, warps=4, kw=2, stages=8, splitk=8, skip=0, bload="vec"),
    dict(mr=2, kr=4, nb=2, warps=4, kw=1, stages=16, splitk=8, skip=1, bload="vec"),
    dict(mr=2, kr=1, nb=1, warps=4, kw=1, stages=4, splitk=16, skip=0, bload="scalar"),
]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_covering_sample_compiles_with_nvcc_without_spills(dtype):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = KNOWN + _covering()[::4]
    assert len(cfgs) >= 10
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype), arch="sm_90"), cfgs))
    for cfg, rep in zip(cfgs, reports):
        _ptxas_ok(cfg, rep)


def test_shared_memory_follows_the_config_and_k():
    """The flag, a ring a warp (no images), B's K-slice; with kw > 1 at least every warp's partial sums."""
    h = host()
    sp = get_family(FAMILY).space
    cfg = dict(mr=2, kr=2, nb=2, warps=4, kw=1, stages=8, splitk=16, skip=0, bload="vec")
    want = 16 + 4 * 8 * 512 + 256 * 2 * 16  # 4096 columns, split 16: 256 rows of B, 32 bytes a row
    assert h.shared_bytes(cfg, 4096) == want
    k = fake_kernel(FAMILY, cfg, "fp16", random_matrix(64, 4096, 0.01, "uniform", 0))
    assert h.smem_bytes(k) == want
    env = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    for c in (cfg, {**cfg, "kw": 2}, {**cfg, "kw": 4, "splitk": 4}):
        need = h.shared_bytes(c, 4096)
        assert sp.check(c, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need}) is None, c
        assert sp.check(c, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need - 1}) is not None, c


def test_constraints():
    sp = get_family(FAMILY).space
    env = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    base = dict(mr=1, kr=2, nb=2, warps=4, kw=2, stages=4, splitk=8, skip=0, bload="vec")
    assert sp.check(base, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "kr": 1}, env, DEFAULT_LIMITS) is not None  # one tile a record
    assert sp.check({**base, "mr": 4, "kr": 4}, env, DEFAULT_LIMITS) is not None  # 16 tiles
    assert sp.check({**base, "kr": 4}, env, DEFAULT_LIMITS) is not None  # 4 tiles need 8 chunks
    assert sp.check({**base, "kr": 4, "stages": 8}, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "kr": 8, "stages": 8}, env, DEFAULT_LIMITS) is not None  # 8 tiles need 16
    assert sp.check({**base, "kr": 8, "stages": 16}, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "nb": 4}, env, DEFAULT_LIMITS) is not None  # 32 columns for N = 16
    odd = problem_env(4096, 4096, 3, 1_600_000, "fp16")
    assert sp.check({**base, "nb": 1}, odd, DEFAULT_LIMITS) is not None
    assert sp.check({**base, "nb": 1, "bload": "scalar"}, odd, DEFAULT_LIMITS) is None


def test_adapt_to_another_n():
    fam = get_family(FAMILY)
    cfg = dict(mr=2, kr=1, nb=8, warps=4, kw=1, stages=4, splitk=16, skip=0, bload="vec")
    one = problem_env(4096, 4096, 1, 1_600_000, "fp16")
    got = fam.adapt(cfg, "fp16", one, DEFAULT_LIMITS)
    assert got is not None and got["bload"] == "scalar" and got["nb"] == 1
    assert fam.space.check(got, one, DEFAULT_LIMITS) is None


def test_geometry_and_workspace_follow_the_config():
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(mr=2, kr=2, nb=2, warps=4, kw=2, stages=8, splitk=4, skip=0, bload="vec")
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    grid, block = h.geometry(k, 64)
    G = -(-1000 // 32)
    assert block == (256,) and grid == (-(-G // 4) * 4 * 4,)
    args = h.args(k, 64, "B", "C")
    ws, cnt = args[2], args[3]
    assert ws.host.shape == (-(-G // 4) * 4 * 4 * 4 * 32 * 2 * 2 * 4,) and cnt.host.shape == (-(-G // 4) * 4,)
    assert not cnt.host.any()
    assert args[4:6] == ("B", "C") and int(args[-1]) == 4


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(n, dtype="fp16"):
    """The known-good configs and a covering sample for N, each with split-K 1, 2 and 32 where feasible."""
    sp = get_family(FAMILY).space
    env = problem_env(64, 3000, n, 1000, dtype)
    cfgs = []
    for cfg in KNOWN + _covering(n, 64, 3000):
        cfg = get_family(FAMILY).adapt(cfg, dtype, env, DEFAULT_LIMITS) or cfg
        for splitk in (1, 2, 32):
            c = {**cfg, "splitk": splitk}
            if sp.check(c, env, DEFAULT_LIMITS) is None and c not in cfgs:
                cfgs.append(c)
    return cfgs[:: max(1, len(cfgs) // 6)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_every_geometry_correct_on_edge_cases(dtype):
    """Through the project's launch path (build_kernel, Kernel.__call__): fresh random B, float64 reference; a split-K
    config runs twice (its counters must reset themselves)."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.core.problem import DTYPES, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    checked = 0
    for name, a in adversarial().items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data.astype(np.float32), DTYPES[dtype])  # what the kernel sees
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in (1, 3, 8, 16, 32, 127):
            cfgs = _gpu_configs(n, dtype)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, dtype), cfgs))
            for k in kernels:
                for rep in range(2 if k.config["splitk"] > 1 else 1):
                    bh = host_values(np.random.default_rng(checked).standard_normal((a.shape[1], n)).astype(np.float32),
                                     DTYPES[dtype])
                    b = cp.asarray(storage(bh, dtype))
                    c = cp.empty((a.shape[0], n), dtype=b.dtype)
                    err = check(lambda: k(b, c), c, reference(a64, b), dtype)
                    assert err <= (2e-3 if dtype == "fp16" else 1.6e-2), (name, n, k.config, rep, err)
                    checked += 1
    assert checked > 200


def test_sweep_configs_are_feasible_and_compile():
    """tests/families/tc_tiled3_sweep.txt (the lead's sweep against tc_tiled2's best): every line feasible at the three
    cases of bench/drafts/tc_tiled3.md, and tc_tiled3's lines compile without spills."""
    from pathlib import Path
    import json
    lines = [ln for ln in (Path(__file__).parent / "tc_tiled3_sweep.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    cfgs = [(ln.split(":", 1)[0], json.loads(ln.split(":", 1)[1])) for ln in lines]
    assert sum(f == FAMILY for f, _ in cfgs) >= 6
    for m, k, d in ((4096, 4096, 0.1), (4096, 4096, 0.05), (11008, 4096, 0.05)):
        env = problem_env(m, k, 16, round(d * m * k), "fp16")
        for fam, cfg in cfgs:
            sp = get_family(fam).space
            assert sp.check(sp.normalize(cfg, "fp16"), env, DEFAULT_LIMITS) is None, (fam, cfg, m, d)
    if sat_compile.nvcc_path() is None:
        return
    sp = get_family(FAMILY).space
    mine = [c for f, c in cfgs if f == FAMILY]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, "fp16"), arch="sm_90"), mine))
    for cfg, rep in zip(mine, reports):
        _ptxas_ok(cfg, rep)
