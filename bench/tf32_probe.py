"""Probe of the TF32 tensor-core rates a sparse tf32 family would run on (issue 18's tf32 goal), before one is built.

Issue 18 asks for tf32 at 1.2x of cuBLAS TF32 at d 0.05 on the dl suite (0.92x today, every winner a CUDA-core
family). NOTES (session 39) estimated that a tensor-core tf32 path needs at most ~2x the fp16 winner's time (k <= 2);
the fp16 winner is tc_sp24 (2:4 wgmma.sp, B by TMA). TF32 changes three things: the sparse MMA is 1:2 (a pair, not a
group of four), the dense rate is half of fp16's, and wgmma takes tf32 B K-major only (the dl suite's kn B is N-major:
a kn kernel needs mma.sync / mma.sp with B fragments loaded as 32-bit words, or a transpose). This probe measures, in
one process on every SM, back to back (dense-equivalent TFLOP/s: a sparse MMA counted as the dense one of its logical
K):

- `wgmma m64n256k8 tf32` (A from registers, B K-major in shared memory) and `wgmma.sp m64n256k16 tf32` (1:2): the nk
  route (SparseLinear's x is K-major as it stands);
- `mma m16n8k8 tf32` and `mma.sp m16n8k16 tf32` (registers only): the kn route's MMA rate;
- `kn loop`: the kn route's inner loop, a warp's 64 x 64 tile a k16 step: 32 mma.sp m16n8k16 tf32 with B's fragments
  read from a row-major K x N shared-memory tile (4 ld.shared.b32 a fragment, 8 fragments a step, conflict-free);
- the fp16 references on the same harness: `mma m16n8k16 f16`, `mma.sp m16n8k32 f16`, `wgmma m64n256k16 f16` and
  `wgmma.sp m64n256k32 f16` (bench/sp24_probe.py measured 965 / 1929 on the H200 for the last two).

Before the rates, `layout`: which fragment layout mma.sp m16n8k16 tf32 has (the kn family's packing rests on it): A's
registers, B's and the metadata's nibbles under two hypotheses each (A1 / B1 / M1: the dense m16n8k8 tf32 fragments
and f16 m16n8k32's metadata, a tf32 pair as a group of four 16-bit halves, 0b0100 / 0b1110), both selectors, on random
1:2 matrices of small integers (exact): the maps that give A @ B exactly, and a dense m16n8k8 control; then the same
for wgmma.sp m64n64k16 tf32 (A from registers, B K-major without swizzle: the nk route's packing), with a dense
m64n64k8 control that says how the descriptor's two strides read. Each also runs a discovery (no metadata hypothesis):
where each A register lands and which (row, pair) each flipped nibble moves. Session 54's H100 run:
bench/results/session54/tf32-probe-h100.md.

Run on the device: `python3 bench/tf32_probe.py --out DIR` (writes DIR/tf32-probe.json, prints a table; ~20 s).
`--compile-only` (no GPU; NVRTC or nvcc) compiles every kernel for sm_90a and checks ptxas's spills: the CPU tests do.
How to read it (the prediction and the falsifier: NOTES session 52): cuBLAS TF32 achieves 177-268 TFLOP/s on the dl
suite's largest layers; a kn tf32 family running at about half its loop's rate (as tc_sp24 does in fp16) needs the kn
loop at >= ~650 dense-equivalent TFLOP/s for 1.2x there; under ~400 no kn tf32 family on mma.sp is worth building.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the 2:4 probe's wgmma helpers and timer
from sp24_probe import HELPERS, _time_tput  # noqa: E402

HEAD = HELPERS + r"""
template <int N> __device__ __forceinline__ void keep(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}
"""

# ---- mma.sync / mma.sp: a warp runs CH independent chains (accumulator sets) of the instruction, registers only ----
MMA = HEAD + r"""
#define CH 8
extern "C" __global__ void __launch_bounds__(256) tput(float* __restrict__ out, int iters)
{
    const int tid = threadIdx.x;
    unsigned int a[4] = {@AINIT@ ^ (unsigned)tid, @AINIT@, @AINIT@, @AINIT@};
    unsigned int b[4] = {@BINIT@, @BINIT@, @BINIT@, @BINIT@ ^ (unsigned)tid};
    const unsigned int meta = @META@;
    float d[CH][4];
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int i = 0; i < 4; ++i) d[c][i] = 0.0f;
#pragma unroll 1
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int c = 0; c < CH; ++c) {
@BODY@
        }
    }
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < CH; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
    if (s == 12345.0f) out[blockIdx.x * blockDim.x + tid] = s;
}
"""

MMA_OPS = {
    # name: (asm, A regs, B regs, sparse, dense-equivalent flops an instruction)
    "mma m16n8k8 tf32": ("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", 4, 2, False, 16 * 8 * 8 * 2),
    "mma.sp m16n8k16 tf32": ("mma.sp.sync.aligned.m16n8k16.row.col.f32.tf32.tf32.f32", 4, 4, True, 16 * 8 * 16 * 2),
    "mma m16n8k16 f16": ("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", 4, 2, False, 16 * 8 * 16 * 2),
    "mma.sp m16n8k32 f16": ("mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32", 4, 4, True, 16 * 8 * 32 * 2),
}


def _mma_body(asm: str, na: int, nb: int, sparse: bool) -> str:
    a = ", ".join(f"%{4 + i}" for i in range(na))
    b = ", ".join(f"%{4 + na + i}" for i in range(nb))
    ins = [f'"r"(a[{i}])' for i in range(na)] + [f'"r"(b[{i}])' for i in range(nb)]
    tail = ""
    if sparse:
        tail = f", %{4 + na + nb}, 0x0"
        ins.append('"r"(meta)')
    op = f"{asm} {{%0, %1, %2, %3}}, {{{a}}}, {{{b}}}, {{%0, %1, %2, %3}}{tail};"
    outs = ", ".join(f'"+f"(d[c][{i}])' for i in range(4))
    return f'            asm volatile("{op}" : {outs} : {", ".join(ins)});'


def mma_source(name: str) -> str:
    asm, na, nb, sparse, _ = MMA_OPS[name]
    tf32 = "tf32" in name
    one = "0x3f800000u" if tf32 else "0x3c003c00u"
    meta = "0x44444444u"  # each nibble 0b0100 (f16 2:4: elements 0 and 1 of a group; tf32 1:2: the pair's first)
    return (MMA.replace("@AINIT@", one).replace("@BINIT@", one).replace("@META@", meta)
            .replace("@BODY@", _mma_body(asm, na, nb, sparse)))


# ---- wgmma: two warpgroups a block, each 4 wgmmas a group, one group in flight (as sp24_probe's harness) ----
WGMMA = HEAD + r"""
#define NACC 128
extern "C" __global__ void __launch_bounds__(256, 1) tput(float* __restrict__ out, int iters)
{
    extern __shared__ __align__(1024) unsigned char sm[];
    const int tid = threadIdx.x;
    const unsigned int base = ((unsigned int)__cvta_generic_to_shared(sm) + 1023u) & ~1023u;
    for (int i = tid; i < @SMEM16@; i += blockDim.x)
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" :: "r"(base + 16 * i), "r"(@ONE@) : "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    const unsigned long long desc = desc_sw128(base, 16, 1024);
    unsigned int a[4] = {@ONE@ ^ (unsigned)tid, @ONE@, @ONE@, @ONE@};
    const unsigned int meta = 0x44444444u;
    float d[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) d[i] = 0.0f;
#pragma unroll 1
    for (int it = 0; it < iters; ++it) {
        wg_fence();
        keep(d);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
@BODY@
        }
        wg_commit();
        keep(d);
        wg_wait<1>();
    }
    wg_wait<0>();
    keep(d);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NACC; ++i) s += d[i];
    if (s == 12345.0f) out[blockIdx.x * blockDim.x + tid] = s;
}
"""

WGMMA_OPS = {
    # name: (shape and types, sparse, B's transpose immediates (f16 only), flops an instruction, shared bytes)
    "wgmma m64n256k8 tf32": ("m64n256k8.f32.tf32.tf32", False, "", 64 * 256 * 8 * 2, 256 * 128),
    "wgmma.sp m64n256k16 tf32": ("m64n256k16.f32.tf32.tf32", True, "", 64 * 256 * 16 * 2, 256 * 128),
    "wgmma m64n256k16 f16": ("m64n256k16.f32.f16.f16", False, ", 1, 1", 64 * 256 * 16 * 2, 256 * 128),
    "wgmma.sp m64n256k32 f16": ("m64n256k32.f32.f16.f16", True, ", 1, 1", 64 * 256 * 32 * 2, 256 * 128),
}


def _wgmma_body(shape: str, sparse: bool, trans: str) -> str:
    regs = ", ".join(f"%{i}" for i in range(128))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(128))
    ins = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc)'
    sp = ".sp" if sparse else ""
    meta = ""
    if sparse:
        ins += ', "r"(meta)'
        meta = " %133, 0,"
    # scale-d 1 (accumulate), scale-a / scale-b 1; f16 adds B's transpose immediate (K-major here: 0 would do as well)
    op = (f"wgmma.mma_async{sp}.sync.aligned.{shape} {{{regs}}}, {{%128, %129, %130, %131}}, %132,{meta} 1, 1, 1"
          f"{trans[:3] if trans else ''};")
    return f'            asm volatile("{op}" : {outs} : {ins});'


def wgmma_source(name: str) -> str:
    shape, sparse, trans, _, smem = WGMMA_OPS[name]
    one = "0x3f800000u" if "tf32" in name else "0x3c003c00u"
    return (WGMMA.replace("@SMEM16@", str(smem // 16)).replace("@ONE@", one)
            .replace("@BODY@", _wgmma_body(shape, sparse, trans)))


# ---- the kn route's loop: B fragments from a row-major K x N tile by 32-bit shared loads ----------------------
KN = HEAD + r"""
#define LDB 72  // floats a row of the K x 64 tile: 72 = 8 mod 32, so a fragment's 32 loads hit 32 banks
extern "C" __global__ void __launch_bounds__(256) tput(float* __restrict__ out, int iters)
{
    __shared__ __align__(16) float bs[2][16 * LDB];
    const int tid = threadIdx.x, lane = tid & 31, g = lane >> 2, t = lane & 3;
    for (int i = tid; i < 2 * 16 * LDB; i += blockDim.x) (&bs[0][0])[i] = 1.0f + 1e-3f * (i & 7);
    __syncthreads();
    unsigned int a[4][4];
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int i = 0; i < 4; ++i) a[m][i] = 0x3f800000u ^ (unsigned)(tid + m + i);
    const unsigned int meta = 0x44444444u;
    float d[4][8][4];
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) d[m][j][i] = 0.0f;
    const unsigned int b0 = (unsigned int)__cvta_generic_to_shared(&bs[0][0]) + 4u * (t * LDB + g);
#pragma unroll 1
    for (int it = 0; it < iters; ++it) {
        const unsigned int bb = b0 + (unsigned)(it & 1) * 16u * LDB * 4u;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            unsigned int b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)  // B[k = t + 4 i][n = 8 j + g]
                asm volatile("ld.shared.b32 %0, [%1];" : "=r"(b[i]) : "r"(bb + 4u * (4 * i * LDB + 8 * j)));
#pragma unroll
            for (int m = 0; m < 4; ++m)
                asm volatile("mma.sp.sync.aligned.m16n8k16.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
                             "{%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;"
                             : "+f"(d[m][j][0]), "+f"(d[m][j][1]), "+f"(d[m][j][2]), "+f"(d[m][j][3])
                             : "r"(a[m][0]), "r"(a[m][1]), "r"(a[m][2]), "r"(a[m][3]),
                               "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
        }
    }
    float s = 0.0f;
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int j = 0; j < 8; ++j) s += d[m][j][0] + d[m][j][1] + d[m][j][2] + d[m][j][3];
    if (s == 12345.0f) out[blockIdx.x * blockDim.x + tid] = s;
}
"""
KN_FLOPS = 32 * 16 * 8 * 16 * 2  # a warp's step: 32 mma.sp m16n8k16 (dense-equivalent)


# ---- layout: where mma.sp m16n8k16 tf32 takes A's registers, B's and the metadata's nibbles ---------------------
# The kn family's packing rests on it (bench/sp24_probe.py did the same for wgmma.sp f16 before tc_sp24). Each block
# is one warp running one MMA on registers the host packed (regs: 9 words a lane: a0..a3, b0..b3, metadata; the
# dense control: a0..a3, b0, b1); D's four floats a lane come back and the host reads them by the C layout
# (c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1)), which the dense control checks.
LAYOUT = r"""
extern "C" __global__ void layout_sp(const unsigned int* __restrict__ regs, float* __restrict__ out, int sel)
{
    const int lane = threadIdx.x & 31;
    const unsigned int* r = regs + (blockIdx.x * 32 + lane) * 9;
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
    if (sel == 0)
        asm volatile("mma.sp.sync.aligned.m16n8k16.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;"
                     : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                     : "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]), "r"(r[4]), "r"(r[5]), "r"(r[6]), "r"(r[7]), "r"(r[8]));
    else
        asm volatile("mma.sp.sync.aligned.m16n8k16.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x1;"
                     : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                     : "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]), "r"(r[4]), "r"(r[5]), "r"(r[6]), "r"(r[7]), "r"(r[8]));
    float* o = out + (blockIdx.x * 32 + lane) * 4;
    o[0] = d0; o[1] = d1; o[2] = d2; o[3] = d3;
}
extern "C" __global__ void layout_dense(const unsigned int* __restrict__ regs, float* __restrict__ out)
{
    const int lane = threadIdx.x & 31;
    const unsigned int* r = regs + (blockIdx.x * 32 + lane) * 9;
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                 : "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]), "r"(r[4]), "r"(r[5]));
    float* o = out + (blockIdx.x * 32 + lane) * 4;
    o[0] = d0; o[1] = d1; o[2] = d2; o[3] = d3;
}
"""

# hypotheses (lane = 4 g + t): A's register j -> (row, compressed column c: the pair of columns 2c, 2c + 1), B's
# register i -> (k, n), the metadata word of lane 4 g + q -> nibble i's (row, pair); a nibble is 0b0100 (the pair's
# first element) or 0b1110 (its second): the 16-bit halves' indices of a 32-bit element, as f16's 2:4 writes them
A_MAPS = {"A1": lambda g, t, j: (g + 8 * (j & 1), t + 4 * (j >> 1)),  # = the dense m16n8k8 tf32 A fragment
          "A2": lambda g, t, j: (g + 8 * (j & 1), 2 * t + (j >> 1))}
B_MAPS = {"B1": lambda g, t, i: (t + 4 * i, g),  # the dense m16n8k8 tf32 B fragment, extended to k16
          "B2": lambda g, t, i: (4 * t + i, g)}
M_MAPS = {"M1": lambda g, q, i: (g + 8 * (i >> 2), 4 * q + (i & 3)),  # f16 m16n8k32's (tc_sp24's wgmma.sp) analog
          "M2": lambda g, q, i: (g + 8 * q, i)}
NIB = (0x4, 0xE)


def c_unpack(d: np.ndarray) -> np.ndarray:
    """D (16 x 8) from the lanes' four floats (d [32, 4]) by the C fragment layout."""
    out = np.zeros((16, 8), dtype=np.float64)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            out[g + 8 * (i >> 1), 2 * t + (i & 1)] = d[lane, i]
    return out


def pack_sp(afull: np.ndarray, b: np.ndarray, amap, bmap, mmap, sel: int = 0) -> np.ndarray:
    """The 9 words a lane ([32, 9] uint32) of one mma.sp m16n8k16 tf32 of a 1:2-structured afull (16 x 16: one nonzero
    or none a pair; an empty pair keeps position 0) and b (16 x 8) under the maps; the metadata in lanes 4 g + 2 sel
    + q (q = 0, 1) and, the same words, in the group's other two lanes."""
    pos = (afull[:, 1::2] != 0).astype(np.int64)  # [16, 8]: the kept element of each pair
    comp = np.where(pos == 1, afull[:, 1::2], afull[:, 0::2]).astype(np.float32)
    regs = np.zeros((32, 9), dtype=np.uint32)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for j in range(4):
            r, c = amap(g, t, j)
            regs[lane, j] = comp[r, c].view(np.uint32)
        for i in range(4):
            k, n = bmap(g, t, i)
            regs[lane, 4 + i] = np.float32(b[k, n]).view(np.uint32)
    for g in range(8):
        for q in range(2):
            w = 0
            for i in range(8):
                r, p = mmap(g, q, i)
                w |= NIB[pos[r, p]] << (4 * i)
            regs[4 * g + 2 * sel + q, 8] = w
            regs[4 * g + 2 * (1 - sel) + q, 8] = w
    return regs


def unpack_sp(regs: np.ndarray, amap, mmap, sel: int = 0) -> np.ndarray:
    """The 16 x 16 A that pack_sp's registers say under the maps (its inverse, for the CPU test)."""
    comp = np.zeros((16, 8), dtype=np.float32)
    pos = np.zeros((16, 8), dtype=np.int64)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for j in range(4):
            r, c = amap(g, t, j)
            comp[r, c] = regs[lane, j:j + 1].view(np.float32)[0]
    for g in range(8):
        for q in range(2):
            w = int(regs[4 * g + 2 * sel + q, 8])
            for i in range(8):
                r, p = mmap(g, q, i)
                pos[r, p] = NIB.index((w >> (4 * i)) & 0xF)
    a = np.zeros((16, 16), dtype=np.float32)
    rows = np.arange(16)[:, None]
    a[rows, 2 * np.arange(8)[None, :] + pos] = comp
    return a


def random_sp(rng) -> tuple[np.ndarray, np.ndarray]:
    """(afull 16 x 16, b 16 x 8): small integers (exact in TF32 and in the fp32 sums), one nonzero in most pairs of A
    (a few pairs empty), either position."""
    afull = np.zeros((16, 16), dtype=np.float32)
    vals = rng.integers(1, 8, size=(16, 8)) * rng.choice([-1, 1], size=(16, 8))
    vals[rng.random((16, 8)) < 0.1] = 0
    pos = rng.integers(0, 2, size=(16, 8))
    afull[np.arange(16)[:, None], 2 * np.arange(8)[None, :] + pos] = vals
    return afull, rng.integers(-4, 5, size=(16, 8)).astype(np.float32)


def discover_regs() -> np.ndarray:
    """The blocks of layout_discover ([2 (1 + 32 x 8), 32, 9] uint32): A's register j of lane l holds 4 l + j + 1 (exact
    in TF32), B by B1 as the 16 x 8 identity of k = n (first half) or of k = n + 8 (second half), every metadata nibble
    0b0100 (the baseline block, first) or one nibble of one lane 0b1110 (block 1 + 8 l + i)."""
    regs = np.zeros((2, 1 + 32 * 8, 32, 9), dtype=np.uint32)
    ids = (np.arange(128, dtype=np.float32) + 1).reshape(32, 4)
    for half in range(2):
        b = np.zeros((16, 8), dtype=np.float32)
        b[np.arange(8) + 8 * half, np.arange(8)] = 1.0
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            regs[half, :, lane, :4] = ids[lane].view(np.uint32)
            for i in range(4):
                k, n = B_MAPS["B1"](g, t, i)
                regs[half, :, lane, 4 + i] = np.float32(b[k, n]).view(np.uint32)
        regs[half, :, :, 8] = 0x44444444
        for lane in range(32):
            for i in range(8):
                regs[half, 1 + 8 * lane + i, lane, 8] = (0x44444444 & ~(0xF << (4 * i))) | (0xE << (4 * i))
    return regs.reshape(-1, 32, 9)


def read_discovery(d: np.ndarray) -> dict:
    """layout_discover's maps from the blocks' D ([2 (1 + 256), 32, 4]): where each A register landed in the baseline
    ({"lane.j": [row, column]}) and which (row, pair) each flipped nibble moved ({"lane.i": [[row, pair], ...]})."""
    d = d.reshape(2, 1 + 256, 32, 4)
    full = np.stack([np.concatenate([c_unpack(d[0, blk]), c_unpack(d[1, blk])], axis=1) for blk in range(257)])
    return discovery_maps(full)


def discovery_maps(full: np.ndarray) -> dict:
    """The maps of a discovery from its decompressed A's ([1 + 8 T, rows, 16]: the baseline, then thread x's nibble i
    flipped at 1 + 8 x + i; A's register j of thread x holds 4 x + j + 1)."""
    base = full[0]
    a_at = {}
    for r, c in np.argwhere(base != 0):
        v = int(round(float(base[r, c]))) - 1
        a_at[f"{v // 4}.{v % 4}"] = [int(r), int(c)]
    nib = {}
    for x in range((len(full) - 1) // 8):
        for i in range(8):
            cells = sorted({(int(r), int(c) // 2) for r, c in np.argwhere(full[1 + 8 * x + i] != base)})
            if cells:
                nib[f"{x}.{i}"] = [list(cell) for cell in cells]
    return {"a_at": a_at, "nibbles": nib, "baseline_nonzero": int((base != 0).sum())}


def layout_discover(cp, sel: int) -> dict:
    """Without a metadata hypothesis (B by B1): the baseline block says where each A register goes, each flipped
    nibble which pair it moves (as bench/sp24_probe.py's layout probe for wgmma.sp f16)."""
    mod = cp.RawModule(code=LAYOUT, options=("-std=c++17", "-arch=sm_90a"))
    k = mod.get_function("layout_sp")
    regs = discover_regs()
    out = cp.zeros((regs.shape[0], 32, 4), dtype=cp.float32)
    k((regs.shape[0],), (32,), (cp.asarray(regs), out, np.int32(sel)))
    return {"sel": sel, **read_discovery(cp.asnumpy(out))}


def layout_check(cp, trials: int = 4) -> dict:
    """Every A / B / metadata hypothesis (and both sparsity selectors) on random 1:2 matrices: which reproduce
    A @ B exactly; and the dense m16n8k8 control (the harness and the C layout)."""
    mod = cp.RawModule(code=LAYOUT, options=("-std=c++17", "-arch=sm_90a"))
    sp_k, dense_k = mod.get_function("layout_sp"), mod.get_function("layout_dense")
    rng = np.random.default_rng(18)
    res: dict = {"sparse": {}, "dense_control": None}
    # dense control: a (16 x 8) by the A1 map's columns directly, b (8 x 8) by b0 (t, g), b1 (t + 4, g)
    a8 = rng.integers(-4, 5, size=(16, 8)).astype(np.float32)
    b8 = rng.integers(-4, 5, size=(8, 8)).astype(np.float32)
    regs = np.zeros((32, 9), dtype=np.uint32)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for j in range(4):
            r, c = A_MAPS["A1"](g, t, j)
            regs[lane, j] = a8[r, c].view(np.uint32)
        regs[lane, 4] = b8[t, g].view(np.uint32)
        regs[lane, 5] = b8[t + 4, g].view(np.uint32)
    out = cp.zeros((32, 4), dtype=cp.float32)
    dense_k((1,), (32,), (cp.asarray(regs), out))
    err = float(np.abs(c_unpack(cp.asnumpy(out)) - a8.astype(np.float64) @ b8).max())
    res["dense_control"] = {"max_abs_err": err, "ok": err == 0.0}
    cases = [random_sp(rng) for _ in range(trials)]
    for an, am in A_MAPS.items():
        for bn, bm in B_MAPS.items():
            for mn, mm in M_MAPS.items():
                for sel in (0, 1):
                    regs = np.stack([pack_sp(a, b, am, bm, mm, sel) for a, b in cases])
                    out = cp.zeros((trials, 32, 4), dtype=cp.float32)
                    sp_k((trials,), (32,), (cp.asarray(regs), out, np.int32(sel)))
                    d = cp.asnumpy(out)
                    errs = [float(np.abs(c_unpack(d[i]) - a.astype(np.float64) @ b).max())
                            for i, (a, b) in enumerate(cases)]
                    res["sparse"][f"{an} {bn} {mn} sel {sel}"] = {"max_abs_err": max(errs), "ok": max(errs) == 0.0}
    res["discover"] = [layout_discover(cp, sel) for sel in (0, 1)]
    return res


# ---- layout of wgmma.sp m64n64k16 tf32 (the nk route: A from registers, B K-major in shared memory) -------------
# One warpgroup a block on registers the host packed (regs: 5 words a thread: a0..a3, the metadata); B (16 x 64, k x n)
# is written K-major without swizzle: the 8 x 16-byte core matrix (rows n0 .. n0 + 7, k0 .. k0 + 3) at byte
# (n0 / 8) 512 + (k0 / 4) 128; `mode` says which descriptor field is which stride (0: LBO 128 (along K), SBO 512
# (along N); 1: the two swapped), the dense m64n64k8 control says which is right. D comes back as a 64 x 64 block.
WG_LAYOUT = HELPERS + r"""
__device__ __forceinline__ unsigned long long desc_plain(unsigned int addr, unsigned int lbo, unsigned int sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)(lbo >> 4) << 16)
           | ((unsigned long long)(sbo >> 4) << 32);
}
#define D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
            "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define OUT32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
extern "C" __global__ void wg_layout(const unsigned int* __restrict__ regs, const float* __restrict__ bmat,
                                     float* __restrict__ out, int mode, int sparse, int sel)
{
    __shared__ __align__(1024) float bs[16 * 64];
    const int tid = threadIdx.x;
    for (int i = tid; i < 16 * 64; i += 128) {
        const int k = i >> 6, n = i & 63;  // bmat[k][n] -> core (n / 8, k / 4), row n % 8, word k % 4
        bs[((n >> 3) * 512 + (k >> 2) * 128 + (n & 7) * 16 + (k & 3) * 4) >> 2] = bmat[i];
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    const unsigned int* r = regs + ((size_t)blockIdx.x * 128 + tid) * 5;
    const unsigned int a0 = r[0], a1 = r[1], a2 = r[2], a3 = r[3], m = r[4];
    const unsigned int sa = (unsigned int)__cvta_generic_to_shared(bs);
    const unsigned long long desc = mode == 0 ? desc_plain(sa, 128, 512) : desc_plain(sa, 512, 128);
    float d[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.0f;
    wg_fence();
    if (!sparse)
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %37, 0;\n\t"
                     "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 " D32 ", {%32, %33, %34, %35}, %36, p, 1, 1;\n\t}"
                     : OUT32 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(0));
    else if (sel == 0)
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %38, 0;\n\t"
                     "wgmma.mma_async.sp.sync.aligned.m64n64k16.f32.tf32.tf32 " D32 ", {%32, %33, %34, %35}, %36, %37, 0, "
                     "p, 1, 1;\n\t}"
                     : OUT32 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(m), "r"(0));
    else
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %38, 0;\n\t"
                     "wgmma.mma_async.sp.sync.aligned.m64n64k16.f32.tf32.tf32 " D32 ", {%32, %33, %34, %35}, %36, %37, 1, "
                     "p, 1, 1;\n\t}"
                     : OUT32 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(m), "r"(0));
    wg_commit();
    wg_wait<0>();
    store_d64(out + (size_t)blockIdx.x * 64 * 64, d, tid);
}
"""


def wg_pack(afull: np.ndarray, amap, mmap, sel: int = 0) -> np.ndarray:
    """The 5 words a thread ([128, 5] uint32) of wgmma.sp m64n64k16 tf32 for a 1:2 afull (64 x 16): warp w's lanes
    packed as pack_sp's for rows 16 w ... 16 w + 15 (the metadata in the selector's two lanes of each four and the
    same words in the other two)."""
    out = np.zeros((128, 5), dtype=np.uint32)
    b0 = np.zeros((16, 8), dtype=np.float32)
    for w in range(4):
        regs = pack_sp(afull[16 * w:16 * w + 16], b0, amap, B_MAPS["B1"], mmap, sel)
        out[32 * w:32 * w + 32, :4] = regs[:, :4]
        out[32 * w:32 * w + 32, 4] = regs[:, 8]
    return out


def wg_pack_dense(a: np.ndarray) -> np.ndarray:
    """[128, 5] words of the dense m64n64k8 tf32 control: a (64 x 8) by the A1 map a warp (k = the A1 column)."""
    out = np.zeros((128, 5), dtype=np.uint32)
    for tw in range(128):
        w, lane = tw >> 5, tw & 31
        for j in range(4):
            r, c = A_MAPS["A1"](lane >> 2, lane & 3, j)
            out[tw, j] = np.float32(a[16 * w + r, c]).view(np.uint32)
    return out


def wg_layout_check(cp, trials: int = 3) -> dict:
    """wgmma m64n64k8 tf32 (dense control) and wgmma.sp m64n64k16 tf32 on random small-integer matrices under each
    descriptor reading (mode), A / metadata map and selector: which give A @ B exactly; and the discovery of A's
    registers and each metadata nibble (B the identity of k = n, n < 16) at the mode the control found."""
    mod = cp.RawModule(code=WG_LAYOUT, options=("-std=c++17", "-arch=sm_90a"))
    k = mod.get_function("wg_layout")
    rng = np.random.default_rng(54)

    def run(regs: np.ndarray, b: np.ndarray, mode: int, sparse: int, sel: int) -> np.ndarray:
        out = cp.zeros((regs.shape[0], 64, 64), dtype=cp.float32)
        k((regs.shape[0],), (128,), (cp.asarray(regs.reshape(-1)), cp.asarray(b.astype(np.float32).reshape(-1)), out,
                                     np.int32(mode), np.int32(sparse), np.int32(sel)))
        return cp.asnumpy(out).astype(np.float64)

    res: dict = {"dense_control": {}, "sparse": {}}
    b = rng.integers(-4, 5, size=(16, 64)).astype(np.float32)
    a8 = [rng.integers(-4, 5, size=(64, 8)).astype(np.float32) for _ in range(trials)]
    for mode in (0, 1):
        d = run(np.stack([wg_pack_dense(a) for a in a8]), b, mode, 0, 0)
        err = max(float(np.abs(d[i] - a8[i].astype(np.float64) @ b[:8]).max()) for i in range(trials))
        res["dense_control"][f"mode {mode}"] = {"max_abs_err": err, "ok": err == 0.0}
    good = [m for m in (0, 1) if res["dense_control"][f"mode {m}"]["ok"]]
    mode = good[0] if good else 0
    res["mode"] = mode
    cases = []
    for _ in range(trials):
        parts = [random_sp(rng)[0] for _ in range(4)]
        cases.append(np.concatenate(parts, axis=0))
    for an, am in A_MAPS.items():
        for mn, mm in M_MAPS.items():
            for sel in (0, 1):
                d = run(np.stack([wg_pack(a, am, mm, sel) for a in cases]), b, mode, 1, sel)
                err = max(float(np.abs(d[i] - cases[i].astype(np.float64) @ b).max()) for i in range(trials))
                res["sparse"][f"{an} {mn} sel {sel}"] = {"max_abs_err": err, "ok": err == 0.0}
    # discovery: A's register j of thread tw holds 4 tw + j + 1; B[k][n] = (k == n); baseline nibbles all 0b0100
    ident = np.zeros((16, 64), dtype=np.float32)
    ident[np.arange(16), np.arange(16)] = 1.0
    regs = np.zeros((1 + 128 * 8, 128, 5), dtype=np.uint32)
    regs[:, :, :4] = (np.arange(512, dtype=np.float32) + 1).reshape(128, 4).view(np.uint32)
    regs[:, :, 4] = 0x44444444
    for tw in range(128):
        for i in range(8):
            regs[1 + 8 * tw + i, tw, 4] = (0x44444444 & ~(0xF << (4 * i))) | (0xE << (4 * i))
    res["discover"] = []
    for sel in (0, 1):
        res["discover"].append({"sel": sel, **discovery_maps(run(regs, ident, mode, 1, sel)[:, :, :16])})
    return res


def sources() -> dict[str, str]:
    """Every probe kernel's CUDA source by name (each defines `tput(float* out, int iters)`)."""
    out = {n: mma_source(n) for n in MMA_OPS}
    out.update({n: wgmma_source(n) for n in WGMMA_OPS})
    out["kn loop mma.sp m16n8k16 tf32"] = KN
    return out


def nvcc_report(src: str, arch: str = "sm_90a") -> dict:
    """nvcc -arch=ARCH -cubin of one kernel source (no GPU needed; device.compile.nvcc_check): {"ok", "spill_bytes",
    "registers", "log"} (bench/union_probe.py uses it too)."""
    from sparse_autotune.device.compile import nvcc_check  # noqa: PLC0415
    from sparse_autotune.errors import CandidateError  # noqa: PLC0415
    try:
        log, ok = nvcc_check(src, arch), True
    except CandidateError as e:
        log, ok = f"{e}\n{e.log}", False
    spill = sum(int(x) for pair in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log) for x in pair)
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
    return {"ok": ok, "spill_bytes": spill, "registers": max(regs, default=0), "log": log[-2000:]}


def compile_check() -> dict[str, dict]:
    """nvcc_report of each kernel: {name: {"ok", "spill_bytes", "registers", "log"}}."""
    return {name: nvcc_report(src) for name, src in {**sources(), "layout": LAYOUT, "wgmma layout": WG_LAYOUT}.items()}


def throughput(cp, reps: int = 5) -> dict:
    sms = cp.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"]
    res = {}
    srcs = sources()
    for name, src in srcs.items():
        try:
            f = cp.RawModule(code=src, options=("-std=c++17", "-arch=sm_90a")).get_function("tput")
            if name in WGMMA_OPS:
                smem = 1024 + WGMMA_OPS[name][4]
                f.max_dynamic_shared_size_bytes = smem
                blocks, threads, iters = sms, 256, 2000
                flops = blocks * 2 * iters * 4 * WGMMA_OPS[name][3]
            elif name in MMA_OPS:
                smem, blocks, threads, iters = 0, sms * 4, 256, 4000
                flops = blocks * (threads // 32) * iters * 8 * MMA_OPS[name][4]
            else:  # the kn loop
                smem, blocks, threads, iters = 0, sms * 2, 256, 2000
                flops = blocks * (threads // 32) * iters * KN_FLOPS
            t = _time_tput(cp, f, blocks, threads, iters, smem, reps)
            res[name] = {"s": t, "tflops_dense_equiv": flops / t / 1e12}
            print(f"{name:34s} {flops / t / 1e12:7.0f} TFLOP/s dense-equivalent ({t * 1e3:.3f} ms)", flush=True)
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            res[name] = {"error": repr(e)}
            print(f"{name}: {e!r}", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--compile-only", action="store_true", help="nvcc for sm_90a only (no GPU): ptxas's report")
    a = ap.parse_args(argv)
    if a.compile_only:
        res = compile_check()
        for name, r in res.items():
            print(f"{name:34s} {'ok' if r['ok'] else 'FAILED'} registers {r['registers']} spill {r['spill_bytes']}")
            if not r["ok"]:
                print(r["log"])
        return 0 if all(r["ok"] for r in res.values()) else 1
    import cupy as cp  # noqa: PLC0415
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    props = cp.cuda.runtime.getDeviceProperties(0)
    rep = {"gpu": props["name"].decode(), "driver": cp.cuda.runtime.driverGetVersion(),
           "cuda": cp.cuda.runtime.runtimeGetVersion(), "cupy": cp.__version__}
    try:
        rep["layout"] = layout_check(cp)
        lay = rep["layout"]
        print(f"layout: dense m16n8k8 control {'ok' if lay['dense_control']['ok'] else 'WRONG'}; mma.sp m16n8k16 tf32 "
              f"maps that reproduce A @ B: {[k for k, v in lay['sparse'].items() if v['ok']] or 'none'}", flush=True)
    except Exception as e:  # noqa: BLE001 - a probe: report and go on to the rates
        rep["layout"] = {"error": repr(e)}
        print(f"layout: {e!r}", flush=True)
    try:
        rep["wgmma_layout"] = wg_layout_check(cp)
        lay = rep["wgmma_layout"]
        print(f"wgmma layout: dense m64n64k8 control {lay['dense_control']}; wgmma.sp m64n64k16 tf32 maps that "
              f"reproduce A @ B: {[k for k, v in lay['sparse'].items() if v['ok']] or 'none'}", flush=True)
    except Exception as e:  # noqa: BLE001
        rep["wgmma_layout"] = {"error": repr(e)}
        print(f"wgmma layout: {e!r}", flush=True)
    rep["throughput"] = throughput(cp)
    (out / "tf32-probe.json").write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
