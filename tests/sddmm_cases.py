"""Shared by tests/test_sddmm.py (CPU) and tests/test_sddmm_gpu.py: masks (random and adversarial), operands, and a
covering sample of an SDDMM space's feasible configs."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sps

from sparse_autotune.core.problem import DTYPES, storage
from sparse_autotune.core.space import DEFAULT_LIMITS, Space
from sparse_autotune.ops.sddmm import sddmm_env


def _values(a, rng) -> sps.csr_matrix:
    a = sps.csr_matrix(a)
    a.data = (rng.standard_normal(a.nnz) + 0.5).astype(np.float32)
    return a


def masks() -> dict[str, sps.csr_matrix]:
    """Random and adversarial CSR masks (values: random, away from 0), by name."""
    rng = np.random.default_rng(19)
    out = {"random_300x200": _values(sps.random(300, 200, density=0.05, format="csr", random_state=1), rng)}
    a = sps.random(60, 90, density=0.2, format="lil", random_state=2)
    a[0:15, :] = 0  # empty rows at the start, in the middle and at the end
    a[30:34, :] = 0
    a[55:, :] = 0
    out["empty_rows"] = _values(a, rng)
    d = np.zeros((20, 3000), dtype=np.float32)
    d[11] = 1.0  # one full row among empty ones
    d[3, ::7] = 1.0
    out["one_dense_row"] = _values(d, rng)
    out["m1"] = _values(sps.random(1, 700, density=0.3, format="csr", random_state=3), rng)
    n1 = np.zeros((400, 1), dtype=np.float32)
    n1[::2] = 1.0
    out["n1"] = _values(n1, rng)
    out["nnz0"] = sps.csr_matrix((50, 60), dtype=np.float32)
    one = sps.lil_matrix((7, 9), dtype=np.float32)
    one[6, 8] = 1.0
    out["single_nonzero"] = _values(one, rng)
    u = _values(sps.random(40, 50, density=0.3, format="csr", random_state=4), rng)
    perm = [np.r_[u.indptr[r]:u.indptr[r + 1]][::-1] for r in range(u.shape[0])]
    order = np.concatenate(perm).astype(np.int64)
    out["unsorted_columns"] = sps.csr_matrix((u.data[order], u.indices[order], u.indptr), shape=u.shape)
    return out


def operands(mask: sps.csr_matrix, k: int, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (M x K) and Y (N x K) in the dtype's storage type (bf16: uint16 words), random normal."""
    rng = np.random.default_rng(seed)
    m, n = mask.shape
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = rng.standard_normal((n, k)).astype(np.float32)
    return storage(x, dtype), storage(y, dtype)


def storage_dtype(dtype: str):
    return np.dtype(DTYPES[dtype])


def covering_sample(space: Space, dtype: str, env: dict, size: int = 0, seed: int = 0, need=None) -> list[dict]:
    """At least `size` feasible configs for `env` such that every value of every parameter that some feasible config
    has (or every (name, value) pair of `need` that one has) appears at least once: greedy set cover over a seeded
    shuffle, then seeded filler."""
    feas = list(space.feasible(dtype, env, DEFAULT_LIMITS))
    if not feas:
        return []
    items = [set(c.items()) for c in feas]
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(feas))]
    need = set().union(*items) & (set(need) if need is not None else set().union(*items))
    chosen: list[int] = []
    while need:
        best = max(order, key=lambda i: len(need & items[i]))
        chosen.append(best)
        need -= items[best]
    for i in order:
        if len(chosen) >= size:
            break
        if i not in chosen:
            chosen.append(i)
    return [feas[i] for i in chosen]


def env_of(mask: sps.csr_matrix, k: int, dtype: str) -> dict:
    return sddmm_env(mask.shape[0], mask.shape[1], k, mask.nnz, dtype)
