"""SDDMM benchmark (issue 19, section 2): tuned SDDMM kernels against cuSPARSE SDDMM and dense + mask, on
Transformer-attention-like and weight-gradient-like cases; `python3 bench/probe.py sddmm` runs it.

The cases (`suite_cases`)
-------------------------
  attention   S = a mask over the L x L scores of one head, X = Q (L x K), Y = K-matrix (L x K), K = the head dimension;
              masks "bigbird" (BigBird-like: a few global tokens whose rows and columns are full, a band around the
              diagonal, random entries for the rest; rows of very different lengths) and "uniform" (uniform random);
              densities 0.02, 0.05, 0.1, 0.3
  weightgrad  dW = (dY^T X) at the nonzeros of a pruned weight: S = the weight's pattern (uniform random, M x N = out x
              in features), X = dY^T (M x K), Y = X_in^T (N x K), K = batch x tokens; densities 0.05, 0.1, 0.3
Every mask has exactly round(density * M * N) nonzeros (its values random in [0.5, 1.5): a 0/1 mask would hide a
kernel that reads the wrong value), drawn from a seed made of the case's name (less its dtype: fp16 and fp32 share
the mask) and the suite's seed, so a case is the same matrix in every run. The default suite is a subset of the
cross product (below: DEFAULT_*); `--quick` a handful of cases; dtypes fp16 and fp32 (bf16 on request: no cuSPARSE
baseline for it).

Per case (`run_case`)
---------------------
  1. the mask, X / Y buffers on the device (fresh normal random values; enough sets to rotate past twice the L2, as
     device.timing.n_buffers, cut to 4 for a path whose launch is 100x longer than reading X and Y), the float64
     reference computed on the GPU (`reference_dev`: the formula of ops.sddmm.sddmm_reference), cross-checked
     against sddmm_reference (CPU) on sampled rows of the first set;
  2. per family, `sample_configs`: the known-good configs, then a greedy cover of every (parameter, value) that some
     feasible config has, then filler, in a seeded order of the whole space that is the same for every case (so cases
     share configs and NVRTC compiles; compiled in threads, in the process and in CuPy's disk cache);
  3. each config built, VERIFIED (output poisoned, a guard after it, relative error against the float64 reference at
     core.problem.TOLERANCE, on a verification set other than the timing buffers) and timed by device.timing's
     CUDA-graph replay (median of 10); a config slower than 3x the case's best (and over 50 us) in one launch is only
     estimated; failures are counted by stage and never timed;
  4. refinement: up to `refine` feasible neighbours (one parameter changed, else two) of each family's best;
  5. the three fastest re-verified on fresh inputs and re-timed (median of 20): the fastest is the tuned kernel;
  6. the baselines, verified and timed the same way in the same process: cuSPARSE SDDMM (ops.sddmm.
     build_cusparse_sddmm: fp32, fp16) and dense + mask, the faster of two paths: ops.sddmm.build_dense_baseline (CuPy
     matmul, then gather / multiply / cast as separate CuPy operations) and a fused path (ops.sddmm_paths.DenseMaskPath,
     the tuner's dense candidate: cuBLAS X @ Y^T into a preallocated M x N buffer, then one gather-multiply kernel).
     Both dense paths round X @ Y^T to the dtype before the mask (cuBLAS's output): verified at twice the tolerance, as tests/test_sddmm_gpu.py does.
Roofline: floor_us = max(min_bytes / measured copy bandwidth, flops / measured fp32 FMA rate) (device.ceilings).

Outputs (`write_outputs`): STEM.json (GPU, driver, CUDA, CuPy, date, options, records, summary), STEM.md, STEM.png
(speed-up against density per baseline). Summary: geomean speed-ups over cuSPARSE and over dense + mask, over all
cases and at density <= 0.1, overall, per dtype and per case kind; the cases that meet the per-case targets; whether
the issue's targets are met (geomean >= 2x over cuSPARSE and >= 1x over dense + mask, at density <= 0.1).
JSON and Markdown are rewritten after each case; a run stopped by --budget (no new case after S seconds) or SIGTERM
still writes all three for the cases it finished.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..core.outputs import write_doc
from ..core.problem import DTYPES, TOLERANCE, as_float, host_values, storage
from ..core.space import DEFAULT_LIMITS
from ..errors import CandidateError, UserError
from . import sddmm
from .sddmm_paths import DenseMaskPath

KINDS = ("attention", "weightgrad")
MASKS = ("bigbird", "uniform")
BENCH_DTYPES = ("fp16", "fp32", "bf16")
DEFAULT_DTYPES = ("fp16", "fp32")
ATTENTION_DENSITIES = (0.02, 0.05, 0.1, 0.3)
WEIGHTGRAD_DENSITIES = (0.05, 0.1, 0.3)
# (sequence length L, head dimension K) per attention mask; (M, N, K) of the weight gradients
DEFAULT_ATTENTION = {"bigbird": ((512, 64), (1024, 128), (2048, 64), (4096, 128)), "uniform": ((1024, 64), (4096, 64))}
DEFAULT_WEIGHTGRAD = ((768, 3072, 512), (3072, 768, 256), (1024, 4096, 512), (4096, 4096, 1024))
# --quick: (kind, mask, M, N, K, density) per dtype
QUICK = (("attention", "bigbird", 1024, 1024, 64, 0.05), ("attention", "uniform", 2048, 2048, 128, 0.1),
         ("weightgrad", "uniform", 768, 3072, 512, 0.1))
TARGET_CUSPARSE = 2.0  # issue 19: geomean >= 2x over cuSPARSE SDDMM ...
TARGET_DENSE = 1.0  # ... and >= 1x over dense + mask ...
TARGET_DENSITY = 0.1  # ... at density <= 0.1
DEFAULT_CONFIGS = 24  # sampled configs per family and case (known-good first)
DEFAULT_REFINE = 8  # neighbours of each family's best per case
FINALISTS = 3  # re-verified and re-timed with full repeats
SWEEP_REPEATS, FINAL_REPEATS = 10, 20  # graph replays timed per candidate / for the finalists and baselines
GIVE_UP_FACTOR, GIVE_UP_FLOOR_US = 3.0, 50.0  # a candidate slower than both is only estimated
VERIFY_SETS = 4  # verification input sets per case, used in turn by the sweep's candidates (finalists: fresh ones)
GUARD = 64  # elements after out that no kernel may write
CHECK_ROWS = 32  # rows of the mask on which the GPU reference is checked against sddmm_reference (CPU)
DENSE_TOL_FACTOR = 2.0  # dense + mask rounds X @ Y^T to the dtype before the mask: two roundings


# ---- the cases -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchCase:
    kind: str  # attention | weightgrad
    mask: str  # bigbird | uniform
    m: int
    n: int
    k: int
    density: float
    dtype: str

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.mask}-{self.m}x{self.n}-k{self.k}-d{self.density:g}-{self.dtype}"

    @property
    def group(self) -> str:
        return "weightgrad" if self.kind == "weightgrad" else f"{self.kind}-{self.mask}"

    def nnz_target(self) -> int:
        return max(1, round(self.density * self.m * self.n))

    def build_mask(self, seed: int = 0) -> sp.csr_matrix:
        """The case's mask: exactly nnz_target() entries, sorted CSR, values in [0.5, 1.5); the same for the same
        case and seed."""
        rng = np.random.default_rng([zlib.crc32(self.name.rsplit("-", 1)[0].encode()), int(seed)])
        if self.mask == "bigbird":
            flat = _bigbird_positions(self.m, self.density, self.nnz_target(), rng)
        else:
            flat = np.sort(rng.choice(self.m * self.n, size=self.nnz_target(), replace=False))
        return _csr_from_flat(flat, self.m, self.n, rng)


def _csr_from_flat(flat: np.ndarray, m: int, n: int, rng) -> sp.csr_matrix:
    flat = np.asarray(flat, dtype=np.int64)
    rows, cols = flat // n, flat % n
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    vals = rng.uniform(0.5, 1.5, size=flat.size).astype(np.float32)
    return sp.csr_matrix((vals, cols.astype(np.int32), indptr.astype(np.int32)), shape=(m, n))


def _bigbird_positions(L: int, density: float, target: int, rng) -> np.ndarray:
    """Sorted flat positions of a BigBird-like L x L mask of `target` entries: g global tokens (rows and columns
    0..g-1 full, ~10 % of the entries), a band of half-width w around the diagonal (~40 %), uniform random entries for
    the rest."""
    g = max(1, round(0.05 * density * L))
    w = max(0, round((0.4 * density * L - 1) / 2))
    keep = np.zeros((L, L), dtype=bool)
    keep[:g, :] = True
    keep[:, :g] = True
    i = np.arange(L)
    for off in range(-w, w + 1):
        j = i + off
        ok = (j >= 0) & (j < L)
        keep[i[ok], j[ok]] = True
    flat = np.flatnonzero(keep.ravel())
    if flat.size >= target:  # tiny cases: the structure alone is the mask
        return np.sort(rng.choice(flat, size=target, replace=False))
    free = np.flatnonzero(~keep.ravel())
    extra = free[rng.choice(free.size, size=target - flat.size, replace=False)]
    return np.sort(np.concatenate([flat, extra]))


def _spread(groups: list[list[BenchCase]], seed: int) -> list[BenchCase]:
    """Cases of every group in turn, each group in a seeded order: any prefix (a run cut by --budget) covers every kind,
    mask, dtype and a spread of sizes and densities."""
    rng = random.Random(seed)
    queues = []
    for grp in groups:
        g = list(grp)
        rng.shuffle(g)
        queues.append(g)
    out: list[BenchCase] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def suite_cases(quick: bool = False, dtypes=DEFAULT_DTYPES, kinds=KINDS, seed: int = 0) -> list[BenchCase]:
    """The suite's cases, in run order (`_spread`)."""
    groups: dict[tuple, list[BenchCase]] = {}
    for dt in dtypes:
        if quick:
            for kind, mask, m, n, k, d in QUICK:
                if kind in kinds:
                    groups.setdefault((kind, mask, dt), []).append(BenchCase(kind, mask, m, n, k, d, dt))
            continue
        if "attention" in kinds:
            for mask, shapes in DEFAULT_ATTENTION.items():
                for L, k in shapes:
                    for d in ATTENTION_DENSITIES:
                        groups.setdefault(("attention", mask, dt), []).append(
                            BenchCase("attention", mask, L, L, k, d, dt))
        if "weightgrad" in kinds:
            for m, n, k in DEFAULT_WEIGHTGRAD:
                for d in WEIGHTGRAD_DENSITIES:
                    groups.setdefault(("weightgrad", "uniform", dt), []).append(
                        BenchCase("weightgrad", "uniform", m, n, k, d, dt))
    return _spread(list(groups.values()), seed)


def parse_list(text, allowed: tuple, what: str) -> tuple:
    """A comma-separated choice of `allowed` (in the order given, without repeats); a one-line UserError else."""
    items = [t.strip() for t in str(text).split(",") if t.strip()] if text is not None else []
    if not items:
        raise UserError(f"--{what}: name at least one of {', '.join(allowed)}")
    bad = [t for t in items if t not in allowed]
    if bad:
        raise UserError(f"--{what}: unknown {what} {bad[0]!r} (choose from {', '.join(allowed)})")
    return tuple(dict.fromkeys(items))


def check_options(configs: int, refine: int, budget: float, seed: int) -> None:
    """The numeric options of the benchmark, each refused in one line."""
    for name, v, lo in (("configs", configs, 1), ("refine", refine, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or v > 10000:
            raise UserError(f"--{name} must be an integer from {lo} to 10000 (got {v!r})")
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not math.isfinite(budget) or budget < 0:
        raise UserError(f"--budget must be a number of seconds >= 0 (0: none; got {budget!r})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"--seed must be an integer from 0 to 2^32 - 1 (got {seed!r})")


# ---- the config sample -----------------------------------------------------------------------------------------------

def config_key(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


@lru_cache(maxsize=None)
def _space_order(family: str, dtype: str, seed: int) -> dict:
    """config key -> its place in a seeded order of the family's whole space (the same for every problem)."""
    space = sddmm.get_sddmm_space(family)
    configs = list(space.enumerate(dtype))
    perm = np.random.default_rng([seed, zlib.crc32(f"{family}/{dtype}".encode())]).permutation(len(configs))
    return {config_key(configs[int(i)]): rank for rank, i in enumerate(perm)}


def feasible_ordered(family: str, dtype: str, env: dict, limits: dict | None = None, seed: int = 0) -> list[dict]:
    """The family's feasible configs for the problem `env`, in the seeded order of `_space_order`."""
    space = sddmm.get_sddmm_space(family)
    order = _space_order(family, dtype, seed)
    feas = list(space.feasible(dtype, env, {**DEFAULT_LIMITS, **(limits or {})}))
    return sorted(feas, key=lambda c: order[config_key(c)])


def sample_configs(family: str, dtype: str, env: dict, limits: dict | None = None, count: int = DEFAULT_CONFIGS,
                   seed: int = 0, feasible: list[dict] | None = None) -> list[dict]:
    """Up to `count` feasible configs: the known-good ones first (file order), then a greedy cover of every
    (parameter, value) pair some feasible config has (ties: the earliest in the seeded order), then the next ones in
    that order. Cases of the same dtype pick mostly the same configs (one order for the whole space)."""
    space = sddmm.get_sddmm_space(family)
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    feas = feasible if feasible is not None else feasible_ordered(family, dtype, env, lim, seed)
    chosen: dict[str, dict] = {}
    for cfg in space.defaults(dtype, env, lim):
        if len(chosen) < count:
            chosen.setdefault(config_key(cfg), cfg)
    items = [set(c.items()) for c in feas]
    need = set().union(*items) if items else set()
    for c in chosen.values():
        need -= set(c.items())
    while need and len(chosen) < count:
        best = max(range(len(feas)), key=lambda i: (len(need & items[i]), -i))
        if not need & items[best]:
            break
        chosen[config_key(feas[best])] = feas[best]
        need -= items[best]
    for cfg in feas:
        if len(chosen) >= count:
            break
        chosen.setdefault(config_key(cfg), cfg)
    return list(chosen.values())


def neighbours(family: str, best: dict, feasible: list[dict], exclude: set, count: int) -> list[dict]:
    """Up to `count` feasible configs that differ from `best` in one parameter (then in two; an inactive parameter
    counts as a value), in the order of `feasible`, leaving out the keys in `exclude`."""
    names = [p.name for p in sddmm.get_sddmm_space(family).params]
    by_dist: dict[int, list[dict]] = {1: [], 2: []}
    for cfg in feasible:
        d = sum(cfg.get(p) != best.get(p) for p in names)
        if d in by_dist and config_key(cfg) not in exclude:
            by_dist[d].append(cfg)
    return (by_dist[1] + by_dist[2])[:count]


def describe(cases: list[BenchCase], configs: int = DEFAULT_CONFIGS, seed: int = 0) -> list[str]:
    """A dry listing (no GPU): each case with its nnz and the sampled configs per family (DEFAULT_LIMITS: an H100 /
    H200's), and how many distinct kernels the samples compile (refinement adds up to --refine per family and case)."""
    lines = [f"{len(cases)} cases; up to {configs} configs per family and case (seed {seed})"]
    kernels = set()
    for c in cases:
        env = sddmm.sddmm_env(c.m, c.n, c.k, c.nnz_target(), c.dtype)
        parts = []
        for fam in sddmm.sddmm_families():
            if not sddmm.get_sddmm_space(fam).supports(c.dtype):
                continue
            feas = feasible_ordered(fam, c.dtype, env, None, seed)
            picks = sample_configs(fam, c.dtype, env, None, configs, seed, feas)
            kernels.update((fam, c.dtype, config_key(p)) for p in picks)
            parts.append(f"{fam} {len(picks)}/{len(feas)}")
        lines.append(f"  {c.name:48s} nnz {c.nnz_target():>9d}  {', '.join(parts)}")
    lines.append(f"distinct kernels to compile (before refinement): {len(kernels)}")
    return lines


# ---- the device side: one case --------------------------------------------------------------------------------------

def reference_dev(rows, cols, s64, x, y, chunk_elems: int = 1 << 24):
    """out[p] = s64[p] * dot(X[rows[p]], Y[cols[p]]) in float64 on the GPU (the formula of sddmm.sddmm_reference; X and
    Y: CuPy arrays of a dtype's storage, bf16 words decoded)."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    x64, y64 = as_float(x).astype(cp.float64), as_float(y).astype(cp.float64)
    nnz, k = int(rows.size), int(x.shape[1])
    out = cp.empty(nnz, dtype=cp.float64)
    step = max(1, chunk_elems // max(1, k))
    for lo in range(0, nnz, step):
        hi = min(nnz, lo + step)
        out[lo:hi] = s64[lo:hi] * cp.einsum("ij,ij->i", x64[rows[lo:hi]], y64[cols[lo:hi]])
    return out


# Dense + mask with one GEMM into a preallocated M x N buffer and one gather-multiply-round kernel: the tuner's dense
# path (ops.sddmm_paths.DenseMaskPath, cublasGemmEx at the dtype's precision), so the benchmark's baseline is the
# candidate the tuner times.
FusedDense = DenseMaskPath


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _one_line(exc: BaseException) -> str:
    s = str(exc)
    return (s.splitlines()[0] if s else type(exc).__name__)[:300]


class CaseRun:
    """One case on the device: the mask and its launch data, X / Y buffers rotated past L2, verification sets with
    their float64 references, a guarded output; verify() and time() as the module's docstring says."""

    def __init__(self, case: BenchCase, mask: sp.csr_matrix, info, seed: int, io_bw: float):
        from ..device.gpu import cupy  # noqa: PLC0415
        from ..device.timing import n_buffers  # noqa: PLC0415
        cp = self.cp = cupy()
        self.case, self.mask, self.info = case, mask, info
        m, n, k = mask.shape[0], mask.shape[1], case.k
        self.nnz = int(mask.nnz)
        self.rows = cp.asarray(np.repeat(np.arange(m, dtype=np.int32), np.diff(mask.indptr)))
        self.cols = cp.asarray(mask.indices.astype(np.int32))
        self.s64 = cp.asarray(host_values(np.asarray(mask.data, dtype=np.float32), DTYPES[case.dtype])
                              .astype(np.float64))
        self.rng = cp.random.default_rng([seed, zlib.crc32(case.name.encode())])
        es = np.dtype(DTYPES[case.dtype]).itemsize
        io_bytes = (m + n) * k * es
        self.io_us = io_bytes / io_bw * 1e6  # X and Y read once from HBM
        self.nbuf = n_buffers(io_bytes, info.l2_bytes)
        self.xs = [self.random((m, k)) for _ in range(self.nbuf)]
        self.ys = [self.random((n, k)) for _ in range(self.nbuf)]
        self.buf = cp.empty(self.nnz + GUARD, dtype=DTYPES[case.dtype])
        self.buf.view(cp.uint8).fill(0x5A)
        self.out = self.buf[:self.nnz]
        self.sets: list[tuple] = []
        self.used = 0

    def random(self, shape):
        return storage(self.rng.standard_normal(shape, dtype=np.float32), self.case.dtype)

    def fresh(self) -> tuple:
        x, y = self.random((self.mask.shape[0], self.case.k)), self.random((self.mask.shape[1], self.case.k))
        return x, y, reference_dev(self.rows, self.cols, self.s64, x, y)

    def verify_set(self) -> tuple:
        """The sweep's verification inputs: VERIFY_SETS fresh sets (not the timing buffers), used in turn."""
        if len(self.sets) < VERIFY_SETS:
            self.sets.append(self.fresh())
        s = self.sets[self.used % len(self.sets)]
        self.used += 1
        return s

    def cross_check(self) -> float:
        """The GPU reference of the first verification set against sddmm.sddmm_reference (float64, CPU) on CHECK_ROWS
        sampled rows: the largest difference over the largest |reference| (raises above 1e-9)."""
        x, y, ref = self.verify_set()
        m = self.mask.shape[0]
        pick = np.sort(np.random.default_rng(0).choice(m, size=min(m, CHECK_ROWS), replace=False))
        sub = self.mask[pick]
        host = sddmm.sddmm_reference(sub, _host(x)[pick], _host(y), self.case.dtype)
        pos = np.concatenate([np.arange(self.mask.indptr[r], self.mask.indptr[r + 1]) for r in pick])
        if not host.size:
            return 0.0
        got = _host(ref[self.cp.asarray(pos)])
        diff = float(np.max(np.abs(got - host)) / max(1e-300, float(np.max(np.abs(host)))))
        if not diff <= 1e-9:
            raise RuntimeError(f"the GPU reference differs from sddmm_reference by {diff:.3g} (relative)")
        return diff

    def verify(self, run, inputs: tuple, tol: float) -> float:
        """Poison out, run once, the relative error against the reference; CandidateError over `tol`, on a launch
        error, or when the guard after out was written."""
        from ..device.verify import poison, rel_error  # noqa: PLC0415
        cp = self.cp
        x, y, ref = inputs
        poison(self.out)
        try:
            run(x, y, self.out)
            cp.cuda.get_current_stream().synchronize()
        except Exception as exc:  # noqa: BLE001 - a launch that fails is a failed candidate
            raise CandidateError("launch", _one_line(exc)) from None
        err = rel_error(self.out, ref)
        if not bool((self.buf[self.nnz:].view(cp.uint8) == 0x5A).all()):
            self.buf[self.nnz:].view(cp.uint8).fill(0x5A)
            raise CandidateError("verify", "wrote past the end of out")
        if not err <= tol:
            what = "unwritten or non-finite output" if math.isinf(err) else f"relative error {err:.3g}"
            raise CandidateError("verify", f"{what} > tolerance {tol:g}")
        return err

    def _one_launch_us(self, run) -> float:
        cp = self.cp
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        run(self.xs[0], self.ys[0], self.out)
        e.record()
        e.synchronize()
        return cp.cuda.get_elapsed_time(s, e) * 1000.0

    def time(self, run, repeats: int, give_up_us: float | None = None) -> dict:
        """device.timing.time_launches over the X / Y sets (cut to 4 where reading X and Y from HBM takes under 1 % of
        one launch, timed once between events first: whether they sit in L2 cannot show, and a slow path then costs 4
        launches a replay, not 64); above give_up_us in that one launch, its time only (method "estimate")."""
        from ..device.timing import time_launches  # noqa: PLC0415
        try:
            pre = self._one_launch_us(run)
            if give_up_us is not None and pre > give_up_us:
                return {"us": pre, "method": "estimate"}
            nb = self.nbuf if self.io_us >= 0.01 * pre else min(self.nbuf, 4)
            t = time_launches([lambda i=i: run(self.xs[i], self.ys[i], self.out) for i in range(nb)],
                              repeats=repeats, give_up_above_us=give_up_us)
        except Exception as exc:  # noqa: BLE001 - as the tuner: a failed timing is a failed candidate
            raise CandidateError("time", _one_line(exc)) from None
        return {"us": t.median_us, "min_us": t.min_us, "spread": t.spread, "method": t.method,
                **({"note": t.note} if t.note else {})}


def _precompile(pool, jobs: list[tuple], dtype: str) -> dict:
    """Compile (NVRTC, in the pool's threads) the kernels of (family, config) jobs; {config key: CandidateError} for
    those that fail."""
    from ..device.compile import compile_kernel  # noqa: PLC0415

    def one(job):
        fam, cfg = job
        compile_kernel(sddmm.render_sddmm(fam, cfg, dtype), sddmm.KERNEL_NAME)

    failed = {}
    futures = [(job, pool.submit(one, job)) for job in jobs]
    for (fam, cfg), fut in futures:
        try:
            fut.result()
        except CandidateError as exc:
            failed[(fam, config_key(cfg))] = exc
        except Exception as exc:  # noqa: BLE001
            failed[(fam, config_key(cfg))] = CandidateError("compile", _one_line(exc))
    return failed


def run_case(case: BenchCase, info, limits: dict, pool, configs: int = DEFAULT_CONFIGS, refine: int = DEFAULT_REFINE,
             seed: int = 0, ceil: dict | None = None, log=print) -> dict:
    """One case, steps 1-6 of the module's docstring: its record."""
    t0 = time.time()
    mask = case.build_mask(seed)
    rec = {"name": case.name, "kind": case.kind, "mask": case.mask, "group": case.group, "M": case.m, "N": case.n,
           "K": case.k, "density": case.density, "nnz": int(mask.nnz), "actual_density": mask.nnz / (case.m * case.n),
           "dtype": case.dtype}
    copy_bw = (ceil or {}).get("copy_GBps") or 4000.0
    ctx = CaseRun(case, mask, info, seed, copy_bw * 1e9)
    rec["ref_check"] = ctx.cross_check()
    env = sddmm.sddmm_env(case.m, case.n, case.k, mask.nnz, case.dtype)
    tol = TOLERANCE[case.dtype]
    feas = {}
    jobs = []
    for space in sddmm.load_sddmm_spaces():
        if space.supports(case.dtype):
            feas[space.family] = feasible_ordered(space.family, case.dtype, env, limits, seed)
            jobs += [(space.family, c) for c in sample_configs(space.family, case.dtype, env, limits, configs, seed,
                                                                 feas[space.family])]
    results: dict[tuple, dict] = {}  # (family, key) -> {"us", "err", "method"} or {"stage", "error"}
    best_us = [None]

    def measure(fam: str, cfg: dict, failed: dict) -> None:
        key = (fam, config_key(cfg))
        if key in failed:
            results[key] = {"stage": failed[key].stage, "error": _one_line(failed[key])}
            return
        try:
            kern = sddmm.build_sddmm(mask, case.k, fam, cfg, case.dtype, limits)
            err = ctx.verify(kern, ctx.verify_set(), tol)
            give_up = None if best_us[0] is None else max(GIVE_UP_FACTOR * best_us[0], GIVE_UP_FLOOR_US)
            t = ctx.time(kern, SWEEP_REPEATS, give_up)
        except CandidateError as exc:
            results[key] = {"stage": exc.stage, "error": _one_line(exc)}
            return
        except UserError as exc:
            results[key] = {"stage": "build", "error": _one_line(exc)}
            return
        results[key] = {"us": t["us"], "err": err, "method": t["method"]}
        if t["method"] != "estimate" and (best_us[0] is None or t["us"] < best_us[0]):
            best_us[0] = t["us"]

    failed = _precompile(pool, jobs, case.dtype)
    for fam, cfg in jobs:
        measure(fam, cfg, failed)
    if refine:  # neighbours of each family's best
        more = []
        for fam, fcfgs in feas.items():
            timed = [(r["us"], k[1]) for k, r in results.items() if k[0] == fam and r.get("method") not in
                     (None, "estimate")]
            if timed:
                best_cfg = json.loads(min(timed)[1])
                more += [(fam, c) for c in neighbours(fam, best_cfg, fcfgs, {k[1] for k in results if k[0] == fam},
                                                      refine)]
        failed = _precompile(pool, more, case.dtype)
        for fam, cfg in more:
            measure(fam, cfg, failed)
        jobs += more

    ok = sorted(((r["us"], k) for k, r in results.items() if "us" in r and r["method"] != "estimate"))
    stages: dict[str, int] = {}
    for r in results.values():
        if "stage" in r:
            stages[r["stage"]] = stages.get(r["stage"], 0) + 1
    rec["candidates"] = {"tried": len(results), "ok": sum("us" in r for r in results.values()),
                         "estimated": sum(r.get("method") == "estimate" for r in results.values()),
                         "failed": stages}
    rec["failures"] = [{"family": k[0], "config": json.loads(k[1]), **r} for k, r in results.items()
                       if "stage" in r][:5]
    rec["best_per_family"] = {}
    for us, (fam, key) in ok:
        rec["best_per_family"].setdefault(fam, {"us": us, "config": json.loads(key)})

    finals = []
    for _, (fam, key) in ok[:FINALISTS]:  # re-verified on fresh inputs, re-timed in full
        cfg = json.loads(key)
        try:
            kern = sddmm.build_sddmm(mask, case.k, fam, cfg, case.dtype, limits)
            err = ctx.verify(kern, ctx.fresh(), tol)
            t = ctx.time(kern, FINAL_REPEATS)
        except (CandidateError, UserError) as exc:
            log(f"  finalist {fam} {key} failed on re-check: {_one_line(exc)}")
            continue
        finals.append((t["us"], fam, cfg, max(err, results[(fam, key)]["err"]), t))
    if finals:
        us, fam, cfg, err, t = min(finals, key=lambda f: f[0])
        rec.update(family=fam, config=cfg, tuned_us=us, tuned_spread=t["spread"], timing=t["method"], max_rel_err=err,
                   tuned_gflops=sddmm.flops(mask.nnz, case.k) / (us * 1e-6) / 1e9)
    else:
        rec.update(family=None, config=None, tuned_us=None, max_rel_err=None,
                   error=f"no config verified and timed ({rec['candidates']})")
    del ctx.sets[:]
    rec.update(_baselines(case, mask, ctx, tol, log))
    rec.update(_floor(case, mask.nnz, ceil))
    for b in ("cusparse", "dense"):
        base = rec.get(f"{b}_us")
        rec[f"speedup_{b}"] = base / rec["tuned_us"] if base and rec.get("tuned_us") else None
    if rec.get("tuned_us") and rec.get("floor_us"):
        rec["tuned_over_floor"] = rec["tuned_us"] / rec["floor_us"]
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def _baselines(case: BenchCase, mask, ctx: CaseRun, tol: float, log) -> dict:
    """cuSPARSE SDDMM and dense + mask (the faster of the two paths), verified on fresh inputs, timed in full."""
    out: dict = {}

    def one(name: str, make, tolerance: float) -> tuple:
        try:
            run = make()
            err = ctx.verify(run, ctx.fresh(), tolerance)
            t = ctx.time(run, FINAL_REPEATS)
            return t["us"], err, t["method"]
        except Exception as exc:  # noqa: BLE001 - a baseline that cannot run here is reported, the case goes on
            out[f"{name}_error"] = _one_line(exc)
            log(f"  baseline {name}: {out[f'{name}_error']}")
            return None, None, None

    if case.dtype in sddmm.CUSPARSE_SDDMM_DTYPES:
        out["cusparse_us"], out["cusparse_rel_err"], out["cusparse_timing"] = one(
            "cusparse", lambda: sddmm.build_cusparse_sddmm(mask, case.k, case.dtype), tol)
    else:
        out["cusparse_us"] = None
        out["cusparse_error"] = f"cuSPARSE SDDMM has no {case.dtype}"
    dtol = DENSE_TOL_FACTOR * tol
    paths = {"ops": one("dense_ops", lambda: sddmm.build_dense_baseline(mask, case.k, case.dtype), dtol)}
    if case.dtype in ("fp32", "fp16"):
        paths["fused"] = one("dense_fused", lambda: FusedDense(mask, case.k, case.dtype), dtol)
    for p, (us, _, _) in paths.items():
        out[f"dense_{p}_us"] = us
    timed = [(v[0], p, v[1], v[2]) for p, v in paths.items() if v[0] is not None]
    if timed:
        us, p, err, method = min(timed)
        out.update(dense_us=us, dense_path=p, dense_rel_err=err, dense_timing=method)
    else:
        out.update(dense_us=None, dense_path=None)
    ctx.cp.get_default_memory_pool().free_all_blocks()
    return out


def _floor(case: BenchCase, nnz: int, ceil: dict | None) -> dict:
    """The roofline floor: the fewest bytes over the measured copy bandwidth, the flops over the measured fp32 FMA
    rate (CUDA cores: the kernels accumulate in fp32)."""
    if not ceil:
        return {"floor_us": None}
    b_us = sddmm.min_bytes(case.m, case.n, case.k, nnz, case.dtype) / (ceil["copy_GBps"] * 1e9) * 1e6
    f_us = sddmm.flops(nnz, case.k) / (ceil["fma_fp32_TFLOPs"] * 1e12) * 1e6
    return {"bytes_floor_us": b_us, "flops_floor_us": f_us, "floor_us": max(b_us, f_us)}


# ---- the suite -------------------------------------------------------------------------------------------------------

class _Stopped(KeyboardInterrupt):
    """SIGTERM (device.sh's timeout): finish by writing what is done."""


def run_suite(cases: list[BenchCase], stem, configs: int = DEFAULT_CONFIGS, refine: int = DEFAULT_REFINE,
              budget: float = 0, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Every case in turn (none started after `budget` seconds, 0: no limit), the outputs rewritten after each case
    and written whole at the end (also when stopped by SIGTERM). Returns the JSON document."""
    import datetime as dt  # noqa: PLC0415

    from ..device.gpu import gpu_info  # noqa: PLC0415
    check_options(configs, refine, budget, seed)
    info = gpu_info()
    limits = info.limits()
    t0 = time.time()
    try:
        from ..device.ceilings import ceilings  # noqa: PLC0415
        ceil = dict(ceilings())
    except Exception as exc:  # noqa: BLE001 - the floor is optional
        log(f"ceilings not measured: {_one_line(exc)}")
        ceil = None
    doc = {**info.versions(), "date": dt.date.today().isoformat(), "sm_count": info.sm_count,
           "l2_bytes": info.l2_bytes, "ceilings": ceil, "options": {"configs": configs, "refine": refine,
                                                                    "budget_s": budget, "seed": seed, "quick": quick},
           "cases_planned": len(cases), "skipped": [], "interrupted": None, "records": []}
    log(f"{doc['gpu']}, driver {doc['driver']}, CUDA {doc['cuda']}, CuPy {doc['cupy']}: {len(cases)} cases, "
        f"{configs} configs per family + {refine} neighbours; ceilings {ceil}")

    def stop(signum, frame):
        raise _Stopped()

    prev = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(16, (os.cpu_count() or 2) - 1))) as pool:
            for i, case in enumerate(cases):
                if budget and time.time() - t0 > budget:
                    doc["skipped"] = [c.name for c in cases[i:]]
                    log(f"budget of {budget:g} s reached after {i} cases: {len(cases) - i} not started")
                    break
                try:
                    rec = run_case(case, info, limits, pool, configs, refine, seed, ceil, log)
                except _Stopped:
                    raise
                except Exception as exc:  # noqa: BLE001 - the case is reported, the suite goes on
                    rec = {"name": case.name, **_case_fields(case), "tuned_us": None,
                           "error": f"{type(exc).__name__}: {_one_line(exc)}"}
                doc["records"].append(rec)
                log(_progress(i, len(cases), rec, time.time() - t0))
                doc["summary"] = summarize(doc["records"])
                doc["wall_s"] = round(time.time() - t0, 1)
                write_outputs(stem, doc, png=False)
    except _Stopped:
        doc["interrupted"] = "SIGTERM"
        done = {r["name"] for r in doc["records"]}
        doc["skipped"] = [c.name for c in cases if c.name not in done]
        log(f"stopped by SIGTERM after {len(doc['records'])} cases")
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
    doc["summary"] = summarize(doc["records"])
    doc["wall_s"] = round(time.time() - t0, 1)
    write_outputs(stem, doc, png=True)
    return doc


def _main_thread() -> bool:
    import threading  # noqa: PLC0415
    return threading.current_thread() is threading.main_thread()


def _case_fields(case: BenchCase) -> dict:
    return {"kind": case.kind, "mask": case.mask, "group": case.group, "M": case.m, "N": case.n, "K": case.k,
            "density": case.density, "dtype": case.dtype}


def _progress(i: int, total: int, r: dict, elapsed: float) -> str:
    head = f"[{i + 1}/{total} {elapsed:5.0f} s] {r['name']}"
    if r.get("tuned_us") is None:
        return f"{head}: ERROR {r.get('error')}"
    return (f"{head}: {r['family']} {r['tuned_us']:.2f} us; cuSPARSE {fmt(r.get('cusparse_us'))} "
            f"({fmt(r.get('speedup_cusparse'))}x), dense {fmt(r.get('dense_us'))} ({fmt(r.get('speedup_dense'))}x, "
            f"{r.get('dense_path')}); floor {fmt(r.get('floor_us'))}; {r['candidates']['ok']}/"
            f"{r['candidates']['tried']} ok in {r['seconds']:.1f} s")


# ---- summary and outputs ---------------------------------------------------------------------------------------------

def fmt(x, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def geomean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _group_stats(name: str, recs: list[dict]) -> dict:
    sc = [r["speedup_cusparse"] for r in recs if r.get("speedup_cusparse")]
    sd = [r["speedup_dense"] for r in recs if r.get("speedup_dense")]
    return {"group": name, "cases": len(recs), "geomean_cusparse": geomean(sc), "geomean_dense": geomean(sd),
            "with_cusparse": len(sc), "cusparse_at_target": sum(x >= TARGET_CUSPARSE for x in sc),
            "with_dense": len(sd), "dense_at_target": sum(x >= TARGET_DENSE for x in sd)}


def summarize(records: list[dict]) -> dict:
    """Geomean speed-ups over cuSPARSE and over dense + mask and the cases at the per-case targets (>= 2x, >= 1x), for
    all cases and at density <= 0.1: overall, per dtype, per case group; whether the issue's targets are met (the
    groups at density <= 0.1: overall and per dtype)."""
    done = [r for r in records if r.get("tuned_us")]
    low = [r for r in done if r["density"] <= TARGET_DENSITY + 1e-12]
    groups = [_group_stats("all", done), _group_stats(f"density <= {TARGET_DENSITY:g}", low)]
    for dt in sorted({r["dtype"] for r in done}):
        groups.append(_group_stats(dt, [r for r in done if r["dtype"] == dt]))
        groups.append(_group_stats(f"{dt}, density <= {TARGET_DENSITY:g}", [r for r in low if r["dtype"] == dt]))
    for g in sorted({r["group"] for r in done}):
        groups.append(_group_stats(g, [r for r in done if r["group"] == g]))
        groups.append(_group_stats(f"{g}, density <= {TARGET_DENSITY:g}", [r for r in low if r["group"] == g]))
    target_groups = [g for g in groups if g["group"].endswith(f"density <= {TARGET_DENSITY:g}")
                     and not any(g["group"].startswith(x) for x in ("attention", "weightgrad"))]

    def met(g: dict, key: str, target: float):
        return None if g[key] is None else bool(g[key] >= target)

    return {"cases": len(records), "finished": len(done), "errors": sum(1 for r in records if r.get("error")),
            "targets": {"cusparse": TARGET_CUSPARSE, "dense": TARGET_DENSE, "density_max": TARGET_DENSITY},
            "target_met": {g["group"]: {"cusparse": met(g, "geomean_cusparse", TARGET_CUSPARSE),
                                        "dense": met(g, "geomean_dense", TARGET_DENSE)} for g in target_groups},
            "groups": groups}


RECORD_COLUMNS = ("case", "M x N", "K", "density", "nnz", "dtype", "family", "tuned us", "cuSPARSE us",
                  "dense+mask us", "x cuSPARSE", "x dense", "floor us", "max rel err", "ok / tried", "config")


def markdown(doc: dict) -> list[str]:
    s = doc.get("summary") or summarize(doc.get("records", []))
    o = doc.get("options", {})
    lines = [f"# SDDMM: tuned kernels against cuSPARSE SDDMM and dense + mask — {doc.get('gpu')}", "",
             f"{doc.get('gpu')}, driver {doc.get('driver')}, CUDA {doc.get('cuda')}, CuPy {doc.get('cupy')}, "
             f"{doc.get('date')}. `bench/probe.py sddmm` (sparse_autotune/ops/sddmm_bench.py): per case up to "
             f"{o.get('configs')} sampled configs per family (known-good first, a cover of every parameter value) and "
             f"{o.get('refine')} neighbours of each family's best, each verified against the float64 reference "
             "(poisoned output, core.problem.TOLERANCE) before it is timed; the three fastest re-verified on fresh "
             "inputs and re-timed. Times: CUDA-graph replay over X / Y sets rotated past L2 (4 sets where a launch "
             "takes 100x longer than reading X and Y), median of 20 (device.timing), baselines the same way in the "
             "same process. dense+mask: the faster of cuBLAS X @ Y^T + CuPy gather (ops.sddmm) and cuBLAS into a "
             "preallocated buffer + one fused gather kernel. floor: "
             "max(min_bytes / copy bandwidth, flops / fp32 FMA rate), both measured. "
             f"{s['finished']} of {doc.get('cases_planned', s['cases'])} cases finished"
             + (f", {len(doc['skipped'])} not started ({'SIGTERM' if doc.get('interrupted') else 'budget'})"
                if doc.get("skipped") else "") + f", {s['errors']} with errors; {doc.get('wall_s')} s.", "",
             f"Targets (issue 19): geomean >= {TARGET_CUSPARSE:g}x over cuSPARSE SDDMM and >= {TARGET_DENSE:g}x over "
             f"dense + mask at density <= {TARGET_DENSITY:g}: "
             + ("; ".join(f"{g}: cuSPARSE {_yes(v['cusparse'])}, dense {_yes(v['dense'])}"
                          for g, v in s["target_met"].items()) or "no finished case") + ".", "",
             "| cases | n | geomean x cuSPARSE | cases >= 2x | geomean x dense+mask | cases >= 1x |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for g in s["groups"]:
        lines.append(f"| {g['group']} | {g['cases']} | {fmt(g['geomean_cusparse'])} | {g['cusparse_at_target']}/"
                     f"{g['with_cusparse']} | {fmt(g['geomean_dense'])} | {g['dense_at_target']}/{g['with_dense']} |")
    lines += ["", "| " + " | ".join(RECORD_COLUMNS) + " |", "| " + " | ".join(
        "---" if c in ("case", "dtype", "family", "config") else "---:" for c in RECORD_COLUMNS) + " |"]
    for r in doc.get("records", []):
        cand = r.get("candidates") or {}
        cfg = f"`{json.dumps(r['config'], sort_keys=True)}`" if r.get("config") else (r.get("error") or "")
        lines.append(f"| {r['group']} | {r['M']}x{r['N']} | {r['K']} | {r['density']:g} | {r.get('nnz', '')} | "
                     f"{r['dtype']} | {r.get('family') or ''} | {fmt(r.get('tuned_us'))} | {fmt(r.get('cusparse_us'))} "
                     f"| {fmt(r.get('dense_us'))} | {fmt(r.get('speedup_cusparse'))} | {fmt(r.get('speedup_dense'))} | "
                     f"{fmt(r.get('floor_us'))} | {_sci(r.get('max_rel_err'))} | {cand.get('ok', '')} / "
                     f"{cand.get('tried', '')} | {cfg} |")
    return lines


def _yes(v) -> str:
    return "n/a" if v is None else ("met" if v else "not met")


def _sci(x) -> str:
    return "n/a" if x is None else f"{x:.2g}"


def plot(doc: dict, path) -> bool:
    """Speed-up against density, one panel per baseline (log axes, markers by dtype, colours by case group, the
    target as a line); False without matplotlib or without a speed-up to draw."""
    recs = [r for r in doc.get("records", []) if r.get("speedup_cusparse") or r.get("speedup_dense")]
    if not recs:
        return False
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    marks = {"fp16": "o", "fp32": "s", "bf16": "^"}
    groups = sorted({r["group"] for r in recs})
    colours = {g: f"C{i}" for i, g in enumerate(groups)}
    for ax, key, title, target in ((axes[0], "speedup_cusparse", "speed-up over cuSPARSE SDDMM", TARGET_CUSPARSE),
                                   (axes[1], "speedup_dense", "speed-up over dense + mask", TARGET_DENSE)):
        for g in groups:
            for dt, mk in marks.items():
                sel = [r for r in recs if r["group"] == g and r["dtype"] == dt and r.get(key)]
                if sel:
                    ax.scatter([r["density"] * (1 + 0.02 * (zlib.crc32(r["name"].encode()) % 5 - 2)) for r in sel],
                               [r[key] for r in sel], marker=mk, color=colours[g], alpha=0.75, label=f"{g} {dt}")
        ax.axhline(target, color="red", lw=0.8, ls="--")
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.axvline(TARGET_DENSITY, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density")
        ax.set_title(title)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"SDDMM on {doc.get('gpu')} (dashed: target)")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return True


def write_outputs(stem, doc: dict, png: bool = True) -> list[Path]:
    """STEM.json, STEM.md and (png, with a speed-up to draw) STEM.png; the files written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    doc.setdefault("summary", summarize(doc.get("records", [])))
    return write_doc(stem, doc, markdown(doc), plot if png else None)


__all__ = ["BenchCase", "CaseRun", "FusedDense", "check_options", "config_key", "describe", "feasible_ordered",
           "geomean", "markdown", "neighbours", "parse_list", "plot", "reference_dev", "run_case", "run_suite",
           "sample_configs", "suite_cases", "summarize", "write_outputs"]
