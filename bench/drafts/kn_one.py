"""One kernel of a family on a random kn problem (C = A @ B), verified once and launched 3 times: the target of a
source-level Nsight Compute profile (session 45; nk_one.py does MiniLM's nk layers), e.g. on the device
    ncu --set full -k spmm_kernel --launch-skip 1 --launch-count 1 -o rep python3 bench/drafts/kn_one.py \
        3072 768 2048 0.1 uniform tc_sp24 '{"bn":128,"kc":2,"wg":2,"stages":6,"splitk":1}'
    ncu --import rep.ncu-rep --page source --csv --print-source sass > sass.csv
Arguments: M K N density pattern family CONFIG_JSON [dtype, default fp16]."""
import json
import sys

import numpy as np

from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix, storage
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel
from sparse_autotune.device.vendor import dense_copy

cp = cupy()
m, k, n = (int(v) for v in sys.argv[1:4])
density, pattern, family, cfg = float(sys.argv[4]), sys.argv[5], sys.argv[6], json.loads(sys.argv[7])
dtype = sys.argv[8] if len(sys.argv) > 8 else "fp16"
a = random_matrix(m, k, density, pattern, seed=0)
a.data = np.random.default_rng(1).standard_normal(a.nnz).astype(np.float32)
ad = DeviceCSR(a, dtype)
cfg = get_family(family).space.normalize(cfg, dtype)
b = cp.asarray(storage(np.random.default_rng(2).standard_normal((k, n)).astype(np.float32), dtype))
c = cp.empty((m, n), dtype=b.dtype)
ln = build_kernel(ad, family, cfg, dtype).launcher(n)
st = cp.cuda.get_current_stream().ptr
for _ in range(3):
    ln(b.data.ptr, c.data.ptr, st)
cp.cuda.Device().synchronize()
w = dense_copy(a, dtype)
ref = w.astype(cp.float32) @ b.astype(cp.float32)
print(m, k, n, density, pattern, family, cfg, "err",
      float(cp.max(cp.abs(c.astype(cp.float32) - ref)) / cp.max(cp.abs(ref))))
