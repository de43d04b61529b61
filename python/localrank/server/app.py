"""The HTTP API: a FastAPI app factory.

| endpoint | what |
|---|---|
| ``POST /v1/reports`` | one batch (``localrank.batch/1``), stored all or nothing |
| ``GET /v1/bundle`` | the latest signed bundle; ``ETag`` is its SHA-256, ``If-None-Match`` → 304 |
| ``GET /v1/segments`` | the segment table with published populations |
| ``GET /healthz`` | 200 when the database answers, else 503 |
| ``GET /metrics`` | Prometheus text |
| ``GET /openapi.json`` | this API's OpenAPI document |

Errors are JSON, ``{"error": code, "detail": message}``: 4xx for bad input, 503 with
``Retry-After`` when the database is unavailable (or on any fault of the server's own). A POST
body must be ``application/json`` in UTF-8 without a BOM, duplicate keys or lone surrogates
(``server/strict_body.py``), and arrive within ``http.body_timeout`` (else 408); a client that
disconnects mid-body is logged as a 499. The access log names the method, the path,
the status and the time taken, never the client's address; nothing stores one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from localrank.bundle import Bundle, open_bundle
from localrank.bundle.keys import load_private_key
from localrank.errors import InputError
from localrank.server.aggregate import (
    AggregationResult,
    Aggregator,
    closed_before,
    ensure_base_bundle,
)
from localrank.server.config import ServerConfig
from localrank.server.ingest import IngestError, IngestRules, PublishedHistory, parse_batch
from localrank.server.key_chain import key_chain_router
from localrank.server.metrics import CONTENT_TYPE, Metrics
from localrank.server.storage import Storage, StorageUnavailableError, open_storage
from localrank.server.strict_body import check_content_type
from localrank.shared.clock import epoch_of
from localrank.wire.reports import schema_document

__all__ = ["ServerState", "app_from_env", "create_app"]

ACCESS_LOG = logging.getLogger("localrank.server.access")
LOG = logging.getLogger("localrank.server")
_ROUTES = {"/v1/reports", "/v1/bundle", "/v1/segments", "/healthz", "/metrics", "/openapi.json"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


class _BodyTooLargeError(Exception):
    pass


class ServerState:
    """What the endpoints share: storage, the current bundle and its ingest rules, metrics."""

    def __init__(self, config: ServerConfig, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.clock = config.clock
        self.metrics = Metrics()
        key = config.key_bytes()
        self.public_key = load_private_key(key).public_key()
        ensure_base_bundle(storage, config.base_bundle_bytes(), key)
        self.aggregator = Aggregator(storage, key, clock=self.clock, settings=config.aggregation)
        self._lock = threading.Lock()
        self._bundle: tuple[Bundle, bytes, IngestRules] | None = None
        self._checked = -1.0
        self._history = PublishedHistory(self.public_key)

    def bundle(self, *, fresh: bool = False) -> tuple[Bundle, bytes, IngestRules]:
        """The latest bundle, its bytes and the ingest rules it implies. Another worker may
        publish at any time, so the version is checked again at most once a second."""
        now = time.monotonic()
        with self._lock:
            cached = self._bundle
            if cached is not None and not fresh and now - self._checked < 1.0:
                return cached
        head = self.storage.latest_bundle_digest()
        if cached is not None and head is not None and head[1] == cached[0].digest:
            with self._lock:
                self._checked = now
            return cached
        row = self.storage.latest_bundle()
        assert row is not None  # ensure_base_bundle put one there
        opened = open_bundle(row.data, self.public_key, now=float("-inf"))
        # Reports are checked against every stored bundle a device may still hold.
        rules = IngestRules(
            offers=frozenset(opened.catalog.ids),
            published=self._history.configs(self.storage.bundles()),
            max_body_bytes=self.config.max_body_bytes,
            max_reports=self.config.max_reports,
        )
        with self._lock:
            self._bundle = (opened, row.data, rules)
            self._checked = now
            self.metrics.bundle_version.set(opened.version)
        return self._bundle

    def aggregate(self, *, force_publish: bool = False) -> AggregationResult:
        """One aggregation run; this process serves what it published at once (other workers
        notice within a second)."""
        result = self.aggregator.run(force_publish=force_publish)
        if result.published is not None:
            self.bundle(fresh=True)
        return result

    def ingest(self, body: bytes) -> dict[str, Any]:
        """Validate and store one batch; the response document."""
        _, _, rules = self.bundle()
        now = self.clock.now()
        rows = parse_batch(body, rules, epoch_of(now))
        closed = closed_before(now, self.config.aggregation.grace_seconds)
        try:
            fresh = self.storage.store_reports(rows, closed)
        except InputError as e:  # the epoch was folded while the request was in flight
            raise IngestError(422, "epoch_window", str(e)) from None
        stored = sum(fresh)
        self.metrics.reports.labels("stored").inc(stored)
        self.metrics.reports.labels("duplicate").inc(len(fresh) - stored)
        return {
            "stored": stored,
            "already_stored": len(fresh) - stored,
            "reports": [
                {"nonce": r.nonce, "status": "stored" if f else "already_stored"}
                for r, f in zip(rows, fresh, strict=True)
            ],
        }


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    # A detail quoting the client's input must still encode as UTF-8 (lone surrogates).
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


#: nginx's "client closed request": logged, never sent (the client is gone).
CLIENT_CLOSED_REQUEST = 499


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError()
        chunks.append(chunk)
    return b"".join(chunks)


def _openapi_batch_schemas() -> dict[str, Any]:
    """The shipped JSON Schemas, rewritten as OpenAPI components (same constraints)."""
    report = copy.deepcopy(schema_document("report.v1.json"))
    batch = copy.deepcopy(schema_document("batch.v1.json"))
    for doc in (report, batch):
        doc.pop("$schema", None)
        doc.pop("$id", None)
    batch["properties"]["reports"]["items"] = {"$ref": "#/components/schemas/Report"}
    return {"Report": report, "Batch": batch}


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


def _err_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


class _AccessLog:
    """Pure ASGI middleware: access log without client addresses, and request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        done = False

        def record(status: int) -> None:
            nonlocal done
            done = True
            elapsed = time.perf_counter() - start
            path = scope.get("path", "")
            route = path if path in _ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            # Deliberately no scope["client"]: the server never records who sent what.
            ACCESS_LOG.info(
                '"%s %s" %d %.1fms', scope.get("method", ""), route, status, elapsed * 1e3
            )

        async def send_wrapper(message: Message) -> None:
            # Recorded before the response leaves, so a client that reads the metrics or the
            # log right after its answer finds its own request there (time to first byte).
            if message["type"] == "http.response.start":
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not done:
                record(500)


def create_app(config: ServerConfig, *, storage: Storage | None = None) -> FastAPI:
    """The API for ``config``. ``storage`` overrides ``config.db`` (tests share one)."""
    store = storage or open_storage(config.db, busy_timeout_ms=config.busy_timeout_ms)
    state = ServerState(config, store)
    metrics = state.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if config.aggregate_every is not None:
            task = asyncio.create_task(_aggregate_periodically(state, config.aggregate_every))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if storage is None:
                store.close()

    app = FastAPI(
        title="localrank aggregation server",
        version="1",
        description="Ingests privatised reports, aggregates them and publishes signed bundles.",
        lifespan=lifespan,
    )
    app.state.localrank = state
    app.include_router(key_chain_router(config))  # GET /v1/keys: server/key_chain.py

    @app.exception_handler(StorageUnavailableError)
    async def _unavailable(request: Request, exc: StorageUnavailableError) -> JSONResponse:
        if request.url.path == "/v1/reports":
            metrics.batches.labels("unavailable").inc()
        LOG.warning("database unavailable: %s", exc)
        return _error(
            503,
            "unavailable",
            "the database is unavailable; retry later",
            {"Retry-After": str(config.retry_after)},
        )

    @app.exception_handler(IngestError)
    async def _refused(request: Request, exc: IngestError) -> JSONResponse:
        metrics.batches.labels(exc.code).inc()
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(_BodyTooLargeError)
    async def _too_large(request: Request, exc: _BodyTooLargeError) -> JSONResponse:
        metrics.batches.labels("too_large").inc()
        return _error(413, "too_large", f"body: over the limit of {config.max_body_bytes} bytes")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", str(exc.errors())[:500])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        # A fault of the server's own: still a JSON answer (the traceback is logged by the
        # server, as it should be), and 503 so a device retries later.
        return _error(
            503,
            "internal",
            "the server failed to answer; retry later",
            {"Retry-After": str(config.retry_after)},
        )

    @app.post(
        "/v1/reports",
        summary="Store a batch of reports (all or nothing; a known nonce is 'already_stored')",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}},
            },
        },
        responses={
            200: {
                "description": "Every report is stored (now or before)",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Stored"}}
                },
            },
            400: _err_response(
                "Malformed JSON, not UTF-8 (or with a BOM), a duplicate key or a lone surrogate"
            ),
            408: _err_response("The body did not arrive within the body timeout"),
            413: _err_response("Body over the size limit"),
            415: _err_response("Content-Type is not application/json"),
            422: _err_response(
                "Refused: schema version, unknown fields, too many reports, epoch outside the "
                "window, segment, bits or offer invalid"
            ),
            503: _err_response("Database unavailable; retry after Retry-After seconds"),
        },
    )
    async def post_reports(request: Request) -> Response:
        check_content_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise _BodyTooLargeError()
        # One deadline for the whole body, not per read: a client dripping a byte at a time
        # would otherwise hold the connection for ever.
        try:
            body = await asyncio.wait_for(
                _read_body(request, config.max_body_bytes), config.http.body_timeout
            )
        except asyncio.TimeoutError:  # not yet the builtin TimeoutError on Python 3.10
            metrics.batches.labels("timeout").inc()
            return _error(
                408,
                "timeout",
                f"body: not complete within {config.http.body_timeout:g}s",
                {"Connection": "close"},
            )
        except ClientDisconnect:
            # The client's doing, not a fault: one access-log line with 499, no traceback.
            metrics.batches.labels("disconnected").inc()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        # parse_batch parses the body strictly (strict_body.py) before the schema validator or
        # the database driver sees it.
        result = await run_in_threadpool(state.ingest, body)
        metrics.batches.labels("accepted").inc()
        return JSONResponse(result)

    @app.get(
        "/v1/bundle",
        summary="The latest signed bundle (ETag: its SHA-256)",
        openapi_extra={
            "parameters": [
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "description": "ETags the device holds; a match is answered 304",
                    "schema": {"type": "string"},
                }
            ]
        },
        responses={
            200: {"description": "The bundle", "content": {"application/octet-stream": {}}},
            304: {"description": "Not modified (If-None-Match matched)"},
            503: _err_response("Database unavailable"),
        },
    )
    async def get_bundle(request: Request) -> Response:
        bundle, data, _ = await run_in_threadpool(state.bundle)
        etag = f'"{bundle.digest}"'
        headers = {
            "ETag": etag,
            "Cache-Control": "no-cache",
            "X-Bundle-Version": str(bundle.version),
        }
        if _etag_matches(request.headers.get("if-none-match"), bundle.digest):
            return Response(status_code=304, headers=headers)
        return Response(content=data, media_type="application/octet-stream", headers=headers)

    @app.get("/v1/segments", summary="The segment table and its published populations")
    async def get_segments() -> dict[str, Any]:
        bundle, _, _ = await run_in_threadpool(state.bundle)
        segs = bundle.segments
        minimum = bundle.config.min_population
        return {
            "bundle_version": bundle.version,
            "min_population": minimum,
            "segments": [
                {
                    "id": i,
                    "path": segs.paths[i],
                    "parent": int(segs.parents[i]),
                    "population": int(segs.populations[i]),
                    "usable": bool(i == 0 or segs.populations[i] >= minimum),
                }
                for i in range(len(segs))
            ],
        }

    @app.get("/healthz", summary="200 when the database answers")
    async def healthz() -> dict[str, Any]:
        await run_in_threadpool(store.ping)
        bundle, _, _ = await run_in_threadpool(state.bundle)
        return {"status": "ok", "bundle_version": bundle.version}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def get_metrics() -> Response:
        try:
            counts = await run_in_threadpool(store.counts)
            for table, n in counts.items():
                metrics.stored.labels(table).set(n)
        except StorageUnavailableError:
            pass  # the process metrics are still worth serving
        return Response(content=metrics.render(), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            comps = doc.setdefault("components", {}).setdefault("schemas", {})
            comps.update(_openapi_batch_schemas())
            comps["Error"] = _ERROR_SCHEMA
            comps["Stored"] = {
                "type": "object",
                "required": ["stored", "already_stored", "reports"],
                "properties": {
                    "stored": {"type": "integer"},
                    "already_stored": {"type": "integer"},
                    "reports": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "nonce": {"type": "string"},
                                "status": {"enum": ["stored", "already_stored"]},
                            },
                        },
                    },
                },
            }
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_AccessLog, metrics=metrics)
    return app


def _etag_matches(header: str | None, digest: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    return any(t.removeprefix("W/").strip('"') == digest for t in tags)


async def _aggregate_periodically(state: ServerState, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            result = await run_in_threadpool(state.aggregate)
            state.metrics.aggregations.labels("ok").inc()
            if result.published is not None:
                LOG.info(
                    "aggregation: folded %s, published bundle %d", result.folded, result.published
                )
        except StorageUnavailableError as e:
            state.metrics.aggregations.labels("unavailable").inc()
            LOG.warning("aggregation skipped: %s", e)
        except Exception:
            state.metrics.aggregations.labels("error").inc()
            LOG.exception("aggregation failed")


def app_from_env() -> FastAPI:
    """The app a uvicorn worker process builds (``localrank serve --workers N``)."""
    return create_app(ServerConfig.from_env())
