"""tune-model: each distinct problem of a checkpoint's layers tuned once through the problem loop, layer rows kept."""
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
                 progress: bool, deadline: float | None, log):
        super().__init__(deadline=deadline, progress=progress, desc=model, log=log)
        self.model, self.opts, self.gpu_name, self.tuner, self.db = model, opts, gpu_name, tuner, db
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
        return f"{job.m}x{job.k} d={job.density:g} {job.dtype} N={job.n} {job.layout} ({len(job.layers)} layer(s))"

    def work(self, job: Job) -> None:
        rep = self.tuner(self._problem(job)[0], replace(self.opts, progress=self.progress and self.opts.progress),
                         self.log)
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
               log=log_stderr) -> ModelTuneResult:
    """Tune each job (distinct problem) with `tuner(problem, opts, log)` (default: tuner.tune on this GPU), record
    which layers map to it, skip jobs done by an earlier run, start none after `budget_s` seconds, stop cleanly on
    Ctrl-C (KeyboardInterrupt) keeping what was tuned. `gpu_name` names the studies (tuner.study_name); `tuner` is a
    hook for synthetic tests."""
    if tuner is None:
        from ..tuning.tuner import tune as tuner  # noqa: PLC0415
    db = TuningDB(opts.db, create=True)
    ensure_model_table(db)
    run = _ModelRun(model, layers, opts, gpu_name, tuner, db, progress,
                    None if budget_s is None else time.time() + budget_s, log)
    try:
        res = run.run(jobs)
    finally:
        db.dispose()
    return ModelTuneResult(model, len(layers), len(jobs), tuned=res.finished, skipped=res.skipped, failed=res.failed,
                           interrupted=res.interrupted, stopped=res.stopped, reports=run.reports)
