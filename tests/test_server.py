"""The aggregation server's HTTP API against a real uvicorn server, on SQLite and PostgreSQL.

Ingest (idempotent, all or nothing), every kind of bad input, a real database fault (503 with
Retry-After), the bundle's ETag, the segment table, metrics, OpenAPI, and that no client
address is logged or stored.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from localrank.server.app import create_app
from localrank.shared.clock import FixedClock, epoch_of
from localrank.wire.reports import batch_body

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import (  # noqa: E402 (after the rewrite hook)
    LiveServer,
    demo_bundle,
    device_reports,
    server_config,
)

# The fixtures (db_url over both backends, clock, live) live in server_fixtures.
pytest_plugins = ["server_fixtures"]


def _batch(clock: FixedClock, n: int = 5, **overrides: Any) -> list[dict[str, Any]]:
    b = demo_bundle()
    epoch = epoch_of(clock.now())
    reports = device_reports(
        np.arange(n) % 40, epoch=epoch, offers=[b.catalog.ids[i] for i in range(n)]
    )
    for r in reports:
        r.update(overrides)
    return reports


def _post(url: str, body: bytes | str, **headers: str) -> httpx.Response:
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(url + "/v1/reports", content=body, headers=headers, timeout=30)


def test_stores_a_batch_once_and_answers_retries_already_stored(
    live: LiveServer, clock: FixedClock
) -> None:
    reports = _batch(clock, 8)
    first = _post(live.url, batch_body(reports))
    assert first.status_code == 200, first.text
    assert first.json()["stored"] == 8 and first.json()["already_stored"] == 0
    assert {r["status"] for r in first.json()["reports"]} == {"stored"}
    again = _post(live.url, batch_body(reports))
    assert again.status_code == 200
    assert again.json() == {
        "stored": 0,
        "already_stored": 8,
        "reports": [{"nonce": r["nonce"], "status": "already_stored"} for r in reports],
    }
    # A batch overlapping an earlier one stores only what is new.
    mixed = reports[:3] + _batch(clock, 2)
    third = _post(live.url, batch_body(mixed)).json()
    assert (third["stored"], third["already_stored"]) == (2, 3)
    counts = live.state.storage.counts()
    assert counts["reports"] == counts["nonces"] == 10
    assert live.state.storage.stored_nonces() == {r["nonce"] for r in reports + mixed}


def _bad_bodies(clock: FixedClock) -> list[tuple[str, bytes, int, str]]:
    good = _batch(clock, 3)
    e = epoch_of(clock.now())
    cases: list[tuple[str, bytes, int, str]] = [
        ("malformed JSON", b'{"schema": "localrank.batch/1", "reports": [', 400, "malformed_json"),
        ("not UTF-8", b"\xff\xfe{}", 400, "malformed_json"),
        ("NaN", b'{"schema": "localrank.batch/1", "reports": [NaN]}', 400, "malformed_json"),
        ("not an object", b"[1, 2]", 422, "schema"),
    ]

    def body(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    cases.append(
        (
            "batch schema v2",
            body({"schema": "localrank.batch/2", "reports": good}),
            422,
            "schema_version",
        )
    )
    v2 = [dict(r) for r in good]
    v2[1]["schema"] = "localrank.report/2"
    cases.append(
        (
            "report schema v2",
            body({"schema": "localrank.batch/1", "reports": v2}),
            422,
            "schema_version",
        )
    )
    extra = [dict(r) for r in good]
    extra[2]["device_id"] = "abc"
    cases.append(
        (
            "unknown report field",
            body({"schema": "localrank.batch/1", "reports": extra}),
            422,
            "schema",
        )
    )
    cases.append(
        (
            "unknown batch field",
            body({"schema": "localrank.batch/1", "reports": good, "ip": "1.2.3.4"}),
            422,
            "schema",
        )
    )
    many = _batch(clock, 1) * 257
    cases.append(
        (
            "too many reports",
            body({"schema": "localrank.batch/1", "reports": many}),
            422,
            "too_many_reports",
        )
    )
    for shift in (-2, 2, 400):
        late = [dict(r) for r in good]
        late[0]["epoch"] = e + shift
        cases.append(
            (
                f"epoch {shift:+d}",
                body({"schema": "localrank.batch/1", "reports": late}),
                422,
                "epoch_window",
            )
        )
    offer = [dict(r) for r in good]
    offer[1]["offer"] = "not-in-the-catalog"
    cases.append(
        ("unknown offer", body({"schema": "localrank.batch/1", "reports": offer}), 422, "offer")
    )
    bits = [dict(r) for r in good]
    bits[0]["bits"] = "AAAA"
    cases.append(
        ("short OUE bits", body({"schema": "localrank.batch/1", "reports": bits}), 422, "bits")
    )
    grr = [dict(r) for r in good]
    grr[0] = {k: v for k, v in grr[0].items() if k != "bits"} | {"oracle": "grr", "segment": 10**6}
    cases.append(
        (
            "segment outside the domain",
            body({"schema": "localrank.batch/1", "reports": grr}),
            422,
            "segment",
        )
    )
    dup = [good[0], dict(good[0])]
    cases.append(
        (
            "repeated nonce",
            body({"schema": "localrank.batch/1", "reports": dup}),
            422,
            "duplicate_nonce",
        )
    )
    return cases


def test_bad_input_is_refused_with_json_and_stores_nothing(
    live: LiveServer, clock: FixedClock
) -> None:
    for name, body, status, code in _bad_bodies(clock):
        r = _post(live.url, body)
        assert r.status_code == status, (name, r.text)
        doc = r.json()
        assert doc["error"] == code, (name, doc)
        assert isinstance(doc["detail"], str) and doc["detail"], name
    # All or nothing: every refused batch above held valid reports too, and none was stored.
    assert live.state.storage.counts()["reports"] == 0
    assert live.state.storage.counts()["nonces"] == 0


def test_body_over_the_limit_is_413(db_url: str, clock: FixedClock) -> None:
    app = create_app(server_config(db_url, clock, max_body_bytes=4096))
    with LiveServer(app) as server:
        big = batch_body(_batch(clock, 30))
        assert len(big) > 4096
        r = _post(server.url, big)
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        # Without Content-Length (chunked), the stream is cut off at the limit as well.
        def chunks() -> Any:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        r = httpx.post(
            server.url + "/v1/reports",
            content=chunks(),
            headers={"Content-Type": "application/json"},  # else 415 before any byte is read
            timeout=30,
        )
        assert r.status_code == 413
        assert server.state.storage.counts()["reports"] == 0


def test_the_epoch_window_follows_the_injected_clock(live: LiveServer, clock: FixedClock) -> None:
    # Replaying history: move the server's clock back a year, and last year's epochs are the
    # ones accepted.
    clock.set(clock.now() - 365 * 86400)
    old = _batch(clock, 2)
    assert _post(live.url, batch_body(old)).status_code == 200
    clock.set(clock.now() + 365 * 86400)
    r = _post(live.url, batch_body(_batch(FixedClock(clock.now() - 365 * 86400), 2)))
    assert r.status_code == 422 and r.json()["error"] == "epoch_window"
    # Yesterday and tomorrow are inside the window.
    for shift in (-1, 1):
        ok = _batch(FixedClock(clock.now() + shift * 86400), 1)
        assert _post(live.url, batch_body(ok)).status_code == 200


def _hold_lock(db_url: str, locked: threading.Event, release: threading.Event) -> None:
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url[len("sqlite:///") :], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        conn.execute("ROLLBACK")
        conn.close()
    else:
        with psycopg.connect(db_url) as conn:
            conn.execute("LOCK TABLE nonces IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)
            conn.rollback()


def test_a_database_fault_is_503_with_retry_after_and_the_retry_succeeds(
    db_url: str, clock: FixedClock
) -> None:
    app = create_app(server_config(db_url, clock, busy_timeout_ms=200, retry_after=3))
    with LiveServer(app) as server:
        locked, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=_hold_lock, args=(db_url, locked, release))
        holder.start()
        try:
            assert locked.wait(10)
            reports = _batch(clock, 4)
            r = _post(server.url, batch_body(reports))
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "3"
            assert r.json()["error"] == "unavailable"
        finally:
            release.set()
            holder.join()
        # Nothing was half-written, and the same batch goes through now.
        assert server.state.storage.counts()["nonces"] == 0
        r = _post(server.url, batch_body(reports))
        assert r.status_code == 200 and r.json()["stored"] == 4
        metrics = httpx.get(server.url + "/metrics").text
        assert 'localrank_batches_total{outcome="unavailable"} 1.0' in metrics


def test_an_unreachable_postgresql_is_503_not_a_crash(clock: FixedClock, postgres_url: str) -> None:
    app = create_app(server_config(postgres_url, clock))
    with LiveServer(app) as server:
        storage = server.state.storage
        storage.url = "postgresql://postgres@127.0.0.1:9/nothing"  # type: ignore[attr-defined]
        storage.close()  # drop the pooled connections: the next request must reconnect
        r = _post(server.url, batch_body(_batch(clock, 2)))
        assert r.status_code == 503 and "retry-after" in r.headers
        assert httpx.get(server.url + "/healthz").status_code == 503


def test_bundle_etag_and_304(live: LiveServer) -> None:
    r = httpx.get(live.url + "/v1/bundle")
    assert r.status_code == 200
    digest = demo_bundle().digest
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["x-bundle-version"] == "1"
    assert r.content == live.state.bundle()[1]
    for header in (f'"{digest}"', f'W/"{digest}"', f'"other", "{digest}"', "*"):
        again = httpx.get(live.url + "/v1/bundle", headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
    stale = httpx.get(live.url + "/v1/bundle", headers={"If-None-Match": '"0000"'})
    assert stale.status_code == 200 and stale.content == r.content


def test_segments_healthz_metrics_openapi(live: LiveServer, clock: FixedClock) -> None:
    seg = httpx.get(live.url + "/v1/segments").json()
    b = demo_bundle()
    assert seg["bundle_version"] == 1 and seg["min_population"] == b.config.min_population
    assert len(seg["segments"]) == b.segments.d_seg
    assert seg["segments"][0] == {
        "id": 0,
        "path": "",
        "parent": -1,
        "population": -1,
        "usable": True,
    }
    assert not any(s["usable"] for s in seg["segments"][1:])
    assert httpx.get(live.url + "/healthz").json() == {"status": "ok", "bundle_version": 1}
    _post(live.url, batch_body(_batch(clock, 3)))
    text = httpx.get(live.url + "/metrics").text
    assert 'localrank_reports_total{result="stored"} 3.0' in text
    assert 'localrank_storage_rows{table="reports"} 3.0' in text
    assert 'localrank_http_requests_total{route="/v1/reports",status="200"} 1.0' in text
    spec = httpx.get(live.url + "/openapi.json").json()
    assert set(spec["paths"]) >= {
        "/v1/reports",
        "/v1/bundle",
        "/v1/segments",
        "/healthz",
        "/metrics",
    }
    body = spec["paths"]["/v1/reports"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/Batch"}
    assert spec["components"]["schemas"]["Report"]["additionalProperties"] is False


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "localrank.server.access"]


def test_no_client_address_is_logged_or_stored(
    live: LiveServer, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        _post(live.url, batch_body(_batch(clock, 3)))
        _post(live.url, b"{nope")
        httpx.get(live.url + "/v1/bundle")
        # The access line is written once the response has gone out: wait for the last one.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_access(caplog)) < 3:
            time.sleep(0.01)
    access = _access(caplog)
    assert len(access) == 3
    assert any('"POST /v1/reports" 200' in r.getMessage() for r in access)
    server_side = [r for r in caplog.records if r.name.startswith(("localrank", "uvicorn"))]
    assert server_side
    for record in server_side:  # (the test's own HTTP client logs the address it dials)
        assert "127.0.0.1" not in record.getMessage(), record.getMessage()
    # The schema has no column that could hold an address or a time finer than the epoch.
    storage = live.state.storage
    with storage.transaction(write=False) as tx:  # type: ignore[attr-defined]
        if live.state.config.db.startswith("sqlite"):
            cols = {r[1] for r in tx.execute("SELECT * FROM pragma_table_info('reports')")}
        else:
            cols = {
                r[0]
                for r in tx.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'reports' AND table_schema = current_schema()"
                )
            }
    assert cols == {"nonce", "epoch", "kind", "config", "segment", "bits", "offer", "event"}


def test_the_fast_validator_agrees_with_the_reference(clock: FixedClock) -> None:
    from localrank.errors import InputError
    from localrank.wire.reports import batch_is_valid, reference_check_batch

    docs: list[Any] = [{"schema": "localrank.batch/1", "reports": _batch(clock, 4)}]
    for _, body, _, _ in _bad_bodies(clock):
        try:
            docs.append(json.loads(body))
        except ValueError:
            continue
    central = dict(_batch(clock, 1)[0])
    central.pop("bits")
    docs.append(
        {
            "schema": "localrank.batch/1",
            "reports": [
                central
                | {
                    "mode": "central",
                    "oracle": "none",
                    "epsilon": None,
                    "epsilon_perm": None,
                    "segment": 3,
                }
            ],
        }
    )
    docs.append(
        {
            "schema": "localrank.batch/1",
            "reports": [
                central
                | {
                    "mode": "central",
                    "oracle": "none",
                    "epsilon": 2.0,
                    "epsilon_perm": None,
                    "segment": 3,
                }
            ],
        }
    )
    docs.append({"schema": "localrank.batch/1", "reports": []})
    verdicts = set()
    for doc in docs:
        try:
            reference_check_batch(doc)
            reference = True
        except InputError:
            reference = False
        assert batch_is_valid(doc) == reference, doc
        verdicts.add(reference)
    assert verdicts == {True, False}
