"""A command whose extra is missing says which extra to install, in one line, and exits 2.

Each case runs the real ``localrank`` command in a subprocess in which the extra's modules
cannot be imported (a meta-path finder refuses them, as an install without the extra would).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUN_WITHOUT = """
import sys

BLOCKED = set(sys.argv[1].split(","))


class WithoutExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, WithoutExtra())
from localrank.cli import main

sys.exit(main(sys.argv[2:]))
"""

CASES = {
    "serve": ("uvicorn", ["serve", "--db", "sqlite:///x.db", "--key", "K"], "server"),
    "aggregate": ("fastapi", ["aggregate", "--db", "sqlite:///x.db", "--key", "K"], "server"),
    "serve-postgres": (
        "psycopg",
        ["serve", "--db", "postgresql://postgres@127.0.0.1:1/none", "--key", "K"],
        "server",
    ),
    "export-onnx": ("onnx", ["export-onnx", "--bundle", "B", "-o", "m.onnx"], "onnx"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_missing_extra_is_named_in_one_line(case: str, tmp_path: Path) -> None:
    blocked, argv, extra = CASES[case]
    files = {"K": ROOT / "models" / "demo-key.pem", "B": ROOT / "models" / "demo.bundle"}
    argv = [str(files[a]) if a in files else a for a in argv]
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, blocked, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "pip install" in line]
    assert lines == [line for line in done.stderr.splitlines() if line.startswith("localrank ")]
    assert len(lines) == 1, done.stderr
    assert f"pip install 'localrank[{extra}]'" in lines[0]
