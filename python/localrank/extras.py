"""Which optional extras a command needs, and the one-line refusal when one is missing.

``pip install localrank`` installs the on-device library only. The aggregation server and the
ONNX export need extras (``rich`` in the ``cli`` extra only colours output: without it the
command prints plain text); a command that needs one says which to install
and exits 2, instead of ending in a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

__all__ = ["EXTRAS", "extra_for_module", "install_hint", "missing_extra"]

#: Each extra → the top-level modules it provides (pyproject.toml's optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "server": ("fastapi", "uvicorn", "prometheus_client", "psycopg"),
    "onnx": ("onnx", "onnxruntime"),
}

# psycopg is needed only for a PostgreSQL database: a command checks it when it opens one.
_CHECKED_UP_FRONT = {"psycopg"}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-installed module
        return False


def missing_extra(extras: Iterable[str]) -> str | None:
    """The first of ``extras`` whose modules are not all importable, or None."""
    for extra in extras:
        modules = [m for m in EXTRAS[extra] if m not in _CHECKED_UP_FRONT]
        if not all(_importable(m) for m in modules):
            return extra
    return None


def extra_for_module(module: str | None) -> str | None:
    """The extra that provides top-level module ``module`` (from a ModuleNotFoundError)."""
    top = (module or "").split(".")[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


def install_hint(command: str, extra: str) -> str:
    """The one line a command prints when its extra is missing."""
    return (
        f"localrank {command}: needs the '{extra}' extra; "
        f"install it with: pip install 'localrank[{extra}]'"
    )
