"""Run a rendered CUDA kernel on the CPU (tests only): the source is compiled by g++ as C++20 with a prelude that
emulates what the csr_gemv template uses - threadIdx / blockIdx, uint2 / uint4, __ldg, __shfl_xor_sync and
__syncthreads, and for its K slices __ldcg / __stcg, atomicAdd on int, __threadfence and a __shared__ scalar (the threads of a block are fibers of one OS thread, switched only at those barriers), dynamic shared
memory, and the inline PTX of fp16 / bf16 conversion, fma.rn.f16x2 and fma.rn.bf16x2 (replaced by one rounding of the
exact a * b + c, as the PTX instructions: _Float16 arithmetic, and for bf16 a rounding to 8 significant bits). Blocks run one after another (in grid order, or reversed). This executes the template's own index
arithmetic, loops, shuffles and writes; timing, caches and the memory model are not emulated (a race between
threads would not necessarily show)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading

PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <ucontext.h>
using std::min; using std::max; using std::fmaf;
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
struct uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
template <class T> static inline T __ldg(const T* p) { return *p; }
// K slices' reduction (csr_gemv ks > 1): blocks run one after another, so plain memory is coherent and atomic
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline void __stcg(T* p, T v) { *p = v; }
static inline int atomicAdd(int* p, int v) { const int old = *p; *p += v; return old; }
static inline void __threadfence() {}
#define __shared__ static thread_local
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
struct Dim3 { int x, y, z; };
// the threads of a block are fibers (ucontext) of one OS thread, switched only at barriers (cooperative)
struct Fiber { ucontext_t ctx; std::vector<char> stack; bool done = false; };
struct Barrier { int n = 0, count = 0; long gen = 0; };
struct BlockEmu {
    std::vector<Fiber> fibers; ucontext_t main; int cur = 0; Dim3 bid;
    Barrier block; std::vector<Barrier> warps; std::vector<float> slot; unsigned short* smem = nullptr;
};
thread_local BlockEmu* g_block;
thread_local Dim3 threadIdx, blockIdx;
thread_local Dim3 blockDim;  // set by emu_launch (the same for every block of a launch)
static inline void emu_yield() {
    BlockEmu& b = *g_block;
    swapcontext(&b.fibers[b.cur].ctx, &b.main);
    threadIdx = Dim3{b.cur, 0, 0}; blockIdx = b.bid;
}
static inline void emu_barrier(Barrier& bar) {
    const long gen = bar.gen;
    if (++bar.count == bar.n) { bar.count = 0; ++bar.gen; return; }
    while (bar.gen == gen) emu_yield();
}
static inline float __shfl_xor_sync(unsigned, float v, int off) {
    BlockEmu& b = *g_block;
    const int t = threadIdx.x, w = t / 32, lane = t % 32;
    b.slot[t] = v;
    emu_barrier(b.warps[w]);
    const float r = b.slot[w * 32 + (lane ^ off)];
    emu_barrier(b.warps[w]);
    return r;
}
static inline void __syncthreads() { emu_barrier(g_block->block); }
static inline float emu_h2f(unsigned short h) { _Float16 f; std::memcpy(&f, &h, 2); return (float)f; }
static inline unsigned short emu_f2h(double d) { _Float16 f = (_Float16)d; unsigned short h; std::memcpy(&h, &f, 2); return h; }
static inline unsigned short emu_f2bf(float f) {  // round to nearest even (finite values)
    unsigned int u; std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
static inline float emu_bf2f(unsigned int h) { return __uint_as_float((h & 0xffffu) << 16); }
static inline unsigned short emu_d2bf(double r) {  // one rounding (nearest even) of r to bf16 (normal range)
    if (r == 0.0) return 0;
    int e;
    std::frexp(r, &e);
    return emu_f2bf((float)std::ldexp(std::nearbyint(std::ldexp(r, 8 - e)), e - 8));  // exact in float: no 2nd rounding
}
static inline unsigned int emu_hbfma2(unsigned int a, unsigned int b, unsigned int c) {  // fma.rn.bf16x2
    unsigned int out = 0;
    for (int s = 0; s < 32; s += 16)
        out |= (unsigned int)emu_d2bf((double)emu_bf2f(a >> s) * (double)emu_bf2f(b >> s) + (double)emu_bf2f(c >> s)) << s;
    return out;
}
static inline unsigned int emu_hfma2(unsigned int a, unsigned int b, unsigned int c) {
    unsigned int out = 0;
    for (int s = 0; s < 32; s += 16) {
        const double r = (double)emu_h2f((a >> s) & 0xffffu) * (double)emu_h2f((b >> s) & 0xffffu)
                         + (double)emu_h2f((c >> s) & 0xffffu);
        out |= (unsigned int)emu_f2h(r) << s;
    }
    return out;
}
"""

# the template's inline PTX -> the prelude's emulation
_ASM = [
    (r'asm\("cvt\.f32\.f16 %0, %1;" : "=f"\((\w+)\) : "h"\((.*?)\)\);', r"\1 = emu_h2f(\2);"),
    (r'asm\("cvt\.rn\.f16\.f32 %0, %1;" : "=h"\((\w+)\) : "f"\((\w+)\)\);', r"\1 = emu_f2h(\2);"),
    (r'asm\("cvt\.rn\.bf16\.f32 %0, %1;" : "=h"\((\w+)\) : "f"\((\w+)\)\);', r"\1 = emu_f2bf(\2);"),
    (r'asm\("fma\.rn\.f16x2 %0, %1, %2, %3;" : "=r"\((\w+)\) : "r"\((\w+)\), "r"\((\w+)\), "r"\((\w+)\)\);',
     r"\1 = emu_hfma2(\2, \3, \4);"),
    (r'asm\("fma\.rn\.bf16x2 %0, %1, %2, %3;" : "=r"\((\w+)\) : "r"\((\w+)\), "r"\((\w+)\), "r"\((\w+)\)\);',
     r"\1 = emu_hbfma2(\2, \3, \4);"),
]

def gxx_path() -> str | None:
    return shutil.which("g++")


def host_source(cuda_source: str, kernel_call: str) -> str:
    """The C++ translation unit: prelude, the kernel with its PTX replaced and its shared memory a per-block buffer,
    and emu_launch, which runs every block of the grid (one after another, in grid order or reversed) with all its
    threads. kernel_call: the
    call of spmm_kernel from the typed args, e.g. `spmm_kernel((const int*)args[0], ...)`."""
    src = cuda_source
    for pat, rep in _ASM:
        src = re.sub(pat, rep, src)
    assert "asm(" not in src, "inline PTX the emulation does not know"
    src = re.sub(r"extern __shared__ .*?(\w+)\[\];", r"unsigned short* \1 = g_block->smem;", src)
    launch = r"""
thread_local void** g_args;
static void emu_fiber_entry() {
    BlockEmu& b = *g_block;
    void** args = g_args;
    threadIdx = Dim3{b.cur, 0, 0}; blockIdx = b.bid;
    KERNEL_CALL;
    b.fibers[b.cur].done = true;
}
extern "C" void emu_launch(int gx, int gy, int threads, size_t smem_bytes, void** args, int reverse) {
    g_args = args;
    blockDim = Dim3{threads, 1, 1};
    for (int i = 0; i < gx * gy; ++i) {  // reverse: the last block first (another valid order)
        const int j = reverse ? gx * gy - 1 - i : i, by = j / gx, bx = j % gx;
        BlockEmu b;
        b.bid = Dim3{bx, by, 0};
        b.block.n = threads;
        b.warps.assign(threads / 32, Barrier{32, 0, 0});
        b.slot.assign(threads, 0.0f);
        std::vector<uint4> smem(smem_bytes / 16 + 1);
        b.smem = reinterpret_cast<unsigned short*>(smem.data());
        b.fibers.resize(threads);
        g_block = &b;
        for (int t = 0; t < threads; ++t) {
            Fiber& f = b.fibers[t];
            f.stack.resize(256 * 1024);
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = &b.main;
            makecontext(&f.ctx, emu_fiber_entry, 0);
        }
        for (bool left = true; left;) {  // round robin until every thread has returned
            left = false;
            for (int t = 0; t < threads; ++t) {
                if (b.fibers[t].done) continue;
                left = true;
                b.cur = t;
                swapcontext(&b.main, &b.fibers[t].ctx);
            }
        }
    }
}
""".replace("KERNEL_CALL", kernel_call)
    return PRELUDE + src + launch


_WORKDIR: str | None = None
_LIBS: dict[str, ctypes.CDLL] = {}
_LOCK = threading.Lock()
_TAG_LOCKS: dict[str, threading.Lock] = {}


def _compiled(src: str) -> ctypes.CDLL:
    """The shared library of a translation unit, compiled once per process (keyed by its text)."""
    global _WORKDIR  # noqa: PLW0603
    tag = hashlib.sha1(src.encode()).hexdigest()[:20]
    with _LOCK:
        if tag in _LIBS:
            return _LIBS[tag]
        _WORKDIR = _WORKDIR or tempfile.mkdtemp(prefix="cuda_host_")
        lock = _TAG_LOCKS.setdefault(tag, threading.Lock())
    with lock:  # one compile a source; the others wait for it
        if tag in _LIBS:
            return _LIBS[tag]
        return _compile(src, tag)


def _compile(src: str, tag: str) -> ctypes.CDLL:
    cpp, so = os.path.join(_WORKDIR, f"k{tag}.cpp"), os.path.join(_WORKDIR, f"k{tag}.so")
    with open(cpp, "w") as f:
        f.write(src)
    proc = subprocess.run([gxx_path(), "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", cpp, "-o", so],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"g++ failed:\n{proc.stderr[-4000:]}")
    with _LOCK:
        return _LIBS.setdefault(tag, ctypes.CDLL(so))


class HostKernel:
    """A compiled host emulation; call(gx, gy, threads, smem_bytes, [ctypes values]) runs the grid."""

    def __init__(self, cuda_source: str, kernel_call: str):
        self.lib = _compiled(host_source(cuda_source, kernel_call))
        self.lib.emu_launch.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_size_t,
                                        ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]

    def __call__(self, gx: int, gy: int, threads: int, smem_bytes: int, args: list, reverse: bool = False) -> None:
        """reverse: the blocks in the opposite order (the last one first)."""
        arr = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        self.lib.emu_launch(gx, gy, threads, smem_bytes, arr, int(reverse))
