"""The device side of what leaves the phone: which events may be reported, when reports are
made, how the segment is randomised, and what it costs.

Rules (docs/design.md, "Wire contract"):

- Reports are made only while the reporting consent is on, never at level ``off``, and never
  during the 30 silent days after ``forget(everything=True)``.
- Only ``impression``, ``click``, ``purchase`` (``conversion``) and ``dismiss`` events about
  non-sensitive catalog offers become engagement reports; everything else stays on the device.
- At most ``L`` engagement reports per epoch; later events wait for later epochs. A census
  (the finest segment, always through LDP) at most once per ``census_interval_days``.
- In ``central`` mode under the continual release, also at most ``W`` engagement reports in
  any 30 days, and each offer at most once in the device's lifetime: an event about an offer
  already reported is never reported (the accountant keeps the list).
- A report carries the epoch in which it is made, which is the epoch it is sent in: reports
  are made when the sync client asks for a batch.
- In ``ldp`` mode the segment goes through the oracle: a permanent response memoised per true
  value (RAPPOR-style) and a fresh instantaneous response on top. In ``central`` mode the
  active segment is sent in the clear and the server adds discrete noise.
- The accountant refuses, and says why, once a budget is spent.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np

from localrank.bundle import Bundle
from localrank.device.events import EventLog
from localrank.device.reports.accountant import Accountant
from localrank.device.reports.outbox import Outbox
from localrank.device.segmentation import SegmentInfo
from localrank.device.settings import Settings
from localrank.device.store import Store
from localrank.privacy import oracles
from localrank.privacy.continual import census_rho
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
    """Makes the device's reports. Owned by the engine, which passes in what each step needs
    (the bundle, the settings, the segment): the reporter never calls back into the engine."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.accountant = Accountant(store)
        self.outbox = Outbox(store)

    # -- state ------------------------------------------------------------------------------

    def silent_until(self) -> float:
        value = self._store.setting("silent_until")
        return float(value) if value is not None else float("-inf")

    def status(self, now: float, settings: Settings) -> ReportingStatus:
        if not settings.reporting:
            return ReportingStatus(False, "the reporting consent is off")
        if settings.level == "off":
            return ReportingStatus(False, "personalisation is off: nothing is reported")
        if now < self.silent_until():
            return ReportingStatus(False, "silent for 30 days after everything was forgotten")
        return ReportingStatus(True, "reporting")

    # -- events -----------------------------------------------------------------------------

    def on_record(
        self,
        db: sqlite3.Connection,
        event_id: int,
        kind: str,
        offer: str | None,
        t: float,
        bundle: Bundle,
        settings: Settings,
    ) -> None:
        """Queue an event for a later engagement report, if it may ever be reported."""
        if kind not in ENGAGEMENT_EVENTS or offer is None or not self.status(t, settings).active:
            return
        if bundle.catalog.sensitive[bundle.catalog.index_of(offer)]:
            return
        Outbox.wait(db, event_id, t)

    def forget_everything(self, db: sqlite3.Connection, now: float) -> None:
        """Wipe memos, ledger, outbox and queue, and start the silent period: a fresh memo
        must not be averaged against the old one, and the silent period outlasts the 30-day
        accounting window the wiped ledger covered."""
        Outbox.clear(db)
        Accountant.clear(db)
        Store.put_setting(db, "silent_until", repr(now + SILENT_DAYS * 86400))

    # -- making reports ---------------------------------------------------------------------

    def _randomised(self, db: sqlite3.Connection, b: Bundle, value: int, now: float) -> int | str:
        """Permanent response (memoised per value and configuration) + instantaneous one."""
        c = b.config
        oracle = b.oracle
        d = b.segments.d_seg
        domain = f"segment:{oracle}:{d}:{c.epsilon_perm!r}"
        memo = Accountant.memo(db, domain, value)
        if memo is None:
            perm = oracles.permanent_response(oracle, [value], d, c.epsilon_perm)
            memo = np.asarray(perm).tobytes()
            Accountant.remember(db, domain, value, c.epsilon_perm, memo, now)
            Accountant.record(
                db,
                t=now,
                kind="memo",
                epsilon=c.epsilon_perm,
                report=None,
                note=f"permanent response for one segment value ({oracle}, d = {d}); "
                "drawn once, bounds what all reports of this value reveal",
            )
        if oracle == "grr":
            perm_arr = np.frombuffer(memo, dtype=np.int64)
            return int(oracles.instantaneous_response(oracle, perm_arr, d, c.epsilon)[0])
        perm_bits = np.frombuffer(memo, dtype=np.uint8).reshape(1, -1)
        bits = oracles.instantaneous_response(oracle, perm_bits, d, c.epsilon)[0]
        return oracles.encode_bits(bits)

    def prepare(
        self, now: float, bundle: Bundle, settings: Settings, segment: SegmentInfo
    ) -> list[str]:
        """Make this epoch's reports, within ``L`` and the budgets, for a device in
        ``segment``: the census names its finest segment; an engagement report its active one
        or, in ``ldp`` mode with cohorts, its cohort (randomised, so it needs no population;
        the next cohort round needs every cohort's row). Returns why it stopped early, if it
        did (an empty list when everything due was made)."""
        status = self.status(now, settings)
        if not status.active:
            return [status.reason]
        b = bundle
        c = b.config
        epoch = epoch_of(now)
        stopped: list[str] = []
        finest, active = segment.finest, segment.active
        if c.mode == "ldp" and segment.cohort is not None:
            active = segment.cohort
        oracle = b.oracle
        value: int | str
        with self._store.transaction() as db:
            last = Outbox.last_census_at(db)
            guarantee = c.central_guarantee
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
                    note = "census of the finest segment"
                    rho = None
                    if guarantee is not None:
                        # charged to central mode's 30-day ρ too: ε-DP is ε²/2-zCDP
                        rho = census_rho(c.epsilon, 1)
                        note += f", ρ = {rho:.3g} of central mode's {guarantee.rho_window:.3g}"
                    self._queue(db, r, c.epsilon, now, note, None, rho)
                else:
                    stopped.append(f"census: {why}")
            made = Outbox.made(db, "engagement", epoch)
            due = Outbox.due(db, now)
            offers = EventLog.offers_of(db, due)
            for event_id in due:
                if made >= c.report_limit:
                    stopped.append(f"engagement: L = {c.report_limit} reports this epoch")
                    break
                kind, offer = offers.get(event_id, ("", ""))
                row = b.catalog.row_of.get(offer, -1)
                if row < 0 or b.catalog.sensitive[row]:
                    Outbox.done_waiting(db, event_id)
                    continue
                if guarantee is not None and Accountant.already_reported(db, offer):
                    Outbox.done_waiting(db, event_id)  # once per offer, ever
                    continue
                spend = c.epsilon if c.mode == "ldp" else 0.0
                why = self.accountant.refusal(spend, c, now)
                if why is None and guarantee is not None:
                    why = Accountant.central_refusal(db, guarantee, now)
                if why is not None:
                    stopped.append(f"engagement: {why}")
                    break
                if c.mode == "ldp":
                    value = self._randomised(db, b, active, now)
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
                rho = None
                if c.mode == "ldp":
                    note = "engagement, segment randomised on the device"
                elif guarantee is None:
                    note = (
                        "engagement in central mode: k-anonymous segment, server noise "
                        f"ε = {c.central_epsilon:g} per epoch"
                    )
                else:
                    Accountant.record_central(db, offer, now)
                    rho = guarantee.rho_per_report
                    note = (
                        "engagement in central mode: k-anonymous segment, counted by the "
                        f"server's continual release ({guarantee.mechanism}); this report's "
                        f"share ρ = {rho:.3g} of ρ = {guarantee.rho_window:.3g} per 30 days "
                        f"(ε = {guarantee.epsilon_window:.3g}, δ = {guarantee.delta:g}, "
                        "census included)"
                    )
                self._queue(db, r, spend, now, note, event_id, rho)
                Outbox.done_waiting(db, event_id)
                made += 1
        return stopped

    def _queue(
        self,
        db: sqlite3.Connection,
        report: dict[str, Any],
        epsilon: float,
        now: float,
        note: str,
        event_id: int | None,
        rho: float | None = None,
    ) -> None:
        Outbox.queue(db, report, epsilon=epsilon, now=now, event_id=event_id)
        Accountant.record(
            db, t=now, kind="report", epsilon=epsilon, report=report["nonce"], note=note, rho=rho
        )
