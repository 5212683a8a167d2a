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


TS_T = 14  # ts: B's columns scaled to a largest magnitude in [2^T, 2^(T+1)) (fp16's largest finite value: 65504)


def ts(kernel) -> bool:
    """The template's ts: tf32 in kn (session 56), or in nk with tsn 1 (session 57): fp16 math on A's rows and B's
    columns (nk: x's rows, the tokens) scaled by powers of two."""
    if getattr(kernel, "dtype", "") != "tf32":
        return False
    return getattr(kernel, "layout", "kn") != "nk" or bool(int((getattr(kernel, "config", None) or {}).get("tsn", 0)))


def math_dtype(kernel) -> str:
    """The dtype of the kernel's stream and B: fp16 for tf32 in kn (ts), else the kernel's."""
    return "fp16" if ts(kernel) else getattr(kernel, "dtype", "fp16")


def _row_exponents(a: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(A cleaned, in float32; each row's e, its largest magnitude in [2^e, 2^(e + 1)), 0 for a row without a nonzero
    or finite value; rinv = 2^e, float32): the powers of two of scale_rows and row_scales."""
    a = clean_csr(a).astype(np.float32)
    m = a.shape[0]
    nz = np.diff(a.indptr) > 0
    mx = np.zeros(m, dtype=np.float32)
    if a.nnz:
        mx[nz] = np.maximum.reduceat(np.abs(a.data), a.indptr[:-1][nz])
    e = np.zeros(m, dtype=np.int32)
    pos = np.isfinite(mx) & (mx > 0)
    e[pos] = np.frexp(mx[pos])[1] - 1
    return a, e, np.ldexp(np.ones(m, dtype=np.float32), e).astype(np.float32)


def scale_rows(a: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """(A with each row times a power of two, its largest magnitude in [1, 2) (float32), and each row's inverse scale
    rinv (float32; 1 for a row without a nonzero value)): exact, so that fp16 holds each row as TF32 would hold its
    values to 10 bits, a row's values under 2^-24 of its largest flushing to zero (TF32 keeps fp32's exponent)."""
    a, e, rinv = _row_exponents(a)
    out = a.copy()
    out.data = np.ldexp(a.data, np.repeat(-e, np.diff(a.indptr))).astype(np.float32)
    return out, rinv


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
    tsm = ts(kernel)  # tf32 in kn: the stream of A's rows scaled into fp16 (scale_rows), built as fp16's
    src = (lambda host: scale_rows(host)[0]) if tsm else (lambda host: host)
    bdt, kdt = ("fp16", "tf32s") if tsm else (dtype, dtype)
    if not l2:
        got = kernel.a.cached(("tc_sp24", kc, wg, kdt), lambda host: build(src(host), kc, wg, bdt)[:4])
        return (*got, None, kernel.a.shape[0])

    win = getattr(kernel, "layout", "kn") == "nk"  # each block's rows one run of y's rows (slots' windowed, block)

    def make(host):
        host = src(host)
        if not win:
            a2, orow = slots(host, l2)
            return (*build(a2, kc, wg, bdt)[:4], orow, int(a2.shape[0]))
        a2, orow = slots(host, l2, windowed=True, block=64 * wg)
        # nk: the row blocks' windows of y after the row map (the kernel reads orow[Ms + rb], orow[Ms + rb + 1])
        ext = np.concatenate([orow, window_bounds(orow, 64 * wg, host.shape[0])])
        return (*build(a2, kc, wg, bdt)[:4], ext, int(a2.shape[0]))
    return kernel.a.cached(("tc_sp24", kc, wg, kdt, l2, *(("win8",) if win else ())), make)


def row_scales(kernel):
    """ts: each row's inverse scale (scale_rows), indexed by C's row, on the device with A."""
    return kernel.a.cached(("tc_sp24", "rinv"), lambda host: _row_exponents(host)[2])


def ts_capacity(n: int) -> int:
    """The columns of the ts workspace that serves N: the next power of two (64 at least), so that the launchers of
    all N in (cap / 2, cap] share one and a run of growing N (a runtime's prefill lengths) allocates at most twice the
    largest workspace in all."""
    return max(64, 1 << max(0, int(n) - 1).bit_length())


def ts_workspace(kernel, n: int):
    """ts: B's fp16 copy (K x N row-major at the buffer's start, the kernel's B) and its columns' inverse scales (N,
    fp32 at the start), the conversion kernel's output, cached on the device with A per capacity (ts_capacity). Like a
    split-K workspace it serves one launch at a time: launchers of one A on two streams at once would share it."""
    k, cap = kernel.a.shape[1], ts_capacity(n)
    return kernel.a.cached(("tc_sp24_ts", k, cap), lambda host: (np.zeros(max(1, k * cap), dtype=np.uint16),
                                                                  np.ones(cap, dtype=np.float32)))


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
    _, rows, _, ntiles, _ = _dims(kernel.config, m, kunits(k, math_dtype(kernel)), n)
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
    nblk, rows, nc, ntiles, cps = _dims(cfg, m, kunits(k, math_dtype(kernel)), n)
    if gather is not None:  # perm / ov: the stream's chunks (perm: the most of any row block's; ov: K's and ov)
        nc = gather[1]
        cps = -(-nc // cfg["splitk"])
    ws, counters = splitk_workspace(kernel, "tc_sp24", workspace_shape(cfg, rows, ntiles), n)
    bc = (b, c, np.uint64(0) if bias is None else bias) if nk else (b, c)
    if ts(kernel):  # b is B's (nk: x's) fp16 copy (wrap_launcher); C (y) fp32, times the inverse scales
        bc = (*bc, row_scales(kernel), ts_workspace(kernel, n)[1])
    out = (stream, rptr, rcol, rval, *(() if orow is None else (orow,)), *(gather[0] if gather else ()), ws, counters,
           *bc, np.int32(m), np.int32(n), np.int32(k), np.int32(nc), np.int32(nblk), np.int32(cps), np.int32(ntiles))
    if nk:
        out = (*out, np.int32(kernel.a.shape[0]))  # MY: y's row length (l2: M above is the slot count)
    mdt = math_dtype(kernel)  # ts in nk: the map over x's fp16 copy
    tmap, ok = (functools.partial(tensor_map_args_nk, dtype=mdt), k % nk_k_align(mdt) == 0) if nk \
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


# ts: B (K x N fp32) -> B16 (fp16, the kernel's B) with each column scaled by 2^(T - e), e = its largest magnitude's
# exponent, and cinv[n] = 2^(e - T), in one launch of one of two forms (ts_convert_plan). The pieces both use: the
# fp16 rounding, a thread's running maxima of its 4 columns, a warp's column maxima (the lanes of one quad of columns:
# lane & 7) into its row of pm, a column's exponent (clamped at T - 126: a column of values under 2^-112 keeps a finite
# scale; infinite or NaN-only columns 0), a scaled pair packed into 32 bits; and, with clusters (CS > 1), the cluster's
# barrier and a peer block's shared word in PTX (no cooperative_groups header under NVRTC)
TS_DEV = r"""
#define TS_T {T}
__device__ __forceinline__ unsigned short f2h(float x) {{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}}
// Every kernel is built with -ftz=true (CuPy's NVRTC adds it), which would read B's fp32 subnormals as zero in fabsf,
// fmaxf, comparisons and products. The maxima go by the bits instead (for non-negative, NaN-free floats the order of the
// bits is the order of the values, subnormals and infinity included), and scl() scales a subnormal exactly: the result
// is ts_convert_reference's bit for bit, whatever a column holds.
__device__ __forceinline__ float absbits(float x) {{  // |x|, a NaN as 0 (skipped by the maxima, as fmaxf does)
    const unsigned int u = __float_as_uint(x) & 0x7fffffffu;
    return __uint_as_float(u > 0x7f800000u ? 0u : u);
}}
__device__ __forceinline__ float maxbits(float a, float b) {{  // the larger of two absbits values
    return __uint_as_float(max(__float_as_uint(a), __float_as_uint(b)));
}}
__device__ __forceinline__ void amax4(float4& m, const float4 v) {{
    m.x = maxbits(m.x, absbits(v.x)); m.y = maxbits(m.y, absbits(v.y));
    m.z = maxbits(m.z, absbits(v.z)); m.w = maxbits(m.w, absbits(v.w));
}}
__device__ __forceinline__ void warp_col_max(float4 m, float* pm_warp, int lane, int q) {{
    for (int o = 8; o < 32; o <<= 1) {{
        m.x = maxbits(m.x, __shfl_xor_sync(0xffffffffu, m.x, o)); m.y = maxbits(m.y, __shfl_xor_sync(0xffffffffu, m.y, o));
        m.z = maxbits(m.z, __shfl_xor_sync(0xffffffffu, m.z, o)); m.w = maxbits(m.w, __shfl_xor_sync(0xffffffffu, m.w, o));
    }}
    if (lane < 8) {{ pm_warp[4 * q] = m.x; pm_warp[4 * q + 1] = m.y; pm_warp[4 * q + 2] = m.z; pm_warp[4 * q + 3] = m.w; }}
}}
__device__ __forceinline__ int col_exp(float mx) {{  // by the bits: a subnormal's exponent is under TS_T - 126 anyway
    const unsigned int u = __float_as_uint(mx);
    return u != 0u && u < 0x7f800000u ? max((int)(u >> 23) - 127, TS_T - 126) : 0;
}}
__device__ __forceinline__ float scl(float x, float s) {{  // x times s = 2^sh (a normal power of two), no flush of a subnormal x
    const unsigned int u = __float_as_uint(x);
    const int sh = (int)(__float_as_uint(s) >> 23) - 127;
    if ((u & 0x7f800000u) != 0u || sh < 23) return x * s;  // normal, inf or NaN x; or |x s| < 2^-104: fp16's zero either way
    const float r = (float)(u & 0x7fffffu) * __uint_as_float((unsigned int)(sh - 22) << 23);  // mantissa x 2^(sh - 149)
    return (u >> 31) ? -r : r;
}}
__device__ __forceinline__ uint2 scaled4(const float4 v, const float4 s) {{
    return make_uint2((unsigned int)f2h(scl(v.x, s.x)) | ((unsigned int)f2h(scl(v.y, s.y)) << 16),
                      (unsigned int)f2h(scl(v.z, s.z)) | ((unsigned int)f2h(scl(v.w, s.w)) << 16));
}}
"""
TS_CLUSTER = r"""
#if CS > 1
__device__ __forceinline__ void cluster_sync() {{
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}}
__device__ __forceinline__ float ld_peer(const float* p, unsigned int rank) {{
    unsigned int a = (unsigned int)__cvta_generic_to_shared(p), r;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(r) : "memory");
    return v;
}}
#define CLUSTER __cluster_dims__(1, CS, 1)
#else
#define CLUSTER
#endif
"""
# v4 (session 56's probe form): a cluster of 8 blocks of 128 threads takes 32 columns, each block K / 8 of the rows,
# 8 float4 loads a thread a round, its rows kept in shared memory (KEEP 1; 128 bytes a row) or read again (KEEP 0, K
# past what shared memory holds); the blocks' column maxima meet through distributed shared memory. Probe: 2-8 us on
# the dl layers, 1.4-1.5 TB/s on 25 MB of B.
TS_V4_KERNEL = r"""
extern "C" __global__ void CLUSTER __launch_bounds__(128)
sat_ts_convert(const float* __restrict__ B, unsigned short* __restrict__ B16, float* __restrict__ cinv, int K, int N) {{
    extern __shared__ float4 tile[];  // KEEP: the block's rows x 8 float4 (32 columns)
    __shared__ float pm[4][32];
    __shared__ float cm[32];
    __shared__ float4 sc[8];
    asm volatile("griddepcontrol.launch_dependents;");  // the kernel after it may start (TS_PDL): it waits for all of this
    const int t = threadIdx.x, q = t & 7, lane = t & 31, warp = t >> 5;
    const int c0 = blockIdx.x * 32, rpb = (K + 7) / 8, k0 = blockIdx.y * rpb;
    const int k1 = c0 + 4 * q < N ? min(K, k0 + rpb) : k0;  // N % 4 == 0: a quad of columns is in or out whole
    float4 m = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int kb = k0 + (t >> 3); kb < k1; kb += 128) {{
        float4 v[8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
            v[i] = kb + 16 * i < k1 ? __ldg(reinterpret_cast<const float4*>(B + (size_t)(kb + 16 * i) * N + c0 + 4 * q))
                                    : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {{
#if KEEP
            if (kb + 16 * i < k1) tile[(kb + 16 * i - k0) * 8 + q] = v[i];
#endif
            amax4(m, v[i]);
        }}
    }}
    warp_col_max(m, pm[warp], lane, q);
    __syncthreads();
    if (t < 32) cm[t] = maxbits(maxbits(pm[0][t], pm[1][t]), maxbits(pm[2][t], pm[3][t]));
    cluster_sync();
    if (t < 32) {{
        float mx = 0.f;
        for (int r = 0; r < 8; ++r) mx = maxbits(mx, ld_peer(&cm[t], r));
        const int e = col_exp(mx);
        reinterpret_cast<float*>(sc)[t] = ldexpf(1.0f, TS_T - e);
        if (blockIdx.y == 0 && c0 + t < N) cinv[c0 + t] = ldexpf(1.0f, e - TS_T);
    }}
    cluster_sync();  // the peers' reads of cm done before a block exits; sc written
    const float4 s = sc[q];
    for (int k = k0 + (t >> 3); k < k1; k += 16) {{
#if KEEP
        const float4 v = tile[(k - k0) * 8 + q];
#else
        const float4 v = __ldg(reinterpret_cast<const float4*>(B + (size_t)k * N + c0 + 4 * q));
#endif
        *reinterpret_cast<uint2*>(B16 + (size_t)k * N + c0 + 4 * q) = scaled4(v, s);
    }}
}}
"""
TS_CONVERT = "#define KEEP {keep}\n#define CS 8\n" + TS_DEV + TS_CLUSTER + TS_V4_KERNEL
TS_KEEP_BYTES = 160 * 1024  # v4: the block's rows in shared memory up to this (K <= 10240), else read again

# v5 (session 57, drafted without a GPU): the block's rows held in registers, every load of a thread issued at once
# (P float4 a thread, 256 threads: 32 rows x 32 columns a load round), no shared-memory tile and, where K allows, no
# cluster (CS 1: one block takes all of K for its 32 columns). v4's 1.4-1.5 TB/s on 25 MB of B came with 8 loads a
# thread in flight, rows copied through shared memory, clusters of 8 blocks of 128 threads however small K is (K = 256:
# 32 rows a block, 6272 blocks for N = 25088, 27.7 us) and read and write phases that do not overlap within a block.
TS_REG_HEAD = "#define P {p}\n#define CS {cs}\n"
TS_REG_KERNEL = r"""
extern "C" __global__ void CLUSTER __launch_bounds__(256)
sat_ts_convert(const float* __restrict__ B, unsigned short* __restrict__ B16, float* __restrict__ cinv, int K, int N) {{
    __shared__ float pm[8][32];  // each warp's column maxima
    __shared__ float cm[32];     // the block's (read by the cluster's blocks)
    __shared__ float4 sc[8];     // the columns' scales
    asm volatile("griddepcontrol.launch_dependents;");  // the kernel after it may start (TS_PDL): it waits for all of this
    const int t = threadIdx.x, q = t & 7, lane = t & 31, warp = t >> 5;
    const int c0 = blockIdx.x * 32, rpb = (K + CS - 1) / CS, k0 = blockIdx.y * rpb;
    const int k1 = c0 + 4 * q < N ? min(K, k0 + rpb) : k0;  // N % 4 == 0: a quad of columns is in or out whole
    const int r0 = k0 + (t >> 3);                           // the thread's rows: r0 + 32 i, i < P (32 P >= rpb)
    const float* src = B + (size_t)r0 * N + c0 + 4 * q;
    float4 v[P];
#pragma unroll
    for (int i = 0; i < P; ++i)
        v[i] = r0 + 32 * i < k1 ? __ldg(reinterpret_cast<const float4*>(src + (size_t)(32 * i) * N))
                                : make_float4(0.f, 0.f, 0.f, 0.f);
    float4 m = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i = 0; i < P; ++i) amax4(m, v[i]);
    warp_col_max(m, pm[warp], lane, q);
    __syncthreads();
    float mx = 0.f;
    if (t < 32) {{
#pragma unroll
        for (int w = 0; w < 8; ++w) mx = maxbits(mx, pm[w][t]);
        cm[t] = mx;
    }}
#if CS > 1
    cluster_sync();
    if (t < 32) {{
        mx = 0.f;
        for (int r = 0; r < CS; ++r) mx = maxbits(mx, ld_peer(&cm[t], r));
    }}
#endif
    if (t < 32) {{
        const int e = col_exp(mx);
        reinterpret_cast<float*>(sc)[t] = ldexpf(1.0f, TS_T - e);
        if (blockIdx.y == 0 && c0 + t < N) cinv[c0 + t] = ldexpf(1.0f, e - TS_T);
    }}
#if CS > 1
    cluster_sync();  // the peers' reads of cm done before a block exits; sc written
#else
    __syncthreads();
#endif
    const float4 s = sc[q];
    unsigned short* dst = B16 + (size_t)r0 * N + c0 + 4 * q;
#pragma unroll
    for (int i = 0; i < P; ++i)
        if (r0 + 32 * i < k1) *reinterpret_cast<uint2*>(dst + (size_t)(32 * i) * N) = scaled4(v[i], s);
}}
"""
TS_CONVERT_REG = TS_REG_HEAD + TS_DEV + TS_CLUSTER + TS_REG_KERNEL
# rows (ts in nk, tsn 1): x (N x K fp32, row-major: a token a row) -> x16 (fp16) with each row scaled by 2^(T - e)
# and cinv[row] = 2^(e - T) (the "columns" of B = x^T). TPR threads a row (256 / TPR rows a block), each holding its P
# float4 of the row in registers (P <= 16: K <= 64 TPR), the row's maximum by shuffles (and the block's shared memory
# past one warp a row); READ2 (K > 16384): the row read twice, the second time mostly from L2. No cluster.
TS_ROWS_HEAD = "#define TPR {tpr}\n#define P {p}\n#define READ2 {read2}\n#define CS 1\n"
TS_ROWS_KERNEL = r"""
extern "C" __global__ void __launch_bounds__(256)
sat_ts_convert(const float* __restrict__ X, unsigned short* __restrict__ X16, float* __restrict__ cinv, int K, int N) {{
    __shared__ float pm[8];  // each warp's maximum (TPR > 32: a row's warps meet here)
    asm volatile("griddepcontrol.launch_dependents;");  // the kernel after it may start (TS_PDL): it waits for all of this
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5, rl = t % TPR, rr = t / TPR;
    const int row = blockIdx.x * (256 / TPR) + rr, k4 = K >> 2;  // K % 8 == 0 (tsn's constraint)
    const bool live = row < N;
    const float4* src = reinterpret_cast<const float4*>(X + (size_t)(live ? row : 0) * K);
    float4 m = make_float4(0.f, 0.f, 0.f, 0.f);
#if READ2
    for (int i = rl; i < k4; i += TPR)
        if (live) amax4(m, __ldg(src + i));
#else
    float4 v[P];
#pragma unroll
    for (int i = 0; i < P; ++i)
        v[i] = live && rl + TPR * i < k4 ? __ldg(src + rl + TPR * i) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i = 0; i < P; ++i) amax4(m, v[i]);
#endif
    float mx = maxbits(maxbits(m.x, m.y), maxbits(m.z, m.w));
    for (int o = 16; o > 0; o >>= 1) mx = maxbits(mx, __shfl_xor_sync(0xffffffffu, mx, o));
#if TPR > 32
    if (lane == 0) pm[warp] = mx;
    __syncthreads();
    mx = 0.f;
#pragma unroll
    for (int w = 0; w < TPR / 32; ++w) mx = maxbits(mx, pm[rr * (TPR / 32) + w]);
#endif
    const int e = col_exp(mx);
    const float sv = ldexpf(1.0f, TS_T - e);
    const float4 s = make_float4(sv, sv, sv, sv);
    if (live && rl == 0) cinv[row] = ldexpf(1.0f, e - TS_T);
    uint2* dst = reinterpret_cast<uint2*>(X16 + (size_t)(live ? row : 0) * K);
#if READ2
    for (int i = rl; i < k4; i += TPR)
        if (live) dst[i] = scaled4(__ldg(src + i), s);
#else
#pragma unroll
    for (int i = 0; i < P; ++i)
        if (live && rl + TPR * i < k4) dst[rl + TPR * i] = scaled4(v[i], s);
#endif
}}
"""
TS_CONVERT_ROWS = TS_ROWS_HEAD + TS_DEV + TS_ROWS_KERNEL


def ts_convert_rows_plan(k: int, n: int) -> dict:
    """The conversion of x (N x K) for ts in nk: {form "rows", src, smem, grid, block, p, tpr, read2}: TPR the fewest
    threads a row (32 ... 256) that hold the row in P <= 16 float4 each, else 256 reading it twice (K > 16384)."""
    k4 = -(-int(k) // 4)
    tpr = next((x for x in (32, 64, 128, 256) if k4 <= 16 * x), 256)
    read2 = int(k4 > 16 * tpr)
    p = 1 if read2 else max(1, -(-k4 // tpr))
    return dict(form="rows", src=TS_CONVERT_ROWS.format(tpr=tpr, p=p, read2=read2, T=TS_T), smem=0,
                grid=(max(1, -(-int(n) // (256 // tpr))),), block=(256,), p=p, tpr=tpr, read2=read2)


def ts_convert_rows_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ts_convert_reference for x (N x K): each row scaled (x16 as uint16 bits, N x K; cinv per row)."""
    b16, cinv = ts_convert_reference(np.asarray(x, dtype=np.float32).T)
    return np.ascontiguousarray(b16.T), cinv


TS_REG_ROWS = 512   # v5: a block's rows at most (P = 16 float4 a thread); past 8 such blocks a column strip (K > 4096), v4
TS_BLOCKS = 264     # v5: the cluster size grows (up to 8) until the launch has this many blocks (two an SM on an H100)
TS_MIN_ROWS = 64    # v5: ... while a block keeps this many rows
# ... but one block a strip (cs 1, no cluster barrier) where K <= 256, or K <= 512 with a strip an SM or more: the
# fastest there in session 60's sweep on an H100 (ts_convert_probe.py --cs-sweep: K 128 N 6272 2.60 us at cs 1 against
# 3.59 at the 264-block rule's cs 2; K 256 N 1568 / 3136 3.25 / 3.39 against 3.43 / 3.74 at cs 4; K 512 N 6272 9.05
# against 9.53); K 512 N 784 (25 strips) and every K >= 768 were fastest at the rule's cs
TS_SOLO_ROWS = 256
TS_SOLO_STRIPS = 132
TS_PDL = True  # the kernel after the conversion launched with programmatic stream serialization (its set-up under it):
# session 59 (H100, 33 dl layers, the fp16 record configs): 0.68 us less in median (up to 1.36), none slower past 0.02
TS_CONVERT_FORM = None  # ts_convert_plan's form for every launcher (None: by K; "v4" / "v5": forced, e.g. by a probe)


def ts_convert_plan(k: int, n: int, form: str | None = None, cs: int | None = None) -> dict:
    """The conversion kernel for B of K x N: {form, src, smem, grid, block, p, cs}. form v5 (registers) where K <=
    8 x TS_REG_ROWS, else v4 (shared memory, or rows read again past TS_KEEP_BYTES); `form` forces one, and `cs` v5's
    cluster size (1, 2, 4 or 8 blocks along K; a probe's sweep: bench/drafts/ts_convert_probe.py --cs-sweep)."""
    k, n = int(k), int(n)
    strips = -(-n // 32)
    if form is None:
        form = "v5" if k <= 8 * TS_REG_ROWS else "v4"
    if form == "v4":
        smem = -(-k // 8) * 128
        keep = smem <= TS_KEEP_BYTES
        return dict(form="v4", src=TS_CONVERT.format(keep=int(keep), T=TS_T), smem=(smem if keep else 0),
                    grid=(strips, 8), block=(128,), p=0, cs=8)
    if form != "v5":
        raise ValueError(f"ts conversion: unknown form {form!r} (v4, v5)")
    if k > 8 * TS_REG_ROWS:
        raise ValueError(f"ts conversion v5: K = {k} is past {8 * TS_REG_ROWS} rows (8 blocks of {TS_REG_ROWS})")
    rows = lambda c: -(-k // c)  # noqa: E731  (a block's rows at cluster size c)
    if cs is not None:
        if cs not in (1, 2, 4, 8) or rows(cs) > TS_REG_ROWS:
            raise ValueError(f"ts conversion v5: cs {cs} for K = {k} (1, 2, 4 or 8 with K / cs <= {TS_REG_ROWS})")
    else:
        cs = 1
        solo = k <= TS_SOLO_ROWS or (k <= TS_REG_ROWS and strips >= TS_SOLO_STRIPS)
        while not solo and cs < 8 and (rows(cs) > TS_REG_ROWS or (strips * cs < TS_BLOCKS and rows(2 * cs) >= TS_MIN_ROWS)):
            cs *= 2
    p = max(1, -(-rows(cs) // 32))
    return dict(form="v5", src=TS_CONVERT_REG.format(p=p, cs=cs, T=TS_T), smem=0, grid=(strips, cs), block=(256,),
                p=p, cs=cs)


def ts_convert_reference(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the conversion computes, in NumPy: (B16 as uint16 bits, cinv) for B (K x N float32)."""
    b = np.asarray(b, dtype=np.float32)
    mx = np.fmax.reduce(np.abs(b), axis=0, initial=0.0).astype(np.float32)  # NaN skipped, as fmaxf does
    e = np.zeros(b.shape[1], dtype=np.int32)
    ok = (mx > 0) & np.isfinite(mx)
    e[ok] = np.maximum(np.frexp(mx[ok])[1] - 1, TS_T - 126)
    sc = np.ldexp(np.ones_like(mx), TS_T - e).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        b16 = (b * sc[None, :]).astype(np.float16).view(np.uint16)
    return b16, np.ldexp(np.ones_like(mx), e - TS_T).astype(np.float32)


def ts_convert_launcher(plan: dict, cinv, k: int, n: int):
    """The conversion of a plan (ts_convert_plan / ts_convert_rows_plan) compiled and bound: `ln(b_ptr, b16_ptr,
    stream_ptr)` (B's and the fp16 copy's slots written at each call), the scales into the device array `cinv`."""
    from sparse_autotune.device.compile import compile_kernel, function_ptr, reserve_smem  # noqa: PLC0415
    from sparse_autotune.device.kernel import Launcher  # noqa: PLC0415
    fn = compile_kernel(plan["src"], "sat_ts_convert", options=("-arch=sm_90a",))
    reserve_smem(fn, plan["smem"])
    return Launcher(function_ptr(fn), plan["grid"], plan["block"], plan["smem"],
                    [0, 0, int(cinv.data.ptr), np.int32(k), np.int32(n)], 0, 1, keep=(fn, cinv))


def same_f16_bits(got: np.ndarray, want: np.ndarray) -> bool:
    """Two arrays of fp16 bits (uint16) equal bit for bit, NaN against NaN whatever its payload (the GPU's cvt writes
    0x7fff, NumPy 0x7e00): how the conversions are checked against ts_convert_reference."""
    nan = lambda x: ((x & 0x7C00) == 0x7C00) & ((x & 0x03FF) != 0)  # noqa: E731
    return bool(np.array_equal(nan(got), nan(want)) and np.array_equal(got[~nan(got)], want[~nan(want)]))


class ScaledLauncher:
    """ts's launch for one N: `ln(b_ptr, c_ptr, stream_ptr)` converts B (fp32) into the fp16 workspace and the columns'
    inverse scales, then runs the kernel's launcher on the workspace; nk (tsn): `ln(x_ptr, y_ptr, stream_ptr,
    bias_ptr)`, x's rows scaled, the bias passed on. Both on `stream_ptr`, in order; the workspace is one call's at a
    time on the host (a lock)."""

    is_noop = False

    def __init__(self, convert, inner, b16, keep):
        import threading  # noqa: PLC0415
        self.convert, self.inner, self.b16 = convert, inner, int(b16)
        self._keep = keep
        self._lock = threading.Lock()

    def __call__(self, b_ptr: int, c_ptr: int, stream_ptr: int, bias_ptr: int | None = None) -> None:
        if int(b_ptr) & 15 or (bias_ptr is None and int(c_ptr) & 7):  # the conversion's float4 loads, kn's float2 stores
            from sparse_autotune.errors import UserError  # noqa: PLC0415
            what = "B" if bias_ptr is None else "x"
            raise UserError(f"tf32 through the fp16 tensor cores needs {what} 16-byte aligned"
                            f"{' and C 8-byte aligned' if bias_ptr is None else ''} (CuPy's and PyTorch's own "
                            f"allocations are; a view at an offset may not be): {what} at {int(b_ptr):#x}"
                            f"{f', C at {int(c_ptr):#x}' if bias_ptr is None else ''}")
        with self._lock:
            self.convert(b_ptr, self.b16, stream_ptr)
            if bias_ptr is None:
                self.inner(self.b16, c_ptr, stream_ptr)
            else:  # nk (tsn): x's copy, y, and the bias (0: none)
                self.inner(self.b16, c_ptr, stream_ptr, bias_ptr)

    launch = __call__


def wrap_launcher(kernel, n: int, launcher):
    """ts: the conversion kernel before the kernel (ScaledLauncher); otherwise the kernel's launcher as it is."""
    if not ts(kernel) or launcher.is_noop:
        return launcher
    k = kernel.a.shape[1]
    b16, cinv = ts_workspace(kernel, n)
    plan = ts_convert_rows_plan(k, n) if getattr(kernel, "layout", "kn") == "nk" else ts_convert_plan(k, n, TS_CONVERT_FORM)
    convert = ts_convert_launcher(plan, cinv, k, n)
    return ScaledLauncher(convert, launcher.programmatic() if TS_PDL else launcher, b16.data.ptr, (b16, cinv))
