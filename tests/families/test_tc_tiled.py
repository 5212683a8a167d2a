"""tc_tiled (compressed tensor-core tiles for small N): the tile stream round-trips to A by the kernel's own per-lane
decode rule, its size per format, the pointer table, rendering and nvcc, adaptation to N; on a GPU, every format and
geometry against float64 on edge cases (fp16, and bf16 through the template alone)."""
from __future__ import annotations

import concurrent.futures
import itertools
import re
import time

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import check_launch_matches_signature
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device import compile as sat_compile

FAMILY = "tc_tiled"


def host():
    """The family's host side (variants/tc_tiled.py), loaded by the registry."""
    return get_family(FAMILY).host


def _vals(a, rng):
    a = sps.csr_matrix(a)
    a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5  # never zero after rounding to 16 bits
    return a


def adversarial():
    """Empty rows and tiles, a full tile, M and K not multiples of the tile, one nonzero, 70 %, all zero, dense."""
    rng = np.random.default_rng(11)
    out = {}
    a = sps.random(40, 70, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    a[:, 16:48] = 0  # empty tiles
    out["empty_rows_and_tiles"] = _vals(a, rng)
    a = sps.random(48, 64, density=0.05, format="lil", random_state=2)
    a[16:32, 32:48] = 1.0  # a full 16 x 16 tile
    a[0:8, 0:16] = 1.0  # a full 8 x 16 unit
    out["full_tile"] = _vals(a, rng)
    out["residues_37x53"] = _vals(sps.random(37, 53, density=0.3, format="csr", random_state=3), rng)
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = _vals(a, rng)
    out["density_0.7"] = _vals(sps.random(64, 96, density=0.7, format="csr", random_state=4), rng)
    out["long_k_24x3000"] = _vals(sps.random(24, 3000, density=0.1, format="csr", random_state=5), rng)
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["dense_33x129"] = _vals(sps.csr_matrix(np.ones((33, 129))), rng)
    return out


def bits16(a, dtype="fp16"):
    return host()._value_bits(a.toarray().ravel(), dtype).reshape(a.shape)


# ---- the tile stream --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,ru", list(itertools.product(["bitmap", "offset"], [1, 2, 4])))
def test_stream_round_trips_to_a_by_the_lane_rule(fmt, ru):
    """decode() walks each group's stream record by record from the headers (as a warp does) and computes each lane's
    values with the kernel's arithmetic (popc of the masked word; the image and ldmatrix's fragment rule): it must give
    A's 16-bit values exactly, for every adversarial pattern."""
    h = host()
    for name, a in adversarial().items():
        for dtype in ("fp16", "bf16"):
            ptr, stream, info = h.build(a, fmt, ru, dtype)
            got = h.decode(ptr, stream, info)
            assert got.shape == a.shape, name
            np.testing.assert_array_equal(got, bits16(a, dtype), err_msg=f"{name} {dtype}")
            assert info["nnz"] == a.count_nonzero()


def test_stream_layout_invariants():
    """Pointers are monotone, a group's end is the next group's start, the stream is padded for the last chunk's
    over-read and 16-byte aligned in length; records of the bitmap format are 4-byte aligned."""
    h = host()
    a = random_matrix(100, 3000, 0.1, "uniform", 1)
    for fmt, ru in itertools.product(["bitmap", "offset"], [1, 2, 4]):
        ptr, stream, info = h.build(a, fmt, ru)
        G, nkc = info["G"], info["nkc"]
        assert G == -(-100 // (8 * ru)) and nkc == -(-(-(-3000 // 16)) // h.KG)
        p = ptr.reshape(G, nkc + 1)
        assert p[0, 0] == 0 and (np.diff(p, axis=1) > 0).all()  # every pointer chunk has records
        assert (p[1:, 0] == p[:-1, -1]).all() and p[-1, -1] == info["stream_bytes"]
        assert len(stream) % 16 == 0 and len(stream) >= info["stream_bytes"] + 1024 + 16
        assert not stream[info["stream_bytes"]:].any()
        if fmt == "bitmap":
            assert (p % 4 == 0).all()
        assert info["bytes"] == info["stream_bytes"] + ptr.nbytes


def test_bytes_per_nonzero_follow_the_formats():
    """Bitmap: 2 bytes a nonzero + 20 bytes a 128-element unit; offset: 3 bytes a nonzero + 2 a 256-element sub-record.
    The bitmap is the smaller one at 50 %, the offsets at 5 %."""
    h = host()
    per = {}
    for d in (0.5, 0.05):
        a = random_matrix(256, 2048, d, "uniform", 2)
        for fmt in ("bitmap", "offset"):
            per[fmt, d] = h.build(a, fmt, 2)[2]["bytes"] / a.nnz
    assert 2.2 < per["bitmap", 0.5] < 2.45 and 3.0 < per["offset", 0.5] < 3.1
    assert per["bitmap", 0.5] < per["offset", 0.5]
    assert per["offset", 0.05] < per["bitmap", 0.05] and 3.1 < per["offset", 0.05] < 3.4


def test_bf16_values_round_to_nearest_even():
    v = np.array([1.0, 1.00390625, 1.01171875, -3.140625, 65504.0], dtype=np.float32)  # ties and exact values
    got = host()._value_bits(v, "bf16")
    assert list(got) == [0x3F80, 0x3F80, 0x3F82, 0xC049, 0x4780]


def test_the_builder_leaves_the_callers_matrix_alone_and_is_vectorised():
    """Duplicates and explicit zeros are handled on a copy; 1M nonzeros build in seconds (no per-nonzero loop)."""
    h = host()
    a = sps.csr_matrix((np.array([1.0, 2.0, 0.0]), np.array([3, 3, 5]), np.array([0, 3])), shape=(1, 8))
    before = (a.data.copy(), a.indices.copy())
    ptr, stream, info = h.build(a, "bitmap", 1)
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(a.indices, before[1])
    want = np.zeros((1, 8), dtype=np.float16)
    want[0, 3] = 3.0
    np.testing.assert_array_equal(h.decode(ptr, stream, info), want.view(np.uint16))
    big = random_matrix(1024, 2048, 0.5, "uniform", 3)
    t0 = time.perf_counter()
    h.build(big, "bitmap", 2)
    h.build(big, "offset", 2)
    assert time.perf_counter() - t0 < 20.0


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    for n in (1, 16, 100):
        checked = check_launch_matches_signature(FAMILY, dtype, a, n)
        assert checked > 0 or not get_family(FAMILY).space.supports(dtype)


def test_every_config_renders_for_bf16_too():
    """bf16 is the template's other 16-bit type: every config renders, with bf16 MMAs and conversions only."""
    sp = get_family(FAMILY).space
    count = 0
    for cfg in sp.enumerate("fp16"):
        src = render.render(sp, cfg, "bf16")
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in src and ".f16." not in src
        assert "cvt.rn.bf16x2.f32" in src
        count += 1
    assert count == len(list(sp.enumerate("fp16"))) > 10000


def _covering(dtype, n=256):
    """Configs for N covering every fmt x ru x nt x bload pair that is feasible (others cycled)."""
    sp = get_family(FAMILY).space
    env = problem_env(512, 2048, n, round(0.1 * 512 * 2048), "fp16")
    feas = list(sp.feasible("fp16", env, DEFAULT_LIMITS))
    seen, out = set(), []
    for cfg in feas[::7] + feas:
        key = (cfg["fmt"], cfg["ru"], cfg["nt"], cfg["bload"], cfg["stages"], cfg["cpl"])
        if key[:4] not in seen:
            seen.add(key[:4])
            out.append(cfg)
    return out


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_covering_sample_compiles_with_nvcc(dtype):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = _covering(dtype)[::3]
    assert len(cfgs) >= 8
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype), arch="sm_90"), cfgs))
    for cfg, rep in zip(cfgs, reports):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        assert regs <= 255, cfg
        smem = re.search(r"(\d+) bytes smem", rep)
        img = 0 if cfg["fmt"] == "bitmap" else (1024 if cfg["ru"] >= 2 else 512)
        want = cfg["warps"] * (cfg["stages"] * 512 * cfg["cpl"] + img)
        assert smem and want <= int(smem.group(1)) <= want + 16, (cfg, rep)  # what the smem constraint budgets


def test_constraints_keep_the_ring_and_shared_memory_in_bounds():
    sp = get_family(FAMILY).space
    env = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    base = dict(fmt="bitmap", ru=2, nt=1, warps=4, stages=4, cpl=1, splitk=8, bload="vec", bpf=4)
    assert sp.check(base, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "ru": 4, "stages": 2}, env, DEFAULT_LIMITS) is not None  # a full record outgrows the ring
    assert sp.check({**base, "ru": 4, "stages": 2, "cpl": 2}, env, DEFAULT_LIMITS) is not None
    assert sp.check({**base, "ru": 4, "stages": 4}, env, DEFAULT_LIMITS) is None
    assert sp.check({**base, "warps": 8, "stages": 8, "cpl": 2}, env, DEFAULT_LIMITS) is not None  # 64 KB of rings
    assert sp.check({**base, "nt": 2}, env, DEFAULT_LIMITS) is not None  # 32 columns for N = 16
    odd = problem_env(4096, 4096, 1, 1_600_000, "fp16")
    assert sp.check(base, odd, DEFAULT_LIMITS) is not None and sp.check({**base, "bload": "scalar"}, odd) is None


def test_adapt_to_another_n():
    """A config stored for N = 64 (nt 4, vector loads) runs N = 1 as 16-bit loads and one 16-column tile."""
    fam = get_family(FAMILY)
    cfg = dict(fmt="offset", ru=2, nt=4, warps=4, stages=4, cpl=1, splitk=8, bload="vec", bpf=4)
    one = problem_env(4096, 4096, 1, 1_600_000, "fp16")
    got = fam.adapt(cfg, "fp16", one, DEFAULT_LIMITS)
    assert got is not None and got["bload"] == "scalar" and fam.space.check(got, one, DEFAULT_LIMITS) is None
    assert fam.adapt(cfg, "fp16", problem_env(4096, 4096, 64, 1_600_000, "fp16"), DEFAULT_LIMITS) == cfg


def test_geometry_and_workspace_follow_the_config():
    """Blocks = row blocks x splitk x column tiles; split-K gets a workspace slice per block and a counter per tile."""
    from fakes import fake_kernel
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(fmt="bitmap", ru=2, nt=2, warps=4, stages=4, cpl=1, splitk=4, bload="vec", bpf=0)
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    grid, block = h.geometry(k, 64)
    G = -(-1000 // 16)
    assert block == (128,) and grid == (-(-G // 4) * 4 * 2,)
    args = h.args(k, 64, "B", "C")
    ws, cnt = args[2], args[3]
    assert ws.host.shape == (-(-G // 4) * 2 * 4 * 4 * 32 * 2 * 2 * 4,) and cnt.host.shape == (-(-G // 4) * 2,)
    assert not cnt.host.any()  # the counters start at zero
    assert args[4:6] == ("B", "C") and int(args[-1]) == 2 and int(args[-2]) == -(-(-(-3000 // 16) // 8) // 4)


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(n):
    sp = get_family(FAMILY).space
    cfgs = []
    for cfg in _covering("fp16", n):
        for splitk in (1, 3 if cfg["splitk"] != 3 else 2, 32):
            c = {**cfg, "splitk": splitk if splitk in sp.param("splitk").choices("fp16") else 4}
            if sp.check(c, problem_env(64, 3000, n, 1000, "fp16"), DEFAULT_LIMITS) is None:
                cfgs.append(c)
    return cfgs[:: max(1, len(cfgs) // 16)]


@pytest.mark.gpu
def test_every_format_and_geometry_correct_on_edge_cases():
    """fp16 through the project's launch path (build_kernel, Kernel.__call__): poisoned C, fresh random B, float64
    reference; a split-K config runs twice (its counters must reset themselves)."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    checked = 0
    for name, a in adversarial().items():
        a = sps.csr_matrix(a, copy=True)
        a.data = a.data.astype(np.float16).astype(np.float32)  # what the kernel sees
        dev = DeviceCSR(a, "fp16")
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in (1, 3, 8, 16, 64, 127):
            cfgs = _gpu_configs(n)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, "fp16"), cfgs))
            for k in kernels:
                for rep in range(2 if k.config["splitk"] > 1 else 1):
                    b = cp.asarray(np.random.default_rng(checked).standard_normal((a.shape[1], n)).astype(np.float16))
                    c = cp.empty((a.shape[0], n), dtype=cp.float16)
                    err = check(lambda: k(b, c), c, reference(a64, b), "fp16")
                    assert err <= 2e-3, (name, n, k.config, rep)
                    checked += 1
    assert checked > 500


@pytest.mark.gpu
def test_bf16_template_correct():
    """bf16 has no problem dtype yet: the bf16 source is compiled and launched directly with the host side's layout
    (bf16 bits) and checked against float64 of the bf16-rounded operands (tolerance 1.6e-2)."""
    import cupy as cp
    h = host()
    sp = get_family(FAMILY).space

    class Dev:  # what the host side reads of the device matrix
        def __init__(self, a):
            self.shape, self.host, self._c = a.shape, a, {}

        def cached(self, key, build):
            if key not in self._c:
                got = build(self.host)
                self._c[key] = tuple(cp.asarray(x) if isinstance(x, np.ndarray) else x for x in got)
            return self._c[key]

    class K:
        def __init__(self, cfg, dev):
            self.config, self.dtype, self.a = cfg, "bf16", dev

    def bf16(x):
        return h._value_bits(x.ravel(), "bf16").reshape(x.shape)

    def f64(bits):
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    checked = 0
    for name, a in adversarial().items():
        dev = Dev(a)
        a64 = f64(bf16(a.toarray().astype(np.float32)))
        for n in (1, 8, 64):
            for cfg in _gpu_configs(n)[::3]:
                fn = sat_compile.compile_kernel(render.render(sp, cfg, "bf16"))
                k = K(cfg, dev)
                bb = bf16(np.random.default_rng(n).standard_normal((a.shape[1], n)).astype(np.float32))
                b = cp.asarray(bb)
                for rep in range(2):
                    c = cp.full((a.shape[0], n), 0xFFFF, dtype=cp.uint16)
                    grid, block = h.geometry(k, n)
                    fn(grid, block, h.args(k, n, b, c))
                    out = f64(cp.asnumpy(c))
                    ref = a64 @ f64(bb)
                    den = np.linalg.norm(ref)
                    err = np.linalg.norm(out - ref) / den if den else np.abs(out).max()
                    assert np.isfinite(out).all() and err <= 1.6e-2, (name, n, cfg, err)
                    checked += 1
    assert checked > 50
