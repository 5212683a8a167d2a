"""pattern_unrolled, host side: A's pattern (and optionally its values) compiled into the kernel (SparseRT-class), one
block of rows_per_block rows per thread block, no index loads at all."""
from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params, row_order

PATTERN_LOAD_REGS = 16  # B loads in flight per thread named in the PTX (ptxas renames them anyway)


def _f32_bits(v: float) -> str:
    """A float32 value as the 8 hex digits of its bits (a PTX immediate is 0f + these)."""
    return f"{int(np.float32(v).view(np.uint32)):08X}"


def pattern_id(a: sp.csr_matrix, with_values: bool) -> str:
    """A short hash of A's pattern (and values when they are compiled in): names a specialised module."""
    h = hashlib.sha256()
    h.update(np.asarray(a.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(a.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(a.indices, dtype=np.int64).tobytes())
    if with_values:
        h.update(np.ascontiguousarray(a.data, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def context(a: sp.csr_matrix, config: dict) -> dict:
    """Template context: per block of rows_per_block rows (natural or sorted order), (its rows, [(column k,
    [(row slot, value bits, value index)]) for every column any row uses, ascending])."""
    r = int(config["rows_per_block"])
    order = row_order(a, config["row_order"])
    indptr, indices, data = a.indptr, a.indices, a.data
    blocks = []
    for b0 in range(0, a.shape[0], r):
        rows = [int(x) for x in order[b0:b0 + r]]
        by_col: dict[int, list] = {}
        for slot, row in enumerate(rows):
            for j in range(indptr[row], indptr[row + 1]):
                by_col.setdefault(int(indices[j]), []).append((slot, _f32_bits(data[j]), int(j)))
        blocks.append((rows, sorted(by_col.items())))
    return {"blocks": blocks, "pattern_id": pattern_id(a, config.get("values") == "imm"),
            "max_loads": PATTERN_LOAD_REGS}


def threads(config: dict) -> int:
    return 32 * config["warps"]


def geometry(kernel, n: int):
    c = kernel.config
    tile_n = c["warps"] * 32 * c["vec"]
    return (-(-n // tile_n), -(-kernel.a.shape[0] // c["rows_per_block"])), (threads(c),)


def args(kernel, n: int, b, c) -> tuple:
    # A's values as float32 (fp16 values are exact in float32): the packed array of values "array"
    return (b, c, kernel.a.cached("vals_f32", lambda host: host.data.astype(np.float32)), np.int32(n))


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """A vector width N does not divide is lowered to the widest that runs."""
    return adapt_params(space, config, dtype, env, limits, ("vec",))
