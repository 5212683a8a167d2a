"""The search: an Optuna study over the variant spaces, stored in the tuning database so a tune resumes.

`Search(storage, study, spaces, dtype, env, limits, SearchOptions(...)).run(evaluate, prepare, on_trial, stop)`.
The objective is supplied by the caller (the GPU tuner in tuner.py, or a synthetic one in tests), so this module
knows nothing of CUDA. `check_options` checks the options a user gives (trials, sampler, timeout) for every caller.
Trials: COMPLETE (verified and timed, value = median us), FAIL (compile/launch/verification error, kept with its log
in user attrs), PRUNED (an infeasible config, rejected before compiling: it does not count against the trial budget).
A FAIL trial without an `error_stage` user attribute was never evaluated (its worker died in it, or the run was
interrupted): it does not count either.

Several processes may work on one study at once (`SearchOptions(shared=True)`, scale-out through an RDB storage): the budget is
then re-read from the storage before each ask (COMPLETE, evaluated FAIL, and RUNNING trials of every worker), the
configs other workers evaluated are reused, and when the storage has Optuna's heartbeat enabled the in-flight
trials' heartbeats are recorded and stale trials (a dead worker's) are failed first (`fail_stale_trials`), which
runs the storage's retry callback.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from ..errors import CandidateError
from .options import SAMPLERS, check_options  # noqa: F401 - the search options' names, kept here for callers
from ..core.space import Space

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
logging.getLogger("optuna").setLevel(logging.WARNING)
# ask/tell with a heartbeat-enabled storage: Search records the heartbeats itself (see _Heartbeats)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


MAX_REPEATS = 200  # suggestions in a row of configs the study has evaluated: then the search ends (nothing new)


def make_sampler(name: str, seed: int | None, parallel: bool = False):
    check_options(sampler=name)
    if name == "tpe":
        # n_ei_candidates 64 (Optuna's default 24): on the search benchmark's measured tables (bench --suite search,
        # H200) TPE came within 5 % of the exhaustive optimum in 64 trials on 8 of 8 problems with 64 candidates for
        # two sets of 5 seeds, against 7 and 6 of 8 with 24 and 6 of 8 with 128 (bench/NOTES.md, session 10)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10,
                                          n_ei_candidates=64, constant_liar=parallel)
    if name in ("random", "grid"):  # grid: every feasible config enqueued once, in a seeded order
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    raise AssertionError(name)  # every name of SAMPLERS is made above


@dataclass
class SearchResult:
    study_name: str
    best_value: float | None
    best_family: str | None
    best_config: dict | None
    complete: int
    failed: int
    pruned: int
    new_trials: int
    stopped: str  # why the loop ended
    # every distinct config of the search's COMPLETE trials as (family, config, value), fastest first (the best first:
    # best_family / best_config); the tuner's finalists (tuner.finalists_of) are taken from it
    ranked: list = field(default_factory=list)


def config_of(trial) -> tuple[str, dict]:
    return trial.user_attrs["family"], json.loads(trial.user_attrs["config"])


def is_vendor_trial(t) -> bool:
    """A vendor path's trial, added by the tuner's finish (tuning.vendor): not a config of the search, not counted
    against its trial budget, not its best (the search's winner is the best templated-family config)."""
    return bool(t.user_attrs.get("vendor"))


def evaluated(t) -> bool:
    """COMPLETE, or FAIL as told by the search (it sets error_stage). A FAIL without error_stage was never evaluated:
    a worker died in it (failed by Optuna's heartbeat check) or the run was interrupted. A vendor path's trial is not
    the search's (is_vendor_trial), and a repeat (a config the study has evaluated, told its earlier value so that the
    sampler learns it was asked again) was not evaluated again: neither counts against the trial budget."""
    if is_vendor_trial(t) or t.user_attrs.get("repeat_of_earlier_trial"):
        return False
    return t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error_stage" in t.user_attrs)


def heartbeat_storage(storage):
    """The storage if it is an Optuna storage with the heartbeat enabled, else None."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # noqa: PLC0415
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        return storage
    return None


def _finished_elsewhere(study, trial) -> bool:
    """The trial this process asked is no longer RUNNING in the storage (another worker failed it as stale)."""
    return study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING


@contextlib.contextmanager
def _sigint_deferred():
    """Ctrl-C held back until the block ends (then handled as it would have been): a trial asked from the storage is
    registered as this search's before an interrupt can land, so the interrupt handler fails it rather than leaving
    it RUNNING in the study. Only in the main thread (where Python delivers signals); elsewhere a no-op."""
    import signal  # noqa: PLC0415
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except (ValueError, OSError):  # not allowed here (an embedding interpreter): as without
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if got and callable(previous):  # Python's own handler raises KeyboardInterrupt; another one runs as it would
            previous(signal.SIGINT, None)
        elif got and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _unless_failed_elsewhere(study, trial):
    """Closing a trial that another worker may have failed as stale meanwhile: that case is not an error (the rest of
    the block is skipped). Optuna raises UpdateFinishedTrialError from set_user_attr, ValueError from tell."""
    try:
        yield
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        if not _finished_elsewhere(study, trial):
            raise


def warn(msg: str) -> None:
    """One line on stderr (the worker's log), for what the search survives but the user should know."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class _Heartbeats:
    """Records Optuna heartbeats (storage.record_heartbeat) for every trial this process has asked and not yet told,
    every heartbeat interval, in a daemon thread: what Study.optimize does per trial, for the ask/tell loop."""

    def __init__(self, storage):
        self.storage = storage
        self.ids: set[int] = set()
        self.last: dict[int, float] = {}  # trial id -> monotonic time of its last recorded beat (for the warning)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="optuna-heartbeats", daemon=True)
        self.thread.start()

    def add(self, trial_id: int):
        with self.lock:
            self.ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)  # at once: a trial without a heartbeat row is never found stale
        self.last[trial_id] = time.monotonic()

    def discard(self, trial_id: int) -> float | None:
        """Stop beating for the trial; returns the seconds since its last recorded heartbeat (None: none recorded)."""
        with self.lock:
            self.ids.discard(trial_id)
        t = self.last.pop(trial_id, None)
        return None if t is None else time.monotonic() - t

    def _loop(self):
        interval = self.storage.get_heartbeat_interval()
        while not self.stop.wait(interval):
            with self.lock:
                ids = list(self.ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                    self.last[tid] = time.monotonic()
                except Exception:  # noqa: BLE001 - a lost beat is retried at the next interval
                    pass

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


@dataclass
class SearchOptions:
    """How one search runs. batch: configs asked (and, with a prepare step, prepared in parallel threads) at a time.
    worker: a name stored in each trial's user attrs ("worker"). shared: other processes work on the same study (see
    the module's doc). seeds: (family, config) pairs tried first, before the families' known-good configs, e.g. the
    winners of the nearest problems in the tuning database (a config of a family not searched, or infeasible here,
    is left out). max_pruned: infeasible suggestions told PRUNED in this run before the space counts as exhausted
    (default 50 x trials + 500)."""

    trials: int
    timeout: float | None = None
    sampler: str = "tpe"
    seed: int | None = 0
    batch: int = 1
    worker: str | None = None
    shared: bool = False
    seeds: Sequence[tuple[str, dict]] = ()
    max_pruned: int | None = None


Evaluate = Callable[..., "tuple[float, dict]"]


def known_good_queue(spaces, dtype: str, env: dict, limits: dict | None) -> list[tuple[str, dict]]:
    """The families' known-good configs valid for the problem, taken in turns (each family's first, then each one's
    second, ...; within a family in file order): with several families enabled, every family's best guesses are
    tried within a small trial budget, not only the first families' (at N = 128 the first four families held 25
    known-good configs, more than the suite's 20 trials, and the family that wins there was never reached)."""
    lists = [[(s.family, c) for c in s.defaults(dtype, env, limits)] for s in spaces]
    out: list[tuple[str, dict]] = []
    for row in itertools.zip_longest(*lists):
        out += [fc for fc in row if fc is not None]
    return out


class Search:
    """One run of a study's search, until `trials` evaluated trials exist in it (over all runs), or the time budget.

    run(evaluate, prepare, on_trial, stop): evaluate(family, config) -> (value, attrs), or raises CandidateError.
    With prepare(family, config) (e.g. compile) it is evaluate(family, config, prepared), `prepared` being what prepare
    returned for that config; with batch > 1 a batch of configs is prepared in parallel threads before the first of
    it is evaluated, then evaluated in turn (TPE then runs with constant_liar so a batch spreads out). A config
    already evaluated in the study is not evaluated again: its earlier value is reused. on_trial(frozen, counted,
    best) follows every told trial; stop() -> True ends the loop before the next ask (e.g. another worker is
    finishing the problem). The steps: enqueue (seeds, known-good configs, the grid), ask, evaluate, tell, the
    budget check (sync for a shared study) and, shared, the trials' heartbeats."""

    def __init__(self, storage, study_name: str, spaces: list[Space], dtype: str, env: dict, limits: dict,
                 opts: SearchOptions):
        check_options(opts.trials, opts.sampler, opts.timeout)
        self.storage, self.study_name, self.spaces, self.dtype, self.env, self.limits = (
            storage, study_name, spaces, dtype, env, limits)
        self.opts = opts
        self.trials = opts.trials
        self.max_pruned = opts.max_pruned if opts.max_pruned is not None else 50 * opts.trials + 500
        seed = opts.seed
        if opts.shared and opts.worker is not None and seed is not None:  # workers with one seed suggest alike
            seed = (seed + zlib.crc32(opts.worker.encode())) % 2**31
        self.study = optuna.create_study(
            study_name=study_name, storage=storage, direction="minimize", load_if_exists=True,
            sampler=make_sampler(opts.sampler, seed, parallel=opts.batch > 1 or opts.shared))
        self.by_family = {s.family: s for s in spaces}
        self.families = [s.family for s in spaces]
        # the family parameter is named by the selection, so runs of one problem with different --families share
        # the study (and its evaluated configs) without changing a categorical distribution's choices
        self.family_param = "family[" + ",".join(sorted(self.families)) + "]"
        self.seen: dict[str, float | None] = {}  # configs evaluated in the study: their value (None: failed)
        self.busy: set[str] = set()  # shared: configs other workers are evaluating now
        self.mine: dict[int, optuna.Trial] = {}  # the trials this run has asked and not yet told, by number
        self.done_before = 0  # evaluated trials in the study when the run began
        self.told = 0  # COMPLETE + FAIL trials told by this run (instead of re-reading the storage)
        self.occupied_elsewhere = 0  # shared: trials counted against the budget that this run did not tell
        self.pruned_here = 0
        self.repeats_in_row = 0  # suggestions of configs evaluated already, since the last new one
        self.beats: _Heartbeats | None = None
        self.t_end: float | None = None  # time.monotonic() at the time budget
        self.evaluate: Evaluate | None = None
        self.prepare: Callable[[str, dict], object] | None = None
        self.on_trial = None

    # ---- the run -------------------------------------------------------------------------------------------

    def run(self, evaluate: Evaluate, prepare: Callable[[str, dict], object] | None = None,
            on_trial: Callable[[optuna.trial.FrozenTrial, int, float | None], None] | None = None,
            stop: Callable[[], bool] | None = None) -> SearchResult:
        self.evaluate, self.prepare, self.on_trial = evaluate, prepare, on_trial
        self.done_before = sum(1 for t in self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)) if evaluated(t))
        self._refresh_seen()
        self._enqueue()
        beating = heartbeat_storage(self.storage) if self.opts.shared else None
        self.beats = _Heartbeats(beating) if beating else None
        batch = self.opts.batch
        self.t_end = time.monotonic() + self.opts.timeout if self.opts.timeout is not None else None
        pool = ThreadPoolExecutor(max_workers=batch) if prepare is not None and batch > 1 else None
        try:
            self._sync()
            stopped = self._loop(pool, stop)
        except BaseException:
            for trial in list(self.mine.values()):  # asked, not told: closed, so the study holds no RUNNING trial
                self._forget(trial)
                with _unless_failed_elsewhere(self.study, trial):
                    self.study.tell(trial, state=TrialState.FAIL)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if self.beats is not None:
                self.beats.close()
        return summarize(self.study, self.done_before, stopped)

    def _loop(self, pool, stop) -> str:
        """Ask, evaluate and tell until the budget is spent; returns why the loop ended."""
        if self.done_before >= self.trials:
            return "trial budget already spent by earlier runs"
        while self._spent() < self.trials:
            why = self._why_stop(stop)
            if why is not None:
                return why
            batch = self._trim(self._ask(self.opts.batch))
            if not batch and self.opts.shared:
                self._sync()
                if self._spent() >= self.trials:
                    break
            self._evaluate(batch, pool)
            self._sync()
        return "trial budget"

    def _why_stop(self, stop) -> str | None:
        """The budget check before each ask, besides the trial budget: time, infeasible suggestions, stop()."""
        if self.t_end is not None and time.monotonic() >= self.t_end:
            return "time budget"
        if self.pruned_here >= self.max_pruned:
            return "space exhausted (too many infeasible suggestions)"
        if self.repeats_in_row >= MAX_REPEATS:
            return f"space exhausted ({MAX_REPEATS} suggestions in a row of configs evaluated already)"
        if stop is not None and stop():
            return "stopped"
        return None

    # ---- seed and enqueue ------------------------------------------------------------------------------------

    def _enqueue(self) -> None:
        """The seeds (winners of the nearest problems) first, then the known-good configs (known_good_queue), then (for
        grid) every feasible config in a seeded order (the study's: whichever worker enqueues it); none evaluated
        already, and no more of them than the trials left."""
        dtype, env, limits = self.dtype, self.env, self.limits
        # no more than this run's budget can evaluate: the rest would wait unasked, and each enqueue reads the study's
        # trials (a short search of many known-good configs spent most of its time here); a resumed search with a
        # larger budget enqueues the next ones in the same order
        left = max(0, self.trials - self.done_before)
        queue: list[tuple[str, dict]] = []
        for fam, cfg in self.opts.seeds:
            space = self.by_family.get(fam)
            cfg = space.normalize(cfg, dtype) if space is not None else None
            if cfg is not None and space.check(cfg, env, limits) is None and (fam, cfg) not in queue:
                queue.append((fam, cfg))
        queue += [fc for fc in known_good_queue(self.spaces, dtype, env, limits) if fc not in queue]
        if self.opts.sampler == "grid":
            import random  # noqa: PLC0415
            grid = [(s.family, c) for s in self.spaces for c in s.feasible(dtype, env, limits)]
            random.Random(self.opts.seed).shuffle(grid)
            grid = [(f, c) for f, c in grid if _key(f, c) not in self.seen]  # a resumed grid goes on
            queue += grid[:left]
        for fam, cfg in [(f, c) for f, c in queue if _key(f, c) not in self.seen][:left]:
            params = {self.family_param: fam, **self.by_family[fam].to_optuna_params(cfg, dtype)}
            self.study.enqueue_trial(params, skip_if_exists=True)

    # ---- ask -------------------------------------------------------------------------------------------------

    def _ask(self, want: int) -> list:
        """Up to `want` new configs to evaluate; infeasible ones are told PRUNED, repeats reuse their value."""
        out = []
        while (len(out) < want and self._spent() + len(out) < self.trials and self.pruned_here < self.max_pruned
               and self.repeats_in_row < MAX_REPEATS):
            with _sigint_deferred():  # asked and registered as one step: an interrupt cannot orphan the trial
                trial = self.study.ask()
                self.mine[trial.number] = trial
            if self.beats is not None:
                self.beats.add(trial._trial_id)
            if self.opts.worker is not None:
                trial.set_user_attr("worker", self.opts.worker)
            fam = trial.suggest_categorical(self.family_param, self.families)
            space = self.by_family[fam]
            cfg = space.suggest(trial, self.dtype)
            key = _key(fam, cfg)
            trial.set_user_attr("family", fam)
            trial.set_user_attr("config", json.dumps(cfg, sort_keys=True))
            why = space.check(cfg, self.env, self.limits)
            if why is not None:
                self.pruned_here += 1
                trial.set_user_attr("infeasible", why)
                self._forget(trial)
                self.study.tell(trial, state=TrialState.PRUNED)
            elif key in self.seen or key in self.busy or key in {k for _, _, _, k in out}:
                # not evaluated again and not counted: the budget is configs measured (MAX_REPEATS in a row: the
                # sampler has nothing new to offer, the search ends)
                self.repeats_in_row += 1
                trial.set_user_attr("repeat_of_earlier_trial", True)
                prior = self.seen.get(key)
                if prior is None:
                    self._tell(trial, exc=CandidateError("repeat", "this config failed or is being tried"), count=False)
                else:
                    self._tell(trial, prior, count=False)
            else:
                out.append((trial, fam, cfg, key))
        return out

    def _trim(self, out: list) -> list:
        """shared: workers that ask at the same moment may together ask more trials than the budget has left. The
        budget goes to the lowest trial numbers: an asked trial is kept if fewer than `trials` counted trials
        (evaluated or running) precede it; the others are released (FAIL, never evaluated, `over_budget`)."""
        if not self.opts.shared or not out:
            return out
        counted_numbers = sorted(t.number for t in self.study.get_trials(deepcopy=False)
                                 if evaluated(t) or t.state == TrialState.RUNNING)
        rank = {num: i for i, num in enumerate(counted_numbers)}
        keep = []
        for item in out:
            trial = item[0]
            if rank.get(trial.number, 0) < self.trials:
                keep.append(item)
                continue
            self._forget(trial)
            with _unless_failed_elsewhere(self.study, trial):  # released either way
                trial.set_user_attr("over_budget", True)
                self.study.tell(trial, state=TrialState.FAIL)
        return keep

    # ---- evaluate --------------------------------------------------------------------------------------------

    def _evaluate(self, batch: list, pool) -> None:
        """Prepare and evaluate the asked configs in turn, telling each. With a pool the whole batch is prepared (NVRTC
        and the driver's PTX assembly on CPU threads) before any of it is timed: a module load still running in this
        process stalls its launches and syncs (seconds for a large pattern_unrolled kernel), which would be counted in
        the timings and in the GPU's turn."""
        if pool is not None:
            futures = [pool.submit(self.prepare, fam, cfg) for _, fam, cfg, _ in batch]
            wait_futures(futures)
            ready = [f.result for f in futures]
        elif self.prepare is not None:
            ready = [functools.partial(self.prepare, fam, cfg) for _, fam, cfg, _ in batch]
        else:
            ready = [None] * len(batch)
        for (trial, fam, cfg, key), get in zip(batch, ready):
            try:
                value, attrs = self.evaluate(fam, cfg) if get is None else self.evaluate(fam, cfg, get())
            except CandidateError as exc:
                self.seen[key] = None
                self._tell(trial, exc=exc)
            else:
                self.seen[key] = value
                self._tell(trial, value, attrs=attrs)

    # ---- tell ------------------------------------------------------------------------------------------------

    def _tell(self, trial, value=None, exc: CandidateError | None = None, attrs=None, count: bool = True) -> None:
        """Close a trial COMPLETE (value, attrs) or FAIL (exc: its stage, message and log kept in user attrs); count:
        it counts against the trial budget (not a repeat) and is reported to on_trial."""
        since = self._forget(trial)
        dropped = True
        with _unless_failed_elsewhere(self.study, trial):
            if exc is not None:
                trial.set_user_attr("error_stage", exc.stage)
                trial.set_user_attr("error", str(exc)[:2000])
                if exc.log:
                    trial.set_user_attr("error_log", exc.log[:8000])
                frozen = self.study.tell(trial, state=TrialState.FAIL)
            else:
                for k, v in (attrs or {}).items():
                    trial.set_user_attr(k, v)
                frozen = self.study.tell(trial, value)
            dropped = False
        if dropped:
            # another worker's fail_stale_trials found this trial's heartbeat older than the grace period, failed it
            # and queued its retry: the result is dropped here (the retry evaluates the config again), the search goes
            # on. Seen once on the device with 12 workers on one SQLite storage (the dl suite, session 6).
            when = f"{since:.1f} s ago" if since is not None else "never"
            warn(f"trial {trial.number} of {self.study_name} was failed by another worker as stale (its last "
                 f"heartbeat from here: {when}); its result is dropped and its retry evaluates it again")
            return
        if not count:
            return
        self.repeats_in_row = 0
        self.told += 1
        if self.on_trial:
            self.on_trial(frozen, self.done_before + self.told, self._best_value())

    def _forget(self, trial) -> float | None:
        """The trial is no longer this run's to close: no more heartbeats; the seconds since its last one."""
        self.mine.pop(trial.number, None)
        return self.beats.discard(trial._trial_id) if self.beats is not None else None

    def _best_value(self):
        """The best value of the search's configs evaluated in the study (the vendor paths' trials left out)."""
        values = [v for v in self.seen.values() if v is not None]
        return min(values) if values else None

    # ---- the budget ------------------------------------------------------------------------------------------

    def _spent(self) -> int:
        return self.done_before + self.told + self.occupied_elsewhere

    def _sync(self) -> None:
        """shared: fail stale trials (running the storage's retry callback), re-read the budget and the seen configs."""
        if not self.opts.shared:
            return
        if self.beats is not None:
            optuna.storages.fail_stale_trials(self.study)
        self.occupied_elsewhere = max(0, self._refresh_seen() - self.done_before - self.told)

    def _refresh_seen(self) -> int:
        """Configs evaluated (or, shared, being evaluated elsewhere) in the study; returns the trials that count
        against the budget: evaluated ones, and (shared) the RUNNING ones of every worker."""
        occupied = 0
        self.busy.clear()
        for t in self.study.get_trials(deepcopy=False):
            if evaluated(t):
                occupied += 1
                if "config" in t.user_attrs:
                    self.seen[t.user_attrs["family"] + t.user_attrs["config"]] = t.value
            elif self.opts.shared and t.state == TrialState.RUNNING and t.number not in self.mine:
                occupied += 1
                if "config" in t.user_attrs:
                    self.busy.add(t.user_attrs["family"] + t.user_attrs["config"])
        return occupied


def _key(family: str, cfg: dict) -> str:
    return family + json.dumps(cfg, sort_keys=True)


def ranked_configs(complete) -> list[tuple[str, dict, float]]:
    """(family, config, value) of each distinct config of these COMPLETE trials, at its lowest value, fastest first (a
    tie: the earlier trial first, as summarize's best)."""
    out: dict[str, tuple[str, dict, float]] = {}
    for t in sorted(complete, key=lambda t: t.value):  # stable: trials in study order within a tie
        fam, cfg = config_of(t)
        out.setdefault(_key(fam, cfg), (fam, cfg, t.value))
    return list(out.values())


def summarize(study, done_before: int = 0, stopped: str = "") -> SearchResult:
    """Counts, the best COMPLETE trial of a study (also after an interrupted run) and its distinct configs ranked
    (ranked_configs); the vendor paths' trials (is_vendor_trial) are not the search's and are left out."""
    trials_all = [t for t in study.get_trials(deepcopy=False) if not is_vendor_trial(t)]
    complete = [t for t in trials_all if t.state == TrialState.COMPLETE and evaluated(t)]  # repeats left out
    failed = sum(1 for t in trials_all if t.state == TrialState.FAIL and evaluated(t))
    pruned = sum(1 for t in trials_all if t.state == TrialState.PRUNED)
    ranked = ranked_configs(complete)
    fam, cfg, value = ranked[0] if ranked else (None, None, None)  # the best: the first of the fastest trials
    return SearchResult(study.study_name, value, fam, cfg, len(complete), failed, pruned,
                        len(complete) + failed - done_before, stopped, ranked)


def load_study(storage, study_name: str):
    return optuna.load_study(study_name=study_name, storage=storage)
