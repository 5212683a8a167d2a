"""sparse-autotune: autotuned SpMM kernels for pruned neural-network layers on NVIDIA GPUs (and SDDMM: `sddmm`)."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

# lookup and SpMM (and the rest of the runtime: the tuning database's SQLAlchemy, SciPy) are imported when first
# named, so that `import sparse_autotune` and the command line's argument checks start in a fraction of a second


def sddmm(mask, x, y, out=None, db=None, dtype=None):
    """out[p] = S.data[p] * dot(X[row(p)], Y[col(p)]) for the nonzeros p of the CSR mask S (M x N), X M x K, Y N x K:
    runtime.sddmm.sddmm (the best tuned config of the operator sddmm on this GPU, else the built-in default)."""
    from .runtime.sddmm import sddmm as run  # noqa: PLC0415 - imported at the first call (NVRTC templates, spaces)
    return run(mask, x, y, out, db=db, dtype=dtype)


def conv3x3(x, w_sparse, stride=1, bias=None, db=None, layout=None):
    """Y = conv2d(x, W, stride, padding 1) for a sparse 3x3 weight W (Cout x Cin x 3 x 3, or its compressed CSR):
    runtime.conv.conv3x3 (the best tuned conv3x3 config on this GPU, else cuDNN / the built-in default)."""
    from .runtime.conv import conv3x3 as run  # noqa: PLC0415 - imported at the first call
    return run(x, w_sparse, stride, bias=bias, db=db, layout=layout)


def __getattr__(name):
    if name == "lookup":
        from .runtime.lookup import lookup  # noqa: PLC0415
        return lookup
    if name == "SpMM":
        from .runtime.spmm import SpMM  # noqa: PLC0415
        return SpMM
    if name == "SparseConv2d":  # the sparse 3x3 convolution module (needs PyTorch), defined when first named
        from .runtime.conv import sparse_conv2d_class  # noqa: PLC0415
        return sparse_conv2d_class()
    if name == "SDDMM":  # the SDDMM operator class, imported when first named
        from .runtime.sddmm import SDDMM  # noqa: PLC0415
        return SDDMM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SDDMM", "SpMM", "UserError", "lookup", "sddmm", "__version__"]


def __dir__():
    return sorted({*globals(), "SDDMM", "SparseConv2d", "SpMM", "lookup"})  # the names __getattr__ gives too
