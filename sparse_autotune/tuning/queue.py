"""The problem queue of scale-out tuning: the shared storage (Optuna's RDB storage) and its queue and worker tables.

Worker processes on several GPUs or hosts (worker.py; spawn.py starts local ones; status.py reports) share the work
through one RDB storage.

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

import hashlib
import json
import os
import socket
import time
import warnings

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine, event,
                        func, select, update)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from ..errors import UserError

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


def problem_spec(problem, trials: int, timeout: float | None, sampler: str, families, warm_start: bool = True,
                 vendors=None, allow_tf32: bool = False, rank: str = "cold") -> dict:
    """What a worker needs to rebuild and tune a (random) problem: the matrix is regenerated from its seed."""
    return random_spec(problem.m, problem.k, problem.n, problem.density, problem.dtype, problem.pattern, problem.seed,
                       trials, timeout, sampler, families, warm_start, vendors, allow_tf32, problem.layout, rank)


def random_spec(m: int, k: int, n: int, density: float, dtype: str, pattern: str, seed: int, trials: int,
                timeout: float | None, sampler: str, families, warm_start: bool = True, vendors=None,
                allow_tf32: bool = False, layout: str = "kn", rank: str = "cold") -> dict:
    """problem_spec of Problem.random(m, k, n, density, dtype, pattern, seed) without building its matrix (a suite
    enqueues hundreds of cases, some of 30M nonzeros: the workers build each when they claim it)."""
    spec = {"m": int(m), "k": int(k), "n": int(n), "density": round(float(density), 6), "dtype": dtype,
            "pattern": pattern, "seed": int(seed), "trials": int(trials), "timeout": timeout,
            "sampler": sampler, "families": list(families) if families else None}
    if not warm_start:  # only then: the specs (and queue keys) of warm-started problems stay as they were
        spec["warm_start"] = False
    if vendors is not None:  # the vendor paths timed as candidates (core.vendor); absent: all of them
        spec["vendors"] = list(vendors)
    if allow_tf32:
        spec["allow_tf32"] = True
    if layout != "kn":  # only then: kn specs (and queue keys) stay as they were
        spec["layout"] = layout
    if rank != "cold":  # only then (TuneOptions.rank): the specs of the default stay as they were
        spec["rank"] = rank
    return spec


def spec_label(spec: dict) -> str:
    return (f"{spec['m']}x{spec['k']} N={spec['n']} d={spec['density']:g} {spec['dtype']} {spec['pattern']} "
            f"seed={spec['seed']} trials={spec['trials']}" + (f" {spec['layout']}" if spec.get("layout") else ""))


def _now() -> float:
    return time.time()


class ProblemQueue:
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
                # Every transaction takes SQLite's write lock when it begins (BEGIN IMMEDIATE), on the queue's engine and
                # on Optuna's too: Optuna's check-then-write steps (popping a WAITING trial for `ask`, `tell`) lock the
                # row with SELECT ... FOR UPDATE, which SQLite ignores, and pysqlite begins a transaction only at the
                # first write, so two workers could both read a known-good trial as WAITING and both run and tell it
                # (seen under load: one trial number reported twice by two workers, session 18)
                for eng in (self.engine, self.storage.engine):
                    event.listen(eng, "connect", _sqlite_autocommit)
                    event.listen(eng, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
                self.storage.engine.dispose()  # the connections Optuna opened while creating its tables predate them
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

    def retry_failed(self, ids) -> int:
        """The failed problems among `ids` back in the queue with their attempts reset (their studies keep the trials
        done); how many."""
        q = queue_table
        with self.engine.begin() as c:
            return c.execute(update(q).where(q.c.id.in_(list(ids)), q.c.state == "failed").values(
                state="queued", attempts=0, worker=None, updated_at=_now())).rowcount

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
