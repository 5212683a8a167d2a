"""tc_sp24 in kn (C = A @ B) on the dl suite's fp16 N >= 512 cases that tc_sp24 holds (bench/results/suite-dl-h200.json),
at each record's config and its l2 0 / rs 0 twin, in the template forms named by the second argument (`built`: the
template as it is; `file:PATH`: the template at PATH, e.g. git HEAD's, for a same-run comparison; `diag10`: the template
with no residual at all, results wrong, timing only: the cut-out that bounds what any residual change can gain; its error
is reported, not checked), against cuBLAS FP16 in
the same run (session 45: the kn residual forms, the pt twins). Each config verified once against float32; JSON written after
each case. Env: PROBE_DENS (default 0.1,0.05), PROBE_MAX (cases at most, the slowest against cuBLAS first), PROBE_TWIN
(l2: the l2 0 / rs 0 twin, the default; pt: the persistent-grid twin, pt 1; perm: the perm 1 twins, with and
without l2; ov: the ov 1 / 2 / 4 twins, with the record's l2 and at l2 0, and at ov 1 / 2 their cp.async twins (ovc 1; session 47); sib: the tc_sp24 winners of the same layer at the suite's
other densities and patterns (session 46); each where the space admits it; diag10 times the record's config only;
session 45's rl twins are gone with the parameter, measured slower; none: the record's config alone). Forms rw1 / rw2
(session 60): the template with the residual walked by both of a thread's rows at once, 1 / 2 entries of each a batch
(variants/tc_sp24.cu.j2 rw; C bit-identical to built's: tests/families/test_tc_sp24.py checks it on the GPU).
    PROBE_TWIN=none python3 bench/drafts/kn_probe.py OUT.json built,rw1,rw2,diag10
    git show HEAD:variants/tc_sp24.cu.j2 > .scratch/head.j2
    python3 bench/drafts/kn_probe.py OUT.json built,file:.scratch/head.j2"""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import sparse_autotune.device.kernel as K
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix, storage
from sparse_autotune.core.render import _env
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device.compile import compile_kernel
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.timing import time_launches
from sparse_autotune.device.vendor import DenseLauncher, dense_copy
from sparse_autotune.errors import CandidateError

cp = cupy()
sp24 = get_family("tc_sp24").space
sp24 = get_family("tc_sp24").host.gather_space(sp24)  # perm / ov / ovc: held at 0 in the shipped space until they run
TPL = open("variants/tc_sp24.cu.j2").read()
FORM = {"v": "built"}
FORMS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["built"]


def patched(space, config, dtype, context=None, layout="kn"):
    tpl = open(FORM["v"][5:]).read() if FORM["v"].startswith("file:") else TPL
    # session 60: rw1 / rw2 the residual walked by both rows at once (in the space since session 61: the record's own rw
    # in the other forms)
    rw = {"rw": int(FORM["v"][2:])} if FORM["v"] in ("rw1", "rw2") else {}
    return _env().from_string(tpl).render(dtype=dtype, layout=layout, diag=10 if FORM["v"] == "diag10" else 0,
                                          **{**config, **rw})


K.render = patched
dens = [float(v) for v in os.environ.get("PROBE_DENS", "0.1,0.05").split(",")]
recs = [r for r in json.load(open("bench/results/suite-dl-h200.json"))
        if r["dtype"] == "fp16" and r["N"] >= 512 and r["density"] in dens and r["family"] == "tc_sp24"]
sibs = [r for r in json.load(open("bench/results/suite-dl-h200.json"))
        if r["dtype"] == "fp16" and r["N"] >= 512 and r["family"] == "tc_sp24"]
recs.sort(key=lambda r: r["cublas_fp16_us"] / r["tuned_us"])
recs = recs[:int(os.environ.get("PROBE_MAX", "999"))]
cfgs_of = {}
for r in recs:
    c = sp24.normalize(r["config"], "fp16")
    mode = os.environ.get("PROBE_TWIN", "l2")
    if mode == "pt":
        twins = [dict(c, pt=1, rs=0, rq=0, splitk=1, mc=1, ar=0)]
    elif mode == "perm":  # session 46: each row block's own column order (the residual nearly gone), and without l2
        twins = [dict(c, perm=u, mc=1, pw=0) for u in (1, 2)] + [dict(c, perm=u, l2=0, rs=0, rq=0, mc=1, pw=0) for u in (1, 2)]
        twins += [dict(c, perm=1, wg=1, l2=0, rs=0, rq=0, mc=1, pw=0)]  # 64-row blocks: the most empty columns to skip
    elif mode == "ov":  # session 47: the residual into ov overflow chunks (B rows gathered by one-row TMA boxes), with
        # the record's l2 and without it (ov instead of l2's doubled rows)
        twins = [dict(c, ov=x, mc=1) for x in (1, 2, 4)] + [dict(c, ov=x, l2=0, rs=0, rq=0, mc=1) for x in (1, 2, 4)]
        twins += [dict(t, ovc=1) for t in twins if t["ov"] < 4]  # the same by cp.async (ovc 1)
    elif mode == "sib":  # the tc_sp24 winners of the same layer (M, K, N) at the other densities and patterns
        twins = [dict(s["config"]) for s in sibs if (s["M"], s["K"], s["N"]) == (r["M"], r["K"], r["N"]) and s is not r]
    elif mode == "none":  # the record's config alone (its forms compared: e.g. built,rw1,rw2,diag10)
        twins = []
    else:
        twins = [dict(c, l2=0, rs=0, rq=0)]
    env = problem_env(r["M"], r["K"], r["N"], r["nnz"], "fp16")
    twins = [t for t in (sp24.normalize(t, "fp16") for t in twins) if sp24.check(t, env, DEFAULT_LIMITS) is None]
    cfgs_of[id(r)] = [c] + [t for i, t in enumerate(twins) if t != c and t not in twins[:i]]
allc = {json.dumps(c, sort_keys=True) for v in cfgs_of.values() for c in v}
for form in FORMS:
    FORM["v"] = form
    with ThreadPoolExecutor(max_workers=15) as pool:
        todo = allc if form != "diag10" else {json.dumps(v[0], sort_keys=True) for v in cfgs_of.values()}
        list(pool.map(lambda c: compile_kernel(patched(sp24, json.loads(c), "fp16"), options=(f"-arch={sp24.arch}",)), todo))
print(f"{len(recs)} cases, {len(allc)} configs x {len(FORMS)} forms precompiled", flush=True)
st = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
out = []
for r in recs:
    m, k, n, d, pat = r["M"], r["K"], r["N"], r["density"], r["pattern"]
    a = random_matrix(m, k, d, pat, seed=0)
    a.data = np.random.default_rng(1).standard_normal(a.nnz).astype(np.float32)
    ad = DeviceCSR(a, "fp16")
    w = dense_copy(a, "fp16")
    rng = np.random.default_rng(2)
    bs = [cp.asarray(storage(rng.standard_normal((k, n)).astype(np.float32), "fp16")) for _ in range(4)]
    c = cp.empty((m, n), dtype=cp.float16)
    ref = w.astype(cp.float32) @ bs[0].astype(cp.float32)
    dl = DenseLauncher(w, n, "fp16", "kn")
    o = {"M": m, "K": k, "N": n, "density": d, "pattern": pat, "record_us": r["tuned_us"],
         "cublas": time_launches([lambda b=b: dl(b.data.ptr, c.data.ptr, st()) for b in bs]).median_us, "runs": []}
    for form in FORMS:
        FORM["v"] = form
        for cfg in cfgs_of[id(r)][:1] if form == "diag10" else cfgs_of[id(r)]:  # the cut-out: the record's config
            try:
                ln = build_kernel(ad, "tc_sp24", cfg, "fp16").launcher(n)
            except CandidateError as e:
                print(f"  skip {cfg}: {str(e)[:120]}", flush=True)
                continue
            c.fill(7)
            ln(bs[0].data.ptr, c.data.ptr, st())
            cp.cuda.Device().synchronize()
            err = float(cp.max(cp.abs(c.astype(cp.float32) - ref)) / (cp.max(cp.abs(ref)) + 1e-9))
            t = time_launches([lambda b=b: ln(b.data.ptr, c.data.ptr, st()) for b in bs]).median_us
            o["runs"].append({"form": form, "cfg": cfg, "us": t, "err": err})
    out.append(o)
    json.dump(out, open(sys.argv[1], "w"), indent=1)
    cells = " | ".join(f"{x['form'][:9]} l2 {x['cfg'].get('l2', 0)} rs {x['cfg'].get('rs', 0)} pt {x['cfg'].get('pt', 0)} ov {x['cfg'].get('ov', 0)} perm {x['cfg'].get('perm', 0)}: {x['us']:.2f} ({x['err']:.0e})"
                       for x in o["runs"])
    print(f"| {m}x{k} N={n} d {d} {pat[:4]} | cuBLAS {o['cublas']:.2f} | record {r['tuned_us']:.2f} | {cells} |", flush=True)
