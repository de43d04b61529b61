"""Every Python block of the README runs, unmodified, as a user would paste it.

The blocks may read ``demo.bundle`` and ``server.pub.pem`` from the working directory, as the
README says; the fixture provides the committed demo pair under those names in an empty
directory, so the front door cannot rot without this test failing.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks() -> None:
    assert len(readme_blocks()) >= 2


@pytest.fixture
def demo_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(ROOT / "models" / "demo.bundle", tmp_path / "demo.bundle")
    shutil.copy(ROOT / "models" / "demo-key.pub.pem", tmp_path / "server.pub.pem")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block_runs(index: int, demo_files: Path, capsys: pytest.CaptureFixture[str]):
    code = readme_blocks()[index]
    namespace: dict[str, object] = {"__name__": "__readme__"}
    started = time.time()
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "engine" in namespace:  # the device block: it opened a real store and ranked
        assert (demo_files / "device.db").exists()
        printed = capsys.readouterr().out.splitlines()
        settings = namespace["engine"].settings  # type: ignore[attr-defined]
        # The wall clock decides: during the default quiet hours (22:00-07:00 device time) an
        # engine rightly recommends nothing.
        if settings.in_quiet_hours(started) or settings.in_quiet_hours(time.time()):
            assert printed == []
        else:
            assert len(printed) == 5, printed
            assert all(line.startswith("offer-") for line in printed)
    if "idx" in namespace:  # the kernel block: top-10 indices, best first
        import numpy as np

        scores = np.asarray(namespace["scores"])
        assert len(namespace["idx"]) == 10  # type: ignore[arg-type]
        assert np.all(np.diff(scores) <= 0)
