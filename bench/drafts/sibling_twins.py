"""Sibling twins of a suite's records (session 63): for each selected case, its record's winner beside every other
config that won a case of the same layer in the given suite files (same M, K and N; with --any-n, same M and K at any
of the selected N), at any density, pattern or 16-bit dtype, where that config is feasible for the case
(bench/probe.py's candidate_records, as `recold --case --config` chooses, under space.DEFAULT_LIMITS: H100 and H200
alike). A JSON list of case + family + config for `probe recold --records`, timed in two runs; `probe recold-apply
--adopt --agree [--adopt-by warm]` then keeps a twin only where both runs timed it faster than the record's own
winner, and a further run (`recold --baselines`, `recold-apply --warm`) re-times what was adopted.
    python3 bench/drafts/sibling_twins.py --out .scratch/sibling-twins.json [--densities 0.05,0.1]
    python3 bench/drafts/sibling_twins.py --suite bench/results/suite-llm-h200.json \\
        --also bench/results/session63/llm-n128/suite-llm-h100-80gb-hbm3.json --dtypes fp16,bf16 --ns 64,128 \\
        --densities 0.05,0.1,0.2,0.3 --any-n --out FILE"""
import argparse
import json
import sys

sys.path[:0] = [".", "bench"]
from probe import Case, candidate_records  # noqa: E402  (bench/probe.py: what recold --case --config leaves out)
from sparse_autotune.core.space import DEFAULT_LIMITS  # noqa: E402  (an H100's / H200's limits, gate 1 as the tuner)
from sparse_autotune.tuning.suite import retime_key  # noqa: E402
ap = argparse.ArgumentParser()
ap.add_argument("--suite", default="bench/results/suite-dl-h100-80gb-hbm3.json", help="the records whose winners "
                "are timed beside their siblings")
ap.add_argument("--also", nargs="*", default=["bench/results/suite-dl-h200.json"], help="other suite files whose "
                "winners are siblings too")
ap.add_argument("--densities", default="0.02,0.05,0.1")
ap.add_argument("--dtypes", default="fp16", help="the cases' dtypes (comma-separated)")
ap.add_argument("--ns", default="", help="the cases' N (comma-separated; default every N >= 512)")
ap.add_argument("--any-n", action="store_true", help="a sibling is a winner of the same M and K at any selected N")
ap.add_argument("--below", type=float, default=0.0, help="only the cases whose record runs below this speed-up over "
                "cuBLAS of its dtype, cold where measured (issue 16's targets), else warm (0: every case)")
ap.add_argument("--out", required=True)
a = ap.parse_args()
dens = {float(x) for x in a.densities.split(",")}
dtypes = set(a.dtypes.split(","))
ns = {int(x) for x in a.ns.split(",")} if a.ns else None
want = lambda r: (r["dtype"] in dtypes and r["density"] in dens  # noqa: E731
                  and (r["N"] in ns if ns else r["N"] >= 512))
layer = lambda r: (r["M"], r["K"]) if a.any_n else (r["M"], r["K"], r["N"])  # noqa: E731
recs = json.load(open(a.suite))
pool: dict[tuple, list] = {}
for path in [a.suite, *a.also]:
    for r in json.load(open(path)):
        if r.get("dtype") in ("fp16", "bf16") and r.get("family") and r.get("config") and (
                not a.any_n or ns is None or r["N"] in ns):
            pool.setdefault(layer(r), []).append((r["family"], r["config"]))
out, left, n = [], 0, 0
for r in recs:
    if not want(r) or not r.get("family") or not r.get("config"):
        continue
    if a.below:
        dense = r.get("cublas_bf16_us") if r["dtype"] == "bf16" else r.get("cublas_fp16_us")
        ratio = (r["dense_cold_us"] / r["tuned_cold_us"] if r.get("tuned_cold_us") and r.get("dense_cold_us")
                 else dense / r["tuned_us"])
        if ratio >= a.below:
            continue
    n += 1
    case = Case(r["M"], r["K"], r["N"], r["density"], r["dtype"], r["pattern"])
    own = {**{k: r[k] for k in ("M", "K", "N", "density", "dtype", "pattern", "nnz")}, "family": r["family"],
           "config": r["config"]}
    twins, why = candidate_records([case], pool.get(layer(r), []), DEFAULT_LIMITS)
    left += len(why)
    out += [own] + [t for t in twins if retime_key(t) != retime_key(own)]
json.dump(out, open(a.out, "w"), indent=1)
print(f"{len(out)} rows for {n} cases ({len(out) - n} twins; {left} sibling configs infeasible or outside the space)")
