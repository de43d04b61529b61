"""localrank: on-device offer ranking that never gets too personal.

The scoring kernel lives in Rust (:mod:`localrank._core`); this package is the Python API
around it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from localrank._core import (
    available_kernels,
    default_kernel,
    quantize_int8,
    score_topk,
    score_topk_int8,
)
from localrank.errors import InputError, KernelError, LocalrankError

try:
    __version__ = version("localrank")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "InputError",
    "KernelError",
    "LocalrankError",
    "__version__",
    "available_kernels",
    "default_kernel",
    "quantize_int8",
    "score_topk",
    "score_topk_int8",
]
