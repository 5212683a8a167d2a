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


def _slots(a: sp.csr_matrix, rn: int, dtype: str):
    """(step_ptr, cols, slot, vals): tc_layout's steps and union columns, and for each stored nonzero its place in the
    dense tile stream (slot = tile * 128 + 4 * lane + h, tile = t * rn + i) and its 16-bit word."""
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
    rows_of = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
    vals = storage(a.data, dtype).view(np.uint16)
    slot = np.zeros(len(indices), dtype=np.int64)
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
        slot[lo:hi] = ((t * rn + i) * 32 + 4 * g + q) * 4 + h
    return step_ptr, cols, slot, vals


def tc_layout(a: sp.csr_matrix, rn: int, dtype: str = "fp16"):
    """The layout for row blocks of 8 * rn rows: (step_ptr, cols, avals).

    Row block b's union of columns U_b (ascending, padded to a multiple of 16 with its first column, weight 0)
    is steps step_ptr[b] .. step_ptr[b + 1] - 1 of 16 columns each; cols[16 t + k] is column k of step t.
    avals (16-bit words: fp16, or bf16 bits for dtype bf16) holds, for step t and 8-row tile i, the 16 x 8 weights in the B-operand layout of
    mma.m16n8k16: lane l = 4 g + q holds A[8 i + g][U[2q]], A[..][U[2q + 1]], A[..][U[2q + 8]], A[..][U[2q + 9]]
    at avals[((t * rn + i) * 32 + l) * 4 + 0..3]."""
    step_ptr, cols, slot, vals = _slots(a, rn, dtype)
    avals = np.zeros(int(step_ptr[-1]) * rn * 128, dtype=np.uint16)
    avals[slot] = vals
    return step_ptr.astype(np.int32), cols, avals


def _dedup(slot, vals):
    """The nonzeros in slot order, a duplicate entry of A keeping its last value (as tc_layout's assignment does)."""
    order = np.argsort(slot, kind="stable")
    s = slot[order]
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    return s[last], vals[order][last]


def tc_bitmap_layout(a: sp.csr_matrix, rn: int, dtype: str = "fp16"):
    """afmt "bitmap": tc_layout's steps and union columns, each 8-row tile's 128 weights as a 128-bit mask and only
    its nonzeros packed: (step_ptr, cols, amask, ameta, avals).

    Tile j = t * rn + i's dense word 4 l + h (lane l, half h, as in tc_layout's avals) is bit (4 l + h) % 32 of
    amask[4 j + (4 l + h) // 32] (uint32): lane l's four bits are bits 4 (l % 8) .. + 3 of word l // 8. avals (16-bit
    words) holds the tile's set bits' weights in bit order, tile after tile. ameta[2 j] (uint32) is where tile j's
    weights start in avals; byte w of ameta[2 j + 1] counts the tile's bits in words 0 .. w - 1 (byte 0 is 0). So lane
    l's weights are consecutive, from avals[ameta[2j] + byte (l // 8) + popc(word & ((1 << 4 (l % 8)) - 1))], one per
    set bit of its four, in order h = 0 .. 3. Stored zeros keep their bit (weight 0)."""
    step_ptr, cols, slot, vals = _slots(a, rn, dtype)
    tiles = int(step_ptr[-1]) * int(rn)
    s, packed = _dedup(slot, vals)
    amask = np.zeros(tiles * 4, dtype=np.uint32)
    np.bitwise_or.at(amask, s // 32, (np.uint32(1) << (s % 32).astype(np.uint32)))
    per_word = np.bincount(s // 32, minlength=tiles * 4).reshape(tiles, 4).astype(np.int64)
    per_tile = per_word.sum(axis=1)
    below = np.cumsum(per_word, axis=1) - per_word  # bits of the tile in the words before (0, c0, c0 + c1, ...)
    ameta = np.zeros(tiles * 2, dtype=np.uint32)
    ameta[0::2] = np.cumsum(per_tile) - per_tile  # weights of the tiles before
    ameta[1::2] = (below[:, 1] << 8) | (below[:, 2] << 16) | (below[:, 3] << 24)
    return step_ptr.astype(np.int32), cols, amask, ameta, packed.astype(np.uint16)


def tc_pair_layout(a: sp.csr_matrix, rn: int, dtype: str = "fp16"):
    """afmt "pair": tc_layout's steps and union columns, each 8-row tile's 64 fragment registers (32-bit pairs of
    weights: lane l's (h0, h1) and (h2, h3)) as a 64-bit mask, only the registers holding a nonzero stored:
    (step_ptr, cols, ameta, avals).

    Register 2 l + r of tile j = t * rn + i (lane l; r = 0: dense words 4 l, 4 l + 1; r = 1: 4 l + 2, 4 l + 3) is bit
    (2 l + r) % 32 of mask word (2 l + r) // 32. ameta[4 j .. 4 j + 3] (uint32) = (mask word 0, s, mask word 1, s +
    popc(mask word 0)) where s is where the tile's registers start in avals (uint32: two 16-bit weights, the lower
    first), which holds the set bits' registers in bit order, tile after tile. So lane l reads (word, start) =
    ameta[4 j + 2 (l // 16)], + 1 and its registers are avals[start + popc(word & ((1 << 2 (l % 16)) - 1))] and the
    next, one per set bit of its two. A register with a stored zero in it is kept."""
    step_ptr, cols, slot, vals = _slots(a, rn, dtype)
    tiles = int(step_ptr[-1]) * int(rn)
    s, packed = _dedup(slot, vals)
    regs, where = np.unique(s // 2, return_inverse=True)  # register index tile * 64 + 2 l + r, ascending
    words = np.zeros(len(regs), dtype=np.uint32)
    np.bitwise_or.at(words, where, packed.astype(np.uint32) << (16 * (s % 2)).astype(np.uint32))
    mask = np.zeros(tiles * 2, dtype=np.uint32)
    np.bitwise_or.at(mask, regs // 32, np.uint32(1) << (regs % 32).astype(np.uint32))
    per_word = np.bincount(regs // 32, minlength=tiles * 2).reshape(tiles, 2).astype(np.int64)
    per_tile = per_word.sum(axis=1)
    ameta = np.zeros((tiles, 4), dtype=np.uint32)
    ameta[:, 0], ameta[:, 2] = mask[0::2], mask[1::2]
    ameta[:, 1] = np.cumsum(per_tile) - per_tile
    ameta[:, 3] = ameta[:, 1] + per_word[:, 0]
    return step_ptr.astype(np.int32), cols, ameta.reshape(-1), words


def pair_to_dense(ameta, avals, tiles: int) -> np.ndarray:
    """tc_layout's avals (16-bit words) rebuilt from the pair format by the kernel's lane rule."""
    out = np.zeros(tiles * 128, dtype=np.uint16)
    meta = ameta.reshape(-1, 4)[:tiles].astype(np.int64)
    for lane in range(32):
        sh = 2 * (lane % 16)
        word, idx = meta[:, 2 * (lane // 16)], meta[:, 2 * (lane // 16) + 1]
        idx = idx + np.array(
            [bin(x).count("1") for x in word & ((1 << sh) - 1)], dtype=np.int64)
        for r in range(2):
            on = (word >> (sh + r)) & 1 == 1
            got = avals[idx[on]].astype(np.int64)
            base = np.flatnonzero(on) * 128 + 4 * lane + 2 * r
            out[base], out[base + 1] = got & 0xFFFF, got >> 16
            idx = idx + ((word >> (sh + r)) & 1)
    return out


def bitmap_to_dense(amask, ameta, avals, tiles: int) -> np.ndarray:
    """tc_layout's avals (16-bit words) rebuilt from the bitmap format by the kernel's lane rule (per lane: its word,
    the tile's start and its word's base, popc below its bits, then one weight per set bit): the check of the rule."""
    out = np.zeros(tiles * 128, dtype=np.uint16)
    for lane in range(32):
        w, sh = lane // 8, 4 * (lane % 8)
        word = amask[w::4][:tiles].astype(np.int64)
        base = (ameta[1::2][:tiles].astype(np.int64) >> (8 * w)) & 0xFF
        low = word & ((1 << sh) - 1)
        popc = np.array([bin(x).count("1") for x in low], dtype=np.int64)
        idx = ameta[0::2][:tiles].astype(np.int64) + base + popc
        for h in range(4):
            on = (word >> (sh + h)) & 1 == 1
            out[np.flatnonzero(on) * 128 + 4 * lane + h] = avals[idx[on]]
            idx = idx + ((word >> (sh + h)) & 1)
    return out


def tc_layout_ordered(a: sp.csr_matrix, rn: int, dtype: str, row_order: str, seed: int = 0, afmt: str = "dense"):
    """(step_ptr, cols, avals, perm): tc_layout of A's rows in the order core.reorder gives for row blocks of 8 * rn
    rows (perm int32: the kernel's row r is A's row perm[r], where it writes C); afmt "bitmap" / "pair":
    tc_bitmap_layout's / tc_pair_layout's arrays, then perm."""
    perm = reorder(a, row_order, 8 * int(rn), seed)
    build = {"dense": tc_layout, "bitmap": tc_bitmap_layout, "pair": tc_pair_layout}[afmt]
    return (*build(permuted(a, perm), rn, dtype), perm)


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
    afmt = kernel.config.get("afmt", "dense")
    if afmt != "dense":
        build = tc_bitmap_layout if afmt == "bitmap" else tc_pair_layout
        if order == "natural":
            return (*kernel.a.cached(("tc" + afmt, rn, kernel.dtype), lambda host: build(host, rn, kernel.dtype)),
                    *tail)
        return (*kernel.a.cached(("tc" + afmt, rn, kernel.dtype, order),
                                 lambda host: tc_layout_ordered(host, rn, kernel.dtype, order, afmt=afmt)), *tail)
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
