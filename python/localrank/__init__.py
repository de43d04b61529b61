"""localrank: on-device offer ranking that never gets too personal.

The scoring kernel lives in Rust (:mod:`localrank._core`); this package is the Python API
around it. The device API (:class:`Engine`, :class:`Recommendation`, :class:`SyncClient`) and
:class:`Bundle` load on first use, so a process that only runs the aggregation server never
imports the device's code by importing this package.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from localrank._core import (
    available_kernels,
    default_kernel,
    quantize_int8,
    score_topk,
    score_topk_int8,
)
from localrank.errors import (
    BundleError,
    BundleExpiredError,
    BundleFormatError,
    BundleRollbackError,
    BundleSignatureError,
    BundleTruncatedError,
    BundleUnsignedError,
    DataUnavailableError,
    InputError,
    KernelError,
    LocalrankError,
    StoreError,
)

if TYPE_CHECKING:
    from localrank.bundle import Bundle
    from localrank.device.engine import Engine, Recommendation
    from localrank.device.sync import SyncClient

try:
    __version__ = version("localrank")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

# Public name → the module that defines it, imported on first attribute access (PEP 562).
_LAZY = {
    "Bundle": "localrank.bundle",
    "Engine": "localrank.device.engine",
    "Recommendation": "localrank.device.engine",
    "SyncClient": "localrank.device.sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'localrank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Bundle",
    "BundleError",
    "BundleExpiredError",
    "BundleFormatError",
    "BundleRollbackError",
    "BundleSignatureError",
    "BundleTruncatedError",
    "BundleUnsignedError",
    "DataUnavailableError",
    "Engine",
    "InputError",
    "KernelError",
    "LocalrankError",
    "Recommendation",
    "StoreError",
    "SyncClient",
    "__version__",
    "available_kernels",
    "default_kernel",
    "quantize_int8",
    "score_topk",
    "score_topk_int8",
]
