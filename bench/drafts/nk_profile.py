"""One tc_sp24 kernel on MiniLM's real 1536x384 layer (layer 0 intermediate, d 0.05) at N = 4096, kn or nk, for Nsight
Compute (session 41: nk ran 26.8 us there against cuBLAS FP16's 10.5 and the kn kernel's ~15):
    ncu --section SpeedOfLight ... -k regex:spmm_kernel -s 2 -c 1 python3 bench/drafts/nk_profile.py nk|kn [CONFIG JSON]"""
import json
import sys

import numpy as np

from sparse_autotune.core.checkpoint import load_bundle
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import storage
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel

cp = cupy()
layout = sys.argv[1]
cfg = get_family("tc_sp24").space.normalize(json.loads(sys.argv[2]) if len(sys.argv) > 2 else
                                            dict(bn=64, kc=4, wg=2, stages=4, splitk=1, l2=12), "fp16")
name = "encoder.layer.0.intermediate.dense"
a = load_bundle("examples/minilm/data/minilm-d0.05.npz")[0][name + ".weight"].astype(np.float32)
m, k, n = a.shape[0], a.shape[1], 4096
rng = np.random.default_rng(0)
ad = DeviceCSR(a, "fp16")
st = cp.cuda.get_current_stream().ptr
if layout == "nk":
    x = cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), "fp16"))
    y = cp.empty((n, m), dtype=cp.float16)
    bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), "fp16"))
    ln = build_kernel(ad, "tc_sp24", cfg, "fp16", layout="nk").launcher(n)
    run = lambda: ln(x.data.ptr, y.data.ptr, st, bias.data.ptr)  # noqa: E731
else:
    b = cp.asarray(storage(rng.standard_normal((k, n)).astype(np.float32), "fp16"))
    c = cp.empty((m, n), dtype=cp.float16)
    ln = build_kernel(ad, "tc_sp24", cfg, "fp16").launcher(n)
    run = lambda: ln(b.data.ptr, c.data.ptr, st)  # noqa: E731
for _ in range(4):
    run()
cp.cuda.Device().synchronize()
print(layout, cfg, "ok")
