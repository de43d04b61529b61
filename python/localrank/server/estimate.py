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
  the lower end of its 95% interval is at least ``min_population`` *and* its parent is
  published; otherwise it is folded into its parent (its devices' active segment is an
  ancestor). The root is always published; its population is the noised number of census
  reports, which every device sends into the root's subtree.
- **Engagement** estimates per offer × event × tracked segment: LDP supports debiased with the
  chained ``(p*, q*)`` of each report configuration, or central counts (already noised). They
  are weighted by :data:`EVENT_WEIGHTS` into one positive-engagement score.
- **Priors**: per segment, the share of positive engagement going to each category (offers'
  primary category, the kernel's prior lookup), over the segment's subtree, smoothed towards
  the parent's prior with ``prior_strength`` pseudo-counts; the root is smoothed towards the
  uniform distribution over non-sensitive categories. Sensitive categories are never reported,
  so their prior is 0. A segment that is not published inherits its parent's prior.
- **Popularity**: per offer, the weighted total of its (noised) report counts, with the
  variance of that noise; the bias is built from the lower end of its 95% interval, so an
  offer nobody engaged with does not look popular by the luck of its noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from localrank.estimators import count_variance, discrete_laplace_variance
from localrank.ldp import effective_probabilities
from localrank.segments import ROOT, UNKNOWN_POPULATION
from localrank.server.ingest import parse_config
from localrank.server.sums import EVENTS, CensusSums, EngagementSums

__all__ = [
    "EVENT_WEIGHTS",
    "Engagement",
    "Populations",
    "category_priors",
    "engagement",
    "populations",
]

#: How much each event counts as positive engagement. Impressions are exposure, not interest;
#: dismissals are kept in the sums but do not subtract (a dismiss also follows an impression
#: the user did look at).
EVENT_WEIGHTS = {"impression": 0.0, "click": 1.0, "conversion": 2.0, "dismiss": 0.0}
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Populations:
    """Subtree population estimates and what is published."""

    estimate: np.ndarray  # float64[d_seg]
    variance: np.ndarray  # float64[d_seg]
    published: np.ndarray  # int64[d_seg]: rounded estimate, or -1 where folded into the parent
    reports: int  # noised number of census reports summed

    @property
    def lower(self) -> np.ndarray:
        """The lower end of each 95% interval."""
        out: np.ndarray = np.asarray(self.estimate - _Z95 * np.sqrt(self.variance))
        return out


def _children_order(parents: np.ndarray) -> np.ndarray:
    """Segment ids deepest first (a child before its parent)."""
    depth = np.zeros(parents.size, dtype=np.int64)
    for s in range(1, parents.size):  # the builder lists parents before children
        depth[s] = depth[parents[s]] + 1
    order: np.ndarray = np.asarray(np.argsort(-depth, kind="stable"))
    return order


def _subtree_sum(values: np.ndarray, parents: np.ndarray, order: np.ndarray) -> np.ndarray:
    acc: np.ndarray = np.array(values, dtype=np.float64)
    for s in order:
        if s != ROOT:
            acc[parents[s]] += acc[s]
    return acc


def populations(
    census: Sequence[CensusSums],
    *,
    parents: np.ndarray,
    min_population: int,
    central_epsilon: float,
    noise: bool = True,
) -> Populations:
    """Population estimates of every segment's subtree, and which are published."""
    d = parents.size
    order = _children_order(parents)
    size = _subtree_sum(np.ones(d), parents, order)
    est = np.zeros(d)
    var = np.zeros(d)
    reports = 0
    noise_var = discrete_laplace_variance(central_epsilon, 1) if noise else 0.0
    for c in census:
        _, oracle, eps, perm = parse_config(c.config)
        assert eps is not None
        p, q = effective_probabilities(oracle, d, eps, perm)
        n = max(c.n, 0)
        reports += c.n
        single = (c.support - n * q) / (p - q)
        sub = _subtree_sum(single, parents, order)
        est += sub
        if oracle == "oue":
            per = count_variance(np.clip(single, 0, n), n, p, q)
            var += _subtree_sum(per, parents, order)
        else:
            c_a = np.clip(sub, 0, n)
            p_a = p + (size - 1) * q
            q_a = size * q
            var += (c_a * p_a * (1 - p_a) + (n - c_a) * q_a * (1 - q_a)) / (p - q) ** 2
        var += (size * q) ** 2 * noise_var / (p - q) ** 2
    # Every census report is in the root's subtree, so its population is the (noised) number
    # of reports itself: far sharper than the sum of d_seg estimates.
    est[ROOT] = float(reports)
    var[ROOT] = len(census) * noise_var
    lower = est - _Z95 * np.sqrt(var)
    published = np.full(d, UNKNOWN_POPULATION, dtype=np.int64)
    published[ROOT] = max(0, round(est[ROOT])) if census else UNKNOWN_POPULATION
    for s in range(1, d):  # parents first: a segment needs its parent published
        if published[parents[s]] >= 0 and census and lower[s] >= min_population:
            published[s] = round(est[s])
    return Populations(est, var, published, reports)


@dataclass(frozen=True)
class Engagement:
    """Weighted positive engagement per offer × tracked segment, and per offer in total."""

    tracked: np.ndarray  # int64[T]
    scores: np.ndarray  # float64[offers, T]
    variance: np.ndarray  # float64[offers, T]
    popularity: np.ndarray  # float64[offers]: unbiased weighted totals
    popularity_variance: np.ndarray  # float64[offers]
    reports: int


def engagement(
    sums: Sequence[EngagementSums],
    *,
    offers: Sequence[str],
    d_seg: int,
    central_epsilon: float,
    report_limit: int,
    noise: bool = True,
) -> Engagement:
    """Sum the engagement estimates of every partial sum onto the current catalog's offers and
    the union of the tracked segments."""
    tracked = np.unique(np.concatenate([s.segments for s in sums] + [np.array([ROOT])]))
    col = {int(t): i for i, t in enumerate(tracked)}
    row = {o: i for i, o in enumerate(offers)}
    w = np.array([EVENT_WEIGHTS[e] for e in EVENTS])
    scores = np.zeros((len(offers), tracked.size))
    variance = np.zeros_like(scores)
    popularity = np.zeros(len(offers))
    popularity_var = np.zeros(len(offers))
    reports = 0
    noise_var = discrete_laplace_variance(central_epsilon, report_limit) if noise else 0.0
    for s in sums:
        mode, oracle, eps, perm = parse_config(s.config)
        rows_here = np.array([row.get(o, -1) for o in s.offers])
        keep = rows_here >= 0
        cols = np.array([col[int(t)] for t in s.segments])
        values = s.values[keep].astype(np.float64)  # (o, 4, T)
        if mode == "central":
            est = values
            var = np.full_like(est, noise_var)
            totals = values.sum(axis=2)
            reports += int(max(values.sum(), 0))
        else:
            assert eps is not None
            p, q = effective_probabilities(oracle, d_seg, eps, perm)
            n = s.n[keep].astype(np.float64)[:, :, None]
            est = (values - n * q) / (p - q)
            n_pos = np.maximum(n, 0)
            c = np.clip(est, 0, n_pos)
            var = (c * p * (1 - p) + (n_pos - c) * q * (1 - q) + q**2 * noise_var) / (p - q) ** 2
            totals = s.n[keep].astype(np.float64)
            reports += int(max(s.n.sum(), 0))
        target = rows_here[keep]
        scores[np.ix_(target, cols)] += np.einsum("oet,e->ot", est, w)
        variance[np.ix_(target, cols)] += np.einsum("oet,e->ot", var, w**2)
        popularity[target] += totals @ w
        # Totals are noised counts (ldp: ñ per offer and event; central: a sum over T cells).
        cells = 1 if mode != "central" else s.segments.size
        popularity_var[target] += cells * noise_var * float(np.sum(w**2))
    return Engagement(tracked, scores, variance, popularity, popularity_var, reports)


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
    order = _children_order(parents)
    # Category mass per tracked segment, clipped at zero per category (LDP estimates may be
    # negative), then summed over each subtree.
    mass = np.zeros((d, C))
    per_cat = np.zeros((C, eng.tracked.size))
    np.add.at(per_cat, primary, eng.scores)
    mass[eng.tracked] = np.clip(per_cat, 0, None).T
    for s in order:
        if s != ROOT:
            mass[parents[s]] += mass[s]
    base = (~sensitive_categories).astype(np.float64)
    base /= max(base.sum(), 1.0)
    priors = np.zeros((d, C))
    for s in range(d):  # parents first
        parent_prior = base if s == ROOT else priors[parents[s]]
        if s != ROOT and published[s] < 0:
            priors[s] = parent_prior
            continue
        m = mass[s] * ~sensitive_categories
        priors[s] = (m + prior_strength * parent_prior) / (m.sum() + prior_strength)
    out: np.ndarray = priors.astype(np.float32)
    return out
