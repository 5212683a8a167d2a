"""The problem: C = A @ B with A sparse (M x K, fixed) and B dense (K x N)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp

from ..errors import UserError

DTYPES = {"fp32": np.float32, "fp16": np.float16}
PATTERNS = ("uniform", "powerlaw")
DEFAULT_N = 256


def parse_shape(text: str) -> tuple[int, int]:
    """Parse 'MxK' (e.g. '512x2048') into (M, K)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise UserError(f"malformed shape {text!r}: expected MxK with positive integers, e.g. 512x2048")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows <= 0 or cols <= 0:
        raise UserError(f"malformed shape {text!r}: M and K must be positive")
    return rows, cols


def check_density(d: float) -> float:
    try:
        d = float(d)
    except (TypeError, ValueError):
        raise UserError(f"density {d!r} is not a number") from None
    if not (0.0 < d <= 1.0) or d != d:
        raise UserError(f"density {d} is outside (0, 1]")
    return d


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return dtype


def check_n(n: int) -> int:
    if int(n) <= 0:
        raise UserError(f"N must be a positive integer (got {n})")
    return int(n)


def dtype_name(np_dtype) -> str:
    np_dtype = np.dtype(np_dtype)
    if np_dtype == np.float16:
        return "fp16"
    if np_dtype in (np.float32, np.float64):
        return "fp32"
    raise UserError(f"unsupported matrix dtype {np_dtype}: use float32 or float16 (float64 is cast to float32)")


def random_matrix(m: int, k: int, density: float, pattern: str = "uniform", seed: int = 0,
                  dtype=np.float32) -> sp.csr_matrix:
    """A random sparse matrix with round(density*M*K) nonzeros and standard-normal values (never zero).

    uniform: every position equally likely. powerlaw: row lengths follow a Pareto (power-law) law like
    magnitude-pruned weights (a few long rows, many short ones), columns uniform within a row.
    """
    rng = np.random.default_rng(seed)
    nnz = int(round(density * m * k))
    nnz = min(max(nnz, 0), m * k)
    if pattern == "uniform":
        if density >= 1.0:
            a = sp.csr_matrix(np.ones((m, k), dtype=np.float64))
        else:
            a = sp.random_array((m, k), density=nnz / (m * k), format="csr", rng=rng,
                                data_sampler=lambda size: np.ones(size))
            a = sp.csr_matrix(a)
    elif pattern == "powerlaw":
        w = rng.pareto(1.5, size=m) + 1.0
        lengths = np.minimum(np.floor(w / w.sum() * nnz).astype(np.int64), k)
        # hand out what rounding and the cap at K left over, one at a time to rows with room
        short = nnz - int(lengths.sum())
        order = np.argsort(-w)
        while short > 0:
            room = order[lengths[order] < k]
            take = room[:short]
            lengths[take] += 1
            short -= len(take)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        for r in range(m):
            n_r = int(lengths[r])
            if n_r:
                indices[indptr[r]:indptr[r + 1]] = np.sort(rng.choice(k, size=n_r, replace=False))
        a = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(m, k))
    else:
        raise UserError(f"unknown pattern {pattern!r}: choose one of {', '.join(PATTERNS)}")
    a.sort_indices()
    vals = rng.standard_normal(a.nnz)
    vals[np.abs(vals) < 2.0 ** -14] = 1.0  # no zeros, also after rounding to fp16
    a.data = host_values(vals, dtype)
    return a


def host_values(values, dtype) -> np.ndarray:
    """Values as the host keeps them: float32 (scipy.sparse has no float16), rounded to fp16 for fp16 problems
    so that the float64 reference sees exactly what the kernels see."""
    v = np.asarray(values)
    if np.dtype(dtype) == np.float16:
        return v.astype(np.float16).astype(np.float32)
    return v.astype(np.float32)


def load_matrix(path: str | Path) -> sp.csr_matrix:
    """Load a sparse matrix from a scipy .npz (save_npz) or a Matrix Market .mtx file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"matrix file {str(p)!r} does not exist or is not a file")
    try:
        if p.suffix == ".npz":
            a = sp.load_npz(p)
        elif p.suffix == ".mtx":
            a = scipy.io.mmread(p)
        else:
            raise UserError(f"matrix file {str(p)!r}: unknown format (use .npz from scipy.sparse.save_npz or .mtx)")
        a = sp.csr_matrix(a)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"matrix file {str(p)!r} could not be parsed: {msg}") from None
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise UserError(f"matrix file {str(p)!r} holds an empty matrix of shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise UserError(f"matrix file {str(p)!r}: values of type {a.dtype} are not real numbers")
    a.sum_duplicates()
    a.sort_indices()
    return a


def matrix_hash(a: sp.csr_matrix) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(a.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(a.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(a.indices, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(a.data, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Problem:
    """One tuning problem. `density` is the key density (requested, or nnz/(M*K) for a given matrix)."""

    m: int
    k: int
    n: int
    density: float
    dtype: str = "fp32"
    pattern: str = "uniform"
    seed: int = 0
    matrix: sp.csr_matrix | None = field(default=None, repr=False)

    @classmethod
    def random(cls, m, k, n, density, dtype="fp32", pattern="uniform", seed=0) -> "Problem":
        check_dtype(dtype)
        check_density(density)
        check_n(n)
        a = random_matrix(m, k, density, pattern, seed, DTYPES[dtype])
        return cls(m, k, n, round(float(density), 6), dtype, pattern, seed, a)

    @classmethod
    def from_matrix(cls, a: sp.spmatrix, n: int, dtype: str = "fp32", pattern: str = "matrix") -> "Problem":
        check_dtype(dtype)
        check_n(n)
        a = sp.csr_matrix(a, dtype=np.float32)
        a.sum_duplicates()
        a.sort_indices()
        a.data = host_values(a.data, DTYPES[dtype])
        m, k = a.shape
        density = round(a.nnz / (m * k), 6) if a.nnz else round(1.0 / (m * k), 6)
        return cls(m, k, n, density, dtype, pattern, 0, a)

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @property
    def flops(self) -> int:
        return 2 * self.nnz * self.n

    def key(self) -> str:
        return f"M{self.m}_K{self.k}_N{self.n}_d{self.density:g}_{self.dtype}_{self.pattern}"

    def fingerprint(self) -> str:
        return matrix_hash(self.matrix)

    def min_bytes(self, index_bytes: int = 4) -> int:
        """Bytes that must move: A's values, column indices and row pointers, B and C, each once."""
        es = np.dtype(DTYPES[self.dtype]).itemsize
        return self.nnz * (es + index_bytes) + (self.m + 1) * 4 + self.k * self.n * es + self.m * self.n * es
