"""Session 40: tc_sp24 kn vs nk native, same configs; nk with y's global stores cut out (results wrong: timing only)."""
import json, sys, re, itertools, concurrent.futures as cf
import numpy as np, scipy.sparse as sp
from sparse_autotune.device.gpu import cupy
import sparse_autotune.device.kernel as K
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.timing import time_launches
from sparse_autotune.core.problem import storage
from sparse_autotune.core.families import get_family
cp = cupy()
sp24 = get_family("tc_sp24").space
_render = K.render
MODE = {"v": None}
def patched(space, config, dtype, context=None, layout="kn"):
    src = _render(space, config, dtype, context, layout)
    if MODE["v"] == "nostore":
        src = "\n".join(l for l in src.split("\n") if '"l"(C + (size_t)col * M + r)' not in l)
    if MODE["v"] == "noepi":
        src = "\n".join(l for l in src.split("\n") if '"l"(C + (size_t)col * M + r)' not in l and "st.shared.u16" not in l)
    return src
K.render = patched
cfgs = [sp24.normalize(dict(bn=bn, kc=kc, wg=wg, stages=4, splitk=1), "fp16") for bn, kc, wg in itertools.product((64, 128), (2, 4), (1, 2))]
rng = np.random.default_rng(0)
st = lambda: cp.cuda.get_current_stream().ptr
out = []
for (m, k) in [(384, 384), (1536, 384), (384, 1536)]:
    a = sp.random(m, k, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    ad = DeviceCSR(a, "fp16")
    for n in (1024, 4096):
        xs = [cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), "fp16")) for _ in range(8)]
        bs = [cp.ascontiguousarray(x.T) for x in xs]
        bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), "fp16"))
        y = cp.empty((n, m), dtype=cp.float16); c = cp.empty((m, n), dtype=cp.float16)
        for cfg in cfgs:
            r = {"m": m, "k": k, "n": n, "cfg": {kk: cfg[kk] for kk in ("bn", "kc", "wg")}}
            MODE["v"] = None
            kn = build_kernel(ad, "tc_sp24", cfg, "fp16").launcher(n)
            r["kn"] = time_launches([lambda b=b: kn(b.data.ptr, c.data.ptr, st()) for b in bs]).median_us
            for v in (None, "nostore", "noepi"):
                MODE["v"] = v
                ln = build_kernel(ad, "tc_sp24", cfg, "fp16", layout="nk").launcher(n)
                r[v or "nk"] = time_launches([lambda x=x: ln(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
            out.append(r)
            print(f"| {m}x{k} | {n} | {r['cfg']} | {r['kn']:.2f} | {r['nk']:.2f} | {r['nostore']:.2f} | {r['noepi']:.2f} |", flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
