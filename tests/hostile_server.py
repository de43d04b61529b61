"""A misbehaving HTTP server on loopback for the sync client's bounds: it reads a request,
then answers the way one ``behaviour`` says, and records for every connection how many bytes
it got out and whether the client closed the connection before it had finished.
``GET /v1/keys`` is answered 404 (a server without key rotation) and not recorded.

``drip_body``
    200, ``Content-Length`` 400, then the body one byte every 0.1 s (40 s in all).
``drip_headers``
    The status line and headers one byte every 0.1 s.
``oversize``
    200 announcing 300 MB in ``Content-Length``, then sends until the client hangs up.
``oversize_unannounced``
    200 without ``Content-Length`` (closes to end the body), sends garbage until the client
    hangs up.
``oversize_bundle_header``
    As ``oversize_unannounced``, but the body starts with a bundle header announcing 300 MB.
``truncated``
    200, ``Content-Length`` 1000, 500 bytes, close.
``wrong_type``
    200 with ``Content-Type: text/html`` and a small page.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Connection", "HostileServer"]

BIG = 300 * 1000 * 1000
_CHUNK = b"\0" * 65536


@dataclass
class Connection:
    sent: int = 0
    finished: bool = False  # the server sent everything it meant to
    closed_early: bool = False  # the client closed the connection first
    keys: bool = False  # a GET /v1/keys, answered 404 (no key rotation here)
    done: threading.Event = field(default_factory=threading.Event)


class HostileServer:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connections: list[Connection] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = Connection()
                outer.connections.append(conn)
                try:
                    outer._serve(self.request, conn)
                    conn.finished = True
                except OSError:
                    conn.closed_early = True
                finally:
                    conn.done.set()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def finished_connections(self, timeout: float = 60.0) -> list[Connection]:
        """Every connection, once its handler has returned (bounded: the slowest behaviour
        ends by itself after 40 s)."""
        for conn in self.connections:
            conn.done.wait(timeout)
        return [c for c in self.connections if not c.keys]

    def _serve(self, sock: socket.socket, conn: Connection) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            data = sock.recv(4096)
            if not data:
                return
            request += data
        if request.startswith(b"GET /v1/keys"):
            conn.keys = True
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return

        def send(data: bytes) -> None:
            sock.sendall(data)
            conn.sent += len(data)

        def drip(data: bytes) -> None:
            for i in range(len(data)):
                send(data[i : i + 1])
                time.sleep(0.1)

        octets = "Content-Type: application/octet-stream\r\n"
        b = self.behaviour
        if b == "drip_body":
            send(f"HTTP/1.1 200 OK\r\n{octets}Content-Length: 400\r\n\r\n".encode())
            drip(b"x" * 400)
        elif b == "drip_headers":
            drip(f"HTTP/1.1 200 OK\r\n{octets}X-Padding: {'p' * 400}\r\n".encode())
        elif b == "oversize":
            send(f"HTTP/1.1 200 OK\r\n{octets}Content-Length: {BIG}\r\n\r\n".encode())
            while conn.sent < BIG:
                send(_CHUNK)
        elif b in ("oversize_unannounced", "oversize_bundle_header"):
            send(f"HTTP/1.1 200 OK\r\n{octets}Connection: close\r\n\r\n".encode())
            if b == "oversize_bundle_header":
                send(struct.pack("<8sHHQ", b"LRBUNDLE", 1, 0, BIG))
            while conn.sent < BIG:
                send(_CHUNK)
        elif b == "truncated":
            send(f"HTTP/1.1 200 OK\r\n{octets}Content-Length: 1000\r\n\r\n".encode())
            send(b"x" * 500)
        elif b == "wrong_type":
            page = b"<html>hello from a captive portal</html>"
            send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                + f"Content-Length: {len(page)}\r\n\r\n".encode()
                + page
            )
        else:
            raise AssertionError(b)
