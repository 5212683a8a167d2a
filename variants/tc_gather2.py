"""tc_gather2, host side: tc_gather's math (C^T = B^T A^T on mma.m16n8k16, a row block of 8 * rn rows stored dense
over the union of its columns in the B-operand register layout) with the gathered rows of B staged in shared memory.

Geometry. A row block is R = 8 * rn rows (rows in the order of row_order: core.reorder, as tc_gather). A tile is wm
consecutive row blocks (wm * R rows: one thread block's rows). The tile's union U_s (the sorted distinct columns of all
its rows) is cut into groups of GK = 16 * ksteps columns; group j of tile s is global group gstart[s] + j. A group is
what one stage of the kernel's cp.async ring holds: the GK rows of B named by gcols[group * GK + slot] (-1 past the
end of U_s: zero-filled), TILE_N columns of each.

Each row block b of the tile computes, per group, over its own columns only (its sub-union V of the group's slots,
usually 35-60 % of them): V is cut into k-steps of 16 slots (the last one padded with slots of weight 0), so the
kernel's ldmatrix.x4.trans gathers the 16 rows of a k-step out of the staged group by per-lane row addresses. The
k-steps of a row block are consecutive over its tile's groups: pair (tile s, row block b, group j) is number
gstart[s] * wm + b * G_s + j (G_s: the tile's groups), its steps are step_ptr[pair] .. step_ptr[pair + 1] - 1, so a
warp walks its row block's steps t = step_ptr[gstart[s] * wm + b * G_s] ... in order and prefetches t + 1, t + 2
whatever group they are in. Per step:

    kslot[16 t + k]                 the slot (row of the staged group, 0 .. GK - 1) holding union column k of step t
    avals[((t * rn + i) * 32 + l) * 4 + h]   the weights of 8-row tile i in the B-operand layout of mma.m16n8k16, as
                                    tc_gather: lane l = 4 g + q holds A[8 i + g][col of k = 2q, 2q + 1, 2q + 8, 2q + 9]

The order of the slots within a pair's k-steps is free (the MMA sums over k): the pair's 2 * steps half steps (8 k's:
one 8 x 8 matrix of ldmatrix) are dealt its slots in (slot % 8, slot) order, the j-th to half step j mod (2 * steps),
so a half step holds distinct residues slot % 8 unless a residue has more slots than there are half steps; padding
slots (weight 0) take the residues a half step lacks. The staged rows have a stride of 16 (mod 128) bytes, so 8 rows of
distinct residues fall in distinct bank groups and an ldmatrix.x4 is 4 wavefronts (`bank_wavefronts`, 3072 x 768 at
d = 0.05 uniform: 4.2-5.2, against ~8 for the same slots in ascending or random order).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import (adapt_jointly, clean_csr, deal_slots, ldmatrix_wavefronts, narrower,
                                            stored_then_scalar)
from sparse_autotune.core.problem import bf16_float, storage, tf32_round
from sparse_autotune.core.reorder import check_perm, reorder


_clean = clean_csr


WIDE = ("tf32", "fp32")  # the 32-bit dtypes: TF32 tensor cores (fp32: 3xTF32, split = "3xtf32")


def sub_of(dtype: str) -> int:
    """The k's one shared-memory load instruction of a k-step reads, whose slots the builder gives distinct banks: 8
    (16-bit: one 8 x 8 matrix of ldmatrix, residues slot % 8) or 4 (32-bit: the lanes' 64-bit loads of one quarter
    k = 4h .. 4h + 3, residues slot % 4; staged rows 32 mod 128 bytes apart)."""
    return 4 if dtype in WIDE else 8


def tf32_split(x) -> tuple[np.ndarray, np.ndarray]:
    """(big, small) of 3xTF32: big = tf32(x), small = tf32(x - big) (x - big is exact in fp32); big + small is x to
    about 2^-22 relative."""
    x = np.asarray(x, dtype=np.float32)
    big = tf32_round(x)
    return big, tf32_round(x - big)


def build(a: sp.csr_matrix, rn: int, wm: int, ksteps: int, dtype: str = "fp16") -> dict:
    """The layout of A (rows in their given order) for row blocks of 8 * rn rows, tiles of wm row blocks and groups of
    16 * ksteps tile-union columns: a dict of numpy arrays tile_gptr (int32, tiles + 1: first group of each tile),
    gcols (int32, groups * GK), step_ptr (int32, groups * wm + 1, by (tile, row block, group)), kslot (uint8,
    steps * 16), avals (uint16: fp16, or bf16 bits, steps * rn * 128), and counts: tiles, groups, steps.

    32-bit dtypes (WIDE: two mma.m16n8k8 .tf32 a k-step, k = 0..7 and 8..15): avals is float32, lane l = 4 g + q
    holding A[8 i + g][col of k = q + 4 h] at avals[((t * rn + i) * 32 + l) * 4 + h] (tf32: rounded to TF32), or for
    fp32 (3xTF32) big and small parts at avals[(((t * rn + i) * 2 + part) * 32 + l) * 4 + h] (steps * rn * 256); kslot
    holds the slot of k = q + 4 h at byte 16 t + 4 q + h (one 32-bit load a lane and step)."""
    rn, wm, ksteps = int(rn), int(wm), int(ksteps)
    sub = sub_of(dtype)
    gk = 16 * ksteps
    if gk > 256:
        raise ValueError("a group must have at most 256 slots (8-bit slot numbers)")
    a = _clean(a)
    m, k = a.shape
    rr = 8 * rn
    nrb = -(-m // rr)
    tiles = -(-nrb // wm)
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(a.indptr))
    cols = a.indices.astype(np.int64)
    rb = rows // rr
    tile = rb // wm
    blk = rb % wm
    # the tiles' unions: (tile, column) keys, sorted
    tkey = tile * k + cols
    ukeys, inv_u = np.unique(tkey, return_inverse=True)
    u_tile = ukeys // k
    ucnt = np.bincount(u_tile, minlength=tiles).astype(np.int64)
    ustart = np.zeros(tiles + 1, dtype=np.int64)
    np.cumsum(ucnt, out=ustart[1:])
    ngroups = -(-ucnt // gk)
    gstart = np.zeros(tiles + 1, dtype=np.int64)
    np.cumsum(ngroups, out=gstart[1:])
    groups = int(gstart[-1])
    upos = np.arange(len(ukeys), dtype=np.int64) - ustart[u_tile]  # place of each union column in its tile's union
    gcols = np.full(groups * gk, -1, dtype=np.int32)
    gcols[(gstart[u_tile] + upos // gk) * gk + upos % gk] = (ukeys % k).astype(np.int32)
    # each nonzero's group and slot
    p = upos[inv_u]
    slot = p % gk
    # sub-unions: distinct (pair, slot); pair = gstart[tile] * wm + row block * G_tile + group of the tile. Each pair's
    # k-steps (core.families.deal_slots): its 16 / sub part steps (8 k's: one 8 x 8 matrix of ldmatrix; 32-bit dtypes:
    # quarters of 4 k's, the lanes' 64-bit loads) are dealt its slots in (residue slot % sub, slot) order, the j-th to
    # part j mod (16 / sub x its steps): a residue's slots land in distinct parts (no two rows of a matrix in the same
    # bank group) unless it has more of them than there are parts; padding slots take the residues a part lacks
    pair = gstart[tile] * wm + blk * ngroups[tile] + p // gk
    npairs = groups * wm
    okey = pair * gk + (slot % sub) * (gk // sub) + slot // sub
    step_ptr, kslot, ek = deal_slots(okey, npairs, gk, sub=sub)
    steps = int(step_ptr[-1])
    if steps * rn * 128 >= 2 ** 40:
        raise ValueError("layout too large")
    # weights
    lr = rows - rb * rr
    i, g = lr // 8, lr % 8
    t, kk = ek // 16, ek % 16
    if dtype in WIDE:
        q, hh = kk % 4, kk // 4
        if dtype == "tf32":
            avals = np.zeros(steps * rn * 128, dtype=np.float32)
            avals[((t * rn + i) * 32 + 4 * g + q) * 4 + hh] = tf32_round(a.data)
        else:
            avals = np.zeros(steps * rn * 256, dtype=np.float32)
            big, small = tf32_split(a.data)
            at = (((t * rn + i) * 2) * 32 + 4 * g + q) * 4 + hh
            avals[at] = big
            avals[at + 128] = small
        kslot = kslot.reshape(steps, 4, 4).transpose(0, 2, 1).ravel()  # byte 4 q + h: k = q + 4 h
    else:
        q = np.where(kk < 8, kk // 2, (kk - 8) // 2)
        hh = np.where(kk < 8, kk % 2, 2 + kk % 2)
        avals = np.zeros(steps * rn * 128, dtype=np.uint16)
        avals[((t * rn + i) * 32 + 4 * g + q) * 4 + hh] = storage(a.data, dtype).view(np.uint16)
    return {"tile_gptr": gstart.astype(np.int32), "gcols": gcols, "step_ptr": step_ptr.astype(np.int32),
            "kslot": kslot.astype(np.uint8), "avals": avals, "tiles": tiles, "groups": groups, "steps": steps,
            "rn": rn, "wm": wm, "ksteps": ksteps, "M": m, "K": k, "dtype": dtype}


def decode(lay: dict) -> np.ndarray:
    """Dense M x K (float64) of the layout's rows rebuilt by the kernel's own rule: for each tile, group and row block,
    its steps; for each step and k, the slot kslot names, the column gcols gives that slot of the group, and the
    weights each lane holds in the B-operand layout. Raises if a nonzero weight sits on a slot past the union's end."""
    rn, wm, gk, m, k = lay["rn"], lay["wm"], 16 * lay["ksteps"], lay["M"], lay["K"]
    gstart, gcols, step_ptr, kslot, avals = (lay[x] for x in ("tile_gptr", "gcols", "step_ptr", "kslot", "avals"))
    rr = 8 * rn
    steps = lay["steps"]
    out = np.zeros((lay["tiles"] * wm * rr, k + 1))  # column k: slots past the union's end
    if steps:
        pair = np.repeat(np.arange(len(step_ptr) - 1), np.diff(step_ptr))  # each step's (tile, row block, group)
        tile = np.searchsorted(gstart * wm, pair, side="right") - 1
        ng = gstart[tile + 1] - gstart[tile]
        local = pair - gstart[tile] * wm
        b, grp = local // ng, gstart[tile] + local % ng
        wide = lay["dtype"] in WIDE
        if lay["dtype"] == "fp32":  # big + small, each lane's 4 words
            v4 = avals.astype(np.float64).reshape(steps * rn, 2, 128)
            v = (v4[:, 0] + v4[:, 1]).ravel()
        elif wide:
            v = avals.astype(np.float64)
        else:
            v = (bf16_float(avals) if lay["dtype"] == "bf16" else avals.view(np.float16)).astype(np.float64)
        for i in range(rn):
            for lane in range(32):
                g, q = divmod(lane, 4)
                for h in range(4):
                    if wide:  # k = q + 4 h, its slot at byte 4 q + h of the step
                        kb = 4 * q + h
                    else:
                        kb = 2 * q + h % 2 + 8 * (h // 2)
                    col = gcols[grp * gk + kslot[np.arange(steps) * 16 + kb]].astype(np.int64)
                    col[col < 0] = k
                    row = (tile * wm + b) * rr + 8 * i + g
                    np.add.at(out, (row, col), v[((np.arange(steps) * rn + i) * 32 + lane) * 4 + h])
    if out[:, k].any():
        raise ValueError("a nonzero weight on a zero-filled slot")
    if out[m:].any():
        raise ValueError("a nonzero weight past the last row")
    return out[:m, :k]


def bank_wavefronts(lay: dict) -> float:
    """Shared-memory wavefronts per ldmatrix.x4 of the layout's k-steps (4 is conflict-free): per half step (one 8 x 8
    matrix, two of them per x4 share the rows) the largest number of its 8 slots with the same slot % 8."""
    steps = lay["steps"]
    if lay["dtype"] in WIDE:
        # 32-bit: per quarter (the slots of k = 4h .. 4h + 3, bytes h, 4 + h, 8 + h, 12 + h of the step) a 64-bit load
        # a lane: two half-warp wavefronts when the 4 slots have distinct slot % 4 (rows 32 mod 128 bytes apart), each
        # repeated residue one more
        if not steps:
            return 2.0
        res = (lay["kslot"].astype(np.int64) % 4).reshape(steps, 4, 4).transpose(0, 2, 1).reshape(steps * 4, 4)
        counts = np.zeros((steps * 4, 4), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(steps * 4), 4), res.ravel()), 1)
        return float(2 * counts.max(axis=1).mean())
    return ldmatrix_wavefronts(lay["kslot"], steps)


def stats(lay: dict) -> dict:
    """What the roofline needs: steps, the tile-union rows staged (groups * GK) and the wavefronts per ldmatrix."""
    return {"steps": lay["steps"], "groups": lay["groups"], "staged_rows": lay["groups"] * 16 * lay["ksteps"],
            "wavefronts": bank_wavefronts(lay)}


def permuted(a: sp.csr_matrix, perm) -> sp.csr_matrix:
    """A's rows in the order perm (row r of the result is row perm[r] of A)."""
    return sp.csr_matrix(a)[check_perm(perm, a.shape[0])]


def build_ordered(a: sp.csr_matrix, rn: int, wm: int, ksteps: int, dtype: str, row_order: str, seed: int = 0,
                  perm=None) -> dict:
    """build() of A's rows in the order core.reorder gives for row blocks of 8 * rn rows (as tc_gather), with the
    permutation under "perm" (int32: the kernel's row r is A's row perm[r], where it writes C). perm: a permutation
    computed before (the same rn and row_order), else computed here."""
    if perm is None:
        perm = reorder(a, row_order, 8 * int(rn), seed)
    perm = np.asarray(perm, dtype=np.int32)
    lay = build(permuted(a, perm), rn, wm, ksteps, dtype)
    lay["perm"] = perm
    return lay


# ---- the family's host side (core.families) ---------------------------------------------------------------

ARRAYS = ("tile_gptr", "gcols", "step_ptr", "kslot", "avals")


def threads(config: dict) -> int:
    return 32 * config["wm"] * config["wn"]


def tile_rows(config: dict) -> int:
    return 8 * config["rn"] * config["wm"]


def row_bytes(config: dict, dtype: str = "fp16") -> int:
    """A staged row of B: tile_n elements + padding (16 bytes: 16 mod 128 for ldmatrix; 32-bit dtypes 32: 32 mod 128
    for the lanes' 64-bit loads)."""
    return 4 * config["tile_n"] + 32 if dtype in WIDE else 2 * config["tile_n"] + 16


def ring_bytes(config: dict, dtype: str = "fp16") -> int:
    """The cp.async ring: stages x 16 * ksteps rows of B, each 2 * tile_n bytes + 16 of padding (32-bit dtypes:
    4 * tile_n + 32)."""
    return config["stages"] * 16 * config["ksteps"] * row_bytes(config, dtype)


def ctile_bytes(config: dict, dtype: str = "fp16") -> int:
    """The epilogue's C tile (fp16/bf16, rows of tile_n + 8 halves; 32-bit dtypes: tile_n + 4 floats), over the ring
    once the main loop is done."""
    return tile_rows(config) * (4 * config["tile_n"] + 16 if dtype in WIDE else 2 * config["tile_n"] + 16)


def shared_bytes(config: dict, dtype: str = "fp16") -> int:
    return max(ring_bytes(config, dtype), ctile_bytes(config, dtype))


def smem_bytes(kernel) -> int:
    return shared_bytes(kernel.config, kernel.dtype)


def _tiles(kernel, n: int) -> tuple[int, int]:
    c = kernel.config
    return -(-kernel.a.shape[0] // tile_rows(c)), -(-n // c["tile_n"])


def geometry(kernel, n: int):
    tiles, col_tiles = _tiles(kernel, n)
    return (tiles * col_tiles,), (threads(kernel.config),)


def _host_perm(kernel, rn: int, order: str):
    """The row permutation of (rn, order) on the host, computed once per matrix and kept with A's layouts (a list, so
    that DeviceCSR.cached keeps it on the host): every config of this rn shares it."""
    return kernel.a.cached(("tc_gather2_perm", rn, order),
                           lambda host: [reorder(host, order, 8 * rn).astype(np.int32)])[0]


def args(kernel, n: int, b, c) -> tuple:
    cfg, dtype = kernel.config, kernel.dtype
    rn, wm, ks, order = cfg["rn"], cfg["wm"], cfg["ksteps"], cfg["row_order"]
    tiles, _ = _tiles(kernel, n)
    tail = (b, c, np.int32(kernel.a.shape[0]), np.int32(n), np.int32(tiles))
    if order == "natural":
        got = kernel.a.cached(("tc_gather2", rn, wm, ks, dtype),
                              lambda host: tuple(build(host, rn, wm, ks, dtype)[x] for x in ARRAYS))
        return (*got, *tail)

    def _build(host):
        lay = build_ordered(host, rn, wm, ks, dtype, order, perm=_host_perm(kernel, rn, order))
        return (*(lay[x] for x in ARRAYS), lay["perm"])
    got = kernel.a.cached(("tc_gather2", rn, wm, ks, dtype, order), _build)
    return (*got, *tail)


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another N: 16-bit staging where 16-byte copies do not divide N, and/or a narrower column tile (the widest
    that fits, e.g. 64 for N = 1), and where a stored minblocks' register cap does not hold the 16-bit staging (or
    this GPU's shared memory does not hold its blocks), the template's estimate (minblocks 0); the rest as stored."""
    def orders(cfg):
        out = {"tile_n": narrower(space, cfg, dtype, "tile_n"), "bload": stored_then_scalar(cfg)}
        if "minblocks" in cfg:  # (apre buf2's only)
            out["minblocks"] = list(dict.fromkeys((cfg["minblocks"], 0)))
        return out
    return adapt_jointly(space, config, dtype, env, limits, orders)
