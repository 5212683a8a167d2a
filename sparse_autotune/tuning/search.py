"""The search: an Optuna study over the variant spaces, stored in the tuning database so a tune resumes.

The objective is supplied by the caller (the GPU evaluator in tune.py, or a synthetic one in tests), so
this module knows nothing of CUDA. Trials: COMPLETE (verified and timed, value = median us), FAIL
(compile/launch/verification error, kept with its log in user attrs), PRUNED (an infeasible config,
rejected before compiling: it does not count against the trial budget). A FAIL trial without an `error_stage`
user attribute was never evaluated (its worker died in it, or the run was interrupted): it does not count either.

Several processes may work on one study at once (`shared=True`, scale-out through an RDB storage): the budget is
then re-read from the storage before each ask (COMPLETE, evaluated FAIL, and RUNNING trials of every worker), the
configs other workers evaluated are reused, and when the storage has Optuna's heartbeat enabled the in-flight
trials' heartbeats are recorded and stale trials (a dead worker's) are failed first (`fail_stale_trials`), which
runs the storage's retry callback.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

from ..errors import CandidateError, UserError
from ..core.space import Space

SAMPLERS = ("tpe", "random", "grid", "cmaes")
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
logging.getLogger("optuna").setLevel(logging.WARNING)
# ask/tell with a heartbeat-enabled storage: run_search records the heartbeats itself (see _Heartbeats)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def make_sampler(name: str, seed: int | None, parallel: bool = False):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10,
                                          constant_liar=parallel)
    if name in ("random", "grid"):  # grid: every feasible config enqueued once, in a seeded order
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    raise UserError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


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


def config_of(trial) -> tuple[str, dict]:
    return trial.user_attrs["family"], json.loads(trial.user_attrs["config"])


def evaluated(t) -> bool:
    """COMPLETE, or FAIL as told by the search (it sets error_stage). A FAIL without error_stage was never evaluated:
    a worker died in it (failed by Optuna's heartbeat check) or the run was interrupted."""
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


def run_search(storage, study_name: str, spaces: list[Space], dtype: str, env: dict, limits: dict,
               evaluate: Callable[[str, dict], tuple[float, dict]], trials: int, timeout: float | None = None,
               sampler: str = "tpe", seed: int | None = 0,
               on_trial: Callable[[optuna.trial.FrozenTrial, int, float | None], None] | None = None,
               max_pruned: int | None = None, prepare: Callable[[str, dict], object] | None = None,
               batch: int = 1, worker: str | None = None, shared: bool = False,
               stop: Callable[[], bool] | None = None, seeds=()) -> SearchResult:
    """Run the study until `trials` evaluated trials exist in it (over all runs), or `timeout` seconds.

    evaluate(family, config) -> (value, attrs) or raises CandidateError. A config already evaluated in the
    study is not evaluated again: its earlier value is reused. With prepare(family, config) (e.g. compile)
    and batch > 1, configs are asked `batch` at a time and all prepared in parallel threads before the first is
    evaluated, then evaluated in turn (TPE then runs with constant_liar so a batch spreads out).

    worker: a name stored in each trial's user attrs ("worker"). shared: other processes work on the same study (see
    the module's doc); stop() -> True ends the loop before the next ask (e.g. another worker is finishing the problem).
    seeds: (family, config) pairs tried first, before the families' known-good configs, e.g. the winners of the nearest
    problems in the tuning database (a config of a family not searched, or infeasible here, is left out).
    """
    grid_seed = seed  # the grid's order is the study's, whichever worker enqueues it
    if shared and worker is not None and seed is not None:  # workers with one seed would suggest the same configs
        seed = (seed + zlib.crc32(worker.encode())) % 2**31
    study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize",
                                sampler=make_sampler(sampler, seed, parallel=batch > 1 or shared), load_if_exists=True)
    by_family = {s.family: s for s in spaces}
    families = [s.family for s in spaces]
    # the family parameter is named by the selection, so runs of one problem with different --families share
    # the study (and its evaluated configs) without changing a categorical distribution's choices
    family_param = "family[" + ",".join(sorted(families)) + "]"
    beats = _Heartbeats(heartbeat_storage(storage)) if shared and heartbeat_storage(storage) else None

    def counted(study) -> int:
        return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                   if evaluated(t))

    seen: dict[str, float | None] = {}  # configs evaluated in the study: their value (None: failed)
    busy: set[str] = set()  # shared: configs other workers are evaluating now

    def refresh_seen() -> int:
        """Configs evaluated (or, shared, being evaluated elsewhere) in the study; returns the trials that count
        against the budget: evaluated ones, and (shared) the RUNNING ones of every worker."""
        occupied = 0
        busy.clear()
        for t in study.get_trials(deepcopy=False):
            if evaluated(t):
                occupied += 1
                if "config" in t.user_attrs:
                    seen[t.user_attrs["family"] + t.user_attrs["config"]] = t.value
            elif shared and t.state == TrialState.RUNNING and t.number not in mine:
                occupied += 1
                if "config" in t.user_attrs:
                    busy.add(t.user_attrs["family"] + t.user_attrs["config"])
        return occupied

    mine: set[int] = set()  # trial numbers this run has asked and not yet told
    done_before = counted(study)
    refresh_seen()

    # the seeds (winners of the nearest problems) first, then the known-good configs, then (for grid) every feasible
    # config in a seeded order
    queue: list[tuple[str, dict]] = []
    for fam, cfg in seeds:
        space = by_family.get(fam)
        cfg = space.normalize(cfg, dtype) if space is not None else None
        if cfg is not None and space.check(cfg, env, limits) is None and (fam, cfg) not in queue:
            queue.append((fam, cfg))
    for s in spaces:
        queue += [(s.family, c) for c in s.defaults(dtype, env, limits) if (s.family, c) not in queue]
    if sampler == "grid":
        import random  # noqa: PLC0415
        grid = [(s.family, c) for s in spaces for c in s.feasible(dtype, env, limits)]
        random.Random(grid_seed).shuffle(grid)
        grid = [(f, c) for f, c in grid if f + json.dumps(c, sort_keys=True) not in seen]  # a resumed grid goes on
        queue += grid[: max(0, trials - done_before)]
    for fam, cfg in queue:
        if fam + json.dumps(cfg, sort_keys=True) in seen:
            continue
        params = {family_param: fam, **by_family[fam].to_optuna_params(cfg, dtype)}
        study.enqueue_trial(params, skip_if_exists=True)

    max_pruned = max_pruned if max_pruned is not None else 50 * trials + 500
    pruned_here = 0
    stop_reason = "trial budget"
    t_end = time.monotonic() + timeout if timeout is not None else None
    pool = ThreadPoolExecutor(max_workers=batch) if prepare is not None and batch > 1 else None
    told = 0  # COMPLETE + FAIL trials in the study (kept up to date here instead of re-reading the storage)

    def best_value():
        try:
            return study.best_value
        except ValueError:
            return None

    def finish(trial, value=None, exc: CandidateError | None = None, attrs=None):
        nonlocal told
        mine.discard(trial.number)
        since = beats.discard(trial._trial_id) if beats is not None else None
        dropped = True
        with _unless_failed_elsewhere(study, trial):
            if exc is not None:
                trial.set_user_attr("error_stage", exc.stage)
                trial.set_user_attr("error", str(exc)[:2000])
                if exc.log:
                    trial.set_user_attr("error_log", exc.log[:8000])
                frozen = study.tell(trial, state=TrialState.FAIL)
            else:
                for k, v in (attrs or {}).items():
                    trial.set_user_attr(k, v)
                frozen = study.tell(trial, value)
            dropped = False
        if dropped:
            # another worker's fail_stale_trials found this trial's heartbeat older than the grace period, failed it
            # and queued its retry: the result is dropped here (the retry evaluates the config again), the search goes
            # on. Seen once on the device with 12 workers on one SQLite storage (the dl suite, session 6).
            when = f"{since:.1f} s ago" if since is not None else "never"
            warn(f"trial {trial.number} of {study_name} was failed by another worker as stale (its last heartbeat "
                 f"from here: {when}); its result is dropped and its retry evaluates it again")
            return
        told += 1
        if on_trial:
            on_trial(frozen, done_before + told, best_value())

    def ask_batch(want: int) -> list:
        """Up to `want` new configs to evaluate; infeasible ones are told PRUNED, repeats reuse their value."""
        nonlocal pruned_here
        out = []
        while len(out) < want and spent() + len(out) < trials and pruned_here < max_pruned:
            trial = study.ask()
            mine.add(trial.number)
            if beats is not None:
                beats.add(trial._trial_id)
            if worker is not None:
                trial.set_user_attr("worker", worker)
            fam = trial.suggest_categorical(family_param, families)
            space = by_family[fam]
            cfg = space.suggest(trial, dtype)
            key = fam + json.dumps(cfg, sort_keys=True)
            trial.set_user_attr("family", fam)
            trial.set_user_attr("config", json.dumps(cfg, sort_keys=True))
            why = space.check(cfg, env, limits)
            if why is not None:
                pruned_here += 1
                trial.set_user_attr("infeasible", why)
                mine.discard(trial.number)
                if beats is not None:
                    beats.discard(trial._trial_id)
                study.tell(trial, state=TrialState.PRUNED)
            elif key in seen or key in busy or key in {k for _, _, _, k in out}:
                trial.set_user_attr("repeat_of_earlier_trial", True)
                prior = seen.get(key)
                if prior is None:
                    finish(trial, exc=CandidateError("repeat", "this config failed or is being tried"))
                else:
                    finish(trial, prior)
            else:
                out.append((trial, fam, cfg, key))
        return out

    occupied_elsewhere = 0  # shared: trials counted against the budget that this run did not tell

    def trim(out: list) -> list:
        """shared: workers that ask at the same moment may together ask more trials than the budget has left. The
        budget goes to the lowest trial numbers: an asked trial is kept if fewer than `trials` counted trials
        (evaluated or running) precede it; the others are released (FAIL, never evaluated, `over_budget`)."""
        if not shared or not out:
            return out
        counted_numbers = sorted(t.number for t in study.get_trials(deepcopy=False)
                                 if evaluated(t) or t.state == TrialState.RUNNING)
        rank = {num: i for i, num in enumerate(counted_numbers)}
        keep = []
        for item in out:
            trial = item[0]
            if rank.get(trial.number, 0) < trials:
                keep.append(item)
                continue
            mine.discard(trial.number)
            if beats is not None:
                beats.discard(trial._trial_id)
            with _unless_failed_elsewhere(study, trial):  # released either way
                trial.set_user_attr("over_budget", True)
                study.tell(trial, state=TrialState.FAIL)
        return keep

    def spent() -> int:
        return done_before + told + occupied_elsewhere

    def sync():
        """shared: fail stale trials (running the storage's retry callback), re-read the budget and the seen configs."""
        nonlocal occupied_elsewhere
        if not shared:
            return
        if beats is not None:
            optuna.storages.fail_stale_trials(study)
        occupied_elsewhere = max(0, refresh_seen() - done_before - told)

    pending: list = []
    try:
        sync()
        while spent() < trials:
            if t_end is not None and time.monotonic() >= t_end:
                stop_reason = "time budget"
                break
            if pruned_here >= max_pruned:
                stop_reason = "space exhausted (too many infeasible suggestions in a row)"
                break
            if stop is not None and stop():
                stop_reason = "stopped"
                break
            pending = trim(ask_batch(batch))
            if not pending and shared:
                sync()
                if spent() >= trials:
                    break
            # compile the whole batch in parallel (NVRTC and the driver's PTX assembly on CPU threads) before any of it
            # is timed: a module load still running in this process stalls its launches and syncs (seconds for a large
            # pattern_unrolled kernel), which would be counted in the timings and in the GPU's turn
            futures = [pool.submit(prepare, fam, cfg) for _, fam, cfg, _ in pending] if pool else [None] * len(pending)
            if pool:
                wait_futures(futures)
            while pending:
                trial, fam, cfg, key = pending[0]
                fut = futures[len(futures) - len(pending)]
                try:
                    if fut is not None:
                        fut.result()
                    value, attrs = evaluate(fam, cfg)
                except CandidateError as exc:
                    seen[key] = None
                    pending.pop(0)
                    finish(trial, exc=exc)
                else:
                    seen[key] = value
                    pending.pop(0)
                    finish(trial, value, attrs=attrs)
            sync()
        else:
            if done_before >= trials:
                stop_reason = "trial budget already spent by earlier runs"
    except BaseException:
        for trial, *_ in pending:  # asked but not evaluated: close them so the study holds no RUNNING trial
            with _unless_failed_elsewhere(study, trial):
                study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if beats is not None:
            beats.close()

    return summarize(study, done_before, stop_reason)


def summarize(study, done_before: int = 0, stopped: str = "") -> SearchResult:
    """Counts and the best COMPLETE trial of a study (also after an interrupted run)."""
    trials_all = study.get_trials(deepcopy=False)
    complete = [t for t in trials_all if t.state == TrialState.COMPLETE]
    failed = sum(1 for t in trials_all if t.state == TrialState.FAIL and evaluated(t))
    pruned = sum(1 for t in trials_all if t.state == TrialState.PRUNED)
    best = min(complete, key=lambda t: t.value) if complete else None
    fam, cfg = config_of(best) if best else (None, None)
    return SearchResult(study.study_name, best.value if best else None, fam, cfg, len(complete), failed, pruned,
                        len(complete) + failed - done_before, stopped)


def load_study(storage, study_name: str):
    return optuna.load_study(study_name=study_name, storage=storage)
