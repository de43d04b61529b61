"""The on-device engine: one per device, every call naming the calling app's context.

>>> engine = Engine.open("device.db", public_key="models/demo-key.pub.pem",
...                      bundle="models/demo.bundle")                      # doctest: +SKIP
>>> engine.record("purchase", context="shopping", offer="offer-00042")     # doctest: +SKIP
>>> engine.recommend("shopping", k=5)                                      # doctest: +SKIP

A façade: it validates what an app passes and hands each job to its module. Events →
:mod:`~localrank.device.events` (SQLite, :mod:`~localrank.device.store`) →
:mod:`~localrank.device.profile` → :mod:`~localrank.device.segmentation`; bundle → mask and
adjust (:mod:`~localrank.device.guardrails`) → :mod:`~localrank.device.ranking` (the Rust
kernel) → top-k + reasons; :mod:`~localrank.device.reports` makes what leaves the device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from localrank.bundle import Bundle
from localrank.bundle.keys import PublicKeyLike, load_public_key
from localrank.device.events import RETENTION_S, EventLog, EventRecord, NewEvent
from localrank.device.installed_bundle import InstalledBundle
from localrank.device.profile import Profile, ProfileSync, ProfileView
from localrank.device.ranking import (
    Recommendation,
    ScoringInputs,
    Tuning,
    fatigue,
    guardrails_for,
    leave_alone,
    rank,
    scoring_inputs,
)
from localrank.device.reports import LedgerEntry, OutboxBatch, Reporter, ReportingStatus, SentReport
from localrank.device.reports.outbox import Outbox
from localrank.device.segmentation import Segmentation, SegmentInfo
from localrank.device.settings import Settings
from localrank.device.store import Store
from localrank.errors import InputError, LocalrankError
from localrank.shared.clock import Clock, SystemClock, resolve_now
from localrank.shared.geo import Location, validate_location
from localrank.shared.policy import EVENT_SIGNAL, Policy

__all__ = [
    "RETENTION_S",
    "Engine",
    "EventRecord",
    "Recommendation",
    "ScoringInputs",
    "SegmentInfo",
    "Tuning",
]

#: An event may be at most this far ahead of the engine's clock (clock skew between an app and
#: the engine), never more.
FUTURE_SKEW_S = 300


class Engine:
    """The device's recommendation engine. Open with :meth:`Engine.open`."""

    def __init__(
        self, store: Store, public_key: PublicKeyLike, clock: Clock, tuning: Tuning
    ) -> None:
        self._store = store
        self._clock = clock
        self._installed = InstalledBundle(store, load_public_key(public_key))
        self._events = EventLog(store)
        self._profiles = ProfileSync(store, self._events, tuning.rules)
        self._segmentation = Segmentation(store, self._events)
        self._reporter = Reporter(store)
        self._tuning = tuning
        self.last_report_stops: list[str] = []
        self._settings = self._read_settings()

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

    @property
    def tuning(self) -> Tuning:
        return self._tuning

    @tuning.setter
    def tuning(self, tuning: Tuning) -> None:
        if not isinstance(tuning, Tuning):
            raise InputError(f"tuning: expected a Tuning, got {tuning!r}")
        self._tuning = tuning
        self._profiles.rules = tuning.rules  # a change of rules rebuilds the profile

    # -- bundle and keys -----------------------------------------------------------------------

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
        return self._installed.install(data, self._now(now))

    @property
    def bundle(self) -> Bundle:
        """The bundle in use."""
        if self._installed.bundle is None:
            raise LocalrankError("engine: no bundle loaded yet; call load_bundle() first")
        return self._installed.bundle

    @property
    def trusted_key(self) -> Any:
        """The public key new bundles must be signed with (after any key transitions)."""
        return self._installed.trust.current

    def apply_key_statements(self, statements: Sequence[object]) -> int:
        """Apply the server's key chain (``GET /v1/keys``; see :mod:`localrank.bundle.trust`):
        a transition signed by the trusted key moves trust to a new key, a retirement signed by
        a newer key stops trusting an old one. Persisted before it takes effect. Returns how
        many statements were new.

        Raises:
            KeyStatementError: a statement was forged, out of order, or a fork of one applied
                before; the statements before it stay applied.
        """
        return self._installed.apply_key_statements(statements)

    # -- settings ------------------------------------------------------------------------------

    def _read_settings(self) -> Settings:
        stored = self._store.setting("settings")
        return Settings.from_json(stored) if stored is not None else Settings()

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
            Store.put_setting(db, "settings", new.to_json())
            if not new.reporting or new.level == "off":
                Outbox.drop_unsent(db)
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

    def _context_id(self, context: object) -> int:
        if not isinstance(context, str):
            raise InputError(f"context: expected a context name, got {context!r}")
        return self.bundle.config.context_id(context)

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
        NewEvent.check_kind(kind)
        self._context_id(context)
        t = self._now(now)
        self._settings = self._read_settings()
        b = self.bundle
        event = NewEvent.validated(b, kind, context, offer, category, location, strength, t)
        with self._store.transaction() as db:
            event_id = EventLog.add(db, event)
            self._reporter.on_record(db, event_id, kind, offer, t, b, self._settings)
        return event_id

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
                    Store.put_attribute(db, key, value)
        return self.attributes()

    def attributes(self) -> dict[str, str]:
        return dict(sorted(self._store.attributes().items()))

    # -- profile and segment -------------------------------------------------------------------

    def _profile(self, t: float) -> Profile:
        return self._profiles.sync(self.bundle, t)

    def segment(self, *, now: float | None = None) -> SegmentInfo:
        """The device's finest segment and the active one it may use and report."""
        t = self._now(now)
        return self._segmentation.segment(self.bundle, self.policy, self._profile(t), t)

    def interests(self, context: str, *, now: float | None = None) -> list[tuple[str, float]]:
        """The interests ``context`` may use, strongest first, as (category, weight)."""
        self._context_id(context)
        view = self._profile(self._now(now)).view(self.policy.allowed(context))
        names = self.bundle.taxonomy.names
        return [(names[c], float(view.affinity[c])) for c in view.interests]

    def why_interest(self, category: str, *, now: float | None = None) -> list[EventRecord]:
        """The stored events behind an interest in ``category`` (newest first)."""
        self.bundle.taxonomy.index(category)
        t = self._now(now)
        return [e for e in self._events.about(category, t) if EVENT_SIGNAL.get(e.kind)]

    # -- ranking -------------------------------------------------------------------------------

    def scoring_inputs(
        self, context: str, *, location: Location | None = None, now: float | None = None
    ) -> ScoringInputs:
        """Exactly what the kernel receives for ``context``: ``u``, the prior, the weights,
        the eligibility mask and ``adjust``. The ONNX parity tests and debugging use it."""
        return self._inputs_and_view(context, location, now)[0]

    def _inputs_and_view(
        self, context: str, location: Location | None, now: float | None
    ) -> tuple[ScoringInputs, ProfileView]:
        """The kernel's inputs and the profile view they came from (the reasons need it):
        one profile sync and one view per request."""
        ctx = self._context_id(context)
        t = self._now(now)
        loc = validate_location(location) if location is not None else None
        self._settings = self._read_settings()
        b = self.bundle
        profile = self._profile(t)
        seg = self._segmentation.segment(b, self.policy, profile, t, context)
        g = guardrails_for(
            b,
            self._settings,
            t=t,
            context_id=ctx,
            fatigue=fatigue(b, self._profiles.offer_events(b), t, self._settings.offer_cap),
            location_allowed=self.policy.allows(context, "location"),
            location=loc,
        )
        view = profile.view(self.policy.allowed(context))
        return scoring_inputs(b, self._settings, self.tuning, view, seg.active, g), view

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
        inputs, view = self._inputs_and_view(context, location, now)
        t = inputs.guardrails.now
        snooze = self._store.snooze()
        shown = self._events.impressions(t - 86400, t)
        if leave_alone(self._settings, t, snooze[0] if snooze else -math.inf, shown):
            return []
        return rank(self.bundle, inputs, view, k)

    def snooze(self, *, now: float | None = None) -> float:
        """Leave the user alone for a while; returns until when. Each snooze within 30 days of
        the last one lasts twice as long (1 day, 2, 4, … up to 30 days)."""
        t = self._now(now)
        last = self._store.snooze()
        level = last[1] + 1 if last and t - last[2] < 30 * 86400 else 0
        until: float = t + min(30.0 * 86400, 86400.0 * 2.0**level)
        with self._store.transaction() as db:
            Store.put_snooze(db, until, level, t)
        return until

    # -- transparency and control -------------------------------------------------------------

    def events(self, *, limit: int | None = None) -> list[EventRecord]:
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise InputError(f"limit: expected None or an integer ≥ 0, got {limit!r}")
        return self._events.records(limit)

    def export(self) -> dict[str, Any]:
        """Everything stored on the device, as JSON-ready data."""
        return {
            "settings": json.loads(self.settings.to_json()),
            "attributes": self.attributes(),
            "events": [e.__dict__ for e in self.events()],
            "snoozes": self._store.snoozes(),
            "bundle": {"version": self.bundle.version, "digest": self.bundle.digest}
            if self._installed.bundle
            else None,
            "privacy_ledger": [e.__dict__ for e in self.privacy_ledger()],
            "outbox": [r.__dict__ for r in self.outbox(include_pending=True)],
            "memoised_responses": self._reporter.accountant.memo_count(),
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
                n = EventLog.delete_all(db)
                Store.forget_user_tables(db)
                calm = Settings(
                    level=kept.level,
                    quiet_hours=kept.quiet_hours,
                    daily_cap=kept.daily_cap,
                    offer_cap=kept.offer_cap,
                )
                if calm != Settings():
                    Store.put_setting(db, "settings", calm.to_json())
                self._reporter.forget_everything(db, t)
            else:
                n = 0
                for i in ids:
                    Outbox.drop_made_from(db, i)
                    n += EventLog.delete(db, i)
            Store.bump_generation(db)
        self._store.scrub()
        self._settings = self._read_settings()
        self._profiles.reset()
        return n

    # -- what leaves the device -----------------------------------------------------------------

    def reporting_status(self, *, now: float | None = None) -> ReportingStatus:
        """Whether reports are being made, and if not, why."""
        self._settings = self._read_settings()
        return self._reporter.status(self._now(now), self._settings)

    def privacy_ledger(self) -> list[LedgerEntry]:
        """Every ε the device spent: each report and each memoised permanent response."""
        return self._reporter.accountant.entries()

    def outbox(self, *, include_pending: bool = False) -> list[SentReport]:
        """Every report that left the device: when, where to, its size and its ε (and, with
        ``include_pending``, the ones still queued)."""
        return self._reporter.outbox.sent(include_pending=include_pending)

    def report_backlog(self, *, now: float | None = None) -> int:
        """How many events that have happened by ``now`` wait for an engagement report."""
        return self._reporter.outbox.backlog(self._now(now))

    def next_report_at(self, *, now: float | None = None) -> float:
        """When this device could next make an engagement report under its 30-day privacy
        budget: ``now`` when one fits now, else the moment enough past spending ages out. A
        sync client can sleep until then instead of waking up to send nothing. (In central
        mode an engagement report spends no local ε: the limit is the 30-day cap ``W`` of the
        continual release, or none under the per-epoch design.)"""
        t = self._now(now)
        c = self.bundle.config
        if c.mode != "ldp":
            guarantee = c.central_guarantee
            if guarantee is None:
                return t
            return self._reporter.accountant.central_window_frees_at(guarantee, t)
        return self._reporter.accountant.window_frees_at(c.epsilon, c, t)

    def take_batch(self, *, now: float | None = None) -> OutboxBatch | None:
        """Make this epoch's due reports (within ``L`` and the budgets) and hand out the next
        batch to send, or None. Until :meth:`acknowledge` is called, the same batch (same
        nonces) is handed out again, so retries are idempotent."""
        t = self._now(now)
        self._settings = self._read_settings()
        if not self._reporter.status(t, self._settings).active:
            return None
        seg = self._segmentation.segment(self.bundle, self.policy, self._profile(t), t)
        self.last_report_stops = self._reporter.prepare(t, self.bundle, self._settings, seg)
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
