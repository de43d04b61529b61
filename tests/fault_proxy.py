"""A small HTTP/1.1 proxy on loopback that injects faults between the sync client and the real
server, one request at a time.

Each request to a path in ``targets`` takes the next fault from the schedule (``pass`` once it
runs out); other requests pass. Faults:

``drop``
    Read the request, then close the connection: nothing reaches the server.
``503``
    Answer ``503 Service Unavailable`` with ``Retry-After: 0`` without forwarding.
``lost_ack``
    Forward the request, wait for the server's complete response (so the server has committed),
    then close the client's connection without sending it: the server stored the batch, and the
    acknowledgement never arrives.
``pass``
    Forward the request and relay the response.

Every forwarded request uses a fresh upstream connection with ``Connection: close``, and the
client connection is closed after each exchange, so a request's fault never leaks into the next.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable

__all__ = ["FaultProxy"]

FAULTS = ("drop", "503", "lost_ack", "pass")


class FaultProxy:
    """Run with ``with FaultProxy(port, ["drop", "lost_ack"]) as proxy: proxy.url``."""

    def __init__(
        self,
        upstream_port: int,
        schedule: Iterable[str] = (),
        *,
        targets: tuple[str, ...] = ("/v1/reports",),
    ) -> None:
        self.upstream_port = upstream_port
        self.schedule: deque[str] = deque(schedule)
        for f in self.schedule:
            assert f in FAULTS, f
        self.targets = targets
        self.log: list[tuple[str, str, int | None]] = []  # (path, fault, upstream status)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def add(self, *faults: str) -> None:
        self.schedule.extend(faults)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = [line for line in lines[1:] if line]
        length = 0
        for h in headers:
            name, _, value = h.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b""
        target = any(path.startswith(t) for t in self.targets)
        fault = self.schedule.popleft() if target and self.schedule else "pass"
        try:
            if fault == "drop":
                self.log.append((f"{method} {path}", fault, None))
                return
            if fault == "503":
                self.log.append((f"{method} {path}", fault, None))
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 40\r\n"
                    b"Connection: close\r\n\r\n"
                    b'{"error":"unavailable","detail":"proxy"}'
                )
                await writer.drain()
                return
            kept = [
                h
                for h in headers
                if h.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")
            ]
            request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(request + body)
            await up_writer.drain()
            response = await up_reader.read()  # until the server closes: the whole response
            up_writer.close()
            status = int(response.split(b" ", 2)[1]) if response else None
            # Logged before the client can see the answer, so a test reading the log after
            # its request returns finds the entry.
            self.log.append((f"{method} {path}", fault, status))
            if fault == "lost_ack":
                return
            writer.write(response)
            await writer.drain()
        finally:
            writer.close()
