"""Server storage: one schema and one list of migrations, two backends.

:func:`open_storage` takes a database URL:

- ``sqlite:///path/to/file.db`` (the embedded default; WAL mode, ``synchronous=FULL``);
- ``postgresql://user@host:port/db`` (psycopg 3; several ingest workers share it).

Tables (``docs/server.md`` explains each):

``reports``
    Raw reports awaiting aggregation: the nonce, the epoch, the kind, the configuration
    (mode, oracle, ε, ε_perm), the segment or the OUE bits, the offer and the event. No batch
    id, no arrival time, no client address: nothing links two reports of one device.
``nonces``
    Every nonce stored, with its epoch, kept for :data:`NONCE_RETENTION_EPOCHS` after the raw
    report itself is gone, so that a retried report is answered "already stored".
``sums``
    Folded partial sums of closed epochs (one blob per epoch, configuration, kind and part).
    Partial sums merge by addition, so any number of parts per epoch may exist.
``folded``
    The epochs whose raw reports were folded into ``sums``.
``bundles``
    Every published bundle (its signed bytes), by version.
``releases``
    Central mode's continual release (:mod:`localrank.server.central_release`): one row per
    release step of a counter series, holding the mechanism's state after that step. The
    primary key (series, step) makes each step's noise drawn and stored once, whatever the
    number of aggregation workers.

The SQL is written once with ``?`` placeholders and ``{blob}``-style type tokens; each backend
substitutes its own. A backend fault (locked, unreachable, read-only, out of space) surfaces as
:class:`StorageUnavailableError`, which the HTTP layer turns into 503 with Retry-After.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

from localrank.errors import InputError, LocalrankError

__all__ = [
    "MIGRATIONS",
    "NONCE_RETENTION_EPOCHS",
    "BundleRow",
    "ReleaseRow",
    "ReportRow",
    "SqlStorage",
    "Storage",
    "StorageUnavailableError",
    "SumRow",
    "Tx",
    "open_storage",
]

#: Nonces are kept this many epochs past their report's epoch. A device retries a report only
#: while its epoch is inside the accepted window (current ± 1), so 7 days is a wide margin.
NONCE_RETENTION_EPOCHS = 7

# Each entry migrates from version i to i + 1. Never edit a released entry; append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE reports (
        nonce    TEXT PRIMARY KEY,
        epoch    INTEGER NOT NULL,
        kind     TEXT NOT NULL,
        config   TEXT NOT NULL,
        segment  BIGINT,
        bits     {blob},
        offer    TEXT,
        event    TEXT
    ){without_rowid};
    CREATE INDEX reports_epoch ON reports (epoch);
    CREATE TABLE nonces (
        nonce    TEXT PRIMARY KEY,
        epoch    INTEGER NOT NULL
    ){without_rowid};
    CREATE INDEX nonces_epoch ON nonces (epoch);
    CREATE TABLE sums (
        epoch    INTEGER NOT NULL,
        config   TEXT NOT NULL,
        kind     TEXT NOT NULL,
        part     TEXT NOT NULL,
        n        BIGINT NOT NULL,
        data     {blob} NOT NULL,
        PRIMARY KEY (epoch, config, kind, part)
    );
    CREATE TABLE folded (
        epoch    INTEGER PRIMARY KEY,
        at       {double} NOT NULL
    );
    CREATE TABLE bundles (
        version  INTEGER PRIMARY KEY,
        digest   TEXT NOT NULL,
        created  {double} NOT NULL,
        data     {blob} NOT NULL
    );
    """,
    """
    CREATE TABLE releases (
        series      INTEGER NOT NULL,
        step        INTEGER NOT NULL,
        first_epoch INTEGER NOT NULL,
        at          {double} NOT NULL,
        data        {blob} NOT NULL,
        PRIMARY KEY (series, step)
    );
    """,
)


class StorageUnavailableError(LocalrankError):
    """The database cannot serve the request right now (locked, unreachable, read-only, full).
    Nothing was written; the client should retry later."""


@dataclass(frozen=True)
class ReportRow:
    """One validated report, as stored. ``config`` is ``mode:oracle:epsilon:epsilon_perm``."""

    nonce: str
    epoch: int
    kind: str
    config: str
    segment: int | None
    bits: bytes | None
    offer: str | None
    event: str | None


@dataclass(frozen=True)
class SumRow:
    """A folded partial sum: ``data`` is an ``npz`` blob (:mod:`localrank.server.sums`)."""

    epoch: int
    config: str
    kind: str
    part: str
    n: int
    data: bytes


@dataclass(frozen=True)
class BundleRow:
    version: int
    digest: str
    created: float
    data: bytes


@dataclass(frozen=True)
class ReleaseRow:
    """One step of a continual-release series: ``data`` is an ``npz`` blob of the mechanism's
    state after the step (:mod:`localrank.server.central_release`)."""

    series: int
    step: int
    first_epoch: int
    at: float
    data: bytes


class Storage(abc.ABC):
    """What the server needs from a database. Every method is one transaction."""

    url_scheme: str = ""

    # -- lifecycle ----------------------------------------------------------------------------

    @abc.abstractmethod
    def migrate(self) -> int:
        """Apply pending migrations; return the schema version."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise :class:`StorageUnavailableError` unless the database answers."""

    # -- ingest -------------------------------------------------------------------------------

    @abc.abstractmethod
    def store_reports(self, rows: Sequence[ReportRow], closed_before: int) -> list[bool]:
        """Store a batch, all or nothing. Returns, per row, True if it was stored now and False
        if its nonce was already held. Refuses (InputError) the whole batch if any row's epoch
        is already folded or is below ``closed_before``."""

    # -- aggregation ---------------------------------------------------------------------------

    @abc.abstractmethod
    def raw_epochs(self) -> list[int]:
        """Epochs that have raw reports not yet folded."""

    @abc.abstractmethod
    def raw_reports(self, epoch: int) -> list[ReportRow]:
        """The raw reports of ``epoch`` (nonce left empty: aggregation never needs it)."""

    @abc.abstractmethod
    def fold(self, epoch: int, sums: Iterable[SumRow], now: float, delete_raw: bool) -> bool:
        """Atomically record ``sums`` for ``epoch``, mark it folded and (if ``delete_raw``)
        delete its raw reports. Returns False, writing nothing, if it was already folded."""

    @abc.abstractmethod
    def folded_epochs(self) -> list[int]: ...

    @abc.abstractmethod
    def sums(self, first_epoch: int, last_epoch: int) -> list[SumRow]:
        """Every partial sum of folded epochs in ``[first_epoch, last_epoch]``."""

    @abc.abstractmethod
    def purge(
        self, raw_before: int, nonces_before: int, sums_before: int, keep_bundles: int
    ) -> tuple[int, int]:
        """Delete raw reports of folded epochs below ``raw_before``, nonces of epochs below
        ``nonces_before``, partial sums of epochs below ``sums_before`` and all but the latest
        ``keep_bundles`` bundles; return how many raw reports and nonces went."""

    # -- bundles --------------------------------------------------------------------------------

    @abc.abstractmethod
    def latest_bundle(self) -> BundleRow | None: ...

    @abc.abstractmethod
    def bundles(self) -> list[BundleRow]:
        """Every stored bundle (the latest ``keep_bundles``), oldest first: ingest accepts the
        report configurations of those still inside the window."""

    @abc.abstractmethod
    def latest_bundle_digest(self) -> tuple[int, str] | None:
        """``(version, digest)`` of the latest bundle, without its bytes."""

    @abc.abstractmethod
    def add_bundle(self, row: BundleRow) -> bool:
        """Insert a bundle; False if that version exists already (another worker won)."""

    # -- central mode's continual release -------------------------------------------------------

    @abc.abstractmethod
    def latest_release(self) -> ReleaseRow | None:
        """The last release step stored (highest series, then step), or None."""

    @abc.abstractmethod
    def add_release(self, row: ReleaseRow) -> bool:
        """Insert a release step; False, writing nothing, if that (series, step) exists (another
        worker released it first: its noise is the one that counts)."""

    # -- inspection (metrics, tests, the load test) --------------------------------------------

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Row counts: ``reports``, ``nonces``, ``sums``, ``bundles``."""

    @abc.abstractmethod
    def stored_nonces(self) -> set[str]:
        """Every nonce held (for tests and the load test's stored == acknowledged check)."""


class Tx(abc.ABC):
    """One open transaction of a backend, with ``?`` placeholders."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns (empty for none)."""

    @abc.abstractmethod
    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...


class SqlStorage(Storage):
    """The shared SQL of both backends; a backend supplies transactions and type tokens."""

    tokens: ClassVar[dict[str, str]] = {}

    @abc.abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractContextManager[Tx]:
        """A transaction; commits on success, rolls back on an exception, and turns backend
        faults into :class:`StorageUnavailableError`."""

    def migrate(self) -> int:
        with self.transaction() as tx:
            self._lock_schema(tx)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                f"(version INTEGER PRIMARY KEY, applied_at {self.tokens['double']} NOT NULL)"
            )
            rows = tx.execute("SELECT MAX(version) FROM schema_migrations")
            current = int(rows[0][0] or 0)
            if current > len(MIGRATIONS):
                raise StorageUnavailableError(
                    f"database: schema version {current} is newer than this server "
                    f"({len(MIGRATIONS)}); refusing to touch it"
                )
            for i in range(current, len(MIGRATIONS)):
                for statement in migration_sql(i, self.tokens):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (i + 1, time.time()),
                )
        return len(MIGRATIONS)

    def _lock_schema(self, tx: Tx) -> None:
        """Serialise concurrent migrations (two workers starting at once)."""

    def ping(self) -> None:
        with self.transaction(write=False) as tx:
            tx.execute("SELECT 1")

    def store_reports(self, rows: Sequence[ReportRow], closed_before: int) -> list[bool]:
        if not rows:
            return []
        epochs = sorted({r.epoch for r in rows})
        with self.transaction() as tx:
            marks = ", ".join("?" for _ in epochs)
            folded = tx.execute(f"SELECT epoch FROM folded WHERE epoch IN ({marks})", epochs)
            # Checked inside the transaction: an epoch folded by a concurrent aggregation
            # must not take reports it would never count.
            late = sorted({int(r[0]) for r in folded} | {e for e in epochs if e < closed_before})
            if late:
                raise InputError(f"epoch: epochs {late} are closed and already aggregated")
            values = ", ".join("(?, ?)" for _ in rows)
            params: list[Any] = []
            for r in rows:
                params += (r.nonce, r.epoch)
            fresh = {
                str(x[0])
                for x in tx.execute(
                    f"INSERT INTO nonces (nonce, epoch) VALUES {values} "
                    "ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
                    params,
                )
            }
            new_rows = [r for r in rows if r.nonce in fresh]
            if new_rows:
                tx.executemany(
                    "INSERT INTO reports (nonce, epoch, kind, config, segment, bits, offer, "
                    "event) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.nonce, r.epoch, r.kind, r.config, r.segment, r.bits, r.offer, r.event)
                        for r in new_rows
                    ],
                )
        return [r.nonce in fresh for r in rows]

    def raw_epochs(self) -> list[int]:
        with self.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT DISTINCT epoch FROM reports WHERE epoch NOT IN (SELECT epoch FROM folded) "
                "ORDER BY epoch"
            )
        return [int(r[0]) for r in rows]

    def raw_reports(self, epoch: int) -> list[ReportRow]:
        with self.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT kind, config, segment, bits, offer, event FROM reports WHERE epoch = ?",
                (epoch,),
            )
        return [
            ReportRow(
                nonce="",
                epoch=epoch,
                kind=str(k),
                config=str(c),
                segment=None if s is None else int(s),
                bits=None if b is None else bytes(b),
                offer=o,
                event=e,
            )
            for k, c, s, b, o, e in rows
        ]

    def fold(self, epoch: int, sums: Iterable[SumRow], now: float, delete_raw: bool) -> bool:
        with self.transaction() as tx:
            taken = tx.execute(
                "INSERT INTO folded (epoch, at) VALUES (?, ?) ON CONFLICT (epoch) DO NOTHING "
                "RETURNING epoch",
                (epoch, now),
            )
            if not taken:
                return False
            tx.executemany(
                "INSERT INTO sums (epoch, config, kind, part, n, data) VALUES (?, ?, ?, ?, ?, ?)",
                [(s.epoch, s.config, s.kind, s.part, s.n, s.data) for s in sums],
            )
            if delete_raw:
                tx.execute("DELETE FROM reports WHERE epoch = ?", (epoch,))
        return True

    def folded_epochs(self) -> list[int]:
        with self.transaction(write=False) as tx:
            rows = tx.execute("SELECT epoch FROM folded ORDER BY epoch")
        return [int(r[0]) for r in rows]

    def sums(self, first_epoch: int, last_epoch: int) -> list[SumRow]:
        with self.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT epoch, config, kind, part, n, data FROM sums "
                "WHERE epoch >= ? AND epoch <= ? ORDER BY epoch, config, kind, part",
                (first_epoch, last_epoch),
            )
        return [
            SumRow(int(e), str(c), str(k), str(p), int(n), bytes(d)) for e, c, k, p, n, d in rows
        ]

    def purge(
        self, raw_before: int, nonces_before: int, sums_before: int, keep_bundles: int
    ) -> tuple[int, int]:
        with self.transaction() as tx:
            raw = tx.execute(
                "DELETE FROM reports WHERE epoch < ? AND epoch IN (SELECT epoch FROM folded) "
                "RETURNING 1",
                (raw_before,),
            )
            nonces = tx.execute("DELETE FROM nonces WHERE epoch < ? RETURNING 1", (nonces_before,))
            tx.execute("DELETE FROM sums WHERE epoch < ?", (sums_before,))
            tx.execute(
                "DELETE FROM bundles WHERE version NOT IN "
                "(SELECT version FROM bundles ORDER BY version DESC LIMIT ?)",
                (max(1, keep_bundles),),
            )
        return len(raw), len(nonces)

    def latest_bundle(self) -> BundleRow | None:
        with self.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT version, digest, created, data FROM bundles ORDER BY version DESC LIMIT 1"
            )
        if not rows:
            return None
        v, dg, c, d = rows[0]
        return BundleRow(int(v), str(dg), float(c), bytes(d))

    def bundles(self) -> list[BundleRow]:
        with self.transaction(write=False) as tx:
            rows = tx.execute("SELECT version, digest, created, data FROM bundles ORDER BY version")
        return [BundleRow(int(v), str(dg), float(c), bytes(d)) for v, dg, c, d in rows]

    def latest_bundle_digest(self) -> tuple[int, str] | None:
        with self.transaction(write=False) as tx:
            rows = tx.execute("SELECT version, digest FROM bundles ORDER BY version DESC LIMIT 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def add_bundle(self, row: BundleRow) -> bool:
        with self.transaction() as tx:
            done = tx.execute(
                "INSERT INTO bundles (version, digest, created, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (version) DO NOTHING RETURNING version",
                (row.version, row.digest, row.created, row.data),
            )
        return bool(done)

    def latest_release(self) -> ReleaseRow | None:
        with self.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT series, step, first_epoch, at, data FROM releases "
                "ORDER BY series DESC, step DESC LIMIT 1"
            )
        if not rows:
            return None
        series, step, first, at, data = rows[0]
        return ReleaseRow(int(series), int(step), int(first), float(at), bytes(data))

    def add_release(self, row: ReleaseRow) -> bool:
        with self.transaction() as tx:
            done = tx.execute(
                "INSERT INTO releases (series, step, first_epoch, at, data) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (series, step) DO NOTHING RETURNING step",
                (row.series, row.step, row.first_epoch, row.at, row.data),
            )
        return bool(done)

    def counts(self) -> dict[str, int]:
        out = {}
        with self.transaction(write=False) as tx:
            for table in ("reports", "nonces", "sums", "bundles"):
                out[table] = int(tx.execute(f"SELECT COUNT(*) FROM {table}")[0][0])
        return out

    def stored_nonces(self) -> set[str]:
        with self.transaction(write=False) as tx:
            return {str(r[0]) for r in tx.execute("SELECT nonce FROM nonces")}


def open_storage(url: str, *, busy_timeout_ms: int = 5000) -> Storage:
    """The storage a URL names, migrated to the current schema.

    Raises:
        InputError: naming ``url`` for a scheme other than ``sqlite:///`` or ``postgresql://``.
        StorageUnavailableError: when the database cannot be reached.
    """
    if not isinstance(url, str):
        raise InputError(f"url: expected a database URL string, got {type(url).__name__}")
    if url.startswith("sqlite:///"):
        from localrank.server.storage.sqlite import SqliteStorage

        storage: Storage = SqliteStorage(url[len("sqlite:///") :], busy_timeout_ms=busy_timeout_ms)
    elif url.startswith(("postgresql://", "postgres://")):
        from localrank.server.storage.postgres import PostgresStorage

        storage = PostgresStorage(url, lock_timeout_ms=busy_timeout_ms)
    else:
        raise InputError(
            "url: expected sqlite:///path or postgresql://user@host:port/db, "
            f"got {url.split('://')[0]!r}://…"
        )
    storage.migrate()
    return storage


def migration_sql(index: int, tokens: dict[str, str]) -> list[str]:
    """Migration ``index`` with a backend's type tokens, split into statements."""
    text = MIGRATIONS[index].format(**tokens)
    return [s.strip() for s in text.split(";") if s.strip()]
