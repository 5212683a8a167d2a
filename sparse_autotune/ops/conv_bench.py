"""conv3x3 benchmark (issue 19, section 2): tuned sparse 3x3 convolutions against cuDNN (torch.nn.functional.conv2d)
at FP32, TF32 and FP16, NCHW and channels_last; `python3 bench/probe.py conv` runs it.

Cases (`suite_cases`): ResNet-50's 3x3 layers, stride 1: 64@56, 128@28, 256@14, 512@7 (Cout = Cin = C, H = W = the
size); stride 2: 128@56->28, 256@28->14, 512@14->7; batch 1 and 8; densities 0.05, 0.1, 0.2, 0.3; fp32 and fp16;
layout nchw (nhwc with --layout); --sweep: the quick cases + 512@7 b1 d0.1 fp32 + 64@56 b8 d0.05 fp16 (config sweeps:
`--configs 60 --families conv_tile,conv_csr`), --cases LAYER:B:D:DTYPE,... any cases; --one CASE --family F --config
JSON: one verified launch (`run_one`, for ncu). The default suite (DEFAULT_*) is a subset that fits ~4 minutes of an H200: every layer
at densities 0.05 and 0.1, batch 1 and 8, fp16 and fp32, few configs per family; --quick: 3 cases; --full the whole
cross product. Weights: ops.conv.random_weight (uniform, seeded by the case's name less its dtype).

Per case (`run_case`): X buffers rotated past twice the L2 (at most 8); per family `configs` configs (the known-good
ones, then seeded random feasible ones; conv_pattern only where its code-size constraint allows), each compiled
(threads), VERIFIED (output poisoned, relative Frobenius error against the float64 reference ops.conv.conv_reference
on the GPU, core.problem.TOLERANCE) and timed (device.timing.time_launches: CUDA-graph replay); the fastest is
tuned_us. Then cuDNN in the same process at FP32, TF32, FP16 (BF16 for bf16), NCHW and channels_last, each verified
against the same reference (twice the tolerance of its precision) and timed by a torch CUDA graph
(ops.conv_paths.time_torch). max_rel_err: the tuned kernel's error.

Outputs (`write_outputs`): STEM.json (GPU, driver, CUDA, CuPy, torch, date, options, records, summary), STEM.md,
STEM.png (+ a table "Best config per family" per case: best_by_family). Summary: geomean speed-up over cuDNN FP32
(same layout) at density 0.1 (target >= 2x), and over the best
cuDNN precision of the same dtype (fp32 problems: min(FP32, TF32); fp16: FP16; either memory format) at density 0.05
(target >= 1x); per dtype too.
"""
from __future__ import annotations

import json
import math
import random
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core.outputs import write_doc
from ..core.problem import DTYPES, TOLERANCE, storage
from ..errors import CandidateError, UserError
from . import conv as C
from . import conv_paths as P

LAYERS = (("64@56", 64, 56, 1), ("128@28", 128, 28, 1), ("256@14", 256, 14, 1), ("512@7", 512, 7, 1),
          ("128@56s2", 128, 56, 2), ("256@28s2", 256, 28, 2), ("512@14s2", 512, 14, 2))
DENSITIES = (0.05, 0.1, 0.2, 0.3)
BATCHES = (1, 8)
BENCH_DTYPES = ("fp32", "fp16")
DEFAULT_DENSITIES = (0.05, 0.1)
QUICK = (("64@56", 1, 0.1, "fp32"), ("128@28", 8, 0.05, "fp16"), ("256@28s2", 1, 0.1, "fp32"))
# --sweep: the quick cases plus the smallest image at batch 1 and the largest at batch 8 (config sweeps, profiling)
SWEEP = QUICK + (("512@7", 1, 0.1, "fp32"), ("64@56", 8, 0.05, "fp16"))


def parse_cases(text: str, layout: str = "nchw") -> list[dict]:
    """--cases 'LAYER:BATCH:DENSITY:DTYPE,...' (e.g. '64@56:1:0.1:fp32,512@7:1:0.1:fp32'; LAYER one of LAYERS) as
    suite cases; one-line UserError for anything malformed."""
    by = {name: (c, hw, s) for name, c, hw, s in LAYERS}
    out = []
    for item in (x.strip() for x in str(text).split(",") if x.strip()):
        parts = item.split(":")
        try:
            name, b, d, t = parts
            b, d = int(b), float(d)
        except ValueError:
            raise UserError(f"malformed conv case {item!r}: expected LAYER:BATCH:DENSITY:DTYPE, e.g. 64@56:1:0.1:fp32")
        if name not in by:
            raise UserError(f"unknown conv layer {name!r}: choose from {', '.join(by)}")
        if b < 1 or not 0 < d <= 1 or t not in C.CONV_DTYPES:
            raise UserError(f"conv case {item!r}: batch >= 1, density in (0, 1], dtype one of {', '.join(C.CONV_DTYPES)}")
        c, hw, st = by[name]
        out.append({"name": f"{name}-b{b}-d{d:g}-{t}-{layout}", "layer": name, "c": c, "hw": hw, "stride": st,
                    "batch": b, "density": d, "dtype": t, "layout": layout})
    if not out:
        raise UserError("--cases names no case")
    return out


def suite_cases(quick=False, full=False, dtypes=BENCH_DTYPES, layout="nchw", sweep=False) -> list[dict]:
    by = {name: (c, hw, s) for name, c, hw, s in LAYERS}
    if quick or sweep:
        sel = [(n, b, d, t) for n, b, d, t in (SWEEP if sweep else QUICK) if t in dtypes]
    else:
        dens = DENSITIES if full else DEFAULT_DENSITIES
        sel = [(n, b, d, t) for t in dtypes for d in dens for b in BATCHES for n, *_ in LAYERS]
    out = []
    for name, b, d, t in sel:
        c, hw, s = by[name]
        out.append({"name": f"{name}-b{b}-d{d:g}-{t}-{layout}", "layer": name, "c": c, "hw": hw, "stride": s,
                    "batch": b, "density": d, "dtype": t, "layout": layout})
    return out


def _tile_prior(c: dict) -> bool:
    """conv_tile configs worth a sweep's sample (bench/drafts/conv3x3-v2.md): >= 4 accumulators a thread (the entry
    load and address amortised over >= 4 FMAs), 128-512 threads, >= 16 channels a block (the staging amortised)."""
    nt = (c["th"] // c["rpt"]) * (c["tw"] // c["ppt"]) * c["cot"]
    return c["rpt"] * c["ppt"] >= 4 and 128 <= nt <= 512 and c["cot"] >= 16


PRIORS = {"conv_tile": _tile_prior}


def sample_configs(family: str, dtype: str, env: dict, k: int, seed: int = 0) -> list[dict]:
    """The known-good configs, then seeded random feasible ones (where the family has a prior, 3/4 of them from the
    configs it favours)."""
    space = C.get_conv_space(family)
    out = space.defaults(dtype, env)
    if len(out) < k:
        # the whole space shuffled, then checked lazily: conv_tile has ~600 k configs, ~15 % feasible (checking all of
        # them costs ~4 s a case; stopping once enough are found, ~1.5 s)
        cands = list(space.enumerate(dtype))
        rng = random.Random(seed + zlib.crc32(family.encode()))
        rng.shuffle(cands)
        prior = PRIORS.get(family)
        want = (k - len(out)) * 3 // 4 if prior is not None else 0
        seen, liked = [], []
        for c in cands:
            if space.check(c, env) is not None:
                continue
            seen.append(c)
            if want and prior(c) and c not in out:
                liked.append(c)
            if len(liked) >= want and len(seen) >= k:
                break
        out += liked[:want]
        out += [c for c in seen if c not in out][:k - len(out)]
    return out[:k]


def _torch_meta() -> dict:
    try:
        import torch  # noqa: PLC0415
        return {"torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}
    except ImportError:
        return {"torch": None}


def run_case(case: dict, configs: int = 4, seed: int = 0, log=print, families=None) -> dict:
    from ..device.gpu import cupy, gpu_info  # noqa: PLC0415
    from ..device.timing import n_buffers, time_launches  # noqa: PLC0415
    from ..device.verify import poison, rel_error  # noqa: PLC0415
    cp = cupy()
    info = gpu_info()
    g = C.check_geometry(case["c"], case["c"], case["hw"], case["hw"], case["batch"], case["stride"], case["layout"])
    dtype = case["dtype"]
    wc = C.random_weight(g.cout, g.cin, case["density"], dtype, "uniform",
                         seed + zlib.crc32(case["name"].replace(dtype, "").encode()) % 2**31)
    env = C.conv_env(g, wc.nnz, dtype)
    rng = cp.random.default_rng(seed + 7)
    es = np.dtype(DTYPES[dtype]).itemsize
    nbuf = min(8, n_buffers(int(np.prod(g.x_shape)) * es, info.l2_bytes))
    xs = [storage(rng.standard_normal(g.x_shape, dtype=np.float32), dtype) for _ in range(nbuf)]
    xv = storage(rng.standard_normal(g.x_shape, dtype=np.float32), dtype)
    ref = C.conv_reference(wc, xv, g, xp=cp)
    y = cp.empty(g.y_shape, dtype=DTYPES[dtype])
    rec = {**case, "nnz": int(wc.nnz), "flops": C.flops(wc.nnz, g), "dense_flops": C.dense_flops(g),
           "min_bytes": C.min_bytes(wc.nnz, g, dtype), "tried": [], "failed": {}}
    limits = info.limits()
    todo = [(f, c) for f in (families or C.conv_families()) for c in sample_configs(f, dtype, env, configs, seed)]

    def build(fc):
        try:
            return C.build_conv(wc, g, fc[0], fc[1], dtype, limits)
        except (CandidateError, UserError) as exc:
            return exc
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=8) as ex:
        built = list(ex.map(build, todo))
    rec["compile_s"] = round(time.time() - t0, 2)
    best = None
    for (fam, cfg), kern in zip(todo, built):
        if isinstance(kern, Exception):
            rec["failed"][fam] = rec["failed"].get(fam, 0) + 1
            continue
        try:
            poison(y)
            kern(xv, y)
            cp.cuda.get_current_stream().synchronize()
            err = rel_error(y, ref)
            if not err <= TOLERANCE[dtype]:
                raise RuntimeError(f"rel err {err:.3g}")
            t = time_launches([lambda x=x: kern(x, y) for x in xs]).median_us
        except Exception as exc:  # noqa: BLE001 - a config that fails is counted, never timed
            rec["failed"][fam] = rec["failed"].get(fam, 0) + 1
            log(f"  {case['name']} {fam} {cfg}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        rec["tried"].append({"family": fam, "config": cfg, "us": t, "rel_err": err})
        if best is None or t < best["us"]:
            best = rec["tried"][-1]
    if best is not None:
        rec.update(family=best["family"], config=best["config"], tuned_us=best["us"], max_rel_err=best["rel_err"])
    rec["best_by_family"] = best_by_family(rec)
    # cuDNN, same process
    try:
        torch = P.torch_module()
        from .conv import as_float  # noqa: PLC0415
        xf = torch.as_tensor(as_float(xv).astype(np.float32), device="cuda")
        if g.layout == "nhwc":
            xf = xf.permute(0, 3, 1, 2)
        for memory in ("nchw", "channels_last"):
            for math_ in P.baseline_maths(dtype):
                key = f"cudnn_{math_}_{memory}"
                try:
                    path = P.CudnnConv(wc, g, math_, memory)
                    xin = [path.input(xf)] + [path.input(torch.randn_like(xf)) for _ in range(nbuf - 1)]
                    yt = path(xin[0]).double()
                    if g.layout == "nhwc":
                        yt = yt.permute(0, 2, 3, 1)
                    r = torch.as_tensor(ref, device="cuda")
                    err = float((yt - r).norm() / r.norm())
                    tol = 2 * max(TOLERANCE.get(math_, 2e-3), TOLERANCE[dtype])
                    if not err <= tol:
                        raise RuntimeError(f"rel err {err:.3g} > {tol:g}")
                    rec[f"{key}_us"] = P.time_torch([lambda xx=xx: path(xx) for xx in xin])
                    rec[f"{key}_err"] = err
                except Exception as exc:  # noqa: BLE001
                    rec[f"{key}_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except UserError as exc:
        rec["cudnn_error"] = str(exc)
    return rec


def best_by_family(rec: dict) -> dict:
    """{family: {us, config, rel_err, verified (configs timed), failed}} of one case's record."""
    out: dict = {}
    for t in rec.get("tried", []):
        b = out.setdefault(t["family"], {"us": None, "config": None, "rel_err": None, "verified": 0})
        b["verified"] += 1
        if b["us"] is None or t["us"] < b["us"]:
            b.update(us=t["us"], config=t["config"], rel_err=t["rel_err"])
    for fam, n in rec.get("failed", {}).items():
        out.setdefault(fam, {"us": None, "config": None, "rel_err": None, "verified": 0})["failed"] = n
    return out


def family_lines(doc: dict) -> list[str]:
    """Markdown: per case, each family's best verified config."""
    lines = ["", "## Best config per family", "", "| case | family | best us | verified / failed | rel err | config |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in doc["records"]:
        for fam, b in sorted((r.get("best_by_family") or {}).items(), key=lambda kv: kv[1]["us"] or 1e30):
            us = "-" if b["us"] is None else f"{b['us']:.2f}"
            err = "-" if b["rel_err"] is None else f"{b['rel_err']:.1e}"
            lines.append(f"| {r['name']} | {fam} | {us} | {b['verified']} / {b.get('failed', 0)} | {err} | "
                         f"`{json.dumps(b['config'], sort_keys=True)}` |")
    return lines


def run_one(case: dict, family: str, config: dict, launches: int = 1, seed: int = 0) -> dict:
    """ONE config of one case built, launched `launches` times (the first verified against the reference), for a
    profiler: `ncu --set full -k regex:conv3x3 --launch-count 1 python3 bench/probe.py conv --one ...` profiles the
    verified launch (the kernel is conv3x3_kernel; the reference's and poison's kernels have other names)."""
    from ..device.gpu import cupy, gpu_info  # noqa: PLC0415
    from ..device.verify import poison, rel_error  # noqa: PLC0415
    cp = cupy()
    g = C.check_geometry(case["c"], case["c"], case["hw"], case["hw"], case["batch"], case["stride"], case["layout"])
    dtype = case["dtype"]
    wc = C.random_weight(g.cout, g.cin, case["density"], dtype, "uniform",
                         seed + zlib.crc32(case["name"].replace(dtype, "").encode()) % 2**31)
    kern = C.build_conv(wc, g, family, config, dtype, gpu_info().limits())
    x = storage(cp.random.default_rng(seed + 7).standard_normal(g.x_shape, dtype=np.float32), dtype)
    y = cp.empty(g.y_shape, dtype=DTYPES[dtype])
    poison(y)
    cp.cuda.get_current_stream().synchronize()
    for _ in range(max(1, launches)):
        kern(x, y)
    cp.cuda.get_current_stream().synchronize()
    err = rel_error(y, C.conv_reference(wc, x, g, xp=cp))
    return {"case": case["name"], "family": family, "config": kern.config, "nnz": int(wc.nnz), "grid": kern.plan.grid,
            "block": kern.plan.block, "rel_err": err, "ok": bool(err <= TOLERANCE[dtype]), "launches": launches}


def _geo(xs):
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def speedups(r: dict) -> dict:
    t = r.get("tuned_us")
    if not t:
        return {}
    mem = "channels_last" if r["layout"] == "nhwc" else "nchw"
    fp32 = r.get(f"cudnn_fp32_{mem}_us")
    same = [r.get(f"cudnn_{m}_{mm}_us") for mm in ("nchw", "channels_last")
            for m in (("fp32", "tf32") if r["dtype"] == "fp32" else (r["dtype"],))]
    best = min([x for x in same if x], default=None)
    return {"vs_cudnn_fp32": fp32 / t if fp32 else None, "vs_best_same_dtype": best / t if best else None,
            "best_same_dtype_us": best}


def summary(records: list[dict], finished: bool) -> dict:
    out = {"cases": len(records), "finished": finished,
           "errors": sum(1 for r in records if "tuned_us" not in r)}
    for r in records:
        r.update(speedups(r))
    d10 = [r["vs_cudnn_fp32"] for r in records if r["density"] == 0.1 and r.get("vs_cudnn_fp32")]
    d05 = [r["vs_best_same_dtype"] for r in records if r["density"] == 0.05 and r.get("vs_best_same_dtype")]
    out["geomean_vs_cudnn_fp32_d0.1"] = _geo(d10)
    out["geomean_vs_best_cudnn_same_dtype_d0.05"] = _geo(d05)
    out["target_2x_fp32_d0.1_met"] = None if out["geomean_vs_cudnn_fp32_d0.1"] is None else \
        out["geomean_vs_cudnn_fp32_d0.1"] >= 2.0
    out["target_1x_best_d0.05_met"] = None if out["geomean_vs_best_cudnn_same_dtype_d0.05"] is None else \
        out["geomean_vs_best_cudnn_same_dtype_d0.05"] >= 1.0
    for t in BENCH_DTYPES:
        out[f"{t}_geomean_vs_cudnn_fp32_d0.1"] = _geo([r["vs_cudnn_fp32"] for r in records if r["dtype"] == t
                                                       and r["density"] == 0.1 and r.get("vs_cudnn_fp32")])
        out[f"{t}_geomean_vs_best_d0.05"] = _geo([r["vs_best_same_dtype"] for r in records if r["dtype"] == t
                                                  and r["density"] == 0.05 and r.get("vs_best_same_dtype")])
    return out


def markdown(doc: dict) -> list[str]:
    s, m = doc["summary"], doc["meta"]

    def f(x, d=2):
        return "-" if x is None else f"{x:.{d}f}"
    lines = [f"# conv3x3 — {m.get('gpu')}", "",
             f"Driver {m.get('driver')}, CUDA {m.get('cuda')}, CuPy {m.get('cupy')}, torch {m.get('torch')}, "
             f"cuDNN {m.get('cudnn')}; {m.get('date')}. `bench/probe.py conv` (sparse_autotune/ops/conv_bench.py).", "",
             f"**Geomean over cuDNN FP32 at density 0.1: {f(s['geomean_vs_cudnn_fp32_d0.1'])}x** (target >= 2x: "
             f"{'met' if s['target_2x_fp32_d0.1_met'] else 'MISSED' if s['target_2x_fp32_d0.1_met'] is False else '-'})",
             f"**Geomean over the best cuDNN of the same dtype at density 0.05: "
             f"{f(s['geomean_vs_best_cudnn_same_dtype_d0.05'])}x** (target >= 1x: "
             f"{'met' if s['target_1x_best_d0.05_met'] else 'MISSED' if s['target_1x_best_d0.05_met'] is False else '-'})",
             "", "| case | nnz | family | config | tuned us | cuDNN fp32 / tf32 / fp16 nchw | cuDNN fp32 / tf32 / fp16 "
             "channels_last | vs fp32 | vs best same dtype | max rel err |", "| --- | ---: | --- | --- | ---: | --- | "
             "--- | ---: | ---: | ---: |"]
    for r in doc["records"]:
        cud = [" / ".join(f(r.get(f"cudnn_{x}_{mem}_us")) for x in ("fp32", "tf32", "fp16"))
               for mem in ("nchw", "channels_last")]
        lines.append(f"| {r['name']} | {r['nnz']} | {r.get('family', 'none verified')} | "
                     f"`{json.dumps(r.get('config'), sort_keys=True)}` | {f(r.get('tuned_us'))} | {cud[0]} | {cud[1]} | "
                     f"{f(r.get('vs_cudnn_fp32'))} | {f(r.get('vs_best_same_dtype'))} | "
                     f"{'-' if r.get('max_rel_err') is None else format(r['max_rel_err'], '.1e')} |")
    return lines


def write_outputs(doc: dict, out: Path) -> None:
    write_doc(out, doc, markdown(doc) + family_lines(doc), plot)


def plot(doc: dict, path) -> bool:
    """The speed-ups over cuDNN against density into `path`; False where none is drawn (no plot is not fatal)."""
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for t in BENCH_DTYPES:
            rs = [r for r in doc["records"] if r["dtype"] == t and r.get("vs_cudnn_fp32")]
            ax.scatter([r["density"] for r in rs], [r["vs_cudnn_fp32"] for r in rs], label=f"{t}: vs cuDNN FP32")
            ax.scatter([r["density"] for r in rs], [r.get("vs_best_same_dtype") or np.nan for r in rs], marker="x",
                       label=f"{t}: vs best cuDNN same dtype")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("density")
        ax.set_ylabel("speed-up (cuDNN time / tuned time)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title(f"conv3x3, ResNet-50 3x3 layers — {doc['meta'].get('gpu')}")
        fig.tight_layout()
        fig.savefig(str(path), dpi=110)
        plt.close(fig)
        return True
    except Exception:  # noqa: BLE001 - no plot is not fatal
        return False


def run_suite(cases: list[dict], out: Path, meta: dict, configs: int = 4, budget: float = 0, seed: int = 0,
              log=print, families=None) -> dict:
    t0 = time.time()
    records: list[dict] = []
    doc = {"meta": {**meta, **_torch_meta()}, "options": {"configs": configs, "budget": budget, "seed": seed,
                                                       "families": list(families) if families else None},
           "records": records, "summary": {}}
    finished = True
    for i, case in enumerate(cases):
        if budget and time.time() - t0 > budget:
            finished = False
            log(f"budget of {budget:.0f} s reached: {len(cases) - i} cases left")
            break
        log(f"[{i + 1}/{len(cases)}] {case['name']}")
        try:
            records.append(run_case(case, configs, seed, log, families))
        except Exception as exc:  # noqa: BLE001 - one case's failure is recorded, the others go on
            records.append({**case, "nnz": 0, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
        doc["summary"] = summary(records, False)
        write_outputs(doc, out)
    doc["summary"] = summary(records, finished)
    write_outputs(doc, out)
    return doc


__all__ = ["LAYERS", "SWEEP", "best_by_family", "parse_cases", "run_case", "run_one", "run_suite", "sample_configs",
           "suite_cases", "summary", "markdown"]
