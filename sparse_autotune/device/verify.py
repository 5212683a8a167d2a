"""Verification: poison the output, run, compare with a float64 reference by relative Frobenius error."""
from __future__ import annotations

import math

from ..core.problem import TOLERANCE, as_float
from ..errors import CandidateError


def reference(a64, b, layout: str = "kn", bias=None):
    """C = A @ B in float64 on the device; a64 is a cupyx float64 CSR matrix. layout "nk": b is x (N x K) and the
    reference is y = (A @ x^T)^T + bias (N x M; the bias, a length-M array of the dtype, where given)."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    if layout != "nk":
        return a64 @ as_float(b).astype(cp.float64)
    y = cp.ascontiguousarray((a64 @ cp.ascontiguousarray(as_float(b).astype(cp.float64).T)).T)
    if bias is not None:
        y += as_float(bias).astype(cp.float64)[None, :]
    return y


def rel_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; NaN/inf anywhere gives inf. An all-zero reference needs exact zeros."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    o = as_float(out).astype(cp.float64)
    if not bool(cp.isfinite(o).all()):
        return math.inf
    num = float(cp.linalg.norm(o - ref))
    den = float(cp.linalg.norm(ref))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def poison(arr) -> None:
    """Fill an output with NaN (bf16 outputs, stored as uint16 words, with the bf16 NaN 0x7FC0)."""
    from ..device.gpu import cupy  # noqa: PLC0415
    arr.fill(0x7FC0 if arr.dtype == cupy().uint16 else cupy().nan)


def check(run, c_out, ref, dtype: str) -> float:
    """Poison c_out with NaN, call run(), return the error; CandidateError if it is over the tolerance."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    poison(c_out)
    try:
        run()
        cp.cuda.get_current_stream().synchronize()
    except Exception as exc:  # noqa: BLE001
        raise CandidateError("launch", str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    err = rel_error(c_out, ref)
    if not err <= TOLERANCE[dtype]:
        what = "unwritten or non-finite output" if math.isinf(err) else f"relative error {err:.3g}"
        raise CandidateError("verify", f"{what} > tolerance {TOLERANCE[dtype]:g}")
    return err
