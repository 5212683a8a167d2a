"""Tuning the sparse 3x3 convolution (ops.conv): Y = conv2d(X, W, stride, padding 1), W sparse; the winner stored as a
record of the operator conv3x3 (store.db: m = Cout, k = Cin, n = output pixels of all images, layout nchw / nhwc,
pattern '<kind>@<H>x<W>b<batch>s<stride>' (ops.conv.key_pattern), density nnz / (Cout * Cin * 9)).

The machinery is the SpMM tuner's (tuner.Tuner: the Optuna search, its study in the tuning database; GpuTurnMixin:
verification against a float64 reference with the output poisoned, CUDA-graph timing with X rotated through buffers
larger than twice the L2 cache). What differs: the spaces (search_spaces/conv), a candidate's build (ops.conv.build_conv),
the reference (ops.conv.conv_reference on the GPU in float64), and the baselines: cuDNN through
torch.nn.functional.conv2d at FP32, TF32, FP16 (and BF16 for bf16 problems), in the problem's memory format, timed in
finish() (ops.conv_paths.time_torch: a torch CUDA graph of many calls). cuDNN at the problem's own precision is the
vendor candidate: where it is faster than the best kernel a record of family cudnn is stored beside the kernel's and
becomes the key's best, which the runtime (runtime.conv) then runs. No warm start from other conv3x3 problems yet.

ConvTuner is the part without a GPU (a test subclasses it with a synthetic evaluate and measure); GpuConvTuner adds
the device. `tune_conv` runs a GpuConvTuner.
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
from ..core.problem import DTYPES, PATTERNS, TOLERANCE, check_density, check_seed, matrix_hash, nnz_of
from ..errors import CandidateError, UserError
from ..ops import conv as C
from ..ops import conv_paths as P
from ..store.db import CONV3X3, Record, TuningDB
from .search import check_options
from .tuner import GpuTurnMixin, Tuner, TuneOptions, trials_dict
from .sddmm_tune import Final as SddmmFinal
from .vendor import Measured


@dataclass
class ConvProblem:
    """One conv3x3 tuning problem: the geometry, the compressed weight (ops.conv), the dtype."""

    geometry: C.Geometry
    density: float
    dtype: str = "fp32"
    kind: str = "uniform"
    seed: int = 0
    wc: sp.csr_matrix | None = field(default=None, repr=False)
    op = CONV3X3

    @classmethod
    def random(cls, g: C.Geometry, density, dtype="fp32", kind="uniform", seed=0) -> "ConvProblem":
        C._check_dtype(dtype)
        density = check_density(density)
        seed = check_seed(seed)
        if kind not in PATTERNS:
            raise UserError(f"unknown pattern {kind!r}: choose one of {', '.join(PATTERNS)}")
        nnz_of(g.cout, g.cin * 9, density)
        return cls(g, round(float(density), 6), dtype, kind, seed, C.random_weight(g.cout, g.cin, density, dtype, kind,
                                                                                  seed))

    @classmethod
    def from_weight(cls, w, g: C.Geometry, dtype="fp32", kind="matrix", seed=0) -> "ConvProblem":
        """A problem of a given weight (dense Cout x Cin x 3 x 3, or the compressed CSR)."""
        C._check_dtype(dtype)
        wc = C.as_compressed(w, g.cin) if sp.issparse(w) else C.compress_weight(w, dtype)
        if wc.shape != (g.cout, g.cin * 9):
            raise UserError(f"the weight is {wc.shape[0]}x{wc.shape[1] // 9}x3x3, the geometry {g.cout}x{g.cin}")
        if wc.nnz == 0:
            raise UserError("the convolution's weight is all zeros: nothing to tune")
        density = float(f"{wc.nnz / (g.cout * g.cin * 9):.6g}")
        return cls(g, density, dtype, kind, check_seed(seed), wc)

    @property
    def m(self) -> int:
        return self.geometry.cout

    @property
    def k(self) -> int:
        return self.geometry.cin

    @property
    def n(self) -> int:
        return self.geometry.pixels

    @property
    def layout(self) -> str:
        return self.geometry.layout

    @property
    def pattern(self) -> str:
        """store.db's pattern column: the kind and the geometry (ops.conv.key_pattern)."""
        return C.key_pattern(self.kind, self.geometry)

    @property
    def nnz(self) -> int:
        return int(self.wc.nnz)

    @property
    def flops(self) -> int:
        return C.flops(self.nnz, self.geometry)

    def key(self) -> str:
        g = self.geometry
        return (f"CONV3X3_{g.cout}x{g.cin}_{g.tag()}_{g.layout}_d{self.density:g}_{self.dtype}_{self.kind}")

    def fingerprint(self) -> str:
        return matrix_hash(self.wc)

    def min_bytes(self) -> int:
        return C.min_bytes(self.nnz, self.geometry, self.dtype)


def split_conv_families(names) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kernel families, vendor paths) of --families for conv3x3; None: every family and cuDNN."""
    known = C.conv_families()
    if names is None:
        return known, P.VENDOR_FAMILIES
    names = [x.strip() for x in (names.split(",") if isinstance(names, str) else names) if x.strip()]
    bad = [x for x in names if x not in known and not P.is_vendor(x)]
    if bad:
        raise UserError(f"unknown conv3x3 kernel family {bad[0]!r}: choose from {', '.join(known)} (and the vendor "
                        f"path {', '.join(P.VENDOR_FAMILIES)})")
    fams = tuple(dict.fromkeys(x for x in names if not P.is_vendor(x)))
    if not fams:
        raise UserError(f"--families {','.join(names)}: name at least one conv3x3 kernel family besides cudnn")
    return fams, tuple(dict.fromkeys(x for x in names if P.is_vendor(x)))


# What finish() records of the winner and cuDNN, measured again: SDDMM's (baselines: "cudnn_<math>_<memory>_us")
Final = SddmmFinal


class ConvTuner(Tuner):
    """conv3x3 tuning without the device: options, spaces, the search, the record, the report. Subclasses set
    gpu_name, cc, versions, limits and define evaluate(family, config[, prepared]) and measure(res) -> Final."""

    cc = "0.0"
    versions = {"cuda": "", "driver": "", "cupy": ""}

    def _start_conv(self, problem: ConvProblem, opts: TuneOptions, log, gpu_name: str, limits: dict) -> None:
        check_options(opts.trials, opts.sampler, opts.timeout)
        if opts.allow_tf32:
            raise UserError("--allow-tf32 is SpMM's; conv3x3 reports cuDNN TF32 as a baseline, its candidate runs at "
                            "the problem's dtype")
        families, vendors = split_conv_families(opts.families)
        self.vendors = tuple(opts.vendors) if opts.vendors is not None else vendors
        chosen = [s for s in C.load_conv_spaces() if s.family in families]
        self.spaces = [s for s in chosen if s.supports(problem.dtype)]
        if not self.spaces:
            raise UserError(f"no conv3x3 kernel family of {', '.join(s.family for s in chosen)} computes {problem.dtype}")
        self.problem, self.opts, self.log = problem, opts, log
        self.gpu_name, self.limits = gpu_name, dict(limits)
        self.env = C.conv_env(problem.geometry, problem.nnz, problem.dtype)
        self.best_us = None
        self.db = TuningDB(opts.db, create=True)
        self.t_start = time.time()

    def seeds(self) -> list[tuple[str, dict]]:
        return []  # no warm start across conv3x3 problems yet (the module's docstring)

    def measure(self, res) -> Final:
        raise NotImplementedError

    def finish(self, res) -> dict:
        """The winner and cuDNN measured again (measure), the winner's record stored (op conv3x3) with cuDNN's times in
        the problem's layout as its baselines, and cuDNN's record at the problem's precision where it is faster."""
        self._check_found(res)
        problem, opts, db = self.problem, self.opts, self.db
        g = problem.geometry
        name = self.study_name()
        fin = self.measure(res)
        gflops = problem.flops / (fin.time_us * 1e-6) / 1e9
        mem = "channels_last" if g.layout == "nhwc" else "nchw"
        base = {m: fin.baselines.get(f"cudnn_{m}_{mem}_us") for m in P.MATHS}
        rec = Record(
            op=CONV3X3, gpu_name=self.gpu_name, gpu_cc=self.cc, m=problem.m, k=problem.k, n=problem.n,
            density=problem.density, dtype=problem.dtype, pattern=problem.pattern, layout=problem.layout,
            family=res.best_family, config_json=json.dumps(res.best_config, sort_keys=True), time_us=fin.time_us,
            gflops=gflops, cusparse_us=None, cublas_fp32_us=base["fp32"], cublas_tf32_us=base["tf32"],
            cublas_fp16_us=base["fp16"], cublas_bf16_us=base["bf16"], floor_us=fin.floor_us, max_rel_err=fin.rel_err,
            trials=res.complete + res.failed, matrix_hash=problem.fingerprint(), study_name=name,
            package_version=__version__, cuda_version=self.versions["cuda"], driver_version=self.versions["driver"],
            cupy_version=self.versions["cupy"], created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
        db.store(rec)
        sparse = Measured(rec.family, dict(res.best_config), fin.time_us, fin.rel_err)
        cands = [c for c in fin.vendors if c.family in self.vendors and c.time_us is not None]
        chosen, chosen_rec = sparse, rec
        fastest = min(cands, key=lambda c: c.time_us, default=None)
        if fastest is not None and fastest.time_us < fin.time_us:
            chosen = fastest
            chosen_rec = db.store(rec.derived(family=fastest.family, config_json=json.dumps(fastest.config,
                                                                                             sort_keys=True),
                                              time_us=fastest.time_us, max_rel_err=fastest.rel_err,
                                              gflops=problem.flops / (fastest.time_us * 1e-6) / 1e9))
            if chosen_rec.is_best:
                rec.is_best = False
            self.log(f"cuDNN is faster than the tuned kernel: {fastest.time_us:.2f} us < {fin.time_us:.2f} us "
                     f"(record {chosen_rec.id})")
        db.dispose()

        def ratio(x):
            return None if x is None else x / fin.time_us

        return {
            "op": CONV3X3,
            "problem": {"op": CONV3X3, "cout": g.cout, "cin": g.cin, "h": g.h, "w": g.w, "batch": g.batch,
                        "stride": g.stride, "layout": g.layout, "ho": g.ho, "wo": g.wo, "density": problem.density,
                        "nnz": problem.nnz, "dtype": problem.dtype, "pattern": problem.kind, "key_pattern":
                        problem.pattern, "matrix_hash": problem.fingerprint(), "seed": problem.seed,
                        "flops": problem.flops, "dense_flops": C.dense_flops(g)},
            "gpu": self.gpu_name, "cc": self.cc, "driver": self.versions["driver"], "cuda": self.versions["cuda"],
            "cupy": self.versions["cupy"], "package_version": __version__,
            "best": {"family": res.best_family, "config": res.best_config, "time_us": fin.time_us, "gflops": gflops,
                     "max_rel_err": fin.rel_err, "timing_spread": fin.spread, "timing": fin.timing,
                     "search_time_us": res.best_value},
            "baselines": dict(fin.baselines), "baseline_errors": fin.baseline_errors,
            "speedup": {f"vs_cudnn_{m}": ratio(base[m]) for m in P.MATHS},
            "chosen": {"family": chosen.family, "config": chosen.config, "time_us": chosen.time_us,
                       "vendor": P.is_vendor(chosen.family), "record_id": chosen_rec.id,
                       "runs": P.describe(chosen.family, chosen.config)},
            "vendor_candidates": [c.as_dict() for c in fin.vendors],
            "floor_us": fin.floor_us, "ceilings": fin.ceilings,
            "trials": trials_dict(res, opts, self.interrupted),
            "study": name, "db": db.label, "record_id": rec.id, "record_is_best": rec.is_best,
            "elapsed_s": time.time() - self.t_start,
        }


class ConvContext:
    """The problem on the device: X buffers rotated through more than twice the L2 cache, the output, the float64
    reference (ops.conv.conv_reference with CuPy)."""

    def __init__(self, problem: ConvProblem, l2_bytes: int, seed: int = 0):
        from ..device.gpu import cupy  # noqa: PLC0415
        from ..device.timing import n_buffers  # noqa: PLC0415
        cp = self.cp = cupy()
        self.problem = problem
        g = problem.geometry
        es = np.dtype(DTYPES[problem.dtype]).itemsize
        self.rng = cp.random.default_rng(seed + 1)
        self.nbuf = n_buffers(int(np.prod(g.x_shape)) * es, l2_bytes, cap=16)
        self.xs = [self.random() for _ in range(self.nbuf)]
        self.out = cp.empty(g.y_shape, dtype=DTYPES[problem.dtype])

    def random(self):
        from ..core.problem import storage  # noqa: PLC0415
        return storage(self.rng.standard_normal(self.problem.geometry.x_shape, dtype=np.float32), self.problem.dtype)

    def reference(self, x):
        return C.conv_reference(self.problem.wc, x, self.problem.geometry, xp=self.cp)

    def fresh_check(self):
        x = self.random()
        return x, self.reference(x)

    def launches(self, run) -> list:
        return [lambda i=i: run(self.xs[i], self.out) for i in range(self.nbuf)]


class GpuConvTuner(GpuTurnMixin, ConvTuner):
    """conv3x3 tuning on this process's GPU (device.turn): candidates compiled in the search's threads, verified and
    timed; the winner and cuDNN measured again in finish."""

    def __init__(self, problem: ConvProblem, opts: TuneOptions, log=lambda msg: print(msg, file=sys.stderr)):
        from ..device.gpu import gpu_info  # noqa: PLC0415
        from ..device.turn import current_gpu_key, turn_for  # noqa: PLC0415
        self.info = info = gpu_info()
        self._start_conv(problem, opts, log, info.name, info.limits())
        self.cc = info.cc
        self.versions = info.versions()
        self.turn = turn_for(current_gpu_key())
        self.turn_s = {"init": 0.0, "trials": 0.0, "verify": 0.0, "time": 0.0, "finish": 0.0}
        self.given_up = 0
        log(f"problem {problem.key()}: nnz={problem.nnz}, {problem.flops / 1e6:.1f} MFLOP; GPU {info.name}; "
            f"database {self.db.label}")
        with self._phase("init"):
            self.ctx = ConvContext(problem, info.l2_bytes, seed=opts.seed)

    def prepare(self, family: str, cfg: dict):
        """The candidate compiled for the weight and geometry (NVRTC; in the search's threads); a config the problem
        cannot run is a failed candidate."""
        try:
            return C.build_conv(self.problem.wc, self.problem.geometry, family, cfg, self.problem.dtype, self.limits)
        except UserError as exc:
            raise CandidateError("build", str(exc)) from None

    def evaluate(self, family: str, cfg: dict, kern=None):
        kern = kern if kern is not None else self.prepare(family, cfg)
        ctx = self.ctx

        def fresh():
            x, ref = ctx.fresh_check()
            return (lambda: kern(x, ctx.out)), ref
        return self.verify_and_time(fresh, ctx.out, ctx.launches(kern), self.problem.dtype, self.problem.flops)

    def _cudnn(self, fin: Final, math: str, memory: str, candidate: bool) -> None:
        """cuDNN at `math` in `memory` format: verified against the float64 reference (within twice the dtype's
        tolerance for the baseline; within the tolerance itself for the candidate), then timed (time_torch)."""
        ctx, p, g = self.ctx, self.problem, self.problem.geometry
        cp = ctx.cp
        key = f"cudnn_{math}_{memory}"
        try:
            torch = P.torch_module()
            path = P.CudnnConv(p.wc, g, math, memory)
            x, ref = ctx.fresh_check()
            from ..core.problem import as_float  # noqa: PLC0415
            xf = torch.as_tensor(as_float(x).astype(np.float32), device="cuda")
            if g.layout == "nhwc":
                xf = xf.permute(0, 3, 1, 2)
            xs = [path.input(xf)] + [path.input(torch.randn_like(xf)) for _ in range(max(1, ctx.nbuf) - 1)]
            yt = path(xs[0]).float()
            if g.layout == "nhwc":
                yt = yt.permute(0, 2, 3, 1)
            torch.cuda.synchronize()
            y = cp.asarray(yt.contiguous())
            err = float(cp.linalg.norm(y - ref) / max(float(cp.linalg.norm(ref)), 1e-30))
            tol = TOLERANCE.get(math if math != "fp32" else p.dtype, 2e-3)
            if math == "tf32":
                tol = 2e-3
            if not err <= 2 * max(tol, TOLERANCE[p.dtype]):
                raise RuntimeError(f"wrong result (relative error {err:.3g})")
            t = P.time_torch([lambda xx=xx: path(xx) for xx in xs])
            fin.baselines[f"{key}_us"] = t
            fin.baselines[f"{key}_rel_err"] = err
            if candidate:
                ok = err <= TOLERANCE[p.dtype]
                fin.vendors.append(Measured(P.CUDNN, {"math": math}, t if ok else None, err))
        except Exception as exc:  # noqa: BLE001 - a baseline that fails is reported, the tune goes on
            fin.baseline_errors[key] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.log(f"baseline {key} failed: {fin.baseline_errors[key]}")

    def measure(self, res) -> Final:
        from ..device.ceilings import ceilings  # noqa: PLC0415
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import check  # noqa: PLC0415
        ctx, p = self.ctx, self.problem
        kern = self.prepare(res.best_family, res.best_config)
        mine = "channels_last" if p.layout == "nhwc" else "nchw"
        with self._phase("finish"):
            x, ref = ctx.fresh_check()
            err = check(lambda: kern(x, ctx.out), ctx.out, ref, p.dtype)
            t = time_launches(ctx.launches(kern))
            fin = Final(t.median_us, err, t.method, t.spread)
            for memory in ("nchw", "channels_last"):
                for math in P.baseline_maths(p.dtype):
                    self._cudnn(fin, math, memory, candidate=(memory == mine and math == p.dtype
                                                              and P.CUDNN in self.vendors))
            ceil = fin.ceilings = ceilings()
        peak = (ceil["fma_fp32_TFLOPs"] if p.dtype == "fp32" else ceil["fma_fp16_TFLOPs"]) * 1e12
        fin.floor_us = max(p.min_bytes() / (ceil["copy_GBps"] * 1e9), p.flops / peak) * 1e6
        return fin


def tune_conv(problem: ConvProblem, opts: TuneOptions, log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    tuner = GpuConvTuner(problem, opts, log)
    return tuner.finish(tuner.search())


__all__ = ["ConvProblem", "ConvTuner", "GpuConvTuner", "ConvContext", "Final", "split_conv_families", "tune_conv"]
