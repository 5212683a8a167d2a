"""SDDMM (issue 19): the values of C = (X @ Y^T) ⊙ S at the nonzeros of a CSR mask S.

Status
------
What exists:
  - two kernel families, Jinja2 CUDA templates with tunable parameters: `sddmm_warp` (variants/sddmm/sddmm_warp.cu.j2:
    a subwarp per row segment, lanes splitting K with vector loads, shuffle reduction, X's row in registers, shared
    memory or L1) and `sddmm_tile` (variants/sddmm/sddmm_tile.cu.j2: a block per row tile, X's tile staged in shared
    memory in K chunks, plain or double-buffered cp.async, several nonzeros a thread); their helpers in
    variants/sddmm/_sddmm_common.cu.j2 (which includes variants/_common.cu.j2);
  - their spaces, search_spaces/sddmm/*.toml, in the SpMM spaces' format (core.space parses them; problem variables
    M, N, K, nnz, dtype: `sddmm_env`), with unmeasured known-good configs;
  - this module: the spaces' loader, rendering (core.render), compiling (device.compile, NVRTC through
    cupy.RawModule), the launcher `build_sddmm`, the float64 CPU reference `sddmm_reference`, the dense baseline
    `build_dense_baseline` (cuBLAS X @ Y^T through CuPy, then a gather at the mask) and the cuSPARSE baseline
    `build_cusparse_sddmm` (fp32 and fp16; below) over the ctypes binding device/sddmm_vendor.py.
What is verified, on the CPU only (the session that wrote this had no GPU): every config of both spaces renders; a
covering sample of each space's feasible configs compiles with nvcc for sm_90; the launch plans match the kernels'
signatures; the reference matches numpy's dense (X @ Y^T)[mask] on random and adversarial masks; the spaces parse and
their constraints reject what they say; the cuSPARSE binding's enum values and prototypes match the installed
cusparse.h / library_types.h, libcusparse exports its functions, and its argument checks hold (tests/test_sddmm.py).
tests/test_sddmm_gpu.py (each family, a covering sample, fp32/fp16/bf16, edge cases, the dense and cuSPARSE baselines,
against the reference at core.problem.TOLERANCE) has NOT been run: nothing here has run on a GPU yet, the cuSPARSE
baseline included (written, not run).
Since then: tests/test_sddmm_gpu.py passed on an H200; the tuner (tuning/sddmm_tune.py: the SpMM tuner's search,
verification and timing over these spaces, the baselines as vendor candidates), the operator in the tuning database's
key (store.db schema version 5: records of op "sddmm" beside SpMM's), the runtime call (runtime/sddmm.py:
`sparse_autotune.sddmm`, `SDDMM`; the paths it runs: ops/sddmm_paths.py) and the CLI `tune --op sddmm` /
`lookup --op sddmm` exist (tests/test_sddmm_tune.py, tests/test_sddmm_tune_gpu.py). What is left: a benchmark
against the baselines (the cuSPARSE one absent for bf16). (pyproject.toml ships the
package sparse_autotune.ops and variants/sddmm/*.j2, search_spaces/sddmm/*.toml as package data.)

The product
-----------
    S   M x N CSR mask (scipy.sparse): its nonzero positions AND its values
    X   M x K dense, row-major;  Y   N x K dense, row-major (row j of Y meets column j of the mask)
    out[p] = S.data[p] * dot(X[row(p), :], Y[col(p), :])   for p in 0 .. nnz - 1, in S's CSR order as stored
The mask's values multiply the products (the choice made here: the general SDDMM of cuSPARSE and DGL/PyG's
u_dot_v-then-edge-weight; a pure 0/1 mask is a mask whose values are 1, at the cost of one load and one multiply per
nonzero). Entries are taken as stored: unsorted columns and duplicates are kept, each gets its product. dtypes fp32,
fp16, bf16 (16-bit storage of S's values, X, Y and out; bf16 as raw uint16 words like the SpMM side; fp32
accumulation; one rounding of each output). 32-bit indices: M * K, N * K and nnz below 2^31 (a space constraint).
Operands are C-contiguous CuPy arrays; X and Y start 16-byte aligned (CuPy's allocations do; the vector loads need
it), out may be any contiguous slice. K % vec == 0 is a space constraint (the rows of X and Y are vec-aligned only
then): an odd K such as 33 runs with vec = 1 configs; tails of K past a pass of lanes * vec or a chunk of kc are
handled inside the kernels.

cuSPARSE baseline (`build_cusparse_sddmm`): CuPy (14.2 here) exposes no SDDMM (cupyx.cusparse has no `sddmm`, its
low-level binding no cusparseSDDMM), so device/sddmm_vendor.py calls libcusparse through ctypes, in the manner of
device/vendor.py's cusparseSpMM: generic API, CuPy's handle on the current stream, descriptors made once with the
baseline and destroyed with it. cusparseSDDMM computes C = alpha (op(A) op(B)) ∘ spy(C) + beta C: the product is
masked by C's sparsity PATTERN, and C's stored values are only scaled by beta; cuSPARSE has no multiplication by the
mask's values. So a call is two steps, both on the current stream and both in its time: (1) cusparseSDDMM
(CUSPARSE_SDDMM_ALG_DEFAULT, alpha 1, beta 0) with A = X (M x K row-major, opA NON_TRANSPOSE), B = Y (N x K row-major,
opB TRANSPOSE, so op(B) = Y^T), C = a CSR descriptor of the mask's row pointers and 32-bit columns over a float32
scratch of nnz values: the 0/1-mask product dot(X[row(p)], Y[col(p)]) with fp32 accumulation; (2) out = scratch *
S.data in one elementwise CuPy multiply, in float32 (S.data rounded to the dtype first, as the kernels store it),
rounded once into out's type. The result is the module's product (one rounding per output, like the kernels); the
scratch (never the caller's out) is C, so beta * C never reads a poisoned output. dtypes: fp32 (A, B, C and compute
CUDA_R_32F) and fp16 (A, B CUDA_R_16F; C and compute CUDA_R_32F: the mixed-precision row of cusparseSDDMM's
data-type table); bf16 (CUDA_R_16BF) is not in that table: a one-line UserError (no baseline for bf16), as is a dtype
the library refuses at run time (CUSPARSE_STATUS_NOT_SUPPORTED from the buffer-size query). The table was taken from
memory of NVIDIA's documentation (the session that wrote this could not read it), so the fp16 row and the bf16
refusal are to be confirmed by tests/test_sddmm_gpu.py. Entries are taken as stored; whether cuSPARSE accepts
unsorted columns and duplicates in C is likewise checked only there (not run).

May import core, device, errors, resources (ops/__init__.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..core.problem import DTYPES, as_float, host_values, storage
from ..core.render import render
from ..core.space import DEFAULT_LIMITS, Space, load_spaces
from ..errors import UserError
from ..resources import resource_dir

OP = "sddmm"
KERNEL_NAME = "sddmm_kernel"
SDDMM_DTYPES = ("fp32", "fp16", "bf16")
INDEX_LIMIT = 2**31  # the kernels' 32-bit offsets: M * K, N * K and nnz stay below
_REF_ELEMENTS = 1 << 22  # the reference's working set: nonzeros x K products per slice


# ---- spaces ------------------------------------------------------------------------------------------------------

def spaces_dir() -> Path:
    """search_spaces/sddmm: the SDDMM spaces (a folder core.families does not scan)."""
    return resource_dir("search_spaces") / OP


def load_sddmm_spaces() -> tuple[Space, ...]:
    """The SDDMM families' spaces, parsed by core.space (in (rank, family) order)."""
    return load_spaces(str(spaces_dir()))


def sddmm_families() -> tuple[str, ...]:
    return tuple(s.family for s in load_sddmm_spaces())


def get_sddmm_space(family: str) -> Space:
    for s in load_sddmm_spaces():
        if s.family == family:
            return s
    raise UserError(f"unknown SDDMM kernel family {family!r}: choose from {', '.join(sddmm_families())}")


def sddmm_env(m: int, n: int, k: int, nnz: int, dtype: str) -> dict:
    """The problem's names in the SDDMM spaces' constraints: M and N (the mask's shape; N is also Y's rows), K (the
    inner dimension: columns of X and Y), nnz, dtype."""
    return {"M": int(m), "N": int(n), "K": int(k), "nnz": int(nnz), "dtype": dtype}


def render_sddmm(family: str, config: dict, dtype: str) -> str:
    """CUDA source of one config (core.render: the same Jinja2 environment as the SpMM families; the templates are
    variants/sddmm/*.cu.j2). A missing or unknown parameter raises (StrictUndefined)."""
    return render(get_sddmm_space(family), config, dtype)


def _check_dtype(dtype) -> None:
    if dtype not in SDDMM_DTYPES:
        raise UserError(f"unknown SDDMM dtype {dtype!r}: choose one of {', '.join(SDDMM_DTYPES)}")


def check_config(family: str, config: dict, dtype: str, env: dict, limits: dict | None = None) -> dict:
    """The config normalized (its active parameters only) if it can run the problem `env`; else a one-line UserError
    that names the parameter or the constraint it fails."""
    _check_dtype(dtype)
    space = get_sddmm_space(family)
    cfg = space.normalize(config, dtype)
    if cfg is None:
        bad = [p.name for p in space.params if space.active(p.name, config)
               and config.get(p.name, p.default) not in p.choices(dtype)]
        raise UserError(f"{family}: config {config} is not in the space ({', '.join(bad) or 'a parameter'} has a "
                        f"value outside its list for {dtype})")
    why = space.check(cfg, env, {**DEFAULT_LIMITS, **(limits or {})})
    if why is not None:
        raise UserError(f"{family}: config {cfg} cannot run this problem: {why}")
    return cfg


# ---- inputs --------------------------------------------------------------------------------------------------------

def as_mask(mask_csr) -> sp.csr_matrix:
    """The mask as a scipy CSR matrix (entries as stored); a one-line UserError for anything else."""
    if not sp.issparse(mask_csr):
        raise UserError(f"the SDDMM mask must be a scipy.sparse matrix (got {type(mask_csr).__name__})")
    s = mask_csr if mask_csr.format == "csr" else sp.csr_matrix(mask_csr)
    if len(s.shape) != 2:
        raise UserError(f"the SDDMM mask must be 2-D (got shape {s.shape})")
    if s.nnz and (int(s.indices.min()) < 0 or int(s.indices.max()) >= s.shape[1]):
        raise UserError(f"the SDDMM mask has a column index outside 0 .. {s.shape[1] - 1}")
    if not np.issubdtype(s.dtype, np.floating) and not np.issubdtype(s.dtype, np.integer) and s.dtype != np.bool_:
        raise UserError(f"the SDDMM mask's values must be real numbers (got {s.dtype})")
    return s


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise UserError(f"K (the columns of X and Y) must be a positive integer (got {k!r})")
    return int(k)


def _check_sizes(m: int, n: int, k: int, nnz: int) -> None:
    for what, v in (("M x K", m * k), ("N x K", n * k), ("nnz", nnz)):
        if v >= INDEX_LIMIT:
            raise UserError(f"SDDMM {what} = {v} is too large for the kernels' 32-bit indices (limit 2^31 - 1)")


def _check_operand(name: str, arr, shape: tuple, dtype: str) -> None:
    """A CuPy array of the problem's storage type (bf16: uint16 words), C-contiguous, of this shape."""
    want = np.dtype(DTYPES[dtype])
    if not hasattr(arr, "data") or not hasattr(arr, "dtype") or not hasattr(getattr(arr, "data"), "ptr"):
        raise UserError(f"SDDMM {name} must be a CuPy array (got {type(arr).__name__})")
    if tuple(arr.shape) != tuple(shape):
        raise UserError(f"SDDMM {name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    if arr.dtype != want:
        raise UserError(f"SDDMM {name} has dtype {arr.dtype}, expected {want} for {dtype}")
    if not arr.flags.c_contiguous:
        raise UserError(f"SDDMM {name} must be C-contiguous (row-major)")
    if name in ("X", "Y") and int(arr.data.ptr) % 16:
        raise UserError(f"SDDMM {name} must start at a 16-byte aligned address (the kernels' vector loads; CuPy's own "
                        "allocations are)")


# ---- the families' launch plans (pure numpy: tested on the CPU) ----------------------------------------------------

def segments(mask: sp.csr_matrix, seg: int) -> tuple[np.ndarray, np.ndarray]:
    """sddmm_warp's work list: every row cut into segments of at most `seg` nonzeros (an empty row has none), as
    (seg_row, seg_start), int32; a segment ends at min(start + seg, row_ptr[row + 1])."""
    indptr = mask.indptr.astype(np.int64)
    lens = np.diff(indptr)
    per_row = -(-lens // int(seg))
    seg_row = np.repeat(np.arange(mask.shape[0], dtype=np.int64), per_row)
    first = np.cumsum(per_row) - per_row
    within = np.arange(len(seg_row), dtype=np.int64) - np.repeat(first, per_row)
    seg_start = indptr[seg_row] + within * int(seg)
    return seg_row.astype(np.int32), seg_start.astype(np.int32)


@dataclass
class Plan:
    """One config's launch for one mask and K: the grid (blocks), threads per block, dynamic shared memory, the
    kernel's leading index arrays (numpy int32) and its trailing int32 scalars. The kernel's parameters are
    (*arrays, s_vals, X, Y, out, *scalars)."""

    grid: int
    block: int
    smem: int
    arrays: tuple = field(default_factory=tuple)
    scalars: tuple = field(default_factory=tuple)


def launch_plan(family: str, config: dict, mask: sp.csr_matrix, k: int, dtype: str) -> Plan:
    m = mask.shape[0]
    es = np.dtype(DTYPES[dtype]).itemsize
    indptr, indices = mask.indptr.astype(np.int32), mask.indices.astype(np.int32)
    if family == "sddmm_warp":
        seg_row, seg_start = segments(mask, config["seg"])
        subs = config["warps"] * 32 // config["lanes"]
        smem = subs * k * es if config["xsrc"] == "smem" else 0
        return Plan(-(-len(seg_row) // subs), 32 * config["warps"], smem, (seg_row, seg_start, indptr, indices),
                    (np.int32(len(seg_row)), np.int32(k)))
    if family == "sddmm_tile":
        return Plan(-(-m // config["rows"]), config["threads"], 0, (indptr, indices), (np.int32(m), np.int32(k)))
    if family == "sddmm_tc":  # tensor cores: the layout of ops/sddmm_tc.py (built once per mask pattern, cached)
        from .sddmm_tc import plan_parts  # noqa: PLC0415
        return Plan(*plan_parts(config, mask, k))
    raise UserError(f"unknown SDDMM kernel family {family!r}: choose from {', '.join(sddmm_families())}")


# ---- the launcher ----------------------------------------------------------------------------------------------------

class SddmmKernel:
    """One compiled config bound to one mask (on the device) and one K: `kernel(X, Y, out)` writes the nnz values on
    the current CuPy stream and returns out. An empty product (nnz == 0) launches nothing."""

    def __init__(self, family: str, config: dict, dtype: str, mask: sp.csr_matrix, k: int, source: str, fn,
                 plan: Plan):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.family, self.config, self.dtype, self.k, self.source, self.fn, self.plan = \
            family, config, dtype, k, source, fn, plan
        self.shape, self.nnz = mask.shape, int(mask.nnz)
        self.arrays = tuple(cp.asarray(a) for a in plan.arrays)
        self.s_vals = cp.asarray(storage(np.asarray(mask.data, dtype=np.float32), dtype))

    def __call__(self, x, y, out):
        m, n = self.shape
        _check_operand("X", x, (m, self.k), self.dtype)
        _check_operand("Y", y, (n, self.k), self.dtype)
        _check_operand("out", out, (self.nnz,), self.dtype)
        if self.nnz == 0 or self.plan.grid == 0:
            return out
        self.fn((self.plan.grid,), (self.plan.block,), (*self.arrays, self.s_vals, x, y, out, *self.plan.scalars),
                shared_mem=self.plan.smem)
        return out


def _limits() -> dict:
    from ..device.gpu import gpu_info  # noqa: PLC0415
    return gpu_info().limits()


def build_sddmm(mask_csr, K: int, family: str, config: dict, dtype: str, limits: dict | None = None) -> SddmmKernel:
    """One config of an SDDMM family compiled (NVRTC, cupy.RawModule: device.compile) for a mask and K: a callable
    run(X, Y, out) on CuPy arrays (X M x K, Y N x K, out nnz, all of the dtype's storage type). Bad shapes, dtypes or a
    config the problem cannot run: a one-line UserError; a compile failure: CandidateError("compile")."""
    from ..device.compile import compile_kernel, reserve_smem  # noqa: PLC0415
    _check_dtype(dtype)
    mask = as_mask(mask_csr)
    k = _check_k(K)
    m, n = mask.shape
    _check_sizes(m, n, k, mask.nnz)
    lim = _limits() if limits is None else limits
    cfg = check_config(family, config, dtype, sddmm_env(m, n, k, mask.nnz, dtype), lim)
    source = render_sddmm(family, cfg, dtype)
    plan = launch_plan(family, cfg, mask, k, dtype)
    fn = compile_kernel(source, KERNEL_NAME)
    reserve_smem(fn, plan.smem)  # over 48 KB with the static shared memory: opt in
    return SddmmKernel(family, cfg, dtype, mask, k, source, fn, plan)


# ---- reference and baselines -----------------------------------------------------------------------------------------

def _host_float64(arr, name: str) -> np.ndarray:
    """numpy (or CuPy: copied to the host) values as float64; uint16 arrays are bf16 words (decoded)."""
    if hasattr(arr, "get"):
        arr = arr.get()
    a = np.asarray(arr)
    if a.dtype == np.uint16:
        a = as_float(a)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise UserError(f"SDDMM {name} must hold real numbers (got {a.dtype})")
    return a.astype(np.float64)


def sddmm_reference(mask_csr, X, Y, dtype: str | None = None) -> np.ndarray:
    """out[p] = S.data[p] * dot(X[row(p)], Y[col(p)]) in float64 on the CPU (numpy), in S's CSR order. X and Y: numpy
    or CuPy arrays (uint16: bf16 words). dtype: S's values rounded as the kernels of that dtype store them (else as
    given), so the reference sees exactly what the kernels see."""
    mask = as_mask(mask_csr)
    x, y = _host_float64(X, "X"), _host_float64(Y, "Y")
    m, n = mask.shape
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != m or y.shape[0] != n or x.shape[1] != y.shape[1]:
        raise UserError(f"SDDMM shapes do not fit: mask {m}x{n} needs X {m}xK and Y {n}xK (got X {x.shape}, "
                        f"Y {y.shape})")
    vals = np.asarray(mask.data, dtype=np.float32)
    if dtype is not None:
        _check_dtype(dtype)
        vals = host_values(vals, DTYPES[dtype])
    vals = vals.astype(np.float64)
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(mask.indptr))
    cols = mask.indices.astype(np.int64)
    out = np.empty(mask.nnz, dtype=np.float64)
    step = max(1, _REF_ELEMENTS // max(1, x.shape[1]))
    for lo in range(0, mask.nnz, step):
        hi = min(mask.nnz, lo + step)
        out[lo:hi] = vals[lo:hi] * np.einsum("ij,ij->i", x[rows[lo:hi]], y[cols[lo:hi]])
    return out


def cusparse_sddmm_available() -> bool:
    """Whether the cuSPARSE baseline can be bound: libcusparse loads through ctypes and exports cusparseSDDMM and the
    other functions device.sddmm_vendor calls (a check that needs no GPU; CuPy itself binds no SDDMM)."""
    from ..device.sddmm_vendor import available  # noqa: PLC0415
    return available()


class DenseBaseline:
    """The dense path: D = X @ Y^T (cuBLAS through CuPy: fp32, fp16; bf16, which CuPy's matmul lacks, in fp32 after
    decoding), then out = S ⊙ D gathered at the mask (fp32 products, one rounding). M x N scratch: for timing
    against, not for masks whose dense product does not fit."""

    def __init__(self, mask: sp.csr_matrix, k: int, dtype: str):
        from ..device.gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.shape, self.k, self.dtype, self.nnz = mask.shape, k, dtype, int(mask.nnz)
        self.rows = cp.asarray(np.repeat(np.arange(mask.shape[0], dtype=np.int32), np.diff(mask.indptr)))
        self.cols = cp.asarray(mask.indices.astype(np.int32))
        self.s = cp.asarray(host_values(np.asarray(mask.data, dtype=np.float32), DTYPES[dtype]))

    def __call__(self, x, y, out):
        m, n = self.shape
        _check_operand("X", x, (m, self.k), self.dtype)
        _check_operand("Y", y, (n, self.k), self.dtype)
        _check_operand("out", out, (self.nnz,), self.dtype)
        if self.nnz == 0:
            return out
        if self.dtype == "bf16":
            d = as_float(x) @ as_float(y).T
        else:
            d = x @ y.T
        out[...] = storage(d[self.rows, self.cols].astype(np.float32) * self.s, self.dtype)
        return out


def build_dense_baseline(mask_csr, K: int, dtype: str) -> DenseBaseline:
    """The dense baseline as a callable run(X, Y, out), like build_sddmm's."""
    _check_dtype(dtype)
    mask = as_mask(mask_csr)
    return DenseBaseline(mask, _check_k(K), dtype)


CUSPARSE_SDDMM_DTYPES = ("fp32", "fp16")  # device.sddmm_vendor.VALUE_TYPES: cuSPARSE's documented SDDMM data types


class CuSparseBaseline:
    """The cuSPARSE path: cusparseSDDMM (device.sddmm_vendor: the 0/1-pattern product dot(X[row(p)], Y[col(p)]) into
    a float32 scratch of nnz values, fp32 accumulation), then out = scratch * S.data in one elementwise CuPy multiply
    (float32, one rounding to the storage type), both on the current stream and both part of a call (and of its
    timing). An empty product (nnz == 0) launches nothing."""

    def __init__(self, mask: sp.csr_matrix, k: int, dtype: str, alg: str):
        from ..device.gpu import cupy  # noqa: PLC0415
        from ..device.sddmm_vendor import SddmmLauncher  # noqa: PLC0415
        cp = cupy()
        self.shape, self.k, self.dtype, self.alg, self.nnz = mask.shape, k, dtype, alg, int(mask.nnz)
        self.s = cp.asarray(host_values(np.asarray(mask.data, dtype=np.float32), DTYPES[dtype]))
        self.launcher = None
        if self.nnz:
            m, n = mask.shape
            self.launcher = SddmmLauncher(m, n, k, cp.asarray(mask.indptr.astype(np.int32)),
                                          cp.asarray(mask.indices.astype(np.int32)), dtype, alg)

    def __call__(self, x, y, out):
        from ..device.gpu import cupy  # noqa: PLC0415
        m, n = self.shape
        _check_operand("X", x, (m, self.k), self.dtype)
        _check_operand("Y", y, (n, self.k), self.dtype)
        _check_operand("out", out, (self.nnz,), self.dtype)
        if self.launcher is None:
            return out
        cp = cupy()
        self.launcher(x.data.ptr, y.data.ptr, cp.cuda.get_current_stream().ptr)
        cp.multiply(self.launcher.c, self.s, out=out)  # float32 product, cast once into out's type (same_kind)
        return out


def build_cusparse_sddmm(mask_csr, K: int, dtype: str, alg: str = "default") -> CuSparseBaseline:
    """The cuSPARSE baseline as a callable run(X, Y, out), like build_sddmm's: out[p] = S.data[p] * dot(X[row(p)],
    Y[col(p)]), cusparseSDDMM for the dot products (C's pattern = the mask's, alpha 1, beta 0) and one CuPy multiply
    by the mask's values (the module's docstring). dtypes fp32 and fp16 (CUSPARSE_SDDMM_DTYPES); bf16, which
    cuSPARSE's SDDMM does not take, and any dtype the library refuses at run time: a one-line UserError. alg: a name
    of device.sddmm_vendor.ALGS ("default": CUSPARSE_SDDMM_ALG_DEFAULT)."""
    from ..device.sddmm_vendor import ALGS  # noqa: PLC0415
    _check_dtype(dtype)
    if dtype not in CUSPARSE_SDDMM_DTYPES:
        raise UserError(f"cuSPARSE SDDMM does not support {dtype} (its data types: "
                        f"{', '.join(CUSPARSE_SDDMM_DTYPES)}): no cuSPARSE baseline for {dtype}")
    if alg not in ALGS:
        raise UserError(f"unknown cuSPARSE SDDMM algorithm {alg!r}: choose from {', '.join(ALGS)}")
    mask = as_mask(mask_csr)
    k = _check_k(K)
    _check_sizes(mask.shape[0], mask.shape[1], k, mask.nnz)
    return CuSparseBaseline(mask, k, dtype, alg)


def flops(nnz: int, k: int) -> int:
    """Useful floating-point operations of one SDDMM: 2 K per nonzero (the dot product) + 1 (the mask's value)."""
    return int(nnz) * (2 * int(k) + 1)


def min_bytes(m: int, n: int, k: int, nnz: int, dtype: str) -> int:
    """Bytes that must move at least: X and Y once, the mask (values, 32-bit columns, row pointers), out."""
    es = np.dtype(DTYPES[dtype]).itemsize
    return int((m + n) * k * es + nnz * (2 * es + 4) + 4 * (m + 1))


__all__ = ["OP", "KERNEL_NAME", "SDDMM_DTYPES", "CUSPARSE_SDDMM_DTYPES", "Plan", "SddmmKernel", "DenseBaseline",
           "CuSparseBaseline", "as_mask", "build_sddmm", "build_dense_baseline", "build_cusparse_sddmm", "check_config",
           "cusparse_sddmm_available", "flops", "get_sddmm_space", "launch_plan", "load_sddmm_spaces", "min_bytes",
           "render_sddmm", "sddmm_env", "sddmm_families", "sddmm_reference", "segments"]
