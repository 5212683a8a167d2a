"""Walks of a family's space that several family tests share: the distinct feasible configs of a few problems, a
covering sample of a feasible list, the known-good configs adapted to a matrix and N (split-K ones twice, so a
second launch checks that the reduction's counters reset themselves), ptxas' report of a config for sm_90, and the
GPU check of a family's configs on a set of matrices (check_matrices_on_gpu)."""
from __future__ import annotations

import concurrent.futures
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sps

from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env


def unique_feasible(space, problems, dtype: str = "fp16"):
    """Each distinct feasible config of the problems (M, K, N, density) once, in order; every problem has one."""
    seen = set()
    for m, k, n, d in problems:
        feas = list(space.feasible(dtype, problem_env(m, k, n, round(d * m * k), dtype), DEFAULT_LIMITS))
        assert feas, (m, k, n)
        for cfg in feas:
            key = tuple(sorted(cfg.items()))
            if key not in seen:
                seen.add(key)
                yield cfg


def covering(space, feas: list, key, params, dtype: str, order=None) -> list:
    """Configs of `feas` covering each distinct key(cfg) (the first in `order`) and then each value of each of `params`
    (the first in `feas`; none where the problem rules the value out). Without `order`: both walks in one seeded
    random permutation of `feas`."""
    if order is None:
        feas = order = [feas[i] for i in np.random.default_rng(3).permutation(len(feas))]
    seen, out = set(), []
    for cfg in order:
        kk = key(cfg)
        if kk not in seen:
            seen.add(kk)
            out.append(cfg)
    for name in params:
        for v in space.param(name).choices(dtype):
            if not any(c.get(name) == v for c in out):
                out += [c for c in feas if c.get(name) == v][:1]
    return out


def adapted_known_goods(family, a, n: int, dtype: str, limits, split_key: str, keep=None) -> list:
    """The family's known-good configs adapted to A (scipy) and N, each once (and `keep`-ing only those it accepts),
    split-K ones (config[split_key] > 1) listed twice."""
    env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
    got = []
    for kg in family.space.known_good:
        ad = family.adapt(kg, dtype, env, limits)
        if ad is not None and ad not in got and (keep is None or keep(ad)):
            got += [ad, dict(ad)] if ad[split_key] > 1 else [ad]
    return got


def known_goods_in(space, dtypes=("fp16", "bf16")) -> list:
    """(config, dtype) for each known-good config normalized for each dtype; every one normalizes."""
    cfgs = [(space.normalize(kg, dt), dt) for kg in space.known_good for dt in dtypes]
    assert all(c is not None for c, _ in cfgs)
    return cfgs


def nvcc_sm90(space, cfg: dict, dtype: str) -> str:
    """ptxas' resource report (nvcc -arch=sm_90 -Xptxas -v) of the config's rendered kernel."""
    from sparse_autotune.core import render  # noqa: PLC0415
    from sparse_autotune.device import compile as sat_compile  # noqa: PLC0415
    return sat_compile.nvcc_check(render.render(space, cfg, dtype), arch="sm_90")


def compile_reports(space, pairs, threads: int = 2) -> list:
    """ptxas' report (nvcc_sm90) of each (config, dtype) of `pairs`, `threads` nvcc at once, in order; the test is
    skipped where nvcc is not installed."""
    import concurrent.futures  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    from sparse_autotune.device import compile as sat_compile  # noqa: PLC0415
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda cd: nvcc_sm90(space, *cd), pairs))


def nvcc_sm90a(src: str, sass: bool = False) -> tuple[str, str]:
    """(ptxas report, SASS or '') of `src` built for sm_90a (wgmma's target) by sat_compile.nvcc_check (NVRTC where its
    library loads, else nvcc); the test is skipped where nvcc is not installed, and SASS is '' where cuobjdump is not."""
    import pytest  # noqa: PLC0415

    from sparse_autotune.device import compile as sat_compile  # noqa: PLC0415
    nvcc = sat_compile.nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        try:
            rep = sat_compile.nvcc_check(src, "sm_90a", timeout=300, cubin=cubin)
        except sat_compile.CandidateError as exc:
            raise AssertionError(exc.log) from None
        out = ""
        dump = shutil.which("cuobjdump")
        if sass and dump:
            out = subprocess.run([dump, "-sass", str(cubin)], capture_output=True, text=True, timeout=120).stdout
        return rep, out


def regs_and_spill(cfg: dict, rep: str) -> tuple[int, int]:
    """(registers, spill-store bytes) of spmm_kernel in a ptxas report for sm_90."""
    assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
    regs = int(re.search(r"Used (\d+) registers", rep).group(1))
    return regs, max(int(x) for x in re.findall(r"(\d+) bytes spill stores", rep))


def check_matrices_on_gpu(family: str, cases: dict, dtype: str, n: int, configs_for, checked: int = 0,
                          tol: float | None = None) -> int:
    """Each matrix of `cases` as the kernel sees it (values rounded to the dtype), its configs_for(name) kernels built
    through the project's launch path (build_kernel, 8 at a time) and each launched twice (split-K's counters must
    reset themselves) on fresh random B (seeded by the launch's count), C poisoned, against the float64 reference at
    the dtype's tolerance (2e-3 fp16, 1.6e-2 bf16 and tf32), or `tol`; returns `checked` plus the launches checked."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.core.problem import DTYPES, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    for name, a in cases.items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data.astype(np.float32), DTYPES[dtype])  # what the kernel sees
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            kernels = list(pool.map(lambda c: build_kernel(dev, family, c, dtype), configs_for(name)))
        for k in kernels:
            for rep in range(2):
                bh = np.random.default_rng(checked).standard_normal((a.shape[1], n)).astype(np.float32)
                b = cp.asarray(storage(host_values(bh, DTYPES[dtype]), dtype))
                c = cp.empty((a.shape[0], n), dtype=b.dtype)
                err = check(lambda: k(b, c), c, reference(a64, b), dtype)
                assert err <= (tol or (2e-3 if dtype == "fp16" else 1.6e-2)), (name, n, k.config, rep, err)
                checked += 1
    return checked
