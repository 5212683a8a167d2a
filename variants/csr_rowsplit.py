"""csr_rowsplit, host side: CSR row split (Sputnik-class). A slot is a row, or a segment of a long row split over the
rows of a block (their partial sums added in shared memory); slots run in natural or length-sorted order."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparse_autotune.core.families import adapt_params, row_order


def rowsplit_slots(a: sp.csr_matrix, order: str, rows_per_block: int, split: int):
    """The slots of csr_rowsplit: (seg, seg_row, heavy_blocks) with seg[s] = (start, end) a range of A's nonzeros
    and seg_row[s] its row of C. With split > 0 every row longer than split nonzeros comes first, longest first,
    as a whole block of rows_per_block segments of near-equal length (the kernel adds them up in shared memory);
    the other rows follow, one slot each, in `order` (natural, or sorted longest first)."""
    indptr = a.indptr.astype(np.int64)
    lens = np.diff(indptr)
    r = int(rows_per_block)
    is_heavy = lens > split if split > 0 and r > 1 else np.zeros(a.shape[0], dtype=bool)
    heavy = np.flatnonzero(is_heavy)
    heavy = heavy[np.argsort(-lens[heavy], kind="stable")]
    cuts = indptr[heavy][:, None] + (lens[heavy][:, None] * np.arange(r + 1)[None, :]) // r  # (H, r + 1)
    light = row_order(a, order)
    light = light[~is_heavy[light]]
    start = np.concatenate([cuts[:, :-1].ravel(), indptr[light]])
    end = np.concatenate([cuts[:, 1:].ravel(), indptr[light + 1]])
    rows = np.concatenate([np.repeat(heavy, r), light])
    return np.stack([start, end], axis=1).astype(np.int32), rows.astype(np.int32), len(heavy)


def segments(kernel):
    """(seg, seg_row, slots, heavy_blocks) on the device."""
    c = kernel.config
    key = ("seg", c["row_order"], int(c["rows_per_block"]), int(c["split"]))

    def build(host):
        seg, rows, heavy = rowsplit_slots(host, c["row_order"], c["rows_per_block"], c["split"])
        return seg, rows, len(rows), heavy
    return kernel.a.cached(key, build)


def threads(config: dict) -> int:
    return config["rows_per_block"] * config["lanes_per_row"]


def geometry(kernel, n: int):
    c = kernel.config
    rows = c["rows_per_block"]
    tile_n = c["lanes_per_row"] * c["vec"] * c["cols_per_thread"]
    slots = segments(kernel)[2]  # rows, long rows split in blocks
    return (-(-slots // rows) * -(-n // tile_n),), (threads(c),)


def args(kernel, n: int, b, c) -> tuple:
    cfg = kernel.config
    rows = cfg["rows_per_block"]
    tile_n = cfg["lanes_per_row"] * cfg["vec"] * cfg["cols_per_thread"]
    seg, seg_row, slots, heavy = segments(kernel)
    return (seg, seg_row, kernel.a.cols(cfg["index_bits"]), kernel.a.vals, b, c, np.int32(slots),
            np.int32(n), np.int32(-(-slots // rows)), np.int32(-(-n // tile_n)), np.int32(heavy))


def adapt(space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """A vector width N does not divide is lowered to the widest that runs; where only one column a lane runs (odd N),
    half2 sums (acc h2x4) fall back to fp32 ones."""
    got = adapt_params(space, config, dtype, env, limits, ("vec",))
    if got is None and config.get("acc") == "h2x4":
        got = adapt_params(space, {**config, "acc": "f32"}, dtype, env, limits, ("vec",))
    return got
