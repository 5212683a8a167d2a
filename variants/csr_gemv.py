"""csr_gemv, host side: SpMM for N <= nb (GEMV and tiny batches), A read once at full width. The layout (`build`,
pure numpy) is CSR with every row padded to a multiple of 8 nonzeros (zero weights at the row's last column), 16-bit
values and 16-bit column indices in two arrays, so a lane reads 8 of each with two 16-byte loads; chunk_ptr[r] is row
r's first chunk of 8. 4 bytes a nonzero (+ the padding, + 4 bytes a row). B is staged in shared memory per block
(K x nb halves); N > nb runs as column blocks that each read A again."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params
from sparse_autotune.core.problem import half_bits as value_bits


def build(a: sp.csr_matrix, dtype: str = "fp16"):
    """(chunk_ptr int32 [M + 1], vals uint16 [8 * chunks], idx uint16 [8 * chunks])."""
    a = sp.csr_matrix(a, copy=True)  # the caller's matrix stays as it is
    a.sum_duplicates()
    m, k = a.shape
    if k > 65536:
        raise ValueError("csr_gemv keeps 16-bit column indices: K must be <= 65536")
    indptr = a.indptr.astype(np.int64)
    lens = np.diff(indptr)
    plen = (lens + 7) // 8 * 8
    chunk_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(plen // 8, out=chunk_ptr[1:])
    total = int(chunk_ptr[-1]) * 8
    if total // 8 >= 2 ** 31:
        raise ValueError("too many chunks")
    vals = np.zeros(max(8, total), dtype=np.uint16)
    idx = np.zeros(max(8, total), dtype=np.uint16)
    rows = np.repeat(np.arange(m, dtype=np.int64), lens)
    dest = chunk_ptr[rows] * 8 + (np.arange(len(rows), dtype=np.int64) - indptr[rows])
    vals[dest] = value_bits(a.data, dtype)
    idx[dest] = a.indices.astype(np.uint16)
    pad = plen - lens
    prow = np.repeat(np.arange(m, dtype=np.int64), pad)
    poff = np.arange(len(prow), dtype=np.int64) - np.repeat(np.cumsum(pad) - pad, pad)
    idx[chunk_ptr[prow] * 8 + lens[prow] + poff] = a.indices[indptr[prow + 1] - 1].astype(np.uint16)
    return chunk_ptr.astype(np.int32), vals, idx


def decode(chunk_ptr, vals, idx, shape) -> np.ndarray:
    """Dense M x K value bits rebuilt from the layout (for tests); padded entries carry weight 0 and change nothing."""
    m, k = shape
    out = np.zeros((m, k), dtype=np.uint16)
    for r in range(m):
        for c in range(int(chunk_ptr[r]) * 8, int(chunk_ptr[r + 1]) * 8):
            assert idx[c] < k
            if vals[c] != 0:
                assert out[r, idx[c]] == 0, "a column twice in one row"
                out[r, idx[c]] = vals[c]
    return out


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * config["warps"]


def rows_per_block(config: dict) -> int:
    return config["warps"] * (32 // config["lanes"]) * config["iters"]


def geometry(kernel, n: int):
    c = kernel.config
    return (-(-kernel.a.shape[0] // rows_per_block(c)), max(1, -(-n // c["nb"]))), (threads(c),)


def smem_bytes(kernel) -> int:
    """B's column block in shared memory (bsrc smem): K rows of nb halves."""
    if kernel.config.get("bsrc", "smem") != "smem":
        return 0
    return kernel.a.shape[1] * kernel.config["nb"] * 2


def args(kernel, n: int, b, c, bias=None) -> tuple:
    """In the nk layout (b is x, N x K; c is y, N x M) the bias pointer follows c (None or 0: no bias)."""
    dtype = kernel.dtype
    m, k = kernel.a.shape
    chunk_ptr, vals, idx = kernel.a.cached(("csr_gemv", dtype), lambda host: build(host, dtype))
    if getattr(kernel, "layout", "kn") == "nk":
        return (chunk_ptr, vals, idx, b, c, np.uint64(0) if bias is None else bias, np.int32(m), np.int32(n),
                np.int32(k))
    return (chunk_ptr, vals, idx, b, c, np.int32(m), np.int32(n), np.int32(k))


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For a smaller N: the narrowest column block that holds it."""
    return adapt_params(space, config, dtype, env, limits, ("nb",))
