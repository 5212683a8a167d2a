#!/usr/bin/env python3
"""The llm suite's N <= 32 speed-ups over cuBLAS (cold) against a throughput ceiling, per density and N (no GPU).

For each record the ceiling time is max(bytes floor, gather floor): the report's `bytes_floor_us` (A's format, B and C
over the measured copy bandwidth) and the time to gather one B row a nonzero through L1 / shared memory, nnz x
max(4, 2N) bytes at 128 bytes a clock an SM (CUDA-core SpMM reads B's row for each nonzero; 4 bytes: a 32-bit
shared-memory word at N = 1). Neither counts latency or launch: the ratio measured / ceiling says how much of a
target is throughput and how much the chain of dependent round trips of a few-microsecond kernel (bench/NOTES.md,
session 31). The gather floor is the CUDA-core kernels': the tensor-core families share each B fragment among 16
rows and can pass it where A is dense enough (d 0.5, N = 32: measured above the ceiling).

--lines-above N (session 32): above N columns the gather goes through L1 (B's K x N no longer fits in shared memory
at K >= 4096, so the suite's N = 32 winners read it through L1), where a warp's load costs one wavefront per distinct
128-byte line, so a nonzero's B row of 2N < 128 bytes costs a whole line: max(128, 2N) bytes a nonzero. Checked
against Nsight Compute (bench/results/session31/ncu-csr_gemv-4096x11008-n32-d0.05-l1.txt: L1/TEX 64.5 % busy over
30.6 k cycles; one wavefront a nonzero is 17.1 k a SM, 56 %, the rest A's and C's accesses).

    python3 bench/llm_ceiling.py bench/results/suite-llm-h200.json [--sms 132] [--ghz 1.755] [--lines-above 16]
                                 [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sparse_autotune.tuning.suite import geomean  # noqa: E402


def gather_floor_us(nnz: int, n: int, sms: int, ghz: float, bytes_per_clock: int = 128,
                    lines_above: int | None = None) -> float:
    """Microseconds to read nnz B rows of max(4, 2N) bytes at bytes_per_clock a clock on each of sms SMs; with
    lines_above, a row of N > lines_above columns costs at least one 128-byte line (one L1 wavefront)."""
    row = max(4, 2 * n)
    if lines_above is not None and n > lines_above:
        row = max(128, row)
    return nnz * row / (sms * bytes_per_clock * ghz * 1e9) * 1e6


def table(records: list[dict], sms: int, ghz: float, lines_above: int | None = None) -> dict:
    """{(density, N): (ceiling geomean, measured geomean, cases)} over the records with N <= 32, and the same per
    density over all N <= 32 under (density, 0); lines_above as gather_floor_us."""
    ceil, got = defaultdict(list), defaultdict(list)
    for r in records:
        if r["N"] > 32:
            continue
        tuned = r.get("tuned_cold_us") or r["tuned_us"]
        dense = r.get("dense_cold_us") or r[f"cublas_{r['dtype']}_us"]
        floor = max(r["bytes_floor_us"], gather_floor_us(r["nnz"], r["N"], sms, ghz, lines_above=lines_above))
        for key in ((r["density"], r["N"]), (r["density"], 0)):
            ceil[key].append(dense / floor)
            got[key].append(dense / tuned)
    return {k: (geomean(ceil[k]), geomean(got[k]), len(ceil[k])) for k in sorted(ceil)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="suite-llm-<gpu>.json")
    ap.add_argument("--sms", type=int, default=132, help="SMs (default 132: H100 / H200 SXM)")
    ap.add_argument("--ghz", type=float, default=1.755, help="SM clock under load, GHz (default 1.755)")
    ap.add_argument("--lines-above", type=int, default=None, metavar="N",
                    help="above N columns a nonzero's B row costs at least a 128-byte L1 line (default: bytes only)")
    ap.add_argument("--json", help="also write the table as JSON here")
    a = ap.parse_args(argv)
    try:
        with open(a.report) as f:
            records = json.load(f)
        rows = table(records, a.sms, a.ghz, a.lines_above)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"llm_ceiling: error: {a.report}: {exc}", file=sys.stderr)
        return 2
    print("| density | N | cases | ceiling (geomean over cuBLAS, cold) | measured | measured / ceiling |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for (d, n), (c, g, k) in rows.items():
        print(f"| {d} | {'<= 32' if n == 0 else n} | {k} | {c:.2f} | {g:.2f} | {g / c:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"density": d, "N": n or "<=32", "cases": k, "ceiling": c, "measured": g}
                       for (d, n), (c, g, k) in rows.items()], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
