"""The tuning database: best configs per (GPU, operator, M, K, N, density, dtype, pattern, layout), SQLite through
SQLAlchemy.

Tables: `sat_meta` (application marker and schema version) and `sat_records` (every stored result; the
fastest verified one per key has is_best = 1, the others are history).

"Fastest" is one rule, rank_us: a record's cold time (cold_us: its kernel timed with A read from HBM at every launch,
device.cold) where it was measured, else its warm time (time_us: CUDA-graph replay, A left in the L2 across launches).
Cold is what a model sees: in a decoding model the other layers' weights evict a layer's A between two calls, and the
warm ranking can prefer a kernel that is slower cold (H200, 4096 x 4096, N = 16: tc_gather 10.2 us warm / 14.4 cold
against tc_bitmap 10.6 / 11.0). A record without a cold time (stored before schema version 6, a vendor path not timed
cold, a tune with --rank warm) competes with its warm time. Every choice among the records of a key uses it: the best
flag (_rebest), best / best_sparse, db check's rules and lookup. Optuna's study tables may share the
file (the tuner keeps its studies there so a tune resumes). Every open goes through guard.py first: a file or URL that
is not a tuning database (or an empty one, or a storage of this project) is refused untouched, a read creates nothing
and leaves no side files, a new file is made only where its folder exists. SQLite files are opened for writing in WAL
mode with a busy timeout, and every write runs in a `BEGIN IMMEDIATE` transaction, so several processes can write at once without
losing records or flagging two bests; any SQLAlchemy URL (e.g. postgresql+psycopg://...) works too.

Schema versions (sat_meta.schema_version):
  1  the first release.
  2  adds sat_records.uid (a content hash of the record, unique: merges skip records already present) and
     sat_records.origin ("tune", or "merge:<source file name>"; NULL for records from before version 2).
  3  adds sat_records.cublas_bf16_us (cuBLAS BF16's time: the dense baseline of a bf16 problem; NULL for the other
     dtypes and for records from before version 3).
  4  adds sat_records.layout, part of the key: "kn" (C = A @ B, B K x N, C M x N; every record from before version 4)
     or "nk" (y = x @ A^T + bias as nn.Linear holds x and y: core.problem). A kn record keeps the uid it had.
  5  adds sat_records.op, part of the key: the operator, "spmm" (every record from before version 5) or "sddmm"
     (C = (X @ Y^T) at the nonzeros of a CSR mask S, scaled by S's values: ops.sddmm). An spmm record keeps its uid.
  6  adds sat_records.cold_us: the record's kernel timed with A from HBM (device.cold; a cuBLAS record of the problem's
     own precision: cuBLAS timed so); NULL where not measured (every record from before version 6). A measurement, not
     part of the record's identity: every record keeps its uid (record_uid), and `db set-cold` can fill it later.
A writable open migrates an older file in place, in one transaction, through every version in turn (1 -> 2 -> ... -> 6;
Alembic's Operations API; no Alembic version table: the version lives in sat_meta, and Optuna's own `alembic_version`
table is left alone). A read-only open (lookup, the source of db merge / export) reads an older file as it is, without
writing: the columns it lacks read as a migration would fill them (uid computed, layout "kn", op "spmm", the others
(cold_us among them) None).

The key's M, K, N are the product's dimensions, the output M x N and the reduction K, for both operators:
  spmm   C (M x N) = A (M x K, sparse) @ B (K x N): m, k = A's shape, n = B's columns; density = nnz / (M * K);
  sddmm  C = (X (M x K) @ Y^T (K x N)) at the nonzeros of the mask S (M x N): m, n = the mask's shape, k = the columns
         of X and Y; density = nnz / (M * N); layout "kn" (SDDMM has one layout); pattern: the mask's (uniform,
         powerlaw, or matrix for a given mask). Its baselines go to the same columns: cusparse_us (cusparseSDDMM, fp32
         and fp16), and the dense path (cuBLAS X @ Y^T then the mask) in the column of its precision: cublas_fp32_us,
         cublas_fp16_us or cublas_bf16_us; cublas_tf32_us is None.
  spmm_t C (K x N) = A^T @ B (M x N) for the stored A (M x K): m, k = A's stored shape (not the product's), n = N;
         density = nnz / (M * K); layout "kn"; cusparse_us: cusparseSpMM opA = TRANSPOSE (the fastest algorithm),
         cublas_<dtype>_us: cuBLAS on a dense copy of A^T. A family transpose+<spmm family> is an explicit transpose
         (a second copy of A: ops.spmm_t).
An operator's records never serve the other's problems: every read of a key (best, best_sparse, lookup's rows) names
its operator, spmm unless told.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import sqlite3
from collections import namedtuple
from collections.abc import Iterable, Mapping
from urllib.parse import quote
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (Boolean, Column, DateTime, Float, Integer, String, Text, and_, bindparam, create_engine,
                        event, func, inspect, or_, select, update)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, defer, mapped_column
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.pool import NullPool

from ..errors import UserError
from . import guard
from .guard import SQLITE_MAGIC, is_url, sqlite_uri  # noqa: F401 - also this module's API

APPLICATION = "sparse-autotune"
SCHEMA_VERSION = 6
V2_COLUMNS = ("uid", "origin")  # the columns schema version 2 added to sat_records
V3_COLUMNS = ("cublas_bf16_us",)  # the column schema version 3 added
V4_COLUMNS = ("layout",)  # the column schema version 4 added
V5_COLUMNS = ("op",)  # the column schema version 5 added
V6_COLUMNS = ("cold_us",)  # the column schema version 6 added
# every column added after version 1, in order
ADDED_COLUMNS = V2_COLUMNS + V3_COLUMNS + V4_COLUMNS + V5_COLUMNS + V6_COLUMNS
DEFAULT_LAYOUT = "kn"  # the layout of every record from before version 4
SPMM, SDDMM = "spmm", "sddmm"
SPMM_T = "spmm_t"  # C = A^T @ B from the stored A (ops.spmm_t): m, k = A's stored shape, n = N (as an spmm record's)
DEFAULT_OP = SPMM  # the operator of every record from before version 5
# The sparse 3x3 convolution (ops.conv), in the schema-5 columns (no migration): m = Cout, k = Cin, n = output pixels of
# all images (batch x Ho x Wo), density = nnz / (Cout * Cin * 9), layout = "nchw" / "nhwc", pattern =
# "<kind>@<H>x<W>b<batch>s<stride>" (the weight pattern's kind and the rest of the geometry: ops.conv.key_pattern); its
# baselines: cuDNN in the problem's layout at FP32 / TF32 / FP16 / BF16 in cublas_fp32_us .. cublas_bf16_us.
CONV3X3 = "conv3x3"
OPS = (SPMM, SDDMM, SPMM_T, CONV3X3)  # the operators a record can be of
DB_ENV = "SPARSE_AUTOTUNE_DB"
DENSITY_RTOL = 1e-3


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "sat_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Record(Base):
    __tablename__ = "sat_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # key
    gpu_name: Mapped[str] = mapped_column(String(128), index=True)
    gpu_cc: Mapped[str] = mapped_column(String(16))
    m: Mapped[int] = mapped_column(Integer, index=True)
    k: Mapped[int] = mapped_column(Integer, index=True)
    n: Mapped[int] = mapped_column(Integer)
    density: Mapped[float] = mapped_column(Float)
    dtype: Mapped[str] = mapped_column(String(8))
    pattern: Mapped[str] = mapped_column(String(32))
    # value
    family: Mapped[str] = mapped_column(String(64))
    config_json: Mapped[str] = mapped_column(Text)
    time_us: Mapped[float] = mapped_column(Float)
    gflops: Mapped[float] = mapped_column(Float)
    cusparse_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    cublas_fp32_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    cublas_tf32_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    cublas_fp16_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    floor_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_rel_err: Mapped[float] = mapped_column(Float)
    trials: Mapped[int] = mapped_column(Integer)
    matrix_hash: Mapped[str] = mapped_column(String(32))
    study_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    package_version: Mapped[str] = mapped_column(String(32))
    cuda_version: Mapped[str] = mapped_column(String(32))
    driver_version: Mapped[str] = mapped_column(String(64))
    cupy_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # schema versions 2 to 6 (last, in that order, so that a migrated table has the same column order as a new one)
    uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    origin: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cublas_bf16_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    layout: Mapped[str] = mapped_column(String(8), default=DEFAULT_LAYOUT, server_default=DEFAULT_LAYOUT)  # key
    op: Mapped[str] = mapped_column(String(16), default=DEFAULT_OP, server_default=DEFAULT_OP)  # key
    # the kernel timed with A from HBM (device.cold); None where not measured; ranks the record where set (rank_us)
    cold_us: Mapped[float | None] = mapped_column(Float, nullable=True)

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    def derived(self, **changes) -> "Record":
        """A new record with this one's columns and `changes`: no id, uid, origin or best flag of its own yet, and no
        cold time (cold_us measures this record's kernel, not the new one's: give it in `changes` where measured) (a
        vendor path's record beside the tuned kernel's: same key, baselines and provenance, its own family, config and
        time)."""
        keep = {c.key: getattr(self, c.key) for c in inspect(Record).column_attrs
                if c.key not in ("id", "uid", "origin", "is_best", "cold_us")}
        return Record(**{**keep, **changes})

    def to_dict(self) -> dict:
        """The columns (cuBLAS BF16's time next to the other baselines, the cold time after the time, the layout and the
        operator after the pattern), config parsed, created_at in ISO form."""
        keys = [c.key for c in inspect(type(self)).column_attrs
                if c.key not in ("cublas_bf16_us", "layout", "op", "cold_us")]
        keys.insert(keys.index("time_us") + 1, "cold_us")
        keys.insert(keys.index("cublas_fp16_us") + 1, "cublas_bf16_us")
        keys.insert(keys.index("pattern") + 1, "layout")
        keys.insert(keys.index("layout") + 1, "op")
        d = {k: getattr(self, k) for k in keys}
        d["op"] = op_of(self)
        d["config"] = self.config
        d.pop("config_json")
        d["created_at"] = self.created_at.isoformat(timespec="seconds")
        return d


@event.listens_for(Record, "before_insert")
def _fill_uid(_mapper, _connection, target: Record):
    if not target.uid:
        target.uid = record_uid(target)


def _naive_utc(t: _dt.datetime) -> _dt.datetime:
    """What the DateTime column stores and reads back: naive, in UTC (the tuner writes naive UTC times)."""
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return t


def layout_of(rec) -> str:
    """A record's layout (a Record or a mapping of its columns): kn where it has none (stored before version 4)."""
    get = rec.get if isinstance(rec, Mapping) else (lambda name: getattr(rec, name, None))
    return get("layout") or DEFAULT_LAYOUT


def op_of(rec) -> str:
    """A record's operator (a Record or a mapping of its columns): spmm where it has none (stored before version 5)."""
    get = rec.get if isinstance(rec, Mapping) else (lambda name: getattr(rec, name, None))
    return get("op") or DEFAULT_OP


def canonical_config(config_json) -> str:
    """A config's JSON text in one form (sorted keys, no spaces), to compare configs (and hash them: record_uid); text
    that is not JSON as it is."""
    try:
        return json.dumps(json.loads(config_json), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(config_json)


def record_uid(rec) -> str:
    """The stable identity of a record (a Record or a mapping of its columns): SHA-256 of its key (GPU, M, K, N,
    density, dtype, pattern; the layout only where it is nk, so a kn record has the uid it had before schema version
    4; the operator only where it is not spmm, so an spmm record has the uid it had before version 5), family, config
    (canonical JSON), time, creation time and matrix hash. Not the cold time (cold_us, schema version 6): a measurement
    that may be added later (`db set-cold`), so a record keeps its uid with or without it.

    It is computed from the values as the database stores them, so a record has the same uid in every file it is
    copied to: a merge skips records whose uid is already present, and merging a file twice changes nothing.
    """
    get = rec.get if isinstance(rec, Mapping) else (lambda name: getattr(rec, name))
    cfg = canonical_config(get("config_json"))
    created = get("created_at")
    if isinstance(created, str):
        created = _dt.datetime.fromisoformat(created)
    created = _naive_utc(created).isoformat(sep=" ", timespec="microseconds")
    payload = ["sat-record", str(get("gpu_name")), int(get("m")), int(get("k")), int(get("n")),
               float(get("density")), str(get("dtype")), str(get("pattern")), str(get("family")), cfg,
               float(get("time_us")), created, str(get("matrix_hash"))]
    if layout_of(rec) != DEFAULT_LAYOUT:
        payload.append(layout_of(rec))
    if op_of(rec) != DEFAULT_OP:
        payload.append(f"op:{op_of(rec)}")
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def is_timed(t) -> bool:
    """Whether t is a measured time: a positive finite number (not a bool)."""
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0


def rank_us(rec) -> float:
    """The time a record (a Record, a mapping of its columns, or any object with time_us and cold_us: tuning.vendor's
    Measured) is ranked by among the records of its key: its cold time (cold_us: A from HBM, what a model sees) where
    measured, else its warm time (time_us). The one rule of "fastest" in the store (the module docstring says why)."""
    get = rec.get if isinstance(rec, Mapping) else (lambda name: getattr(rec, name, None))
    cold = get("cold_us")
    return cold if is_timed(cold) else get("time_us")


def _assign_uids(rows: Iterable) -> list[str]:
    """uids for rows in id order; an exact duplicate (same content, e.g. a row copied twice into an old file) gets a
    uid derived from its rank among its copies, so that no row is dropped and the result is stable."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        base = record_uid(r)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else hashlib.sha256(f"{base}#{n}".encode()).hexdigest())
    return out


def is_verified(rec) -> bool:
    """A record may be the best of its key: its error is finite and within the dtype's tolerance (core.problem.TOLERANCE;
    a TF32 dense path's: core.vendor.tolerance) and its time is a positive finite number."""
    from ..core.problem import TOLERANCE  # noqa: PLC0415
    from ..core.vendor import tolerance  # noqa: PLC0415
    tol = TOLERANCE.get(rec.dtype)
    if tol is not None:  # a TF32 dense path (only where the user opted in) is held to what TF32 can reach
        tol = tolerance(rec.dtype, getattr(rec, "family", None), getattr(rec, "config_json", None))
    err, t = rec.max_rel_err, rec.time_us
    return (tol is not None and err is not None and t is not None and math.isfinite(err) and 0 <= err <= tol
            and math.isfinite(t) and t > 0)


def _safe_origin(origin: str | None) -> str | None:
    """origin keeps a file name, never a path (a value from elsewhere is cut down to its last component)."""
    if origin is None:
        return None
    kind, sep, rest = origin.partition(":")
    if sep and ("/" in rest or "\\" in rest):
        rest = rest.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return (kind + sep + rest)[:255]


def merge_origin(path: Path) -> str:
    return _safe_origin(f"merge:{Path(path).name}")


@dataclass(frozen=True)
class RecordFilter:
    """Which records `select_records` / `export` take. gpu: a case-insensitive substring of the GPU name. m, k: the
    shape of the sparse matrix (an spmm record's A, M x K; an sddmm record's mask, M x N: its m and n columns).
    op: the operator (spmm, sddmm; None: both)."""
    gpu: str | None = None
    m: int | None = None
    k: int | None = None
    dtype: str | None = None
    best_only: bool = False
    op: str | None = None

    @classmethod
    def of(cls, filters) -> "RecordFilter":
        """None, a RecordFilter, or a mapping with gpu, shape ("MxK" or (M, K)) or m/k, dtype, best_only, op."""
        if filters is None:
            return cls()
        if isinstance(filters, cls):
            return filters
        f = dict(filters)
        shape = f.pop("shape", None)
        if shape is not None:
            if isinstance(shape, str):
                from ..core.problem import parse_shape  # noqa: PLC0415
                shape = parse_shape(shape)
            f["m"], f["k"] = (int(x) for x in shape)
        unknown = set(f) - {"gpu", "m", "k", "dtype", "best_only", "op"}
        if unknown:
            raise UserError(f"unknown record filter(s): {', '.join(sorted(unknown))}")
        if f.get("op") is not None:
            check_op(f["op"])
        return cls(**f)


def check_op(op) -> str:
    """An operator name (OPS), else a one-line UserError."""
    if not isinstance(op, str) or op not in OPS:
        raise UserError(f"unknown operator {op!r}: choose one of {', '.join(OPS)}")
    return op


@dataclass(frozen=True)
class MergeResult:
    """What a merge (or an export) did: records added, skipped as already present (same uid), keys whose best is
    now an added record."""
    source: str
    target: str
    added: int
    skipped: int
    new_best: int
    created: bool = False  # export: the target is a new file


@dataclass(frozen=True)
class ColdTime:
    """A cold time to give the records of one key (TuningDB.set_cold) whose family and config are these."""
    gpu_name: str
    m: int
    k: int
    n: int
    dtype: str
    density: float
    pattern: str
    family: str
    config: dict
    cold_us: float
    layout: str = DEFAULT_LAYOUT
    op: str = DEFAULT_OP
    # the same run's warm time and verified error (a recold row's): what set_cold(add=True) needs to add a record of
    # a config the database does not hold yet
    time_us: float | None = None
    max_rel_err: float | None = None


@dataclass(frozen=True)
class SetColdResult:
    """What set_cold did: records whose cold_us it set (changed), records that had that cold time already, cold times
    that matched no record, keys touched, keys whose best is another record now, records added (add=True)."""
    set: int
    unchanged: int
    unmatched: int
    keys: int
    new_best: int
    added: int = 0


def default_db_path() -> Path:
    """$SPARSE_AUTOTUNE_DB, else <user cache dir>/sparse-autotune/tuning.sqlite."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs  # noqa: PLC0415
    return Path(platformdirs.user_cache_dir("sparse-autotune")) / "tuning.sqlite"


def check_file(path: Path) -> str:
    """Classify a file without writing to it or creating it (guard.survey): 'missing', 'empty' (0 bytes or no tables: a
    database without records), 'ours' (a tuning database), 'storage' (a scale-out storage of sparse-autotune without
    records); anything else is a UserError."""
    state = guard.survey(Path(path).expanduser()).state
    return "ours" if state == "tuning" else state


def _sqlite_pragmas(dbapi_con, _record):
    # pysqlite's own transaction handling is off; the "begin" listener below emits BEGIN (BEGIN IMMEDIATE for writes)
    dbapi_con.isolation_level = None
    cur = dbapi_con.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=30000")
        mode = cur.execute("PRAGMA journal_mode").fetchone()
        if mode and str(mode[0]).lower() != "wal":
            cur.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:
        pass  # a read-only file keeps its journal mode
    finally:
        cur.close()


def _sqlite_begin(conn: Connection):
    # A write transaction takes the write lock up front: two processes that both read the current best and then
    # insert would otherwise race (in WAL mode a deferred reader cannot upgrade after another commit, and without a
    # transaction around the read both could flag a best). Waiting writers queue on the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sat_write") else "BEGIN")


def _schema_state(conn: Connection) -> tuple[set, dict, set]:
    """(table names, sat_meta as a dict, sat_records' column names) through `conn`."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    meta = {}
    if "sat_meta" in tables:
        meta = {k: v for k, v in conn.execute(select(Meta.key, Meta.value))}
    cols = {c["name"] for c in insp.get_columns("sat_records")} if "sat_records" in tables else set()
    return tables, meta, cols


def _meta_version(meta: dict, label: str) -> int | None:
    if "schema_version" not in meta:
        return None
    try:
        return int(meta["schema_version"])
    except ValueError:
        raise UserError(f"database {label!r} has an unreadable schema version") from None


def _v1_columns():
    """sat_records' columns of schema version 1 (what a record's uid is computed from, and what every file has)."""
    return [c for c in Record.__table__.c if c.name not in ADDED_COLUMNS]


def _operations(conn: Connection):
    """Alembic's Operations on `conn`, and sat_records' current column names. No Alembic version table is written
    (the version lives in sat_meta)."""
    from alembic.migration import MigrationContext  # noqa: PLC0415
    from alembic.operations import Operations  # noqa: PLC0415
    ctx = MigrationContext.configure(connection=conn, opts={"version_table": "sat_alembic_version"})
    return Operations(ctx), {c["name"] for c in inspect(conn).get_columns("sat_records")}


def _migrate_to_2(conn: Connection):
    """Schema 1 -> 2 on `conn` (inside the caller's transaction): add uid and origin, fill uid for every row, then
    make uid NOT NULL with a unique index. Alembic's Operations in batch mode (SQLite recreates the table to change
    a column)."""
    op, cols = _operations(conn)
    with op.batch_alter_table("sat_records") as b:
        if "uid" not in cols:
            b.add_column(Column("uid", String(64), nullable=True))
        if "origin" not in cols:
            b.add_column(Column("origin", String(255), nullable=True))
    t = Record.__table__
    rows = conn.execute(select(*_v1_columns()).order_by(t.c.id)).mappings().all()
    if rows:
        conn.execute(update(t).where(t.c.id == bindparam("_id")).values(uid=bindparam("_uid")),
                     [{"_id": r["id"], "_uid": u} for r, u in zip(rows, _assign_uids(rows))])
    with op.batch_alter_table("sat_records") as b:
        b.alter_column("uid", existing_type=String(64), nullable=False)
        b.create_index("ix_sat_records_uid", ["uid"], unique=True)


def _migrate_to_3(conn: Connection):
    """Schema 2 -> 3 on `conn` (inside the caller's transaction): add cublas_bf16_us, NULL in every existing row (no
    record from before version 3 kept cuBLAS BF16's time). Alembic's Operations in batch mode, as _migrate_to_2."""
    op, cols = _operations(conn)
    if "cublas_bf16_us" not in cols:
        with op.batch_alter_table("sat_records") as b:
            b.add_column(Column("cublas_bf16_us", Float, nullable=True))


def _migrate_to_4(conn: Connection):
    """Schema 3 -> 4 on `conn` (inside the caller's transaction): add layout, NOT NULL, "kn" in every existing row
    (every record before version 4 is of the kn layout; their uids do not change: record_uid). Alembic's Operations in
    batch mode, as _migrate_to_2."""
    op, cols = _operations(conn)
    if "layout" not in cols:
        with op.batch_alter_table("sat_records") as b:
            b.add_column(Column("layout", String(8), nullable=False, server_default=DEFAULT_LAYOUT))


def _migrate_to_5(conn: Connection):
    """Schema 4 -> 5 on `conn` (inside the caller's transaction): add op, NOT NULL, "spmm" in every existing row (every
    record before version 5 is of SpMM; their uids do not change: record_uid). Alembic's Operations in batch mode, as
    _migrate_to_2."""
    op, cols = _operations(conn)
    if "op" not in cols:
        with op.batch_alter_table("sat_records") as b:
            b.add_column(Column("op", String(16), nullable=False, server_default=DEFAULT_OP))


def _migrate_to_6(conn: Connection):
    """Schema 5 -> 6 on `conn` (inside the caller's transaction): add cold_us, NULL in every existing row (no record
    from before version 6 was timed cold; their uids do not change: record_uid). Alembic's Operations in batch mode,
    as _migrate_to_2."""
    op, cols = _operations(conn)
    if "cold_us" not in cols:
        with op.batch_alter_table("sat_records") as b:
            b.add_column(Column("cold_us", Float, nullable=True))


# each step: the columns its version added, and the migration that adds them (run in this order, from the oldest)
MIGRATIONS = ((V2_COLUMNS, _migrate_to_2), (V3_COLUMNS, _migrate_to_3), (V4_COLUMNS, _migrate_to_4),
              (V5_COLUMNS, _migrate_to_5), (V6_COLUMNS, _migrate_to_6))


def _set_journal_mode(path: Path, mode: str):
    con = sqlite3.connect(sqlite_uri(path), uri=True, timeout=30)
    try:
        con.execute(f"PRAGMA journal_mode={mode}")
    except sqlite3.OperationalError:
        pass  # busy (another process has it open): it stays in WAL mode, which loses nothing
    finally:
        con.close()


def _no_nan(r: Record):
    """SQLite stores NaN as NULL, which the NOT NULL float columns refuse: a NaN time or error is stored as +inf
    (the record is kept, and stays unverified: it never becomes the best)."""
    for name in ("time_us", "gflops", "max_rel_err"):
        v = getattr(r, name)
        if isinstance(v, float) and math.isnan(v):
            setattr(r, name, math.inf)
    if r.cold_us is not None and not is_timed(r.cold_us):
        r.cold_us = None  # a cold time that is not a positive finite number was not measured


def _key_of(r: Record) -> tuple:
    return (r.gpu_name, r.m, r.k, r.n, r.density, r.dtype, r.pattern, layout_of(r), op_of(r))


def _copy(r: Record) -> Record:
    return Record(**{c.key: getattr(r, c.key) for c in inspect(Record).column_attrs if c.key != "id"})


class TuningDB:
    """Open (and create when `create`) a tuning database from a path or an SQLAlchemy URL.

    A writable open creates a new file in the current schema and migrates an older one in place; `readonly` opens a
    file without ever writing to it (an older schema is read as it is)."""

    def __init__(self, target: str | os.PathLike | None = None, create: bool = True, readonly: bool = False):
        target = str(target) if target is not None else str(default_db_path())
        self.readonly = readonly
        self._missing: frozenset = frozenset()  # ADDED_COLUMNS that a read-only older file lacks
        self._force_ro = False  # read-only file: mode=ro from now on (a writer appeared during an immutable read)
        t = guard.resolve(target)  # a path, an sqlite:/// URL naming a file (taken as its path), or another URL
        s = guard.survey(t)  # another application's file or tables, a newer schema...: UserError, untouched
        # a read-only open of an empty file or database, or of a storage without records: reads find no records
        self._empty = readonly and s.state != "tuning"
        self._label = t.label
        if t.path is None:
            self.url = t.url
            self.path = None
        else:
            self.path = t.path.expanduser().resolve()
            self._label = str(self.path)
            if s.state == "missing" and (readonly or not create):
                raise UserError(f"database {str(self.path)!r} does not exist")
            if s.state == "missing":
                guard.check_new_file(self.path)  # only where the folder exists (the default location's is made)
            if readonly:
                self.url = "sqlite://"  # connections come from guard.read_only_connect (creator below)
            else:
                # quoted twice: SQLAlchemy's URL parser decodes once, SQLite's URI parser once more
                self.url = f"sqlite:///{quote(sqlite_uri(self.path), safe='/:')}?uri=true"
        kwargs: dict = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        if readonly and self.path is not None:
            ro_path = self.path
            head = guard._header(ro_path)  # the journal mode, read once (not at every connection)
            # a connection per use (NullPool): each one picks its read-only mode from the file as it is then
            kwargs = {"creator": lambda: guard.read_only_connect(ro_path, self._force_ro, head), "poolclass": NullPool}
        try:
            self.engine: Engine = (guard.server_engine(self.url, **kwargs) if self.path is None
                                   else create_engine(self.url, **kwargs))
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise UserError(f"cannot open database {self._label!r}: {str(exc).splitlines()[0]}") from None
        if self.url.startswith("sqlite") and not readonly:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        if readonly:
            self._missing = frozenset() if self._empty else self._reading(self._missing_columns)
        else:
            self._init_schema()

    def _reading(self, fn):
        """fn() for a read; a read-only file that a writer touched while it was read immutably is read again through
        mode=ro (guard.read_sqlite says why)."""
        if not (self.readonly and self.path is not None) or self._force_ro:
            return fn()
        before = guard.file_stamp(self.path)
        try:
            result = fn()
        except SQLAlchemyError:
            if guard.file_stamp(self.path) == before:
                raise
            self._force_ro = True
            return fn()
        if guard.file_stamp(self.path) != before:
            self._force_ro = True
            return fn()
        return result

    # ---- schema -----------------------------------------------------------------------------------------

    def _missing_columns(self) -> frozenset:
        try:
            with self.engine.connect() as conn:
                _, _, cols = _schema_state(conn)
        except SQLAlchemyError:
            return frozenset()  # the queries report the problem
        return frozenset(c for c in ADDED_COLUMNS if cols and c not in cols)

    def _init_schema(self):
        """Create the tables of a new database, or migrate an older one: under the write lock, re-checked there (two
        processes opening the same new or old file at once create or migrate it once). A current file is not
        written to."""
        try:
            with self.engine.connect() as conn:
                tables, meta, cols = _schema_state(conn)
            version = _meta_version(meta, self.label)
            if version is not None and version > SCHEMA_VERSION:
                raise UserError(f"database {self.label!r} has a newer schema ({version}) than this sparse-autotune "
                                f"understands ({SCHEMA_VERSION}): upgrade sparse-autotune")
            if (version == SCHEMA_VERSION and "application" in meta and {"sat_meta", "sat_records"} <= tables
                    and set(ADDED_COLUMNS) <= cols):
                return
            with self._writing() as conn:
                tables, meta, cols = _schema_state(conn)
                version = _meta_version(meta, self.label)
                if version is not None and version > SCHEMA_VERSION:
                    raise UserError(f"database {self.label!r} has a newer schema ({version})")
                Base.metadata.create_all(conn)  # missing tables only: a new file gets the current schema directly
                for added, migrate in MIGRATIONS:  # an older table: every step it has not had, in turn
                    if "sat_records" in tables and not set(added) <= cols:
                        migrate(conn)
                mt = Meta.__table__
                if "application" not in meta:
                    conn.execute(mt.insert().values(key="application", value=APPLICATION))
                if "schema_version" not in meta:
                    conn.execute(mt.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif version != SCHEMA_VERSION:
                    conn.execute(update(mt).where(mt.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        except SQLAlchemyError as exc:
            raise UserError(f"cannot use database {self.label!r}: {str(exc).splitlines()[0]}") from None

    @contextlib.contextmanager
    def _writing(self):
        """A connection inside one write transaction (SQLite: BEGIN IMMEDIATE); commit at the end, rollback on error."""
        if self.readonly:
            raise UserError(f"database {self.label!r} is open read-only")
        with self.engine.connect() as conn:
            conn.execution_options(sat_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _write_session(self):
        with self._writing() as conn:
            with Session(bind=conn, expire_on_commit=False, join_transaction_mode="rollback_only") as s:
                yield s
                s.flush()

    @property
    def label(self) -> str:
        """The path, or the URL with its password hidden."""
        return self._label

    @property
    def source_name(self) -> str:
        """A name for this database in other files' origin column: the file name, never a path or a URL."""
        if self.path is not None:
            return self.path.name
        try:
            return Path(make_url(self.url).database or "database").name
        except (SQLAlchemyError, ValueError):
            return "database"

    # ---- writing ----------------------------------------------------------------------------------------

    def store(self, rec: Record) -> Record:
        """Insert a record (origin "tune" unless set). The fastest verified record of its key becomes the best, the
        others are history (see _rebest). A record whose uid is already stored is not inserted again: the stored one
        is returned, and `rec` gets its id and is_best."""
        rec.created_at = _naive_utc(rec.created_at) if rec.created_at is not None else \
            _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
        _no_nan(rec)
        if rec.origin is None:
            rec.origin = "tune"
        rec.origin = _safe_origin(rec.origin)
        if not rec.uid:
            rec.uid = record_uid(rec)
        try:
            with self._write_session() as s:
                existing = s.scalars(select(Record).where(Record.uid == rec.uid)).first()
                if existing is not None:
                    rec.id, rec.is_best = existing.id, existing.is_best
                    return existing
                rec.is_best = False
                s.add(rec)
                s.flush()
                self._rebest(s, rec)
        except SQLAlchemyError as exc:
            raise UserError(f"cannot write database {self.label!r}: {str(exc).splitlines()[0]}") from None
        return rec

    def _rebest(self, s: Session, rec: Record) -> Record | None:
        """Flag the best of rec's key: the fastest verified record by rank_us (its cold time where measured, else its
        warm time; a tie keeps the current best, else the oldest); every other record of the key is history. Returns the
        best, or None when no record of the key is verified."""
        rows = list(s.scalars(self._key_query(rec.gpu_name, rec.m, rec.k, rec.n, rec.density, rec.dtype,
                                              rec.pattern, layout_of(rec), op_of(rec))))
        verified = [r for r in rows if is_verified(r)]
        winner = None
        if verified:
            t = min(rank_us(r) for r in verified)
            tied = [r for r in verified if rank_us(r) == t]
            winner = next((r for r in tied if r.is_best), None) or min(tied, key=lambda r: r.id)
        for r in rows:
            if bool(r.is_best) != (r is winner):
                r.is_best = r is winner
        return winner

    def set_cold(self, times: Iterable[ColdTime], add: bool = False, same=None) -> SetColdResult:
        """Give every record of a ColdTime's key (densities within DENSITY_RTOL) with its family and config (compared in
        canonical JSON) that cold time, then re-flag the best of every key touched (rank_us). One transaction: all or
        nothing (a cold time that is not a positive number: UserError, nothing set). The records' uids do not change
        (record_uid leaves cold_us out).

        add: where the fastest (cold) kernel config of a key among `times` is one that no record of the key holds, and
        it carries its warm time and verified error (time_us, max_rel_err: a recold row's), it becomes a new record
        (origin "recold", no trials of its own), derived from the key's best (its baselines, matrix and provenance;
        Record.derived); a key without records gets none. Slower configs could not be the key's best: not added.

        same(family, dtype, config_json) -> str: the form in which two configs are compared (default their canonical
        JSON; `db set-cold` passes the family's normalized config, so that a record stored before a parameter existed
        matches a row that names the parameter's default)."""
        from ..core.vendor import is_vendor  # noqa: PLC0415
        same = same or (lambda family, dtype, config_json: canonical_config(config_json))
        n_set = unchanged = unmatched = added = 0
        before: dict[tuple, int | None] = {}  # key -> the id of its best before
        touched: dict[tuple, Record] = {}
        pending: dict[tuple, tuple] = {}  # add: a key's fastest timed config that no record holds
        fastest: dict[tuple, float] = {}  # a key's fastest kernel cold time of `times`

        def touch(s, q, r):  # the first record of a key set or added: the key's best before, to count changes
            key = _key_of(r)
            if key not in touched:
                touched[key] = r
                best = s.scalars(q.where(Record.is_best.is_(True))).first()
                before[key] = best.id if best is not None else None

        try:
            with self._write_session() as s:
                for c in times:
                    if not is_timed(c.cold_us):
                        raise UserError(f"cold time {c.cold_us!r} of {c.family} is not a positive number: nothing set")
                    q = self._key_query(c.gpu_name, c.m, c.k, c.n, c.density, c.dtype, c.pattern, c.layout, c.op)
                    cfg = canonical_config(json.dumps(c.config))
                    want = same(c.family, c.dtype, cfg)
                    rows = [r for r in s.scalars(q.where(Record.family == c.family).order_by(Record.id))
                            if same(r.family, r.dtype, r.config_json) == want]
                    k = (c.gpu_name, c.m, c.k, c.n, c.density, c.dtype, c.pattern, c.layout, c.op)
                    kernel = not is_vendor(c.family)
                    if kernel:
                        fastest[k] = min(fastest.get(k, c.cold_us), c.cold_us)
                    if not rows and add and kernel and is_timed(c.time_us) and c.max_rel_err is not None:
                        if k not in pending or c.cold_us < pending[k][0].cold_us:
                            pending[k] = (c, q, cfg)
                    unmatched += not rows
                    for r in rows:
                        touch(s, q, r)
                        if r.cold_us == c.cold_us:
                            unchanged += 1
                        else:
                            r.cold_us = c.cold_us
                            n_set += 1
                for k, (c, q, cfg) in pending.items():  # add: a key's fastest kernel, where no record holds it
                    if c.cold_us > fastest[k]:
                        continue
                    new = self._derive_timed(s, q, c, cfg)  # flagged not best: the key's best is still the old one
                    if new is not None:
                        added += 1
                        unmatched -= 1
                        touch(s, q, new)
                s.flush()
                new_best = 0
                for key, r in touched.items():
                    w = self._rebest(s, r)
                    new_best += (w.id if w is not None else None) != before[key]
        except SQLAlchemyError as exc:
            raise UserError(f"cannot write database {self.label!r}: {str(exc).splitlines()[0]}") from None
        return SetColdResult(n_set, unchanged, unmatched, len(touched), new_best, added)

    def _derive_timed(self, s: Session, q, c: ColdTime, cfg: str) -> Record | None:
        """set_cold(add=True)'s new record of c's config (None: c has no warm time or error, or is a vendor path's, or
        its key has no record to derive it from), stored in s and flushed."""
        from .. import __version__  # noqa: PLC0415
        from ..core.vendor import is_vendor  # noqa: PLC0415
        if is_vendor(c.family) or not is_timed(c.time_us) or c.max_rel_err is None:
            return None
        base = s.scalars(q.where(Record.is_best.is_(True))).first() or s.scalars(q.order_by(Record.id)).first()
        if base is None:
            return None
        flops = base.gflops * base.time_us  # GFLOP/s x us: the problem's flops (the same key) in kFLOP
        rec = base.derived(family=c.family, config_json=cfg, time_us=float(c.time_us), gflops=flops / c.time_us,
                           max_rel_err=float(c.max_rel_err), trials=0, study_name=None, cold_us=float(c.cold_us),
                           package_version=__version__,
                           created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
        rec.origin, rec.is_best = "recold", False
        rec.uid = record_uid(rec)
        _no_nan(rec)
        s.add(rec)
        s.flush()
        return rec

    def merge_from(self, other_path) -> MergeResult:
        """Merge every record of another tuning database (a file, or a URL) into this one, in one transaction. The
        source is read without writing to it (an older schema is read as it is); an empty file is a database without
        records (nothing is added). Records already present (same uid) are skipped; the others are added with origin
        "merge:<source file name>", keyed to their own GPU, and each touched key's best is the fastest verified record.
        Nothing is ever deleted."""
        t, _ = guard.for_read(other_path)  # missing, foreign, newer: UserError
        if t.path is not None:
            src = t.path.expanduser().resolve()
            if self.path is not None and (src == self.path or (self.path.exists() and os.path.samefile(src, self.path))):
                raise UserError(f"cannot merge database {str(src)!r} into itself")
        sdb = TuningDB(t.given if t.path is None else src, create=False, readonly=True)
        try:
            records = sdb.records()
        finally:
            sdb.dispose()
        return self._merge_records(records, merge_origin(Path(sdb.source_name)), sdb.label)

    def _merge_records(self, records: Iterable[Record], origin: str | None, source: str) -> MergeResult:
        """Add copies of `records` whose uid is not present yet (origin: this value, or None to keep theirs), then
        re-flag the best of every key that got a record. One transaction."""
        added: list[Record] = []
        skipped = 0
        try:
            with self._write_session() as s:
                have = set(s.scalars(select(Record.uid)))
                for r in records:
                    uid = r.uid or record_uid(r)
                    if uid in have:
                        skipped += 1
                        continue
                    have.add(uid)
                    c = _copy(r)
                    _no_nan(c)
                    c.uid = uid
                    c.origin = origin if origin is not None else _safe_origin(r.origin)
                    c.is_best = False
                    s.add(c)
                    added.append(c)
                s.flush()
                keys: dict[tuple, Record] = {}
                for c in added:
                    keys.setdefault(_key_of(c), c)
                fresh = {id(c) for c in added}
                winners = (self._rebest(s, c) for c in keys.values())
                new_best = {w.id for w in winners if w is not None and id(w) in fresh}
        except SQLAlchemyError as exc:
            raise UserError(f"cannot write database {self.label!r}: {str(exc).splitlines()[0]}") from None
        return MergeResult(source, self.label, len(added), skipped, len(new_best))

    def export(self, out_path, filters=None) -> MergeResult:
        """Write the selected records (RecordFilter.of(filters); all records by default) to a self-contained tuning
        database file: the current schema (from an older source too), the records with their provenance columns, no
        Optuna tables, one file (DELETE journal mode). A missing (or empty) OUT is created; an OUT that is a tuning
        database gets the records merged into it (as merge_from); any other existing file is refused untouched."""
        flt = RecordFilter.of(filters)
        t = guard.resolve(out_path)
        if t.path is None:
            raise UserError(f"export writes a file, not a database URL ({t.label!r})")
        out = t.path.expanduser().resolve()
        if self.path is not None and (out == self.path or (out.exists() and os.path.samefile(out, self.path))):
            raise UserError(f"cannot export database {str(out)!r} onto itself")
        state = check_file(out)  # a foreign, non-SQLite or newer file: UserError, untouched
        if state == "missing":
            guard.check_new_file(out, make_folder=False)  # a new file only where its folder exists
        records = self.select_records(flt)
        if state in ("ours", "storage"):
            with open(out, "rb") as fh:
                rollback_journal = fh.read(20)[18] == 1  # header byte 18: 1 = rollback journal, 2 = WAL
            dst = TuningDB(out)
            try:
                return dst._merge_records(records, merge_origin(Path(self.source_name)), self.label)
            finally:
                dst.dispose()
                if rollback_journal:  # a shared single-file export stays one (no -wal next to it)
                    _set_journal_mode(out, "DELETE")
        tmp = out.with_name(f".{out.name}.{os.getpid()}.export-tmp")
        sidecars = [tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")]
        for p in sidecars:
            p.unlink(missing_ok=True)
        try:
            dst = TuningDB(tmp)
            try:
                res = dst._merge_records(records, None, self.label)
            finally:
                dst.dispose()
            _set_journal_mode(tmp, "DELETE")  # one self-contained file, no -wal to carry along
            if state == "empty":
                os.replace(tmp, out)
            else:
                try:
                    os.link(tmp, out)  # never replaces a file that appeared meanwhile
                except FileExistsError:
                    raise UserError(f"{str(out)!r} appeared while exporting: not overwritten") from None
                except OSError:
                    if out.exists():
                        raise UserError(f"{str(out)!r} appeared while exporting: not overwritten") from None
                    os.replace(tmp, out)
        except OSError as exc:
            raise UserError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
        finally:
            for p in sidecars:
                p.unlink(missing_ok=True)
        return MergeResult(res.source, str(out), res.added, res.skipped, res.new_best, created=True)

    # ---- reading ----------------------------------------------------------------------------------------

    @staticmethod
    def _key_query(gpu, m, k, n, density, dtype, pattern=None, layout=None, op=None):
        """The records of a key (layout / op None: any layout / operator; a file without the layout or op column holds
        kn / spmm records only: filter with _layout_query there)."""
        # densities match within 0.1 %: a matrix of requested density d has round(d*M*K)/(M*K) nonzeros
        q = select(Record).where(Record.m == m, Record.k == k, Record.n == n, Record.dtype == dtype,
                                 Record.density.between(density * (1 - DENSITY_RTOL), density * (1 + DENSITY_RTOL)))
        if gpu is not None:
            q = q.where(Record.gpu_name == gpu)
        if pattern is not None:
            q = q.where(Record.pattern == pattern)
        if layout is not None:
            q = q.where(Record.layout == layout)
        if op is not None:
            q = q.where(Record.op == op)
        return q

    def _op_query(self, q, op: str | None):
        """q restricted to records of the operator `op` (None: any), or None where this file can have none (a read-only
        file from before schema version 5 holds spmm records only, without the column)."""
        if op is None:
            return q
        if "op" in self._missing:
            return q if op == DEFAULT_OP else None
        return q.where(Record.op == op)

    def _layout_query(self, q, layout: str, op: str | None = DEFAULT_OP):
        """q restricted to records of `layout` and of the operator `op` (spmm by default; None: any), or None where this
        file can have none (a read-only file from before schema version 4 holds kn records only, from before version 5
        spmm records only, without the columns)."""
        if "layout" in self._missing:
            q = q if layout == DEFAULT_LAYOUT else None
        else:
            q = q.where(Record.layout == layout)
        return None if q is None else self._op_query(q, op)

    def _query(self, s: Session, q, full_uids: bool = False) -> list[Record]:
        """Run a select(Record); on a read-only older file the columns it lacks (self._missing) are not selected: uid
        is computed (as the migration would set it; `full_uids` numbers exact duplicates the same way too), the others
        (origin, cublas_bf16_us) are None."""
        if not self._missing:
            return list(s.scalars(q))
        rows = list(s.scalars(q.options(*(defer(getattr(Record, c)) for c in self._missing))))
        uids = {}
        if full_uids and "uid" in self._missing:
            t = Record.__table__
            every = s.execute(select(*_v1_columns()).order_by(t.c.id)).mappings().all()
            uids = {r["id"]: u for r, u in zip(every, _assign_uids(every))}
        for r in rows:  # the uid last: it is computed from the others (layout among them)
            for c in sorted(self._missing, key=lambda c: c == "uid"):
                value = {"layout": DEFAULT_LAYOUT, "op": DEFAULT_OP}.get(c)
                set_committed_value(r, c, (uids.get(r.id) or record_uid(r)) if c == "uid" else value)
        return rows

    def best(self, m, k, n, density, dtype, gpu=None, pattern=None, layout: str = DEFAULT_LAYOUT,
             op: str = DEFAULT_OP) -> Record | None:
        """The fastest (rank_us) best-flagged record for the exact key (any GPU / pattern where None) of the operator
        `op`."""
        q = self._layout_query(self._key_query(gpu, m, k, n, density, dtype, pattern), layout, op)
        if self._empty or q is None:
            return None
        q = q.where(Record.is_best.is_(True))

        def read():
            with Session(self.engine, expire_on_commit=False) as s:
                rows = self._query(s, q)  # one per GPU / pattern at most: ranked here by rank_us
                return min(rows, key=lambda r: (rank_us(r), r.id), default=None)
        try:
            return self._reading(read)
        except SQLAlchemyError as exc:
            raise UserError(f"cannot read database {self.label!r}: {str(exc).splitlines()[0]}") from None

    def best_sparse(self, m, k, n, density, dtype, gpu=None, pattern=None,
                    layout: str = DEFAULT_LAYOUT, op: str = DEFAULT_OP) -> Record | None:
        """The fastest (rank_us) verified record of a kernel family (not a vendor path, core.vendor) for the exact key
        of the operator `op`: the tuned kernel's own figure where a vendor record is the key's best."""
        q = self._layout_query(self._key_query(gpu, m, k, n, density, dtype, pattern), layout, op)
        if self._empty or q is None:
            return None
        from ..core.vendor import OTHER_OP_VENDORS, VENDOR_FAMILIES  # noqa: PLC0415
        q = q.where(Record.family.not_in(VENDOR_FAMILIES + OTHER_OP_VENDORS))

        def read():
            with Session(self.engine, expire_on_commit=False) as s:
                rows = [r for r in self._query(s, q) if is_verified(r)]
                return min(rows, key=lambda r: (rank_us(r), r.id), default=None)
        try:
            return self._reading(read)
        except SQLAlchemyError as exc:
            raise UserError(f"cannot read database {self.label!r}: {str(exc).splitlines()[0]}") from None

    def select_records(self, filters=None) -> list[Record]:
        """Records matching RecordFilter.of(filters), in id order."""
        flt = RecordFilter.of(filters)
        q = select(Record)
        if flt.gpu:
            q = q.where(func.lower(Record.gpu_name).contains(flt.gpu.lower(), autoescape=True))
        q = self._op_query(q, flt.op)
        if q is None:  # sddmm records asked of a read-only file from before schema version 5: it has none
            return []
        if flt.m is not None:
            q = q.where(Record.m == flt.m)
        if flt.k is not None:  # the sparse matrix's columns: A's K, or an sddmm mask's N
            if "op" in self._missing:
                q = q.where(Record.k == flt.k)
            else:
                q = q.where(or_(and_(Record.op != SDDMM, Record.k == flt.k), and_(Record.op == SDDMM, Record.n == flt.k)))
        if flt.dtype:
            q = q.where(Record.dtype == flt.dtype)
        if flt.best_only:
            q = q.where(Record.is_best.is_(True))
        if self._empty:
            return []

        def read():
            with Session(self.engine, expire_on_commit=False) as s:
                return self._query(s, q.order_by(Record.id), full_uids=True)
        try:
            return self._reading(read)
        except SQLAlchemyError as exc:
            raise UserError(f"cannot read database {self.label!r}: {str(exc).splitlines()[0]}") from None

    def records(self) -> list[Record]:
        return self.select_records()

    def get(self, record_id: int) -> Record | None:
        if self._empty or not isinstance(record_id, int) or not 0 < record_id < 2**63:
            return None  # no such id (SQLite's ids are positive 64-bit integers)

        def read():
            with Session(self.engine, expire_on_commit=False) as s:
                rows = self._query(s, select(Record).where(Record.id == record_id), full_uids=True)
                return rows[0] if rows else None
        try:
            return self._reading(read)
        except SQLAlchemyError as exc:
            raise UserError(f"cannot read database {self.label!r}: {str(exc).splitlines()[0]}") from None

    def dispose(self):
        self.engine.dispose()


_Row = namedtuple("_Row", "id gpu_name m k n density dtype pattern time_us max_rel_err is_best family config_json "
                          "layout op cold_us")


def _consistency(con: sqlite3.Connection) -> list[str]:
    """What is wrong with the records of a tuning database, as the store keeps them: one best per key (densities within
    DENSITY_RTOL are one key), the best verified and the fastest verified record of its key (rank_us), and a best
    wherever a key has a verified record. Empty when all holds."""
    cols = {r[1] for r in con.execute("PRAGMA table_info(sat_records)")}
    if not cols:
        return []
    layout = "layout" if "layout" in cols else f"'{DEFAULT_LAYOUT}'"  # a file from before schema 4: all kn
    op = "op" if "op" in cols else f"'{DEFAULT_OP}'"  # a file from before schema 5: all spmm
    cold = "cold_us" if "cold_us" in cols else "NULL"  # a file from before schema 6: no cold times
    rows = con.execute("SELECT id, gpu_name, m, k, n, density, dtype, pattern, time_us, max_rel_err, is_best, family, "
                       f"config_json, {layout}, {op}, {cold} FROM sat_records ORDER BY id").fetchall()

    groups: dict[tuple, list[_Row]] = {}
    for row in rows:
        r = _Row(*row)
        groups.setdefault((r.gpu_name, r.m, r.k, r.n, r.dtype, r.pattern, r.layout, r.op), []).append(r)
    problems: list[str] = []
    for g in groups.values():
        for r in g:
            near = [x for x in g if abs(x.density - r.density) <= r.density * DENSITY_RTOL]
            bests = [x for x in near if x.is_best]
            verified = [x for x in near if is_verified(x)]
            key = f"{r.gpu_name} {r.m}x{r.k} N={r.n} d={r.density:g} {r.dtype} {r.pattern}" + (
                f" {r.layout}" if r.layout != DEFAULT_LAYOUT else "") + (f" {r.op}" if r.op != DEFAULT_OP else "")
            if r.is_best and not is_verified(r):
                problems.append(f"record {r.id} is the best of its key but not verified")
            if r.is_best and len(bests) > 1 and r.id == min(x.id for x in bests):
                problems.append(f"{len(bests)} records are the best of one key ({key}): "
                                f"{', '.join(str(x.id) for x in bests)}")
            if r.is_best and verified and min(rank_us(x) for x in verified) < rank_us(r):
                faster = min(verified, key=rank_us)
                problems.append(f"record {r.id} is the best of its key, but record {faster.id} is faster")
            if verified and not bests and r.id == min(x.id for x in near):
                problems.append(f"no best record for a key with verified records ({key})")
    return list(dict.fromkeys(problems))


def describe_file(path) -> dict:
    """What `db check` reports about a file, read without writing: what it is (guard.survey: a tuning database, an empty
    file, a scale-out storage), schema version, record and best counts, GPUs, Optuna studies, and `problems`: SQLite's
    quick_check and the store's own rules (_consistency); empty when the file is clean. UserError (one line) for a
    missing, foreign, corrupt or newer file."""
    t = guard.resolve(path)
    if t.path is None:
        raise UserError(f"db check reads a file, not a database URL ({t.label!r})")
    path = t.path
    s = guard.survey(path)
    if s.state == "missing":
        raise UserError(f"database {str(path)!r} does not exist")
    info = {"path": str(path), "state": s.state, "schema_version": s.schema_version, "current_version": SCHEMA_VERSION,
            "needs_migration": False, "records": 0, "best": 0, "gpus": [], "studies": 0, "queue": 0,
            "problems": []}
    if s.state == "empty":
        return info

    def read(con):
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        out = {"integrity": [r[0] for r in con.execute("PRAGMA quick_check")]}
        if "sat_records" in tables:
            out["records"] = con.execute("SELECT count(*) FROM sat_records").fetchone()[0]
            out["best"] = con.execute("SELECT count(*) FROM sat_records WHERE is_best").fetchone()[0]
            out["gpus"] = [r[0] for r in con.execute("SELECT DISTINCT gpu_name FROM sat_records ORDER BY gpu_name")]
            out["consistency"] = _consistency(con)
        if "studies" in tables:
            out["studies"] = con.execute("SELECT count(*) FROM studies").fetchone()[0]
        if "sa_queue" in tables:
            out["queue"] = con.execute("SELECT count(*) FROM sa_queue").fetchone()[0]
        return out

    try:
        got = guard.read_sqlite(path, read)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"database {str(path)!r} cannot be read as SQLite: {str(exc).splitlines()[0]}") from None
    problems = [] if got["integrity"] == ["ok"] else [f"SQLite: {x}" for x in got["integrity"][:5]]
    problems += got.get("consistency", [])
    info.update({k: got[k] for k in ("records", "best", "gpus", "studies", "queue") if k in got})
    info["problems"] = problems
    if s.state == "tuning":
        info["needs_migration"] = (s.schema_version or 0) < SCHEMA_VERSION
    return info
