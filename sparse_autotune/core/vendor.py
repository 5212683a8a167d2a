"""The vendor paths as kernel families: cuSPARSE SpMM and cuBLAS on a dense copy of A (CPU side: names, configs).

The templated families live in the registry (core.families: a space, a template and a host side each). The vendor
paths have neither template nor space to search: a handful of configs each, all timed by every tune (in the tuner's
finish, beside the winner) and by the runtime's quick tuning, and stored like any record:

    cusparse  {"alg": <cusparseSpMMAlg_t name>}   cusparseSpMM on A as CSR (32-bit indices, row-major B and C)
    dense     {"math": "fp32" | "tf32" | "fp16" | "bf16"}
                                                  cublasGemmEx on a dense copy of A (M x K elements of the dtype)

A dense config computes at the problem's precision: fp32 for fp32 (tf32, cuBLAS's TF32 tensor cores, only where the
user opts in: `--allow-tf32`, `SpMM(..., allow_tf32=True)`), fp16 for fp16, bf16 for bf16. A vendor config runs any
N as it is (no adaptation). `--families` accepts these names beside the templated ones.
"""
from __future__ import annotations

import json

from ..errors import UserError

CUSPARSE = "cusparse"
DENSE = "dense"
VENDOR_FAMILIES = (CUSPARSE, DENSE)
# the library paths of the other operators that are stored as records beside the tuned kernels' (not SpMM vendor paths:
# core.vendor's SpMM logic never runs them): conv3x3's cuDNN (ops.conv_paths.CUDNN)
OTHER_OP_VENDORS = ("cudnn",)
# cusparseSpMMAlg_t values (cusparse.h); CuPy's bindings do not export the names. The CSR algorithms that accept
# row-major B and C.
CUSPARSE_ALGS = {"CUSPARSE_SPMM_ALG_DEFAULT": 0, "CUSPARSE_SPMM_CSR_ALG1": 4, "CUSPARSE_SPMM_CSR_ALG2": 6,
                 "CUSPARSE_SPMM_CSR_ALG3": 12}
# the dense maths a problem of each dtype may run: its own precision (tf32 for fp32 only with the user's opt-in)
DENSE_MATH = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
TF32 = "tf32"
DENSE_MATH[TF32] = TF32  # the tf32 dtype (fp32 storage, TF32 math: core.problem) runs cuBLAS TF32 as its own precision
# TF32 keeps 10 mantissa bits, as fp16 does: a TF32 result is verified with fp16's tolerance
TF32_TOLERANCE = 2e-3
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}


# cuSPARSE with its algorithm chosen by the runtime: the four algorithms timed on this GPU at the first call with an N
# (device.vendor.pick_cusparse; well under a millisecond for a layer), the fastest kept. What lookup serves where a
# record's own baselines say cuSPARSE was faster: `cusparse_us` is the best of the four algorithms, and which one is
# not stored (session 9: CUSPARSE_SPMM_ALG_DEFAULT ran at 10.3 us where the best took 5.7-8.4 us, MiniLM fp32 at N=200).
CUSPARSE_AUTO = "auto"


def is_vendor(family: str | None) -> bool:
    return family in VENDOR_FAMILIES


def is_any_vendor(family: str | None) -> bool:
    """A library path of any operator (SpMM's cuSPARSE / dense, conv3x3's cuDNN), not a tuned kernel."""
    return family in VENDOR_FAMILIES or family in OTHER_OP_VENDORS


def configs(family: str, dtype: str, allow_tf32: bool = False) -> list[dict]:
    """Every config of a vendor family for a problem of `dtype`, in a fixed order."""
    if family == CUSPARSE:
        return [{"alg": a} for a in CUSPARSE_ALGS]
    if family == DENSE:
        return [{"math": DENSE_MATH[dtype]}] + ([{"math": TF32}] if allow_tf32 and dtype == "fp32" else [])
    raise KeyError(f"no vendor family {family!r} (known: {', '.join(VENDOR_FAMILIES)})")


def all_configs(dtype: str, families=VENDOR_FAMILIES, allow_tf32: bool = False) -> list[tuple[str, dict]]:
    """(family, config) of every vendor path of `families` for `dtype`."""
    return [(f, c) for f in VENDOR_FAMILIES if f in families for c in configs(f, dtype, allow_tf32)]


def adapt(family: str, config: dict, dtype: str, allow_tf32: bool = False) -> dict | None:
    """A stored vendor config as the runtime runs it for a problem of `dtype` (as it is: any N), or None where it may not
    run it: an unknown algorithm, a dense math of another precision, TF32 without the opt-in. {"alg": "auto"} (cuSPARSE,
    its algorithm picked at the first call: CUSPARSE_AUTO) runs too."""
    if family == CUSPARSE and config == {"alg": CUSPARSE_AUTO}:
        return dict(config)
    return dict(config) if config in configs(family, dtype, allow_tf32) else None


def tolerance(dtype: str, family: str | None = None, config=None) -> float:
    """The relative error a result of this dtype may have (core.problem.TOLERANCE); a TF32 dense path: TF32_TOLERANCE
    (fp32 records computed with TF32 tensor cores are verified against what TF32 can reach, never better)."""
    from .problem import TOLERANCE  # noqa: PLC0415
    tol = TOLERANCE[dtype]
    if family == DENSE:
        try:
            cfg = json.loads(config) if isinstance(config, str) else (config or {})
        except ValueError:
            cfg = {}
        if isinstance(cfg, dict) and cfg.get("math") == TF32:
            return max(tol, TF32_TOLERANCE)
    return tol


def dense_bytes(m: int, k: int, dtype: str) -> int:
    """Bytes of A's dense copy (M x K elements of the dtype) that the dense path holds on the GPU."""
    return int(m) * int(k) * DTYPE_BYTES[dtype]


def describe(family: str, config: dict, m: int, k: int, dtype: str, layout: str = "kn") -> str:
    """One line saying what a vendor config runs (and the dense copy's memory); '' for a templated family. layout nk:
    the vendor path reads x and writes y as they are and adds the bias in one more kernel (device.vendor)."""
    nk = ", x and y as they are (column-major descriptors), + a bias kernel" if layout == "nk" else ""
    if family == CUSPARSE:
        alg = config.get("alg")
        alg = "the fastest algorithm, timed at the first call" if alg == CUSPARSE_AUTO else alg
        return f"cuSPARSE SpMM ({alg}) on A as CSR{nk}"
    if family == DENSE:
        mb = dense_bytes(m, k, dtype) / 2**20
        nk = ", y = x A^T as nn.Linear's GEMM, + a bias kernel" if layout == "nk" else ""
        return (f"cuBLAS {str(config.get('math')).upper()} GEMM on a dense copy of A ({m}x{k} {dtype}: {mb:.1f} MiB "
                f"of GPU memory, made only for this plan){nk}")
    return ""


def split_families(text) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """`--families` as (the templated families to search, the vendor paths to time beside them): None for either means
    the defaults (the enabled templated families; every vendor path). Naming families without a vendor path leaves the
    vendor paths out; naming only vendor paths is refused (there would be nothing to search)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None, None
    names = [f.strip() for f in text.split(",")] if isinstance(text, str) else [str(f).strip() for f in text]
    names = [n for n in names if n]
    templated = tuple(dict.fromkeys(n for n in names if not is_vendor(n)))
    vendors = tuple(dict.fromkeys(n for n in names if is_vendor(n)))
    if not templated:
        raise UserError(f"--families {','.join(names)}: name at least one kernel family to search besides the vendor "
                        f"paths ({', '.join(VENDOR_FAMILIES)}), which are timed beside the search's winner")
    return templated, vendors


def _time_us(r) -> float:
    return r.time_us


def choose(results, margin: float = 0.0, key=_time_us):
    """(the chosen result, the best templated-family result) of measured candidates, each an object with .family and
    .time_us (None or inf: did not run or failed verification): the fastest of all by `key` (default: time_us; the
    tuner passes store.db's rank_us, a cold time where measured), and the fastest sparse kernel (None where none ran).
    Ties go to the earlier candidate, so a templated kernel listed first keeps a tie.
    margin: a templated kernel is chosen over the fastest vendor path only when faster by more than this fraction
    (noisy timings: the vendor path is what the user had, so a near tie goes to it)."""
    ok = [r for r in results if r.time_us is not None and r.time_us == r.time_us and r.time_us != float("inf")]
    chosen = min(ok, key=key) if ok else None
    sparse = [r for r in ok if not is_vendor(r.family)]
    vend = [r for r in ok if is_vendor(r.family)]
    if margin > 0 and chosen is not None and not is_vendor(chosen.family) and vend:
        best_vendor = min(vend, key=key)
        if key(chosen) * (1.0 + margin) >= key(best_vendor):
            chosen = best_vendor
    return chosen, (min(sparse, key=key) if sparse else None)
