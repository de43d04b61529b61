"""``localrank serve`` and ``localrank aggregate`` as a user runs them: a child process on
loopback, a replayed clock (``--now``), and a published bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from localrank.bundle import open_bundle
from localrank.shared.clock import epoch_of
from localrank.wire.reports import batch_body

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import (  # noqa: E402
    PUBLIC_KEY,
    REPO,
    T0,
    ServeProcess,
    base_bundle,
    demo_bundle,
    device_reports,
)

JSON = {"Content-Type": "application/json"}  # the server refuses any other body (415)

@pytest.mark.slow
def test_serve_replays_history_and_aggregate_publishes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    server = ServeProcess(db, now=T0, log=tmp_path / "serve.log").start()
    try:
        b = demo_bundle()
        reports = device_reports(
            np.arange(6), epoch=epoch_of(T0), offers=[b.catalog.ids[i] for i in range(6)]
        )
        r = httpx.post(
            server.url + "/v1/reports", content=batch_body(reports), headers=JSON, timeout=30
        )
        assert r.status_code == 200 and r.json()["stored"] == 6, r.text
        # Today's epoch (the wall clock) is far outside the replayed window.
        today = device_reports(np.arange(1), epoch=epoch_of(T0) + 400, offers=[b.catalog.ids[0]])
        r = httpx.post(
            server.url + "/v1/reports", content=batch_body(today), headers=JSON, timeout=30
        )
        assert r.status_code == 422 and r.json()["error"] == "epoch_window"
    finally:
        server.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "POST /v1/reports" in log
    # The only address in the log is the server's own listening socket, never a client's.
    assert all("127.0.0.1" not in line for line in log.splitlines() if "/v1/" in line)

    later = str(T0 + 3 * 86400)
    out = subprocess.run(
        [sys.executable, "-m", "localrank.cli", "aggregate", "--db", db, "--now", later,
         "--demo-key"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"folded epochs: [{epoch_of(T0)}]" in out.stdout
    assert "published bundle version 2" in out.stdout
    from localrank.server.storage import open_storage

    storage = open_storage(db)
    try:
        row = storage.latest_bundle()
        assert row is not None and row.version == 2
        assert storage.counts()["reports"] == 0
    finally:
        storage.close()
    bundle = open_bundle(row.data, PUBLIC_KEY, now=T0 + 3 * 86400, current_version=1)
    assert bundle.created == pytest.approx(T0 + 3 * 86400, abs=60)


def test_cli_refuses_a_bad_database_url(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "localrank.cli", "aggregate", "--db", "mysql://x/y", "--demo-key"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "url: expected sqlite:///path or postgresql://" in out.stderr


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localrank.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "aggregate"])
def test_serve_and_aggregate_refuse_to_start_without_a_key(tmp_path: Path, command: str) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    out = _cli(command, "--db", db)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("localrank: error: --key:"), out.stderr
    assert "--demo-key" in lines[0]
    assert not (tmp_path / "k.db").exists()  # refused before touching the database


def test_the_demo_key_warns_on_every_start(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'd.db'}"
    for _ in range(2):
        out = _cli("aggregate", "--db", db, "--demo-key", "--now", str(T0))
        assert out.returncode == 0, out.stderr
        assert "warning: signing bundles with the demo key" in out.stderr
        assert "anyone can sign" in out.stderr
    both = _cli("aggregate", "--db", db, "--demo-key", "--key", str(REPO / "models/demo-key.pem"))
    assert both.returncode == 2 and "--demo-key" in both.stderr


def test_aggregate_signs_with_the_given_key(tmp_path: Path) -> None:
    from localrank.bundle import load_public_key

    key, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    assert _cli("keygen", "--private", str(key), "--public", str(pub)).returncode == 0
    base = base_bundle(tmp_path / "base.bundle", signing_key=key)
    db = f"sqlite:///{tmp_path / 'own.db'}"
    out = _cli(
        "aggregate", "--db", db, "--key", str(key), "--base-bundle", str(base),
        "--now", str(T0), "--publish",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr
    from localrank.server.storage import open_storage

    storage = open_storage(db)
    try:
        row = storage.latest_bundle()
    finally:
        storage.close()
    assert row is not None and row.version == 2
    open_bundle(row.data, load_public_key(pub), now=T0)
