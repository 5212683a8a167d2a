"""SDDMM on the GPU (sparse_autotune/ops/sddmm.py): each family, a covering sample of its feasible configs, fp32 / fp16 /
bf16, on random and adversarial masks (empty rows, one dense row, M = 1, N = 1, nnz = 0, a single nonzero, unsorted
columns) at K = 32, 33, 128 and 1000 (33: not a multiple of any vector width but 1; 1000: not a multiple of a pass or a
chunk), against the float64 reference at core.problem.TOLERANCE; the output is poisoned before each run and the
memory right after it must stay untouched. The dense and cuSPARSE baselines likewise (cuSPARSE: fp32 and fp16; bf16 a
one-line UserError). Skipped without a GPU (tests/conftest.py)."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from sddmm_cases import covering_sample, env_of, masks, operands, storage_dtype
from sparse_autotune.core.problem import TOLERANCE
from sparse_autotune.errors import UserError
from sparse_autotune.ops import sddmm

FAMILIES = ("sddmm_tile", "sddmm_warp")
DTYPES = ("fp32", "fp16", "bf16")
KS = (32, 33, 128, 1000)
GUARD = 64  # elements after out that no kernel may write


def _limits():
    from sparse_autotune.device.gpu import gpu_info
    return gpu_info().limits()


def _run_checked(run, mask, dtype, x, y):
    """Poisoned out (+ a guard after it), run, the relative error against the float64 reference; the guard must keep
    its bytes."""
    import cupy as cp
    from sparse_autotune.device.verify import check
    buf = cp.empty(mask.nnz + GUARD, dtype=storage_dtype(dtype))
    buf.view(cp.uint8).fill(0x5A)
    out = buf[:mask.nnz]
    ref = cp.asarray(sddmm.sddmm_reference(mask, x, y, dtype))
    err = check(lambda: run(cp.asarray(x), cp.asarray(y), out), out, ref, dtype)
    assert bool((buf[mask.nnz:].view(cp.uint8) == 0x5A).all()), "wrote past the end of out"
    return err


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_family_correct_on_edge_cases(family, dtype):
    space = sddmm.get_sddmm_space(family)
    lim = _limits()
    cases = masks()
    checked = 0
    for k in KS:
        ref_mask = cases["random_300x200"]
        cfgs = covering_sample(space, dtype, env_of(ref_mask, k, dtype), size=6, seed=k)
        assert cfgs, (family, dtype, k)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # compile in parallel (NVRTC, cached by source)
            list(pool.map(lambda c: sddmm.build_sddmm(ref_mask, k, family, c, dtype, lim), cfgs))
        for name, mask in cases.items():
            x, y = operands(mask, k, dtype, seed=checked)
            for cfg in cfgs:
                if space.check(cfg, env_of(mask, k, dtype), lim) is not None:
                    continue
                kern = sddmm.build_sddmm(mask, k, family, cfg, dtype, lim)
                err = _run_checked(kern, mask, dtype, x, y)
                assert err <= TOLERANCE[dtype], (family, dtype, k, name, cfg, err)
                checked += 1
    assert checked >= len(KS) * len(cases) * 4


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_known_good_configs_are_correct(dtype):
    mask = masks()["random_300x200"]
    lim = _limits()
    n = 0
    for space in sddmm.load_sddmm_spaces():
        for k in (64, 256, 1024):
            for cfg in space.defaults(dtype, env_of(mask, k, dtype), lim):
                kern = sddmm.build_sddmm(mask, k, space.family, cfg, dtype, lim)
                x, y = operands(mask, k, dtype, seed=k)
                assert _run_checked(kern, mask, dtype, x, y) <= TOLERANCE[dtype], (space.family, k, cfg)
                n += 1
    assert n >= 6


@pytest.mark.gpu
def test_large_shared_memory_and_long_rows():
    """sddmm_warp with X's rows in shared memory above 48 KB (the kernel opts in), and a mask with rows longer than any
    segment or pass, at K = 1024."""
    import scipy.sparse as sps
    lim = _limits()
    rng = np.random.default_rng(3)
    mask = sps.random(64, 5000, density=0.4, format="csr", random_state=5)
    mask.data = (rng.standard_normal(mask.nnz) + 0.5).astype(np.float32)
    cfg = dict(lanes=4, vec=4, warps=4, seg=512, nzi=4, xsrc="smem")  # 32 subwarps x 1024 x 4 bytes = 128 KB
    for family, c in (("sddmm_warp", cfg), ("sddmm_tile", dict(rows=1, kc=256, npt=8, threads=512, vec=4,
                                                                   copy="async"))):
        if sddmm.get_sddmm_space(family).check(c, env_of(mask, 1024, "fp32"), lim) is not None:
            pytest.skip(f"this GPU cannot run {family} {c}")
        kern = sddmm.build_sddmm(mask, 1024, family, c, "fp32", lim)
        x, y = operands(mask, 1024, "fp32", seed=1)
        assert _run_checked(kern, mask, "fp32", x, y) <= TOLERANCE["fp32"], family


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_baseline_is_correct(dtype):
    for name in ("random_300x200", "empty_rows", "n1", "nnz0", "unsorted_columns"):
        mask = masks()[name]
        for k in (33, 128):
            run = sddmm.build_dense_baseline(mask, k, dtype)
            x, y = operands(mask, k, dtype, seed=k)
            # fp16: X @ Y^T is rounded to fp16 before the gather (cuBLAS's output), a second rounding
            assert _run_checked(run, mask, dtype, x, y) <= 2 * TOLERANCE[dtype], (name, k)


def _check_operands(fn, mask):
    """fn (an fp16 launcher for `mask` at K = 64) runs on good operands and refuses each bad one in one line."""
    import cupy as cp
    x = cp.zeros((mask.shape[0], 64), cp.float16)
    y = cp.zeros((mask.shape[1], 64), cp.float16)
    out = cp.zeros(mask.nnz, cp.float16)
    fn(x, y, out)
    for args, want in [((x[:, :32], y, out), "shape"), ((x, y.astype(cp.float32), out), "dtype"),
                       ((x, y, out[:-1]), "shape"), ((cp.asfortranarray(x), y, out), "C-contiguous"),
                       ((x.get(), y, out), "CuPy array")]:
        with pytest.raises(UserError, match=want):
            fn(*args)


@pytest.mark.gpu
def test_operands_are_checked():
    mask = masks()["random_300x200"]
    kern = sddmm.build_sddmm(mask, 64, "sddmm_tile", dict(rows=8, kc=64, npt=2, threads=128, vec=4, copy="sync"),
                             "fp16")
    _check_operands(kern, mask)


CUSPARSE_DTYPES = ("fp32", "fp16")


def _duplicates_mask():
    """A mask with a repeated (row, column) entry and unsorted columns: each stored entry gets its own product."""
    import scipy.sparse as sps
    return sps.csr_matrix((np.array([2.0, -1.5, 0.75, 3.0, 1.25], np.float32), np.array([4, 1, 4, 0, 2]),
                           np.array([0, 3, 3, 5])), shape=(3, 6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUSPARSE_DTYPES)
def test_cusparse_baseline_is_correct(dtype):
    cases = {**masks(), "duplicates": _duplicates_mask()}
    for name, mask in cases.items():
        for k in (32, 33, 128):
            run = sddmm.build_cusparse_sddmm(mask, k, dtype)
            x, y = operands(mask, k, dtype, seed=k)
            # one rounding of each output (fp32 products scaled by S.data in fp32), like the kernels
            assert _run_checked(run, mask, dtype, x, y) <= TOLERANCE[dtype], (name, k)


@pytest.mark.gpu
def test_cusparse_baseline_refuses_bf16_in_one_line():
    with pytest.raises(UserError) as ei:
        sddmm.build_cusparse_sddmm(masks()["random_300x200"], 64, "bf16")
    assert "\n" not in str(ei.value) and "cuSPARSE SDDMM does not support bf16" in str(ei.value)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUSPARSE_DTYPES)
def test_cusparse_baseline_takes_each_calls_operands_on_the_current_stream(dtype):
    """One baseline, several X / Y / out buffers in turn (its descriptors re-pointed each call), on a non-default
    stream, with the results read only after that stream's work."""
    import cupy as cp
    mask = masks()["random_300x200"]
    run = sddmm.build_cusparse_sddmm(mask, 96, dtype)
    stream = cp.cuda.Stream(non_blocking=True)
    outs, refs = [], []
    with stream:
        for seed in range(3):
            x, y = operands(mask, 96, dtype, seed=100 + seed)
            out = cp.full(mask.nnz, np.nan, dtype=storage_dtype(dtype))
            run(cp.asarray(x), cp.asarray(y), out)
            outs.append(out)
            refs.append(sddmm.sddmm_reference(mask, x, y, dtype))
    stream.synchronize()
    for out, ref in zip(outs, refs):
        got = out.get().astype(np.float64)
        assert np.all(np.isfinite(got))
        assert np.max(np.abs(got - ref)) <= TOLERANCE[dtype] * np.max(np.abs(ref)), dtype


@pytest.mark.gpu
def test_cusparse_baseline_checks_operands_and_frees_its_descriptors():
    import gc
    import weakref

    import cupy as cp
    mask = masks()["random_300x200"]
    run = sddmm.build_cusparse_sddmm(mask, 64, "fp16")
    _check_operands(run, mask)
    launcher = run.launcher
    descs = (launcher.mat_x, launcher.mat_y, launcher.mat_c)
    assert all(d.value for d in descs)
    gone = weakref.ref(launcher)
    del run, launcher
    gc.collect()
    assert gone() is None and not any(d.value for d in descs)  # __del__ destroyed each descriptor
    empty = sddmm.build_cusparse_sddmm(masks()["nnz0"], 64, "fp32")
    assert empty.launcher is None
    e_out = cp.zeros(0, cp.float32)
    assert empty(cp.zeros((50, 64), cp.float32), cp.zeros((60, 64), cp.float32), e_out) is e_out
