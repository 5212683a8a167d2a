"""Kill-test: `tune` (through a scale-out storage, so that the tests' synthetic tuner runs it without a GPU) and a
`worker` are killed with SIGKILL at seeded random points, in the middle of trials, of the finalisation or of storing the
record. After every kill the tuning database checks clean (SQLite's quick_check and the store's own rules), every record
it had is still there, and the storage checks clean; then the same `tune` command resumes the study to exactly its trial
budget and stores the winner. Each round tunes a problem of its own (another --seed): a problem whose workers died
three times is failed by design (tuning/queue.py), which is not what this test is about."""
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

SEED = 15
BUDGET = 24  # ~0.4 s an ask on a 2-core machine: a run outlives the kill delays (1.5-5 s after a ~3 s start)
ROUNDS = 2


def cli(args, env, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "sparse_autotune", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, **kw)


def query(path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def uids(db: Path) -> set[str]:
    return {r[0] for r in query(db, "SELECT uid FROM sat_records")}


def assert_clean(db: Path, storage: Path, kept: set[str]) -> set[str]:
    info = describe_file(db)
    assert info["state"] == "tuning" and info["problems"] == [], info["problems"]
    now = uids(db)
    assert kept <= now, f"records lost: {kept - now}"
    if storage.exists():
        st = describe_file(storage)
        assert st["state"] in ("storage", "empty") and st["problems"] == [], st["problems"]
    return now


def diagnosis(storage: Path, log: Path) -> str:
    """What the storage holds when a resume fails: the queue, the RUNNING trials and their heartbeats, the log."""
    return "\n".join([
        f"queue {query(storage, 'SELECT id, state, attempts, worker, error FROM sa_queue')}",
        "running " + str(query(storage, "SELECT t.trial_id, t.number, t.datetime_start, h.heartbeat FROM trials t "
                                        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                                        "WHERE t.state = 'RUNNING'")),
        "log " + log.read_text()[-3000:]])


def test_sigkill_tune_and_worker_synthetic_keeps_records_and_resumes(tmp_path):
    rng = random.Random(SEED)
    db = tmp_path / "tuning.sqlite"
    storage = tmp_path / "storage.sqlite"
    log = tmp_path / "log.txt"
    tdb = TuningDB(db)  # the records it had: other problems, tuned before
    for i in range(6):
        tdb.store(make_record(5.0 + i, {"rows_per_block": 2**i, "vec": 1}, n=32 * (i + 1)))
    tdb.dispose()
    kept = uids(db)
    env = synthetic_env(0.08, SPARSE_AUTOTUNE_DB=str(db), SPARSE_AUTOTUNE_NO_SHIPPED_DB="1")
    url = f"sqlite:///{storage}"
    worker = ["worker", "--storage", url, "--db", str(db), "--heartbeat", "1", "--grace", "2"]
    killed = []
    for rnd in range(ROUNDS):
        tune = ["tune", "--shape", "64x128", "--density", "0.1", "--n", "64", "--seed", str(rnd), "--trials",
                str(BUDGET), "--storage", url, "--db", str(db), "--heartbeat", "1", "--grace", "2", "--no-progress",
                "--cold-start"]
        for argv in (tune, worker):
            with open(log, "a") as fh:
                p = subprocess.Popen([sys.executable, "-m", "sparse_autotune", *argv], stdout=fh,
                                     stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
            delay = rng.uniform(1.5, 5.0)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                killed.append((argv[0], rnd, round(delay, 2)))
            kept = assert_clean(db, storage, kept)

        # the same command resumes: the dead workers' trials are failed (by the heartbeat check, or as never having
        # beaten) and run again, the budget is counted over every run, the winner is stored once
        p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "sparse_autotune", *tune], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
            out, err = p.communicate()
            raise AssertionError("the resumed tune did not finish in 120 s\n" + diagnosis(storage, log) +
                                 "\nstacks " + err[-6000:]) from None
        done = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        assert done.returncode == 0, done.stderr[-2000:] + "\n" + diagnosis(storage, log)
        assert "stored    record" in done.stdout
        [(name,)] = query(storage, f"SELECT study_name FROM sa_queue WHERE id = {rnd + 1}")
        # the budget counts configs evaluated: COMPLETE trials that are not a sampler's repeats
        [(complete,)] = query(storage, "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                       f"WHERE s.study_name = '{name}' AND t.state = 'COMPLETE' AND NOT EXISTS "
                                       "(SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND "
                                       "a.key = 'repeat_of_earlier_trial')")
        assert complete == BUDGET
        kept = assert_clean(db, storage, kept)
        # its record is stored (every round's problem has the same key: one best among them, db check says so)
        assert query(db, f"SELECT count(*) FROM sat_records WHERE study_name = '{name}'")[0][0] >= 1
        assert query(db, "SELECT count(*) FROM sat_records WHERE m = 64 AND k = 128 AND is_best") == [(1,)]
    assert len(killed) >= 2, killed  # the kills hit running processes, not finished ones
    check = cli(["db", "check", str(db)], env, tmp_path, timeout=120)
    assert check.returncode == 0 and "clean" in check.stdout, check.stdout + check.stderr


def test_trial_orphaned_before_its_first_heartbeat_is_failed_and_retried(tmp_path):
    """A worker killed between asking a trial and recording its first heartbeat leaves a RUNNING trial that Optuna's
    stale check never fails (it skips trials without a heartbeat): the worker's settle step fails it once the grace
    period has passed and queues its retry, instead of waiting for it forever."""
    import threading
    import time
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from sparse_autotune.tuning.worker import _settle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = RDBStorage(f"sqlite:///{tmp_path / 's.sqlite'}", heartbeat_interval=1, grace_period=2,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name="orphan", storage=storage)
        orphan = study.ask()  # RUNNING, and no heartbeat was ever recorded for it (its worker died right here)
        t0 = time.monotonic()
        settle = threading.Thread(target=_settle, args=(study, 0.2), daemon=True)  # a regression must not hang CI
        settle.start()
        settle.join(timeout=30)
    assert not settle.is_alive(), "_settle still waits for the orphaned trial after 30 s"
    assert time.monotonic() - t0 >= 2  # not before the grace period
    trials = study.get_trials(deepcopy=False)
    assert trials[0].number == orphan.number and trials[0].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
