"""One tuning run: problem -> spaces -> Optuna search (render, compile, verify, time) -> baselines -> DB."""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from dataclasses import dataclass

from . import __version__
from .errors import CandidateError, UserError
from .problem import Problem
from .search import SAMPLERS, load_study, run_search, summarize
from .space import problem_env, select_spaces
from .tuningdb import Record, TuningDB


@dataclass
class TuneOptions:
    trials: int = 100
    timeout: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    db: str | None = None
    progress: bool = True
    families: tuple[str, ...] | None = None
    compile_workers: int = min(8, os.cpu_count() or 1)  # candidates compiled in parallel while others are timed


def study_name(problem: Problem, gpu_name: str) -> str:
    return f"{problem.key()}|{gpu_name}|{problem.fingerprint()}"


def _index_bytes(cfg: dict | None) -> int:
    return 2 if cfg and cfg.get("index_bits") == 16 else 4


def tune(problem: Problem, opts: TuneOptions, log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Tune one problem on the current GPU, store the best verified config, return the report dict."""
    if opts.trials <= 0:
        raise UserError(f"--trials must be positive (got {opts.trials})")
    if opts.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {opts.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    # the database is checked before the GPU is touched, and nothing is written to it before tuning starts
    from .gpu import gpu_info  # noqa: PLC0415
    info = gpu_info()
    db = TuningDB(opts.db, create=True)
    from .ceilings import ceilings, floor_us  # noqa: PLC0415
    from .context import GpuProblem  # noqa: PLC0415
    from .kernels import build_kernel  # noqa: PLC0415
    from .timing import time_launches  # noqa: PLC0415
    from .verify import check  # noqa: PLC0415

    t_start = time.time()
    spaces = select_spaces(opts.families)
    env = problem_env(problem.m, problem.k, problem.n, problem.nnz, problem.dtype)
    limits = info.limits()
    log(f"problem {problem.key()}: nnz={problem.nnz}, {problem.flops / 1e6:.1f} MFLOP; GPU {info.name} "
        f"(sm_{info.cc.replace('.', '')}); database {db.label}")
    ctx = GpuProblem(problem, info, seed=opts.seed)

    def evaluate(family: str, cfg: dict):
        kern = build_kernel(ctx.a_dev, family, cfg, problem.dtype)
        b, ref = ctx.fresh_check()
        try:
            err = check(lambda: kern(b, ctx.c), ctx.c, ref, problem.dtype)
        except CandidateError as exc:
            if exc.stage == "launch":
                _assert_context_alive()
            raise
        try:
            t = time_launches([lambda bb=bb: kern(bb, ctx.c) for bb in ctx.b_bufs])
        except Exception as exc:  # noqa: BLE001
            _assert_context_alive()
            raise CandidateError("time", str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        return t.median_us, {"rel_err": err, "spread": t.spread, "timing": t.method,
                             "gflops": problem.flops / (t.median_us * 1e-6) / 1e9}

    bar = None
    if opts.progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=opts.trials, desc="tuning", unit="trial", file=sys.stderr, dynamic_ncols=True)

    def on_trial(frozen, counted, best):
        if bar is None:
            return
        bar.n = min(counted, opts.trials)
        state = "ok" if frozen.value is not None else "failed"
        bar.set_postfix_str(f"best {best:.2f} us" if best is not None else state)
        bar.refresh()

    name = study_name(problem, info.name)
    interrupted = False
    try:
        res = run_search(db.url, name, spaces, problem.dtype, env, limits, evaluate, opts.trials, opts.timeout,
                         opts.sampler, opts.seed, on_trial,
                         prepare=lambda fam, cfg: build_kernel(ctx.a_dev, fam, cfg, problem.dtype),
                         batch=max(1, opts.compile_workers))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: keeping what was tuned so far")
        res = summarize(load_study(db.url, name), stopped="interrupted")
    finally:
        if bar is not None:
            bar.close()
    if res.best_config is None:
        if interrupted:
            raise KeyboardInterrupt  # nothing to store: the caller stops (tune-model keeps what it had)
        raise UserError(f"no variant passed verification in {res.complete + res.failed} trials "
                        f"({res.failed} failed): nothing stored")

    # the winner and the baselines, verified and timed again the same way in this process
    from .baselines import time_baselines  # noqa: PLC0415
    kern = build_kernel(ctx.a_dev, res.best_family, res.best_config, problem.dtype)
    b, ref = ctx.fresh_check()
    err = check(lambda: kern(b, ctx.c), ctx.c, ref, problem.dtype)
    t = time_launches([lambda bb=bb: kern(bb, ctx.c) for bb in ctx.b_bufs])
    base = time_baselines(ctx, log)
    ceil = ceilings()
    floor = floor_us(problem, ceil, _index_bytes(res.best_config))
    gflops = problem.flops / (t.median_us * 1e-6) / 1e9
    v = info.versions()
    rec = Record(
        gpu_name=info.name, gpu_cc=info.cc, m=problem.m, k=problem.k, n=problem.n, density=problem.density,
        dtype=problem.dtype, pattern=problem.pattern, family=res.best_family,
        config_json=json.dumps(res.best_config, sort_keys=True), time_us=t.median_us, gflops=gflops,
        cusparse_us=base["cusparse_us"], cublas_fp32_us=base["cublas_fp32_us"],
        cublas_tf32_us=base["cublas_tf32_us"], cublas_fp16_us=base["cublas_fp16_us"], floor_us=floor,
        max_rel_err=err, trials=res.complete + res.failed, matrix_hash=problem.fingerprint(), study_name=name,
        package_version=__version__, cuda_version=v["cuda"], driver_version=v["driver"], cupy_version=v["cupy"],
        created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
    db.store(rec)
    db.dispose()

    def ratio(x):
        return None if x is None else x / t.median_us

    return {
        "problem": {"m": problem.m, "k": problem.k, "n": problem.n, "density": problem.density,
                    "nnz": problem.nnz, "dtype": problem.dtype, "pattern": problem.pattern,
                    "matrix_hash": problem.fingerprint(), "seed": problem.seed},
        "gpu": v["gpu"], "cc": v["cc"], "driver": v["driver"], "cuda": v["cuda"], "cupy": v["cupy"],
        "package_version": __version__,
        "best": {"family": res.best_family, "config": res.best_config, "time_us": t.median_us,
                 "gflops": gflops, "max_rel_err": err, "timing_spread": t.spread, "timing": t.method,
                 "search_time_us": res.best_value},
        "baselines": {k: base[k] for k in ("cusparse_us", "cusparse_alg", "cublas_fp32_us", "cublas_tf32_us",
                                          "cublas_fp16_us")},
        "baseline_errors": base["baseline_errors"], "baseline_timing": base.get("timing", {}),
        "speedup": {"vs_cusparse": ratio(base["cusparse_us"]), "vs_cublas_fp32": ratio(base["cublas_fp32_us"]),
                    "vs_cublas_tf32": ratio(base["cublas_tf32_us"]), "vs_cublas_fp16": ratio(base["cublas_fp16_us"])},
        "floor_us": floor, "ceilings": ceil,
        "trials": {"budget": opts.trials, "complete": res.complete, "failed": res.failed, "pruned": res.pruned,
                   "new": res.new_trials, "stopped": "interrupted" if interrupted else res.stopped,
                   "sampler": opts.sampler},
        "study": name, "db": db.label, "record_id": rec.id, "record_is_best": rec.is_best,
        "elapsed_s": time.time() - t_start,
    }


def _assert_context_alive():
    """After a failed launch: if the CUDA context is poisoned (illegal address...), stop the whole run."""
    from .gpu import cupy  # noqa: PLC0415
    cp = cupy()
    try:
        cp.cuda.runtime.deviceSynchronize()
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"a kernel corrupted the CUDA context ({str(exc).splitlines()[0]}); "
                        "the run stops, the trials so far are kept in the study") from None
