"""tc_tiled2 (16 x 16 tiles of A scattered to shared memory + ldmatrix, B staged in shared memory): the tile stream
round-trips to A by the kernel's own rule (records walked from their headers, values scattered to their positions,
ldmatrix.x4's fragment rule), its size, the pointer table, rendering and nvcc (with the shared memory the host side
asks for), constraints, adaptation to N; on a GPU, every geometry against float64 on edge cases, fp16 and bf16."""
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

FAMILY = "tc_tiled2"
GEOMS = [(mr, kr) for mr, kr in itertools.product([1, 2, 4], [1, 2, 4]) if mr * kr <= 4]


def host():
    """The family's host side (variants/tc_tiled2.py), loaded by the registry."""
    return get_family(FAMILY).host


def _vals(a, rng):
    a = sps.csr_matrix(a)
    a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5  # never zero after rounding to 16 bits
    return a


def adversarial():
    """Empty rows and tiles, a full tile, M and K not multiples of the tile, one nonzero, 70 %, all zero, dense,
    a tile of 33 values (just past one pass) and of 129 (past four)."""
    rng = np.random.default_rng(11)
    out = {}
    a = sps.random(40, 70, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    a[:, 16:48] = 0  # empty tiles
    out["empty_rows_and_tiles"] = _vals(a, rng)
    a = sps.random(48, 64, density=0.05, format="lil", random_state=2)
    a[16:32, 32:48] = 1.0  # a full 16 x 16 tile
    a[0:8, 0:16] = 1.0  # a full 8 x 16 half tile
    out["full_tile"] = _vals(a, rng)
    out["residues_37x53"] = _vals(sps.random(37, 53, density=0.3, format="csr", random_state=3), rng)
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = _vals(a, rng)
    out["density_0.7"] = _vals(sps.random(64, 96, density=0.7, format="csr", random_state=4), rng)
    out["long_k_24x3000"] = _vals(sps.random(24, 3000, density=0.1, format="csr", random_state=5), rng)
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["dense_33x129"] = _vals(sps.csr_matrix(np.ones((33, 129))), rng)
    d = np.zeros((32, 48))
    d.ravel()[:33] = 1.0  # rows 0-1 of the first tile: 33 values
    d[16:32, 16:32].ravel()[:129] = 1.0
    out["passes_33_and_129"] = _vals(sps.csr_matrix(d), rng)
    return out


def bits16(a, dtype="fp16"):
    return host()._value_bits(a.toarray().ravel(), dtype).reshape(a.shape)


# ---- the tile stream --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mr,kr", GEOMS)
def test_stream_round_trips_to_a_by_the_kernel_rule(mr, kr):
    """decode() walks each group's records from their headers (as a warp does), scatters each tile's values to their
    positions in a zeroed image and reads each lane's A fragment as ldmatrix.x4 gives it: A's 16-bit values exactly,
    for every adversarial pattern, fp16 and bf16."""
    h = host()
    for name, a in adversarial().items():
        for dtype in ("fp16", "bf16"):
            ptr, stream, info = h.build(a, mr, kr, dtype)
            got = h.decode(ptr, stream, info)
            assert got.shape == a.shape, name
            np.testing.assert_array_equal(got, bits16(a, dtype), err_msg=f"{name} {dtype}")
            assert info["nnz"] == a.count_nonzero()


def test_stream_layout_invariants():
    """Pointers are monotone and aligned to the header, a group's end is the next group's start, the stream is padded
    for the last chunk's over-read; no record is larger than the ring's bound (770 bytes a tile)."""
    h = host()
    a = random_matrix(100, 3000, 0.1, "uniform", 1)
    dense = sps.csr_matrix(np.ones((64, 256)))
    for mr, kr in GEOMS:
        ptr, stream, info = h.build(a, mr, kr)
        G, nkc = info["G"], info["nkc"]
        assert G == -(-100 // (16 * mr)) and nkc == -(-(-(-3000 // 16)) // h.KG)
        p = ptr.reshape(G, nkc + 1)
        assert p[0, 0] == 0 and (np.diff(p, axis=1) > 0).all()
        assert (p[1:, 0] == p[:-1, -1]).all() and p[-1, -1] == info["stream_bytes"]
        assert (p % (2 * mr * kr) == 0).all()
        assert len(stream) % 16 == 0 and len(stream) >= info["stream_bytes"] + 1024 + 16
        assert not stream[info["stream_bytes"]:].any()
        assert info["bytes"] == info["stream_bytes"] + ptr.nbytes
        ptr, _, info = h.build(dense, mr, kr)  # every record full: the largest record there is
        assert int(np.diff(ptr.reshape(info["G"], -1), axis=1).max()) == h.KG // kr * h.max_record_bytes(mr * kr)


def test_bytes_per_nonzero():
    """3 bytes a nonzero + 2 a 16 x 16 tile (+ padding of records to their header's size)."""
    h = host()
    for d, lo, hi in ((0.5, 3.0, 3.05), (0.1, 3.05, 3.15), (0.05, 3.1, 3.3)):
        a = random_matrix(256, 2048, d, "uniform", 2)
        for mr, kr in ((2, 1), (2, 2)):
            per = h.build(a, mr, kr)[2]["bytes"] / a.nnz
            assert lo < per < hi, (d, mr, kr, per)


def test_the_builder_leaves_the_callers_matrix_alone():
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    ptr, stream, info = h.build(a, 1, 1)
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


def test_every_config_renders_for_bf16_too():
    sp = get_family(FAMILY).space
    count = 0
    for cfg in sp.enumerate("fp16"):
        src = render.render(sp, cfg, "bf16")
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in src and ".f16." not in src
        assert "cvt.rn.bf16x2.f32" in src
        count += 1
    assert count == len(list(sp.enumerate("fp16"))) > 1000


def _covering(n=256, m=512, k=2048):
    """Configs for N covering every mr x kr x nb x bload that is feasible (the other parameters cycled)."""
    sp = get_family(FAMILY).space
    env = problem_env(m, k, n, round(0.1 * m * k), "fp16")
    feas = list(sp.feasible("fp16", env, DEFAULT_LIMITS))
    seen, out = set(), []
    for cfg in feas[::7] + feas:
        key = (cfg["mr"], cfg["kr"], cfg["nb"], cfg["bload"])
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_covering_sample_compiles_with_nvcc(dtype):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = _covering()[::4]
    assert len(cfgs) >= 8
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype), arch="sm_90"), cfgs))
    for cfg, rep in zip(cfgs, reports):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        # ptxas may park a value or two of the epilogue (row, tile) on the stack across the loop: at most 16 bytes
        assert regs <= 255 and all(int(x) <= 16 for x in re.findall(r"(\d+) bytes spill", rep)), (cfg, rep)
        smem = re.search(r"(\d+) bytes smem", rep)
        assert smem is None or int(smem.group(1)) <= 64, (cfg, rep)  # all but split-K's flag is dynamic


def test_shared_memory_follows_the_config_and_k():
    """The host side asks for what the constraint budgets: the flag, rings and two image sets a warp, B's K-slice."""
    h = host()
    sp = get_family(FAMILY).space
    cfg = dict(mr=2, kr=2, nb=2, warps=4, stages=8, cpl=1, splitk=16, bload="vec")
    # 4096 columns, split 16: 2 pointer chunks of 128 rows a block, 2 units of 16 bytes a row (no padding)
    want = 16 + 4 * (8 * 512 + 2 * 4 * 512) + 256 * 2 * 16
    assert h.shared_bytes(cfg, 4096) == want
    k = fake_kernel(FAMILY, cfg, "fp16", random_matrix(64, 4096, 0.01, "uniform", 0))
    assert h.smem_bytes(k) == want
    env = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    lim = {**DEFAULT_LIMITS, "max_dyn_smem_bytes": want}
    assert sp.check(cfg, env, lim) is None
    assert sp.check(cfg, env, {**lim, "max_dyn_smem_bytes": want - 1}) is not None


def test_constraints():
    sp = get_family(FAMILY).space
    env = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    base = dict(mr=2, kr=2, nb=2, warps=4, stages=8, cpl=1, splitk=16, bload="vec")
    assert sp.check(base, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "stages": 4}, env, DEFAULT_LIMITS) is not None  # a full record outgrows the ring
    assert sp.check({**base, "stages": 16}, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "kr": 4}, env, DEFAULT_LIMITS) is not None  # 8 tiles a record
    assert sp.check({**base, "nb": 4}, env, DEFAULT_LIMITS) is not None  # 32 columns for N = 16
    assert sp.check({**base, "splitk": 1}, env, DEFAULT_LIMITS) is None  # B's whole K in shared memory: 128 KB
    big = {**base, "splitk": 1, "warps": 8, "stages": 16, "cpl": 2}  # and 160 KB of rings and images
    assert sp.check(big, env, DEFAULT_LIMITS) is not None
    one = {**base, "mr": 1, "kr": 1}
    assert sp.check({**one, "stages": 2, "cpl": 2}, env, DEFAULT_LIMITS) is None  # 1 tile: 770 + 1024 <= 2048
    assert sp.check({**one, "stages": 2}, env, DEFAULT_LIMITS) is not None  # 770 + 512 > 1024
    assert sp.check({**base, "mr": 1, "stages": 4}, env, DEFAULT_LIMITS) is None  # 2 tiles: 1540 + 512 <= 2048
    odd = problem_env(4096, 4096, 3, 1_600_000, "fp16")
    assert sp.check({**base, "nb": 1}, odd, DEFAULT_LIMITS) is not None
    assert sp.check({**base, "nb": 1, "bload": "scalar"}, odd, DEFAULT_LIMITS) is None


def test_adapt_to_another_n():
    """A config stored for N = 64 (nb 8, vector staging) runs N = 1 as scalar staging and one 8-column tile."""
    fam = get_family(FAMILY)
    cfg = dict(mr=2, kr=1, nb=8, warps=4, stages=8, cpl=1, splitk=16, bload="vec")
    one = problem_env(4096, 4096, 1, 1_600_000, "fp16")
    got = fam.adapt(cfg, "fp16", one, DEFAULT_LIMITS)
    assert got is not None and got["bload"] == "scalar" and got["nb"] == 1
    assert fam.space.check(got, one, DEFAULT_LIMITS) is None
    assert fam.adapt(cfg, "fp16", problem_env(4096, 4096, 64, 1_600_000, "fp16"), DEFAULT_LIMITS) == cfg


def test_geometry_and_workspace_follow_the_config():
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(mr=2, kr=2, nb=2, warps=4, stages=8, cpl=1, splitk=4, bload="vec")
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    grid, block = h.geometry(k, 64)
    G = -(-1000 // 32)
    assert block == (128,) and grid == (-(-G // 4) * 4 * 4,)
    args = h.args(k, 64, "B", "C")
    ws, cnt = args[2], args[3]
    assert ws.host.shape == (-(-G // 4) * 4 * 4 * 4 * 32 * 2 * 2 * 4,) and cnt.host.shape == (-(-G // 4) * 4,)
    assert not cnt.host.any()
    assert args[4:6] == ("B", "C") and int(args[-1]) == 4 and int(args[-2]) == -(-(-(-3000 // 16) // 8) // 4)


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(n, dtype="fp16"):
    """A covering sample for N on the small edge-case matrices, each with split-K 1, 3 (or 2) and 32 where feasible."""
    sp = get_family(FAMILY).space
    env = problem_env(64, 3000, n, 1000, dtype)
    cfgs = []
    for cfg in _covering(n, 64, 3000):
        for splitk in (1, 2, 32):
            c = {**cfg, "splitk": splitk}
            if sp.check(c, env, DEFAULT_LIMITS) is None:
                cfgs.append(c)
    return cfgs[:: max(1, len(cfgs) // 16)]


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
        for n in (1, 3, 8, 16, 64, 127):
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
    assert checked > 300
