"""csr_btile, host side: rows in groups, B's K-stages of kc rows staged through shared memory; A's columns stored per
stage as 8/16-bit offsets (stage pointers per row)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params


def stage_layout(a: sp.csr_matrix, kc: int):
    """(stage pointers, local column offsets, stages) for K-stages of kc rows.

    stage_ptr[r * (S + 1) + s] is the first nonzero of row r whose column is >= s * kc (S = ceil(K / kc));
    lcol holds each column modulo kc (8-bit for kc <= 256)."""
    m, k = a.shape
    n_st = -(-k // kc)
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(a.indptr))
    counts = np.bincount(rows * n_st + a.indices // kc, minlength=m * n_st).reshape(m, n_st)
    sp_ = np.zeros((m, n_st + 1), dtype=np.int64)
    sp_[:, 1:] = np.cumsum(counts, axis=1)
    sp_ += a.indptr[:-1, None]
    lt = np.uint8 if kc <= 256 else np.uint16
    return sp_.astype(np.int32).ravel(), (a.indices % kc).astype(lt), n_st


def sorted_rows(a: sp.csr_matrix) -> np.ndarray:
    """Rows sorted by length, longest first (stable): heavy rows start first, a block's rows are alike."""
    return np.argsort(-np.diff(a.indptr), kind="stable").astype(np.int32)


def threads(config: dict) -> int:
    return 32 * config["warps"]


def _tiles(kernel, n: int) -> tuple[int, int]:
    c = kernel.config
    rows = c["warps"] * (32 // c["lanes_per_row"]) * c["rows_per_group"]
    return -(-kernel.a.shape[0] // rows), -(-n // (c["lanes_per_row"] * c["vec"]))


def geometry(kernel, n: int):
    row_blocks, col_tiles = _tiles(kernel, n)
    return (row_blocks * col_tiles,), (threads(kernel.config),)


def smem_bytes(kernel) -> int:
    c = kernel.config
    es = 4 if kernel.dtype == "fp32" else 2
    return c["stages"] * c["kc"] * c["lanes_per_row"] * c["vec"] * es


def args(kernel, n: int, b, c, bias=None) -> tuple:
    """In the nk layout (b is x, N x K; c is y, N x M) the bias follows c, passed through as given (None or 0: no
    bias, a null pointer)."""
    cfg = kernel.config
    m, k = kernel.a.shape
    row_blocks, col_tiles = _tiles(kernel, n)
    perm = kernel.a.cached("perm", sorted_rows) if cfg["row_order"] == "sorted" else kernel.a.row_ptr
    stage_ptr, lcol, n_st = kernel.a.cached(("stage", cfg["kc"]), lambda host: stage_layout(host, cfg["kc"]))
    out = (b, c, np.uint64(0) if bias is None else bias) if getattr(kernel, "layout", "kn") == "nk" else (b, c)
    return (stage_ptr, lcol, kernel.a.vals, perm, *out, np.int32(m), np.int32(n), np.int32(k),
            np.int32(row_blocks), np.int32(col_tiles), np.int32(n_st))


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """A vector width N does not divide is lowered to the widest that runs."""
    return adapt_params(space, config, dtype, env, limits, ("vec",))
