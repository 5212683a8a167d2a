"""The nk layout (y = x @ A^T + bias, x N x K and y N x M row-major, as nn.Linear holds them) on the GPU, for every
kernel family, implemented once:

- native: a family whose space declares `layouts = ["kn", "nk"]` renders its template for nk (device.kernel.build_kernel
  with layout="nk"): one kernel reads x and writes y with the bias.
- staged (any family): x transposed into a K x N workspace, the family's kn kernel into an M x N workspace, then one
  kernel writing y = C^T + bias: three launches, `StagedLauncher(x_ptr, y_ptr, stream_ptr, bias_ptr=0)`.

An nk config carries which one in its `nk_path` (core.space.NK_PATH); `build_for` builds either. The workspaces are
made when a launcher for N is made and held by it (one staged launcher serves one launch in flight at a time: two
streams running the same operator at once would share them, as the split-K families' workspaces). The vendor paths'
nk launchers (device.vendor) add the bias with `bias_add_launcher`. Every launcher here is capturable in a CUDA graph.
"""
from __future__ import annotations

import threading

import numpy as np

from ..core.problem import DTYPES
from ..core.space import get_space, split_path
from ..device.compile import compile_kernel, function_ptr
from ..device.kernel import BiasLauncher, DeviceCSR, Kernel, build_kernel

TILE = 32  # the transpose's tile (TILE x TILE elements through shared memory, a block of TILE x ROWS threads)
ROWS = 8
ADD_THREADS = 256
ADD_MAX_BLOCKS = 1 << 16  # the bias add strides over the rest

_CONVERT = {
    "fp32": "typedef float T;\n"
            "__device__ __forceinline__ float to_f(T v) { return v; }\n"
            "__device__ __forceinline__ T from_f(float f) { return f; }\n",
    "fp16": "typedef unsigned short T;\n"
            "__device__ __forceinline__ float to_f(T h) {\n"
            "    float f; asm(\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(h)); return f; }\n"
            "__device__ __forceinline__ T from_f(float f) {\n"
            "    T h; asm(\"cvt.rn.f16.f32 %0, %1;\" : \"=h\"(h) : \"f\"(f)); return h; }\n",
    "bf16": "typedef unsigned short T;\n"
            "__device__ __forceinline__ float to_f(T h) { return __uint_as_float((unsigned int)h << 16); }\n"
            "__device__ __forceinline__ T from_f(float f) {\n"
            "    T h; asm(\"cvt.rn.bf16.f32 %0, %1;\" : \"=h\"(h) : \"f\"(f)); return h; }\n",
}

_SOURCE = """// sparse-autotune: the nk layout's staging kernels | dtype={dtype}
{convert}
// out (cols x rows) = in (rows x cols) transposed: out[c][r] = in[r][c] (+ bias[r] where bias is not null); one
// tile a block, the blocks flattened over (tile row, tile column)
extern "C" __global__ void __launch_bounds__({tile} * {rows}) sat_transpose(const T* __restrict__ in,
        T* __restrict__ out, const T* __restrict__ bias, int rows, int cols, int tiles_c) {{
    __shared__ T tile[{tile}][{tile} + 1];
    const long t = blockIdx.x;
    const int r0 = (int)(t / tiles_c) * {tile}, c0 = (int)(t % tiles_c) * {tile};
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (int i = ty; i < {tile}; i += {rows}) {{
        const int r = r0 + i, c = c0 + tx;
        if (r < rows && c < cols) tile[i][tx] = in[(long)r * cols + c];
    }}
    __syncthreads();
    for (int i = ty; i < {tile}; i += {rows}) {{
        const int c = c0 + i, r = r0 + tx;
        if (r < rows && c < cols) {{
            T v = tile[tx][i];
            if (bias != nullptr) v = from_f(to_f(v) + to_f(bias[r]));
            out[(long)c * rows + r] = v;
        }}
    }}
}}

// out (rows x cols) = in + bias broadcast over the rows (bias[c] on column c); in may be out (in place). 16 bytes a
// thread (V elements) where cols % V == 0 and the three pointers are 16-byte aligned, else one element a thread; a
// grid-stride loop with 32-bit indices (the launcher: rows x cols < 2^31; sat_add_bias_wide past it). Session 41: the one-element form with a
// 64-bit modulo took 17.5 us at 4096 x 1536 fp16 (25 MB moved), 2.4 us at 1024 x 384
extern "C" __global__ void __launch_bounds__({add}) sat_add_bias(const T* in, T* out, const T* __restrict__ bias,
        int rows, int cols) {{
    constexpr int V = 16 / sizeof(T);
    const unsigned int stride = gridDim.x * {add};
    const unsigned int i0 = blockIdx.x * {add} + threadIdx.x;
    if (cols % V == 0 && ((reinterpret_cast<size_t>(in) | reinterpret_cast<size_t>(out) | reinterpret_cast<size_t>(bias)) & 15) == 0) {{
        const unsigned int cv = cols / V, total = (unsigned int)rows * cv;
        union U {{ uint4 u; T v[V]; }};
        for (unsigned int i = i0; i < total; i += stride) {{
            const unsigned int c = i % cv;
            U x, b;
            x.u = reinterpret_cast<const uint4*>(in)[i];
            b.u = __ldg(reinterpret_cast<const uint4*>(bias) + c);
#pragma unroll
            for (int e = 0; e < V; ++e) x.v[e] = from_f(to_f(x.v[e]) + to_f(b.v[e]));
            reinterpret_cast<uint4*>(out)[i] = x.u;
        }}
        return;
    }}
    const unsigned int total = (unsigned int)rows * cols;
    for (unsigned int i = i0; i < total; i += stride)
        out[i] = from_f(to_f(in[i]) + to_f(bias[i % (unsigned int)cols]));
}}

// the same for 2^31 elements and more: one element a thread, 64-bit indices (the add before session 41)
extern "C" __global__ void __launch_bounds__({add}) sat_add_bias_wide(const T* in, T* out, const T* __restrict__ bias,
        int rows, int cols) {{
    const long total = (long)rows * cols;
    for (long i = (long)blockIdx.x * {add} + threadIdx.x; i < total; i += (long)gridDim.x * {add})
        out[i] = from_f(to_f(in[i]) + to_f(bias[i % cols]));
}}
"""


def source(dtype: str) -> str:
    """The staging kernels' CUDA source for a dtype (fp32, fp16, bf16 as raw 16-bit words; tf32: fp32's)."""
    dtype = "fp32" if dtype == "tf32" else dtype
    return _SOURCE.format(dtype=dtype, convert=_CONVERT[dtype], tile=TILE, rows=ROWS, add=ADD_THREADS)


def _launcher(name: str, dtype: str, grid: int, block: tuple, values: list) -> BiasLauncher:
    """A BiasLauncher of one staging kernel: slots 0, 1, 2 are in, out, bias (the B, C and bias slots)."""
    fn = compile_kernel(source(dtype), name)
    return BiasLauncher(function_ptr(fn), (grid,), block, 0, [0, 0, 0, *values], 0, 1, (fn,), bias_slot=2)


def transpose_launcher(dtype: str, rows: int, cols: int) -> BiasLauncher:
    """`ln(in_ptr, out_ptr, stream_ptr, bias_ptr=0)`: out (cols x rows) = in (rows x cols) transposed, each element of
    in's row r plus bias[r] where bias_ptr is not 0. Both row-major, of the dtype."""
    if rows == 0 or cols == 0:
        return BiasLauncher.noop()
    tiles_c = -(-cols // TILE)
    grid = -(-rows // TILE) * tiles_c
    return _launcher("sat_transpose", dtype, grid, (TILE, ROWS),
                     [np.int32(rows), np.int32(cols), np.int32(tiles_c)])


def bias_add_launcher(dtype: str, rows: int, cols: int) -> BiasLauncher:
    """`ln(in_ptr, out_ptr, stream_ptr, bias_ptr)`: out (rows x cols) = in + bias (length cols) on every row; in_ptr may
    be out_ptr. The vendor paths' nk bias (device.vendor)."""
    if rows == 0 or cols == 0:
        return BiasLauncher.noop()
    wide = rows * cols >= 2 ** 31  # past 32-bit indices: the one-element kernel with 64-bit ones
    v = 16 // int(np.dtype(DTYPES[dtype]).itemsize)
    work = rows * cols // v if cols % v == 0 and not wide else rows * cols  # 16-byte vectors where the rows allow them
    grid = min(ADD_MAX_BLOCKS, -(-work // ADD_THREADS))
    return _launcher("sat_add_bias_wide" if wide else "sat_add_bias", dtype, grid, (ADD_THREADS,),
                     [np.int32(rows), np.int32(cols)])


class StagedLauncher:
    """The staged nk path for one N: `ln(x_ptr, y_ptr, stream_ptr, bias_ptr=0)` launches x (N x K) transposed into the
    K x N workspace, the kn launcher (`kn(b_ptr, c_ptr, stream_ptr)`) into the M x N workspace, and y (N x M) = C^T +
    bias (none where bias_ptr is 0), all on `stream_ptr`. It holds its workspaces (`workspace_bytes`)."""

    is_noop = False

    def __init__(self, kn, dtype: str, m: int, k: int, n: int, workspaces=None):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        es = np.dtype(DTYPES[dtype]).itemsize
        if workspaces is None:
            workspaces = (cp.empty(max(1, k * n * es), dtype=cp.uint8), cp.empty(max(1, m * n * es), dtype=cp.uint8))
        self.workspaces = workspaces
        self._wb, self._wc = (int(w.data.ptr) for w in workspaces)
        self.kn = kn
        self._tin = transpose_launcher(dtype, n, k)  # x (N x K) -> B (K x N)
        self._tout = transpose_launcher(dtype, m, n)  # C (M x N) -> y (N x M), + bias
        self._lock = threading.Lock()

    @property
    def workspace_bytes(self) -> int:
        return int(sum(int(w.nbytes) for w in self.workspaces))

    def __call__(self, b_ptr: int, c_ptr: int, stream_ptr: int, bias_ptr: int = 0) -> None:
        with self._lock:  # the three launches in order, the workspaces one call's at a time on the host
            self._tin(b_ptr, self._wb, stream_ptr, 0)
            self.kn(self._wb, self._wc, stream_ptr)
            self._tout(self._wc, c_ptr, stream_ptr, bias_ptr)

    launch = __call__


class StagedKernel:
    """A kn kernel (device.kernel.Kernel) serving an nk problem through the staged path: called like an nk Kernel,
    `kernel(x, y, bias=None)` on the current CuPy stream, `kernel.launcher(n)` a StagedLauncher (cached per N). Its
    config is the kn kernel's with nk_path "staged"; A's bytes are the kn kernel's (the workspaces are not A)."""

    layout = "nk"
    path = "staged"

    def __init__(self, kern: Kernel, workspaces: dict | None = None):
        if kern.layout != "kn":
            raise ValueError("the staged path runs a kn kernel")
        self.kern = kern
        self._workspaces = {} if workspaces is None else workspaces  # N -> (B, C) workspaces, shared by twins
        self._launchers: dict = {}

    family = property(lambda self: self.kern.family)
    dtype = property(lambda self: self.kern.dtype)
    source = property(lambda self: self.kern.source)
    a = property(lambda self: self.kern.a)
    space = property(lambda self: self.kern.space)

    @property
    def config(self) -> dict:
        from ..core.space import NK_PATH  # noqa: PLC0415
        return {**self.kern.config, NK_PATH: "staged"}

    def a_bytes(self, n: int = 1) -> int:
        return self.kern.a_bytes(n)

    def args(self, n: int, b, c, bias=None) -> tuple:
        """The kn kernel's arguments for N = n (A's device arrays, what device.cold rotates; b and c are the staged
        workspaces' when it runs)."""
        return self.kern.args(n, b, c)

    def warm(self) -> None:
        self.kern.warm()

    def bound_to(self, a: DeviceCSR) -> "StagedKernel":
        """The same path over another copy of A (DeviceCSR.twin); the workspaces are shared."""
        return StagedKernel(self.kern.bound_to(a), self._workspaces)

    def launcher(self, n: int):
        ln = self._launchers.get(n)
        if ln is None:
            m, k = self.kern.a.shape
            if m == 0 or n == 0:
                ln = BiasLauncher.noop()
            else:
                ws = self._workspaces.get(n)
                ln = StagedLauncher(self.kern.launcher(n), self.dtype, m, k, n, ws)
                self._workspaces.setdefault(n, ln.workspaces)
            self._launchers[n] = ln
        return ln

    def __call__(self, x, y, bias=None):
        """y = x @ A^T + bias on the current CuPy stream (x N x K, y N x M, bias length M or None); returns y."""
        ln = self.launcher(int(x.shape[0]))
        if not ln.is_noop:
            from ..device.gpu import cupy  # noqa: PLC0415
            ln(x.data.ptr, y.data.ptr, cupy().cuda.get_current_stream().ptr, 0 if bias is None else bias.data.ptr)
        return y


def build_for(a: DeviceCSR, family: str, config: dict, dtype: str, layout: str = "kn"):
    """The runnable of one config for a problem of `layout`: kn, the family's kernel (build_kernel); nk, by the
    config's nk_path (absent: native where the family declares nk, else staged), a native nk Kernel or a
    StagedKernel over the family's kn kernel. Both are called as `kernel(x, y, bias=None)`."""
    if layout == "kn":
        return build_kernel(a, family, split_path(config)[0], dtype)
    cfg, path = split_path(config)
    if path is None:
        path = get_space(family).default_path()
    if path == "native":
        return build_kernel(a, family, cfg, dtype, layout="nk")
    if path != "staged":
        from ..errors import CandidateError  # noqa: PLC0415
        raise CandidateError("render", f"unknown nk path {path!r} (native or staged)")
    kern = StagedKernel(build_kernel(a, family, cfg, dtype))
    compile_kernel(source(dtype), "sat_transpose")  # now (the tuner's compile threads), not at the first launch
    return kern
