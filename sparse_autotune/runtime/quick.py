"""Quick tuning at the first call with a new N: a handful of candidates timed on the GPU, the winner kept and stored.

`SpMM(A, tune="quick")` (also `SparseLinear(..., tune=...)`, or $SPARSE_AUTOTUNE_RUNTIME_TUNE=quick for every operator
that does not say): at the first call with an N that has no exact record on this GPU model, the operator

1. gathers the candidates (`gather`): the configs of the nearest records adapted to this N (store.lookup.candidates:
   this GPU's exact / bucket / nearest records, then same-arch, then the built-in default; up to QUICK_CONFIGS), every
   cuSPARSE algorithm and cuBLAS at the problem's precision (TF32 for fp32 only with allow_tf32; the dense candidate
   only where A's dense copy takes at most a quarter of the free GPU memory);
2. builds them (kernels compiled in parallel threads; NVRTC's first compile of a kernel dominates the cost, later
   processes find it in CuPy's disk cache), verifies each against a float64 reference on fresh random inputs (as the
   tuner does, device.verify; the tolerance of core.vendor.tolerance) and times it GPU-only (device.timing
   .time_launches: CUDA-graph replay, B rotated past the L2, QUICK_REPEATS replays);
3. keeps the fastest for this process (`op.plan(n)` then says source "quick") and stores it in the user's tuning
   database (the operator's db=, else $SPARSE_AUTOTUNE_DB, else the user cache file; never a database shipped with
   the package: then $SPARSE_AUTOTUNE_DB or the user cache) as a verified record with origin
   "quick", beside the best sparse kernel's record where a vendor path won; a later process finds it as "exact".
   A database that cannot be written is warned about once; the winner is still used.

op.linear (the nk layout, y = x @ A^T + bias: runtime.spmm) is quick-tuned the same way at its first call with an N
(`op.quick_nk[n]`), unless an exact nk record exists: its candidates are lookup's for nk (nk records, then kn records
run natively or staged) and the vendor paths' nk forms, verified with a random nonzero bias; its records are nk.
Where the caller runs a cuBLAS plan as torch's F.linear with the bias fused (SparseLinear sets
`op.dense_bias_fused`), the cuBLAS candidate is timed without the bias (the operator's own cuBLAS nk launch fuses it
in cuBLASLt's epilogue too, device.vendor.LtBiasGemm, +0.03-0.5 us on MiniLM's layers; a bias not 16-byte aligned
takes a separate kernel there).

"off" keeps the lookup's plan as it is (no first-call cost, nothing written). It is the default (DEFAULT_TUNE), for
three reasons: a first call that compiles and times several kernels takes from a fraction of a second (kernels in
CuPy's disk cache) to seconds (cold compiles), which an inference server does not expect from a forward pass; an
inference process should not write files unless asked; and an operator whose plan depends on timings taken while
other work shares the GPU is not reproducible. Where a tuned record exists ("exact"), quick tuning does nothing.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..core import vendor as V
from ..errors import UserError

RUNTIME_TUNE_ENV = "SPARSE_AUTOTUNE_RUNTIME_TUNE"
TUNE_MODES = ("off", "quick")
DEFAULT_TUNE = "off"
QUICK_CONFIGS = 4  # configs of the nearest records (and the default) timed beside the vendor paths
QUICK_REPEATS = 5  # CUDA-graph replays timed per candidate (the tuner: 20)
QUICK_TARGET_US = 200.0  # the length of one replay
# a kernel must beat the fastest vendor path by more than this to be chosen: two quick timings of equal kernels differ
# by a few %, and on MiniLM's layers (bench/results/runtime-untuned-h200.md) near ties picked by noise cost up to 14 %
QUICK_VENDOR_MARGIN = 0.05
ORIGIN = "quick"


def tune_mode(value=None) -> str:
    """The runtime tuning mode: `value` ("off" or "quick"), else $SPARSE_AUTOTUNE_RUNTIME_TUNE, else DEFAULT_TUNE. An
    unknown value is a one-line UserError naming where it came from."""
    where = "tune="
    if value is None:
        value = os.environ.get(RUNTIME_TUNE_ENV, "").strip() or None
        where = f"${RUNTIME_TUNE_ENV}="
    if value is None:
        return DEFAULT_TUNE
    mode = str(value).strip().lower()
    if mode not in TUNE_MODES:
        raise UserError(f"{where}{value!r}: choose one of {', '.join(TUNE_MODES)}")
    return mode


@dataclass
class Candidate:
    """One candidate of a quick tune: where it came from (a lookup source, or "vendor"), and once measured its time
    (None: failed; `error` says why) and relative error."""

    family: str
    config: dict
    source: str
    time_us: float | None = None
    rel_err: float | None = None
    error: str | None = None
    timing: str | None = None
    built: object = field(default=None, repr=False)  # its launcher, once built (the winner's is kept)

    def as_dict(self) -> dict:
        return {"family": self.family, "config": self.config, "source": self.source, "time_us": self.time_us,
                "rel_err": self.rel_err, "error": self.error}


def vendor_candidates(dtype: str, allow_tf32: bool = False, dense: bool = True) -> list[Candidate]:
    """Every cuSPARSE algorithm, and (where `dense`) cuBLAS at the problem's precision."""
    fams = V.VENDOR_FAMILIES if dense else (V.CUSPARSE,)
    return [Candidate(f, c, "vendor") for f, c in V.all_configs(dtype, fams, allow_tf32)]


def unique(cands: list[Candidate]) -> list[Candidate]:
    """Each (family, config) once, the first kept."""
    seen, out = set(), []
    for c in cands:
        key = (c.family, json.dumps(c.config, sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def pick(cands: list[Candidate], measure) -> tuple[Candidate | None, Candidate | None]:
    """Measure each candidate (`measure(c)` -> (time_us, rel_err), raising on a failure: kept in c.error) and return
    (the fastest, the fastest of a templated family); None where none ran. Pure logic: the GPU is in `measure`."""
    for c in cands:
        try:
            c.time_us, c.rel_err = measure(c)
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is passed over, as in a search
            c.time_us, c.error = None, (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return V.choose(cands, margin=QUICK_VENDOR_MARGIN)


def gather(op, n: int, info, limit: int = QUICK_CONFIGS, layout: str = "kn") -> list[Candidate]:
    """The candidates for N: the nearest records' configs adapted to N (store.lookup.candidates; nk: with their nk
    path), then the vendor paths (the dense one only where its copy of A fits in a quarter of the free GPU memory),
    each once."""
    from ..store.lookup import candidates  # noqa: PLC0415
    m, k = op.shape
    found = candidates(m, k, n, max(op.density, 1e-6), op.dtype, gpu=info.name, cc=info.cc, db=op.db, nnz=op.nnz,
                       limits=info.limits(), allow_tf32=op.allow_tf32, limit=limit, layout=layout)
    out = [Candidate(t.family, t.config, t.source) for t in found]
    return unique(out + vendor_candidates(op.dtype, op.allow_tf32, dense=_dense_fits(op)))


def _dense_fits(op) -> bool:
    from ..device.gpu import cupy  # noqa: PLC0415
    if op._dense is not None:
        return True
    free, _ = cupy().cuda.runtime.memGetInfo()
    return V.dense_bytes(*op.shape, op.dtype) <= free // 4


class GpuMeasure:
    """measure(candidate) on the GPU for one operator and N: the candidate built (kernels compiled ahead, in parallel),
    verified on a fresh random B against a float64 reference, then timed by CUDA-graph replay over rotating B
    buffers. The buffers are freed by close(). layout "nk": B is x (N x K), the output y (N x M), and a random nonzero
    bias is added by every verified and timed call."""

    def __init__(self, op, n: int, info, layout: str = "kn"):
        import cupyx.scipy.sparse as csp  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415

        from ..core.problem import DTYPES, storage  # noqa: PLC0415
        from ..device.gpu import cupy  # noqa: PLC0415
        from ..device.timing import n_buffers  # noqa: PLC0415
        from ..device.verify import reference  # noqa: PLC0415
        cp = cupy()
        self.op, self.n, self.cp, self.layout = op, n, cp, layout
        op._device()  # A's CSR arrays uploaded once, before the compile threads share them
        m, k = op.shape
        nk = layout == "nk"
        rng = cp.random.default_rng(n)
        es = np.dtype(DTYPES[op.dtype]).itemsize
        shape = (n, k) if nk else (k, n)
        self.b_bufs = [storage(rng.standard_normal(shape, dtype=np.float32), op.dtype)
                       for _ in range(n_buffers(k * n * es, info.l2_bytes))]
        self.b_check = storage(rng.standard_normal(shape, dtype=np.float32), op.dtype)
        self.bias = storage(rng.standard_normal(m, dtype=np.float32) + 2.0, op.dtype) if nk else None
        self.ref = reference(csp.csr_matrix(op.host.astype(np.float64)), self.b_check, layout, self.bias)
        self.c = cp.empty((n, m) if nk else (m, n), dtype=DTYPES[op.dtype])
        self.extra = (self.bias.data.ptr,) if nk else ()  # the launch's bias argument (nk)
        self.best: float | None = None

    def build_all(self, cands: list[Candidate]) -> None:
        """Compile the templated candidates' kernels in parallel threads (a failure is kept for measure to raise)."""
        sparse = [c for c in cands if not V.is_vendor(c.family)]

        def build(c):
            try:
                c.built = self.op._build(self.n, c.family, c.config, self.layout, strict=True)
            except Exception as exc:  # noqa: BLE001
                c.built = exc
        if sparse:
            with ThreadPoolExecutor(max_workers=min(4, len(sparse))) as pool:
                list(pool.map(build, sparse))

    def __call__(self, c: Candidate):
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import poison, rel_error  # noqa: PLC0415
        cp = self.cp
        ln = c.built
        if ln is None:
            ln = self.op._build(self.n, c.family, c.config, self.layout, strict=True)
        if isinstance(ln, Exception):
            raise ln
        c.built = ln
        c_ptr, extra = self.c.data.ptr, self.extra
        poison(self.c)
        ln(self.b_check.data.ptr, c_ptr, cp.cuda.get_current_stream().ptr, *extra)
        cp.cuda.get_current_stream().synchronize()
        err = rel_error(self.c, self.ref)
        tol = V.tolerance(self.op.dtype, c.family, c.config)
        if not err <= tol:
            raise RuntimeError(f"relative error {err:.3g} > tolerance {tol:g}")
        # the launches run on time_launches' own stream (the current one inside it). cuBLAS in nk for a caller that
        # runs it as torch's F.linear (SparseLinear: bias fused in cuBLAS's epilogue) is timed without the separate
        # bias kernel the operator's own nk launcher adds (verified with it above)
        if self.layout == "nk" and c.family == "dense" and getattr(self.op, "dense_bias_fused", False):
            extra = (0,)
        t = time_launches([lambda p=b.data.ptr: ln(p, c_ptr, cp.cuda.get_current_stream().ptr, *extra)
                           for b in self.b_bufs],
                          repeats=QUICK_REPEATS, target_us=QUICK_TARGET_US,
                          give_up_above_us=None if self.best is None else max(3.0 * self.best, 50.0))
        c.timing = t.method
        self.best = t.median_us if self.best is None else min(self.best, t.median_us)
        return t.median_us, err

    def close(self):
        self.b_bufs = self.b_check = self.ref = self.c = self.bias = None


def baselines(cands: list[Candidate]) -> dict:
    """The record's baseline columns from the measured vendor candidates: cuSPARSE's best algorithm, cuBLAS per math."""
    ran = [c for c in cands if c.time_us is not None]
    sp = [c.time_us for c in ran if c.family == V.CUSPARSE]
    out = {"cusparse_us": min(sp) if sp else None}
    for math in ("fp32", "tf32", "fp16", "bf16"):
        d = [c.time_us for c in ran if c.family == V.DENSE and c.config.get("math") == math]
        out[f"cublas_{math}_us"] = min(d) if d else None
    return out


def records(op, n: int, info, chosen: Candidate, sparse: Candidate | None, cands: list[Candidate],
            layout: str = "kn") -> list:
    """The records a quick tune stores: the winner's, and the best sparse kernel's where a vendor path won (origin
    "quick", verified like any record: their error is the verification's, their time the GPU-only timing's), of the
    layout tuned."""
    from .. import __version__  # noqa: PLC0415
    from ..core.problem import matrix_hash  # noqa: PLC0415
    from ..store.db import Record  # noqa: PLC0415
    m, k = op.shape
    v = info.versions()
    first = Record(
        gpu_name=info.name, gpu_cc=info.cc, m=m, k=k, n=n, density=op.density, dtype=op.dtype, pattern="matrix",
        layout=layout, family=chosen.family,
        config_json=json.dumps(chosen.config, sort_keys=True), time_us=chosen.time_us,
        gflops=2.0 * op.nnz * n / (chosen.time_us * 1e-6) / 1e9, **baselines(cands), floor_us=None,
        max_rel_err=chosen.rel_err, trials=sum(1 for c in cands if c.time_us is not None),
        matrix_hash=matrix_hash(op.host), study_name=None, package_version=__version__, cuda_version=v["cuda"],
        driver_version=v["driver"], cupy_version=v["cupy"],
        created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None), origin=ORIGIN)
    out = [first]
    if sparse is not None and sparse is not chosen:
        out.append(first.derived(family=sparse.family, config_json=json.dumps(sparse.config, sort_keys=True),
                                 time_us=sparse.time_us, max_rel_err=sparse.rel_err, origin=ORIGIN,
                                 gflops=first.gflops * chosen.time_us / sparse.time_us))
    return out


_warned: set = set()


def _shipped(target: str) -> bool:
    """The target is one of the databases shipped in the package's db/ folder (never written to)."""
    from ..resources import resource_dir  # noqa: PLC0415
    from ..store import guard  # noqa: PLC0415
    try:
        path = guard.resolve(target).path
    except UserError:
        return False
    if path is None:
        return False
    path = path.expanduser().resolve()
    return any(path == q.resolve() for q in resource_dir("db").glob("*.sqlite"))


def store(op, recs: list) -> list[int]:
    """Store the records in the operator's user database (db=, else $SPARSE_AUTOTUNE_DB, else the user cache file;
    where db= names a database shipped with the package, which is never written, $SPARSE_AUTOTUNE_DB or the user cache
    file); their ids. A database that cannot be written is a warning (once per target), not an error: the winner is
    used."""
    from ..store.db import TuningDB, default_db_path  # noqa: PLC0415
    target = str(op.db) if op.db is not None else str(default_db_path())
    if _shipped(target):
        target = str(default_db_path())
    try:
        tdb = TuningDB(target, create=True)
        try:
            return [tdb.store(r).id for r in recs]
        finally:
            tdb.dispose()
    except (UserError, OSError) as exc:
        if target not in _warned:
            _warned.add(target)
            warnings.warn(f"sparse-autotune: quick tuning's result not stored in {target}: {exc}", stacklevel=3)
        return []


@dataclass
class QuickResult:
    """What a quick tune did for one N: the candidates (measured), the winner, the best sparse kernel, the records
    stored and the seconds it took."""

    n: int
    candidates: list[Candidate]
    chosen: Candidate | None
    sparse: Candidate | None
    record_ids: list[int]
    seconds: float


def quick_tune(op, n: int, info, layout: str = "kn") -> QuickResult:
    """Gather, build, verify and time the candidates for N on this GPU (layout nk: for op.linear); store the winner;
    return what was done (the winner's launcher in `.chosen.built`)."""
    t0 = time.perf_counter()
    cands = gather(op, n, info, layout=layout)
    meas = GpuMeasure(op, n, info, layout)
    try:
        meas.build_all(cands)
        chosen, sparse = pick(cands, meas)
    finally:
        meas.close()
    ids = store(op, records(op, n, info, chosen, sparse, cands, layout)) if chosen is not None else []
    for c in cands:
        if c is not chosen:
            c.built = None  # free what lost (the dense copy too, unless the operator still uses it)
    return QuickResult(n, cands, chosen, sparse, ids, time.perf_counter() - t0)
