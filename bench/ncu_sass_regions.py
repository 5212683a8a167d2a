"""Where a kernel's warp-stall samples fall, by region of its SASS, from Nsight Compute's source page as CSV
(`ncu --import REP.ncu-rep --page source --csv --print-source sass > sass.csv`, session 44). Prints each marker
instruction (wgmma, barriers, mbarrier waits and arrives, global and staged stores, exits, setmaxnreg) with the share
of all samples up to it and since the previous marker, and the instructions above --top percent with their two
largest stall reasons. Usage: python3 bench/ncu_sass_regions.py sass.csv [--top 1.0] [--markers REGEX]"""
from __future__ import annotations

import argparse
import csv
import re
import sys

MARKERS = r"HGMMA|BAR\.SYNC|SYNCS\.(PHASECHK|ARRIVE)|STG\.E\.128|DEPBAR|EXIT|USETMAXREG|UBLKCP|UTMALDG"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=float, default=1.0, help="list instructions above this percent of the samples")
    ap.add_argument("--markers", default=MARKERS, help="regex of the SASS that ends a region")
    a = ap.parse_args(argv)
    try:
        with open(a.csv, newline="") as fh:
            rows = list(csv.reader(fh))
        head = next(i for i, r in enumerate(rows) if "Source" in r and "Warp Stall Sampling (All Samples)" in r)
    except (OSError, UnicodeDecodeError, csv.Error, StopIteration) as exc:
        why = "no header with Source and Warp Stall Sampling columns" if isinstance(exc, StopIteration) else exc
        print(f"ncu_sass_regions: error: {a.csv}: not Nsight Compute's source page as CSV ({why})", file=sys.stderr)
        return 2
    hdr, data = rows[head], rows[head + 1:]
    src, smp = hdr.index("Source"), hdr.index("Warp Stall Sampling (All Samples)")
    ex = hdr.index("Instructions Executed") if "Instructions Executed" in hdr else None
    stalls = [j for j, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
    num = lambda v: float(v or 0)  # noqa: E731
    total = sum(num(r[smp]) for r in data) or 1.0
    print(f"{a.csv}: {len(data)} instructions, {total:.0f} samples\n\n| # | up to here | since last | executed | marker |\n"
          "| ---: | ---: | ---: | ---: | --- |")
    cum = last = 0.0
    for i, r in enumerate(data):
        cum += num(r[smp])
        if re.search(a.markers, r[src]) and (cum - last) / total >= 0.002:
            print(f"| {i} | {100 * cum / total:.1f} % | {100 * (cum - last) / total:.1f} % | {r[ex] if ex is not None else '-'} | "
                  f"`{r[src].strip()[:70]}` |")
            last = cum
    print(f"\n| # | samples | executed | instruction | top stalls |\n| ---: | ---: | ---: | --- | --- |")
    for i, r in enumerate(data):
        if 100 * num(r[smp]) / total >= a.top:
            top = sorted(((num(r[j]), hdr[j][6:]) for j in stalls), reverse=True)[:2]
            print(f"| {i} | {100 * num(r[smp]) / total:.1f} % | {r[ex] if ex is not None else '-'} | `{r[src].strip()[:60]}` | "
                  + ", ".join(f"{n} {v:.0f}" for v, n in top) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
