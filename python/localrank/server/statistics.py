"""From partial sums to what a bundle publishes: populations, priors and popularity.

- **Populations** come from census reports (the *finest* segment, always LDP) of the last
  ``census_window`` epochs; a device sends at most one census per that many days, so each
  device counts about once. A segment's population is its whole subtree (a device in
  ``sci-fi/comedy/gh-u09`` is also in ``sci-fi/comedy`` and ``sci-fi``). The subtree estimate
  is the sum of its members' unbiased estimates, ``ĉ_A = (S_A − ñ·|A|·q)/(p − q)``, with the
  exact variance:

  - OUE: bits are independent, so ``Var ĉ_A = Σ_j Var ĉ_j``;
  - GRR: ``A`` is one item of a GRR with ``P_A = p + (|A| − 1)q`` and ``Q_A = |A|·q``, so
    ``Var ĉ_A = (c_A·P_A(1 − P_A) + (n − c_A)·Q_A(1 − Q_A))/(p − q)²``;

  plus ``(|A|·q)²·Var(Z)/(p − q)²`` for the noise in ``ñ``. A segment is published only when
  its *robust lower bound* ``ĉ_A − 1.96·σ₀_A − F·δ_A`` is at least ``min_population`` *and*
  its parent is published; otherwise it is folded into its parent (its devices' active
  segment is an ancestor). ``σ₀_A`` is the standard error at the threshold: the variance
  above at the worst population in ``[0, min_population]``, from the published ``(p, q)`` and
  the noised ``ñ`` only, never from the estimate an attacker moves. ``δ_A`` is the most one
  well-formed report can add to ``ĉ_A`` (:func:`population_influence`) and ``F``
  (``tolerated``, default 5) the number of forged reports the threshold absorbs: ``f ≤ F``
  forged reports never publish a segment the genuine reports alone would not have published
  (``docs/privacy-math.md``). The root is always published; its population is the noised
  number of census reports, which every device sends into the root's subtree.
- **Engagement** estimates per offer × event × tracked segment: LDP supports debiased with the
  chained ``(p*, q*)`` of each report configuration, or central counts (already noised). They
  are weighted by :data:`EVENT_WEIGHTS` into one positive-engagement score.
- **Priors**: per segment, the share of positive engagement going to each category (offers'
  primary category, the kernel's prior lookup), over the segment's subtree, smoothed towards
  the parent's prior with ``prior_strength·δ_s`` pseudo-counts, where ``δ_s`` is the most one
  report can change the segment's category mass (:func:`engagement` computes it from the
  published parameters): ``f`` forged reports move a prior by at most ``(depth + 1)·f/k``,
  ``k = prior_strength``. The root is smoothed towards the
  uniform distribution over non-sensitive categories. Sensitive categories are never reported,
  so their prior is 0. A segment that is not published inherits its parent's prior.
- A partial sum whose configuration cannot be estimated (an invalid oracle or ε's, or arrays
  of the wrong shape, as a server that did not check configurations may have stored) is
  skipped and logged; the rest is still published.
- **Popularity**: per offer, the weighted total of its reports, with its variance; the bias is
  built from the lower end of its 95% interval, so an offer nobody engaged with does not look
  popular by the luck of its noise. Central: the noised counts. LDP: two unbiased estimates of
  the same counts, blended by inverse variance: ``ñ``, whose noise is drawn again in every
  folded epoch (``√W·σ`` over a window of ``W``, on every offer), and the supports over the
  tracked segments divided by ``P_T = p + (|T| − 1)·q`` (:func:`_tracked_share`), whose
  variance is binomial in the count. At a few hundred devices the first buries the counts and
  the second keeps them; at large counts ``ñ`` is the sharper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from localrank.errors import InputError
from localrank.privacy.oracles import effective_probabilities
from localrank.server.debias import count_variance, discrete_laplace_variance, oue_report_cap
from localrank.server.ingest import parse_config
from localrank.server.sums import (
    EVENTS,
    CensusSums,
    EngagementSums,
    children_order,
    kept_per_subtree,
    subtree_counts,
)
from localrank.shared.segments import ROOT, UNKNOWN_POPULATION

__all__ = [
    "EVENT_WEIGHTS",
    "FORGED_REPORTS_TOLERATED",
    "Engagement",
    "Populations",
    "category_priors",
    "engagement",
    "population_influence",
    "populations",
]

LOG = logging.getLogger("localrank.server.aggregate")

#: How much each event counts as positive engagement. Impressions are exposure, not interest;
#: dismissals are kept in the sums but do not subtract (a dismiss also follows an impression
#: the user did look at).
EVENT_WEIGHTS = {"impression": 0.0, "click": 1.0, "conversion": 2.0, "dismiss": 0.0}
_Z95 = 1.959963984540054
#: ``F``: how many forged well-formed census reports the publication threshold absorbs.
FORGED_REPORTS_TOLERATED = 5


@dataclass(frozen=True)
class Populations:
    """Subtree population estimates and what is published."""

    estimate: np.ndarray  # float64[d_seg]
    variance: np.ndarray  # float64[d_seg]
    published: np.ndarray  # int64[d_seg]: rounded estimate, or -1 where folded into the parent
    reports: int  # noised number of census reports summed
    #: float64[d_seg]: ``ĉ − 1.96·σ₀ − F·δ``, what the threshold compares (the module docstring)
    robust_lower: np.ndarray | None = None
    #: float64[d_seg]: ``δ``, the most one well-formed report adds to each estimate
    influence: np.ndarray | None = None

    @property
    def lower(self) -> np.ndarray:
        """The lower bound the threshold compares with ``min_population``: the one-sided 97.5%
        bound at the threshold, less what ``F`` forged reports can add."""
        if self.robust_lower is not None:
            return self.robust_lower
        out: np.ndarray = np.asarray(self.estimate - _Z95 * np.sqrt(self.variance))
        return out


def _checked_probabilities(config: str, d: int) -> tuple[str, str, float, float]:
    """``(mode, oracle, p, q)`` of an LDP configuration, or InputError if it cannot be
    estimated (invalid names, ε's the oracle refuses, or p − q too small to divide by)."""
    mode, oracle, eps, perm = parse_config(config)
    if mode != "ldp" or oracle not in ("grr", "oue") or eps is None:
        raise InputError(f"config: {config!r} is not an LDP configuration")
    p, q = effective_probabilities(oracle, d, eps, perm)
    if not (math.isfinite(p) and math.isfinite(q) and 0.0 <= q < p <= 1.0 and p - q > 1e-12):
        raise InputError(f"config: {config!r} gives p = {p}, q = {q}: cannot be estimated")
    return mode, oracle, p, q


def population_influence(oracle: str, p: float, q: float, size: np.ndarray) -> np.ndarray:
    """``δ_A``: the most one well-formed report of ``(p, q)`` adds to the estimate of a subtree
    of ``size`` segments. GRR: one value, ``(1 − |A|·q)/(p − q)``. OUE: at most
    :func:`~localrank.server.debias.oue_report_cap` bits set in the subtree (the fold drops
    reports over it), ``(cap_A − |A|·q)/(p − q)``."""
    if oracle == "oue":
        out: np.ndarray = (oue_report_cap(size, q) - size * q) / (p - q)
    else:
        out = (1.0 - size * q) / (p - q)
    return out


def populations(
    census: Sequence[CensusSums],
    *,
    parents: np.ndarray,
    min_population: int,
    central_epsilon: float,
    noise: bool = True,
    tolerated: int = FORGED_REPORTS_TOLERATED,
) -> Populations:
    """Population estimates of every segment's subtree, and which are published."""
    if isinstance(tolerated, bool) or not isinstance(tolerated, int) or tolerated < 0:
        raise InputError(f"tolerated: expected an integer ≥ 0, got {tolerated!r}")
    d = parents.size
    order = children_order(parents)
    size = subtree_counts(np.ones(d), parents, order)
    est = np.zeros(d)
    var = np.zeros(d)
    null_var = np.zeros(d)  # at population 0, from the published parameters and ñ only
    per_device = np.zeros(d)  # the most each device adds to the variance (≥ 0)
    influence = np.zeros(d)
    reports = 0
    used = 0
    noise_var = discrete_laplace_variance(central_epsilon, 1) if noise else 0.0
    for c in census:
        try:
            _, oracle, p, q = _checked_probabilities(c.config, d)
            if c.support.shape != (d,):
                raise InputError(f"support: expected shape ({d},), got {c.support.shape}")
        except (InputError, ValueError, OverflowError) as e:
            LOG.warning("populations: census sums of %r skipped: %s", c.config, e)
            continue
        used += 1
        n = max(c.n, 0)
        reports += c.n
        single = (c.support - n * q) / (p - q)
        sub = subtree_counts(single, parents, order)
        est += sub
        gap2 = (p - q) ** 2
        if oracle == "oue":
            per = count_variance(np.clip(single, 0, n), n, p, q)
            var += subtree_counts(per, parents, order)
            base = size * q * (1 - q)
            coef = np.full(d, p * (1 - p) - q * (1 - q))
        else:
            c_a = np.clip(sub, 0, n)
            p_a = p + (size - 1) * q
            q_a = size * q
            var += (c_a * p_a * (1 - p_a) + (n - c_a) * q_a * (1 - q_a)) / gap2
            base = q_a * (1 - q_a)
            coef = p_a * (1 - p_a) - q_a * (1 - q_a)
        var += (size * q) ** 2 * noise_var / gap2
        null_var += (n * base + (size * q) ** 2 * noise_var) / gap2
        per_device = np.maximum(per_device, coef / gap2)
        influence = np.maximum(influence, population_influence(oracle, p, q, size))
    # Every census report is in the root's subtree, so its population is the (noised) number
    # of reports itself: far sharper than the sum of d_seg estimates.
    est[ROOT] = float(reports)
    var[ROOT] = used * noise_var
    # The variance is linear in the population: its worst value in [0, min_population].
    threshold_var = null_var + min_population * per_device
    lower = est - _Z95 * np.sqrt(threshold_var) - tolerated * influence
    lower[ROOT] = est[ROOT]
    published = np.full(d, UNKNOWN_POPULATION, dtype=np.int64)
    published[ROOT] = max(0, round(est[ROOT])) if used else UNKNOWN_POPULATION
    for s in range(1, d):  # parents first: a segment needs its parent published
        if published[parents[s]] >= 0 and used and lower[s] >= min_population:
            published[s] = round(est[s])
    return Populations(est, var, published, reports, lower, influence)


@dataclass(frozen=True)
class Engagement:
    """Weighted positive engagement per offer × tracked segment, and per offer in total."""

    tracked: np.ndarray  # int64[T]
    scores: np.ndarray  # float64[offers, T]
    variance: np.ndarray  # float64[offers, T]
    popularity: np.ndarray  # float64[offers]: unbiased weighted totals
    popularity_variance: np.ndarray  # float64[offers]
    reports: int
    #: float64[d_seg]: ``δ_s``, the most one report changes segment ``s``'s category mass (its
    #: subtree's), from the published parameters; None: unknown (one pseudo-count per unit)
    influence: np.ndarray | None = None


def engagement_influence(
    mode: str, oracle: str, p: float, q: float, tracked: np.ndarray, parents: np.ndarray
) -> np.ndarray:
    """``δ_s`` for one configuration: a report is about one offer (one category) and one event
    (weight ≤ ``w = max EVENT_WEIGHTS``). Central: one count, ``w``. LDP: its estimate moves
    by ``w·(b_t − q)/(p − q)`` in each tracked cell ``t``, so the mass of ``s``'s subtree
    ``T_s`` moves by at most ``w·((1 − q)·m + q·(|T_s| − m))/(p − q)``, ``m`` the most bits it
    sets in ``T_s`` (GRR 1; OUE the fold's cap)."""
    w = max(EVENT_WEIGHTS.values())
    d = parents.size
    if mode == "central":
        return np.full(d, w)
    t_s = kept_per_subtree(tracked, parents, children_order(parents)).astype(np.float64)
    m = oue_report_cap(t_s.astype(np.int64), q) if oracle == "oue" else np.minimum(t_s, 1.0)
    out: np.ndarray = w * ((1 - q) * m + q * (t_s - m)) / (p - q)
    return out


def engagement(
    sums: Sequence[EngagementSums],
    *,
    offers: Sequence[str],
    d_seg: int,
    central_epsilon: float,
    report_limit: int,
    noise: bool = True,
    parents: np.ndarray | None = None,
    central_noise_variance: float | None = None,
) -> Engagement:
    """Sum the engagement estimates of every partial sum onto the current catalog's offers and
    the union of the tracked segments. With ``parents``, also each segment's ``influence``.
    ``central_noise_variance``: the noise variance of each central count when it comes from
    the continual release (:mod:`localrank.server.central_release`), not per-epoch Laplace."""
    usable = []
    for s in sums:
        try:
            mode, _, _, _ = parse_config(s.config)
            if mode != "central":
                _checked_probabilities(s.config, d_seg)
            elif s.config != "central:none::":
                raise InputError(f"config: {s.config!r} is not a known configuration")
            T = s.segments.size
            if (
                s.values.shape != (len(s.offers), len(EVENTS), T)
                or s.n.shape != (len(s.offers), len(EVENTS))
                or (T and (s.segments.min() < 0 or s.segments.max() >= d_seg))
            ):
                raise InputError("sums: arrays do not match their offers and segments")
        except (InputError, ValueError, OverflowError) as e:
            LOG.warning("engagement: sums of %r skipped: %s", s.config, e)
            continue
        usable.append(s)
    sums = usable
    influence = None if parents is None else np.zeros(d_seg)
    tracked = np.unique(np.concatenate([s.segments for s in sums] + [np.array([ROOT])]))
    col = {int(t): i for i, t in enumerate(tracked)}
    row = {o: i for i, o in enumerate(offers)}
    w = np.array([EVENT_WEIGHTS[e] for e in EVENTS])
    scores = np.zeros((len(offers), tracked.size))
    variance = np.zeros_like(scores)
    popularity = np.zeros(len(offers))
    popularity_var = np.zeros(len(offers))
    # ldp popularity has two unbiased estimates (the module docstring): ñ, and the supports
    # over the tracked segments. They are accumulated apart and blended at the end.
    counted = np.zeros(len(offers))
    counted_var = np.zeros(len(offers))
    supported = np.zeros(len(offers))
    supported_var = np.zeros(len(offers))
    one_report = 0.0
    reports = 0
    noise_var = discrete_laplace_variance(central_epsilon, report_limit) if noise else 0.0
    central_var = noise_var if central_noise_variance is None else central_noise_variance
    # The estimates below are linear in the sums' values and ñ, so the sums of one
    # configuration and one set of tracked segments are added up first and de-biased once: a
    # publication reads every epoch of the window, and de-biasing each apart was most of its
    # time. Only the variance's plug-in count is not linear; it is clipped once on the total
    # (clipping every epoch's estimate at 0 apart over-stated it).
    # key: (configuration, tracked segments); value: summed values, summed ñ, and how many
    # sums covered each offer
    totals_by: dict[tuple[str, bytes], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for s in sums:
        rows_here = np.array([row.get(o, -1) for o in s.offers], dtype=np.int64)
        keep = rows_here >= 0
        target = rows_here[keep]
        segments = np.asarray(s.segments, dtype=np.int64)
        key = (s.config, segments.tobytes())
        if key not in totals_by:
            totals_by[key] = (
                np.zeros((len(offers), len(EVENTS), segments.size)),
                np.zeros((len(offers), len(EVENTS))),
                np.zeros(len(offers)),
                segments,
            )
        values_t, n_t, covered, _ = totals_by[key]
        values = s.values[keep].astype(np.float64)
        values_t[target] += values
        n_t[target] += s.n[keep].astype(np.float64)
        covered[target] += 1.0
        central = parse_config(s.config)[0] == "central"
        reports += int(max(values.sum(), 0)) if central else int(max(s.n.sum(), 0))
    for (config, _), (values_t, n_t, covered, segments) in totals_by.items():
        mode, oracle, eps, perm = parse_config(config)
        cols = np.array([col[int(t)] for t in segments], dtype=np.int64)
        k = covered[:, None, None]  # sums per offer, each with its own noise
        if mode == "central":
            est = values_t
            var = np.broadcast_to(k * central_var, est.shape)
            totals = values_t.sum(axis=2)
            if influence is not None and parents is not None:
                influence = np.maximum(
                    influence, engagement_influence(mode, oracle, 1.0, 0.0, segments, parents)
                )
        else:
            assert eps is not None
            p, q = effective_probabilities(oracle, d_seg, eps, perm)
            if influence is not None and parents is not None:
                influence = np.maximum(
                    influence, engagement_influence(mode, oracle, p, q, segments, parents)
                )
            n = n_t[:, :, None]
            est = (values_t - n * q) / (p - q)
            n_pos = np.maximum(n, 0)
            c = np.clip(est, 0, n_pos)
            var = (c * p * (1 - p) + (n_pos - c) * q * (1 - q) + k * q**2 * noise_var) / (
                p - q
            ) ** 2
            totals = n_t
        scores[:, cols] += np.einsum("oet,e->ot", est, w)
        variance[:, cols] += np.einsum("oet,e->ot", var, w**2)
        if mode == "central":
            # Noised counts summed over the T cells of each offer and event.
            popularity += totals @ w
            popularity_var += covered * segments.size * central_var * float(np.sum(w**2))
        else:
            counted += totals @ w
            counted_var += covered * noise_var * float(np.sum(w**2))
            share, spread = _tracked_share(oracle, p, q, segments.size)
            n_hat = values_t.sum(axis=2) / share  # (o, 4): unbiased for n, without ñ's noise
            supported += n_hat @ w
            # The plug-in binomial variance of each count.
            supported_var += (n_hat * spread / share**2) @ w**2
            one_report = max(one_report, spread / share**2 * float(np.max(w**2)))
    # At least one report's variance: no support is not proof of no report.
    supported_var = np.maximum(supported_var, one_report)
    blended, blended_var = _blend(counted, counted_var, supported, supported_var)
    popularity += blended
    popularity_var += blended_var
    return Engagement(tracked, scores, variance, popularity, popularity_var, reports, influence)


def _tracked_share(oracle: str, p: float, q: float, tracked: int) -> tuple[float, float]:
    """``(P_T, V_T)`` for ``T`` tracked segments: the expected number of a report's supports
    among them, ``P_T = p + (T − 1)·q``, when its true segment is one of them (a device reports
    its active segment, which is tracked), and that number's variance (GRR: one value, so
    ``P_T(1 − P_T)``; OUE: independent bits, ``p(1 − p) + (T − 1)·q(1 − q)``)."""
    share = p + (tracked - 1) * q
    one_value = share * (1 - share)
    spread = p * (1 - p) + (tracked - 1) * q * (1 - q) if oracle == "oue" else one_value
    return share, spread


def _blend(
    a: np.ndarray, var_a: np.ndarray, b: np.ndarray, var_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse-variance combination of two unbiased estimates, and its variance. Where one
    has no variance it is exact and is taken as it is (``a`` first: the no-noise ñ)."""
    exact_a = var_a <= 0
    exact_b = (var_b <= 0) & ~exact_a
    total = np.where(exact_a | exact_b, 1.0, var_a + var_b)
    out = np.where(exact_a, a, np.where(exact_b, b, (a * var_b + b * var_a) / total))
    out_var = np.where(exact_a | exact_b, 0.0, var_a * var_b / total)
    return out, out_var


def category_priors(
    eng: Engagement,
    *,
    primary: np.ndarray,
    sensitive_categories: np.ndarray,
    parents: np.ndarray,
    published: np.ndarray,
    prior_strength: float = 50.0,
) -> np.ndarray:
    """float32[d_seg, C] per-segment category priors (see the module docstring)."""
    d = parents.size
    C = sensitive_categories.size
    order = children_order(parents)
    # Category mass per tracked segment, clipped at zero per category (LDP estimates may be
    # negative), then summed over each subtree.
    mass = np.zeros((d, C))
    per_cat = np.zeros((C, eng.tracked.size))
    np.add.at(per_cat, primary, eng.scores)
    mass[eng.tracked] = np.clip(per_cat, 0, None).T
    mass = subtree_counts(mass.T, parents, order).T
    base = (~sensitive_categories).astype(np.float64)
    base /= max(base.sum(), 1.0)
    # Pseudo-counts in units of what one report can carry: f reports then move a segment's
    # own share by at most f/prior_strength, however weak the oracle (docs/privacy-math.md).
    unit = np.ones(d) if eng.influence is None else np.maximum(eng.influence, 1.0)
    priors = np.zeros((d, C))
    for s in range(d):  # parents first
        parent_prior = base if s == ROOT else priors[parents[s]]
        if s != ROOT and published[s] < 0:
            priors[s] = parent_prior
            continue
        m = mass[s] * ~sensitive_categories
        strength = prior_strength * unit[s]
        priors[s] = (m + strength * parent_prior) / (m.sum() + strength)
    out: np.ndarray = priors.astype(np.float32)
    return out
