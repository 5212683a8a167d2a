"""tc_sp24 wd 1 against wd 2 (session 55; the template and space with wd are commit f1dc8fa's, taken back after): each
config and its wd twin built, verified against float64 and timed A, B, A
(CUDA-graph replay over 8 fresh B / x buffers, median of 20) on random uniform layers in kn fp16, nk fp16 and nk tf32.
    python3 bench/drafts/wd_ab.py OUT.json"""
import json
import sys

import numpy as np

from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix, storage
from sparse_autotune.core.space import DEFAULT_LIMITS, NK_PATH, problem_env
from sparse_autotune.device.gpu import cupy, gpu_info
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.timing import time_launches
from sparse_autotune.errors import CandidateError
from sparse_autotune.tuning.suite import geomean

cp = cupy()
sp = get_family("tc_sp24").space
limits = gpu_info().limits()
CASES = [(lay, dt, m, k, n, d) for lay, dt in (("kn", "fp16"), ("nk", "fp16"), ("nk", "tf32"))
         for (m, k, n) in ((3072, 768, 2048), (768, 3072, 2048), (768, 768, 2048), (512, 2048, 1024), (4096, 4096, 128))
         for d in (0.05,)]
CFGS = [dict(bn=128, kc=4, wg=2, stages=3, splitk=1, pw=1), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1),
        dict(bn=64, kc=4, wg=2, stages=4, splitk=1), dict(bn=64, kc=1, wg=2, stages=8, splitk=1, l2=12),
        dict(bn=128, kc=2, wg=2, stages=6, splitk=1, l2=12), dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=12),
        dict(bn=64, kc=4, wg=2, stages=6, splitk=2), dict(bn=128, kc=4, wg=2, stages=3, splitk=1, pw=1, l2=25)]
st = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
v = gpu_info().versions()
meta = {k: v[k] for k in ("gpu", "driver", "cuda", "cupy")}
out = []
for lay, dt, m, k, n, d in CASES:
    rng = np.random.default_rng(0)
    a = random_matrix(m, k, d, "uniform", 0).astype(np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    ad = DeviceCSR(a, dt)
    w = cp.asarray(a.toarray().astype(np.float64))
    if lay == "nk":
        bs = [cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), dt)) for _ in range(8)]
        c = cp.empty((n, m), dtype=bs[0].dtype)
        bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), dt))
        ref = bs[0].astype(cp.float64) @ w.T + bias.astype(cp.float64)
    else:
        bs = [cp.asarray(storage(rng.standard_normal((k, n)).astype(np.float32), dt)) for _ in range(8)]
        c = cp.empty((m, n), dtype=bs[0].dtype)
        ref = w @ bs[0].astype(cp.float64)
    space = sp.for_layout("nk") if lay == "nk" else sp
    env = problem_env(m, k, n, int(a.nnz), dt, lay)
    rows = []
    for base in CFGS:
        pair = []
        for wd in (1, 2):
            cfg = sp.normalize({**base, "wd": wd}, dt)
            full = {**cfg, NK_PATH: "native"} if lay == "nk" else cfg
            if cfg is None or space.check(full, env, limits or DEFAULT_LIMITS) is not None:
                break
            try:
                ln = build_kernel(ad, "tc_sp24", cfg, dt, layout=lay).launcher(n)
            except CandidateError as exc:
                print(f"  {lay} {dt} {m}x{k} {base} wd {wd}: {exc}", flush=True)
                break
            run = (lambda ln=ln: [lambda b=b: ln(b.data.ptr, c.data.ptr, st(), bias.data.ptr) for b in bs]) if lay == "nk" \
                else (lambda ln=ln: [lambda b=b: ln(b.data.ptr, c.data.ptr, st()) for b in bs])
            c.fill(float("nan"))
            run()[0]()
            cp.cuda.Device().synchronize()
            err = float(cp.linalg.norm(c.astype(cp.float64) - ref) / cp.linalg.norm(ref))
            pair.append((run, err))
        if len(pair) < 2:
            continue
        t1 = time_launches(pair[0][0]()).median_us
        t2 = time_launches(pair[1][0]()).median_us
        t1b = time_launches(pair[0][0]()).median_us
        r = {"cfg": base, "wd1_us": min(t1, t1b), "wd1_again_us": max(t1, t1b), "wd2_us": t2, "err1": pair[0][1],
             "err2": pair[1][1]}
        rows.append(r)
        print(f"{lay} {dt} {m}x{k} N={n}: {base} wd1 {r['wd1_us']:.2f} ({r['wd1_again_us']:.2f}) wd2 {t2:.2f} -> "
              f"{t2 / r['wd1_us']:.3f}  err {pair[0][1]:.1e} / {pair[1][1]:.1e}", flush=True)
    out.append({"layout": lay, "dtype": dt, "M": m, "K": k, "N": n, "density": d, "pairs": rows})
    json.dump({**meta, "cases": out}, open(sys.argv[1], "w"), indent=1)
for lay, dt in (("kn", "fp16"), ("nk", "fp16"), ("nk", "tf32")):
    rs = [p["wd2_us"] / p["wd1_us"] for o in out if (o["layout"], o["dtype"]) == (lay, dt) for p in o["pairs"]]
    best = [min(p["wd2_us"] for p in o["pairs"]) / min(p["wd1_us"] for p in o["pairs"]) for o in out
            if (o["layout"], o["dtype"]) == (lay, dt) and o["pairs"]]
    if rs:
        print(f"{lay} {dt}: {len(rs)} pairs, geomean wd2/wd1 {geomean(rs):.3f} (min {min(rs):.3f}, max {max(rs):.3f}); "
              f"best wd2 / best wd1 per case geomean {geomean(best):.3f}", flush=True)
