"""Runtime lookup of the best known config for a problem, with a fallback chain that says what it used.

Search order, over the user's database (db=, else $SPARSE_AUTOTUNE_DB, else the user cache file) and then
the databases shipped in the package's db/ folder:
  exact      a record for this GPU model and exactly this (M, K, N, density within 0.1 %, dtype);
  bucket     the same GPU model, M, K, density and dtype, N in the same N bucket (the next power of two: a model
             tuned at a few batch sizes is served at any N by its bucket's record; `tune-model --n-buckets`);
  nearest    the same GPU model and dtype, closest in log2 M, log2 K, log2 N and log2 density (Euclidean;
             +0.25 when the pattern kind differs), with the distance;
  same-arch  another GPU of the same compute capability (exact key first, else nearest);
A record's config is adapted to the problem by its family (e.g. a vector width that N does not divide is lowered);
a record whose config cannot run it is passed over for the next nearest. A record of a kernel whose own baselines
(cuSPARSE, cuBLAS of the problem's precision, timed beside it when it was tuned) were faster is served by that vendor
path instead (`Tuned.note` says so): records from before the vendor paths were candidates carry that verdict only there.
The built-in default's record is read the same way.
  default    the runtime's built-in default: the shipped records' most frequent winner for the problem's dtype,
             N range and density range (any GPU), else the first known-good config of the lowest-rank family.
Layouts (core.problem): a kn problem is served by kn records only. An nk problem (y = x @ A^T + bias, as nn.Linear
holds x and y) is served by nk records first, then, where this GPU model (or, for same-arch, its architecture) has none
that runs it, by kn records: natively in nk where the record's family declares nk, else through the staged path (x
transposed, the kn kernel, y = C^T + bias: device.staged); a vendor path's kn record runs its nk form. The config of an
nk answer carries its path (`nk_path`, core.space) for a kernel family; `Tuned.path` says it ("native" or "staged";
vendor paths: native) and `Tuned.record_layout` which layout the record was tuned in. A kn record serving an nk problem
is a transferred source: its kernel must have beaten its own vendor baselines by TRANSFER_MARGIN, as for any other
source than exact.
Operators: every function here serves SpMM and reads spmm records only (store.db: the operator is part of the key);
`op_lookup` is the same search (exact, nearest, same-arch; no bucket, no built-in default) over the records of another
operator, for its own runtime (runtime.sddmm), which passes what its configs can run.
Among records of one key (exact keys of several patterns, a TF32 best's fallback) the fastest is store.db's rank_us: the
cold time (A from HBM) where measured, else the warm time; `Tuned.time_us` stays the record's warm time.
Lookups are cached in-process; a database file that changes on disk (its size or mtime) is re-read.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Float, literal, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import UserError
from ..core.problem import check_density, check_dims, check_dtype, check_layout, element_bytes, n_bucket
from ..core.space import NK_PATH, split_path
from ..resources import resource_dir
from ..store import guard
from ..store.db import DEFAULT_LAYOUT, DEFAULT_OP, DENSITY_RTOL, Record, TuningDB, default_db_path, rank_us

SOURCES = ("exact", "bucket", "nearest", "same-arch", "default")
_COLUMNS = (Record.id, Record.gpu_name, Record.gpu_cc, Record.m, Record.k, Record.n, Record.density, Record.dtype,
            Record.pattern, Record.family, Record.config_json, Record.time_us,
            # the vendor paths timed beside the kernel in the same process (schema 1 columns: every file has them)
            Record.cusparse_us, Record.cublas_fp32_us, Record.cublas_tf32_us, Record.cublas_fp16_us)


@dataclass(frozen=True)
class Tuned:
    family: str
    config: dict
    time_us: float | None  # the stored time of the record used (None for the default)
    gpu: str | None  # the GPU the record was tuned on
    source: str  # exact | nearest | same-arch | default
    record_id: int | None
    db: str | None
    distance: float = 0.0  # in log2 units (0 for exact)
    key: tuple | None = None  # (M, K, N, density, dtype, pattern) of the record used
    stored_config: dict | None = None  # the record's config as stored, where `config` is it adapted to this N
    note: str | None = None  # why a vendor path serves a record of a kernel (its own baselines were faster)
    layout: str = "kn"  # the problem's layout, which `config` runs
    record_layout: str = "kn"  # the layout the record was tuned in (a kn record may serve an nk problem)
    path: str | None = None  # nk: "native" (one kernel; the vendor paths too) or "staged" (device.staged); kn: None


@dataclass(frozen=True)
class _Row:
    id: int
    gpu: str
    cc: str
    m: int
    k: int
    n: int
    density: float
    dtype: str
    pattern: str
    family: str
    config_json: str
    time_us: float
    db: str
    cusparse_us: float | None = None
    cublas_fp32_us: float | None = None
    cublas_tf32_us: float | None = None
    cublas_fp16_us: float | None = None
    layout: str = DEFAULT_LAYOUT
    op: str = DEFAULT_OP
    cold_us: float | None = None  # the record's cold time (store.db rank_us ranks by it where set)


_rows_cache: dict[tuple[str, str], tuple[tuple, list[_Row]]] = {}
_result_cache: dict[tuple, tuple[tuple, Tuned]] = {}


@lru_cache(maxsize=1)
def shipped_databases() -> tuple[str, ...]:
    """The tuning databases shipped in the package's db/ folder (fixed for the life of the process);
    none when $SPARSE_AUTOTUNE_NO_SHIPPED_DB is set to a non-empty value."""
    if os.environ.get("SPARSE_AUTOTUNE_NO_SHIPPED_DB"):
        return ()
    return tuple(sorted(str(p) for p in resource_dir("db").glob("*.sqlite")))


def search_path(db=None) -> list[str]:
    user = str(db) if db is not None else str(default_db_path())
    return [user] + [s for s in shipped_databases() if s != user]


def _stamp(target: str) -> tuple:
    """What changes when a database file is written: the file's and its -wal file's size and mtime (a server URL: never
    re-read in this process)."""
    try:
        t = guard.resolve(target)
    except UserError:
        return ("bad",)
    if t.path is None:
        return ("url",)
    out = []
    for p in (str(t.path), f"{t.path}-wal"):
        try:
            st = os.stat(p)
            out += [st.st_size, st.st_mtime_ns]
        except OSError:
            out.append("missing")
    return tuple(out)


def _best_rows(target: str, op: str = DEFAULT_OP) -> list[_Row]:
    """Every best-flagged record of the operator `op` in one database (cached until the file changes)."""
    stamp = _stamp(target)
    hit = _rows_cache.get((target, op))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    rows: list[_Row] = []
    # read-only, creating nothing: a missing or empty file, or a storage without records, has no rows; another
    # application's file or tables are refused (guard.py)
    if guard.survey(target).state == "tuning":
        tdb = TuningDB(target, create=False, readonly=True)
        try:
            rows = db_best_rows(tdb, op)
        finally:
            tdb.dispose()
    _rows_cache[(target, op)] = (stamp, rows)
    return rows


def _distance(r: _Row, m, k, n, density, pattern) -> float:
    d2 = sum((math.log2(a) - math.log2(b)) ** 2 for a, b in ((r.m, m), (r.k, k), (r.n, n), (r.density, density)))
    return math.sqrt(d2) + (0.25 if pattern is not None and r.pattern != pattern else 0.0)


def _same_key(r: _Row, m, k, n, density) -> bool:
    return (r.m, r.k, r.n) == (m, k, n) and abs(r.density - density) <= density * DENSITY_RTOL


def _same_bucket(r: _Row, m, k, n, density) -> bool:
    """The same M, K and density (within the tolerance), and N in the same N bucket (core.problem.n_bucket)."""
    return (r.m, r.k) == (m, k) and abs(r.density - density) <= density * DENSITY_RTOL and n_bucket(r.n) == n_bucket(n)


def _ordered(rows, m, k, n, density, pattern, runs=None):
    """(row, distance, config) of every row whose config runs this problem (`runs(row)` -> the config adapted, or
    None; every row's stored config when runs is None), in lookup's order: exact keys first (fastest by store.db's
    rank_us; same pattern preferred), then N's bucket (nearest N first), then by distance (then rank_us)."""
    def order(r):
        exact = _same_key(r, m, k, n, density)
        return (not exact, not _same_bucket(r, m, k, n, density),
                pattern is not None and r.pattern != pattern if exact else False,
                0.0 if exact else _distance(r, m, k, n, density, pattern), rank_us(r))
    for r in sorted(rows, key=order):
        cfg = json.loads(r.config_json) if runs is None else runs(r)
        if cfg is not None:
            yield r, (0.0 if _same_key(r, m, k, n, density) else _distance(r, m, k, n, density, pattern)), cfg


def _pick(rows, m, k, n, density, pattern, runs=None):
    """(row, distance, config) of the first row of _ordered; (None, inf, None) when none runs."""
    return next(_ordered(rows, m, k, n, density, pattern, runs), (None, float("inf"), None))


def path_of(family: str, config: dict, layout: str) -> str | None:
    """The nk path a config of `family` runs (None for kn): a vendor path's is native, a kernel family's its nk_path."""
    from ..core import vendor  # noqa: PLC0415
    if layout != "nk":
        return None
    return "native" if vendor.is_vendor(family) else config.get(NK_PATH)


def _tuned(r: _Row, source: str, dist: float, cfg: dict, layout: str = DEFAULT_LAYOUT) -> Tuned:
    stored = json.loads(r.config_json)
    return Tuned(r.family, cfg, r.time_us, r.gpu, source, r.id, r.db, dist,
                 (r.m, r.k, r.n, r.density, r.dtype, r.pattern), stored if cfg != stored else None,
                 layout=layout, record_layout=r.layout, path=path_of(r.family, cfg, layout))


def nk_config(space, config: dict, dtype: str, env: dict, limits: dict | None, path: str | None) -> dict | None:
    """A kernel config (adapted to the problem) as an nk problem runs it: with its nk_path (`path`; None: native where
    the family declares nk, else staged), or None where that path cannot run it (native for a family without nk, or
    infeasible by the family's constraints over the nk space). A config without a path that cannot run natively runs
    staged."""
    from ..core.space import DEFAULT_LIMITS  # noqa: PLC0415
    nk = space.for_layout("nk")
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    for p in ([path] if path is not None else [space.default_path(), "staged"]):
        cfg = {**config, NK_PATH: p}
        if p in nk.param(NK_PATH).choices(dtype) and nk.check(cfg, env, lim) is None:
            return cfg
    return None


def _runner(m: int, k: int, n: int, nnz: int, dtype: str, limits: dict | None, allow_tf32: bool = False,
            layout: str = DEFAULT_LAYOUT):
    """row -> its config adapted to this problem by its family (core.families), or None where it cannot run it. A
    vendor path (core.vendor) runs any N as stored, at the problem's precision (TF32 only with `allow_tf32`). For an
    nk problem a kernel family's config gets its nk path (nk_config: an nk record's own, a kn record's the family's
    default); a kn problem is run by kn records only."""
    from ..core import vendor  # noqa: PLC0415
    from ..core.families import all_families  # noqa: PLC0415
    from ..core.space import problem_env  # noqa: PLC0415
    env = problem_env(m, k, n, nnz, dtype, layout)
    fams = all_families()

    def runs(r: _Row):
        if layout == DEFAULT_LAYOUT and r.layout != DEFAULT_LAYOUT:
            return None
        if vendor.is_vendor(r.family):
            return vendor.adapt(r.family, json.loads(r.config_json), dtype, allow_tf32)
        fam = fams.get(r.family)
        if fam is None:
            return None
        cfg, path = split_path(json.loads(r.config_json))
        got = fam.adapt(cfg, dtype, env, limits)
        if got is None or layout == DEFAULT_LAYOUT:
            return got
        return nk_config(fam.space, got, dtype, env, limits, path if r.layout == "nk" else None)
    return runs


def _tiers(rows, gpu, cc, layout: str):
    """The groups of rows lookup searches in turn, each (rows, same-arch?): this GPU model's, then another GPU's of
    the same compute capability; for an nk problem each of them nk records first, then kn records."""
    mine = [r for r in rows if gpu is None or r.gpu == gpu]
    arch = [x for x in rows if gpu is not None and cc is not None and x.cc == cc and x.gpu != gpu]
    out = []
    for group, is_arch in ((mine, False), (arch, True)):
        if layout not in ("kn", "nk"):  # another operator's own layouts (conv3x3: nchw, nhwc): records of that layout
            out.append(([r for r in group if r.layout == layout], is_arch))
            continue
        if layout == "nk":
            out.append(([r for r in group if r.layout == "nk"], is_arch))
        out.append(([r for r in group if r.layout == DEFAULT_LAYOUT], is_arch))
    return out


# The built-in default's cells: N up to 8 (decode), 64, 512, larger; density up to 3 %, 7 %, 15 %, denser.
N_RANGES = (8, 64, 512)
DENSITY_RANGES = (0.03, 0.07, 0.15)
# a dtype with no shipped record in a cell borrows the winners of the dtype of the same width
RELATED_DTYPE = {"bf16": "fp16"}


def _cell(n: int, density: float) -> tuple[int, int]:
    import bisect  # noqa: PLC0415
    return bisect.bisect_left(N_RANGES, n), bisect.bisect_left(DENSITY_RANGES, density)


def _from_shipped(m: int, k: int, n: int, density: float, dtype: str, runs,
                  layout: str = DEFAULT_LAYOUT) -> Tuned | None:
    """The default from the shipped records of any GPU: in this problem's (N range, density range) cell of the dtype
    (else of the related dtype), the family that won most often there, with the config of its record nearest to this
    problem that runs it (the next family where none does); an nk problem: the cell's nk records first, then its kn
    records."""
    rows = [r for target in shipped_databases() for r in _best_rows(target)]
    for dt in (dtype, RELATED_DTYPE.get(dtype)):
        cell = [r for r in rows if dt is not None and r.dtype == dt and _cell(r.n, r.density) == _cell(n, density)]
        for lay in (("nk", DEFAULT_LAYOUT) if layout == "nk" else (DEFAULT_LAYOUT,)):
            part = [r for r in cell if r.layout == lay]
            wins: dict[str, int] = {}
            for r in part:
                wins[r.family] = wins.get(r.family, 0) + 1
            for fam in sorted(wins, key=lambda f: -wins[f]):
                r, dist, cfg = _pick([x for x in part if x.family == fam], m, k, n, density, None, runs)
                if r is not None:
                    return Tuned(r.family, cfg, r.time_us, r.gpu, "default", r.id, r.db, dist,
                                 (r.m, r.k, r.n, r.density, r.dtype, r.pattern), layout=layout,
                                 record_layout=r.layout, path=path_of(r.family, cfg, layout))
    return None


def default_config(m: int, k: int, n: int, dtype: str, nnz: int | None = None, limits: dict | None = None,
                   density: float | None = None, allow_tf32: bool = False, layout: str = DEFAULT_LAYOUT) -> Tuned:
    """The built-in default, when no record of this GPU model or its architecture runs the problem: the shipped
    records' most frequent winner for the problem's (dtype, N range, density range) (`_from_shipped`; `.record_id`
    names the record its config came from), else the first feasible known-good config of the enabled families, by
    rank, else their first feasible config. nk: the config with its nk path (core.space.Space.for_layout: native
    where the family declares nk)."""
    from ..core.space import problem_env, select_spaces  # noqa: PLC0415
    nnz = nnz if nnz is not None else (max(1, round(density * m * k)) if density else m * k)
    env = problem_env(m, k, n, nnz, dtype, layout)
    shipped = _from_shipped(m, k, n, density if density else nnz / (m * k), dtype,
                            _runner(m, k, n, nnz, dtype, limits, allow_tf32, layout), layout)
    if shipped is not None:
        return shipped
    spaces = [s.for_layout(layout) for s in select_spaces()]

    def built_in(space, cfg):
        return Tuned(space.family, cfg, None, None, "default", None, None, 0.0, None, layout=layout,
                     record_layout=layout, path=path_of(space.family, cfg, layout))
    for space in spaces:
        d = space.defaults(dtype, env, limits)
        if d:
            return built_in(space, d[0])
    for space in spaces:
        for cfg in space.feasible(dtype, env, limits):
            return built_in(space, cfg)
    raise UserError(f"no kernel in the variant space can run M={m}, K={k}, N={n}, {dtype}")


def _first_in_tiers(rows, m, k, n, density, pattern, runs, gpu, cc, layout: str, fallback: bool,
                    buckets: bool = True) -> Tuned | None:
    """The first record of lookup's tiers (_tiers: this GPU model's, then, with fallback and a GPU, the same
    architecture's) that runs the problem: an exact key, else (fallback) the nearest by _ordered. Its source: exact,
    bucket (where `buckets` and the record's N is in this N's bucket), nearest or same-arch."""
    for group, is_arch in _tiers(rows, gpu, cc, layout):
        if is_arch and (not fallback or gpu is None):
            break
        r, dist, cfg = _pick(group, m, k, n, density, pattern, runs)
        if r is None or not (dist == 0.0 or fallback):
            continue
        how = "same-arch" if is_arch else ("exact" if dist == 0.0 else "bucket" if buckets and _same_bucket(
            r, m, k, n, density) else "nearest")
        return _tuned(r, how, dist, cfg, layout)
    return None


def lookup(m: int, k: int, n: int, density: float, dtype: str = "fp32", gpu: str | None = None, db=None,
           pattern: str | None = None, fallback: bool = True, cc: str | None = None, nnz: int | None = None,
           limits: dict | None = None, adapt: bool = True, allow_tf32: bool = False,
           layout: str = DEFAULT_LAYOUT) -> Tuned | None:
    """The best known config for (M, K, N, density, dtype) on a GPU, adapted to this N; `.source` says how it was found.

    The config is the record's as its family adapts it to this problem (a vector width N does not divide is lowered,
    say: `.stored_config` then holds the stored one); a record whose config cannot run this problem is passed over for
    the next nearest. gpu=None: records of any GPU match (runtime.lookup fills in the current GPU, its compute
    capability and limits). fallback=False returns only an exact record, else None.
    nnz: A's nonzeros (default round(density * M * K)); limits: the GPU's (default: an H100's; runtime.lookup passes
    the current GPU's).
    adapt=False: the stored configs as they are, whether or not they run this problem (the database's own view).
    A record of a vendor path (family cusparse or dense, core.vendor) is found like any other and runs any N; a dense
    record of TF32 serves an fp32 problem only with allow_tf32 (the user's opt-in).
    layout: the problem's operand layout (kn; nk: nk records first, then kn records: the module's docstring).
    adapt=False with layout nk: the stored configs as they are (a kn record's without an nk path).
    """
    check_dtype(dtype)
    check_layout(layout)
    density = check_density(density)
    m, k, n = check_dims(m, k, n)  # positive integers the kernels can index (a UserError, not a math error, else)
    nnz = int(nnz) if nnz is not None else max(1, round(density * m * k))
    targets = search_path(db)
    ckey = (tuple(targets), m, k, n, round(density, 9), dtype, gpu, cc, pattern, fallback, nnz,
            tuple(sorted((limits or {}).items())), adapt, allow_tf32, layout)
    stamps = tuple(_stamp(t) for t in targets)
    hit = _result_cache.get(ckey)
    if hit is not None and hit[0] == stamps:
        return hit[1]

    runs = _runner(m, k, n, nnz, dtype, limits, allow_tf32, layout) if adapt else None
    rows = [r for t in targets for r in _best_rows(t) if r.dtype == dtype]
    if gpu is not None and cc is None:
        cc = next((x.cc for x in rows if x.gpu == gpu), None)
    res = _first_in_tiers(rows, m, k, n, density, pattern, runs, gpu, cc, layout, fallback)
    if res is None and fallback:
        res = default_config(m, k, n, dtype, nnz, limits, density, allow_tf32, layout)
    if res is not None and adapt and res.record_id is not None:  # the record's own baselines may prefer a vendor path
        row = next((x for x in rows if x.id == res.record_id and x.db == res.db), None)
        res = _vendor_instead(res, row, dtype, allow_tf32, n, rows) if row is not None else res
    _result_cache[ckey] = (stamps, res)
    return res


def candidates(m: int, k: int, n: int, density: float, dtype: str = "fp32", gpu: str | None = None, db=None,
               pattern: str | None = None, cc: str | None = None, nnz: int | None = None, limits: dict | None = None,
               allow_tf32: bool = False, limit: int = 4, layout: str = DEFAULT_LAYOUT) -> list[Tuned]:
    """Up to `limit` distinct configs that can run the problem, adapted to this N, in lookup's order: this GPU model's
    records (exact, bucket, nearest), then another GPU of the same compute capability (same-arch), then the built-in
    default; each (family, config) once. What the runtime's quick tuning times at the first call with a new N (beside
    the vendor paths). The first one is lookup's answer where lookup has a record. layout nk: as lookup (nk records
    before kn records in each group; the configs with their nk path)."""
    check_dtype(dtype)
    check_layout(layout)
    density = check_density(density)
    m, k, n = check_dims(m, k, n)
    nnz = int(nnz) if nnz is not None else max(1, round(density * m * k))
    runs = _runner(m, k, n, nnz, dtype, limits, allow_tf32, layout)
    rows = [r for t in search_path(db) for r in _best_rows(t) if r.dtype == dtype]
    if cc is None and gpu is not None:
        cc = next((x.cc for x in rows if x.gpu == gpu), None)
    out: list[Tuned] = []
    seen: set[tuple[str, str]] = set()

    def add(t: Tuned) -> bool:
        key = (t.family, json.dumps(t.config, sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(t)
        return len(out) >= limit
    for group, arch_group in _tiers(rows, gpu, cc, layout):
        for r, dist, cfg in _ordered(group, m, k, n, density, pattern, runs):
            how = "same-arch" if arch_group else ("exact" if dist == 0.0 else "bucket"
                                                   if _same_bucket(r, m, k, n, density) else "nearest")
            if add(_tuned(r, how, dist, cfg, layout)):
                return out
    try:
        add(default_config(m, k, n, dtype, nnz, limits, density, allow_tf32, layout))
    except UserError:
        if not out:
            raise
    return out


def record_config(r) -> dict | None:
    """A record row's config (its config_json) as a dict, None where it does not parse to one: for an operator's
    `runs(row)` (op_lookup)."""
    try:
        cfg = json.loads(r.config_json)
    except ValueError:
        return None
    return cfg if isinstance(cfg, dict) else None


def op_lookup(op: str, m: int, k: int, n: int, density: float, dtype: str, runs, gpu: str | None = None,
              cc: str | None = None, db=None, pattern: str | None = None, fallback: bool = True,
              layout: str = DEFAULT_LAYOUT) -> Tuned | None:
    """The best record of the operator `op` (store.db: its key's M, K, N) for a problem, in lookup's order over the user's
    database and the shipped ones: this GPU model's exact key, else (fallback) its nearest record (log-scaled M, K, N
    and density), else another GPU of the same compute capability (`cc`; exact first, else nearest). `runs(row)`: the
    record's config as this problem runs it, or None to pass the record over. `.source` is exact, nearest or
    same-arch; None where no record runs the problem (the operator's runtime has its own default). gpu=None: records
    of any GPU."""
    rows = [r for t in search_path(db) for r in _best_rows(t, op) if r.dtype == dtype]
    if gpu is not None and cc is None:
        cc = next((x.cc for x in rows if x.gpu == gpu), None)
    # layout: the operator's own layout of its records (conv3x3: nchw / nhwc); kn for the others
    return _first_in_tiers(rows, m, k, n, density, pattern, runs, gpu, cc, layout, fallback, buckets=False)


def _row(r, label: str) -> _Row:
    return _Row(r.id, r.gpu_name, r.gpu_cc, r.m, r.k, r.n, r.density, r.dtype, r.pattern, r.family, r.config_json,
                r.time_us, label, r.cusparse_us, r.cublas_fp32_us, r.cublas_tf32_us, r.cublas_fp16_us,
                getattr(r, "layout", None) or DEFAULT_LAYOUT, getattr(r, "op", None) or DEFAULT_OP,
                getattr(r, "cold_us", None))


# A record of a kernel that serves another problem than its own (another N in its bucket, the nearest key, another GPU
# of the same architecture) must have beaten the fastest vendor path by this much in its own baselines, else the
# vendor path serves: a narrow win does not travel (MiniLM on the H200 from H100 records, N = 128 -> 200: kernels that
# had won by 1-7 % ran at 0.59-0.92x of cuSPARSE; bench/results/runtime-untuned-off-h200.md, bench/NOTES.md).
TRANSFER_MARGIN = 0.10


# A kn record's baselines read for an nk problem (SparseLinear served by records tuned in kn): cuSPARSE with x and y as
# column-major operands plus its bias kernel ran 2.0x its kn time (MiniLM fp32 384x384 at N = 200 on the H200: 13.8 us
# against 6.9; bench/NOTES.md, session 9), and the staged path adds two kernels (x transposed, y = C^T + bias) that
# cost about a launch each plus a pass over x and y (STAGED_LAUNCH_US + bytes / STAGED_BYTES_PER_US).
NK_CUSPARSE_FACTOR = 2.0
STAGED_LAUNCH_US = 2.5
STAGED_BYTES_PER_US = 2.0e6  # 2 TB/s: small transposes do not reach the copy bandwidth


def _nk_cost(family: str) -> float:
    """The family's nk_cost (core.space.Space): 2.0 where the family is unknown here."""
    from ..core.families import get_family  # noqa: PLC0415
    try:
        return float(get_family(family).space.nk_cost)
    except KeyError:
        return 2.0


def staged_extra_us(m: int, k: int, n: int, dtype: str) -> float:
    """The estimated cost the staged nk path adds to a kn kernel: two kernels, x read and written, y read and written."""
    es = element_bytes(dtype)
    return 2 * STAGED_LAUNCH_US + 2 * es * n * (m + k) / STAGED_BYTES_PER_US


# A record carried to a larger N than its own: a kernel's time grows with N (B's rows gathered per nonzero, C written)
# while the vendor paths' hardly does at small N (cuBLAS is bound by A's M x K there). The record's times are carried
# to N along the growth that the record of the same key at the next larger N shows (log-log between the two), else
# with these exponents (MiniLM 384x1536 fp16 d 0.05, H100 records at N = 128 and 1024: tc_gather's time grew as
# N^0.48, cuBLAS FP16's as N^0.11; carried to N = 200 on the H200 unscaled, the kernel ran at 0.87x of cuBLAS:
# bench/NOTES.md, session 11).
N_GROWTH_KERNEL = 0.5
N_GROWTH_VENDOR = 0.0
_TIME_COLUMNS = ("time_us", "cusparse_us", "cublas_fp32_us", "cublas_tf32_us", "cublas_fp16_us")


def carried_to_n(r: _Row, rows, n: int | None) -> dict[str, float]:
    """The record's times (its kernel's `time_us` and its baselines' columns) carried to N = n: unchanged where n is at
    most the record's N; else each scaled by (n / r.n)^e, e the log-log slope between r and the record of the same
    key (GPU, M, K, density, dtype, layout, pattern) at the smallest N >= n above r's, where there is one (clipped to
    [0, 1.5]), else N_GROWTH_KERNEL for the kernel and N_GROWTH_VENDOR for the baselines."""
    times = {c: getattr(r, c) for c in _TIME_COLUMNS}
    if n is None or n <= r.n:
        return times
    above = [x for x in rows if x.n >= n and x.gpu == r.gpu and (x.m, x.k, x.dtype, x.layout, x.pattern)
             == (r.m, r.k, r.dtype, r.layout, r.pattern) and abs(x.density - r.density) <= r.density * DENSITY_RTOL]
    nxt = min(above, key=lambda x: x.n, default=None)
    out = {}
    for c, v in times.items():
        if not v:
            out[c] = v
            continue
        e = N_GROWTH_KERNEL if c == "time_us" else N_GROWTH_VENDOR
        w = getattr(nxt, c) if nxt is not None else None
        if w:
            e = min(1.5, max(0.0, math.log(w / v) / math.log(nxt.n / r.n)))
        out[c] = v * (n / r.n) ** e
    return out


def _vendor_instead(t: Tuned, r: _Row, dtype: str, allow_tf32: bool, n: int | None = None, rows=()) -> Tuned:
    """A record of a kernel whose own baselines (cuSPARSE, cuBLAS of the problem's precision, timed beside it in the
    same process) were faster serves the problem with that vendor path: records tuned before the vendor paths were
    candidates say so only through those columns. Where the record is not this problem's own (source other than
    exact), the kernel must have won by TRANSFER_MARGIN, both at the record's N and with its times carried to this N
    (`carried_to_n`, with the other records `rows`): carrying can take a kernel's win away, never make one. bf16
    problems: cuSPARSE only (cuBLAS BF16 is a schema 3 column)."""
    from ..core import vendor  # noqa: PLC0415
    nk_from_kn = t.layout == "nk" and t.record_layout != "nk"
    if t.family == vendor.CUSPARSE and nk_from_kn:
        return _dense_for_nk(t, r, dtype, allow_tf32,
                             f"record {r.id} is cuSPARSE's in kn ({r.m}x{r.k}, N={r.n}, on {r.gpu}); in nk cuSPARSE "
                             f"takes x and y as column-major operands plus a bias kernel (about {NK_CUSPARSE_FACTOR:.0f}x "
                             "its kn time), so cuBLAS (F.linear) serves")
    if vendor.is_vendor(t.family) or not r.time_us:
        return t
    # exact and of the problem's own layout: the record's own verdict; anything else (a kn record serving nk too)
    # is carried to another problem
    margin = 0.0 if t.source == "exact" and t.record_layout == t.layout else TRANSFER_MARGIN

    def loser(at: dict):
        """(the fastest vendor option, the kernel's time) where the kernel does not win by the margin at these
        times, else None."""
        dense = {"fp32": [("fp32", at["cublas_fp32_us"])] + ([("tf32", at["cublas_tf32_us"])] if allow_tf32 else []),
                 "tf32": [("tf32", at["cublas_tf32_us"])],  # the tf32 dtype's own precision
                 "fp16": [("fp16", at["cublas_fp16_us"])]}.get(dtype, [])
        options = [(us, vendor.DENSE, {"math": math_}, f"cuBLAS {math_.upper()}") for math_, us in dense if us]
        kernel_us = at["time_us"]
        if at["cusparse_us"] and not (nk_from_kn and options):
            # the record's cuSPARSE time is the best of the algorithms, and which one is not stored: the runtime times
            # them. A kn record serving nk: cuBLAS (F.linear, nn.Linear's own call) where the record has its time;
            # cuSPARSE in nk (column-major operands and a bias kernel, NK_CUSPARSE_FACTOR its kn time) only where not
            options.append((at["cusparse_us"] * (NK_CUSPARSE_FACTOR if nk_from_kn else 1.0), vendor.CUSPARSE,
                            {"alg": vendor.CUSPARSE_AUTO}, "cuSPARSE" + (" (nk)" if nk_from_kn else "")))
        if nk_from_kn and t.path == "staged":  # the staged path adds two kernels and two passes over x and y
            kernel_us += staged_extra_us(r.m, r.k, n or r.n, dtype)
        elif nk_from_kn and t.path == "native":  # the family's own nk kernel: its space's nk_cost times the kn time
            kernel_us *= _nk_cost(r.family)
        best = min(options, key=lambda o: o[0], default=None)
        return None if best is None or best[0] >= kernel_us * (1.0 + margin) else (best, kernel_us)

    own = {c: getattr(r, c) for c in _TIME_COLUMNS}
    carried = carried_to_n(r, rows, n) if t.source != "exact" else own
    lost, at_n = loser(own), None
    if lost is None and carried != own:
        lost, at_n = loser(carried), n
    if lost is None:
        return t
    (us, family, cfg, name), kernel_us = lost
    kern = f"{r.family} {kernel_us:.2f} us" + ((" (staged in nk, estimated)" if t.path == "staged" else
                                                 " (its nk kernel, estimated)") if nk_from_kn else "")
    where = f"at N={r.n}" if at_n is None else f"carried from N={r.n} to N={at_n}"
    if us < kernel_us:
        note = (f"record {r.id}'s own baselines: {name} {us:.2f} us beat its {kern} "
                f"({kernel_us / us:.2f}x) {where} on {r.gpu}")
    else:
        what = "another problem" if t.record_layout == t.layout else f"the {t.layout} layout (a {r.layout} record)"
        note = (f"record {r.id}'s {kern} beat {name} by only {us / kernel_us:.2f}x ({us:.2f} us) "
                f"{where} on {r.gpu}: a win under {1 + TRANSFER_MARGIN:.2f}x is not carried to {what}")
    return Tuned(family, cfg, us, t.gpu, t.source, t.record_id, t.db, t.distance, t.key, None, note,
                 layout=t.layout, record_layout=t.record_layout, path=path_of(family, cfg, t.layout))


def _dense_for_nk(t: Tuned, r: _Row, dtype: str, allow_tf32: bool, why: str) -> Tuned:
    """cuBLAS of the problem's precision (TF32 for fp32 where allowed and the record's TF32 time beat its FP32 time)
    serving an nk problem instead of a kn record's cuSPARSE: MiniLM on the H200, SparseLinear served by H200 kn records
    of cuSPARSE (and of kernels whose baselines preferred cuSPARSE) ran at 0.31-0.73x of nn.Linear (fp32, N = 16 and
    200; bench/NOTES.md, session 11)."""
    from ..core import vendor  # noqa: PLC0415
    math_ = vendor.DENSE_MATH.get(dtype, dtype)
    if dtype == "fp32" and allow_tf32 and r.cublas_tf32_us and (not r.cublas_fp32_us or r.cublas_tf32_us < r.cublas_fp32_us):
        math_ = vendor.TF32
    cfg = {"math": math_}
    us = {"fp32": r.cublas_tf32_us if math_ == vendor.TF32 else r.cublas_fp32_us, "tf32": r.cublas_tf32_us,
          "fp16": r.cublas_fp16_us}.get(dtype)
    return Tuned(vendor.DENSE, cfg, us, t.gpu, t.source, t.record_id, t.db, t.distance, t.key, None, why,
                 layout=t.layout, record_layout=t.record_layout, path=path_of(vendor.DENSE, cfg, t.layout))


def _is_tf32(family: str, config_json: str) -> bool:
    from ..core.vendor import DENSE, TF32  # noqa: PLC0415
    if family != DENSE:
        return False
    try:
        return json.loads(config_json).get("math") == TF32
    except (ValueError, AttributeError):
        return False


def db_best_rows(tdb: TuningDB, op: str = DEFAULT_OP) -> list[_Row]:
    """Every best-flagged record of the operator `op` (spmm by default) in an open tuning database; where the best of a
    key is cuBLAS TF32 (tuned with the user's opt-in), also the fastest (rank_us) verified other record of that key,
    which serves whoever has not opted in."""
    from ..store.db import is_verified  # noqa: PLC0415

    # a file from before schema version 4 has no layout column: its records are all kn; from before 5 no op column:
    # its records are all spmm; from before 6 no cold_us column: no cold times
    cols = (*_COLUMNS, Record.layout if "layout" not in tdb._missing else literal(DEFAULT_LAYOUT).label("layout"),
            Record.op if "op" not in tdb._missing else literal(DEFAULT_OP).label("op"),
            Record.cold_us if "cold_us" not in tdb._missing else literal(None, Float).label("cold_us"))
    best_q = tdb._op_query(select(*cols).where(Record.is_best.is_(True)), op)
    if best_q is None:  # another operator's records asked of a file from before schema version 5: it has none
        return []

    def read():
        with tdb.engine.connect() as con:
            rows = [_row(r, tdb.label) for r in con.execute(best_q)]
            for b in [r for r in rows if _is_tf32(r.family, r.config_json)]:
                q = tdb._layout_query(TuningDB._key_query(b.gpu, b.m, b.k, b.n, b.density, b.dtype, b.pattern),
                                      b.layout, b.op)
                q = q.with_only_columns(*cols, Record.max_rel_err).where(Record.is_best.is_(False))
                rest = [r for r in con.execute(q) if is_verified(r) and not _is_tf32(r.family, r.config_json)]
                rows += [_row(min(rest, key=lambda r: (rank_us(r), r.id)), tdb.label)] if rest else []
            return rows
    try:
        return tdb._reading(read)  # a read-only file: read again if a writer touched it meanwhile
    except SQLAlchemyError as exc:
        raise UserError(f"cannot read database {tdb.label!r}: {str(exc).splitlines()[0]}") from None


def seed_configs(tdb: TuningDB, m: int, k: int, n: int, density: float, dtype: str, gpu: str,
                 pattern: str | None = None, families=None, limit: int = 6, per_family: int = 2,
                 layout: str = DEFAULT_LAYOUT, op: str = DEFAULT_OP) -> list[tuple[str, dict]]:
    """Warm start for a search: the configs of the best records nearest to (M, K, N, density) tuned on this GPU model
    for this dtype, in the open database `tdb` and the shipped ones, nearest first, at most `per_family` per family
    and `limit` in all, each (family, config) once; only the given families. A kn problem's seeds are kn records'; an
    nk problem's nk records' and kn records' (a record of the other layout counts 0.25 farther; a kn config gets the
    family's default nk path when the search normalizes it). op: the operator whose records seed (spmm by default).

    `tdb` is read through its own engine (a tuner holds it open: opening the same SQLite file through another
    descriptor of this process and closing it would drop this process's locks on it)."""
    own = str(tdb.path) if tdb.path is not None else None
    rows = db_best_rows(tdb, op)
    for target in shipped_databases():
        if own is None or str(Path(target).resolve()) != own:
            try:
                rows += _best_rows(target, op)
            except UserError:
                continue  # an unreadable shipped file gives no seeds; lookup reports it
    rows = [r for r in rows if r.dtype == dtype and r.gpu == gpu and (families is None or r.family in families)
            and (layout == "nk" or r.layout == DEFAULT_LAYOUT)]
    rows.sort(key=lambda r: (_distance(r, m, k, n, density, pattern) + (0.25 if r.layout != layout else 0.0),
                             r.time_us))
    out: list[tuple[str, dict]] = []
    seen: set[tuple[str, str]] = set()
    count: dict[str, int] = {}
    for r in rows:
        if len(out) >= limit:
            break
        key = (r.family, r.config_json)
        if key in seen or count.get(r.family, 0) >= per_family:
            continue
        seen.add(key)
        count[r.family] = count.get(r.family, 0) + 1
        out.append((r.family, json.loads(r.config_json)))
    return out


def _clear():
    _rows_cache.clear()
    _result_cache.clear()


lookup.cache_clear = _clear  # type: ignore[attr-defined]

__all__ = ["SOURCES", "Tuned", "candidates", "default_config", "lookup", "op_lookup", "search_path", "seed_configs"]
