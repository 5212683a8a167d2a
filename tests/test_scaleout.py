"""Scale-out tuning (several workers through one RDB storage), the workers running the synthetic tuner of
tests/synthetic.py ($SPARSE_AUTOTUNE_TUNER=synthetic:SyntheticTuner: no GPU): on SQLite, and on a real PostgreSQL
server where $SPARSE_AUTOTUNE_TEST_PG_URL names one (CI starts one in .ci/run; without it those tests are skipped)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pgdb import fresh_pg_database
from synthetic import SYNTHETIC_GPU, TUNER, synthetic_value
from synthetic import synthetic_env as worker_env

from sparse_autotune.errors import UserError
from sparse_autotune.store.db import Record, TuningDB
from sparse_autotune.tuning.queue import MAX_ATTEMPTS, ProblemQueue, queue_table
from sparse_autotune.tuning.tuner import TUNER_ENV

PREFIX = "sparse-autotune: error:"
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path):
    """A fresh, empty storage: an SQLite file, or a new database on the PostgreSQL server of $SPARSE_AUTOTUNE_TEST_PG_URL
    (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'storage.sqlite'}"
        return
    with fresh_pg_database("sat_test_") as (url, _conninfo):
        yield url


def synthetic_env(tmp_path: Path, sleep: float, **extra) -> dict:
    """Workers on the synthetic tuner, each trial logged to tmp_path/trials.jsonl, the tuning DB in tmp_path."""
    return worker_env(sleep, tmp_path / "trials.jsonl", SPARSE_AUTOTUNE_DB=str(tmp_path / "tuning.sqlite"), **extra)


def cli(args, env, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "sparse_autotune", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, **kw)


def popen(args, env, cwd, out: Path):
    fh = open(out, "w")
    # SIGINT back to its default in the child: a test run started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler (the Ctrl-C tests send SIGINT)
    return subprocess.Popen([sys.executable, "-m", "sparse_autotune", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=env, cwd=cwd, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def the_study(url: str):
    storage = optuna.storages.RDBStorage(url)
    [name] = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def evaluated(t) -> bool:
    """As the search counts: a repeat of a config evaluated already is not counted."""
    if t.user_attrs.get("repeat_of_earlier_trial"):
        return False
    return t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error_stage" in t.user_attrs)


def trial_log(tmp_path: Path) -> list[dict]:
    p = tmp_path / "trials.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def records(db: Path) -> list[Record]:
    tdb = TuningDB(db, create=False)
    from sqlalchemy import select
    from sqlalchemy.orm import Session
    with Session(tdb.engine) as s:
        out = list(s.scalars(select(Record)))
    tdb.dispose()
    return out


TUNE = ["tune", "--shape", "256x512", "--density", "0.1", "--n", "128", "--heartbeat", "1", "--grace", "4"]
# the same with a grace period no stall of a live worker reaches, for tests where no worker dies: on a loaded machine
# (pytest -n auto) a 4-second grace could fail a live worker's trial as stale, which is the heartbeat doing its job
# but not what those tests check
CALM_GRACE = "120"
TUNE_CALM = [*TUNE[:-2], "--grace", CALM_GRACE]


# ---- two workers on one study --------------------------------------------------------------------------------


def test_two_workers_synthetic_share_one_study(storage_url, tmp_path):
    trials = 24
    env = synthetic_env(tmp_path, 0.1)
    proc = cli([*TUNE_CALM, "--trials", str(trials), "--storage", storage_url, "--workers", "2"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from sparse_autotune.core.space import select_spaces
    families = [sp.family for sp in select_spaces()]
    assert any(f"best      {f} " in proc.stdout for f in families) and SYNTHETIC_GPU in proc.stdout

    study = the_study(storage_url)
    all_trials = study.get_trials(deepcopy=False)
    done = [t for t in all_trials if evaluated(t)]
    assert not [t for t in all_trials if t.state == TrialState.RUNNING]
    released = [t for t in all_trials if t.user_attrs.get("over_budget")]  # asked at once by both, past the budget
    assert all(t.state == TrialState.FAIL and not evaluated(t) for t in released)
    assert not [t for t in all_trials if t.state == TrialState.FAIL and not evaluated(t) and t not in released
                and not t.user_attrs.get("repeat_of_earlier_trial")]  # none lost (a repeat is told, not evaluated)
    # the budget is counted over both workers, exactly: trials asked past it were released, not evaluated
    assert len(done) == trials
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2, workers  # both workers ran trials of the one study

    # every trial told exactly once (no duplicate), and every evaluated trial was told by the worker it names
    log = trial_log(tmp_path)
    numbers = [e["number"] for e in log if e["state"] != "PRUNED" and not e["repeat"]]
    assert len(numbers) == len(set(numbers)), [e for e in log if numbers.count(e["number"]) > 1]
    assert set(numbers) == {t.number for t in done}
    by_number = {t.number: t for t in done}
    for e in log:
        if e["state"] != "PRUNED" and not e["repeat"]:
            assert by_number[e["number"]].user_attrs["worker"] == e["worker"]
    assert len({e["pid"] for e in log}) == 2
    for t in done:  # the synthetic objective's value of the trial's own config
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(synthetic_value(t.user_attrs["family"], json.loads(t.user_attrs["config"])))

    # the best of all trials lands in the tuning DB once, as with one worker
    best = min((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    recs = records(tmp_path / "tuning.sqlite")
    assert len(recs) == 1
    r = recs[0]
    assert r.is_best and r.gpu_name == SYNTHETIC_GPU and (r.m, r.k, r.n, r.dtype) == (256, 512, 128, "fp32")
    assert r.time_us == pytest.approx(best.value)
    assert r.config == json.loads(best.user_attrs["config"])
    assert r.trials == len(done)
    assert r.study_name == study.study_name and SYNTHETIC_GPU in study.study_name

    # status: one problem done, trials per worker
    st = cli(["status", "--storage", storage_url, "--json"], env, tmp_path)
    assert st.returncode == 0, st.stderr
    s = json.loads(st.stdout)
    assert s["counts"]["done"] == 1 and s["counts"]["queued"] == 0 and s["counts"]["running"] == 0
    assert s["problems"][0]["trials"]["evaluated"] == len(done)
    per = {w: c["evaluated"] for w, c in s["trials_per_worker"].items()}
    assert per == {w: sum(1 for t in done if t.user_attrs["worker"] == w) for w in workers}
    assert {w["id"] for w in s["workers"]} == workers and all(w["state"] == "exited" for w in s["workers"])
    text = cli(["status", "--storage", storage_url], env, tmp_path)
    assert text.returncode == 0 and "problems: 1 done, 0 running, 0 queued, 0 failed" in text.stdout

    # a second run of the same problem finds it done and tunes nothing more
    again = cli([*TUNE_CALM, "--trials", str(trials), "--storage", storage_url, "--workers", "2"], env, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(the_study(storage_url).get_trials(deepcopy=False)) == len(all_trials)
    assert len(records(tmp_path / "tuning.sqlite")) == 1


_POP = """
import json, sys, warnings
import optuna
warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)
from sparse_autotune.tuning.queue import ProblemQueue
study = optuna.load_study(study_name="race", storage=ProblemQueue(sys.argv[1], heartbeat=5, grace=60).storage)
got = []
for _ in range(int(sys.argv[2])):
    t = study.ask()
    got.append(t.number)
    study.tell(t, 1.0)
print(json.dumps(got))
"""


def test_sqlite_storage_hands_each_waiting_trial_to_one_worker(tmp_path):
    """Three processes pop the study's enqueued (WAITING) trials through the shared storage at once: each trial goes to
    exactly one of them. On SQLite, Optuna's own RDBStorage let two processes take the same trial (its SELECT ... FOR
    UPDATE is ignored there: 'Trial#8 has already finished' in one of two runs of this very test before the storage
    began every transaction with BEGIN IMMEDIATE; under pytest -n auto it showed as one trial reported by both
    workers of test_two_workers_synthetic_share_one_study)."""
    url = f"sqlite:///{tmp_path / 'race.sqlite'}"
    study = optuna.create_study(study_name="race", storage=ProblemQueue(url, heartbeat=5, grace=60).storage)
    for i in range(90):
        study.enqueue_trial({"x": float(i)})
    procs = [subprocess.Popen([sys.executable, "-c", _POP, url, "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        got += json.loads(out.strip().splitlines()[-1])
    assert len(got) == 90 and len(set(got)) == 90
    trials = optuna.load_study(study_name="race", storage=url).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(90)) and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.system_attrs["fixed_params"]["x"] for t in trials) == [float(i) for i in range(90)]  # each once


# ---- a worker killed mid-trial --------------------------------------------------------------------------------


def _wait_for(cond, timeout, what):
    t_end = time.time() + timeout
    while time.time() < t_end:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_synthetic_trial_fails_and_other_worker_finishes(storage_url, tmp_path):
    trials = 10
    # worker A: slow trials (1.5 s), started through `tune --storage` (it enqueues the problem)
    a_env = synthetic_env(tmp_path, 1.5)
    a = popen([*TUNE, "--trials", str(trials), "--storage", storage_url], a_env, tmp_path, tmp_path / "a.log")
    try:
        # wait until A has told two trials and is inside the next one
        def a_mid_trial():
            if len(trial_log(tmp_path)) < 2:
                return None
            try:
                study = the_study(storage_url)
            except Exception:  # noqa: BLE001
                return None
            running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if t.user_attrs.get("config")]
            return running or None
        running = _wait_for(a_mid_trial, 120, "worker A inside a trial")
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
    killed = {t.number: t for t in running}
    a_id = next(iter(killed.values())).user_attrs["worker"]
    time.sleep(5)  # past the grace period (4 s): A's heartbeat is stale, its problem goes back to the queue

    so = ProblemQueue(storage_url, heartbeat=1, grace=4)
    [row] = so.problems()
    assert row["state"] == "running" and row["attempts"] == 1  # nothing reclaims it before a worker looks

    # worker B joins from "another host": it takes the problem over and finishes it
    b = cli(["worker", "--storage", storage_url, "--heartbeat", "1", "--grace", "4"],
            synthetic_env(tmp_path, 0.05), tmp_path, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    assert "claimed problem 1" in b.stderr and "problem 1 done" in b.stderr

    [row] = so.problems()
    assert row["state"] == "done" and row["attempts"] == 2 and row["worker"] != a_id
    b_id = row["worker"]
    study = the_study(storage_url)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for n, t in killed.items():
        now = by_number[n]
        assert now.state == TrialState.FAIL and "error_stage" not in now.user_attrs  # failed by the heartbeat check
        retries = [r for r in by_number.values() if r.system_attrs.get("failed_trial") == n]
        assert len(retries) == 1, f"trial {n} retried {len(retries)} times"
        r = retries[0]
        assert r.state == TrialState.COMPLETE and r.user_attrs["worker"] == b_id
        assert r.user_attrs["config"] == t.user_attrs["config"]
        assert not r.user_attrs.get("repeat_of_earlier_trial")  # really evaluated again, not reused
    done = [t for t in by_number.values() if evaluated(t)]
    assert len(done) == trials  # B alone after the kill: the budget exactly
    assert not [t for t in by_number.values() if t.state == TrialState.RUNNING]
    a_done = [t for t in done if t.user_attrs["worker"] == a_id]
    assert len(a_done) >= 2
    best = min((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    [rec] = records(tmp_path / "tuning.sqlite")
    assert rec.time_us == pytest.approx(best.value) and rec.config == json.loads(best.user_attrs["config"])

    st = json.loads(cli(["status", "--storage", storage_url, "--json"], a_env, tmp_path).stdout)
    states = {w["id"]: w["state"] for w in st["workers"]}
    assert states == {a_id: "lost", b_id: "exited"}
    assert st["trials_per_worker"][a_id]["lost"] == len(killed)
    so.dispose()


# ---- the queue ------------------------------------------------------------------------------------------------


def _specs(n):
    return [{"m": 64, "k": 128, "n": 32, "density": 0.1, "dtype": "fp32", "pattern": "uniform", "seed": i,
             "trials": 5, "timeout": None, "sampler": "tpe", "families": None} for i in range(n)]


def test_queue_claims_are_atomic(storage_url):
    so = ProblemQueue(storage_url, heartbeat=1, grace=5)
    ids = so.enqueue(_specs(12))
    assert len(set(ids)) == 12
    assert so.enqueue(_specs(12)) == ids  # enqueueing again adds nothing
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claimer(name):
        mine = ProblemQueue(storage_url, heartbeat=1, grace=5)  # its own connections, as another process has
        while True:
            got = mine.claim(name, "GPU X", exclude=ids)  # exclude: take queued problems only, never join
            if got is None:
                break
            row, how = got
            assert how == "claimed"
            with lock:
                claimed.append((name, row["id"]))
        mine.dispose()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    got = sorted(rid for _, rid in claimed)
    assert got == sorted(ids)  # each problem claimed exactly once
    rows = so.problems()
    assert all(r["state"] == "running" and r["attempts"] == 1 and r["study_gpu"] == "GPU X" for r in rows)
    assert {r["worker"] for r in rows} == {w for w, _ in claimed}
    so.dispose()


def test_queue_stale_problems_go_back_then_fail(storage_url):
    from sqlalchemy import update
    so = ProblemQueue(storage_url, heartbeat=1, grace=2)
    [rid] = so.enqueue(_specs(1), gpu="GPU X")
    assert so.claim("w", "GPU Y") is None  # another GPU model does not take it
    for attempt in range(1, MAX_ATTEMPTS + 1):
        row, how = so.claim("w", "GPU X")
        assert (row["id"], how, row["attempts"]) == (rid, "claimed", attempt)
        row2, how2 = so.claim("v", "GPU X")  # a second worker joins the running problem
        assert (row2["id"], how2) == (rid, "joined")
        assert so.claim("v", "GPU X", exclude=[rid]) is None
        assert so.reclaim_stale("GPU X") == []  # fresh heartbeat
        with so.engine.begin() as c:  # every worker on it went silent
            c.execute(update(queue_table).where(queue_table.c.id == rid).values(heartbeat=time.time() - 10))
        assert so.reclaim_stale("GPU X") == [rid]
        [r] = so.problems()
        assert r["state"] == ("queued" if attempt < MAX_ATTEMPTS else "failed")
    assert "heartbeat" in so.problems()[0]["error"]
    assert so.claim("w", "GPU X") is None
    so.dispose()


def test_queue_finalisation_has_one_winner(storage_url):
    so = ProblemQueue(storage_url, heartbeat=1, grace=5)
    [rid] = so.enqueue(_specs(1))
    so.claim("a", "GPU X")
    so.claim("b", "GPU X")
    assert so.to_finalizing(rid, "a") is True
    assert so.to_finalizing(rid, "b") is False
    assert so.finish(rid, "a", "done", result={"best": {"time_us": 1.0}}) is True
    [r] = so.problems()
    assert r["state"] == "done" and r["worker"] == "a" and json.loads(r["result"])["best"]["time_us"] == 1.0
    so.dispose()


# ---- bench through the queue (SQLite, single host) -------------------------------------------------------------


def test_bench_suite_synthetic_two_workers(tmp_path):
    url = f"sqlite:///{tmp_path / 'storage.sqlite'}"
    env = synthetic_env(tmp_path, 0.0)
    proc = cli(["bench", "--suite", "quick", "--trials", "3", "--storage", url, "--workers", "2", "--heartbeat", "1",
                "--grace", "5", "--out", str(tmp_path / "out")], env, tmp_path, timeout=600)
    (tmp_path / "bench.stderr").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["cases"] == 16, proc.stderr[-6000:]
    [suite_json] = list((tmp_path / "out").glob("suite-quick-*.json"))
    recs = json.loads(suite_json.read_text())
    assert len(recs) == 16 and {r["gpu"] for r in recs} == {SYNTHETIC_GPU}
    stored = records(tmp_path / "tuning.sqlite")
    assert len(stored) == 16 and all(r.is_best for r in stored), proc.stderr[-6000:]
    by_key = {(r.m, r.k, r.n, r.density, r.dtype): r.time_us for r in stored}
    for r in recs:
        assert by_key[(r["M"], r["K"], r["N"], r["density"], r["dtype"])] == pytest.approx(r["tuned_us"])
    log = trial_log(tmp_path)
    assert len({e["pid"] for e in log}) == 2  # both workers took cases


def test_bench_suite_synthetic_budget_stops_claiming_and_a_rerun_finishes(tmp_path):
    """--budget with --storage: the workers claim no case after it; the cases left stay queued and a rerun of the same
    command does them (and only them)."""
    url = f"sqlite:///{tmp_path / 'storage.sqlite'}"
    env = synthetic_env(tmp_path, 0.15)
    args = ["bench", "--suite", "quick", "--trials", "3", "--storage", url, "--workers", "2", "--heartbeat", "1",
            "--grace", "5", "--out", str(tmp_path / "out")]
    first = cli([*args, "--budget", "1"], env, tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    done_first = json.loads(first.stdout)["cases"]
    assert done_first < 16 and "time budget reached" in first.stderr, first.stderr[-3000:]
    so = ProblemQueue(url)
    states = [r["state"] for r in so.problems()]
    so.dispose()
    assert states.count("done") == done_first and states.count("queued") == 16 - done_first
    n_trials_first = len(trial_log(tmp_path))
    second = cli(args, env, tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["cases"] == 16
    [suite_json] = list((tmp_path / "out").glob("suite-quick-*.json"))
    assert len(json.loads(suite_json.read_text())) == 16
    assert len(records(tmp_path / "tuning.sqlite")) == 16
    new = trial_log(tmp_path)[n_trials_first:]
    assert len(new) == 3 * (16 - done_first)  # the finished cases were not tuned again


def test_more_workers_than_gpus_synthetic_share_them(monkeypatch):
    from sparse_autotune.tuning.spawn import local_devices
    monkeypatch.setenv(TUNER_ENV, TUNER)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert local_devices(5) == ["0", "1", "0", "1", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert local_devices(2) == ["3", "3"]


# ---- bad input ------------------------------------------------------------------------------------------------


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), proc.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


@pytest.mark.parametrize("args,needles", [
    (["status", "--storage", "not a url"], ["not an SQLAlchemy URL"]),
    (["status", "--storage", "postgresql+psycopg://sat@127.0.0.1:1/nodb"], ["cannot use storage", "127.0.0.1"]),
    (["worker", "--storage", "nosuchdialect://x/y"], ["cannot use storage"]),
    (["worker", "--storage", "sqlite:///{tmp}/s.sqlite", "--problems", "1,two"], ["--problems"]),
    ([*TUNE, "--workers", "2"], ["--workers needs --storage"]),
    ([*TUNE, "--storage", "sqlite:///{tmp}/s.sqlite", "--workers", "0"], ["--workers"]),
    ([*TUNE, "--storage", "sqlite:///{tmp}/s.sqlite", "--heartbeat", "5", "--grace", "5"], ["--grace"]),
    (["bench", "--storage", "sqlite:///{tmp}/s.sqlite", "--budget", "0"], ["--budget"]),
    (["worker", "--storage", "sqlite:///{tmp}/s.sqlite", "--budget", "-1"], ["--budget"]),
])
def test_bad_scaleout_input_synthetic_is_one_line(tmp_path, args, needles):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = cli(args, synthetic_env(tmp_path, 0), tmp_path, timeout=120)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "tuning.sqlite").exists()


def test_local_workers_share_the_cpus_for_compiling(monkeypatch):
    from sparse_autotune.tuning.spawn import compile_threads_per_worker
    from sparse_autotune.tuning.tuner import COMPILE_THREADS_ENV, TuneOptions
    assert compile_threads_per_worker(8, cpus=16) == 2
    assert compile_threads_per_worker(1, cpus=16) == 8
    assert compile_threads_per_worker(6, cpus=4) == 1
    monkeypatch.setenv(COMPILE_THREADS_ENV, "3")
    assert TuneOptions().compile_workers == 3
    monkeypatch.setenv(COMPILE_THREADS_ENV, "not a number")
    assert 1 <= TuneOptions().compile_workers <= 8


def test_worker_log_phases_of_the_gpu_turn():
    """The worker's line per problem splits its GPU turn into init / trials (verify, time, given up) / finish."""
    from sparse_autotune.tuning.worker import turn_phases as _phases
    line = _phases({"gpu_turn_s": {"init": 0.25, "trials": 7.94, "verify": 2.1, "time": 5.6, "finish": 1.2,
                                   "given_up": 3}})
    assert line == "init 0.2 s, trials 7.9 s (verify 2.1 s, time 5.6 s, 3 given up), finish 1.2 s"
    assert _phases({"gpu_turn_s": {"init": 0.1, "trials": 1.0, "verify": 0.4, "time": 0.6, "finish": 0.3,
                                   "given_up": 0}}) == "init 0.1 s, trials 1.0 s (verify 0.4 s, time 0.6 s), finish 0.3 s"
    assert _phases({"elapsed_s": 3.0}) == "none"  # a report without a GPU turn (synthetic tuner)
    split = _phases({"gpu_turn_s": {"init": 0.1, "trials": 1.0, "verify": 0.4, "time": 0.6, "finish": 57.4,
                                    "finish_baselines": 21.04, "finish_cold": 35.9, "given_up": 0}})
    assert split.endswith("finish 57.4 s (baselines 21.0 s, cold 35.9 s)")


# ---- the tuner hook and Ctrl-C -----------------------------------------------------------------------------------


def test_tuner_hook_synthetic_names_the_workers_tuner(tmp_path, monkeypatch):
    """$SPARSE_AUTOTUNE_TUNER=module:Class picks the workers' tuner (default: the GPU's); a value that does not name a
    Tuner subclass is a one-line error, in the CLI too (exit 2, nothing written)."""
    from synthetic import SyntheticTuner

    from sparse_autotune.tuning.tuner import GpuTuner, tuner_class
    monkeypatch.delenv(TUNER_ENV, raising=False)
    assert tuner_class() is GpuTuner
    monkeypatch.setenv(TUNER_ENV, TUNER)
    assert tuner_class() is SyntheticTuner
    for bad in ("no_such_module_xyz:Tuner", "synthetic:NoSuchTuner", "synthetic", "sparse_autotune.store.db:Record"):
        monkeypatch.setenv(TUNER_ENV, bad)
        with pytest.raises(UserError, match=TUNER_ENV):
            tuner_class()
    env = synthetic_env(tmp_path, 0, **{TUNER_ENV: "no_such_module_xyz:Tuner"})
    proc = cli(["worker", "--storage", f"sqlite:///{tmp_path / 's.sqlite'}"], env, tmp_path, timeout=120)
    assert_one_line_error(proc, TUNER_ENV, "no_such_module_xyz")
    assert not (tmp_path / "tuning.sqlite").exists()


def test_worker_synthetic_ctrl_c_stops_keeps_the_trials_and_a_rerun_finishes(tmp_path):
    """Ctrl-C in a worker's search: the worker stops (exit 130, no new claim, the problem not finalised with a partial
    budget), the trials it evaluated stay in the study and none is left RUNNING; a worker run again joins the
    problem and spends only the rest of the budget."""
    from sparse_autotune.core.problem import Problem
    from sparse_autotune.tuning.queue import problem_spec
    url = f"sqlite:///{tmp_path / 'storage.sqlite'}"
    trials = 8
    so = ProblemQueue(url, heartbeat=1, grace=4)
    specs = [problem_spec(Problem.random(256, 512, 128, 0.1, "fp32", seed=s), trials, None, "random", None)
             for s in (0, 1)]
    first_id, second_id = so.enqueue(specs)
    worker = ["worker", "--storage", url, "--heartbeat", "1", "--grace", "4"]
    a = popen(worker, synthetic_env(tmp_path, 0.4), tmp_path, tmp_path / "a.log")
    try:
        _wait_for(lambda: len(trial_log(tmp_path)) >= 3, 120, "three trials told")
        a.send_signal(signal.SIGINT)
        assert a.wait(timeout=60) == 130
    finally:
        if a.poll() is None:
            a.kill()
    log = (tmp_path / "a.log").read_text()
    assert "interrupted" in log and "done:" not in log, log[-3000:]
    rows = {r["id"]: r for r in so.problems()}
    assert rows[first_id]["state"] == "running" and rows[second_id]["state"] == "queued"  # nothing more claimed
    study = the_study(url)
    kept = [t for t in study.get_trials(deepcopy=False) if evaluated(t)]
    assert 3 <= len(kept) < trials
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    b = cli(worker, synthetic_env(tmp_path, 0.0), tmp_path, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    # it joins problem 1 where it is still running, or claims it again once its heartbeat went stale (grace 4 s)
    assert any(f"{how} problem {first_id} " in b.stderr for how in ("joined", "claimed")), b.stderr[-3000:]
    assert f"claimed problem {second_id} " in b.stderr
    rows = {r["id"]: r for r in so.problems()}
    assert rows[first_id]["state"] == "done" and rows[second_id]["state"] == "done"
    storage = optuna.storages.RDBStorage(url)
    first = optuna.load_study(study_name=rows[first_id]["study_name"], storage=storage)
    done = {t.number for t in first.get_trials(deepcopy=False) if evaluated(t)}
    assert len(done) == trials and {t.number for t in kept} <= done  # the first worker's trials count
    so.dispose()


def test_random_spec_is_problem_spec_without_building_the_matrix():
    """A suite enqueues its cases' specs without generating their matrices (the llm suite has cases of 30M nonzeros):
    the spec must be exactly what problem_spec gives for the problem a worker rebuilds from it."""
    from sparse_autotune.core.problem import Problem
    from sparse_autotune.tuning.queue import problem_spec, random_spec
    for case in [(512, 2048, 256, 0.1, "fp16", "uniform"), (300, 700, 49, 0.0500004, "fp32", "powerlaw"),
                 (200, 300, 8, 0.3, "bf16", "rowuniform")]:
        p = Problem.random(*case, seed=0)
        assert problem_spec(p, 30, None, "tpe", ("a",)) == random_spec(*case, 0, 30, None, "tpe", ("a",))


@pytest.fixture(scope="module")
def quick_shards(tmp_path_factory):
    """The quick suite (2 trials a case) run as two shards, each on its own storage: [(storage URL, JSON), ...]."""
    tmp_path = tmp_path_factory.mktemp("shards")
    env = synthetic_env(tmp_path, 0.0)
    outs = []
    for i in (0, 1):
        url = f"sqlite:///{tmp_path / f'storage{i}.sqlite'}"
        out = tmp_path / f"out{i}"
        proc = cli(["bench", "--suite", "quick", "--trials", "2", "--storage", url, "--workers", "1", "--shard",
                    f"{i}/2", "--heartbeat", "1", "--grace", "5", "--out", str(out)], env, tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"shard {i}/2: 8 of them here" in proc.stderr
        [js] = list(out.glob("suite-quick-*.json"))
        outs.append((url, js))
    return tmp_path, outs


def test_bench_suite_synthetic_two_shards_each_with_its_storage_merge_to_the_whole(quick_shards):
    """--shard i/2 on two storages (two GPUs, each its own state): each tunes only its interleaved half; --merge joins
    the two JSON files into the whole suite, in the suite's order, with no GPU."""
    from sparse_autotune.tuning.suite import case_key, suite_cases
    tmp_path, shards = quick_shards
    env = synthetic_env(tmp_path, 0.0)
    outs = [js for _, js in shards]
    cases = [case_key(c) for c in suite_cases("quick")]
    halves = [[case_key(r) for r in json.loads(p.read_text())] for p in outs]
    assert halves[0] == cases[0::2] and halves[1] == cases[1::2]
    merged = cli(["bench", "--suite", "quick", "--merge", str(outs[1]), str(outs[0]), "--out", str(tmp_path / "all")],
                 env, tmp_path)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert json.loads(merged.stdout)["cases"] == 16
    [js] = list((tmp_path / "all").glob("suite-quick-*.json"))
    assert [case_key(r) for r in json.loads(js.read_text())] == cases
    assert "16/16 cases" in js.with_suffix(".md").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--shard", "2/2", "--workers", "2"], "--shard '2/2'"),
    (["--shard", "half", "--workers", "2"], "expected I/N"),
    (["--shard", "0/2"], "--shard needs --workers"),
])
def test_bad_shard_is_one_line(tmp_path, args, needle):
    proc = cli(["bench", "--suite", "quick", *args, "--out", str(tmp_path / "o")], synthetic_env(tmp_path, 0.0), tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_merge_keeps_the_longest_search_of_a_case_in_several_files(tmp_path):
    """Two shards' storages both hold the cases done before the split; a --retune on one of them lengthens its
    searches: the merge keeps the record with the most trials, the first file's on a tie, in the suite's order."""
    from sparse_autotune.tuning.suite import merge_records, suite_cases
    c0, c1, c2 = suite_cases("quick")[:3]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{**c0, "trials": 40, "src": "a"}, {**c1, "trials": 40, "src": "a"}]))
    b.write_text(json.dumps([{**c2, "trials": 40, "src": "b"}, {**c1, "trials": 60, "src": "b"},
                             {**c0, "trials": 40, "src": "b"}]))
    assert [r["src"] for r in merge_records([a, b], "quick")] == ["a", "b", "b"]
    assert [r["src"] for r in merge_records([b, a], "quick")] == ["b", "b", "b"]
    # --first-wins (an --only re-run after a kernel change, put over the earlier report): the first file's record
    assert [r["src"] for r in merge_records([a, b], "quick", first_wins=True)] == ["a", "a", "b"]
    # --fastest-wins (a --families part beside the earlier report of all families): the lowest tuned time, the first
    # file's on a tie; a record without one (a failed case) loses to any that has one
    a.write_text(json.dumps([{**c0, "tuned_us": 5.0, "src": "a"}, {**c1, "tuned_us": 9.0, "src": "a"},
                             {**c2, "tuned_us": None, "src": "a"}]))
    b.write_text(json.dumps([{**c0, "tuned_us": 6.0, "src": "b"}, {**c1, "tuned_us": 8.0, "src": "b"},
                             {**c2, "tuned_us": 7.0, "src": "b"}]))
    assert [r["src"] for r in merge_records([a, b], "quick", fastest_wins=True)] == ["a", "b", "b"]
    assert [r["src"] for r in merge_records([b, a], "quick", fastest_wins=True)] == ["a", "b", "b"]
    with pytest.raises(UserError, match="exclude each other"):
        merge_records([a, b], "quick", first_wins=True, fastest_wins=True)


def test_merge_refuses_foreign_and_other_suite_files(tmp_path):
    from sparse_autotune.tuning.suite import merge_records
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(UserError, match="not a suite's JSON"):
        merge_records([bad], "quick")
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"M": 3, "K": 3, "N": 3, "density": 0.5, "dtype": "fp32", "pattern": "uniform"}]))
    with pytest.raises(UserError, match="not in suite 'quick'"):
        merge_records([other], "quick")
    proc = cli(["bench", "--suite", "quick", "--merge", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")],
               synthetic_env(tmp_path, 0.0), tmp_path)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and not (tmp_path / "o").exists()
    proc = cli(["bench", "--suite", "quick", "--first-wins", "--out", str(tmp_path / "o")],
               synthetic_env(tmp_path, 0.0), tmp_path)
    assert proc.returncode == 2 and "--first-wins applies to --merge only" in proc.stderr
    proc = cli(["bench", "--suite", "quick", "--fastest-wins", "--out", str(tmp_path / "o")],
               synthetic_env(tmp_path, 0.0), tmp_path)
    assert proc.returncode == 2 and "--fastest-wins applies to --merge only" in proc.stderr


def test_merge_never_overwrites_a_report_it_was_not_given(tmp_path):
    from sparse_autotune.tuning.suite import suite_cases, write_merged
    c0, c1 = suite_cases("quick")[:2]
    def rec(c):  # a suite record with made-up times (no GPU): what write_report reads
        return {**c, "nnz": 10, "family": "csr_rowsplit", "config": {}, "tuned_us": 5.0, "cusparse_us": 10.0,
                "cublas_fp32_us": 8.0, "cublas_tf32_us": 6.0, "cublas_fp16_us": 4.0, "cublas_bf16_us": None,
                "floor_us": 1.0, "bytes_floor_us": None, "a_bytes": None, "a_bytes_per_nnz": None, "max_rel_err": 0.0,
                "tuned_cold_us": None, "dense_cold_us": None, "trials": 3, "chosen_family": "csr_rowsplit",
                "chosen_us": 5.0, "gpu": "GPU X", "driver": "0", "cuda": "0", "cupy": "0"}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([rec(c0)]))
    b.write_text(json.dumps([rec(c1)]))
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "suite-quick-gpu-x.json"
    existing.write_text(json.dumps([rec(c0), rec(c1), rec(suite_cases("quick")[2])]))
    before = existing.read_text()
    with pytest.raises(UserError, match="exists and is not one of the files merged"):
        write_merged([a, b], "quick", out)
    assert existing.read_text() == before
    got = write_merged([existing, a, b], "quick", out)  # named among them: its cases are kept
    assert len(got) == 3 and len(json.loads(existing.read_text())) == 3


def test_retry_failed_puts_only_failed_problems_back(storage_url):
    so = ProblemQueue(storage_url, heartbeat=1, grace=5)
    ids = so.enqueue(_specs(3))
    for rid in ids[:2]:
        so.claim("w", "GPU X", only=[rid])
        so.to_finalizing(rid, "w")
    so.finish(ids[0], "w", "failed", error="lost 3 times")
    so.finish(ids[1], "w", "done", result={"best": {"time_us": 1.0}})
    assert so.retry_failed(ids) == 1
    rows = {r["id"]: r for r in so.problems()}
    assert rows[ids[0]]["state"] == "queued" and rows[ids[0]]["attempts"] == 0
    assert rows[ids[1]]["state"] == "done" and rows[ids[2]]["state"] == "queued"
    assert so.retry_failed(ids) == 0
    so.dispose()


def test_bench_suite_synthetic_retune_reopens_only_the_matching_cases(quick_shards):
    """--retune 'N=256 dtype=fp16' on shard 1's storage after its run: only those cases' studies get --retune-trials
    more trials (the same study, continued); the report keeps the other cases' first results; a rerun of the same
    command resumes (nothing left to do)."""
    from sparse_autotune.tuning.suite import case_key, suite_cases
    tmp_path, shards = quick_shards
    url, js = shards[1]
    env = synthetic_env(tmp_path, 0.0)
    # --trials 7 here, 2 in the first run: the first run is found by its case, not by its spec (nothing else runs)
    base = ["bench", "--suite", "quick", "--trials", "7", "--storage", url, "--workers", "1", "--shard", "1/2",
            "--heartbeat", "1", "--grace", CALM_GRACE, "--out", str(js.parent), "--retune", "N=256", "--retune", "dtype=fp16",
            "--retune-trials", "3"]
    before = {case_key(r): r for r in json.loads(js.read_text())}
    assert len(before) == 8 and {r["trials"] for r in before.values()} == {2}
    def studies():  # each study's COMPLETE trials (the known-good configs wait in it as WAITING trials)
        st = optuna.storages.RDBStorage(url)
        return {s.study_name: len(optuna.load_study(study_name=s.study_name, storage=st).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))) for s in optuna.get_all_study_summaries(st, False)}

    trials_before = studies()
    again = cli(base, env, tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 cases retuned with 3 more trials than their first run (2 of them had one" in again.stderr
    assert again.stderr.count("claimed problem") == 2, again.stderr[-3000:]
    after = {case_key(r): r for r in json.loads(js.read_text())}
    hit = {case_key(c) for c in suite_cases("quick") if c["N"] == 256 and c["dtype"] == "fp16"}
    assert set(after) == set(before) and len(hit) == 2 and hit <= set(after)
    for k, r in after.items():
        assert r["trials"] == (5 if k in hit else 2), (k, r["trials"])
        if k in hit:  # the same study, continued: at least as good as the first run's best
            assert r["tuned_us"] <= before[k]["tuned_us"] + 1e-9
        else:
            assert r == before[k]
    trials_after = studies()
    assert set(trials_after) == set(trials_before) and len(trials_before) == 8  # no new study for a retune
    assert sum(trials_after[k] > trials_before[k] for k in trials_before) == 2  # two continued, six untouched
    rerun = cli(base, env, tmp_path, timeout=600)
    assert rerun.returncode == 0 and "claimed problem" not in rerun.stderr, rerun.stderr[-3000:]


def test_bench_suite_synthetic_only_runs_the_matching_cases_and_merges_over_the_old(quick_shards):
    """--only 'N=256 dtype=fp16' on a fresh storage (synthetic objective, no GPU): only those 2 cases are queued, claimed
    and reported; --merge NEW OLD with shard 1's report, which holds both cases: a case in both keeps the longer search
    (the first file's on a tie: merge_records' own test), every other case of the old report is kept."""
    from sparse_autotune.tuning.suite import case_key, suite_cases
    tmp_path, shards = quick_shards
    env = synthetic_env(tmp_path, 0.0)
    url, out = f"sqlite:///{tmp_path / 'only.sqlite'}", tmp_path / "only"
    # 6 trials: more than shard 1 has for these cases (5 after the retune test above, else 2): the new records win
    proc = cli(["bench", "--suite", "quick", "--trials", "6", "--storage", url, "--workers", "1", "--heartbeat", "1",
                "--grace", CALM_GRACE, "--out", str(out), "--only", "N=256", "--only", "dtype=fp16",
                "--families", "csr_btile,pattern_unrolled"], env, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("claimed problem") == 2 and "2 cases in the queue" in proc.stderr, proc.stderr[-3000:]
    [js] = list(out.glob("suite-quick-*.json"))
    hit = [case_key(c) for c in suite_cases("quick") if c["N"] == 256 and c["dtype"] == "fp16"]
    assert [case_key(r) for r in json.loads(js.read_text())] == hit
    # --families: every case searched those families only (csr_rowsplit, the first enabled one, is not among them)
    assert {r["family"] for r in json.loads(js.read_text())} <= {"csr_btile", "pattern_unrolled"}
    old = shards[1][1]
    merged = cli(["bench", "--suite", "quick", "--merge", str(js), str(old), "--out", str(tmp_path / "m")], env, tmp_path)
    assert merged.returncode == 0, merged.stderr[-3000:]
    [mj] = list((tmp_path / "m").glob("suite-quick-*.json"))
    got = {case_key(r): r for r in json.loads(mj.read_text())}
    new = {case_key(r): r for r in json.loads(js.read_text())}
    olds = {case_key(r): r for r in json.loads(old.read_text())}
    assert set(new) <= set(olds) and set(got) == set(olds)  # the new cases are in the old report too
    for k, r in got.items():
        if k not in new:
            assert r == olds[k]
        else:  # the longer search; the first file's (the new run's) on a tie
            assert r == new[k] and r["trials"] == 6 > olds[k]["trials"]


@pytest.mark.parametrize("args,needle", [
    (["--only", "N=16", "--workers", "2"], "--only: no case of suite 'quick' matches N=16"),
    (["--only", "N=256"], "--only needs --workers"),
    (["--only", "size=3", "--workers", "2"], "--only 'size=3': 'size=3' is not FIELD=V1,V2"),
    (["--retune", "N=16", "--workers", "2"], "no case of suite 'quick' matches N=16"),
    (["--retune", "rows=16", "--workers", "2"], "'rows=16' is not FIELD=V1,V2"),
    (["--retune", "N=big", "--workers", "2"], "N needs integers"),
    (["--retune", "N=256"], "--retune needs --workers"),
    (["--families", "csr_btile"], "--families needs --workers"),
    (["--families", "nope", "--workers", "2"], "unknown kernel family 'nope'"),
])
def test_bad_retune_is_one_line(tmp_path, args, needle):
    proc = cli(["bench", "--suite", "quick", *args, "--out", str(tmp_path / "o")], synthetic_env(tmp_path, 0.0), tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_beater_never_takes_a_finished_problems_state_for_the_next_one():
    """The heartbeat's state read for problem 1 ("done"), landing after the worker moved to problem 2, is dropped (CI,
    session 32: it stopped problem 2's search and a lone worker re-claimed it after the grace); a read for the current
    problem is kept."""
    from sparse_autotune.tuning.worker import _Beater

    class Queue:
        heartbeat = 3600.0  # the thread never beats during the test

        def beat(self, *a):
            pass

    b = _Beater(Queue(), "w")
    try:
        b.set_problem(1)
        b.set_problem(2)
        b._observe(1, "done")
        assert b.problem_state == "running"
        b._observe(2, "finalizing")
        assert b.problem_state == "finalizing"
        b.set_problem(None)
        b._observe(2, "done")
        assert b.problem_state is None
    finally:
        b.close()
