"""The event log: the ``events`` and ``event_categories`` tables, and only this module's SQL
touches them.

An event is what an app recorded (an impression, a purchase, a visit, …) with the categories it
is about. Events never leave the device; they are deleted after :data:`RETENTION_S` or when the
user forgets them.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from localrank.bundle import Bundle
from localrank.device.store import Store
from localrank.errors import InputError
from localrank.shared.geo import Location, region_of, round_location, validate_location
from localrank.shared.policy import EVENT_KINDS

__all__ = [
    "MAX_STRENGTH",
    "OFFER_EVENTS",
    "RETENTION_S",
    "EventLog",
    "EventRecord",
    "NewEvent",
    "StoredEvent",
]

#: Events older than this are deleted (90 days): long enough for seasonal interests, short
#: enough that the device does not keep a lifelong diary.
RETENTION_S = 90 * 86400

_RECORD_COLUMNS = "e.id, e.kind, e.context, e.offer, e.category, e.t, e.strength, e.lat, e.lon"

#: ``(id, kind, t, strength, offer, categories joined by U+001F)``: what the profile folds in.
StoredEvent = tuple[int, str, float, float, "str | None", "str | None"]


#: The largest event strength: a weight relative to the default 1, never enough to swamp (or
#: overflow) the profile.
MAX_STRENGTH = 100.0
#: The kinds of event that are about one offer, and must name it.
OFFER_EVENTS = ("impression", "click", "purchase", "dismiss")


@dataclass(frozen=True)
class NewEvent:
    """One event an app records, checked against the installed bundle."""

    kind: str
    context: str
    offer: str | None
    category: str | None
    location: tuple[float, float] | None  # rounded to about 1 km
    strength: float
    t: float
    categories: tuple[str, ...]  # the offer's categories and ``category``

    @staticmethod
    def check_kind(kind: object) -> None:
        if kind not in EVENT_KINDS:
            raise InputError(f"kind: expected one of {list(EVENT_KINDS)}, got {kind!r}")

    @classmethod
    def validated(
        cls,
        bundle: Bundle,
        kind: str,
        context: str,
        offer: str | None,
        category: str | None,
        location: Location | None,
        strength: float,
        t: float,
    ) -> NewEvent:
        """The event, or an :class:`~localrank.errors.InputError` naming the bad argument."""
        cls.check_kind(kind)
        cats: list[str] = []
        if kind in OFFER_EVENTS and offer is None:
            raise InputError(f"offer: a {kind!r} event needs the offer it is about")
        if offer is not None:
            row = bundle.catalog.index_of(offer) if isinstance(offer, str) else -1
            if row < 0:
                raise InputError(f"offer: expected an offer id from the catalog, got {offer!r}")
            cats = [bundle.taxonomy.names[c] for c in bundle.catalog.categories_of(row)]
        if category is not None:
            if not isinstance(category, str):
                raise InputError(f"category: expected a category name, got {category!r}")
            bundle.taxonomy.index(category)
            if category not in cats:
                cats.append(category)
        if kind in ("view", "app_use") and not cats:
            raise InputError(f"offer/category: a {kind!r} event needs an offer or a category")
        loc = round_location(validate_location(location)) if location is not None else None
        if kind == "visit" and loc is None:
            raise InputError("location: a 'visit' event needs the place visited")
        if (
            not isinstance(strength, (int, float))
            or isinstance(strength, bool)
            or not math.isfinite(strength)
            or not 0 <= strength <= MAX_STRENGTH
        ):
            raise InputError(
                f"strength: expected a number in [0, {MAX_STRENGTH:g}], got {strength!r}"
            )
        return cls(kind, context, offer, category, loc, float(strength), t, tuple(cats))


@dataclass(frozen=True)
class EventRecord:
    """One stored event, as the transparency API shows it."""

    id: int
    kind: str
    context: str
    offer: str | None
    category: str | None
    t: float
    strength: float
    location: tuple[float, float] | None = None  # as stored: rounded to 0.01°

    @classmethod
    def _of(cls, row: Sequence[Any]) -> EventRecord:
        """From ``id, kind, context, offer, category, t, strength, lat, lon``."""
        lat, lon = row[7], row[8]
        eid, kind, context, offer, category, t, strength = row[:7]
        location = (lat, lon) if lat is not None else None
        return cls(eid, kind, context, offer, category, t, strength, location=location)


class EventLog:
    """Reads and writes the device's events."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def add(db: sqlite3.Connection, e: NewEvent) -> int:
        """Insert one validated event; its id."""
        loc = e.location
        cur = db.execute(
            "INSERT INTO events (kind, context, offer, category, lat, lon, region, strength, t) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.kind,
                e.context,
                e.offer,
                e.category,
                loc[0] if loc else None,
                loc[1] if loc else None,
                region_of(loc) if loc else None,
                e.strength,
                e.t,
            ),
        )
        event_id = int(cur.lastrowid or 0)
        db.executemany(
            "INSERT INTO event_categories (event_id, category) VALUES (?, ?)",
            [(event_id, c) for c in e.categories],
        )
        return event_id

    def purge(self, now: float) -> bool:
        """Delete events past the retention; True when any was deleted (the generation moves,
        so every process rebuilds its profile)."""
        cutoff = now - RETENTION_S
        if not self._store.query("SELECT 1 FROM events WHERE t < ? LIMIT 1", (cutoff,)):
            return False
        with self._store.transaction() as db:
            if db.execute("DELETE FROM events WHERE t < ?", (cutoff,)).rowcount:
                Store.bump_generation(db)
                return True
        return False

    @staticmethod
    def delete(db: sqlite3.Connection, event_id: int) -> int:
        return int(db.execute("DELETE FROM events WHERE id = ?", (event_id,)).rowcount)

    @staticmethod
    def delete_all(db: sqlite3.Connection) -> int:
        return int(db.execute("DELETE FROM events").rowcount)

    def after(self, event_id: int) -> list[StoredEvent]:
        """The events with an id above ``event_id``, in id order, for the profile."""
        rows = self._store.query(
            "SELECT e.id, e.kind, e.t, e.strength, e.offer, "
            "       (SELECT group_concat(category, char(31)) FROM event_categories "
            "        WHERE event_id = e.id) "
            "FROM events e WHERE e.id > ? ORDER BY e.id",
            (event_id,),
        )
        return [(int(r[0]), str(r[1]), float(r[2]), float(r[3]), r[4], r[5]) for r in rows]

    def records(self, limit: int | None = None) -> list[EventRecord]:
        rows = self._store.query(
            f"SELECT {_RECORD_COLUMNS} FROM events e ORDER BY e.id"
            + (" LIMIT ?" if limit is not None else ""),
            (limit,) if limit is not None else (),
        )
        return [EventRecord._of(r) for r in rows]

    def about(self, category: str, until: float) -> list[EventRecord]:
        """The events tagged with ``category`` up to ``until``, newest first."""
        rows = self._store.query(
            f"SELECT {_RECORD_COLUMNS} FROM events e JOIN event_categories ec "
            "ON ec.event_id = e.id WHERE ec.category = ? AND e.t <= ? ORDER BY e.t DESC, e.id DESC",
            (category, until),
        )
        return [EventRecord._of(r) for r in rows]

    def visited_regions(
        self, since: float, until: float, sensitive: Sequence[str], min_visits: int
    ) -> list[str]:
        """Regions with at least ``min_visits`` visits in ``(since, until]`` that touch no
        ``sensitive`` category, most visited first."""
        marks = ", ".join("?" * len(sensitive))
        rows = self._store.query(
            "SELECT e.region, COUNT(*) AS n FROM events e WHERE e.kind = 'visit' "
            "AND e.t > ? AND e.t <= ? AND e.region IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            f"event_categories ec WHERE ec.event_id = e.id AND ec.category IN ({marks})) "
            "GROUP BY e.region HAVING n >= ? ORDER BY n DESC, e.region",
            (since, until, *sensitive, min_visits),
        )
        return [str(r[0]) for r in rows]

    def impressions(self, since: float, until: float) -> int:
        """How many offers were displayed in ``(since, until]``."""
        rows = self._store.query(
            "SELECT COUNT(*) FROM events WHERE kind = 'impression' AND t > ? AND t <= ?",
            (since, until),
        )
        return int(rows[0][0])

    @staticmethod
    def offers_of(db: sqlite3.Connection, event_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """``{event id: (kind, offer)}`` of those events that still exist and name an offer."""
        out: dict[int, tuple[str, str]] = {}
        for eid in event_ids:
            row = db.execute(
                "SELECT kind, offer FROM events WHERE id = ? AND offer IS NOT NULL", (eid,)
            ).fetchone()
            if row is not None:
                out[eid] = (str(row[0]), str(row[1]))
        return out
