"""The device sync client against the real server on loopback, with faults injected between them
by a proxy (tests/fault_proxy.py): a dropped connection, a 503, and a lost acknowledgement (the
server stored the batch, the answer never arrived). On SQLite and PostgreSQL: no report is lost
and none is doubled.
"""

from __future__ import annotations

import math
import random
import threading
from pathlib import Path

import httpx
import pytest

from localrank.device.engine import Engine
from localrank.device.sync import SyncClient, SyncDeadlineError, SyncError
from localrank.errors import InputError, LocalrankError
from localrank.server.app import create_app
from localrank.shared.clock import FixedClock

pytest.register_assert_rewrite("server_fixtures", "fault_proxy", "hostile_server")
from fault_proxy import FaultProxy  # noqa: E402
from hostile_server import BIG, HostileServer  # noqa: E402
from server_fixtures import PUBLIC_KEY, T0, LiveServer, free_port, server_config  # noqa: E402

pytest_plugins = ["server_fixtures"]


def _device(directory: Path, name: str, clock: FixedClock, url: str, **kw: object) -> SyncClient:
    engine = Engine.open(directory / f"{name}.db", public_key=PUBLIC_KEY, clock=clock)
    client = SyncClient(engine, url, **kw)  # type: ignore[arg-type]
    assert client.fetch_bundle().status == "updated"
    engine.update_settings(quiet_hours=None, reporting=True)
    return client


def _plain_offers(engine: Engine, n: int, skip: int = 0) -> list[str]:
    cat = engine.bundle.catalog
    now = engine._clock.now()
    ok = [
        cat.ids[i]
        for i in range(len(cat))
        if not cat.sensitive[i] and cat.valid_from[i] < now < cat.valid_until[i]
    ]
    return ok[skip : skip + n]


def _record(client: SyncClient, n: int, skip: int) -> None:
    engine = client.engine
    for offer in _plain_offers(engine, n, skip):
        engine.record("click", context="shopping", offer=offer)


def _sent_and_pending(clients: list[SyncClient]) -> tuple[list[str], list[str]]:
    sent, pending = [], []
    for c in clients:
        for r in c.engine.outbox(include_pending=True):
            (pending if math.isnan(r.sent_at) else sent).append(r.nonce)
    return sent, pending


def test_no_report_lost_or_doubled_through_faults(
    live: LiveServer, clock: FixedClock, tmp_path: Path
) -> None:
    sleeps: list[float] = []
    with FaultProxy(live.port) as proxy:
        clients = [
            _device(tmp_path, f"d{i}", clock, proxy.url, sleep=sleeps.append, retries=8)
            for i in range(5)
        ]
        results = []
        for day in range(3):
            for i, c in enumerate(clients):
                _record(c, 4, skip=7 * i + day)
            clock.advance(600)
            # Faults land on different devices' POSTs, several of them in a row for some.
            proxy.add("drop", "pass", "503", "lost_ack", "drop", "503", "lost_ack", "pass")
            proxy.add("lost_ack", "lost_ack", "drop")
            results += [c.flush() for c in clients]
            clock.advance(86400)
    applied = [fault for path, fault, _ in proxy.log if path.startswith("POST")]
    for fault in ("drop", "503", "lost_ack"):
        assert applied.count(fault) >= 3, applied
    sent, pending = _sent_and_pending(clients)
    # Every report left its device and was acknowledged, once.
    assert pending == []
    assert len(sent) == len(set(sent)) >= 5 * 3 * 3
    # The server holds exactly those reports, each once.
    storage = live.state.storage
    assert storage.stored_nonces() == set(sent)
    assert storage.counts()["reports"] == len(sent)
    # Each lost acknowledgement was retried, and the retry was answered "already stored".
    lost = sum(1 for path, fault, status in proxy.log if fault == "lost_ack" and status == 200)
    # The final answer for every batch accounts for each report once: stored by that request,
    # or already stored by an earlier one whose answer was lost.
    assert sum(r.stored + r.already_stored for r in results) == len(sent)
    assert sum(r.already_stored for r in results) >= lost >= 3
    assert all(s >= 0 for s in sleeps) and len(sleeps) >= applied.count("drop")


def test_bundle_fetch_uses_the_etag_and_loads_new_versions(
    live: LiveServer, clock: FixedClock, tmp_path: Path
) -> None:
    with FaultProxy(live.port, targets=()) as proxy:
        client = _device(tmp_path, "d", clock, proxy.url)
        assert client.engine.bundle.version == 1
        again = client.fetch_bundle()
        assert again.status == "not_modified" and again.version == 1
        assert [s for p, _, s in proxy.log if p.startswith("GET /v1/bundle")] == [200, 304]
        published = live.state.aggregate(force_publish=True).published
        assert published == 2
        new = client.fetch_bundle()
        assert (new.status, new.version) == ("updated", 2)
        assert client.engine.bundle.digest == live.state.bundle(fresh=True)[0].digest
        assert client.fetch_bundle().status == "not_modified"


def test_a_refused_batch_raises_and_stays_queued(
    live: LiveServer, clock: FixedClock, tmp_path: Path
) -> None:
    # The device's clock runs three days ahead of the server's: its epoch is outside the window.
    device_clock = FixedClock(clock.now() + 3 * 86400)
    client = _device(tmp_path, "ahead", device_clock, live.url)
    _record(client, 2, 0)
    device_clock.advance(60)
    with pytest.raises(SyncError) as err:
        client.flush()
    assert err.value.status == 422
    assert "epoch" in str(err.value)
    sent, pending = _sent_and_pending([client])
    assert sent == [] and len(pending) == 3  # census + 2 engagement, still queued
    assert live.state.storage.counts()["nonces"] == 0
    # Once the server's clock catches up, the same reports go through.
    clock.set(device_clock.now())
    assert client.flush().stored == 3
    assert _sent_and_pending([client])[1] == []


def test_gives_up_after_the_retries_then_delivers_when_the_server_is_back(
    db_url: str, clock: FixedClock, tmp_path: Path
) -> None:
    app = create_app(server_config(db_url, clock))
    with LiveServer(app) as server:
        client = _device(tmp_path, "d", clock, server.url)
    sleeps: list[float] = []
    port = free_port()  # nothing listens here
    client = SyncClient(
        client.engine, f"http://127.0.0.1:{port}", retries=4, backoff=0.5, sleep=sleeps.append,
        rng=random.Random(7),
    )  # fmt: skip
    _record(client, 3, 0)
    clock.advance(60)
    with pytest.raises(SyncError, match="gave up after 5 attempts"):
        client.flush()
    # Exponential back-off with full jitter: the i-th wait is at most 0.5·2^i.
    assert len(sleeps) == 4
    assert all(0 <= s <= 0.5 * 2**i for i, s in enumerate(sleeps))
    assert _sent_and_pending([client])[0] == []
    app = create_app(server_config(db_url, clock))
    with LiveServer(app) as server:
        client.base_url = server.url
        assert client.flush().stored == 4
        assert server.state.storage.counts()["reports"] == 4


def test_a_real_503_is_retried_after_retry_after(
    db_url: str, clock: FixedClock, tmp_path: Path
) -> None:
    from test_server import _hold_lock

    app = create_app(server_config(db_url, clock, busy_timeout_ms=200, retry_after=2))
    with LiveServer(app) as server:
        locked, release = threading.Event(), threading.Event()
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            release.set()  # the database comes back while the client waits

        client = _device(tmp_path, "d", clock, server.url, sleep=sleep)
        _record(client, 2, 0)
        clock.advance(60)
        holder = threading.Thread(target=_hold_lock, args=(db_url, locked, release))
        holder.start()
        assert locked.wait(10)
        try:
            result = client.flush()
        finally:
            release.set()
            holder.join()
        assert result.stored == 3 and result.attempts == 2
        assert sleeps and sleeps[0] >= 2.0  # Retry-After honoured
        assert server.state.storage.counts()["reports"] == 3


def test_sync_client_validates_its_arguments(
    live: LiveServer, clock: FixedClock, tmp_path: Path
) -> None:
    engine = Engine.open(tmp_path / "x.db", public_key=PUBLIC_KEY, clock=clock)
    with pytest.raises(InputError, match=r"^engine:"):
        SyncClient(object(), live.url)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^base_url:"):
        SyncClient(engine, "ftp://x")
    with pytest.raises(InputError, match=r"^retries:"):
        SyncClient(engine, live.url, retries=-1)
    with pytest.raises(InputError, match=r"^backoff:"):
        SyncClient(engine, live.url, backoff=float("nan"))
    with pytest.raises(InputError, match=r"^max_batches:"):
        SyncClient(engine, live.url, max_batches=0)
    # A device with no bundle yet fetches unconditionally.
    with SyncClient(engine, live.url) as client:
        assert client.fetch_bundle().status == "updated"
    assert httpx.get(live.url + "/healthz").status_code == 200


# -- a hostile or broken server: every call ends, within its deadline, with a clear error ----

def _bare_device(tmp_path: Path, url: str, **kw: object) -> SyncClient:
    engine = Engine.open(tmp_path / "bare.db", public_key=PUBLIC_KEY, clock=FixedClock(T0))
    return SyncClient(engine, url, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("behaviour", ["drip_body", "drip_headers"])
@pytest.mark.parametrize("retries", [0, 3])
def test_a_drip_feeding_server_is_cut_off_at_the_deadline(
    tmp_path: Path, behaviour: str, retries: int
) -> None:
    # Each byte comes well within the 2 s read timeout, so only the total deadline can end
    # the call; the retries share that one deadline.
    with HostileServer(behaviour) as server:
        client = _bare_device(tmp_path, server.url, timeout=2.0, deadline=1.0, retries=retries)
        with pytest.raises(SyncDeadlineError, match=r"^GET /v1/bundle: deadline of 1 s exceeded"):
            client.fetch_bundle()
        conns = server.finished_connections()
    # The client hung up on the server before the server had finished dripping, and made no
    # second attempt past its deadline.
    assert len(conns) == 1
    assert conns[0].closed_early and not conns[0].finished
    assert 0 < conns[0].sent < 400
    with pytest.raises(LocalrankError):
        client.engine.bundle  # noqa: B018 - nothing was installed


def test_the_default_deadline_bounds_a_call_by_a_few_read_timeouts(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path / "d.db", public_key=PUBLIC_KEY)
    assert SyncClient(engine, "http://127.0.0.1:1", timeout=2.0).deadline == 12.0
    with pytest.raises(InputError, match=r"^deadline:"):
        SyncClient(engine, "http://127.0.0.1:1", deadline=0)
    with pytest.raises(InputError, match=r"^max_bundle_bytes:"):
        SyncClient(engine, "http://127.0.0.1:1", max_bundle_bytes=3)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("oversize", r"response too large: Content-Length 300,000,000 B exceeds the limit"),
        ("oversize_unannounced", r"response too large: more than 1,048,576 B"),
        ("oversize_bundle_header", r"response too large: the bundle header announces 300,000,088"),
    ],
)
def test_an_oversize_bundle_is_refused_while_streaming(
    tmp_path: Path, behaviour: str, message: str
) -> None:
    with HostileServer(behaviour) as server:
        client = _bare_device(tmp_path, server.url, max_bundle_bytes=1 << 20, retries=2)
        with pytest.raises(SyncError, match="^GET /v1/bundle: " + message):
            client.fetch_bundle()
        conns = server.finished_connections()
    # Refused, not retried, and the download was abandoned: the server got out a small part
    # of the 300 MB (what the socket buffers held) before the client hung up.
    assert len(conns) == 1
    assert conns[0].closed_early and conns[0].sent < BIG // 10


def test_a_truncated_bundle_is_an_error_naming_the_truncation(tmp_path: Path) -> None:
    with HostileServer("truncated") as server:
        client = _bare_device(tmp_path, server.url, retries=1, sleep=lambda s: None)
        with pytest.raises(SyncError, match=r"gave up after 2 attempts \(truncated") as err:
            client.fetch_bundle()
        assert "received 500 bytes, expected 1000" in str(err.value)
        assert len(server.finished_connections()) == 2  # a cut connection is worth a retry


def test_a_wrong_content_type_is_refused(tmp_path: Path) -> None:
    with HostileServer("wrong_type") as server:
        client = _bare_device(tmp_path, server.url, retries=3)
        expected = r"wrong content type: expected application/octet-stream, got 'text/html'"
        with pytest.raises(SyncError, match=expected):
            client.fetch_bundle()
        assert len(server.finished_connections()) == 1  # not retried: a portal answers the same


def test_a_device_follows_a_key_rotation_through_the_server(
    db_url: str, clock: FixedClock, tmp_path: Path
) -> None:
    from localrank.bundle import generate_keypair
    from localrank.bundle.trust import append_to_chain, sign_transition
    from server_fixtures import KEY, base_bundle

    new_key, new_pub = tmp_path / "new.pem", tmp_path / "new.pub.pem"
    generate_keypair(new_key, new_pub)
    chain = tmp_path / "keys.json"
    append_to_chain(
        chain, sign_transition(KEY.read_bytes(), new_pub, sequence=1, valid_from=clock.now())
    )
    base = base_bundle(tmp_path / "base.bundle", signing_key=new_key)
    config = server_config(db_url, clock, key=new_key, key_chain=chain, base_bundle=base)
    with LiveServer(create_app(config)) as server:
        # The device ships the old (demo) public key only.
        engine = Engine.open(tmp_path / "d.db", public_key=PUBLIC_KEY, clock=clock)
        with SyncClient(engine, server.url) as client:
            assert client.fetch_bundle().status == "updated"
            from localrank.bundle import load_public_key

            assert engine.trusted_key == load_public_key(new_pub)
            assert client.fetch_bundle().status == "not_modified"
        r = httpx.get(server.url + "/v1/keys")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert len(r.json()["statements"]) == 1
