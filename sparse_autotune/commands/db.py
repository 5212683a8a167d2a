"""`sparse-autotune db list|show|export|merge|check|set-cold`: the tuning database as a shared artifact.

cli.py wires it in with `add_db_parser(sub, _Parser)` and `"db": cmd_db`; the parser class is passed in (this module
does not import cli). Every error is a UserError: one line on stderr, exit status 2. Every database argument goes
through store/guard.py: another application's file or tables are refused untouched. Reading commands (list, show,
check, and the source of export / merge) never write to the file they read, also not to migrate an older schema, and
create nothing (no file, no -wal/-shm beside it). A 0-byte file is a database without records everywhere: list shows
none, check says so, merge --into and export fill it, a merge or export from it adds nothing. set-cold writes cold times
from a suite report into an existing tuning database (store.db's rank_us then ranks its records by them); its input is
checked in full before the database is opened, so bad input leaves the file as it was.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING

from ..errors import UserError
from ..core.problem import check_dtype, parse_shape
from ..store import guard

# store.db (SQLAlchemy) is imported by the commands that read or write a database, not to build the parser
if TYPE_CHECKING:
    from ..store.db import RecordFilter, TuningDB

_DB_HELP = "tuning database path or SQLAlchemy URL (default $SPARSE_AUTOTUNE_DB or the user cache)"


def add_db_parser(subparsers, parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `db` command and its sub-commands to `subparsers` (from add_subparsers of the main parser)."""
    d = subparsers.add_parser("db", help="list, show, export, merge and check tuning databases",
                              description="Inspect and share tuning databases.")
    dsub = d.add_subparsers(dest="db_cmd", parser_class=parser_class, required=True,
                            metavar="{list,show,export,merge,check,set-cold}")

    def filters(p):
        p.add_argument("--gpu", help="GPU name, or a part of it (case-insensitive), e.g. H100")
        p.add_argument("--shape", help="shape of the sparse matrix, e.g. 512x2048: M x K of an SpMM record's A, M x N "
                                       "of an SDDMM record's mask")
        p.add_argument("--dtype", help="fp32, fp16 or bf16")
        p.add_argument("--op", help="operator: spmm, sddmm or spmm_t (default: all)")

    ls = dsub.add_parser("list", help="a table of the best records (all records with --all)")
    ls.add_argument("--db", help=_DB_HELP)
    filters(ls)
    ls.add_argument("--all", action="store_true", help="also the history (records that are not the best)")
    ls.add_argument("--json", action="store_true", help="print the records as JSON")

    sh = dsub.add_parser("show", help="one record in full")
    sh.add_argument("id", type=_record_id, help="record id (see `db list`)")
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

    sc = dsub.add_parser("set-cold", help="set the records' cold times (A from HBM) from a suite report",
                         description="For every record of the database whose key (GPU, M, K, N, density, dtype, "
                                     "pattern, layout; spmm) and family and config match a case of SUITE.json with a "
                                     "cold time, set its cold_us: the tuned kernel's tuned_cold_us, and for the "
                                     "record of cuBLAS at the problem's own precision (family dense) dense_cold_us. "
                                     "Then the best of each key touched is flagged again by the database's rule "
                                     "(the cold time where measured, else the warm time). One transaction. "
                                     "A recold output (bench/probe.py recold) serves as well as a suite report: "
                                     "every config it timed, so that configs timed in one run are ranked by "
                                     "times of that run.")
    sc.add_argument("--db", help=_DB_HELP)
    sc.add_argument("--from", dest="source", required=True, metavar="SUITE.json",
                    help="a suite report (bench's suite-<suite>-<gpu>.json) or a recold output (recold-<gpu>.json)")
    sc.add_argument("--add", action="store_true",
                    help="a kernel config timed there (with its warm time and verified error) that no record of its "
                         "key holds is added as a record (origin recold), derived from the key's best")
    return d


# ---- helpers --------------------------------------------------------------------------------------------


def _record_id(text) -> int:
    """A record id as argparse reads it: a positive integer below 2**63 (SQLite's integers)."""
    t = str(text).strip().lstrip("+")
    if not (t.isascii() and t.isdigit()) or not 0 < int(t) < 2**63:
        raise argparse.ArgumentTypeError(f"record id {text!r} is not a positive integer (the ids are in `db list`)")
    return int(t)


def _filters(a, best_only: bool) -> RecordFilter:
    from ..store.db import RecordFilter, check_op  # noqa: PLC0415
    m = k = None
    if getattr(a, "shape", None):
        m, k = parse_shape(a.shape)
    dtype = check_dtype(a.dtype) if getattr(a, "dtype", None) else None
    op = check_op(a.op) if getattr(a, "op", None) else None
    return RecordFilter(gpu=getattr(a, "gpu", None) or None, m=m, k=k, dtype=dtype, best_only=best_only, op=op)


def _open_read(db) -> tuple[TuningDB, str | None]:
    """The database to read, opened read-only (never written to), and None, or for a database without records (an empty
    file or one without tables, or a scale-out storage without records) a note that says so: its reads find nothing. A
    missing database is refused (a read creates nothing); without --db and nothing tuned here yet, the message names
    the shipped databases."""
    from ..store.db import TuningDB  # noqa: PLC0415
    from ..commands.main import _db_for_read  # noqa: PLC0415
    target = _db_for_read(db)
    t, s = guard.for_read(target)
    note = {"empty": f"{t.label} is an empty database: no records yet",
            "storage": f"{t.label} is a scale-out storage without records"}.get(s.state)
    return TuningDB(target, create=False, readonly=True), note


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
    from ..store.db import SDDMM, op_of, rank_us  # noqa: PLC0415
    flt = _filters(a, best_only=not a.all)
    tdb, note = _open_read(a.db)
    try:
        recs = tdb.select_records(flt)
    finally:
        tdb.dispose()
    recs.sort(key=lambda r: (op_of(r), r.gpu_name, r.m, r.k, r.n, r.density, r.dtype, r.pattern, r.layout or "kn",
                             rank_us(r), r.id))
    if a.json:
        print(json.dumps([_json_record(r) for r in recs], indent=1, default=str))
        return 0
    if not recs:
        print("no records" + (f" ({note})" if note else ""))
        return 0
    # shape: the sparse matrix's (an spmm record's A, M x K; an sddmm record's mask, M x N); N: B's columns (spmm), or
    # for sddmm "K=" the columns of X and Y. vs cuBLAS: the dense path of the record's dtype for sddmm (store.db)
    header = ["id", "shape", "N", "density", "dtype", "pattern", "layout", "op", "GPU", "family", "time us",
              "vs cuSPARSE", "vs cuBLAS FP32", "date"]
    if a.all:
        header.append("best")
    rows = []
    for r in recs:
        sddmm = op_of(r) == SDDMM
        dense = (r.cublas_fp32_us if r.dtype == "fp32" else r.cublas_fp16_us if r.dtype == "fp16"
                 else r.cublas_bf16_us) if sddmm else r.cublas_fp32_us
        row = [str(r.id), f"{r.m}x{r.n}" if sddmm else f"{r.m}x{r.k}", f"K={r.k}" if sddmm else str(r.n),
               f"{r.density:g}", r.dtype, r.pattern, "-" if sddmm else (r.layout or "kn"), op_of(r),
               r.gpu_name, r.family, f"{r.time_us:.2f}", _x(r.cusparse_us, r.time_us),
               _x(dense, r.time_us), r.created_at.strftime("%Y-%m-%d")]
        if a.all:
            row.append("*" if r.is_best else "")
        rows.append(row)
    if any(op_of(r) == SDDMM for r in recs):
        header[header.index("vs cuBLAS FP32")] = "vs cuBLAS FP32 / dense"
    right = {0, 2, 3, 10, 11, 12}
    if any(r.cold_us is not None for r in recs):  # the cold time (A from HBM) that ranks a record where measured
        header.insert(11, "cold us")
        for r, row in zip(recs, rows):
            row.insert(11, f"{r.cold_us:.2f}" if r.cold_us is not None else "-")
        right = {0, 2, 3, 10, 11, 12, 13}
    print(_table(header, rows, right=right))
    best = sum(1 for r in recs if r.is_best)
    print(f"{len(recs)} record{'s' if len(recs) != 1 else ''}" + (f" ({best} best)" if a.all else ""))
    return 0


def cmd_show(a) -> int:
    from ..store.db import SDDMM, is_verified, op_of  # noqa: PLC0415
    tdb, note = _open_read(a.db)
    try:
        rec = tdb.get(a.id)
        label = tdb.label
    finally:
        tdb.dispose()
    if rec is None:
        raise UserError(f"no record with id {a.id} in {label!r}" + (f" ({note})" if note else ""))
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
    if op_of(rec) == SDDMM:
        print(f"  {'sddmm':<{width}}  mask {rec.m}x{rec.n}, X {rec.m}x{rec.k}, Y {rec.n}x{rec.k} (m, n: the mask's "
              "shape; k: the columns of X and Y; cublas_*: X @ Y^T then the mask)")
    return 0


def cmd_export(a) -> int:
    flt = _filters(a, best_only=a.best_only)
    t = guard.resolve(a.out)
    if t.path is None:
        raise UserError(f"export writes a file, not a database URL ({t.label!r})")
    guard.for_write(t)  # a foreign OUT, or a new OUT in a folder that does not exist: refused before the source is read
    tdb, note = _open_read(a.db)  # a source without records exports none (a new OUT: a tuning database without any)
    try:
        res = tdb.export(t.path, flt)
    finally:
        tdb.dispose()
    if res.created:
        print(f"wrote {res.added} record{'s' if res.added != 1 else ''} to {res.target}" + (f" ({note})" if note else ""))
    else:
        print(f"merged into {res.target} (an existing tuning database): added {res.added}, skipped {res.skipped} "
              f"(already present), new best {res.new_best}")
    return 0


def cmd_merge(a) -> int:
    from ..store.db import TuningDB, default_db_path  # noqa: PLC0415
    into = a.into or str(default_db_path())
    # every database is checked before anything is written anywhere: the sources exist and are ours (an empty file is
    # a database without records: it adds nothing), DST is ours, empty, or a new file where its folder exists
    sources = [guard.for_read(src)[0] for src in a.sources]
    dst_t, _ = guard.for_write(into)
    if dst_t.path is not None:
        dst_path = dst_t.path.expanduser().resolve()
        for src in sources:
            if src.path is not None and (src.path.expanduser().resolve() == dst_path
                                         or (dst_path.exists() and src.path.samefile(dst_path))):
                raise UserError(f"cannot merge database {str(src.path)!r} into itself")
    dst = TuningDB(into, create=True)
    try:
        for src in sources:
            res = dst.merge_from(src.given)  # a source without records (an empty file) adds nothing
            print(f"{src.label}: added {res.added}, skipped {res.skipped} (already present), new best {res.new_best}")
    finally:
        dst.dispose()
    print(f"into {dst.label}")
    return 0


def normalized_config(family: str, dtype: str, config_json: str) -> str:
    """A config as its family's space normalizes it for the dtype (the defaults of the parameters it leaves out:
    the kernel it builds), in canonical JSON; as stored where no space knows it (a vendor path, an unknown family)."""
    from ..core.space import built_config  # noqa: PLC0415
    from ..store.db import canonical_config  # noqa: PLC0415
    try:
        config = json.loads(config_json)
    except (TypeError, ValueError):
        return canonical_config(config_json)
    return canonical_config(json.dumps(built_config(family, config, dtype)))


def cmd_set_cold(a) -> int:
    from ..store.db import TuningDB  # noqa: PLC0415
    from ..tuning.suite import cold_entries  # noqa: PLC0415
    from ..commands.main import _db_for_read  # noqa: PLC0415
    try:
        with open(a.source, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise UserError(f"cannot read {a.source}: {why}") from None
    times = cold_entries(report, a.source)  # bad input: one line, before the database is opened
    if not times:
        raise UserError(f"{a.source} holds no cold times (tuned_cold_us, dense_cold_us): nothing to set")
    target = _db_for_read(a.db)  # an existing database (nothing is created)
    t, s = guard.for_read(target)
    if s.state != "tuning":
        raise UserError(f"{t.label} is not a tuning database with records: nothing to set")
    tdb = TuningDB(target, create=False)  # an older schema is migrated here (the write needs cold_us)
    try:
        res = tdb.set_cold(times, add=a.add, same=normalized_config)
        label = tdb.label
    finally:
        tdb.dispose()
    print(f"{label}: set {res.set} cold time{'s' if res.set != 1 else ''} ({res.unchanged} already so)"
          + (f", added {res.added} record{'s' if res.added != 1 else ''} (configs timed but not held)" if a.add else "")
          + ", "
          f"{res.unmatched} of {len(times)} from {a.source} matched no record; {res.keys} key"
          f"{'s' if res.keys != 1 else ''} touched, best changed in {res.new_best}")
    return 0


def cmd_check(a) -> int:
    """What FILE is, read without writing (exit 0), and whether it is clean: SQLite's quick_check and the store's own
    rules (one best per key, the best verified and fastest). A file with problems: each listed, exit status 1."""
    from ..store.db import SCHEMA_VERSION, describe_file  # noqa: PLC0415
    info = describe_file(a.file)
    if info["state"] == "empty":
        print(f"{info['path']}: an empty database (0 bytes or no tables): no records yet; the first write (tune, db "
              "merge --into, db export) makes it a tuning database")
        return 0
    if info["state"] == "storage":
        print(f"{info['path']}: a scale-out storage of sparse-autotune, without records")
        print(f"  queue    {info['queue']} problem{'s' if info['queue'] != 1 else ''}")
        print(f"  studies  {info['studies']} Optuna stud{'ies' if info['studies'] != 1 else 'y'}")
        return _check_result(info)
    v = info["schema_version"]
    print(f"{info['path']}: a sparse-autotune tuning database, schema version {v}")
    if info["needs_migration"]:
        print(f"  older than this sparse-autotune's schema ({SCHEMA_VERSION}): it will be migrated to version "
              f"{SCHEMA_VERSION} on the next write (nothing was written now)")
    print(f"  records  {info['records']} ({info['best']} best)")
    print(f"  GPUs     {', '.join(info['gpus']) if info['gpus'] else 'none'}")
    if info["studies"]:
        print(f"  also holds {info['studies']} Optuna stud{'ies' if info['studies'] != 1 else 'y'} (not exported)")
    return _check_result(info)


def _check_result(info: dict) -> int:
    if not info["problems"]:
        print("  check    clean (SQLite quick_check ok; one best per key, each verified and the fastest)")
        return 0
    print(f"  check    {len(info['problems'])} problem{'s' if len(info['problems']) != 1 else ''}:")
    for p in info["problems"]:
        print(f"    {p}")
    return 1


_COMMANDS = {"list": cmd_list, "show": cmd_show, "export": cmd_export, "merge": cmd_merge, "check": cmd_check,
             "set-cold": cmd_set_cold}


def cmd_db(args) -> int:
    return _COMMANDS[args.db_cmd](args)


__all__ = ["add_db_parser", "cmd_db"]
