"""The tuning database as a shared artifact (CPU only): schema 1 -> 2 -> 3 migration of the committed v1 fixture,
2 -> 3 of a schema-2 file, read-only use of an unmigrated file, merge rules, export, concurrent writers, and the `db`
command line (sparse_autotune.commands.db)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from records import downgrade_to_v2, make_record as _make_record, new_db, sql

import sparse_autotune.store.db as tuningdb
from sparse_autotune.errors import UserError
from sparse_autotune.store.lookup import lookup
from sparse_autotune.store.db import (SCHEMA_VERSION, Record, RecordFilter, TuningDB, check_file, describe_file,
                                      record_uid)
from sparse_autotune.device.verify import TOLERANCE

FIXTURE = Path(__file__).parent / "fixtures" / "tuning-v1.sqlite"
H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
KEY = dict(m=512, k=2048, n=256, density=0.1, dtype="fp32")
PREFIX = "sparse-autotune: error:"
V1_COLUMNS = ["id", "gpu_name", "gpu_cc", "m", "k", "n", "density", "dtype", "pattern", "family", "config_json",
              "time_us", "gflops", "cusparse_us", "cublas_fp32_us", "cublas_tf32_us", "cublas_fp16_us", "floor_us",
              "max_rel_err", "trials", "matrix_hash", "study_name", "package_version", "cuda_version",
              "driver_version", "cupy_version", "created_at", "is_best"]
V2_COLUMNS = V1_COLUMNS + ["uid", "origin"]
# the current schema's (3 added cublas_bf16_us, 4 layout, 5 op, 6 cold_us)
V4_COLUMNS = V2_COLUMNS + ["cublas_bf16_us", "layout", "op", "cold_us"]
BF16_KEY = dict(m=512, k=2048, n=16, density=0.1, dtype="bf16")


def make_record(time_us: float, config: dict | None = None, **over) -> Record:
    return _make_record(time_us, config, **{"gpu_name": H100, "created_at": dt.datetime(2025, 3, 1, 12, 0, 0), **over})


@pytest.fixture
def v2(tmp_path) -> Path:
    """A schema-2 file alone in its folder (records.downgrade_to_v2): an fp32 key (history a1, best a2) and a bf16 key
    (h1, best), whose cuBLAS BF16 time (9.0) is lost as version 2 lost it."""
    d = tmp_path / "v2"
    d.mkdir()
    return downgrade_to_v2(new_db(d / "tuning-v2.sqlite", make_record(12.0, {"a": 1}), make_record(10.0, {"a": 2}),
                                  make_record(6.0, {"h": 1}, **BF16_KEY, cublas_fp16_us=7.0, cublas_bf16_us=9.0)))


@pytest.fixture
def v1(tmp_path) -> Path:
    """A private copy of the committed schema-1 fixture, alone in its folder."""
    d = tmp_path / "v1"
    d.mkdir()
    p = d / "tuning-v1.sqlite"
    shutil.copyfile(FIXTURE, p)
    return p



def columns(path: Path) -> list[str]:
    return [r[1] for r in sql(path, "PRAGMA table_info(sat_records)")]


def table_shape(path: Path) -> tuple[list, list]:
    """sat_records' columns (name, type, nullable, in order) and indexes (name, unique, columns), as SQLAlchemy
    reflects them."""
    from sqlalchemy import create_engine, inspect
    eng = create_engine(f"sqlite:///{path}")
    try:
        insp = inspect(eng)
        return ([(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns("sat_records")],
                sorted((i["name"], bool(i["unique"]), tuple(i["column_names"]))
                       for i in insp.get_indexes("sat_records")))
    finally:
        eng.dispose()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump(path: Path) -> list[tuple]:
    """Every record, all columns but the file-local id, in uid order."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cur = con.execute("SELECT * FROM sat_records")
        names = [c[0] for c in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()
    return sorted(tuple((k, v) for k, v in r.items() if k != "id") for r in rows)


def best_uids(path: Path) -> set[str]:
    return {r[0] for r in sql(path, "SELECT uid FROM sat_records WHERE is_best")}


def tag(config_json: str) -> str:
    """The test records' configs are {"a": 1}, {"b": 3}, ...: their tag is "a1", "b3"."""
    return "".join(f"{k}{v}" for k, v in json.loads(config_json).items())


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())



def foreign_sqlite(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE foo (x INTEGER)")
    con.execute("INSERT INTO foo VALUES (42)")
    con.commit()
    con.close()
    return path


# ---- the committed v1 fixture -----------------------------------------------------------------------------


def test_fixture_is_schema_1_in_delete_mode():
    assert dict(sql(FIXTURE, "SELECT key, value FROM sat_meta")) == {"application": "sparse-autotune",
                                                                     "schema_version": "1"}
    assert sql(FIXTURE, "PRAGMA journal_mode")[0][0] == "delete"
    assert columns(FIXTURE) == V1_COLUMNS
    assert not Path(f"{FIXTURE}-wal").exists()
    rows = sql(FIXTURE, "SELECT id, gpu_name, time_us, is_best FROM sat_records ORDER BY id")
    assert len(rows) == 5 and {r[1] for r in rows} == {H100, H200}
    assert [r[3] for r in rows] == [0, 1, 1, 1, 1]  # record 1 is the slower history of record 2's key


# ---- migration --------------------------------------------------------------------------------------------


def test_writable_open_migrates_v1_in_place(v1, tmp_path):
    before = sql(v1, f"SELECT {', '.join(V1_COLUMNS)} FROM sat_records ORDER BY id")
    db = TuningDB(v1, create=True)
    recs = db.records()
    db.dispose()
    assert dict(sql(v1, "SELECT key, value FROM sat_meta"))["schema_version"] == str(SCHEMA_VERSION)
    assert columns(v1) == V4_COLUMNS
    assert [r[0] for r in sql(v1, "SELECT cublas_bf16_us FROM sat_records")] == [None] * 5
    after = sql(v1, f"SELECT {', '.join(V1_COLUMNS)} FROM sat_records ORDER BY id")
    assert after == before  # every row and every v1 value kept, best flags included
    uids = sql(v1, "SELECT uid, origin FROM sat_records ORDER BY id")
    assert all(len(u) == 64 and int(u, 16) >= 0 and o is None for u, o in uids)
    assert len({u for u, _ in uids}) == 5
    assert [r.uid for r in recs] == [u for u, _ in uids] == [record_uid(r) for r in recs]
    assert [r.is_best for r in recs] == [False, True, True, True, True]
    assert check_file(v1) == "ours" and describe_file(v1)["schema_version"] == SCHEMA_VERSION

    # the migrated table is the table a new database gets: same columns, types, nullability and indexes
    shapes = [table_shape(v1), table_shape(new_db(tmp_path / "fresh.sqlite"))]
    assert shapes[0] == shapes[1]
    assert ("ix_sat_records_uid", True, ("uid",)) in shapes[0][1]
    assert not any(t[0].startswith("_alembic") or "alembic" in t[0] for t in sql(v1, "SELECT name FROM sqlite_master"))

    # a second open finds nothing to do and keeps the records
    TuningDB(v1).dispose()
    assert sql(v1, "SELECT uid FROM sat_records ORDER BY id") == [(u,) for u, _ in uids]


def test_migrated_file_accepts_new_records(v1):
    db = TuningDB(v1)
    rec = db.store(make_record(9.0, {"new": 1}))  # faster than record 2 (9.5) on H100
    db.dispose()
    assert rec.is_best and rec.origin == "tune"
    assert sql(v1, "SELECT id FROM sat_records WHERE is_best AND gpu_name = ? AND m = 512", (H100,)) == [(rec.id,)]
    assert sql(v1, "SELECT is_best FROM sat_records WHERE id = 2") == [(0,)]


def test_migration_leaves_optuna_tables_alone(v1):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{v1}"
    study = optuna.create_study(study_name="M512_K2048_N256_d0.1_fp32_uniform|x|y", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    del study
    alembic_before = sql(v1, "SELECT * FROM alembic_version")
    tables_before = {r[0] for r in sql(v1, "SELECT name FROM sqlite_master WHERE type='table'")}
    TuningDB(v1).dispose()
    assert sql(v1, "SELECT * FROM alembic_version") == alembic_before
    assert {r[0] for r in sql(v1, "SELECT name FROM sqlite_master WHERE type='table'")} == tables_before
    assert describe_file(v1)["studies"] == 1
    again = optuna.load_study(study_name="M512_K2048_N256_d0.1_fp32_uniform|x|y", storage=url)
    assert len(again.trials) == 3


def test_failed_migration_changes_nothing(v1, monkeypatch):
    """The migration is one transaction: a failure after the columns were added leaves a schema-1 file."""
    def boom(rows):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(tuningdb, "_assign_uids", boom)
    rows_before = sql(v1, "SELECT * FROM sat_records ORDER BY id")
    with pytest.raises(RuntimeError, match="injected"):
        TuningDB(v1)
    assert columns(v1) == V1_COLUMNS
    assert dict(sql(v1, "SELECT key, value FROM sat_meta"))["schema_version"] == "1"
    assert sql(v1, "SELECT * FROM sat_records ORDER BY id") == rows_before
    monkeypatch.undo()
    TuningDB(v1).dispose()  # and the next open migrates it
    assert describe_file(v1)["schema_version"] == SCHEMA_VERSION


def test_migration_keeps_exact_duplicate_rows(v1, tmp_path):
    """An old file may hold a row twice (copied by hand): both rows survive with distinct, stable uids, the same
    ones a read-only reader computes."""
    con = sqlite3.connect(v1)
    cols = ", ".join(c for c in V1_COLUMNS if c not in ("id", "is_best"))
    con.execute(f"INSERT INTO sat_records ({cols}, is_best) SELECT {cols}, 0 FROM sat_records WHERE id = 2")
    con.commit()
    con.close()
    ro = TuningDB(v1, create=False, readonly=True)
    ro_uids = [r.uid for r in ro.records()]
    ro.dispose()
    TuningDB(v1).dispose()
    uids = [r[0] for r in sql(v1, "SELECT uid FROM sat_records ORDER BY id")]
    assert len(uids) == 6 and len(set(uids)) == 6
    assert uids == ro_uids


def test_newer_schema_is_refused_untouched(v1):
    TuningDB(v1).dispose()
    con = sqlite3.connect(v1)
    con.execute("UPDATE sat_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = v1.read_bytes()
    for attempt in (lambda: TuningDB(v1), lambda: TuningDB(v1, create=False, readonly=True),
                    lambda: lookup(**KEY, gpu=H100, db=v1), lambda: describe_file(v1)):
        with pytest.raises(UserError, match=f"schema version {SCHEMA_VERSION + 1}") as info:
            attempt()
        assert "\n" not in str(info.value)
    assert v1.read_bytes() == before


# ---- schema 2 -> 3: cuBLAS BF16's time ---------------------------------------------------------------------


def test_v2_file_is_what_version_2_wrote(v2):
    assert columns(v2) == V2_COLUMNS
    assert dict(sql(v2, "SELECT key, value FROM sat_meta")) == {"application": "sparse-autotune", "schema_version": "2"}
    info = describe_file(v2)
    assert info["schema_version"] == 2 and info["needs_migration"] and info["problems"] == [] and info["records"] == 3
    assert sql(v2, "PRAGMA journal_mode")[0][0] == "delete" and names(v2.parent) == ["tuning-v2.sqlite"]


def test_writable_open_migrates_v2_in_place(v2, tmp_path):
    before = sql(v2, f"SELECT {', '.join(V2_COLUMNS)} FROM sat_records ORDER BY id")
    db = TuningDB(v2)
    assert [r.cublas_bf16_us for r in db.records()] == [None, None, None]
    rec = db.store(make_record(5.0, {"h": 2}, **BF16_KEY, cublas_bf16_us=9.5))  # faster than h1: the new best
    db.dispose()
    assert dict(sql(v2, "SELECT key, value FROM sat_meta"))["schema_version"] == str(SCHEMA_VERSION)
    assert columns(v2) == V4_COLUMNS
    # every v2 value kept (uids, origins, best flags but h1's, which h2 took over)
    after = sql(v2, f"SELECT {', '.join(V2_COLUMNS)} FROM sat_records WHERE id <= 3 ORDER BY id")
    assert after[:2] == before[:2] and after[2][:-3] == before[2][:-3] and before[2][-3] == 1 and after[2][-3] == 0
    assert sql(v2, "SELECT id, cublas_bf16_us, is_best FROM sat_records WHERE dtype = 'bf16' ORDER BY id") == \
        [(3, None, 0), (rec.id, 9.5, 1)]
    assert table_shape(v2) == table_shape(new_db(tmp_path / "fresh.sqlite"))
    assert not describe_file(v2)["needs_migration"]
    TuningDB(v2).dispose()  # a current file: nothing to do
    assert columns(v2) == V4_COLUMNS and len(sql(v2, "SELECT id FROM sat_records")) == 4


@pytest.mark.parametrize("old", ["v1", "v2"])
def test_failed_migration_to_3_changes_nothing(old, request, monkeypatch):
    """1 -> 2 -> 3 is one transaction: a failure in its last step, after cublas_bf16_us was added (and, from version 1,
    after 1 -> 2 ran), leaves the file at its own version with its own rows."""
    path = request.getfixturevalue(old)
    cols, meta, rows = columns(path), sql(path, "SELECT * FROM sat_meta"), sql(path, "SELECT * FROM sat_records")

    def boom(conn):
        tuningdb._migrate_to_3(conn)
        assert "cublas_bf16_us" in {c[1] for c in conn.exec_driver_sql("PRAGMA table_info(sat_records)")}
        raise RuntimeError("injected failure")
    monkeypatch.setattr(tuningdb, "MIGRATIONS", (tuningdb.MIGRATIONS[0], (tuningdb.V3_COLUMNS, boom)))
    with pytest.raises(RuntimeError, match="injected"):
        TuningDB(path)
    assert (columns(path), sql(path, "SELECT * FROM sat_meta"), sql(path, "SELECT * FROM sat_records")) == \
        (cols, meta, rows)
    monkeypatch.undo()
    TuningDB(path).dispose()  # and the next open migrates it
    assert describe_file(path)["schema_version"] == SCHEMA_VERSION
    assert columns(path)[-4:] == ["cublas_bf16_us", "layout", "op", "cold_us"]


def test_readonly_open_of_v2_reads_cublas_bf16_us_as_none_and_writes_nothing(v2, capsys):
    digest = sha256(v2)
    stored_uids = [u for (u,) in sql(v2, "SELECT uid FROM sat_records ORDER BY id")]
    ro = TuningDB(v2, create=False, readonly=True)
    recs, one, best = ro.records(), ro.get(3), ro.best(**BF16_KEY, gpu=H100)
    ro.dispose()
    assert [r.cublas_bf16_us for r in recs] == [None] * 3 and [r.origin for r in recs] == ["tune"] * 3
    assert [r.uid for r in recs] == stored_uids  # the stored uids, not recomputed ones
    assert one.dtype == "bf16" and one.cublas_fp16_us == 7.0 and one.cublas_bf16_us is None
    assert "cublas_bf16_us" in one.to_dict() and one.to_dict()["cublas_bf16_us"] is None
    assert best.id == 3 and best.cublas_bf16_us is None and best.config == {"h": 1}
    res = lookup(**BF16_KEY, gpu=H100, db=v2, adapt=False)
    assert res is not None and res.config == {"h": 1} and res.time_us == 6.0
    rc, out, _ = run_db(["show", "3", "--db", v2, "--json"], capsys)
    assert rc == 0 and json.loads(out)["cublas_bf16_us"] is None and json.loads(out)["cublas_fp16_us"] == 7.0
    rc, out, _ = run_db(["list", "--db", v2, "--json", "--all"], capsys)
    assert rc == 0 and [r["cublas_bf16_us"] for r in json.loads(out)] == [None] * 3
    assert sha256(v2) == digest and names(v2.parent) == ["tuning-v2.sqlite"] and columns(v2) == V2_COLUMNS


def test_merge_and_export_from_v2_into_v3(v2, tmp_path, capsys):
    digest = sha256(v2)
    dst = new_db(tmp_path / "dst.sqlite", make_record(5.0, {"h": 2}, **BF16_KEY, cublas_bf16_us=9.5))
    rc, out, err = run_db(["merge", v2, "--into", dst], capsys)
    assert rc == 0 and err == "" and "added 3, skipped 0" in out
    rows = sql(dst, "SELECT config_json, cublas_bf16_us, origin, is_best FROM sat_records ORDER BY id")
    assert [(tag(c), b, o, x) for c, b, o, x in rows] == [
        ("h2", 9.5, "tune", 1), ("a1", None, "merge:tuning-v2.sqlite", 0), ("a2", None, "merge:tuning-v2.sqlite", 1),
        ("h1", None, "merge:tuning-v2.sqlite", 0)]
    assert describe_file(dst)["schema_version"] == SCHEMA_VERSION and describe_file(dst)["problems"] == []
    exp = tmp_path / "exp.sqlite"
    rc, out, _ = run_db(["export", exp, "--db", v2], capsys)
    assert rc == 0 and out.startswith("wrote 3 records")
    assert columns(exp) == V4_COLUMNS and describe_file(exp)["schema_version"] == SCHEMA_VERSION
    assert sql(exp, "SELECT uid, cublas_bf16_us FROM sat_records ORDER BY id") == \
        [(u, None) for (u,) in sql(v2, "SELECT uid FROM sat_records ORDER BY id")]
    rc, out, _ = run_db(["export", dst, "--db", v2], capsys)  # into an existing v3 file: a merge, all present
    assert rc == 0 and "added 0, skipped 3" in out
    assert sha256(v2) == digest and names(v2.parent) == ["tuning-v2.sqlite"]


def test_merge_into_a_v2_target_migrates_it_and_keeps_cublas_bf16_us(v2, tmp_path):
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(v2, copy)
    src = new_db(tmp_path / "src.sqlite", make_record(5.0, {"h": 2}, **BF16_KEY, cublas_bf16_us=9.5))
    db = TuningDB(v2)
    res = db.merge_from(src)
    again = db.merge_from(copy)  # the same records read from an unmigrated copy: same uids, nothing added
    db.dispose()
    assert (res.added, res.new_best) == (1, 1) and (again.added, again.skipped) == (0, 3)
    assert describe_file(v2)["schema_version"] == SCHEMA_VERSION
    assert sql(v2, "SELECT cublas_bf16_us, origin, is_best FROM sat_records WHERE dtype = 'bf16' ORDER BY id") == \
        [(None, "tune", 0), (9.5, "merge:src.sqlite", 1)]


def test_bf16_record_round_trips_cublas_bf16_us(tmp_path, capsys):
    a = new_db(tmp_path / "a.sqlite", make_record(5.0, {"h": 2}, **BF16_KEY, cublas_fp16_us=7.0, cublas_bf16_us=9.5))
    assert sql(a, "SELECT cublas_fp16_us, cublas_bf16_us FROM sat_records") == [(7.0, 9.5)]
    assert record_uid(make_record(5.0, cublas_bf16_us=1.0)) == record_uid(make_record(5.0))  # not in the identity
    ro = TuningDB(a, create=False, readonly=True)
    got = [ro.get(1), ro.best(**BF16_KEY), *ro.records()]
    ro.dispose()
    assert [r.cublas_bf16_us for r in got] == [9.5] * 3
    keys = list(got[0].to_dict())
    assert keys[keys.index("cublas_fp16_us") + 1] == "cublas_bf16_us"  # next to the other baselines
    db = TuningDB(a)
    db.export(tmp_path / "out.sqlite")
    db.dispose()
    b = new_db(tmp_path / "b.sqlite")
    db = TuningDB(b)
    db.merge_from(tmp_path / "out.sqlite")
    db.dispose()
    for p in (tmp_path / "out.sqlite", b):
        assert sql(p, "SELECT dtype, cublas_bf16_us FROM sat_records") == [("bf16", 9.5)], p
    rc, out, _ = run_db(["show", "1", "--db", b, "--json"], capsys)
    assert rc == 0 and json.loads(out)["cublas_bf16_us"] == 9.5
    rc, out, _ = run_db(["show", "1", "--db", b], capsys)
    assert rc == 0 and any(ln.split() == ["cublas_bf16_us", "9.5"] for ln in out.splitlines())
    rc, out, _ = run_db(["list", "--db", b, "--json"], capsys)
    assert rc == 0 and [r["cublas_bf16_us"] for r in json.loads(out)] == [9.5]


# ---- read-only use of an unmigrated file -------------------------------------------------------------------


def test_lookup_reads_unmigrated_v1_without_writing(v1):
    before = v1.read_bytes()
    res = lookup(**KEY, gpu=H100, db=v1, adapt=False)  # the v1 file's configs are partial: read as stored
    assert res is not None and res.config == {"rows_per_block": 16, "vec": 4} and res.time_us == 9.5
    res = lookup(**KEY, gpu=H200, db=v1, adapt=False)
    assert res is not None and res.config == {"rows_per_block": 8, "vec": 2} and res.time_us == 8.0
    res = lookup(1024, 4096, 128, 0.05, "fp16", gpu=H100, db=v1, adapt=False)
    assert res is not None and res.time_us == 20.0
    res = lookup(4096, 1024, 512, 0.2, "fp32", gpu=H200, db=v1, adapt=False)
    assert res is not None and res.time_us == 31.25
    ro = TuningDB(v1, create=False, readonly=True)  # misses: lookup may fall back to a near or default config
    assert ro.best(4096, 1024, 512, 0.2, "fp32", gpu=H100) is None  # that key is tuned on the H200 only
    assert ro.best(**{**KEY, "n": 128}, gpu=H100) is None
    ro.dispose()
    assert v1.read_bytes() == before
    assert names(v1.parent) == ["tuning-v1.sqlite"]  # no -wal/-shm/-journal either
    assert columns(v1) == V1_COLUMNS


def test_readonly_open_of_v1_computes_what_migration_stores(v1):
    ro = TuningDB(v1, create=False, readonly=True)
    recs = ro.records()
    one = ro.get(2)
    best = ro.best(**KEY, gpu=H100)
    ro.dispose()
    assert len(recs) == 5 and all(r.origin is None for r in recs)
    assert one.uid == recs[1].uid == best.uid and best.id == 2
    assert "uid" in one.to_dict() and one.to_dict()["origin"] is None
    before_uids = [r.uid for r in recs]
    TuningDB(v1).dispose()
    assert [r[0] for r in sql(v1, "SELECT uid FROM sat_records ORDER BY id")] == before_uids


def test_readonly_open_cannot_store(v1):
    before = v1.read_bytes()
    ro = TuningDB(v1, create=False, readonly=True)
    with pytest.raises(UserError, match="read-only"):
        ro.store(make_record(1.0))
    ro.dispose()
    assert v1.read_bytes() == before


# ---- store: the merge rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("err", [math.inf, math.nan, 2 * TOLERANCE["fp32"], -1.0])
def test_unverified_record_never_becomes_best(tmp_path, err):
    db = TuningDB(tmp_path / "t.sqlite")
    bad = db.store(make_record(1.0, {"bad": 1}, max_rel_err=err))
    assert not bad.is_best
    assert db.best(**KEY) is None  # a key with only unverified records has no best
    res = lookup(**KEY, gpu=H100, db=tmp_path / "t.sqlite")
    assert res is None or res.config != {"bad": 1}
    good = db.store(make_record(10.0, {"good": 1}))
    assert good.is_best  # slower, but verified
    worse = db.store(make_record(0.5, {"bad": 2}, max_rel_err=err))
    assert not worse.is_best
    assert db.best(**KEY).id == good.id
    assert [r.is_best for r in db.records()] == [False, True, False]
    db.dispose()


def test_fp16_tolerance_is_the_dtype_one(tmp_path):
    db = TuningDB(tmp_path / "t.sqlite")
    ok = db.store(make_record(5.0, dtype="fp16", max_rel_err=TOLERANCE["fp16"]))  # at the bound: verified
    over = db.store(make_record(4.0, {"v": 2}, dtype="fp16", max_rel_err=TOLERANCE["fp16"] * 1.01))
    assert ok.is_best and not over.is_best
    db.dispose()


def test_store_skips_a_record_already_present(tmp_path):
    db = TuningDB(tmp_path / "t.sqlite")
    first = db.store(make_record(5.0))
    again = make_record(5.0)
    got = db.store(again)
    assert len(db.records()) == 1
    assert got.id == first.id == again.id and again.is_best
    assert first.uid == again.uid == record_uid(make_record(5.0))
    db.dispose()


def test_uid_is_content_based():
    base = make_record(5.0)
    assert record_uid(base) == record_uid(make_record(5.0))
    # the JSON spelling of the config does not matter, its content does
    assert record_uid(make_record(5.0, config_json='{"vec": 4, "rows_per_block": 8}')) == record_uid(base)
    for over in (dict(time_us=5.0001), dict(gpu_name=H200), dict(n=128), dict(density=0.2), dict(dtype="fp16"),
                 dict(pattern="powerlaw"), dict(family="other"), dict(config_json='{"vec": 2}'),
                 dict(matrix_hash="ffff"), dict(created_at=dt.datetime(2025, 3, 1, 12, 0, 0, 1))):
        over = dict(over)
        assert record_uid(make_record(over.pop("time_us", 5.0), **over)) != record_uid(base), over
    # fields outside the identity (e.g. the baselines) do not change it
    assert record_uid(make_record(5.0, cusparse_us=99.0, trials=1)) == record_uid(base)


# ---- merge_from -------------------------------------------------------------------------------------------


@pytest.fixture
def two_dbs(tmp_path):
    a = new_db(tmp_path / "a.sqlite",
               make_record(10.0, {"a": 1}),                                   # H100 key: best in a
               make_record(12.0, {"a": 2}),                                   # history in a
               make_record(40.0, {"a": 3}, n=128))                            # a key only a has
    b = new_db(tmp_path / "b.sqlite",
               make_record(7.0, {"b": 1}, created_at=dt.datetime(2025, 4, 1)),  # faster, verified: the new best
               make_record(3.0, {"b": 2}, max_rel_err=math.inf),              # fastest, unverified: history forever
               make_record(20.0, {"b": 3}, gpu_name=H200),                    # another GPU: its own key
               make_record(1.0, {"b": 4}, gpu_name=H200, max_rel_err=1.0))    # unverified on H200
    return a, b


def test_merge_rules(two_dbs):
    a, b = two_dbs
    db = TuningDB(a)
    res = db.merge_from(b)
    db.dispose()
    assert (res.added, res.skipped, res.new_best) == (4, 0, 2)
    rows = {tag(r[0]): r[1:] for r in sql(a, "SELECT config_json, is_best, gpu_name, origin FROM sat_records")}
    assert rows == {"a1": (0, H100, "tune"), "a2": (0, H100, "tune"), "a3": (1, H100, "tune"),
                    "b1": (1, H100, "merge:b.sqlite"), "b2": (0, H100, "merge:b.sqlite"),
                    "b3": (1, H200, "merge:b.sqlite"), "b4": (0, H200, "merge:b.sqlite")}
    assert lookup(**KEY, gpu=H100, db=a, adapt=False).config == {"b": 1}
    assert lookup(**KEY, gpu=H200, db=a, adapt=False).config == {"b": 3}  # stays keyed to its GPU
    assert lookup(**{**KEY, "n": 128}, gpu=H100, db=a, adapt=False).config == {"a": 3}
    db = TuningDB(a, create=False, readonly=True)
    assert db.best(**{**KEY, "n": 128}, gpu=H200) is None
    assert db.best(**KEY, gpu=H200).config == {"b": 3} and db.best(**KEY, gpu=H100).config == {"b": 1}
    db.dispose()
    # exactly one best per key
    assert sql(a, "SELECT gpu_name, n, count(*) FROM sat_records WHERE is_best GROUP BY gpu_name, n") == \
        [(H100, 128, 1), (H100, 256, 1), (H200, 256, 1)]


def test_merge_is_idempotent(two_dbs):
    a, b = two_dbs
    db = TuningDB(a)
    db.merge_from(b)
    first = dump(a)
    res = db.merge_from(b)
    db.dispose()
    assert (res.added, res.skipped, res.new_best) == (0, 4, 0)
    assert dump(a) == first and len(first) == 7


def test_merging_both_ways_converges(two_dbs):
    a, b = two_dbs
    src_b = dump(b)
    dba, dbb = TuningDB(a), TuningDB(b)
    dba.merge_from(b)
    assert dump(b) == src_b  # the source is only read
    dbb.merge_from(a)
    dba.dispose()
    dbb.dispose()
    strip = lambda rows: sorted(tuple(kv for kv in r if kv[0] != "origin") for r in rows)  # noqa: E731
    assert strip(dump(a)) == strip(dump(b))
    assert best_uids(a) == best_uids(b) and len(best_uids(a)) == 3


def test_merge_v1_source_without_writing_it(v1, tmp_path):
    before = v1.read_bytes()
    dst = TuningDB(tmp_path / "dst.sqlite")
    res = dst.merge_from(v1)
    assert (res.added, res.skipped, res.new_best) == (5, 0, 4)
    assert v1.read_bytes() == before and names(v1.parent) == ["tuning-v1.sqlite"]
    assert sql(tmp_path / "dst.sqlite", "SELECT count(*) FROM sat_records WHERE cublas_bf16_us IS NULL") == [(5,)]
    assert {r.origin for r in dst.records()} == {"merge:tuning-v1.sqlite"}
    # once the source is migrated its stored uids are the ones the merge computed: nothing is added twice
    TuningDB(v1).dispose()
    res = dst.merge_from(v1)
    assert (res.added, res.skipped) == (0, 5)
    assert {r.is_best for r in dst.records() if r.id == 2} == {True}
    dst.dispose()


def test_merge_is_one_transaction(two_dbs, monkeypatch):
    a, b = two_dbs
    before = dump(a)
    calls = []

    def failing_rebest(self, s, rec):
        calls.append(rec)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return orig(self, s, rec)
    orig = TuningDB._rebest
    monkeypatch.setattr(TuningDB, "_rebest", failing_rebest)
    db = TuningDB(a)
    with pytest.raises(RuntimeError):
        db.merge_from(b)
    db.dispose()
    assert dump(a) == before


def test_merge_refuses_bad_sources(tmp_path, two_dbs):
    a, _ = two_dbs
    before = dump(a)
    db = TuningDB(a)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    for src, words in ((foreign_sqlite(tmp_path / "f.sqlite"), "not a tuning database"),
                       (text, "not a tuning database"), (tmp_path / "none.sqlite", "does not exist"),
                       (a, "itself")):
        with pytest.raises(UserError, match=words):
            db.merge_from(src)
    res = db.merge_from(empty)  # a 0-byte file is a database without records: it adds nothing
    assert (res.added, res.skipped, res.new_best) == (0, 0, 0)
    db.dispose()
    assert dump(a) == before and empty.read_bytes() == b""


# ---- export -----------------------------------------------------------------------------------------------


def test_export_round_trip(two_dbs, tmp_path):
    a, b = two_dbs
    db = TuningDB(a)
    db.merge_from(b)
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=db.url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    out_dir = tmp_path / "shared"
    out = out_dir / "export.sqlite"
    with pytest.raises(UserError, match="does not exist"):  # a new file only where its folder exists
        db.export(out)
    assert not out_dir.exists()
    out_dir.mkdir()
    res = db.export(out)
    db.dispose()
    assert res.created and res.added == 7 and res.target == str(out.resolve())
    assert check_file(out) == "ours" and describe_file(out)["schema_version"] == SCHEMA_VERSION
    assert sql(out, "PRAGMA journal_mode")[0][0] == "delete"
    assert names(out_dir) == ["export.sqlite"]  # one file, no -wal/-shm, no temporary left
    assert {r[0] for r in sql(out, "SELECT name FROM sqlite_master WHERE type='table'")} == {"sat_meta", "sat_records"}
    assert dump(out) == dump(a)  # every column, provenance and best flags included (ids are the file's own)
    # no column holds a path, a user name or a host name
    data = out.read_bytes()
    for secret in {str(tmp_path), str(Path.home()), os.environ.get("USER") or "", os.uname().nodename}:
        if len(secret) >= 4:
            assert secret.encode() not in data, secret
    assert lookup(**KEY, gpu=H100, db=out, adapt=False).config == {"b": 1}


@pytest.mark.parametrize("filters,expected", [
    (dict(gpu="h200"), {"b3", "b4"}),
    (dict(gpu="H100", best_only=True), {"b1", "a3"}),
    (dict(shape="512x2048", dtype="fp32", best_only=True), {"b1", "a3", "b3"}),
    (dict(shape=(512, 2048), dtype="fp16"), set()),
    (RecordFilter(m=513), set()),
])
def test_export_filters(two_dbs, tmp_path, filters, expected):
    a, b = two_dbs
    db = TuningDB(a)
    db.merge_from(b)
    out = tmp_path / "out.sqlite"
    res = db.export(out, filters)
    db.dispose()
    got = {tag(r[0]) for r in sql(out, "SELECT config_json FROM sat_records")}
    assert got == expected and res.added == len(expected)
    # best flags in the export follow the rule over what was exported
    keys = sql(out, "SELECT gpu_name, n, sum(is_best) FROM sat_records GROUP BY gpu_name, n")
    assert all(s <= 1 for *_, s in keys)


def test_export_into_an_existing_tuning_db_merges(two_dbs, tmp_path):
    a, b = two_dbs
    out = tmp_path / "out.sqlite"
    db = TuningDB(b)
    first = db.export(out)
    db.dispose()
    assert first.created and first.added == 4
    db = TuningDB(a)
    res = db.export(out)
    again = db.export(out)
    db.dispose()
    assert not res.created and (res.added, res.skipped) == (3, 0)
    assert (again.added, again.skipped, again.new_best) == (0, 3, 0)
    assert sql(out, "PRAGMA journal_mode")[0][0] == "delete"  # still a single-file export
    assert {r[0] for r in sql(out, "SELECT origin FROM sat_records")} == {"tune", "merge:a.sqlite"}
    assert len(dump(out)) == 7 and len(best_uids(out)) == 3


def test_export_refuses_a_foreign_out_untouched(two_dbs, tmp_path):
    a, _ = two_dbs
    d = tmp_path / "outs"
    d.mkdir()
    text = d / "notes.txt"
    text.write_text("mine\n")
    foreign = foreign_sqlite(d / "other.sqlite")
    newer = new_db(d / "newer.sqlite")
    con = sqlite3.connect(newer)
    con.execute("UPDATE sat_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = {p: p.read_bytes() for p in (text, foreign, newer)}
    db = TuningDB(a)
    for out in before:
        with pytest.raises(UserError):
            db.export(out)
    with pytest.raises(UserError, match="itself"):
        db.export(a)
    db.dispose()
    assert {p: p.read_bytes() for p in before} == before
    # a read-only look at the WAL-mode newer.sqlite leaves no -wal/-shm beside it (store/guard.py)
    assert names(d) == ["newer.sqlite", "notes.txt", "other.sqlite"]


def test_export_of_an_unmigrated_v1_source(v1, tmp_path):
    before = v1.read_bytes()
    ro = TuningDB(v1, create=False, readonly=True)
    res = ro.export(tmp_path / "out.sqlite", {"gpu": "H100"})
    ro.dispose()
    assert res.added == 3 and v1.read_bytes() == before
    assert columns(tmp_path / "out.sqlite") == V4_COLUMNS  # the export has the current schema
    assert {r[0] for r in sql(tmp_path / "out.sqlite", "SELECT origin FROM sat_records")} == {None}
    assert sql(tmp_path / "out.sqlite", "SELECT count(*) FROM sat_records WHERE is_best")[0][0] == 2


# ---- concurrent writers -----------------------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import datetime as dt, json, sys, time
    from pathlib import Path
    from sparse_autotune.store.db import Record, TuningDB
    path, worker, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    Path(f"{go}.ready{worker}").touch()
    deadline = time.time() + 60
    while not go.exists() and time.time() < deadline:
        time.sleep(0.005)
    db = TuningDB(path)
    for i in range(count):
        key = i % 5
        db.store(Record(gpu_name=f"GPU{key % 2}", gpu_cc="9.0", m=512, k=2048, n=64 * (key + 1), density=0.1,
                        dtype="fp32", pattern="uniform", family="csr_rowsplit",
                        config_json=json.dumps({"worker": worker, "i": i}),
                        time_us=1.0 + ((i * 7919 + worker * 104729) % 1000) / 10,
                        gflops=1.0, max_rel_err=1e-6 if i % 10 else 1.0, trials=1, matrix_hash="h",
                        package_version="0", cuda_version="0", driver_version="0", cupy_version="0",
                        created_at=dt.datetime(2025, 1, 1) + dt.timedelta(microseconds=worker * 1000 + i)))
    db.dispose()
    print("stored", count)
""")


def _run_writers(path: Path, tmp_path: Path, count: int, workers: int = 2) -> None:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(w), str(count), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(workers)]
    deadline = time.time() + 60
    while not all(Path(f"{go}.ready{w}").exists() for w in range(workers)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()  # both start storing at the same moment
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and f"stored {count}" in out, err.strip().splitlines()[-3:]


def _assert_one_best_per_key(path: Path):
    """Every key has exactly one best, the fastest verified record (the workers' keys differ in GPU and N)."""
    con = sqlite3.connect(path)
    try:
        keys = con.execute("SELECT DISTINCT gpu_name, m, k, n, density, dtype, pattern FROM sat_records").fetchall()
        for key in keys:
            rows = con.execute("SELECT time_us, max_rel_err, is_best FROM sat_records WHERE gpu_name = ? AND m = ? "
                               "AND k = ? AND n = ? AND density = ? AND dtype = ? AND pattern = ?", key).fetchall()
            bests = [r for r in rows if r[2]]
            assert len(bests) == 1, (key, bests)
            assert bests[0][0] == min(t for t, e, _ in rows if e <= TOLERANCE[key[5]]), key
    finally:
        con.close()


def test_two_processes_store_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"  # does not exist yet: both processes also race to create it
    _run_writers(path, tmp_path, 100)
    assert sql(path, "SELECT count(*), count(DISTINCT uid) FROM sat_records")[0] == (200, 200)
    assert sql(path, "SELECT value FROM sat_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    _assert_one_best_per_key(path)


def test_two_processes_migrate_and_store_a_v1_file(v1, tmp_path):
    _run_writers(v1, tmp_path, 20)
    assert describe_file(v1)["schema_version"] == SCHEMA_VERSION
    assert sql(v1, "SELECT count(*), count(DISTINCT uid) FROM sat_records")[0] == (45, 45)
    _assert_one_best_per_key(v1)


# ---- the `db` command line --------------------------------------------------------------------------------


def run_db(argv, capsys, env_db: Path | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """Run `sparse-autotune db ...` in-process: through cli.main once cli.py wires the db command in, else through
    a parser built the same way (cli's _Parser, add_db_parser, and main's one-line error handling)."""
    if monkeypatch is not None and env_db is not None:
        monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(env_db))
    from sparse_autotune.commands import main as cli
    from sparse_autotune.commands.db import add_db_parser, cmd_db
    argv = ["db", *map(str, argv)]
    if hasattr(cli, "cmd_db"):
        rc = cli.main(argv)
    else:
        p = cli._Parser(prog="sparse-autotune")
        sub = p.add_subparsers(dest="cmd", parser_class=cli._Parser, required=True)
        add_db_parser(sub, cli._Parser)
        try:
            rc = cmd_db(p.parse_args(argv))
        except UserError as exc:
            print(f"{PREFIX} {exc}", file=sys.stderr)
            rc = 2
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(res, *needles):
    rc, out, err = res
    assert rc == 2, res
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(PREFIX), res
    for n in needles:
        assert n.lower() in err.lower(), (n, err)


@pytest.fixture
def cli_files(tmp_path, two_dbs):
    a, b = two_dbs
    d = tmp_path / "files"
    d.mkdir()
    text = d / "notes.txt"
    text.write_text("not a database\n")
    corrupt = d / "corrupt.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    empty = d / "empty.sqlite"
    empty.write_bytes(b"")
    newer = new_db(d / "newer.sqlite", make_record(1.0))
    con = sqlite3.connect(newer)
    con.execute("UPDATE sat_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    v1 = d / "old.sqlite"
    shutil.copyfile(FIXTURE, v1)
    return {"a": a, "b": b, "text": text, "corrupt": corrupt, "empty": empty, "newer": newer, "v1": v1,
            "foreign": foreign_sqlite(d / "foreign.sqlite"), "missing": d / "missing.sqlite"}


def test_db_check_ours(cli_files, capsys):
    rc, out, err = run_db(["check", cli_files["a"]], capsys)
    assert rc == 0 and err == ""
    assert f"schema version {SCHEMA_VERSION}" in out and "records  3 (2 best)" in out and H100 in out
    assert "migrated" not in out


def test_db_check_v1_says_it_will_migrate_without_writing(cli_files, capsys):
    before = cli_files["v1"].read_bytes()
    rc, out, err = run_db(["check", cli_files["v1"]], capsys)
    assert rc == 0 and err == ""
    assert "schema version 1" in out and f"migrated to version {SCHEMA_VERSION} on the next write" in out
    assert "records  5 (4 best)" in out and H100 in out and H200 in out
    assert cli_files["v1"].read_bytes() == before
    assert not Path(f"{cli_files['v1']}-wal").exists()


@pytest.mark.parametrize("name,needles", [("foreign", ["foreign.sqlite", "not a tuning database"]),
                                          ("text", ["notes.txt", "not a tuning database"]),
                                          ("corrupt", ["corrupt.sqlite"]), ("newer", ["newer.sqlite", "schema"]),
                                          ("missing", ["missing.sqlite", "does not exist"])])
def test_db_check_refuses(cli_files, capsys, name, needles):
    f = cli_files[name]
    before = f.read_bytes() if f.exists() else None
    assert_one_line_error(run_db(["check", f], capsys), *needles)
    assert (f.read_bytes() if f.exists() else None) == before


def test_db_list(cli_files, capsys):
    rc, out, _ = run_db(["list", "--db", cli_files["v1"]], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "shape", "N"] and "vs cuSPARSE" in lines[0] and "date" in lines[0]
    ids = [ln.split()[0] for ln in lines[2:-1]]
    assert sorted(ids) == ["2", "3", "4", "5"] and lines[-1] == "4 records"
    row2 = next(ln for ln in lines if ln.split()[0] == "2")
    for v in ("512x2048", "256", "0.1", "fp32", "uniform", H100, "csr_rowsplit", "9.50", "2.11x", "3.16x",
              "2025-01-02"):
        assert v in row2, v
    rc, out, _ = run_db(["list", "--db", cli_files["v1"], "--all", "--gpu", "h100"], capsys)
    assert rc == 0
    ids = {ln.split()[0]: ln.rstrip().endswith("*") for ln in out.splitlines()[2:-1]}
    assert ids == {"1": False, "2": True, "3": True} and out.splitlines()[-1] == "3 records (2 best)"
    rc, out, _ = run_db(["list", "--db", cli_files["v1"], "--shape", "4096x1024", "--dtype", "fp32"], capsys)
    assert [ln.split()[0] for ln in out.splitlines()[2:-1]] == ["5"]
    rc, out, _ = run_db(["list", "--db", cli_files["v1"], "--json"], capsys)
    assert rc == 0 and sorted(r["id"] for r in json.loads(out)) == [2, 3, 4, 5]


def test_empty_file_is_a_database_without_records_everywhere(cli_files, capsys, tmp_path):
    """A 0-byte file means one thing to every command: a database without records. db check says so (exit 0), db list
    shows none, a merge or export from it adds nothing, db merge --into and db export fill it. Reads leave it 0 bytes."""
    empty = cli_files["empty"]
    rc, out, err = run_db(["check", empty], capsys)
    assert rc == 0 and err == "" and "an empty database" in out and "no records yet" in out
    rc, out, _ = run_db(["list", "--db", empty], capsys)
    assert rc == 0 and out == f"no records ({empty} is an empty database: no records yet)\n"
    assert_one_line_error(run_db(["show", "1", "--db", empty], capsys), "no record with id 1", "empty")
    dst = tmp_path / "dst.sqlite"
    rc, out, _ = run_db(["merge", empty, "--into", dst], capsys)
    assert rc == 0 and f"{empty}: added 0, skipped 0" in out
    assert empty.read_bytes() == b"" and check_file(dst) == "ours" and dump(dst) == []
    rc, out, _ = run_db(["export", tmp_path / "exp.sqlite", "--db", empty], capsys)
    assert rc == 0 and out.startswith("wrote 0 records to") and check_file(tmp_path / "exp.sqlite") == "ours"
    assert empty.read_bytes() == b"" and sorted(p.name for p in empty.parent.iterdir() if p.name.startswith("empty"))\
        == ["empty.sqlite"]
    rc, out, _ = run_db(["merge", cli_files["b"], "--into", empty], capsys)  # merge --into fills it
    assert rc == 0 and "added 4" in out and check_file(empty) == "ours"
    rc, out, _ = run_db(["check", empty], capsys)
    assert rc == 0 and "records  4" in out and "clean" in out


def test_db_list_empty_and_default_db(cli_files, capsys, monkeypatch):
    assert run_db(["list", "--db", cli_files["v1"], "--gpu", "A100"], capsys)[:2] == (0, "no records\n")
    rc, out, _ = run_db(["list"], capsys, env_db=cli_files["a"], monkeypatch=monkeypatch)
    assert rc == 0 and out.splitlines()[-1] == "2 records"
    assert_one_line_error(run_db(["list", "--db", cli_files["missing"]], capsys), "does not exist")
    assert_one_line_error(run_db(["list", "--db", cli_files["foreign"]], capsys), "not a tuning database")
    assert_one_line_error(run_db(["list", "--db", cli_files["v1"], "--shape", "big"], capsys), "big")
    assert_one_line_error(run_db(["list", "--db", cli_files["v1"], "--dtype", "fp64"], capsys), "fp64")
    assert not cli_files["missing"].exists()


def test_db_show(cli_files, capsys):
    before = cli_files["v1"].read_bytes()
    rc, out, _ = run_db(["show", "2", "--db", cli_files["v1"]], capsys)
    assert rc == 0
    fields = {ln.split()[0]: ln.split(None, 1)[1] if len(ln.split()) > 1 else "" for ln in out.splitlines()[1:]}
    assert fields["id"] == "2" and fields["gpu_name"] == H100 and fields["time_us"] == "9.5"
    assert fields["config"] == '{"rows_per_block": 16, "vec": 4}'
    assert fields["driver_version"] == "580.65.06" and fields["is_best"] == "True"
    assert len(fields["uid"]) == 64 and fields["verified"] == "yes"
    for col in V1_COLUMNS:
        assert col in fields or col == "config_json", col
    rc, out, _ = run_db(["show", "4", "--db", cli_files["v1"], "--json"], capsys)
    d = json.loads(out)
    assert d["gpu_name"] == H200 and d["config"] == {"rows_per_block": 8, "vec": 2} and d["time_us"] == 8.0
    assert_one_line_error(run_db(["show", "99", "--db", cli_files["v1"]], capsys), "no record with id 99")
    assert_one_line_error(run_db(["show", "two", "--db", cli_files["v1"]], capsys), "two")
    assert cli_files["v1"].read_bytes() == before


def test_db_export(cli_files, capsys, tmp_path):
    out = tmp_path / "exp" / "h200.sqlite"
    assert_one_line_error(run_db(["export", out, "--db", cli_files["v1"]], capsys), "folder", "does not exist")
    assert not out.parent.exists()
    out.parent.mkdir()
    rc, stdout, err = run_db(["export", out, "--db", cli_files["v1"], "--gpu", "H200"], capsys)
    assert rc == 0 and err == "" and stdout == f"wrote 2 records to {out.resolve()}\n"
    rc, stdout, _ = run_db(["export", out, "--db", cli_files["v1"]], capsys)
    assert rc == 0 and "added 3, skipped 2 (already present)" in stdout
    before = cli_files["text"].read_bytes()
    assert_one_line_error(run_db(["export", cli_files["text"], "--db", cli_files["v1"]], capsys), "notes.txt")
    assert_one_line_error(run_db(["export", cli_files["foreign"], "--db", cli_files["v1"]], capsys),
                          "foreign.sqlite")
    assert cli_files["text"].read_bytes() == before


def test_db_merge(cli_files, capsys, monkeypatch, tmp_path):
    dst = tmp_path / "cache" / "tuning.sqlite"
    rc, out, err = run_db(["merge", cli_files["v1"], cli_files["b"]], capsys, env_db=dst, monkeypatch=monkeypatch)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{cli_files['v1']}: added 5, skipped 0 (already present), new best 4"
    assert lines[1].startswith(f"{cli_files['b']}: added 4, skipped 0 (already present), new best ")
    assert lines[2] == f"into {dst.resolve()}"
    first = dump(dst)
    rc, out, _ = run_db(["merge", cli_files["v1"], cli_files["b"], "--into", dst], capsys)
    assert rc == 0 and "added 0, skipped 5 (already present), new best 0" in out
    assert "added 0, skipped 4 (already present), new best 0" in out
    assert dump(dst) == first


@pytest.mark.parametrize("bad", ["foreign", "text", "newer", "missing", "corrupt"])
def test_db_merge_bad_source_writes_nothing(cli_files, capsys, tmp_path, bad):
    dst = tmp_path / "dst.sqlite"
    snap = {k: p.read_bytes() for k, p in cli_files.items() if p.exists()}
    assert_one_line_error(run_db(["merge", cli_files["b"], cli_files[bad], "--into", dst], capsys),
                          cli_files[bad].name)
    assert not dst.exists()
    assert {k: p.read_bytes() for k, p in cli_files.items() if p.exists()} == snap


def test_db_merge_into_a_missing_folder_is_refused(cli_files, capsys, tmp_path):
    dst = tmp_path / "new" / "dst.sqlite"
    assert_one_line_error(run_db(["merge", cli_files["b"], "--into", dst], capsys), "folder", "does not exist")
    assert not dst.parent.exists()


def test_db_merge_into_foreign_or_itself(cli_files, capsys):
    before = cli_files["foreign"].read_bytes()
    assert_one_line_error(run_db(["merge", cli_files["b"], "--into", cli_files["foreign"]], capsys), "foreign.sqlite")
    assert cli_files["foreign"].read_bytes() == before
    assert_one_line_error(run_db(["merge", cli_files["a"], "--into", cli_files["a"]], capsys), "itself")


def test_db_needs_a_subcommand(capsys):
    assert_one_line_error(run_db([], capsys), "required")
    assert_one_line_error(run_db(["frobnicate"], capsys), "frobnicate")
