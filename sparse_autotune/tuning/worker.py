"""A scale-out worker: it claims queued problems and tunes them through the problem loop, with a heartbeat."""
from __future__ import annotations

import json
import os
import socket
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from ..errors import DeviceLostError
from ..tuning.loop import ProblemLoop, log_stderr
from ..tuning.queue import DEFAULT_HEARTBEAT, ProblemQueue
from ..tuning.search import evaluated, summarize

# why a search ended with the budget spent; a dead worker's trial failed meanwhile may open the budget again
BUDGET_SPENT = ("trial budget", "trial budget already spent by earlier runs")


def worker_id(device: str | None) -> str:
    return f"{socket.gethostname()}/{os.getpid()}" + (f"/gpu{device}" if device not in (None, "") else "")


class _Beater:
    """The worker's heartbeat thread: its sa_workers row and its current problem's heartbeat, every interval; it
    also reads the problem's state (a search stops once another worker is finishing the problem)."""

    def __init__(self, queue: ProblemQueue, wid: str):
        self.queue, self.wid = queue, wid
        self.problem_id: int | None = None
        self.problem_state: str | None = None
        self._lock = threading.Lock()  # a state read for one problem is never taken for the next one
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sa-worker-heartbeat", daemon=True)
        self.thread.start()

    def set_problem(self, rid: int | None):
        with self._lock:
            self.problem_id = rid
            self.problem_state = "running" if rid is not None else None
        self.queue.beat(self.wid, rid, "working" if rid is not None else "idle")

    def _observe(self, rid: int, state: str | None) -> None:
        """The problem's state as read by the heartbeat, kept only if the worker is still on that problem: a read of
        the problem just finished ("done") landing after set_problem(next) would stop the next one's search (CI
        session 32: "its search is over here; another worker finalises it" with one worker, then a re-claim after
        the grace)."""
        with self._lock:
            if self.problem_id == rid:
                self.problem_state = state

    def _loop(self):
        while not self.stop_event.wait(self.queue.heartbeat):
            try:
                rid = self.problem_id
                self.queue.beat(self.wid, rid)
                if rid is not None:
                    self._observe(rid, self.queue.state(rid))
            except Exception:  # noqa: BLE001 - a lost beat is retried at the next interval
                pass

    def close(self):
        self.stop_event.set()
        self.thread.join(timeout=10)


def _settle(study, poll: float = 0.5):
    """Wait until the study has no RUNNING trial: the other workers' trials finish, a dead worker's is failed by
    Optuna's heartbeat check (fail_stale_trials, which queues its retry)."""
    import optuna  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415
    while True:
        optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        _fail_orphans(study, running)
        time.sleep(poll)


def _fail_orphans(study, running) -> None:
    """RUNNING trials without any heartbeat that started more than the grace period ago: their worker died between
    asking the trial and recording its first heartbeat (a SIGKILL can land there), and Optuna's check skips trials
    without a heartbeat, so _settle would wait for them forever. Failed here and retried, as a stale trial is."""
    import copy  # noqa: PLC0415
    import datetime as _dt  # noqa: PLC0415
    import optuna  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415
    from sqlalchemy import text  # noqa: PLC0415
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # load_study wraps the RDBStorage in a cache
    grace, engine = getattr(backend, "grace_period", None), getattr(backend, "engine", None)
    now = _dt.datetime.now()  # Optuna stamps datetime_start with the local time
    old = [t for t in running if grace and t.datetime_start and (now - t.datetime_start).total_seconds() > grace]
    if not old or engine is None:
        return
    with engine.connect() as conn:
        beating = {r[0] for r in conn.execute(text("SELECT trial_id FROM trial_heartbeats"))}
    retry = storage.get_heartbeat_stale_trial_callback()
    for t in old:
        if t._trial_id in beating:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL) and retry is not None:
                retry(study, copy.deepcopy(storage.get_trial(t._trial_id)))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed or finished it meanwhile


def _spent(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if evaluated(t))


def turn_phases(report: dict) -> str:
    """'init 0.2 s, trials 7.9 s (verify 2.1 s, time 5.6 s, 3 given up), finish 1.2 s': this worker's GPU turn for one
    problem, by phase (GpuTuner.finish's gpu_turn_s); 'none' for a tuner without a GPU turn."""
    ph = report.get("gpu_turn_s")
    if not ph:
        return "none"
    detail = f"verify {ph['verify']:.1f} s, time {ph['time']:.1f} s" + (
        f", {ph['given_up']} given up" if ph.get("given_up") else "")
    fin = (f" (baselines {ph['finish_baselines']:.1f} s, cold {ph['finish_cold']:.1f} s)"
           if "finish_baselines" in ph and "finish_cold" in ph else "")
    return f"init {ph['init']:.1f} s, trials {ph['trials']:.1f} s ({detail}), finish {ph['finish']:.1f} s{fin}"


class Worker(ProblemLoop):
    """Claims problems (a queued one, else a running one of its GPU model to join) and tunes them with the tuner of
    tuner.tuner_class(), through the problem loop: its time budget (no new claim after the deadline), Ctrl-C (the
    problem in hand is left to the other workers on it, or to a later run). The search of a claimed problem runs
    on the shared study; the worker that wins its finalisation stores the record and marks it done."""

    def __init__(self, url: str, db: str | None, only=None, heartbeat: int = DEFAULT_HEARTBEAT,
                 grace: int | None = None, deadline: float | None = None, log=log_stderr):
        super().__init__(deadline=deadline, log=log)
        from ..tuning.tuner import tuner_class  # noqa: PLC0415
        self.db, self.only = db, only
        self.queue = ProblemQueue(url, heartbeat, grace)
        try:
            self.tuner_class = tuner_class()
            self.gpu = self.tuner_class.device_name()
        except BaseException:
            self.queue.dispose()
            raise
        self.device = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.wid = worker_id(self.device)
        self.finalised = 0
        self.worked: set[int] = set()  # problems this worker searched to the end (it joins each running one once)
        self.beater: _Beater | None = None

    def serve(self) -> int:
        """Claim and tune problems until no problem in scope is queued, running or finalizing, or the deadline has
        passed (the problem in hand is finished, no new one is claimed, the rest stay queued for a later run).
        Returns how many problems this worker finalised; Ctrl-C: KeyboardInterrupt, after the worker signed off."""
        q = self.queue
        q.register(self.wid, self.gpu, self.device)
        self.beater = _Beater(q, self.wid)
        self.log(f"worker {self.wid}: {self.gpu}, storage {q.label}")
        try:
            res = self.run(self._claims())
        finally:
            self.beater.close()
            try:
                q.beat(self.wid, None, "exited")
            except SQLAlchemyError:
                pass
            q.dispose()
        if res.interrupted:
            raise KeyboardInterrupt
        self.log(f"worker {self.wid}: no more work; {self.finalised} problem(s) finalised here")
        return self.finalised

    def _claims(self):
        """The problems this worker claims, one at a time; None while the others are on the rest (a dead one's
        problem comes back to the queue)."""
        q = self.queue
        while True:
            got = q.claim(self.wid, self.gpu, self.only, exclude=self.worked)
            if got is not None:
                yield got
            elif q.pending(self.gpu, self.only) == 0:
                return
            else:
                time.sleep(min(2.0, q.heartbeat))
                yield None

    def describe(self, item) -> str:
        return f"problem {item[0]['id']} ({item[0]['label']})"

    def work(self, item) -> None:
        from ..core.problem import Problem  # noqa: PLC0415
        from ..tuning.tuner import TuneOptions  # noqa: PLC0415
        row, how = item
        rid = row["id"]
        self.worked.add(rid)
        self.beater.set_problem(rid)
        spec = json.loads(row["spec"])
        self.log(f"worker {self.wid}: {how} problem {rid} ({row['label']})")
        tuner = None
        try:
            problem = Problem.random(spec["m"], spec["k"], spec["n"], spec["density"], spec["dtype"],
                                     spec["pattern"], spec["seed"], spec.get("layout", "kn"))
            opts = TuneOptions(trials=spec["trials"], timeout=spec.get("timeout"), sampler=spec["sampler"],
                               seed=spec["seed"], db=self.db, progress=False,
                               families=tuple(spec["families"]) if spec.get("families") else None,
                               warm_start=spec.get("warm_start", True),
                               vendors=tuple(spec["vendors"]) if spec.get("vendors") is not None else None,
                               allow_tf32=bool(spec.get("allow_tf32", False)), rank=spec.get("rank", "cold"))
            tuner = self.tuner_class(problem, opts, log=lambda m: None)
            self.queue.set_study(rid, tuner.study_name())
            res = self._search(tuner)
            if res.stopped == "stopped" or not self.queue.to_finalizing(rid, self.wid):
                self.log(f"worker {self.wid}: problem {rid}: its search is over here; another worker finalises it")
                return
            self._finalise(tuner, rid, res)
        finally:
            self.beater.set_problem(None)
            if tuner is not None:
                # no connection to the tuning DB may stay open here while the next problem's TuningDB checks the
                # file (check_file opens and closes it): closing any descriptor of a file drops this process's
                # POSIX locks on it, SQLite's included, and another process could then delete the WAL under us
                tuner.db.dispose()

    def _search(self, tuner):
        """The shared study's search until its budget is spent over all workers (or another worker finalises it)."""
        import optuna  # noqa: PLC0415
        stopped = lambda: self.beater.problem_state != "running"  # noqa: E731
        while True:
            res = tuner.search(self.queue.storage, worker=self.wid, shared=True, stop=stopped)
            if tuner.interrupted:
                raise KeyboardInterrupt  # its trials are kept in the study
            if res.stopped == "stopped":
                return res  # another worker is finishing it
            study = optuna.load_study(study_name=tuner.study_name(), storage=self.queue.storage)
            _settle(study)
            if _spent(study) < tuner.opts.trials and res.stopped in BUDGET_SPENT:
                continue  # a dead worker's trial was failed (and queued again): the budget is open again
            return res

    def _finalise(self, tuner, rid: int, res) -> None:
        """This worker won the finalisation: wait for the trials in flight, store the record, mark the problem done."""
        import optuna  # noqa: PLC0415
        self.beater.problem_state = "finalizing"
        study = optuna.load_study(study_name=tuner.study_name(), storage=self.queue.storage)
        _settle(study)
        report = tuner.finish(summarize(study, stopped=res.stopped))
        self.queue.finish(rid, self.wid, "done", result=report)
        self.finalised += 1
        turn = getattr(tuner, "turn", None)  # the GPU's turn, shared with other workers of this GPU
        self.log(f"worker {self.wid}: problem {rid} done: {report['best']['family']} "
                 f"{report['best']['time_us']:.2f} us, record {report['record_id']}, {report['elapsed_s']:.1f} s"
                 + (f" (GPU turn for it: {turn_phases(report)}; this worker held the turn {turn.held_s:.1f} s and "
                    f"waited {turn.waited_s:.1f} s in all)" if turn else ""))

    def failed(self, item, exc) -> None:
        rid = item[0]["id"]
        if isinstance(exc, DeviceLostError):
            self.queue.requeue(rid, str(exc))
            self.log(f"worker {self.wid}: problem {rid} given back: {exc}; this worker stops")
            raise exc
        self.queue.finish(rid, self.wid, "failed", error=str(exc))
        self.log(f"worker {self.wid}: problem {rid} failed: {exc}")

    def budget_reached(self) -> None:
        left = self.queue.pending(self.gpu, self.only)
        self.log(f"worker {self.wid}: time budget reached; {left} problem(s) not final here, left for a later run")

    def interrupted(self) -> None:
        self.log(f"worker {self.wid}: interrupted; the trials so far are kept in the studies, the problem in hand is "
                 "left to the other workers on it or to a later run")


def run_worker(url: str, db: str | None, only=None, heartbeat: int = DEFAULT_HEARTBEAT, grace: int | None = None,
               deadline: float | None = None, log=log_stderr) -> int:
    """Worker(...).serve(): claim problems and tune them until none in scope is left, or (deadline, a time.time())
    until the deadline; returns how many problems this worker finalised."""
    return Worker(url, db, only, heartbeat, grace, deadline, log).serve()
