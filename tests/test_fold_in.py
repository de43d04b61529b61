"""The device's fold-in and nearest cohort (localrank.device.fold_in): the fold-in is the ridge
solve of the device's own weighted engagement vector, checked against numpy's least squares on
the stacked system; the nearest cohort is the nearest centroid in direction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localrank.device.fold_in import fold_in, nearest_cohort
from localrank.errors import InputError


@st.composite
def weighted_problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(V [offers, f], own offer indices, their weights, λ)."""
    n = draw(st.integers(1, 40))
    f = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    V = rng.standard_normal((n, f)) * scale
    own = np.flatnonzero(rng.random(n) < draw(st.floats(0.0, 1.0)))
    weights = rng.random(own.size) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    lam = draw(st.floats(1e-2, 1e2))
    return V, own, weights, lam


@given(weighted_problems())
@settings(max_examples=150, deadline=None)
def test_fold_in_equals_the_least_squares_solve_of_the_weighted_problem(
    problem: tuple[np.ndarray, np.ndarray, np.ndarray, float],
) -> None:
    """argmin_u ‖x − V·u‖² + λ‖u‖², with x the weights on the device's own offers and 0
    elsewhere, solved by np.linalg.lstsq on the stacked system [V; √λ·I] u ≈ [x; 0]."""
    V, own, w, lam = problem
    n, f = V.shape
    x = np.zeros(n)
    x[own] = w
    A = np.vstack([V, np.sqrt(lam) * np.eye(f)])
    b = np.concatenate([x, np.zeros(f)])
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    gram_inv = np.linalg.inv(V.T @ V + lam * np.eye(f))
    u = fold_in(V[own], w, gram_inv)
    assert u.shape == (f,)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(u, expected, rtol=1e-7, atol=1e-9 * scale)


def test_fold_in_of_no_history_is_zero_and_an_offer_twice_counts_twice() -> None:
    rng = np.random.default_rng(3)
    V = rng.standard_normal((6, 4))
    G = np.linalg.inv(V.T @ V + np.eye(4))
    assert np.array_equal(fold_in([], [], G), np.zeros(4))
    assert np.array_equal(fold_in(np.zeros((0, 4)), np.zeros(0), G), np.zeros(4))
    twice = fold_in(V[[2, 2]], [1.0, 1.0], G)
    np.testing.assert_allclose(twice, fold_in(V[[2]], [2.0], G), rtol=1e-12)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((np.ones((2, 3)), [1.0, 1.0], np.eye(4)), "V_rows"),
        ((np.ones((2, 3)), [1.0], np.eye(3)), "weights"),
        ((np.ones((2, 3)), [1.0, -1.0], np.eye(3)), "weights"),
        ((np.ones((2, 3)), [1.0, np.nan], np.eye(3)), "weights"),
        ((np.ones((2, 3)), [1.0, 1.0], np.ones((3, 2))), "gram_inv"),
        ((np.ones((2, 3)), [1.0, 1.0], np.full((3, 3), np.inf)), "gram_inv"),
        ((np.ones(3), [1.0], np.eye(3)), "V_rows"),
        ((np.full((1, 3), np.nan), [1.0], np.eye(3)), "V_rows"),
        (("rows", [1.0], np.eye(3)), "V_rows"),
    ],
)
def test_fold_in_refuses_bad_input_naming_the_argument(args: tuple, named: str) -> None:
    with pytest.raises(InputError, match=rf"^{named}: expected"):
        fold_in(*args)


def test_nearest_cohort_is_the_nearest_in_direction_whatever_the_length() -> None:
    rng = np.random.default_rng(5)
    centroids = rng.standard_normal((7, 5))
    ids = np.array([40, 41, 42, 43, 44, 45, 46])
    for _ in range(50):
        u = rng.standard_normal(5)
        cos = centroids @ u / np.linalg.norm(centroids, axis=1) / np.linalg.norm(u)
        expected = int(ids[np.argmax(cos)])
        assert nearest_cohort(u, centroids, ids) == expected
        assert nearest_cohort(1e3 * u, 1e-3 * centroids, ids) == expected
    # a long centroid in another direction does not win by its length
    assert nearest_cohort([1.0, 0.0], [[100.0, 100.0], [0.1, 0.0]], [1, 2]) == 2


def test_nearest_cohort_breaks_ties_to_the_lowest_id_in_any_order() -> None:
    same = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert nearest_cohort([1.0, 0.0], same, [9, 4, 1]) == 4
    assert nearest_cohort([1.0, 0.0], same[::-1], [1, 4, 9]) == 4


def test_nearest_cohort_of_nothing_is_none() -> None:
    assert nearest_cohort([0.0, 0.0], [[1.0, 0.0]], [3]) is None  # no history
    assert nearest_cohort([1.0, 0.0], np.zeros((0, 2)), np.zeros(0, np.int64)) is None
    assert nearest_cohort([1.0, 0.0], [[0.0, 0.0], [-1.0, 0.0]], [3, 4]) == 4  # zero never wins
    assert nearest_cohort([1.0, 0.0], [[0.0, 0.0]], [3]) is None


def test_nearest_cohort_below_min_cosine_is_none() -> None:
    """A stand-in cohort must share the device's taste: the nearest at cosine 0.6 counts at
    ``min_cosine=0.5`` and not at 0.7, however long the vectors."""
    C = np.array([[0.6, 0.8], [-1.0, 0.0]]) * 5.0
    assert nearest_cohort([3.0, 0.0], C, [7, 8], min_cosine=0.5) == 7
    assert nearest_cohort([3.0, 0.0], C, [7, 8], min_cosine=0.7) is None
    assert nearest_cohort([3.0, 0.0], C, [7, 8]) == 7  # default: any direction
    for bad in (1.5, -2.0, float("nan"), True, "0.5"):
        with pytest.raises(InputError, match=r"^min_cosine: expected"):
            nearest_cohort([1.0, 0.0], C, [7, 8], min_cosine=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (([1.0, np.nan], [[1.0, 0.0]], [1]), "u"),
        (([[1.0, 0.0]], [[1.0, 0.0]], [1]), "u"),
        (([1.0, 0.0], [[1.0, 0.0, 0.0]], [1]), "centroids"),
        (([1.0, 0.0], [[1.0, np.inf]], [1]), "centroids"),
        (([1.0, 0.0], [[1.0, 0.0]], [1, 2]), "ids"),
        (([1.0, 0.0], [[1.0, 0.0]], [1.5]), "ids"),
    ],
)
def test_nearest_cohort_refuses_bad_input_naming_the_argument(args: tuple, named: str) -> None:
    with pytest.raises(InputError, match=rf"^{named}: expected"):
        nearest_cohort(*args)
