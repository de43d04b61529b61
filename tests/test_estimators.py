"""Server-side estimators: unbiasedness and variance at scale, exact identities, the consistent
view, and property tests against slow numpy references.

The statistical tests use fresh OS randomness (no seed): they test the production path, and a
fixed seed would turn a test that can fail into one that cannot. Their false-failure rates are
computed in their docstrings.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localrank.errors import InputError
from localrank.privacy import oracles
from localrank.server.debias import (
    Estimate,
    count_variance,
    discrete_laplace_half_width,
    discrete_laplace_variance,
    estimate,
    estimate_from_support,
    project_to_simplex,
    support_counts,
)

N, D, EPS, EPS_PERM = 100_000, 256, 2.0, 4.0

#: Runs of the estimator-statistics tests. See `check_estimator_statistics` for why 16.
R = 16

#: Long statistical runs that `make test` deselects (pyproject's addopts) and `make stats` runs.
stats_only = pytest.mark.stats


def zipf_counts(n: int, d: int) -> npt.NDArray[np.int64]:
    """Fixed true counts, Zipf(1.1)-shaped, summing to n exactly (20653 down to 46 at 100k/256)."""
    w = 1.0 / np.arange(1, d + 1) ** 1.1
    c: npt.NDArray[np.int64] = np.floor(w / w.sum() * n).astype(np.int64)
    c[: n - int(c.sum())] += 1
    return c


def grr_covariance(c: npt.NDArray[np.int64], n: int, p: float, q: float) -> npt.NDArray[np.float64]:
    """The exact covariance matrix of GRR's estimates for fixed true counts.

    One report's indicators of items j ≠ k have covariance −π_j·π_k (they cannot both be 1),
    with π = p for the device's own value and q otherwise; summed over devices that is
    −(c_j·p·q + c_k·p·q + (n − c_j − c_k)·q²). Dividing by (p − q)² gives Cov(ĉ_j, ĉ_k).
    """
    pair = np.add.outer(c, c).astype(np.float64)
    cov = -(pair * p * q + (n - pair) * q * q) / (p - q) ** 2
    np.fill_diagonal(cov, count_variance(c, n, p, q))
    return cov


def check_estimator_statistics(oracle: oracles.Oracle, epsilon_perm: float | None) -> None:
    """Estimate R times from fresh reports of the same N devices; pool the standardised errors.

    For run r and item j, z_rj = (ĉ_rj − c_j)/σ_j with σ_j² = count_variance(c_j, N, p, q), the
    exact variance for the fixed true counts c. A correct implementation has E z = 0, E z² = 1.

    **Variance ratio** V = mean of z² over R·d = 4096 (run, item) pairs, asserted in [0.9, 1.1].
    The z are near-normal (each S_j sums 100k independent Bernoullis; excess kurtosis < 0.003),
    independent across runs, and:
    - OUE: independent across items too (each bit is randomised independently), so
      R·d·V ~ χ²(4096).
    - GRR: correlated across items (one report is one value). The exact correlations
      (`grr_covariance`) give Σ_{j≠k} ρ_jk² = 1.00 per run, so Var(Σ_j z_j²) = 2d + 2·1.00:
      the χ² approximation's variance is inflated by 0.4%, which changes nothing below.
    With 4096 degrees of freedom (Wilson–Hilferty), P(V > 1.1) = 5.7e-6 and
    P(V < 0.9) = 1.4e-6: 7.1e-6 together. R = 10 would give 3.7e-4, R = 8 1.4e-3.

    **Pooled standardised mean error** Z = Σ z_rj / sqrt(R·1ᵀC1), asserted |Z| ≤ 3.5, where C is
    the items' correlation matrix: the identity for OUE (1ᵀC1 = 256), and for GRR the exact one,
    for which 1ᵀC1 = 0.39 only (the estimates sum to N, so their errors cancel). Z ~ N(0, 1), so
    P(|Z| > 3.5) = 4.65e-4, whatever R.

    **Per test**: 4.65e-4 + 7.1e-6 = 4.7e-4 < 1e-3. (`make test` runs this for GRR and OUE,
    9.4e-4 for both; the chained pair runs under `make stats`.)

    The test also checks the interval coverage the server publishes with (plug-in variance):
    over 4096 nominal-95% intervals the share that covers c_j has sd 0.0034, so [0.93, 0.97] is
    ±5.9 sd (false failure ~4e-9; the weak GRR correlations barely change that).
    """
    c = zipf_counts(N, D)
    values = np.repeat(np.arange(D), c)
    p, q = oracles.effective_probabilities(oracle, D, EPS, epsilon_perm)
    sigma = np.sqrt(count_variance(c, N, p, q))
    z = np.empty((R, D))
    covered = 0
    plug_in = 0.0
    for r in range(R):
        if epsilon_perm is None:
            reports = oracles.perturb(oracle, values, D, EPS)
        else:
            memo = oracles.permanent_response(oracle, values, D, epsilon_perm)
            reports = oracles.instantaneous_response(oracle, memo, D, EPS)
        est = estimate(oracle, reports, D, EPS, epsilon_perm)
        assert (est.p, est.q) == (p, q)
        z[r] = (est.counts - c) / sigma
        low, high = est.interval(0.95)
        covered += int(np.count_nonzero((low <= c) & (c <= high)))
        plug_in += float(np.mean(est.variance / sigma**2))

    ratio = float(np.mean(z**2))
    if oracle is oracles.Oracle.GRR:
        cov = grr_covariance(c, N, p, q)
        ones_c_ones = float((cov / np.outer(sigma, sigma)).sum())
    else:
        ones_c_ones = float(D)
    pooled = float(z.sum() / math.sqrt(R * ones_c_ones))
    coverage = covered / (R * D)
    summary = (
        f"{oracle.value} ε_perm={epsilon_perm}: V={ratio:.4f} Z={pooled:+.3f} "
        f"coverage={coverage:.4f}"
    )
    print(summary)
    assert 0.9 <= ratio <= 1.1, summary
    assert abs(pooled) <= 3.5, summary
    assert 0.93 <= coverage <= 0.97, summary
    # The plug-in variance is unbiased: its mean over 4096 items is within 1% of the truth
    # (its per-item relative sd is below 5%, pooled below 0.1%).
    assert abs(plug_in / R - 1.0) < 0.01, summary


@pytest.mark.slow
@pytest.mark.parametrize("oracle", [oracles.Oracle.GRR, oracles.Oracle.OUE])
def test_estimator_statistics_single_stage(oracle: oracles.Oracle) -> None:
    """n = 100k, d = 256, ε = 2, R = 16 (see `check_estimator_statistics` for R and the rates).
    GRR is forced here although OUE is the variance-optimal choice at this (d, ε); σ is ~806
    for GRR and ~269 for OUE."""
    check_estimator_statistics(oracle, None)


@pytest.mark.slow
@stats_only
@pytest.mark.parametrize("oracle", [oracles.Oracle.GRR, oracles.Oracle.OUE])
def test_estimator_statistics_chained(oracle: oracles.Oracle) -> None:
    """As the single-stage test, for chained reports (ε_perm = 4, then ε = 2) debiased with the
    chain's (p*, q*). Under `make stats` only, so that `make test`'s statistical tests together
    stay below a 1e-3 false-failure rate (each |Z| ≤ 3.5 check alone costs 4.65e-4)."""
    check_estimator_statistics(oracle, EPS_PERM)


@pytest.mark.parametrize("epsilon_perm", [None, EPS_PERM])
def test_grr_estimates_sum_to_n(epsilon_perm: float | None) -> None:
    """Σ_j ĉ_j = (n − d·n·q)/(p − q) = n exactly, since p + (d − 1)q = 1 (also for the chain).
    Only float rounding may differ: ~d·n·ε_machine relative."""
    rng = np.random.default_rng()
    values = rng.integers(0, D, size=N)
    reports = oracles.perturb("grr", values, D, EPS)
    est = estimate("grr", reports, D, EPS, epsilon_perm)
    assert math.isclose(float(est.counts.sum()), N, rel_tol=1e-12)
    assert math.isclose(float(np.sum(est.consistent())), N, rel_tol=1e-12)


def test_consistent_view_is_non_negative_and_sums_to_n() -> None:
    c = zipf_counts(20_000, 64)
    values = np.repeat(np.arange(64), c)
    reports = oracles.perturb("oue", values, 64, 1.0)
    est = estimate("oue", reports, 64, 1.0)
    view = est.consistent()
    assert view.min() >= 0.0
    assert math.isclose(float(view.sum()), 20_000, rel_tol=1e-12)
    # Projection onto a convex set holding the truth never moves farther from it.
    assert np.linalg.norm(view - c) <= np.linalg.norm(est.counts - c) + 1e-9
    # Order is kept.
    order = np.argsort(est.counts, kind="stable")
    assert np.all(np.diff(view[order]) >= -1e-9)


def test_intervals_are_symmetric_and_widen_with_level() -> None:
    est = estimate_from_support(np.array([500, 100, 50]), 1000, 0.5, 0.1)
    low, high = est.interval()
    np.testing.assert_allclose(high - est.counts, est.counts - low)
    np.testing.assert_allclose((high - low) / 2, 1.959963984540054 * est.std_error)
    low99, high99 = est.interval(0.99)
    assert np.all(low99 < low) and np.all(high99 > high)
    with pytest.raises(InputError, match=r"^level:"):
        est.interval(1.0)


def test_support_counts_oue_matches_unpacking() -> None:
    rng = np.random.default_rng()
    for d in (2, 7, 8, 13, 256, 300):
        bits = rng.random((500, d)) < 0.3
        packed = oracles.pack_bits(bits)
        np.testing.assert_array_equal(support_counts("oue", packed, d), bits.sum(axis=0))


# --- property tests against slow references -------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(2, 40),
    epsilon=st.floats(0.05, 8.0),
    n=st.integers(1, 300),
    data=st.data(),
)
def test_estimate_matches_a_per_report_reference(
    d: int, epsilon: float, n: int, data: st.DataObject
) -> None:
    """ĉ and its variance against a loop over reports and the per-report Bernoulli variances."""
    oracle = data.draw(st.sampled_from(["grr", "oue"]))
    p, q = oracles.probabilities(oracle, d, epsilon)
    values = data.draw(st.lists(st.integers(0, d - 1), min_size=n, max_size=n))
    reports = oracles.perturb(oracle, values, d, epsilon)
    est = estimate(oracle, reports, d, epsilon)
    support = np.zeros(d)
    for report in reports:
        if oracle == "grr":
            support[int(report)] += 1
        else:
            for j in range(d):
                support[j] += (int(report[j // 8]) >> (j % 8)) & 1
    np.testing.assert_allclose(est.counts, (support - n * q) / (p - q), rtol=1e-12, atol=1e-9)
    # Var ĉ_j = Σ_devices Var(indicator)/(p − q)², with P(indicator) = p or q.
    truth = np.bincount(np.asarray(values, dtype=np.int64), minlength=d)
    ref = (truth * p * (1 - p) + (n - truth) * q * (1 - q)) / (p - q) ** 2
    np.testing.assert_allclose(count_variance(truth, n, p, q), ref, rtol=1e-12)
    np.testing.assert_allclose(est.variance, count_variance(est.counts, n, p, q), rtol=1e-12)
    assert np.all(est.variance > 0)


def _project_by_bisection(x: npt.NDArray[np.float64], total: float) -> npt.NDArray[np.float64]:
    lo, hi = float(x.min()) - total - 1.0, float(x.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(x - mid, 0).sum() > total:
            lo = mid
        else:
            hi = mid
    return np.maximum(x - (lo + hi) / 2, 0)


@settings(max_examples=200, deadline=None)
@given(
    x=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=60),
    total=st.floats(0.0, 1e5),
)
def test_projection_matches_bisection(x: list[float], total: float) -> None:
    v = np.asarray(x)
    got = project_to_simplex(v, total)
    assert got.min() >= 0.0
    assert math.isclose(float(got.sum()), total, rel_tol=1e-9, abs_tol=1e-6)
    np.testing.assert_allclose(got, _project_by_bisection(v, total), atol=1e-6 * max(1, total))


# --- central-mode noise summaries -----------------------------------------------------------


@pytest.mark.parametrize(
    ("epsilon", "sensitivity"), [(1, 1), (Fraction(1, 2), 3), (0.7, 2), (5, 1)]
)
def test_discrete_laplace_summaries_match_the_pmf(epsilon: float, sensitivity: int) -> None:
    alpha = math.exp(-float(Fraction(epsilon)) / sensitivity)
    z = np.arange(-2000, 2001)
    pmf = (1 - alpha) / (1 + alpha) * alpha ** np.abs(z)
    assert math.isclose(discrete_laplace_variance(epsilon, sensitivity), float(pmf @ z**2))
    k = discrete_laplace_half_width(epsilon, sensitivity, 0.95)
    inside = float(pmf[np.abs(z) <= k].sum())
    assert inside >= 0.95
    assert k == 0 or float(pmf[np.abs(z) <= k - 1].sum()) < 0.95


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: support_counts("grr", np.array([0, 5]), 5), "reports"),
        (lambda: support_counts("grr", np.array([[0]]), 5), "reports"),
        (lambda: support_counts("oue", np.zeros((2, 2), np.uint8), 17), "reports"),
        (lambda: support_counts("oue", np.array([[0, 2]], np.uint8), 9), "reports"),
        (lambda: support_counts("oue", np.zeros((2, 2), np.int64), 16), "reports"),
        (lambda: support_counts("rappor", np.zeros(2, np.int64), 16), "oracle"),
        (lambda: estimate_from_support(np.array([1, -1]), 5, 0.5, 0.1), "support"),
        (lambda: estimate_from_support(np.array([1, 1]), -5, 0.5, 0.1), "n"),
        (lambda: estimate_from_support(np.array([1, 1]), 5, 0.1, 0.5), "p"),
        (lambda: count_variance([1], 5, 0.2, 0.2), "p"),
        (lambda: project_to_simplex([1.0, math.nan], 1.0), "x"),
        (lambda: project_to_simplex([1.0], -1.0), "total"),
        (lambda: estimate("grr", np.array([0, 1]), 1, 1.0), "d"),
        (lambda: estimate("grr", np.array([0, 1]), 4, -1.0), "epsilon"),
        (lambda: estimate("grr", np.array([0, 1]), 4, 1.0, 0.0), "epsilon_perm"),
        (lambda: discrete_laplace_variance(0, 1), "epsilon"),
        (lambda: discrete_laplace_variance(math.inf, 1), "epsilon"),
        (lambda: discrete_laplace_variance(1, 0), "sensitivity"),
        (lambda: discrete_laplace_half_width(1, 1, 1.5), "level"),
    ],
)
def test_bad_input_names_the_argument(call: object, arg: str) -> None:
    assert callable(call)
    with pytest.raises(InputError, match=f"^{arg}:"):
        call()


def test_estimate_is_a_frozen_record() -> None:
    est = estimate_from_support(np.array([3, 1]), 4, 0.7, 0.3)
    assert isinstance(est, Estimate)
    with pytest.raises(AttributeError):
        est.n = 5  # type: ignore[misc]
