"""Which segment this device is in: its top interests and, where the policy allows, its
region, placed in the bundle's segment tree (:mod:`localrank.shared.segments`).

Two questions, two answers:

- the segment that may **leave the device** (census and engagement reports) is built only from
  the signals the policy's ``segments`` row allows;
- the segment that may **rank offers in a context** is built only from signals both that row and
  the context allow: a game never ranks by a navigation app's visits.

When the bundle carries learned interest **cohorts**, the device folds itself into the
bundle's factor space with the same allowed signals (:attr:`ProfileView.u
<localrank.device.profile.ProfileView>`) and joins the nearest centroid: that cohort is its
finest segment. Its active one is its own cohort once that is published (population ≥
``min_population``); before that (a learning cohort too small to publish alone, or a split's
child that no census has measured yet) the nearest published cohort, if its taste is close
enough (:data:`STAND_IN_COSINE`), else the demographic one. Sensitive events never enter the
profile, so they never move a device's cohort either.
"""

from __future__ import annotations

from dataclasses import dataclass

from localrank.bundle import Bundle
from localrank.device.events import RETENTION_S, EventLog
from localrank.device.fold_in import nearest_cohort
from localrank.device.profile import Profile, ProfileRules
from localrank.device.store import Store
from localrank.shared.policy import SEGMENTS_ROW, Policy

__all__ = ["STAND_IN_COSINE", "SegmentInfo", "Segmentation"]

#: A published cohort stands in for a device's unpublished one only with at least this cosine
#: to the device's own ``u`` (the server's id matching asks the same of "about the same taste").
STAND_IN_COSINE = 0.5


@dataclass(frozen=True)
class SegmentInfo:
    """The finest segment the device's signals reach, and the active one: the finest
    ancestor populated enough (``min_population``) to be used and reported."""

    finest: int
    active: int
    finest_path: str
    active_path: str
    #: The cohort the device folds into (its finest segment), or None without cohorts.
    cohort: int | None = None


class Segmentation:
    """Places the device in a bundle's segment tree."""

    def __init__(self, store: Store, events: EventLog) -> None:
        self._store = store
        self._events = events

    def segment(
        self,
        bundle: Bundle,
        policy: Policy,
        profile: Profile,
        t: float,
        context: str | None = None,
    ) -> SegmentInfo:
        """The segment the ``segments`` row allows or, with ``context``, the one that may rank
        offers there. The region counts only where the context may use location (visits) or
        demographics (the attribute)."""
        row = policy.allowed(SEGMENTS_ROW)
        signals = row - {"region"}
        sources = {"location", "demographics"}
        if context is not None:
            allowed = policy.allowed(context)
            signals &= allowed
            sources &= allowed
        view = profile.view(signals)
        top = [bundle.taxonomy.names[c] for c in view.interests[:2]]
        region = self.region(bundle, profile.rules, t, sources) if "region" in row else None
        segs = bundle.segments
        finest = segs.finest(top, region)
        active = segs.active(finest, bundle.config.min_population)
        c = bundle.cohorts
        cohort = None if c is None else nearest_cohort(view.u, c.centroids, c.ids)
        if c is not None and cohort is not None:
            finest = cohort
            # Ranked by the nearest *published* cohort: its own when published, else the
            # nearest that is (in ldp mode small cohorts learn apart and publish together),
            # if its taste is close enough to stand for the device's
            published = segs.populations[c.ids] >= bundle.config.min_population
            if published[c.ids == cohort].all():
                active = cohort
            elif published.any():
                nearest = nearest_cohort(
                    view.u, c.centroids[published], c.ids[published], min_cosine=STAND_IN_COSINE
                )
                if nearest is not None:
                    active = nearest
        return SegmentInfo(finest, active, segs.paths[finest], segs.paths[active], cohort)

    def region(
        self, bundle: Bundle, rules: ProfileRules, t: float, sources: set[str]
    ) -> str | None:
        """The region attribute if set, else the bundle region visited most (90 days). Like
        interests, visits count only once matured (the cool-down) and with enough of them in
        a region (the evidence threshold), and never when they touch a sensitive category."""
        regions = bundle.config.regions
        attr = self._store.attributes().get("region") if "demographics" in sources else None
        if attr in regions:
            return attr
        if "location" not in sources:
            return None
        tax = bundle.taxonomy
        sensitive = [c for c in tax.names if tax.is_sensitive(c)]
        visited = self._events.visited_regions(
            t - RETENTION_S, t - rules.cooldown_s, sensitive, rules.min_evidence
        )
        return next((r for r in visited if r in regions), None)
