"""Sibling twins of the dl suite's fp16 N >= 512 records (session 63): for each case (M x K, N, density <= 0.1), its
record's winner beside every other config that won a case of the same layer (M, K, N) in the H100 or the H200 dl file,
at any density, pattern or 16-bit dtype, where that config is feasible for the case (the space's constraints, the
H100's limits). A JSON list of case + family + config for `probe recold --records` (recold-apply --adopt then keeps
a twin only where the same run timed it faster than the record's own winner).
    python3 bench/drafts/sibling_twins.py --out .scratch/sibling-twins.json [--densities 0.02,0.05,0.1]"""
import argparse
import json
import sys

sys.path.insert(0, ".")
from sparse_autotune.core.space import get_space, problem_env  # noqa: E402

H100 = {"max_smem_bytes": 49152, "max_dyn_smem_bytes": 232448, "max_threads": 1024, "sm": 90}
ap = argparse.ArgumentParser()
ap.add_argument("--suite", default="bench/results/suite-dl-h100-80gb-hbm3.json")
ap.add_argument("--also", nargs="*", default=["bench/results/suite-dl-h200.json"])
ap.add_argument("--densities", default="0.02,0.05,0.1")
ap.add_argument("--out", required=True)
a = ap.parse_args()
dens = {float(x) for x in a.densities.split(",")}
recs = json.load(open(a.suite))
pool: dict[tuple, list] = {}
for path in [a.suite, *a.also]:
    for r in json.load(open(path)):
        if r.get("dtype") in ("fp16", "bf16") and r.get("family") and r.get("config"):
            pool.setdefault((r["M"], r["K"], r["N"]), []).append((r["family"], r["config"]))
out, left = [], 0
for r in recs:
    if r["dtype"] != "fp16" or r["N"] < 512 or r["density"] not in dens:
        continue
    case = {k: r[k] for k in ("M", "K", "N", "density", "dtype", "pattern", "nnz")}
    env = problem_env(r["M"], r["K"], r["N"], r["nnz"], "fp16")
    out.append({**case, "family": r["family"], "config": r["config"]})
    seen = {(r["family"], json.dumps(r["config"], sort_keys=True))}
    for fam, cfg in pool.get((r["M"], r["K"], r["N"]), []):
        space = get_space(fam)
        norm = space.normalize(cfg, "fp16") if space.supports("fp16") else None
        if norm is None or space.check(norm, env, H100) is not None:
            left += 1
            continue
        key = (fam, json.dumps(norm, sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append({**case, "family": fam, "config": norm})
json.dump(out, open(a.out, "w"), indent=1)
n = sum(1 for r in recs if r["dtype"] == "fp16" and r["N"] >= 512 and r["density"] in dens)
print(f"{len(out)} rows for {n} cases ({len(out) - n} twins; {left} sibling configs infeasible or outside the space)")
