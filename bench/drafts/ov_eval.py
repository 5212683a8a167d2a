"""CPU check of tc_sp24's ov (overflow chunks): for the dl suite's tc_sp24 records (fp16, N >= 512), the residual of the
record's layout (l2 slots, wg rows a block) and what ov 1 / 2 extra chunks of 32 kc positions a row block take of it
(variants/tc_sp24.py overflow_positions), with the chunk overhead ov / NC. Usage: python3 bench/drafts/ov_eval.py
[density ...]"""
import json
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from sparse_autotune.core.problem import random_matrix  # noqa: E402
from variants import tc_sp24 as t  # noqa: E402

dens = [float(x) for x in sys.argv[1:]] or [0.1]
recs = json.load(open("bench/results/suite-dl-h200.json"))
recs = recs["records"] if isinstance(recs, dict) else recs
seen = set()
for r in recs:
    if r["family"] != "tc_sp24" or r["dtype"] != "fp16" or r["N"] < 512 or r["density"] not in dens:
        continue
    cfg = r["config"]
    key = (r["M"], r["K"], r["density"], r["pattern"], cfg.get("l2", 0), cfg["wg"], cfg["kc"])
    if key in seen:
        continue
    seen.add(key)
    a = random_matrix(r["M"], r["K"], r["density"], r["pattern"], seed=0)
    l2 = int(cfg.get("l2", 0) or 0)
    a2 = t.slots(a, l2)[0] if l2 else a
    _, _, res = t.split(a2)
    kc32 = 32 * cfg["kc"]
    nc = -(-r["K"] // kc32)
    out = []
    for ov in (1, 2):
        t0 = time.time()
        take, _ = t.overflow_positions(a2, 64 * cfg["wg"], ov * kc32)
        out.append(f"ov{ov}: left {res.nnz - int(take.sum()):5d} ({100 * (res.nnz - take.sum()) / max(1, a.nnz):.3f} %)"
                   f" +{100 * ov / nc:.0f} % chunks {time.time() - t0:.2f}s")
    print(f"{r['M']}x{r['K']} N={r['N']} {r['pattern'][:4]} d{r['density']} l2 {l2:3d} wg {cfg['wg']} kc {cfg['kc']}"
          f" resid {res.nnz:5d} ({100 * res.nnz / a.nnz:.2f} %) | " + " | ".join(out), flush=True)
