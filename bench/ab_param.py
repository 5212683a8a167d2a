"""Paired A/B of one parameter of one family on the GPU (device only): does value B beat value A?

    python3 bench/ab_param.py --family tc_gather --param prefetch --a 0 --b 1 \
        --case 512x2048:256:0.1:fp16 --case 3072x768:2048:0.05:fp16 --pairs 12 --out $OUT/ab-prefetch

For each case (MxK:N:density:dtype[:pattern], the suite's matrix, seed 0) it samples --pairs feasible configs of the
family with the parameter at A (seeded), makes each one's twin at B, verifies both against float64 and times both
the tuner's way (CUDA-graph replay, B rotated past L2, median of 20), A then B then A again, so that the spread of
A's two timings shows the noise. Writes OUT.json (every pair) and OUT.md (per case: geomean of B/A, best A, best B,
noise) with the GPU, driver, CUDA and CuPy versions.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from sparse_autotune.tuning.suite import geomean
from sparse_autotune.errors import CandidateError, UserError, exit_status
from sparse_autotune.core.problem import Problem, parse_shape


def parse_case(text: str) -> tuple:
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise UserError(f"case {text!r}: expected MxK:N:density:dtype[:pattern]")
    m, k = parse_shape(parts[0])
    return m, k, int(parts[1]), float(parts[2]), parts[3], parts[4] if len(parts) == 5 else "uniform"


def value(text: str):
    """A parameter value as the space declares it: int, float, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", required=True)
    ap.add_argument("--param", required=True)
    ap.add_argument("--a", required=True, help="the baseline value")
    ap.add_argument("--b", required=True, help="the value tried against it")
    ap.add_argument("--case", action="append", required=True, help="MxK:N:density:dtype[:pattern], repeatable")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--out", required=True, help="output stem: OUT.json and OUT.md")
    a = ap.parse_args(argv)
    cases = [parse_case(c) for c in a.case]
    va, vb = value(a.a), value(a.b)
    from sparse_autotune.device.context import GpuProblem
    from sparse_autotune.device.gpu import gpu_info
    from sparse_autotune.device.kernel import build_kernel
    from sparse_autotune.core.space import get_space, problem_env
    from sparse_autotune.device.timing import time_launches
    from sparse_autotune.device.verify import check
    space = get_space(a.family)
    if a.param not in {p.name for p in space.params}:
        raise UserError(f"{a.family} has no parameter {a.param!r}")
    info = gpu_info()
    v = info.versions()
    rows, summary = [], []
    for (m, k, n, d, dt, pat) in cases:
        p = Problem.random(m, k, n, d, dt, pat, seed=0)
        ctx = GpuProblem(p, info)
        env = problem_env(m, k, n, p.nnz, dt)
        feas = [c for c in space.feasible(dt, env, info.limits()) if c.get(a.param) == va]
        feas = [c for c in feas if space.check({**c, a.param: vb}, env, info.limits()) is None]
        picks = random.Random(0).sample(feas, min(a.pairs, len(feas)))
        print(f"== {m}x{k} N={n} d={d} {dt} {pat}: {len(picks)} pairs of {len(feas)}", flush=True)

        def timed(cfg):
            kern = build_kernel(ctx.a_dev, a.family, cfg, dt)
            b, ref = ctx.fresh_check()
            check(lambda: kern(b, ctx.c), ctx.c, ref, dt)
            return time_launches([lambda bb=bb: kern(bb, ctx.c) for bb in ctx.b_bufs]).median_us

        case_rows = []
        for cfg in picks:
            twin = {**cfg, a.param: vb}
            try:
                ta1, tb, ta2 = timed(cfg), timed(twin), timed(cfg)
            except CandidateError as exc:
                print(f"   {json.dumps(cfg, sort_keys=True)}: {exc}", flush=True)
                case_rows.append({"config": cfg, "error": str(exc)})
                continue
            ta = min(ta1, ta2)
            row = {"config": cfg, "a_us": ta, "a_again_us": max(ta1, ta2), "b_us": tb, "b_over_a": tb / ta,
                   "noise": abs(ta1 - ta2) / ta}
            case_rows.append(row)
            print(f"   A {ta:8.2f} us  B {tb:8.2f} us  B/A {tb / ta:5.2f}  (A twice: {ta1:.2f}, {ta2:.2f})", flush=True)
        ok = [r for r in case_rows if "error" not in r]
        summary.append({"case": {"M": m, "K": k, "N": n, "density": d, "dtype": dt, "pattern": pat},
                        "pairs": len(ok), "errors": len(case_rows) - len(ok),
                        "geomean_b_over_a": geomean(r["b_over_a"] for r in ok),
                        "best_a_us": min((r["a_us"] for r in ok), default=None),
                        "best_b_us": min((r["b_us"] for r in ok), default=None),
                        "median_noise": sorted(r["noise"] for r in ok)[len(ok) // 2] if ok else None})
        rows.append({"case": summary[-1]["case"], "pairs": case_rows})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"family": a.family, "param": a.param, "a": va, "b": vb, "gpu": v["gpu"], "driver": v["driver"],
            "cuda": v["cuda"], "cupy": v["cupy"]}
    out.with_suffix(".json").write_text(json.dumps({**meta, "summary": summary, "cases": rows}, indent=1))
    f = lambda x, nd=2: "n/a" if x is None else f"{x:.{nd}f}"  # noqa: E731
    lines = [f"# {a.family}: {a.param} = {vb} (B) against {va} (A)", "",
             f"{v['gpu']}, driver {v['driver']}, CUDA {v['cuda']}, CuPy {v['cupy']}. Paired configs (the same but for "
             f"{a.param}), verified, timed A, B, A (CUDA-graph replay, median of 20); B/A < 1: B is faster.", "",
             "| case | pairs | geomean B/A | best A us | best B us | median noise (A twice) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        c = s["case"]
        lines.append(f"| {c['M']}x{c['K']} N={c['N']} d={c['density']} {c['dtype']} {c['pattern']} | {s['pairs']} | "
                     f"{f(s['geomean_b_over_a'])} | {f(s['best_a_us'])} | {f(s['best_b_us'])} | "
                     f"{f(s['median_noise'], 3)} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(exit_status("ab_param", main))
