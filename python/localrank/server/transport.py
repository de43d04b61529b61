"""How long a client may hold a connection, and how many it may hold: the uvicorn side of the
server's limits.

uvicorn bounds only the idle time *after* an answer (``timeout_keep_alive``), and any byte
resets even that. A client that opens a connection and sends its request head (or, after an
answer, anything at all) one byte every few seconds holds that connection, and its file
descriptor, for ever; a thousand such clients exhaust the usual 1,024 descriptors. So:

- ``head_timeout``: from a connection's opening, or from its previous answer, the client has
  this long to deliver a complete request head; then the connection is closed (with a JSON
  408 when part of a head had arrived). This protocol enforces it.
- ``body_timeout``: a request body must arrive whole within this long of its head, else a
  JSON 408 and the connection is closed (enforced by the app, ``server/app.py``, which reads
  the body under a deadline).
- ``max_connections``: a connection opened while this many are open gets a JSON 503 with
  ``Retry-After`` and is closed at once, so slow clients cannot crowd out everyone's
  descriptors. (uvicorn's own ``limit_concurrency`` answers in plain text and only once a
  request head is complete, which is exactly what a slow client never sends.)
- ``max_head_bytes``: the largest request head (h11's incomplete-event limit); a larger one
  is answered with a JSON 400.
- ``keep_alive``: idle seconds between requests (uvicorn's ``timeout_keep_alive``).

Each worker process applies the limits to its own connections.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from localrank.errors import InputError

__all__ = ["HttpLimits", "LimitedH11Protocol", "uvicorn_options"]

LOG = logging.getLogger("localrank.server")


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection time and size limits (see the module docstring)."""

    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 5.0
    max_connections: int = 512
    max_head_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        for name in ("head_timeout", "body_timeout", "keep_alive"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"{name}: expected seconds > 0, got {value!r}")
        for name, least in (("max_connections", 1), ("max_head_bytes", 1024)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise InputError(f"{name}: expected an integer ≥ {least}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _raw_answer(status: int, reason: str, code: str, detail: str, extra: str = "") -> bytes:
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline, a connection cap and JSON answers
    for the refusals uvicorn makes itself."""

    def __init__(self, *args: Any, limits: HttpLimits, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.limits = limits
        self.retry_after = retry_after
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            LOG.warning(
                "refused a connection: %d open, the limit is %d",
                len(self.connections) - 1,
                self.limits.max_connections,
            )
            transport.write(
                _raw_answer(
                    503,
                    "Service Unavailable",
                    "unavailable",
                    "too many open connections; retry later",
                    f"retry-after: {self.retry_after}\r\n",
                )
            )
            transport.close()
            return
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own answer to an unparseable request or an oversized head is plain text.
        self._cancel_head_deadline()
        self.transport.write(_raw_answer(400, "Bad Request", "bad_request", msg))
        self.transport.close()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(
                self.limits.head_timeout, self._head_overdue
            )

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_overdue(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its body has a deadline of its own
        partial = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if partial:
            LOG.info(
                "dropped a connection: no complete request head within %gs",
                self.limits.head_timeout,
            )
            self.transport.write(
                _raw_answer(
                    408,
                    "Request Timeout",
                    "timeout",
                    f"request head: not complete within {self.limits.head_timeout:g}s",
                )
            )
        self.transport.close()


def uvicorn_options(limits: HttpLimits, *, retry_after: int = 5) -> dict[str, Any]:
    """The ``uvicorn.run``/``uvicorn.Config`` keywords that apply ``limits``."""
    return {
        # A partial of a module-level class pickles by reference, so worker processes get it.
        "http": functools.partial(LimitedH11Protocol, limits=limits, retry_after=retry_after),
        "timeout_keep_alive": limits.keep_alive,
        "h11_max_incomplete_event_size": limits.max_head_bytes,
    }
