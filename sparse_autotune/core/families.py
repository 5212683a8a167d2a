"""The family registry: a kernel family is four files, found here by name and edited nowhere else.

    search_spaces/<family>.toml         its space: parameters, constraints, dtypes, known-good configs
    variants/<family>.cu.j2 (.ptx.j2)   its template (Jinja2 -> CUDA C++ or PTX)
    variants/<family>.py                its host side (below)
    tests/families/test_<family>.py     its tests

The host side is a plain module (loaded from its file; it may import numpy, scipy and sparse_autotune.core). It
defines, for a compiled `kernel` (device.kernel.Kernel: `.config`, `.dtype`, `.a` the matrix on the device):

    threads(config) -> int                      threads per block
    geometry(kernel, n) -> (grid, block)        the launch for N columns
    args(kernel, n, b, c) -> tuple              the kernel's parameters in order: A's device arrays (built by pure
                                                numpy functions of the host CSR matrix and cached on the device with
                                                `kernel.a.cached(key, build)`), `b` and `c` passed through as given,
                                                np.int32 scalars
    args(kernel, n, b, c, bias=None)            instead, for a family whose space declares `layouts = ["kn", "nk"]`:
                                                where kernel.layout == "nk" (b is x, N x K; c is y, N x M) the tuple
                                                has `bias` (passed through as given, like b and c; a null pointer
                                                where there is no bias) right after `c`; kn: as above
    smem_bytes(kernel) -> int                   optional: dynamic shared memory per block (default 0)
    adapt(space, config, dtype, env, limits)    optional: the config adapted to a problem it cannot run as stored
                                                (another N), or None (default: `adapt_params(..., ())`: as is or None)
    context(host_csr, config) -> dict           optional: extra template variables (families rendered per pattern)

Extra families are found in the folders named by $SPARSE_AUTOTUNE_FAMILY_PATH (os.pathsep-separated; each folder holds
a family's .toml, template and .py side by side) and in folders added with `add_folder` (tests, plug-ins). A family
of an extra folder replaces a built-in one of the same name.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..resources import resource_dir
from .space import DEFAULT_LIMITS, Space, parse_space

PATH_ENV = "SPARSE_AUTOTUNE_FAMILY_PATH"
REQUIRED = ("threads", "geometry", "args")

_extra: list[Path] = []
_cache: dict[tuple, dict[str, "Family"]] = {}
_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class Family:
    """One kernel family: its space, the folder of its template, and its host side."""

    name: str
    space: Space
    folder: Path
    host: ModuleType

    @property
    def template_path(self) -> Path:
        return self.folder / self.space.template

    def threads(self, config: dict) -> int:
        return int(self.host.threads(config))

    def geometry(self, kernel, n: int) -> tuple[tuple, tuple]:
        return self.host.geometry(kernel, n)

    def args(self, kernel, n: int, b, c, bias=None) -> tuple:
        """The kernel's parameters; an nk kernel's (kernel.layout, only for a family declaring nk) with `bias`."""
        if getattr(kernel, "layout", "kn") == "nk":
            if not self.space.supports_layout("nk"):
                raise ValueError(f"family {self.name} does not declare the nk layout")
            return tuple(self.host.args(kernel, n, b, c, bias))
        return tuple(self.host.args(kernel, n, b, c))

    def smem_bytes(self, kernel) -> int:
        f = getattr(self.host, "smem_bytes", None)
        return int(f(kernel)) if f else 0

    def adapt(self, config: dict, dtype: str, env: dict, limits: dict | None = None) -> dict | None:
        f = getattr(self.host, "adapt", None)
        if f is None:
            return adapt_params(self.space, config, dtype, env, limits, ())
        return f(self.space, config, dtype, env, limits)

    def context(self, host_csr, config: dict) -> dict | None:
        f = getattr(self.host, "context", None)
        return f(host_csr, config) if f else None

    def wrap_launcher(self, kernel, n: int, launcher):
        """The launcher a call runs: the kernel's own, or the family's wrapper of it (host `wrap_launcher`: e.g.
        tc_sp24's tf32 in kn, a conversion kernel of B launched before it)."""
        f = getattr(self.host, "wrap_launcher", None)
        return f(kernel, n, launcher) if f else launcher


def adapt_params(space: Space, config: dict, dtype: str, env: dict, limits: dict | None, names) -> dict | None:
    """The config (normalized) if it can run this problem; else, for each parameter in `names` in turn, the config with
    the first other value of that parameter that can (numbers: the largest value below the stored one first; strings:
    the space's order); else None. What most families' `adapt` is (a vector width N does not divide, say)."""
    cfg = space.normalize(config, dtype)
    if cfg is None:
        return None
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    if space.check(cfg, env, lim) is None:
        return cfg
    for name in names:
        if name not in cfg:
            continue
        choices = space.param(name).choices(dtype)
        cur = cfg[name]
        if all(isinstance(v, (int, float)) for v in choices):
            order = sorted((v for v in choices if v < cur), reverse=True)
        else:
            order = [v for v in choices if v != cur]
        for v in order:
            trial = {**cfg, name: v}
            if space.check(trial, env, lim) is None:
                return trial
    return None


def adapt_jointly(space: Space, config: dict, dtype: str, env: dict, limits: dict | None, orders) -> dict | None:
    """For an N where one parameter at a time does not do (adapt_params): the first config, in the order of the
    product of the values orders(cfg) gives per parameter (a dict, the first parameter outermost; cfg: the config
    normalized), that can run this problem; None where the config does not normalize or none can."""
    cfg = space.normalize(config, dtype)
    if cfg is None:
        return None
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    tries = orders(cfg)
    for values in itertools.product(*tries.values()):
        trial = {**cfg, **dict(zip(tries, values))}
        if space.check(trial, env, lim) is None:
            return trial
    return None


def narrower(space: Space, cfg: dict, dtype: str, name: str) -> list:
    """The values of parameter `name` up to the config's, largest first (a column tile that fits a smaller N)."""
    return sorted((v for v in space.param(name).choices(dtype) if v <= cfg[name]), reverse=True)


def stored_then_scalar(cfg: dict) -> list:
    """bload as stored, then 16-bit loads (any N)."""
    return list(dict.fromkeys((cfg["bload"], "scalar")))


def adapt_nb_bload_splitk(space: Space, config: dict, dtype: str, env: dict, limits: dict | None) -> dict | None:
    """The split-K tile families' adaptation to another N (tc_tiled2, tc_tiled3, tc_bitmap, tc_scatter): scalar staging
    of B where 16-byte copies do not divide N, and/or a narrower column tile (nb), and/or more split-K where B's slice
    outgrows shared memory; the rest of the config as stored."""
    got = adapt_params(space, config, dtype, env, limits, ("bload", "nb"))
    if got is not None:
        return got
    return adapt_jointly(space, config, dtype, env, limits, lambda cfg: {
        "nb": narrower(space, cfg, dtype, "nb"), "bload": stored_then_scalar(cfg),
        "splitk": sorted(v for v in space.param("splitk").choices(dtype) if v >= cfg["splitk"])})


def splitk_shape(splits: int, tiles: int, words_per_slice: int) -> tuple[int, int]:
    """(fp32 words of partial sums, counters) of the deterministic split-K reduction the split-K families share: a slice
    of `words_per_slice` per (output tile, split) and one counter per output tile; (4, 1) where splits == 1 (no
    reduction; the kernel still takes the two pointers). Counters start at 0 and every launch leaves them at 0 (the last
    block of a tile adds the slices in order and resets its counter), so the workspace is never cleared between calls;
    it must not serve two launches in flight at once (two streams): kernels of the same geometry and N share it."""
    if splits == 1:
        return 4, 1
    return tiles * splits * words_per_slice, tiles


def splitk_workspace(kernel, family: str, shape: tuple[int, int], n: int):
    """The zeroed (fp32 partial sums, int32 counters) of splitk_shape, cached on the device with A per (family, shape,
    N)."""
    import numpy as np  # noqa: PLC0415
    nws, ncnt = shape
    return kernel.a.cached((f"{family}_ws", nws, ncnt, n),
                           lambda host: (np.zeros(nws, dtype=np.float32), np.zeros(ncnt, dtype=np.int32)))


def warp_slices_shape(config: dict, row_blocks: int, ntiles: int) -> tuple[int, int]:
    """The split-K workspace of tc_bitmap and tc_scatter (their kernels share the reduction, `red`): a slice per (row
    block, column tile, split) of warps x 32 lanes x mr x nb float4s and a counter per (row block, column tile)
    (splitk_shape); red "atomic": one slice per (row block, column tile), which every split adds into and the last block
    zeroes again."""
    words = config["warps"] * 32 * config["mr"] * config["nb"] * 4
    if _red_atomic(config):
        return row_blocks * ntiles * words, row_blocks * ntiles
    return splitk_shape(config["splitk"], row_blocks * ntiles, words)


def _red_atomic(config: dict) -> bool:
    """The split-K sums go through red "atomic" (one slice every split adds into), not the per-split slices."""
    return config["splitk"] > 1 and config.get("red") == "atomic"


def warp_slices_workspace(kernel, family: str, row_blocks: int, ntiles: int, n: int):
    """warp_slices_shape's (fp32 sums, counters) on the device (splitk_workspace); red "atomic"'s, which must start
    zeroed, never shared with the slices of "last" / "release"."""
    cfg = kernel.config
    return splitk_workspace(kernel, f"{family}_atomic" if _red_atomic(cfg) else family,
                            warp_slices_shape(cfg, row_blocks, ntiles), n)


def clean_csr(a):
    """A copy of `a` as a scipy CSR matrix with sorted indices, duplicates summed and explicit zeros dropped (the
    caller's matrix is left as it is)."""
    import scipy.sparse as sp  # noqa: PLC0415
    a = sp.csr_matrix(a, copy=True)
    a.sum_duplicates()  # sorted indices, no duplicates
    a.eliminate_zeros()
    return a


def csr_parts(a):
    """(m, k, rows, cols, values) of a scipy CSR matrix as int64 coordinates in row-major order (clean_csr first):
    what the tile formats are built from."""
    import numpy as np  # noqa: PLC0415
    a = clean_csr(a)
    m, k = a.shape
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(a.indptr))
    return m, k, rows, a.indices.astype(np.int64), a.data


def nth_zero_table():
    """t[mask, j]: the j-th zero bit of an 8-bit mask (8 where there is none), int64 (256 x 8)."""
    import numpy as np  # noqa: PLC0415
    t = np.full((256, 8), 8, dtype=np.int64)
    for mask in range(256):
        zeros = [b for b in range(8) if not mask >> b & 1]
        t[mask, :len(zeros)] = zeros
    return t


def deal_slots(okey, groups: int, ks: int, it=None, flag_cells: int = 1 << 27, sub: int = 8):
    """The union k-steps of the gathered tensor-core layouts (tc_gather2, tc_gather3, tc_union): `okey` holds per
    nonzero its group's number x ks + (slot % sub) x (ks / sub) + slot / sub (slot: its column in the group's K-slice,
    0 .. ks - 1; ks a multiple of sub). Each group's distinct slots are cut into k-steps of 16 and dealt to the part
    steps of `sub` k's (8: one 8 x 8 matrix of ldmatrix, a half step; 4: a quarter, the 32-bit dtypes' 64-bit loads)
    in (slot % sub, slot) order, the j-th to part j mod (16 / sub x its steps), so a part holds distinct residues
    slot % sub where it can; padding slots (weight 0) take the residues a part's real slots leave free.
    Returns (step_ptr int64[groups + 1]: group g's steps are step_ptr[g] .. step_ptr[g + 1] - 1, kslot int64[steps x
    16]: the slot of k-step t's k at 16 t + k, ek: per nonzero 16 x (its step) + its k, of dtype `it` (default int64)).
    A flag array finds the distinct keys where groups x ks is small, np.unique elsewhere."""
    import numpy as np  # noqa: PLC0415
    it = np.int64 if it is None else it
    nsub = 16 // sub  # parts a k-step
    per = ks // sub  # slots of one residue a group
    if groups * ks <= max(flag_cells, 8 * len(okey)):
        ef = np.zeros(groups * ks, dtype=bool)
        ef[okey] = True
        ekeys = np.flatnonzero(ef)
        pos = np.cumsum(ef, dtype=it)
        del ef
        pos -= 1
        inv = pos[okey]
        del pos
    else:
        ekeys, inv = np.unique(okey, return_inverse=True)
    e_grp = ekeys // ks
    r = ekeys - e_grp * ks
    e_slot = (r % per) * sub + r // per
    cnt = np.bincount(e_grp, minlength=groups).astype(np.int64)
    nsteps = -(-cnt // 16)
    step_ptr = np.zeros(groups + 1, dtype=np.int64)
    np.cumsum(nsteps, out=step_ptr[1:])
    steps = int(step_ptr[-1])
    gstart = np.zeros(groups + 1, dtype=np.int64)
    np.cumsum(cnt, out=gstart[1:])
    idx = np.arange(len(ekeys), dtype=np.int64) - gstart[e_grp]  # rank within the group
    nh = nsub * nsteps[e_grp]
    part = idx % nh
    ek = (step_ptr[e_grp] + part // nsub) * 16 + (part % nsub) * sub + idx // nh  # 16 * step + k of each distinct slot
    kslot = np.full(steps * 16, -1, dtype=np.int64)
    kslot[ek] = e_slot
    pad = kslot < 0
    if pad.any():
        mask = np.zeros(steps * nsub, dtype=np.int64)
        real = np.flatnonzero(~pad)
        np.bitwise_or.at(mask, real // sub, 1 << (kslot[real] % sub))
        pp = np.flatnonzero(pad)
        h = pp // sub
        jth = np.arange(len(pp)) - np.searchsorted(pp, h * sub)
        kslot[pp] = _nth_zero()[mask[h], jth]
    if steps * 16 >= 2 ** 31 - 1:
        it = np.int64
    return step_ptr, kslot, ek.astype(it)[inv]


def dense_within(out, m: int, k: int):
    """A layout decoder's dense image `out` (rows and columns padded to its tiles) cut to M x K, after checking that
    no weight sits past column K or past row M (ValueError)."""
    if out[:, k:].any():
        raise ValueError("a nonzero weight past column K")
    if out[m:].any():
        raise ValueError("a nonzero weight past the last row")
    return out[:m, :k]


@lru_cache(maxsize=None)
def _nth_zero():
    """nth_zero_table, built once on first use."""
    return nth_zero_table()


def ldmatrix_wavefronts(kslot, steps: int) -> float:
    """Shared-memory wavefronts per ldmatrix.x4 over `steps` k-steps of 16 gathered rows at slots `kslot` (4 is
    conflict-free): per half step (one 8 x 8 matrix, two of them per x4 share the rows) the largest number of its 8
    slots with the same slot % 8."""
    import numpy as np  # noqa: PLC0415
    if not steps:
        return 4.0
    res = (np.asarray(kslot).astype(np.int64) & 7).reshape(steps * 2, 8)
    counts = np.zeros((steps * 2, 8), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(steps * 2), 8), res.ravel()), 1)
    return float(2 * counts.max(axis=1).mean() * 2)


def row_order(a, order: str):
    """Row indices of a scipy CSR matrix in natural order, or sorted by length, longest first (stable): a layout
    helper for host sides."""
    import numpy as np  # noqa: PLC0415
    if order == "sorted":
        return np.argsort(-np.diff(a.indptr), kind="stable")
    return np.arange(a.shape[0])


def add_folder(folder) -> None:
    """Also find families in `folder` (each: <name>.toml, its template and <name>.py side by side)."""
    p = Path(folder).resolve()
    with _lock:
        if p not in _extra:
            _extra.append(p)
    clear()


def remove_folder(folder) -> None:
    p = Path(folder).resolve()
    with _lock:
        if p in _extra:
            _extra.remove(p)
    clear()


def clear() -> None:
    """Forget what was loaded (after a folder was added or removed, or files changed)."""
    with _lock:
        _cache.clear()
    from . import render, space  # noqa: PLC0415 - the caches keyed on the family set
    space.load_spaces.cache_clear()
    render.clear()


def folders() -> list[tuple[Path, Path]]:
    """(templates and host sides, spaces) folder pairs, in search order: the built-in ones, then the extra ones."""
    out = [(resource_dir("variants"), resource_dir("search_spaces"))]
    env = os.environ.get(PATH_ENV, "")
    extra = [Path(x).resolve() for x in env.split(os.pathsep) if x] + list(_extra)
    out += [(p, p) for p in extra]
    return out


def template_folders() -> list[Path]:
    """Where templates are looked up (extra folders first, so their includes can override; built-ins last)."""
    return [v for v, _ in reversed(folders())]


def _load_host(name: str, path: Path) -> ModuleType:
    mod_name = f"sparse_autotune_family_{name}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: cannot load the host side of family {name!r}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    missing = [f for f in REQUIRED if not callable(getattr(mod, f, None))]
    if missing:
        raise ValueError(f"{path}: the host side of family {name!r} lacks {', '.join(missing)}")
    return mod


def _scan() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for vdir, sdir in folders():
        for toml in sorted(sdir.glob("*.toml")):
            with open(toml, "rb") as fh:
                space = parse_space(tomllib.load(fh), str(toml))
            host_path = vdir / f"{space.family}.py"
            if not host_path.is_file():
                raise ValueError(f"{toml}: family {space.family!r} has no host side {host_path.name} in {vdir}")
            if not (vdir / space.template).is_file():
                raise ValueError(f"{toml}: family {space.family!r} names template {space.template!r}, not in {vdir}")
            found[space.family] = Family(space.family, space, vdir, _load_host(space.family, host_path))
    return dict(sorted(found.items(), key=lambda kv: (kv[1].space.rank, kv[0])))


def all_families() -> dict[str, Family]:
    """Every family found, by name, in (rank, name) order."""
    key = tuple(folders())
    with _lock:
        got = _cache.get(key)
    if got is None:
        got = _scan()
        with _lock:
            _cache[key] = got
    return got


def get_family(name: str) -> Family:
    fams = all_families()
    if name not in fams:
        raise KeyError(f"no kernel family {name!r} (known: {', '.join(fams)})")
    return fams[name]
