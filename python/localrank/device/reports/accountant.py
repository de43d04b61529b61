"""The privacy accountant: every ε a device spends, persisted, and a refusal past the budget.

Budgets (defaults from the bundle config, docs/privacy.md explains them):

- per report: ``epsilon`` (2): the instantaneous response's ε. The ledger charges this public
  parameter, although one chained report reveals less about the true value.
- per epoch (UTC day): ``epoch_epsilon`` (8): ``L`` = 3 engagement reports and one census at
  ε = 2 fit exactly.
- per rolling 30 days: ``window_epsilon`` (64): on average two reports a day over a month.
- per memoised value: ``epsilon_perm`` (ε∞ = 4), spent once when the permanent response is
  drawn; averaging any number of reports of that value cannot reveal more.

In ``central`` mode an engagement report spends no local ε: it is protected by k-anonymity and
the server's noise. Under the continual release (the bundle's ``central_guarantee``) the server
calibrates that noise to one device-level zCDP ρ per 30 days, which holds only if this
accountant keeps the device within the limits the noise assumes:

- at most ``L`` (``report_limit``) engagement reports per epoch and ``W``
  (``central_window_reports``) per rolling 30 days;
- each offer at most once in the device's lifetime (the ``reported_offers`` table): a device's
  reports then land in distinct cells, so its sensitivity is ``√W`` rather than ``W``.

Each such report is logged at ε = 0 with its share of ρ, ``ρ_engagement / W``; the census
(still LDP) is logged with its ε and ``ε²/2``. ``forget(everything=True)`` wipes the list of
reported offers with the rest (it says which offers the user engaged with): the 30 silent days
keep every 30-day window intact, and the whole-history figure then holds separately before and
after the wipe. Forgetting single events keeps the list, as it keeps the ledger: it is what
protects the user's past reports.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from localrank.bundle import BundleConfig, CentralGuarantee
from localrank.device.store import Store
from localrank.shared.clock import epoch_of

__all__ = ["WINDOW_S", "Accountant", "LedgerEntry"]

WINDOW_S = 30 * 86400


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the privacy ledger."""

    t: float
    epoch: int
    kind: str  # 'report' or 'memo'
    epsilon: float
    report: str | None  # the outbox nonce of the report that spent it
    note: str
    rho: float | None = None  # zCDP ρ, where the report is accounted in ρ (central mode)


def _fits_window(spent: float, epsilon: float, config: BundleConfig) -> bool:
    """Whether ``epsilon`` more fits the 30-day budget after ``spent`` (float slack only)."""
    return spent + epsilon <= config.window_epsilon + 1e-9


class Accountant:
    """The ``ledger`` table (every ε and ρ spent), the ``memos`` table (the memoised permanent
    responses that bound what repeated reports reveal) and the ``reported_offers`` table
    (central mode's caps and once-per-offer rule); only this module's SQL touches them."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def spent(self, now: float) -> tuple[float, float]:
        """(ε spent on reports this epoch, ε spent on reports in the last 30 days)."""
        epoch = epoch_of(now)
        rows = self._store.query(
            "SELECT COALESCE(SUM(CASE WHEN epoch = ? THEN epsilon ELSE 0 END), 0), "
            "COALESCE(SUM(epsilon), 0) FROM ledger WHERE kind = 'report' AND t > ?",
            (epoch, now - WINDOW_S),
        )
        return float(rows[0][0]), float(rows[0][1])

    def refusal(self, epsilon: float, config: BundleConfig, now: float) -> str | None:
        """Why spending ``epsilon`` now would exceed a budget, or None if it fits."""
        if epsilon > config.epsilon + 1e-12:
            return f"a report may spend at most ε = {config.epsilon}, this one needs {epsilon}"
        epoch, window = self.spent(now)
        if epoch + epsilon > config.epoch_epsilon + 1e-9:
            return (
                f"the epoch budget is spent: {epoch:g} of ε = {config.epoch_epsilon:g} used "
                f"today, this report needs {epsilon:g}"
            )
        if not _fits_window(window, epsilon, config):
            return (
                f"the 30-day budget is spent: {window:g} of ε = {config.window_epsilon:g} "
                f"used, this report needs {epsilon:g}"
            )
        return None

    def window_frees_at(self, epsilon: float, config: BundleConfig, now: float) -> float:
        """The earliest time, from ``now`` on, at which spending ``epsilon`` fits the rolling
        30-day budget: ``now`` if it fits already, else the moment enough past spending has
        aged out of the window. (The epoch budget frees at the next UTC day.)"""
        rows = self._store.query(
            "SELECT t, epsilon FROM ledger WHERE kind = 'report' AND t > ? ORDER BY t",
            (now - WINDOW_S,),
        )
        spent = sum(e for _, e in rows)
        if _fits_window(spent, epsilon, config):
            return now
        for t, e in rows:
            spent -= e
            if _fits_window(spent, epsilon, config):
                # the entry at t counts while the window (now - 30 days, now] holds it
                return float(t) + WINDOW_S
        return now + WINDOW_S  # unreachable: an empty window always has room for one report

    # -- central mode: L, W and once per offer -------------------------------------------------

    @staticmethod
    def already_reported(db: sqlite3.Connection, offer: str) -> bool:
        """Whether this device ever reported ``offer`` in central mode (it never will again)."""
        row = db.execute("SELECT 1 FROM reported_offers WHERE offer = ?", (offer,)).fetchone()
        return row is not None

    @staticmethod
    def central_made(db: sqlite3.Connection, now: float) -> tuple[int, int]:
        """(central engagement reports made this epoch, made in the last 30 days)."""
        row = db.execute(
            "SELECT COALESCE(SUM(CASE WHEN epoch = ? THEN 1 ELSE 0 END), 0), COUNT(*) "
            "FROM reported_offers WHERE t > ?",
            (epoch_of(now), now - WINDOW_S),
        ).fetchone()
        return int(row[0]), int(row[1])

    @staticmethod
    def central_refusal(
        db: sqlite3.Connection, guarantee: CentralGuarantee, now: float
    ) -> str | None:
        """Why one more central engagement report now would break the caps the server's noise
        assumes, or None if it fits."""
        epoch, window = Accountant.central_made(db, now)
        if epoch >= guarantee.reports_per_epoch:
            return (
                f"the epoch cap is reached: L = {guarantee.reports_per_epoch} engagement reports "
                "per epoch in central mode"
            )
        if window >= guarantee.reports_per_window:
            return (
                f"the 30-day cap is reached: W = {guarantee.reports_per_window} engagement "
                f"reports in any 30 days in central mode ({window} made)"
            )
        return None

    @staticmethod
    def record_central(db: sqlite3.Connection, offer: str, t: float) -> None:
        """Count a central engagement report about ``offer`` against L and W, and bar the offer
        for good. Raises if it was reported before: that would break the guarantee."""
        db.execute(
            "INSERT INTO reported_offers (offer, epoch, t) VALUES (?, ?, ?)",
            (offer, epoch_of(t), t),
        )

    def central_window_frees_at(self, guarantee: CentralGuarantee, now: float) -> float:
        """The earliest time, from ``now`` on, at which one more central report fits ``W``."""
        rows = self._store.query(
            "SELECT t FROM reported_offers WHERE t > ? ORDER BY t", (now - WINDOW_S,)
        )
        excess = len(rows) - guarantee.reports_per_window
        if excess < 0:
            return now
        return float(rows[excess][0]) + WINDOW_S

    # -- memos ------------------------------------------------------------------------------

    @staticmethod
    def memo(db: sqlite3.Connection, domain: str, value: int) -> bytes | None:
        """The memoised permanent response for ``value`` in ``domain``, or None."""
        row = db.execute(
            "SELECT response FROM memos WHERE domain = ? AND value = ?", (domain, value)
        ).fetchone()
        return None if row is None else bytes(row[0])

    @staticmethod
    def remember(
        db: sqlite3.Connection,
        domain: str,
        value: int,
        epsilon: float,
        response: bytes,
        t: float,
    ) -> None:
        db.execute(
            "INSERT INTO memos (domain, value, epsilon, response, t) VALUES (?, ?, ?, ?, ?)",
            (domain, value, epsilon, response, t),
        )

    def memo_count(self) -> int:
        return int(self._store.query("SELECT COUNT(*) FROM memos")[0][0])

    @staticmethod
    def clear(db: sqlite3.Connection) -> None:
        """Wipe memos and ledger (forget everything; the silent period covers the window)."""
        db.execute("DELETE FROM memos")
        db.execute("DELETE FROM ledger")
        db.execute("DELETE FROM reported_offers")

    @staticmethod
    def record(
        db: sqlite3.Connection,
        *,
        t: float,
        kind: str,
        epsilon: float,
        report: str | None,
        note: str,
        rho: float | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO ledger (t, epoch, kind, report, epsilon, note, rho) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (t, epoch_of(t), kind, report, epsilon, note, rho),
        )

    def entries(self) -> list[LedgerEntry]:
        rows = self._store.query(
            "SELECT t, epoch, kind, epsilon, report, note, rho FROM ledger ORDER BY t, id"
        )
        return [LedgerEntry(*r) for r in rows]
