"""The tuning database: best configs per (GPU, M, K, N, density, dtype, pattern), SQLite through SQLAlchemy.

Tables: `sat_meta` (application marker and schema version) and `sat_records` (every stored result; the
fastest verified one per key has is_best = 1, the others are history). Optuna's study tables may share the
file (the tuner keeps its studies there so a tune resumes). SQLite files are opened in WAL mode with a busy
timeout so several processes can write; any SQLAlchemy URL (e.g. postgresql+psycopg://...) works too.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
from urllib.parse import quote
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (Boolean, DateTime, Float, Integer, String, Text, create_engine, event, inspect,
                        select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import UserError

APPLICATION = "sparse-autotune"
SCHEMA_VERSION = 1
DB_ENV = "SPARSE_AUTOTUNE_DB"
SQLITE_MAGIC = b"SQLite format 3\x00"
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

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    def to_dict(self) -> dict:
        d = {c.key: getattr(self, c.key) for c in inspect(type(self)).column_attrs}
        d["config"] = self.config
        d.pop("config_json")
        d["created_at"] = self.created_at.isoformat(timespec="seconds")
        return d


def default_db_path() -> Path:
    """$SPARSE_AUTOTUNE_DB, else <user cache dir>/sparse-autotune/tuning.sqlite."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs  # noqa: PLC0415
    return Path(platformdirs.user_cache_dir("sparse-autotune")) / "tuning.sqlite"


def is_url(target: str) -> bool:
    return "://" in str(target)


def sqlite_uri(path: Path, mode: str | None = None, immutable: bool = False) -> str:
    """A `file:` URI for sqlite3 with the path percent-quoted ('?', '#', '%' in names stay part of the path)."""
    q = [f"mode={mode}"] if mode else []
    if immutable:
        q.append("immutable=1")
    return f"file:{quote(str(path))}" + (f"?{'&'.join(q)}" if q else "")


def _read_only_connect(path: Path) -> sqlite3.Connection:
    """Open read-only; a WAL file in a folder the user cannot write needs immutable=1 (no -shm/-wal files)."""
    con = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError:
        con.close()
        return sqlite3.connect(sqlite_uri(path, "ro", immutable=True), uri=True)


def check_file(path: Path) -> str:
    """Classify a file without writing to it: 'missing', 'empty', 'ours', or raise UserError."""
    if not path.exists():
        return "missing"
    if path.is_dir():
        raise UserError(f"database {str(path)!r} is a directory, not a tuning database file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UserError(f"database {str(path)!r} cannot be read: {exc.strerror}") from None
    if len(head) == 0:
        return "empty"
    if head != SQLITE_MAGIC:
        raise UserError(f"database {str(path)!r} is not a tuning database (not an SQLite file)")
    try:
        con = _read_only_connect(path)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return "empty"
            if "sat_meta" not in tables:
                raise UserError(f"database {str(path)!r} is not a tuning database (an SQLite file of another application)")
            meta = dict(con.execute("SELECT key, value FROM sat_meta").fetchall())
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"database {str(path)!r} cannot be read as SQLite: {exc}") from None
    if meta.get("application") != APPLICATION:
        raise UserError(f"database {str(path)!r} is not a tuning database (sat_meta names {meta.get('application')!r})")
    try:
        version = int(meta.get("schema_version", "0"))
    except ValueError:
        raise UserError(f"database {str(path)!r} has an unreadable schema version") from None
    if version > SCHEMA_VERSION:
        raise UserError(f"database {str(path)!r} has schema version {version}, newer than this sparse-autotune "
                        f"understands ({SCHEMA_VERSION}): upgrade sparse-autotune")
    return "ours"


def _sqlite_pragmas(dbapi_con, _record):
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


class TuningDB:
    """Open (and create when `create`) a tuning database from a path or an SQLAlchemy URL."""

    def __init__(self, target: str | os.PathLike | None = None, create: bool = True, readonly: bool = False):
        target = str(target) if target is not None else str(default_db_path())
        self.readonly = readonly
        if is_url(target):
            self.url = target
            self.path = None
        else:
            self.path = Path(target).expanduser().resolve()
            state = check_file(self.path)
            if state == "missing" and not create:
                raise UserError(f"database {str(self.path)!r} does not exist")
            if state == "missing":
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise UserError(f"cannot create the folder for database {str(self.path)!r}: {exc.strerror}") from None
            if readonly:
                self.url = "sqlite://"  # connections come from _read_only_connect (creator below)
            else:
                # quoted twice: SQLAlchemy's URL parser decodes once, SQLite's URI parser once more
                self.url = f"sqlite:///{quote(sqlite_uri(self.path), safe='/:')}?uri=true"
        kwargs = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        if readonly and self.path is not None:
            ro_path = self.path
            kwargs = {"creator": lambda: _read_only_connect(ro_path)}
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise UserError(f"cannot open database {target!r}: {str(exc).splitlines()[0]}") from None
        if self.url.startswith("sqlite") and not readonly:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if not readonly:
            self._init_schema()

    def _init_schema(self):
        try:
            Base.metadata.create_all(self.engine)
            with Session(self.engine) as s, s.begin():
                meta = {m.key: m for m in s.scalars(select(Meta))}
                if "application" not in meta:
                    s.add(Meta(key="application", value=APPLICATION))
                if "schema_version" not in meta:
                    s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(meta["schema_version"].value) > SCHEMA_VERSION:
                    raise UserError(f"database {self.url!r} has a newer schema ({meta['schema_version'].value})")
        except SQLAlchemyError as exc:
            raise UserError(f"cannot use database {self.url!r}: {str(exc).splitlines()[0]}") from None

    @property
    def label(self) -> str:
        return str(self.path) if self.path else self.url

    def store(self, rec: Record) -> Record:
        """Insert a verified record; it becomes the best for its key if it is faster than the best so far."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            best = s.scalars(self._key_query(rec.gpu_name, rec.m, rec.k, rec.n, rec.density, rec.dtype,
                                             rec.pattern).where(Record.is_best.is_(True))).first()
            if best is None or rec.time_us < best.time_us:
                if best is not None:
                    best.is_best = False
                rec.is_best = True
            else:
                rec.is_best = False
            s.add(rec)
        return rec

    @staticmethod
    def _key_query(gpu, m, k, n, density, dtype, pattern=None):
        # densities match within 0.1 %: a matrix of requested density d has round(d*M*K)/(M*K) nonzeros
        q = select(Record).where(Record.m == m, Record.k == k, Record.n == n, Record.dtype == dtype,
                                 Record.density.between(density * (1 - DENSITY_RTOL), density * (1 + DENSITY_RTOL)))
        if gpu is not None:
            q = q.where(Record.gpu_name == gpu)
        if pattern is not None:
            q = q.where(Record.pattern == pattern)
        return q

    def best(self, m, k, n, density, dtype, gpu=None, pattern=None) -> Record | None:
        """The fastest best-flagged record for the exact key (any GPU / pattern where None)."""
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                q = self._key_query(gpu, m, k, n, density, dtype, pattern).where(Record.is_best.is_(True))
                return s.scalars(q.order_by(Record.time_us)).first()
        except SQLAlchemyError as exc:
            raise UserError(f"cannot read database {self.label!r}: {str(exc).splitlines()[0]}") from None

    def records(self) -> list[Record]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(Record).order_by(Record.id)))

    def dispose(self):
        self.engine.dispose()
