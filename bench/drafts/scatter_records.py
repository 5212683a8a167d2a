"""Session 51: a recold list (probe.py recold --records) of llm suite cases, each with its record and tc_scatter
candidates beside it, timed in one run (recold-apply --suite llm --adopt takes a faster one of the same run).
usage: python3 bench/drafts/scatter_records.py OUT.json [N,N..] [d,d..] [MxK,MxK..] [dtype] [pattern] [set]
set: 'probe' (8 configs around the prediction's) or 'wide' (the probe's and more splits / warps)."""
import json
import sys

out = sys.argv[1]
ns = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "16,32").split(",")]
ds = [float(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "0.05,0.1").split(",")]
shapes = (sys.argv[4] if len(sys.argv) > 4 else "4096x4096,14336x4096").split(",")
dtype = sys.argv[5] if len(sys.argv) > 5 else "fp16"
pattern = sys.argv[6] if len(sys.argv) > 6 else "uniform"
which = sys.argv[7] if len(sys.argv) > 7 else "probe"
recs = json.load(open("bench/results/suite-llm-h200.json"))


def kc_for(d):  # ~100 entries a chunk: 0.4 / d tiles
    return 8 if d <= 0.06 else 4 if d <= 0.12 else 2


def cands(n, d):
    nb = min(4, max(1, n // 8))
    kc = kc_for(d)
    base = dict(kc=kc, mr=2, nb=nb, warps=4, pf=2, splitk=8, minb=1, bload="vec", red="atomic")
    got = [base, {**base, "mr": 1, "warps": 8}, {**base, "splitk": 4}, {**base, "splitk": 16},
           {**base, "kc": max(1, kc // 2)}, {**base, "pf": 1}, {**base, "mr": 4, "warps": 2}, {**base, "warps": 8, "pf": 3}]
    if which == "occ":  # occupancy, split-K and row blocks a block around the first probe's best (warps 8, pf 3)
        b8 = {**base, "warps": 8, "pf": 3, "rpb": 1}
        got = [b8, {**b8, "splitk": 16}, {**b8, "mr": 1, "splitk": 16}, {**b8, "mr": 1, "splitk": 16, "rpb": 2},
               {**b8, "mr": 1, "splitk": 16, "rpb": 4}, {**b8, "mr": 1, "rpb": 4}, {**b8, "rpb": 2}, {**b8, "rpb": 4},
               {**b8, "mr": 1, "splitk": 32, "rpb": 4}, {**b8, "warps": 4, "splitk": 16, "rpb": 2},
               {**b8, "pf": 2, "mr": 1, "splitk": 16, "rpb": 2, "minb": 2}, {**b8, "kc": 8, "mr": 1, "splitk": 16, "rpb": 2}]
    if which == "wide":
        got += [{**base, "splitk": 2}, {**base, "splitk": 32}, {**base, "mr": 1, "warps": 4}, {**base, "mr": 1, "warps": 8, "splitk": 16},
                {**base, "warps": 2}, {**base, "kc": min(8, kc * 2)}, {**base, "red": "last"}, {**base, "mr": 4, "warps": 4, "splitk": 16}]
    uniq = []
    for c in got:
        if c not in uniq:
            uniq.append(c)
    return uniq


rows = []
for r in recs:
    if (r["N"] in ns and r["density"] in ds and f"{r['M']}x{r['K']}" in shapes and r["dtype"] == dtype
            and r["pattern"] == pattern):
        case = {k: r[k] for k in ("M", "K", "N", "density", "dtype", "pattern")}
        if r.get("family") and r.get("config") is not None:
            rows.append({**case, "family": r["family"], "config": r["config"]})
        rows += [{**case, "family": "tc_scatter", "config": c} for c in cands(r["N"], r["density"])]
json.dump(rows, open(out, "w"), indent=0)
print(len(rows), "rows")
