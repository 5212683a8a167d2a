"""Runtime lookup of the best stored config for a problem."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .problem import check_density, check_dtype
from .tuningdb import TuningDB, check_file, default_db_path, is_url


@dataclass(frozen=True)
class Tuned:
    family: str
    config: dict
    time_us: float
    gpu: str
    source: str  # "exact" (this lookup finds exact keys only)
    record_id: int
    db: str


_cache: dict = {}


def lookup(m: int, k: int, n: int, density: float, dtype: str = "fp32", gpu: str | None = None,
           db=None, pattern: str | None = None) -> Tuned | None:
    """The best stored config for (M, K, N, density, dtype) on a GPU, or None.

    gpu=None means the current CUDA device when there is one, else any GPU. db: a path or SQLAlchemy URL;
    default $SPARSE_AUTOTUNE_DB or the user cache's tuning.sqlite. pattern=None matches any pattern.
    Results are cached in-process per (db, key); `lookup.cache_clear()` forgets them.
    """
    check_dtype(dtype)
    density = round(check_density(density), 6)
    if gpu is None:
        from .gpu import gpu_available, gpu_info  # noqa: PLC0415
        gpu = gpu_info().name if gpu_available() else None
    target = str(db) if db is not None else str(default_db_path())
    key = (target, m, k, n, density, dtype, gpu, pattern)
    if key in _cache:
        return _cache[key]
    if not is_url(target):
        state = check_file(Path(target).expanduser())
        if state in ("missing", "empty"):
            return None
    tdb = TuningDB(target, create=False, readonly=not is_url(target))
    try:
        rec = tdb.best(m, k, n, density, dtype, gpu=gpu, pattern=pattern)
    finally:
        tdb.dispose()
    res = None if rec is None else Tuned(rec.family, rec.config, rec.time_us, rec.gpu_name, "exact", rec.id, tdb.label)
    if res is not None:  # a miss is not cached: a tune in another process may store it
        _cache[key] = res
    return res


def _clear():
    _cache.clear()


lookup.cache_clear = _clear  # type: ignore[attr-defined]

__all__ = ["Tuned", "UserError", "lookup"]
