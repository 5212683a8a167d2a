"""tc_sp24, host side: an unstructured sparse A split into a 2:4-structured part, run on Hopper's sparse warpgroup MMA
(wgmma.mma_async.sp m64nNk32: twice the dense MMA rate, bench/results/session35/sp24-probe.md), and a residual of
the nonzeros 2:4 cannot hold, added on CUDA cores in the epilogue (variants/tc_sp24.cu.j2).

Split: in each row, each group of 4 consecutive columns keeps its first two nonzeros (column order) in the 2:4 part;
a third and fourth go to the residual. For a uniform pattern the residual is ~1 % of the nonzeros at d 0.1, 3.6 % at
0.2, 7.6 % at 0.3, 19 % at 0.5 (binomial: E[max(X - 2, 0)] / E[X], X ~ Bin(4, d)).

2:4 part (the stream, uint8): the padded A (Mp = 64 wg NBLK rows, Kp = 32 kc NC columns) in tiles of one warpgroup's
64 rows x one k32 step, 2304 bytes each:
  [0, 2048)     the compressed values in the register order of wgmma's A fragment (sparse .m64nNk32 from registers,
                measured by bench/sp24_probe.py): thread tw = 32 w + 4 g + t (warp w of the warpgroup: rows 16 w ... +
                15) holds 4 u32 registers j = 0 ... 3, register j = (row 16 w + g + 8 (j & 1), compressed columns
                2 t + 8 (j >> 1), + 1: the kept pair of group t + 4 (j >> 1) of the k-step, its first value in the low
                half); thread tw's 16 bytes at 16 tw (one ld.shared.v4 a thread, conflict-free)
  [2048, 2304)  the metadata: 16 u32 words a warp (64 bytes at 64 w), word 2 g + q (q = 0, 1) = what lane 4 g + q
                passes at sparsity selector 0: nibble i (bits 4 i ... 4 i + 3) = the positions (p0 | p1 << 2, p0 < p1)
                of the kept pair of row 16 w + g + 8 (i >> 2), group 4 q + (i & 3). Lanes 4 g + 2, + 3 read the same
                two words (the instruction ignores them at selector 0).
A group with one nonzero at position p keeps it at slot 0 with positions (p, 3) (p < 3) or at slot 1 with (0, 3)
(p = 3); an empty group holds zeros at (0, 1): metadata is never one of the invalid 0b0000, 0b0101, 0b1010, 0b1111.
Tile order: chunk c (kc k-steps), row block b (wg warpgroups of 64 rows), warpgroup w, k-step kk: tile
((c NBLK + b) wg + w) kc + kk, so one row block's tiles of a chunk are one contiguous run of wg kc 2304 bytes (the
producer's one bulk copy a chunk). 2304 bytes a 64 x 32 tile: 1.125 bytes an element of A at any density (dense
fp16: 2).

Residual: CSR (rptr int32 [M + 1], rcol int32, rval uint16 bit patterns) of the nonzeros past the first two of their
group.

tf32 (the nk layout natively; fp32 storage, TF32 tensor-core math): wgmma.mma_async.sp m64nNk16 .tf32 is 1:2 on pairs of
columns, and its fragments are the f16 k32 ones with a pair of 32-bit elements for a group of four 16-bit ones
(bench/results/session54/tf32-probe-h100.md): register j of thread 4 g + t holds the kept value of pair t + 4 (j >> 1)
of the k16 step, the metadata nibble of a pair is 0b0100 (its first element) or 0b1110 (its second), the positions of
the two 16-bit halves. So the stream is built in A's 16-bit view (each float as its low and high halves: 2 K columns),
with split_tf32's nibbles and values, by the f16 packing: the same tiles, chunks of kc k16 steps (16 kc columns). Per
row and pair the first nonzero is kept (rounded to TF32, as cvt.rna does); a second goes to the residual (rval: fp32
bits, uint32), which is d / 2 of the nonzeros for a uniform pattern (2.5 % at d 0.05, 5 % at 0.1).
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params, clean_csr, csr_parts, splitk_shape, splitk_workspace
from sparse_autotune.core.problem import half_bits, tf32_round

TILE = 2304  # bytes of one warpgroup's 64 rows x one k32 step
VALS = 2048  # of which the compressed values; the metadata follows
EMPTY_NIBBLE = 0x4  # positions (0, 1)


def dims(m: int, k: int, kc: int, wg: int) -> tuple[int, int]:
    """(NBLK row blocks of 64 wg rows in the stream, NC chunks of 32 kc columns). NBLK is even (a last row block of
    zeros where the rows need an odd count), so that every block of an mc 2 cluster has its tiles."""
    rows = max(1, -(-m // (64 * wg)))
    return rows + rows % 2, max(1, -(-k // (32 * kc)))


def _group_rank(rows: np.ndarray, cols: np.ndarray, kg: int, size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(key, rank) of CSR-ordered entries: key = row x kg + column group of `size` (4; tf32's pairs: 2), rank = the
    entry's place in its group's run (groups of 4: 0, 1 the 2:4 part, 2, 3 what 2:4 cannot hold; pairs: 0 the 1:2
    part, 1 the residual)."""
    key = rows.astype(np.int64) * kg + cols // size  # CSR order: by row, then column, so a group's entries are a run
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
    return key, np.arange(len(key)) - start


def slots(a: sp.csr_matrix, l2: int, windowed: bool = False, block: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """(A over slots, orow int32 [Ms]) for l2 > 0: the rows with the most nonzeros past the first two of their groups
    (the residual they would have; at least one), at most l2 % of M of them (ties: the lower row), are `heavy` and
    take two slots each: the first two nonzeros of each group in one, the rest (at most two a group) in the other, a
    second 2:4 layer, so nothing of the row is left to the residual. The two slots
    of a heavy row are rows g and g + 8 of one warp's 16 (the same thread holds both accumulators and adds them before
    C's store); the other rows go in pairs to the remaining (g, g + 8), in their order, light pairs first. orow[slot]
    is C's row of a slot, -1 for padding, -2 for a heavy row's second layer (added to slot - 8). Ms is a multiple of
    16. Powerlaw rows (a few dense ones) leave the residual to a few thread pairs that walk K / 2 entries each on CUDA
    cores after the loop (bench/drafts/tc_sp24-next.md section 6).
    windowed (the nk layout's): the rows in their order instead, a warp's 16 slots taking the next rows while they fit (a
    heavy row two slots, g and g + 8 with g the warp's next free heavy position, the light rows the slots left in
    order), so that each warp's rows are one run of consecutive rows of y (its 16-bit stores of y fall on fewer sectors:
    1536x384 N = 1024 7.6 against 8.6 us, session 41); at most one slot a warp is left empty by a heavy row that did
    not fit. block (windowed, the kernel's row block of 64 wg slots): each block's rows one run [R0, R1) with R0 and R1
    multiples of 8 (but R1 = M), the rows past the last multiple of 8 that fit left to the next block, so that y's
    rows of a block are whole 16-byte units (nk's staged store at l2, session 42); Ms a multiple of block."""
    m, k, rows, cols, data = csr_parts(a)
    kg = max(1, -(-k // 4))
    _, rank = _group_rank(rows, cols, kg)
    res = np.bincount(rows[rank >= 2], minlength=m)
    order = np.argsort(-res, kind="stable")[:int(np.ceil(min(100, int(l2)) * m / 100))]
    heavy = np.zeros(m, dtype=bool)
    heavy[order[res[order] > 0]] = True
    orow, slot1 = _window_slots(heavy, block) if windowed else _paired_slots(heavy)
    srow = slot1[rows]  # each entry's slot: its row's, + 8 (the second layer) past a heavy row's first two a group
    srow[heavy[rows] & (rank >= 2)] += 8
    return sp.csr_matrix((data, (srow, cols)), shape=(len(orow), k)), orow


def _paired_slots(heavy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(orow [Ms], each row's first slot [M]) of `slots`: the light rows in pairs (g, g + 8) in their order, then each
    heavy row at g with its second layer at g + 8 (orow -2); Ms a multiple of 16."""
    m = len(heavy)
    light = np.nonzero(~heavy)[0]
    if len(light) % 2:
        light = np.append(light, -1)
    hv = np.nonzero(heavy)[0]
    first = np.concatenate([light[0::2], hv]).astype(np.int64)
    second = np.concatenate([light[1::2], np.full(len(hv), -2)]).astype(np.int64)
    npair = len(first)
    ms = 16 * max(1, -(-npair // 8))
    p = np.arange(npair)
    sa = 16 * (p // 8) + p % 8  # slot of the pair's first row: row g of its warp's 16
    orow = np.full(ms, -1, dtype=np.int32)
    orow[sa] = first
    orow[sa + 8] = second
    slot1 = np.empty(m, dtype=np.int64)  # each row's slot (a heavy row's first layer)
    slot1[first[first >= 0]] = sa[first >= 0]
    lone = second >= 0
    slot1[second[lone]] = sa[lone] + 8
    return orow, slot1


def _fill_warp(heavy: np.ndarray, r: int, end: int) -> tuple[list, int]:
    """One warp's 16 slots filled with rows r, r + 1, ... (below end) while they fit: a heavy row at the warp's next
    heavy position g (its second layer at g + 8, -2), the light rows in the slots left, in order. (slots, next row)."""
    hv, lt = [], []
    while r < end and 2 * len(hv) + len(lt) + (2 if heavy[r] else 1) <= 16:
        (hv if heavy[r] else lt).append(r)
        r += 1
    w = [-1] * 16
    for i, row in enumerate(hv):
        w[i], w[i + 8] = row, -2
    free = [p for p in range(16) if w[p] == -1]  # the heavy rows' slots hold a row or -2
    for p, row in zip(free, lt):
        w[p] = row
    return w, r


def _window_slots(heavy: np.ndarray, block: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(orow [Ms], each row's first slot [M]) of `slots(windowed=True)`: warps of 16 slots filled with the rows in
    order (_fill_warp); with block (a multiple of 16), blocks of block / 16 warps whose rows end at a multiple of 8."""
    m = len(heavy)
    orow: list = []
    r = 0
    while r < m:
        if not block:
            w, r = _fill_warp(heavy, r, m)
            orow.extend(w)
            continue
        end = r
        for _ in range(block // 16):  # as many rows as the block's warps hold
            _, end = _fill_warp(heavy, end, m)
        if end < m:
            end -= end % 8  # > r: a block of 16 slots or more holds 8 rows or more
        ws = []
        while r < end:
            w, r = _fill_warp(heavy, r, end)
            ws.extend(w)
        orow.extend(ws + [-1] * (block - len(ws)))
    if not orow:
        orow = [-1] * max(16, block)
    orow = np.asarray(orow, dtype=np.int32)
    slot1 = np.empty(m, dtype=np.int64)
    first = np.nonzero(orow >= 0)[0]
    slot1[orow[first]] = first
    return orow, slot1


def window_bounds(orow: np.ndarray, block: int, m: int) -> np.ndarray:
    """Each row block's first row of y, then M (int32 [Ms / block + 1]): the windows of `slots(windowed=True, block)`,
    [bounds[b], bounds[b + 1]) for block b (nk's staged store at l2)."""
    w = orow.reshape(-1, block)
    first = np.where(w >= 0, w, np.iinfo(np.int32).max).min(axis=1)
    first = np.minimum(first, m)  # an empty block (M = 0): its window empty
    return np.append(first, m).astype(np.int32)


PM_NONE = 0xFFFF  # perm: a position no column takes (the kernel copies zeros)
# the values perm, ov and ovc are built and tested at (the shipped space holds each at 0: session 50 measured them
# slower than the records); the tests, bench/drafts/kn_probe.py and bench/drafts/gather_calls.sh widen it: gather_space
GATHER_VALUES = {"perm": [0, 1, 2], "ov": [0, 1, 2, 4, 8], "ovc": [0, 1]}


def gather_space(space):
    """tc_sp24's space with perm, ov and ovc at GATHER_VALUES."""
    import dataclasses  # noqa: PLC0415
    return dataclasses.replace(space, params=[dataclasses.replace(p, values=GATHER_VALUES[p.name])
                                              if p.name in GATHER_VALUES else p for p in space.params])


PERM_OPEN = 1024  # perm: the groups of 4 the greedy chooses among at a time at d > 0.22 (all of them up to K = 4096)


def perm_open_groups(a: sp.csr_matrix) -> int:
    """The open groups of the perm greedies by A's density: 64 at d <= 0.12, 256 at <= 0.22, else PERM_OPEN. Uniform
    4096^2, 64-row blocks (session 47): d 0.1 leaves no residual at 64 (0.27 s against 1.23 at 1024), d 0.2 0.0005 % at
    256 (0.55 s against 1.36; 64: 0.07 %), d 0.3 needs 1024 (0.006 %; 256: 1.2 %). A layer's layout is built once, but a
    model's hundreds of layers add up (4096 x 14336 d 0.2: ~5 s at 1024)."""
    d = a.nnz / max(1, a.shape[0] * a.shape[1])
    return 64 if d <= 0.12 else 256 if d <= 0.22 else PERM_OPEN


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (int64)."""
    return np.bitwise_count(x).astype(np.int64)


def _cheapest_group(three: np.ndarray, two: np.ndarray, fill: np.ndarray, cap: int) -> np.ndarray:
    """The perm and ov greedies' choice, per row block: the open group where the unit placed makes the fewest rows with
    three nonzeros, then the fewest with two (three, two: masks of those rows [blocks, groups, words]); a group holding
    `cap` units (fill) is full."""
    cost = _popcount(three).sum(axis=2) * (np.int64(1) << 20) + _popcount(two).sum(axis=2)
    cost[fill >= cap] = np.int64(1) << 50
    return np.argmin(cost, axis=1)


def column_perms(a: sp.csr_matrix, rows: int, open_groups: int | None = None) -> np.ndarray:
    """perm int32 [NB, 4 ceil(K / 4)] (NB = ceil(M / rows)): for each row block of `rows` rows, the column of A at each
    position of the block's own order of K (-1: a position no column takes), chosen so that the block's rows have at
    most two nonzeros in each group of 4 consecutive positions wherever possible (what 2:4 holds; the rest is the
    residual). Greedy, the columns with the most nonzeros in the block first: each goes to the open group (at most
    `open_groups` at a time, by default perm_open_groups's for A's density; a full one replaced by a new one) where it
    makes the fewest rows with three nonzeros (then the fewest with two), each row of the block one bit of a mask.
    Uniform 4096 x 4096, 64-row blocks: the residual 0.95 / 3.6 / 7.6 % of the nonzeros in column order at d 0.1 / 0.2
    / 0.3, 0 / ~0 / 0.006 % permuted (session 46). Deterministic (no randomness)."""
    return _unit_perms(a, rows, 1, open_groups)


def pair_perms(a: sp.csr_matrix, rows: int, open_groups: int | None = None) -> np.ndarray:
    """column_perms' order (same format) that moves A's columns in pairs (2j, 2j + 1), a pair at positions (2i, 2i + 1),
    so that the kernel gathers B's rows by two-row TMA boxes (perm 2: half the boxes of perm 1). A group of 4 positions
    is two pairs; the greedy takes the pairs with the most nonzeros in the block first, each into the open group where it
    makes the fewest rows with three nonzeros, then with two. Uniform 256 x 2048, 64-row blocks: the residual ~0 / 0.03 /
    ~2 % of the nonzeros at d 0.1 / 0.2 / 0.3 (bench/drafts/perm_pairs_eval.py; column order 0.94 / 3.5 / 7.6 %)."""
    return _unit_perms(a, rows, 2, open_groups)


def _unit_perms(a: sp.csr_matrix, rows: int, unit: int, open_groups: int | None) -> np.ndarray:
    """column_perms (unit 1) and pair_perms (unit 2): A's columns moved in units of `unit` consecutive columns (u j ...
    u j + u - 1 to positions u i ...), a group of 4 positions holding 4 / unit units. Per row block, each unit's rows
    with >= 1 nonzero in it (p1) and with 2 (p2, pairs only: a row's pair holds at most 2); the units by count, each into
    the open group where it makes the fewest rows with three nonzeros (then with two): a row with two in the group gets
    a third from any nonzero of the unit, a row with one from a unit's two."""
    m, k, r, c, _ = csr_parts(a)
    rows, unit = int(rows), int(unit)
    open_groups = perm_open_groups(a) if open_groups is None else open_groups
    nb, w = max(1, -(-m // rows)), -(-rows // 64)
    nu = max(1, -(-k // unit))  # units
    per = 4 // unit  # units a group
    ng = max(1, -(-nu // per))  # groups
    within = r % rows
    bit = np.uint64(1) << (within % 64).astype(np.uint64)
    flat = ((r // rows) * nu + c // unit) * w + within // 64
    parts = []
    for h in range(unit):  # rows with column u j + h
        part = np.zeros(nb * nu * w, dtype=np.uint64)
        np.bitwise_or.at(part, flat[c % unit == h], bit[c % unit == h])
        parts.append(part.reshape(nb, nu, w))
    p1 = parts[0] if unit == 1 else parts[0] | parts[1]
    p2 = None if unit == 1 else parts[0] & parts[1]
    weight = _popcount(p1).sum(axis=2) + (0 if p2 is None else _popcount(p2).sum(axis=2))
    order = np.argsort(-weight, axis=1, kind="stable")
    s = max(1, min(int(open_groups), ng))
    m1 = np.zeros((nb, s, w), dtype=np.uint64)  # rows with >= 1 nonzero in the open group
    m2 = np.zeros((nb, s, w), dtype=np.uint64)  # rows with >= 2
    fill = np.zeros((nb, s), dtype=np.int64)
    gid = np.tile(np.arange(s, dtype=np.int64), (nb, 1))
    nxt = np.full(nb, s, dtype=np.int64)
    slot = np.empty((nb, nu), dtype=np.int64)  # each unit's slot: positions unit x slot ...
    bi = np.arange(nb)
    for step in range(nu):
        u = order[:, step]
        a1 = p1[bi, u]
        three, two = m2 & a1[:, None, :], m1 & a1[:, None, :]
        if p2 is not None:
            a2 = p2[bi, u]
            three, two = three | (m1 & a2[:, None, :]), two | a2[:, None, :]
        g = _cheapest_group(three, two, fill, per)
        slot[bi, u] = gid[bi, g] * per + fill[bi, g]
        m2[bi, g] |= m1[bi, g] & a1 if p2 is None else (m1[bi, g] & a1) | a2
        m1[bi, g] |= a1
        fill[bi, g] += 1
        full = bi[(fill[bi, g] == per) & (nxt < ng)]
        if len(full):
            gf = g[full]
            gid[full, gf] = nxt[full]
            nxt[full] += 1
            fill[full, gf] = 0
            m1[full, gf] = 0
            m2[full, gf] = 0
    perm = np.full((nb, 4 * ng), -1, dtype=np.int32)
    blocks, slots = np.repeat(bi, nu), slot.reshape(-1)
    for h in range(unit):
        col = np.tile(np.arange(nu, dtype=np.int64) * unit + h, nb)
        keep = col < k
        perm[blocks[keep], unit * slots[keep] + h] = col[keep]
    return perm


def permute_columns(a: sp.csr_matrix, perm: np.ndarray, rows: int) -> sp.csr_matrix:
    """A with each row's columns moved to their positions in its row block's order (perm of column_perms): M x
    perm.shape[1]."""
    a = sp.csr_matrix(a)
    m = a.shape[0]
    nb, kp = perm.shape
    inv = np.full((nb, a.shape[1]), -1, dtype=np.int64)
    b, p = np.nonzero(perm >= 0)
    inv[b, perm[b, p]] = p
    r = np.repeat(np.arange(m, dtype=np.int64), np.diff(a.indptr))
    out = sp.csr_matrix((a.data.copy(), inv[r // int(rows), a.indices], a.indptr.copy()), shape=(m, kp))
    out.sort_indices()
    return out


_PERMS: dict = {}  # (id(host), wg, l2, unit) -> (host, perm): the greedy once a matrix for every kc (unit 2: pairs)


def _perm_of(host, a2: sp.csr_matrix, wg: int, l2: int, unit: int = 1) -> np.ndarray:
    key = (id(host), wg, l2, unit)
    got = _PERMS.get(key)
    if got is None or got[0] is not host:
        if len(_PERMS) >= 8:
            _PERMS.pop(next(iter(_PERMS)))
        got = _PERMS[key] = (host, (pair_perms if unit == 2 else column_perms)(a2, 64 * wg))
    return got[1]


def compact_perm(a: sp.csr_matrix, perm: np.ndarray, rows: int, kc: int) -> tuple[np.ndarray, np.ndarray]:
    """(perm, pnc) with each row block's groups of 4 positions that hold a column with nonzeros in the block first (a
    whole group moved: 2:4 and perm 2's pairs stay as they were), perm cut after the most such groups of any block (in
    whole chunks of 32 kc positions), and pnc int32 [NB]: each block's own chunks (at least 1). A column with no
    nonzero in a block needs no position there: uniform d 0.02 leaves ~27 % of a 64-row block's columns empty (7.5 % of
    a 128-row block's), d 0.05 ~4 %; the kernel runs each block's own chunks (session 47)."""
    m, k, r, c, _ = csr_parts(a)
    nb, kp = perm.shape
    kc32 = 32 * int(kc)
    used = np.zeros((nb, k + 1), dtype=bool)  # column k: perm's -1 (no column)
    used[r // int(rows), c] = True
    full = used[np.arange(nb)[:, None], np.where(perm >= 0, perm, k)].reshape(nb, kp // 4, 4).any(axis=2)
    order = np.argsort(~full, axis=1, kind="stable")  # per block, its groups with nonzeros first, in their order
    groups = perm.reshape(nb, kp // 4, 4)[np.arange(nb)[:, None], order].reshape(nb, kp)
    pnc = np.maximum(1, -(-4 * full.sum(axis=1) // kc32)).astype(np.int32)
    keep = min(kp, int(pnc.max()) * kc32)
    out = np.full((nb, max(keep, kc32)), -1, dtype=np.int32)
    out[:, :keep] = groups[:, :keep]
    return out, pnc


def build_permuted(a: sp.csr_matrix, kc: int, wg: int, dtype: str = "fp16", perm: np.ndarray | None = None):
    """build() of A with each row block's columns in its own order (perm: column_perms(a, 64 wg) unless given), the
    groups without nonzeros in a block moved past its own chunks (compact_perm): (stream, rptr, rcol, rval, pm, pnc,
    info). The stream holds the 2:4 part at the permuted positions (NC: the most chunks of any block); the residual
    keeps A's columns (B's rows, read directly); pm uint16 [NBLK x 32 kc NC] is the column of each position of each row
    block of the stream (PM_NONE: zeros), the kernel's producer gathers B's rows by it, a one-row TMA box each (K <
    PM_NONE; a pair_perms order: a two-row box a pair); pnc int32 [NBLK] each block's own chunks, the ones it runs."""
    a = clean_csr(a)  # explicit zeros dropped, as the greedies and compact_perm see A (a copy: the caller's stays)
    m, k = a.shape
    if k >= PM_NONE:
        raise ValueError(f"tc_sp24 perm: K = {k} (below {PM_NONE}: 16-bit positions)")
    perm = column_perms(a, 64 * wg) if perm is None else perm
    perm, pnc = compact_perm(a, perm, 64 * wg, kc)
    ap = permute_columns(a, perm, 64 * wg)
    stream, rptr, rcol, rval, info = build(ap, kc, wg, dtype)
    nres = int(rptr[-1])
    if nres:
        er = np.repeat(np.arange(m, dtype=np.int64), np.diff(rptr))
        cols = perm[er // (64 * wg), rcol[:nres]].astype(np.int32)
        order = np.lexsort((cols, er))
        rcol = np.concatenate([cols[order], rcol[nres:]]).astype(np.int32)
        rval = np.concatenate([rval[:nres][order], rval[nres:]]).astype(np.uint16)
    nblk, nc = info["NBLK"], info["NC"]
    pm = np.full((nblk, 32 * kc * nc), PM_NONE, dtype=np.uint16)
    pm[:perm.shape[0], :perm.shape[1]] = np.where(perm >= 0, perm, PM_NONE)
    pnc_all = np.ones(nblk, dtype=np.int32)
    pnc_all[:len(pnc)] = pnc
    info = dict(info, K=k, perm=True, chunks=int(pnc.sum()))
    return stream, rptr, rcol, rval, pm.reshape(-1), pnc_all, info


def overflow_positions(a: sp.csr_matrix, rows: int, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """ov: (take bool, pos int64), one of each per entry of A in CSR order (csr_parts), placing the residual (the
    entries past the first two of their row and group of 4 columns) into `npos` extra positions of each row block of
    `rows` rows, so that 2:4 holds them: each position is one column of A (B's row, gathered by the block's producer),
    and no row of the block gets three entries in a group of 4 positions. Greedy, per block the columns with the most
    residual entries first, each into the open group (npos / 4 of them) where it adds the fewest rows with two; a row
    that already has two there keeps that entry in the residual (take False), as does a column once the groups are
    full. take[e]: entry e moves to position pos[e] (pos -1 elsewhere). Deterministic."""
    m, k, r, c, _ = csr_parts(a)
    rows, npos = int(rows), int(npos)
    take = np.zeros(len(r), dtype=bool)
    pos = np.full(len(r), -1, dtype=np.int64)
    ngr = npos // 4
    if len(r) == 0 or ngr == 0:
        return take, pos
    _, rank = _group_rank(r, c, max(1, -(-k // 4)))
    res = np.nonzero(rank >= 2)[0]
    if len(res) == 0:
        return take, pos
    rr, cc = r[res], c[res]
    w = -(-rows // 64)
    blk, within = rr // rows, rr % rows
    key = blk * k + cc
    uk, inv = np.unique(key, return_inverse=True)  # the (block, column) pairs with residual entries
    masks = np.zeros((len(uk), w), dtype=np.uint64)
    np.bitwise_or.at(masks, (inv, within // 64), np.uint64(1) << (within % 64).astype(np.uint64))
    ub = uk // k
    cnt = _popcount(masks).sum(axis=1)
    order = np.lexsort((uk % k, -cnt, ub))  # by block, then the most entries first, then the column
    ub_o = ub[order]
    start = np.searchsorted(ub_o, ub_o, side="left")
    step = np.arange(len(order)) - start  # the pair's rank within its block
    blocks, bix = np.unique(ub_o, return_inverse=True)
    nb, ns = len(blocks), int(step.max()) + 1
    slot = np.full((nb, ns), -1, dtype=np.int64)  # the pair at each step of each block
    slot[bix, step] = order
    m1 = np.zeros((nb, ngr, w), dtype=np.uint64)  # rows with >= 1 entry in the group
    m2 = np.zeros((nb, ngr, w), dtype=np.uint64)  # rows with 2
    fill = np.zeros((nb, ngr), dtype=np.int64)
    upos = np.full(len(uk), -1, dtype=np.int64)
    ukeep = np.zeros((len(uk), w), dtype=np.uint64)
    bi = np.arange(nb)
    for s in range(ns):
        u = slot[:, s]
        live = (u >= 0) & (fill < 4).any(axis=1)
        if not live.any():
            continue
        cm = np.where(live[:, None], masks[np.maximum(u, 0)], np.uint64(0))
        g = _cheapest_group(m2 & cm[:, None, :], m1 & cm[:, None, :], fill, 4)
        keep = cm & ~m2[bi, g]
        live &= _popcount(keep).sum(axis=1) > 0
        lb, lg = bi[live], g[live]
        upos[u[live]] = lg * 4 + fill[lb, lg]
        ukeep[u[live]] = keep[live]
        m2[lb, lg] |= m1[lb, lg] & keep[live]
        m1[lb, lg] |= keep[live]
        fill[lb, lg] += 1
    ep = upos[inv]
    bitset = (ukeep[inv, within // 64] >> (within % 64).astype(np.uint64)) & np.uint64(1)
    ok = (ep >= 0) & (bitset == 1)
    take[res[ok]] = True
    pos[res[ok]] = ep[ok]
    return take, pos


def build_overflow(a: sp.csr_matrix, kc: int, wg: int, ov: int, dtype: str = "fp16"):
    """build() of A with ov overflow chunks (the template's ov): (stream, rptr, rcol, rval, pm, info). The residual's
    entries that overflow_positions places go to ov chunks of 32 kc positions past K's own NC0 = ceil(K / 32 kc)
    chunks (the stream's NC = NC0 + ov); pm uint16 [NBLK x 32 kc ov] is the column of A (B's row) at each of a row
    block's overflow positions (PM_NONE: zeros); what they cannot take stays in the residual (A's columns)."""
    m, k = a.shape
    kc, wg, ov = int(kc), int(wg), int(ov)
    if ov < 1:
        raise ValueError(f"tc_sp24 ov: {ov} chunks (at least 1)")
    if k >= PM_NONE:
        raise ValueError(f"tc_sp24 ov: K = {k} (below {PM_NONE}: 16-bit positions)")
    kc32 = 32 * kc
    k0 = kc32 * max(1, -(-k // kc32))
    npos = kc32 * ov
    _, _, r, c, data = csr_parts(a)
    take, pos = overflow_positions(a, 64 * wg, npos)
    cols = np.where(take, k0 + pos, c)
    a2 = sp.csr_matrix((data, (r, cols)), shape=(m, k0 + npos))
    a2.sort_indices()
    stream, rptr, rcol, rval, info = build(a2, kc, wg, dtype)
    if int(rptr[-1]) and int(rcol[:int(rptr[-1])].max()) >= k:
        raise AssertionError("tc_sp24 ov: an overflow position in the residual")
    nblk = info["NBLK"]
    pm = np.full((nblk, npos), PM_NONE, dtype=np.uint16)
    pm[r[take] // (64 * wg), pos[take]] = c[take]
    info = dict(info, K=k, ov=ov, overflow=int(take.sum()))
    return stream, rptr, rcol, rval, pm.reshape(-1), info


def kunits(k: int, dtype: str) -> int:
    """A's columns in the stream's 16-bit units: K (fp16, bf16), 2 K (tf32: a float as two halves)."""
    return 2 * int(k) if dtype == "tf32" else int(k)


def split_tf32(a: sp.csr_matrix):
    """split() for tf32 in A's 16-bit view: (nib uint8 [M, Kp], vals uint16 [M, 2 Kp], residual csr of fp32 values),
    Kp = ceil(K / 2) pairs of columns; per row and pair its first nonzero (column order) rounded to TF32 at its position's
    nibble (0b0100 / 0b1110), its low half then its high half in vals; a pair's second nonzero to the residual."""
    m, k, rows, cols, data = csr_parts(a)
    kp = max(1, -(-k // 2))
    key, rank = _group_rank(rows, cols, kp, 2)
    first = rank == 0
    nib = np.full(m * kp, EMPTY_NIBBLE, dtype=np.uint8)
    nib[key[first]] = np.where(cols[first] % 2 == 1, 0xE, EMPTY_NIBBLE).astype(np.uint8)
    vals = np.zeros(m * kp, dtype=np.uint32)
    vals[key[first]] = tf32_round(np.asarray(data[first], dtype=np.float32)).view(np.uint32)
    res = ~first
    resid = sp.csr_matrix((np.asarray(data[res], dtype=np.float32), (rows[res], cols[res])), shape=(m, k),
                          dtype=np.float32)
    resid.sort_indices()
    return nib.reshape(m, kp), vals.view(np.uint16).reshape(m, 2 * kp), resid


def split(a: sp.csr_matrix, dtype: str = "fp16"):
    """(nib uint8 [Mp0, Kg], vals uint16 [Mp0, 2 Kg], residual csr) of A: per row and group of 4 columns the kept pair's
    positions as one metadata nibble and its two 16-bit values (module docstring), the rest as a CSR matrix of the
    same shape. Mp0 = M, Kg = ceil(K / 4) (the caller pads)."""
    m, k, rows, cols, data = csr_parts(a)
    kg = max(1, -(-k // 4))
    key, rank = _group_rank(rows, cols, kg)
    bits = half_bits(data, dtype).astype(np.uint16)
    pos = (cols % 4).astype(np.uint8)
    nib = np.full(m * kg, EMPTY_NIBBLE, dtype=np.uint8)
    vals = np.zeros(2 * m * kg, dtype=np.uint16)
    r0, r1 = rank == 0, rank == 1
    k0, k1 = key[r0], key[r1]
    cnt = np.bincount(key[rank < 2], minlength=m * kg)
    p0 = np.zeros(m * kg, dtype=np.uint8)
    p0[k0] = pos[r0]
    two = cnt == 2
    p1 = np.zeros(m * kg, dtype=np.uint8)
    p1[k1] = pos[r1]
    nib[two] = p0[two] | (p1[two] << 2)
    vals[2 * k0] = bits[r0]  # slot 0 (moved to slot 1 below where a lone nonzero sits at position 3)
    vals[2 * k1 + 1] = bits[r1]
    one = cnt == 1
    lo = one & (p0 < 3)
    nib[lo] = p0[lo] | (3 << 2)
    hi = np.nonzero(one & (p0 == 3))[0]
    nib[hi] = 3 << 2  # (0, 3): the value at slot 1
    vals[2 * hi + 1] = vals[2 * hi]
    vals[2 * hi] = 0
    res = rank >= 2
    resid = sp.csr_matrix((data[res], (rows[res], cols[res])), shape=(m, k), dtype=np.float32)
    resid.sort_indices()
    return nib.reshape(m, kg), vals.reshape(m, 2 * kg), resid


def build(a: sp.csr_matrix, kc: int, wg: int, dtype: str = "fp16"):
    """(stream uint8, rptr int32, rcol int32, rval uint16, info) of A for chunks of kc k32 steps and row blocks of wg
    warpgroups (module docstring)."""
    kc, wg = int(kc), int(wg)
    if kc not in (1, 2, 4) or wg not in (1, 2):
        raise ValueError(f"tc_sp24: kc = {kc} (1, 2 or 4), wg = {wg} (1 or 2)")
    m, k = a.shape
    tf = dtype == "tf32"  # the stream over A's 16-bit view (module docstring)
    nblk, nc = dims(m, kunits(k, dtype), kc, wg)
    mp, kp = 64 * wg * nblk, 32 * kc * nc
    nib0, vals0, resid = split_tf32(a) if tf else split(a, dtype)
    nib = np.full((mp, kp // 4), EMPTY_NIBBLE, dtype=np.uint8)
    nib[:m, :nib0.shape[1]] = nib0
    vals = np.zeros((mp, kp // 2), dtype=np.uint16)
    vals[:m, :vals0.shape[1]] = vals0
    # values: rows (b, w, warp, j & 1, g), columns (c, kk, j >> 1, t, half) -> (c, b, w, kk, warp, g, t, j >> 1, j & 1, half)
    v = vals.reshape(nblk, wg, 4, 2, 8, nc, kc, 2, 4, 2).transpose(5, 0, 1, 6, 2, 4, 8, 7, 3, 9)
    v = np.ascontiguousarray(v).reshape(nc, nblk, wg, kc, VALS // 2).view(np.uint8)
    # metadata: rows (b, w, warp, i >> 2, g), groups (c, kk, q, i & 3) -> (c, b, w, kk, warp, g, q, i >> 2, i & 3)
    t = nib.reshape(nblk, wg, 4, 2, 8, nc, kc, 2, 4).transpose(5, 0, 1, 6, 2, 4, 7, 3, 8)
    t = np.ascontiguousarray(t).reshape(nc, nblk, wg, kc, (TILE - VALS), 2)
    meta = (t[..., 0] | (t[..., 1] << 4)).astype(np.uint8)
    stream = np.concatenate([v.reshape(nc, nblk, wg, kc, VALS), meta], axis=-1).reshape(-1)
    if stream.nbytes >= 2 ** 31:
        raise ValueError("tc_sp24 stream over 2 GB")
    rptr = resid.indptr.astype(np.int32)
    rcol = resid.indices.astype(np.int32)
    vt = np.uint32 if tf else np.uint16
    rval = (np.asarray(resid.data, dtype=np.float32).view(np.uint32) if tf else
            half_bits(resid.data, dtype).astype(np.uint16))
    if len(rcol) == 0:  # never a zero-size device array
        rcol, rval = np.zeros(1, dtype=np.int32), np.zeros(1, dtype=vt)
    if len(rval) % 2 and not tf:  # rq reads rval as 32-bit words (the word of an entry, its half by the entry's parity)
        rval = np.append(rval, np.uint16(0))
    nnz = int(a.nnz)
    info = {"kc": kc, "wg": wg, "M": m, "K": k, "NBLK": nblk, "NC": nc, "stream_bytes": int(stream.nbytes),
            "nnz": nnz, "residual": int(resid.nnz), "residual_share": resid.nnz / nnz if nnz else 0.0,
            "bytes": int(stream.nbytes + rptr.nbytes + (8 if tf else 6) * resid.nnz), "dtype": dtype}
    return stream, rptr, rcol, rval, info


def decode(stream: np.ndarray, rptr, rcol, rval, info: dict, pm: np.ndarray | None = None) -> np.ndarray:
    """Dense M x K uint16 bit patterns of A rebuilt as the kernel reads it: each tile's thread registers and metadata
    words (module docstring), each nibble's two positions taking the pair's two values (pm, build_permuted's: each
    row block's positions back to their columns; a value at a position no column takes fails), plus the residual; a
    residual entry landing on a cell the 2:4 part already holds fails. For tests."""
    kc, wg, m, k, nblk, nc = (info[x] for x in ("kc", "wg", "M", "K", "NBLK", "NC"))
    tf = info.get("dtype") == "tf32"  # the 16-bit view (2 K halves), the fp32 bits returned (uint32)
    if tf and pm is not None:
        raise ValueError("tc_sp24 decode: tf32 has no perm / ov")
    tiles = stream.reshape(nc, nblk, wg, kc, TILE)
    out = np.zeros((64 * wg * nblk, 32 * kc * nc), dtype=np.uint16)
    for c in range(nc):
        for b in range(nblk):
            for w in range(wg):
                for kk in range(kc):
                    tl = tiles[c, b, w, kk]
                    regs = tl[:VALS].view(np.uint32).reshape(128, 4)
                    words = tl[VALS:].view(np.uint32).reshape(4, 16)
                    for tw in range(128):
                        wp, lane = divmod(tw, 32)
                        g, t = divmod(lane, 4)
                        for j in range(4):
                            row = 64 * (b * wg + w) + 16 * wp + g + 8 * (j & 1)
                            grp = t + 4 * (j >> 1)  # group of the k-step
                            # the nibble of (row, grp) lives in the word of lane 4 g + grp // 4 at i = 4 (j & 1) + grp % 4
                            mw = int(words[wp, 2 * g + grp // 4])
                            nb = (mw >> (4 * (4 * (j & 1) + grp % 4))) & 0xF
                            p0, p1 = nb & 3, nb >> 2
                            assert p0 != p1, "invalid metadata"
                            col = 32 * (c * kc + kk) + 4 * grp
                            reg = int(regs[tw, j])
                            for s, p in ((0, p0), (1, p1)):
                                v = (reg >> (16 * s)) & 0xFFFF
                                if v:
                                    out[row, col + p] = v
    if pm is not None:  # perm: pm covers every position; ov: the last ones (those before are A's columns)
        pm = np.asarray(pm).astype(np.int64).reshape(nblk, -1)
        pm[pm == PM_NONE] = -1
        off = out.shape[1] - pm.shape[1]
        orig = np.zeros((out.shape[0], max(k, off)), dtype=np.uint16)
        orig[:, :off] = out[:, :off]
        for b in range(nblk):
            r0 = 64 * wg * b
            used = pm[b] >= 0
            assert not out[r0:r0 + 64 * wg, off + np.nonzero(~used)[0]].any(), "a value at a position no column takes"
            rr, jj = np.nonzero(out[r0:r0 + 64 * wg, off:])
            assert used[jj].all()
            cc = pm[b][jj]
            assert not orig[r0 + rr, cc].any(), "two values for one entry"
            orig[r0 + rr, cc] = out[r0 + rr, off + jj]
        out = orig
    out = np.ascontiguousarray(out[:m, :2 * k]).view(np.uint32) if tf else out[:m, :k].copy()
    for r in range(m):
        for e in range(int(rptr[r]), int(rptr[r + 1])):
            assert out[r, int(rcol[e])] == 0, "a residual entry on a cell the 2:4 part holds"
            out[r, int(rcol[e])] = rval[e]
    return out


def threads(config: dict) -> int:
    """wg consumer warpgroups and the producer warp (pw 1: a producer warpgroup, for setmaxnreg; perm: a producer
    warpgroup whose lanes gather B's rows; ov: the producer warp's lanes gather them at kc 1, a warpgroup's else)."""
    gather_wg = config.get("perm", 0) or (config.get("ov", 0) and config["kc"] > 1)
    return 128 * config["wg"] + (128 if config.get("pw", 0) or gather_wg else 32)


def multicast(config: dict) -> int:
    """mc: the row blocks of a cluster that share B's boxes by TMA multicast (1: no cluster)."""
    return int(config.get("mc", 1))


def layout(kernel):
    """(stream, rptr, rcol, rval, orow, Ms, gather) of the kernel's A on the device, built once a (kc, wg, dtype, l2,
    perm / ov): at l2 0 the rows as they are (orow None, Ms = M), else over slots (`slots`; for an nk kernel windowed by
    row blocks of 64 wg slots, orow then followed by the blocks' window_bounds); gather None, or (its device arrays,
    the stream's chunk count NC): at perm 1 / 2 (pm, pnc), each row block's order of K and its own chunk count
    (build_permuted over column_perms / pair_perms, after the slots); at ov (pm,), each row block's overflow positions
    (build_overflow, after the slots; NC: K's own chunks and ov)."""
    cfg, dtype = kernel.config, kernel.dtype
    kc, wg, l2 = cfg["kc"], cfg["wg"], int(cfg.get("l2", 0))
    ov, unit = int(cfg.get("ov", 0)), int(cfg.get("perm", 0))
    if ov or unit:
        def make(host):
            a2, orow = slots(host, l2) if l2 else (host, None)
            *parts, info = (build_overflow(a2, kc, wg, ov, dtype) if ov else
                            build_permuted(a2, kc, wg, dtype, _perm_of(host, a2, wg, l2, unit)))
            # flat (the device cache uploads each array of the tuple): the stream's four, orow, Ms, NC, then pm (pnc)
            return (*parts[:4], np.zeros(1, np.int32) if orow is None else orow, int(a2.shape[0]), int(info["NC"]),
                    *parts[4:])
        got = kernel.a.cached(("tc_sp24", kc, wg, dtype, l2, *(("ov", ov) if ov else ("perm", unit))), make)
        return (*got[:4], got[4] if l2 else None, got[5], (tuple(got[7:]), got[6]))
    return (*_layout(kernel, kc, wg, l2, dtype), None)


def _layout(kernel, kc, wg, l2, dtype):
    if not l2:
        got = kernel.a.cached(("tc_sp24", kc, wg, dtype), lambda host: build(host, kc, wg, dtype)[:4])
        return (*got, None, kernel.a.shape[0])

    win = getattr(kernel, "layout", "kn") == "nk"  # each block's rows one run of y's rows (slots' windowed, block)

    def make(host):
        if not win:
            a2, orow = slots(host, l2)
            return (*build(a2, kc, wg, dtype)[:4], orow, int(a2.shape[0]))
        a2, orow = slots(host, l2, windowed=True, block=64 * wg)
        # nk: the row blocks' windows of y after the row map (the kernel reads orow[Ms + rb], orow[Ms + rb + 1])
        ext = np.concatenate([orow, window_bounds(orow, 64 * wg, host.shape[0])])
        return (*build(a2, kc, wg, dtype)[:4], ext, int(a2.shape[0]))
    return kernel.a.cached(("tc_sp24", kc, wg, dtype, l2, *(("win8",) if win else ())), make)


def _dims(config: dict, m: int, k: int, n: int):
    """(NBLK of the stream, row blocks launched (a multiple of mc), NC, column tiles, chunks per split)."""
    nblk, nc = dims(m, k, config["kc"], config["wg"])
    mc = multicast(config)
    rows = max(1, -(-m // (64 * config["wg"])))
    ntiles = max(1, -(-n // config["bn"]))
    return nblk, -(-rows // mc) * mc, nc, ntiles, -(-nc // config["splitk"])


def stage_bytes(config: dict) -> int:
    """A pipeline stage: B's 32 kc x bn slice (bn / 64 boxes of 64 columns, 128-byte swizzle) and, unless ar (A's
    registers straight from global memory), the row block's wg kc A tiles."""
    a_tiles = 0 if config.get("ar", 0) else config["wg"] * config["kc"] * TILE
    return 64 * config["kc"] * config["bn"] + a_tiles


def shared_bytes(config: dict) -> int:
    """1024 bytes of alignment slack (B's stages start 1024-aligned), the stages, 16 bytes of the split-K flag, two
    mbarriers (full, empty) a stage; pt: 16 bytes of alignment and C's staging (4 wg warps x 16 rows x 2 bn + 16); rs:
    16 bytes of alignment and the residual's staging (a consumer warp: 16 rows x rs entries of 2 bn + 16 bytes of B and
    4 of value); rq: 16 bytes of alignment and the residual's ring (a consumer warp: rq slots of a round's 32 entries of
    2 bn bytes of B and 2 rq index slots of 32 columns and 32 value words)."""
    staging = 16 + 4 * config["wg"] * 16 * (2 * config["bn"] + 16) if config.get("pt", 0) else 0
    rs = int(config.get("rs", 0))
    rstage = 16 + 4 * config["wg"] * (16 * rs * (2 * config["bn"] + 16) + 64 * rs) if rs else 0
    rq = int(config.get("rq", 0))
    ring = 16 + 4 * config["wg"] * rq * (64 * config["bn"] + 512) if rq else 0
    return 1024 + config["stages"] * stage_bytes(config) + 16 + 16 * config["stages"] + staging + rstage + ring


NK_RESIDUAL = 32  # nk: the residual entries of a row taken from the stages (the template's NKR)


def nk_list_bytes(config: dict) -> int:
    """nk natively: 16 bytes of alignment and each consumer warp's list of its 16 rows' first NK_RESIDUAL residual
    entries (a column and a value word each)."""
    return 16 + 4 * config["wg"] * 16 * NK_RESIDUAL * 8


def nk_window_extra(config: dict) -> int:
    """nk at l2 with pt: what y's window staging (bn columns of 128 wg + 16 bytes, past the lists) needs beyond pt's C
    staging in shared_bytes."""
    if not (config.get("pt", 0) and config.get("l2", 0)):
        return 0
    return max(0, config["bn"] * (128 * config["wg"] + 16) - 4 * config["wg"] * 16 * (2 * config["bn"] + 16))


def smem_bytes(kernel) -> int:
    if getattr(kernel, "layout", "kn") != "nk":
        return shared_bytes(kernel.config)
    return shared_bytes(kernel.config) + nk_list_bytes(kernel.config) + nk_window_extra(kernel.config)


def sm_count() -> int:
    """The GPU's SMs (132 where none is visible: CPU tests)."""
    try:
        from sparse_autotune.device.gpu import gpu_info  # noqa: PLC0415
        return int(gpu_info().sm_count)
    except Exception:  # noqa: BLE001 - no GPU, no CuPy
        return 132


def geometry(kernel, n: int):
    """One block a tile (row block, split, column tile), or at pt 1 a persistent grid of one block an SM (at most one
    a tile) that loops over the tiles."""
    m, k = kernel.a.shape
    if kernel.config.get("l2", 0):
        m = layout(kernel)[5]  # the slots are the kernel's rows
    _, rows, _, ntiles, _ = _dims(kernel.config, m, kunits(k, getattr(kernel, "dtype", "fp16")), n)
    tiles = rows * kernel.config["splitk"] * ntiles
    pt = int(kernel.config.get("pt", 0))
    return ((min(tiles, pt * sm_count()) if pt else tiles),), (threads(kernel.config),)


def workspace_shape(config: dict, nblk: int, ntiles: int) -> tuple[int, int]:
    """Split-K's workspace (core.families.splitk_shape): a slice per (row block, column tile, split) of the consumer
    threads' (128 wg) bn / 2 fp32 accumulators, a counter per (row block, column tile)."""
    return splitk_shape(config["splitk"], nblk * ntiles, 128 * config["wg"] * config["bn"] // 2)


def _wgmma_host():
    from sparse_autotune.core.families import get_family  # noqa: PLC0415 - tc_wgmma's tensor-map helpers
    return get_family("tc_wgmma").host


def tensor_map_args(n: int, k: int, config: dict, address: int) -> dict:
    """cuTensorMapEncodeTiled's arguments for B: tc_wgmma's (K x N row-major 16-bit, rows >= K and columns >= N read
    zeros, boxes of 64 columns, the 128-byte swizzle: LBO = the box's rows x 128 bytes, SBO = 1024) with a box of one
    chunk's 32 kc rows (at mc 2 half of it: each block of the cluster multicasts its half) at B's address."""
    if int(config.get("perm", 0)):  # perm: boxes of one row (2: two), the producer gathers B's rows by the block's order
        return tensor_map_args_rows(n, k, address, int(config["perm"]))
    rows = 32 * int(config["kc"]) // multicast(config)
    return {**_wgmma_host().tensor_map_args(n, k, {"kc": rows // 16}), "address": int(address)}


def tensor_map_args_rows(n: int, k: int, address: int, rows: int = 1) -> dict:
    """perm's and ov's row-box map of B: boxes of 64 columns x `rows` rows (perm 2: two), the 128-byte swizzle (a box
    lands as those rows of a whole box would: TMA's swizzle follows the destination address, CUDA C++ Programming
    Guide, TMA swizzle: an offset of (address / 128) % 8 in the pattern)."""
    wg = _wgmma_host()
    return wg.tiled_map(n, k, (64, int(rows)), wg.TMAP_SWIZZLE_128B, address)


def nk_k_align(dtype: str) -> int:
    """x's K must be a multiple of this for its tensor map (rows of a multiple of 16 bytes): 8 16-bit or 4 fp32 elements."""
    return 4 if dtype == "tf32" else 8


def tensor_map_args_nk(n: int, k: int, config: dict, address: int, dtype: str = "fp16") -> dict:
    """nk (nn.Linear's x, N x K row-major, as the wgmma's K-major B): dims {K, N} (innermost first), a box of one swizzle
    row's columns (128 bytes: 64 16-bit or, tf32, 32 fp32 columns; at kc 1 a chunk's 64 bytes) x bn rows of x (columns
    >= K and rows >= N read zeros), swizzled at the box row's width (128 bytes; kc 1: 64), at x's address. 16-bit
    elements (K % 8 == 0: rows of a multiple of 16 bytes) or, tf32, 32-bit ones (K % 4 == 0)."""
    n, k, align = int(n), int(k), nk_k_align(dtype)
    if n <= 0 or k <= 0 or k % align:
        raise ValueError(f"tc_sp24 nk: x's tensor map needs K % {align} == 0 and N > 0 (N = {n}, K = {k})")
    wg = _wgmma_host()
    elem = 4 if dtype == "tf32" else 2
    row = min(128, 64 * int(config["kc"]))  # bytes of a box row
    return wg.tiled_map(k, n, (row // elem, int(config["bn"])),
                        wg.TMAP_SWIZZLE_128B if row == 128 else wg.TMAP_SWIZZLE_64B, address, elem)


def _encode(t: dict) -> bytes:
    return _wgmma_host().encode_tensor_map(t).tobytes()


def args(kernel, n: int, b, c, bias=None) -> tuple:
    """kn: (..., B, C, M, N, K, ...); nk (kernel.layout, b is x N x K, c is y N x M): the bias right after C (None or 0:
    a null pointer, no bias) and x's tensor map (tensor_map_args_nk)."""
    from sparse_autotune.device.kernel import BParam  # noqa: PLC0415
    cfg = kernel.config
    nk = getattr(kernel, "layout", "kn") == "nk"
    stream, rptr, rcol, rval, orow, m, gather = layout(kernel)  # l2 > 0: M is the slot count, orow each slot's row of C
    k = kernel.a.shape[1]
    nblk, rows, nc, ntiles, cps = _dims(cfg, m, kunits(k, kernel.dtype), n)
    if gather is not None:  # perm / ov: the stream's chunks (perm: the most of any row block's; ov: K's and ov)
        nc = gather[1]
        cps = -(-nc // cfg["splitk"])
    ws, counters = splitk_workspace(kernel, "tc_sp24", workspace_shape(cfg, rows, ntiles), n)
    bc = (b, c, np.uint64(0) if bias is None else bias) if nk else (b, c)
    out = (stream, rptr, rcol, rval, *(() if orow is None else (orow,)), *(gather[0] if gather else ()), ws, counters,
           *bc, np.int32(m), np.int32(n), np.int32(k), np.int32(nc), np.int32(nblk), np.int32(cps), np.int32(ntiles))
    if nk:
        out = (*out, np.int32(kernel.a.shape[0]))  # MY: y's row length (l2: M above is the slot count)
    tmap, ok = (functools.partial(tensor_map_args_nk, dtype=kernel.dtype), k % nk_k_align(kernel.dtype) == 0) if nk \
        else (tensor_map_args, n % 8 == 0)
    rowmap = int(cfg.get("ov", 0)) and not int(cfg.get("ovc", 0))  # ov: the overflow chunks' row-box map (tmap1)
    if not (n > 0 and ok):  # never launched (infeasible); a_bytes() asks for N = 1
        return (*out, *(BParam(128, lambda b_ptr: bytes(128)) for _ in range(2 if rowmap else 1)))
    out = (*out, BParam(128, lambda b_ptr: _encode(tmap(n, k, cfg, b_ptr))))
    if rowmap:
        out = (*out, BParam(128, lambda b_ptr: _encode(tensor_map_args_rows(n, k, b_ptr))))
    return out


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """For another N: a narrower column tile, then less split-K; else as stored."""
    return adapt_params(space, config, dtype, env, limits, ("bn", "splitk"))
