"""A small version of the load test (benches/server_load.py; the long runs are `make bench`):
a second process sends batches to ``localrank serve`` for a few seconds while the server's
whole process group is SIGKILLed halfway and restarted. Afterwards every acknowledged report is
stored, and the server holds exactly the acknowledged reports: on SQLite with one worker and on
PostgreSQL with two.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "server_load.py"


def _bench() -> ModuleType:
    # The sender processes (spawned) import the module by name; spawn hands them sys.path.
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    return importlib.import_module("server_load")


@pytest.mark.slow
@pytest.mark.parametrize("db,workers", [("sqlite", 1), ("postgresql", 2)])
def test_load_with_sigkill_loses_nothing(
    db: str, workers: int, request: pytest.FixtureRequest
) -> None:
    pg_url = request.getfixturevalue("postgres_url") if db == "postgresql" else None
    result = _bench().run(
        db,
        workers=workers,
        seconds=4.0,
        senders=1,
        concurrency=4,
        batch=32,
        kill=True,
        pg_url=pg_url,
    )
    assert result["kills"] == 1
    assert result["acknowledged"] > 1000, result
    assert result["acknowledged_missing"] == 0, result
    assert result["stored_unacknowledged"] == 0, result
    assert result["stored"] == result["stored_rows"] == result["acknowledged"], result
    assert result["ok"], result
