"""Scale-out tuning: worker processes on several GPUs or hosts share the work through one RDB storage.

The distributed engine is Optuna's: the studies live in an `optuna.storages.RDBStorage` (any SQLAlchemy URL;
PostgreSQL for several hosts, `postgresql+psycopg://user:password@host:5432/dbname`), several workers run trials
of one study at once, Optuna's heartbeat (`heartbeat_interval`, `grace_period`) fails the RUNNING trial of a worker
that died, and `RetryHeartbeatStaleTrialCallback` queues that trial again.

Beside Optuna's tables, the same database holds the problem queue (`sa_queue`) and the workers (`sa_workers`):

- sa_queue: one row per problem (its spec as JSON: shape, density, dtype, pattern, seed, trials, sampler, ...) and
  GPU model ('*': the first worker of any model tunes it). state: queued -> running -> finalizing -> done, or failed.
  A worker claims a queued problem with a conditional UPDATE (... WHERE state = 'queued', rowcount checked: atomic on
  PostgreSQL and SQLite alike). With nothing queued it joins a running problem of its GPU model: several workers on
  one study. Every worker on a problem beats its heartbeat column; a running or finalizing problem whose heartbeat
  is older than the grace period (all its workers died) goes back to queued (after MAX_ATTEMPTS claims: failed).
- A worker that ends its search (the trial budget, counted over all workers, is spent) tries to move the problem
  running -> finalizing (again a conditional UPDATE: one worker wins); the winner waits for the trials still in
  flight, then stores the best record in the tuning DB exactly as a single `tune` does (same key, same merge rule)
  and marks the problem done with its report.
- sa_workers: id (host/pid/device), host, device, GPU, current problem, state, heartbeat. Each trial carries its
  worker's id in its user attrs ("worker"), so `status` counts trials per worker.

Heartbeats are wall-clock times (seconds since the epoch) of the writing host: hosts must keep their clocks in sync
to well within the grace period (NTP does).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine, event,
                        func, select, update)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from ..errors import DeviceLostError, UserError

STATES = ("queued", "running", "finalizing", "done", "failed")
MAX_ATTEMPTS = 3  # claims of a problem (its workers died each time) before it is marked failed
MAX_TRIAL_RETRY = 3  # RetryHeartbeatStaleTrialCallback(max_retry=...)
DEFAULT_HEARTBEAT = 10  # seconds
ANY_GPU = "*"

metadata = MetaData()
queue_table = Table(
    "sa_queue", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("spec_key", String(64), nullable=False),
    Column("gpu", String(128), nullable=False),  # the GPU model to tune on, or '*'
    Column("label", String(255), nullable=False),
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("study_gpu", String(128)),  # the GPU model of the study (set by the claim)
    Column("study_name", String(512)),
    Column("worker", String(255)),  # the worker that claimed (or finalised) it last
    Column("heartbeat", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("result", Text),  # the report (JSON) of a done problem
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("spec_key", "gpu", name="uq_sa_queue_spec_gpu"),
)
workers_table = Table(
    "sa_workers", metadata,
    Column("id", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("device", String(64)),
    Column("gpu", String(128)),
    Column("state", String(16), nullable=False),  # idle, working, exited
    Column("problem_id", Integer),
    Column("started_at", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("grace", Float, nullable=False),  # its grace period: silent longer than this, it is taken as lost
)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def problem_spec(problem, trials: int, timeout: float | None, sampler: str, families, warm_start: bool = True) -> dict:
    """What a worker needs to rebuild and tune a (random) problem: the matrix is regenerated from its seed."""
    spec = {"m": problem.m, "k": problem.k, "n": problem.n, "density": problem.density, "dtype": problem.dtype,
            "pattern": problem.pattern, "seed": problem.seed, "trials": int(trials), "timeout": timeout,
            "sampler": sampler, "families": list(families) if families else None}
    if not warm_start:  # only then: the specs (and queue keys) of warm-started problems stay as they were
        spec["warm_start"] = False
    return spec


def spec_label(spec: dict) -> str:
    return (f"{spec['m']}x{spec['k']} N={spec['n']} d={spec['density']:g} {spec['dtype']} {spec['pattern']} "
            f"seed={spec['seed']} trials={spec['trials']}")


def _now() -> float:
    return time.time()


class ScaleOut:
    """The shared storage: Optuna's RDBStorage (heartbeat on, stale trials retried) and the queue tables, on one URL.

    A malformed URL, a missing database driver or an unreachable server is a UserError (one line, exit 2)."""

    def __init__(self, url: str, heartbeat: int = DEFAULT_HEARTBEAT, grace: int | None = None):
        import optuna  # noqa: PLC0415
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback  # noqa: PLC0415
        if not isinstance(heartbeat, int) or heartbeat <= 0:
            raise UserError(f"--heartbeat must be a positive number of seconds (got {heartbeat})")
        self.heartbeat = heartbeat
        self.grace = grace if grace is not None else 6 * heartbeat
        if self.grace <= heartbeat:
            raise UserError(f"--grace ({self.grace} s) must be longer than --heartbeat ({heartbeat} s)")
        self.url = url
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:
            raise UserError(f"--storage {url!r} is not an SQLAlchemy URL ({_one_line(exc)}); e.g. "
                            "postgresql+psycopg://user:password@host:5432/dbname or sqlite:///path/to/file.sqlite") from None
        self.label = parsed.render_as_string(hide_password=True)
        kwargs: dict = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": 60}
        elif parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.storage = RDBStorage(
                    url, engine_kwargs=dict(kwargs), heartbeat_interval=heartbeat, grace_period=self.grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_TRIAL_RETRY))
            self.engine = create_engine(url, **kwargs)
            if parsed.get_backend_name() == "sqlite":
                event.listen(self.engine, "connect", _sqlite_autocommit)
                event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            metadata.create_all(self.engine)
        except (SQLAlchemyError, ImportError, ValueError, OSError, RuntimeError) as exc:
            hint = ""
            if isinstance(exc, ImportError) and "psycopg" in str(exc):
                hint = " (install the PostgreSQL driver: pip install 'sparse-autotune[postgres]')"
            raise UserError(f"cannot use storage {self.label!r}: {_one_line(exc)}{hint}") from None

    def dispose(self):
        self.engine.dispose()
        self.storage.engine.dispose()

    # ---- the queue ---------------------------------------------------------------------------------------

    def enqueue(self, specs: list[dict], gpu: str = ANY_GPU) -> list[int]:
        """Add problems (a problem already in the queue for the same GPU keeps its row and state); their ids."""
        ids = []
        q = queue_table
        for spec in specs:
            text = json.dumps(spec, sort_keys=True)
            key = hashlib.sha256(text.encode()).hexdigest()
            with self.engine.begin() as c:
                row = c.execute(select(q.c.id).where(q.c.spec_key == key, q.c.gpu == gpu)).first()
                if row is None:
                    try:
                        with c.begin_nested():
                            rid = c.execute(q.insert().values(
                                spec_key=key, gpu=gpu, label=spec_label(spec)[:255], spec=text, state="queued",
                                attempts=0, created_at=_now(), updated_at=_now())).inserted_primary_key[0]
                    except IntegrityError:  # enqueued by another process meanwhile
                        rid = c.execute(select(q.c.id).where(q.c.spec_key == key, q.c.gpu == gpu)).scalar_one()
                else:
                    rid = row[0]
            ids.append(int(rid))
        return ids

    def problems(self, ids=None) -> list[dict]:
        q = queue_table
        stmt = select(q).order_by(q.c.id)
        if ids is not None:
            stmt = stmt.where(q.c.id.in_(list(ids)))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(stmt).mappings()]

    def workers(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(workers_table).order_by(workers_table.c.started_at)).mappings()]

    def _scope(self, gpu: str, only):
        q = queue_table
        cond = q.c.gpu.in_([ANY_GPU, gpu])
        if only is not None:
            cond = cond & q.c.id.in_(list(only))
        return cond

    def reclaim_stale(self, gpu: str, only=None) -> list[int]:
        """Running or finalizing problems whose workers all stopped beating go back to queued (or, after
        MAX_ATTEMPTS claims, to failed)."""
        q = queue_table
        cutoff = _now() - self.grace
        out = []
        with self.engine.begin() as c:
            rows = c.execute(select(q.c.id, q.c.attempts, q.c.state).where(
                self._scope(gpu, only), q.c.state.in_(("running", "finalizing")), q.c.heartbeat < cutoff)).all()
            for rid, attempts, state in rows:
                to = "queued" if attempts < MAX_ATTEMPTS else "failed"
                err = None if to == "queued" else f"its workers stopped {attempts} times (heartbeat lost)"
                res = c.execute(update(q).where(q.c.id == rid, q.c.state == state, q.c.heartbeat < cutoff)
                                .values(state=to, error=err, updated_at=_now()))
                if res.rowcount == 1:
                    out.append(rid)
        return out

    def claim(self, worker: str, gpu: str, only=None, exclude=()) -> tuple[dict, str] | None:
        """(problem row, 'claimed' | 'joined') or None. A queued problem first (conditional UPDATE: atomic), else a
        running one of this GPU model that the worker has not worked on yet (several workers on one study)."""
        q = queue_table
        self.reclaim_stale(gpu, only)
        with self.engine.begin() as c:
            while True:
                stmt = select(q).where(self._scope(gpu, only), q.c.state == "queued").order_by(q.c.id).limit(1)
                if self.engine.dialect.name == "postgresql":
                    stmt = stmt.with_for_update(skip_locked=True)
                row = c.execute(stmt).mappings().first()
                if row is None:
                    break
                res = c.execute(update(q).where(q.c.id == row["id"], q.c.state == "queued").values(
                    state="running", worker=worker, heartbeat=_now(), attempts=q.c.attempts + 1, study_gpu=gpu,
                    study_name=None, updated_at=_now()))
                if res.rowcount == 1:
                    return self._row(c, row["id"]), "claimed"
            stmt = select(q).where(self._scope(gpu, only), q.c.state == "running", q.c.study_gpu == gpu)
            if exclude:
                stmt = stmt.where(q.c.id.notin_(list(exclude)))
            row = c.execute(stmt.order_by(q.c.id).limit(1)).mappings().first()
            return (dict(row), "joined") if row is not None else None

    @staticmethod
    def _row(c, rid) -> dict:
        return dict(c.execute(select(queue_table).where(queue_table.c.id == rid)).mappings().one())

    def set_study(self, rid: int, name: str):
        with self.engine.begin() as c:
            c.execute(update(queue_table).where(queue_table.c.id == rid).values(study_name=name, updated_at=_now()))

    def state(self, rid: int) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(queue_table.c.state).where(queue_table.c.id == rid)).scalar()

    def to_finalizing(self, rid: int, worker: str) -> bool:
        q = queue_table
        with self.engine.begin() as c:
            res = c.execute(update(q).where(q.c.id == rid, q.c.state == "running").values(
                state="finalizing", worker=worker, heartbeat=_now(), updated_at=_now()))
            return res.rowcount == 1

    def finish(self, rid: int, worker: str, state: str, result: dict | None = None, error: str | None = None) -> bool:
        """finalizing (by this worker) -> done / failed, or running -> failed."""
        q = queue_table
        with self.engine.begin() as c:
            res = c.execute(update(q).where(q.c.id == rid, q.c.state.in_(("running", "finalizing"))).values(
                state=state, worker=worker, error=error, updated_at=_now(),
                result=json.dumps(result, default=str) if result is not None else None))
            return res.rowcount == 1

    def requeue(self, rid: int, error: str):
        q = queue_table
        with self.engine.begin() as c:
            c.execute(update(q).where(q.c.id == rid, q.c.state.in_(("running", "finalizing"))).values(
                state="queued", error=error, updated_at=_now()))

    def pending(self, gpu: str, only=None) -> int:
        """Problems in scope that are not final (queued, running or finalizing)."""
        q = queue_table
        with self.engine.connect() as c:
            return c.execute(select(func.count()).select_from(q).where(
                self._scope(gpu, only), q.c.state.in_(("queued", "running", "finalizing")))).scalar_one()

    # ---- workers -----------------------------------------------------------------------------------------

    def register(self, wid: str, gpu: str, device: str | None):
        w = workers_table
        with self.engine.begin() as c:
            c.execute(w.delete().where(w.c.id == wid))
            c.execute(w.insert().values(id=wid, host=socket.gethostname(), pid=os.getpid(), device=device, gpu=gpu,
                                        state="idle", problem_id=None, started_at=_now(), heartbeat=_now(),
                                        grace=self.grace))

    def beat(self, wid: str, problem_id: int | None, state: str | None = None):
        w, q = workers_table, queue_table
        now = _now()
        with self.engine.begin() as c:
            vals = {"heartbeat": now, "problem_id": problem_id}
            if state is not None:
                vals["state"] = state
            c.execute(update(w).where(w.c.id == wid).values(**vals))
            if problem_id is not None:
                c.execute(update(q).where(q.c.id == problem_id, q.c.state.in_(("running", "finalizing")))
                          .values(heartbeat=now))


def _sqlite_autocommit(dbapi_con, _record):
    dbapi_con.isolation_level = None  # transactions are begun by the "begin" listener (BEGIN IMMEDIATE)
    cur = dbapi_con.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=60000")
    finally:
        cur.close()


# ---- the worker --------------------------------------------------------------------------------------------


def worker_id(device: str | None) -> str:
    return f"{socket.gethostname()}/{os.getpid()}" + (f"/gpu{device}" if device not in (None, "") else "")


class _Beater:
    """The worker's heartbeat thread: its sa_workers row and its current problem's heartbeat, every interval; it
    also reads the problem's state (a search stops once another worker is finishing the problem)."""

    def __init__(self, so: ScaleOut, wid: str):
        self.so, self.wid = so, wid
        self.problem_id: int | None = None
        self.problem_state: str | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sa-worker-heartbeat", daemon=True)
        self.thread.start()

    def set_problem(self, rid: int | None):
        self.problem_id = rid
        self.problem_state = "running" if rid is not None else None
        self.so.beat(self.wid, rid, "working" if rid is not None else "idle")

    def _loop(self):
        while not self.stop_event.wait(self.so.heartbeat):
            try:
                rid = self.problem_id
                self.so.beat(self.wid, rid)
                if rid is not None:
                    self.problem_state = self.so.state(rid)
            except Exception:  # noqa: BLE001 - a lost beat is retried at the next interval
                pass

    def close(self):
        self.stop_event.set()
        self.thread.join(timeout=10)


def _settle(so: ScaleOut, study, poll: float = 0.5):
    """Wait until the study has no RUNNING trial: the other workers' trials finish, a dead worker's is failed by
    Optuna's heartbeat check (fail_stale_trials, which queues its retry)."""
    import optuna  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415
    while True:
        optuna.storages.fail_stale_trials(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(poll)


def _spent(study) -> int:
    from ..tuning.search import evaluated  # noqa: PLC0415
    return sum(1 for t in study.get_trials(deepcopy=False) if evaluated(t))


def run_worker(url: str, db: str | None, only=None, heartbeat: int = DEFAULT_HEARTBEAT, grace: int | None = None,
               deadline: float | None = None, log=lambda m: print(m, file=sys.stderr, flush=True)) -> int:
    """Claim problems and tune them until no problem in scope is queued, running or finalizing, or (deadline, a
    time.time()) until the deadline has passed: the problem in hand is finished, no new one is claimed, the rest stay
    queued for a later run. Returns how many problems this worker finalised."""
    import optuna  # noqa: PLC0415
    from ..core.problem import Problem  # noqa: PLC0415
    from ..tuning.tuner import TuneOptions, make_tuner, synthetic_mode  # noqa: PLC0415
    so = ScaleOut(url, heartbeat, grace)
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    if synthetic_mode():
        from ..tuning.tuner import SYNTHETIC_GPU  # noqa: PLC0415
        gpu = os.environ.get("SPARSE_AUTOTUNE_SYNTHETIC_GPU") or SYNTHETIC_GPU
    else:
        from ..device.gpu import gpu_info  # noqa: PLC0415
        gpu = gpu_info().name
    wid = worker_id(device)
    so.register(wid, gpu, device)
    beater = _Beater(so, wid)
    log(f"worker {wid}: {gpu}, storage {so.label}")
    finalised = 0
    worked: set[int] = set()  # problems this worker searched to the end (it joins each running one once)
    try:
        while True:
            if deadline is not None and time.time() >= deadline:
                left = so.pending(gpu, only)
                log(f"worker {wid}: time budget reached; {left} problem(s) not final here, left for a later run")
                break
            got = so.claim(wid, gpu, only, exclude=worked)
            if got is None:
                if so.pending(gpu, only) == 0:
                    break
                time.sleep(min(2.0, so.heartbeat))  # others are on the rest; a dead one's problem comes back
                continue
            row, how = got
            rid = row["id"]
            worked.add(rid)
            beater.set_problem(rid)
            spec = json.loads(row["spec"])
            log(f"worker {wid}: {how} problem {rid} ({row['label']})")
            tuner = None
            try:
                problem = Problem.random(spec["m"], spec["k"], spec["n"], spec["density"], spec["dtype"],
                                         spec["pattern"], spec["seed"])
                opts = TuneOptions(trials=spec["trials"], timeout=spec.get("timeout"), sampler=spec["sampler"],
                                   seed=spec["seed"], db=db, progress=False,
                                   families=tuple(spec["families"]) if spec.get("families") else None,
                                   warm_start=spec.get("warm_start", True))
                tuner = make_tuner(problem, opts, log=lambda m: None)
                name = tuner.study_name()
                so.set_study(rid, name)
                stopped = lambda: beater.problem_state != "running"  # noqa: E731
                while True:
                    res = tuner.search(so.storage, worker=wid, shared=True, stop=stopped)
                    if res.stopped == "stopped":
                        break  # another worker is finishing it
                    study = optuna.load_study(study_name=name, storage=so.storage)
                    _settle(so, study)
                    if _spent(study) < opts.trials and res.stopped in ("trial budget",
                                                                       "trial budget already spent by earlier runs"):
                        continue  # a dead worker's trial was failed (and queued again): the budget is open again
                    break
                if res.stopped == "stopped" or not so.to_finalizing(rid, wid):
                    log(f"worker {wid}: problem {rid}: its search is over here; another worker finalises it")
                    continue
                beater.problem_state = "finalizing"
                study = optuna.load_study(study_name=name, storage=so.storage)
                _settle(so, study)
                from ..tuning.search import summarize  # noqa: PLC0415
                report = tuner.finish(summarize(study, stopped=res.stopped))
                so.finish(rid, wid, "done", result=report)
                finalised += 1
                turn = getattr(tuner, "turn", None)  # the GPU's turn, shared with other workers of this GPU
                log(f"worker {wid}: problem {rid} done: {report['best']['family']} "
                    f"{report['best']['time_us']:.2f} us, record {report['record_id']}, {report['elapsed_s']:.1f} s"
                    + (f" (GPU turn for it: {_phases(report)}; this worker held the turn {turn.held_s:.1f} s and waited "
                       f"{turn.waited_s:.1f} s in all)" if turn else ""))
            except DeviceLostError as exc:
                so.requeue(rid, str(exc))
                log(f"worker {wid}: problem {rid} given back: {exc}; this worker stops")
                raise
            except UserError as exc:
                so.finish(rid, wid, "failed", error=str(exc))
                log(f"worker {wid}: problem {rid} failed: {exc}")
            finally:
                beater.set_problem(None)
                if tuner is not None:
                    # no connection to the tuning DB may stay open here while the next problem's TuningDB checks the
                    # file (check_file opens and closes it): closing any descriptor of a file drops this process's
                    # POSIX locks on it, SQLite's included, and another process could then delete the WAL under us
                    tuner.db.dispose()
    finally:
        beater.close()
        try:
            so.beat(wid, None, "exited")
        except SQLAlchemyError:
            pass
        so.dispose()
    log(f"worker {wid}: no more work; {finalised} problem(s) finalised here")
    return finalised


# ---- local workers (one per GPU) ---------------------------------------------------------------------------


def local_devices(k: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each of k local workers: the visible GPUs in turn (test-only synthetic mode:
    0..k-1 without looking for GPUs). With more workers than GPUs, workers share a GPU: they compile in parallel and
    take turns for the work that runs kernels (gpulock.py), so their timings stay their own."""
    from ..tuning.tuner import synthetic_mode  # noqa: PLC0415
    if k <= 0:
        raise UserError(f"--workers must be positive (got {k})")
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if synthetic_mode():
        visible = [d for d in env.split(",") if d.strip()] if env else [str(i) for i in range(k)]
    else:
        from ..device.gpu import cupy, gpu_info  # noqa: PLC0415
        gpu_info()  # no GPU: one line, exit 2
        count = cupy().cuda.runtime.getDeviceCount()
        visible = [d.strip() for d in env.split(",") if d.strip()][:count] if env else [str(i) for i in range(count)]
    if not visible:
        raise UserError("no GPU visible for the workers (CUDA_VISIBLE_DEVICES is empty)")
    return [visible[i % len(visible)] for i in range(k)]


def compile_threads_per_worker(k: int, cpus: int | None = None) -> int:
    """Each of k local workers compiles with its share of the CPUs (at least 1, at most 8)."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, k)))


def spawn_workers(url: str, db: str | None, k: int, only=None, heartbeat: int = DEFAULT_HEARTBEAT,
                  grace: int | None = None, deadline: float | None = None,
                  log=lambda m: print(m, file=sys.stderr, flush=True)) -> list[int]:
    """Start k worker processes (`sparse-autotune worker`), worker i with CUDA_VISIBLE_DEVICES set to the i-th
    visible GPU (in turn, when there are fewer GPUs than workers); wait for them; their exit statuses. deadline: a
    time.time() after which they claim no new problem."""
    from ..tuning.tuner import COMPILE_THREADS_ENV  # noqa: PLC0415
    devices = local_devices(k)
    threads = compile_threads_per_worker(k)
    procs = []
    for dev in devices:
        cmd = [sys.executable, "-m", "sparse_autotune", "worker", "--storage", url, "--heartbeat", str(heartbeat)]
        if grace is not None:
            cmd += ["--grace", str(grace)]
        if deadline is not None:
            cmd += ["--budget", f"{max(0.0, deadline - time.time()):.1f}"]
        if db:
            cmd += ["--db", db]
        if only is not None:
            cmd += ["--problems", ",".join(str(i) for i in only)]
        procs.append(subprocess.Popen(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": dev,
                                                COMPILE_THREADS_ENV: os.environ.get(COMPILE_THREADS_ENV) or str(threads)}))
    shared = len(devices) - len(set(devices))
    log(f"started {k} workers (CUDA_VISIBLE_DEVICES {', '.join(devices)})"
        + (f"; {len(set(devices))} GPU(s) shared: workers compile in parallel and take turns to verify and time"
           if shared else ""))
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise


# ---- status ------------------------------------------------------------------------------------------------


@dataclass
class Status:
    counts: dict
    problems: list[dict]
    workers: list[dict]
    trials_per_worker: dict

    def to_dict(self) -> dict:
        return {"counts": self.counts, "problems": self.problems, "workers": self.workers,
                "trials_per_worker": self.trials_per_worker}


def status(so: ScaleOut) -> Status:
    import optuna  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415
    from ..tuning.search import evaluated  # noqa: PLC0415
    rows = so.problems()
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in STATES}
    per_worker: dict[str, dict] = {}
    names = {s.study_name for s in optuna.get_all_study_summaries(so.storage, include_best_trial=False)}
    problems = []
    for r in rows:
        p = {k: r[k] for k in ("id", "state", "gpu", "study_gpu", "label", "attempts", "worker", "error")}
        p["trials"] = {"evaluated": 0, "running": 0, "lost": 0}
        p["best_us"] = None
        if r["result"]:
            p["best_us"] = json.loads(r["result"])["best"]["time_us"]
        if r["study_name"] and r["study_name"] in names:
            study = optuna.load_study(study_name=r["study_name"], storage=so.storage)
            for t in study.get_trials(deepcopy=False):
                w = t.user_attrs.get("worker", "?")
                if evaluated(t):
                    p["trials"]["evaluated"] += 1
                    per_worker.setdefault(w, {"evaluated": 0, "running": 0, "lost": 0})["evaluated"] += 1
                elif t.state == TrialState.RUNNING:
                    p["trials"]["running"] += 1
                    per_worker.setdefault(w, {"evaluated": 0, "running": 0, "lost": 0})["running"] += 1
                elif t.state == TrialState.FAIL and not t.user_attrs.get("over_budget"):
                    p["trials"]["lost"] += 1
                    per_worker.setdefault(w, {"evaluated": 0, "running": 0, "lost": 0})["lost"] += 1
        problems.append(p)
    now = _now()
    workers = []
    for w in so.workers():
        age = now - w["heartbeat"]
        alive = w["state"] != "exited" and age <= w["grace"]
        workers.append({"id": w["id"], "host": w["host"], "device": w["device"], "gpu": w["gpu"],
                        "state": w["state"] if alive or w["state"] == "exited" else "lost",
                        "problem": w["problem_id"], "heartbeat_age_s": round(age, 1),
                        "started": _dt.datetime.fromtimestamp(w["started_at"]).isoformat(timespec="seconds")})
    return Status(counts, problems, workers, per_worker)


def status_text(st: Status, label: str) -> str:
    c = st.counts
    lines = [f"storage {label}",
             f"problems: {c['done']} done, {c['running'] + c['finalizing']} running, {c['queued']} queued, "
             f"{c['failed']} failed ({len(st.problems)} in all)", ""]
    lines.append(f"{'id':>4}  {'state':10}  {'trials':>7}  {'run':>3}  {'lost':>4}  {'best us':>8}  "
                 f"{'attempts':>8}  {'gpu':24}  problem")
    for p in st.problems:
        best = f"{p['best_us']:.2f}" if p["best_us"] is not None else "-"
        gpu = p["study_gpu"] or ("any" if p["gpu"] == ANY_GPU else p["gpu"])
        lines.append(f"{p['id']:>4}  {p['state']:10}  {p['trials']['evaluated']:>7}  {p['trials']['running']:>3}  "
                     f"{p['trials']['lost']:>4}  {best:>8}  {p['attempts']:>8}  {gpu[:24]:24}  {p['label']}"
                     + (f"  [{p['error']}]" if p["error"] else ""))
    lines += ["", "workers:"]
    lines.append(f"  {'worker':40}  {'state':8}  {'problem':>7}  {'beat':>7}  {'trials':>6}  {'run':>3}  {'lost':>4}  gpu")
    known = set()
    for w in st.workers:
        known.add(w["id"])
        t = st.trials_per_worker.get(w["id"], {"evaluated": 0, "running": 0, "lost": 0})
        prob = str(w["problem"]) if w["problem"] is not None else "-"
        lines.append(f"  {w['id'][:40]:40}  {w['state']:8}  {prob:>7}  {w['heartbeat_age_s']:>6.0f}s  "
                     f"{t['evaluated']:>6}  {t['running']:>3}  {t['lost']:>4}  {w['gpu']}")
    for wid, t in sorted(st.trials_per_worker.items()):
        if wid not in known:
            lines.append(f"  {wid[:40]:40}  {'-':8}  {'-':>7}  {'-':>7}  {t['evaluated']:>6}  {t['running']:>3}  "
                         f"{t['lost']:>4}")
    return "\n".join(lines)


def _phases(report: dict) -> str:
    """'init 0.2 s, trials 7.9 s (verify 2.1 s, time 5.6 s, 3 given up), finish 1.2 s': this worker's GPU turn for one
    problem, by phase (GpuTuner.finish's gpu_turn_s); 'none' for a tuner without a GPU turn."""
    ph = report.get("gpu_turn_s")
    if not ph:
        return "none"
    detail = f"verify {ph['verify']:.1f} s, time {ph['time']:.1f} s" + (
        f", {ph['given_up']} given up" if ph.get("given_up") else "")
    return f"init {ph['init']:.1f} s, trials {ph['trials']:.1f} s ({detail}), finish {ph['finish']:.1f} s"
