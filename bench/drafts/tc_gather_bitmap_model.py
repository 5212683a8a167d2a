"""Roofline of tc_gather's A formats (afmt dense / bitmap / pair) on uniform random A: exact steps, tiles, stored
registers and bytes from the family's own layout builders, instructions a step from the SASS of the rendered loops
(nvdisasm of nvcc 13 -arch=sm_90 cubins, unroll 1, prefetch 0, ksplit 4; bench/drafts/tc_gather-bitmap.md), L1
sectors a step, HBM bytes. Run: python bench/drafts/tc_gather_bitmap_model.py (CPU, ~1 min)."""
from __future__ import annotations

import sys

import numpy as np

from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix

H = get_family("tc_gather").host
SMS, SCHED, GHZ = 132, 4, 1.98  # H200: SMs, schedulers an SM, boost clock
HBM = 4.0e6  # bytes a microsecond, A from HBM (cold); the copy / dense cuBLAS rates measured: ~3.0-4.2 TB/s
L1_CYC_SECTOR = 0.7  # cycles an L1 sector looked up (session 14, csr_gemv's profile)
# warp-instructions in the loop a step (16 union columns x rn tiles x nt column tiles), SASS
INSTR = {("dense", 1, 1): 46, ("dense", 2, 1): 53, ("dense", 4, 1): 62.5, ("dense", 1, 2): 56, ("dense", 2, 2): 43,
         ("dense", 4, 2): 72,
         ("bitmap", 1, 1): 65, ("bitmap", 2, 1): 104, ("bitmap", 4, 1): 163, ("bitmap", 1, 2): 73,
         ("bitmap", 2, 2): 104, ("bitmap", 4, 2): 171,
         ("pair", 1, 1): 46, ("pair", 2, 1): 62.5, ("pair", 4, 1): 82, ("pair", 1, 2): 53.5, ("pair", 2, 2): 67,
         ("pair", 4, 2): 94, ("bitmap", 8, 1): 290, ("pair", 8, 1): 141}


def stats(a, rn: int) -> dict:
    step_ptr, cols, avals = H.tc_layout(a, rn)
    steps = int(step_ptr[-1])
    tiles = steps * rn
    _, _, amask, ameta, bvals = H.tc_bitmap_layout(a, rn)
    _, _, pmeta, pvals = H.tc_pair_layout(a, rn)
    regs_tile = np.bincount(np.repeat(np.arange(tiles), np.diff(np.r_[pmeta[1::4], len(pvals)].astype(np.int64))),
                            minlength=tiles) if tiles else np.zeros(0)
    vals_tile = np.diff(np.r_[ameta[0::2], len(bvals)].astype(np.int64))
    cols_b = cols.nbytes + step_ptr.nbytes
    return {"steps": steps, "tiles": tiles, "nnz": a.nnz,
            "bytes": {"dense": avals.nbytes + cols_b, "bitmap": amask.nbytes + ameta.nbytes + bvals.nbytes + cols_b,
                      "pair": pmeta.nbytes + pvals.nbytes + cols_b},
            # L1 sectors of A a tile: dense 256 B; bitmap mask + meta + 4 loads over the packed run; pair meta + 2 loads
            "sect_tile": {"dense": 8.0, "bitmap": 2 + 4 * float(np.mean(vals_tile * 2 / 32 + 0.5)),
                          "pair": 1 + 2 * float(np.mean(regs_tile * 4 / 32 + 0.5))}}


def model(m, k, n, d, seed=0):
    a = random_matrix(m, k, d, "uniform", seed)
    nt = 1 if n <= 16 else 2
    ct = -(-n // (16 * nt))
    rows = []
    for rn in (1, 2, 4, 8):
        if rn * nt > 8:
            continue
        s = stats(a, rn)
        blocks = -(-m // (8 * rn)) * ct
        spread = SMS * -(-blocks // SMS) / blocks  # the busiest SM's share over the mean (a block's work is one SM's)
        for fmt in ("dense", "bitmap", "pair") if rn <= 4 else ("bitmap", "pair"):
            instr = s["steps"] * ct * INSTR[(fmt, rn, nt)]
            issue_us = instr / (SMS * SCHED * GHZ * 1e3) * spread
            sect = s["steps"] * ct * (16 * nt + 2 + rn * s["sect_tile"][fmt])
            l1_us = sect * L1_CYC_SECTOR / SMS / (GHZ * 1e3) * spread
            byte_us = (s["bytes"][fmt] + 2 * (k + m) * n) / HBM
            rows.append((rn, blocks, fmt, s["bytes"][fmt] / s["nnz"], s["steps"], s["tiles"], instr / 1e6, issue_us,
                         l1_us, byte_us))
    return rows


if __name__ == "__main__":
    cases = [(4096, 4096, 16, 0.1), (4096, 4096, 16, 0.05), (4096, 4096, 16, 0.2), (4096, 4096, 32, 0.1),
             (14336, 4096, 16, 0.05), (14336, 4096, 16, 0.1), (14336, 4096, 32, 0.1), (11008, 4096, 8, 0.1)]
    if len(sys.argv) > 1:
        cases = [tuple(float(x) if "." in x else int(x) for x in c.split(":")) for c in sys.argv[1:]]
    print("| case | rn | blocks | afmt | B/nnz | steps | tiles | Minstr | issue us (100 %) | L1 us | HBM us |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, k, n, d in cases:
        for r in model(m, k, n, d):
            print(f"| {m}x{k} N={n} d{d} | {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]} | {r[5]} | {r[6]:.2f} | "
                  f"{r[7]:.2f} | {r[8]:.2f} | {r[9]:.2f} |")
