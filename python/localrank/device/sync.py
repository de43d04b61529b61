"""The device's sync client: fetch the signed bundle, flush the outbox.

>>> client = SyncClient(engine, "https://offers.example/")          # doctest: +SKIP
>>> client.sync()                                                  # doctest: +SKIP

- **Bundle.** ``GET /v1/bundle`` with ``If-None-Match`` set to the installed bundle's digest
  (the server's ETag is the SHA-256 of the signed bytes, which is the engine's
  ``bundle.digest``), so an unchanged bundle costs one 304. A new one is verified and loaded by
  :meth:`Engine.load_bundle <localrank.device.engine.Engine.load_bundle>`, which refuses bad
  signatures, truncation, expiry and rollback, and keeps the last good bundle.
- **Outbox.** ``take_batch`` → ``POST /v1/reports`` → ``acknowledge``. Until acknowledged the
  engine hands out the same batch with the same nonces, and the server answers a nonce it
  already holds as ``already_stored``, so a retry after a lost acknowledgement is stored
  once. A batch is acknowledged only when the server's answer accounts for every nonce in it.
- **Bounds.** Every public call (:meth:`~SyncClient.fetch_bundle`, :meth:`~SyncClient.flush`)
  has one total ``deadline``, retries and back-off included, on top of the per-read
  ``timeout``: a server that drip-feeds bytes cannot hold the device longer (a watchdog shuts
  the socket down at the deadline, also while headers are still arriving). Bodies are streamed
  and counted: a bundle larger than ``max_bundle_bytes``, than its ``Content-Length`` or than
  the size its own header announces is cut off there, never read whole into memory. A body
  with the wrong ``Content-Type`` or a ``Content-Encoding`` is refused.
- **Retries.** Connection failures, timeouts, 5xx and 429 are retried with exponential
  back-off (``backoff · 2^attempt``, capped, with full jitter so that many devices do not
  retry in step) and honour ``Retry-After``. A 4xx other than 429 is the server refusing the
  batch: retrying would not help, so :class:`SyncError` is raised and the batch stays queued.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from localrank.bundle.container import HEADER_SIZE, sealed_size
from localrank.device.engine import Engine
from localrank.errors import InputError, LocalrankError

__all__ = ["FetchResult", "FlushResult", "SyncClient", "SyncDeadlineError", "SyncError"]


class SyncError(LocalrankError):
    """The server could not be reached after the retries, or refused a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SyncDeadlineError(SyncError):
    """A call ran out of its total deadline; the connection was closed."""


@dataclass(frozen=True)
class FetchResult:
    """What a bundle fetch did: ``updated`` (a new bundle was loaded) or ``not_modified``."""

    status: str
    version: int


@dataclass(frozen=True)
class FlushResult:
    """What a flush did."""

    batches: int = 0
    stored: int = 0
    already_stored: int = 0
    attempts: int = 0


_RETRYABLE = {429, 500, 502, 503, 504}
#: The most bytes of an error answer kept for the message.
_ERROR_BODY_BYTES = 4096


class SyncClient:
    """Talks to one aggregation server for one engine.

    Args:
        engine: the device's engine.
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        client: an ``httpx.Client`` to use (default: a new one with ``timeout``).
        retries: how many times one request is retried before :class:`SyncError`.
        backoff: the first back-off in seconds; it doubles on every retry.
        max_backoff: the longest single wait.
        timeout: the per-read (and connect) timeout in seconds, when ``client`` is not given.
        deadline: the most seconds one call (:meth:`fetch_bundle`, :meth:`flush`) may take,
            retries and waits included (default ``6 · timeout``).
        max_bundle_bytes: the largest bundle accepted (default 64 MiB).
        max_answer_bytes: the largest answer to a batch or key chain accepted (default 1 MiB).
        max_batches: at most this many batches per :meth:`flush`.
        sleep: how to wait (tests pass a recorder).
        rng: randomness for the jitter.
    """

    def __init__(
        self,
        engine: Engine,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        deadline: float | None = None,
        max_bundle_bytes: int = 64 << 20,
        max_answer_bytes: int = 1 << 20,
        max_batches: int = 1000,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(engine, Engine):
            raise InputError(f"engine: expected an Engine, got {type(engine).__name__}")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url: expected an http(s):// URL, got {base_url!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries: expected an integer ≥ 0, got {retries!r}")
        limits = (("backoff", backoff), ("max_backoff", max_backoff), ("timeout", timeout))
        for name, value in limits:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name}: expected a finite number ≥ 0, got {value!r}")
        if deadline is None:
            deadline = 6 * timeout
        if not (
            isinstance(deadline, (int, float)) and math.isfinite(deadline) and deadline > 0
        ):
            raise InputError(f"deadline: expected a finite number of seconds > 0, got {deadline!r}")
        sizes = (("max_bundle_bytes", max_bundle_bytes), ("max_answer_bytes", max_answer_bytes))
        for name, size in sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < HEADER_SIZE:
                raise InputError(f"{name}: expected an integer ≥ {HEADER_SIZE}, got {size!r}")
        if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
            raise InputError(f"max_batches: expected an integer ≥ 1, got {max_batches!r}")
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self._own_client = client is None
        self.client = client or httpx.Client(timeout=timeout)
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.max_bundle_bytes = max_bundle_bytes
        self.max_answer_bytes = max_answer_bytes
        self._deadline_at = math.inf
        self._keys_etag: str | None = None
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_batches = max_batches
        self._sleep = sleep
        self._rng = rng or random.SystemRandom()
        self.attempts = 0

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP with retries ----------------------------------------------------------------------

    def _start_call(self) -> None:
        self._deadline_at = time.monotonic() + self.deadline

    def _remaining(self, what: str) -> float:
        left = self._deadline_at - time.monotonic()
        if left <= 0:
            raise SyncDeadlineError(f"{what}: deadline of {self.deadline:g} s exceeded")
        return left

    def _wait(self, attempt: int, retry_after: str | None, what: str) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        delay = self._rng.uniform(0, delay)  # full jitter
        if retry_after is not None and retry_after.strip().isdigit():
            delay = max(delay, min(self.max_backoff, float(retry_after)))
        # never sleep past the deadline: the next attempt would be refused anyway
        self._sleep(min(delay, self._remaining(what)))

    def _request(
        self,
        method: str,
        path: str,
        *,
        accept: str,
        max_bytes: int,
        **kw: Any,
    ) -> httpx.Response:
        what = f"{method} {path}"
        last = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            retry_after = None
            try:
                response = self._exchange(method, path, accept=accept, max_bytes=max_bytes, **kw)
            except httpx.TransportError as e:  # refused, reset, timed out, closed mid-response
                last = f"{type(e).__name__}: {e}"
                if isinstance(e, httpx.RemoteProtocolError):
                    last = f"truncated or malformed response: {e}"
            else:
                if response.status_code < 400 or response.status_code == 304:
                    return response
                if response.status_code not in _RETRYABLE:
                    raise SyncError(
                        f"{what}: refused with {response.status_code}: {response.text[:300]}",
                        status=response.status_code,
                    )
                last = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after")
            if attempt < self.retries:
                self._wait(attempt, retry_after, what)
        raise SyncError(f"{what}: gave up after {self.retries + 1} attempts ({last})")

    def _exchange(
        self, method: str, path: str, *, accept: str, max_bytes: int, **kw: Any
    ) -> httpx.Response:
        """One HTTP exchange, bounded by the call's deadline and by ``max_bytes``.

        The body is streamed and counted. A watchdog shuts the socket down when the deadline
        passes: a read blocked on a drip-feeding server (headers or body) then fails at once,
        rather than after the next byte, so the server sees the connection close.
        """
        what = f"{method} {path}"
        remaining = self._remaining(what)
        sockets: list[socket.socket] = []
        expired = threading.Event()
        lock = threading.Lock()

        def shut(sock: socket.socket) -> None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        def watch(sock: object) -> None:
            if not isinstance(sock, socket.socket):
                return
            with lock:
                sockets.append(sock)
                if expired.is_set():
                    shut(sock)

        def trace(event: str, info: dict[str, Any]) -> None:
            if event == "connection.connect_tcp.complete":
                stream = info.get("return_value")
                if stream is not None:
                    watch(stream.get_extra_info("socket"))

        def expire() -> None:
            with lock:
                expired.set()
                for sock in sockets:
                    shut(sock)

        headers = dict(kw.pop("headers", None) or {})
        # identity: a compressed body could expand far past what was counted on the wire
        headers.setdefault("Accept-Encoding", "identity")
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if self._own_client:
            timeout = httpx.Timeout(min(self.timeout, remaining))
        watchdog = threading.Timer(remaining, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            with self.client.stream(
                method,
                self.base_url + path,
                headers=headers,
                timeout=timeout,
                extensions={"trace": trace},
                **kw,
            ) as response:
                # a kept-alive connection made no connect event: watch it from here on
                stream = response.extensions.get("network_stream")
                if stream is not None:
                    watch(stream.get_extra_info("socket"))
                body = self._read_body(response, what, accept=accept, max_bytes=max_bytes)
        except httpx.TransportError:
            if expired.is_set():
                raise SyncDeadlineError(
                    f"{what}: deadline of {self.deadline:g} s exceeded; connection closed"
                ) from None
            raise
        finally:
            watchdog.cancel()
        if expired.is_set():
            raise SyncDeadlineError(f"{what}: deadline of {self.deadline:g} s exceeded")
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=body,
            request=response.request,
        )

    def _read_body(
        self, response: httpx.Response, what: str, *, accept: str, max_bytes: int
    ) -> bytes:
        status = response.status_code
        if status == 304:
            return b""
        ok = 200 <= status < 300
        if not ok:
            max_bytes = _ERROR_BODY_BYTES  # only for the message; the rest is not read
        else:
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise SyncError(f"{what}: refused a body with Content-Encoding {encoding!r}")
            ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != accept:
                raise SyncError(
                    f"{what}: wrong content type: expected {accept}, got {ctype or 'none'!r}",
                    status=status,
                )
        limit = max_bytes
        announced = response.headers.get("content-length")
        if ok and announced is not None:
            if not announced.strip().isdigit():
                raise SyncError(f"{what}: malformed Content-Length {announced!r}", status=status)
            if int(announced) > max_bytes:
                raise SyncError(
                    f"{what}: response too large: Content-Length {int(announced):,} B exceeds "
                    f"the limit of {max_bytes:,} B",
                    status=status,
                )
            limit = int(announced)
        body = bytearray()
        header_checked = accept != _BUNDLE_TYPE or not ok
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > limit:
                if not ok:
                    break
                raise SyncError(
                    f"{what}: response too large: more than {limit:,} B "
                    f"(limit {max_bytes:,} B); stopped reading",
                    status=status,
                )
            if not header_checked and len(body) >= HEADER_SIZE:
                header_checked = True
                size = sealed_size(bytes(body[:HEADER_SIZE]))
                if size is not None and size > max_bytes:
                    raise SyncError(
                        f"{what}: response too large: the bundle header announces {size:,} B, "
                        f"the limit is {max_bytes:,} B",
                        status=status,
                    )
                if size is not None:
                    limit = min(limit, size)
            self._remaining(what)  # between reads: a steady trickle also ends at the deadline
        return bytes(body[:limit])

    # -- the two jobs ----------------------------------------------------------------------------

    def fetch_bundle(self, *, now: float | None = None) -> FetchResult:
        """Fetch the bundle if it changed, then verify and load it.

        Raises:
            SyncError: the server could not be reached.
            BundleError: the bundle was refused (bad signature, expired, rollback, …); the
                last good bundle stays in use. A refused key chain is a
                :class:`~localrank.bundle.trust.KeyStatementError` (trust is unchanged).
        """
        self._start_call()
        self._fetch_keys()
        headers = {}
        with contextlib.suppress(LocalrankError):  # no bundle yet: fetch unconditionally
            headers["If-None-Match"] = f'"{self.engine.bundle.digest}"'
        response = self._request(
            "GET",
            "/v1/bundle",
            headers=headers,
            accept=_BUNDLE_TYPE,
            max_bytes=self.max_bundle_bytes,
        )
        if response.status_code == 304:
            return FetchResult("not_modified", self.engine.bundle.version)
        bundle = self.engine.load_bundle(response.content, now=now)
        return FetchResult("updated", bundle.version)

    def _fetch_keys(self) -> None:
        """Apply the server's key chain (``GET /v1/keys``) before the bundle, so a bundle
        signed by a newly introduced key verifies, and one by a retired key does not."""
        headers = {"If-None-Match": self._keys_etag} if self._keys_etag else {}
        try:
            response = self._request(
                "GET",
                "/v1/keys",
                headers=headers,
                accept="application/json",
                max_bytes=self.max_answer_bytes,
            )
        except SyncError as e:
            if e.status == 404:  # a server without key rotation
                return
            raise
        if response.status_code == 304:
            return
        try:
            doc = response.json()
            statements = doc["statements"]
        except (ValueError, KeyError, TypeError):
            raise SyncError("GET /v1/keys: the answer is not a key chain") from None
        self.engine.apply_key_statements(statements)
        self._keys_etag = response.headers.get("etag")

    def flush(self, *, now: float | None = None) -> FlushResult:
        """Send every due batch; each is acknowledged once the server holds all its reports.

        Raises:
            SyncError: a batch could not be delivered after the retries, or was refused. It
                stays in the outbox (same nonces) for the next flush.
        """
        batches = stored = already = 0
        start = self.attempts
        self._start_call()
        for _ in range(self.max_batches):
            batch = self.engine.take_batch(now=now)
            if batch is None or not batch.reports:
                break
            response = self._request(
                "POST",
                "/v1/reports",
                content=batch.body,
                headers={"Content-Type": "application/json"},
                accept="application/json",
                max_bytes=self.max_answer_bytes,
            )
            answer = _answer(response)
            sent = {r["nonce"] for r in batch.reports}
            held = {
                r.get("nonce")
                for r in answer.get("reports", [])
                if r.get("status") in ("stored", "already_stored")
            }
            if held != sent:
                raise SyncError("POST /v1/reports: the answer does not account for every report")
            self.engine.acknowledge(batch, destination=self.base_url, now=now)
            batches += 1
            stored += int(answer.get("stored", 0))
            already += int(answer.get("already_stored", 0))
        return FlushResult(batches, stored, already, self.attempts - start)

    def sync(self, *, now: float | None = None) -> tuple[FetchResult, FlushResult]:
        """Fetch the bundle, then flush the outbox."""
        return self.fetch_bundle(now=now), self.flush(now=now)


_BUNDLE_TYPE = "application/octet-stream"


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        raise SyncError("POST /v1/reports: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise SyncError("POST /v1/reports: the answer is not a JSON object")
    return doc
