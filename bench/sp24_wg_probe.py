"""Probe of tc_sp24's loop geometry with its copies in it (session 64, bench/NOTES.md "Next (session 65)" 3): does a
block of four consumer warpgroups sharing each B stage run wgmma.sp faster per MAC than today's two?

Session 36's model puts the loop at the SM's shared-memory port: per row and k32 step, B's read (bn bytes), B's write
by the producer's copy (64 bn / R for R rows a block), A's tile write and register load (72 bytes); today's records (bn
128, two warpgroups, R 128) at (128 + 64 + 72) / 128 = 2.06 of the sparse MMA's time, four warpgroups (R 256) at 1.81.
Session 44's occupancy probe (`sp24_probe.py --occupancy-only`) timed 1 / 2 / 4 warpgroups without copies (all ~1900
dense-equivalent TFLOP/s on the H100): the gain, if any, is in the copies, so this probe has them.

Per config (wg consumer warpgroups of 64 rows, bn columns, kc k32 steps a chunk, st stages, acopy): one block an SM, a
producer warp that puts each chunk's B (kc x 32 x bn halves) and, at acopy 1, the warpgroups' A tiles (wg kc x 2304
bytes: values and metadata) into a ring of st stages with cp.async.bulk and an mbarrier (complete_tx), the consumers
waiting on it, loading A's registers from the stage (acopy 1; acopy 0: constant A, no A bytes), issuing kc
wgmma.mma_async.sp m64n{bn}k32 a chunk, and releasing the previous chunk's stage once its wgmmas are done (wait_group
1), as tc_sp24's loop. B's and A's sources are small (8 chunks, L2-resident), so the copies cost the port, not HBM.
Reports dense-equivalent TFLOP/s (a k32 sparse MMA counted as 64 x bn x 32 x 2) and each config's port-model prediction.
The values are not checked (the rates' kernels compute on arbitrary data); sp24_probe's layout probe and the tc_sp24
tests cover the layouts.

    python3 bench/sp24_wg_probe.py --out DIR [--configs wg,bn,kc,st,acopy[,pwg] ...] [--tag T]   (device; ~30 s; default CONFIGS)
    python3 bench/sp24_wg_probe.py --emit FILE.cu [--config wg,bn,kc,st,acopy[,pwg]]   (no GPU: one config's source)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

NSRC = 8  # chunks in each global source (L2-resident)
# (wg, bn, kc, st, acopy): today's records' geometry (bn 128 kc 2 wg 2 st 6), then two and four warpgroups at kc 1 (at kc
# 2 four warpgroups spill: 17 warps put 5 on one SM sub-partition, whose 16384 registers leave 96 a thread for 64
# accumulators and two A register sets; session 65's pwg 1, a producer warpgroup that gives its registers to the
# consumers with setmaxnreg, runs them without a spill: `--configs 4,128,2,6,1,1`), bn 256 at two (session 37's pw
# geometry, without the producer warpgroup), one warpgroup, and the kc 1 pair without A's bytes (acopy 0: the bound if
# A cost the port nothing; `ar` 4's loads still pass L1)
CONFIGS = [(2, 128, 2, 6, 1), (2, 128, 1, 8, 1), (4, 128, 1, 8, 1), (2, 256, 1, 6, 1), (1, 128, 2, 6, 1),
           (2, 128, 1, 8, 0), (4, 128, 1, 8, 0)]


def _bytes(wg: int, bn: int, kc: int, acopy: int) -> tuple[int, int]:
    """A chunk's B bytes and A bytes (the stage's two parts)."""
    return kc * 32 * bn * 2, (wg * kc * 2304 if acopy else 0)


def smem_bytes(wg: int, bn: int, kc: int, st: int, acopy: int) -> int:
    b, a = _bytes(wg, bn, kc, acopy)
    return 1024 + st * (b + a) + 16 * st


def port_model(wg: int, bn: int, acopy: int) -> float:
    """Session 36's shared-memory bytes a row and k32 step over the sparse MMA's (bn): B read bn, B written 64 bn / R (R
    = 64 wg rows share a stage), A written and read 36 + 36 at acopy 1. The predicted rate is 2 / this of the dense
    peak (the sparse MMA's full rate being 2x dense), capped at 2."""
    return (bn + 64 * bn / (64 * wg) + (72 if acopy else 0)) / bn


sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the sibling probes (as bench/tf32_probe.py)
# bench/sp24_probe.py's CUDA helpers (desc_sw128, wg_fence / wg_commit / wg_wait, fence_acc) and launch timer
import sp24_probe as _SP24  # noqa: E402

SRC = _SP24.HELPERS + r"""
#define WG @WG@
#define BN @BN@
#define KC @KC@
#define ST @ST@
#define ACOPY @ACOPY@
#define NACC (BN / 2)
#define BBYTES (KC * 32 * BN * 2)
#define ABYTES (ACOPY ? WG * KC * 2304 : 0)
#define SBYTES (BBYTES + ABYTES)
#define NSRC @NSRC@
#define PWG @PWG@
#define NTHREADS @NTHREADS@
__device__ __forceinline__ void mbar_wait(unsigned int bar, unsigned int parity) {
    asm volatile("{\n\t.reg .pred p;\n\tW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t@!p bra W;\n\t}"
                 :: "r"(bar), "r"(parity) : "memory");
}
extern "C" __global__ void __launch_bounds__(NTHREADS, 1)
wgprobe(const unsigned char* __restrict__ bsrc, const unsigned char* __restrict__ asrc, float* __restrict__ out, int chunks)
{
    extern __shared__ __align__(1024) unsigned char sm[];
    const int tid = threadIdx.x, warp = tid >> 5;
    const unsigned int base = ((unsigned int)__cvta_generic_to_shared(sm) + 1023u) & ~1023u;
    // B's stages first (each 1024-aligned: the 128-byte swizzle's atoms), then A's, then the barriers
    const unsigned int abase = base + ST * BBYTES, full = abase + ST * ABYTES, empty = full + 8 * ST;
    if (tid == 0) {
        for (int s = 0; s < ST; ++s) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(full + 8 * s) : "memory");
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(empty + 8 * s), "r"(4 * WG) : "memory");
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp >= 4 * WG) {  // the producer warp: lane 0 puts chunk c in stage c % ST once the stage is free
#if PWG
        // a whole producer warpgroup (pwg 1) gives its registers to the consumers: an SM sub-partition holds one
        // producer warp at 24 and WG consumer warps at CREG (creg(): no more than the producer's dec gives back)
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;" ::: "memory");
        if (warp != 4 * WG) return;
#endif
        if ((tid & 31) == 0) {
            for (int c = 0; c < chunks; ++c) {
                const int s = c % ST;
                if (c >= ST) mbar_wait(empty + 8 * s, ((c / ST) - 1) & 1);
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(full + 8 * s), "r"(SBYTES) : "memory");
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                             :: "r"(base + s * BBYTES), "l"(bsrc + (size_t)(c % NSRC) * BBYTES), "r"(BBYTES), "r"(full + 8 * s)
                             : "memory");
#if ACOPY
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                             :: "r"(abase + s * ABYTES), "l"(asrc + (size_t)(c % NSRC) * ABYTES), "r"(ABYTES),
                                "r"(full + 8 * s) : "memory");
#endif
            }
        }
        return;
    }
#if PWG
    asm volatile("setmaxnreg.inc.sync.aligned.u32 @CREG@;" ::: "memory");
#endif
    const int wgi = warp >> 2, tw = tid & 127;
    unsigned int a[2][KC][4], meta[2][KC];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int kk = 0; kk < KC; ++kk) {
            a[h][kk][0] = 0x3c003c00u ^ (unsigned)tid; a[h][kk][1] = a[h][kk][2] = a[h][kk][3] = 0x3c003c00u;
            meta[h][kk] = 0x44444444u;
        }
    float d[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) d[i] = 0.0f;
#pragma unroll 1
    for (int c = 0; c < chunks; c += 2) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int cc = c + h, s = cc % ST;
            mbar_wait(full + 8 * s, (cc / ST) & 1);
#if ACOPY
            const unsigned int at = abase + s * ABYTES + wgi * (KC * 2304);
#pragma unroll
            for (int kk = 0; kk < KC; ++kk) {
                asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                             : "=r"(a[h][kk][0]), "=r"(a[h][kk][1]), "=r"(a[h][kk][2]), "=r"(a[h][kk][3])
                             : "r"(at + kk * 2304 + 16 * tw) : "memory");
                asm volatile("ld.shared.u32 %0, [%1];" : "=r"(meta[h][kk]) : "r"(at + kk * 2304 + 2048 + 4 * (tw & 63)) : "memory");
            }
#endif
            wg_fence();
            fence_acc(d);
#pragma unroll
            for (int kk = 0; kk < KC; ++kk) {
                const unsigned long long desc = desc_sw128(base + s * BBYTES + kk * 64 * BN, 32 * 128, 1024);
@BODY@
            }
            wg_commit();
            fence_acc(d);
            wg_wait<1>();
            // the previous chunk's wgmmas are done: its stage is free (one arrival a consumer warp)
            if (cc > 0 && (tid & 31) == 0)
                asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(empty + 8 * ((cc - 1) % ST)) : "memory");
        }
    }
    wg_wait<0>();
    fence_acc(d);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < NACC; ++i) sum += d[i];
    if (sum == 12345.0f) out[blockIdx.x * blockDim.x + tid] = sum;
}
"""


def threads(wg: int, pwg: int = 0) -> int:
    """A block's threads: wg consumer warpgroups and a producer warp (pwg 0) or warpgroup (pwg 1)."""
    return wg * 128 + (128 if pwg else 32)


def creg(wg: int) -> int:
    """pwg 1's consumer registers after setmaxnreg.inc. The block starts at R registers a thread, the launch bound's
    share (65536 / threads, a multiple of 8: ptxas uses all of it here), and the consumers' inc is served only from
    what the producer warpgroup's dec to 24 gives back: 128 (R - 24) registers among 128 wg consumer threads, so at
    most R + (R - 24) / wg (a multiple of 8, at most 240). Asking more waits forever: session 66's wg 4 at 120 (R 96:
    9216 given back, 12288 asked) hung on an H100, where wg 2 at 240 (R 168: 18432 both) ran."""
    r = 65536 // threads(wg, 1) // 8 * 8
    return min(240, (r + (r - 24) // wg) // 8 * 8)


def source(wg: int, bn: int, kc: int, st: int, acopy: int, pwg: int = 0) -> str:
    rep = {"@WG@": wg, "@BN@": bn, "@KC@": kc, "@ST@": st, "@ACOPY@": acopy, "@NSRC@": NSRC, "@PWG@": pwg,
           "@CREG@": creg(wg),
           "@NTHREADS@": threads(wg, pwg)}  # the launch bound creg() counts from
    s = SRC
    for k, v in rep.items():
        s = s.replace(k, str(v))
    return s.replace("@BODY@", _SP24.wgmma_body(bn, True, a="a[h][kk]", meta="meta[h][kk]", indent=16))


def name(cfg) -> str:
    wg, bn, kc, st, acopy, *pwg = cfg
    return f"wg{wg} bn{bn} kc{kc} st{st}{'' if acopy else ' noA'}{' pwg' if pwg and pwg[0] else ''}"


def compile_check() -> dict[str, dict]:
    """nvcc -arch=sm_90a -cubin of each config (bench/tf32_probe.py's nvcc_report; no GPU needed)."""
    from tf32_probe import nvcc_report  # noqa: PLC0415
    return {name(c): nvcc_report(source(*c)) for c in CONFIGS}


def run(out: Path, chunks: int = 4000, reps: int = 5, configs=None, tag: str = "") -> dict:
    import cupy as cp  # noqa: PLC0415
    props = cp.cuda.runtime.getDeviceProperties(0)
    sms = props["multiProcessorCount"]
    rep = {"gpu": props["name"].decode(), "chunks": chunks, "rates": {}}
    rng = np.random.default_rng(0)
    for cfg in configs or CONFIGS:
        wg, bn, kc, st, acopy, *rest = cfg
        pwg = rest[0] if rest else 0
        key = name(cfg)
        smem = smem_bytes(wg, bn, kc, st, acopy)
        pred = min(2.0, 2.0 / port_model(wg, bn, acopy))
        if smem > 227 * 1024:
            rep["rates"][key] = {"skipped": f"{smem} bytes of shared memory"}
            continue
        try:
            f = cp.RawModule(code=source(*cfg), options=("-std=c++17", "-arch=sm_90a")).get_function("wgprobe")
            f.max_dynamic_shared_size_bytes = smem
            bb, ab = _bytes(wg, bn, kc, acopy)
            bsrc = cp.asarray(rng.integers(0x3000, 0x3c00, size=NSRC * bb // 2, dtype=np.uint16))
            asrc = cp.asarray(rng.integers(0x3000, 0x3c00, size=max(1, NSRC * ab // 2), dtype=np.uint16))
            nt = threads(wg, pwg)
            o = cp.zeros(sms * nt, dtype=cp.float32)
            t = _SP24.time_launch(cp, f, sms, nt, (bsrc, asrc, o, np.int32(chunks)), smem, reps)
            flops = sms * wg * chunks * kc * 64 * bn * 32 * 2
            rep["rates"][key] = {"s": t, "tflops_dense_equiv": flops / t / 1e12, "model_of_dense_peak": pred}
            print(f"{key}: {flops / t / 1e12:.0f} TFLOP/s dense-equivalent (port model: {pred:.2f}x the dense peak)",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            rep["rates"][key] = {"error": repr(e)}
            print(f"{key}: {e!r}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    gpu = rep["gpu"].lower().replace(" ", "-")
    (out / f"sp24-wg-probe-{gpu}{'-' + tag if tag else ''}.json").write_text(json.dumps(rep, indent=1))
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--emit", help="write one config's kernel source (--config) to this file and stop (no GPU)")
    ap.add_argument("--config", default="4,128,1,8,1", help="--emit: wg,bn,kc,st,acopy[,pwg]")
    ap.add_argument("--configs", nargs="+", metavar="WG,BN,KC,ST,ACOPY[,PWG]",
                    help="run these configs instead of CONFIGS (e.g. 4,128,2,6,1: four warpgroups at kc 2, which spill; "
                         "4,128,2,6,1,1: the same with a producer warpgroup and setmaxnreg)")
    ap.add_argument("--tag", default="", help="appended to the JSON file's name (runs of other configs)")
    a = ap.parse_args(argv)
    if a.emit:
        Path(a.emit).write_text(source(*(int(x) for x in a.config.split(","))))  # five or six integers
        return 0
    configs = None
    if a.configs:
        configs = [tuple(int(x) for x in c.split(",") if x.strip().isdigit()) for c in a.configs]
        if any(len(t) != len(c.split(",")) or len(t) not in (5, 6) for t, c in zip(configs, a.configs)):
            ap.error(f"--configs: each one is five or six integers wg,bn,kc,st,acopy[,pwg] (got {a.configs})")
    run(Path(a.out), configs=configs, tag=a.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
