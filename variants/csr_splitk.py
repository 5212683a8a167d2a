"""csr_splitk, host side: SpMM for small N (16 .. 64) on CUDA cores with split-K through a workspace.

Geometry. G = nb / 8 lanes share a nonzero (lane j: columns 8j .. 8j + 7 of the block's nb), NGW = 32 / G groups a warp,
P = 8 / G groups a phase of 8 lanes. A block owns R = warps * NGW * rounds rows (row block rb) and the K-slices
q = s, s + split, ... of ks rows of B each (Q = ceil(K / ks) slices); `split` blocks (adjacent in grid x) share a row
block. Split-K: each writes its R x nb fp32 partial sums to its slice of a workspace and counts itself in on the
(row block, column block)'s counter; the last to arrive adds the slices in order and writes C (workspace_shape).

Layout (`build`, pure numpy, no sort of the nonzeros): per block-slice (rb, q), the R segments (row lr's nonzeros with
column in slice q, empty ones too) are dealt longest first (stable): dealt position d = (round * warps + warp) * NGW
+ group. A round slot (rb, q, round, warp) has steps = ceil(longest of its NGW segments / 4); its words, uint4 by uint4,
are [step][group][4 nonzeros], so a warp's 16-byte loads of one step are contiguous. Arrays:
    rinfo  int32 [slots, 2]   (first uint4 of the slot, steps); slot = (rb * Q + q) * rounds * warps + round * warps + warp
    rows   uint16 [slots * NGW] the local row (0 .. R-1) of each dealt segment, at slot * NGW + group
    words  uint32 [4 * uint4s]  (value bits << 16) | (k - q * ks) * 2 * nb; padding: value 0 at the segment's last column
                                (offset 0 for an empty segment)
Inside a segment the nonzeros are ordered by (rank within class, (class - p) mod P), class = k_local mod P, p = group
mod P, then packed densely: at each step the P groups of a phase want different classes, so their 16-byte rows of the
B slice (2 * nb bytes at k_local * 2 * nb) fall on different bank quarters. 4 bytes a nonzero + padding + 8 bytes a
round slot + 2 a segment.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params, splitk_shape, splitk_workspace
from sparse_autotune.core.problem import half_bits as value_bits


def dims(config: dict) -> dict:
    nb = config["nb"]
    G = nb // 8
    NGW = 32 // G
    return {"G": G, "NGW": NGW, "P": 8 // G, "R": config["warps"] * NGW * config["rounds"]}


def build(a: sp.csr_matrix, dtype: str, nb: int, ks: int, warps: int, rounds: int):
    """(rinfo int32 [slots, 2], rows uint16 [slots * NGW], words uint32 [>= 4]) for this geometry."""
    a = sp.csr_matrix(a, copy=True)  # the caller's matrix stays as it is
    a.sum_duplicates()  # sorted column indices
    m, k = a.shape
    d = dims({"nb": nb, "warps": warps, "rounds": rounds})
    G, NGW, P, R = d["G"], d["NGW"], d["P"], d["R"]
    if ks * nb * 2 > 65536:
        raise ValueError("csr_splitk keeps 16-bit byte offsets into the B slice: ks * nb must be <= 32768")
    RB = max(1, -(-m // R))
    Q = -(-k // ks)
    W = warps
    nblk = RB * Q
    spb = rounds * W  # round slots per block-slice
    nslots = nblk * spb
    indptr = a.indptr.astype(np.int64)
    lens = np.diff(indptr)
    rows = np.repeat(np.arange(m, dtype=np.int64), lens)
    cols = a.indices.astype(np.int64)
    q = cols // ks
    kl = cols - q * ks
    blk = (rows // R) * Q + q
    lr = rows % R
    seg = blk * R + lr  # segment id: (block-slice, local row)
    seglen = np.bincount(seg, minlength=nblk * R).reshape(nblk, R) if nblk else np.zeros((0, R), np.int64)
    order = np.argsort(-seglen, axis=1, kind="stable")  # order[b, dpos] = local row dealt to position dpos
    dpos = np.empty_like(order)
    np.put_along_axis(dpos, order, np.broadcast_to(np.arange(R), order.shape), axis=1)
    slen = np.take_along_axis(seglen, order, axis=1)  # segment lengths in dealt order
    steps = (slen.reshape(nslots, NGW).max(axis=1) + 3) // 4 if nslots else np.zeros(0, np.int64)
    off = np.zeros(nslots + 1, dtype=np.int64)
    np.cumsum(steps * NGW, out=off[1:])
    total4 = int(off[-1])
    if total4 >= 2 ** 31:
        raise ValueError("too many nonzeros for 32-bit offsets")
    rinfo = np.stack([off[:-1], steps], axis=1).astype(np.int32) if nslots else np.zeros((1, 2), np.int32)
    rows_out = order.astype(np.uint16).ravel() if nslots else np.zeros(1, np.uint16)

    # each segment's dealt position -> (slot, group)
    seg_d = dpos.ravel()  # by segment id
    seg_slot = (np.arange(nblk * R) // R) * spb + seg_d // NGW
    seg_g = seg_d % NGW
    # padding words first: value 0 at the segment's last column (its row of B is finite where the segment is)
    last_kl = np.zeros(nblk * R, dtype=np.int64)
    if len(seg):
        # CSR order is (row, column): a segment's nonzeros are contiguous and its last one is the largest column
        ends = np.flatnonzero(np.r_[seg[1:] != seg[:-1], True])
        last_kl[seg[ends]] = kl[ends]
    pad = (last_kl * 2 * nb).astype(np.uint32)
    words = np.empty(max(4, 4 * total4), dtype=np.uint32)
    words[:] = 0
    if total4:
        # word i of the padded stream: slot by searchsorted, group = (uint4 index - slot start) % NGW
        u4 = np.arange(total4, dtype=np.int64)
        slot_of = np.searchsorted(off, u4, side="right") - 1
        g_of = (u4 - off[slot_of]) % NGW
        b_of = slot_of // spb
        d_of = (slot_of % spb) * NGW + g_of
        lr_of = order[b_of, d_of]
        words[: 4 * total4] = np.repeat(pad[b_of * R + lr_of], 4)
    if len(seg):
        # rank of each nonzero within (segment, class) (contiguous runs in CSR order), then its dense position t
        cls = kl % P
        p = seg_g[seg] % P
        start = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        seg_start = np.repeat(start, np.diff(np.r_[start, len(seg)]))
        rank = np.zeros(len(seg), dtype=np.int64)
        counts = np.zeros((len(start), P), dtype=np.int64)  # per segment run: nonzeros of each class
        run = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(seg)]))
        for c in range(P):
            mask = cls == c
            cs = np.cumsum(mask)
            before = np.where(seg_start > 0, cs[seg_start - 1], 0)
            rank[mask] = (cs - before - 1)[mask]
            counts[:, c] = np.add.reduceat(mask.astype(np.int64), start)
        o = (cls - p) % P
        t = np.zeros(len(seg), dtype=np.int64)
        for c in range(P):  # how many of the segment come before: of class c, those with smaller (rank, offset)
            oc = (c - p) % P
            t += np.minimum(counts[run, c], rank + (oc < o))
        slot = seg_slot[seg]
        widx = 4 * (off[slot] + (t // 4) * NGW + seg_g[seg]) + t % 4
        words[widx] = (value_bits(a.data, dtype).astype(np.uint32) << 16) | (kl * 2 * nb).astype(np.uint32)
    return rinfo, rows_out, words


def decode(rinfo, rows, words, shape, nb: int, ks: int, warps: int, rounds: int) -> np.ndarray:
    """Dense M x K value bits rebuilt from the layout by the kernel's reading rule (for tests)."""
    m, k = shape
    d = dims({"nb": nb, "warps": warps, "rounds": rounds})
    NGW, R = d["NGW"], d["R"]
    RB = max(1, -(-m // R))
    Q = -(-k // ks)
    spb = rounds * warps
    out = np.zeros((m, k), dtype=np.uint16)
    seen = np.zeros((RB * Q, R), dtype=np.int64)
    for slot in range(RB * Q * spb):
        b = slot // spb
        rb, q = divmod(b, Q)
        first, steps = int(rinfo[slot, 0]), int(rinfo[slot, 1])
        for g in range(NGW):
            lr = int(rows[slot * NGW + g])
            seen[b, lr] += 1
            for st in range(steps):
                for e in range(4):
                    w = int(words[4 * (first + st * NGW + g) + e])
                    val, offb = w >> 16, w & 0xFFFF
                    assert offb % (2 * nb) == 0 and offb // (2 * nb) < ks
                    col = q * ks + offb // (2 * nb)
                    if val:
                        row = rb * R + lr
                        assert row < m and col < k
                        assert out[row, col] == 0, "an element twice"
                        out[row, col] = val
    assert (seen == 1).all(), "every local row once per block-slice"
    return out


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * config["warps"]


def _blocks(kernel, n: int):
    c = kernel.config
    m, k = kernel.a.shape
    R = dims(c)["R"]
    return max(1, -(-m // R)), -(-k // c["ks"]), max(1, -(-n // c["nb"]))


def geometry(kernel, n: int):
    rb, _, cb = _blocks(kernel, n)
    return (rb * kernel.config["split"], cb), (threads(kernel.config),)


def smem_bytes(kernel) -> int:
    """fp32 partial sums (R x nb) and B's slice (ks x nb halves)."""
    c = kernel.config
    return dims(c)["R"] * c["nb"] * 4 + c["ks"] * c["nb"] * 2


def workspace_shape(config: dict, row_blocks: int, col_blocks: int) -> tuple[int, int]:
    """Split-K's workspace (core.families.splitk_shape): a slice of R x nb per (row block, column block, split), one
    counter per (row block, column block)."""
    return splitk_shape(config["split"], row_blocks * col_blocks, dims(config)["R"] * config["nb"])


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    m, k = kernel.a.shape
    key = ("csr_splitk", dtype, cfg["nb"], cfg["ks"], cfg["warps"], cfg["rounds"])
    rinfo, rows, words = kernel.a.cached(key, lambda host: build(host, dtype, cfg["nb"], cfg["ks"], cfg["warps"],
                                                                 cfg["rounds"]))
    rb, q, cb = _blocks(kernel, n)
    ws, counters = splitk_workspace(kernel, "csr_splitk", workspace_shape(cfg, rb, cb), n)
    return (rinfo, rows, words, ws, counters, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(q))


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another problem: a narrower column block (smaller N), then fewer split-K blocks or a shorter slice."""
    return adapt_params(space, config, dtype, env, limits, ("nb", "split", "ks"))
