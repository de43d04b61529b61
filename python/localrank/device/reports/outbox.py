"""The outbox: reports queued on the device, handed out in batches, and a log of what left.

A batch holds reports of one epoch in random order (a CSPRNG shuffle key per report), so the
order says nothing about when events happened. A batch stays "taken" until it is
acknowledged; a retry hands out the same reports with the same nonces, so a lost
acknowledgement can neither lose nor double a report (the server stores a nonce once).
Reports whose epoch falls out of the server's window (current epoch ± 1) without being sent
are dropped; the ε they cost stays spent.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from localrank.device.store import Store
from localrank.shared.clock import epoch_of
from localrank.wire.reports import batch_body

__all__ = ["Outbox", "OutboxBatch", "SentReport"]

#: Reports older than this many epochs are beyond the server's accepted window.
ACCEPTED_LAG = 1
MAX_BATCH = 256


@dataclass(frozen=True)
class OutboxBatch:
    """Reports to send together: one epoch, random order."""

    epoch: int
    ids: tuple[int, ...]
    reports: tuple[dict[str, Any], ...]

    @property
    def body(self) -> bytes:
        """The exact bytes to POST."""
        return batch_body(list(self.reports))


@dataclass(frozen=True)
class SentReport:
    """One report that left the device."""

    sent_at: float
    destination: str
    bytes: int
    epsilon: float
    kind: str
    epoch: int
    nonce: str
    payload: dict[str, Any]


class Outbox:
    """The ``outbox`` table (reports made, sent or not) and the ``pending`` table (events that
    wait for an engagement report); only this module's SQL touches them."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- pending: events waiting for a report ---------------------------------------------------

    @staticmethod
    def wait(db: sqlite3.Connection, event_id: int, t: float) -> None:
        """Queue event ``event_id`` (which happened at ``t``) for an engagement report."""
        db.execute("INSERT INTO pending (event_id, t) VALUES (?, ?)", (event_id, t))

    @staticmethod
    def due(db: sqlite3.Connection, now: float) -> list[int]:
        """The waiting events that happened by ``now``, oldest first."""
        rows = db.execute(
            "SELECT event_id FROM pending WHERE t <= ? ORDER BY t, event_id", (now,)
        ).fetchall()
        return [int(r[0]) for r in rows]

    @staticmethod
    def done_waiting(db: sqlite3.Connection, event_id: int) -> None:
        db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))

    def backlog(self, now: float) -> int:
        """How many waiting events happened by ``now``."""
        return int(self._store.query("SELECT COUNT(*) FROM pending WHERE t <= ?", (now,))[0][0])

    # -- the outbox -------------------------------------------------------------------------------

    @staticmethod
    def drop_unsent(db: sqlite3.Connection) -> None:
        """Nothing queued or waiting may leave any more (consent withdrawn)."""
        db.execute("DELETE FROM pending")
        db.execute("DELETE FROM outbox WHERE sent_at IS NULL")

    @staticmethod
    def drop_made_from(db: sqlite3.Connection, event_id: int) -> None:
        """An unsent report made from a forgotten event never leaves."""
        db.execute("DELETE FROM outbox WHERE event_id = ? AND sent_at IS NULL", (event_id,))

    @staticmethod
    def clear(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM pending")
        db.execute("DELETE FROM outbox")

    @staticmethod
    def last_census_at(db: sqlite3.Connection) -> float | None:
        row = db.execute("SELECT MAX(queued_at) FROM outbox WHERE kind = 'census'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @staticmethod
    def made(db: sqlite3.Connection, kind: str, epoch: int) -> int:
        """How many ``kind`` reports were made for ``epoch``."""
        row = db.execute(
            "SELECT COUNT(*) FROM outbox WHERE kind = ? AND epoch = ?", (kind, epoch)
        ).fetchone()
        return int(row[0])

    @staticmethod
    def queue(
        db: sqlite3.Connection,
        report: dict[str, Any],
        *,
        epsilon: float,
        now: float,
        event_id: int | None,
    ) -> None:
        db.execute(
            "INSERT INTO outbox (nonce, kind, epoch, payload, epsilon, queued_at, shuffle, "
            "event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                report["nonce"],
                report["kind"],
                report["epoch"],
                json.dumps(report, sort_keys=True, separators=(",", ":")),
                epsilon,
                now,
                secrets.randbits(62),
                event_id,
            ),
        )

    def take(self, now: float, max_reports: int = MAX_BATCH) -> OutboxBatch | None:
        """The next batch to send: unsent reports of the oldest epoch still in the server's
        window, in random order; None when there is nothing to send."""
        current = epoch_of(now)
        with self._store.transaction() as db:
            db.execute(
                "DELETE FROM outbox WHERE sent_at IS NULL AND epoch < ?",
                (current - ACCEPTED_LAG,),
            )
            row = db.execute(
                "SELECT MIN(epoch) FROM outbox WHERE sent_at IS NULL AND epoch <= ?", (current,)
            ).fetchone()
            if row is None or row[0] is None:
                return None
            epoch = int(row[0])
            rows = db.execute(
                "SELECT id, payload FROM outbox WHERE sent_at IS NULL AND epoch = ? "
                "ORDER BY shuffle LIMIT ?",
                (epoch, max_reports),
            ).fetchall()
            db.executemany(
                "UPDATE outbox SET taken_at = ? WHERE id = ?", [(now, r[0]) for r in rows]
            )
        return OutboxBatch(
            epoch=epoch,
            ids=tuple(int(r[0]) for r in rows),
            reports=tuple(json.loads(r[1]) for r in rows),
        )

    def acknowledge(self, batch: OutboxBatch, *, destination: str, now: float) -> None:
        """Mark a batch as delivered (the server stored, or already held, every report)."""
        with self._store.transaction() as db:
            db.executemany(
                "UPDATE outbox SET sent_at = ?, destination = ? WHERE id = ? AND sent_at IS NULL",
                [(now, destination, i) for i in batch.ids],
            )

    def sent(self, *, include_pending: bool = False) -> list[SentReport]:
        """Every report that left the device (and, optionally, those still queued)."""
        where = "" if include_pending else "WHERE sent_at IS NOT NULL"
        rows = self._store.query(
            "SELECT sent_at, destination, payload, epsilon, kind, epoch, nonce FROM outbox "
            f"{where} ORDER BY COALESCE(sent_at, queued_at), id"
        )
        return [
            SentReport(
                sent_at=r[0] if r[0] is not None else float("nan"),
                destination=r[1] or "",
                bytes=len(r[2].encode()),
                epsilon=r[3],
                kind=r[4],
                epoch=r[5],
                nonce=r[6],
                payload=json.loads(r[2]),
            )
            for r in rows
        ]
