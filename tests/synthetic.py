"""Test double: SyntheticTuner, a Tuner without a GPU ($SPARSE_AUTOTUNE_TUNER=synthetic:SyntheticTuner in workers)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from sparse_autotune import __version__
from sparse_autotune.core.space import DEFAULT_LIMITS
from sparse_autotune.store.db import Record
from sparse_autotune.tuning.tuner import TUNER_ENV, Tuner, problem_dict, trials_dict

TESTS = Path(__file__).resolve().parent
TUNER = "synthetic:SyntheticTuner"  # the value of $SPARSE_AUTOTUNE_TUNER that names it (tests/ on the path)
SYNTHETIC_GPU = "Synthetic GPU (test only)"
# its settings, from the environment of the worker processes
SLEEP_ENV = "SYNTHETIC_TEST_SLEEP"  # seconds per trial
LOG_ENV = "SYNTHETIC_TEST_LOG"  # every trial told, appended to this file as a JSON line
GPU_ENV = "SYNTHETIC_TEST_GPU"  # the GPU's name (default SYNTHETIC_GPU)


def synthetic_value(family: str, cfg: dict) -> float:
    """The synthetic objective: a deterministic pseudo-time in [1, 10) us from a hash of the config."""
    h = hashlib.sha256((family + json.dumps(cfg, sort_keys=True)).encode()).hexdigest()
    return 1.0 + 9.0 * int(h[:12], 16) / 16**12


def synthetic_env(sleep: float = 0.0, log: Path | None = None, **extra) -> dict:
    """The environment of a CLI process whose workers run the synthetic tuner: tests/ on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, TUNER_ENV: TUNER, "PYTHONPATH": path, SLEEP_ENV: str(sleep)}
    if log is not None:
        env[LOG_ENV] = str(log)
    env.update(extra)
    return env


class SyntheticTuner(Tuner):
    """No GPU is touched: a trial's value is synthetic_value(config) after $SYNTHETIC_TEST_SLEEP seconds; the GPU is
    named $SYNTHETIC_TEST_GPU (default SYNTHETIC_GPU) and its devices are $CUDA_VISIBLE_DEVICES (else 0..k-1);
    finish() stores the search's best as a record whose versions read "synthetic"."""

    def __init__(self, problem, opts, log=lambda msg: print(msg, file=sys.stderr)):
        self._start(problem, opts, log)
        self.limits = dict(DEFAULT_LIMITS)
        self.gpu_name = self.device_name()
        self.sleep = float(os.environ.get(SLEEP_ENV) or 0)
        self.trial_log = os.environ.get(LOG_ENV)

    @classmethod
    def device_name(cls) -> str:
        return os.environ.get(GPU_ENV) or SYNTHETIC_GPU

    @classmethod
    def devices(cls, k: int) -> list[str]:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        return [d for d in env.split(",") if d.strip()] if env else [str(i) for i in range(k)]

    def evaluate(self, family: str, cfg: dict):
        if self.sleep:
            time.sleep(self.sleep)
        return synthetic_value(family, cfg), {"synthetic": True}

    def on_trial(self, frozen) -> None:
        if self.trial_log:
            line = json.dumps({"worker": frozen.user_attrs.get("worker"), "pid": os.getpid(),
                               "study": self.study_name(), "number": frozen.number, "state": frozen.state.name,
                               "value": frozen.value, "repeat": bool(frozen.user_attrs.get("repeat_of_earlier_trial"))})
            with open(self.trial_log, "a") as fh:
                fh.write(line + "\n")

    def finish(self, res) -> dict:
        self._check_found(res)
        problem, name = self.problem, self.study_name()
        rec = Record(
            gpu_name=self.gpu_name, gpu_cc="0.0", m=problem.m, k=problem.k, n=problem.n, density=problem.density,
            dtype=problem.dtype, pattern=problem.pattern, family=res.best_family,
            config_json=json.dumps(res.best_config, sort_keys=True), time_us=res.best_value,
            gflops=problem.flops / (res.best_value * 1e-6) / 1e9, max_rel_err=0.0,
            trials=res.complete + res.failed, matrix_hash=problem.fingerprint(), study_name=name,
            package_version=__version__, cuda_version="synthetic", driver_version="synthetic",
            cupy_version="synthetic", created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
        self.db.store(rec)
        self.db.dispose()
        none = {"cusparse_us": None, "cusparse_alg": None, "cublas_fp32_us": None, "cublas_tf32_us": None,
                "cublas_fp16_us": None, "cublas_bf16_us": None}
        return {
            "problem": problem_dict(problem), "gpu": self.gpu_name, "cc": "0.0", "driver": "synthetic",
            "cuda": "synthetic", "cupy": "synthetic", "package_version": __version__, "synthetic": True,
            "best": {"family": res.best_family, "config": res.best_config, "time_us": res.best_value,
                     "gflops": rec.gflops, "max_rel_err": 0.0, "timing_spread": None, "timing": "synthetic",
                     "search_time_us": res.best_value},
            "baselines": none, "baseline_errors": {}, "baseline_timing": {},
            "speedup": {"vs_cusparse": None, "vs_cublas_fp32": None, "vs_cublas_tf32": None, "vs_cublas_fp16": None,
                        "vs_cublas_bf16": None},
            "floor_us": None, "ceilings": {},
            "trials": trials_dict(res, self.opts, self.interrupted),
            "study": name, "db": self.db.label, "record_id": rec.id, "record_is_best": rec.is_best,
            "elapsed_s": time.time() - self.t_start,
        }
