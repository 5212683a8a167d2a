"""From kn_probe outputs (bench/drafts/kn_probe.py OUT.json: session 46's siblings, session 47's ov / perm twins), the
records that recold times to put the winning twins into the dl suite: for each case where a twin beat the record's own
config in the same run by at least --margin, the record's config and its --top fastest twins, as a JSON list of case +
family + config (recold's --records). On the device, then with no GPU:
    python3 bench/probe.py recold --records TWINS.json --out $OUT/recold-dl-twins
    python3 bench/probe.py recold-apply --records bench/results/suite-dl-h200.json --rows recold-dl-twins.json \\
        --suite dl --adopt --out bench/results
    python3 bench/drafts/twins_recold_args.py PROBE.json [PROBE.json ...] --out TWINS.json [--margin 0.03] [--top 2]
A case probed in several files takes the twins of all of them (each file's times compared only within that file)."""
import argparse
import json
import sys

sys.path.insert(0, ".")
from sparse_autotune.core.space import built_config  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("probe", nargs="+")
ap.add_argument("--out", required=True)
ap.add_argument("--margin", type=float, default=0.03)
ap.add_argument("--top", type=int, default=2)
ap.add_argument("--suite", default="bench/results/suite-dl-h200.json", help="the suite whose current winners are timed "
                "beside the twins (a probe's record may have been replaced since)")
a = ap.parse_args()
current = {(r["M"], r["K"], r["N"], r["density"], r["pattern"]): r["config"] for r in json.load(open(a.suite))
           if r["dtype"] == "fp16" and r.get("family") == "tc_sp24"}
recs: dict[tuple, list] = {}
for path in a.probe:
    for o in json.load(open(path)):
        built = [r for r in o["runs"] if r["form"] == "built" and r["err"] < 2e-2]
        if len(built) < 2:
            continue
        rec, twins = built[0], sorted(built[1:], key=lambda r: r["us"])
        wins = [t for t in twins if t["us"] <= (1 - a.margin) * rec["us"]][:a.top]
        if not wins:
            continue
        case = (o["M"], o["K"], o["N"], o["density"], o["pattern"])
        if case not in current:
            continue
        have = recs.setdefault(case, [current[case]])
        for cfg in [rec["cfg"]] + [t["cfg"] for t in wins]:  # each kernel once (a stored config and its normalized form)
            if all(built_config("tc_sp24", cfg, "fp16") != built_config("tc_sp24", h, "fp16") for h in have):
                have.append(cfg)
        print(f"{path}: {o['M']}x{o['K']} N={o['N']} d {o['density']} {o['pattern']}: {rec['us']:.2f} -> "
              + ", ".join(f"{t['us']:.2f}" for t in wins) + " us", file=sys.stderr)
out = [{"M": m, "K": k, "N": n, "density": d, "dtype": "fp16", "pattern": p, "family": "tc_sp24", "config": cfg}
       for (m, k, n, d, p), cfgs in recs.items() for cfg in cfgs]
json.dump(out, open(a.out, "w"), indent=1)
print(f"{len(recs)} cases, {len(out)} records -> {a.out}", file=sys.stderr)
