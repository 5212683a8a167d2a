"""Turns on a shared GPU: the work that must run alone (verification, timing) holds the GPU's lock.

Several processes may tune on one GPU: `--workers K` on a machine with fewer than K GPUs, or `worker`s and `tune`s
started separately. They compile in parallel (NVRTC runs on the CPU), but a kernel timed while another process's
kernel runs measures both. So every GPU tuner takes its GPU's turn around the work that runs kernels (the reference,
verification, timing, baselines, ceilings): an exclusive `flock` on a file named by the GPU's PCI bus id (the same
physical GPU whatever CUDA_VISIBLE_DEVICES says), in $SPARSE_AUTOTUNE_LOCK_DIR or the temp folder. The lock is
released by the kernel when its holder exits, however it exits, so a killed worker never blocks the others.

Turns are re-entrant within a process (nested turns of one thread hold the file once). Where `fcntl` is missing
(Windows) turns only serialise the threads of one process.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_DIR_ENV = "SPARSE_AUTOTUNE_LOCK_DIR"
TURN_LOG_ENV = "SPARSE_AUTOTUNE_TURN_LOG"  # tests: every turn held is appended to this file as "pid start end"


class GpuTurn:
    """The turn of one GPU (one lock file), re-entrant within this process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._since = 0.0  # perf_counter() when this process took the turn
        self.waited_s = 0.0  # time this process spent waiting for other processes' turns
        self.held_s = 0.0  # time this process held the turn
        self.turns = 0

    @contextmanager
    def __call__(self):
        with self._rlock:
            if self._depth == 0:
                t0 = time.perf_counter()
                self._acquire()
                self._since = time.perf_counter()
                self.waited_s += self._since - t0
                self.turns += 1
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
                if self._depth == 0:
                    held = time.perf_counter() - self._since
                    self.held_s += held
                    log = os.environ.get(TURN_LOG_ENV)
                    if log:
                        now = time.time()
                        with open(log, "a") as fh:
                            fh.write(f"{os.getpid()} {now - held:.6f} {now:.6f}\n")
                    self._release()

    def _acquire(self):
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _release(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock


_turns: dict[str, GpuTurn] = {}
_turns_lock = threading.Lock()


def lock_path(key: str) -> Path:
    base = os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir()
    return Path(base) / f"sparse-autotune-gpu-{re.sub(r'[^A-Za-z0-9.-]+', '_', key)}.lock"


def turn_for(key: str) -> GpuTurn:
    """The (process-wide) turn of the GPU named `key`."""
    with _turns_lock:
        if key not in _turns:
            _turns[key] = GpuTurn(lock_path(key))
        return _turns[key]


def current_gpu_key() -> str:
    """The PCI bus id of the current CUDA device (stable across CUDA_VISIBLE_DEVICES), else its index."""
    from ..device.gpu import cupy  # noqa: PLC0415
    dev = cupy().cuda.Device()
    try:
        return str(dev.pci_bus_id)
    except Exception:  # noqa: BLE001
        return f"index{dev.id}"
