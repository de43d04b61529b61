"""The on-device engine: one per device, every call naming the calling app's context.

>>> engine = Engine.open("device.db", public_key="models/demo-key.pub.pem",
...                      bundle="models/demo.bundle")                      # doctest: +SKIP
>>> engine.record("purchase", context="shopping", offer="offer-00042")     # doctest: +SKIP
>>> engine.recommend("shopping", k=5)                                      # doctest: +SKIP

Data flow: events → store (SQLite) → profile → segment; bundle → catalog, priors → mask +
adjust (:mod:`localrank.guardrails`) → score (the Rust kernel) → top-k + reasons.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from localrank._core import score_topk
from localrank.bundle import Bundle, open_bundle
from localrank.bundle.keys import PublicKeyLike, load_public_key
from localrank.bundle.trust import KeyTrust
from localrank.clock import Clock, SystemClock, resolve_now
from localrank.errors import BundleError, InputError, LocalrankError
from localrank.explain import Reason, sentence
from localrank.geo import Location, region_of, round_location, validate_location
from localrank.guardrails import (
    CONTEXT_FIT,
    FATIGUE,
    NEAR,
    Guardrails,
    OfferGeometry,
    adjust_term,
    eligibility,
)
from localrank.policy import EVENT_KINDS, EVENT_SIGNAL, SEGMENTS_ROW, Policy
from localrank.profile import Profile, ProfileRules, ProfileView, _Event
from localrank.reports import LedgerEntry, OutboxBatch, Reporter, ReportingStatus, SentReport
from localrank.segments import ROOT
from localrank.settings import Settings
from localrank.store import Store

__all__ = [
    "RETENTION_S",
    "Engine",
    "EventRecord",
    "Recommendation",
    "ScoringInputs",
    "SegmentInfo",
    "Tuning",
]

#: Events older than this are deleted (90 days): long enough for seasonal interests, short
#: enough that the device does not keep a lifelong diary.
RETENTION_S = 90 * 86400

# kind codes for the fatigue arrays (0: any other kind)
_IMPRESSION, _DISMISS, _PURCHASE = 1, 2, 3
_KIND_CODES = {"impression": _IMPRESSION, "dismiss": _DISMISS, "purchase": _PURCHASE}

#: An event may be at most this far ahead of the engine's clock (clock skew between an app and
#: the engine), never more.
FUTURE_SKEW_S = 300
#: The largest event strength: a weight relative to the default 1, never enough to swamp (or
#: overflow) the profile.
MAX_STRENGTH = 100.0
OFFER_EVENTS = ("impression", "click", "purchase", "dismiss")
ATTRIBUTES = ("age_band", "occupation", "region")


@dataclass(frozen=True)
class Tuning:
    """The engine's own knobs (the evaluation tunes them on a validation split)."""

    w_dot: float = 1.0
    w_prior: float = 1.0
    rules: ProfileRules = field(default_factory=ProfileRules)


@dataclass(frozen=True)
class Recommendation:
    """One ranked offer and why it was shown."""

    offer_id: str
    title: str
    score: float
    reasons: list[tuple[str, float]]
    explanation: str


@dataclass(frozen=True)
class ScoringInputs:
    """Exactly what the kernel receives for one request, plus the guardrail inputs behind it."""

    u: np.ndarray
    prior: np.ndarray
    w_dot: float
    w_prior: float
    eligible: np.ndarray
    adjust: np.ndarray
    segment: int
    context_id: int
    guardrails: Guardrails


@dataclass(frozen=True)
class SegmentInfo:
    finest: int
    active: int
    finest_path: str
    active_path: str


@dataclass(frozen=True)
class EventRecord:
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
        return cls(
            eid,
            kind,
            context,
            offer,
            category,
            t,
            strength,
            location=(lat, lon) if lat is not None else None,
        )


class Engine:
    """The device's recommendation engine. Open with :meth:`Engine.open`."""

    def __init__(
        self, store: Store, public_key: PublicKeyLike, clock: Clock, tuning: Tuning
    ) -> None:
        self._store = store
        self._trust = self._read_trust(load_public_key(public_key))
        self._clock = clock
        self.tuning = tuning
        self._bundle: Bundle | None = None
        self._geometry: OfferGeometry | None = None
        self._profile: Profile | None = None
        self._profile_now = -math.inf
        self._generation = -1
        # The stored events as read, for rebuilding the profile under a new bundle without
        # reading them again; dropped whenever events are deleted (the generation changes).
        self._event_rows: list[tuple[Any, ...]] = []
        self._offer_event_arrays: tuple[Any, ...] | None = None
        self._last_purge = -math.inf
        self.last_report_stops: list[str] = []
        self._settings = self._read_settings()
        self._reporter = Reporter(
            store,
            lambda: self.bundle,
            lambda: self._settings,
            lambda t: self._segment_ids(t),
        )
        stored = store.query("SELECT data, version FROM bundle WHERE id = 1")
        self._stored_version: int | None = int(stored[0][1]) if stored else None
        if stored:
            # The stored bundle was verified when installed; verify again (the file may have
            # been tampered with) but allow an expired one to keep serving as the last good.
            # One that no longer verifies (a new server key) is not used, but must not lock
            # the user out of their store: load_bundle() installs a fresh one, no older.
            with contextlib.suppress(BundleError):
                self._install(
                    open_bundle(stored[0][0], self._trust.installed_keys(), now=-math.inf)
                )

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        public_key: PublicKeyLike,
        bundle: bytes | str | Path | None = None,
        clock: Clock | None = None,
        tuning: Tuning | None = None,
    ) -> Engine:
        """Open (or create) the device store at ``path``.

        Args:
            path: the SQLite file.
            public_key: the server's Ed25519 public key (PEM path, PEM bytes or key object);
                every bundle must verify against it.
            bundle: a bundle to load now (path or bytes); optional if the store holds one.
            clock: where time comes from when a call passes no ``now`` (default: wall clock).
            tuning: the engine's knobs.
        """
        if clock is not None and not isinstance(clock, Clock):
            raise InputError(f"clock: expected an object with now(), got {clock!r}")
        if tuning is not None and not isinstance(tuning, Tuning):
            raise InputError(f"tuning: expected a Tuning, got {tuning!r}")
        public_key = load_public_key(public_key)
        engine = cls(Store(path), public_key, clock or SystemClock(), tuning or Tuning())
        if bundle is not None:
            engine.load_bundle(bundle)
        return engine

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bundle --------------------------------------------------------------------------------

    def load_bundle(self, source: bytes | str | Path, *, now: float | None = None) -> Bundle:
        """Verify and install a bundle (bytes or a file path).

        Refuses a bad signature, a truncated or unsigned file, an expired bundle, an unknown
        format version, and a rollback to an older version, raising the matching
        :class:`~localrank.errors.BundleError`. After a refusal the last good bundle stays in
        use. Loading the installed version again is a no-op.
        """
        if isinstance(source, (str, Path)):
            try:
                data = Path(source).read_bytes()
            except OSError as e:
                raise InputError(f"source: cannot read bundle file {source}: {e}") from e
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        else:
            raise InputError(f"source: expected bytes or a path, got {type(source).__name__}")
        t = self._now(now)
        current = self._bundle.version if self._bundle else self._stored_version
        bundle = open_bundle(data, self._trust.bundle_keys(t), now=t, current_version=current)
        if self._bundle is not None and bundle.digest == self._bundle.digest:
            return self._bundle
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO bundle (id, version, digest, data) VALUES (1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET version = excluded.version, "
                "digest = excluded.digest, data = excluded.data",
                (bundle.version, bundle.digest, data),
            )
        self._install(bundle)
        return bundle

    # -- keys ----------------------------------------------------------------------------------

    def _read_trust(self, configured: Any) -> KeyTrust:
        """The stored key chain if it knows the configured key (the app may ship the root or a
        key the chain introduced since); otherwise the configured key is a new root."""
        rows = self._store.query("SELECT value FROM settings WHERE key = 'key_trust'")
        if rows:
            with contextlib.suppress(LocalrankError, ValueError, KeyError, TypeError):
                trust = KeyTrust.from_json(rows[0][0])
                if trust.knows(configured):
                    return trust
        return KeyTrust(configured)

    @property
    def trusted_key(self) -> Any:
        """The public key new bundles must be signed with (after any key transitions)."""
        return self._trust.current

    def apply_key_statements(self, statements: Sequence[object]) -> int:
        """Apply the server's key chain (``GET /v1/keys``; see :mod:`localrank.bundle.trust`):
        a transition signed by the trusted key moves trust to a new key, a retirement signed by
        a newer key stops trusting an old one. Persisted before it takes effect. Returns how
        many statements were new.

        Raises:
            KeyStatementError: a statement was forged, out of order, or a fork of one applied
                before; the statements before it stay applied.
        """
        trial = KeyTrust.from_json(self._trust.to_json())
        try:
            new = trial.apply(statements)
        finally:
            # keep whatever prefix was valid, as apply() does
            if trial.sequence != self._trust.sequence:
                with self._store.transaction() as db:
                    db.execute(
                        "INSERT INTO settings (key, value) VALUES ('key_trust', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (trial.to_json(),),
                    )
                self._trust = trial
        return new

    def _install(self, bundle: Bundle) -> None:
        previous = self._bundle
        self._bundle = bundle
        self._geometry = OfferGeometry.of(bundle)
        if previous is None or previous.digest != bundle.digest:
            # The profile is built from the bundle: embeddings (a new embedding version), the
            # offers, and the taxonomy with its sensitive marks. Rebuild it from the stored
            # events whenever a different bundle is installed.
            self._profile = None

    @property
    def bundle(self) -> Bundle:
        """The bundle in use."""
        if self._bundle is None:
            raise LocalrankError("engine: no bundle loaded yet; call load_bundle() first")
        return self._bundle

    def _context_id(self, context: object) -> int:
        if not isinstance(context, str):
            raise InputError(f"context: expected a context name, got {context!r}")
        return self.bundle.config.context_id(context)

    # -- settings ------------------------------------------------------------------------------

    def _read_settings(self) -> Settings:
        rows = self._store.query("SELECT value FROM settings WHERE key = 'settings'")
        return Settings.from_json(rows[0][0]) if rows else Settings()

    @property
    def settings(self) -> Settings:
        """The current settings (a snapshot; change them with :meth:`update_settings`)."""
        self._settings = self._read_settings()
        return self._settings

    def update_settings(self, **changes: Any) -> Settings:
        """Change settings: ``level``, ``quiet_hours``, ``timezone``, ``daily_cap``,
        ``offer_cap``, ``context_overrides`` (may only remove signals), ``sensitive_opt_ins``
        (sensitive category names) and ``reporting`` (the consent to send reports)."""
        new = self.settings.with_changes(**changes)
        if "context_overrides" in changes:
            Policy.validate_overrides(new.context_overrides, self.bundle.config.contexts)
        for c in new.sensitive_opt_ins if "sensitive_opt_ins" in changes else ():
            tax = self.bundle.taxonomy
            if c not in tax or not tax.is_sensitive(c):
                options = [x for x in tax.names if tax.is_sensitive(x)]
                raise InputError(
                    f"sensitive_opt_ins: {c!r} is not a sensitive category; "
                    f"expected some of {options}"
                )
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES ('settings', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (new.to_json(),),
            )
            if not new.reporting or new.level == "off":
                self._reporter.drop_unsent(db)
        self._settings = new
        return new

    @property
    def policy(self) -> Policy:
        s = self._settings
        return Policy({k: frozenset(v) for k, v in s.context_overrides.items()})

    # -- events --------------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        t = resolve_now(now, self._clock)
        if now is not None and t > self._clock.now() + FUTURE_SKEW_S:
            raise InputError(
                f"now: {t:.0f} is more than {FUTURE_SKEW_S} s ahead of the engine's clock "
                f"({self._clock.now():.0f}); events cannot come from the future"
            )
        return t

    def record(
        self,
        kind: str,
        *,
        context: str,
        offer: str | None = None,
        category: str | None = None,
        location: Location | None = None,
        strength: float = 1.0,
        now: float | None = None,
    ) -> int:
        """Store one event on the device and return its id.

        Args:
            kind: ``impression`` (an offer the app actually displayed), ``click``,
                ``purchase``, ``dismiss``, ``view`` (content viewed), ``visit`` (a place) or
                ``app_use``.
            context: the calling app's context.
            offer: a catalog offer id; required for impression, click, purchase and dismiss.
            category: a taxonomy category, for events not about an offer (a view, an app use).
            location: ``(lat, lon)``, passed only when the OS granted it; stored rounded to
                about 1 km. Required for ``visit``.
            strength: a weight in [0, 100] (default 1).
            now: the event's time (default: the engine's clock); never in the future.
        """
        if kind not in EVENT_KINDS:
            raise InputError(f"kind: expected one of {list(EVENT_KINDS)}, got {kind!r}")
        self._context_id(context)
        t = self._now(now)
        self._settings = self._read_settings()
        b = self.bundle
        cats: list[str] = []
        if kind in OFFER_EVENTS and offer is None:
            raise InputError(f"offer: a {kind!r} event needs the offer it is about")
        if offer is not None:
            row = b.catalog.index_of(offer) if isinstance(offer, str) else -1
            if row < 0:
                raise InputError(f"offer: expected an offer id from the catalog, got {offer!r}")
            cats = [b.taxonomy.names[c] for c in b.catalog.categories_of(row)]
        if category is not None:
            if not isinstance(category, str):
                raise InputError(f"category: expected a category name, got {category!r}")
            b.taxonomy.index(category)
            if category not in cats:
                cats.append(category)
        if kind in ("view", "app_use") and not cats:
            raise InputError(f"offer/category: a {kind!r} event needs an offer or a category")
        loc = None
        if location is not None:
            loc = round_location(validate_location(location))
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
        with self._store.transaction() as db:
            cur = db.execute(
                "INSERT INTO events (kind, context, offer, category, lat, lon, region, strength, "
                "t) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    context,
                    offer,
                    category,
                    loc[0] if loc else None,
                    loc[1] if loc else None,
                    region_of(loc) if loc else None,
                    float(strength),
                    t,
                ),
            )
            event_id = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO event_categories (event_id, category) VALUES (?, ?)",
                [(event_id, c) for c in cats],
            )
            self._after_record(db, event_id, kind, offer, t)
        return event_id

    def _after_record(self, db: Any, event_id: int, kind: str, offer: str | None, t: float) -> None:
        self._reporter.on_record(db, event_id, kind, offer, t)

    def set_attributes(
        self,
        age_band: str | None = None,
        occupation: str | None = None,
        region: str | None = None,
    ) -> dict[str, str]:
        """Set on-device demographics (None leaves a value unchanged). They never leave the
        device; ``region`` (one of the bundle's regions, e.g. ``zip-9``) may shape the segment
        where the policy's ``segments`` row allows it."""
        values = {"age_band": age_band, "occupation": occupation, "region": region}
        for key, value in values.items():
            if value is not None and (not isinstance(value, str) or not value or len(value) > 64):
                raise InputError(f"{key}: expected a short non-empty string, got {value!r}")
        if region is not None and region not in self.bundle.config.regions:
            raise InputError(
                f"region: expected one of the bundle's regions {list(self.bundle.config.regions)}, "
                f"got {region!r}"
            )
        with self._store.transaction() as db:
            for key, value in values.items():
                if value is not None:
                    db.execute(
                        "INSERT INTO attributes (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
        return self.attributes()

    def attributes(self) -> dict[str, str]:
        return dict(self._store.query("SELECT key, value FROM attributes ORDER BY key"))

    # -- profile -------------------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        """Delete events past the retention; checked at most once an hour of engine time."""
        if abs(now - self._last_purge) < 3600:
            return
        self._last_purge = now
        cutoff = now - RETENTION_S
        if not self._store.query("SELECT 1 FROM events WHERE t < ? LIMIT 1", (cutoff,)):
            return
        with self._store.transaction() as db:
            if db.execute("DELETE FROM events WHERE t < ?", (cutoff,)).rowcount:
                self._bump_generation(db)

    def _bump_generation(self, db: Any) -> None:
        db.execute(
            "INSERT INTO settings (key, value) VALUES ('generation', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
        )

    def _sync_profile(self, now: float) -> Profile:
        """Bring the in-memory profile up to ``now``: rebuild after deletions (in this or
        another process), a new embedding space, or time running backwards; otherwise fold in
        only the events added since the last call."""
        self._purge(now)
        gen_rows = self._store.query("SELECT value FROM settings WHERE key = 'generation'")
        generation = int(gen_rows[0][0]) if gen_rows else 0
        if generation != self._generation:
            self._event_rows = []
        if self._profile is None or generation != self._generation or now < self._profile_now:
            self._profile = Profile(self.bundle, self.tuning.rules)
            self._generation = generation
        profile = self._profile
        cached = self._event_rows  # read only what is newer than the cache
        cached.extend(
            self._store.query(
                "SELECT e.id, e.kind, e.t, e.strength, e.offer, "
                "       (SELECT group_concat(category, char(31)) FROM event_categories "
                "        WHERE event_id = e.id) "
                "FROM events e WHERE e.id > ? ORDER BY e.id",
                (cached[-1][0] if cached else 0,),
            )
        )
        # fold only what the profile has not seen (all of it after a rebuild)
        rows = cached[bisect.bisect_right(cached, profile.last_event_id, key=lambda r: r[0]) :]
        names = self.bundle.taxonomy.ids
        catalog = self.bundle.catalog
        events = []
        for eid, kind, t, strength, offer, cats in rows:
            row = -1
            if offer is not None:
                try:
                    row = catalog.index_of(offer)
                except InputError:
                    row = -1  # an offer no longer in the catalog still counts by category
            ids = [names[c] for c in (cats.split("\x1f") if cats else []) if c in names]
            events.append(_Event(eid, kind, t, strength, row, ids))
        profile.add(events)
        profile.advance(now)
        self._profile_now = now
        return profile

    def _segment_ids(self, t: float) -> tuple[int, int]:
        seg = self._segment(self._sync_profile(t), t)
        return seg.finest, seg.active

    def _view(self, context: str, now: float) -> ProfileView:
        return self._sync_profile(now).view(self.policy.allowed(context))

    def segment(self, *, now: float | None = None) -> SegmentInfo:
        """The device's finest segment and the active one it may use and report."""
        t = self._now(now)
        return self._segment(self._sync_profile(t), t)

    def _segment(self, profile: Profile, t: float, context: str | None = None) -> SegmentInfo:
        """The segment the ``segments`` row allows (the one that may leave the device) or,
        with ``context``, the one that may rank offers there: built only from signals both
        rows allow, the region only where the context may use location (visits) or
        demographics (the attribute). A game never ranks by a navigation app's visits."""
        b = self.bundle
        row = self.policy.allowed(SEGMENTS_ROW)
        signals = row - {"region"}
        sources = {"location", "demographics"}
        if context is not None:
            allowed = self.policy.allowed(context)
            signals &= allowed
            sources &= allowed
        view = profile.view(signals)
        top = [b.taxonomy.names[c] for c in view.interests[:2]]
        region = self._region(t, sources) if "region" in row else None
        finest = b.segments.finest(top, region)
        active = b.segments.active(finest, b.config.min_population)
        return SegmentInfo(finest, active, b.segments.paths[finest], b.segments.paths[active])

    def _region(self, t: float, sources: set[str]) -> str | None:
        """The region attribute if set, else the bundle region visited most (90 days). Like
        interests, visits count only once matured (the cool-down) and with enough of them in
        a region (the evidence threshold), and never when they touch a sensitive category."""
        regions = self.bundle.config.regions
        attr = self.attributes().get("region") if "demographics" in sources else None
        if attr in regions:
            return attr
        if "location" not in sources:
            return None
        rules = self.tuning.rules
        tax = self.bundle.taxonomy
        sensitive = [c for c in tax.names if tax.is_sensitive(c)]
        marks = ", ".join("?" * len(sensitive))
        rows = self._store.query(
            "SELECT e.region, COUNT(*) AS n FROM events e WHERE e.kind = 'visit' "
            "AND e.t > ? AND e.t <= ? AND e.region IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            f"event_categories ec WHERE ec.event_id = e.id AND ec.category IN ({marks})) "
            "GROUP BY e.region HAVING n >= ? ORDER BY n DESC, e.region",
            (t - RETENTION_S, t - rules.cooldown_s, *sensitive, rules.min_evidence),
        )
        return next((r for r, _ in rows if r in regions), None)

    # -- ranking -------------------------------------------------------------------------------

    def _fatigue(self, t: float) -> np.ndarray:
        """Per-offer fatigue: impressions in the last 24 h, plus ``offer_cap`` (so the offer
        rests) for a dismiss in the last 7 days or a purchase still on the device (an offer
        already taken up is not pushed again).

        Computed from the events :meth:`_sync_profile` has just brought up to date, without a
        query: on a 10k-event store the query took most of a ``recommend`` call."""
        kind, when, row = self._offer_events()
        fatigue = np.zeros(len(self.bundle.catalog), dtype=np.float32)
        past = (when <= t) & (row >= 0)
        shown = past & (kind == _IMPRESSION) & (when > t - 86400)
        np.add.at(fatigue, row[shown], np.float32(1))
        done = past & (((kind == _DISMISS) & (when > t - 7 * 86400)) | (kind == _PURCHASE))
        rests = np.zeros(fatigue.shape, dtype=bool)
        rests[row[done]] = True
        fatigue[rests] += np.float32(self._settings.offer_cap)
        return fatigue

    def _offer_events(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kind code, t, catalog row or -1) of the cached events that name an offer, kept in
        step with ``_event_rows`` (appended to as it grows, rebuilt when it is replaced or the
        bundle changes)."""
        rows, digest = self._event_rows, self.bundle.digest
        cached = self._offer_event_arrays
        if cached is None or cached[0] is not rows or cached[1] != digest or cached[2] > len(rows):
            cached = (rows, digest, 0, np.zeros(0, np.int8), np.zeros(0), np.zeros(0, np.int64))
        _, _, done, kind, when, row = cached
        if done < len(rows):
            ids = self.bundle.catalog.row_of
            new = [
                (_KIND_CODES.get(k, 0), t, ids.get(o, -1))
                for _, k, t, _, o, _ in rows[done:]
                if o is not None
            ]
            if new:
                k2, t2, r2 = zip(*new, strict=True)
                kind = np.concatenate([kind, np.asarray(k2, np.int8)])
                when = np.concatenate([when, np.asarray(t2, np.float64)])
                row = np.concatenate([row, np.asarray(r2, np.int64)])
            cached = (rows, digest, len(rows), kind, when, row)
        self._offer_event_arrays = cached
        return kind, when, row

    def scoring_inputs(
        self, context: str, *, location: Location | None = None, now: float | None = None
    ) -> ScoringInputs:
        """Exactly what the kernel receives for ``context``: ``u``, the prior, the weights,
        the eligibility mask and ``adjust``. The ONNX parity tests and debugging use it."""
        ctx = self._context_id(context)
        t = self._now(now)
        loc = validate_location(location) if location is not None else None
        self._settings = self._read_settings()
        s = self._settings
        b = self.bundle
        level = s.level
        profile = self._sync_profile(t)
        view = profile.view(self.policy.allowed(context))
        seg = self._segment(profile, t, context)
        C = len(b.taxonomy)
        opt = np.zeros(C, dtype=np.float32)
        for c in s.sensitive_opt_ins:
            if c in b.taxonomy:  # an opt-in to a category a newer bundle dropped is moot
                opt[b.taxonomy.index(c)] = 1.0
        g = Guardrails(
            now=t,
            context_id=ctx,
            level_off=level == "off",
            opt_ins=opt,
            fatigue=self._fatigue(t),
            offer_cap=s.offer_cap,
            location_allowed=self.policy.allows(context, "location"),
            location=loc,
        )
        assert self._geometry is not None
        w_dot = self.tuning.w_dot if level == "full" else 0.0
        w_prior = self.tuning.w_prior if level != "off" else 0.0
        # The segment's lift over the whole fleet (the root): the bias already carries the
        # fleet's popularity, so the root's own shares would count each category's
        # popularity twice (at the root, coarse ranked below off: docs/design.md).
        prior = b.priors[seg.active] - b.priors[ROOT] if level != "off" else np.zeros(C, np.float32)
        u = view.u if level == "full" else np.zeros(b.config.d, np.float32)
        return ScoringInputs(
            u=np.ascontiguousarray(u, dtype=np.float32),
            prior=np.ascontiguousarray(prior, dtype=np.float32),
            w_dot=w_dot,
            w_prior=w_prior,
            eligible=eligibility(b, self._geometry, g),
            adjust=adjust_term(self._geometry, g),
            segment=seg.active if level != "off" else ROOT,
            context_id=ctx,
            guardrails=g,
        )

    def _leave_alone(self, t: float) -> bool:
        s = self._settings
        if s.in_quiet_hours(t):
            return True
        snoozed = self._store.query("SELECT until FROM snoozes WHERE scope = '*'")
        if snoozed and snoozed[0][0] > t:
            return True
        shown = self._store.query(
            "SELECT COUNT(*) FROM events WHERE kind = 'impression' AND t > ? AND t <= ?",
            (t - 86400, t),
        )[0][0]
        return bool(shown >= s.daily_cap)

    def recommend(
        self,
        context: str,
        *,
        k: int = 10,
        location: Location | None = None,
        now: float | None = None,
    ) -> list[Recommendation]:
        """Rank offers for the calling app's ``context``.

        Returns nothing during quiet hours, a snooze, or once the daily cap is reached. The
        Rust kernel ranks; the mask and ``adjust`` come from the guardrails. Nothing is cached
        between calls. An app reports what it actually displayed with
        ``record("impression", ...)``; caps and fatigue count those.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k: expected an integer ≥ 1, got {k!r}")
        inputs = self.scoring_inputs(context, location=location, now=now)
        if self._leave_alone(inputs.guardrails.now):
            return []
        b = self.bundle
        cat = b.catalog
        idx, scores = score_topk(
            inputs.u,
            cat.embeddings,
            cat.bias,
            cat.category,
            inputs.prior,
            inputs.eligible,
            w_dot=inputs.w_dot,
            w_prior=inputs.w_prior,
            adjust=inputs.adjust,
            k=k,
        )
        view = self._profile.view(self.policy.allowed(context)) if self._profile else None
        return [
            self._explain(int(i), float(s), inputs, view) for i, s in zip(idx, scores, strict=True)
        ]

    def _explain(
        self, i: int, score: float, x: ScoringInputs, view: ProfileView | None
    ) -> Recommendation:
        b = self.bundle
        cat = b.catalog
        tax = b.taxonomy
        c = int(cat.category[i])
        g = x.guardrails
        near = 0.0
        if g.location is not None and g.location_allowed and cat.local[i]:
            assert self._geometry is not None
            d2 = float(self._geometry.dist2(g.location)[i])
            near = float(NEAR) * (1.0 - d2 / float(self._geometry.radius2[i]))
        assert self._geometry is not None
        seg_label = None
        if x.segment != ROOT:
            seg_label = tax[tax.index(b.segments.paths[x.segment].split("/")[0])].display
        interest_label = None
        if x.w_dot:
            mine = [tax.names[c2] for c2 in cat.categories_of(i)]
            if view is not None:
                for c2 in view.interests:
                    if tax.names[c2] in mine:
                        interest_label = tax[c2].display
                        break
        reasons = [
            Reason("interest", x.w_dot * float(np.dot(x.u, cat.embeddings[i])), interest_label),
            Reason("segment", x.w_prior * float(x.prior[c]), seg_label),
            Reason("popular", float(cat.bias[i])),
            Reason("near", near),
            Reason("context", float(CONTEXT_FIT) if self._geometry.targeted[i] else 0.0),
            Reason("fatigue", -float(FATIGUE) * float(g.fatigue[i])),
        ]
        return Recommendation(
            offer_id=cat.ids[i],
            title=cat.titles[i],
            score=score,
            reasons=[(r.kind, r.weight) for r in reasons if r.weight != 0.0],
            explanation=sentence(reasons),
        )

    # -- leave-alone controls --------------------------------------------------------------------

    def snooze(self, *, now: float | None = None) -> float:
        """Leave the user alone for a while; returns until when. Each snooze within 30 days of
        the last one lasts twice as long (1 day, 2, 4, … up to 30 days)."""
        t = self._now(now)
        rows = self._store.query("SELECT level, t FROM snoozes WHERE scope = '*'")
        level = 0
        if rows and t - rows[0][1] < 30 * 86400:
            level = rows[0][0] + 1
        until = t + min(30 * 86400, 86400 * 2**level)
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO snoozes (scope, until, level, t) VALUES ('*', ?, ?, ?) "
                "ON CONFLICT(scope) DO UPDATE SET until = excluded.until, "
                "level = excluded.level, t = excluded.t",
                (until, level, t),
            )
        return until

    # -- transparency and control -------------------------------------------------------------

    def events(self, *, limit: int | None = None) -> list[EventRecord]:
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise InputError(f"limit: expected None or an integer ≥ 0, got {limit!r}")
        rows = self._store.query(
            "SELECT id, kind, context, offer, category, t, strength, lat, lon FROM events "
            "ORDER BY id" + (" LIMIT ?" if limit is not None else ""),
            (limit,) if limit is not None else (),
        )
        return [EventRecord._of(r) for r in rows]

    def why_interest(self, category: str, *, now: float | None = None) -> list[EventRecord]:
        """The stored events behind an interest in ``category`` (newest first)."""
        self.bundle.taxonomy.index(category)
        t = self._now(now)
        rows = self._store.query(
            "SELECT e.id, e.kind, e.context, e.offer, e.category, e.t, e.strength, e.lat, e.lon "
            "FROM events e JOIN event_categories ec ON ec.event_id = e.id "
            "WHERE ec.category = ? AND e.t <= ? ORDER BY e.t DESC, e.id DESC",
            (category, t),
        )
        return [EventRecord._of(r) for r in rows if EVENT_SIGNAL.get(r[1]) is not None]

    def interests(self, context: str, *, now: float | None = None) -> list[tuple[str, float]]:
        """The interests ``context`` may use, strongest first, as (category, weight)."""
        self._context_id(context)
        view = self._view(context, self._now(now))
        names = self.bundle.taxonomy.names
        return [(names[c], float(view.affinity[c])) for c in view.interests]

    def export(self) -> dict[str, Any]:
        """Everything stored on the device, as JSON-ready data."""

        def table(sql: str, cols: Sequence[str]) -> list[dict[str, Any]]:
            return [dict(zip(cols, r, strict=True)) for r in self._store.query(sql)]

        return {
            "settings": json.loads(self.settings.to_json()),
            "attributes": self.attributes(),
            "events": [e.__dict__ for e in self.events()],
            "snoozes": table(
                "SELECT scope, until, level, t FROM snoozes", ("scope", "until", "level", "t")
            ),
            "bundle": {"version": self.bundle.version, "digest": self.bundle.digest}
            if self._bundle
            else None,
            **self._export_reports(),
        }

    def _export_reports(self) -> dict[str, Any]:
        return {
            "privacy_ledger": [e.__dict__ for e in self.privacy_ledger()],
            "outbox": [r.__dict__ for r in self.outbox(include_pending=True)],
            "memoised_responses": self._store.query("SELECT COUNT(*) FROM memos")[0][0],
        }

    def forget(
        self,
        event_ids: Sequence[int] | None = None,
        *,
        everything: bool = False,
        now: float | None = None,
    ) -> int:
        """Delete events (or everything) for good; returns how many events were deleted.

        Deleted rows are zeroed (``secure_delete``), the WAL is checkpointed and truncated and
        the file vacuumed, so no byte of them remains in the database, WAL or shm files; the
        profile is rebuilt. Forgetting single events keeps what protects the user (memoised
        responses, the privacy ledger) and drops any report made from them but not yet sent.
        ``everything=True`` wipes all of it — events, attributes, opt-ins, consent, time zone,
        memos, ledger, outbox — and starts the silent period during which nothing is sent. Only
        the choices that ask to be left alone survive: the level, quiet hours and caps.
        """
        if not isinstance(everything, bool):
            raise InputError(f"everything: expected True or False, got {everything!r}")
        if everything == (event_ids is not None):
            raise InputError("event_ids: pass either event ids or everything=True, not both")
        ids: list[int] = []
        if event_ids is not None:
            if isinstance(event_ids, (str, bytes)) or not isinstance(
                event_ids, (Sequence, set, frozenset)
            ):
                raise InputError(f"event_ids: expected a list of event ids, got {event_ids!r}")
            for i in event_ids:
                if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
                    raise InputError(f"event_ids: expected integer event ids, got {i!r}")
                ids.append(int(i))
        t = self._now(now)
        with self._store.transaction() as db:
            if everything:
                kept = self._read_settings()
                n = db.execute("DELETE FROM events").rowcount
                for tbl in ("attributes", "snoozes"):
                    db.execute(f"DELETE FROM {tbl}")
                # the generation survives, so that other processes see the wipe; so does the
                # key chain: it is the server's, not the user's, and dropping it would re-trust
                # retired keys
                db.execute("DELETE FROM settings WHERE key NOT IN ('generation', 'key_trust')")
                calm = Settings(
                    level=kept.level,
                    quiet_hours=kept.quiet_hours,
                    daily_cap=kept.daily_cap,
                    offer_cap=kept.offer_cap,
                )
                if calm != Settings():
                    db.execute(
                        "INSERT INTO settings (key, value) VALUES ('settings', ?)",
                        (calm.to_json(),),
                    )
                self._forget_reports(db, t)
            else:
                n = 0
                for i in ids:
                    self._reporter.forget_event(db, i)
                    n += db.execute("DELETE FROM events WHERE id = ?", (i,)).rowcount
            self._bump_generation(db)
        self._store.scrub()
        self._settings = self._read_settings()
        self._profile = None
        self._event_rows = []
        return n

    def _forget_reports(self, db: Any, t: float) -> None:
        self._reporter.forget_everything(db, t)

    # -- what leaves the device -----------------------------------------------------------------

    def reporting_status(self, *, now: float | None = None) -> ReportingStatus:
        """Whether reports are being made, and if not, why."""
        self._settings = self._read_settings()
        return self._reporter.status(self._now(now))

    def privacy_ledger(self) -> list[LedgerEntry]:
        """Every ε the device spent: each report and each memoised permanent response."""
        return self._reporter.accountant.entries()

    def outbox(self, *, include_pending: bool = False) -> list[SentReport]:
        """Every report that left the device: when, where to, its size and its ε (and, with
        ``include_pending``, the ones still queued)."""
        return self._reporter.outbox.sent(include_pending=include_pending)

    def report_backlog(self, *, now: float | None = None) -> int:
        """How many events that have happened by ``now`` wait for an engagement report."""
        t = self._now(now)
        return int(self._store.query("SELECT COUNT(*) FROM pending WHERE t <= ?", (t,))[0][0])

    def next_report_at(self, *, now: float | None = None) -> float:
        """When this device could next make an engagement report under its 30-day privacy
        budget: ``now`` when one fits now, else the moment enough past spending ages out. A
        sync client can sleep until then instead of waking up to send nothing. (In central
        mode an engagement report spends no local ε, so this is always ``now``.)"""
        t = self._now(now)
        c = self.bundle.config
        if c.mode != "ldp":
            return t
        return self._reporter.accountant.window_frees_at(c.epsilon, c, t)

    def take_batch(self, *, now: float | None = None) -> OutboxBatch | None:
        """Make this epoch's due reports (within ``L`` and the budgets) and hand out the next
        batch to send, or None. Until :meth:`acknowledge` is called, the same batch (same
        nonces) is handed out again, so retries are idempotent."""
        t = self._now(now)
        self._settings = self._read_settings()
        if not self._reporter.status(t).active:
            return None
        self.last_report_stops = self._reporter.prepare(t)
        return self._reporter.outbox.take(t)

    def acknowledge(
        self, batch: OutboxBatch, *, destination: str, now: float | None = None
    ) -> None:
        """Record that ``batch`` reached ``destination`` (the server stored every report)."""
        if not isinstance(batch, OutboxBatch):
            raise InputError(f"batch: expected an OutboxBatch, got {type(batch).__name__}")
        if not isinstance(destination, str) or not destination:
            raise InputError(f"destination: expected a non-empty string, got {destination!r}")
        self._reporter.outbox.acknowledge(batch, destination=destination, now=self._now(now))
