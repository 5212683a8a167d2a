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
        c = self.config
        m = self.a.shape[0]
        rows = c["rows_per_block"]
        tile_n = c["lanes_per_row"] * c["vec"] * c["cols_per_thread"]
        row_blocks = -(-m // rows)
        col_tiles = -(-n // tile_n)
        return (row_blocks * col_tiles,), (rows * c["lanes_per_row"],), row_blocks, col_tiles

    def __call__(self, b, c_out):
        m, k = self.a.shape
        n = int(b.shape[1])
        if m == 0 or n == 0:
            return c_out
        grid, block, row_blocks, col_tiles = self.geometry(n)
        cfg = self.config
        args = (self.a.row_ptr, self.a.cols(cfg["index_bits"]), self.a.vals,
                self.a.perm() if cfg["row_order"] == "sorted" else self.a.row_ptr,
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
