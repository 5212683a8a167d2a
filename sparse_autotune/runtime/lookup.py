"""lookup on this GPU: store.lookup with the current device's name, compute capability and limits filled in."""
from __future__ import annotations

from ..store import lookup as _store


def lookup(m: int, k: int, n: int, density: float, dtype: str = "fp32", gpu: str | None = None, db=None, **kw):
    """The best known config for (M, K, N, density, dtype), adapted to this N (store.lookup.lookup). gpu=None means the
    current CUDA device (its compute capability and limits too) when there is one; with no GPU and no gpu= given,
    records of any GPU match."""
    if gpu is None:
        from ..device.gpu import gpu_available, gpu_info  # noqa: PLC0415
        if gpu_available():
            info = gpu_info()
            gpu = info.name
            kw.setdefault("cc", info.cc)
            kw.setdefault("limits", info.limits())
    return _store.lookup(m, k, n, density, dtype, gpu=gpu, db=db, **kw)


lookup.cache_clear = _store.lookup.cache_clear  # type: ignore[attr-defined]
