"""Session 47's prediction for tc_sp24 ov on the dl suite's uniform d 0.1 fp16 N >= 512 tc_sp24 records (CPU only):
each record's config and its same-run time and residual cut-out (session 46's kn-sib-probe.json, diag 10), the greedy's
leftover at ov 1 / 2 / 4 (variants/tc_sp24.py overflow_positions on the record's layout), and a predicted time
cut-out x (1 + g ov / NC) + leftover share x (record - cut-out), for a gathered chunk costing g times a TMA chunk.
    python3 bench/drafts/ov_predict.py [g]"""
import json
import math
import sys

sys.path.insert(0, ".")
from sparse_autotune.core.problem import random_matrix  # noqa: E402
from variants import tc_sp24 as t  # noqa: E402

g = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
probe = json.load(open("bench/results/session46/kn-sib-probe.json"))
logs = []
print(f"g = {g}: | layer | record config (l2, wg, kc) | same-run record us | cut-out us | residual % | best ov | leftover % | predicted us | x |")
for o in probe:
    if o["density"] != 0.1 or o["pattern"] != "uniform":
        continue
    built = [r for r in o["runs"] if r["form"] == "built"]
    cut = [r for r in o["runs"] if r["form"] == "diag10"]
    if not built or not cut:
        continue
    rec, cfg = built[0]["us"], built[0]["cfg"]
    cu = cut[0]["us"]
    a = random_matrix(o["M"], o["K"], 0.1, "uniform", seed=0)
    l2 = int(cfg.get("l2", 0) or 0)
    a2 = t.slots(a, l2)[0] if l2 else a
    res = t.split(a2)[2].nnz
    kc32 = 32 * cfg["kc"]
    nc = -(-o["K"] // kc32)
    best = (rec, 0, 1.0)
    for ov in (1, 2, 4):
        left = (res - int(t.overflow_positions(a2, 64 * cfg["wg"], ov * kc32)[0].sum())) / max(1, res)
        pred = cu * (1 + g * ov / nc) + left * (rec - cu)
        if pred < best[0]:
            best = (pred, ov, left)
    logs.append(math.log(rec / best[0]))
    print(f"| {o['M']}x{o['K']} N={o['N']} | l2 {l2} wg {cfg['wg']} kc {cfg['kc']} | {rec:.2f} | {cu:.2f} | "
          f"{100 * res / a.nnz:.2f} | {best[1]} | {100 * best[2]:.0f} | {best[0]:.2f} | {rec / best[0]:.3f} |")
print(f"geomean record / predicted: {math.exp(sum(logs) / len(logs)):.3f} over {len(logs)} cases")
