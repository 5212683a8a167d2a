"""Local scale-out workers: a `sparse-autotune worker` process per visible GPU in turn, each with its CPU share."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from ..errors import UserError
from ..tuning.loop import log_stderr
from ..tuning.queue import DEFAULT_HEARTBEAT


def local_devices(k: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each of k local workers: the devices of the workers' tuner (the visible GPUs;
    tuner.tuner_class) in turn. With more workers than GPUs, workers share a GPU: they compile in parallel and take
    turns for the work that runs kernels (device/turn.py), so their timings stay their own."""
    from ..tuning.tuner import tuner_class  # noqa: PLC0415
    if k <= 0:
        raise UserError(f"--workers must be positive (got {k})")
    visible = tuner_class().devices(k)
    if not visible:
        raise UserError("no GPU visible for the workers (CUDA_VISIBLE_DEVICES is empty)")
    return [visible[i % len(visible)] for i in range(k)]


def compile_threads_per_worker(k: int, cpus: int | None = None) -> int:
    """Each of k local workers compiles with its share of the CPUs (at least 1, at most 8)."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, k)))


def spawn_workers(url: str, db: str | None, k: int, only=None, heartbeat: int = DEFAULT_HEARTBEAT,
                  grace: int | None = None, deadline: float | None = None, log=log_stderr) -> list[int]:
    """Start k worker processes (`sparse-autotune worker`), worker i with CUDA_VISIBLE_DEVICES set to the i-th
    visible GPU (in turn, when there are fewer GPUs than workers); wait for them; their exit statuses. deadline: a
    time.time() after which they claim no new problem. The workers inherit this process's environment
    ($SPARSE_AUTOTUNE_TUNER and PYTHONPATH included)."""
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
