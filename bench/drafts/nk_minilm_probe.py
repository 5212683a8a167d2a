"""tc_sp24 natively in nk on MiniLM's real pruned layers: per layer (384x384 query, 1536x384 intermediate, 384x1536
output, layer 0, d 0.05) and N = 128 / 1024 / 4096, the dense nk baseline (cuBLAS alone, with the bias fused by
cuBLASLt, with the bias kernel; the bias kernel alone) and tc_sp24 nk native at a few configs (l2 0 and l2, each with
its pt twin) in the forms named by the second argument (default built,diag10): `built` the template as it is, `diag10`
no residual at all (results wrong, timing only), `yb` the l2 configs with y's window by bulk copies (session 43, with
bench/drafts/tc_sp24-nk-yb.patch applied: measured slower, not landed), `file:PATH` the template at PATH (e.g. git
HEAD's, for a same-run comparison). A third argument `l2` times the l2 configs only, `l2pt` their pt ones, `sk` the
split-K, wg 1 and bn 64 twins of the bn 128 wg 2 pw 1 l2 configs, `win` MiniLM's known-goods and their pt twins (session 44: y's window store), `pp` ping-pong twins (pp 0 / 1, session 44, with bench/drafts/tc_sp24-nk-pingpong.patch), `bn96` those configs at bn 128 and 96 (session 43,
with bench/drafts/tc_sp24-nk-bn96.patch applied: slower at N = 4096, not landed). (Session 41's forms `listwait` and `l2direct`, both
measured and dropped, are in git history.) Each is verified once against float32. Run on the device
(examples/minilm/data carried), e.g.
    git show HEAD:variants/tc_sp24.cu.j2 > .scratch/head_tc_sp24.cu.j2
    python3 bench/drafts/nk_minilm_probe.py OUT.json built,file:.scratch/head_tc_sp24.cu.j2 l2pt"""
import json
import os
import sys

import numpy as np

import sparse_autotune.device.kernel as K
from sparse_autotune.core.checkpoint import load_bundle
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import storage
from sparse_autotune.core.render import _env
from sparse_autotune.core.space import DEFAULT_LIMITS, NK_PATH, problem_env
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.errors import CandidateError
from sparse_autotune.device.timing import time_launches
from sparse_autotune.device.staged import bias_add_launcher
from sparse_autotune.device.vendor import DenseLauncher, dense_copy

cp = cupy()
sp24 = get_family("tc_sp24").space
TPL = open("variants/tc_sp24.cu.j2").read()
FORM = {"v": "built"}
FORMS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["built", "diag10"]


def patched(space, config, dtype, context=None, layout="kn"):
    tpl = open(FORM["v"][5:]).read() if FORM["v"].startswith("file:") else TPL  # file:PATH: another template, e.g. HEAD's
    return _env().from_string(tpl).render(dtype=dtype, layout=layout, diag=10 if FORM["v"] == "diag10" else 0, **config)


K.render = patched
CFGS = [sp24.normalize(c, "fp16") for c in (dict(bn=64, kc=4, wg=1, stages=4, splitk=1), dict(bn=64, kc=2, wg=1, stages=4, splitk=1),
                                           dict(bn=64, kc=4, wg=2, stages=4, splitk=1), dict(bn=128, kc=4, wg=1, stages=4, splitk=1),
                                           # l2 in nk (session 41): the heaviest rows doubled, their residual gone
                                           dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=12), dict(bn=64, kc=4, wg=2, stages=4, splitk=1, l2=12),
                                           dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=25), dict(bn=64, kc=2, wg=1, stages=4, splitk=1, l2=25),
                                           dict(bn=128, kc=4, wg=1, stages=4, splitk=1, l2=100),
                                           dict(bn=64, kc=4, wg=2, stages=4, splitk=1, l2=25), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=12),
                                           dict(bn=64, kc=4, wg=2, stages=6, splitk=1, l2=12),
                                           dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=12, pw=1), dict(bn=128, kc=1, wg=2, stages=6, splitk=1, l2=12),
                                           dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1))]
# session 42: the persistent loop (pt 1) in nk, twins of every config above
CFGS += [sp24.normalize(dict(c, pt=1), "fp16") for c in list(CFGS)]
if len(sys.argv) > 3 and sys.argv[3] in ("l2", "l2pt"):
    CFGS = [c for c in CFGS if c["l2"] and (c["pt"] or sys.argv[3] == "l2")]
if len(sys.argv) > 3 and sys.argv[3] == "bn96":  # session 43: bn 96 twins of the MiniLM records' configs (43 column tiles at 4096)
    CFGS = [sp24.normalize({**dict(bn=bn, kc=2, wg=2, stages=4, splitk=1, l2=l2, pw=1), **x}, "fp16")
            for bn in (128, 96) for l2 in (12, 25) for x in (dict(), dict(stages=6), dict(kc=4, stages=3), dict(pt=1))]
if len(sys.argv) > 3 and sys.argv[3] == "sk":  # session 43: more blocks than 96 tiles (one wave of 132 SMs) at pw 1
    CFGS = [sp24.normalize({**dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=l2, pw=1), **x}, "fp16")
            for l2 in (12, 25) for x in (dict(), dict(splitk=2), dict(splitk=3), dict(wg=1), dict(wg=1, splitk=2),
                                         dict(bn=64), dict(bn=64, kc=4), dict(stages=6), dict(kc=4, stages=3))]
if len(sys.argv) > 3 and sys.argv[3] == "pp":  # session 44: consumer ping-pong (bench/drafts/tc_sp24-nk-pingpong.patch) twins
    CFGS = [sp24.normalize({**dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1, pt=1), **x, "pp": pp}, "fp16")
            for x in (dict(), dict(stages=6), dict(kc=4, stages=3), dict(bn=64), dict(l2=0))[:int(os.environ.get("PROBE_PP", "5"))]
            for pp in (0, 1)]
if len(sys.argv) > 3 and sys.argv[3] == "win":  # session 44: y's window store without divisions, MiniLM's known-goods and their pt twins
    CFGS = [sp24.normalize({**dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1), **x, "pt": pt}, "fp16")
            for x in (dict(), dict(l2=12), dict(stages=6), dict(kc=4, stages=3)) for pt in (0, 1)]
if os.environ.get("PROBE_PRECOMPILE", "1") == "1":  # session 44: NVRTC in 15 threads first (a cold cache took ~10 s a config)
    from concurrent.futures import ThreadPoolExecutor

    from sparse_autotune.device.compile import compile_kernel

    for form in FORMS:
        FORM["v"] = form
        with ThreadPoolExecutor(max_workers=15) as pool:
            list(pool.map(lambda c: compile_kernel(patched(sp24, c, "fp16", None, "nk"), options=(f"-arch={sp24.arch}",)),
                          [c for c in CFGS if "yb" != form]))
    print(f"precompiled {len(CFGS)} configs x {len(FORMS)} forms", flush=True)
LAYERS = os.environ.get("PROBE_LAYERS", "query,intermediate,output.dense").split(",")  # session 44: e.g. intermediate
NS = [int(v) for v in os.environ.get("PROBE_N", "128,1024,4096").split(",")]
layers, extras, _ = load_bundle("examples/minilm/data/minilm-d0.05.npz")
st = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
rng = np.random.default_rng(0)
out = []
for name in [f"encoder.layer.0.{v}" for v in ("attention.self.query", "intermediate.dense", "output.dense") if any(x in v for x in LAYERS)]:
    a = layers[name + ".weight"].astype(np.float32)
    m, k = a.shape
    ad = DeviceCSR(a, "fp16")
    w = dense_copy(a, "fp16")
    bias = cp.asarray(storage(np.asarray(extras[name + ".bias"], dtype=np.float32), "fp16"))
    for n in NS:
        xs = [cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), "fp16")) for _ in range(8)]
        y = cp.empty((n, m), dtype=cp.float16)
        ref = xs[0].astype(cp.float32) @ w.astype(cp.float32).T + bias.astype(cp.float32)
        dl = DenseLauncher(w, n, "fp16", "nk")
        r = {"layer": name, "m": m, "k": k, "n": n,
             "cublas_bias": time_launches([lambda x=x: dl(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us,
             "cublas": time_launches([lambda x=x: dl(x.data.ptr, y.data.ptr, st(), 0) for x in xs]).median_us, "forms": {}}
        dl2 = DenseLauncher(w, n, "fp16", "nk", fused_bias=False)  # session 41: cuBLASLt's bias epilogue vs 2 kernels
        r["cublas_fused"] = dl.lt is not None
        r["cublas_bias_2k"] = time_launches([lambda x=x: dl2(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
        y.fill(7)
        dl(xs[0].data.ptr, y.data.ptr, st(), bias.data.ptr)
        cp.cuda.Device().synchronize()
        r["cublas_bias_err"] = float(cp.max(cp.abs(y.astype(cp.float32) - ref)) / (cp.max(cp.abs(ref)) + 1e-9))
        ba = bias_add_launcher("fp16", n, m)
        r["bias_add"] = time_launches([lambda: ba(y.data.ptr, y.data.ptr, st(), bias.data.ptr)]).median_us
        for form in FORMS:
            FORM["v"] = form
            for cfg in CFGS:
                if form == "yb":  # y's window by bulk copies: the l2 configs whose window is staged
                    cfg = dict(cfg, yb=1)
                    if not cfg["l2"] or sp24.for_layout("nk").check({**cfg, NK_PATH: "native"}, problem_env(m, k, n, ad.nnz, "fp16", "nk"), DEFAULT_LIMITS):
                        continue
                try:
                    ln = build_kernel(ad, "tc_sp24", cfg, "fp16", layout="nk").launcher(n)
                except CandidateError as e:  # e.g. more shared memory than a block may have
                    print(f"  skip {cfg}: {str(e)[:120]}", flush=True)
                    continue
                y.fill(7)
                ln(xs[0].data.ptr, y.data.ptr, st(), bias.data.ptr)
                cp.cuda.Device().synchronize()
                err = float(cp.max(cp.abs(y.astype(cp.float32) - ref)) / (cp.max(cp.abs(ref)) + 1e-9))
                t = time_launches([lambda x=x: ln(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
                if os.environ.get("PROBE_VERBOSE"):
                    print(f"  {m}x{k} N={n} {form} {dict((q, cfg.get(q, 0)) for q in ('bn', 'kc', 'stages', 'l2', 'pp'))}: {t:.2f} us err {err:.1e}", flush=True)
                r["forms"].setdefault(form, []).append({"cfg": {q: cfg.get(q, 0) for q in ("bn", "kc", "wg", "stages", "splitk", "l2", "pw", "pt", "yb", "pp")},
                                                       "us": t, "err": err})
        out.append(r)
        json.dump(out, open(sys.argv[1], "w"), indent=1)  # after each case (a call's limit may cut the run)
        best = {f"{f}{' l2' if l2 else ''}{' pt' if pt else ''}{' pp' if pp else ''}": min(es, key=lambda e: e["us"])
                for f, v in r["forms"].items() for l2 in (False, True) for pt in (0, 1) for pp in (0, 1)
                if (es := [e for e in v if bool(e["cfg"]["l2"]) == l2 and e["cfg"]["pt"] == pt and e["cfg"]["pp"] == pp])}
        print(f"| {m}x{k} | {n} | {r['cublas_bias']:.2f} (fused {r['cublas_fused']}, err {r['cublas_bias_err']:.1e}) | "
              f"{r['cublas_bias_2k']:.2f} | {r['cublas']:.2f} | bias {r['bias_add']:.2f} | "
              + " | ".join(f"{f} {b['us']:.2f} (err {b['err']:.1e})" for f, b in best.items()) + " |", flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
