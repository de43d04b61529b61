"""The device store as an app lives with it: forgetting for good, writers killed mid-write,
two processes on one file, corrupt or too-new files, bad input to every public method, and a
profile that follows the stored events."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine_fixtures import ALL, DAY, HOUR, LONDON, T0, Keys, ids, offers, open_engine
from localrank.device.engine import Engine
from localrank.device.store import MIGRATIONS, SCHEMA_VERSION
from localrank.errors import InputError, StoreError
from localrank.shared.clock import FixedClock
from localrank.shared.geo import region_of

CATEGORIES = {o.id: set(o.categories) for o in offers()}


def raw_bytes(db: Path) -> dict[str, bytes]:
    """The database, WAL and shared-memory files as they are on disk right now."""
    out = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(f"{db}{suffix}")
        if p.exists():
            out[p.name] = p.read_bytes()
    return out


def where(marker: bytes, files: dict[str, bytes]) -> list[str]:
    return [name for name, data in files.items() if marker in data]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- forget ------------------------------------------------------------------------------------


def secret_event(engine: Engine) -> tuple[int, list[bytes]]:
    """One event with distinctive bytes everywhere: offer id, place, strength and time."""
    strength, t, loc = 1.2345678901234, T0 - 1234.5678, (12.34, 56.78)
    eid = engine.record(
        "purchase",
        context="navigation",
        offer="o-gambling-1",  # no other event mentions this offer
        location=loc,
        strength=strength,
        now=t,
    )
    markers = [
        b"o-gambling-1",
        struct.pack(">d", strength),
        struct.pack(">d", t),
        struct.pack(">d", loc[0]),
        struct.pack(">d", loc[1]),
        region_of(loc).encode(),  # the coarse region stored beside the place
    ]
    return eid, markers


def ordinary_events(engine: Engine, n: int = 40) -> list[int]:
    return [
        engine.record("click", context="shopping", offer=f"o-books-{i % 4}", now=T0 - 2 * HOUR)
        for i in range(n)
    ]


def test_forget_leaves_no_byte_of_the_event(tmp_path: Path, keys, plain):
    db = tmp_path / "device.db"
    engine, _ = open_engine(db, keys, plain)
    kept = ordinary_events(engine, 20)
    eid, markers = secret_event(engine)
    kept += ordinary_events(engine, 20)
    engine.recommend("navigation", location=LONDON)
    # control: every marker is on disk before (the search can find them)
    before = raw_bytes(db)
    for m in markers:
        assert where(m, before), m

    assert engine.forget([eid]) == 1
    after = raw_bytes(db)
    for m in markers:
        assert where(m, after) == [], (m, where(m, after))
    # the other events are all there, and the engine goes on
    assert [e.id for e in engine.events()] == kept
    assert engine.recommend("shopping")
    # forgetting it again is a no-op
    assert engine.forget([eid]) == 0
    engine.close()
    for m in markers:
        assert where(m, raw_bytes(db)) == []


def test_forget_everything_leaves_no_byte_behind(tmp_path: Path, keys, plain):
    db = tmp_path / "device.db"
    engine, _ = open_engine(db, keys, plain)
    ordinary_events(engine, 30)
    _, markers = secret_event(engine)
    engine.set_attributes(age_band="agebandmarker", occupation="zz-occupation-marker-42")
    engine.update_settings(timezone="Pacific/Chatham", sensitive_opt_ins=["gambling"])
    engine.snooze()
    markers += [b"agebandmarker", b"zz-occupation-marker-42", b"Pacific/Chatham"]
    before = raw_bytes(db)
    for m in markers:
        assert where(m, before), m

    assert engine.forget(everything=True) == 31
    after = raw_bytes(db)
    for m in markers:
        assert where(m, after) == [], (m, where(m, after))
    exported = engine.export()
    assert exported["events"] == [] and exported["attributes"] == {}
    assert exported["snoozes"] == []
    assert exported["settings"]["sensitive_opt_ins"] == []
    # the bundle is public and stays: the engine still ranks
    assert engine.recommend("shopping", k=3)


def test_forget_updates_the_profile(tmp_path: Path, keys, plain):
    engine, _ = open_engine(tmp_path / "device.db", keys, plain)
    sci = [
        engine.record("purchase", context="shopping", offer=f"o-sci-fi-{i}", now=T0 - HOUR)
        for i in range(3)
    ]
    music = [
        engine.record("purchase", context="shopping", offer=f"o-music-{i}", now=T0 - HOUR)
        for i in range(4)
    ]
    assert [c for c, _ in engine.interests("shopping")] == ["music", "sci-fi"]
    assert [e.id for e in engine.why_interest("sci-fi")] == sorted(sci, reverse=True)
    engine.forget([sci[0]])  # two left: below the evidence threshold
    assert [c for c, _ in engine.interests("shopping")] == ["music"]
    assert sci[0] not in [e.id for e in engine.why_interest("sci-fi")]
    engine.forget(music)
    assert engine.interests("shopping") == []
    assert not engine.scoring_inputs("shopping").u.any()


def test_forget_in_one_process_reaches_another(tmp_path: Path, keys, plain):
    """Two engines on one file (an app and its widget): what one forgets, the other stops
    using at once, also when everything is forgotten twice."""
    db = tmp_path / "device.db"
    a, clock = open_engine(db, keys, plain)
    b, _ = open_engine(db, keys, None, clock=clock)
    for _ in range(2):
        for i in range(3):
            a.record("purchase", context="shopping", offer=f"o-sci-fi-{i}", now=T0 - HOUR)
        assert [c for c, _ in b.interests("shopping")] == ["sci-fi"]
        a.forget(everything=True)
        assert b.interests("shopping") == []
        assert not b.scoring_inputs("shopping").u.any()
    # and new events after a wipe are seen by the other engine
    for i in range(3):
        a.record("purchase", context="shopping", offer=f"o-music-{i}", now=T0 - HOUR)
    assert [c for c, _ in b.interests("shopping")] == ["music"]


# -- killed writers and concurrent processes ------------------------------------------------

WRITER = r"""
import sys, time
from pathlib import Path
from localrank.shared.clock import FixedClock
from localrank.device.engine import Engine

db, pub, context, n, pause, go = sys.argv[1:7]
n, pause = int(n), float(pause)
engine = Engine.open(db, public_key=pub, clock=FixedClock(float(sys.argv[7])))
if pause:
    # Widen the window between an event's row and its category rows, inside the transaction,
    # so that a kill lands there often.
    class Slow:
        def __init__(self, db):
            self._db = db
        def __getattr__(self, name):
            return getattr(self._db, name)
        def executemany(self, *args):
            time.sleep(pause)
            return self._db.executemany(*args)
    engine._store._db = Slow(engine._store._db)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.005)
offers = ["o-pharmacy-1", "o-sci-fi-0", "o-books-1", "o-music-2"]
for i in range(n):
    eid = engine.record("click", context=context, offer=offers[i % len(offers)],
                        now=engine._clock.now() - 3600)
    print(eid, flush=True)
print("done", flush=True)
"""


def start_writer(db: Path, keys: Keys, context: str, n: int, pause: float, go: Path):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(db),
            str(keys.public),
            context,
            str(n),
            str(pause),
            str(go),
            repr(T0),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_consistent(db: Path) -> list[tuple[int, str, str]]:
    """Integrity, and every event whole: exactly its offer's categories."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        events = con.execute("SELECT id, context, offer FROM events ORDER BY id").fetchall()
        for eid, _, offer in events:
            cats = {
                c
                for (c,) in con.execute(
                    "SELECT category FROM event_categories WHERE event_id = ?", (eid,)
                )
            }
            assert cats == CATEGORIES[offer], f"event {eid} is half-written: {cats}"
        return events
    finally:
        con.close()


def test_a_writer_killed_mid_write_leaves_a_consistent_store(tmp_path: Path, keys, plain):
    db = tmp_path / "device.db"
    engine, _ = open_engine(db, keys, plain)
    engine.close()
    committed: set[int] = set()
    for round_ in range(4):
        go = tmp_path / f"go-{round_}"
        w = start_writer(db, keys, "shopping", 100_000, 0.004, go)
        assert w.stdout is not None
        assert w.stdout.readline().strip() == "ready"
        go.touch()
        printed = []
        deadline = time.monotonic() + 0.15 + 0.05 * round_
        while time.monotonic() < deadline or len(printed) < 10:
            printed.append(int(w.stdout.readline()))
        os.kill(w.pid, signal.SIGKILL)
        w.wait()
        printed += [int(x) for x in w.stdout.read().split() if x.isdigit()]
        committed |= set(printed)
        events = check_consistent(db)
        stored = {e[0] for e in events}
        # nothing that committed is lost; at most the event being committed as the kill
        # landed is there without having been acknowledged
        assert committed <= stored
        assert len(stored - committed) <= 1
        committed = stored
    # the store reopens and the engine works on it
    again, _ = open_engine(db, keys, None)
    assert len(again.events()) == len(committed)
    assert again.recommend("shopping", k=3)


def test_two_processes_writing_one_file_lose_nothing(tmp_path: Path, keys, plain):
    db = tmp_path / "device.db"
    engine, _ = open_engine(db, keys, plain)
    go = tmp_path / "go"
    n = 150
    writers = [start_writer(db, keys, c, n, 0.0, go) for c in ("shopping", "news")]
    for w in writers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    go.touch()
    # this process keeps ranking (and purging: a write) while the others write
    reads = 0
    while any(w.poll() is None for w in writers):
        assert engine.recommend("shopping", k=3)
        reads += 1
    outs = []
    for w in writers:
        out, err = w.communicate()
        assert w.returncode == 0, err
        outs.append([int(x) for x in out.split() if x.isdigit()])
        assert out.split()[-1] == "done"
    assert reads > 0
    assert all(len(o) == n for o in outs)
    assert not set(outs[0]) & set(outs[1])
    events = check_consistent(db)
    by_context = {c: {e[0] for e in events if e[1] == c} for c in ("shopping", "news")}
    assert by_context["shopping"] == set(outs[0])
    assert by_context["news"] == set(outs[1])
    # the engine of this process sees everything the others wrote
    assert len(engine.events()) == 2 * n
    assert engine.interests("shopping")


# -- files that are not a usable store ----------------------------------------------------------


def refused(db: Path, keys: Keys, match: str) -> StoreError:
    digest = sha(db)
    with pytest.raises(StoreError, match=match) as info:
        Engine.open(db, public_key=keys.public, clock=FixedClock(T0))
    gc.collect()  # a connection left behind would checkpoint into the file when collected
    assert sha(db) == digest, "the refused file was modified"
    assert str(db) in str(info.value)
    # refused again, the same way: never silently reset
    with pytest.raises(StoreError, match=match):
        Engine.open(db, public_key=keys.public, clock=FixedClock(T0))
    gc.collect()
    assert sha(db) == digest
    return info.value


def test_random_bytes_are_refused_untouched(tmp_path: Path, keys):
    db = tmp_path / "device.db"
    db.write_bytes(np.random.default_rng(1).bytes(16384))
    refused(db, keys, "not a usable localrank store")


def filled_store(db: Path, keys: Keys, bundle: bytes, n: int = 300) -> None:
    engine, _ = open_engine(db, keys, bundle)
    ordinary_events(engine, n)
    engine.close()
    gc.collect()
    assert not Path(f"{db}-wal").exists()  # checkpointed on close: one file to damage


@pytest.mark.parametrize("keep", [0.5, 0.9, 4096 + 100, 100])
def test_a_truncated_store_is_refused_untouched(tmp_path: Path, keys, plain, keep: float):
    db = tmp_path / "device.db"
    filled_store(db, keys, plain)
    data = db.read_bytes()
    cut = int(len(data) * keep) if keep < 1 else int(keep)
    db.write_bytes(data[:cut])
    refused(db, keys, r"store: .*(corrupt|not a usable)")


def test_a_truncated_older_store_is_refused_before_any_migration(tmp_path: Path, keys, plain):
    """A damaged store of an older schema must not be migrated (written) before it is found
    to be damaged."""
    db = tmp_path / "device.db"
    v1_store(db, 300)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    refused(db, keys, r"store: .*(corrupt|not a usable)")


def test_a_newer_schema_is_refused_untouched(tmp_path: Path, keys, plain):
    db = tmp_path / "device.db"
    filled_store(db, keys, plain, 10)
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    err = refused(db, keys, "newer")
    assert f"{SCHEMA_VERSION + 1}" in str(err) and f"{SCHEMA_VERSION}" in str(err)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 10
    con.close()


def test_another_applications_database_is_refused_untouched(tmp_path: Path, keys):
    db = tmp_path / "notes.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('buy milk')")
    con.commit()
    con.close()
    refused(db, keys, "not a localrank store")


def v1_store(db: Path, n: int) -> None:
    """A store as the first schema version wrote it, with ``n`` click events."""
    con = sqlite3.connect(db)
    con.executescript(MIGRATIONS[0])
    for i in range(n):
        offer = f"o-books-{i % 4}"
        eid = con.execute(
            "INSERT INTO events (kind, context, offer, strength, t) VALUES (?, ?, ?, ?, ?)",
            ("click", "shopping", offer, 1.0, T0 - 2 * HOUR),
        ).lastrowid
        con.execute("INSERT INTO event_categories VALUES (?, ?)", (eid, "books"))
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()


def test_an_old_store_is_migrated(tmp_path: Path, keys, plain):
    db = tmp_path / "device.db"
    v1_store(db, 10)
    engine, _ = open_engine(db, keys, plain)
    assert len(engine.events()) == 10
    assert [c for c, _ in engine.interests("shopping")] == ["books"]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    assert engine.recommend("shopping")


# -- bad input to every public method ---------------------------------------------------------

FUTURE = T0 + 3600


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, keys, plain) -> Engine:
    e, _ = open_engine(tmp_path_factory.mktemp("bad") / "device.db", keys, plain)
    e.record("click", context="shopping", offer="o-books-0", now=T0 - HOUR)
    return e


def rec(**kw: Any) -> Callable[[Engine], Any]:
    base: dict[str, Any] = {"kind": "click", "context": "shopping", "offer": "o-books-0"}
    base.update(kw)
    kind = base.pop("kind")
    return lambda e: e.record(kind, **base)


BAD: list[tuple[str, str, Callable[[Engine], Any]]] = [
    # record
    ("kind", "unknown kind", rec(kind="like")),
    ("kind", "kind not a string", rec(kind=None)),
    ("context", "unknown context", rec(context="calculator")),
    ("context", "context not a string", rec(context=3)),
    ("offer", "offer not in the catalog", rec(offer="o-nope")),
    ("offer", "offer not a string", rec(offer=42)),
    ("offer", "an impression without its offer", rec(kind="impression", offer=None)),
    ("category", "unknown category", rec(kind="view", offer=None, category="astrology")),
    ("category", "category not a string", rec(kind="view", offer=None, category=["books"])),
    ("offer", "a view of nothing", rec(kind="view", offer=None)),
    ("location", "a visit without a place", rec(kind="visit", offer=None)),
    ("location", "latitude out of range", rec(location=(91.0, 0.0))),
    ("location", "longitude out of range", rec(location=(0.0, 180.5))),
    ("location", "NaN latitude", rec(location=(math.nan, 0.0))),
    ("location", "a string", rec(location="here")),
    ("location", "three numbers", rec(location=(1.0, 2.0, 3.0))),
    ("location", "booleans", rec(location=(True, False))),
    ("strength", "negative", rec(strength=-1.0)),
    ("strength", "NaN", rec(strength=math.nan)),
    ("strength", "infinite", rec(strength=math.inf)),
    ("strength", "absurdly large", rec(strength=1e308)),
    ("strength", "a string", rec(strength="1")),
    ("strength", "a boolean", rec(strength=True)),
    ("now", "in the future", rec(now=FUTURE)),
    ("now", "NaN", rec(now=math.nan)),
    ("now", "a string", rec(now="yesterday")),
    ("now", "a naive datetime", rec(now=datetime(2026, 3, 2, 11))),
    # set_attributes
    ("age_band", "empty", lambda e: e.set_attributes(age_band="")),
    ("occupation", "not a string", lambda e: e.set_attributes(occupation=5)),
    ("occupation", "too long", lambda e: e.set_attributes(occupation="x" * 65)),
    ("region", "unknown region", lambda e: e.set_attributes(region="mars")),
    # recommend and scoring_inputs
    ("k", "zero", lambda e: e.recommend("shopping", k=0)),
    ("k", "negative", lambda e: e.recommend("shopping", k=-3)),
    ("k", "a float", lambda e: e.recommend("shopping", k=2.5)),
    ("k", "a boolean", lambda e: e.recommend("shopping", k=True)),
    ("k", "a string", lambda e: e.recommend("shopping", k="5")),
    ("context", "unknown context", lambda e: e.recommend("calculator")),
    ("context", "the segments row is no app", lambda e: e.recommend("segments")),
    ("location", "bad location", lambda e: e.recommend("navigation", location=(0.0, 999.0))),
    ("now", "in the future", lambda e: e.recommend("shopping", now=FUTURE)),
    ("context", "unknown context", lambda e: e.scoring_inputs("calculator")),
    ("location", "bad location", lambda e: e.scoring_inputs("navigation", location=[1.0])),
    ("now", "in the future", lambda e: e.scoring_inputs("shopping", now=FUTURE)),
    # segment, interests, why_interest, snooze, events
    ("now", "in the future", lambda e: e.segment(now=FUTURE)),
    ("context", "unknown context", lambda e: e.interests("calculator")),
    ("now", "in the future", lambda e: e.interests("shopping", now=FUTURE)),
    ("category", "unknown category", lambda e: e.why_interest("astrology")),
    ("category", "not a string", lambda e: e.why_interest(["books"])),
    ("now", "in the future", lambda e: e.why_interest("books", now=FUTURE)),
    ("now", "in the future", lambda e: e.snooze(now=FUTURE)),
    ("now", "in the future", lambda e: e.next_report_at(now=FUTURE)),
    ("now", "a string", lambda e: e.next_report_at(now="soon")),
    ("limit", "not a number", lambda e: e.events(limit="all")),
    ("limit", "negative", lambda e: e.events(limit=-1)),
    # forget
    ("event_ids", "neither ids nor everything", lambda e: e.forget()),
    ("event_ids", "both", lambda e: e.forget([1], everything=True)),
    ("event_ids", "not a list", lambda e: e.forget(5)),
    ("event_ids", "not integers", lambda e: e.forget(["abc"])),
    ("event_ids", "a fraction", lambda e: e.forget([1.5])),
    ("event_ids", "a boolean", lambda e: e.forget([True])),
    ("everything", "not a boolean", lambda e: e.forget(everything="yes")),
    ("now", "in the future", lambda e: e.forget([1], now=FUTURE)),
    # update_settings
    ("level", "unknown level", lambda e: e.update_settings(level="max")),
    ("quiet_hours", "hour 25", lambda e: e.update_settings(quiet_hours=(25, 1))),
    ("quiet_hours", "one number", lambda e: e.update_settings(quiet_hours=5)),
    ("quiet_hours", "a string", lambda e: e.update_settings(quiet_hours="22-7")),
    ("quiet_hours", "booleans", lambda e: e.update_settings(quiet_hours=(True, 7))),
    ("timezone", "unknown zone", lambda e: e.update_settings(timezone="Mars/Olympus")),
    ("timezone", "not a string", lambda e: e.update_settings(timezone=5)),
    ("timezone", "None", lambda e: e.update_settings(timezone=None)),
    ("daily_cap", "negative", lambda e: e.update_settings(daily_cap=-1)),
    ("daily_cap", "a float", lambda e: e.update_settings(daily_cap=2.5)),
    ("offer_cap", "a string", lambda e: e.update_settings(offer_cap="3")),
    ("context_overrides", "not a mapping", lambda e: e.update_settings(context_overrides=5)),
    (
        "context_overrides",
        "signals not a list",
        lambda e: e.update_settings(context_overrides={"game": 5}),
    ),
    (
        "context_overrides",
        "a string for a list",
        lambda e: e.update_settings(context_overrides={"game": "browsing"}),
    ),
    (
        "context_overrides",
        "unknown context",
        lambda e: e.update_settings(context_overrides={"calculator": []}),
    ),
    (
        "context_overrides",
        "unknown signal",
        lambda e: e.update_settings(context_overrides={"game": ["telepathy"]}),
    ),
    (
        "context_overrides",
        "widening",
        lambda e: e.update_settings(context_overrides={"game": ["location"]}),
    ),
    (
        "sensitive_opt_ins",
        "not sensitive",
        lambda e: e.update_settings(sensitive_opt_ins=["books"]),
    ),
    (
        "sensitive_opt_ins",
        "unknown category",
        lambda e: e.update_settings(sensitive_opt_ins=["astrology"]),
    ),
    ("sensitive_opt_ins", "not a list", lambda e: e.update_settings(sensitive_opt_ins=5)),
    ("sensitive_opt_ins", "a string", lambda e: e.update_settings(sensitive_opt_ins="health")),
    ("sensitive_opt_ins", "not strings", lambda e: e.update_settings(sensitive_opt_ins=[1])),
    ("reporting", "not a boolean", lambda e: e.update_settings(reporting="yes")),
    ("settings", "unknown setting 'volume'", lambda e: e.update_settings(volume=11)),
    # load_bundle
    ("source", "not bytes or a path", lambda e: e.load_bundle(42)),
    ("source", "a missing file", lambda e: e.load_bundle("/nonexistent/bundle")),
    ("now", "in the future", lambda e: e.load_bundle(b"LRBUNDLE", now=T0 + 400 * DAY)),
]


@pytest.mark.parametrize(("arg", "what", "call"), BAD, ids=[f"{a}: {w}" for a, w, _ in BAD])
def test_bad_input_is_refused_naming_the_argument(engine: Engine, arg, what, call):
    before = engine.export()
    settings = engine.settings
    with pytest.raises(InputError, match=rf"^{arg}\b") as info:
        call(engine)
    assert isinstance(info.value, ValueError)
    if "volume" in what:
        assert "volume" in str(info.value)
    # nothing changed
    assert engine.export() == before
    assert engine.settings == settings


def test_bad_arguments_to_open(tmp_path: Path, keys, plain):
    cases: list[tuple[str, dict[str, Any]]] = [
        ("public_key", {"public_key": 42}),
        ("public_key", {"public_key": tmp_path / "missing.pem"}),
        ("public_key", {"public_key": b"-----BEGIN PUBLIC KEY-----\ngarbage\n"}),
        ("clock", {"public_key": keys.public, "clock": "noon"}),
        ("tuning", {"public_key": keys.public, "tuning": {"w_dot": 2}}),
        ("source", {"public_key": keys.public, "bundle": 42}),
    ]
    for i, (arg, kw) in enumerate(cases):
        with pytest.raises(InputError, match=rf"^{arg}\b"):
            Engine.open(tmp_path / f"d{i}.db", **kw)


def test_events_at_the_edge_of_the_future_are_accepted(engine: Engine):
    """Clock skew between an app and the engine is tolerated (a few minutes), no more."""
    eid = engine.record("click", context="shopping", offer="o-books-1", now=T0 + 299)
    assert eid in [e.id for e in engine.events()]
    engine.forget([eid])


# -- the profile follows the store -------------------------------------------------------------


def rebuilt(tmp_path: Path, keys: Keys, bundle: bytes, history: list[tuple], now: float):
    """A brand-new engine at ``now`` with the same events: the profile rebuilt from scratch."""
    e, _ = open_engine(tmp_path / f"ref-{now:.0f}.db", keys, bundle, clock=FixedClock(now))
    for kind, context, offer, t in history:
        e.record(kind, context=context, offer=offer, now=t)
    return e


def test_the_profile_picks_up_events_recorded_after_a_recommend(tmp_path: Path, keys, plain):
    engine, clock = open_engine(tmp_path / "device.db", keys, plain)
    history: list[tuple] = []

    def add(kind: str, offer: str, t: float) -> None:
        engine.record(kind, context="shopping", offer=offer, now=t)
        history.append((kind, "shopping", offer, t))

    for i in range(3):
        add("purchase", f"o-sci-fi-{i}", T0 - 2 * HOUR)
    first = engine.recommend("shopping", k=ALL)
    u1 = engine.scoring_inputs("shopping").u
    assert [c for c, _ in engine.interests("shopping")] == ["sci-fi"]

    clock.advance(HOUR)
    for i in range(4):
        add("purchase", f"o-games-{i}", clock.now() - HOUR)
    add("click", "o-sci-fi-3", clock.now() - HOUR)
    second = engine.recommend("shopping", k=ALL)
    u2 = engine.scoring_inputs("shopping").u
    assert ids(second) != ids(first)
    assert [c for c, _ in engine.interests("shopping")] == ["games", "sci-fi"]
    assert not np.allclose(u1, u2)
    # incremental == rebuilt from scratch
    ref = rebuilt(tmp_path, keys, plain, history, clock.now())
    np.testing.assert_allclose(u2, ref.scoring_inputs("shopping").u, rtol=1e-5, atol=1e-6)
    assert ids(ref.recommend("shopping", k=ALL)) == ids(second)

    # time moves on: decay, still matching a rebuild
    clock.advance(10 * DAY)
    u3 = engine.scoring_inputs("shopping").u
    ref = rebuilt(tmp_path, keys, plain, history, clock.now())
    np.testing.assert_allclose(u3, ref.scoring_inputs("shopping").u, rtol=1e-5, atol=1e-6)
    for (c, w), (c_ref, w_ref) in zip(
        engine.interests("shopping"), ref.interests("shopping"), strict=True
    ):
        assert c == c_ref and math.isclose(w, w_ref, rel_tol=1e-9)


def test_events_expire_after_the_retention(tmp_path: Path, keys, plain):
    from localrank.device.engine import RETENTION_S

    engine, clock = open_engine(tmp_path / "device.db", keys, plain)
    old = engine.record("click", context="shopping", offer="o-books-0", now=T0 - 2 * HOUR)
    clock.set(T0 - 2 * HOUR + RETENTION_S - 1)
    engine.recommend("shopping")
    assert [e.id for e in engine.events()] == [old]
    # expiry is checked at most once an hour of engine time
    clock.set(T0 - 2 * HOUR + RETENTION_S + HOUR + 1)
    engine.recommend("shopping")
    assert engine.events() == []


def test_export_shows_what_is_stored_and_places_only_rounded(tmp_path: Path, keys, plain):
    db = tmp_path / "device.db"
    engine, _ = open_engine(db, keys, plain)
    precise = (51.50735, -0.12776)
    eid = engine.record(
        "visit", context="navigation", location=precise, category="coffee", now=T0 - HOUR
    )
    engine.record("click", context="shopping", offer="o-books-0", strength=2.5, now=T0 - HOUR)
    engine.set_attributes(age_band="35-44")
    exported = json.loads(json.dumps(engine.export(), allow_nan=False))
    visit, click = exported["events"]
    assert visit["id"] == eid and visit["kind"] == "visit" and visit["category"] == "coffee"
    assert tuple(visit["location"]) == (51.51, -0.13)  # the user sees where they were stored
    assert click["offer"] == "o-books-0" and click["strength"] == 2.5
    assert click["location"] is None
    assert exported["attributes"] == {"age_band": "35-44"}
    assert [tuple(e.location or ()) for e in engine.why_interest("coffee")] == [(51.51, -0.13)]
    # the precise coordinates never reach the disk, the rounded ones do
    engine.close()
    files = raw_bytes(db)
    for v in precise:
        assert where(struct.pack(">d", v), files) == []
    assert where(struct.pack(">d", 51.51), files)
