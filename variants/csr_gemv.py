"""csr_gemv, host side: SpMM for N <= nb (GEMV and tiny batches), A read once at full width. The layout (`build`,
pure numpy) is CSR with every row padded to a multiple of 8 nonzeros (zero weights at one of the row's own columns),
16-bit values and 16-bit column indices in two arrays, so a lane reads 8 of each with two 16-byte loads; chunk_ptr[r]
is row r's first chunk of 8. 4 bytes a nonzero (+ the padding, + 4 bytes a row). B is staged in shared memory per
block (K x nb halves); N > nb runs as column blocks that each read A again.

The order of a row's nonzeros is free (a sum), and it decides the shared-memory bank conflicts of the B-row loads:
the lanes of a quarter warp (one 128-byte phase of a 16-byte load) read element e of 8 consecutive chunks of a row
(16 lanes a row, nb 8), or of 4 (split 2, nb 16) or 2 (split 4, nb 32), and B's row k sits in bank group k mod 8 (nb
8), 2k + piece (nb 16), 4k + piece (nb 32). So `build` deals each row's nonzeros out by their column's residue mod 8:
element e of chunk 8g + j holds, where it can, the next unused nonzero of residue j (a round of 8 distinct residues
at a time, classes running out at the end), which makes each aligned 8, 4 or 2 chunks' loads conflict-free. Measured
and modelled: bench/NOTES.md, session 20 (8.5-8.8 wavefronts a request in the CSR order at nb 8, 4.2-4.8 in this
one; bench/csr_gemv_banks.py).

At nb 1 (GEMV) a lane gathers x[k] (16 bits, bank (k >> 1) mod 32) instead, and the residue dealing leaves those
banks random (~2.9 wavefronts a gather); `deal` "bank" (build_bank, session 29) places each row's nonzeros so that
the lanes loading at once hit distinct banks where the row's columns allow (~1.7-2.1 at d 0.05-0.1; measured 1.02-1.16x
warm, 1.00-1.05x cold at N = 1: bench/NOTES.md). The layouts are cached apart (args), so a matrix may hold both.

K slices (`ks` > 1, bench/drafts/csr_gemv-latency.md): each row's nonzeros cut at multiples of KS = slice_width(K, ks)
columns, each (row, slice) laid out as above as a row of its own (chunk_ptr[r * ks + s]; indices k - s * KS), so a
block keeps only its slice's KS x nb of B in shared memory; a workspace and counters (core.families.splitk_workspace)
carry the fp32 partial sums to the last block of the row block, which adds them in slice order."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params, splitk_shape, splitk_workspace
from sparse_autotune.core.problem import half_bits as value_bits
from sparse_autotune.core.space import DEFAULT_LIMITS


def slice_width(k: int, ks: int) -> int:
    """KS, the columns of a K slice: ceil(K / ks) rounded up to a multiple of 8 (so k - s * KS has k's residue mod 8);
    K itself where ks == 1. Slice s holds columns [s * KS, min(K, (s + 1) * KS)) (the last ones may be empty)."""
    if ks == 1:
        return int(k)
    return (-(-int(k) // ks) + 7) // 8 * 8


DEALS = ("res8", "bank")  # the `deal` parameter's layouts (res8: the one above; bank: build_bank, nb 1)


def build(a: sp.csr_matrix, dtype: str = "fp16", ks: int = 1, deal: str = "res8"):
    """(chunk_ptr int32 [M * ks + 1], vals uint16 [8 * chunks], idx uint16 [8 * chunks]); ks == 1: the layout above.
    ks > 1 (K slices): row r's nonzeros in slice s (slice_width) are laid out as a row of their own, at r * ks + s,
    exactly as build() lays out a row of the matrix of the slice's columns (indices k - s * KS: residues mod 8 and the
    dealing unchanged, the odd-row rotation by r's parity). deal "bank" (ks 1): build_bank's order of each row's
    nonzeros instead (the same arrays and chunk_ptr)."""
    a = sp.csr_matrix(a, copy=True)  # the caller's matrix stays as it is
    a.sum_duplicates()
    m, k = a.shape
    if k > 65536:
        raise ValueError("csr_gemv keeps 16-bit column indices: K must be <= 65536")
    if deal not in DEALS:
        raise ValueError(f"csr_gemv: unknown deal {deal!r} (one of {', '.join(DEALS)})")
    if deal == "bank":
        if ks != 1:
            raise ValueError("csr_gemv: deal 'bank' is the nb 1 layout, which has no K slices")
        return build_bank(a, dtype)
    if ks != 1:
        return _build_sliced(a, dtype, ks)
    indptr = a.indptr.astype(np.int64)
    lens = np.diff(indptr)
    plen = (lens + 7) // 8 * 8
    chunk_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(plen // 8, out=chunk_ptr[1:])
    total = int(chunk_ptr[-1]) * 8
    if total // 8 >= 2 ** 31:
        raise ValueError("too many chunks")
    vals = np.zeros(max(8, total), dtype=np.uint16)
    idx = np.zeros(max(8, total), dtype=np.uint16)
    nch = plen // 8
    rows = np.repeat(np.arange(m, dtype=np.int64), lens)
    cols = a.indices.astype(np.int64)
    # the row's nonzeros in dealing order: by rank within their residue class, then residue (rotated by 4 on odd rows:
    # where 4 lanes serve a row, two rows share a quarter warp)
    res = (cols + 4 * (rows & 1)) & 7
    # (row, residue, column): within a class in column order, so that round t of a row sits near its t / n-th part
    # of K, and the rows of B that the warps read at a time stay close together (the CSR order's locality, which L1
    # needs where B does not fit in it: nb 32)
    by_class = np.argsort((rows << 20) | (res << 17) | cols)  # unique keys (K <= 65536)
    sorted_key = (rows * 8 + res)[by_class]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_key)) + 1]
    rank = np.empty(len(rows), dtype=np.int64)  # the nonzero's place within its (row, residue) class
    rank[by_class] = np.arange(len(rows), dtype=np.int64) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    # dealing order, row by row (rows stay in CSR order): rounds of up to 8 residues (round t: the t-th nonzero of each
    # class that has one), residues in order within a round; the keys are unique (rank < 2^17: K <= 65536)
    seq = np.argsort((rows << 20) | (rank << 3) | res)

    def slot_of(row, s):
        """Position within row `row`'s chunks of its s-th dealt entry: element e of chunk 8g + j for the s-th (g, e, j)
        in order, j < 8 in whole groups of 8 chunks, j < the chunks left in the last one."""
        n = nch[row]
        full = (n // 8) * 64
        g, e, j = s // 64, (s % 64) // 8, s % 8
        w = np.maximum(n - 8 * (n // 8), 1)
        t = s - full
        last = s >= full
        c = np.where(last, 8 * (n // 8) + t % w, 8 * g + j)
        return 8 * c + np.where(last, t // w, e)

    s_of = np.arange(len(rows), dtype=np.int64) - indptr[rows]  # the s-th of its row in dealing order
    dest = chunk_ptr[rows] * 8 + slot_of(rows, s_of)
    vals[dest] = value_bits(a.data[seq], dtype)
    idx[dest] = cols[seq].astype(np.uint16)
    pad = plen - lens
    prow = np.repeat(np.arange(m, dtype=np.int64), pad)
    ps = lens[prow] + np.arange(len(prow), dtype=np.int64) - np.repeat(np.cumsum(pad) - pad, pad)
    # a pad's column: the row's last dealt one (weight 0, a column the row holds, a row of B it reads anyway)
    last_col = np.zeros(m, dtype=np.int64)
    has = lens > 0
    last_col[has] = cols[seq[indptr[1:][has] - 1]]
    idx[chunk_ptr[prow] * 8 + slot_of(prow, ps)] = last_col[prow].astype(np.uint16)
    return chunk_ptr.astype(np.int32), vals, idx


def bank_class_of_slot(row, p):
    """deal "bank": the x word class (column k's (k >> 1) mod 32, its shared-memory bank at nb 1) wanted at position p
    (element p % 8 of chunk p // 8) of row `row`: (chunk + h(row) + 4 element) mod 32, h = 16 b0 + 8 b1 + 4 b2 of the
    row's low bits. Lanes that load at once read element e of consecutive chunks of up to 32 / lanes consecutive rows
    (lanes 4, 8, 16, 32): the rows' h keep their blocks of classes apart, consecutive chunks take consecutive classes,
    and 4 e walks a row through all 32 classes over its elements."""
    row = np.asarray(row, dtype=np.int64)
    p = np.asarray(p, dtype=np.int64)
    h = 16 * (row & 1) + 8 * ((row >> 1) & 1) + 4 * ((row >> 2) & 1)
    return ((p >> 3) + h + 4 * (p & 7)) & 31


def build_bank(a: sp.csr_matrix, dtype: str = "fp16"):
    """deal "bank" (nb 1, GEMV): the layout of build() (chunk_ptr, the rows' padding, 16-bit values and indices) with
    each row's nonzeros placed so that a warp's gather of x (one 16-bit shared load a lane, bank (k >> 1) mod 32)
    touches each bank once: position p of row r wants a nonzero of class bank_class_of_slot(r, p). The t-th nonzero
    of a class (column order) takes the row's t-th position that wants that class; the nonzeros left over (a class
    with more than its share) fill the positions left empty, in order; pads (weight 0) take a column of the row in the
    wanted class where the row has one, else its last column. `a`: canonical CSR (sum_duplicates), K <= 65536."""
    m, k = a.shape
    a.sort_indices()
    indptr = a.indptr.astype(np.int64)
    lens = np.diff(indptr)
    plen = (lens + 7) // 8 * 8
    chunk_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(plen // 8, out=chunk_ptr[1:])
    total = int(chunk_ptr[-1]) * 8
    if total // 8 >= 2 ** 31:
        raise ValueError("too many chunks")
    vals = np.zeros(max(8, total), dtype=np.uint16)
    idx = np.zeros(max(8, total), dtype=np.uint16)
    if total == 0:
        return chunk_ptr.astype(np.int32), vals, idx
    rows = np.repeat(np.arange(m, dtype=np.int64), lens)
    cols = a.indices.astype(np.int64)
    bits = value_bits(a.data, dtype)
    # positions: row, place p within the row, the class it wants
    srow = np.repeat(np.arange(m, dtype=np.int64), plen)
    sp_ = np.arange(total, dtype=np.int64) - np.repeat(chunk_ptr[:-1] * 8, plen)
    want = bank_class_of_slot(srow, sp_)
    sgrp = srow * 32 + want
    # by (row, class, element, chunk): a class's positions past its nonzeros are its last elements', so the positions
    # left for the leftovers (and the conflicts they bring) gather in the rows' last elements' loads
    sorder = np.argsort((sgrp << 32) | ((sp_ & 7) << 28) | (sp_ >> 3), kind="stable")
    scount = np.bincount(sgrp, minlength=m * 32)
    sstart = np.cumsum(scount) - scount
    # nonzeros: row, class, rank within (row, class) in column order (CSR order is column order within a row)
    ngrp = rows * 32 + ((cols >> 1) & 31)
    norder = np.argsort(ngrp, kind="stable")
    ncount = np.bincount(ngrp, minlength=m * 32)
    nstart = np.cumsum(ncount) - ncount
    nrank = np.empty(len(rows), dtype=np.int64)
    nrank[norder] = np.arange(len(rows), dtype=np.int64) - nstart[ngrp[norder]]
    dest = np.full(len(rows), -1, dtype=np.int64)
    hit = nrank < scount[ngrp]
    dest[hit] = chunk_ptr[rows[hit]] * 8 + sp_[sorder[sstart[ngrp[hit]] + nrank[hit]]]
    # positions left empty: those past their class's nonzeros (rank within (row, class) >= the class's count)
    srank = np.empty(total, dtype=np.int64)
    srank[sorder] = np.arange(total, dtype=np.int64) - sstart[sgrp[sorder]]
    empty = np.flatnonzero(srank >= ncount[sgrp])  # in (row, place) order
    left = np.flatnonzero(~hit)  # in CSR order: row, column
    # the i-th leftover of a row takes the row's i-th empty position
    erow = srow[empty]
    ecount = np.bincount(erow, minlength=m)
    estart = np.cumsum(ecount) - ecount
    lrow = rows[left]
    lcount = np.bincount(lrow, minlength=m)
    lrank = np.arange(len(left), dtype=np.int64) - (np.cumsum(lcount) - lcount)[lrow]
    dest[left] = chunk_ptr[lrow] * 8 + sp_[empty[estart[lrow] + lrank]]
    vals[dest] = bits
    idx[dest] = cols.astype(np.uint16)
    # pads: the empty positions no leftover took (the last ones of each row)
    erank = np.arange(len(empty), dtype=np.int64) - estart[erow]
    pads = empty[erank >= lcount[erow]]
    prow, pgrp = srow[pads], sgrp[pads]
    last_col = np.zeros(m, dtype=np.int64)
    has = lens > 0
    last_col[has] = cols[indptr[1:][has] - 1]
    pcol = np.where(ncount[pgrp] > 0, cols[norder[np.minimum(nstart[pgrp], len(rows) - 1)]], last_col[prow])
    idx[pads] = pcol.astype(np.uint16)
    return chunk_ptr.astype(np.int32), vals, idx


def _build_sliced(a: sp.csr_matrix, dtype: str, ks: int):
    """build() of each K slice's columns (M x KS matrices), their (row, slice) chunk runs interleaved row-major."""
    m, k = a.shape
    kw = slice_width(k, ks)
    parts = []
    for s in range(ks):
        lo, hi = min(k, s * kw), min(k, (s + 1) * kw)
        parts.append(build(a[:, lo:hi], dtype) if hi > lo else (np.zeros(m + 1, dtype=np.int32), None, None))
    counts = np.stack([np.diff(p[0].astype(np.int64)) for p in parts], axis=1)  # [M, ks] chunks of (row, slice)
    chunk_ptr = np.zeros(m * ks + 1, dtype=np.int64)
    np.cumsum(counts.ravel(), out=chunk_ptr[1:])
    total = int(chunk_ptr[-1]) * 8
    if total // 8 >= 2 ** 31:
        raise ValueError("too many chunks")
    vals = np.zeros(max(8, total), dtype=np.uint16)
    idx = np.zeros(max(8, total), dtype=np.uint16)
    for s, (cp, sv, si) in enumerate(parts):
        n = int(cp[-1])
        if n == 0:
            continue
        # chunk c of the slice's layout (row r's run [cp[r], cp[r + 1])) goes to chunk_ptr[r * ks + s] + c - cp[r]
        rows = np.repeat(np.arange(m, dtype=np.int64), counts[:, s])
        dst = chunk_ptr[rows * ks + s] + np.arange(n, dtype=np.int64) - cp[rows].astype(np.int64)
        at = (dst[:, None] * 8 + np.arange(8)).ravel()
        vals[at] = sv[:n * 8]
        idx[at] = si[:n * 8]
    return chunk_ptr.astype(np.int32), vals, idx


def decode(chunk_ptr, vals, idx, shape, ks: int = 1) -> np.ndarray:
    """Dense M x K value bits rebuilt from the layout (for tests); padded entries carry weight 0 and change nothing.
    ks > 1: (row r, slice s) at chunk_ptr[r * ks + s], its indices relative to the slice's first column s * KS."""
    m, k = shape
    kw = slice_width(k, ks)
    out = np.zeros((m, k), dtype=np.uint16)
    for r in range(m):
        for s in range(ks):
            for c in range(int(chunk_ptr[r * ks + s]) * 8, int(chunk_ptr[r * ks + s + 1]) * 8):
                col = s * kw + int(idx[c])
                assert idx[c] < kw and col < k
                if vals[c] != 0:
                    assert out[r, col] == 0, "a column twice in one row"
                    out[r, col] = vals[c]
    return out


# ---- the family's host side (core.families) ---------------------------------------------------------------

def threads(config: dict) -> int:
    return 32 * config["warps"]


def rows_per_block(config: dict, warps: int | None = None) -> int:
    """The rows a block of `warps` warps (default the configured ones; fill 1: launch_warps gives the launch's)."""
    return (config["warps"] if warps is None else warps) * (32 // config["lanes"]) * config["iters"]


SM_COUNT_FALLBACK = 132  # where no GPU answers (CPU tests, rendering): an H100 / H200 SXM


def sm_count() -> int:
    """The current GPU's SM count (device.gpu.gpu_info), else SM_COUNT_FALLBACK."""
    try:
        from sparse_autotune.device.gpu import gpu_info  # noqa: PLC0415
        return int(gpu_info().sm_count)
    except Exception:  # noqa: BLE001  (no CuPy, no GPU)
        return SM_COUNT_FALLBACK


def launch_warps(config: dict, m: int, sms: int | None = None) -> int:
    """The warps a block runs: `warps`, or with fill 1 the count x in [ceil(warps / 2), warps] whose row blocks put the
    fewest warp-passes of rows on the busiest SM (x * ceil(blocks(x) / sms); ties: the larger x). With B copied into
    shared memory one block runs an SM at a time, so 86 blocks of 32 warps (11008 rows, 4 a warp) leave 46 of 132 SMs
    idle, while 132 blocks of 21 warps give each SM 21 warps' rows instead of 32."""
    w = int(config["warps"])
    if not config.get("fill", 0):
        return w
    sms = int(sms or sm_count())
    units = -(-int(m) // rows_per_block(config, 1))  # warp-passes of rows in all
    best = (None, w)
    for x in range(w, (w + 1) // 2 - 1, -1):
        load = x * -(-(-(-units // x)) // sms)
        if best[0] is None or load < best[0]:
            best = (load, x)
    return best[1]


def k_slices(config: dict) -> int:
    """ks: K slices (1 where inactive: B through L1, or nb < 8)."""
    return int(config.get("ks", 1))


def geometry(kernel, n: int):
    """Grid x: row blocks x ks (the slice fastest), grid y: column blocks; fill 1: the block's warps by launch_warps."""
    c = kernel.config
    m = kernel.a.shape[0]
    w = launch_warps(c, m)
    return (-(-m // rows_per_block(c, w)) * k_slices(c), max(1, -(-n // c["nb"]))), (32 * w,)


def smem_bytes(kernel) -> int:
    """B's column block in shared memory (bsrc smem): K rows of nb halves (ks > 1: a slice's KS rows)."""
    if kernel.config.get("bsrc", "smem") != "smem":
        return 0
    return slice_width(kernel.a.shape[1], k_slices(kernel.config)) * kernel.config["nb"] * 2


def workspace_shape(config: dict, m: int, n: int) -> tuple[int, int]:
    """K slices' workspace (core.families.splitk_shape): a slice of rows_per_block x nb fp32 partial sums per (row
    block, column block, K slice), one counter per (row block, column block)."""
    tiles = -(-m // rows_per_block(config)) * max(1, -(-n // config["nb"]))
    return splitk_shape(k_slices(config), tiles, rows_per_block(config) * config["nb"])


def args(kernel, n: int, b, c, bias=None) -> tuple:
    """In the nk layout (b is x, N x K; c is y, N x M) the bias pointer follows c (None or 0: no bias). ks > 1: the
    workspace (fp32 partial sums) and the counters follow K."""
    dtype = kernel.dtype
    m, k = kernel.a.shape
    ks = k_slices(kernel.config)
    deal = kernel.config.get("deal", "res8")
    key = ("csr_gemv", dtype, ks) if deal == "res8" else ("csr_gemv", dtype, ks, deal)
    chunk_ptr, vals, idx = kernel.a.cached(key, lambda host: build(host, dtype, ks, deal))
    extra = ()
    if ks > 1:
        extra = splitk_workspace(kernel, "csr_gemv", workspace_shape(kernel.config, m, n), n)
    if getattr(kernel, "layout", "kn") == "nk":
        return (chunk_ptr, vals, idx, b, c, np.uint64(0) if bias is None else bias, np.int32(m), np.int32(n),
                np.int32(k), *extra)
    return (chunk_ptr, vals, idx, b, c, np.int32(m), np.int32(n), np.int32(k), *extra)


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """As stored if it runs; else, where B's column block outgrows shared memory (a larger K), more K slices at the
    stored nb; else (a smaller N) the narrowest column block that holds it, as before ks; else a narrower column
    block (>= 8) with more K slices."""
    got = adapt_params(space, config, dtype, env, limits, ())
    if got is not None:
        return got
    cfg = space.normalize(config, dtype)
    if cfg is None:
        return None
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    if "ks" in cfg:
        for ks in sorted(v for v in space.param("ks").choices(dtype) if v > cfg["ks"]):
            if space.check({**cfg, "ks": ks}, env, lim) is None:
                return {**cfg, "ks": ks}
    got = adapt_params(space, config, dtype, env, limits, ("nb",))
    if got is not None and "ks" in got and not space.active("ks", got, dtype):
        return {k: v for k, v in got.items() if k != "ks"}  # below nb 8 no K slices (the constraints ignore ks there)
    if got is not None or "ks" not in cfg:
        return got
    for nb in sorted((v for v in space.param("nb").choices(dtype) if 8 <= v < cfg["nb"]), reverse=True):
        for ks in sorted(v for v in space.param("ks").choices(dtype) if v > cfg["ks"]):
            if space.check({**cfg, "nb": nb, "ks": ks}, env, lim) is None:
                return {**cfg, "nb": nb, "ks": ks}
    return None
