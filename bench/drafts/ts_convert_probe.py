"""Probe (session 57, written without a GPU): ts's conversion of B (K x N fp32 -> fp16 with each column scaled by a
power of two, and the columns' inverse scales), its two forms side by side on the dl suite's tf32 N >= 512 shapes and
a few long-K ones, against what the same bytes cost elsewhere on this GPU.

Per (K, N): v4 (session 56: clusters of 8 blocks of 128 threads, rows through shared memory) and v5 (session 57:
rows in registers, every load of a thread issued at once, clusters only where K needs them), each verified bit for
bit against `ts_convert_reference` first (NaN as NaN), then timed (CUDA-graph replay over 4 fresh B buffers,
median); beside them CuPy's `B.astype(float16)` (the same 6 bytes an element, no maxima: an elementwise kernel's
rate) and `abs(B).max(axis=0)` (the read alone). Rates are 6 bytes an element over the time.

    python3 bench/drafts/ts_convert_probe.py OUT.json

Prediction (bench/NOTES.md, session 57): v5 >= 2.3 TB/s on B of 25 MB (v4: 1.4-1.5; 768x3072 N = 2048 24.9 us ->
<= 16 us, 64x256 N = 25088 27.7 -> <= 17 us), and no slower than v4 (within 5 %) anywhere; falsifier: v5 under 2 TB/s
on the 25 MB cases, or slower than v4 by more than 5 % on any shape.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sparse_autotune.core.families import get_family  # noqa: E402
from sparse_autotune.device.gpu import cupy, gpu_info  # noqa: E402
from sparse_autotune.device.timing import time_launches  # noqa: E402
from sparse_autotune.tuning.suite import geomean  # noqa: E402

# the dl suite's tf32 N >= 512 shapes (K, N) (bench/results/suite-dl-h200.json), then long K (the llm suite's, at N of
# prefill; v4 only past K = 4096)
LONG = [(4096, 512), (11008, 512), (14336, 256)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--cs-sweep", action="store_true",
                    help="v5 at every cluster size (1, 2, 4, 8 blocks along K) on the shapes of the dl suite's tf32 d 0.05 "
                         "N >= 512 layers (session 60): which the plan should pick")
    args = ap.parse_args()
    if args.cs_sweep:
        return cs_sweep(args.out)
    cp = cupy()
    h = get_family("tc_sp24").host
    suite = json.load(open(Path(__file__).resolve().parents[2] / "bench/results/suite-dl-h200.json"))
    shapes = sorted({(r["K"], r["N"]) for r in suite if r["dtype"] == "tf32" and r["N"] >= 512}) + LONG
    info = gpu_info()
    out = {"gpu": info.name, "driver": info.driver, "cuda": info.cuda_runtime, "cupy": info.cupy, "cases": []}
    st = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
    rng = np.random.default_rng(7)
    for k, n in shapes:
        o = {"K": k, "N": n, "mb": 4 * k * n / 1e6}
        bs = [cp.asarray((rng.standard_normal((k, n)) * np.exp2(rng.integers(-30, 31, n))[None, :]).astype(np.float32))
              for _ in range(4)]
        b16 = cp.empty((k, n), dtype=cp.uint16)
        cinv = cp.empty(n, dtype=cp.float32)
        want16, wantinv = h.ts_convert_reference(cp.asnumpy(bs[0]))
        for form in ("v4", "v5"):
            if form == "v5" and k > 8 * h.TS_REG_ROWS:
                continue
            pl = h.ts_convert_plan(k, n, form)
            ln = h.ts_convert_launcher(pl, cinv, k, n)
            b16.fill(0x7C01)
            ln(bs[0].data.ptr, b16.data.ptr, st())
            cp.cuda.Device().synchronize()
            o[f"{form}_exact"] = h.same_f16_bits(cp.asnumpy(b16), want16) and bool(np.array_equal(cp.asnumpy(cinv),
                                                                                                   wantinv))
            o[f"{form}_plan"] = {x: pl[x] for x in ("grid", "block", "smem", "p", "cs")}
            o[f"{form}_us"] = time_launches([lambda b=b: ln(b.data.ptr, b16.data.ptr, st()) for b in bs]).median_us
        h16 = cp.empty((k, n), dtype=cp.float16)
        o["astype_us"] = time_launches([lambda b=b: h16.__setitem__(Ellipsis, b) for b in bs]).median_us
        mx = cp.empty(n, dtype=cp.float32)
        o["absmax_us"] = time_launches([lambda b=b: cp.abs(b).max(axis=0, out=mx) for b in bs]).median_us
        for key in ("v4", "v5", "astype"):
            if o.get(f"{key}_us"):
                o[f"{key}_tbs"] = 6.0 * k * n / (o[f"{key}_us"] * 1e-6) / 1e12
        out["cases"].append(o)
        json.dump(out, open(args.out, "w"), indent=1)
        print(f"| {k}x{n} ({o['mb']:.1f} MB) | v4 {o['v4_us']:.2f} us {o['v4_tbs']:.2f} TB/s exact {o['v4_exact']} | "
              f"v5 {o.get('v5_us') or float('nan'):.2f} us {o.get('v5_tbs') or float('nan'):.2f} TB/s exact "
              f"{o.get('v5_exact')} | astype {o['astype_us']:.2f} us {o['astype_tbs']:.2f} TB/s | absmax "
              f"{o['absmax_us']:.2f} us |", flush=True)
    cs = [c for c in out["cases"] if c.get("v5_us")]
    out["summary"] = {
        "v4_over_v5_geomean": geomean([c["v4_us"] / c["v5_us"] for c in cs]),
        "v5_slower_than_v4_by_5pct": [(c["K"], c["N"]) for c in cs if c["v5_us"] > 1.05 * c["v4_us"]],
        "all_exact": all(c.get("v4_exact") and c.get("v5_exact", True) for c in out["cases"]),
        "v5_tbs_25mb": [round(c["v5_tbs"], 2) for c in cs if c["mb"] > 20]}
    json.dump(out, open(args.out, "w"), indent=1)
    print(json.dumps(out["summary"], indent=1))
    return 0


def cs_sweep(path: str) -> int:
    """v5 at each feasible cluster size per (K, N), each verified bit for bit, timed as main() times; the plan's own
    choice marked."""
    cp = cupy()
    h = get_family("tc_sp24").host
    suite = json.load(open(Path(__file__).resolve().parents[2] / "bench/results/suite-dl-h200.json"))
    shapes = sorted({(r["K"], r["N"]) for r in suite if r["dtype"] == "tf32" and r["N"] >= 512})
    info = gpu_info()
    out = {"gpu": info.name, "driver": info.driver, "cuda": info.cuda_runtime, "cupy": info.cupy, "cases": []}
    st = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
    rng = np.random.default_rng(7)
    for k, n in shapes:
        bs = [cp.asarray((rng.standard_normal((k, n)) * np.exp2(rng.integers(-30, 31, n))[None, :]).astype(np.float32))
              for _ in range(4)]
        b16 = cp.empty((k, n), dtype=cp.uint16)
        cinv = cp.empty(n, dtype=cp.float32)
        want16, wantinv = h.ts_convert_reference(cp.asnumpy(bs[0]))
        chosen = h.ts_convert_plan(k, n, "v5")["cs"]
        o = {"K": k, "N": n, "mb": 4 * k * n / 1e6, "chosen_cs": chosen, "us": {}, "exact": {}}
        for c in (1, 2, 4, 8):
            try:
                pl = h.ts_convert_plan(k, n, "v5", cs=c)
            except ValueError:
                continue
            ln = h.ts_convert_launcher(pl, cinv, k, n)
            b16.fill(0x7C01)
            ln(bs[0].data.ptr, b16.data.ptr, st())
            cp.cuda.Device().synchronize()
            o["exact"][c] = h.same_f16_bits(cp.asnumpy(b16), want16) and bool(np.array_equal(cp.asnumpy(cinv), wantinv))
            o["us"][c] = time_launches([lambda b=b: ln(b.data.ptr, b16.data.ptr, st()) for b in bs]).median_us
        best = min(o["us"], key=o["us"].get)
        o["best_cs"] = best
        out["cases"].append(o)
        json.dump(out, open(path, "w"), indent=1)
        print(f"| {k}x{n} ({o['mb']:.1f} MB) | " + " | ".join(
            f"cs {c}: {u:.2f} us{' (plan)' if c == chosen else ''}{'' if o['exact'][c] else ' NOT EXACT'}"
            for c, u in o["us"].items()) + f" | best cs {best} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
