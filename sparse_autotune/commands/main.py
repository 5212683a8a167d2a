"""Command line: `sparse-autotune tune|tune-model|report|lookup|bench|spaces|db|worker|status`. Bad input: one line
on stderr, exit status 2. `tune --op sddmm` and `lookup --op sddmm` are SDDMM's (tuning.sddmm_tune, runtime.sddmm)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from .. import __version__
from ..errors import UserError, exit_status
from ..core.problem import (DEFAULT_N, LAYOUTS, PATTERNS, Problem, check_density, check_dim, check_dtype, check_layout,
                            check_n, check_seed, load_matrix, n_bucket, parse_shape)
from ..commands.db import add_db_parser, cmd_db
from ..commands.conv import _layout_any, add_conv_args, conv_layout_refused
from ..tuning.options import FINALIST_WITHIN, FINALISTS, RANKS, SAMPLERS, check_options


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the usage too)
        raise UserError(f"{message} (see {self.prog} --help)")


# ---- option types: every option is checked once, when the command line is parsed (a bad value: one line, exit 2) --

MAX_TRIALS = 1_000_000
MAX_WORKERS = 1024
MAX_HEARTBEAT = 3600  # seconds
MAX_SECONDS = 10 * 365 * 86400  # --timeout / --budget: ten years


def _opt(check, name: str):
    """An argparse type from a check that raises UserError (argparse then names the option in the message)."""
    def conv(text):
        try:
            return check(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    conv.__name__ = name
    return conv


def _int_in(lo: int, hi: int, what: str):
    def check(text):
        t = str(text).strip()
        if not (t[:1] in "+-" and t[1:].isascii() and t[1:].isdigit() or t.isascii() and t.isdigit()):
            raise UserError(f"{text!r} is not an integer")
        v = int(t)
        if not lo <= v <= hi:
            raise UserError(f"{what} must be from {lo} to {hi} (got {v})")
        return v
    return _opt(check, "int")


def _seconds(allow_zero: bool = False):
    def check(text):
        try:
            v = float(text)
        except ValueError:
            raise UserError(f"{text!r} is not a number of seconds") from None
        if not (math.isfinite(v) and (v >= 0 if allow_zero else v > 0) and v <= MAX_SECONDS):
            raise UserError(f"must be a {'' if allow_zero else 'positive '}number of seconds"
                            f"{' (0 or more)' if allow_zero else ''} up to {MAX_SECONDS} (got {text!r})")
        return v
    return _opt(check, "seconds")


def _choice(choices, what: str):
    def check(text):
        if text not in choices:
            raise UserError(f"unknown {what} {text!r}: choose one of {', '.join(choices)}")
        return text
    return _opt(check, what)


def _families(text):
    from ..core.space import select_spaces  # noqa: PLC0415
    from ..core.vendor import split_families  # noqa: PLC0415
    select_spaces(split_families(text)[0])  # unknown names, or vendor paths only: UserError
    return text


def _families_any(text):
    """tune's --families: SpMM's kernel families and vendor paths (_families), or SDDMM's (ops.sddmm); which operator's
    they must be is checked with --op (cmd_tune)."""
    try:
        return _families(text)
    except UserError:
        from ..core.vendor import split_families  # noqa: PLC0415
        from ..ops.sddmm import sddmm_families  # noqa: PLC0415
        templated, _ = split_families(text)
        if templated and all(x in sddmm_families() for x in templated):
            return text
        from ..ops.spmm_t import spmm_t_families  # noqa: PLC0415 - --op spmm_t's (scatter, transpose+<family>)
        if templated and all(x in spmm_t_families() for x in templated):
            return text
        from ..ops.conv import conv_families  # noqa: PLC0415 - --op conv3x3's (conv_csr, conv_pattern; and cudnn)
        names = [x.strip() for x in str(text).split(",") if x.strip()]
        if names and all(x in conv_families() or x == "cudnn" for x in names):
            return text
        raise


def _family_options(text) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """--families as (the templated families to search, the vendor paths timed beside them; None: all of them)."""
    from ..core.space import select_spaces  # noqa: PLC0415
    from ..core.vendor import split_families  # noqa: PLC0415
    templated, vendors = split_families(text)
    return tuple(s.family for s in select_spaces(templated)), vendors


def _queue_ids(text) -> list[int]:
    try:
        ids = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{text!r} is not a comma-separated list of queue ids") from None
    if not ids or not all(0 < i < 2**63 for i in ids):
        raise UserError(f"{text!r} is not a comma-separated list of queue ids (positive integers)")
    return ids


_SHAPE = _opt(parse_shape, "shape")
_DENSITY = _opt(check_density, "density")
_N = _opt(check_n, "N")
_SEED = _opt(check_seed, "seed")
_DTYPE = _opt(check_dtype, "dtype")
_LAYOUT = _opt(check_layout, "layout")
_LAYOUT_ANY = _opt(_layout_any, "layout")  # tune / lookup: conv3x3's nchw / nhwc too (commands/conv.py)
LAYOUT_HELP = ("operand layout: kn (B is K x N, C = A @ B is M x N; the default) or nk (the nn.Linear layout: x is "
               "N x K, y = x @ A^T + bias is N x M, bias fused)")
_FAMILIES = _opt(_families, "families")
_FAMILIES_ANY = _opt(_families_any, "families")
_TRIALS = _int_in(1, MAX_TRIALS, "the trial budget")
OPS = ("spmm", "sddmm", "spmm_t", "conv3x3")  # conv3x3: the sparse 3x3 convolution (commands/conv.py)
_OP = _choice(OPS, "operator")
RANK_HELP = (f"how the winner is chosen (spmm): cold (default: the search's best configs within {FINALIST_WITHIN:g}x "
             f"of the best, up to {FINALISTS}, any family, timed with A read from HBM as in a model's forward pass; "
             "the fastest wins and its record keeps that cold time, which ranks it in the database) or warm (the "
             "search's best, A in the L2 cache; no cold time stored)")
_K = _opt(lambda text: check_dim(text, "K"), "K")
DEFAULT_K = 256  # SDDMM's K (the columns of X and Y) where --k is not given
OP_HELP = ("operator: spmm (C = A @ B, A sparse; the default) or sddmm (out = (X @ Y^T) at the nonzeros of a CSR mask "
           "S, times S's values: X is M x K, Y is N x K) or spmm_t (C = A^T @ B from the stored A, M x K: B is M x N, "
           "C is K x N) or conv3x3 (a 3x3 convolution, padding 1, with a sparse Cout x Cin x 3 x 3 weight: --shape "
           "CoutxCin, --hw, --batch, --stride)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparse-autotune", description="Autotuned SpMM kernels for pruned layers on NVIDIA GPUs.")
    p.add_argument("--version", action="version", version=f"sparse-autotune {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser, required=True)

    t = sub.add_parser("tune", help="tune SpMM (or SDDMM: --op sddmm) for one sparse matrix and store the winner",
                       description="Tune C = A @ B for a sparse A (M x K) and dense B (K x N) on this GPU; with --op "
                                   "sddmm, out = (X @ Y^T) at the nonzeros of a CSR mask S (M x N), times S's values, "
                                   "for X (M x K) and Y (N x K): `tune --op sddmm --shape 512x2048 --k 256 --density "
                                   "0.1`.")
    t.add_argument("--op", type=_OP, default="spmm", help=OP_HELP)
    t.add_argument("--shape", type=_SHAPE, help="M x K of the sparse matrix A (sddmm: M x N of the mask), e.g. 512x2048")
    t.add_argument("--density", type=_DENSITY, help="fraction of nonzeros in A (sddmm: in the mask), in (0, 1]")
    t.add_argument("--n", type=_N, default=None, help=f"columns N of the dense B (default {DEFAULT_N}; spmm only)")
    t.add_argument("--k", type=_K, default=None, help=f"sddmm: K, the columns of X and Y (default {DEFAULT_K}; sddmm only)")
    t.add_argument("--dtype", type=_DTYPE, default="fp32", help="fp32, fp16 or bf16 (16-bit storage, fp32 accumulation); "
                                                                "tf32 (spmm: fp32 storage, TF32 tensor cores, compared "
                                                                "with cuBLAS TF32); default fp32")
    t.add_argument("--pattern", type=_choice(PATTERNS, "pattern"), default="uniform",
                   help=f"random pattern: {', '.join(PATTERNS)} (default uniform)")
    t.add_argument("--layout", type=_LAYOUT_ANY, default=None, help=LAYOUT_HELP + " (spmm only); conv3x3: nchw "
                   "(default) or nhwc")
    add_conv_args(t)
    t.add_argument("--matrix", help="tune this matrix (.npz from scipy.sparse.save_npz, or .mtx; sddmm: the mask); "
                                    "replaces --shape/--density")
    t.add_argument("--trials", type=_TRIALS, default=100, help="trial budget of the study, over all runs (default 100)")
    t.add_argument("--timeout", type=_seconds(), default=None, help="stop searching after this many seconds")
    t.add_argument("--sampler", default="tpe", help=f"{', '.join(SAMPLERS)} (default tpe)")
    t.add_argument("--seed", type=_SEED, default=0, help="seed of the random matrix, inputs and sampler, 0 .. 2**32-1 "
                                                          "(default 0)")
    t.add_argument("--families", type=_FAMILIES_ANY, help="comma-separated kernel families to search (default: the enabled ones; "
                                      "see `sparse-autotune spaces`; sddmm: sddmm_warp, sddmm_tile), and the vendor "
                                      "paths cusparse, dense to time as candidates beside them (default: both; naming "
                                      "families without them leaves them out)")
    t.add_argument("--allow-tf32", action="store_true", help="fp32: cuBLAS's TF32 tensor cores are a candidate too "
                                                              "(10-bit mantissa; off by default; spmm only)")
    t.add_argument("--db", help="tuning database path or SQLAlchemy URL (default $SPARSE_AUTOTUNE_DB or the user cache)")
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--cold-start", action="store_true", help="do not try the winners of the nearest problems tuned "
                                                             "on this GPU model first (the warm start)")
    t.add_argument("--rank", type=_choice(RANKS, "rank"), default="cold", help=RANK_HELP)
    _add_scaleout_args(t)

    lk = sub.add_parser("lookup", help="print the best stored config for a problem")
    lk.add_argument("--op", type=_OP, default="spmm", help=OP_HELP)
    lk.add_argument("--shape", type=_SHAPE, required=True, help="M x K of the sparse matrix A (sddmm: M x N of the "
                                                               "mask), e.g. 512x2048")
    lk.add_argument("--density", type=_DENSITY, required=True, help="fraction of nonzeros in A (sddmm: in the mask), "
                                                                    "in (0, 1]")
    lk.add_argument("--n", type=_N, default=None, help=f"columns N of the dense B (default {DEFAULT_N}; spmm only)")
    lk.add_argument("--k", type=_K, default=None, help=f"sddmm: K, the columns of X and Y (default {DEFAULT_K}; sddmm only)")
    lk.add_argument("--dtype", type=_DTYPE, default="fp32", help="fp32, fp16, bf16 or tf32 (default fp32)")
    add_conv_args(lk)
    lk.add_argument("--layout", type=_LAYOUT_ANY, default=None, help=LAYOUT_HELP + "; nk is served by nk records first, "
                    "then by kn records (natively where the family declares nk, else staged; spmm only)")
    lk.add_argument("--gpu", default=None, help="GPU name (default: this machine's GPU, or any)")
    lk.add_argument("--db", help="tuning database searched first (then the databases shipped with the package); "
                    "one that does not exist is searched as empty, with a note on stderr")
    lk.add_argument("--exact", action="store_true", help="exact key only: no nearest / same-arch / default")
    lk.add_argument("--allow-tf32", action="store_true", help="fp32: a record of cuBLAS TF32 may serve the problem")
    lk.add_argument("--json", action="store_true")

    bn = sub.add_parser("bench", help="run a benchmark suite (tune every case, time baselines, write results)")
    bn.add_argument("--suite", default="quick", help="dl (the full suite), llm (7-8B decoder layers at small N, fp16/bf16), quick (a small subset) or search (the search itself: every config measured, the samplers replayed); default quick")
    bn.add_argument("--trials", type=_TRIALS, default=40, help="trial budget per case (default 40)")
    bn.add_argument("--out", default="bench/results", help="output folder (default bench/results)")
    bn.add_argument("--db", help="tuning database (default as for tune)")
    bn.add_argument("--budget", type=_seconds(), default=None, help="start no new case after this many seconds (a rerun "
                                                               "goes on with the cases left)")
    phase = bn.add_mutually_exclusive_group()  # --suite search only (tuning/searchbench.py)
    phase.add_argument("--measure-only", action="store_true", help="search: measure on this GPU, no replay")
    phase.add_argument("--replay-only", action="store_true", help="search: replay the measured table(s) (no GPU)")
    bn.add_argument("--problems", help="search: only these problems (comma-separated names; default all): a measure "
                                       "phase split over GPUs, each into its own --out, tables merged at replay")
    bn.add_argument("--shard", help="I/N: tune only every N-th case from the I-th (with --workers/--storage; two GPUs "
                                    "each with its own copy of the storage split the cases left; join them with --merge)")
    bn.add_argument("--retry-failed", action="store_true", help="with --storage/--workers: cases that failed (their "
                                                                 "workers lost 3 times) are tried again")
    bn.add_argument("--retune", metavar="FILTER", action="append", help="with --storage/--workers: open the searches "
                    "of the cases matching FILTER again ('N=16,32 dtype=bf16', or repeated --retune: FIELD=V1,V2 "
                    "conditions, all must hold; fields M, K, N, density, dtype, pattern) with --retune-trials more "
                    "trials each, the known-good configs not yet tried first (e.g. after a kernel change); a rerun "
                    "resumes it")
    bn.add_argument("--retune-trials", type=_TRIALS, default=20, help="with --retune: trials added to each matching "
                                                                      "case's search (default 20)")
    bn.add_argument("--only", metavar="FILTER", action="append", help="with --storage/--workers: run only the suite's "
                    "cases matching FILTER (as --retune's), from nothing: e.g. a part of the suite again after a family "
                    "was enabled; the report holds those cases: join it with the earlier one by --merge NEW OLD --first-wins")
    bn.add_argument("--families", help="with --storage/--workers: the kernel families every case searches (comma-separated, "
                    "as tune's; default the enabled ones), e.g. a family measured before it is enabled (with --only, "
                    "join the part's report with the earlier one by --merge NEW OLD --fastest-wins)")
    bn.add_argument("--merge", nargs="+", metavar="JSON", help="no GPU: join these suite-<suite>-<gpu>.json files (e.g. "
                                                                "one per shard) into one report in --out")
    bn.add_argument("--first-wins", action="store_true", help="with --merge: a case in several files keeps the first "
                    "file's record (e.g. an --only re-run after a kernel change, NEW first), not the longest search's")
    bn.add_argument("--fastest-wins", action="store_true", help="with --merge: a case in several files keeps the "
                    "record with the lowest tuned time, cold where measured (tuned_cold_us, else tuned_us: the tuning "
                    "database's rule) (e.g. a --families part that searched some families only, beside the earlier "
                    "report of all of them), not the longest search's")
    _add_scaleout_args(bn)

    wk = sub.add_parser("worker", help="join the workers of a shared storage: tune queued problems until none is left",
                        description="Claim problems from the queue in --storage and tune them on this GPU.")
    wk.add_argument("--storage", required=True, help="SQLAlchemy URL of the shared storage, "
                                                     "e.g. postgresql+psycopg://user:password@host:5432/dbname")
    wk.add_argument("--db", help="tuning database that receives the best records (default as for tune)")
    wk.add_argument("--problems", type=_opt(_queue_ids, "ids"), help="only these queue ids (comma-separated)")
    wk.add_argument("--budget", type=_seconds(allow_zero=True), default=None,
                    help="claim no new problem after this many seconds "
                                                               "(the one in hand is finished)")
    _add_heartbeat_args(wk)

    st = sub.add_parser("status", help="problems done / running / queued and trials per worker in a shared storage")
    st.add_argument("--storage", required=True, help="SQLAlchemy URL of the shared storage")
    st.add_argument("--json", action="store_true")

    tm = sub.add_parser("tune-model", help="tune every Linear / 1x1-conv layer (and 3x3 conv with --spatial) of a "
                                           "checkpoint",
                        description="Tune the layers of a model checkpoint (.safetensors, PyTorch .pt state_dict, or "
                                    ".npz sparse bundle). Layers with the same (shape, density, dtype, N) are tuned "
                                    "once; a rerun resumes.")
    tm.add_argument("checkpoint", help="a .safetensors file, a PyTorch state_dict (.pt/.pth), or an .npz bundle")
    tm.add_argument("--model", help="the model's name in the database (default: the checkpoint's file stem)")
    tm.add_argument("--include", action="append", help="only layers whose name matches these fnmatch patterns "
                                                        "(comma-separated or repeated)")
    tm.add_argument("--exclude", action="append", help="leave out layers whose name matches these patterns")
    tm.add_argument("--prune", choices=["magnitude"], help="prune the weights (else their existing zeros are used)")
    tm.add_argument("--density", type=_DENSITY, help="with --prune: the fraction of weights kept, in (0, 1]")
    tm.add_argument("--prune-scope", default="layer", help="layer (each layer to the density; default) or global "
                                                           "(one magnitude threshold over all selected layers)")
    tm.add_argument("--n", help="comma-separated N values (columns of B) for every layer")
    tm.add_argument("--batch", help="comma-separated batch sizes: N = batch x seq (Linear) or batch x H x W (conv)")
    tm.add_argument("--seq", help="tokens per sequence for Linear layers (N = batch x seq)")
    tm.add_argument("--spatial", action="append",
                    help="PATTERN=HxW or PATTERN=HxWs2: the image size (and stride, 1 or 2; default 1) of matching "
                         "conv layers (repeatable; the first match wins). 1x1 convs: N = batch x output pixels. 3x3 "
                         "convs (Cout, Cin, 3, 3): HxW is the input image, padding 1, tuned as conv3x3 problems at "
                         "each --batch (default 1); a 3x3 layer without a --spatial size is skipped with a note "
                         "(an error where --include names it)")
    tm.add_argument("--n-buckets", action="store_true",
                    help="tune each N bucket once, at its top (N rounded up to the next power of two); the runtime "
                         "serves every N of a bucket from that record")
    tm.add_argument("--dtype", default="fp32", help="comma-separated: fp32, fp16, bf16 (default fp32)")
    tm.add_argument("--layout", type=_LAYOUT_ANY, default=None,
                    help=f"operand layout of every layer ({', '.join(LAYOUTS)}); default: nk for Linear layers (the "
                         "nn.Linear layout SparseLinear runs: x is N x K, y is N x M, bias fused), kn for 1x1 "
                         "convolutions (W @ X per image). nchw or nhwc: the layout of the 3x3 conv layers (default "
                         "nchw; the others then keep their defaults)")
    tm.add_argument("--trials", type=_TRIALS, default=60, help="trial budget per distinct problem (default 60)")
    tm.add_argument("--timeout", type=_seconds(), default=None, help="search time limit per problem, seconds")
    tm.add_argument("--budget", type=_seconds(), default=None, help="start no new problem after this many seconds")
    tm.add_argument("--sampler", default="tpe", help=f"{', '.join(SAMPLERS)} (default tpe)")
    tm.add_argument("--seed", type=_SEED, default=0, help="seed of the inputs and the sampler, 0 .. 2**32-1 (default 0)")
    tm.add_argument("--families", type=_FAMILIES,
                    help="comma-separated kernel families to search (default: the enabled ones), and the vendor paths "
                         "cusparse, dense timed beside them (default: both)")
    tm.add_argument("--allow-tf32", action="store_true", help="fp32: cuBLAS's TF32 tensor cores are a candidate too")
    tm.add_argument("--rank", type=_choice(RANKS, "rank"), default="cold", help=RANK_HELP)
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
    sp.add_argument("--dtype", type=_DTYPE, default="fp32")
    add_db_parser(sub, _Parser)
    return p


def _add_heartbeat_args(p):
    p.add_argument("--heartbeat", type=_int_in(1, MAX_HEARTBEAT, "--heartbeat"), default=10,
                   help="seconds between heartbeats of workers and trials (default 10)")
    p.add_argument("--grace", type=_int_in(2, 10 * MAX_HEARTBEAT, "--grace"), default=None,
                   help="a worker silent this many seconds is taken as dead: its trial fails and is retried, its "
                        "problem is picked up again (default 6 x --heartbeat)")


def _add_scaleout_args(p):
    p.add_argument("--storage", help="share the work through this SQLAlchemy URL (Optuna RDB storage + problem "
                                     "queue), e.g. postgresql+psycopg://user:password@host:5432/dbname")
    p.add_argument("--workers", type=_int_in(1, MAX_WORKERS, "--workers"), default=1,
                   help="with --storage: worker processes to start here, spread over the visible GPUs (default 1: this "
                        "process); workers that share a GPU compile in parallel and take turns to verify and time")
    _add_heartbeat_args(p)


def _fmt_us(x):
    return "n/a" if x is None else f"{x:.2f} us"


def _fmt_x(x):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}x"


def _problem_line(p: dict) -> str:
    """The report's problem line: A @ B (kn), or y = x @ A^T + bias with x and y as nn.Linear holds them (nk)."""
    a = f"A {p['m']}x{p['k']} ({p['pattern']}, density {p['density']:g}, nnz {p['nnz']})"
    if p.get("layout", "kn") == "nk":
        return (f"problem   y = x @ A^T + bias: {a}, x {p['n']}x{p['k']}, y {p['n']}x{p['m']}, {p['dtype']}, layout nk "
                "(nn.Linear: x is N x K, y is N x M, bias fused)")
    return f"problem   {a} @ B {p['k']}x{p['n']}, {p['dtype']}"


def _report_text(r: dict) -> str:
    p, b, base, s = r["problem"], r["best"], r["baselines"], r["speedup"]
    lines = [
        _problem_line(p),
        f"gpu       {r['gpu']} (cc {r['cc']}), driver {r['driver']}, CUDA {r['cuda']}, CuPy {r['cupy']}",
        f"best      {b['family']} {json.dumps(b['config'], sort_keys=True)}",
        f"time      {b['time_us']:.2f} us ({'synthetic objective, test only' if r.get('synthetic') else 'median, CUDA-graph replay'})  {b['gflops']:.0f} GFLOP/s  rel err {b['max_rel_err']:.1e}",
        f"floor     {_fmt_us(r['floor_us'])} (max of bytes / copy bandwidth, FLOPs / FMA peak)",
        f"cuSPARSE  {_fmt_us(base['cusparse_us'])}  -> {_fmt_x(s['vs_cusparse'])}",
        f"cuBLAS    FP32 {_fmt_us(base['cublas_fp32_us'])} -> {_fmt_x(s['vs_cublas_fp32'])}   "
        f"TF32 {_fmt_us(base['cublas_tf32_us'])} -> {_fmt_x(s['vs_cublas_tf32'])}   "
        f"FP16 {_fmt_us(base['cublas_fp16_us'])} -> {_fmt_x(s['vs_cublas_fp16'])}"
        + (f"   BF16 {_fmt_us(base.get('cublas_bf16_us'))} -> {_fmt_x(s.get('vs_cublas_bf16'))}"
           if p["dtype"] == "bf16" else ""),  # cuBLAS BF16: the dense path of a bf16 problem (its baselines only)
        *_cold_lines(r),
        f"trials    {r['trials']['complete']} ok, {r['trials']['failed']} failed, {r['trials']['pruned']} infeasible "
        f"rejected; {r['trials']['new']} new this run ({r['trials']['stopped']})",
        f"stored    record {r['record_id']} in {r['db']}" + ("" if r["record_is_best"] else " (an earlier record is faster)"),
        *_chosen_lines(r),
    ]
    return "\n".join(lines)


def _cold_lines(r: dict) -> list[str]:
    """The winner and cuBLAS of the same precision timed with A from HBM (device.cold), where measured."""
    c = r.get("cold") or {}
    t, d = c.get("tuned_cold_us"), c.get("dense_cold_us")
    if not t:
        return []
    mode = (c.get("dense_cold_mode") or r["problem"]["dtype"]).upper()
    lines = [f"A cold    best {_fmt_us(t)}, cuBLAS {mode} {_fmt_us(d)} -> {_fmt_x(d / t if d else None)} "
             "(A read from HBM at every launch, as in a model's forward pass)"]
    fin = r.get("finalists") or []
    if len(fin) > 1:  # rank cold: the configs timed cold, the winner the fastest of them
        lines.append("finalists " + ", ".join(f"{f['family']} {_fmt_us(f['warm_us'])} warm / {_fmt_us(f['cold_us'])} "
                                              "cold" for f in fin))
    return lines


def _chosen_lines(r: dict) -> list[str]:
    """What the runtime runs for the problem: a vendor path where one beat the tuned kernel (its record), else nothing
    more to say (the tuned kernel's lines above are the sparse kernel's in either case)."""
    c = r.get("chosen") or {}
    if not c.get("vendor"):
        return []
    return [f"chosen    {c['family']} {json.dumps(c['config'], sort_keys=True)} {_fmt_us(c['time_us'])}, "
            f"{_fmt_x(c.get('sparse_over_chosen'))} faster than the tuned kernel: the runtime runs {c['runs']} "
            f"(record {c['record_id']})"]


def _checked_db(db: str | None, write: bool = True) -> str:
    """The database target (default: $SPARSE_AUTOTUNE_DB or the user cache), checked before any work by the guard
    (store/guard.py): another application's file or tables, a newer schema or a URL that does not parse is refused
    untouched; a write may make a new file only where its folder exists; a read needs an existing database."""
    from ..store import guard  # noqa: PLC0415
    from ..store.db import default_db_path  # noqa: PLC0415
    if not write:
        return _db_for_read(db)
    target = db or str(default_db_path())
    guard.for_write(target)
    return target


def _db_for_read(db: str | None) -> str:
    """A database a read opens: it exists (nothing is created). Without --db and with nothing tuned on this machine
    yet, the message names the databases shipped with the package."""
    from ..store import guard  # noqa: PLC0415
    from ..store.db import default_db_path  # noqa: PLC0415
    if db:
        guard.for_read(db)
        return db
    target = str(default_db_path())
    if guard.survey(target).state == "missing":
        from ..store.lookup import shipped_databases  # noqa: PLC0415
        shipped = shipped_databases()
        hint = (f"; the package ships {'one' if len(shipped) == 1 else 'these'}: --db {' or --db '.join(shipped)}"
                if shipped else "")
        raise UserError(f"no tuning database at {target} yet (nothing was tuned on this machine; --db or "
                        f"$SPARSE_AUTOTUNE_DB name another){hint}")
    return target


def _problem_plan(a) -> tuple:
    """The problem of `tune`'s options, checked before anything is allocated or a GPU is looked for: (M, K, nnz, the
    loaded --matrix or None). A random problem's size is checked here (check_size: 32-bit indices, host memory)."""
    from ..core.problem import check_real_matrix, check_size, nnz_of  # noqa: PLC0415
    if a.matrix:
        if a.shape or a.density is not None:
            raise UserError("give either --matrix or --shape/--density, not both")
        mat = load_matrix(a.matrix)
        check_real_matrix(mat, f"matrix file {a.matrix!r}", a.dtype)  # also: all zeros, denser than 50 %
        m, k = mat.shape
        check_size(m, k, a.n, int(mat.nnz), a.dtype)
        return m, k, int(mat.nnz), mat
    if not a.shape or a.density is None:
        raise UserError("tune needs --shape MxK and --density d (or --matrix FILE)")
    m, k = a.shape
    nnz = nnz_of(m, k, a.density)
    check_size(m, k, a.n, nnz, a.dtype, build=True)
    return m, k, nnz, None


def _problem_from_args(a, plan) -> Problem:
    m, k, _, mat = plan
    if mat is not None:
        return Problem.from_matrix(mat, a.n, a.dtype, layout=a.layout)
    return Problem.random(m, k, a.n, a.density, a.dtype, a.pattern, a.seed, a.layout)


def _check_storage_args(a) -> None:
    """--storage / --workers of tune and bench: checked before anything is written, and the storage guarded
    (store/guard.py) before any queue or storage object is built."""
    if a.storage is None:
        raise UserError("--workers needs --storage URL (the database the workers share)")
    if getattr(a, "matrix", None):
        raise UserError("--matrix with --storage is not supported: the workers rebuild the problem from "
                        "--shape/--density/--seed")
    if a.grace is not None and a.grace <= a.heartbeat:
        raise UserError(f"--grace ({a.grace} s) must be longer than --heartbeat ({a.heartbeat} s)")
    from ..store import guard  # noqa: PLC0415
    guard.storage_for_write(a.storage)


def _spmm_only(a, what: str) -> None:
    """--op spmm's defaults filled in (--n, --layout); SDDMM's --k given without --op sddmm: one line."""
    if a.k is not None:
        raise UserError(f"--k is SDDMM's (K, the columns of X and Y): give --op sddmm with it ({what} of SpMM takes "
                        "--n, the columns of B)")
    a.n = DEFAULT_N if a.n is None else a.n
    a.layout = a.layout or "kn"


def _sddmm_refused(a, options) -> None:
    """The options (name, given) of SpMM that --op sddmm does not take: one line for the first one given."""
    for name, given in options:
        if given:
            raise UserError(f"{name} is not an option of --op sddmm (SDDMM: --shape MxN of the mask, --density, --k K, "
                            "--dtype; the mask from --matrix)")


def cmd_tune(a) -> int:
    from ..tuning.tuner import TuneOptions, tune  # noqa: PLC0415
    if a.op != "spmm" and a.rank != "cold":
        raise UserError(f"--rank {a.rank} is an option of --op spmm (--op {a.op} picks its winner by its own times)")
    if a.op == "conv3x3":
        from .conv import cmd_tune_conv  # noqa: PLC0415
        return cmd_tune_conv(a)
    conv_layout_refused(a)  # conv3x3's options with another operator: one line
    if a.op == "sddmm":
        return cmd_tune_sddmm(a)
    if a.op == "spmm_t":
        from .spmm_t import cmd_tune_spmm_t  # noqa: PLC0415
        return cmd_tune_spmm_t(a)
    _spmm_only(a, "tune")
    check_options(a.trials, a.sampler, a.timeout)
    families, vendors = _family_options(a.families)
    scaleout = a.storage is not None or a.workers != 1
    if scaleout:
        _check_storage_args(a)
    plan = _problem_plan(a)  # bad input or a problem too large: refused before anything is allocated
    db = _checked_db(a.db)
    if scaleout:
        return _tune_scaleout(a, plan, families, db, vendors)
    from ..core.problem import check_size  # noqa: PLC0415
    from ..device.gpu import gpu_info  # noqa: PLC0415
    info = gpu_info()  # no GPU: one line, exit 2, nothing written, no matrix built
    m, k, nnz, _ = plan
    check_size(m, k, a.n, nnz, a.dtype, gpu_memory=info.memory_bytes, gpu_name=info.name)
    problem = _problem_from_args(a, plan)
    report = tune(problem, TuneOptions(trials=a.trials, timeout=a.timeout, sampler=a.sampler, seed=a.seed,
                                       db=db, progress=not a.no_progress, families=families,
                                       warm_start=not a.cold_start, vendors=vendors, allow_tf32=a.allow_tf32,
                                       rank=a.rank))
    print(json.dumps(report, indent=2, default=str) if a.json else _report_text(report))
    return 0


def cmd_tune_sddmm(a) -> int:
    """`tune --op sddmm`: the options checked (one line, exit 2, before anything is allocated or written), then
    tuning.sddmm_tune on this GPU; the report."""
    from ..core.problem import check_real_matrix, nnz_of  # noqa: PLC0415
    from ..tuning.sddmm_tune import GpuSddmmTuner, SddmmProblem, check_sddmm_size, split_sddmm_families  # noqa: PLC0415
    from ..tuning.tuner import TuneOptions  # noqa: PLC0415
    _sddmm_refused(a, (("--n", a.n is not None), ("--layout", a.layout is not None), ("--allow-tf32", a.allow_tf32),
                       ("--storage", a.storage is not None), ("--workers", a.workers != 1)))
    check_options(a.trials, a.sampler, a.timeout)
    families, vendors = split_sddmm_families(a.families)
    k = a.k if a.k is not None else DEFAULT_K
    mat = None
    if a.matrix:
        if a.shape or a.density is not None:
            raise UserError("give either --matrix or --shape/--density, not both")
        mat = load_matrix(a.matrix)
        check_real_matrix(mat, f"matrix file {a.matrix!r}", a.dtype, dense_limit=None)
        (m, n), nnz = mat.shape, int(mat.nnz)
        check_sddmm_size(m, n, k, nnz, a.dtype)
    else:
        if not a.shape or a.density is None:
            raise UserError("tune --op sddmm needs --shape MxN (the mask) and --density d (or --matrix FILE)")
        (m, n), nnz = a.shape, nnz_of(*a.shape, a.density)
        check_sddmm_size(m, n, k, nnz, a.dtype, build=True)
    db = _checked_db(a.db)
    from ..device.gpu import gpu_info  # noqa: PLC0415
    info = gpu_info()  # no GPU: one line, exit 2, nothing written, no mask built
    check_sddmm_size(m, n, k, nnz, a.dtype, gpu_memory=info.memory_bytes, gpu_name=info.name)
    problem = (SddmmProblem.from_mask(mat, k, a.dtype, seed=a.seed) if mat is not None else
               SddmmProblem.random(m, n, k, a.density, a.dtype, a.pattern, a.seed))
    opts = TuneOptions(trials=a.trials, timeout=a.timeout, sampler=a.sampler, seed=a.seed, db=db,
                       progress=not a.no_progress, families=families, warm_start=not a.cold_start, vendors=vendors)
    tuner = GpuSddmmTuner(problem, opts)
    report = tuner.finish(tuner.search())
    print(json.dumps(report, indent=2, default=str) if a.json else _sddmm_report_text(report))
    return 0


def _sddmm_report_text(r: dict) -> str:
    """tune --op sddmm's report: the problem, the best kernel, its time, the floor, cuSPARSE and the dense path."""
    p, b, base, s = r["problem"], r["best"], r["baselines"], r["speedup"]
    dense = f"cuBLAS {p['dtype'].upper()} X @ Y^T, then the mask"
    lines = [
        f"problem   SDDMM out = (X @ Y^T) at the mask S, times S's values: S {p['m']}x{p['n']} ({p['pattern']}, "
        f"density {p['density']:g}, nnz {p['nnz']}), X {p['m']}x{p['k']}, Y {p['n']}x{p['k']}, {p['dtype']}",
        f"gpu       {r['gpu']} (cc {r['cc']}), driver {r['driver']}, CUDA {r['cuda']}, CuPy {r['cupy']}",
        f"best      {b['family']} {json.dumps(b['config'], sort_keys=True)}",
        f"time      {b['time_us']:.2f} us ({'synthetic objective, test only' if r.get('synthetic') else 'median, CUDA-graph replay'})  "
        f"{b['gflops']:.0f} GFLOP/s  rel err {b['max_rel_err']:.1e}",
        f"floor     {_fmt_us(r['floor_us'])} (max of bytes / copy bandwidth, FLOPs / FMA peak)",
        f"cuSPARSE  {_fmt_us(base['cusparse_us'])}  -> {_fmt_x(s['vs_cusparse'])}"
        + ("  (cuSPARSE SDDMM has no bf16)" if p["dtype"] == "bf16" else ""),
        f"dense     {_fmt_us(base['dense_us'])}  -> {_fmt_x(s['vs_dense'])}  ({dense})",
        f"trials    {r['trials']['complete']} ok, {r['trials']['failed']} failed, {r['trials']['pruned']} infeasible "
        f"rejected; {r['trials']['new']} new this run ({r['trials']['stopped']})",
        f"stored    record {r['record_id']} (op sddmm) in {r['db']}" + ("" if r["record_is_best"] else
                                                                    " (an earlier record is faster)"),
    ]
    c = r.get("chosen") or {}
    if c.get("vendor"):
        lines.append(f"chosen    {c['family']} {json.dumps(c['config'], sort_keys=True)} {_fmt_us(c['time_us'])}, "
                     f"{_fmt_x(c.get('sparse_over_chosen'))} faster than the tuned kernel: the runtime runs {c['runs']} "
                     f"(record {c['record_id']})")
    return "\n".join(lines)


def _scaleout(a):
    """The shared storage's queue (built only after _check_storage_args and the GPU check passed)."""
    from ..tuning.queue import ProblemQueue  # noqa: PLC0415
    return ProblemQueue(a.storage, a.heartbeat, a.grace)


def _run_workers(a, so, db, ids, deadline=None):
    """One worker in this process (--workers 1), or --workers K processes over the visible GPUs; only the problems
    `ids`; no new problem claimed after `deadline` (a time.time())."""
    from ..tuning.spawn import local_devices, spawn_workers  # noqa: PLC0415
    from ..tuning.worker import run_worker  # noqa: PLC0415
    if a.workers == 1:
        run_worker(a.storage, db, only=ids, heartbeat=a.heartbeat, grace=a.grace, deadline=deadline)
    else:
        local_devices(a.workers)  # a GPU is visible: checked before anything starts
        codes = spawn_workers(a.storage, db, a.workers, only=ids, heartbeat=a.heartbeat, grace=a.grace,
                              deadline=deadline)
        if any(codes):
            print(f"sparse-autotune: worker exit statuses {codes}", file=sys.stderr)


def _tune_scaleout(a, plan, families, db, vendors=None) -> int:
    from ..tuning.queue import problem_spec  # noqa: PLC0415
    from ..tuning.spawn import local_devices  # noqa: PLC0415
    local_devices(a.workers)  # no GPU (or too few): refused before the storage is created or written
    problem = _problem_from_args(a, plan)
    so = _scaleout(a)
    [rid] = so.enqueue([problem_spec(problem, a.trials, a.timeout, a.sampler, families, warm_start=not a.cold_start,
                                     vendors=vendors, allow_tf32=a.allow_tf32, rank=a.rank)])
    _run_workers(a, so, db, [rid])
    [row] = so.problems([rid])
    so.dispose()
    if row["state"] != "done":
        raise UserError(f"problem {rid} is {row['state']}" + (f": {row['error']}" if row["error"] else ""))
    report = json.loads(row["result"])
    print(json.dumps(report, indent=2, default=str) if a.json else _report_text(report))
    return 0


def cmd_worker(a) -> int:
    from ..store import guard  # noqa: PLC0415
    from ..tuning.spawn import local_devices  # noqa: PLC0415
    from ..tuning.worker import run_worker  # noqa: PLC0415
    only = a.problems  # a list of queue ids (checked when parsed), or None
    if a.grace is not None and a.grace <= a.heartbeat:
        raise UserError(f"--grace ({a.grace} s) must be longer than --heartbeat ({a.heartbeat} s)")
    guard.storage_for_write(a.storage)  # another application's database: refused before anything is created
    db = _checked_db(a.db)
    local_devices(1)  # no GPU: one line, exit 2, before the storage is created or joined
    run_worker(a.storage, db, only=only, heartbeat=a.heartbeat, grace=a.grace,
               deadline=None if a.budget is None else time.time() + a.budget)
    return 0


def cmd_status(a) -> int:
    from ..tuning.queue import ProblemQueue  # noqa: PLC0415
    from ..tuning.status import status, status_text  # noqa: PLC0415
    from ..store import guard  # noqa: PLC0415
    guard.storage_for_read(a.storage)  # a read: a missing storage or one without the queue is refused, not created
    so = ProblemQueue(a.storage)
    st = status(so)
    print(json.dumps(st.to_dict(), indent=1, default=str) if a.json else status_text(st, so.label))
    so.dispose()
    return 0


def cmd_lookup(a) -> int:
    from ..runtime.lookup import lookup  # noqa: PLC0415
    _note_missing_db(a.db)
    if a.op == "conv3x3":
        from .conv import cmd_lookup_conv  # noqa: PLC0415
        return cmd_lookup_conv(a)
    conv_layout_refused(a)  # conv3x3's options with another operator: one line
    if a.op == "sddmm":
        return _lookup_sddmm(a)
    if a.op == "spmm_t":
        from .spmm_t import cmd_lookup_spmm_t  # noqa: PLC0415
        return cmd_lookup_spmm_t(a)
    _spmm_only(a, "lookup")
    (m, k), n = a.shape, a.n  # checked when parsed
    res = lookup(m, k, n, a.density, a.dtype, gpu=a.gpu, db=a.db, fallback=not a.exact, allow_tf32=a.allow_tf32,
                 layout=a.layout)
    if a.json:
        print(json.dumps(None if res is None else res.__dict__, default=str))
    elif res is None:
        print("no stored config for this problem")
    else:
        where = "built-in default (the first known-good config)" if res.record_id is None else (
            f"record {res.record_id} in {res.db}, tuned on {res.gpu} for "
            f"{res.key[0]}x{res.key[1]} N={res.key[2]} d={res.key[3]:g} {res.key[4]} ({res.time_us:.2f} us)")
        if res.source == "default" and res.record_id is not None:
            where = "built-in default: the shipped records' most frequent winner for this dtype, N range and " \
                    f"density range; its config from {where}"
        dist = f", distance {res.distance:.2f}" if res.source in ("bucket", "nearest", "same-arch") and res.distance else ""
        adapted = (f"\n  adapted to N={n}; stored as {json.dumps(res.stored_config, sort_keys=True)}"
                   if res.stored_config else "")
        from ..core.vendor import describe  # noqa: PLC0415
        runs = describe(res.family, res.config, m, k, a.dtype, a.layout)
        runs = f"\n  runs {runs}" if runs else ""
        note = f"\n  {res.note}" if getattr(res, "note", None) else ""  # a vendor path the record's baselines chose
        print(f"{res.source}{dist}: {res.family} {json.dumps(res.config, sort_keys=True)}\n  from {where}{adapted}{runs}"
              f"{note}{_layout_line(res)}")
    return 0


def _note_missing_db(db: str | None) -> None:
    """lookup --db naming no existing file: a miss there, not an error (the library's lookup treats a database not
    yet tuned into the same way), but said on stderr in one line, so that a mistyped path does not pass unnoticed."""
    from ..store import guard  # noqa: PLC0415
    if db and guard.survey(db).state == "missing":
        print(f"sparse-autotune: note: database {db!r} does not exist (nothing read from it, nothing created); "
              "searched the databases shipped with the package", file=sys.stderr)


def _lookup_sddmm(a) -> int:
    """`lookup --op sddmm`: the best record of the operator sddmm for the mask's shape, density, K and dtype (runtime.sddmm)."""
    from ..ops.sddmm_paths import describe  # noqa: PLC0415
    from ..runtime.sddmm import lookup_sddmm  # noqa: PLC0415
    _sddmm_refused(a, (("--n", a.n is not None), ("--layout", a.layout is not None), ("--allow-tf32", a.allow_tf32)))
    (m, n), k = a.shape, (a.k if a.k is not None else DEFAULT_K)
    res = lookup_sddmm(m, n, k, a.density, a.dtype, gpu=a.gpu, db=a.db, fallback=not a.exact)
    if a.json:
        print(json.dumps(None if res is None else {"op": "sddmm", **res.__dict__}, default=str))
    elif res is None:
        print("no stored SDDMM config for this problem")
    else:
        where = "built-in default (the first known-good config of the SDDMM families)" if res.record_id is None else (
            f"record {res.record_id} (op sddmm) in {res.db}, tuned on {res.gpu} for mask {res.key[0]}x{res.key[2]} "
            f"K={res.key[1]} d={res.key[3]:g} {res.key[4]} ({res.time_us:.2f} us)")
        dist = f", distance {res.distance:.2f}" if res.source in ("nearest", "same-arch") and res.distance else ""
        print(f"{res.source}{dist}: {res.family} {json.dumps(res.config, sort_keys=True)}\n  from {where}\n"
              f"  runs {describe(res.family, res.config, m, n, a.dtype)}")
    return 0


def _layout_line(res) -> str:
    """lookup's line on the layout path of an nk answer (none for kn)."""
    if res.layout != "nk":
        return ""
    how = {"native": "native: one kernel reads x (N x K) and writes y (N x M) with the bias",
           "staged": "staged: x transposed into a K x N workspace, the kn kernel into M x N, then y = C^T + bias "
                     "(3 kernels)"}.get(res.path, str(res.path))
    src = "" if res.record_layout == "nk" or res.record_id is None else (
        f" (no nk record: a {res.record_layout} record serves it)")
    return f"\n  layout nk, {how}{src}"


def cmd_bench(a) -> int:
    from pathlib import Path  # noqa: PLC0415
    from ..tuning.suite import run_suite, suite_cases, summary  # noqa: PLC0415
    if a.suite == "search":
        from ..tuning.searchbench import run_from_args  # noqa: PLC0415
        return run_from_args(a, None if a.replay_only else _checked_db(a.db))
    if a.measure_only or a.replay_only or a.problems:
        raise UserError("--measure-only, --replay-only and --problems apply to --suite search only")
    suite_cases(a.suite)  # validates the name before the GPU is touched
    if (a.first_wins or a.fastest_wins) and not a.merge:
        raise UserError(f"{'--first-wins' if a.first_wins else '--fastest-wins'} applies to --merge only")
    if a.merge:
        from ..tuning.suite import write_merged  # noqa: PLC0415
        records = write_merged([Path(p) for p in a.merge], a.suite, Path(a.out), a.first_wins, a.fastest_wins)
        print(json.dumps(summary(records, a.suite), indent=1))
        return 0
    check_options(a.trials)
    scaleout = a.storage is not None or a.workers != 1
    shard = None
    if a.shard is not None:
        from ..tuning.suite import parse_shard  # noqa: PLC0415
        shard = parse_shard(a.shard)
        if not scaleout:
            raise UserError("--shard needs --workers K or --storage URL (the queue that remembers the cases done)")
    if a.retry_failed and not scaleout:
        raise UserError("--retry-failed needs --workers K or --storage URL (the queue that remembers failed cases)")
    retune = None
    if a.retune is not None:
        from ..tuning.suite import parse_case_filter, retune_indices  # noqa: PLC0415
        retune = parse_case_filter(" ".join(a.retune))
        retune_indices(a.suite, retune)  # none matching: refused before the storage is touched
        if not scaleout:
            raise UserError("--retune needs --workers K or --storage URL (the studies of the cases' first run, which "
                            "it continues)")
    if a.families is not None:
        from ..core.space import select_spaces  # noqa: PLC0415
        select_spaces(a.families)  # an unknown name: refused before the storage is touched
        if not scaleout:
            raise UserError("--families needs --workers K or --storage URL")
    only = None
    if a.only is not None:
        from ..tuning.suite import parse_case_filter, retune_indices  # noqa: PLC0415
        only = parse_case_filter(" ".join(a.only), "--only")
        retune_indices(a.suite, only, "--only")  # none matching: refused before the storage is touched
        if not scaleout:
            raise UserError("--only needs --workers K or --storage URL")
    if scaleout:
        _check_storage_args(a)
    db = _checked_db(a.db)
    if scaleout:
        from ..tuning.suite import run_suite_scaleout  # noqa: PLC0415
        from ..tuning.spawn import local_devices  # noqa: PLC0415
        local_devices(a.workers)  # no GPU (or too few): refused before the storage is created or written
        so = _scaleout(a)
        deadline = None if a.budget is None else time.time() + a.budget
        records = run_suite_scaleout(a.suite, a.trials, Path(a.out), so,
                                     lambda ids: _run_workers(a, so, db, ids, deadline), shard=shard,
                                     retry_failed=a.retry_failed, retune=retune, retune_trials=a.retune_trials,
                                     only=only, families=a.families)
        print(json.dumps(summary(records, a.suite), indent=1))
        return 0
    from ..device.gpu import gpu_info  # noqa: PLC0415
    gpu_info()
    records = run_suite(a.suite, a.trials, Path(a.out), db, a.budget)
    print(json.dumps(summary(records, a.suite), indent=1))
    return 0


def cmd_tune_model(a) -> int:
    from pathlib import Path  # noqa: PLC0415
    from ..core import checkpoint as mdl  # noqa: PLC0415
    from ..tuning.model import tune_model  # noqa: PLC0415
    from ..tuning.tuner import TuneOptions  # noqa: PLC0415
    from ..core.problem import DENSE_LIMIT, check_real_matrix, check_size  # noqa: PLC0415
    check_options(a.trials, a.sampler, a.timeout)
    dtypes = [check_dtype(d.strip()) for d in a.dtype.split(",") if d.strip()]
    if not dtypes:
        raise UserError("--dtype: no dtype given")
    if a.prune is None and a.density is not None:
        raise UserError("--density needs --prune magnitude (without --prune the existing zeros are used)")
    if a.prune is not None and a.density is None:
        raise UserError("--prune magnitude needs --density D")
    if a.prune_scope not in mdl.PRUNE_SCOPES:
        raise UserError(f"unknown --prune-scope {a.prune_scope!r}: choose one of {', '.join(mdl.PRUNE_SCOPES)}")
    density = a.density  # checked when parsed
    db = None if a.dry_run else _checked_db(a.db)
    ckpt = mdl.load_checkpoint(a.checkpoint)
    conv3 = mdl.find_conv3x3_layers(ckpt, a.include, a.exclude)  # 3x3 convs: conv3x3 problems (tuning.model.conv_plan)
    try:
        layers = mdl.find_layers(ckpt, a.include, a.exclude)
    except UserError:
        if not conv3:
            raise
        layers = []  # only 3x3 conv layers
    conv_layout = a.layout if a.layout in ("nchw", "nhwc") else "nchw"
    if a.layout in ("nchw", "nhwc"):
        a.layout = None  # the SpMM layers keep their kinds' layouts
    conv_chosen, conv_notes = mdl.select_conv3x3(conv3, a.spatial, a.include)
    ns = mdl.n_values(layers, a.n, a.batch, a.seq, a.spatial)
    if a.n_buckets:
        ns = {name: sorted({n_bucket(x) for x in v}) for name, v in ns.items()}
    def check_weight(lay):  # before any conversion: complex or non-finite values, all zeros, too dense
        try:
            check_real_matrix(lay.weight, f"layer {lay.name}", "fp16" if "fp16" in dtypes else "fp32",
                              dense_limit=None if a.prune else DENSE_LIMIT)
        except UserError as exc:
            prune = " (--prune magnitude --density D)" if "denser than" in str(exc) else ""
            raise UserError(f"{exc}{prune}; or leave it out: --exclude '{lay.name}'") from None
    for lay in layers:
        check_weight(lay)
        for n in ns[lay.name]:  # N out of range
            check_n(n)
    for lay, *_ in conv_chosen:
        check_weight(lay)
    if layers:  # (none where the checkpoint has only 3x3 conv layers)
        layers = mdl.prune_layers(layers, density, a.prune_scope) if a.prune else mdl.sparse_layers(layers)
    if conv_chosen:  # pruned among themselves (with --prune-scope global: one threshold over the 3x3 layers)
        pruned = (mdl.prune_layers if a.prune else lambda ls, *_: mdl.sparse_layers(ls))(
            [c[0] for c in conv_chosen], density, a.prune_scope)
        conv_chosen = [(p, *c[1:]) for p, c in zip(pruned, conv_chosen)]
    from ..tuning.model import conv_plan  # noqa: PLC0415
    conv_jobs = conv_plan(conv_chosen, mdl.parse_int_list(a.batch, "--batch") if a.batch is not None else [1],
                          dtypes, conv_layout)
    for note in conv_notes:
        print(f"sparse-autotune: {note}", file=sys.stderr)
    name = a.model or Path(a.checkpoint).stem
    if a.save_sparse:
        extras = mdl.biases_of(ckpt, layers)
        out = mdl.save_bundle(a.save_sparse, layers, extras,
                              {"model": name, "prune": a.prune, "density": density, "prune_scope": a.prune_scope})
        print(f"wrote {len(layers)} sparse layers and {len(extras)} biases to {out}", file=sys.stderr)
    jobs = mdl.plan(layers, ns, dtypes, a.layout)
    for j in jobs:  # 32-bit indices of the kernels, before anything is tuned (or listed)
        check_size(j.m, j.k, j.n, j.layers[0].nnz, j.dtype)
    if a.dry_run:
        plan = {"model": name, "layers": [{"name": lay.name, "kind": lay.kind, "shape": list(lay.shape),
                                           "nnz": lay.nnz, "density": round(lay.density, 6), "n": ns[lay.name]}
                                          for lay in layers],
                "problems": [{"m": j.m, "k": j.k, "density": j.density, "dtype": j.dtype, "n": j.n,
                              "layout": j.layout, "layers": [lay.name for lay in j.layers]} for j in jobs]}
        if conv3:  # 3x3 conv layers: conv3x3 problems, listed apart (op conv3x3; n = output pixels of all images)
            plan["conv3x3_problems"] = [
                {"op": "conv3x3", "m": j.m, "k": j.k, "h": j.geometry.h, "w": j.geometry.w, "stride": j.geometry.stride,
                 "batch": j.geometry.batch, "density": j.density, "dtype": j.dtype, "n": j.n, "layout": j.layout,
                 "layers": [lay.name for lay in j.layers]} for j in conv_jobs]
            plan["conv3x3_skipped"] = [lay.name for lay in conv3 if lay.name not in {c[0].name for c in conv_chosen}]
        if a.json:
            print(json.dumps(plan, indent=1))
        else:
            for j in plan.get("conv3x3_problems", []):
                print(f"problem conv3x3 {j['m']}x{j['k']}x3x3 {j['h']}x{j['w']}b{j['batch']}s{j['stride']} "
                      f"d={j['density']:g} {j['dtype']} {j['layout']}: {len(j['layers'])} layer(s)")
            for lay in plan["layers"]:
                print(f"layer   {lay['name']} ({lay['kind']}) {lay['shape'][0]}x{lay['shape'][1]} "
                      f"nnz {lay['nnz']} density {lay['density']:g} N {','.join(map(str, lay['n']))}")
            for j in plan["problems"]:
                print(f"problem {j['m']}x{j['k']} d={j['density']:g} {j['dtype']} N={j['n']} {j['layout']}: "
                      f"{len(j['layers'])} layer(s)")
            print(f"{len(layers)} layers, {len(jobs)} distinct problems")
        return 0
    families, vendors = _family_options(a.families)
    from ..device.gpu import gpu_info  # noqa: PLC0415
    info = gpu_info()
    for j in jobs:
        check_size(j.m, j.k, j.n, j.layers[0].nnz, j.dtype, gpu_memory=info.memory_bytes, gpu_name=info.name)
    opts = TuneOptions(trials=a.trials, timeout=a.timeout, sampler=a.sampler, seed=a.seed, db=db,
                       progress=not a.no_progress, families=families, vendors=vendors, allow_tf32=a.allow_tf32,
                       rank=a.rank)
    order = {k: i for i, k in enumerate(ckpt.tensors)}  # 3x3 conv layers among the others, in checkpoint order
    all_layers = sorted(layers + [c[0] for c in conv_chosen], key=lambda lay: order.get(lay.name, len(order)))
    res = tune_model(name, all_layers, jobs + conv_jobs, opts, info.name, progress=not a.no_progress,
                     budget_s=a.budget, log=(lambda m: None) if a.json else (lambda m: print(m, file=sys.stderr)))
    summary = {"model": res.model, "layers": res.layers, "problems": res.problems, "tuned": res.tuned,
               "skipped_done_before": res.skipped, "failed": res.failed, "stopped": res.stopped, "db": db}
    if conv3:  # the 3x3 conv layers: tuned as conv3x3 problems (records op conv3x3, rows in the model's layer list)
        summary["conv3x3_layers"] = [c[0].name for c in conv_chosen]
        summary["conv3x3_problems"] = len(conv_jobs)
        summary["conv3x3_skipped"] = [lay.name for lay in conv3 if lay.name not in set(summary["conv3x3_layers"])]
    conv_line = "" if not conv3 else (
        f"\n  3x3 conv layers as conv3x3 problems ({len(conv_jobs)}): "
        f"{', '.join(summary['conv3x3_layers']) or 'none'}; skipped (no --spatial): "
        f"{', '.join(summary['conv3x3_skipped']) or 'none'}")
    print(json.dumps(summary, indent=1) if a.json else
          f"{res.model}: {res.layers} layers, {res.problems} distinct problems: {res.tuned} tuned now, "
          f"{res.skipped} done before, {res.failed} failed ({res.stopped}); "
          f"see `sparse-autotune report --model {res.model} --out DIR`" + conv_line)
    return 130 if res.interrupted else 0


def cmd_report(a) -> int:
    from pathlib import Path  # noqa: PLC0415
    from ..commands.report import write_report  # noqa: PLC0415
    db = _checked_db(a.db, write=False)  # a read: an existing database, nothing created
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
        if s.supports_layout("nk"):  # the rest serve nk (--layout nk) through the staged path
            state += "  [nk layout native]"
        print(f"{s.family:16s} {s.size(a.dtype):7d} configs ({a.dtype})  {s.description}{state}")
        for p in s.params:
            cond = f"  when {p.when}" if p.when else ""
            print(f"    {p.name:16s} {p.choices(a.dtype)}{cond}")
    from ..core import vendor  # noqa: PLC0415
    for fam in vendor.VENDOR_FAMILIES:  # timed beside every search's winner; a record where one wins
        cfgs = vendor.configs(fam, a.dtype, allow_tf32=True)
        print(f"{fam:16s} {len(cfgs):7d} configs ({a.dtype})  vendor path, timed beside the search's winner "
              f"(--families names it; tf32: --allow-tf32): {', '.join(json.dumps(c) for c in cfgs)}")
    return 0


def main(argv=None) -> int:
    def run() -> int:
        args = _parser().parse_args(argv)
        return {"tune": cmd_tune, "lookup": cmd_lookup, "bench": cmd_bench, "spaces": cmd_spaces, "db": cmd_db,
                "tune-model": cmd_tune_model, "report": cmd_report, "worker": cmd_worker,
                "status": cmd_status}[args.cmd](args)
    try:
        return exit_status("sparse-autotune", run)
    except BrokenPipeError:  # the output was piped into a reader that stopped (| head): not an error of ours
        import os  # noqa: PLC0415
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes it
        except (OSError, ValueError):
            pass
        return 141  # what a shell reports for a command ended by SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
