"""Session 51: per case of a recold run (probe.py recold over scatter_records.py's list), the record's warm / cold
time beside the best tc_scatter config's. usage: python3 bench/drafts/scatter_summary.py RECOLD.json"""
import json
import sys
from collections import defaultdict

best = defaultdict(dict)
for r in json.load(open(sys.argv[1]))["rows"]:
    w = r.get("tuned_us")
    if w is None:
        continue
    key = (r["M"], r["K"], r["N"], r["density"], r["dtype"], r["pattern"])
    f = r["family"]
    if f not in best[key] or w < best[key][f][0]:
        best[key][f] = (w, r.get("tuned_cold_us"), r["config"], r.get("dense_cold_us"))
print("| case | record | warm / cold us | tc_scatter best warm / cold us | its config | cuBLAS cold |")
print("| --- | --- | ---: | ---: | --- | ---: |")
for k, v in sorted(best.items()):
    rec = [f for f in v if f != "tc_scatter"]
    s = v.get("tc_scatter")
    r = v[rec[0]] if rec else None
    cfg = " ".join(f"{x}={s[2][x]}" for x in ("kc", "mr", "nb", "warps", "pf", "rpb", "splitk", "minb") if x in s[2]) if s else ""
    print(f"| {k[0]}x{k[1]} N={k[2]} d={k[3]} {k[4]} | {rec[0] if rec else '-'} | "
          f"{r[0]:.2f} / {r[1]:.2f} | " if r else "| - | ", end="")
    print(f"{s[0]:.2f} / {s[1]:.2f} | {cfg} | {s[3]:.2f} |" if s else "- | | |")
