"""tc_gather3, host side (issues 16 and 18): C^T = B^T A^T on mma.m16n8k16 as tc_gather / tc_gather2, but a thread
block owns a BIG row block (rb = 32-128 rows) and stages DENSE K-slices of B (ks rows x tile_n columns) in shared
memory once per block, so B crosses L2 (M / rb) x K x N x 2 bytes (tc_gather2: (M / R) x |U_R| x N x 2 with R = 8-32).
Inside the block each unit of 8 * rn rows computes over its own union of columns, gathering its rows of B out of the
staged slice (ldmatrix.x4.trans, per-lane row addresses).

Geometry. Rows in the order of row_order (core.reorder, groups of 8 * rn rows: the units). A tile is rb consecutive
rows = rb / (8 rn) units; warp row wmi of the tile owns units upw * wmi .. upw * wmi + upw - 1 (upw units a warp, so
wm = rb / (8 rn upw) warp rows; wn warps split tile_n). K is cut into slices of ks columns (slice j: columns
ks * j .. ks * j + ks - 1); a tile lists only its non-empty slices (those where one of its rows has a nonzero):

    tile_sptr[s] .. tile_sptr[s + 1] - 1      the tile's slices (global slice numbers)
    slice_k[gs]                              the K-slice index j of global slice gs (B rows ks * j ...)

Pair (tile s, warp row w, local slice j, unit v of the warp) is number (tile_sptr[s] * wm + w * ns_s + j) * upw + v
(ns_s: the tile's slices), so a warp's pairs, hence its k-steps, are consecutive over the whole tile: it walks steps
step_ptr[p0] .. step_ptr[p0 + ns_s * upw] - 1 with the operands of A prefetched apf steps ahead whatever slice or unit
they belong to. A pair's steps hold its unit's columns in the slice (16 a step, the last padded with weight-0 slots):

    kslot[16 t + k]                           the slot (row of the staged slice, 0 .. ks - 1) of column k of step t
    avals[((t * rn + i) * 32 + l) * 4 + h]   the weights of 8-row tile i of the unit in the B-operand layout of
                                              mma.m16n8k16 (tc_gather's): lane l = 4 g + q holds A[8 i + g][col of
                                              k = 2q, 2q + 1, 2q + 8, 2q + 9]

Slots are dealt to the pair's half steps in (slot % 8, slot) order (tc_gather2's rule), so the 8 rows of an 8 x 8
matrix of ldmatrix have distinct slot % 8 where they can, and staged rows 2 * tile_n + 16 bytes apart (16 mod 128)
fall in distinct bank groups.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import (adapt_jointly, clean_csr, deal_slots, dense_within, ldmatrix_wavefronts,
                                            narrower, stored_then_scalar)
from sparse_autotune.core.problem import bf16_float, storage
from sparse_autotune.core.reorder import check_perm, reorder

DTYPES16 = ("fp16", "bf16")
_FLAG_CELLS = 1 << 27  # pairs x ks up to this: a flag array instead of np.unique for the distinct (pair, slot)


_clean = clean_csr


def check_geometry(rn: int, rb: int, upw: int, ks: int) -> int:
    """wm (warp rows a tile) of a geometry, after checking it (ValueError)."""
    if rn < 1 or upw < 1 or rb % (8 * rn * upw):
        raise ValueError(f"rb = {rb} must be a multiple of 8 * rn * upw = {8 * rn * upw}")
    if ks % 16 or not 16 <= ks <= 256:
        raise ValueError(f"ks = {ks} must be a multiple of 16 in 16 .. 256 (8-bit slots)")
    return rb // (8 * rn * upw)


def build(a: sp.csr_matrix, rn: int, rb: int, upw: int, ks: int, dtype: str = "fp16") -> dict:
    """The layout of A (rows in their given order): a dict of numpy arrays tile_sptr (int32, tiles + 1), slice_k (int32,
    slices), step_ptr (int32, pairs + 1), kslot (uint8, steps * 16), avals (uint16: fp16 or bf16 bits, steps * rn *
    128), and counts tiles, slices, steps, nnz. Vectorised: O(nnz + pairs * ks)."""
    rn, rb, upw, ks = int(rn), int(rb), int(upw), int(ks)
    if dtype not in DTYPES16:
        raise ValueError(f"tc_gather3 computes fp16 and bf16 (got {dtype})")
    wm = check_geometry(rn, rb, upw, ks)
    a = _clean(a)
    m, k = a.shape
    rr = 8 * rn
    tiles = -(-m // rb)
    nsl = max(1, -(-k // ks))  # K-slices
    sub = ks // 8
    # 32-bit index arithmetic where every key fits (the nonzeros' arrays are the cost: ~30 M at 14336 x 4096 d 0.5)
    big = max(tiles * rb, k + ks) * max(nsl * ks, rb) >= 2 ** 31 - 1
    it = np.int64 if big else np.int32
    rows = np.repeat(np.arange(m, dtype=it), np.diff(a.indptr))
    cols = a.indices.astype(it, copy=False)
    tile = rows // rb
    unit = (rows - tile * rb) // rr  # unit of the tile
    lr = rows - tile * rb - unit * rr  # row of the unit
    del rows
    sl = cols // ks
    slot = cols - sl * ks
    del cols
    # the tiles' non-empty slices, in order
    flag = np.zeros(tiles * nsl, dtype=bool)
    tsl = tile * nsl + sl
    flag[tsl] = True
    tsk = np.flatnonzero(flag)
    ns = np.bincount(tsk // nsl, minlength=tiles).astype(np.int64)
    sstart = np.zeros(tiles + 1, dtype=np.int64)
    np.cumsum(ns, out=sstart[1:])
    slices = int(sstart[-1])
    npairs = slices * wm * upw
    if npairs * ks >= 2 ** 31 - 1:
        it = np.int64
    rank = (np.cumsum(flag, dtype=np.int64) - 1).astype(it)  # global slice number of each (tile, slice) present
    # pair = (sstart[tile] * wm + w * ns[tile] + j) * upw + v with j = gsl - sstart[tile], w, v = divmod(unit, upw);
    # key (pair, residue slot % 8, slot // 8): the dealing order of the half steps
    pre = (sstart[:-1] * (wm - 1)).astype(it)[tile]  # sstart * wm - sstart
    okey = pre + rank[tsl]
    del tsl, pre
    okey += (unit // upw).astype(it) * ns.astype(it)[tile]
    okey *= upw
    okey += unit % upw
    del unit, tile
    okey *= ks
    okey += (slot % 8) * sub + slot // 8
    del slot
    step_ptr, kslot, ekn = deal_slots(okey, npairs, ks, it, _FLAG_CELLS)
    del okey
    steps = int(step_ptr[-1])
    if steps * rn * 128 >= 2 ** 40:
        raise ValueError("layout too large")
    # each nonzero's place in avals: ((t * rn + i) * 32 + 4 g + q) * 4 + hh, t = step, k its column of the step
    if steps * rn * 128 >= 2 ** 31 - 1:
        ekn = ekn.astype(np.int64)
    kk = ekn & 15
    at = ((ekn >> 4) * rn + lr // 8) * 128
    at += (lr % 8) * 16
    at += (kk & 7) // 2 * 4 + kk % 2 + (kk >> 3) * 2
    avals = np.zeros(steps * rn * 128, dtype=np.uint16)
    avals[at] = storage(a.data, dtype).view(np.uint16)
    return {"tile_sptr": sstart.astype(np.int32), "slice_k": (tsk % nsl).astype(np.int32),
            "step_ptr": step_ptr.astype(np.int32), "kslot": kslot.astype(np.uint8), "avals": avals,
            "tiles": tiles, "slices": slices, "steps": steps, "nnz": int(a.nnz),
            "rn": rn, "rb": rb, "upw": upw, "ks": ks, "wm": wm, "M": m, "K": k, "dtype": dtype}


def decode(lay: dict) -> np.ndarray:
    """Dense M x K (float64) rebuilt by the kernel's own rule: per tile its slices, per warp row, slice and unit the
    pair's steps, per step and k the slot kslot names (column slice_k * ks + slot), per lane the weights in the
    B-operand layout. Raises if a nonzero weight sits on a column past K or past the last row."""
    rn, rb, upw, ks, wm, m, k = (lay[x] for x in ("rn", "rb", "upw", "ks", "wm", "M", "K"))
    sstart, slice_k, step_ptr, kslot, avals = (lay[x] for x in ("tile_sptr", "slice_k", "step_ptr", "kslot", "avals"))
    steps = lay["steps"]
    rr = 8 * rn
    kpad = max(1, -(-k // ks)) * ks
    out = np.zeros((lay["tiles"] * rb, kpad))
    if steps:
        pair = np.repeat(np.arange(len(step_ptr) - 1), np.diff(step_ptr))  # each step's pair
        v = pair % upw
        rest = pair // upw  # tile_sptr[s] * wm + w * ns + j
        tile = np.searchsorted(sstart.astype(np.int64) * wm, rest, side="right") - 1
        ns = (sstart[tile + 1] - sstart[tile]).astype(np.int64)
        local = rest - sstart[tile].astype(np.int64) * wm
        w, j = local // ns, local % ns
        gsl = sstart[tile] + j
        unit = w * upw + v
        vals = (bf16_float(avals) if lay["dtype"] == "bf16" else avals.view(np.float16)).astype(np.float64)
        st = np.arange(steps)
        for i in range(rn):
            for lane in range(32):
                g, q = divmod(lane, 4)
                for h in range(4):
                    kb = 2 * q + h % 2 + 8 * (h // 2)
                    col = slice_k[gsl].astype(np.int64) * ks + kslot[st * 16 + kb]
                    row = tile * rb + unit * rr + 8 * i + g
                    np.add.at(out, (row, col), vals[((st * rn + i) * 32 + lane) * 4 + h])
    return dense_within(out, m, k)


def bank_wavefronts(lay: dict) -> float:
    """Shared-memory wavefronts per ldmatrix.x4 of the layout's k-steps (4 is conflict-free): per half step (one 8 x 8
    matrix, two of them per x4 share the rows) the largest number of its 8 slots with the same slot % 8."""
    steps = lay["steps"]
    return ldmatrix_wavefronts(lay["kslot"], steps)


def stats(lay: dict) -> dict:
    """What the roofline needs: MMA k-steps (each one ldmatrix.x4 per 16 columns of C and rn MMAs), the slices staged
    (each ks rows of B per column tile), the fill of the steps (nonzeros / weights stored)."""
    steps, rn = lay["steps"], lay["rn"]
    return {"steps": steps, "slices": lay["slices"], "staged_rows": lay["slices"] * lay["ks"],
            "fill": lay["nnz"] / max(1, steps * rn * 128), "wavefronts": bank_wavefronts(lay)}


def permuted(a: sp.csr_matrix, perm) -> sp.csr_matrix:
    """A's rows in the order perm (row r of the result is row perm[r] of A)."""
    return sp.csr_matrix(a)[check_perm(perm, a.shape[0])]


def build_ordered(a, rn: int, rb: int, upw: int, ks: int, dtype: str, row_order: str, seed: int = 0,
                  perm=None) -> dict:
    """build() of A's rows in the order core.reorder gives for units of 8 * rn rows, the permutation under "perm"
    (int32: the kernel's row r is A's row perm[r], where it writes C)."""
    if perm is None:
        perm = reorder(a, row_order, 8 * int(rn), seed)
    perm = np.asarray(perm, dtype=np.int32)
    lay = build(permuted(a, perm), rn, rb, upw, ks, dtype)
    lay["perm"] = perm
    return lay


# ---- the family's host side (core.families) ---------------------------------------------------------------

ARRAYS = ("tile_sptr", "slice_k", "step_ptr", "kslot", "avals")


def wm_of(config: dict) -> int:
    return config["rb"] // (8 * config["rn"] * config["upw"])


def threads(config: dict) -> int:
    return 32 * wm_of(config) * config["wn"]


def row_bytes(config: dict) -> int:
    """A staged row of B: tile_n halves + 16 bytes of padding (16 mod 128: ldmatrix's 8 rows in distinct banks)."""
    return 2 * config["tile_n"] + 16


def ring_bytes(config: dict) -> int:
    return config["stages"] * config["ks"] * row_bytes(config)


def ctile_bytes(config: dict) -> int:
    """The epilogue's C tile (rb rows of tile_n + 8 halves), over the ring once the main loop is done."""
    return config["rb"] * (2 * config["tile_n"] + 16)


def shared_bytes(config: dict) -> int:
    return max(ring_bytes(config), ctile_bytes(config))


def smem_bytes(kernel) -> int:
    return shared_bytes(kernel.config)


def _tiles(kernel, n: int) -> tuple[int, int]:
    c = kernel.config
    return -(-kernel.a.shape[0] // c["rb"]), -(-n // c["tile_n"])


def geometry(kernel, n: int):
    tiles, col_tiles = _tiles(kernel, n)
    return (tiles * col_tiles,), (threads(kernel.config),)


def _host_perm(kernel, rn: int, order: str):
    """The row permutation of (rn, order), once per matrix (shared with every config of this rn)."""
    return kernel.a.cached(("tc_gather3_perm", rn, order),
                           lambda host: [reorder(host, order, 8 * rn).astype(np.int32)])[0]


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    rn, rb, upw, ks, order = cfg["rn"], cfg["rb"], cfg["upw"], cfg["ks"], cfg["row_order"]
    tiles, _ = _tiles(kernel, n)
    m, k = kernel.a.shape
    tail = (b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(tiles))
    if order == "natural":
        got = kernel.a.cached(("tc_gather3", rn, rb, upw, ks, dtype),
                              lambda host: tuple(build(host, rn, rb, upw, ks, dtype)[x] for x in ARRAYS))
        return (*got, *tail)

    def _build(host):
        lay = build_ordered(host, rn, rb, upw, ks, dtype, order, perm=_host_perm(kernel, rn, order))
        return (*(lay[x] for x in ARRAYS), lay["perm"])
    got = kernel.a.cached(("tc_gather3", rn, rb, upw, ks, dtype, order), _build)
    return (*got, *tail)


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another N: 16-bit staging where 16-byte copies do not divide N, and/or a narrower column tile; the rest as
    stored."""
    return adapt_jointly(space, config, dtype, env, limits,
                         lambda cfg: {"tile_n": narrower(space, cfg, dtype, "tile_n"), "bload": stored_then_scalar(cfg)})
