"""Command line: `sparse-autotune tune|tune-model|report|lookup|bench|spaces|db|worker|status`. Bad input: one line
on stderr, exit status 2."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from .. import __version__
from ..errors import UserError, exit_status
from ..core.problem import DEFAULT_N, PATTERNS, Problem, check_density, check_dtype, check_n, load_matrix, parse_shape
from ..commands.db import add_db_parser, cmd_db
from ..tuning.search import SAMPLERS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the usage too)
        raise UserError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparse-autotune", description="Autotuned SpMM kernels for pruned layers on NVIDIA GPUs.")
    p.add_argument("--version", action="version", version=f"sparse-autotune {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser, required=True)

    t = sub.add_parser("tune", help="tune SpMM for one sparse matrix and store the winner",
                       description="Tune C = A @ B for a sparse A (M x K) and dense B (K x N) on this GPU.")
    t.add_argument("--shape", help="M x K of the sparse matrix A, e.g. 512x2048")
    t.add_argument("--density", type=str, help="fraction of nonzeros in A, in (0, 1]")
    t.add_argument("--n", type=str, default=str(DEFAULT_N), help=f"columns N of the dense B (default {DEFAULT_N})")
    t.add_argument("--dtype", default="fp32", help="fp32 or fp16 (fp16 storage, fp32 accumulation); default fp32")
    t.add_argument("--pattern", default="uniform", help=f"random pattern: {', '.join(PATTERNS)} (default uniform)")
    t.add_argument("--matrix", help="tune this matrix (.npz from scipy.sparse.save_npz, or .mtx); replaces --shape/--density")
    t.add_argument("--trials", type=int, default=100, help="trial budget of the study, over all runs (default 100)")
    t.add_argument("--timeout", type=float, default=None, help="stop searching after this many seconds")
    t.add_argument("--sampler", default="tpe", help=f"{', '.join(SAMPLERS)} (default tpe)")
    t.add_argument("--seed", type=int, default=0, help="seed of the random matrix, inputs and sampler (default 0)")
    t.add_argument("--families", help="comma-separated kernel families to search (default: the enabled ones; "
                                      "see `sparse-autotune spaces`)")
    t.add_argument("--db", help="tuning database path or SQLAlchemy URL (default $SPARSE_AUTOTUNE_DB or the user cache)")
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--cold-start", action="store_true", help="do not try the winners of the nearest problems tuned "
                                                             "on this GPU model first (the warm start)")
    _add_scaleout_args(t)

    lk = sub.add_parser("lookup", help="print the best stored config for a problem")
    lk.add_argument("--shape", required=True)
    lk.add_argument("--density", required=True)
    lk.add_argument("--n", default=str(DEFAULT_N))
    lk.add_argument("--dtype", default="fp32")
    lk.add_argument("--gpu", default=None, help="GPU name (default: this machine's GPU, or any)")
    lk.add_argument("--db", help="tuning database searched first (then the databases shipped with the package)")
    lk.add_argument("--exact", action="store_true", help="exact key only: no nearest / same-arch / default")
    lk.add_argument("--json", action="store_true")

    bn = sub.add_parser("bench", help="run a benchmark suite (tune every case, time baselines, write results)")
    bn.add_argument("--suite", default="quick", help="dl (the full suite) or quick (a small subset); default quick")
    bn.add_argument("--trials", type=int, default=40, help="trial budget per case (default 40)")
    bn.add_argument("--out", default="bench/results", help="output folder (default bench/results)")
    bn.add_argument("--db", help="tuning database (default as for tune)")
    bn.add_argument("--budget", type=float, default=None, help="start no new case after this many seconds (a rerun "
                                                               "goes on with the cases left)")
    _add_scaleout_args(bn)

    wk = sub.add_parser("worker", help="join the workers of a shared storage: tune queued problems until none is left",
                        description="Claim problems from the queue in --storage and tune them on this GPU.")
    wk.add_argument("--storage", required=True, help="SQLAlchemy URL of the shared storage, "
                                                     "e.g. postgresql+psycopg://user:password@host:5432/dbname")
    wk.add_argument("--db", help="tuning database that receives the best records (default as for tune)")
    wk.add_argument("--problems", help="only these queue ids (comma-separated)")
    wk.add_argument("--budget", type=float, default=None, help="claim no new problem after this many seconds "
                                                               "(the one in hand is finished)")
    _add_heartbeat_args(wk)

    st = sub.add_parser("status", help="problems done / running / queued and trials per worker in a shared storage")
    st.add_argument("--storage", required=True, help="SQLAlchemy URL of the shared storage")
    st.add_argument("--json", action="store_true")

    tm = sub.add_parser("tune-model", help="tune every Linear / 1x1-conv layer of a checkpoint",
                        description="Tune the layers of a model checkpoint (.safetensors, PyTorch .pt state_dict, or "
                                    ".npz sparse bundle). Layers with the same (shape, density, dtype, N) are tuned "
                                    "once; a rerun resumes.")
    tm.add_argument("checkpoint", help="a .safetensors file, a PyTorch state_dict (.pt/.pth), or an .npz bundle")
    tm.add_argument("--model", help="the model's name in the database (default: the checkpoint's file stem)")
    tm.add_argument("--include", action="append", help="only layers whose name matches these fnmatch patterns "
                                                        "(comma-separated or repeated)")
    tm.add_argument("--exclude", action="append", help="leave out layers whose name matches these patterns")
    tm.add_argument("--prune", choices=["magnitude"], help="prune the weights (else their existing zeros are used)")
    tm.add_argument("--density", help="with --prune: the fraction of weights kept, in (0, 1]")
    tm.add_argument("--prune-scope", default="layer", help="layer (each layer to the density; default) or global "
                                                           "(one magnitude threshold over all selected layers)")
    tm.add_argument("--n", help="comma-separated N values (columns of B) for every layer")
    tm.add_argument("--batch", help="comma-separated batch sizes: N = batch x seq (Linear) or batch x H x W (conv)")
    tm.add_argument("--seq", help="tokens per sequence for Linear layers (N = batch x seq)")
    tm.add_argument("--spatial", action="append", help="PATTERN=HxW: output size of matching 1x1 conv layers "
                                                        "(repeatable)")
    tm.add_argument("--dtype", default="fp32", help="comma-separated: fp32, fp16 (default fp32)")
    tm.add_argument("--trials", type=int, default=60, help="trial budget per distinct problem (default 60)")
    tm.add_argument("--timeout", type=float, default=None, help="search time limit per problem, seconds")
    tm.add_argument("--budget", type=float, default=None, help="start no new problem after this many seconds")
    tm.add_argument("--sampler", default="tpe", help=f"{', '.join(SAMPLERS)} (default tpe)")
    tm.add_argument("--seed", type=int, default=0)
    tm.add_argument("--families", help="comma-separated kernel families to search (default: the enabled ones)")
    tm.add_argument("--db", help="tuning database (default as for tune)")
    tm.add_argument("--save-sparse", metavar="OUT.npz", help="write the pruned matrices (and their biases) as an "
                                                              ".npz bundle that tune-model and the runtime read")
    tm.add_argument("--dry-run", action="store_true", help="list the layers and distinct problems; tune nothing "
                                                           "(needs no GPU)")
    tm.add_argument("--json", action="store_true", help="print the summary as JSON")
    tm.add_argument("--no-progress", action="store_true", help="no progress bars")

    rp = sub.add_parser("report", help="write report.md and PNG plots from the tuning database")
    rp.add_argument("--out", required=True, help="output folder")
    rp.add_argument("--model", help="a model tuned with tune-model: per-layer speed-ups and total layer time")
    rp.add_argument("--gpu", help="GPU name (substring; default: the GPU with the most records)")
    rp.add_argument("--study", help="Optuna study for the convergence plot (default: the model's slowest problem, "
                                    "else the record with the most trials)")
    rp.add_argument("--db", help="tuning database (default as for tune)")

    sp = sub.add_parser("spaces", help="list the variant spaces and their sizes")
    sp.add_argument("--dtype", default="fp32")
    add_db_parser(sub, _Parser)
    return p


def _add_heartbeat_args(p):
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between heartbeats of workers and trials (default 10)")
    p.add_argument("--grace", type=int, default=None,
                   help="a worker silent this many seconds is taken as dead: its trial fails and is retried, its "
                        "problem is picked up again (default 6 x --heartbeat)")


def _add_scaleout_args(p):
    p.add_argument("--storage", help="share the work through this SQLAlchemy URL (Optuna RDB storage + problem "
                                     "queue), e.g. postgresql+psycopg://user:password@host:5432/dbname")
    p.add_argument("--workers", type=int, default=1,
                   help="with --storage: worker processes to start here, spread over the visible GPUs (default 1: this "
                        "process); workers that share a GPU compile in parallel and take turns to verify and time")
    _add_heartbeat_args(p)


def _fmt_us(x):
    return "n/a" if x is None else f"{x:.2f} us"


def _fmt_x(x):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}x"


def _report_text(r: dict) -> str:
    p, b, base, s = r["problem"], r["best"], r["baselines"], r["speedup"]
    lines = [
        f"problem   A {p['m']}x{p['k']} ({p['pattern']}, density {p['density']:g}, nnz {p['nnz']}) @ B {p['k']}x{p['n']}, {p['dtype']}",
        f"gpu       {r['gpu']} (cc {r['cc']}), driver {r['driver']}, CUDA {r['cuda']}, CuPy {r['cupy']}",
        f"best      {b['family']} {json.dumps(b['config'], sort_keys=True)}",
        f"time      {b['time_us']:.2f} us ({'synthetic objective, test only' if r.get('synthetic') else 'median, CUDA-graph replay'})  {b['gflops']:.0f} GFLOP/s  rel err {b['max_rel_err']:.1e}",
        f"floor     {_fmt_us(r['floor_us'])} (max of bytes / copy bandwidth, FLOPs / FMA peak)",
        f"cuSPARSE  {_fmt_us(base['cusparse_us'])}  -> {_fmt_x(s['vs_cusparse'])}",
        f"cuBLAS    FP32 {_fmt_us(base['cublas_fp32_us'])} -> {_fmt_x(s['vs_cublas_fp32'])}   "
        f"TF32 {_fmt_us(base['cublas_tf32_us'])} -> {_fmt_x(s['vs_cublas_tf32'])}   "
        f"FP16 {_fmt_us(base['cublas_fp16_us'])} -> {_fmt_x(s['vs_cublas_fp16'])}",
        f"trials    {r['trials']['complete']} ok, {r['trials']['failed']} failed, {r['trials']['pruned']} infeasible "
        f"rejected; {r['trials']['new']} new this run ({r['trials']['stopped']})",
        f"stored    record {r['record_id']} in {r['db']}" + ("" if r["record_is_best"] else " (an earlier record is faster)"),
    ]
    return "\n".join(lines)


def _checked_db(db: str | None) -> str:
    """The database target (default: $SPARSE_AUTOTUNE_DB or the user cache); a foreign or unreadable file is
    refused here, before any work, and nothing is written to it."""
    from pathlib import Path  # noqa: PLC0415
    from ..store.db import check_file, default_db_path, is_url  # noqa: PLC0415
    db = db or str(default_db_path())
    if not is_url(db):
        check_file(Path(db).expanduser())
    return db


def _problem_from_args(a) -> Problem:
    dtype = check_dtype(a.dtype)
    try:
        n = check_n(int(a.n))
    except ValueError:
        raise UserError(f"--n {a.n!r} is not an integer") from None
    if a.matrix:
        if a.shape or a.density:
            raise UserError("give either --matrix or --shape/--density, not both")
        return Problem.from_matrix(load_matrix(a.matrix), n, dtype)
    if not a.shape or a.density is None:
        raise UserError("tune needs --shape MxK and --density d (or --matrix FILE)")
    m, k = parse_shape(a.shape)
    d = check_density(a.density)
    if a.pattern not in PATTERNS:
        raise UserError(f"unknown pattern {a.pattern!r}: choose one of {', '.join(PATTERNS)}")
    return Problem.random(m, k, n, d, dtype, a.pattern, a.seed)


def cmd_tune(a) -> int:
    from ..tuning.tuner import TuneOptions, tune  # noqa: PLC0415
    if a.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {a.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if a.trials <= 0:
        raise UserError(f"--trials must be positive (got {a.trials})")
    if a.timeout is not None and a.timeout <= 0:
        raise UserError(f"--timeout must be positive (got {a.timeout})")
    db = _checked_db(a.db)
    problem = _problem_from_args(a)
    from ..core.space import select_spaces  # noqa: PLC0415
    families = tuple(s.family for s in select_spaces(a.families))
    if a.storage is not None or a.workers != 1:
        return _tune_scaleout(a, problem, families, db)
    from ..device.gpu import gpu_info  # noqa: PLC0415
    gpu_info()  # no GPU: one line, exit 2, nothing written
    report = tune(problem, TuneOptions(trials=a.trials, timeout=a.timeout, sampler=a.sampler, seed=a.seed,
                                       db=db, progress=not a.no_progress, families=families,
                                       warm_start=not a.cold_start))
    print(json.dumps(report, indent=2, default=str) if a.json else _report_text(report))
    return 0


def _scaleout(a):
    from ..tuning.scaleout import ScaleOut  # noqa: PLC0415
    if a.storage is None:
        raise UserError("--workers needs --storage URL (the database the workers share)")
    if a.workers <= 0:
        raise UserError(f"--workers must be positive (got {a.workers})")
    return ScaleOut(a.storage, a.heartbeat, a.grace)


def _run_workers(a, so, db, ids, deadline=None):
    """One worker in this process (--workers 1), or --workers K processes over the visible GPUs; only the problems
    `ids`; no new problem claimed after `deadline` (a time.time())."""
    from ..tuning.scaleout import local_devices, run_worker, spawn_workers  # noqa: PLC0415
    if a.workers == 1:
        run_worker(a.storage, db, only=ids, heartbeat=a.heartbeat, grace=a.grace, deadline=deadline)
    else:
        local_devices(a.workers)  # a GPU is visible: checked before anything starts
        codes = spawn_workers(a.storage, db, a.workers, only=ids, heartbeat=a.heartbeat, grace=a.grace,
                              deadline=deadline)
        if any(codes):
            print(f"sparse-autotune: worker exit statuses {codes}", file=sys.stderr)


def _tune_scaleout(a, problem, families, db) -> int:
    from ..tuning.scaleout import local_devices, problem_spec  # noqa: PLC0415
    if a.matrix:
        raise UserError("--matrix with --storage is not supported: the workers rebuild the problem from "
                        "--shape/--density/--seed")
    if a.workers != 1:
        local_devices(a.workers)  # bad --workers, or too few GPUs: nothing is written
    so = _scaleout(a)
    [rid] = so.enqueue([problem_spec(problem, a.trials, a.timeout, a.sampler, families, warm_start=not a.cold_start)])
    _run_workers(a, so, db, [rid])
    [row] = so.problems([rid])
    so.dispose()
    if row["state"] != "done":
        raise UserError(f"problem {rid} is {row['state']}" + (f": {row['error']}" if row["error"] else ""))
    report = json.loads(row["result"])
    print(json.dumps(report, indent=2, default=str) if a.json else _report_text(report))
    return 0


def cmd_worker(a) -> int:
    from ..tuning.scaleout import run_worker  # noqa: PLC0415
    only = None
    if a.problems:
        try:
            only = [int(x) for x in a.problems.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--problems {a.problems!r} is not a comma-separated list of queue ids") from None
    if a.budget is not None and a.budget < 0:
        raise UserError(f"--budget must not be negative (got {a.budget})")
    db = _checked_db(a.db)
    run_worker(a.storage, db, only=only, heartbeat=a.heartbeat, grace=a.grace,
               deadline=None if a.budget is None else time.time() + a.budget)
    return 0


def cmd_status(a) -> int:
    from ..tuning.scaleout import ScaleOut, status, status_text  # noqa: PLC0415
    so = ScaleOut(a.storage)
    st = status(so)
    print(json.dumps(st.to_dict(), indent=1, default=str) if a.json else status_text(st, so.label))
    so.dispose()
    return 0


def cmd_lookup(a) -> int:
    from ..store.lookup import lookup  # noqa: PLC0415
    m, k = parse_shape(a.shape)
    try:
        n = check_n(int(a.n))
    except ValueError:
        raise UserError(f"--n {a.n!r} is not an integer") from None
    res = lookup(m, k, n, check_density(a.density), check_dtype(a.dtype), gpu=a.gpu, db=a.db,
                 fallback=not a.exact)
    if a.json:
        print(json.dumps(None if res is None else res.__dict__, default=str))
    elif res is None:
        print("no stored config for this problem")
    else:
        where = "built-in default" if res.source == "default" else (
            f"record {res.record_id} in {res.db}, tuned on {res.gpu} for "
            f"{res.key[0]}x{res.key[1]} N={res.key[2]} d={res.key[3]:g} ({res.time_us:.2f} us)")
        dist = f", distance {res.distance:.2f}" if res.source in ("nearest", "same-arch") and res.distance else ""
        adapted = (f"\n  adapted to N={n}; stored as {json.dumps(res.stored_config, sort_keys=True)}"
                   if res.stored_config else "")
        print(f"{res.source}{dist}: {res.family} {json.dumps(res.config, sort_keys=True)}\n  from {where}{adapted}")
    return 0


def cmd_bench(a) -> int:
    from pathlib import Path  # noqa: PLC0415
    from ..tuning.suite import run_suite, suite_cases, summary  # noqa: PLC0415
    suite_cases(a.suite)  # validates the name before the GPU is touched
    if a.trials <= 0:
        raise UserError(f"--trials must be positive (got {a.trials})")
    db = _checked_db(a.db)
    if a.storage is not None or a.workers != 1:
        from ..tuning.suite import run_suite_scaleout  # noqa: PLC0415
        if a.budget is not None and a.budget <= 0:
            raise UserError(f"--budget must be positive (got {a.budget})")
        if a.workers != 1:
            from ..tuning.scaleout import local_devices  # noqa: PLC0415
            local_devices(a.workers)
        so = _scaleout(a)
        deadline = None if a.budget is None else time.time() + a.budget
        records = run_suite_scaleout(a.suite, a.trials, Path(a.out), so,
                                     lambda ids: _run_workers(a, so, db, ids, deadline))
        print(json.dumps(summary(records), indent=1))
        return 0
    from ..device.gpu import gpu_info  # noqa: PLC0415
    gpu_info()
    records = run_suite(a.suite, a.trials, Path(a.out), db, a.budget)
    print(json.dumps(summary(records), indent=1))
    return 0


def cmd_tune_model(a) -> int:
    from pathlib import Path  # noqa: PLC0415
    from ..tuning import checkpoint as mdl  # noqa: PLC0415
    from ..tuning.tuner import TuneOptions  # noqa: PLC0415
    if a.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {a.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if a.trials <= 0:
        raise UserError(f"--trials must be positive (got {a.trials})")
    for opt, v in (("--timeout", a.timeout), ("--budget", a.budget)):
        if v is not None and v <= 0:
            raise UserError(f"{opt} must be positive (got {v})")
    dtypes = [check_dtype(d.strip()) for d in a.dtype.split(",") if d.strip()]
    if not dtypes:
        raise UserError("--dtype: no dtype given")
    if a.prune is None and a.density is not None:
        raise UserError("--density needs --prune magnitude (without --prune the existing zeros are used)")
    if a.prune is not None and a.density is None:
        raise UserError("--prune magnitude needs --density D")
    if a.prune_scope not in mdl.PRUNE_SCOPES:
        raise UserError(f"unknown --prune-scope {a.prune_scope!r}: choose one of {', '.join(mdl.PRUNE_SCOPES)}")
    density = check_density(a.density) if a.density is not None else None
    db = None if a.dry_run else _checked_db(a.db)
    ckpt = mdl.load_checkpoint(a.checkpoint)
    layers = mdl.find_layers(ckpt, a.include, a.exclude)
    ns = mdl.n_values(layers, a.n, a.batch, a.seq, a.spatial)
    layers = mdl.prune_layers(layers, density, a.prune_scope) if a.prune else mdl.sparse_layers(layers)
    name = a.model or Path(a.checkpoint).stem
    if a.save_sparse:
        extras = mdl.biases_of(ckpt, layers)
        out = mdl.save_bundle(a.save_sparse, layers, extras,
                              {"model": name, "prune": a.prune, "density": density, "prune_scope": a.prune_scope})
        print(f"wrote {len(layers)} sparse layers and {len(extras)} biases to {out}", file=sys.stderr)
    jobs = mdl.plan(layers, ns, dtypes)
    if a.dry_run:
        plan = {"model": name, "layers": [{"name": lay.name, "kind": lay.kind, "shape": list(lay.shape),
                                           "nnz": lay.nnz, "density": round(lay.density, 6), "n": ns[lay.name]}
                                          for lay in layers],
                "problems": [{"m": j.m, "k": j.k, "density": j.density, "dtype": j.dtype, "n": j.n,
                              "layers": [lay.name for lay in j.layers]} for j in jobs]}
        if a.json:
            print(json.dumps(plan, indent=1))
        else:
            for lay in plan["layers"]:
                print(f"layer   {lay['name']} ({lay['kind']}) {lay['shape'][0]}x{lay['shape'][1]} "
                      f"nnz {lay['nnz']} density {lay['density']:g} N {','.join(map(str, lay['n']))}")
            for j in plan["problems"]:
                print(f"problem {j['m']}x{j['k']} d={j['density']:g} {j['dtype']} N={j['n']}: {len(j['layers'])} layer(s)")
            print(f"{len(layers)} layers, {len(jobs)} distinct problems")
        return 0
    from ..core.space import select_spaces  # noqa: PLC0415
    families = tuple(s.family for s in select_spaces(a.families))
    from ..device.gpu import gpu_info  # noqa: PLC0415
    info = gpu_info()
    opts = TuneOptions(trials=a.trials, timeout=a.timeout, sampler=a.sampler, seed=a.seed, db=db,
                       progress=not a.no_progress, families=families)
    res = mdl.tune_model(name, layers, jobs, opts, info.name, progress=not a.no_progress, budget_s=a.budget,
                         log=(lambda m: None) if a.json else (lambda m: print(m, file=sys.stderr)))
    summary = {"model": res.model, "layers": res.layers, "problems": res.problems, "tuned": res.tuned,
               "skipped_done_before": res.skipped, "failed": res.failed, "stopped": res.stopped, "db": db}
    print(json.dumps(summary, indent=1) if a.json else
          f"{res.model}: {res.layers} layers, {res.problems} distinct problems: {res.tuned} tuned now, "
          f"{res.skipped} done before, {res.failed} failed ({res.stopped}); "
          f"see `sparse-autotune report --model {res.model} --out DIR`")
    return 130 if res.interrupted else 0


def cmd_report(a) -> int:
    from pathlib import Path  # noqa: PLC0415
    from ..commands.report import write_report  # noqa: PLC0415
    db = _checked_db(a.db)
    res = write_report(db, Path(a.out), model=a.model, gpu=a.gpu, study=a.study)
    print(f"wrote {res['markdown']} and {len(res['png'])} PNG(s): {', '.join(Path(p).name for p in res['png'])}")
    return 0


def cmd_spaces(a) -> int:
    from ..core.space import load_spaces  # noqa: PLC0415
    check_dtype(a.dtype)
    for s in load_spaces():
        state = "" if s.enabled else "  [off by default: --families " + s.family + "]"
        if not s.supports(a.dtype):
            state += f"  [computes {', '.join(s.dtypes)} only]"
        print(f"{s.family:16s} {s.size(a.dtype):7d} configs ({a.dtype})  {s.description}{state}")
        for p in s.params:
            cond = f"  when {p.when}" if p.when else ""
            print(f"    {p.name:16s} {p.choices(a.dtype)}{cond}")
    return 0


def main(argv=None) -> int:
    def run() -> int:
        args = _parser().parse_args(argv)
        return {"tune": cmd_tune, "lookup": cmd_lookup, "bench": cmd_bench, "spaces": cmd_spaces, "db": cmd_db,
                "tune-model": cmd_tune_model, "report": cmd_report, "worker": cmd_worker,
                "status": cmd_status}[args.cmd](args)
    return exit_status("sparse-autotune", run)


if __name__ == "__main__":
    raise SystemExit(main())
