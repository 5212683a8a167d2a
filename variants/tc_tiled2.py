"""tc_tiled2, host side: A as a stream of 16 x 16 tiles for the tensor cores, built once per matrix by pure numpy
(`build`), read by the kernel with 16-byte cp.async copies into a per-warp ring and decoded by one scatter store per
nonzero into a zeroed 16 x 16 shared-memory image that ldmatrix.x4 turns into the A operand of mma.m16n8k16
(variants/tc_tiled2.cu.j2). B's K-slice of a block is staged once in shared memory and read with ldmatrix.trans.

Geometry. A row group is R = 16 * mr rows (mr 16-row tiles; a warp owns one group). A k-step is 16 columns of A (the
MMA's k); a record covers kr k-steps of a group: T = mr * kr tiles, tile i = kk * mr + t for k-step kk and row tile t.
KT = ceil(K / 16) k-steps, KTR = ceil(KT / kr) records a group, G = ceil(M / R) groups. The stream of group grp is its
KTR records (in order; every record exists, an empty one is its header alone); the streams of the groups are
concatenated. ptr[grp * (nkc + 1) + kc] is the byte offset of the record of k-step kc * KG of group grp (kc < nkc =
ceil(KT / KG); KG is a multiple of kr) and ptr[grp * (nkc + 1) + nkc] the end of the group's stream: split-K cuts the K
range at multiples of KG k-steps.

Record (H = 2 * T bytes of header): [T u16 counts n_i] [values of tile 0, tile 1, ... (u16 each)] [positions of
tile 0, tile 1, ... (u8 each)] [zeros to a multiple of H]. A tile's values are sorted by position. A position is where
the value goes in the tile's 512-byte image, laid out as the four 8 x 8 matrices of ldmatrix.x4 in the order of the
A operand (a0: rows 0-7 x columns 0-7, a1: rows 8-15 x 0-7, a2: rows 0-7 x 8-15, a3: rows 8-15 x 8-15):
pos = ((c >= 8) * 2 + (r >= 8)) * 64 + (r % 8) * 8 + c % 8 for row r and column c of the tile. Lane l of ldmatrix.x4
gives the address of row l % 8 of matrix l / 8, i.e. image + 16 * l; lane (g, q) = (l / 4, l % 4) then holds, of
matrix i, row g and columns 2q, 2q + 1. Bytes: 3 a nonzero + 2 a 16 x 16 tile (+ the padding to H): 3.1 at 10 %.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_nb_bload_splitk, splitk_shape, splitk_workspace
from sparse_autotune.core.families import csr_parts as _csr_parts
from sparse_autotune.core.problem import half_bits as _value_bits

KG = 8  # k-steps per split-K pointer
CHUNK_PAD = 4096  # bytes of zeros after the stream: the kernel's last chunk copies may read past its end
IMG = 512  # bytes of one 16 x 16 image


def max_record_bytes(tiles: int) -> int:
    """The largest record of `tiles` tiles (every one full): header, 3 bytes a value (770 * T is a multiple of H)."""
    return 770 * tiles


def ring_bytes_min(tiles: int, cpl: int) -> int:
    """The ring must hold the largest record starting at any header position of a chunk (no mirror: a record that
    wraps past the ring's end is read with masked addresses): stages * 512 * cpl >= this."""
    ch = 512 * cpl
    return max_record_bytes(tiles) + ch - 2 * tiles


def b_row_bytes(nb: int) -> int:
    """Bytes a row of staged B takes in shared memory: nb 16-byte units, no padding (the unit is XOR-swizzled by the
    row, so ldmatrix rows fall in distinct banks)."""
    return 16 * nb


def image_sets(config: dict) -> int:
    """Image sets of a warp: two, three with the software pipeline (scattered, read, zeroed)."""
    return 3 if config.get("pipe", 0) else 2


def warp_bytes(config: dict) -> int:
    """Shared memory of one warp: its ring and two (pipe: three) sets of mr * kr images."""
    return config["stages"] * 512 * config["cpl"] + image_sets(config) * config["mr"] * config["kr"] * IMG


def block_warps(config: dict) -> int:
    """Warps of a block: warps row groups of kw warps (each over its share of the block's K range)."""
    return config["warps"] * config.get("kw", 1)


def build(a: sp.csr_matrix, mr: int, kr: int = 1, dtype: str = "fp16"):
    """(ptr int32, stream uint8, info dict) of A with row groups of 16 * mr rows and records of kr k-steps."""
    mr, kr = int(mr), int(kr)
    if KG % kr:
        raise ValueError(f"kr = {kr} must divide KG = {KG}")
    m, k, rows, cols, data = _csr_parts(a)
    R = 16 * mr
    T = mr * kr
    H = 2 * T
    G = max(1, -(-m // R))
    KT = max(1, -(-k // 16))
    KTR = -(-KT // kr)
    nkc = -(-KT // KG)
    nrec = G * KTR
    r = rows % 16
    c = cols & 15
    s = cols >> 4
    rec = (rows // R) * KTR + s // kr
    pos = ((c >= 8) * 2 + (r >= 8)) * 64 + (r & 7) * 8 + (c & 7)
    tile = rec * T + (s % kr) * mr + ((rows % R) >> 4)  # tiles in stream order
    cnt = np.bincount(tile, minlength=nrec * T).reshape(nrec, T)
    tot = cnt.sum(axis=1)
    size = (H + 3 * tot + H - 1) // H * H
    rec_off = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(size, out=rec_off[1:])
    total = int(rec_off[-1])
    if total >= 2 ** 31:
        raise ValueError("tile stream over 2 GB")
    stream = np.zeros(((total + 15) & ~15) + CHUNK_PAD, dtype=np.uint8)
    s16 = stream.view(np.uint16)
    s16[(rec_off[:-1] // 2)[:, None] + np.arange(T)[None, :]] = cnt.astype(np.uint16)
    # a value's rank in its record: the values of the tiles before it, then its rank by position in its tile
    order = np.lexsort((pos, tile))
    tile_start = np.cumsum(cnt.reshape(-1)) - cnt.reshape(-1)  # first value of each tile, over the whole stream
    rec_first = tile_start.reshape(nrec, T)[:, 0]  # the record's first value
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    idx = rank - rec_first[rec]  # index of the value among its record's values
    bits = _value_bits(data, dtype)
    s16[(rec_off[rec] + H) // 2 + idx] = bits
    stream[rec_off[rec] + H + 2 * tot[rec] + idx] = pos.astype(np.uint8)
    grp_idx = np.arange(G)[:, None] * KTR
    kc_idx = np.minimum(np.arange(nkc + 1)[None, :] * (KG // kr), KTR)
    ptr = rec_off[grp_idx + kc_idx].astype(np.int32)  # kc = nkc -> record (grp, KTR) = start of the next group
    info = {"mr": mr, "kr": kr, "M": m, "K": k, "G": G, "KT": KT, "nkc": nkc, "stream_bytes": total,
            "bytes": total + ptr.nbytes, "nnz": int(len(data))}
    return ptr.reshape(-1), stream, info


def decode(ptr: np.ndarray, stream: np.ndarray, info: dict) -> np.ndarray:
    """Dense M x K uint16 bit patterns of A rebuilt from the stream by the kernel's own rule: each group's records are
    walked from their headers (as a warp does), each tile's values scattered to their positions in a zeroed image, and
    each lane (g, q) reads its A-operand fragment out of the image as ldmatrix.x4 gives it. For tests (a Python loop
    over records: small matrices)."""
    mr, kr, m, k, G, KT, nkc = (info[x] for x in ("mr", "kr", "M", "K", "G", "KT", "nkc"))
    R, T = 16 * mr, mr * kr
    H = 2 * T
    KTR = -(-KT // kr)
    out = np.zeros((G * R, KTR * kr * 16), dtype=np.uint16)
    s16 = stream.view(np.uint16)
    lane = np.arange(32)
    g, q = lane >> 2, lane & 3
    for grp in range(G):
        p = int(ptr[grp * (nkc + 1)])
        for rec in range(KTR):
            if (rec * kr) % KG == 0:
                assert p == int(ptr[grp * (nkc + 1) + rec * kr // KG]), "pointer table disagrees with the stream"
            assert p % H == 0
            cnt = [int(s16[p // 2 + i]) for i in range(T)]
            tot = sum(cnt)
            off = 0
            for i in range(T):  # tile i: k-step rec * kr + i // mr, row tile i % mr
                s, t = rec * kr + i // mr, i % mr
                img = np.zeros(256, dtype=np.uint16)
                j = np.arange(cnt[i])
                img[stream[p + H + 2 * tot + off + j].astype(np.int64)] = s16[(p + H) // 2 + off + j]
                off += cnt[i]
                # ldmatrix.x4: register x of lane (g, q) = matrix x, row g, elements 2q, 2q + 1; a_x of the MMA:
                # a0 (row g, k 2q), a1 (row g + 8, k 2q), a2 (row g, k 2q + 8), a3 (row g + 8, k 2q + 8)
                for x in range(4):
                    row = grp * R + 16 * t + g + 8 * (x & 1)
                    col = 16 * s + 2 * q + 8 * (x >> 1)
                    out[row, col] = img[x * 64 + g * 8 + 2 * q]
                    out[row, col + 1] = img[x * 64 + g * 8 + 2 * q + 1]
            p += (H + 3 * tot + H - 1) // H * H
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
    """Dynamic shared memory of a block: 16 bytes (the split-K last-block flag), per warp its ring and two (pipe:
    three) sets of T images; then the block's slice of B (16 * KG * kc_per_split rows of nb 16-byte units). With kw > 1
    the same memory (past the flag) then holds every warp's partial sums (mr * nb * 512 bytes a warp) for the
    reduction: at least that much."""
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
    """Split-K's workspace (core.families.splitk_shape): a slice per (row block, column tile, split) of row groups
    (warps) x 32 lanes x mr x nb float4s, one counter per (row block, column tile)."""
    return splitk_shape(config["splitk"], row_blocks * ntiles, config["warps"] * 32 * config["mr"] * config["nb"] * 4)


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    m, k = kernel.a.shape
    G, nkc, row_blocks, ntiles, kcps = _dims(cfg, m, k, n)
    mr, kr = cfg["mr"], cfg["kr"]
    ptr, stream = kernel.a.cached(("tc_tiled2", mr, kr, dtype), lambda host: build(host, mr, kr, dtype)[:2])
    ws, counters = splitk_workspace(kernel, "tc_tiled2", workspace_shape(cfg, row_blocks, ntiles), n)
    return (ptr, stream, ws, counters, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(G), np.int32(nkc),
            np.int32(kcps), np.int32(ntiles))


adapt = adapt_nb_bload_splitk  # (core.families: another N's scalar B, narrower nb, more split-K)
