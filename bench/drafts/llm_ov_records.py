"""The llm suite's N = 64 / 128 cases at d 0.05 / 0.1 where an ov twin of tc_sp24 could pass the records (the residual
5.2 of 14.4 us at 4096^2 N = 128 d 0.1, session 38; ov 2 takes all of it there, +6 % chunks), as recold records (the
suite's winner beside tc_sp24 configs at ov 2 / 4 / 8, row boxes and cp.async, l2 0, rs 0, split-K for a grid of ~128
blocks): `bench/drafts/gather_calls.sh l` times them, `probe.py recold-apply --suite llm --adopt` takes the winners.
    python3 bench/drafts/llm_ov_records.py > bench/drafts/recold-llm-ov.json"""
import json
import sys

CASES = [(4096, 4096, 128, 0.1, "uniform"), (4096, 4096, 128, 0.1, "rowuniform"), (1024, 4096, 128, 0.1, "uniform"),
         (11008, 4096, 128, 0.1, "uniform"), (14336, 4096, 128, 0.1, "uniform"), (4096, 11008, 128, 0.1, "uniform"),
         (4096, 4096, 64, 0.1, "uniform"), (11008, 4096, 64, 0.1, "uniform"), (1024, 4096, 128, 0.05, "uniform"),
         (14336, 4096, 128, 0.05, "uniform")]
recs = json.load(open("bench/results/suite-llm-h200.json"))
out = []
for m, k, n, d, pat in CASES:
    mine = [r for r in recs if (r["M"], r["K"], r["N"], r["density"], r["pattern"], r["dtype"]) == (m, k, n, d, pat, "fp16")]
    if not mine:
        sys.exit(f"no record of {m}x{k} N={n} d {d} {pat}")
    case = {"M": m, "K": k, "N": n, "density": d, "dtype": "fp16", "pattern": pat}
    out.append({**case, "family": mine[0]["family"], "config": mine[0]["config"]})
    blocks = (m // 64) * max(1, n // 64)
    sk = next(s for s in (1, 2, 3, 4, 6, 8) if blocks * s >= 120 or s == 8)
    for ov, ovc in ((2, 0), (4, 0), (8, 0), (2, 1), (4, 1), (8, 1)):
        out.append({**case, "family": "tc_sp24", "config": dict(bn=64, kc=4, wg=1, stages=6, splitk=sk, mc=1, ar=0, pw=0, pt=0,
                                                                 l2=0, rs=0, rq=0, perm=0, ov=ov, ovc=ovc)})
    out.append({**case, "family": "tc_sp24", "config": dict(bn=64, kc=4, wg=1, stages=6, splitk=sk, mc=1, ar=0, pw=0, pt=0,
                                                             l2=0, rs=8, rq=0, perm=0, ov=0, ovc=0)})  # the rs 8 control
    if n == 128 and k == 4096 and m >= 4096:  # 128-row blocks (wg 2): B read half as often through L2 (64 MB at
        # 4096^2 with 64-row blocks, session 34: B's boxes alone 10.4 us); ov 4 takes all of d 0.1's residual there
        sk2 = next(s for s in (1, 2, 3, 4, 6, 8) if (m // 128) * s >= 120 or s == 8)
        for ov, ovc in ((4, 0), (4, 1), (0, 0)):  # and the same geometry without ov
            out.append({**case, "family": "tc_sp24", "config": dict(bn=128, kc=2, wg=2, stages=6, splitk=sk2, mc=1, ar=0, pw=0,
                                                                     pt=0, l2=0, rs=0, rq=0, perm=0, ov=ov, ovc=ovc)})
json.dump(out, sys.stdout, indent=1)
