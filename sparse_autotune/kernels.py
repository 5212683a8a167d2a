"""Host side of each kernel family: A's device layout for a config, launch geometry, and a launcher.

A `Kernel` is one compiled variant bound to one sparse matrix on the device; `kernel(B, C)` launches it
on the current CuPy stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .compile import compile_kernel
from .errors import CandidateError
from .problem import DTYPES
from .render import render
from .space import Space, get_space


class DeviceCSR:
    """A's arrays on the device in the layouts the families want, built lazily and kept."""

    def __init__(self, a: sp.csr_matrix, dtype: str):
        from .gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.shape = a.shape
        self.nnz = int(a.nnz)
        self.dtype = dtype
        self._host = a
        self.row_ptr = cp.asarray(a.indptr.astype(np.int32))
        self.vals = cp.asarray(a.data.astype(DTYPES[dtype]))
        self._cols: dict[int, object] = {}
        self._perm = None

    def cols(self, bits: int):
        if bits not in self._cols:
            from .gpu import cupy  # noqa: PLC0415
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
            from .gpu import cupy  # noqa: PLC0415
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

    def perm(self):
        """Rows sorted by length, longest first (stable): heavy rows start first, a block's rows are alike."""
        if self._perm is None:
            from .gpu import cupy  # noqa: PLC0415
            lengths = np.diff(self._host.indptr)
            self._perm = cupy().asarray(np.argsort(-lengths, kind="stable").astype(np.int32))
        return self._perm


@dataclass
class Kernel:
    space: Space
    config: dict
    dtype: str
    source: str
    fn: object
    a: DeviceCSR

    def geometry(self, n: int):
        """(grid, block, row_blocks, col_tiles) for N columns."""
        c = self.config
        m = self.a.shape[0]
        if self.space.family == "csr_btile":
            rows, tile_n, threads = c["warps"] * c["rows_per_warp"], 32 * c["vec"], 32 * c["warps"]
        else:
            rows = c["rows_per_block"]
            tile_n = c["lanes_per_row"] * c["vec"] * c["cols_per_thread"]
            threads = rows * c["lanes_per_row"]
        row_blocks = -(-m // rows)
        col_tiles = -(-n // tile_n)
        return (row_blocks * col_tiles,), (threads,), row_blocks, col_tiles

    def __call__(self, b, c_out):
        m, k = self.a.shape
        n = int(b.shape[1])
        if m == 0 or n == 0:
            return c_out
        grid, block, row_blocks, col_tiles = self.geometry(n)
        cfg = self.config
        perm = self.a.perm() if cfg["row_order"] == "sorted" else self.a.row_ptr
        if self.space.family == "csr_btile":
            stage_ptr, lcol, n_st = self.a.stage_layout(cfg["kc"])
            args = (stage_ptr, lcol, self.a.vals, perm, b, c_out, np.int32(m), np.int32(n), np.int32(k),
                    np.int32(row_blocks), np.int32(col_tiles), np.int32(n_st))
        else:
            args = (self.a.row_ptr, self.a.cols(cfg["index_bits"]), self.a.vals, perm,
                    b, c_out, np.int32(m), np.int32(n), np.int32(row_blocks), np.int32(col_tiles))
        self.fn(grid, block, args)
        return c_out


def build_kernel(a: DeviceCSR, family: str, config: dict, dtype: str) -> Kernel:
    space = get_space(family)
    try:
        source = render(space, config, dtype)
    except Exception as exc:  # noqa: BLE001
        raise CandidateError("render", str(exc)) from None
    fn = compile_kernel(source)
    return Kernel(space, dict(config), dtype, source, fn, a)
