"""A real uvicorn server in a background thread on a loopback port: for the demo, the
evaluation's end-to-end checks and the tests."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from localrank.server.transport import HttpLimits, uvicorn_options

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """``with BackgroundServer(app) as s: httpx.get(s.url + "/healthz")``."""

    def __init__(
        self, app: Any, *, startup_timeout: float = 20.0, limits: HttpLimits | None = None
    ) -> None:
        self.app = app
        self._timeout = startup_timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))  # loopback only, a free port
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # The same connection limits as `localrank serve` (defaults unless ``limits``).
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            **uvicorn_options(limits or HttpLimits()),
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the embedded server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=20)
        self._sock.close()
