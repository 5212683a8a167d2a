"""tc_gather, host side: per row block of 8 * rn rows, the union of its columns as a dense tile in the B-operand
register layout of mma.m16n8k16; the rows of B named by the union are gathered into A-operand registers. With
row_order other than natural, the blocks are cut from A's rows permuted by core.reorder (rows with similar column
sets together: smaller unions), and the kernel writes its row r to C row perm[r]."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params
from sparse_autotune.core.problem import storage
from sparse_autotune.core.reorder import check_perm, reorder


def tc_layout(a: sp.csr_matrix, rn: int, dtype: str = "fp16"):
    """The layout for row blocks of 8 * rn rows: (step_ptr, cols, avals).

    Row block b's union of columns U_b (ascending, padded to a multiple of 16 with its first column, weight 0)
    is steps step_ptr[b] .. step_ptr[b + 1] - 1 of 16 columns each; cols[16 t + k] is column k of step t.
    avals (16-bit words: fp16, or bf16 bits for dtype bf16) holds, for step t and 8-row tile i, the 16 x 8 weights in the B-operand layout of
    mma.m16n8k16: lane l = 4 g + q holds A[8 i + g][U[2q]], A[..][U[2q + 1]], A[..][U[2q + 8]], A[..][U[2q + 9]]
    at avals[((t * rn + i) * 32 + l) * 4 + 0..3]."""
    m = a.shape[0]
    rb = 8 * int(rn)
    nb = -(-m // rb)
    indptr, indices = a.indptr, a.indices
    step_ptr = np.zeros(nb + 1, dtype=np.int64)
    unions = []
    for b in range(nb):
        u = np.unique(indices[indptr[b * rb]:indptr[min(m, (b + 1) * rb)]])
        unions.append(u)
        step_ptr[b + 1] = step_ptr[b] + -(-len(u) // 16)
    total = int(step_ptr[-1])
    cols = np.zeros(total * 16, dtype=np.int32)
    avals = np.zeros(total * rn * 128, dtype=np.uint16)
    rows_of = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
    vals = storage(a.data, dtype).view(np.uint16)
    for b, u in enumerate(unions):
        if not len(u):
            continue
        t0 = int(step_ptr[b])
        padded = np.full(-(-len(u) // 16) * 16, u[0], dtype=np.int32)
        padded[:len(u)] = u
        cols[t0 * 16:t0 * 16 + len(padded)] = padded
        lo, hi = indptr[b * rb], indptr[min(m, (b + 1) * rb)]
        pos = np.searchsorted(u, indices[lo:hi])  # place of each nonzero's column in U
        local = rows_of[lo:hi] - b * rb
        t, k = t0 + pos // 16, pos % 16
        i, g = local // 8, local % 8
        q = np.where(k < 8, k // 2, (k - 8) // 2)
        h = np.where(k < 8, k % 2, 2 + k % 2)
        avals[((t * rn + i) * 32 + 4 * g + q) * 4 + h] = vals[lo:hi]
    return step_ptr.astype(np.int32), cols, avals


def tc_layout_ordered(a: sp.csr_matrix, rn: int, dtype: str, row_order: str, seed: int = 0):
    """(step_ptr, cols, avals, perm): tc_layout of A's rows in the order core.reorder gives for row blocks of 8 * rn
    rows (perm int32: the kernel's row r is A's row perm[r], where it writes C)."""
    perm = reorder(a, row_order, 8 * int(rn), seed)
    return (*tc_layout(permuted(a, perm), rn, dtype), perm)


def permuted(a: sp.csr_matrix, perm) -> sp.csr_matrix:
    """A's rows in the order perm (row r of the result is row perm[r] of A)."""
    return sp.csr_matrix(a)[check_perm(perm, a.shape[0])]


def threads(config: dict) -> int:
    return 32 * config["ksplit"]


def _tiles(kernel, n: int) -> tuple[int, int]:
    c = kernel.config
    return -(-kernel.a.shape[0] // (8 * c["rn"])), -(-n // (16 * c["nt"]))


def geometry(kernel, n: int):
    row_blocks, col_tiles = _tiles(kernel, n)
    return (row_blocks * col_tiles,), (threads(kernel.config),)


def args(kernel, n: int, b, c, bias=None) -> tuple:
    """In the nk layout (b is x, N x K; c is y, N x M) the bias follows c, passed through as given (None or 0: no
    bias, a null pointer), and K (x's row stride) follows N."""
    rn = kernel.config["rn"]
    order = kernel.config["row_order"]
    row_blocks, _ = _tiles(kernel, n)
    m, k = kernel.a.shape
    if getattr(kernel, "layout", "kn") == "nk":
        tail = (b, c, np.uint64(0) if bias is None else bias, np.int32(m), np.int32(n), np.int32(k),
                np.int32(row_blocks))
    else:
        tail = (b, c, np.int32(m), np.int32(n), np.int32(row_blocks))
    if order == "natural":
        step_ptr, cols, avals = kernel.a.cached(("tc", rn, kernel.dtype),
                                                lambda host: tc_layout(host, rn, kernel.dtype))
        return (step_ptr, cols, avals, *tail)
    step_ptr, cols, avals, perm = kernel.a.cached(
        ("tc", rn, kernel.dtype, order), lambda host: tc_layout_ordered(host, rn, kernel.dtype, order))
    return (step_ptr, cols, avals, perm, *tail)


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """Vector loads of B need N % (2 nt) == 0: for another N, the 16-bit loads checked against N."""
    return adapt_params(space, config, dtype, env, limits, ("bload",))
