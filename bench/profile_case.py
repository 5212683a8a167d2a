"""Run the tuned kernel of one suite case a few times, for Nsight Compute to profile (device only).

    ncu --set full -k regex:spmm_kernel -s 2 -c 1 -o OUT python3 bench/profile_case.py \
        --shape 11008x4096 --n 64 --density 0.3 --dtype fp32 --pattern uniform --db tuning.sqlite

The matrix is the suite's (seed 0); the config is the database's exact best record for this GPU (an error if there
is none), or --family and --config. It prints the family, the config and the stored time, then launches the kernel `--launches` times.
"""
from __future__ import annotations

import argparse
import json
import sys

from sparse_autotune.errors import UserError, exit_status
from sparse_autotune.core.problem import Problem, parse_shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--density", type=float, required=True)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--pattern", default="uniform")
    ap.add_argument("--db", help="tuning database holding the case's best record")
    ap.add_argument("--family", help="with --config: profile this config instead of a record")
    ap.add_argument("--config", help="a config as JSON (with --family)")
    ap.add_argument("--launches", type=int, default=5)
    a = ap.parse_args(argv)
    from sparse_autotune.device.gpu import cupy, gpu_info
    from sparse_autotune.device.kernel import build_kernel
    from sparse_autotune.store.db import TuningDB
    cp = cupy()
    m, k = parse_shape(a.shape)
    p = Problem.random(m, k, a.n, a.density, a.dtype, a.pattern, seed=0)
    if a.family and a.config:
        family, cfg, stored = a.family, json.loads(a.config), None
    elif a.db:
        db = TuningDB(a.db, create=False, readonly=True)
        rec = db.best(m, k, a.n, p.density, a.dtype, gpu=gpu_info().name, pattern=a.pattern)
        db.dispose()
        if rec is None:
            raise UserError(f"no record for {a.shape} N={a.n} d={a.density} {a.dtype} {a.pattern} in {a.db}")
        family, cfg, stored = rec.family, json.loads(rec.config_json), rec.time_us
    else:
        raise UserError("give --db, or --family and --config")
    print(json.dumps({"family": family, "config": cfg, "time_us": stored, "nnz": p.nnz}), flush=True)
    from sparse_autotune.device.context import GpuProblem
    ctx = GpuProblem(p, gpu_info())
    kern = build_kernel(ctx.a_dev, family, cfg, a.dtype)
    for i in range(a.launches):
        kern(ctx.b_bufs[i % len(ctx.b_bufs)], ctx.c)
    cp.cuda.runtime.deviceSynchronize()
    return 0


if __name__ == "__main__":
    sys.exit(exit_status("profile_case", main))
