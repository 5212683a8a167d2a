"""tc_union, host side (issue 16, N <= 32 at density <= 0.2): C = A B on mma.m16n8k16 with A's rows as the MMA's M
side in units of 16 rows, each unit computed over the union of its columns only, B staged in shared memory and
gathered by ldmatrix.trans, A's weights compressed (ballots + stored pairs) and staged beside B.

Why (bench/NOTES.md, session 33): at N <= 32 and d <= 0.1 the CUDA-core gathers (csr_gemv) pay about one L1 /
shared-memory wavefront a nonzero for B's row; a tensor-core unit of 16 rows gathers 16 union rows of B with one
ldmatrix.x4.trans a 16 columns (4 wavefronts for ~23 nonzeros at d 0.05, uniform), and A's weights stay compressed
(~6 bytes a nonzero instead of tc_gather's 17: the union tile stored dense). Measured slower than the winners it was
meant to beat (bench/NOTES.md, session 33): the family stays off by default.

Geometry. Units of 16 consecutive rows; a tile is rb rows (rb / 16 units), a thread block's rows. K is cut into
slices of ks columns (slice j: columns ks * j ... ks * j + ks - 1), NS = ceil(K / ks). With split-K sk, block (tile,
split s) walks slices s * SPS ... min(NS, (s + 1) * SPS) - 1, SPS = ceil(NS / sk). Per slice the block stages the
dense B[ks rows, tile_n columns] and the slice's A record (below) in one stage of a cp.async ring; warp w owns units
upw * w ... upw * w + upw - 1 and walks their k-steps in the staged slice.

A unit's k-steps in a slice: its union (the distinct columns of its 16 rows in the slice) cut into steps of 16,
the last padded with weight-0 slots; the slots (0 .. ks - 1, the row of the staged slice) are dealt to the half
steps (8 k's: one 8 x 8 matrix of ldmatrix) in (slot % 8, slot) order, so a matrix's 8 rows have distinct slot % 8
where they can (tc_gather2's rule); staged rows RS = 2 tile_n (+16 unless tile_n = 8) bytes apart, RS / 16 odd, so 8
rows of distinct residues fall in distinct bank groups.

A record, one per (tile, slice), 16-byte aligned, in `arec` (uint32) at word 4 * roff[tile * NS + j]; roff[tiles * NS]
is the end:
  [0, 8 (UPT + 1))          u32 sstart[UPT + 1] (the steps of units 0 .. u - 1), then u32 pstart[UPT + 1] (their
                            stored pairs); UPT = rb / 16
  H0 = align16(8 (UPT + 1)) per step s (48 bytes): u32 ballot[4] (bit l of ballot j: lane l's fragment register j is
                            stored), u32 base[4] (the record's pair index of register j's first stored pair), u8
                            slot[16] (slot of k = 0 .. 15)
  P0 = H0 + 48 S            u32 pairs: per step, bit-major (register 0's lanes in ascending order, then 1, 2, 3), so
                            lane l's register j is pair base[j] + popc(ballot_j & lanemask_lt(l)) (no chain from step
                            to step: the kernel's steps are independent); zeros to a multiple of 16 bytes
Fragment (mma.m16n8k16 A, row-major): lane l = 4 g + q holds register j = 0 (row g, k 2q, 2q + 1), 1 (row g + 8,
k 2q, 2q + 1), 2 (row g, k 2q + 8, 2q + 9), 3 (row g + 8, k 2q + 8, 2q + 9); the even k in the low half. A register
with any nonzero is stored whole. Bytes: 48 a step + 4 a stored pair + the tables (~6 a nonzero at d 0.05, uniform).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import (adapt_jointly, clean_csr, deal_slots, dense_within, ldmatrix_wavefronts,
                                            narrower, splitk_shape, splitk_workspace, stored_then_scalar)
from sparse_autotune.core.problem import bf16_float, storage

DTYPES16 = ("fp16", "bf16")
R = 16  # rows a unit
HDR = 48  # bytes a k-step's header: 4 ballots, 4 register bases, 16 slots


def check_geometry(rb: int, ks: int) -> int:
    """UPT (units a tile) of a geometry, after checking it (ValueError)."""
    if rb < R or rb % R:
        raise ValueError(f"rb = {rb} must be a multiple of {R}")
    if ks % 16 or not 16 <= ks <= 256:
        raise ValueError(f"ks = {ks} must be a multiple of 16 in 16 .. 256 (8-bit slots)")
    return rb // R


def table_bytes(upt: int) -> int:
    """H0: the unit table (two u32 per unit + 1), to a multiple of 16."""
    return -(-8 * (upt + 1) // 16) * 16


def build(a: sp.csr_matrix, rb: int, ks: int, dtype: str = "fp16") -> dict:
    """The layout of A: a dict of numpy arrays roff (int32, tiles * NS + 1: records' offsets in 16-byte units), arec
    (uint32), and counts tiles, ns, steps, pairs, nnz, cap (the largest record in bytes + 16: a ring stage's A part,
    with room for the kernel's one unused load past the last pair). Vectorised: O(nnz + records
    * UPT + groups * ks)."""
    rb, ks = int(rb), int(ks)
    if dtype not in DTYPES16:
        raise ValueError(f"tc_union computes fp16 and bf16 (got {dtype})")
    upt = check_geometry(rb, ks)
    a = clean_csr(a)
    m, k = a.shape
    tiles = max(1, -(-m // rb))
    nsl = max(1, -(-k // ks))
    nrec = tiles * nsl
    ngroups = nrec * upt  # (tile, slice, unit), in record order
    sub = ks // 8
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(a.indptr))
    cols = a.indices.astype(np.int64)
    tile = rows // rb
    unit = (rows - tile * rb) // R
    r16 = rows % R  # rb is a multiple of 16
    del rows
    sl = cols // ks
    slot = cols - sl * ks
    del cols
    grp = (tile * nsl + sl) * upt + unit  # (tile, slice, unit), in record order
    del tile, unit, sl
    # the distinct (group, slot) dealt to k-steps: key (group, slot % 8, slot // 8)
    okey = grp * ks + (slot % 8) * sub + slot // 8
    del slot, grp
    step_ptr, kslot, ekn = deal_slots(okey, ngroups, ks)
    del okey
    steps = int(step_ptr[-1])
    # each nonzero: its global step, k, fragment register j and lane
    st = ekn >> 4
    kk = ekn & 15
    lane = 4 * (r16 & 7) + (kk & 7) // 2
    reg = (r16 >> 3) + 2 * (kk >> 3)
    hi = kk & 1
    del ekn, kk, r16
    pkey = (st * 4 + reg) * 32 + lane  # bit-major within a step
    upk, pinv = np.unique(pkey, return_inverse=True)
    pairs = len(upk)
    reg_of_pair = upk // 32  # step * 4 + register
    pv = np.zeros(pairs, dtype=np.uint32)
    bits = storage(a.data, dtype).view(np.uint16).astype(np.uint32) << (16 * hi).astype(np.uint32)
    np.bitwise_or.at(pv, pinv, bits)
    del bits, pinv
    ballot = np.zeros(steps * 4, dtype=np.uint64)
    np.bitwise_or.at(ballot, upk // 32, np.left_shift(np.uint64(1), (upk % 32).astype(np.uint64)))
    pstep = upk // 128
    del upk
    # creg[4 t + j]: the pairs before (step t, register j); the records' and units' steps and pairs follow from it and
    # from step_ptr (groups are in record order: record r's units are groups r * UPT ... r * UPT + UPT - 1)
    creg = np.zeros(steps * 4 + 1, dtype=np.int64)
    np.cumsum(np.bincount(reg_of_pair, minlength=steps * 4), out=creg[1:])
    del reg_of_pair
    gidx = np.arange(nrec, dtype=np.int64)[:, None] * upt + np.arange(upt + 1)[None, :]  # a record's group bounds
    gstep = step_ptr[gidx]  # steps before each unit (and the record's end)
    gpair = creg[4 * gstep]  # pairs before them
    rstep0, rpair0 = gstep[:, 0], gpair[:, 0]  # the record's first step and pair
    rsteps, rpairs = gstep[:, -1] - rstep0, gpair[:, -1] - rpair0
    h0 = table_bytes(upt)
    rbytes = -(-(h0 + HDR * rsteps + 4 * rpairs) // 16) * 16
    roff = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(rbytes // 16, out=roff[1:])
    if roff[-1] >= 2 ** 31 - 1:
        raise ValueError("layout too large")
    arec = np.zeros(int(roff[-1]) * 4, dtype=np.uint32)
    # unit tables: sstart / pstart of units within their record (exclusive prefix; entry UPT the totals)
    tab = np.stack([gstep - rstep0[:, None], gpair - rpair0[:, None]], axis=1)  # (record, 2, UPT + 1)
    tw = (roff[:-1] * 4)[:, None] + np.arange(2 * (upt + 1))[None, :]
    arec[tw.ravel()] = tab.reshape(nrec, -1).ravel().astype(np.uint32)
    # step headers: the record's steps in order
    rec_of_step = np.repeat(np.arange(nrec, dtype=np.int64), rsteps)
    local = np.arange(steps, dtype=np.int64) - rstep0[rec_of_step]
    hword = roff[rec_of_step] * 4 + h0 // 4 + (HDR // 4) * local  # word of the step's header
    bw = hword[:, None] + np.arange(4)[None, :]
    arec[bw.ravel()] = ballot.astype(np.uint32)
    ab = arec.view(np.uint8)
    sb = (hword * 4 + 32)[:, None] + np.arange(16)[None, :]
    ab[sb.ravel()] = kslot.astype(np.uint8)
    # pairs: the record's pairs in (step, register, lane) order after its headers
    prec = rec_of_step[pstep]
    plocal = np.arange(pairs, dtype=np.int64) - rpair0[prec]
    arec[roff[prec] * 4 + h0 // 4 + (HDR // 4) * rsteps[prec] + plocal] = pv
    # the register bases: the record's pairs before (step, register)
    base = creg[:-1].reshape(steps, 4) - rpair0[rec_of_step][:, None]
    arec[(hword + 4)[:, None] + np.arange(4)[None, :]] = base.astype(np.uint32)
    return {"roff": roff.astype(np.int32), "arec": arec, "tiles": tiles, "ns": nsl, "steps": steps, "pairs": pairs,
            "nnz": int(a.nnz), "cap": int(rbytes.max(initial=h0)) + 16, "rb": rb, "ks": ks, "upt": upt, "M": m, "K": k,
            "dtype": dtype, "kslot": kslot.astype(np.uint8)}


def decode(lay: dict) -> np.ndarray:
    """Dense M x K (float64) rebuilt by the kernel's own rule from roff / arec alone: per record its unit table, per
    unit its steps' ballots, slots and pairs (pair index by the popcounts the kernel takes). Raises if a weight sits on
    a column past K or a row past M."""
    rb, ks, upt, m, k, nsl = (lay[x] for x in ("rb", "ks", "upt", "M", "K", "ns"))
    roff, arec = lay["roff"].astype(np.int64), lay["arec"]
    ab = arec.view(np.uint8)
    h0 = table_bytes(upt)
    out = np.zeros((lay["tiles"] * rb, nsl * ks))
    vals16 = arec.view(np.uint16)
    to_f = (lambda x: bf16_float(x)) if lay["dtype"] == "bf16" else (lambda x: x.view(np.float16))
    for rec in range(len(roff) - 1):
        w0 = int(roff[rec]) * 4
        tile, j = divmod(rec, nsl)
        ss = arec[w0:w0 + upt + 1].astype(np.int64)
        ps = arec[w0 + upt + 1:w0 + 2 * (upt + 1)].astype(np.int64)
        nst = int(ss[upt])
        p0w = w0 + h0 // 4 + (HDR // 4) * nst  # first pair's word
        for u in range(upt):
            p = int(ps[u])
            for s in range(int(ss[u]), int(ss[u + 1])):
                hw = w0 + h0 // 4 + (HDR // 4) * s
                ball = arec[hw:hw + 4].astype(np.int64)
                base = arec[hw + 4:hw + 8].astype(np.int64)
                slots = ab[4 * hw + 32:4 * hw + 48].astype(np.int64)
                for reg in range(4):
                    b = int(ball[reg])
                    if base[reg] != p:
                        raise ValueError(f"record {rec} step {s} register {reg}: base {base[reg]}, pairs before {p}")
                    for lane in range(32):
                        if not b >> lane & 1:
                            continue
                        pi = int(base[reg]) + bin(b & ((1 << lane) - 1)).count("1")
                        g, q = divmod(lane, 4)
                        row = tile * rb + u * R + g + 8 * (reg & 1)
                        for hh in range(2):
                            kk = 2 * q + hh + 8 * (reg >> 1)
                            v = float(to_f(vals16[2 * (p0w + pi) + hh:2 * (p0w + pi) + hh + 1])[0])
                            out[row, j * ks + int(slots[kk])] += v
                    p += bin(b).count("1")
    return dense_within(out, m, k)


def bank_wavefronts(lay: dict) -> float:
    """Shared-memory wavefronts per ldmatrix.x4 of the layout's k-steps (4 is conflict-free)."""
    return ldmatrix_wavefronts(lay["kslot"], lay["steps"])


def stats(lay: dict) -> dict:
    """What the roofline needs: k-steps (each one ldmatrix per 16 columns of C and tile_n / 8 MMAs), stored pairs,
    A's bytes a nonzero, the largest record (a ring stage's A part)."""
    nnz = max(1, lay["nnz"])
    return {"steps": lay["steps"], "pairs": lay["pairs"], "bytes_per_nnz": 4 * len(lay["arec"]) / nnz,
            "nnz_per_step": lay["nnz"] / max(1, lay["steps"]), "cap": lay["cap"],
            "wavefronts": bank_wavefronts(lay)}


# ---- the family's host side (core.families) ---------------------------------------------------------------

def warps(config: dict) -> int:
    return config["rb"] // (R * config["upw"])


def threads(config: dict) -> int:
    return 32 * warps(config)


def row_bytes(config: dict) -> int:
    """A staged row of B: tile_n halves (+16 bytes where tile_n > 8), RS / 16 odd: 8 rows of distinct slot % 8 in
    distinct bank groups."""
    tn = config["tile_n"]
    return 2 * tn + (16 if tn > 8 else 0)


def bstage_bytes(config: dict) -> int:
    return config["ks"] * row_bytes(config)


def _layout(kernel):
    """(roff, arec, cap) of the kernel's (rb, ks, dtype), built once per matrix and cached on the device."""
    c, dtype = kernel.config, kernel.dtype
    rb, ks = c["rb"], c["ks"]

    def make(host):
        lay = build(host, rb, ks, dtype)
        return lay["roff"], lay["arec"], int(lay["cap"])
    return kernel.a.cached(("tc_union", rb, ks, dtype), make)


def acap(kernel) -> int:
    """A's part of a ring stage: the largest record of the matrix + 16 bytes (a multiple of 16)."""
    return int(_layout(kernel)[2])


def stage_bytes(kernel) -> int:
    return bstage_bytes(kernel.config) + acap(kernel)


def smem_bytes(kernel) -> int:
    return kernel.config["stages"] * stage_bytes(kernel)


def _dims(kernel, n: int) -> tuple[int, int, int]:
    """(tiles, NS, column tiles)."""
    c = kernel.config
    m, k = kernel.a.shape
    return max(1, -(-m // c["rb"])), max(1, -(-k // c["ks"])), max(1, -(-n // c["tile_n"]))


def splits(config: dict, ns: int) -> tuple[int, int]:
    """(sk, SPS): split-K as configured but never more splits than slices; SPS slices a split."""
    sk = max(1, min(int(config["sk"]), ns))
    sps = -(-ns // sk)
    return -(-ns // sps), sps


def geometry(kernel, n: int):
    tiles, ns, ctiles = _dims(kernel, n)
    sk, _ = splits(kernel.config, ns)
    return (tiles * sk, ctiles), (threads(kernel.config),)


def workspace_shape(config: dict, tiles: int, ctiles: int, sk: int) -> tuple[int, int]:
    """Split-K's workspace (core.families.splitk_shape): a slice of rb x tile_n fp32 per (tile, column tile, split)."""
    return splitk_shape(sk, tiles * ctiles, config["rb"] * config["tile_n"])


def args(kernel, n: int, b, c) -> tuple:
    roff, arec, _ = _layout(kernel)
    m, k = kernel.a.shape
    tiles, ns, ctiles = _dims(kernel, n)
    sk, sps = splits(kernel.config, ns)
    ws, counters = splitk_workspace(kernel, "tc_union", workspace_shape(kernel.config, tiles, ctiles, sk), n)
    return (roff, arec, b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(tiles), np.int32(ns), np.int32(sk),
            np.int32(sps), np.int32(acap(kernel)), ws, counters)


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another N: 16-bit staging where 16-byte copies do not divide N, and/or a narrower column tile."""
    return adapt_jointly(space, config, dtype, env, limits,
                         lambda cfg: {"tile_n": narrower(space, cfg, dtype, "tile_n"), "bload": stored_then_scalar(cfg)})
