"""tc_scatter, host side: A as a list of (position, value) entries a chunk of kc 16 x 16 tiles, scattered by the lanes
of a warp into a zeroed shared-memory buffer laid out in mma.m16n8k16 A-fragment order, which each lane then reads
back as its four fragment registers with one 16-byte load (variants/tc_scatter.cu.j2). For N 8-32 at density <= 0.2
(LLM decode, issue 16), where tc_bitmap's per-element decode (a fixed ~60 instructions a tile at any density) and the
CUDA-core gathers' B traffic are the walls: here a tile costs ~2 instructions a nonzero a lane plus a fixed ~6 (the
16-byte read and re-zeroing, the B fragments, the MMAs), bench/NOTES.md session 51.

Fragment order: lane l = 4 g + t of mma.m16n8k16 holds, of a 16 x 16 tile, a_0 = (row g, columns 2t, 2t + 1), a_1 =
(row g + 8, the same columns), a_2 = (row g, columns 2t + 8, 2t + 9), a_3 = (row g + 8, those): element (r, c) is at
byte 16 l + 4 reg + 2 (c % 2) of the tile's 512, l = 4 (r % 8) + (c % 8) // 2, reg = r // 8 + 2 (c // 8). A chunk's
buffer is kc such tiles (tile j at 512 j) and 4 bytes of trash at 512 kc, where padding entries write.

The layout (`build`, pure numpy, one per matrix, dtype and kc whatever the rest of the config; cached on the device like
the other layouts). S = ceil(M / 16) strips of 16 rows, KT = ceil(K / 16) k-steps, NCH = ceil(KT / kc) chunks a strip:
  ent   uint32 [E + 4]       entry = (byte position in the chunk's buffer) << 16 | the value's 16 bits; a chunk's
                             entries padded to a multiple of 4 with trash entries (position 512 kc, value 0) so that a
                             lane reads four with one 16-byte load; within a chunk the entries of each 128 (a warp's
                             load, four store instructions of 32 lanes) are ordered by shared-memory bank, so that the
                             32 stores of one instruction fall on distinct banks where the pattern allows
  cptr  int32  [S * (NCH + 1)] cptr[s * (NCH + 1) + c]: index in ent of chunk (s, c)'s first entry (a multiple of 4);
                             entry NCH the strip's end
Bytes: 4 a nonzero + the padding (1.5 entries a chunk on average) + 4 a chunk of pointers: ~4.1 B a nonzero at d 0.1
(csr_gemv: 4; tc_bitmap: 3.25 at d 0.1, 2.3 at d 0.5)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_nb_bload_splitk, warp_slices_shape, warp_slices_workspace
from sparse_autotune.core.families import csr_parts as _csr_parts
from sparse_autotune.core.problem import half_bits as value_bits

TILE_BYTES = 512  # a 16 x 16 tile of 16-bit values
ROUND = 128  # entries a warp loads at once (32 lanes x 4)
ENT_PAD = 4  # trash entries after the last chunk (never read: the loads are bounded by the pointers)


def frag_pos(r16, c16):
    """Byte offset of element (r16, c16) of a 16 x 16 tile in fragment order: 16 lane + 4 reg + 2 (c16 % 2)."""
    r16, c16 = np.asarray(r16, dtype=np.int64), np.asarray(c16, dtype=np.int64)
    lane = 4 * (r16 & 7) + ((c16 & 7) >> 1)
    reg = (r16 >> 3) + 2 * (c16 >> 3)
    return 16 * lane + 4 * reg + 2 * (c16 & 1)


def dims(m: int, k: int, kc: int) -> tuple[int, int, int]:
    """(S strips, KT k-steps, NCH chunks a strip)."""
    S = max(1, -(-m // 16))
    KT = max(1, -(-k // 16))
    return S, KT, -(-KT // kc)


def trash(kc: int) -> int:
    """The padding entry: position 512 kc (the buffer's trash word), value 0."""
    return (TILE_BYTES * kc) << 16


def build(a: sp.csr_matrix, dtype: str = "fp16", kc: int = 4):
    """(ent uint32, cptr int32, info dict) of A (see the module's docstring)."""
    if kc not in (1, 2, 4, 8):
        raise ValueError(f"tc_scatter: kc must be 1, 2, 4 or 8, not {kc}")
    m, k, rows, cols, data = _csr_parts(a)
    S, KT, NCH = dims(m, k, kc)
    nchunk = S * NCH
    chunk = (rows >> 4) * NCH + ((cols >> 4) // kc)
    pos = ((cols >> 4) % kc) * TILE_BYTES + frag_pos(rows & 15, cols & 15)
    bank = (pos >> 2) & 31
    # order: chunk, bank, position (j = the rank within the chunk)
    order = np.lexsort((pos, bank, chunk))
    chunk, pos = chunk[order], pos[order]
    word = (pos.astype(np.uint32) << np.uint32(16)) | value_bits(data, dtype)[order].astype(np.uint32)
    cnt = np.bincount(chunk, minlength=nchunk)
    n4 = (cnt + 3) & ~3  # padded to whole 16-byte loads
    start = np.zeros(nchunk + 1, dtype=np.int64)
    np.cumsum(n4, out=start[1:])
    first = np.zeros(nchunk + 1, dtype=np.int64)  # the real entries' rank base a chunk
    np.cumsum(cnt, out=first[1:])
    j = np.arange(len(chunk), dtype=np.int64) - first[chunk]
    # deal the bank-sorted entries over the chunk's rounds of 128: slots ordered (i, round), the last round shorter, so
    # that each round (and each of its four store instructions, j apart by 4 rounds) spans the banks
    R = np.maximum(1, -(-n4 // ROUND))
    last = n4 - ROUND * (R - 1)  # entries of the last round
    Rc, lc = R[chunk], last[chunk]
    full = j < lc * Rc
    i = np.where(full, j // Rc, lc + (j - lc * Rc) // np.maximum(Rc - 1, 1))
    r = np.where(full, j % Rc, (j - lc * Rc) % np.maximum(Rc - 1, 1))
    idx = start[chunk] + ROUND * r + i
    ent = np.full(int(start[-1]) + ENT_PAD, trash(kc), dtype=np.uint32)
    ent[idx] = word
    cptr = np.zeros((S, NCH + 1), dtype=np.int64)
    cptr[:, :NCH] = start[:-1].reshape(S, NCH)
    cptr[:, NCH] = start[1:].reshape(S, NCH)[:, -1]
    if len(ent) >= 2 ** 31 // 4:
        raise ValueError("tc_scatter keeps 32-bit byte offsets into the entries: too many nonzeros")
    info = {"M": m, "K": k, "S": S, "KT": KT, "NCH": NCH, "kc": kc, "nnz": int(len(data)),
            "entries": int(start[-1]), "bytes": 4 * int(start[-1]) + 4 * S * (NCH + 1)}
    return ent, cptr.astype(np.int32).reshape(-1), info


def decode(ent: np.ndarray, cptr: np.ndarray, info: dict) -> np.ndarray:
    """Dense M x K uint16 bit patterns of A rebuilt by the kernel's own rule (tests): for each chunk, every entry in
    [cptr[c], cptr[c + 1]) writes its low 16 bits at byte (entry >> 16) of a zeroed buffer of 512 kc + 4 bytes; lane
    l's 16 bytes of tile j are its fragment registers a_0 .. a_3. Checks that no two entries write one element."""
    m, k, S, NCH, kc = info["M"], info["K"], info["S"], info["NCH"], info["kc"]
    out = np.zeros((S * 16, NCH * kc * 16), dtype=np.uint16)
    cp = cptr.reshape(S, NCH + 1)
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    fp = frag_pos(r, c) // 2  # half index of each element in a tile
    for s in range(S):
        assert s == 0 or cp[s, 0] == cp[s - 1, NCH], "strips not contiguous"
        for ch in range(NCH):
            p0, p1 = int(cp[s, ch]), int(cp[s, ch + 1])
            assert p0 % 4 == 0 and p1 % 4 == 0 and p1 >= p0, "chunk not in whole 16-byte loads"
            buf = np.zeros((TILE_BYTES * kc + 4) // 2, dtype=np.uint16)
            hits = np.zeros_like(buf, dtype=np.int64)
            w = ent[p0:p1]
            at = (w >> 16).astype(np.int64)
            assert (at % 2 == 0).all() and (at <= TILE_BYTES * kc).all(), "a position outside the buffer"
            np.add.at(hits, at // 2, 1)
            buf[at // 2] = (w & 0xFFFF).astype(np.uint16)
            assert (hits[:-2] <= 1).all(), "two entries write one element"
            for j in range(kc):
                t = buf[j * 256:(j + 1) * 256]
                out[16 * s:16 * s + 16, 16 * (ch * kc + j):16 * (ch * kc + j) + 16] = t[fp]
    assert not out[m:].any() and not out[:, k:].any(), "an entry past M or K"
    return out[:m, :k]


def store_wavefronts(ent: np.ndarray, cptr: np.ndarray, info: dict) -> float:
    """Shared-memory wavefronts a 32-lane store instruction of the scatter costs on average over the layout (the most
    distinct 4-byte words one bank receives; 1 = no conflict): what the bank ordering buys (tests, NOTES)."""
    S, NCH = info["S"], info["NCH"]
    cp = cptr.reshape(S, NCH + 1)
    starts, ends = cp[:, :NCH].ravel().astype(np.int64), cp[:, 1:].ravel().astype(np.int64)
    tot = ninstr = 0
    for p0, p1 in zip(starts, ends):
        for b in range(p0, p1, ROUND):
            w = ent[b:min(b + ROUND, p1)]
            lanes = len(w) // 4
            for q in range(4):
                words = np.unique((w[q::4][:lanes] >> 18).astype(np.int64))
                tot += int(np.bincount(words & 31, minlength=32).max()) if len(words) else 0
                ninstr += 1
    return tot / ninstr if ninstr else 0.0


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * config["warps"]


def buf_bytes(config: dict) -> int:
    """A strip's scatter buffer: kc tiles of 512 bytes and 16 (the trash word, rounded to keep 16-byte alignment)."""
    return TILE_BYTES * config["kc"] + 16


def _dims(config: dict, m: int, k: int, n: int):
    """(S, NCH, row blocks, column tiles, chunks per split, groups of rpb row blocks) of a launch for N columns."""
    S, _, NCH = dims(m, k, config["kc"])
    row_blocks = -(-S // (config["mr"] * config["warps"]))
    ntiles = max(1, -(-n // (8 * config["nb"])))
    return S, NCH, row_blocks, ntiles, -(-NCH // config["splitk"]), -(-row_blocks // config.get("rpb", 1))


def cps(config: dict, k: int) -> int:
    """Chunks a split walks (the last splits may walk fewer, or none)."""
    return -(-dims(1, k, config["kc"])[2] // config["splitk"])


def shared_bytes(config: dict, k: int) -> int:
    """Dynamic shared memory of a block: 16 bytes (the split-K last-block flag); per warp mr scatter buffers; the
    block's slice of B (16 rows a k-step of the split, nb 16-byte units a row)."""
    return 16 + config["warps"] * config["mr"] * buf_bytes(config) + 16 * cps(config, k) * config["kc"] * 16 * config["nb"]


def smem_bytes(kernel) -> int:
    return shared_bytes(kernel.config, kernel.a.shape[1])


def geometry(kernel, n: int):
    m, k = kernel.a.shape
    _, _, _, ntiles, _, groups = _dims(kernel.config, m, k, n)
    return (groups * kernel.config["splitk"] * ntiles,), (threads(kernel.config),)


workspace_shape = warp_slices_shape  # (core.families: the slices of the shared split-K reduction)


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    m, k = kernel.a.shape
    S, NCH, row_blocks, ntiles, sps, _ = _dims(cfg, m, k, n)
    kc = cfg["kc"]
    ent, cptr = kernel.a.cached(("tc_scatter", dtype, kc), lambda host: build(host, dtype, kc)[:2])
    ws, counters = warp_slices_workspace(kernel, "tc_scatter", row_blocks, ntiles, n)
    return (ent, cptr, ws, counters, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(S), np.int32(NCH),
            np.int32(sps), np.int32(ntiles))


adapt = adapt_nb_bload_splitk  # (core.families: another N's scalar B, narrower nb, more split-K)
