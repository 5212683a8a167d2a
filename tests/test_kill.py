"""Kill-test: `tune` (through a scale-out storage, so that the tests' synthetic tuner runs it without a GPU) and a
`worker` are killed with SIGKILL at seeded random points, in the middle of trials, of the finalisation or of storing the
record. After every kill the tuning database checks clean (SQLite's quick_check and the store's own rules), every record
it had is still there, and the storage checks clean; at the end the same `tune` command resumes the study to exactly
its trial budget and stores the winner."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from records import make_record
from synthetic import synthetic_env

from sparse_autotune.store.db import TuningDB, describe_file

SEED = 7
BUDGET = 40
ROUNDS = 2


def cli(args, env, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "sparse_autotune", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, **kw)


def uids(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT uid FROM sat_records")}
    finally:
        con.close()


def evaluated_trials(storage: Path) -> int:
    con = sqlite3.connect(f"file:{storage}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    finally:
        con.close()


def assert_clean(db: Path, storage: Path, kept: set[str]) -> set[str]:
    info = describe_file(db)
    assert info["state"] == "tuning" and info["problems"] == [], info["problems"]
    now = uids(db)
    assert kept <= now, f"records lost: {kept - now}"
    st = describe_file(storage)
    assert st["state"] in ("storage", "empty") and st["problems"] == [], st["problems"]
    return now


def test_sigkill_tune_and_worker_synthetic_keeps_records_and_resumes(tmp_path):
    rng = random.Random(SEED)
    db = tmp_path / "tuning.sqlite"
    storage = tmp_path / "storage.sqlite"
    tdb = TuningDB(db)  # the records it had: other problems, tuned before
    for i in range(6):
        tdb.store(make_record(5.0 + i, {"rows_per_block": 2**i, "vec": 1}, n=32 * (i + 1)))
    tdb.dispose()
    kept = uids(db)
    env = synthetic_env(0.08, SPARSE_AUTOTUNE_DB=str(db), SPARSE_AUTOTUNE_NO_SHIPPED_DB="1")
    url = f"sqlite:///{storage}"
    tune = ["tune", "--shape", "64x128", "--density", "0.1", "--n", "64", "--trials", str(BUDGET), "--storage", url,
            "--db", str(db), "--heartbeat", "1", "--grace", "2", "--no-progress", "--cold-start"]
    worker = ["worker", "--storage", url, "--db", str(db), "--heartbeat", "1", "--grace", "2"]
    killed = []
    for _ in range(ROUNDS):
        for argv in (tune, worker):
            with open(tmp_path / "log.txt", "a") as log:
                p = subprocess.Popen([sys.executable, "-m", "sparse_autotune", *argv], stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
            delay = rng.uniform(1.5, 5.0)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                killed.append((argv[0], round(delay, 2)))
            if storage.exists():
                kept = assert_clean(db, storage, kept)
    print("KILLED", killed)
    assert len(killed) >= 3, killed  # the kills hit running processes, not finished ones

    # the same command resumes: the dead workers' trials are failed by the heartbeat check and run again, the budget
    # is counted over every run, the winner is stored
    done = cli(tune, env, tmp_path, timeout=40)
    assert done.returncode == 0, (done.stderr[-3000:], (tmp_path / "log.txt").read_text()[-3000:])
    assert "stored    record" in done.stdout
    assert evaluated_trials(storage) == BUDGET
    kept = assert_clean(db, storage, kept)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        best = con.execute("SELECT count(*) FROM sat_records WHERE m = 64 AND k = 128 AND n = 64 AND is_best")\
            .fetchone()[0]
    finally:
        con.close()
    assert best == 1
    check = cli(["db", "check", str(db)], env, tmp_path, timeout=120)
    assert check.returncode == 0 and "clean" in check.stdout, check.stdout + check.stderr
    assert not Path(f"{db}-journal").exists()
