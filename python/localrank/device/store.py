"""The device store: one SQLite file in WAL mode, versioned migrations, foreign keys.

Everything personal lives here and nowhere else. Writes are single transactions, so a process
killed mid-write leaves the previous state; several processes may share the file (SQLite's
locking, a busy timeout). A file that is corrupt, or was written by a newer schema, is refused
with a :class:`~localrank.errors.StoreError`, never silently reset.

Deletion uses ``secure_delete`` (freed pages are zeroed), and :meth:`Store.scrub` checkpoints
the WAL into the database, truncates it, and vacuums, so no byte of a forgotten row survives in
the database, the WAL or the shared-memory file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from localrank.errors import StoreError

__all__ = ["SCHEMA_VERSION", "Store"]

# Each entry migrates from version i to i + 1. Never edit a released entry; append.
MIGRATIONS: tuple[str, ...] = (
    # 1: events, attributes, settings, the installed bundle, profile accumulators
    """
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY,
        kind      TEXT NOT NULL,
        context   TEXT NOT NULL,
        offer     TEXT,
        category  TEXT,
        lat       REAL,
        lon       REAL,
        strength  REAL NOT NULL,
        t         REAL NOT NULL
    );
    CREATE INDEX events_t ON events(t);
    CREATE INDEX events_offer ON events(offer, t);
    CREATE TABLE event_categories (
        event_id  INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        category  TEXT NOT NULL,
        PRIMARY KEY (event_id, category)
    );
    CREATE INDEX event_categories_category ON event_categories(category);
    CREATE TABLE attributes (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE bundle (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        version   INTEGER NOT NULL,
        digest    TEXT NOT NULL,
        data      BLOB NOT NULL
    );
    CREATE TABLE snoozes (
        scope     TEXT PRIMARY KEY,          -- '*' for everything, else an offer id
        until     REAL NOT NULL,
        level     INTEGER NOT NULL,          -- back-off step: the next snooze lasts longer
        t         REAL NOT NULL
    );
    """,
    # 2: what leaves the device: memoised permanent responses, the privacy ledger, the outbox
    """
    CREATE TABLE memos (
        domain    TEXT NOT NULL,             -- what was randomised, e.g. 'segment:grr:1650'
        value     INTEGER NOT NULL,          -- the true value
        epsilon   REAL NOT NULL,             -- the permanent response's ε∞
        response  BLOB NOT NULL,             -- the memoised permanent response
        t         REAL NOT NULL,
        PRIMARY KEY (domain, value)
    );
    CREATE TABLE ledger (
        id        INTEGER PRIMARY KEY,
        t         REAL NOT NULL,
        epoch     INTEGER NOT NULL,
        kind      TEXT NOT NULL,             -- 'report', 'memo', ...
        report    TEXT,                      -- the outbox nonce, if any
        epsilon   REAL NOT NULL,
        note      TEXT NOT NULL
    );
    CREATE INDEX ledger_t ON ledger(t);
    CREATE TABLE pending (
        event_id  INTEGER PRIMARY KEY REFERENCES events(id) ON DELETE CASCADE,
        t         REAL NOT NULL
    );
    CREATE TABLE outbox (
        id        INTEGER PRIMARY KEY,
        nonce     TEXT NOT NULL UNIQUE,
        kind      TEXT NOT NULL,
        epoch     INTEGER NOT NULL,
        payload   TEXT NOT NULL,             -- the exact JSON that is sent
        epsilon   REAL NOT NULL,
        queued_at REAL NOT NULL,
        shuffle   INTEGER NOT NULL,          -- random order within a batch
        taken_at  REAL,
        sent_at   REAL,
        destination TEXT
    );
    CREATE INDEX outbox_state ON outbox(sent_at, epoch);
    """,
    # 3: the coarse region of an event's place, kept beside it so segments need no geohashing
    """
    ALTER TABLE events ADD COLUMN region TEXT;
    CREATE INDEX events_region ON events(kind, region, t);
    """,
    # 4: which event an engagement report came from, so forgetting the event drops the report
    #    if it has not left yet
    """
    ALTER TABLE outbox ADD COLUMN event_id INTEGER;
    """,
    # 5: range scans by kind and time (the daily cap counts the last 24 h of impressions on
    #    every ranking call) without touching the other kinds' rows
    """
    CREATE INDEX events_kind_t ON events(kind, t, offer);
    """,
    # 6: central mode's device-level guarantee: the offers this device has reported in
    #    central mode (each at most once in its lifetime, and counted against L and W), and
    #    the zCDP ρ each ledger line spends
    """
    ALTER TABLE ledger ADD COLUMN rho REAL;
    CREATE TABLE reported_offers (
        offer     TEXT PRIMARY KEY,          -- a public catalog offer id
        epoch     INTEGER NOT NULL,
        t         REAL NOT NULL
    );
    CREATE INDEX reported_offers_t ON reported_offers(t);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """A connection to the device store. Thread-safe; one per engine."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreError(f"store: cannot open {self.path}: {e}") from e
        try:
            # Look before writing anything: a file that is not a usable store is refused
            # exactly as it was found.
            self._check()
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            # NORMAL in WAL mode: a killed process loses nothing that committed; only a power
            # loss can drop the last commits, and never leaves the file inconsistent.
            self._db.execute("PRAGMA synchronous = NORMAL")
            if str(mode).lower() != "wal":
                raise StoreError(f"store: {self.path}: cannot enable WAL mode (got {mode})")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(
                f"store: {self.path} is not a usable localrank store ({e}); it was left "
                "untouched — move it aside to start afresh"
            ) from e
        except BaseException:
            self._db.close()
            raise

    def _check(self) -> None:
        """Refuse, without writing, a file of a newer schema, another application's
        database, or a damaged one."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        self._refuse_newer(version)
        if version == 0:
            tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreError(
                    f"store: {self.path} is not a localrank store: it is an SQLite database "
                    f"of something else ({tables} schema objects, no localrank schema "
                    "version); it was left untouched"
                )
        ok = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise StoreError(f"store: {self.path} is corrupt: {ok}; it was left untouched")

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store: {self.path} has schema version {version}, newer than this "
                f"localrank's {SCHEMA_VERSION}; upgrade localrank to open it (the file was "
                "left untouched)"
            )

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            self._refuse_newer(version)  # another process may have upgraded it meanwhile
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {v + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: ``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def query(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> list[tuple[Any, ...]]:
        """Rows of one read. Only a table's owner module queries it (docs/architecture.md)."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- the settings table: small named values ------------------------------------------------
    # 'settings' (the user's Settings as JSON), 'key_trust' (the server's key chain),
    # 'generation' (bumped whenever events are deleted, so other processes rebuild) and
    # 'silent_until' (the quiet period after forget(everything=True)).

    def setting(self, key: str) -> str | None:
        """The stored value named ``key``, or None."""
        rows = self.query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    @staticmethod
    def put_setting(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @staticmethod
    def delete_settings_except(db: sqlite3.Connection, keep: tuple[str, ...]) -> None:
        marks = ", ".join("?" * len(keep))
        db.execute(f"DELETE FROM settings WHERE key NOT IN ({marks})", keep)

    def generation(self) -> int:
        """How many times events were deleted, by any process sharing the file."""
        value = self.setting("generation")
        return int(value) if value is not None else 0

    @staticmethod
    def bump_generation(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO settings (key, value) VALUES ('generation', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
        )

    # -- the attributes table: on-device demographics -----------------------------------------

    def attributes(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.query("SELECT key, value FROM attributes")}

    @staticmethod
    def put_attribute(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO attributes (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- the bundle table: the installed bundle ------------------------------------------------

    def installed_bundle(self) -> tuple[bytes, int] | None:
        """(data, version) of the installed bundle, or None."""
        rows = self.query("SELECT data, version FROM bundle WHERE id = 1")
        return (bytes(rows[0][0]), int(rows[0][1])) if rows else None

    @staticmethod
    def put_bundle(db: sqlite3.Connection, version: int, digest: str, data: bytes) -> None:
        db.execute(
            "INSERT INTO bundle (id, version, digest, data) VALUES (1, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET version = excluded.version, "
            "digest = excluded.digest, data = excluded.data",
            (version, digest, data),
        )

    # -- the snoozes table ---------------------------------------------------------------------

    def snooze(self) -> tuple[float, int, float] | None:
        """(until, back-off level, when) of the snooze of everything, or None."""
        rows = self.query("SELECT until, level, t FROM snoozes WHERE scope = '*'")
        return (float(rows[0][0]), int(rows[0][1]), float(rows[0][2])) if rows else None

    @staticmethod
    def put_snooze(db: sqlite3.Connection, until: float, level: int, t: float) -> None:
        db.execute(
            "INSERT INTO snoozes (scope, until, level, t) VALUES ('*', ?, ?, ?) "
            "ON CONFLICT(scope) DO UPDATE SET until = excluded.until, "
            "level = excluded.level, t = excluded.t",
            (until, level, t),
        )

    def snoozes(self) -> list[dict[str, Any]]:
        rows = self.query("SELECT scope, until, level, t FROM snoozes")
        return [dict(zip(("scope", "until", "level", "t"), r, strict=True)) for r in rows]

    @staticmethod
    def forget_user_tables(db: sqlite3.Connection) -> None:
        """Wipe the attributes and snoozes, and every setting but the generation (so other
        processes see the wipe) and the key chain (the server's, not the user's: dropping it
        would re-trust retired keys)."""
        db.execute("DELETE FROM attributes")
        db.execute("DELETE FROM snoozes")
        Store.delete_settings_except(db, ("generation", "key_trust"))

    def scrub(self) -> None:
        """Push every change into the main file, truncate the WAL and vacuum, so deleted rows
        leave no bytes behind (with ``secure_delete`` zeroing freed pages)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])
