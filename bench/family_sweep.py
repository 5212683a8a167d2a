"""Sweep random feasible configs of every family for a few problems; print the best per family. Diagnostic.

Usage: python3 bench/family_sweep.py [samples_per_family] [FILTER_JSON] [CASES_JSON] > sweep.log
FILTER_JSON, e.g. '{"csr_rowsplit": {"rows_per_block": [32, 64], "vec": [4]}}', restricts each named family to
the feasible configs whose parameters take the listed values (all of them, up to the sample count); families
not named are skipped. CASES_JSON: a list of [M, K, N, density, dtype].
"""
import json
import random
import sys
import time

from sparse_autotune.device.context import GpuProblem
from sparse_autotune.errors import CandidateError
from sparse_autotune.device.gpu import gpu_info
from sparse_autotune.device.kernel import build_kernel
from sparse_autotune.core.problem import Problem
from sparse_autotune.core.space import load_spaces, problem_env
from sparse_autotune.device.timing import time_launches
from sparse_autotune.device.verify import check

SAMPLES = int(sys.argv[1]) if len(sys.argv) > 1 else 60
FILTER = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
CASES = [tuple(c) for c in json.loads(sys.argv[3])] if len(sys.argv) > 3 else [
    (512, 2048, 256, 0.1, "fp32"), (512, 2048, 256, 0.1, "fp16"), (768, 3072, 512, 0.05, "fp32")]
info = gpu_info()
for (m, k, n, d, dt) in CASES:
    p = Problem.random(m, k, n, d, dt)
    ctx = GpuProblem(p, info)
    env = problem_env(m, k, n, p.nnz, dt)
    print(f"== {m}x{k} N={n} d={d} {dt}", flush=True)
    for space in load_spaces():
        feas = list(space.feasible(dt, env, info.limits()))
        rng = random.Random(0)
        if FILTER is not None:
            if space.family not in FILTER:
                continue
            want = FILTER[space.family]
            feas = [c for c in feas if all(c.get(k) in v for k, v in want.items())]
            cfgs = rng.sample(feas, min(SAMPLES, len(feas)))
        else:
            cfgs = space.defaults(dt, env, info.limits()) + rng.sample(feas, min(SAMPLES, len(feas)))
        res = []
        t0 = time.time()
        for cfg in cfgs:
            try:
                kern = build_kernel(ctx.a_dev, space.family, cfg, dt)
                b, ref = ctx.fresh_check()
                check(lambda: kern(b, ctx.c), ctx.c, ref, dt)
                t = time_launches([lambda bb=bb: kern(bb, ctx.c) for bb in ctx.b_bufs])
                res.append((t.median_us, cfg))
            except CandidateError as exc:
                print("  FAIL", space.family, cfg, exc, flush=True)
        res.sort(key=lambda x: x[0])
        print(f"  {space.family}: {len(res)} ok in {time.time() - t0:.0f}s; defaults "
              f"{[round(r[0], 2) for r in res if r[1] in cfgs[:3]][:3]}", flush=True)
        for t, cfg in res[:4]:
            print(f"    {t:7.2f} us  {json.dumps(cfg, sort_keys=True)}", flush=True)
