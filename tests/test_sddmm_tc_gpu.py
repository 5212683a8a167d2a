"""sddmm_tc (SDDMM on tensor cores) on the GPU: a covering sample of its configs, fp16 and bf16, on random and adversarial
masks (tests/test_sddmm_tc.all_masks: empty rows, one dense row of 3000, M = 1, N = 1, nnz = 0, a single nonzero,
unsorted columns, duplicates, N = 301, a band) at K = 8, 40, 64 and 1000 (40, 1000: not multiples of 16 or of a
K-chunk), then the known-good configs on two benchmark-sized masks (attention uniform 1024 x 1024 at K = 64 d 0.1,
weight gradient 768 x 3072 at K = 512 d 0.05), all against the float64 reference at core.problem.TOLERANCE with the
output poisoned and a guard after it (tests/test_sddmm_gpu._run_checked). Skipped without a GPU (tests/conftest.py).
About 40 kernels (NVRTC, in threads): ~1 minute on an H200."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from sddmm_cases import covering_sample, env_of, operands
from sparse_autotune.core.problem import TOLERANCE
from sparse_autotune.device.compile import compile_kernel
from sparse_autotune.ops import sddmm
from sparse_autotune.ops.sddmm_bench import BenchCase
from test_sddmm_gpu import _limits, _run_checked
from test_sddmm_tc import FAMILY, all_masks

KS = (8, 40, 64, 1000)


def _configs(dtype: str, k: int, lim: dict) -> list[dict]:
    """The known-good configs that fit, then a covering sample of the space at a roomy shape (every value of every
    parameter), kept where the small masks can run them (rows <= next_pow2(M) holds for M >= 128)."""
    space = sddmm.get_sddmm_space(FAMILY)
    env = sddmm.sddmm_env(400, 3000, k, 1000, dtype)
    cfgs = space.defaults(dtype, env, lim) + covering_sample(space, dtype, env, size=6, seed=k)
    out = []
    for c in cfgs:
        if c not in out:
            out.append(c)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_edge_cases_against_the_float64_reference(dtype):
    lim = _limits()
    space = sddmm.get_sddmm_space(FAMILY)
    cases = all_masks()
    checked = 0
    every = {sddmm.render_sddmm(FAMILY, c, dtype) for k in KS for c in _configs(dtype, k, lim)}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # NVRTC in threads first (device.compile caches them)
        list(pool.map(lambda src: compile_kernel(src, sddmm.KERNEL_NAME), sorted(every)))
    for k in KS:
        cfgs = _configs(dtype, k, lim)
        assert len(cfgs) >= 5, k
        for cfg in cfgs:
            for name, mask in cases.items():
                if space.check(cfg, env_of(mask, k, dtype), lim) is not None:
                    continue  # rows above the mask's height: another config serves it
                kern = sddmm.build_sddmm(mask, k, FAMILY, cfg, dtype, lim)
                x, y = operands(mask, k, dtype, seed=k + 1)
                err = _run_checked(kern, mask, dtype, x, y)
                assert err <= TOLERANCE[dtype], (dtype, k, name, cfg, err)
                checked += 1
    assert checked >= 150


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_known_good_configs_on_benchmark_sized_masks(dtype):
    lim = _limits()
    space = sddmm.get_sddmm_space(FAMILY)
    n = 0
    for case in (BenchCase("attention", "uniform", 1024, 1024, 64, 0.1, dtype),
                 BenchCase("weightgrad", "uniform", 768, 3072, 512, 0.05, dtype),
                 BenchCase("attention", "bigbird", 1024, 1024, 128, 0.05, dtype)):
        mask = case.build_mask()
        cfgs = space.defaults(dtype, env_of(mask, case.k, dtype), lim)
        cfgs += [{**cfgs[0], "order": "minhash"}]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            kerns = list(pool.map(lambda c: sddmm.build_sddmm(mask, case.k, FAMILY, c, dtype, lim), cfgs))
        x, y = operands(mask, case.k, dtype, seed=3)
        for cfg, kern in zip(cfgs, kerns):
            err = _run_checked(kern, mask, dtype, x, y)
            assert err <= TOLERANCE[dtype], (case.name, cfg, err)
            n += 1
    assert n >= 9


@pytest.mark.gpu
def test_sddmm_tc_runs_through_the_runtime_paths():
    """ops.sddmm_paths.build_path (what the tuner's records and the runtime run) builds the family like any other."""
    from sparse_autotune.ops import sddmm_paths as P
    mask = all_masks()["n_odd_137x301"]
    lim = _limits()
    cfg = sddmm.get_sddmm_space(FAMILY).defaults("fp16", env_of(mask, 64, "fp16"), lim)[0]
    run = P.build_path(mask, 64, FAMILY, cfg, "fp16", lim)
    x, y = operands(mask, 64, "fp16", seed=5)
    assert _run_checked(run, mask, "fp16", x, y) <= TOLERANCE["fp16"]
    assert np.isfinite(TOLERANCE["fp16"])
