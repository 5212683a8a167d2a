"""One tc_sp24 nk kernel (random uniform A, seed 0) launched a few times for Nsight Compute (session 55: tf32 against its
fp16 twin on the dl suite's 3072x768 N = 2048 d 0.05 as nk):
    ncu --section SpeedOfLight --section MemoryWorkloadAnalysis ... -k regex:spmm_kernel -s 2 -c 1 \\
        python3 bench/drafts/tf32_profile.py tf32|fp16 M K N DENSITY [CONFIG JSON]"""
import json
import sys

import numpy as np

from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix, storage
from sparse_autotune.device.gpu import cupy
from sparse_autotune.device.kernel import DeviceCSR, build_kernel

cp = cupy()
dtype, m, k, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
cfg = get_family("tc_sp24").space.normalize(json.loads(sys.argv[6]) if len(sys.argv) > 6 else
                                            dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1), dtype)
rng = np.random.default_rng(0)
a = random_matrix(m, k, d, "uniform", 0).astype(np.float32)
a.data = rng.standard_normal(a.nnz).astype(np.float32)
ad = DeviceCSR(a, dtype)
st = cp.cuda.get_current_stream().ptr
x = cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), dtype))
y = cp.empty((n, m), dtype=x.dtype)
bias = cp.asarray(storage(rng.standard_normal(m).astype(np.float32), dtype))
ln = build_kernel(ad, "tc_sp24", cfg, dtype, layout="nk").launcher(n)
for _ in range(4):
    ln(x.data.ptr, y.data.ptr, st, bias.data.ptr)
cp.cuda.Device().synchronize()
print(dtype, m, k, n, d, cfg, "ok")
