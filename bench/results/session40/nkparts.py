"""Session 40: the staged nk path's parts on MiniLM shapes (random A, d 0.05, fp16): x^T, the kn kernel, C^T + bias,
the whole staged launcher, and cuBLAS (cupy x @ W^T). Prints a markdown table; JSON to argv[1]."""
import json, sys, time
import numpy as np, scipy.sparse as sp
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.staged import StagedKernel, transpose_launcher
from sparse_autotune.device.timing import time_launches
from sparse_autotune.core.problem import storage
cp = cupy()
cfgs = [json.loads(l.split(":", 1)[1]) for l in open("bench/drafts/minilm-kn-configs.txt") if l.startswith("tc_sp24:")]
rows = []
rng = np.random.default_rng(0)
for (m, k) in [(384, 384), (1536, 384), (384, 1536)]:
    a = sp.random(m, k, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    ad = DeviceCSR(a, "fp16")
    w = cp.asarray(storage(a.toarray(), "fp16"))
    wt = w.T
    for n in (128, 1024, 4096):
        xs = [cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), "fp16")) for _ in range(8)]
        bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), "fp16"))
        y = cp.empty((n, m), dtype=cp.float16)
        ws_b = cp.empty((k, n), dtype=cp.float16); ws_c = cp.empty((m, n), dtype=cp.float16)
        st = lambda: cp.cuda.get_current_stream().ptr
        tin = transpose_launcher("fp16", n, k); tout = transpose_launcher("fp16", m, n)
        r = {"m": m, "k": k, "n": n}
        r["cublas"] = time_launches([lambda x=x: cp.matmul(x, wt, out=y) for x in xs]).median_us
        r["tin"] = time_launches([lambda x=x: tin(x.data.ptr, ws_b.data.ptr, st(), 0) for x in xs]).median_us
        r["tout"] = time_launches([lambda: tout(ws_c.data.ptr, y.data.ptr, st(), bias.data.ptr)]*2).median_us
        best = None
        for cfg in cfgs:
            try:
                kern = build_kernel(ad, "tc_sp24", cfg, "fp16")
                kern.warm()
                kl = kern.launcher(n)
                sl = StagedKernel(kern).launcher(n)
                # check the staged result once
                sl(xs[0].data.ptr, y.data.ptr, st(), bias.data.ptr); cp.cuda.Device().synchronize()
                ref = xs[0].astype(cp.float32) @ w.T.astype(cp.float32) + bias.astype(cp.float32)
                err = float(cp.max(cp.abs(y.astype(cp.float32) - ref)) / (cp.max(cp.abs(ref)) + 1e-9))
                tk = time_launches([lambda b=b: kl(b.data.ptr, ws_c.data.ptr, st()) for b in
                                    [cp.ascontiguousarray(x.T) for x in xs]]).median_us
                ts = time_launches([lambda x=x: sl(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
            except Exception as e:  # noqa
                print("skip", m, k, n, cfg, str(e).splitlines()[0][:120]); continue
            if best is None or ts < best["staged"]:
                best = {"kn": tk, "staged": ts, "err": err, "cfg": cfg}
        r.update(best or {})
        rows.append(r)
        print(f"| {m}x{k} | {n} | {r['cublas']:.2f} | {r['tin']:.2f} | {r.get('kn', 0):.2f} | {r['tout']:.2f} | "
              f"{r.get('staged', 0):.2f} | {r['cublas']/r.get('staged', 1e9):.2f} | {r['cublas']/r.get('kn', 1e9):.2f} | {r.get('err', -1):.1e} |", flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
