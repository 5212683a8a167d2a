"""tc_tiled3, host side: A as a stream of records of 16 x 16 tiles whose nonzeros are decoded by each lane straight
into its own mma.m16n8k16 A-fragment registers (variants/tc_tiled3.cu.j2): no shared-memory image, no ldmatrix of A,
no scatter. Built once per matrix by pure numpy (`build`), cached on the device like the other layouts.

The unit is the fragment *pair*: lane l = 4 g + t of mma.m16n8k16 holds, of a 16 x 16 tile, four 32-bit registers
a0 (row g, columns 2t, 2t + 1), a1 (row g + 8, same columns), a2 (row g, columns 2t + 8, 2t + 9), a3 (row g + 8, columns
2t + 8, 2t + 9); pair j of lane l is register a_j, two 16-bit values (the even column in the low half). A pair with
any nonzero is stored whole (a zero half where one of its two values is zero); an empty pair is not stored.

Geometry (as tc_tiled2): a row group is R = 16 * mr rows, a k-step 16 columns, a record kr k-steps of a group: T = mr * kr
<= 8 tiles, tile i = kk * mr + t for k-step kk and row tile t. KT = ceil(K / 16), KTR = ceil(KT / kr) records a group,
G = ceil(M / R) groups; ptr[grp * (nkc + 1) + kc] is the byte offset of the record of k-step kc * KG (KG = 8) of group
grp, ptr[grp * (nkc + 1) + nkc] the end of the group's stream (split-K cuts at multiples of KG k-steps).

Record (8-byte aligned):
  [0, 4)     u32 header: number of stored pairs P (bits 0-15), tile mask (bit 16 + i: tile i has a nonzero)
  [4, 8)     zero
  and only where P > 0:
  [8, 136)   32 u32 lane words: bit 4 i + j of lane l's word = lane l's pair j of tile i is stored
  [136, 200) 32 u16 lane starts: index (in pairs) of lane l's first stored pair among the record's pairs
  [200, 200 + 4 P)  the pairs (u32), lane-major: lane 0's pairs of tile 0, 1, ..., T - 1 (each in order j = 0..3), then
             lane 1's, ...; so a lane's pairs are one contiguous run, walked in order of its word's bits
  zeros to a multiple of 8.
A record with no nonzero is its 8 header bytes (an empty tile costs 0 bytes in a non-empty record beyond its 4 bits a
lane; the kernel skips it). Bytes: 8 + 192 + 4 * pairs a non-empty record: 4.7 a nonzero at density 0.1 (T = 2:
4.9), 5.8 at 0.05, 3.7 at 0.3 (bench/drafts/tc_tiled3.md has the table and why pairs, not halves or quads).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_nb_bload_splitk, splitk_shape, splitk_workspace
from sparse_autotune.core.families import csr_parts as _csr_parts
from sparse_autotune.core.problem import half_bits as _value_bits

KG = 8  # k-steps per split-K pointer
CHUNK_PAD = 4096  # bytes of zeros after the stream: the kernel's last chunk copies may read past its end
HDR = 8  # bytes of a record's header
WORDS = 8  # offset of the lane words
CH = 512  # bytes of a ring chunk (32 lanes x 16 bytes)


def word_bytes(tiles: int) -> int:
    """Bytes of a lane word: 4 bits a tile, in a u8 (T <= 2), u16 (T <= 4) or u32 (T <= 8)."""
    return 1 if tiles <= 2 else 2 if tiles <= 4 else 4


def start_bytes(tiles: int) -> int:
    """Bytes of a lane start: u8 where the largest start (lane 31 after 31 full lanes, 124 * T pairs) fits, else u16."""
    return 1 if 124 * tiles <= 255 else 2


def offsets(tiles: int) -> tuple[int, int]:
    """(offset of the lane starts, offset of the pairs) in a non-empty record of `tiles` tiles."""
    starts = WORDS + 32 * word_bytes(tiles)
    return starts, starts + 32 * start_bytes(tiles)


def max_record_bytes(tiles: int) -> int:
    """The largest record of `tiles` tiles (every pair stored)."""
    return offsets(tiles)[1] + 4 * 128 * tiles


def stages_min(tiles: int) -> int:
    """The fewest 512-byte chunks a ring may have: the kernel keeps the bytes up to pos + max_record_bytes on chip
    for the record at pos (one wait check a record, whatever its size), and pos may lie anywhere in the oldest chunk
    still held, so the ring holds that chunk and ceil(max_record_bytes / 512) more."""
    return 1 + -(-max_record_bytes(tiles) // CH)


def b_row_bytes(nb: int) -> int:
    """Bytes a row of staged B takes in shared memory: nb 16-byte units, XOR-swizzled by the row (as tc_tiled2)."""
    return 16 * nb


def warp_bytes(config: dict) -> int:
    """Shared memory of one warp: its ring only (A is decoded into registers)."""
    return config["stages"] * CH


def block_warps(config: dict) -> int:
    return config["warps"] * config.get("kw", 1)


def fragment_slot(r16, c16):
    """(lane, pair j, half) of element (r16, c16) of a 16 x 16 tile in mma.m16n8k16's A fragment."""
    lane = 4 * (r16 & 7) + ((c16 & 7) >> 1)
    j = (r16 >> 3) + 2 * (c16 >> 3)
    return lane, j, c16 & 1


def _put(stream: np.ndarray, at: np.ndarray, vals: np.ndarray, width: int) -> None:
    """Little-endian integers of `width` bytes at byte offsets `at` (aligned to width)."""
    view = stream.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[width])
    view[at // width] = vals.astype(view.dtype)


def _get(stream: np.ndarray, at: int, width: int) -> int:
    return int(stream[at:at + width].view({1: np.uint8, 2: np.uint16, 4: np.uint32}[width])[0])


def build(a: sp.csr_matrix, mr: int, kr: int = 2, dtype: str = "fp16"):
    """(ptr int32, stream uint8, info dict) of A with row groups of 16 * mr rows and records of kr k-steps."""
    mr, kr = int(mr), int(kr)
    if KG % kr:
        raise ValueError(f"kr = {kr} must divide KG = {KG}")
    T = mr * kr
    if not 2 <= T <= 8:
        raise ValueError(f"mr * kr = {T}: 2 to 8 tiles a record (4 bits a tile in a lane word of 8 to 32 bits)")
    wb, sb = word_bytes(T), start_bytes(T)
    starts_off, vals_off = offsets(T)
    m, k, rows, cols, data = _csr_parts(a)
    R = 16 * mr
    G = max(1, -(-m // R))
    KT = max(1, -(-k // 16))
    KTR = -(-KT // kr)
    nkc = -(-KT // KG)
    nrec = G * KTR
    s = cols >> 4
    rec = (rows // R) * KTR + s // kr
    tile = (s % kr) * mr + ((rows % R) >> 4)
    lane, j, half = fragment_slot(rows & 15, cols & 15)
    # one key a stored pair, in stream order: record, lane, then the lane word's bit 4 * tile + j (tile, pair)
    key = (rec * 32 + lane) * 32 + 4 * tile + j
    order = np.argsort(key, kind="stable")
    ks = key[order]
    new = np.ones(len(ks), dtype=bool)
    new[1:] = ks[1:] != ks[:-1]
    ukey = ks[new]
    inv = np.empty(len(key), dtype=np.int64)
    inv[order] = np.cumsum(new) - 1
    bits = _value_bits(data, dtype).astype(np.uint32)
    pairs = np.zeros(len(ukey), dtype=np.uint32)
    lo = half == 0
    pairs[inv[lo]] = bits[lo]  # (each half of a pair at most once: CSR without duplicates)
    pairs[inv[~lo]] |= bits[~lo] << np.uint32(16)
    prec = ukey >> 10
    plane_idx = ukey >> 5  # rec * 32 + lane
    npairs = np.bincount(prec, minlength=nrec)
    # lane words: distinct powers of two summed exactly in float64 (below 2^32)
    words = np.bincount(plane_idx, weights=np.ldexp(1.0, (ukey & 31).astype(np.int64)),
                        minlength=nrec * 32).astype(np.uint64).astype(np.uint32).reshape(nrec, 32)
    has = np.zeros((nrec, 8), dtype=bool)
    has[rec, tile] = True
    tmask = (has.astype(np.uint32) << np.arange(8, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    lane_cnt = np.bincount(plane_idx, minlength=nrec * 32).reshape(nrec, 32)
    starts = np.cumsum(lane_cnt, axis=1) - lane_cnt
    size = np.where(npairs > 0, vals_off + 4 * npairs, HDR)
    size = (size + 7) & ~7
    rec_off = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(size, out=rec_off[1:])
    total = int(rec_off[-1])
    if total >= 2 ** 31:
        raise ValueError("tile stream over 2 GB")
    stream = np.zeros(((total + 15) & ~15) + CHUNK_PAD, dtype=np.uint8)
    _put(stream, rec_off[:-1], npairs.astype(np.uint32) | (tmask << np.uint32(16)), 4)
    full = np.nonzero(npairs)[0]
    lanes = np.arange(32)[None, :]
    _put(stream, (rec_off[full] + WORDS)[:, None] + wb * lanes, words[full], wb)
    _put(stream, (rec_off[full] + starts_off)[:, None] + sb * lanes, starts[full], sb)
    first = np.cumsum(npairs) - npairs  # the record's first pair among all pairs
    idx = np.arange(len(ukey), dtype=np.int64) - first[prec]
    _put(stream, rec_off[prec] + vals_off + 4 * idx, pairs, 4)
    grp_idx = np.arange(G)[:, None] * KTR
    kc_idx = np.minimum(np.arange(nkc + 1)[None, :] * (KG // kr), KTR)
    ptr = rec_off[grp_idx + kc_idx].astype(np.int32)
    info = {"mr": mr, "kr": kr, "M": m, "K": k, "G": G, "KT": KT, "nkc": nkc, "stream_bytes": total,
            "bytes": total + ptr.nbytes, "nnz": int(len(data)), "pairs": int(len(ukey))}
    return ptr.reshape(-1), stream, info


def decode(ptr: np.ndarray, stream: np.ndarray, info: dict) -> np.ndarray:
    """Dense M x K uint16 bit patterns of A rebuilt from the stream by the kernel's own lane rule: each group's records
    walked from their headers (as a warp does); in a record each lane reads its word and its start, and walks its
    pairs in the order of the word's bits (tile i, pair j: one 32-bit load where the bit is set, the pointer advanced by
    4), giving register a_j of its fragment of tile i; the fragment is placed by mma.m16n8k16's A layout. For tests."""
    mr, kr, m, k, G, KT, nkc = (info[x] for x in ("mr", "kr", "M", "K", "G", "KT", "nkc"))
    R, T = 16 * mr, mr * kr
    KTR = -(-KT // kr)
    out = np.zeros((G * R, KTR * kr * 16), dtype=np.uint16)
    s32 = stream.view(np.uint32)
    wb, sb = word_bytes(T), start_bytes(T)
    starts_off, vals_off = offsets(T)
    for grp in range(G):
        p = int(ptr[grp * (nkc + 1)])
        for rec in range(KTR):
            if (rec * kr) % KG == 0:
                assert p == int(ptr[grp * (nkc + 1) + rec * kr // KG]), "pointer table disagrees with the stream"
            assert p % 8 == 0
            hdr = int(s32[p // 4])
            npairs, tmask = hdr & 0xFFFF, hdr >> 16
            assert int(s32[p // 4 + 1]) == 0
            if npairs:
                seen = 0
                for lane in range(32):
                    word = _get(stream, p + WORDS + wb * lane, wb)
                    vp = p + vals_off + 4 * _get(stream, p + starts_off + sb * lane, sb)
                    g, t = lane >> 2, lane & 3
                    for i in range(T):
                        for j in range(4):
                            if not word >> (4 * i + j) & 1:
                                continue
                            assert tmask >> i & 1, "a lane's bit in a tile the mask calls empty"
                            v = int(s32[vp // 4])
                            vp += 4
                            seen += 1
                            kk, tt = divmod(i, mr)
                            row = grp * R + 16 * tt + g + 8 * (j & 1)
                            col = 16 * (rec * kr + kk) + 2 * t + 8 * (j >> 1)
                            out[row, col] = v & 0xFFFF
                            out[row, col + 1] = v >> 16
                assert seen == npairs, "lane words disagree with the pair count"
                p += (vals_off + 4 * npairs + 7) & ~7
            else:
                assert tmask == 0
                p += HDR
        assert p == int(ptr[grp * (nkc + 1) + nkc]), "group stream length disagrees with the pointer table"
    return out[:m, :k]


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * block_warps(config)


def _dims(config: dict, m: int, k: int, n: int):
    """(G, nkc, row blocks, column tiles, k-pointer chunks per split) of a launch for N columns."""
    G = max(1, -(-m // (16 * config["mr"])))
    nkc = -(-max(1, -(-k // 16)) // KG)
    row_blocks = -(-G // config["warps"])
    ntiles = max(1, -(-n // (8 * config["nb"])))
    return G, nkc, row_blocks, ntiles, -(-nkc // config["splitk"])


def shared_bytes(config: dict, k: int) -> int:
    """Dynamic shared memory of a block: 16 bytes (the split-K last-block flag), a ring a warp, the block's slice of B
    (16 * KG * kc_per_split rows of nb 16-byte units); with kw > 1 at least every warp's partial sums (mr * nb * 512
    bytes a warp) for the reduction, which reuses the same memory after the loop."""
    kcps = -(-(-(-max(1, -(-k // 16)) // KG)) // config["splitk"])
    main = block_warps(config) * warp_bytes(config) + 16 * KG * kcps * b_row_bytes(config["nb"])
    red = block_warps(config) * config["mr"] * config["nb"] * 512 if config.get("kw", 1) > 1 else 0
    return 16 + max(main, red)


def smem_bytes(kernel) -> int:
    return shared_bytes(kernel.config, kernel.a.shape[1])


def geometry(kernel, n: int):
    m, k = kernel.a.shape
    _, _, row_blocks, ntiles, _ = _dims(kernel.config, m, k, n)
    return (row_blocks * kernel.config["splitk"] * ntiles,), (threads(kernel.config),)


def workspace_shape(config: dict, row_blocks: int, ntiles: int) -> tuple[int, int]:
    """Split-K's workspace (core.families.splitk_shape): a slice per (row block, column tile, split) of row groups x
    32 lanes x mr x nb float4s, one counter per (row block, column tile)."""
    return splitk_shape(config["splitk"], row_blocks * ntiles, config["warps"] * 32 * config["mr"] * config["nb"] * 4)


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    m, k = kernel.a.shape
    G, nkc, row_blocks, ntiles, kcps = _dims(cfg, m, k, n)
    mr, kr = cfg["mr"], cfg["kr"]
    ptr, stream = kernel.a.cached(("tc_tiled3", mr, kr, dtype), lambda host: build(host, mr, kr, dtype)[:2])
    ws, counters = splitk_workspace(kernel, "tc_tiled3", workspace_shape(cfg, row_blocks, ntiles), n)
    return (ptr, stream, ws, counters, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(G), np.int32(nkc),
            np.int32(kcps), np.int32(ntiles))


adapt = adapt_nb_bload_splitk  # (core.families: another N's scalar B, narrower nb, more split-K)
