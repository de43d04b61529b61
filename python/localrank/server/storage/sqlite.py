"""The embedded backend: one SQLite file in WAL mode.

- ``synchronous=FULL``: a committed batch survives a power cut, not only a killed process, so
  an acknowledgement is a promise. (The load test measures the cost.)
- One connection per thread (FastAPI runs storage calls in a thread pool); WAL lets readers
  run beside the one writer, and ``busy_timeout`` makes a writer wait for the lock that long
  before the request is answered 503.
- Writes open with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar

from localrank.errors import InputError
from localrank.server.storage import SqlStorage, StorageUnavailableError, Tx

__all__ = ["SqliteStorage"]


class _SqliteTx(Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, [tuple(p) for p in params])


class SqliteStorage(SqlStorage):
    """Storage in one SQLite file (created if missing)."""

    url_scheme = "sqlite"
    tokens: ClassVar[dict[str, str]] = {
        "blob": "BLOB",
        "double": "REAL",
        "without_rowid": " WITHOUT ROWID",
    }

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        if not str(path):
            raise InputError("url: sqlite:/// needs a file path, e.g. sqlite:///server.db")
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int):
            raise InputError(f"busy_timeout_ms: expected an integer, got {busy_timeout_ms!r}")
        self.path = Path(path)
        self._busy_ms = max(0, busy_timeout_ms)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # SQLite has one writer at a time. Threads of this process queue on a lock instead of
        # polling the file lock (SQLite's busy handler sleeps in steps up to 100 ms, which is
        # what the tail latency was made of); other processes still meet busy_timeout.
        self._write_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=0
                )
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.Error as e:
                raise StorageUnavailableError(f"database: cannot open {self.path}: {e}") from e
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Tx]:
        if not write:
            with self._transaction(write=False) as tx:
                yield tx
            return
        if not self._write_lock.acquire(timeout=self._busy_ms / 1000):
            raise StorageUnavailableError("database: busy (another write holds the lock)")
        try:
            with self._transaction(write=True) as tx:
                yield tx
        finally:
            self._write_lock.release()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as e:
            raise StorageUnavailableError(f"database: {e}") from e
        try:
            yield _SqliteTx(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            _rollback(conn)
            raise StorageUnavailableError(f"database: {e}") from e
        except BaseException:
            _rollback(conn)
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
