"""The fused f32 kernel: properties against the numpy reference, edge cases, every path."""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import localrank
from numpy_reference import assert_same, reference_scores, reference_topk

KERNELS = localrank.available_kernels()


def make_case(
    n: int = 500,
    d: int = 64,
    C: int = 8,
    *,
    seed: int = 0,
    eligible_share: float = 0.8,
    with_adjust: bool = True,
) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    return {
        "u": rng.standard_normal(d).astype(np.float32),
        "E": rng.standard_normal((n, d)).astype(np.float32),
        "bias": rng.standard_normal(n).astype(np.float32),
        "category": rng.integers(0, C, n).astype(np.int32),
        "prior": rng.standard_normal(C).astype(np.float32),
        "eligible": rng.random(n) < eligible_share,
        "adjust": rng.standard_normal(n).astype(np.float32) if with_adjust else None,
    }


def call(case: dict[str, np.ndarray | None], **kw: object) -> tuple[np.ndarray, np.ndarray]:
    return localrank.score_topk(
        case["u"], case["E"], case["bias"], case["category"], case["prior"], case["eligible"],
        adjust=case["adjust"], **kw,
    )


def ref(case: dict[str, np.ndarray | None], **kw: float) -> np.ndarray:
    return reference_scores(
        case["u"], case["E"], case["bias"], case["category"], case["prior"], case["eligible"],
        adjust=case["adjust"], **kw,
    )


# ---------------------------------------------------------------------------------------------
# Properties against the reference


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, np.ndarray | None], int, float, float]:
    n = draw(st.integers(0, 120))
    d = draw(st.integers(1, 40))
    C = draw(st.integers(1, 6))
    vals = st.floats(-4, 4, width=32, allow_nan=False, allow_infinity=False)
    case = {
        "u": draw(hnp.arrays(np.float32, d, elements=vals)),
        "E": draw(hnp.arrays(np.float32, (n, d), elements=vals)),
        "bias": draw(hnp.arrays(np.float32, n, elements=vals)),
        "category": draw(hnp.arrays(np.int32, n, elements=st.integers(0, C - 1))),
        "prior": draw(hnp.arrays(np.float32, C, elements=vals)),
        "eligible": draw(hnp.arrays(np.bool_, n)),
        "adjust": draw(st.none() | hnp.arrays(np.float32, n, elements=vals)),
    }
    k = draw(st.integers(1, 25))
    w_dot = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    w_prior = draw(st.sampled_from([0.0, 1.0, 3.0]))
    return case, k, w_dot, w_prior


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=cases())
def test_matches_numpy_reference(
    kernel: str, data: tuple[dict[str, np.ndarray | None], int, float, float]
) -> None:
    case, k, w_dot, w_prior = data
    idx, scores = call(case, k=k, w_dot=w_dot, w_prior=w_prior, _kernel=kernel)
    want = ref(case, w_dot=w_dot, w_prior=w_prior)
    assert_same(idx, want, case["eligible"], k)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, want[idx], rtol=1e-5, atol=1e-5)
    if kernel == "scalar":
        # The scalar path does the reference's arithmetic in the same order: bit-identical.
        want_idx = reference_topk(want, case["eligible"], k)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(scores, want[want_idx])


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_path_agrees_with_scalar(kernel: str) -> None:
    for seed, d in enumerate([1, 3, 8, 17, 31, 64, 100, 257]):
        case = make_case(n=2000, d=d, seed=seed)
        _, s_scores = call(case, k=50, _kernel="scalar")
        idx, scores = call(case, k=50, _kernel=kernel)
        assert_same(idx, ref(case), case["eligible"], 50)
        np.testing.assert_allclose(scores, s_scores, rtol=1e-5, atol=1e-5)
    print(f"path {kernel}: agrees with scalar")


# ---------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("kernel", KERNELS)
def test_exact_ties_go_to_the_lower_index(kernel: str) -> None:
    n, d = 40, 16
    E = np.tile(np.arange(d, dtype=np.float32), (n, 1))
    E[[5, 30]] += 1.0  # two rows strictly better, tied with each other
    eligible = np.ones(n, bool)
    eligible[0] = False
    idx, scores = localrank.score_topk(
        np.ones(d, np.float32), E, np.zeros(n, np.float32), np.zeros(n, np.int32),
        np.zeros(1, np.float32), eligible, k=6, _kernel=kernel,
    )
    assert idx.tolist() == [5, 30, 1, 2, 3, 4]
    assert scores[0] == scores[1] and scores[2] == scores[5]


def test_k_above_eligible_rows_returns_them_all() -> None:
    case = make_case(n=50, eligible_share=0.2, seed=3)
    idx, scores = call(case, k=1000)
    assert idx.size == int(case["eligible"].sum()) == scores.size
    assert_same(idx, ref(case), case["eligible"], 1000)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_catalog_and_nothing_eligible(kernel: str) -> None:
    case = make_case(n=0, d=8)
    idx, scores = call(case, _kernel=kernel)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    assert idx.shape == scores.shape == (0,)
    case = make_case(n=30, d=8)
    case["eligible"] = np.zeros(30, bool)
    idx, scores = call(case, _kernel=kernel)
    assert idx.size == scores.size == 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("d", [1, 4096])
def test_extreme_widths(kernel: str, d: int) -> None:
    case = make_case(n=300, d=d, seed=d)
    idx, _ = call(case, k=20, _kernel=kernel)
    assert_same(idx, ref(case), case["eligible"], 20)


@pytest.mark.parametrize("kernel", KERNELS)
def test_ineligible_rows_are_neither_read_nor_checked(kernel: str) -> None:
    case = make_case(n=200, d=16, seed=9)
    bad = ~case["eligible"]
    E = case["E"].copy()
    E[bad] = np.nan
    bias, adjust, category = case["bias"].copy(), case["adjust"].copy(), case["category"].copy()
    bias[bad] = np.inf
    adjust[bad] = -np.inf
    category[bad] = 10**6
    idx, scores = localrank.score_topk(
        case["u"], E, bias, category, case["prior"], case["eligible"], adjust=adjust, k=15,
        _kernel=kernel,
    )
    assert_same(idx, ref(case), case["eligible"], 15)
    assert np.all(np.isfinite(scores))


def test_weights_zero_match_levels() -> None:
    """Level `off` (w_dot = w_prior = 0) ranks by bias + adjust alone."""
    case = make_case(n=400, seed=4)
    idx, _ = call(case, w_dot=0.0, w_prior=0.0, k=10)
    plain = np.where(case["eligible"], case["bias"] + case["adjust"], -np.inf)
    assert_same(idx, plain.astype(np.float32), case["eligible"], 10)


def test_threads_give_identical_results() -> None:
    case = make_case(n=100_000, d=32, seed=5)
    one = call(case, k=25, threads=1)
    two = call(case, k=25, threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@st.composite
def tied_catalogs(draw: st.DrawFn) -> tuple[dict[str, np.ndarray | None], int, int, float]:
    """Catalogs of small integers: every score is exact in f32 whatever the summation order, so
    exact ties are everywhere and every path must return exactly the reference's top k, ties
    to the lower index. Sizes reach past several 64-row flag windows and split points."""
    n = draw(st.integers(0, 3000))
    d = draw(st.integers(1, 70))
    share = draw(st.sampled_from([0.0, 0.05, 0.5, 0.62, 0.9, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    small = lambda shape: rng.integers(-2, 3, shape).astype(np.float32)  # noqa: E731
    case: dict[str, np.ndarray | None] = {
        "u": small(d),
        "E": small((n, d)),
        "bias": small(n),
        "category": rng.integers(0, 4, n).astype(np.int32),
        "prior": small(4),
        "eligible": rng.random(n) < share,
        "adjust": draw(st.sampled_from([None, small(n)])),
    }
    return case, draw(st.integers(1, 40)), draw(st.integers(2, 9)), draw(st.sampled_from([1, 2]))


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=tied_catalogs())
def test_threads_equal_one_thread_and_the_reference_ties_included(
    kernel: str, data: tuple[dict[str, np.ndarray | None], int, int, float]
) -> None:
    """Rows split over any number of threads give exactly the one-thread result (indices and
    scores), which is exactly the numpy reference's top k with ties to the lower index."""
    case, k, threads, w_prior = data
    one = call(case, k=k, w_prior=w_prior, threads=1, _kernel=kernel)
    split = call(case, k=k, w_prior=w_prior, threads=threads, _kernel=kernel)
    auto = call(case, k=k, w_prior=w_prior, _kernel=kernel)
    for got in (split, auto):
        np.testing.assert_array_equal(got[0], one[0])
        np.testing.assert_array_equal(got[1], one[1])
    want = ref(case, w_prior=w_prior)
    want_idx = reference_topk(want, case["eligible"], k)
    np.testing.assert_array_equal(one[0], want_idx)
    np.testing.assert_array_equal(one[1], want[want_idx])


def test_threads_none_splits_a_large_catalog_identically() -> None:
    """Rows of 73 MiB: `threads=None` splits them on a machine with several cores
    (docs/kernel.md, "Threads"); the result is the one-thread result, here with a tie across
    the split points (every row scores the same)."""
    n, d = 300_000, 64
    E = np.ones((n, d), np.float32)
    args = (np.ones(d, np.float32), E, np.zeros(n, np.float32), np.zeros(n, np.int32),
            np.zeros(1, np.float32), np.ones(n, bool))
    one = localrank.score_topk(*args, k=7, threads=1)
    auto = localrank.score_topk(*args, k=7)
    assert one[0].tolist() == list(range(7))
    np.testing.assert_array_equal(auto[0], one[0])
    np.testing.assert_array_equal(auto[1], one[1])


@pytest.mark.parametrize("threads", [0, -3, 257, 2**40])
def test_threads_out_of_range_are_refused(threads: int) -> None:
    case = make_case(n=50, seed=2)
    with pytest.raises(localrank.InputError, match=r"^threads: .*≤ 256, got"):
        call(case, threads=threads)


def test_other_numeric_dtypes_are_converted_once() -> None:
    case = make_case(n=300, d=12, seed=6)
    idx, _ = call(case, k=10)
    idx64, _ = localrank.score_topk(
        case["u"].astype(np.float64), case["E"].astype(np.float64), case["bias"].tolist(),
        case["category"].astype(np.int64), case["prior"].astype(np.float16).astype(np.float64),
        case["eligible"], adjust=case["adjust"].astype(np.float64), k=10,
    )
    # float16 prior loses precision, so compare against the reference computed with it
    case16 = dict(case, prior=case["prior"].astype(np.float16).astype(np.float32))
    assert_same(idx64, ref(case16), case["eligible"], 10)
    # non-contiguous E is copied once and gives the same answer as a contiguous one
    wide = np.zeros((300, 24), np.float32)
    wide[:, ::2] = case["E"]
    idx_view, _ = localrank.score_topk(
        case["u"], wide[:, ::2], case["bias"], case["category"], case["prior"], case["eligible"],
        adjust=case["adjust"], k=10,
    )
    np.testing.assert_array_equal(idx_view, idx)


def test_float32_embeddings_are_borrowed_not_copied() -> None:
    case = make_case(n=400_000, d=32, seed=8, with_adjust=False)  # E is ~51 MB
    tracemalloc.start()
    try:
        call(case, k=10)
        _, peak_borrowed = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        E64 = case["E"].astype(np.float64)
        tracemalloc.reset_peak()
        localrank.score_topk(
            case["u"], E64, case["bias"], case["category"], case["prior"], case["eligible"], k=10
        )
        _, peak_converted = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    e_bytes = case["E"].nbytes
    assert peak_borrowed < e_bytes // 20, f"peak {peak_borrowed} B: E ({e_bytes} B) was copied?"
    # The check can see a copy: converting float64 input allocates a float32 E.
    assert peak_converted >= e_bytes


def test_gil_is_released_while_scoring() -> None:
    """Another Python thread runs during the call only if the GIL is released.

    With a huge switch interval the main thread never hands the GIL over by itself, so the
    worker's counter can only advance while the kernel runs with the GIL released. The worker
    sleeps between increments, which releases the GIL, so the main thread is never stuck.
    """
    case = make_case(n=400_000, d=64, seed=10, with_adjust=False)
    counter = [0]
    stop = threading.Event()
    started = threading.Event()

    def spin() -> None:
        started.set()
        while not stop.is_set():
            counter[0] += 1
            time.sleep(1e-6)

    old = sys.getswitchinterval()
    worker = threading.Thread(target=spin)
    worker.start()
    started.wait()
    sys.setswitchinterval(1000.0)
    try:
        before = counter[0]
        for _ in range(3):
            call(case, k=10)
        during = counter[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
        worker.join()
    assert during > 0, "no other thread ran during three kernel calls: is the GIL held?"
