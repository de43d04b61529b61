"""The server's cohort fit (localrank.server.cohort_fit) and the cohort payload
(localrank.bundle.cohorts): ALS against a slow reference, the centroid identity, merging,
splitting, stable ids, determinism and the bundle budget.

The planted fleets below are drawn from fixed seeds: they are inputs, not the code under test,
and the assertions hold with wide margins on them (stated where they are made)."""

from __future__ import annotations

import io
import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localrank.bundle.cohorts import CohortPayload, encode_payload, gram_inverse
from localrank.device.fold_in import fold_in, nearest_cohort
from localrank.errors import InputError
from localrank.server.cohort_fit import (
    CohortSettings,
    als_objective,
    centroid_update,
    cohort_round,
    content_cohorts,
    content_factors,
    fit_offer_factors,
    initial_model,
    match_ids,
    merge_small,
    rates,
    signal_shares,
    split_largest,
    target_cohorts,
)

ID_RANGE = (1000, 1100)


# ---------------------------------------------------------------------------------------------
# ALS


def slow_als(
    R: np.ndarray, n: np.ndarray, V: np.ndarray, s: CohortSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Hu-Koren-Volinsky's solves written out one cohort and one offer at a time, with explicit
    confidence matrices: the definition the vectorised fit must match."""
    P = np.where(n[:, None] > 0, np.clip(R, 0, None) / np.where(n > 0, n, 1)[:, None], 0.0)
    f = V.shape[1]
    U = np.zeros((R.shape[0], f))
    for _ in range(s.iterations):
        for c in range(R.shape[0]):
            Cc = np.diag(1 + s.alpha * P[c])
            U[c] = np.linalg.solve(V.T @ Cc @ V + s.regularization * np.eye(f), V.T @ Cc @ P[c])
        V = V.copy()
        for i in range(R.shape[1]):
            w = np.clip(n, 0, None) * (1 + s.alpha * P[:, i])
            A = U.T @ np.diag(w) @ U + s.offer_regularization * np.eye(f)
            V[i] = np.linalg.solve(A, U.T @ (w * P[:, i]))
    return U, V


def small_problem(seed: int, C: int = 5, N: int = 12, f: int = 3):
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 80, C).astype(float)
    R = rng.poisson(rng.random((C, N)) * n[:, None] * 0.3).astype(float)
    R[0, 0] = -3.0  # a de-biased estimate below zero: clipped
    return R, n, rng.standard_normal((N, f)) * 0.3


@pytest.mark.parametrize("alpha", [0.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_als_matches_the_slow_reference(alpha: float, seed: int) -> None:
    R, n, V0 = small_problem(seed)
    s = CohortSettings(factors=3, alpha=alpha, iterations=4, regularization=0.5,
                       offer_regularization=2.0)  # fmt: skip
    fit = fit_offer_factors(R, n, V0, settings=s)
    U, V = slow_als(R, n, V0, s)
    np.testing.assert_allclose(fit.V, V, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.U, U, rtol=1e-9, atol=1e-12)


@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 1.0, 10.0]))
@settings(max_examples=40, deadline=None)
def test_als_objective_never_increases(seed: int, alpha: float) -> None:
    R, n, V0 = small_problem(seed, C=6, N=20, f=4)
    s = CohortSettings(factors=4, alpha=alpha, iterations=8)
    fit = fit_offer_factors(R, n, V0, settings=s)
    start = als_objective(R, n, np.zeros((6, 4)), V0, alpha=alpha, regularization=1.0,
                          offer_regularization=10.0)  # fmt: skip
    trace = (start, *fit.objective)
    for a, b in itertools.pairwise(trace):
        assert b <= a * (1 + 1e-12) + 1e-12


def test_each_als_half_step_is_the_exact_minimiser() -> None:
    """Moving U or V off the fit in any direction raises J: each block is solved exactly."""
    R, n, V0 = small_problem(7)
    s = CohortSettings(factors=3, alpha=2.0, iterations=3)
    fit = fit_offer_factors(R, n, V0, settings=s)
    kw = {"alpha": 2.0, "regularization": 1.0, "offer_regularization": 10.0}
    J = als_objective(R, n, fit.U, fit.V, **kw)
    rng = np.random.default_rng(0)
    for _ in range(10):
        dV = rng.standard_normal(fit.V.shape) * 1e-3
        assert als_objective(R, n, fit.U, fit.V + dV, **kw) > J


def test_anchored_als_half_steps_minimise_the_anchored_objective_and_keep_unseen_directions() -> (
    None
):
    """With ``anchor``, J has λ_V·‖V − V⁰‖²: V's half-step is its exact minimiser (moving V off
    it raises J), J never increases, and a direction no cohort row spans keeps V⁰'s values
    (without the anchor it shrinks to 0)."""
    R, n, V0 = small_problem(7)
    s = CohortSettings(factors=3, alpha=2.0, iterations=4, anchor=True)
    fit = fit_offer_factors(R, n, V0, settings=s)
    kw = {"alpha": 2.0, "regularization": 1.0, "offer_regularization": 10.0, "anchor": V0}
    J = als_objective(R, n, fit.U, fit.V, **kw)
    rng = np.random.default_rng(1)
    for _ in range(10):
        dV = rng.standard_normal(fit.V.shape) * 1e-3
        assert als_objective(R, n, fit.U, fit.V + dV, **kw) > J
    for a, b in itertools.pairwise(fit.objective):
        assert b <= a * (1 + 1e-12) + 1e-12
    # one cohort row: U spans one direction; an offer nobody engaged with keeps V⁰ in the
    # directions orthogonal to it, where the unanchored fit leaves nothing
    R1, n1 = R[:1].copy(), n[:1]
    R1[0, 0] = 0.0
    anchored = fit_offer_factors(R1, n1, V0, settings=s).V
    plain = fit_offer_factors(R1, n1, V0, settings=CohortSettings(factors=3, iterations=4)).V
    assert np.linalg.matrix_rank(plain, tol=1e-9) == 1
    assert np.linalg.matrix_rank(anchored, tol=1e-9) == 3


# ---------------------------------------------------------------------------------------------
# The centroid identity


@given(st.integers(0, 2**32 - 1), st.floats(0.05, 20.0))
@settings(max_examples=60, deadline=None)
def test_centroid_update_is_the_mean_of_the_members_fold_ins(seed: int, lam: float) -> None:
    rng = np.random.default_rng(seed)
    N, f = int(rng.integers(2, 40)), int(rng.integers(1, 8))
    V = rng.standard_normal((N, f))
    members = [rng.random(N) < rng.random() for _ in range(int(rng.integers(1, 30)))]
    counts = np.sum(members, axis=0, dtype=float)[None, :]
    G = gram_inverse(V, lam)
    folds = [fold_in(V[np.flatnonzero(x)], np.ones(int(x.sum())), G) for x in members]
    centroid = centroid_update(V, counts, [len(members)], regularization=lam)[0]
    expected = np.mean(folds, axis=0)
    atol = 1e-12 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(centroid, expected, rtol=1e-9, atol=atol)


def test_a_device_of_one_category_lands_in_that_categorys_round_0_cohort() -> None:
    rng = np.random.default_rng(11)
    K = 6
    cats = [[int(rng.integers(K))] + ([int(rng.integers(K))] if rng.random() < 0.3 else [])
            for _ in range(80)]  # fmt: skip
    model, groups = initial_model(cats, K, id_range=ID_RANGE, settings=CohortSettings(factors=8))
    p = model.payload
    assert groups == [(k,) for k in range(K)]
    for k in range(K):
        own = np.array([i for i, c in enumerate(cats) if c == [k]])
        u = fold_in(p.factors[own], np.ones(own.size), p.gram_inv)
        assert nearest_cohort(u, p.centroids, p.ids) == ID_RANGE[0] + k


def test_content_factors_project_many_categories_and_stay_deterministic() -> None:
    cats = [[i % 40, (i * 7) % 40] for i in range(100)]
    V = content_factors(cats, 40, 16)
    assert V.shape == (100, 16)
    assert np.array_equal(V, content_factors(cats, 40, 16))
    centroids, groups = content_cohorts(V, cats, 40, regularization=1.0, pairs=True)
    assert len(groups) == 40 + 40 * 39 // 2 and centroids.shape == (len(groups), 16)
    with pytest.raises(InputError, match=r"^offer_categories: "):
        content_factors([[0], [41]], 40, 16)


# ---------------------------------------------------------------------------------------------
# Merging and splitting


@given(st.integers(0, 2**32 - 1), st.integers(1, 120), st.booleans())
@settings(max_examples=80, deadline=None)
def test_no_group_falls_below_min_population_after_merging(
    seed: int, min_population: int, noisy: bool
) -> None:
    rng = np.random.default_rng(seed)
    C = int(rng.integers(1, 60))
    sizes = rng.integers(0, 3 * min_population, C).astype(float)
    if noisy:
        sizes += rng.normal(0, 10, C)
    variances = rng.random(C) * 100 if noisy else np.zeros(C)
    centroids = rng.standard_normal((C, 4))
    groups = merge_small(centroids, sizes, variances, min_population=min_population, margin=2.0)

    def lower(rows: list[int]) -> float:
        return float(sizes[rows].sum() - 1.96 * np.sqrt(variances[rows].sum()) - 2.0)

    if lower(list(range(C))) < min_population:
        assert groups == []
        return
    assert sorted(c for g in groups for c in g) == list(range(C))  # a partition
    for g in groups:
        assert lower(list(g)) >= min_population


def test_a_merged_group_is_the_fold_in_of_its_summed_rows() -> None:
    """So merging needs no member either: the group joins its nearest neighbour by taste."""
    rng = np.random.default_rng(2)
    V = rng.standard_normal((30, 4))
    R = rng.poisson(2.0, (5, 30)).astype(float)
    n = np.array([10.0, 80.0, 12.0, 90.0, 60.0])
    cents = centroid_update(V, R, n, regularization=1.0)
    weighted = (n[:, None] * cents)[[0, 1]].sum(axis=0) / n[[0, 1]].sum()
    summed = R[[0, 1]].sum(axis=0, keepdims=True)
    merged = centroid_update(V, summed, [n[[0, 1]].sum()], regularization=1.0)[0]
    np.testing.assert_allclose(merged, weighted, rtol=1e-10)
    # 0 and 2 are small; each joins the cohort it is nearest to in direction
    cents2 = np.array([[1, 0.1], [1, 0], [0, 1], [0.1, 1], [-1, 0]], dtype=float)
    groups = merge_small(cents2, n, np.zeros(5), min_population=50)
    assert groups == [(0, 1), (2, 3), (4,)]


def planted_fleet(seed: int, tastes: int, devices: int, offers: int = 200):
    """Devices drawn from ``tastes`` planted taste profiles over ``offers`` offers."""
    rng = np.random.default_rng(seed)
    profile = rng.dirichlet(np.full(offers, 0.08), size=tastes)
    z = np.arange(devices) % tastes
    X = rng.random((devices, offers)) < np.clip(25 * profile[z], 0, 0.9)
    cats = [[i % 6] for i in range(offers)]
    return X, z, cats, profile


def assign(payload: CohortPayload, X: np.ndarray) -> np.ndarray:
    return np.array([
        nearest_cohort(
            fold_in(payload.factors[np.flatnonzero(x)], np.ones(int(x.sum())), payload.gram_inv),
            payload.centroids,
            payload.ids,
        )
        for x in X
    ])  # fmt: skip


def observe(payload: CohortPayload, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = assign(payload, X)
    R = np.array([X[ids == c].sum(axis=0) for c in payload.ids], dtype=float)
    n = np.array([(ids == c).sum() for c in payload.ids], dtype=float)
    return R, n


def test_split_separates_a_cohort_made_of_two_tastes() -> None:
    """A cohort that holds two planted tastes is split along the axis that separates them:
    each child takes (almost) all of one taste. The factors come from the two tastes' rows
    (factors that can tell them apart); the split itself sees only the merged row. Seen
    margin: 100% purity on this fleet."""
    X, z, _, _ = planted_fleet(4, 2, 400)
    s = CohortSettings(factors=8, iterations=15)
    rng = np.random.default_rng(0)
    rows = np.array([X[z == t].sum(axis=0) for t in (0, 1)], dtype=float)
    V = fit_offer_factors(rows, [200.0, 200.0], rng.standard_normal((200, 8)) * 0.1,
                          settings=s).V  # fmt: skip
    whole = centroid_update(V, X.sum(axis=0, keepdims=True), [400.0], regularization=1.0)
    cents, parent = split_largest(whole, rates(X.sum(0, keepdims=True), [400.0]), [400.0], V,
                                  regularization=1.0, target=2, min_population=50)  # fmt: skip
    assert parent.tolist() == [0, 0]
    G = gram_inverse(V, 1.0)
    side = np.array([
        nearest_cohort(fold_in(V[np.flatnonzero(x)], np.ones(int(x.sum())), G), cents, [1, 2])
        for x in X
    ])  # fmt: skip
    for t in (0, 1):
        share = Counter(side[z == t].tolist()).most_common(1)[0][1] / np.sum(z == t)
        assert share >= 0.9
    assert Counter(side[z == 0].tolist()).most_common(1)[0][0] != Counter(
        side[z == 1].tolist()
    ).most_common(1)[0][0]


def test_split_stops_at_the_target_and_at_small_cohorts() -> None:
    rng = np.random.default_rng(1)
    V = rng.standard_normal((50, 4))
    P = rng.random((3, 50))
    cents = rng.standard_normal((3, 4))
    _, parent = split_largest(cents, P, [400.0, 130.0, 60.0], V, regularization=1.0,
                              target=10, min_population=50, split_at=2.5)  # fmt: skip
    assert parent.tolist() == [0, 0, 1, 1, 2]  # 400 and 130 split; 60 < 2.5·50 does not
    _, parent = split_largest(cents, P, [400.0, 130.0, 60.0], V, regularization=1.0,
                              target=4, min_population=50)  # fmt: skip
    assert parent.tolist() == [0, 0, 1, 2]  # only the largest: 4 reached
    assert target_cohorts(943, 50) == 12


# ---------------------------------------------------------------------------------------------
# Ids


def test_match_ids_follows_the_tastes_and_hands_out_fresh_ids() -> None:
    rng = np.random.default_rng(9)
    prev = rng.standard_normal((100, 5))
    perm = [3, 0, 4, 1]
    new = prev[:, perm] + rng.standard_normal((100, 4)) * 0.05
    new = np.hstack([new, rng.standard_normal((100, 1))])  # one new taste
    ids = match_ids(prev, [1000, 1001, 1002, 1003, 1004], new, id_range=(1000, 1010),
                    min_similarity=0.5)  # fmt: skip
    assert ids.tolist() == [1003, 1000, 1004, 1001, 1005]  # 1005: not used last round
    with pytest.raises(InputError, match=r"^id_range: "):
        match_ids(prev, [1000, 1001, 1002, 1003, 1004], new, id_range=(1000, 1003))


def rounds_on(X: np.ndarray, cats: list[list[int]], s: CohortSettings, k: int) -> list:
    model, _ = initial_model(cats, 6, id_range=ID_RANGE, settings=s)
    out = []
    p = model.payload
    for _ in range(k):
        R, n = observe(p, X)
        r = cohort_round(p, R, n, np.zeros(n.size), n_devices=len(X), id_range=ID_RANGE,
                         settings=s)  # fmt: skip
        out.append(r)
        p = r.model.payload
    return out


def test_ids_keep_their_taste_across_rounds_with_perturbed_data() -> None:
    """Five planted tastes, 100 devices each. After three rounds, the fleet is redrawn from the
    same tastes (new devices, new engagements): each taste keeps its id. Seen margins on this
    fleet: every taste's majority id is unchanged and over 95% of devices keep theirs."""
    s = CohortSettings(factors=12, min_population=50)
    X, z, cats, profile = planted_fleet(21, 5, 500)
    p = rounds_on(X, cats, s, 3)[-1].model.payload
    before = assign(p, X)
    rng = np.random.default_rng(22)
    X2 = rng.random(X.shape) < np.clip(25 * profile[z], 0, 0.9)
    R, n = observe(p, X2)
    p2 = cohort_round(p, R, n, np.zeros(n.size), n_devices=500, id_range=ID_RANGE,
                      settings=s).model.payload  # fmt: skip
    after = assign(p2, X2)
    majority = [Counter(before[z == t].tolist()).most_common(1)[0][0] for t in range(5)]
    assert len(set(majority)) == 5  # five tastes, five cohorts
    for t in range(5):
        assert Counter(after[z == t].tolist()).most_common(1)[0][0] == majority[t]
    assert np.mean(after == np.array(majority)[z]) >= 0.9


def test_no_published_cohort_is_below_min_population() -> None:
    s = CohortSettings(factors=8, min_population=40)
    X, _, cats, _ = planted_fleet(5, 7, 420)
    for r in rounds_on(X, cats, s, 3):
        m = r.model
        assert m.payload.ids.size >= 1
        measured = ~m.provisional
        assert np.all(m.populations[measured] >= 40)
        # a split child is provisional: its parent held ≥ split_at·min_population
        assert np.all(m.populations[m.provisional] * 2 >= s.split_at * 40)


def test_fine_cohorts_learn_apart_and_publish_only_groups_that_clear_the_threshold() -> None:
    """ldp's ``fine_cohorts``: 5 planted tastes of 30 devices each and min_population = 50
    (round 0: 6 content cohorts). The merging rounds collapse them to ⌊150 / 50⌋ = 3 cohorts at
    most (tastes mixed in a cohort's row, lost to the factors for good); the learning cohorts
    keep every taste apart, and only groups of them are published, each with a census lower
    bound ≥ 50."""
    tastes = 5
    X, z, cats, _ = planted_fleet(31, tastes, 30 * tastes)
    merged = rounds_on(X, cats, CohortSettings(factors=12, min_population=50), 3)[-1]
    assert merged.model.payload.ids.size <= 3
    s = CohortSettings(factors=12, min_population=50, fit_unmerged=True, fine_cohorts=True)
    last = rounds_on(X, cats, s, 3)[-1].model
    ids = assign(last.payload, X)
    majority = [Counter(ids[z == t].tolist()).most_common(1)[0] for t in range(tastes)]
    assert len({m[0] for m in majority}) == tastes  # every taste its own learning cohort
    assert all(count >= 27 for _, count in majority)  # ≥ 90% of each taste's devices
    published = np.isfinite(last.populations)
    assert 1 <= published.sum() < last.payload.ids.size
    assert np.all(last.populations[published] >= 50)
    heads = {g[0] for g in last.groups}
    assert heads == set(last.payload.ids[published].tolist())
    members = [m for g in last.groups for m in g]
    assert len(members) == len(set(members))  # the groups are disjoint
    n = {int(c): float(np.sum(ids == c)) for c in last.payload.ids}
    for g in last.groups:  # each group holds its published population (zero census variance)
        assert sum(n[m] for m in g) >= 50


def test_earlier_rounds_rows_join_the_fit_and_nothing_else() -> None:
    """Rows of earlier cohorts in the window are further pseudo-users of the ALS: the round's V
    is the fit on the stacked rows; the cohorts themselves come from this round's rows."""
    s = CohortSettings(factors=8, min_population=30, encoding="float32")
    X, _, cats, _ = planted_fleet(12, 4, 240)
    p = rounds_on(X, cats, s, 1)[-1].model.payload
    R, n = observe(p, X)
    rng = np.random.default_rng(1)
    Re, ne = rng.poisson(3.0, (3, R.shape[1])).astype(float), np.array([60.0, 70.0, 80.0])
    kw = {"n_devices": 240, "id_range": ID_RANGE, "settings": s}
    plain = cohort_round(p, R, n, np.zeros(n.size), **kw)
    more = cohort_round(p, R, n, np.zeros(n.size), earlier_counts=Re, earlier_sizes=ne, **kw)
    assert not np.array_equal(plain.model.payload.factors, more.model.payload.factors)
    groups = merge_small(centroid_update(p.factors, R, n, regularization=1.0), n,
                         np.zeros(n.size), min_population=30)  # fmt: skip
    Rm = np.array([R[list(g)].sum(axis=0) for g in groups])
    nm = np.array([n[list(g)].sum() for g in groups])
    stacked = fit_offer_factors(np.vstack([Rm, Re]), np.concatenate([nm, ne]),
                                p.factors.astype(np.float64), settings=s)  # fmt: skip
    np.testing.assert_array_equal(more.model.payload.factors, stacked.V.astype(np.float32))
    with pytest.raises(InputError, match=r"^earlier_counts: "):
        cohort_round(p, R, n, np.zeros(n.size), earlier_counts=Re[:, :5], earlier_sizes=ne, **kw)


def test_a_fleet_too_small_for_one_cohort_publishes_none() -> None:
    s = CohortSettings(factors=8, min_population=50)
    X, _, cats, _ = planted_fleet(6, 3, 40)
    model, _ = initial_model(cats, 6, id_range=ID_RANGE, settings=s)
    R, n = observe(model.payload, X)
    r = cohort_round(model.payload, R, n, np.zeros(n.size), n_devices=40, id_range=ID_RANGE,
                     settings=s)  # fmt: skip
    assert r.model.payload.ids.size == 0
    assert r.model.payload.centroids.shape == (0, 8)


# ---------------------------------------------------------------------------------------------
# Determinism


def test_two_runs_give_byte_identical_payloads_whatever_the_blas_threads() -> None:
    from threadpoolctl import threadpool_limits

    s = CohortSettings(factors=16, min_population=30, alpha=3.0)
    X, _, cats, _ = planted_fleet(8, 6, 300, offers=400)
    outs = []
    for threads in (1, 2, 1):
        with threadpool_limits(threads, "blas"):
            rs = rounds_on(X, cats, s, 2)
        outs.append({k: v.tobytes() for k, v in rs[-1].model.payload.to_arrays().items()})
    assert outs[0] == outs[1] == outs[2]


# ---------------------------------------------------------------------------------------------
# The payload


def npy_bytes(arrays: dict[str, np.ndarray]) -> int:
    total = 0
    for a in arrays.values():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
        total += len(buf.getvalue())
    return total


@pytest.mark.parametrize(
    ("encoding", "limit", "max_error"),
    [("float32", 300_000, 1e-6), ("float16", 160_000, 1e-3), ("int8", 100_000, 1e-2)],
)
def test_payload_at_2000_offers_and_f_32_fits_well_under_a_megabyte(
    encoding: str, limit: int, max_error: float
) -> None:
    rng = np.random.default_rng(0)
    V = rng.standard_normal((2000, 32)) * 0.1
    centroids = rng.standard_normal((100, 32))
    p = encode_payload(V, centroids, np.arange(1000, 1100), regularization=2.0,
                       encoding=encoding)  # type: ignore[arg-type]  # fmt: skip
    arrays = p.to_arrays()
    assert npy_bytes(arrays) < limit
    back = CohortPayload.from_arrays(arrays)
    assert np.array_equal(back.factors, p.factors)
    assert np.array_equal(back.gram_inv, p.gram_inv) and np.array_equal(back.ids, p.ids)
    rel = np.abs(back.factors - V).max() / np.abs(V).max()
    assert rel < max_error
    # gram_inv is the inverse of the *decoded* factors' Gram matrix
    G = back.factors.astype(np.float64).T @ back.factors + 2.0 * np.eye(32)
    np.testing.assert_allclose(back.gram_inv @ G, np.eye(32), atol=1e-4)


def test_payload_refuses_malformed_arrays_naming_them() -> None:
    p = encode_payload(np.ones((5, 3)), np.ones((2, 3)), [7, 8], regularization=1.0,
                       encoding="int8")  # fmt: skip
    arrays = p.to_arrays()
    for name in ("factors", "gram_inv", "centroids", "ids", "regularization"):
        broken = {k: v for k, v in arrays.items() if k != f"extra_cohort_{name}"}
        with pytest.raises(InputError, match=rf"^extra_cohort_{name}: "):
            CohortPayload.from_arrays(broken)
    with pytest.raises(InputError, match=r"^extra_cohort_factor_scale: "):
        CohortPayload.from_arrays(
            {k: v for k, v in arrays.items() if k != "extra_cohort_factor_scale"}
        )
    with pytest.raises(InputError, match=r"^extra_cohort_ids: "):
        CohortPayload.from_arrays({**arrays, "extra_cohort_ids": np.array([7, 7], np.int32)})
    with pytest.raises(InputError, match=r"^extra_cohort_centroids: "):
        CohortPayload.from_arrays({**arrays, "extra_cohort_centroids": np.ones((2, 4), np.float32)})
    with pytest.raises(InputError, match=r"^ids: "):
        encode_payload(np.ones((5, 3)), np.ones((2, 3)), [7, 7], regularization=1.0)
    with pytest.raises(InputError, match=r"^encoding: "):
        encode_payload(np.ones((5, 3)), np.ones((2, 3)), [7, 8], regularization=1.0,
                       encoding="int4")  # type: ignore[arg-type]  # fmt: skip


def test_the_fold_in_weight_travels_in_the_payload_and_defaults_to_one() -> None:
    p = encode_payload(np.ones((5, 3)), np.ones((2, 3)), [7, 8], regularization=1.0)
    assert p.fold_in_weight == 1.0
    assert "fold_in_weight" not in p.encoded  # absent means 1: round 0's bytes do not change
    half = CohortPayload.build(dict(p.encoded), p.centroids, p.ids, regularization=1.0,
                               fold_in_weight=0.5)  # fmt: skip
    back = CohortPayload.from_arrays(half.to_arrays())
    assert back.fold_in_weight == 0.5
    # rebuilt from a payload's arrays without a weight (merging by the census): kept
    kept = CohortPayload.build(dict(back.encoded), back.centroids[:1], back.ids[:1],
                               regularization=1.0)  # fmt: skip
    assert kept.fold_in_weight == 0.5
    for bad in (1.5, -0.1, float("nan"), True):
        with pytest.raises(InputError, match=r"^fold_in_weight: expected a number in \[0, 1\]"):
            CohortPayload.build(dict(p.encoded), p.centroids, p.ids, regularization=1.0,
                                fold_in_weight=bad)  # fmt: skip
    arrays = {**half.to_arrays(), "extra_cohort_fold_in_weight": np.array([0.5, 0.5])}
    with pytest.raises(InputError, match=r"^extra_cohort_fold_in_weight: "):
        CohortPayload.from_arrays(arrays)


def test_signal_shares_measure_what_the_factors_see_of_the_noise() -> None:
    """Eight rows: a planted deviation (opposite tastes, alternately) plus Gaussian noise of
    known variance. The share must estimate signal / (signal + noise) of the deviation the
    factors see, both measured here by brute force: the noise-free deviation's ‖Vᵀd‖², and the
    noise's mean ‖Vᵀd‖² over 400 pure-noise draws. Pure noise gives about 0, no noise exactly 1.
    f = 32 as the product's factors (with only 8 the ratio of noisy squares ran about 0.08 low:
    a conservative bias). Tolerance 0.05: 200 draws average the estimate's own noise."""
    rng = np.random.default_rng(3)
    N, f, C, n_c = 400, 32, 8, 100.0
    V = rng.standard_normal((N, f)) / np.sqrt(N)
    base = np.full(N, 0.05)
    direction = V @ rng.standard_normal(f)
    direction *= 0.02 / np.sqrt(np.mean(direction**2))
    signal = np.array([direction if c % 2 else -direction for c in range(C)])
    n = np.full(C, n_c)
    sd = np.sqrt(np.linspace(10.0, 60.0, C))[:, None] * np.ones((1, N))  # rows differ in noise

    def deviation_sq(R: np.ndarray) -> np.ndarray:
        d = (R - R.sum(axis=0) / C) @ V
        out: np.ndarray = np.sum(d * d, axis=1)
        return out

    clean = n_c * (base + signal)
    S = deviation_sq(clean)
    noise = np.mean([deviation_sq(rng.normal(0, sd)) for _ in range(400)], axis=0)
    want = S / (S + noise)
    assert want.min() > 0.2 and want.max() < 0.95, want  # the rows span the interesting range
    got = np.mean([signal_shares(clean + rng.normal(0, sd), n, sd**2, V) for _ in range(200)],
                  axis=0)  # fmt: skip
    np.testing.assert_allclose(got, want, atol=0.05)
    assert signal_shares(clean, n, np.zeros((C, N)), V).tolist() == [1.0] * C
    pure = [signal_shares(n_c * base + rng.normal(0, sd), n, sd**2, V) for _ in range(100)]
    assert float(np.mean(pure)) <= 0.1
    with pytest.raises(InputError, match=r"^count_variances: "):
        signal_shares(clean, n, -np.ones((C, N)), V)
    with pytest.raises(InputError, match=r"^V: "):
        signal_shares(clean, n, np.zeros((C, N)), V[:10])


# ---------------------------------------------------------------------------------------------
# Bad input


def test_the_fit_refuses_bad_input_naming_the_argument() -> None:
    model, _ = initial_model([[0], [1], [1]], 2, id_range=ID_RANGE,
                             settings=CohortSettings(factors=4))  # fmt: skip
    p = model.payload
    ok = {"n_devices": 100, "id_range": ID_RANGE, "settings": CohortSettings(factors=4)}
    with pytest.raises(InputError, match=r"^counts: "):
        cohort_round(p, np.ones((2, 4)), [1, 1], [0, 0], **ok)
    with pytest.raises(InputError, match=r"^sizes: "):
        cohort_round(p, np.ones((2, 3)), [1], [0, 0], **ok)
    with pytest.raises(InputError, match=r"^variances: "):
        cohort_round(p, np.ones((2, 3)), [1, 1], [0], **ok)
    with pytest.raises(InputError, match=r"^counts: "):
        cohort_round(p, np.full((2, 3), np.nan), [1, 1], [0, 0], **ok)
    with pytest.raises(InputError, match=r"^settings: "):
        cohort_round(p, np.ones((2, 3)), [1, 1], [0, 0], n_devices=100, id_range=ID_RANGE,
                     settings=CohortSettings(factors=5))  # fmt: skip
    with pytest.raises(InputError, match=r"^id_range: "):
        cohort_round(p, np.ones((2, 3)), [1, 1], [0, 0], n_devices=100, id_range=(5, 5))
    with pytest.raises(InputError, match=r"^min_population: "):
        CohortSettings(min_population=0)
    with pytest.raises(InputError, match=r"^alpha: "):
        CohortSettings(alpha=-1.0)
    with pytest.raises(InputError, match=r"^encoding: "):
        CohortSettings(encoding="int4")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^variances: "):
        merge_small(np.ones((2, 3)), [1, 1], [-1, 0], min_population=1)
    with pytest.raises(InputError, match=r"^regularization: "):
        centroid_update(np.ones((3, 2)), np.ones((1, 3)), [1], regularization=0)


def test_fit_provenance_names_the_method_and_the_libraries() -> None:
    from localrank.server.cohort_fit import COHORT_FIT_METHOD, fit_provenance

    p = fit_provenance()
    assert p["method"] == COHORT_FIT_METHOD
    assert p["numpy"] == np.__version__
    assert p["blas"] and p["blas"] != "unknown"  # this machine's numpy reports its BLAS
