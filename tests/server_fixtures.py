"""Fixtures for the server and sync tests: a real uvicorn server on loopback (in a thread, or
as a ``localrank serve`` process), a database URL for each backend, and synthetic devices'
reports made with the real LDP code.

``db_url`` is parametrised over ``sqlite`` and ``postgresql``; the PostgreSQL case comes from
the shared ``pg_schema_url`` fixture (tests/conftest.py), so it fails rather than skips under
``CI=true``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from localrank.bundle import open_bundle
from localrank.privacy import oracles
from localrank.server.app import ServerState, create_app
from localrank.server.background import BackgroundServer
from localrank.server.config import ServerConfig
from localrank.server.storage import Storage, open_storage
from localrank.shared.clock import FixedClock, epoch_of
from localrank.wire.reports import census, engagement

REPO = Path(__file__).resolve().parent.parent
KEY = REPO / "models" / "demo-key.pem"
PUBLIC_KEY = REPO / "models" / "demo-key.pub.pem"
BASE_BUNDLE = REPO / "models" / "demo.bundle"
T0 = 1_790_000_000.0  # 2026-09-21, as in report_fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer(BackgroundServer):
    """A real uvicorn server in a thread, on a loopback port of its own."""

    @property
    def state(self) -> ServerState:
        state: ServerState = self.app.state.localrank
        return state


def server_config(db: str, clock: FixedClock, **kw: Any) -> ServerConfig:
    kw.setdefault("aggregate_every", None)
    kw.setdefault("base_bundle", BASE_BUNDLE)
    kw.setdefault("key", KEY)
    return ServerConfig(db=db, clock=clock, **kw)


def base_bundle(path: Path, *, signing_key: Path = KEY, **config: Any) -> Path:
    """The demo catalog under config overrides, signed with ``signing_key`` (default the demo
    key), written to ``path``."""
    from dataclasses import replace

    from tools.demo_catalog import DEMO_CREATED, DEMO_EXPIRES, DEMO_TAXONOMY, demo_offers
    from tools.demo_catalog import demo_config as demo_cfg

    from localrank.bundle import build_bundle
    from localrank.shared.catalog import Catalog

    cfg = replace(demo_cfg(), **config)
    catalog = Catalog.from_offers(demo_offers(), DEMO_TAXONOMY, cfg.contexts, d=cfg.d)
    path.write_bytes(
        build_bundle(
            catalog=catalog, taxonomy=DEMO_TAXONOMY, config=cfg, version=1,
            created=DEMO_CREATED, expires=DEMO_EXPIRES, signing_key=signing_key.read_bytes(),
        )
    )  # fmt: skip
    return path


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def live(db_url: str, clock: FixedClock) -> Iterator[LiveServer]:
    """A live server on ``db_url`` with the demo bundle, its clock at ``T0``."""
    with LiveServer(create_app(server_config(db_url, clock))) as server:
        yield server


def storage_for(db_url: str) -> Storage:
    return open_storage(db_url)


class ServeProcess:
    """``localrank serve`` as a child process (for SIGKILL and worker tests)."""

    def __init__(
        self,
        db: str,
        *,
        workers: int = 1,
        now: float | None = None,
        log: Path,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "localrank.cli", "serve", "--db", db,
            "--key", str(KEY), "--base-bundle", str(BASE_BUNDLE),
            "--port", str(self.port), "--workers", str(workers), "--aggregate-every", "0",
        ]  # fmt: skip
        if now is not None:
            self.args += ["--now", repr(now)]
        self.args += list(extra_args)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServeProcess:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("serve did not become healthy")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no shutdown, no flushing
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def demo_bundle() -> Any:
    return open_bundle(BASE_BUNDLE.read_bytes(), PUBLIC_KEY, now=T0)


def device_reports(
    finest: np.ndarray,
    *,
    epoch: int,
    offers: list[str] | None = None,
    events: list[str] | None = None,
    bundle: Any = None,
) -> list[dict[str, Any]]:
    """One report per synthetic device, randomised with the real chained oracle of the demo
    bundle: a census of ``finest[i]``, or (with ``offers``) an engagement about ``offers[i]``
    from active segment ``finest[i]``."""
    b = bundle or demo_bundle()
    c = b.config
    d = b.segments.d_seg
    r = oracles.Randomizer.for_domain(d, c.epsilon, c.epsilon_perm)
    wire = r.instantaneous(r.permanent(finest))
    out = []
    for i in range(len(finest)):
        ou = r.oracle is oracles.Oracle.OUE
        value: int | str = oracles.encode_bits(wire[i]) if ou else int(wire[i])
        if offers is None:
            out.append(
                census(
                    epoch=epoch, oracle=r.oracle.value, epsilon=c.epsilon,
                    epsilon_perm=c.epsilon_perm, value=value,
                )
            )  # fmt: skip
        else:
            out.append(
                engagement(
                    epoch=epoch, mode="ldp", oracle=r.oracle.value, epsilon=c.epsilon,
                    epsilon_perm=c.epsilon_perm, value=value, offer=offers[i],
                    event=(events or ["click"] * len(finest))[i],
                )
            )  # fmt: skip
    return out


def post_all(url: str, reports: list[dict[str, Any]], size: int = 256) -> int:
    """POST reports in batches; returns how many the server newly stored."""
    from localrank.wire.reports import batch_body

    stored = 0
    with httpx.Client(timeout=30) as client:
        for i in range(0, len(reports), size):
            r = client.post(
                url + "/v1/reports",
                content=batch_body(reports[i : i + size]),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 200, r.text
            stored += r.json()["stored"]
    return stored


def current_epoch(clock: FixedClock) -> int:
    return epoch_of(clock.now())
