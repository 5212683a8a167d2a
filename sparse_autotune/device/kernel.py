"""Host side of each kernel family: A's device layout for a config, launch geometry, and a launcher.

A `Kernel` is one compiled variant bound to one sparse matrix on the device; `kernel(B, C)` launches it
on the current CuPy stream. `kernel.launcher(n)` is the same launch bound to N with its arguments packed once:
`launcher(b_ptr, c_ptr, stream_ptr)` is one cuLaunchKernel on raw pointers (no CuPy or DLPack objects per call).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..device.compile import compile_kernel, compile_ptx, function_ptr
from ..errors import CandidateError
from ..core.problem import DTYPES
from ..core.render import render
from ..core.space import Space, get_space


class DeviceCSR:
    """A's arrays on the device in the layouts the families want, built lazily and kept."""

    def __init__(self, a: sp.csr_matrix, dtype: str):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.shape = a.shape
        self.nnz = int(a.nnz)
        self.dtype = dtype
        self._host = a
        self.row_ptr = cp.asarray(a.indptr.astype(np.int32))
        self.vals = cp.asarray(a.data.astype(DTYPES[dtype]))
        self._cols: dict[int, object] = {}
        self._perm = None
        self.lock = threading.Lock()  # held while a kernel builds its layouts (Kernel.warm; compile threads share A)

    def cols(self, bits: int):
        if bits not in self._cols:
            from ..device.gpu import cupy  # noqa: PLC0415
            t = np.uint16 if bits == 16 else np.int32
            self._cols[bits] = cupy().asarray(self._host.indices.astype(t))
        return self._cols[bits]

    def stage_layout(self, kc: int):
        """(stage pointers, local column offsets) for csr_btile with K-stages of kc rows.

        stage_ptr[r * (S + 1) + s] is the first nonzero of row r whose column is >= s * kc (S = ceil(K / kc));
        lcol holds each column modulo kc (8-bit for kc <= 256).
        """
        key = ("stage", kc)
        if key not in self._cols:
            from ..device.gpu import cupy  # noqa: PLC0415
            a = self._host
            m, k = a.shape
            n_st = -(-k // kc)
            rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(a.indptr))
            counts = np.bincount(rows * n_st + a.indices // kc, minlength=m * n_st).reshape(m, n_st)
            sp_ = np.zeros((m, n_st + 1), dtype=np.int64)
            sp_[:, 1:] = np.cumsum(counts, axis=1)
            sp_ += a.indptr[:-1, None]
            lt = np.uint8 if kc <= 256 else np.uint16
            self._cols[key] = (cupy().asarray(sp_.astype(np.int32).ravel()),
                               cupy().asarray((a.indices % kc).astype(lt)), n_st)
        return self._cols[key]

    def vals_f32(self):
        """A's values as float32 (fp16 values are exact in float32): the packed array of pattern_unrolled."""
        key = "vals_f32"
        if key not in self._cols:
            from ..device.gpu import cupy  # noqa: PLC0415
            self._cols[key] = cupy().asarray(self._host.data.astype(np.float32))
        return self._cols[key]

    def segments(self, order: str, rows_per_block: int, split: int):
        """(seg, seg_row, slots, heavy_blocks) of csr_rowsplit on the device (see rowsplit_slots)."""
        key = ("seg", order, int(rows_per_block), int(split))
        if key not in self._cols:
            from ..device.gpu import cupy  # noqa: PLC0415
            seg, rows, heavy = rowsplit_slots(self._host, order, rows_per_block, split)
            self._cols[key] = (cupy().asarray(seg), cupy().asarray(rows), len(rows), heavy)
        return self._cols[key]

    def tc(self, rn: int):
        """(step_ptr, cols, avals) of tc_gather on the device (see tc_layout)."""
        key = ("tc", int(rn))
        if key not in self._cols:
            from ..device.gpu import cupy  # noqa: PLC0415
            self._cols[key] = tuple(cupy().asarray(x) for x in tc_layout(self._host, rn))
        return self._cols[key]

    def perm(self):
        """Rows sorted by length, longest first (stable): heavy rows start first, a block's rows are alike."""
        if self._perm is None:
            from ..device.gpu import cupy  # noqa: PLC0415
            self._perm = cupy().asarray(row_order(self._host, "sorted").astype(np.int32))
        return self._perm


def rowsplit_slots(a: sp.csr_matrix, order: str, rows_per_block: int, split: int):
    """The slots of csr_rowsplit: (seg, seg_row, heavy_blocks) with seg[s] = (start, end) a range of A's nonzeros
    and seg_row[s] its row of C. With split > 0 every row longer than split nonzeros comes first, longest first,
    as a whole block of rows_per_block segments of near-equal length (the kernel adds them up in shared memory);
    the other rows follow, one slot each, in `order` (natural, or sorted longest first)."""
    indptr = a.indptr.astype(np.int64)
    lens = np.diff(indptr)
    r = int(rows_per_block)
    is_heavy = lens > split if split > 0 and r > 1 else np.zeros(a.shape[0], dtype=bool)
    heavy = np.flatnonzero(is_heavy)
    heavy = heavy[np.argsort(-lens[heavy], kind="stable")]
    cuts = indptr[heavy][:, None] + (lens[heavy][:, None] * np.arange(r + 1)[None, :]) // r  # (H, r + 1)
    light = row_order(a, order)
    light = light[~is_heavy[light]]
    start = np.concatenate([cuts[:, :-1].ravel(), indptr[light]])
    end = np.concatenate([cuts[:, 1:].ravel(), indptr[light + 1]])
    rows = np.concatenate([np.repeat(heavy, r), light])
    return np.stack([start, end], axis=1).astype(np.int32), rows.astype(np.int32), len(heavy)


def tc_layout(a: sp.csr_matrix, rn: int):
    """The layout of tc_gather for row blocks of 8 * rn rows: (step_ptr, cols, avals).

    Row block b's union of columns U_b (ascending, padded to a multiple of 16 with its first column, weight 0)
    is steps step_ptr[b] .. step_ptr[b + 1] - 1 of 16 columns each; cols[16 t + k] is column k of step t.
    avals (float16) holds, for step t and 8-row tile i, the 16 x 8 weights in the B-operand layout of
    mma.m16n8k16: lane l = 4 g + q holds A[8 i + g][U[2q]], A[..][U[2q + 1]], A[..][U[2q + 8]], A[..][U[2q + 9]]
    at avals[((t * rn + i) * 32 + l) * 4 + 0..3]."""
    m = a.shape[0]
    rb = 8 * int(rn)
    nb = -(-m // rb)
    indptr, indices = a.indptr, a.indices
    step_ptr = np.zeros(nb + 1, dtype=np.int64)
    unions = []
    for b in range(nb):
        u = np.unique(indices[indptr[b * rb]:indptr[min(m, (b + 1) * rb)]])
        unions.append(u)
        step_ptr[b + 1] = step_ptr[b] + -(-len(u) // 16)
    total = int(step_ptr[-1])
    cols = np.zeros(total * 16, dtype=np.int32)
    avals = np.zeros(total * rn * 128, dtype=np.float16)
    rows_of = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
    vals = a.data.astype(np.float16)
    for b, u in enumerate(unions):
        if not len(u):
            continue
        t0 = int(step_ptr[b])
        padded = np.full(-(-len(u) // 16) * 16, u[0], dtype=np.int32)
        padded[:len(u)] = u
        cols[t0 * 16:t0 * 16 + len(padded)] = padded
        lo, hi = indptr[b * rb], indptr[min(m, (b + 1) * rb)]
        pos = np.searchsorted(u, indices[lo:hi])  # place of each nonzero's column in U
        local = rows_of[lo:hi] - b * rb
        t, k = t0 + pos // 16, pos % 16
        i, g = local // 8, local % 8
        q = np.where(k < 8, k // 2, (k - 8) // 2)
        h = np.where(k < 8, k % 2, 2 + k % 2)
        avals[((t * rn + i) * 32 + 4 * g + q) * 4 + h] = vals[lo:hi]
    return step_ptr.astype(np.int32), cols, avals


def row_order(a: sp.csr_matrix, order: str) -> np.ndarray:
    """Row indices in natural order, or sorted by length, longest first (stable)."""
    if order == "sorted":
        return np.argsort(-np.diff(a.indptr), kind="stable")
    return np.arange(a.shape[0])


def _f32_bits(v: float) -> str:
    """A float32 value as the 8 hex digits of its bits (a PTX immediate is 0f + these)."""
    return f"{int(np.float32(v).view(np.uint32)):08X}"


def pattern_id(a: sp.csr_matrix, with_values: bool) -> str:
    """A short hash of A's pattern (and values when they are compiled in): names a specialised module."""
    h = hashlib.sha256()
    h.update(np.asarray(a.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(a.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(a.indices, dtype=np.int64).tobytes())
    if with_values:
        h.update(np.ascontiguousarray(a.data, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


PATTERN_LOAD_REGS = 16  # B loads in flight per thread named in the PTX (ptxas renames them anyway)


def pattern_context(a: sp.csr_matrix, config: dict) -> dict:
    """Template context of pattern_unrolled: per block of rows_per_block rows (natural or sorted order),
    (its rows, [(column k, [(row slot, value bits, value index)]) for every column any row uses, ascending])."""
    r = int(config["rows_per_block"])
    order = row_order(a, config["row_order"])
    indptr, indices, data = a.indptr, a.indices, a.data
    blocks = []
    for b0 in range(0, a.shape[0], r):
        rows = [int(x) for x in order[b0:b0 + r]]
        by_col: dict[int, list] = {}
        for slot, row in enumerate(rows):
            for j in range(indptr[row], indptr[row + 1]):
                by_col.setdefault(int(indices[j]), []).append((slot, _f32_bits(data[j]), int(j)))
        blocks.append((rows, sorted(by_col.items())))
    return {"blocks": blocks, "pattern_id": pattern_id(a, config.get("values") == "imm"),
            "max_loads": PATTERN_LOAD_REGS}


@dataclass
class Kernel:
    space: Space
    config: dict
    dtype: str
    source: str
    fn: object
    a: DeviceCSR
    _launchers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def geometry(self, n: int):
        """(grid, block, row_blocks, col_tiles) for N columns."""
        c = self.config
        m = self.a.shape[0]
        if self.space.family == "pattern_unrolled":
            tile_n = c["warps"] * 32 * c["vec"]
            row_blocks, col_tiles = -(-m // c["rows_per_block"]), -(-n // tile_n)
            return (col_tiles, row_blocks), (32 * c["warps"],), row_blocks, col_tiles
        if self.space.family == "tc_gather":
            row_blocks, col_tiles = -(-m // (8 * c["rn"])), -(-n // (16 * c["nt"]))
            return (row_blocks * col_tiles,), (32 * c["ksplit"],), row_blocks, col_tiles
        if self.space.family == "csr_btile":
            rows = c["warps"] * (32 // c["lanes_per_row"]) * c["rows_per_group"]
            tile_n, threads = c["lanes_per_row"] * c["vec"], 32 * c["warps"]
        else:
            rows = c["rows_per_block"]
            tile_n = c["lanes_per_row"] * c["vec"] * c["cols_per_thread"]
            threads = rows * c["lanes_per_row"]
            m = self.a.segments(c["row_order"], rows, c["split"])[2]  # slots: rows, long rows split in blocks
        row_blocks = -(-m // rows)
        col_tiles = -(-n // tile_n)
        return (row_blocks * col_tiles,), (threads,), row_blocks, col_tiles

    def smem_bytes(self) -> int:
        """Dynamic shared memory per block (the B stages of csr_btile; 0 for the other families)."""
        c = self.config
        if self.space.family != "csr_btile":
            return 0
        es = 2 if self.dtype == "fp16" else 4
        return c["stages"] * c["kc"] * c["lanes_per_row"] * c["vec"] * es

    def args(self, n: int, b, c) -> tuple:
        """The kernel's parameters for N columns, in order: A's device arrays, `b` and `c` passed through as given
        (arrays, pointers or placeholders) and np.int32 scalars. The one place the argument lists are written."""
        m, k = self.a.shape
        _, _, row_blocks, col_tiles = self.geometry(n)
        cfg = self.config
        if self.space.family == "pattern_unrolled":
            return (b, c, self.a.vals_f32(), np.int32(n))
        if self.space.family == "tc_gather":
            step_ptr, cols, avals = self.a.tc(cfg["rn"])
            return (step_ptr, cols, avals, b, c, np.int32(m), np.int32(n), np.int32(row_blocks))
        if self.space.family == "csr_btile":
            perm = self.a.perm() if cfg["row_order"] == "sorted" else self.a.row_ptr
            stage_ptr, lcol, n_st = self.a.stage_layout(cfg["kc"])
            return (stage_ptr, lcol, self.a.vals, perm, b, c, np.int32(m), np.int32(n), np.int32(k),
                    np.int32(row_blocks), np.int32(col_tiles), np.int32(n_st))
        seg, seg_row, slots, heavy = self.a.segments(cfg["row_order"], cfg["rows_per_block"], cfg["split"])
        return (seg, seg_row, self.a.cols(cfg["index_bits"]), self.a.vals, b, c, np.int32(slots),
                np.int32(n), np.int32(row_blocks), np.int32(col_tiles), np.int32(heavy))

    def warm(self) -> None:
        """Build A's device layouts this kernel reads (tc_gather's over 13.5M nonzeros: ~2 s on the CPU), so the first
        launch does not: the tuner calls it from its compile threads, outside the GPU's turn."""
        with self.a.lock:
            self.args(1, None, None)

    def launcher(self, n: int) -> Launcher:
        """The launch for N columns with its arguments packed (built at the first call for N, then cached)."""
        ln = self._launchers.get(n)
        if ln is None:
            ln = self._launchers[n] = self._make_launcher(int(n))
        return ln

    def _make_launcher(self, n: int) -> Launcher:
        if self.a.shape[0] == 0 or n == 0:
            return Launcher.noop()
        grid, block, _, _ = self.geometry(n)
        args = self.args(n, _B_SLOT, _C_SLOT)
        values: list = []
        keep: list = [self.fn]  # the compiled kernel holds its module: the function handle stays valid
        for a in args:
            if a is _B_SLOT or a is _C_SLOT:
                values.append(0)
            elif isinstance(a, np.int32):
                values.append(a)
            else:  # one of A's device arrays: its address, and a reference so it is not freed
                values.append(int(a.data.ptr))
                keep.append(a)
        b_slot = next(i for i, a in enumerate(args) if a is _B_SLOT)
        c_slot = next(i for i, a in enumerate(args) if a is _C_SLOT)
        return Launcher(function_ptr(self.fn), grid, block, self.smem_bytes(), values, b_slot, c_slot, keep)

    def __call__(self, b, c_out):
        """C = A @ B on the current CuPy stream (B and C CuPy arrays); returns c_out."""
        ln = self.launcher(int(b.shape[1]))
        if not ln.is_noop:
            from ..device.gpu import cupy  # noqa: PLC0415
            ln(b.data.ptr, c_out.data.ptr, cupy().cuda.get_current_stream().ptr)
        return c_out


_B_SLOT, _C_SLOT = object(), object()  # placeholders for B and C in Kernel.args when packing a launcher
CUDA_ERROR_INVALID_CONTEXT = 201


def pack_params(values) -> tuple[np.ndarray, np.ndarray]:
    """cuLaunchKernel's `kernelParams` for `values`: a uint64 array with one 8-byte slot per parameter, and a uint64
    array of the slots' addresses (the `void**` itself). A Python int is a device pointer (all 8 bytes); an np.int32
    is a 4-byte parameter, stored in the slot's first 4 bytes in native (little-endian) order: the driver copies
    exactly 4 bytes from the slot's address for it. Both arrays must stay alive while they are launched with."""
    slots = np.zeros(max(1, len(values)), dtype=np.uint64)
    words = slots.view(np.int32)  # words[2 * i] is the first 4 bytes of slot i
    for i, v in enumerate(values):
        if isinstance(v, np.int32):
            words[2 * i] = v
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 64:
            slots[i] = v
        else:
            raise TypeError(f"kernel parameter {i}: {v!r} is neither a device pointer (int) nor an np.int32")
    base = slots.ctypes.data
    addrs = np.array([base + 8 * i for i in range(len(values))], dtype=np.uint64)
    return slots, addrs


class Launcher:
    """One kernel bound to one N: grid, block, shared memory and its packed arguments. `launcher(b_ptr, c_ptr,
    stream_ptr)` (also `.launch`) writes B's and C's addresses into their slots and calls cuLaunchKernel on
    `stream_ptr`; the driver copies the parameters at the call, so a lock around rewrite + launch makes it thread-safe.
    Capturable into a CUDA graph like any launch on a capturing stream."""

    __slots__ = ("_pre", "_slots", "_addrs", "_params", "_b", "_c", "_keep", "_lock", "_launch", "is_noop")

    def __init__(self, func_ptr: int, grid: tuple, block: tuple, smem: int, values, b_slot: int, c_slot: int,
                 keep=(), launch_fn=None):
        g = tuple(max(1, int(x)) for x in (*grid, 1, 1)[:3])
        bl = tuple(max(1, int(x)) for x in (*block, 1, 1)[:3])
        self._pre = (int(func_ptr), *g, *bl, int(smem))
        self._slots, self._addrs = pack_params(values)
        self._params = int(self._addrs.ctypes.data)
        self._b, self._c = int(b_slot), int(c_slot)
        self._keep = tuple(keep)
        self._lock = threading.Lock()
        if launch_fn is None:
            from cupy_backends.cuda.api.driver import launchKernel as launch_fn  # noqa: PLC0415
        self._launch = launch_fn
        self.is_noop = False

    @classmethod
    def noop(cls) -> Launcher:
        """The launcher of an empty product (M == 0 or N == 0): calling it does nothing."""
        ln = cls.__new__(cls)
        ln.is_noop = True
        return ln

    def __call__(self, b_ptr: int, c_ptr: int, stream_ptr: int) -> None:
        if self.is_noop:
            return
        with self._lock:
            slots = self._slots
            slots[self._b] = b_ptr
            slots[self._c] = c_ptr
            try:
                self._launch(*self._pre, stream_ptr, self._params, 0)
            except Exception as exc:
                # a thread that never used the CUDA runtime has no current context: bind the device's primary
                # context (what CuPy's own launches do first) and launch again
                if getattr(exc, "status", None) != CUDA_ERROR_INVALID_CONTEXT:
                    raise
                from ..device.gpu import cupy  # noqa: PLC0415
                cupy().cuda.runtime.memGetInfo()
                self._launch(*self._pre, stream_ptr, self._params, 0)

    launch = __call__


def build_kernel(a: DeviceCSR, family: str, config: dict, dtype: str) -> Kernel:
    space = get_space(family)
    config = space.normalize(config, dtype) or config  # a config stored before a parameter existed gets its default
    try:
        context = pattern_context(a._host, config) if space.needs_matrix else None
        source = render(space, config, dtype, context)
    except Exception as exc:  # noqa: BLE001
        raise CandidateError("render", str(exc)) from None
    fn = compile_ptx(source) if space.template.endswith(".ptx.j2") else compile_kernel(source)
    kern = Kernel(space, dict(config), dtype, source, fn, a)
    kern.warm()
    smem = kern.smem_bytes()
    if smem > 48 * 1024:  # above 48 KB a kernel must opt in to its dynamic shared memory
        try:
            fn.max_dynamic_shared_size_bytes = smem
        except Exception as exc:  # noqa: BLE001
            raise CandidateError("launch", f"cannot reserve {smem} bytes of shared memory: {exc}") from None
    return kern
