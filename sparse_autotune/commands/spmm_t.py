"""`tune --op spmm_t` and `lookup --op spmm_t`: C = A^T @ B from the stored A (M x K), B M x N (tuning.spmm_t_tune,
runtime.spmm_t). --shape is A's stored shape, --n B's and C's columns."""
from __future__ import annotations

import json

from ..errors import UserError
from .main import DEFAULT_N, _checked_db, _fmt_us, _fmt_x


def _refused(a, options) -> None:
    for name, given in options:
        if given:
            raise UserError(f"{name} is not an option of --op spmm_t (C = A^T @ B: --shape MxK of A, --density, --n N, "
                            "--dtype; A from --matrix)")


def cmd_tune_spmm_t(a) -> int:
    """The options checked (one line, exit 2, before anything is allocated or written), then tuning.spmm_t_tune."""
    from ..core.problem import check_real_matrix, load_matrix, nnz_of  # noqa: PLC0415
    from ..tuning.search import check_options  # noqa: PLC0415
    from ..tuning.spmm_t_tune import (GpuSpmmTTuner, SpmmTProblem, check_spmm_t_size,  # noqa: PLC0415
                                      split_spmm_t_families)
    from ..tuning.tuner import TuneOptions  # noqa: PLC0415
    _refused(a, (("--k", a.k is not None), ("--layout", a.layout is not None), ("--allow-tf32", a.allow_tf32),
                 ("--storage", a.storage is not None), ("--workers", a.workers != 1)))
    check_options(a.trials, a.sampler, a.timeout)
    families, vendors = split_spmm_t_families(a.families, a.dtype)
    n = DEFAULT_N if a.n is None else a.n
    if a.matrix and (a.shape or a.density is not None):
        raise UserError("give either --matrix or --shape/--density, not both")
    if not a.matrix and (not a.shape or a.density is None):
        raise UserError("tune --op spmm_t needs --shape MxK (A as stored) and --density d (or --matrix FILE)")
    mat = load_matrix(a.matrix) if a.matrix else None
    if mat is not None:
        check_real_matrix(mat, f"matrix file {a.matrix!r}", a.dtype, dense_limit=None)
    (m, k), nnz = (mat.shape, int(mat.nnz)) if mat is not None else (a.shape, nnz_of(*a.shape, a.density))
    check_spmm_t_size(m, k, n, nnz, a.dtype)
    db = _checked_db(a.db)
    from ..device.gpu import gpu_info  # noqa: PLC0415
    info = gpu_info()  # no GPU: one line, exit 2, nothing written, no matrix built
    check_spmm_t_size(m, k, n, nnz, a.dtype, gpu_memory=info.memory_bytes, gpu_name=info.name)
    problem = (SpmmTProblem.from_matrix(mat, n, a.dtype, seed=a.seed) if mat is not None else
               SpmmTProblem.random(m, k, n, a.density, a.dtype, a.pattern, a.seed))
    opts = TuneOptions(trials=a.trials, timeout=a.timeout, sampler=a.sampler, seed=a.seed, db=db,
                       progress=not a.no_progress, families=families, warm_start=not a.cold_start, vendors=vendors)
    tuner = GpuSpmmTTuner(problem, opts)
    report = tuner.finish(tuner.search())
    print(json.dumps(report, indent=2, default=str) if a.json else report_text(report))
    return 0


def report_text(r: dict) -> str:
    p, b, base, s, c = r["problem"], r["best"], r["baselines"], r["speedup"], r["chosen"]
    copy = "  EXPLICIT TRANSPOSE: a second copy of A (A^T's CSR) on the GPU" if b.get("explicit_transpose") else ""
    lines = [
        f"problem   spmm_t C = A^T @ B: A {p['m']}x{p['k']} ({p['pattern']}, density {p['density']:g}, nnz {p['nnz']}) "
        f"as stored, B {p['m']}x{p['n']}, C {p['k']}x{p['n']}, {p['dtype']}",
        f"gpu       {r['gpu']} (cc {r['cc']}), driver {r['driver']}, CUDA {r['cuda']}, CuPy {r['cupy']}",
        f"best      {b['family']} {json.dumps(b['config'], sort_keys=True)}{copy}",
        f"time      {b['time_us']:.2f} us  {b['gflops']:.0f} GFLOP/s  rel err {b['max_rel_err']:.1e}",
        f"floor     {_fmt_us(r['floor_us'])} (max of bytes / copy bandwidth, FLOPs / FMA peak)",
        f"cuSPARSE  {_fmt_us(base['cusparse_us'])} (opA=T, {base.get('cusparse_alg')})  -> {_fmt_x(s['vs_cusparse'])}",
        f"dense     {_fmt_us(base['dense_us'])}  -> {_fmt_x(s['vs_dense'])}  (cuBLAS {p['dtype'].upper()} on A^T dense)",
        f"stored    record {r['record_id']} (op spmm_t) in {r['db']}" + ("" if r["record_is_best"] else
                                                                     " (an earlier record is faster)"),
        f"runs      {c['family']} {json.dumps(c['config'], sort_keys=True)}: {c['runs']}"
        + (f" (copies of A on the GPU: {c['copies_of_a']})" if c.get("explicit_transpose") else ""),
    ]
    return "\n".join(lines)


def cmd_lookup_spmm_t(a) -> int:
    from ..ops.spmm_t import describe, is_transpose  # noqa: PLC0415
    from ..runtime.spmm_t import lookup_spmm_t  # noqa: PLC0415
    _refused(a, (("--k", a.k is not None), ("--layout", a.layout is not None), ("--allow-tf32", a.allow_tf32)))
    (m, k), n = a.shape, (DEFAULT_N if a.n is None else a.n)
    res = lookup_spmm_t(m, k, n, a.density, a.dtype, gpu=a.gpu, db=a.db, fallback=not a.exact)
    if a.json:
        print(json.dumps(None if res is None else {"op": "spmm_t", "explicit_transpose": is_transpose(res.family),
                                                   **res.__dict__}, default=str))
    elif res is None:
        print("no stored spmm_t config for this problem")
    else:
        where = "built-in default (the first known-good config of spmm_t_scatter)" if res.record_id is None else (
            f"record {res.record_id} (op spmm_t) in {res.db}, tuned on {res.gpu} for A {res.key[0]}x{res.key[1]} "
            f"N={res.key[2]} d={res.key[3]:g} {res.key[4]} ({res.time_us:.2f} us)")
        print(f"{res.source}: {res.family} {json.dumps(res.config, sort_keys=True)}\n  from {where}\n"
              f"  runs {describe(res.family, res.config, m, k, a.dtype)}")
    return 0
