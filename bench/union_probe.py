"""Probe of the swap-and-transpose union route for low density (session 63, bench/NOTES.md "Next (session 64)" 2),
before any family: the MMA rate of Hopper's wgmma with A from registers filled by ldmatrix at per-lane (gathered) row
addresses over a dense B stage in shared memory.

The route: C^T = B^T A^T. A row group of n rows of the sparse A is wgmma's n side; the union of their columns (k) is
walked in k16 steps; wgmma's A operand (64 x 16: 64 columns of N by 16 union columns) is B's rows at those k, which
sit in a dense K-chunk of B staged in shared memory (as tc_sp24 stages it, 128-byte swizzle), so each lane of a warp
hands ldmatrix.x4.trans the address of one gathered row; wgmma's B operand (16 x n) is the group's values over the
union (from shared memory). What the roofline (NOTES) does not know and this measures: whether the gathered
ldmatrix (bank conflicts where two of the 8 rows of a phase share k & 7 under the swizzle) and the register A path keep
the port-bound rate of 40 / 67 / 100 % of the dense MMA peak at n = 16 / 32 / 64.

The rates' kernels do not check values; a layout check first runs one k16 step of each index order with wgmma's B
all ones and compares D with numpy (the gather, ldmatrix.trans and the register-A fragment: mma.sync's m16k16 a warp).
Per (n, index order): two warpgroups a block (each its own 64 columns of N, the same B operand), one or two blocks an
SM as shared memory allows, 2000 iterations of 4 k16 steps (ldmatrix + wgmma each), double-buffered A registers,
wgmma.wait_group 1 before each refill. Index orders over a 256-row stage: `contig` (k = 0, 1, 2, ...: a dense loop's
ldmatrix), `random` (a random subset of the stage's rows, as a union is), `banked` (the same subset in an order whose
8 rows of each ldmatrix phase differ in k & 7 where the counts allow: the host may order a union freely, A's values
follow). Reports TFLOP/s of the MACs done and the fraction of the rate the same kernel reaches at n = 128 contig.

    python3 bench/union_probe.py --out DIR          (device; `bench/device.sh probe` does not wrap it: run it directly)
    python3 bench/union_probe.py --emit FILE.cu [--n 16]   (no GPU: one n's kernel source, for nvcc -arch=sm_90a)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

KS = 256  # rows (k) of the B stage in shared memory: 256 x 64 columns x 2 bytes = 32 KB, 128-byte swizzle


sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the sibling probes (as bench/tf32_probe.py)
# bench/sp24_probe.py's CUDA helpers (wg_fence, wg_commit, wg_wait, ...), then this probe's own; its launch timer
from sp24_probe import HELPERS as SP24_HELPERS, time_launch, wgmma_body  # noqa: E402

HELPERS = SP24_HELPERS + r"""
// wgmma's B (the group's values, K-major, no swizzle: core matrices of 8 x 8 halves, 128 bytes each)
__device__ __forceinline__ unsigned long long desc_plain(unsigned int addr, unsigned int lbo, unsigned int sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)(lbo >> 4) << 16)
           | ((unsigned long long)(sbo >> 4) << 32);
}
// the accumulators kept alive (summed, stored under a condition that never holds) so the MMAs are not optimized away
template <int N> __device__ __forceinline__ void keep(const float (&d)[N], float* __restrict__ out, int i) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) s += d[j];
    if (s == 12345.0f) out[i] = s;
}
"""

SRC = HELPERS + r"""
#define NN @NN@
#define NACC (NN / 2)
#define KS @KS@
__device__ __forceinline__ void ldsm_x4_t(unsigned int (&a)[4], unsigned int addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(addr));
}
// kidx: KS / 16 k16 steps of 16 stage rows each (the order a union is walked in)
extern "C" __global__ void __launch_bounds__(256) uprobe(const int* __restrict__ kidx, float* __restrict__ out, int iters)
{
    extern __shared__ __align__(1024) unsigned char sm[];
    const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31;
    const unsigned int base = ((unsigned int)__cvta_generic_to_shared(sm) + 1023u) & ~1023u;
    // [base, + 2 x KS x 128): each warpgroup's stage (64 columns of N a row, 128-byte swizzle); then the B operand
    // (16 x NN halves, 32 NN bytes), then the index table (KS ints)
    const unsigned int stage = base + (unsigned int)wg * KS * 128u;
    const unsigned int bop = base + 2u * KS * 128u;
    const unsigned int ktab = bop + 32u * NN;
    for (int i = tid; i < (2 * KS * 128 + 32 * NN) / 16; i += blockDim.x)
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" :: "r"(base + 16 * i), "r"(0x3c003c00u) : "memory");
    for (int i = tid; i < KS; i += blockDim.x)
        asm volatile("st.shared.u32 [%0], %1;" :: "r"(ktab + 4 * i), "r"(kidx[i]) : "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    // this lane's row of each ldmatrix phase: lanes 0-7 / 16-23 rows 0-7 / 8-15 of the k16 step (matrices 0, 2: columns
    // 16 w ...; 8-15 / 24-31 the same rows at columns 16 w + 8: matrices 1, 3); its 16-byte chunk of the 128-byte row
    const int rsel = (lane & 7) + 8 * (lane >> 4);
    const unsigned int chunk = 2u * w + ((lane >> 3) & 1);
    const unsigned long long bdesc = desc_plain(bop, 128, 256);
    unsigned int a[2][4][4];
    float d[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) d[i] = 0.0f;
#pragma unroll 1
    for (int it = 0; it < iters; it += 2) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            // a[h] was last read by the group committed two groups ago: at most one group (the other set's) in flight
            fence_acc(d);
            wg_wait<1>();
            const int step0 = ((it + h) * 4) & (KS / 16 - 1);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                int k;
                asm volatile("ld.shared.u32 %0, [%1];" : "=r"(k) : "r"(ktab + 4u * (16u * ((step0 + q) & (KS / 16 - 1)) + rsel)));
                ldsm_x4_t(a[h][q], stage + 128u * k + ((chunk ^ (unsigned int)(k & 7)) << 4));
            }
            wg_fence();
            fence_acc(d);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
@BODY@
            }
            wg_commit();
        }
    }
    wg_wait<0>();
    fence_acc(d);
    keep(d, out, blockIdx.x * blockDim.x + tid);
}
"""


LAYOUT = HELPERS + r"""
// one warpgroup, one k16 step: A operand gathered by ldmatrix.x4.trans from a KS x 64 stage (128-byte swizzle) at the
// rows kidx[0..15]; wgmma's B all ones (so D[m][n] = sum over the step's rows of stage[k][m] whatever B's layout);
// D (64 x 16) out row-major
extern "C" __global__ void ulayout(const unsigned short* __restrict__ bstage, const int* __restrict__ kidx,
                                   float* __restrict__ out)
{
    __shared__ __align__(1024) unsigned short st[@KS@ * 64];
    __shared__ __align__(128) unsigned short ones[16 * 16];
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31;
    for (int i = tid; i < @KS@ * 64; i += 128) {  // stage[k][m] at k * 128 + ((m >> 3) ^ (k & 7)) * 16 + (m & 7) * 2 bytes
        const int k = i >> 6, m = i & 63;
        st[(k * 128 + (((m >> 3) ^ (k & 7)) << 4) + (m & 7) * 2) >> 1] = bstage[i];
    }
    for (int i = tid; i < 256; i += 128) ones[i] = 0x3c00;
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    const unsigned int stage = (unsigned int)__cvta_generic_to_shared(st);
    const int k = kidx[(lane & 7) + 8 * (lane >> 4)];
    const unsigned int chunk = 2u * w + ((lane >> 3) & 1);
    unsigned int a[4];
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(stage + 128u * k + ((chunk ^ (unsigned int)(k & 7)) << 4)));
    const unsigned long long bdesc = desc_plain((unsigned int)__cvta_generic_to_shared(ones), 128, 256);
    float d[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) d[i] = 0.0f;
    wg_fence();
    asm volatile("wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
                 "{%8, %9, %10, %11}, %12, 1, 1, 1, 0;"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc));
    wg_commit();
    wg_wait<0>();
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 8; ++i)
        out[(16 * w + g + 8 * ((i >> 1) & 1)) * 16 + 8 * (i >> 2) + 2 * t + (i & 1)] = d[i];
}
""".replace("@KS@", str(KS))


def layout_check(cp) -> dict[str, float]:
    """For each index order's first k16 step: the largest |D - expected| of the gathered register-A wgmma against
    numpy (D[m][n] = sum over the step's 16 rows k of stage[k][m], for every n); 0 where the gather and the fragment
    layout are right (the values are small integers, exact in fp16 and their sums in fp32)."""
    mod = cp.RawModule(code=LAYOUT, options=("-std=c++17", "-arch=sm_90a"))
    f = mod.get_function("ulayout")
    kk, mm = np.meshgrid(np.arange(KS), np.arange(64), indexing="ij")
    stage = ((3 * kk + 5 * mm) % 17 - 8).astype(np.float32)
    bits = cp.asarray(stage.astype(np.float16).view(np.uint16).reshape(-1))
    res = {}
    for name, order in index_orders().items():
        step = order[:16].astype(np.int32)
        out = cp.zeros(64 * 16, dtype=cp.float32)
        f((1,), (128,), (bits, cp.asarray(step), out))
        want = np.repeat(stage[step].sum(axis=0)[:, None], 16, axis=1)
        res[name] = float(np.abs(cp.asnumpy(out).reshape(64, 16) - want).max())
    return res


def source(nn: int) -> str:
    body = wgmma_body(nn, False, a="a[h][q]", desc="bdesc", tnsp_b=0, indent=16)
    return SRC.replace("@NN@", str(nn)).replace("@KS@", str(KS)).replace("@BODY@", body)


def smem_bytes(nn: int) -> int:
    return 1024 + 2 * KS * 128 + 32 * nn + 4 * KS


def index_orders(seed: int = 0, frac: float = 0.5) -> dict[str, np.ndarray]:
    """KS stage rows in the walk's order: contig, random (a sorted random subset of frac x KS rows, repeated to fill
    KS entries), banked (the same subset in an order whose phases of 8 rows have distinct k & 7 where the counts
    allow)."""
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(KS, int(KS * frac), replace=False))
    walk = np.resize(sub, KS)
    # the host may walk a union in any order (A's values follow): phases of 8 rows drawn one a residue k & 7, from the
    # residues with the most rows left, so that a phase repeats a residue only when fewer than 8 residues are left
    buckets = [list(sub[(sub & 7) == r]) for r in range(8)]
    seq: list[int] = []
    while any(buckets):
        for b in sorted((b for b in buckets if b), key=len, reverse=True)[:8]:
            seq.append(b.pop())
        while len(seq) % 8:
            b = max(buckets, key=len)
            if not b:
                break
            seq.append(b.pop())
    banked = np.resize(np.array(seq), KS)
    return {"contig": np.arange(KS), "random": walk, "banked": banked}


def conflicts(order: np.ndarray) -> float:
    """Mean ldmatrix wavefronts a phase of 8 rows under the 128-byte swizzle (1: conflict-free): the most rows that
    share k & 7 in the phase (a warp's 8 lanes of one phase read one 16-byte chunk each, chunk ^ (k & 7))."""
    waves = [np.bincount(order[s:s + 8] & 7, minlength=8).max() for s in range(0, len(order), 8)]
    return float(np.mean(waves))


def compile_check() -> dict[int, dict]:
    """bench/tf32_probe.py's nvcc_report (nvcc -arch=sm_90a -cubin, no GPU needed) of each n's kernel and of the layout
    check's (n 0): {n: {"ok", "spill_bytes", "registers", "log"}}."""
    from tf32_probe import nvcc_report  # noqa: PLC0415
    return {nn: nvcc_report(source(nn) if nn else LAYOUT) for nn in (16, 32, 64, 128, 0)}


def run(out: Path, reps: int = 5) -> dict:
    import cupy as cp  # noqa: PLC0415
    props = cp.cuda.runtime.getDeviceProperties(0)
    sms = props["multiProcessorCount"]
    orders = index_orders()
    rep = {"gpu": props["name"].decode(), "ks": KS, "orders": {k: {"conflict_waves": conflicts(v)}
                                                                for k, v in orders.items()}, "rates": {}}
    try:
        rep["layout_max_err"] = layout_check(cp)
        print(f"layout check (max |D - numpy|, 0 = right): {rep['layout_max_err']}", flush=True)
    except Exception as e:  # noqa: BLE001 - a probe: report and go on to the rates
        rep["layout_max_err"] = {"error": repr(e)}
        print("layout check:", repr(e), flush=True)
    for nn in (16, 32, 64, 128):
        mod = cp.RawModule(code=source(nn), options=("-std=c++17", "-arch=sm_90a"))
        f = mod.get_function("uprobe")
        smem = smem_bytes(nn)
        f.max_dynamic_shared_size_bytes = smem
        per_sm = max(1, min(2, (227 * 1024) // smem))
        blocks, iters = sms * per_sm, 2000
        for name, order in orders.items():
            kidx = cp.asarray(order.astype(np.int32))
            o = cp.zeros(blocks * 256, dtype=cp.float32)
            t = time_launch(cp, f, blocks, 256, (kidx, o, np.int32(iters)), smem, reps)
            flops = blocks * 2 * iters * 4 * 64 * nn * 16 * 2
            rep["rates"][f"n{nn} {name}"] = {"s": t, "tflops": flops / t / 1e12, "blocks_per_sm": per_sm}
            print(f"m64n{nn}k16 RS, ldmatrix {name}: {flops / t / 1e12:.0f} TFLOP/s", flush=True)
    peak = rep["rates"]["n128 contig"]["tflops"]
    for v in rep["rates"].values():
        v["of_n128_contig"] = v["tflops"] / peak
    out.mkdir(parents=True, exist_ok=True)
    (out / f"union-probe-{rep['gpu'].lower().replace(' ', '-')}.json").write_text(json.dumps(rep, indent=1))
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--emit", help="write one n's kernel source (--n) to this file and stop (no GPU)")
    ap.add_argument("--n", type=int, default=16, help="--emit: the wgmma's n (16, 32, 64, 128)")
    a = ap.parse_args(argv)
    if a.emit:
        Path(a.emit).write_text(source(a.n))
        for k, v in index_orders().items():
            print(f"{k}: {conflicts(v):.2f} wavefronts an ldmatrix phase")
        return 0
    run(Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
