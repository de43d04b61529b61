"""Ranking one request: the kernel's inputs, the leave-alone checks, the Rust kernel, and the
reasons behind each offer.

The score (docs/design.md, "Scoring") is ``w_dot·(u·E_i) + bias_i + w_prior·prior[cat_i] +
adjust_i`` over the eligible offers, where ``u`` is the profile as the context may see it,
``prior`` the active segment's, and the mask and ``adjust`` come from the guardrails
(:mod:`localrank.device.guardrails`). The reasons are those same terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from localrank._core import score_topk
from localrank.bundle import Bundle
from localrank.device.explanations import Reason, sentence
from localrank.device.guardrails import (
    CONTEXT_FIT,
    FATIGUE,
    NEAR,
    Guardrails,
    OfferGeometry,
    adjust_term,
    eligibility,
)
from localrank.device.profile import (
    DISMISS,
    IMPRESSION,
    PURCHASE,
    OfferEvents,
    ProfileRules,
    ProfileView,
)
from localrank.device.settings import Settings
from localrank.shared.geo import Location
from localrank.shared.segments import ROOT

__all__ = [
    "Recommendation",
    "ScoringInputs",
    "Tuning",
    "fatigue",
    "guardrails_for",
    "leave_alone",
    "rank",
    "scoring_inputs",
]


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


def fatigue(bundle: Bundle, events: OfferEvents, t: float, offer_cap: int) -> np.ndarray:
    """float32[n]: impressions in the last 24 h, plus ``offer_cap`` (so the offer rests) for a
    dismiss in the last 7 days or a purchase still on the device (an offer already taken up is
    not pushed again)."""
    kind, when, row = events.kind, events.t, events.row
    out = np.zeros(len(bundle.catalog), dtype=np.float32)
    past = (when <= t) & (row >= 0)
    shown = past & (kind == IMPRESSION) & (when > t - 86400)
    np.add.at(out, row[shown], np.float32(1))
    done = past & (((kind == DISMISS) & (when > t - 7 * 86400)) | (kind == PURCHASE))
    rests = np.zeros(out.shape, dtype=bool)
    rests[row[done]] = True
    out[rests] += np.float32(offer_cap)
    return out


def scoring_inputs(
    bundle: Bundle,
    settings: Settings,
    tuning: Tuning,
    view: ProfileView,
    segment: int,
    guardrails: Guardrails,
) -> ScoringInputs:
    """What the kernel receives: ``u`` and the weights by level, the active segment's prior,
    the eligibility mask and ``adjust``."""
    level = settings.level
    geometry = OfferGeometry.of(bundle)
    C = len(bundle.taxonomy)
    # The segment's lift over the whole fleet (the root): the bias already carries the fleet's
    # popularity, so the root's own shares would count each category's popularity twice (at
    # the root, coarse ranked below off: docs/design.md).
    prior = np.zeros(C, np.float32)
    if level != "off":
        prior = bundle.priors[segment] - bundle.priors[ROOT]
    u = view.u if level == "full" else np.zeros(bundle.config.d, np.float32)
    return ScoringInputs(
        u=np.ascontiguousarray(u, dtype=np.float32),
        prior=np.ascontiguousarray(prior, dtype=np.float32),
        w_dot=bundle.fold_in_weight(tuning.w_dot) if level == "full" else 0.0,
        w_prior=tuning.w_prior if level != "off" else 0.0,
        eligible=eligibility(bundle, geometry, guardrails),
        adjust=adjust_term(geometry, guardrails),
        segment=segment if level != "off" else ROOT,
        context_id=guardrails.context_id,
        guardrails=guardrails,
    )


def guardrails_for(
    bundle: Bundle,
    settings: Settings,
    *,
    t: float,
    context_id: int,
    fatigue: np.ndarray,
    location_allowed: bool,
    location: Location | None,
) -> Guardrails:
    """The guardrail inputs of one request."""
    opt = np.zeros(len(bundle.taxonomy), dtype=np.float32)
    for c in settings.sensitive_opt_ins:
        if c in bundle.taxonomy:  # an opt-in to a category a newer bundle dropped is moot
            opt[bundle.taxonomy.index(c)] = 1.0
    return Guardrails(
        now=t,
        context_id=context_id,
        level_off=settings.level == "off",
        opt_ins=opt,
        fatigue=fatigue,
        offer_cap=settings.offer_cap,
        location_allowed=location_allowed,
        location=location,
    )


def rank(bundle: Bundle, x: ScoringInputs, view: ProfileView, k: int) -> list[Recommendation]:
    """The top ``k`` eligible offers by the Rust kernel, each with its reasons."""
    cat = bundle.catalog
    idx, scores = score_topk(
        x.u,
        cat.embeddings,
        cat.bias,
        cat.category,
        x.prior,
        x.eligible,
        w_dot=x.w_dot,
        w_prior=x.w_prior,
        adjust=x.adjust,
        k=k,
    )
    return [_explain(bundle, int(i), float(s), x, view) for i, s in zip(idx, scores, strict=True)]


def _explain(
    bundle: Bundle, i: int, score: float, x: ScoringInputs, view: ProfileView
) -> Recommendation:
    cat = bundle.catalog
    tax = bundle.taxonomy
    geometry = OfferGeometry.of(bundle)
    c = int(cat.category[i])
    g = x.guardrails
    near = 0.0
    if g.location is not None and g.location_allowed and cat.local[i]:
        d2 = float(geometry.dist2(g.location)[i])
        near = float(NEAR) * (1.0 - d2 / float(geometry.radius2[i]))
    seg_label = None
    if x.segment != ROOT and not bundle.segments.is_cohort(x.segment):
        seg_label = tax[tax.index(bundle.segments.paths[x.segment].split("/")[0])].display
    interest_label = None
    if x.w_dot:
        mine = [tax.names[c2] for c2 in cat.categories_of(i)]
        for c2 in view.interests:
            if tax.names[c2] in mine:
                interest_label = tax[c2].display
                break
    learned = bundle.cohorts is not None
    cohort = bundle.segments.is_cohort(x.segment)
    reasons = [
        Reason(
            "interest",
            x.w_dot * float(np.dot(x.u, cat.embeddings[i])),
            interest_label,
            learned=learned,
        ),
        Reason("segment", x.w_prior * float(x.prior[c]), seg_label, learned=cohort),
        Reason("popular", float(cat.bias[i])),
        Reason("near", near),
        Reason("context", float(CONTEXT_FIT) if geometry.targeted[i] else 0.0),
        Reason("fatigue", -float(FATIGUE) * float(g.fatigue[i])),
    ]
    return Recommendation(
        offer_id=cat.ids[i],
        title=cat.titles[i],
        score=score,
        reasons=[(r.kind, r.weight) for r in reasons if r.weight != 0.0],
        explanation=sentence(reasons),
    )


def leave_alone(settings: Settings, t: float, snoozed_until: float, shown_last_day: int) -> bool:
    """Whether to show nothing now: quiet hours, a snooze, or the daily cap reached."""
    return (
        settings.in_quiet_hours(t) or snoozed_until > t or shown_last_day >= settings.daily_cap
    )
