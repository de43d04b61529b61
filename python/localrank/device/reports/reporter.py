"""The device side of what leaves the phone: which events may be reported, when reports are
made, how the segment is randomised, and what it costs.

Rules (docs/design.md, "Wire contract"):

- Reports are made only while the reporting consent is on, never at level ``off``, and never
  during the 30 silent days after ``forget(everything=True)``.
- Only ``impression``, ``click``, ``purchase`` (``conversion``) and ``dismiss`` events about
  non-sensitive catalog offers become engagement reports; everything else stays on the device.
- At most ``L`` engagement reports per epoch; later events wait for later epochs. A census
  (the finest segment, always through LDP) at most once per ``census_interval_days``.
- A report carries the epoch in which it is made, which is the epoch it is sent in: reports
  are made when the sync client asks for a batch.
- In ``ldp`` mode the segment goes through the oracle: a permanent response memoised per true
  value (RAPPOR-style) and a fresh instantaneous response on top. In ``central`` mode the
  active segment is sent in the clear and the server adds discrete noise.
- The accountant refuses, and says why, once a budget is spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from localrank.bundle import Bundle
from localrank.device.reports.accountant import Accountant
from localrank.device.reports.outbox import Outbox
from localrank.device.settings import Settings
from localrank.device.store import Store
from localrank.privacy import oracles
from localrank.shared.clock import epoch_of
from localrank.wire.reports import ENGAGEMENT_EVENTS, census, engagement

__all__ = ["SILENT_DAYS", "Reporter", "ReportingStatus"]

SILENT_DAYS = 30


@dataclass(frozen=True)
class ReportingStatus:
    """Why reports are (not) being made right now."""

    active: bool
    reason: str


class Reporter:
    """Owned by the engine; reads its bundle, settings and segments through callables."""

    def __init__(
        self,
        store: Store,
        bundle: Callable[[], Bundle],
        settings: Callable[[], Settings],
        segments: Callable[[float], tuple[int, int]],
    ) -> None:
        self._store = store
        self._bundle = bundle
        self._settings = settings
        self._segments = segments  # now -> (finest, active)
        self.accountant = Accountant(store)
        self.outbox = Outbox(store)

    # -- state ------------------------------------------------------------------------------

    def silent_until(self) -> float:
        rows = self._store.query("SELECT value FROM settings WHERE key = 'silent_until'")
        return float(rows[0][0]) if rows else float("-inf")

    def status(self, now: float) -> ReportingStatus:
        s = self._settings()
        if not s.reporting:
            return ReportingStatus(False, "the reporting consent is off")
        if s.level == "off":
            return ReportingStatus(False, "personalisation is off: nothing is reported")
        if now < self.silent_until():
            return ReportingStatus(False, "silent for 30 days after everything was forgotten")
        return ReportingStatus(True, "reporting")

    # -- events -----------------------------------------------------------------------------

    def on_record(self, db: Any, event_id: int, kind: str, offer: str | None, t: float) -> None:
        """Queue an event for a later engagement report, if it may ever be reported."""
        if kind not in ENGAGEMENT_EVENTS or offer is None or not self.status(t).active:
            return
        b = self._bundle()
        if b.catalog.sensitive[b.catalog.index_of(offer)]:
            return
        db.execute("INSERT INTO pending (event_id, t) VALUES (?, ?)", (event_id, t))

    def drop_unsent(self, db: Any) -> None:
        """Consent withdrawn: nothing queued may leave any more."""
        db.execute("DELETE FROM pending")
        db.execute("DELETE FROM outbox WHERE sent_at IS NULL")

    def forget_event(self, db: Any, event_id: int) -> None:
        """An event is being forgotten: a report made from it that has not left yet never will
        (its ε stays spent in the ledger)."""
        db.execute("DELETE FROM outbox WHERE event_id = ? AND sent_at IS NULL", (event_id,))

    def forget_everything(self, db: Any, now: float) -> None:
        """Wipe memos, ledger, outbox and queue, and start the silent period: a fresh memo
        must not be averaged against the old one, and the silent period outlasts the 30-day
        accounting window the wiped ledger covered."""
        for table in ("pending", "outbox", "memos", "ledger"):
            db.execute(f"DELETE FROM {table}")
        db.execute(
            "INSERT INTO settings (key, value) VALUES ('silent_until', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (repr(now + SILENT_DAYS * 86400),),
        )

    # -- making reports ---------------------------------------------------------------------

    def _randomised(self, db: Any, b: Bundle, value: int, now: float) -> int | str:
        """Permanent response (memoised per value and configuration) + instantaneous one."""
        c = b.config
        oracle = b.oracle
        d = b.segments.d_seg
        domain = f"segment:{oracle}:{d}:{c.epsilon_perm!r}"
        row = db.execute(
            "SELECT response FROM memos WHERE domain = ? AND value = ?", (domain, value)
        ).fetchone()
        if row is None:
            perm = oracles.permanent_response(oracle, [value], d, c.epsilon_perm)
            memo = np.asarray(perm).tobytes()
            db.execute(
                "INSERT INTO memos (domain, value, epsilon, response, t) VALUES (?, ?, ?, ?, ?)",
                (domain, value, c.epsilon_perm, memo, now),
            )
            Accountant.record(
                db,
                t=now,
                kind="memo",
                epsilon=c.epsilon_perm,
                report=None,
                note=f"permanent response for one segment value ({oracle}, d = {d}); "
                "drawn once, bounds what all reports of this value reveal",
            )
        else:
            memo = row[0]
        if oracle == "grr":
            perm_arr = np.frombuffer(memo, dtype=np.int64)
            return int(oracles.instantaneous_response(oracle, perm_arr, d, c.epsilon)[0])
        perm_bits = np.frombuffer(memo, dtype=np.uint8).reshape(1, -1)
        bits = oracles.instantaneous_response(oracle, perm_bits, d, c.epsilon)[0]
        return oracles.encode_bits(bits)

    def prepare(self, now: float) -> list[str]:
        """Make this epoch's reports, within ``L`` and the budgets. Returns why it stopped
        early, if it did (an empty list when everything due was made)."""
        if not self.status(now).active:
            return [self.status(now).reason]
        b = self._bundle()
        c = b.config
        epoch = epoch_of(now)
        stopped: list[str] = []
        finest, active = self._segments(now)
        oracle = b.oracle
        with self._store.transaction() as db:
            last = db.execute("SELECT MAX(queued_at) FROM outbox WHERE kind = 'census'").fetchone()[
                0
            ]
            if last is None or now - last >= c.census_interval_days * 86400:
                why = self.accountant.refusal(c.epsilon, c, now)
                if why is None:
                    value = self._randomised(db, b, finest, now)
                    r = census(
                        epoch=epoch,
                        oracle=oracle,
                        epsilon=c.epsilon,
                        epsilon_perm=c.epsilon_perm,
                        value=value,
                    )
                    self._queue(db, r, c.epsilon, now, "census of the finest segment", None)
                else:
                    stopped.append(f"census: {why}")
            made = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE kind = 'engagement' AND epoch = ?", (epoch,)
            ).fetchone()[0]
            rows = db.execute(
                "SELECT p.event_id, e.kind, e.offer FROM pending p JOIN events e "
                "ON e.id = p.event_id WHERE p.t <= ? ORDER BY p.t, p.event_id",
                (now,),
            ).fetchall()
            for event_id, kind, offer in rows:
                if made >= c.report_limit:
                    stopped.append(f"engagement: L = {c.report_limit} reports this epoch")
                    break
                try:
                    row = b.catalog.index_of(offer)
                except Exception:
                    row = -1
                if row < 0 or b.catalog.sensitive[row]:
                    db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))
                    continue
                spend = c.epsilon if c.mode == "ldp" else 0.0
                why = self.accountant.refusal(spend, c, now)
                if why is not None:
                    stopped.append(f"engagement: {why}")
                    break
                if c.mode == "ldp":
                    value: int | str = self._randomised(db, b, active, now)
                    r = engagement(
                        epoch=epoch,
                        mode="ldp",
                        oracle=oracle,
                        epsilon=c.epsilon,
                        epsilon_perm=c.epsilon_perm,
                        value=value,
                        offer=offer,
                        event=kind,
                    )
                else:
                    r = engagement(
                        epoch=epoch,
                        mode="central",
                        oracle="none",
                        epsilon=None,
                        epsilon_perm=None,
                        value=active,
                        offer=offer,
                        event=kind,
                    )
                note = (
                    "engagement, segment randomised on the device"
                    if c.mode == "ldp"
                    else f"engagement in central mode: k-anonymous segment, server noise "
                    f"ε = {c.central_epsilon:g}"
                )
                self._queue(db, r, spend, now, note, event_id)
                db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))
                made += 1
        return stopped

    def _queue(
        self,
        db: Any,
        report: dict[str, Any],
        epsilon: float,
        now: float,
        note: str,
        event_id: int | None,
    ) -> None:
        Outbox.queue(db, report, epsilon=epsilon, now=now, event_id=event_id)
        Accountant.record(
            db, t=now, kind="report", epsilon=epsilon, report=report["nonce"], note=note
        )
