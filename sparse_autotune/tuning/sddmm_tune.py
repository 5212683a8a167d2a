"""Tuning SDDMM (ops.sddmm): out[p] = S.data[p] * dot(X[row(p)], Y[col(p)]) for the nonzeros p of a CSR mask S (M x N),
X (M x K), Y (N x K); the winner stored in the tuning database as a record of the operator sddmm (store.db: m, n the
mask's shape, k the columns of X and Y, density nnz / (M * N)).

The machinery is the SpMM tuner's (tuner.Tuner): the same Optuna search (search.Search: TPE by default, the known-good
configs first, then the winners of the nearest SDDMM problems tuned on this GPU model, infeasible configs rejected
before compiling, its study in the tuning database so a rerun resumes), the same progress bar, the same GPU-only
timing (device.timing.time_launches: CUDA-graph replay, X and Y rotated through buffers larger than twice the L2
cache), the same verification (device.verify.check: the output poisoned with NaN, the relative Frobenius error against
a float64 reference within core.problem.TOLERANCE; fresh random X and Y at every check) and the same record store.
What differs: the spaces (search_spaces/sddmm/*.toml, ops.sddmm), a candidate's build (ops.sddmm.build_sddmm, compiled
with NVRTC in the search's threads), the float64 reference (ops.sddmm.sddmm_reference's product, computed on the GPU
in float64: `SddmmContext.reference`), and the baselines: cuSPARSE SDDMM (fp32, fp16) and the dense path (cuBLAS
X @ Y^T, then the mask: ops.sddmm_paths), timed the same way in the same process in finish(). They are the vendor
candidates too: where one is faster than the best kernel (and verified within the tolerance), a record of it is stored
beside the kernel's (family cusparse / dense) and becomes the key's best, which the runtime (runtime.sddmm) then runs.
Baseline times go to the record's columns cusparse_us and cublas_<dtype>_us (the dense path at the dtype's precision).

SddmmTuner is the part without a GPU (options, spaces, the search, the record and the report); GpuSddmmTuner adds the
device (prepare, evaluate, the final timings: `measure`). A test can subclass SddmmTuner with a synthetic evaluate and
measure (tests/test_sddmm_tune.py). `tune_sddmm` runs a GpuSddmmTuner.
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .. import __version__
from ..core.problem import (DTYPES, PATTERNS, TOLERANCE, check_density, check_dim, check_dtype, check_real_matrix,
                            check_seed, host_values, matrix_hash, nnz_of, random_matrix)
from ..errors import CandidateError, UserError
from ..ops import sddmm as S
from ..ops import sddmm_paths as P
from ..store.db import SDDMM, Record, TuningDB
from .search import check_options
from .tuner import GpuTurnMixin, Tuner, TuneOptions, trials_dict
from .vendor import Measured, add_vendor_trials

# the dense path's M x N workspace may take at most this fraction of the GPU's memory (else it is not timed)
DENSE_MEMORY_FRACTION = 0.25


def _no_tf32(dtype: str) -> None:
    """tf32 (fp32 storage, TF32 tensor cores) is SpMM's opt-in dtype (core.problem); SDDMM has no TF32 path."""
    if dtype == "tf32":
        raise UserError("SDDMM computes fp32, fp16 or bf16 (tf32 is an SpMM dtype)")


@dataclass
class SddmmProblem:
    """One SDDMM tuning problem: the mask S (M x N, scipy CSR, float32 values rounded as the kernels of the dtype store
    them), K (the columns of X and Y), the dtype. density: the key's (requested, or nnz / (M * N) of a given mask)."""

    m: int
    n: int
    k: int
    density: float
    dtype: str = "fp32"
    pattern: str = "uniform"
    seed: int = 0
    mask: sp.csr_matrix | None = field(default=None, repr=False)
    op = SDDMM
    layout = "kn"  # the record's layout column (SDDMM has one layout)

    @classmethod
    def random(cls, m, n, k, density, dtype="fp32", pattern="uniform", seed=0) -> "SddmmProblem":
        """A random mask of the density (core.problem.random_matrix: uniform, power-law or equal row lengths; standard
        normal values, never zero); every input checked before anything is built."""
        check_dtype(dtype)
        _no_tf32(dtype)
        m, n, k = check_dim(m, "M"), check_dim(n, "N"), check_dim(k, "K")
        density = check_density(density)
        seed = check_seed(seed)
        if pattern not in PATTERNS:
            raise UserError(f"unknown pattern {pattern!r}: choose one of {', '.join(PATTERNS)}")
        check_sddmm_size(m, n, k, nnz_of(m, n, density), dtype, build=True)
        mask = random_matrix(m, n, density, pattern, seed, DTYPES[dtype])
        return cls(m, n, k, round(float(density), 6), dtype, pattern, seed, mask)

    @classmethod
    def from_mask(cls, mask, k, dtype="fp32", pattern="matrix", seed=0) -> "SddmmProblem":
        """A problem of a given mask (scipy.sparse; its entries as stored, values rounded to the dtype) and K."""
        check_dtype(dtype)
        _no_tf32(dtype)
        if not sp.issparse(mask) or len(mask.shape) != 2 or 0 in mask.shape:
            raise UserError(f"the SDDMM mask must be a non-empty 2-D scipy.sparse matrix (got {type(mask).__name__} of "
                            f"shape {getattr(mask, 'shape', None)})")
        check_real_matrix(mask, "the mask", dtype, dense_limit=None)
        s = S.as_mask(mask)
        m, n = check_dim(s.shape[0], "M"), check_dim(s.shape[1], "N")
        k = check_dim(k, "K")
        check_sddmm_size(m, n, k, int(s.nnz), dtype)
        s = sp.csr_matrix((host_values(np.asarray(s.data, dtype=np.float32), DTYPES[dtype]), s.indices, s.indptr),
                          shape=s.shape)
        density = float(f"{max(s.nnz, 1) / (m * n):.6g}")  # 6 significant digits (never 0: lookup takes its log)
        return cls(m, n, k, density, dtype, pattern, check_seed(seed), s)

    @property
    def nnz(self) -> int:
        return int(self.mask.nnz)

    @property
    def flops(self) -> int:
        return S.flops(self.nnz, self.k)

    def key(self) -> str:
        """The problem's name (its study is named by it); never an SpMM problem's name."""
        return f"SDDMM_M{self.m}_N{self.n}_K{self.k}_d{self.density:g}_{self.dtype}_{self.pattern}"

    def fingerprint(self) -> str:
        return matrix_hash(self.mask)

    def min_bytes(self) -> int:
        return S.min_bytes(self.m, self.n, self.k, self.nnz, self.dtype)


def device_bytes(m: int, n: int, k: int, nnz: int, dtype: str) -> int:
    """GPU memory a tuning run of the problem needs, about: the mask's arrays (a few copies: a candidate's, the
    baselines'), X and Y with their float64 copies for the reference, the output and its reference. The dense path's
    M x N workspace is not counted: it is timed only where it fits (DENSE_MEMORY_FRACTION)."""
    es = np.dtype(DTYPES[dtype]).itemsize
    return int(nnz * (4 * (es + 12) + 8 + es) + 4 * (m + 1) * 4 + (m + n) * k * (4 * es + 8))


def check_sddmm_size(m: int, n: int, k: int, nnz: int, dtype: str, gpu_memory: int | None = None,
                     gpu_name: str | None = None, build: bool = False) -> int:
    """Refuse a problem the kernels (32-bit offsets: M * K, N * K and nnz below 2^31) or the memory cannot hold, in one
    line, before anything is allocated; `build`: a random mask is to be built on this host. Returns device_bytes."""
    from ..core.problem import _fmt_bytes, check_host_build  # noqa: PLC0415
    S._check_sizes(m, n, k, nnz)
    need = device_bytes(m, n, k, nnz, dtype)
    what = f"SDDMM mask {m}x{n} with {nnz} nonzeros, K={k}, {dtype}"
    if gpu_memory and need > gpu_memory:
        raise UserError(f"problem too large for the GPU: {what} needs about {_fmt_bytes(need)} of GPU memory; "
                        f"{gpu_name or 'this GPU'} has {_fmt_bytes(gpu_memory)}")
    if build:
        check_host_build(what, m, nnz)
    return need


def split_sddmm_families(families) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--families for SDDMM (a comma-separated string or a sequence; None: all) as (the kernel families to search, the
    vendor paths timed beside them: those named, all where none is named at all); a one-line UserError for an unknown
    name or for vendor paths only."""
    known = S.sddmm_families()
    if families is None or (isinstance(families, str) and not families.strip()):
        return known, P.VENDOR_FAMILIES
    names = [f.strip() for f in families.split(",")] if isinstance(families, str) else [str(f).strip() for f in families]
    names = [x for x in names if x]
    bad = [x for x in names if x not in known and not P.is_vendor(x)]
    if bad:
        raise UserError(f"unknown SDDMM kernel family {bad[0]!r}: choose from {', '.join(known)} (and the vendor paths "
                        f"{', '.join(P.VENDOR_FAMILIES)})")
    templated = tuple(dict.fromkeys(x for x in names if not P.is_vendor(x)))
    vendors = tuple(dict.fromkeys(x for x in names if P.is_vendor(x)))
    if not templated:
        raise UserError(f"--families {','.join(names)}: name at least one SDDMM kernel family to search besides the "
                        f"vendor paths ({', '.join(P.VENDOR_FAMILIES)})")
    return templated, vendors  # naming kernel families without a vendor path leaves the vendor paths out


@dataclass
class Final:
    """What finish() records of the search's winner and the vendor paths, measured again (measure())."""

    time_us: float
    rel_err: float
    timing: str = "graph"
    spread: float | None = None
    vendors: list = field(default_factory=list)  # Measured: candidates (time None where failed or not verified)
    baselines: dict = field(default_factory=dict)  # cusparse_us, dense_us (reported where within 2x the tolerance)
    baseline_errors: dict = field(default_factory=dict)
    baseline_timing: dict = field(default_factory=dict)
    floor_us: float | None = None
    ceilings: dict = field(default_factory=dict)


class SddmmTuner(Tuner):
    """The SDDMM tuning of one problem without the device: options, spaces, the search (tuner.Tuner.search), the
    record and the report. Subclasses set `gpu_name`, `cc`, `versions` and define evaluate(family, config[, prepared])
    and measure(res) -> Final (GpuSddmmTuner: on this GPU)."""

    cc = "0.0"
    versions = {"cuda": "", "driver": "", "cupy": ""}

    def _start_sddmm(self, problem: SddmmProblem, opts: TuneOptions, log, gpu_name: str, limits: dict) -> None:
        check_options(opts.trials, opts.sampler, opts.timeout)
        if opts.allow_tf32:
            raise UserError("--allow-tf32 is for SpMM (cuBLAS TF32 on a dense A); SDDMM's dense path runs at its dtype")
        families, vendors = split_sddmm_families(opts.families)
        self.vendors = tuple(opts.vendors) if opts.vendors is not None else vendors
        chosen = [s for s in S.load_sddmm_spaces() if s.family in families]
        self.spaces = [s for s in chosen if s.supports(problem.dtype)]
        if not self.spaces:
            raise UserError(f"no SDDMM kernel family of {', '.join(s.family for s in chosen)} computes {problem.dtype}")
        self.problem, self.opts, self.log = problem, opts, log
        self.gpu_name, self.limits = gpu_name, dict(limits)
        self.env = S.sddmm_env(problem.m, problem.n, problem.k, problem.nnz, problem.dtype)
        self.best_us = None
        self.db = TuningDB(opts.db, create=True)
        self.t_start = time.time()

    def seeds(self) -> list[tuple[str, dict]]:
        """The warm start: the configs of the nearest SDDMM problems tuned on this GPU model for this dtype."""
        if not self.opts.warm_start:
            return []
        from ..store.lookup import seed_configs  # noqa: PLC0415
        p = self.problem
        # store.db's key: (m, k, n) = (M, K, N); lookup's distance is symmetric in them
        seeds = seed_configs(self.db, p.m, p.k, p.n, p.density, p.dtype, self.gpu_name, p.pattern,
                             families={s.family for s in self.spaces}, op=SDDMM)
        if seeds:
            self.log(f"warm start: {len(seeds)} config(s) of the nearest tuned SDDMM problems are tried first")
        return seeds

    def measure(self, res) -> Final:
        raise NotImplementedError

    def describe_path(self, family: str, config: dict) -> str:
        """One line saying what a config runs (the report's chosen.runs; the spmm_t tuner, a subclass, has its own)."""
        p = self.problem
        return P.describe(family, config, p.m, p.n, p.dtype)

    def finish(self, res) -> dict:
        """The winner and the vendor paths measured again (measure), the winner's record stored (op sddmm), and the
        fastest verified vendor path's where it is faster (the key's best then); the report."""
        self._check_found(res)
        problem, opts, db = self.problem, self.opts, self.db
        name = self.study_name()
        fin = self.measure(res)
        gflops = problem.flops / (fin.time_us * 1e-6) / 1e9
        base = fin.baselines
        dense_col = f"cublas_{problem.dtype}_us"
        cols = {"cusparse_us": base.get("cusparse_us"), "cublas_fp32_us": None, "cublas_tf32_us": None,
                "cublas_fp16_us": None, "cublas_bf16_us": None}
        cols[dense_col] = base.get("dense_us")
        rec = Record(
            op=problem.op, gpu_name=self.gpu_name, gpu_cc=self.cc, m=problem.m, k=problem.k, n=problem.n,
            density=problem.density, dtype=problem.dtype, pattern=problem.pattern, layout=problem.layout,
            family=res.best_family, config_json=json.dumps(res.best_config, sort_keys=True), time_us=fin.time_us,
            gflops=gflops, **cols, floor_us=fin.floor_us, max_rel_err=fin.rel_err, trials=res.complete + res.failed,
            matrix_hash=problem.fingerprint(), study_name=name, package_version=__version__,
            cuda_version=self.versions["cuda"], driver_version=self.versions["driver"],
            cupy_version=self.versions["cupy"], created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
        db.store(rec)
        from ..core.vendor import choose  # noqa: PLC0415
        sparse = Measured(rec.family, dict(res.best_config), fin.time_us, fin.rel_err)
        cands = [c for c in fin.vendors if c.family in self.vendors]
        chosen, _ = choose([sparse] + cands)
        add_vendor_trials(getattr(self, "storage", db.url), name, cands, self.log)
        chosen_rec = rec
        if chosen is not None and chosen is not sparse:
            chosen_rec = db.store(rec.derived(family=chosen.family, config_json=json.dumps(chosen.config, sort_keys=True),
                                              time_us=chosen.time_us, max_rel_err=chosen.rel_err,
                                              gflops=problem.flops / (chosen.time_us * 1e-6) / 1e9))
            if chosen_rec.is_best:
                rec.is_best = False
            self.log(f"a vendor path is faster than the tuned kernel: {chosen.family} {json.dumps(chosen.config)} "
                     f"{chosen.time_us:.2f} us < {fin.time_us:.2f} us (record {chosen_rec.id})")
        db.dispose()
        chosen = chosen or sparse

        def ratio(x):
            return None if x is None else x / fin.time_us

        return {
            "op": problem.op,
            "problem": {"op": problem.op, "m": problem.m, "n": problem.n, "k": problem.k, "density": problem.density,
                        "nnz": problem.nnz, "dtype": problem.dtype, "pattern": problem.pattern,
                        "matrix_hash": problem.fingerprint(), "seed": problem.seed},
            "gpu": self.gpu_name, "cc": self.cc, "driver": self.versions["driver"], "cuda": self.versions["cuda"],
            "cupy": self.versions["cupy"], "package_version": __version__,
            "best": {"family": res.best_family, "config": res.best_config, "time_us": fin.time_us, "gflops": gflops,
                     "max_rel_err": fin.rel_err, "timing_spread": fin.spread, "timing": fin.timing,
                     "search_time_us": res.best_value},
            "baselines": {"cusparse_us": base.get("cusparse_us"), "dense_us": base.get("dense_us"),
                          "dense_column": dense_col},
            "baseline_errors": fin.baseline_errors, "baseline_timing": fin.baseline_timing,
            "speedup": {"vs_cusparse": ratio(base.get("cusparse_us")), "vs_dense": ratio(base.get("dense_us"))},
            "chosen": {"family": chosen.family, "config": chosen.config, "time_us": chosen.time_us,
                       "vendor": P.is_vendor(chosen.family), "record_id": chosen_rec.id,
                       "runs": self.describe_path(chosen.family, chosen.config),
                       "sparse_over_chosen": (fin.time_us / chosen.time_us) if chosen.time_us else None},
            "vendor_candidates": [c.as_dict() for c in cands],
            "floor_us": fin.floor_us, "ceilings": fin.ceilings,
            "trials": trials_dict(res, opts, self.interrupted),
            "study": name, "db": db.label, "record_id": rec.id, "record_is_best": rec.is_best,
            "elapsed_s": time.time() - self.t_start,
        }


class SddmmContext:
    """The problem on the device: the mask's row and column of every nonzero and its values (float64, for the reference),
    X and Y buffers rotated through more than twice the L2 cache, the output."""

    def __init__(self, problem: SddmmProblem, l2_bytes: int, seed: int = 0):
        from ..device.gpu import cupy  # noqa: PLC0415
        from ..device.timing import n_buffers  # noqa: PLC0415
        cp = self.cp = cupy()
        self.problem = problem
        p = problem
        es = np.dtype(DTYPES[p.dtype]).itemsize
        self.rng = cp.random.default_rng(seed + 1)
        self.rows = cp.asarray(np.repeat(np.arange(p.m, dtype=np.int64), np.diff(p.mask.indptr)))
        self.cols = cp.asarray(p.mask.indices.astype(np.int64))
        self.s64 = cp.asarray(host_values(np.asarray(p.mask.data, dtype=np.float32), DTYPES[p.dtype]).astype(np.float64))
        self.nbuf = n_buffers((p.m + p.n) * p.k * es, l2_bytes)
        self.xs = [self.random((p.m, p.k)) for _ in range(self.nbuf)]
        self.ys = [self.random((p.n, p.k)) for _ in range(self.nbuf)]
        self.out = cp.empty(p.nnz, dtype=DTYPES[p.dtype])

    def random(self, shape):
        from ..core.problem import storage  # noqa: PLC0415
        return storage(self.rng.standard_normal(shape, dtype=np.float32), self.problem.dtype)

    def reference(self, x, y):
        """ops.sddmm.sddmm_reference's product, in float64 on the GPU: S.data[p] * dot(X[row(p)], Y[col(p)]) (S's
        values rounded as the kernels of the dtype store them), in slices of the nonzeros."""
        from ..core.problem import as_float  # noqa: PLC0415
        cp = self.cp
        x64, y64 = as_float(x).astype(cp.float64), as_float(y).astype(cp.float64)
        nnz, k = self.problem.nnz, self.problem.k
        out = cp.empty(nnz, dtype=cp.float64)
        step = max(1, (1 << 24) // max(1, k))
        for lo in range(0, nnz, step):
            hi = min(nnz, lo + step)
            out[lo:hi] = self.s64[lo:hi] * cp.einsum("ij,ij->i", x64[self.rows[lo:hi]], y64[self.cols[lo:hi]])
        return out

    def fresh_check(self):
        """Fresh random X and Y and their float64 reference (every verification draws new inputs)."""
        p = self.problem
        x, y = self.random((p.m, p.k)), self.random((p.n, p.k))
        return x, y, self.reference(x, y)

    def launches(self, run) -> list:
        return [lambda i=i: run(self.xs[i], self.ys[i], self.out) for i in range(self.nbuf)]


class GpuSddmmTuner(GpuTurnMixin, SddmmTuner):
    """SDDMM tuning on this process's GPU, in its turn (device.turn): candidates compiled (prepare, in the search's
    threads), verified and timed (evaluate); the winner and the vendor paths measured again in finish (measure)."""

    context_class = SddmmContext  # the problem on the device (the spmm_t tuner, a subclass, has its own)

    def __init__(self, problem: SddmmProblem, opts: TuneOptions, log=lambda msg: print(msg, file=sys.stderr)):
        from ..device.gpu import gpu_info  # noqa: PLC0415
        from ..device.turn import current_gpu_key, turn_for  # noqa: PLC0415
        self.info = info = gpu_info()
        self._start_sddmm(problem, opts, log, info.name, info.limits())
        self.cc = info.cc
        self.versions = info.versions()
        self.turn = turn_for(current_gpu_key())
        self.turn_s = {"init": 0.0, "trials": 0.0, "verify": 0.0, "time": 0.0, "finish": 0.0}
        self.given_up = 0
        log(f"problem {problem.key()}: nnz={problem.nnz}, {problem.flops / 1e6:.1f} MFLOP; GPU {info.name} "
            f"(sm_{info.cc.replace('.', '')}); database {self.db.label}")
        with self._phase("init"):
            self.ctx = self.context_class(problem, info.l2_bytes, seed=opts.seed)

    def prepare(self, family: str, cfg: dict):
        """The candidate compiled for the mask and K (NVRTC; in the search's threads)."""
        p = self.problem
        try:
            return S.build_sddmm(p.mask, p.k, family, cfg, p.dtype, self.limits)
        except UserError as exc:  # a config this problem cannot run (the space's constraints should have said)
            raise CandidateError("build", str(exc)) from None

    def evaluate(self, family: str, cfg: dict, kern=None):
        """Verify (fresh X and Y, the output poisoned, float64 reference) and time one candidate (tuner.GpuTurnMixin,
        as the SpMM tuner does)."""
        ctx, p = self.ctx, self.problem
        if kern is None:
            kern = self.prepare(family, cfg)

        def fresh():
            x, y, ref = ctx.fresh_check()
            return (lambda: kern(x, y, ctx.out)), ref
        return self.verify_and_time(fresh, ctx.out, ctx.launches(kern), p.dtype, p.flops)

    def _vendor(self, family: str, config: dict, fin: Final) -> None:
        """One vendor path verified and timed like a candidate: a baseline where its error is within twice the
        tolerance (the dense path of fp16 / bf16 rounds twice), a candidate where within the tolerance itself."""
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import poison, rel_error  # noqa: PLC0415
        ctx, p = self.ctx, self.problem
        name = "cusparse" if family == P.CUSPARSE else "dense"
        t = err = None
        try:
            if family == P.DENSE:
                ws = p.m * p.n * np.dtype(DTYPES[p.dtype]).itemsize
                if self.info.memory_bytes and ws > DENSE_MEMORY_FRACTION * self.info.memory_bytes:
                    raise UserError(f"its {p.m}x{p.n} workspace ({ws / 2**30:.1f} GiB) is above "
                                    f"{DENSE_MEMORY_FRACTION:.0%} of the GPU's memory: not timed")
            run = P.build_path(p.mask, p.k, family, config, p.dtype, self.limits, keep=ctx.nbuf)
            x, y, ref = ctx.fresh_check()
            poison(ctx.out)
            run(x, y, ctx.out)
            ctx.cp.cuda.get_current_stream().synchronize()
            err = rel_error(ctx.out, ref)
            if not err <= 2 * TOLERANCE[p.dtype]:
                raise RuntimeError(f"wrong result (relative error {err:.3g})")
            timing = time_launches(ctx.launches(run))
            t = timing.median_us
            fin.baseline_timing[name] = timing.method + (f" ({timing.note})" if timing.note else "")
            fin.baselines[f"{name}_us"] = t
        except Exception as exc:  # noqa: BLE001 - a baseline that fails is reported, the tune goes on
            fin.baseline_errors[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.log(f"baseline {name} failed: {fin.baseline_errors[name]}")
        ok = t is not None and err is not None and err <= TOLERANCE[p.dtype]
        fin.vendors.append(Measured(family, dict(config), t if ok else None, err))

    def measure(self, res) -> Final:
        from ..device.ceilings import ceilings  # noqa: PLC0415
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import check  # noqa: PLC0415
        ctx, p = self.ctx, self.problem
        kern = self.prepare(res.best_family, res.best_config)
        with self._phase("finish"):
            x, y, ref = ctx.fresh_check()
            err = check(lambda: kern(x, y, ctx.out), ctx.out, ref, p.dtype)
            t = time_launches(ctx.launches(kern))
            fin = Final(t.median_us, err, t.method, t.spread)
            for family, config in P.vendor_configs(p.dtype):
                if family in self.vendors:
                    self._vendor(family, config, fin)
            if p.dtype == "bf16" and P.CUSPARSE in self.vendors:
                fin.baseline_errors["cusparse"] = "cuSPARSE SDDMM has no bf16"
            ceil = fin.ceilings = ceilings()
        peak = (ceil["fma_fp32_TFLOPs"] if p.dtype == "fp32" else ceil["fma_fp16_TFLOPs"]) * 1e12
        fin.floor_us = max(p.min_bytes() / (ceil["copy_GBps"] * 1e9), p.flops / peak) * 1e6
        return fin


def tune_sddmm(m: int | None = None, n: int | None = None, k: int = 256, density: float | None = None,
               dtype: str = "fp32", trials: int = 100, db=None, mask=None, pattern: str = "uniform", seed: int = 0,
               opts: TuneOptions | None = None, log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Tune SDDMM on the current GPU for a random M x N mask of the density (or the scipy mask `mask`) and K, store
    the best verified config as a record of the operator sddmm (and a vendor path's where it is faster), return the
    report dict. opts: the search's options (trials and db as given here where opts is None)."""
    if mask is not None:
        problem = SddmmProblem.from_mask(mask, k, dtype, seed=seed)
    else:
        if m is None or n is None or density is None:
            raise UserError("tune_sddmm needs m, n and density (or a mask)")
        problem = SddmmProblem.random(m, n, k, density, dtype, pattern, seed)
    opts = opts or TuneOptions(trials=trials, db=None if db is None else str(db), seed=seed)
    tuner = GpuSddmmTuner(problem, opts, log)
    return tuner.finish(tuner.search())


__all__ = ["SddmmProblem", "SddmmTuner", "GpuSddmmTuner", "SddmmContext", "Final", "check_sddmm_size",
           "split_sddmm_families", "tune_sddmm"]
