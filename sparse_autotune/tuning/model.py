"""tune-model: each distinct problem of a checkpoint's layers tuned once through the problem loop, layer rows kept.
Linear / 1x1-conv layers are SpMM problems (core.checkpoint.Job, tuner.tune); 3x3 conv layers with a --spatial size are
conv3x3 problems (ConvJob, conv_tune.tune_conv: every conv3x3 family and cuDNN, no warm start)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..core.checkpoint import Job, Layer
from ..store.db import TuningDB
from ..store.model_layers import ensure_model_table, study_done, write_layer_rows
from ..tuning.loop import ProblemLoop, log_stderr, tune_interrupted
from ..tuning.tuner import study_name


@dataclass
class ConvJob:
    """One distinct conv3x3 problem (Cout, Cin, density key, dtype, geometry) and the 3x3 layers it stands for (the
    first one's weight is tuned). m = Cout, k = Cin, n = output pixels of all images: the record's key."""

    geometry: object  # ops.conv.Geometry
    density: float  # density key (3 significant digits) of nnz / (Cout * Cin * 9)
    dtype: str
    layers: list
    op = "conv3x3"
    m: int = field(init=False)
    k: int = field(init=False)
    n: int = field(init=False)
    layout: str = field(init=False)

    def __post_init__(self):
        g = self.geometry
        self.m, self.k, self.n, self.layout = g.cout, g.cin, g.pixels, g.layout

    @property
    def rep(self) -> Layer:
        return self.layers[0]

    def problem(self):
        from .conv_tune import ConvProblem  # noqa: PLC0415
        g = self.geometry
        return ConvProblem.from_weight(self.rep.csr().toarray().reshape(g.cout, g.cin, 3, 3), g, self.dtype,
                                       kind="matrix")


def conv_plan(chosen: list, batches: list[int], dtypes, layout: str = "nchw") -> list[ConvJob]:
    """Distinct conv3x3 problems of core.checkpoint.select_conv3x3's (layer, H, W, stride) in order: dtype, batch,
    first layer. Bad geometry (index limits) or a dtype conv3x3 does not compute: UserError."""
    from ..core.checkpoint import density_key  # noqa: PLC0415
    from ..ops.conv import CONV_DTYPES, check_geometry  # noqa: PLC0415
    from ..errors import UserError  # noqa: PLC0415
    jobs: dict[tuple, ConvJob] = {}
    for dt in dtypes:
        if chosen and dt not in CONV_DTYPES:
            raise UserError(f"conv3x3 computes {', '.join(CONV_DTYPES)} (got {dt})")
        for b in batches:
            for lay, h, w, s in chosen:
                g = check_geometry(lay.orig_shape[0], lay.orig_shape[1], h, w, b, s, layout)
                key = (g, density_key(lay.density), dt)
                if key in jobs:
                    jobs[key].layers.append(lay)
                else:
                    jobs[key] = ConvJob(g, key[1], dt, [lay])
    return list(jobs.values())


@dataclass
class ModelTuneResult:
    model: str
    layers: int
    problems: int
    tuned: int = 0
    skipped: int = 0  # done in an earlier run
    failed: int = 0
    interrupted: bool = False
    stopped: str = "done"
    reports: list = field(default_factory=list)


class _ModelRun(ProblemLoop):
    """The jobs of one model through the problem loop; every job's layers get their rows (done, failed or
    interrupted) as it ends."""

    def __init__(self, model: str, layers: list[Layer], opts, gpu_name: str, tuner: Callable, db: TuningDB,
                 progress: bool, deadline: float | None, log, conv_tuner: Callable | None = None):
        super().__init__(deadline=deadline, progress=progress, desc=model, log=log)
        self.model, self.opts, self.gpu_name, self.tuner, self.db = model, opts, gpu_name, tuner, db
        self.conv_tuner = conv_tuner
        self.positions = {lay.name: i for i, lay in enumerate(layers)}
        self.problems: dict[int, tuple] = {}  # id(job) -> (problem, study name)
        self.reports: list[dict] = []

    def _problem(self, job: Job):
        if id(job) not in self.problems:
            problem = job.problem()
            self.problems[id(job)] = (problem, study_name(problem, self.gpu_name))
        return self.problems[id(job)]

    def _rows(self, job: Job, status: str, record_id: int | None) -> None:
        problem, name = self._problem(job)
        write_layer_rows(self.db, self.model, self.gpu_name, job, problem.density, name, status, record_id,
                         self.positions)

    def skip(self, job: Job) -> bool:
        done, rec_id = study_done(self.db, self._problem(job)[1], self.opts.trials)
        if done:
            self._rows(job, "done", rec_id)
        return done

    def describe(self, job: Job) -> str:
        if isinstance(job, ConvJob):
            return (f"conv3x3 {job.m}x{job.k}x3x3 {job.geometry.tag()} d={job.density:g} {job.dtype} {job.layout} "
                    f"({len(job.layers)} layer(s))")
        return f"{job.m}x{job.k} d={job.density:g} {job.dtype} N={job.n} {job.layout} ({len(job.layers)} layer(s))"

    def work(self, job: Job) -> None:
        tuner, opts = self.tuner, replace(self.opts, progress=self.progress and self.opts.progress)
        if isinstance(job, ConvJob):  # conv3x3's own families and cuDNN (the SpMM --families / --allow-tf32 are not its)
            if self.conv_tuner is None:
                from .conv_tune import tune_conv  # noqa: PLC0415
                self.conv_tuner = tune_conv
            tuner = self.conv_tuner
            opts = replace(opts, families=None, vendors=None, allow_tf32=False, warm_start=False)
        rep = tuner(self._problem(job)[0], opts, self.log)
        if tune_interrupted(rep):  # the tuner caught the Ctrl-C and stored the best so far
            self._rows(job, "interrupted", rep["record_id"])
            raise KeyboardInterrupt
        self._rows(job, "done", rep["record_id"])
        self.reports.append(rep)

    def failed(self, job: Job, exc) -> None:
        self.log(f"problem {self.describe(job)} failed: {exc}")
        self._rows(job, "failed", None)

    def interrupted(self) -> None:
        res = self.result
        self.log(f"interrupted: {res.finished + res.skipped} of {res.total} problems are done and kept in "
                 f"{self.db.label}; run the same command again to resume")


def tune_model(model: str, layers: list[Layer], jobs: list[Job], opts, gpu_name: str,
               tuner: Callable | None = None, progress: bool = True, budget_s: float | None = None,
               log=log_stderr, conv_tuner: Callable | None = None) -> ModelTuneResult:
    """Tune each job (distinct problem) with `tuner(problem, opts, log)` (default: tuner.tune on this GPU), record
    which layers map to it, skip jobs done by an earlier run, start none after `budget_s` seconds, stop cleanly on
    Ctrl-C (KeyboardInterrupt) keeping what was tuned. `gpu_name` names the studies (tuner.study_name); `tuner` is a
    hook for synthetic tests. `jobs` may hold ConvJobs (conv_plan), tuned with `conv_tuner(problem, opts, log)`
    (default: conv_tune.tune_conv on this GPU); `layers` then holds their layers too (checkpoint order)."""
    if tuner is None:
        from ..tuning.tuner import tune as tuner  # noqa: PLC0415
    db = TuningDB(opts.db, create=True)
    ensure_model_table(db)
    run = _ModelRun(model, layers, opts, gpu_name, tuner, db, progress,
                    None if budget_s is None else time.time() + budget_s, log, conv_tuner)
    try:
        res = run.run(jobs)
    finally:
        db.dispose()
    return ModelTuneResult(model, len(layers), len(jobs), tuned=res.finished, skipped=res.skipped, failed=res.failed,
                           interrupted=res.interrupted, stopped=res.stopped, reports=run.reports)
