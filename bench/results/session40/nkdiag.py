"""Session 40: kn vs nk tc_sp24 cut-outs (diag 1: the copies alone; 3: no B boxes; 6: the bare wgmma loop; results
wrong on purpose: timing only)."""
import json, sys
import numpy as np, scipy.sparse as sp
from sparse_autotune.device.gpu import cupy
import sparse_autotune.device.kernel as K
from sparse_autotune.core.render import _env
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.timing import time_launches
from sparse_autotune.core.problem import storage
from sparse_autotune.core.families import get_family
cp = cupy()
sp24 = get_family("tc_sp24").space
D = {"d": 0}
def patched(space, config, dtype, context=None, layout="kn"):
    return _env().get_template(space.template).render(dtype=dtype, layout=layout, diag=D["d"], **config)
K.render = patched
cfgs = [sp24.normalize(c, "fp16") for c in (dict(bn=64, kc=2, wg=1, stages=4, splitk=1), dict(bn=128, kc=2, wg=2, stages=4, splitk=1), dict(bn=128, kc=2, wg=1, stages=4, splitk=1))]
rng = np.random.default_rng(0)
st = lambda: cp.cuda.get_current_stream().ptr
out = []
for (m, k, n) in [(384, 384, 1024), (1536, 384, 4096), (384, 1536, 1024)]:
    a = sp.random(m, k, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    ad = DeviceCSR(a, "fp16")
    xs = [cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), "fp16")) for _ in range(8)]
    bs = [cp.ascontiguousarray(x.T) for x in xs]
    bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), "fp16"))
    y = cp.empty((n, m), dtype=cp.float16); c = cp.empty((m, n), dtype=cp.float16)
    for cfg in cfgs:
        row = []
        for d in (0, 1, 3, 5, 6, 10):
            D["d"] = d
            kn = build_kernel(ad, "tc_sp24", cfg, "fp16").launcher(n)
            tkn = time_launches([lambda b=b: kn(b.data.ptr, c.data.ptr, st()) for b in bs]).median_us
            ln = build_kernel(ad, "tc_sp24", cfg, "fp16", layout="nk").launcher(n)
            tnk = time_launches([lambda x=x: ln(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
            row.append((d, tkn, tnk))
        out.append({"m": m, "k": k, "n": n, "cfg": cfg, "rows": row})
        print(f"| {m}x{k} N{n} | {cfg['bn']}/{cfg['kc']}/{cfg['wg']} | " + " | ".join(f"d{d} {a:.2f}/{b:.2f}" for d, a, b in row) + " |", flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
