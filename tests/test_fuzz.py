"""Fuzz the command line with a seeded generator: shapes, densities, N, seeds, counts, durations and option strings,
odd and ordinary, for every command that reads options. Whatever comes in, a command ends with exit status 0 or 2,
never a traceback (any exception out of main() fails the test) and never a Python warning; an exit status 2 prints
exactly one line. Runs in-process; the commands that would tune stop at the GPU check (this machine has none) or at
the size checks, before anything is allocated, so no case allocates or waits."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from records import make_record

from sparse_autotune.commands.main import main
from sparse_autotune.device.gpu import gpu_available
from sparse_autotune.store.db import TuningDB
from sparse_autotune.tuning.tuner import TUNER_ENV

SEED = 20261130
CASES = 400

INTS = ["0", "1", "-1", "7", "64", "255", "4096", str(2**31 - 1), str(2**31), str(2**32), str(2**63), str(10**20),
        "1.5", "1e3", "0x10", "", " ", "abc", "²", "٣", "+5", "--", "-0", "1_000"]
FLOATS = ["0", "1", "0.5", "0.1", "0.02", "1e-9", "1e-300", "nan", "inf", "-inf", "-0.1", "1.5", "1e308", "0x1p-3",
          " 0.1 ", "", "abc", "0,1", "١", "½", "1/3", "1e-2"]
DIMS = ["1", "2", "8", "64", "512", "2048", "65536", "100000", "1000000000", "2147483647", "2147483648", "0", "-4",
        "x", "١٢"]
WORDS = ["fp32", "fp16", "fp64", "FP32", "", "uniform", "powerlaw", "diagonal", "tpe", "random", "grid", "cmaes",
         "bayes", "csr_rowsplit", "csr_btile,tc_gather", ",", "csr_rowsplit,,", "😀", "a" * 300, "--help-me"]
LAYOUTS = ["kn", "nk", "NK", "mk", "", "nk,kn", "😀"]


def shape(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(["512by2048", "3x4x5", "x", "12", "4 X 8", "4×8", "  16x32  ", "0x0", "-1x5", "1e3x4"])
    return f"{rng.choice(DIMS)}x{rng.choice(DIMS)}"


def pick(rng: random.Random, pool: list[str]) -> str:
    return rng.choice(pool) if rng.random() < 0.9 else "".join(rng.choice("0123456789.-+exX,abc ") for _ in
                                                                 range(rng.randint(0, 6)))


def argv_for(rng: random.Random, f: dict) -> list[str]:
    cmd = rng.choice(["tune", "tune", "tune", "lookup", "lookup", "tune-model", "db-list", "db-show", "spaces",
                      "bench", "report", "worker", "status"])
    opt = []

    def maybe(name, value, p=0.5):
        if rng.random() < p:
            opt.extend([name, value])
    if cmd == "tune":
        if rng.random() < 0.1:
            maybe("--matrix", str(rng.choice([f["good"], f["zeros"], f["complex"], f["missing"]])), 1.0)
        else:
            maybe("--shape", shape(rng), 0.9)
            maybe("--density", pick(rng, FLOATS), 0.9)
        for name, pool in (("--n", INTS), ("--seed", INTS), ("--trials", INTS), ("--timeout", FLOATS),
                           ("--dtype", WORDS), ("--pattern", WORDS), ("--sampler", WORDS), ("--families", WORDS),
                           ("--workers", INTS), ("--heartbeat", INTS), ("--grace", INTS), ("--layout", LAYOUTS)):
            maybe(name, pick(rng, pool), 0.25)
        maybe("--db", rng.choice([str(f["ours"]), str(f["foreign"]), f"sqlite:///{f['foreign']}", "nosuch://x",
                                  str(f["empty"])]), 0.3)
        maybe("--storage", rng.choice([f"sqlite:///{f['storage']}", str(f["storage"]), "sqlite://", "postgresql+x://"]),
              0.1)
        return ["tune", *opt, "--no-progress"]
    if cmd == "lookup":
        maybe("--shape", shape(rng), 0.95)
        maybe("--density", pick(rng, FLOATS), 0.95)
        for name, pool in (("--n", INTS), ("--dtype", WORDS), ("--layout", LAYOUTS)):
            maybe(name, pick(rng, pool), 0.4)
        maybe("--db", rng.choice([str(f["ours"]), str(f["missing"]), str(f["empty"]), f"sqlite:///{f['ours']}"]), 0.6)
        if rng.random() < 0.3:
            opt.append("--exact")
        return ["lookup", *opt]
    if cmd == "tune-model":
        maybe("--n", ",".join(pick(rng, INTS) for _ in range(rng.randint(1, 3))), 0.8)
        maybe("--batch", pick(rng, INTS), 0.2)
        maybe("--seq", pick(rng, INTS), 0.2)
        maybe("--dtype", rng.choice(["fp32", "fp16", "fp32,fp16", "fp8", ","]), 0.3)
        maybe("--families", pick(rng, WORDS), 0.2)
        maybe("--seed", pick(rng, INTS), 0.2)
        maybe("--trials", pick(rng, INTS), 0.2)
        maybe("--layout", pick(rng, LAYOUTS), 0.2)
        if rng.random() < 0.6:
            opt += ["--prune", "magnitude", "--density", pick(rng, FLOATS)]
        maybe("--exclude", rng.choice(["*zero*", "enc.*", "*"]), 0.4)
        return ["tune-model", str(f["model"]), "--dry-run", *opt]
    if cmd == "db-list":
        maybe("--shape", shape(rng), 0.4)
        maybe("--dtype", pick(rng, WORDS), 0.3)
        maybe("--gpu", pick(rng, WORDS), 0.3)
        if rng.random() < 0.3:
            opt.append("--all")
        return ["db", "list", "--db", rng.choice([str(f["ours"]), str(f["empty"]), str(f["foreign"])]), *opt]
    if cmd == "db-show":
        return ["db", "show", pick(rng, INTS), "--db", str(f["ours"])]
    if cmd == "spaces":
        return ["spaces", "--dtype", pick(rng, WORDS)]
    if cmd == "bench":
        return ["bench", "--suite", rng.choice(["quick", "dl", "huge", ""]), "--trials", pick(rng, INTS),
                "--db", str(f["ours"])]
    if cmd == "report":
        return ["report", "--out", str(f["out"] / "r"), "--db", rng.choice([str(f["ours"]), str(f["empty"])]),
                "--gpu", pick(rng, WORDS)]
    if cmd == "worker":
        return ["worker", "--storage", rng.choice([f"sqlite:///{f['storage']}", "x"]), "--problems",
                ",".join(pick(rng, INTS) for _ in range(2)), "--budget", pick(rng, FLOATS)]
    return ["status", "--storage", rng.choice([f"sqlite:///{f['storage']}", f"sqlite:///{f['missing']}", "x"])]


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    ours = d / "ours.sqlite"
    db = TuningDB(ours)
    db.store(make_record(9.5))
    db.dispose()
    foreign = d / "foreign.sqlite"
    import sqlite3
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    (d / "empty.sqlite").write_bytes(b"")
    rng = np.random.default_rng(0)
    sp.save_npz(d / "good.npz", sp.random_array((32, 48), density=0.2, rng=rng, format="csr"))
    sp.save_npz(d / "zeros.npz", sp.csr_matrix((8, 8), dtype=np.float32))
    sp.save_npz(d / "complex.npz", sp.csr_matrix(np.eye(8, dtype=np.complex64) * 1j))
    np.savez(d / "model.npz", **{"enc.fc.weight": rng.standard_normal((32, 48)).astype(np.float32),
                                 "enc.zero.weight": np.zeros((16, 32), dtype=np.float32)})
    out = tmp_path_factory.mktemp("fuzz-out")
    return {"ours": ours, "foreign": foreign, "empty": d / "empty.sqlite", "missing": d / "missing.sqlite",
            "storage": d / "no-storage.sqlite", "good": d / "good.npz", "zeros": d / "zeros.npz",
            "complex": d / "complex.npz", "model": d / "model.npz", "out": out, "dir": d}


def test_fuzz_command_line_never_a_traceback(fuzz_files, capsys, monkeypatch):
    if gpu_available():
        pytest.skip("a CUDA GPU is present: valid cases would really tune")
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(fuzz_files["out"] / "env" / "default.sqlite"))
    monkeypatch.delenv(TUNER_ENV, raising=False)
    monkeypatch.chdir(fuzz_files["out"])
    rng = random.Random(SEED)
    files_before = sorted(p.name for p in Path(fuzz_files["dir"]).iterdir())
    ours_before = fuzz_files["ours"].read_bytes()
    codes = {0: 0, 2: 0}
    for i in range(CASES):
        argv = argv_for(rng, fuzz_files)
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=ResourceWarning)
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's --help / --version: exit 0
                rc = exc.code or 0
            except BaseException as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"case {i} {argv!r}: {type(exc).__name__}: {exc}")
        out, err = capsys.readouterr()
        assert rc in (0, 2), (i, argv, rc, err)
        assert "Traceback" not in err, (i, argv, err)
        assert not [str(w.message) for w in caught], (i, argv, [str(w.message) for w in caught])
        if rc == 2:
            lines = err.splitlines()
            assert len(lines) == 1 and lines[0].startswith("sparse-autotune: error:"), (i, argv, err)
        codes[rc] += 1
    assert codes[0] > 10 and codes[2] > 100, codes  # the generator reaches both outcomes
    assert sorted(p.name for p in Path(fuzz_files["dir"]).iterdir()) == files_before  # reads created nothing
    assert fuzz_files["ours"].read_bytes() == ours_before  # no tune got far enough to write
    assert not (fuzz_files["out"] / "env").exists()
