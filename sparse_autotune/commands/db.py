"""`sparse-autotune db list|show|export|merge|check`: the tuning database as a shared artifact.

cli.py wires it in with `add_db_parser(sub, _Parser)` and `"db": cmd_db`; the parser class is passed in (this module
does not import cli). Every error is a UserError: one line on stderr, exit status 2. Reading commands (list, show,
check, and the source of export / merge) never write to the file they read, also not to migrate an older schema.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import UserError
from ..core.problem import check_dtype, parse_shape
from ..store.db import (SCHEMA_VERSION, RecordFilter, TuningDB, check_file, default_db_path, describe_file,
                       is_url, is_verified)

_DB_HELP = "tuning database path or SQLAlchemy URL (default $SPARSE_AUTOTUNE_DB or the user cache)"


def add_db_parser(subparsers, parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `db` command and its sub-commands to `subparsers` (from add_subparsers of the main parser)."""
    d = subparsers.add_parser("db", help="list, show, export, merge and check tuning databases",
                              description="Inspect and share tuning databases.")
    dsub = d.add_subparsers(dest="db_cmd", parser_class=parser_class, required=True,
                            metavar="{list,show,export,merge,check}")

    def filters(p):
        p.add_argument("--gpu", help="GPU name, or a part of it (case-insensitive), e.g. H100")
        p.add_argument("--shape", help="M x K of the sparse matrix, e.g. 512x2048")
        p.add_argument("--dtype", help="fp32 or fp16")

    ls = dsub.add_parser("list", help="a table of the best records (all records with --all)")
    ls.add_argument("--db", help=_DB_HELP)
    filters(ls)
    ls.add_argument("--all", action="store_true", help="also the history (records that are not the best)")
    ls.add_argument("--json", action="store_true", help="print the records as JSON")

    sh = dsub.add_parser("show", help="one record in full")
    sh.add_argument("id", type=int, help="record id (see `db list`)")
    sh.add_argument("--db", help=_DB_HELP)
    sh.add_argument("--json", action="store_true", help="print the record as JSON")

    ex = dsub.add_parser("export", help="write selected records to a new, self-contained tuning database file",
                         description="Write the selected records (all by default) to OUT: a tuning database file "
                                     "of its own (no Optuna studies). An existing OUT must be a tuning database; "
                                     "the records are then merged into it.")
    ex.add_argument("out", metavar="OUT.sqlite", help="the file to write")
    ex.add_argument("--db", help=_DB_HELP)
    filters(ex)
    ex.add_argument("--best-only", action="store_true", help="only the best record of each key (no history)")

    mg = dsub.add_parser("merge", help="merge tuning database files into one",
                         description="Add the records of each SRC that DST does not have yet (one transaction per "
                                     "SRC); the fastest verified record of each key becomes its best. SRC files are "
                                     "only read.")
    mg.add_argument("sources", nargs="+", metavar="SRC.sqlite", help="tuning database files to merge from")
    mg.add_argument("--into", metavar="DST", help="the database to merge into (default $SPARSE_AUTOTUNE_DB or the "
                                                  "user cache)")

    ck = dsub.add_parser("check", help="say whether a file is a tuning database, without writing to it")
    ck.add_argument("file", metavar="FILE")
    return d


# ---- helpers --------------------------------------------------------------------------------------------


def _filters(a, best_only: bool) -> RecordFilter:
    m = k = None
    if getattr(a, "shape", None):
        m, k = parse_shape(a.shape)
    dtype = check_dtype(a.dtype) if getattr(a, "dtype", None) else None
    return RecordFilter(gpu=getattr(a, "gpu", None) or None, m=m, k=k, dtype=dtype, best_only=best_only)


def _open_read(db) -> TuningDB | None:
    """The database to read (never written to); None for an empty file (no records)."""
    target = str(db) if db else str(default_db_path())
    if is_url(target):
        return TuningDB(target, create=False)
    path = Path(target).expanduser()
    state = check_file(path)
    if state == "missing":
        raise UserError(f"database {str(path)!r} does not exist")
    if state == "empty":
        return None
    return TuningDB(path, create=False, readonly=True)


def _x(base, t) -> str:
    if base is None or t is None or not t or (isinstance(base, float) and math.isnan(base)):
        return "n/a"
    return f"{base / t:.2f}x"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _json_record(r) -> dict:
    d = r.to_dict()
    d["created_at"] = r.created_at.isoformat(timespec="microseconds")
    return d


# ---- commands -------------------------------------------------------------------------------------------


def cmd_list(a) -> int:
    flt = _filters(a, best_only=not a.all)
    tdb = _open_read(a.db)
    recs = []
    if tdb is not None:
        try:
            recs = tdb.select_records(flt)
        finally:
            tdb.dispose()
    recs.sort(key=lambda r: (r.gpu_name, r.m, r.k, r.n, r.density, r.dtype, r.pattern, r.time_us, r.id))
    if a.json:
        print(json.dumps([_json_record(r) for r in recs], indent=1, default=str))
        return 0
    if not recs:
        print("no records")
        return 0
    header = ["id", "shape", "N", "density", "dtype", "pattern", "GPU", "family", "time us", "vs cuSPARSE",
              "vs cuBLAS FP32", "date"]
    if a.all:
        header.append("best")
    rows = []
    for r in recs:
        row = [str(r.id), f"{r.m}x{r.k}", str(r.n), f"{r.density:g}", r.dtype, r.pattern, r.gpu_name, r.family,
               f"{r.time_us:.2f}", _x(r.cusparse_us, r.time_us), _x(r.cublas_fp32_us, r.time_us),
               r.created_at.strftime("%Y-%m-%d")]
        if a.all:
            row.append("*" if r.is_best else "")
        rows.append(row)
    print(_table(header, rows, right={0, 2, 3, 8, 9, 10}))
    best = sum(1 for r in recs if r.is_best)
    print(f"{len(recs)} record{'s' if len(recs) != 1 else ''}" + (f" ({best} best)" if a.all else ""))
    return 0


def cmd_show(a) -> int:
    tdb = _open_read(a.db)
    rec = None
    label = str(Path(a.db).expanduser()) if a.db and not is_url(a.db) else (a.db or str(default_db_path()))
    if tdb is not None:
        try:
            rec = tdb.get(a.id)
            label = tdb.label
        finally:
            tdb.dispose()
    if rec is None:
        raise UserError(f"no record with id {a.id} in {label!r}")
    if a.json:
        print(json.dumps(_json_record(rec), indent=1, default=str))
        return 0
    d = _json_record(rec)
    width = max(len(k) for k in d)
    print(f"record {rec.id} in {label}")
    for key, value in d.items():
        if key == "config":
            value = json.dumps(value, sort_keys=True)
        elif value is None:
            value = "n/a" if key != "origin" else "n/a (stored before schema version 2)"
        print(f"  {key:<{width}}  {value}")
    print(f"  {'verified':<{width}}  {'yes' if is_verified(rec) else 'no (never the best of its key)'}")
    print(f"  {'vs cuSPARSE':<{width}}  {_x(rec.cusparse_us, rec.time_us)}")
    print(f"  {'vs cuBLAS FP32':<{width}}  {_x(rec.cublas_fp32_us, rec.time_us)}")
    return 0


def cmd_export(a) -> int:
    flt = _filters(a, best_only=a.best_only)
    out = Path(a.out).expanduser()
    if not is_url(a.out):
        check_file(out)  # a foreign OUT is refused before the source is opened
    tdb = _open_read(a.db)
    if tdb is None:
        raise UserError(f"database {a.db or str(default_db_path())!r} is an empty file: nothing to export")
    try:
        res = tdb.export(out, flt)
    finally:
        tdb.dispose()
    if res.created:
        print(f"wrote {res.added} record{'s' if res.added != 1 else ''} to {res.target}")
    else:
        print(f"merged into {res.target} (an existing tuning database): added {res.added}, skipped {res.skipped} "
              f"(already present), new best {res.new_best}")
    return 0


def cmd_merge(a) -> int:
    into = a.into or str(default_db_path())
    sources = [Path(s).expanduser() for s in a.sources]
    for src in sources:  # every file is checked before anything is written anywhere
        state = check_file(src)
        if state == "missing":
            raise UserError(f"database {str(src)!r} does not exist")
        if state == "empty":
            raise UserError(f"database {str(src)!r} is an empty file, not a tuning database")
    if not is_url(into):
        dst_path = Path(into).expanduser()
        check_file(dst_path)
        for src in sources:
            if src.resolve() == dst_path.resolve() or (dst_path.exists() and src.samefile(dst_path)):
                raise UserError(f"cannot merge database {str(src)!r} into itself")
    dst = TuningDB(into, create=True)
    try:
        for src in sources:
            res = dst.merge_from(src)
            print(f"{src}: added {res.added}, skipped {res.skipped} (already present), new best {res.new_best}")
    finally:
        dst.dispose()
    print(f"into {dst.label}")
    return 0


def cmd_check(a) -> int:
    info = describe_file(a.file)
    v = info["schema_version"]
    print(f"{info['path']}: a sparse-autotune tuning database, schema version {v}")
    if info["needs_migration"]:
        print(f"  older than this sparse-autotune's schema ({SCHEMA_VERSION}): it will be migrated to version "
              f"{SCHEMA_VERSION} on the next write (nothing was written now)")
    print(f"  records  {info['records']} ({info['best']} best)")
    print(f"  GPUs     {', '.join(info['gpus']) if info['gpus'] else 'none'}")
    if info["studies"]:
        print(f"  also holds {info['studies']} Optuna stud{'ies' if info['studies'] != 1 else 'y'} (not exported)")
    return 0


_COMMANDS = {"list": cmd_list, "show": cmd_show, "export": cmd_export, "merge": cmd_merge, "check": cmd_check}


def cmd_db(args) -> int:
    return _COMMANDS[args.db_cmd](args)


__all__ = ["add_db_parser", "cmd_db"]
