"""Roofline of sddmm_tc (variants/sddmm/sddmm_tc.cu.j2) on the benchmark's masks (ops/sddmm_bench.py cases), from the
real layouts (ops/sddmm_tc.py): no GPU. `python bench/drafts/sddmm_tc_roofline.py` prints the table of
bench/drafts/sddmm_tc.md.

Counts per config (fp16 / bf16, es = 2):
  MMAs      ntiles * rows/16 * nc/8 * ceil(K/16)        (the whole tile runs: padding columns are zeros, not skipped)
  L2 -> SM  ntiles * (rows + nc) * K * es                (the staged X and Y rows, cp.async.cg: L2, not L1)
            + nnz * (4 + 2 + 2 * es)                     (e_pos, e_loc, S's value, out) + tiles' headers
  smem      ldmatrix: ntiles * ceil(K/16) * warps * (mt + nt/2) * 512 B; cp.async writes: the staged bytes;
            the epilogue: rows * nc * 4 written + 4 per entry read
  HBM       X, Y once, e_pos / e_loc / S / out once, ucols
Rates (H200): MMA 1 m16n8k16 per SM-cycle at peak (132 SMs x 1.83 GHz x 4096 = 990 TFLOP/s; the brief's "~790" is
the sustained dense figure) and mma.sync ~60 % of peak (1.67 cycles an MMA: variants/tc_gather2.cu.j2's measured
figure); shared memory 128 B / SM-cycle; L2 -> SM ~7 TB/s (assumed, as in tc_gather2's roofline); HBM 4.2 TB/s copy;
launch + tail ~2.5 us (the smallest graph-replayed SDDMM times measured, bench/results/sddmm-h200.json: 2.8-3.8 us).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sparse_autotune.ops import sddmm_tc as T  # noqa: E402
from sparse_autotune.ops.sddmm_bench import BenchCase  # noqa: E402

SM, CLK = 132, 1.83e9
MMA_CYC = 1.67
SMEM_B = 128
L2_BPS, HBM_BPS = 7e12, 4.2e12
LAUNCH_US = 2.5
PEAK_BRIEF = 790e12

# (rows, wm, wn, nt): tile rows x (8 nt wn) columns, mt = rows / (16 wm)
CONFIGS = [(16, 1, 4, 2), (32, 2, 2, 4), (64, 2, 2, 4), (64, 2, 2, 8), (128, 4, 2, 4), (128, 4, 2, 8), (128, 4, 4, 8)]


def predict(mask, k: int, cfg) -> dict:
    rows, wm, wn, nt = cfg
    nc = 8 * nt * wn
    mt = rows // (16 * wm)
    lay = T.cached_layout(mask, rows, nc, "natural")
    nnz, ntiles = mask.nnz, lay.ntiles
    ksteps = -(-k // 16)
    mmas = ntiles * (rows // 16) * (nc // 8) * ksteps
    staged = ntiles * (rows + nc) * k * 2
    l2 = staged + nnz * 10 + ntiles * 16
    smem = ntiles * ksteps * wm * wn * (mt + max(nt // 2, 1)) * 512 + staged + ntiles * rows * nc * 4 + nnz * 4
    m, n = mask.shape
    hbm = (m + n) * k * 2 + nnz * 10 + lay.ucols.nbytes
    t = {"mma": mmas * MMA_CYC / SM / CLK * 1e6, "smem": smem / SMEM_B / SM / CLK * 1e6, "l2": l2 / L2_BPS * 1e6,
         "hbm": hbm / HBM_BPS * 1e6}
    bound = max(t, key=t.get)
    return {"cfg": cfg, "nc": nc, "ntiles": ntiles, "fill": lay.tile_columns() / (ntiles * nc) if ntiles else 0,
            "union_frac": lay.tile_columns() / (n * -(-m // rows)), "gflop": 2 * mmas * 16 * 8 * 16 / 1e9,
            "useful": 2 * nnz * k / 1e9, "t": t, "bound": bound, "us": t[bound] + LAUNCH_US,
            "peak_us": 2 * mmas * 2048 / PEAK_BRIEF * 1e6, "l2_mb": l2 / 1e6}


def main() -> None:
    doc = json.loads((ROOT / "bench/results/sddmm-h200.json").read_text())
    meas = {r["name"]: r for r in doc["records"]}
    cases = []
    for mask_kind, shapes in (("uniform", ((1024, 64), (4096, 64))), ("bigbird", ((1024, 128), (2048, 64), (4096, 128)))):
        for L, k in shapes:
            for d in (0.05, 0.1):
                cases.append(BenchCase("attention", mask_kind, L, L, k, d, "fp16"))
    for m, n, k in ((768, 3072, 512), (3072, 768, 256), (1024, 4096, 512), (4096, 4096, 1024)):
        for d in (0.05, 0.1):
            cases.append(BenchCase("weightgrad", "uniform", m, n, k, d, "fp16"))
    print("| case | nnz | best tile (rows x cols) | tiles | union / N | tile fill | GFLOP tiles (useful) | "
          "t at 790 TF | mma / smem / L2 / HBM us | bound | predicted us | cuSPARSE us | tuned us (today) | "
          "x cuSPARSE | x today |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    ratios = {}
    for c in cases:
        mask = c.build_mask()
        best = min((predict(mask, c.k, cfg) for cfg in CONFIGS), key=lambda p: p["us"])
        r = meas.get(c.name, {})
        cus, tuned = r.get("cusparse_us"), r.get("tuned_us")
        t = best["t"]
        x = cus / best["us"] if cus else None
        if x:
            ratios.setdefault(c.group, []).append(x)
            ratios.setdefault("all", []).append(x)
        print(f"| {c.name} | {mask.nnz} | {best['cfg'][0]} x {best['nc']} | {best['ntiles']} | "
              f"{best['union_frac']:.2f} | {best['fill']:.2f} | {best['gflop']:.2f} ({best['useful']:.2f}) | "
              f"{best['peak_us']:.2f} | {t['mma']:.1f} / {t['smem']:.1f} / {t['l2']:.1f} / {t['hbm']:.1f} | "
              f"{best['bound']} | {best['us']:.1f} | {cus if cus is None else f'{cus:.1f}'} | "
              f"{tuned if tuned is None else f'{tuned:.1f}'} | {x if x is None else f'{x:.2f}'} | "
              f"{'' if not tuned else format(tuned / best['us'], '.2f')} |")
    for g, xs in ratios.items():
        print(f"geomean x cuSPARSE predicted, {g} (measured cases only): {float(np.exp(np.mean(np.log(xs)))):.2f} "
              f"over {len(xs)}")


if __name__ == "__main__":
    main()
