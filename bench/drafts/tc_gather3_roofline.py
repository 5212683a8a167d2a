"""Roofline of tc_gather3 (variants/tc_gather3.cu.j2) from the real layouts (variants/tc_gather3.py) of uniform random
matrices: no GPU. `python bench/drafts/tc_gather3_roofline.py` prints the table of bench/drafts/tc_gather3.md.

Counts per config (fp16 / bf16, 2 bytes an element), over the whole launch (column tiles: N / tile_n):
  MMA       steps * rn * N / 16 mma.m16n8k16 (4096 flop each)
  smem      ldmatrix.x4: steps * N / 16, each 4 wavefronts x (bank_wavefronts / 4) of 128 B;
            cp.async writes of the staged slices: slices * ks * N * 2 B; the epilogue: M * N * 2 B written + read
  L2 -> SM  the staged slices of B: slices * ks * N * 2 B (slices: the tiles' non-empty K-slices);
            A's steps: steps * (rn * 256 + 16) B per column tile
  HBM       A's layout once, B once (K * N * 2), C once (M * N * 2)
Rates (H200, the brief's figures): mma.sync ~600 TFLOP/s; shared memory 132 SMs x 128 B x 1.98 GHz = 33.4 TB/s;
L2 -> SM ~9.5 TB/s (session 2's measured rate); HBM 4.2 TB/s copy; launch 0.66 us. Blocks short of a whole wave scale
the on-chip terms by 132 * waves / blocks (the SMs without a block idle).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sparse_autotune.core.families import get_family  # noqa: E402
from sparse_autotune.core.problem import random_matrix  # noqa: E402

MMA_FLOPS, SMEM_BPS, L2_BPS, HBM_BPS, LAUNCH_US, SMS = 600e12, 132 * 128 * 1.98e9, 9.5e12, 4.2e12, 0.66, 132

CASES = [  # (M, K, N, d, cuBLAS FP16 us: NOTES.md sessions 13)
    (3072, 768, 2048, 0.02, 16.0), (3072, 768, 2048, 0.05, 16.0), (3072, 768, 2048, 0.1, 16.0),
    (11008, 4096, 128, 0.1, 25.3), (11008, 4096, 128, 0.3, 25.3), (11008, 4096, 128, 0.5, 25.3),
    (4096, 4096, 64, 0.1, 9.5),
]
GEOMS = [  # (rn, rb, upw, ks, tile_n, wn)
    (1, 128, 2, 128, 128, 1), (2, 128, 1, 128, 128, 2), (1, 128, 2, 256, 64, 1), (2, 128, 1, 256, 64, 1),
    (1, 64, 1, 128, 64, 1), (1, 32, 1, 128, 64, 1), (2, 64, 1, 256, 64, 1),
]


def roofline(lay: dict, st: dict, m: int, k: int, n: int, tile_n: int, wn: int) -> dict:
    rn, rb, ks, upw = lay["rn"], lay["rb"], lay["ks"], lay["upw"]
    ctiles = -(-n // tile_n)
    n_pad = ctiles * tile_n
    mmas = st["steps"] * rn * n_pad / 16
    ldsm = st["steps"] * n_pad / 16
    gather = ldsm * 512 * st["wavefronts"] / 4
    staged = st["slices"] * ks * n_pad * 2
    smem = gather + staged + 2 * m * n * 2
    a_bytes = st["steps"] * (rn * 256 + 16)
    l2 = staged + a_bytes * ctiles
    hbm = a_bytes + k * n * 2 + m * n * 2
    blocks = lay["tiles"] * ctiles
    threads = 32 * rb // (8 * rn * upw) * wn
    per_sm = 2 if threads <= 256 else 1
    waves = -(-blocks // (SMS * per_sm))
    util = blocks / (waves * SMS * per_sm)
    t = {"MMA": mmas * 4096 / MMA_FLOPS * 1e6 / util, "smem": smem / SMEM_BPS * 1e6 / util,
         "L2": l2 / L2_BPS * 1e6 / util, "HBM": hbm / HBM_BPS * 1e6}
    return {**t, "bound": max(t.values()) + LAUNCH_US, "gather_MB": gather / 1e6, "staged_MB": staged / 1e6,
            "blocks": blocks, "fill": st["fill"], "wavefronts": st["wavefronts"], "mma_frac": mmas * 4096 / (2 * m * k * n)}


def main() -> None:
    h = get_family("tc_gather3").host
    print("| case | cuBLAS FP16 | best config (rn rb upw ks tile_n wn) | MMA / smem / L2 / HBM us | gathers / staged B MB |"
          " blocks | bound us | vs cuBLAS |")
    print("| --- | ---: | --- | --- | --- | ---: | ---: | ---: |")
    for m, k, n, d, cub in CASES:
        a = random_matrix(m, k, d, "uniform", 0)
        best = None
        for rn, rb, upw, ks, tn, wn in GEOMS:
            if tn > max(64, n):
                continue
            lay = h.build(a, rn, rb, upw, ks, "fp16")
            r = roofline(lay, h.stats(lay), m, k, n, tn, wn)
            if best is None or r["bound"] < best[1]["bound"]:
                best = ((rn, rb, upw, ks, tn, wn), r)
        cfg, r = best
        print(f"| {m}x{k} N={n} d {d} | {cub} | {' '.join(map(str, cfg))} | {r['MMA']:.1f} / {r['smem']:.1f} / "
              f"{r['L2']:.1f} / {r['HBM']:.1f} | {r['gather_MB']:.0f} / {r['staged_MB']:.0f} | {r['blocks']} | "
              f"{r['bound']:.1f} | {cub / r['bound']:.2f}x |")


if __name__ == "__main__":
    main()
