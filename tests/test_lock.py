"""The installed environment is the locked one: every package that ``make`` installed has the
exact version ``uv.lock`` pins, and every dependency the package declares is installed.

``make`` installs from the lock (``uv sync --frozen``) and then builds the package with
``maturin develop``, which must add or upgrade nothing; this test is what notices if it did.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "uv.lock"
# Not in the lock by design: the installer's own tools and the package itself.
UNLOCKED = {"pip", "setuptools", "uv", "localrank"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, set[str]]:
    lock = tomllib.loads(LOCK.read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for package in lock["package"]:
        if "version" in package:
            out.setdefault(canonical(package["name"]), set()).add(package["version"])
    return out


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_every_installed_package_has_its_locked_version() -> None:
    locked, present = locked_versions(), installed()
    unlocked = sorted(set(present) - set(locked) - UNLOCKED)
    assert not unlocked, f"installed but not in uv.lock (run `make lock`?): {unlocked}"
    wrong = {
        n: (v, sorted(locked[n])) for n, v in present.items() if n in locked and v not in locked[n]
    }
    assert not wrong, f"installed version differs from uv.lock: {wrong}"


def test_every_declared_dependency_is_installed_and_locked() -> None:
    locked, present = locked_versions(), installed()
    requirements = [Requirement(r) for r in metadata.requires("localrank") or []]
    missing = []
    for req in requirements:
        # make installs the base dependencies and the server and dev extras.
        wanted = req.marker is None or any(
            req.marker.evaluate({"extra": e}) for e in ("", "server", "dev")
        )
        if not wanted:
            continue
        name = canonical(req.name)
        if name == "localrank":
            continue
        assert name in locked, f"{req} is declared but not in uv.lock"
        if name not in present:
            missing.append(str(req))
        else:
            assert req.specifier.contains(present[name], prereleases=True), (req, present[name])
    assert not missing, f"declared but not installed: {missing}"
    assert sys.version_info >= (3, 10)


def test_the_lock_matches_pyproject() -> None:
    """uv.lock records the requirements it was resolved from: a pyproject.toml edited without
    `make lock` shows up here (and `uv sync --frozen` would install a stale set)."""
    lock = tomllib.loads(LOCK.read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (me,) = [p for p in lock["package"] if p["name"] == "localrank"]
    locked_reqs = {canonical(r["name"]) for r in me["metadata"]["requires-dist"]}
    declared = {canonical(Requirement(r).name) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {canonical(Requirement(r).name) for r in extra}
    assert locked_reqs == declared
