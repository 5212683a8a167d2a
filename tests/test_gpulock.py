"""Turns on a shared GPU (gpulock.py): processes that share a GPU never hold its turn at once, a killed holder frees it,
and turns nest within a process. No GPU is needed: the turn is named by a test key instead of a PCI bus id."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sparse_autotune.device import turn as gpulock

HOLD = r"""
import json, sys, time
from sparse_autotune.device.turn import turn_for
turn = turn_for(sys.argv[1])
for _ in range(int(sys.argv[3])):
    with turn():
        t0 = time.time()
        time.sleep(float(sys.argv[4]))
        with turn():  # nested: the same turn, held once
            pass
        t1 = time.time()
    with open(sys.argv[2], "a") as fh:
        fh.write(json.dumps([t0, t1]) + "\n")
    time.sleep(0.01)
"""


def _env(tmp_path: Path) -> dict:
    return {**os.environ, gpulock.LOCK_DIR_ENV: str(tmp_path / "locks"),
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.skipif(gpulock.fcntl is None, reason="needs POSIX flock")
def test_processes_sharing_a_gpu_take_turns(tmp_path):
    out = tmp_path / "intervals.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, "PCI:0000:01:00.0", str(out), "4", "0.05"],
                              env=_env(tmp_path)) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    spans = sorted(json.loads(line) for line in out.read_text().splitlines())
    assert len(spans) == 12
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 <= b0, f"turns overlap: {a0:.3f}-{a1:.3f} and {b0:.3f}-{b1:.3f}"
    assert (tmp_path / "locks").is_dir()


@pytest.mark.skipif(gpulock.fcntl is None, reason="needs POSIX flock")
def test_other_gpus_do_not_wait(tmp_path):
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa = subprocess.Popen([sys.executable, "-c", HOLD, "gpu-a", str(out_a), "1", "1.5"], env=_env(tmp_path))
    pb = subprocess.Popen([sys.executable, "-c", HOLD, "gpu-b", str(out_b), "1", "1.5"], env=_env(tmp_path))
    assert pa.wait(timeout=60) == 0 and pb.wait(timeout=60) == 0
    [(a0, a1)] = [json.loads(x) for x in out_a.read_text().splitlines()]
    [(b0, b1)] = [json.loads(x) for x in out_b.read_text().splitlines()]
    assert max(a0, b0) < min(a1, b1), "turns of two different GPUs should overlap"


@pytest.mark.skipif(gpulock.fcntl is None, reason="needs POSIX flock")
def test_a_killed_holder_frees_the_turn(tmp_path, monkeypatch):
    monkeypatch.setenv(gpulock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    flag = tmp_path / "holding"
    code = ("import sys, time; from pathlib import Path; from sparse_autotune.device.turn import turn_for\n"
            "with turn_for('gpu-k')():\n    Path(sys.argv[1]).write_text('1'); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(flag)], env=_env(tmp_path))
    try:
        t_end = time.time() + 60
        while not flag.exists() and time.time() < t_end:
            time.sleep(0.05)
        assert flag.exists()
        turn = gpulock.GpuTurn(gpulock.lock_path("gpu-k"))
        got = threading.Event()

        def take():
            with turn():
                got.set()

        th = threading.Thread(target=take, daemon=True)
        th.start()
        assert not got.wait(1.0), "the turn was given while another process held it"
        holder.send_signal(signal.SIGKILL)
        assert got.wait(30), "the turn of a killed process was never freed"
        assert turn.turns == 1 and turn.waited_s >= 0.9
    finally:
        holder.kill()
        holder.wait()


def test_turns_nest_in_a_thread_and_exclude_other_threads(tmp_path):
    turn = gpulock.GpuTurn(tmp_path / "t.lock")
    inside = threading.Event()
    release = threading.Event()
    order = []

    def first():
        with turn():
            with turn():  # re-entrant: no deadlock
                order.append("first-in")
                inside.set()
                release.wait(10)
            order.append("first-still-in")
        order.append("first-out")

    def second():
        inside.wait(10)
        with turn():
            order.append("second-in")

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start()
    b.start()
    time.sleep(0.3)
    assert order == ["first-in"]  # the second thread waits while the first holds the turn
    release.set()
    a.join(10)
    b.join(10)
    assert order == ["first-in", "first-still-in", "first-out", "second-in"]
    assert turn.turns == 2


def test_lock_path_names_a_file_in_the_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(gpulock.LOCK_DIR_ENV, str(tmp_path))
    p = gpulock.lock_path("0000:1B:00.0/../x y")
    assert p.parent == tmp_path and "/" not in p.name and " " not in p.name
    assert gpulock.turn_for("same") is gpulock.turn_for("same")
