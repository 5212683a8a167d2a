"""The guard in front of every database and storage argument (a file path or an SQLAlchemy URL).

Before anything opens a target for real, `survey` says what it is, reading it without writing to it and creating
nothing: an SQLite file through a read-only connection (below), a server database through one connection that lists
its tables. A target is one of

  missing  no such file (a path, or an sqlite:/// URL naming a file that does not exist);
  empty    a 0-byte file, an SQLite file without tables, or a server database without tables: a database without
           records. Reads find no records in it; the first write (tune, db merge --into, db export) makes it a tuning
           database, exactly as it makes a new file one;
  tuning   a tuning database of sparse-autotune: its sat_meta table names the application, with a schema version this
           version understands. It may also hold the tuner's Optuna studies, the scale-out queue and tune-model's layers;
  storage  a scale-out storage of sparse-autotune without records: its queue tables (sa_queue, sa_workers) and/or
           Optuna tables whose studies are named the way the tuner names them.

Anything else is refused with a UserError (one line) and left as it was: another application's file or tables (also
an Optuna storage of another application, or a sat_meta that names another application), a text or corrupt file, a
newer schema, a directory, an unreadable file, a URL that does not parse, a missing database driver, a server that
cannot be reached.

`for_read` and `for_write` add the rules of the commands that read and write: a read never creates anything (a
missing target is refused); a write creates a new file only where its folder exists, except the default location
($SPARSE_AUTOTUNE_DB, else the user cache file), whose folder is created.

Read-only SQLite opens leave no side files (-wal, -shm) and work in read-only folders and file systems
(`read_only_uri`): the databases shipped in the package's db/ folder are opened with `immutable=1` (they never
change); a file in rollback-journal mode with `mode=ro` (a reader of such a file creates nothing); a file in WAL mode
whose -wal file is absent (its last writer checkpointed and closed it: the file alone is the whole database) with
`immutable=1`, re-read with `mode=ro` if a writer appeared while it was read (`read_sqlite`); a WAL file whose -wal
exists (a writer has it open) with `mode=ro`, which uses that writer's side files.
"""
from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import UserError

SQLITE_MAGIC = b"SQLite format 3\x00"
TUNING_TABLES = frozenset({"sat_meta", "sat_records", "sat_model_layers", "sat_alembic_version"})
QUEUE_TABLES = frozenset({"sa_queue", "sa_workers"})
OPTUNA_TABLES = frozenset({"studies", "study_directions", "study_user_attributes", "study_system_attributes",
                           "trials", "trial_user_attributes", "trial_system_attributes", "trial_params",
                           "trial_values", "trial_intermediate_values", "trial_heartbeats", "version_info",
                           "alembic_version"})
KNOWN_TABLES = TUNING_TABLES | QUEUE_TABLES | OPTUNA_TABLES
# the tuner's study names: "<problem key>|<GPU>|<matrix fingerprint>", the key "M512_K2048_N256_d0.1_fp32_uniform"
STUDY_NAME = re.compile(r"M\d+_K\d+_N\d+_d[^|]*\|")
URL_EXAMPLES = "e.g. postgresql+psycopg://user:password@host:5432/dbname or sqlite:///path/to/file.sqlite"


def is_url(target) -> bool:
    return "://" in str(target)


def sqlite_uri(path: Path, mode: str | None = None, immutable: bool = False) -> str:
    """A `file:` URI for sqlite3 with the path percent-quoted ('?', '#', '%' in names stay part of the path)."""
    q = [f"mode={mode}"] if mode else []
    if immutable:
        q.append("immutable=1")
    return f"file:{quote(str(path))}" + (f"?{'&'.join(q)}" if q else "")


@dataclass(frozen=True)
class Target:
    """A database or storage argument, resolved: `path` for an SQLite file (given as a path or as an sqlite:/// URL),
    else `url` (a server database, or SQLite in memory)."""
    given: str
    path: Path | None
    url: str | None
    label: str  # for messages: the path, or the URL with its password hidden


def resolve(target, what: str = "database") -> Target:
    """Parse a path or an SQLAlchemy URL (without connecting). A malformed URL is a UserError."""
    text = str(target)
    if not is_url(text):
        if not text.strip():
            raise UserError(f"the {what} path is empty")
        p = Path(text).expanduser()
        return Target(text, p, None, str(p))
    from sqlalchemy.engine import make_url  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415
    try:
        u = make_url(text)
        backend = u.get_backend_name()
    except (ArgumentError, ValueError) as exc:
        raise UserError(f"{what} {text!r} is not an SQLAlchemy URL ({_first_line(exc)}); {URL_EXAMPLES}") from None
    label = u.render_as_string(hide_password=True)
    if backend == "sqlite":
        db = u.database
        if db and db != ":memory:" and not db.startswith("file:"):
            if u.query.get("uri") or u.query.get("mode"):
                raise UserError(f"{what} {label!r}: SQLite URL options are not supported; give the file's path")
            p = Path(db).expanduser()
            return Target(text, p, None, str(p))
        if db and db.startswith("file:"):
            raise UserError(f"{what} {label!r}: SQLite URI file names are not supported; give the file's path")
    return Target(text, None, text, label)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---- read-only SQLite ------------------------------------------------------------------------------------------


def _header(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(100)
    except OSError as exc:
        raise UserError(f"database {str(path)!r} cannot be read: {exc.strerror or exc}") from None


def is_shipped(path: Path) -> bool:
    """A database shipped in the package's db/ folder (never written: opened immutable)."""
    from ..resources import resource_dir  # noqa: PLC0415
    try:
        return Path(path).resolve().parent == resource_dir("db").resolve()
    except (OSError, ValueError):
        return False


def _wal_present(path: Path) -> bool:
    return os.path.exists(f"{path}-wal")


def read_only_uri(path: Path, header: bytes | None = None, force_ro: bool = False) -> str:
    """The URI that reads `path` without creating side files (module docstring)."""
    if not force_ro and is_shipped(path):
        return sqlite_uri(path, "ro", immutable=True)
    header = _header(path) if header is None else header
    wal = len(header) > 18 and header[18] == 2
    if wal and not force_ro and not _wal_present(path):
        return sqlite_uri(path, "ro", immutable=True)
    return sqlite_uri(path, "ro")


def read_only_connect(path: Path, force_ro: bool = False, header: bytes | None = None) -> sqlite3.Connection:
    """A read-only sqlite3 connection (read_only_uri); where mode=ro cannot open a WAL file (its -shm cannot be made in
    a read-only folder), immutable=1. `header`: the file's first bytes, read once by the caller (every open and close
    of a descriptor of the file drops this process's POSIX locks on it, SQLite's included: the fewer, the better)."""
    uri = read_only_uri(path, header, force_ro=force_ro)
    con = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError:
        con.close()
        if "immutable=1" in uri:
            raise
        return sqlite3.connect(sqlite_uri(path, "ro", immutable=True), uri=True)


def file_stamp(path: Path) -> tuple:
    """What changes when a writer touches an SQLite file: its size and mtime, and whether a -wal file exists."""
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns, _wal_present(path))
    except OSError:
        return ("missing",)


def read_sqlite(path: Path, fn, header: bytes | None = None):
    """fn(read-only connection) for an SQLite file; run again through mode=ro when a writer touched the file while an
    immutable read ran (an immutable read takes no locks and does not see a -wal file)."""
    for attempt in range(2):
        before = file_stamp(path)
        con = read_only_connect(path, force_ro=attempt > 0, header=header)
        try:
            try:
                result = fn(con)
            except sqlite3.DatabaseError:
                if attempt == 0 and file_stamp(path) != before:
                    continue
                raise
        finally:
            con.close()
        if attempt == 0 and file_stamp(path) != before:
            continue
        return result
    return result


# ---- what a target is ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Survey:
    state: str  # missing | empty | tuning | storage
    tables: frozenset = frozenset()
    schema_version: int | None = None


def _judge(tables: set, meta: dict, studies: list[str], label: str, what: str, is_file: bool) -> Survey:
    from .db import APPLICATION, SCHEMA_VERSION  # noqa: PLC0415
    tables = frozenset(tables)
    if not tables:
        return Survey("empty", tables)
    if "sat_meta" in tables:
        app = meta.get("application")
        if app != APPLICATION:
            raise UserError(f"{what} {label!r} is not a tuning database (sat_meta names {app!r})")
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            raise UserError(f"{what} {label!r} has an unreadable schema version") from None
        if version > SCHEMA_VERSION:
            raise UserError(f"{what} {label!r} has schema version {version}, newer than this sparse-autotune "
                            f"understands ({SCHEMA_VERSION}): upgrade sparse-autotune")
        return Survey("tuning", tables, version)
    foreign = sorted(tables - KNOWN_TABLES)
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        kind = "an SQLite file" if is_file else "a database"
        ours = "a tuning database" if what == "database" else f"a {what} or tuning database of sparse-autotune"
        raise UserError(f"{what} {label!r} is not {ours} ({kind} of another application: tables {shown})")
    if tables & {"sat_records", "sat_model_layers"}:
        raise UserError(f"{what} {label!r} is not a tuning database (sat_records without sat_meta: damaged or "
                        "not sparse-autotune's)")
    if not tables & QUEUE_TABLES:
        other = next((s for s in studies if not STUDY_NAME.match(s)), None)
        if other is not None:
            raise UserError(f"{what} {label!r} is an Optuna storage of another application (study {other!r}), not "
                            "a tuning database or storage of sparse-autotune")
    return Survey("storage", tables)


def _survey_file(path: Path, what: str) -> Survey:
    label = str(path)
    if not os.path.lexists(path):
        return Survey("missing")
    if path.is_dir():
        raise UserError(f"{what} {label!r} is a directory, not a tuning database file")
    if not path.exists():
        raise UserError(f"{what} {label!r} is a broken symbolic link")
    head = _header(path)
    if len(head) == 0:
        return Survey("empty")
    if head[:16] != SQLITE_MAGIC:
        raise UserError(f"{what} {label!r} is not a tuning database (not an SQLite file)")

    def read(con):
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = dict(con.execute("SELECT key, value FROM sat_meta").fetchall()) if "sat_meta" in tables else {}
        studies = [r[0] for r in con.execute("SELECT study_name FROM studies LIMIT 1000")] \
            if "studies" in tables and not tables & QUEUE_TABLES and "sat_meta" not in tables else []
        return tables, meta, studies

    try:
        tables, meta, studies = read_sqlite(path, read, head)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{what} {label!r} cannot be read as SQLite: {_first_line(exc)}") from None
    tables = {t for t in tables if not t.startswith("sqlite_")}
    return _judge(tables, meta, studies, label, what, True)


def server_engine(url: str, **kwargs):
    """An engine for a server database (timeouts so that an unreachable server is an error, not a hang)."""
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlalchemy.engine import make_url  # noqa: PLC0415
    args = dict(kwargs)
    if make_url(url).get_backend_name() == "postgresql":
        args.setdefault("connect_args", {"connect_timeout": 10})
    return create_engine(url, **args)


def _survey_url(t: Target, what: str) -> Survey:
    from sqlalchemy import inspect, text  # noqa: PLC0415
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415
    try:
        eng = server_engine(t.url, poolclass=NullPool)
    except ImportError as exc:
        hint = " (install the PostgreSQL driver: pip install 'sparse-autotune[postgres]')" if "psycopg" in str(exc) \
            else ""
        raise UserError(f"cannot use {what} {t.label!r}: {_first_line(exc)}{hint}") from None
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        raise UserError(f"cannot use {what} {t.label!r}: {_first_line(exc)}") from None
    try:
        with eng.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            meta = {}
            if "sat_meta" in tables:
                meta = {k: v for k, v in conn.execute(text("SELECT key, value FROM sat_meta"))}
            studies = []
            if "studies" in tables and not tables & QUEUE_TABLES and "sat_meta" not in tables:
                studies = [r[0] for r in conn.execute(text("SELECT study_name FROM studies"))]
    except (SQLAlchemyError, ImportError, OSError, ValueError) as exc:
        hint = " (install the PostgreSQL driver: pip install 'sparse-autotune[postgres]')" \
            if isinstance(exc, ImportError) and "psycopg" in str(exc) else ""
        raise UserError(f"cannot use {what} {t.label!r}: {_first_line(exc)}{hint}") from None
    finally:
        eng.dispose()
    return _judge(tables, meta, studies, t.label, what, False)


def survey(target, what: str = "database") -> Survey:
    """What a target is (module docstring), creating nothing; a foreign, unreadable or newer target is a UserError."""
    t = target if isinstance(target, Target) else resolve(target, what)
    if t.path is not None:
        return _survey_file(t.path, what)
    return _survey_url(t, what)


def _is_default(path: Path) -> bool:
    from .db import default_db_path  # noqa: PLC0415
    try:
        return Path(path).expanduser().resolve() == default_db_path().expanduser().resolve()
    except OSError:
        return False


def check_new_file(path: Path, what: str = "database", make_folder: bool | None = None) -> None:
    """A new file may be created at `path`: its folder exists (the default location's folder is created)."""
    parent = Path(path).expanduser().resolve().parent
    if parent.is_dir():
        return
    if make_folder is None:
        make_folder = _is_default(path)
    if not make_folder:
        if parent.exists():
            raise UserError(f"cannot create {what} {str(path)!r}: {str(parent)!r} is not a folder")
        raise UserError(f"cannot create {what} {str(path)!r}: the folder {str(parent)!r} does not exist")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder for {what} {str(path)!r}: {exc.strerror or exc}") from None


def for_read(target, what: str = "database") -> tuple[Target, Survey]:
    """A target a read opens: it exists (a missing one is refused: a read creates nothing) and is ours or empty."""
    t = target if isinstance(target, Target) else resolve(target, what)
    s = survey(t, what)
    if s.state == "missing":
        raise UserError(f"{what} {t.label!r} does not exist")
    return t, s


def for_write(target, what: str = "database") -> tuple[Target, Survey]:
    """A target a write opens: ours or empty, or a new file where its folder exists (checked, not created yet)."""
    t = target if isinstance(target, Target) else resolve(target, what)
    s = survey(t, what)
    if s.state == "missing" and t.path is not None:
        parent = t.path.expanduser().resolve().parent
        if not parent.is_dir() and not _is_default(t.path):
            check_new_file(t.path, what, make_folder=False)
    return t, s


def storage_for_write(url: str) -> tuple[Target, Survey]:
    """--storage of tune, bench and worker: an SQLAlchemy URL whose database is empty, ours, or a new SQLite file in an
    existing folder. Checked before any queue or storage object is built (which would create tables)."""
    if not is_url(url):
        raise UserError(f"--storage {url!r} is not an SQLAlchemy URL; {URL_EXAMPLES}")
    t = resolve(url, "storage")
    s = survey(t, "storage")
    if s.state == "missing":
        check_new_file(t.path, "storage", make_folder=False)
    return t, s


def storage_for_read(url: str) -> tuple[Target, Survey]:
    """--storage of status: it exists and holds the scale-out queue (nothing is created)."""
    if not is_url(url):
        raise UserError(f"--storage {url!r} is not an SQLAlchemy URL; {URL_EXAMPLES}")
    t = resolve(url, "storage")
    s = survey(t, "storage")
    if s.state == "missing":
        raise UserError(f"storage {t.label!r} does not exist")
    if not {"sa_queue", "sa_workers", "studies"} <= s.tables:
        raise UserError(f"storage {t.label!r} holds no scale-out queue: nothing was tuned through it "
                        "(tune or bench with --storage put problems there)")
    return t, s


__all__ = ["Survey", "Target", "check_new_file", "for_read", "for_write", "is_shipped", "is_url", "read_only_connect",
           "read_only_uri", "read_sqlite", "resolve", "sqlite_uri", "storage_for_read", "storage_for_write", "survey"]
