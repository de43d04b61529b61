"""localrank's exceptions: one hierarchy under :class:`LocalrankError`.

The compiled core maps its own errors onto these classes, in one place
(``rust/localrank-py/src/errors.rs``), so Python and Rust code raise the same types.
"""

from __future__ import annotations

__all__ = ["DataUnavailableError", "InputError", "KernelError", "LocalrankError"]


class LocalrankError(Exception):
    """Base class of every error localrank raises on purpose."""


class InputError(LocalrankError, ValueError):
    """An argument was refused. The message starts with the argument's name and says what was
    expected and what was received."""


class KernelError(LocalrankError, RuntimeError):
    """A kernel path was requested that this machine cannot run."""


class DataUnavailableError(LocalrankError, RuntimeError):
    """A data set could not be obtained intact: it is not cached, fetching it failed, or what was
    fetched or found does not match its pinned checksums. The message says what was tried and
    how to provide the files by hand."""
