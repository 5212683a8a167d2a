"""Row reordering for the row-group kernels (tc_gather): a permutation of A's rows that puts rows with similar column
sets into the same group of `group` consecutive rows, so that each group's union of columns (the rows of B it
gathers, the k-steps it runs) shrinks. Pure numpy / scipy on the CPU.

    union_size(a, perm, group)        sum over the groups of `group` consecutive rows of a[perm] of the number of
                                      distinct columns (perm None: the natural order)
    reorder(a, method, group, seed)   a permutation (int32, length M): row r of the reordered matrix is row perm[r]
                                      of A. Methods (METHODS):
        natural   the identity
        minhash   MinHash signatures of the rows' column sets, rows sorted by them (rows that share their smallest
                  hashed columns become neighbours), then a greedy pass over a short window of that order
        greedy    greedy Jaccard: seeds taken from the shortest unassigned rows up (short rows fill groups of their own,
                  long rows end up together), each group grown by the candidate that adds the fewest new columns to
                  its union net of the columns it shares (2 new - length); candidates are every unassigned row up to
                  FULL_POOL rows, else the next rows of the length order and the seed's neighbours in the orders of
                  several MinHash bands (LSH); then a local search swaps rows between groups while that shrinks the
                  unions (every partner up to FULL_POOL rows, else neighbours in a band order and a seeded sample).
                  About O(nnz * hashes + M * candidates * K / 64) (14336 x 4096 at 10 %: ~5 s)

Guarantee: the result is a permutation, is deterministic for a seed, and its union is never larger than the natural
order's (a method that does not do strictly better returns the identity). Rows are compared as bit sets of their
columns packed in uint64 words (folded modulo a narrower width when M x K bits would not fit MAX_BITS_BYTES: a
heuristic only; the guarantee is checked on the exact unions).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METHODS = ("natural", "minhash", "greedy")
NUM_HASHES = 12  # MinHash functions: the sort key of the order and, in bands of BAND, the LSH orders
BAND = 3  # hash values per band (the greedy method's LSH orders: NUM_HASHES // BAND of them)
MINHASH_WINDOW = 24  # minhash: candidates taken from the signature order after the seed
FULL_POOL = 2048  # greedy: up to this many rows, every unassigned row is a candidate and every row a swap partner
GREEDY_WINDOW = 192  # greedy, more rows: candidates from the length order after the seed ...
BAND_REACH = 16  # ... and the seed's unassigned neighbours within this many places in each band order
SWEEPS, SWEEPS_LARGE = 3, 1  # greedy: passes of the swap refinement (at most)
SWAP_REACH, SWAP_SAMPLE = 128, 256  # greedy, more rows: swap partners near x in the first band order, and a sample
MAX_BITS_BYTES = 256 << 20  # the packed rows (M x K bits) kept under this; wider K is folded
_BITMAP_CELLS = 1 << 26  # union_size counts with a bitmap of groups x K up to this (or 8 nnz), else np.unique


def _pattern(a) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(indptr as int64, column indices, M, K) of a scipy sparse matrix (any format; CSR is used as is)."""
    a = a if sp.isspmatrix_csr(a) or isinstance(a, sp.csr_array) else sp.csr_matrix(a)
    m, k = a.shape
    return np.asarray(a.indptr, dtype=np.int64), np.asarray(a.indices), int(m), int(k)


def _row_ids(indptr: np.ndarray, m: int) -> np.ndarray:
    return np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))


def check_perm(perm, m: int) -> np.ndarray:
    """perm as an int64 array, after checking that it is a permutation of range(m) (ValueError if not)."""
    p = np.asarray(perm)
    if p.shape != (m,) or (m and not np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"a row permutation of {m} rows must be {m} integers (got shape {p.shape}, {p.dtype})")
    p = p.astype(np.int64)
    seen = np.zeros(m, dtype=bool)
    if m and (p.min() < 0 or p.max() >= m):
        raise ValueError("a row permutation holds a row index out of range")
    seen[p] = True
    if not seen.all():
        raise ValueError("a row permutation names some row twice")
    return p


def group_unions(a, perm=None, group: int = 8) -> np.ndarray:
    """The number of distinct columns of each group of `group` consecutive rows of a[perm] (int64, ceil(M / group))."""
    indptr, indices, m, k = _pattern(a)
    if group < 1:
        raise ValueError(f"group must be >= 1 (got {group})")
    n_groups = -(-m // group)
    rank = np.arange(m, dtype=np.int64)
    if perm is not None:
        rank[check_perm(perm, m)] = np.arange(m, dtype=np.int64)
    g = (rank // group)[_row_ids(indptr, m)]
    keys = g * k + indices
    if n_groups * k <= max(_BITMAP_CELLS, 8 * len(indices)):
        flag = np.zeros(n_groups * k, dtype=bool)
        flag[keys] = True
        return np.count_nonzero(flag.reshape(n_groups, k), axis=1).astype(np.int64)
    u = np.unique(keys)
    return np.bincount(u // k, minlength=n_groups).astype(np.int64)


def union_size(a, perm=None, group: int = 8) -> int:
    """Sum over the groups of `group` consecutive rows of a[perm] (perm None: natural order) of their distinct
    columns."""
    return int(group_unions(a, perm, group).sum())


def minhash_signatures(a, num_hashes: int = NUM_HASHES, seed: int = 0) -> np.ndarray:
    """(M, num_hashes) int64: for hash j (a seeded random permutation of the columns), the smallest hashed column of
    each row; K for an empty row."""
    indptr, indices, m, k = _pattern(a)
    rng = np.random.default_rng(seed)
    lens = np.diff(indptr)
    full = lens > 0
    starts = indptr[:-1][full]
    sig = np.full((m, num_hashes), k, dtype=np.int64)
    for j in range(num_hashes):
        h = rng.permutation(k).astype(np.int32)
        if len(starts):
            sig[full, j] = np.minimum.reduceat(h[indices], starts)
    return sig


def _order(sig: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Rows sorted by their signature (first hash most significant), then longer rows first."""
    keys = [-lens] + [sig[:, j] for j in range(sig.shape[1] - 1, -1, -1)]
    return np.lexsort(keys).astype(np.int64)


def _packed_rows(indptr: np.ndarray, indices: np.ndarray, m: int, k: int) -> np.ndarray:
    """Each row's columns as a bit set, (M, words) uint64; columns folded modulo a narrower width where M x K bits
    exceed MAX_BITS_BYTES."""
    width = max(64, min(k, (MAX_BITS_BYTES * 8 // max(m, 1)) // 64 * 64))
    words = -(-width // 64)
    cols = indices.astype(np.int64) % width if width < k else indices.astype(np.int64)
    out = np.zeros((m, words * 8), dtype=np.uint8)
    rows = _row_ids(indptr, m)
    chunk = max(1, (64 << 20) // (words * 64))  # rows per dense boolean chunk (<= 64 MiB)
    for r0 in range(0, m, chunk):
        r1 = min(m, r0 + chunk)
        lo, hi = indptr[r0], indptr[r1]
        dense = np.zeros((r1 - r0, words * 64), dtype=bool)
        dense[rows[lo:hi] - r0, cols[lo:hi]] = True
        out[r0:r1] = np.packbits(dense, axis=1, bitorder="little")
    return out.view(np.uint64)


def _new_columns(cand_bits: np.ndarray, union: np.ndarray) -> np.ndarray:
    return np.bitwise_count(cand_bits & ~union).sum(axis=1, dtype=np.int64)



class _Greedy:
    """Groups grown one row at a time: each seeded with the first unassigned row of `order`, then the candidate that
    adds the fewest new columns to the group's union net of the columns it shares (2 new - length: similar rows,
    Jaccard-like; ties: the earlier candidate) joins, until the group is full. Candidates: the next `window`
    unassigned rows of `order` and the seed's unassigned neighbours within `reach` places in each of `band_orders`."""

    def __init__(self, bits, lens, order, group, window, band_orders=(), reach=0):
        self.bits, self.lens, self.order, self.group, self.window = bits, lens, order, group, window
        self.m = len(order)
        self.assigned = np.zeros(self.m, dtype=bool)
        self.left = self.m
        self.bands = [(o, _positions(o)) for o in band_orders]
        self.reach = reach
        self.ptr = 0

    def _next_seed(self) -> int:
        while self.assigned[self.order[self.ptr]]:
            self.ptr += 1
        return int(self.order[self.ptr])

    def _candidates(self, seed: int) -> np.ndarray:
        need = min(self.group - 1, self.left)
        span = 2 * self.window
        while True:  # the next `window` unassigned rows of the main order (at least the group's worth)
            ahead = self.order[self.ptr + 1:self.ptr + 1 + span]
            ahead = ahead[~self.assigned[ahead]]
            if len(ahead) >= max(need, min(self.window, self.left)) or self.ptr + 1 + span >= self.m:
                break
            span *= 4
        parts = [ahead[:self.window]]
        for o, pos in self.bands:
            p = pos[seed]
            near = o[max(0, p - self.reach):p + self.reach + 1]
            parts.append(near[~self.assigned[near]])
        if len(parts) == 1:
            return parts[0]
        cand = np.concatenate(parts)
        return cand[np.sort(np.unique(cand, return_index=True)[1])]  # each once, in first-seen order

    def run(self) -> np.ndarray:
        out = np.empty(self.m, dtype=np.int64)
        done = 0
        while done < self.m:
            seed = self._next_seed()
            self.assigned[seed] = True
            self.left -= 1
            out[done] = seed
            done += 1
            cand = self._candidates(seed)
            take = min(self.group - 1, len(cand))
            if not take:
                continue
            cb, clen = self.bits[cand], self.lens[cand]
            union = self.bits[seed].copy()
            alive = np.ones(len(cand), dtype=bool)
            worst = np.int64(self.bits.shape[1] * 128 + 1)
            for _ in range(take):
                i = int(np.argmin(np.where(alive, 2 * _new_columns(cb, union) - clen, worst)))
                alive[i] = False
                union |= cb[i]
                out[done] = cand[i]
                self.assigned[cand[i]] = True
                done += 1
            self.left -= take
        return out


def _positions(order: np.ndarray) -> np.ndarray:
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order), dtype=np.int64)
    return pos


def _covers(bits_z: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group (members: (G, group) rows of bits_z, whose last row is empty padding): the columns its rows cover at
    least once (the union) and at least twice."""
    once = np.zeros((members.shape[0], bits_z.shape[1]), dtype=np.uint64)
    twice = np.zeros_like(once)
    for s in range(members.shape[1]):
        b = bits_z[members[:, s]]
        twice |= once & b
        once |= b
    return once, twice


def _refine(bits: np.ndarray, perm: np.ndarray, group: int, sweeps: int, pool) -> np.ndarray:
    """Local search on a grouping: for each row x in turn, the swap with the row y of another group (y from pool(x),
    or every row for None) that shrinks the two groups' unions most, if any does; `sweeps` passes at most (fewer
    once a pass changes nothing). Each group keeps its union and twice-covered columns as bit sets, so a swap's
    effect is |U_x without x's own columns | y| + |U_y without y's own | x| - |U_x| - |U_y| for all y at once."""
    m, w = bits.shape
    bits_z = np.vstack([bits, np.zeros((1, w), dtype=np.uint64)])
    n_groups = -(-m // group)
    members = np.full(n_groups * group, m, dtype=np.int64)
    members[:m] = perm
    members = members.reshape(n_groups, group)
    grp, slot = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
    grp[perm], slot[perm] = np.arange(m) // group, np.arange(m) % group
    union, twice = _covers(bits_z, members)
    size = np.bitwise_count(union).sum(axis=1, dtype=np.int64)

    def without(rows):  # each row's group union without the columns only that row covers
        g = grp[rows]
        return union[g] & ~(bits[rows] & ~twice[g])

    for _ in range(sweeps):
        wo = without(np.arange(m))
        swaps = 0
        for x in range(m):
            ys = pool(x)
            gx = grp[x]
            if ys is None:
                wy, by, gy = wo, bits, grp
            else:
                wy, by, gy = wo[ys], bits[ys], grp[ys]
            delta = (np.bitwise_count(wy | bits[x]).sum(axis=1, dtype=np.int64)
                     + np.bitwise_count(wo[x] | by).sum(axis=1, dtype=np.int64) - size[gx] - size[gy])
            delta[gy == gx] = 0
            j = int(np.argmin(delta))
            if delta[j] >= 0:
                continue
            y = int(j if ys is None else ys[j])
            g2 = int(grp[y])
            members[gx, slot[x]], members[g2, slot[y]] = y, x
            grp[x], grp[y], slot[x], slot[y] = g2, gx, slot[y], slot[x]
            both = np.array([gx, g2])
            union[both], twice[both] = _covers(bits_z, members[both])
            size[both] = np.bitwise_count(union[both]).sum(axis=1, dtype=np.int64)
            rows = members[both].ravel()
            rows = rows[rows < m]
            wo[rows] = without(rows)
            swaps += 1
        if not swaps:
            break
    out = members.ravel()
    return out[out < m]


def reorder(a, method: str = "greedy", group: int = 8, seed: int = 0) -> np.ndarray:
    """A permutation of A's rows (int32, length M; row r of the reordered matrix is row perm[r] of A) for `method`
    (METHODS), grouping `group` rows: the identity unless the method's union_size is smaller than the natural one."""
    if method not in METHODS:
        raise ValueError(f"unknown row order {method!r}: choose one of {', '.join(METHODS)}")
    if group < 1:
        raise ValueError(f"group must be >= 1 (got {group})")
    indptr, indices, m, k = _pattern(a)
    natural = np.arange(m, dtype=np.int32)
    if method == "natural" or m <= group or group == 1 or len(indices) == 0:
        return natural
    lens = np.diff(indptr)
    sig = minhash_signatures(a, NUM_HASHES, seed)
    bits = _packed_rows(indptr, indices, m, k)
    if method == "minhash":
        perm = _Greedy(bits, lens, _order(sig, lens), group, MINHASH_WINDOW).run()
    else:
        # seeds from the shortest rows up (short rows first fill groups of their own; long rows end up together),
        # ties in signature order; candidates: rows of similar length and the seed's LSH band neighbours
        order = np.lexsort([sig[:, j] for j in range(NUM_HASHES - 1, -1, -1)] + [lens]).astype(np.int64)
        bands = [np.lexsort([sig[:, j] for j in range(b + BAND - 1, b - 1, -1)] + [-lens]).astype(np.int64)
                 for b in range(0, NUM_HASHES - BAND + 1, BAND)]
        full = m <= FULL_POOL
        perm = _Greedy(bits, lens, order, group, m if full else GREEDY_WINDOW, () if full else bands,
                       BAND_REACH).run()
        if full:
            perm = _refine(bits, perm, group, SWEEPS, lambda x: None)
        else:
            rng = np.random.default_rng(seed)
            sample = rng.choice(m, size=SWAP_SAMPLE, replace=False)
            main, pos = bands[0], _positions(bands[0])
            perm = _refine(bits, perm, group, SWEEPS_LARGE, lambda x: np.unique(np.concatenate(
                [main[max(0, pos[x] - SWAP_REACH):pos[x] + SWAP_REACH + 1], sample])))
    if union_size(a, perm, group) >= union_size(a, None, group):
        return natural  # no gain: A's own order
    return perm.astype(np.int32)
