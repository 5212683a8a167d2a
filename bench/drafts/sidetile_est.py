"""CPU estimate of a pre-pass "side tile" for tc_sp24's residual (NOTES session 50): per row block (64 wg rows), the
distinct columns its residual touches (C); a pre-pass kernel would copy those B rows into a contiguous buffer (read +
write C x N x 2 bytes a block) so that the main kernel loads them by whole boxes. Cost: a launch (~1.5 us in graph
replay) + the bytes at ~3 TB/s; gain: at most the residual's cut-out (record - diag10 in session 50's kn-ov.json), on
the probe's uniform d 0.1 cases. Usage (repository root): python3 bench/drafts/sidetile_est.py"""
import json, sys
import numpy as np
sys.path.insert(0, ".")
from sparse_autotune.core.problem import random_matrix
from variants import tc_sp24 as t
probe = json.load(open("bench/results/session50/kn-ov.json"))
for o in probe:
    if o["pattern"] != "uniform": continue
    b = [r for r in o["runs"] if r["form"] == "built"][0]; d = [r for r in o["runs"] if r["form"] == "diag10"][0]
    cfg = b["cfg"]; M, K, N = o["M"], o["K"], o["N"]
    a = random_matrix(M, K, o["density"], "uniform", seed=0)
    l2 = int(cfg.get("l2", 0)); a2 = t.slots(a, l2)[0] if l2 else a
    _, _, res = t.split(a2)
    res = res.tocsr(); rows = 64 * cfg["wg"]
    cs = [len(np.unique(res[i:i + rows].indices)) for i in range(0, res.shape[0], rows)]
    byt = sum(cs) * N * 2 * 2
    pre = 1.5 + byt / 3.0e6  # us: a launch in graph replay + bytes at 3 TB/s
    gain = b["us"] - d["us"]
    print(f"{M}x{K} N={N}: blocks {len(cs)}, C mean {np.mean(cs):.0f} max {max(cs)}, pre-pass {pre:.2f} us vs residual {gain:.2f} us (record {b['us']:.2f})")
