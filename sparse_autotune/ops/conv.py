"""Sparse 3x3 convolution (issue 19): Y = conv2d(X, W, stride s in {1, 2}, padding 1), W sparse (Cout x Cin x 3 x 3,
unstructured), X dense, NCHW or NHWC, batch >= 1. Direct: no im2col is materialised.

The operands
------------
    layout nchw   X  B x Cin x H x W,   Y  B x Cout x Ho x Wo
    layout nhwc   X  B x H x W x Cin,   Y  B x Ho x Wo x Cout            (PyTorch's channels_last, as memory order)
    Ho = (H - 1) // s + 1, Wo = (W - 1) // s + 1 (kernel 3, padding 1)
    Y[b, co, oy, ox] = sum over (ci, ky, kx) of W[co, ci, ky, kx] * X[b, ci, oy * s + ky - 1, ox * s + kx - 1]
                       (X read as 0 outside the image)
All operands are C-contiguous CuPy arrays of the dtype's storage type (fp32: float32; fp16: float16; bf16: uint16 words),
fp32 accumulation, one rounding of each output.

The compressed weight format (`compress_weight`): a scipy CSR matrix over the output channels, Cout x (Cin * 9), column
j = ci * 9 + ky * 3 + kx (the "(cin, ky, kx) column index"), its values the nonzero weights (float32, rounded as the
dtype stores them). The kernels' own formats are derived from it per config (`launch_plan`):

  conv_csr      (generic) the nonzeros of each output channel cut at chunks of `cc` input channels: row pointers
                Cout x (chunks + 1), and per nonzero its value (float32) and its offset in the shared-memory X tile of
                its chunk, pre-scaled: (ci - chunk start) * HIN * WIN + ky * WIN + kx (no index arithmetic in the loop).
  conv_tile     (register tiles; bench/drafts/conv3x3-v2.md) the nonzeros regrouped by (block's channel group, chunk
                of cc input channels, channel): per nonzero (float32 bits, byte offset in the chunk's kx-shifted
                shared-memory tile: 4 * (kx * cc * PL + (ci % cc) * PL + ky * RP)), each (group, chunk) one contiguous
                segment [segs) staged into shared memory, each channel's range in it (cptr); with ksplit > 1 a
                workspace of partial tiles and per-tile arrival counters (zeroed once; the kernel resets them).
  conv_pattern  (SparseRT-style) no arrays at all: the pattern and the values are compiled into the kernel
                (`pattern_context`): per group of `cb` output channels, per input channel with a nonzero in the group,
                its used rows ky of the input loaded once into registers and every (co, ky, kx) nonzero an FMA with its
                weight as an immediate. Guarded by a code-size constraint (nnz * ppt).

Spaces: search_spaces/conv/*.toml (core.space's format; problem variables COUT, CIN, H, W, HO, WO, BATCH, STRIDE, nnz,
dtype, layout: `conv_env`). Templates: variants/conv/*.cu.j2.

Verification: `conv_reference` (float64, numpy or CuPy: nine shifted products, the weights as the kernels see them).
May import core, device, errors, resources (ops/__init__.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..core.problem import DTYPES, as_float, host_values
from ..core.render import render
from ..core.space import DEFAULT_LIMITS, Space, load_spaces
from ..errors import UserError
from ..resources import resource_dir

OP = "conv3x3"
KERNEL_NAME = "conv3x3_kernel"
CONV_DTYPES = ("fp32", "fp16", "bf16")
CONV_LAYOUTS = ("nchw", "nhwc")
STRIDES = (1, 2)
INDEX_LIMIT = 2**31
GRID_Z_LIMIT = 65535
CODE_LIMIT = 8192  # conv_pattern: at most this many FMA lines (nnz * ppt) in one kernel (NVRTC time: ~3 ms a line on this CPU)


# ---- the problem's geometry ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """One convolution's shape: Cout, Cin, H, W (input image), batch, stride, layout."""

    cout: int
    cin: int
    h: int
    w: int
    batch: int = 1
    stride: int = 1
    layout: str = "nchw"

    @property
    def ho(self) -> int:
        return (self.h - 1) // self.stride + 1

    @property
    def wo(self) -> int:
        return (self.w - 1) // self.stride + 1

    @property
    def x_shape(self) -> tuple:
        return (self.batch, self.cin, self.h, self.w) if self.layout == "nchw" else (self.batch, self.h, self.w,
                                                                                     self.cin)

    @property
    def y_shape(self) -> tuple:
        return (self.batch, self.cout, self.ho, self.wo) if self.layout == "nchw" else (self.batch, self.ho, self.wo,
                                                                                        self.cout)

    @property
    def pixels(self) -> int:
        """Output pixels of all images: the implicit GEMM's N (store.db's key n of a conv3x3 record)."""
        return self.batch * self.ho * self.wo

    def tag(self) -> str:
        """The part of the key that M, K, N, layout do not carry: '56x56b1s1' (H x W, batch, stride)."""
        return f"{self.h}x{self.w}b{self.batch}s{self.stride}"


_TAG = re.compile(r"^(?P<kind>[a-z_]+)@(?P<h>\d+)x(?P<w>\d+)b(?P<b>\d+)s(?P<s>[12])$")


def key_pattern(kind: str, g: Geometry) -> str:
    """store.db's pattern column of a conv3x3 record: the weight pattern's kind and the geometry, 'uniform@56x56b1s1'
    (m = Cout, k = Cin, n = output pixels, layout = nchw / nhwc carry the rest of the key)."""
    return f"{kind}@{g.tag()}"


def parse_key_pattern(pattern: str, cout: int, cin: int, layout: str) -> tuple[str, Geometry] | None:
    """(kind, Geometry) of a conv3x3 record's pattern column; None where it is not one."""
    mt = _TAG.match(str(pattern))
    if mt is None or layout not in CONV_LAYOUTS:
        return None
    return mt["kind"], Geometry(cout, cin, int(mt["h"]), int(mt["w"]), int(mt["b"]), int(mt["s"]), layout)


def check_geometry(cout, cin, h, w, batch=1, stride=1, layout="nchw") -> Geometry:
    """A Geometry from user values; one-line UserError for anything wrong."""
    from ..core.problem import check_dim  # noqa: PLC0415
    cout, cin = check_dim(cout, "Cout"), check_dim(cin, "Cin")
    h, w = check_dim(h, "H"), check_dim(w, "W")
    batch = check_dim(batch, "batch")
    if isinstance(stride, bool) or stride not in STRIDES:
        raise UserError(f"stride must be 1 or 2 (got {stride!r})")
    if layout not in CONV_LAYOUTS:
        raise UserError(f"unknown convolution layout {layout!r}: choose nchw or nhwc")
    if batch > GRID_Z_LIMIT:
        raise UserError(f"batch {batch} is above {GRID_Z_LIMIT} (the kernels' grid)")
    g = Geometry(cout, cin, h, w, batch, int(stride), layout)
    for what, v in (("X", batch * cin * h * w), ("Y", batch * cout * g.ho * g.wo), ("W", cout * cin * 9)):
        if v >= INDEX_LIMIT:
            raise UserError(f"convolution {what} has {v} elements: too many for the kernels' 32-bit indices")
    return g


def parse_hw(text: str) -> tuple[int, int]:
    """'56x56' -> (56, 56); one-line UserError otherwise."""
    mt = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not mt or int(mt[1]) < 1 or int(mt[2]) < 1:
        raise UserError(f"malformed --hw {text!r}: expected HxW with positive integers, e.g. 56x56")
    return int(mt[1]), int(mt[2])


# ---- the weights -----------------------------------------------------------------------------------------------------

def compress_weight(w, dtype: str = "fp32") -> sp.csr_matrix:
    """A dense Cout x Cin x 3 x 3 weight (numpy; or a torch tensor, copied to the host) as the compressed format: CSR
    Cout x (Cin * 9), column ci * 9 + ky * 3 + kx, float32 values rounded as the dtype stores them; zeros dropped."""
    if hasattr(w, "detach"):
        w = w.detach().float().cpu().numpy()
    a = np.asarray(w)
    if a.ndim != 4 or a.shape[2:] != (3, 3):
        raise UserError(f"a 3x3 convolution's weight must be Cout x Cin x 3 x 3 (got shape {a.shape})")
    if not np.issubdtype(a.dtype, np.floating):
        raise UserError(f"the convolution's weight must hold real numbers (got {a.dtype})")
    if not np.all(np.isfinite(a)):
        raise UserError("the convolution's weight holds NaN or infinite values")
    vals = host_values(a.astype(np.float32).reshape(a.shape[0], -1), DTYPES[dtype])
    s = sp.csr_matrix(vals)
    s.eliminate_zeros()
    s.sort_indices()
    return s


def as_compressed(w, cin: int | None = None) -> sp.csr_matrix:
    """A weight given as the compressed CSR (Cout x Cin*9) or as a dense / scipy-free 4-D array: the CSR, float32."""
    if sp.issparse(w):
        s = sp.csr_matrix(w, dtype=np.float32)
        if s.shape[1] % 9 or (cin is not None and s.shape[1] != 9 * cin):
            raise UserError(f"a compressed 3x3 weight has Cin * 9 columns (got {s.shape[1]}"
                            + (f", expected {9 * cin})" if cin is not None else ")"))
        s.sort_indices()
        return s
    return compress_weight(w)


def dense_weight(wc: sp.csr_matrix) -> np.ndarray:
    """The compressed format back to a dense Cout x Cin x 3 x 3 float32 array."""
    return np.asarray(wc.toarray(), dtype=np.float32).reshape(wc.shape[0], wc.shape[1] // 9, 3, 3)


def random_weight(cout: int, cin: int, density: float, dtype: str = "fp32", pattern: str = "uniform",
                  seed: int = 0) -> sp.csr_matrix:
    """A random compressed weight of the density (core.problem.random_matrix over Cout x Cin*9: uniform or power-law
    per output channel; standard normal values, never zero), scaled by 1 / sqrt(nnz per channel) like a trained one."""
    from ..core.problem import random_matrix  # noqa: PLC0415
    s = random_matrix(cout, cin * 9, density, pattern, seed, DTYPES[dtype])
    scale = 1.0 / np.sqrt(max(1.0, s.nnz / max(1, cout)))
    s.data = host_values(np.asarray(s.data, dtype=np.float32) * np.float32(scale), DTYPES[dtype])
    s.sort_indices()
    return s


# ---- spaces -----------------------------------------------------------------------------------------------------------

def spaces_dir() -> Path:
    return resource_dir("search_spaces") / "conv"


def load_conv_spaces() -> tuple[Space, ...]:
    return load_spaces(str(spaces_dir()))


def conv_families() -> tuple[str, ...]:
    return tuple(s.family for s in load_conv_spaces())


def get_conv_space(family: str) -> Space:
    for s in load_conv_spaces():
        if s.family == family:
            return s
    raise UserError(f"unknown conv3x3 kernel family {family!r}: choose from {', '.join(conv_families())}")


def conv_env(g: Geometry, nnz: int, dtype: str) -> dict:
    """The problem's names in the conv spaces' constraints."""
    return {"COUT": g.cout, "CIN": g.cin, "H": g.h, "W": g.w, "HO": g.ho, "WO": g.wo, "BATCH": g.batch,
            "STRIDE": g.stride, "nnz": int(nnz), "dtype": dtype, "layout": g.layout}


def _check_dtype(dtype) -> None:
    if dtype not in CONV_DTYPES:
        raise UserError(f"unknown conv3x3 dtype {dtype!r}: choose one of {', '.join(CONV_DTYPES)}")


def check_config(family: str, config: dict, dtype: str, env: dict, limits: dict | None = None) -> dict:
    """The config normalized if it can run the problem `env`; else a one-line UserError naming what fails."""
    _check_dtype(dtype)
    space = get_conv_space(family)
    cfg = space.normalize(config, dtype)
    if cfg is None:
        raise UserError(f"{family}: config {config} is not in the space for {dtype}")
    why = space.check(cfg, env, {**DEFAULT_LIMITS, **(limits or {})})
    if why is not None:
        raise UserError(f"{family}: config {cfg} cannot run this problem: {why}")
    return cfg


# ---- launch plans (pure numpy: tested on the CPU) ------------------------------------------------------------------------

def halo(cfg: dict, stride: int) -> tuple[int, int]:
    """(HIN, WIN): the input rows and columns an output tile of th x tw pixels reads."""
    return (cfg["th"] - 1) * stride + 3, (cfg["tw"] - 1) * stride + 3


def chunked_csr(wc: sp.csr_matrix, cin: int, cc: int, stride: int, cfg: dict):
    """conv_csr's format: (ptr Cout x (chunks + 1) int32, vals float32, offs int32 pre-scaled smem offsets). The
    nonzeros of channel co in chunk q are vals[ptr[co, q]:ptr[co, q + 1]]."""
    hin, win = halo(cfg, stride)
    nq = -(-cin // cc)
    cols = wc.indices.astype(np.int64)
    ci, r = cols // 9, cols % 9
    ky, kx = r // 3, r % 3
    offs = (ci % cc) * hin * win + ky * win + kx
    rows = np.repeat(np.arange(wc.shape[0], dtype=np.int64), np.diff(wc.indptr))
    q = ci // cc
    counts = np.zeros((wc.shape[0], nq), dtype=np.int64)
    np.add.at(counts, (rows, q), 1)
    ptr = np.zeros((wc.shape[0], nq + 1), dtype=np.int64)
    ptr[:, 1:] = np.cumsum(counts, axis=1)
    ptr += wc.indptr[:-1, None].astype(np.int64)
    return ptr.astype(np.int32), np.asarray(wc.data, dtype=np.float32), offs.astype(np.int32)


def _f32_literal(v: float) -> str:
    bits = int(np.array([v], dtype=np.float32).view(np.uint32)[0])
    return f"__int_as_float(0x{bits:08x})"


def pattern_context(wc: sp.csr_matrix, cb: int, unroll: int) -> dict:
    """conv_pattern's template context: `groups`, one per block of cb output channels, each {co0, nco, batches}:
    the group's input channels with a nonzero, in batches of `unroll`, each channel {ci, rows: the ky it uses,
    terms: [(j, ky, kx, literal)] with j the channel within the group}."""
    cout = wc.shape[0]
    groups = []
    for co0 in range(0, cout, cb):
        nco = min(cb, cout - co0)
        sub = wc[co0:co0 + nco]
        by_ci: dict[int, list] = {}
        for j in range(nco):
            lo, hi = sub.indptr[j], sub.indptr[j + 1]
            for col, v in zip(sub.indices[lo:hi], sub.data[lo:hi]):
                col = int(col)
                by_ci.setdefault(col // 9, []).append((j, (col % 9) // 3, col % 3, _f32_literal(float(v))))
        chans = [{"ci": ci, "rows": sorted({t[1] for t in terms}), "terms": sorted(terms, key=lambda t: (t[1], t[2], t[0]))}
                 for ci, terms in sorted(by_ci.items())]
        batches = [chans[i:i + unroll] for i in range(0, len(chans), unroll)]
        groups.append({"co0": co0, "nco": nco, "batches": batches})
    return {"groups": groups}


def tile_pitches(cfg: dict, stride: int) -> tuple[int, int]:
    """conv_tile's shared-memory pitches (RP row, PL plane; floats, multiples of 4): RP >= tw, the first of tw rounded
    up to 4 plus 0, 4, 8, 12 whose vector loads (a phase of 8 / 16 / 32 lanes for 16 / 8 / 4-byte vectors, lanes over
    the tile's pixel vectors) have the fewest bank conflicts; PL = HIN * RP, plus 4 where it is a multiple of 8 (lanes
    over channels at staging, NHWC, then fall in distinct banks)."""
    th, tw, ppt, rpt = cfg["th"], cfg["tw"], cfg["ppt"], cfg["rpt"]
    vw = 4 if ppt % 4 == 0 else 2 if ppt % 2 == 0 else 1
    lanes = {4: 8, 2: 16, 1: 32}[vw]
    pxt, npt = tw // ppt, (th // rpt) * (tw // ppt)
    r0 = -(-tw // 4) * 4
    best = None
    for rp in (r0, r0 + 4, r0 + 8, r0 + 12):
        worst = 1
        for ph in range(0, max(1, min(npt, 32)), lanes):
            banks: dict[int, set] = {}
            for lane in range(ph, min(ph + lanes, npt)):
                a = (lane // pxt) * rpt * stride * rp + (lane % pxt) * ppt
                for w in range(vw):
                    banks.setdefault((a + w) % 32, set()).add(a + w)
            worst = max(worst, max(len(v) for v in banks.values()))
        if best is None or worst < best[0]:
            best = (worst, rp)
    rp = best[1]
    hin = (th - 1) * stride + 3
    pl = hin * rp
    if pl % 8 == 0:
        pl += 4
    return rp, pl


def tiled_csr(wc: sp.csr_matrix, cin: int, cc: int, rp: int, pl: int):
    """conv_tile's format: (ptr Cout x (chunks + 1) int32, entries nnz x 2 int32: the value's float32 bits and its
    pre-scaled byte offset 4 * (kx * cc * PL + (ci % cc) * PL + ky * RP) in the chunk's kx-shifted shared-memory tile)."""
    nq = -(-cin // cc)
    cols = wc.indices.astype(np.int64)
    ci, r = cols // 9, cols % 9
    ky, kx = r // 3, r % 3
    offs = kx * cc * pl + (ci % cc) * pl + ky * rp
    rows = np.repeat(np.arange(wc.shape[0], dtype=np.int64), np.diff(wc.indptr))
    counts = np.zeros((wc.shape[0], nq), dtype=np.int64)
    np.add.at(counts, (rows, ci // cc), 1)
    ptr = np.zeros((wc.shape[0], nq + 1), dtype=np.int64)
    ptr[:, 1:] = np.cumsum(counts, axis=1)
    ptr += wc.indptr[:-1, None].astype(np.int64)
    ent = np.empty((wc.nnz, 2), dtype=np.int32)
    ent[:, 0] = np.asarray(wc.data, dtype=np.float32).view(np.int32)
    ent[:, 1] = 4 * offs  # bytes
    return ptr.astype(np.int32), ent


def tile_segments(ptr: np.ndarray, ent: np.ndarray, cot: int):
    """conv_tile's entries regrouped so that each block's chunk is one contiguous segment (staged into shared memory
    with the X tile): order (channel group, chunk, channel, column). Returns (ent2 nnz x 2, segs groups x chunks x 2
    int32 [start, end) of each (group, chunk), cptr Cout x chunks x 2 int32 each channel's [lo, hi) RELATIVE to its
    segment's start, emax: the longest segment)."""
    cout, nq = ptr.shape[0], ptr.shape[1] - 1
    ng = -(-cout // cot)
    order, segs = [], np.zeros((ng, nq, 2), np.int32)
    cptr = np.zeros((cout, nq, 2), np.int32)
    at = 0
    for gi in range(ng):
        cos = range(gi * cot, min(cout, gi * cot + cot))
        for q in range(nq):
            segs[gi, q, 0] = at
            for co in cos:
                lo, hi = int(ptr[co, q]), int(ptr[co, q + 1])
                cptr[co, q] = (at - segs[gi, q, 0], at - segs[gi, q, 0] + hi - lo)
                order.append(np.arange(lo, hi))
                at += hi - lo
            segs[gi, q, 1] = at
    idx = np.concatenate(order) if order else np.zeros(0, np.int64)
    emax = int((segs[..., 1] - segs[..., 0]).max()) if segs.size else 0
    return ent[idx], segs, cptr, emax


def tile_emax_slots(emax: int) -> int:
    """The shared-memory entry slots for a longest segment of `emax`: a power of two >= 64 (few distinct sources)."""
    return 1 << max(6, int(emax - 1).bit_length()) if emax > 64 else 64


def tile_tile_bytes(cfg: dict, stride: int) -> int:
    """conv_tile's chunk tile: the three kx copies of a chunk or the epilogue's tile, whichever is larger (bytes)."""
    _, pl = tile_pitches(cfg, stride)
    return 4 * max(3 * cfg["cc"] * pl, cfg["cot"] * (cfg["th"] * cfg["tw"] + 1))


def tile_smem_bytes(cfg: dict, stride: int, emax: int = 0, cin: int = 0) -> int:
    """conv_tile's shared memory: the chunk tile (tile_tile_bytes; dynamic with dsm 1, else static), the chunk's
    entries (8 bytes each) and, with pf, the split's chunk segments (8 bytes a chunk of Cin)."""
    qps = -(-(-(-cin // cfg["cc"])) // cfg.get("ksplit", 1)) if cfg.get("pf", 0) else 0
    return tile_tile_bytes(cfg, stride) + 8 * tile_emax_slots(emax) + 8 * qps + 16


@dataclass
class Plan:
    """One config's launch for one weight and geometry: grid (x, y, z), block threads, the kernel's leading device
    arrays (numpy), its trailing int32 scalars and the template context. Kernel parameters: (*arrays, X, Y,
    *scalars)."""

    grid: tuple
    block: tuple
    arrays: tuple = field(default_factory=tuple)
    scalars: tuple = field(default_factory=tuple)
    context: dict = field(default_factory=dict)
    smem: int = 0  # dynamic shared memory bytes of the launch (conv_tile dsm 1)


def launch_plan(family: str, cfg: dict, wc: sp.csr_matrix, g: Geometry) -> Plan:
    tiles = (-(-g.ho // cfg["th"])) * (-(-g.wo // cfg["tw"]))
    geo_ctx = {"COUT": g.cout, "CIN": g.cin, "H": g.h, "W": g.w, "HO": g.ho, "WO": g.wo, "STRIDE": g.stride,
               "xlayout": g.layout}
    if family == "conv_csr":
        ptr, vals, offs = chunked_csr(wc, g.cin, cfg["cc"], g.stride, cfg)
        cb = cfg["cot"] * cfg["cpt"]
        return Plan((tiles, -(-g.cout // cb), g.batch), (cfg["th"] * (cfg["tw"] // cfg["ppt"]), cfg["cot"]),
                    (ptr.ravel(), vals, offs), (), geo_ctx)
    if family == "conv_tile":
        rp, pl = tile_pitches(cfg, g.stride)
        ptr, ent = tiled_csr(wc, g.cin, cfg["cc"], rp, pl)
        ent, segs, cptr, emax = tile_segments(ptr, ent, cfg["cot"])
        smem = tile_smem_bytes(cfg, g.stride, emax, g.cin)
        dyn = tile_tile_bytes(cfg, g.stride) if cfg.get("dsm", 0) else 0
        if smem - dyn > 48 * 1024:
            raise UserError(f"conv_tile: config {cfg} needs {smem - dyn} bytes of static shared memory for this weight "
                            f"(a chunk of {emax} nonzeros): more than 48 KiB")
        if smem > DEFAULT_LIMITS["max_dyn_smem_bytes"]:
            raise UserError(f"conv_tile: config {cfg} needs {smem} bytes of shared memory for this weight: more than "
                            f"{DEFAULT_LIMITS['max_dyn_smem_bytes'] // 1024} KiB")
        threads = (cfg["th"] // cfg["rpt"]) * (cfg["tw"] // cfg["ppt"]) * cfg["cot"]
        if cfg.get("pf", 0) and -(-tile_emax_slots(emax) // threads) > 8:
            raise UserError(f"conv_tile: config {cfg} would prefetch {tile_emax_slots(emax)} nonzeros a chunk into "
                            f"{threads} threads' registers (more than 8 each)")
        ntx = -(-g.wo // cfg["tw"])
        groups = -(-g.cout // cfg["cot"])
        arrays = (ent.ravel(), segs.ravel(), cptr.ravel())
        if cfg["ksplit"] > 1:  # the split-K workspace (partial tiles) and the tiles' arrival counters (zeroed once)
            blocks = tiles * groups * g.batch
            arrays += (np.zeros(blocks * cfg["ksplit"] * cfg["cot"] * cfg["th"] * cfg["tw"], np.float32),
                       np.zeros(blocks, np.uint32))
        return Plan((tiles, groups, g.batch * cfg["ksplit"]), (threads,), arrays, (),
                    {**geo_ctx, "RP": rp, "PL": pl, "TILES_X": ntx, "EMAX": tile_emax_slots(emax)}, dyn)
    if family == "conv_pattern":
        ctx = {**geo_ctx, **pattern_context(wc, cfg["cb"], cfg["unroll"])}
        threads = cfg["th"] * (cfg["tw"] // cfg["ppt"])
        return Plan((tiles, -(-g.cout // cfg["cb"]), g.batch), (threads,), (), (), ctx)
    raise UserError(f"unknown conv3x3 kernel family {family!r}: choose from {', '.join(conv_families())}")


def render_conv(family: str, cfg: dict, dtype: str, context: dict) -> str:
    """CUDA source of one config (core.render; templates variants/conv/*.cu.j2) for one plan's context."""
    return render(get_conv_space(family), cfg, dtype, context)


# ---- the launcher --------------------------------------------------------------------------------------------------------

def check_operand(name: str, arr, shape: tuple, dtype: str) -> None:
    want = np.dtype(DTYPES[dtype])
    if not hasattr(arr, "data") or not hasattr(getattr(arr, "data"), "ptr"):
        raise UserError(f"conv3x3 {name} must be a CuPy array (got {type(arr).__name__})")
    if tuple(arr.shape) != tuple(shape):
        raise UserError(f"conv3x3 {name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    if arr.dtype != want:
        raise UserError(f"conv3x3 {name} has dtype {arr.dtype}, expected {want} for {dtype}")
    if not arr.flags.c_contiguous:
        raise UserError(f"conv3x3 {name} must be C-contiguous")
    if int(arr.data.ptr) % 16:
        raise UserError(f"conv3x3 {name} must start at a 16-byte aligned address")


class ConvKernel:
    """One compiled config bound to one weight and geometry: `kernel(X, Y)` writes Y on CuPy's current stream."""

    def __init__(self, family, config, dtype, g: Geometry, source, fn, plan: Plan, nnz: int):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.family, self.config, self.dtype, self.geometry = family, config, dtype, g
        self.source, self.fn, self.plan, self.nnz = source, fn, plan, nnz
        self.arrays = tuple(cp.asarray(a) for a in plan.arrays)

    def weight_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))

    def __call__(self, x, y):
        g = self.geometry
        check_operand("X", x, g.x_shape, self.dtype)
        check_operand("Y", y, g.y_shape, self.dtype)
        if self.plan.smem:
            self.fn(self.plan.grid, self.plan.block, (*self.arrays, x, y, *self.plan.scalars), shared_mem=self.plan.smem)
        else:
            self.fn(self.plan.grid, self.plan.block, (*self.arrays, x, y, *self.plan.scalars))
        return y


def build_conv(wc, g: Geometry, family: str, config: dict, dtype: str, limits: dict | None = None) -> ConvKernel:
    """One config of a conv3x3 family compiled (NVRTC) for the compressed weight `wc` and the geometry."""
    from ..device.compile import compile_kernel  # noqa: PLC0415
    _check_dtype(dtype)
    wc = as_compressed(wc, g.cin)
    if wc.shape[0] != g.cout:
        raise UserError(f"the weight has {wc.shape[0]} output channels, the geometry {g.cout}")
    if limits is None:
        from ..device.gpu import gpu_info  # noqa: PLC0415
        limits = gpu_info().limits()
    cfg = check_config(family, config, dtype, conv_env(g, wc.nnz, dtype), limits)
    plan = launch_plan(family, cfg, wc, g)
    source = render_conv(family, cfg, dtype, plan.context)
    fn = compile_kernel(source, KERNEL_NAME)
    if plan.smem:  # dynamic shared memory (conv_tile dsm 1): opt in to all of it (static + dynamic above 48 KB)
        fn.max_dynamic_shared_size_bytes = plan.smem
    return ConvKernel(family, cfg, dtype, g, source, fn, plan, int(wc.nnz))


# ---- reference ---------------------------------------------------------------------------------------------------------

def conv_reference(wc, x, g: Geometry, xp=np):
    """Y in float64 (xp: numpy or CuPy; x of that module, any float type or bf16 words): nine shifted products of the
    dense weight (float64) with the zero-padded input, in the geometry's layout."""
    w = xp.asarray(dense_weight(as_compressed(wc)).astype(np.float64))
    xf = as_float(x).astype(xp.float64)
    if g.layout == "nhwc":
        xf = xf.transpose(0, 3, 1, 2)
    xpad = xp.zeros((g.batch, g.cin, g.h + 2, g.w + 2), dtype=xp.float64)
    xpad[:, :, 1:-1, 1:-1] = xf
    s = g.stride
    y = xp.zeros((g.batch, g.cout, g.ho, g.wo), dtype=xp.float64)
    for ky in range(3):
        for kx in range(3):
            patch = xpad[:, :, ky:ky + s * (g.ho - 1) + 1:s, kx:kx + s * (g.wo - 1) + 1:s]
            y += xp.einsum("oc,bchw->bohw", w[:, :, ky, kx], patch)
    return y.transpose(0, 2, 3, 1) if g.layout == "nhwc" else y


def flops(nnz: int, g: Geometry) -> int:
    """Useful FLOPs: 2 per nonzero weight per output pixel."""
    return 2 * int(nnz) * g.pixels


def dense_flops(g: Geometry) -> int:
    return 2 * g.cout * g.cin * 9 * g.pixels


def min_bytes(nnz: int, g: Geometry, dtype: str) -> int:
    """X and Y once, the weights (value and index, 4 + 4 bytes) once."""
    es = np.dtype(DTYPES[dtype]).itemsize
    return int((g.batch * g.cin * g.h * g.w + g.batch * g.cout * g.ho * g.wo) * es + 8 * nnz)


__all__ = ["OP", "KERNEL_NAME", "CONV_DTYPES", "CONV_LAYOUTS", "Geometry", "Plan", "ConvKernel", "as_compressed",
           "build_conv", "check_config", "check_geometry", "chunked_csr", "tiled_csr", "tile_pitches", "tile_segments", "tile_smem_bytes", "tile_tile_bytes", "compress_weight", "conv_env",
           "conv_families", "conv_reference", "dense_weight", "flops", "get_conv_space", "key_pattern", "launch_plan",
           "load_conv_spaces", "min_bytes", "parse_hw", "parse_key_pattern", "pattern_context", "random_weight",
           "render_conv"]
