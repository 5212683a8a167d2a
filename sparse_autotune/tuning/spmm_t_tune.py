"""Tuning the transposed SpMM (ops.spmm_t): C = A^T @ B from the stored A (M x K CSR), B M x N, C K x N; the winner stored
as a record of the operator spmm_t (store.db: m, k = A's stored shape, n = N, density nnz / (M * K)).

The machinery is the SpMM and SDDMM tuners' (tuner.Tuner's Optuna search with its known-good configs first and its
study in the database; tuner.GpuTurnMixin.verify_and_time: the output poisoned, fresh random B, the float64 reference,
GPU-only timing by CUDA-graph replay with B rotated through more than twice the L2 cache). The candidates, in one search:
  - spmm_t_scatter (search_spaces/spmm_t): A's own CSR rows scattered into C with fp32 atomics;
  - transpose+<spmm family>: the EXPLICIT TRANSPOSE (A^T's CSR built once: a second copy of A on the GPU) run by an
    existing SpMM family (its space, constraints and known-good configs, checked against A^T's SpMM problem);
and, measured in finish() like the SDDMM tuner's vendor paths: cuSPARSE SpMM with opA = TRANSPOSE (each CSR algorithm)
and cuBLAS on a dense copy of A^T, at the dtype's precision. A vendor path faster than the best kernel is stored beside
it (family cusparse / dense) and becomes the key's best. The report's `chosen.explicit_transpose` and `copies_of_a`
say whether what runs holds a second copy of A.

SpmmTTuner is the part without a GPU; GpuSpmmTTuner adds the device. `tune_spmm_t` runs a GpuSpmmTTuner.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..core.problem import DTYPES, TOLERANCE, Problem, check_density, check_dim, check_dtype, check_seed, nnz_of
from ..errors import CandidateError, UserError
from ..ops import spmm_t as T
from ..store.db import SPMM_T, TuningDB
from .search import check_options
from .sddmm_tune import Final, GpuSddmmTuner, SddmmTuner
from .tuner import TuneOptions
from .vendor import Measured

DENSE_MEMORY_FRACTION = 0.25


@dataclass
class SpmmTProblem(Problem):
    """One spmm_t problem: core.problem.Problem's A (M x K scipy CSR, float32 values rounded to the dtype; `.a`), N and
    the dtype; its key and study name are the operator's (never an SpMM problem's)."""

    op = SPMM_T

    @classmethod
    def random(cls, m, k, n, density, dtype="fp32", pattern="uniform", seed=0, layout="kn") -> "SpmmTProblem":
        check_dtype(dtype)
        m, k, n = check_dim(m, "M"), check_dim(k, "K"), check_dim(n, "N")
        check_spmm_t_size(m, k, n, nnz_of(m, k, check_density(density)), dtype)
        return super().random(m, k, n, density, dtype, pattern, seed)

    @classmethod
    def from_matrix(cls, a, n, dtype="fp32", pattern="matrix", layout="kn", seed=0) -> "SpmmTProblem":
        p = super().from_matrix(a, n, dtype, pattern)
        check_spmm_t_size(p.m, p.k, p.n, p.nnz, dtype)
        p.seed = check_seed(seed)
        return p

    @property
    def a(self) -> sp.csr_matrix:
        return self.matrix

    def key(self) -> str:
        return "SPMMT_" + super().key()


def check_spmm_t_size(m: int, k: int, n: int, nnz: int, dtype: str, gpu_memory: int | None = None,
                      gpu_name: str | None = None) -> int:
    """Refuse what the kernels (32-bit row pointers and columns) or the GPU cannot hold, in one line."""
    from ..core.problem import _fmt_bytes, check_size  # noqa: PLC0415
    if nnz >= 2**31:
        raise UserError(f"spmm_t A with {nnz} nonzeros is too large for 32-bit indices (limit 2^31 - 1)")
    # the SpMM problem's own check (A, B, C and the rotation buffers), then A^T's copy and a K x N fp32 workspace
    need = max(check_size(m, k, n, nnz, dtype), check_size(k, m, n, nnz, dtype))  # C is K x N, B is M x N
    need = int(need + nnz * 8 + 4 * (k + 1) + 4 * k * n + 4 * m * n * 4)
    if gpu_memory and need > gpu_memory:
        raise UserError(f"problem too large for the GPU: spmm_t A {m}x{k} N={n} needs about {_fmt_bytes(need)}; "
                        f"{gpu_name or 'this GPU'} has {_fmt_bytes(gpu_memory)}")
    return need


def split_spmm_t_families(families, dtype: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--families for spmm_t (comma-separated or a sequence; None: all) as (the families to search, the vendor paths)."""
    known = T.spmm_t_families(dtype)
    everything = T.spmm_t_families()
    if families is None or (isinstance(families, str) and not families.strip()):
        return known, T.VENDOR_FAMILIES
    names = [f.strip() for f in families.split(",")] if isinstance(families, str) else [str(f).strip() for f in families]
    names = [x for x in names if x]
    bad = [x for x in names if x not in everything and not T.is_vendor(x)]
    if bad:
        raise UserError(f"unknown spmm_t kernel family {bad[0]!r}: choose from {', '.join(everything)} (and the vendor "
                        f"paths {', '.join(T.VENDOR_FAMILIES)})")
    templated = tuple(dict.fromkeys(x for x in names if not T.is_vendor(x)))
    vendors = tuple(dict.fromkeys(x for x in names if T.is_vendor(x)))
    if not templated:
        raise UserError(f"--families {','.join(names)}: name at least one spmm_t kernel family to search besides the "
                        f"vendor paths ({', '.join(T.VENDOR_FAMILIES)})")
    return templated, vendors


class SpmmTTuner(SddmmTuner):
    """spmm_t tuning without the device: the SDDMM tuner's search, record and report (sddmm_tune.SddmmTuner: the record
    is of the problem's operator, spmm_t) with spmm_t's spaces, vendor paths and report lines. Subclasses set gpu_name,
    cc, versions, limits and define evaluate and measure(res) -> Final (GpuSpmmTTuner: on this GPU)."""

    def _start_sddmm(self, problem: SpmmTProblem, opts: TuneOptions, log, gpu_name: str, limits: dict) -> None:
        check_options(opts.trials, opts.sampler, opts.timeout)
        if opts.allow_tf32:
            raise UserError("--allow-tf32 is not an option of --op spmm_t (its dense path runs at the dtype)")
        families, vendors = split_spmm_t_families(opts.families, problem.dtype)
        self.vendors = tuple(opts.vendors) if opts.vendors is not None else vendors
        spaces = {s.family: s for s in T.load_spmm_t_spaces()}
        self.spaces = [spaces[f] for f in families if spaces[f].supports(problem.dtype)]
        if not self.spaces:
            raise UserError(f"no spmm_t kernel family of {', '.join(families)} computes {problem.dtype}")
        self.problem, self.opts, self.log = problem, opts, log
        self.gpu_name, self.limits = gpu_name, dict(limits)
        self.env = T.spmm_t_env(problem.m, problem.k, problem.n, problem.nnz, problem.dtype)
        self.best_us = None
        self.db = TuningDB(opts.db, create=True)
        self.t_start = time.time()

    _start_spmm_t = _start_sddmm

    def seeds(self) -> list[tuple[str, dict]]:
        """The warm start: the configs of the nearest spmm_t problems tuned on this GPU model for this dtype."""
        if not self.opts.warm_start:
            return []
        from ..store.lookup import seed_configs  # noqa: PLC0415
        p = self.problem
        return seed_configs(self.db, p.m, p.k, p.n, p.density, p.dtype, self.gpu_name, p.pattern,
                            families={s.family for s in self.spaces}, op=SPMM_T)

    def describe_path(self, family: str, config: dict) -> str:
        p = self.problem
        return T.describe(family, config, p.m, p.k, p.dtype)

    def finish(self, res) -> dict:
        """SddmmTuner.finish (the record of op spmm_t, a faster vendor path's beside it), then what the report must say
        of the explicit transpose: whether the best kernel and what runs hold a second copy of A, and its bytes."""
        report = super().finish(res)
        fin = getattr(self, "final", None)
        report["best"]["explicit_transpose"] = T.is_transpose(report["best"]["family"])
        chosen = report["chosen"]
        chosen["explicit_transpose"] = T.is_transpose(chosen["family"])
        chosen["copies_of_a"] = 2 if chosen["explicit_transpose"] else 1
        report["baselines"]["cusparse_alg"] = None if fin is None else fin.baselines.get("cusparse_alg")
        report["transpose_bytes"] = 0 if fin is None else getattr(fin, "transpose_bytes", 0)
        return report


class SpmmTContext:
    """The problem on the device: the operand (A and its layouts), B buffers rotated through more than twice the L2
    cache, the output C, A in float64 for the reference (cupyx CSR)."""

    def __init__(self, problem: SpmmTProblem, l2_bytes: int, seed: int = 0):
        import cupyx.scipy.sparse as csp  # noqa: PLC0415

        from ..device.gpu import cupy  # noqa: PLC0415
        from ..device.timing import n_buffers  # noqa: PLC0415
        cp = self.cp = cupy()
        p = self.problem = problem
        es = np.dtype(DTYPES[p.dtype]).itemsize
        self.operand = T.SpmmTOperand(p.a, p.dtype)
        self.at64 = csp.csr_matrix(T.transpose_csr(self.operand.host).astype(np.float64))
        self.rng = cp.random.default_rng(seed + 1)
        self.nbuf = n_buffers(p.m * p.n * es, l2_bytes)
        self.bs = [self.random() for _ in range(self.nbuf)]
        self.c = cp.empty((p.k, p.n), dtype=DTYPES[p.dtype])

    def random(self):
        from ..core.problem import storage  # noqa: PLC0415
        p = self.problem
        return storage(self.rng.standard_normal((p.m, p.n), dtype=np.float32), p.dtype)

    def fresh_check(self):
        from ..core.problem import as_float  # noqa: PLC0415
        b = self.random()
        return b, self.at64 @ as_float(b).astype(self.cp.float64)

    def launches(self, run) -> list:
        return [lambda i=i: run(self.bs[i], self.c) for i in range(self.nbuf)]


class GpuSpmmTTuner(SpmmTTuner, GpuSddmmTuner):
    """spmm_t tuning on this process's GPU, in its turn (device.turn): GpuSddmmTuner's set-up with spmm_t's context,
    candidates and vendor paths."""

    context_class = SpmmTContext

    def prepare(self, family: str, cfg: dict):
        p = self.problem
        try:
            return T.build_path(self.ctx.operand, p.n, family, cfg, self.limits)
        except UserError as exc:
            raise CandidateError("build", str(exc)) from None

    def evaluate(self, family: str, cfg: dict, kern=None):
        ctx, p = self.ctx, self.problem
        if kern is None:
            kern = self.prepare(family, cfg)

        def fresh():
            b, ref = ctx.fresh_check()
            return (lambda: kern(b, ctx.c)), ref
        return self.verify_and_time(fresh, ctx.c, ctx.launches(kern), p.dtype, p.flops)

    def _vendor(self, family: str, config: dict, fin: Final) -> float | None:
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import poison, rel_error  # noqa: PLC0415
        ctx, p = self.ctx, self.problem
        t = err = None
        name = f"{family} {config.get('alg', config.get('math'))}"
        try:
            if family == T.DENSE:
                ws = p.m * p.k * np.dtype(DTYPES[p.dtype]).itemsize
                if self.info.memory_bytes and ws > DENSE_MEMORY_FRACTION * self.info.memory_bytes:
                    raise UserError(f"its dense copy of A^T ({ws / 2**30:.1f} GiB) is above "
                                    f"{DENSE_MEMORY_FRACTION:.0%} of the GPU's memory: not timed")
            run = T.build_path(ctx.operand, p.n, family, config, self.limits)
            b, ref = ctx.fresh_check()
            poison(ctx.c)
            run(b, ctx.c)
            ctx.cp.cuda.get_current_stream().synchronize()
            err = rel_error(ctx.c, ref)
            if not err <= 2 * TOLERANCE[p.dtype]:
                raise RuntimeError(f"wrong result (relative error {err:.3g})")
            timing = time_launches(ctx.launches(run))
            t = timing.median_us
            fin.baseline_timing[name] = timing.method + (f" ({timing.note})" if timing.note else "")
        except Exception as exc:  # noqa: BLE001 - a vendor path that fails is reported, the tune goes on
            fin.baseline_errors[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ok = t is not None and err is not None and err <= TOLERANCE[p.dtype]
        fin.vendors.append(Measured(family, dict(config), t if ok else None, err))
        return t

    def measure(self, res) -> Final:
        from ..device.ceilings import ceilings  # noqa: PLC0415
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import check  # noqa: PLC0415
        ctx, p = self.ctx, self.problem
        kern = self.prepare(res.best_family, res.best_config)
        with self._phase("finish"):
            b, ref = ctx.fresh_check()
            err = check(lambda: kern(b, ctx.c), ctx.c, ref, p.dtype)
            t = time_launches(ctx.launches(kern))
            fin = Final(t.median_us, err, t.method, t.spread)
            for family, config in T.vendor_configs(p.dtype):
                if family in self.vendors:
                    tv = self._vendor(family, config, fin)
                    key = "cusparse_us" if family == T.CUSPARSE else "dense_us"
                    if tv is not None and (fin.baselines.get(key) is None or tv < fin.baselines[key]):
                        fin.baselines[key] = tv
                        if family == T.CUSPARSE:
                            fin.baselines["cusparse_alg"] = config["alg"]
            ceil = fin.ceilings = ceilings()
        fin.transpose_bytes = ctx.operand.transpose_bytes
        self.final = fin
        peak = (ceil["fma_fp32_TFLOPs"] if p.dtype == "fp32" else ceil["fma_fp16_TFLOPs"]) * 1e12
        fin.floor_us = max(p.min_bytes() / (ceil["copy_GBps"] * 1e9), p.flops / peak) * 1e6
        return fin


def tune_spmm_t(m: int | None = None, k: int | None = None, n: int = 128, density: float | None = None,
                dtype: str = "fp32", trials: int = 100, db=None, a=None, pattern: str = "uniform", seed: int = 0,
                opts: TuneOptions | None = None, log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Tune C = A^T @ B on the current GPU for a random M x K A of the density (or the scipy matrix `a`) and N; store
    the best verified config as a record of the operator spmm_t; return the report dict."""
    if a is not None:
        problem = SpmmTProblem.from_matrix(a, n, dtype, seed=seed)
    else:
        if m is None or k is None or density is None:
            raise UserError("tune_spmm_t needs m, k and density (or a matrix a)")
        problem = SpmmTProblem.random(m, k, n, density, dtype, pattern, seed)
    opts = opts or TuneOptions(trials=trials, db=None if db is None else str(db), seed=seed)
    tuner = GpuSpmmTTuner(problem, opts, log)
    return tuner.finish(tuner.search())


__all__ = ["SpmmTProblem", "SpmmTTuner", "GpuSpmmTTuner", "SpmmTContext", "check_spmm_t_size",
           "split_spmm_t_families", "tune_spmm_t"]
