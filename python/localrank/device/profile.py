"""The on-device profile: time-decayed category affinities and the user vector ``u``.

Built incrementally from the store's events, per signal kind, so that any context can combine
exactly the kinds its policy allows. Rules applied here:

- **Cool-down**: an event drives nothing until it is ``cooldown_s`` old (default 30 minutes):
  no offer ever reacts to what happened minutes ago.
- **Evidence**: a category counts as an interest only once ``min_evidence`` matured events
  (default 3) of allowed kinds support it; weaker categories contribute nothing to ``u`` or to
  the affinities.
- **Sensitive categories are never inferred**: events about sensitive offers or categories
  never enter the profile at all.
- **Decay**: weights halve every ``half_life_s`` (default 14 days).

The accumulators live in memory and are rebuilt from the store when events are forgotten or
expire, when time runs backwards (a replay), or when the bundle's embedding version changes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from localrank.bundle import Bundle
from localrank.device.events import EventLog, StoredEvent
from localrank.device.fold_in import fold_in_sum
from localrank.device.store import Store
from localrank.shared.policy import EVENT_SIGNAL, SIGNALS

__all__ = ["EVENT_WEIGHT", "OfferEvents", "Profile", "ProfileRules", "ProfileSync", "ProfileView"]

#: How much each kind of event says about an interest (times the event's strength).
EVENT_WEIGHT = {
    "purchase": 3.0,
    "click": 1.0,
    "view": 0.5,
    "dismiss": -1.0,
    "visit": 1.0,
    "app_use": 1.0,
    "impression": 0.0,
}


_CENTROIDS: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class ProfileRules:
    cooldown_s: float = 30 * 60
    min_evidence: int = 3
    half_life_s: float = 14 * 86400


@dataclass(frozen=True)
class ProfileView:
    """The profile as one context may see it."""

    affinity: np.ndarray  # float64[C]: decayed weights, zero below the evidence threshold
    evidence: np.ndarray  # int64[C]: matured supporting events of allowed kinds
    u: np.ndarray  # float32[d]: the user vector
    interests: list[int]  # category ids with evidence, strongest first


@dataclass
class _Event:
    id: int
    kind: str
    t: float
    strength: float
    offer_row: int  # -1 for category-only events
    categories: list[int]


@dataclass
class Profile:
    """Accumulators per signal kind; fold events in as they mature."""

    bundle: Bundle
    rules: ProfileRules = field(default_factory=ProfileRules)

    def __post_init__(self) -> None:
        C, d = len(self.bundle.taxonomy), self.bundle.config.d
        k = len(SIGNALS)
        self._aff = np.zeros((k, C))
        self._count = np.zeros((k, C), dtype=np.int64)
        self._vec = np.zeros((k, C, d))
        self._ref_t = -math.inf
        self._pending: list[_Event] = []
        self.last_event_id = 0
        self._sensitive = self.bundle.taxonomy.sensitive_mask
        self._centroids = self._category_centroids()

    def _category_centroids(self) -> np.ndarray:
        """The mean embedding of each category's offers: the vector a category-only event
        (an app use, a category view) contributes. Computed once per bundle."""
        cached = _CENTROIDS.get(self.bundle.digest)
        if cached is not None:
            return cached
        cat = self.bundle.catalog
        C = len(self.bundle.taxonomy)
        counts = np.diff(cat.cat_indptr)
        rows = np.repeat(np.arange(len(cat)), counts)
        sums = np.zeros((C, cat.d))
        np.add.at(sums, cat.cat_indices, cat.embeddings[rows].astype(np.float64))
        per = np.bincount(cat.cat_indices, minlength=C).astype(np.float64)
        centroids = sums / np.maximum(per, 1)[:, None]
        centroids.setflags(write=False)
        _CENTROIDS[self.bundle.digest] = centroids
        while len(_CENTROIDS) > 8:
            del _CENTROIDS[next(iter(_CENTROIDS))]
        return centroids

    # -- folding ---------------------------------------------------------------------------

    def add(self, events: Iterable[_Event]) -> None:
        """Queue events (any age); they are folded once matured."""
        for e in events:
            self._pending.append(e)
            self.last_event_id = max(self.last_event_id, e.id)

    def advance(self, now: float) -> None:
        """Decay to ``now`` and fold every pending event at least ``cooldown_s`` old."""
        if now > self._ref_t:
            if math.isfinite(self._ref_t):
                f = 0.5 ** ((now - self._ref_t) / self.rules.half_life_s)
                self._aff *= f
                self._vec *= f
            self._ref_t = now
        mature = now - self.rules.cooldown_s
        ready = [e for e in self._pending if e.t <= mature]
        if ready:
            self._pending = [e for e in self._pending if e.t > mature]
            self._fold(ready, now)

    def _fold(self, events: list[_Event], now: float) -> None:
        """Add matured events, in order. One scatter-add per accumulator instead of small
        numpy operations per event: a profile rebuilt from a store's events (after a new
        bundle) took ~7 µs per event that way. ``np.add.at`` adds in index order, so the sums
        are the same, bit for bit, as adding event by event."""
        ks: list[int] = []
        cs: list[int] = []
        ws: list[float] = []
        counted: list[bool] = []
        rows: list[int] = []
        for e in events:
            signal = EVENT_SIGNAL.get(e.kind)
            weight = EVENT_WEIGHT.get(e.kind, 0.0) * e.strength
            cats = [c for c in e.categories if not self._sensitive[c]]
            if signal is None or weight == 0.0 or not cats or len(cats) != len(e.categories):
                continue  # impressions, and anything touching a sensitive category, never count
            k = SIGNALS.index(signal)
            w = weight * 0.5 ** (max(0.0, now - e.t) / self.rules.half_life_s)
            share_w = w * (1.0 / len(cats))
            for c in cats:
                ks.append(k)
                cs.append(c)
                ws.append(share_w)
                counted.append(weight > 0)
                rows.append(e.offer_row)
        if not ks:
            return
        at = (np.array(ks), np.array(cs))
        w = np.array(ws)
        np.add.at(self._aff, at, w)
        np.add.at(self._count, at, np.array(counted, dtype=np.int64))
        # an offer event adds its embedding; a category-only event the category's centroid
        row = np.array(rows)
        vecs = self._centroids[at[1]].copy()
        has_offer = row >= 0
        vecs[has_offer] = self.bundle.catalog.embeddings[row[has_offer]]
        np.add.at(self._vec, at, w[:, None] * vecs)

    # -- reading ---------------------------------------------------------------------------

    def view(self, allowed: frozenset[str]) -> ProfileView:
        """The profile restricted to the signal kinds ``allowed``."""
        ks = [SIGNALS.index(s) for s in SIGNALS if s in allowed]
        C, d = self._aff.shape[1], self._vec.shape[2]
        if not ks:
            return ProfileView(np.zeros(C), np.zeros(C, np.int64), np.zeros(d, np.float32), [])
        evidence = self._count[ks].sum(axis=0)
        strong = evidence >= self.rules.min_evidence
        affinity = np.where(strong, self._aff[ks].sum(axis=0), 0.0)
        affinity = np.maximum(affinity, 0.0)
        vec = (self._vec[ks].sum(axis=0) * strong[:, None]).sum(axis=0)
        cohorts = self.bundle.cohorts
        if cohorts is not None:
            # The implicit-ALS user solve with the bundle's factors (the catalog's embeddings):
            # u = (VᵀV + λI)⁻¹ Σ w_i V_i over the allowed, matured, evidenced events.
            u = fold_in_sum(vec, cohorts.gram_inv).astype(np.float32)
        else:
            total = affinity.sum()
            u = (vec / total if total > 0 else np.zeros(d)).astype(np.float32)
        order = [int(c) for c in np.argsort(-affinity, kind="stable") if affinity[c] > 0]
        return ProfileView(affinity, evidence, u, order)


#: Kind codes of :class:`OfferEvents` (0: any other kind).
IMPRESSION, DISMISS, PURCHASE = 1, 2, 3
_KIND_CODES = {"impression": IMPRESSION, "dismiss": DISMISS, "purchase": PURCHASE}


@dataclass(frozen=True)
class OfferEvents:
    """The stored events that name an offer, as arrays: fatigue reads them on every ranking
    call without a query (on a 10k-event store the query took most of a ``recommend`` call)."""

    kind: np.ndarray  # int8: IMPRESSION, DISMISS, PURCHASE or 0
    t: np.ndarray  # float64
    row: np.ndarray  # int64: the catalog row, or -1 for an offer the bundle no longer has


class ProfileSync:
    """The profile kept in step with the event log: rebuilt after deletions (in this or another
    process), a new bundle, or time running backwards; otherwise only new events are folded.

    The stored events are cached as read, so that a new bundle rebuilds the profile without
    reading them again; the cache is dropped whenever events are deleted (the generation moves).
    """

    def __init__(self, store: Store, events: EventLog, rules: ProfileRules) -> None:
        self._store = store
        self._events = events
        self.rules = rules
        self._profile: Profile | None = None
        self._profile_now = -math.inf
        self._generation = -1
        self._rows: list[StoredEvent] = []
        self._offer_events: _OfferEventCache | None = None
        self._last_purge = -math.inf

    def reset(self) -> None:
        """Forget the in-memory profile and cache (events were deleted here)."""
        self._profile = None
        self._rows = []

    def sync(self, bundle: Bundle, now: float) -> Profile:
        """The profile of every stored event, as of ``now``."""
        if abs(now - self._last_purge) >= 3600:  # retention checked once an hour of engine time
            self._last_purge = now
            self._events.purge(now)
        generation = self._store.generation()
        if generation != self._generation:
            self._rows = []
        profile = self._profile
        if (
            profile is None
            or profile.bundle.digest != bundle.digest
            or profile.rules != self.rules
            or generation != self._generation
            or now < self._profile_now
        ):
            profile = self._profile = Profile(bundle, self.rules)
            self._generation = generation
        cached = self._rows  # read only what is newer than the cache
        cached.extend(self._events.after(cached[-1][0] if cached else 0))
        # fold only what the profile has not seen (all of it after a rebuild)
        rows = cached[bisect.bisect_right(cached, profile.last_event_id, key=lambda r: r[0]) :]
        names = bundle.taxonomy.ids
        row_of = bundle.catalog.row_of
        profile.add(
            _Event(
                eid,
                kind,
                t,
                strength,
                row_of.get(offer, -1) if offer is not None else -1,
                [names[c] for c in (cats.split("\x1f") if cats else []) if c in names],
            )
            for eid, kind, t, strength, offer, cats in rows
        )
        profile.advance(now)
        self._profile_now = now
        return profile

    def offer_events(self, bundle: Bundle) -> OfferEvents:
        """The cached events that name an offer (call :meth:`sync` first), kept in step with
        the cache: appended to as it grows, rebuilt when it is replaced or the bundle changes."""
        rows, digest = self._rows, bundle.digest
        c = self._offer_events
        if c is None or c.rows is not rows or c.digest != digest or c.done > len(rows):
            empty = OfferEvents(np.zeros(0, np.int8), np.zeros(0), np.zeros(0, np.int64))
            c = self._offer_events = _OfferEventCache(rows, digest, 0, empty)
        if c.done < len(rows):
            ids = bundle.catalog.row_of
            new = [
                (_KIND_CODES.get(k, 0), t, ids.get(o, -1))
                for _, k, t, _, o, _ in rows[c.done :]
                if o is not None
            ]
            if new:
                k2, t2, r2 = zip(*new, strict=True)
                e = c.events
                c.events = OfferEvents(
                    np.concatenate([e.kind, np.asarray(k2, np.int8)]),
                    np.concatenate([e.t, np.asarray(t2, np.float64)]),
                    np.concatenate([e.row, np.asarray(r2, np.int64)]),
                )
            c.done = len(rows)
        return c.events


@dataclass
class _OfferEventCache:
    rows: list[StoredEvent]  # the cache these arrays were made from (identity, not equality)
    digest: str
    done: int  # how many of ``rows`` are in ``events``
    events: OfferEvents
