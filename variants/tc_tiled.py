"""tc_tiled, host side: A as a tile stream for the tensor cores (Flash-LLM / SpInfer class), built once per matrix by
pure numpy (`build`), read by the kernel with 16-byte cp.async copies into a per-warp ring and decoded on chip into
mma.m16n8k16 B-operand fragments (variants/tc_tiled.cu.j2).

Geometry. A row group is R = 8 * ru rows (ru 8-row units; the unit is the MMA's n = 8 side). A k-step is 16 columns
of A (the MMA's k). KT = ceil(K / 16) k-steps, G = ceil(M / R) groups. The stream of group grp is its KT records
(one per k-step, in order; every record exists, an empty one is only its header); the streams of the groups are
concatenated. ptr[grp * (nkc + 1) + kc] is the byte offset of record kc * KG of group grp (kc < nkc = ceil(KT / KG))
and ptr[grp * (nkc + 1) + nkc] the end of the group's stream: split-K cuts the K range at multiples of KG k-steps.

Inside an 8-row unit, a k-step is two 8x8 blocks (kb = 0: columns 0-7, kb = 1: columns 8-15). Lane (g, q) = (lane / 4,
lane % 4) of the MMA needs, per block, row g and columns 2q, 2q + 1 (b0: kb = 0, b1: kb = 1).

fmt "bitmap" (decoded in registers): record = [ru units x 4 words (u32)] [ru units x 4 bytes] [values] [pad to 4].
  Word w = 2 * kb + (g >= 4) of a unit holds rows 4 * (w % 2) .. + 3 of block kb, bit (g % 4) * 8 + c for (row g,
  column c). Its 4 bytes are b1, b2, b3, tot: the number of the unit's values before words 1, 2, 3, and all of them.
  Values (16-bit) unit after unit, each unit's words in order 0..3, each word's bits in order (row-major in block).
  A lane finds its value at ustart + base(w) + popc(word & ((1 << sh) - 1)), sh = 8 * (g % 4) + 2 * q.
  Bytes: 2 per nonzero + 1.25 bits per element of A (20 bytes per 8 x 16 unit): 2.31 bytes/nnz at 50 %, 3.25 at 10 %.
fmt "offset" (decoded through shared memory): a record is ceil(ru / 2) sub-records, each for 2 units (1 if ru = 1):
  [u16 count] [count values] [count u8 positions] [pad to 2]. A position is where the value goes in the warp's
  image of the 16 x 16 sub-tile, laid out as 4 8x8 matrices for ldmatrix.x4: ((u % 2) * 2 + kb) * 64 + g * 8 + c.
  Values are sorted by position. Bytes: 3 per nonzero + 2 per sub-record (16 x 16 elements): 3.1 bytes/nnz at 10 %.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import (adapt_jointly, adapt_params, narrower, splitk_shape, splitk_workspace,
                                            stored_then_scalar)
from sparse_autotune.core.families import csr_parts as _csr_parts
from sparse_autotune.core.problem import half_bits as _value_bits

KG = 8  # k-steps per split-K pointer
CHUNK_PAD = 4096  # bytes of zeros after the stream: the kernel's last chunk copies may read past its end


def max_record_bytes(fmt: str, ru: int) -> int:
    """The largest record (bitmap) or sub-record (offset) of the format: the ring must hold it and one chunk more."""
    if fmt == "bitmap":
        return 20 * ru + 256 * ru + 2
    return 2 + 3 * 128 * min(ru, 2) + 1


def build(a: sp.csr_matrix, fmt: str, ru: int, dtype: str = "fp16"):
    """(ptr int32, stream uint8, info dict) of A in format `fmt` with row groups of 8 * ru rows."""
    if fmt not in ("bitmap", "offset"):
        raise ValueError(f"unknown tile format {fmt!r}")
    ru = int(ru)
    m, k, rows, cols, data = _csr_parts(a)
    R = 8 * ru
    G = max(1, -(-m // R))
    KT = max(1, -(-k // 16))
    nkc = -(-KT // KG)
    nrec = G * KT
    grp = rows // R
    u = (rows % R) >> 3
    g = rows & 7
    s = cols >> 4
    kb = (cols >> 3) & 1
    cc = cols & 7
    rec = grp * KT + s
    bits = _value_bits(data, dtype)
    if fmt == "bitmap":
        H = 20 * ru
        nnz_rec = np.bincount(rec, minlength=nrec)
        size = (H + 2 * nnz_rec + 3) & ~3
        rec_off = np.zeros(nrec + 1, dtype=np.int64)
        np.cumsum(size, out=rec_off[1:])
        total = int(rec_off[-1])
        stream = np.zeros(((total + 15) & ~15) + CHUNK_PAD, dtype=np.uint8)
        s32 = stream.view(np.uint32)
        s16 = stream.view(np.uint16)
        unit = rec * ru + u
        widx = unit * 4 + 2 * kb + (g >= 4)
        bit = ((g & 3) * 8 + cc).astype(np.int32)
        nw = nrec * ru * 4
        wval = np.bincount(widx, weights=np.ldexp(1.0, bit), minlength=nw).astype(np.uint64).astype(np.uint32)
        wcnt = np.bincount(widx, minlength=nw).astype(np.int64).reshape(nrec, ru, 4)
        cum = np.cumsum(wcnt, axis=2)  # b1, b2, b3, tot
        packed = (cum[:, :, 0] | (cum[:, :, 1] << 8) | (cum[:, :, 2] << 16) | (cum[:, :, 3] << 24)).astype(np.uint32)
        base32 = (rec_off[:-1] // 4)[:, None]
        s32[base32 + np.arange(4 * ru)[None, :]] = wval.reshape(nrec, 4 * ru)
        s32[base32 + 4 * ru + np.arange(ru)[None, :]] = packed
        # a value's index in its record: the units before it, the words before it in its unit, the bits before it
        ustart = (np.cumsum(cum[:, :, 3], axis=1) - cum[:, :, 3]).reshape(-1)
        wbase = np.concatenate([np.zeros((nrec, ru, 1), np.int64), cum[:, :, :3]], axis=2).reshape(-1)
        low = wval[widx] & ((np.uint32(1) << bit.astype(np.uint32)) - np.uint32(1))
        idx = ustart[unit] + wbase[widx] + np.bitwise_count(low).astype(np.int64)
        s16[(rec_off[rec] + H) // 2 + idx] = bits
        starts = rec_off
    else:
        P = -(-ru // 2)
        pos = (((u & 1) * 2 + kb) * 64 + g * 8 + cc)
        sub = rec * P + (u >> 1)
        nsub = nrec * P
        nnz_sub = np.bincount(sub, minlength=nsub)
        size = (2 + 3 * nnz_sub + 1) & ~1
        sub_off = np.zeros(nsub + 1, dtype=np.int64)
        np.cumsum(size, out=sub_off[1:])
        total = int(sub_off[-1])
        stream = np.zeros(((total + 15) & ~15) + CHUNK_PAD, dtype=np.uint8)
        s16 = stream.view(np.uint16)
        s16[sub_off[:-1] // 2] = nnz_sub.astype(np.uint16)
        # a value's rank in its sub-record (sorted by position): 8 words of 32 position bits per sub-record
        widx = sub * 8 + (pos >> 5)
        bit = (pos & 31).astype(np.int32)
        wval = np.bincount(widx, weights=np.ldexp(1.0, bit), minlength=nsub * 8).astype(np.uint64).astype(np.uint32)
        wcnt = np.bincount(widx, minlength=nsub * 8).astype(np.int64).reshape(nsub, 8)
        wbase = (np.cumsum(wcnt, axis=1) - wcnt).reshape(-1)
        low = wval[widx] & ((np.uint32(1) << bit.astype(np.uint32)) - np.uint32(1))
        rank = wbase[widx] + np.bitwise_count(low).astype(np.int64)
        s16[sub_off[sub] // 2 + 1 + rank] = bits
        stream[sub_off[sub] + 2 + 2 * nnz_sub[sub] + rank] = pos.astype(np.uint8)
        starts = sub_off[::P]  # record (grp, s) starts at its first sub-record; starts[nrec] = total
    if total >= 2 ** 31:
        raise ValueError("tile stream over 2 GB")
    recs = starts.reshape(-1)[:nrec + 1]
    grp_idx = np.arange(G)[:, None] * KT
    kc_idx = np.minimum(np.arange(nkc + 1)[None, :] * KG, KT)
    ptr = recs[grp_idx + kc_idx].astype(np.int32)  # kc = nkc -> record (grp, KT) = start of the next group
    info = {"fmt": fmt, "ru": ru, "M": m, "K": k, "G": G, "KT": KT, "nkc": nkc, "stream_bytes": total,
            "bytes": total + ptr.nbytes, "nnz": int(len(data))}
    return ptr.reshape(-1), stream, info


def _popc32(x):
    x = x.astype(np.uint64)
    c = np.zeros_like(x)
    for i in range(32):
        c += (x >> np.uint64(i)) & np.uint64(1)
    return c.astype(np.int64)


def decode(ptr: np.ndarray, stream: np.ndarray, info: dict) -> np.ndarray:
    """Dense M x K uint16 bit patterns of A rebuilt from the stream, by the kernel's own per-lane arithmetic: each record
    is parsed from its header (record after record, as a warp walks its stream), each lane (g, q) finds its two values per
    block the way the kernel does. For tests (a Python loop over records: small matrices)."""
    fmt, ru, m, k, G, KT, nkc = (info[x] for x in ("fmt", "ru", "M", "K", "G", "KT", "nkc"))
    R = 8 * ru
    out = np.zeros((G * R, KT * 16), dtype=np.uint16)
    s32 = stream.view(np.uint32)
    s16 = stream.view(np.uint16)
    lane = np.arange(32)
    g, q = lane >> 2, lane & 3
    hi = (g >= 4).astype(np.int64)
    sh = 8 * (g & 3) + 2 * q
    mask = (np.uint64(1) << sh.astype(np.uint64)) - np.uint64(1)
    for grp in range(G):
        p = int(ptr[grp * (nkc + 1)])
        for s in range(KT):
            if s % KG == 0:
                assert p == int(ptr[grp * (nkc + 1) + s // KG]), "pointer table disagrees with the stream"
            if fmt == "bitmap":
                H = 20 * ru
                ustart = 0
                for u in range(ru):
                    bs = int(s32[(p + 16 * ru + 4 * u) // 4])
                    b1, b2, b3, tot = bs & 255, (bs >> 8) & 255, (bs >> 16) & 255, bs >> 24
                    for kbb in range(2):
                        x = s32[(p + 16 * u + 8 * kbb) // 4 + hi].astype(np.uint64)
                        base = np.where(hi == 1, b3 if kbb else b1, b2 if kbb else 0)
                        idx = ustart + base + _popc32(x & mask)
                        bb = (x >> sh.astype(np.uint64)) & np.uint64(3)
                        b0 = (bb & np.uint64(1)).astype(np.int64)
                        v0 = np.where(b0 == 1, s16[(p + H) // 2 + idx], 0)
                        v1 = np.where((bb & np.uint64(2)) != 0, s16[(p + H) // 2 + idx + b0], 0)
                        r = grp * R + 8 * u + g
                        c = 16 * s + 8 * kbb + 2 * q
                        out[r, c] = v0
                        out[r, c + 1] = v1
                    ustart += tot
                p += (H + 2 * ustart + 3) & ~3
            else:
                for pp in range(-(-ru // 2)):
                    n = int(s16[p // 2])
                    img = np.zeros(256, dtype=np.uint16)
                    vals = s16[p // 2 + 1: p // 2 + 1 + n]
                    poss = stream[p + 2 + 2 * n: p + 2 + 3 * n].astype(np.int64)
                    img[poss] = vals
                    # ldmatrix.x4: matrix mi = (u % 2) * 2 + kb; lane (g, q) of matrix mi gets row g, cols 2q, 2q + 1
                    for mi in range(4 if ru >= 2 else 2):
                        uu, kbb = 2 * pp + mi // 2, mi % 2
                        r = grp * R + 8 * uu + g
                        c = 16 * s + 8 * kbb + 2 * q
                        out[r, c] = img[mi * 64 + g * 8 + 2 * q]
                        out[r, c + 1] = img[mi * 64 + g * 8 + 2 * q + 1]
                    p += (2 + 3 * n + 1) & ~1
        assert p == int(ptr[grp * (nkc + 1) + nkc]), "group stream length disagrees with the pointer table"
    return out[:m, :k]


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * config["warps"]


def _dims(kernel, n: int):
    """(G, nkc, row blocks, column tiles, k-pointer chunks per split) of this kernel's launch for N columns."""
    c = kernel.config
    m, k = kernel.a.shape
    G = max(1, -(-m // (8 * c["ru"])))
    nkc = -(-max(1, -(-k // 16)) // KG)
    row_blocks = -(-G // c["warps"])
    ntiles = max(1, -(-n // (16 * c["nt"])))
    return G, nkc, row_blocks, ntiles, -(-nkc // c["splitk"])


def geometry(kernel, n: int):
    _, _, row_blocks, ntiles, _ = _dims(kernel, n)
    return (row_blocks * kernel.config["splitk"] * ntiles,), (threads(kernel.config),)


def workspace_shape(config: dict, row_blocks: int, ntiles: int) -> tuple[int, int]:
    """Split-K's workspace (core.families.splitk_shape): a slice per (row block, column tile, split) of warps x 32 lanes
    x ru x nt float4s, one counter per (row block, column tile)."""
    return splitk_shape(config["splitk"], row_blocks * ntiles, config["warps"] * 32 * config["ru"] * config["nt"] * 4)


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    m, k = kernel.a.shape
    G, nkc, row_blocks, ntiles, kcps = _dims(kernel, n)
    fmt, ru = cfg["fmt"], cfg["ru"]
    ptr, stream = kernel.a.cached(("tc_tiled", fmt, ru, dtype), lambda host: build(host, fmt, ru, dtype)[:2])
    ws, counters = splitk_workspace(kernel, "tc_tiled", workspace_shape(cfg, row_blocks, ntiles), n)
    return (ptr, stream, ws, counters, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(G), np.int32(nkc),
            np.int32(kcps), np.int32(ntiles))


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another N: 16-bit loads of B where vectors do not divide N, and/or a narrower column tile (the widest that
    fits), the rest of the config as stored."""
    got = adapt_params(space, config, dtype, env, limits, ("bload", "nt"))
    if got is not None:
        return got
    return adapt_jointly(space, config, dtype, env, limits,
                         lambda cfg: {"nt": narrower(space, cfg, dtype, "nt"), "bload": stored_then_scalar(cfg)})
