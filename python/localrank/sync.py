"""The device's sync client: fetch the signed bundle, flush the outbox.

>>> client = SyncClient(engine, "https://offers.example/")          # doctest: +SKIP
>>> client.sync()                                                  # doctest: +SKIP

- **Bundle.** ``GET /v1/bundle`` with ``If-None-Match`` set to the installed bundle's digest
  (the server's ETag is the SHA-256 of the signed bytes, which is the engine's
  ``bundle.digest``), so an unchanged bundle costs one 304. A new one is verified and loaded by
  :meth:`Engine.load_bundle <localrank.engine.Engine.load_bundle>`, which refuses bad
  signatures, truncation, expiry and rollback, and keeps the last good bundle.
- **Outbox.** ``take_batch`` → ``POST /v1/reports`` → ``acknowledge``. Until acknowledged the
  engine hands out the same batch with the same nonces, and the server answers a nonce it
  already holds as ``already_stored``, so a retry after a lost acknowledgement is stored
  once. A batch is acknowledged only when the server's answer accounts for every nonce in it.
- **Retries.** Connection failures, timeouts, 5xx and 429 are retried with exponential
  back-off (``backoff · 2^attempt``, capped, with full jitter so that many devices do not
  retry in step) and honour ``Retry-After``. A 4xx other than 429 is the server refusing the
  batch: retrying would not help, so :class:`SyncError` is raised and the batch stays queued.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from localrank.engine import Engine
from localrank.errors import InputError, LocalrankError

__all__ = ["FetchResult", "FlushResult", "SyncClient", "SyncError"]


class SyncError(LocalrankError):
    """The server could not be reached after the retries, or refused a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


class SyncClient:
    """Talks to one aggregation server for one engine.

    Args:
        engine: the device's engine.
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        client: an ``httpx.Client`` to use (default: a new one with ``timeout``).
        retries: how many times one request is retried before :class:`SyncError`.
        backoff: the first back-off in seconds; it doubles on every retry.
        max_backoff: the longest single wait.
        timeout: the request timeout in seconds, when ``client`` is not given.
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
        if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
            raise InputError(f"max_batches: expected an integer ≥ 1, got {max_batches!r}")
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self._own_client = client is None
        self.client = client or httpx.Client(timeout=timeout)
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

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        delay = self._rng.uniform(0, delay)  # full jitter
        if retry_after is not None and retry_after.strip().isdigit():
            delay = max(delay, min(self.max_backoff, float(retry_after)))
        self._sleep(delay)

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        last = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            retry_after = None
            try:
                response = self.client.request(method, self.base_url + path, **kw)
            except httpx.TransportError as e:  # refused, reset, timed out, closed mid-response
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code < 400 or response.status_code == 304:
                    return response
                if response.status_code not in _RETRYABLE:
                    raise SyncError(
                        f"{method} {path}: refused with {response.status_code}: "
                        f"{response.text[:300]}",
                        status=response.status_code,
                    )
                last = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after")
            if attempt < self.retries:
                self._wait(attempt, retry_after)
        raise SyncError(f"{method} {path}: gave up after {self.retries + 1} attempts ({last})")

    # -- the two jobs ----------------------------------------------------------------------------

    def fetch_bundle(self, *, now: float | None = None) -> FetchResult:
        """Fetch the bundle if it changed, then verify and load it.

        Raises:
            SyncError: the server could not be reached.
            BundleError: the bundle was refused (bad signature, expired, rollback, …); the
                last good bundle stays in use.
        """
        headers = {}
        with contextlib.suppress(LocalrankError):  # no bundle yet: fetch unconditionally
            headers["If-None-Match"] = f'"{self.engine.bundle.digest}"'
        response = self._request("GET", "/v1/bundle", headers=headers)
        if response.status_code == 304:
            return FetchResult("not_modified", self.engine.bundle.version)
        bundle = self.engine.load_bundle(response.content, now=now)
        return FetchResult("updated", bundle.version)

    def flush(self, *, now: float | None = None) -> FlushResult:
        """Send every due batch; each is acknowledged once the server holds all its reports.

        Raises:
            SyncError: a batch could not be delivered after the retries, or was refused. It
                stays in the outbox (same nonces) for the next flush.
        """
        batches = stored = already = 0
        start = self.attempts
        for _ in range(self.max_batches):
            batch = self.engine.take_batch(now=now)
            if batch is None or not batch.reports:
                break
            response = self._request(
                "POST",
                "/v1/reports",
                content=batch.body,
                headers={"Content-Type": "application/json"},
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


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        raise SyncError("POST /v1/reports: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise SyncError("POST /v1/reports: the answer is not a JSON object")
    return doc
