"""A problem on the device: A in every layout, rotating B buffers, the output, and float64 references."""
from __future__ import annotations

import numpy as np

from ..device.gpu import GpuInfo, cupy
from ..device.kernel import DeviceCSR
from ..core.problem import DTYPES, Problem, storage
from ..device.timing import n_buffers
from ..device.verify import reference


class GpuProblem:
    def __init__(self, problem: Problem, gpu: GpuInfo, seed: int = 0):
        cp = cupy()
        import cupyx.scipy.sparse as csp  # noqa: PLC0415
        self.cp = cp
        self.problem = problem
        self.gpu = gpu
        self.np_dtype = DTYPES[problem.dtype]
        self.a_dev = DeviceCSR(problem.matrix, problem.dtype)
        a_host = problem.matrix  # float32 holding exactly the values the kernels see (rounded to fp16 / bf16 for those)
        self.a64 = csp.csr_matrix(a_host.astype(np.float64))
        self._a32 = csp.csr_matrix(a_host.astype(np.float32))
        es = np.dtype(self.np_dtype).itemsize
        self.rng = cp.random.default_rng(seed + 1)
        nbuf = n_buffers(problem.k * problem.n * es, gpu.l2_bytes)
        self.b_bufs = [self.random_b() for _ in range(nbuf)]
        self.c = cp.empty((problem.m, problem.n), dtype=self.np_dtype)
        self.ref = reference(self.a64, self.b_bufs[0])

    def random_b(self):
        p = self.problem
        return storage(self.rng.standard_normal((p.k, p.n), dtype=np.float32), p.dtype)

    def fresh_check(self):
        """A fresh random B and its float64 reference (every verification draws new inputs)."""
        b = self.random_b()
        return b, reference(self.a64, b)

    def a_dense_f32(self):
        return self._a32.toarray()
