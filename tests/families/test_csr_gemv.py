"""csr_gemv (N <= 8: GEMV and tiny batches): the chunked CSR layout round-trips to A, its padding, the space's
constraints and adaptation to N, rendering (fp16 and bf16) and nvcc; on a GPU, against float64 on edge cases."""
from __future__ import annotations

import concurrent.futures
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

FAMILY = "csr_gemv"


def host():
    return get_family(FAMILY).host


def adversarial():
    rng = np.random.default_rng(5)

    def vals(a):
        a = sps.csr_matrix(a)
        a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
        return a

    out = {}
    a = sps.random(40, 70, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    out["empty_rows"] = vals(a)
    out["residues_37x53"] = vals(sps.random(37, 53, density=0.3, format="csr", random_state=3))
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = vals(a)
    out["density_0.7"] = vals(sps.random(64, 96, density=0.7, format="csr", random_state=4))
    d = np.zeros((30, 257))
    d[7] = 1.0  # one full row among empty ones
    out["one_dense_row"] = vals(sps.csr_matrix(d))
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["rows_of_8"] = vals(sps.csr_matrix(np.kron(np.eye(4), np.ones((1, 8)))))  # exactly one chunk a row
    return out


# ---- layout -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_round_trips_to_a(dtype):
    h = host()
    for name, a in adversarial().items():
        chunk_ptr, vals, idx = h.build(a, dtype)
        want = h.value_bits(a.toarray().ravel(), dtype).reshape(a.shape)
        np.testing.assert_array_equal(h.decode(chunk_ptr, vals, idx, a.shape), want, err_msg=name)
        lens = np.diff(a.indptr)
        assert (np.diff(chunk_ptr) == -(-lens // 8)).all()  # each row padded to whole chunks, no more
        assert len(vals) == len(idx) == max(8, 8 * int(chunk_ptr[-1])) and len(vals) % 8 == 0
        for r in range(a.shape[0]):  # the padding: weight 0 at the row's last column (a valid row of B)
            pad = slice(int(chunk_ptr[r]) * 8 + lens[r], int(chunk_ptr[r + 1]) * 8)
            assert not vals[pad].any() and (idx[pad] == (a.indices[a.indptr[r + 1] - 1] if lens[r] else 0)).all()


def test_layout_refuses_wide_k_and_keeps_the_matrix():
    h = host()
    with pytest.raises(ValueError):
        h.build(sps.csr_matrix((2, 70000), dtype=np.float32))
    a = sps.csr_matrix((np.array([1.0, 2.0]), np.array([3, 3]), np.array([0, 2])), shape=(1, 8))
    h.build(a)
    assert a.nnz == 2 and list(a.data) == [1.0, 2.0]  # duplicates summed on a copy


# ---- space, rendering, compiling --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    for n in (1, 3, 8, 20):
        checked = check_launch_matches_signature(FAMILY, dtype, a, n)
        assert checked > 0 or not get_family(FAMILY).space.supports(dtype)


def test_geometry_column_blocks_and_shared_memory():
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(lanes=16, warps=8, nb=4, iters=2, unroll=2)
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    assert h.geometry(k, 3) == ((-(-1000 // 32), 1), (256,))
    assert h.geometry(k, 9) == ((-(-1000 // 32), 3), (256,))  # N > nb: column blocks
    assert h.smem_bytes(k) == 3000 * 4 * 2


def test_constraints_and_adapt():
    fam = get_family(FAMILY)
    sp = fam.space
    one = problem_env(4096, 4096, 1, 1_600_000, "fp16")
    cfg = dict(lanes=16, warps=8, nb=8, iters=2, unroll=2)
    assert sp.check(cfg, one, DEFAULT_LIMITS) is not None  # 8 columns for N = 1
    got = fam.adapt(cfg, "fp16", one, DEFAULT_LIMITS)
    assert got == {**cfg, "nb": 1, "bsrc": "smem", "acc": "f32"}  # configs stored before bsrc / acc read as before
    assert sp.check(cfg, problem_env(4096, 70000, 8, 10, "fp16"), DEFAULT_LIMITS) is not None  # 16-bit indices
    smem = {**cfg, "bsrc": "smem", "acc": "f32"}
    assert sp.check(smem, problem_env(4096, 16384, 8, 10, "fp16"), DEFAULT_LIMITS) is not None  # B over 227 KB
    # B through L1 needs no shared memory, but full aligned column blocks
    l1 = {**cfg, "bsrc": "l1", "acc": "f32", "nb": 16}
    assert sp.check(l1, problem_env(4096, 16384, 16, 10, "fp16"), DEFAULT_LIMITS) is None
    assert sp.check(l1, problem_env(4096, 16384, 24, 10, "fp16"), DEFAULT_LIMITS) is not None
    assert sp.check({**l1, "nb": 1, "acc": "h2x4"}, problem_env(4096, 4096, 1, 10, "fp16"), DEFAULT_LIMITS) is not None
    assert "h2x4" not in sp.param("acc").choices("bf16")


def test_smem_only_where_b_is_copied():
    h = host()
    a = random_matrix(100, 3000, 0.1, "uniform", 1)
    base = dict(lanes=8, warps=8, nb=16, iters=2, unroll=2, acc="f32")
    assert h.smem_bytes(fake_kernel(FAMILY, {**base, "bsrc": "smem"}, "fp16", a)) == 3000 * 16 * 2
    assert h.smem_bytes(fake_kernel(FAMILY, {**base, "bsrc": "l1"}, "fp16", a)) == 0


@pytest.mark.parametrize("layout", ["kn", "nk"])
def test_new_options_compile_with_nvcc(layout):
    """nb 16 / 32, B through L1, half2 sums, and both operand layouts (nk: the bias parameter after C)."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cases = [("fp16", dict(lanes=8, warps=16, nb=16, iters=4, unroll=2, bsrc="smem", acc="f32")),
             ("fp16", dict(lanes=8, warps=8, nb=16, iters=2, unroll=2, bsrc="l1", acc="h2x4")),
             ("bf16", dict(lanes=16, warps=8, nb=32, iters=1, unroll=1, bsrc="l1", acc="f32")),
             ("fp16", dict(lanes=4, warps=4, nb=8, iters=2, unroll=4, bsrc="smem", acc="h2x4"))]
    srcs = [render.render(sp, c, dt, layout=layout) for dt, c in cases]
    for src in srcs:
        assert ("const unsigned short* __restrict__ bias" in src) == (layout == "nk")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda s: sat_compile.nvcc_check(s, arch="sm_90"), srcs))
    for (dt, cfg), rep in zip(cases, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        assert " 0 bytes spill stores" in rep or "spill" not in rep, (cfg, rep)


def test_every_config_renders_for_bf16_too():
    sp = get_family(FAMILY).space
    n = 0
    for cfg in sp.enumerate("fp16"):
        src = render.render(sp, cfg, "bf16")
        assert "cvt.rn.bf16.f32" in src and "cvt.f32.f16" not in src and "<< 16" in src
        n += 1
    assert n == len(list(sp.enumerate("fp16"))) > 100


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_configs_compile_with_nvcc(dtype):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = [dict(lanes=l, warps=w, nb=nb, iters=it, unroll=u)
            for l, w, nb, it, u in [(4, 2, 1, 1, 1), (8, 4, 2, 2, 2), (16, 8, 4, 4, 4), (32, 8, 8, 8, 2)]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype), arch="sm_90"), cfgs))
    for cfg, rep in zip(cfgs, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 64, (cfg, rep)


# ---- on the GPU -------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_correct_on_edge_cases():
    """Poisoned C, fresh random B, float64 reference, N = 1, 3, 8 and column blocks (N = 13, 127)."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    sp = get_family(FAMILY).space
    checked = 0
    for name, a in adversarial().items():
        a = sps.csr_matrix(a, copy=True)
        a.data = a.data.astype(np.float16).astype(np.float32)
        dev = DeviceCSR(a, "fp16")
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in (1, 3, 8, 13, 127):
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, "fp16")
            feas = list(sp.feasible("fp16", env, DEFAULT_LIMITS))
            cfgs = feas[:: max(1, len(feas) // 12)]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, "fp16"), cfgs))
            for k in kernels:
                b = cp.asarray(np.random.default_rng(checked).standard_normal((a.shape[1], n)).astype(np.float16))
                c = cp.empty((a.shape[0], n), dtype=cp.float16)
                assert check(lambda: k(b, c), c, reference(a64, b), "fp16") <= 2e-3, (name, n, k.config)
                checked += 1
    assert checked > 300
