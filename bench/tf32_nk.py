"""tc_sp24 in tf32, the nk layout natively (issue 18): y = x @ A^T + bias with fp32 x, y and bias, A's 1:2 part on
wgmma.mma_async.sp m64n{bn}k16 .tf32, against cuBLAS TF32 (cublasGemmEx, CUBLAS_COMPUTE_32F_FAST_TF32, the bias fused by
cuBLASLt where it takes the shapes: device.vendor.DenseLauncher) on the same operands.

    python3 bench/tf32_nk.py [--cases minilm,dl] [--densities 0.05,0.1] [--out STEM] [--budget S]

Cases (random A, seed 0, uniform): MiniLM's Linear shapes (384x384, 1536x384, 384x1536) at N = 128, 1024, 4096, and the
dl suite's layers with N >= 512 run as nk (x N x K). Per case every config of CONFIGS that the nk space admits natively
is built, checked against the float64 y of the fp32 operands (relative error <= the tf32 tolerance, 2e-3) and timed by
device.timing.time_launches over 8 fresh x buffers (CUDA-graph replay, median of 20); the best is compared with cuBLAS
TF32 timed the same way. The dense fp16 path (cuBLAS FP16 with the bias) is timed too, for reference. Writes STEM.json
and STEM.md (default $OUT/tf32-nk or bench/results/probe/tf32-nk) after each case, so a cut run keeps what it did.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MINILM = [(384, 384), (1536, 384), (384, 1536)]
MINILM_NS = (128, 1024, 4096)

# tc_sp24 configs in tf32 (the nk known-goods of the fp16 space and their neighbours: l2 0 / 12 / 25, pt, split-K)
CONFIGS = [dict(bn=64, kc=4, wg=1, stages=4, splitk=1), dict(bn=64, kc=4, wg=2, stages=4, splitk=1),
           dict(bn=64, kc=2, wg=1, stages=6, splitk=1), dict(bn=64, kc=4, wg=1, stages=4, splitk=4),
           dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=12), dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=25),
           dict(bn=64, kc=4, wg=2, stages=6, splitk=1, l2=12), dict(bn=128, kc=4, wg=1, stages=4, splitk=1),
           dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=12, pw=1),
           dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1), dict(bn=128, kc=2, wg=2, stages=6, splitk=1, l2=25, pw=1),
           dict(bn=128, kc=4, wg=2, stages=3, splitk=1, l2=25, pw=1), dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1, pt=1),
           dict(bn=128, kc=2, wg=2, stages=4, splitk=1, pw=1, pt=1), dict(bn=64, kc=4, wg=2, stages=4, splitk=1, pt=1),
           dict(bn=128, kc=2, wg=2, stages=4, splitk=2, pw=1), dict(bn=64, kc=2, wg=2, stages=8, splitk=1)]


# --configs wide (session 55): deeper rings and other chunk sizes around the large layers' winners, for the latency question
WIDE = [dict(bn=bn, kc=kc, wg=wg, stages=st, splitk=1, pw=pw, pt=pt, l2=0)
        for bn, wg, pw in ((128, 2, 1), (64, 2, 0), (128, 1, 0)) for kc, st in ((1, 6), (1, 8), (2, 6), (2, 8), (4, 3), (4, 4))
        for pt in (0, 1)]


def dl_nk_shapes() -> list[tuple[int, int, int]]:
    from sparse_autotune.tuning.suite import suite_cases  # noqa: PLC0415
    seen = []
    for c in suite_cases("dl"):
        s = (c["M"], c["K"], c["N"])
        if c["N"] >= 512 and s not in seen:
            seen.append(s)
    return seen


def parse_cases(a) -> tuple[list[float], set[str], set | None]:
    """(densities, case sets, shapes to keep or None) of the arguments; UserError on bad input."""
    from sparse_autotune.core.problem import check_density  # noqa: PLC0415
    from sparse_autotune.errors import UserError  # noqa: PLC0415
    sets = {x for x in a.cases.split(",") if x}
    if not sets or not sets <= {"minilm", "dl"}:
        raise UserError(f"--cases {a.cases!r}: choose minilm, dl or both (comma-separated)")
    try:
        dens = [check_density(float(x)) for x in a.densities.split(",")]
    except ValueError:
        raise UserError(f"--densities {a.densities!r}: numbers in (0, 1], comma-separated") from None
    if a.configs not in ("base", "wide"):
        raise UserError(f"--configs {a.configs!r}: choose base or wide")
    keep = None
    if a.shapes:
        try:
            keep = {tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")}
        except ValueError:
            keep = set()
        if not keep or any(len(t) != 3 for t in keep):
            raise UserError(f"--shapes {a.shapes!r}: MxKxN, comma-separated, e.g. 3072x768x2048")
    return dens, sets, keep


def read_skip(path: str) -> list:
    """The cases of an earlier run's JSON (--skip); UserError where it is not one."""
    from sparse_autotune.errors import UserError  # noqa: PLC0415
    try:
        rows = json.loads(Path(path).read_text())["cases"]
        ok = isinstance(rows, list) and all(isinstance(r, dict) and {"set", "M", "K", "N", "density"} <= set(r)
                                            for r in rows)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--skip {path}: not a tf32_nk.py output ({type(exc).__name__})") from None
    if not ok:
        raise UserError(f"--skip {path}: not a tf32_nk.py output (cases without set, M, K, N, density)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="minilm,dl")
    ap.add_argument("--densities", default="0.05,0.1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--budget", type=float, default=540.0, help="seconds; cases past it are left for a rerun (--skip)")
    ap.add_argument("--skip", default=None, help="a previous run's JSON: its cases are not run again (kept in the output)")
    ap.add_argument("--configs", default="base", help="base (CONFIGS) or wide (WIDE: deeper rings, other kc); session 55's "
                    "nkr twins (results/session55/tf32-nk-nkr) ran at commit 117a253")
    ap.add_argument("--shapes", default=None, help="only these MxKxN, comma-separated (e.g. 3072x768x2048)")
    ap.add_argument("--fp16", action="store_true", help="also tc_sp24 in fp16 at the same configs (its best: fp16_us)")
    a = ap.parse_args(argv)
    dens, sets, keep = parse_cases(a)  # bad input: one line, exit 2, before any GPU work
    rows = read_skip(a.skip) if a.skip else []

    from sparse_autotune.core.families import get_family  # noqa: PLC0415
    from sparse_autotune.core.problem import TOLERANCE, random_matrix, storage  # noqa: PLC0415
    from sparse_autotune.core.space import DEFAULT_LIMITS, NK_PATH, problem_env  # noqa: PLC0415
    from sparse_autotune.device.compile import compile_kernel  # noqa: PLC0415
    from sparse_autotune.device.gpu import cupy, gpu_info  # noqa: PLC0415
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel  # noqa: PLC0415
    from sparse_autotune.core.render import render  # noqa: PLC0415
    from sparse_autotune.device.timing import time_launches  # noqa: PLC0415
    from sparse_autotune.device.vendor import DenseLauncher, dense_copy  # noqa: PLC0415
    from sparse_autotune.errors import CandidateError  # noqa: PLC0415

    t_start = time.time()
    cp = cupy()
    info = gpu_info()
    v = info.versions()
    meta = {"gpu": v["gpu"], "driver": v["driver"], "cuda": v["cuda"], "cupy": v["cupy"], "date": dt.date.today().isoformat()}
    limits = info.limits()
    sp24 = get_family("tc_sp24").space
    nk = sp24.for_layout("nk")
    cfgs = [sp24.normalize(c, "tf32") for c in {"wide": WIDE}.get(a.configs, CONFIGS)]
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 4) - 1)) as pool:  # NVRTC for every config first
        list(pool.map(lambda c: compile_kernel(render(sp24, c, "tf32", layout="nk"), options=(f"-arch={sp24.arch}",)), cfgs))
    print(f"compiled {len(cfgs)} configs in {time.time() - t_start:.0f} s", flush=True)

    cases = []
    if "minilm" in sets:
        cases += [("minilm", m, k, n, d) for (m, k) in MINILM for n in MINILM_NS for d in dens]
    if "dl" in sets:
        cases += [("dl", m, k, n, d) for (m, k, n) in dl_nk_shapes() for d in dens]
    if keep is not None:
        cases = [c for c in cases if c[1:4] in keep]
    stem = Path(a.out) if a.out else Path(os.environ.get("OUT") or ROOT / "bench/results/probe") / "tf32-nk"
    stem.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["set"], r["M"], r["K"], r["N"], r["density"]) for r in rows}
    stream = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
    for (kind, m, k, n, d) in cases:
        if (kind, m, k, n, d) in done:
            continue
        if time.time() - t_start > a.budget:
            print(f"budget of {a.budget:.0f} s spent: {kind} {m}x{k} N={n} d={d} and after left", flush=True)
            break
        rng = np.random.default_rng(0)
        host = random_matrix(m, k, d, "uniform", 0).astype(np.float32)
        host.data = rng.standard_normal(host.nnz).astype(np.float32)
        ad = DeviceCSR(host, "tf32")
        w32 = dense_copy(host, "tf32")
        w16 = dense_copy(host, "fp16")
        xs = [cp.asarray(rng.standard_normal((n, k)).astype(np.float32)) for _ in range(8)]
        bias = cp.asarray(rng.standard_normal(m).astype(np.float32))
        y = cp.empty((n, m), dtype=cp.float32)
        ref = xs[0].astype(cp.float64) @ w32.astype(cp.float64).T + bias.astype(cp.float64)
        refn = float(cp.linalg.norm(ref))

        def err_of(fn):
            y.fill(float("nan"))
            fn(xs[0])
            cp.cuda.Device().synchronize()
            return float(cp.linalg.norm(y.astype(cp.float64) - ref)) / refn
        dl = DenseLauncher(w32, n, "tf32", "nk")
        r = {"set": kind, "M": m, "K": k, "N": n, "density": d, "nnz": int(host.nnz),
             "cublas_tf32_us": time_launches([lambda x=x: dl(x.data.ptr, y.data.ptr, stream(), bias.data.ptr) for x in xs]).median_us,
             "cublas_tf32_err": err_of(lambda x: dl(x.data.ptr, y.data.ptr, stream(), bias.data.ptr))}
        xs16 = [cp.asarray(storage(cp.asnumpy(x), "fp16")) for x in xs[:4]]
        b16 = cp.asarray(storage(cp.asnumpy(bias), "fp16"))
        y16 = cp.empty((n, m), dtype=cp.float16)
        dl16 = DenseLauncher(w16, n, "fp16", "nk")
        r["cublas_fp16_us"] = time_launches([lambda x=x: dl16(x.data.ptr, y16.data.ptr, stream(), b16.data.ptr) for x in xs16]).median_us
        env = problem_env(m, k, n, int(host.nnz), "tf32", "nk")
        r["configs"] = []
        for cfg in cfgs:
            if nk.check({**cfg, NK_PATH: "native"}, env, limits or DEFAULT_LIMITS) is not None:
                continue
            short = {q: cfg[q] for q in ("bn", "kc", "wg", "stages", "splitk", "l2", "pw", "pt")}
            try:
                ln = build_kernel(ad, "tc_sp24", cfg, "tf32", layout="nk").launcher(n)
                e = err_of(lambda x: ln(x.data.ptr, y.data.ptr, stream(), bias.data.ptr))
                if not e <= TOLERANCE["tf32"]:
                    r["configs"].append({"cfg": short, "err": e, "error": "wrong result"})
                    print(f"  WRONG {m}x{k} N={n} d={d} {short}: err {e:.2e}", flush=True)
                    continue
                t = time_launches([lambda x=x: ln(x.data.ptr, y.data.ptr, stream(), bias.data.ptr) for x in xs]).median_us
            except CandidateError as exc:
                r["configs"].append({"cfg": short, "error": str(exc)[:200]})
                continue
            r["configs"].append({"cfg": short, "us": t, "err": e})
        if a.fp16:  # the fp16 twin of the family on the same layer (x, y and bias in fp16), for the tf32 / fp16 time ratio
            ad16 = DeviceCSR(host, "fp16")
            env16 = problem_env(m, k, n, int(host.nnz), "fp16", "nk")
            best16 = None
            for cfg in cfgs:
                c16 = sp24.normalize({q: cfg[q] for q in ("bn", "kc", "wg", "stages", "splitk", "l2", "pw", "pt")}, "fp16")
                if nk.check({**c16, NK_PATH: "native"}, env16, limits or DEFAULT_LIMITS) is not None:
                    continue
                try:
                    ln = build_kernel(ad16, "tc_sp24", c16, "fp16", layout="nk").launcher(n)
                    t = time_launches([lambda x=x: ln(x.data.ptr, y16.data.ptr, stream(), b16.data.ptr) for x in xs16]).median_us
                except CandidateError:
                    continue
                best16 = t if best16 is None else min(best16, t)
            r["fp16_us"] = best16
        ok = [c for c in r["configs"] if "us" in c]
        best = min(ok, key=lambda c: c["us"]) if ok else None
        r["best_us"] = best["us"] if best else None
        r["best_cfg"] = best["cfg"] if best else None
        r["ratio"] = r["cublas_tf32_us"] / best["us"] if best else None
        rows.append(r)
        write(stem, meta, rows)
        print(f"{kind} {m}x{k} N={n} d={d}: cuBLAS TF32 {r['cublas_tf32_us']:.2f} us (fp16 {r['cublas_fp16_us']:.2f}), "
              f"tc_sp24 tf32 {r['best_us'] if best else float('nan'):.2f} us -> {r['ratio'] or 0:.2f}x  {r['best_cfg']}",
              flush=True)
        ad = w32 = w16 = xs = xs16 = ref = None  # the case's device arrays freed before the next case's
        cp.get_default_memory_pool().free_all_blocks()
    write(stem, meta, rows)
    return 0


def write(stem: Path, meta: dict, rows: list) -> None:
    from sparse_autotune.tuning.suite import geomean  # noqa: PLC0415
    summary = {}
    for kind in ("minilm", "dl"):
        for d in sorted({r["density"] for r in rows}):
            sel = [r["ratio"] for r in rows if r["set"] == kind and r["density"] == d]
            if sel:
                summary[f"{kind} d={d:g}"] = {"cases": len(sel), "geomean_over_cublas_tf32": geomean(sel),
                                             "min": min(x for x in sel if x) if any(sel) else None}
    stem.with_suffix(".json").write_text(json.dumps({**meta, "summary": summary, "cases": rows}, indent=1))
    lines = ["# tc_sp24 tf32, nk natively, against cuBLAS TF32", "",
             f"{meta['gpu']}, driver {meta['driver']}, CUDA {meta['cuda']}, CuPy {meta['cupy']}, {meta['date']}. "
             "y = x @ A^T + bias, fp32 operands, random uniform A (seed 0); each config verified (relative error <= 2e-3 "
             "against float64), timed by CUDA-graph replay over 8 x buffers (median of 20). ratio = cuBLAS TF32 / tc_sp24 "
             "(> 1: tc_sp24 faster).", "",
             "| set, density | cases | geomean over cuBLAS TF32 | worst |", "| --- | ---: | ---: | ---: |"]
    for key, s in summary.items():
        lines.append(f"| {key} | {s['cases']} | {s['geomean_over_cublas_tf32'] or 0:.3f} | {s['min'] or 0:.3f} |")
    twin = any(r.get("fp16_us") for r in rows)  # --fp16: the family's fp16 best on the same layer
    lines += ["", "| set | M x K | N | d | cuBLAS TF32 us | cuBLAS FP16 us | tc_sp24 tf32 us | ratio | err | best config |"
              + (" tc_sp24 fp16 us | tf32 / fp16 |" if twin else ""),
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |" + (" ---: | ---: |" if twin else "")]
    for r in rows:
        best = next((c for c in r["configs"] if c.get("cfg") == r["best_cfg"] and "us" in c), None)
        cfg = " ".join(f"{k} {v}" for k, v in (r["best_cfg"] or {}).items())
        lines.append(f"| {r['set']} | {r['M']}x{r['K']} | {r['N']} | {r['density']:g} | {r['cublas_tf32_us']:.2f} | "
                     f"{r['cublas_fp16_us']:.2f} | {r['best_us'] or 0:.2f} | {r['ratio'] or 0:.3f} | "
                     f"{best['err'] if best else 0:.1e} | {cfg} |"
                     + (f" {r['fp16_us'] or 0:.2f} | {(r['best_us'] or 0) / (r['fp16_us'] or 1):.2f} |" if twin else ""))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    from sparse_autotune.errors import exit_status  # noqa: E402
    sys.exit(exit_status("tf32_nk.py", main))
