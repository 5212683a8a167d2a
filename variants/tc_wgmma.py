"""tc_wgmma, host side: A as records of 16 x (16 kc) strips whose stored 32-bit pairs are decoded by each lane into its
wgmma A-fragment registers (variants/tc_wgmma.cu.j2: Hopper warpgroup MMA, m64nBNk16 with A from registers, B from
shared memory). For N = 64-128 (issue 16): the MMAs are the dense ones (a uniform pattern at d >= 0.05 has no empty
64 x 16 tile), so the win is A read compressed and the MMAs at wgmma rate (bench/drafts/wgmma_sparse.md).
Built once per matrix by pure numpy (`build`), cached on the device like the other layouts.

Fragment: each warp w of a warpgroup holds rows 16 w ... 16 w + 15 of the warpgroup's 64 in the layout of
mma.m16n8k16's A fragment (PTX ISA, wgmma register fragments, A of .m64nNk16): lane l = 4 g + t holds four 32-bit
registers a0 (row g, columns 2t, 2t + 1), a1 (row g + 8), a2 (row g, columns 2t + 8, 2t + 9), a3 (row g + 8, columns
2t + 8, 2t + 9); register j of lane l is a *pair* (two 16-bit values, the even column in the low half). A pair with any
nonzero is stored whole; an empty pair is not stored.

Geometry: S = ceil(M / 16) strips of 16 rows, chunks of KC = 16 kc columns (kc k-steps), NC = ceil(K / KC) chunks. A
record is one (strip, chunk); its NB = 4 kc "bits" are b = 4 kk + j (k-step kk of the chunk, register j).

Record (16-byte aligned, only where the strip has a nonzero in the chunk; else 0 bytes):
  [0, 4 NB)          NB u32 ballots: bit l of ballot b = lane l's pair b is stored
  [4 NB, 6 NB)       NB u16 bases: base b = the pairs of bits 0 ... b - 1 (sum of popc(ballot))
  [6 NB, 6 NB + 4 P) the P pairs (u32) bit-major: bit 0's lanes in ascending order, then bit 1's, ...; so lane l's pair
                     b is pair base_b + popc(ballot_b & lanemask_lt): one warp-load of bit b touches consecutive words
                     (no bank conflict)
  zeros to a multiple of 16.
Or, with dec = "lane" (tc_tiled3's order: cheaper decode, bank conflicts where a record holds more than 32 pairs):
  [0, 128)           32 u32 lane headers: bits 0-15 the lane's word (bit b = its pair b is stored), bits 16-31 its
                     start (the pairs of lanes 0 ... l - 1)
  [128, 128 + 4 P)   the pairs lane-major: lane 0's in bit order, then lane 1's, ... (a lane walks its own run:
                     per register a predicate from an immediate mask, a predicated load, a predicated pointer step)
  zeros to a multiple of 16.
ptr[s * (NC + 1) + c] is the byte offset of record (s, c); ptr[s * (NC + 1) + NC] the strip's end (an empty record:
ptr[c + 1] == ptr[c]; the kernel zero-fills its header, so its ballots read 0). Bytes: 6 NB a non-empty record
(0.094 B an element at kc 4, 16 rows x 64 columns) + 4 a stored pair: 1.16 B an element at d 0.3, 0.48 at d 0.1,
0.29 at d 0.05 (dense fp16: 2).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params, splitk_shape, splitk_workspace
from sparse_autotune.core.families import csr_parts as _csr_parts
from sparse_autotune.core.problem import half_bits as _value_bits

PAD = 16  # zero bytes after the stream


DECODES = ("ballot", "lane")


def nbits(kc: int) -> int:
    """Fragment registers a lane holds of a chunk: 4 a k-step."""
    return 4 * int(kc)


def header_bytes(kc: int, dec: str = "ballot") -> int:
    """ballot: ballots (4 bytes a bit) and bases (2 bytes a bit): 48 at kc 2, 96 at kc 4; lane: 32 u32 lane headers, 128
    (multiples of 16)."""
    return 6 * nbits(kc) if dec == "ballot" else 128


def slot_bytes(kc: int, dec: str = "ballot") -> int:
    """The largest record (every pair stored): a warp's shared-memory slot a pipeline stage."""
    return header_bytes(kc, dec) + 4 * 32 * nbits(kc)


def fragment_slot(r16, c16):
    """(lane, register j, half) of element (r16, c16) of a 16 x 16 tile in the A fragment (mma.m16n8k16 = each warp's
    16-row slice of wgmma .m64nNk16)."""
    lane = 4 * (r16 & 7) + ((c16 & 7) >> 1)
    j = (r16 >> 3) + 2 * (c16 >> 3)
    return lane, j, c16 & 1


def dims(m: int, k: int, kc: int) -> tuple[int, int]:
    """(S strips, NC chunks)."""
    return max(1, -(-m // 16)), max(1, -(-k // (16 * int(kc))))


def build(a: sp.csr_matrix, kc: int, dtype: str = "fp16", dec: str = "ballot"):
    """(ptr int32 [S * (NC + 1)], stream uint8, info dict) of A with chunks of 16 * kc columns in the record format of
    `dec` (module docstring)."""
    kc = int(kc)
    if kc not in (1, 2, 4):
        raise ValueError(f"kc = {kc}: 1, 2 or 4 k-steps a chunk")
    if dec not in DECODES:
        raise ValueError(f"dec = {dec!r}: one of {DECODES}")
    NB, HDR = nbits(kc), header_bytes(kc, dec)
    m, k, rows, cols, data = _csr_parts(a)
    S, NC = dims(m, k, kc)
    KC = 16 * kc
    nrec = S * NC
    rec = (rows >> 4) * NC + cols // KC
    lane, j, half = fragment_slot(rows & 15, cols & 15)
    bit = 4 * ((cols % KC) >> 4) + j
    if dec == "ballot":
        key = (rec * NB + bit) * 32 + lane  # stream order: record, bit, lane
    else:
        key = (rec * 32 + lane) * NB + bit  # record, lane, bit
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
    pairs[inv[lo]] = bits[lo]  # each half of a pair at most once (CSR without duplicates)
    pairs[inv[~lo]] |= bits[~lo] << np.uint32(16)
    prec = ukey // (NB * 32)
    npairs = np.bincount(prec, minlength=nrec)
    if dec == "ballot":
        rb = ukey // 32  # rec * NB + bit
        ballots = np.bincount(rb, weights=np.ldexp(1.0, (ukey & 31).astype(np.int64)),
                              minlength=nrec * NB).astype(np.uint64).astype(np.uint32).reshape(nrec, NB)
        cnt = np.bincount(rb, minlength=nrec * NB).reshape(nrec, NB)
    else:
        rl = ukey // NB  # rec * 32 + lane
        ballots = np.bincount(rl, weights=np.ldexp(1.0, (ukey % NB).astype(np.int64)),
                              minlength=nrec * 32).astype(np.uint64).astype(np.uint32).reshape(nrec, 32)  # words
        cnt = np.bincount(rl, minlength=nrec * 32).reshape(nrec, 32)
    bases = np.cumsum(cnt, axis=1) - cnt  # ballot: pairs of the bits before; lane: of the lanes before
    size = np.where(npairs > 0, (HDR + 4 * npairs + 15) & ~15, 0)
    rec_off = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(size, out=rec_off[1:])
    total = int(rec_off[-1])
    if total >= 2 ** 31:
        raise ValueError("tc_wgmma stream over 2 GB")
    stream = np.zeros(total + PAD, dtype=np.uint8)
    full = np.nonzero(npairs)[0]
    s32, s16 = stream.view(np.uint32), stream.view(np.uint16)
    if dec == "ballot":
        bidx = np.arange(NB)[None, :]
        s32[((rec_off[full][:, None] + 4 * bidx) // 4).ravel()] = ballots[full].ravel()
        s16[((rec_off[full][:, None] + 4 * NB + 2 * bidx) // 2).ravel()] = bases[full].ravel().astype(np.uint16)
    else:
        lidx = np.arange(32)[None, :]
        s32[((rec_off[full][:, None] + 4 * lidx) // 4).ravel()] = \
            (ballots[full] | (bases[full].astype(np.uint32) << np.uint32(16))).ravel()
    first = np.cumsum(npairs) - npairs
    idx = np.arange(len(ukey), dtype=np.int64) - first[prec]
    s32[(rec_off[prec] + HDR + 4 * idx) // 4] = pairs
    ptr = rec_off[np.arange(S)[:, None] * NC + np.arange(NC + 1)[None, :]].astype(np.int32)
    info = {"kc": kc, "dec": dec, "M": m, "K": k, "S": S, "NC": NC, "stream_bytes": total, "bytes": total + ptr.nbytes,
            "nnz": int(len(data)), "pairs": int(len(ukey)), "max_record": int(size.max()) if nrec else 0}
    return ptr.reshape(-1), stream, info


def decode(ptr: np.ndarray, stream: np.ndarray, info: dict) -> np.ndarray:
    """Dense M x K uint16 bit patterns of A rebuilt by the kernel's own lane rule: per record (empty where
    ptr[c + 1] == ptr[c]: header zero), each lane l, each bit b. ballot: stored iff ballot_b >> l & 1, then the pair at
    HDR + 4 (base_b + popc(ballot_b & ((1 << l) - 1))); lane: stored iff bit b of the lane's word, the pairs walked from
    HDR + 4 start in bit order. Placed by the fragment layout. For tests."""
    kc, dec, m, k, S, NC = (info[x] for x in ("kc", "dec", "M", "K", "S", "NC"))
    NB, HDR, KC = nbits(kc), header_bytes(kc, dec), 16 * kc
    out = np.zeros((S * 16, NC * KC), dtype=np.uint16)
    s32, s16 = stream.view(np.uint32), stream.view(np.uint16)
    p = ptr.reshape(S, NC + 1)
    for s in range(S):
        for c in range(NC):
            lo, hi = int(p[s, c]), int(p[s, c + 1])
            assert lo % 16 == 0 and hi % 16 == 0 and hi >= lo
            assert hi - lo <= slot_bytes(kc, dec), "record larger than a slot"
            if hi == lo:
                continue
            seen = 0
            vp = {}
            for b in range(NB):
                kk, jj = divmod(b, 4)
                for lane in range(32):
                    if dec == "ballot":
                        bal = int(s32[lo // 4 + b])
                        if not bal >> lane & 1:
                            continue
                        at = (lo + HDR) // 4 + int(s16[lo // 2 + 2 * NB + b]) + bin(bal & ((1 << lane) - 1)).count("1")
                    else:
                        hdr = int(s32[lo // 4 + lane])
                        if not hdr >> b & 1:
                            continue
                        at = vp.get(lane, (lo + HDR) // 4 + (hdr >> 16))
                        vp[lane] = at + 1
                    v = int(s32[at])
                    seen += 1
                    g, t = lane >> 2, lane & 3
                    row = 16 * s + g + 8 * (jj & 1)
                    col = KC * c + 16 * kk + 2 * t + 8 * (jj >> 1)
                    out[row, col] = v & 0xFFFF
                    out[row, col + 1] = v >> 16
            assert (hi - lo) == (HDR + 4 * seen + 15) & ~15, "record size disagrees with its ballots"
    return out[:m, :k]


GROUP = 4  # tma 2: a group is a warpgroup's 4 strips (blkrec 1: the block's 4 wg strips)
GHDR = 16  # its 4 u32 words a chunk (blkrec 1: 4 wg words, 16 wg bytes)


def group_strips(config: dict) -> int:
    """Strips a group (one bulk copy a chunk): a warpgroup's 4 at blkrec 0 (tma 2 as landed in session 17), the block's
    4 wg at blkrec 1."""
    return 4 * config["wg"] if config.get("blkrec", 0) else GROUP


def group_slot_bytes(kc: int, dec: str = "ballot") -> int:
    """tma 2: a warpgroup's shared-memory slot a stage: the group header and the 4 largest records (blkrec 1: a block's
    slot is wg of these, its header 16 wg bytes and 4 wg records: the same bytes)."""
    return GHDR + GROUP * slot_bytes(kc, dec)


def build_grouped(a: sp.csr_matrix, kc: int, dtype: str = "fp16", dec: str = "ballot", group: int = GROUP):
    """(gptr int32 [G * (NC + 1)], gstream uint8, info) for tma 2: the records of `build`, regrouped so that the
    `group` strips group g ... of one chunk are contiguous (the producer copies them by one bulk copy): group-chunk
    (g, c) at gptr[g * (NC + 1) + c] is a header of `group` u32 words (4 group bytes, a multiple of 16: warp w's record:
    its byte offset from the header | its bytes << 16; 0 for an empty record or a strip past S), then the non-empty
    records in strip order. Every group-chunk has its header; gptr[g * (NC + 1) + NC] is the group's end. group 4: a
    warpgroup's strips (tma 2); 4 wg: a block's (blkrec 1)."""
    group = int(group)
    if group % 4 or not 4 <= group <= 16:
        raise ValueError(f"group = {group}: 4, 8, 12 or 16 strips (a header of whole 16-byte units)")
    ghdr = 4 * group
    ptr, stream, info = build(a, kc, dtype, dec)
    S, NC = info["S"], info["NC"]
    G = -(-S // group)
    p = ptr.reshape(S, NC + 1).astype(np.int64)
    size = np.zeros((G * group, NC), dtype=np.int64)
    size[:S] = p[:, 1:] - p[:, :-1]
    src = np.zeros((G * group, NC), dtype=np.int64)
    src[:S] = p[:, :-1]
    size4 = size.reshape(G, group, NC).transpose(0, 2, 1)  # [g, c, w]
    src4 = src.reshape(G, group, NC).transpose(0, 2, 1)
    off = ghdr + np.cumsum(size4, axis=2) - size4  # from the group-chunk's start
    if off.size and int(off.max()) >= 1 << 16:
        raise ValueError("tc_wgmma grouped stream: a record offset over 16 bits")
    total = ghdr + size4.sum(axis=2)  # [g, c]
    start = np.zeros(G * NC + 1, dtype=np.int64)
    np.cumsum(total.ravel(), out=start[1:])
    if start[-1] + PAD >= 2 ** 31:
        raise ValueError("tc_wgmma grouped stream over 2 GB")
    gstream = np.zeros(int(start[-1]) + PAD, dtype=np.uint8)
    words = np.where(size4 > 0, off | (size4 << 16), 0).astype(np.uint32)  # [g, c, w]
    g32 = gstream.view(np.uint32)
    hdr_at = start[:-1].reshape(G, NC)
    g32[((hdr_at[:, :, None] + 4 * np.arange(group)[None, None, :]) // 4).ravel()] = words.ravel()
    dst = (hdr_at[:, :, None] + off).ravel()
    n = size4.ravel()
    keep = n > 0
    dst, sr, n = dst[keep], src4.ravel()[keep], n[keep]
    first = np.cumsum(n) - n
    k = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(first, n)
    gstream[np.repeat(dst, n) + k] = stream[np.repeat(sr, n) + k]
    gptr = np.empty((G, NC + 1), dtype=np.int64)
    gptr[:, :NC] = hdr_at
    gptr[:, NC] = start[1:].reshape(G, NC)[:, -1]
    ginfo = {**info, "G": G, "group": group, "stream_bytes": int(start[-1]), "bytes": int(start[-1]) + 4 * gptr.size,
             "max_group": int(total.max()) if total.size else 0}
    return gptr.astype(np.int32).reshape(-1), gstream, ginfo


def ungroup(gptr: np.ndarray, gstream: np.ndarray, info: dict) -> dict:
    """{(strip, chunk): the record's bytes} of a grouped stream, read by the kernel's rule (warp w of group g: word w
    of the header; offset = its low 16 bits, bytes = its high 16; 0 bytes: empty). For tests."""
    S, NC, G = info["S"], info["NC"], info["G"]
    group = info.get("group", GROUP)
    g32 = gstream.view(np.uint32)
    gp = gptr.reshape(G, NC + 1)
    out = {}
    for g in range(G):
        for c in range(NC):
            at, end = int(gp[g, c]), int(gp[g, c + 1])
            assert at % 16 == 0 and end - at >= 4 * group
            for w in range(group):
                word = int(g32[at // 4 + w])
                o, n = word & 0xFFFF, word >> 16
                assert at + o + n <= end and (n == 0 or o % 16 == 0)
                if n and group * g + w < S:
                    out[(group * g + w, c)] = bytes(gstream[at + o:at + o + n])
                assert not (n and group * g + w >= S), "a record past the last strip"
    return out


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    """A block's threads: wg warpgroups (+ the producer warp at ws 1; tma 1 has the same)."""
    return 128 * config["wg"] + 32 * config.get("ws", 0)


def _dims(config: dict, m: int, k: int, n: int):
    """(S, NC, row blocks, column tiles, chunks per split) of a launch for N columns."""
    S, NC = dims(m, k, config["kc"])
    row_blocks = -(-S // block_strips(config))
    ntiles = max(1, -(-n // config["bn"]))
    return S, NC, row_blocks, ntiles, -(-NC // config["splitk"])


def block_groups(config: dict) -> int:
    """Groups of 4 strips (64 rows) a block: one a warpgroup, or one at wgk 1 (the wg warpgroups split its chunks)."""
    return 1 if config.get("wgk", 0) else config["wg"]


def block_strips(config: dict) -> int:
    """Strips (16 rows) a block."""
    return 4 * block_groups(config)


def b_stage_bytes(config: dict) -> int:
    """A stage of B: 16 kc rows x bn columns, 128-byte-swizzled blocks of 64 columns (a multiple of 1024 bytes)."""
    return 16 * config["kc"] * config["bn"] * 2


def shared_bytes(config: dict) -> int:
    """Dynamic shared memory: 1024 bytes of alignment slack (the swizzled B stages start 1024-aligned), the stages'
    B tiles, their A slots (one a warp), 16 bytes of the split-K last-block flag; at ws 1 the two mbarriers (full,
    empty) of each stage, 8 bytes each; at tma 1 256 bytes for the tensor map's 128-aligned shared-memory copy; at
    tma 2 also 128 bytes of zeros (an empty record's header) and a 16-byte group header a warpgroup and stage."""
    st, tma = config["stages"], config.get("tma", 0)
    groups = block_groups(config)  # a stage holds each group's records
    return (1024 + st * b_stage_bytes(config) + st * 4 * groups * slot_bytes(config["kc"], config["dec"]) + 16
            + 16 * st * config.get("ws", 0) + (0 if tma == 0 else 256 if tma == 1 else 384 + GHDR * st * groups))


def smem_bytes(kernel) -> int:
    return shared_bytes(kernel.config)


def geometry(kernel, n: int):
    m, k = kernel.a.shape
    _, _, row_blocks, ntiles, _ = _dims(kernel.config, m, k, n)
    return (row_blocks * kernel.config["splitk"] * ntiles,), (threads(kernel.config),)


def workspace_shape(config: dict, row_blocks: int, ntiles: int) -> tuple[int, int]:
    """Split-K's workspace (core.families.splitk_shape): a slice per (row block, column tile, split) of the block's
    consumer threads (128 wg) x bn / 2 fp32 accumulators, one counter per (row block, column tile); red 1 reduces
    through the cluster's shared memory and takes none (the placeholder of splitk 1)."""
    splits = 1 if config.get("red", 0) else config["splitk"]
    return splitk_shape(splits, row_blocks * ntiles, 128 * config["wg"] * config["bn"] // 2)


# ---- tma = 1 (fourth step): B by TMA through a tensor map -----------------------------------------------------
# cuda.h's enum values (CUtensorMapDataType, ...Interleave, ...Swizzle, ...L2promotion, ...FloatOOBfill)
TMAP_UINT16, TMAP_INTERLEAVE_NONE, TMAP_SWIZZLE_128B, TMAP_L2_256B, TMAP_OOB_ZERO = 1, 0, 3, 3, 0
TMAP_UINT32 = 2  # tc_sp24's tf32 x: fp32 bits copied as they are
TMAP_SWIZZLE_64B = 2
TMAP_PLACEHOLDER = 1 << 16  # the template's global address (16-byte aligned); each block writes B's in on the device


def tiled_map(inner: int, outer: int, box: tuple, swizzle: int = TMAP_SWIZZLE_128B,
              address: int = TMAP_PLACEHOLDER, elem: int = 2) -> dict:
    """cuTensorMapEncodeTiled's arguments for a row-major 2D array of 16-bit words (elem 4: 32-bit; outer rows of inner
    elements), boxes of `box` (inner, outer) elements with `swizzle`, 256-byte L2 promotion, out-of-bounds reads as
    zeros (the Hopper families' maps: tc_wgmma's and tc_sp24's B, tc_sp24's x in nk, 32-bit in tf32)."""
    return {"dtype": {2: TMAP_UINT16, 4: TMAP_UINT32}[elem], "rank": 2, "address": int(address),
            "dims": (int(inner), int(outer)), "strides": (elem * int(inner),), "box": tuple(int(b) for b in box),
            "elem_strides": (1, 1), "interleave": TMAP_INTERLEAVE_NONE, "swizzle": swizzle, "l2": TMAP_L2_256B,
            "oob": TMAP_OOB_ZERO}


def tensor_map_args(n: int, k: int, config: dict) -> dict:
    """cuTensorMapEncodeTiled's arguments for B (K x N, row-major, 16-bit: the bits of fp16 / bf16, so uint16; rows
    >= K and columns >= N read zeros): 2D, dims {N, K} (innermost first), the row stride 2N bytes, a box of 64 columns
    (128 bytes: the 128-byte swizzle's widest row) x 16 kc rows (one chunk), the 128-byte swizzle (16-byte unit u of
    box row r at u ^ (r & 7): the wgmma layout the descriptor names, LBO = 16 kc x 128, SBO = 1024)."""
    n, k = int(n), int(k)
    if n <= 0 or n % 8 or k <= 0:
        raise ValueError(f"tc_wgmma tma: B's tensor map needs N % 8 == 0 and K > 0 (N = {n}, K = {k})")
    return tiled_map(n, k, (64, 16 * int(config["kc"])))


def encode_tensor_map(t: dict) -> np.ndarray:
    """The 128-byte CUtensorMap of tensor_map_args `t` (uint32 [32]) by the driver's cuTensorMapEncodeTiled (CuPy 14
    binds none); zeros where there is no driver (a machine that cannot launch the kernel either)."""
    from sparse_autotune.device.gpu import libcuda  # noqa: PLC0415
    lib = libcuda()
    if lib is None:
        return np.zeros(32, dtype=np.uint32)
    import ctypes as ct  # noqa: PLC0415
    buf = np.zeros(64 + 128, dtype=np.uint8)  # CUtensorMap is 64-byte aligned
    at = (-buf.ctypes.data) % 64
    u64, u32 = ct.c_uint64, ct.c_uint32
    f = lib.cuTensorMapEncodeTiled
    f.restype = ct.c_int
    f.argtypes = [ct.c_void_p, ct.c_int, u32, ct.c_void_p, ct.POINTER(u64), ct.POINTER(u64), ct.POINTER(u32),
                  ct.POINTER(u32), ct.c_int, ct.c_int, ct.c_int, ct.c_int]
    rank = t["rank"]
    rc = f(buf.ctypes.data + at, t["dtype"], rank, t["address"], (u64 * rank)(*t["dims"]),
           (u64 * (rank - 1))(*t["strides"]), (u32 * rank)(*t["box"]), (u32 * rank)(*t["elem_strides"]),
           t["interleave"], t["swizzle"], t["l2"], t["oob"])
    if rc != 0:
        raise RuntimeError(f"tc_wgmma tma: cuTensorMapEncodeTiled failed (CUresult {rc}) for {t}")
    return buf[at:at + 128].view(np.uint32).copy()


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    m, k = kernel.a.shape
    S, NC, row_blocks, ntiles, cps = _dims(cfg, m, k, n)
    kc, dec = cfg["kc"], cfg["dec"]
    if cfg.get("tma", 0) == 2 and cfg.get("blkrec", 0):  # a block's 4 wg records a chunk by one copy
        grp = group_strips(cfg)
        ptr, stream = kernel.a.cached(("tc_wgmma_grp", kc, dec, dtype, grp),
                                      lambda host: build_grouped(host, kc, dtype, dec, grp)[:2])
    elif cfg.get("tma", 0) == 2:  # the records regrouped a warpgroup's 4 a chunk (build_grouped)
        ptr, stream = kernel.a.cached(("tc_wgmma_grp", kc, dec, dtype),
                                      lambda host: build_grouped(host, kc, dtype, dec)[:2])
    else:
        ptr, stream = kernel.a.cached(("tc_wgmma", kc, dec, dtype), lambda host: build(host, kc, dtype, dec)[:2])
    ws, counters = splitk_workspace(kernel, "tc_wgmma", workspace_shape(cfg, row_blocks, ntiles), n)
    out = (ptr, stream, ws, counters, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(S), np.int32(NC),
           np.int32(cps), np.int32(ntiles))
    if not cfg.get("tma", 0):
        return out
    ok = n > 0 and n % 8 == 0  # other N never launch (infeasible); a_bytes() asks for N = 1
    if cfg.get("pmap", 0):
        # pmap: B's tensor map by value, encoded with the launch's B (again only when B's address changes)
        from sparse_autotune.device.kernel import BParam  # noqa: PLC0415
        if not ok:
            return (*out, BParam(128, lambda b_ptr: bytes(128)))
        t = tensor_map_args(n, k, cfg)
        return (*out, BParam(128, lambda b_ptr: encode_tensor_map({**t, "address": int(b_ptr)}).tobytes()))
    # tma: B's tensor-map template (encoded here, once per N: the launcher is built lazily at the first launch for N)
    # and a 128-byte slot a block, where each block puts its copy with the launch's B address
    blocks = row_blocks * cfg["splitk"] * ntiles
    tmpl, slots = kernel.a.cached(
        ("tc_wgmma_tmap", n, cfg["bn"], kc, blocks),
        lambda host: (encode_tensor_map(tensor_map_args(n, k, cfg)) if ok else np.zeros(32, dtype=np.uint32),
                      np.zeros(128 * blocks, dtype=np.uint8)))
    return (*out, tmpl, slots)


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another N: a narrower column tile (bn 128 -> 64), then less split-K; else as stored (None where N % 8)."""
    return adapt_params(space, config, dtype, env, limits, ("bn", "splitk"))
