"""The tuning database (SQLite through SQLAlchemy) and the runtime lookup."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from pgdb import fresh_pg_database
from records import CONFIG, make_record

from sparse_autotune.errors import UserError
from sparse_autotune.store.lookup import lookup
from sparse_autotune.store.db import (APPLICATION, DB_ENV, SCHEMA_VERSION, TuningDB, check_file,
                                      default_db_path)

GPU = "NVIDIA H100 80GB HBM3"
KEY = dict(m=512, k=2048, n=256, density=0.1, dtype="fp32")


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "tuning.sqlite"


@pytest.fixture
def filled_db(db_path):
    db = TuningDB(db_path)
    db.store(make_record(10.0, CONFIG))
    db.dispose()
    return db_path


# ---- store / best ---------------------------------------------------------------------------------------


def test_round_trip(db_path):
    db = TuningDB(db_path)
    cfg = {"rows_per_block": 16, "lanes_per_row": 4, "stage": "none"}
    stored = db.store(make_record(12.5, cfg))
    assert stored.is_best and stored.id is not None
    db.dispose()

    db2 = TuningDB(db_path, create=False)
    best = db2.best(**KEY)
    assert best is not None
    assert best.id == stored.id
    assert best.config == cfg
    assert best.time_us == 12.5 and best.gpu_name == GPU and best.is_best
    d = best.to_dict()
    assert d["config"] == cfg and "config_json" not in d and d["created_at"] == "2025-01-01T12:00:00"
    assert db2.best(**KEY, gpu=GPU, pattern="uniform").id == stored.id
    db2.dispose()


def test_faster_record_becomes_best(db_path):
    db = TuningDB(db_path)
    first = db.store(make_record(10.0, {"v": 1}))
    second = db.store(make_record(5.0, {"v": 2}))
    assert second.is_best
    recs = {r.id: r for r in db.records()}
    assert recs[first.id].is_best is False
    assert recs[second.id].is_best is True
    assert db.best(**KEY).config == {"v": 2}
    assert sum(r.is_best for r in recs.values()) == 1
    db.dispose()


def test_slower_record_is_history(db_path):
    db = TuningDB(db_path)
    first = db.store(make_record(5.0, {"v": 1}))
    slower = db.store(make_record(7.0, {"v": 2}))
    assert slower.is_best is False
    recs = {r.id: r for r in db.records()}
    assert len(recs) == 2
    assert recs[first.id].is_best and not recs[slower.id].is_best
    assert db.best(**KEY).config == {"v": 1}
    db.dispose()


def test_keys_are_separate(db_path):
    db = TuningDB(db_path)
    db.store(make_record(5.0, {"v": 1}))
    other_gpu = db.store(make_record(50.0, {"v": 2}, gpu_name="NVIDIA H200"))
    other_n = db.store(make_record(60.0, {"v": 3}, n=128))
    assert other_gpu.is_best and other_n.is_best  # a slower record of another key is still that key's best
    assert db.best(**KEY, gpu=GPU).config == {"v": 1}
    assert db.best(**KEY, gpu="NVIDIA H200").config == {"v": 2}
    assert db.best(**{**KEY, "n": 128}).config == {"v": 3}
    assert db.best(**{**KEY, "dtype": "fp16"}) is None
    assert db.best(**{**KEY, "density": 0.2}) is None
    assert db.best(**KEY, gpu="NVIDIA A100") is None
    assert db.best(**KEY, pattern="powerlaw") is None
    db.dispose()


def test_wal_journal_mode(db_path):
    db = TuningDB(db_path)
    db.store(make_record(1.0))
    db.dispose()
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        meta = dict(con.execute("SELECT key, value FROM sat_meta"))
    finally:
        con.close()
    assert meta["application"] == APPLICATION
    assert meta["schema_version"] == str(SCHEMA_VERSION)


def test_reopen_keeps_records_and_meta(filled_db):
    db = TuningDB(filled_db)
    db.store(make_record(20.0))
    assert len(db.records()) == 2
    db.dispose()
    con = sqlite3.connect(filled_db)
    try:
        assert con.execute("SELECT COUNT(*) FROM sat_meta").fetchone()[0] == 2
    finally:
        con.close()


def test_create_false_on_missing_file(tmp_path):
    p = tmp_path / "sub" / "none.sqlite"
    with pytest.raises(UserError):
        TuningDB(p, create=False)
    assert not p.exists() and not p.parent.exists()


def test_new_file_only_where_its_folder_exists(tmp_path, monkeypatch):
    p = tmp_path / "a" / "b" / "t.sqlite"
    with pytest.raises(UserError, match="folder .* does not exist"):
        TuningDB(p)
    assert not (tmp_path / "a").exists()
    (tmp_path / "a" / "b").mkdir(parents=True)
    TuningDB(p).dispose()
    assert check_file(p) == "ours"
    # the default location ($SPARSE_AUTOTUNE_DB, else the user cache) gets its folder on the first write
    default = tmp_path / "cache" / "sparse-autotune" / "tuning.sqlite"
    monkeypatch.setenv(DB_ENV, str(default))
    TuningDB().dispose()
    assert check_file(default) == "ours"


def test_readonly_db_cannot_be_written(filled_db):
    before = filled_db.read_bytes()
    db = TuningDB(filled_db, create=False, readonly=True)
    assert db.best(**KEY).time_us == 10.0
    with pytest.raises(Exception):
        db.store(make_record(1.0))
    db.dispose()
    assert filled_db.read_bytes() == before


# ---- check_file -----------------------------------------------------------------------------------------


def test_check_file_missing_and_ours(tmp_path, filled_db):
    missing = tmp_path / "missing.sqlite"
    assert check_file(missing) == "missing"
    assert not missing.exists()
    assert check_file(filled_db) == "ours"


def test_check_file_empty(tmp_path):
    f = tmp_path / "empty.sqlite"
    f.write_bytes(b"")
    assert check_file(f) == "empty"
    TuningDB(f).dispose()  # an empty file may be initialised
    assert check_file(f) == "ours"


def _foreign_sqlite(path: Path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE foo (x INTEGER)")
    con.execute("INSERT INTO foo VALUES (42)")
    con.commit()
    con.close()


def test_foreign_sqlite_file_is_refused_untouched(tmp_path):
    f = tmp_path / "other.db"
    _foreign_sqlite(f)
    before = f.read_bytes()
    with pytest.raises(UserError, match="not a tuning database"):
        check_file(f)
    with pytest.raises(UserError):
        TuningDB(f)
    with pytest.raises(UserError):
        lookup(**KEY, gpu=GPU, db=f)
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_sqlite_with_foreign_meta_is_refused(tmp_path):
    f = tmp_path / "meta.db"
    con = sqlite3.connect(f)
    con.execute("CREATE TABLE sat_meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO sat_meta VALUES ('application', 'someone-else')")
    con.commit()
    con.close()
    before = f.read_bytes()
    with pytest.raises(UserError):
        check_file(f)
    with pytest.raises(UserError):
        TuningDB(f)
    assert f.read_bytes() == before


@pytest.mark.parametrize("content", [b"hello, this is a text file\n", b"\x00" * 100, b"SQLite format 2\x00xxxx"])
def test_non_sqlite_file_is_refused_untouched(tmp_path, content):
    f = tmp_path / "notes.txt"
    f.write_bytes(content)
    with pytest.raises(UserError) as info:
        check_file(f)
    assert "notes.txt" in str(info.value)
    with pytest.raises(UserError):
        TuningDB(f)
    assert f.read_bytes() == content


def test_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="directory"):
        check_file(tmp_path)


def test_newer_schema_is_refused(filled_db):
    con = sqlite3.connect(filled_db)
    con.execute("UPDATE sat_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = filled_db.read_bytes()
    with pytest.raises(UserError, match="schema"):
        check_file(filled_db)
    with pytest.raises(UserError):
        TuningDB(filled_db)
    with pytest.raises(UserError):
        lookup(**KEY, gpu=GPU, db=filled_db, fallback=False)
    assert filled_db.read_bytes() == before


def test_foreign_sqlite_refused_when_path_has_hash(tmp_path):
    d = tmp_path / "run#1"
    d.mkdir()
    f = d / "other.db"
    _foreign_sqlite(f)
    before = f.read_bytes()
    try:
        with pytest.raises(UserError):
            check_file(f)
    finally:
        assert f.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run#1"]  # no stray file 'run' created


@pytest.mark.parametrize("dirname", ["q?x", "pct%20x"])
def test_db_path_with_url_special_characters(tmp_path, dirname):
    d = tmp_path / dirname
    d.mkdir()
    p = d / "t.sqlite"
    db = TuningDB(p)
    db.store(make_record(3.0))
    db.dispose()
    assert check_file(p) == "ours"
    assert lookup(**KEY, gpu=GPU, db=p) is not None
    assert sorted(x.name for x in tmp_path.iterdir()) == [dirname]


# ---- lookup ---------------------------------------------------------------------------------------------


def test_lookup_finds_the_stored_record(filled_db):
    res = lookup(**KEY, gpu=GPU, db=filled_db, fallback=False)
    assert res is not None
    assert res.family == "csr_rowsplit"
    assert res.config == CONFIG
    assert res.time_us == 10.0 and res.gpu == GPU and res.source == "exact"
    assert Path(res.db) == filled_db.resolve()


def test_lookup_misses(filled_db):
    assert lookup(**{**KEY, "n": 128}, gpu=GPU, db=filled_db, fallback=False) is None
    assert lookup(**{**KEY, "m": 513}, gpu=GPU, db=filled_db, fallback=False) is None
    assert lookup(**{**KEY, "dtype": "fp16"}, gpu=GPU, db=filled_db, fallback=False) is None
    assert lookup(**{**KEY, "density": 0.2}, gpu=GPU, db=filled_db, fallback=False) is None
    assert lookup(**KEY, gpu="NVIDIA A100-SXM4-80GB", db=filled_db, fallback=False) is None
    assert lookup(**KEY, gpu=GPU, db=filled_db, fallback=False) is not None


def test_lookup_density_tolerance(filled_db):
    # a matrix of requested density d has round(d*M*K)/(M*K) nonzeros: close densities match, others do not
    assert lookup(**{**KEY, "density": 0.10001}, gpu=GPU, db=filled_db, fallback=False) is not None
    assert lookup(**{**KEY, "density": 0.11}, gpu=GPU, db=filled_db, fallback=False) is None


def test_lookup_miss_is_not_cached(filled_db):
    key = {**KEY, "n": 64}
    assert lookup(**key, gpu=GPU, db=filled_db, fallback=False) is None
    db = TuningDB(filled_db)
    db.store(make_record(4.0, {**CONFIG, "unroll": 2}, n=64))
    db.dispose()
    res = lookup(**key, gpu=GPU, db=filled_db, fallback=False)
    assert res is not None and res.config == {**CONFIG, "unroll": 2}


def test_lookup_missing_or_empty_db(tmp_path):
    missing = tmp_path / "missing.sqlite"
    assert lookup(**KEY, gpu=GPU, db=missing, fallback=False) is None
    assert not missing.exists()
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert lookup(**KEY, gpu=GPU, db=empty, fallback=False) is None
    assert empty.read_bytes() == b""


def test_lookup_validates_arguments(filled_db):
    with pytest.raises(UserError):
        lookup(**{**KEY, "density": 0.0}, gpu=GPU, db=filled_db, fallback=False)
    with pytest.raises(UserError):
        lookup(**{**KEY, "dtype": "fp64"}, gpu=GPU, db=filled_db, fallback=False)


def test_lookup_on_read_only_file(filled_db):
    os.chmod(filled_db, 0o444)
    try:
        before = filled_db.read_bytes()
        res = lookup(**KEY, gpu=GPU, db=filled_db, fallback=False)
        assert res is not None and res.time_us == 10.0
        lookup.cache_clear()
        db = TuningDB(filled_db, create=False, readonly=True)  # what lookup opens; also right as root
        try:
            assert db.best(**KEY, gpu=GPU).time_us == 10.0
        finally:
            db.dispose()
        assert filled_db.read_bytes() == before
    finally:
        os.chmod(filled_db, 0o644)


_READONLY_PROBE = textwrap.dedent("""
    import os, sys
    from sparse_autotune.store.lookup import lookup
    warm, target, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    key = dict(m=512, k=2048, n=256, density=0.1, dtype="fp32", gpu=sys.argv[4])
    assert lookup(**key, db=warm) is not None  # imports everything while it still can
    lookup.cache_clear()
    if uid >= 0:
        os.setgid(uid); os.setuid(uid)
    res = lookup(**key, db=target)
    print("FOUND" if res is not None else "MISS")
""")


def test_lookup_on_read_only_file_in_read_only_folder():
    """As root, the probe drops to uid 65534 (nobody) after importing, since root ignores file modes. The folder is
    made under the system temp dir (pytest's tmp_path is inside a 0700 folder that nobody cannot enter)."""
    base = Path(tempfile.mkdtemp(prefix="sat-ro-"))
    try:
        warm = base / "warm.sqlite"
        shared = base / "shared"
        shared.mkdir()
        target = shared / "tuning.sqlite"
        for p in (warm, target):
            db = TuningDB(p)
            db.store(make_record(10.0))
            db.dispose()
        os.chmod(base, 0o755)
        os.chmod(target, 0o444)
        os.chmod(shared, 0o555)
        uid = 65534 if os.geteuid() == 0 else -1
        try:
            proc = subprocess.run([sys.executable, "-c", _READONLY_PROBE, str(warm), str(target), str(uid), GPU],
                                  capture_output=True, text=True, timeout=60)
        finally:
            os.chmod(shared, 0o755)
            os.chmod(target, 0o644)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if "PermissionError" in proc.stderr:  # cannot drop privileges, or cannot reach the folder: not the point here
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0 and "FOUND" in proc.stdout, proc.stderr.strip().splitlines()[-1:]


# ---- default path ---------------------------------------------------------------------------------------


def test_default_db_path_honours_env(monkeypatch, tmp_path):
    target = tmp_path / "x" / "my.sqlite"
    monkeypatch.setenv(DB_ENV, str(target))
    assert default_db_path() == target
    monkeypatch.setenv(DB_ENV, "~/some.sqlite")
    assert default_db_path() == Path.home() / "some.sqlite"


def test_default_db_path_without_env(monkeypatch):
    monkeypatch.delenv(DB_ENV, raising=False)
    p = default_db_path()
    assert p.name == "tuning.sqlite" and "sparse-autotune" in str(p)


def test_tuningdb_default_target_uses_env(monkeypatch, tmp_path):
    target = tmp_path / "env.sqlite"
    monkeypatch.setenv(DB_ENV, str(target))
    db = TuningDB()
    db.store(make_record(2.0))
    db.dispose()
    assert check_file(target) == "ours"
    assert lookup(**KEY, gpu=GPU) is not None  # lookup's default db is the env's too


# ---- the guard: every path or URL --------------------------------------------------------------------------------


def test_sqlite_url_is_the_file_it_names(filled_db, tmp_path):
    """sqlite:///PATH goes through the same guard as PATH: the same file is read, a foreign one refused, a missing one
    not created by a read."""
    from sparse_autotune.store import guard
    url = f"sqlite:///{filled_db}"
    assert guard.resolve(url).path == filled_db and guard.survey(url).state == "tuning"
    db = TuningDB(url, create=False, readonly=True)
    assert db.best(**KEY, gpu=GPU).time_us == 10.0 and db.label == str(filled_db.resolve())
    db.dispose()
    f = tmp_path / "other.db"
    _foreign_sqlite(f)
    before = f.read_bytes()
    for attempt in (lambda: TuningDB(f"sqlite:///{f}"), lambda: TuningDB(f"sqlite:///{f}", readonly=True),
                    lambda: lookup(**KEY, gpu=GPU, db=f"sqlite:///{f}")):
        with pytest.raises(UserError, match="not a tuning database"):
            attempt()
    assert f.read_bytes() == before
    missing = tmp_path / "missing.sqlite"
    assert lookup(**KEY, gpu=GPU, db=f"sqlite:///{missing}", fallback=False) is None
    with pytest.raises(UserError, match="does not exist"):
        TuningDB(f"sqlite:///{missing}", readonly=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["other.db", filled_db.name])


def test_survey_states(tmp_path, filled_db):
    """What the guard makes of each kind of file (store/guard.py's docstring)."""
    import optuna
    from sparse_autotune.store import guard
    assert guard.survey(tmp_path / "none.sqlite").state == "missing"
    (tmp_path / "zero.sqlite").write_bytes(b"")
    assert guard.survey(tmp_path / "zero.sqlite").state == "empty"
    sqlite3.connect(tmp_path / "blank.sqlite").close()  # 0 bytes too: SQLite writes nothing until a table exists
    assert guard.survey(tmp_path / "blank.sqlite").state == "empty"
    assert guard.survey(filled_db).state == "tuning"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ours = f"sqlite:///{tmp_path / 'ours-optuna.sqlite'}"  # the tuner's study names: a storage of this project
    optuna.create_study(study_name=f"M64_K128_N32_d0.1_fp32_uniform|{GPU}|0123456789abcdef", storage=ours)
    assert guard.survey(ours).state == "storage"
    other = f"sqlite:///{tmp_path / 'other-optuna.sqlite'}"
    optuna.create_study(study_name="lr-search", storage=other)
    with pytest.raises(UserError, match="Optuna storage of another application .study 'lr-search'"):
        guard.survey(other)
    con = sqlite3.connect(tmp_path / "half.sqlite")  # records without the marker: not ours (or damaged)
    con.execute("CREATE TABLE sat_records (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="sat_records without sat_meta"):
        guard.survey(tmp_path / "half.sqlite")
    with pytest.raises(UserError, match="not an SQLAlchemy URL"):
        guard.resolve("postgresql+psycopg://user@host:notaport/db")


def test_read_only_open_leaves_no_side_files_in_wal_mode(filled_db):
    """The file is in WAL mode (as the tuner leaves it); every read opens it immutable or mode=ro, so no -wal/-shm
    appears (root can write anywhere, so the test checks the side files and the URIs, not permissions)."""
    from sparse_autotune.store import guard
    from sparse_autotune.store.db import describe_file
    assert filled_db.read_bytes()[18] == 2
    folder = filled_db.parent
    before = sorted(p.name for p in folder.iterdir())
    db = TuningDB(filled_db, create=False, readonly=True)
    db.select_records()
    db.best(**KEY)
    db.dispose()
    lookup(**KEY, gpu=GPU, db=filled_db)
    check_file(filled_db)
    describe_file(filled_db)
    assert sorted(p.name for p in folder.iterdir()) == before == [filled_db.name]
    assert guard.read_only_uri(filled_db) == guard.sqlite_uri(filled_db, "ro", immutable=True)


@pytest.fixture
def pg_database():
    """A fresh database on the PostgreSQL server of $SPARSE_AUTOTUNE_TEST_PG_URL (.ci/run starts one), dropped after."""
    with fresh_pg_database("sat_guard_") as got:
        yield got


def test_server_database_is_guarded_like_a_file(pg_database, capsys):
    """A PostgreSQL URL: another application's tables are refused untouched by every command; an empty database is a
    database without records (a read creates no table); a write makes it a tuning database."""
    import psycopg
    from sparse_autotune.commands.main import main
    from sparse_autotune.store import guard
    url, conninfo = pg_database

    def tables():
        with psycopg.connect(**conninfo) as con:
            return sorted(r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    assert guard.survey(url).state == "empty"
    assert main(["db", "list", "--db", url]) == 0 and "no records" in capsys.readouterr().out
    assert lookup(**KEY, gpu=GPU, db=url, fallback=False) is None
    assert tables() == []  # reads created nothing
    with psycopg.connect(**conninfo, autocommit=True) as con:
        con.execute("CREATE TABLE invoices (id integer)")
    lookup.cache_clear()  # a server database is read once per process (lookup's cache); these run in this one
    for argv in (["db", "list", "--db", url], ["lookup", "--shape", "64x64", "--density", "0.1", "--db", url],
                 ["report", "--out", "/nonexistent/r", "--db", url], ["status", "--storage", url],
                 ["db", "merge", str(Path(__file__).parent / "fixtures" / "tuning-v1.sqlite"), "--into", url],
                 ["tune", "--shape", "64x64", "--density", "0.1", "--storage", url],
                 ["worker", "--storage", url]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "another application" in err and "invoices" in err, (argv, err)
    with pytest.raises(UserError, match="another application"):
        TuningDB(url)
    assert tables() == ["invoices"]
    with psycopg.connect(**conninfo, autocommit=True) as con:
        con.execute("DROP TABLE invoices")
    db = TuningDB(url)  # a write: the empty database becomes a tuning database
    db.store(make_record(4.0))
    db.dispose()
    lookup.cache_clear()
    assert {"sat_meta", "sat_records"} <= set(tables()) and guard.survey(url).state == "tuning"
    ro = TuningDB(url, create=False, readonly=True)
    assert ro.best(**KEY, gpu=GPU).time_us == 4.0
    ro.dispose()
