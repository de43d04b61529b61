"""The package's layout keeps the privacy boundary visible (docs/architecture.md).

The import contracts themselves are pyproject.toml's ``[tool.importlinter]``, checked by
``lint-imports`` in ``make lint``; these tests check what the contracts cannot see: what a
process actually loads, what a plain install pulls in, and where each module lives.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "localrank"

#: Each layer of the package, and the top-level modules that belong to none of them.
LAYERS = {"device", "server", "wire", "privacy", "shared", "bundle"}
TOP_LEVEL = {"__init__.py", "_core.pyi", "errors.py", "cli.py", "extras.py"}


def _modules(directory: Path) -> list[str]:
    return sorted(
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in directory.rglob("*.py")
    )


@pytest.mark.parametrize("side,other", [("server", "device"), ("device", "server")])
def test_importing_one_side_loads_nothing_of_the_other(side: str, other: str) -> None:
    """Every module of the server (or the device) imported in a fresh process leaves the other
    side's modules out of ``sys.modules``: the server process never holds device code."""
    modules = _modules(PACKAGE / side)
    assert len(modules) > 5
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.startswith('localrank.{other}')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_every_module_lives_in_a_layer() -> None:
    """From the tree a reader tells the side of every file: nothing new at the top level."""
    top = {p.name for p in PACKAGE.iterdir() if p.suffix in (".py", ".pyi")}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert top == TOP_LEVEL
    assert packages == LAYERS


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_needs_neither_rich_nor_the_tools() -> None:
    """The installed command prints plain text: no module of the package imports rich (the
    ``cli`` extra), and none imports the source tree's tools or benches."""
    offenders = {
        str(p.relative_to(ROOT)): sorted(names & {"rich", "tools", "benches"})
        for p in PACKAGE.rglob("*.py")
        if (names := _imported_top_levels(p)) & {"rich", "tools", "benches"}
    }
    assert offenders == {}


def test_a_plain_install_pulls_in_no_optional_heavyweight() -> None:
    """``pip install localrank`` (no extras), resolved through uv.lock, installs neither scipy,
    implicit, matplotlib, onnx, onnxruntime nor rich: every version of every package reachable
    from the base dependencies is followed, whatever its marker."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    deps: dict[str, set[str]] = {}
    for package in lock["package"]:
        deps.setdefault(package["name"], set()).update(
            d["name"] for d in package.get("dependencies", [])
        )
    reached: set[str] = set()
    todo = list(deps["localrank"])
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(deps.get(name, ()))
    assert "numpy" in reached and "cryptography" in reached
    heavy = {"scipy", "implicit", "matplotlib", "onnx", "onnxruntime", "rich", "fastapi"}
    assert reached & heavy == set()


def test_the_installed_command_has_no_development_jobs() -> None:
    """``demo``, ``models`` and ``evaluate`` run from the source tree (``make``), not from the
    installed command."""
    from localrank.cli import build_parser

    parser = build_parser()
    for job in ("demo", "models", "evaluate"):
        with pytest.raises(SystemExit):
            parser.parse_args([job])
    assert parser.parse_args(["kernels"]).command == "kernels"


#: Each device table and the one module whose SQL may touch it (docs/architecture.md).
TABLE_OWNERS = {
    "events": "device/events.py",
    "event_categories": "device/events.py",
    "settings": "device/store.py",
    "attributes": "device/store.py",
    "bundle": "device/store.py",
    "snoozes": "device/store.py",
    "ledger": "device/reports/accountant.py",
    "memos": "device/reports/accountant.py",
    "reported_offers": "device/reports/accountant.py",
    "outbox": "device/reports/outbox.py",
    "pending": "device/reports/outbox.py",
}


def test_every_device_table_has_one_owner() -> None:
    """SQL naming a device table (after FROM, JOIN, INTO, UPDATE or TABLE) appears only in that
    table's owner; the store's migrations (which create every table) are the one exception."""
    import re

    sql = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE|EXISTS)\s+([a-z_]+)")
    found: dict[str, set[str]] = {}
    for path in (PACKAGE / "device").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name == "store.py":
            text = text[text.index("SCHEMA_VERSION = ") :]  # skip the migrations
        for table in sql.findall(text):
            if table in TABLE_OWNERS:
                found.setdefault(table, set()).add(str(path.relative_to(PACKAGE)))
    assert found == {t: {owner} for t, owner in TABLE_OWNERS.items()}


def test_every_error_class_is_raised_somewhere() -> None:
    """No dead error type: each exception of localrank.errors is raised (or is the base of one
    that is) by the package, the Rust bindings (KernelError) or the tools (the MovieLens
    loader's DataUnavailableError). The accountant does not raise: it refuses with a reason
    (``Engine.last_report_stops``)."""
    import inspect

    import localrank.errors as errors

    files = [p for p in PACKAGE.rglob("*.py") if p.name != "errors.py"]
    files += [*(ROOT / "tools").rglob("*.py"), *(ROOT / "rust" / "localrank-py").rglob("*.rs")]
    source = "\n".join(p.read_text(encoding="utf-8") for p in files)
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, Exception) and c.__module__ == errors.__name__
    ]
    # Python raises ``Name(...)``; the bindings look the class up by its quoted name
    raised = {c for c in classes if f"{c.__name__}(" in source or f'"{c.__name__}"' in source}
    bases = {b for c in raised for b in c.__mro__}
    assert [c.__name__ for c in classes if c not in raised and c not in bases] == []
