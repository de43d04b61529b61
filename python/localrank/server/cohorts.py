"""Which cohorts a bundle publishes: round 0 from the catalog, then one round per census
cadence from what devices reported (the mathematics is :mod:`localrank.server.cohort_fit`).

**Rounds follow the census.** A device sends one census (its cohort, randomised) per
``census_interval_days``, and a cohort may only be published with a population measured for
*its* centroid. So a new round (new factors, centroids, merges, splits) runs only when a whole
census interval has passed since the previous one; the publications in between keep the
centroids and ids, and update only what the census and engagement counts measure (populations,
priors, popularity). Each round's populations are thus those of the previous round's ids, as
devices assigned themselves with the previous round's centroids, carried through the round's
merges; a cohort split this round is *provisional*: it is published without a population (so
no device ranks or reports by it in the clear) until the next census measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from localrank.bundle import Bundle, BundleConfig
from localrank.bundle.cohorts import CohortPayload
from localrank.server.cohort_fit import (
    CohortSettings,
    cohort_round,
    group_lower_bounds,
    initial_model,
    merge_small,
)
from localrank.server.statistics import Engagement, Populations
from localrank.shared.catalog import Catalog
from localrank.shared.segments import ROOT, UNKNOWN_POPULATION, SegmentTable, build_segments
from localrank.shared.taxonomy import Taxonomy

__all__ = ["CohortPublication", "cohort_settings", "next_cohorts", "round_zero"]

#: ``extras`` name of the time of the last cohort round (float64[1]).
ROUND_TIME = "extra_cohort_round_t"
#: ``extras`` name of each cohort's published group (``fine_cohorts``): int64[C] in the
#: payload's id order, the id the group is published under, or -1 when it is in none.
GROUPS = "extra_cohort_group"


def cohort_settings(config: BundleConfig) -> CohortSettings:
    """The fit's settings for a bundle: factors in the bundle's ``d``, its ``min_population``;
    the factors anchored to the previous round's; in ``ldp`` mode fitted on every cohort's
    own (device-randomised) row, merged only for what is published."""
    return CohortSettings(
        factors=config.d,
        min_population=config.min_population,
        anchor=True,
        fit_unmerged=config.mode == "ldp",
        fine_cohorts=config.mode == "ldp",
    )


def round_zero(catalog: Catalog, taxonomy: Taxonomy, config: BundleConfig) -> CohortPayload:
    """Round 0, from public content only: content factors and one cohort per non-sensitive
    category (a device joins the cohort of its strongest interest), ids from the first slot."""
    slots = build_segments(
        taxonomy, config.regions, config.segment_depth, config.cohort_slots
    ).cohort_ids
    names = taxonomy.non_sensitive
    index = {c: i for i, c in enumerate(names)}
    offer_categories = [
        [index[taxonomy.names[c]] for c in catalog.categories_of(i) if taxonomy.names[c] in index]
        for i in range(len(catalog))
    ]
    model, _ = initial_model(
        offer_categories,
        len(names),
        id_range=(slots.start, slots.stop),
        settings=cohort_settings(config),
    )
    return model.payload


@dataclass(frozen=True)
class CohortPublication:
    """What one publication carries for cohorts."""

    payload: CohortPayload
    #: int64[d_seg]: the published populations, with the cohort slots' replaced.
    populations: np.ndarray
    extras: dict[str, np.ndarray]
    round_ran: bool
    #: The engagement the priors come from: each published group's rows pooled under the id
    #: it is published as (the input's, when no cohort stands for a group).
    engagement: Engagement | None = None


def next_cohorts(
    bundle: Bundle,
    t: float,
    pops: Populations,
    eng: Engagement,
    published: np.ndarray,
    *,
    tolerated: int,
) -> CohortPublication | None:
    """The cohorts of the next bundle, or None when ``bundle`` has none.

    Between rounds the payload is kept and the slots' populations are the census'. At a round
    (a census interval after the last), every current cohort's row is its de-biased engagement
    per offer, its size the census' estimate; :func:`cohort_round` fits new factors, merges
    cohorts below ``min_population`` (by the robust lower bound, less what ``tolerated`` forged
    reports may add), splits the largest, and keeps ids stable.
    """
    current = bundle.cohorts
    if current is None:
        return None
    cfg = bundle.config
    segs: SegmentTable = bundle.segments
    slots = segs.cohort_ids
    pops_out = np.asarray(published, dtype=np.int64).copy()
    last = bundle.extras.get(ROUND_TIME)
    due = last is None or t - float(last[0]) >= cfg.census_interval_days * 86400
    margin = 0.0
    if pops.influence is not None and current.ids.size:
        margin = float(tolerated * np.max(pops.influence[current.ids.astype(np.int64)]))
    if not due or current.ids.size == 0 or pops.reports == 0:
        kept = _groups_of(current, bundle.extras.get(GROUPS))
        if kept:
            # between rounds the groups stay; the census measures each group again
            pops_out = _with_groups(pops_out, slots, kept, pops, margin, cfg)
            extras = {**_round_time(last), GROUPS: _group_array(current, kept)}
            live = tuple(g for g in kept if pops_out[g[0]] >= cfg.min_population)
            return CohortPublication(current, pops_out, extras, False, _pooled(eng, live))
        return CohortPublication(current, pops_out, _round_time(last), False)
    ids = current.ids.astype(np.int64)
    col = {int(s): i for i, s in enumerate(eng.tracked)}
    sizes = np.maximum(pops.estimate[ids], 1.0)
    variances = np.maximum(pops.variance[ids], 0.0)
    if not any(int(cid) in col for cid in ids):
        # No cohort's engagement was collected yet: central mode reports a cohort in the clear
        # only once its population is published. Merge by the census alone, so that cohorts
        # too small to publish become one that is, and its members start reporting it.
        merged = merge_only(current, sizes, variances, cfg.min_population, margin)
        if merged is None:
            return CohortPublication(current, pops_out, _round_time(last), False)
        payload, populations = merged
        pops_out = _with_cohorts(pops_out, slots, payload.ids, populations, cfg)
        return CohortPublication(payload, pops_out, {ROUND_TIME: np.array([t])}, True)
    counts = np.zeros((ids.size, len(bundle.catalog)))
    noise = np.zeros_like(counts)  # a predicted row (below) carries no noise of its own
    V_prev = current.factors.astype(np.float64)
    for r, cid in enumerate(ids):
        if int(cid) in col:
            counts[r] = eng.scores[:, col[int(cid)]]
            noise[r] = eng.variance[:, col[int(cid)]]
        else:
            # Not collected (central mode: a cohort not yet published): its taste is unknown
            # this round, not "engaged with nothing". A zero row would shrink its offers'
            # factors to 0 and leave its members at u = 0, outside every cohort for good; the
            # previous round's prediction of its rates keeps the taste in the fit, and
            # merge_small folds it into its nearest neighbour while it stays small.
            predicted = np.einsum("if,f->i", V_prev, current.centroids[r], optimize=False)
            counts[r] = sizes[r] * np.clip(predicted, 0.0, None)
    settings = cohort_settings(cfg)
    done = cohort_round(
        current,
        counts,
        sizes,
        variances,
        n_devices=max(float(pops.estimate[ROOT]), 1.0),
        id_range=(slots.start, slots.stop),
        settings=settings,
        margin=margin,
        count_variances=noise,
    )
    model = done.model
    if model.payload.ids.size == 0:
        # Too few devices for even one cohort: keep the centroids (unpublished), so devices
        # go on reporting them and a later round, with more census, can publish.
        return CohortPublication(current, pops_out, _round_time(last), False)
    measured = np.where(model.provisional, -np.inf, model.populations)
    pops_out = _with_cohorts(pops_out, slots, model.payload.ids, measured, cfg)
    extras = {ROUND_TIME: np.array([t])}
    if settings.fine_cohorts:
        groups = tuple(
            g for g in model.groups if pops_out[g[0]] >= cfg.min_population
        )
        extras[GROUPS] = _group_array(model.payload, groups)
        return CohortPublication(model.payload, pops_out, extras, True, _pooled(eng, groups))
    return CohortPublication(model.payload, pops_out, extras, True)


def merge_only(
    current: CohortPayload,
    sizes: np.ndarray,
    variances: np.ndarray,
    min_population: int,
    margin: float,
) -> tuple[CohortPayload, np.ndarray] | None:
    """Merge cohorts below ``min_population`` by the census alone (no rows to refit ``V``):
    each group's centroid is the size-weighted mean of its members' (the fold-in of the summed
    rows), its id the largest member's. Returns the payload and each cohort's population lower
    bound, or None when nothing is publishable or nothing would change."""
    groups = merge_small(
        current.centroids, sizes, variances, min_population=min_population, margin=margin
    )
    if not groups or len(groups) == current.ids.size:
        return None
    centroids, ids = [], []
    for g in groups:
        members = list(g)
        w = sizes[members]
        centroids.append((current.centroids[members] * w[:, None]).sum(axis=0) / w.sum())
        ids.append(int(current.ids[members[int(np.argmax(w))]]))
    lower = group_lower_bounds(groups, sizes, variances, margin=margin)
    order = np.argsort(ids, kind="stable")
    payload = CohortPayload.build(
        dict(current.encoded),
        np.asarray(centroids)[order],
        np.asarray(ids, dtype=np.int64)[order],
        regularization=current.regularization,
    )
    return payload, lower[order]


def _with_cohorts(
    published: np.ndarray,
    slots: range,
    ids: Sequence[int] | np.ndarray,
    lower: np.ndarray,
    cfg: BundleConfig,
) -> np.ndarray:
    """``published`` with the cohort slots' populations: the lower bound of each id in ``ids``
    where it reaches ``min_population``, unknown otherwise (and for every free slot)."""
    out: np.ndarray = published.copy()
    out[slots.start : slots.stop] = UNKNOWN_POPULATION
    for cid, population in zip(ids, lower, strict=True):
        if population >= cfg.min_population:
            out[int(cid)] = int(np.floor(population))
    return out


def _groups_of(payload: CohortPayload, array: np.ndarray | None) -> tuple[tuple[int, ...], ...]:
    """The published groups :data:`GROUPS` records for ``payload`` (none when it records
    nothing or another payload's), each the id it is published under first."""
    if array is None or np.shape(array) != payload.ids.shape:
        return ()
    out: dict[int, list[int]] = {}
    for cid, head in zip(payload.ids.tolist(), np.asarray(array).tolist(), strict=True):
        if head >= 0:
            out.setdefault(int(head), []).append(int(cid))
    return tuple(
        (head, *sorted(m for m in members if m != head))
        for head, members in sorted(out.items())
        if head in members
    )


def _group_array(payload: CohortPayload, groups: tuple[tuple[int, ...], ...]) -> np.ndarray:
    head = {m: g[0] for g in groups for m in g}
    return np.array([head.get(int(c), -1) for c in payload.ids.tolist()], dtype=np.int64)


def _with_groups(
    published: np.ndarray,
    slots: range,
    groups: tuple[tuple[int, ...], ...],
    pops: Populations,
    margin: float,
    cfg: BundleConfig,
) -> np.ndarray:
    """``published`` with the cohort slots' populations: each group's census lower bound under
    its first id where it reaches ``min_population``, unknown elsewhere."""
    lower = group_lower_bounds(
        [list(g) for g in groups],
        pops.estimate,
        np.maximum(pops.variance, 0.0),
        margin=margin,
    )
    return _with_cohorts(published, slots, [g[0] for g in groups], lower, cfg)


def _pooled(eng: Engagement, groups: tuple[tuple[int, ...], ...]) -> Engagement:
    """``eng`` with each group's columns summed into its first id's (the priors of a published
    group describe all its members); the other members' columns stay (they are unpublished,
    so no prior is drawn from them)."""
    col = {int(s): i for i, s in enumerate(eng.tracked)}
    scores, variance = eng.scores.copy(), eng.variance.copy()
    for g in groups:
        if g[0] not in col:
            continue
        at = col[g[0]]
        for m in g[1:]:
            if m in col:
                scores[:, at] += eng.scores[:, col[m]]
                variance[:, at] += eng.variance[:, col[m]]
    return replace(eng, scores=scores, variance=variance)


def _round_time(last: np.ndarray | None) -> dict[str, np.ndarray]:
    return {} if last is None else {ROUND_TIME: np.asarray(last, dtype=np.float64)}
