"""Session 40: tc_sp24 nk native vs staged vs cuBLAS (DenseLauncher nk, with the bias) on MiniLM shapes (random A,
d 0.05, fp16). Prints a markdown table; JSON to argv[1]."""
import json, sys, itertools, concurrent.futures as cf
import numpy as np, scipy.sparse as sp
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.staged import StagedKernel
from sparse_autotune.device.vendor import DenseLauncher, dense_copy
from sparse_autotune.device.timing import time_launches
from sparse_autotune.core.problem import storage
from sparse_autotune.core.families import get_family
from sparse_autotune.core.space import problem_env, NK_PATH, DEFAULT_LIMITS
cp = cupy()
sp24 = get_family("tc_sp24").space
nkspace = sp24.for_layout("nk")
grid = [dict(bn=bn, kc=kc, wg=wg, stages=st, splitk=sk) for bn, kc, wg, st, sk in
        itertools.product((64, 128), (1, 2, 4), (1, 2), (4, 6), (1, 2, 4))]
kncfgs = [json.loads(l.split(":", 1)[1]) for l in open("bench/drafts/minilm-kn-configs.txt") if l.startswith("tc_sp24:")]
rows = []
rng = np.random.default_rng(0)
st = lambda: cp.cuda.get_current_stream().ptr
shapes = [(384, 384), (1536, 384), (384, 1536)]
ns = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [128, 1024, 4096]
for (m, k) in shapes:
    a = sp.random(m, k, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    ad = DeviceCSR(a, "fp16")
    w = dense_copy(a, "fp16")
    for n in ns:
        xs = [cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), "fp16")) for _ in range(8)]
        bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), "fp16"))
        y = cp.empty((n, m), dtype=cp.float16)
        ref = xs[0].astype(cp.float32) @ w.astype(cp.float32).T + bias.astype(cp.float32)
        r = {"m": m, "k": k, "n": n}
        dl = DenseLauncher(w, n, "fp16", "nk")
        r["cublas_bias"] = time_launches([lambda x=x: dl(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
        r["cublas"] = time_launches([lambda x=x: dl(x.data.ptr, y.data.ptr, st(), 0) for x in xs]).median_us
        env = problem_env(m, k, n, a.nnz, "fp16", "nk")
        nat = [sp24.normalize(c, "fp16") for c in grid]
        nat = [c for c in nat if nkspace.check({**c, NK_PATH: "native"}, env, DEFAULT_LIMITS) is None]
        stg = [sp24.normalize(c, "fp16") for c in kncfgs]
        stg = [c for c in stg if nkspace.check({**c, NK_PATH: "staged"}, env, DEFAULT_LIMITS) is None]
        with cf.ThreadPoolExecutor(16) as ex:
            kn_n = list(ex.map(lambda c: build_kernel(ad, "tc_sp24", c, "fp16", layout="nk"), nat))
            kn_s = list(ex.map(lambda c: StagedKernel(build_kernel(ad, "tc_sp24", c, "fp16")), stg))
        for tag, kerns in (("native", kn_n), ("staged", kn_s)):
            best = None
            for kern in kerns:
                ln = kern.launcher(n)
                y.fill(7); ln(xs[0].data.ptr, y.data.ptr, st(), bias.data.ptr); cp.cuda.Device().synchronize()
                err = float(cp.max(cp.abs(y.astype(cp.float32) - ref)) / (cp.max(cp.abs(ref)) + 1e-9))
                if not err < 5e-3:
                    print("WRONG", tag, m, k, n, kern.config, err, flush=True); continue
                t = time_launches([lambda x=x: ln(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
                if best is None or t < best[0]:
                    best = (t, kern.config, err)
            r[tag], r[tag + "_cfg"], r[tag + "_err"] = best if best else (None, None, None)
        rows.append(r)
        f = lambda v: f"{v:.2f}" if v else "-"
        print(f"| {m}x{k} | {n} | {f(r['cublas_bias'])} | {f(r['cublas'])} | {f(r['staged'])} | {f(r['native'])} | "
              f"{r['cublas_bias'] / r['native'] if r['native'] else 0:.2f} | "
              f"{ {kk: v for kk, v in (r['native_cfg'] or {}).items() if kk in ('bn', 'kc', 'wg', 'stages', 'splitk')} } |", flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
