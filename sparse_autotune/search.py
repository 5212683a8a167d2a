"""The search: an Optuna study over the variant spaces, stored in the tuning database so a tune resumes.

The objective is supplied by the caller (the GPU evaluator in tune.py, or a synthetic one in tests), so
this module knows nothing of CUDA. Trials: COMPLETE (verified and timed, value = median us), FAIL
(compile/launch/verification error, kept with its log in user attrs), PRUNED (an infeasible config,
rejected before compiling: it does not count against the trial budget).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

from .errors import CandidateError, UserError
from .space import Space

SAMPLERS = ("tpe", "random", "grid", "cmaes")
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
logging.getLogger("optuna").setLevel(logging.WARNING)


def make_sampler(name: str, seed: int | None):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
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


def run_search(storage, study_name: str, spaces: list[Space], dtype: str, env: dict, limits: dict,
               evaluate: Callable[[str, dict], tuple[float, dict]], trials: int, timeout: float | None = None,
               sampler: str = "tpe", seed: int | None = 0,
               on_trial: Callable[[optuna.trial.FrozenTrial, int, float | None], None] | None = None,
               max_pruned: int | None = None) -> SearchResult:
    """Run the study until `trials` COMPLETE+FAIL trials exist in it (over all runs), or `timeout` seconds.

    evaluate(family, config) -> (value, attrs) or raises CandidateError. A config already evaluated in the
    study is not evaluated again: its earlier value is reused.
    """
    study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize",
                                sampler=make_sampler(sampler, seed), load_if_exists=True)
    by_family = {s.family: s for s in spaces}
    families = [s.family for s in spaces]

    def counted(study) -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))

    done_before = counted(study)
    seen: dict[str, float | None] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if "config" in t.user_attrs:
            seen[t.user_attrs["family"] + t.user_attrs["config"]] = t.value

    # known-good configs first, then (for grid) every feasible config in a seeded order
    queue: list[tuple[str, dict]] = []
    for s in spaces:
        queue += [(s.family, c) for c in s.defaults(dtype, env, limits)]
    if sampler == "grid":
        import random  # noqa: PLC0415
        grid = [(s.family, c) for s in spaces for c in s.feasible(dtype, env, limits)]
        random.Random(seed).shuffle(grid)
        grid = [(f, c) for f, c in grid if f + json.dumps(c, sort_keys=True) not in seen]  # a resumed grid goes on
        queue += grid[: max(0, trials - done_before)]
    for fam, cfg in queue:
        if fam + json.dumps(cfg, sort_keys=True) in seen:
            continue
        params = {"family": fam, **by_family[fam].to_optuna_params(cfg, dtype)}
        study.enqueue_trial(params, skip_if_exists=True)

    pruned_here = 0
    max_pruned = max_pruned if max_pruned is not None else 50 * trials + 500
    stop_reason = ["trial budget"]

    def objective(trial: optuna.Trial) -> float:
        nonlocal pruned_here
        fam = trial.suggest_categorical("family", families)
        space = by_family[fam]
        cfg = space.suggest(trial, dtype)
        trial.set_user_attr("family", fam)
        trial.set_user_attr("config", json.dumps(cfg, sort_keys=True))
        why = space.check(cfg, env, limits)
        if why is not None:
            pruned_here += 1
            trial.set_user_attr("infeasible", why)
            raise optuna.TrialPruned(why)
        key = fam + json.dumps(cfg, sort_keys=True)
        if key in seen:
            trial.set_user_attr("repeat_of_earlier_trial", True)
            if seen[key] is None:
                raise CandidateError("repeat", "this config failed in an earlier trial")
            return seen[key]
        try:
            value, attrs = evaluate(fam, cfg)
        except CandidateError as exc:
            seen[key] = None
            trial.set_user_attr("error_stage", exc.stage)
            trial.set_user_attr("error", str(exc)[:2000])
            if exc.log:
                trial.set_user_attr("error_log", exc.log[:8000])
            raise
        seen[key] = value
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return value

    def callback(study, frozen):
        best = None
        try:
            best = study.best_value
        except ValueError:
            pass
        if on_trial and frozen.state in (TrialState.COMPLETE, TrialState.FAIL):
            on_trial(frozen, counted(study), best)
        if counted(study) >= trials:
            study.stop()
        elif pruned_here >= max_pruned:
            stop_reason[0] = "space exhausted (too many infeasible suggestions in a row)"
            study.stop()

    if done_before < trials:
        study.optimize(objective, n_trials=None, timeout=timeout, callbacks=[callback],
                       catch=(CandidateError,), gc_after_trial=False, show_progress_bar=False)
        if timeout is not None and counted(study) < trials and stop_reason[0] == "trial budget":
            stop_reason[0] = "time budget"
    else:
        stop_reason[0] = "trial budget already spent by earlier runs"

    return summarize(study, done_before, stop_reason[0])


def summarize(study, done_before: int = 0, stopped: str = "") -> SearchResult:
    """Counts and the best COMPLETE trial of a study (also after an interrupted run)."""
    trials_all = study.get_trials(deepcopy=False)
    complete = [t for t in trials_all if t.state == TrialState.COMPLETE]
    failed = sum(1 for t in trials_all if t.state == TrialState.FAIL)
    pruned = sum(1 for t in trials_all if t.state == TrialState.PRUNED)
    best = min(complete, key=lambda t: t.value) if complete else None
    fam, cfg = config_of(best) if best else (None, None)
    return SearchResult(study.study_name, best.value if best else None, fam, cfg, len(complete), failed, pruned,
                        len(complete) + failed - done_before, stopped)


def load_study(storage, study_name: str):
    return optuna.load_study(study_name=study_name, storage=storage)
