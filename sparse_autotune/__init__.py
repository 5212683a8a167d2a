"""sparse-autotune: autotuned SpMM kernels for pruned neural-network layers on NVIDIA GPUs."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .runtime.lookup import lookup  # noqa: E402
from .runtime.spmm import SpMM  # noqa: E402

__all__ = ["SpMM", "UserError", "lookup", "__version__"]
