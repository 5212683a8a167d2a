"""The problem: C = A @ B with A sparse (M x K, fixed) and B dense (K x N), in one of two operand layouts (LAYOUTS):

    kn  B is K x N row-major, C is M x N row-major (C = A @ B)
    nk  the nn.Linear layout: B is x, N x K row-major (leading dimension K); C is y, N x M row-major (leading
        dimension M); y = x @ A^T (+ bias, a length-M vector of the problem's dtype, optional)
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:  # SciPy is imported by the functions that build or read a matrix (the command line's argument
    import scipy.sparse as sp  # checks import this module and need none of it)

DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}  # bf16: raw 16-bit words (numpy has none)
# tf32 (opt-in): fp32 storage, TF32 tensor-core math (inputs rounded to 10 mantissa bits, fp32 accumulation); compared
# with cuBLAS TF32. Families without a TF32 kernel serve it with their exact fp32 kernel (core.space.kernel_dtype).
DTYPES["tf32"] = np.float32
# Relative error bounds by dtype (device.verify checks kernels against them, store.db keeps only records within).
# fp32: fp32 accumulation lands near 1e-6. fp16: fp16 inputs (the reference uses the same fp16 values upcast) with
# fp32 accumulation, then one rounding of the output to fp16 (~3e-4).
# bf16: 8 bits of mantissa, the output rounded once (~2e-3 relative per element, Frobenius lower).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 1e-2}
# tf32: the reference is the float64 product of the fp32 values, and the kernel rounds both inputs to TF32 (unit
# roundoff u = 2^-11), so each product carries a relative error e_a + e_b (each uniform in [-u, u]: std 0.82 u); for
# a random zero-mean B the element errors are independent of the sum's terms and the relative Frobenius error is
# ~0.82 u = 4.0e-4 whatever K is (an element's error and its value both grow with sqrt(nnz of its row)); the bound 2e-3
# (~4 u: core.vendor.TF32_TOLERANCE, what cuBLAS TF32 records are held to) leaves room for inputs truncated instead of
# rounded (~2 u) and still fails a kernel that drops one product of a row of 40 (~0.16).
TOLERANCE["tf32"] = 2e-3
STORAGE_DTYPE = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}  # how each dtype's values are stored


def element_bytes(dtype: str) -> int:
    """Bytes of one stored value of `dtype`: 4 for fp32 and tf32 (fp32 storage), 2 for fp16 and bf16."""
    return np.dtype(DTYPES[dtype]).itemsize


def storage_dtype(dtype: str) -> str:
    """The dtype whose storage `dtype` uses (tf32: fp32; the others: themselves)."""
    return STORAGE_DTYPE.get(dtype, dtype)
PATTERNS = ("uniform", "powerlaw", "rowuniform")
LAYOUTS = ("kn", "nk")  # the operand layouts (the module's docstring); kn is the default and the older one
DEFAULT_N = 256
INDEX_LIMIT = 2**31 - 1  # the kernels index A's nonzeros (row pointers) and B's elements (column x N) in 32 bits
SEED_MAX = 2**32 - 1  # numpy's and Optuna's seeds
DENSE_LIMIT = 0.5  # a given matrix denser than this is refused (sparse kernels cannot win; prune it first)
HOST_BYTES_PER_NNZ = 48  # peak host memory per nonzero while a random matrix is built (indices, values, CSR)


def _int(value, what: str) -> int:
    """An integer from an int or a string of digits (not a bool, not a float with a fraction)."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be an integer (got {value!r})")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise UserError(f"{what} must be an integer (got {value!r})")


def check_dim(value, what: str) -> int:
    """A matrix dimension (M, K or N): a positive integer up to 2**31 - 1."""
    v = _int(value, what)
    if not 0 < v <= INDEX_LIMIT:
        raise UserError(f"{what} must be a positive integer up to {INDEX_LIMIT} (got {v})")
    return v


def check_dims(m, k, n=None) -> tuple:
    """(M, K) or (M, K, N), each checked by check_dim."""
    dims = (check_dim(m, "M"), check_dim(k, "K"))
    return dims if n is None else (*dims, check_n(n))


def check_seed(seed) -> int:
    """A seed of the random matrix, the inputs and the sampler: an integer in 0 .. 2**32 - 1."""
    v = _int(seed, "the seed")
    if not 0 <= v <= SEED_MAX:
        raise UserError(f"the seed must be an integer from 0 to {SEED_MAX} (got {v})")
    return v


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(b) < 1024 or unit == "EiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} EiB"


def device_bytes(m: int, k: int, n: int, nnz: int, dtype: str) -> int:
    """GPU memory a tuning run of the problem needs, about: A in the kernels' CSR (values, 32-bit column indices, row
    pointers) and its float64 and float32 copies (the reference and cuSPARSE), the dense A of the cuBLAS baselines (fp32
    and fp16), B with its copies for the baselines, C with its copies, and the float64 reference of C."""
    es = element_bytes(dtype) if dtype in DTYPES else 4
    return (nnz * (es + 4 + 12 + 8) + 3 * (m + 1) * 4 + m * k * 6 + k * n * (es + 6) + m * n * (es + 6 + 16))


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_size(m: int, k: int, n: int, nnz: int, dtype: str, gpu_memory: int | None = None,
               gpu_name: str | None = None, build: bool = False) -> int:
    """Refuse a problem the kernels or the memory cannot hold, before anything is allocated: more than 2**31 - 1
    nonzeros, or K x N above 2**31 - 1 (32-bit indices in the kernels), or more GPU memory than `gpu_memory` (when
    known), or (`build`: a random matrix is to be built here) more host memory than is available. The message says
    the bytes the problem needs. Returns device_bytes."""
    need = device_bytes(m, k, n, nnz, dtype)
    what = f"A {m}x{k} with {nnz} nonzeros (density {nnz / (m * k):.3g}), N={n}, {dtype}"
    gpu = f"; {gpu_name or 'this GPU'} has {_fmt_bytes(gpu_memory)}" if gpu_memory else ""
    if nnz > INDEX_LIMIT:
        raise UserError(f"problem too large: {what}: more than {INDEX_LIMIT} nonzeros (the kernels index them in 32 "
                        f"bits); it would need about {_fmt_bytes(need)} of GPU memory{gpu}")
    if k * n > INDEX_LIMIT:
        raise UserError(f"problem too large: {what}: B (K x N = {k * n} elements) is above {INDEX_LIMIT} elements (the "
                        f"kernels index it in 32 bits); it would need about {_fmt_bytes(need)} of GPU memory{gpu}")
    if gpu_memory and need > gpu_memory:
        raise UserError(f"problem too large for the GPU: {what} needs about {_fmt_bytes(need)} of GPU memory (A, its "
                        f"dense copy for the cuBLAS baselines, B, C and the float64 references){gpu}")
    if build:
        check_host_build(what, m, nnz, f" (it would need about {_fmt_bytes(need)} of GPU memory)")
    return need


def check_host_build(what: str, rows: int, nnz: int, suffix: str = "") -> None:
    """Refuse, in one line, building a random sparse matrix of `rows` rows and `nnz` nonzeros on this host where it
    lacks the memory (HOST_BYTES_PER_NNZ a nonzero); `what` names the problem, `suffix` ends the message."""
    host = nnz * HOST_BYTES_PER_NNZ + (rows + 1) * 8
    avail = _host_available()
    if avail is not None and host > avail:
        raise UserError(f"problem too large for this machine: building {what} takes about {_fmt_bytes(host)} of "
                        f"host memory, {_fmt_bytes(avail)} is available{suffix}")


def nnz_of(m: int, k: int, density: float) -> int:
    """The nonzeros of a random M x K matrix of this density: round(density * M * K), at least 1 (else a UserError)."""
    nnz = min(int(round(density * m * k)), m * k)
    if nnz < 1:
        raise UserError(f"density {density:g} leaves no nonzero in a {m}x{k} matrix (at least {1 / (m * k):.3g})")
    return nnz


def parse_shape(text: str) -> tuple[int, int]:
    """Parse 'MxK' (e.g. '512x2048') into (M, K)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise UserError(f"malformed shape {text!r}: expected MxK with positive integers, e.g. 512x2048")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows <= 0 or cols <= 0:
        raise UserError(f"malformed shape {text!r}: M and K must be positive")
    if rows > INDEX_LIMIT or cols > INDEX_LIMIT:
        raise UserError(f"shape {text!r}: M and K must be at most {INDEX_LIMIT}")
    return rows, cols


def check_density(d: float) -> float:
    if isinstance(d, (bool, complex, np.complexfloating)):
        raise UserError(f"density {d!r} is not a real number")
    try:
        d = float(d)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"density {d!r} is not a number") from None
    if not (0.0 < d <= 1.0) or d != d:
        raise UserError(f"density {d} is outside (0, 1]")
    return d


def check_dtype(dtype: str) -> str:
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return dtype


def check_layout(layout) -> str:
    """An operand layout: kn (B is K x N, C is M x N) or nk (the nn.Linear layout: x is N x K, y is N x M)."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}: choose kn (B is K x N, C is M x N) or nk (the nn.Linear layout: "
                        "x is N x K, y is N x M, bias fused)")
    return layout


def check_n(n: int) -> int:
    """N, the columns of B: a positive integer up to 2**31 - 1."""
    v = _int(n, "N")
    if not 0 < v <= INDEX_LIMIT:
        raise UserError(f"N must be a positive integer up to {INDEX_LIMIT} (got {v})")
    return v


def dtype_name(np_dtype) -> str:
    np_dtype = np.dtype(np_dtype)
    if np_dtype == np.float16:
        return "fp16"
    if np_dtype in (np.float32, np.float64):
        return "fp32"
    raise UserError(f"unsupported matrix dtype {np_dtype}: use float32 or float16 (float64 is cast to float32)")


def n_bucket(n: int) -> int:
    """The N bucket of N: the next power of two (1, 2, 4, ..., 128, 256, ...). lookup serves an N from a record of its
    bucket before a merely nearer one, and `tune-model --n-buckets` tunes each bucket once, at its top."""
    return 1 << (max(1, int(n)) - 1).bit_length()


def random_matrix(m: int, k: int, density: float, pattern: str = "uniform", seed: int = 0,
                  dtype=np.float32) -> sp.csr_matrix:
    """A random sparse matrix with round(density*M*K) nonzeros and standard-normal values (never zero).

    uniform: every position equally likely. powerlaw: row lengths follow a Pareto (power-law) law like
    magnitude-pruned weights (a few long rows, many short ones), columns uniform within a row. rowuniform: every row
    keeps the same count (one more in the first nnz % M rows), columns uniform within a row, as per-output pruning
    (Wanda, SparseGPT) leaves LLM weights.
    """
    import scipy.sparse as sp  # noqa: PLC0415
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
    elif pattern == "rowuniform":
        lengths = np.full(m, nnz // m, dtype=np.int64)
        lengths[:nnz % m] += 1
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        for r in range(m):
            if lengths[r]:
                indices[indptr[r]:indptr[r + 1]] = np.sort(rng.choice(k, size=int(lengths[r]), replace=False))
        a = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(m, k))
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


def bf16_bits(x):
    """float32 values (numpy or CuPy) as bfloat16 bit patterns (uint16), rounded to nearest even (finite values)."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def tf32_round(x) -> np.ndarray:
    """float32 values rounded to TF32 as cvt.rna.tf32.f32 does (10 mantissa bits, to nearest, ties away from zero),
    as float32 with the 13 low bits zero (the tf32 families' A: tc_gather2, tc_sp24)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def half_bits(vals, dtype: str) -> np.ndarray:
    """Host values as the 16-bit patterns the fp16 / bf16 kernels' formats pack (uint16; bf16 rounded to nearest
    even, finite values)."""
    if dtype == "bf16":
        return bf16_bits(np.asarray(vals, dtype=np.float32))
    return np.asarray(vals).astype(np.float16).view(np.uint16)


def bf16_float(bits):
    """bfloat16 bit patterns (uint16, numpy or CuPy) as float32."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def storage(values, dtype: str):
    """Values (numpy or CuPy, any float type) as the kernels store them for `dtype`: float32, float16, or bf16 bits."""
    if dtype == "bf16":
        return bf16_bits(values)
    return values.astype(DTYPES[dtype])


def as_float(arr):
    """A dtype's stored values (numpy or CuPy) as floats: bf16 bits (uint16) decoded, others as they are."""
    return bf16_float(arr) if arr.dtype == np.uint16 else arr


def host_values(values, dtype) -> np.ndarray:
    """Values as the host keeps them: float32 (scipy.sparse has no 16-bit floats), rounded to fp16 / bf16 for those
    problems (dtype: the numpy storage type of DTYPES) so that the float64 reference sees exactly what the kernels see."""
    v = np.asarray(values)
    if np.dtype(dtype) == np.float16:
        return v.astype(np.float16).astype(np.float32)
    if np.dtype(dtype) == np.uint16:
        return bf16_float(bf16_bits(v.astype(np.float32)))
    return v.astype(np.float32)


def check_real_matrix(a, what: str, dtype: str | None = None, dense_limit: float | None = DENSE_LIMIT,
                      allow_zero: bool = False) -> None:
    """Refuse a given matrix (a file's, a model layer's) that cannot be tuned, in one line and before any conversion
    (no numpy warning reaches the user): complex or non-numeric values, NaN or infinite values, values beyond the
    range of float32 (or of fp16 for `dtype` fp16), no nonzero at all, or (`dense_limit`) a density above it.
    allow_zero: an empty or all-zero matrix is fine (the runtime's A: a layer pruned away computes zeros)."""
    import scipy.sparse as sp  # noqa: PLC0415
    if 0 in a.shape and not allow_zero:
        raise UserError(f"{what} is empty (shape {a.shape[0]}x{a.shape[1]})")
    dt = np.dtype(a.dtype)
    if np.issubdtype(dt, np.complexfloating):
        raise UserError(f"{what} holds complex values ({dt}): only real matrices can be tuned")
    if not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer) or dt == np.bool_):
        raise UserError(f"{what} holds values of type {dt}, not real numbers")
    data = a.data if sp.issparse(a) else np.asarray(a)
    if np.issubdtype(dt, np.floating):
        with np.errstate(all="ignore"):
            if not np.isfinite(data).all():
                raise UserError(f"{what} holds NaN or infinite values")
    top = float(np.abs(data).max()) if data.size else 0.0
    limit, name = (65504.0, "fp16") if dtype == "fp16" else (float(np.finfo(np.float32).max), "float32")
    if top > limit:
        raise UserError(f"{what} holds values up to {top:.3g}, beyond the range of {name} (+-{limit:.6g})")
    nnz = int(np.count_nonzero(data))
    m, k = a.shape
    if nnz == 0 and not allow_zero:
        raise UserError(f"{what} is all zeros: nothing to tune")
    if dense_limit is not None and m * k and nnz / (m * k) > dense_limit:
        raise UserError(f"{what} is {100 * nnz / (m * k):.0f} % nonzero, denser than {100 * dense_limit:.0f} %: a sparse "
                        "kernel cannot beat the dense product there: prune it first")


def load_matrix(path: str | Path) -> sp.csr_matrix:
    """Load a sparse matrix from a scipy .npz (save_npz) or a Matrix Market .mtx file."""
    import scipy.sparse as sp  # noqa: PLC0415
    p = Path(path)
    if not p.is_file():
        raise UserError(f"matrix file {str(p)!r} does not exist or is not a file")
    try:
        if p.suffix == ".npz":
            with open(p, "rb") as fh:  # closed also when the file is not a valid .npz
                a = sp.load_npz(fh)
        elif p.suffix == ".mtx":
            import scipy.io  # noqa: PLC0415 - only for .mtx files: it costs ~0.3 s at every start of the CLI
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
    check_real_matrix(a, f"matrix file {str(p)!r}", dense_limit=None)
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
    """One tuning problem. `density` is the key density (requested, or nnz/(M*K) for a given matrix); `layout` the
    operand layout (LAYOUTS: kn, or nk for y = x @ A^T + bias as nn.Linear holds x and y)."""

    m: int
    k: int
    n: int
    density: float
    dtype: str = "fp32"
    pattern: str = "uniform"
    seed: int = 0
    matrix: sp.csr_matrix | None = field(default=None, repr=False)
    layout: str = "kn"

    def __post_init__(self):
        check_layout(self.layout)

    @classmethod
    def random(cls, m, k, n, density, dtype="fp32", pattern="uniform", seed=0, layout="kn") -> "Problem":
        """A random problem (random_matrix); every input is checked, and the size (check_size) before anything is
        allocated."""
        check_dtype(dtype)
        check_layout(layout)
        density = check_density(density)
        m, k, n = check_dims(m, k, n)
        seed = check_seed(seed)
        if pattern not in PATTERNS:
            raise UserError(f"unknown pattern {pattern!r}: choose one of {', '.join(PATTERNS)}")
        check_size(m, k, n, nnz_of(m, k, density), dtype, build=True)
        a = random_matrix(m, k, density, pattern, seed, DTYPES[dtype])
        return cls(m, k, n, round(float(density), 6), dtype, pattern, seed, a, layout)

    @classmethod
    def from_matrix(cls, a: sp.spmatrix, n: int, dtype: str = "fp32", pattern: str = "matrix",
                    layout: str = "kn") -> "Problem":
        """A problem of a given matrix (real values, at least one nonzero; check_real_matrix) and N."""
        import scipy.sparse as sp  # noqa: PLC0415
        check_dtype(dtype)
        check_layout(layout)
        n = check_n(n)
        if not hasattr(a, "shape") or not hasattr(a, "dtype") or len(a.shape) != 2 or 0 in a.shape:
            raise UserError(f"the matrix must be a non-empty 2-D array or scipy.sparse matrix "
                            f"(got {type(a).__name__} of shape {getattr(a, 'shape', None)})")
        check_real_matrix(a, "the matrix", dtype, dense_limit=None)
        check_dims(*a.shape)
        a = sp.csr_matrix(a, dtype=np.float32)
        a.sum_duplicates()
        a.sort_indices()
        a.data = host_values(a.data, DTYPES[dtype])
        m, k = a.shape
        check_size(m, k, n, a.nnz, dtype)
        density = round(a.nnz / (m * k), 6) if a.nnz else round(1.0 / (m * k), 6)
        return cls(m, k, n, density, dtype, pattern, 0, a, layout)

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @property
    def flops(self) -> int:
        return 2 * self.nnz * self.n

    def key(self) -> str:
        """The problem's name (its studies are named by it): "_nk" appended for the nk layout only, so kn problems keep
        the names they always had."""
        tail = "_nk" if self.layout == "nk" else ""
        return f"M{self.m}_K{self.k}_N{self.n}_d{self.density:g}_{self.dtype}_{self.pattern}{tail}"

    def fingerprint(self) -> str:
        return matrix_hash(self.matrix)

    def min_bytes(self, index_bytes: int = 4) -> int:
        """Bytes that must move: A's values, column indices and row pointers, B and C, each once (nk: and the bias)."""
        es = element_bytes(self.dtype)
        bias = self.m * es if self.layout == "nk" else 0
        return self.nnz * (es + index_bytes) + (self.m + 1) * 4 + self.k * self.n * es + self.m * self.n * es + bias
