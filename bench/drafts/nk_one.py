"""One tc_sp24 nk kernel on one of MiniLM's layers (layer 0, d 0.05), verified once and launched 3 times: the target of a
source-level Nsight Compute profile (session 44), e.g. on the device
    ncu --set full -k spmm_kernel --launch-skip 1 --launch-count 1 -o rep python3 bench/drafts/nk_one.py intermediate 4096 \
        '{"bn":128,"kc":2,"wg":2,"stages":4,"splitk":1,"l2":25,"pw":1,"pt":1}'
    ncu --import rep.ncu-rep --page source --csv --print-source sass > sass.csv"""
import json
import sys

import numpy as np

from sparse_autotune.core.checkpoint import load_bundle
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import storage
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.vendor import dense_copy

cp = cupy()
layer, n, cfg = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
name = {"query": "attention.self.query", "intermediate": "intermediate.dense", "output": "output.dense"}[layer]
name = f"encoder.layer.0.{name}"
layers, extras, _ = load_bundle("examples/minilm/data/minilm-d0.05.npz")
a = layers[name + ".weight"].astype(np.float32)
m, k = a.shape
ad = DeviceCSR(a, "fp16")
cfg = get_family("tc_sp24").space.normalize(cfg, "fp16")
bias = cp.asarray(storage(np.asarray(extras[name + ".bias"], dtype=np.float32), "fp16"))
x = cp.asarray(storage(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32), "fp16"))
y = cp.empty((n, m), dtype=cp.float16)
ln = build_kernel(ad, "tc_sp24", cfg, "fp16", layout="nk").launcher(n)
st = cp.cuda.get_current_stream().ptr
for _ in range(3):
    ln(x.data.ptr, y.data.ptr, st, bias.data.ptr)
cp.cuda.Device().synchronize()
w = dense_copy(a, "fp16")  # as nk_minilm_probe: the fp16 weight the kernel sees, dense, for the check
ref = x.astype(cp.float32) @ w.astype(cp.float32).T + bias.astype(cp.float32)
print(m, k, n, cfg, "err", float(cp.max(cp.abs(y.astype(cp.float32) - ref)) / cp.max(cp.abs(ref))))
