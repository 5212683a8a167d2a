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
    """Every config of the session-9 parameters (kw 1, pipe 0) and a stride of the rest."""
    sp = get_family(FAMILY).space
    count = 0
    for i, cfg in enumerate(sp.enumerate("fp16")):
        if (cfg.get("kw", 1), cfg.get("pipe", 0)) != (1, 0) and i % 7:
            continue
        src = render.render(sp, cfg, "bf16")
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in src and ".f16." not in src
        assert "cvt.rn.bf16x2.f32" in src
        count += 1
    assert count > 10000


def _covering(n=256, m=512, k=2048):
    """Configs for N covering every mr x kr x nb x bload that is feasible (the other parameters cycled; pipe and kw
    taken in turn where cpl 1 offers them)."""
    sp = get_family(FAMILY).space
    env = problem_env(m, k, n, round(0.1 * m * k), "fp16")
    feas = list(sp.feasible("fp16", env, DEFAULT_LIMITS))
    by_key = {}
    for cfg in feas[::7] + feas:
        by_key.setdefault((cfg["mr"], cfg["kr"], cfg["nb"], cfg["bload"]), []).append(cfg)
    out = []
    for i, cands in enumerate(by_key.values()):
        want = ((i // 4) % 2, (1, 2, 4)[(i + i // 8) % 3])
        out.append(next((c for c in cands if (c.get("pipe"), c.get("kw")) == want), cands[0]))
    return out


NEW_CONFIGS = [  # issue 16, session 12: kw and pipe at the shapes the sweep runs, and at the edges
    dict(mr=1, kr=2, nb=2, warps=4, stages=4, cpl=1, splitk=4, kw=4, pipe=0, bload="vec"),  # 16 warps, 64 registers
    dict(mr=1, kr=2, nb=2, warps=4, stages=4, cpl=1, splitk=8, kw=2, pipe=1, bload="vec"),
    dict(mr=2, kr=2, nb=4, warps=2, stages=8, cpl=1, splitk=4, kw=4, pipe=1, bload="vec"),
    dict(mr=4, kr=1, nb=1, warps=2, stages=8, cpl=1, splitk=2, kw=2, pipe=1, bload="scalar"),
]


def _ptxas_ok(cfg, rep, spill_max=16):
    assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
    regs = int(re.search(r"Used (\d+) registers", rep).group(1))
    # ptxas may park a value or two of the epilogue (row, tile) on the stack across the loop: at most 16 bytes
    assert regs <= 255 and all(int(x) <= spill_max for x in re.findall(r"(\d+) bytes spill", rep)), (cfg, rep)
    smem = re.search(r"(\d+) bytes smem", rep)
    assert smem is None or int(smem.group(1)) <= 64, (cfg, rep)  # all but split-K's flag is dynamic
    return regs


def test_old_configs_render_as_before():
    """kw 1, pipe 0 (the defaults, which configs stored before session 12 get) render the session-9 kernel: none of
    the new code; a config without the new keys renders as one with their defaults; cpl 2 has neither parameter."""
    sp = get_family(FAMILY).space
    old = dict(mr=1, kr=2, nb=2, warps=4, stages=4, cpl=1, splitk=8, bload="vec")
    full = sp.normalize(old, "fp16")
    assert full == {**old, "kw": 1, "pipe": 0}
    src = render.render(sp, full, "fp16")
    assert render.render(sp, old, "fp16") == src
    assert "#define KW" not in src and "img_p" not in src and "red[" not in src
    assert "#define WARPS 4" in src and "#define MINB 7" in src  # the estimate: 28 warps an SM
    assert sp.normalize({**old, "cpl": 2, "stages": 2}, "fp16") == {**old, "cpl": 2, "stages": 2}
    new = render.render(sp, {**full, "kw": 2, "pipe": 0}, "fp16")
    assert "#define KW 2" in new and "#define RG 4" in new and "#define WARPS 8" in new and "#define MINB 4" in new
    assert "img_p" in render.render(sp, {**full, "pipe": 1}, "fp16")


def test_new_parameters_compile_with_nvcc():
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, "fp16"), arch="sm_90"),
                                NEW_CONFIGS))
    for cfg, rep in zip(NEW_CONFIGS, reports):
        regs = _ptxas_ok(cfg, rep)
        if cfg["kw"] > 1 and not cfg["pipe"] and cfg["mr"] * cfg["nb"] <= 2:
            assert regs <= 64, (cfg, rep)  # 32 warps an SM


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
        _ptxas_ok(cfg, rep)


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
    want = {**cfg, "kw": 1, "pipe": 0}  # a config stored before session 12: the new parameters' defaults
    assert fam.adapt(cfg, "fp16", problem_env(4096, 4096, 64, 1_600_000, "fp16"), DEFAULT_LIMITS) == want


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


# ---- session 12 (issue 16): kw, pipe, minw -----------------------------------------------------------------

def _pipe_ring_walk(h, ptr, stream, info, kc0, kc1, stages, cpl, kr):
    """The pipelined loop's ring protocol (variants/tc_tiled2.cu.j2, pipe = 1) replayed over one warp's records: chunk
    c of the warp's stream goes to slot c % stages when issued; cp.async.wait_group makes chunks < need complete; a
    read of bytes [x0, x1) must find each chunk issued, complete, not yet overwritten and inside the stream. Returns
    the records walked."""
    CH, T = 512 * cpl, info["mr"] * kr
    H = 2 * T
    nkc = info["nkc"]
    KT = info["KT"]
    s16 = stream.view(np.uint16)
    walked = 0
    for grp in range(info["G"]):
        beg = int(ptr[grp * (nkc + 1) + kc0])
        end = int(ptr[grp * (nkc + 1) + kc1])
        s0, s1 = kc0 * h.KG, min(-(-KT // kr) * kr, kc1 * h.KG)
        if s0 >= s1:
            continue
        base = beg & ~15
        nch = -(-(end - base) // CH)
        st = {"issued": stages, "done": stages}  # wait_group 0 before the loop: the first stages chunks are on chip

        def read(x0, x1):
            for c in range(x0 // CH, (x1 - 1) // CH + 1):
                assert c < nch and c < st["done"] and st["issued"] - stages <= c < st["issued"], (grp, x0, x1, c, st)

        def wait(want):
            need = -(-want // CH)
            assert need <= st["issued"], (grp, want, st)  # cp_wait(issued - need) with issued - need >= 0
            st["done"] = max(st["done"], need)
            return need * CH

        pos, ready_end, refill_at = beg - base, stages * CH, CH
        read(pos, pos + H)
        n = [int(s16[(base + pos) // 2 + i]) for i in range(T)]
        for s in range(s0, s1, kr):
            nxt = (pos + H + 3 * sum(n) + H - 1) & ~(H - 1)
            more = s + kr < s1
            pre = more and nxt + H <= st["issued"] * CH
            want = nxt + H if pre else nxt
            if want > ready_end:
                ready_end = wait(want)
            if pre:
                read(nxt, nxt + H)
                nn = [int(s16[(base + nxt) // 2 + i]) for i in range(T)]
            read(pos, pos + H + 3 * sum(n))  # the record's values and positions (scatter)
            pos = nxt
            while pos >= refill_at:
                st["issued"] += 1
                refill_at += CH
            if more and not pre:
                if pos + H > ready_end:
                    ready_end = wait(pos + H)
                read(pos, pos + H)
                nn = [int(s16[(base + pos) // 2 + i]) for i in range(T)]
            if more:
                n = nn
            walked += 1
        assert base + pos == end, (grp, base + pos, end)
    return walked


def test_pipelined_ring_protocol_reads_only_what_is_on_chip():
    """For every tile geometry and every ring the constraint allows, over full records (dense: the largest record at
    every header position) and the adversarial patterns, the pipelined loop's early header reads, waits and refills
    never read a chunk that is not on chip, and walk each warp's records to its end pointer; split into warps' shares
    of the K range as kw cuts it (a share of 1, of 3 and of all pointer chunks)."""
    h = host()
    sp = get_family(FAMILY).space
    # (16 x 8192 dense: a long run of full records, whose header positions take every value in a chunk, so the early
    # header read is refused at a chunk's last header slot and the rare path reads it after the refill)
    mats = [sps.csr_matrix(np.ones((40, 700))), sps.csr_matrix(np.ones((16, 8192)))] + [
        adversarial()[k] for k in ("full_tile", "long_k_24x3000", "passes_33_and_129", "single_nonzero")]
    walked = 0
    for mr, kr in GEOMS:
        rings = [(st, cpl) for st in (2, 4, 8, 16) for cpl in (1, 2)
                 if sp.check(dict(mr=mr, kr=kr, nb=1, warps=2, stages=st, cpl=cpl, splitk=1, bload="scalar", kw=1,
                                  pipe=1), problem_env(64, 256, 8, 100, "fp16"), DEFAULT_LIMITS) is None]
        assert rings
        for a in mats:
            ptr, stream, info = h.build(a, mr, kr)
            nkc = info["nkc"]
            for stages, cpl in rings:
                for share in (1, 3, nkc):
                    for kc0 in range(0, nkc, share):
                        walked += _pipe_ring_walk(h, ptr, stream, info, kc0, min(nkc, kc0 + share), stages, cpl, kr)
    assert walked > 1000


def test_new_parameters_shared_memory_geometry_and_workspace():
    """pipe: a third image set a warp; kw: warps * kw warps a block (threads, shared memory), row blocks and workspace
    slices by row groups as before, the block's shared memory at least every warp's partial sums; the constraints
    budget the same."""
    h = host()
    sp = get_family(FAMILY).space
    base = dict(mr=1, kr=2, nb=2, warps=4, stages=4, cpl=1, splitk=4, kw=4, pipe=0, bload="vec")
    b_slice = 1024 * 2 * 16  # 4096 columns, split 4: 8 pointer chunks of 128 rows, 32 bytes a row
    assert h.shared_bytes(base, 4096) == 16 + 16 * (2048 + 2 * 2 * 512) + b_slice
    assert h.shared_bytes({**base, "pipe": 1}, 4096) == 16 + 16 * (2048 + 3 * 2 * 512) + b_slice
    wide = {**base, "mr": 2, "nb": 8, "kr": 1, "splitk": 32, "stages": 8}  # 8 KB of sums a warp: more than the rest
    assert h.shared_bytes(wide, 4096) == 16 + 16 * 2 * 8 * 512 > h.shared_bytes({**wide, "kw": 1}, 4096)
    env = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    for cfg in (base, {**base, "pipe": 1}, {**base, "kw": 2, "warps": 8}):
        need = h.shared_bytes(cfg, 4096)
        assert sp.check(cfg, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need}) is None, cfg
        assert sp.check(cfg, env, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need - 1}) is not None, cfg
    env64 = problem_env(4096, 4096, 64, 1_600_000, "fp16")
    need = h.shared_bytes(wide, 4096)
    assert sp.check(wide, env64, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need}) is None
    assert sp.check(wide, env64, {**DEFAULT_LIMITS, "max_dyn_smem_bytes": need - 1}) is not None
    assert sp.check({**base, "warps": 8, "kw": 4}, env, {**DEFAULT_LIMITS, "max_threads": 1024}) is None  # 32 warps
    assert sp.check({**base, "warps": 8, "kw": 4}, env, {**DEFAULT_LIMITS, "max_threads": 512}) is not None
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    k = fake_kernel(FAMILY, base, "fp16", a)
    grid, block = h.geometry(k, 16)
    G = -(-1000 // 16)
    assert block == (512,) and grid == (-(-G // 4) * 4,)  # 4 row groups of 4 warps a block, split-K 4, one column tile
    ws = h.args(k, 16, "B", "C")[2]
    assert ws.host.shape == (-(-G // 4) * 4 * 4 * 32 * 2 * 4,)  # slices of row groups, as with kw 1
