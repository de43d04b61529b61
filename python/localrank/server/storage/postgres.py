"""The multi-worker backend: PostgreSQL through psycopg 3.

Several ingest workers (processes or machines) share one database; nothing in a worker is
state that another needs. One connection per thread, opened lazily and dropped when it breaks,
so a restarted database is picked up again without restarting the server. Transactions run at
READ COMMITTED; deduplication rests on the primary key of ``nonces`` (``ON CONFLICT DO
NOTHING``), which is safe under concurrency: a second insert of the same nonce waits for the
first transaction and then does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, ClassVar

import psycopg

from localrank.errors import InputError
from localrank.server.storage import SqlStorage, StorageUnavailableError, Tx

__all__ = ["PostgresStorage"]


def _pg(sql: str) -> str:
    # The shared SQL uses '?' placeholders and no literal '?' or '%'.
    return sql.replace("?", "%s")


class _PgTx(Tx):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(_pg(sql), tuple(params), prepare=False)
        return list(cur.fetchall()) if cur.description is not None else []

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), [tuple(p) for p in params])


class PostgresStorage(SqlStorage):
    """Storage in a PostgreSQL database; unqualified table names follow ``search_path``."""

    url_scheme = "postgresql"
    tokens: ClassVar[dict[str, str]] = {
        "blob": "BYTEA",
        "double": "DOUBLE PRECISION",
        "without_rowid": "",
    }

    def __init__(
        self, url: str, *, lock_timeout_ms: int = 5000, connect_timeout_s: int = 5
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise InputError(f"url: expected a postgresql:// URL, got {url!r}")
        self.url = url
        self._lock_ms = int(lock_timeout_ms)
        self._connect_timeout = int(connect_timeout_s)
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and conn.closed:
            conn = None
        if conn is None:
            try:
                conn = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=self._connect_timeout
                )
                # A request waits at most this long for a lock or a statement, then gets 503.
                conn.execute(f"SET lock_timeout = {self._lock_ms}")
                conn.execute(f"SET statement_timeout = {max(self._lock_ms, 1000) * 6}")
            except psycopg.Error as e:
                raise StorageUnavailableError(f"database: cannot connect: {_short(e)}") from e
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        with suppress(psycopg.Error):
            conn.close()
        self._local.conn = None

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Tx]:
        conn = self._conn()
        try:
            with conn.transaction():
                yield _PgTx(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # The connection may be dead (server restarted, network cut): start afresh next time.
            self._drop(conn)
            raise StorageUnavailableError(f"database: {_short(e)}") from e
        except psycopg.errors.LockNotAvailable as e:
            raise StorageUnavailableError(f"database: lock timeout: {_short(e)}") from e
        except psycopg.errors.QueryCanceled as e:
            raise StorageUnavailableError(f"database: statement timeout: {_short(e)}") from e
        except (psycopg.errors.DiskFull, psycopg.errors.InsufficientResources) as e:
            raise StorageUnavailableError(f"database: {_short(e)}") from e

    def _lock_schema(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('localrank-server-migrate'))")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with suppress(psycopg.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
