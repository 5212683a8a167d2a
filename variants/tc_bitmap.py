"""tc_bitmap, host side: A as 16 x 16 tiles whose nonzeros are a bitmap (one bit an element) + the packed 16-bit values,
decoded by each lane straight into its mma.m16n8k16 A-fragment registers (variants/tc_bitmap.cu.j2). For N <= 32 at
density 0.2 - 0.7 (LLM decode, issue 16): 1/8 byte an element of masks + 2 bytes a nonzero (+ 3/128 of bases and
pointers), i.e. 1.17 B an element at d 0.5 against dense fp16's 2 (bench/drafts/tc_bitmap.md).

Why this bit order: lane l = 4 g + t of mma.m16n8k16 holds, of half h of a 16 x 16 tile (rows 8h .. 8h + 7), the four
elements row 8h + g, columns 2t, 2t + 1 (register a_h) and 2t + 8, 2t + 9 (register a_{h+2}): element e = 0..3 in that
order. The mask of half h is 128 bits, lane l's four at bits 4 l .. 4 l + 3, i.e. bits 4 (l % 8) + e of the half's
32-bit word l // 8. So a lane's four values of a half are consecutive in the half's packed run, at base + popc(word &
((1 << 4 (l % 8)) - 1)) (base: the tile's values before that word), and it walks them with a predicated load a set bit:
one popc for four elements. One warp-load touches the half's run (at most 128 halves; 64 at d 0.5).

The layout (`build`, pure numpy, one per matrix and dtype whatever the config; cached on the device like the other
layouts). S = ceil(M / 16) strips of 16 rows, KT = ceil(K / 16) k-steps, KTP = KT rounded up to a multiple of 4 (the
tiles past KT are empty):
  meta  uint32 [S * KTP * 10]   40 bytes a tile (strip-major, then k-step): word 2i + h = word i of half h's mask (so a
                                lane's two words, one a half, are one 8-byte load); words 8-9 the bytes b(h, i) at byte
                                2i + h: the tile's values before word i of half h, the values ordered half, word, bit
                                (all <= 224)
  vals  uint16 [nnz + 16]       the nonzeros' 16-bit patterns: strip-major, k-step, half, word, bit; then zeros (the
                                kernel copies whole 16-byte units)
  vptr  int32  [S * (KTP + 1)]  vptr[s * (KTP + 1) + k]: byte offset in vals of tile (s, k)'s values; entry KTP the
                                strip's end (= the next strip's start)
Bytes: 40 a tile (0.156 an element) + 2 a nonzero + 4 a tile of pointers: 1.172 B an element at d 0.5, 0.772 at 0.3,
0.572 at 0.2 (dense fp16: 2)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_nb_bload_splitk, warp_slices_shape, warp_slices_workspace
from sparse_autotune.core.families import csr_parts as _csr_parts
from sparse_autotune.core.problem import half_bits as value_bits

META_WORDS = 10  # 32-bit words of a tile's meta
META_BYTES = 4 * META_WORDS
KALIGN = 4  # k-steps a strip is padded to (stage sizes divide it)
VAL_PAD = 16  # zero halves after the values (the last 16-byte unit a copy rounds up to)


def tile_slot(r16, c16):
    """(half h, word i, bit) of element (r16, c16) of a 16 x 16 tile: lane l = 4 (r16 % 8) + (c16 % 8) // 2 of
    mma.m16n8k16 holds it as its element e = c16 % 2 + 2 (c16 // 8) of half h = r16 // 8 (register a_h for e < 2,
    a_{h+2} else), at bit 4 (l % 8) + e of word l // 8 of the half's mask."""
    r16, c16 = np.asarray(r16), np.asarray(c16)
    lane = 4 * (r16 & 7) + ((c16 & 7) >> 1)
    e = (c16 & 1) + 2 * (c16 >> 3)
    return r16 >> 3, lane >> 3, 4 * (lane & 7) + e


def dims(m: int, k: int) -> tuple[int, int, int]:
    """(S strips, KT k-steps, KTP padded k-steps)."""
    S = max(1, -(-m // 16))
    KT = max(1, -(-k // 16))
    return S, KT, -(-KT // KALIGN) * KALIGN


def build(a: sp.csr_matrix, dtype: str = "fp16"):
    """(meta uint32, vals uint16, vptr int32, info dict) of A (see the module's docstring)."""
    m, k, rows, cols, data = _csr_parts(a)
    S, KT, KTP = dims(m, k)
    ntile = S * KTP
    tile = (rows >> 4) * KTP + (cols >> 4)
    h, i, bit = tile_slot(rows & 15, cols & 15)
    # stream order: tile, half, word, bit (CSR order is row-major; one stable sort by the key)
    word = (tile * 2 + h) * 4 + i
    key = word * 32 + bit
    order = np.argsort(key, kind="stable")
    ks = key[order]
    vals = np.zeros(len(data) + VAL_PAD, dtype=np.uint16)
    vals[:len(data)] = value_bits(data, dtype)[order]
    # masks of each (tile, half, word); bits of one word never collide (summed exactly in float64)
    masks = np.bincount(ks >> 5, weights=np.ldexp(1.0, (ks & 31).astype(np.int64)),
                        minlength=ntile * 8).astype(np.uint64).astype(np.uint32).reshape(ntile, 2, 4)
    cnt = np.bincount(ks >> 5, minlength=ntile * 8).reshape(ntile, 8)  # value order (h, i)
    base = (np.cumsum(cnt, axis=1) - cnt).reshape(ntile, 2, 4)
    meta = np.zeros((ntile, META_WORDS), dtype=np.uint32)
    meta[:, 0:8] = masks.transpose(0, 2, 1).reshape(ntile, 8)  # word 2i + h
    bb = base.transpose(0, 2, 1).reshape(ntile, 8).astype(np.uint8)  # byte 2i + h
    meta[:, 8:10] = bb.view(np.uint32)
    tcnt = cnt.sum(axis=1).reshape(S, KTP)
    vptr = np.zeros((S, KTP + 1), dtype=np.int64)
    vptr[:, 1:] = np.cumsum(tcnt, axis=1)
    vptr += (np.cumsum(tcnt.sum(axis=1)) - tcnt.sum(axis=1))[:, None]
    if 2 * (len(data) + VAL_PAD) >= 2 ** 31:
        raise ValueError("tc_bitmap keeps 32-bit byte offsets into the values: too many nonzeros")
    info = {"M": m, "K": k, "S": S, "KT": KT, "KTP": KTP, "nnz": int(len(data)),
            "bytes": meta.nbytes + 2 * len(data) + 4 * S * (KTP + 1)}
    return meta.reshape(-1), vals, (2 * vptr).astype(np.int32).reshape(-1), info


def format_bytes(m: int, k: int, nnz: int) -> int:
    """Bytes of A in this layout (what a kernel reads of A, the padding of the last copy left out)."""
    S, _, KTP = dims(m, k)
    return S * KTP * META_BYTES + 2 * nnz + 4 * S * (KTP + 1)


def decode(meta: np.ndarray, vals: np.ndarray, vptr: np.ndarray, info: dict) -> np.ndarray:
    """Dense M x K uint16 bit patterns of A rebuilt by the kernel's own lane rule (tests): for each tile, lane
    l = 4 g + t and half h: word w = meta word 2 (l // 8) + h, base = byte 2 (l // 8) + h of words 8-9,
    p = vptr / 2 + base + popc(w & (2^(4 (l % 8)) - 1)); for e = 0..3, where bit 4 (l % 8) + e of w is set, element e is
    vals[p] (then p + 1), else 0; elements 0, 1 are row 8h + g, columns 2t, 2t + 1, elements 2, 3 columns 2t + 8, 2t + 9."""
    m, k, S, KTP = info["M"], info["K"], info["S"], info["KTP"]
    out = np.zeros((S * 16, KTP * 16), dtype=np.uint16)
    mt = meta.reshape(S * KTP, META_WORDS)
    vp = vptr.reshape(S, KTP + 1)
    lanes = np.arange(32)
    i, sh = lanes >> 3, (4 * (lanes & 7)).astype(np.uint64)
    ltm = (np.uint64(1) << sh) - np.uint64(1)
    g, t = lanes >> 2, lanes & 3
    col_e = [2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9]
    for s in range(S):
        assert s == 0 or vp[s, 0] == vp[s - 1, KTP], "strips not contiguous"
        for kk in range(KTP):
            words = mt[s * KTP + kk].astype(np.uint64)
            bases = mt[s * KTP + kk, 8:10].view(np.uint8).astype(np.int64)
            start = int(vp[s, kk]) // 2
            seen = 0
            for h in range(2):
                w = words[2 * i + h]
                p = start + bases[2 * i + h] + np.array([bin(int(x)).count("1") for x in (w & ltm)])
                for e in range(4):
                    on = ((w >> (sh + np.uint64(e))) & np.uint64(1)).astype(bool)
                    out[16 * s + 8 * h + g, 16 * kk + col_e[e]] = np.where(on, vals[np.minimum(p, len(vals) - 1)], 0)
                    p = p + on
                    seen += int(on.sum())
            assert start + seen == int(vp[s, kk + 1]) // 2, "pointer table disagrees with the masks"
    assert not out[m:].any() and not out[:, k:].any(), "a bit past M or K"
    return out[:m, :k]


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * config["warps"]


def slot_strip_bytes(config: dict) -> int:
    """Bytes of one strip's share of a ring slot: the stage's meta (40 a tile) and its values (at most 512 a tile; dec
    'fit': vcap a tile, a stage with more decodes from global memory), rounded out to the 16-byte units the copy moves."""
    vcap = config.get("vcap", 320) if config.get("dec") == "fit" else 512
    return META_BYTES * config["ks"] + vcap * config["ks"] + 16


def stages_over(config: dict, vptr: np.ndarray, info: dict) -> tuple[int, int]:
    """dec 'fit': (stages whose values outgrow a ring slot, stages) over every strip of the layout: the kernel decodes
    those from global memory (correct, slow). A stage is ks k-steps of one strip; its copy covers the 16-byte units from
    its first value's unit to its last value's."""
    ks = config["ks"]
    S, KTP = info["S"], info["KTP"]
    vp = vptr.reshape(S, KTP + 1).astype(np.int64)
    a0 = vp[:, 0:KTP:ks] & ~15
    n16 = (vp[:, ks::ks] - a0 + 15) >> 4
    capu = (slot_strip_bytes(config) - META_BYTES * ks) // 16
    return int((n16 > capu).sum()), int(n16.size)


def _dims(config: dict, m: int, k: int, n: int):
    """(S, KTP, row blocks, column tiles, stages per split) of a launch for N columns."""
    S, _, KTP = dims(m, k)
    row_blocks = -(-S // (config["mr"] * config["warps"]))
    ntiles = max(1, -(-n // (8 * config["nb"])))
    nst = KTP // config["ks"]
    return S, KTP, row_blocks, ntiles, -(-nst // config["splitk"])


def vptr_ints(config: dict, k: int) -> int:
    """Pointer entries a strip keeps in shared memory: its split's k-steps + 1, rounded up to 4."""
    _, _, KTP = dims(1, k)
    sps = -(-(KTP // config["ks"]) // config["splitk"])
    return -(-(sps * config["ks"] + 1) // 4) * 4


def shared_bytes(config: dict, k: int) -> int:
    """Dynamic shared memory of a block: 16 bytes (the split-K last-block flag); per warp its pointer entries and its
    ring (stages slots of mr strips); the block's slice of B (16 rows a k-step of the split, nb 16-byte units a row)."""
    _, _, KTP = dims(1, k)
    sps = -(-(KTP // config["ks"]) // config["splitk"])
    warp = config["mr"] * (4 * vptr_ints(config, k) + config["stages"] * slot_strip_bytes(config))
    return 16 + config["warps"] * warp + 16 * sps * config["ks"] * 16 * config["nb"]


def smem_bytes(kernel) -> int:
    return shared_bytes(kernel.config, kernel.a.shape[1])


def geometry(kernel, n: int):
    m, k = kernel.a.shape
    _, _, row_blocks, ntiles, _ = _dims(kernel.config, m, k, n)
    return (row_blocks * kernel.config["splitk"] * ntiles,), (threads(kernel.config),)


workspace_shape = warp_slices_shape  # (core.families: the slices of the shared split-K reduction)


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    m, k = kernel.a.shape
    S, KTP, row_blocks, ntiles, sps = _dims(cfg, m, k, n)
    meta, vals, vptr = kernel.a.cached(("tc_bitmap", dtype), lambda host: build(host, dtype)[:3])
    ws, counters = warp_slices_workspace(kernel, "tc_bitmap", row_blocks, ntiles, n)
    return (meta, vals, vptr, ws, counters, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(S), np.int32(KTP),
            np.int32(sps), np.int32(ntiles))


adapt = adapt_nb_bload_splitk  # (core.families: another N's scalar B, narrower nb, more split-K)
