"""A problem on the device: A in every layout, rotating B buffers, the output, and float64 references.

For a problem of the nk layout (core.problem) the B buffers are x (N x K), the output is y (N x M), and a random
nonzero bias (length M, the problem's dtype) is part of every verification and timing (`launch`), so that the
epilogue that adds it is checked and its time counted."""
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
        self.layout = problem.layout
        nbuf = n_buffers(problem.k * problem.n * es, gpu.l2_bytes)
        self.b_bufs = [self.random_b() for _ in range(nbuf)]
        self.c = cp.empty(self.out_shape, dtype=self.np_dtype)
        self.bias = None
        if self.layout == "nk":  # nonzero everywhere: an epilogue that skips it fails verification
            v = self.rng.standard_normal(problem.m, dtype=np.float32)
            self.bias = storage(cp.where(cp.abs(v) < 0.25, cp.float32(0.5), v), problem.dtype)
        self.ref = reference(self.a64, self.b_bufs[0], self.layout, self.bias)

    @property
    def in_shape(self) -> tuple[int, int]:
        """B's shape: K x N, or x's N x K (nk)."""
        p = self.problem
        return (p.n, p.k) if p.layout == "nk" else (p.k, p.n)

    @property
    def out_shape(self) -> tuple[int, int]:
        """C's shape: M x N, or y's N x M (nk)."""
        p = self.problem
        return (p.n, p.m) if p.layout == "nk" else (p.m, p.n)

    def random_b(self):
        return storage(self.rng.standard_normal(self.in_shape, dtype=np.float32), self.problem.dtype)

    def fresh_check(self):
        """A fresh random B and its float64 reference (every verification draws new inputs)."""
        b = self.random_b()
        return b, reference(self.a64, b, self.layout, self.bias)

    def launch(self, kern, b, c=None):
        """kern(b, c) (c: the context's output by default), with the bias for an nk problem; returns c."""
        c = self.c if c is None else c
        return kern(b, c) if self.bias is None else kern(b, c, self.bias)

    def a_dense_f32(self):
        return self._a32.toarray()
