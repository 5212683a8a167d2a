"""Probe of Hopper's sparse warpgroup MMA (wgmma.mma_async.sp, 2:4 structured A) before a family is built on it.

Two measurements, one process (run on the device: `python3 bench/sp24_probe.py --out DIR`):

1. layout: where wgmma.sp m64n64k32 (f16 or bf16, A from registers, B from shared memory) takes each thread's A
   register halves and each 4-bit nibble of each thread's metadata register. B is 32 x 64 with B[k][n] = (k == n), so
   D[r][n] = A's decompressed row r at logical column n (n < 32). The A halves carry distinct small integers (thread
   t, half h: 8 t + h + 1, exact in fp16 / bf16), so the baseline block (every nibble 0b0100: the pair at positions 0
   and 1 of its group of 4) says which (row, compressed column) each half is; block 8 T + j sets nibble j of thread
   T's metadata to 0b1110 (positions 2 and 3) and reads which (row, group) moved. Both sparsity selectors (0, 1).
2. throughput: wgmma.sp m64n256k32 against the dense m64n256k16 (and m64n128), back-to-back from registers and
   shared memory on every SM, in dense-equivalent TFLOP/s (a k32 sparse MMA counted as 64 x 256 x 32 x 2).

Writes `sp24-probe.json` (the maps and the rates) under --out and prints a summary. `--occupancy-only` (session 44)
instead times m64n128k32.sp / m64n256k32.sp with 1, 2 (on the same or on their own B slices) and 4 warpgroups an SM
and writes `sp24-occupancy.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HELPERS = r"""
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }
// the accumulators pinned in place around wgmma's asynchronous use (no moves of them between fence and wait)
template <int N> __device__ __forceinline__ void fence_acc(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}
// a warpgroup's m64n64 f32 accumulators (32 a thread: row 16 w + g + 8 ((i >> 1) & 1), column 8 (i >> 2) + 2 t + (i & 1))
// into a 64 x 64 row-major block
__device__ __forceinline__ void store_d64(float* __restrict__ o, const float (&d)[32], int tid) {
    const int w = tid >> 5, l = tid & 31;
#pragma unroll
    for (int i = 0; i < 32; ++i)
        o[(16 * w + (l >> 2) + 8 * ((i >> 1) & 1)) * 64 + 8 * (i >> 2) + 2 * (l & 3) + (i & 1)] = d[i];
}
__device__ __forceinline__ unsigned long long desc_sw128(unsigned int addr, unsigned int lbo, unsigned int sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)(lbo >> 4) << 16)
           | ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
"""

SRC = HELPERS + r"""
#define MT @MT@
#define SEL @SEL@
// layout probe: one warpgroup a block
extern "C" __global__ void meta_probe(const unsigned int* __restrict__ afrag, const unsigned int* __restrict__ meta,
                                      const unsigned short* __restrict__ bmat, float* __restrict__ out)
{
    __shared__ __align__(1024) unsigned short bs[32 * 64];
    const int tid = threadIdx.x;
    for (int i = tid; i < 32 * 64; i += 128) {
        const int k = i >> 6, n = i & 63;
        bs[(k * 128 + (((n >> 3) ^ (k & 7)) << 4) + (n & 7) * 2) >> 1] = bmat[i];
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    const unsigned int a0 = afrag[4 * tid], a1 = afrag[4 * tid + 1], a2 = afrag[4 * tid + 2], a3 = afrag[4 * tid + 3];
    const unsigned int m = meta[blockIdx.x * 128 + tid];
    const unsigned long long desc = desc_sw128((unsigned int)__cvta_generic_to_shared(bs), 32 * 128, 1024);
    float d[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.0f;
    wg_fence();
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %38, 0;\n\t"
                 "wgmma.mma_async.sp.sync.aligned.m64n64k32.f32." MT "." MT " "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
                 "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, %37, " SEL ", p, 1, 1, 1;\n\t}"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(m), "r"(0));
    wg_commit();
    wg_wait<0>();
    store_d64(out + (size_t)blockIdx.x * 64 * 64, d, tid);
}

"""

TPUT = HELPERS + r"""
#define NN @NN@
#define NACC (NN / 2)
#define SPARSE @SPARSE@
#define SPREAD @SPREAD@
#define NSL @NSL@
#define WGOFF @WGOFF@
extern "C" __global__ void __launch_bounds__(256, 1) tput(float* __restrict__ out, int iters)
{
    extern __shared__ __align__(1024) unsigned char sm[];
    const int tid = threadIdx.x;
    const unsigned int base = ((unsigned int)__cvta_generic_to_shared(sm) + 1023u) & ~1023u;
    for (int i = tid; i < NSL * 32 * NN / 8; i += blockDim.x)
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" :: "r"(base + 16 * i), "r"(0x3c003c00u) : "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    const unsigned long long desc0 = desc_sw128(base, 32 * 128, 1024);
    unsigned int a[4] = {0x3c003c00u ^ (unsigned)tid, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};
    const unsigned int meta = 0x44444444u;
    float d[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) d[i] = 0.0f;
#pragma unroll 1
    for (int it = 0; it < iters; ++it) {
        // SPREAD: each wgmma's B at another of 8 slices (64 NN bytes apart: 4 a group, two groups), as a pipeline's are
        // WGOFF: warpgroup w reads its own 8 slices (8 w ...), not the same ones as the block's other warpgroup
        const unsigned long long dit = desc0 + (SPREAD ? (unsigned long long)((it & 1) * 4 * (64 * NN / 16)) : 0ull)
                                       + (WGOFF ? (unsigned long long)((tid >> 7) * 8 * (64 * NN / 16)) : 0ull);
        wg_fence();
        fence_acc(d);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const unsigned long long desc = dit + (SPREAD ? (unsigned long long)(q * (64 * NN / 16)) : 0ull);
@BODY@
        }
        wg_commit();
        fence_acc(d);
        wg_wait<1>();
    }
    wg_wait<0>();
    fence_acc(d);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NACC; ++i) s += d[i];
    if (s == 12345.0f) out[blockIdx.x * blockDim.x + tid] = s;
}
"""


def wgmma_body(nn: int, sparse: bool, a: str = "a", desc: str = "desc", meta: str = "meta", tnsp_b: int = 1,
               indent: int = 12) -> str:
    """One wgmma m64n{nn} f16 (k32 .sp with metadata `meta`, else k16) with A from the registers `a`[0..3] and B by the
    descriptor `desc`, f32 accumulators d[0 .. nn / 2), as an asm statement (bench/union_probe.py and
    bench/sp24_wg_probe.py build theirs with it too)."""
    nacc = nn // 2
    regs = ", ".join(f"%{i}" for i in range(nacc))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(nacc))
    ins = ", ".join([f'"r"({a}[{j}])' for j in range(4)] + [f'"l"({desc})'] + ([f'"r"({meta})'] if sparse else []))
    if sparse:
        op = (f"wgmma.mma_async.sp.sync.aligned.m64n{nn}k32.f32.f16.f16 {{{regs}}}, "
              f"{{%{nacc}, %{nacc + 1}, %{nacc + 2}, %{nacc + 3}}}, %{nacc + 4}, %{nacc + 5}, 0, 1, 1, 1, {tnsp_b};")
    else:
        op = (f"wgmma.mma_async.sync.aligned.m64n{nn}k16.f32.f16.f16 {{{regs}}}, "
              f"{{%{nacc}, %{nacc + 1}, %{nacc + 2}, %{nacc + 3}}}, %{nacc + 4}, 1, 1, 1, {tnsp_b};")
    return " " * indent + f'asm volatile("{op}" : {outs} : {ins});'


def _bits(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "fp16":
        return x.astype(np.float16).view(np.uint16)
    f = x.astype(np.float32).view(np.uint32)
    return ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)


def layout_probe(cp, dtype: str, sel: int) -> dict:
    mt = "bf16" if dtype == "bf16" else "f16"
    src = SRC.replace("@MT@", f'"{mt}"').replace("@SEL@", f'"{sel}"')
    mod = cp.RawModule(code=src, options=("-std=c++17", "-arch=sm_90a"))
    k = mod.get_function("meta_probe")
    ids = np.arange(1, 1025, dtype=np.float32).reshape(128, 8)  # thread t, half h: 8 t + h + 1
    halves = _bits(ids, dtype).reshape(128, 4, 2)
    afrag = (halves[:, :, 0].astype(np.uint32) | (halves[:, :, 1].astype(np.uint32) << 16)).reshape(-1)
    nblk = 128 * 8 + 1
    meta = np.full((nblk, 128), 0x44444444, dtype=np.uint32)
    for t in range(128):
        for j in range(8):
            meta[8 * t + j, t] = (0x44444444 & ~(0xF << (4 * j))) | (0xE << (4 * j))
    bm = np.zeros((32, 64), dtype=np.float32)
    bm[np.arange(32), np.arange(32)] = 1.0
    out = cp.zeros((nblk, 64, 64), dtype=cp.float32)
    k((nblk,), (128,), (cp.asarray(afrag), cp.asarray(meta.reshape(-1)), cp.asarray(_bits(bm, dtype)), out))
    d = cp.asnumpy(out)[:, :, :32]
    base = d[-1]
    # where each half landed (baseline: every group's pair at positions 0, 1)
    halves_at = {}
    for r in range(64):
        for c in range(32):
            v = int(round(float(base[r, c])))
            if v:
                t, h = divmod(v - 1, 8)
                halves_at[f"{t}.{h}"] = [r, c]
    nib = {}
    for t in range(128):
        for j in range(8):
            diff = np.argwhere(np.abs(d[8 * t + j] - base) > 0)
            cells = sorted({(int(r), int(c) // 4) for r, c in diff})
            if cells:
                nib[f"{t}.{j}"] = [list(x) for x in cells]
    return {"dtype": dtype, "sel": sel, "halves_at": halves_at, "nibbles": nib,
            "baseline_nonzero": int((base != 0).sum())}


def _tput_kernel(cp, nn: int, sparse: bool, spread: int, nsl: int, wgoff: int):
    """The throughput kernel for m64n{nn} (k32.sp or dense k16), B over `nsl` slices (spread 1: each wgmma another),
    wgoff 1: each warpgroup on its own 8 slices."""
    src = (TPUT.replace("@NN@", str(nn)).replace("@SPARSE@", str(int(sparse))).replace("@SPREAD@", str(spread))
           .replace("@NSL@", str(nsl)).replace("@WGOFF@", str(wgoff)).replace("@BODY@", wgmma_body(nn, sparse)))
    return cp.RawModule(code=src, options=("-std=c++17", "-arch=sm_90a")).get_function("tput")


def time_launch(cp, f, blocks: int, threads: int, args: tuple, smem: int, reps: int) -> float:
    """Median seconds of `reps` launches of kernel f (after one warm-up launch), by CUDA events (bench/union_probe.py
    and bench/sp24_wg_probe.py time theirs with it too)."""
    f((blocks,), (threads,), args, shared_mem=smem)
    cp.cuda.runtime.deviceSynchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        f((blocks,), (threads,), args, shared_mem=smem)
        e1.record()
        e1.synchronize()
        ts.append(cp.cuda.get_elapsed_time(e0, e1) * 1e-3)
    return float(np.median(ts))


def _time_tput(cp, f, blocks: int, threads: int, iters: int, smem: int, reps: int) -> float:
    """Median seconds of `reps` launches of the throughput kernel (after one warm-up launch), by CUDA events."""
    out = cp.zeros(blocks * threads, dtype=cp.float32)
    return time_launch(cp, f, blocks, threads, (out, np.int32(iters)), smem, reps)


def throughput(cp, reps: int = 5) -> dict:
    res = {}
    props = cp.cuda.runtime.getDeviceProperties(0)
    sms = props["multiProcessorCount"]
    for nn, sparse, spread in ((256, False, 0), (256, True, 0), (128, False, 0), (128, True, 0),
                               (256, False, 1), (256, True, 1), (128, False, 1), (128, True, 1)):
        nsl = 8 if spread else 1
        f = _tput_kernel(cp, nn, sparse, spread, nsl, 0)
        smem = 1024 + nsl * 32 * nn * 2
        f.max_dynamic_shared_size_bytes = smem
        blocks, iters = sms * 2, 2000
        t = _time_tput(cp, f, blocks, 256, iters, smem, reps)
        flops = blocks * 2 * iters * 4 * 64 * nn * (32 if sparse else 16) * 2
        res[f"m64n{nn}k{32 if sparse else 16}{'.sp' if sparse else ''}{' spread' if spread else ''}"] = {
            "s": t, "tflops_dense_equiv": flops / t / 1e12}
    return res


def occupancy(cp, reps: int = 5) -> dict:
    """Session 44: the sparse rate by warpgroups an SM (B spread over 8 slices a warpgroup, as a pipeline's stages):
    1 warpgroup an SM (one block of 128), 2 (one block of 256, both on the same slices or each on its own, or two
    blocks of 128), 4 (two blocks of 256). Says whether one warpgroup alone has the SM's sparse rate (the ping-pong
    draft's loops, one warpgroup at a time, ran ~1.5x slower than two at once) and whether two warpgroups on the same B
    cost what two on different B cost."""
    res = {}
    sms = cp.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"]
    for nn in (128, 256):
        for name, threads, per_sm, wgoff in (("1 wg/SM", 128, 1, 0), ("2 wg/SM same B", 256, 1, 0),
                                             ("2 wg/SM own B", 256, 1, 1), ("2 wg/SM as 2 blocks", 128, 2, 0),
                                             ("4 wg/SM as 2 blocks same B", 256, 2, 0)):
            nsl = 16 if wgoff else 8
            f = _tput_kernel(cp, nn, True, 1, nsl, wgoff)
            smem = 1024 + nsl * 32 * nn * 2
            if per_sm * smem > 227 * 1024:  # n256 on its own B: 16 slices of 16 KB do not fit
                continue
            f.max_dynamic_shared_size_bytes = smem
            blocks, iters = sms * per_sm, 2000
            t = _time_tput(cp, f, blocks, threads, iters, smem, reps)
            flops = blocks * (threads // 128) * iters * 4 * 64 * nn * 32 * 2
            res[f"m64n{nn}k32.sp {name}"] = {"s": t, "tflops_dense_equiv": flops / t / 1e12}
            print(f"m64n{nn}k32.sp {name}: {flops / t / 1e12:.0f} TFLOP/s dense-equivalent", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--occupancy-only", action="store_true", help="only the rate by warpgroups an SM (session 44)")
    a = ap.parse_args(argv)
    import cupy as cp  # noqa: PLC0415
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = {"gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "layout": [], "throughput": None}
    if a.occupancy_only:
        rep["occupancy"] = occupancy(cp)
        (out / "sp24-occupancy.json").write_text(json.dumps(rep, indent=1))
        return 0
    for dtype, sel in () if a.throughput_only else (("fp16", 0), ("fp16", 1), ("bf16", 0)):
        try:
            r = layout_probe(cp, dtype, sel)
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            r = {"dtype": dtype, "sel": sel, "error": repr(e)}
        rep["layout"].append(r)
        if "error" in r:
            print(f"layout {dtype} sel {sel}: {r['error']}")
            continue
        print(f"layout {dtype} sel {sel}: baseline nonzeros {r['baseline_nonzero']} (expect 1024)")
        for t in (0, 1, 2, 3, 4, 5, 32):
            print("  halves of thread", t, [r["halves_at"].get(f"{t}.{h}") for h in range(8)])
        for t in (0, 1, 2, 3, 4, 5, 32, 33):
            print("  nibbles of thread", t, [r["nibbles"].get(f"{t}.{j}") for j in range(8)])
    try:
        rep["throughput"] = throughput(cp)
        for k, v in rep["throughput"].items():
            print(f"{k}: {v['tflops_dense_equiv']:.0f} TFLOP/s dense-equivalent ({v['s'] * 1e3:.3f} ms)")
    except Exception as e:  # noqa: BLE001
        rep["throughput"] = {"error": repr(e)}
        print("throughput:", repr(e))
    (out / "sp24-probe.json").write_text(json.dumps(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
