"""sddmm_tc, the host side (variants/sddmm/sddmm_tc.cu.j2: SDDMM on tensor cores): the layout built once per mask, its
cache, the launch plan, and a numpy emulation of the kernel's tile scheme (tested against ops.sddmm.sddmm_reference
on the CPU).

The layout (`tc_layout`) for blocks of `rows` rows and tiles of `nc` union columns, rows in the order `order`
(core.reorder: natural, minhash, greedy; the permutation kept in trows):
    trows   int32 [nblocks * rows]   the mask row of each block row (-1 past M)
    ucols   int32 [sum of unions]    per block, the union of its rows' nonzero columns, ascending, blocks in order
    tinfo   int32 [ntiles + 1, 4]    per tile (block b, chunk c of its union): (b, offset of the chunk in ucols,
                                     columns in the chunk (1 .. nc), first entry); the last row's 4th field = entries
    e_pos   int32 [nnz]              the tiles' entries: each nonzero of the mask exactly once, its CSR position p
    e_loc   uint16 [nnz]             its place in its tile: r * nc + c (row r of the block, column c of the chunk)
Entries are ordered by (tile, r, c) (stable: duplicates keep their CSR order); unsorted columns and duplicates are
served like any entry (a duplicate reads the same product). Bytes a nonzero: 6 (+ S's value and out: 4 in 16-bit).
Blocks with no nonzero have no tile; a tile never has an empty chunk.

May import core, device, errors, resources (ops/__init__.py).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..core.reorder import METHODS, reorder

FAMILY = "sddmm_tc"
CACHE_SIZE = 16  # layouts kept (a tune or a benchmark case builds many configs over a few (rows, nc, order))


@dataclass(frozen=True)
class TcLayout:
    rows: int
    nc: int
    order: str
    trows: np.ndarray
    ucols: np.ndarray
    tinfo: np.ndarray
    e_pos: np.ndarray
    e_loc: np.ndarray

    @property
    def ntiles(self) -> int:
        return int(self.tinfo.shape[0] - 1)

    def tile_columns(self) -> int:
        """Union columns summed over the tiles (what the kernel computes: rows x this x K products)."""
        return int(self.tinfo[:-1, 2].sum())

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.trows, self.ucols, self.tinfo, self.e_pos, self.e_loc)))


def tile_columns(config: dict) -> int:
    """Union columns per tile: 8 nt wn."""
    return 8 * int(config["nt"]) * int(config["wn"])


def smem_bytes(config: dict) -> int:
    """The kernel's dynamic shared memory: the staged rows' offsets (16-byte aligned), then the ring of `stages`
    K-chunks of rows + nc rows (2 kc + 16 bytes each) or the fp32 C tile (rows x (nc + 8)) over it."""
    rows, nc, kc, stages = int(config["rows"]), tile_columns(config), int(config["kc"]), int(config["stages"])
    offb = -(-4 * (rows + nc) // 16) * 16
    return offb + max(stages * (rows + nc) * (2 * kc + 16), 4 * rows * (nc + 8))


def threads(config: dict) -> int:
    return 32 * int(config["wm"]) * int(config["wn"])


def _rank_of(mask: sp.csr_matrix, rows: int, order: str, seed: int = 0) -> np.ndarray:
    """perm (int64): the kernel's row i (block i // rows, row i % rows) is the mask's row perm[i]."""
    m = mask.shape[0]
    if order == "natural":
        return np.arange(m, dtype=np.int64)
    if order not in METHODS:
        raise ValueError(f"unknown row order {order!r}: choose from {', '.join(METHODS)}")
    return np.asarray(reorder(mask, order, int(rows), seed), dtype=np.int64)


def tc_layout(mask: sp.csr_matrix, rows: int, nc: int, order: str = "natural", seed: int = 0) -> TcLayout:
    """The layout of the module's docstring (pure numpy; no GPU)."""
    mask = mask if sp.isspmatrix_csr(mask) or isinstance(mask, sp.csr_array) else sp.csr_matrix(mask)
    rows, nc = int(rows), int(nc)
    if rows < 1 or nc < 1 or rows * nc > 1 << 16:
        raise ValueError(f"rows and nc must be positive with rows * nc <= 65536 (got {rows}, {nc})")
    m, n = mask.shape
    nb = -(-m // rows)
    perm = _rank_of(mask, rows, order, seed)
    trows = np.full(nb * rows, -1, dtype=np.int32)
    trows[:m] = perm
    rank = np.empty(m, dtype=np.int64)
    rank[perm] = np.arange(m, dtype=np.int64)
    indptr = np.asarray(mask.indptr, dtype=np.int64)
    cols = np.asarray(mask.indices, dtype=np.int64)
    nnz = len(cols)
    pos_r = rank[np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))]
    blk, lr = pos_r // rows, pos_r % rows
    ukeys, inv = np.unique(blk * n + cols, return_inverse=True)
    inv = inv.reshape(-1)
    ublk = ukeys // max(n, 1)
    ucols = (ukeys % max(n, 1)).astype(np.int32)
    bstart = np.searchsorted(ublk, np.arange(nb + 1, dtype=np.int64))
    usize = np.diff(bstart)
    chunks = -(-usize // nc)
    tbase = np.zeros(nb + 1, dtype=np.int64)
    np.cumsum(chunks, out=tbase[1:])
    ntiles = int(tbase[-1])
    local = inv - bstart[blk]
    tile = tbase[blk] + local // nc
    loc = lr * nc + local % nc
    order_e = np.lexsort((loc, tile))  # stable: equal (tile, loc) keep their CSR order
    e_pos = order_e.astype(np.int32)
    e_loc = loc[order_e].astype(np.uint16)
    tinfo = np.zeros((ntiles + 1, 4), dtype=np.int32)
    tblk = np.repeat(np.arange(nb, dtype=np.int64), chunks)
    tchunk = np.arange(ntiles, dtype=np.int64) - tbase[tblk]
    tinfo[:ntiles, 0] = tblk
    tinfo[:ntiles, 1] = bstart[tblk] + tchunk * nc
    tinfo[:ntiles, 2] = np.minimum(nc, usize[tblk] - tchunk * nc)
    eptr = np.zeros(ntiles + 1, dtype=np.int64)
    np.cumsum(np.bincount(tile, minlength=ntiles), out=eptr[1:])
    tinfo[:, 3] = eptr
    assert eptr[-1] == nnz
    return TcLayout(rows, nc, order, trows, ucols, tinfo, e_pos, e_loc)


# ---- the cache: one layout per (mask pattern, rows, nc, order) ---------------------------------------------------------

_cache: "OrderedDict[tuple, TcLayout]" = OrderedDict()
_lock = threading.Lock()


def pattern_digest(mask: sp.csr_matrix) -> str:
    """A digest of the mask's pattern (shape, row pointers, column indices): the values do not enter the layout."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(mask.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(mask.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(mask.indices, dtype=np.int32).tobytes())
    return h.hexdigest()


def cached_layout(mask: sp.csr_matrix, rows: int, nc: int, order: str = "natural") -> TcLayout:
    """tc_layout, built once per (pattern, rows, nc, order) in this process (the last CACHE_SIZE kept)."""
    key = (pattern_digest(mask), int(rows), int(nc), order)
    with _lock:
        got = _cache.get(key)
        if got is not None:
            _cache.move_to_end(key)
            return got
    lay = tc_layout(mask, rows, nc, order)
    with _lock:
        _cache[key] = lay
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return lay


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def plan_parts(config: dict, mask: sp.csr_matrix, k: int) -> tuple[int, int, int, tuple, tuple]:
    """(grid, block, smem, arrays, scalars) of ops.sddmm.Plan: a block per tile; the kernel's leading arrays
    (tinfo, trows, ucols, e_pos, e_loc) and its scalars (ntiles, K)."""
    lay = cached_layout(mask, config["rows"], tile_columns(config), config["order"])
    arrays = (lay.tinfo, lay.trows, lay.ucols, lay.e_pos, lay.e_loc)
    return lay.ntiles, threads(config), smem_bytes(config), arrays, (np.int32(lay.ntiles), np.int32(k))


# ---- the tile scheme in numpy (what the kernel computes, for the CPU tests) ---------------------------------------------

def emulate(lay: TcLayout, s_vals: np.ndarray, x: np.ndarray, y: np.ndarray, kc: int = 64) -> np.ndarray:
    """out (float64, nnz) computed the kernel's way from the layout alone: per tile the dense rows x nc product of the
    block's rows of X (zeros past M) and the chunk's union rows of Y (zeros past the chunk), in K-chunks of kc (zeros
    past K), accumulated in float32; then out[e_pos] = S[e_pos] * tile[e_loc]. x, y float arrays (already decoded)."""
    m, k = x.shape
    nnz = len(lay.e_pos)
    out = np.full(nnz, np.nan)
    kp = -(-k // kc) * kc
    xz = np.zeros((m + 1, kp), dtype=np.float32)
    xz[:m, :k] = x
    yz = np.zeros((y.shape[0] + 1, kp), dtype=np.float32)
    yz[:y.shape[0], :k] = y
    for t in range(lay.ntiles):
        b, u0, nu, e0 = (int(v) for v in lay.tinfo[t])
        e1 = int(lay.tinfo[t + 1, 3])
        r_idx = lay.trows[b * lay.rows:(b + 1) * lay.rows].astype(np.int64)
        r_idx = np.where(r_idx < 0, m, r_idx)
        c_idx = np.full(lay.nc, y.shape[0], dtype=np.int64)
        c_idx[:nu] = lay.ucols[u0:u0 + nu]
        acc = np.zeros((lay.rows, lay.nc), dtype=np.float32)
        for k0 in range(0, kp, kc):
            acc += xz[r_idx, k0:k0 + kc] @ yz[c_idx, k0:k0 + kc].T
        ent = slice(e0, e1)
        loc = lay.e_loc[ent].astype(np.int64)
        p = lay.e_pos[ent]
        out[p] = s_vals[p].astype(np.float64) * acc.reshape(-1)[loc].astype(np.float64)
    return out


__all__ = ["FAMILY", "TcLayout", "cached_layout", "clear_cache", "emulate", "pattern_digest", "plan_parts",
           "smem_bytes", "tc_layout", "threads", "tile_columns"]
