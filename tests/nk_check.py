"""The GPU checks the family tests share: kn kernels on edge cases (tc_gather, tc_gather2), and the native nk ones
(csr_btile, tc_gather): the configs an nk problem runs natively, and those kernels, run through the project's launch
path against float64 on edge cases."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sps


def native_nk_configs(family: str, dtype: str, m: int, k: int, n: int, nnz: int) -> list[dict]:
    """The configs an nk problem runs natively (the nk space's, nk_path native, without the path)."""
    from sparse_autotune.core.families import get_family
    from sparse_autotune.core.space import NK_PATH, problem_env, split_path
    nk = get_family(family).space.for_layout("nk")
    env = problem_env(m, k, n, nnz, dtype, "nk")
    return [split_path(c)[0] for c in nk.feasible(dtype, env) if c[NK_PATH] == "native"]


def check_nk_natively(family: str, dtype: str, cases: dict, pick, tol=None, ns=(1, 7, 64, 257)) -> int:
    """Native nk kernels through the project's launch path (DeviceCSR, build_kernel(layout="nk"), Kernel.__call__) on
    each case and N: poisoned y, fresh random x, a nonzero bias and none, against the float64 y = x @ A^T + bias of the
    rounded operands. pick(feasible configs, case name, N) -> the configs to run; tol(kernel) -> its tolerance
    (default the dtype's). Returns the number of kernels checked."""
    import concurrent.futures

    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.core.problem import DTYPES, TOLERANCE, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import poison, reference, rel_error

    def run(kern, x, y, bias, ref):
        poison(y)
        kern(x, y, bias)
        cp.cuda.get_current_stream().synchronize()
        return rel_error(y, ref)
    checked = 0
    for name, a in cases.items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data, DTYPES[dtype])  # what the kernel sees
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        m, k = a.shape
        for n in ns:
            cfgs = pick(native_nk_configs(family, dtype, m, k, n, a.nnz), name, n)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, family, c, dtype, layout="nk"), cfgs))
            rng = np.random.default_rng(n)
            x = cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), dtype))
            bv = rng.standard_normal(m).astype(np.float32)
            bias = cp.asarray(storage(np.where(np.abs(bv) < 0.25, np.float32(0.5), bv), dtype))
            y = cp.empty((n, m), dtype=x.dtype)
            with_bias, without = reference(a64, x, "nk", bias), reference(a64, x, "nk")
            for kern in kernels:
                assert kern.layout == "nk"
                err, err0 = run(kern, x, y, bias, with_bias), run(kern, x, y, None, without)
                limit = tol(kern) if tol is not None else TOLERANCE[dtype]
                assert max(err, err0) <= limit, (name, n, kern.config, err, err0)
                checked += 1
    return checked


def check_kn(family: str, dtype: str, cases: dict, configs, ns, tol: float) -> int:
    """kn kernels through the project's launch path (DeviceCSR, build_kernel, Kernel.__call__) on each case and N:
    poisoned C, fresh random B, against the float64 reference of the rounded operands. configs(a, N) -> the configs to
    run (16-bit dtypes: fp16 / bf16). Returns the number of kernels checked."""
    import concurrent.futures

    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.core.problem import DTYPES, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    from sparse_autotune.errors import CandidateError
    checked = 0
    for name, a in cases.items():
        a = sps.csr_matrix(a, copy=True)
        a.data = host_values(a.data.astype(np.float32), DTYPES[dtype])  # what the kernel sees
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in ns:
            cfgs = configs(a, n)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, family, c, dtype), cfgs))
            for k in kernels:
                rng = np.random.default_rng(checked)
                b = cp.asarray(storage(rng.standard_normal((a.shape[1], n)).astype(np.float32), dtype))
                c = cp.empty((a.shape[0], n), dtype=cp.uint16 if dtype == "bf16" else cp.float16)
                try:
                    err = check(lambda: k(b, c), c, reference(a64, b), dtype)
                except CandidateError as exc:  # over the project's own tolerance: name the case and config
                    raise AssertionError(f"{name} N={n} {k.config}: {exc}") from None
                assert err <= tol, (name, n, k.config, err)
                checked += 1
    return checked
