"""bitmap_rows, host side: SpMM for N = 1 .. 32 at densities 0.2 - 0.7 (LLM decode), A as a per-row bitmap.

The layout (`build`, pure numpy): every row is cut into chunks of 32 consecutive columns, four chunks a group (128
columns; a row has KG = ceil(K / 128) groups, the masks past K are zero):
  masks  uint32 [(M + 1) * 4 * KG]   bit l of chunk c of row r: A[r, 32 c + l] != 0; row M is all zero (the rows past
                                     M of the last block read it)
  vals   uint16 [nnz + 64]           the nonzeros' value bits in row-major order (rows one after another, each in column
                                     order), then zeros (a lane whose bit is clear may read one past a row's end)
  segoff int32  [M * NS + 1]         NS = ceil(KG / 4): segoff[r * NS + s] is the index in vals of row r's first nonzero
                                     at or after column 512 s (a segment: 4 groups); the last entry is nnz. A warp that
                                     starts a row at a segment (split K, `ksplit`) reads its offset; inside a segment the
                                     offsets come from popc of the masks.
Bytes: 2 a nonzero + 1/8 an element (+ 4 a row per 512 columns): at density 0.5 1.125 bytes an element against dense
fp16's 2."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_jointly, clean_csr, narrower
from sparse_autotune.core.problem import half_bits as value_bits

CHUNK = 32  # columns a mask covers (a lane each)
GROUP = 4  # chunks a group (one 16-byte load of masks)
SEG_GROUPS = 4  # groups a segment (512 columns): the unit of split K
VAL_PAD = 64


def groups(k: int) -> int:
    return max(1, -(-k // (CHUNK * GROUP)))


def segments(k: int) -> int:
    return -(-groups(k) // SEG_GROUPS)


def build(a: sp.csr_matrix, dtype: str = "fp16"):
    """(masks uint32 [(M + 1) * 4 KG], vals uint16 [nnz + 64], segoff int32 [M * NS + 1])."""
    a = clean_csr(a)  # sorted, no duplicates, no explicit zeros (a zero weight is no nonzero)
    m, k = a.shape
    kg, ns = groups(k), segments(k)
    words = GROUP * kg
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(a.indptr))
    cols = a.indices.astype(np.int64)
    # bits of one word never collide (no duplicates): their sum is their OR, exact in float64 (< 2^32)
    masks = np.bincount(rows * words + cols // CHUNK, weights=np.ldexp(1.0, (cols % CHUNK).astype(np.int32)),
                        minlength=(m + 1) * words).astype(np.uint32)
    vals = np.zeros(a.nnz + VAL_PAD, dtype=np.uint16)
    vals[:a.nnz] = value_bits(a.data, dtype)
    # segoff[r, s] = indptr[r] + nonzeros of row r before column 512 s
    seg = cols // (CHUNK * GROUP * SEG_GROUPS)
    counts = np.bincount(rows * ns + seg, minlength=m * ns).reshape(m, ns)
    before = np.cumsum(counts, axis=1) - counts
    segoff = np.empty(m * ns + 1, dtype=np.int64)
    segoff[:m * ns] = (a.indptr[:-1].astype(np.int64)[:, None] + before).ravel()
    segoff[-1] = a.nnz
    if a.nnz >= 2 ** 31 - VAL_PAD:
        raise ValueError("bitmap_rows keeps 32-bit value offsets: too many nonzeros")
    return masks, vals, segoff.astype(np.int32)


def format_bytes(m: int, k: int, nnz: int) -> int:
    """Bytes of A in this layout (what a kernel reads of A)."""
    return (m + 1) * GROUP * groups(k) * 4 + (nnz + VAL_PAD) * 2 + (m * segments(k) + 1) * 4


def decode(masks, vals, segoff, shape) -> np.ndarray:
    """Dense M x K value bits rebuilt from the layout by the kernel's own rule (tests): chunk c of row r, lane l: its
    value is vals[off + popc(mask & ((1 << l) - 1))] where its bit is set, off the segment's offset advanced by popc of
    each earlier mask of the segment."""
    m, k = shape
    kg, ns = groups(k), segments(k)
    words = GROUP * kg
    out = np.zeros((m, GROUP * kg * CHUNK), dtype=np.uint16)
    lanes = np.arange(CHUNK, dtype=np.uint64)
    lt = (np.uint64(1) << lanes) - np.uint64(1)
    for r in range(m):
        for s in range(ns):
            off = int(segoff[r * ns + s])
            for c in range(s * SEG_GROUPS * GROUP, min(words, (s + 1) * SEG_GROUPS * GROUP)):
                mk = np.uint64(masks[r * words + c])
                bit = (mk >> lanes) & np.uint64(1)
                pre = np.array([bin(int(x)).count("1") for x in (mk & lt)])
                idx = off + pre
                out[r, c * CHUNK:(c + 1) * CHUNK] = np.where(bit == 1, vals[np.minimum(idx, len(vals) - 1)], 0)
                off += bin(int(mk)).count("1")
    assert not out[:, k:].any(), "a bit past K"
    return out[:, :k]


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * config["warps"]


def rows_per_block(config: dict) -> int:
    return (config["warps"] // config["ksplit"]) * config["rows"]


def geometry(kernel, n: int):
    c = kernel.config
    return (-(-kernel.a.shape[0] // rows_per_block(c)), max(1, -(-n // c["nb"]))), (threads(c),)


def smem_bytes(kernel) -> int:
    """B's column block in shared memory (bsrc smem): 128 KG rows of nb halves (rows past K zero)."""
    if kernel.config["bsrc"] != "smem":
        return 0
    return CHUNK * GROUP * groups(kernel.a.shape[1]) * kernel.config["nb"] * 2


def args(kernel, n: int, b, c) -> tuple:
    dtype = kernel.dtype
    m, k = kernel.a.shape
    masks, vals, segoff = kernel.a.cached(("bitmap_rows", dtype), lambda host: build(host, dtype))
    return (masks, vals, segoff, b, c, np.int32(m), np.int32(n), np.int32(k))


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another N: the widest column block up to the stored one that can run it (B as stored, else the other B
    source), with the stored accumulation, else fp32 sums (nb = 1 has no half2 sums)."""
    def orders(cfg):
        return {"nb": narrower(space, cfg, dtype, "nb"),
                "bsrc": list(dict.fromkeys((cfg["bsrc"], "smem", "l1"))),
                "acc": list(dict.fromkeys((cfg["acc"], "f32")))}
    return adapt_jointly(space, config, dtype, env, limits, orders)
