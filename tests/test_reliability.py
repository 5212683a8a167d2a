"""Every way in is guarded: a table of bad inputs across every command and the Python API.

Each case must end with exit status 2 (the API: a UserError), exactly one line on stderr that starts with
"sparse-autotune: error:", no traceback, nothing on stdout, no Python warning, and every database file involved
unchanged (sha256 before and after) with no file created beside them (no -wal/-shm, no new database). The CLI cases
run in-process through sparse_autotune.commands.main.main(argv); a few run as real processes to prove the exit path.
This machine has no GPU, which is also the "no GPU" case users hit; on a machine with one, the cases that would tune
are skipped.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from records import GPU, make_record
from synthetic import TUNER

from sparse_autotune.commands.main import main
from sparse_autotune.device.gpu import gpu_available
from sparse_autotune.errors import UserError
from sparse_autotune.store.db import SCHEMA_VERSION, TuningDB
from sparse_autotune.tuning.tuner import TUNER_ENV

PREFIX = "sparse-autotune: error:"
HAS_GPU = gpu_available()
VALID = ["--shape", "64x128", "--density", "0.1"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (names relative to it) with its sha256."""
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The databases and matrices the cases name, in one folder whose every file is hashed around each case."""
    d = tmp_path_factory.mktemp("reliability")
    out = tmp_path_factory.mktemp("reliability-out")  # outputs (report --out, bench) and the working directory
    f = d / "files"
    f.mkdir()
    ours = f / "ours.sqlite"
    db = TuningDB(ours)
    db.store(make_record(9.5))
    db.store(make_record(7.0, {"rows_per_block": 16, "vec": 4}, n=128, created_at=dt.datetime(2025, 2, 1)))
    db.dispose()
    foreign = f / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.execute("INSERT INTO users VALUES (1, 'ada')")
    con.commit()
    con.close()
    optuna_other = f / "optuna-other.sqlite"  # another application's Optuna storage
    con = sqlite3.connect(optuna_other)
    con.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
    con.execute("INSERT INTO studies VALUES (1, 'my-hyperparameter-search')")
    con.execute("CREATE TABLE version_info (version_info_id INTEGER PRIMARY KEY, schema_version INTEGER)")
    con.commit()
    con.close()
    newer = f / "newer.sqlite"
    shutil.copyfile(ours, newer)
    con = sqlite3.connect(newer)
    con.execute("UPDATE sat_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    text = f / "notes.txt"
    text.write_text("my notes, not a database\n")
    empty = f / "empty.sqlite"
    empty.write_bytes(b"")
    (f / "folder.sqlite").mkdir()
    rng = np.random.default_rng(0)
    garbage = f / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not a zip")
    sp.save_npz(f / "good.npz", sp.random_array((32, 48), density=0.2, rng=rng, format="csr"))
    sp.save_npz(f / "complex.npz", sp.csr_matrix(sp.random(32, 48, density=0.2, random_state=0, format="csr")
                                                  .astype(np.complex64) * (1 + 1j)))
    sp.save_npz(f / "zeros.npz", sp.csr_matrix((32, 48), dtype=np.float32))
    sp.save_npz(f / "dense.npz", sp.csr_matrix(np.ones((32, 48), dtype=np.float32)))
    sp.save_npz(f / "huge.npz", sp.csr_matrix(np.full((4, 4), 1e39, dtype=np.float64) * np.eye(4)))
    np.savez(f / "model.npz", **{"enc.fc.weight": rng.standard_normal((32, 48)).astype(np.float32),
                                 "enc.zero.weight": np.zeros((16, 32), dtype=np.float32)})
    np.savez(f / "nan-model.npz", **{"fc.weight": np.full((8, 8), np.nan, dtype=np.float32)})
    # a real scale-out storage (the synthetic tuner, in this process: no GPU needed) and its tuning database
    storage = f / "storage.sqlite"
    tdb = f / "storage-tuning.sqlite"
    old = os.environ.get(TUNER_ENV)
    os.environ[TUNER_ENV] = TUNER
    try:
        rc = main(["tune", *VALID, "--trials", "3", "--no-progress", "--storage", f"sqlite:///{storage}",
                   "--db", str(tdb), "--heartbeat", "1", "--grace", "3"])
    finally:
        if old is None:
            os.environ.pop(TUNER_ENV)
        else:
            os.environ[TUNER_ENV] = old
    assert rc == 0 and storage.exists() and tdb.exists()
    assert not [p for p in f.iterdir() if p.name.endswith(("-wal", "-shm"))]  # every connection was closed
    paths = {p.stem.replace("-", "_"): p for p in f.iterdir()}
    return {"dir": f, "out": out, "missing": f / "missing.sqlite", "nofolder": f / "no" / "such" / "db.sqlite",
            "storage_url": f"sqlite:///{storage}", "foreign_url": f"sqlite:///{foreign}", **paths}


def fill(arg, files) -> str:
    return str(arg).format(**{k: str(v) for k, v in files.items()})


# name -> (argv with {placeholders}, words the error line must contain (case-insensitive))
CLI = {
    # tune: options, checked when parsed
    "tune shape malformed": (["tune", "--shape", "512by2048", "--density", "0.1"], ["512by2048"]),
    "tune shape zero": (["tune", "--shape", "0x2048", "--density", "0.1"], ["0x2048"]),
    "tune shape above 2**31": (["tune", "--shape", "99999999999x64", "--density", "0.1"], ["at most 2147483647"]),
    "tune density 0": (["tune", "--shape", "64x128", "--density", "0"], ["density"]),
    "tune density 1.5": (["tune", "--shape", "64x128", "--density", "1.5"], ["density", "1.5"]),
    "tune density nan": (["tune", "--shape", "64x128", "--density", "nan"], ["density"]),
    "tune density inf": (["tune", "--shape", "64x128", "--density", "inf"], ["density"]),
    "tune density text": (["tune", "--shape", "64x128", "--density", "lots"], ["density", "lots"]),
    "tune density without a nonzero": (["tune", "--shape", "64x128", "--density", "1e-9"], ["no nonzero"]),
    "tune n 0": (["tune", *VALID, "--n", "0"], ["--n", "positive"]),
    "tune n negative": (["tune", *VALID, "--n", "-3"], ["--n"]),
    "tune n above 2**31": (["tune", *VALID, "--n", str(2**31)], ["--n", "2147483647"]),
    "tune n text": (["tune", *VALID, "--n", "wide"], ["wide"]),
    "tune seed negative": (["tune", *VALID, "--seed", "-1"], ["--seed", "4294967295"]),
    "tune seed 2**32": (["tune", *VALID, "--seed", str(2**32)], ["--seed"]),
    "tune seed fraction": (["tune", *VALID, "--seed", "1.5"], ["--seed"]),
    "tune trials 0": (["tune", *VALID, "--trials", "0"], ["--trials"]),
    "tune trials huge": (["tune", *VALID, "--trials", str(10**30)], ["--trials"]),
    "tune timeout 0": (["tune", *VALID, "--timeout", "0"], ["--timeout"]),
    "tune timeout inf": (["tune", *VALID, "--timeout", "inf"], ["--timeout"]),
    "tune sampler": (["tune", *VALID, "--sampler", "bayes"], ["sampler", "bayes"]),
    "tune family unknown": (["tune", *VALID, "--families", "csr_magic"], ["csr_magic"]),
    "tune family empty name": (["tune", *VALID, "--families", ","], ["--families"]),
    "tune dtype": (["tune", *VALID, "--dtype", "fp64"], ["fp64"]),
    "tune pattern": (["tune", *VALID, "--pattern", "diagonal"], ["diagonal"]),
    "tune unknown option": (["tune", *VALID, "--fast"], ["--fast"]),
    # tune: sizes, before anything is allocated
    "tune 1e9 x 1e9": (["tune", "--shape", "1000000000x1000000000", "--density", "0.1"],
                       ["too large", "nonzeros", "EiB"]),
    "tune K x N above 2**31": (["tune", "--shape", "64x100000", "--density", "0.01", "--n", "100000"],
                               ["too large", "32 bits", "GPU memory"]),
    # tune: the matrix file
    "tune matrix missing": (["tune", "--matrix", "{missing}"], ["missing.sqlite"]),
    "tune matrix garbage": (["tune", "--matrix", "{garbage}"], ["garbage.npz"]),
    "tune matrix complex": (["tune", "--matrix", "{complex}"], ["complex"]),
    "tune matrix all zeros": (["tune", "--matrix", "{zeros}"], ["all zeros"]),
    "tune matrix denser than 50 %": (["tune", "--matrix", "{dense}"], ["50 %"]),
    "tune matrix beyond float32": (["tune", "--matrix", "{huge}"], ["float32"]),
    "tune matrix and shape": (["tune", "--matrix", "{good}", "--shape", "64x128"], ["--matrix"]),
    "tune no shape": (["tune", "--density", "0.1"], ["--shape"]),
    # tune: the database
    "tune db foreign": (["tune", *VALID, "--db", "{foreign}"], ["foreign.sqlite", "not a tuning database"]),
    "tune db foreign URL": (["tune", *VALID, "--db", "{foreign_url}"], ["foreign.sqlite", "not a tuning database"]),
    "tune db other Optuna": (["tune", *VALID, "--db", "{optuna_other}"], ["another application"]),
    "tune db text": (["tune", *VALID, "--db", "{notes}"], ["notes.txt", "not an sqlite file"]),
    "tune db newer": (["tune", *VALID, "--db", "{newer}"], ["newer.sqlite", "schema"]),
    "tune db directory": (["tune", *VALID, "--db", "{folder}"], ["directory"]),
    "tune db missing folder": (["tune", *VALID, "--db", "{nofolder}"], ["folder", "does not exist"]),
    "tune db unknown dialect": (["tune", *VALID, "--db", "nosuchdialect://x/y"], ["cannot use database"]),
    # tune: scale-out options and storage
    "tune storage not a URL": (["tune", *VALID, "--storage", "not a url"], ["not an SQLAlchemy URL"]),
    "tune storage foreign": (["tune", *VALID, "--storage", "{foreign_url}"], ["foreign.sqlite", "another application"]),
    "tune storage other Optuna": (["tune", *VALID, "--storage", "sqlite:///{optuna_other}"], ["Optuna storage"]),
    "tune storage missing folder": (["tune", *VALID, "--storage", "sqlite:///{nofolder}"], ["does not exist"]),
    "tune storage with matrix": (["tune", "--matrix", "{good}", "--storage", "{storage_url}"], ["--matrix"]),
    "tune workers without storage": (["tune", *VALID, "--workers", "2"], ["--workers needs --storage"]),
    "tune workers 0": (["tune", *VALID, "--storage", "{storage_url}", "--workers", "0"], ["--workers"]),
    "tune heartbeat 0": (["tune", *VALID, "--storage", "{storage_url}", "--heartbeat", "0"], ["--heartbeat"]),
    "tune heartbeat huge": (["tune", *VALID, "--heartbeat", str(10**12)], ["--heartbeat"]),
    "tune grace not above heartbeat": (["tune", *VALID, "--storage", "{storage_url}", "--heartbeat", "5", "--grace",
                                        "5"], ["--grace"]),
    # tune-model
    "tune-model family unknown (dry run)": (["tune-model", "{model}", "--dry-run", "--n", "8", "--families", "foo"],
                                            ["foo"]),
    "tune-model N 1e12 (dry run)": (["tune-model", "{model}", "--dry-run", "--n", str(10**12), "--prune", "magnitude",
                                     "--density", "0.1", "--exclude", "enc.zero.weight"], ["2147483647"]),
    "tune-model all-zero layer (dry run)": (["tune-model", "{model}", "--dry-run", "--n", "8", "--prune", "magnitude",
                                             "--density", "0.1"], ["enc.zero.weight", "all zeros", "--exclude"]),
    "tune-model complex matrix": (["tune-model", "{complex}", "--dry-run", "--n", "8"], ["complex"]),
    "tune-model NaN layer": (["tune-model", "{nan_model}", "--dry-run", "--n", "8"], ["NaN"]),
    "tune-model dense layer": (["tune-model", "{model}", "--dry-run", "--n", "8", "--exclude", "enc.zero.weight"],
                               ["50 %", "prune"]),
    "tune-model prune without density": (["tune-model", "{model}", "--dry-run", "--n", "8", "--prune", "magnitude"],
                                         ["--density"]),
    "tune-model density without prune": (["tune-model", "{model}", "--dry-run", "--n", "8", "--density", "0.1"],
                                         ["--prune"]),
    "tune-model density 2": (["tune-model", "{model}", "--dry-run", "--n", "8", "--prune", "magnitude", "--density",
                              "2"], ["density"]),
    "tune-model prune scope": (["tune-model", "{model}", "--dry-run", "--n", "8", "--prune", "magnitude",
                                "--density", "0.1", "--prune-scope", "world"], ["world"]),
    "tune-model missing checkpoint": (["tune-model", "{missing}", "--n", "8"], ["missing.sqlite"]),
    "tune-model dtype": (["tune-model", "{model}", "--dry-run", "--n", "8", "--dtype", "fp64"], ["fp64"]),
    "tune-model seed": (["tune-model", "{model}", "--dry-run", "--n", "8", "--seed", "-5"], ["--seed"]),
    "tune-model bad spatial": (["tune-model", "{model}", "--dry-run", "--batch", "1", "--spatial", "x"], ["spatial"]),
    "tune-model no N": (["tune-model", "{model}", "--dry-run"], ["--n"]),
    "tune-model db foreign": (["tune-model", "{good}", "--n", "8", "--db", "{foreign}"], ["foreign.sqlite"]),
    # lookup
    "lookup shape": (["lookup", "--shape", "big", "--density", "0.1", "--db", "{ours}"], ["big"]),
    "lookup density 0": (["lookup", "--shape", "512x2048", "--density", "0", "--db", "{ours}"], ["density"]),
    "lookup n 0": (["lookup", "--shape", "512x2048", "--density", "0.1", "--n", "0", "--db", "{ours}"], ["--n"]),
    "lookup n huge": (["lookup", "--shape", "512x2048", "--density", "0.1", "--n", str(10**20)], ["--n"]),
    "lookup dtype": (["lookup", "--shape", "512x2048", "--density", "0.1", "--dtype", "int8"], ["int8"]),
    "lookup db foreign": (["lookup", "--shape", "512x2048", "--density", "0.1", "--db", "{foreign}"],
                          ["foreign.sqlite"]),
    "lookup db foreign URL": (["lookup", "--shape", "512x2048", "--density", "0.1", "--db", "{foreign_url}"],
                              ["foreign.sqlite"]),
    "lookup db newer": (["lookup", "--shape", "512x2048", "--density", "0.1", "--db", "{newer}"], ["schema"]),
    "lookup db text": (["lookup", "--shape", "512x2048", "--density", "0.1", "--db", "{notes}"], ["notes.txt"]),
    # bench
    "bench suite": (["bench", "--suite", "huge"], ["huge"]),
    "bench trials 0": (["bench", "--trials", "0"], ["--trials"]),
    "bench budget 0": (["bench", "--storage", "{storage_url}", "--budget", "0"], ["--budget"]),
    "bench db foreign": (["bench", "--db", "{foreign}"], ["foreign.sqlite"]),
    "bench storage foreign": (["bench", "--storage", "{foreign_url}"], ["foreign.sqlite"]),
    # report
    "report db foreign": (["report", "--out", "{out}/r", "--db", "{foreign}"], ["foreign.sqlite"]),
    "report db foreign URL": (["report", "--out", "{out}/r", "--db", "{foreign_url}"], ["foreign.sqlite"]),
    "report db missing": (["report", "--out", "{out}/r", "--db", "{missing}"], ["does not exist"]),
    "report db empty": (["report", "--out", "{out}/r", "--db", "{empty}"], ["no records"]),
    "report db newer": (["report", "--out", "{out}/r", "--db", "{newer}"], ["schema"]),
    "report gpu": (["report", "--out", "{out}/r", "--db", "{ours}", "--gpu", "A100"], ["A100"]),
    "report model": (["report", "--out", "{out}/r", "--db", "{ours}", "--model", "bert"], ["bert"]),
    "report default db missing": (["report", "--out", "{out}/r"], ["no tuning database", "yet"]),
    # spaces
    "spaces dtype": (["spaces", "--dtype", "fp8"], ["fp8"]),
    # db
    "db list foreign": (["db", "list", "--db", "{foreign}"], ["not a tuning database"]),
    "db list foreign URL": (["db", "list", "--db", "{foreign_url}"], ["not a tuning database"]),
    "db list missing": (["db", "list", "--db", "{missing}"], ["does not exist"]),
    "db list missing URL": (["db", "list", "--db", "sqlite:///{missing}"], ["does not exist"]),
    "db list shape": (["db", "list", "--db", "{ours}", "--shape", "big"], ["big"]),
    "db list dtype": (["db", "list", "--db", "{ours}", "--dtype", "fp64"], ["fp64"]),
    "db list default missing": (["db", "list"], ["no tuning database", "yet"]),
    "db show no such id": (["db", "show", "99", "--db", "{ours}"], ["no record with id 99"]),
    "db show id text": (["db", "show", "two", "--db", "{ours}"], ["two"]),
    "db show id 2**70": (["db", "show", str(2**70), "--db", "{ours}"], ["record id"]),
    "db show id negative": (["db", "show", "-1", "--db", "{ours}"], ["-1"]),
    "db export into foreign": (["db", "export", "{foreign}", "--db", "{ours}"], ["foreign.sqlite"]),
    "db export into missing folder": (["db", "export", "{nofolder}", "--db", "{ours}"], ["does not exist"]),
    "db export into a URL": (["db", "export", "postgresql+psycopg://u@h/db", "--db", "{ours}"], ["a file"]),
    "db export from newer": (["db", "export", "{out}/x.sqlite", "--db", "{newer}"], ["schema"]),
    "db merge foreign source": (["db", "merge", "{foreign}", "--into", "{out}/m.sqlite"], ["foreign.sqlite"]),
    "db merge missing source": (["db", "merge", "{missing}", "--into", "{out}/m.sqlite"], ["does not exist"]),
    "db merge into foreign": (["db", "merge", "{ours}", "--into", "{foreign}"], ["foreign.sqlite"]),
    "db merge into foreign URL": (["db", "merge", "{ours}", "--into", "{foreign_url}"], ["foreign.sqlite"]),
    "db merge into itself": (["db", "merge", "{ours}", "--into", "{ours}"], ["itself"]),
    "db check foreign": (["db", "check", "{foreign}"], ["not a tuning database"]),
    "db check text": (["db", "check", "{notes}"], ["notes.txt"]),
    "db check missing": (["db", "check", "{missing}"], ["does not exist"]),
    "db check newer": (["db", "check", "{newer}"], ["schema"]),
    "db check directory": (["db", "check", "{folder}"], ["directory"]),
    "db no subcommand": (["db"], ["required"]),
    # worker and status
    "worker storage foreign": (["worker", "--storage", "{foreign_url}"], ["foreign.sqlite"]),
    "worker problems": (["worker", "--storage", "{storage_url}", "--problems", "1,two"], ["--problems"]),
    "worker problems huge": (["worker", "--storage", "{storage_url}", "--problems", str(2**64)], ["--problems"]),
    "worker budget negative": (["worker", "--storage", "{storage_url}", "--budget", "-1"], ["--budget"]),
    "worker db foreign": (["worker", "--storage", "{storage_url}", "--db", "{foreign}"], ["foreign.sqlite"]),
    "status storage missing": (["status", "--storage", "sqlite:///{missing}"], ["does not exist"]),
    "status storage foreign": (["status", "--storage", "{foreign_url}"], ["foreign.sqlite"]),
    "status storage without queue": (["status", "--storage", "sqlite:///{ours}"], ["no scale-out queue"]),
    "status storage not a URL": (["status", "--storage", "{storage}"], ["not an SQLAlchemy URL"]),
    # the command line itself
    "unknown command": (["optimize"], ["optimize"]),
    "no command": ([], ["required"]),
}
# valid commands that need a GPU: on this machine they stop at the GPU check, before anything is written
NEEDS_GPU = {
    "tune, no GPU": (["tune", *VALID, "--db", "{ours}"], ["no NVIDIA GPU driver"]),
    # refused in a second, not after building the matrix (the host's memory may refuse it first: "GPU" either way)
    "tune 20000x20000 at 50 %, no GPU": (["tune", "--shape", "20000x20000", "--density", "0.5", "--db", "{ours}"],
                                         ["GPU"]),
    "tune matrix, no GPU": (["tune", "--matrix", "{good}", "--db", "{ours}"], ["no NVIDIA GPU driver"]),
    "tune new storage, no GPU": (["tune", *VALID, "--storage", "sqlite:///{dir}/new-storage.sqlite"],
                                 ["no NVIDIA GPU driver"]),
    "tune-model, no GPU": (["tune-model", "{good}", "--n", "8", "--db", "{ours}"], ["no NVIDIA GPU driver"]),
    "bench, no GPU": (["bench", "--suite", "quick", "--trials", "2", "--db", "{ours}"], ["no NVIDIA GPU driver"]),
    "worker, no GPU": (["worker", "--storage", "sqlite:///{dir}/new-storage.sqlite"], ["no NVIDIA GPU driver"]),
}


@pytest.fixture
def env(files, monkeypatch):
    """The default database is a file in a folder that does not exist; the working directory is the output folder."""
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(files["out"] / "env" / "default.sqlite"))
    monkeypatch.delenv(TUNER_ENV, raising=False)
    monkeypatch.chdir(files["out"])
    return files


def check_refused(run, needles, files):
    """run() -> (status, stdout, stderr); the case's contract, with the files before and after."""
    before = snapshot(files["dir"])
    out_before = snapshot(files["out"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n") and lines[0].startswith(PREFIX), err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    assert snapshot(files["dir"]) == before  # every database unchanged, nothing created beside them
    assert snapshot(files["out"]) == out_before
    assert not (files["out"] / "env").exists()  # the default database's folder was not made


def run_in_process(argv, capsys):
    def run():
        capsys.readouterr()
        rc = main(argv)
        out, err = capsys.readouterr()
        return rc, out, err
    return run


@pytest.mark.parametrize("case", list(CLI))
def test_bad_input_cli(env, capsys, case):
    argv, needles = CLI[case]
    check_refused(run_in_process([fill(a, env) for a in argv], capsys), needles, env)


@pytest.mark.parametrize("case", list(NEEDS_GPU))
def test_valid_command_without_gpu_writes_nothing(env, capsys, case):
    if HAS_GPU:
        pytest.skip("a CUDA GPU is present: this would really tune")
    argv, needles = NEEDS_GPU[case]
    check_refused(run_in_process([fill(a, env) for a in argv], capsys), needles, env)


# ---- the Python API -----------------------------------------------------------------------------------------


def _api_cases(f):
    import sparse_autotune as sa
    from sparse_autotune.core.problem import Problem, check_size, load_matrix
    from sparse_autotune.store import guard
    from sparse_autotune.store.db import RecordFilter, describe_file
    from sparse_autotune.store.lookup import lookup

    def merge_into_copy(src):
        tmp = f["out"] / "api-merge.sqlite"
        db = TuningDB(tmp)
        try:
            db.merge_from(src)
        finally:
            db.dispose()
            for p in f["out"].glob("api-merge.sqlite*"):
                p.unlink()

    def export_to(out):
        db = TuningDB(f["ours"], create=False, readonly=True)
        try:
            db.export(out)
        finally:
            db.dispose()

    return {
        "lookup M negative": (lambda: lookup(-1, 64, 64, 0.1), ["M"]),
        "lookup N zero": (lambda: lookup(64, 64, 0, 0.1), ["N"]),
        "lookup N float": (lambda: lookup(64, 64, 2.5, 0.1), ["N"]),
        "lookup density complex": (lambda: lookup(64, 64, 64, 0.1j), ["density"]),
        "lookup dtype": (lambda: lookup(64, 64, 64, 0.1, "int8"), ["int8"]),
        "lookup db foreign": (lambda: lookup(64, 64, 64, 0.1, db=f["foreign"]), ["not a tuning database"]),
        "lookup db foreign URL": (lambda: lookup(64, 64, 64, 0.1, db=f["foreign_url"]), ["not a tuning database"]),
        "lookup db newer": (lambda: lookup(64, 64, 64, 0.1, db=f["newer"]), ["schema"]),
        "SpMM complex": (lambda: sa.SpMM(sp.random(8, 8, density=0.3, random_state=0, format="csr",
                                                   dtype=np.complex64)), ["complex"]),
        "SpMM infinite": (lambda: sa.SpMM(sp.csr_matrix(np.full((4, 4), np.inf, dtype=np.float32))), ["infinite"]),
        "SpMM beyond float32": (lambda: sa.SpMM(np.eye(4) * 1e300), ["float32"]),
        "SpMM NaN": (lambda: sa.SpMM(np.full((4, 4), np.nan, dtype=np.float32)), ["NaN"]),
        "SpMM text": (lambda: sa.SpMM("weights.pt"), ["str"]),
        "SpMM 3-D": (lambda: sa.SpMM(np.ones((2, 2, 2), dtype=np.float32)), ["2-D"]),
        "SpMM strings": (lambda: sa.SpMM(np.array([["a", "b"], ["c", "d"]])), ["not real numbers"]),
        "TuningDB foreign": (lambda: TuningDB(f["foreign"]), ["not a tuning database"]),
        "TuningDB foreign URL": (lambda: TuningDB(f["foreign_url"]), ["not a tuning database"]),
        "TuningDB other Optuna": (lambda: TuningDB(f["optuna_other"]), ["Optuna storage"]),
        "TuningDB newer": (lambda: TuningDB(f["newer"]), ["schema"]),
        "TuningDB text": (lambda: TuningDB(f["notes"]), ["not an sqlite file"]),
        "TuningDB directory": (lambda: TuningDB(f["folder"]), ["directory"]),
        "TuningDB read-only missing": (lambda: TuningDB(f["missing"], readonly=True), ["does not exist"]),
        "TuningDB missing folder": (lambda: TuningDB(f["nofolder"]), ["does not exist"]),
        "TuningDB bad URL": (lambda: TuningDB("nosuchdialect://x/y"), ["cannot use database"]),
        "merge_from foreign": (lambda: merge_into_copy(f["foreign"]), ["not a tuning database"]),
        "merge_from newer": (lambda: merge_into_copy(f["newer"]), ["schema"]),
        "export to foreign": (lambda: export_to(f["foreign"]), ["not a tuning database"]),
        "export to missing folder": (lambda: export_to(f["nofolder"]), ["does not exist"]),
        "describe_file text": (lambda: describe_file(f["notes"]), ["notes.txt"]),
        "RecordFilter unknown": (lambda: RecordFilter.of({"colour": "red"}), ["colour"]),
        "Problem.random seed": (lambda: Problem.random(64, 64, 64, 0.1, seed=-1), ["seed"]),
        "Problem.random too large": (lambda: Problem.random(10**9, 10**9, 256, 0.1), ["too large"]),
        "Problem.random pattern": (lambda: Problem.random(64, 64, 64, 0.1, pattern="blocks"), ["blocks"]),
        "Problem.from_matrix complex": (lambda: Problem.from_matrix(np.ones((4, 4), dtype=np.complex64), 8),
                                        ["complex"]),
        "Problem.from_matrix all zeros": (lambda: Problem.from_matrix(sp.csr_matrix((4, 4)), 8), ["all zeros"]),
        "Problem.from_matrix fp16 range": (lambda: Problem.from_matrix(np.eye(4) * 1e6, 8, "fp16"), ["fp16"]),
        "load_matrix garbage": (lambda: load_matrix(f["garbage"]), ["garbage.npz"]),
        "check_size GPU memory": (lambda: check_size(50000, 50000, 4096, 10**9, "fp32", gpu_memory=16 * 2**30,
                                                     gpu_name="NVIDIA H100 80GB HBM3"), ["H100", "GiB"]),
        "storage not a URL": (lambda: guard.storage_for_write("storage.sqlite"), ["not an SQLAlchemy URL"]),
    }


API_NAMES = list(_api_cases({k: Path("/x") for k in ("out", "foreign", "foreign_url", "newer", "optuna_other",
                                                       "notes", "folder", "missing", "nofolder", "ours", "garbage")}))


@pytest.mark.parametrize("case", API_NAMES)
def test_bad_input_api(env, case):
    fn, needles = _api_cases(env)[case]

    def run():
        try:
            fn()
        except UserError as exc:
            return 2, "", f"{PREFIX} {exc}\n"
        return 0, "no UserError", ""
    check_refused(run, needles, env)


def test_the_table_is_large_and_covers_every_command():
    cmds = {argv[0] if argv else "" for argv, _ in [*CLI.values(), *NEEDS_GPU.values()]}
    assert {"tune", "tune-model", "lookup", "bench", "report", "spaces", "db", "worker", "status"} <= cmds
    subs = {argv[1] for argv, _ in CLI.values() if argv[:1] == ["db"] and len(argv) > 1}
    assert {"list", "show", "export", "merge", "check"} <= subs
    assert len(CLI) + len(NEEDS_GPU) + len(API_NAMES) >= 60


# ---- the real exit path: a few cases as processes ----------------------------------------------------------------

PROCESS_CASES = ["tune seed negative", "tune 1e9 x 1e9", "db list foreign URL", "status storage foreign",
                 "tune-model all-zero layer (dry run)"]


def test_bad_input_as_processes(files, tmp_path):
    import concurrent.futures
    env = {**os.environ, "SPARSE_AUTOTUNE_DB": str(tmp_path / "env" / "default.sqlite"),
           "SPARSE_AUTOTUNE_NO_SHIPPED_DB": "1"}
    env.pop(TUNER_ENV, None)
    before = snapshot(files["dir"])

    def run(case):
        argv = [fill(a, files) for a in CLI[case][0]]
        return subprocess.run([sys.executable, "-m", "sparse_autotune", *argv], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(len(PROCESS_CASES)) as pool:
        results = dict(zip(PROCESS_CASES, pool.map(run, PROCESS_CASES)))
    for case, proc in results.items():
        assert proc.returncode == 2, (case, proc.returncode, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(PREFIX) and proc.stdout == "", (case, proc.stderr)
        for n in CLI[case][1]:
            assert n.lower() in lines[0].lower(), (case, n, lines[0])
    assert snapshot(files["dir"]) == before
    assert list(tmp_path.iterdir()) == []


# ---- reads create nothing and leave no side files ------------------------------------------------------------


def test_reads_leave_no_side_files_and_change_nothing(files, capsys, tmp_path, monkeypatch):
    """lookup, db list/show/check/export (source) and report on WAL-mode databases: no -wal/-shm appear beside them,
    their bytes do not change, and a missing database named by a URL is not created."""
    d = tmp_path / "reads"
    d.mkdir()
    for name in ("ours", "storage_tuning", "storage"):
        shutil.copyfile(files[name], d / f"{name}.sqlite")
    assert (d / "ours.sqlite").read_bytes()[18] == 2  # WAL mode, as the tuner leaves a database
    (tmp_path / "exp").mkdir()
    monkeypatch.chdir(tmp_path / "exp")
    before = snapshot(d)
    runs = [["lookup", "--shape", "512x2048", "--density", "0.1", "--gpu", GPU, "--db", f"{d}/ours.sqlite"],
            ["lookup", "--shape", "512x2048", "--density", "0.1", "--db", f"sqlite:///{d}/ours.sqlite"],
            ["db", "list", "--db", f"{d}/ours.sqlite"], ["db", "list", "--all", "--db", f"sqlite:///{d}/ours.sqlite"],
            ["db", "show", "1", "--db", f"{d}/ours.sqlite"], ["db", "check", f"{d}/ours.sqlite"],
            ["db", "check", f"{d}/storage.sqlite"], ["db", "list", "--db", f"{d}/storage.sqlite"],
            ["db", "export", str(tmp_path / "exp" / "out.sqlite"), "--db", f"{d}/ours.sqlite"],
            ["db", "merge", f"{d}/ours.sqlite", "--into", str(tmp_path / "exp" / "merged.sqlite")],
            ["report", "--out", str(tmp_path / "exp" / "r"), "--db", f"{d}/storage_tuning.sqlite"],
            ["status", "--storage", f"sqlite:///{d}/storage.sqlite"],
            ["lookup", "--shape", "64x64", "--density", "0.1", "--db", f"sqlite:///{d}/missing.sqlite"]]
    for argv in runs:
        assert main(argv) == 0, (argv, capsys.readouterr())
        capsys.readouterr()
    assert snapshot(d) == before  # the same files, the same bytes: no -wal, no -shm, no missing.sqlite


@pytest.mark.shipped_db
def test_shipped_databases_are_read_immutable(capsys, monkeypatch, tmp_path):
    """The shipped database in db/ is opened with immutable=1: its bytes and the folder's files stay as they are."""
    from sparse_autotune.store import guard
    from sparse_autotune.store.lookup import lookup, shipped_databases
    shipped = [Path(p) for p in shipped_databases()]
    if not shipped:
        pytest.skip("no shipped database")
    folder = shipped[0].parent
    stat = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}
    before = sha(shipped[0])
    assert guard.is_shipped(shipped[0]) and "immutable=1" in guard.read_only_uri(shipped[0])
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(tmp_path / "none.sqlite"))
    assert lookup(512, 2048, 256, 0.1, "fp32", gpu="NVIDIA H100 80GB HBM3") is not None
    assert main(["db", "list", "--db", str(shipped[0])]) == 0
    assert main(["report", "--out", str(tmp_path / "r"), "--db", str(shipped[0])]) == 0
    capsys.readouterr()
    assert sha(shipped[0]) == before
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()} == stat
    assert not (tmp_path / "none.sqlite").exists()


def test_default_db_missing_names_the_shipped_databases(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(tmp_path / "cache" / "tuning.sqlite"))
    import sparse_autotune.store.lookup as lk
    monkeypatch.setattr(lk, "shipped_databases", lambda: ("/site-packages/sparse_autotune/db/h100.sqlite",))
    assert main(["db", "list"]) == 2
    err = capsys.readouterr().err
    assert "no tuning database at" in err and "--db /site-packages/sparse_autotune/db/h100.sqlite" in err
    assert not (tmp_path / "cache").exists()


def test_read_only_uris():
    """Which read-only mode each kind of file gets (module docstring of store/guard.py)."""
    from sparse_autotune.store import guard
    from sparse_autotune.store.db import _set_journal_mode
    d = Path(tempfile_dir())
    try:
        wal = d / "wal.sqlite"
        TuningDB(wal).dispose()
        assert not Path(f"{wal}-wal").exists()
        assert guard.read_only_uri(wal).endswith("?mode=ro&immutable=1")  # WAL, no -wal: the file is all
        Path(f"{wal}-wal").write_bytes(b"")  # a writer has it open
        assert guard.read_only_uri(wal).endswith("?mode=ro")
        rollback = d / "rollback.sqlite"
        TuningDB(rollback).dispose()
        _set_journal_mode(rollback, "DELETE")
        assert guard.read_only_uri(rollback).endswith("?mode=ro")
        assert guard.read_only_uri(wal, force_ro=True).endswith("?mode=ro")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tempfile_dir() -> str:
    import tempfile
    return tempfile.mkdtemp(prefix="sat-uri-")


def test_immutable_read_is_redone_when_a_writer_appears(tmp_path, monkeypatch):
    """A read taken without locks (immutable) is read again through mode=ro when the file changed meanwhile."""
    from sparse_autotune.store import guard
    p = tmp_path / "t.sqlite"
    TuningDB(p).dispose()
    seen = []
    stamps = iter([("a",), ("b",), ("b",), ("b",)])
    monkeypatch.setattr(guard, "file_stamp", lambda path: next(stamps))
    real = guard.read_only_connect

    def spy(path, force_ro=False, header=None):
        seen.append(force_ro)
        return real(path, force_ro, header)
    monkeypatch.setattr(guard, "read_only_connect", spy)
    assert guard.read_sqlite(p, lambda con: con.execute("SELECT count(*) FROM sat_records").fetchone()[0]) == 0
    assert seen == [False, True]


_RO_PROBE = textwrap.dedent("""
    import os, sys
    from sparse_autotune.commands.main import main
    from sparse_autotune.store.lookup import lookup
    folder, out, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = os.path.join(folder, "tuning.sqlite")
    # import everything while it still can (Python's own files may be out of nobody's reach, as under /root)
    main(["spaces"]); lookup(64, 64, 64, 0.1, "fp32", gpu="x"); main(["report", "--db", db, "--out", out + "-root"])
    if uid >= 0:
        os.setgid(uid); os.setuid(uid)
    codes = [main(["db", "list", "--db", db]), main(["db", "check", db]),
             main(["lookup", "--shape", "512x2048", "--density", "0.1", "--db", db]),
             main(["report", "--db", db, "--out", out])]
    print("CODES", codes)
""")


def test_reads_work_in_a_read_only_folder(files):
    """As root the probe drops to uid 65534 (nobody) after importing, since root ignores file modes; the database
    (WAL mode, as the tuner leaves it) lies in a folder nobody may write."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="sat-ro-"))
    try:
        shared = base / "shared"
        shared.mkdir()
        shutil.copyfile(files["storage_tuning"], shared / "tuning.sqlite")
        out = base / "out"
        out.mkdir()
        os.chmod(base, 0o755)
        os.chmod(out, 0o777)
        os.chmod(shared / "tuning.sqlite", 0o444)
        os.chmod(shared, 0o555)
        before = snapshot(shared)
        uid = 65534 if os.geteuid() == 0 else -1
        try:
            proc = subprocess.run([sys.executable, "-c", _RO_PROBE, str(shared), str(out / "r"), str(uid)],
                                  capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "SPARSE_AUTOTUNE_NO_SHIPPED_DB": "1", "MPLCONFIGDIR": str(out)})
        finally:
            os.chmod(shared, 0o755)
        after = snapshot(shared)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if "PermissionError" in proc.stderr and "CODES" not in proc.stdout:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "CODES [0, 0, 0, 0]" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    assert after == before


def test_db_check_lists_what_is_wrong(files, tmp_path, capsys):
    """db check: clean (exit 0) for a database as the store keeps it; two bests for one key, or a best that is not
    verified, are listed with exit status 1 (the file is read, not written)."""
    p = tmp_path / "t.sqlite"
    shutil.copyfile(files["ours"], p)
    assert main(["db", "check", str(p)]) == 0
    assert "clean" in capsys.readouterr().out
    db = TuningDB(p)
    db.store(make_record(12.0, {"rows_per_block": 4, "vec": 4}))
    db.store(make_record(5.0, {"rows_per_block": 2, "vec": 2}, max_rel_err=1.0))
    db.dispose()
    con = sqlite3.connect(p)
    con.execute("UPDATE sat_records SET is_best = 1")
    con.commit()
    con.close()
    before = sha(p)
    assert main(["db", "check", str(p)]) == 1
    out = capsys.readouterr().out
    assert "3 records are the best of one key" in out and "but not verified" in out and "is faster" in out
    assert sha(p) == before


def test_fixture_storage_holds_a_finished_problem(files):
    """The fixture's storage holds one finished problem (a sanity check of the fixture the cases use)."""
    con = sqlite3.connect(f"file:{files['storage']}?mode=ro", uri=True)
    try:
        [(state, result)] = con.execute("SELECT state, result FROM sa_queue").fetchall()
    finally:
        con.close()
    assert state == "done" and json.loads(result)["best"]["time_us"] > 0
