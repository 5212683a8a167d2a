"""A Record with plausible values, for the database tests (one definition shared by the test modules)."""
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from sparse_autotune.store.db import SCHEMA_VERSION, Record, TuningDB

GPU = "NVIDIA H100 80GB HBM3"
# a whole csr_rowsplit config, for tests that look records up (lookup passes over configs that cannot run)
CONFIG = {"rows_per_block": 8, "lanes_per_row": 8, "vec": 4, "cols_per_thread": 1, "unroll": 4, "stage": "none",
          "row_order": "natural", "raster": "rows_first", "index_bits": 32, "split": 0, "acc": "f32"}
KEY = dict(m=512, k=2048, n=256, density=0.1, dtype="fp32")


def sql(path: Path, query: str, args=()):
    """The rows of a query on a database file, opened read-only (the file is left as it is)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def new_db(path: Path, *records: Record) -> Path:
    """A tuning database at `path` holding `records` (each stored as the tuner stores one)."""
    db = TuningDB(path)
    for r in records:
        db.store(r)
    db.dispose()
    return path


def make_record(time_us: float, config: dict | None = None, **over) -> Record:
    fields = dict(gpu_name=GPU, gpu_cc="9.0", pattern="uniform", family="csr_rowsplit",
                  config_json=json.dumps(config or {"rows_per_block": 8, "vec": 4}, sort_keys=True),
                  time_us=time_us, gflops=1000.0, cusparse_us=20.0, cublas_fp32_us=30.0, cublas_tf32_us=None,
                  cublas_fp16_us=None, floor_us=3.0, max_rel_err=1e-6, trials=50, matrix_hash="0123456789abcdef",
                  study_name="study", package_version="0.1.0", cuda_version="13.0", driver_version="580.0",
                  cupy_version="14.0", created_at=dt.datetime(2025, 1, 1, 12, 0, 0), **KEY)
    fields.update(over)
    return Record(**fields)


def _downgrade(path: Path, version: int, drop: tuple[str, ...]) -> Path:
    """A current tuning database file as schema `version` wrote it: sat_records without the columns `drop` added
    after it (SQLite's ALTER TABLE ... DROP COLUMN, last column first), that schema_version, in DELETE journal mode
    (one file, as the shipped databases are). The older code created the very same table, less those last columns."""
    if sqlite3.sqlite_version_info < (3, 35, 0):
        pytest.skip(f"SQLite {sqlite3.sqlite_version} has no ALTER TABLE ... DROP COLUMN (3.35+)")
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT value FROM sat_meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        for col in drop:
            con.execute(f"ALTER TABLE sat_records DROP COLUMN {col}")
        con.execute("UPDATE sat_meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        con.commit()
        con.execute("PRAGMA journal_mode=DELETE")
    finally:
        con.close()
    return path


def downgrade_to_v2(path: Path) -> Path:
    """What schema version 2 wrote: no cublas_bf16_us (version 3), no layout (version 4), no op (version 5) and no
    cold_us (version 6)."""
    return _downgrade(path, 2, ("cold_us", "op", "layout", "cublas_bf16_us"))


def downgrade_to_v3(path: Path) -> Path:
    """What schema version 3 wrote: no layout (version 4; every record kn), no op (version 5), no cold_us (6)."""
    return _downgrade(path, 3, ("cold_us", "op", "layout"))


def downgrade_to_v4(path: Path) -> Path:
    """What schema version 4 wrote: no op (version 5; every record spmm) and no cold_us (version 6)."""
    return _downgrade(path, 4, ("cold_us", "op"))


def downgrade_to_v5(path: Path) -> Path:
    """What schema version 5 wrote: no cold_us (version 6; no record timed cold)."""
    return _downgrade(path, 5, ("cold_us",))
