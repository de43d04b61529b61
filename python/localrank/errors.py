"""localrank's exceptions: one hierarchy under :class:`LocalrankError`.

The compiled core maps its own errors onto these classes, in one place
(``rust/localrank-py/src/errors.rs``), so Python and Rust code raise the same types.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "BundleExpiredError",
    "BundleFormatError",
    "BundleFromFutureError",
    "BundleRollbackError",
    "BundleSignatureError",
    "BundleTruncatedError",
    "BundleUnsignedError",
    "DataUnavailableError",
    "InputError",
    "KernelError",
    "LocalrankError",
    "StoreError",
]


class LocalrankError(Exception):
    """Base class of every error localrank raises on purpose."""


class InputError(LocalrankError, ValueError):
    """An argument was refused. The message starts with the argument's name and says what was
    expected and what was received."""


class KernelError(LocalrankError, RuntimeError):
    """A kernel path was requested that this machine cannot run."""


class BundleError(LocalrankError):
    """A bundle was refused. The last good bundle stays in use."""


class BundleFormatError(BundleError):
    """Not a localrank bundle, or a format version this code does not know."""


class BundleTruncatedError(BundleError):
    """The bundle file ends early."""


class BundleUnsignedError(BundleError):
    """The bundle carries no signature."""


class BundleSignatureError(BundleError):
    """The signature does not verify against the configured public key."""


class BundleExpiredError(BundleError):
    """The bundle's expiry time has passed."""


class BundleFromFutureError(BundleError):
    """The bundle's creation time lies further in the device's future than clocks drift."""


class BundleRollbackError(BundleError):
    """The bundle is older than the one in use."""


class StoreError(LocalrankError):
    """The device store cannot be used: corrupt, written by a newer version, or locked."""


class DataUnavailableError(LocalrankError, RuntimeError):
    """A data set could not be obtained intact: it is not cached, fetching it failed, or what was
    fetched or found does not match its pinned checksums. The message says what was tried and
    how to provide the files by hand."""
