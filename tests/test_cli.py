"""The command line, run as a subprocess (python -m sparse_autotune): bad input gives one line and exit status 2."""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from records import CONFIG
from sparse_autotune.core import space
from sparse_autotune.store.db import SCHEMA_VERSION, Record, TuningDB

PREFIX = "sparse-autotune: error:"
GPU = "NVIDIA H100 80GB HBM3"


def run_cli(args, env_db: Path, cwd: Path | None = None, timeout=120) -> subprocess.CompletedProcess:
    """Run the CLI with $SPARSE_AUTOTUNE_DB pointing at `env_db`, in `cwd` (default: env_db's folder, so that
    relative outputs such as bench's bench/results would land in a temporary folder, never in the checkout)."""
    env = {**os.environ, "SPARSE_AUTOTUNE_DB": str(env_db)}
    cwd = cwd or next(p for p in Path(env_db).parents if p.is_dir())
    return subprocess.run([sys.executable, "-m", "sparse_autotune", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.endswith("\n")
    assert lines[0].startswith(PREFIX), lines[0]
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    assert proc.stdout == ""


# ---- fixture files --------------------------------------------------------------------------------------


def _record(**over):
    fields = dict(gpu_name=GPU, gpu_cc="9.0", m=512, k=2048, n=256, density=0.1, dtype="fp32", pattern="uniform",
                  family="csr_rowsplit", config_json=json.dumps(CONFIG), time_us=9.5,
                  gflops=900.0, max_rel_err=1e-6, trials=40, matrix_hash="feedface00000000", study_name="s",
                  package_version="0.1.0", cuda_version="13.0", driver_version="580", cupy_version="14.0",
                  created_at=dt.datetime(2025, 2, 3, 4, 5, 6))
    fields.update(over)
    return Record(**fields)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    foreign = d / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE foo (x INTEGER)")
    con.execute("INSERT INTO foo VALUES (1)")
    con.commit()
    con.close()
    text = d / "notes.txt"
    text.write_text("my notes, not a database\n")
    newer = d / "newer.sqlite"
    db = TuningDB(newer)
    db.dispose()
    con = sqlite3.connect(newer)
    con.execute("UPDATE sat_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 5),))
    con.commit()
    con.close()
    ours = d / "ours.sqlite"
    db = TuningDB(ours)
    db.store(_record())
    db.dispose()
    garbage = d / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 definitely not a real zip")
    import scipy.sparse as sp
    good = d / "good.npz"
    sp.save_npz(good, sp.random_array((32, 48), density=0.2, rng=np.random.default_rng(0), format="csr"))
    return {"dir": d, "foreign": foreign, "text": text, "newer": newer, "ours": ours, "garbage": garbage,
            "good": good, "missing": d / "no_such_matrix.npz"}


# ---- bad input: each case runs once (in parallel), the tests check the results ---------------------------

VALID = ["--shape", "64x128", "--density", "0.1"]

# name -> (arguments with {placeholders}, words the error line must contain)
BAD = {
    "malformed shape": (["tune", "--shape", "512by2048", "--density", "0.1"], ["512by2048"]),
    "shape with zero": (["tune", "--shape", "0x2048", "--density", "0.1"], ["0x2048"]),
    "density 0": (["tune", "--shape", "64x128", "--density", "0"], ["density"]),
    "density 1.5": (["tune", "--shape", "64x128", "--density", "1.5"], ["density", "1.5"]),
    "density nan": (["tune", "--shape", "64x128", "--density", "nan"], ["density"]),
    "density text": (["tune", "--shape", "64x128", "--density", "lots"], ["density", "lots"]),
    "unknown dtype": (["tune", *VALID, "--dtype", "fp64"], ["dtype", "fp64"]),
    "unknown sampler": (["tune", *VALID, "--sampler", "bayes"], ["sampler", "bayes"]),
    "unknown pattern": (["tune", *VALID, "--pattern", "diagonal"], ["pattern", "diagonal"]),
    "trials 0": (["tune", *VALID, "--trials", "0"], ["--trials"]),
    "trials negative": (["tune", *VALID, "--trials", "-5"], ["--trials"]),
    "trials not int": (["tune", *VALID, "--trials", "many"], ["many"]),
    "timeout 0": (["tune", *VALID, "--timeout", "0"], ["--timeout"]),
    "n 0": (["tune", *VALID, "--n", "0"], ["N"]),
    "n not int": (["tune", *VALID, "--n", "wide"], ["wide"]),
    "no shape": (["tune", "--density", "0.1"], ["--shape"]),
    "missing matrix": (["tune", "--matrix", "{missing}"], ["no_such_matrix.npz"]),
    "garbage matrix": (["tune", "--matrix", "{garbage}"], ["garbage.npz"]),
    "matrix and shape": (["tune", "--matrix", "{good}", "--shape", "64x128"], ["--matrix"]),
    "matrix and density": (["tune", "--matrix", "{good}", "--density", "0.1"], ["--matrix"]),
    "foreign sqlite db": (["tune", *VALID, "--db", "{foreign}"], ["foreign.sqlite", "not a tuning database"]),
    "text file db": (["tune", *VALID, "--db", "{text}"], ["notes.txt", "not a tuning database"]),
    "newer schema db": (["tune", *VALID, "--db", "{newer}"], ["newer.sqlite", "schema"]),
    "directory db": (["tune", *VALID, "--db", "{dir}"], ["directory"]),
    "unknown option": (["tune", *VALID, "--fast"], ["--fast"]),
    "unknown command": (["optimize"], ["optimize"]),
    "no command": ([], []),
    "lookup bad shape": (["lookup", "--shape", "big", "--density", "0.1", "--db", "{ours}"], ["big"]),
    "lookup density 0": (["lookup", "--shape", "512x2048", "--density", "0", "--db", "{ours}"], ["density"]),
    "lookup bad dtype": (["lookup", "--shape", "512x2048", "--density", "0.1", "--dtype", "int8", "--db", "{ours}"],
                         ["int8"]),
    "lookup foreign db": (["lookup", "--shape", "512x2048", "--density", "0.1", "--db", "{foreign}"],
                          ["foreign.sqlite"]),
    "lookup text db": (["lookup", "--shape", "512x2048", "--density", "0.1", "--db", "{text}"], ["notes.txt"]),
    "spaces bad dtype": (["spaces", "--dtype", "fp8"], ["fp8"]),
    "bench unknown suite": (["bench", "--suite", "huge"], ["huge"]),
    "bench trials 0": (["bench", "--trials", "0"], ["--trials"]),
}
# cases that name no --db of their own get one that does not exist (it must not be created)
NEW_DB = "{dir}/new/should_not_exist.sqlite"


def _names(folder: Path) -> list[str]:
    """The files in a folder, SQLite's -wal/-shm side files included (a read leaves none, store/guard.py)."""
    return sorted(p.name for p in folder.iterdir())


def _fill(arg: str, files) -> str:
    return arg.format(**{k: str(v) for k, v in files.items()})


@pytest.fixture(scope="module")
def bad_results(files):
    snapshots = {k: files[k].read_bytes() for k in ("foreign", "text", "newer", "ours", "garbage", "good")}
    env_db = files["dir"] / "env" / "env_default.sqlite"
    jobs = {}
    for name, (args, _) in BAD.items():
        argv = [_fill(a, files) for a in args]
        if argv and argv[0] == "tune" and "--db" not in argv:
            argv += ["--db", _fill(NEW_DB, files)]
        jobs[name] = argv
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = {name: pool.submit(run_cli, argv, env_db, files["dir"]) for name, argv in jobs.items()}
        results = {name: f.result() for name, f in futs.items()}
    return results, snapshots, env_db


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(bad_results, case):
    results, _, _ = bad_results
    assert_one_line_error(results[case], *BAD[case][1])


def test_bad_input_writes_nothing(bad_results, files):
    _, snapshots, env_db = bad_results
    for k, before in snapshots.items():
        assert files[k].read_bytes() == before, f"{k} was modified"
    assert not Path(_fill(NEW_DB, files)).exists()
    assert not Path(_fill(NEW_DB, files)).parent.exists()
    assert not env_db.exists() and not env_db.parent.exists()
    assert _names(files["dir"]) == sorted(["foreign.sqlite", "notes.txt", "newer.sqlite", "ours.sqlite", "garbage.npz", "good.npz"])


# ---- no GPU here ----------------------------------------------------------------------------------------


def _has_gpu() -> bool:
    from sparse_autotune.device.gpu import gpu_available
    return gpu_available()


def test_valid_tune_on_cpu_only_machine_fails_cleanly(tmp_path, files):
    if _has_gpu():
        pytest.skip("a CUDA GPU is present: this would really tune")
    env_db = tmp_path / "cache" / "tuning.sqlite"
    proc = run_cli(["tune", "--shape", "64x128", "--density", "0.1", "--trials", "3", "--no-progress"], env_db)
    assert_one_line_error(proc)
    assert "gpu" in proc.stderr.lower() or "cuda" in proc.stderr.lower()
    assert not env_db.exists() and not env_db.parent.exists()


def test_valid_tune_on_cpu_only_machine_leaves_existing_db_alone(tmp_path, files):
    if _has_gpu():
        pytest.skip("a CUDA GPU is present: this would really tune")
    db = tmp_path / "mine.sqlite"
    db.write_bytes(files["ours"].read_bytes())
    before = db.read_bytes()
    proc = run_cli(["tune", "--matrix", str(files["good"]), "--trials", "3", "--db", str(db)], tmp_path / "env.sqlite")
    assert_one_line_error(proc)
    assert "gpu" in proc.stderr.lower() or "cuda" in proc.stderr.lower()
    assert db.read_bytes() == before
    assert _names(tmp_path) == ["mine.sqlite"]


def test_valid_bench_on_cpu_only_machine_fails_cleanly(tmp_path):
    if _has_gpu():
        pytest.skip("a CUDA GPU is present: this would really run the suite")
    proc = run_cli(["bench", "--suite", "quick", "--trials", "2"], tmp_path / "env" / "tuning.sqlite", cwd=tmp_path)
    assert_one_line_error(proc)
    assert "gpu" in proc.stderr.lower() or "cuda" in proc.stderr.lower()
    assert list(tmp_path.iterdir()) == []  # neither bench/results nor the database


def test_bench_refuses_foreign_db_up_front(files, tmp_path):
    proc = run_cli(["bench", "--suite", "quick", "--db", str(files["foreign"])], tmp_path / "env.sqlite",
                   cwd=tmp_path)
    assert_one_line_error(proc, "foreign.sqlite")


# ---- spaces, lookup, version ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_spaces_lists_csr_rowsplit(tmp_path, dtype):
    proc = run_cli(["spaces", "--dtype", dtype], tmp_path / "env.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    sp = space.get_space("csr_rowsplit")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("csr_rowsplit"))
    assert f"{sp.size(dtype)} configs ({dtype})" in line
    for p in sp.params:
        assert p.name in proc.stdout
    assert not (tmp_path / "env.sqlite").exists()


def test_lookup_hit_prints_the_family(files, tmp_path):
    before = files["ours"].read_bytes()
    proc = run_cli(["lookup", "--shape", "512x2048", "--density", "0.1", "--n", "256", "--gpu", GPU,
                    "--db", str(files["ours"])], tmp_path / "env.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "csr_rowsplit" in proc.stdout
    assert '"rows_per_block": 8' in proc.stdout and "9.50 us" in proc.stdout and GPU in proc.stdout
    assert "no stored config" not in proc.stdout
    assert files["ours"].read_bytes() == before


def test_lookup_json(files, tmp_path):
    proc = run_cli(["lookup", "--shape", "512x2048", "--density", "0.1", "--gpu", GPU, "--db", str(files["ours"]),
                    "--json"], tmp_path / "env.sqlite")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["family"] == "csr_rowsplit" and out["config"] == CONFIG
    assert out["gpu"] == GPU and out["time_us"] == 9.5


@pytest.mark.parametrize("extra", [["--n", "128"], ["--gpu", "NVIDIA A100-SXM4-80GB"], ["--dtype", "fp16"]])
def test_lookup_miss(files, tmp_path, extra):
    args = ["lookup", "--exact", "--shape", "512x2048", "--density", "0.1", "--db", str(files["ours"])]
    if "--gpu" not in extra:
        args += ["--gpu", GPU]
    proc = run_cli(args + extra, tmp_path / "env.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "no stored config" in proc.stdout
    assert "csr_rowsplit" not in proc.stdout


def test_lookup_missing_db_is_a_miss_and_creates_nothing(tmp_path):
    db = tmp_path / "nothing" / "here.sqlite"
    proc = run_cli(["lookup", "--exact", "--shape", "512x2048", "--density", "0.1", "--gpu", GPU, "--db", str(db)],
                   tmp_path / "env.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "no stored config" in proc.stdout
    note = proc.stderr.strip().splitlines()
    assert len(note) == 1 and "note:" in note[0] and str(db) in note[0] and "does not exist" in note[0]
    assert not db.exists() and not db.parent.exists()
    # without --exact a miss falls back through the chain to the built-in default, and says so
    proc = run_cli(["lookup", "--shape", "512x2048", "--density", "0.1", "--gpu", GPU, "--db", str(db)],
                   tmp_path / "env.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("default:") and "built-in default" in proc.stdout
    assert "does not exist" in proc.stderr
    assert not db.exists() and not db.parent.exists()
    empty = tmp_path / "empty.sqlite"
    empty.touch()  # an existing database (an empty file is one): no note
    proc = run_cli(["lookup", "--shape", "512x2048", "--density", "0.1", "--gpu", GPU, "--db", str(empty)],
                   tmp_path / "env.sqlite")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_lookup_nearest_says_how_and_how_far(files, tmp_path):
    proc = run_cli(["lookup", "--shape", "512x2048", "--density", "0.1", "--n", "512", "--gpu", GPU,
                    "--db", str(files["ours"])], tmp_path / "env.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("nearest, distance 1.00:") and "N=256" in proc.stdout


def test_lookup_uses_env_db(files, tmp_path):
    proc = run_cli(["lookup", "--shape", "512x2048", "--density", "0.1", "--gpu", GPU], files["ours"])
    assert proc.returncode == 0, proc.stderr
    assert "csr_rowsplit" in proc.stdout


def test_version_and_help(tmp_path):
    proc = run_cli(["--version"], tmp_path / "env.sqlite")
    assert proc.returncode == 0
    from sparse_autotune import __version__
    assert __version__ in proc.stdout
    proc = run_cli(["tune", "--help"], tmp_path / "env.sqlite")
    assert proc.returncode == 0 and "--shape" in proc.stdout and "--db" in proc.stdout


HEAVY_LIBS = ("sqlalchemy", "scipy", "optuna", "cupy", "torch", "jinja2")


@pytest.mark.parametrize("argv", [["--help"], ["tune", "--help"], ["tune", "--shape", "512by2048", "--density", "0.1"],
                                  ["tune", "--shape", "512x2048", "--density", "1.5"], ["db", "--help"]])
def test_help_and_bad_arguments_import_no_heavy_library(tmp_path, argv):
    """--help and a bad argument answer before SQLAlchemy, SciPy, Optuna, CuPy, PyTorch or Jinja2 are imported (the
    package and the parser import them where a command needs them): a fraction of a second, not ~1.5 s."""
    code = ("import sys\nfrom sparse_autotune.commands.main import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            f"print('RC', rc, 'LOADED', sorted(m for m in {HEAVY_LIBS!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "SPARSE_AUTOTUNE_DB": str(tmp_path / "env.sqlite")}, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RC 0 " if "--help" in argv else "RC 2 "), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert last.endswith("LOADED []"), last
    assert not (tmp_path / "env.sqlite").exists()


def test_package_import_is_light_and_still_names_its_api():
    """`import sparse_autotune` loads none of the heavy libraries; lookup, SpMM and SDDMM come when first named (also
    through `from sparse_autotune import ...` and `*`), and dir() lists them."""
    code = ("import sys\nimport sparse_autotune as sa\n"
            f"print(sorted(m for m in {HEAVY_LIBS!r} if m in sys.modules))\n"
            "print(all(n in dir(sa) for n in ('lookup', 'SpMM', 'SDDMM', 'sddmm', 'UserError')))\n"
            "from sparse_autotune import SpMM, lookup\nns = {}\nexec('from sparse_autotune import *', ns)\n"
            "print(callable(lookup), SpMM.__name__, sorted(n for n in ns if not n.startswith('_')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "True",
                                        "True SpMM ['SDDMM', 'SpMM', 'UserError', 'lookup', 'sddmm']"], proc.stdout



def test_family_without_the_dtype_is_refused_synthetic(tmp_path, monkeypatch):
    """tc_gather computes fp16 only: tuning fp32 with it alone is a one-line UserError before any database is
    created; with all enabled families, fp32 tuning leaves it out (synthetic objective, so no GPU is needed)."""
    from sparse_autotune.errors import UserError
    from sparse_autotune.core.problem import Problem
    from synthetic import TUNER
    from sparse_autotune.tuning.tuner import TUNER_ENV, TuneOptions, make_tuner
    monkeypatch.setenv(TUNER_ENV, TUNER)
    tc = space.get_space("tc_gather")
    assert tc.supports("fp16") and not tc.supports("fp32") and list(tc.enumerate("fp32")) == []
    why = tc.check(tc.defaults("fp16", space.problem_env(64, 128, 32, 819, "fp16"))[0],
                   space.problem_env(64, 128, 32, 819, "fp32"))
    assert why is not None and "fp16" in why
    db = tmp_path / "t.sqlite"
    problem = Problem.random(64, 128, 32, 0.1, "fp32")
    with pytest.raises(UserError, match="no kernel family of tc_gather computes fp32"):
        make_tuner(problem, TuneOptions(trials=2, db=str(db), progress=False, families=("tc_gather",)), lambda m: None)
    assert not db.exists()
    tuner = make_tuner(problem, TuneOptions(trials=2, db=str(db), progress=False), lambda m: None)
    assert "tc_gather" not in {s.family for s in tuner.spaces} and "csr_rowsplit" in {s.family for s in tuner.spaces}
    fp16 = make_tuner(Problem.random(64, 128, 32, 0.1, "fp16"), TuneOptions(trials=2, db=str(db), progress=False),
                      lambda m: None)
    assert "tc_gather" in {s.family for s in fp16.spaces}


# ---- the no-GPU message ---------------------------------------------------------------------------------


class _FakeRuntimeError(Exception):
    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


def _fake_cupy(driver: int, runtime: int, error):
    import types
    def count():
        if error is not None:
            raise error
        return 0
    rt = types.SimpleNamespace(getDeviceCount=count, driverGetVersion=lambda: driver,
                               runtimeGetVersion=lambda: runtime)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=rt), __version__="14.0")


@pytest.mark.parametrize("driver,present,error,words,absent", [
    # no NVIDIA driver at all: CUDA reports "insufficient", the user must read "no driver" instead
    (0, False, _FakeRuntimeError(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
                                     "runtime version"), ["no NVIDIA GPU driver", "GPU"], ["insufficient"]),
    # a driver older than the CUDA of the installed CuPy
    (12020, True, _FakeRuntimeError(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient"),
     ["CUDA up to 12.2", "13.0", "cuda12"], []),
    # a driver, but no device visible
    (13000, True, _FakeRuntimeError(100, "cudaErrorNoDevice: no CUDA-capable device is detected"),
     ["no CUDA GPU found", "CUDA_VISIBLE_DEVICES"], []),
    (13000, True, None, ["no CUDA GPU found", "CUDA_VISIBLE_DEVICES"], []),
])
def test_no_gpu_message_says_what_is_missing(monkeypatch, driver, present, error, words, absent):
    from sparse_autotune.device import gpu
    from sparse_autotune.errors import UserError
    monkeypatch.setattr(gpu, "cupy", lambda: _fake_cupy(driver, 13000, error))
    monkeypatch.setattr(gpu, "_driver_present", lambda: present)
    gpu.gpu_info.cache_clear()
    with pytest.raises(UserError) as info:
        gpu.gpu_info()
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    for w in absent:
        assert w not in msg, (w, msg)


def test_no_gpu_on_this_machine_is_not_called_an_old_driver():
    """This machine has no GPU and no driver: the message a user sees here."""
    from sparse_autotune.device import gpu
    if gpu.gpu_available() or gpu._driver_present():
        pytest.skip("an NVIDIA driver is installed here")
    from sparse_autotune.errors import UserError
    with pytest.raises(UserError) as info:
        gpu.gpu_info()
    assert "no NVIDIA GPU driver" in str(info.value) and "insufficient" not in str(info.value)
