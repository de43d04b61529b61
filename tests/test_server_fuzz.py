"""Schemathesis against the server's own OpenAPI document: no generated request, valid or
not, gets a 5xx. The live server runs on loopback (SQLite and PostgreSQL); examples are
bounded so each operation takes a few seconds.

Then what no OpenAPI document describes, each answered with JSON and never a 5xx: lone
surrogates, byte order marks, UTF-16, duplicate keys, a missing or wrong Content-Type, arbitrary
bytes; and, against a real ``localrank serve`` process with one-second limits, truncated and
drip-fed bodies and heads, too many connections, and a client that disconnects mid-body (the
server's log must hold no ERROR and no traceback).

The batch schema in the OpenAPI document is the shipped wire contract, so positive examples
are well-formed batches with random epochs, offers, segments and bits, which the server must
refuse with a 4xx (or store), never crash on; negative examples break the schema on purpose.

Schemathesis' own pytest plugin does not run under this pytest, so the test draws cases from
each operation's Hypothesis strategy itself.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from localrank.privacy import oracles as ldp
from localrank.server.app import create_app
from localrank.shared.clock import FixedClock, epoch_of
from localrank.wire.reports import batch_body

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import (  # noqa: E402
    LiveServer,
    ServeProcess,
    demo_bundle,
    device_reports,
    post_all,
    server_config,
)

pytest_plugins = ["server_fixtures"]

EXAMPLES = 30
T0 = 1_790_000_000.0


def _repaired(case: schemathesis.Case) -> schemathesis.Case:
    """A positive batch with its epochs, offers, segments and bits made acceptable, so the
    fuzzer also reaches storage (weird but valid nonces, events, duplicates)."""
    bundle = demo_bundle()
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("reports"), list):
        for i, r in enumerate(body["reports"]):
            if not isinstance(r, dict):
                continue
            r["epoch"] = epoch_of(T0) + (i % 3) - 1
            if "offer" in r:
                r["offer"] = bundle.catalog.ids[i % len(bundle.catalog)]
            # Only the configuration the bundle published is stored (ingest checks it), so
            # the repair puts every report under it: the demo's OUE at ε = 2, ε_perm = 4.
            c = bundle.config
            r.update(mode="ldp", oracle="oue", epsilon=c.epsilon, epsilon_perm=c.epsilon_perm)
            r.pop("segment", None)
            r["bits"] = ldp.encode_bits(
                np.full(ldp.packed_len(bundle.segments.d_seg), 0, np.uint8)
            )
    return case


def test_no_server_errors(db_url: str) -> None:
    with LiveServer(create_app(server_config(db_url, FixedClock(T0)))) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "POST /v1/reports",
            "GET /v1/bundle",
            "GET /v1/segments",
            "GET /healthz",
            "GET /metrics",
        }
        seen: dict[str, set[int]] = {}
        for op in operations:
            positive = op.as_strategy(generation_mode=GenerationMode.POSITIVE)
            strategy = st.one_of(
                positive,
                positive.map(_repaired),
                op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
            )

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                response = case.call(base_url=server.url, timeout=30)
                seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
                assert response.status_code < 500, (
                    case.method,
                    case.path,
                    case.body if not isinstance(case.body, bytes) else case.body[:200],
                    response.status_code,
                    response.text[:300],
                )

            run()
        # The fuzzer reached the interesting refusals, not only the happy path.
        assert seen["POST /v1/reports"] & {400, 413, 422}, seen
        assert 200 in seen["POST /v1/reports"], seen  # and storage
        assert seen["GET /v1/bundle"] >= {200, 304}, seen


# --- bodies no OpenAPI document describes ----------------------------------------------------


def _good_reports(n: int = 3) -> list[dict[str, Any]]:
    bundle = demo_bundle()
    return device_reports(
        np.arange(n) % 40,
        epoch=epoch_of(T0),
        offers=[bundle.catalog.ids[i] for i in range(n)],
    )


def _post(url: str, body: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return httpx.post(url + "/v1/reports", content=body, headers=headers, timeout=30)


def _strict_cases() -> list[tuple[str, bytes, str]]:
    """(name, body, expected error code): each body is a valid batch but for one defect, so
    without the check it would be stored (or crash the validator)."""
    good = _good_reports()
    text = batch_body(good).decode()
    kind = '"kind":"engagement"'
    assert kind in text
    nested_dup = text.replace(kind, '"kind":"census",' + kind, 1)  # the last one is valid
    return [
        # jsonschema-rs raised UnicodeEncodeError on these: a plain-text 500.
        ("lone surrogate in a value", text.replace(kind, '"kind":"\\ud800"', 1).encode(),
         "lone_surrogate"),
        ("lone low surrogate in a key", text.replace(kind, kind + ',"\\udc00":1', 1).encode(),
         "lone_surrogate"),
        ("lone surrogate in an array",
         b'{"schema":"localrank.batch/1","reports":["\\ud83d"]}', "lone_surrogate"),
        ("surrogate encoded as UTF-8 bytes",
         text.encode().replace(kind.encode(), b'"kind":"\xed\xa0\x80"', 1),
         "malformed_json"),
        ("UTF-8 byte order mark", b"\xef\xbb\xbf" + text.encode(), "malformed_json"),
        ("UTF-16 with a BOM", text.encode("utf-16"), "malformed_json"),
        ("UTF-16-BE without a BOM", text.encode("utf-16-be"), "malformed_json"),
        ("UTF-32", text.encode("utf-32"), "malformed_json"),
        ("duplicate top-level key", text.replace(
            '"schema":"localrank.batch/1"',
            '"schema":"localrank.batch/2","schema":"localrank.batch/1"', 1).encode(),
         "duplicate_key"),
        ("duplicate key in a report", nested_dup.encode(), "duplicate_key"),
    ]  # fmt: skip


def test_strict_bodies_get_a_json_400_and_store_nothing(db_url: str) -> None:
    with LiveServer(create_app(server_config(db_url, FixedClock(T0)))) as server:
        for name, body, code in _strict_cases():
            r = _post(server.url, body)
            assert r.status_code == 400, (name, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/json", name
            assert r.json()["error"] == code, (name, r.json())
            assert r.json()["detail"], name
        assert server.state.storage.counts()["reports"] == 0
        # Controls: a surrogate *pair* is one valid character, and an escaped backslash
        # followed by "ud800" is plain text; both reach the schema check (422), not a 400.
        text = batch_body(_good_reports()).decode()
        for value in ('"\\ud83d\\ude00"', '"\\\\ud800"'):
            r = _post(server.url, text.replace('"engagement"', value, 1).encode())
            assert r.status_code == 422 and r.json()["error"] == "schema", (value, r.text)
        # And the same batch, strict, is stored.
        assert _post(server.url, text.encode()).status_code == 200


def test_content_type_must_be_json(db_url: str) -> None:
    with LiveServer(create_app(server_config(db_url, FixedClock(T0)))) as server:
        body = batch_body(_good_reports())
        # The types a browser may send cross-site without a preflight, and others.
        for content_type in (
            None,
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json-patch+json",
            "application/json; charset=utf-16",
        ):
            r = _post(server.url, body, content_type)
            assert r.status_code == 415, (content_type, r.text)
            assert r.json()["error"] == "content_type", content_type
        assert server.state.storage.counts()["reports"] == 0
        r = _post(server.url, body, "Application/JSON; charset=UTF-8")
        assert r.status_code == 200, r.text
        # The device's own batches pass: the sync client's body and header (sync.py).
        assert post_all(server.url, _good_reports(4)) == 4


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.characters(max_codepoint=0xDFFF)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def test_any_bytes_get_a_json_answer_never_a_5xx(db_url: str) -> None:
    with LiveServer(create_app(server_config(db_url, FixedClock(T0)))) as server:
        statuses: set[int] = set()

        @given(
            body=st.one_of(
                st.binary(max_size=300),
                # ensure_ascii writes lone surrogates as \\udXXX escapes.
                _JSON_VALUES.map(lambda v: json.dumps({"schema": "localrank.batch/1",
                                                       "reports": [v]}).encode()),
                _JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False)).flatmap(
                    lambda t: st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32"]).map(
                        lambda enc: t.encode(enc, "surrogatepass"))),
            ),
            content_type=st.sampled_from([None, "application/json", "text/plain"]),
        )  # fmt: skip
        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(body: bytes, content_type: str | None) -> None:
            r = _post(server.url, body, content_type)
            statuses.add(r.status_code)
            assert 400 <= r.status_code < 500, (body[:200], r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/json", r.text[:300]
            assert set(r.json()) == {"error", "detail"}

        run()
        assert {400, 415} <= statuses, statuses


# --- slow, truncated and vanishing clients against `localrank serve` ------------------------

LIMIT_S = 1.0  # the served head and body timeouts
BOUND_S = 15.0  # how long a test waits for the server to act before it fails
MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def strict_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A real `localrank serve` (SQLite) with one-second head and body deadlines."""
    tmp = tmp_path_factory.mktemp("strict-serve")
    server = ServeProcess(
        f"sqlite:///{tmp / 'server.db'}",
        now=T0,
        log=tmp / "serve.log",
        extra_args=(
            "--head-timeout", str(LIMIT_S), "--body-timeout", str(LIMIT_S),
            "--max-connections", str(MAX_CONNECTIONS),
        ),
    ).start()  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    sock.setblocking(False)
    return sock


def _head(length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _drip_until_closed(socks: list[socket.socket], drip: bytes) -> list[bytes]:
    """Send one byte of ``drip`` every 0.2 s on every socket until the server closes each;
    what each received. Fails if a socket is still open after BOUND_S."""
    received = [b""] * len(socks)
    open_ = set(range(len(socks)))
    deadline = time.monotonic() + BOUND_S
    step = 0
    while open_ and time.monotonic() < deadline:
        for i in list(open_):
            if drip:
                with contextlib.suppress(OSError):  # closed by the server: the read sees it
                    socks[i].send(drip[step % len(drip) : step % len(drip) + 1])
            readable, _, _ = select.select([socks[i]], [], [], 0)
            while readable:
                try:
                    chunk = socks[i].recv(65536)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    open_.discard(i)
                    break
                received[i] += chunk
                readable, _, _ = select.select([socks[i]], [], [], 0)
        step += 1
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    assert not open_, f"{len(open_)} slow connections still open after {BOUND_S}s"
    return received


def _json_answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, json.loads(body)


def _assert_log_clean(server: ServeProcess) -> None:
    log = server.log.read_text(errors="replace")
    assert not re.search(r"\bERROR\b|Traceback|Exception in ASGI", log), log[-3000:]
    assert '" 500 ' not in log, log[-3000:]


def _still_answers(server: ServeProcess) -> None:
    assert httpx.get(server.url + "/healthz", timeout=BOUND_S).status_code == 200
    assert post_all(server.url, _good_reports(2)) == 2


def test_drip_fed_and_truncated_bodies_get_a_json_408(strict_serve: ServeProcess) -> None:
    body = batch_body(_good_reports())
    # Three drip-fed bodies (a byte every 0.2 s) and two truncated ones (half, then silence).
    socks = [_connect(strict_serve.port) for _ in range(5)]
    for sock in socks:
        sock.sendall(_head(len(body)))
    for sock in socks[3:]:
        sock.sendall(body[: len(body) // 2])
    received = _drip_until_closed(socks[:3], body) + _drip_until_closed(socks[3:], b"")
    for raw in received:
        status, headers, doc = _json_answer(raw)
        assert status == 408 and doc["error"] == "timeout", raw[:300]
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
    _still_answers(strict_serve)
    _assert_log_clean(strict_serve)


def test_drip_fed_heads_and_silent_connections_are_dropped(strict_serve: ServeProcess) -> None:
    head = _head(10)
    socks = [_connect(strict_serve.port) for _ in range(4)]
    # Two heads drip-fed from the start; two connections that sent nothing (b"" sends nothing).
    received = _drip_until_closed(socks[:2], head) + _drip_until_closed(socks[2:], b"")
    for raw in received[:2]:
        status, headers, doc = _json_answer(raw)
        assert status == 408 and doc["error"] == "timeout", raw[:300]
        assert headers["content-type"] == "application/json"
    assert received[2:] == [b"", b""]  # closed without an answer: there was no request
    # After an answer, the next head is due within the limit too (any byte used to reset
    # uvicorn's keep-alive timer).
    sock = _connect(strict_serve.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    (raw,) = _drip_until_closed([sock], b"GET /hea")
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:300]
    assert raw.count(b"HTTP/1.1 ") == 2 and b" 408 " in raw, raw[-300:]
    _still_answers(strict_serve)
    _assert_log_clean(strict_serve)


def test_connections_over_the_limit_get_a_json_503(strict_serve: ServeProcess) -> None:
    socks = [_connect(strict_serve.port) for _ in range(MAX_CONNECTIONS + 4)]
    received = _drip_until_closed(socks, b"")  # idle: each is refused or dropped at the limit
    refused = [raw for raw in received if raw]
    assert len(refused) >= 4, received
    for raw in refused:
        status, headers, doc = _json_answer(raw)
        assert status == 503 and doc["error"] == "unavailable", raw[:300]
        assert int(headers["retry-after"]) >= 0
    _still_answers(strict_serve)
    _assert_log_clean(strict_serve)


def test_a_client_gone_mid_body_is_a_499_not_an_error(strict_serve: ServeProcess) -> None:
    body = batch_body(_good_reports())
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", strict_serve.port), timeout=BOUND_S) as s:
            s.sendall(_head(len(body)) + body[: len(body) // 2])
            time.sleep(0.2)  # the server is now reading the body
    deadline = time.monotonic() + BOUND_S
    log = ""
    while time.monotonic() < deadline:
        log = strict_serve.log.read_text(errors="replace")
        if log.count('"POST /v1/reports" 499 ') >= 3:
            break
        time.sleep(0.1)
    assert log.count('"POST /v1/reports" 499 ') == 3, log[-3000:]
    _still_answers(strict_serve)
    _assert_log_clean(strict_serve)


def test_unparseable_and_oversized_heads_get_a_json_400(strict_serve: ServeProcess) -> None:
    # uvicorn answers these itself, before the app, and did so in plain text.
    # The head limit applies to a head still incomplete, so the oversized one comes in parts.
    oversized = [b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 20_000, b"\r\n\r\n"]
    for parts in ([b"NOT AN HTTP REQUEST\r\n\r\n"], oversized):
        sock = _connect(strict_serve.port)
        sock.setblocking(True)
        for part in parts:
            with contextlib.suppress(OSError):  # the server may close after the first part
                sock.sendall(part)
            time.sleep(0.2)
        sock.setblocking(False)
        (raw,) = _drip_until_closed([sock], b"")
        status, headers, doc = _json_answer(raw)
        assert status == 400 and doc["error"] == "bad_request", raw[:300]
        assert headers["content-type"] == "application/json"
    _still_answers(strict_serve)
    _assert_log_clean(strict_serve)
